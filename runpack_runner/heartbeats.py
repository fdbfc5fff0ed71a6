"""Heartbeats of one running job: on every change (coalesced), and at least every interval.

The handler thread only pokes; this task, on the event loop, reads a snapshot of
the job's context and sends it through whatever transport is current. Over a
transport that already has the console, only the new text is sent (WebSocket
``console_append``); after a reconnect or a replaced console, the whole of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from runpack_runner.context import JobContext
from runpack_runner.transports.base import AuthFailed, Beat, Transport, TransportClosed

log = logging.getLogger(__name__)

FIRST_BEAT = 0.25


class HeartbeatReporter:
    def __init__(
        self,
        ctx: JobContext,
        transport: Callable[[], Transport | None],
        interval: Callable[[], float],
    ) -> None:
        self.ctx = ctx
        self._transport = transport
        self._interval = interval
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()
        # What the current transport already has.
        self._sent_to: Transport | None = None
        self._sent_epoch = -1
        self._sent_len = 0
        self._sent_version = -1
        self._sent_progress: tuple[int | None, int | None] = (None, None)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"heartbeat-{self.ctx.job_id}")

    def poke(self) -> None:
        """Thread-safe: the job's state changed."""
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody to tell
            self._loop.call_soon_threadsafe(self._wake.set)

    async def stop(self) -> None:
        """Stop after the beat in flight, if any (never cut a frame in half)."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def flush(self) -> None:
        """After stop(): send the final progress if the server has not seen it yet.

        (A result carries the console but no progress.)"""
        transport = self._transport()
        snap = self.ctx.snapshot()
        if transport is None or (snap.progress_current, snap.progress_total) == self._sent_progress:
            return
        await self._beat(transport, due=True, with_console=False)

    def cancel(self) -> None:
        """Stop at once (the job's task is being torn down)."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        # The first beat goes with the handler's first report, or after FIRST_BEAT at the
        # latest: a job that finishes sooner costs no heartbeat at all.
        last = loop.time() - self._interval() + min(FIRST_BEAT, self._interval())
        while not self._stopping:
            left = self._interval() - (loop.time() - last)
            if left > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), left)
            if self._stopping:
                return
            transport = self._transport()
            if transport is None:  # disconnected: the next transport gets everything
                self._wake.clear()
                last = loop.time()
                continue
            gap = transport.min_heartbeat_gap - (loop.time() - last)
            if gap > 0:  # coalesce: more changes may arrive meanwhile
                await asyncio.sleep(gap)
                if self._stopping:
                    return
            self._wake.clear()
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
