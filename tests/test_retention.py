"""Retention (the TTLs, the server's pass, ``runpack gc``) and ``runpack backup``.

The pass runs on both engines against rows written with chosen states and ages;
the cache and figure tests go through the real app, and the command tests run
``runpack gc`` and ``runpack backup`` as processes, the backup one beside a real
``runpack serve`` that keeps taking submits while it copies.
"""

from __future__ import annotations

import asyncio
import io
import sqlite3
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from runpack.appkeys import FIGURES, SERVICE
from runpack.artifacts import FigureStore
from runpack.cache import ResultCache
from runpack.notify import EventKind, ServerEvent
from runpack.protocol import JobStatus
from runpack.retention import Retention, RetentionPolicy
from runpack.service.core import now_ms
from runpack.settings import Settings
from runpack.store import JobRow, RunnerRow, Store, open_store
from runpack.store.sqlite import SqliteStore
from tests.conftest import ADMIN, SUBMIT, MakeClient, as_runner, claim, register, service_of, submit
from tests.procs import KEYS, NO_LIMITS, clean_env, running_server

NOW = 1_700_000_000_000
MINUTE = 60_000
HOUR = 60 * MINUTE
FIGURE_JOB = "figure_job"
FIGURE_FILES = {"index.html": b"<!doctype html><title>figure</title>", "data.bin": bytes(300)}


# --- rows with chosen states and ages --------------------------------------------------------


def row(status: str, updated_at: int, **changes: Any) -> JobRow:
    job_id = str(uuid.uuid4())
    base = JobRow(
        id=job_id,
        job_hash=uuid.uuid4().hex,
        job_type="hello_world",
        input_params="{}",
        status=status,
        priority=0,
        attempts=1,
        max_attempts=3,
        not_before=0,
        timeout=None,
        created_at=updated_at - MINUTE,
        updated_at=updated_at,
        claimed_by="runner-1" if status in ("claimed", "in_progress") else None,
        claimed_at=None,
        last_heartbeat=updated_at if status in ("claimed", "in_progress") else None,
        progress_current=None,
        progress_total=None,
        console_output=f"console of a {status} job",
        output_data='{"answer": 42}' if status == "completed" else None,
        error_message="boom" if status == "failed" else None,
    )
    return replace(base, **changes)


@pytest.fixture
async def store(db: str) -> AsyncIterator[Store]:
    s = open_store(db)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


class Recorder:
    """The events a pass publishes."""

    def __init__(self) -> None:
        self.events: list[ServerEvent] = []

    def __call__(self, event: ServerEvent) -> None:
        self.events.append(event)

    def ids(self, kind: str) -> set[str]:
        return {e.job_id for e in self.events if e.type == kind and e.job_id}


def retention(store: Store, policy: RetentionPolicy, **kwargs: Any) -> tuple[Retention, Recorder]:
    r = Retention(store, policy, clock=lambda: NOW, **kwargs)
    recorder = Recorder()
    r.notifier.subscribe(recorder)
    return r, recorder


async def all_jobs(store: Store) -> dict[str, JobRow]:
    return {j.id: j for j in await store.list_jobs(None, None, 10_000, 0)}


def ages() -> list[JobRow]:
    """Every state at three ages: 3 hours, 90 minutes and 1 minute old."""
    return [
        row(status, NOW - age) for status in JobStatus for age in (3 * HOUR, 90 * MINUTE, MINUTE)
    ]


POLICY = RetentionPolicy(result_ttl=2 * 3600, failure_ttl=3600, console_ttl=3600)


# --- the pass on both engines ---------------------------------------------------------------


