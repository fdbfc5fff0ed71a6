"""Storage: one interface (:class:`Store`), one body of named statements
(:class:`runpack.store.sql.SqlStore`), and the SQLite and PostgreSQL engines under it."""

from __future__ import annotations

from runpack.store.base import JobRow, NewJob, RunnerRow, Store


def open_store(db: str) -> Store:
    """The store for a ``--db`` value: a postgresql:// DSN or a SQLite file path."""
    if db.startswith(("postgres://", "postgresql://")):
        try:
            from runpack.store.postgres import PostgresStore
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise SystemExit(
                "PostgreSQL support needs asyncpg: pip install 'runpack[postgres]'"
            ) from exc
        return PostgresStore(db)
    from runpack.store.sqlite import SqliteStore

    return SqliteStore(db)


__all__ = ["JobRow", "NewJob", "RunnerRow", "Store", "open_store"]
