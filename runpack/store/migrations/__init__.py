"""Schema creation and ordered forward migrations.

A new database gets ``schema.sql``, the whole current schema, which records its
own version (keep it equal to the newest migration). An
existing one gets every ``NNNN_*.sql`` file in this folder whose number is above
its ``schema_version``, in order, each in the same transaction as its version row.

What the engines write differently (triggers) is in a migration's twin file named
for the engine, ``NNNN_name.sqlite.sql`` or ``NNNN_name.postgres.sql``, run right
after the file it completes. A new database gets the engine twins of every
migration after ``schema.sql`` (they are written to run on an empty database too),
so each trigger is defined in one place. PostgreSQL runs each file as one script;
SQLite one statement at a time.
"""

from __future__ import annotations

import re
import sqlite3
import time
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncpg

_STORE = resources.files("runpack.store")
SCHEMA_SQL = (_STORE / "schema.sql").read_text(encoding="utf-8")
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# pg_advisory_xact_lock key ("runpack" in ASCII): one migrator at a time per database.
PG_MIGRATION_LOCK = 0x72756E7061636B


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every forward migration, in order."""
    found = []
    for entry in (_STORE / "migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def twin(name: str, dialect: str) -> str:
    """The ``dialect`` twin of the migration file named ``name``, or ''."""
    path = (_STORE / "migrations").joinpath(name.removesuffix(".sql") + f".{dialect}.sql")
    return path.read_text(encoding="utf-8") if path.is_file() else ""


def engine_schema(dialect: str) -> str:
    """What a new ``dialect`` database gets after ``schema.sql``: every migration's twin."""
    return "\n".join(twin(name, dialect) for _, name, _ in migrations())


def latest_version() -> int:
    return max([1, *(v for v, _, _ in migrations())])


def split_statements(sql: str) -> list[str]:
    """Statements of a schema file for SQLite, comment lines left out.

    A statement ends with a semicolon at the end of a line, once SQLite finds it
    complete: a trigger's body (``BEGIN … END;``) is one statement.
    """
    statements: list[str] = []
    lines: list[str] = []
    for line in sql.splitlines():
        if line.strip().startswith("--"):
            continue
        lines.append(line)
        text = "\n".join(lines)
        if line.rstrip().endswith(";") and sqlite3.complete_statement(text):
            statements.append(text.strip().removesuffix(";").strip())
            lines = []
    rest = "\n".join(lines).strip()
    return [*statements, rest] if rest else statements


def apply_sqlite(conn: sqlite3.Connection) -> int:
    """Create or upgrade the schema; return the version now in place."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if not exists:
        for statement in split_statements(f"{SCHEMA_SQL}\n{engine_schema('sqlite')}"):
            conn.execute(statement)
    current: int = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 1
    for version, name, sql in migrations():
        if version <= current:
            continue
        for statement in split_statements(f"{sql}\n{twin(name, 'sqlite')}"):
            conn.execute(statement)
        conn.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
            (version, int(time.time() * 1000)),
        )
        current = version
    return current


async def apply_postgres(conn: asyncpg.Connection) -> int:
    """Create or upgrade the schema in one transaction; return the version now in place.

    Server instances starting together queue on a transaction-scoped advisory
    lock, so one creates or upgrades and the others then find nothing to do.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", PG_MIGRATION_LOCK)
        exists = await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
        if not exists:
            await conn.execute(f"{SCHEMA_SQL}\n{engine_schema('postgres')}")
        current: int = await conn.fetchval("SELECT MAX(version) FROM schema_version") or 1
        for version, name, sql in migrations():
            if version <= current:
                continue
            await conn.execute(f"{sql}\n{twin(name, 'postgres')}")
            await conn.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)",
                version,
                int(time.time() * 1000),
            )
            current = version
        return current