async def test_pass_deletes_and_clears_by_state_and_age(store: Store) -> None:
    rows = ages()
    await store.import_jobs(rows)
    r, recorder = retention(store, POLICY)

    report = await r.run()

    def ids(statuses: tuple[str, ...], older_than: int) -> set[str]:
        return {j.id for j in rows if j.status in statuses and j.updated_at < NOW - older_than}

    gone = ids(("completed", "expired"), 2 * HOUR) | ids(("failed", "cancelled"), HOUR)
    assert report.deleted == {"completed": 1, "failed": 2, "expired": 1, "cancelled": 2}
    left = await all_jobs(store)
    assert set(left) == {j.id for j in rows} - gone
    assert recorder.ids("job_deleted") == gone
    # Consoles of the finished jobs that stay and are over an hour old: the 90-minute
    # completed and expired ones. Their jobs keep every other field, updated_at too.
    cleared = ids(("completed", "expired"), HOUR) - gone
    assert report.consoles == len(cleared) == 2
    assert recorder.ids(EventKind.JOB_CONSOLE_CLEARED) == cleared
    for job in rows:
        if job.id in cleared:
            assert left[job.id] == replace(job, console_output=None)
        elif job.id in left:
            assert left[job.id] == job  # untouched, running and pending ones included
    active = {j.id for j in rows if j.status in ("pending", "claimed", "in_progress")}
    assert active <= set(left) and len(active) == 9

    again = await r.run()
    assert not again.changed


async def test_dry_run_counts_what_the_pass_then_does_and_changes_nothing(
    store: Store, tmp_path: Path
) -> None:
    rows = ages()
    await store.import_jobs(rows)
    await store.insert_runner(RunnerRow("old-runner", "old", "[]", NOW - 3 * HOUR, NOW - 3 * HOUR))
    figures = FigureStore(tmp_path / "figures", "http://127.0.0.1:8080", 10**9, 1000)
    old_completed = next(j for j in rows if j.status == "completed")
    old_running = next(j for j in rows if j.status == "in_progress")
    for job in (old_completed, old_running):
        folder = figures.root / job.id
        folder.mkdir(parents=True)
        (folder / "index.html").write_bytes(b"x" * 100)
    policy = replace(POLICY, runner_ttl=3600)
    before = await all_jobs(store)

    dry = await retention(store, policy, figures=figures)[0].run(dry_run=True)
    assert await all_jobs(store) == before
    assert await store.get_runner("old-runner") is not None
    assert (figures.root / old_completed.id / "index.html").exists()

    done = await retention(store, policy, figures=figures)[0].run()
    assert dry == replace(done, dry_run=True)
    assert (dry.jobs, dry.consoles, dry.figures, dry.bytes_freed, dry.runners) == (
        6,
        2,
        1,
        100,
        1,
    )
    assert not (figures.root / old_completed.id).exists()
    assert (figures.root / old_running.id / "index.html").exists()
    assert await store.get_runner("old-runner") is None
    assert "Dry run: nothing was changed." in dry.render()
    assert "jobs deleted       6 (completed 1, failed 2, expired 1, cancelled 2)" in done.render()


