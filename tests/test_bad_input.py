"""Bad input gets a clear 4xx JSON error, never a 500, and never changes a row.

Every test reads the database state back through the admin API before and after
the bad request (stats, the job list, each job's detail, the runner list) and
asserts that nothing moved.
"""

from __future__ import annotations

import io
import json
import uuid
from dataclasses import dataclass
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
    register,
    submit,
)

SUBMIT_PATHS = ("/api/jobs/submit", "/api/jobs/check")
ERROR_KEYS = {"error", "details"}

PARAMS_LIMIT = 102_400
OUTPUT_LIMIT = 512_000
CONSOLE_LIMIT = 1_048_576
ERROR_LIMIT = 10_240

PARAMS_TOO_BIG = f"Input parameters exceed size limit of {PARAMS_LIMIT} bytes"
JOB_TYPE_BAD = "Job type must be a non-empty string"
PARAMS_BAD = "Input parameters must be an object"
OUTPUT_TOO_BIG = f"Output JSON exceeds size limit of {OUTPUT_LIMIT} bytes"
CONSOLE_TOO_BIG = f"Console output exceeds size limit of {CONSOLE_LIMIT} bytes"
ERROR_TOO_BIG = f"Error message exceeds size limit of {ERROR_LIMIT} bytes"
NOT_OWNED = {"success": False, "message": "Job not found or not claimed by this runner"}
CLAIM_LOST = {"success": False, "message": "Job already claimed or not found"}

# Ids that name no job: a fresh uuid, and strings that are not lower-case uuids.
UNKNOWN_JOB_IDS = [
    pytest.param(str(uuid.uuid4()), id="fresh-uuid"),
    pytest.param(str(uuid.uuid4()).upper(), id="upper-case-uuid"),
    pytest.param("not-a-uuid", id="garbage"),
    pytest.param("..%2F..%2Fadmin%2Fstats", id="encoded-dot-dot"),
    pytest.param("..%5C..%5Cwindows", id="encoded-backslashes"),
    pytest.param("x'%20OR%20'1'='1", id="sql-ish"),
    pytest.param("a" * 5000, id="very-long"),
]


