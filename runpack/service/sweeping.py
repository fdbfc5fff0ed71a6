"""Taking back runs whose runner went silent or away: re-queued with backoff while
attempts remain, else failed. The background task that calls :meth:`Sweeping.sweep` on
a timer is :mod:`runpack.sweeper`; the hub calls :meth:`Sweeping.take_back_runner` when a
runner's grace period ends."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from runpack.protocol import RUNNING, JobStatus
from runpack.service.checks import printable
from runpack.service.core import ServiceCore
from runpack.store import JobRow

log = logging.getLogger(__name__)


class Sweeping(ServiceCore):
    """Runs taken back from runners that went silent or away."""

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
                if await self.store.retry_stale(job, now, now, f"Released: {printable(why)}"):
                    self.observer.ended(job.id, "released", now)
                    released.append(job.id)
                    self._queued(job, new=False)
        return released
