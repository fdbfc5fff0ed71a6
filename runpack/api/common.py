"""What every route module shares: per-route policy, typed app state, JSON in and out."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from runpack.appkeys import SETTINGS
from runpack.errors import BadRequest, RunpackError
from runpack.protocol import Role

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, Authorization, X-Runner-ID",
}


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """Declared once per route; the policy middleware enforces it."""

    role: Role
    #: Rate limit (runpack.api.limits): ``"requests"``, a client request counted per
    #: address, or ``"registrations"``, a new runner counted per address; or, with
    #: ``per_runner``, the Settings field ``rate_<bucket>``.
    bucket: str | None = None
    #: The bucket counts per runner (X-Runner-ID) instead of per client address.
    per_runner: bool = False
    #: ``X-Runner-ID`` must be present, checked before auth (the original's order).
    runner_header: bool = False
    #: The error text when the handler fails unexpectedly, as the original's.
    failure: str = "Internal server error"
    #: Errors the handler raises besides those the policy implies (auth, rate limit,
    #: X-Runner-ID, a body): the OpenAPI description lists their statuses.
    errors: tuple[type[RunpackError], ...] = ()


POLICY_ATTR = "__runpack_policy__"


def policy(
    role: Role,
    *,
    bucket: str | None = None,
    per_runner: bool = False,
    runner_header: bool = False,
    failure: str = "Internal server error",
    errors: tuple[type[RunpackError], ...] = (),
) -> Callable[[Handler], Handler]:
    def mark(handler: Handler) -> Handler:
        rule = RoutePolicy(role, bucket, per_runner, runner_header, failure, errors)
        setattr(handler, POLICY_ATTR, rule)
        return handler

    return mark


def policy_of(handler: Any) -> RoutePolicy | None:
    return getattr(handler, POLICY_ATTR, None)


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


async def read_body(request: web.Request) -> bytes:
    """The request's body, as ``request.read()`` gives it, without waiting when it
    has all arrived already (the usual case for a small body): no coroutine per
    chunk. A body too large for ``max_body_bytes`` is refused as aiohttp does."""
    content = request.content
    if not content.is_eof():
        return await request.read()
    body = content.read_nowait(-1)
    limit = request.app[SETTINGS].max_body_bytes
    if limit and len(body) >= limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(body))
    return body


async def read_json(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object; a clear 400 for anything else."""
    return parse_json_object(await read_body(request))


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """``raw`` as a JSON object; a clear 400 for anything else."""
    if not raw:
        raise BadRequest("Request body must be a JSON object", details="the body is empty")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest("Invalid JSON body", details=str(exc)) from None
    if not isinstance(body, dict):
        raise BadRequest("Request body must be a JSON object", details=type(body).__name__)
    return body


#: Request headers the server reads besides Authorization (a bad token is a 401 there).
READ_HEADERS = (
    "X-Runner-ID",
    "Origin",
    "Last-Event-ID",
    "Range",
    "If-None-Match",
    "If-Modified-Since",
    "If-Range",
    "Content-Type",
    "Accept",
    "Upgrade",
    "CF-Connecting-IP",
    "X-Forwarded-For",
)
#: What a header value may not hold: control characters, and the lone surrogates that
#: stand for bytes that are not UTF-8 (aiohttp decodes with ``surrogateescape``).
_NOT_TEXT = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]")


def check_headers(request: web.Request) -> None:
    """Refuse (400) a request whose headers that the server reads are not UTF-8 text."""
    headers = request.headers
    for name in READ_HEADERS:
        value = headers.get(name)
        if value is not None and _NOT_TEXT.search(value):
            raise BadRequest(
                "Invalid header", details=f"{name} must be UTF-8 text without control characters"
            )


def runner_id(request: web.Request) -> str:
    value = request.headers.get("X-Runner-ID")
    if not value:
        raise BadRequest("Missing X-Runner-ID header")
    return value
