"""Live job streams: ``GET /api/jobs/{id}/events`` (SSE and WebSocket), by hash, admin.

Streams are read with a plain aiohttp client and a small SSE parser written here,
not with ``runpack.client``. Jobs are driven through the runner endpoints (HTTP
and the runner WebSocket). Nothing sleeps to synchronize: each step waits for
the event it expects, within a bounded time.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient

from runpack.api import events as events_api
from runpack.appkeys import SERVICE, WATCH
from runpack.notify import Notifier, ServerEvent
from runpack.watch import WatchHub
from tests.conftest import ADMIN, RUNNER, SUBMIT, as_runner, claim, register, submit
from tests.procs import until

# --- a plain SSE reader ----------------------------------------------------------------


@dataclass(frozen=True)
class Ev:
    id: str
    event: str
    data: dict[str, Any]

    @property
    def seq(self) -> int:
        return int(self.id.partition("-")[2])

    @property
    def epoch(self) -> str:
        return self.id.partition("-")[0]


class SSE:
    """Events of one text/event-stream response, parsed as the SSE spec says."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        assert resp.status == 200, resp.status
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        self.resp = resp
        self.buffer = b""
        self.comments: list[str] = []

    async def _line(self) -> str | None:
        while b"\n" not in self.buffer:
            chunk = await self.resp.content.readany()
            if not chunk:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()

    async def next(self, limit: float = 10) -> Ev | None:
        """The next event, or None at the end of the stream."""
        fields: dict[str, str] = {}
        data: list[str] = []
        async with asyncio.timeout(limit):
            while True:
                line = await self._line()
                if line is None:
                    return None
                if line == "":
                    if data:
                        return Ev(fields["id"], fields["event"], orjson.loads("\n".join(data)))
                    continue
                if line.startswith(":"):
                    self.comments.append(line)
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data":
                    data.append(value)
                else:
                    fields[name] = value

    async def take(self, n: int, limit: float = 10) -> list[Ev]:
        out = []
        for _ in range(n):
            ev = await self.next(limit)
            assert ev is not None, f"the stream ended after {out}"
            out.append(ev)
        return out

    async def rest(self, limit: float = 10) -> list[Ev]:
        """Every event until the stream ends."""
        out = []
        while (ev := await self.next(limit)) is not None:
            out.append(ev)
        return out

    def close(self) -> None:
        self.resp.close()


async def open_sse(http: TestClient | aiohttp.ClientSession, path: str, **headers: str) -> SSE:
    resp = await http.get(path, headers=headers)
    return SSE(resp)


def shape(evs: list[Ev]) -> list[tuple[str, Any]]:
    """Events without their ids, and snapshots reduced to their status."""
    return [(e.event, e.data["status"] if e.event == "snapshot" else e.data) for e in evs]


def assert_increasing(evs: list[Ev]) -> None:
    assert len({e.epoch for e in evs}) == 1
    seqs = [e.seq for e in evs]
    assert seqs == sorted(set(seqs)), seqs


# --- driving a job as a runner ------------------------------------------------------------


async def heartbeat(client: TestClient, runner: str, job_id: str, **body: Any) -> None:
    resp = await client.post(
        f"/api/runner/jobs/{job_id}/heartbeat", json=body, headers=as_runner(runner)
    )
    assert resp.status == 200, await resp.text()


async def complete(
    client: TestClient, runner: str, job_id: str, output: dict[str, Any], console: str = ""
) -> None:
    resp = await client.post(
        f"/api/runner/jobs/{job_id}/complete",
        json={"output_data": output, "console_output": console},
        headers=as_runner(runner),
    )
    assert resp.status == 200, await resp.text()


async def run_over_http(client: TestClient, job_id: str, steps: int = 3) -> None:
    """Claim, ``steps`` heartbeats with progress and console, complete."""
    runner = await register(client)
    await claim(client, runner, job_id)
    console = ""
    for i in range(1, steps + 1):
        console += f"step {i}\n"
        await heartbeat(
            client, runner, job_id, progress_current=i, progress_total=steps, console_output=console
        )
    await complete(client, runner, job_id, {"answer": 42}, console + "done\n")


