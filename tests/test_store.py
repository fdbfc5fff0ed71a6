"""The Store contract, run against SQLite (a temp file) and PostgreSQL (a fresh database).

Tests drive the Store API directly. Engine-specific tests (pool reconnects,
migrations racing, connection errors) follow at the end.
"""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from runpack.errors import StoreError
from runpack.store import migrations, open_store
from runpack.store.base import JobRow, NewJob, RunnerRow, Store
from runpack.store.migrations import apply_postgres, apply_sqlite, latest_version
from runpack.store.postgres import PostgresStore
from runpack.store.sqlite import SqliteStore
from tests import pg
from tests.pg import fresh_database, pg_dsn_fixture  # noqa: F401

T0 = 1_700_000_000_000
ENGINES = ["sqlite", "postgres"]
#: What a new database records: schema.sql names every version it includes (the first
#: and each migration's).
ALL_VERSIONS = [1, *(version for version, _, _ in migrations.migrations())]


@asynccontextmanager
async def opened(engine: str, tmp_path: Path) -> AsyncIterator[Store]:
    """An open store of that engine on a fresh database."""
    if engine == "sqlite":
        store: Store = SqliteStore(str(tmp_path / "runpack.db"))
        await store.open()
        try:
            yield store
        finally:
            await store.close()
        return
    async with fresh_database() as dsn:
        store = PostgresStore(dsn)
        await store.open()
        try:
            yield store
        finally:
            await store.close()


@pytest.fixture(params=ENGINES, name="store")
async def store_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """An open store on a fresh database, of each engine (other test modules import it)."""
    async with opened(request.param, tmp_path) as s:
        yield s


def twin(store: Store) -> Store:
    """A second, unopened store on the same database (another server instance)."""
    if isinstance(store, SqliteStore):
        return SqliteStore(store.path)
    assert isinstance(store, PostgresStore)
    return PostgresStore(store.dsn)


async def schema_versions(store: Store) -> list[int]:
    if isinstance(store, SqliteStore):
        with sqlite3.connect(store.path) as conn:
            rows = conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
        return [int(v) for (v,) in rows]
    assert isinstance(store, PostgresStore)
    conn = await asyncpg.connect(store.dsn)
    try:
        return [r[0] for r in await conn.fetch("SELECT version FROM schema_version ORDER BY 1")]
    finally:
        await conn.close()


def new_job(
    job_hash: str | None = None,
    job_type: str = "hello_world",
    *,
    priority: int = 0,
    now: int = T0,
    job_id: str | None = None,
    timeout: int | None = None,
) -> NewJob:
    return NewJob(
        id=job_id or str(uuid.uuid4()),
        job_hash=job_hash or uuid.uuid4().hex,
        job_type=job_type,
        input_params='{"name":"Ada"}',
        priority=priority,
        max_attempts=3,
        timeout=timeout,
        now=now,
    )


async def insert(store: Store, *args: Any, **kwargs: Any) -> JobRow:
    row, created = await store.insert_job(new_job(*args, **kwargs))
    assert created
    return row


async def running(store: Store, runner: str = "r1", now: int = T0) -> JobRow:
    """A job claimed by ``runner`` at ``now``."""
    job = await insert(store, now=now)
    claimed = await store.claim(job.id, runner, now)
    assert claimed is not None
    return claimed


async def current(store: Store, job_id: str) -> JobRow:
    row = await store.get_job(job_id)
    assert row is not None
    return row


INT_FIELDS = {f.name for f in fields(JobRow) if "int" in str(f.type)}


def assert_plain_types(row: JobRow) -> None:
    """ints are ints (not Decimal or bool), text is str, whichever the engine."""
    for name, value in asdict(row).items():
        if value is None:
            continue
        expected = int if name in INT_FIELDS else str
        assert type(value) is expected, (name, value)


# --- insert and dedup -------------------------------------------------------------------


async def test_insert_job_creates_once_per_hash(store: Store) -> None:
    first, created = await store.insert_job(new_job("h1", timeout=5000))
    assert created
    assert (first.status, first.attempts, first.priority, first.not_before) == ("pending", 0, 0, 0)
    assert (first.created_at, first.updated_at, first.timeout) == (T0, T0, 5000)
    assert first.claimed_by is None and first.console_output is None
    assert_plain_types(first)

    again, created = await store.insert_job(new_job("h1", now=T0 + 1000))
    assert not created
    assert again == first
    assert await store.get_job(first.id) == first
    assert await store.get_job_by_hash("h1") == first
    assert await store.get_job(str(uuid.uuid4())) is None
    assert await store.get_job_by_hash("nope") is None


async def test_concurrent_inserts_of_one_hash_create_exactly_one(store: Store) -> None:
    results = await asyncio.gather(*(store.insert_job(new_job("same")) for _ in range(20)))
    assert sum(created for _, created in results) == 1
    assert len({row.id for row, _ in results}) == 1
    assert await store.count_jobs() == {"pending": 1}


