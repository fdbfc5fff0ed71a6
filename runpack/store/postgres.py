"""PostgreSQL store: an asyncpg pool running the shared named statements.

Each call is one statement on a pooled connection (autocommit), so every
transition is atomic on its own, and claims use ``FOR UPDATE SKIP LOCKED``: any
number of server instances can share one database. The ``:name`` statements of
:mod:`runpack.store.queries` are rewritten to ``$n`` once and cached.

Driver and network failures become :class:`StoreError`, and those that a later
try may not meet (a lost connection, a server that cannot be reached or does
not answer in time) :class:`StoreUnavailable`, a 503. The pool replaces a
dropped connection by itself; a read that fails because its connection dropped
under it is tried once more, a write never is (it may have committed before the
connection went).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import asyncpg

from runpack.errors import StoreError, StoreUnavailable
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
from runpack.store.batching import Batcher
from runpack.store.migrations import apply_postgres

log = logging.getLogger(__name__)
T = TypeVar("T")

# Statements whose `IN {…}` slot takes one array parameter on PostgreSQL.
AVAILABLE = q.AVAILABLE.format(of_types=q.PG_OF_TYPES, pending_index="")
CLAIM_BATCH = q.CLAIM_BATCH.format(picked=q.PG_PICKED).format(
    of_types=q.PG_OF_TYPES, lock=q.SKIP_LOCKED, pending_index=""
)
REQUEUE = q.REQUEUE.format(from_status=q.pg_in("from_status"))
CANCEL = q.CANCEL.format(from_status=q.pg_in("from_status"))
DELETE_FINISHED = q.DELETE_FINISHED.format(lock=q.SKIP_LOCKED)
CLEAR_CONSOLES = q.CLEAR_CONSOLES.format(lock=q.SKIP_LOCKED)
JOB_STATES = q.JOB_STATES.format(ids=q.pg_in("ids"))
DELETE_IDLE_RUNNERS = q.DELETE_IDLE_RUNNERS.format(lock=q.SKIP_LOCKED)


def held_by_id(sql: str) -> str:
    """A statement on one job by id whose runner check the planner cannot index.

    Without statistics (a new table, or a database whose autovacuum is off) the
    planner costs the primary key and jobs_claimed_by_idx the same for ``id = :id
    AND claimed_by = :runner_id`` and may take the latter, which reads every job the
    runner ever held. ``IS NOT DISTINCT FROM`` is the same test here (a runner id is
    never NULL) and no index serves it, so the primary key is the only way in.
    """
    held = "claimed_by = :runner_id"
    if held not in sql:
        raise ValueError(f"no runner check in {sql!r}")
    return sql.replace(held, "claimed_by IS NOT DISTINCT FROM :runner_id")


# Batched twins of single-job statements (see Batcher): one array per column.
JOBS_BY_HASH = f"SELECT {q.JOB_COLS} FROM jobs WHERE job_hash = ANY($1::text[])"
# New jobs as INSERT_JOB makes them (pending, or claimed for a runner_id); the
# hashes taken already come back too, read in the same statement: ``created`` says
# which rows are new. The read sees the jobs committed before the statement began:
# a job with the same hash committed meanwhile (the insert waited for it) is read
# again afterwards.
_NEW_JOBS = """unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::int[],
            $7::bigint[], $8::bigint[], $9::text[])
     AS v(id, job_hash, job_type, input_params, priority, max_attempts, timeout, now,
          runner_id)"""
INSERT_JOBS = f"""
WITH created AS (
    INSERT INTO jobs (id, job_hash, job_type, input_params, status, priority, attempts,
                      max_attempts, not_before, timeout, created_at, updated_at,
                      claimed_by, claimed_at, last_heartbeat)
    SELECT id, job_hash, job_type, input_params,
           CASE WHEN runner_id IS NULL THEN 'pending' ELSE 'claimed' END, priority,
           CASE WHEN runner_id IS NULL THEN 0 ELSE 1 END, max_attempts, 0, timeout,
           now, now, runner_id,
           CASE WHEN runner_id IS NULL THEN NULL ELSE now END,
           CASE WHEN runner_id IS NULL THEN NULL ELSE now END
    FROM {_NEW_JOBS}
    ON CONFLICT (job_hash) DO NOTHING
    RETURNING {q.JOB_COLS}
)
SELECT true, * FROM created
UNION ALL
SELECT false, {q.JOB_COLS} FROM jobs WHERE job_hash = ANY($2::text[])
"""
# `jobs.id = ANY($1)` lets the planner see how few rows it reaches by the primary
# key (a join alone with unnest is estimated at 100 rows, and a sequential scan
# can look cheaper).
COMPLETE_JOBS = f"""
UPDATE jobs SET status = 'completed', output_data = v.output_data, updated_at = v.now,
       last_heartbeat = v.now, console_output = COALESCE(v.console_output, jobs.console_output),
       error_message = NULL
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[])
     AS v(id, runner_id, now, output_data, console_output)
