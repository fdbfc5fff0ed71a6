"""Runner endpoints of wire-api.md §6.3: register, verify, available, claim, heartbeat,
complete and error, as the original's Python runner calls them."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient
from yarl import URL

from tests.conftest import (
    RUNNER,
    SUBMIT,
    as_runner,
    claim,
    controlled_clock,
    register,
    submit,
)

NOT_OWNED = {"success": False, "message": "Job not found or not claimed by this runner"}
CLAIM_LOST = {"success": False, "message": "Job already claimed or not found"}
UNKNOWN_JOB = "0f0e0d0c-0b0a-4990-8877-665544332211"


async def runner_call(
    client: TestClient, runner: str, job_id: str, action: str, body: dict[str, Any]
) -> tuple[int, Any]:
    resp = await client.post(
        f"/api/runner/jobs/{job_id}/{action}", json=body, headers=as_runner(runner)
    )
    return resp.status, await resp.json()


async def detail(client: TestClient, job_id: str) -> Any:
    resp = await client.get(f"/api/admin/jobs/{job_id}")
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def available(client: TestClient, runner: str, *types: str) -> list[Any]:
    resp = await client.get(
        "/api/runner/jobs/available",
        params=[("types[]", t) for t in types],
        headers=as_runner(runner),
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert set(body) == {"jobs"}
    return list(body["jobs"])


async def running_job(client: TestClient, **params: Any) -> tuple[str, str]:
    """(runner_id, job_id) of a job claimed by a fresh runner."""
    job_id = (await submit(client, **params))["job_id"]
    runner = await register(client)
    await claim(client, runner, job_id)
    return runner, job_id


# --- register -------------------------------------------------------------------------


async def test_register_returns_201_and_a_new_id_every_time(client: TestClient) -> None:
    ids = set()
    for _ in range(3):
        resp = await client.post(
            "/api/runner/register",
            json={"name": "same", "capabilities": ["hello_world"]},
            headers=RUNNER,
        )
        assert resp.status == 201
        body = await resp.json()
        assert body == {"runner_id": body["runner_id"], "message": "Runner registered successfully"}
        assert len(body["runner_id"]) == 36
        ids.add(body["runner_id"])
    assert len(ids) == 3


async def test_register_rejects_invalid_data(client: TestClient) -> None:
    for body in (
        {"capabilities": ["a"]},
        {"name": "r1"},
        {"name": "r1", "capabilities": "a"},
        {"name": "r1", "capabilities": {"a": 1}},
    ):
        resp = await client.post("/api/runner/register", json=body, headers=RUNNER)
        assert resp.status == 400, body
        assert (await resp.json())["error"] == "Invalid registration data"


async def test_register_needs_the_runner_key(client: TestClient) -> None:
    body = {"name": "r1", "capabilities": []}
    resp = await client.post("/api/runner/register", json=body, headers=SUBMIT)
    assert resp.status == 401
    assert await resp.json() == {"error": "Invalid API key"}


# --- verify ---------------------------------------------------------------------------


async def test_verify_known_runner(client: TestClient) -> None:
    runner = await register(client, name="gpu-box")
    resp = await client.get("/api/runner/verify", headers=as_runner(runner))
    assert resp.status == 200
    assert await resp.json() == {
        "exists": True,
        "runner_name": "gpu-box",
        "message": "Runner verified successfully",
    }


async def test_verify_unknown_runner_is_404(client: TestClient) -> None:
    resp = await client.get("/api/runner/verify", headers=as_runner(UNKNOWN_JOB))
    assert resp.status == 404
    assert await resp.json() == {"exists": False, "message": "Runner not found"}


async def test_verify_checks_auth_before_the_runner_header(client: TestClient) -> None:
    resp = await client.get("/api/runner/verify")
    assert resp.status == 401
    assert await resp.json() == {"error": "Missing Authorization header"}
    resp = await client.get("/api/runner/verify", headers=RUNNER)
    assert resp.status == 400
    assert await resp.json() == {"error": "Missing X-Runner-ID header"}


async def test_job_routes_check_the_runner_header_before_auth(client: TestClient) -> None:
    for method, path in (
        ("GET", "/api/runner/jobs/available"),
        ("POST", f"/api/runner/jobs/{UNKNOWN_JOB}/claim"),
        ("POST", f"/api/runner/jobs/{UNKNOWN_JOB}/heartbeat"),
    ):
        resp = await client.request(method, path)
        assert resp.status == 400, path
        assert await resp.json() == {"error": "Missing X-Runner-ID header"}


# --- available --------------------------------------------------------------------------


async def test_available_lists_pending_jobs_with_their_fields(client: TestClient) -> None:
    job = await submit(client, name="Ada", size=3)
    runner = await register(client)
    jobs = await available(client, runner, "hello_world")
    assert len(jobs) == 1
    assert set(jobs[0]) >= {"job_id", "job_type", "input_params", "created_at"}
    assert jobs[0]["job_id"] == job["job_id"]
    assert jobs[0]["job_type"] == "hello_world"
    assert jobs[0]["input_params"] == {"name": "Ada", "size": 3}
    assert isinstance(jobs[0]["created_at"], int)


async def test_available_without_types_is_empty(client: TestClient) -> None:
    await submit(client)
    runner = await register(client)
    resp = await client.get("/api/runner/jobs/available", headers=as_runner(runner))
    assert resp.status == 200
    assert await resp.json() == {"jobs": []}


async def test_available_reads_repeated_types_raw_and_percent_encoded(
    client: TestClient,
) -> None:
    a = (await submit(client, "type_a"))["job_id"]
    b = (await submit(client, "type_b"))["job_id"]
    await submit(client, "type_c")
    runner = await register(client)
    base = str(client.make_url("/api/runner/jobs/available"))
    for query in ("types%5B%5D=type_a&types%5B%5D=type_b", "types[]=type_a&types[]=type_b"):
        url = URL(f"{base}?{query}", encoded=True)
        resp = await client.session.get(url, headers=as_runner(runner))
        assert resp.status == 200, query
        ids = {j["job_id"] for j in (await resp.json())["jobs"]}
        assert ids == {a, b}, query


async def test_available_excludes_other_types(client: TestClient) -> None:
    await submit(client, "other_type")
    mine = (await submit(client, "hello_world"))["job_id"]
    runner = await register(client)
    assert [j["job_id"] for j in await available(client, runner, "hello_world")] == [mine]
    assert await available(client, runner, "no_such_type") == []


async def test_available_lists_only_pending_jobs(client: TestClient) -> None:
    runner, claimed = await running_job(client, n=1)
    pending = (await submit(client, n=2))["job_id"]
    assert [j["job_id"] for j in await available(client, runner, "hello_world")] == [pending]
    status, _ = await runner_call(client, runner, claimed, "complete", {"output_data": {}})
    assert status == 200
    assert [j["job_id"] for j in await available(client, runner, "hello_world")] == [pending]


async def test_available_is_oldest_first_and_at_most_50(client: TestClient) -> None:
    clock = controlled_clock(client)
    ids = []
    for n in range(55):
        clock.now += 10
        ids.append((await submit(client, n=n))["job_id"])
    runner = await register(client)
    jobs = await available(client, runner, "hello_world")
    assert [j["job_id"] for j in jobs] == ids[:50]
    created = [j["created_at"] for j in jobs]
    assert created == sorted(created)


async def test_available_puts_higher_priority_first(client: TestClient) -> None:
    clock = controlled_clock(client)
    ids: dict[int, str] = {}
    for priority in (0, 5, -3, 10):
        clock.now += 10
        resp = await client.post(
            "/api/jobs/submit",
            json={"job_type": "hello_world", "input_params": {"p": priority}, "priority": priority},
            headers=SUBMIT,
        )
        assert resp.status == 201
        ids[priority] = (await resp.json())["job_id"]
    runner = await register(client)
    jobs = await available(client, runner, "hello_world")
    assert [j["job_id"] for j in jobs] == [ids[10], ids[5], ids[0], ids[-3]]


async def test_available_updates_last_seen(client: TestClient) -> None:
    clock = controlled_clock(client)
    runner = await register(client)
    clock.now += 60_000
    await available(client, runner, "hello_world")
    resp = await client.get(f"/api/admin/runners/{runner}", headers=RUNNER)
    body = await resp.json()
    assert body["last_seen"] == clock.now
    assert body["registered_at"] == clock.now - 60_000


# --- claim ------------------------------------------------------------------------------


async def test_claim_needs_no_body_and_returns_the_job(client: TestClient) -> None:
    job_id = (await submit(client, name="Ada"))["job_id"]
    runner = await register(client)
    headers = {**as_runner(runner), "Content-Type": "application/json"}
    resp = await client.post(f"/api/runner/jobs/{job_id}/claim", headers=headers)
    assert resp.status == 200
    body = await resp.json()
    assert body["success"] is True
    assert body["message"] == "Job claimed successfully"
    assert body["job"]["job_id"] == job_id
    assert body["job"]["job_type"] == "hello_world"
    assert body["job"]["input_params"] == {"name": "Ada"}
    job = await detail(client, job_id)
    assert (job["status"], job["claimed_by"]) == ("claimed", runner)
    assert job["claimed_at"] is not None
    assert job["last_heartbeat"] == job["claimed_at"]


async def test_second_claim_is_409(client: TestClient) -> None:
    first, job_id = await running_job(client)
    second = await register(client, name="r2")
    status, body = await runner_call(client, second, job_id, "claim", {})
    assert (status, body) == (409, CLAIM_LOST)
    assert (await detail(client, job_id))["claimed_by"] == first


async def test_a_claim_repeated_by_its_holder_gets_the_job_again(client: TestClient) -> None:
    """A retry after the answer was lost on the way: the holder gets the job (not a
    409, which would strand it until the heartbeat timeout); nothing changes."""
    holder, job_id = await running_job(client)
    before = await detail(client, job_id)
    status, body = await runner_call(client, holder, job_id, "claim", {})
    assert status == 200 and body["success"] is True
    assert body["job"]["job_id"] == job_id
    assert await detail(client, job_id) == before  # attempts, claimed_at: unchanged
    # Once it has started (a heartbeat), a claim is a mistake again: 409.
    status, _ = await runner_call(client, holder, job_id, "heartbeat", {})
    assert status == 200
    status, body = await runner_call(client, holder, job_id, "claim", {})
    assert (status, body) == (409, CLAIM_LOST)


async def test_claim_of_unknown_job_is_409(client: TestClient) -> None:
    runner = await register(client)
    for job_id in (UNKNOWN_JOB, "not-a-uuid"):
        status, body = await runner_call(client, runner, job_id, "claim", {})
        assert (status, body) == (409, CLAIM_LOST)


# --- heartbeat --------------------------------------------------------------------------


async def test_heartbeat_sets_progress_and_replaces_console(client: TestClient) -> None:
    runner, job_id = await running_job(client)
    status, body = await runner_call(
        client,
        runner,
        job_id,
        "heartbeat",
        {"progress_current": 1, "progress_total": 4, "console_output": "step 1\n"},
    )
    assert (status, body) == (200, {"success": True, "message": "Heartbeat updated successfully"})
    job = await detail(client, job_id)
    assert job["status"] == "in_progress"
    assert job["progress"] == {"current": 1, "total": 4}
    assert job["console_output"] == "step 1\n"
    await runner_call(
        client,
        runner,
        job_id,
        "heartbeat",
        {"progress_current": 2, "progress_total": 4, "console_output": "step 2\n"},
    )
    job = await detail(client, job_id)
    assert job["progress"] == {"current": 2, "total": 4}
    assert job["console_output"] == "step 2\n"


async def test_heartbeat_accepts_null_progress(client: TestClient) -> None:
    runner, job_id = await running_job(client)
    status, _ = await runner_call(
        client,
        runner,
        job_id,
        "heartbeat",
        {"progress_current": None, "progress_total": None, "console_output": "uploading"},
    )
    assert status == 200
    job = await detail(client, job_id)
    assert job["status"] == "in_progress"
    assert "progress" not in job
    assert job["console_output"] == "uploading"


async def test_heartbeat_by_another_runner_is_not_owned(client: TestClient) -> None:
    _, job_id = await running_job(client)
    stranger = await register(client, name="r2")
    status, body = await runner_call(
        client, stranger, job_id, "heartbeat", {"console_output": "mine now"}
    )
    assert (status, body) == (400, NOT_OWNED)
    job = await detail(client, job_id)
    assert (job["status"], job["console_output"]) == ("claimed", "")


async def test_heartbeat_of_unknown_or_pending_job_is_not_owned(client: TestClient) -> None:
    pending = (await submit(client))["job_id"]
    runner = await register(client)
    for job_id in (pending, UNKNOWN_JOB):
        status, body = await runner_call(client, runner, job_id, "heartbeat", {})
        assert (status, body) == (400, NOT_OWNED)
    assert (await detail(client, pending))["status"] == "pending"


# --- complete -------------------------------------------------------------------------


async def test_complete_stores_output_and_console(client: TestClient) -> None:
    runner, job_id = await running_job(client)
    output = {"message": "Hello, Ada!", "figure": {"figpack_url": None, "n": [1.5, 2]}}
    status, body = await runner_call(
        client, runner, job_id, "complete", {"output_data": output, "console_output": "all done"}
    )
    assert (status, body) == (200, {"success": True, "message": "Job completed successfully"})
    job = await detail(client, job_id)
    assert job["status"] == "completed"
    assert job["output_data"] == output
    assert job["console_output"] == "all done"


async def test_complete_with_empty_console_keeps_the_streamed_one(client: TestClient) -> None:
    runner, job_id = await running_job(client)
    await runner_call(client, runner, job_id, "heartbeat", {"console_output": "streamed\n"})
    status, _ = await runner_call(
        client, runner, job_id, "complete", {"output_data": {"ok": 1}, "console_output": ""}
    )
    assert status == 200
    assert (await detail(client, job_id))["console_output"] == "streamed\n"


async def test_complete_by_another_runner_changes_nothing(client: TestClient) -> None:
    owner, job_id = await running_job(client)
    stranger = await register(client, name="r2")
    status, body = await runner_call(
        client, stranger, job_id, "complete", {"output_data": {"stolen": True}}
    )
    assert (status, body) == (400, NOT_OWNED)
    job = await detail(client, job_id)
    assert (job["status"], job["claimed_by"]) == ("claimed", owner)
    assert "output_data" not in job


async def test_complete_after_error_is_refused_and_job_stays_failed(client: TestClient) -> None:
    runner, job_id = await running_job(client)
    await runner_call(client, runner, job_id, "error", {"error_message": "crashed"})
    status, body = await runner_call(
        client, runner, job_id, "complete", {"output_data": {"late": True}}
    )
    assert (status, body) == (400, NOT_OWNED)
    job = await detail(client, job_id)
    assert job["status"] == "failed"
    assert job["error_message"] == "crashed"
    assert "output_data" not in job


async def test_duplicate_complete_is_refused_and_result_unchanged(client: TestClient) -> None:
    runner, job_id = await running_job(client)
    first = {"output_data": {"v": 1}, "console_output": "first"}
    second = {"output_data": {"v": 2}, "console_output": "second"}
    assert (await runner_call(client, runner, job_id, "complete", first))[0] == 200
    status, body = await runner_call(client, runner, job_id, "complete", second)
    assert (status, body) == (400, NOT_OWNED)
    job = await detail(client, job_id)
    assert (job["output_data"], job["console_output"]) == ({"v": 1}, "first")


# --- error ------------------------------------------------------------------------------


async def test_error_marks_the_job_failed(client: TestClient) -> None:
    runner, job_id = await running_job(client)
    await runner_call(client, runner, job_id, "heartbeat", {"console_output": "trace\n"})
    status, body = await runner_call(
        client,
        runner,
        job_id,
        "error",
        {"error_message": "ValueError: bad nwb", "console_output": "trace\nValueError\n"},
    )
    assert (status, body) == (
        200,
        {"success": True, "message": "Job marked as failed successfully"},
    )
    job = await detail(client, job_id)
    assert job["status"] == "failed"
    assert job["error_message"] == "ValueError: bad nwb"
    assert job["console_output"] == "trace\nValueError\n"


async def test_error_by_another_runner_is_not_owned(client: TestClient) -> None:
    _, job_id = await running_job(client)
    stranger = await register(client, name="r2")
    status, body = await runner_call(client, stranger, job_id, "error", {"error_message": "x"})
    assert (status, body) == (400, NOT_OWNED)
    assert (await detail(client, job_id))["status"] == "claimed"


async def test_release_puts_a_claimed_job_back_at_once(client: TestClient) -> None:
    job = await submit(client, name="released")
    runner = await register(client)
    await claim(client, runner, job["job_id"])
    other = await register(client, name="other")
    resp = await client.post(f"/api/runner/jobs/{job['job_id']}/release", headers=as_runner(other))
    assert resp.status == 400  # not its job
    resp = await client.post(
        f"/api/runner/jobs/{job['job_id']}/release",
        json={"reason": "shutting down"},
        headers=as_runner(runner),
    )
    assert resp.status == 200
    assert await resp.json() == {"success": True, "message": "Job released"}
    detail = await (await client.get(f"/api/admin/jobs/{job['job_id']}")).json()
    assert detail["status"] == "pending"
    assert detail["claimed_by"] is None
    # Queued again at once: another runner can claim it now.
    await claim(client, other, job["job_id"])