def params_of_size(size: int, char: str = "a") -> dict[str, str]:
    """``{"s": char * n}`` whose compact JSON is exactly ``size`` UTF-8 bytes."""
    overhead = len('{"s":""}')
    per_char = len(char.encode())
    assert (size - overhead) % per_char == 0
    return {"s": char * ((size - overhead) // per_char)}


async def post_json(client: TestClient, path: str, body: Any, headers: dict[str, str]) -> Any:
    """POST ``body`` as UTF-8 JSON (non-ASCII characters sent as is, not ``\\u`` escaped)."""
    raw = json.dumps(body, ensure_ascii=False).encode()
    return await client.post(
        path, data=io.BytesIO(raw), headers={**headers, "Content-Type": "application/json"}
    )


async def assert_error(
    resp: Any, status: int, error: str | None = None, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A JSON error: the status, a JSON content type, and ``{"error", "details"?}`` or ``body``."""
    text = await resp.text()
    assert resp.status == status, text
    assert resp.content_type == "application/json"
    got = await resp.json()
    assert isinstance(got, dict)
    if body is not None:
        assert got == body
        return got
    assert set(got) <= ERROR_KEYS, got
    assert isinstance(got["error"], str) and got["error"]
    if "details" in got:
        assert isinstance(got["details"], str)
    if error is not None:
        assert got["error"] == error
    return got


async def snapshot(client: TestClient) -> dict[str, Any]:
    """Everything the admin API can say about stored rows (runner contact times aside)."""
    resp = await client.get("/api/admin/stats", headers=ADMIN)
    assert resp.status == 200
    stats = await resp.json()
    resp = await client.get("/api/admin/jobs?limit=1000", headers=ADMIN)
    assert resp.status == 200
    listed = (await resp.json())["jobs"]
    details = {}
    for job in listed:
        resp = await client.get(f"/api/admin/jobs/{job['job_id']}")
        assert resp.status == 200
        details[job["job_id"]] = await resp.json()
    resp = await client.get("/api/admin/runners", headers=ADMIN)
    assert resp.status == 200
    runners = sorted(
        (r["runner_id"], r["name"], tuple(r["capabilities"]))
        for r in (await resp.json())["runners"]
    )
    return {"stats": stats["jobs"], "runners": runners, "jobs": details}


@dataclass
class World:
    """A few rows to damage: a pending job, a job claimed by ``owner``, and two runners."""

    pending: str
    claimed: str
    owner: str
    other: str


@pytest.fixture
async def world(client: TestClient) -> World:
    pending = (await submit(client, name="pending"))["job_id"]
    claimed = (await submit(client, name="claimed"))["job_id"]
    owner = await register(client, "owner")
    other = await register(client, "other")
    await claim(client, owner, claimed)
    return World(pending=pending, claimed=claimed, owner=owner, other=other)


async def job_detail(client: TestClient, job_id: str) -> dict[str, Any]:
    resp = await client.get(f"/api/admin/jobs/{job_id}")
    assert resp.status == 200
    body: dict[str, Any] = await resp.json()
    return body


# --- malformed bodies ------------------------------------------------------------------

BODY_ROUTES = [
    pytest.param("submit", id="submit"),
    pytest.param("check", id="check"),
    pytest.param("register", id="register"),
    pytest.param("heartbeat", id="heartbeat"),
    pytest.param("complete", id="complete"),
    pytest.param("error", id="error"),
    pytest.param("batch-delete", id="batch-delete"),
]


def body_route(name: str, world: World) -> tuple[str, dict[str, str]]:
    """Path and headers of a route that reads a JSON body, aimed at ``world``'s claimed job."""
    if name in ("submit", "check"):
        return f"/api/jobs/{name}", SUBMIT
    if name == "register":
        return "/api/runner/register", RUNNER
    if name == "batch-delete":
        return "/api/admin/jobs/batch-delete", ADMIN
    return f"/api/runner/jobs/{world.claimed}/{name}", as_runner(world.owner)


BAD_BODIES = [
    pytest.param(b'{"job_type": "hello_world", "input_params": {', id="truncated-json"),
    pytest.param(b"{'job_type': 'x'}", id="single-quotes"),
    pytest.param(b'{"a": 1,}', id="trailing-comma"),
    pytest.param(b"\xff\xfe not utf-8", id="not-utf8"),
    pytest.param(b"NaN", id="nan"),
    pytest.param(b"[]", id="array"),
    pytest.param(b'[{"job_type": "hello_world", "input_params": {}}]', id="array-of-object"),
    pytest.param(b'"a string"', id="string"),
    pytest.param(b"42", id="number"),
    pytest.param(b"null", id="null"),
    pytest.param(b"true", id="bool"),
    pytest.param(b"", id="empty"),
    pytest.param(b"   ", id="whitespace"),
]


@pytest.mark.parametrize("route", BODY_ROUTES)
@pytest.mark.parametrize("raw", BAD_BODIES)
async def test_body_that_is_not_a_json_object_is_400(
    client: TestClient, world: World, route: str, raw: bytes
) -> None:
    path, headers = body_route(route, world)
    before = await snapshot(client)
    resp = await client.post(
        path, data=raw, headers={**headers, "Content-Type": "application/json"}
    )
    await assert_error(resp, 400)
    assert await snapshot(client) == before


# --- submit and check: field validation --------------------------------------------------


@pytest.mark.parametrize("path", SUBMIT_PATHS)
@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"input_params": {"a": 1}}, id="missing"),
        pytest.param({"job_type": "", "input_params": {"a": 1}}, id="empty"),
        pytest.param({"job_type": None, "input_params": {"a": 1}}, id="null"),
        pytest.param({"job_type": 7, "input_params": {"a": 1}}, id="number"),
        pytest.param({"job_type": ["hello_world"], "input_params": {"a": 1}}, id="array"),
        pytest.param({"job_type": {"t": "x"}, "input_params": {"a": 1}}, id="object"),
        pytest.param({"job_type": True, "input_params": {"a": 1}}, id="bool"),
    ],
)
async def test_bad_job_type(client: TestClient, path: str, body: dict[str, Any]) -> None:
    before = await snapshot(client)
    resp = await client.post(path, json=body, headers=SUBMIT)
    await assert_error(resp, 400, JOB_TYPE_BAD)
    assert await snapshot(client) == before


@pytest.mark.parametrize("path", SUBMIT_PATHS)
@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"job_type": "hello_world"}, id="missing"),
        pytest.param({"job_type": "hello_world", "input_params": None}, id="null"),
        # Deliberate difference 1: the original let arrays through.
        pytest.param({"job_type": "hello_world", "input_params": [1, 2]}, id="array"),
        pytest.param({"job_type": "hello_world", "input_params": []}, id="empty-array"),
        pytest.param({"job_type": "hello_world", "input_params": "name=Ada"}, id="string"),
        pytest.param({"job_type": "hello_world", "input_params": 5}, id="number"),
        pytest.param({"job_type": "hello_world", "input_params": 0}, id="zero"),
        pytest.param({"job_type": "hello_world", "input_params": False}, id="false"),
        pytest.param({"job_type": "hello_world", "input_params": True}, id="true"),
    ],
)
async def test_bad_input_params(client: TestClient, path: str, body: dict[str, Any]) -> None:
    before = await snapshot(client)
    resp = await client.post(path, json=body, headers=SUBMIT)
    await assert_error(resp, 400, PARAMS_BAD)
    assert await snapshot(client) == before


