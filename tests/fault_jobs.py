"""Job types for fault tests, installed into a real ``runpack-runner`` by :func:`install`.

- ``fault_gate``: waits until the test creates ``<gate>/go-<attempt>``, so a test
  decides when each attempt of a job finishes (no sleeps). Each run first
  creates ``<gate>/started-<attempt>-<pid>``. The result names the runner process
  (``pid``: the job runs in a process of its own, started by the runner) and the
  attempt that produced it. With ``stubborn``, a run ignores being stopped (the
  cancel and SIGTERM) until its gate opens, as native code deep in a computation
  does; the runner's stop grace (30 s by default) is longer than any test waits.
- ``fault_folder``: writes a folder (``index.html`` and ``size`` bytes of data),
  uploads it with ``ctx.upload_folder`` and returns its URL, as figure jobs do.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from runpack_runner.context import JobContext
from runpack_runner.handler import HeartbeatCallback, JobHandler

REPO = Path(__file__).resolve().parents[1]
JOB_TYPES = ("fault_gate", "fault_folder")
POLL = 0.02


def runner_pid() -> int:
    """The runner's process id, from the job's own process (or the runner's)."""
    parent = multiprocessing.parent_process()
    return os.getpid() if parent is None or parent.pid is None else parent.pid


def _ctx(callback: HeartbeatCallback) -> JobContext:
    if not isinstance(callback, JobContext):
        raise TypeError("fault jobs run in runpack-runner only")
    return callback


class GateJob(JobHandler):
    job_type = "fault_gate"

    def execute(
        self, input_params: dict[str, Any], heartbeat_callback: HeartbeatCallback
    ) -> dict[str, Any]:
        ctx = _ctx(heartbeat_callback)
        gate = Path(input_params["gate"])
        (gate / f"started-{ctx.attempt}-{runner_pid()}").touch()
        ctx.progress(0, 1)
        go = gate / f"go-{ctx.attempt}"
        stubborn = bool(input_params.get("stubborn"))
        if stubborn and multiprocessing.parent_process() is not None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while not go.exists():
            if ctx.wait(POLL) and not stubborn:
                ctx.check_cancelled()
            if ctx.cancelled:
                time.sleep(POLL)  # ctx.wait returns at once once stopped
        ctx.log(f"attempt {ctx.attempt} done in runner {runner_pid()}")
        return {"pid": runner_pid(), "attempt": ctx.attempt, "tag": input_params.get("tag")}


class FolderJob(JobHandler):
    job_type = "fault_folder"

    def execute(
        self, input_params: dict[str, Any], heartbeat_callback: HeartbeatCallback
    ) -> dict[str, Any]:
        ctx = _ctx(heartbeat_callback)
        size = int(input_params.get("size", 1000))
        with tempfile.TemporaryDirectory(prefix="fault-folder-") as tmp:
            folder = Path(tmp)
            (folder / "index.html").write_text(f"<!doctype html><title>{ctx.job_id}</title>")
            with (folder / "data.bin").open("wb") as out:
                out.truncate(size)  # zeros, without holding them in memory
            url = ctx.upload_folder(folder)
        return {"figpack_url": url, "pid": runner_pid(), "attempt": ctx.attempt}


def install(site: Path) -> dict[str, str]:
    """Declare these job types in ``site`` (a folder for PYTHONPATH); the runner's env."""
    dist = site / "runpack_fault_jobs-0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: runpack-fault-jobs\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(
        "[runpack.handlers]\n"
        "fault_gate = tests.fault_jobs:GateJob\n"
        "fault_folder = tests.fault_jobs:FolderJob\n"
    )
    path = os.pathsep.join(filter(None, [str(site), str(REPO), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "RUNPACK_JOB_TYPES": ",".join(JOB_TYPES)}