def expected_http_run(job_id: str, steps: int = 3) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = [("snapshot", "pending")]
    console = ""
    for i in range(1, steps + 1):
        console += f"step {i}\n"
        if i == 1:
            out.append(("status", {"status": "claimed", "runner_id": ANY}))
        out.append(("progress", {"current": i, "total": steps}))
        out.append(("console", {"replace": console}))
        if i == 1:
            out.append(("status", {"status": "in_progress"}))
    out.append(("console", {"replace": console + "done\n"}))
    out.append(("status", {"status": "completed", "result": {"output_data": {"answer": 42}}}))
    return out


class _Any:
    def __eq__(self, other: object) -> bool:
        return True

    def __repr__(self) -> str:
        return "ANY"


ANY: Any = _Any()


class WsRunner:
    """A runner on the runner WebSocket, sending what a test tells it to.

    Each heartbeat waits until the server has published it (on a stream of its own),
    so a test's frames apply in the order it sent them; see
    test_runner_websocket_frames_of_one_job_apply_in_order for why that is needed.
    """

    def __init__(
        self, client: TestClient, ws: aiohttp.ClientWebSocketResponse, runner_id: str
    ) -> None:
        self.client = client
        self.ws = ws
        self.runner_id = runner_id
        self.applied: dict[str, SSE] = {}

    @classmethod
    async def connect(cls, client: TestClient) -> WsRunner:
        ws = await client.ws_connect("/api/runner/ws", headers=RUNNER)
        await ws.send_json(
            {
                "type": "hello",
                "name": "ws-runner",
                "capabilities": ["hello_world"],
                "concurrency": 1,
                "version": "test",
                "jobs": [],
            }
        )
        welcome = await ws.receive_json(timeout=5)
        assert welcome["type"] == "welcome", welcome
        return cls(client, ws, welcome["runner_id"])

    async def take_job(self) -> str:
        await self.ws.send_json({"type": "ready", "slots": 1})
        frame = await self.ws.receive_json(timeout=5)
        assert frame["type"] == "job", frame
        job_id = str(frame["job_id"])
        self.applied[job_id] = stream = await open_sse(self.client, f"/api/jobs/{job_id}/events")
        await stream.take(1)
        return job_id

    async def beat(
        self, job_id: str, current: int, total: int, append: str, wait: bool = True
    ) -> None:
        await self.ws.send_json(
            {
                "type": "heartbeat",
                "job_id": job_id,
                "progress_current": current,
                "progress_total": total,
                "console_append": append,
            }
        )
        while wait:
            ev = await self.applied[job_id].next()
            assert ev is not None
            wait = not (ev.event == "progress" and ev.data["current"] == current)

    async def complete(self, job_id: str, output: dict[str, Any]) -> None:
        await self.ws.send_json({"type": "complete", "job_id": job_id, "output_data": output})
        frame = await self.ws.receive_json(timeout=5)
        assert frame["type"] == "ack", frame
        self.applied.pop(job_id).close()

    async def close(self) -> None:
        for stream in self.applied.values():
            stream.close()
        await self.ws.close()


def console_of(evs: list[Ev]) -> str:
    """The console a viewer shows after these events."""
    text = ""
    for e in evs:
        if e.event == "snapshot":
            text = e.data["console_output"]
        elif e.event == "console":
            text = e.data["replace"] if "replace" in e.data else text + e.data["append"]
    return text


# --- one watcher --------------------------------------------------------------------------


async def test_sse_sends_the_snapshot_then_every_event_in_order(client: TestClient) -> None:
    job_id = (await submit(client, name="Ada"))["job_id"]
    stream = await open_sse(client, f"/api/jobs/{job_id}/events")
    [first] = await stream.take(1)
    assert first.event == "snapshot"
    assert first.data["job_id"] == job_id and first.data["input_params"] == {"name": "Ada"}
    await run_over_http(client, job_id)
    evs = [first, *await stream.rest()]  # the stream ends after the final status
    assert shape(evs) == expected_http_run(job_id)
    assert_increasing(evs)
    claimed = next(e for e in evs if e.data.get("status") == "claimed")
    assert claimed.data["runner_id"]


