"""The ``container`` job type with a real dockerd, real ``runpack serve`` and
``runpack-runner`` processes, and busybox images built here (tests/dockerimages.py).

Every container these tests start carries the job's label; each test checks that none
is left (``docker ps -a`` by label).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests import dockerimages
from tests.conftest import ADMIN, RUNNER_KEY, SUBMIT
from tests.procs import free_port, until
from tests.test_runner_e2e import BIN, Stack

#: A looping script, a memory hog and a slow one: the safety tests' commands.
LOOP = ["sh", "-c", "echo looping; while true; do :; done"]
HOG = ["sh", "-c", 'echo growing; x=aaaaaaaa; while true; do x="$x$x"; done']
SLEEP = ["sh", "-c", "echo sleeping; sleep 600"]


@pytest.fixture(scope="module")
def api() -> Any:
    return dockerimages.connect()


@pytest.fixture(scope="module")
def image(api: Any) -> Iterator[tuple[str, str]]:
    name, image_id = dockerimages.build(api)
    yield name, image_id
    dockerimages.remove(api, name)


class ContainerStack(Stack):
    def container_runner(self, allowed: str, **env: str) -> None:
        cwd = self.tmp / "runner"
        cwd.mkdir(exist_ok=True)
        (self.tmp / "work").mkdir(exist_ok=True)
        variables = {
            **os.environ,
            "RUNPACK_WORKER_URL": self.url,
            "RUNPACK_RUNNER_API_KEY": RUNNER_KEY,
            "RUNPACK_JOB_TYPES": "container",
            "RUNPACK_CONTAINER_IMAGES": allowed,
            "RUNPACK_CONTAINER_WORK_DIR": str(self.tmp / "work"),
            "RUNPACK_CONTAINER_MEMORY_MB": "64",
            "RUNPACK_CONTAINER_TIME_LIMIT": "60",
            **env,
        }
        self._start([str(BIN / "runpack-runner")], variables, cwd, "runner")

    async def run(self, params: dict[str, Any]) -> tuple[int, Any]:
        body = {"job_type": "container", "input_params": params}
        return await self.call("POST", "/api/jobs/submit", SUBMIT, json=body)

    async def submit_container(self, params: dict[str, Any]) -> str:
        status, body = await self.run(params)
        assert status == 201, body
        return str(body["job_id"])

    async def settled(self, job_id: str) -> dict[str, Any]:
        async def done() -> Any:
            job = await self.job(job_id)
            return job if job["status"] in ("completed", "failed", "cancelled") else None

        return dict(await until(done, f"job {job_id} to finish", 60))


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[ContainerStack]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        s = ContainerStack(tmp_path, free_port(), [], http)
        try:
            await s.serve()
            yield s
        finally:
            for proc in s.procs:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(10)


def gone(api: Any, job_id: str) -> Any:
    return lambda: not dockerimages.containers_of(api, job_id)


async def test_console_streams_live_and_outputs_are_served(
    stack: ContainerStack, api: Any, image: tuple[str, str]
) -> None:
    _, image_id = image
    stack.container_runner(image_id)
    script = (
        "echo started; echo RUNPACK_PROGRESS 1/2; echo to-stderr >&2;"
        " while [ ! -f /outputs/go ]; do sleep 0.05; done; rm /outputs/go;"
        ' echo "$GREETING from $JOB_ID" > /outputs/result.txt;'
        " mkdir /outputs/sub; echo nested > /outputs/sub/b.txt;"
        " echo RUNPACK_PROGRESS 2/2; echo finished"
    )
    params = {"image": image_id, "command": ["sh", "-c", script], "env": {"GREETING": "hi"}}
    job_id = await stack.submit_container(params)

    async def running_with_console() -> Any:
        job = await stack.job(job_id)
        console = job["console_output"]
        live = job["status"] == "in_progress" and "started" in console and "to-stderr" in console
        return job if live and job.get("progress") == {"current": 1, "total": 2} else None

    job = await until(running_with_console, "the console and progress while it runs")
    assert "RUNPACK_PROGRESS" not in job["console_output"]
    # The container waits for this file: it was still running while its console was read.
    (outputs,) = (stack.tmp / "work").glob("runpack-container-*/outputs")
    (outputs / "go").write_text("")
    job = await stack.settled(job_id)
    assert job["status"] == "completed", job
    assert "finished" in job["console_output"]
    assert job["progress"] == {"current": 2, "total": 2}
    data = job["output_data"]
    assert data["image"] == image_id and data["image_id"] == image_id and data["exit_code"] == 0
    assert [f["path"] for f in data["files"]] == ["result.txt", "sub/b.txt"]
    for file, text in zip(data["files"], [f"hi from {job_id}\n", "nested\n"], strict=True):
        async with stack.http.get(file["url"]) as resp:
            assert resp.status == 200
            assert await resp.text() == text
        assert file["bytes"] == len(text)
    assert data["outputs_url"].startswith(stack.url)
    assert dockerimages.containers_of(api, job_id) == []
    assert not list((stack.tmp / "work").iterdir())  # the outputs folder is removed


async def test_same_digest_is_cached_a_new_digest_runs_again(
    stack: ContainerStack, api: Any, image: tuple[str, str]
) -> None:
    name, image_id = image
    other_name, other_id = dockerimages.build(api, {"etc/version": "2"})
    try:
        repository = name.rsplit(":", 1)[0]
        stack.container_runner(f"{repository}@*")
        command = ["sh", "-c", "cat /etc/version 2>/dev/null || echo 1"]
        pinned = f"{repository}@{image_id}"
        first = await stack.submit_container({"image": pinned, "command": command})
        job = await stack.settled(first)
        assert job["status"] == "completed", job
        status, body = await stack.run({"image": pinned, "command": command})
        assert status == 200 and body["job_id"] == first, body
        assert body["message"] == "Job already completed (cached result)"
        assert body["result"]["output_data"]["image_id"] == image_id
        newer = f"{repository}@{other_id}"
        second = await stack.submit_container({"image": newer, "command": command})
        job = await stack.settled(second)
        assert job["status"] == "completed", job
        assert second != first
        assert job["output_data"]["image_id"] == other_id
        assert "] 2\n" in job["console_output"]
    finally:
        dockerimages.remove(api, other_name)


async def test_disallowed_and_unpinned_images_are_refused_before_anything_runs(
    stack: ContainerStack, api: Any, image: tuple[str, str]
) -> None:
    name, image_id = image
    stack.container_runner("")  # the default: no image allowed
    job_id = await stack.submit_container({"image": image_id, "command": ["touch", "/outputs/x"]})
    job = await stack.settled(job_id)
    assert job["status"] == "failed"
    assert job["error_message"] == (
        f"Invalid parameters: image {image_id} is not allowed: this runner allows no images "
        "(RUNPACK_CONTAINER_IMAGES is empty)"
    )
    assert "Container" not in job["console_output"]  # none was started
    unpinned = await stack.submit_container({"image": name})
    job = await stack.settled(unpinned)
    assert job["error_message"].startswith("Invalid parameters: Parameter 'image' is not pinned")
    assert "docker image inspect" in job["error_message"]


async def test_time_limit_kills_and_removes_the_container(
    stack: ContainerStack, api: Any, image: tuple[str, str]
) -> None:
    _, image_id = image
    stack.container_runner(image_id)
    status, body = await stack.run(
        {"image": image_id, "command": LOOP, "limits": {"time_limit": 120}}
    )
    assert status == 201
    refused = await stack.settled(body["job_id"])
    assert refused["error_message"] == (
        "Invalid parameters: Parameter 'limits': time_limit 120 is more than this runner "
        "allows (60)"
    )
    job_id = await stack.submit_container(
        {"image": image_id, "command": LOOP, "limits": {"time_limit": 1}}
    )
    job = await stack.settled(job_id)
    assert job["status"] == "failed"
    assert job["error_message"] == "Job execution failed: killed: ran longer than 1 s"
    assert "looping" in job["console_output"]
    await until(gone(api, job_id), "no container left", 5)


async def test_memory_hog_fails_with_the_limit(
    stack: ContainerStack, api: Any, image: tuple[str, str]
) -> None:
    _, image_id = image
    stack.container_runner(image_id)
    job_id = await stack.submit_container(
        {"image": image_id, "command": HOG, "limits": {"memory_mb": 16}}
    )
    job = await stack.settled(job_id)
    assert job["status"] == "failed"
    assert job["error_message"] == "Job execution failed: killed: used more than 16 MiB"
    await until(gone(api, job_id), "no container left", 5)


async def test_cancel_removes_the_container(
    stack: ContainerStack, api: Any, image: tuple[str, str]
) -> None:
    _, image_id = image
    stack.container_runner(image_id)
    job_id = await stack.submit_container({"image": image_id, "command": SLEEP})

    async def sleeping() -> bool:
        return "sleeping" in (await stack.job(job_id))["console_output"]

    await until(sleeping, "the container to run")
    assert len(dockerimages.containers_of(api, job_id)) == 1
    status, body = await stack.call("POST", f"/api/jobs/{job_id}/cancel", ADMIN)
    assert status == 200, body
    await until(stack.job_is(job_id, "cancelled"), "the job cancelled")
    await until(gone(api, job_id), "the container removed (docker ps -a)", 10)


async def test_a_container_has_no_network_socket_root_or_privileges(
    stack: ContainerStack, api: Any, image: tuple[str, str]
) -> None:
    _, image_id = image
    stack.container_runner(image_id)
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
    job_id = await stack.submit_container({"image": image_id, "command": ["sh", "-c", script]})
    job = await stack.settled(job_id)
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
