from __future__ import annotations

from aiohttp.test_utils import TestClient

from tests.conftest import SUBMIT, as_runner, claim, register, submit


async def test_hello_world_lifecycle(client: TestClient) -> None:
    job = await submit(client, name="Ada")
    assert job["status"] == "pending"
    runner = await register(client)
    await claim(client, runner, job["job_id"])
    resp = await client.post(
        f"/api/runner/jobs/{job['job_id']}/complete",
        json={"output_data": {"message": "Hello, Ada!"}, "console_output": "done"},
        headers=as_runner(runner),
    )
    assert resp.status == 200
    resp = await client.get(f"/api/jobs/{job['job_id']}", headers=SUBMIT)
    body = await resp.json()
    assert body["status"] == "completed"
    assert body["result"]["output_data"] == {"message": "Hello, Ada!"}
