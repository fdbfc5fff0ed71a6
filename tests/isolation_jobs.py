"""Job types that misbehave, for tests of each run in its own process; installed into a
real ``runpack-runner`` by :func:`install`.

- ``iso_spin``: writes ``<dir>/pid-<pid>``, then burns CPU and never looks at its
  context; with ``stubborn`` it also ignores SIGTERM (as native code that does not
  return to Python would), so only SIGKILL ends it.
- ``iso_abort``: ``os.abort()``, a crash in native code.
- ``iso_hog``: holds ``mib`` MiB (touched), then waits to be stopped.
- ``iso_fail``: logs a line, then fails as a bug does: a KeyError, or opening a
  file under the runner's Python installation (a message with a local path).
- ``iso_wait``: reports progress and a console line, then waits for
  ``<dir>/go``; returns its process id.
- ``iso_capped``: declares a 2 s time limit and waits to be stopped.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from runpack_runner.context import JobContext
from runpack_runner.handler import job

REPO = Path(__file__).resolve().parents[1]
JOB_TYPES = ("iso_spin", "iso_abort", "iso_hog", "iso_fail", "iso_wait", "iso_capped")


@job("iso_spin")
def spin(ctx: JobContext, dir: str, stubborn: bool = False) -> dict[str, Any]:
    if stubborn:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    (Path(dir) / f"pid-{os.getpid()}").touch()
    n = 0
    while True:
        n += 1


@job("iso_abort")
def abort(ctx: JobContext) -> dict[str, Any]:
    ctx.log("about to crash")
    os.abort()


@job("iso_hog")
def hog(ctx: JobContext, mib: int) -> dict[str, Any]:
    block = bytearray(mib * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    ctx.log(f"holding {mib} MiB")
    while not ctx.wait(1):
        pass
    return {"held": len(block)}


@job("iso_fail")
def fail(ctx: JobContext, how: str = "key") -> dict[str, Any]:
    ctx.log("reading the units")
    if how == "key":
        units: dict[str, Any] = {}
        return {"units": units["units"]}
    with open(os.path.join(sys.prefix, "lib", "no-such-file.nwb")) as f:
        return {"read": f.read()}


@job("iso_wait")
def wait(ctx: JobContext, dir: str) -> dict[str, Any]:
    ctx.log("waiting for the gate")
    ctx.progress(1, 2)
    while not (Path(dir) / "go").exists():
        if ctx.wait(0.02):
            ctx.check_cancelled()
    ctx.progress(2, 2)
    return {"pid": os.getpid()}


@job("iso_capped", time_limit=2.0)
def capped(ctx: JobContext, **params: Any) -> dict[str, Any]:
    while not ctx.wait(1):
        pass
    ctx.check_cancelled()
    return {}


def install(site: Path) -> dict[str, str]:
    """Declare these job types in ``site`` (a folder for PYTHONPATH); the runner's env."""
    dist = site / "runpack_isolation_jobs-0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: runpack-isolation-jobs\nVersion: 0\n"
    )
    lines = [f"{name} = tests.isolation_jobs:{name[4:]}" for name in JOB_TYPES]
    (dist / "entry_points.txt").write_text("[runpack.handlers]\n" + "\n".join(lines) + "\n")
    path = os.pathsep.join(filter(None, [str(site), str(REPO), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "RUNPACK_JOB_TYPES": ",".join(JOB_TYPES)}
