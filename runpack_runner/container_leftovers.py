"""Containers that an earlier run of this runner left behind, removed when it starts.

A runner that exits normally removes its containers (each run removes its own, and
at exit what is still running). One killed with SIGKILL, or whose machine went
down, cannot: its containers go on running, for jobs that the server gives to a
runner again. Each container is labelled with the id of the runner that started it
(``org.runpack.runner-id``, the id its state file keeps across restarts), so when
the runner starts again it removes those, and only those: any it finds belong to
runs it no longer holds. Containers of other runners on the same dockerd, and
containers without Runpack's labels, are never touched (docs/containers.md).
"""

from __future__ import annotations

import logging
from typing import Any

from runpack_runner.container_config import LABEL_JOB, LABEL_RUNNER

log = logging.getLogger("runpack_runner.jobs.container")


def remove_leftovers(api: Any, runner_id: str) -> int:
    """Force-remove every container labelled as started by ``runner_id``; how many."""
    import docker

    try:
        found = api.containers(
            all=True, filters={"label": [LABEL_JOB, f"{LABEL_RUNNER}={runner_id}"]}
        )
        removed = 0
        for container in found:
            if (container.get("Labels") or {}).get(LABEL_RUNNER) != runner_id:
                continue  # what dockerd's filter matched, checked again here
            try:
                api.remove_container(container["Id"], force=True)
            except docker.errors.NotFound:
                continue
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: its removal is already in progress
                    raise
            removed += 1
    finally:
        api.close()
    log.info("removed %d container(s) left by an earlier run of this runner", removed)
    return removed
