"""Jobs as clients see them: submit with dedup and the result cache, check, cancel,
retry; and the admin's listing and deletion."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

from runpack.errors import JobNotFound, NotCancellable, RateLimited
from runpack.notify import EventKind, ServerEvent
from runpack.protocol import FINAL, REQUEUEABLE, RUNNING, JobStatus
from runpack.service.checks import NUL, is_uuid
from runpack.service.core import Answer, JobRequest, Outcome, ServiceCore, WorkBudget
from runpack.store import JobRow, NewJob


class Jobs(ServiceCore):
    """Jobs as clients and administrators act on them."""

    async def _find(self, job_hash: str) -> JobRow | None:
        """The job with this hash: completed ones from memory, others from the store."""
        job = self.results.get(job_hash)
        if job is None:
            job = await self.store.get_job_by_hash(job_hash)
            if job is not None and job.status == JobStatus.COMPLETED:
                self.results.put(job)
        return job

    async def submit(self, req: JobRequest, budget: WorkBudget | None = None) -> Answer:
        """The job of this request: found (a cached result, a failure, one in progress)
        or queued. Queuing one, or running one again, takes a unit of ``budget`` first:
        when it is spent, an existing job is still answered, and nothing is created."""
        result = await self._submit(req, budget)
        self.observer.answered("submit", result)
        return result

    async def _submit(self, req: JobRequest, budget: WorkBudget | None) -> Answer:
        job = self.results.get(req.job_hash)
        if job is None:
            if budget is not None and budget.shared:
                # Counting new work costs a database write here: look for the job first,
                # so that finding it costs a read.
                job = await self.store.get_job_by_hash(req.job_hash)
            if job is None:
                # The insert finds the job if its hash has one.
                job, created = await self._insert_within(req, budget)
                if created:
                    return Answer(Outcome.CREATED, job)
            if job.status == JobStatus.COMPLETED:
                self.results.put(job)
        return await self._existing(job, req.force, budget)

    async def _insert_within(
        self, req: JobRequest, budget: WorkBudget | None
    ) -> tuple[JobRow, bool]:
        """``_insert`` with a unit of ``budget`` taken first, and given back if the job
        existed. With the budget spent, the job if it exists; else RateLimited, and
        nothing created."""
        if budget is None:
            return await self._insert(req)
        try:
            await budget.take()
        except RateLimited:
            job = await self.store.get_job_by_hash(req.job_hash)
            if job is None:
                raise
            return job, False
        try:
            job, created = await self._insert(req)
        except BaseException:
            await budget.give_back()
            raise
        if not created:
            await budget.give_back()
        return job, created

    async def _insert(self, req: JobRequest) -> tuple[JobRow, bool]:
        """The job of this request's hash, inserted if there is none (claimed at
        once for a runner with a free slot, if one waits), and whether it is new."""
        slots = self.slots
        slot = slots.take(req.job_type, req.input_params) if slots is not None else None
        new = NewJob(
            id=str(uuid.uuid4()),
            job_hash=req.job_hash,
            job_type=req.job_type,
            input_params=req.params_text,
            priority=req.priority,
            max_attempts=self.settings.max_attempts,
            timeout=None if req.timeout is None else max(1, round(req.timeout * 1000)),
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

    async def _existing(self, job: JobRow, force: bool, budget: WorkBudget | None) -> Answer:
        status = job.status
        if status == JobStatus.COMPLETED:
            if await self.validator.is_valid(job.output_data):
                return Answer(Outcome.CACHED, job)
            await self.store.expire(job.id, self.clock())
            self._updated(job.id, JobStatus.EXPIRED)
            return await self._requeue(job, (JobStatus.EXPIRED,), budget)
        if status in (JobStatus.EXPIRED, JobStatus.CANCELLED):
            return await self._requeue(job, (status,), budget)
        if status == JobStatus.FAILED:
            due = self.clock() - job.updated_at >= self.settings.failed_retry_after * 1000
            if force or due:
                return await self._requeue(job, (JobStatus.FAILED,), budget)
            return Answer(Outcome.FAILED, job)
        return Answer(Outcome.ACTIVE, job)

    async def _requeue(
        self, job: JobRow, from_status: Sequence[str], budget: WorkBudget | None = None
    ) -> Answer:
        if budget is not None:
            await budget.take()
        now = self.clock()
        try:
            row = await self.store.requeue(job.id, from_status, now, not_before=now)
        except BaseException:
            if budget is not None:
                await budget.give_back()
            raise
        if row is None:  # someone else changed it first: report what it is now
            if budget is not None:
                await budget.give_back()
            current = await self.store.get_job(job.id)
            if current is None:
                raise JobNotFound()
            return Answer(Outcome.ACTIVE, current)
        self._queued(row, new=False)
        return Answer(Outcome.CREATED, row, requeued=True)

    async def check(self, req: JobRequest) -> Answer:
        result = await self._check(req)
        self.observer.answered("check", result)
        return result

    async def _check(self, req: JobRequest) -> Answer:
        job = await self._find(req.job_hash)
        if job is None:
            return Answer(Outcome.MISSING, None)
        if job.status == JobStatus.COMPLETED:
            if await self.validator.is_valid(job.output_data):
                return Answer(Outcome.CACHED, job)
            await self.store.expire(job.id, self.clock())
            self._updated(job.id, JobStatus.EXPIRED)
            return Answer(Outcome.EXPIRED, job)
        if job.status == JobStatus.EXPIRED:
            return Answer(Outcome.EXPIRED, job)
        if job.status == JobStatus.FAILED:
            return Answer(Outcome.FAILED, job)
        return Answer(Outcome.ACTIVE, job)

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
        valid = [j for j in job_ids if is_uuid(j)]
        deleted = await self.store.delete_jobs(valid) if valid else []
        if self.figures is not None and deleted:
            await self.figures.remove_all(deleted)
        for job_id in deleted:
            self.notifier.publish(ServerEvent(EventKind.JOB_DELETED, job_id))
        return deleted
