"""API keys and roles: the three environment keys, and keys stored in the database.

The environment keys are compared in constant time, every one of them on every
request. A stored key (``runpack keys create``) is found by the SHA-256 of the
token instead: the database never holds a secret, and the timing of an index probe
on a hash tells nothing about any stored secret, since a guess's hash has nothing in
common with a key's. Only tokens shaped like a stored key (``rpk_`` and random
text) ever reach the database. Keys and tokens are never logged.

Each instance remembers a stored key, or that a token is wrong, for
``key_cache_ttl`` seconds: a flood of requests with one token costs one lookup
per period, and a key revoked in the database stops working on every instance
within that time (at once on the instance that revoked it over HTTP). What a key
opened before (a runner's socket, an event stream) closes within that time too:
each instance checks, that often, the keys that hold its open connections.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from runpack.errors import Forbidden, StoreError, Unauthorized
from runpack.protocol import Role
from runpack.settings import Settings
from runpack.store.base import ENV_OWNER

if TYPE_CHECKING:
    from runpack.store.base import ApiKeyRow, Store

log = logging.getLogger(__name__)

FORMAT_HINT = "Invalid Authorization header format. Use: Bearer <token>"
#: The roles a stored key may have: the same three as the environment keys.
KEY_ROLES = (Role.SUBMIT, Role.RUNNER, Role.ADMIN)
SECRET_PREFIX = "rpk_"
_SECRET_SHAPE = re.compile(r"rpk_[A-Za-z0-9_-]{32,128}")
#: A key's ``last_used_at`` is written at most this often per instance (seconds).
TOUCH_INTERVAL = 60.0
#: Remembered tokens per instance; past this, expired ones go, then all of them.
MAX_CACHED = 10_000
#: Shortest pause between two checks of the keys that hold open connections (seconds).
MIN_CHECK_INTERVAL = 0.5


def new_secret() -> str:
    """A stored key's secret: 256 random bits."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def bearer_token(header: str | None) -> str:
    """The token of ``Authorization: Bearer <token>``, checked as the original did."""
    if not header:  # the original tested ``!authHeader``: an empty header is missing too
        raise Unauthorized("Missing Authorization header")
    parts = header.split(" ")
    if len(parts) != 2 or parts[0] != "Bearer":
        raise Unauthorized(FORMAT_HINT)
    return parts[1]