async def test_concurrent_submits_each_get_their_own_job(store: Store) -> None:
    """Many inserts and reads at once (on PostgreSQL, sent as one statement each):
    every caller gets its own row, and the repeated hashes their first job."""
    jobs = [new_job(f"h{i}", now=T0 + i) for i in range(30)]
    repeats = [new_job(f"h{i}", now=T0 + 100) for i in range(0, 30, 3)]
    results = await asyncio.gather(*(store.insert_job(j) for j in [*jobs, *repeats]))
    created, again = results[: len(jobs)], results[len(jobs) :]
    assert [(row.id, row.created_at, made) for row, made in created] == [
        (j.id, j.now, True) for j in jobs
    ]
    assert [(row.id, made) for row, made in again] == [(jobs[i].id, False) for i in range(0, 30, 3)]
    found = await asyncio.gather(*(store.get_job_by_hash(h) for h in ["h4", "nope", "h4", "h29"]))
    assert [row.id if row else None for row in found] == [jobs[4].id, None, jobs[4].id, jobs[29].id]


async def test_concurrent_completions_apply_once_each(store: Store) -> None:
    jobs = [await running(store, "r1") for _ in range(6)]
    other = await running(store, "r2")
    calls = [(job.id, "r1") for job in jobs]
    calls += [(jobs[0].id, "r1"), (jobs[1].id, "r1")]  # the same result sent twice
    calls += [(other.id, "r1"), (str(uuid.uuid4()), "r1")]  # not its job; no such job
    results = await asyncio.gather(
        *(
            store.complete(job_id, runner, T0 + 5, f'{{"n":{i}}}', None)
            for i, (job_id, runner) in enumerate(calls)
        )
    )
    assert results == [True] * 6 + [False, False] + [False, False]
    for i, job in enumerate(jobs):
        row = await current(store, job.id)
        assert (row.status, row.output_data, row.updated_at) == (
            "completed",
            f'{{"n":{i}}}',
            T0 + 5,
        )
    assert (await current(store, other.id)).status == "claimed"


# --- requeue, expire --------------------------------------------------------------------


async def finished(store: Store, how: str) -> JobRow:
    job = await running(store)
    if how == "completed":
        assert await store.complete(job.id, "r1", T0 + 10, '{"ok":1}', "log")
    else:
        assert await store.fail(job.id, "r1", T0 + 10, "boom", "log")
    return await current(store, job.id)


async def test_requeue_only_from_the_named_states(store: Store) -> None:
    done = await finished(store, "completed")
    assert await store.requeue(done.id, ["failed"], T0 + 20, T0 + 20) is None
    assert await current(store, done.id) == done

    row = await store.requeue(done.id, ["completed", "expired"], T0 + 20, T0 + 500)
    assert row is not None
    assert (row.status, row.attempts, row.not_before, row.updated_at) == (
        "pending",
        0,
        T0 + 500,
        T0 + 20,
    )
    assert (row.claimed_by, row.claimed_at, row.last_heartbeat) == (None, None, None)
    assert (row.output_data, row.console_output, row.error_message) == (None, None, None)
    assert row == await current(store, done.id)
    # Pending is not one of the named states: nothing changes.
    assert await store.requeue(done.id, ["completed", "failed"], T0 + 30, T0 + 30) is None

    failed = await finished(store, "failed")
    row = await store.requeue(failed.id, ["failed"], T0 + 20, T0 + 20)
    assert row is not None and row.status == "pending" and row.error_message is None
    assert await store.requeue(str(uuid.uuid4()), ["failed"], T0, T0) is None


async def test_cancel_only_from_the_named_states(store: Store) -> None:
    job = await running(store)
    assert await store.cancel(job.id, ["pending"], T0 + 1, "no") is None
    assert await current(store, job.id) == job
    row = await store.cancel(job.id, ["pending", "claimed", "in_progress"], T0 + 2, "by admin")
    assert row is not None
    assert (row.status, row.updated_at, row.error_message) == ("cancelled", T0 + 2, "by admin")
    assert row == await current(store, job.id)
    assert await store.cancel(job.id, ["claimed", "in_progress"], T0 + 3, "again") is None
    assert not await store.heartbeat(job.id, "r1", T0 + 4, None, None, "late")
    assert await store.cancel(str(uuid.uuid4()), ["pending"], T0, "none") is None


async def test_expire_only_from_completed(store: Store) -> None:
    pending = await insert(store)
    assert not await store.expire(pending.id, T0 + 1)
    failed = await finished(store, "failed")
    assert not await store.expire(failed.id, T0 + 1)

    done = await finished(store, "completed")
    assert await store.expire(done.id, T0 + 99)
    row = await current(store, done.id)
    assert (row.status, row.updated_at, row.output_data) == ("expired", T0 + 99, '{"ok":1}')
    assert not await store.expire(done.id, T0 + 100)


# --- claims -----------------------------------------------------------------------------


