"""Input files uploaded for jobs (``POST /api/inputs``), against a real ``runpack serve``:
stored once by content, named by hash at submit, read only by runners and admins,
bounded in size, in total and by the rate limits, and swept by ``runpack gc`` once
unused (never while a pending job names them). Played as a holder of the public
submit key trying to fill the disk or read what others uploaded."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.pg import fresh_database
from tests.procs import KEYS, NO_LIMITS, Proc, clean_env, running_runner, running_server, until

SUBMIT = {"Authorization": f"Bearer {KEYS['RUNPACK_SUBMIT_API_KEY']}"}
RUNNER = {"Authorization": f"Bearer {KEYS['RUNPACK_RUNNER_API_KEY']}"}
ADMIN = {"Authorization": f"Bearer {KEYS['RUNPACK_ADMIN_API_KEY']}"}
MIB = 2**20
IMAGE = "lab/tool@sha256:" + "1" * 64


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored_files(cwd: Path) -> list[str]:
    """Every file under the server's input store (partial uploads included)."""
    root = cwd / "runpack-data" / "inputs"
    return sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != ".lock"
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    cwd = tmp_path_factory.mktemp("inputs-server")
    env = {**KEYS, **NO_LIMITS, "RUNPACK_INPUT_UPLOAD_MB": "1", "RUNPACK_INPUT_STORE_MB": "3"}
    with running_server(cwd, env) as proc:
        yield proc


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def call(
    http: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str], **kw: Any
) -> tuple[int, Any]:
    async with http.request(method, url, headers=headers, **kw) as resp:
        raw = await resp.read()
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        return resp.status, raw


def cwd_of(server: Proc) -> Path:
    return server.log.parent


async def test_an_upload_is_stored_once_by_content(
    server: Proc, http: aiohttp.ClientSession
) -> None:
    data = os.urandom(3000)
    first = await call(http, "POST", f"{server.url}/api/inputs", SUBMIT, data=data)
    assert first == (201, {"sha256": sha(data), "bytes": 3000})
    again = await call(http, "POST", f"{server.url}/api/inputs", SUBMIT, data=data)
    assert again == (200, {"sha256": sha(data), "bytes": 3000})
    digest = sha(data)
    assert f"{digest[:2]}/{digest}" in stored_files(cwd_of(server))
    assert not [f for f in stored_files(cwd_of(server)) if f.startswith(".incoming/")]
    # Anyone with the submit key may ask whether a hash is stored; only that.
    head = await call(http, "HEAD", f"{server.url}/api/inputs/{digest}", SUBMIT)
    assert head[0] == 200
    missing = await call(http, "HEAD", f"{server.url}/api/inputs/{'e' * 64}", SUBMIT)
    assert missing[0] == 404
    # The runner key and the admin key read the bytes.
    assert await call(http, "GET", f"{server.url}/api/inputs/{digest}", RUNNER) == (200, data)
    got = await call(http, "GET", f"{server.url}/api/admin/inputs/{digest}", ADMIN)
    assert got == (200, data)


async def test_a_file_cut_short_by_a_crash_is_stored_whole_by_the_next_upload(
    server: Proc, http: aiohttp.ClientSession
) -> None:
    data = os.urandom(5000)
    digest = sha(data)
    assert (await call(http, "POST", f"{server.url}/api/inputs", SUBMIT, data=data))[0] == 201
    path = cwd_of(server) / "runpack-data" / "inputs" / digest[:2] / digest
    path.chmod(0o644)
    path.write_bytes(data[:100])  # what a power cut may leave of an unsynced file
    again = await call(http, "POST", f"{server.url}/api/inputs", SUBMIT, data=data)
    assert again == (201, {"sha256": digest, "bytes": 5000})
    assert await call(http, "GET", f"{server.url}/api/inputs/{digest}", RUNNER) == (200, data)


async def test_an_empty_file_is_an_input_too(server: Proc, http: aiohttp.ClientSession) -> None:
    status, body = await call(http, "POST", f"{server.url}/api/inputs", SUBMIT, data=b"")
    assert status in (200, 201) and body == {"sha256": sha(b""), "bytes": 0}


async def test_a_submit_key_cannot_read_uploads(server: Proc, http: aiohttp.ClientSession) -> None:
    data = b"someone else's data\n"
    status, body = await call(http, "POST", f"{server.url}/api/inputs", SUBMIT, data=data)
    assert status in (200, 201)
    digest = body["sha256"]
    for path in (f"/api/inputs/{digest}", f"/api/admin/inputs/{digest}"):
        status, body = await call(http, "GET", server.url + path, SUBMIT)
        assert status in (401, 403), (path, status)
        assert data not in repr(body).encode()
    status, _ = await call(http, "GET", f"{server.url}/api/inputs/{digest}", {})
    assert status == 401
    # The runner key opens the runner's route only; the admin key the admin's.
    status, _ = await call(http, "GET", f"{server.url}/api/inputs/{digest}", ADMIN)
    assert status == 401


