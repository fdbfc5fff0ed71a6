"""What the runner does with each event from the server and each run of a job:
accept, cancel, drop and acknowledge; start, end and report."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from runpack_runner.bookkeeping import Bookkeeping
from runpack_runner.execution import JobRun, StopReason
from runpack_runner.handler import JobHandler
from runpack_runner.heartbeats import FirstBeats
from runpack_runner.registry import Registry
from runpack_runner.settings import RunnerSettings
from runpack_runner.transports import Acked, Assignment, CancelJob, Event, Result, Transport
from runpack_runner.uploads import FolderUploader

#: The runner's logger: its lines name one source whichever module writes them.
log = logging.getLogger("runpack_runner.runner")

SHUTTING_DOWN = "the runner is shutting down"
#: How long a killed job process may take to be gone before its slot is reused anyway.
KILL_WAIT = 5.0


def time_limit(handler: JobHandler, job: Assignment, settings: RunnerSettings) -> float | None:
    """A run's time limit: the job type's, or less if the submitter asked for less
    (``job.timeout``) or the runner's ``job_timeout`` is lower; None for none."""
    limits = [t for t in (handler.time_limit, job.timeout, settings.job_timeout) if t and t > 0]
    return min(limits) if limits else None


def memory_limit(handler: JobHandler, settings: RunnerSettings) -> int | None:
    """MiB a job's process may use: the job type's own limit, else the runner's."""
    limit = handler.memory_limit or settings.job_memory_limit
    return limit if limit > 0 else None


