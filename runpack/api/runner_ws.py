"""The runner channel: ``GET /api/runner/ws`` (push) and the long-poll fallback."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from runpack import __version__, logs, protocol
from runpack.api.common import json_response, policy
from runpack.api.events import wants_websocket
from runpack.appkeys import CALLER, HUB, KEYS, RUNNER_ID, SERVICE, SETTINGS
from runpack.auth import Caller
from runpack.connections import RunnerConn
from runpack.errors import (
    BadRequest,
    Forbidden,
    NotOwned,
    RunpackError,
    StoreError,
    StoreUnavailable,
    Unauthorized,
)
from runpack.hub import SEND_QUEUE, Hub, assignment
from runpack.identity import Ownership, new_runner_secret
from runpack.protocol import (
    FINAL,
    Acked,
    Complete,
    ErrorReply,
    Failure,
    Heartbeat,
    Hello,
    ProtocolError,
    Ready,
    Release,
    Report,
    Role,
    Welcome,
)
from runpack.service import JobService

log = logging.getLogger(__name__)
routes = web.RouteTableDef()
HELLO_TIMEOUT = 10.0
MAX_LONG_POLL = 60.0
MAX_INFLIGHT = 256
#: Most queued frames written to a runner's socket at once (see RunnerSession._flush).
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


#: Frames whose loss would lose a job's outcome (the runner holds them until acked).
RESULTS = ("complete", "error", "release")
#: The results that end a run (a release keeps its slot until acknowledged).
REPORTS = ("complete", "error")
#: Pauses between tries of such a frame while the database is out of reach; after
#: the last, the socket is closed and the runner sends it again once reconnected.
RESULT_RETRY_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0)


class RunnerSession:
    """One runner's socket: hello/welcome, then frames until it closes.

    Thousands of runners may sit idle on one server, so an idle socket holds only
    what it needs: the frames to send wait in a queue that exists, and a task sends
    them, only while there are some; the frame tasks are kept only while they run.
    """

    __slots__ = (
        "_close_code",
        "_close_reason",
        "_closing",
        "_log_context",
        "_outbox",
        "_room",
        "_sender",
        "_tails",
        "_tasks",
        "caller",
        "conn",
        "hub",
        "service",
        "transport",
        "write_together",
        "ws",
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        hub: Hub,
        service: JobService,
        transport: asyncio.Transport | None,
        caller: Caller | None = None,
        write_together: bool = True,
    ) -> None:
        self.ws = ws
        #: Frames queued together leave in one write (RUNPACK_WRITE_FRAMES_TOGETHER).
        self.write_together = write_together
        #: The key that opened the socket: only its runners may say hello on it.
        self.caller = caller if caller is not None else Caller(Role.RUNNER)
        #: Aborted to drop a runner that does not read what it is sent.
        self.transport = transport
        self.hub = hub
        self.service = service
        self.conn: RunnerConn | None = None
        #: Frames not yet handed to the socket, oldest first (None when there are none).
        self._outbox: deque[bytes] | None = None
        #: The task sending them, while there are some.
        self._sender: asyncio.Task[None] | None = None
        #: The socket closes (GOING_AWAY) after the frames already queued; no more are.
        self._closing = False
        self._close_code: int = WSCloseCode.GOING_AWAY
        self._close_reason = b""
        #: Frame tasks still running, and the last one per job id (None when none).
        self._tasks: set[asyncio.Task[None]] | None = None
        self._tails: dict[str, asyncio.Task[None]] | None = None
        #: Set when a frame task ends while MAX_INFLIGHT of them run.
        self._room: asyncio.Future[None] | None = None
        self._log_context: contextvars.Token[Mapping[str, str]] | None = None

    # --- sending -------------------------------------------------------------------------
    def send(self, message: protocol.ServerMessage) -> None:
        if self._closing:
            return  # the socket closes after what is already queued
        outbox = self._outbox
        if outbox is None:
            outbox = self._outbox = deque()
        elif len(outbox) >= SEND_QUEUE:
            log.warning("runner %s is not reading its socket: disconnecting", self.runner_label)
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

    @property
    def runner_label(self) -> str:
        return self.conn.runner_id if self.conn else "(before hello)"

    def refuse(
        self, code: str, error: str, details: str | None = None, ref: str | None = None
    ) -> None:
        """Tell the runner why, then close its socket with 1008 (policy violation)."""
        self.send(ErrorReply(error, details, ref=ref, code=code))
        self.close(protocol.CLOSE_POLICY_VIOLATION, error)

    def key_revoked(self) -> None:
        """The key that opened this socket was revoked."""
        log.info("runner %s: its key was revoked: closing its socket", self.runner_label)
        self.refuse(protocol.KEY_REVOKED, "API key revoked", "this runner key no longer works")

    def reply_error(
        self,
        error: str,
        details: str | None = None,
        ref: str | None = None,
        job_id: str | None = None,
    ) -> None:
        self.send(ErrorReply(error, details, ref=ref, job_id=job_id))

    # --- the conversation -------------------------------------------------------------
    async def run(self) -> None:
        try:
            if not await self._hello():
                return
            while True:
                msg = await self.ws.receive()
                if msg.type == WSMsgType.TEXT:
                    frame = self._frame(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    frame = None
                    self.reply_error("Binary frames are not accepted", "send JSON text frames")
                else:
                    return  # closed, closing or broken
                del msg  # nothing of a frame stays referenced while the socket idles
                if frame is not None and frame.get("type") == "ready":
                    self._on_ready(frame)  # no task: granting slots never waits
                elif frame is not None:
                    if frame.get("type") in REPORTS and isinstance(frame.get("job_id"), str):
                        # Its slot is free from now: a `ready` the runner sends after
                        # this result, before the ack, may grant it again.
                        assert self.conn is not None
                        self.hub.reported(self.conn, frame["job_id"])
                    while self._tasks is not None and len(self._tasks) >= MAX_INFLIGHT:
                        self._room = asyncio.get_running_loop().create_future()
                        await self._room
                    self._start(frame)
                    del frame
        finally:
            if self.conn is not None:
                self.hub.detach(self.conn)
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            self.close()
            sender = self._sender
            if sender is not None:
                with contextlib.suppress(asyncio.TimeoutError, ConnectionError, RuntimeError):
                    await asyncio.wait_for(sender, 5)
                sender.cancel()
            if self._log_context is not None:
                logs.unbind(self._log_context)

    async def _hello(self) -> bool:
        try:
            msg = await self.ws.receive(timeout=HELLO_TIMEOUT)
        except TimeoutError:
            self.reply_error("No hello", f"send a hello frame within {HELLO_TIMEOUT:g} s")
            return False
        if msg.type != WSMsgType.TEXT:
            return False
        wanted_id = None
        try:
            frame = self._parse(msg.data)
            if frame.get("type") != "hello":
                raise ProtocolError("Expected hello", "the first frame must be a hello")
            hello = Hello.decode(frame)
            wanted_id = hello.runner_id
            runner = None
            secret = None
            if wanted_id:
                with contextlib.suppress(RunpackError):
                    runner = await self.service.get_runner(wanted_id)
            if runner is None:
                secret = new_runner_secret()  # Runpack's runner keeps and sends it
                runner = await self.service.register_runner(
                    hello.name, hello.capabilities, owner=self.caller.owner, secret=secret
                )
            else:
                Ownership.of(runner).check(self.caller.owner, hello.runner_secret)
                await self.service.touch_runner(runner.id)
        except Forbidden as exc:
            log.warning("runner hello refused for runner %s: %s", wanted_id, exc.message)
            self.refuse(protocol.NOT_YOUR_RUNNER, exc.message, exc.details, ref="hello")
            return False
        except ProtocolError as exc:
            self.reply_error(exc.error, exc.details, ref="hello")
            return False
        except BadRequest as exc:
            self.reply_error(exc.message, exc.details, ref="hello")
            return False
        except StoreError as exc:
            log.warning("runner hello refused: database error: %s", exc.details)
            self.reply_error(exc.message, ref="hello")  # the runner connects again later
            return False
        self.conn = RunnerConn(
            runner_id=runner.id,
            name=hello.name,
            capabilities=frozenset(hello.capabilities),
            concurrency=hello.concurrency,
            send=self.send,
            close=self.close,
            connected_at=time.time(),
        )
        # Every record of this session (and of the frame tasks it starts) names the runner.
        self._log_context = logs.bind(runner_id=runner.id)
        resumed, dropped = await self.hub.attach(self.conn, hello.jobs)
        settings = self.service.settings
        self.send(
            Welcome(
                runner_id=runner.id,
                heartbeat_interval=min(protocol.HEARTBEAT_INTERVAL, settings.heartbeat_timeout / 3),
                limits={
                    "max_output_bytes": settings.max_output_bytes,
                    "max_console_bytes": settings.max_console_bytes,
                    "max_error_bytes": settings.max_error_bytes,
                },
                resumed=resumed,
                dropped=dropped,
                # A job's slot is free once its result is sent (see RunnerConn.report).
                free_on_result=True,
                runner_secret=secret,  # shown once: only its hash is kept
                server_version=__version__,
            )
        )
        log.info(
            "runner %s (%s) connected: %d slots, resumed %d jobs",
            runner.id,
            hello.name,
            hello.concurrency,
            len(resumed),
        )
        return True

    def _parse(self, data: str) -> dict[str, Any]:
        try:
            frame = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ProtocolError("Invalid JSON", str(exc)) from None
        if not isinstance(frame, dict):
            raise ProtocolError("A frame must be a JSON object")
        return frame

    def _frame(self, data: str) -> dict[str, Any] | None:
        """The frame in ``data``; None if it cannot be used (it is answered)."""
        try:
            return self._parse(data)
        except ProtocolError as exc:
            self.reply_error(exc.error, exc.details)
            return None

    def _start(self, frame: dict[str, Any]) -> None:
        """Handle ``frame`` in a task of its own.

        Frames about different jobs run concurrently, so their writes share a
        commit; frames about one job run in arrival order, each after the last.
        """
        job_id = frame.get("job_id") if isinstance(frame.get("job_id"), str) else None
        before = self._tails.get(job_id) if job_id and self._tails else None
        task = asyncio.create_task(self._handle(frame, before))
        if self._tasks is None:
            self._tasks = set()
        self._tasks.add(task)
        task.add_done_callback(self._frame_done)
        if job_id:
            if self._tails is None:
                self._tails = {}
            self._tails[job_id] = task

    def _frame_done(self, task: asyncio.Task[None]) -> None:
        if self._tasks is not None:
            self._tasks.discard(task)
            if not self._tasks:
                self._tasks = None
        room, self._room = self._room, None
        if room is not None and not room.done():
            room.set_result(None)
        if self._tails is not None:
            for job_id, tail in list(self._tails.items()):
                if tail is task:
                    del self._tails[job_id]
            if not self._tails:
                self._tails = None

    async def _handle(self, frame: dict[str, Any], before: asyncio.Task[None] | None) -> None:
        if before is not None:
            await asyncio.wait([before])  # the previous frame about this job goes first
        kind = frame.get("type")
        job_id = frame.get("job_id") if isinstance(frame.get("job_id"), str) else None
        try:
            report = protocol.decode_report(frame)
            if report.TYPE in RESULTS:
                await self._durably(lambda: self._on_report(report))
            else:
                await self._on_report(report)
        except ProtocolError as exc:
            self.reply_error(exc.error, exc.details, ref=kind, job_id=job_id)
        except NotOwned:
            self.reply_error("Job not held by this runner", ref=kind, job_id=job_id)
        except RunpackError as exc:
            self.reply_error(exc.message, exc.details, ref=kind, job_id=job_id)
        except Exception:
            log.exception("runner %s: %s frame failed", self.runner_label, kind)
            self.reply_error("Internal error", ref=kind, job_id=job_id)

    async def _durably(self, store: Callable[[], Awaitable[None]]) -> None:
        """Handle a result frame, again while the database is out of reach.

        Safe to repeat: every transition names the state it starts from, so a try
        whose commit was lost with its connection makes the next one find the job
        done (the runner hears it was not applied, and drops it). If the database
        stays away, the socket is closed instead of answering: the runner keeps
        the result and sends it again after reconnecting.
        """
        for delay in RESULT_RETRY_DELAYS:
            try:
                return await store()
            except StoreUnavailable as exc:
                log.warning(
                    "runner %s: result not stored (%s); trying again in %g s",
                    self.runner_label,
                    exc.details,
                    delay,
                )
            await asyncio.sleep(delay)
        try:
            return await store()
        except StoreUnavailable:
            log.warning("runner %s: database unavailable: closing its socket", self.runner_label)
            self.close()
            raise

    def _on_ready(self, frame: dict[str, Any]) -> None:
        try:
            ready = Ready.decode(frame)
        except ProtocolError as exc:
            self.reply_error(exc.error, exc.details, ref="ready")
            return
        assert self.conn is not None
        self.hub.grant(self.conn, ready.slots)

    async def _on_report(self, report: Report) -> None:
        assert self.conn is not None
        runner_id = self.conn.runner_id
        match report:
            case Heartbeat():
                await self.service.heartbeat(
                    runner_id,
                    report.job_id,
                    report.progress_current,
                    report.progress_total,
                    report.console_output,
                    console_append=report.console_append,
                )
            case Complete():
                await self._on_complete(report)
            case Failure():
                await self._on_error(report)
            case Release():
                await self.service.release_jobs(runner_id, [report.job_id], report.reason)
                self._ack(report.job_id, "release", True)

    async def _on_complete(self, result: Complete) -> None:
        assert self.conn is not None
        job_id, console = result.job_id, result.console_output
        try:
            await self.service.complete(self.conn.runner_id, job_id, result.output_data, console)
        except BadRequest as exc:
            if isinstance(exc, NotOwned):
                await self._ack_unapplied(job_id, "complete")
                return
            # A result that can never be stored: the job fails with the reason.
            await self._fail_instead(job_id, exc.message, console)
            return
        self._ack(job_id, "complete", True)

    async def _on_error(self, report: Failure) -> None:
        assert self.conn is not None
        job_id = report.job_id
        end = self.service.retry_later if report.retryable else self.service.fail
        try:
            await end(self.conn.runner_id, job_id, report.error_message, report.console_output)
        except NotOwned:
            await self._ack_unapplied(job_id, "error")
            return
        except BadRequest as exc:
            # Refused as over HTTP, and nothing changed; the runner need not keep it.
            self.reply_error(exc.message, exc.details, ref="error", job_id=job_id)
            self._ack(job_id, "error", False, reason=exc.message)
            return
        self._ack(job_id, "error", True)

    async def _fail_instead(self, job_id: str, message: str, console: str | None) -> None:
        assert self.conn is not None
        with contextlib.suppress(BadRequest):
            await self.service.fail(self.conn.runner_id, job_id, message, None)
        self.reply_error(message, "the job was failed instead", ref="complete", job_id=job_id)
        self._ack(job_id, "complete", False, reason=message)

    async def _ack_unapplied(self, job_id: str, of: str) -> None:
        """A result for a job this runner no longer holds: it will never apply."""
        try:
            job = await self.service.get_job(job_id)
            reason = (
                f"job is {job.status}" if job.status in FINAL else "job is not held by this runner"
            )
        except RunpackError:
            reason = "no such job"
        self._ack(job_id, of, False, reason=reason)

    def _ack(self, job_id: str, of: str, applied: bool, reason: str | None = None) -> None:
        assert self.conn is not None
        self.hub.finished(self.conn, job_id)
        self.send(Acked(job_id, of, applied, reason))


@routes.get("/api/runner/ws")
@policy(Role.RUNNER, failure="Failed to open the runner channel", errors=(BadRequest,))
async def runner_socket(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    ws = None
    if wants_websocket(request):
        # No permessage-deflate, even for a runner that offers it: its zlib state
        # would cost about 100 KiB per socket, for frames that are small JSON.
        ws = web.WebSocketResponse(
            heartbeat=20.0, max_msg_size=settings.max_body_bytes, compress=False
        )
    if ws is None or not ws.can_prepare(request).ok:
        raise BadRequest("Expected a WebSocket upgrade", details="GET with Upgrade: websocket")
    await ws.prepare(request)
    caller = request[CALLER]
    session = RunnerSession(
        ws,
        request.app[HUB],
        request.app[SERVICE],
        request.transport,
        caller,
        write_together=settings.write_frames_together,
    )
    # A stored key's socket closes once the key is revoked (see KeyRing.check_open).
    release = request.app[KEYS].hold(caller.key, session.key_revoked) if caller.key else None
    try:
        await session.run()
    finally:
        if release is not None:
            release()
    return ws


@routes.get("/api/runner/jobs/next")
@policy(Role.RUNNER, runner_header=True, failure="Failed to get the next job")
async def next_job(request: web.Request) -> web.Response:
    """Long-poll: a job already claimed for the caller, or 204 after ``wait`` seconds."""
    service = request.app[SERVICE]
    hub = request.app[HUB]
    rid = request[RUNNER_ID]
    types = request.query.getall("types[]", [])
    try:
        wait = float(request.query.get("wait", "20"))
    except ValueError:
        raise BadRequest("wait must be a number of seconds") from None
    if not 0 <= wait <= MAX_LONG_POLL:
        raise BadRequest(f"wait must be from 0 to {MAX_LONG_POLL:g} seconds")
    # A stored key revoked while the poll waits takes no job (see KeyRing.check_open).
    revoked = asyncio.Event()
    key = request[CALLER].key
    release = request.app[KEYS].hold(key, revoked.set) if key is not None else None
    deadline = time.monotonic() + wait
    try:
        while True:
            if hub.stopping:
                return web.Response(status=204)
            if revoked.is_set():
                raise Unauthorized("Invalid API key", details="This key has been revoked")
            signal = hub.queued_signal()
            job = await service.claim_next(rid, types)
            if job is not None:
                return json_response({"job": assignment(job).body()})
            left = deadline - time.monotonic()
            if left <= 0:
                return web.Response(status=204)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(signal.wait(), min(left, 1.0))
    finally:
        if release is not None:
            release()
