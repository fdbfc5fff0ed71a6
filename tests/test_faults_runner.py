"""Runner faults with real ``runpack serve`` and ``runpack-runner`` processes on loopback.

Each test breaks something a runner depends on and checks that no job is lost,
that no job runs to two stored results, and that every job ends in the right
state. The server's admin event stream is recorded from the start of each test,
so "one result" is checked on every status change the server published, not
only on the final row.

- A runner killed (SIGKILL) in the middle of a job: after the reconnect grace
  period the job is queued again and another runner completes it.
- A runner's connection cut (tests/tcpproxy.py between runner and server) and
  restored within the grace period: the job finishes on the same runner, as the
  same attempt. Restored after it: the job was queued again and completed by
  another runner; the first runner's late result is refused.
- The server's disk full while a runner uploads a job's figure: the server
  answers 507 naming the cause and keeps nothing of the upload; the runner
  reports the run as retryable; the job runs again once there is room.

The job types come from tests/fault_jobs.py: a job that waits for a file the
test creates (no sleeps decide anything), and one that uploads a folder.
Every wait polls the server's API, its event stream, a log or a file, with a
deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import json
import os
import resource
import signal
import tarfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from runpack import artifacts, uploads
from runpack.app import create_app
from runpack.settings import Settings
from runpack_runner.context import RetryLater
from runpack_runner.execution import JobRun
from runpack_runner.handler import HeartbeatCallback, JobHandler
from runpack_runner.transports.base import Assignment
from runpack_runner.uploads import UploadRetryable
from tests.fault_jobs import install
from tests.procs import KEYS, NO_LIMITS, Proc, running_runner, running_server, until
from tests.tcpproxy import TcpProxy

pytestmark = pytest.mark.timeout(60)

SUBMIT = {"Authorization": f"Bearer {KEYS['RUNPACK_SUBMIT_API_KEY']}"}
ADMIN = {"Authorization": f"Bearer {KEYS['RUNPACK_ADMIN_API_KEY']}"}
RUNNER = {"Authorization": f"Bearer {KEYS['RUNPACK_RUNNER_API_KEY']}"}
SERVER_ENV = {
    **KEYS,
    **NO_LIMITS,
    "RUNPACK_RETRY_BASE_DELAY": "0.2",
    "RUNPACK_SWEEP_INTERVAL": "0.5",
}
RUNNER_ENV = {"RUNPACK_RECONNECT_MIN": "0.2", "RUNPACK_RECONNECT_MAX": "1"}


# --- what a test sees of the server ---------------------------------------------------------


@dataclass
class EventLog:
    """Every event of ``GET /api/admin/events``, from before the first submit."""

    http: aiohttp.ClientSession
    url: str
    events: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._read())
        await until(lambda: self.events, "the admin event stream to open", 10)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _read(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with self.http.get(
            self.url + "/api/admin/events", headers=ADMIN, timeout=timeout
        ) as resp:
            assert resp.status == 200
            kind = ""
            async for raw in resp.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line[len("event: ") :]
                elif line.startswith("data: "):
                    data = json.loads(line[len("data: ") :])
                    self.events.append((time.monotonic(), kind, data))

    def statuses(self, job_id: str) -> list[dict[str, Any]]:
        return [d for _, k, d in self.events if k == "status" and d.get("job_id") == job_id]

    def history(self, job_id: str) -> list[str]:
        return [d["status"] for d in self.statuses(job_id)]

    def claimers(self, job_id: str) -> list[str]:
        return [d["runner_id"] for d in self.statuses(job_id) if d["status"] == "claimed"]

    def results(self, job_id: str) -> list[dict[str, Any]]:
        return [d["result"] for d in self.statuses(job_id) if d["status"] == "completed"]

    def when(self, job_id: str, status: str, after: float = 0.0) -> float | None:
        """When the first ``status`` event of the job after ``after`` arrived."""
        found = (
            at
            for at, kind, data in self.events
            if kind == "status" and data.get("job_id") == job_id and data["status"] == status
        )
        return next((at for at in found if at >= after), None)


@dataclass
class World:
    """One test's server, runners and event log; runners stop before the server."""

    tmp: Path
    http: aiohttp.ClientSession
    server: Proc
    events: EventLog
    procs: contextlib.ExitStack
    runner_env: dict[str, str]

    @property
    def url(self) -> str:
        return self.server.url

    def runner(self, name: str, url: str | None = None, *args: str) -> Proc:
        """A runner named ``name`` (its own folder), to ``url`` (the server by default)."""
        return self.procs.enter_context(
            running_runner(
                self.tmp / name, url or self.url, "--name", name, *args, env=self.runner_env
            )
        )

    async def call(self, method: str, path: str, headers: dict[str, str], **kw: Any) -> Any:
        async with self.http.request(method, self.url + path, headers=headers, **kw) as resp:
            return resp.status, await resp.json(content_type=None)

    async def submit(self, job_type: str, **params: Any) -> str:
        status, body = await self.call(
            "POST",
            "/api/jobs/submit",
            SUBMIT,
            json={"job_type": job_type, "input_params": params},
        )
        assert status == 201, body
        return str(body["job_id"])

    async def job(self, job_id: str) -> dict[str, Any]:
        status, body = await self.call("GET", f"/api/admin/jobs/{job_id}", ADMIN)
        assert status == 200, body
        return dict(body)

    def job_is(
        self, job_id: str, status: str, runner_id: str | None = None
    ) -> Callable[[], Awaitable[dict[str, Any] | None]]:
        async def check() -> dict[str, Any] | None:
            job = await self.job(job_id)
            if job["status"] != status:
                return None
            if runner_id is not None and job["claimed_by"] != runner_id:
                return None
            return job

        return check

    async def completed(self, job_id: str) -> dict[str, Any]:
        """The job once it is completed in the database and its ``completed`` event
        has reached the admin stream too (it may arrive a moment after the reply
        that showed the row)."""
        done: dict[str, Any] = await until(self.job_is(job_id, "completed"), "the job to complete")
        await until(lambda: self.events.when(job_id, "completed"), "the completed event")
        return done

    async def runner_id(self, name: str, connected: bool = True) -> str:
        """The id of the runner named ``name`` once it is (or is not) connected."""

        async def find() -> str | None:
            status, body = await self.call("GET", "/api/admin/runners", ADMIN)
            assert status == 200, body
            for runner in body["runners"]:
                if runner["name"] == name and bool(runner.get("connected")) == connected:
                    return str(runner["runner_id"])
            return None

        state = "connected" if connected else "disconnected"
        return str(await until(find, f"runner {name} {state}"))

    def assert_clean_server_log(self) -> None:
        text = self.server.output()
        assert "Traceback" not in text, text
        assert "(incident " not in text, text  # no request answered with a 500