async def test_claim_only_pending_and_due(store: Store) -> None:
    done = await finished(store, "completed")
    assert await store.claim(done.id, "r1", T0 + 50) is None

    later = await store.requeue(done.id, ["completed"], T0 + 50, not_before=T0 + 1000)
    assert later is not None
    assert await store.claim(later.id, "r1", T0 + 999) is None

    row = await store.claim(later.id, "r2", T0 + 1000)
    assert row is not None
    assert (row.status, row.claimed_by, row.claimed_at, row.last_heartbeat) == (
        "claimed",
        "r2",
        T0 + 1000,
        T0 + 1000,
    )
    assert row.attempts == 1 and row.updated_at == T0 + 1000
    assert_plain_types(row)
    assert await store.claim(later.id, "r3", T0 + 1001) is None
    assert await store.claim(str(uuid.uuid4()), "r1", T0) is None


async def test_claim_increments_attempts(store: Store) -> None:
    job = await running(store)
    assert await store.retry_stale(job, T0 + 1, T0 + 1, "stale")
    again = await store.claim(job.id, "r2", T0 + 2)
    assert again is not None and again.attempts == 2


async def test_claim_next_respects_types_priority_age_and_not_before(store: Store) -> None:
    old_low = await insert(store, job_type="a", priority=0, now=T0)
    new_high = await insert(store, job_type="a", priority=5, now=T0 + 20)
    old_high = await insert(store, job_type="a", priority=5, now=T0 + 10)
    other = await insert(store, job_type="b", priority=9, now=T0)
    # Same priority and age: the smaller id goes first.
    tie_b = await insert(store, job_type="a", priority=1, now=T0 + 30, job_id="b" * 8)
    tie_a = await insert(store, job_type="a", priority=1, now=T0 + 30, job_id="a" * 8)
    # A higher priority that is not yet due (not_before in the future) waits.
    done = await finished(store, "completed")
    assert await store.requeue(done.id, ["completed"], T0 + 40, not_before=T0 + 10_000)
    late = await current(store, done.id)
    assert late.job_type == "hello_world"

    assert await store.claim_next("r", [], T0 + 100) is None
    assert await store.claim_next("r", ["nothing"], T0 + 100) is None
    now = T0 + 100
    order = []
    while (row := await store.claim_next("r", ["a", "hello_world"], now)) is not None:
        assert (row.status, row.claimed_by, row.attempts, row.claimed_at) == (
            "claimed",
            "r",
            1,
            now,
        )
        order.append(row.id)
    assert order == [old_high.id, new_high.id, tie_a.id, tie_b.id, old_low.id]
    assert (await current(store, other.id)).status == "pending"
    assert (await current(store, late.id)).status == "pending"

    row = await store.claim_next("r", ["hello_world"], T0 + 10_000)
    assert row is not None and row.id == late.id and row.attempts == 1
    row = await store.claim_next("r", ["b", "zzz"], now)
    assert row is not None and row.id == other.id


async def test_concurrent_claim_next_hands_out_each_job_once(store: Store) -> None:
    jobs = {(await insert(store, job_type="x", now=T0 + i)).id for i in range(5)}
    # On PostgreSQL half the claimers go through a second instance, so the race is
    # between pools of real connections, as between two servers.
    other = twin(store) if isinstance(store, PostgresStore) else store
    if other is not store:
        await other.open()
    try:
        stores = [store, other] * 5
        results = await asyncio.gather(
            *(s.claim_next(f"r{i}", ["x"], T0 + 100) for i, s in enumerate(stores))
        )
    finally:
        if other is not store:
            await other.close()
    claimed = [row for row in results if row is not None]
    assert sorted(row.id for row in claimed) == sorted(jobs)
    assert results.count(None) == 5
    for row in claimed:
        stored = await current(store, row.id)
        assert (stored.status, stored.claimed_by, stored.attempts) == ("claimed", row.claimed_by, 1)


async def test_claim_batch_takes_up_to_limit_best_first(store: Store) -> None:
    low = await insert(store, job_type="a", priority=0, now=T0)
    high = await insert(store, job_type="a", priority=5, now=T0 + 10)
    mid_old = await insert(store, job_type="a", priority=2, now=T0 + 1)
    mid_new = await insert(store, job_type="a", priority=2, now=T0 + 2)
    other = await insert(store, job_type="b", priority=9, now=T0)
    assert await store.claim_batch("r", ["a"], T0 + 100, 0) == []
    assert await store.claim_batch("r", [], T0 + 100, 5) == []
    first = await store.claim_batch("r", ["a"], T0 + 100, 3)
    assert [row.id for row in first] == [high.id, mid_old.id, mid_new.id]
    assert {(row.status, row.claimed_by, row.attempts) for row in first} == {("claimed", "r", 1)}
    rest = await store.claim_batch("r2", ["a", "zzz"], T0 + 100, 10)
    assert [row.id for row in rest] == [low.id]
    assert await store.claim_batch("r2", ["a"], T0 + 100, 10) == []
    assert (await current(store, other.id)).status == "pending"


async def test_concurrent_claim_batches_hand_out_each_job_once(store: Store) -> None:
    jobs = {(await insert(store, job_type="x", now=T0 + i)).id for i in range(20)}
    other = twin(store) if isinstance(store, PostgresStore) else store
    if other is not store:
        await other.open()
    try:
        stores = [store, other] * 4
        results = await asyncio.gather(
            *(s.claim_batch(f"r{i}", ["x"], T0 + 100, 3) for i, s in enumerate(stores))
        )
    finally:
        if other is not store:
            await other.close()
    claimed = [row for batch in results for row in batch]
    assert all(len(batch) <= 3 for batch in results)
    assert len(claimed) == len({row.id for row in claimed}) == 20
    assert {row.id for row in claimed} == jobs


