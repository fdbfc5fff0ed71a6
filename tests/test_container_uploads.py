"""Container jobs reading files uploaded with the submit: a real dockerd, real
``runpack serve`` and ``runpack-runner`` processes, the ``runpack submit --input``
command and the Python client. The runner does not allow private addresses, and
still fetches uploads from its own server on loopback."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from runpack.client import Client
from tests import dockerimages
from tests.calls import ServerCalls
from tests.procs import KEYS, NO_LIMITS, Proc, clean_env, running_runner, running_server

SUBMIT = {"Authorization": f"Bearer {KEYS['RUNPACK_SUBMIT_API_KEY']}"}
#: Counts the words of the uploaded file into /outputs.
COUNT = ["sh", "-c", "wc -w < /inputs/data/words.txt > /outputs/count.txt; echo counted"]


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    """A busybox image, as jobs name it (repository and image ID)."""
    api = dockerimages.connect()
    name, image_id = dockerimages.build(api)
    yield f"{name.rsplit(':', 1)[0]}@{image_id}"
    dockerimages.remove(api, name)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, image: str) -> Iterator[Proc]:
    tmp = tmp_path_factory.mktemp("container-uploads")
    runner_env = {
        "RUNPACK_JOB_TYPES": "container",
        "RUNPACK_CONCURRENCY": "2",
        "RUNPACK_CONTAINER_IMAGES": f"{dockerimages.REPOSITORY}@*",
        "RUNPACK_CONTAINER_WORK_DIR": str(tmp / "work"),
        "RUNPACK_CONTAINER_MEMORY_MB": "64",
        "RUNPACK_CONTAINER_TIME_LIMIT": "60",
    }
    with (
        running_server(tmp / "server", {**KEYS, **NO_LIMITS}) as proc,
        running_runner(tmp / "runner", proc.url, env=runner_env),
    ):
        yield proc


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def settled(http: aiohttp.ClientSession, url: str, job_id: str) -> dict[str, Any]:
    return await ServerCalls(http, url).settled(job_id)


def submit_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = clean_env({"RUNPACK_URL": url, **KEYS})
    cmd = [sys.executable, "-m", "runpack.cli", "submit", "container", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)


async def test_an_uploaded_file_is_read_by_the_container_and_shares_its_job(
    server: Proc, http: aiohttp.ClientSession, image: str, tmp_path: Path
) -> None:
    words = tmp_path / "words.txt"
    words.write_bytes(b"one two three " + os.urandom(8).hex().encode() + b"\n")
    params = json.dumps({"image": image, "command": COUNT})
    attach = f"data/words.txt={words}"
    run = submit_cli(server.url, "--json-params", params, "--input", attach, "-q")
    assert run.returncode == 0, run.stderr
    digest = hashlib.sha256(words.read_bytes()).hexdigest()
    assert f"Uploaded {words} as data/words.txt (sha256 {digest})" in run.stderr
    job_id = run.stdout.strip()
    job = await settled(http, server.url, job_id)
    assert job["status"] == "completed", job.get("error_message")
    (output,) = job["output_data"]["files"]
    async with http.get(output["url"]) as resp:
        assert (await resp.text()).strip() == "4"
    assert job["input_params"]["inputs"] == {"data/words.txt": {"upload": digest}}

    # The same bytes uploaded again, the same submit: the same job, its cached result.
    with Client(server.url, submit_key=KEYS["RUNPACK_SUBMIT_API_KEY"]) as client:
        assert client.upload_input(words) == digest
        assert client.upload_input(words.read_bytes()) == digest
        again = client.submit(
            "container",
            {"image": image, "command": COUNT, "inputs": {"data/words.txt": {"upload": digest}}},
        )
    assert again.job_id == job_id and not again.created
    assert again.message == "Job already completed (cached result)"


async def test_bytes_not_matching_the_hash_fail_the_job(
    server: Proc, http: aiohttp.ClientSession, image: str
) -> None:
    data = b"genuine " + os.urandom(8).hex().encode()
    async with http.post(f"{server.url}/api/inputs", headers=SUBMIT, data=data) as resp:
        assert resp.status == 201
        digest = (await resp.json())["sha256"]
    # The stored copy changed under the server (a disk fault, a meddler): the runner
    # checks what it fetched against the hash the job names.
    stored = server.log.parent / "runpack-data" / "inputs" / digest[:2] / digest
    stored.chmod(0o644)
    stored.write_bytes(b"tampered")
    params = {"image": image, "command": COUNT, "inputs": {"data/words.txt": {"upload": digest}}}
    body = {"job_type": "container", "input_params": params}
    async with http.post(f"{server.url}/api/jobs/submit", headers=SUBMIT, json=body) as resp:
        assert resp.status == 201
        job_id = (await resp.json())["job_id"]
    job = await settled(http, server.url, job_id)
    assert job["status"] == "failed"
    wrong = hashlib.sha256(b"tampered").hexdigest()
    assert (
        f"input data/words.txt: the server sent bytes with sha256 {wrong}, not {digest}"
        in (job["error_message"])
    )
