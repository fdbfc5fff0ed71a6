"""Client routes: submit, check, status, cancel (submit key).

Submits, checks and status reads count against the address's request budget; a
submit that queues a job, or runs one again, also against the new-work budget
(runpack.api.limits).

A stored key limited to some job types acts only on jobs of those types, whichever
route names the job; a stored key's priority ceiling bounds what it submits.
"""

from __future__ import annotations

from aiohttp import web

from runpack.api.common import json_response, policy
from runpack.api.job_requests import job_request_of
from runpack.api.views import CheckAnswer, SubmitAnswer, job_status, result_of
from runpack.appkeys import CALLER, INPUTS, LIMITS, ROLE, SERVICE, STANDING
from runpack.errors import BadRequest, JobNotFound, NotCancellable
from runpack.protocol import JobStatus, Role
from runpack.service.core import Answer, Outcome

routes = web.RouteTableDef()


def _error_text(result: Answer) -> str:
    assert result.job is not None
    return result.job.error_message or "Unknown error"


@routes.post("/api/jobs/submit")
@policy(Role.SUBMIT, bucket="requests", failure="Failed to submit job")
async def submit(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    job_request = await job_request_of(request)
    caller = request[CALLER]
    caller.check_job_type(job_request.job_type)
    caller.check_priority(job_request.priority)
    try:
        await request.app[INPUTS].check_named(job_request.input_params)
    except BadRequest:  # a file swept since: a job it computed still answers
        if (await service.check(job_request)).outcome != Outcome.CACHED:
            raise
    result = await service.submit(job_request, request.app[LIMITS].work_budget(request))
    job = result.job
    assert job is not None
    if result.outcome == Outcome.CREATED:
        # As the original answers; a new job may be claimed already, for a runner
        # that had a free slot (the status route tells).
        created = SubmitAnswer(
            job_id=job.id, status=JobStatus.PENDING, message="Job queued successfully"
        )
        return json_response(created, status=201)
    body = SubmitAnswer(job_id=job.id, status=JobStatus(job.status), message="")
    if result.outcome == Outcome.CACHED:
        body["message"] = "Job already completed (cached result)"
        body["result"] = result_of(job)
    elif result.outcome == Outcome.FAILED:
        body["message"] = "Job previously failed"
        body["error"] = _error_text(result)
    else:
        body["message"] = f"Job is {job.status}"
    return json_response(body)


@routes.post("/api/jobs/check")
@policy(Role.SUBMIT, bucket="requests", failure="Failed to check job")
async def check(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    job_request = await job_request_of(request)
    request[CALLER].check_job_type(job_request.job_type)
    result = await service.check(job_request)
    job = result.job
    if result.outcome == Outcome.MISSING or job is None:
        return json_response(CheckAnswer(exists=False, message="Job does not exist"))
    body = CheckAnswer(exists=True, job_id=job.id, status=JobStatus(job.status), message="")
    if result.outcome == Outcome.CACHED:
        body["message"] = "Job exists with cached result"
        body["result"] = result_of(job)
    elif result.outcome == Outcome.EXPIRED:
        body["status"] = JobStatus.EXPIRED
        body["message"] = "Job exists but result has expired"
    elif result.outcome == Outcome.FAILED:
        body["message"] = "Job exists but previously failed"
        body["error"] = _error_text(result)
    else:
        body["message"] = f"Job exists and is {job.status}"
    return json_response(body)


@routes.post("/api/jobs/{job_id}/cancel")
@policy(Role.SUBMIT, failure="Failed to cancel job", errors=(JobNotFound, NotCancellable))
async def cancel(request: web.Request) -> web.Response:
    """Pending jobs with the submit key; running ones too with the admin key."""
    is_admin = request.get(ROLE) == Role.ADMIN
    who = "an administrator" if is_admin else "the client"
    caller = request[CALLER]
    job = await request.app[SERVICE].cancel(
        request.match_info["job_id"],
        any_state=is_admin,
        reason=f"Cancelled by {who}",
        check_type=lambda job_type: caller.check_job_type(job_type, "cancel"),
    )
    return json_response({"job_id": job.id, "status": job.status, "message": "Job cancelled"})


@routes.get("/api/jobs/{job_id}")
@policy(Role.SUBMIT, bucket="requests", failure="Failed to get job status", errors=(JobNotFound,))
async def status(request: web.Request) -> web.Response:
    job = await request.app[SERVICE].get_job(request.match_info["job_id"])
    # 403 rather than 404: the job's id already opens its public detail and stream.
    request[CALLER].check_job_type(job.job_type, "read")
    return json_response(job_status(job, await request.app[STANDING].of(job)))
