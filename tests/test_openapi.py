"""The OpenAPI description at /api/openapi.json: it names exactly the router's routes
with the security and error statuses their policies declare (a route added with a
policy is described without a second declaration), it is valid OpenAPI 3.1, its
answers are the handlers' typed models, and the server keeps to it when
schemathesis fuzzes every operation (bounded, deterministic examples): no 500, no
undocumented status, content type or body.

The fuzzed server runs in a thread on a loopback port (schemathesis speaks HTTP
through requests; aiohttp is neither WSGI nor ASGI), once on SQLite and once on
PostgreSQL, which refuses what SQLite takes (a NUL in text).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from runpack import protocol
from runpack.api import views
from runpack.api.common import policy, policy_of
from runpack.api.openapi import document, is_implied_head
from runpack.api.openapi_models import MESSAGES, MODELS, message
from runpack.api.openapi_operations import OPERATIONS
from runpack.api.openapi_schemas import SCHEMAS, SECURITY
from runpack.app import create_app
from runpack.errors import Conflict, JobNotFound
from runpack.protocol import Role
from runpack.protocol.fields import about
from runpack.settings import Settings
from tests.conftest import ADMIN_KEY, RUNNER_KEY, SUBMIT_KEY, _empty_tables, _run

#: What the route table holds for ``add_route("*", …)``: the methods documented.
ANY_METHOD = ("GET", "POST", "PUT", "PATCH", "DELETE")
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES = 25
#: Operations whose cases need a job held by the fuzzing runner.
HELD = ("heartbeat", "complete", "error", "release", "files")
KEY_OF_SCHEME = {"submitKey": SUBMIT_KEY, "runnerKey": RUNNER_KEY, "adminKey": ADMIN_KEY}
#: A figure upload is a tar archive: sent as the raw bytes generated.
schemathesis.serializer.alias("application/x-tar", "application/octet-stream")


def _settings(tmp: Path) -> Settings:
    return Settings(
        db=str(tmp / "runpack.db"),
        data_dir=str(tmp / "data"),
        submit_api_key=SUBMIT_KEY,
        runner_api_key=RUNNER_KEY,
        admin_api_key=ADMIN_KEY,
        sweep_interval=3600.0,
        rate_new_jobs=0,
        rate_key_new_jobs=0,
        rate_requests=0,
        rate_available=0,
        rate_heartbeat=0,
        rate_registrations=0,
    )


#: The document of an app with the settings the fuzzed server runs with (the app is
#: only built: nothing is opened or written).
DOCUMENT = document(create_app(_settings(Path("openapi-unused"))))
SCHEMA = schemathesis.openapi.from_dict(DOCUMENT)
#: Streams end after their first event (a snapshot, or a reset for the admin stream).
SCHEMA.config.max_stream_events = 1
SCHEMA.config.request_timeout = 10


def _spec_operations(doc: dict[str, Any] = DOCUMENT) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def _router_operations(app: web.Application) -> dict[tuple[str, str], Any]:
    """(method, path template) → handler; OPTIONS is the middleware's, a HEAD beside its
    GET aiohttp's own."""
    ops = {}
    for route in app.router.routes():
        if is_implied_head(route):
            continue
        methods = ANY_METHOD if route.method == "*" else (route.method,)
        for method in methods:
            ops[(method, route.resource.canonical)] = route.handler  # type: ignore[union-attr]
    return ops


def test_every_route_is_documented_and_every_operation_routed(tmp_path: Path) -> None:
    app = create_app(_settings(tmp_path))
    routed = set(_router_operations(app))
    documented = _spec_operations(document(app))
    assert not routed - documented, (
        f"routes missing from the OpenAPI description: {routed - documented}"
    )
    assert not documented - routed, f"documented but not routed: {documented - routed}"
    # No prose for a route that does not exist ("*": a route for any method).
    any_method = {(m, p) for (m, p) in OPERATIONS if m == "*"}
    assert any_method <= {("*", p) for (_, p) in routed}
    assert not set(OPERATIONS) - any_method - routed


