"""The one interface the runner talks to the server through, and what flows over it.

Two implementations: :class:`~runpack_runner.transports.websocket.WebSocketTransport`
(jobs pushed over ``GET /api/runner/ws``, the default) and
:class:`~runpack_runner.transports.http.HttpTransport` (the fallback: long-poll
``/api/runner/jobs/next``, or the original's available+claim polling). The runner
never knows which one it holds: it grants slots, receives events, sends
heartbeats, results and releases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

from runpack.protocol import (
    Acked,
    Assignment,
    Complete,
    Failure,
    Hello,
    Welcome,
    positive,
)

__all__ = [
    "Acked",
    "Assignment",
    "AuthFailed",
    "Beat",
    "CancelJob",
    "Event",
    "Hello",
    "NotOurRunner",
    "Reconnect",
    "Result",
    "ServerUnreachable",
    "SocketUnavailable",
    "Transport",
    "TransportClosed",
    "Welcome",
    "positive",
]

ResultKind = Literal["complete", "error"]


# --- what the runner sends (the frames themselves: runpack.protocol) ------------------
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

    def message(self) -> Complete | Failure:
        """The report: its ``body()`` is the HTTP body of ``POST
        /api/runner/jobs/{id}/{kind}``, its ``encode()`` the frame."""
        if self.kind == "complete":
            return Complete(self.job_id, self.output_data or {}, self.console_output)
        return Failure(self.job_id, self.error_message or "", self.console_output, self.retryable)

    def body(self) -> dict[str, Any]:
        return self.message().body()


# --- what the server sends (Welcome, Assignment, Acked: runpack.protocol) --------------
@dataclass(frozen=True, slots=True)
class CancelJob:
    """Stop a job. ``lost``: the server no longer assigns it to us (send nothing back)."""

    job_id: str
    reason: str
    lost: bool = False


@dataclass(frozen=True, slots=True)
class Reconnect:
    """End this session and connect again at once (HTTP: time to try the socket)."""

    reason: str


Event = Assignment | CancelJob | Acked | Reconnect


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