async def test_available_jobs(store: Store) -> None:
    a = await insert(store, job_type="a", now=T0 + 2)
    b = await insert(store, job_type="b", priority=3, now=T0 + 3)
    await insert(store, job_type="c", now=T0)
    claimed = await running(store)
    assert claimed.status == "claimed"
    assert await store.available_jobs([], T0 + 10, 10) == []
    rows = await store.available_jobs(["a", "b", "hello_world"], T0 + 10, 10)
    assert [r.id for r in rows] == [b.id, a.id]
    assert [r.id for r in await store.available_jobs(["a", "b"], T0 + 10, 1)] == [b.id]


# --- heartbeat, complete, fail ----------------------------------------------------------


async def test_heartbeat_only_by_owner_while_running(store: Store) -> None:
    pending = await insert(store)
    assert not await store.heartbeat(pending.id, "r1", T0, 1, 2, "x")

    job = await running(store, "r1")
    assert not await store.heartbeat(job.id, "r2", T0 + 1, 1, 10, "intruder")
    assert await store.heartbeat(job.id, "r1", T0 + 2, 1, 10, "line 1\n")
    row = await current(store, job.id)
    assert (row.status, row.last_heartbeat, row.updated_at) == ("in_progress", T0 + 2, T0 + 2)
    assert (row.progress_current, row.progress_total, row.console_output) == (1, 10, "line 1\n")

    # None keeps the stored console; in_progress may heartbeat again.
    assert await store.heartbeat(job.id, "r1", T0 + 3, 2, 10, None)
    row = await current(store, job.id)
    assert (row.progress_current, row.console_output, row.last_heartbeat) == (2, "line 1\n", T0 + 3)

    assert await store.complete(job.id, "r1", T0 + 4, "{}", None)
    assert not await store.heartbeat(job.id, "r1", T0 + 5, 3, 10, "late")
    assert (await current(store, job.id)).console_output == "line 1\n"


async def test_heartbeat_appends_console_keeping_the_tail(store: Store) -> None:
    job = await running(store)
    assert await store.heartbeat(job.id, "r1", T0 + 1, None, None, None, console_append="abc")
    assert await store.heartbeat(job.id, "r1", T0 + 2, None, None, None, console_append="déf")
    assert (await current(store, job.id)).console_output == "abcdéf"
    ok = await store.heartbeat(job.id, "r1", T0 + 3, 1, 2, None, console_append="gh", max_console=4)
    assert ok
    row = await current(store, job.id)
    assert (row.console_output, row.progress_current) == ("éfgh", 1)
    assert not await store.heartbeat(job.id, "r2", T0 + 4, None, None, None, console_append="x")


async def test_complete_only_by_owner_while_running(store: Store) -> None:
    pending = await insert(store)
    assert not await store.complete(pending.id, "r1", T0, "{}", None)

    job = await running(store, "r1")
    assert await store.heartbeat(job.id, "r1", T0 + 1, None, None, "console")
    assert not await store.complete(job.id, "r2", T0 + 2, '{"x":1}', "other")
    assert await store.complete(job.id, "r1", T0 + 3, '{"x":1}', None)
    row = await current(store, job.id)
    assert (row.status, row.output_data, row.console_output) == ("completed", '{"x":1}', "console")
    assert (row.updated_at, row.last_heartbeat) == (T0 + 3, T0 + 3)
    assert not await store.complete(job.id, "r1", T0 + 4, '{"x":2}', None)
    assert not await store.fail(job.id, "r1", T0 + 4, "late", None)
    assert (await current(store, job.id)).output_data == '{"x":1}'

    # Straight from claimed, with a console that replaces the stored one.
    other = await running(store, "r1")
    assert await store.complete(other.id, "r1", T0 + 5, "{}", "final")
    assert (await current(store, other.id)).console_output == "final"


async def test_fail_only_by_owner_while_running(store: Store) -> None:
    pending = await insert(store)
    assert not await store.fail(pending.id, "r1", T0, "boom", None)

    job = await running(store, "r1")
    assert not await store.fail(job.id, "r2", T0 + 1, "boom", None)
    assert await store.heartbeat(job.id, "r1", T0 + 1, None, None, "kept")
    assert await store.fail(job.id, "r1", T0 + 2, "boom", None)
    row = await current(store, job.id)
    assert (row.status, row.error_message, row.console_output) == ("failed", "boom", "kept")
    assert not await store.fail(job.id, "r1", T0 + 3, "again", "x")
    assert not await store.complete(job.id, "r1", T0 + 3, "{}", None)


# --- stale jobs -------------------------------------------------------------------------


