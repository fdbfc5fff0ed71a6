"""``runpack-runner --exit-when-idle S``: a runner started on demand exits once idle,
never while it holds a job (real server and runner processes)."""

from __future__ import annotations

import time

from tests.procs import until
from tests.test_runner_e2e import Stack, exited, runner_log, stack

__all__ = ["stack"]  # the fixture


async def test_an_idle_runner_exits_with_code_0(stack: Stack) -> None:
    started = time.monotonic()
    proc = stack.runner("runner", "--exit-when-idle", "1")
    await until(exited(proc), "the runner to exit", 15)
    assert proc.returncode == 0
    assert time.monotonic() - started >= 1
    assert "no job for 1 s: exiting (--exit-when-idle)" in runner_log(stack)


async def test_a_busy_runner_finishes_its_job_first(stack: Stack) -> None:
    job_id = await stack.submit("busy", 2)
    proc = stack.runner("runner", "--exit-when-idle", "0.5")
    await until(stack.job_is(job_id, "completed"), "the job to complete", 20)
    await until(exited(proc), "the runner to exit once idle", 15)
    assert proc.returncode == 0
    detail = await stack.job(job_id)
    assert detail["output_data"]["message"] == "Hello, busy!"