def _assert_states_its_policy(doc: dict[str, Any], app: web.Application) -> None:
    paths = doc["paths"]
    for (method, path), handler in _router_operations(app).items():
        route_policy = policy_of(handler)
        op = paths[path][method.lower()]
        label = f"{method} {path}"
        if route_policy is None:
            assert op["security"] == [], label
            continue
        assert op["security"] == SECURITY[route_policy.role], label
        statuses = set(op["responses"])
        assert ("429" in statuses) == (route_policy.bucket is not None), label
        keyed = route_policy.role != Role.PUBLIC
        assert ("401" in statuses) == keyed and ("403" in statuses) == keyed, label
        assert {"500", "503"} <= statuses, label
        assert {str(error.status) for error in route_policy.errors} <= statuses, label
        params = [p.get("$ref", p.get("name")) for p in op.get("parameters", [])]
        if route_policy.runner_header:
            assert "#/components/parameters/RunnerId" in params, label
            assert {"400", "404"} <= statuses, label
        if "requestBody" in op:
            assert {"400", "413"} <= statuses, label
        for status in op["responses"]:
            assert status == "default" or 100 <= int(status) < 600, label
        for status, reply in op["responses"].items():
            if int(status) >= 400 and reply.get("content"):
                schema = reply["content"]["application/json"]["schema"]
                refs = [s["$ref"] for s in schema.get("anyOf", [schema]) if "$ref" in s]
                assert refs, label  # the shared error shape, or the original's fixed one


def test_each_operation_states_its_routes_policy(tmp_path: Path) -> None:
    """Security, 401/403, 429, X-Runner-ID and the declared errors in the description
    follow each route's policy, whatever the settings choose as the route's handler."""
    for public in (False, True):
        app = create_app(_settings(tmp_path).replace(metrics_public=public))
        doc = document(app)
        _assert_states_its_policy(doc, app)
        assert bool(doc["paths"]["/metrics"]["get"]["security"]) is not public


def test_a_route_added_with_a_policy_is_described_without_a_second_declaration(
    tmp_path: Path,
) -> None:
    @policy(Role.ADMIN, bucket="submit", errors=(JobNotFound, Conflict))
    async def undo(request: web.Request) -> web.Response:
        """Undo a job's last change"""
        raise NotImplementedError

    app = create_app(_settings(tmp_path))
    app.router.add_post("/api/admin/jobs/{job_id}/undo", undo)
    doc = document(app)
    op = doc["paths"]["/api/admin/jobs/{job_id}/undo"]["post"]
    assert op["summary"] == "Undo a job's last change"
    assert op["security"] == SECURITY[Role.ADMIN]
    assert sorted(op["responses"]) == ["401", "403", "404", "409", "429", "500", "503"]
    assert op["responses"]["404"]["description"] == "Job not found."
    assert [p["name"] for p in op["parameters"]] == ["job_id"]
    _assert_states_its_policy(doc, app)
    validate(doc)


def test_answers_are_described_by_the_handlers_typed_models() -> None:
    """The models the handlers build are the document's schemas, field for field."""
    for model in MODELS:
        schema = SCHEMAS[model.__name__]
        assert set(schema["properties"]) == set(model.__annotations__) | {
            name for base in model.__mro__[1:] for name in getattr(base, "__annotations__", {})
        }
    job = SCHEMAS["Job"]
    assert job["properties"]["status"] == {"$ref": "#/components/schemas/JobStatus"}
    assert {"progress", "output_data", "error_message"}.isdisjoint(job["required"])
    assert job["properties"]["claimed_at"]["type"] == ["integer", "null"]
    answers = DOCUMENT["paths"]["/api/jobs/submit"]["post"]["responses"]
    assert answers["201"]["content"]["application/json"]["schema"]["$ref"].endswith(
        views.SubmitAnswer.__name__
    )


#: Each message with every field set, as a runner or the server sends it over HTTP.
SENT: dict[str, Any] = {
    "AssignedJob": protocol.Assignment("j", "t", {"a": 1}, 2, 1.5).body(),
    "Heartbeat": protocol.Heartbeat("j", 1, 2, "out", "more").body(),
    "Completion": protocol.Complete("j", {"a": 1}, "out").body(),
    "Failure": protocol.Failure("j", "boom", "out", retryable=True).body(),
    "Release": protocol.Release("j", "busy").body(),
    "Registration": protocol.Registration(
        "r", ["container"], True, {"container": "2"}, ["lab/tool@*"]
    ).body(),
    "Registered": protocol.Registered("r", runner_secret="s").body(),
}

#: Required as the hand-written schemas had them: the fields without a default, and
#: an assignment's attempt and a registration's message (always sent).
REQUIRED: dict[str, list[str]] = {
    "AssignedJob": ["job_id", "job_type", "input_params", "attempt"],
    "Heartbeat": [],
    "Completion": ["output_data"],
    "Failure": ["error_message"],
    "Release": [],
    "Registration": ["name", "capabilities"],
    "Registered": ["runner_id", "message"],
}


