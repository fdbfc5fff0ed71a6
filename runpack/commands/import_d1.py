"""``runpack import-d1``: load a ``wrangler d1 export`` of the original's database."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from runpack.commands.common import server_missing, settings_of, shown


def add_to(sub: Any) -> None:
    parser = sub.add_parser(
        "import-d1",
        help="Load a `wrangler d1 export` of the original's database (jobs and runners).",
    )
    parser.add_argument("file", help="The export: SQL text written by `wrangler d1 export`.")
    parser.add_argument("--db", default=None, help="SQLite file path, or a postgresql:// DSN.")
    parser.add_argument(
        "--skip-invalid", action="store_true", help="Import the valid rows, list the others."
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    if server_missing("import-d1"):
        return 2
    from runpack.importer import D1ImportError, import_d1_into

    try:
        summary = asyncio.run(
            import_d1_into(
                args.file,
                settings.db,
                max_attempts=settings.max_attempts,
                skip_invalid=args.skip_invalid,
            )
        )
    except D1ImportError as exc:
        print(f"runpack import-d1: {shown(str(exc))}", file=sys.stderr)
        return 1
    print(summary.render(shown(settings.db)))
    return 0
