"""HTTP policy: auth, order of checks, rate limits, CORS, health, 404s, 500s, logs."""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from runpack.api.common import policy_of
from runpack.appkeys import SERVICE
from tests.conftest import (
    ADMIN,
    ADMIN_KEY,
    RUNNER,
    RUNNER_KEY,
    SUBMIT,
    SUBMIT_KEY,
    MakeClient,
    as_runner,
    bearer,
    claim,
    register,
    submit,
)

CORS = {
    "access-control-allow-origin": "*",
    "access-control-allow-methods": "GET, POST, DELETE, OPTIONS",
    "access-control-allow-headers": "Content-Type, Authorization, X-Runner-ID",
}
HEALTH_BODY = {"status": "ok", "service": "runpack-worker"}
MISSING = {"error": "Missing Authorization header"}
BAD_FORMAT = {"error": "Invalid Authorization header format. Use: Bearer <token>"}
BAD_KEY = {"error": "Invalid API key"}
NO_RUNNER_ID = {"error": "Missing X-Runner-ID header"}
NOT_FOUND = {"error": "Not found"}
HELLO = {"job_type": "hello_world", "input_params": {"name": "Ada"}}


def app_of(client: TestClient) -> web.Application:
    app = client.app
    assert app is not None
    return app


def cors_headers(resp: Any) -> dict[str, str]:
    """Every Access-Control-* header of a response, names lower-cased."""
    return {k.lower(): v for k, v in resp.headers.items() if k.lower().startswith("access-control")}


async def expect(resp: Any, status: int, body: dict[str, Any] | None = None) -> Any:
    """Status, JSON content type, and (when given) the exact body."""
    text = await resp.text()
    assert resp.status == status, text
    assert resp.content_type == "application/json"
    got = await resp.json()
    if body is not None:
        assert got == body
    return got


# --- authentication ----------------------------------------------------------------------

# Stands for a registered runner's id in route paths (see ``call``).
SOME_RUNNER = "00000000-0000-4000-8000-000000000000"
# (method, path, json body or None) of one route per role.
Route = tuple[str, str, Any]
SUBMIT_ROUTES: list[Route] = [
    ("POST", "/api/jobs/submit", HELLO),
    ("POST", "/api/jobs/check", HELLO),
    ("GET", f"/api/jobs/{uuid.uuid4()}", None),
]
RUNNER_ROUTES: list[Route] = [
    ("POST", "/api/runner/register", {"name": "r", "capabilities": ["hello_world"]}),
    ("GET", "/api/runner/verify", None),
    ("GET", "/api/runner/jobs/available?types[]=hello_world", None),
    ("POST", f"/api/runner/jobs/{uuid.uuid4()}/claim", None),
    ("POST", f"/api/runner/jobs/{uuid.uuid4()}/heartbeat", {"console_output": ""}),
    ("POST", f"/api/runner/jobs/{uuid.uuid4()}/complete", {"output_data": {}}),
    ("POST", f"/api/runner/jobs/{uuid.uuid4()}/error", {"error_message": "x"}),
]
ADMIN_READ_ROUTES: list[Route] = [
    ("GET", "/api/admin/stats", None),
    ("GET", "/api/admin/jobs", None),
    ("GET", "/api/admin/runners", None),
    ("GET", f"/api/admin/runners/{SOME_RUNNER}", None),
]
ADMIN_WRITE_ROUTES: list[Route] = [
    ("DELETE", f"/api/admin/jobs/{uuid.uuid4()}", None),
    ("POST", "/api/admin/jobs/batch-delete", {"job_ids": [str(uuid.uuid4())]}),
]
ALL_AUTH_ROUTES = SUBMIT_ROUTES + RUNNER_ROUTES + ADMIN_READ_ROUTES + ADMIN_WRITE_ROUTES


UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def route_id(route: Route) -> str:
    return f"{route[0]} {UUID_RE.sub('ID', route[1].split('?')[0])}"


async def call(
    client: TestClient,
    route: Route,
    headers: dict[str, str],
    runner_id: str | None = None,
) -> Any:
    method, path, body = route
    if runner_id is not None:
        path = path.replace(SOME_RUNNER, runner_id)
    headers = dict(headers)
    if path.startswith("/api/runner/") and "register" not in path:
        headers["X-Runner-ID"] = runner_id or str(uuid.uuid4())
    return await client.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize("route", ALL_AUTH_ROUTES, ids=route_id)
async def test_missing_authorization(client: TestClient, route: Route) -> None:
    await expect(await call(client, route, {}), 401, MISSING)
    # An empty header is as good as none (the original tested ``!authHeader``).
    await expect(await call(client, route, {"Authorization": ""}), 401, MISSING)


