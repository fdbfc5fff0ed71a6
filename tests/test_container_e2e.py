"""The ``container`` job type with a real dockerd, real ``runpack serve`` and
``runpack-runner`` processes, and busybox images built here (tests/dockerimages.py).

Every container these tests start carries the job's label; each test checks that none
is left (``docker ps -a`` by label).
"""

from __future__ import annotations

import asyncio
import functools
import glob
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from runpack_runner.container_leftovers import force_remove
from runpack_runner.jobs.container import SIGKILLED, oom_reported
from tests import dockerimages
from tests.procs import KEYS, NO_LIMITS, Proc, free_port, running_runner, running_server, until

BIN = Path(sys.executable).parent
SUBMIT = {"Authorization": f"Bearer {KEYS['RUNPACK_SUBMIT_API_KEY']}"}
ADMIN = {"Authorization": f"Bearer {KEYS['RUNPACK_ADMIN_API_KEY']}"}

#: A looping script, a memory hog and a slow one: the safety tests' commands.
LOOP = ["sh", "-c", "echo looping; while true; do :; done"]
HOG = ["sh", "-c", 'echo growing; x=aaaaaaaa; while true; do x="$x$x"; done']
SLEEP = ["sh", "-c", "echo sleeping; sleep 600"]


@pytest.fixture(scope="module")
def api() -> Any:
    return dockerimages.connect()


@pytest.fixture(scope="module")
def image(api: Any) -> Iterator[tuple[str, str]]:
    """A busybox image: (``repository:tag``, its ID). The runner allows it by
    repository (``runpack-test/busybox@*``), so a bare ID is not allowed."""
    name, image_id = dockerimages.build(api)
    yield name, image_id
    dockerimages.remove(api, name)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("container-work")


@pytest.fixture(scope="module")
def server(api: Any, tmp_path_factory: pytest.TempPathFactory, work: Path) -> Iterator[Proc]:
    """One server and one runner for the module's tests (each test's jobs are its own)."""
    tmp = tmp_path_factory.mktemp("container-stack")
    env = {**KEYS, **NO_LIMITS}
    runner_env = {
        "RUNPACK_JOB_TYPES": "container",
        "RUNPACK_CONCURRENCY": "4",
        "RUNPACK_CONTAINER_IMAGES": f"{dockerimages.REPOSITORY}@*",
        "RUNPACK_CONTAINER_WORK_DIR": str(work),
        "RUNPACK_CONTAINER_MEMORY_MB": "64",
        "RUNPACK_CONTAINER_TIME_LIMIT": "60",
        "RUNPACK_CONTAINER_OUTPUTS_MB": "8",
        "RUNPACK_CONTAINER_JOB_CACHE": f"{dockerimages.REPOSITORY}@*",
        # The inputs test serves its files on loopback.
        "RUNPACK_ALLOW_PRIVATE_URLS": "true",
        # Not on this machine: the test sees the device request reach dockerd.
        "RUNPACK_CONTAINER_GPUS": "GPU-test-0,GPU-test-1",
    }
    with (
        running_server(tmp / "server", env) as proc,
        running_runner(tmp / "runner", proc.url, env=runner_env),
    ):
        yield proc


class Client:
    def __init__(self, url: str, http: aiohttp.ClientSession) -> None:
        self.url = url
        self.http = http

    async def call(self, method: str, path: str, headers: dict[str, str], **kw: Any) -> Any:
        async with self.http.request(method, self.url + path, headers=headers, **kw) as resp:
            return resp.status, await resp.json()

    async def run(self, params: dict[str, Any]) -> tuple[int, Any]:
        body = {"job_type": "container", "input_params": params}
        return await self.call("POST", "/api/jobs/submit", SUBMIT, json=body)  # type: ignore[no-any-return]

    async def submit(self, params: dict[str, Any]) -> str:
        status, body = await self.run(params)
        assert status == 201, body
        return str(body["job_id"])

    async def job(self, job_id: str) -> dict[str, Any]:
        status, body = await self.call("GET", f"/api/admin/jobs/{job_id}", ADMIN)
        assert status == 200, body
        return dict(body)

    async def settled(self, job_id: str) -> dict[str, Any]:
        async def done() -> Any:
            job = await self.job(job_id)
            return job if job["status"] in ("completed", "failed", "cancelled") else None

        return dict(await until(done, f"job {job_id} to finish", 60))


