"""A run of a job as its runner reports it: claimed, heartbeats, completed, failed, or
handed back to be retried later."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from runpack import hashing
from runpack.artifacts import figpack_urls, may_name_figures
from runpack.encoding import parse_json_text
from runpack.errors import BadRequest, ClaimLost, NotOwned
from runpack.image_lists import claimable, images_of, refuses
from runpack.protocol import RUNNING, JobStatus
from runpack.service.checks import MAX_DEPTH, NUL, is_uuid, printable, too_deep
from runpack.service.sweeping import Sweeping
from runpack.store import JobRow


class Runs(Sweeping):
    """A run as its runner reports it (a lost run is taken back as the sweeper does)."""

    async def check_holder(self, runner_id: str, job_id: str) -> JobRow:
        """The job, if this runner holds it (claimed or in progress); else NotOwned."""
        job = await self.store.get_job(job_id) if is_uuid(job_id) else None
        if job is None or job.status not in RUNNING or job.claimed_by != runner_id:
            raise NotOwned()
        return job

    async def available_jobs(self, job_types: Collection[str]) -> list[JobRow]:
        group = job_types
        job_types = [t for t in job_types if NUL not in t]  # no job type has one
        jobs = await self.store.available_jobs(job_types, self.clock(), 50)
        if images_of(group) is None:
            return jobs
        return [  # those of an image the runner allows (runpack.image_lists)
            j for j in jobs if not refuses(group, j.job_type, parse_json_text(j.input_params, {}))
        ]

    async def claim(self, runner_id: str, job_id: str) -> JobRow:
        """Claim a job by id (the original's polling runners). A claim repeated by
        the runner that holds it, such as a retry after the answer was lost on the
        way, gets the job again rather than a 409."""
        if not is_uuid(job_id):
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
        console_output, console_append = printable(console_output), printable(console_append)
        self._check_console(console_output)
        self._check_console(console_append)
        ok = is_uuid(job_id) and await self.store.heartbeat(
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
        if too_deep(output_data):
            raise BadRequest(
                "Output JSON is nested too deeply", details=f"at most {MAX_DEPTH} levels"
            )
        text = hashing.js_stringify(output_data)
        limit = self.settings.max_output_bytes
        if hashing.utf8_size(text) > limit:
            raise BadRequest(f"Output JSON exceeds size limit of {limit} bytes")
        self._check_console(console_output)
        if may_name_figures(text):
            await self._check_figures(output_data)
        console = printable(console_output) or None  # empty keeps what was streamed
        now = self.clock()
        ok = is_uuid(job_id) and await self.store.complete(job_id, runner_id, now, text, console)
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
        console = printable(console_output) or None
        error_message = printable(error_message) or ""
        now = self.clock()
        ok = is_uuid(job_id) and await self.store.fail(
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
        why = printable(error_message) or "the runner could not finish the job"
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

    async def claim_next(self, runner_id: str, job_types: Collection[str]) -> JobRow | None:
        """Claim the best pending job of these types for a runner (push and long-poll)."""
        jobs = await self.claim_batch(runner_id, job_types, 1)
        return jobs[0] if jobs else None

    async def claim_batch(
        self, runner_id: str, job_types: Collection[str], limit: int
    ) -> list[JobRow]:
        """Claim up to ``limit`` of the best pending jobs of these types, in one statement;
        of an ImageGroup's container type, only jobs of its images (runpack.image_lists)."""
        if any(NUL in t for t in job_types):  # no job type has one
            kept = frozenset(t for t in job_types if NUL not in t)
            job_types = claimable(kept, images_of(job_types))
        if not job_types or limit < 1:
            return []
        jobs = await self.store.claim_batch(runner_id, job_types, self.clock(), limit)
        for job in jobs:
            self.observer.started(job)
            self._updated(job.id, JobStatus.CLAIMED, runner_id=runner_id)
        return jobs
