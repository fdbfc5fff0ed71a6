"""``runpack backup PATH``: a consistent copy of a SQLite database, taken online."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from runpack.commands.common import is_postgres, settings_of


def add_to(sub: Any) -> None:
    parser = sub.add_parser("backup", help="Copy a SQLite database safely while it is in use.")
    parser.add_argument("path", metavar="PATH", help="The new file to write the copy to.")
    parser.add_argument("--db", default=None, help="The SQLite database to copy [RUNPACK_DB].")
    parser.add_argument("--force", action="store_true", help="Replace PATH if it exists.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    db = settings_of(args).db
    if is_postgres(db):
        print(
            "runpack backup: copies SQLite databases only. For PostgreSQL use pg_dump, e.g.\n"
            '  pg_dump --format=custom --file=runpack.dump "$RUNPACK_DB"\n'
            "and pg_restore to load it (see docs/deployment.md).",
            file=sys.stderr,
        )
        return 2
    from runpack.backup import BackupError, backup_sqlite

    try:
        copy = backup_sqlite(Path(db), Path(args.path), force=args.force)
    except BackupError as exc:
        print(f"runpack backup: {exc}", file=sys.stderr)
        return exc.status
    print(copy.render(db))
    return 0
