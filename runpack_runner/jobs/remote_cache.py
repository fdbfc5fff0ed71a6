"""The runner's disk cache of remote file bytes, shared by its figure jobs.

lindi reads a remote NWB file in byte ranges and asks a ``local_cache`` (its
``LocalCache`` interface: ``get_remote_chunk`` and ``put_remote_chunk``, keyed by URL,
offset and size) before each read. lindi's own ``LocalCache`` grows without limit and
knows a file only by its URL; this one is an SQLite file in the runner's cache folder
(``RUNPACK_REMOTE_CACHE_DIR``) that

- keys every range by the URL *and the file's version*: its strong ETag, else its
  Last-Modified date, with its size (:func:`file_version`); a file whose server gives
  neither is not cached, since a change to it could not be seen;
- answers only for the URL and version it was opened for, never another file's bytes;
- keeps lindi's file chunks (128 KiB at multiples of 128 KiB), through which every
  other range is read, so that no byte is kept twice;
- is bounded (``RUNPACK_REMOTE_CACHE_MB``, 0 = off): past the limit, the ranges used
  longest ago go first;
- is shared safely by job processes running at once (SQLite in WAL mode, each write one
  short transaction, the size total kept in the same transaction as the rows);
- never fails a job: any error of the cache turns it off for the rest of that read.

Each job process opens its own connection (connections never cross a fork).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: The runner's environment variables for the cache (see docs/settings.md).
DIR_ENV = "RUNPACK_REMOTE_CACHE_DIR"
MB_ENV = "RUNPACK_REMOTE_CACHE_MB"
#: The size limit without the setting (MiB), as in runpack_runner/settings.py.
DEFAULT_MB = 1024
#: The SQLite file in the cache folder.
DB_NAME = "remote-ranges.sqlite3"
#: Recent ranges each open file also keeps in memory (lindi keeps none of its own
#: when it has a ``local_cache``).
MEMORY_BYTES = 32 * 1024 * 1024
#: The size of lindi's reads of a remote file (``LindiRemfile``'s ``_min_chunk_size``).
CHUNK = 128 * 1024
#: Ranges read are written to disk in transactions of about this size.
FLUSH_BYTES = 8 * 1024 * 1024
#: Eviction goes down to this share of the limit, so that it runs now and then.
EVICT_TO = 0.9
#: A range read again is marked as used at most this often (seconds): fewer writes.
TOUCH_EVERY = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ranges (
    file TEXT NOT NULL,
    offset INTEGER NOT NULL,
    size INTEGER NOT NULL,
    used REAL NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (file, offset, size)
);
CREATE INDEX IF NOT EXISTS ranges_used ON ranges (used);
CREATE TABLE IF NOT EXISTS total (id INTEGER PRIMARY KEY CHECK (id = 1), bytes INTEGER NOT NULL);
INSERT OR IGNORE INTO total (id, bytes) VALUES (1, 0);
"""


def settings(environ: Mapping[str, str] | None = None) -> tuple[Path, int]:
    """(folder, limit in bytes) from the runner's settings; a limit of 0 means off."""
    environ = os.environ if environ is None else environ
    folder = environ.get(DIR_ENV, "").strip()
    text = environ.get(MB_ENV, "").strip()
    try:
        mb = int(text) if text else DEFAULT_MB
    except ValueError:
        mb = DEFAULT_MB
    return (Path(folder) if folder else default_folder()), max(0, mb) * 1024 * 1024


def default_folder() -> Path:
    """A folder of the runner's user in the system's temporary folder."""
    return Path(tempfile.gettempdir()) / f"runpack-remote-cache-{os.getuid()}"


def file_version(headers: Mapping[str, str]) -> str | None:
    """What tells this version of a file from the next, from a response's headers:
    a strong ETag, else Last-Modified, with the size; None when the server gives neither
    (weak ETags promise equal meaning, not equal bytes)."""
    size = headers.get("Content-Length", "?")
    etag = headers.get("ETag", "").strip()
    if etag and not etag.startswith("W/"):
        return f"etag {etag} size {size}"
    modified = headers.get("Last-Modified", "").strip()
    if modified:
        return f"modified {modified} size {size}"
    return None