async def test_params_at_the_limit_are_accepted(client: TestClient) -> None:
    params = params_of_size(PARAMS_LIMIT)
    resp = await post_json(
        client, "/api/jobs/submit", {"job_type": "big", "input_params": params}, SUBMIT
    )
    assert resp.status == 201, await resp.text()


@pytest.mark.parametrize("path", SUBMIT_PATHS)
async def test_params_one_byte_over_the_limit(client: TestClient, path: str) -> None:
    params = params_of_size(PARAMS_LIMIT + 1)
    before = await snapshot(client)
    resp = await post_json(client, path, {"job_type": "big", "input_params": params}, SUBMIT)
    await assert_error(resp, 400, PARAMS_TOO_BIG)
    assert await snapshot(client) == before


async def test_params_size_counts_utf8_bytes_not_characters(client: TestClient) -> None:
    # 40,000 * "é" is 80,000 bytes: under the limit.
    resp = await post_json(
        client,
        "/api/jobs/submit",
        {"job_type": "accents", "input_params": {"s": "é" * 40_000}},
        SUBMIT,
    )
    assert resp.status == 201, await resp.text()
    before = await snapshot(client)
    # 60,000 * "é" is 60,000 characters but 120,000 bytes: over the limit.
    for path in SUBMIT_PATHS:
        resp = await post_json(
            client,
            path,
            {"job_type": "accents", "input_params": {"s": "é" * 60_000}},
            SUBMIT,
        )
        await assert_error(resp, 400, PARAMS_TOO_BIG)
    # A 4-byte character (outside the BMP) counts as 4 bytes, not 2 UTF-16 units.
    resp = await post_json(
        client,
        "/api/jobs/submit",
        {"job_type": "emoji", "input_params": {"s": "😀" * 30_000}},
        SUBMIT,
    )
    await assert_error(resp, 400, PARAMS_TOO_BIG)
    assert await snapshot(client) == before


@pytest.mark.parametrize("path", SUBMIT_PATHS)
@pytest.mark.parametrize(
    ("body", "error"),
    [
        # Size is checked first: it wins over a missing or bad job_type.
        pytest.param({"input_params": params_of_size(PARAMS_LIMIT + 2)}, PARAMS_TOO_BIG, id="size"),
        pytest.param(
            {"job_type": 5, "input_params": params_of_size(PARAMS_LIMIT + 2)},
            PARAMS_TOO_BIG,
            id="size-before-type",
        ),
        # An oversized array is still oversized: size before the object check.
        pytest.param(
            {"job_type": "x", "input_params": ["a" * PARAMS_LIMIT]},
            PARAMS_TOO_BIG,
            id="size-before-object-check",
        ),
        # Then the job type, before the params' shape.
        pytest.param({"job_type": "", "input_params": [1, 2]}, JOB_TYPE_BAD, id="type-first"),
        pytest.param({}, JOB_TYPE_BAD, id="empty-object"),
        pytest.param({"job_type": "x", "input_params": "s"}, PARAMS_BAD, id="then-params"),
    ],
)
async def test_validation_order(
    client: TestClient, path: str, body: dict[str, Any], error: str
) -> None:
    before = await snapshot(client)
    resp = await post_json(client, path, body, SUBMIT)
    await assert_error(resp, 400, error)
    assert await snapshot(client) == before


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"force": "yes"}, id="force-string"),
        pytest.param({"force": 1}, id="force-int"),
        pytest.param({"force": [True]}, id="force-array"),
        pytest.param({"priority": "1"}, id="priority-string"),
        pytest.param({"priority": 1.5}, id="priority-float"),
        pytest.param({"priority": True}, id="priority-bool"),
        pytest.param({"priority": None}, id="priority-null"),
        pytest.param({"priority": 10**30}, id="priority-huge"),
    ],
)
async def test_bad_force_or_priority(client: TestClient, extra: dict[str, Any]) -> None:
    before = await snapshot(client)
    resp = await client.post(
        "/api/jobs/submit",
        json={"job_type": "hello_world", "input_params": {"name": "Ada"}, **extra},
        headers=SUBMIT,
    )
    await assert_error(resp, 400)
    assert await snapshot(client) == before


