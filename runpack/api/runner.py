"""The original's runner routes (runner key; ``X-Runner-ID`` once registered)."""

from __future__ import annotations

from aiohttp import web

from runpack.api.common import (
    CALLER,
    SERVICE,
    json_response,
    optional_int,
    optional_str,
    policy,
    read_json,
    runner_id,
)
from runpack.errors import BadRequest, NotOwned
from runpack.identity import new_runner_secret
from runpack.protocol import Role
from runpack.service import parse_json_text

routes = web.RouteTableDef()


@routes.post("/api/runner/register")
@policy(Role.RUNNER, failure="Failed to register runner")
async def register(request: web.Request) -> web.Response:
    body = await read_json(request)
    # Runpack's runner asks for a secret of its own; the original's runner cannot.
    secret = new_runner_secret() if body.get("with_secret") is True else None
    runner = await request.app[SERVICE].register_runner(
        body.get("name"), body.get("capabilities"), owner=request[CALLER].owner, secret=secret
    )
    answer = {"runner_id": runner.id, "message": "Runner registered successfully"}
    if secret is not None:
        answer["runner_secret"] = secret
    return json_response(answer, status=201)


@routes.get("/api/runner/verify")
@policy(Role.RUNNER, failure="Failed to verify runner")
async def verify(request: web.Request) -> web.Response:
    rid = runner_id(request)
    runner = await request.app[SERVICE].store.get_runner(rid)
    if runner is None:
        return json_response({"exists": False, "message": "Runner not found"}, status=404)
    return json_response(
        {"exists": True, "runner_name": runner.name, "message": "Runner verified successfully"}
    )


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
    await service.touch_runner(runner_id(request))
    jobs = await service.available_jobs(request.query.getall("types[]", []))
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
@policy(Role.RUNNER, runner_header=True, failure="Failed to claim job")
async def claim(request: web.Request) -> web.Response:
    # No body is read: the original's client sends a JSON content type and nothing else.
    service = request.app[SERVICE]
    await service.touch_runner(runner_id(request))
    job = await service.claim(runner_id(request), request.match_info["job_id"])
    return json_response(
        {
            "success": True,
            "message": "Job claimed successfully",
            "job": {
                "job_id": job.id,
                "job_type": job.job_type,
                "input_params": parse_json_text(job.input_params, {}),
                "attempt": job.attempts,
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
)
async def heartbeat(request: web.Request) -> web.Response:
    body = await read_json(request)
    service = request.app[SERVICE]
    await service.touch_runner(runner_id(request))
    await service.heartbeat(
        runner_id(request),
        request.match_info["job_id"],
        optional_int(body, "progress_current"),
        optional_int(body, "progress_total"),
        optional_str(body, "console_output"),
    )
    return json_response({"success": True, "message": "Heartbeat updated successfully"})


@routes.post("/api/runner/jobs/{job_id}/complete")
@policy(Role.RUNNER, runner_header=True, failure="Failed to complete job")
async def complete(request: web.Request) -> web.Response:
    body = await read_json(request)
    output = body.get("output_data")
    if not isinstance(output, dict):
        raise BadRequest("output_data must be an object")
    service = request.app[SERVICE]
    await service.touch_runner(runner_id(request))
    await service.complete(
        runner_id(request),
        request.match_info["job_id"],
        output,
        optional_str(body, "console_output"),
    )
    return json_response({"success": True, "message": "Job completed successfully"})


@routes.post("/api/runner/jobs/{job_id}/error")
@policy(Role.RUNNER, runner_header=True, failure="Failed to mark job as failed")
async def error(request: web.Request) -> web.Response:
    body = await read_json(request)
    message = body.get("error_message")
    if not isinstance(message, str):
        raise BadRequest("error_message must be a string")
    retryable = body.get("retryable", False)
    if not isinstance(retryable, bool):
        raise BadRequest("retryable must be a boolean")
    service = request.app[SERVICE]
    await service.touch_runner(runner_id(request))
    end = service.retry_later if retryable else service.fail
    await end(
        runner_id(request),
        request.match_info["job_id"],
        message,
        optional_str(body, "console_output"),
    )
    if retryable:
        return json_response({"success": True, "message": "Job queued again to be retried"})
    return json_response({"success": True, "message": "Job marked as failed successfully"})


@routes.post("/api/runner/jobs/{job_id}/release")
@policy(Role.RUNNER, runner_header=True, failure="Failed to release job")
async def release(request: web.Request) -> web.Response:
    """Give a claimed job back to the queue at once (the runner cannot run it now)."""
    body = await read_json(request) if request.can_read_body else {}
    reason = optional_str(body, "reason") or "released by the runner"
    service = request.app[SERVICE]
    rid = runner_id(request)
    await service.touch_runner(rid)
    if not await service.release_jobs(rid, [request.match_info["job_id"]], reason[:500]):
        raise NotOwned()
    return json_response({"success": True, "message": "Job released"})
