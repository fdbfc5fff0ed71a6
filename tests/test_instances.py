"""Instances on one database, as real processes: the runners view is the same from
each, a dead instance's runners show as not connected, and ``runpack gc`` finds the
data directory the server recorded (or refuses, exit 2)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from runpack.presence import over_share
from runpack.store import open_store
from tests.pg import fresh_database, require_postgres
from tests.procs import KEYS, clean_env, running_runner, running_server, until
from tests.test_retention import row

#: Statements that take a current database back to before migration 0011 (undoing the
#: later ones first), for tests that rebuild an older database and upgrade it.
UNDO_INSTANCES = (
    "ALTER TABLE runners DROP COLUMN images",
    "DROP TABLE job_type_versions",
    "ALTER TABLE runners DROP COLUMN versions",
    "DROP TABLE instances",
    "ALTER TABLE runners DROP COLUMN instance",
    "ALTER TABLE runners DROP COLUMN transport",
    "ALTER TABLE runners DROP COLUMN concurrency",
)
ADMIN = {"Authorization": f"Bearer {KEYS['RUNPACK_ADMIN_API_KEY']}"}
HOUR = 3_600_000


@pytest.fixture
async def dsn() -> AsyncIterator[str]:
    require_postgres()
    async with fresh_database() as url:
        yield url


async def view(http: aiohttp.ClientSession, url: str, path: str = "") -> Any:
    async with http.get(f"{url}/api/admin/runners{path}", headers=ADMIN) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def without_last_seen(body: Any) -> Any:
    """A view without ``last_seen``, which every connected runner's instance refreshes."""
    runners = body.get("runners", [body])
    return [{k: v for k, v in r.items() if k != "last_seen"} for r in runners]


async def test_runners_view_is_the_same_from_both_instances(tmp_path: Path, dsn: str) -> None:
    env = {**KEYS, "RUNPACK_DB": dsn, "RUNPACK_PRESENCE_INTERVAL": "1"}
    with (
        running_server(tmp_path / "a", env=env) as a,
        running_server(tmp_path / "b", env=env) as b,
        running_runner(tmp_path / "ra", a.url, "--name", "on-a", "--concurrency", "2"),
        running_runner(tmp_path / "rb", b.url, "--name", "on-b") as rb,
    ):
        async with aiohttp.ClientSession() as http:

            async def both_connected() -> Any:
                body = await view(http, a.url)
                return body if sum(r["connected"] for r in body["runners"]) == 2 else None

            body = await until(both_connected, "both runners connected in A's view")
            by_name = {r["name"]: r for r in body["runners"]}
            assert by_name["on-a"]["instance"] != by_name["on-b"]["instance"]
            assert (by_name["on-a"]["concurrency"], by_name["on-b"]["concurrency"]) == (2, 1)
            assert by_name["on-a"]["transport"] == "websocket"
            assert without_last_seen(await view(http, b.url)) == without_last_seen(body)
            runner_id = by_name["on-b"]["runner_id"]
            one_a = await view(http, a.url, f"/{runner_id}")
            one_b = await view(http, b.url, f"/{runner_id}")
            assert one_a["connected"] and without_last_seen(one_a) == without_last_seen(one_b)

            # B dies without a word: after three presence intervals its runner is shown
            # as not connected, from A too (the runner cannot reach B to come back).
            b.popen.send_signal(signal.SIGKILL)
            b.popen.wait()
            rb.popen.terminate()

            async def b_runner_gone() -> bool:
                runners = {r["name"]: r for r in (await view(http, a.url))["runners"]}
                return not runners["on-b"]["connected"] and runners["on-a"]["connected"]

            await until(b_runner_gone, "B's runner shown as not connected", 15)
            gone = await view(http, a.url, f"/{runner_id}")
            assert "instance" not in gone


# --- runpack gc and the data directory --------------------------------------------------------


def gc(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runpack.cli", "gc", *args],
        cwd=cwd,
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=60,
    )


async def old_job_with_figure(db: str, data_dir: Path) -> Path:
    """A job finished two hours ago, with a figure folder under ``data_dir``."""
    store = open_store(db)
    await store.open()
    try:
        job = row("completed", int(time.time() * 1000) - 2 * HOUR)
        await store.import_jobs([job])
    finally:
        await store.close()
    figure = data_dir / "figures" / job.id
    figure.mkdir(parents=True)
    (figure / "index.html").write_bytes(b"x" * 4096)
    two_hours_ago = time.time() - 2 * HOUR / 1000
    os.utime(figure, (two_hours_ago, two_hours_ago))  # uploaded when the job finished
    return figure


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
async def test_gc_finds_the_data_directory_the_server_recorded(tmp_path: Path, engine: str) -> None:
    """The server's unit sets RUNPACK_DATA_DIR; gc from a shell does not, and still
    removes the server's figures (it said "figures removed 0" before)."""
    if engine == "sqlite":
        await gc_after_the_server(tmp_path, str(tmp_path / "runpack.db"))
        return
    require_postgres()
    async with fresh_database() as dsn:
        await gc_after_the_server(tmp_path, dsn)