def runner_log(runner: Proc) -> str:
    path = runner.log.parent / "runpack_runner.log"
    return path.read_text(errors="replace") if path.exists() else ""


def log_has(proc: Proc, text: str) -> Callable[[], bool]:
    return lambda: text in runner_log(proc)


def started(gate: Path, attempt: int) -> Callable[[], list[Path]]:
    """The marker a gate job's run creates: ``started-<attempt>-<pid>``."""
    return lambda: list(gate.glob(f"started-{attempt}-*"))


@contextlib.asynccontextmanager
async def world(tmp: Path, **server_env: str) -> AsyncIterator[World]:
    runner_env = {**RUNNER_ENV, **install(tmp / "site")}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        with (
            running_server(tmp / "server", env={**SERVER_ENV, **server_env}) as server,
            contextlib.ExitStack() as procs,
        ):
            events = EventLog(http, server.url)
            await events.start()
            try:
                yield World(tmp, http, server, events, procs, runner_env)
            finally:
                await events.stop()


def gate_folder(tmp: Path) -> Path:
    gate = tmp / "gate"
    gate.mkdir()
    return gate


# --- a runner dies ------------------------------------------------------------------------------


async def test_a_killed_runners_job_is_queued_again_and_completed_once(tmp_path: Path) -> None:
    """SIGKILL, so the runner says nothing: its socket just closes. (Not in
    test_runner_e2e.py, whose runners always stop by signal handlers.)"""
    grace = 1.0
    async with world(
        tmp_path, RUNPACK_RECONNECT_GRACE=str(grace), RUNPACK_HEARTBEAT_TIMEOUT="6"
    ) as w:
        gate = gate_folder(tmp_path)
        first = w.runner("first")
        first_id = await w.runner_id("first")
        job_id = await w.submit("fault_gate", gate=str(gate), tag="kill")
        await until(w.job_is(job_id, "in_progress", first_id), "the job running on the first")
        await until(started(gate, 1), "the first attempt's handler")
        second = w.runner("second")
        second_id = await w.runner_id("second")

        os.kill(first.popen.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        assert first.popen.wait(10) == -signal.SIGKILL
        await until(w.job_is(job_id, "in_progress", second_id), "the job on the second runner")
        await until(started(gate, 2), "the second attempt's handler")
        requeued_at = w.events.when(job_id, "pending", after=killed_at)
        assert requeued_at is not None
        assert requeued_at - killed_at >= grace * 0.9  # not before the grace period ended
        (gate / "go-2").touch()
        done = await w.completed(job_id)

        assert done["output_data"] == {"pid": second.popen.pid, "attempt": 2, "tag": "kill"}
        assert done["attempts"] == 2
        assert w.events.history(job_id) == [
            *("pending", "claimed", "in_progress"),
            *("pending", "claimed", "in_progress"),
            "completed",
        ]
        assert w.events.claimers(job_id) == [first_id, second_id]
        assert len(w.events.results(job_id)) == 1
        assert f"job {job_id} re-queued" in w.server.output()
        w.assert_clean_server_log()


# --- a runner's connection is cut ---------------------------------------------------------------


async def test_a_cut_within_the_grace_period_resumes_the_same_run(tmp_path: Path) -> None:
    async with (
        world(tmp_path, RUNPACK_RECONNECT_GRACE="20", RUNPACK_HEARTBEAT_TIMEOUT="60") as w,
        TcpProxy(int(w.url.rsplit(":", 1)[1])) as proxy,
    ):
        gate = gate_folder(tmp_path)
        # The socket only: with `auto` a half-cut moment can send it to the HTTP
        # fallback, which also delivers the result once, but resumes nothing.
        runner = w.runner("cut", proxy.url, "--transport", "websocket")
        runner_id = await w.runner_id("cut")
        job_id = await w.submit("fault_gate", gate=str(gate), tag="inside")
        await until(w.job_is(job_id, "in_progress", runner_id), "the job running")

        assert proxy.cut() >= 1
        await w.runner_id("cut", connected=False)
        await until(log_has(runner, "connection lost"), "the runner to see the cut")
        (gate / "go-1").touch()  # the job finishes while its runner is cut off
        await until(log_has(runner, f"job {job_id} completed"), "the handler to finish")
        await until(lambda: proxy.refused >= 1, "the runner to try to reconnect")
        assert (await w.job(job_id))["status"] == "in_progress"  # its result has not arrived

        proxy.restore()
        done = await w.completed(job_id)

        assert done["output_data"] == {"pid": runner.popen.pid, "attempt": 1, "tag": "inside"}
        assert done["attempts"] == 1
        assert done["claimed_by"] == runner_id
        assert w.events.history(job_id) == ["pending", "claimed", "in_progress", "completed"]
        assert len(w.events.results(job_id)) == 1
        assert "resumed 1 jobs" in w.server.output()
        assert "re-queued" not in w.server.output()
        w.assert_clean_server_log()


async def test_a_cut_beyond_the_grace_period_refuses_the_late_result(tmp_path: Path) -> None:
    async with (
        world(tmp_path, RUNPACK_RECONNECT_GRACE="1", RUNPACK_HEARTBEAT_TIMEOUT="60") as w,
        TcpProxy(int(w.url.rsplit(":", 1)[1])) as proxy,
    ):
        gate = gate_folder(tmp_path)
        late = w.runner("late", proxy.url)
        late_id = await w.runner_id("late")
        job_id = await w.submit("fault_gate", gate=str(gate), tag="outside")
        await until(w.job_is(job_id, "in_progress", late_id), "the job running")

        assert proxy.cut() >= 1
        (gate / "go-1").touch()  # the first run finishes, its result stuck on its runner
        await until(log_has(late, f"job {job_id} completed"), "the first run to finish")
        await until(w.job_is(job_id, "pending"), "the job queued again after the grace period")
        other = w.runner("other")
        other_id = await w.runner_id("other")
        await until(w.job_is(job_id, "in_progress", other_id), "the job on the other runner")
        await until(started(gate, 2), "the second attempt's handler")

        proxy.restore()
        await w.runner_id("late")  # back
        await until(log_has(late, f"job {job_id} dropped"), "the late runner to drop its result")
        # The late result, sent again over HTTP as the first runner, is refused too.
        secret = json.loads((tmp_path / "late" / ".runpack_runner.json").read_text())
        status, body = await w.call(
            "POST",
            f"/api/runner/jobs/{job_id}/complete",
            {**RUNNER, "X-Runner-ID": late_id, "X-Runner-Secret": secret["runner_secret"]},
            json={"output_data": {"pid": late.popen.pid, "attempt": 1, "tag": "outside"}},
        )
        assert status == 400 and body["success"] is False, body
        assert (await w.job(job_id))["status"] == "in_progress"

        (gate / "go-2").touch()
        done = await w.completed(job_id)
        assert done["output_data"] == {"pid": other.popen.pid, "attempt": 2, "tag": "outside"}
        assert done["attempts"] == 2
        assert done["claimed_by"] == other_id
        assert w.events.history(job_id) == [
            *("pending", "claimed", "in_progress"),
            *("pending", "claimed", "in_progress"),
            "completed",
        ]
        assert w.events.claimers(job_id) == [late_id, other_id]
        assert len(w.events.results(job_id)) == 1
        w.assert_clean_server_log()


async def test_a_job_given_back_while_its_lost_run_still_stops_runs_after_it(
    tmp_path: Path,
) -> None:
    """Beyond the grace period with one runner, which has a free slot: the server
    gives the job back to it while the lost run's handler has not stopped yet. The
    new run starts once the old one stops, instead of the job sitting claimed by a
    runner that ignored it until the heartbeat timeout."""
    async with (
        world(tmp_path, RUNPACK_RECONNECT_GRACE="1", RUNPACK_HEARTBEAT_TIMEOUT="60") as w,
        TcpProxy(int(w.url.rsplit(":", 1)[1])) as proxy,
    ):
        gate = gate_folder(tmp_path)
        runner = w.runner("only", proxy.url, "--concurrency", "2")
        runner_id = await w.runner_id("only")
        job_id = await w.submit("fault_gate", gate=str(gate), tag="again", stubborn=True)
        await until(w.job_is(job_id, "in_progress", runner_id), "the job running")

        assert proxy.cut() >= 1
        await until(w.job_is(job_id, "pending"), "the job queued again after the grace period")
        proxy.restore()
        await until(log_has(runner, f"job {job_id} dropped"), "the runner to stop the lost run")

        async def claimed_again() -> bool:
            job = await w.job(job_id)
            return job["attempts"] == 2 and job["claimed_by"] == runner_id

        await until(claimed_again, "the job given back to the same runner")
        assert not started(gate, 2)()  # the lost run still holds the job's slot
        (gate / "go-1").touch()  # the lost run's handler returns; its result is dropped
        await until(started(gate, 2), "the new run to start")
        (gate / "go-2").touch()
        done = await w.completed(job_id)

        assert done["output_data"] == {"pid": runner.popen.pid, "attempt": 2, "tag": "again"}
        assert done["attempts"] == 2
        assert w.events.history(job_id) == [
            *("pending", "claimed", "in_progress"),
            *("pending", "claimed", "in_progress"),
            "completed",
        ]
        assert len(w.events.results(job_id)) == 1
        w.assert_clean_server_log()


# --- the server's disk fills up -----------------------------------------------------------------

#: The server's file size limit while "full", and the upload that does not fit.
FULL_AT = 2 * 1024 * 1024
UPLOAD_BYTES = 3 * 1024 * 1024


@contextlib.contextmanager
def file_size_limit(pid: int, limit: int) -> Iterator[Callable[[], None]]:
    """Cap the size of any file process ``pid`` writes (RLIMIT_FSIZE); yields a function
    that lifts the cap ("space returns"). Python ignores SIGXFSZ, so a write over the
    cap fails with EFBIG."""
    before = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, before[1]))

    def lift() -> None:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, before)

    try:
        yield lift
    finally:
        with contextlib.suppress(ProcessLookupError):
            lift()


