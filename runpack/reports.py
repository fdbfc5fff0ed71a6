"""What a runner reports about a job, read once for both channels.

A heartbeat, a result, an error or a release comes as the body of an HTTP call
(``POST /api/runner/jobs/{id}/…``) or as a WebSocket frame. Both are read here,
into one typed shape each, with the same checks and the same error text, so a
bad report gets the same answer on either channel. The limits that come from
the settings (console, output and error sizes) are checked by the service,
which both channels call with these shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runpack.errors import BadRequest

#: Progress numbers stay within what both engines store (BIGINT), with room to spare.
MAX_PROGRESS = 2**62 - 1
#: A release's reason is a note kept on the job: longer ones are cut to this many chars.
MAX_REASON_CHARS = 500
RELEASED_BY_RUNNER = "released by the runner"


@dataclass(frozen=True, slots=True)
class Heartbeat:
    progress_current: int | None
    progress_total: int | None
    #: Replaces the job's console.
    console_output: str | None
    #: Appended to the job's console (WebSocket runners).
    console_append: str | None


@dataclass(frozen=True, slots=True)
class Completion:
    output_data: dict[str, Any]
    console_output: str | None


@dataclass(frozen=True, slots=True)
class Failure:
    error_message: str
    console_output: str | None
    #: A reason outside the job: queued again with backoff while attempts remain.
    retryable: bool


def heartbeat(body: dict[str, Any]) -> Heartbeat:
    return Heartbeat(
        progress_current=_progress(body, "progress_current"),
        progress_total=_progress(body, "progress_total"),
        console_output=_text(body, "console_output"),
        console_append=_text(body, "console_append"),
    )


def completion(body: dict[str, Any]) -> Completion:
    output = body.get("output_data")
    if not isinstance(output, dict):
        raise _invalid("output_data", "expected object")
    return Completion(output, _text(body, "console_output"))


def failure(body: dict[str, Any]) -> Failure:
    message = body.get("error_message")
    if not isinstance(message, str):
        raise _invalid("error_message", "expected str")
    retryable = body.get("retryable", False)
    if retryable is None:
        retryable = False
    if not isinstance(retryable, bool):
        raise _invalid("retryable", "expected bool")
    return Failure(message, _text(body, "console_output"), retryable)


def release_reason(body: dict[str, Any]) -> str:
    """The reason given, cut to MAX_REASON_CHARS (a note, not something to refuse)."""
    reason = _text(body, "reason") or RELEASED_BY_RUNNER
    return reason[:MAX_REASON_CHARS]


def _progress(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(name, "expected int")
    if isinstance(value, float):  # 3.0 from a JavaScript runner is 3
        if not value.is_integer():
            raise _invalid(name, "expected int")
        value = int(value)
    if not -MAX_PROGRESS <= value <= MAX_PROGRESS:
        raise BadRequest(f"Invalid field: {name}", details=f"out of range (at most {MAX_PROGRESS})")
    return value


def _text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise _invalid(name, "expected str")
    return value


def _invalid(name: str, details: str) -> BadRequest:
    return BadRequest(f"Invalid or missing field: {name}", details=details)