@pytest.fixture
async def client(server: Proc) -> AsyncIterator[Client]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        yield Client(server.url, http)


def pinned(image: tuple[str, str]) -> str:
    """The image as jobs name it: repository and image ID."""
    name, image_id = image
    return f"{name.rsplit(':', 1)[0]}@{image_id}"


def gone(api: Any, job_id: str) -> Any:
    return lambda: not dockerimages.containers_of(api, job_id)


async def killed(client: Client, api: Any, job_id: str, why: str) -> dict[str, Any]:
    """The job, once it failed because its container was killed (``why``), and the
    container is gone."""
    job = await client.settled(job_id)
    assert job["status"] == "failed"
    assert job["error_message"] == f"container failed: killed: {why}"
    await until(gone(api, job_id), "no container left", 5)
    return job


async def test_console_streams_live_and_outputs_are_served(
    client: Client, api: Any, image: tuple[str, str], work: Path
) -> None:
    script = (
        "echo started; echo RUNPACK_PROGRESS 1/2; echo to-stderr >&2;"
        " while [ ! -f /outputs/go ]; do sleep 0.05; done; rm /outputs/go;"
        ' echo "$GREETING from $JOB_ID" > /outputs/result.txt;'
        " mkdir /outputs/sub; echo nested > /outputs/sub/b.txt;"
        " echo RUNPACK_PROGRESS 2/2; echo finished"
    )
    params = {"image": pinned(image), "command": ["sh", "-c", script], "env": {"GREETING": "hi"}}
    job_id = await client.submit(params)

    async def running_with_console() -> Any:
        job = await client.job(job_id)
        console = job["console_output"]
        live = job["status"] == "in_progress" and "started" in console and "to-stderr" in console
        return job if live and job.get("progress") == {"current": 1, "total": 2} else None

    job = await until(running_with_console, "the console and progress while it runs")
    assert "RUNPACK_PROGRESS" not in job["console_output"]
    # The container waits for this file: it was still running while its console was read.
    (outputs,) = glob.glob(f"{work}/runpack-container-{job_id}-*/outputs")
    await asyncio.to_thread(Path(outputs, "go").write_text, "")
    job = await client.settled(job_id)
    assert job["status"] == "completed", job
    assert "finished" in job["console_output"]
    assert job["progress"] == {"current": 2, "total": 2}
    data = job["output_data"]
    assert data["image"] == pinned(image) and data["image_id"] == image[1]
    assert data["exit_code"] == 0
    assert [f["path"] for f in data["files"]] == ["result.txt", "sub/b.txt"]
    for file, text in zip(data["files"], [f"hi from {job_id}\n", "nested\n"], strict=True):
        async with client.http.get(file["url"]) as resp:
            assert resp.status == 200
            assert await resp.text() == text
        assert file["bytes"] == len(text)
    assert data["outputs_url"].startswith(client.url)
    assert dockerimages.containers_of(api, job_id) == []
    await until(lambda: not list(work.glob(f"*{job_id}*")), "the outputs folder removed", 5)