async def test_a_full_disk_on_upload_is_a_clear_507_and_the_job_runs_again(
    tmp_path: Path,
) -> None:
    """The disk fills up as RLIMIT_FSIZE set on the running server (``prlimit``): every
    write of the server's real upload path (spooling the body) fails with EFBIG past
    2 MiB, as it would with ENOSPC on a full disk, while its database and log stay far
    below the cap. Lifting the limit is the space coming back."""
    async with world(tmp_path, RUNPACK_HEARTBEAT_TIMEOUT="60") as w:
        figures = tmp_path / "server" / "runpack-data" / "figures"
        runner = w.runner("uploader")
        await w.runner_id("uploader")
        with file_size_limit(w.server.popen.pid, FULL_AT) as space_returns:
            job_id = await w.submit("fault_folder", size=UPLOAD_BYTES)

            async def first_run_lost() -> dict[str, Any] | None:
                job = await w.job(job_id)
                return job if "Attempt 1 of 3 lost" in job.get("error_message", "") else None

            lost = await until(first_run_lost, "the first run to be given up as retryable", 25)
            assert "HTTP 507" in lost["error_message"], lost
            assert "EFBIG" in lost["error_message"], lost
            assert "Insufficient storage" in runner_log(runner)
            # Nothing of the refused uploads is visible or left behind.
            assert not (figures / "manifests" / f"{job_id}.json").exists()
            assert not (figures / "blobs").exists() or blob_names(figures) == set()
            assert list((figures / ".incoming").iterdir()) == []
            space_returns()
            done = await until(w.job_is(job_id, "completed"), "the job to complete", 25)

        assert done["attempts"] >= 2
        assert done["output_data"]["attempt"] == done["attempts"]
        url = done["output_data"]["figpack_url"]
        assert url.startswith(f"{w.url}/figures/{job_id}/") and url.endswith("/index.html")
        async with w.http.get(url) as resp:
            assert resp.status == 200
            assert job_id in await resp.text()
        sizes = sorted(p.stat().st_size for p in (figures / "blobs").rglob("*") if p.is_file())
        assert UPLOAD_BYTES in sizes
        assert len(w.events.results(job_id)) == 1
        assert "completed" not in w.events.history(job_id)[:-1]
        assert "failed" not in w.events.history(job_id)
        text = w.server.output()
        assert f"cannot store the figure of job {job_id}" in text
        w.assert_clean_server_log()


