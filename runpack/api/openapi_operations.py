"""What only prose can say about each operation of the OpenAPI description: summaries,
descriptions, the answers that are not errors, query parameters and the shape of the body
(each a ``Doc``, runpack/api/openapi_doc.py).

Security, error replies and path parameters are not here: runpack/api/openapi.py derives
them from each route's policy and path.
"""

from __future__ import annotations

from runpack.api import admin, ui
from runpack.api.openapi_doc import Doc, files, query, redirect
from runpack.api.openapi_models import JSON, Json, ref
from runpack.api.openapi_schemas import error_reply, json_reply

EVENTS_HELP = """Server-Sent Events (`curl -N`), or a WebSocket when the request asks for
an upgrade (each text frame is `{"id", "event", "data"}`). Events: `snapshot` (the job as
`GET /api/admin/jobs/{job_id}` shows it), `status` (`{status, result?, error?,
runner_id?}`), `progress` (`{current, total}`), `console` (`{replace}` or `{append}`).
A job's stream ends after a final status. Each event has an id `<epoch>-<seq>`: reconnect
with `Last-Event-ID` (or `last_event_id`) to get what was missed, or a new snapshot."""
STREAM: dict[str, Json] = {
    "101": {"description": "WebSocket upgrade: the same events as JSON text frames."},
    "200": {
        "description": "The event stream.",
        "content": {"text/event-stream": {"schema": ref("Event")}},
    },
}
RESUME = (
    {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
    query("last_event_id", {"type": "string"}),
)

RUNNER_WS_HELP = """The runner channel: JSON text frames after a WebSocket upgrade
(runner key on the upgrade request). The runner sends `hello` first (`runner_id?`,
`runner_secret?`, `name`, `capabilities`, `concurrency`, `version`, `jobs` it still holds,
`versions?` of its handlers by job type) and gets `welcome` (`runner_id`,
`heartbeat_interval`, `limits`, `resumed`, `dropped`, and `runner_secret` when the hello
registered it). A hello for a runner of another key, or
without its secret, gets an `error` frame and close code 1008, as does a socket whose key
is revoked. Then runner → server:
`ready` (`slots`), `heartbeat`, `complete`, `error`, `release`; server → runner: `job`,
`cancel`, `ack`, `error`. The server never pushes more jobs than the slots granted.
See runpack/protocol/ for every field."""

INPUTS_HELP = """The raw body is the file (at most RUNPACK_INPUT_UPLOAD_MB). Name it in a
container job's `inputs` as `{"upload": "<sha256>"}`: the hash is part of the job's hash, so
the same bytes uploaded twice give the same job. A submit naming a file that is not stored
is a 400. A new file counts as new work against the rate limits; the same bytes again do
not. Files unused for RUNPACK_INPUT_TTL that no pending or running job names are removed by
the retention pass. Only runner and admin keys read them back."""

METRICS_HELP = """Jobs by status and type, queue depth, submit→start and run times,
submits by outcome, cache hits and misses, connected runners and watchers, database call
times and HTTP requests (docs/operations.md, Monitoring). The admin key or the runner key, as other
admin reads; with `RUNPACK_METRICS_PUBLIC=true`, no key."""

HEALTH = Doc(
    "Health (any method)",
    {
        "200": json_reply("Up, and the database writes.", ref("Health")),
        "503": error_reply("The database cannot write (checked at most once a second)."),
    },
)
UI_TYPES = tuple(sorted({t.split(";")[0] for t in ui.CONTENT_TYPES.values()}))
#: What a static file answers besides itself (aiohttp's FileResponse).
FILE_ANSWERS: dict[str, Json] = {
    "206": {"description": "A byte range of the file (`Range`)."},
    "304": {"description": "Not modified (`If-None-Match`, `If-Modified-Since`)."},
    "412": {"description": "A precondition (`If-Match`, `If-Unmodified-Since`) failed."},
    "416": {"description": "The `Range` cannot be satisfied."},
}
OK = json_reply("Done.", ref("SuccessMessage"))
TYPES = query(
    "types[]",
    {"type": "array", "items": {"type": "string"}},
    "Job types the runner can run (repeat the parameter).",
    style="form",
    explode=True,
)
OFFSET = query("offset", {"type": "integer", "minimum": 0, "maximum": 10**9, "default": 0})
AFTER = query(
    "after",
    {"type": "string"},
    "The `next` of the previous page: the page after it, as fast at any depth"
    " (offset then counts from there).",
)
NOT_HELD = {"400": "Invalid input, or the job is not held by this runner (`success: false`)."}
JOB_OF_TYPE = "A job of a type that the key may not act on, or a browser Origin it does not list."
SUBMIT = json_reply("The existing job: its state, cached result or error.", ref("SubmitAnswer"))

OPERATIONS: dict[tuple[str, str], Doc] = {
    ("*", "/"): HEALTH,
    ("*", "/health"): HEALTH,
    ("GET", "/api/openapi.json"): Doc(
        "This description", {"200": json_reply("The OpenAPI 3.1 document.", {"type": "object"})}
    ),
    ("GET", "/metrics"): Doc(
        "Prometheus metrics",
        {
            "200": files(
                "The metrics in the Prometheus text format, or OpenMetrics when the Accept "
                "header asks for it.",
                ("text/plain", "application/openmetrics-text"),
            )
        },
        description=METRICS_HELP,
    ),
    ("POST", "/api/jobs/submit"): Doc(
        "Submit a job (or get the existing one, or its cached result)",
        {"200": SUBMIT, "201": json_reply("A new job, queued.", ref("SubmitAnswer"))},
        body=ref("JobRequest"),
    ),
    ("POST", "/api/jobs/check"): Doc(
        "Does this job exist? Never creates one",
        {"200": json_reply("Whether it exists, and its state.", ref("CheckAnswer"))},
        body=ref("JobRequest"),
    ),
    ("GET", "/api/jobs/{job_id}"): Doc(
        "A job's status, progress, result or error",
        {"200": json_reply("The job.", ref("JobState"))},
        notes={"403": JOB_OF_TYPE},
    ),
    ("POST", "/api/jobs/{job_id}/cancel"): Doc(
        "Cancel a job (pending; running ones too with the admin key)",
        {"200": json_reply("Cancelled.", ref("StatusChange"))},
        notes={"403": JOB_OF_TYPE, "409": "The job is past cancelling."},
    ),
    ("GET", "/api/jobs/{job_id}/events"): Doc(
        "Watch a job live", STREAM, query=RESUME, description=EVENTS_HELP
    ),
    ("GET", "/api/jobs/by-hash/{job_hash}/events"): Doc(
        "Watch a job live, named by its hash", STREAM, query=RESUME, description=EVENTS_HELP
    ),
    ("GET", "/api/admin/events"): Doc(
        "Watch every job and runner (the dashboard)",
        STREAM,
        query=(
            query(
                "status",
                {"type": "string", "pattern": "^[a-z_]+(,[a-z_]+)*$"},
                "Only `status` events with one of these comma-separated statuses "
                "(`deleted` too), and `reset`.",
            ),
            *RESUME,
        ),
        description="The same events as a job's stream, each with its `job_id`, "
        "plus `runner` changes; a `reset` event when missed events cannot be replayed.",
        notes={"400": "Unknown status in the filter."},
    ),
    ("POST", "/api/runner/register"): Doc(
        "Register a runner: a new id every time",
        {"201": json_reply("Registered.", ref("Registered"))},
        body=ref("Registration"),
    ),
    ("GET", "/api/runner/verify"): Doc(
        "Is this runner id known?",
        {
            "200": json_reply("Known.", ref("Verified")),
            "404": json_reply("Unknown (`exists: false`).", ref("ExistsMessage")),
        },
        runner_id=True,
        notes={"400": "A missing X-Runner-ID header."},
    ),
    ("POST", "/api/runner/verify"): Doc(
        "Is this runner id known? If so, register it again under that id",
        {
            "200": json_reply("Known, and now what the body says.", ref("Verified")),
            "404": json_reply("Unknown (`exists: false`): nothing changed.", ref("ExistsMessage")),
        },
        body=ref("Registration"),
        runner_id=True,
        description="The body is a registration's (`with_secret` is ignored: a runner's"
        " secret is given once). The runner keeps its id and from now on has this name,"
        " these job types, handler versions and image allow list, for its claims and in"
        " the views: what a restarted runner runs now (docs/runners.md).",
        notes={
            "400": "A missing X-Runner-ID header, or an invalid body: nothing changed.",
            "403": "The runner was registered with another key, or its secret is missing or"
            " wrong; " + "a stored key sent from a browser Origin that it does not list."
            " Nothing changed.",
        },
    ),
    ("GET", "/api/runner/jobs/available"): Doc(
        "Pending jobs of these types, oldest first, at most 50",
        {"200": json_reply("The jobs (none without types).", ref("AvailableJobs"))},
        query=(TYPES,),
    ),
    ("GET", "/api/runner/jobs/next"): Doc(
        "Long-poll: the next job, already claimed for this runner",
        {
            "200": json_reply("A job claimed for this runner.", ref("NextJob")),
            "204": {"description": "No job within `wait` seconds."},
        },
        query=(
            TYPES,
            query(
                "wait",
                {"type": "number", "minimum": 0, "maximum": 60, "default": 20},
                "Seconds to wait for a job.",
            ),
        ),
    ),
    ("POST", "/api/runner/jobs/{job_id}/claim"): Doc(
        "Claim a pending job (no body is read)",
        {"200": json_reply("Claimed.", ref("Claimed"))},
        notes={"409": "Already claimed, or no such job."},
    ),
    ("POST", "/api/runner/jobs/{job_id}/heartbeat"): Doc(
        "Progress and console of a held job", {"200": OK}, body=ref("Heartbeat"), notes=NOT_HELD
    ),
    ("POST", "/api/runner/jobs/{job_id}/complete"): Doc(
        "Store a held job's result", {"200": OK}, body=ref("Completion"), notes=NOT_HELD
    ),
    ("POST", "/api/runner/jobs/{job_id}/error"): Doc(
        "Fail a held job", {"200": OK}, body=ref("Failure"), notes=NOT_HELD
    ),
    ("POST", "/api/runner/jobs/{job_id}/release"): Doc(
        "Give a held job back to the queue",
        {"200": OK},
        body=ref("Release"),
        body_required=False,
        notes=NOT_HELD,
    ),
    ("POST", "/api/runner/jobs/{job_id}/files"): Doc(
        "Upload a held job's figure folder (one tar archive)",
        {"201": json_reply("Stored; the folder's URLs.", ref("FilesStored"))},
        body={"type": "string", "format": "binary"},
        body_type="application/x-tar",
        notes={
            **NOT_HELD,
            "503": "The figure storage cannot be written now (read-only, no permission), "
            "or the database is out of reach for now.",
            "507": "The server's disk is full: nothing was kept.",
        },
    ),
    ("POST", "/api/inputs"): Doc(
        "Upload an input file for jobs (stored once by its SHA-256)",
        {
            "200": json_reply("Those bytes were stored already.", ref("InputStored")),
            "201": json_reply("Stored.", ref("InputStored")),
        },
        body={"type": "string", "format": "binary"},
        body_type="application/octet-stream",
        description=INPUTS_HELP,
        notes={
            "413": "Larger than RUNPACK_INPUT_UPLOAD_MB (or RUNPACK_MAX_BODY_BYTES): nothing "
            "was kept.",
            "503": "The input store cannot be written now, or the database is out of reach.",
            "507": "The disk, or the store of uploaded inputs (RUNPACK_INPUT_STORE_MB), is "
            "full: nothing was kept.",
        },
    ),
    ("HEAD", "/api/inputs/{sha256}"): Doc(
        "Is an input file with this SHA-256 stored? (no body)",
        {"200": {"description": "Stored."}, "404": {"description": "Not stored."}},
    ),
    ("GET", "/api/inputs/{sha256}"): Doc(
        "An uploaded input file's bytes (what a runner fetches for a job)",
        {"200": files("The file.", ("application/octet-stream",))},
    ),
    ("GET", "/api/admin/inputs/{sha256}"): Doc(
        "An uploaded input file's bytes",
        {"200": files("The file.", ("application/octet-stream",))},
    ),
    ("GET", "/api/runner/ws"): Doc(
        "The runner channel (WebSocket)",
        {"101": {"description": "Upgraded: the runner channel is open."}},
        description=RUNNER_WS_HELP,
        notes={"400": "Not a WebSocket upgrade request."},
    ),
    ("GET", "/api/admin/stats"): Doc(
        "Jobs per status, runners", {"200": json_reply("Counts.", ref("Stats"))}
    ),
    ("GET", "/api/admin/jobs"): Doc(
        "Jobs, newest first",
        {"200": json_reply("A page of jobs.", ref("JobList"))},
        query=(
            query("status", ref("JobStatus")),
            query("job_type", {"type": "string"}, "Types containing this text."),
            query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}),
            OFFSET,
            AFTER,
        ),
        notes={"400": "A bad status, limit, offset or after."},
    ),
    ("POST", "/api/admin/jobs/batch-delete"): Doc(
        "Delete jobs",
        {"200": json_reply("What was deleted, and which ids were not found.", ref("BatchDeleted"))},
        body=ref("BatchDelete"),
    ),
    ("GET", "/api/admin/jobs/{job_id}"): Doc(
        "A job's details (no key: job ids are unguessable)",
        {"200": json_reply("The job.", ref("Job"))},
    ),
    ("DELETE", "/api/admin/jobs/{job_id}"): Doc(
        "Delete a job", {"200": json_reply("Deleted.", ref("SuccessMessage"))}
    ),
    ("POST", "/api/admin/jobs/{job_id}/retry"): Doc(
        "Queue a failed, expired or cancelled job again",
        {"200": json_reply("Queued again.", ref("StatusChange"))},
        notes={"409": "The job is not failed, expired or cancelled."},
    ),
    ("GET", "/api/admin/runners"): Doc(
        "Runners, most recently seen first",
        {"200": json_reply("A page of runners.", ref("RunnerList"))},
        query=(
            query(
                "limit",
                {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": admin.MAX_RUNNERS_PAGE,
                    "default": admin.RUNNERS_PAGE,
                },
            ),
            OFFSET,
            AFTER,
        ),
        notes={"400": "A bad limit, offset or after."},
    ),
    ("GET", "/api/admin/runners/{runner_id}"): Doc(
        "A runner and the jobs it claimed", {"200": json_reply("The runner.", ref("RunnerDetail"))}
    ),
    ("GET", "/api/admin/keys"): Doc(
        "Stored API keys, oldest first (never a secret)",
        {"200": json_reply("The keys, revoked ones too.", ref("ApiKeyList"))},
    ),
    ("POST", "/api/admin/keys"): Doc(
        "Create a stored API key (as `runpack keys create`)",
        {
            "201": json_reply(
                "Created: the only reply that ever holds its secret.", ref("CreatedApiKey")
            )
        },
        body=ref("NewApiKey"),
    ),
    ("DELETE", "/api/admin/keys/{key_id}"): Doc(
        "Revoke a stored API key",
        {
            "200": json_reply(
                "Revoked (or already revoked): refused by this instance at once, by others "
                "within RUNPACK_KEY_CACHE_TTL.",
                ref("RevokedApiKey"),
            )
        },
    ),
    ("GET", "/figures/{job_id}"): Doc(
        "A job's figure",
        {"307": redirect("To the current version's `index.html` (or to the figure origin).")},
        notes={"404": "The job has no figure."},
    ),
    ("GET", "/figures/{job_id}/{path}"): Doc(
        "A file of a job's figure (CORS for any origin, ranges)",
        {
            "200": {
                "description": "A file of the current version (`path` is "
                "`<version>/<file>`), with its content type.",
                "content": {
                    JSON: {"schema": {"anyOf": [ref("FigpackStatus"), {}]}},
                    "*/*": {"schema": {"type": "string"}},
                },
            },
            **FILE_ANSWERS,
            "307": redirect(
                "To the same file in the current version, from another version or an "
                "unversioned path (results stored before versions), or to the figure origin."
            ),
        },
        notes={"404": "No such file (folders are never listed)."},
    ),
    ("GET", "/ui"): Doc("The dashboard", {"301": redirect("To `/ui/`.")}),
    ("GET", "/ui/static/{path}"): Doc(
        "A file of the dashboard (script, stylesheet, image)",
        {"200": files("The file.", UI_TYPES), **FILE_ANSWERS},
        notes={"404": "No such file."},
    ),
    ("GET", "/ui/{path}"): Doc(
        "A page of the dashboard (`/ui/` and every path under it)",
        {"200": files("The single-page shell.", ("text/html",)), **FILE_ANSWERS},
        notes={"404": "No such page (a last segment with a dot)."},
    ),
}