async def test_bad_force_does_not_requeue_a_failed_job(client: TestClient) -> None:
    job_id = (await submit(client, name="doomed"))["job_id"]
    runner = await register(client)
    await claim(client, runner, job_id)
    resp = await client.post(
        f"/api/runner/jobs/{job_id}/error",
        json={"error_message": "boom", "console_output": ""},
        headers=as_runner(runner),
    )
    assert resp.status == 200
    before = await snapshot(client)
    resp = await client.post(
        "/api/jobs/submit",
        json={"job_type": "hello_world", "input_params": {"name": "doomed"}, "force": "true"},
        headers=SUBMIT,
    )
    await assert_error(resp, 400)
    assert await snapshot(client) == before
    assert (await job_detail(client, job_id))["status"] == "failed"


# --- request bodies beyond max_body_bytes -------------------------------------------------


async def test_oversized_body_is_413_and_stores_nothing(make_client: MakeClient) -> None:
    client: TestClient = await make_client(max_body_bytes=10_000)
    before = await snapshot(client)
    for path in SUBMIT_PATHS:
        resp = await post_json(
            client,
            path,
            {"job_type": "big", "input_params": {"s": "a" * 20_000}},
            SUBMIT,
        )
        await assert_error(resp, 413)
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert await snapshot(client) == before
    # The same server still takes a normal request.
    assert (await submit(client))["status"] == "pending"


async def test_oversized_runner_body_is_413_and_job_stays_claimed(
    make_client: MakeClient,
) -> None:
    client: TestClient = await make_client(max_body_bytes=10_000)
    job_id = (await submit(client))["job_id"]
    runner = await register(client)
    await claim(client, runner, job_id)
    before = await snapshot(client)
    for action, body in [
        ("heartbeat", {"console_output": "x" * 20_000}),
        ("complete", {"output_data": {"s": "x" * 20_000}}),
        ("error", {"error_message": "x" * 20_000}),
    ]:
        resp = await post_json(
            client, f"/api/runner/jobs/{job_id}/{action}", body, as_runner(runner)
        )
        await assert_error(resp, 413)
    assert await snapshot(client) == before
    assert (await job_detail(client, job_id))["status"] == "claimed"


# --- runner payload limits and shapes --------------------------------------------------------


async def test_output_at_the_limit_completes(client: TestClient, world: World) -> None:
    resp = await post_json(
        client,
        f"/api/runner/jobs/{world.claimed}/complete",
        {"output_data": params_of_size(OUTPUT_LIMIT), "console_output": ""},
        as_runner(world.owner),
    )
    assert resp.status == 200, await resp.text()
    assert (await job_detail(client, world.claimed))["status"] == "completed"


@pytest.mark.parametrize(
    "output",
    [
        pytest.param(params_of_size(OUTPUT_LIMIT + 2), id="ascii"),
        # 300,000 * "é": 300,000 characters, 600,000 bytes.
        pytest.param({"s": "é" * 300_000}, id="multi-byte"),
    ],
)
async def test_output_over_the_limit_keeps_the_job_claimed(
    client: TestClient, world: World, output: dict[str, Any]
) -> None:
    before = await snapshot(client)
    resp = await post_json(
        client,
        f"/api/runner/jobs/{world.claimed}/complete",
        {"output_data": output, "console_output": "done"},
        as_runner(world.owner),
    )
    await assert_error(resp, 400, OUTPUT_TOO_BIG)
    assert await snapshot(client) == before
    assert (await job_detail(client, world.claimed))["status"] == "claimed"


@pytest.mark.parametrize("action", ["heartbeat", "complete", "error"])
@pytest.mark.parametrize(
    "console",
    [
        pytest.param("x" * (CONSOLE_LIMIT + 1), id="ascii"),
        # 600,000 characters, 1,200,000 bytes.
        pytest.param("é" * 600_000, id="multi-byte"),
    ],
)
async def test_console_over_the_limit(
    client: TestClient, world: World, action: str, console: str
) -> None:
    body: dict[str, Any] = {"console_output": console}
    if action == "complete":
        body["output_data"] = {"ok": True}
    if action == "error":
        body["error_message"] = "boom"
    before = await snapshot(client)
    resp = await post_json(
        client, f"/api/runner/jobs/{world.claimed}/{action}", body, as_runner(world.owner)
    )
    await assert_error(resp, 400, CONSOLE_TOO_BIG)
    assert await snapshot(client) == before


