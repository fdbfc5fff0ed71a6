"""What a connected runner's reports do: heartbeats, results and releases applied to
the job service, each result acknowledged once it is stored for good."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from runpack import protocol
from runpack.api.runner_socket import RunnerSocket
from runpack.connections import RunnerConn
from runpack.errors import BadRequest, NotOwned, RunpackError, StoreUnavailable
from runpack.hub import Hub
from runpack.protocol import (
    FINAL,
    Acked,
    Complete,
    Failure,
    Heartbeat,
    ProtocolError,
    Release,
    Report,
)
from runpack.service import JobService

log = logging.getLogger(__name__)

#: Frames whose loss would lose a job's outcome (the runner holds them until acked).
RESULTS = ("complete", "error", "release")
#: Pauses between tries of such a frame while the database is out of reach; after
#: the last, the socket is closed and the runner sends it again once reconnected.
RESULT_RETRY_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0)


class RunnerReports:
    """The reports of one runner, after its hello, on the socket it said it on."""

    __slots__ = ("conn", "hub", "service", "socket")

    def __init__(
        self, conn: RunnerConn, hub: Hub, service: JobService, socket: RunnerSocket
    ) -> None:
        self.conn = conn
        self.hub = hub
        self.service = service
        self.socket = socket

    async def handle(self, frame: dict[str, Any]) -> None:
        """Apply a frame that came after the hello (other than ``ready``), and answer it."""
        kind = frame.get("type")
        job_id = frame.get("job_id") if isinstance(frame.get("job_id"), str) else None
        try:
            report = protocol.decode_report(frame)
            if report.TYPE in RESULTS:
                await self._durably(lambda: self._on_report(report))
            else:
                await self._on_report(report)
        except ProtocolError as exc:
            self.socket.reply_error(exc.error, exc.details, ref=kind, job_id=job_id)
        except NotOwned:
            self.socket.reply_error("Job not held by this runner", ref=kind, job_id=job_id)
        except RunpackError as exc:
            self.socket.reply_error(exc.message, exc.details, ref=kind, job_id=job_id)
        except Exception:
            log.exception("runner %s: %s frame failed", self.conn.runner_id, kind)
            self.socket.reply_error("Internal error", ref=kind, job_id=job_id)

    async def _durably(self, store: Callable[[], Awaitable[None]]) -> None:
        """Handle a result frame, again while the database is out of reach.

        Safe to repeat: every transition names the state it starts from, so a try
        whose commit was lost with its connection makes the next one find the job
        done (the runner hears it was not applied, and drops it). If the database
        stays away, the socket is closed instead of answering: the runner keeps
        the result and sends it again after reconnecting.
        """
        for delay in RESULT_RETRY_DELAYS:
            try:
                return await store()
            except StoreUnavailable as exc:
                log.warning(
                    "runner %s: result not stored (%s); trying again in %g s",
                    self.conn.runner_id,
                    exc.details,
                    delay,
                )
            await asyncio.sleep(delay)
        try:
            return await store()
        except StoreUnavailable:
            log.warning("runner %s: database unavailable: closing its socket", self.conn.runner_id)
            self.socket.close()
            raise

    async def _on_report(self, report: Report) -> None:
        runner_id = self.conn.runner_id
        match report:
            case Heartbeat():
                await self.service.heartbeat(
                    runner_id,
                    report.job_id,
                    report.progress_current,
                    report.progress_total,
                    report.console_output,
                    console_append=report.console_append,
                )
            case Complete():
                await self._on_complete(report)
            case Failure():
                await self._on_error(report)
            case Release():
                await self.service.release_jobs(runner_id, [report.job_id], report.reason)
                self._ack(report.job_id, "release", True)

    async def _on_complete(self, result: Complete) -> None:
        job_id, console = result.job_id, result.console_output
        try:
            await self.service.complete(self.conn.runner_id, job_id, result.output_data, console)
        except BadRequest as exc:
            if isinstance(exc, NotOwned):
                await self._ack_unapplied(job_id, "complete")
                return
            # A result that can never be stored: the job fails with the reason.
            await self._fail_instead(job_id, exc.message, console)
            return
        self._ack(job_id, "complete", True)

    async def _on_error(self, report: Failure) -> None:
        job_id = report.job_id
        end = self.service.retry_later if report.retryable else self.service.fail
        try:
            await end(self.conn.runner_id, job_id, report.error_message, report.console_output)
        except NotOwned:
            await self._ack_unapplied(job_id, "error")
            return
        except BadRequest as exc:
            # Refused as over HTTP, and nothing changed; the runner need not keep it.
            self.socket.reply_error(exc.message, exc.details, ref="error", job_id=job_id)
            self._ack(job_id, "error", False, reason=exc.message)
            return
        self._ack(job_id, "error", True)

    async def _fail_instead(self, job_id: str, message: str, console: str | None) -> None:
        with contextlib.suppress(BadRequest):
            await self.service.fail(self.conn.runner_id, job_id, message, None)
        self.socket.reply_error(
            message, "the job was failed instead", ref="complete", job_id=job_id
        )
        self._ack(job_id, "complete", False, reason=message)

    async def _ack_unapplied(self, job_id: str, of: str) -> None:
        """A result for a job this runner no longer holds: it will never apply."""
        try:
            job = await self.service.get_job(job_id)
            reason = (
                f"job is {job.status}" if job.status in FINAL else "job is not held by this runner"
            )
        except RunpackError:
            reason = "no such job"
        self._ack(job_id, of, False, reason=reason)

    def _ack(self, job_id: str, of: str, applied: bool, reason: str | None = None) -> None:
        self.hub.finished(self.conn, job_id)
        self.socket.send(Acked(job_id, of, applied, reason))
