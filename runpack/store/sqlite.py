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

Another process on the same file (``runpack keys``, ``runpack gc``) may hold the
write lock. The writing connection never waits for it on the loop (its
``busy_timeout`` is 0): while the lock is taken, writes queue in order and the loop
tries again on a timer, with backoff, for up to :attr:`SqliteStore.lock_wait`
seconds; then they fail with :class:`StoreUnavailable` (503). In WAL mode the
COMMIT of a transaction begun IMMEDIATE holds the lock already and never waits.

The methods are :class:`~runpack.store.sql.SqlStore`'s; this module provides the
primitives they run on, and the insert of a job.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from runpack.errors import StoreError, StoreUnavailable
from runpack.image_lists import image_allowed
from runpack.store import queries as q
from runpack.store.base import JobRow, NewJob
from runpack.store.dialect import Statement
from runpack.store.migrations import apply_sqlite
from runpack.store.sql import Row, SqlStore

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
#: Seconds writes wait for another process's write lock before they fail.
LOCK_WAIT = 5.0
#: The first and the longest pause between tries for the write lock (seconds).
LOCK_RETRY = (0.001, 0.02)


def _bind(stmt: Statement, params: Mapping[str, Any]) -> Mapping[str, Any]:
    """The parameters as SQLite binds them: list parameters as JSON text."""
    if not stmt.arrays:
        return params
    return {**params, **{name: json.dumps(list(params[name])) for name in stmt.arrays}}


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


