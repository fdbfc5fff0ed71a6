"""The OpenAPI 3.1 description of every HTTP endpoint, served at ``/api/openapi.json``.

Each operation's error replies follow from its policy (role, rate-limit bucket,
``X-Runner-ID``, whether it reads a body), as the middleware enforces them; the
shapes live in runpack/api/openapi_schemas.py. tests/test_openapi.py holds this
document against the router and fuzzes the server with it.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson
from aiohttp import web

from runpack import __version__
from runpack.api import admin, ui
from runpack.api.common import policy
from runpack.api.openapi_schemas import (
    JSON,
    SCHEMAS,
    SECURITY,
    SECURITY_SCHEMES,
    Json,
    error_reply,
    json_reply,
    ref,
)
from runpack.protocol import Role

routes = web.RouteTableDef()

RUNNER_ID: Json = {
    "name": "X-Runner-ID",
    "in": "header",
    "required": True,
    "description": "The id `POST /api/runner/register` gave; missing: 400 before auth. "
    "A runner registered with another key: 403.",
    "schema": {"type": "string", "format": "uuid"},
}
RUNNER_SECRET: Json = {
    "name": "X-Runner-Secret",
    "in": "header",
    "description": "The runner's own secret, for a runner registered with one "
    "(`with_secret`, or over the WebSocket); without it, or wrong: 403.",
    "schema": {"type": "string"},
}
TYPES: Json = {
    "name": "types[]",
    "in": "query",
    "description": "Job types the runner can run (repeat the parameter).",
    "style": "form",
    "explode": True,
    "schema": {"type": "array", "items": {"type": "string"}},
}


def path_param(name: str, description: str, fmt: str | None = "uuid") -> Json:
    schema: Json = {"type": "string"}
    if fmt:
        schema["format"] = fmt
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema,
    }


JOB_ID = path_param("job_id", "A job id (lower-case UUID v4).")
ORIGIN_403 = "a stored key sent from a browser Origin that it does not list."
JOB_TYPE_403 = error_reply(
    "A stored key sent from a browser Origin that it does not list, "
    "or for a job type that it may not submit."
)
SUBMIT_403 = error_reply(
    "A stored key sent from a browser Origin that it does not list, for a job type that it "
    "may not submit, or with a priority above its ceiling."
)
JOB_OF_TYPE_403 = error_reply(
    "A stored key sent from a browser Origin that it does not list, "
    "or for a job of a type that it may not act on."
)


def operation(
    summary: str,
    role: Role,
    replies: dict[str, Json],
    *,
    tag: str,
    body: Json | None = None,
    body_required: bool = True,
    body_type: str = JSON,
    parameters: list[Json] | None = None,
    bucket: bool = False,
    runner_header: bool = False,
    description: str | None = None,
) -> Json:
    """One operation; the error replies its policy implies are added to ``replies``."""
    out: Json = {"summary": summary, "tags": [tag], "security": SECURITY[role]}
    if description:
        out["description"] = description
    params = list(parameters or [])
    if runner_header:
        params[:0] = [
            {"$ref": "#/components/parameters/RunnerId"},
            {"$ref": "#/components/parameters/RunnerSecret"},
        ]
    if params:
        out["parameters"] = params
    if body is not None:
        out["requestBody"] = {"required": body_required, "content": {body_type: {"schema": body}}}
    implied: dict[str, Json] = {}
    if body is not None or runner_header:
        implied["400"] = error_reply("Invalid input (or a missing X-Runner-ID header).")
    if role != Role.PUBLIC:
        implied["401"] = error_reply("Missing, malformed or wrong key.")
    if role == Role.ADMIN:
        implied["403"] = error_reply(f"The runner key may read but not change jobs; {ORIGIN_403}")
    elif runner_header:
        implied["403"] = error_reply(
            "The runner was registered with another key, or its secret is missing or wrong; "
            + ORIGIN_403
        )
    elif role != Role.PUBLIC:
        implied["403"] = error_reply(ORIGIN_403.capitalize())
    if body is not None:
        implied["413"] = error_reply("The body is over RUNPACK_MAX_BODY_BYTES.")
    if bucket:
        implied["429"] = json_reply(
            "Over the rate limit.",
            ref("RateLimited"),
            {"Retry-After": {"description": "Seconds", "schema": {"type": "string"}}},
        )
    implied["500"] = error_reply("Unexpected failure, logged with an incident id.")
    implied["503"] = json_reply(
        "The database is out of reach for now (the request may be repeated safely).",
        ref("Error"),
        {"Retry-After": {"description": "Seconds", "schema": {"type": "string"}}},
    )
    out["responses"] = dict(sorted({**implied, **replies}.items()))
    return out


def runner_op(summary: str, replies: dict[str, Json], **kwargs: Any) -> Json:
    """A runner route of the original: ``X-Runner-ID``, unknown runners get a 404."""
    replies = {"404": error_reply("Unknown runner: register first."), **replies}
    return operation(summary, Role.RUNNER, replies, tag="runner", runner_header=True, **kwargs)


NOT_OWNED = json_reply(
    "Invalid input, or the job is not held by this runner (`success: false`).",
    {"anyOf": [ref("Error"), ref("SuccessMessage")]},
)
OK = json_reply("Done.", ref("SuccessMessage"))
JOB_404 = error_reply("No such job.")

EVENTS_HELP = """Server-Sent Events (`curl -N`), or a WebSocket when the request asks for
an upgrade (each text frame is `{"id", "event", "data"}`). Events: `snapshot` (the job as
`GET /api/admin/jobs/{job_id}` shows it), `status` (`{status, result?, error?,
runner_id?}`), `progress` (`{current, total}`), `console` (`{replace}` or `{append}`).
A job's stream ends after a final status. Each event has an id `<epoch>-<seq>`: reconnect
with `Last-Event-ID` (or `last_event_id`) to get what was missed, or a new snapshot."""
STREAM_REPLIES: dict[str, Json] = {
    "101": {"description": "WebSocket upgrade: the same events as JSON text frames."},
    "200": {
        "description": "The event stream.",
        "content": {"text/event-stream": {"schema": ref("Event")}},
    },
}
RESUME: list[Json] = [
    {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
    {"name": "last_event_id", "in": "query", "schema": {"type": "string"}},
]

RUNNER_WS_HELP = """The runner channel: JSON text frames after a WebSocket upgrade
(runner key on the upgrade request). The runner sends `hello` first (`runner_id?`,
`runner_secret?`, `name`, `capabilities`, `concurrency`, `version`, `jobs` it still holds)
and gets `welcome` (`runner_id`, `heartbeat_interval`, `limits`, `resumed`, `dropped`, and
`runner_secret` when the hello registered it). A hello for a runner of another key, or
without its secret, gets an `error` frame and close code 1008, as does a socket whose key
is revoked. Then runner → server:
`ready` (`slots`), `heartbeat`, `complete`, `error`, `release`; server → runner: `job`,
`cancel`, `ack`, `error`. The server never pushes more jobs than the slots granted.
See runpack/protocol.py for every field."""

METRICS_HELP = """Jobs by status and type, queue depth, submit→start and run times,
submits by outcome, cache hits and misses, connected runners and watchers, database call
times and HTTP requests (docs/operations.md, Monitoring). The admin key or the runner key, as other
admin reads; with `RUNPACK_METRICS_PUBLIC=true`, no key."""

HEALTH: Json = {
    "summary": "Health (any method)",
    "tags": ["health"],
    "security": [],
    "responses": {
        "200": json_reply("Up, and the database writes.", ref("Health")),
        "503": error_reply("The database cannot write (checked at most once a second)."),
    },
}
HEALTH_METHODS = ("get", "post", "put", "patch", "delete")

UI_TYPES = tuple(sorted({t.split(";")[0] for t in ui.CONTENT_TYPES.values()}))
#: What a static file answers besides itself (aiohttp's FileResponse).
FILE_REPLIES: dict[str, Json] = {
    "206": {"description": "A byte range of the file (`Range`)."},
    "304": {"description": "Not modified (`If-None-Match`, `If-Modified-Since`)."},
    "404": error_reply("No such page or file."),
    "412": {"description": "A precondition (`If-Match`, `If-Unmodified-Since`) failed."},
    "416": {"description": "The `Range` cannot be satisfied."},
}


def redirect(description: str) -> Json:
    return {
        "description": description,
        "headers": {"Location": {"required": True, "schema": {"type": "string"}}},
    }


TO_FIGURE_ORIGIN = redirect(
    "With `RUNPACK_FIGURE_BASE_URL`, a request on the public URL's host goes to the same "
    "path on the figure origin."
)


def ui_file(description: str, types: tuple[str, ...]) -> Json:
    return {
        "description": description,
        "content": {t: {"schema": {"type": "string"}} for t in types},
    }


def paths() -> Json:
    submit_replies = {
        "200": json_reply(
            "The existing job: its state, cached result or error.", ref("SubmitReply")
        ),
        "201": json_reply("A new job, queued.", ref("SubmitReply")),
    }
    return {
        "/": {m: {**HEALTH, "operationId": f"health_root_{m}"} for m in HEALTH_METHODS},
        "/health": {m: {**HEALTH, "operationId": f"health_{m}"} for m in HEALTH_METHODS},
        "/api/openapi.json": {
            "get": operation(
                "This description",
                Role.PUBLIC,
                {"200": json_reply("The OpenAPI 3.1 document.", {"type": "object"})},
                tag="meta",
            )
        },
        "/metrics": {
            "get": operation(
                "Prometheus metrics",
                Role.ADMIN_READ,
                {
                    "200": {
                        "description": "The metrics in the Prometheus text format, or "
                        "OpenMetrics when the Accept header asks for it.",
                        "content": {
                            "text/plain": {"schema": {"type": "string"}},
                            "application/openmetrics-text": {"schema": {"type": "string"}},
                        },
                    }
                },
                tag="operations",
                description=METRICS_HELP,
            )
        },
        "/api/jobs/submit": {
            "post": operation(
                "Submit a job (or get the existing one, or its cached result)",
                Role.SUBMIT,
                {**submit_replies, "403": SUBMIT_403},
                tag="jobs",
                body=ref("JobRequest"),
                bucket=True,
            )
        },
        "/api/jobs/check": {
            "post": operation(
                "Does this job exist? Never creates one",
                Role.SUBMIT,
                {
                    "200": json_reply("Whether it exists, and its state.", ref("CheckReply")),
                    "403": JOB_TYPE_403,
                },
                tag="jobs",
                body=ref("JobRequest"),
                bucket=True,
            )
        },
        "/api/jobs/{job_id}": {
            "get": operation(
                "A job's status, progress, result or error",
                Role.SUBMIT,
                {
                    "200": json_reply("The job.", ref("JobState")),
                    "403": JOB_OF_TYPE_403,
                    "404": JOB_404,
                },
                tag="jobs",
                parameters=[JOB_ID],
                bucket=True,
            )
        },
        "/api/jobs/{job_id}/cancel": {
            "post": operation(
                "Cancel a job (pending; running ones too with the admin key)",
                Role.SUBMIT,
                {
                    "200": json_reply("Cancelled.", ref("StatusChange")),
                    "403": JOB_OF_TYPE_403,
                    "404": JOB_404,
                    "409": error_reply("The job is past cancelling."),
                },
                tag="jobs",
                parameters=[JOB_ID],
            )
        },
        "/api/jobs/{job_id}/events": {
            "get": operation(
                "Watch a job live",
                Role.PUBLIC,
                {**STREAM_REPLIES, "404": JOB_404},
                tag="events",
                parameters=[JOB_ID, *RESUME],
                description=EVENTS_HELP,
            )
        },
        "/api/jobs/by-hash/{job_hash}/events": {
            "get": operation(
                "Watch a job live, named by its hash",
                Role.PUBLIC,
                {**STREAM_REPLIES, "404": JOB_404},
                tag="events",
                parameters=[path_param("job_hash", "SHA-256 hex of the job.", None), *RESUME],
                description=EVENTS_HELP,
            )
        },
        "/api/admin/events": {
            "get": operation(
                "Watch every job and runner (the dashboard)",
                Role.ADMIN_READ,
                {**STREAM_REPLIES, "400": error_reply("Unknown status in the filter.")},
                tag="events",
                parameters=[
                    {
                        "name": "status",
                        "in": "query",
                        "description": "Only `status` events with one of these comma-separated "
                        "statuses (`deleted` too), and `reset`.",
                        "schema": {"type": "string", "pattern": "^[a-z_]+(,[a-z_]+)*$"},
                    },
                    *RESUME,
                ],
                description="The same events as a job's stream, each with its `job_id`, "
                "plus `runner` changes; a `reset` event when missed events cannot be replayed.",
            )
        },
        "/api/runner/register": {
            "post": operation(
                "Register a runner: a new id every time",
                Role.RUNNER,
                {"201": json_reply("Registered.", ref("Registered"))},
                tag="runner",
                body=ref("Registration"),
            )
        },
        "/api/runner/verify": {
            "get": operation(
                "Is this runner id known?",
                Role.RUNNER,
                {
                    "200": json_reply("Known.", ref("Verified")),
                    "404": json_reply("Unknown (`exists: false`).", ref("ExistsMessage")),
                },
                tag="runner",
                runner_header=True,
            )
        },
        "/api/runner/jobs/available": {
            "get": runner_op(
                "Pending jobs of these types, oldest first, at most 50",
                {"200": json_reply("The jobs (none without types).", ref("AvailableJobs"))},
                parameters=[TYPES],
                bucket=True,
            )
        },
        "/api/runner/jobs/next": {
            "get": runner_op(
                "Long-poll: the next job, already claimed for this runner",
                {
                    "200": json_reply("A job claimed for this runner.", ref("NextJob")),
                    "204": {"description": "No job within `wait` seconds."},
                },
                parameters=[
                    TYPES,
                    {
                        "name": "wait",
                        "in": "query",
                        "description": "Seconds to wait for a job.",
                        "schema": {"type": "number", "minimum": 0, "maximum": 60, "default": 20},
                    },
                ],
            )
        },
        "/api/runner/jobs/{job_id}/claim": {
            "post": runner_op(
                "Claim a pending job (no body is read)",
                {
                    "200": json_reply("Claimed.", ref("Claimed")),
                    "409": json_reply("Already claimed, or no such job.", ref("SuccessMessage")),
                },
                parameters=[JOB_ID],
            )
        },
        "/api/runner/jobs/{job_id}/heartbeat": {
            "post": runner_op(
                "Progress and console of a held job",
                {"200": OK, "400": NOT_OWNED},
                parameters=[JOB_ID],
                body=ref("Heartbeat"),
                bucket=True,
            )
        },
        "/api/runner/jobs/{job_id}/complete": {
            "post": runner_op(
                "Store a held job's result",
                {"200": OK, "400": NOT_OWNED},
                parameters=[JOB_ID],
                body=ref("Completion"),
            )
        },
        "/api/runner/jobs/{job_id}/error": {
            "post": runner_op(
                "Fail a held job",
                {"200": OK, "400": NOT_OWNED},
                parameters=[JOB_ID],
                body=ref("Failure"),
            )
        },
        "/api/runner/jobs/{job_id}/release": {
            "post": runner_op(
                "Give a held job back to the queue",
                {"200": OK, "400": NOT_OWNED},
                parameters=[JOB_ID],
                body=ref("Release"),
                body_required=False,
            )
        },
        "/api/runner/ws": {
            "get": operation(
                "The runner channel (WebSocket)",
                Role.RUNNER,
                {
                    "101": {"description": "Upgraded: the runner channel is open."},
                    "400": error_reply("Not a WebSocket upgrade request."),
                },
                tag="runner",
                description=RUNNER_WS_HELP,
            )
        },
        "/api/admin/stats": {
            "get": operation(
                "Jobs per status, runners",
                Role.ADMIN_READ,
                {"200": json_reply("Counts.", ref("Stats"))},
                tag="admin",
            )
        },
        "/api/admin/jobs": {
            "get": operation(
                "Jobs, newest first",
                Role.ADMIN_READ,
                {
                    "200": json_reply("A page of jobs.", ref("JobList")),
                    "400": error_reply("A bad status, limit, offset or after."),
                },
                tag="admin",
                parameters=[
                    {"name": "status", "in": "query", "schema": ref("JobStatus")},
                    {
                        "name": "job_type",
                        "in": "query",
                        "description": "Types containing this text.",
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": 1000,
                            "default": 100,
                        },
                    },
                    {
                        "name": "offset",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 0, "maximum": 10**9, "default": 0},
                    },
                    {
                        "name": "after",
                        "in": "query",
                        "description": "The `next` of the previous page: the page after it,"
                        " as fast at any depth (offset then counts from there).",
                        "schema": {"type": "string"},
                    },
                ],
            )
        },
        "/api/admin/jobs/batch-delete": {
            "post": operation(
                "Delete jobs",
                Role.ADMIN,
                {
                    "200": json_reply(
                        "What was deleted, and which ids were not found.", ref("BatchDeleted")
                    )
                },
                tag="admin",
                body=ref("BatchDelete"),
            )
        },
        "/api/admin/jobs/{job_id}": {
            "get": operation(
                "A job's details (no key: job ids are unguessable)",
                Role.PUBLIC,
                {"200": json_reply("The job.", ref("Job")), "404": JOB_404},
                tag="admin",
                parameters=[JOB_ID],
            ),
            "delete": operation(
                "Delete a job",
                Role.ADMIN,
                {"200": json_reply("Deleted.", ref("SuccessMessage")), "404": JOB_404},
                tag="admin",
                parameters=[JOB_ID],
            ),
        },
        "/api/admin/jobs/{job_id}/retry": {
            "post": operation(
                "Queue a failed, expired or cancelled job again",
                Role.ADMIN,
                {
                    "200": json_reply("Queued again.", ref("StatusChange")),
                    "404": JOB_404,
                    "409": error_reply("The job is not failed, expired or cancelled."),
                },
                tag="admin",
                parameters=[JOB_ID],
            )
        },
        "/api/admin/runners": {
            "get": operation(
                "Runners, most recently seen first",
                Role.ADMIN_READ,
                {
                    "200": json_reply("A page of runners.", ref("RunnerList")),
                    "400": error_reply("A bad limit, offset or after."),
                },
                tag="admin",
                parameters=[
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": admin.MAX_RUNNERS_PAGE,
                            "default": admin.RUNNERS_PAGE,
                        },
                    },
                    {
                        "name": "offset",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 0, "maximum": 10**9, "default": 0},
                    },
                    {
                        "name": "after",
                        "in": "query",
                        "description": "The `next` of the previous page: the page after it,"
                        " as fast at any depth (offset then counts from there).",
                        "schema": {"type": "string"},
                    },
                ],
            )
        },
        "/api/admin/runners/{runner_id}": {
            "get": operation(
                "A runner and the jobs it claimed",
                Role.ADMIN_READ,
                {
                    "200": json_reply("The runner.", ref("RunnerDetail")),
                    "404": error_reply("No such runner."),
                },
                tag="admin",
                parameters=[path_param("runner_id", "A runner id.")],
            )
        },
        "/api/admin/keys": {
            "get": operation(
                "Stored API keys, oldest first (never a secret)",
                Role.ADMIN,
                {"200": json_reply("The keys, revoked ones too.", ref("ApiKeyList"))},
                tag="admin",
            ),
            "post": operation(
                "Create a stored API key (as `runpack keys create`)",
                Role.ADMIN,
                {
                    "201": json_reply(
                        "Created: the only reply that ever holds its secret.", ref("CreatedApiKey")
                    )
                },
                tag="admin",
                body=ref("NewApiKey"),
            ),
        },
        "/api/admin/keys/{key_id}": {
            "delete": operation(
                "Revoke a stored API key",
                Role.ADMIN,
                {
                    "200": json_reply(
                        "Revoked (or already revoked): refused by this instance at once, by "
                        "others within RUNPACK_KEY_CACHE_TTL.",
                        ref("RevokedApiKey"),
                    ),
                    "404": error_reply("No such key."),
                },
                tag="admin",
                parameters=[path_param("key_id", "A key id (`runpack keys list`).", None)],
            )
        },
        "/api/runner/jobs/{job_id}/files": {
            "post": runner_op(
                "Upload a held job's figure folder (one tar archive)",
                {
                    "201": json_reply("Stored; the folder's URLs.", ref("FilesStored")),
                    "400": NOT_OWNED,
                    "503": error_reply(
                        "The figure storage cannot be written now (read-only, no permission)."
                    ),
                    "507": error_reply("The server's disk is full: nothing was kept."),
                },
                parameters=[JOB_ID],
                body={"type": "string", "format": "binary"},
                body_type="application/x-tar",
            )
        },
        "/figures/{job_id}": {
            "get": operation(
                "A job's figure",
                Role.PUBLIC,
                {"301": redirect("To the figure's `index.html`."), "307": TO_FIGURE_ORIGIN},
                tag="figures",
                parameters=[JOB_ID],
            )
        },
        "/figures/{job_id}/{path}": {
            "get": operation(
                "A file of a job's figure (CORS for any origin, ranges)",
                Role.PUBLIC,
                {
                    **FILE_REPLIES,
                    "307": TO_FIGURE_ORIGIN,
                    "200": {
                        "description": "The file, with its content type (`figpack.json`: "
                        "made from the job's state when the folder has none).",
                        "content": {
                            JSON: {"schema": {"anyOf": [ref("FigpackStatus"), {}]}},
                            "*/*": {"schema": {"type": "string"}},
                        },
                    },
                    "404": error_reply("No such file (folders are never listed)."),
                },
                tag="figures",
                parameters=[JOB_ID, path_param("path", "The file's path in the folder.", None)],
            )
        },
        "/ui": {
            "get": operation(
                "The dashboard",
                Role.PUBLIC,
                {"301": redirect("To `/ui/`.")},
                tag="ui",
            )
        },
        "/ui/static/{path}": {
            "get": operation(
                "A file of the dashboard (script, stylesheet, image)",
                Role.PUBLIC,
                {"200": ui_file("The file.", UI_TYPES), **FILE_REPLIES},
                tag="ui",
                parameters=[path_param("path", "The file's path under the ui folder.", None)],
            )
        },
        "/ui/{path}": {
            "get": operation(
                "A page of the dashboard (`/ui/` and every path under it)",
                Role.PUBLIC,
                {"200": ui_file("The single-page shell.", ("text/html",)), **FILE_REPLIES},
                tag="ui",
                parameters=[
                    path_param("path", "The page; a last segment with a dot is a 404.", None)
                ],
            )
        },
    }


def document() -> Json:
    """The whole OpenAPI 3.1 document."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Runpack",
            "version": __version__,
            "summary": "On-demand computation and result caching.",
            "description": "Submit `{job_type, input_params}` once; every identical request "
            "after that gets the same job, or its cached result, at once. Wire-compatible "
            "with the original Cloudflare Worker. Every `/api` reply carries CORS headers; "
            "`OPTIONS` on any `/api` path answers 204. An unknown route or method is a 404 "
            '`{"error": "Not found"}`.',
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": [
            {"name": "jobs", "description": "Clients (submit key)."},
            {"name": "runner", "description": "Runner daemons (runner key)."},
            {"name": "admin", "description": "Administration (admin key; runner key reads)."},
            {"name": "events", "description": "Live streams."},
            {"name": "ui", "description": "The dashboard's pages and files."},
            {"name": "figures", "description": "Figures stored by this server."},
            {"name": "health", "description": "Readiness, no key."},
            {"name": "meta", "description": "This description."},
            {"name": "operations", "description": "Monitoring."},
        ],
        "paths": paths(),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": SECURITY_SCHEMES,
            "parameters": {"RunnerId": RUNNER_ID, "RunnerSecret": RUNNER_SECRET},
        },
    }


@functools.cache
def document_bytes() -> bytes:
    return orjson.dumps(document())


@routes.get("/api/openapi.json")
@policy(Role.PUBLIC, failure="Failed to describe the API")
async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=document_bytes(), content_type=JSON)
