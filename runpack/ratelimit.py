"""Token buckets: a rate, and a burst that may be spent at once.

A bucket holds up to ``burst`` tokens and gains ``per_s`` a second; a request takes
one, and is refused while there is none, with the time until there is one. Buckets
live in this process (:class:`LocalBuckets`), or, for instances sharing a PostgreSQL
database, in a table they all update (:mod:`runpack.ratelimit_shared`). Which
requests take from which bucket is :mod:`runpack.api.limits`'s business.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from runpack.errors import RateLimited


@dataclass(frozen=True, slots=True)
class Limit:
    """One kind of bucket: how it fills, and what to tell a client it refuses."""

    #: A short name, given in the 429 body (``"new_jobs"``).
    name: str
    #: Tokens gained per second.
    per_s: float
    #: Most tokens held at once.
    burst: float
    #: What the bucket counts and which setting raises it: the 429's ``details``.
    details: str
    #: Tokens an instance takes from a shared bucket at a time, spending them locally
    #: (1: every request is counted in the database).
    lease: int = 1

    @classmethod
    def per_period(
        cls, name: str, rate: int, period_s: float, burst: int, details: str, lease: int = 1
    ) -> Limit | None:
        """``rate`` per ``period_s`` seconds, ``burst`` at once; None for no limit (0)."""
        if rate <= 0:
            return None
        return cls(name, rate / period_s, float(max(1, burst)), details, max(1, lease))

    def refusal(self, wait_s: float) -> RateLimited:
        """The 429 for a request refused by this bucket, a token ``wait_s`` away."""
        wait_s = max(wait_s, 0.0)
        reset_ms = int((time.time() + wait_s) * 1000)
        return RateLimited(reset_ms, max(1, math.ceil(wait_s)), self.details, self.name)


class Buckets(Protocol):
    async def take(self, key: str, limit: Limit) -> float:
        """Take a token from ``key``'s bucket: 0.0 if taken, else the seconds until
        one is there (nothing taken)."""
        ...

    async def give_back(self, key: str, limit: Limit) -> None:
        """Return a token taken for work that was not done after all."""
        ...


class LocalBuckets:
    """Buckets in this process's memory: no I/O, for SQLite's single instance and for
    per-runner limits."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000
    ) -> None:
        self.clock = clock
        self.max_keys = max_keys
        #: key -> [tokens, when counted, when full again]
        self._buckets: dict[str, list[float]] = {}

    def take_now(self, key: str, limit: Limit) -> float:
        now = self.clock()
        entry = self._buckets.get(key)
        if entry is None:
            if len(self._buckets) >= self.max_keys:
                self._prune(now)
            tokens = limit.burst
        else:
            tokens = min(limit.burst, entry[0] + (now - entry[1]) * limit.per_s)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / limit.per_s
        self._buckets[key] = [tokens, now, now + (limit.burst - tokens) / limit.per_s]
        return wait

    async def take(self, key: str, limit: Limit) -> float:
        return self.take_now(key, limit)

    def give_back_now(self, key: str, limit: Limit) -> None:
        entry = self._buckets.get(key)
        if entry is None:
            return  # forgotten meanwhile: it was full, and is full still
        entry[0] = min(limit.burst, entry[0] + 1.0)
        entry[2] = entry[1] + (limit.burst - entry[0]) / limit.per_s

    async def give_back(self, key: str, limit: Limit) -> None:
        self.give_back_now(key, limit)

    def _prune(self, now: float) -> None:
        """Forget full buckets (a new one is full too); if none is, the oldest half."""
        self._buckets = {k: e for k, e in self._buckets.items() if e[2] > now}
        if len(self._buckets) >= self.max_keys:
            oldest = sorted(self._buckets, key=lambda k: self._buckets[k][1])
            for key in oldest[: self.max_keys // 2]:
                del self._buckets[key]
