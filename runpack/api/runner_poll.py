"""The long-poll fallback of the runner channel: ``GET /api/runner/jobs/next``."""

from __future__ import annotations

import asyncio
import contextlib
import time

from aiohttp import web

from runpack.api.common import json_response, policy
from runpack.appkeys import CALLER, HUB, KEYS, RUNNER_ID, SERVICE
from runpack.encoding import assignment
from runpack.errors import BadRequest, Unauthorized
from runpack.protocol import Role

routes = web.RouteTableDef()
MAX_LONG_POLL = 60.0


@routes.get("/api/runner/jobs/next")
@policy(Role.RUNNER, runner_header=True, failure="Failed to get the next job")
async def next_job(request: web.Request) -> web.Response:
    """Long-poll: a job already claimed for the caller, or 204 after ``wait`` seconds."""
    service = request.app[SERVICE]
    hub = request.app[HUB]
    rid = request[RUNNER_ID]
    asked = request.query.getall("types[]", [])
    seen = service.versions.generation
    types = await service.runnable_types(rid, asked)
    try:
        wait = float(request.query.get("wait", "20"))
    except ValueError:
        raise BadRequest("wait must be a number of seconds") from None
    if not 0 <= wait <= MAX_LONG_POLL:
        raise BadRequest(f"wait must be from 0 to {MAX_LONG_POLL:g} seconds")
    # A stored key revoked while the poll waits takes no job (see KeyRing.check_open).
    revoked = asyncio.Event()
    key = request[CALLER].key
    release = request.app[KEYS].hold(key, revoked.set) if key is not None else None
    deadline = time.monotonic() + wait
    try:
        while True:
            if hub.stopping or request.transport is None or request.transport.is_closing():
                # Nobody would read a job claimed now (the runner stopped, or restarts
                # under the same id): it would wait out the heartbeat timeout.
                return web.Response(status=204)
            if revoked.is_set():
                raise Unauthorized("Invalid API key", details="This key has been revoked")
            signal = hub.queued_signal()
            if seen != service.versions.generation:  # a job type's version changed
                seen = service.versions.generation
                types = await service.runnable_types(rid, asked)
            job = await service.claim_next(rid, types)
            if job is not None:
                return json_response({"job": assignment(job).body()})
            left = deadline - time.monotonic()
            if left <= 0:
                return web.Response(status=204)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(signal.wait(), min(left, 1.0))
    finally:
        if release is not None:
            release()
