"""The shapes of the OpenAPI description: component schemas and security schemes.

Shared by every operation in runpack/api/openapi.py. The answers that handlers build
as typed models (runpack/api/views.py) and the runner's bodies read with
runpack.protocol's messages are described from those classes; the job states come
from runpack.protocol.JobStatus, so the description cannot drift from the database.
What is written here by hand has no typed model on the server yet.
"""

from __future__ import annotations

from runpack.api.openapi_models import JSON, MESSAGES, MODELS, Json, model, obj, ref
from runpack.protocol import MAX_JOB_TIMEOUT, MAX_PARAMS_BYTES, JobStatus, Role

#: What a live stream sends (runpack.watch): a job's stream starts with a snapshot, the
#: admin stream with a reset; ``closing`` when the server stops.
EVENT_KINDS = ("snapshot", "status", "progress", "console", "reset", "runner", "closing")
NULLABLE_INT: Json = {"type": ["integer", "null"]}
NULLABLE_STR: Json = {"type": ["string", "null"]}
MS: Json = {"type": "integer", "description": "Milliseconds since the epoch."}
NULLABLE_MS: Json = {"type": ["integer", "null"], "description": "Milliseconds since the epoch."}


def event(kind: str, data: Json) -> Json:
    """An event of a stream: its ``data`` is JSON of the given shape."""
    return {
        "if": {"properties": {"event": {"const": kind}}, "required": ["event"]},
        "then": {"properties": {"data": {"contentMediaType": JSON, "contentSchema": data}}},
    }


def json_reply(description: str, schema: Json, headers: Json | None = None) -> Json:
    out: Json = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def error_reply(description: str) -> Json:
    return json_reply(description, ref("Error"))


NAMES: Json = {"type": ["array", "null"], "items": {"type": "string"}}
_API_KEY: Json = {
    "id": {"type": "string"},
    "name": {"type": "string"},
    "role": {"enum": ["submit", "runner", "admin"]},
    "job_types": {
        **NAMES,
        "description": "Job types it may submit, check, read and cancel; null: any.",
    },
    "origins": {**NAMES, "description": "Browser Origins it may be used from; null: any."},
    "rate": {
        **NULLABLE_INT,
        "description": "New jobs per rate period (RUNPACK_RATE_WINDOW) for this key from all "
        "addresses, in place of the per-address and per-key limits on new work (0: no limit "
        "at all, requests included); null: the default limits.",
    },
    "max_priority": {
        **NULLABLE_INT,
        "description": "The highest priority it may submit (a submit key: 0 unless set); "
        "null: no ceiling.",
    },
    "created_at": MS,
    "last_used_at": {**NULLABLE_MS, "description": "Written at most once a minute."},
    "revoked_at": NULLABLE_MS,
}
#: Stored API keys (runpack keys, /api/admin/keys).
API_KEY_SCHEMAS: Json = {
    "ApiKey": obj(_API_KEY),
    "ApiKeyList": obj(
        {"keys": {"type": "array", "items": ref("ApiKey")}, "total": {"type": "integer"}}
    ),
    "NewApiKey": obj(
        {"role": {"enum": ["submit", "runner", "admin"]}},
        {
            "name": {"type": "string", "maxLength": 200},
            "job_types": {
                **NAMES,
                "minItems": 1,
                "maxItems": 100,
                "description": "Not for a runner key.",
            },
            "origins": {
                **NAMES,
                "minItems": 1,
                "maxItems": 100,
                "description": "Each `scheme://host[:port]`.",
            },
            "rate": {**NULLABLE_INT, "minimum": 0, "maximum": 1_000_000_000},
            "max_priority": {
                **NULLABLE_INT,
                "minimum": 0,
                "maximum": 1000,
                "description": "Not for a runner key; a submit key gets 0 when it is left out.",
            },
        },
        additionalProperties=False,
    ),
    "CreatedApiKey": obj({**_API_KEY, "secret": {"type": "string"}, "message": {"type": "string"}}),
    "RevokedApiKey": obj({"key": ref("ApiKey"), "message": {"type": "string"}}),
}


