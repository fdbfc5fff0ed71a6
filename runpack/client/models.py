"""What the server answers, as the client hands it back: results of submit, check,
status and cancel, rows of the admin lists, and the events of a job's stream."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from runpack.protocol import FINAL

#: Statuses after which a job's stream ends.
FINAL_STATUSES = frozenset({*(s.value for s in FINAL), "deleted"})


@dataclass(frozen=True, slots=True)
class Progress:
    current: int | None
    total: int | None

    @classmethod
    def from_json(cls, data: Any) -> Progress | None:
        if not isinstance(data, dict):
            return None
        return cls(data.get("current"), data.get("total"))


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """``POST /api/jobs/submit``: the job, new or the existing one with the same inputs."""

    job_id: str
    status: str
    message: str
    #: True when this submit queued the job (HTTP 201), False for an existing one.
    created: bool
    #: ``{"output_data", "console_output"}`` of a cached result.
    result: dict[str, Any] | None = None
    error: str | None = None

    @property
    def output_data(self) -> dict[str, Any] | None:
        return None if self.result is None else self.result.get("output_data")


@dataclass(frozen=True, slots=True)
class CheckResult:
    """``POST /api/jobs/check``: whether a job with these inputs exists, and its state."""

    exists: bool
    message: str
    job_id: str | None = None
    status: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class JobInfo:
    """``GET /api/jobs/{id}``."""

    job_id: str
    status: str
    job_type: str
    created_at: int
    updated_at: int
    progress: Progress | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    #: A pending job: where it stands (``position``, ``runners``, ``slots``,
    #: ``estimated_start_s``, ``message``).
    queue: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class CancelResult:
    job_id: str
    status: str
    message: str


@dataclass(frozen=True, slots=True)
class JobSummary:
    """A row of ``GET /api/admin/jobs``."""

    job_id: str
    job_type: str
    status: str
    created_at: int
    updated_at: int
    claimed_by: str | None = None
    #: The name of the runner in ``claimed_by``.
    runner_name: str | None = None


class JobPage(list[JobSummary]):
    """A page of ``GET /api/admin/jobs``: its rows, as a list, and ``next``: pass it as
    ``after`` for the following page (None: no more follow)."""

    def __init__(self, jobs: Iterable[JobSummary] = (), next_page: str | None = None) -> None:
        super().__init__(jobs)
        self.next = next_page

    def __repr__(self) -> str:
        return f"JobPage({list(self)!r}, next={self.next!r})"


@dataclass(frozen=True, slots=True)
class RunnerInfo:
    """A row of ``GET /api/admin/runners``; ``live`` holds the connection's details."""

    runner_id: str
    name: str
    capabilities: list[str]
    last_seen: int
    is_active: bool
    connected: bool
    live: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a job's stream.

    ``type`` is ``snapshot`` (the whole job, first), ``status`` (``{status, result?,
    error?, runner_id?}``), ``progress`` (``{current, total}``) or ``console``
    (``{append}`` or ``{replace}``). ``id`` is what a reconnect resumes from.
    """

    id: str | None
    type: str
    data: dict[str, Any]

    @property
    def status(self) -> str | None:
        if self.type in ("snapshot", "status"):
            status = self.data.get("status")
            return status if isinstance(status, str) else None
        return None

    @property
    def is_final(self) -> bool:
        """A final status: the stream ends after this event."""
        return self.status in FINAL_STATUSES

    @property
    def output_data(self) -> dict[str, Any] | None:
        """The result carried by a final ``completed`` event or snapshot."""
        if self.type == "snapshot":
            return self.data.get("output_data") or {}
        result = self.data.get("result")
        return result.get("output_data") or {} if isinstance(result, dict) else None

    @property
    def error(self) -> str | None:
        """The error of a failed or cancelled job."""
        value = self.data.get("error_message" if self.type == "snapshot" else "error")
        return value if isinstance(value, str) else None