class Spy:
    """A store that records how many rows each retention statement returned."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.deleted: list[int] = []
        self.cleared: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def delete_finished(self, status: str, before: int, limit: int) -> list[str]:
        ids = await self._store.delete_finished(status, before, limit)
        self.deleted.append(len(ids))
        return ids

    async def clear_consoles(
        self, status: str, since: int, before: int, limit: int
    ) -> list[tuple[str, int]]:
        rows = await self._store.clear_consoles(status, since, before, limit)
        self.cleared.append(len(rows))
        return rows


async def test_rows_go_in_bounded_batches_until_none_is_left(store: Store) -> None:
    old = [row("completed", NOW - 3 * HOUR - i) for i in range(10)]
    # Seven consoles that finished in the same millisecond: batches resume at it.
    same = [row("failed", NOW - 2 * HOUR) for _ in range(7)]
    running = [row("in_progress", NOW - 3 * HOUR) for _ in range(2)]
    await store.import_jobs([*old, *same, *running])
    spy = Spy(store)
    policy = RetentionPolicy(result_ttl=3600, console_ttl=3600)
    r, _ = retention(spy, policy, batch=3)  # type: ignore[arg-type]

    report = await r.run()

    assert report.deleted["completed"] == 10
    assert spy.deleted == [3, 3, 3, 1, 0]  # completed, then expired
    assert report.consoles == 7
    assert spy.cleared == [0, 3, 3, 1, 0, 0]  # completed, failed 3 times, expired, cancelled
    left = await all_jobs(store)
    assert set(left) == {j.id for j in [*same, *running]}
    assert all(left[j.id].console_output is None for j in same)
    assert all(left[j.id].console_output for j in running)


async def test_idle_runners_are_forgotten_unless_they_hold_a_job(store: Store) -> None:
    for name, seen in (("idle", NOW - 3 * HOUR), ("busy", NOW - 3 * HOUR), ("recent", NOW)):
        await store.insert_runner(RunnerRow(name, name, "[]", seen, seen))
    await store.import_jobs([row("claimed", NOW - 3 * HOUR, claimed_by="busy")])
    r, _ = retention(store, RetentionPolicy(runner_ttl=3600))

    assert (await r.run(dry_run=True)).runners == 1
    assert (await r.run()).runners == 1
    assert {x.id for x in await store.list_runners()} == {"busy", "recent"}


# --- through the real app: the cache and the figures -----------------------------------------


async def completed_job(client: TestClient, name: str = "Ada") -> str:
    job_id = str((await submit(client, name=name))["job_id"])
    runner = await register(client)
    await claim(client, runner, job_id)
    resp = await client.post(
        f"/api/runner/jobs/{job_id}/complete",
        json={"output_data": {"greeting": f"Hello, {name}!"}, "console_output": "hi"},
        headers=as_runner(runner),
    )
    assert resp.status == 200, await resp.text()
    return job_id


def app_retention(client: TestClient, policy: RetentionPolicy, later_ms: int) -> Retention:
    """A pass on the app's own store, figures and events, ``later_ms`` from now."""
    app = client.app
    assert app is not None
    service = app[SERVICE]
    return Retention(
        service.store,
        policy,
        figures=app[FIGURES],
        notifier=service.notifier,
        clock=lambda: now_ms() + later_ms,
    )


async def test_a_deleted_result_leaves_the_cache_and_is_computed_again(
    client: TestClient,
) -> None:
    job_id = await completed_job(client)
    cached = await submit(client)
    assert cached["job_id"] == job_id and cached["status"] == "completed"
    service = service_of(client)
    assert len(service.results) == 1  # the next submit would be answered from memory

    report = await app_retention(client, RetentionPolicy(result_ttl=60), HOUR).run()

    assert report.deleted["completed"] == 1
    assert len(service.results) == 0
    assert (await client.get(f"/api/jobs/{job_id}", headers=SUBMIT)).status == 404
    resp = await client.post(
        "/api/jobs/submit",
        json={"job_type": "hello_world", "input_params": {"name": "Ada"}},
        headers=SUBMIT,
    )
    assert resp.status == 201
    fresh = await resp.json()
    assert fresh["job_id"] != job_id and fresh["status"] == "pending"


