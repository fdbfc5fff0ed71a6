"""Keyset paging of the admin lists (`after` / `next`, the original's `offset` kept),
and stats from the kept counts, through the HTTP API on both engines."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import ADMIN, SUBMIT, claim, controlled_clock, register, service_of, submit
from tests.test_api_admin import get, job_in_each_state


async def walk(client: TestClient, path: str, key: str, limit: int) -> list[list[str]]:
    """Every page of a list (``path`` ends with a ``?``-query), following `next`: the
    ``key`` of each row, page by page."""
    rows = "jobs" if path.startswith("/api/admin/jobs") else "runners"
    pages: list[list[str]] = []
    after = ""
    while True:
        status, body = await get(client, f"{path}limit={limit}{after}")
        assert status == 200, body
        pages.append([row[key] for row in body[rows]])
        assert body["total"] == len(pages[-1])
        if "next" not in body:
            return pages
        assert len(pages[-1]) == limit
        after = f"&after={body['next']}"


async def test_job_pages_by_cursor_are_the_newest_first_list_cut_in_pages(
    client: TestClient,
) -> None:
    clock = controlled_clock(client)
    for n in range(8):
        clock.now += 1_000 if n % 3 else 0  # some jobs share a created_at
        await submit(client, n=n)
    _, whole = await get(client, "/api/admin/jobs")
    ids = [job["job_id"] for job in whole["jobs"]]
    assert "next" not in whole
    pages = await walk(client, "/api/admin/jobs?", "job_id", 3)
    assert pages == [ids[0:3], ids[3:6], ids[6:8]]
    assert await walk(client, "/api/admin/jobs?", "job_id", 4) == [ids[0:4], ids[4:8]]
    # offset as in the original, and from a cursor.
    _, body = await get(client, "/api/admin/jobs?limit=2&offset=3")
    assert [j["job_id"] for j in body["jobs"]] == ids[3:5]
    _, first = await get(client, "/api/admin/jobs?limit=2")
    _, body = await get(client, f"/api/admin/jobs?limit=2&offset=1&after={first['next']}")
    assert [j["job_id"] for j in body["jobs"]] == ids[3:5]


async def test_job_pages_by_cursor_keep_the_filters(client: TestClient) -> None:
    ids = await job_in_each_state(client)
    for n in range(5):
        await submit(client, n=n)
    _, whole = await get(client, "/api/admin/jobs?status=pending")
    pending = [job["job_id"] for job in whole["jobs"]]
    assert len(pending) == 6 and ids["pending"] in pending
    pages = await walk(client, "/api/admin/jobs?status=pending&", "job_id", 4)
    assert pages == [pending[:4], pending[4:]]
    typed = await walk(client, "/api/admin/jobs?job_type=hello&status=completed&", "job_id", 1)
    assert typed == [[ids["completed"]]]


@pytest.mark.parametrize("after", ["%%%", "bm90LWEtY3Vyc29y", "_w"])
async def test_a_bad_cursor_is_a_400(client: TestClient, after: str) -> None:
    for path in ("/api/admin/jobs", "/api/admin/runners"):
        status, body = await get(client, f"{path}?after={after}")
        assert status == 400, (path, body)
        assert body["error"] == "after must be the next of an earlier page"


async def test_runner_pages_by_cursor(client: TestClient) -> None:
    clock = controlled_clock(client)
    for n in range(5):
        clock.now += 0 if n == 2 else 1_000  # two runners seen at the same time
        await register(client, name=f"r{n}")
    _, whole = await get(client, "/api/admin/runners")
    ids = [runner["runner_id"] for runner in whole["runners"]]
    assert len(ids) == 5 and "next" not in whole
    assert await walk(client, "/api/admin/runners?", "runner_id", 2) == [
        ids[0:2],
        ids[2:4],
        ids[4:5],
    ]


async def test_stats_are_the_full_count_after_a_mixed_workload(client: TestClient) -> None:
    ids = await job_in_each_state(client)
    runner = await register(client, name="r2")
    extra = [(await submit(client, n=n))["job_id"] for n in range(4)]
    await claim(client, runner, extra[0])
    resp = await client.post(f"/api/jobs/{extra[1]}/cancel", headers=SUBMIT)
    assert resp.status == 200, await resp.text()
    resp = await client.post(f"/api/admin/jobs/{ids['failed']}/retry", headers=ADMIN)
    assert resp.status == 200, await resp.text()
    resp = await client.delete(f"/api/admin/jobs/{ids['completed']}", headers=ADMIN)
    assert resp.status == 200, await resp.text()
    store = service_of(client).store
    full = await store.count_jobs()
    _, stats = await get(client, "/api/admin/stats")
    expected: dict[str, Any] = {s: full.get(s, 0) for s in stats["jobs"] if s != "total"}
    assert stats["jobs"] == {**expected, "total": sum(full.values())}
    assert stats["jobs"]["total"] == 9
    assert stats["jobs"]["cancelled"] == 1 and stats["jobs"]["claimed"] == 2
