"""SQLite: another process holding the write lock never stalls the event loop.

A ``runpack keys`` or ``runpack gc`` on the same file takes the write lock. The
server's writes then wait in line, off the loop, and go through once the lock is
free; reads and every other request are answered meanwhile. Past the store's
``lock_wait`` the waiting writes fail with a 503.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import pytest

from runpack.app import create_app
from runpack.errors import StoreError, StoreUnavailable
from runpack.settings import Settings
from runpack.store.base import NewJob
from runpack.store.sqlite import SqliteStore
from tests.conftest import ADMIN_KEY, RUNNER_KEY, SUBMIT, SUBMIT_KEY

T0 = 1_700_000_000_000
HOLD = 1.5
#: The longest the loop may go unanswered while the lock is held (seconds).
RESPONSIVE = 0.2


def new_job(job_hash: str | None = None) -> NewJob:
    return NewJob(
        id=str(uuid.uuid4()),
        job_hash=job_hash or uuid.uuid4().hex,
        job_type="hello_world",
        input_params="{}",
        priority=0,
        max_attempts=3,
        timeout=None,
        now=T0,
    )


@asynccontextmanager
async def write_lock_held(path: Path, seconds: float) -> AsyncIterator[None]:
    """Another connection (as another process would) holds the write lock for
    ``seconds``, from a thread of its own."""
    held = threading.Event()

    def hold() -> None:
        with closing(sqlite3.connect(path, isolation_level=None)) as conn:
            conn.execute("BEGIN IMMEDIATE")
            held.set()
            time.sleep(seconds)
            conn.execute("COMMIT")

    thread = threading.Thread(target=hold, name="other-process")
    thread.start()
    try:
        assert await asyncio.to_thread(held.wait, 5), "the lock was not taken"
        yield
    finally:
        await asyncio.to_thread(thread.join)


class LoopWatch:
    """Measures the longest stretch the event loop went without running a callback."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.005)  # a tick: how late it comes is the loop's lag
            self.longest = max(self.longest, loop.time() - before)

    async def __aenter__(self) -> LoopWatch:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.wait([self._task])


@asynccontextmanager
async def opened(path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(str(path))
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def test_writes_wait_off_the_loop_for_another_process_lock(tmp_path: Path) -> None:
    path = tmp_path / "runpack.db"
    async with opened(path) as store:
        known, _ = await store.insert_job(new_job())
        loop = asyncio.get_running_loop()
        async with LoopWatch() as watch, write_lock_held(path, HOLD):
            started = loop.time()
            writes = [asyncio.create_task(store.insert_job(new_job())) for _ in range(3)]
            touched = asyncio.create_task(store.claim(known.id, "r1", T0 + 1))
            while loop.time() - started < HOLD / 2:
                read_at = loop.time()
                assert await store.get_job(known.id) == known  # reads go on meanwhile
                assert loop.time() - read_at < RESPONSIVE
                await asyncio.sleep(0.05)
            assert not any(write.done() for write in [*writes, touched])
            results = await asyncio.gather(*writes)
            claimed = await touched
        waited = loop.time() - started
        assert waited >= HOLD * 0.8, "the writes did not wait for the lock"
        assert watch.longest < RESPONSIVE, f"the loop stalled for {watch.longest:.3f} s"
        assert all(created for _, created in results)
        assert claimed is not None and claimed.claimed_by == "r1"
    with closing(sqlite3.connect(path)) as conn:  # committed, in the order they came
        ids = [row[0] for row in conn.execute("SELECT id FROM jobs ORDER BY rowid")]
    assert ids == [known.id] + [job.id for job, _ in results]


async def test_writes_fail_with_503_past_the_lock_wait_then_work_again(tmp_path: Path) -> None:
    path = tmp_path / "runpack.db"
    async with opened(path) as store:
        store.lock_wait = 0.3
        job, _ = await store.insert_job(new_job())
        async with write_lock_held(path, 1.0):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as info:
                await store.claim(job.id, "r1", T0 + 1)
            assert 0.25 < time.monotonic() - started < 0.9
            assert info.value.status == 503
            assert "locked" in (info.value.details or "")
        assert await store.claim(job.id, "r1", T0 + 2) is not None  # the lock is free again
        assert await store.get_job(job.id) is not None


async def test_closing_the_store_fails_the_writes_waiting_for_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "runpack.db"
    store = SqliteStore(str(path))
    await store.open()
    async with write_lock_held(path, 0.5):
        waiting = asyncio.create_task(store.insert_job(new_job()))
        await asyncio.sleep(0.05)
        await store.close()
        with pytest.raises(StoreError):
            await waiting


async def test_the_server_answers_while_another_process_holds_the_lock(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    path = tmp_path / "runpack.db"
    settings = Settings(
        db=str(path),
        data_dir=str(tmp_path / "data"),
        submit_api_key=SUBMIT_KEY,
        runner_api_key=RUNNER_KEY,
        admin_api_key=ADMIN_KEY,
        sweep_interval=3600.0,
        rate_new_jobs=0,
        rate_key_new_jobs=0,
        rate_requests=0,
    )
    client = await aiohttp_client(create_app(settings))
    body = {"job_type": "hello_world", "input_params": {"name": "Ada"}}
    resp = await client.post("/api/jobs/submit", json=body, headers=SUBMIT)
    assert resp.status in (200, 201), await resp.text()
    job_id = (await resp.json())["job_id"]
    loop = asyncio.get_running_loop()
    async with LoopWatch() as watch, write_lock_held(path, HOLD):
        started = loop.time()
        other = {"job_type": "hello_world", "input_params": {"name": "Grace"}}
        submitting = asyncio.create_task(
            client.post("/api/jobs/submit", json=other, headers=SUBMIT)
        )
        for _ in range(5):
            asked = loop.time()
            resp = await client.get(f"/api/jobs/{job_id}", headers=SUBMIT)
            assert resp.status == 200, await resp.text()
            assert loop.time() - asked < RESPONSIVE
            await asyncio.sleep(0.1)
        assert not submitting.done()
        resp = await submitting
        assert resp.status in (200, 201), await resp.text()
    assert loop.time() - started >= HOLD * 0.8
    assert watch.longest < RESPONSIVE, f"the loop stalled for {watch.longest:.3f} s"
    submitted = (await resp.json())["job_id"]
    resp = await client.get(f"/api/jobs/{submitted}", headers=SUBMIT)
    assert resp.status == 200, await resp.text()
