"""Validation of cached figpack results (wire-api.md §6.2, differences 3 and 4).

The figpack cloud lives outside this machine, so it is mocked by a real aiohttp
server on loopback that serves each figure folder's ``figpack.json`` as the test
sets it. The Runpack app fetches it over real HTTP, exactly as in production.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from runpack.settings import Settings
from runpack.validation import INVALID, VALID, figpack_urls, judge_manifest
from tests.conftest import ADMIN, SUBMIT, MakeClient, as_runner, claim, register

DAY_MS = 24 * 3600 * 1000
JOB = {"job_type": "figure", "input_params": {"nwb": "https://example.org/a.nwb"}}
EXPIRED_CHECK = {
    "exists": True,
    "status": "expired",
    "message": "Job exists but result has expired",
}


def now_ms() -> int:
    return int(time.time() * 1000)


class FigpackCloud:
    """A loopback stand-in for the figpack cloud: ``/<figure>/figpack.json``."""

    def __init__(self) -> None:
        #: figure name -> manifest (a dict), an HTTP status (int), or "slow"
        self.figures: dict[str, Any] = {}
        self.requests: Counter[str] = Counter()
        self.release = asyncio.Event()
        self.slow_entered = asyncio.Event()
        self.server: TestServer | None = None

    async def manifest(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["figure"]
        self.requests[name] += 1
        answer = self.figures.get(name, 404)
        if answer == "slow":
            self.slow_entered.set()
            await self.release.wait()
            return web.json_response({"pinned": True})
        if isinstance(answer, int):
            return web.json_response({"error": "nope"}, status=answer)
        return web.json_response(answer)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{figure}/figpack.json", self.manifest)
        return app

    def url(self, figure: str) -> str:
        assert self.server is not None
        return str(self.server.make_url(f"/{figure}/index.html"))


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The figpack cloud's stand-in is on loopback: its host is allowed, and so are
    private addresses, as for a lab that serves figures on its own network."""
    return settings.replace(figure_url_hosts="127.0.0.1", allow_private_urls=True)


