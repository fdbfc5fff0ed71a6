"""How the runner reaches the server: one interface, WebSocket and HTTP implementations."""

from runpack_runner.transports.base import (
    Acked,
    Assignment,
    AuthFailed,
    Beat,
    CancelJob,
    Event,
    Hello,
    NotOurRunner,
    Reconnect,
    Result,
    ServerUnreachable,
    SocketUnavailable,
    Transport,
    TransportClosed,
    Welcome,
)
from runpack_runner.transports.http import HttpTransport
from runpack_runner.transports.websocket import WebSocketTransport

__all__ = [
    "Acked",
    "Assignment",
    "AuthFailed",
    "Beat",
    "CancelJob",
    "Event",
    "Hello",
    "HttpTransport",
    "NotOurRunner",
    "Reconnect",
    "Result",
    "ServerUnreachable",
    "SocketUnavailable",
    "Transport",
    "TransportClosed",
    "WebSocketTransport",
    "Welcome",
]
