"""Connected runners: who holds which job, who gets the next one.

The hub assigns jobs: when a job is queued or a runner grants slots, it claims
jobs in SQL for the least busy runners that can run them (in waves that share a
commit each, stopping at the first claim that finds nothing, so an idle server
holding many runners makes few claims) and pushes them over the runner's
socket. A job submitted while a runner has a free slot and no queued job waits
for one is inserted already claimed for that runner and pushed as its insert
commits, with no claim (runpack.placement, which the hub keeps informed). Each
connection has a bounded send queue; a runner that cannot keep up is
disconnected, never waited for. A runner whose socket drops
keeps its jobs for ``reconnect_grace`` seconds; after that they go back to the
queue with the sweeper's backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections import Counter
from collections.abc import Callable
from operator import attrgetter
from typing import Any

from runpack.connections import RunnerConn
from runpack.encoding import assignment
from runpack.errors import RunpackError
from runpack.eventloop import cancel_and_wait
from runpack.image_lists import group_key
from runpack.notify import EventKind, ServerEvent
from runpack.placement import Placement
from runpack.protocol import Cancel, JobStatus
from runpack.service import JobService
from runpack.store import JobRow

log = logging.getLogger(__name__)

SEND_QUEUE = 1000
#: Also look for work this often, for retries whose backoff has passed.
POLL_INTERVAL = 1.0
#: Refresh connected runners' last_seen this often (they count as active).
TOUCH_INTERVAL = 60.0


class Hub:
    def __init__(
        self,
        service: JobService,
        reconnect_grace: float,
        placement: Placement | None = None,
        full_waves: bool = True,
    ) -> None:
        self.service = service
        #: A group with a backlog claims with all its slots at once (RUNPACK_FULL_WAVES).
        self.full_waves = full_waves
        #: New jobs placed on free slots as they are inserted; the service that inserts
        #: them was given the same object (see runpack.app). None: not placed.
        self.placement = placement if placement is not None else Placement(enabled=False)
        self.reconnect_grace = reconnect_grace
        self.conns: dict[str, RunnerConn] = {}
        #: One frozenset per distinct set of job types claimed (see regroup()).
        self._capabilities: weakref.WeakValueDictionary[tuple[str, ...], frozenset[str]] = (
            weakref.WeakValueDictionary()
        )
        self._handled: frozenset[str] | None = None  # see handles()
        self._wake = asyncio.Event()
        self._queued = asyncio.Event()  # replaced each time a job is queued (long-poll)
        self._grace: dict[str, asyncio.TimerHandle] = {}
        #: Runners that left this server, and when (time.monotonic): they no longer take
        #: jobs, whatever their last_seen says (runpack.standing prunes it).
        self.departed: dict[str, float] = {}
        #: Runners a claim failed for: it may have committed with its answer lost.
        self._unsure: set[str] = set()
        #: Groups (by capabilities) whose last round used every slot and still found
        #: jobs: no new job is placed on them (queued jobs come first), and with
        #: ``full_waves`` their next round claims with all its slots at once.
        self._backlog: set[frozenset[str]] = set()
        #: A round or a reconcile is running (they see the queue as it is).
        self._dispatching = False
        #: Set while the dispatcher sleeps, waiting to be woken.
        self._asleep = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._dispatcher: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        #: The server is shutting down: long-polls answer at once, with no job.
        self.stopping = False

    # --- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        self._unsubscribe = self.service.notifier.subscribe(self._on_event)
        self.placement.serve(self)
        self._dispatcher = asyncio.create_task(self._dispatch_loop(), name="runpack-hub")

    async def stop(self) -> None:
        self.placement.serve(None)
        if self._unsubscribe is not None:
            self._unsubscribe()
        for handle in self._grace.values():
            handle.cancel()
        self._grace.clear()
        await cancel_and_wait([self._dispatcher, *self._tasks])

    def shutting_down(self) -> None:
        """End the long-polls now (the server waits for open requests before stopping)."""
        self.stopping = True
        self._queued.set()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("hub task %s failed", task.get_name(), exc_info=task.exception())

    # --- events -----------------------------------------------------------------------
    def _on_event(self, event: ServerEvent) -> None:
        if event.type == EventKind.JOB_QUEUED and event.data.get("runner_id"):
            return  # claimed as it was inserted: no runner needs waking for it
        if event.type in (EventKind.JOB_QUEUED, EventKind.RESYNC):
            self.wake()
            self._queued.set()
            self._queued = asyncio.Event()
        elif event.type == EventKind.RUNNER_ATTACHED and event.origin is not None:
            # It came back through another instance: our grace period is over.
            handle = self._grace.pop(event.data.get("runner_id", ""), None)
            if handle is not None:
                handle.cancel()
        elif (
            event.type == EventKind.JOB_UPDATED and event.data.get("status") == JobStatus.CANCELLED
        ):
            self.cancel(event.job_id or "", event.data.get("reason", "cancelled"))

    def wake(self) -> None:
        self._wake.set()

    def queued_signal(self) -> asyncio.Event:
        """An event set when the next job is queued: take it before looking for work."""
        return self._queued

    # --- connections ------------------------------------------------------------------
    async def attach(self, conn: RunnerConn, held: list[str]) -> tuple[list[str], list[str]]:
        """A runner (re)connected holding ``held``: (jobs it keeps, jobs to drop)."""
        old = self.conns.get(conn.runner_id)
        if old is not None and old is not conn:
            old.close()
        handle = self._grace.pop(conn.runner_id, None)
        if handle is not None:
            handle.cancel()
        self.conns[conn.runner_id] = conn
        self._handled = None
        self.departed.pop(conn.runner_id, None)
        if old is not None:
            self._note(old)  # no longer connected: none of its slots are free
        self.regroup(conn, conn.capabilities)
        self.service.notifier.publish(
            ServerEvent(EventKind.RUNNER_ATTACHED, data={"runner_id": conn.runner_id})
        )
        owned = {j.id for j in await self.service.running_jobs_of(conn.runner_id)}
        resumed = [j for j in held if j in owned]
        dropped = [j for j in held if j not in owned]
        conn.hold(resumed)
        lost = owned - set(held)  # pushed before the drop but never received
        if lost:
            await self.service.release_jobs(conn.runner_id, sorted(lost), "runner reconnected")
        return resumed, dropped

    def detach(self, conn: RunnerConn) -> None:
        if self.conns.get(conn.runner_id) is not conn:
            return
        del self.conns[conn.runner_id]
        self._handled = None
        self.departed[conn.runner_id] = time.monotonic()
        self._note(conn)
        loop = asyncio.get_running_loop()
        self._grace[conn.runner_id] = loop.call_later(
            self.reconnect_grace, self._grace_over, conn.runner_id
        )

    def _grace_over(self, runner_id: str) -> None:
        self._grace.pop(runner_id, None)
        if runner_id not in self.conns:
            self._spawn(self.service.take_back_runner(runner_id), f"take-back-{runner_id}")

    def grant(self, conn: RunnerConn, slots: int) -> None:
        conn.grant(slots)
        self._note(conn)
        if conn.free:
            self.wake()

    def _note(self, conn: RunnerConn) -> None:  # its slots or connection changed
        self.placement.note(conn)

    # --- what runpack.placement asks of the hub ----------------------------------------
    def idle(self) -> bool:
        """Neither woken nor at work: no queued job waits for a free slot."""
        return not (self.stopping or self._dispatching or self._wake.is_set())

    def may_place_on(self, conn: RunnerConn) -> bool:
        """Whether a new job may go to ``conn``: not while its group has a backlog (the
        dispatcher claims for it), nor while its claims are checked (that check waits
        for no insert in flight)."""
        return conn.capabilities not in self._backlog and conn.runner_id not in self._unsure

    def check_claims_of(self, runner_id: str) -> None:
        """A job may be claimed for this runner without its knowing: the next round checks."""
        self._unsure.add(runner_id)

    def placements_done(self, runner_id: str) -> None:
        """No insert claimed for this runner is on its way any more."""
        if runner_id in self._unsure:
            self.wake()  # its reconcile waited for this

    def finished(self, conn: RunnerConn, job_id: str) -> None:
        """The job's result or release is stored: its slot, if granted, takes a job.
        The dispatcher is woken if the runner had no free slot before: with one, it
        was woken already for any job that waits."""
        had_room = conn.free > 0
        conn.forget(job_id)
        self._note(conn)
        if not had_room and conn.free and self.conns.get(conn.runner_id) is conn:
            self.wake()

    def cancel(self, job_id: str, reason: str) -> None:
        for conn in self.conns.values():
            if job_id in conn.held:
                conn.send(Cancel(job_id, reason))

    # --- assignment -------------------------------------------------------------------
    async def _dispatch_loop(self) -> None:
        last_touch = time.monotonic()
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 a wait_for whose timeout
            # fires as the task is cancelled swallows the cancel, and stop() hangs.
            self._asleep.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_INTERVAL):
                    await self._wake.wait()
            self._asleep.clear()
            self._wake.clear()
            if time.monotonic() - last_touch > TOUCH_INTERVAL:
                last_touch = time.monotonic()
                self._spawn(self._touch_connected(), "touch-runners")
            self._dispatching = True
            self.placement.round_starts()
            try:
                await self._reconcile()
                while await self._dispatch_round():
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dispatch round failed")
            finally:
                self._dispatching = False

    async def settled(self) -> None:
        """Wait until the dispatcher is done with what it was woken for."""
        while not self._asleep.is_set() or self._wake.is_set():
            if self._asleep.is_set():
                await asyncio.sleep(0)  # woken: let it run
            else:
                await self._asleep.wait()

    async def _touch_connected(self) -> None:
        """Connected runners are in contact: keep their last_seen fresh."""
        for runner_id in list(self.conns):
            with contextlib.suppress(RunpackError):
                await self.service.touch_runner(runner_id)

    async def _reconcile(self) -> None:
        """Queue again the jobs whose claim committed but whose answer was lost.

        A claim whose database connection drops may have committed: its job is
        then claimed for a runner that never hears of it. Between rounds no claim
        of this hub is in flight, so a claimed job that the runner's connection
        does not hold is such a job, unless a new job's insert for that runner is
        on its way: such a runner is checked once the insert answered. (A runner
        that reconnects says what it holds, and the rest is taken back then.)
        """
        for runner_id in list(self._unsure):
            if self.placement.placing(runner_id):
                continue
            conn = self.conns.get(runner_id)
            if conn is not None:
                try:
                    jobs = await self.service.running_jobs_of(runner_id)
                    unheld = [j for j in jobs if not conn.holds(j.id)]
                    lost = [j.id for j in unheld if j.status == JobStatus.CLAIMED]
                    if lost:
                        log.warning("claims for %s lost their answer: %s", runner_id, lost)
                        await self.service.release_jobs(runner_id, lost, "the claim was lost")
                except RunpackError as exc:
                    log.warning("cannot check the claims of %s yet: %s", runner_id, exc)
                    continue
            self._unsure.discard(runner_id)

    async def _dispatch_round(self) -> bool:
        """Claim and push one batch; True if anything was assigned.

        Runners that can run the same job types form a group; each runner offers
        half its free slots (rounds repeat while jobs are found), least busy first.
        A group claims in waves of 1, 2, 4… slots, one statement per runner for all
        its slots in the wave, and stops at its first claim that comes back short:
        looking for work costs a claim per group, not one per free slot, however
        many idle runners are connected.
        """
        ready: dict[frozenset[str], list[RunnerConn]] = {}
        for conn in self.conns.values():
            if conn.free > 0:
                ready.setdefault(conn.capabilities, []).append(conn)
        groups: dict[frozenset[str], list[RunnerConn]] = {}
        for caps, conns in ready.items():
            if any(c.held for c in conns):  # all idle: already in order
                conns.sort(key=attrgetter("load"))  # least busy first
            # Half the free slots of each runner, rounded up: (free + 1) // 2.
            groups[caps] = [c for c in conns for _ in range((c.free + 1) // 2)]
        wave = {caps: self._first_wave(caps, len(slots)) for caps, slots in groups.items()}
        assigned = False
        while groups:
            # This wave's slots, as (group, runner, slots): one claim statement each.
            asks: list[tuple[frozenset[str], RunnerConn, int]] = []
            for caps, slots in groups.items():
                taken = Counter(c for c in slots[: wave[caps]] if self.conns.get(c.runner_id) is c)
                asks += [(caps, conn, n) for conn, n in taken.items()]
                del slots[: wave[caps]]
            for _, conn, n in asks:
                conn.reserve(n)  # while the claim is in flight
                self._note(conn)
            results = await asyncio.gather(
                *(self.service.claim_batch(c.runner_id, caps, n) for caps, c, n in asks),
                return_exceptions=True,
            )
            found_nothing: set[frozenset[str]] = set()
            for (caps, conn, n), result in zip(asks, results, strict=True):
                if isinstance(result, BaseException):
                    log.error("claim for %s failed: %s", conn.runner_id, result)
                    conn.unreserve(n, n)
                    self._note(conn)
                    self._unsure.add(conn.runner_id)
                    found_nothing.add(caps)
                    continue
                for job in result:
                    assigned = True
                    self.push(conn, job)
                conn.unreserve(n, n - len(result))
                self._note(conn)
                if len(result) < n:
                    found_nothing.add(caps)
            for caps in list(groups):
                if caps in found_nothing:
                    self._backlog.discard(caps)
                    del groups[caps]
                elif not groups[caps]:
                    self._backlog.add(caps)  # every slot taken a job: likely more
                    del groups[caps]
                else:
                    wave[caps] *= 2
        return assigned

    def _first_wave(self, caps: frozenset[str], slots: int) -> int:
        """The slots a group claims for first in a round: all of them if its last round
        found a job for every slot (and full waves are on), else one (measured in
        docs/performance.md)."""
        return slots if self.full_waves and caps in self._backlog else 1

    def push(self, conn: RunnerConn, job: JobRow) -> None:
        if self.conns.get(conn.runner_id) is not conn:
            # Gone while claiming: the grace period or a reconnect sorts it out; if
            # it is back already, the next round takes the job back.
            if conn.runner_id in self.conns:
                self._unsure.add(conn.runner_id)
                self.wake()
            return
        conn.hold((job.id,))
        conn.send(assignment(job))

    def regroup(self, conn: RunnerConn, job_types: frozenset[str]) -> bool:
        """``conn`` claims these job types now (as the one object shared by the runners
        that have them, and the same image list: runpack.image_lists); whether they changed."""
        kept = self._capabilities.setdefault(group_key(job_types), job_types)
        changed, conn.capabilities, self._handled = kept != conn.capabilities, kept, None
        return changed

    def handles(self, job_type: str) -> bool:
        """Whether a connected runner handles ``job_type`` (kept until one comes or goes)."""
        if self._handled is None:
            self._handled = frozenset().union(*(c.capabilities for c in self.conns.values()))
        return job_type in self._handled

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Live state per connected runner here (for tests; the admin API reads the store)."""
        return {rid: conn.live() for rid, conn in self.conns.items()}
