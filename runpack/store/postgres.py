"""PostgreSQL store: an asyncpg pool running the shared named statements.

Each call is one statement on a pooled connection (autocommit), so every
transition is atomic on its own, and claims use ``FOR UPDATE SKIP LOCKED``: any
number of server instances can share one database. The methods are
:class:`~runpack.store.sql.SqlStore`'s; this module runs its statements on the pool,
and sends the calls every job makes in batches (:mod:`runpack.store.pg_batch`).

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
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import asyncpg

from runpack.dsn import redact
from runpack.errors import StoreError, StoreUnavailable
from runpack.store import pg_batch
from runpack.store.base import JobRow, NewJob
from runpack.store.batching import Batcher
from runpack.store.dialect import Statement
from runpack.store.migrations import apply_postgres
from runpack.store.sql import Row, SqlStore

log = logging.getLogger(__name__)
T = TypeVar("T")

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


def describe(exc: BaseException) -> str:
    """A one-line account of a driver error for ``StoreError.details``."""
    if isinstance(exc, TimeoutError) and not str(exc):
        return "TimeoutError: no answer in time (server unreachable or busy, or pool exhausted)"
    sqlstate = getattr(exc, "sqlstate", None)
    code = f" [{sqlstate}]" if isinstance(sqlstate, str) else ""
    return f"{type(exc).__name__}{code}: {exc}"


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


def _status_count(status: str) -> int:
    """Rows affected, from a command tag such as ``UPDATE 1``."""
    return int(status.rsplit(" ", 1)[-1])


def _args(stmt: Statement, params: Mapping[str, Any]) -> list[Any]:
    return [params[name] for name in stmt.order]


class PostgresStore(SqlStore):
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

    async def _read_one(self, stmt: Statement, params: Mapping[str, Any]) -> Row | None:
        args = _args(stmt, params)
        return await self._run(lambda c: c.fetchrow(stmt.postgres, *args), read=True)

    async def _read(self, stmt: Statement, params: Mapping[str, Any]) -> list[Row]:
        args = _args(stmt, params)
        return await self._run(lambda c: c.fetch(stmt.postgres, *args), read=True)

    async def _write(self, stmt: Statement, params: Mapping[str, Any]) -> list[Row]:
        args = _args(stmt, params)
        return await self._run(lambda c: c.fetch(stmt.postgres, *args), read=False)

    async def _write_count(self, stmt: Statement, params: Mapping[str, Any]) -> int:
        args = _args(stmt, params)
        status = await self._run(lambda c: c.execute(stmt.postgres, *args), read=False)
        return _status_count(status)

    async def _write_many(self, stmt: Statement, rows: Sequence[Mapping[str, Any]]) -> int:
        """The rows as one statement (so one transaction): one array per column."""
        return await self._write_count(
            stmt, {name: [row[name] for row in rows] for name in stmt.order}
        )

    # --- batched: the calls every job makes ----------------------------------------
    async def get_job_by_hash(self, job_hash: str) -> JobRow | None:
        return await self._by_hash(job_hash)

    async def _jobs_by_hash(self, hashes: Sequence[str]) -> list[JobRow | None]:
        return await self._run(lambda c: pg_batch.jobs_by_hash(c, hashes), read=True)

    async def insert_job(self, job: NewJob) -> tuple[JobRow, bool]:
        return await self._inserts(job)

    async def _insert_jobs(self, jobs: Sequence[NewJob]) -> list[tuple[JobRow, bool]]:
        return await self._run(lambda c: pg_batch.insert_jobs(c, jobs), read=False)

    async def complete(
        self, job_id: str, runner_id: str, now: int, output_data: str, console_output: str | None
    ) -> bool:
        return await self._completions((job_id, runner_id, now, output_data, console_output))

    async def _complete_jobs(self, calls: Sequence[pg_batch.Completion]) -> list[bool]:
        return await self._run(lambda c: pg_batch.complete_jobs(c, calls), read=False)
