"""Figure files against a hostile runner, on real ``runpack serve`` processes.

A runner key may be held by a stranger, and a runner decides what a figure folder
holds. Played here as that stranger:

- a ``plot.svg`` with a ``<script>``, named as the job's ``figpack_url`` and opened
  from the dashboard's "Open figure" button in Chromium, must not read the admin key
  the dashboard keeps in localStorage, nor create a key with it; neither may a
  scripted figure page opened directly;
- every response under ``/figures/`` (files of every type, HEAD, ranges, 304, 412,
  416, redirects, 404s, preflights, other methods) carries the sandbox CSP, nosniff
  and, for what is not a figure's own type, ``Content-Disposition: attachment``;
- with ``RUNPACK_FIGURE_BASE_URL`` the figures live on an origin of their own;
- uploads cannot dodge their limits: folders count as entries, and a gzip bomb is
  refused at its expansion ratio; nothing of a refused upload stays on disk.

SQLite and PostgreSQL: the upload path asks the store who holds the job.
"""

from __future__ import annotations

import gzip
import http.client
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Download, Page, Request, expect

from tests.browser import chromium
from tests.conftest import _admin_execute, _run
from tests.pg import dsn_for, require_postgres
from tests.procs import KEYS, NO_LIMITS, clean_env, free_port, stop, wait_healthy

pytestmark = pytest.mark.timeout(120)

ADMIN_KEY = KEYS["RUNPACK_ADMIN_API_KEY"]
SUBMIT_KEY = KEYS["RUNPACK_SUBMIT_API_KEY"]
RUNNER_KEY = KEYS["RUNPACK_RUNNER_API_KEY"]
WAIT_MS = 15_000
JOB_TYPE = "hostile_figure"

expect.set_options(timeout=WAIT_MS)

#: Reads the dashboard's admin key and creates an admin key with it; then reports
#: what it could do to /beacon/<tag>?<outcome> (a 404, seen by the browser context).
STEAL = """
var out = 'ran';
try {
  var key = localStorage.getItem('runpack.adminKey');
  out = 'read:' + key;
  fetch('/api/admin/keys', {
    method: 'POST',
    headers: {'Authorization': 'Bearer ' + key, 'Content-Type': 'application/json'},
    body: JSON.stringify({role: 'admin', name: 'stolen-TAG'})
  }).then(function (r) { out += ';create:' + r.status; report(); },
          function (e) { out += ';create:' + e.name; report(); });
} catch (e) {
  out = 'blocked:' + e.name;
  report();
}
function report() { fetch('/beacon/TAG?' + encodeURIComponent(out)).catch(function () {}); }
"""


def scripted_svg(tag: str) -> bytes:
    script = STEAL.replace("TAG", tag)
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100">'
        f"<script>//<![CDATA[\n{script}\n//]]></script>"
        '<rect width="100" height="100" fill="red"/></svg>'
    ).encode()


def scripted_page(tag: str) -> bytes:
    return (
        f"<!doctype html><title>figure</title><script>{STEAL.replace('TAG', tag)}</script>".encode()
    )


# --- a server on a port known in advance -----------------------------------------------------


@dataclass
class Server:
    url: str
    port: int
    data: Path
    log: Path

    @property
    def figures(self) -> Path:
        return self.data / "figures"


