"""The runner's disk cache of remote byte ranges (runpack_runner/jobs/remote_cache.py):
keyed by URL and file version, bounded, shared by processes at once."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
from pathlib import Path

import pytest

from runpack_runner.jobs import remote_cache
from runpack_runner.jobs.remote_cache import CHUNK, FileRanges, RemoteCache

URL = "https://example.org/a.nwb"
KIB = 1024


def ranges(cache: RemoteCache, url: str = URL, version: str = "etag 1") -> FileRanges:
    return FileRanges(cache, url, version, report=lambda line: None)


def put(ranges: FileRanges, url: str, offset: int, data: bytes) -> None:
    """As a job's read does it, then as its end does."""
    ranges.put_remote_chunk(url=url, offset=offset, size=len(data), data=data)
    ranges.flush()


def test_ranges_are_served_only_for_their_url_and_version(tmp_path: Path) -> None:
    cache = RemoteCache(tmp_path, 10 * 1024 * KIB)
    put(ranges(cache), URL, 0, b"abc")
    fresh = ranges(cache)  # another job: nothing in memory, all from disk
    assert fresh.get_remote_chunk(url=URL, offset=0, size=3) == b"abc"
    assert fresh.hits == 1
    assert fresh.get_remote_chunk(url=URL, offset=0, size=2) is None
    assert fresh.get_remote_chunk(url=URL + "?x", offset=0, size=3) is None
    assert ranges(cache, URL + "?x").get_remote_chunk(url=URL + "?x", offset=0, size=3) is None
    assert ranges(cache, version="etag 2").get_remote_chunk(url=URL, offset=0, size=3) is None
    # A range asked for under another URL is not stored under this one.
    put(fresh, "https://other/b.nwb", 0, b"z")
    assert ranges(cache).get_remote_chunk(url=URL, offset=0, size=1) is None
    # Only lindi's file chunks are kept (a dataset's range is read through them).
    put(fresh, URL, 9, b"z")
    put(fresh, URL, 0, b"z" * (CHUNK + 1))
    assert ranges(cache).get_remote_chunk(url=URL, offset=9, size=1) is None
    assert ranges(cache).get_remote_chunk(url=URL, offset=0, size=CHUNK + 1) is None
    cache.close()


def test_the_version_comes_from_a_strong_etag_or_the_date() -> None:
    assert remote_cache.file_version({"ETag": '"x1"', "Content-Length": "9"}) == 'etag "x1" size 9'
    dated = {"ETag": 'W/"x1"', "Last-Modified": "Sun, 06 Dec 2026 10:00:00 GMT"}
    assert remote_cache.file_version(dated) == f"modified {dated['Last-Modified']} size ?"
    assert remote_cache.file_version({"ETag": 'W/"x1"', "Content-Length": "9"}) is None
    assert remote_cache.file_version({}) is None


def test_the_cache_keeps_to_its_limit_dropping_the_ranges_used_longest_ago(
    tmp_path: Path,
) -> None:
    cache = RemoteCache(tmp_path, 1024 * KIB)
    one = ranges(cache)
    for i in range(40):
        put(one, URL, i * CHUNK, b"x" * CHUNK)
        assert cache.total() <= 1024 * KIB
    kept = (
        sqlite3.connect(tmp_path / remote_cache.DB_NAME)
        .execute("SELECT min(offset), max(offset), count(*), sum(size) FROM ranges")
        .fetchone()
    )
    assert kept[1] == 39 * CHUNK and kept[0] > 0  # the newest kept, the oldest gone
    assert kept[3] == cache.total() <= 1024 * KIB
    cache.close()
    # A range larger than a quarter of the limit is not kept.
    small = RemoteCache(tmp_path, 256 * KIB)
    put(ranges(small), URL, 0, b"y" * CHUNK)
    assert ranges(small).get_remote_chunk(url=URL, offset=0, size=CHUNK) is None
    small.close()


def _fill(folder: str, worker: int) -> None:
    cache = RemoteCache(Path(folder), 2048 * KIB)
    mine = FileRanges(cache, URL, "etag 1", report=print, chunk=64 * KIB)
    for i in range(60):
        offset = (worker * 1000 + i) * 64 * KIB
        data = bytes([worker]) * 64 * KIB
        put(mine, URL, offset, data)
        assert mine.get_remote_chunk(url=URL, offset=offset, size=64 * KIB) == data
    cache.close()


def test_processes_share_the_cache_at_once(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_fill, args=(str(tmp_path), n)) for n in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    cache = RemoteCache(tmp_path, 2048 * KIB)
    db = sqlite3.connect(tmp_path / remote_cache.DB_NAME)
    (stored,) = db.execute("SELECT sum(size) FROM ranges").fetchone()
    assert stored == cache.total() <= 2048 * KIB
    for offset, data in db.execute("SELECT offset, data FROM ranges"):
        assert data == bytes([offset // (64 * KIB) // 1000]) * 64 * KIB
    cache.close()


def test_settings_and_when_the_cache_is_off(tmp_path: Path) -> None:
    folder, limit = remote_cache.settings({remote_cache.DIR_ENV: str(tmp_path), "X": ""})
    assert folder == tmp_path and limit == remote_cache.DEFAULT_MB * 1024 * KIB
    assert remote_cache.settings({})[0] == remote_cache.default_folder()
    assert remote_cache.open_cache({remote_cache.MB_ENV: "0"}) is None
    mine = remote_cache.open_cache({remote_cache.DIR_ENV: str(tmp_path / "c")})
    assert mine is not None
    mine.close()
    # Not a folder of this user (here: a symbolic link): not used.
    (tmp_path / "link").symlink_to(tmp_path / "c")
    assert remote_cache.open_cache({remote_cache.DIR_ENV: str(tmp_path / "link")}) is None


def test_a_broken_cache_turns_itself_off_and_the_read_goes_on(tmp_path: Path) -> None:
    cache = RemoteCache(tmp_path, 1024 * KIB)
    heard: list[str] = []
    one = FileRanges(cache, URL, "etag 1", report=heard.append)
    cache.close()
    put(one, URL, 0, b"a")  # kept in memory only
    assert one.get_remote_chunk(url=URL, offset=0, size=1) == b"a"
    assert one.get_remote_chunk(url=URL, offset=5, size=1) is None
    assert len(heard) == 1 and "off" in heard[0]


@pytest.mark.skipif(os.getuid() == 0, reason="root may write anywhere")
def test_an_unwritable_folder_means_no_cache(tmp_path: Path) -> None:
    tmp_path.chmod(0o500)
    try:
        assert remote_cache.open_cache({remote_cache.DIR_ENV: str(tmp_path / "c")}) is None
    finally:
        tmp_path.chmod(0o700)
