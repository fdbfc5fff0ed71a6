"""Racing submits (difference 1) and the sweeper that takes back silent jobs (difference 2).

The sweeper tests drive the app's own JobService with a clock and a jitter source the
test controls, then call ``sweep()`` by hand; one test lets the background sweeper
do it in real time and waits for the outcome.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from runpack.service import JobService
from tests.conftest import (
    ADMIN,
    SUBMIT,
    Clock,
    MakeClient,
    as_runner,
    claim,
    register,
    service_of,
    submit,
)

NOT_OWNED = {"success": False, "message": "Job not found or not claimed by this runner"}
TIMEOUT_MS = 90_000  # heartbeat_timeout default, in ms


def controlled(client: TestClient, jitter: float = 1.0) -> tuple[JobService, Clock]:
    service = service_of(client)
    clock = Clock()
    service.clock = clock
    service.rng = lambda: jitter
    return service, clock


async def detail(client: TestClient, job_id: str) -> Any:
    resp = await client.get(f"/api/admin/jobs/{job_id}")
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def job_counts(client: TestClient) -> dict[str, int]:
    resp = await client.get("/api/admin/stats", headers=ADMIN)
    return dict((await resp.json())["jobs"])


async def available_ids(client: TestClient, runner: str) -> list[str]:
    resp = await client.get(
        "/api/runner/jobs/available", params={"types[]": "hello_world"}, headers=as_runner(runner)
    )
    assert resp.status == 200
    return [j["job_id"] for j in (await resp.json())["jobs"]]


async def runner_call(
    client: TestClient, runner: str, job_id: str, action: str, body: dict[str, Any]
) -> tuple[int, Any]:
    resp = await client.post(
        f"/api/runner/jobs/{job_id}/{action}", json=body, headers=as_runner(runner)
    )
    return resp.status, await resp.json()


# --- (a) racing submits -------------------------------------------------------------------


@pytest.mark.parametrize("racers", [2, 20])
async def test_identical_submits_racing_make_one_job(client: TestClient, racers: int) -> None:
    body = {"job_type": "hello_world", "input_params": {"name": "race", "n": racers}}

    async def one() -> tuple[int, Any]:
        resp = await client.post("/api/jobs/submit", json=body, headers=SUBMIT)
        return resp.status, await resp.json()

    replies = await asyncio.gather(*(one() for _ in range(racers)))
    statuses = sorted(status for status, _ in replies)
    assert statuses == [200] * (racers - 1) + [201]
    assert len({reply["job_id"] for _, reply in replies}) == 1
    for status, reply in replies:
        if status == 200:
            assert reply["message"] == "Job is pending"
    counts = await job_counts(client)
    assert (counts["total"], counts["pending"]) == (1, 1)


async def test_racing_submits_of_different_params_make_one_job_each(client: TestClient) -> None:
    async def one(n: int) -> int:
        body = {"job_type": "hello_world", "input_params": {"n": n}}
        resp = await client.post("/api/jobs/submit", json=body, headers=SUBMIT)
        return resp.status

    assert await asyncio.gather(*(one(n) for n in range(10))) == [201] * 10
    assert (await job_counts(client))["total"] == 10


# --- (b) the sweeper, step by step --------------------------------------------------------


async def test_silent_job_is_requeued_with_backoff(client: TestClient) -> None:
    service, clock = controlled(client, jitter=1.0)
    job_id = (await submit(client))["job_id"]
    runner = await register(client)
    await claim(client, runner, job_id)

    clock.now += TIMEOUT_MS  # exactly the timeout: not yet stale
    assert await service.sweep() == (0, 0)
    assert (await detail(client, job_id))["status"] == "claimed"

    clock.now += 1
    assert await service.sweep() == (1, 0)
    swept_at = clock.now
    job = await detail(client, job_id)
    assert job["status"] == "pending"
    assert (job["claimed_by"], job["claimed_at"], job["last_heartbeat"]) == (None, None, None)
    assert job["attempts"] == 1
    assert "Attempt 1 of 3" in job["error_message"]
    assert "no heartbeat" in job["error_message"]

    # Backoff: base 2 s * 2**0, times jitter 1.0 = 2 s.
    clock.now = swept_at + 1_999
    assert await available_ids(client, runner) == []
    status, _ = await runner_call(client, runner, job_id, "claim", {})
    assert status == 409
    clock.now = swept_at + 2_000
    assert await available_ids(client, runner) == [job_id]


async def test_job_is_failed_after_max_attempts_lost_runs(client: TestClient) -> None:
    service, clock = controlled(client, jitter=1.0)
    job_id = (await submit(client))["job_id"]
    runner = await register(client)
    for attempt in (1, 2, 3):
        await claim(client, runner, job_id)
        assert (await detail(client, job_id))["attempts"] == attempt
        clock.now += TIMEOUT_MS + 1
        expected = (1, 0) if attempt < 3 else (0, 1)
        assert await service.sweep() == expected, attempt
        clock.now += 10**6  # well past any backoff
    job = await detail(client, job_id)
    assert job["status"] == "failed"
    assert job["attempts"] == 3
    message = job["error_message"]
    assert "failed after 3 attempts" in message
    assert "no heartbeat" in message
    assert runner in message
    # The failure is what clients see, and no sweep touches it again.
    resp = await client.get(f"/api/jobs/{job_id}", headers=SUBMIT)
    assert (await resp.json())["error"] == message
    clock.now += 10 * TIMEOUT_MS
    assert await service.sweep() == (0, 0)


async def test_backoff_doubles_per_attempt_with_full_jitter(client: TestClient) -> None:
    service, clock = controlled(client, jitter=0.5)
    job_id = (await submit(client))["job_id"]
    runner = await register(client)
    waits = []
    for _ in range(2):
        await claim(client, runner, job_id)
        clock.now += TIMEOUT_MS + 1
        swept_at = clock.now
        assert await service.sweep() == (1, 0)
        # Step the clock 1 ms at a time near the expected delay to find when it reappears.
        waits.append(await _first_listed_after(client, runner, clock, swept_at))
    assert waits == [1_000, 2_000]  # 0.5 * 2 s, then 0.5 * 4 s


async def _first_listed_after(client: TestClient, runner: str, clock: Clock, since: int) -> int:
    for wait in (999, 1_000, 1_999, 2_000):
        clock.now = since + wait
        if await available_ids(client, runner):
            return wait
    raise AssertionError("job never became available")


async def test_retry_delay_is_capped(make_client: MakeClient) -> None:
    client = await make_client(retry_base_delay=2.0, retry_max_delay=5.0)
    service, _ = controlled(client, jitter=1.0)
    assert [service.retry_delay_ms(a) for a in (1, 2, 3, 4, 10)] == [
        2_000,
        4_000,
        5_000,
        5_000,
        5_000,
    ]
    service.rng = lambda: 0.5
    assert [service.retry_delay_ms(a) for a in (1, 2, 3)] == [1_000, 2_000, 2_500]
    service.rng = lambda: 0.0
    assert service.retry_delay_ms(3) == 0


async def test_job_whose_runner_heartbeats_is_not_touched(client: TestClient) -> None:
    service, clock = controlled(client)
    job_id = (await submit(client))["job_id"]
    runner = await register(client)
    await claim(client, runner, job_id)
    for _ in range(4):
        clock.now += TIMEOUT_MS // 2
        status, _ = await runner_call(
            client, runner, job_id, "heartbeat", {"progress_current": 1, "progress_total": 2}
        )
        assert status == 200
        assert await service.sweep() == (0, 0)
    clock.now += TIMEOUT_MS  # exactly the timeout since the last heartbeat
    assert await service.sweep() == (0, 0)
    job = await detail(client, job_id)
    assert (job["status"], job["claimed_by"], job["attempts"]) == ("in_progress", runner, 1)


async def test_late_complete_after_requeue_is_refused(client: TestClient) -> None:
    service, clock = controlled(client, jitter=0.0)
    job_id = (await submit(client))["job_id"]
    slow = await register(client, name="slow")
    await claim(client, slow, job_id)
    clock.now += TIMEOUT_MS + 1
    assert await service.sweep() == (1, 0)

    late = {"output_data": {"from": "slow"}, "console_output": "late"}
    assert await runner_call(client, slow, job_id, "complete", late) == (400, NOT_OWNED)
    assert await runner_call(client, slow, job_id, "heartbeat", {}) == (400, NOT_OWNED)
    counts = await job_counts(client)
    assert (counts["pending"], counts["completed"], counts["total"]) == (1, 0, 1)

    fresh = await register(client, name="fresh")
    await claim(client, fresh, job_id)
    assert await runner_call(client, slow, job_id, "complete", late) == (400, NOT_OWNED)
    done = {"output_data": {"from": "fresh"}, "console_output": "ok"}
    assert (await runner_call(client, fresh, job_id, "complete", done))[0] == 200
    counts = await job_counts(client)
    assert (counts["completed"], counts["pending"], counts["total"]) == (1, 0, 1)
    job = await detail(client, job_id)
    assert (job["output_data"], job["claimed_by"], job["attempts"]) == ({"from": "fresh"}, fresh, 2)


# --- (c) the background sweeper, in real time ---------------------------------------------


async def test_background_sweeper_requeues_a_silent_job(make_client: MakeClient) -> None:
    client = await make_client(heartbeat_timeout=0.3, sweep_interval=0.05)
    job_id = (await submit(client))["job_id"]
    runner = await register(client)
    await claim(client, runner, job_id)
    job = await detail(client, job_id)
    assert job["status"] == "claimed"

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    while job["status"] == "claimed" and loop.time() < deadline:
        await asyncio.sleep(0.02)
        job = await detail(client, job_id)
    assert job["status"] == "pending"
    assert job["claimed_by"] is None
    assert "no heartbeat" in job["error_message"]
    assert await runner_call(client, runner, job_id, "heartbeat", {}) == (400, NOT_OWNED)
