"""One job's run: its handler in a worker thread, its heartbeats, time limit and result.

Handlers run in daemon worker threads (not the default executor), so the event
loop keeps sending heartbeats while one blocks, and a handler that ignores
cancellation can never keep the process from exiting. Idle workers are reused:
starting a thread per job would stall the event loop under load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any

import orjson

from runpack.protocol import (
    HEARTBEAT_INTERVAL,
    MAX_CONSOLE_BYTES,
    MAX_ERROR_BYTES,
    MAX_OUTPUT_BYTES,
)
from runpack_runner.context import Cancelled, JobContext, RetryLater
from runpack_runner.handler import JobHandler
from runpack_runner.heartbeats import HeartbeatReporter
from runpack_runner.transports.base import Assignment, Result, Transport

log = logging.getLogger(__name__)


class Workers:
    """Daemon threads that run handlers; grows when every worker is busy, never waits."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._count = 0

    def submit(self, fn: Callable[[], None]) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1  # that idle worker takes this call
            else:
                self._count += 1
                threading.Thread(
                    target=self._work, name=f"job-worker-{self._count}", daemon=True
                ).start()
        self._queue.put(fn)

    def _work(self) -> None:
        while True:
            self._queue.get()()
            with self._lock:
                self._idle += 1


WORKERS = Workers()


class StopReason(StrEnum):
    CANCELLED = "cancelled"  # the server cancelled it: nothing to report
    LOST = "lost"  # the server gave it to someone else: nothing to report
    RELEASED = "released"  # given back to the queue at shutdown
    TIMEOUT = "timeout"  # reported as an error


class JobRun:
    """A job's handler thread, its heartbeats and its outcome."""

    def __init__(
        self,
        job: Assignment,
        handler: JobHandler,
        *,
        transport: Callable[[], Transport | None] = lambda: None,
        heartbeat_interval: Callable[[], float] = lambda: HEARTBEAT_INTERVAL,
        limits: Mapping[str, int] | None = None,
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
        self.reporter = HeartbeatReporter(self.ctx, transport, heartbeat_interval)
        self.stop_reason: StopReason | None = None
        self.started = time.monotonic()
        self._loop = asyncio.get_running_loop()
        self._done: asyncio.Future[tuple[Any, BaseException | None]] = self._loop.create_future()
        self._stopped = asyncio.Event()

    @property
    def job_id(self) -> str:
        return self.job.job_id

    @property
    def finished(self) -> bool:
        return self._done.done()

    def start(self) -> None:
        self.started = time.monotonic()
        WORKERS.submit(self._target)
        self.reporter.start()

    def _changed(self) -> None:  # from the handler's thread
        self.reporter.poke()

    def stop(self, reason: StopReason, message: str) -> None:
        """Ask the handler to stop (its context's cancelled flag); the first reason wins."""
        if self.stop_reason is not None or self._done.done():
            return
        self.stop_reason = reason
        self.ctx.cancel(message)
        self._stopped.set()

    async def outcome(self, time_limit: float | None) -> Result | None:
        """Wait for the handler, its time limit or a stop; the result to report, if any."""
        stopped: asyncio.Future[Any] = asyncio.ensure_future(self._stopped.wait())
        waiters: set[asyncio.Future[Any]] = {self._done, stopped}
        try:
            await asyncio.wait(waiters, timeout=time_limit, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if not self._done.done() and self.stop_reason is None:
            self.stop(StopReason.TIMEOUT, f"Job timed out after {time_limit:g} s")
        await self.reporter.stop()
        if self.stop_reason == StopReason.TIMEOUT:
            result = self._error(f"Job timed out after {time_limit:g} s")
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
            value = self.handler.execute(self.job.input_params, self.ctx)
        except BaseException as exc:  # reported as the job's error, never lost
            error = exc
        # RuntimeError: the loop closed while this handler ran on; nobody waits for it.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._settle, value, error)

    def _settle(self, value: Any, error: BaseException | None) -> None:
        if not self._done.done():
            self._done.set_result((value, error))

    # --- results ----------------------------------------------------------------------
    def _result(self, value: Any, exc: BaseException | None) -> Result:
        if isinstance(exc, ValueError):
            return self._error(f"Invalid parameters: {exc}")
        if isinstance(exc, Cancelled):
            return self._error(f"Job cancelled: {exc}")
        retry = _retry_later(exc)
        if retry is not None:
            self.ctx.log(f"Could not finish, to be retried: {retry}")
            return self._error(str(retry) or type(retry).__name__, retryable=True)
        if exc is not None:
            self.ctx.log("".join(traceback.format_exception(exc)).rstrip())
            return self._error(f"Job execution failed: {exc}")
        if not isinstance(value, dict):
            return self._error(
                f"Job execution failed: the handler returned {type(value).__name__}, not a dict"
            )
        output = dict(value)
        console = output.pop("console_output", None)  # the original's handlers return it
        if isinstance(console, str) and console:
            self.ctx.set_console(console)
        try:
            data = orjson.dumps(output, option=orjson.OPT_SERIALIZE_NUMPY)
        except TypeError as exc:
            return self._error(f"Job execution failed: the result is not JSON: {exc}")
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


def _retry_later(exc: BaseException | None) -> RetryLater | None:
    """The RetryLater that ``exc`` is or was raised from (``raise … from``), if any."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, RetryLater):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__
    return None