async def test_console_appends_over_the_runner_websocket(client: TestClient) -> None:
    job_id = (await submit(client, name="Ada"))["job_id"]
    stream = await open_sse(client, f"/api/jobs/{job_id}/events")
    await stream.take(1)
    runner = await WsRunner.connect(client)
    assert await runner.take_job() == job_id
    for i in range(1, 6):
        await runner.beat(job_id, i, 5, f"line {i}\n")
    await runner.complete(job_id, {"ok": True})
    evs = await stream.rest()
    assert_increasing(evs)
    appends = [e.data["append"] for e in evs if e.event == "console"]
    assert appends == [f"line {i}\n" for i in range(1, 6)]
    progress = [e.data["current"] for e in evs if e.event == "progress"]
    assert progress == [1, 2, 3, 4, 5]
    assert [e.data["status"] for e in evs if e.event == "status"] == [
        "claimed",
        "in_progress",
        "completed",
    ]
    await runner.close()


async def test_runner_websocket_frames_of_one_job_apply_in_order(client: TestClient) -> None:
    """Frames sent back to back, without waiting: appends stay in order, none is lost."""
    job_id = (await submit(client))["job_id"]
    stream = await open_sse(client, f"/api/jobs/{job_id}/events")
    await stream.take(1)
    runner = await WsRunner.connect(client)
    await runner.take_job()
    for i in range(1, 21):
        await runner.beat(job_id, i, 20, f"line {i}\n", wait=False)
    await runner.complete(job_id, {})
    evs = await stream.rest()
    want = "".join(f"line {i}\n" for i in range(1, 21))
    assert [e.data["current"] for e in evs if e.event == "progress"] == list(range(1, 21))
    assert console_of(evs) == want
    assert (await client.app[SERVICE].get_job(job_id)).console_output == want
    await runner.close()


async def test_a_finished_job_streams_its_snapshot_and_ends(client: TestClient) -> None:
    job_id = (await submit(client))["job_id"]
    await run_over_http(client, job_id)
    evs = await (await open_sse(client, f"/api/jobs/{job_id}/events")).rest()
    assert shape(evs) == [("snapshot", "completed")]
    assert evs[0].data["output_data"] == {"answer": 42}
    assert evs[0].data["console_output"] == "step 1\nstep 2\nstep 3\ndone\n"


async def test_keepalive_comments_while_nothing_happens(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events_api, "KEEPALIVE", 0.05)
    job_id = (await submit(client))["job_id"]
    stream = await open_sse(client, f"/api/jobs/{job_id}/events")
    await stream.take(1)
    async with asyncio.timeout(5):
        line = await stream._line()
    assert line == ": keepalive"
    stream.close()


# --- reconnecting and joining late --------------------------------------------------------


async def test_reconnect_with_last_event_id_misses_and_repeats_nothing(client: TestClient) -> None:
    job_id = (await submit(client))["job_id"]
    path = f"/api/jobs/{job_id}/events"
    reference = await open_sse(client, path)  # stays connected throughout
    first = await open_sse(client, path)
    ref_head = await reference.take(1)
    runner = await register(client)
    await claim(client, runner, job_id)
    await heartbeat(client, runner, job_id, progress_current=1, progress_total=4)
    seen = await first.take(3)  # snapshot, claimed, progress 1/4
    first.close()
    # While it is away: more progress and console.
    await heartbeat(client, runner, job_id, progress_current=2, progress_total=4)
    await heartbeat(client, runner, job_id, console_output="half way\n")
    resumed = await open_sse(client, path, **{"Last-Event-ID": seen[-1].id})
    await heartbeat(client, runner, job_id, progress_current=4, progress_total=4)
    await complete(client, runner, job_id, {"n": 4})
    rest = await resumed.rest()
    assert rest[0].event != "snapshot"
    everything = ref_head + await reference.rest()
    assert seen + rest == everything
    assert_increasing(seen + rest)


async def test_resume_by_query_parameter_and_from_the_last_event(client: TestClient) -> None:
    job_id = (await submit(client))["job_id"]
    path = f"/api/jobs/{job_id}/events"
    stream = await open_sse(client, path)
    [snap] = await stream.take(1)
    stream.close()
    # Resuming from the newest event sends nothing until something happens.
    resumed = await open_sse(client, f"{path}?last_event_id={snap.id}")
    runner = await register(client)
    await claim(client, runner, job_id)
    [claimed] = await resumed.take(1)
    assert claimed.event == "status" and claimed.data["status"] == "claimed"
    assert claimed.seq > snap.seq
    resumed.close()


