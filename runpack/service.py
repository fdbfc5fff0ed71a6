"""The job lifecycle: dedup, cache, validation, transitions, retries.

Imports neither aiohttp nor a database driver. Every state change is one
conditional store call; when it changes no row, the service raises a domain
error instead of guessing. Routes render what this module returns.
"""

from __future__ import annotations

import logging
import random
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import orjson

from runpack import hashing
from runpack.artifacts import figpack_urls
from runpack.auth import hash_secret
from runpack.cache import ResultCache
from runpack.errors import (
    BadRequest,
    ClaimLost,
    JobNotFound,
    NotCancellable,
    NotOwned,
    RunnerNotFound,
)
from runpack.identity import RunnerOwners
from runpack.notify import Event, Notifier
from runpack.protocol import (
    FINAL,
    MAX_CAPABILITIES,
    MAX_NAME_CHARS,
    REQUEUEABLE,
    RUNNING,
    JobStatus,
)
from runpack.settings import Settings
from runpack.store import JobRow, NewJob, RunnerRow, Store
from runpack.store.base import ENV_OWNER

log = logging.getLogger(__name__)


def now_ms() -> int:
    return int(time.time() * 1000)


class Validator(Protocol):
    async def is_valid(self, output_data: str | None) -> bool: ...


class Figures(Protocol):
    """Stored figure folders (runpack.artifacts.FigureStore)."""

    def job_of_url(self, url: str) -> str | None: ...

    async def is_complete(self, job_id: str) -> bool: ...

    async def remove(self, job_id: str) -> bool: ...


class Observer(Protocol):
    """What the service reports as it works (runpack.metrics counts it). Must be cheap."""

    def answered(self, request: str, result: SubmitResult) -> None:
        """A ``"submit"`` or ``"check"`` was answered with ``result``."""

    def started(self, job: JobRow) -> None:
        """A runner claimed ``job`` (the row as claimed)."""

    def ended(self, job_id: str, how: str, now: int) -> None:
        """A run ended: completed, failed, lost (taken back), released or cancelled."""


class RunnerSlot(Protocol):
    """A free slot of a connected runner, taken for a job about to be inserted."""

    @property
    def runner_id(self) -> str: ...


class Slots(Protocol):
    """Where a new job can start at once (the hub). A job submitted while a runner
    has a free slot and no queued job waits for it is inserted already claimed for
    that runner, then pushed: it starts one commit sooner."""

    def take(self, job_type: str) -> RunnerSlot | None:
        """A free slot for this job type, now reserved; None to queue the job."""
        ...

    def placed(self, slot: RunnerSlot, job: JobRow) -> None:
        """The job was inserted claimed for the slot's runner: send it."""
        ...

    def unplaced(self, slot: RunnerSlot, *, unsure: bool) -> None:
        """No job took the slot; ``unsure``: the insert failed and may have committed."""
        ...


class NoObserver:
    def answered(self, request: str, result: SubmitResult) -> None:
        pass

    def started(self, job: JobRow) -> None:
        pass

    def ended(self, job_id: str, how: str, now: int) -> None:
        pass


#: Parameters that describe where a request came from rather than what to compute,
#: by job-type prefix. They are stored with the job and reach the handler (the
#: figure's description shows them) but are left out of the job hash: Neurosift
#: sends the page URL it was on, which would otherwise give every page its own copy
#: of the same figure. Only these job types differ from the original's hash.
HASH_IGNORED_PARAMS: dict[str, frozenset[str]] = {
    "figpack_nwb_": frozenset({"dandiset_id", "neurosift_url"}),
}


def hash_params(job_type: str, params: dict[str, Any]) -> dict[str, Any]:
    """The parameters that identify a job: ``params`` less its type's metadata keys."""
    for prefix, ignored in HASH_IGNORED_PARAMS.items():
        if job_type.startswith(prefix):
            return {k: v for k, v in params.items() if k not in ignored}
    return params


#: Submit and check bodies remembered with what they ask (see JobService.known_request):
#: at most this many, each at most this many bytes (so at most 4 MiB).
REQUEST_MEMO_SIZE = 1024
REQUEST_MEMO_MAX_BODY = 4096


class Outcome(StrEnum):
    CREATED = "created"  # a new job, or an old one queued again: 201
    CACHED = "cached"  # completed, result still valid
    EXPIRED = "expired"  # check only: the result is no longer valid
    FAILED = "failed"  # failed, not yet due for a retry
    ACTIVE = "active"  # pending, claimed or in progress
    MISSING = "missing"  # check only: no such job


