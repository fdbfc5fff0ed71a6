"""Where a pending job stands, piece by piece: the store's counts on both engines (claim
order, the cap, the index they use), and the estimate's arithmetic."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from runpack.standing import Able, QueueState, in_line, no_runner, ordinal, start_after
from runpack.store import queries as q
from runpack.store.base import Store
from runpack.store.sqlite import SqliteStore
from tests.pg import pg_dsn_fixture  # noqa: F401
from tests.test_store import T0, insert, store_fixture  # noqa: F401


async def test_jobs_ahead_follow_claim_order_among_the_given_types(store: Store) -> None:
    older = await insert(store, now=T0)
    await insert(store, "other-type", job_type="other", now=T0 + 1)
    urgent = await insert(store, priority=5, now=T0 + 5)
    same_time = [await insert(store, now=T0 + 2) for _ in range(2)]
    first, second = sorted(same_time, key=lambda j: j.id)
    mine = await insert(store, now=T0 + 3)
    newer = await insert(store, now=T0 + 4)
    assert await store.jobs_ahead(mine, ["hello_world"], 100) == {"hello_world": 4}
    assert await store.jobs_ahead(mine, ["hello_world", "other"], 100) == {
        "hello_world": 4,
        "other": 1,
    }
    assert await store.jobs_ahead(urgent, ["hello_world"], 100) == {}
    assert await store.jobs_ahead(older, ["hello_world"], 100) == {"hello_world": 1}
    # Same priority and time: the id decides, as claims do.
    assert await store.jobs_ahead(second, ["hello_world"], 100) == {"hello_world": 3}
    assert await store.jobs_ahead(first, ["hello_world"], 100) == {"hello_world": 2}
    assert await store.jobs_ahead(newer, ["hello_world"], 2) == {"hello_world": 3}  # 1 + 2
    claimed = await store.claim(older.id, "r1", T0 + 10)
    assert claimed is not None
    assert await store.jobs_ahead(mine, ["hello_world"], 100) == {"hello_world": 3}


async def test_recent_runs_running_jobs_and_runners_seen(store: Store) -> None:
    from runpack.store.base import RunnerRow

    for i, took in enumerate((1_000, 3_000)):
        job = await insert(store, now=T0 + i)
        assert await store.claim(job.id, "r1", T0 + 10_000 * i) is not None
        assert await store.complete(job.id, "r1", T0 + 10_000 * i + took, "{}", None)
    assert await store.recent_runs("hello_world", T0, 10) == [3_000, 1_000]
    assert await store.recent_runs("hello_world", T0 + 12_000, 10) == [3_000]
    assert await store.recent_runs("other", T0, 10) == []
    busy = await insert(store, now=T0 + 5)
    assert await store.claim(busy.id, "r2", T0 + 50_000) is not None
    assert await store.running_on(["r2", "r3"], 10) == [("r2", "hello_world", T0 + 50_000)]
    await store.insert_runner(RunnerRow("a", "alpha", '["hello_world"]', T0, T0 + 100))
    await store.insert_runner(RunnerRow("b", "beta", '["x"]', T0, T0 + 10))
    assert [r.name for r in await store.runners_seen(T0 + 50, 10)] == ["alpha"]


async def test_the_count_reads_the_type_index_only_on_sqlite(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "runpack.db"))
    await store.open()
    await store.close()
    with sqlite3.connect(store.path) as conn:
        params = {"job_types": json.dumps(["t"]), "priority": 0, "created_at": 0}
        plan = conn.execute(
            "EXPLAIN QUERY PLAN " + q.JOBS_AHEAD.sqlite, {**params, "id": "x", "limit": 5}
        ).fetchall()
    searches = [row[3] for row in plan if "jobs" in row[3] and "json_each" not in row[3]]
    assert searches and all("INDEX jobs_pending_type_idx (job_type=?" in s for s in searches), plan


def test_start_after_gives_the_jobs_ahead_to_the_slot_that_frees_first() -> None:
    assert start_after([], 3, 10) == 0
    assert start_after([0.0, 0.0], 0, 10) == 0
    assert start_after([0.0, 0.0], 1, 10) == 0  # the other slot is free
    assert start_after([4.0, 10.0], 0, 10) == 4
    assert start_after([4.0, 10.0], 1, 10) == 10
    assert start_after([4.0, 10.0], 2, 10) == 14
    assert start_after([2.0, 2.0], 3, 2) == 4  # as the end-to-end test's queue
    # Past the simulated jobs, the rest spread over the slots.
    assert start_after([0.0] * 4, 10_000, 1.0) == pytest.approx(2_500, abs=1)


def test_the_sentences() -> None:
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111)] == [
        "1st",
        "2nd",
        "3rd",
        "4th",
        "11th",
        "12th",
        "13th",
        "21st",
        "22nd",
        "101st",
        "111th",
    ]
    state = QueueState(position=3, runners=1, slots=2, estimated_start_s=40.2, message="")
    assert in_line(state, "t") == "3rd in line, about 40 s"
    state["estimated_start_s"] = None
    assert in_line(state, "t") == "3rd in line; no recent run of t to estimate its start from"
    state.update(position=1001, position_capped=True, estimated_start_s=7200.0)
    assert in_line(state, "t") == "more than 1,000 jobs ahead, at least about 2.0 h"
    runners = [
        Able("1", "a", frozenset({"hello_world"}), 1, True),
        Able("2", "b", frozenset({"x", "y"}), 1, False),
    ]
    assert no_runner("z", runners) == (
        "no connected runner handles job type z; runners connected: a (hello_world), b (x, y)"
    )
    assert no_runner("z", []) == "no connected runner handles job type z; no runner is connected"