async def test_same_digest_is_cached_a_new_digest_runs_again(
    client: Client, api: Any, image: tuple[str, str]
) -> None:
    other = dockerimages.build(api, {"etc/version": "2"})
    try:
        command = ["sh", "-c", "cat /etc/version 2>/dev/null || echo 1"]
        first = await client.submit({"image": pinned(image), "command": command})
        job = await client.settled(first)
        assert job["status"] == "completed", job
        status, body = await client.run({"image": pinned(image), "command": command})
        assert status == 200 and body["job_id"] == first, body
        assert body["message"] == "Job already completed (cached result)"
        assert body["result"]["output_data"]["image_id"] == image[1]
        second = await client.submit({"image": pinned(other), "command": command})
        job = await client.settled(second)
        assert job["status"] == "completed", job
        assert second != first
        assert job["output_data"]["image_id"] == other[1] != image[1]
        assert "] 2\n" in job["console_output"]
    finally:
        dockerimages.remove(api, other[0])


async def test_an_image_the_runner_does_not_allow_waits_and_nothing_runs(
    client: Client, api: Any, image: tuple[str, str]
) -> None:
    """The runner sent its list: the server gives it no job of another image (a runner
    that sends none refuses it itself: tests/test_image_placement_e2e.py)."""
    name, image_id = image
    job_id = await client.submit({"image": image_id, "command": ["touch", "/outputs/x"]})
    unpinned = await client.submit({"image": name})
    after = await client.submit({"image": pinned(image), "command": ["echo", "after"]})
    assert (await client.settled(after))["status"] == "completed"  # taken past them
    for waiting, shown in ((job_id, image_id), (unpinned, name)):
        job = await client.job(waiting)
        assert job["status"] == "pending", job
        assert f"no connected runner allows its image {shown} " in job["queue"]["message"]
        assert dockerimages.containers_of(api, waiting) == []
        status, body = await client.call("POST", f"/api/jobs/{waiting}/cancel", ADMIN)
        assert status == 200, body


async def test_time_limit_kills_and_removes_the_container(
    client: Client, api: Any, image: tuple[str, str]
) -> None:
    status, body = await client.run(
        {"image": pinned(image), "command": LOOP, "limits": {"time_limit": 120}}
    )
    assert status == 201
    refused = await client.settled(body["job_id"])
    assert refused["error_message"] == (
        "Invalid parameters: Parameter 'limits': time_limit 120 is more than this runner "
        "allows (60)"
    )
    job_id = await client.submit(
        {"image": pinned(image), "command": LOOP, "limits": {"time_limit": 1}}
    )
    job = await killed(client, api, job_id, "ran longer than 1 s")
    assert "looping" in job["console_output"]


async def test_memory_hog_fails_with_the_limit(
    client: Client, api: Any, image: tuple[str, str]
) -> None:
    job_id = await client.submit(
        {"image": pinned(image), "command": HOG, "limits": {"memory_mb": 16}}
    )
    await killed(client, api, job_id, "used more than 16 MiB")


async def test_a_container_killed_not_for_its_memory_says_its_exit_code(
    client: Client, api: Any, image: tuple[str, str]
) -> None:
    """Exit status 137 (SIGKILL) alone is not taken for running out of memory."""
    command = ["sh", "-c", 'echo dying; sh -c "kill -9 \\$\\$"; exit $?']
    job_id = await client.submit(
        {"image": pinned(image), "command": command, "limits": {"memory_mb": 16}}
    )
    job = await client.settled(job_id)
    assert (job["status"], job["error_message"]) == (
        "failed",
        "container failed: the container exited with code 137",
    )
    await until(gone(api, job_id), "no container left", 5)


def test_an_oom_report_that_comes_after_the_exit_is_waited_for(
    api: Any, image: tuple[str, str]
) -> None:
    """containerd may report a container's OOM after its exit: dockerd then records the
    exit as not OOM-killed and logs the "oom" event later. The run waits for that
    event; here the container runs out of memory a second after the wait began."""
    late_hog = ["sh", "-c", 'sleep 1; x=aaaaaaaa; while true; do x="$x$x"; done']
    limits = api.create_host_config(mem_limit="16m", memswap_limit="16m", network_mode="none")
    started = time.time()
    container_id = api.create_container(image[0], command=late_hog, host_config=limits)["Id"]
    try:
        api.start(container_id)
        assert not oom_reported(api, container_id, started, 0)  # not yet: one look
        assert oom_reported(api, container_id, started, 30)
        assert api.wait(container_id, timeout=30)["StatusCode"] == SIGKILLED
    finally:
        force_remove(api, container_id)


