"""Cancel and retry: who may cancel what, the runner is told, late results are refused."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp.test_utils import TestClient

from tests.conftest import ADMIN, RUNNER, SUBMIT, as_runner, claim, register, submit


async def _cancel(client: TestClient, job_id: str, headers: dict[str, str]) -> Any:
    resp = await client.post(f"/api/jobs/{job_id}/cancel", headers=headers)
    return resp.status, await resp.json()


async def test_submit_key_cancels_a_pending_job(client: TestClient) -> None:
    job = await submit(client, name="c1")
    status, body = await _cancel(client, job["job_id"], SUBMIT)
    assert (status, body["status"], body["message"]) == (200, "cancelled", "Job cancelled")
    detail = await (await client.get(f"/api/admin/jobs/{job['job_id']}")).json()
    assert detail["status"] == "cancelled"
    assert detail["error_message"] == "Cancelled by the client"
    # A cancelled job is queued again by the next submit of the same inputs.
    again = await client.post(
        "/api/jobs/submit",
        json={"job_type": "hello_world", "input_params": {"name": "c1"}},
        headers=SUBMIT,
    )
    assert again.status == 201
    assert (await again.json())["job_id"] == job["job_id"]


async def test_running_job_needs_the_admin_key(client: TestClient) -> None:
    job = await submit(client, name="c2")
    runner = await register(client)
    await claim(client, runner, job["job_id"])
    status, body = await _cancel(client, job["job_id"], SUBMIT)
    assert status == 409
    assert "admin key" in body["details"]
    status, body = await _cancel(client, job["job_id"], RUNNER)
    assert status == 401
    status, body = await _cancel(client, job["job_id"], ADMIN)
    assert (status, body["status"]) == (200, "cancelled")
    # The runner's late result is refused and changes nothing.
    late = await client.post(
        f"/api/runner/jobs/{job['job_id']}/complete",
        json={"output_data": {"late": True}},
        headers=as_runner(runner),
    )
    assert late.status == 400
    detail = await (await client.get(f"/api/admin/jobs/{job['job_id']}")).json()
    assert detail["status"] == "cancelled"
    assert "output_data" not in detail


async def test_finished_and_unknown_jobs_cannot_be_cancelled(client: TestClient) -> None:
    job = await submit(client, name="c3")
    runner = await register(client)
    await claim(client, runner, job["job_id"])
    await client.post(
        f"/api/runner/jobs/{job['job_id']}/complete",
        json={"output_data": {}},
        headers=as_runner(runner),
    )
    status, body = await _cancel(client, job["job_id"], ADMIN)
    assert status == 409
    assert body["details"] == "the job is completed"
    status, body = await _cancel(client, "00000000-0000-4000-8000-000000000000", ADMIN)
    assert (status, body) == (404, {"error": "Job not found"})


async def test_cancel_reaches_the_runner_over_its_socket(client: TestClient) -> None:
    ws = await client.ws_connect("/api/runner/ws", headers=RUNNER)
    hello = {"type": "hello", "name": "w", "capabilities": ["hello_world"], "concurrency": 1}
    await ws.send_str(orjson.dumps(hello).decode())
    assert (await ws.receive_json())["type"] == "welcome"
    await ws.send_str('{"type": "ready", "slots": 1}')
    job = await submit(client, name="c4")
    pushed = await ws.receive_json()
    assert (pushed["type"], pushed["job_id"]) == ("job", job["job_id"])
    status, _ = await _cancel(client, job["job_id"], ADMIN)
    assert status == 200
    told = await ws.receive_json()
    assert told == {
        "type": "cancel",
        "job_id": job["job_id"],
        "reason": "Cancelled by an administrator",
    }
    complete = {"type": "complete", "job_id": job["job_id"], "output_data": {"x": 1}}
    await ws.send_str(orjson.dumps(complete).decode())
    ack = await ws.receive_json()
    assert (ack["type"], ack["applied"], ack["reason"]) == ("ack", False, "job is cancelled")
    await ws.close()


async def test_admin_retry_queues_a_failed_job_again(client: TestClient) -> None:
    job = await submit(client, name="c5")
    runner = await register(client)
    await claim(client, runner, job["job_id"])
    await client.post(
        f"/api/runner/jobs/{job['job_id']}/error",
        json={"error_message": "boom"},
        headers=as_runner(runner),
    )
    resp = await client.post(f"/api/admin/jobs/{job['job_id']}/retry", headers=SUBMIT)
    assert resp.status == 401
    resp = await client.post(f"/api/admin/jobs/{job['job_id']}/retry", headers=ADMIN)
    assert resp.status == 200
    assert (await resp.json())["status"] == "pending"
    resp = await client.post(f"/api/admin/jobs/{job['job_id']}/retry", headers=ADMIN)
    assert resp.status == 409
