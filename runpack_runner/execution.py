"""One job's run: its handler in a process of its own (or a worker thread), its
heartbeats, time limit and result.

A handler runs in a child process (:mod:`runpack_runner.isolation`) unless it is
declared ``in_process``: then in a daemon worker thread of the runner
(:mod:`runpack_runner.workers`). Either way the event loop keeps sending
heartbeats while it works.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any

import orjson

from runpack.netrules import guarded
from runpack.protocol import (
    HEARTBEAT_INTERVAL,
    MAX_CONSOLE_BYTES,
    MAX_ERROR_BYTES,
    MAX_OUTPUT_BYTES,
)
from runpack_runner.child import ChildJob
from runpack_runner.context import Cancelled, JobContext
from runpack_runner.failures import (
    HandlerFailed,
    RunFailed,
    one_line,
    public_line,
    retry_later,
    scrub,
)
from runpack_runner.handler import JobHandler
from runpack_runner.heartbeats import FirstBeats, HeartbeatReporter
from runpack_runner.isolation import ChildRun
from runpack_runner.transports.base import Assignment, Result, Transport
from runpack_runner.workers import WORKERS

log = logging.getLogger(__name__)


class StopReason(StrEnum):
    CANCELLED = "cancelled"  # the server cancelled it: nothing to report
    LOST = "lost"  # the server gave it to someone else: nothing to report
    RELEASED = "released"  # given back to the queue at shutdown
    TIMEOUT = "timeout"  # reported as an error


class JobRun:
    """A job's handler thread, its heartbeats and its outcome.

    The run *ends* when its handler returns, when it is stopped, or when its time
    limit passes, whichever comes first; ``on_end`` (given to :meth:`start`) is
    then called on the event loop. Nothing here holds a task while the handler
    runs: the time limit is a timer, and the heartbeat reporter starts its task
    only once a beat is due.
    """

    def __init__(
        self,
        job: Assignment,
        handler: JobHandler,
        *,
        transport: Callable[[], Transport | None] = lambda: None,
        heartbeat_interval: Callable[[], float] = lambda: HEARTBEAT_INTERVAL,
        limits: Mapping[str, int] | None = None,
        first_beats: FirstBeats | None = None,
        allow_private_urls: bool = False,
        own_process: bool = False,
        memory_limit: int | None = None,
    ) -> None:
        limits = limits or {}
        self.job = job
        self.handler = handler
        self.max_output_bytes = limits.get("max_output_bytes", MAX_OUTPUT_BYTES)
        self.max_error_bytes = limits.get("max_error_bytes", MAX_ERROR_BYTES)
        self.ctx = JobContext(
            job.job_id,
            job.job_type,
            job.attempt,
            notify=self._changed,
            max_console_bytes=limits.get("max_console_bytes", MAX_CONSOLE_BYTES),
        )
        self.ctx.allow_private_urls = allow_private_urls
        self.reporter = HeartbeatReporter(self.ctx, transport, heartbeat_interval, first_beats)
        self.stop_reason: StopReason | None = None
        self.started = time.monotonic()
        self.time_limit: float | None = None
        self._loop = asyncio.get_running_loop()
        #: The handler's (return value, exception), once it returned.
        self._done: asyncio.Future[tuple[Any, BaseException | None]] = self._loop.create_future()
        self._ended: asyncio.Future[None] = self._loop.create_future()
        self._on_end: Callable[[JobRun], None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        #: The job's process, when the handler runs in one (``own_process``).
        self.child: ChildRun | None = None
        if own_process:
            self.child = ChildRun(
                ChildJob(
                    job.job_id,
                    job.job_type,
                    job.attempt,
                    job.input_params,
                    handler,
                    allow_private_urls,
                    self.ctx._max_console,
                    logging.getLogger().getEffectiveLevel(),
                ),
                self.ctx,
                self._settle_from_thread,
                memory_limit,
            )

    @property
    def job_id(self) -> str:
        return self.job.job_id

    @property
    def finished(self) -> bool:
        """True once the handler returned (a stopped one may still be running)."""
        return self._done.done()

    def start(
        self,
        time_limit: float | None = None,
        on_end: Callable[[JobRun], None] | None = None,
    ) -> None:
        """Run the handler (in its process, or a worker thread); ``on_end(self)`` once
        the run ends."""
        self.started = time.monotonic()
        self._on_end = on_end
        if on_end is not None:
            self._ended.add_done_callback(self._call_on_end)
        WORKERS.submit(self._target if self.child is None else self.child.follow)
        self.reporter.start()
        self._limit(time_limit)

    def _limit(self, time_limit: float | None) -> None:
        if time_limit is not None and self._timer is None and not self._ended.done():
            self.time_limit = time_limit
            self._timer = self._loop.call_later(time_limit, self._time_out)

    def _time_out(self) -> None:
        self._timer = None
        self.stop(StopReason.TIMEOUT, f"Job timed out after {self.time_limit:g} s")

    def _changed(self) -> None:  # from the handler's thread
        self.reporter.poke()

    def stop(self, reason: StopReason, message: str) -> None:
        """Ask the handler to stop (its context's cancelled flag); the first reason wins."""
        if self.stop_reason is not None or self._done.done():
            return
        self.stop_reason = reason
        self.ctx.cancel(message)
        if self.child is not None:
            self.child.stop(message)
        self._end()

    def kill(self) -> bool:
        """End a stopped run's process for good (SIGKILL); False if there is none."""
        return self.child is not None and not self._done.done() and self.child.kill()

    def _end(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._ended.done():
            self._ended.set_result(None)

    def abandon(self) -> None:
        """Forget the run (the runner exits): no time limit, no beats, no ``on_end``."""
        self._on_end = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.reporter.cancel()
        if self.child is not None:
            self.child.kill()

    def _call_on_end(self, _: asyncio.Future[None]) -> None:
        if self._on_end is not None:
            self._on_end(self)

    async def outcome(self, time_limit: float | None = None) -> Result | None:
        """Wait for the run to end (within ``time_limit``); the result to report, if any."""
        self._limit(time_limit)
        await self._ended
        return await self.conclude()

    @property
    def concludes_at_once(self) -> bool:
        """True when the handler returned and no heartbeat is in flight or owed, so
        :meth:`conclude_now` can give the outcome without waiting for anything."""
        return (
            self.stop_reason is None
            and self._done.done()
            and self.reporter.idle
            and not self.reporter.owes_progress()
        )

    def conclude_now(self) -> Result:
        """The result of a run that :attr:`concludes_at_once`."""
        self.reporter.cancel()  # only its first-beat timer: no beat started
        return self._result(*self._done.result())

    async def conclude(self) -> Result | None:
        """Once the run ended: the result to report, if any (None for a stopped run)."""
        await self.reporter.stop()
        if self.stop_reason == StopReason.TIMEOUT:
            result = self._error(f"Job timed out after {self.time_limit:g} s")
        elif self.stop_reason is not None:
            return None
        else:
            result = self._result(*self._done.result())
        await self.reporter.flush()  # the final progress: a result carries none
        return result

    async def wait_stopped(self, grace: float) -> bool:
        """Give a stopping handler ``grace`` seconds to return; True if it did."""
        if not self._done.done():
            await asyncio.wait({self._done}, timeout=grace)
        return self._done.done()

    # --- the worker thread ---------------------------------------------------------------
    def _target(self) -> None:
        value: Any = None
        error: BaseException | None = None
        try:
            # Every name the handler's thread resolves meets the address rule.
            with guarded(self.ctx.allow_private_urls):
                value = self.handler.execute(self.job.input_params, self.ctx)
        except BaseException as exc:  # reported as the job's error, never lost
            error = exc
        self._settle_from_thread(value, error)

    def _settle_from_thread(self, value: Any, error: BaseException | None) -> None:
        # RuntimeError: the loop closed while this handler ran on; nobody waits for it.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._settle, value, error)

    def _settle(self, value: Any, error: BaseException | None) -> None:
        if not self._done.done():
            self._done.set_result((value, error))
            self._end()

    # --- results ----------------------------------------------------------------------
    def _result(self, value: Any, exc: BaseException | None) -> Result:
        job_type = self.job.job_type
        if isinstance(exc, ValueError):
            message = f"Invalid parameters: {scrub(one_line(exc))}"
            self.ctx.log(message)
            return self._error(message)
        if isinstance(exc, Cancelled):
            return self._error(f"Job cancelled: {exc}")
        retry = retry_later(exc)
        if retry is not None:
            self.ctx.log(f"Could not finish, to be retried: {retry}")
            return self._error(str(retry) or type(retry).__name__, retryable=True)
        if isinstance(exc, RunFailed):
            message = f"{job_type} failed: {exc}"
            log.warning("job %s: %s", self.job_id, message)
            self.ctx.log(message)
            return self._error(message)
        if exc is not None:
            # The traceback names this machine's files: the runner's log only. The
            # public console and the error get one line.
            if isinstance(exc, HandlerFailed):
                log.error("job %s (%s) failed:\n%s", self.job_id, job_type, exc.traceback)
            else:
                log.error("job %s (%s) failed", self.job_id, job_type, exc_info=exc)
            message = f"{job_type} failed: {public_line(exc)}"
            self.ctx.log(message)
            return self._error(message)
        if not isinstance(value, dict):
            return self._error(
                f"{job_type} failed: the handler returned {type(value).__name__}, not a dict"
            )
        output = dict(value)
        console = output.pop("console_output", None)  # the original's handlers return it
        if isinstance(console, str) and console:
            self.ctx.set_console(console)
        try:
            data = orjson.dumps(output, option=orjson.OPT_SERIALIZE_NUMPY)
        except TypeError as exc:
            return self._error(f"{job_type} failed: the result is not JSON: {exc}")
        if len(data) > self.max_output_bytes:
            return self._error(f"Output JSON exceeds size limit of {self.max_output_bytes} bytes")
        return Result(
            job_id=self.job_id,
            kind="complete",
            console_output=self.ctx.console,
            output_data=orjson.loads(data),
        )

    def _error(self, message: str, *, retryable: bool = False) -> Result:
        raw = message.encode()
        if len(raw) > self.max_error_bytes:
            message = raw[: self.max_error_bytes - 20].decode(errors="ignore") + " … (truncated)"
        return Result(
            job_id=self.job_id,
            kind="error",
            console_output=self.ctx.console,
            error_message=message,
            retryable=retryable,
        )