async def gc_after_the_server(tmp_path: Path, db: str) -> None:
    data_dir = tmp_path / "srv" / "data"
    env = {**KEYS, "RUNPACK_DB": db, "RUNPACK_DATA_DIR": str(data_dir)}
    with running_server(tmp_path / "srv", env=env):
        pass  # started (it records where its data is) and stopped
    figure = await old_job_with_figure(db, data_dir)
    shell = tmp_path / "elsewhere"
    shell.mkdir()

    dry = gc("--db", db, "--figure-ttl", "60", "--dry-run", cwd=shell)
    assert dry.returncode == 0, dry.stderr
    assert f"Data directory: {data_dir}" in dry.stdout
    assert "figures to remove  1" in dry.stdout
    done = gc("--db", db, "--figure-ttl", "60", cwd=shell)
    assert done.returncode == 0, done.stderr
    assert "figures removed    1 (4.0 KiB freed)" in done.stdout
    assert not figure.exists()


def test_gc_refuses_without_a_reachable_data_directory(tmp_path: Path) -> None:
    db = tmp_path / "runpack.db"
    with closing(sqlite3.connect(db)):
        pass
    asyncio.run(_migrate(str(db)))
    before = db.read_bytes()

    nobody = gc("--db", str(db), "--figure-ttl", "60", cwd=tmp_path)
    assert nobody.returncode == 2
    assert "no server on" in nobody.stderr and "--data-dir" in nobody.stderr
    assert "figures removed" not in nobody.stdout

    missing = tmp_path / "not-here"
    given = gc("--db", str(db), "--result-ttl", "60", "--data-dir", str(missing), cwd=tmp_path)
    assert given.returncode == 2
    assert f"the data directory {missing} does not exist" in given.stderr
    via_env = gc(
        "--db", str(db), "--figure-ttl", "1", cwd=tmp_path, env={"RUNPACK_DATA_DIR": str(missing)}
    )
    assert via_env.returncode == 2 and str(missing) in via_env.stderr
    assert db.read_bytes() == before  # nothing was deleted

    # A server on another machine recorded a folder that is not here.
    asyncio.run(_record(str(db), "/srv/elsewhere/runpack-data"))
    away = gc("--db", str(db), "--figure-ttl", "60", cwd=tmp_path)
    assert away.returncode == 2 and "/srv/elsewhere/runpack-data" in away.stderr


async def _migrate(db: str) -> None:
    store = open_store(db)
    await store.open()
    await store.close()


async def _record(db: str, data_dir: str) -> None:
    store = open_store(db)
    await store.open()
    try:
        await store.register_instance("elsewhere", "other-host", data_dir, int(time.time() * 1000))
    finally:
        await store.close()


def test_the_server_records_an_absolute_data_directory(tmp_path: Path) -> None:
    db = tmp_path / "runpack.db"
    env = {**KEYS, "RUNPACK_DB": str(db), "RUNPACK_DATA_DIR": "relative-data"}
    with running_server(tmp_path, env=env), closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT data_dir, stopped_at FROM instances").fetchall()
    assert rows == [(str(tmp_path / "relative-data"), None)]
    assert (tmp_path / "relative-data").is_dir()
    with closing(sqlite3.connect(db)) as conn:
        stopped = conn.execute("SELECT stopped_at FROM instances").fetchall()
    assert stopped[0][0] is not None
    assert os.path.isabs(rows[0][0])


@pytest.mark.parametrize(
    ("mine", "total", "instances", "sent"),
    [
        (6, 6, 2, 3),  # after a failover: down to an even share
        (30, 30, 3, 20),
        (4, 6, 2, 0),  # one above its share: left alone
        (11, 30, 3, 0),  # one above a share of 10
        (12, 30, 3, 2),  # two above: at least 2, and a tenth of the share
        (110, 300, 3, 10),
        (109, 300, 3, 0),  # nine above a share of 100: less than a tenth
        (5, 5, 1, 0),  # alone: nowhere to send them
        (0, 0, 3, 0),
    ],
)
def test_an_instance_sends_away_what_is_above_its_share(
    mine: int, total: int, instances: int, sent: int
) -> None:
    assert over_share(mine, total, instances) == sent