@pytest.mark.parametrize("route", ALL_AUTH_ROUTES, ids=route_id)
@pytest.mark.parametrize(
    "value",
    ["Token x", "Bearer", "Bearer a b", f"bearer {SUBMIT_KEY}", f"Bearer  {SUBMIT_KEY}"],
)
async def test_badly_formatted_authorization(client: TestClient, route: Route, value: str) -> None:
    resp = await call(client, route, {"Authorization": value})
    await expect(resp, 401, BAD_FORMAT)


@pytest.mark.parametrize("route", ALL_AUTH_ROUTES, ids=route_id)
@pytest.mark.parametrize(
    "key", ["wrong-key", "Bearer", SUBMIT_KEY.upper(), SUBMIT_KEY + "x", SUBMIT_KEY[:-1], "é"]
)
async def test_wrong_key(client: TestClient, route: Route, key: str) -> None:
    await expect(await call(client, route, bearer(key)), 401, BAD_KEY)


@pytest.mark.parametrize("route", SUBMIT_ROUTES, ids=route_id)
async def test_submit_routes_reject_the_runner_key(client: TestClient, route: Route) -> None:
    await expect(await call(client, route, RUNNER), 401, BAD_KEY)


async def test_submit_routes_accept_the_submit_key(client: TestClient) -> None:
    resp = await client.post("/api/jobs/submit", json=HELLO, headers=SUBMIT)
    job_id = (await expect(resp, 201))["job_id"]
    await expect(await client.post("/api/jobs/check", json=HELLO, headers=SUBMIT), 200)
    await expect(await client.get(f"/api/jobs/{job_id}", headers=SUBMIT), 200)


@pytest.mark.parametrize("route", RUNNER_ROUTES, ids=route_id)
@pytest.mark.parametrize("headers", [SUBMIT, ADMIN], ids=["submit-key", "admin-key"])
async def test_runner_routes_reject_other_keys(
    client: TestClient, route: Route, headers: dict[str, str]
) -> None:
    runner_id = await register(client)
    await expect(await call(client, route, headers, runner_id), 401, BAD_KEY)


@pytest.mark.parametrize("route", ADMIN_READ_ROUTES, ids=route_id)
async def test_admin_reads(client: TestClient, route: Route) -> None:
    runner_id = await register(client)
    for headers in (ADMIN, RUNNER):
        await expect(await call(client, route, headers, runner_id), 200)
    await expect(await call(client, route, SUBMIT, runner_id), 401, BAD_KEY)


@pytest.mark.parametrize("route", ADMIN_READ_ROUTES, ids=route_id)
async def test_runner_key_reads_admin_can_be_turned_off(
    make_client: MakeClient, route: Route
) -> None:
    client: TestClient = await make_client(runner_key_reads_admin=False)
    method, path, _ = route
    await expect(await client.request(method, path, headers=RUNNER), 401, BAD_KEY)
    assert (await client.request(method, path, headers=ADMIN)).status != 401


async def test_deletes_need_the_admin_key(client: TestClient) -> None:
    job_id = (await submit(client))["job_id"]
    for headers in (RUNNER,):
        resp = await client.delete(f"/api/admin/jobs/{job_id}", headers=headers)
        body = await expect(resp, 403)
        assert isinstance(body["error"], str)
        resp = await client.post(
            "/api/admin/jobs/batch-delete", json={"job_ids": [job_id]}, headers=headers
        )
        await expect(resp, 403)
    for headers in (SUBMIT,):
        resp = await client.delete(f"/api/admin/jobs/{job_id}", headers=headers)
        await expect(resp, 401, BAD_KEY)
    # Still there after all that.
    assert (await client.get(f"/api/admin/jobs/{job_id}")).status == 200
    resp = await client.delete(f"/api/admin/jobs/{job_id}", headers=ADMIN)
    await expect(resp, 200, {"success": True, "message": "Job deleted successfully"})
    assert (await client.get(f"/api/admin/jobs/{job_id}")).status == 404


async def test_admin_job_detail_needs_no_key(client: TestClient) -> None:
    job_id = (await submit(client))["job_id"]
    body = await expect(await client.get(f"/api/admin/jobs/{job_id}"), 200)
    assert body["job_id"] == job_id
    # A wrong or malformed key does not hurt either: the route is public.
    for headers in (bearer("wrong"), {"Authorization": "Token x"}):
        await expect(await client.get(f"/api/admin/jobs/{job_id}", headers=headers), 200)
    await expect(
        await client.get(f"/api/admin/jobs/{uuid.uuid4()}"), 404, {"error": "Job not found"}
    )