async def test_stale_jobs_lists_running_jobs_by_heartbeat(store: Store) -> None:
    first = await running(store, now=T0)
    second = await running(store, now=T0 + 5)
    await running(store, now=T0 + 50)
    await insert(store, now=T0)
    assert [r.id for r in await store.stale_jobs(T0 + 10, 10)] == [first.id, second.id]
    assert [r.id for r in await store.stale_jobs(T0 + 10, 1)] == [first.id]
    assert await store.stale_jobs(T0, 10) == []


async def test_retry_stale_only_when_unchanged_since_read(store: Store) -> None:
    job = await running(store, now=T0)
    (stale,) = await store.stale_jobs(T0 + 1, 10)
    assert await store.heartbeat(job.id, "r1", T0 + 2, 1, 2, "alive")
    assert not await store.retry_stale(stale, T0 + 3, T0 + 100, "stale")
    assert not await store.fail_stale(stale, T0 + 3, "gave up")
    assert (await current(store, job.id)).status == "in_progress"

    (stale,) = await store.stale_jobs(T0 + 10, 10)
    assert await store.retry_stale(stale, T0 + 11, T0 + 100, "runner went quiet")
    row = await current(store, job.id)
    assert (row.status, row.not_before, row.updated_at, row.error_message) == (
        "pending",
        T0 + 100,
        T0 + 11,
        "runner went quiet",
    )
    assert (row.claimed_by, row.claimed_at, row.last_heartbeat) == (None, None, None)
    assert (row.progress_current, row.progress_total, row.attempts) == (None, None, 1)
    # Done once: the same stale read changes nothing more.
    assert not await store.retry_stale(stale, T0 + 12, T0 + 100, "again")
    assert not await store.fail_stale(stale, T0 + 12, "again")


async def test_fail_stale_only_when_unchanged_since_read(store: Store) -> None:
    job = await running(store, now=T0)
    (stale,) = await store.stale_jobs(T0 + 1, 10)
    assert await store.complete(job.id, "r1", T0 + 2, "{}", None)
    assert not await store.fail_stale(stale, T0 + 3, "gave up")
    assert (await current(store, job.id)).status == "completed"

    other = await running(store, now=T0)
    (stale,) = await store.stale_jobs(T0 + 1, 10)
    assert stale.id == other.id
    assert await store.fail_stale(stale, T0 + 3, "no heartbeat for 90 s")
    row = await current(store, other.id)
    assert (row.status, row.error_message, row.updated_at) == (
        "failed",
        "no heartbeat for 90 s",
        T0 + 3,
    )
    assert not await store.fail_stale(stale, T0 + 4, "again")


# --- delete, list, count ----------------------------------------------------------------


async def test_delete_jobs_returns_the_ids_that_existed(store: Store) -> None:
    a, b, c = [await insert(store, now=T0 + i) for i in range(3)]
    ghost = str(uuid.uuid4())
    assert await store.delete_jobs([]) == []
    assert await store.delete_jobs([c.id, ghost, a.id, c.id]) == [c.id, a.id]
    assert await store.get_job(a.id) is None and await store.get_job(c.id) is None
    assert await current(store, b.id) == b
    assert await store.delete_jobs([a.id]) == []
    # The hash is free again.
    _, created = await store.insert_job(new_job(a.job_hash))
    assert created


async def test_list_jobs_filters_and_orders_newest_first(store: Store) -> None:
    rows = [await insert(store, job_type=f"type{i % 2}", now=T0 + i) for i in range(6)]
    tie_b = await insert(store, now=T0 + 10, job_id="bbbb")
    tie_a = await insert(store, now=T0 + 10, job_id="aaaa")
    assert await store.claim(rows[1].id, "r1", T0 + 20)

    newest_first = [tie_a.id, tie_b.id, *(r.id for r in reversed(rows))]
    assert [r.id for r in await store.list_jobs(None, None, 100, 0)] == newest_first
    assert [r.id for r in await store.list_jobs(None, None, 3, 2)] == newest_first[2:5]
    assert await store.list_jobs(None, None, 10, 50) == []
    assert [r.id for r in await store.list_jobs("claimed", None, 10, 0)] == [rows[1].id]
    assert [r.id for r in await store.list_jobs(None, "type0", 10, 0)] == [
        rows[4].id,
        rows[2].id,
        rows[0].id,
    ]
    assert [r.id for r in await store.list_jobs("pending", "type1", 10, 0)] == [
        rows[5].id,
        rows[3].id,
    ]
    assert [r.id for r in await store.list_jobs(None, "type%", 2, 0)] == [rows[5].id, rows[4].id]


async def test_count_jobs(store: Store) -> None:
    assert await store.count_jobs() == {}
    await insert(store)
    await insert(store)
    await finished(store, "completed")
    await finished(store, "failed")
    counts = await store.count_jobs()
    assert counts == {"pending": 2, "completed": 1, "failed": 1}
    assert all(type(n) is int for n in counts.values())


async def test_jobs_of_runner(store: Store) -> None:
    first = await running(store, "r1", now=T0)
    second = await running(store, "r1", now=T0 + 1)
    await running(store, "r2", now=T0 + 2)
    assert [r.id for r in await store.jobs_of_runner("r1", 10)] == [second.id, first.id]
    assert [r.id for r in await store.jobs_of_runner("r1", 1)] == [second.id]
    assert await store.jobs_of_runner("nobody", 10) == []