async def test_too_much_in_outputs_fails_the_job(
    client: Client, api: Any, image: tuple[str, str]
) -> None:
    fill = ["sh", "-c", "dd if=/dev/zero of=/outputs/big bs=1M count=12 && echo written"]
    job_id = await client.submit({"image": pinned(image), "command": fill})
    await killed(client, api, job_id, "wrote more than 8 MiB to /outputs")


async def test_cancel_removes_the_container(
    client: Client, api: Any, image: tuple[str, str]
) -> None:
    job_id = await client.submit({"image": pinned(image), "command": SLEEP})

    async def sleeping() -> bool:
        return "sleeping" in (await client.job(job_id))["console_output"]

    await until(sleeping, "the container to run")
    assert len(dockerimages.containers_of(api, job_id)) == 1
    status, body = await client.call("POST", f"/api/jobs/{job_id}/cancel", ADMIN)
    assert status == 200, body
    await until(gone(api, job_id), "the container removed (docker ps -a)", 10)
    assert (await client.job(job_id))["status"] == "cancelled"


async def test_a_container_has_no_network_socket_root_or_privileges(
    client: Client, image: tuple[str, str]
) -> None:
    script = (
        "echo net: $(ls /sys/class/net);"
        " nc -w 2 172.17.0.1 2375 </dev/null && echo reached-bridge || echo no-bridge;"
        " ls /var/run/docker.sock /run/docker.sock 2>/dev/null || echo no-socket;"
        " echo uid: $(id -u);"
        " touch /x 2>/dev/null && echo root-writable || echo root-read-only;"
        " echo caps: $(grep CapEff /proc/self/status);"
        " grep -q NoNewPrivs:.1 /proc/self/status && echo no-new-privileges;"
        " touch /tmp/t && echo tmp-writable"
    )
    job_id = await client.submit({"image": pinned(image), "command": ["sh", "-c", script]})
    job = await client.settled(job_id)
    assert job["status"] == "completed", (job.get("error_message"), job["console_output"])
    lines = [line.split("] ", 1)[1] for line in job["console_output"].splitlines() if "] " in line]
    for expected in (
        "net: lo",
        "no-bridge",
        "no-socket",
        "uid: 65534",
        "root-read-only",
        "caps: CapEff: 0000000000000000",
        "no-new-privileges",
        "tmp-writable",
    ):
        assert expected in lines, (expected, lines)
    assert job["output_data"]["files"] == []


async def test_gpus_asked_for_are_requested_from_docker_and_given_back(
    client: Client, api: Any, image: tuple[str, str]
) -> None:
    """This machine has no GPU (nor NVIDIA's runtime): dockerd refuses the device request,
    which shows it was made; each job's GPUs return to the pool, so the next job is not
    kept waiting."""
    for i, gpus in enumerate((2, 1, 2)):
        job_id = await client.submit(
            {
                "image": pinned(image),
                "command": ["true"],
                "env": {"RUN": str(i)},
                "limits": {"gpus": gpus},
            }
        )
        job = await client.settled(job_id)
        assert job["status"] == "failed"
        assert job["error_message"] == (
            'container failed: Docker refused: could not select device driver "nvidia" '
            "with capabilities: [[gpu]]"
        )
        await until(gone(api, job_id), "no container left", 5)
    status, body = await client.run(
        {"image": pinned(image), "command": ["true"], "limits": {"gpus": 3}}
    )
    assert status == 201
    refused = await client.settled(body["job_id"])
    assert refused["error_message"].endswith("gpus 3 is more than this runner allows (2)")