class Dispatch(Bookkeeping):
    """Events and runs (a base of ``Runner``, which sets every attribute)."""

    settings: RunnerSettings
    registry: Registry
    waiting: dict[str, Assignment]
    limits: dict[str, int]
    uploader: FolderUploader | None
    runner_id: str | None
    name: str
    _current_transport: Callable[[], Transport | None]
    _current_interval: Callable[[], float]
    _first_beats: FirstBeats

    # --- events ---------------------------------------------------------------------------
    def _handle(self, event: Event) -> None:
        if isinstance(event, Assignment):
            self._accept(event)
        elif isinstance(event, CancelJob):
            if event.lost:
                self._lose(event.job_id, event.reason)
            else:
                self._cancel(event.job_id, event.reason)
        elif isinstance(event, Acked):
            self._acked(event)

    def _accept(self, job: Assignment) -> None:
        if job.job_id in self.busy or job.job_id in self.outbox:
            old = self.runs.get(job.job_id)
            if old is not None and old.stop_reason == StopReason.LOST:
                # A new claim of a job whose earlier run we were told to drop: it
                # takes the slot that run still holds, once the run has stopped.
                log.info("job %s assigned again: it starts once its lost run stops", job.job_id)
                self.waiting[job.job_id] = job
            else:
                log.warning("job %s was assigned again while held: ignored", job.job_id)
            self._grant_back()  # the push used a credit; the job has a slot, or is done
            return
        self.busy.add(job.job_id)
        if self.draining:
            self._release(job.job_id, SHUTTING_DOWN)
            return
        if len(self.busy) > self.settings.concurrency:
            log.warning("job %s arrived with no free slot: released", job.job_id)
            self._release(job.job_id, "no free slot")
            return
        handler = self.registry.get(job.job_type)
        if handler is None:
            message = f"Unsupported job type: {job.job_type}"
            log.error("job %s: %s", job.job_id, message)
            self._report(Result(job.job_id, "error", message, error_message=message))
            self._settled(job.job_id)
            return
        self._start(job, handler)

    def _cancel(self, job_id: str, reason: str) -> None:
        log.info("job %s cancelled by the server: %s", job_id, reason)
        run = self.runs.get(job_id)
        if run is not None:
            run.stop(StopReason.CANCELLED, f"cancelled: {reason}")
        self.waiting.pop(job_id, None)
        if job_id in self.busy and job_id not in self.outbox:
            self._release(job_id, "cancelled")  # so the server stops counting it as held
        self._settled(job_id)

    def _lose(self, job_id: str, reason: str) -> None:
        run = self.runs.get(job_id)
        if run is not None:
            run.stop(StopReason.LOST, reason)
        waiting = self.waiting.pop(job_id, None)
        if self.outbox.pop(job_id, None) is not None or run is not None or waiting is not None:
            log.warning("job %s dropped: %s", job_id, reason)
        self._settled(job_id)

    def _acked(self, ack: Acked) -> None:
        if ack.of == "release":
            self.releasing.discard(ack.job_id)
            if not ack.applied:
                log.warning("job %s not released: %s", ack.job_id, ack.reason)
        else:
            result = self.outbox.get(ack.job_id)
            if result is not None and ack.of in (result.kind, ""):
                del self.outbox[ack.job_id]
                if not ack.applied:
                    log.warning(
                        "the server did not apply the %s of job %s: %s",
                        result.kind,
                        ack.job_id,
                        ack.reason or "not needed",
                    )
        self._settled(ack.job_id)

    # --- jobs -----------------------------------------------------------------------------
    def _start(self, job: Assignment, handler: JobHandler) -> None:
        run = JobRun(
            job,
            handler,
            transport=self._current_transport,
            heartbeat_interval=self._current_interval,
            limits=self.limits,
            first_beats=self._first_beats,
            allow_private_urls=self.settings.allow_private_urls,
            own_process=not handler.in_process,
            memory_limit=memory_limit(handler, self.settings),
        )
        run.ctx.uploader = self.uploader
        run.ctx.runner_id, run.ctx.runner_name = self.runner_id, self.name
        self.runs[job.job_id] = run
        log.info("job %s (%s) started, attempt %d", job.job_id, job.job_type, job.attempt)
        run.start(time_limit(handler, job, self.settings), on_end=self._ended)

    def _ended(self, run: JobRun) -> None:
        """A run ended: report it now if nothing is in flight, else from a task."""
        if not run.concludes_at_once:
            self._tasks.spawn(self._conclude(run), f"job-{run.job_id}")
            return
        try:
            result = run.conclude_now()
            self._log_outcome(run, result)
            self._report(result)
        finally:
            self._gone(run)

    async def _conclude(self, run: JobRun) -> None:
        try:
            result = await run.conclude()
            self._log_outcome(run, result)
            if result is not None:
                self._report(result)
            grace = self.settings.stop_grace
            if not run.finished and not await run.wait_stopped(grace):
                if run.kill():
                    log.warning(
                        "the process of job %s did not stop within %g s: killed", run.job_id, grace
                    )
                    await run.wait_stopped(KILL_WAIT)
                else:
                    log.warning(
                        "the handler of job %s did not stop within %g s: its thread is left behind",
                        run.job_id,
                        grace,
                    )
        finally:
            self._gone(run)

    def _log_outcome(self, run: JobRun, result: Result | None) -> None:
        elapsed = time.monotonic() - run.started
        if result is None:
            log.info("job %s stopped after %.1f s: %s", run.job_id, elapsed, run.stop_reason)
        elif result.kind == "complete":
            log.info("job %s completed in %.1f s", run.job_id, elapsed)
        else:
            log.warning("job %s failed after %.1f s: %s", run.job_id, elapsed, result.error_message)

    def _gone(self, run: JobRun) -> None:
        """A run is over: its slot is freed, or taken by the job's next assignment."""
        run.reporter.cancel()
        job_id = run.job_id
        if self.runs.get(job_id) is run:
            del self.runs[job_id]
        again = self.waiting.pop(job_id, None)
        if again is not None:
            self.busy.discard(job_id)
            self._accept(again)  # in the slot this run held
        else:
            self._settled(job_id)

    def _abandon_runs(self) -> None:
        """At exit: forget runs still going (their threads are daemons)."""
        for run in self.runs.values():
            run.abandon()
        self.runs.clear()
