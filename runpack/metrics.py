"""What ``GET /metrics`` reports, in the Prometheus text format.

Each app has its own registry (tests make many apps). Counters and histograms
are updated as things happen: the job service reports submits, checks, starts
and ends through its :class:`~runpack.service.core.Observer` hooks, the store is
wrapped so each call is timed (two clock reads and one observation), and the
HTTP middleware counts requests. Levels are read when Prometheus scrapes: jobs
by status and type from one grouped count in the database (at most once a
second, however often it is scraped), connected runners and watchers from the
hub and the watch hub. The route and the middleware are in runpack.api.monitoring;
this module knows neither HTTP nor a database driver.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, cast

from prometheus_client import CollectorRegistry, Gauge, disable_created_metrics
from prometheus_client.core import (
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from runpack.errors import RunpackError
from runpack.loop_metrics import LoopCounter, LoopHistogram
from runpack.protocol import JobStatus
from runpack.service.core import Answer, Outcome
from runpack.store import JobRow, Store

log = logging.getLogger(__name__)
# No ``*_created`` series: they double the output and Prometheus ignores them.
disable_created_metrics()

#: At most this many job types are named in ``runpack_jobs``; the rest (clients
#: choose job types freely) are added up under ``OTHER_TYPES``.
MAX_JOB_TYPES = 100
OTHER_TYPES = "(other)"
#: Runs whose start this instance saw, remembered until they end (bounded).
MAX_RUNNING = 100_000
#: HTTP methods named in the labels; any other (clients may send any token) is "other".
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

DB_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
RUN_BUCKETS = (0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 600, 1800, 3600, 7200, 21600)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60)

#: ``runpack_submits_total`` outcome per service outcome (a queued job is new or requeued).
SUBMIT_OUTCOMES = {
    Outcome.CACHED: "cached",
    Outcome.ACTIVE: "deduplicated",
    Outcome.FAILED: "failed",
}


def store_operations() -> tuple[str, ...]:
    """Every call of the Store interface that is timed (all but open and close)."""
    return tuple(
        name
        for name, value in vars(Store).items()
        if inspect.iscoroutinefunction(value) and name not in ("open", "close")
    )


class JobCounts(Collector):
    """Jobs by status and type, read from the store at most once per ``ttl`` seconds."""

    def __init__(self, ttl: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self.store: Store | None = None
        self.counts: dict[tuple[str, str], int] | None = None
        self._read_at = -math.inf
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        if self.store is None or self.clock() - self._read_at < self.ttl:
            return
        async with self._lock:  # concurrent scrapes share one query
            if self.clock() - self._read_at < self.ttl:
                return
            try:
                self.counts = await self.store.count_jobs_by_status_and_type()
            except RunpackError as exc:
                # Leave the job levels out of this scrape, so it shows as a gap.
                log.warning("metrics: cannot count jobs: %s", exc)
                self.counts = None
            self._read_at = self.clock()

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        if self.counts is None:
            return
        per_type: dict[str, int] = {}
        for (_, job_type), n in self.counts.items():
            per_type[job_type] = per_type.get(job_type, 0) + n
        named = set(sorted(per_type, key=lambda t: (-per_type[t], t))[:MAX_JOB_TYPES])
        jobs: dict[tuple[str, str], int] = {}
        for (status, job_type), n in self.counts.items():
            key = (status, job_type if job_type in named else OTHER_TYPES)
            jobs[key] = jobs.get(key, 0) + n
        family = GaugeMetricFamily(
            "runpack_jobs",
            "Jobs in the database by status and job type.",
            labels=["status", "job_type"],
        )
        for (status, job_type), n in sorted(jobs.items()):
            family.add_metric([status, job_type], n)
        yield family
        pending = sum(n for (status, _), n in jobs.items() if status == JobStatus.PENDING)
        yield GaugeMetricFamily(
            "runpack_queue_depth", "Pending jobs (queued, waiting for a runner).", value=pending
        )


class Metrics:
    """The registry and instruments of one app; also the job service's observer."""

    def __init__(self, jobs_ttl: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.submits = LoopCounter(
            "runpack_submits",
            "Submits by outcome: new, requeued, cached, deduplicated (joined a queued or "
            "running job) or failed (the stored error was returned).",
            ("outcome",),
            registry=reg,
        )
        self.checks = LoopCounter(
            "runpack_checks",
            "Checks by outcome: cached, expired, failed, active or missing.",
            ("outcome",),
            registry=reg,
        )
        self.cache_hits = LoopCounter(
            "runpack_cache_hits",
            "Submits and checks answered with a stored result.",
            registry=reg,
        )
        self.cache_misses = LoopCounter(
            "runpack_cache_misses",
            "Submits that queued a computation (new or requeued job).",
            registry=reg,
        )
        self.queue_wait = LoopHistogram(
            "runpack_job_queue_wait_seconds",
            "Submit to start: from when a job was queued (or its retry came due) to its claim.",
            ("job_type",),
            buckets=WAIT_BUCKETS,
            registry=reg,
        )
        self.run_time = LoopHistogram(
            "runpack_job_run_seconds",
            "Claim to end of a run started on this instance, by how it ended: completed, "
            "failed, lost (taken back), released or cancelled.",
            ("job_type", "outcome"),
            buckets=RUN_BUCKETS,
            registry=reg,
        )
        self.db = LoopHistogram(
            "runpack_db_seconds",
            "Time of each store call, by operation (failures included).",
            ("operation",),
            buckets=DB_BUCKETS,
            registry=reg,
        )
        self.http_requests = LoopCounter(
            "runpack_http_requests",
            "HTTP requests by method, route (the path template) and status.",
            ("method", "route", "status"),
            registry=reg,
        )
        self.http_duration = LoopHistogram(
            "runpack_http_request_duration_seconds",
            "Time to answer an HTTP request (streams: until they end), by method and route.",
            ("method", "route"),
            buckets=HTTP_BUCKETS,
            registry=reg,
        )
        self.runners = Gauge(
            "runpack_runners_connected", "Runners connected over a WebSocket.", registry=reg
        )
        self.runner_slots = Gauge(
            "runpack_runner_slots", "Job slots of the connected runners.", registry=reg
        )
        self.runner_jobs = Gauge(
            "runpack_runner_jobs", "Jobs held by the connected runners.", registry=reg
        )
        self.watchers = Gauge(
            "runpack_watchers_connected",
            "Event streams open (job and admin streams, SSE or WebSocket).",
            registry=reg,
        )
        self.info = Gauge(
            "runpack_info",
            "Always 1: the server's version and event loop, as labels.",
            ["version", "event_loop"],
            registry=reg,
        )
        self.jobs = JobCounts(jobs_ttl, clock)
        reg.register(self.jobs)
        self._running: OrderedDict[str, tuple[int, str]] = OrderedDict()
        # Each series' child, looked up once (label lookups take a lock and a few µs).
        self._http: dict[tuple[str, str, int], tuple[Callable[[], None], Callable[[float], None]]]
        self._http = {}
        self._answers: dict[tuple[str, Outcome, bool], tuple[Callable[[], None], ...]] = {}
        self._waits: dict[str, Callable[[float], None]] = {}
        self._runs: dict[tuple[str, str], Callable[[float], None]] = {}

    # --- wiring (app lifecycle) ------------------------------------------------------
    def timed(self, store: Store) -> Store:
        """``store`` with every call timed into ``runpack_db_seconds``; the job levels
        are counted from it too."""
        self.jobs.store = store
        return cast(Store, TimedStore(store, self.db))

    def read_live(
        self,
        runners: Callable[[], int],
        slots: Callable[[], int],
        jobs: Callable[[], int],
        watchers: Callable[[], int],
    ) -> None:
        """Where the connection gauges read their values at scrape time."""
        self.runners.set_function(runners)
        self.runner_slots.set_function(slots)
        self.runner_jobs.set_function(jobs)
        self.watchers.set_function(watchers)

    def running_on(self, version: str, event_loop: str) -> None:
        self.info.labels(version, event_loop).set(1)

    async def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The scrape: (body, content type), OpenMetrics when ``accept`` asks for it."""
        await self.jobs.refresh()
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    # --- HTTP (the middleware) -------------------------------------------------------------
    def request_done(self, method: str, route: str, status: int, seconds: float) -> None:
        if method not in HTTP_METHODS:
            method = "other"
        series = self._http.get((method, route, status))
        if series is None:
            series = self._http[(method, route, status)] = (
                self.http_requests.labels(method, route, str(status)).inc,
                self.http_duration.labels(method, route).observe,
            )
        count, observe = series
        count()
        observe(seconds)

    # --- the job service's observer ----------------------------------------------------
    def answered(self, request: str, result: Answer) -> None:
        key = (request, result.outcome, result.requeued)
        counters = self._answers.get(key)
        if counters is None:
            counters = self._answers[key] = self._answer_counters(*key)
        for inc in counters:
            inc()

    def _answer_counters(
        self, request: str, outcome: Outcome, requeued: bool
    ) -> tuple[Callable[[], None], ...]:
        """What one kind of answer counts (looked up once, then kept)."""
        if request == "check":
            found = self.checks.labels(outcome.value).inc
            return (found, self.cache_hits.inc) if outcome == Outcome.CACHED else (found,)
        if outcome == Outcome.CREATED:
            label = "requeued" if requeued else "new"
            return (self.submits.labels(label).inc, self.cache_misses.inc)
        counted = self.submits.labels(SUBMIT_OUTCOMES.get(outcome, outcome.value)).inc
        return (counted, self.cache_hits.inc) if outcome == Outcome.CACHED else (counted,)

    def started(self, job: JobRow) -> None:
        claimed_at = job.claimed_at or 0
        queued_at = max(job.created_at, job.not_before)
        observe = self._waits.get(job.job_type)
        if observe is None:
            observe = self._waits[job.job_type] = self.queue_wait.labels(job.job_type).observe
        observe(max(claimed_at - queued_at, 0) / 1000)
        self._running[job.id] = (claimed_at, job.job_type)
        if len(self._running) > MAX_RUNNING:
            self._running.popitem(last=False)

    def ended(self, job_id: str, how: str, now: int) -> None:
        run = self._running.pop(job_id, None)
        if run is None:
            return
        claimed_at, job_type = run
        observe = self._runs.get((job_type, how))
        if observe is None:
            observe = self._runs[(job_type, how)] = self.run_time.labels(job_type, how).observe
        observe(max(now - claimed_at, 0) / 1000)


class TimedStore:
    """A store whose interface calls are timed; anything else passes straight through."""

    def __init__(self, store: Store, histogram: LoopHistogram) -> None:
        self._store = store
        for name in store_operations():
            method = getattr(store, name, None)
            if method is not None:
                setattr(self, name, _timed(method, histogram, name))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def _timed(
    method: Callable[..., Awaitable[Any]], histogram: LoopHistogram, name: str
) -> Callable[..., Awaitable[Any]]:
    """``method``, timed; an operation's series appears once it is first called."""
    clock = time.perf_counter
    observe: Callable[[float], None] | None = None

    async def timed(*args: Any, **kwargs: Any) -> Any:
        nonlocal observe
        start = clock()
        try:
            return await method(*args, **kwargs)
        finally:
            elapsed = clock() - start
            if observe is None:
                observe = histogram.labels(name).observe
            observe(elapsed)

    timed.__name__ = getattr(method, "__name__", "timed")
    return timed
