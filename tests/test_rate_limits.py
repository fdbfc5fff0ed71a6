"""Rate limits that follow cost: new work per address and per key, a request budget
per address for everything cheap, the original's per-runner limits; on both engines
(PostgreSQL counts in the shared table)."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from runpack.app import create_app
from runpack.client import AsyncClient, Client, RateLimitedError, RunpackClientError
from runpack.errors import RateLimited
from runpack.ratelimit import Limit, LocalBuckets
from runpack.ratelimit_shared import SharedBuckets
from runpack.settings import Settings
from runpack.store import Store
from tests.conftest import (
    ADMIN,
    SUBMIT,
    SUBMIT_KEY,
    MakeClient,
    as_runner,
    bearer,
    claim,
    register,
)
from tests.test_store import store_fixture  # noqa: F401

CORS_ORIGIN = {"access-control-allow-origin": "*"}


def job(name: str, **extra: Any) -> dict[str, Any]:
    return {"job_type": "hello_world", "input_params": {"name": name}, **extra}


async def expect_429(resp: Any, limit: str, setting: str) -> dict[str, Any]:
    """The original's 429 body (error, resetTime), with details naming the limit and
    the setting that raises it, and Retry-After."""
    before_ms = int(time.time() * 1000)
    assert resp.status == 429, await resp.text()
    body: dict[str, Any] = await resp.json()
    assert set(body) == {"error", "resetTime", "details", "limit"}
    assert body["error"] == "Rate limit exceeded"
    assert body["limit"] == limit
    assert setting in body["details"], body
    reset = body["resetTime"]
    assert isinstance(reset, int) and not isinstance(reset, bool)
    assert before_ms - 1000 < reset <= before_ms + 3_600_000
    retry_after = resp.headers["Retry-After"]
    assert re.fullmatch(r"[0-9]+", retry_after)
    assert int(retry_after) >= 1
    # Retry-After and resetTime tell the same wait.
    assert abs(before_ms + int(retry_after) * 1000 - reset) < 2000
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    return body


async def job_count(client: TestClient) -> int:
    stats = await (await client.get("/api/admin/stats", headers=ADMIN)).json()
    return int(stats["jobs"]["total"])


async def test_new_jobs_are_limited_and_cache_hits_are_not(make_client: MakeClient) -> None:
    client = await make_client(rate_new_jobs=2, rate_new_jobs_burst=2)
    first = await client.post("/api/jobs/submit", json=job("a"), headers=SUBMIT)
    assert first.status == 201
    assert (await client.post("/api/jobs/submit", json=job("b"), headers=SUBMIT)).status == 201
    resp = await client.post("/api/jobs/submit", json=job("c"), headers=SUBMIT)
    body = await expect_429(resp, "new_jobs", "RUNPACK_RATE_NEW_JOBS")
    assert "RUNPACK_RATE_NEW_JOBS_BURST" in body["details"]
    assert 1 <= int(resp.headers["Retry-After"]) <= 30  # a token every 30 s
    # The refused submit created nothing…
    assert await job_count(client) == 2
    resp = await client.post("/api/jobs/check", json=job("c"), headers=SUBMIT)
    assert (await resp.json())["exists"] is False
    # …while submits of jobs that exist, and checks, go on being answered.
    for _ in range(10):
        resp = await client.post("/api/jobs/submit", json=job("a"), headers=SUBMIT)
        assert resp.status == 200
        assert (await resp.json())["job_id"] == (await first.json())["job_id"]
        assert (await client.post("/api/jobs/check", json=job("b"), headers=SUBMIT)).status == 200
    assert await job_count(client) == 2


async def test_a_completed_job_is_served_when_new_work_is_spent(make_client: MakeClient) -> None:
    client = await make_client(rate_new_jobs=1, rate_new_jobs_burst=1)
    job_id = (await (await client.post("/api/jobs/submit", json=job("a"), headers=SUBMIT)).json())[
        "job_id"
    ]
    runner_id = await register(client)
    await claim(client, runner_id, job_id)
    done = {"output_data": {"ok": 1}, "console_output": ""}
    path = f"/api/runner/jobs/{job_id}/complete"
    assert (await client.post(path, json=done, headers=as_runner(runner_id))).status == 200
    await expect_429(
        await client.post("/api/jobs/submit", json=job("new"), headers=SUBMIT),
        "new_jobs",
        "RUNPACK_RATE_NEW_JOBS",
    )
    for _ in range(5):  # the cached result, from memory or the database
        resp = await client.post("/api/jobs/submit", json=job("a"), headers=SUBMIT)
        assert resp.status == 200
        assert (await resp.json())["result"]["output_data"] == {"ok": 1}


async def test_a_forced_rerun_is_new_work(make_client: MakeClient) -> None:
    client = await make_client(rate_new_jobs=1, rate_new_jobs_burst=1)
    job_id = (await (await client.post("/api/jobs/submit", json=job("a"), headers=SUBMIT)).json())[
        "job_id"
    ]
    runner_id = await register(client)
    await claim(client, runner_id, job_id)
    failure = {"error_message": "boom", "console_output": ""}
    path = f"/api/runner/jobs/{job_id}/error"
    assert (await client.post(path, json=failure, headers=as_runner(runner_id))).status == 200
    # Without force, the failure is answered; with force, it would run again: refused.
    resp = await client.post("/api/jobs/submit", json=job("a"), headers=SUBMIT)
    assert (await resp.json())["status"] == "failed"
    resp = await client.post("/api/jobs/submit", json=job("a", force=True), headers=SUBMIT)
    await expect_429(resp, "new_jobs", "RUNPACK_RATE_NEW_JOBS")
    detail = await (await client.get(f"/api/admin/jobs/{job_id}")).json()
    assert detail["status"] == "failed"  # not queued again


async def test_a_key_limits_new_work_from_all_addresses(make_client: MakeClient) -> None:
    client = await make_client(rate_key_new_jobs=3, trust_proxy=True)
    for i in range(3):
        headers = {**SUBMIT, "X-Forwarded-For": f"10.0.0.{i}"}
        resp = await client.post("/api/jobs/submit", json=job(str(i)), headers=headers)
        assert resp.status == 201
    headers = {**SUBMIT, "X-Forwarded-For": "10.0.0.9"}
    resp = await client.post("/api/jobs/submit", json=job("9"), headers=headers)
    await expect_429(resp, "key_new_jobs", "RUNPACK_RATE_KEY_NEW_JOBS")
    # The refusal spent nothing of the new address's own budget: other keys go on.
    resp = await client.post("/api/jobs/submit", json=job("9"), headers={**headers, **ADMIN})
    assert resp.status == 201


async def test_addresses_have_budgets_of_their_own(make_client: MakeClient) -> None:
    client = await make_client(rate_new_jobs=1, rate_new_jobs_burst=1, trust_proxy=True)

    async def submit_from(ip: str, name: str) -> Any:
        headers = {**SUBMIT, "X-Forwarded-For": ip}
        return await client.post("/api/jobs/submit", json=job(name), headers=headers)

    assert (await submit_from("10.0.0.1", "a")).status == 201
    await expect_429(await submit_from("10.0.0.1", "b"), "new_jobs", "RUNPACK_RATE_NEW_JOBS")
    assert (await submit_from("10.0.0.2", "b")).status == 201
    # What a client writes left of the proxy's entry is not believed.
    await expect_429(
        await submit_from("10.0.0.2, 10.0.0.1", "c"), "new_jobs", "RUNPACK_RATE_NEW_JOBS"
    )


async def test_requests_have_their_own_budget(make_client: MakeClient) -> None:
    client = await make_client(rate_requests=4, rate_requests_burst=4, rate_new_jobs=0)
    job_id = (await (await client.post("/api/jobs/submit", json=job("a"), headers=SUBMIT)).json())[
        "job_id"
    ]
    assert (await client.post("/api/jobs/check", json=job("a"), headers=SUBMIT)).status == 200
    assert (await client.get(f"/api/jobs/{job_id}", headers=SUBMIT)).status == 200
    assert (await client.get(f"/api/jobs/{uuid.uuid4()}", headers=SUBMIT)).status == 404
    for resp in (
        await client.post("/api/jobs/check", json=job("a"), headers=SUBMIT),
        await client.post("/api/jobs/submit", json=job("a"), headers=SUBMIT),
        await client.get(f"/api/jobs/{job_id}", headers=SUBMIT),
        await client.get(f"/api/jobs/{job_id}/events"),
    ):
        await expect_429(resp, "requests", "RUNPACK_RATE_REQUESTS")
    # Wrong keys are refused before they count; admin and runner routes are not limited.
    for _ in range(5):
        resp = await client.post("/api/jobs/check", json=job("a"), headers=bearer("x"))
        assert resp.status == 401
        assert (await client.get("/api/admin/stats", headers=ADMIN)).status == 200
        assert (await client.get(f"/api/admin/jobs/{job_id}")).status == 200
    # The admin key is not limited.
    assert (await client.get(f"/api/jobs/{job_id}", headers=ADMIN)).status == 200


async def test_runner_polls_and_heartbeats_are_limited_per_runner(
    make_client: MakeClient,
) -> None:
    client = await make_client(rate_available=2, rate_heartbeat=2)
    first, second = await register(client, "first"), await register(client, "second")
    path = "/api/runner/jobs/available?types[]=hello_world"
    for _ in range(2):
        assert (await client.get(path, headers=as_runner(first))).status == 200
    await expect_429(
        await client.get(path, headers=as_runner(first)), "available", "RUNPACK_RATE_AVAILABLE"
    )
    assert (await client.get(path, headers=as_runner(second))).status == 200


async def test_a_stored_key_rate_replaces_the_key_default(make_client: MakeClient) -> None:
    client = await make_client(
        rate_new_jobs=2, rate_new_jobs_burst=2, rate_key_new_jobs=1, trust_proxy=True
    )
    made = []
    for rate in (3, 0):
        resp = await client.post(
            "/api/admin/keys", json={"role": "submit", "rate": rate}, headers=ADMIN
        )
        assert resp.status == 201, await resp.text()
        made.append(bearer((await resp.json())["secret"]))
    limited, unlimited = made

    async def submit_as(key: dict[str, str], ip: str, name: str) -> Any:
        headers = {**key, "X-Forwarded-For": ip}
        return await client.post("/api/jobs/submit", json=job(name), headers=headers)

    # Its own rate (3) in place of the default per key (1)…
    assert (await submit_as(limited, "10.0.0.1", "k0")).status == 201
    assert (await submit_as(limited, "10.0.0.1", "k1")).status == 201
    # …while each address keeps its own limit (2)…
    await expect_429(await submit_as(limited, "10.0.0.1", "k2"), "new_jobs", "NEW_JOBS_BURST")
    assert (await submit_as(limited, "10.0.0.2", "k2")).status == 201
    resp = await submit_as(limited, "10.0.0.3", "k3")
    body = await expect_429(resp, "key_new_jobs", "runpack keys create --rate")
    assert "3 per 60 s" in body["details"]
    # …and rate 0: no limit at all, nothing counted for the address.
    for i in range(6):
        assert (await submit_as(unlimited, "10.0.0.3", f"u{i}")).status == 201
    assert (await submit_as(SUBMIT, "10.0.0.3", "e1")).status == 201
    resp = await submit_as(SUBMIT, "10.0.0.4", "e2")  # the environment key's 1 is spent
    await expect_429(resp, "key_new_jobs", "RUNPACK_RATE_KEY_NEW_JOBS")


# --- the buckets ---------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_spends_its_burst_then_refills_at_its_rate() -> None:
    clock = FakeClock()
    buckets = LocalBuckets(clock=clock)
    limit = Limit.per_period("new_jobs", 6, 60.0, 3, "details")  # a token every 10 s
    assert limit is not None
    assert [buckets.take_now("a", limit) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take_now("a", limit) == pytest.approx(10.0)
    assert buckets.take_now("b", limit) == 0.0  # another key has its own
    clock.now += 4.0
    assert buckets.take_now("a", limit) == pytest.approx(6.0)  # refused: nothing taken
    clock.now += 6.0
    assert buckets.take_now("a", limit) == 0.0
    buckets.give_back_now("a", limit)
    assert buckets.take_now("a", limit) == 0.0
    assert buckets.take_now("a", limit) > 0
    clock.now += 1000.0  # never more than the burst
    assert [buckets.take_now("a", limit) for _ in range(4)][3] > 0


def test_a_refusal_says_when_to_come_back() -> None:
    limit = Limit("requests", 1.0, 1.0, "Requests: RUNPACK_RATE_REQUESTS")
    refused = limit.refusal(0.2)
    assert isinstance(refused, RateLimited) and refused.status == 429
    assert refused.headers == {"Retry-After": "1"}  # never 0
    body = refused.to_body()
    assert body["details"] == "Requests: RUNPACK_RATE_REQUESTS" and body["limit"] == "requests"
    assert abs(body["resetTime"] - (time.time() + 0.2) * 1000) < 1000
    assert Limit.per_period("x", 0, 60.0, 5, "") is None  # 0: unlimited


def test_buckets_are_forgotten_when_full() -> None:
    clock = FakeClock()
    buckets = LocalBuckets(clock=clock, max_keys=10)
    limit = Limit("x", 1.0, 1.0, "")
    for i in range(100):
        clock.now += 0.01
        buckets.take_now(f"ip:{i}", limit)
    assert buckets.take_now("ip:99", limit) > 0  # the newest is still counted
    assert buckets.take_now("ip:0", limit) == 0.0  # the oldest was forgotten


# --- the Python client -------------------------------------------------------------------


async def test_the_client_raises_a_clear_error_or_waits_on_request(
    make_client: MakeClient,
) -> None:
    # One new job at once, then one every 2 s.
    client = await make_client(rate_new_jobs=1, rate_new_jobs_burst=1, rate_window=2.0)
    url = str(client.make_url("")).rstrip("/")
    async with AsyncClient(url, SUBMIT_KEY) as runpack:
        assert (await runpack.submit("hello_world", {"name": "a"})).created
        with pytest.raises(RateLimitedError) as caught:
            await runpack.submit("hello_world", {"name": "b"})
        refused = caught.value
        assert refused.status == 429 and refused.limit == "new_jobs"
        assert refused.retry_after == 2
        assert refused.reset_time is not None and refused.reset_time > time.time() * 1000
        assert refused.details is not None and "RUNPACK_RATE_NEW_JOBS" in refused.details
        assert "RUNPACK_RATE_NEW_JOBS" in str(refused)
        assert isinstance(refused, RunpackClientError)  # what callers caught before
    async with AsyncClient(url, SUBMIT_KEY, retry_on_limit=True) as runpack:
        started = time.monotonic()
        assert (await runpack.submit("hello_world", {"name": "c"})).created
        assert (await runpack.submit("hello_world", {"name": "d"})).created  # waited
        assert time.monotonic() - started >= 0.5
    # It waits only as long as it was told it may (the next token is 2 s away).
    async with AsyncClient(url, SUBMIT_KEY, retry_on_limit=True, limit_wait=0.5) as runpack:
        with pytest.raises(RateLimitedError):
            await runpack.submit("hello_world", {"name": "e"})


def test_the_sync_client_passes_retry_on_limit_on() -> None:
    with Client("http://127.0.0.1:9", SUBMIT_KEY, retry_on_limit=True, limit_wait=5) as runpack:
        assert runpack._async.retry_on_limit and runpack._async.limit_wait == 5


# --- buckets in the database (instances on one PostgreSQL; the same SQL on SQLite) ---------


async def test_the_store_takes_tokens_in_one_statement(store: Store) -> None:
    per_ms = 1 / 1000  # a token a second
    t0 = 1_700_000_000_000
    # A new bucket is full: up to n whole tokens are taken.
    assert await store.take_tokens("a", per_ms, 5, 3, t0) == (3, 2.0)
    assert await store.take_tokens("a", per_ms, 5, 3, t0) == (2, 0.0)
    assert await store.take_tokens("a", per_ms, 5, 1, t0) == (0, 0.0)  # none: nothing taken
    taken, left = await store.take_tokens("a", per_ms, 5, 1, t0 + 1500)  # 1.5 refilled
    assert taken == 1 and left == pytest.approx(0.5)
    await store.give_back_token("a", 5)
    taken, left = await store.take_tokens("a", per_ms, 5, 3, t0 + 1500)
    assert taken == 1 and left == pytest.approx(0.5)
    # Never more than the burst, and a clock running behind refills nothing.
    assert await store.take_tokens("a", per_ms, 5, 9, t0 + 3_600_000) == (5, 0.0)
    assert await store.take_tokens("a", per_ms, 5, 1, t0) == (0, 0.0)
    assert await store.take_tokens("b", per_ms, 2, 1, t0) == (1, 1.0)
    assert await store.delete_idle_buckets(t0 + 1) == 1  # "b": "a" was counted later
    assert await store.take_tokens("b", per_ms, 2, 1, t0) == (1, 1.0)  # full again


async def test_shared_buckets_ask_the_database_once_per_lease(store: Store) -> None:
    calls: list[int] = []
    take_tokens = store.take_tokens

    async def counted(name: str, per_ms: float, burst: float, n: int, now: int) -> Any:
        calls.append(n)
        await asyncio.sleep(0.01)  # others arrive while it is in flight
        return await take_tokens(name, per_ms, burst, n, now)

    store.take_tokens = counted  # type: ignore[method-assign]
    buckets = SharedBuckets(store)
    limit = Limit("requests", 1 / 60, 30.0, "", lease=10)  # 30 at once, then one a minute
    waits = await asyncio.gather(*(buckets.take("requests:x", limit) for _ in range(40)))
    assert waits.count(0.0) == 30  # the whole burst, and not a token more
    assert all(w > 1 for w in waits if w)
    assert len(calls) == 4  # three leases of 10, one refusal
    # Refused: the instance answers without asking again until a token is due.
    assert await buckets.take("requests:x", limit) > 1
    assert len(calls) == 4
    # Other instances count on the same row.
    other = SharedBuckets(store)
    assert await other.take("requests:x", limit) > 1


def test_a_rate_period_must_be_positive(settings: Settings) -> None:
    with pytest.raises(ValueError, match="rate_window"):
        create_app(settings.replace(rate_window=0.0))
