"""The runner's transports and the runner itself against a real app in this process."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from runpack.api.common import Handler
from runpack.app import create_app
from runpack.appkeys import HUB
from runpack.settings import Settings
from runpack_runner.jobs.hello_world import HelloWorld
from runpack_runner.registry import Registry
from runpack_runner.runner import Runner
from runpack_runner.settings import RunnerSettings
from runpack_runner.state import RunnerState, load_state
from runpack_runner.transports import (
    Acked,
    Assignment,
    AuthFailed,
    Beat,
    CancelJob,
    Event,
    Hello,
    HttpTransport,
    Result,
    ServerUnreachable,
    SocketUnavailable,
    Transport,
    WebSocketTransport,
)
from tests.conftest import ADMIN, RUNNER_KEY, submit
from tests.procs import until

UNKNOWN_RUNNER = "0f0e0d0c-0b0a-4990-8877-665544332211"


def base_url(client: TestClient) -> str:
    return str(client.make_url("")).rstrip("/")


def hello(
    runner_id: str | None = None, jobs: list[str] | None = None, secret: str | None = None
) -> Hello:
    return Hello(runner_id, "test-runner", ["hello_world"], 1, "test", jobs or [], secret)


async def job_detail(client: TestClient, job_id: str) -> Any:
    resp = await client.get(f"/api/admin/jobs/{job_id}", headers=ADMIN)
    assert resp.status == 200
    return await resp.json()


async def next_event(transport: Transport, limit: float = 10) -> Event:
    return await asyncio.wait_for(transport.receive(), limit)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


# --- HTTP -------------------------------------------------------------------------------------


@pytest.mark.parametrize("long_poll", [True, False], ids=["long-poll", "available+claim"])
async def test_http_transport_round_trip(
    client: TestClient, session: aiohttp.ClientSession, long_poll: bool
) -> None:
    settings = RunnerSettings(
        worker_url=base_url(client), runner_api_key=RUNNER_KEY, transport="http", poll_wait=1
    )
    transport = HttpTransport(session, settings, ["hello_world"], long_poll=long_poll)
    welcome = await transport.start(hello())
    assert welcome.runner_id and not welcome.dropped
    job = await submit(client, "hello_world", name="Ada", processing_time=0)
    await transport.grant(1)
    event = await next_event(transport)
    assert isinstance(event, Assignment) and event.job_id == job["job_id"]
    assert event.input_params == {"name": "Ada", "processing_time": 0}

    await transport.heartbeat(Beat(job["job_id"], 1, 2, "line one\n"))
    detail = await job_detail(client, job["job_id"])
    assert detail["status"] == "in_progress"
    assert detail["progress"] == {"current": 1, "total": 2}
    assert detail["console_output"] == "line one\n"

    result = Result(job["job_id"], "complete", "all done", output_data={"message": "hi"})
    await transport.send_result(result)
    assert await next_event(transport) == Acked(job["job_id"], "complete", True)
    detail = await job_detail(client, job["job_id"])
    assert detail["status"] == "completed" and detail["output_data"] == {"message": "hi"}

    # The server no longer wants anything about this job from us.
    await transport.send_result(result)
    ack = await next_event(transport)
    assert isinstance(ack, Acked) and not ack.applied
    await transport.heartbeat(Beat(job["job_id"], 2, 2, ""))
    lost = await next_event(transport)
    assert isinstance(lost, CancelJob) and lost.lost
    await transport.close()


async def test_http_transport_registers_again_when_unknown(
    client: TestClient, session: aiohttp.ClientSession
) -> None:
    settings = RunnerSettings(worker_url=base_url(client), runner_api_key=RUNNER_KEY)
    transport = HttpTransport(session, settings, ["hello_world"])
    welcome = await transport.start(hello(UNKNOWN_RUNNER, jobs=[UNKNOWN_RUNNER]))
    assert welcome.runner_id != UNKNOWN_RUNNER
    assert welcome.dropped == [UNKNOWN_RUNNER]
    await transport.close()
    assert welcome.runner_secret  # registered with a secret of its own, kept by the runner
    again = HttpTransport(session, settings, ["hello_world"])
    back = await again.start(hello(welcome.runner_id, secret=welcome.runner_secret))
    assert back.runner_id == welcome.runner_id
    await again.close()


@pytest.mark.parametrize("status", [404, 405])
async def test_http_transport_verifies_with_get_where_post_is_unknown(
    aiohttp_client: Any, settings: Settings, session: aiohttp.ClientSession, status: int
) -> None:
    """A server without ``POST /api/runner/verify`` (the original's): the runner keeps
    its id, verified with GET, and the server its first registration."""
    asked: list[str] = []

    @web.middleware
    async def no_post_verify(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/api/runner/verify":
            asked.append(request.method)
            if request.method == "POST":
                return web.json_response({"error": "Not found"}, status=status)
        return await handler(request)

    app = create_app(settings)
    app.middlewares.insert(0, no_post_verify)
    client = await aiohttp_client(app)
    runner_settings = RunnerSettings(worker_url=base_url(client), runner_api_key=RUNNER_KEY)
    first = HttpTransport(session, runner_settings, ["hello_world"])
    welcome = await first.start(hello())
    await first.close()
    again = HttpTransport(session, runner_settings, ["hello_world"])
    back = await again.start(hello(welcome.runner_id, secret=welcome.runner_secret))
    await again.close()
    assert back.runner_id == welcome.runner_id and asked == ["POST", "GET"]


async def test_http_transport_with_a_wrong_key(
    client: TestClient, session: aiohttp.ClientSession
) -> None:
    settings = RunnerSettings(worker_url=base_url(client), runner_api_key="wrong")
    with pytest.raises(AuthFailed):
        await HttpTransport(session, settings, ["hello_world"]).start(hello())


# --- WebSocket -------------------------------------------------------------------------------


async def test_websocket_transport_round_trip(
    client: TestClient, session: aiohttp.ClientSession
) -> None:
    transport = await WebSocketTransport.open(session, base_url(client), RUNNER_KEY)
    welcome = await transport.start(hello())
    assert welcome.runner_id and welcome.heartbeat_interval
    job = await submit(client, "hello_world", name="Bea", processing_time=0)
    await transport.grant(1)
    event = await next_event(transport)
    assert isinstance(event, Assignment) and event.job_id == job["job_id"]

    await transport.heartbeat(Beat(job["job_id"], 0, 1, "a\n"))
    await transport.heartbeat(Beat(job["job_id"], 1, 1, "a\nb\n", append="b\n"))

    async def console() -> str | None:
        detail = await job_detail(client, job["job_id"])
        return detail["console_output"] if detail["console_output"] == "a\nb\n" else None

    await until(console, "the appended console")
    await transport.send_result(Result(job["job_id"], "complete", "", output_data={"ok": True}))
    assert await next_event(transport) == Acked(job["job_id"], "complete", True)
    detail = await job_detail(client, job["job_id"])
    assert detail["status"] == "completed"
    assert detail["console_output"] == "a\nb\n"  # an empty console keeps what was streamed
    await transport.close()


async def test_websocket_open_failures(
    client: TestClient, session: aiohttp.ClientSession, aiohttp_server: Any
) -> None:
    with pytest.raises(AuthFailed):
        await WebSocketTransport.open(session, base_url(client), "wrong")
    plain = await aiohttp_server(web.Application())  # a server without the runner socket
    with pytest.raises(SocketUnavailable, match="404"):
        await WebSocketTransport.open(session, str(plain.make_url("")), RUNNER_KEY)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ServerUnreachable):
        await WebSocketTransport.open(session, f"http://127.0.0.1:{port}", RUNNER_KEY)


# --- the runner, in process ------------------------------------------------------------------


class SocketSwitch:
    """Makes the real app answer 404 on the runner socket while ``blocked``."""

    def __init__(self) -> None:
        self.blocked = False

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.blocked and request.path == "/api/runner/ws":
            return web.json_response({"error": "Not found"}, status=404)
        return await handler(request)


@pytest.fixture
async def switched(aiohttp_client: Any, settings: Settings) -> tuple[TestClient, SocketSwitch]:
    switch = SocketSwitch()
    app = create_app(settings)
    app.middlewares.insert(0, switch.middleware)
    return await aiohttp_client(app), switch


def make_runner(client: TestClient, tmp_path: Path, **changes: Any) -> Runner:
    settings = RunnerSettings(
        worker_url=base_url(client),
        runner_api_key=RUNNER_KEY,
        reconnect_min=0.05,
        reconnect_max=0.2,
        log_file="",
    ).replace(**changes)
    return Runner(
        settings,
        Registry({"hello_world": HelloWorld()}),
        state_path=tmp_path / "state.json",
        state=RunnerState(),
        name="in-process",
    )


async def status_is(client: TestClient, job_id: str, status: str) -> bool:
    return bool((await job_detail(client, job_id))["status"] == status)


async def test_runner_falls_back_to_http_and_returns_to_the_socket(
    switched: tuple[TestClient, SocketSwitch], tmp_path: Path
) -> None:
    client, switch = switched
    switch.blocked = True
    runner = make_runner(client, tmp_path, socket_retry_interval=0.3, poll_wait=0.3)
    task = asyncio.create_task(runner.run(handle_signals=False))
    try:
        first = await submit(client, "hello_world", name="over http", processing_time=0)
        await until(lambda: status_is(client, first["job_id"], "completed"), "job over HTTP")
        assert runner.transport is not None and runner.transport.name == "http"
        assert load_state(tmp_path / "state.json").runner_id == runner.runner_id

        switch.blocked = False
        await until(
            lambda: runner.transport is not None and runner.transport.name == "websocket",
            "the runner back on the socket",
        )
        app = client.app
        assert app is not None and runner.runner_id in app[HUB].conns
        second = await submit(client, "hello_world", name="over ws", processing_time=0)
        await until(lambda: status_is(client, second["job_id"], "completed"), "job over WS")
    finally:
        runner.request_stop()
        assert await asyncio.wait_for(task, 10) == 0


async def test_runner_keeps_a_result_until_the_server_has_it(
    switched: tuple[TestClient, SocketSwitch], tmp_path: Path
) -> None:
    client, switch = switched
    runner = make_runner(client, tmp_path, transport="websocket")
    task = asyncio.create_task(runner.run(handle_signals=False))
    try:
        job = await submit(client, "hello_world", name="blip", processing_time=1)
        job_id = job["job_id"]
        await until(lambda: status_is(client, job_id, "in_progress"), "the job running")
        # The network goes away while the job runs: no socket, no way back for now.
        switch.blocked = True
        app = client.app
        assert app is not None
        app[HUB].conns[runner.runner_id or ""].close()
        await until(lambda: job_id in runner.outbox and runner.transport is None, "a kept result")
        assert await status_is(client, job_id, "in_progress")

        switch.blocked = False  # back: the runner resumes the job and delivers the result
        await until(lambda: status_is(client, job_id, "completed"), "the result delivered")
        await until(lambda: not runner.outbox and not runner.busy, "the slot given back")
        detail = await job_detail(client, job_id)
        assert detail["output_data"] == {"message": "Hello, blip!", "processing_time": 1}
        assert "Completed!" in detail["console_output"]
    finally:
        runner.request_stop()
        assert await asyncio.wait_for(task, 10) == 0