def test_runner_bodies_are_described_by_the_protocol_messages() -> None:
    """The report bodies and the assignment are runpack.protocol's classes, field for
    field: what the sender writes is what the document names, a field without a
    default is required, and a field added to a class shows up in the document."""
    assert set(MESSAGES) == set(SENT)
    for name, cls in MESSAGES.items():
        schema = SCHEMAS[name]
        assert DOCUMENT["components"]["schemas"][name] == schema
        assert set(schema["properties"]) == set(SENT[name]), name
        assert "type" not in schema["properties"]  # the frame's type is not in the body
        assert schema.get("required", []) == REQUIRED[name], name
        grown = dataclasses.make_dataclass(
            name,
            [("note", str | None, dataclasses.field(default=None, metadata=about("A note.")))],
            bases=(cls,),
        )
        assert message(grown)["properties"] == {
            **schema["properties"],
            "note": {"type": ["string", "null"], "description": "A note."},
        }
    heartbeat = SCHEMAS["Heartbeat"]["properties"]
    assert heartbeat["progress_current"] == {"type": ["integer", "null"]}
    assert SCHEMAS["Release"]["properties"]["reason"]["type"] == ["string", "null"]
    assert protocol.Release.read("j", {"reason": None}).reason == protocol.RELEASED_BY_RUNNER
    assert SCHEMAS["Failure"]["properties"]["retryable"]["type"] == "boolean"
    assert SCHEMAS["AssignedJob"]["properties"]["input_params"] == {"type": "object"}
    assert SCHEMAS["AssignedJob"]["properties"]["timeout"]["type"] == ["number", "null"]
    registration = SCHEMAS["Registration"]["properties"]
    assert registration["name"]["maxLength"] == protocol.MAX_NAME_CHARS
    assert registration["capabilities"]["maxItems"] == protocol.MAX_CAPABILITIES
    assert registration["capabilities"]["items"]["maxLength"] == protocol.MAX_NAME_CHARS
    assert SCHEMAS["Registered"]["properties"]["runner_secret"]["type"] == "string"


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = DOCUMENT
    assert doc["openapi"].startswith("3.1")
    validate(doc)
    labels = [result.ok().label for result in SCHEMA.get_all_operations()]
    assert len(labels) == len(_spec_operations())