WHERE jobs.id = ANY($1::text[]) AND jobs.id = v.id
      AND jobs.claimed_by IS NOT DISTINCT FROM v.runner_id AND jobs.status IN {q.RUNNING}
RETURNING jobs.id
"""
#: INSERT_JOBS's arrays: these NewJob fields, in this order.
INSERT_COLUMNS = (
    "id",
    "job_hash",
    "job_type",
    "input_params",
    "priority",
    "max_attempts",
    "timeout",
    "now",
    "runner_id",
)
#: A completion: (job id, runner id, now, output data, console output).
Completion = tuple[str, str, int, str, str | None]


HEARTBEAT = held_by_id(q.HEARTBEAT)
HEARTBEAT_APPEND = held_by_id(q.HEARTBEAT_APPEND)
COMPLETE = held_by_id(q.COMPLETE)
FAIL = held_by_id(q.FAIL)
RETRY_STALE = held_by_id(q.RETRY_STALE)
FAIL_STALE = held_by_id(q.FAIL_STALE)

# Everything the driver, the server or the network can raise at us. (An idle
# connection whose backend was terminated can fail with InternalClientError.)
DB_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)
# Errors that mean "the connection went away", beyond a connection found closed.
DROPPED = (
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08, and "closed mid-operation"
    asyncpg.AdminShutdownError,  # pg_terminate_backend, server shutdown
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
    ConnectionError,
)
# Errors a later try may not meet: no route, no connection, no answer in time.
UNREACHABLE = (OSError, TimeoutError)


@functools.cache
def numbered(sql: str) -> tuple[str, tuple[str, ...]]:
    """``to_numbered`` once per statement text: ($n text, parameter names in order)."""
    text, names = q.to_numbered(sql)
    return text, tuple(names)


def describe(exc: BaseException) -> str:
    """A one-line account of a driver error for ``StoreError.details``."""
    if isinstance(exc, TimeoutError) and not str(exc):
        return "TimeoutError: no answer in time (server unreachable or busy, or pool exhausted)"
    sqlstate = getattr(exc, "sqlstate", None)
    code = f" [{sqlstate}]" if isinstance(sqlstate, str) else ""
    return f"{type(exc).__name__}{code}: {exc}"


def redact(dsn: str) -> str:
    """The DSN without its password, for messages and logs."""
    dsn = re.sub(r"(://[^:/@?]*:)[^/?]*@", r"\1***@", dsn)
    return re.sub(r"(password=)[^&]*", r"\1***", dsn)


def _is_closed(conn: asyncpg.Connection) -> bool:
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:  # the pool took it back already: it closed under us
        return True


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Return a connection to the pool as it is, without asyncpg's reset query.

    The default reset (``RESET ALL``, ``UNLISTEN *``, unlocking advisory locks…)
    costs a round trip on every release, as much as the statement itself. The
    store leaves no session state behind: statements run in autocommit, the
    migration lock is transaction-scoped, and LISTEN has connections of its own.
    """


def _job_row(row: Sequence[Any]) -> JobRow:
    return JobRow(*row)


def _job(row: Sequence[Any] | None) -> JobRow | None:
    return JobRow(*row) if row is not None else None


def _status_count(status: str) -> int:
    """Rows affected, from a command tag such as ``UPDATE 1``."""
    return int(status.rsplit(" ", 1)[-1])


