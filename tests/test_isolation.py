"""Each run in a process of its own, with real ``runpack serve`` and ``runpack-runner``
processes on loopback: cancel and time limits end the work for real, a crash or a
memory cap fails one job and not the runner, a submitter may ask for a shorter time
limit but never a longer one, and a failed job's public console and error hold one
line, never a traceback or a path of the runner's machine.

The job types come from tests/isolation_jobs.py. Every wait polls the server's API,
a file or a process with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.isolation_jobs import REPO, install
from tests.procs import KEYS, NO_LIMITS, Proc, running_runner, running_server, until

pytestmark = pytest.mark.timeout(90)

SUBMIT = {"Authorization": f"Bearer {KEYS['RUNPACK_SUBMIT_API_KEY']}"}
ADMIN = {"Authorization": f"Bearer {KEYS['RUNPACK_ADMIN_API_KEY']}"}
SERVER_ENV = {**KEYS, **NO_LIMITS}
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class World:
    tmp: Path
    http: aiohttp.ClientSession
    server: Proc
    runner: Proc

    async def call(self, method: str, path: str, headers: dict[str, str], **kw: Any) -> Any:
        async with self.http.request(method, self.server.url + path, headers=headers, **kw) as r:
            return r.status, await r.json(content_type=None)

    async def submit(self, job_type: str, limit: float | None = None, **params: Any) -> str:
        """Submit a job; ``limit``: the ``timeout`` its submitter asks for."""
        body: dict[str, Any] = {"job_type": job_type, "input_params": params}
        if limit is not None:
            body["timeout"] = limit
        status, answer = await self.call("POST", "/api/jobs/submit", SUBMIT, json=body)
        assert status == 201, answer
        return str(answer["job_id"])

    async def public(self, job_id: str) -> dict[str, Any]:
        """The job as anyone sees it, with no key."""
        status, body = await self.call("GET", f"/api/admin/jobs/{job_id}", {})
        assert status == 200, body
        return dict(body)

    async def ends(self, job_id: str, status: str = "failed") -> dict[str, Any]:
        async def done() -> dict[str, Any] | None:
            job = await self.public(job_id)
            return job if job["status"] in ("completed", "failed", "cancelled") else None

        job: dict[str, Any] = await until(done, f"job {job_id} to end", 60)
        assert job["status"] == status, job
        return job

    def runner_log(self) -> str:
        path = self.runner.log.parent / "runpack_runner.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextlib.asynccontextmanager
async def world(tmp: Path, *args: str, **runner_env: str) -> AsyncIterator[World]:
    env = {"RUNPACK_RECONNECT_MIN": "0.2", **install(tmp / "site"), **runner_env}
    timeout = aiohttp.ClientTimeout(total=30)
    with (
        running_server(tmp / "server", env=SERVER_ENV) as server,
        running_runner(tmp / "runner", server.url, *args, env=env) as runner,
    ):
        async with aiohttp.ClientSession(timeout=timeout) as http:
            yield World(tmp, http, server, runner)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and " Z " not in Path(f"/proc/{pid}/stat").read_text()


def tree(pid: int) -> list[int]:
    """``pid`` and every process under it (the fork server and the jobs' processes)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    found, todo = [pid], [pid]
    while todo:
        parent = todo.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        found += children
        todo += children
    return found


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


async def spinning(w: World, **params: Any) -> tuple[str, int]:
    """An ``iso_spin`` job once its process burns CPU: its id and process id."""
    job_id = await w.submit("iso_spin", dir=str(w.tmp), **params)
    marker = await until(lambda: list(w.tmp.glob("pid-*")), "the job's process to start")
    return job_id, int(marker[0].name.split("-")[1])


# --- cancel, time limits ------------------------------------------------------------------------


@pytest.mark.parametrize(("stubborn", "grace"), [(False, 5.0), (True, 1.0)])
async def test_a_cancelled_cpu_bound_handler_is_gone_within_the_stop_grace(
    tmp_path: Path, stubborn: bool, grace: float
) -> None:
    """SIGTERM ends Python code at once; a handler deaf to it (as native code that
    never returns to Python is) is killed once the stop grace has passed."""
    async with world(tmp_path, RUNPACK_STOP_GRACE=str(grace)) as w:
        job_id, pid = await spinning(w, stubborn=stubborn)
        assert pid != w.runner.popen.pid and alive(pid)
        status, body = await w.call("POST", f"/api/jobs/{job_id}/cancel", ADMIN)
        assert status == 200, body
        cancelled = time.monotonic()
        await until(lambda: not alive(pid), "the job's process to be gone", 10)
        gone_after = time.monotonic() - cancelled
        if stubborn:
            assert gone_after < grace + 2.0, gone_after  # the grace, then SIGKILL
            await until(lambda: "did not stop within 1 s: killed" in w.runner_log(), "the log")
        else:
            assert gone_after < grace, gone_after
        # Nothing of the job goes on: the runner and its fork server sit idle.
        pids = tree(w.runner.popen.pid)
        before = cpu_seconds(pids)
        await asyncio.sleep(1.0)  # a measurement over a second, not a wait for an event
        used = cpu_seconds(pids) - before
        assert used < 0.3, f"the runner's processes used {used:.2f} s of CPU in a second"
        assert (await w.public(job_id))["status"] == "cancelled"
        assert w.runner.popen.poll() is None
        assert "killed" not in w.runner_log() or stubborn


async def test_a_job_fails_at_its_time_limit_and_its_process_ends(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        await w.ends(await w.submit("iso_fail"))  # the fork server is up: processes start fast
        job_id, pid = await spinning(w, limit=2)
        job = await w.ends(job_id)
        assert job["error_message"] == "Job timed out after 2 s"
        await until(lambda: not alive(pid), "the job's process to be gone", 5)


async def test_a_submitter_may_ask_for_less_time_than_the_type_allows_never_more(
    tmp_path: Path,
) -> None:
    async with world(tmp_path, "--concurrency", "2") as w:
        shorter = await w.submit("iso_capped", limit=0.5, n=1)
        longer = await w.submit("iso_capped", limit=3600, n=2)
        assert (await w.ends(shorter))["error_message"] == "Job timed out after 0.5 s"
        assert (await w.ends(longer))["error_message"] == "Job timed out after 2 s"
        # The time limit is no part of the job's hash: the same inputs are the same job.
        body = {"job_type": "iso_capped", "input_params": {"n": 1}, "timeout": 30}
        status, answer = await w.call("POST", "/api/jobs/submit", SUBMIT, json=body)
        assert status == 200 and answer["job_id"] == shorter, answer
        for bad in (0, -1, "60", True, 86_401, None):
            body = {"job_type": "iso_capped", "input_params": {"n": 3}, "timeout": bad}
            status, answer = await w.call("POST", "/api/jobs/submit", SUBMIT, json=body)
            if bad is None:
                assert status == 201, answer
            else:
                assert status == 400 and "timeout" in answer["error"], (bad, answer)


# --- crashes and memory -------------------------------------------------------------------------


async def test_a_crash_fails_its_job_while_the_other_slot_completes_its_own(
    tmp_path: Path,
) -> None:
    async with world(tmp_path, "--concurrency", "2") as w:
        waiting = await w.submit("iso_wait", dir=str(tmp_path))

        async def reported() -> bool:
            job = await w.public(waiting)
            progress = job.get("progress", {}).get("current")
            return progress == 1 and "waiting for the gate" in job.get("console_output", "")

        await until(reported, "progress and console from the job's process")
        crashed = await w.submit("iso_abort")
        job = await w.ends(crashed)
        assert (
            job["error_message"] == "iso_abort failed: the handler's process died: signal SIGABRT"
        )
        assert "about to crash" in job["console_output"]
        (tmp_path / "go").touch()
        done = await w.ends(waiting, "completed")
        assert done["output_data"]["pid"] != w.runner.popen.pid, done
        assert w.runner.popen.poll() is None


async def test_a_run_over_its_memory_limit_fails_with_the_limit(tmp_path: Path) -> None:
    async with world(tmp_path, RUNPACK_JOB_MEMORY_LIMIT="100") as w:
        job = await w.ends(await w.submit("iso_hog", mib=300))
        assert job["error_message"] == (
            "iso_hog failed: the handler's process used more than 100 MiB of memory"
        )
        small = await w.ends(await w.submit("iso_hog", mib=1, limit=1))
        assert small["error_message"] == "Job timed out after 1 s"  # it ran, within its limit


# --- public consoles ----------------------------------------------------------------------------


def assert_no_internals(text: str) -> None:
    assert "Traceback" not in text, text
    assert 'File "' not in text, text
    for path in (str(REPO), sys.prefix, "site-packages"):
        assert path not in text, text


async def test_a_failed_jobs_public_console_and_error_hold_one_line(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        key_error = await w.ends(await w.submit("iso_fail", how="key"))
        assert key_error["error_message"] == "iso_fail failed: KeyError: 'units'"
        missing = await w.ends(await w.submit("iso_fail", how="path"))
        assert missing["error_message"] == (
            "iso_fail failed: FileNotFoundError: [Errno 2] No such file or directory: "
            "'…/no-such-file.nwb'"
        )
        for job in (key_error, missing):
            console = job["console_output"]
            assert console.rstrip().endswith(job["error_message"]), console
            assert "reading the units" in console
            assert_no_internals(console)
            assert_no_internals(job["error_message"])
            stream = await first_event(w, job["job_id"])
            assert job["error_message"] in stream
            assert_no_internals(stream)
        await until(lambda: w.runner_log().count("Traceback") >= 2, "the tracebacks in the log")
        assert "KeyError: 'units'" in w.runner_log()


async def first_event(w: World, job_id: str) -> str:
    """The first event of the job's keyless event stream (its current state), as sent."""
    url = f"{w.server.url}/api/jobs/{job_id}/events"
    async with w.http.get(url) as resp:
        assert resp.status == 200
        text = ""
        async for line in resp.content:
            text += line.decode()
            if text.endswith("\n\n") and "data:" in text:
                return text
    raise AssertionError(f"no event: {text!r}")


async def test_a_runner_killed_outright_takes_its_jobs_processes_with_it(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        _, pid = await spinning(w, stubborn=True)
        w.runner.popen.kill()
        await until(lambda: not alive(pid), "the job's process to be gone", 10)