async def test_console_at_the_limit_is_accepted(client: TestClient, world: World) -> None:
    resp = await post_json(
        client,
        f"/api/runner/jobs/{world.claimed}/heartbeat",
        {"console_output": "x" * CONSOLE_LIMIT},
        as_runner(world.owner),
    )
    assert resp.status == 200, await resp.text()
    detail = await job_detail(client, world.claimed)
    assert detail["status"] == "in_progress"
    assert len(detail["console_output"]) == CONSOLE_LIMIT


@pytest.mark.parametrize(
    "message",
    [
        pytest.param("e" * (ERROR_LIMIT + 1), id="ascii"),
        # 6,000 characters, 12,000 bytes.
        pytest.param("é" * 6_000, id="multi-byte"),
    ],
)
async def test_error_message_over_the_limit(client: TestClient, world: World, message: str) -> None:
    before = await snapshot(client)
    resp = await post_json(
        client,
        f"/api/runner/jobs/{world.claimed}/error",
        {"error_message": message, "console_output": ""},
        as_runner(world.owner),
    )
    await assert_error(resp, 400, ERROR_TOO_BIG)
    assert await snapshot(client) == before
    assert (await job_detail(client, world.claimed))["status"] == "claimed"


async def test_error_message_at_the_limit_fails_the_job(client: TestClient, world: World) -> None:
    resp = await post_json(
        client,
        f"/api/runner/jobs/{world.claimed}/error",
        {"error_message": "e" * ERROR_LIMIT},
        as_runner(world.owner),
    )
    assert resp.status == 200, await resp.text()
    assert (await job_detail(client, world.claimed))["status"] == "failed"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"console_output": "done"}, id="missing"),
        pytest.param({"output_data": None}, id="null"),
        pytest.param({"output_data": [1, 2]}, id="array"),
        pytest.param({"output_data": "result"}, id="string"),
        pytest.param({"output_data": 3}, id="number"),
        pytest.param({"output_data": True}, id="bool"),
    ],
)
async def test_bad_output_data(client: TestClient, world: World, body: dict[str, Any]) -> None:
    before = await snapshot(client)
    resp = await client.post(
        f"/api/runner/jobs/{world.claimed}/complete", json=body, headers=as_runner(world.owner)
    )
    await assert_error(resp, 400)
    assert await snapshot(client) == before


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"progress_current": "1", "progress_total": 10}, id="current-string"),
        pytest.param({"progress_current": True, "progress_total": 10}, id="current-bool"),
        pytest.param({"progress_current": 1.5, "progress_total": 10}, id="current-float"),
        pytest.param({"progress_current": [1], "progress_total": 10}, id="current-array"),
        pytest.param({"progress_current": 1, "progress_total": "10"}, id="total-string"),
        pytest.param({"progress_current": 1, "progress_total": False}, id="total-bool"),
        pytest.param({"progress_current": 1, "progress_total": 2.5}, id="total-float"),
        pytest.param({"progress_current": 10**30, "progress_total": 10}, id="current-huge"),
        pytest.param({"console_output": 5}, id="console-number"),
        pytest.param({"console_output": ["line"]}, id="console-array"),
    ],
)
async def test_bad_heartbeat_fields(client: TestClient, world: World, body: dict[str, Any]) -> None:
    before = await snapshot(client)
    resp = await client.post(
        f"/api/runner/jobs/{world.claimed}/heartbeat", json=body, headers=as_runner(world.owner)
    )
    await assert_error(resp, 400)
    assert await snapshot(client) == before
    assert (await job_detail(client, world.claimed))["status"] == "claimed"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"console_output": "log"}, id="missing"),
        pytest.param({"error_message": None}, id="null"),
        pytest.param({"error_message": 500}, id="number"),
        pytest.param({"error_message": ["boom"]}, id="array"),
        pytest.param({"error_message": {"msg": "boom"}}, id="object"),
    ],
)
async def test_bad_error_message(client: TestClient, world: World, body: dict[str, Any]) -> None:
    before = await snapshot(client)
    resp = await client.post(
        f"/api/runner/jobs/{world.claimed}/error", json=body, headers=as_runner(world.owner)
    )
    await assert_error(resp, 400)
    assert await snapshot(client) == before
    assert (await job_detail(client, world.claimed))["status"] == "claimed"


@pytest.mark.parametrize("action", ["complete", "error"])
async def test_console_not_a_string(client: TestClient, world: World, action: str) -> None:
    body: dict[str, Any] = {"console_output": {"lines": []}}
    if action == "complete":
        body["output_data"] = {}
    else:
        body["error_message"] = "boom"
    before = await snapshot(client)
    resp = await client.post(
        f"/api/runner/jobs/{world.claimed}/{action}", json=body, headers=as_runner(world.owner)
    )
    await assert_error(resp, 400)
    assert await snapshot(client) == before


