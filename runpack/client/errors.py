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


class JobFailed(Exception):
    """The job ended without a result: failed, cancelled, expired or deleted."""

    def __init__(self, job_id: str, status: str, error: str) -> None:
        self.job_id = job_id
        self.status = status
        self.error = error
        super().__init__(f"job {job_id} {status}: {error}")


def server_error(status: int, reply: Any, raw: bytes) -> RunpackClientError:
    """The error for a reply with an error status: the server's ``error`` and
    ``details`` when it sent them, else the start of the body."""
    if isinstance(reply, dict) and isinstance(reply.get("error"), str):
        details = reply.get("details")
        return RunpackClientError(status, reply["error"], None if details is None else str(details))
    text = raw.decode("utf-8", errors="replace").strip()[:200]
    return RunpackClientError(status, text or f"HTTP {status}")