@contextmanager
def serve(cwd: Path, db: str, env: dict[str, str] | None = None) -> Iterator[Server]:
    """``runpack serve`` on 127.0.0.1; ``{port}`` in an env value is its port."""
    port = free_port()
    cwd.mkdir(parents=True, exist_ok=True)
    log = cwd / f"server-{port}.log"
    extra = {
        **KEYS,
        **NO_LIMITS,
        "RUNPACK_DB": db,
        **{name: value.format(port=port) for name, value in (env or {}).items()},
    }
    cmd = [sys.executable, "-m", "runpack.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=clean_env(extra), stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log)
        yield Server(url, port, cwd / "runpack-data", log)
    finally:
        stop(proc)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path_factory.mktemp("db") / "runpack.db")
        return
    require_postgres()
    name = f"runpack_test_figures_{os.getpid()}_{free_port()}"
    _run(_admin_execute(f'CREATE DATABASE "{name}" TEMPLATE template0'))
    try:
        yield dsn_for(name)
    finally:
        _run(_admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def server(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve(tmp_path_factory.mktemp("server"), database) as proc:
        yield proc


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as opened:
        yield opened


# --- HTTP as a runner, a client and an admin ---------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    key: str | None = None,
) -> Reply:
    """One request, redirects not followed, any status returned."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)
    try:
        sent = dict(headers or {})
        if key:
            sent["Authorization"] = f"Bearer {key}"
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, target, body=body, headers=sent)
        resp = conn.getresponse()
        return Reply(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def call_json(url: str, method: str, key: str, body: Any = None, **headers: str) -> Any:
    data = None if body is None else json.dumps(body).encode()
    reply = call(url, method, data, {"Content-Type": "application/json", **headers}, key)
    assert reply.status < 300, (url, reply.status, reply.body)
    return reply.json()


@dataclass
class HeldJob:
    server: Server
    job_id: str
    runner_id: str
    params: dict[str, Any]
    #: The server's stored files when the job was made.
    blobs: frozenset[str] = frozenset()

    def upload(self, archive: bytes) -> Reply:
        return call(
            f"{self.server.url}/api/runner/jobs/{self.job_id}/files",
            "POST",
            archive,
            {"Content-Type": "application/x-tar", "X-Runner-ID": self.runner_id},
            RUNNER_KEY,
        )

    def complete(self, output: dict[str, Any]) -> Reply:
        body = json.dumps({"output_data": output}).encode()
        return call(
            f"{self.server.url}/api/runner/jobs/{self.job_id}/complete",
            "POST",
            body,
            {"Content-Type": "application/json", "X-Runner-ID": self.runner_id},
            RUNNER_KEY,
        )

    @property
    def folder(self) -> Path:
        """The job's manifest: there once a figure of the job is stored."""
        return self.server.figures / "manifests" / f"{self.job_id}.json"


def held_job(server: Server, **params: Any) -> HeldJob:
    """A new job claimed, over the original's HTTP endpoints, by a new runner."""
    url = server.url
    runner = call_json(
        f"{url}/api/runner/register",
        "POST",
        RUNNER_KEY,
        {"name": "lab-x", "capabilities": [JOB_TYPE]},
    )["runner_id"]
    submitted = {"job_type": JOB_TYPE, "input_params": {"n": uuid.uuid4().hex, **params}}
    job_id = call_json(f"{url}/api/jobs/submit", "POST", SUBMIT_KEY, submitted)["job_id"]
    call_json(
        f"{url}/api/runner/jobs/{job_id}/claim", "POST", RUNNER_KEY, **{"X-Runner-ID": runner}
    )
    return HeldJob(server, job_id, runner, submitted["input_params"], stored_blobs(server))


def stored_blobs(server: Server) -> frozenset[str]:
    blobs = server.figures / "blobs"
    return frozenset(p.name for p in blobs.rglob("*") if p.is_file() and p.name != ".lock")


def tar_of(files: dict[str, bytes], folders: list[str] | None = None) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for folder in folders or []:
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def admin_key_names(server: Server) -> list[str]:
    keys = call_json(f"{server.url}/api/admin/keys", "GET", ADMIN_KEY)["keys"]
    return sorted(str(k.get("name")) for k in keys)


# --- the attack: a scripted SVG opened from the dashboard ----------------------------------------


def test_a_scripted_svg_opened_from_the_dashboard_cannot_steal_the_admin_key(
    server: Server, browser: Browser
) -> None:
    job = held_job(server)
    tag = job.job_id[:8]
    archive = tar_of(
        {"index.html": b"<!doctype html><title>f</title>", "plot.svg": scripted_svg(tag)}
    )
    stored = job.upload(archive)
    assert stored.status == 201, stored.body
    svg_url = stored.json()["url"] + "plot.svg"
    assert job.complete({"figpack_url": svg_url}).status == 200
    keys_before = admin_key_names(server)

    context = browser.new_context()
    seen: list[str] = []
    downloads: list[Download] = []
    context.on("request", lambda request: seen.append(request.url))
    context.on("page", lambda opened: opened.on("download", lambda d: downloads.append(d)))
    context.add_init_script(f"localStorage.setItem('runpack.adminKey', {json.dumps(ADMIN_KEY)});")

    def beacons() -> list[str]:
        return [urllib.parse.unquote(url) for url in seen if f"/beacon/{tag}" in url]

    try:
        page = context.new_page()
        page.goto(f"{server.url}/ui/jobs/{job.job_id}")
        link = page.get_by_role("link", name="Open figure")
        expect(link).to_have_attribute("href", svg_url)
        expect(link).to_have_attribute("rel", "noopener noreferrer")
        expect(link).to_have_attribute("target", "_blank")
        with context.expect_page():
            link.click()
        # Either the SVG ran (and reports what it could do), or it was not a document.
        wait_for(page, lambda: downloads or beacons(), "the figure to run or download")
        page.wait_for_load_state("networkidle")
    finally:
        context.close()
    assert not any(ADMIN_KEY in beacon for beacon in beacons()), beacons()
    assert admin_key_names(server) == keys_before
    # The SVG is not a figure's own type: a download, never a document of this origin.
    assert [d.url for d in downloads] == [svg_url]


def wait_for(page: Page, check: Any, what: str) -> Any:
    """Poll ``check`` while the browser's events are delivered (bounded)."""
    for _ in range(WAIT_MS // 50):
        value = check()
        if value:
            return value
        page.wait_for_timeout(50)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_scripted_figure_page_runs_in_an_opaque_origin(server: Server, browser: Browser) -> None:
    """The sandbox itself, for the type a figure must show inline: its pages."""
    job = held_job(server)
    tag = "page" + job.job_id[:8]
    stored = job.upload(tar_of({"index.html": scripted_page(tag)}))
    assert stored.status == 201, stored.body
    keys_before = admin_key_names(server)

    context = browser.new_context()
    context.add_init_script(f"localStorage.setItem('runpack.adminKey', {json.dumps(ADMIN_KEY)});")
    try:
        page = context.new_page()
        page.goto(f"{server.url}/ui/settings")  # the origin holds the key
        assert page.evaluate("localStorage.getItem('runpack.adminKey')") == ADMIN_KEY
        with page.expect_request(lambda r: f"/beacon/{tag}" in r.url) as beacon:
            page.goto(stored.json()["figpack_url"])
        outcome = urllib.parse.unquote(beacon.value.url.split("?", 1)[1])
    finally:
        context.close()
    assert outcome == "blocked:SecurityError", outcome
    assert admin_key_names(server) == keys_before


def test_open_figure_offers_only_http_urls(server: Server, browser: Browser) -> None:
    job = held_job(server)
    done = job.complete({"figpack_url": "javascript:alert(document.domain)//x/index.html"})
    if done.status != 200:  # refused before it reaches a page: as good
        assert done.status == 400, done.body
        return
    context = browser.new_context()
    context.add_init_script(f"localStorage.setItem('runpack.adminKey', {json.dumps(ADMIN_KEY)});")
    try:
        page = context.new_page()
        page.goto(f"{server.url}/ui/jobs/{job.job_id}")
        expect(page.get_by_label("Result JSON")).to_contain_text("javascript:")
        expect(page.get_by_role("link", name="Open figure")).to_have_count(0)
        expect(page.locator('iframe[title="Figure preview"]')).to_have_count(0)
    finally:
        context.close()


# --- the headers of every figure response ------------------------------------------------------

FIGURE = {
    "index.html": b"<!doctype html><title>figure</title>",
    "assets/index.js": b"console.log('figure');",
    "assets/style.css": b"body{}",
    "data.zarr/.zmetadata": b"{}",
    "data.zarr/0.0": bytes(range(256)) * 4,
    "extension_manifest.json": b"{}",
    "thumb.png": b"\x89PNG\r\n\x1a\n" + bytes(32),
    "font.woff2": b"wOF2" + bytes(32),
    "plot.svg": scripted_svg("headers"),
    "page.xhtml": b'<html xmlns="http://www.w3.org/1999/xhtml"><script>1</script></html>',
    "notes.xml": b"<x/>",
    "blob.bin": b"<script>alert(1)</script>",
    "noext": b"<html><script>alert(1)</script></html>",
}
INLINE = {"index.html", "assets/index.js", "assets/style.css", "data.zarr/.zmetadata"}
INLINE |= {"extension_manifest.json", "thumb.png", "font.woff2"}


def assert_guarded(reply: Reply, what: str, inline: bool | None = None) -> None:
    csp = reply.headers.get("Content-Security-Policy", "")
    directives = csp.split()
    assert directives[:2] == ["sandbox", "allow-scripts"], (what, reply.status, csp)
    assert "allow-same-origin" not in directives and "allow-top-navigation" not in directives
    assert reply.headers.get("X-Content-Type-Options") == "nosniff", (what, reply.status)
    assert reply.headers.get("Access-Control-Allow-Origin") == "*", (what, reply.status)
    disposition = reply.headers.get("Content-Disposition")
    if inline is True:
        assert disposition is None, (what, reply.status, disposition)
    elif inline is False:
        assert disposition == "attachment", (what, reply.status, disposition)


def test_every_figure_response_is_sandboxed(server: Server) -> None:
    job = held_job(server)
    stored = job.upload(tar_of(FIGURE))
    assert stored.status == 201, stored.body
    base = stored.json()["url"]
    assert base == f"{server.url}/figures/{job.job_id}/{stored.json()['version']}/"
    for name in FIGURE:
        for method in ("GET", "HEAD"):
            reply = call(base + name, method)
            assert reply.status == 200, (name, method)
            assert_guarded(reply, f"{method} {name}", inline=name in INLINE)
    svg = call(base + "plot.svg")
    assert svg.headers["Content-Type"] == "image/svg+xml"  # still an image for <img>

    index = call(base + "index.html")
    etag, modified = index.headers["ETag"], index.headers["Last-Modified"]
    kinds = {
        "range": call(base + "data.zarr/0.0", headers={"Range": "bytes=0-9"}),
        "svg range": call(base + "plot.svg", headers={"Range": "bytes=0-9"}),
        "unsatisfiable range": call(base + "plot.svg", headers={"Range": "bytes=99999-"}),
        "304 by etag": call(base + "index.html", headers={"If-None-Match": etag}),
        "304 by date": call(base + "plot.svg", headers={"If-Modified-Since": modified}),
        "412": call(base + "plot.svg", headers={"If-Match": '"other"'}),
        "folder": call(base),
        "missing file": call(base + "nope.svg"),
        "a folder's path": call(base + "assets"),
        "unknown job": call(f"{server.url}/figures/00000000-0000-4000-8000-000000000000/x.svg"),
        "not a job": call(f"{server.url}/figures/not-a-job/x.html"),
        "redirect": call(f"{server.url}/figures/{job.job_id}"),
        "unversioned": call(f"{server.url}/figures/{job.job_id}/plot.svg"),
        "another version": call(f"{server.url}/figures/{job.job_id}/0123456789abcdef/x.svg"),
        "preflight": call(
            base + "plot.svg",
            "OPTIONS",
            headers={"Origin": "https://neurosift.app", "Access-Control-Request-Method": "GET"},
        ),
        "POST": call(base + "plot.svg", "POST", b"x"),
        "DELETE": call(base + "index.html", "DELETE"),
        "escape": call(f"{server.url}/figures/{job.job_id}/..%2F..%2Fui%2Findex.html"),
    }
    statuses = {what: reply.status for what, reply in kinds.items()}
    assert statuses["range"] == statuses["svg range"] == 206, statuses
    assert statuses["unsatisfiable range"] == 416, statuses
    assert statuses["304 by etag"] == statuses["304 by date"] == 304, statuses
    assert statuses["412"] == 412, statuses
    assert statuses["folder"] == 200, statuses
    for what in ("redirect", "unversioned", "another version"):
        assert statuses[what] == 307, statuses
    assert statuses["preflight"] == 204, statuses
    for what in ("missing file", "a folder's path", "unknown job", "not a job", "escape"):
        assert statuses[what] == 404, statuses
    for what, reply in kinds.items():
        assert_guarded(reply, what)
    assert kinds["svg range"].headers["Content-Disposition"] == "attachment"
    assert kinds["missing file"].json()["error"]


# --- figures on an origin of their own ---------------------------------------------------------


def test_figures_on_their_own_origin(
    database: str, tmp_path_factory: pytest.TempPathFactory, browser: Browser
) -> None:
    # localhost and 127.0.0.1 are two origins of the same server, as two hostnames are.
    env = {
        "RUNPACK_PUBLIC_URL": "http://127.0.0.1:{port}",
        "RUNPACK_FIGURE_BASE_URL": "http://localhost:{port}",
    }
    with serve(tmp_path_factory.mktemp("origin"), database + "", env) as main:
        figure_origin = f"http://localhost:{main.port}"
        job = held_job(main)
        tag = "origin" + job.job_id[:8]
        stored = job.upload(tar_of({"index.html": scripted_page(tag)}))
        assert stored.status == 201, stored.body
        url = stored.json()["figpack_url"]
        path = f"/figures/{job.job_id}/{stored.json()['version']}/index.html"
        assert url == figure_origin + path
        assert job.complete({"figpack_url": url}).status == 200

        # On the main origin, figures are redirected to theirs, guarded all the same;
        # an unversioned URL goes to the current version there in one step.
        for asked in (path, f"/figures/{job.job_id}/index.html"):
            moved = call(f"{main.url}{asked}?x=1")
            assert moved.status == 307
            assert moved.headers["Location"] == f"{figure_origin}{path}?x=1"
            assert_guarded(moved, "redirect")
        there = call(url)
        assert there.status == 200
        assert_guarded(there, "on the figure origin", inline=True)

        # A figure URL on either origin is this server's: checked on disk, not fetched.
        old = held_job(main)
        old_url = f"{main.url}/figures/{old.job_id}/index.html"
        assert old.complete({"figpack_url": old_url}).status == 400  # its files are missing
        old_stored = old.upload(tar_of({"index.html": b"<!doctype html>"}))
        assert old_stored.status == 201
        assert old.complete({"figpack_url": old_url}).status == 200
        for done in (job, old):
            again = call_json(
                f"{main.url}/api/jobs/submit",
                "POST",
                SUBMIT_KEY,
                {"job_type": JOB_TYPE, "input_params": done.params},
            )
            assert again["status"] == "completed", again

        # The dashboard on the main origin opens the figure on the figure origin.
        context = browser.new_context()
        context.add_init_script(
            f"localStorage.setItem('runpack.adminKey', {json.dumps(ADMIN_KEY)});"
        )
        try:
            page = context.new_page()
            page.goto(f"{main.url}/ui/jobs/{old.job_id}")
            with context.expect_page() as opened:
                page.get_by_role("link", name="Open figure").click()
            figure = opened.value
            figure.wait_for_load_state()
            assert figure.url == old_stored.json()["figpack_url"]  # its current version
            with context.expect_event("request", lambda r: f"/beacon/{tag}" in r.url) as beacon:
                figure.goto(url)
            outcome = urllib.parse.unquote(_query(beacon.value))
        finally:
            context.close()
        assert outcome == "blocked:SecurityError", outcome


def _query(request: Request) -> str:
    return request.url.split("?", 1)[1]


def test_a_figure_base_url_on_the_public_origin_is_refused(tmp_path: Path) -> None:
    port = free_port()
    env = clean_env(
        {
            **KEYS,
            "RUNPACK_DB": str(tmp_path / "x.db"),
            "RUNPACK_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "RUNPACK_FIGURE_BASE_URL": f"http://127.0.0.1:{port}/figs",
        }
    )
    cmd = [sys.executable, "-m", "runpack.cli", "serve", "--port", str(port)]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, timeout=60, check=False)
    assert done.returncode != 0
    assert b"figure_base_url" in done.stdout + done.stderr


# --- upload limits -----------------------------------------------------------------------------


def nothing_kept(job: HeldJob) -> None:
    assert not job.folder.exists()
    assert stored_blobs(job.server) == job.blobs
    incoming = job.server.figures / ".incoming"
    assert not incoming.exists() or not any(incoming.iterdir()), list(incoming.iterdir())


def refused(reply: Reply, status: int, words: str) -> None:
    assert reply.status == status, (reply.status, reply.body[:300])
    body = reply.json()
    assert set(body) == {"error", "details"} or set(body) == {"error"}, body
    assert words in body["error"], body


def test_folders_count_against_the_entry_limit(server: Server) -> None:
    job = held_job(server)
    folders = [f"d{i}" for i in range(30_000)]
    plain = tar_of({"index.html": b"<!doctype html>"}, folders)
    packed = gzip.compress(plain)
    assert len(packed) < 200 * 1024
    for archive in (packed, plain):
        refused(job.upload(archive), 413, "10000 files and folders")
        nothing_kept(job)
    # Folders made by deep paths count as well: 30 files, 12,030 folders.
    deep = {f"{n}/" + "a/" * 400 + "x.js": b"1" for n in range(30)}
    refused(job.upload(gzip.compress(tar_of(deep))), 413, "files and folders")
    nothing_kept(job)
    ok = job.upload(tar_of({"index.html": b"<!doctype html>"}, ["assets", "data.zarr"]))
    assert ok.status == 201, ok.body


def gzip_bomb(files: int, size: int) -> bytes:
    """A gzip of a tar of ``files`` files of ``size`` zero bytes, written as a stream."""
    out = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as gz,
        tarfile.open(fileobj=gz, mode="w|") as tar,
    ):
        for n in range(files):
            info = tarfile.TarInfo(f"zeros{n}.bin")
            info.size = size
            tar.addfile(info, _Zeros(size))
    return out.getvalue()


