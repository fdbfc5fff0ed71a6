"""SQLite store: group commit on the event loop, reads that never wait for writes.

Writes run on the event loop thread itself, on the one writing connection: the
first write of a loop iteration opens a transaction, every write made before
the next iteration joins it (each in a savepoint, so a failing one undoes only
itself), and one COMMIT at the next iteration makes them all durable before any
caller hears back. Concurrent requests share a commit, and no write pays for a
trip to another thread. In WAL mode with ``synchronous=NORMAL`` a commit is a
write to the log, not a flush; a background thread checkpoints the log so the
event loop never does.

Point reads (a job by id or hash, a runner) use a second connection on the loop:
they see the last commit and never wait for the writer. Scans (lists, counts,
the sweeper) go to an aiosqlite connection so a large table cannot stall the loop.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from runpack.errors import StoreError
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
from runpack.store.migrations import apply_sqlite

log = logging.getLogger(__name__)
T = TypeVar("T")
Op = Callable[[sqlite3.Connection], Any]
PRAGMAS = (
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA busy_timeout = 5000",
    "PRAGMA foreign_keys = ON",
)
#: Seconds between checkpoints of the write-ahead log (off the event loop).
CHECKPOINT_INTERVAL = 1.0


def _job(row: Sequence[Any] | None) -> JobRow | None:
    return JobRow(*row) if row is not None else None


def _store_error(exc: Exception) -> StoreError:
    log.error("SQLite failed: %s", exc)
    return StoreError(details=str(exc))


class _Checkpointer(threading.Thread):
    """Copies the write-ahead log into the database file, so commits stay cheap."""

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        super().__init__(name="runpack-sqlite-checkpoint", daemon=True)
        self._connect = connect
        self._halt = threading.Event()

    def run(self) -> None:
        conn = self._connect()
        try:
            while not self._halt.wait(CHECKPOINT_INTERVAL):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:  # busy or full: the next round tries again
                    log.warning("SQLite checkpoint failed: %s", exc)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.warning("SQLite final checkpoint failed: %s", exc)
        finally:
            conn.close()

    def stop(self) -> None:
        self._halt.set()


class SqliteStore:
    def __init__(self, path: str) -> None:
        if path in (":memory:", ""):
            # A private in-memory database shared by the writer and the reader.
            self._target = f"file:runpack-{uuid.uuid4().hex}?mode=memory&cache=shared"
            self._uri = True
        else:
            self._target = str(Path(path))
            self._uri = False
        self.path = path
        self._conn: sqlite3.Connection | None = None  # writes, on the loop
        self._rconn: sqlite3.Connection | None = None  # point reads, on the loop
        self._reader: aiosqlite.Connection | None = None  # scans, in its thread
        self._keeper: sqlite3.Connection | None = None
        self._checkpointer: _Checkpointer | None = None
        self._batch: list[tuple[asyncio.Future[Any], Any]] = []
        #: A transaction is open on the writing connection; it ends at the next loop turn.
        self._open = False
        #: Why the open transaction must be rolled back rather than committed.
        self._doomed: StoreError | None = None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._target, uri=self._uri, isolation_level=None, check_same_thread=False
        )
        for pragma in PRAGMAS:
            conn.execute(pragma)
        return conn

    async def open(self) -> None:
        if self._uri:  # keeps the shared in-memory database alive
            self._keeper = sqlite3.connect(self._target, uri=True, check_same_thread=False)
        else:
            try:
                Path(self._target).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    details=f"cannot create the folder for {self.path}: {exc}"
                ) from exc
        try:
            self._conn = self._connect()
            self._conn.execute("PRAGMA wal_autocheckpoint = 0")  # the checkpointer's job
            await self._write(apply_sqlite)
            self._rconn = self._connect()
            self._reader = await aiosqlite.connect(
                self._target, uri=self._uri, isolation_level=None
            )
            for pragma in PRAGMAS:
                await self._reader.execute(pragma)
        except sqlite3.Error as exc:
            await self.close()
            raise StoreError(details=f"cannot open {self.path}: {exc}") from exc
        self._checkpointer = _Checkpointer(self._connect)
        self._checkpointer.start()

    async def close(self) -> None:
        if self._open:
            self._commit()
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
        for conn in (self._rconn, self._conn):
            if conn is not None:
                conn.close()
        self._rconn = self._conn = None
        if self._checkpointer is not None:
            self._checkpointer.stop()
            await asyncio.to_thread(self._checkpointer.join)
            self._checkpointer = None
        if self._keeper is not None:
            self._keeper.close()
            self._keeper = None

    # --- plumbing -------------------------------------------------------------
    async def _write(self, op: Callable[[sqlite3.Connection], T], savepoint: bool = True) -> T:
        """Run ``op`` now in the open transaction; return once it is committed.

        ``op`` runs in a savepoint, so that if it fails, what it wrote is undone and
        the other writes of the transaction stand. An ``op`` that makes one change
        (a single INSERT, UPDATE or DELETE, reads aside) passes ``savepoint=False``:
        SQLite undoes a failed statement by itself, and two statements per write
        are saved. Whatever ``op`` raises, the transaction ends at the next turn of
        the loop: committed, or rolled back if a failed ``op`` may have left a change
        that no savepoint can undo (every write of that transaction then fails).
        """
        conn = self._conn
        if conn is None:
            raise StoreError(details="store is closed")
        if not self._open:
            try:
                if conn.in_transaction:  # left by a failed rollback: nothing of it stands
                    conn.execute("ROLLBACK")
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise _store_error(exc) from exc
            self._open = True
            asyncio.get_running_loop().call_soon(self._commit)
        if savepoint:
            conn.execute("SAVEPOINT op")
        changes = conn.total_changes
        try:
            value = op(conn)
        except Exception as exc:
            if savepoint:
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
            elif not isinstance(exc, sqlite3.Error) and conn.total_changes != changes:
                # It wrote, then failed in Python: only the whole transaction can go.
                self._doomed = _store_error(exc)
            if isinstance(exc, sqlite3.Error):
                raise _store_error(exc) from exc
            raise
        if savepoint:
            conn.execute("RELEASE op")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._batch.append((fut, value))
        return await fut  # type: ignore[no-any-return]

    def _commit(self) -> None:
        """End the open transaction (even if no write of it succeeded) and answer its writes."""
        batch, self._batch = self._batch, []
        failure, self._doomed = self._doomed, None
        conn = self._conn
        if not self._open or conn is None:
            return
        self._open = False
        try:
            if failure is None:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            failure = _store_error(exc)
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error as exc:
                log.error("SQLite rollback failed: %s", exc)
        for fut, value in batch:
            if fut.done():
                continue
            if failure is not None:
                fut.set_exception(failure)
            else:
                fut.set_result(value)

    def _get(self, sql: str, params: dict[str, Any]) -> Any:
        """One row from the last commit, read on the loop (indexed lookups only)."""
        if self._rconn is None:
            raise StoreError(details="store is closed")
        try:
            return self._rconn.execute(sql, params).fetchone()
        except sqlite3.Error as exc:
            raise _store_error(exc) from exc

    async def _read(self, sql: str, params: dict[str, Any]) -> list[Any]:
        if self._reader is None:
            raise StoreError(details="store is closed")
        try:
            return list(await self._reader.execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            raise StoreError(details=str(exc)) from exc

    async def _read_jobs(self, sql: str, params: dict[str, Any]) -> list[JobRow]:
        return [JobRow(*row) for row in await self._read(sql, params)]

    async def _write_count(self, sql: str, params: dict[str, Any]) -> int:
        return await self._write(lambda c: c.execute(sql, params).rowcount, savepoint=False)

    async def _write_job(self, sql: str, params: dict[str, Any]) -> JobRow | None:
        return await self._write(lambda c: _job(c.execute(sql, params).fetchone()), savepoint=False)

    # --- jobs: reads ------------------------------------------------------------
    async def get_job(self, job_id: str) -> JobRow | None:
        return _job(self._get(q.GET_JOB, {"id": job_id}))

    async def get_job_by_hash(self, job_hash: str) -> JobRow | None:
        return _job(self._get(q.GET_JOB_BY_HASH, {"job_hash": job_hash}))

    async def available_jobs(self, job_types: Sequence[str], now: int, limit: int) -> list[JobRow]:
        if not job_types:
            return []
        in_sql, params = q.in_list(list(job_types), "t")
        sql = q.AVAILABLE.format(of_types=f"IN {in_sql}", pending_index=q.SQLITE_PENDING_INDEX)
        return await self._read_jobs(sql, {**params, "now": now, "limit": limit})

    async def list_jobs(
        self, status: str | None, job_type: str | None, limit: int, offset: int
    ) -> list[JobRow]:
        params = {"status": status, "job_type": job_type, "limit": limit, "offset": offset}
        return await self._read_jobs(q.LIST_JOBS, params)

    async def count_jobs(self) -> dict[str, int]:
        return {status: n for status, n in await self._read(q.COUNT_JOBS, {})}

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
        return {status: n for status, n in await self._read(q.JOB_COUNTS, {})}

    async def fold_job_counts(self) -> None:
        return None

    async def jobs_of_runner(self, runner_id: str, limit: int) -> list[JobRow]:
        return await self._read_jobs(q.JOBS_OF_RUNNER, {"runner_id": runner_id, "limit": limit})

    async def stale_jobs(self, cutoff: int, limit: int) -> list[JobRow]:
        return await self._read_jobs(q.STALE, {"cutoff": cutoff, "limit": limit})

    # --- jobs: transitions --------------------------------------------------------
    async def insert_job(self, job: NewJob) -> tuple[JobRow, bool]:
        # A committed job with this hash is found on the loop, with no write.
        existing = _job(self._get(q.GET_JOB_BY_HASH, {"job_hash": job.job_hash}))
        if existing is not None:
            return existing, False
        params = {
            "id": job.id,
            "job_hash": job.job_hash,
            "job_type": job.job_type,
            "input_params": job.input_params,
            "priority": job.priority,
            "max_attempts": job.max_attempts,
            "timeout": job.timeout,
            "now": job.now,
            "runner_id": job.runner_id,
        }

        def op(conn: sqlite3.Connection) -> tuple[JobRow, bool]:
            row = conn.execute(q.INSERT_JOB, params).fetchone()
            if row is not None:
                return JobRow(*row), True
            existing = conn.execute(q.GET_JOB_BY_HASH, {"job_hash": job.job_hash}).fetchone()
            return JobRow(*existing), False

        return await self._write(op, savepoint=False)  # the one change is the INSERT

    async def requeue(
        self, job_id: str, from_status: Sequence[str], now: int, not_before: int
    ) -> JobRow | None:
        in_sql, params = q.in_list(list(from_status), "s")
        sql = q.REQUEUE.format(from_status=in_sql)
        return await self._write_job(
            sql, {**params, "id": job_id, "now": now, "not_before": not_before}
        )

    async def cancel(
        self, job_id: str, from_status: Sequence[str], now: int, reason: str
    ) -> JobRow | None:
        in_sql, params = q.in_list(list(from_status), "s")
        sql = q.CANCEL.format(from_status=in_sql)
        return await self._write_job(sql, {**params, "id": job_id, "now": now, "reason": reason})

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
        in_sql, params = q.in_list(list(job_types), "t")
        sql = q.CLAIM_BATCH.format(picked=q.SQLITE_PICKED).format(
            of_types=f"IN {in_sql}", lock="", pending_index=q.SQLITE_PENDING_INDEX
        )
        args = {**params, "runner_id": runner_id, "now": now, "limit": limit}
        rows = await self._write(lambda c: c.execute(sql, args).fetchall(), savepoint=False)
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
        ids = list(job_ids)

        def op(conn: sqlite3.Connection) -> list[str]:
            gone = []
            for job_id in ids:
                row = conn.execute(q.DELETE_JOB, {"id": job_id}).fetchone()
                if row is not None:
                    gone.append(row[0])
            return gone

        return await self._write(op)

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
        row = self._get(q.GET_RUNNER, {"id": runner_id})
        return RunnerRow(*row) if row is not None else None

    async def touch_runner(self, runner_id: str, now: int) -> bool:
        return await self._write_count(q.TOUCH_RUNNER, {"id": runner_id, "now": now}) > 0

    async def probe_write(self) -> None:
        await self._write_count(q.PROBE_WRITE, {})

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

    # --- imports --------------------------------------------------------------------
    async def import_jobs(self, rows: Sequence[JobRow]) -> int:
        params = [{name: getattr(row, name) for name in JOB_COLUMNS} for row in rows]
        return await self._write_many(q.IMPORT_JOB, params)

    async def import_runners(self, rows: Sequence[RunnerRow]) -> int:
        params = [{name: getattr(row, name) for name in RUNNER_COLUMNS} for row in rows]
        return await self._write_many(q.IMPORT_RUNNER, params)

    async def _write_many(self, sql: str, params: list[dict[str, Any]]) -> int:
        """The whole batch as one write: all of it or none of it; rows inserted."""
        if not params:
            return 0
        return await self._write(lambda c: c.executemany(sql, params).rowcount)

    # --- stored API keys ----------------------------------------------------------------
    async def insert_api_key(self, key: ApiKeyRow) -> None:
        params = {name: getattr(key, name) for name in API_KEY_COLUMNS}
        await self._write_count(q.INSERT_API_KEY, params)

    async def get_api_key(self, key_id: str) -> ApiKeyRow | None:
        return _api_key(self._get(q.GET_API_KEY, {"id": key_id}))

    async def api_key_by_hash(self, secret_sha256: str) -> ApiKeyRow | None:
        return _api_key(self._get(q.API_KEY_BY_HASH, {"secret_sha256": secret_sha256}))

    async def list_api_keys(self) -> list[ApiKeyRow]:
        return [ApiKeyRow(*row) for row in await self._read(q.LIST_API_KEYS, {})]

    async def revoke_api_key(self, key_id: str, now: int) -> ApiKeyRow | None:
        params = {"id": key_id, "now": now}
        return await self._write(lambda c: _api_key(c.execute(q.REVOKE_API_KEY, params).fetchone()))

    async def touch_api_key(self, key_id: str, now: int) -> bool:
        return await self._write_count(q.TOUCH_API_KEY, {"id": key_id, "now": now}) > 0

    # --- retention ------------------------------------------------------------------
    async def delete_finished(self, status: str, before: int, limit: int) -> list[str]:
        params = {"status": status, "before": before, "limit": limit}
        sql = q.DELETE_FINISHED.format(lock="")
        return await self._write(lambda c: [row[0] for row in c.execute(sql, params)])

    async def count_finished(self, status: str, before: int) -> int:
        rows = await self._read(q.COUNT_FINISHED, {"status": status, "before": before})
        return int(rows[0][0])

    async def clear_consoles(
        self, status: str, since: int, before: int, limit: int
    ) -> list[tuple[str, int]]:
        params = {"status": status, "since": since, "before": before, "limit": limit}
        sql = q.CLEAR_CONSOLES.format(lock="")
        return await self._write(lambda c: [(r[0], r[1]) for r in c.execute(sql, params)])

    async def count_consoles(self, status: str, since: int, before: int) -> int:
        params = {"status": status, "since": since, "before": before}
        return int((await self._read(q.COUNT_CONSOLES, params))[0][0])

    async def job_states(self, job_ids: Sequence[str]) -> dict[str, tuple[str, int]]:
        if not job_ids:
            return {}
        in_sql, params = q.in_list(list(job_ids), "i")
        rows = await self._read(q.JOB_STATES.format(ids=in_sql), params)
        return {job_id: (status, int(updated_at)) for job_id, status, updated_at in rows}

    async def delete_idle_runners(self, before: int, limit: int) -> list[str]:
        params = {"before": before, "limit": limit}
        sql = q.DELETE_IDLE_RUNNERS.format(lock="")
        return await self._write(lambda c: [row[0] for row in c.execute(sql, params)])

    async def count_idle_runners(self, before: int) -> int:
        return int((await self._read(q.COUNT_IDLE_RUNNERS, {"before": before}))[0][0])

    # --- metrics ----------------------------------------------------------------------
    async def count_jobs_by_status_and_type(self) -> dict[tuple[str, str], int]:
        rows = await self._read(q.COUNT_JOBS_BY_STATUS_AND_TYPE, {})
        return {(status, job_type): int(n) for status, job_type, n in rows}


def _api_key(row: Sequence[Any] | None) -> ApiKeyRow | None:
    return ApiKeyRow(*row) if row is not None else None