@pytest.mark.parametrize("last_id", ["0123abcd-5", "garbage", "-1"])
async def test_an_unknown_last_event_id_gets_a_fresh_snapshot(
    client: TestClient, last_id: str
) -> None:
    job_id = (await submit(client))["job_id"]
    stream = await open_sse(client, f"/api/jobs/{job_id}/events", **{"Last-Event-ID": last_id})
    [snap] = await stream.take(1)
    assert snap.event == "snapshot" and snap.data["status"] == "pending"
    stream.close()


async def test_a_late_joiner_gets_the_console_so_far(client: TestClient) -> None:
    job_id = (await submit(client))["job_id"]
    runner = await WsRunner.connect(client)
    await runner.take_job()
    early = await open_sse(client, f"/api/jobs/{job_id}/events")
    [early_snap] = await early.take(1)
    assert early_snap.data["status"] == "claimed"
    for i in range(1, 4):
        await runner.beat(job_id, i, 6, f"line {i}\n")
    await early.take(7)  # three progress and appends, and in_progress: all applied
    late = await open_sse(client, f"/api/jobs/{job_id}/events")
    [snap] = await late.take(1)
    assert snap.event == "snapshot"
    assert snap.data["status"] == "in_progress"
    assert snap.data["console_output"] == "line 1\nline 2\nline 3\n"
    assert snap.data["progress"] == {"current": 3, "total": 6}
    for i in range(4, 7):
        await runner.beat(job_id, i, 6, f"line {i}\n")
    await runner.complete(job_id, {"done": True})
    rest = await late.rest()
    assert console_of([snap, *rest]) == "".join(f"line {i}\n" for i in range(1, 7))
    assert rest[-1].data == {"status": "completed", "result": {"output_data": {"done": True}}}
    await early.rest()
    await runner.close()


async def test_an_append_made_while_the_snapshot_is_read_shows_once(client: TestClient) -> None:
    """The console append published between subscribing and reading the snapshot is
    in the snapshot: it must not come again as an event after it."""
    job_id = (await submit(client))["job_id"]
    runner = await WsRunner.connect(client)
    await runner.take_job()
    await runner.beat(job_id, 1, 3, "before\n")
    service = client.app[SERVICE]
    store = service.store
    real_get_job = store.get_job
    reads = 0

    async def get_job_with_an_append_first(wanted: str) -> Any:
        nonlocal reads
        reads += 1
        if reads == 2:  # the snapshot's read (the first one only checks the job exists)
            await service.heartbeat(runner.runner_id, job_id, 2, 3, None, "during\n")
        return await real_get_job(wanted)

    store.get_job = get_job_with_an_append_first  # type: ignore[method-assign]
    try:
        stream = await open_sse(client, f"/api/jobs/{job_id}/events")
        [snap] = await stream.take(1)
    finally:
        store.get_job = real_get_job  # type: ignore[method-assign]
    assert snap.data["console_output"] == "before\nduring\n"
    await runner.beat(job_id, 3, 3, "after\n")
    await runner.complete(job_id, {})
    evs = [snap, *await stream.rest()]
    assert console_of(evs) == "before\nduring\nafter\n"
    assert_increasing(evs)
    await runner.close()


def test_a_resume_id_from_an_evicted_channel_gets_a_snapshot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Sequence numbers are shared by all channels, so a channel evicted and made anew
    never takes an old number for one of its own."""
    from runpack import watch

    monkeypatch.setattr(watch, "MAX_CHANNELS", 4)
    hub = WatchHub(Notifier())

    def update(job_id: str, current: int) -> None:
        data = {"status": "in_progress", "progress_current": current, "progress_total": 9}
        hub.on_event(ServerEvent("job_updated", job_id, data))

    for i in range(1, 4):
        update("a", i)
    last_seen = hub.channel("a").seq
    update("a", 4)  # missed by a client that is away
    for n in range(10):  # enough other watched jobs to evict "a"
        hub.channel(f"other-{n}")
        update(f"other-{n}", 1)
    assert "a" not in hub.channels
    update("a", 5)
    channel = hub.channel("a")
    assert channel.since(last_seen) is None  # a snapshot, not "nothing missed"
    assert channel.since(channel.seq) == []
    assert channel.since(channel.seq + 1000) is None


# --- many watchers, slow watchers --------------------------------------------------------


@pytest.fixture
async def http(client: TestClient) -> AsyncIterator[aiohttp.ClientSession]:
    """A session with no connection limit, on the test server."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        base_url=str(client.make_url("/")), connector=connector
    ) as session:
        yield session