class PostgresStore:
    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 10.0,
        command_timeout: float | None = 30.0,
    ) -> None:
        self.dsn = dsn
        self.min_size = min_size
        self.max_size = max_size
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self._pool: asyncpg.Pool | None = None
        # The calls every job makes, a statement per batch under load.
        self._by_hash = Batcher(self._jobs_by_hash)
        self._inserts = Batcher(self._insert_jobs)
        self._completions = Batcher(self._complete_jobs)

    async def open(self) -> None:
        where = redact(self.dsn)
        try:
            pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self.min_size,
                max_size=self.max_size,
                timeout=self.connect_timeout,
                command_timeout=self.command_timeout,
                server_settings={
                    "application_name": "runpack",
                    # The claim must walk jobs_pending_idx in order and stop after
                    # LIMIT rows. The planner's row counts for the pending jobs are
                    # often stale in a queue (empty at the last ANALYZE, thousands
                    # now), and it would then pick a bitmap scan that reads every
                    # pending job, dead index entries included, and sorts them.
                    # Bitmap scans would also never mark those entries dead. None of
                    # the store's statements needs one.
                    "enable_bitmapscan": "off",
                    # A prepared statement's generic plan is made once and kept; one
                    # made while the jobs table was small scans the whole table for
                    # each claim once it is large (`id = ANY(...)` looks cheaper as a
                    # sequential scan of a few pages). Planning each execution costs
                    # less than that already at a few thousand jobs.
                    "plan_cache_mode": "force_custom_plan",
                },
                reset=_keep_session,
            )
        except (*DB_ERRORS, ValueError) as exc:
            raise StoreError(details=f"cannot connect to {where}: {describe(exc)}") from exc
        try:
            async with pool.acquire(timeout=self.connect_timeout) as conn:
                version = await apply_postgres(conn)
        except DB_ERRORS as exc:
            await self._close_pool(pool)
            raise StoreError(
                details=f"cannot apply the schema on {where}: {describe(exc)}"
            ) from exc
        log.info("PostgreSQL store open on %s (schema version %d)", where, version)
        self._pool = pool

    async def close(self) -> None:
        for batcher in (self._by_hash, self._inserts, self._completions):
            with contextlib.suppress(StoreError):
                await batcher.drain()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await self._close_pool(pool)

    async def _close_pool(self, pool: asyncpg.Pool) -> None:
        try:
            await asyncio.wait_for(pool.close(), timeout=self.connect_timeout)
        except TimeoutError:
            log.warning("PostgreSQL pool did not close in time; terminating its connections")
            pool.terminate()

    # --- plumbing -------------------------------------------------------------
    async def _run(self, op: Callable[[asyncpg.Connection], Awaitable[T]], *, read: bool) -> T:
        """Run ``op`` on a pooled connection, mapping driver errors to StoreError.

        A connection found dead (server restart, failover, terminated backend)
        expires the whole pool, since its siblings are likely dead too: every
        connection is replaced on its next use instead of failing one caller
        each. A read then runs once more on a fresh connection; a write does not.
        """
        if self._pool is None:
            raise StoreError(details="store is closed")
        pool = self._pool
        tries = 2 if read else 1
        for attempt in range(1, tries + 1):
            closed = False
            try:
                async with pool.acquire(timeout=self.connect_timeout) as conn:
                    try:
                        return await op(conn)
                    except DB_ERRORS:
                        closed = _is_closed(conn)
                        raise
            except DB_ERRORS as exc:
                if not (closed or isinstance(exc, DROPPED)):
                    kind = StoreUnavailable if isinstance(exc, UNREACHABLE) else StoreError
                    raise kind(details=describe(exc)) from exc
                await pool.expire_connections()
                if attempt == tries:
                    lost = f"database connection lost: {describe(exc)}"
                    raise StoreUnavailable(details=lost) from exc
                log.warning("database connection lost (%s); retrying the read", describe(exc))
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _args(sql: str, params: Mapping[str, Any]) -> tuple[str, list[Any]]:
        text, names = numbered(sql)
        return text, [params[name] for name in names]

    async def _rows(self, sql: str, params: Mapping[str, Any], *, read: bool = True) -> list[Any]:
        text, args = self._args(sql, params)
        return await self._run(lambda c: c.fetch(text, *args), read=read)

    async def _read_jobs(self, sql: str, params: Mapping[str, Any]) -> list[JobRow]:
        return [JobRow(*row) for row in await self._rows(sql, params)]

    async def _read_job(self, sql: str, params: Mapping[str, Any]) -> JobRow | None:
        rows = await self._read_jobs(sql, params)
        return rows[0] if rows else None

    async def _write_job(self, sql: str, params: Mapping[str, Any]) -> JobRow | None:
        text, args = self._args(sql, params)
        return _job(await self._run(lambda c: c.fetchrow(text, *args), read=False))

    async def _write_count(self, sql: str, params: Mapping[str, Any]) -> int:
        text, args = self._args(sql, params)
        return _status_count(await self._run(lambda c: c.execute(text, *args), read=False))

    # --- jobs: reads ------------------------------------------------------------
    async def get_job(self, job_id: str) -> JobRow | None:
        return await self._read_job(q.GET_JOB, {"id": job_id})

    async def get_job_by_hash(self, job_hash: str) -> JobRow | None:
        return await self._by_hash(job_hash)

    async def _jobs_by_hash(self, hashes: Sequence[str]) -> list[JobRow | None]:
        unique = list(dict.fromkeys(hashes))
        rows = await self._run(lambda c: c.fetch(JOBS_BY_HASH, unique), read=True)
        found = {job.job_hash: job for job in map(_job_row, rows)}
        return [found.get(job_hash) for job_hash in hashes]

    async def available_jobs(self, job_types: Sequence[str], now: int, limit: int) -> list[JobRow]:
        if not job_types:
            return []
        params = {"job_types": list(job_types), "now": now, "limit": limit}
        return await self._read_jobs(AVAILABLE, params)

    async def list_jobs(
        self, status: str | None, job_type: str | None, limit: int, offset: int
    ) -> list[JobRow]:
        params = {"status": status, "job_type": job_type, "limit": limit, "offset": offset}
        return await self._read_jobs(q.LIST_JOBS, params)

    async def count_jobs(self) -> dict[str, int]:
        return {status: int(n) for status, n in await self._rows(q.COUNT_JOBS, {})}

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
        return await self._read_jobs(q.LIST_JOBS_AFTER, params)

    async def job_counts(self) -> dict[str, int]:
        return {status: int(n) for status, n in await self._rows(q.JOB_COUNTS_PG, {})}

    async def fold_job_counts(self) -> None:
        await self._write_count(q.FOLD_JOB_COUNTS_PG, {})

    async def jobs_of_runner(self, runner_id: str, limit: int) -> list[JobRow]:
        return await self._read_jobs(q.JOBS_OF_RUNNER, {"runner_id": runner_id, "limit": limit})

    async def stale_jobs(self, cutoff: int, limit: int) -> list[JobRow]:
        return await self._read_jobs(q.STALE, {"cutoff": cutoff, "limit": limit})

    # --- jobs: transitions --------------------------------------------------------
    async def insert_job(self, job: NewJob) -> tuple[JobRow, bool]:
        return await self._inserts(job)

    async def _insert_jobs(self, jobs: Sequence[NewJob]) -> list[tuple[JobRow, bool]]:
        """Insert each hash's first job; every job gets its hash's row, and whether
        it was the one created."""
        first: dict[str, NewJob] = {}
        for job in jobs:
            first.setdefault(job.job_hash, job)

        async def op(conn: asyncpg.Connection) -> tuple[dict[str, JobRow], dict[str, JobRow]]:
            created: dict[str, JobRow] = {}
            existing: dict[str, JobRow] = {}
            # A conflicting insert waits for the other one to commit, so the row is
            # then visible to the next statement; it can only vanish if deleted in
            # between, and is then inserted again.
            wanted = list(first.values())
            for _ in range(3):
                columns = [[getattr(job, name) for job in wanted] for name in INSERT_COLUMNS]
                for row in await conn.fetch(INSERT_JOBS, *columns):
                    (created if row[0] else existing)[row[2]] = _job_row(row[1:])
                done = created.keys() | existing.keys()
                wanted = [j for j in wanted if j.job_hash not in done]
                if wanted:
                    taken = [job.job_hash for job in wanted]
                    for row in await conn.fetch(JOBS_BY_HASH, taken):
                        existing[row[1]] = _job_row(row)
                    wanted = [j for j in wanted if j.job_hash not in existing]
                if not wanted:
                    return created, existing
            gone = ", ".join(job.job_hash for job in wanted)
            raise StoreError(details=f"job {gone} was deleted while being inserted")

        created, existing = await self._run(op, read=False)
        out: list[tuple[JobRow, bool]] = []
        for job in jobs:
            row = created.get(job.job_hash)
            if row is not None:
                out.append((row, first[job.job_hash] is job))
            else:
                out.append((existing[job.job_hash], False))
        return out

    async def requeue(
        self, job_id: str, from_status: Sequence[str], now: int, not_before: int
    ) -> JobRow | None:
        params = {"from_status": list(from_status), "id": job_id, "now": now}
        return await self._write_job(REQUEUE, {**params, "not_before": not_before})

    async def cancel(
        self, job_id: str, from_status: Sequence[str], now: int, reason: str
    ) -> JobRow | None:
        params = {"from_status": list(from_status), "id": job_id, "now": now}
        return await self._write_job(CANCEL, {**params, "reason": reason})

    async def expire(self, job_id: str, now: int) -> bool:
        return await self._write_count(q.EXPIRE, {"id": job_id, "now": now}) > 0

    async def claim(self, job_id: str, runner_id: str, now: int) -> JobRow | None:
        return await self._write_job(q.CLAIM, {"id": job_id, "runner_id": runner_id, "now": now})

    async def claim_next(self, runner_id: str, job_types: Sequence[str], now: int) -> JobRow | None:
        jobs = await self.claim_batch(runner_id, job_types, now, 1)
        return jobs[0] if jobs else None

    async def claim_batch(
        self, runner_id: str, job_types: Sequence[str], now: int, limit: int
    ) -> list[JobRow]:
        if not job_types or limit < 1:
            return []
        params = {"job_types": list(job_types), "runner_id": runner_id, "now": now}
        rows = await self._rows(CLAIM_BATCH, {**params, "limit": limit}, read=False)
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
            return await self._write_count(HEARTBEAT_APPEND, params) > 0
        params["console_output"] = console_output
        return await self._write_count(HEARTBEAT, params) > 0

    async def complete(
        self, job_id: str, runner_id: str, now: int, output_data: str, console_output: str | None
    ) -> bool:
        return await self._completions((job_id, runner_id, now, output_data, console_output))

    async def _complete_jobs(self, calls: Sequence[Completion]) -> list[bool]:
        """Each job's first completion in the batch is the one tried; a second one
        for the same job finds it done, as it would a moment later."""
        first: dict[str, Completion] = {}
        for call in calls:
            first.setdefault(call[0], call)
        columns = [list(column) for column in zip(*first.values(), strict=True)]
        rows = await self._run(lambda c: c.fetch(COMPLETE_JOBS, *columns), read=False)
        done = {row[0] for row in rows}
        return [call[0] in done and first[call[0]] is call for call in calls]

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
        return await self._write_count(FAIL, params) > 0

    async def retry_stale(self, job: JobRow, now: int, not_before: int, note: str) -> bool:
        params = {
            "id": job.id,
            "runner_id": job.claimed_by,
            "last_heartbeat": job.last_heartbeat,
            "now": now,
            "not_before": not_before,
            "note": note,
        }
        return await self._write_count(RETRY_STALE, params) > 0

    async def fail_stale(self, job: JobRow, now: int, error_message: str) -> bool:
        params = {
            "id": job.id,
            "runner_id": job.claimed_by,
            "last_heartbeat": job.last_heartbeat,
            "now": now,
            "error_message": error_message,
        }
        return await self._write_count(FAIL_STALE, params) > 0

    async def delete_jobs(self, job_ids: Sequence[str]) -> list[str]:
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return []
        rows = await self._rows(q.DELETE_JOBS_PG, {"ids": ids}, read=False)
        gone = {row[0] for row in rows}
        return [job_id for job_id in ids if job_id in gone]  # in the order asked, as SQLite

    # --- runners ------------------------------------------------------------------
    async def insert_runner(self, runner: RunnerRow) -> None:
        params = {
            "id": runner.id,
            "name": runner.name,
            "capabilities": runner.capabilities,
            "registered_at": runner.registered_at,
            "last_seen": runner.last_seen,
            "owner": runner.owner,
            "secret_sha256": runner.secret_sha256,
        }
        await self._write_count(q.INSERT_RUNNER, params)

    async def get_runner(self, runner_id: str) -> RunnerRow | None:
        rows = await self._rows(q.GET_RUNNER, {"id": runner_id})
        return RunnerRow(*rows[0]) if rows else None

    async def touch_runner(self, runner_id: str, now: int) -> bool:
        return await self._write_count(q.TOUCH_RUNNER, {"id": runner_id, "now": now}) > 0

    async def probe_write(self) -> None:
        await self._write_count(q.PROBE_WRITE, {})

    async def list_runners(self, limit: int = 1000, offset: int = 0) -> list[RunnerRow]:
        params = {"limit": limit, "offset": offset}
        return [RunnerRow(*row) for row in await self._rows(q.LIST_RUNNERS, params)]

    async def list_runners_after(
        self, limit: int, offset: int, after: tuple[int, str]
    ) -> list[RunnerRow]:
        last_seen, runner_id = after
        params = {"limit": limit, "offset": offset, "last_seen": last_seen, "id": runner_id}
        return [RunnerRow(*row) for row in await self._rows(q.LIST_RUNNERS_AFTER, params)]

    async def count_runners(self, active_since: int) -> tuple[int, int]:
        total, active = (await self._rows(q.COUNT_RUNNERS, {"active_since": active_since}))[0]
        return int(total), int(active)

    # --- imports --------------------------------------------------------------------
    async def import_jobs(self, rows: Sequence[JobRow]) -> int:
        return await self._import(q.IMPORT_JOBS_PG, JOB_COLUMNS, rows)

    async def import_runners(self, rows: Sequence[RunnerRow]) -> int:
        return await self._import(q.IMPORT_RUNNERS_PG, RUNNER_COLUMNS, rows)

    async def _import(
        self, sql: str, columns: tuple[str, ...], rows: Sequence[JobRow] | Sequence[RunnerRow]
    ) -> int:
        """The batch as one statement (so one transaction): one array per column."""
        if not rows:
            return 0
        arrays = {name: [getattr(row, name) for row in rows] for name in columns}
        return await self._write_count(sql, arrays)

    # --- retention ------------------------------------------------------------------
    async def delete_finished(self, status: str, before: int, limit: int) -> list[str]:
        params = {"status": status, "before": before, "limit": limit}
        return [row[0] for row in await self._rows(DELETE_FINISHED, params, read=False)]

    async def count_finished(self, status: str, before: int) -> int:
        rows = await self._rows(q.COUNT_FINISHED, {"status": status, "before": before})
        return int(rows[0][0])

    async def clear_consoles(
        self, status: str, since: int, before: int, limit: int
    ) -> list[tuple[str, int]]:
        params = {"status": status, "since": since, "before": before, "limit": limit}
        rows = await self._rows(CLEAR_CONSOLES, params, read=False)
        return [(row[0], int(row[1])) for row in rows]

    async def count_consoles(self, status: str, since: int, before: int) -> int:
        params = {"status": status, "since": since, "before": before}
        return int((await self._rows(q.COUNT_CONSOLES, params))[0][0])

    async def job_states(self, job_ids: Sequence[str]) -> dict[str, tuple[str, int]]:
        if not job_ids:
            return {}
        rows = await self._rows(JOB_STATES, {"ids": list(job_ids)})
        return {job_id: (status, int(updated_at)) for job_id, status, updated_at in rows}

    async def delete_idle_runners(self, before: int, limit: int) -> list[str]:
        params = {"before": before, "limit": limit}
        return [row[0] for row in await self._rows(DELETE_IDLE_RUNNERS, params, read=False)]

    async def count_idle_runners(self, before: int) -> int:
        return int((await self._rows(q.COUNT_IDLE_RUNNERS, {"before": before}))[0][0])

    # --- stored API keys ----------------------------------------------------------------
    async def insert_api_key(self, key: ApiKeyRow) -> None:
        params = {name: getattr(key, name) for name in API_KEY_COLUMNS}
        await self._write_count(q.INSERT_API_KEY, params)

    async def get_api_key(self, key_id: str) -> ApiKeyRow | None:
        rows = await self._rows(q.GET_API_KEY, {"id": key_id})
        return ApiKeyRow(*rows[0]) if rows else None

    async def api_key_by_hash(self, secret_sha256: str) -> ApiKeyRow | None:
        rows = await self._rows(q.API_KEY_BY_HASH, {"secret_sha256": secret_sha256})
        return ApiKeyRow(*rows[0]) if rows else None

    async def list_api_keys(self) -> list[ApiKeyRow]:
        return [ApiKeyRow(*row) for row in await self._rows(q.LIST_API_KEYS, {})]

    async def revoke_api_key(self, key_id: str, now: int) -> ApiKeyRow | None:
        rows = await self._rows(q.REVOKE_API_KEY, {"id": key_id, "now": now}, read=False)
        return ApiKeyRow(*rows[0]) if rows else None

    async def touch_api_key(self, key_id: str, now: int) -> bool:
        return await self._write_count(q.TOUCH_API_KEY, {"id": key_id, "now": now}) > 0

    # --- metrics ----------------------------------------------------------------------
    async def count_jobs_by_status_and_type(self) -> dict[tuple[str, str], int]:
        rows = await self._rows(q.COUNT_JOBS_BY_STATUS_AND_TYPE, {})
        return {(status, job_type): int(n) for status, job_type, n in rows}
