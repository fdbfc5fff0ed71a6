"""Admin endpoints of wire-api.md §6.4: stats, job list and detail, deletes, runners."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import (
    ADMIN,
    RUNNER,
    SUBMIT,
    MakeClient,
    as_runner,
    claim,
    controlled_clock,
    register,
    submit,
)

UNKNOWN_ID = "0f0e0d0c-0b0a-4990-8877-665544332211"
WINDOW_MS = 300_000  # runner_active_window default, in ms
STATES = ("pending", "claimed", "in_progress", "completed", "failed", "expired")


async def get(client: TestClient, path: str, headers: dict[str, str] = ADMIN) -> tuple[int, Any]:
    resp = await client.get(path, headers=headers)
    return resp.status, await resp.json()


async def runner_post(
    client: TestClient, runner: str, job_id: str, action: str, body: dict[str, Any]
) -> None:
    resp = await client.post(
        f"/api/runner/jobs/{job_id}/{action}", json=body, headers=as_runner(runner)
    )
    assert resp.status == 200, await resp.text()


async def job_in_each_state(client: TestClient) -> dict[str, str]:
    """One job per status the original knows: status -> job_id."""
    ids = {s: (await submit(client, state=s))["job_id"] for s in STATES}
    runner = await register(client)
    for status in ("claimed", "in_progress", "completed", "failed", "expired"):
        await claim(client, runner, ids[status])
    await runner_post(client, runner, ids["in_progress"], "heartbeat", {"console_output": "x"})
    await runner_post(client, runner, ids["completed"], "complete", {"output_data": {"ok": 1}})
    await runner_post(client, runner, ids["failed"], "error", {"error_message": "boom"})
    # A figpack_url not ending in /index.html is invalid: check then stores `expired`.
    bad = {"figpack_url": "https://figures.example/f/x.html"}
    await runner_post(client, runner, ids["expired"], "complete", {"output_data": bad})
    resp = await client.post(
        "/api/jobs/check",
        json={"job_type": "hello_world", "input_params": {"state": "expired"}},
        headers=SUBMIT,
    )
    assert (await resp.json())["status"] == "expired"
    return ids


# --- stats ------------------------------------------------------------------------------


async def test_stats_of_an_empty_server(client: TestClient) -> None:
    status, body = await get(client, "/api/admin/stats")
    assert status == 200
    assert {k: body["jobs"][k] for k in (*STATES, "total")} == dict.fromkeys((*STATES, "total"), 0)
    assert body["runners"] == {"total": 0, "active": 0}


async def test_stats_count_every_status_and_the_total(client: TestClient) -> None:
    await job_in_each_state(client)
    await submit(client, state="second pending")
    _, body = await get(client, "/api/admin/stats")
    jobs = body["jobs"]
    assert {k: jobs[k] for k in STATES} == {
        "pending": 2,
        "claimed": 1,
        "in_progress": 1,
        "completed": 1,
        "failed": 1,
        "expired": 1,
    }
    assert jobs["total"] == 7


async def test_stats_count_active_runners_within_the_window(client: TestClient) -> None:
    clock = controlled_clock(client)
    await register(client, name="old")
    clock.now += WINDOW_MS - 1
    await register(client, name="recent")
    _, body = await get(client, "/api/admin/stats")
    assert body["runners"] == {"total": 2, "active": 2}
    clock.now += 1  # "old" was seen exactly one window ago: no longer active
    _, body = await get(client, "/api/admin/stats")
    assert body["runners"] == {"total": 2, "active": 1}
    clock.now += WINDOW_MS
    _, body = await get(client, "/api/admin/stats")
    assert body["runners"] == {"total": 2, "active": 0}


async def test_runner_active_window_is_a_setting(make_client: MakeClient) -> None:
    client = await make_client(runner_active_window=10.0)
    clock = controlled_clock(client)
    await register(client)
    clock.now += 9_999
    assert (await get(client, "/api/admin/stats"))[1]["runners"]["active"] == 1
    clock.now += 1
    assert (await get(client, "/api/admin/stats"))[1]["runners"]["active"] == 0


# --- job list ---------------------------------------------------------------------------


async def test_job_list_is_newest_first_with_summary_fields(client: TestClient) -> None:
    clock = controlled_clock(client)
    ids = []
    for n in range(3):
        clock.now += 1_000
        ids.append((await submit(client, n=n))["job_id"])
    runner = await register(client)
    await claim(client, runner, ids[1])
    status, body = await get(client, "/api/admin/jobs")
    assert status == 200
    assert set(body) == {"jobs", "total"}
    assert [j["job_id"] for j in body["jobs"]] == ids[::-1]
    assert body["total"] == 3
    middle = body["jobs"][1]
    assert set(middle) == {
        "job_id",
        "job_type",
        "status",
        "created_at",
        "updated_at",
        "claimed_by",
        "runner_name",
    }
    assert (middle["status"], middle["claimed_by"]) == ("claimed", runner)
    assert middle["runner_name"] == "r1"
    assert body["jobs"][0]["claimed_by"] is None
    assert "runner_name" not in body["jobs"][0]
    assert [j["created_at"] for j in body["jobs"]] == sorted(
        (j["created_at"] for j in body["jobs"]), reverse=True
    )


async def test_job_list_filters_by_status(client: TestClient) -> None:
    ids = await job_in_each_state(client)
    for state in STATES:
        _, body = await get(client, f"/api/admin/jobs?status={state}")
        assert [j["job_id"] for j in body["jobs"]] == [ids[state]], state
        assert body["total"] == 1


async def test_job_list_limit_defaults_to_100(client: TestClient) -> None:
    for n in range(101):
        await submit(client, n=n)
    _, body = await get(client, "/api/admin/jobs")
    assert (len(body["jobs"]), body["total"]) == (100, 100)
    _, body = await get(client, "/api/admin/jobs?limit=7")
    assert (len(body["jobs"]), body["total"]) == (7, 7)
    _, body = await get(client, "/api/admin/jobs?limit=500")
    assert (len(body["jobs"]), body["total"]) == (101, 101)


@pytest.mark.parametrize("query", ["status=bogus", "limit=abc", "limit=0", "limit=-5"])
async def test_job_list_rejects_bad_filters(client: TestClient, query: str) -> None:
    status, body = await get(client, f"/api/admin/jobs?{query}")
    assert status == 400
    assert isinstance(body["error"], str)


# --- job detail -------------------------------------------------------------------------


async def test_job_detail_needs_no_key_and_has_every_field(client: TestClient) -> None:
    job_id = (await submit(client, name="Ada"))["job_id"]
    resp = await client.get(f"/api/admin/jobs/{job_id}")
    assert resp.status == 200
    body = await resp.json()
    assert {
        "job_id",
        "job_type",
        "status",
        "input_params",
        "created_at",
        "updated_at",
        "claimed_by",
        "claimed_at",
        "console_output",
        "last_heartbeat",
    } <= set(body)
    assert body["job_id"] == job_id
    assert body["input_params"] == {"name": "Ada"}
    assert body["console_output"] == ""
    assert (body["claimed_by"], body["claimed_at"], body["last_heartbeat"]) == (None, None, None)
    for optional in ("progress", "output_data", "error_message"):
        assert optional not in body


async def test_job_detail_shows_progress_output_and_error_when_set(client: TestClient) -> None:
    ids = await job_in_each_state(client)
    runner = await register(client, name="r2")
    job_id = (await submit(client, name="progress"))["job_id"]
    await claim(client, runner, job_id)
    await runner_post(
        client,
        runner,
        job_id,
        "heartbeat",
        {"progress_current": 5, "progress_total": 9, "console_output": "half"},
    )
    body = (await get(client, f"/api/admin/jobs/{job_id}", {}))[1]
    assert body["progress"] == {"current": 5, "total": 9}
    assert body["console_output"] == "half"
    assert (body["claimed_by"], body["status"]) == (runner, "in_progress")

    body = (await get(client, f"/api/admin/jobs/{ids['completed']}", {}))[1]
    assert body["output_data"] == {"ok": 1}
    assert "error_message" not in body

    body = (await get(client, f"/api/admin/jobs/{ids['failed']}", {}))[1]
    assert body["error_message"] == "boom"
    assert "output_data" not in body


async def test_job_detail_of_unknown_job_is_404(client: TestClient) -> None:
    for job_id in (UNKNOWN_ID, "nope"):
        assert await get(client, f"/api/admin/jobs/{job_id}", {}) == (
            404,
            {"error": "Job not found"},
        )


# --- delete -----------------------------------------------------------------------------


async def test_delete_job_with_admin_key(client: TestClient) -> None:
    job_id = (await submit(client))["job_id"]
    resp = await client.delete(f"/api/admin/jobs/{job_id}", headers=ADMIN)
    assert resp.status == 200
    assert await resp.json() == {"success": True, "message": "Job deleted successfully"}
    assert (await get(client, f"/api/admin/jobs/{job_id}", {}))[0] == 404
    resp = await client.delete(f"/api/admin/jobs/{job_id}", headers=ADMIN)
    assert resp.status == 404
    assert await resp.json() == {"error": "Job not found"}


async def test_delete_job_with_runner_key_is_403_and_keeps_row(client: TestClient) -> None:
    job_id = (await submit(client))["job_id"]
    resp = await client.delete(f"/api/admin/jobs/{job_id}", headers=RUNNER)
    assert resp.status == 403
    assert isinstance((await resp.json())["error"], str)
    resp = await client.delete(f"/api/admin/jobs/{job_id}", headers=SUBMIT)
    assert resp.status == 401
    assert (await get(client, f"/api/admin/jobs/{job_id}", {}))[0] == 200


async def test_batch_delete_rejects_bad_bodies(client: TestClient) -> None:
    expected = "Invalid request body. Expected { job_ids: string[] }"
    for body in ({}, {"job_ids": "abc"}, {"job_ids": [1, 2]}, {"job_ids": None}):
        resp = await client.post("/api/admin/jobs/batch-delete", json=body, headers=ADMIN)
        assert resp.status == 400, body
        assert (await resp.json())["error"] == expected
    resp = await client.post("/api/admin/jobs/batch-delete", json={"job_ids": []}, headers=ADMIN)
    assert resp.status == 400
    assert (await resp.json())["error"] == "No job IDs provided"


async def test_batch_delete_reports_deleted_and_failed(client: TestClient) -> None:
    a = (await submit(client, n=1))["job_id"]
    b = (await submit(client, n=2))["job_id"]
    keep = (await submit(client, n=3))["job_id"]
    ids = [a, UNKNOWN_ID, b, "not-a-uuid"]
    resp = await client.post("/api/admin/jobs/batch-delete", json={"job_ids": ids}, headers=ADMIN)
    assert resp.status == 200
    assert await resp.json() == {
        "success": True,
        "deleted": 2,
        "failed": [UNKNOWN_ID, "not-a-uuid"],
        "message": "Deleted 2 of 4 jobs",
    }
    _, body = await get(client, "/api/admin/jobs")
    assert [j["job_id"] for j in body["jobs"]] == [keep]


async def test_batch_delete_of_nothing_found_is_not_a_success(client: TestClient) -> None:
    body = {"job_ids": [UNKNOWN_ID]}
    resp = await client.post("/api/admin/jobs/batch-delete", json=body, headers=ADMIN)
    assert resp.status == 200
    assert await resp.json() == {
        "success": False,
        "deleted": 0,
        "failed": [UNKNOWN_ID],
        "message": "Deleted 0 of 1 jobs",
    }


async def test_batch_delete_needs_the_admin_key(client: TestClient) -> None:
    job_id = (await submit(client))["job_id"]
    body = {"job_ids": [job_id]}
    resp = await client.post("/api/admin/jobs/batch-delete", json=body, headers=RUNNER)
    assert resp.status == 403
    assert (await get(client, f"/api/admin/jobs/{job_id}", {}))[0] == 200


# --- runners ----------------------------------------------------------------------------


async def test_runner_list_is_ordered_by_last_seen(client: TestClient) -> None:
    clock = controlled_clock(client)
    first = await register(client, name="first", caps=["a", "b"])
    clock.now += 1_000
    second = await register(client, name="second", caps=[])
    clock.now += WINDOW_MS
    third = await register(client, name="third")
    status, body = await get(client, "/api/admin/runners")
    assert status == 200
    assert body["total"] == 3
    assert [r["runner_id"] for r in body["runners"]] == [third, second, first]
    # A contact moves a runner to the top.
    clock.now += 1_000
    resp = await client.get("/api/runner/jobs/available", headers=as_runner(first))
    assert resp.status == 200
    _, body = await get(client, "/api/admin/runners")
    runners = body["runners"]
    assert [r["runner_id"] for r in runners] == [first, third, second]
    assert set(runners[0]) >= {"runner_id", "name", "capabilities", "last_seen", "is_active"}
    assert (runners[0]["name"], runners[0]["capabilities"]) == ("first", ["a", "b"])
    assert runners[0]["last_seen"] == clock.now
    assert runners[2]["capabilities"] == []
    assert [r["is_active"] for r in runners] == [True, True, False]


async def test_runner_detail_lists_its_jobs(client: TestClient) -> None:
    clock = controlled_clock(client)
    runner = await register(client, name="worker", caps=["hello_world"])
    other = await register(client, name="other")
    ids = []
    for n in range(3):
        clock.now += 1_000
        ids.append((await submit(client, n=n))["job_id"])
    await claim(client, runner, ids[0])
    await claim(client, runner, ids[2])
    await claim(client, other, ids[1])
    status, body = await get(client, f"/api/admin/runners/{runner}")
    assert status == 200
    assert body["runner_id"] == runner
    assert (body["name"], body["capabilities"]) == ("worker", ["hello_world"])
    assert body["registered_at"] == 1_700_000_000_000
    assert body["last_seen"] == clock.now
    assert body["is_active"] is True
    assert [j["job_id"] for j in body["jobs"]] == [ids[2], ids[0]]
    assert set(body["jobs"][0]) >= {"job_id", "job_type", "status", "created_at", "updated_at"}
    assert body["jobs"][0]["status"] == "claimed"


async def test_runner_detail_of_unknown_runner_is_404(client: TestClient) -> None:
    for runner_id in (UNKNOWN_ID, "nope"):
        assert await get(client, f"/api/admin/runners/{runner_id}") == (
            404,
            {"error": "Runner not found"},
        )


# --- who may read ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/admin/stats", "/api/admin/jobs", "/api/admin/runners"])
async def test_admin_reads_take_admin_or_runner_key_but_not_submit(
    client: TestClient, path: str
) -> None:
    assert (await get(client, path, ADMIN))[0] == 200
    assert (await get(client, path, RUNNER))[0] == 200
    assert await get(client, path, SUBMIT) == (401, {"error": "Invalid API key"})
    assert await get(client, path, {}) == (401, {"error": "Missing Authorization header"})


async def test_runner_detail_takes_the_runner_key(client: TestClient) -> None:
    runner = await register(client)
    assert (await get(client, f"/api/admin/runners/{runner}", RUNNER))[0] == 200
    assert (await get(client, f"/api/admin/runners/{runner}", SUBMIT))[0] == 401