async def test_200_concurrent_watchers_all_receive_every_event(
    client: TestClient, http: aiohttp.ClientSession
) -> None:
    job_id = (await submit(client))["job_id"]
    async with asyncio.timeout(40):
        streams = await asyncio.gather(
            *(open_sse(http, f"/api/jobs/{job_id}/events") for _ in range(200))
        )
        heads = await asyncio.gather(*(s.take(1) for s in streams))
        assert client.app[WATCH].watcher_count() == 200
        runner = await WsRunner.connect(client)
        await runner.take_job()
        for i in range(1, 11):
            await runner.beat(job_id, i, 10, f"line {i}\n")
        await runner.complete(job_id, {"watchers": 200})
        tails = await asyncio.gather(*(s.rest(limit=30) for s in streams))
    everyone = [head + tail for head, tail in zip(heads, tails, strict=True)]
    assert all(evs == everyone[0] for evs in everyone)
    evs = everyone[0]
    assert_increasing(evs)
    assert [e.data["current"] for e in evs if e.event == "progress"] == list(range(1, 11))
    assert console_of(evs) == "".join(f"line {i}\n" for i in range(1, 11))
    assert evs[-1].data["status"] == "completed"
    await runner.close()


def stalled_socket(url: str, path: str) -> socket.socket:
    """A client that asks for a stream, then never reads: a tiny receive buffer, so the
    server's writes to it stop draining almost at once."""
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.connect((host, int(port)))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """Read everything that is left: True if the server ended the connection."""
    sock.settimeout(5)
    try:
        while sock.recv(1 << 20):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


