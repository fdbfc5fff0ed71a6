"""Slots, credits and the outbox: what the runner holds, and what it owes the server.

``busy`` holds the jobs that use a slot, ``outbox`` the results not yet
acknowledged, ``releasing`` the releases not yet acknowledged; a slot is granted
back (``ready {slots}``) once nothing about its job that takes one is pending.
Over a serial transport one sender task per connection sends the results,
releases and grants in order; otherwise each send is a task of its own. The
runner's module docstring tells the whole story.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass

from runpack_runner.execution import JobRun
from runpack_runner.tasks import TaskSet
from runpack_runner.transports import Result, Transport, TransportClosed

#: The runner's logger: its lines name one source whichever module writes them.
log = logging.getLogger("runpack_runner.runner")


@dataclass(frozen=True, slots=True)
class Release:
    """A release waiting for the sender."""

    job_id: str
    reason: str


class Bookkeeping:
    """The runner's slot and outbox state, and the sends that settle it (a base of
    ``Runner``, which sets every attribute)."""

    transport: Transport | None
    runs: dict[str, JobRun]
    outbox: dict[str, Result]
    releasing: set[str]
    busy: set[str]
    free_on_result: bool
    draining: bool
    forced: bool
    _granted: bool
    _sends: deque[Result | Release]
    _credits: int
    _send_wake: asyncio.Event
    _exit: asyncio.Event
    _tasks: TaskSet

    def _report(self, result: Result) -> None:
        """Keep a result until acknowledged, and send it now if connected."""
        self.outbox[result.job_id] = result
        if self.transport is not None:
            self._post(self.transport, result)

    def _release(self, job_id: str, reason: str) -> None:
        transport = self.transport
        if transport is None:
            return  # the next hello leaves it out: the server takes it back
        self.releasing.add(job_id)
        self._post(transport, Release(job_id, reason))

    def _post(self, transport: Transport, item: Result | Release) -> None:
        if transport.serial:
            self._sends.append(item)
            self._send_wake.set()
        else:
            self._tasks.spawn(self._send(transport, item), f"send-{item.job_id}")

    async def _send(self, transport: Transport, item: Result | Release) -> None:
        if isinstance(item, Result):
            try:
                await transport.send_result(item)
            except TransportClosed as exc:
                log.info("result of job %s waits for the next connection: %s", item.job_id, exc)
        else:
            with contextlib.suppress(TransportClosed):
                await transport.release(item.job_id, item.reason)

    async def _send_loop(self, transport: Transport) -> None:
        """The connection's sender: queued results and releases in order, then every
        slot freed meanwhile in one grant (one ``ready`` frame however many)."""
        wake = self._send_wake
        while True:
            await wake.wait()
            wake.clear()
            while self._sends:
                item = self._sends.popleft()
                try:
                    await self._send(transport, item)
                except Exception:  # as a task of its own would: logged, the rest go on
                    log.exception("sending for job %s failed", item.job_id)
            slots, self._credits = self._credits, 0
            if slots and not self.draining:
                with contextlib.suppress(TransportClosed):
                    await transport.grant(slots)

    def _settled(self, job_id: str) -> None:
        """Free a job's slot once nothing about it that takes one is pending any more."""
        if job_id in self.busy and not (
            job_id in self.runs
            or (job_id in self.outbox and not self.free_on_result)
            or job_id in self.releasing
        ):
            self.busy.discard(job_id)
            self._grant_back()
        self._check_exit()

    def _grant_back(self) -> None:
        """Grant a freed slot back: the sender coalesces those of one loop iteration."""
        if self.transport is not None and self._granted and not self.draining:
            self._credits += 1
            self._send_wake.set()

    def _check_exit(self) -> None:
        if self.forced:
            if not self.releasing and not self.outbox:
                self._exit.set()
        elif self.draining and not self.busy and not self.outbox:
            self._exit.set()
