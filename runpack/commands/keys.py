"""``runpack keys``: create, list and revoke the API keys kept in the database
(:mod:`runpack.keys`), working on the database directly like ``runpack migrate``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from runpack.commands.common import is_postgres, server_missing, settings_of, shown
from runpack.errors import BadRequest, RunpackError
from runpack.keys import (
    KEY_ROLES,
    MAX_PRIORITY,
    KeySpec,
    create_key,
    key_spec,
    key_view,
    limits_text,
    now_ms,
    revoke_key,
    table,
    when_text,
)
from runpack.store import open_store

DESCRIPTION = (
    "API keys beyond the three environment keys, kept in the database (--db or RUNPACK_DB). "
    "A key has a role (submit, runner or admin) and optional limits: job types, browser "
    "Origins, a rate, a priority ceiling. Only a hash of each secret is stored."
)


def add_to(sub: Any) -> None:
    parser = sub.add_parser(
        "keys",
        help="Create, list and revoke API keys kept in the database.",
        description=DESCRIPTION,
    )
    parser.set_defaults(func=run)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db", default=None, help="SQLite file path, or a postgresql:// DSN [RUNPACK_DB]."
    )
    common.add_argument("--json", action="store_true", help="Print JSON.")
    commands = parser.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    create = commands.add_parser(
        "create",
        parents=[common],
        help="Create a key and print its secret (once).",
        description="Create a key and print its secret. Only its hash is stored: "
        "the secret cannot be shown again.",
    )
    create.add_argument(
        "--role", required=True, choices=[r.value for r in KEY_ROLES], help="What it opens."
    )
    create.add_argument("--name", default="", help="A label: who or what holds the key.")
    create.add_argument(
        "--job-types",
        metavar="A,B",
        help="Only jobs of these types may be submitted, checked, read and cancelled.",
    )
    create.add_argument(
        "--origins",
        metavar="URL,URL",
        help="A browser key: requests from any other Origin are refused (403).",
    )
    create.add_argument(
        "--rate",
        type=int,
        metavar="N",
        help="N new jobs per rate period (RUNPACK_RATE_WINDOW) for this key across all "
        "clients, in place of the per-address and per-key limits on new work (0 = no limit "
        "at all, requests included).",
    )
    create.add_argument(
        "--max-priority",
        type=int,
        metavar="N",
        help=f"The highest priority it may submit, 0 to {MAX_PRIORITY}; a submit above it "
        "is refused (403). A submit key gets 0 unless it names one; an admin key has none.",
    )
    commands.add_parser("list", parents=[common], help="List every key (never a secret).")
    revoke = commands.add_parser(
        "revoke",
        parents=[common],
        help="Revoke a key.",
        description="Revoke a key: servers refuse it within RUNPACK_KEY_CACHE_TTL seconds.",
    )
    revoke.add_argument("key_id", metavar="ID", help="The key's id (runpack keys list).")


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


def run(args: argparse.Namespace) -> int:
    db = settings_of(argparse.Namespace(db=args.db)).db
    try:
        spec = None
        if args.keys_command == "create":  # checked before the database is touched
            spec = key_spec(
                args.role,
                args.name,
                _split(args.job_types),
                _split(args.origins),
                args.rate,
                args.max_priority,
            )
        elif not is_postgres(db) and not Path(db).exists():
            raise BadRequest("No database", details=f"{db} does not exist")
        if server_missing("keys"):
            return 2
        return asyncio.run(_on_store(args, db, spec))
    except RunpackError as exc:
        details = f": {exc.details}" if exc.details else ""
        print(f"runpack keys: {shown(exc.message + details)}", file=sys.stderr)
        return 1


async def _on_store(args: argparse.Namespace, db: str, spec: KeySpec | None) -> int:
    store = open_store(db)
    await store.open()
    try:
        if spec is not None:
            secret, row = await create_key(store, spec, now_ms())
            view = key_view(row)
            if args.json:
                print(json.dumps({**view, "secret": secret}, indent=2))
            else:
                name = f" {row.name!r}" if row.name else ""
                print(f"Created {row.role} key {row.id}{name} ({limits_text(view)}).")
                print("Its secret, shown only now (the database keeps only a hash):")
                print(secret)
        elif args.keys_command == "list":
            views = [key_view(row) for row in await store.list_api_keys()]
            print(json.dumps(views, indent=2) if args.json else table(views))
        else:
            row, changed = await revoke_key(store, args.key_id, now_ms())
            if args.json:
                print(json.dumps({**key_view(row), "revoked_now": changed}, indent=2))
            elif changed:
                print(f"Revoked key {row.id}; servers refuse it within RUNPACK_KEY_CACHE_TTL.")
            else:
                print(f"Key {row.id} was already revoked on {when_text(row.revoked_at)}.")
    finally:
        await store.close()
    return 0