class _Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def test_a_gzip_bomb_is_refused_at_its_ratio(server: Server) -> None:
    job = held_job(server)
    one = gzip_bomb(1, 300 * 1024 * 1024)  # one file: refused from its header
    many = gzip_bomb(300, 1024 * 1024)  # many files: refused while unpacking
    assert len(one) < 400 * 1024 and len(many) < 400 * 1024
    for bomb in (one, many):
        refused(job.upload(bomb), 413, "times its size")
        nothing_kept(job)
    # A header that expands past the ratio (tarfile reads PAX headers whole).
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("index.html")
        info.pax_headers = {"comment": "x" * (32 * 1024 * 1024)}
        tar.addfile(info, io.BytesIO(b""))
    refused(job.upload(gzip.compress(raw.getvalue())), 413, "times its size")
    nothing_kept(job)
    packed = gzip.compress(tar_of({"index.html": random.Random(1).randbytes(200_000)}))
    refused(job.upload(packed[: len(packed) // 2]), 400, "compressed data is corrupt")
    nothing_kept(job)


def test_a_normal_figure_still_uploads(server: Server) -> None:
    job = held_job(server)
    for archive in (tar_of(FIGURE), gzip.compress(tar_of(FIGURE))):
        reply = job.upload(archive)
        assert reply.status == 201, reply.body
        body = reply.json()
        assert body["url"] == f"{server.url}/figures/{job.job_id}/{body['version']}/"
        assert body["figpack_url"] == body["url"] + "index.html"
        assert body["files"] == len(FIGURE)
        assert call(body["figpack_url"]).body == FIGURE["index.html"]
