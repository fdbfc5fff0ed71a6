"""Shapes shared by the server and the runner daemon (standard library only).

Job states, the runner channel's message types and the size limits live here
once, so the two sides and the database CHECK constraint cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar


class JobStatus(StrEnum):
    PENDING = "pending"
    CLAIMED = "claimed"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


#: States in which a runner holds the job.
RUNNING = (JobStatus.CLAIMED, JobStatus.IN_PROGRESS)
#: States that a new submit may put back in the queue.
REQUEUEABLE = (JobStatus.FAILED, JobStatus.EXPIRED, JobStatus.CANCELLED)
#: States that never change on their own.
FINAL = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.EXPIRED, JobStatus.CANCELLED)


class Role(StrEnum):
    """Who may call a route (declared per route, enforced by middleware)."""

    PUBLIC = "public"
    SUBMIT = "submit"
    RUNNER = "runner"
    #: Read-only admin: the admin key, or the runner key as in the original.
    ADMIN_READ = "admin_read"
    #: Changes made by an administrator: the admin key only.
    ADMIN = "admin"


# Size limits of the original, counted in UTF-8 bytes.
MAX_PARAMS_BYTES = 102_400
MAX_OUTPUT_BYTES = 512_000
MAX_CONSOLE_BYTES = 1_048_576
MAX_ERROR_BYTES = 10_240
#: A job type, a runner's name and each of its capabilities (job types), in characters.
MAX_NAME_CHARS = 200
#: Job types one runner may declare.
MAX_CAPABILITIES = 256


# --- The runner channel: WebSocket ``GET /api/runner/ws`` --------------------------
# JSON text frames, each an object with a "type". Auth: ``Authorization: Bearer
# <runner key>`` on the upgrade request. Each frame kind is a class below, with
# ``encode()`` (the frame as a dict) and ``decode(frame)`` (raising ProtocolError,
# whose ``error`` and ``details`` are what the other side is told); the server reads
# runner frames with :func:`decode_runner_frame`, the runner server frames with
# :func:`decode_server_frame`. The four reports (heartbeat, complete, error,
# release) are also the bodies of ``POST /api/runner/jobs/{id}/…`` (with the job id
# in the path): :meth:`Heartbeat.read` and the others read both the same way.
#
# Flow control is by credits: the server never has more jobs out to a connection
# than the slots it was granted; a job pushed uses one slot, and the runner grants
# it back with `ready` when the job is released (after the ack), or when its run
# ended: once its complete or error is sent if the welcome said `free_on_result`
# (the server counts the job as the runner's until the ack, in no slot, and puts a
# new job in a slot so granted once the result is stored), else after the ack, as a
# server without the field expects. `ready` frames beyond the runner's concurrency
# (less the jobs it holds and the slots it granted) are ignored, whenever they come.
#
# A hello for a runner that another key registered, or without its secret, is
# refused with an error frame (code "not_your_runner") and close code 1008; a socket
# whose key is revoked gets one with code "key_revoked" and 1008 as well.
#
# Over HTTP a runner names itself with ``X-Runner-ID`` and, if it has a secret,
# proves it with ``X-Runner-Secret``; ``POST /api/runner/register`` with
# ``{"with_secret": true}`` answers the new runner's ``runner_secret`` too.


#: The WebSocket close code for a runner refused by policy (RFC 6455).
CLOSE_POLICY_VIOLATION = 1008
#: ``code`` of the error frame sent before such a close.
NOT_YOUR_RUNNER = "not_your_runner"
KEY_REVOKED = "key_revoked"
#: The header in which a runner with a secret of its own proves it over HTTP.
RUNNER_SECRET_HEADER = "X-Runner-Secret"

#: Runners send a heartbeat for each running job at least this often (seconds).
HEARTBEAT_INTERVAL = 30.0
#: The runner's entry-point group for job handlers.
HANDLER_ENTRY_POINT_GROUP = "runpack.handlers"

#: Progress numbers stay within what both engines store (BIGINT), with room to spare.
MAX_PROGRESS = 2**62 - 1
#: A release's reason is a note kept on the job: longer ones are cut to this many chars.
MAX_REASON_CHARS = 500
RELEASED_BY_RUNNER = "released by the runner"
#: Slots one runner may declare.
MAX_CONCURRENCY = 1000


# The messages are plain (not frozen) dataclasses: a frozen one takes four times
# as long to make, and the server makes two per job it runs.


class ProtocolError(ValueError):
    """A message without its kind's shape; ``error`` and ``details`` are what the
    sender is told (an error frame, or a 400 over HTTP)."""

    def __init__(self, error: str, details: str | None = None) -> None:
        super().__init__(error if details is None else f"{error}: {details}")
        self.error = error
        self.details = details


# --- runner -> server ---------------------------------------------------------------
@dataclass(slots=True)
class Hello:
    """The first frame: who the runner is. ``jobs``: the ones it still holds (running,
    or with a result not yet acknowledged); ``runner_secret``: the one the welcome that
    registered it gave (required once a runner has one)."""

    TYPE: ClassVar[str] = "hello"
    runner_id: str | None
    name: str
    capabilities: list[str]
    concurrency: int
    version: str = ""
    jobs: list[str] = field(default_factory=list)
    runner_secret: str | None = None

    def encode(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "hello",
            "name": self.name,
            "capabilities": self.capabilities,
            "concurrency": self.concurrency,
            "version": self.version,
            "jobs": self.jobs,
        }
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
@dataclass(slots=True)
class Heartbeat:
    TYPE: ClassVar[str] = "heartbeat"
    job_id: str
    progress_current: int | None = None
    progress_total: int | None = None
    #: Replaces the job's console.
    console_output: str | None = None
    #: Appended to the job's console (WebSocket runners).
    console_append: str | None = None

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
    job_id: str
    output_data: dict[str, Any]
    console_output: str | None = None

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
    job_id: str
    error_message: str
    console_output: str | None = None
    retryable: bool = False

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
    job_id: str
    reason: str = RELEASED_BY_RUNNER

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


# --- server -> runner ---------------------------------------------------------------
# The runner reads these leniently (a field of the wrong type takes its default), so
# that it keeps working with servers older or newer than itself.
@dataclass(slots=True)
class Welcome:
    """The answer to a hello. ``resumed``: held jobs the runner may finish;
    ``dropped``: stop these; ``free_on_result``: a job's slot is free once its result
    is sent; ``runner_secret``: the new runner's own secret, shown once (keep it)."""

    TYPE: ClassVar[str] = "welcome"
    runner_id: str
    heartbeat_interval: float | None = None
    resumed: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    #: max_output_bytes, max_console_bytes, max_error_bytes
    limits: dict[str, Any] = field(default_factory=dict)
    free_on_result: bool = False
    runner_secret: str | None = None
    server_version: str | None = None

    def encode(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "welcome"}
        if self.runner_secret is not None:
            out["runner_secret"] = self.runner_secret
        out.update(
            runner_id=self.runner_id,
            heartbeat_interval=self.heartbeat_interval,
            limits=self.limits,
            resumed=self.resumed,
            dropped=self.dropped,
        )
        if self.server_version is not None:
            out["server_version"] = self.server_version
        out["free_on_result"] = self.free_on_result
        return out

    @classmethod
    def decode(cls, frame: dict[str, Any]) -> Welcome:
        runner_id = frame.get("runner_id")
        if not isinstance(runner_id, str) or not runner_id:
            raise ProtocolError("welcome without a runner_id")
        limits = frame.get("limits")
        return cls(
            runner_id=runner_id,
            heartbeat_interval=positive(frame.get("heartbeat_interval")),
            resumed=_ids(frame.get("resumed")),
            dropped=_ids(frame.get("dropped")),
            limits=limits if isinstance(limits, dict) else {},
            free_on_result=frame.get("free_on_result") is True,
            runner_secret=_nonempty(frame.get("runner_secret")),
            server_version=_nonempty(frame.get("server_version")),
        )


