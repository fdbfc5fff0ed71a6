"""The original's runner routes (runner key; ``X-Runner-ID`` once registered)."""

from __future__ import annotations

from typing import TypeVar

from aiohttp import web

from runpack import protocol
from runpack.api.common import json_response, policy, read_json, runner_id
from runpack.appkeys import CALLER, RUNNER_ID, SERVICE
from runpack.encoding import parse_json_text
from runpack.errors import BadRequest, ClaimLost, NotOwned
from runpack.identity import new_runner_secret
from runpack.protocol import (
    Complete,
    Failure,
    Heartbeat,
    Registered,
    Registration,
    Release,
    Role,
)

routes = web.RouteTableDef()

R = TypeVar("R", Heartbeat, Complete, Failure, Release)


async def read_report(request: web.Request, kind: type[R], body_optional: bool = False) -> R:
    """The body of ``POST /api/runner/jobs/{job_id}/<kind>``, read as the WebSocket
    frame of that kind is (runpack.protocol): the same checks, the same answers."""
    body = await read_json(request) if request.can_read_body or not body_optional else {}
    try:
        return kind.read(request.match_info["job_id"], body)
    except protocol.ProtocolError as exc:
        raise BadRequest(exc.error, details=exc.details) from None


@routes.post("/api/runner/register")
@policy(Role.RUNNER, bucket="registrations", failure="Failed to register runner")
async def register(request: web.Request) -> web.Response:
    try:
        asked = Registration.read(await read_json(request))
    except protocol.ProtocolError as exc:
        raise BadRequest(exc.error, details=exc.details) from None
    # Runpack's runner asks for a secret of its own; the original's runner cannot.
    secret = new_runner_secret() if asked.with_secret else None
    runner = await request.app[SERVICE].register_runner(
        asked.name,
        asked.capabilities,
        owner=request[CALLER].owner,
        secret=secret,
        versions=asked.versions,
        images=asked.images,
    )
    return json_response(Registered(runner.id, runner_secret=secret).body(), status=201)


@routes.get("/api/runner/verify")
@policy(Role.RUNNER, failure="Failed to verify runner", errors=(BadRequest,))
async def verify(request: web.Request) -> web.Response:
    rid = runner_id(request)
    runner = await request.app[SERVICE].store.get_runner(rid)
    if runner is None:
        return _unknown_runner()
    return _verified(runner.name)


@routes.post("/api/runner/verify")
@policy(Role.RUNNER, failure="Failed to verify runner", errors=(BadRequest,))
async def verify_and_declare(request: web.Request) -> web.Response:
    """``GET /api/runner/verify`` that also registers the runner again under its id: the
    body is a registration's (``with_secret`` aside: a secret is given once), and from
    now on the runner is what it says. The policy has refused (403) another key's
    runner, or a missing or wrong secret; a bad body is a 400; neither changes a thing."""
    rid = runner_id(request)
    try:
        asked = Registration.read(await read_json(request))
    except protocol.ProtocolError as exc:
        raise BadRequest(exc.error, details=exc.details) from None
    declared = await request.app[SERVICE].declare_runner(
        rid, request[CALLER].owner, asked.name, asked.capabilities, asked.versions, asked.images
    )
    if not declared:
        return _unknown_runner()
    return _verified(asked.name)


def _verified(name: str) -> web.Response:
    return json_response(
        {"exists": True, "runner_name": name, "message": "Runner verified successfully"}
    )


def _unknown_runner() -> web.Response:
    return json_response({"exists": False, "message": "Runner not found"}, status=404)


@routes.get("/api/runner/jobs/available")
@policy(
    Role.RUNNER,
    bucket="available",
    per_runner=True,
    runner_header=True,
    failure="Failed to get available jobs",
)
async def available(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    types = await service.runnable_types(request[RUNNER_ID], request.query.getall("types[]", []))
    jobs = await service.available_jobs(types)
    return json_response(
        {
            "jobs": [
                {
                    "job_id": job.id,
                    "job_type": job.job_type,
                    "input_params": parse_json_text(job.input_params, {}),
                    "created_at": job.created_at,
                }
                for job in jobs
            ]
        }
    )


@routes.post("/api/runner/jobs/{job_id}/claim")
@policy(Role.RUNNER, runner_header=True, failure="Failed to claim job", errors=(ClaimLost,))
async def claim(request: web.Request) -> web.Response:
    # No body is read: the original's client sends a JSON content type and nothing else.
    service = request.app[SERVICE]
    job = await service.claim(request[RUNNER_ID], request.match_info["job_id"])
    return json_response(
        {
            "success": True,
            "message": "Job claimed successfully",
            "job": {
                "job_id": job.id,
                "job_type": job.job_type,
                "input_params": parse_json_text(job.input_params, {}),
                "attempt": job.attempts,
                "timeout": job.timeout / 1000 if job.timeout else None,
            },
        }
    )


@routes.post("/api/runner/jobs/{job_id}/heartbeat")
@policy(
    Role.RUNNER,
    bucket="heartbeat",
    per_runner=True,
    runner_header=True,
    failure="Failed to update heartbeat",
    errors=(NotOwned,),
)
async def heartbeat(request: web.Request) -> web.Response:
    beat = await read_report(request, Heartbeat)
    service = request.app[SERVICE]
    await service.heartbeat(
        request[RUNNER_ID],
        beat.job_id,
        beat.progress_current,
        beat.progress_total,
        beat.console_output,
        console_append=beat.console_append,
    )
    return json_response({"success": True, "message": "Heartbeat updated successfully"})


@routes.post("/api/runner/jobs/{job_id}/complete")
@policy(Role.RUNNER, runner_header=True, failure="Failed to complete job", errors=(NotOwned,))
async def complete(request: web.Request) -> web.Response:
    result = await read_report(request, Complete)
    service = request.app[SERVICE]
    await service.complete(
        request[RUNNER_ID], result.job_id, result.output_data, result.console_output
    )
    return json_response({"success": True, "message": "Job completed successfully"})


@routes.post("/api/runner/jobs/{job_id}/error")
@policy(Role.RUNNER, runner_header=True, failure="Failed to mark job as failed", errors=(NotOwned,))
async def error(request: web.Request) -> web.Response:
    report = await read_report(request, Failure)
    service = request.app[SERVICE]
    end = service.retry_later if report.retryable else service.fail
    await end(
        request[RUNNER_ID],
        report.job_id,
        report.error_message,
        report.console_output,
    )
    if report.retryable:
        return json_response({"success": True, "message": "Job queued again to be retried"})
    return json_response({"success": True, "message": "Job marked as failed successfully"})


@routes.post("/api/runner/jobs/{job_id}/release")
@policy(Role.RUNNER, runner_header=True, failure="Failed to release job", errors=(NotOwned,))
async def release(request: web.Request) -> web.Response:
    """Give a claimed job back to the queue at once (the runner cannot run it now)."""
    released = await read_report(request, Release, body_optional=True)
    service = request.app[SERVICE]
    if not await service.release_jobs(request[RUNNER_ID], [released.job_id], released.reason):
        raise NotOwned()
    return json_response({"success": True, "message": "Job released"})
