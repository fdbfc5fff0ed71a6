"""Frames the server writes to a runner's socket several at a time (runpack.api.runner_socket)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient

from runpack.api import runner_socket
from runpack.api.runner_socket import text_frame
from tests.conftest import RUNNER_KEY, submit

SIZES = [0, 5, 125, 126, 1000, 65535, 65536, 200_000]


async def test_batched_frames_reach_an_aiohttp_client_intact(aiohttp_client: object) -> None:
    """Every payload length class of RFC 6455 (7-bit, 16-bit, 64-bit), in one write."""

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        assert request.transport is not None
        request.transport.write(b"".join(text_frame(b"x" * n) for n in SIZES))
        await ws.receive()  # until the client closes
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    client: TestClient = await aiohttp_client(app)  # type: ignore[operator]
    async with client.ws_connect("/ws", max_msg_size=0) as ws:
        for n in SIZES:
            msg = await ws.receive(timeout=10)
            assert msg.type == WSMsgType.TEXT
            assert msg.data == "x" * n


async def test_jobs_pushed_together_arrive_as_separate_frames(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jobs claimed together for free slots leave in batched writes, each its own frame."""
    batched: list[bytes] = []

    def counting(payload: bytes) -> bytes:
        batched.append(payload)
        return text_frame(payload)

    monkeypatch.setattr(runner_socket, "text_frame", counting)
    ids = [(await submit(client, name=f"batch-{i}"))["job_id"] for i in range(8)]
    async with client.ws_connect(
        "/api/runner/ws", headers={"Authorization": f"Bearer {RUNNER_KEY}"}
    ) as ws:
        await ws.send_str(
            orjson.dumps(
                {
                    "type": "hello",
                    "name": "batch",
                    "capabilities": ["hello_world"],
                    "concurrency": 8,
                }
            ).decode()
        )
        welcome = orjson.loads(await ws.receive_str(timeout=10))
        assert welcome["type"] == "welcome"
        await ws.send_str(orjson.dumps({"type": "ready", "slots": 8}).decode())
        pushed = []
        async with asyncio.timeout(10):
            while len(pushed) < 8:
                frame = orjson.loads(await ws.receive_str())
                if frame["type"] == "job":
                    pushed.append(frame["job_id"])
    assert sorted(pushed) == sorted(ids)
    assert sum(b'"type":"job"' in frame for frame in batched) >= 2


@pytest.mark.parametrize("together", [True, False], ids=["one-write", "a-write-each"])
async def test_frames_written_together_or_not_reach_the_runner_the_same(
    make_client: Any, monkeypatch: pytest.MonkeyPatch, together: bool
) -> None:
    """The switch (RUNPACK_WRITE_FRAMES_TOGETHER) changes how many writes the frames
    take, not which frames arrive or in what order: the same jobs, each once."""
    client = await make_client(write_frames_together=together)
    batched: list[bytes] = []

    def counting(payload: bytes) -> bytes:
        batched.append(payload)
        return text_frame(payload)

    monkeypatch.setattr(runner_socket, "text_frame", counting)
    ids = [(await submit(client, name=f"either-{i}"))["job_id"] for i in range(12)]
    async with client.ws_connect(
        "/api/runner/ws", headers={"Authorization": f"Bearer {RUNNER_KEY}"}
    ) as ws:
        hello = {"type": "hello", "name": "either", "capabilities": ["hello_world"]}
        await ws.send_json({**hello, "concurrency": 12})
        assert (await ws.receive_json(timeout=10))["type"] == "welcome"
        await ws.send_json({"type": "ready", "slots": 12})
        frames = []
        async with asyncio.timeout(10):
            while len(frames) < 12:
                frames.append(await ws.receive_json())
        # Their results, stored together, are acknowledged together.
        for frame in frames:
            output = {"type": "complete", "job_id": frame["job_id"], "output_data": {}}
            await ws.send_json(output)
        acks = []
        async with asyncio.timeout(10):
            while len(acks) < 12:
                acks.append(await ws.receive_json())
    assert [f["type"] for f in frames] == ["job"] * 12
    assert sorted(f["job_id"] for f in frames) == sorted(ids)
    assert [(a["type"], a["applied"]) for a in acks] == [("ack", True)] * 12
    assert sorted(a["job_id"] for a in acks) == sorted(ids)
    if together:
        assert len(batched) >= 2
    else:
        assert batched == []
