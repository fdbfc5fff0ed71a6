"""Which requests count against which rate limit: limits follow cost.

- **New work** (a submit that queues a job, or runs one again) takes a token from its
  client address's bucket (``rate_new_jobs``, ``rate_new_jobs_burst``) and from its
  key's (``rate_key_new_jobs``, or the rate a stored key was made with). The submit
  takes them just before it creates anything and gives them back if it found the
  job after all, so cache hits cost nothing here.
- **Client requests** (submits, checks, status reads, event streams) take from their
  address's request bucket (``rate_requests``, ``rate_requests_burst``), sized for
  pages that poll.
- **Runners' polls and heartbeats** keep the original's per-runner limits, counted by
  each instance.
- **New runners** (a registration, or a hello without a known runner id) take from
  their address's registration bucket (``rate_registrations``): every runner is a row
  kept until ``runner_ttl``, so a runner key on another lab's machine cannot fill the
  table. A runner that comes back under its id registers nothing and is not counted.

Not limited: the admin key; a stored key made with ``--rate 0``; and, on a server
that generated its keys (local development), clients on loopback. On PostgreSQL the
address and key buckets are shared by every instance (:mod:`runpack.ratelimit_shared`);
on SQLite, one instance, they are kept in memory.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache

from aiohttp import web

from runpack.api.common import RoutePolicy
from runpack.appkeys import CALLER
from runpack.auth import Caller
from runpack.protocol import Role
from runpack.ratelimit import Buckets, Limit, LocalBuckets
from runpack.ratelimit_shared import SharedBuckets
from runpack.settings import Settings
from runpack.store import Store

#: Tokens an instance takes from a shared bucket at a time: a tenth of its burst (one
#: for a burst under 20). Small budgets are counted exactly; large ones cost a database
#: statement per lease, and an instance holds at most a lease it has not spent yet.
LEASE_FRACTION = 10


def client_ip(request: web.Request, trust_proxy: bool) -> str:
    if trust_proxy:
        cf = request.headers.get("CF-Connecting-IP")
        if cf:
            return cf.strip()
        forwarded = request.headers.get("X-Forwarded-For")
        if forwarded:
            # The right-most entry is the one our proxy appended; the rest is hearsay.
            return forwarded.split(",")[-1].strip()
    return request.remote or "unknown"


@lru_cache(maxsize=1024)
def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _setting(name: str) -> str:
    return f"RUNPACK_{name.upper()}"


class Limits:
    """The server's rate limits, from its settings."""

    def __init__(self, settings: Settings, store: Store, *, generated_keys: bool = False) -> None:
        self.trust_proxy = settings.trust_proxy
        #: Local development: the server made its own keys, so loopback is its owner.
        self.loopback_free = generated_keys
        if not settings.rate_window > 0:
            raise ValueError(
                f"rate_window must be a number of seconds above 0: {settings.rate_window}"
            )
        self.period = period = settings.rate_window
        every = f"{period:g} s"
        self.new_jobs = Limit.per_period(
            "new_jobs",
            settings.rate_new_jobs,
            period,
            settings.rate_new_jobs_burst,
            f"New jobs from one client address (submits that queue a job or run one "
            f"again; cache hits and checks do not count): {settings.rate_new_jobs_burst} "
            f"at once, then {settings.rate_new_jobs} per {every}. "
            f"{_setting('rate_new_jobs')} and {_setting('rate_new_jobs_burst')} raise it, "
            "or use a key of your own (runpack keys create --rate).",
            lease=settings.rate_new_jobs_burst // LEASE_FRACTION,
        )
        self.key_new_jobs = Limit.per_period(
            "key_new_jobs",
            settings.rate_key_new_jobs,
            period,
            settings.rate_key_new_jobs,
            f"New jobs with this API key, from all addresses together: "
            f"{settings.rate_key_new_jobs} per {every}. "
            f"{_setting('rate_key_new_jobs')} raises it, or use a key of your own "
            "(runpack keys create --rate).",
            lease=settings.rate_key_new_jobs // LEASE_FRACTION,
        )
        burst = settings.rate_requests_burst
        self.requests = Limit.per_period(
            "requests",
            settings.rate_requests,
            period,
            burst,
            f"Requests from one client address (submits, checks, status reads, event "
            f"streams): {burst} at once, then {settings.rate_requests} per {every}. "
            f"{_setting('rate_requests')} and {_setting('rate_requests_burst')} raise it.",
            lease=max(1, burst // LEASE_FRACTION),
        )
        self.registrations = Limit.per_period(
            "registrations",
            settings.rate_registrations,
            period,
            settings.rate_registrations,
            f"New runners registered from one client address: "
            f"{settings.rate_registrations} per {every}. A runner that keeps its state "
            f"file comes back under its id and is not counted. "
            f"{_setting('rate_registrations')} raises it.",
            lease=settings.rate_registrations // LEASE_FRACTION,
        )
        #: Buckets counted per client address, by the name routes give them.
        self.per_address = {"requests": self.requests, "registrations": self.registrations}
        self.per_runner = {
            bucket: Limit.per_period(
                bucket,
                rate,
                period,
                rate,
                f"{what} by one runner: {rate} per {every}. {_setting('rate_' + bucket)} "
                "raises it.",
            )
            for bucket, rate, what in (
                ("available", settings.rate_available, "Available-job polls"),
                ("heartbeat", settings.rate_heartbeat, "Heartbeats"),
            )
        }
        self.local = LocalBuckets()
        shared = settings.db.startswith(("postgres://", "postgresql://"))
        #: Client buckets: in the database when instances may share it.
        self.buckets: Buckets = SharedBuckets(store) if shared else self.local

    def _free(self, request: web.Request, caller: Caller) -> bool:
        """Requests no limit applies to."""
        if caller.role == Role.ADMIN:
            return True
        if caller.key is not None and caller.key.rate == 0:
            return True
        return self.loopback_free and is_loopback(client_ip(request, self.trust_proxy))

    async def admit(self, request: web.Request, policy: RoutePolicy, caller: Caller) -> None:
        """Count a request on a rate-limited route; raise RateLimited past its limit."""
        if policy.per_runner:
            limit = self.per_runner.get(policy.bucket or "")
            if limit is not None:
                who = request.headers.get("X-Runner-ID", "")
                wait = self.local.take_now(f"{limit.name}:{who}", limit)
                if wait:
                    raise limit.refusal(wait)
            return
        await self.admit_address(request, policy.bucket or "", caller)

    async def admit_address(self, request: web.Request, bucket: str, caller: Caller) -> None:
        """Count a request in its client address's ``bucket`` (``requests`` or
        ``registrations``); raise RateLimited past its limit."""
        limit = self.per_address.get(bucket)
        if limit is None or self._free(request, caller):
            return
        address = client_ip(request, self.trust_proxy)
        wait = await self.buckets.take(f"{limit.name}:{address}", limit)
        if wait:
            raise limit.refusal(wait)

    def work_budget(self, request: web.Request) -> WorkBudget | None:
        """What this request may start: None when nothing limits it."""
        caller = request[CALLER]
        key = caller.key
        if self.new_jobs is None and self.key_new_jobs is None and (key is None or not key.rate):
            return None  # no bucket of new work applies: not even _free need be asked
        if self._free(request, caller):
            return None
        spends: list[tuple[str, Limit]] = []
        if self.new_jobs is not None:
            address = client_ip(request, self.trust_proxy)
            spends.append((f"new_jobs:{address}", self.new_jobs))
        per_key = self.key_new_jobs
        if key is not None and key.rate is not None:
            # A stored key with a rate of its own (never 0 here: see _free).
            per_key = Limit.per_period(
                "key_new_jobs",
                key.rate,
                self.period,
                key.rate,
                f"New jobs with this API key, from all addresses together: {key.rate} per "
                f"{self.period:g} s, its own rate (runpack keys create --rate).",
                lease=key.rate // LEASE_FRACTION,
            )
        if per_key is not None:
            who = key.id if key is not None else f"env-{caller.role}"
            spends.append((f"key:{who}", per_key))
        if not spends:
            return None
        return WorkBudget(self.buckets, tuple(spends), shared=self.buckets is not self.local)


@dataclass(slots=True)
class WorkBudget:
    """The new-work buckets of one request: a unit is a token from each, or none."""

    buckets: Buckets
    spends: tuple[tuple[str, Limit], ...]
    shared: bool = False

    async def take(self) -> None:
        taken: list[tuple[str, Limit]] = []
        for key, limit in self.spends:
            wait = await self.buckets.take(key, limit)
            if wait:
                for done in reversed(taken):
                    await self.buckets.give_back(*done)
                raise limit.refusal(wait)
            taken.append((key, limit))

    async def give_back(self) -> None:
        for key, limit in reversed(self.spends):
            await self.buckets.give_back(key, limit)
