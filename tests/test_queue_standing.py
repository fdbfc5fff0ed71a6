"""Where a pending job stands, end to end: real ``runpack serve`` and ``runpack-runner``
processes on both engines; its place in line, the runners that can take it, the
estimate of its start against when it really started, and the sentence (and the
server's warning) for a job type no runner handles, down to ``runpack submit --wait``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.live import connected_runners
from tests.procs import KEYS, NO_LIMITS, clean_env, running_runner, running_server, until

SERVER_ENV = {**KEYS, **NO_LIMITS}
SUBMIT = {"Authorization": f"Bearer {KEYS['RUNPACK_SUBMIT_API_KEY']}"}
#: The run time of each job, seconds.
RUN = 2
#: How far the estimate may be from the real start: a second, plus a quarter of it
#: (the runs' own spread on a shared machine: a handler process starts per run).
TOLERANCE_S, TOLERANCE_SHARE = 1.0, 0.25


def _call(url: str, method: str = "GET", body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    headers = {**SUBMIT, "Content-Type": "application/json"}
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.load(resp)


def submit(url: str, job_type: str, **params: Any) -> str:
    body = {"job_type": job_type, "input_params": params}
    return str(_call(url + "/api/jobs/submit", "POST", body)["job_id"])


def status(url: str, job_id: str) -> Any:
    return _call(f"{url}/api/jobs/{job_id}")


def detail(url: str, job_id: str) -> Any:
    return _call(f"{url}/api/admin/jobs/{job_id}")


def waiting_line(url: str, job_type: str) -> str:
    """The line ``runpack submit --wait`` prints about where its job stands (stderr,
    line mode); the command is stopped then (the job stays queued)."""
    env = clean_env({"RUNPACK_URL": url, "RUNPACK_SUBMIT_API_KEY": KEYS["RUNPACK_SUBMIT_API_KEY"]})
    cmd = [sys.executable, "-m", "runpack.cli", "submit", job_type, "-p", "n=3", "--wait"]
    with subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stderr is not None
        seen = []
        deadline = time.monotonic() + 30
        try:
            while time.monotonic() < deadline:
                line = proc.stderr.readline()
                seen.append(line)
                if line.startswith("waiting: "):
                    return line.strip()
            raise AssertionError("".join(seen))
        finally:
            proc.terminate()


async def test_two_runners_a_queue_and_an_estimate_within_tolerance(
    tmp_path: Path, database: str
) -> None:
    with (
        running_server(tmp_path / "server", SERVER_ENV, ("--db", database)) as server,
        running_runner(tmp_path / "a", server.url, "--name", "alpha") as a,
        running_runner(tmp_path / "b", server.url, "--name", "beta") as b,
    ):
        url = server.url
        await until(lambda: len(connected_runners(url)) == 2, "both runners to connect", 30)
        # Run times to estimate from: one run on each runner.
        warm = [submit(url, "hello_world", name=f"warm{i}", processing_time=RUN) for i in (1, 2)]
        for job_id in warm:
            await until(lambda j=job_id: status(url, j)["status"] == "completed", "warm-up", 30)
            assert detail(url, job_id)["runner_name"] in ("alpha", "beta")

        # Six jobs at once: two start, four wait; the last has three ahead of it. That
        # holds while no run can have ended: a round slower than that (a loaded
        # machine) proves nothing, so its jobs run out and another round is made.
        for round_no in range(3):
            began = time.monotonic()
            names = [f"q{round_no}-{i}" for i in range(6)]
            jobs = [submit(url, "hello_world", name=n, processing_time=RUN) for n in names]
            # Jobs submitted in the same millisecond stand in the order of their ids.
            last = max(jobs, key=lambda j: (detail(url, j)["created_at"], j))
            read_at = time.time() * 1000
            body = status(url, last)
            snapshot = detail(url, last)  # what the event stream's snapshot says
            if time.monotonic() - began < RUN * 0.9:
                break
            for job_id in jobs:
                await until(lambda j=job_id: status(url, j)["status"] == "completed", "a round", 60)
        else:
            raise AssertionError("three rounds of six submits each took longer than a run")
        assert body["status"] == "pending", body
        queue = body["queue"]
        assert queue["position"] == 4, queue
        assert queue["runners"] == 2 and queue["slots"] == 2, queue
        estimate = queue["estimated_start_s"]
        assert isinstance(estimate, float | int), queue
        assert queue["message"].startswith("4th in line, about "), queue
        assert snapshot["queue"]["position"] == 4

        started = await until(lambda: detail(url, last).get("claimed_at"), "the start", 60)
        actual = (started - read_at) / 1000
        # Two rounds of runs before it: about two run times (plus each run's start).
        assert actual > 2 * RUN * 0.9, actual
        allowed = TOLERANCE_S + TOLERANCE_SHARE * actual
        assert abs(estimate - actual) <= allowed, (estimate, actual, a.output(), b.output())
        await until(lambda: status(url, last)["status"] == "completed", "the last job", 30)
        assert "queue" not in status(url, last)


async def test_a_type_no_runner_handles_says_so_and_is_logged_once(
    tmp_path: Path, database: str
) -> None:
    with (
        running_server(tmp_path / "server", SERVER_ENV, ("--db", database)) as server,
        running_runner(tmp_path / "a", server.url, "--name", "alpha") as runner,
    ):
        url = server.url
        await until(lambda: connected_runners(url), "the runner to connect", 30)
        first = submit(url, "nobody_runs", n=1)
        submit(url, "nobody_runs", n=2)
        queue = status(url, first)["queue"]
        assert queue["runners"] == 0 and queue["estimated_start_s"] is None
        assert queue["message"].startswith(
            "no connected runner handles job type nobody_runs; runners connected: alpha ("
        ), queue
        assert "hello_world" in queue["message"]

        # `runpack submit --wait` shows the same sentence while it waits.
        line = await asyncio.to_thread(waiting_line, url, "nobody_runs")
        assert line.startswith("waiting: no connected runner handles job type nobody_runs")
        assert "runners connected: alpha (" in line

        log = server.output()
        warnings = [ln for ln in log.splitlines() if "jobs of type nobody_runs" in ln]
        assert len(warnings) == 1, log
        assert "WARNING" in warnings[0]
        assert "no connected runner handles job type nobody_runs" in warnings[0]
        assert runner.popen.poll() is None