@pytest.mark.parametrize(
    "name",
    ["ABC" + "0" * 61, "0" * 63, "0" * 65, "..%2F..%2Fetc%2Fpasswd", "g" * 64, "%2e%2e"],
)
async def test_a_bad_sha256_in_the_path_is_refused(
    server: Proc, http: aiohttp.ClientSession, name: str
) -> None:
    for method, path, headers in (
        ("GET", "/api/inputs/", RUNNER),
        ("GET", "/api/admin/inputs/", ADMIN),
        ("HEAD", "/api/inputs/", SUBMIT),
    ):
        status, body = await call(http, method, f"{server.url}{path}{name}", headers)
        assert status in (400, 404), (method, path, status)
        if method == "GET" and status == 400:
            assert body["error"] == "Invalid sha256"


async def test_an_oversize_upload_is_refused_and_nothing_is_kept(
    server: Proc, http: aiohttp.ClientSession
) -> None:
    before = stored_files(cwd_of(server))
    big = io.BytesIO(b"x" * (MIB + 1))
    status, body = await call(http, "POST", f"{server.url}/api/inputs", SUBMIT, data=big)
    assert status == 413
    assert "size limit of 1048576 bytes" in body["error"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        for _ in range(5):
            yield b"y" * (MIB // 2)

    status, body = await call(http, "POST", f"{server.url}/api/inputs", SUBMIT, data=chunks())
    assert status == 413
    # A small gzip of zeros is counted as what it unpacks to.
    bomb = gzip.compress(bytes(8 * MIB))
    headers = {**SUBMIT, "Content-Encoding": "gzip"}
    status, body = await call(http, "POST", f"{server.url}/api/inputs", headers, data=bomb)
    assert status == 413
    assert stored_files(cwd_of(server)) == before


async def test_a_submit_naming_an_unknown_upload_is_refused(
    server: Proc, http: aiohttp.ClientSession
) -> None:
    unknown = "a" * 64
    params = {"image": IMAGE, "inputs": {"data/x.txt": {"upload": unknown}}}
    body = {"job_type": "container", "input_params": params}
    status, reply = await call(http, "POST", f"{server.url}/api/jobs/submit", SUBMIT, json=body)
    assert status == 400
    assert reply["error"] == (
        f"input data/x.txt: no uploaded file with sha256 {unknown}; "
        "upload it first with POST /api/inputs"
    )
    params["inputs"] = {"data/x.txt": {"upload": "not-a-hash"}}
    status, reply = await call(http, "POST", f"{server.url}/api/jobs/submit", SUBMIT, json=body)
    assert status == 400 and "upload must be the sha256" in reply["error"]
    status, jobs = await call(http, "GET", f"{server.url}/api/admin/jobs", ADMIN)
    assert status == 200 and jobs["jobs"] == []


async def test_two_uploads_of_the_same_bytes_share_a_job(
    server: Proc, http: aiohttp.ClientSession
) -> None:
    ids = []
    for _ in range(2):
        status, stored = await call(http, "POST", f"{server.url}/api/inputs", SUBMIT, data=b"same")
        assert status in (200, 201)
        params = {"image": IMAGE, "inputs": {"w.txt": {"upload": stored["sha256"]}}}
        body = {"job_type": "container", "input_params": params}
        status, reply = await call(http, "POST", f"{server.url}/api/jobs/submit", SUBMIT, json=body)
        assert status in (200, 201), reply
        ids.append(reply["job_id"])
    assert ids[0] == ids[1]


async def test_the_store_is_bounded_in_total(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    env = {**KEYS, **NO_LIMITS, "RUNPACK_INPUT_UPLOAD_MB": "1", "RUNPACK_INPUT_STORE_MB": "2"}
    with running_server(tmp_path, env) as server:
        for _ in range(2):
            status, _ = await call(
                http,
                "POST",
                f"{server.url}/api/inputs",
                SUBMIT,
                data=io.BytesIO(os.urandom(MIB - 10)),
            )
            assert status == 201
        before = stored_files(tmp_path)
        status, body = await call(
            http, "POST", f"{server.url}/api/inputs", SUBMIT, data=os.urandom(1000)
        )
        assert status == 507 and "full" in body["error"]
        assert stored_files(tmp_path) == before


async def test_uploads_count_as_new_work(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """A public submit key holder is paced: each new file takes a new-work token; the
    same bytes again take none."""
    env = {**KEYS, "RUNPACK_RATE_NEW_JOBS": "1", "RUNPACK_RATE_NEW_JOBS_BURST": "3"}
    with running_server(tmp_path, env) as server:
        url = f"{server.url}/api/inputs"
        for n in range(3):
            assert (await call(http, "POST", url, SUBMIT, data=b"%d" % n))[0] == 201
        for _ in range(3):  # stored already: free
            assert (await call(http, "POST", url, SUBMIT, data=b"0"))[0] == 200
        status, body = await call(http, "POST", url, SUBMIT, data=b"new")
        assert status == 429, body
        assert len([f for f in stored_files(tmp_path) if not f.startswith(".")]) == 3


def gc(cwd: Path, db: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = clean_env({"RUNPACK_DB": db})
    cmd = [sys.executable, "-m", "runpack.cli", "gc", "--data-dir", str(cwd / "runpack-data")]
    return subprocess.run(
        [*cmd, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
async def test_gc_removes_uploads_no_job_needs(
    tmp_path: Path, http: aiohttp.ClientSession, engine: str
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        db = str(tmp_path / "runpack.db")
        if engine == "postgres":
            db = await stack.enter_async_context(fresh_database())
        await _gc_removes_uploads_no_job_needs(tmp_path, http, db)


async def _gc_removes_uploads_no_job_needs(
    tmp_path: Path, http: aiohttp.ClientSession, db: str
) -> None:
    with running_server(tmp_path, {**KEYS, **NO_LIMITS, "RUNPACK_DB": db}) as server:
        digests = {}
        for name in ("kept", "named", "old"):
            status, body = await call(
                http, "POST", f"{server.url}/api/inputs", SUBMIT, data=name.encode()
            )
            assert status == 201
            digests[name] = body["sha256"]
        # A pending job (no runner) names "named".
        params = {"image": IMAGE, "inputs": {"n.txt": {"upload": digests["named"]}}}
        body = {"job_type": "container", "input_params": params}
        status, _ = await call(http, "POST", f"{server.url}/api/jobs/submit", SUBMIT, json=body)
        assert status == 201
    root = tmp_path / "runpack-data" / "inputs"
    week = 8 * 24 * 3600
    for name in ("named", "old"):  # unused for longer than the default input TTL
        path = root / digests[name][:2] / digests[name]
        stat = path.stat()
        os.utime(path, (stat.st_atime - week, stat.st_mtime - week))
    dry = gc(tmp_path, db, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "inputs to remove   1" in dry.stdout
    assert len(stored_files(tmp_path)) == 3
    done = gc(tmp_path, db)
    assert done.returncode == 0, done.stderr
    assert "inputs removed     1" in done.stdout
    left = {Path(f).name for f in stored_files(tmp_path)}
    assert left == {digests["kept"], digests["named"]}


async def test_a_computed_job_still_answers_once_its_upload_is_swept(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    with (
        running_server(tmp_path / "server", {**KEYS, **NO_LIMITS}) as server,
        running_runner(tmp_path / "runner", server.url, "--job-types", "hello_world"),
    ):
        status, stored = await call(http, "POST", f"{server.url}/api/inputs", SUBMIT, data=b"ada")
        assert status == 201
        params = {
            "name": "Ada",
            "processing_time": 0,
            "inputs": {"n": {"upload": stored["sha256"]}},
        }
        body = {"job_type": "hello_world", "input_params": params}
        status, reply = await call(http, "POST", f"{server.url}/api/jobs/submit", SUBMIT, json=body)
        assert status == 201, reply
        job_id = reply["job_id"]

        async def completed() -> Any:
            _, job = await call(http, "GET", f"{server.url}/api/jobs/{job_id}", SUBMIT)
            return job if job.get("status") == "completed" else None

        await until(completed, "the job to complete")
        digest = stored["sha256"]
        (tmp_path / "server" / "runpack-data" / "inputs" / digest[:2] / digest).unlink()
        # The same job: its result, though the file it named is gone.
        status, reply = await call(http, "POST", f"{server.url}/api/jobs/submit", SUBMIT, json=body)
        assert status == 200 and reply["job_id"] == job_id, reply
        assert "Hello, Ada!" in str(reply["result"]), reply
        # A new job naming it must have it uploaded again.
        params["name"] = "Grace"
        status, reply = await call(http, "POST", f"{server.url}/api/jobs/submit", SUBMIT, json=body)
        assert status == 400 and "upload it first" in reply["error"], reply