@dataclass(frozen=True, slots=True)
class JobRequest:
    job_type: str
    input_params: dict[str, Any]
    job_hash: str
    params_text: str
    force: bool = False
    priority: int = 0


@dataclass(frozen=True, slots=True)
class SubmitResult:
    outcome: Outcome
    job: JobRow | None
    #: CREATED for a job that existed and was queued again (not a new row).
    requeued: bool = False


def parse_json_text(text: str | None, default: Any = None) -> Any:
    if not text:
        return default
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return default


def params_fragment(text: str | None) -> Any:
    """Stored input parameters as they go into a frame or a reply, not parsed and
    printed again: the store holds them as JSON text the server wrote (or checked
    when it imported them)."""
    if text and text[0] == "{" and text[-1] == "}":
        return orjson.Fragment(text)
    return parse_json_text(text, {})


class JobService:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        validator: Validator,
        notifier: Notifier | None = None,
        clock: Callable[[], int] = now_ms,
        rng: Callable[[], float] = random.random,
        figures: Figures | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.store = store
        self.observer: Observer = observer or NoObserver()
        self.figures = figures
        self.settings = settings
        self.validator = validator
        self.notifier = notifier or Notifier()
        self.clock = clock
        self.rng = rng
        self.results = ResultCache()
        #: Who may act for which runner.
        self.owners = RunnerOwners(store)
        #: Set by the hub while it runs: free runner slots for new jobs.
        self.slots: Slots | None = None
        self._requests: dict[bytes, JobRequest] = {}
        self.notifier.subscribe(self.results.on_event)

    # --- validation of client input ---------------------------------------------
    def known_request(self, body: bytes) -> JobRequest | None:
        """What an identical submit or check body asked lately, if it was remembered."""
        return self._requests.get(body)

    def remember_request(self, body: bytes, job_request: JobRequest) -> None:
        """Keep what ``body`` asks (small bodies only; the oldest goes first)."""
        if len(body) > REQUEST_MEMO_MAX_BODY:
            return
        if len(self._requests) >= REQUEST_MEMO_SIZE:
            del self._requests[next(iter(self._requests))]
        self._requests[body] = job_request

    def job_request(self, body: dict[str, Any]) -> JobRequest:
        """Check a submit/check body in the original's order; raise BadRequest."""
        job_type = body.get("job_type")
        params = body.get("input_params")
        params_text: str | None = None
        if params is not None:
            if _too_deep(params):
                raise BadRequest(
                    "Input parameters are nested too deeply", details=f"at most {MAX_DEPTH} levels"
                )
            params_text = hashing.js_stringify(params)
            limit = self.settings.max_params_bytes
            if hashing.utf8_size(params_text) > limit:
                raise BadRequest(f"Input parameters exceed size limit of {limit} bytes")
        if not isinstance(job_type, str) or not job_type:
            raise BadRequest("Job type must be a non-empty string")
        if len(job_type) > 200:
            raise BadRequest("Job type must be a non-empty string", details="at most 200 chars")
        if NUL in job_type:
            raise BadRequest("Job type must be a non-empty string", details="no NUL characters")
        if not isinstance(params, dict) or params_text is None:
            raise BadRequest("Input parameters must be an object")
        force = body.get("force", False)
        if not isinstance(force, bool):
            raise BadRequest("force must be true or false")
        priority = body.get("priority", 0)
        if not isinstance(priority, int) or isinstance(priority, bool) or abs(priority) > 1000:
            raise BadRequest("priority must be an integer from -1000 to 1000")
        return JobRequest(
            job_type=job_type,
            input_params=params,
            job_hash=hashing.job_hash(job_type, hash_params(job_type, params)),
            params_text=params_text,
            force=force,
            priority=priority,
        )

    # --- clients ------------------------------------------------------------------
    async def _find(self, job_hash: str) -> JobRow | None:
        """The job with this hash: completed ones from memory, others from the store."""
        job = self.results.get(job_hash)
        if job is None:
            job = await self.store.get_job_by_hash(job_hash)
            if job is not None and job.status == JobStatus.COMPLETED:
                self.results.put(job)
        return job

    async def submit(self, req: JobRequest) -> SubmitResult:
        result = await self._submit(req)
        self.observer.answered("submit", result)
        return result

    async def _submit(self, req: JobRequest) -> SubmitResult:
        job = self.results.get(req.job_hash)
        if job is None:
            # The insert finds the job if its hash has one: no read before it.
            job, created = await self._insert(req)
            if created:
                return SubmitResult(Outcome.CREATED, job)
            if job.status == JobStatus.COMPLETED:
                self.results.put(job)
        return await self._existing(job, req.force)

    async def _insert(self, req: JobRequest) -> tuple[JobRow, bool]:
        """The job of this request's hash, inserted if there is none (claimed at
        once for a runner with a free slot, if one waits), and whether it is new."""
        slots = self.slots
        slot = slots.take(req.job_type) if slots is not None else None
        new = NewJob(
            id=str(uuid.uuid4()),
            job_hash=req.job_hash,
            job_type=req.job_type,
            input_params=req.params_text,
            priority=req.priority,
            max_attempts=self.settings.max_attempts,
            timeout=None,
            now=self.clock(),
            runner_id=slot.runner_id if slot is not None else None,
        )
        try:
            job, created = await self.store.insert_job(new)
        except BaseException:
            if slots is not None and slot is not None:
                slots.unplaced(slot, unsure=True)
            raise
        if slots is None or slot is None:
            if created:
                self._queued(job, new=True)
            return job, created
        if not created:
            slots.unplaced(slot, unsure=False)
            return job, False
        self._queued(job, new=True, runner_id=slot.runner_id)
        self.observer.started(job)
        self._updated(job.id, JobStatus.CLAIMED, runner_id=slot.runner_id)
        slots.placed(slot, job)
        return job, True

    async def _existing(self, job: JobRow, force: bool) -> SubmitResult:
        status = job.status
        if status == JobStatus.COMPLETED:
            if await self.validator.is_valid(job.output_data):
                return SubmitResult(Outcome.CACHED, job)
            await self.store.expire(job.id, self.clock())
            self._updated(job.id, JobStatus.EXPIRED)
            return await self._requeue(job, (JobStatus.EXPIRED,))
        if status in (JobStatus.EXPIRED, JobStatus.CANCELLED):
            return await self._requeue(job, (status,))
        if status == JobStatus.FAILED:
            due = self.clock() - job.updated_at >= self.settings.failed_retry_after * 1000
            if force or due:
                return await self._requeue(job, (JobStatus.FAILED,))
            return SubmitResult(Outcome.FAILED, job)
        return SubmitResult(Outcome.ACTIVE, job)

    async def _requeue(self, job: JobRow, from_status: Sequence[str]) -> SubmitResult:
        now = self.clock()
        row = await self.store.requeue(job.id, from_status, now, not_before=now)
        if row is None:  # someone else changed it first: report what it is now
            current = await self.store.get_job(job.id)
            if current is None:
                raise JobNotFound()
            return SubmitResult(Outcome.ACTIVE, current)
        self._queued(row, new=False)
        return SubmitResult(Outcome.CREATED, row, requeued=True)

    async def check(self, req: JobRequest) -> SubmitResult:
        result = await self._check(req)
        self.observer.answered("check", result)
        return result

    async def _check(self, req: JobRequest) -> SubmitResult:
        job = await self._find(req.job_hash)
        if job is None:
            return SubmitResult(Outcome.MISSING, None)
        if job.status == JobStatus.COMPLETED:
            if await self.validator.is_valid(job.output_data):
                return SubmitResult(Outcome.CACHED, job)
            await self.store.expire(job.id, self.clock())
            self._updated(job.id, JobStatus.EXPIRED)
            return SubmitResult(Outcome.EXPIRED, job)
        if job.status == JobStatus.EXPIRED:
            return SubmitResult(Outcome.EXPIRED, job)
        if job.status == JobStatus.FAILED:
            return SubmitResult(Outcome.FAILED, job)
        return SubmitResult(Outcome.ACTIVE, job)

    async def get_job(self, job_id: str) -> JobRow:
        job = await self.store.get_job(job_id) if _is_uuid(job_id) else None
        if job is None:
            raise JobNotFound()
        return job

    async def cancel(
        self,
        job_id: str,
        any_state: bool,
        reason: str,
        check_type: Callable[[str], None] | None = None,
    ) -> JobRow:
        """Cancel a job: pending ones for clients, running ones too for admins.
        ``check_type`` may refuse the job's type (it raises) before anything changes;
        a job's type never changes, so its answer holds for the update."""
        job = await self.get_job(job_id)
        if check_type is not None:
            check_type(job.job_type)
        allowed = (JobStatus.PENDING, *RUNNING) if any_state else (JobStatus.PENDING,)
        if job.status not in allowed:
            hint = "" if any_state or job.status in FINAL else "; running jobs need the admin key"
            raise NotCancellable(details=f"the job is {job.status}{hint}")
        row = await self.store.cancel(job.id, allowed, self.clock(), reason)
        if row is None:  # it moved on meanwhile
            current = await self.get_job(job_id)
            raise NotCancellable(details=f"the job is {current.status}")
        if job.status in RUNNING:
            self.observer.ended(row.id, "cancelled", row.updated_at)
        self._updated(row.id, JobStatus.CANCELLED, reason=reason, error_message=reason)
        return row

    async def retry(self, job_id: str) -> JobRow:
        """Queue a failed, expired or cancelled job again (admin)."""
        job = await self.get_job(job_id)
        result = await self._requeue(job, REQUEUEABLE)
        if result.outcome != Outcome.CREATED or result.job is None:
            raise NotCancellable("Job cannot be retried", details=f"the job is {job.status}")
        return result.job

    # --- runners --------------------------------------------------------------------
    async def register_runner(
        self,
        name: object,
        capabilities: object,
        *,
        owner: str = ENV_OWNER,
        secret: str | None = None,
    ) -> RunnerRow:
        """A new runner, owned by ``owner`` (see runpack.identity), with ``secret`` as its
        own if given (only its hash is kept)."""
        name, capabilities = check_registration(name, capabilities)
        now = self.clock()
        runner = RunnerRow(
            id=str(uuid.uuid4()),
            name=name,
            capabilities=orjson.dumps(capabilities).decode(),
            registered_at=now,
            last_seen=now,
            owner=owner,
            secret_sha256=hash_secret(secret) if secret is not None else None,
        )
        await self.store.insert_runner(runner)
        self.owners.remember(runner)
        return runner

    async def get_runner(self, runner_id: str) -> RunnerRow:
        runner = await self.store.get_runner(runner_id) if _is_uuid(runner_id) else None
        if runner is None:
            raise RunnerNotFound()
        return runner

    async def touch_runner(self, runner_id: str) -> None:
        """Note contact from a runner; an unknown runner must register first."""
        if not _is_uuid(runner_id) or not await self.store.touch_runner(runner_id, self.clock()):
            raise RunnerNotFound(details="Register first: POST /api/runner/register")

    async def check_holder(self, runner_id: str, job_id: str) -> JobRow:
        """The job, if this runner holds it (claimed or in progress); else NotOwned."""
        job = await self.store.get_job(job_id) if _is_uuid(job_id) else None
        if job is None or job.status not in RUNNING or job.claimed_by != runner_id:
            raise NotOwned()
        return job

    async def available_jobs(self, job_types: list[str]) -> list[JobRow]:
        job_types = [t for t in job_types if NUL not in t]  # no job type has one
        return await self.store.available_jobs(job_types, self.clock(), 50)

    async def claim(self, runner_id: str, job_id: str) -> JobRow:
        """Claim a job by id (the original's polling runners). A claim repeated by
        the runner that holds it, such as a retry after the answer was lost on the
        way, gets the job again rather than a 409."""
        if not _is_uuid(job_id):
            raise ClaimLost()
        job = await self.store.claim(job_id, runner_id, self.clock())
        if job is None:
            held = await self.store.get_job(job_id)
            mine = held is not None and held.claimed_by == runner_id
            if held is not None and mine and held.status == JobStatus.CLAIMED:
                return held
            raise ClaimLost()
        self.observer.started(job)
        self._updated(job.id, JobStatus.CLAIMED, runner_id=runner_id)
        return job

    async def heartbeat(
        self,
        runner_id: str,
        job_id: str,
        progress_current: int | None,
        progress_total: int | None,
        console_output: str | None,
        console_append: str | None = None,
    ) -> None:
        console_output, console_append = _printable(console_output), _printable(console_append)
        self._check_console(console_output)
        self._check_console(console_append)
        ok = _is_uuid(job_id) and await self.store.heartbeat(
            job_id,
            runner_id,
            self.clock(),
            progress_current,
            progress_total,
            console_output,
            console_append=console_append,
            max_console=self.settings.max_console_bytes,
        )
        if not ok:
            raise NotOwned()
        self._updated(
            job_id,
            JobStatus.IN_PROGRESS,
            progress_current=progress_current,
            progress_total=progress_total,
            console_output=console_output,
            console_append=console_append,
        )

    async def complete(
        self, runner_id: str, job_id: str, output_data: dict[str, Any], console_output: str | None
    ) -> None:
        if _too_deep(output_data):
            raise BadRequest(
                "Output JSON is nested too deeply", details=f"at most {MAX_DEPTH} levels"
            )
        text = hashing.js_stringify(output_data)
        limit = self.settings.max_output_bytes
        if hashing.utf8_size(text) > limit:
            raise BadRequest(f"Output JSON exceeds size limit of {limit} bytes")
        self._check_console(console_output)
        await self._check_figures(output_data)
        console = _printable(console_output) or None  # empty keeps what was streamed
        now = self.clock()
        ok = _is_uuid(job_id) and await self.store.complete(job_id, runner_id, now, text, console)
        if not ok:
            raise NotOwned()
        self.observer.ended(job_id, "completed", now)
        self._updated(job_id, JobStatus.COMPLETED, output_data=output_data, console_output=console)

    async def fail(
        self, runner_id: str, job_id: str, error_message: str, console_output: str | None
    ) -> None:
        limit = self.settings.max_error_bytes
        if hashing.utf8_size(error_message) > limit:
            raise BadRequest(f"Error message exceeds size limit of {limit} bytes")
        self._check_console(console_output)
        console = _printable(console_output) or None
        error_message = _printable(error_message) or ""
        now = self.clock()
        ok = _is_uuid(job_id) and await self.store.fail(
            job_id, runner_id, now, error_message, console
        )
        if not ok:
            raise NotOwned()
        self.observer.ended(job_id, "failed", now)
        self._updated(job_id, JobStatus.FAILED, error_message=error_message, console_output=console)

    async def retry_later(
        self, runner_id: str, job_id: str, error_message: str, console_output: str | None
    ) -> JobStatus:
        """A run that could not finish for a reason outside the job (the server could not
        store its files…): taken back as a lost run is, so queued again with backoff
        while attempts remain, else failed. The runner's console is kept."""
        limit = self.settings.max_error_bytes
        if hashing.utf8_size(error_message) > limit:
            raise BadRequest(f"Error message exceeds size limit of {limit} bytes")
        why = _printable(error_message) or "the runner could not finish the job"
        if console_output:
            await self.heartbeat(runner_id, job_id, None, None, console_output)
        for _ in range(3):  # a heartbeat in between changes the row: read it again
            job = await self.check_holder(runner_id, job_id)
            outcome = await self.take_back(job, why)
            if outcome is not None:
                return outcome
        raise NotOwned()

    async def _check_figures(self, output_data: dict[str, Any]) -> None:
        """A result may name a figure stored here only once all its files are in."""
        if self.figures is None:
            return
        for url in figpack_urls(output_data):
            job_id = self.figures.job_of_url(url) if isinstance(url, str) else None
            if job_id is not None and not await self.figures.is_complete(job_id):
                raise BadRequest(
                    "Figure files are missing: upload them before completing the job",
                    details=url,
                )

    def _check_console(self, console_output: str | None) -> None:
        limit = self.settings.max_console_bytes
        if console_output and hashing.utf8_size(console_output) > limit:
            raise BadRequest(f"Console output exceeds size limit of {limit} bytes")

    # --- admin ----------------------------------------------------------------------
    async def stats(self) -> dict[str, Any]:
        counts = await self.store.job_counts()
        jobs = {status.value: counts.get(status.value, 0) for status in JobStatus}
        jobs["total"] = sum(counts.values())
        since = self.clock() - int(self.settings.runner_active_window * 1000)
        total, active = await self.store.count_runners(since)
        return {"jobs": jobs, "runners": {"total": total, "active": active}}

    async def list_jobs(
        self,
        status: str | None,
        job_type: str | None,
        limit: int,
        offset: int,
        after: tuple[int, str] | None = None,
    ) -> list[JobRow]:
        """Newest first; ``job_type`` matches any type containing that text; ``after``
        (created_at, id) starts past that job, ``offset`` rows further."""
        pattern = None
        if job_type and NUL in job_type:
            return []  # no job type has one
        if job_type:
            escaped = job_type.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            pattern = f"%{escaped}%"
        if after is not None:
            return await self.store.list_jobs_after(status, pattern, limit, offset, after)
        return await self.store.list_jobs(status, pattern, limit, offset)

    async def delete_jobs(self, job_ids: Sequence[str]) -> list[str]:
        valid = [j for j in job_ids if _is_uuid(j)]
        deleted = await self.store.delete_jobs(valid) if valid else []
        for job_id in deleted:
            if self.figures is not None:
                await self.figures.remove(job_id)
            self.notifier.publish(Event("job_deleted", job_id))
        return deleted

    async def list_runners(
        self, limit: int, offset: int, after: tuple[int, str] | None = None
    ) -> list[RunnerRow]:
        """Most recently seen first; ``after`` (last_seen, id) starts past that runner."""
        if after is not None:
            return await self.store.list_runners_after(limit, offset, after)
        return await self.store.list_runners(limit, offset)

    async def runner_jobs(self, runner_id: str) -> list[JobRow]:
        return await self.store.jobs_of_runner(runner_id, 100)

    def runner_is_active(self, runner: RunnerRow) -> bool:
        return self.clock() - runner.last_seen < self.settings.runner_active_window * 1000

    # --- liveness -------------------------------------------------------------------
    def retry_delay_ms(self, attempts: int) -> int:
        """Exponential backoff with full jitter (attempts = runs so far)."""
        s = self.settings
        cap = min(s.retry_max_delay, s.retry_base_delay * 2 ** max(attempts - 1, 0))
        return int(self.rng() * cap * 1000)

    async def sweep(self, limit: int = 500) -> tuple[int, int]:
        """Take back running jobs whose heartbeat went stale: (re-queued, failed).

        The job counts' recorded changes are folded first, so a stats read adds
        at most one interval's worth.
        """
        await self.store.fold_job_counts()
        timeout_s = self.settings.heartbeat_timeout
        stale = await self.store.stale_jobs(self.clock() - int(timeout_s * 1000), limit)
        requeued = failed = 0
        for job in stale:
            outcome = await self.take_back(
                job, f"runner {job.claimed_by} sent no heartbeat for {timeout_s:g} s"
            )
            requeued += outcome == JobStatus.PENDING
            failed += outcome == JobStatus.FAILED
        return requeued, failed

    async def take_back(self, job: JobRow, why: str) -> JobStatus | None:
        """Re-queue a lost run with backoff while attempts remain, else fail the job.

        Changes nothing (returns None) if the job moved on since it was read.
        """
        now = self.clock()
        if job.attempts < job.max_attempts:
            note = f"Attempt {job.attempts} of {job.max_attempts} lost: {why}; retrying"
            not_before = now + self.retry_delay_ms(job.attempts)
            if not await self.store.retry_stale(job, now, not_before, note):
                return None
            self.observer.ended(job.id, "lost", now)
            log.warning("job %s re-queued: %s", job.id, why)
            # The note stays on the job until a run completes it; watchers hear it now.
            self._queued(job, new=False, not_before=not_before, note=note)
            return JobStatus.PENDING
        message = f"Job failed after {job.attempts} attempts: {why} on the last attempt"
        if not await self.store.fail_stale(job, now, message):
            return None
        self.observer.ended(job.id, "lost", now)
        log.warning("job %s failed: %s", job.id, why)
        self._updated(job.id, JobStatus.FAILED, error_message=message)
        return JobStatus.FAILED

    async def running_jobs_of(self, runner_id: str) -> list[JobRow]:
        jobs = await self.store.jobs_of_runner(runner_id, 1000)
        return [j for j in jobs if j.status in RUNNING]

    async def take_back_runner(self, runner_id: str) -> None:
        """A runner did not come back within its grace period: take back its jobs."""
        for job in await self.running_jobs_of(runner_id):
            await self.take_back(job, f"runner {runner_id} disconnected and did not return")

    async def release_jobs(self, runner_id: str, job_ids: Sequence[str], why: str) -> list[str]:
        """Jobs a runner gives back (or never received): queued again at once.

        Returns the ids released; a job the runner does not hold is left alone.
        """
        wanted = set(job_ids)
        released = []
        for job in await self.running_jobs_of(runner_id):
            if job.id in wanted:
                now = self.clock()
                if await self.store.retry_stale(job, now, now, f"Released: {_printable(why)}"):
                    self.observer.ended(job.id, "released", now)
                    released.append(job.id)
                    self._queued(job, new=False)
        return released

    async def claim_next(self, runner_id: str, job_types: Sequence[str]) -> JobRow | None:
        """Claim the best pending job of these types for a runner (push and long-poll)."""
        jobs = await self.claim_batch(runner_id, job_types, 1)
        return jobs[0] if jobs else None

    async def claim_batch(
        self, runner_id: str, job_types: Sequence[str], limit: int
    ) -> list[JobRow]:
        """Claim up to ``limit`` of the best pending jobs of these types, in one statement."""
        job_types = [t for t in job_types if NUL not in t]  # no job type has one
        if not job_types or limit < 1:
            return []
        jobs = await self.store.claim_batch(runner_id, job_types, self.clock(), limit)
        for job in jobs:
            self.observer.started(job)
            self._updated(job.id, JobStatus.CLAIMED, runner_id=runner_id)
        return jobs

    # --- events -----------------------------------------------------------------------
    def _queued(
        self,
        job: JobRow,
        *,
        new: bool,
        not_before: int = 0,
        runner_id: str | None = None,
        note: str | None = None,
    ) -> None:
        """``runner_id``: the job was claimed for it as it was inserted (no runner
        needs waking for it); ``note``: why a run of it was lost."""
        data: dict[str, Any] = {
            "job_hash": job.job_hash,
            "job_type": job.job_type,
            "status": JobStatus.PENDING.value,
            "priority": job.priority,
            "not_before": not_before,
            "new": new,
        }
        if runner_id is not None:
            data["runner_id"] = runner_id
        if note is not None:
            data["note"] = note
        self.notifier.publish(Event("job_queued", job.id, data))

    def _updated(self, job_id: str, status: str, **data: Any) -> None:
        self.notifier.publish(Event("job_updated", job_id, {"status": str(status), **data}))


