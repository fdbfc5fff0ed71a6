"""How a container job's container is made: the arguments of ``create_container``.

Everything that confines it is here, in one place (docs/containers.md): no network,
a read-only root with a writable ``/outputs`` and a read-only ``/inputs`` (the
runner's folders) and ``/tmp`` (a
tmpfs), no capabilities or new privileges, CPU, memory (no swap) and process limits,
its GPUs if it has some, and the labels that find it again: the job's, and the
runner's, which removes what an earlier run of it left (``container_leftovers``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runpack_runner.container_spec import ContainerSpec, Limits
from runpack_runner.gpus import visible_devices

#: Labels on every container this job type starts (``docker ps -a --filter label=…``).
LABEL_JOB = "org.runpack.job-id"
LABEL_ATTEMPT = "org.runpack.attempt"
#: The runner that started it: its id (kept in its state file across restarts) and name.
LABEL_RUNNER = "org.runpack.runner-id"
LABEL_RUNNER_NAME = "org.runpack.runner-name"


def create_args(
    api: Any,
    spec: ContainerSpec,
    limits: Limits,
    *,
    image_id: str,
    outputs: Path,
    inputs: Path | None,
    job_cache: Path | None,
    user: str,
    tmp_mb: int,
    job_id: str,
    attempt: int,
    gpus: list[str],
    runner_id: str | None = None,
    runner_name: str = "",
) -> dict[str, Any]:
    """What ``create_container`` is given: the image, command, environment, user,
    labels and the confinement (docs/containers.md)."""
    import docker

    memory = limits.memory_mb * 1024 * 1024
    env = {
        **spec.env,
        "JOB_ID": job_id,
        "JOB_ATTEMPT": str(attempt),
        "OUTPUTS_DIR": "/outputs",
    }
    devices = []
    if gpus:
        devices.append(
            docker.types.DeviceRequest(driver="nvidia", device_ids=gpus, capabilities=[["gpu"]])
        )
        env["CUDA_VISIBLE_DEVICES"] = visible_devices(len(gpus))
    binds = {str(outputs): {"bind": "/outputs", "mode": "rw"}}
    if inputs is not None:
        binds[str(inputs)] = {"bind": "/inputs", "mode": "ro"}
    if job_cache is not None:
        binds[str(job_cache)] = {"bind": "/job-cache", "mode": "rw"}
        env["JOB_CACHE_DIR"] = "/job-cache"
    host_config = api.create_host_config(
        binds=binds,
        tmpfs={"/tmp": f"rw,nosuid,nodev,size={tmp_mb}m,mode=1777"},
        network_mode="none",
        read_only=True,
        privileged=False,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        nano_cpus=int(limits.cpus * 1e9),
        mem_limit=memory,
        memswap_limit=memory,
        pids_limit=limits.pids,
        ipc_mode="private",
        device_requests=devices or None,
    )
    labels = {LABEL_JOB: job_id, LABEL_ATTEMPT: str(attempt)}
    if runner_id:
        labels |= {LABEL_RUNNER: runner_id, LABEL_RUNNER_NAME: runner_name}
    return {
        "image": image_id,
        "command": list(spec.command) if spec.command is not None else None,
        "environment": env,
        "user": user,
        "working_dir": "/tmp",
        "network_disabled": True,
        "labels": labels,
        "host_config": host_config,
    }
