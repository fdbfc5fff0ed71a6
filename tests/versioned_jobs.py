"""One job type, ``versioned``, in versions 1, 2 and 999 of its handler, for the tests of handler
versions: :func:`install` declares one of them in a folder for a ``runpack-runner``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from runpack_runner.context import JobContext
from runpack_runner.handler import job

REPO = Path(__file__).resolve().parents[1]
JOB_TYPE = "versioned"


@job(JOB_TYPE, version="1", in_process=True)
def version_1(ctx: JobContext, **params: Any) -> dict[str, Any]:
    return {"computed_by": "1"}


@job(JOB_TYPE, version="2", in_process=True)
def version_2(ctx: JobContext, **params: Any) -> dict[str, Any]:
    return {"computed_by": "2"}


@job(JOB_TYPE, version="999", in_process=True)
def version_999(ctx: JobContext, **params: Any) -> dict[str, Any]:
    """What a stranger's runner says it is: a version above every real one."""
    return {"computed_by": "999"}


def install(site: Path, version: str) -> dict[str, str]:
    """Declare ``versioned`` of this version (and hello_world) in ``site``; the runner's env."""
    dist = site / "runpack_versioned_jobs-0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: runpack-versioned-jobs\nVersion: 0\n"
    )
    (dist / "entry_points.txt").write_text(
        f"[runpack.handlers]\n{JOB_TYPE} = tests.versioned_jobs:version_{version}\n"
    )
    path = os.pathsep.join(filter(None, [str(site), str(REPO), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "RUNPACK_JOB_TYPES": f"{JOB_TYPE},hello_world"}
