"""Job and runner records rendered as the original's JSON shapes.

Each shape is a TypedDict: the handlers build it, and the OpenAPI description
(runpack/api/openapi_models.py) describes it from the same class.
"""

from __future__ import annotations

from typing import Annotated, Any, NotRequired, TypedDict, cast

from aiohttp import web

from runpack.appkeys import RUNNER_NAMES, STANDING
from runpack.encoding import parse_json_text
from runpack.protocol import JobStatus
from runpack.standing import QueueState
from runpack.store import JobRow, RunnerRow

Ms = Annotated[int, "Milliseconds since the epoch."]


class Progress(TypedDict):
    current: int
    total: int


class Result(TypedDict):
    output_data: dict[str, Any]
    console_output: str


class SubmitAnswer(TypedDict):
    """`POST /api/jobs/submit`: the job, and its cached result or error."""

    job_id: str
    status: JobStatus
    message: str
    result: NotRequired[Result]
    error: NotRequired[str]


class CheckAnswer(TypedDict):
    """`POST /api/jobs/check`: whether the job exists, and its state."""

    exists: bool
    message: str
    job_id: NotRequired[str]
    status: NotRequired[JobStatus]
    result: NotRequired[Result]
    error: NotRequired[str]


class JobState(TypedDict):
    """`GET /api/jobs/{job_id}`: no `message`, as in the original."""

    job_id: str
    status: JobStatus
    job_type: str
    created_at: Ms
    updated_at: Ms
    progress: NotRequired[Progress]
    result: NotRequired[Result]
    error: NotRequired[str]
    #: A pending job: where it stands (not in the original).
    queue: NotRequired[QueueState]


class Job(TypedDict):
    """A job's details (also the `snapshot` event of its stream)."""

    job_id: str
    job_type: str
    status: JobStatus
    input_params: dict[str, Any]
    created_at: Ms
    updated_at: Ms
    claimed_by: str | None
    claimed_at: Ms | None
    console_output: str
    last_heartbeat: Ms | None
    job_hash: str
    priority: int
    attempts: int
    max_attempts: int
    progress: NotRequired[Progress]
    output_data: NotRequired[dict[str, Any]]
    error_message: NotRequired[str]
    #: The name of the runner in ``claimed_by``.
    runner_name: NotRequired[str]
    #: A pending job: where it stands.
    queue: NotRequired[QueueState]


class JobSummary(TypedDict):
    job_id: str
    job_type: str
    status: JobStatus
    created_at: Ms
    updated_at: Ms
    claimed_by: NotRequired[str | None]
    #: The name of the runner in ``claimed_by``.
    runner_name: NotRequired[str]


class Runner(TypedDict):
    runner_id: str
    name: str
    capabilities: list[str]
    last_seen: Ms
    is_active: bool
    connected: Annotated[bool, "Has a socket to one of the server's instances."]
    instance: NotRequired[
        Annotated[str, "The id of the instance holding its socket (while connected)."]
    ]
    transport: NotRequired[str]
    concurrency: NotRequired[int]
    free_slots: NotRequired[int]
    current_jobs: NotRequired[list[str]]
    versions: NotRequired[
        Annotated[dict[str, str], "The versions its handlers declared, by job type."]
    ]
    images: NotRequired[
        Annotated[
            list[str],
            "The images it allows container jobs (patterns, tags resolved when it"
            " registered): it is given only the container jobs of these.",
        ]
    ]


class RunnerDetail(Runner):
    registered_at: Ms
    #: The jobs it claimed (rows without ``claimed_by``).
    jobs: list[JobSummary]


def result_of(job: JobRow) -> Result:
    return {
        "output_data": parse_json_text(job.output_data, {}),
        "console_output": job.console_output or "",
    }


def progress_of(job: JobRow) -> Progress | None:
    if job.progress_current is None or job.progress_total is None:
        return None
    return {"current": job.progress_current, "total": job.progress_total}


def job_status(job: JobRow, queue: QueueState | None = None) -> JobState:
    """``GET /api/jobs/{id}``; ``queue``: where a pending job stands."""
    out: JobState = {
        "job_id": job.id,
        "status": JobStatus(job.status),
        "job_type": job.job_type,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
    }
    progress = progress_of(job)
    if progress is not None:
        out["progress"] = progress
    if job.status == "completed" and job.output_data:
        out["result"] = result_of(job)
    if job.status == "failed" and job.error_message:
        out["error"] = job.error_message
    if queue is not None:
        out["queue"] = queue
    return out


def job_detail(
    job: JobRow, queue: QueueState | None = None, runner_name: str | None = None
) -> dict[str, Any]:
    """``GET /api/admin/jobs/{id}``, and the ``snapshot`` event of a job's stream."""
    out: Job = {
        "job_id": job.id,
        "job_type": job.job_type,
        "status": JobStatus(job.status),
        "input_params": parse_json_text(job.input_params, {}),
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "claimed_by": job.claimed_by,
        "claimed_at": job.claimed_at,
        "console_output": job.console_output or "",
        "last_heartbeat": job.last_heartbeat,
        "job_hash": job.job_hash,
        "priority": job.priority,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
    }
    progress = progress_of(job)
    if progress is not None:
        out["progress"] = progress
    if job.output_data:
        out["output_data"] = parse_json_text(job.output_data, {})
    if job.error_message:
        out["error_message"] = job.error_message
    if runner_name is not None:
        out["runner_name"] = runner_name
    if queue is not None:
        out["queue"] = queue
    return cast(dict[str, Any], out)  # as the event streams carry it


async def live_detail(app: web.Application, job: JobRow) -> dict[str, Any]:
    """:func:`job_detail` with where a pending job stands and its runner's name."""
    names = await app[RUNNER_NAMES].of([job.claimed_by])
    queue = await app[STANDING].of(job)
    return job_detail(job, queue, names.get(job.claimed_by or ""))


def job_summary(job: JobRow, names: dict[str, str] | None = None) -> JobSummary:
    """A row of ``GET /api/admin/jobs``; ``names``: runner names by id."""
    out: JobSummary = {
        "job_id": job.id,
        "job_type": job.job_type,
        "status": JobStatus(job.status),
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "claimed_by": job.claimed_by,
    }
    if names and job.claimed_by in names:
        out["runner_name"] = names[job.claimed_by]
    return out


def runner_summary(
    runner: RunnerRow,
    is_active: bool,
    live: dict[str, Any] | None = None,
    versions: dict[str, str] | None = None,
    images: list[str] | None = None,
) -> Runner:
    """A runner, plus its live connection to this server when it has one, the versions
    its handlers declared if any, and its image allow list if it sent one."""
    out: Runner = {
        "runner_id": runner.id,
        "name": runner.name,
        "capabilities": parse_json_text(runner.capabilities, []),
        "last_seen": runner.last_seen,
        "is_active": is_active,
        "connected": False,
    }
    if live is not None:
        out.update(cast(Runner, live))
    if versions:
        out["versions"] = versions
    if images is not None:
        out["images"] = images
    return out


def runner_detail(
    runner: RunnerRow,
    is_active: bool,
    live: dict[str, Any] | None,
    jobs: list[JobRow],
    versions: dict[str, str] | None = None,
    images: list[str] | None = None,
) -> RunnerDetail:
    """``GET /api/admin/runners/{id}``: the runner and the jobs it claimed."""
    rows = [job_summary(job) for job in jobs]
    for row in rows:
        del row["claimed_by"]
    return {
        **runner_summary(runner, is_active, live, versions, images),
        "registered_at": runner.registered_at,
        "jobs": rows,
    }