def tar_of(files: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


async def figure_job(client: TestClient, settings: Settings, url: str, *, finish: bool) -> str:
    """A figure job with its files uploaded; completed when ``finish``, else running."""
    resp = await client.post(
        "/api/jobs/submit",
        json={"job_type": FIGURE_JOB, "input_params": {"nwb_url": url}},
        headers=SUBMIT,
    )
    job_id = str((await resp.json())["job_id"])
    runner = await register(client, caps=[FIGURE_JOB])
    await claim(client, runner, job_id)
    headers = {**as_runner(runner), "Content-Type": "application/x-tar"}
    files = {**FIGURE_FILES, "own.bin": own_bytes(url)}
    up = await client.post(f"/api/runner/jobs/{job_id}/files", data=tar_of(files), headers=headers)
    assert up.status == 201, await up.text()
    if finish:
        figure_url = f"{settings.base_url}/figures/{job_id}/index.html"
        done = await client.post(
            f"/api/runner/jobs/{job_id}/complete",
            json={"output_data": {"figpack_url": figure_url}},
            headers=as_runner(runner),
        )
        assert done.status == 200, await done.text()
    return job_id


def own_bytes(url: str) -> bytes:
    """A file only this figure holds (its others are the same in every figure)."""
    return url.encode() * 100


def blob_files(root: Path) -> set[str]:
    return {p.name for p in (root / "blobs").rglob("*") if p.is_file() and p.name != ".lock"}


async def test_removed_figures_make_the_next_submit_compute_again(
    client: TestClient, settings: Settings
) -> None:
    root = Path(settings.data_dir) / "figures"
    done = await figure_job(client, settings, "https://x/done.nwb", finish=True)
    running = await figure_job(client, settings, "https://x/running.nwb", finish=False)
    orphan = root / str(uuid.uuid4())  # a folder whose job is gone (left by a crash)
    orphan.mkdir()
    (orphan / "index.html").write_bytes(b"old")
    # The done figure's own file goes; those it shares with the running one stay.
    expected_bytes = len(own_bytes("https://x/done.nwb")) + 3
    assert len(blob_files(root)) == len(FIGURE_FILES) + 2
    cached = await submit(client, FIGURE_JOB, nwb_url="https://x/done.nwb")
    assert cached["status"] == "completed"

    # Two minutes on with a one-minute TTL: the finished job's figure is due.
    report = await app_retention(client, RetentionPolicy(figure_ttl=60), 2 * MINUTE).run()

    assert report.figures == 2
    assert report.blobs == 1
    assert report.bytes_freed == expected_bytes
    assert not (root / "manifests" / f"{done}.json").exists() and not orphan.exists()
    assert (root / "manifests" / f"{running}.json").exists()  # its job is still running
    assert len(blob_files(root)) == len(FIGURE_FILES) + 1
    assert (await client.get(f"/figures/{running}/index.html")).status == 200
    detail = await client.get(f"/api/admin/jobs/{done}", headers=ADMIN)
    assert (await detail.json())["status"] == "completed"  # the job stays
    assert (await client.get(f"/figures/{done}/index.html")).status == 404
    resp = await client.post(
        "/api/jobs/submit",
        json={"job_type": FIGURE_JOB, "input_params": {"nwb_url": "https://x/done.nwb"}},
        headers=SUBMIT,
    )
    assert resp.status == 201  # the cached result no longer validates: queued again
    assert (await resp.json())["job_id"] == done


async def test_the_server_runs_the_pass_every_gc_interval(make_client: MakeClient) -> None:
    client = await make_client(result_ttl=60.0, gc_interval=0.05)
    job_id = await completed_job(client)
    service = service_of(client)
    deleted: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_event(event: ServerEvent) -> None:
        if event.type == "job_deleted" and event.job_id == job_id and not deleted.done():
            deleted.set_result(None)

    service.notifier.subscribe(on_event)
    service.clock = lambda: now_ms() + HOUR  # the job is now an hour old
    await asyncio.wait_for(deleted, 10)
    assert (await client.get(f"/api/jobs/{job_id}", headers=SUBMIT)).status == 404
    assert "runpack-retention" in {t.get_name() for t in asyncio.all_tasks()}


def test_cache_entries_are_read_again_after_max_age() -> None:
    now = [100.0]
    cache = ResultCache(max_age=60.0, clock=lambda: now[0])
    job = row("completed", NOW)
    cache.put(job)
    now[0] += 59.9
    assert cache.get(job.job_hash) == job
    now[0] += 0.1
    assert cache.get(job.job_hash) is None
    assert len(cache) == 0


# --- runpack gc --------------------------------------------------------------------------------


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runpack.cli", *args],
        cwd=cwd,
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def sqlite_rows(path: Path) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT * FROM jobs ORDER BY id").fetchall()


async def test_gc_dry_run_changes_nothing_then_gc_does_it(tmp_path: Path) -> None:
    db = tmp_path / "runpack.db"
    store = SqliteStore(str(db))
    await store.open()
    now = now_ms()
    old = row("completed", now - 3 * HOUR)
    rows = [old, row("failed", now - 3 * HOUR), row("completed", now), row("pending", 0)]
    await store.import_jobs(rows)
    await store.close()
    figure = tmp_path / "data" / "figures" / old.id
    figure.mkdir(parents=True)
    (figure / "index.html").write_bytes(b"x" * 2048)
    before = sqlite_rows(db)
    args = ("gc", "--db", str(db), "--data-dir", str(tmp_path / "data"), "--result-ttl", "3600")
    env = {"RUNPACK_FAILURE_TTL": "3600"}

    dry = cli(*args, "--dry-run", cwd=tmp_path, env=env)
    assert dry.returncode == 0, dry.stderr
    assert "Dry run: nothing was changed." in dry.stdout
    assert "jobs to delete     2 (completed 1, failed 1, expired 0, cancelled 0)" in dry.stdout
    assert "figures to remove  1 (2.0 KiB to free)" in dry.stdout
    assert sqlite_rows(db) == before
    assert (figure / "index.html").exists()

    done = cli(*args, cwd=tmp_path, env={**env, "RUNPACK_RESULT_TTL": "0"})  # the flag wins
    assert done.returncode == 0, done.stderr
    assert "jobs deleted       2 (completed 1, failed 1, expired 0, cancelled 0)" in done.stdout
    assert "figures removed    1 (2.0 KiB freed)" in done.stdout
    assert {r[0] for r in sqlite_rows(db)} == {rows[2].id, rows[3].id}
    assert not figure.exists()


def test_gc_without_a_ttl_or_a_database_does_nothing(tmp_path: Path) -> None:
    # Every TTL off, the input and runner TTLs (on by default) too.
    off = ("--input-ttl", "0", "--runner-ttl", "0")
    idle = cli("gc", "--db", str(tmp_path / "x.db"), *off, cwd=tmp_path)
    assert idle.returncode == 0 and "no TTL is set" in idle.stdout
    missing = cli("gc", "--db", str(tmp_path / "x.db"), "--result-ttl", "1", cwd=tmp_path)
    assert missing.returncode == 2 and "no SQLite database" in missing.stderr
    assert not (tmp_path / "x.db").exists()


async def test_gc_run_elsewhere_reaches_the_servers_cache(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    """Another process deletes a cached job: PostgreSQL instances hear of it at once; a
    SQLite server reads the job again once its cache entry is a minute old."""
    job_id = await completed_job(client)
    assert (await submit(client))["status"] == "completed"
    service = service_of(client)
    assert len(service.results) == 1
    heard: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_event(event: ServerEvent) -> None:
        if event.type == "job_deleted" and event.job_id == job_id and not heard.done():
            heard.set_result(None)

    service.notifier.subscribe(on_event)
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "runpack.cli", "gc", "--db", settings.db),
        *("--data-dir", settings.data_dir, "--result-ttl", "0.001"),
        cwd=tmp_path,
        env=clean_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert b"jobs deleted       1" in out
    if settings.db.startswith("postgresql://"):
        await asyncio.wait_for(heard, 10)
        assert len(service.results) == 0
    else:
        assert len(service.results) == 1  # nothing told it
        later = time.monotonic() + service.results.max_age
        service.results.clock = lambda: later
    resp = await client.post(
        "/api/jobs/submit",
        json={"job_type": "hello_world", "input_params": {"name": "Ada"}},
        headers=SUBMIT,
    )
    assert resp.status == 201
    assert (await resp.json())["job_id"] != job_id


# --- runpack backup ------------------------------------------------------------------------------


class Submitter(threading.Thread):
    """Submits distinct jobs to a server until stopped; remembers every acknowledged id."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.ids: list[str] = []
        self.errors: list[str] = []
        self.busy = threading.Event()  # set once writes are flowing
        self.halt = threading.Event()

    def submit(self, n: int) -> str:
        body = orjson.dumps({"job_type": "hello_world", "input_params": {"name": f"n{n}"}})
        request = urllib.request.Request(
            self.url + "/api/jobs/submit",
            data=body,
            headers={
                "Authorization": "Bearer " + KEYS["RUNPACK_SUBMIT_API_KEY"],
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            return str(orjson.loads(resp.read())["job_id"])

    def run(self) -> None:
        n = 0
        while not self.halt.is_set():
            try:
                self.ids.append(self.submit(n))
            except Exception as exc:  # reported by the test
                self.errors.append(repr(exc))
                return
            n += 1
            if n == 20:
                self.busy.set()


@pytest.fixture
def writing_server(tmp_path: Path) -> Iterator[tuple[Path, Submitter, list[str]]]:
    """A real server on a SQLite file, 50 jobs in, and a thread still submitting more."""
    server_dir = tmp_path / "server"
    env = {
        **KEYS,
        **NO_LIMITS,
    }
    with running_server(server_dir, env, ("--db", "runpack.db")) as server:
        writer = Submitter(server.url)
        first = [writer.submit(10_000 + i) for i in range(50)]
        writer.start()
        assert writer.busy.wait(30), writer.errors
        try:
            yield server_dir / "runpack.db", writer, first
        finally:
            writer.halt.set()
            writer.join(30)


async def test_backup_while_the_server_writes_is_a_valid_copy(
    writing_server: tuple[Path, Submitter, list[str]], tmp_path: Path
) -> None:
    db, writer, first = writing_server
    copy = tmp_path / "backup.db"
    acknowledged = len(writer.ids)
    result = await asyncio.to_thread(cli, "backup", str(copy), "--db", str(db), cwd=tmp_path)
    writer.halt.set()
    await asyncio.to_thread(writer.join, 30)
    assert result.returncode == 0, result.stderr
    assert not writer.errors, writer.errors
    assert len(writer.ids) > acknowledged  # submits went on while the copy was taken
    assert "integrity check ok" in result.stdout
    assert f"-> {copy}" in result.stdout
    leftovers = await asyncio.to_thread(lambda: list(tmp_path.glob(".backup.db.*")))
    assert leftovers == []  # no temporary file left

    with closing(sqlite3.connect(copy)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    store = SqliteStore(str(copy))  # the server's own store opens it
    await store.open()
    try:
        total = sum((await store.count_jobs()).values())
        for job_id in first + writer.ids[:acknowledged]:
            assert await store.get_job(job_id) is not None
    finally:
        await store.close()
    assert len(first) + acknowledged <= total <= len(first) + len(writer.ids)
    assert f"{total} jobs" in result.stdout


def test_backup_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    db = tmp_path / "runpack.db"
    assert cli("migrate", "--db", str(db), cwd=tmp_path).returncode == 0
    target = tmp_path / "existing.db"
    target.write_bytes(b"precious")

    refused = cli("backup", str(target), "--db", str(db), cwd=tmp_path)
    assert refused.returncode == 2
    assert "exists: pass --force" in refused.stderr
    assert target.read_bytes() == b"precious"

    forced = cli("backup", str(target), "--db", str(db), "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert "0 jobs" in forced.stdout
    with closing(sqlite3.connect(target)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_backup_of_postgres_or_of_nothing_says_why(tmp_path: Path) -> None:
    target = tmp_path / "copy.db"
    pg = cli("backup", str(target), "--db", "postgresql://runpack@127.0.0.1:1/x", cwd=tmp_path)
    assert pg.returncode == 2
    assert "pg_dump" in pg.stderr and "SQLite databases only" in pg.stderr
    missing = cli("backup", str(target), "--db", str(tmp_path / "none.db"), cwd=tmp_path)
    assert missing.returncode == 2 and "no SQLite database" in missing.stderr
    assert not target.exists() and not (tmp_path / "none.db").exists()
