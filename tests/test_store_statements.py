"""The named statements and the schema agree with the code's enums and with each engine.

Every statement is final once imported, prepares on each engine it names, and spells
states the way :class:`~runpack.protocol.JobStatus` does; the schema's CHECK
constraints hold exactly the states and the stored keys' roles.
"""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from pathlib import Path

import asyncpg
import pytest

from runpack.auth import KEY_ROLES
from runpack.protocol import JobStatus
from runpack.store import pg_batch, queries
from runpack.store.dialect import Statement, numbered
from runpack.store.postgres import PostgresStore
from runpack.store.sqlite import SqliteStore
from tests.pg import pg_dsn_fixture  # noqa: F401

STATEMENTS = {
    f"{module.__name__.rsplit('.', 1)[1]}.{name}": value
    for module in (queries, pg_batch)
    for name, value in vars(module).items()
    if isinstance(value, Statement)
}
_QUOTED = re.compile(r"'([a-z_]+)'")


def _has(stmt: Statement, engine: str) -> bool:
    try:
        getattr(stmt, engine)
    except TypeError:  # a statement of the other engine only
        return False
    return True


def texts(stmt: Statement) -> list[str]:
    return [getattr(stmt, engine) for engine in ("sqlite", "postgres") if _has(stmt, engine)]


def test_every_statement_is_final_text() -> None:
    assert len(STATEMENTS) > 40
    for name, stmt in STATEMENTS.items():
        for text in texts(stmt):
            assert "{" not in text and "}" not in text, name
        if stmt.order:
            pg = stmt.postgres
            assert not re.search(r"(?<!:):[a-z_]", pg), name  # every :name is a $n
            used = {int(n) for n in re.findall(r"\$(\d+)", pg)}
            assert used == set(range(1, len(stmt.order) + 1)), name


def test_numbered_keeps_casts_and_repeats() -> None:
    sql = "SELECT :a::text[], :b, :a WHERE x = ANY(:b)"
    assert numbered(sql) == ("SELECT $1::text[], $2, $1 WHERE x = ANY($2)", ("a", "b"))


def test_states_named_in_statements_are_job_states() -> None:
    states = {status.value for status in JobStatus}
    for name, stmt in STATEMENTS.items():
        for text in texts(stmt):
            assert set(_QUOTED.findall(text)) <= states, name


def _check_values(definition: str, column: str) -> set[str]:
    """The quoted values of the CHECK on ``column`` in a CREATE TABLE or constraint text."""
    match = re.search(rf"CHECK\s*\(+\s*{column}\b[^)]*\)", definition)
    assert match, definition
    return set(re.findall(r"'([a-z_]+)'", match.group(0)))


async def test_job_states_and_key_roles_match_the_schema_on_sqlite(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "runpack.db"))
    await store.open()
    await store.close()
    with closing(sqlite3.connect(tmp_path / "runpack.db")) as conn:
        tables = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'"))
    assert _check_values(tables["jobs"], "status") == {s.value for s in JobStatus}
    assert _check_values(tables["api_keys"], "role") == {r.value for r in KEY_ROLES}


async def test_job_states_and_key_roles_match_the_schema_on_postgres(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn)
    await store.open()
    await store.close()
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch(
            """SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint
               WHERE contype = 'c' AND conrelid IN ('jobs'::regclass, 'api_keys'::regclass)"""
        )
    finally:
        await conn.close()
    checks = {(table, d) for table, d in rows}
    status = [d for table, d in checks if table == "jobs" and "status" in d]
    role = [d for table, d in checks if table == "api_keys" and "role" in d]
    assert len(status) == len(role) == 1, checks
    assert set(re.findall(r"'([a-z_]+)'", status[0])) == {s.value for s in JobStatus}
    assert set(re.findall(r"'([a-z_]+)'", role[0])) == {r.value for r in KEY_ROLES}


async def test_every_statement_prepares_on_sqlite(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "runpack.db"))
    await store.open()
    await store.close()
    with closing(sqlite3.connect(tmp_path / "runpack.db")) as conn:
        for name, stmt in STATEMENTS.items():
            if not _has(stmt, "sqlite"):
                continue
            params = dict.fromkeys(re.findall(r"(?<!:):([a-z_][a-z0-9_]*)", stmt.sqlite))
            params.update(dict.fromkeys(stmt.arrays, "[]"))
            try:
                conn.execute("EXPLAIN " + stmt.sqlite, params)
            except sqlite3.Error as exc:
                pytest.fail(f"{name}: {exc}")


async def test_every_statement_prepares_on_postgres(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn)
    await store.open()
    await store.close()
    conn = await asyncpg.connect(pg_dsn)
    try:
        for name, stmt in STATEMENTS.items():
            if not _has(stmt, "postgres"):
                continue
            try:
                await conn.prepare(stmt.postgres)
            except asyncpg.PostgresError as exc:
                pytest.fail(f"{name}: {exc}")
    finally:
        await conn.close()
