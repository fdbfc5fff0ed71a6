"""Fresh PostgreSQL databases for tests, from the server at 127.0.0.1:5432.

Each test gets its own ``runpack_test_<random>`` database, created from
``template0`` as user ``postgres`` and dropped ``WITH (FORCE)`` afterwards, so
tests never see each other's rows and may run side by side.

A test that needs PostgreSQL while the server cannot be reached is skipped with
the reason, except under ``CI=true``, where it fails: CI must not turn green
without having run the PostgreSQL half of the suite.

Use the ``pg_dsn`` fixture or ``async with fresh_database() as dsn:``. To get the
fixture into a test module, import it as ``pg_dsn_fixture`` (``from tests.pg import
pg_dsn_fixture  # noqa: F401``): importing the name ``pg_dsn`` works for pytest
too, but ruff then reports F811 on every test that takes a ``pg_dsn`` parameter.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import NoReturn

import asyncpg
import pytest

HOST = "127.0.0.1"
PORT = 5432
USER = "postgres"
ADMIN_DATABASE = "postgres"
CONNECT_TIMEOUT = 5.0
PREFIX = "runpack_test_"


def dsn_for(database: str) -> str:
    return f"postgresql://{USER}@{HOST}:{PORT}/{database}"


ADMIN_DSN = dsn_for(ADMIN_DATABASE)


def required() -> bool:
    """Whether a missing PostgreSQL fails the test instead of skipping it (``CI=true``)."""
    return os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> NoReturn:
    """Skip the current test, or fail it under ``CI=true``."""
    message = f"PostgreSQL is not reachable at {ADMIN_DSN} ({reason})"
    if required():
        pytest.fail(f"{message}; CI=true requires it", pytrace=False)
    pytest.skip(message)


async def _probe() -> str | None:
    try:
        conn = await asyncpg.connect(ADMIN_DSN, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return None


def unreachable_reason() -> str | None:
    """Why PostgreSQL cannot be used, or None if it can. Safe inside a running loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, _probe()).result()


def postgres_available() -> bool:
    return unreachable_reason() is None


def require_postgres() -> None:
    """Skip (or, under ``CI=true``, fail) the calling test unless PostgreSQL is up."""
    reason = unreachable_reason()
    if reason is not None:
        unavailable(reason)


async def _admin() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(ADMIN_DSN, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
    unavailable(reason)  # outside the except: a clean report, no chained traceback


@asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """Create an empty database; yield its DSN; drop it (and its connections) after."""
    name = PREFIX + secrets.token_hex(6)
    admin = await _admin()
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    finally:
        await admin.close()
    try:
        yield dsn_for(name)
    finally:
        admin = await _admin()
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(name="pg_dsn")
async def pg_dsn_fixture() -> AsyncIterator[str]:
    """The DSN of a fresh, empty PostgreSQL database for this test."""
    async with fresh_database() as dsn:
        yield dsn


# Import either name. ``pg_dsn_fixture`` keeps ruff quiet in a module whose
# tests take a ``pg_dsn`` parameter (importing ``pg_dsn`` there trips F811).
pg_dsn = pg_dsn_fixture
