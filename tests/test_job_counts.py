"""The job counts that triggers keep (GET /api/admin/stats) against a full count, on
both engines, through every statement that creates, moves or deletes a job."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from dataclasses import replace

import asyncpg

from runpack.store.base import Store
from runpack.store.migrations import engine_schema, split_statements
from runpack.store.postgres import PostgresStore
from runpack.store.sqlite import SqliteStore
from tests.test_instances import UNDO_INSTANCES
from tests.test_store import T0, current, insert, new_job, running, store_fixture, twin  # noqa: F401


async def assert_counts_match(store: Store) -> dict[str, int]:
    """The kept counts equal a full count, before and after a fold."""
    full = await store.count_jobs()
    assert await store.job_counts() == full
    await store.fold_job_counts()
    assert await store.job_counts() == full
    assert all(type(n) is int for n in full.values())
    return full


async def test_kept_counts_follow_every_change_of_a_job(store: Store) -> None:
    assert await assert_counts_match(store) == {}
    # Submits, one at a time and concurrently (PostgreSQL batches those), a duplicate,
    # and one inserted already claimed.
    pending = [await insert(store, now=T0 + i) for i in range(4)]
    many = await asyncio.gather(*(store.insert_job(new_job(now=T0 + 10)) for _ in range(12)))
    _, again = await store.insert_job(new_job(pending[0].job_hash))
    assert not again
    placed, _ = await store.insert_job(replace(new_job(now=T0 + 11), runner_id="r1"))
    assert placed.status == "claimed"
    assert await assert_counts_match(store) == {"pending": 16, "claimed": 1}

    # Claims: one by id, the next of some types, a batch.
    assert await store.claim(pending[0].id, "r1", T0 + 20)
    first = await store.claim_next("r1", ["hello_world"], T0 + 20)
    assert first is not None
    batch = await store.claim_batch("r2", ["hello_world"], T0 + 20, 6)
    assert len(batch) == 6
    taken = {job.id for job in batch}
    queued = [row for row, _ in many if row.id not in taken]
    await assert_counts_match(store)

    # Heartbeats (the first moves a job to in_progress, the next leaves its state),
    # completions, one at a time and concurrently, and failures.
    for job in batch[:4]:
        assert await store.heartbeat(job.id, "r2", T0 + 30, 1, 2, None)
        assert await store.heartbeat(job.id, "r2", T0 + 31, 2, 2, None)
    done = await asyncio.gather(
        *(store.complete(j.id, "r2", T0 + 40, '{"ok":1}', None) for j in batch[:3])
    )
    assert done == [True] * 3
    assert not await store.complete(batch[0].id, "r2", T0 + 41, '{"ok":1}', None)
    assert await store.fail(batch[3].id, "r2", T0 + 40, "boom", None)
    await assert_counts_match(store)

    # Cancels, expiries, queueing again, and the sweeper's two outcomes.
    assert await store.cancel(queued[0].id, ["pending"], T0 + 50, "no")
    assert await store.cancel(batch[4].id, ["claimed", "in_progress"], T0 + 50, "no")
    assert await store.expire(batch[0].id, T0 + 50)
    assert not await store.expire(batch[0].id, T0 + 51)
    assert await store.requeue(batch[3].id, ["failed"], T0 + 50, T0 + 50)
    stale = {job.id: job for job in await store.stale_jobs(T0 + 1_000, 100)}
    assert await store.retry_stale(stale[batch[5].id], T0 + 60, T0 + 60, "lost")
    assert await store.fail_stale(stale[first.id], T0 + 60, "lost")
    await assert_counts_match(store)

    # Deletes, by id and by retention, and imports (a row already there is skipped).
    assert await store.delete_jobs([batch[1].id, queued[1].id, str(uuid.uuid4())])
    assert await store.delete_finished("completed", T0 + 1_000, 10) == [batch[2].id]
    template = await current(store, queued[2].id)
    imported = [
        replace(template, id=str(uuid.uuid4()), job_hash=h, status=s)
        for h, s in [("i1", "completed"), ("i2", "failed"), ("i3", "pending")]
    ]
    assert await store.import_jobs([*imported, template]) == 3
    counts = await assert_counts_match(store)
    assert sum(counts.values()) == 17 - 3 + 3


async def test_kept_counts_hold_under_concurrent_writers_and_folds(store: Store) -> None:
    other = twin(store) if isinstance(store, PostgresStore) else store
    if other is not store:
        await other.open()
    try:
        jobs = [await insert(store, now=T0 + i) for i in range(30)]

        async def work(s: Store, part: list[str], runner: str) -> None:
            for job_id in part:
                assert await s.claim(job_id, runner, T0 + 100)
                await s.fold_job_counts()
                assert await s.complete(job_id, runner, T0 + 101, "{}", None)

        ids = [j.id for j in jobs]
        await asyncio.gather(
            work(store, ids[:15], "r1"), work(other, ids[15:], "r2"), store.fold_job_counts()
        )
        assert await assert_counts_match(store) == {"completed": 30}
    finally:
        if other is not store:
            await other.close()


async def test_upgrading_counts_the_jobs_already_stored(store: Store) -> None:
    """A database of version 7, jobs and all, gets its counts from 0008_job_counts."""
    for status in ("completed", "failed"):
        job = await running(store)
        if status == "completed":
            assert await store.complete(job.id, "r1", T0 + 1, "{}", None)
        else:
            assert await store.fail(job.id, "r1", T0 + 1, "boom", None)
    await insert(store)
    full = await store.count_jobs()
    await store.close()
    version_7 = [
        *UNDO_INSTANCES,
        "DROP TRIGGER jobs_count_insert",
        "DROP TRIGGER jobs_count_update",
        "DROP TRIGGER jobs_count_delete",
        "DROP TABLE job_counts",
        "DELETE FROM schema_version WHERE version >= 8",
    ]
    if isinstance(store, SqliteStore):
        with sqlite3.connect(store.path) as conn:
            for statement in version_7:
                conn.execute(statement)
    else:
        assert isinstance(store, PostgresStore)
        conn = await asyncpg.connect(store.dsn)
        try:
            for statement in [
                *UNDO_INSTANCES,
                "DROP TRIGGER jobs_count_insert_delete ON jobs",
                "DROP TRIGGER jobs_count_update ON jobs",
                "DROP FUNCTION jobs_count",
                "DROP TABLE job_counts, job_count_deltas",
                version_7[-1],
            ]:
                await conn.execute(statement)
        finally:
            await conn.close()
    await store.open()  # the fixture closes it again
    assert await store.job_counts() == full
    await insert(store)
    assert await assert_counts_match(store) == {**full, "pending": full["pending"] + 1}


def test_sqlite_schema_split_keeps_a_trigger_whole() -> None:
    statements = split_statements(engine_schema("sqlite"))
    triggers = [s for s in statements if s.startswith("CREATE TRIGGER")]
    assert [s.split("\n")[0] for s in triggers] == [
        "CREATE TRIGGER IF NOT EXISTS jobs_count_insert AFTER INSERT ON jobs",
        "CREATE TRIGGER IF NOT EXISTS jobs_count_update AFTER UPDATE OF status ON jobs",
        "CREATE TRIGGER IF NOT EXISTS jobs_count_delete AFTER DELETE ON jobs",
    ]
    assert all(s.endswith("END") for s in triggers)


async def test_running_0008_again_counts_afresh(store: Store) -> None:
    await insert(store)
    await running(store)
    full = await store.count_jobs()
    await store.close()
    again = [*UNDO_INSTANCES, "DELETE FROM schema_version WHERE version >= 8"]
    if isinstance(store, SqliteStore):
        with sqlite3.connect(store.path) as conn:
            for statement in again:
                conn.execute(statement)
    else:
        assert isinstance(store, PostgresStore)
        conn = await asyncpg.connect(store.dsn)
        try:
            for statement in again:
                await conn.execute(statement)
        finally:
            await conn.close()
    await store.open()  # the fixture closes it again
    assert await assert_counts_match(store) == full == {"pending": 1, "claimed": 1}
