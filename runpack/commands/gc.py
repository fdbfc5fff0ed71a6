"""``runpack gc``: apply the retention TTLs now, or count with ``--dry-run``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from runpack.commands.common import is_postgres, server_missing, settings_of
from runpack.errors import StoreError
from runpack.settings import TTL_NAMES


def add_to(sub: Any) -> None:
    parser = sub.add_parser(
        "gc", help="Apply the retention TTLs now: delete old jobs, consoles, figures, runners."
    )
    parser.add_argument("--db", default=None, help="SQLite file path, or a postgresql:// DSN.")
    parser.add_argument(
        "--data-dir", default=None, help="The server's data folder (its figures are there)."
    )
    parser.add_argument("--dry-run", action="store_true", help="Count only; change nothing.")
    for name in TTL_NAMES:
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=float,
            default=None,
            metavar="SECONDS",
            help=f"Override RUNPACK_{name.upper()} (0 = keep).",
        )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    if server_missing("gc"):
        return 2
    from runpack.retention import RetentionPolicy, collect

    policy = RetentionPolicy.from_settings(settings)
    if not policy.active:
        print(
            "runpack gc: no TTL is set, nothing to do (set RUNPACK_RESULT_TTL, … "
            "or pass --result-ttl SECONDS, …)"
        )
        return 0
    if not is_postgres(settings.db) and not Path(settings.db).is_file():
        print(f"runpack gc: no SQLite database at {settings.db}", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(collect(settings, policy, args.dry_run))
    except StoreError as exc:
        print(f"runpack gc: {exc.message}: {exc.details}", file=sys.stderr)
        return 1
    print(report.render())
    return 0
