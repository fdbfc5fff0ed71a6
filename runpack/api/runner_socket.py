"""The writing side of a runner's socket: frames in order, several in one write when
they can be, and the close after them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections import deque

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from runpack import protocol
from runpack.hub import SEND_QUEUE

log = logging.getLogger(__name__)
#: Most queued frames written to a runner's socket at once (see RunnerSocket._flush).
BATCH_FRAMES = 64


def text_frame(payload: bytes) -> bytes:
    """``payload`` as one unmasked, uncompressed WebSocket text frame (RFC 6455 §5.2),
    as a server sends them: runner sockets never negotiate compression."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload


def _idle(transport: asyncio.Transport) -> bool:
    """Whether the socket takes more at once: open, with nothing waiting to be sent."""
    return not transport.is_closing() and transport.get_write_buffer_size() == 0


class RunnerSocket:
    """What the server sends down one runner's socket, oldest first.

    Thousands of runners may sit idle on one server, so an idle socket holds only
    what it needs: the frames to send wait in a queue that exists, and a task sends
    them, only while there are some. A runner that does not read what it is sent is
    dropped, never waited for.
    """

    __slots__ = (
        "_close_code",
        "_close_reason",
        "_closing",
        "_outbox",
        "_sender",
        "label",
        "transport",
        "write_together",
        "ws",
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport | None,
        write_together: bool = True,
    ) -> None:
        self.ws = ws
        #: Aborted to drop a runner that does not read what it is sent.
        self.transport = transport
        #: Frames queued together leave in one write (RUNPACK_WRITE_FRAMES_TOGETHER).
        self.write_together = write_together
        #: The runner, as the log names it.
        self.label = "(before hello)"
        #: Frames not yet handed to the socket, oldest first (None when there are none).
        self._outbox: deque[bytes] | None = None
        #: The task sending them, while there are some.
        self._sender: asyncio.Task[None] | None = None
        #: The socket closes (GOING_AWAY) after the frames already queued; no more are.
        self._closing = False
        self._close_code: int = WSCloseCode.GOING_AWAY
        self._close_reason = b""

    def reply_error(
        self,
        error: str,
        details: str | None = None,
        ref: str | None = None,
        job_id: str | None = None,
    ) -> None:
        """An ``error`` frame: what was wrong with the runner's frame ``ref``."""
        self.send(protocol.ErrorReply(error, details, ref=ref, job_id=job_id))

    def send(self, message: protocol.ServerMessage) -> None:
        if self._closing:
            return  # the socket closes after what is already queued
        outbox = self._outbox
        if outbox is None:
            outbox = self._outbox = deque()
        elif len(outbox) >= SEND_QUEUE:
            log.warning("runner %s is not reading its socket: disconnecting", self.label)
            self._disconnect()
            return
        outbox.append(orjson.dumps(message.encode()))
        if self._sender is None:
            self._sender = asyncio.create_task(self._flush(), name="runner-ws-sender")

    def close(self, code: int = WSCloseCode.GOING_AWAY, reason: str = "") -> None:
        """Close the socket (GOING_AWAY unless told) once the frames queued before are sent."""
        if self._closing:
            return
        self._closing = True
        self._close_code = code
        self._close_reason = reason.encode()[:120]
        if self._sender is None:
            self._sender = asyncio.create_task(self._flush(), name="runner-ws-sender")

    async def finish(self) -> None:
        """Close the socket after what is queued, waiting at most 5 s for it to leave."""
        self.close()
        sender = self._sender
        if sender is not None:
            with contextlib.suppress(asyncio.TimeoutError, ConnectionError, RuntimeError):
                await asyncio.wait_for(sender, 5)
            sender.cancel()

    def _disconnect(self) -> None:
        """Drop the connection now, with whatever is queued: a runner is never waited for."""
        self._closing = True
        if self._outbox is not None:
            self._outbox.clear()
        if self.transport is not None:
            self.transport.abort()

    async def _flush(self) -> None:
        """Send the queued frames in order, then close the socket if that was asked."""
        outbox = self._outbox
        try:
            while outbox:
                transport = self.transport
                if (
                    self.write_together
                    and len(outbox) > 1
                    and transport is not None
                    and _idle(transport)
                ):
                    # Frames queued together (jobs pushed, results acknowledged in one
                    # commit) leave in one write: one system call instead of one each,
                    # each waking the runner's process. Measured (docs/performance.md):
                    # SQLite 1,315 jobs/s against 1,020 off, submit → start p50 0.78 ms
                    # against 1.03; PostgreSQL p50 5.4 ms against 7.9, jobs/s even.
                    frames = [outbox.popleft() for _ in range(min(len(outbox), BATCH_FRAMES))]
                    transport.write(b"".join(map(text_frame, frames)))
                    continue
                # One frame, or a runner that reads slowly: aiohttp's writer, which
                # waits for the socket to drain.
                await self.ws.send_frame(outbox.popleft(), WSMsgType.TEXT)
            if self._closing:
                await self.ws.close(code=self._close_code, message=self._close_reason)
        except (ConnectionError, RuntimeError):
            self._closing = True  # the connection is gone: the receiving side ends too
        finally:
            self._outbox = None
            self._sender = None
