"""How an operation of the OpenAPI description is told: ``Doc``, what only prose can say
about one operation, with the parameters, tags and answers that operations share.

runpack/api/openapi_operations.py fills in a Doc per route; runpack/api/openapi.py
builds the document from them and the routes' policies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runpack.api.openapi_models import JSON, Json

#: Path parameters by name: what they are, and their format.
PATH_PARAMS: dict[str, tuple[str, str | None]] = {
    "job_id": ("A job id (lower-case UUID v4).", "uuid"),
    "job_hash": ("SHA-256 hex of the job.", None),
    "runner_id": ("A runner id.", "uuid"),
    "key_id": ("A key id (`runpack keys list`).", None),
    "path": ("The file's path.", None),
    "sha256": ("The SHA-256 of an uploaded input file (64 lowercase hex digits).", None),
}
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
#: Tags by path prefix (the first that matches; every stream is "events").
TAG_OF_PREFIX = (
    ("/api/jobs", "jobs"),
    ("/api/runner", "runner"),
    ("/api/inputs", "inputs"),
    ("/api/admin", "admin"),
    ("/ui", "ui"),
    ("/figures", "figures"),
    ("/metrics", "operations"),
    ("/api/openapi.json", "meta"),
    ("/", "health"),
)
TAGS = {
    "jobs": "Clients (submit key).",
    "runner": "Runner daemons (runner key).",
    "inputs": "Input files uploaded for jobs (submit key; runner key reads).",
    "admin": "Administration (admin key; runner key reads).",
    "events": "Live streams.",
    "ui": "The dashboard's pages and files.",
    "figures": "Figures stored by this server.",
    "health": "Readiness, no key.",
    "meta": "This description.",
    "operations": "Monitoring.",
}


@dataclass(frozen=True)
class Doc:
    """What only prose can say about one operation."""

    summary: str
    #: Replies that are not errors of the policy: successes, redirects, a fixed 404.
    answers: dict[str, Json] = field(default_factory=dict)
    body: Json | None = None
    body_type: str = JSON
    body_required: bool = True
    query: tuple[Json, ...] = ()
    description: str | None = None
    #: Reads ``X-Runner-ID`` itself (the policy does not require it).
    runner_id: bool = False
    #: A better description of a derived error status than its error's docstring.
    notes: dict[str, str] = field(default_factory=dict)


def query(name: str, schema: Json, description: str | None = None, **extra: Any) -> Json:
    out: Json = {"name": name, "in": "query", "schema": schema, **extra}
    if description:
        out["description"] = description
    return out


def redirect(description: str) -> Json:
    return {
        "description": description,
        "headers": {"Location": {"required": True, "schema": {"type": "string"}}},
    }


def files(description: str, types: tuple[str, ...]) -> Json:
    return {
        "description": description,
        "content": {t: {"schema": {"type": "string"}} for t in types},
    }
