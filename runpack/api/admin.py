"""Admin routes: the admin key, or the runner key for reads as in the original."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from aiohttp import web

from runpack.api.common import json_response, policy, read_json
from runpack.api.views import job_summary, live_detail, runner_detail, runner_summary
from runpack.appkeys import RUNNER_NAMES, SERVICE
from runpack.errors import BadRequest, JobNotFound, NotCancellable, RunnerNotFound
from runpack.protocol import JobStatus, Role
from runpack.store.instances import RunnerPresence

routes = web.RouteTableDef()
MAX_LIST = 1000
MAX_BATCH = 1000
#: Runners per page of /api/admin/runners (the original's clients read the first page:
#: the runners seen last), and the most a caller may ask for.
RUNNERS_PAGE = 100
MAX_RUNNERS_PAGE = 500
STATUSES = frozenset(s.value for s in JobStatus)


def _int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer", details=raw) from None
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}")
    return value


def cursor(sort_key: int, row_id: str) -> str:
    """The opaque ``next`` of a page: where the following page starts."""
    return base64.urlsafe_b64encode(f"{sort_key}:{row_id}".encode()).decode().rstrip("=")


def _after(request: web.Request) -> tuple[int, str] | None:
    """The ``after`` query parameter: a ``next`` that an earlier page returned."""
    raw = request.query.get("after")
    if not raw:
        return None
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        sort_key, _, row_id = text.partition(":")
        return int(sort_key), row_id
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadRequest("after must be the next of an earlier page", details=raw) from None


@routes.get("/api/admin/stats")
@policy(Role.ADMIN_READ, failure="Failed to get statistics")
async def stats(request: web.Request) -> web.Response:
    return json_response(await request.app[SERVICE].stats())


@routes.get("/api/admin/jobs")
@policy(Role.ADMIN_READ, failure="Failed to get jobs", errors=(BadRequest,))
async def list_jobs(request: web.Request) -> web.Response:
    status = request.query.get("status") or None
    if status is not None and status not in STATUSES:
        raise BadRequest("Invalid status", details=f"one of {', '.join(JobStatus)}")
    job_type = request.query.get("job_type") or None
    limit = _int_query(request, "limit", 100, 1, MAX_LIST)
    offset = _int_query(request, "offset", 0, 0, 10**9)
    # One row more than asked says whether a following page exists.
    jobs = await request.app[SERVICE].list_jobs(
        status, job_type, limit + 1, offset, _after(request)
    )
    page = jobs[:limit]
    names = await request.app[RUNNER_NAMES].of(j.claimed_by for j in page)
    body: dict[str, object] = {"jobs": [job_summary(j, names) for j in page], "total": len(page)}
    if len(jobs) > limit:  # the original's fields, and where the following page starts
        body["next"] = cursor(page[-1].created_at, page[-1].id)
    return json_response(body)


@routes.get("/api/admin/jobs/{job_id}")
@policy(Role.PUBLIC, failure="Failed to get job details", errors=(JobNotFound,))
async def get_job(request: web.Request) -> web.Response:
    job = await request.app[SERVICE].get_job(request.match_info["job_id"])
    return json_response(await live_detail(request.app, job))


@routes.post("/api/admin/jobs/{job_id}/retry")
@policy(Role.ADMIN, failure="Failed to retry job", errors=(JobNotFound, NotCancellable))
async def retry_job(request: web.Request) -> web.Response:
    job = await request.app[SERVICE].retry(request.match_info["job_id"])
    return json_response({"job_id": job.id, "status": job.status, "message": "Job queued again"})


@routes.delete("/api/admin/jobs/{job_id}")
@policy(Role.ADMIN, failure="Failed to delete job", errors=(JobNotFound,))
async def delete_job(request: web.Request) -> web.Response:
    deleted = await request.app[SERVICE].delete_jobs([request.match_info["job_id"]])
    if not deleted:
        raise JobNotFound()
    return json_response({"success": True, "message": "Job deleted successfully"})


@routes.post("/api/admin/jobs/batch-delete")
@policy(Role.ADMIN, failure="Failed to delete jobs")
async def batch_delete(request: web.Request) -> web.Response:
    body = await read_json(request)
    ids = body.get("job_ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise BadRequest("Invalid request body. Expected { job_ids: string[] }")
    if not ids:
        raise BadRequest("No job IDs provided")
    if len(ids) > MAX_BATCH:
        raise BadRequest(f"At most {MAX_BATCH} job IDs per request")
    deleted = set(await request.app[SERVICE].delete_jobs(ids))
    failed = [i for i in ids if i not in deleted]
    return json_response(
        {
            "success": len(deleted) > 0,
            "deleted": len(deleted),
            "failed": failed,
            "message": f"Deleted {len(deleted)} of {len(ids)} jobs",
        }
    )


def live_state(presence: dict[str, RunnerPresence]) -> dict[str, dict[str, Any]]:
    """Each connected runner's connection, as recorded by the instance holding it: the
    same answer from every instance."""
    return {
        runner_id: {
            "connected": True,
            "instance": p.instance,
            "transport": p.transport,
            "concurrency": p.concurrency,
            "free_slots": max(0, p.concurrency - len(p.jobs)),
            "current_jobs": list(p.jobs),
        }
        for runner_id, p in presence.items()
    }


@routes.get("/api/admin/runners")
@policy(Role.ADMIN_READ, failure="Failed to get runners", errors=(BadRequest,))
async def list_runners(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    limit = _int_query(request, "limit", RUNNERS_PAGE, 1, MAX_RUNNERS_PAGE)
    offset = _int_query(request, "offset", 0, 0, 10**9)
    runners = await service.list_runners(limit + 1, offset, _after(request))
    page = runners[:limit]
    live = live_state(await service.presence([r.id for r in page]))
    versions = await service.store.runner_versions([r.id for r in page])
    images = await service.store.runner_images([r.id for r in page])
    body: dict[str, object] = {
        "runners": [
            runner_summary(
                r, service.runner_is_active(r), live.get(r.id), versions.get(r.id), images.get(r.id)
            )
            for r in page
        ],
        "total": len(page),
    }
    if len(runners) > limit:
        body["next"] = cursor(page[-1].last_seen, page[-1].id)
    return json_response(body)


@routes.get("/api/admin/runners/{runner_id}")
@policy(Role.ADMIN_READ, failure="Failed to get runner details", errors=(RunnerNotFound,))
async def get_runner(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    runner = await service.get_runner(request.match_info["runner_id"])
    jobs = await service.runner_jobs(runner.id)
    live = live_state(await service.presence([runner.id])).get(runner.id)
    versions = (await service.store.runner_versions([runner.id])).get(runner.id)
    images = (await service.store.runner_images([runner.id])).get(runner.id)
    active = service.runner_is_active(runner)
    return json_response(runner_detail(runner, active, live, jobs, versions, images))
