"""``runpack keys``: API keys beyond the three environment keys, kept in the database.

``create`` prints a new key's secret once (the database keeps only its SHA-256),
``list`` shows every key and never a secret, ``revoke`` ends a key. A key has a
role (submit, runner or admin, as the environment keys) and optional limits: the
job types it may submit, check, read and cancel, the browser Origins it may be used
from, a rate in place of the per-IP limits, and the highest priority it may submit
(0 for a submit key unless it names one: a key handed to strangers cannot jump the
queue). The commands work on the database directly
(``--db`` or RUNPACK_DB, SQLite or PostgreSQL), like ``runpack migrate``; the admin
API (``/api/admin/keys``) does the same over HTTP with the same checks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from runpack.auth import KEY_ROLES, hash_secret, new_secret
from runpack.errors import BadRequest, NotFound, RunpackError
from runpack.protocol import Role
from runpack.store import Store, open_store
from runpack.store.base import ApiKeyRow

MAX_NAME = 200
MAX_JOB_TYPE = 200
MAX_ITEMS = 100
MAX_RATE = 1_000_000_000
#: The highest priority any submit may ask (runpack.service checks the range).
MAX_PRIORITY = 1000
_KEY_ID = re.compile(r"[0-9a-f]{12}")
_HOST = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")
DEFAULT_PORTS = {"http": 80, "https": 443}
ROLE_NAMES = ", ".join(KEY_ROLES)
DESCRIPTION = (
    "API keys beyond the three environment keys, kept in the database (--db or RUNPACK_DB). "
    "A key has a role (submit, runner or admin) and optional limits: job types, browser "
    "Origins, a rate, a priority ceiling. Only a hash of each secret is stored."
)


class KeyNotFound(NotFound):
    """API key not found"""


@dataclass(frozen=True, slots=True)
class KeySpec:
    """A new key's role and limits, checked."""

    role: Role
    name: str = ""
    job_types: tuple[str, ...] | None = None
    origins: tuple[str, ...] | None = None
    rate: int | None = None
    #: The highest priority it may submit; None for no ceiling.
    max_priority: int | None = None