async def test_a_stalled_watcher_is_dropped_without_delaying_the_others(
    client: TestClient, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runpack import watch

    monkeypatch.setattr(watch, "WATCH_QUEUE", 32)
    hub = client.app[WATCH]
    service = client.app[SERVICE]
    job_id = (await submit(client))["job_id"]
    path = f"/api/jobs/{job_id}/events"
    healthy = [await open_sse(http, path) for _ in range(3)]
    for stream in healthy:
        await stream.take(1)
    stalled = stalled_socket(str(client.make_url("/")), path)
    try:
        await until(lambda: hub.watcher_count() == 4, "the stalled watcher to subscribe")
        runner = await register(client)
        await claim(client, runner, job_id)
        for stream in healthy:
            await stream.take(1)  # claimed
        chunk = "x" * 64_000 + "\n"
        beats = 120  # 7.7 MB: far more than the stalled connection's buffers hold (~2 MB)
        latencies: list[float] = []
        for i in range(1, beats + 1):
            sent = time.monotonic()
            await service.heartbeat(runner, job_id, i, beats, None, chunk)
            for stream in healthy:
                evs = await stream.take(3 if i == 1 else 2, limit=5)  # progress, append
                assert evs[0].data == {"current": i, "total": beats}
            latencies.append(time.monotonic() - sent)
        # The stalled watcher fell behind by more than its queue: dropped, its
        # connection closed, while every event reached the others at once.
        await until(lambda: hub.watcher_count() == 3, "the stalled watcher to be dropped")
        assert max(latencies) < 2.0, max(latencies)
        assert sorted(latencies)[len(latencies) // 2] < 0.2
        assert await asyncio.to_thread(closed_by_server, stalled)
    finally:
        stalled.close()
    for stream in healthy:
        stream.close()


async def test_a_watcher_that_stops_reading_is_disconnected_after_the_send_timeout(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Few events but one that never drains: the send timeout ends it."""
    monkeypatch.setattr(events_api, "SEND_TIMEOUT", 0.3)
    hub = client.app[WATCH]
    job_id = (await submit(client))["job_id"]
    stalled = stalled_socket(str(client.make_url("/")), f"/api/jobs/{job_id}/events")
    try:
        await until(lambda: hub.watcher_count() == 1, "the watcher to subscribe")
        runner = await register(client)
        await claim(client, runner, job_id)
        for n in range(4):  # more than the stalled connection's buffers hold (~2 MB)
            await heartbeat(client, runner, job_id, console_output=str(n) * 1_000_000)
        await until(lambda: hub.watcher_count() == 0, "the stalled watcher to be dropped")
        assert await asyncio.to_thread(closed_by_server, stalled)
    finally:
        stalled.close()


# --- the same job by hash, by two clients ---------------------------------------------------


async def test_the_by_hash_stream_follows_the_same_job(client: TestClient) -> None:
    job_id = (await submit(client, name="Ada"))["job_id"]
    by_id = await open_sse(client, f"/api/jobs/{job_id}/events")
    [snap] = await by_id.take(1)
    job_hash = snap.data["job_hash"]
    by_hash = await open_sse(client, f"/api/jobs/by-hash/{job_hash}/events")
    [hash_snap] = await by_hash.take(1)
    assert hash_snap.data["job_id"] == job_id
    await run_over_http(client, job_id)
    assert await by_hash.rest() == await by_id.rest()


async def test_two_clients_with_the_same_inputs_follow_one_job(client: TestClient) -> None:
    params = {"name": "Ada", "processing_time": 3, "opts": {"a": 1, "b": 2}}
    swapped = {"opts": {"b": 2, "a": 1}, "processing_time": 3, "name": "Ada"}
    one = await submit(client, **params)
    two = await submit(client, **swapped)
    assert one["job_id"] == two["job_id"]
    assert (one["message"], two["message"]) == ("Job queued successfully", "Job is pending")
    job_id = one["job_id"]
    first = await open_sse(client, f"/api/jobs/{job_id}/events")
    [snap] = await first.take(1)
    second = await open_sse(client, f"/api/jobs/by-hash/{snap.data['job_hash']}/events")
    await second.take(1)
    await run_over_http(client, job_id)
    seen_by_first, seen_by_second = await asyncio.gather(first.rest(), second.rest())
    assert seen_by_first == seen_by_second
    assert seen_by_first[-1].data["status"] == "completed"


# --- the WebSocket variant --------------------------------------------------------------------


async def ws_events(ws: aiohttp.ClientWebSocketResponse, limit: float = 10) -> list[Ev]:
    """JSON text frames until the server closes the socket."""
    out = []
    async with asyncio.timeout(limit):
        async for msg in ws:
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            frame = orjson.loads(msg.data)
            out.append(Ev(frame["id"], frame["event"], frame["data"]))
    return out


async def test_the_websocket_variant(client: TestClient) -> None:
    job_id = (await submit(client))["job_id"]
    ws = await client.ws_connect(f"/api/jobs/{job_id}/events")
    first = await ws.receive(timeout=5)
    assert first.type == aiohttp.WSMsgType.TEXT
    snap = orjson.loads(first.data)
    assert snap["event"] == "snapshot" and snap["data"]["status"] == "pending"
    sse = await open_sse(client, f"/api/jobs/{job_id}/events")
    await sse.take(1)
    await run_over_http(client, job_id)
    evs = await ws_events(ws)
    assert ws.closed
    assert evs == await sse.rest()
    assert shape([Ev(snap["id"], "snapshot", snap["data"]), *evs]) == expected_http_run(job_id)


async def test_the_websocket_variant_resumes_with_last_event_id(client: TestClient) -> None:
    job_id = (await submit(client))["job_id"]
    runner = await register(client)
    stream = await open_sse(client, f"/api/jobs/{job_id}/events")
    await stream.take(1)
    await claim(client, runner, job_id)
    [claimed] = await stream.take(1)
    await heartbeat(client, runner, job_id, progress_current=1, progress_total=1)
    ws = await client.ws_connect(f"/api/jobs/{job_id}/events?last_event_id={claimed.id}")
    await complete(client, runner, job_id, {})
    evs = await ws_events(ws)
    assert evs == await stream.rest()
    assert evs[0].event == "progress"


async def test_a_websocket_watcher_that_closes_is_unsubscribed(client: TestClient) -> None:
    job_id = (await submit(client))["job_id"]
    hub = client.app[WATCH]
    ws = await client.ws_connect(f"/api/jobs/{job_id}/events")
    await ws.receive(timeout=5)
    assert hub.watcher_count() == 1
    await ws.close()
    await until(lambda: hub.watcher_count() == 0, "the watcher to be unsubscribed")


# --- the admin stream -------------------------------------------------------------------------


async def test_the_admin_stream_needs_a_key(client: TestClient) -> None:
    resp = await client.get("/api/admin/events")
    assert resp.status == 401
    assert (await resp.json())["error"]
    resp = await client.get("/api/admin/events", headers=SUBMIT)
    assert resp.status == 401


async def test_the_admin_stream_carries_every_job_and_runner(client: TestClient) -> None:
    stream = await open_sse(client, "/api/admin/events", **ADMIN)
    [reset] = await stream.take(1)
    assert reset.event == "reset"
    one = (await submit(client, name="one"))["job_id"]
    two = (await submit(client, name="two"))["job_id"]
    runner = await WsRunner.connect(client)
    evs = await stream.take(3)
    assert [(e.event, e.data.get("job_id"), e.data.get("status")) for e in evs] == [
        ("status", one, "pending"),
        ("status", two, "pending"),
        ("runner", None, None),
    ]
    assert evs[2].data == {"change": "attached", "runner_id": runner.runner_id}
    job = await runner.take_job()
    await runner.beat(job, 1, 2, "hi\n")
    await runner.complete(job, {"x": 1})
    evs = await stream.take(5)
    assert all(e.data["job_id"] == job for e in evs)
    assert [e.event for e in evs] == ["status", "progress", "console", "status", "status"]
    assert [e.data.get("status") for e in evs if e.event == "status"] == [
        "claimed",
        "in_progress",
        "completed",
    ]
    assert evs[2].data == {"job_id": job, "append": "hi\n"}
    assert_increasing([reset, *evs])
    stream.close()
    await runner.close()


async def test_the_admin_stream_filtered_by_status_carries_only_those(
    client: TestClient,
) -> None:
    stream = await open_sse(client, "/api/admin/events?status=claimed,completed", **ADMIN)
    [reset] = await stream.take(1)
    assert reset.event == "reset"
    runner = await WsRunner.connect(client)
    one = (await submit(client, name="one"))["job_id"]
    assert await runner.take_job() == one
    await runner.beat(one, 1, 2, "hi\n")
    await runner.complete(one, {"x": 1})
    evs = await stream.take(2)
    assert [(e.event, e.data["job_id"], e.data["status"]) for e in evs] == [
        ("status", one, "claimed"),
        ("status", one, "completed"),
    ]
    # Resuming replays only what the filter lets through.
    resumed = await open_sse(
        client, "/api/admin/events?status=completed", **ADMIN, **{"Last-Event-ID": reset.id}
    )
    [again] = await resumed.take(1)
    assert (again.event, again.data["status"], again.id) == ("status", "completed", evs[1].id)
    stream.close()
    resumed.close()
    await runner.close()


@pytest.mark.parametrize("query", ["status=", "status=done", "status=completed,nope"])
async def test_a_bad_admin_status_filter_is_a_400(client: TestClient, query: str) -> None:
    resp = await client.get(f"/api/admin/events?{query}", headers=ADMIN)
    assert resp.status == 400
    body = await resp.json()
    assert body["error"] == "Invalid status filter"
    assert "completed" in body["details"]


async def test_the_runner_key_may_read_the_admin_stream(client: TestClient) -> None:
    stream = await open_sse(client, "/api/admin/events", **RUNNER)
    [reset] = await stream.take(1)
    assert reset.event == "reset"
    stream.close()


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/api/jobs/00000000-0000-4000-8000-000000000000/events",
        "/api/jobs/not-a-job/events",
        "/api/jobs/by-hash/" + "0" * 64 + "/events",
    ],
)
async def test_a_stream_of_an_unknown_job_is_a_json_404(client: TestClient, path: str) -> None:
    resp = await client.get(path)
    assert resp.status == 404
    assert resp.headers["Content-Type"].startswith("application/json")
    assert (await resp.json())["error"] == "Job not found"