# --- unknown job ids ---------------------------------------------------------------------------


@pytest.mark.parametrize("job_id", UNKNOWN_JOB_IDS)
async def test_unknown_job_on_client_and_admin_routes(
    client: TestClient, world: World, job_id: str
) -> None:
    before = await snapshot(client)
    resp = await client.get(f"/api/jobs/{job_id}", headers=SUBMIT)
    await assert_error(resp, 404, body={"error": "Job not found"})
    resp = await client.get(f"/api/admin/jobs/{job_id}")
    await assert_error(resp, 404, body={"error": "Job not found"})
    resp = await client.delete(f"/api/admin/jobs/{job_id}", headers=ADMIN)
    await assert_error(resp, 404, body={"error": "Job not found"})
    assert await snapshot(client) == before


@pytest.mark.parametrize("job_id", UNKNOWN_JOB_IDS)
async def test_unknown_job_on_runner_routes(client: TestClient, world: World, job_id: str) -> None:
    headers = as_runner(world.owner)
    before = await snapshot(client)
    resp = await client.post(f"/api/runner/jobs/{job_id}/claim", headers=headers)
    await assert_error(resp, 409, body=CLAIM_LOST)
    for action, body in [
        ("heartbeat", {"progress_current": 1, "progress_total": 2, "console_output": "x"}),
        ("complete", {"output_data": {"ok": True}, "console_output": "x"}),
        ("error", {"error_message": "boom", "console_output": "x"}),
    ]:
        resp = await client.post(f"/api/runner/jobs/{job_id}/{action}", json=body, headers=headers)
        await assert_error(resp, 400, body=NOT_OWNED)
    assert await snapshot(client) == before


async def test_batch_delete_of_unknown_ids_deletes_nothing(
    client: TestClient, world: World
) -> None:
    ids = [str(uuid.uuid4()), "not-a-uuid", "../../etc/passwd", world.pending.upper()]
    before = await snapshot(client)
    resp = await client.post("/api/admin/jobs/batch-delete", json={"job_ids": ids}, headers=ADMIN)
    assert resp.status == 200
    assert await resp.json() == {
        "success": False,
        "deleted": 0,
        "failed": ids,
        "message": f"Deleted 0 of {len(ids)} jobs",
    }
    assert await snapshot(client) == before


@pytest.mark.parametrize(
    ("body", "error"),
    [
        pytest.param({}, "Invalid request body. Expected { job_ids: string[] }", id="missing"),
        pytest.param(
            {"job_ids": "abc"}, "Invalid request body. Expected { job_ids: string[] }", id="string"
        ),
        pytest.param(
            {"job_ids": [1, 2]}, "Invalid request body. Expected { job_ids: string[] }", id="ints"
        ),
        pytest.param(
            {"job_ids": None}, "Invalid request body. Expected { job_ids: string[] }", id="null"
        ),
        pytest.param({"job_ids": []}, "No job IDs provided", id="empty"),
    ],
)
async def test_bad_batch_delete(
    client: TestClient, world: World, body: dict[str, Any], error: str
) -> None:
    before = await snapshot(client)
    resp = await client.post("/api/admin/jobs/batch-delete", json=body, headers=ADMIN)
    await assert_error(resp, 400, error)
    assert await snapshot(client) == before


# --- unknown runners ------------------------------------------------------------------------

UNKNOWN_RUNNER_IDS = [
    pytest.param(str(uuid.uuid4()), id="fresh-uuid"),
    pytest.param("garbage runner", id="garbage"),
    pytest.param("../../etc/passwd", id="path-ish"),
]


@pytest.mark.parametrize("runner_id", UNKNOWN_RUNNER_IDS)
async def test_unknown_runner_is_404(client: TestClient, world: World, runner_id: str) -> None:
    headers = as_runner(runner_id)
    before = await snapshot(client)
    resp = await client.get("/api/runner/jobs/available?types[]=hello_world", headers=headers)
    await assert_error(resp, 404)
    resp = await client.post(f"/api/runner/jobs/{world.pending}/claim", headers=headers)
    await assert_error(resp, 404)
    for job_id in (world.pending, world.claimed):
        resp = await client.post(
            f"/api/runner/jobs/{job_id}/heartbeat",
            json={"progress_current": 1, "progress_total": 2, "console_output": "x"},
            headers=headers,
        )
        await assert_error(resp, 404)
        resp = await client.post(
            f"/api/runner/jobs/{job_id}/complete",
            json={"output_data": {"stolen": True}, "console_output": "x"},
            headers=headers,
        )
        await assert_error(resp, 404)
        resp = await client.post(
            f"/api/runner/jobs/{job_id}/error",
            json={"error_message": "sabotage"},
            headers=headers,
        )
        await assert_error(resp, 404)
    assert await snapshot(client) == before
    assert (await job_detail(client, world.pending))["status"] == "pending"
    assert (await job_detail(client, world.claimed))["claimed_by"] == world.owner