def check_registration(name: object, capabilities: object) -> tuple[str, list[str]]:
    """A runner's name and job types as registered over HTTP or said in a hello;
    BadRequest (the original's message, the rule in the details) if they are not."""
    if not isinstance(name, str) or not name.strip():
        raise _bad_registration("name: a non-empty string")
    if len(name) > MAX_NAME_CHARS:
        raise _bad_registration(f"name: at most {MAX_NAME_CHARS} characters")
    if not isinstance(capabilities, list):
        raise _bad_registration("capabilities: an array of job types")
    if len(capabilities) > MAX_CAPABILITIES:
        raise _bad_registration(f"capabilities: at most {MAX_CAPABILITIES} job types")
    types: list[str] = []
    for job_type in capabilities:
        if not isinstance(job_type, str) or not job_type or len(job_type) > MAX_NAME_CHARS:
            raise _bad_registration(f"capabilities: job types of 1 to {MAX_NAME_CHARS} characters")
        types.append(job_type)
    if NUL in name + "".join(types):
        raise _bad_registration("name and capabilities: no NUL characters")
    return name, types


def _bad_registration(why: str) -> BadRequest:
    return BadRequest("Invalid registration data", details=why)


#: Deepest nesting of objects/arrays stored as params or output. Replies wrap them in a
#: few more levels, and both the JSON encoder (orjson: 254) and the recursive hashing
#: have limits: a deeper value would be stored, then fail every read as a 500.
MAX_DEPTH = 100


def _too_deep(value: object) -> bool:
    """Does ``value`` nest objects and arrays more than MAX_DEPTH levels? (No recursion.)"""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, dict | list):
            continue
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, dict | list):
                if depth >= MAX_DEPTH:
                    return True
                stack.append((child, depth + 1))
    return False


#: PostgreSQL text cannot hold NUL: names with one are refused, and in text from
#: runners it becomes U+FFFD, so that both engines store the same.
NUL = "\x00"


def _printable(text: str | None) -> str | None:
    return text.replace(NUL, "\ufffd") if text else text


#: An id as this server writes them: a lower-case UUID string.
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _is_uuid(value: str) -> bool:
    """Ids are lower-case uuid strings; anything else cannot name a row."""
    return _UUID.fullmatch(value) is not None


__all__ = ["RUNNING", "JobRequest", "JobService", "Outcome", "SubmitResult", "now_ms"]