# --- storage errors, each write step, in process -------------------------------------------------

JOB = "fault_folder"


def tar_of(files: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


FILES = {"index.html": b"<!doctype html>v1", "data/a.bin": bytes(5000), "data/b.bin": bytes(7)}


@pytest.fixture
async def storage(tmp_path: Path, aiohttp_client: Any) -> tuple[TestClient, str, str, Path]:
    """An app on SQLite, a job held by a runner: (client, job_id, runner_id, figures)."""
    settings = Settings(
        db=str(tmp_path / "runpack.db"),
        data_dir=str(tmp_path / "data"),
        submit_api_key=KEYS["RUNPACK_SUBMIT_API_KEY"],
        runner_api_key=KEYS["RUNPACK_RUNNER_API_KEY"],
        admin_api_key=KEYS["RUNPACK_ADMIN_API_KEY"],
        sweep_interval=3600.0,
        rate_new_jobs=0,
        rate_key_new_jobs=0,
        rate_requests=0,
        max_attempts=2,
        retry_base_delay=0.0,
    )
    client: TestClient = await aiohttp_client(create_app(settings))
    resp = await client.post(
        "/api/jobs/submit", json={"job_type": JOB, "input_params": {}}, headers=SUBMIT
    )
    job_id = (await resp.json())["job_id"]
    resp = await client.post(
        "/api/runner/register", json={"name": "r", "capabilities": [JOB]}, headers=RUNNER
    )
    runner_id = (await resp.json())["runner_id"]
    resp = await client.post(
        f"/api/runner/jobs/{job_id}/claim", headers={**RUNNER, "X-Runner-ID": runner_id}
    )
    assert resp.status == 200, await resp.text()
    return client, job_id, runner_id, tmp_path / "data" / "figures"


async def upload(client: TestClient, job_id: str, runner_id: str, body: bytes) -> Any:
    return await client.post(
        f"/api/runner/jobs/{job_id}/files",
        data=body,
        headers={**RUNNER, "X-Runner-ID": runner_id, "Content-Type": "application/x-tar"},
    )


def blob_names(figures: Path) -> set[str]:
    return {p.name for p in (figures / "blobs").rglob("*") if p.is_file() and p.name != ".lock"}


def leftovers(figures: Path) -> list[str]:
    incoming = figures / ".incoming"
    return sorted(p.name for p in incoming.iterdir()) if incoming.exists() else []


@pytest.mark.parametrize(
    ("code", "status", "error"),
    [
        (errno.ENOSPC, 507, "Insufficient storage"),
        (errno.EDQUOT, 507, "Insufficient storage"),
        (errno.EFBIG, 507, "Insufficient storage"),
        (errno.EROFS, 503, "not writable"),
        (errno.EACCES, 503, "not writable"),
    ],
    ids=["ENOSPC", "EDQUOT", "EFBIG", "EROFS", "EACCES"],
)
async def test_a_write_error_while_unpacking_is_named_and_leaves_nothing(
    storage: tuple[TestClient, str, str, Path],
    monkeypatch: pytest.MonkeyPatch,
    code: int,
    status: int,
    error: str,
) -> None:
    client, job_id, runner_id, figures = storage
    real_write = uploads._write_new
    written: list[Path] = []

    def write_half_then_fail(target: Path, source: Any, size: int) -> None:
        if written:  # the second file: half of it, then the disk gives out
            target.write_bytes(source.read(size // 2))
            raise OSError(code, os.strerror(code))
        written.append(target)
        real_write(target, source, size)

    monkeypatch.setattr(uploads, "_write_new", write_half_then_fail)
    resp = await upload(client, job_id, runner_id, tar_of(FILES))
    assert resp.status == status
    body = await resp.json()
    assert error in body["error"]
    assert errno.errorcode[code] in body["details"]
    assert "unpacking the upload" in body["details"]
    assert not (figures / "manifests" / f"{job_id}.json").exists()
    assert not (figures / "blobs").exists()
    assert leftovers(figures) == []
    assert (await client.get(f"/figures/{job_id}/index.html")).status == 404

    monkeypatch.setattr(uploads, "_write_new", real_write)  # room again
    assert (await upload(client, job_id, runner_id, tar_of(FILES))).status == 201


async def test_a_failed_replacement_keeps_the_stored_figure(
    storage: tuple[TestClient, str, str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new version's files are stored, then its manifest cannot be put in place
    (the step a crash would interrupt): the stored figure stays whole and current, and
    the next sweep removes the new files, which no figure names."""
    client, job_id, runner_id, figures = storage
    stored = await (await upload(client, job_id, runner_id, tar_of(FILES))).json()
    before = blob_names(figures)
    real_rename = os.rename

    def rename(src: Any, dst: Any) -> None:
        if Path(dst).name == f"{job_id}.json":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))  # putting the new one in place
        real_rename(src, dst)

    monkeypatch.setattr(artifacts.os, "rename", rename)
    resp = await upload(client, job_id, runner_id, tar_of({"index.html": b"v2"}))
    assert resp.status == 503
    assert "EROFS" in (await resp.json())["details"]
    monkeypatch.setattr(artifacts.os, "rename", real_rename)
    at = f"/figures/{job_id}/{stored['version']}"
    assert await (await client.get(f"{at}/index.html")).read() == FILES["index.html"]
    assert (await client.get(f"{at}/data/a.bin")).status == 200
    assert leftovers(figures) == []
    orphans = blob_names(figures) - before
    assert len(orphans) == 1  # v2's index.html: stored, named by no manifest
    swept = await artifacts.FigureStore(figures, "http://127.0.0.1:1", 10**6, 100).sweep()
    assert (swept.blobs, swept.bytes) == (1, 2)
    assert blob_names(figures) == before
    assert (await client.get(f"{at}/data/a.bin")).status == 200


async def test_other_os_errors_are_not_called_a_full_disk(
    storage: tuple[TestClient, str, str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, job_id, runner_id, figures = storage

    def broken(target: Path, source: Any, size: int) -> None:
        raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG))

    monkeypatch.setattr(uploads, "_write_new", broken)
    resp = await upload(client, job_id, runner_id, tar_of(FILES))
    assert resp.status == 500
    assert "storage" not in (await resp.json())["error"].lower()
    assert leftovers(figures) == []


# --- a retryable error, as the runner reports it -------------------------------------------------


async def test_a_retryable_error_queues_the_job_again_until_its_attempts_run_out(
    storage: tuple[TestClient, str, str, Path],
) -> None:
    client, job_id, runner_id, _ = storage
    headers = {**RUNNER, "X-Runner-ID": runner_id}
    error = f"/api/runner/jobs/{job_id}/error"
    bad = await client.post(error, json={"error_message": "x", "retryable": 1}, headers=headers)
    assert bad.status == 400
    full = "Could not upload the files (HTTP 507: Insufficient storage)"
    resp = await client.post(
        error,
        json={"error_message": full, "retryable": True, "console_output": "uploading\n"},
        headers=headers,
    )
    assert resp.status == 200, await resp.text()
    job = await (await client.get(f"/api/admin/jobs/{job_id}", headers=ADMIN)).json()
    assert job["status"] == "pending"
    assert job["error_message"] == f"Attempt 1 of 2 lost: {full}; retrying"
    assert job["console_output"] == "uploading\n"
    again = await client.post(
        error, json={"error_message": full, "retryable": True}, headers=headers
    )
    assert again.status == 400  # not held any more: nothing changes
    claim = await client.post(f"/api/runner/jobs/{job_id}/claim", headers=headers)
    assert claim.status == 200, await claim.text()
    resp = await client.post(
        error, json={"error_message": full, "retryable": True}, headers=headers
    )
    assert resp.status == 200
    job = await (await client.get(f"/api/admin/jobs/{job_id}", headers=ADMIN)).json()
    assert job["status"] == "failed"
    assert job["error_message"] == f"Job failed after 2 attempts: {full} on the last attempt"


class _Raises(JobHandler):
    job_type = "raises"

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def execute(
        self, input_params: dict[str, Any], heartbeat_callback: HeartbeatCallback
    ) -> dict[str, Any]:
        raise self.exc


def _caused_by(cause: BaseException) -> RuntimeError:
    try:
        raise RuntimeError("the figure could not be saved") from cause
    except RuntimeError as exc:
        return exc


@pytest.mark.parametrize(
    ("exc", "retryable"),
    [
        (UploadRetryable("Could not upload the files (HTTP 507)"), True),
        (_caused_by(RetryLater("the archive is down")), True),
        (RuntimeError("a bug"), False),
        (_caused_by(OSError(errno.ENOSPC, "full")), False),  # the runner's own disk
    ],
    ids=["upload", "caused-by", "bug", "runner-disk"],
)
async def test_a_run_is_retryable_when_a_retry_later_caused_its_end(
    exc: BaseException, retryable: bool
) -> None:
    run = JobRun(Assignment("job", "raises", {}), _Raises(exc))
    run.start()
    result = await run.outcome(10)
    assert result is not None and result.kind == "error"
    assert result.retryable is retryable
    assert result.body().get("retryable", False) is retryable
