"""End to end: a real ``runpack serve`` and real ``runpack-runner`` processes.

Nothing sleeps to synchronize: every wait polls the server's API (or the
runner's process and files) in a bounded loop.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import ADMIN, ADMIN_KEY, RUNNER_KEY, SUBMIT, SUBMIT_KEY
from tests.procs import NO_LIMITS, free_port, until

BIN = Path(sys.executable).parent


@dataclass
class Stack:
    """The processes of one test, all killed in teardown."""

    tmp: Path
    port: int
    procs: list[subprocess.Popen[bytes]]
    http: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- processes ------------------------------------------------------------------
    async def serve(self) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "RUNPACK_SUBMIT_API_KEY": SUBMIT_KEY,
            "RUNPACK_RUNNER_API_KEY": RUNNER_KEY,
            "RUNPACK_ADMIN_API_KEY": ADMIN_KEY,
            **NO_LIMITS,
        }
        cmd = [str(BIN / "runpack"), "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--db", str(self.tmp / "runpack.db"), "--data-dir", str(self.tmp / "data")]
        proc = self._start(cmd, env, self.tmp, "server")
        await until(self._healthy, "the server to answer /health")
        return proc

    def runner(self, folder: str = "runner", *args: str) -> subprocess.Popen[bytes]:
        cwd = self.tmp / folder
        cwd.mkdir(exist_ok=True)
        env = {
            **os.environ,
            "RUNPACK_WORKER_URL": self.url,
            "RUNPACK_RUNNER_API_KEY": RUNNER_KEY,
            "RUNPACK_RECONNECT_MAX": "1",
        }
        return self._start([str(BIN / "runpack-runner"), *args], env, cwd, "runner")

    def _start(self, cmd: list[str], env: dict[str, str], cwd: Path, what: str) -> Any:
        out = (cwd / f"{what}.out").open("ab")
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        self.procs.append(proc)
        return proc

    async def _healthy(self) -> bool:
        try:
            async with self.http.get(self.url + "/health") as resp:
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    # --- the API ----------------------------------------------------------------------
    async def call(self, method: str, path: str, headers: dict[str, str], **kw: Any) -> Any:
        async with self.http.request(method, self.url + path, headers=headers, **kw) as resp:
            body = await resp.json() if resp.status != 204 else None
            return resp.status, body

    async def submit(self, name: str, processing_time: float) -> str:
        params = {"name": name, "processing_time": processing_time}
        status, body = await self.call(
            "POST",
            "/api/jobs/submit",
            SUBMIT,
            json={"job_type": "hello_world", "input_params": params},
        )
        assert status == 201, body
        return str(body["job_id"])

    async def job(self, job_id: str) -> Any:
        status, body = await self.call("GET", f"/api/admin/jobs/{job_id}", ADMIN)
        assert status == 200, body
        return body

    async def status(self, job_id: str) -> str:
        return str((await self.job(job_id))["status"])

    def job_is(self, job_id: str, status: str) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return await self.status(job_id) == status

        return check

    async def runners(self) -> list[dict[str, Any]]:
        status, body = await self.call("GET", "/api/admin/runners", ADMIN)
        assert status == 200, body
        return list(body["runners"])


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        s = Stack(tmp_path, free_port(), [], http)
        try:
            await s.serve()
            yield s
        finally:
            for proc in s.procs:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(10)


def runner_log(stack: Stack, folder: str = "runner") -> str:
    path = stack.tmp / folder / "runpack_runner.log"
    return path.read_text() if path.exists() else ""


def log_has(stack: Stack, text: str, folder: str = "runner") -> Callable[[], bool]:
    return lambda: text in runner_log(stack, folder)


def exited(proc: subprocess.Popen[bytes]) -> Callable[[], bool]:
    return lambda: proc.poll() is not None


# --- tests --------------------------------------------------------------------------------------


async def test_hello_world_over_the_websocket(stack: Stack) -> None:
    stack.runner()
    quick = await stack.submit("Ada", 0)
    second = await stack.submit("Bea", 1)
    for job_id in (quick, second):
        await until(stack.job_is(job_id, "completed"), f"job {job_id} to complete")
    status, body = await stack.call("GET", f"/api/jobs/{second}", SUBMIT)
    assert status == 200
    assert body["result"]["output_data"] == {"message": "Hello, Bea!", "processing_time": 1}
    assert "Completed!" in body["result"]["console_output"]
    assert body["progress"] == {"current": 1, "total": 1}
    (runner,) = await stack.runners()
    assert runner["connected"] and runner["transport"] == "websocket"
    assert "over websocket (push)" in runner_log(stack)


async def test_hello_world_over_the_http_fallback(stack: Stack) -> None:
    stack.runner("runner", "--transport", "http")
    jobs = [await stack.submit("Ada", 0), await stack.submit("Bea", 1)]
    for job_id in jobs:
        await until(stack.job_is(job_id, "completed"), f"job {job_id} to complete")
    detail = await stack.job(jobs[1])
    assert detail["output_data"] == {"message": "Hello, Bea!", "processing_time": 1}
    assert "over http (long-poll)" in runner_log(stack)
    (runner,) = await stack.runners()
    assert not runner["connected"]  # it never opened the socket


async def test_concurrency_is_respected(stack: Stack) -> None:
    stack.runner("runner", "--concurrency", "2")
    jobs = [await stack.submit(f"n{i}", 1) for i in range(4)]
    most = 0

    async def all_done() -> bool:
        nonlocal most
        status, body = await stack.call("GET", "/api/admin/jobs?limit=100", ADMIN)
        assert status == 200
        states = {j["job_id"]: j["status"] for j in body["jobs"]}
        running = sum(states[j] in ("claimed", "in_progress") for j in jobs)
        assert running <= 2, states
        most = max(most, running)
        return all(states[j] == "completed" for j in jobs)

    await until(all_done, "four jobs to complete")
    assert most == 2


async def test_sigterm_finishes_the_running_job_then_exits(stack: Stack) -> None:
    proc = stack.runner("runner", "--concurrency", "2")
    first = await stack.submit("first", 2)
    await until(stack.job_is(first, "in_progress"), "the job to run")
    proc.send_signal(signal.SIGTERM)
    await until(log_has(stack, "stopping: taking no new jobs"), "the runner to start draining")
    later = await stack.submit("later", 0)  # a free slot, but the runner takes nothing new
    await until(stack.job_is(first, "completed"), "the running job to complete")
    await until(exited(proc), "the runner to exit")
    assert proc.returncode == 0
    assert await stack.status(later) == "pending"


async def test_a_second_sigterm_releases_the_job(stack: Stack) -> None:
    proc = stack.runner()
    job_id = await stack.submit("long", 60)
    await until(stack.job_is(job_id, "in_progress"), "the job to run")
    proc.send_signal(signal.SIGTERM)
    await until(log_has(stack, "stopping: taking no new jobs"), "the runner to start draining")
    proc.send_signal(signal.SIGTERM)
    await until(stack.job_is(job_id, "pending"), "the job back in the queue")
    await until(exited(proc), "the runner to exit")
    assert proc.returncode == 0
    assert "releasing 1 running job(s)" in runner_log(stack)


async def test_cancel_stops_the_handler(stack: Stack) -> None:
    proc = stack.runner()
    job_id = await stack.submit("to cancel", 60)
    await until(stack.job_is(job_id, "in_progress"), "the job to run")
    # A running job: the admin key cancels it, and the server tells the runner.
    status, body = await stack.call("POST", f"/api/jobs/{job_id}/cancel", ADMIN)
    assert status == 200, body
    await until(stack.job_is(job_id, "cancelled"), "the job cancelled")
    await until(log_has(stack, f"job {job_id} stopped"), "the runner to stop the handler", 10)
    # The slot is free again: a new job runs.
    after = await stack.submit("after", 0)
    await until(stack.job_is(after, "completed"), "the next job")
    assert proc.poll() is None


async def test_the_runner_keeps_its_id_across_restarts(stack: Stack) -> None:
    state = stack.tmp / "runner" / ".runpack_runner.json"

    def saved_id() -> str | None:
        if not state.exists():
            return None
        return json.loads(state.read_text()).get("runner_id")  # type: ignore[no-any-return]

    first = stack.runner("runner", "--name", "steady")
    runner_id = await until(saved_id, "the runner id in the state file")

    async def connected() -> bool:
        return any(r["runner_id"] == runner_id and r["connected"] for r in await stack.runners())

    await until(connected, "the runner connected")
    first.send_signal(signal.SIGTERM)
    await until(exited(first), "the runner to exit")
    assert first.returncode == 0

    second = stack.runner("runner")
    await until(connected, "the restarted runner connected")
    assert saved_id() == runner_id
    (only,) = await stack.runners()
    assert only["runner_id"] == runner_id and only["name"] == "steady"
    assert second.poll() is None


async def test_a_server_restart_loses_no_result(stack: Stack) -> None:
    stack.runner()
    job_id = await stack.submit("through a restart", 2)
    await until(stack.job_is(job_id, "in_progress"), "the job to run")
    server = stack.procs[0]
    server.send_signal(signal.SIGTERM)
    await until(exited(server), "the server to stop")
    await stack.serve()  # same port, same database
    await until(stack.job_is(job_id, "completed"), "the job to complete after the restart")
    detail = await stack.job(job_id)
    assert detail["output_data"] == {"message": "Hello, through a restart!", "processing_time": 2}
    assert detail["attempts"] == 1  # resumed, not run again
