"""The frames a runner sends (runner -> server), and the reports' HTTP bodies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from runpack.protocol.constants import MAX_CONCURRENCY, MAX_REASON_CHARS, RELEASED_BY_RUNNER
from runpack.protocol.fields import (
    IN_PATH,
    ProtocolError,
    _int,
    _invalid,
    _job_id,
    _optional,
    _progress,
    _unknown,
    about,
)
from runpack.protocol.registration import check_images, check_registration, check_versions

#: A result's console: replaces the stored one, unless empty or missing.
KEEP_CONSOLE = "Empty or missing: keep it."

# The messages are plain (not frozen) dataclasses: a frozen one takes four times
# as long to make, and the server makes two per job it runs.


@dataclass(slots=True)
class Hello:
    """The first frame: who the runner is. ``jobs``: the ones it still holds (running,
    or with a result not yet acknowledged); ``runner_secret``: the one the welcome that
    registered it gave (required once a runner has one); ``versions``: its handlers'
    declared versions, by job type (see check_versions); ``images``: its allow list for
    the container job type (see check_images; None: it sends none)."""

    TYPE: ClassVar[str] = "hello"
    runner_id: str | None
    name: str
    capabilities: list[str]
    concurrency: int
    version: str = ""
    jobs: list[str] = field(default_factory=list)
    runner_secret: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    images: list[str] | None = None

    def encode(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "hello",
            "name": self.name,
            "capabilities": self.capabilities,
            "concurrency": self.concurrency,
            "version": self.version,
            "jobs": self.jobs,
        }
        if self.versions:
            out["versions"] = self.versions
        if self.images is not None:
            out["images"] = self.images
        if self.runner_id:
            out["runner_id"] = self.runner_id
            if self.runner_secret:
                out["runner_secret"] = self.runner_secret
        return out

    @classmethod
    def decode(cls, frame: dict[str, Any]) -> Hello:
        # The same rules as POST /api/runner/register, for a runner resuming too.
        name, capabilities = check_registration(frame.get("name"), frame.get("capabilities"))
        concurrency = _int(frame, "concurrency")
        if not 1 <= concurrency <= MAX_CONCURRENCY:
            raise ProtocolError("Invalid field: concurrency", f"from 1 to {MAX_CONCURRENCY}")
        jobs = _optional(frame, "jobs", list) or []
        if not all(isinstance(j, str) for j in jobs):
            raise ProtocolError("Invalid field: jobs", "expected job ids")
        version = frame.get("version")
        return cls(
            runner_id=_optional(frame, "runner_id", str),
            name=name,
            capabilities=capabilities,
            concurrency=concurrency,
            version=version if isinstance(version, str) else "",
            jobs=jobs,
            runner_secret=_optional(frame, "runner_secret", str),
            versions=check_versions(frame.get("versions"), capabilities),
            images=check_images(frame.get("images"), capabilities),
        )


@dataclass(slots=True)
class Ready:
    """Grants this many MORE job slots."""

    TYPE: ClassVar[str] = "ready"
    slots: int

    def encode(self) -> dict[str, Any]:
        return {"type": "ready", "slots": self.slots}

    @classmethod
    def decode(cls, frame: dict[str, Any]) -> Ready:
        slots = _int(frame, "slots")
        if slots < 0:
            raise ProtocolError("Invalid field: slots", "must be 0 or more")
        return cls(slots)


# The four reports about a job. Each is a frame, or the body of an HTTP call
# ``POST /api/runner/jobs/{job_id}/<kind>``: ``read(job_id, body)`` reads either.
# Their fields' metadata (``about``) is what the OpenAPI document says of each.
@dataclass(slots=True)
class Heartbeat:
    TYPE: ClassVar[str] = "heartbeat"
    job_id: str = field(metadata=IN_PATH)
    progress_current: int | None = None
    progress_total: int | None = None
    console_output: str | None = field(default=None, metadata=about("Replaces the stored console."))
    #: What Runpack's runner sends over WebSocket: only the new text.
    console_append: str | None = field(
        default=None,
        metadata=about(
            "Appended to the stored console, which keeps its last bytes within the limit;"
            " with it, `console_output` is ignored."
        ),
    )

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "progress_current": self.progress_current,
            "progress_total": self.progress_total,
        }
        if self.console_output is not None:
            body["console_output"] = self.console_output
        if self.console_append is not None:
            body["console_append"] = self.console_append
        return body

    def encode(self) -> dict[str, Any]:
        return {"type": "heartbeat", "job_id": self.job_id, **self.body()}

    @classmethod
    def read(cls, job_id: str, body: dict[str, Any]) -> Heartbeat:
        return cls(
            job_id,
            _progress(body, "progress_current"),
            _progress(body, "progress_total"),
            _optional(body, "console_output", str),
            _optional(body, "console_append", str),
        )

    @classmethod
    def decode(cls, frame: dict[str, Any]) -> Heartbeat:
        return cls.read(_job_id(frame), frame)


@dataclass(slots=True)
class Complete:
    TYPE: ClassVar[str] = "complete"
    job_id: str = field(metadata=IN_PATH)
    output_data: dict[str, Any]
    console_output: str | None = field(default=None, metadata=about(KEEP_CONSOLE))

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"output_data": self.output_data}
        if self.console_output is not None:
            body["console_output"] = self.console_output
        return body

    def encode(self) -> dict[str, Any]:
        return {"type": "complete", "job_id": self.job_id, **self.body()}

    @classmethod
    def read(cls, job_id: str, body: dict[str, Any]) -> Complete:
        output = body.get("output_data")
        if not isinstance(output, dict):
            raise _invalid("output_data", "expected object")
        return cls(job_id, output, _optional(body, "console_output", str))

    @classmethod
    def decode(cls, frame: dict[str, Any]) -> Complete:
        return cls.read(_job_id(frame), frame)


@dataclass(slots=True)
class Failure:
    """The job failed (frame type ``error``). ``retryable``: a reason outside the job
    (the server's disk was full); it is queued again with backoff while it has
    attempts left."""

    TYPE: ClassVar[str] = "error"
    job_id: str = field(metadata=IN_PATH)
    error_message: str
    console_output: str | None = field(default=None, metadata=about(KEEP_CONSOLE))
    retryable: bool = field(
        default=False,
        metadata=about(
            "The run failed for a reason outside the job (the server's disk was full): the"
            " job is queued again with backoff while it has attempts left, else failed."
        ),
    )

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error_message": self.error_message}
        if self.console_output is not None:
            body["console_output"] = self.console_output
        if self.retryable:
            body["retryable"] = True
        return body

    def encode(self) -> dict[str, Any]:
        return {"type": "error", "job_id": self.job_id, **self.body()}

    @classmethod
    def read(cls, job_id: str, body: dict[str, Any]) -> Failure:
        message = body.get("error_message")
        if not isinstance(message, str):
            raise _invalid("error_message", "expected str")
        retryable = _optional(body, "retryable", bool) or False
        return cls(job_id, message, _optional(body, "console_output", str), retryable)

    @classmethod
    def decode(cls, frame: dict[str, Any]) -> Failure:
        return cls.read(_job_id(frame), frame)


@dataclass(slots=True)
class Release:
    """Give a job back to the queue. The reason is a note kept on the job: one longer
    than MAX_REASON_CHARS is cut, not refused."""

    TYPE: ClassVar[str] = "release"
    job_id: str = field(metadata=IN_PATH)
    reason: str = field(
        default=RELEASED_BY_RUNNER,
        metadata=about(
            f"A note kept on the job; longer than {MAX_REASON_CHARS} characters, it is cut.",
            type=["string", "null"],
        ),
    )

    def body(self) -> dict[str, Any]:
        return {"reason": self.reason}

    def encode(self) -> dict[str, Any]:
        return {"type": "release", "job_id": self.job_id, "reason": self.reason}

    @classmethod
    def read(cls, job_id: str, body: dict[str, Any]) -> Release:
        reason = _optional(body, "reason", str) or RELEASED_BY_RUNNER
        return cls(job_id, reason[:MAX_REASON_CHARS])

    @classmethod
    def decode(cls, frame: dict[str, Any]) -> Release:
        return cls.read(_job_id(frame), frame)


Report = Heartbeat | Complete | Failure | Release
RunnerMessage = Hello | Ready | Report

_REPORTS: dict[str, type[Report]] = {
    kind.TYPE: kind for kind in (Heartbeat, Complete, Failure, Release)
}
_FROM_RUNNER: dict[str, type[RunnerMessage]] = {
    kind.TYPE: kind for kind in (Hello, Ready, Heartbeat, Complete, Failure, Release)
}
RUNNER_TO_SERVER = tuple(_FROM_RUNNER)


def decode_runner_frame(frame: dict[str, Any]) -> RunnerMessage:
    """A frame from a runner as its message; ProtocolError if it has no such shape."""
    kind = _FROM_RUNNER.get(frame.get("type"))  # type: ignore[arg-type]
    if kind is None:
        raise _unknown(frame, RUNNER_TO_SERVER)
    return kind.decode(frame)


def decode_report(frame: dict[str, Any]) -> Report:
    """A frame after the hello other than ``ready``: one of the four reports."""
    kind = _REPORTS.get(frame.get("type"))  # type: ignore[arg-type]
    if kind is None:
        raise _unknown(frame, RUNNER_TO_SERVER[1:])
    return kind.decode(frame)
