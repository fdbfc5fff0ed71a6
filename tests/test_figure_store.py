"""Figures addressed and stored by content, on real ``runpack serve`` processes.

- a figure computed again with other files gets another URL, and its old URLs (the
  previous version's, and the unversioned one of results stored before versions)
  answer 307 to the current one, guarded like every figure response;
- files that several figures hold (figpack's viewer bundle) are stored once;
- ``runpack gc`` removes the blobs no figure names, and only those;
- a server killed while receiving a new version keeps the stored one whole.

SQLite and PostgreSQL: the upload path asks the store who holds the job, and
``runpack gc`` reads the jobs' states from it.
"""

from __future__ import annotations

import hashlib
import http.client
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import KEYS, NO_LIMITS, clean_env, running_server
from tests.test_hostile_figures import (
    JOB_TYPE,
    RUNNER_KEY,
    SUBMIT_KEY,
    HeldJob,
    Server,
    assert_guarded,
    call,
    call_json,
    database,  # noqa: F401  (the fixture: SQLite and PostgreSQL)
    held_job,
    serve,
    tar_of,
)

pytestmark = pytest.mark.timeout(120)

#: A stand-in for figpack's viewer bundle: the same bytes in every figure.
VIEWER = random.Random(7).randbytes(1024 * 1024)
INDEX = b"<!doctype html><script src='assets/viewer.js'></script>"


def figure(data: bytes) -> dict[str, bytes]:
    return {"index.html": INDEX, "assets/viewer.js": VIEWER, "data.zarr/0.0": data}


@pytest.fixture(scope="module")
def server(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:  # noqa: F811
    with serve(tmp_path_factory.mktemp("server"), database) as proc:
        yield proc


def blobs(server: Server) -> dict[str, int]:
    """digest -> size of every stored file."""
    root = server.figures / "blobs"
    return {p.name: p.stat().st_size for p in root.rglob("*") if p.is_file() and p.name != ".lock"}


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored(job: HeldJob, files: dict[str, bytes]) -> dict[str, str]:
    reply = job.upload(tar_of(files))
    assert reply.status == 201, reply.body
    body: dict[str, str] = reply.json()
    return body


def test_a_recomputed_figure_gets_a_new_url_and_the_old_one_redirects(server: Server) -> None:
    job = held_job(server)
    first = stored(job, figure(b"first run"))
    old_url = first["figpack_url"]
    assert old_url == f"{first['url']}index.html"
    assert job.complete({"figpack_url": old_url}).status == 200

    # A file of it is lost: the cached result fails validation, the job runs again.
    lost = digest(b"first run")
    (server.figures / "blobs" / lost[:2] / lost).unlink()
    again = call_json(
        f"{server.url}/api/jobs/submit",
        "POST",
        SUBMIT_KEY,
        {"job_type": JOB_TYPE, "input_params": job.params},
    )
    assert again["job_id"] == job.job_id and again["status"] == "pending", again
    call_json(
        f"{server.url}/api/runner/jobs/{job.job_id}/claim",
        "POST",
        RUNNER_KEY,
        **{"X-Runner-ID": job.runner_id},
    )
    second = stored(job, figure(b"second run, other data"))
    new_url = second["figpack_url"]
    assert new_url != old_url and second["version"] != first["version"]
    assert job.complete({"figpack_url": new_url}).status == 200

    new_path = new_url.removeprefix(server.url)
    for old in (
        old_url,  # the previous version
        f"{server.url}/figures/{job.job_id}/index.html",  # unversioned, as older results
        f"{server.url}/figures/{job.job_id}",
    ):
        moved = call(old)
        assert moved.status == 307, (old, moved.status)
        assert moved.headers["Location"] == new_path, old
        assert moved.headers["Cache-Control"] == "no-cache"
        assert_guarded(moved, f"redirect from {old}")
    moved = call(first["url"] + "data.zarr/0.0", headers={"Range": "bytes=0-5"})
    assert moved.headers["Location"] == second["url"].removeprefix(server.url) + "data.zarr/0.0"

    # The current version: its data immutable, its page revalidated.
    data = call(second["url"] + "data.zarr/0.0")
    assert data.body == b"second run, other data"
    assert data.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    page = call(new_url)
    assert page.status == 200 and page.headers["Cache-Control"] == "no-cache"
    assert_guarded(page, "the current page", inline=True)
    cached = call_json(
        f"{server.url}/api/jobs/submit",
        "POST",
        SUBMIT_KEY,
        {"job_type": JOB_TYPE, "input_params": job.params},
    )
    assert cached["status"] == "completed"
    assert cached["result"]["output_data"]["figpack_url"] == new_url
    assert digest(VIEWER) in blobs(server)


def test_files_that_figures_share_are_stored_once(server: Server) -> None:
    before = blobs(server)
    jobs = [held_job(server) for _ in range(3)]
    for n, job in enumerate(jobs):
        stored(job, figure(f"data of figure {n}".encode()))
    added = {d: size for d, size in blobs(server).items() if d not in before}
    viewer_there = digest(VIEWER) in before
    # Three figures, three files each: the page and the viewer once, the data three times.
    assert len(added) == 3 + (0 if viewer_there else 2)
    assert sum(added.values()) < len(VIEWER) + 1000
    # Each figure serves the viewer at its own URL, from the one stored file.
    replies = [
        call(stored(job, figure(f"data of figure {n}".encode()))["url"] + "assets/viewer.js")
        for n, job in enumerate(jobs)
    ]
    assert {r.body for r in replies} == {VIEWER}
    assert len({r.headers["ETag"] for r in replies}) == 1
    assert blobs(server).keys() - before.keys() == added.keys()  # uploading again adds nothing


def test_a_stored_file_cut_short_by_a_crash_is_replaced_by_the_next_upload(
    server: Server,
) -> None:
    """Stored files are not synced one by one: after a power cut one may be shorter
    than its bytes. The next figure with those bytes stores them whole again, instead
    of keeping the short file because its name is there."""
    data = random.Random(11).randbytes(64 * 1024)
    files = {"index.html": INDEX, "data.zarr/0.0": data}
    stored(held_job(server), files)
    path = server.figures / "blobs" / digest(data)[:2] / digest(data)
    path.chmod(0o644)
    path.write_bytes(data[:1000])  # what a power cut may leave
    url = stored(held_job(server), files)["url"]
    assert path.stat().st_size == len(data)
    assert call(url + "data.zarr/0.0").body == data


def gc(server: Server, database: str, *args: str) -> str:  # noqa: F811
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "runpack.cli",
            "gc",
            "--db",
            database,
            "--data-dir",
            str(server.data),
            "--figure-ttl",
            "0.001",
            *args,
        ],
        cwd=server.data.parent,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_gc_removes_the_blobs_no_figure_names_and_only_those(
    server: Server,
    database: str,  # noqa: F811
) -> None:
    finished = held_job(server)
    url = stored(finished, figure(b"finished figure's data"))["figpack_url"]
    assert finished.complete({"figpack_url": url}).status == 200
    running = held_job(server)
    running_figure = stored(running, figure(b"running figure's data"))
    # A blob whose manifest never came (an upload cut short by a crash).
    orphan = b"left by a crash"
    path = server.figures / "blobs" / digest(orphan)[:2] / digest(orphan)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orphan)
    # Other tests' figures, finished or not, may go too: only theirs are checked.
    before = blobs(server)

    dry = gc(server, database, "--dry-run")
    assert "Dry run: nothing was changed." in dry
    assert blobs(server) == before
    out = gc(server, database)
    after = blobs(server)

    gone = set(before) - set(after)
    assert {digest(b"finished figure's data"), digest(orphan)} <= gone
    assert {digest(VIEWER), digest(INDEX), digest(b"running figure's data")} <= set(after)
    for line in ("figures to remove", "files to remove"):
        assert line in dry
    removed = next(line for line in out.splitlines() if "files removed" in line)
    assert removed.split()[2] == str(len(gone)), out
    assert call(url).status == 404
    data = call(running_figure["url"] + "data.zarr/0.0", headers={"Range": "bytes=0-6"})
    assert (data.status, data.body) == (206, b"running")


