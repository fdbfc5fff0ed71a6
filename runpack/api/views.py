"""Job and runner records rendered as the original's JSON shapes."""

from __future__ import annotations

from typing import Any

from runpack.encoding import parse_json_text
from runpack.store import JobRow, RunnerRow


def result_of(job: JobRow) -> dict[str, Any]:
    return {
        "output_data": parse_json_text(job.output_data, {}),
        "console_output": job.console_output or "",
    }


def progress_of(job: JobRow) -> dict[str, Any] | None:
    if job.progress_current is None or job.progress_total is None:
        return None
    return {"current": job.progress_current, "total": job.progress_total}


def job_status(job: JobRow) -> dict[str, Any]:
    """``GET /api/jobs/{id}``."""
    out: dict[str, Any] = {
        "job_id": job.id,
        "status": job.status,
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
    return out


def job_detail(job: JobRow) -> dict[str, Any]:
    """``GET /api/admin/jobs/{id}``."""
    out: dict[str, Any] = {
        "job_id": job.id,
        "job_type": job.job_type,
        "status": job.status,
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
    return out


def job_summary(job: JobRow) -> dict[str, Any]:
    """A row of ``GET /api/admin/jobs``."""
    return {
        "job_id": job.id,
        "job_type": job.job_type,
        "status": job.status,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "claimed_by": job.claimed_by,
    }


def runner_summary(
    runner: RunnerRow, is_active: bool, live: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A runner, plus its live connection to this server when it has one."""
    return {
        "runner_id": runner.id,
        "name": runner.name,
        "capabilities": parse_json_text(runner.capabilities, []),
        "last_seen": runner.last_seen,
        "is_active": is_active,
        **(live or {"connected": False}),
    }