class SqliteStore(SqlStore):
    #: Seconds writes wait for another process's write lock (then StoreUnavailable).
    lock_wait = LOCK_WAIT

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
        #: Writes waiting for another process to release the write lock, in order.
        self._queued: list[tuple[Op, bool, asyncio.Future[Any]]] = []
        self._lock_waiter: asyncio.Task[None] | None = None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._target, uri=self._uri, isolation_level=None, check_same_thread=False
        )
        for pragma in PRAGMAS:
            conn.execute(pragma)
        # The runner's image matcher, for the claims of runners with an image list.
        conn.create_function("image_allowed", 2, image_allowed, deterministic=True)
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
            self._conn.execute("PRAGMA busy_timeout = 0")  # never wait on the loop
            await self._run(apply_sqlite)
            self._rconn = self._connect()
            self._reader = await aiosqlite.connect(
                self._target, uri=self._uri, isolation_level=None
            )
            for pragma in PRAGMAS:
                await self._reader.execute(pragma)
        except sqlite3.Error as exc:
            await self.close()
            raise StoreError(details=f"cannot open {self.path}: {exc}") from exc
        except StoreError:
            await self.close()
            raise
        self._checkpointer = _Checkpointer(self._connect)
        self._checkpointer.start()

    async def close(self) -> None:
        if self._lock_waiter is not None:  # its queued writes fail: the store is closed
            self._lock_waiter.cancel()
            await asyncio.wait([self._lock_waiter])
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

    # --- group commit -----------------------------------------------------------
    async def _run(self, op: Callable[[sqlite3.Connection], T], savepoint: bool = True) -> T:
        """Run ``op`` in the open transaction; return its value once it is committed.

        ``op`` runs at once, in this turn of the loop, unless another process holds
        the write lock: it then waits in line (see :meth:`_wait_for_lock`).

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
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        if self._open or (self._lock_waiter is None and self._begin(conn)):
            self._apply(conn, op, savepoint, done)
        else:
            self._queued.append((op, savepoint, done))
            if self._lock_waiter is None:
                self._lock_waiter = asyncio.get_running_loop().create_task(
                    self._wait_for_lock(), name="runpack-sqlite-lock-wait"
                )
        return await done

    def _begin(self, conn: sqlite3.Connection) -> bool:
        """Open the transaction that this turn's writes join; False if another
        process holds the write lock."""
        try:
            if conn.in_transaction:  # left by a failed rollback: nothing of it stands
                conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY:
                return False
            raise _store_error(exc) from exc
        self._open = True
        asyncio.get_running_loop().call_soon(self._commit)
        return True

    async def _wait_for_lock(self) -> None:
        """Try for the write lock on a timer, then run the queued writes in order.

        The pauses double from ``LOCK_RETRY[0]`` up to ``LOCK_RETRY[1]`` (as SQLite's
        own busy handler would sleep, but the loop goes on meanwhile). Past
        ``lock_wait`` seconds, or when the store closes, every queued write fails.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.lock_wait
        pause = LOCK_RETRY[0]
        failure: StoreError | None = StoreError(details="store is closed")
        try:
            while self._conn is not None:
                await asyncio.sleep(pause)
                if self._conn is None:
                    break
                try:
                    if self._begin(self._conn):
                        failure = None
                        break
                except StoreError as exc:
                    failure = exc
                    break
                if loop.time() >= deadline:
                    details = f"the database is locked by another process ({self.lock_wait:g} s)"
                    log.error("SQLite writes failed: %s", details)
                    failure = StoreUnavailable(details=details)
                    break
                pause = min(pause * 2, LOCK_RETRY[1])
        finally:
            self._lock_waiter = None
            queued, self._queued = self._queued, []
            for op, savepoint, done in queued:
                if failure is None and self._conn is not None:
                    self._apply(self._conn, op, savepoint, done)
                elif not done.done():
                    done.set_exception(failure or StoreError(details="store is closed"))

    def _apply(
        self, conn: sqlite3.Connection, op: Op, savepoint: bool, done: asyncio.Future[Any]
    ) -> None:
        """Run ``op`` in the open transaction; ``done`` gets its value at the commit,
        or its error now."""
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
            error: BaseException = exc
            if isinstance(exc, sqlite3.Error):
                error = _store_error(exc)
                error.__cause__ = exc
            if not done.done():
                done.set_exception(error)
            return
        if savepoint:
            conn.execute("RELEASE op")
        self._batch.append((done, value))

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

    # --- the primitives of SqlStore ---------------------------------------------------
    def _get(self, sql: str, params: Mapping[str, Any]) -> Row | None:
        """One row from the last commit, read on the loop (indexed lookups only)."""
        if self._rconn is None:
            raise StoreError(details="store is closed")
        try:
            return self._rconn.execute(sql, params).fetchone()
        except sqlite3.Error as exc:
            raise _store_error(exc) from exc

    async def _read_one(self, stmt: Statement, params: Mapping[str, Any]) -> Row | None:
        return self._get(stmt.sqlite, _bind(stmt, params))

    async def _read(self, stmt: Statement, params: Mapping[str, Any]) -> list[Row]:
        if self._reader is None:
            raise StoreError(details="store is closed")
        try:
            return list(await self._reader.execute_fetchall(stmt.sqlite, _bind(stmt, params)))
        except sqlite3.Error as exc:
            raise StoreError(details=str(exc)) from exc

    async def _write(self, stmt: Statement, params: Mapping[str, Any]) -> list[Row]:
        sql, bound = stmt.sqlite, _bind(stmt, params)
        return await self._run(lambda c: c.execute(sql, bound).fetchall(), savepoint=False)

    async def _write_count(self, stmt: Statement, params: Mapping[str, Any]) -> int:
        sql, bound = stmt.sqlite, _bind(stmt, params)
        return await self._run(lambda c: c.execute(sql, bound).rowcount, savepoint=False)

    async def _write_many(self, stmt: Statement, rows: Sequence[Mapping[str, Any]]) -> int:
        """All of the rows or none of them."""
        sql = stmt.sqlite
        return await self._run(lambda c: c.executemany(sql, rows).rowcount)

    async def fold_job_counts(self) -> None:
        """Nothing to fold: SQLite's triggers update the counts themselves."""

    async def insert_job(self, job: NewJob) -> tuple[JobRow, bool]:
        # A committed job with this hash is found on the loop, with no write.
        existing = self._get(q.GET_JOB_BY_HASH.sqlite, {"job_hash": job.job_hash})
        if existing is not None:
            return JobRow(*existing), False
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
            row = conn.execute(q.INSERT_JOB.sqlite, params).fetchone()
            if row is not None:
                return JobRow(*row), True
            by_hash = {"job_hash": job.job_hash}  # taken in this transaction, or since
            return JobRow(*conn.execute(q.GET_JOB_BY_HASH.sqlite, by_hash).fetchone()), False

        return await self._run(op, savepoint=False)  # the one change is the INSERT