async def test_unknown_runner_on_verify(client: TestClient) -> None:
    resp = await client.get("/api/runner/verify", headers=as_runner(str(uuid.uuid4())))
    await assert_error(resp, 404, body={"exists": False, "message": "Runner not found"})


# --- ownership and final states ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "body"),
    [
        ("complete", {"output_data": {"stolen": True}, "console_output": "mine"}),
        ("error", {"error_message": "sabotage", "console_output": "mine"}),
        ("heartbeat", {"progress_current": 1, "progress_total": 2, "console_output": "mine"}),
    ],
)
async def test_runner_cannot_touch_a_job_it_does_not_own(
    client: TestClient, world: World, action: str, body: dict[str, Any]
) -> None:
    before = await snapshot(client)
    for job_id in (world.claimed, world.pending):
        resp = await client.post(
            f"/api/runner/jobs/{job_id}/{action}", json=body, headers=as_runner(world.other)
        )
        await assert_error(resp, 400, body=NOT_OWNED)
    assert await snapshot(client) == before
    detail = await job_detail(client, world.claimed)
    assert detail["status"] == "claimed"
    assert detail["claimed_by"] == world.owner
    assert "output_data" not in detail


async def test_claiming_a_claimed_job_is_409(client: TestClient, world: World) -> None:
    """Another runner's claim is refused. (Its holder repeating the claim gets the job
    again: tests/test_api_runner.py.)"""
    before = await snapshot(client)
    resp = await client.post(
        f"/api/runner/jobs/{world.claimed}/claim", headers=as_runner(world.other)
    )
    await assert_error(resp, 409, body=CLAIM_LOST)
    assert await snapshot(client) == before


async def test_complete_after_error_is_400_and_job_stays_failed(
    client: TestClient, world: World
) -> None:
    headers = as_runner(world.owner)
    resp = await client.post(
        f"/api/runner/jobs/{world.claimed}/error",
        json={"error_message": "boom", "console_output": "trace"},
        headers=headers,
    )
    assert resp.status == 200
    before = await snapshot(client)
    resp = await client.post(
        f"/api/runner/jobs/{world.claimed}/complete",
        json={"output_data": {"late": True}, "console_output": "late"},
        headers=headers,
    )
    await assert_error(resp, 400, body=NOT_OWNED)
    resp = await client.post(
        f"/api/runner/jobs/{world.claimed}/heartbeat",
        json={"progress_current": 1, "progress_total": 2, "console_output": "late"},
        headers=headers,
    )
    await assert_error(resp, 400, body=NOT_OWNED)
    assert await snapshot(client) == before
    detail = await job_detail(client, world.claimed)
    assert detail["status"] == "failed"
    assert detail["error_message"] == "boom"
    assert "output_data" not in detail


async def test_error_after_complete_is_400_and_job_stays_completed(
    client: TestClient, world: World
) -> None:
    headers = as_runner(world.owner)
    resp = await client.post(
        f"/api/runner/jobs/{world.claimed}/complete",
        json={"output_data": {"ok": True}, "console_output": "done"},
        headers=headers,
    )
    assert resp.status == 200
    before = await snapshot(client)
    resp = await client.post(
        f"/api/runner/jobs/{world.claimed}/error",
        json={"error_message": "late"},
        headers=headers,
    )
    await assert_error(resp, 400, body=NOT_OWNED)
    assert await snapshot(client) == before
    assert (await job_detail(client, world.claimed))["status"] == "completed"


# --- registration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"capabilities": ["hello_world"]}, id="missing-name"),
        pytest.param({"name": "r"}, id="missing-capabilities"),
        pytest.param({"name": "r", "capabilities": "hello_world"}, id="capabilities-string"),
        pytest.param({"name": "r", "capabilities": {"a": 1}}, id="capabilities-object"),
        pytest.param({"name": "r", "capabilities": None}, id="capabilities-null"),
        pytest.param({"name": "r", "capabilities": [1, 2]}, id="capabilities-ints"),
        pytest.param({"name": 5, "capabilities": []}, id="name-number"),
        pytest.param({"name": None, "capabilities": []}, id="name-null"),
        pytest.param({"name": "", "capabilities": []}, id="name-empty"),
    ],
)
async def test_bad_registration(client: TestClient, world: World, body: dict[str, Any]) -> None:
    before = await snapshot(client)
    resp = await client.post("/api/runner/register", json=body, headers=RUNNER)
    await assert_error(resp, 400, "Invalid registration data")
    assert await snapshot(client) == before