# --- order of checks ----------------------------------------------------------------------

RUNNER_JOB_ROUTES = [r for r in RUNNER_ROUTES if r[1].startswith("/api/runner/jobs")]


@pytest.mark.parametrize("route", RUNNER_JOB_ROUTES, ids=route_id)
@pytest.mark.parametrize(
    "headers",
    [{}, bearer("wrong"), {"Authorization": "Token x"}, RUNNER, {**RUNNER, "X-Runner-ID": ""}],
    ids=["no-auth", "wrong-key", "bad-format", "runner-key", "empty-runner-id"],
)
async def test_missing_runner_id_is_400_before_auth(
    client: TestClient, route: Route, headers: dict[str, str]
) -> None:
    method, path, body = route
    resp = await client.request(method, path, json=body, headers=headers)
    await expect(resp, 400, NO_RUNNER_ID)


async def test_verify_checks_auth_before_the_runner_id(client: TestClient) -> None:
    await expect(await client.get("/api/runner/verify"), 401, MISSING)
    await expect(await client.get("/api/runner/verify", headers=bearer("nope")), 401, BAD_KEY)
    await expect(await client.get("/api/runner/verify", headers=RUNNER), 400, NO_RUNNER_ID)
    runner_id = await register(client, "verified")
    resp = await client.get("/api/runner/verify", headers=as_runner(runner_id))
    await expect(
        resp,
        200,
        {"exists": True, "runner_name": "verified", "message": "Runner verified successfully"},
    )


# --- CORS ---------------------------------------------------------------------------------


async def test_cors_on_every_api_response(make_client: MakeClient) -> None:
    # Four client requests from this address, then a refusal.
    limited = await make_client(rate_requests=4, rate_requests_burst=4)
    responses = [
        await limited.post("/api/jobs/submit", json=HELLO, headers=SUBMIT),  # 201
        await limited.get("/api/admin/stats", headers=ADMIN),  # 200
        await limited.post("/api/jobs/submit", data=b"{", headers=SUBMIT),  # 400
        await limited.post("/api/jobs/submit", json=HELLO),  # 401
        await limited.delete(f"/api/admin/jobs/{uuid.uuid4()}", headers=RUNNER),  # 403
        await limited.get(f"/api/jobs/{uuid.uuid4()}", headers=SUBMIT),  # 404 job
        await limited.get("/api/nothing/here"),  # 404 route
        await limited.delete("/api/jobs/submit"),  # 405 as 404
        await limited.post(f"/api/runner/jobs/{uuid.uuid4()}/claim", headers=as_runner("x")),
    ]
    responses.append(await limited.post("/api/jobs/submit", json=HELLO, headers=SUBMIT))
    responses.append(await limited.post("/api/jobs/submit", json=HELLO, headers=SUBMIT))  # 429
    statuses = [r.status for r in responses]
    assert statuses == [201, 200, 400, 401, 403, 404, 404, 404, 404, 200, 429]
    for resp in responses:
        assert cors_headers(resp) == CORS, resp.url
        assert resp.content_type == "application/json"


@pytest.mark.parametrize("path", ["/api/jobs/submit", "/api/nothing", "/x", "/api/admin/stats"])
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Origin": "https://example.org"},
        {
            "Origin": "https://neurosift.app",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    ],
    ids=["no-origin", "origin", "preflight"],
)
async def test_options_is_204_with_cors(
    client: TestClient, path: str, headers: dict[str, str]
) -> None:
    resp = await client.options(path, headers=headers)
    assert resp.status == 204
    assert cors_headers(resp) == CORS
    assert await resp.read() == b""


# --- health, 404 --------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/health"])
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS"])
async def test_health_any_method(client: TestClient, path: str, method: str) -> None:
    resp = await client.request(method, path, headers={"Origin": "https://example.org"})
    await expect(resp, 200, HEALTH_BODY)
    assert cors_headers(resp) == {}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/nothing"),
        ("GET", "/api"),
        ("GET", "/api/"),
        ("POST", "/api/jobs"),
        ("DELETE", "/api/jobs/submit"),
        ("PUT", "/api/jobs/submit"),
        ("GET", "/api/runner/register"),
        ("POST", "/api/admin/stats"),
        ("PATCH", "/api/admin/jobs/abc"),
        ("POST", f"/api/jobs/{uuid.uuid4()}"),
        ("GET", "/nope"),
        ("GET", "/healthz"),
    ],
)
async def test_unknown_route_or_wrong_method_is_404(
    client: TestClient, method: str, path: str
) -> None:
    for headers in ({}, ADMIN):
        resp = await client.request(method, path, headers=headers)
        await expect(resp, 404, NOT_FOUND)
        assert cors_headers(resp) == (CORS if path.startswith("/api/") else {})


