"""API keys beyond the three environment keys, kept in the database.

``create`` prints a new key's secret once (the database keeps only its SHA-256),
``list`` shows every key and never a secret, ``revoke`` ends a key. A key has a
role (submit, runner or admin, as the environment keys) and optional limits: the
job types it may submit, check, read and cancel, the browser Origins it may be used
from, a rate of new jobs in place of the default limits, and the highest priority it may submit
(0 for a submit key unless it names one: a key handed to strangers cannot jump the
queue). ``runpack keys`` (:mod:`runpack.commands.keys`) works on the database
directly (``--db`` or RUNPACK_DB, SQLite or PostgreSQL), like ``runpack migrate``;
the admin API (``/api/admin/keys``) does the same over HTTP with the same checks.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

from runpack.auth import KEY_ROLES, hash_secret, new_secret
from runpack.errors import BadRequest, NotFound
from runpack.protocol import Role
from runpack.store import Store
from runpack.store.base import ApiKeyRow

MAX_NAME = 200
MAX_JOB_TYPE = 200
MAX_ITEMS = 100
MAX_RATE = 1_000_000_000
#: The highest priority any submit may ask (runpack.api.job_requests checks the range).
MAX_PRIORITY = 1000
_KEY_ID = re.compile(r"[0-9a-f]{12}")
_HOST = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")
DEFAULT_PORTS = {"http": 80, "https": 443}
ROLE_NAMES = ", ".join(KEY_ROLES)


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


# --- how the CLI shows keys ---------------------------------------------------------


def when_text(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def limits_text(view: dict[str, Any]) -> str:
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
            when_text(v["created_at"]),
            when_text(v["last_used_at"]),
            when_text(v["revoked_at"]),
            limits_text(v),
        )
        for v in views
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]).rstrip()
        for row in rows
    )