@pytest.fixture
async def cloud(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> FigpackCloud:
    fake = FigpackCloud()
    fake.server = await aiohttp_server(fake.app(), host="127.0.0.1")
    return fake


@pytest.fixture
def refused_url() -> Iterator[str]:
    """An index.html URL on a loopback port that is bound but not listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/fig/index.html"
    finally:
        sock.close()


def nested(url: str) -> dict[str, Any]:
    """Output data with the figpack_url buried as handlers produce it."""
    return {"summary": "ok", "figures": [{"title": "units", "view": {"figpack_url": url}}]}


async def cached_job(client: TestClient, output_data: dict[str, Any]) -> str:
    """A completed job with this output, submitted as JOB."""
    resp = await client.post("/api/jobs/submit", json=JOB, headers=SUBMIT)
    assert resp.status == 201, await resp.text()
    job_id = str((await resp.json())["job_id"])
    runner = await register(client, caps=["figure"])
    await claim(client, runner, job_id)
    resp = await client.post(
        f"/api/runner/jobs/{job_id}/complete",
        json={"output_data": output_data, "console_output": "uploaded"},
        headers=as_runner(runner),
    )
    assert resp.status == 200, await resp.text()
    return job_id


async def post(client: TestClient, path: str) -> tuple[int, Any]:
    resp = await client.post(path, json=JOB, headers=SUBMIT)
    return resp.status, await resp.json()


async def assert_served(client: TestClient, job_id: str, output_data: dict[str, Any]) -> None:
    status, body = await post(client, "/api/jobs/check")
    assert status == 200
    assert body["status"] == "completed", body
    assert body["result"]["output_data"] == output_data
    status, body = await post(client, "/api/jobs/submit")
    assert status == 200
    assert body["job_id"] == job_id
    assert body["message"] == "Job already completed (cached result)"
    assert body["result"] == {"output_data": output_data, "console_output": "uploaded"}


async def assert_expired(client: TestClient, job_id: str) -> None:
    status, body = await post(client, "/api/jobs/check")
    assert (status, body) == (200, {**EXPIRED_CHECK, "job_id": job_id})


# --- verdicts through the API -----------------------------------------------------------


async def test_pinned_figure_is_served_from_cache(client: TestClient, cloud: FigpackCloud) -> None:
    cloud.figures["fig1"] = {"pinned": True}
    output = nested(cloud.url("fig1"))
    job_id = await cached_job(client, output)
    await assert_served(client, job_id, output)
    assert cloud.requests["fig1"] >= 1


async def test_figure_expiring_in_the_future_is_valid(
    client: TestClient, cloud: FigpackCloud
) -> None:
    cloud.figures["fig1"] = {"expiration": now_ms() + DAY_MS}
    output = nested(cloud.url("fig1"))
    job_id = await cached_job(client, output)
    await assert_served(client, job_id, output)


async def test_expired_figure_marks_job_expired_keeps_row_and_requeues_same_id(
    client: TestClient, cloud: FigpackCloud
) -> None:
    cloud.figures["fig1"] = {"expiration": now_ms() - DAY_MS}
    job_id = await cached_job(client, nested(cloud.url("fig1")))
    await assert_expired(client, job_id)

    resp = await client.get(f"/api/admin/jobs/{job_id}")
    assert resp.status == 200
    detail = await resp.json()
    assert detail["status"] == "expired"
    assert detail["output_data"] == nested(cloud.url("fig1"))
    resp = await client.get("/api/admin/stats", headers=ADMIN)
    jobs = (await resp.json())["jobs"]
    assert (jobs["expired"], jobs["completed"], jobs["total"]) == (1, 0, 1)

    status, body = await post(client, "/api/jobs/submit")
    assert status == 201
    assert body == {"job_id": job_id, "status": "pending", "message": "Job queued successfully"}
    resp = await client.get("/api/admin/stats", headers=ADMIN)
    jobs = (await resp.json())["jobs"]
    assert (jobs["pending"], jobs["expired"], jobs["total"]) == (1, 0, 1)


async def test_deleted_figure_is_expired(client: TestClient, cloud: FigpackCloud) -> None:
    cloud.figures["fig1"] = {"deleted": True, "pinned": True}
    job_id = await cached_job(client, nested(cloud.url("fig1")))
    await assert_expired(client, job_id)


async def test_url_not_ending_in_index_html_is_expired_without_fetching(
    client: TestClient, cloud: FigpackCloud
) -> None:
    cloud.figures["fig1"] = {"pinned": True}
    url = cloud.url("fig1").replace("index.html", "view.html")
    job_id = await cached_job(client, nested(url))
    await assert_expired(client, job_id)
    assert cloud.requests["fig1"] == 0


async def test_missing_manifest_404_is_expired(client: TestClient, cloud: FigpackCloud) -> None:
    job_id = await cached_job(client, nested(cloud.url("gone")))
    await assert_expired(client, job_id)
    assert cloud.requests["gone"] == 1


async def test_one_expired_figure_among_several_expires_the_result(
    client: TestClient, cloud: FigpackCloud
) -> None:
    cloud.figures["good"] = {"pinned": True}
    cloud.figures["old"] = {"expiration": 1}
    output = {
        "a": {"figpack_url": cloud.url("good")},
        "b": [{"figpack_url": cloud.url("old")}],
    }
    job_id = await cached_job(client, output)
    await assert_expired(client, job_id)


async def test_non_string_figpack_url_does_not_hide_an_expired_one(
    client: TestClient, cloud: FigpackCloud
) -> None:
    cloud.figures["old"] = {"expiration": 1}
    output = {"a": {"figpack_url": None}, "b": {"figpack_url": cloud.url("old")}}
    job_id = await cached_job(client, output)
    await assert_expired(client, job_id)


async def test_server_error_keeps_serving(client: TestClient, cloud: FigpackCloud) -> None:
    cloud.figures["fig1"] = 500
    output = nested(cloud.url("fig1"))
    job_id = await cached_job(client, output)
    await assert_served(client, job_id, output)
    assert cloud.requests["fig1"] >= 1


async def test_connection_refused_keeps_serving(client: TestClient, refused_url: str) -> None:
    output = nested(refused_url)
    job_id = await cached_job(client, output)
    await assert_served(client, job_id, output)


async def test_timeout_keeps_serving(make_client: MakeClient, cloud: FigpackCloud) -> None:
    client = await make_client(validation_timeout=0.2)
    cloud.figures["slow"] = "slow"
    output = nested(cloud.url("slow"))
    try:
        job_id = await cached_job(client, output)
        await assert_served(client, job_id, output)
        assert cloud.slow_entered.is_set()
    finally:
        cloud.release.set()


async def test_verdict_is_cached_within_ttl(client: TestClient, cloud: FigpackCloud) -> None:
    cloud.figures["fig1"] = {"pinned": True}
    output = nested(cloud.url("fig1"))
    job_id = await cached_job(client, output)
    await assert_served(client, job_id, output)  # a check and a submit
    await assert_served(client, job_id, output)
    assert cloud.requests["fig1"] == 1


async def test_verdict_is_fetched_again_after_ttl(
    make_client: MakeClient, cloud: FigpackCloud
) -> None:
    client = await make_client(validation_cache_ttl=0)
    cloud.figures["fig1"] = {"pinned": True}
    output = nested(cloud.url("fig1"))
    job_id = await cached_job(client, output)
    await assert_served(client, job_id, output)
    assert cloud.requests["fig1"] == 2


async def test_unknown_verdict_is_not_cached(client: TestClient, cloud: FigpackCloud) -> None:
    cloud.figures["fig1"] = 503
    output = nested(cloud.url("fig1"))
    job_id = await cached_job(client, output)
    await assert_served(client, job_id, output)
    assert cloud.requests["fig1"] == 2
    # Once the cloud answers again, its verdict counts.
    cloud.figures["fig1"] = {"deleted": True}
    await assert_expired(client, job_id)


# --- the rule itself ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("manifest", "verdict"),
    [
        ({"pinned": True}, VALID),
        ({"pinned": True, "expiration": 1}, VALID),
        ({"deleted": True, "pinned": True}, INVALID),
        ({"deleted": False, "pinned": True}, VALID),
        ({"expiration": 2_000}, VALID),
        ({"expiration": 2_000.5}, VALID),
        ({"expiration": 1_000}, INVALID),  # equal to now: not in the future
        ({"expiration": 999}, INVALID),
        ({"expiration": "3000"}, INVALID),
        ({"expiration": True}, INVALID),
        ({"pinned": "yes"}, INVALID),
        ({"pinned": 1}, INVALID),
        ({}, INVALID),
        ([], INVALID),
        (None, INVALID),
        ("pinned", INVALID),
    ],
)
def test_judge_manifest(manifest: Any, verdict: str) -> None:
    assert judge_manifest(manifest, now_ms=1_000) == verdict


def test_figpack_urls_walks_nested_objects_and_arrays() -> None:
    data = {
        "figpack_url": "top",
        "a": {"b": [{"figpack_url": "deep"}, [{"c": {"figpack_url": "deeper"}}]]},
        "not_figpack_url": "ignored",
        "list": ["figpack_url", {"figpack_url": None}],
    }
    assert list(figpack_urls(data)) == ["top", "deep", "deeper", None]


def test_figpack_urls_of_values_without_any() -> None:
    assert list(figpack_urls({"a": 1, "b": ["x", {"c": None}]})) == []
    assert list(figpack_urls("figpack_url")) == []
    assert list(figpack_urls([])) == []
