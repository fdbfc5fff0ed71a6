"""Heartbeats of one running job: on every change (coalesced), and at least every interval.

The handler thread only pokes; a task on the event loop (started only once a beat
is due) reads a snapshot of the job's context and sends it through whatever
transport is current. Over a transport that already has the console, only the new
text is sent (WebSocket ``console_append``); after a reconnect or a replaced
console, the whole of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections import deque
from collections.abc import Callable

from runpack_runner.context import JobContext
from runpack_runner.transports.base import AuthFailed, Beat, Transport, TransportClosed

log = logging.getLogger(__name__)

FIRST_BEAT = 0.25
#: Timers may fire this early (the loop's clock resolution): such beats count as due.
CLOCK_SLACK = 0.002


class FirstBeats:
    """One event-loop timer for the first beats of many reporters.

    Reporters start one after another and each first beat is due the same delay
    later, so due times arrive in order: a FIFO queue and a timer for its head do
    what a timer per job would, for less than arming and cancelling one costs (a
    trivial job ends long before its first beat). A reporter that ended meanwhile
    is skipped; the queue holds it weakly.
    """

    def __init__(self) -> None:
        self._due: deque[tuple[float, weakref.ref[HeartbeatReporter]]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def add(
        self, loop: asyncio.AbstractEventLoop, when: float, reporter: HeartbeatReporter
    ) -> bool:
        """Start ``reporter`` at loop time ``when``; False if that is out of order (the
        interval changed), in which case the caller arms a timer of its own."""
        if self._due and when < self._due[-1][0]:
            return False
        self._due.append((when, weakref.ref(reporter)))
        if self._timer is None:
            self._timer = loop.call_at(when, self._fire, loop)
        return True

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        due = self._due
        now = loop.time() + CLOCK_SLACK
        first = True  # the timer fired for the head: due, whatever the clock's rounding
        while due and (first or due[0][0] <= now):
            first = False
            reporter = due.popleft()[1]()
            if reporter is not None:
                reporter._launch()
        if due:
            self._timer = loop.call_at(due[0][0], self._fire, loop)


class HeartbeatReporter:
    """Sends one job's heartbeats; costs a timer, and no task, until a beat is due.

    Most jobs end before their first beat: those never start the reporter's task.
    It starts at the handler's first report (a poke) or after ``FIRST_BEAT``.
    """

    def __init__(
        self,
        ctx: JobContext,
        transport: Callable[[], Transport | None],
        interval: Callable[[], float],
        first_beats: FirstBeats | None = None,
    ) -> None:
        self.ctx = ctx
        self._first_beats = first_beats
        self._transport = transport
        self._interval = interval
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._started: float | None = None
        self._poked_early = False
        self._poke_pending = False
        self._loop = asyncio.get_running_loop()
        # What the current transport already has.
        self._sent_to: Transport | None = None
        self._sent_epoch = -1
        self._sent_len = 0
        self._sent_version = -1
        self._sent_progress: tuple[int | None, int | None] = (None, None)

    @property
    def idle(self) -> bool:
        """True while no beat task runs (none was needed yet): stopping needs no await."""
        return self._task is None

    def start(self) -> None:
        self._started = self._loop.time()
        if self._poked_early:
            self._launch()
        else:
            when = self._started + min(FIRST_BEAT, self._interval())
            if self._first_beats is None or not self._first_beats.add(self._loop, when, self):
                self._timer = self._loop.call_at(when, self._launch)

    def poke(self) -> None:
        """Thread-safe: the job's state changed.

        Pokes that come while one is already on its way to the loop are folded
        into it (the beat reads the newest state anyway).
        """
        if self._poke_pending:
            return
        self._poke_pending = True
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody to tell
            self._loop.call_soon_threadsafe(self._poked)

    def _poked(self) -> None:
        # Cleared before waking, so a change made after this point pokes again.
        self._poke_pending = False
        if self._wake is not None:
            self._wake.set()
        elif self._started is None:
            self._poked_early = True
        else:
            self._launch()

    def _launch(self) -> None:
        """Start the beat task, with a beat due at once."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None or self._stopping:
            return
        self._wake = asyncio.Event()
        self._wake.set()
        self._task = self._loop.create_task(self._run(), name=f"heartbeat-{self.ctx.job_id}")

    async def stop(self) -> None:
        """Stop after the beat in flight, if any (never cut a frame in half)."""
        self._stopping = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            assert self._wake is not None
            self._wake.set()
            await self._task

    def owes_progress(self) -> bool:
        """True if the server has not seen the job's latest progress (see flush)."""
        return self._transport() is not None and self.ctx.reported_progress != self._sent_progress

    async def flush(self) -> None:
        """After stop(): send the final progress if the server has not seen it yet.

        (A result carries the console but no progress.)"""
        transport = self._transport()
        snap = self.ctx.snapshot()
        if transport is None or (snap.progress_current, snap.progress_total) == self._sent_progress:
            return
        await self._beat(transport, due=True, with_console=False)

    def cancel(self) -> None:
        """Stop at once (the job's task is being torn down, or no beat ever started)."""
        self._stopping = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        loop = self._loop
        wake = self._wake
        assert wake is not None and self._started is not None
        # The first beat goes with the handler's first report, or after FIRST_BEAT at the
        # latest: a job that finishes sooner costs no heartbeat at all.
        last = self._started - self._interval() + min(FIRST_BEAT, self._interval())
        while not self._stopping:
            left = self._interval() - (loop.time() - last)
            if left > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        await wake.wait()
            if self._stopping:
                return
            transport = self._transport()
            if transport is None:  # disconnected: the next transport gets everything
                wake.clear()
                last = loop.time()
                continue
            gap = transport.min_heartbeat_gap - (loop.time() - last)
            if gap > 0:  # coalesce: more changes may arrive meanwhile
                await asyncio.sleep(gap)
                if self._stopping:
                    return
            wake.clear()
            await self._beat(transport, due=loop.time() - last >= self._interval())
            last = loop.time()

    async def _beat(self, transport: Transport, due: bool, with_console: bool = True) -> None:
        snap = self.ctx.snapshot()
        if not due and transport is self._sent_to and snap.version == self._sent_version:
            return
        append: str | None
        if not with_console:
            append = ""  # progress only
        elif (
            transport is not self._sent_to
            or snap.epoch != self._sent_epoch
            or len(snap.console) < self._sent_len
        ):
            append = None  # the whole console replaces the server's copy
        else:
            append = snap.console[self._sent_len :]
        beat = Beat(
            job_id=self.ctx.job_id,
            progress_current=snap.progress_current,
            progress_total=snap.progress_total,
            console=snap.console,
            append=append,
        )
        try:
            await transport.heartbeat(beat)
        except (TransportClosed, AuthFailed) as exc:
            log.debug("heartbeat of job %s not sent: %s", self.ctx.job_id, exc)
            self._sent_to = None
            return
        except Exception:
            log.exception("heartbeat of job %s failed", self.ctx.job_id)
            self._sent_to = None
            return
        self._sent_progress = (snap.progress_current, snap.progress_total)
        if with_console:
            self._sent_to = transport
            self._sent_epoch = snap.epoch
            self._sent_len = len(snap.console)
            self._sent_version = snap.version
