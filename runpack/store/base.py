"""The storage interface (a Protocol) and the records it returns.

Every state change is one conditional statement that names the states it may
come from (and the runner that must hold the job): a method returns ``None`` or
``False`` when no row changed, and the service turns that into a domain error.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from runpack.store.versions import VersionStore

if TYPE_CHECKING:
    from runpack.store.instances import InstanceRow, RunnerPresence

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

RUNNER_COLUMNS = (
    "id",
    "name",
    "capabilities",
    "registered_at",
    "last_seen",
    "owner",
    "secret_sha256",
)
#: The owner of a runner registered with the environment runner key.
ENV_OWNER = "env"


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


def claim_order(jobs: list[JobRow]) -> list[JobRow]:
    """Jobs in the order claims take them: highest priority, then oldest."""
    return sorted(jobs, key=lambda j: (-j.priority, j.created_at, j.id))


@dataclass(slots=True)
class RunnerRow:
    id: str
    name: str
    capabilities: str
    registered_at: int
    last_seen: int
    #: The key that registered it: a stored key's id, or ENV_OWNER.
    owner: str = ENV_OWNER
    #: SHA-256 of the runner's own secret (Runpack's runner); None: the key alone.
    secret_sha256: str | None = None


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
    #: A runner with a free slot when the job was submitted: the job is inserted
    #: already claimed for it (one commit fewer before it starts).
    runner_id: str | None = None


class Store(VersionStore, Protocol):
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

    async def list_jobs_after(
        self,
        status: str | None,
        job_type: str | None,
        limit: int,
        offset: int,
        after: tuple[int, str],
    ) -> list[JobRow]:
        """``list_jobs`` from past the job whose (created_at, id) is ``after``."""
        ...

    async def job_counts(self) -> dict[str, int]:
        """``count_jobs`` from the counts that triggers keep: a few rows, however many jobs."""
        ...

    async def fold_job_counts(self) -> None:
        """Fold the count changes recorded since the last (a no-op on SQLite)."""
        ...

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

    async def claim_batch(
        self, runner_id: str, job_types: Collection[str], now: int, limit: int
    ) -> list[JobRow]:
        """Claim up to ``limit`` of the best due pending jobs of these types (of an
        ImageGroup's container type, those of its images), in one statement; best first."""
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

    async def list_runners(self, limit: int = 1000, offset: int = 0) -> list[RunnerRow]:
        """A page of runners, most recently seen first."""
        ...

    async def list_runners_after(
        self, limit: int, offset: int, after: tuple[int, str]
    ) -> list[RunnerRow]:
        """``list_runners`` from past the runner whose (last_seen, id) is ``after``."""
        ...

    async def count_runners(self, active_since: int) -> tuple[int, int]: ...

    # --- readiness (GET /health) ---------------------------------------------------
    async def probe_write(self) -> None:
        """Write one row and commit; raise StoreError if the store cannot."""
        ...

    # --- imports (runpack import-d1) --------------------------------------------------
    async def import_jobs(self, rows: Sequence[JobRow]) -> int:
        """Insert these rows as given, in one transaction; skip any whose id or job_hash
        is already there. Return how many were new."""
        ...

    async def import_runners(self, rows: Sequence[RunnerRow]) -> int:
        """Insert these runners as given, in one transaction, skipping known ids; count new."""
        ...

    # --- retention (runpack.retention) ---------------------------------------------------
    # ``status`` is one finished state; a running or pending job is never touched.
    async def delete_finished(self, status: str, before: int, limit: int) -> list[str]:
        """Delete up to ``limit`` jobs in ``status`` last updated before ``before``,
        oldest first; return their ids."""
        ...

    async def count_finished(self, status: str, before: int) -> int: ...

    async def clear_consoles(
        self, status: str, since: int, before: int, limit: int
    ) -> list[tuple[str, int]]:
        """Clear the console of up to ``limit`` jobs in ``status`` last updated in
        [since, before), oldest first; return (id, updated_at) of each."""
        ...

    async def count_consoles(self, status: str, since: int, before: int) -> int: ...

    async def job_states(self, job_ids: Sequence[str]) -> dict[str, tuple[str, int]]:
        """Status and updated_at of those of these jobs that exist."""
        ...

    # input_params of the pending and running jobs whose text is LIKE ``pattern``.
    async def unfinished_params(self, pattern: str) -> list[str]: ...

    async def delete_idle_runners(self, before: int, limit: int) -> list[str]:
        """Delete up to ``limit`` runners last seen before ``before`` that hold no
        running job; return their ids."""
        ...

    async def count_idle_runners(self, before: int) -> int: ...

    # --- where a pending job stands (runpack.standing) ----------------------------------
    async def jobs_ahead(self, job: JobRow, job_types: Sequence[str], limit: int) -> dict[str, int]:
        """Pending jobs of ``job_types`` that claims take before ``job``, per type (each
        of the two parts, higher priority and older, counted up to ``limit``)."""
        ...

    async def recent_runs(self, job_type: str, since: int, limit: int) -> list[int]:
        """How long (ms, claim to result) the latest completed runs of a type took."""
        ...

    async def running_on(self, runner_ids: Sequence[str], limit: int) -> list[tuple[str, str, int]]:
        """(runner id, job type, claimed_at) of the jobs these runners run."""
        ...

    async def runners_seen(self, since: int, limit: int) -> list[RunnerRow]:
        """Runners heard from since ``since``, latest first."""
        ...

    # --- instances and the runners they hold (runpack.store.instances) ------------------
    async def register_instance(
        self, instance: str, host: str, data_dir: str, now: int
    ) -> None: ...

    async def touch_instance(self, instance: str, now: int) -> bool: ...

    async def stop_instance(self, instance: str, now: int) -> None: ...

    async def list_instances(self, since: int) -> list[InstanceRow]: ...

    async def tidy_instances(self, alive_since: int, forget_before: int) -> None: ...

    async def hold_runners(self, instance: str, held: Sequence[tuple[str, str, int]]) -> None: ...

    async def let_go_runners(self, instance: str, runner_ids: Sequence[str]) -> None: ...

    async def runners_per_instance(self, alive_since: int) -> dict[str, int]: ...

    async def presence_of(
        self, runner_ids: Sequence[str], alive_since: int
    ) -> dict[str, RunnerPresence]: ...

    # --- stored API keys (runpack keys) ------------------------------------------------
    async def insert_api_key(self, key: ApiKeyRow) -> None: ...

    async def get_api_key(self, key_id: str) -> ApiKeyRow | None: ...

    async def api_key_by_hash(self, secret_sha256: str) -> ApiKeyRow | None:
        """The key whose secret hashes to this, revoked or not (one index probe)."""
        ...

    async def list_api_keys(self) -> list[ApiKeyRow]:
        """Every key, oldest first."""
        ...

    async def revoke_api_key(self, key_id: str, now: int) -> ApiKeyRow | None:
        """Revoke a key that is not revoked yet; its row, or None if nothing changed."""
        ...

    async def touch_api_key(self, key_id: str, now: int) -> bool:
        """Record a use: ``last_used_at`` moves forward only."""
        ...

    # --- rate buckets shared by instances (runpack.ratelimit_shared) ---------------------
    async def take_tokens(
        self, name: str, per_ms: float, burst: float, n: int, now: int
    ) -> tuple[int, float]:
        """Take up to ``n`` whole tokens from the bucket ``name`` (new ones are full),
        refilled at ``per_ms`` a millisecond up to ``burst``, in one statement; what was
        taken (0 if not even one was there) and the tokens left."""
        ...

    async def give_back_token(self, name: str, burst: float) -> None:
        """Put back a token taken for work not done after all."""
        ...

    async def delete_idle_buckets(self, before: int) -> int:
        """Forget buckets not counted since ``before`` (full again by then)."""
        ...

    # --- metrics (runpack.metrics) ----------------------------------------------------
    async def count_jobs_by_status_and_type(self) -> dict[tuple[str, str], int]:
        """The number of jobs per (status, job_type)."""
        ...


API_KEY_COLUMNS = (
    "id",
    "name",
    "role",
    "secret_sha256",
    "job_types",
    "origins",
    "rate",
    "created_at",
    "last_used_at",
    "revoked_at",
    "max_priority",
)


@dataclass(slots=True)
class ApiKeyRow:
    """A stored key. The secret itself is never stored, only its SHA-256 hex."""

    id: str
    name: str
    role: str
    secret_sha256: str
    job_types: str | None  # JSON array, or None for any job type
    origins: str | None  # JSON array, or None for any Origin
    rate: int | None  # new jobs per rate period, or None for the default limits
    created_at: int
    last_used_at: int | None
    revoked_at: int | None
    #: The highest priority it may submit, or None for no ceiling.
    max_priority: int | None = None