# --- runners ----------------------------------------------------------------------------


async def test_runners(store: Store) -> None:
    assert await store.count_runners(T0) == (0, 0)
    assert await store.list_runners() == []
    one = RunnerRow(str(uuid.uuid4()), "one", '["a"]', T0, T0)
    two = RunnerRow(str(uuid.uuid4()), "two", '["a","b"]', T0, T0 + 10)
    await store.insert_runner(one)
    await store.insert_runner(two)
    got = await store.get_runner(one.id)
    assert got == one
    assert all(type(getattr(got, f)) is int for f in ("registered_at", "last_seen"))
    assert await store.get_runner(str(uuid.uuid4())) is None

    assert [r.id for r in await store.list_runners()] == [two.id, one.id]
    assert await store.touch_runner(one.id, T0 + 20)
    assert not await store.touch_runner(str(uuid.uuid4()), T0 + 20)
    assert await store.get_runner(one.id) == RunnerRow(one.id, "one", '["a"]', T0, T0 + 20)
    assert [r.id for r in await store.list_runners()] == [one.id, two.id]

    # Active means seen strictly after the cutoff.
    assert await store.count_runners(T0 + 9) == (2, 2)
    assert await store.count_runners(T0 + 10) == (2, 1)
    total, active = await store.count_runners(T0 + 20)
    assert (total, active) == (2, 0)
    assert type(total) is int and type(active) is int


# --- schema -----------------------------------------------------------------------------


async def test_reopening_applies_no_migration_twice(store: Store) -> None:
    job = await insert(store)
    for _ in range(2):
        again = twin(store)
        await again.open()
        assert await again.get_job(job.id) == job
        await again.close()
    assert await schema_versions(store) == ALL_VERSIONS