@dataclass(slots=True)
class Assignment:
    """A job claimed for the runner: run it (frame type ``job``; over HTTP, the
    ``job`` of ``GET /api/runner/jobs/next`` and of a claim, without the type).
    The server may give ``input_params`` as JSON text ready to be written out
    (an ``orjson.Fragment``); the runner always reads an object."""

    TYPE: ClassVar[str] = "job"
    job_id: str
    job_type: str
    input_params: Any
    attempt: int = 1
    #: Seconds, or None for no limit.
    timeout: float | None = None

    def body(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "job_type": self.job_type,
            "input_params": self.input_params,
            "attempt": self.attempt,
            "timeout": self.timeout,
        }

    def encode(self) -> dict[str, Any]:
        return {
            "type": "job",
            "job_id": self.job_id,
            "job_type": self.job_type,
            "input_params": self.input_params,
            "attempt": self.attempt,
            "timeout": self.timeout,
        }

    @classmethod
    def read(cls, body: dict[str, Any]) -> Assignment:
        params, attempt, job_type = (
            body.get("input_params"),
            body.get("attempt"),
            body.get("job_type"),
        )
        return cls(
            job_id=_job_id(body),
            job_type=job_type if isinstance(job_type, str) else "",
            input_params=params if isinstance(params, dict) else {},
            attempt=attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else 1,
            timeout=positive(body.get("timeout")),
        )

    decode = read


@dataclass(slots=True)
class Cancel:
    """Stop running this job (it was cancelled): send nothing more about it."""

    TYPE: ClassVar[str] = "cancel"
    job_id: str
    reason: str = "cancelled"

    def encode(self) -> dict[str, Any]:
        return {"type": "cancel", "job_id": self.job_id, "reason": self.reason}

    @classmethod
    def decode(cls, frame: dict[str, Any]) -> Cancel:
        reason = frame.get("reason")
        return cls(_job_id(frame), reason if isinstance(reason, str) else "cancelled")


