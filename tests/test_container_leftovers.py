"""Containers a runner leaves when it dies, with a real dockerd and real ``runpack serve``
and ``runpack-runner`` processes: a runner killed with SIGKILL removes its own when
it starts again, and never another runner's; one stopped with SIGTERM leaves none."""

from __future__ import annotations

import json
import os
import signal
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from runpack_runner.container_leftovers import force_remove
from tests import dockerimages
from tests.procs import KEYS, NO_LIMITS, Proc, running_runner, running_server, until

SUBMIT = {"Authorization": f"Bearer {KEYS['RUNPACK_SUBMIT_API_KEY']}"}
ADMIN = {"Authorization": f"Bearer {KEYS['RUNPACK_ADMIN_API_KEY']}"}
SLEEP = ["sh", "-c", "echo sleeping; while true; do sleep 1; done"]
LABEL_RUNNER = "org.runpack.runner-id"
LABEL_RUNNER_NAME = "org.runpack.runner-name"


@pytest.fixture(scope="module")
def api() -> Any:
    return dockerimages.connect()


@pytest.fixture(scope="module")
def image(api: Any) -> Iterator[str]:
    """A busybox image, by its ID."""
    name, image_id = dockerimages.build(api)
    yield image_id
    dockerimages.remove(api, name)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Proc]:
    with running_server(tmp_path / "server", {**KEYS, **NO_LIMITS}) as proc:
        yield proc


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


def runner(cwd: Path, url: str, name: str) -> Any:
    """A runner of container jobs in ``cwd`` (its state file there), named ``name``."""
    env = {
        "RUNPACK_JOB_TYPES": "container",
        "RUNPACK_NAME": name,
        "RUNPACK_CONTAINER_IMAGES": f"{dockerimages.REPOSITORY}@*",
        "RUNPACK_CONTAINER_WORK_DIR": str(cwd / "work"),
        "RUNPACK_CONTAINER_MEMORY_MB": "64",
    }
    return running_runner(cwd, url, env=env)


async def submit(http: aiohttp.ClientSession, url: str, image: str) -> str:
    params = {"image": f"{dockerimages.REPOSITORY}@{image}", "command": SLEEP}
    body = {"job_type": "container", "input_params": params}
    async with http.post(f"{url}/api/jobs/submit", headers=SUBMIT, json=body) as resp:
        assert resp.status == 201, await resp.text()
        return str((await resp.json())["job_id"])


async def cancel(http: aiohttp.ClientSession, url: str, job_id: str) -> None:
    async with http.post(f"{url}/api/jobs/{job_id}/cancel", headers=ADMIN) as resp:
        assert resp.status == 200, await resp.text()


async def one_container(api: Any, job_id: str) -> dict[str, Any]:
    """The job's container, once it runs."""

    def running() -> Any:
        found = dockerimages.containers_of(api, job_id)
        return found[0] if len(found) == 1 and found[0]["State"] == "running" else None

    return dict(await until(running, f"the container of job {job_id} to run", 30))


def exists(api: Any, container_id: str) -> bool:
    return any(c["Id"] == container_id for c in api.containers(all=True))


@contextmanager
def removed_at_end(api: Any) -> Iterator[list[str]]:
    """Job ids whose containers are removed at the end, should the test fail."""
    job_ids: list[str] = []
    try:
        yield job_ids
    finally:
        for job_id in job_ids:
            for container in dockerimages.containers_of(api, job_id):
                force_remove(api, container["Id"])


@contextmanager
def foreign_containers(api: Any, image: str) -> Iterator[list[str]]:
    """Containers the runner must leave alone: another runner's (another id, and a
    name of its own) and one without the runner's label (as older runners made)."""
    labels = [
        {dockerimages.LABEL_JOB: f"other-{uuid.uuid4()}", LABEL_RUNNER: str(uuid.uuid4())}
        | {LABEL_RUNNER_NAME: "another-runner"},
        {dockerimages.LABEL_JOB: f"older-{uuid.uuid4()}"},
    ]
    made = [api.create_container(image, command=SLEEP, labels=each)["Id"] for each in labels]
    try:
        yield made
    finally:
        for container_id in made:
            force_remove(api, container_id)


async def test_a_runner_killed_with_sigkill_removes_its_leftovers_when_it_starts_again(
    api: Any, image: str, server: Proc, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    cwd = tmp_path / "runner"
    with foreign_containers(api, image) as foreign, removed_at_end(api) as jobs:
        with runner(cwd, server.url, "sweeper") as first:
            job_id = await submit(http, server.url, image)
            jobs.append(job_id)
            left = await one_container(api, job_id)
            state = json.loads((cwd / ".runpack_runner.json").read_text())
            assert left["Labels"][LABEL_RUNNER] == state["runner_id"]
            assert left["Labels"][LABEL_RUNNER_NAME] == "sweeper"
            os.kill(first.popen.pid, signal.SIGKILL)
            assert first.popen.wait(10) == -signal.SIGKILL
            assert exists(api, left["Id"])  # nothing of the runner's removes it
        with runner(cwd, server.url, "sweeper") as second:
            await until(lambda: not exists(api, left["Id"]), "the leftover container removed", 30)
            assert "removed 1 container(s) left by an earlier run" in second.output()
            assert all(exists(api, container_id) for container_id in foreign)
            # The server gives the job to the runner again: its new run is cancelled.
            await cancel(http, server.url, job_id)
            await until(lambda: not dockerimages.containers_of(api, job_id), "no container", 30)
        assert all(exists(api, container_id) for container_id in foreign)


async def test_a_runner_stopped_with_sigterm_leaves_no_container(
    api: Any, image: str, server: Proc, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """The first SIGTERM lets the job finish (its container runs on); the second
    releases it to the queue, and its container is removed before the runner exits."""
    with removed_at_end(api) as jobs, runner(tmp_path / "runner", server.url, "stopping") as proc:
        job_id = await submit(http, server.url, image)
        jobs.append(job_id)
        container = await one_container(api, job_id)
        proc.popen.send_signal(signal.SIGTERM)
        await until(lambda: "stopping: taking no new jobs" in proc.output(), "the drain")
        assert exists(api, container["Id"])
        proc.popen.send_signal(signal.SIGTERM)
        await until(lambda: proc.popen.poll() is not None, "the runner to exit", 30)
        assert not exists(api, container["Id"])
    await cancel(http, server.url, job_id)


def test_removals_at_once_all_return_after_the_container_is_gone(api: Any, image: str) -> None:
    """The job's thread and the exit handler may remove one container at once: dockerd
    answers the later call 409 ("removal already in progress"), and that call too
    returns only once the container is gone, so a runner never exits before it is."""
    container_id = api.create_container(image, command=SLEEP)["Id"]
    api.start(container_id)
    start = threading.Barrier(4)
    seen: list[bool] = []

    def remove() -> None:
        start.wait()
        force_remove(api, container_id)
        seen.append(exists(api, container_id))

    threads = [threading.Thread(target=remove) for _ in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert seen == [False] * 4
    finally:
        force_remove(api, container_id)
