"""The frames the server sends (server -> runner)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from runpack.protocol.fields import (
    ProtocolError,
    _ids,
    _job_id,
    _nonempty,
    _unknown,
    about,
    positive,
)


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
    input_params: Any = field(metadata=about(type="object"))
    attempt: int = field(default=1, metadata=about(required=True))
    #: Not in a claim's answer (the original's).
    timeout: float | None = field(default=None, metadata=about("Seconds; null for none."))

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

_FROM_SERVER: dict[str, type[ServerMessage]] = {
    kind.TYPE: kind for kind in (Welcome, Assignment, Cancel, Acked, ErrorReply)
}
SERVER_TO_RUNNER = tuple(_FROM_SERVER)


def decode_server_frame(frame: dict[str, Any]) -> ServerMessage:
    """A frame from the server as its message; ProtocolError if it has no such shape."""
    kind = _FROM_SERVER.get(frame.get("type"))  # type: ignore[arg-type]
    if kind is None:
        raise _unknown(frame, SERVER_TO_RUNNER)
    return kind.decode(frame)