async def test_registration_with_empty_capabilities_is_fine(client: TestClient) -> None:
    resp = await client.post(
        "/api/runner/register", json={"name": "idle", "capabilities": []}, headers=RUNNER
    )
    assert resp.status == 201


# --- admin query parameters ----------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("limit=abc", id="limit-text"),
        pytest.param("limit=-1", id="limit-negative"),
        pytest.param("limit=0", id="limit-zero"),
        pytest.param("limit=99999999999999999999", id="limit-huge"),
        pytest.param("offset=-5", id="offset-negative"),
        pytest.param("status=bogus", id="status-unknown"),
    ],
)
async def test_bad_admin_list_query(client: TestClient, query: str) -> None:
    resp = await client.get(f"/api/admin/jobs?{query}", headers=ADMIN)
    await assert_error(resp, 400)


# --- deeply nested JSON ------------------------------------------------------------------------

MAX_DEPTH = 100


def nested(depth: int) -> dict[str, Any]:
    """An object ``depth`` levels deep: ``{"v": [[...[1]...]]}`` with ``depth - 1`` arrays."""
    value: Any = 1
    for _ in range(depth - 1):
        value = [value]
    return {"v": value}


def nested_json(depth: int) -> str:
    """``nested(depth)`` as JSON text, built without a recursive encoder."""
    return '{"v":' + "[" * (depth - 1) + "1" + "]" * (depth - 1) + "}"


async def test_params_nested_to_the_limit_work_end_to_end(client: TestClient) -> None:
    resp = await client.post(
        "/api/jobs/submit",
        json={"job_type": "deep", "input_params": nested(MAX_DEPTH)},
        headers=SUBMIT,
    )
    assert resp.status == 201, await resp.text()
    job_id = (await resp.json())["job_id"]
    assert (await job_detail(client, job_id))["input_params"] == nested(MAX_DEPTH)
    runner = await register(client, caps=["deep"])
    resp = await client.get("/api/runner/jobs/available?types[]=deep", headers=as_runner(runner))
    assert resp.status == 200
    assert (await resp.json())["jobs"][0]["input_params"] == nested(MAX_DEPTH)
    claimed = await claim(client, runner, job_id)
    assert claimed["job"]["input_params"] == nested(MAX_DEPTH)
    resp = await client.post(
        f"/api/runner/jobs/{job_id}/complete",
        json={"output_data": nested(MAX_DEPTH)},
        headers=as_runner(runner),
    )
    assert resp.status == 200, await resp.text()
    resp = await client.get(f"/api/jobs/{job_id}", headers=SUBMIT)
    assert resp.status == 200
    assert (await resp.json())["result"]["output_data"] == nested(MAX_DEPTH)


@pytest.mark.parametrize("path", SUBMIT_PATHS)
@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 300, 1000])
async def test_params_nested_too_deeply(client: TestClient, path: str, depth: int) -> None:
    # Stored, such a job would fail every later read (the JSON encoder stops at 254
    # levels, the hashing recursion near 1000): a poison job for every runner.
    before = await snapshot(client)
    raw = f'{{"job_type":"deep","input_params":{nested_json(depth)}}}'.encode()
    resp = await client.post(path, data=raw, headers={**SUBMIT, "Content-Type": "application/json"})
    await assert_error(resp, 400, "Input parameters are nested too deeply")
    assert await snapshot(client) == before


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 300, 1000])
async def test_output_nested_too_deeply(client: TestClient, world: World, depth: int) -> None:
    before = await snapshot(client)
    resp = await client.post(
        f"/api/runner/jobs/{world.claimed}/complete",
        data=f'{{"output_data":{nested_json(depth)}}}'.encode(),
        headers={**as_runner(world.owner), "Content-Type": "application/json"},
    )
    await assert_error(resp, 400, "Output JSON is nested too deeply")
    assert await snapshot(client) == before
    assert (await job_detail(client, world.claimed))["status"] == "claimed"


async def test_json_deeper_than_the_parser_allows(client: TestClient) -> None:
    raw = b'{"job_type":"x","input_params":' + b"[" * 5000 + b"]" * 5000 + b"}"
    resp = await client.post(
        "/api/jobs/submit", data=raw, headers={**SUBMIT, "Content-Type": "application/json"}
    )
    await assert_error(resp, 400)
