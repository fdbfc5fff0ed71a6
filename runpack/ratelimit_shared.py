"""Token buckets that every instance on one PostgreSQL database counts together.

Each bucket is a row of ``rate_buckets``, refilled and taken from in one statement
(``INSERT … ON CONFLICT DO UPDATE … RETURNING``), so two instances never spend the
same token. A limit with a ``lease`` above one (client requests) takes that many
tokens at a time and spends them here: one statement per lease instead of one per
request. A lease is kept a few seconds at most, so an instance never spends more
than one lease beyond the shared budget, and tokens it took but did not use are
lost to others only briefly. New work takes its tokens one at a time.

Requests of one bucket that arrive while the database is being asked wait for that
answer instead of asking too, and once the database says a bucket is empty, this
instance refuses its requests until the time it gave without asking again: a
flood costs the database one statement per refill, not one per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from runpack.errors import StoreError
from runpack.ratelimit import Limit
from runpack.store import Store

log = logging.getLogger(__name__)

#: How long an instance keeps the tokens of a lease (seconds).
LEASE_SECONDS = 5.0
#: How often idle buckets are deleted (seconds).
PRUNE_INTERVAL = 60.0


def _now_ms() -> int:
    return int(time.time() * 1000)


class SharedBuckets:
    """Buckets in the database, with leases kept in this process."""

    def __init__(
        self,
        store: Store,
        clock: Callable[[], float] = time.monotonic,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self.store = store
        self.clock = clock
        self.clock_ms = clock_ms
        #: key -> [tokens of the lease left, until when it may be spent]
        self._leases: dict[str, list[float]] = {}
        #: key -> until when the database has no token for it (as it last answered)
        self._refused: dict[str, float] = {}
        #: key -> the database call in flight for it, which others of the key await
        self._pending: dict[str, asyncio.Future[None]] = {}
        self._pruned = clock()
        #: The longest time any bucket counted here takes to refill, in ms.
        self._refill_ms = 0

    async def take(self, key: str, limit: Limit) -> float:
        now = self.clock()
        while True:
            lease = self._leases.get(key)
            if lease is not None and lease[1] > now and lease[0] >= 1:
                lease[0] -= 1
                return 0.0
            refused_until = self._refused.get(key)
            if refused_until is not None:
                if refused_until > now:  # no token before then: no need to ask
                    return refused_until - now
                del self._refused[key]
            pending = self._pending.get(key)
            if pending is None:
                break
            # Another request of this bucket is asking the database: share its answer.
            await asyncio.shield(pending)
            now = self.clock()
        pending = self._pending[key] = asyncio.get_running_loop().create_future()
        try:
            taken, tokens = await self._take(key, limit, now)
        finally:
            del self._pending[key]
            pending.set_result(None)
        if taken < 1:
            wait = (1.0 - tokens) / limit.per_s
            self._refused[key] = now + wait
            return wait
        if taken > 1:
            lease = self._leases.get(key)
            left = lease[0] if lease is not None and lease[1] > now else 0.0
            self._leases[key] = [left + taken - 1, now + LEASE_SECONDS]
        return 0.0

    async def _take(self, key: str, limit: Limit, now: float) -> tuple[int, float]:
        refill_ms = int(limit.burst / limit.per_s * 1000)
        if refill_ms > self._refill_ms:
            self._refill_ms = refill_ms
        now_ms = self.clock_ms()
        if now - self._pruned > PRUNE_INTERVAL:
            await self._prune(now, now_ms)
        return await self.store.take_tokens(
            key, limit.per_s / 1000, limit.burst, limit.lease, now_ms
        )

    async def give_back(self, key: str, limit: Limit) -> None:
        self._refused.pop(key, None)
        if limit.lease > 1:
            lease = self._leases.get(key)
            if lease is not None:
                lease[0] += 1
            return
        try:
            await self.store.give_back_token(key, limit.burst)
        except StoreError as exc:  # the client is answered anyway; one token is lost
            log.warning("could not give back a rate-limit token of %s: %s", key, exc.details)

    async def _prune(self, now: float, now_ms: int) -> None:
        self._pruned = now
        self._leases = {k: lease for k, lease in self._leases.items() if lease[1] > now}
        self._refused = {k: until for k, until in self._refused.items() if until > now}
        try:
            await self.store.delete_idle_buckets(now_ms - self._refill_ms - 1000)
        except StoreError as exc:
            log.warning("could not delete idle rate-limit buckets: %s", exc.details)
