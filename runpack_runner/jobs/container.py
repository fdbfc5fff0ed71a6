"""``container``: run an OCI image through the Docker Engine API (docs/containers.md).

The image must be pinned by digest and allowed by the runner
(``RUNPACK_CONTAINER_IMAGES``); its parameters are checked in
:mod:`runpack_runner.container_spec`. The container runs with no network, as a
non-root user, on a read-only root filesystem with a writable ``/outputs`` (a
folder of the runner's, shared with dockerd) and a small ``/tmp`` in memory,
without capabilities or the Docker socket, within CPU, memory, process and time
limits. Its stdout and stderr become the job's console line by line; a line
``RUNPACK_PROGRESS 3/10`` reports progress instead. When it exits with 0, the
files it left in ``/outputs`` are uploaded to the server and listed in the
result with their URLs. Cancelling the job, or its time limit, removes the
container at once.

Docker is reached with docker-py (the ``container`` extra): the handler runs in a
worker thread, and docker-py's blocking calls, each with a timeout, fit it directly.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from runpack_runner.container_config import create_args
from runpack_runner.container_console import follow
from runpack_runner.container_images import advertised, digests_of, resolve
from runpack_runner.container_inputs import InputCache, place_inputs, trim
from runpack_runner.container_leftovers import force_remove, remove_leftovers
from runpack_runner.container_outputs import folder_size, regular_files
from runpack_runner.container_spec import ContainerPolicy, ContainerSpec, Limits, parse_spec
from runpack_runner.context import Cancelled, JobContext, RetryLater
from runpack_runner.gpus import GpuPool
from runpack_runner.handler import HeartbeatCallback, JobHandler

if TYPE_CHECKING:
    from runpack_runner.settings import RunnerSettings

if importlib.util.find_spec("docker") is None:
    raise ImportError("needs the container extra (pip install 'runpack[container]')")

log = logging.getLogger(__name__)

API_TIMEOUT = 60
POLL = 0.05
#: How often the size of a running container's /outputs is measured (seconds).
MEASURE_EVERY = 0.25
NOBODY = "65534:65534"
#: The exit status of a container whose process was killed by SIGKILL (128 + 9).
SIGKILLED = 137
#: How long dockerd is given to report such a container as out of memory: containerd
#: may send the OOM event after the exit, and dockerd then records the exit as not
#: OOM-killed, logging its "oom" event only later.
OOM_REPORT_GRACE = 2.0
#: Containers started by this process and not yet removed: removed at exit too, when
#: the runner exits while a job still runs (its thread is then left behind).
LIVE: dict[str, str] = {}
_live_lock = threading.Lock()


@atexit.register
def _remove_live() -> None:
    with _live_lock:
        left = list(LIVE.items())
    if not left:
        return
    import docker

    for container_id, url in left:
        with contextlib.suppress(Exception):
            client = docker.APIClient(base_url=url, version="auto", timeout=10)
            force_remove(client, container_id)
            client.close()


class ContainerJob(JobHandler):
    """Runs an allowed, pinned image; see the module's docstring."""

    job_type = "container"
    #: The container is the isolation: no child process around the handler.
    in_process = True
    #: The container's own limit (RUNPACK_CONTAINER_TIME_LIMIT, or less if the job
    #: asks) ends it, with "killed: ran longer than N s".
    time_limit = None

    def __init__(self) -> None:
        self.policy = ContainerPolicy()
        self.docker_url = "unix:///var/run/docker.sock"
        self.tmp_mb = 64
        self.outputs_mb = 1024
        self.inputs_mb = 1024
        self.cache = InputCache(Path(tempfile.gettempdir(), "runpack-inputs"), 4096 * 2**20)
        self.job_cache_root = Path(tempfile.gettempdir(), "runpack-job-cache")
        self.job_cache_bytes = 10240 * 2**20
        self.user = ""
        self.work_dir = ""
        self.gpus = GpuPool()

    def configure(self, settings: RunnerSettings) -> None:
        """Take the runner's container settings (the runner calls this once)."""
        self.policy = ContainerPolicy(
            allowed=settings.container_images,
            most=Limits(
                cpus=settings.container_cpus,
                memory_mb=settings.container_memory_mb,
                pids=settings.container_pids,
                time_limit=settings.container_time_limit,
                gpus=len(settings.container_gpus),
            ),
            job_cache=settings.container_job_cache,
        )
        self.gpus = GpuPool(settings.container_gpus)
        self.docker_url = settings.container_docker_url
        self.tmp_mb = settings.container_tmp_mb
        self.outputs_mb = settings.container_outputs_mb
        self.inputs_mb = settings.container_inputs_mb
        cache_dir = Path(settings.container_work_dir or tempfile.gettempdir(), "runpack-inputs")
        self.cache = InputCache(
            cache_dir,
            settings.container_cache_mb * 2**20,
            server=settings.worker_url,
            key=settings.runner_api_key,
        )
        root = Path(settings.container_work_dir or tempfile.gettempdir())
        self.job_cache_root = root / "runpack-job-cache"
        self.job_cache_bytes = settings.container_job_cache_mb * 2**20
        self.user = settings.container_user
        self.work_dir = settings.container_work_dir

    def execute(
        self, input_params: dict[str, Any], heartbeat_callback: HeartbeatCallback
    ) -> dict[str, Any]:
        ctx = heartbeat_callback
        if not isinstance(ctx, JobContext):
            raise TypeError("the container job type needs the runner's JobContext")
        spec = parse_spec(input_params)
        limits = self.policy.limits(spec)
        import docker

        api = self._connect()
        try:
            if not self.policy.allows(spec, lambda tag: digests_of(api, tag)):
                raise ValueError(self.policy.refusal(spec))
            image = resolve(api, spec)
            run = ContainerRun(api, ctx, spec, image, limits, self)
            return run.run()
        except docker.errors.APIError as exc:  # its message names dockerd's URL: not needed
            raise RuntimeError(f"Docker refused: {exc.explanation or exc}") from exc
        finally:
            api.close()

    def advertised_images(self) -> list[str] | None:
        """The allow list the runner sends when it registers (see advertised). Blocking."""
        return advertised(self.policy, self._connect)

    def sweep(self, runner_id: str) -> None:
        """At the runner's start: remove the containers an earlier run of it left."""
        remove_leftovers(self._connect(), runner_id)

    def _connect(self) -> Any:
        import docker

        try:
            return docker.APIClient(base_url=self.docker_url, version="auto", timeout=API_TIMEOUT)
        except docker.errors.DockerException as exc:
            raise RetryLater(f"cannot reach Docker at {self.docker_url}: {exc}") from exc

    def container_user(self) -> str:
        """The configured user, else the runner's own (never root)."""
        if self.user:
            return self.user
        uid, gid = os.getuid(), os.getgid()
        return f"{uid}:{gid}" if uid != 0 else NOBODY


