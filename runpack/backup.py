"""``runpack backup PATH``: a consistent copy of a SQLite database, taken online.

SQLite's backup API copies the database in one step, inside one read
transaction: in WAL mode the server keeps writing meanwhile, and the copy is the
database as of the moment the step began, whatever commits land during it. The
copy is written to a temporary file beside PATH, switched out of WAL mode (one
self-contained file), checked with ``PRAGMA integrity_check``, flushed to disk,
and only then given its name, so PATH is never half written. An existing PATH
is replaced only with ``--force``.

PostgreSQL has its own tools for this: ``pg_dump`` (see docs/deployment.md).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from runpack.retention import human_bytes


class BackupError(Exception):
    """A backup that could not be made; ``status`` is the command's exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Copy:
    path: Path
    bytes: int
    jobs: int
    schema_version: int

    def render(self, source: str) -> str:
        return (
            f"{source} -> {self.path}: {human_bytes(self.bytes)}, {self.jobs} jobs, "
            f"schema version {self.schema_version}, integrity check ok"
        )


def backup_sqlite(source: Path, target: Path, *, force: bool = False) -> Copy:
    """Copy the SQLite database ``source`` to ``target``; raise BackupError if not done."""
    if not source.is_file():
        raise BackupError(f"no SQLite database at {source}", status=2)
    if target.is_dir():
        raise BackupError(f"{target} is a folder: give the path of the new file", status=2)
    if target.exists():
        if target.resolve() == source.resolve():
            raise BackupError(f"{target} is the database itself", status=2)
        if not force:
            raise BackupError(f"{target} exists: pass --force to replace it", status=2)
    folder = target.parent
    if not folder.is_dir():
        raise BackupError(f"no folder {folder} to write {target.name} in", status=2)
    temp = folder / f".{target.name}.{secrets.token_hex(4)}.tmp"
    try:
        copy = _copy(source, temp)
        _fsync(temp)
        _put_in_place(temp, target, force)
        _fsync(folder)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot back up {source}: {exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
    return Copy(target, copy.bytes, copy.jobs, copy.schema_version)


def _copy(source: Path, temp: Path) -> Copy:
    # Read-write on purpose: a read-only connection to a WAL database may be refused
    # when its -shm file is missing. The backup only reads it.
    src = sqlite3.connect(source, timeout=30.0)
    try:
        src.execute("PRAGMA busy_timeout = 30000")
        dst = sqlite3.connect(temp)
        try:
            src.backup(dst)  # all pages in one step: one consistent snapshot
            dst.execute("PRAGMA journal_mode = DELETE")
            check = [row[0] for row in dst.execute("PRAGMA integrity_check")]
            if check != ["ok"]:
                raise BackupError("the copy failed its integrity check: " + "; ".join(check[:5]))
            try:
                jobs = int(dst.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])
                version = dst.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
            except sqlite3.OperationalError as exc:
                raise BackupError(f"{source} is not a Runpack database ({exc})") from exc
        finally:
            dst.close()
    finally:
        src.close()
    return Copy(temp, temp.stat().st_size, jobs, int(version or 0))


def _put_in_place(temp: Path, target: Path, force: bool) -> None:
    if force:
        os.replace(temp, target)
        return
    try:
        os.link(temp, target)  # fails if target appeared meanwhile: never overwritten
    except FileExistsError:
        raise BackupError(f"{target} exists: pass --force to replace it", status=2) from None
    except OSError:  # a filesystem without hard links
        if target.exists():
            raise BackupError(f"{target} exists: pass --force to replace it", status=2) from None
        os.replace(temp, target)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
