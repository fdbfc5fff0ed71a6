"""Client endpoints of wire-api.md §6.2: submit, check and job status, through the real app."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp.test_utils import TestClient

from runpack.appkeys import JOB_REQUESTS
from tests.conftest import ADMIN, SUBMIT, MakeClient, as_runner, claim, register

UUID_LEN = 36


async def post(client: TestClient, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    resp = await client.post(path, json=body, headers=SUBMIT)
    return resp.status, await resp.json()


async def submit_job(
    client: TestClient, params: dict[str, Any] | None = None, **extra: Any
) -> tuple[int, Any]:
    body = {"job_type": "hello_world", "input_params": params or {"name": "Ada"}, **extra}
    return await post(client, "/api/jobs/submit", body)


async def check_job(client: TestClient, params: dict[str, Any] | None = None) -> tuple[int, Any]:
    body = {"job_type": "hello_world", "input_params": params or {"name": "Ada"}}
    return await post(client, "/api/jobs/check", body)


async def new_job(client: TestClient, params: dict[str, Any] | None = None) -> str:
    status, body = await submit_job(client, params)
    assert status == 201, body
    return str(body["job_id"])


async def runner_post(
    client: TestClient, runner: str, job_id: str, action: str, body: dict[str, Any]
) -> None:
    resp = await client.post(
        f"/api/runner/jobs/{job_id}/{action}", json=body, headers=as_runner(runner)
    )
    assert resp.status == 200, await resp.text()


async def complete_job(
    client: TestClient, job_id: str, output: dict[str, Any], console: str = "done"
) -> None:
    runner = await register(client)
    await claim(client, runner, job_id)
    await runner_post(
        client, runner, job_id, "complete", {"output_data": output, "console_output": console}
    )


async def fail_job(client: TestClient, job_id: str, message: str) -> None:
    runner = await register(client)
    await claim(client, runner, job_id)
    await runner_post(
        client, runner, job_id, "error", {"error_message": message, "console_output": ""}
    )


async def status_of(client: TestClient, job_id: str) -> tuple[int, Any]:
    resp = await client.get(f"/api/jobs/{job_id}", headers=SUBMIT)
    return resp.status, await resp.json()


async def detail(client: TestClient, job_id: str) -> Any:
    resp = await client.get(f"/api/admin/jobs/{job_id}")
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def total_jobs(client: TestClient) -> int:
    resp = await client.get("/api/admin/stats", headers=ADMIN)
    return int((await resp.json())["jobs"]["total"])


# --- POST /api/jobs/submit ------------------------------------------------------------


async def test_submit_new_job_is_201_with_exact_body(client: TestClient) -> None:
    status, body = await submit_job(client)
    assert status == 201
    assert body == {
        "job_id": body["job_id"],
        "status": "pending",
        "message": "Job queued successfully",
    }
    assert len(body["job_id"]) == UUID_LEN
    assert body["job_id"] == body["job_id"].lower()


async def test_submit_pending_job_again_is_200_job_is_pending(client: TestClient) -> None:
    job_id = await new_job(client)
    status, body = await submit_job(client)
    assert status == 200
    assert body == {"job_id": job_id, "status": "pending", "message": "Job is pending"}


async def test_submit_claimed_and_in_progress_jobs_report_their_status(
    client: TestClient,
) -> None:
    job_id = await new_job(client)
    runner = await register(client)
    await claim(client, runner, job_id)
    status, body = await submit_job(client)
    assert (status, body) == (
        200,
        {"job_id": job_id, "status": "claimed", "message": "Job is claimed"},
    )
    await runner_post(client, runner, job_id, "heartbeat", {"console_output": "working"})
    status, body = await submit_job(client)
    assert (status, body) == (
        200,
        {"job_id": job_id, "status": "in_progress", "message": "Job is in_progress"},
    )


async def test_submit_completed_job_returns_cached_result(client: TestClient) -> None:
    job_id = await new_job(client)
    await complete_job(client, job_id, {"message": "Hello, Ada!", "n": [1, 2]}, console="line\n")
    status, body = await submit_job(client)
    assert status == 200
    assert body == {
        "job_id": job_id,
        "status": "completed",
        "message": "Job already completed (cached result)",
        "result": {
            "output_data": {"message": "Hello, Ada!", "n": [1, 2]},
            "console_output": "line\n",
        },
    }


async def test_submit_failed_job_returns_cached_error(client: TestClient) -> None:
    job_id = await new_job(client)
    await fail_job(client, job_id, "boom: division by zero")
    status, body = await submit_job(client)
    assert status == 200
    assert body == {
        "job_id": job_id,
        "status": "failed",
        "message": "Job previously failed",
        "error": "boom: division by zero",
    }


async def test_submit_failed_job_without_message_says_unknown_error(client: TestClient) -> None:
    job_id = await new_job(client)
    await fail_job(client, job_id, "")
    status, body = await submit_job(client)
    assert status == 200
    assert body["status"] == "failed"
    assert body["error"] == "Unknown error"


async def test_failed_job_is_requeued_once_failed_retry_after_has_passed(
    make_client: MakeClient,
) -> None:
    client = await make_client(failed_retry_after=0)
    job_id = await new_job(client)
    await fail_job(client, job_id, "flaky")
    status, body = await submit_job(client)
    assert status == 201
    assert body == {"job_id": job_id, "status": "pending", "message": "Job queued successfully"}
    job = await detail(client, job_id)
    assert job["status"] == "pending"
    assert "error_message" not in job
    assert await total_jobs(client) == 1


async def test_force_requeues_a_failed_job_at_once(client: TestClient) -> None:
    job_id = await new_job(client)
    await fail_job(client, job_id, "flaky")
    status, body = await submit_job(client)
    assert (status, body["status"]) == (200, "failed")  # default failed_retry_after: 5 min
    status, body = await submit_job(client, force=True)
    assert status == 201
    assert body == {"job_id": job_id, "status": "pending", "message": "Job queued successfully"}


async def test_force_does_not_requeue_a_cached_result(client: TestClient) -> None:
    job_id = await new_job(client)
    await complete_job(client, job_id, {"ok": True})
    status, body = await submit_job(client, force=True)
    assert (status, body["status"], body["job_id"]) == (200, "completed", job_id)


async def test_expired_job_is_requeued_with_the_same_id(client: TestClient) -> None:
    job_id = await new_job(client)
    # A figpack_url that does not end in /index.html is invalid without any fetch.
    await complete_job(client, job_id, {"figpack_url": "https://figures.example/f/x.html"})
    status, body = await check_job(client)
    assert (status, body["status"]) == (200, "expired")
    assert (await detail(client, job_id))["status"] == "expired"
    status, body = await submit_job(client)
    assert status == 201
    assert body == {"job_id": job_id, "status": "pending", "message": "Job queued successfully"}
    job = await detail(client, job_id)
    assert job["status"] == "pending"
    assert "output_data" not in job
    assert await total_jobs(client) == 1


async def test_completed_invalid_result_is_requeued_by_submit_directly(client: TestClient) -> None:
    job_id = await new_job(client)
    await complete_job(client, job_id, {"figpack_url": "https://figures.example/f/x.html"})
    status, body = await submit_job(client)
    assert status == 201
    assert body == {"job_id": job_id, "status": "pending", "message": "Job queued successfully"}


async def test_key_order_of_params_does_not_split_the_cache(client: TestClient) -> None:
    first = await new_job(client, {"b": 1, "a": {"y": 2, "x": 1}})
    status, body = await submit_job(client, {"a": {"x": 1, "y": 2}, "b": 1})
    assert (status, body["job_id"]) == (200, first)
    assert await total_jobs(client) == 1


async def test_different_params_make_a_different_job(client: TestClient) -> None:
    first = await new_job(client, {"name": "Ada"})
    second = await new_job(client, {"name": "Grace"})
    assert first != second


async def test_input_params_keep_their_original_key_order(client: TestClient) -> None:
    params = {"zeta": 1, "alpha": {"d": 1, "c": 2}, "mid": [3, 1]}
    job_id = await new_job(client, params)
    stored = (await detail(client, job_id))["input_params"]
    assert stored == params
    assert list(stored) == ["zeta", "alpha", "mid"]
    assert list(stored["alpha"]) == ["d", "c"]


# --- POST /api/jobs/check -------------------------------------------------------------


async def test_check_unknown_job_does_not_exist(client: TestClient) -> None:
    status, body = await check_job(client)
    assert (status, body) == (200, {"exists": False, "message": "Job does not exist"})


async def test_check_never_creates_a_job(client: TestClient) -> None:
    await check_job(client)
    status, body = await check_job(client)
    assert status == 200
    assert body == {"exists": False, "message": "Job does not exist"}
    assert await total_jobs(client) == 0


async def test_check_completed_job_returns_cached_result(client: TestClient) -> None:
    job_id = await new_job(client)
    await complete_job(client, job_id, {"answer": 42}, console="out")
    status, body = await check_job(client)
    assert status == 200
    assert body == {
        "exists": True,
        "job_id": job_id,
        "status": "completed",
        "message": "Job exists with cached result",
        "result": {"output_data": {"answer": 42}, "console_output": "out"},
    }


async def test_check_completed_invalid_result_reports_expired_and_keeps_row(
    client: TestClient,
) -> None:
    job_id = await new_job(client)
    await complete_job(client, job_id, {"figpack_url": "https://figures.example/f/x.html"})
    status, body = await check_job(client)
    assert status == 200
    assert body == {
        "exists": True,
        "job_id": job_id,
        "status": "expired",
        "message": "Job exists but result has expired",
    }
    # A second check sees the stored expired row, still without re-queuing it.
    status, body = await check_job(client)
    assert body["status"] == "expired"
    assert (await detail(client, job_id))["status"] == "expired"


async def test_check_failed_job_reports_error(client: TestClient) -> None:
    job_id = await new_job(client)
    await fail_job(client, job_id, "out of memory")
    status, body = await check_job(client)
    assert status == 200
    assert body == {
        "exists": True,
        "job_id": job_id,
        "status": "failed",
        "message": "Job exists but previously failed",
        "error": "out of memory",
    }


async def test_check_active_jobs_report_their_status(client: TestClient) -> None:
    job_id = await new_job(client)
    status, body = await check_job(client)
    assert (status, body) == (
        200,
        {
            "exists": True,
            "job_id": job_id,
            "status": "pending",
            "message": "Job exists and is pending",
        },
    )
    runner = await register(client)
    await claim(client, runner, job_id)
    _, body = await check_job(client)
    assert body["message"] == "Job exists and is claimed"
    await runner_post(client, runner, job_id, "heartbeat", {"console_output": ""})
    _, body = await check_job(client)
    assert body["status"] == "in_progress"
    assert body["message"] == "Job exists and is in_progress"


# --- GET /api/jobs/{job_id} -----------------------------------------------------------


async def test_status_of_pending_job_has_the_base_fields_and_its_place(client: TestClient) -> None:
    job_id = await new_job(client)
    status, body = await status_of(client, job_id)
    assert status == 200
    # The original's fields, and one of ours that its clients do not read.
    assert set(body) == {"job_id", "status", "job_type", "created_at", "updated_at", "queue"}
    assert body["queue"]["position"] == 1
    assert body["queue"]["runners"] == 0
    assert body["queue"]["message"] == (
        "no connected runner handles job type hello_world; no runner is connected"
    )
    assert body["job_id"] == job_id
    assert body["status"] == "pending"
    assert body["job_type"] == "hello_world"
    assert isinstance(body["created_at"], int)
    assert body["updated_at"] >= body["created_at"]


async def test_status_has_progress_only_when_both_values_are_set(client: TestClient) -> None:
    job_id = await new_job(client)
    runner = await register(client)
    await claim(client, runner, job_id)
    await runner_post(
        client, runner, job_id, "heartbeat", {"progress_current": 3, "progress_total": None}
    )
    _, body = await status_of(client, job_id)
    assert body["status"] == "in_progress"
    assert "progress" not in body
    await runner_post(
        client, runner, job_id, "heartbeat", {"progress_current": 3, "progress_total": 10}
    )
    _, body = await status_of(client, job_id)
    assert body["progress"] == {"current": 3, "total": 10}
    assert "message" not in body
    assert "result" not in body


async def test_status_of_completed_job_has_result(client: TestClient) -> None:
    job_id = await new_job(client)
    await complete_job(client, job_id, {"figure": "x"}, console="log")
    _, body = await status_of(client, job_id)
    assert body["status"] == "completed"
    assert body["result"] == {"output_data": {"figure": "x"}, "console_output": "log"}
    assert "error" not in body
    assert "message" not in body


async def test_status_of_failed_job_has_error_only_with_a_message(client: TestClient) -> None:
    with_message = await new_job(client, {"n": 1})
    without = await new_job(client, {"n": 2})
    await fail_job(client, with_message, "bad input")
    await fail_job(client, without, "")
    _, body = await status_of(client, with_message)
    assert body["status"] == "failed"
    assert body["error"] == "bad input"
    assert "result" not in body
    _, body = await status_of(client, without)
    assert body["status"] == "failed"
    assert "error" not in body


async def test_status_of_expired_job_has_no_result(client: TestClient) -> None:
    job_id = await new_job(client)
    await complete_job(client, job_id, {"figpack_url": "https://figures.example/f/x.html"})
    await check_job(client)
    _, body = await status_of(client, job_id)
    assert body["status"] == "expired"
    assert "result" not in body


async def test_status_of_unknown_job_is_404(client: TestClient) -> None:
    status, body = await status_of(client, "8b4f7c1e-2c6a-4f0e-9d8a-3b1c2d4e5f60")
    assert (status, body) == (404, {"error": "Job not found"})


async def test_status_of_non_uuid_id_is_404(client: TestClient) -> None:
    for job_id in ("not-a-uuid", "8B4F7C1E-2C6A-4F0E-9D8A-3B1C2D4E5F60", "123"):
        status, body = await status_of(client, job_id)
        assert (status, body) == (404, {"error": "Job not found"}), job_id


async def test_get_check_and_submit_paths_fall_into_the_status_route(client: TestClient) -> None:
    for path in ("/api/jobs/check", "/api/jobs/submit"):
        resp = await client.get(path, headers=SUBMIT)
        assert resp.status == 404, path
        assert await resp.json() == {"error": "Job not found"}
        # It is the status route: its auth applies.
        resp = await client.get(path)
        assert resp.status == 401, path


async def test_a_body_seen_lately_is_not_parsed_and_hashed_again(client: TestClient) -> None:
    """Viewers repeat the same body: what it asks is remembered by its bytes only."""
    from runpack.api.job_requests import REQUEST_MEMO_MAX_BODY, REQUEST_MEMO_SIZE

    assert client.app is not None
    requests = client.app[JOB_REQUESTS]
    body = b'{"job_type": "hello_world", "input_params": {"name": "Memo", "n": 1}}'
    first = await client.post("/api/jobs/submit", data=body, headers=SUBMIT)
    assert first.status == 201
    remembered = requests.known(body)
    assert remembered is not None and remembered.input_params == {"name": "Memo", "n": 1}
    again = await client.post("/api/jobs/submit", data=body, headers=SUBMIT)
    assert again.status == 200
    assert (await again.json())["job_id"] == (await first.json())["job_id"]
    assert requests.known(body) is remembered
    # Same meaning, other bytes: a lookup of its own, the same job.
    spaced = b'{"input_params": {"n": 1, "name": "Memo"}, "job_type": "hello_world"}'
    assert requests.known(spaced) is None
    resp = await client.post("/api/jobs/submit", data=spaced, headers=SUBMIT)
    assert (await resp.json())["job_id"] == (await first.json())["job_id"]
    # Bad bodies are never remembered; big ones neither; the memo stays bounded.
    bad = b'{"job_type": "", "input_params": {}}'
    assert (await client.post("/api/jobs/submit", data=bad, headers=SUBMIT)).status == 400
    assert requests.known(bad) is None
    big = orjson.dumps(
        {"job_type": "hello_world", "input_params": {"x": "y" * REQUEST_MEMO_MAX_BODY}}
    )
    assert (await client.post("/api/jobs/check", data=big, headers=SUBMIT)).status == 200
    assert requests.known(big) is None
    for i in range(REQUEST_MEMO_SIZE + 5):
        requests.remember(b"%d" % i, remembered)
    assert len(requests) == REQUEST_MEMO_SIZE
    assert requests.known(body) is None  # the oldest went first