SCHEMAS: Json = {
    "JobStatus": {
        "type": "string",
        "enum": [s.value for s in JobStatus],
        "description": "pending → claimed → in_progress → completed | failed; "
        "completed → expired (cached result no longer valid); cancelled.",
    },
    "Error": obj(
        {"error": {"type": "string"}},
        {"details": {"type": "string"}},
        description="Every error not fixed otherwise by the original API.",
    ),
    "SuccessMessage": obj(
        {"success": {"type": "boolean"}, "message": {"type": "string"}},
        description="The original's fixed body for runner and delete replies.",
    ),
    "ExistsMessage": obj({"exists": {"type": "boolean"}, "message": {"type": "string"}}),
    "RateLimited": obj(
        {"error": {"const": "Rate limit exceeded"}, "resetTime": MS},
        {
            "details": {
                "type": "string",
                "description": "Which limit refused the request and which setting raises it.",
            },
            "limit": {
                "type": "string",
                "enum": [
                    "new_jobs",
                    "key_new_jobs",
                    "requests",
                    "registrations",
                    "available",
                    "heartbeat",
                ],
            },
        },
        description="The original's 429 body (`resetTime`: when a token is there again), "
        "with `details`; `Retry-After` gives the wait in seconds.",
    ),
    "Health": obj({"status": {"const": "ok"}, "service": {"const": "runpack-worker"}}),
    "JobRequest": obj(
        {
            "job_type": {"type": "string", "minLength": 1, "maxLength": 200},
            "input_params": {
                "type": "object",
                "description": f"Any JSON object, at most {MAX_PARAMS_BYTES} bytes as JSON.",
            },
        },
        {
            "force": {
                "type": "boolean",
                "description": "Queue a failed, expired or cancelled job again at once.",
            },
            "priority": {"type": "integer", "minimum": -1000, "maximum": 1000},
            "timeout": {
                "type": "number",
                "exclusiveMinimum": 0,
                "maximum": MAX_JOB_TIMEOUT,
                "description": "Seconds the job may run, if less than its type allows "
                "(the runner never allows more). Set by the submit that creates the job; "
                "not part of the job's hash.",
            },
        },
    ),
    "StatusChange": obj(
        {"job_id": {"type": "string"}, "status": ref("JobStatus"), "message": {"type": "string"}}
    ),
    "JobList": obj(
        {
            "jobs": {"type": "array", "items": ref("JobSummary")},
            "total": {"type": "integer"},
        },
        {
            "next": {
                "type": "string",
                "description": "Where more follow: pass as `after` for the following page.",
            },
        },
    ),
    "Stats": obj(
        {
            "jobs": obj(
                {s.value: {"type": "integer"} for s in JobStatus} | {"total": {"type": "integer"}}
            ),
            "runners": obj({"total": {"type": "integer"}, "active": {"type": "integer"}}),
        }
    ),
    "RunnerList": obj(
        {
            "runners": {"type": "array", "items": ref("Runner")},
            "total": {"type": "integer"},
        },
        {
            "next": {
                "type": "string",
                "description": "Where more follow: pass as `after` for the following page.",
            },
        },
    ),
    "BatchDelete": obj(
        {
            "job_ids": {
                "type": "array",
                "items": {"type": "string"},
                "minItems": 1,
                "maxItems": 1000,
            }
        }
    ),
    "BatchDeleted": obj(
        {
            "success": {"type": "boolean"},
            "deleted": {"type": "integer"},
            "failed": {"type": "array", "items": {"type": "string"}},
            "message": {"type": "string"},
        }
    ),
    "Verified": obj(
        {
            "exists": {"const": True},
            "runner_name": {"type": "string"},
            "message": {"type": "string"},
        }
    ),
    "AvailableJobs": obj(
        {
            "jobs": {
                "type": "array",
                "items": obj(
                    {
                        "job_id": {"type": "string"},
                        "job_type": {"type": "string"},
                        "input_params": {"type": "object"},
                        "created_at": MS,
                    }
                ),
            }
        }
    ),
    "Claimed": {
        "allOf": [ref("SuccessMessage"), obj({"job": ref("AssignedJob")})],
    },
    "NextJob": obj({"job": ref("AssignedJob")}),
    "Event": {
        **obj(
            {
                "id": {"type": "string", "description": "`<epoch>-<seq>`, for `Last-Event-ID`."},
                "event": {"enum": list(EVENT_KINDS)},
                "data": {"type": "string", "contentMediaType": JSON},
            }
        ),
        "description": "One Server-Sent Event. Admin stream events carry the `job_id`.",
        "allOf": [
            event("snapshot", ref("Job")),
            event(
                "status",
                obj(
                    {"status": {"anyOf": [ref("JobStatus"), {"const": "deleted"}]}},
                    {
                        "result": obj({"output_data": {"type": "object"}}),
                        "error": {"type": "string"},
                        "runner_id": NULLABLE_STR,
                    },
                ),
            ),
            event("progress", obj({"current": NULLABLE_INT, "total": NULLABLE_INT})),
            event(
                "console",
                {
                    "anyOf": [
                        obj({"replace": {"type": "string"}}),
                        obj({"append": {"type": "string"}}),
                    ]
                },
            ),
            event("reset", obj({"watchers": {"type": "integer"}})),
            event("runner", obj({"change": {"type": "string"}})),
        ],
    },
    "InputStored": obj(
        {
            "sha256": {
                "type": "string",
                "description": "The file's SHA-256: name it in a job's `inputs` as "
                '`{"upload": sha256}`.',
            },
            "bytes": {"type": "integer"},
        }
    ),
    "FilesStored": obj(
        {
            "success": {"type": "boolean"},
            "message": {"type": "string"},
            "url": {
                "type": "string",
                "description": "The version's folder URL, `…/figures/<job_id>/<version>/`.",
            },
            "version": {
                "type": "string",
                "description": "The figure's version: a hash of its files.",
            },
            "files": {"type": "integer"},
            "bytes": {"type": "integer"},
        },
        {"figpack_url": {"type": "string", "description": "`<url>index.html`, if uploaded."}},
    ),
    "FigpackStatus": obj(
        {
            "status": {"const": "completed"},
            "pinned": {"type": "boolean"},
            "deleted": {"type": "boolean"},
            "figureUrl": {"type": "string"},
        },
        {
            "uploadCompleted": NULLABLE_MS,
            "totalFiles": {"type": "integer"},
            "totalSize": NULLABLE_INT,
        },
        description="figpack's status file, as figpack's cloud answers it.",
    ),
    **API_KEY_SCHEMAS,
    **{cls.__name__: model(cls) for cls in MODELS},
    **{name: model(cls) for name, cls in MESSAGES.items()},
}