# --- unexpected failures --------------------------------------------------------------------

FAILURES = [
    ("submit", "POST", "/api/jobs/submit", HELLO, SUBMIT, "Failed to submit job"),
    ("check", "POST", "/api/jobs/check", HELLO, SUBMIT, "Failed to check job"),
    ("get_job", "GET", f"/api/jobs/{uuid.uuid4()}", None, SUBMIT, "Failed to get job status"),
    ("stats", "GET", "/api/admin/stats", None, ADMIN, "Failed to get statistics"),
    ("list_jobs", "GET", "/api/admin/jobs", None, ADMIN, "Failed to get jobs"),
    (
        "delete_jobs",
        "DELETE",
        f"/api/admin/jobs/{uuid.uuid4()}",
        None,
        ADMIN,
        "Failed to delete job",
    ),
    (
        "register_runner",
        "POST",
        "/api/runner/register",
        {"name": "r", "capabilities": []},
        RUNNER,
        "Failed to register runner",
    ),
]


@pytest.mark.parametrize(
    ("method_name", "method", "path", "body", "headers", "error"),
    FAILURES,
    ids=[f[0] for f in FAILURES],
)
async def test_unexpected_exception_is_a_500_without_internals(
    client: TestClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    method_name: str,
    method: str,
    path: str,
    body: Any,
    headers: dict[str, str],
    error: str,
) -> None:
    service = app_of(client)[SERVICE]

    async def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(service, method_name, explode)
    with caplog.at_level(logging.ERROR):
        resp = await client.request(method, path, json=body, headers=headers)
    text = await resp.text()
    assert "secret internals" not in text
    assert "Traceback" not in text and "RuntimeError" not in text
    got = await expect(resp, 500)
    assert got["error"] == error
    match = re.fullmatch(r"incident ([0-9a-f]{12})", got["details"])
    assert match, got
    assert cors_headers(resp) == CORS
    # The log has what the body does not: the incident id and the exception.
    assert match.group(1) in caplog.text
    assert "secret internals" in caplog.text


async def test_keys_never_appear_in_logs(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    job_id = (await submit(client))["job_id"]
    runner_id = await register(client)
    await claim(client, runner_id, job_id)
    await client.get("/api/admin/stats", headers=ADMIN)
    await client.get("/api/admin/jobs", headers=RUNNER)
    await client.delete(f"/api/admin/jobs/{job_id}", headers=RUNNER)  # 403
    await client.post("/api/jobs/submit", json=HELLO, headers=RUNNER)  # 401
    await client.post("/api/jobs/submit", json=HELLO, headers={"Authorization": ADMIN_KEY})

    async def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"failure while holding {len(SUBMIT_KEY)} chars")

    monkeypatch.setattr(app_of(client)[SERVICE], "stats", explode)
    resp = await client.get("/api/admin/stats", headers=ADMIN)
    assert resp.status == 500
    assert caplog.records, "expected some log output to inspect"
    for key in (SUBMIT_KEY, RUNNER_KEY, ADMIN_KEY):
        assert key not in caplog.text


def runner_routes(app: web.Application) -> list[tuple[str, str]]:
    """Method and path of every route that acts for a registered runner."""
    found = []
    for route in app.router.routes():
        declared = policy_of(route.handler)
        if declared is not None and declared.runner_header and route.method != "HEAD":
            path = route.resource.canonical if route.resource is not None else ""
            found.append((route.method, path.replace("{job_id}", str(uuid.uuid4()))))
    return found


async def test_the_policy_middleware_notes_a_runners_contact_once(client: TestClient) -> None:
    """Every per-runner route answers an unregistered runner 404 (register first) before
    its handler runs, and notes a registered runner's contact in the middleware."""
    routes = runner_routes(app_of(client))
    assert len(routes) >= 8, routes
    unknown = str(uuid.uuid4())
    for method, path in routes:
        resp = await client.request(method, path, headers=as_runner(unknown), json={})
        await expect(
            resp,
            404,
            {"error": "Runner not found", "details": "Register first: POST /api/runner/register"},
        )
    runner_id = await register(client)
    service = app_of(client)[SERVICE]
    before = await service.get_runner(runner_id)
    clock = service.clock
    service.clock = lambda: clock() + 60_000
    try:
        resp = await client.get("/api/runner/jobs/available", headers=as_runner(runner_id))
        assert resp.status == 200
    finally:
        service.clock = clock
    after = await service.get_runner(runner_id)
    assert after.last_seen >= before.last_seen + 60_000
