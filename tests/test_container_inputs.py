"""A container job's input files: checked, fetched under the address rules, kept by
content (a real HTTP server on loopback)."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from runpack.netrules import URLNotAllowed
from runpack_runner.container_inputs import Input, InputCache, parse_inputs, place_inputs, trim
from runpack_runner.context import JobContext

SHA = "0" * 64


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "must be an object"),
        ({"/etc/passwd": "https://x/a"}, "is not a relative path"),
        ({"a/../b": "https://x/a"}, "is not a relative path"),
        ({"a": "file:///etc/passwd"}, "give an http(s) URL"),
        ({"a": {"url": "https://x/a", "sha256": "ABC"}}, "sha256 must be 64 lowercase hex"),
        ({"a": {"url": "https://x/a", "size": 1}}, "unknown size"),
        ({"a": "https://x/a", "a/b": "https://x/b"}, "a is both a file and a folder"),
        ({"a": {"upload": "ABC"}}, "upload must be 64 lowercase hex"),
        ({"a": {"upload": SHA, "url": "https://x/a"}}, "upload takes no url"),
    ],
)
def test_bad_inputs_are_named(value: Any, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_inputs(value)
    assert message in str(caught.value)


def test_inputs_are_parsed() -> None:
    assert parse_inputs({"d/a.csv": "https://x/a", "b": {"url": "http://y/b", "sha256": SHA}}) == (
        Input("d/a.csv", "https://x/a"),
        Input("b", "http://y/b", SHA),
    )
    assert parse_inputs({"c": {"upload": SHA}}) == (Input("c", "", SHA, upload=True),)


class Files(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}
    requests: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.requests.append(self.path)
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/a.txt")
            self.end_headers()
            return
        body = self.files.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def site() -> Iterator[str]:
    Files.files = {"/a.txt": b"alpha\n", "/big": b"x" * 3000}
    Files.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def context(allow_private: bool = True) -> JobContext:
    ctx = JobContext("job")
    ctx.allow_private_urls = allow_private
    return ctx


def test_a_private_address_is_refused_before_any_request(site: str, tmp_path: Path) -> None:
    cache = InputCache(tmp_path / "cache", 10_000)
    with pytest.raises(URLNotAllowed, match="resolves to a private address"):
        cache.fetch(context(allow_private=False), Input("a", f"{site}/a.txt"), 10_000)
    assert Files.requests == []


def test_inputs_are_fetched_once_by_content_and_placed(site: str, tmp_path: Path) -> None:
    sha = hashlib.sha256(b"alpha\n").hexdigest()
    cache = InputCache(tmp_path / "cache", 10_000)
    inputs = parse_inputs({"d/a.txt": {"url": f"{site}/a.txt", "sha256": sha}})
    for run in ("one", "two"):
        folder = tmp_path / run
        folder.mkdir()
        ctx = context()
        place_inputs(ctx, inputs, folder, cache, 10_000)
        assert (folder / "d" / "a.txt").read_bytes() == b"alpha\n"
        assert (folder / "d" / "a.txt").stat().st_mode & 0o777 == 0o644
    assert Files.requests == ["/a.txt"]  # the second run took it from the cache
    assert "from the runner's cache" in ctx.console
    assert (tmp_path / "cache" / sha).exists()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"url": "/a.txt", "sha256": SHA}, "has sha256 "),
        ({"url": "/big"}, "the inputs are larger than this runner takes"),
        ({"url": "/missing"}, "answered 404"),
        ({"url": "/moved"}, "answered 302"),  # redirects are not followed
    ],
)
def test_a_wrong_missing_or_too_large_input_fails(
    site: str, tmp_path: Path, entry: dict[str, str], message: str
) -> None:
    cache = InputCache(tmp_path / "cache", 10_000)
    inputs = parse_inputs({"a": {**entry, "url": site + entry["url"]}})
    with pytest.raises(RuntimeError, match=message):
        place_inputs(context(), inputs, tmp_path, cache, 1000)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []  # nothing half-kept


def test_the_cache_keeps_the_newest_within_its_bound(site: str, tmp_path: Path) -> None:
    cache = InputCache(tmp_path / "cache", 3500)
    big = cache.fetch(context(), Input("big", f"{site}/big"), 10_000)
    small = cache.fetch(context(), Input("a", f"{site}/a.txt"), 10_000)
    assert big.exists() and small.exists()
    Files.files["/big2"] = b"y" * 3000
    newest = cache.fetch(context(), Input("big2", f"{site}/big2"), 10_000)
    assert newest.exists() and not big.exists()


def test_trim_deletes_the_files_used_longest_ago(tmp_path: Path) -> None:
    for age, name in enumerate(["c/new", "b/mid", "a/old"]):
        path = tmp_path / name
        path.parent.mkdir()
        path.write_bytes(b"x" * 100)
        os.utime(path, (1_000_000 - age, 1_000_000 - age))
    (tmp_path / "link").symlink_to("/etc/passwd")
    trim(tmp_path, 150)
    assert sorted(
        p.relative_to(tmp_path).as_posix()
        for p in tmp_path.rglob("*")
        if p.is_file() and not p.is_symlink()
    ) == ["c/new"]
    assert Path("/etc/passwd").exists()


def test_uploads_come_from_the_runners_server_checked_by_hash(site: str, tmp_path: Path) -> None:
    data = b"uploaded\n"
    digest = hashlib.sha256(data).hexdigest()
    Files.files[f"/api/inputs/{digest}"] = data
    cache = InputCache(tmp_path / "cache", 10_000, server=site + "/", key="k")
    (item,) = parse_inputs({"u.txt": {"upload": digest}})
    assert cache.fetch(context(allow_private=False), item, 10_000).read_bytes() == data
    assert Files.requests == [f"/api/inputs/{digest}"]
    (gone,) = parse_inputs({"g.txt": {"upload": SHA}})
    with pytest.raises(RuntimeError, match=f"the server has no uploaded file with sha256 {SHA}"):
        cache.fetch(context(), gone, 10_000)
    with pytest.raises(RuntimeError, match="this runner has no server to fetch from"):
        InputCache(tmp_path / "other", 10_000).fetch(context(), gone, 10_000)