class LiveServer:
    """The app on a loopback port, served by its own event loop in a thread."""

    def __init__(self, settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="openapi-server")
        self.runner = web.AppRunner(create_app(settings), shutdown_timeout=1.0)
        self.url = ""
        self.session = requests.Session()
        self.runner_id = ""
        #: Path parameters naming rows that exist, per operation.
        self.known: dict[str, dict[str, str]] = {}

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def start(self) -> None:
        self.thread.start()
        self._run(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self._run(site.start())
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        self.runner_id = self.call(
            "POST",
            "/api/runner/register",
            RUNNER_KEY,
            {"name": "fuzz", "capabilities": ["fuzz"]},
        )["runner_id"]

    def stop(self) -> None:
        self.session.close()
        self._run(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def call(self, method: str, path: str, key: str, body: Any = None, **headers: str) -> Any:
        headers["Authorization"] = f"Bearer {key}"
        resp = self.session.request(method, self.url + path, json=body, headers=headers, timeout=10)
        assert resp.status_code < 300, resp.text
        return resp.json()

    def new_job(self, tag: str, held: bool) -> str:
        """A fresh job, pending or claimed by the fuzzing runner."""
        body = {"job_type": "fuzz", "input_params": {"operation": tag, "n": uuid.uuid4().hex}}
        job_id: str = self.call("POST", "/api/jobs/submit", SUBMIT_KEY, body)["job_id"]
        if held:
            claim = f"/api/runner/jobs/{job_id}/claim"
            self.call("POST", claim, RUNNER_KEY, **{"X-Runner-ID": self.runner_id})
        return job_id


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    settings = _settings(tmp_path_factory.mktemp("openapi"))
    if request.param == "postgres":
        dsn: str = request.getfixturevalue("pg_session_dsn")
        _run(_empty_tables(dsn))
        settings = settings.replace(db=dsn)
    server = LiveServer(settings)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_the_document_is_served(live: LiveServer) -> None:
    resp = live.session.get(live.url + "/api/openapi.json", timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert resp.json() == DOCUMENT


def _headers(operation: Any, runner_id: str) -> dict[str, str]:
    """The key this operation's first security requirement names, and our runner's id."""
    headers = {}
    security = operation.definition.raw.get("security", [])
    if security:
        headers["Authorization"] = f"Bearer {KEY_OF_SCHEME[next(iter(security[0]))]}"
    if any(
        p.get("$ref", "").endswith("/RunnerId")
        for p in operation.definition.raw.get("parameters", [])
    ):
        headers["X-Runner-ID"] = runner_id
    return headers


def _known_ids(operation: Any, live: LiveServer) -> dict[str, str]:
    """Path parameters that name rows that exist, so cases reach past the 404s."""
    names = {p.name for p in operation.path_parameters}
    known = {}
    if "job_id" in names:
        held = operation.path.rsplit("/", 1)[-1] in HELD
        known["job_id"] = live.new_job(operation.label, held)
    if "runner_id" in names:
        known["runner_id"] = live.runner_id
    return known


@SCHEMA.parametrize()
@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_fuzz(case: schemathesis.Case, live: LiveServer) -> None:
    """Each operation's examples, coverage cases (boundaries, wrong types, NULs) and
    fuzzed cases. Valid cases name rows that exist, one fresh job per operation."""
    operation = case.operation
    if case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE:
        if operation.label not in live.known:
            live.known[operation.label] = _known_ids(operation, live)
        case.path_parameters = {**(case.path_parameters or {}), **live.known[operation.label]}
    if operation.path == "/api/runner/jobs/next":
        case.query = {**(case.query or {}), "wait": 0}  # the long-poll answers at once
    case.call_and_validate(
        base_url=live.url,
        session=live.session,
        headers=_headers(operation, live.runner_id),
        checks=CHECKS,
    )


BODY_LABELS = [
    f"{method.upper()} {path}"
    for path, item in DOCUMENT["paths"].items()
    for method, op in item.items()
    if "requestBody" in op
]


@pytest.mark.parametrize("label", BODY_LABELS)
def test_a_body_that_cannot_be_decoded_is_a_400(label: str, live: LiveServer) -> None:
    """Not in its declared Content-Encoding: the fuzzer never sends that (it was a 500)."""
    operation = SCHEMA.find_operation_by_label(label)
    assert operation is not None
    path = operation.path.format(**_known_ids(operation, live))
    headers = {**_headers(operation, live.runner_id), "Content-Encoding": "gzip"}
    # On a connection of its own: the server drops it after a body it cannot read.
    resp = requests.request(
        operation.method.upper(),
        live.url + path,
        data=b'{"this": "is not gzip"}',
        headers={**headers, "Content-Type": "application/json"},
        timeout=10,
    )
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"] == "Invalid request body"
    operation.validate_response(resp)


#: Text with a NUL, which PostgreSQL refuses: each was a 500 there.
NUL_CASES: list[tuple[str, dict[str, Any], int]] = [
    ("POST /api/jobs/submit", {"body": {"job_type": "a\x00", "input_params": {}}}, 400),
    ("POST /api/jobs/check", {"body": {"job_type": "a\x00", "input_params": {}}}, 400),
    ("POST /api/runner/register", {"body": {"name": "r", "capabilities": ["a\x00"]}}, 400),
    ("GET /api/runner/jobs/available", {"query": {"types[]": ["a\x00"]}}, 200),
    ("GET /api/runner/jobs/next", {"query": {"types[]": ["a\x00"], "wait": 0}}, 204),
    ("GET /api/admin/jobs", {"query": {"job_type": "a\x00"}}, 200),
    ("GET /api/jobs/by-hash/{job_hash}/events", {"path_parameters": {"job_hash": "\x00"}}, 404),
    ("POST /api/runner/jobs/{job_id}/heartbeat", {"body": {"console_output": "a\x00"}}, 200),
    (
        "POST /api/runner/jobs/{job_id}/complete",
        {"body": {"output_data": {}, "console_output": "a\x00"}},
        200,
    ),
    (
        "POST /api/runner/jobs/{job_id}/error",
        {"body": {"error_message": "a\x00", "console_output": "a\x00"}},
        200,
    ),
    ("POST /api/runner/jobs/{job_id}/release", {"body": {"reason": "a\x00"}}, 200),
]


@pytest.mark.parametrize(("label", "parts", "status"), NUL_CASES, ids=[c[0] for c in NUL_CASES])
def test_a_nul_in_text_is_refused_or_stored_as_a_replacement_character(
    label: str, parts: dict[str, Any], status: int, live: LiveServer
) -> None:
    operation = SCHEMA.find_operation_by_label(label)
    assert operation is not None
    if "{job_id}" in operation.path:
        parts = {**parts, "path_parameters": {"job_id": live.new_job(label, held=True)}}
    case = operation.Case(**parts)
    response = case.call_and_validate(
        base_url=live.url,
        session=live.session,
        headers=_headers(operation, live.runner_id),
        checks=CHECKS,
    )
    assert response.status_code == status, response.text
    if "{job_id}" in operation.path:
        job = live.call("GET", f"/api/admin/jobs/{parts['path_parameters']['job_id']}", ADMIN_KEY)
        assert "\x00" not in json.dumps(job, ensure_ascii=False)
        if "console_output" in parts["body"]:
            assert job["console_output"] == "a\ufffd"
        if "error_message" in parts["body"]:
            assert job["error_message"] == "a\ufffd"
