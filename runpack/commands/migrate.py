"""``runpack migrate``: create or upgrade a database's schema."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from runpack.commands.common import server_missing, settings_of, shown, store_failure
from runpack.errors import StoreError


def add_to(sub: Any) -> None:
    parser = sub.add_parser("migrate", help="Create or upgrade the database schema.")
    parser.add_argument("--db", default=None, help="SQLite file path, or a postgresql:// DSN.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    if server_missing("migrate"):
        return 2
    from runpack.store import open_store

    async def migrate() -> None:
        store = open_store(settings.db)
        await store.open()  # opening applies pending migrations
        await store.close()

    try:
        asyncio.run(migrate())
    except StoreError as exc:
        return store_failure("migrate", exc)
    print(f"{shown(settings.db)}: schema up to date")
    return 0
