"""The storage interface (a Protocol) and the records it returns.

Every state change is one conditional statement that names the states it may
come from (and the runner that must hold the job): a method returns ``None`` or
``False`` when no row changed, and the service turns that into a domain error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

JOB_COLUMNS = (
    "id",
    "job_hash",
    "job_type",
    "input_params",
    "status",
    "priority",
    "attempts",
    "max_attempts",
    "not_before",
    "timeout",
    "created_at",
    "updated_at",
    "claimed_by",
    "claimed_at",
    "last_heartbeat",
    "progress_current",
    "progress_total",
    "console_output",
    "output_data",
    "error_message",
)

RUNNER_COLUMNS = ("id", "name", "capabilities", "registered_at", "last_seen")


@dataclass(slots=True)
class JobRow:
    id: str
    job_hash: str
    job_type: str
    input_params: str
    status: str
    priority: int
    attempts: int
    max_attempts: int
    not_before: int
    timeout: int | None
    created_at: int
    updated_at: int
    claimed_by: str | None
    claimed_at: int | None
    last_heartbeat: int | None
    progress_current: int | None
    progress_total: int | None
    console_output: str | None
    output_data: str | None
    error_message: str | None


@dataclass(slots=True)
class RunnerRow:
    id: str
    name: str
    capabilities: str
    registered_at: int
    last_seen: int


@dataclass(slots=True, frozen=True)
class NewJob:
    id: str
    job_hash: str
    job_type: str
    input_params: str
    priority: int
    max_attempts: int
    timeout: int | None
    now: int


class Store(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    # --- jobs: reads ---------------------------------------------------------
    async def get_job(self, job_id: str) -> JobRow | None: ...

    async def get_job_by_hash(self, job_hash: str) -> JobRow | None: ...

    async def available_jobs(
        self, job_types: Sequence[str], now: int, limit: int
    ) -> list[JobRow]: ...

    async def list_jobs(
        self, status: str | None, job_type: str | None, limit: int, offset: int
    ) -> list[JobRow]: ...

    async def count_jobs(self) -> dict[str, int]: ...

    async def jobs_of_runner(self, runner_id: str, limit: int) -> list[JobRow]: ...

    async def stale_jobs(self, cutoff: int, limit: int) -> list[JobRow]: ...

    # --- jobs: transitions ---------------------------------------------------
    async def insert_job(self, job: NewJob) -> tuple[JobRow, bool]:
        """Insert unless the hash exists; return the job and whether it is new."""
        ...

    async def requeue(
        self, job_id: str, from_status: Sequence[str], now: int, not_before: int
    ) -> JobRow | None:
        """Put a finished job back in the queue, clearing its previous run."""
        ...

    async def cancel(
        self, job_id: str, from_status: Sequence[str], now: int, reason: str
    ) -> JobRow | None:
        """Cancel a job that is in one of ``from_status``."""
        ...

    async def expire(self, job_id: str, now: int) -> bool: ...

    async def claim(self, job_id: str, runner_id: str, now: int) -> JobRow | None: ...

    async def claim_next(self, runner_id: str, job_types: Sequence[str], now: int) -> JobRow | None:
        """Claim the best due pending job of these types (priority, then age), if any."""
        ...

    async def heartbeat(
        self,
        job_id: str,
        runner_id: str,
        now: int,
        progress_current: int | None,
        progress_total: int | None,
        console_output: str | None,
        console_append: str | None = None,
        max_console: int = 1_048_576,
    ) -> bool:
        """Record a heartbeat: replace the console, or append a chunk (keeping the tail)."""
        ...

    async def complete(
        self, job_id: str, runner_id: str, now: int, output_data: str, console_output: str | None
    ) -> bool: ...

    async def fail(
        self, job_id: str, runner_id: str, now: int, error_message: str, console_output: str | None
    ) -> bool: ...

    async def retry_stale(self, job: JobRow, now: int, not_before: int, note: str) -> bool:
        """Re-queue a running job whose heartbeat went stale (unchanged since read)."""
        ...

    async def fail_stale(self, job: JobRow, now: int, error_message: str) -> bool: ...

    async def delete_jobs(self, job_ids: Sequence[str]) -> list[str]:
        """Delete these jobs; return the ids that existed."""
        ...

    # --- runners -------------------------------------------------------------
    async def insert_runner(self, runner: RunnerRow) -> None: ...

    async def get_runner(self, runner_id: str) -> RunnerRow | None: ...

    async def touch_runner(self, runner_id: str, now: int) -> bool: ...

    async def list_runners(self) -> list[RunnerRow]: ...

    async def count_runners(self, active_since: int) -> tuple[int, int]: ...

    # --- imports (runpack import-d1) --------------------------------------------------
    async def import_jobs(self, rows: Sequence[JobRow]) -> int:
        """Insert these rows as given, in one transaction; skip any whose id or job_hash
        is already there. Return how many were new."""
        ...

    async def import_runners(self, rows: Sequence[RunnerRow]) -> int:
        """Insert these runners as given, in one transaction, skipping known ids; count new."""
        ...
