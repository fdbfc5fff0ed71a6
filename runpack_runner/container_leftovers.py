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
import time
from typing import Any

from runpack_runner.container_config import LABEL_JOB, LABEL_RUNNER

log = logging.getLogger("runpack_runner.jobs.container")


#: How long a removal that another call began may take to finish (seconds).
REMOVAL_WAIT = 30
REMOVAL_POLL = 0.05


def force_remove(api: Any, container_id: str) -> bool:
    """Kill and remove a container; whether it was there. When another call's removal
    is already in progress (dockerd answers 409), wait until it is gone: the job's
    thread and the exit handler may both remove the same container, and the runner
    must not exit while it still exists."""
    import docker

    try:
        api.remove_container(container_id, force=True)
        return True
    except docker.errors.NotFound:
        return False
    except docker.errors.APIError as exc:
        if exc.status_code != 409:
            raise
    deadline = time.monotonic() + REMOVAL_WAIT
    while time.monotonic() < deadline:
        try:
            api.inspect_container(container_id)
        except docker.errors.NotFound:
            return True
        time.sleep(REMOVAL_POLL)
    log.warning("container %s: its removal did not finish in %d s", container_id, REMOVAL_WAIT)
    return True


def remove_leftovers(api: Any, runner_id: str) -> int:
    """Force-remove every container labelled as started by ``runner_id``; how many."""
    try:
        found = api.containers(
            all=True, filters={"label": [LABEL_JOB, f"{LABEL_RUNNER}={runner_id}"]}
        )
        removed = 0
        for container in found:
            if (container.get("Labels") or {}).get(LABEL_RUNNER) != runner_id:
                continue  # what dockerd's filter matched, checked again here
            removed += force_remove(api, container["Id"])
    finally:
        api.close()
    log.info("removed %d container(s) left by an earlier run of this runner", removed)
    return removed
