"""The runner channel over a WebSocket (``GET /api/runner/ws``): jobs are pushed.

Frames are JSON text (runpack/protocol/ documents each). Flow control is by
credits: ``ready {slots}`` grants the server that many more jobs.

:meth:`WebSocketTransport.receive` reads the socket itself (no reader task and
queue in between), so only one task may call it at a time, as the runner does.
Frames are sent as orjson's bytes in a TEXT frame, with no str round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Literal

import aiohttp
import orjson

from runpack import protocol
from runpack.protocol import ErrorReply, Heartbeat, ProtocolError, Ready, Release
from runpack_runner.transports.base import (
    Acked,
    Assignment,
    AuthFailed,
    Beat,
    CancelJob,
    Event,
    Hello,
    NotOurRunner,
    Result,
    ServerUnreachable,
    SocketUnavailable,
    TransportClosed,
    Welcome,
)

log = logging.getLogger(__name__)

PATH = "/api/runner/ws"
#: aiohttp pings this often and closes the socket when pongs stop.
PING_INTERVAL = 20.0
CONNECT_TIMEOUT = 15.0
WELCOME_TIMEOUT = 15.0
MAX_FRAME = 16 * 1024 * 1024


class WebSocketTransport:
    name = "websocket"
    mode = "push"
    min_heartbeat_gap = 0.25
    #: Frames go out in order over one socket, each at once (see Transport).
    serial = True

    def __init__(self, ws: aiohttp.ClientWebSocketResponse[Literal[False]]) -> None:
        self._ws = ws
        self._send_lock = asyncio.Lock()

    @classmethod
    async def open(
        cls, session: aiohttp.ClientSession, base_url: str, api_key: str
    ) -> WebSocketTransport:
        """Open the socket; SocketUnavailable if the server answers without upgrading."""
        url = base_url.rstrip("/") + PATH
        try:
            ws = await session.ws_connect(
                url,
                headers={"Authorization": f"Bearer {api_key}"},
                heartbeat=PING_INTERVAL,
                max_msg_size=MAX_FRAME,
                timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
                decode_text=False,  # orjson reads the bytes
            )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in (401, 403):
                raise AuthFailed(f"the server refused the runner key (HTTP {exc.status})") from None
            raise SocketUnavailable(f"HTTP {exc.status} on {PATH}") from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ServerUnreachable(f"{type(exc).__name__}: {exc}") from None
        return cls(ws)

    # --- session --------------------------------------------------------------------
    async def start(self, hello: Hello) -> Welcome:
        await self._send(hello.encode())
        try:
            async with asyncio.timeout(WELCOME_TIMEOUT):
                while True:
                    frame = await self._read()
                    kind = frame.get("type")
                    if kind == "welcome":
                        break
                    if kind == "error":
                        error = ErrorReply.decode(frame)
                        _raise_if_final(error)
                        if error.code == protocol.NOT_YOUR_RUNNER:
                            raise NotOurRunner(error.describe())
                        raise TransportClosed(f"hello refused: {error.describe()}")
                    log.warning("ignoring a %r frame before welcome", kind)
        except TimeoutError:
            raise TransportClosed(f"no welcome within {WELCOME_TIMEOUT:g} s") from None
        try:
            return Welcome.decode(frame)
        except ProtocolError as exc:
            raise TransportClosed(exc.error) from None

    async def receive(self) -> Event:
        """The next event; TransportClosed once the socket closed (on every later call too)."""
        while True:
            event = self._parse(await self._read())
            if event is not None:
                return event

    async def grant(self, slots: int) -> None:
        if slots > 0:
            await self._send(Ready(slots).encode())

    def stop_taking(self) -> None:
        """Nothing to do: the runner simply grants no more slots."""

    async def heartbeat(self, beat: Beat) -> None:
        replace = beat.append is None
        message = Heartbeat(
            beat.job_id,
            beat.progress_current,
            beat.progress_total,
            console_output=beat.console if replace else None,
            console_append=beat.append or None,
        )
        await self._send(message.encode())

    async def send_result(self, result: Result) -> None:
        await self._send(result.message().encode())

    async def release(self, job_id: str, reason: str) -> None:
        await self._send(Release(job_id, reason).encode())

    async def close(self) -> None:
        with contextlib.suppress(aiohttp.ClientError, OSError, RuntimeError):
            await self._ws.close()

    # --- frames ---------------------------------------------------------------------
    async def _send(self, frame: dict[str, Any]) -> None:
        if self._ws.closed:
            raise TransportClosed("the socket is closed")
        try:
            async with self._send_lock:
                await self._ws.send_frame(orjson.dumps(frame), aiohttp.WSMsgType.TEXT)
        except (aiohttp.ClientError, OSError, RuntimeError) as exc:
            raise TransportClosed(f"send failed: {exc}") from None

    async def _read(self) -> dict[str, Any]:
        """The next JSON object frame (skipping malformed ones)."""
        while True:
            msg = await self._ws.receive()
            if msg.type is not aiohttp.WSMsgType.TEXT:
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING):
                    raise TransportClosed(f"closed by the server ({msg.data}: {msg.extra or ''})")
                if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    exc = self._ws.exception()
                    raise TransportClosed(f"socket {msg.type.name.lower()}: {exc}")
                continue
            try:
                frame = orjson.loads(msg.data)
            except orjson.JSONDecodeError:
                log.warning("ignoring a frame that is not JSON: %.200s", msg.data)
                continue
            if isinstance(frame, dict):
                return frame
            log.warning("ignoring a frame that is not an object: %.200s", msg.data)

    def _parse(self, frame: dict[str, Any]) -> Event | None:
        try:
            message = protocol.decode_server_frame(frame)
        except ProtocolError as exc:
            log.warning("ignoring a %r frame: %s", frame.get("type"), exc)
            return None
        match message:
            case ErrorReply():
                _raise_if_final(message)
                log.warning("server error frame: %s", message.describe())
                return None
            case protocol.Cancel():
                return CancelJob(message.job_id, message.reason)
            case Assignment() | Acked():
                return message
        log.warning("ignoring a %r frame after the welcome", frame.get("type"))
        return None


def _raise_if_final(error: ErrorReply) -> None:
    """AuthFailed for an error frame that says the runner key was revoked: the socket
    closes (1008) and connecting again with the same key cannot help."""
    if error.code == protocol.KEY_REVOKED:
        raise AuthFailed(f"the server revoked the runner key ({error.describe()})")
