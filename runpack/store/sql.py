"""The store's body, once for both engines: each method is a named statement and its
parameters, run by one of the few primitives an engine provides.

The primitives (:class:`SqlStore`'s abstract methods) are: a point read (one row by a
key, which SQLite answers on the event loop), a scan, a write returning its rows, a
write returning how many rows it changed, and one statement for many rows at once.
``SqliteStore`` and ``PostgresStore`` implement them and override only what their
engine does differently: PostgreSQL sends the reads by hash, inserts and completions
that arrive together as one statement each; SQLite reads an existing job by hash on
the loop before it writes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from runpack.image_lists import group_of
from runpack.store import queries as q
from runpack.store.base import (
    API_KEY_COLUMNS,
    JOB_COLUMNS,
    RUNNER_COLUMNS,
    ApiKeyRow,
    JobRow,
    NewJob,
    RunnerRow,
    claim_order,
)
from runpack.store.dialect import Statement
from runpack.store.image_claims import CLAIM_BATCH_IMAGES
from runpack.store.instances import InstanceMethods
from runpack.store.versions import VersionMethods

#: A row as the driver gives it: a tuple (SQLite) or a Record (asyncpg).
Row = Sequence[Any]
Params = Mapping[str, Any]


def _job(row: Row | None) -> JobRow | None:
    return JobRow(*row) if row is not None else None


def _api_key(row: Row | None) -> ApiKeyRow | None:
    return ApiKeyRow(*row) if row is not None else None


def _first(rows: list[Row]) -> Row | None:
    return rows[0] if rows else None


class SqlStore(InstanceMethods, VersionMethods, ABC):
    """Every :class:`~runpack.store.base.Store` method over the engine's primitives."""

    # --- the engine's primitives ------------------------------------------------
    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def _read_one(self, stmt: Statement, params: Params) -> Row | None:
        """One row looked up by a key (an index probe), from the last commit."""

    @abstractmethod
    async def _read(self, stmt: Statement, params: Params) -> list[Row]:
        """Every row of a scan."""

    @abstractmethod
    async def _write(self, stmt: Statement, params: Params) -> list[Row]:
        """Run one changing statement; return its rows once it is committed."""

    @abstractmethod
    async def _write_count(self, stmt: Statement, params: Params) -> int:
        """Run one changing statement; return how many rows it changed, once committed."""

    @abstractmethod
    async def _write_many(self, stmt: Statement, rows: Sequence[Params]) -> int:
        """Run the statement for each of ``rows``, all in one transaction; rows changed."""

    @abstractmethod
    async def insert_job(self, job: NewJob) -> tuple[JobRow, bool]:
        """Insert unless the hash exists; return the job and whether it is new."""

    async def _write_one(self, stmt: Statement, params: Params) -> Row | None:
        return _first(await self._write(stmt, params))

    async def _count(self, stmt: Statement, params: Params) -> int:
        rows = await self._read(stmt, params)
        return int(rows[0][0])

    # --- jobs: reads ------------------------------------------------------------
    async def get_job(self, job_id: str) -> JobRow | None:
        return _job(await self._read_one(q.GET_JOB, {"id": job_id}))

    async def get_job_by_hash(self, job_hash: str) -> JobRow | None:
        return _job(await self._read_one(q.GET_JOB_BY_HASH, {"job_hash": job_hash}))

    async def available_jobs(self, job_types: Sequence[str], now: int, limit: int) -> list[JobRow]:
        if not job_types:
            return []
        params = {"job_types": list(job_types), "now": now, "limit": limit}
        return [JobRow(*row) for row in await self._read(q.AVAILABLE, params)]

    async def list_jobs(
        self, status: str | None, job_type: str | None, limit: int, offset: int
    ) -> list[JobRow]:
        params = {"status": status, "job_type": job_type, "limit": limit, "offset": offset}
        return [JobRow(*row) for row in await self._read(q.LIST_JOBS, params)]

    async def count_jobs(self) -> dict[str, int]:
        return {status: int(n) for status, n in await self._read(q.COUNT_JOBS, {})}

    async def list_jobs_after(
        self,
        status: str | None,
        job_type: str | None,
        limit: int,
        offset: int,
        after: tuple[int, str],
    ) -> list[JobRow]:
        created_at, job_id = after
        params = {"status": status, "job_type": job_type, "limit": limit, "offset": offset}
        params |= {"created_at": created_at, "id": job_id}
        return [JobRow(*row) for row in await self._read(q.LIST_JOBS_AFTER, params)]

    async def job_counts(self) -> dict[str, int]:
        return {status: int(n) for status, n in await self._read(q.JOB_COUNTS, {})}

    async def fold_job_counts(self) -> None:
        await self._write_count(q.FOLD_JOB_COUNTS, {})

    async def jobs_of_runner(self, runner_id: str, limit: int) -> list[JobRow]:
        params = {"runner_id": runner_id, "limit": limit}
        return [JobRow(*row) for row in await self._read(q.JOBS_OF_RUNNER, params)]

    async def stale_jobs(self, cutoff: int, limit: int) -> list[JobRow]:
        params = {"cutoff": cutoff, "limit": limit}
        return [JobRow(*row) for row in await self._read(q.STALE, params)]

    # --- jobs: transitions --------------------------------------------------------
    async def requeue(
        self, job_id: str, from_status: Sequence[str], now: int, not_before: int
    ) -> JobRow | None:
        params = {"id": job_id, "from_status": list(from_status), "now": now}
        return _job(await self._write_one(q.REQUEUE, {**params, "not_before": not_before}))

    async def cancel(
        self, job_id: str, from_status: Sequence[str], now: int, reason: str
    ) -> JobRow | None:
        params = {"id": job_id, "from_status": list(from_status), "now": now}
        return _job(await self._write_one(q.CANCEL, {**params, "reason": reason}))

    async def expire(self, job_id: str, now: int) -> bool:
        return await self._write_count(q.EXPIRE, {"id": job_id, "now": now}) > 0

    async def claim(self, job_id: str, runner_id: str, now: int) -> JobRow | None:
        params = {"id": job_id, "runner_id": runner_id, "now": now}
        return _job(await self._write_one(q.CLAIM, params))

    async def claim_next(self, runner_id: str, job_types: Sequence[str], now: int) -> JobRow | None:
        jobs = await self.claim_batch(runner_id, job_types, now, 1)
        return jobs[0] if jobs else None

    async def claim_batch(
        self, runner_id: str, job_types: Collection[str], now: int, limit: int
    ) -> list[JobRow]:
        if not job_types or limit < 1:
            return []
        params = {"runner_id": runner_id, "job_types": list(job_types), "now": now}
        group = group_of(job_types)
        if group is None:
            rows = await self._write(q.CLAIM_BATCH, {**params, "limit": limit})
        else:  # a runner that allows container jobs only these images
            params |= {"image_list": group.listed, "image_regex": group.pg_regex}
            rows = await self._write(CLAIM_BATCH_IMAGES, {**params, "limit": limit})
        return claim_order([JobRow(*row) for row in rows])

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
        params: dict[str, Any] = {
            "id": job_id,
            "runner_id": runner_id,
            "now": now,
            "progress_current": progress_current,
            "progress_total": progress_total,
        }
        if console_append is not None:
            params.update(console_append=console_append, max_console=max_console)
            return await self._write_count(q.HEARTBEAT_APPEND, params) > 0
        params["console_output"] = console_output
        return await self._write_count(q.HEARTBEAT, params) > 0

    async def complete(
        self, job_id: str, runner_id: str, now: int, output_data: str, console_output: str | None
    ) -> bool:
        params = {
            "id": job_id,
            "runner_id": runner_id,
            "now": now,
            "output_data": output_data,
            "console_output": console_output,
        }
        return await self._write_count(q.COMPLETE, params) > 0

    async def fail(
        self, job_id: str, runner_id: str, now: int, error_message: str, console_output: str | None
    ) -> bool:
        params = {
            "id": job_id,
            "runner_id": runner_id,
            "now": now,
            "error_message": error_message,
            "console_output": console_output,
        }
        return await self._write_count(q.FAIL, params) > 0

    async def retry_stale(self, job: JobRow, now: int, not_before: int, note: str) -> bool:
        params = {
            "id": job.id,
            "runner_id": job.claimed_by,
            "last_heartbeat": job.last_heartbeat,
            "now": now,
            "not_before": not_before,
            "note": note,
        }
        return await self._write_count(q.RETRY_STALE, params) > 0

    async def fail_stale(self, job: JobRow, now: int, error_message: str) -> bool:
        params = {
            "id": job.id,
            "runner_id": job.claimed_by,
            "last_heartbeat": job.last_heartbeat,
            "now": now,
            "error_message": error_message,
        }
        return await self._write_count(q.FAIL_STALE, params) > 0

    async def delete_jobs(self, job_ids: Sequence[str]) -> list[str]:
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return []
        gone = {row[0] for row in await self._write(q.DELETE_JOBS, {"ids": ids})}
        return [job_id for job_id in ids if job_id in gone]  # in the order asked

    # --- runners ------------------------------------------------------------------
    async def insert_runner(self, runner: RunnerRow) -> None:
        params = {name: getattr(runner, name) for name in RUNNER_COLUMNS}
        await self._write_count(q.INSERT_RUNNER, params)

    async def get_runner(self, runner_id: str) -> RunnerRow | None:
        row = await self._read_one(q.GET_RUNNER, {"id": runner_id})
        return RunnerRow(*row) if row is not None else None

    async def touch_runner(self, runner_id: str, now: int) -> bool:
        return await self._write_count(q.TOUCH_RUNNER, {"id": runner_id, "now": now}) > 0

    async def list_runners(self, limit: int = 1000, offset: int = 0) -> list[RunnerRow]:
        params = {"limit": limit, "offset": offset}
        return [RunnerRow(*row) for row in await self._read(q.LIST_RUNNERS, params)]

    async def list_runners_after(
        self, limit: int, offset: int, after: tuple[int, str]
    ) -> list[RunnerRow]:
        last_seen, runner_id = after
        params = {"limit": limit, "offset": offset, "last_seen": last_seen, "id": runner_id}
        return [RunnerRow(*row) for row in await self._read(q.LIST_RUNNERS_AFTER, params)]

    async def count_runners(self, active_since: int) -> tuple[int, int]:
        total, active = (await self._read(q.COUNT_RUNNERS, {"active_since": active_since}))[0]
        return int(total), int(active)

    async def probe_write(self) -> None:
        await self._write_count(q.PROBE_WRITE, {})

    # --- imports --------------------------------------------------------------------
    async def import_jobs(self, rows: Sequence[JobRow]) -> int:
        params = [{name: getattr(row, name) for name in JOB_COLUMNS} for row in rows]
        return await self._write_many(q.IMPORT_JOBS, params) if params else 0

    async def import_runners(self, rows: Sequence[RunnerRow]) -> int:
        params = [{name: getattr(row, name) for name in RUNNER_COLUMNS} for row in rows]
        return await self._write_many(q.IMPORT_RUNNERS, params) if params else 0

    # --- retention ------------------------------------------------------------------
    async def delete_finished(self, status: str, before: int, limit: int) -> list[str]:
        params = {"status": status, "before": before, "limit": limit}
        return [row[0] for row in await self._write(q.DELETE_FINISHED, params)]

    async def count_finished(self, status: str, before: int) -> int:
        return await self._count(q.COUNT_FINISHED, {"status": status, "before": before})

    async def clear_consoles(
        self, status: str, since: int, before: int, limit: int
    ) -> list[tuple[str, int]]:
        params = {"status": status, "since": since, "before": before, "limit": limit}
        return [(row[0], int(row[1])) for row in await self._write(q.CLEAR_CONSOLES, params)]

    async def count_consoles(self, status: str, since: int, before: int) -> int:
        params = {"status": status, "since": since, "before": before}
        return await self._count(q.COUNT_CONSOLES, params)

    async def job_states(self, job_ids: Sequence[str]) -> dict[str, tuple[str, int]]:
        if not job_ids:
            return {}
        rows = await self._read(q.JOB_STATES, {"ids": list(job_ids)})
        return {job_id: (status, int(updated_at)) for job_id, status, updated_at in rows}

    async def unfinished_params(self, pattern: str) -> list[str]:
        return [row[0] for row in await self._read(q.UNFINISHED_PARAMS, {"pattern": pattern})]

    async def delete_idle_runners(self, before: int, limit: int) -> list[str]:
        params = {"before": before, "limit": limit}
        return [row[0] for row in await self._write(q.DELETE_IDLE_RUNNERS, params)]

    async def count_idle_runners(self, before: int) -> int:
        return await self._count(q.COUNT_IDLE_RUNNERS, {"before": before})

    # --- where a pending job stands -------------------------------------------------------
    async def jobs_ahead(self, job: JobRow, job_types: Sequence[str], limit: int) -> dict[str, int]:
        params = {
            "job_types": list(job_types),
            "priority": job.priority,
            "created_at": job.created_at,
            "id": job.id,
            "limit": limit,
        }
        return {t: int(n) for t, n in await self._read(q.JOBS_AHEAD, params)}

    async def recent_runs(self, job_type: str, since: int, limit: int) -> list[int]:
        params = {"job_type": job_type, "since": since, "limit": limit}
        return [int(row[0]) for row in await self._read(q.RECENT_RUNS, params)]

    async def running_on(self, runner_ids: Sequence[str], limit: int) -> list[tuple[str, str, int]]:
        params = {"runner_ids": list(runner_ids), "limit": limit}
        rows = await self._read(q.RUNNING_ON, params)
        return [(r, t, int(c or 0)) for r, t, c in rows]

    async def runners_seen(self, since: int, limit: int) -> list[RunnerRow]:
        params = {"since": since, "limit": limit}
        return [RunnerRow(*row) for row in await self._read(q.RUNNERS_SEEN, params)]

    # --- stored API keys ----------------------------------------------------------------
    async def insert_api_key(self, key: ApiKeyRow) -> None:
        params = {name: getattr(key, name) for name in API_KEY_COLUMNS}
        await self._write_count(q.INSERT_API_KEY, params)

    async def get_api_key(self, key_id: str) -> ApiKeyRow | None:
        return _api_key(await self._read_one(q.GET_API_KEY, {"id": key_id}))

    async def api_key_by_hash(self, secret_sha256: str) -> ApiKeyRow | None:
        params = {"secret_sha256": secret_sha256}
        return _api_key(await self._read_one(q.API_KEY_BY_HASH, params))

    async def list_api_keys(self) -> list[ApiKeyRow]:
        return [ApiKeyRow(*row) for row in await self._read(q.LIST_API_KEYS, {})]

    async def revoke_api_key(self, key_id: str, now: int) -> ApiKeyRow | None:
        return _api_key(await self._write_one(q.REVOKE_API_KEY, {"id": key_id, "now": now}))

    async def touch_api_key(self, key_id: str, now: int) -> bool:
        return await self._write_count(q.TOUCH_API_KEY, {"id": key_id, "now": now}) > 0

    # --- rate buckets shared by instances -------------------------------------------------
    async def take_tokens(
        self, name: str, per_ms: float, burst: float, n: int, now: int
    ) -> tuple[int, float]:
        params = {"name": name, "per_ms": per_ms, "burst": burst, "n": n, "now": now}
        row = await self._write_one(q.TAKE_TOKENS, params)
        assert row is not None  # an upsert always returns its row
        return int(row[0]), float(row[1])

    async def give_back_token(self, name: str, burst: float) -> None:
        await self._write_count(q.GIVE_BACK_TOKEN, {"name": name, "burst": burst})

    async def delete_idle_buckets(self, before: int) -> int:
        return await self._write_count(q.DELETE_IDLE_BUCKETS, {"before": before})

    # --- metrics ----------------------------------------------------------------------
    async def count_jobs_by_status_and_type(self) -> dict[tuple[str, str], int]:
        rows = await self._read(q.COUNT_JOBS_BY_STATUS_AND_TYPE, {})
        return {(status, job_type): int(n) for status, job_type, n in rows}
