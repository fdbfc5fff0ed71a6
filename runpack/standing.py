"""Where a pending job stands: its place in line, the runners that can take it, and
when it may start; and a warning, once per job type, when jobs queue that no runner
can take.

**Runners that can take it**: the runners connected to this server (their slots are
their concurrency), and the runners other instances or the HTTP channel heard from in
the last ``SEEN_WINDOW`` seconds (one slot each: their concurrency is not stored),
less those that just left this server. Of a container job, the runners whose image
list leaves its image out are not counted.

**Place in line**: 1 + the pending jobs that claims take before it (priority, then
age) among the job types those runners handle: a count over one index range per type,
stopped at ``AHEAD_LIMIT`` (then the place and the estimate are lower bounds), so a
status read costs at most that many index entries, never the whole queue (see
:data:`runpack.store.queries.JOBS_AHEAD`; measured in docs/api.md).

**Estimate**: each job type's run time is the mean of its latest ``RECENT_RUNS``
completed runs (claim to result) of the last day. The runners' slots are free now, or
busy until their job's mean run time has passed since its claim; the jobs ahead are
given, in order, to the slot that frees first (each taking the mean run time of the
jobs ahead), and the job starts when the next slot frees. With run times that vary
little, the estimate is within about one run time divided by the slots; types that
share runners with other types, and runners of other instances whose concurrency is
unknown, make it coarser. No run of any of the types in the last day: no estimate.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, NotRequired, TypedDict

from runpack.encoding import parse_json_text
from runpack.image_lists import CONTAINER, claimable, refuses
from runpack.notify import EventKind, ServerEvent
from runpack.protocol import JobStatus
from runpack.store import JobRow, Store

if TYPE_CHECKING:
    from runpack.hub import Hub

log = logging.getLogger(__name__)

#: Runners heard from this recently count as able to take jobs (seconds).
SEEN_WINDOW = 90.0
#: Jobs ahead are counted up to this many (per part of the count).
AHEAD_LIMIT = 1_000
#: A type's run time is the mean of its latest this many completed runs...
RECENT_RUNS = 20
#: ...of this many last seconds.
RUN_HISTORY = 86_400.0
#: Runners and run times are read again after this many seconds.
CACHE_FOR = 2.0
#: Jobs ahead given to slots one by one; beyond, they are spread evenly.
SIMULATED = 2_000
#: Runners named in the sentence saying none can take a job.
NAMED = 10


#: The events the warning follows (runpack.notify calls it for these only).
WARNING_EVENTS = (EventKind.JOB_QUEUED, EventKind.RUNNER_ATTACHED)


class QueueState(TypedDict):
    """Where a pending job stands (the ``queue`` field of a pending job)."""

    position: Annotated[int, "1: the next job its runners take (priority, then age)."]
    position_capped: NotRequired[
        Annotated[
            bool,
            "More jobs are ahead than were counted (1,000): the position and the "
            "estimate are lower bounds.",
        ]
    ]
    runners: Annotated[int, "Connected runners that handle its type."]
    slots: Annotated[int, "Their slots (1 for a runner of another instance)."]
    estimated_start_s: Annotated[
        float | None, "Seconds until it starts, from recent run times; null: no run to tell from."
    ]
    message: Annotated[str, "The above as a sentence, or why no runner can take it."]


@dataclass(frozen=True, slots=True)
class Able:
    """A runner that may take jobs: its id, name, job types and slots."""

    runner_id: str
    name: str
    capabilities: frozenset[str]
    slots: int
    #: Connected to this server (its concurrency known).
    local: bool


class Standing:
    """Answers where pending jobs stand; warns of job types no runner handles."""

    def __init__(self, store: Store, hub: Hub) -> None:
        self.store = store
        self.hub = hub
        self.clock_ms = hub.service.clock
        self._seen: tuple[float, list[Able]] | None = None
        self._means: dict[str, tuple[float, float | None]] = {}
        #: Job types warned about (until a runner that handles one connects).
        self._warned: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._unsubscribe = hub.service.notifier.subscribe(self._on_event, WARNING_EVENTS)

    def close(self) -> None:
        self._unsubscribe()
        for task in self._tasks:
            task.cancel()

    # --- the warning --------------------------------------------------------------------
    def _on_event(self, event: ServerEvent) -> None:
        if event.origin is not None:
            return  # the instance that queued it warns
        if event.type == EventKind.RUNNER_ATTACHED:
            conn = self.hub.conns.get(event.data.get("runner_id", ""))
            if conn is not None:
                self._warned -= conn.capabilities  # warn again if it happens again
        elif event.type == EventKind.JOB_QUEUED and not event.data.get("runner_id"):
            job_type = str(event.data.get("job_type", ""))
            if job_type in self._warned:
                return
            if self.hub.handles(job_type):
                return
            self._warned.add(job_type)  # checked once; a runner that comes clears it
            task = asyncio.create_task(self._warn(job_type), name="runpack-standing-warn")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _warn(self, job_type: str) -> None:
        try:
            runners = await self.runners()
        except Exception:
            log.exception("cannot tell whether a runner handles job type %s", job_type)
            self._warned.discard(job_type)
            return
        if any(job_type in r.capabilities for r in runners):
            self._warned.discard(job_type)
            return
        log.warning(
            "jobs of type %s are queued and wait: %s", job_type, no_runner(job_type, runners)
        )

    # --- runners ------------------------------------------------------------------------
    async def runners(self) -> list[Able]:
        """The runners that may take jobs now, connected ones first."""
        found = {
            rid: Able(rid, c.name, c.capabilities, c.concurrency, True)
            for rid, c in self.hub.conns.items()
        }
        left = self.hub.departed
        cutoff = time.monotonic() - SEEN_WINDOW
        for rid in [rid for rid, at in left.items() if at < cutoff]:
            del left[rid]
        for runner in await self._seen_runners():
            if runner.runner_id not in found and runner.runner_id not in left:
                found[runner.runner_id] = runner
        return list(found.values())

    async def _seen_runners(self) -> list[Able]:
        now = time.monotonic()
        if self._seen is not None and now - self._seen[0] < CACHE_FOR:
            return self._seen[1]
        since = self.clock_ms() - int(SEEN_WINDOW * 1000)
        rows = await self.store.runners_seen(since, 1000)
        lists = await self.store.runner_images([r.id for r in rows if CONTAINER in r.capabilities])
        seen = [
            Able(
                r.id,
                r.name,
                claimable(frozenset(parse_json_text(r.capabilities, [])), lists.get(r.id)),
                1,
                False,
            )
            for r in rows
        ]
        self._seen = (now, seen)
        return seen

    # --- run times ----------------------------------------------------------------------
    async def mean_run(self, job_type: str) -> float | None:
        """Seconds the latest runs of ``job_type`` took on average; None: no run."""
        now = time.monotonic()
        cached = self._means.get(job_type)
        if cached is not None and now - cached[0] < CACHE_FOR:
            return cached[1]
        since = self.clock_ms() - int(RUN_HISTORY * 1000)
        runs = await self.store.recent_runs(job_type, since, RECENT_RUNS)
        mean = sum(max(r, 0) for r in runs) / len(runs) / 1000 if runs else None
        if len(self._means) > 1000:
            self._means.clear()
        self._means[job_type] = (now, mean)
        return mean

    # --- a job's place ------------------------------------------------------------------
    async def of(self, job: JobRow) -> QueueState | None:
        """Where ``job`` stands, if it is pending; None otherwise."""
        if job.status != JobStatus.PENDING:
            return None
        runners = await self.runners()
        able = [r for r in runners if job.job_type in r.capabilities]
        refused = None
        if job.job_type == CONTAINER and able:  # runners here whose image list leaves it out
            params = parse_json_text(job.input_params, {})
            kept = [r for r in able if not refuses(r.capabilities, job.job_type, params)]
            if not kept:
                refused = str(params.get("image") if isinstance(params, dict) else None)
            able = kept
        types = sorted({t for r in able for t in r.capabilities} | {job.job_type})
        ahead = await self.store.jobs_ahead(job, types, AHEAD_LIMIT)
        count = sum(ahead.values())
        state = QueueState(
            position=count + 1,
            runners=len(able),
            slots=sum(r.slots for r in able),
            estimated_start_s=None,
            message="",
        )
        if any(n >= AHEAD_LIMIT for n in ahead.values()):
            state["position_capped"] = True
        if not able:
            state["message"] = no_runner(job.job_type, runners, refused)
            return state
        start = await self._estimate(job, able, ahead)
        if start is not None:
            start = max(start, (job.not_before - self.clock_ms()) / 1000)
            state["estimated_start_s"] = round(start, 1)
        state["message"] = in_line(state, job.job_type)
        return state

    async def _estimate(
        self, job: JobRow, able: Sequence[Able], ahead: dict[str, int]
    ) -> float | None:
        running = await self.store.running_on([r.runner_id for r in able], 10_000)
        types = set(ahead) | {t for _, t, _ in running} | {job.job_type}
        means = {t: await self.mean_run(t) for t in sorted(types)}
        known = [m for m in means.values() if m is not None]
        if not known:
            return None
        fallback = sum(known) / len(known)

        def run_time(job_type: str) -> float:
            mean = means.get(job_type)
            return fallback if mean is None else mean

        now = self.clock_ms()
        busy: dict[str, list[float]] = {}
        for runner_id, job_type, claimed_at in running:
            left = run_time(job_type) - (now - claimed_at) / 1000
            busy.setdefault(runner_id, []).append(max(left, 0.0))
        slots: list[float] = []
        for runner in able:
            mine = busy.get(runner.runner_id, [])
            free = max(runner.slots, len(mine)) - len(mine)
            slots += mine + [0.0] * free
        count = sum(ahead.values())
        each = sum(n * run_time(t) for t, n in ahead.items()) / count if count else 0.0
        return start_after(slots, count, each)


def start_after(slots: list[float], count: int, each: float) -> float:
    """When a slot is free for the next job, once ``count`` jobs of ``each`` seconds
    went, in order, to whichever of ``slots`` (seconds until free) frees first."""
    if not slots:
        return 0.0
    heap = sorted(slots)
    for _ in range(min(count, SIMULATED)):
        heapq.heapreplace(heap, heap[0] + each)
    return heap[0] + max(count - SIMULATED, 0) * each / len(heap)


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def duration(seconds: float) -> str:
    if seconds < 1:
        return "under a second"
    if seconds < 90:
        return f"about {round(seconds)} s"
    if seconds < 5400:
        return f"about {round(seconds / 60)} min"
    return f"about {seconds / 3600:.1f} h"


def in_line(state: QueueState, job_type: str) -> str:
    if state.get("position_capped"):
        place = f"more than {state['position'] - 1:,} jobs ahead"
        if state["estimated_start_s"] is not None:
            return f"{place}, at least {duration(state['estimated_start_s'])}"
    else:
        place = f"{ordinal(state['position'])} in line"
    start = state["estimated_start_s"]
    if start is None:
        return f"{place}; no recent run of {job_type} to estimate its start from"
    return f"{place}, {duration(start)}"


def no_runner(job_type: str, runners: Sequence[Able], image: str | None = None) -> str:
    """The sentence for a job that no runner can take; ``image``: that of a container
    job that runners handle, none of them allowing it."""
    head = f"no connected runner handles job type {job_type}"
    if image is not None:
        head = f"no connected runner allows its image {image} (RUNPACK_CONTAINER_IMAGES)"
    if not runners:
        return f"{head}; no runner is connected"
    named = [f"{r.name} ({', '.join(sorted(r.capabilities)) or 'no job types'})" for r in runners]
    more = len(named) - NAMED
    listed = ", ".join(named[:NAMED]) + (f" and {more} more" if more > 0 else "")
    return f"{head}; runners connected: {listed}"
