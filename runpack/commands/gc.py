"""``runpack gc``: apply the retention TTLs now, or count with ``--dry-run``.

It works on the figures of the server it maintains: the data directory given with
``--data-dir`` or ``RUNPACK_DATA_DIR``, else the one the server instances recorded
in the database when they started (the newest that exists on this machine). With no
such folder it refuses (exit 2): a pass that cannot see the figures would report
them as nothing to remove.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

from runpack.commands.common import is_postgres, server_missing, settings_of, shown
from runpack.errors import StoreError
from runpack.settings import TTL_NAMES, Settings

#: How far back gc looks for an instance's recorded data directory (the rows are kept
#: this long after an instance stops).
RECORDED_WITHIN_MS = 7 * 24 * 3600 * 1000


class NoDataDir(Exception):
    """No data directory gc can reach; the message says what was looked at."""


def add_to(sub: Any) -> None:
    parser = sub.add_parser(
        "gc", help="Apply the retention TTLs now: delete old jobs, consoles, figures, runners."
    )
    parser.add_argument("--db", default=None, help="SQLite file path, or a postgresql:// DSN.")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="The server's data folder, where its figures are [RUNPACK_DATA_DIR; default: "
        "the one the server recorded in the database].",
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
    from runpack.retention import RetentionPolicy

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
    given = args.data_dir is not None or "RUNPACK_DATA_DIR" in os.environ
    try:
        return asyncio.run(_gc(settings, policy, given, args.dry_run))
    except NoDataDir as exc:
        print(f"runpack gc: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"runpack gc: {shown(f'{exc.message}: {exc.details}')}", file=sys.stderr)
        return 1


async def _gc(settings: Settings, policy: Any, given: bool, dry_run: bool) -> int:
    from runpack.retention import collect

    data_dir = settings.data_dir if given else await recorded_data_dir(settings.db)
    if not await asyncio.to_thread(os.path.isdir, data_dir):
        raise NoDataDir(
            f"the data directory {data_dir} does not exist; pass the server's data "
            "folder with --data-dir (or RUNPACK_DATA_DIR), where its figures are"
        )
    print(f"Data directory: {data_dir}")
    report = await collect(settings.replace(data_dir=data_dir), policy, dry_run)
    print(report.render())
    return 0


async def recorded_data_dir(db: str) -> str:
    """The data directory the newest server instance on ``db`` recorded, of those
    that exist on this machine; NoDataDir if there is none."""
    from runpack.store import open_store

    store = open_store(db)
    await store.open()
    try:
        since = int(time.time() * 1000) - RECORDED_WITHIN_MS
        instances = await store.list_instances(since)
    finally:
        await store.close()
    folders = list(dict.fromkeys(i.data_dir for i in instances))
    for folder in folders:
        if await asyncio.to_thread(os.path.isdir, folder):
            return folder
    if not folders:
        raise NoDataDir(
            f"no --data-dir or RUNPACK_DATA_DIR given, and no server on {shown(db)} has "
            "recorded its data directory (servers record it when they start); pass the "
            "server's data folder with --data-dir"
        )
    raise NoDataDir(
        f"no --data-dir or RUNPACK_DATA_DIR given, and the data directories the servers "
        f"on {shown(db)} recorded are not on this machine ({', '.join(folders)}); run gc "
        "where one is, or pass --data-dir"
    )