def oom_reported(api: Any, container_id: str, since: float, grace: float) -> bool:
    """Whether dockerd logged an "oom" event for the container since ``since`` (seconds
    since the epoch), waiting up to ``grace`` seconds for one."""
    deadline = time.monotonic() + grace
    filters = {"container": container_id, "event": "oom"}
    while True:
        stream = api.events(since=since - 1, until=time.time(), filters=filters, decode=True)
        try:
            if any(True for _ in stream):
                return True
        finally:
            stream.close()
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL)


class ContainerRun:
    """One container: created, started, watched, removed."""

    def __init__(
        self,
        api: Any,
        ctx: JobContext,
        spec: ContainerSpec,
        image: dict[str, Any],
        limits: Limits,
        job: ContainerJob,
    ) -> None:
        self.api = api
        self.ctx = ctx
        self.spec = spec
        self.image = image
        self.limits = limits
        self.job = job
        self.container_id = ""
        self.started_at = 0.0
        self.devices: list[str] = []
        self.streamed = threading.Event()
        self._streams: Any = None

    def run(self) -> dict[str, Any]:
        name = re.sub(r"[^A-Za-z0-9-]", "", self.ctx.job_id)[:64]
        if self.job.work_dir:
            Path(self.job.work_dir).mkdir(parents=True, exist_ok=True)
        folder = Path(
            tempfile.mkdtemp(prefix=f"runpack-container-{name}-", dir=self.job.work_dir or None)
        )
        folder.chmod(0o755)  # dockerd's user reaches the folders within
        outputs = folder / "outputs"
        outputs.mkdir()
        outputs.chmod(0o777)  # the container's user writes here
        inputs = folder / "inputs"
        try:
            if self.spec.inputs:
                inputs.mkdir(mode=0o755)
                inputs.chmod(0o755)
                limit = self.job.inputs_mb * 2**20
                place_inputs(self.ctx, self.spec.inputs, inputs, self.job.cache, limit)
            job_cache = self._job_cache()
            try:
                self.ctx.check_cancelled()
                if self.limits.gpus:
                    self.devices = self.job.gpus.wait_for(self.limits.gpus, self.ctx)
                self.container_id = self._create(outputs, inputs, job_cache)
                with _live_lock:
                    LIVE[self.container_id] = self.job.docker_url
                # Attached before it starts, so that no line is missed (reading the
                # logs of a container that already exited may find them not yet kept).
                output = self._attach()
                self.started_at = time.time()
                self.api.start(self.container_id)
                self.ctx.log(
                    f"Container {self.container_id[:12]} started from {self.image['Id']} "
                    f"(limits: {self.limits.cpus:g} CPUs, {self.limits.memory_mb} MiB, "
                    f"{self.limits.pids} processes, {self.limits.time_limit:g} s)"
                )
                threading.Thread(
                    target=self._stream,
                    args=(output,),
                    name=f"container-{self.ctx.job_id}",
                    daemon=True,
                ).start()
                self._wait(outputs)
                code, oom = self._exit_state()
            finally:
                self._remove()
                self.job.gpus.give_back(self.devices)
                if self._streams is not None:
                    self._streams.close()
                if job_cache is not None:
                    trim(self.job.job_cache_root, self.job.job_cache_bytes)
            self._check_size(outputs)
            if oom:
                raise RuntimeError(f"killed: used more than {self.limits.memory_mb} MiB")
            if code != 0:
                raise RuntimeError(f"the container exited with code {code}")
            self.ctx.log("Container exited with code 0")
            return self._result(outputs)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _job_cache(self) -> Path | None:
        """This image's /job-cache folder, if it has one (made writable for containers)."""
        name = self.job.policy.job_cache_folder(self.spec)
        if name is None:
            return None
        folder = self.job.job_cache_root / name
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o777)
        return folder

    def _create(self, outputs: Path, inputs: Path, job_cache: Path | None) -> str:
        created = self.api.create_container(
            **create_args(
                self.api,
                self.spec,
                self.limits,
                image_id=self.image["Id"],
                outputs=outputs,
                inputs=inputs if self.spec.inputs else None,
                job_cache=job_cache,
                user=self.job.container_user(),
                tmp_mb=self.job.tmp_mb,
                job_id=self.ctx.job_id,
                attempt=self.ctx.attempt,
                gpus=self.devices,
                runner_id=self.ctx.runner_id,
                runner_name=self.ctx.runner_name,
            )
        )
        return str(created["Id"])

    def _wait(self, outputs: Path) -> None:
        """Until the container's output ends; kill it on cancel, at its time limit, or
        once it wrote too much to /outputs."""
        started = time.monotonic()
        deadline = started + self.limits.time_limit
        measured = started
        while not self.streamed.wait(POLL):
            if self.ctx.cancelled:
                self._remove()
                raise Cancelled(self.ctx.cancel_reason or "cancelled")
            now = time.monotonic()
            if now > deadline:
                self._remove()
                self.ctx.log(f"Container killed at its time limit ({self.limits.time_limit:g} s)")
                raise RuntimeError(f"killed: ran longer than {self.limits.time_limit:g} s")
            if now - measured > MEASURE_EVERY:
                measured = now
                self._check_size(outputs)

    def _check_size(self, outputs: Path) -> None:
        if folder_size(outputs) > self.job.outputs_mb * 1024 * 1024:
            self._remove()
            raise RuntimeError(f"killed: wrote more than {self.job.outputs_mb} MiB to /outputs")

    def _exit_state(self) -> tuple[int, bool]:
        """The container's exit status, and whether it was killed for its memory."""
        code = int(self.api.wait(self.container_id, timeout=API_TIMEOUT).get("StatusCode", -1))
        state = self.api.inspect_container(self.container_id).get("State", {})
        oom = bool(state.get("OOMKilled"))
        if not oom and code == SIGKILLED:  # not by us: the OOM report may trail the exit
            oom = oom_reported(self.api, self.container_id, self.started_at, OOM_REPORT_GRACE)
        return code, oom

    def _remove(self) -> None:
        """Kill and remove the container (again: a no-op)."""
        if not self.container_id:
            return
        force_remove(self.api, self.container_id)
        with _live_lock:
            LIVE.pop(self.container_id, None)

    # --- console --------------------------------------------------------------------------
    def _attach(self) -> Any:
        """The container's stdout and stderr as a stream of chunks, until it exits. Its own
        connection, without a read timeout: a container may be quiet for long."""
        import docker

        self._streams = docker.APIClient(
            base_url=self.job.docker_url, version=self.api.api_version, timeout=None
        )
        return self._streams.attach(
            self.container_id, stdout=True, stderr=True, stream=True, logs=True, demux=True
        )

    def _stream(self, output: Any) -> None:
        """The container's stdout and stderr, line by line, until it exits."""
        try:
            follow(self.ctx, output)
        except Exception as exc:  # the container was removed under the stream
            if not self.ctx.cancelled:
                log.warning("job %s: the container's output ended: %s", self.ctx.job_id, exc)
        finally:
            with contextlib.suppress(Exception):
                output.close()
            self.streamed.set()

    # --- outputs --------------------------------------------------------------------------
    def _result(self, outputs: Path) -> dict[str, Any]:
        files = regular_files(outputs)
        result: dict[str, Any] = {
            "image": self.spec.image,
            "image_id": self.image["Id"],
            "repo_digests": list(self.image.get("RepoDigests") or []),
            "exit_code": 0,
            "outputs_url": None,
            "files": [],
        }
        if not files:
            return result
        url = self.ctx.upload_folder(outputs)
        base = url[: -len("index.html")] if url.endswith("/index.html") else url
        base = base if base.endswith("/") else base + "/"
        result["outputs_url"] = base
        result["files"] = [
            {"path": path, "bytes": size, "url": base + quote(path)} for path, size in files
        ]
        return result
