"""The runner channel: ``GET /api/runner/ws`` (push; the long-poll fallback is in
runner_poll)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from runpack import __version__, logs, protocol
from runpack.api.common import policy
from runpack.api.events import wants_websocket
from runpack.api.runner_reports import RunnerReports
from runpack.api.runner_socket import RunnerSocket
from runpack.appkeys import CALLER, HUB, KEYS, LIMITS, SERVICE, SETTINGS
from runpack.auth import Caller
from runpack.connections import RunnerConn
from runpack.errors import BadRequest, Forbidden, RateLimited, RunpackError, StoreError
from runpack.hub import Hub
from runpack.identity import Ownership, new_runner_secret
from runpack.image_lists import claimable
from runpack.protocol import ErrorReply, Hello, ProtocolError, Ready, Role, Welcome
from runpack.service import JobService

log = logging.getLogger(__name__)
routes = web.RouteTableDef()
HELLO_TIMEOUT = 10.0
MAX_INFLIGHT = 256

#: The results that end a run (a release keeps its slot until acknowledged).
REPORTS = ("complete", "error")


class RunnerSession:
    """One runner's socket: hello/welcome, then frames until it closes.

    Thousands of runners may sit idle on one server, so an idle session holds only
    what it needs: its socket's queue exists only while there are frames to send
    (see RunnerSocket), and the frame tasks are kept only while they run.
    """

    __slots__ = (
        "_log_context",
        "_registering",
        "_room",
        "_tails",
        "_tasks",
        "caller",
        "conn",
        "hub",
        "reports",
        "service",
        "socket",
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
        registering: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.ws = ws
        #: What the server sends the runner goes through it.
        self.socket = RunnerSocket(ws, transport, write_together)
        #: The key that opened the socket: only its runners may say hello on it.
        self.caller = caller if caller is not None else Caller(Role.RUNNER)
        self.hub = hub
        self.service = service
        #: Counts a new runner against its address's limit (raises RateLimited).
        self._registering = registering
        self.conn: RunnerConn | None = None
        #: Applies the runner's reports, once it has said hello.
        self.reports: RunnerReports | None = None
        #: Frame tasks still running, and the last one per job id (None when none).
        self._tasks: set[asyncio.Task[None]] | None = None
        self._tails: dict[str, asyncio.Task[None]] | None = None
        #: Set when a frame task ends while MAX_INFLIGHT of them run.
        self._room: asyncio.Future[None] | None = None
        self._log_context: contextvars.Token[Mapping[str, str]] | None = None

    # --- answers ------------------------------------------------------------------------
    @property
    def runner_label(self) -> str:
        return self.conn.runner_id if self.conn else "(before hello)"

    def refuse(
        self, code: str, error: str, details: str | None = None, ref: str | None = None
    ) -> None:
        """Tell the runner why, then close its socket with 1008 (policy violation)."""
        self.socket.send(ErrorReply(error, details, ref=ref, code=code))
        self.socket.close(protocol.CLOSE_POLICY_VIOLATION, error)

    def key_revoked(self) -> None:
        """The key that opened this socket was revoked."""
        log.info("runner %s: its key was revoked: closing its socket", self.runner_label)
        self.refuse(protocol.KEY_REVOKED, "API key revoked", "this runner key no longer works")

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
                    self.socket.reply_error(
                        "Binary frames are not accepted", "send JSON text frames"
                    )
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
                        self.conn.report(frame["job_id"])
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
            await self.socket.finish()
            if self._log_context is not None:
                logs.unbind(self._log_context)

    async def _hello(self) -> bool:
        try:
            msg = await self.ws.receive(timeout=HELLO_TIMEOUT)
        except TimeoutError:
            self.socket.reply_error("No hello", f"send a hello frame within {HELLO_TIMEOUT:g} s")
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
                if self._registering is not None:
                    await self._registering()
                secret = new_runner_secret()  # Runpack's runner keeps and sends it
                runner = await self.service.register_runner(
                    hello.name,
                    hello.capabilities,
                    owner=self.caller.owner,
                    secret=secret,
                    versions=hello.versions,
                    images=hello.images,
                )
            else:
                Ownership.of(runner).check(self.caller.owner, hello.runner_secret)
                await self.service.touch_runner(runner.id)
                await self.service.runner_declares(
                    runner.id, self.caller.owner, hello.versions, hello.images
                )
        except Forbidden as exc:
            log.warning("runner hello refused for runner %s: %s", wanted_id, exc.message)
            self.refuse(protocol.NOT_YOUR_RUNNER, exc.message, exc.details, ref="hello")
            return False
        except ProtocolError as exc:
            self.socket.reply_error(exc.error, exc.details, ref="hello")
            return False
        except (BadRequest, RateLimited) as exc:
            self.socket.reply_error(exc.message, exc.details, ref="hello")
            return False
        except StoreError as exc:
            log.warning("runner hello refused: database error: %s", exc.details)
            self.socket.reply_error(exc.message, ref="hello")  # the runner connects again later
            return False
        job_types = frozenset(hello.capabilities)
        self.conn = RunnerConn(
            runner_id=runner.id,
            name=hello.name,
            capabilities=claimable(
                self.service.versions.eligible(job_types, hello.versions), hello.images
            ),
            job_types=job_types,
            versions=hello.versions,
            images=None if hello.images is None else tuple(hello.images),
            concurrency=hello.concurrency,
            send=self.socket.send,
            close=self.socket.close,
            connected_at=time.time(),
        )
        self.reports = RunnerReports(self.conn, self.hub, self.service, self.socket)
        self.socket.label = runner.id
        # Every record of this session (and of the frame tasks it starts) names the runner.
        self._log_context = logs.bind(runner_id=runner.id)
        resumed, dropped = await self.hub.attach(self.conn, hello.jobs)
        settings = self.service.settings
        self.socket.send(
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
            self.socket.reply_error(exc.error, exc.details)
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
        assert self.reports is not None
        await self.reports.handle(frame)

    def _on_ready(self, frame: dict[str, Any]) -> None:
        try:
            ready = Ready.decode(frame)
        except ProtocolError as exc:
            self.socket.reply_error(exc.error, exc.details, ref="ready")
            return
        assert self.conn is not None
        self.hub.grant(self.conn, ready.slots)


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
    limits = request.app[LIMITS]
    session = RunnerSession(
        ws,
        request.app[HUB],
        request.app[SERVICE],
        request.transport,
        caller,
        write_together=settings.write_frames_together,
        registering=lambda: limits.admit_address(request, "registrations", caller),
    )
    # A stored key's socket closes once the key is revoked (see KeyRing.check_open).
    release = request.app[KEYS].hold(caller.key, session.key_revoked) if caller.key else None
    try:
        await session.run()
    finally:
        if release is not None:
            release()
    return ws