async def test_inputs_are_fetched_read_only_and_kept_by_content(
    client: Client, image: tuple[str, str], tmp_path: Path
) -> None:
    (tmp_path / "words.txt").write_text("one two three\n")
    sha = hashlib.sha256(b"one two three\n").hexdigest()
    handler = functools.partial(QuietFiles, directory=str(tmp_path))
    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{site.server_address[1]}/words.txt"
        script = "wc -w < /inputs/data/words.txt; echo x > /inputs/data/words.txt || echo read-only"
        for run in ("first", "second"):
            job_id = await client.submit(
                {
                    "image": pinned(image),
                    "command": ["sh", "-c", f"echo {run}; {script}"],
                    "inputs": {"data/words.txt": {"url": url, "sha256": sha}},
                }
            )
            job = await client.settled(job_id)
            assert job["status"] == "completed", job
            lines = [line.split("] ", 1)[-1] for line in job["console_output"].splitlines()]
            assert "3" in lines and "read-only" in lines, lines
        assert f"Input data/words.txt from the runner's cache (sha256 {sha})" in lines
        assert QuietFiles.served == 1
    finally:
        site.shutdown()
        site.server_close()


async def test_a_line_written_in_pieces_keeps_to_its_own_stream(
    client: Client, image: tuple[str, str]
) -> None:
    # busybox's sh writes its error messages in pieces ("sh: ", then the rest), and
    # stdout's lines may arrive in between: each stream keeps its own partial line.
    script = 'printf "err: " >&2; echo out; echo out2; printf "rest\\n" >&2; printf tail'
    job_id = await client.submit({"image": pinned(image), "command": ["sh", "-c", script]})
    job = await client.settled(job_id)
    assert job["status"] == "completed", job
    lines = [line.split("] ", 1)[-1] for line in job["console_output"].splitlines()]
    said = [line for line in lines if line.startswith(("out", "err", "rest", "tail"))]
    assert sorted(said) == ["err: rest", "out", "out2", "tail"], lines
    assert said.index("out") < said.index("out2"), lines


async def test_jobs_of_one_image_share_its_job_cache(
    client: Client, image: tuple[str, str], work: Path
) -> None:
    script = (
        'if [ -f "$JOB_CACHE_DIR/model" ]; then echo cached $(cat /job-cache/model);'
        " else echo fetched; echo weights > /job-cache/model; fi"
    )
    said = []
    for run in ("first", "second"):
        job_id = await client.submit(
            {"image": pinned(image), "command": ["sh", "-c", script], "env": {"RUN": run}}
        )
        job = await client.settled(job_id)
        assert job["status"] == "completed", job
        said.append(job["console_output"])
    assert "] fetched\n" in said[0] and "] cached weights\n" in said[1]
    folder = work / "runpack-job-cache" / dockerimages.REPOSITORY.replace("/", "_")
    assert await asyncio.to_thread((folder / "model").read_text) == "weights\n"


class QuietFiles(http.server.SimpleHTTPRequestHandler):
    served = 0

    def do_GET(self) -> None:
        type(self).served += 1
        super().do_GET()

    def log_message(self, *args: Any) -> None:
        pass


def test_the_example_runs_a_shell_tool_end_to_end(api: Any, tmp_path: Path) -> None:
    """examples/container/run.sh: image, server, runner and ``runpack submit … --wait``."""
    example = Path(__file__).resolve().parents[1] / "examples" / "container" / "run.sh"
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PORT": str(free_port()),
        "TMPDIR": str(tmp_path),
    }
    done = subprocess.run(
        [str(example), "b a b c b a"], env=env, capture_output=True, text=True, timeout=50
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout[done.stdout.index("{") :])
    assert [f["path"] for f in result["files"]] == ["counts.txt", "index.html"]
    assert "3 distinct words" in done.stderr + done.stdout
    assert not list(tmp_path.iterdir())  # the example cleaned up after itself
