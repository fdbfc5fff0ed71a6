"""Shared fixtures: a real app on a real SQLite file, keys, and helpers."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from runpack.app import create_app
from runpack.appkeys import SERVICE
from runpack.service import JobService
from runpack.settings import Settings
from tests.pg import (
    ADMIN_DSN,
    dsn_for,
    fresh_database,
    require_postgres,
    unavailable,
    unreachable_reason,
)

SUBMIT_KEY = "test-submit-key"
RUNNER_KEY = "test-runner-key"
ADMIN_KEY = "test-admin-key"


@pytest.fixture(autouse=True)
def _logging_left_as_found() -> Iterator[None]:
    """Put the root logger back after each test: a command run in-process (``serve``,
    ``runpack-runner``) configures logging onto the test's captured output, which is
    closed once the test ends; later log lines would then fail to print."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--load-full",
        action="store_true",
        default=False,
        help="run tests/test_load.py at full size (1000 runner sockets and watchers)",
    )


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


SUBMIT = bearer(SUBMIT_KEY)
RUNNER = bearer(RUNNER_KEY)
ADMIN = bearer(ADMIN_KEY)


def _run(coro: Any) -> Any:
    """Run a coroutine to completion from sync code, even inside a running loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="session")
def pg_session_dsn() -> Iterator[str]:
    """One PostgreSQL database for the session; each test starts from empty tables."""
    reason = unreachable_reason()
    if reason is not None:
        unavailable(reason)
    name = f"runpack_test_session_{secrets.token_hex(4)}"
    _run(_admin_execute(f'CREATE DATABASE "{name}" TEMPLATE template0'))
    try:
        yield dsn_for(name)
    finally:
        _run(_admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _admin_execute(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _empty_tables(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        # Every table but schema_version, whatever migrations have added.
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            " AND tablename <> 'schema_version'"
        )
        if tables:
            names = ", ".join(f'"{row[0]}"' for row in tables)
            await conn.execute(f"TRUNCATE {names}")
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every behaviour test runs on both engines: a fresh SQLite file, or empty PostgreSQL."""
    if request.param == "sqlite":
        return str(tmp_path / "runpack.db")
    dsn: str = request.getfixturevalue("pg_session_dsn")
    _run(_empty_tables(dsn))
    return dsn


@pytest.fixture
def settings(tmp_path: Path, db: str) -> Settings:
    """Test settings: fixed keys, a fresh database, a sweeper that stays out of the way."""
    return Settings(
        db=db,
        data_dir=str(tmp_path / "data"),
        submit_api_key=SUBMIT_KEY,
        runner_api_key=RUNNER_KEY,
        admin_api_key=ADMIN_KEY,
        sweep_interval=3600.0,
        rate_new_jobs=0,
        rate_key_new_jobs=0,
        rate_requests=0,
        rate_available=0,
        rate_heartbeat=0,
        rate_registrations=0,
        # Runners are forgotten by the service clock, which tests move by hand: a pass
        # begun on the real clock would forget runners a test registers in 2023.
        runner_ttl=0,
    )


MakeClient = Callable[..., Any]


@pytest.fixture
def make_client(aiohttp_client: Any, settings: Settings) -> MakeClient:
    """``await make_client(**setting_changes)``: a test client on a real app."""

    async def make(**changes: Any) -> TestClient:
        return await aiohttp_client(create_app(settings.replace(**changes)))  # type: ignore[no-any-return]

    return make


@pytest.fixture
async def client(make_client: MakeClient) -> TestClient:
    return await make_client()  # type: ignore[no-any-return]


async def submit(client: TestClient, job_type: str = "hello_world", **params: Any) -> Any:
    resp = await client.post(
        "/api/jobs/submit",
        json={"job_type": job_type, "input_params": params or {"name": "Ada"}},
        headers=SUBMIT,
    )
    assert resp.status in (200, 201), await resp.text()
    return await resp.json()


async def register(client: TestClient, name: str = "r1", caps: list[str] | None = None) -> str:
    resp = await client.post(
        "/api/runner/register",
        json={"name": name, "capabilities": caps if caps is not None else ["hello_world"]},
        headers=RUNNER,
    )
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["runner_id"])


def as_runner(runner_id: str) -> dict[str, str]:
    return {**RUNNER, "X-Runner-ID": runner_id}


async def claim(client: TestClient, runner_id: str, job_id: str) -> Any:
    resp = await client.post(f"/api/runner/jobs/{job_id}/claim", headers=as_runner(runner_id))
    assert resp.status == 200, await resp.text()
    return await resp.json()


class Clock:
    """A service clock the test moves by hand (ms since epoch)."""

    def __init__(self, now: int = 1_700_000_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def service_of(client: TestClient) -> JobService:
    """The job service of a test client's app."""
    app = client.server.app
    assert app is not None
    return app[SERVICE]


def controlled_clock(client: TestClient) -> Clock:
    """Give the app's service a clock the test moves by hand."""
    clock = Clock()
    service_of(client).clock = clock
    return clock


@pytest.fixture(params=["sqlite", "postgres"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The --db of a real server process: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield str(tmp_path / "runpack.db")
        return
    require_postgres()
    async with fresh_database() as dsn:
        yield dsn
