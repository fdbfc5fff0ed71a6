"""The one interface the runner talks to the server through, and what flows over it.

Two implementations: :class:`~runpack_runner.transports.websocket.WebSocketTransport`
(jobs pushed over ``GET /api/runner/ws``, the default) and
:class:`~runpack_runner.transports.http.HttpTransport` (the fallback: long-poll
``/api/runner/jobs/next``, or the original's available+claim polling). The runner
never knows which one it holds: it grants slots, receives events, sends
heartbeats, results and releases.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

ResultKind = Literal["complete", "error"]


# --- what the runner sends ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Hello:
    runner_id: str | None
    name: str
    capabilities: list[str]
    concurrency: int
    version: str
    #: Jobs this runner still holds: running, or with a result not yet acknowledged.
    jobs: list[str]
    #: The runner's own secret, proving ``runner_id`` is ours (None: it has none).
    runner_secret: str | None = None

    def frame(self) -> dict[str, Any]:
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


@dataclass(frozen=True, slots=True)
class Beat:
    """One heartbeat. ``append`` is the console's new text since the last beat on this
    transport, or None when the whole ``console`` must replace the server's copy."""

    job_id: str
    progress_current: int | None
    progress_total: int | None
    console: str
    append: str | None = None


@dataclass(frozen=True, slots=True)
class Result:
    """A job's outcome; the runner keeps it until the server acknowledges it."""

    job_id: str
    kind: ResultKind
    console_output: str
    output_data: dict[str, Any] | None = None
    error_message: str | None = None
    #: An error outside the job (see RetryLater): the server queues the job again.
    retryable: bool = False

    def body(self) -> dict[str, Any]:
        """The HTTP body of ``POST /api/runner/jobs/{id}/{kind}`` (and the frame's fields)."""
        if self.kind == "complete":
            return {"output_data": self.output_data or {}, "console_output": self.console_output}
        body: dict[str, Any] = {
            "error_message": self.error_message or "",
            "console_output": self.console_output,
        }
        if self.retryable:
            body["retryable"] = True
        return body


# --- what the server sends -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Welcome:
    runner_id: str
    heartbeat_interval: float | None = None
    #: Held jobs the server still assigns to this runner; ``dropped`` ones it does not.
    resumed: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    limits: dict[str, Any] = field(default_factory=dict)
    #: A job's slot is free once its result is sent (the server counts it so).
    free_on_result: bool = False
    #: The new runner's own secret, when this start registered it (keep it).
    runner_secret: str | None = None


@dataclass(frozen=True, slots=True)
class Assignment:
    """A job claimed for this runner: run it."""

    job_id: str
    job_type: str
    input_params: dict[str, Any]
    attempt: int = 1
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class CancelJob:
    """Stop a job. ``lost``: the server no longer assigns it to us (send nothing back)."""

    job_id: str
    reason: str
    lost: bool = False


@dataclass(frozen=True, slots=True)
class Acked:
    """The server has a result or release for good (``applied`` False: it was not needed)."""

    job_id: str
    of: str
    applied: bool
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Reconnect:
    """End this session and connect again at once (HTTP: time to try the socket)."""

    reason: str


Event = Assignment | CancelJob | Acked | Reconnect


def positive(value: object) -> float | None:
    """A JSON number above zero as a float, else None (durations from the server)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


# --- failures -------------------------------------------------------------------------------
class TransportClosed(Exception):
    """The connection ended; the runner reconnects (with backoff)."""


class SocketUnavailable(Exception):
    """The server answered but would not open a WebSocket: use HTTP."""


class ServerUnreachable(Exception):
    """No answer from the server at all."""


class AuthFailed(Exception):
    """The server refused the runner key: retrying cannot help."""


class NotOurRunner(Exception):
    """The server refused our runner id (another key's, or our secret is wrong):
    connect again as a new runner."""


class Transport(Protocol):
    #: "websocket" or "http"
    name: str
    #: Shortest time between two heartbeats of one job (coalescing).
    min_heartbeat_gap: float
    #: True if sends go out in order over one connection and each returns at once
    #: (a WebSocket): the runner then sends results and releases one after another
    #: from one task. False (HTTP, where a send may take many seconds): a task each.
    serial: bool

    @property
    def mode(self) -> str:
        """How jobs arrive: "push", "long-poll" or "polling"."""
        ...

    async def start(self, hello: Hello) -> Welcome:
        """Identify (register if needed); raise TransportClosed or AuthFailed."""
        ...

    async def receive(self) -> Event:
        """The next event; raise TransportClosed when the connection ends."""
        ...

    async def grant(self, slots: int) -> None:
        """Allow this many more jobs to be assigned (credits)."""
        ...

    def stop_taking(self) -> None:
        """Take no new jobs (shutdown); results and heartbeats still flow."""
        ...

    async def heartbeat(self, beat: Beat) -> None: ...

    async def send_result(self, result: Result) -> None:
        """Send a result; an ``Acked`` event follows once the server has it."""
        ...

    async def release(self, job_id: str, reason: str) -> None:
        """Give a job back to the queue; an ``Acked`` event follows."""
        ...

    async def close(self) -> None: ...
