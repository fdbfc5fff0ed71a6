"""What a test does with a running ``runpack serve`` over aiohttp: submit a job, read
it or the runners, and wait (bounded, by polling: state with no event to wait on)."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import aiohttp

from tests.procs import KEYS, until

SUBMIT = {"Authorization": f"Bearer {KEYS['RUNPACK_SUBMIT_API_KEY']}"}
ADMIN = {"Authorization": f"Bearer {KEYS['RUNPACK_ADMIN_API_KEY']}"}
Job = dict[str, Any]
FINAL = ("completed", "failed", "cancelled")


def finished(job: Job) -> bool:
    return job["status"] in FINAL


class ServerCalls:
    """A server's API as the tests call it, with the keys of ``tests.procs.KEYS``."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url = http, url

    async def submit_job(
        self,
        job_type: str,
        params: dict[str, Any],
        statuses: Collection[int] = (200, 201, 202),
    ) -> dict[str, Any]:
        """The submit's answer, once it came with one of ``statuses``."""
        body = {"job_type": job_type, "input_params": params}
        async with self.http.post(f"{self.url}/api/jobs/submit", json=body, headers=SUBMIT) as r:
            answer: dict[str, Any] = await r.json()
            assert r.status in statuses, (r.status, answer)
            return answer

    async def job(self, job_id: str) -> Job:
        """The job's admin detail."""
        async with self.http.get(f"{self.url}/api/admin/jobs/{job_id}", headers=ADMIN) as r:
            job: Job = await r.json()
            return job

    async def until_job(
        self, job_id: str, done: Callable[[Job], bool], what: str, limit: float = 30
    ) -> Job:
        """The job once ``done`` says so (``done`` may fail the test by asserting)."""

        async def check() -> Job | None:
            job = await self.job(job_id)
            return job if done(job) else None

        return dict(await until(check, f"job {job_id} {what}", limit))

    async def settled(self, job_id: str, limit: float = 60) -> Job:
        """The job once it finished, whichever way."""
        return await self.until_job(job_id, finished, "to finish", limit)

    async def runners(self) -> list[dict[str, Any]]:
        async with self.http.get(f"{self.url}/api/admin/runners", headers=ADMIN) as r:
            runners: list[dict[str, Any]] = (await r.json())["runners"]
            return runners

    async def connected(self, name: str, over: str = "connected", limit: float = 30) -> str:
        """The id of runner ``name`` once it is connected (``over="is_active"``: a runner
        that polls over HTTP)."""

        async def find() -> str | None:
            for runner in await self.runners():
                if runner["name"] == name and runner.get(over):
                    return str(runner["runner_id"])
            return None

        return str(await until(find, f"runner {name} {over}", limit))