KEY_HELP = (
    "`Authorization: Bearer <key>`; a wrong, missing or revoked key is a 401. A stored key "
    "of the same role (`runpack keys create`) works alike, within its limits."
)
SECURITY_SCHEMES: Json = {
    "submitKey": {
        "type": "http",
        "scheme": "bearer",
        "description": f"RUNPACK_SUBMIT_API_KEY: clients submit and read jobs. {KEY_HELP}",
    },
    "runnerKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "RUNPACK_RUNNER_API_KEY: runner daemons; also reads admin endpoints "
        f"unless --runner-key-reads-admin is off. {KEY_HELP}",
    },
    "adminKey": {
        "type": "http",
        "scheme": "bearer",
        "description": f"RUNPACK_ADMIN_API_KEY: every route but the runners' own. {KEY_HELP}",
    },
}
#: Which keys open a route of each role (runpack.auth.KeyRing.authorize).
SECURITY: dict[Role, list[Json]] = {
    Role.PUBLIC: [],
    Role.SUBMIT: [{"submitKey": []}, {"adminKey": []}],
    Role.RUNNER: [{"runnerKey": []}],
    Role.ADMIN_READ: [{"adminKey": []}, {"runnerKey": []}],
    Role.ADMIN: [{"adminKey": []}],
}