async def test_pending_migrations_upgrade_an_existing_database(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = RunnerRow("r", "n", "[]", T0, T0)
    await store.insert_runner(runner)
    next_version = latest_version() + 1
    extra = (
        next_version,
        f"{next_version:04d}_runner_note.sql",
        "-- a note\nALTER TABLE runners ADD COLUMN note TEXT;\n",
    )
    monkeypatch.setattr(migrations, "migrations", lambda: [extra])
    for _ in range(2):  # the second time finds nothing to do
        again = twin(store)
        await again.open()
        assert await again.get_runner("r") == runner
        await again.close()
        assert await schema_versions(store) == [*ALL_VERSIONS, next_version]


async def test_apply_sqlite_twice_is_a_no_op(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    try:
        assert apply_sqlite(conn) == latest_version()
        assert apply_sqlite(conn) == latest_version()
        rows = conn.execute("SELECT version FROM schema_version ORDER BY 1").fetchall()
        assert [v for (v,) in rows] == ALL_VERSIONS
    finally:
        conn.close()


async def test_apply_postgres_twice_is_a_no_op(pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await apply_postgres(conn) == latest_version()
        assert await apply_postgres(conn) == latest_version()
        rows = await conn.fetch("SELECT version FROM schema_version ORDER BY 1")
        assert [r[0] for r in rows] == ALL_VERSIONS
    finally:
        await conn.close()


async def test_postgres_instances_starting_together_share_one_schema(pg_dsn: str) -> None:
    stores = [PostgresStore(pg_dsn, max_size=2) for _ in range(6)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        results = await asyncio.gather(
            *(s.insert_job(new_job("one-hash", job_id=str(uuid.uuid4()))) for s in stores)
        )
        assert sum(created for _, created in results) == 1
        assert await schema_versions(stores[0]) == ALL_VERSIONS
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def _table_reads(conn: asyncpg.Connection, updates: int) -> tuple[int, int]:
    """(rows read by sequential scans of jobs, entries read from jobs_claimed_by_idx),
    once the statistics show at least ``updates`` updates of jobs (they arrive late)."""
    sql = """SELECT t.n_tup_upd, t.seq_tup_read, i.idx_tup_read
             FROM pg_stat_user_tables t JOIN pg_stat_user_indexes i USING (relid)
             WHERE t.relname = 'jobs' AND i.indexrelname = 'jobs_claimed_by_idx'"""
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        done, seq_read, idx_read = await conn.fetchrow(sql)
        if done >= updates or asyncio.get_running_loop().time() > deadline:
            return seq_read, idx_read
        await asyncio.sleep(0.05)  # polling the statistics view for the awaited count


async def test_postgres_job_transitions_reach_the_row_by_its_key_as_the_table_grows(
    pg_dsn: str,
) -> None:
    """Claims and completions read the job's own rows, not the table or every job the
    runner ever held: the plan must not be one made for the table when it was small,
    nor one the planner takes without statistics (autovacuum may be off)."""
    store = PostgresStore(pg_dsn, min_size=1, max_size=1)  # one session: one plan cache
    await store.open()
    watcher = await asyncpg.connect(pg_dsn)
    updates = 0

    async def lifecycles(n: int, now: int) -> None:
        nonlocal updates
        for i in range(n):
            await insert(store, job_type="t", now=now + i)
            [job] = await store.claim_batch("r1", ["t"], now + i, 1)
            assert await store.complete(job.id, "r1", now + i, "{}", None)
            updates += 2
        await store._run(lambda c: c.execute("SELECT pg_stat_force_next_flush()"), read=True)

    async def runner_held(first: int, last: int) -> None:
        await watcher.execute(
            """INSERT INTO jobs (id, job_hash, job_type, input_params, status, created_at,
                                 updated_at, claimed_by, claimed_at, output_data)
               SELECT 'old-' || g, 'old-' || g, 't', '{}', 'completed', g, g, 'r1', g, '{}'
               FROM generate_series($1::int, $2::int) AS g""",
            first,
            last,
        )

    async def reads_per_job(now: int) -> tuple[float, float]:
        before = await _table_reads(watcher, updates)
        await lifecycles(20, now)
        after = await _table_reads(watcher, updates)
        return (after[0] - before[0]) / 20, (after[1] - before[1]) / 20

    try:
        # A small table without statistics, whose runner has held 300 jobs: plans
        # made now may be kept.
        await lifecycles(300, T0)
        seq_read, idx_read = await reads_per_job(T0 + 300)
        assert idx_read < 10, f"{idx_read:.0f} of the runner's jobs read per job"
        # 20,000 jobs later.
        await runner_held(1, 20_000)
        seq_read, idx_read = await reads_per_job(T0 + 400)
        assert seq_read < 100, f"{seq_read:.0f} rows scanned per job"
        assert idx_read < 10, f"{idx_read:.0f} of the runner's jobs read per job"
    finally:
        await watcher.close()
        await store.close()


# --- both engines build the same records ------------------------------------------------


async def script(store: Store) -> list[Any]:
    """One run through the lifecycle; every record it sees, as plain data."""
    seen: list[Any] = []
    job, _ = await store.insert_job(new_job("h", priority=2, timeout=60_000, job_id="job-1"))
    seen.append(job)
    seen.append(await store.claim_next("r1", ["hello_world"], T0 + 1))
    await store.heartbeat("job-1", "r1", T0 + 2, 3, 4, "out")
    await store.complete("job-1", "r1", T0 + 3, '{"figpack_url":"x"}', None)
    seen.append(await store.get_job("job-1"))
    await store.expire("job-1", T0 + 4)
    seen.append(await store.requeue("job-1", ["expired"], T0 + 5, T0 + 6))
    await store.insert_runner(RunnerRow("runner-1", "n", "[]", T0, T0))
    seen.extend([await store.get_runner("runner-1"), await store.count_runners(T0 - 1)])
    seen.extend([await store.count_jobs(), await store.list_jobs(None, None, 10, 0)])
    return [asdict(x) if isinstance(x, JobRow | RunnerRow) else x for x in seen]


async def test_both_engines_return_identical_records(tmp_path: Path) -> None:
    results = []
    for engine in ENGINES:
        async with opened(engine, tmp_path) as s:
            results.append(await script(s))
    sqlite_seen, postgres_seen = results
    assert postgres_seen == sqlite_seen
    for a, b in zip(sqlite_seen, postgres_seen, strict=True):
        assert repr(a) == repr(b)  # same types too (1 == 1.0 == True would hide a difference)


def test_every_store_implements_the_protocol() -> None:
    wanted = {
        name: inspect.signature(member)
        for name, member in inspect.getmembers(Store, inspect.iscoroutinefunction)
    }
    assert "claim_next" in wanted
    for cls in (SqliteStore, PostgresStore):
        for name, sig in wanted.items():
            mine = inspect.signature(getattr(cls, name))
            assert list(mine.parameters) == list(sig.parameters), (cls.__name__, name)
            assert [p.default for p in mine.parameters.values()] == [
                p.default for p in sig.parameters.values()
            ], (cls.__name__, name)


def test_open_store_picks_the_engine(tmp_path: Path) -> None:
    assert isinstance(open_store("postgresql://u@h/db"), PostgresStore)
    assert isinstance(open_store("postgres://u@h/db"), PostgresStore)
    assert isinstance(open_store(str(tmp_path / "x.db")), SqliteStore)


# --- PostgreSQL: errors and dropped connections -----------------------------------------


async def test_unreachable_server_gives_store_error() -> None:
    store = PostgresStore("postgresql://postgres:s3cret@127.0.0.1:1/test", connect_timeout=3)
    with pytest.raises(StoreError) as info:
        await store.open()
    details = info.value.details or ""
    assert "127.0.0.1:1" in details and "s3cret" not in details, details
    assert info.value.status == 503
    with pytest.raises(StoreError):  # never opened: a clear error, not AttributeError
        await store.get_job("x")
    await store.close()


async def test_missing_database_gives_store_error(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn.rsplit("/", 1)[0] + "/runpack_no_such_database")
    with pytest.raises(StoreError) as info:
        await store.open()
    assert "3D000" in (info.value.details or "")


async def test_closed_store_gives_store_error(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn)
    await store.open()
    await store.close()
    with pytest.raises(StoreError):
        await store.count_jobs()
    with pytest.raises(StoreError):
        await store.insert_job(new_job())


async def wait_until(check: Callable[[], Awaitable[bool]], seconds: float = 10.0) -> None:
    """Poll ``check`` until it holds (pg_stat_activity has nothing to wait on)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not await check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def backends(admin: asyncpg.Connection, waiting: bool = False) -> list[int]:
    """Pids of the store's connections to this database (optionally: blocked on a lock)."""
    await admin.execute("SELECT pg_stat_clear_snapshot()")  # fresh even inside a transaction
    rows = await admin.fetch(
        """SELECT pid FROM pg_stat_activity
           WHERE datname = current_database() AND application_name = 'runpack'
             AND ($1 = false OR wait_event_type = 'Lock')""",
        waiting,
    )
    return [r[0] for r in rows]


TERMINATE = """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
               WHERE datname = current_database() AND pid <> pg_backend_pid()"""


async def test_store_recovers_after_its_connections_are_terminated(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn)
    await store.open()
    admin = await asyncpg.connect(pg_dsn)
    try:
        job = await insert(store)
        await asyncio.gather(*(store.get_job(job.id) for _ in range(5)))  # several connections
        before = await backends(admin)
        assert before

        await admin.execute(TERMINATE)
        assert await store.get_job(job.id) == job  # at once: retried if it hit a dead one

        await wait_until(lambda: _none_of(admin, before))
        assert await store.get_job(job.id) == job
        assert await store.claim(job.id, "r1", T0 + 1) is not None  # writes work again
        assert await store.count_jobs() == {"claimed": 1}
        assert not set(await backends(admin)) & set(before)
    finally:
        await admin.close()
        await store.close()


async def _none_of(admin: asyncpg.Connection, pids: list[int]) -> bool:
    return not set(await backends(admin)) & set(pids)


async def test_read_cut_off_mid_query_is_retried_once(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn)
    await store.open()
    job = await insert(store)
    admin = await asyncpg.connect(pg_dsn)
    try:
        async with admin.transaction():
            await admin.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
            read = asyncio.create_task(store.get_job(job.id))
            await wait_until(lambda: _blocked(admin, 1))
            (victim,) = await backends(admin, waiting=True)
            await admin.execute("SELECT pg_terminate_backend($1)", victim)
            # The read comes back on a new connection and waits for the lock again.
            await wait_until(lambda: _blocked(admin, 1, not_pid=victim))
        assert await read == job
    finally:
        await admin.close()
        await store.close()


async def test_write_cut_off_mid_query_is_not_retried(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn)
    await store.open()
    job = await insert(store)
    admin = await asyncpg.connect(pg_dsn)
    try:
        async with admin.transaction():
            await admin.execute("SELECT id FROM jobs WHERE id = $1 FOR UPDATE", job.id)
            claim = asyncio.create_task(store.claim(job.id, "r1", T0 + 1))
            await wait_until(lambda: _blocked(admin, 1))
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name = 'runpack'"
            )
            with pytest.raises(StoreError) as info:
                await claim
            assert "connection lost" in (info.value.details or ""), info.value.details
            await asyncio.sleep(0.2)
            assert await backends(admin, waiting=True) == []  # nobody tried it again
        assert (await current(store, job.id)).status == "pending"
        assert await store.claim(job.id, "r1", T0 + 2) is not None
    finally:
        await admin.close()
        await store.close()


async def _blocked(admin: asyncpg.Connection, n: int, not_pid: int | None = None) -> bool:
    pids = await backends(admin, waiting=True)
    return len(pids) == n and not_pid not in pids


async def test_database_refusing_connections_gives_store_error_then_recovers(
    pg_dsn: str,
) -> None:
    store = PostgresStore(pg_dsn, connect_timeout=3)
    await store.open()
    job = await insert(store)
    name = pg_dsn.rsplit("/", 1)[1]
    admin = await asyncpg.connect(pg_dsn.rsplit("/", 1)[0] + "/postgres")
    try:
        await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        await wait_until(lambda: _no_backends(admin, name))
        with pytest.raises(StoreError):
            await store.get_job(job.id)
        with pytest.raises(StoreError):
            await store.claim(job.id, "r1", T0 + 1)
        await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        assert await store.get_job(job.id) == job
        assert await store.claim(job.id, "r1", T0 + 1) is not None
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        await admin.close()
        await store.close()


async def _no_backends(admin: asyncpg.Connection, name: str) -> bool:
    n = await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = $1", name)
    return bool(n == 0)


# --- the test helper: skip locally, fail under CI ---------------------------------------


@pytest.mark.parametrize(
    ("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)]
)
async def test_unreachable_postgres_skips_locally_and_fails_under_ci(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setattr(pg, "ADMIN_DSN", "postgresql://postgres@127.0.0.1:1/postgres")
    monkeypatch.setenv("CI", ci)
    assert not pg.postgres_available()
    with pytest.raises(outcome, match="not reachable"):
        async with fresh_database():
            pass  # pragma: no cover
    with pytest.raises(outcome):
        pg.require_postgres()
