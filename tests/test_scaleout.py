"""Scale-out: several ``runpack serve`` processes share one PostgreSQL database.

Instances tell each other about queued jobs and job updates through
LISTEN/NOTIFY: a job submitted to A is pushed to a runner connected to B at
once, and a watcher on A sees the progress that B receives.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.pg import fresh_database, require_postgres
from tests.procs import KEYS, running_runner, running_server, until

SUBMIT = {"Authorization": f"Bearer {KEYS['RUNPACK_SUBMIT_API_KEY']}"}
ADMIN = {"Authorization": f"Bearer {KEYS['RUNPACK_ADMIN_API_KEY']}"}


@pytest.fixture
async def dsn() -> AsyncIterator[str]:
    require_postgres()
    async with fresh_database() as url:
        yield url


async def _submit(http: aiohttp.ClientSession, url: str, **params: Any) -> str:
    body = {"job_type": "hello_world", "input_params": params}
    async with http.post(f"{url}/api/jobs/submit", json=body, headers=SUBMIT) as resp:
        assert resp.status == 201, await resp.text()
        return str((await resp.json())["job_id"])


async def _job(http: aiohttp.ClientSession, url: str, job_id: str) -> dict[str, Any]:
    async with http.get(f"{url}/api/admin/jobs/{job_id}") as resp:
        assert resp.status == 200
        return dict(await resp.json())


async def _events(http: aiohttp.ClientSession, url: str, job_id: str) -> list[tuple[str, str]]:
    """Read a job's SSE stream on ``url`` to its end: [(event, data), …]."""
    out: list[tuple[str, str]] = []
    kind = ""
    async with http.get(f"{url}/api/jobs/{job_id}/events") as resp:
        assert resp.status == 200
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                out.append((kind, line[6:]))
    return out


async def test_two_instances_share_jobs_runners_and_watchers(tmp_path: Path, dsn: str) -> None:
    env = dict(KEYS)
    with (
        running_server(tmp_path / "a", env, ("--db", dsn)) as a,
        running_server(tmp_path / "b", env, ("--db", dsn)) as b,
        running_runner(tmp_path / "runner", b.url, "--name", "on-b", "--concurrency", "2"),
    ):
        async with aiohttp.ClientSession() as http:

            async def runner_on_b() -> bool:
                async with http.get(f"{b.url}/api/admin/runners", headers=ADMIN) as resp:
                    runners = (await resp.json())["runners"]
                return any(r.get("connected") for r in runners)

            await until(runner_on_b, "the runner on instance B")

            # Pushed across instances: every job is claimed within a fraction of a
            # second of its submit on A (the hub's fallback poll is 1 s).
            for i in range(4):
                job_id = await _submit(http, a.url, name=f"quick-{i}", processing_time=0)
                job = await until(
                    lambda job_id=job_id: _completed(http, a.url, job_id),
                    "the job to complete",
                    limit=10,
                )
                assert job["claimed_at"] - job["created_at"] < 500, job

            # A watcher on A sees the progress reported to B, then the result.
            job_id = await _submit(http, a.url, name="Watched", processing_time=2)
            events = await asyncio.wait_for(_events(http, a.url, job_id), 20)
            kinds = [k for k, _ in events]
            assert kinds[0] == "snapshot"
            assert "progress" in kinds
            assert any(k == "console" for k in kinds)
            assert kinds[-1] == "status" and '"completed"' in events[-1][1]
            assert "Hello, Watched!" in events[-1][1]

            # SIGKILL instance A in the middle of a job it accepted: nothing is lost.
            job_id = await _submit(http, a.url, name="Survivor", processing_time=2)

            async def running_on_b() -> bool:
                return (await _job(http, b.url, job_id))["status"] == "in_progress"

            await until(running_on_b, "the job running on instance B")
            os.kill(a.popen.pid, signal.SIGKILL)
            a.popen.wait(10)
            done = await until(
                lambda: _completed(http, b.url, job_id), "the job to complete", limit=20
            )
            assert done["output_data"] == {"message": "Hello, Survivor!", "processing_time": 2}
            async with http.get(f"{b.url}/api/admin/stats", headers=ADMIN) as resp:
                stats = await resp.json()
            assert stats["jobs"]["completed"] == 6
            assert stats["jobs"]["total"] == 6


async def _completed(http: aiohttp.ClientSession, url: str, job_id: str) -> dict[str, Any] | None:
    job = await _job(http, url, job_id)
    return job if job["status"] == "completed" else None
