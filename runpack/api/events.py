"""Live streams: one job (by id or by hash) and everything (admin).

Server-Sent Events by default (``curl -N`` works), or a WebSocket when the
request asks for an upgrade. Each event has an id ``<epoch>-<seq>``: a client
that reconnects with ``Last-Event-ID`` (or ``?last_event_id=``) gets what it
missed, or a fresh snapshot when the server can no longer tell. A job's stream
starts with a ``snapshot`` of the job and ends after a final status; it gets
another ``snapshot`` when events from other instances may have been missed (the
LISTEN connection to PostgreSQL was re-opened). A watcher that falls too far
behind (see runpack.watch) or does not take an event for ``SEND_TIMEOUT``
seconds is disconnected, never waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import orjson
from aiohttp import hdrs, web

from runpack.api.common import CORS_HEADERS, policy
from runpack.api.views import live_detail
from runpack.appkeys import CALLER, KEYS, SERVICE, WATCH
from runpack.envvars import split_list
from runpack.errors import BadRequest, JobNotFound, RunpackError
from runpack.eventloop import cancel_and_wait
from runpack.protocol import JobStatus, Role
from runpack.watch import REFRESH, Channel, Item, Watcher, WatchHub, is_final

routes = web.RouteTableDef()
KEEPALIVE = 15.0
#: A client that takes longer than this to accept one event is disconnected.
SEND_TIMEOUT = 30.0
#: Most queued events sent in one write.
BURST = 256
#: Reads of a job's snapshot before giving up on one that no console append overlaps.
SNAPSHOT_TRIES = 3
#: Reads the job as it is now (for a stream that may have missed events).
Refresh = Callable[[], Awaitable[dict[str, Any]]]


class _Sink:
    """Where a stream's events go: an SSE response or a WebSocket."""

    __slots__ = ("request", "sse", "ws")

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.ws: web.WebSocketResponse | None = None
        self.sse: web.StreamResponse | None = None

    async def open(self) -> web.StreamResponse:
        if wants_websocket(self.request):
            # No permessage-deflate (browsers offer it): its zlib state would cost
            # about 100 KiB per watcher.
            ws = web.WebSocketResponse(heartbeat=30.0, compress=False)
            if ws.can_prepare(self.request).ok:
                await ws.prepare(self.request)
                self.ws = ws
                return ws
        sse = web.StreamResponse(
            headers={
                **CORS_HEADERS,
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await sse.prepare(self.request)
        self.sse = sse
        return sse

    async def send(self, events: list[tuple[str, str, dict[str, Any]]]) -> None:
        """Send ``(id, kind, data)`` events: a frame each over a WebSocket, one write
        for them all over SSE (a burst costs one system call, not one per event)."""
        if self.ws is not None:
            for event_id, kind, data in events:
                frame = orjson.dumps({"id": event_id, "event": kind, "data": data})
                await self.ws.send_str(frame.decode())
        elif self.sse is not None:
            await self.sse.write(
                b"".join(
                    b"id: %s\nevent: %s\ndata: %s\n\n"
                    % (event_id.encode(), kind.encode(), orjson.dumps(data))
                    for event_id, kind, data in events
                )
            )

    async def keepalive(self) -> None:
        if self.sse is not None:
            await self.sse.write(b": keepalive\n\n")

    def abort(self) -> None:
        """Drop the connection now, even in the middle of a write that does not drain:
        with a reset, so what the system still holds for it (up to megabytes for a
        client that stopped reading) is dropped too, not trickled out first."""
        transport = self.request.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    async def run(self, pump: Coroutine[Any, Any, None]) -> None:
        """Run the pump; over a WebSocket, also read (and ignore) what the client sends,
        so its pings are answered and its close ends the stream at once."""
        if self.ws is None:
            await pump
            return
        tasks = [asyncio.ensure_future(pump), asyncio.ensure_future(self._read())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(tasks)
        await self.ws.close()

    async def _read(self) -> None:
        assert self.ws is not None
        async for _ in self.ws:
            pass


def wants_websocket(request: web.Request) -> bool:
    """Whether ``request`` asks for a WebSocket (``Upgrade: websocket``), before any
    WebSocketResponse is made to check it.

    Not only to save the work: on CPython 3.11 the instances of a class share one
    table of attribute names, and each new instance shrinks the room left in it. A
    WebSocketResponse made and dropped for every plain request left no room for the
    last names a live socket sets, and every runner socket then held a dict of its
    own (1.6 KiB instead of 0.3 KiB).
    """
    return request.headers.get(hdrs.UPGRADE, "").lower().strip() == "websocket"


def _resume_point(request: web.Request, epoch: str) -> int | None:
    raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    if not raw:
        return None
    got_epoch, _, seq = raw.partition("-")
    if got_epoch != epoch or not seq.isdigit():
        return None
    return int(seq)


def _ends(kind: str, data: dict[str, Any]) -> bool:
    return kind in ("status", "snapshot") and is_final(data)


async def _pump(
    sink: _Sink,
    hub: WatchHub,
    watcher: Watcher,
    backlog: list[Item],
    after: int,
    job: bool,
    refresh: Refresh | None = None,
) -> None:
    """Send the backlog (and empty it), then the live events numbered above ``after``
    until a final status (job streams), a drop or a disconnect. A ``refresh`` (events
    may have been missed) is sent as a fresh snapshot."""

    async def send(items: list[Item]) -> bool:
        """Send events together; True if one of them ends the stream (the rest are not sent)."""
        events = []
        ends = False
        for seq, kind, data in items:
            if kind == REFRESH:
                if refresh is None:
                    continue
                kind, data = "snapshot", await refresh()
            events.append((f"{hub.epoch}-{seq}", kind, data))
            if job and _ends(kind, data):
                ends = True
                break
        if events:
            async with asyncio.timeout(SEND_TIMEOUT):
                await sink.send(events)
        return ends

    try:
        ends = await send(backlog)
        backlog.clear()  # sent: an idle stream holds none of it (a snapshot may be large)
        if ends:
            return
        while True:
            try:
                async with asyncio.timeout(KEEPALIVE):
                    await watcher.wait()
            except TimeoutError:
                async with asyncio.timeout(SEND_TIMEOUT):
                    await sink.keepalive()
                continue
            # Whatever else is already queued goes in the same write.
            burst = watcher.take(BURST)
            live = []
            for queued in burst:
                if queued is None:
                    break  # dropped for being slow: the client reconnects and catches up
                seq, kind, _ = queued
                if seq <= after and kind != "closing":
                    continue  # already in the backlog or the snapshot
                live.append(queued)
            if await send(live) or None in burst:
                return
    except TimeoutError:
        sink.abort()  # the client stopped reading
    except RunpackError:
        sink.abort()  # no fresh snapshot now: the client reconnects and gets one then


async def _serve(
    request: web.Request,
    hub: WatchHub,
    watcher: Watcher,
    backlog: list[Item],
    after: int,
    job: bool,
    refresh: Refresh | None = None,
) -> web.StreamResponse:
    sink = _Sink(request)
    watcher.on_drop = sink.abort
    response = await sink.open()
    with contextlib.suppress(ConnectionResetError, asyncio.CancelledError):
        await sink.run(_pump(sink, hub, watcher, backlog, after, job, refresh))
    return response


async def _snapshot(request: web.Request, channel: Channel, job_id: str) -> Item:
    """The job as it is now, numbered so that the events after it are the ones it lacks.

    Events published while the job is read may or may not be in what was read.
    Sending them after the snapshot is harmless for states (status, progress, a
    replaced console) but would show a console append twice: so the job is read
    again until no append happened meanwhile.
    """
    service = request.app[SERVICE]
    for _ in range(SNAPSHOT_TRIES):
        start = channel.seq
        job = await service.get_job(job_id)
        meanwhile = channel.since(start)
        if meanwhile is not None and not any(
            kind == "console" and "append" in data for _, kind, data in meanwhile
        ):
            break
    else:
        # Appends on every read (a very chatty job): what was read includes at least
        # everything published before the read ended.
        start = channel.seq
    # Where it stands and its runner's name are no part of the events: read once.
    return (start, "snapshot", await live_detail(request.app, job))


async def _stream_job(request: web.Request, job_id: str) -> web.StreamResponse:
    service = request.app[SERVICE]
    hub = request.app[WATCH]
    await service.get_job(job_id)  # 404 before any stream starts
    channel = hub.channel(job_id)
    watcher = hub.watch(channel)
    # Dropped while its snapshot is read: its connection closes then too.
    watcher.on_drop = _Sink(request).abort
    try:
        resume = _resume_point(request, hub.epoch)
        backlog = channel.since(resume) if resume is not None else None
        after = channel.seq
        if backlog is None:
            backlog = [await _snapshot(request, channel, job_id)]
            after = backlog[0][0]

        async def refresh() -> dict[str, Any]:
            return await live_detail(request.app, await service.get_job(job_id))

        return await _serve(request, hub, watcher, backlog, after, job=True, refresh=refresh)
    finally:
        hub.unwatch(channel, watcher)


@routes.get("/api/jobs/{job_id}/events")
@policy(
    Role.PUBLIC, bucket="requests", failure="Failed to stream job events", errors=(JobNotFound,)
)
async def job_events(request: web.Request) -> web.StreamResponse:
    return await _stream_job(request, request.match_info["job_id"])


@routes.get("/api/jobs/by-hash/{job_hash}/events")
@policy(
    Role.PUBLIC, bucket="requests", failure="Failed to stream job events", errors=(JobNotFound,)
)
async def job_events_by_hash(request: web.Request) -> web.StreamResponse:
    job_hash = request.match_info["job_hash"]
    # A NUL cannot name a row (and PostgreSQL refuses it in a text parameter).
    job = None if "\x00" in job_hash else await request.app[SERVICE].store.get_job_by_hash(job_hash)
    if job is None:
        raise JobNotFound()
    return await _stream_job(request, job.id)


#: What ``?status=`` of the admin stream may name.
STATUSES = frozenset({*(s.value for s in JobStatus), "deleted"})


def status_filter(request: web.Request) -> frozenset[str] | None:
    """``?status=completed,failed``: only those status events; None when not given."""
    raw = request.query.get("status")
    if raw is None:
        return None
    wanted = frozenset(split_list(raw))
    unknown = sorted(wanted - STATUSES)
    if unknown or not wanted:
        known = ", ".join(sorted(STATUSES))
        got = ", ".join(unknown) or "empty"
        raise BadRequest("Invalid status filter", details=f"{got}; one or more of {known}")
    return wanted


@routes.get("/api/admin/events")
@policy(Role.ADMIN_READ, failure="Failed to stream events", errors=(BadRequest,))
async def admin_events(request: web.Request) -> web.StreamResponse:
    hub = request.app[WATCH]
    channel = hub.admin
    statuses = status_filter(request)
    watcher = hub.watch(channel, statuses)
    key = request[CALLER].key
    # A stored key's stream ends once the key is revoked (see KeyRing.check_open).
    release = (
        request.app[KEYS].hold(key, lambda: watcher.end(_revoked(channel.seq))) if key else None
    )
    try:
        resume = _resume_point(request, hub.epoch)
        backlog = channel.since(resume) if resume is not None else None
        if backlog is not None and statuses is not None:
            backlog = [item for item in backlog if watcher.wants(item)]
        if backlog is None:
            # No way to replay: tell the client to reload what it shows.
            backlog = [(channel.seq, "reset", {"watchers": hub.watcher_count()})]
        return await _serve(request, hub, watcher, backlog, channel.seq, job=False)
    finally:
        if release is not None:
            release()
        hub.unwatch(channel, watcher)


def _revoked(seq: int) -> Item:
    """The last event of a stream whose key was revoked."""
    return (seq, "closing", {"reason": "API key revoked"})
