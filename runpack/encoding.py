"""Stored jobs and JSON text as they go into a reply or a runner's frame."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from runpack.protocol import Assignment

if TYPE_CHECKING:
    from runpack.store import JobRow


def parse_json_text(text: str | None, default: Any = None) -> Any:
    """``text`` parsed, or ``default`` when it is empty or not JSON."""
    if not text:
        return default
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return default


def params_fragment(text: str | None) -> Any:
    """Stored input parameters as they go into a frame or a reply, not parsed and
    printed again: the store holds them as JSON text the server wrote (or checked
    when it imported them)."""
    if text and text[0] == "{" and text[-1] == "}":
        return orjson.Fragment(text)
    return parse_json_text(text, {})


def assignment(job: JobRow) -> Assignment:
    """The job as it is pushed to its runner, or answered to its long-poll."""
    return Assignment(
        job.id,
        job.job_type,
        params_fragment(job.input_params),
        job.attempts,
        job.timeout / 1000 if job.timeout else None,
    )
