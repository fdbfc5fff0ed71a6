"""One frozen settings object for the runner daemon.

Every field has a default, a help text, a ``--flag`` and a ``RUNPACK_<NAME>``
environment variable (``worker_url`` is ``RUNPACK_WORKER_URL``, the original's
name). The CLI is the only reader of the environment (:meth:`RunnerSettings.from_env`);
nothing here reads it at import time. Durations are in seconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from runpack.envvars import Spec, describe_fields, read_values
from runpack.eventloop import loop_factory
from runpack.protocol import HEARTBEAT_INTERVAL

TRANSPORTS = ("auto", "websocket", "http")


def _s(default: Any, help: str, *, secret: bool = False, flag: str | None = None) -> Any:
    return field(
        default=default,
        repr=not secret,
        metadata={"help": help, "secret": secret, "flag": flag},
    )


@dataclass(frozen=True, slots=True)
class RunnerSettings:
    worker_url: str = _s("http://127.0.0.1:8080", "Base URL of the Runpack server.", flag="--url")
    runner_api_key: str = _s("", "The server's runner key (environment only).", secret=True)
    concurrency: int = _s(1, "Jobs run at the same time.")
    job_types: tuple[str, ...] = _s(
        (), "Comma-separated job types to run, a subset of the installed ones (default: all)."
    )
    name: str = _s("", "Runner name shown by the server (default: host name plus a suffix).")
    state_file: str = _s(".runpack_runner.json", "Where the runner keeps its id and name.")
    log_file: str = _s("runpack_runner.log", "Log file, besides stdout ('' for none).")
    log_level: str = _s("info", "Logging level.")
    event_loop: str = _s(
        "auto", "Event loop: auto (uvloop where installed, else asyncio's), uvloop or asyncio."
    )
    job_timeout: float = _s(
        0.0,
        "Longest time limit of any job, in seconds (0: each job type's own limit, "
        "or a shorter one its submitter asked for).",
    )
    job_memory_limit: int = _s(
        2048,
        "MiB of memory a job's process may use, for job types that declare no limit "
        "of their own (0: no limit).",
    )
    transport: str = _s("auto", "auto (WebSocket, HTTP when it cannot connect), websocket, http.")
    heartbeat_interval: float = _s(
        HEARTBEAT_INTERVAL,
        "Heartbeat per running job at least this often (the server may lower it).",
    )
    poll_wait: float = _s(20.0, "HTTP fallback: how long one long-poll waits for a job.")
    socket_retry_interval: float = _s(
        30.0, "HTTP fallback: how often to try to return to the WebSocket."
    )
    reconnect_min: float = _s(0.5, "First reconnect delay (exponential backoff, full jitter).")
    reconnect_max: float = _s(30.0, "Longest reconnect delay.")
    allow_private_urls: bool = _s(
        False,
        "Let handlers fetch URLs (an nwb_url) on loopback, private and link-local addresses, "
        "for files served on your own network; refused by default, as are metadata addresses.",
    )
    stop_grace: float = _s(
        30.0,
        "How long a cancelled or timed-out job's process may take to stop after SIGTERM "
        "before it is killed (SIGKILL) and its slot reused.",
    )
    remote_connect_timeout: float = _s(
        10.0, "Figure jobs: seconds to wait for a connection to the server of an nwb_url."
    )
    remote_read_timeout: float = _s(
        30.0,
        "Figure jobs: seconds a read of an nwb_url may wait for data before the job fails.",
    )
    remote_cache_dir: str = _s(
        "",
        "Figure jobs: folder of the runner's disk cache of byte ranges read from nwb_urls, "
        "shared by its jobs (default: runpack-remote-cache-<uid> in the system's "
        "temporary folder).",
    )
    remote_cache_mb: int = _s(
        1024,
        "Figure jobs: most the remote read cache keeps (MiB; ranges used longest ago go "
        "first; 0 = no cache).",
    )

    exit_when_idle: float = _s(
        0.0,
        "Exit (code 0) after this many seconds with no job held, for runners started on "
        "demand by an autoscaler (0 = never).",
    )
    # --- the container job type (docs/containers.md) ---------------------------------------
    container_images: tuple[str, ...] = _s(
        (),
        "Images the container job type may run, comma-separated: digests (sha256:…, "
        "name@sha256:…), patterns with * (lab/tool@*), or name:tag (whatever digest the tag "
        "has on this runner). None by default.",
    )
    container_docker_url: str = _s(
        "unix:///var/run/docker.sock", "The Docker Engine API the container job type uses."
    )
    container_cpus: float = _s(1.0, "Most CPUs one container may use.")
    container_memory_mb: int = _s(512, "Most memory (MiB) one container may use; no swap.")
    container_pids: int = _s(256, "Most processes one container may run.")
    container_time_limit: float = _s(3600.0, "Most seconds one container may run.")
    container_tmp_mb: int = _s(64, "Size (MiB) of a container's writable /tmp (in its memory).")
    container_outputs_mb: int = _s(
        1024,
        "Most a container may write to /outputs (MiB); watched while it runs, then checked.",
    )
    container_user: str = _s(
        "",
        "User (uid:gid) that containers run as (default: the runner's own, or 65534:65534 "
        "(nobody) when the runner runs as root).",
    )
    container_inputs_mb: int = _s(1024, "Most one container job's input files may add up to (MiB).")
    container_cache_mb: int = _s(
        4096, "Most the runner keeps of fetched input files, by content (MiB)."
    )
    container_job_cache: tuple[str, ...] = _s(
        (),
        "Images (patterns, as in container_images) whose containers share a writable "
        "/job-cache on this runner, for models and datasets; one folder per repository.",
    )
    container_job_cache_mb: int = _s(
        10240, "Most the /job-cache folders keep in all (MiB; oldest files out first)."
    )
    container_gpus: tuple[str, ...] = _s(
        (),
        "GPUs this runner hands to containers, comma-separated device indexes or UUIDs "
        "(nvidia-smi -L); a job asks for some with limits.gpus. None by default.",
    )
    container_work_dir: str = _s(
        "",
        "Where the runner keeps each container's /inputs and /outputs folders (shared "
        "with dockerd) and its cache of input files (default: the system's temporary "
        "folder).",
    )

    def replace(self, **changes: Any) -> RunnerSettings:
        return dataclasses.replace(self, **changes)

    def check(self) -> None:
        """Raise ValueError for settings that cannot work."""
        if not self.worker_url.startswith(("http://", "https://")):
            raise ValueError(f"worker URL must start with http:// or https://: {self.worker_url}")
        if not 1 <= self.concurrency <= 1000:
            raise ValueError("concurrency must be from 1 to 1000")
        loop_factory(self.event_loop)  # ValueError for an unknown or missing loop
        if self.transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}")
        for name in (
            "heartbeat_interval",
            "poll_wait",
            "socket_retry_interval",
            "reconnect_max",
            "remote_connect_timeout",
            "remote_read_timeout",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be more than 0")
        if min(self.container_cpus, self.container_time_limit) <= 0:
            raise ValueError("container_cpus and container_time_limit must be more than 0")
        sizes = (
            self.container_memory_mb,
            self.container_pids,
            self.container_tmp_mb,
            self.container_outputs_mb,
            self.container_inputs_mb,
            self.container_cache_mb,
            self.container_job_cache_mb,
        )
        if self.container_user.split(":")[0] in ("0", "root"):
            raise ValueError("container_user must not be root")
        if min(sizes) < 1:
            raise ValueError(
                "container sizes (memory, pids, tmp, outputs, inputs, caches) must be at least 1"
            )
        if min(self.job_timeout, self.reconnect_min, self.stop_grace, self.exit_when_idle) < 0:
            raise ValueError("durations cannot be negative")
        if self.job_memory_limit < 0:
            raise ValueError("job_memory_limit cannot be negative")
        if self.remote_cache_mb < 0:
            raise ValueError("remote_cache_mb cannot be negative")

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> RunnerSettings:
        """Settings from ``RUNPACK_*`` variables, then explicit overrides (CLI flags)."""
        values = read_values(cls, environ, overrides)
        settings = cls(**values)
        settings.check()
        return settings


#: Settings that handlers read from the environment, in whatever process they run: the
#: CLI sets these variables from the settings (flags included) before starting.
HANDLER_ENVIRONMENT = (
    "remote_connect_timeout",
    "remote_read_timeout",
    "remote_cache_dir",
    "remote_cache_mb",
)


def flag_name(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata["flag"] or "--" + f.name.replace("_", "-"))


def describe() -> list[Spec]:
    """Name, variable, flag, default and help of every setting (the CLI reads this)."""
    return describe_fields(RunnerSettings, flag_name)