@dataclass(frozen=True, slots=True)
class StoredKey:
    """A stored key as the policy middleware uses it (never its secret)."""

    id: str
    role: Role
    #: Job types it may submit, check, read and cancel; None for any.
    job_types: frozenset[str] | None
    #: Browser Origins it may be used from; None for any.
    origins: frozenset[str] | None
    #: New jobs per rate period for this key, in place of RUNPACK_RATE_KEY_NEW_JOBS (0:
    #: no limit at all).
    rate: int | None
    revoked: bool
    #: The highest priority it may submit; None for no ceiling.
    max_priority: int | None = None

    @classmethod
    def from_row(cls, row: ApiKeyRow) -> StoredKey:
        def names(text: str | None) -> frozenset[str] | None:
            return None if text is None else frozenset(orjson.loads(text))

        return cls(
            id=row.id,
            role=Role(row.role),
            job_types=names(row.job_types),
            origins=names(row.origins),
            rate=row.rate,
            revoked=row.revoked_at is not None,
            max_priority=row.max_priority,
        )


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made a request: a role, and the stored key if it was one."""

    role: Role
    key: StoredKey | None = None
    #: The request's Origin, when the key lists its Origins (CORS replies name it).
    origin: str | None = None

    @property
    def owner(self) -> str:
        """The owner of the runners this caller registers: its stored key's id, or
        ``env`` for an environment key (see runpack.identity)."""
        return self.key.id if self.key is not None else ENV_OWNER

    def check_job_type(self, job_type: str, action: str = "submit") -> None:
        """Refuse a job type the key may not act on: submit or check a job of, and
        read or cancel an existing one of (``action`` names it in the error)."""
        allowed = self.key.job_types if self.key is not None else None
        if allowed is not None and job_type not in allowed:
            raise Forbidden(
                f"This key may not {action} this job type",
                details=f"{job_type!r} is not one of: {', '.join(sorted(allowed))}",
            )

    def check_priority(self, priority: int) -> None:
        """Refuse a priority above the key's ceiling (the environment keys have none
        but the range every submit has)."""
        ceiling = self.key.max_priority if self.key is not None else None
        if ceiling is not None and priority > ceiling:
            raise Forbidden(
                f"This key may submit priority at most {ceiling}",
                details=f"{priority} is above its ceiling (runpack keys create --max-priority)",
            )


class KeyRing:
    """Answers which role a token holds: an environment key, or a stored key."""

    def __init__(
        self,
        settings: Settings,
        store: Store | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keys = {
            Role.SUBMIT: settings.submit_api_key.encode(),
            Role.RUNNER: settings.runner_api_key.encode(),
            Role.ADMIN: settings.admin_api_key.encode(),
        }
        self.runner_reads_admin = settings.runner_key_reads_admin
        self.store = store
        self.cache_ttl = settings.key_cache_ttl
        self.clock = clock
        self._cache: dict[str, tuple[float, StoredKey | None]] = {}  # hash -> (until, key)
        self._touched: dict[str, float] = {}  # key id -> when its use was last written
        #: Stored key id -> what closes each connection it opened that is still open.
        self._open: dict[str, set[Callable[[], None]]] = {}

    def holder(self, token: str) -> Role | None:
        """The environment key this token is, if any."""
        # A header's bytes that are not UTF-8 come as lone surrogates: back to those bytes.
        given = token.encode("utf-8", "surrogateescape")
        found = None
        for role, key in self._keys.items():
            # Every key is compared, so timing says nothing about which matched.
            if key and hmac.compare_digest(given, key):
                found = role
        return found

    async def authorize(
        self, header: str | None, required: Role, origin: str | None = None
    ) -> Caller:
        """The caller, if it may use a route that requires ``required`` from ``origin``."""
        if required == Role.PUBLIC:
            return Caller(Role.PUBLIC)
        token = bearer_token(header)
        holder = self.holder(token)
        if holder is not None:
            return Caller(self.permit(holder, required))
        key = await self.stored(token)
        if key is None:
            raise Unauthorized("Invalid API key")
        if key.revoked:
            raise Unauthorized("Invalid API key", details="This key has been revoked")
        role = self.permit(key.role, required)
        if key.origins is None:
            origin = None
        elif origin is not None and origin not in key.origins:
            # Browsers always send Origin on cross-site requests; other clients may omit it.
            raise Forbidden("This key may not be used from this origin", details=origin)
        await self._touch(key)
        return Caller(role, key, origin)

    def permit(self, holder: Role, required: Role) -> Role:
        """The role a key of ``holder`` acts with on a route requiring ``required``."""
        if holder == required:
            return holder
        if holder == Role.ADMIN and required != Role.RUNNER:
            return holder  # the admin key opens every route but the runner's own
        if required == Role.ADMIN_READ and holder == Role.RUNNER and self.runner_reads_admin:
            return holder
        if required == Role.ADMIN and holder == Role.RUNNER:
            raise Forbidden("Admin key required", details="This key may read but not change jobs")
        raise Unauthorized("Invalid API key")

    async def stored(self, token: str) -> StoredKey | None:
        """The stored key with this secret (revoked or not), or None."""
        if self.store is None or not _SECRET_SHAPE.fullmatch(token):
            return None
        digest = hash_secret(token)
        now = self.clock()
        cached = self._cache.get(digest)
        if cached is not None and now < cached[0]:
            return cached[1]
        row = await self.store.api_key_by_hash(digest)
        key = StoredKey.from_row(row) if row is not None else None
        self._remember(digest, key, now)
        return key

    def forget(self, key_id: str) -> None:
        """A key was just revoked here: drop it from this instance's cache, and close
        the connections it opened (other instances find out in check_open)."""
        self._cache = {d: e for d, e in self._cache.items() if e[1] is None or e[1].id != key_id}
        for close in self._open.pop(key_id, set()):
            close()

    def hold(self, key: StoredKey, close: Callable[[], None]) -> Callable[[], None]:
        """Note a connection (a runner socket, an event stream) opened with ``key``:
        ``close`` ends it once the key is revoked. Returns what to call when it ends."""
        self._open.setdefault(key.id, set()).add(close)

        def release() -> None:
            held = self._open.get(key.id)
            if held is not None:
                held.discard(close)
                if not held:
                    del self._open[key.id]

        return release

    async def check_open(self) -> None:
        """Close the connections of every key revoked (or deleted) since they opened,
        wherever it was revoked: one read per key that holds connections."""
        if self.store is None:
            return
        for key_id in list(self._open):
            try:
                row = await self.store.get_api_key(key_id)
            except StoreError as exc:
                log.warning("could not check API key %s: %s", key_id, exc.details)
                continue
            if row is None or row.revoked_at is not None:
                log.info("API key %s was revoked: closing its connections", key_id)
                self.forget(key_id)

    async def watch_revocations(self) -> None:
        """Run check_open for as long as the server runs, often enough that a key
        revoked on any instance closes what it opened within ``cache_ttl``."""
        interval = max(self.cache_ttl / 2, MIN_CHECK_INTERVAL)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.check_open()
            except Exception:
                log.exception("checking the keys of open connections failed")

    def _remember(self, digest: str, key: StoredKey | None, now: float) -> None:
        if self.cache_ttl <= 0:
            return
        if len(self._cache) >= MAX_CACHED:
            self._cache = {d: e for d, e in self._cache.items() if now < e[0]}
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
        self._cache[digest] = (now + self.cache_ttl, key)

    async def _touch(self, key: StoredKey) -> None:
        """Record that the key was used, at most once per TOUCH_INTERVAL."""
        now = self.clock()
        last = self._touched.get(key.id)
        if last is not None and now - last < TOUCH_INTERVAL:
            return
        self._touched[key.id] = now
        assert self.store is not None  # a stored key came from it
        try:
            await self.store.touch_api_key(key.id, int(time.time() * 1000))
        except StoreError as exc:  # the request goes on: this is bookkeeping
            log.warning("could not record a use of API key %s: %s", key.id, exc.details)