def parse_origin(text: str) -> str:
    """An Origin as browsers send it (``https://host[:port]``, lower case, no default
    port), from a URL with nothing after the host but an optional ``/``."""
    hint = "an Origin is scheme://host[:port], e.g. https://viewer.example.org"
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        raise BadRequest("Invalid origin", details=f"{text!r}: {hint}") from None
    host = parts.hostname or ""
    ipv6 = ":" in host
    if (
        parts.scheme.lower() not in DEFAULT_PORTS
        or not (ipv6 or _HOST.fullmatch(host))
        or parts.username is not None
        or parts.password is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise BadRequest("Invalid origin", details=f"{text!r}: {hint}")
    scheme = parts.scheme.lower()
    origin = f"{scheme}://{f'[{host}]' if ipv6 else host}"
    if port is not None and port != DEFAULT_PORTS[scheme]:
        origin += f":{port}"
    return origin


def _job_type(text: str) -> str:
    if not text or len(text) > MAX_JOB_TYPE or "\x00" in text:
        raise BadRequest(
            "Invalid job type", details=f"{text!r}: 1 to {MAX_JOB_TYPE} characters, no NUL"
        )
    return text


def _names(values: Sequence[str] | None, what: str) -> list[str] | None:
    if values is None:
        return None
    if not values:
        raise BadRequest(f"List at least one of the {what}, or leave the limit out")
    if len(values) > MAX_ITEMS:
        raise BadRequest(f"At most {MAX_ITEMS} {what}")
    return list(dict.fromkeys(values))


def key_spec(
    role: str,
    name: str = "",
    job_types: Sequence[str] | None = None,
    origins: Sequence[str] | None = None,
    rate: int | None = None,
    max_priority: int | None = None,
) -> KeySpec:
    """Check a new key's settings; a clear BadRequest for anything wrong. A submit
    key that names no priority ceiling gets 0."""
    if role not in KEY_ROLES:
        raise BadRequest(f"role must be one of {ROLE_NAMES}", details=repr(role))
    if len(name) > MAX_NAME or "\x00" in name:
        raise BadRequest("Invalid name", details=f"at most {MAX_NAME} characters, no NUL")
    types = _names(job_types, "job types")
    if types is not None:
        if role == Role.RUNNER:
            raise BadRequest(
                "A runner key takes no job types", details="job types limit what a key submits"
            )
        types = [_job_type(t) for t in types]
    allowed = _names(origins, "origins")
    if allowed is not None:
        allowed = list(dict.fromkeys(parse_origin(o) for o in allowed))
    if rate is not None and not 0 <= rate <= MAX_RATE:
        raise BadRequest(
            "Invalid rate", details=f"{rate}: 0 (unlimited) to {MAX_RATE} requests per window"
        )
    if max_priority is not None:
        if role == Role.RUNNER:
            raise BadRequest(
                "A runner key takes no priority ceiling",
                details="the ceiling limits the priority a key submits",
            )
        if not 0 <= max_priority <= MAX_PRIORITY:
            raise BadRequest(
                "Invalid priority ceiling", details=f"{max_priority}: 0 to {MAX_PRIORITY}"
            )
    elif role == Role.SUBMIT:
        max_priority = 0
    return KeySpec(
        role=Role(role),
        name=name,
        job_types=tuple(types) if types is not None else None,
        origins=tuple(allowed) if allowed is not None else None,
        rate=rate,
        max_priority=max_priority,
    )


def now_ms() -> int:
    return int(time.time() * 1000)


async def create_key(store: Store, spec: KeySpec, now: int) -> tuple[str, ApiKeyRow]:
    """Store a new key; return its secret (shown once, never stored) and its row."""
    secret = new_secret()

    def as_json(values: tuple[str, ...] | None) -> str | None:
        return None if values is None else orjson.dumps(list(values)).decode()

    row = ApiKeyRow(
        id=secrets.token_hex(6),
        name=spec.name,
        role=spec.role.value,
        secret_sha256=hash_secret(secret),
        job_types=as_json(spec.job_types),
        origins=as_json(spec.origins),
        rate=spec.rate,
        created_at=now,
        last_used_at=None,
        revoked_at=None,
        max_priority=spec.max_priority,
    )
    await store.insert_api_key(row)
    return secret, row


async def revoke_key(store: Store, key_id: str, now: int) -> tuple[ApiKeyRow, bool]:
    """Revoke a key; return its row and whether this call revoked it (False: it was)."""
    row = await store.revoke_api_key(key_id, now) if _KEY_ID.fullmatch(key_id) else None
    if row is not None:
        return row, True
    existing = await store.get_api_key(key_id) if _KEY_ID.fullmatch(key_id) else None
    if existing is None:
        raise KeyNotFound(details=f"no key has the id {key_id!r} (see runpack keys list)")
    return existing, False


def key_view(row: ApiKeyRow) -> dict[str, Any]:
    """A key as the CLI and the admin API show it: never the secret or its hash."""
    return {
        "id": row.id,
        "name": row.name,
        "role": row.role,
        "job_types": orjson.loads(row.job_types) if row.job_types is not None else None,
        "origins": orjson.loads(row.origins) if row.origins is not None else None,
        "rate": row.rate,
        "max_priority": row.max_priority,
        "created_at": row.created_at,
        "last_used_at": row.last_used_at,
        "revoked_at": row.revoked_at,
    }


# --- the command ------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db", default=None, help="SQLite file path, or a postgresql:// DSN [RUNPACK_DB]."
    )
    common.add_argument("--json", action="store_true", help="Print JSON.")
    sub = parser.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    create = sub.add_parser(
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
        help="N requests per rate window on rate-limited routes, for this key across "
        "all clients, in place of the per-IP limits (0 = unlimited).",
    )
    create.add_argument(
        "--max-priority",
        type=int,
        metavar="N",
        help=f"The highest priority it may submit, 0 to {MAX_PRIORITY}; a submit above it "
        "is refused (403). A submit key gets 0 unless it names one; an admin key has none.",
    )
    sub.add_parser("list", parents=[common], help="List every key (never a secret).")
    revoke = sub.add_parser(
        "revoke",
        parents=[common],
        help="Revoke a key.",
        description="Revoke a key: servers refuse it within RUNPACK_KEY_CACHE_TTL seconds.",
    )
    revoke.add_argument("key_id", metavar="ID", help="The key's id (runpack keys list).")


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _limits(view: dict[str, Any]) -> str:
    parts = []
    if view["job_types"] is not None:
        parts.append("job types " + ",".join(view["job_types"]))
    if view["origins"] is not None:
        parts.append("origins " + ",".join(view["origins"]))
    if view["rate"] is not None:
        parts.append(f"rate {view['rate'] or 'unlimited'}")
    if view["max_priority"] is not None:
        parts.append(f"priority at most {view['max_priority']}")
    return "; ".join(parts) or "-"


def table(views: list[dict[str, Any]]) -> str:
    header = ("ID", "NAME", "ROLE", "CREATED", "LAST USED", "REVOKED", "LIMITS")
    rows = [header] + [
        (
            v["id"],
            v["name"] or "-",
            v["role"],
            _when(v["created_at"]),
            _when(v["last_used_at"]),
            _when(v["revoked_at"]),
            _limits(v),
        )
        for v in views
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]).rstrip()
        for row in rows
    )


async def _run(args: argparse.Namespace, db: str, spec: KeySpec | None) -> int:
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
                print(f"Created {row.role} key {row.id}{name} ({_limits(view)}).")
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
                print(f"Key {row.id} was already revoked on {_when(row.revoked_at)}.")
    finally:
        await store.close()
    return 0


def main(args: argparse.Namespace) -> int:
    from runpack.cli import settings_from

    db = settings_from(argparse.Namespace(db=args.db)).db
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
        elif not db.startswith(("postgres://", "postgresql://")) and not Path(db).exists():
            raise BadRequest("No database", details=f"{db} does not exist")
        return asyncio.run(_run(args, db, spec))
    except RunpackError as exc:
        details = f": {exc.details}" if exc.details else ""
        print(f"runpack keys: {exc.message}{details}", file=sys.stderr)
        return 1
