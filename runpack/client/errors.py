"""What the client raises: errors of the server or of the connection, and jobs that
end without a result."""

from __future__ import annotations

from typing import Any


class RunpackClientError(Exception):
    """The server answered with an error status (``status``), or could not be reached."""

    def __init__(self, status: int | None, error: str, details: str | None = None) -> None:
        self.status = status
        self.error = error
        self.details = details
        text = f"{status} {error}" if status is not None else error
        super().__init__(f"{text} ({details})" if details else text)


class RunpackConnectionError(RunpackClientError):
    """The server could not be reached, or the connection broke."""

    def __init__(self, error: str, details: str | None = None) -> None:
        super().__init__(None, error, details)


class RateLimitedError(RunpackClientError):
    """The server refused the request for now (429 Rate limit exceeded): ``details``
    says which limit and which setting raises it, ``retry_after`` how many seconds
    to wait, ``reset_time`` when (ms since epoch), ``limit`` which limit it was.
    Nothing was created. A client made with ``retry_on_limit=True`` waits and tries
    again instead of raising this."""

    def __init__(
        self,
        error: str,
        details: str | None,
        retry_after: float,
        reset_time: int | None = None,
        limit: str | None = None,
    ) -> None:
        self.retry_after = retry_after
        self.reset_time = reset_time
        self.limit = limit
        super().__init__(429, error, details)


class JobFailed(Exception):
    """The job ended without a result: failed, cancelled, expired or deleted."""

    def __init__(self, job_id: str, status: str, error: str) -> None:
        self.job_id = job_id
        self.status = status
        self.error = error
        super().__init__(f"job {job_id} {status}: {error}")


def server_error(
    status: int, reply: Any, raw: bytes, retry_after: str | None = None
) -> RunpackClientError:
    """The error for a reply with an error status: the server's ``error`` and
    ``details`` when it sent them, else the start of the body. A 429 is a
    :class:`RateLimitedError`, with the wait its ``Retry-After`` header gives."""
    if isinstance(reply, dict) and isinstance(reply.get("error"), str):
        details = reply.get("details")
        error, details = reply["error"], None if details is None else str(details)
    else:
        text = raw.decode("utf-8", errors="replace").strip()[:200]
        error, details = text or f"HTTP {status}", None
    if status == 429:
        reply = reply if isinstance(reply, dict) else {}
        reset = reply.get("resetTime")
        reset_time = reset if isinstance(reset, int) and not isinstance(reset, bool) else None
        limit = reply.get("limit") if isinstance(reply.get("limit"), str) else None
        return RateLimitedError(error, details, _seconds(retry_after), reset_time, limit)
    return RunpackClientError(status, error, details)


def _seconds(retry_after: str | None) -> float:
    """``Retry-After`` in seconds (1 if missing or a date: the server sends seconds)."""
    try:
        return max(0.0, float(retry_after)) if retry_after else 1.0
    except ValueError:
        return 1.0