def test_a_server_killed_mid_upload_keeps_the_stored_figure_whole(
    database: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """SIGKILL while a new version is being received: after a restart the stored
    version is served as it was, and nothing of the cut upload is visible."""
    env = {**KEYS, "RUNPACK_DB": database, **NO_LIMITS}
    with running_server(tmp_path, env=env) as proc:
        server = Server(
            proc.url, int(proc.url.rsplit(":", 1)[1]), tmp_path / "runpack-data", proc.log
        )
        job = held_job(server)
        first = stored(job, figure(b"the stored version"))
        manifest = (server.figures / "manifests" / f"{job.job_id}.json").read_bytes()
        archive = tar_of(figure(random.Random(3).randbytes(4 * 1024 * 1024)))
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.putrequest("POST", f"/api/runner/jobs/{job.job_id}/files")
        for name, value in {
            "Authorization": f"Bearer {RUNNER_KEY}",
            "X-Runner-ID": job.runner_id,
            "Content-Type": "application/x-tar",
            "Content-Length": str(len(archive)),
        }.items():
            conn.putheader(name, value)
        conn.endheaders()
        conn.send(archive[: len(archive) // 2])
        incoming = server.figures / ".incoming"
        deadline = time.monotonic() + 20
        while not any(p.stat().st_size > 0 for p in incoming.glob("*.tar")):
            assert time.monotonic() < deadline, "the upload never reached the server's disk"
            time.sleep(0.02)
        proc.popen.kill()
        proc.popen.wait()
        conn.close()
    with running_server(tmp_path, env=env) as proc:
        assert (server.figures / "manifests" / f"{job.job_id}.json").read_bytes() == manifest
        page = call(f"{proc.url}/figures/{job.job_id}/{first['version']}/data.zarr/0.0")
        assert (page.status, page.body) == (200, b"the stored version")
        moved = call(f"{proc.url}/figures/{job.job_id}/index.html")
        assert moved.headers["Location"] == f"/figures/{job.job_id}/{first['version']}/index.html"