class RemoteCache:
    """The SQLite file of cached ranges, bounded to ``limit`` bytes."""

    def __init__(self, folder: Path, limit: int) -> None:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        info = folder.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise OSError(f"{folder} is not a folder of this user")
        self.limit = limit
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            folder / DB_NAME, timeout=30, isolation_level=None, check_same_thread=False
        )
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error:
            self._db.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def get(self, file: str, offset: int, size: int) -> bytes | None:
        with self._lock:
            row = self._db.execute(
                "SELECT data, used FROM ranges WHERE file = ? AND offset = ? AND size = ?",
                (file, offset, size),
            ).fetchone()
            if row is None:
                return None
            now = time.time()
            if row[1] < now - TOUCH_EVERY:
                self._db.execute(
                    "UPDATE ranges SET used = ? WHERE file = ? AND offset = ? AND size = ?",
                    (now, file, offset, size),
                )
            data = bytes(row[0])
        return data if len(data) == size else None

    def put(self, file: str, ranges: list[tuple[int, bytes]]) -> None:
        """Keep these (offset, data) ranges of ``file``, in one transaction; ranges used
        longest ago go when the total passes the limit."""
        ranges = [(offset, data) for offset, data in ranges if len(data) <= self.limit // 4]
        if not ranges:
            return
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                added = 0
                for offset, data in ranges:
                    if self._db.execute(
                        "INSERT INTO ranges (file, offset, size, used, data) "
                        "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                        (file, offset, len(data), now, data),
                    ).rowcount:
                        added += len(data)
                if added:
                    self._db.execute("UPDATE total SET bytes = bytes + ?", (added,))
                    self._evict()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _evict(self) -> None:
        (total,) = self._db.execute("SELECT bytes FROM total").fetchone()
        if total <= self.limit:
            return
        target = int(self.limit * EVICT_TO)
        while total > target:
            rows = self._db.execute("SELECT rowid, size FROM ranges ORDER BY used LIMIT 64")
            batch = rows.fetchall()
            if not batch:
                total = 0
                break
            for rowid, size in batch:
                self._db.execute("DELETE FROM ranges WHERE rowid = ?", (rowid,))
                total -= size
                if total <= target:
                    break
        self._db.execute("UPDATE total SET bytes = ?", (max(0, total),))

    def total(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT bytes FROM total").fetchone()[0])


class FileRanges:
    """lindi's ``local_cache`` for one file: ranges of ``url`` at ``version`` only,
    through a small in-memory layer, written to disk a few MiB at a time and at
    :meth:`flush`; ``report`` hears (once) when the disk cache fails."""

    def __init__(
        self,
        cache: RemoteCache,
        url: str,
        version: str,
        report: Callable[[str], None],
        chunk: int = CHUNK,
    ) -> None:
        self.url = url
        self.chunk = chunk
        self._cache: RemoteCache | None = cache
        self._file = f"{url}\n{version}"
        self._report = report
        self._memory: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._memory_bytes = 0
        self._pending: dict[tuple[int, int], bytes] = {}
        self._pending_bytes = 0
        self.hits = 0
        self.misses = 0

    def _keeps(self, url: str, offset: int, size: int) -> bool:
        """Only lindi's file chunks are kept: a dataset's range (asked for first) is read
        through them, so keeping it too would hold its bytes twice."""
        return url == self.url and offset % self.chunk == 0 and 0 < size <= self.chunk

    def get_remote_chunk(self, *, url: str, offset: int, size: int) -> bytes | None:
        if not self._keeps(url, offset, size):
            return None
        key = (offset, size)
        data = self._memory.get(key) or self._pending.get(key)
        if data is not None:
            self._memory.move_to_end(key)
            return data
        data = self._disk(lambda cache: cache.get(self._file, offset, size))
        if data is None:
            self.misses += 1
            return None
        self.hits += 1
        self._remember(key, data)
        return data

    def put_remote_chunk(self, *, url: str, offset: int, size: int, data: bytes) -> None:
        if not self._keeps(url, offset, size) or len(data) != size:
            return
        key = (offset, size)
        self._remember(key, data)
        self._pending[key] = data
        self._pending_bytes += size
        if self._pending_bytes >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Write the ranges kept since the last flush to disk (one transaction)."""
        pending = [(offset, data) for (offset, _), data in self._pending.items()]
        self._pending.clear()
        self._pending_bytes = 0
        if pending:
            self._disk(lambda cache: cache.put(self._file, pending))

    def _remember(self, key: tuple[int, int], data: bytes) -> None:
        if len(data) > MEMORY_BYTES // 4 or key in self._memory:
            return
        self._memory[key] = data
        self._memory_bytes += len(data)
        while self._memory_bytes > MEMORY_BYTES:
            _, old = self._memory.popitem(last=False)
            self._memory_bytes -= len(old)

    def _disk(self, call: Callable[[RemoteCache], Any]) -> Any:
        cache = self._cache
        if cache is None:
            return None
        try:
            return call(cache)
        except (sqlite3.Error, OSError, MemoryError) as exc:
            self._cache = None
            self._report(f"Remote read cache off for this file: {exc}")
            return None


def open_cache(environ: Mapping[str, str] | None = None) -> RemoteCache | None:
    """The runner's cache, or None when it is off or cannot be opened (logged)."""
    folder, limit = settings(environ)
    if limit <= 0:
        return None
    try:
        return RemoteCache(folder, limit)
    except (sqlite3.Error, OSError) as exc:
        log.warning("remote read cache at %s not used: %s", folder, exc)
        return None
