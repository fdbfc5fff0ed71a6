"""Input files uploaded for jobs (:mod:`runpack.inputs`).

``POST /api/inputs`` (submit key) stores the request body by its SHA-256: 201 with
``{"sha256", "bytes"}``, 200 when those bytes were stored already. It counts as a
client request, and a new file as new work (runpack.api.limits; the same bytes again
do not); too large a file is a 413, a full store a 507, and both keep nothing.

``HEAD /api/inputs/{sha256}`` (submit key) says whether a file is stored (200 or
404), nothing more: a submit naming it would tell as much. Its bytes are read only
with the runner key (``GET /api/inputs/{sha256}``, what a runner fetches for a job)
or the admin key (``GET /api/admin/inputs/{sha256}``).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from runpack.api.common import json_response, policy
from runpack.appkeys import INPUTS, LIMITS
from runpack.blobs import is_digest
from runpack.errors import BadRequest, InsufficientStorage, NotFound, StorageNotWritable, TooLarge
from runpack.protocol import Role

routes = web.RouteTableDef()
UPLOAD_CHUNK = 256 * 1024


def _digest(request: web.Request) -> str:
    digest = request.match_info["sha256"]
    if not is_digest(digest):
        raise BadRequest("Invalid sha256", details="64 lowercase hex digits")
    return digest


@routes.post("/api/inputs")
@policy(
    Role.SUBMIT,
    bucket="requests",
    failure="Failed to store the input file",
    errors=(TooLarge, InsufficientStorage, StorageNotWritable),
)
async def upload(request: web.Request) -> web.Response:
    """Store an input file (the raw body) by its SHA-256."""
    inputs = request.app[INPUTS]
    inputs.check_length(request.content_length)
    # New work: taken once the bytes are known to be new (the same bytes again are free).
    budget = request.app[LIMITS].work_budget(request)
    admit = budget.take if budget is not None else None
    stored = await inputs.receive(request.content.iter_chunked(UPLOAD_CHUNK), admit)
    body = {"sha256": stored.sha256, "bytes": stored.bytes}
    return json_response(body, status=201 if stored.created else 200)


@routes.head("/api/inputs/{sha256}")
@policy(
    Role.SUBMIT, bucket="requests", failure="Failed to look up the input file", errors=(BadRequest,)
)
async def stored(request: web.Request) -> web.Response:
    """200 if a file with this SHA-256 is stored, else 404 (no body)."""
    found = await asyncio.to_thread(request.app[INPUTS].has, _digest(request))
    return web.Response(status=200 if found else 404)


async def _serve(request: web.Request) -> web.StreamResponse:
    digest = _digest(request)
    inputs = request.app[INPUTS]
    if await asyncio.to_thread(inputs.touch, [digest]):
        raise NotFound("No uploaded input file with this sha256")
    headers = {
        "Content-Type": "application/octet-stream",
        "Cache-Control": "private, max-age=31536000, immutable",
        "X-Content-Type-Options": "nosniff",
        "Content-Disposition": "attachment",
    }
    return web.FileResponse(inputs.path(digest), headers=headers)


@routes.get("/api/inputs/{sha256}", allow_head=False)
@policy(Role.RUNNER, failure="Failed to serve the input file", errors=(BadRequest, NotFound))
async def fetch(request: web.Request) -> web.StreamResponse:
    """An uploaded input file's bytes, for a runner."""
    return await _serve(request)


@routes.get("/api/admin/inputs/{sha256}", allow_head=False)
@policy(Role.ADMIN_READ, failure="Failed to serve the input file", errors=(BadRequest, NotFound))
async def admin_fetch(request: web.Request) -> web.StreamResponse:
    """An uploaded input file's bytes, for an administrator."""
    return await _serve(request)