@dataclass(slots=True)
class Acked:
    """The server has a complete, error or release for good (frame type ``ack``);
    ``applied`` False: it was not needed (the job was final already, or not the
    runner's), ``reason`` says why. Either way the runner forgets it."""

    TYPE: ClassVar[str] = "ack"
    job_id: str
    of: str
    applied: bool
    reason: str | None = None

    def encode(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "ack",
            "job_id": self.job_id,
            "of": self.of,
            "applied": self.applied,
        }
        if self.reason is not None:
            out["reason"] = self.reason
        return out

    @classmethod
    def decode(cls, frame: dict[str, Any]) -> Acked:
        of, reason = frame.get("of"), frame.get("reason")
        return cls(
            _job_id(frame),
            of if isinstance(of, str) else "",
            frame.get("applied") is not False,
            reason if isinstance(reason, str) else None,
        )


@dataclass(slots=True)
class ErrorReply:
    """Something the runner sent could not be used (frame type ``error``). ``ref``:
    the type of the frame it answers; ``code``: one of NOT_YOUR_RUNNER and
    KEY_REVOKED, when the socket closes for it."""

    TYPE: ClassVar[str] = "error"
    error: str
    details: str | None = None
    ref: str | None = None
    job_id: str | None = None
    code: str | None = None

    def encode(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "error", "error": self.error}
        for name in ("details", "ref", "job_id", "code"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    @classmethod
    def decode(cls, frame: dict[str, Any]) -> ErrorReply:
        return cls(
            str(frame.get("error", "error")),
            *(_nonempty(frame.get(name)) for name in ("details", "ref", "job_id", "code")),
        )

    def describe(self) -> str:
        parts = [self.error]
        parts += [f"{n}={v}" for n in ("details", "ref", "job_id") if (v := getattr(self, n))]
        return "; ".join(parts)


ServerMessage = Welcome | Assignment | Cancel | Acked | ErrorReply

_REPORTS: dict[str, type[Report]] = {
    kind.TYPE: kind for kind in (Heartbeat, Complete, Failure, Release)
}
_FROM_RUNNER: dict[str, type[RunnerMessage]] = {
    kind.TYPE: kind for kind in (Hello, Ready, Heartbeat, Complete, Failure, Release)
}
_FROM_SERVER: dict[str, type[ServerMessage]] = {
    kind.TYPE: kind for kind in (Welcome, Assignment, Cancel, Acked, ErrorReply)
}
RUNNER_TO_SERVER = tuple(_FROM_RUNNER)
SERVER_TO_RUNNER = tuple(_FROM_SERVER)


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


def decode_server_frame(frame: dict[str, Any]) -> ServerMessage:
    """A frame from the server as its message; ProtocolError if it has no such shape."""
    kind = _FROM_SERVER.get(frame.get("type"))  # type: ignore[arg-type]
    if kind is None:
        raise _unknown(frame, SERVER_TO_RUNNER)
    return kind.decode(frame)


def check_registration(name: object, capabilities: object) -> tuple[str, list[str]]:
    """A runner's name and job types as registered over HTTP or said in a hello;
    ProtocolError (the original's message, the rule in the details) if they are not."""
    if not isinstance(name, str) or not name.strip():
        raise _bad_registration("name: a non-empty string")
    if len(name) > MAX_NAME_CHARS:
        raise _bad_registration(f"name: at most {MAX_NAME_CHARS} characters")
    if not isinstance(capabilities, list):
        raise _bad_registration("capabilities: an array of job types")
    if len(capabilities) > MAX_CAPABILITIES:
        raise _bad_registration(f"capabilities: at most {MAX_CAPABILITIES} job types")
    types: list[str] = []
    for job_type in capabilities:
        if not isinstance(job_type, str) or not job_type or len(job_type) > MAX_NAME_CHARS:
            raise _bad_registration(f"capabilities: job types of 1 to {MAX_NAME_CHARS} characters")
        types.append(job_type)
    if "\0" in name + "".join(types):
        raise _bad_registration("name and capabilities: no NUL characters")
    return name, types


def positive(value: object) -> float | None:
    """A JSON number above zero as a float, else None (durations from the server)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


def _bad_registration(why: str) -> ProtocolError:
    return ProtocolError("Invalid registration data", why)


def _unknown(frame: dict[str, Any], kinds: tuple[str, ...]) -> ProtocolError:
    return ProtocolError(
        "Unknown message type", f"{frame.get('type')!r}; one of {', '.join(kinds)}"
    )


def _job_id(frame: dict[str, Any]) -> str:
    job_id = frame.get("job_id")
    if not isinstance(job_id, str) or not job_id:
        raise _invalid("job_id", "expected str")
    return job_id


def _int(frame: dict[str, Any], name: str) -> int:
    value = frame.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _invalid(name, "expected int")
    return value


def _optional(frame: dict[str, Any], name: str, kind: type) -> Any:
    """The field if present and not null, checked to be a ``kind``; else None."""
    value = frame.get(name)
    if value is None:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise _invalid(name, f"expected {kind.__name__}")
    return value


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
        raise ProtocolError(f"Invalid field: {name}", f"out of range (at most {MAX_PROGRESS})")
    return value


def _nonempty(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _ids(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _invalid(name: str, details: str) -> ProtocolError:
    return ProtocolError(f"Invalid or missing field: {name}", details)
