"""Domain errors. Each class carries its HTTP status; the docstring is the message.

One middleware renders every error as ``{"error": ..., "details": ...}``, or, for
the few replies whose shape the original fixed differently, the ``body`` given.
"""

from __future__ import annotations

from typing import Any, ClassVar


class RunpackError(Exception):
    """Internal server error"""

    status: ClassVar[int] = 500

    def __init__(
        self,
        message: str | None = None,
        *,
        details: str | None = None,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or (type(self).__doc__ or "Error").strip()
        self.details = details
        self.body = body
        self.headers = headers or {}
        super().__init__(self.message)

    def to_body(self) -> dict[str, Any]:
        if self.body is not None:
            return self.body
        out: dict[str, Any] = {"error": self.message}
        if self.details is not None:
            out["details"] = self.details
        return out


class BadRequest(RunpackError):
    """Invalid request"""

    status = 400


class Unauthorized(RunpackError):
    """Invalid API key"""

    status = 401


class Forbidden(RunpackError):
    """This key's role may not do that"""

    status = 403


class NotFound(RunpackError):
    """Not found"""

    status = 404


class JobNotFound(NotFound):
    """Job not found"""


class RunnerNotFound(NotFound):
    """Runner not found"""


class Conflict(RunpackError):
    """Conflict"""

    status = 409


class NotCancellable(Conflict):
    """Job cannot be cancelled"""


class ClaimLost(Conflict):
    """Job already claimed or not found"""

    def __init__(self) -> None:
        super().__init__(body={"success": False, "message": "Job already claimed or not found"})


class NotOwned(BadRequest):
    """Job not found or not claimed by this runner"""

    def __init__(self) -> None:
        super().__init__(
            body={"success": False, "message": "Job not found or not claimed by this runner"}
        )


class TooLarge(RunpackError):
    """Request body too large"""

    status = 413


class InsufficientStorage(RunpackError):
    """Insufficient storage: the server cannot store the files now"""

    status = 507


class StorageNotWritable(RunpackError):
    """The server's file storage is not writable now"""

    status = 503


class RateLimited(RunpackError):
    """Rate limit exceeded"""

    status = 429

    def __init__(
        self, reset_ms: int, retry_after_s: int, details: str = "", limit: str = ""
    ) -> None:
        # The original's body (error, resetTime), with which limit and what raises it.
        body: dict[str, object] = {"error": "Rate limit exceeded", "resetTime": reset_ms}
        if details:
            body["details"] = details
        if limit:
            body["limit"] = limit
        super().__init__(details=details or None, body=body)
        self.headers = {"Retry-After": str(retry_after_s)}
        self.reset_ms = reset_ms
        self.retry_after_s = retry_after_s
        self.limit = limit


class StoreError(RunpackError):
    """Database error"""

    status = 503


class StoreUnavailable(StoreError):
    """Database unavailable: try again shortly"""

    #: Seconds a client should wait before trying again (the ``Retry-After`` header).
    RETRY_AFTER = 1

    def __init__(self, *, details: str | None = None) -> None:
        super().__init__(details=details, headers={"Retry-After": str(self.RETRY_AFTER)})
