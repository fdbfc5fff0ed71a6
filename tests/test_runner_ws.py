"""The runner channel (``GET /api/runner/ws``) of a real ``runpack serve`` process:
bad frames get an ``error`` frame and the socket lives on; a result sent twice is
applied once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import orjson
import pytest

from tests.procs import KEYS, NO_LIMITS, Proc, running_server

RUNNER = {"Authorization": f"Bearer {KEYS['RUNPACK_RUNNER_API_KEY']}"}
SUBMIT = {"Authorization": f"Bearer {KEYS['RUNPACK_SUBMIT_API_KEY']}"}
ADMIN = {"Authorization": f"Bearer {KEYS['RUNPACK_ADMIN_API_KEY']}"}
UNKNOWN = "00000000-0000-4000-8000-000000000000"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    env = {
        **KEYS,
        **NO_LIMITS,
    }
    with running_server(tmp_path_factory.mktemp("runner-ws"), env) as proc:
        yield proc


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


class Channel:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def send(self, frame: Any) -> None:
        await self.ws.send_str(frame if isinstance(frame, str) else orjson.dumps(frame).decode())

    async def receive(self) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        frame: dict[str, Any] = orjson.loads(msg.data)
        return frame


async def connect(
    http: aiohttp.ClientSession, server: Proc, job_type: str, concurrency: int = 2
) -> Channel:
    ws = await http.ws_connect(server.url + "/api/runner/ws", headers=RUNNER)
    channel = Channel(ws)
    hello = {
        "type": "hello",
        "name": "ws-test",
        "capabilities": [job_type],
        "concurrency": concurrency,
    }
    await channel.send(hello)
    welcome = await channel.receive()
    assert welcome["type"] == "welcome" and welcome["free_on_result"] is True, welcome
    return channel


async def submit(http: aiohttp.ClientSession, server: Proc, job_type: str, **params: Any) -> str:
    body = {"job_type": job_type, "input_params": params}
    async with http.post(server.url + "/api/jobs/submit", json=body, headers=SUBMIT) as resp:
        assert resp.status == 201, await resp.text()
        return str((await resp.json())["job_id"])


async def take(channel: Channel, *job_ids: str) -> str:
    """Grant a slot and receive the job it brings: one of ``job_ids``."""
    await channel.send({"type": "ready", "slots": 1})
    frame = await channel.receive()
    assert frame["type"] == "job" and frame["job_id"] in job_ids, (frame, job_ids)
    return str(frame["job_id"])


BAD_FRAMES = [
    pytest.param("{not json", "Invalid JSON", None, id="not-json"),
    pytest.param("[1, 2]", "A frame must be a JSON object", None, id="not-an-object"),
    pytest.param({"type": "dance"}, "Unknown message type", "dance", id="unknown-type"),
    pytest.param({"slots": 1}, "Unknown message type", None, id="no-type"),
    pytest.param(
        {"type": "ready"}, "Invalid or missing field: slots", "ready", id="ready-no-slots"
    ),
    pytest.param({"type": "ready", "slots": -1}, "Invalid field: slots", "ready", id="ready-neg"),
    pytest.param(
        {"type": "complete", "output_data": {}},
        "Invalid or missing field: job_id",
        "complete",
        id="complete-no-job",
    ),
    pytest.param(
        {"type": "complete", "job_id": UNKNOWN, "output_data": []},
        "Invalid or missing field: output_data",
        "complete",
        id="complete-output-not-object",
    ),
    pytest.param(
        {"type": "heartbeat", "job_id": UNKNOWN},
        "Job not held by this runner",
        "heartbeat",
        id="heartbeat-not-held",
    ),
    pytest.param(
        {"type": "heartbeat", "job_id": UNKNOWN, "progress_current": "x"},
        "Invalid or missing field: progress_current",
        "heartbeat",
        id="heartbeat-bad-progress",
    ),
]


async def test_bad_frames_get_an_error_and_the_socket_lives_on(
    server: Proc, http: aiohttp.ClientSession
) -> None:
    channel = await connect(http, server, "ws_bad_frames")
    for param in BAD_FRAMES:
        frame, error, ref = param.values
        await channel.send(frame)
        reply = await channel.receive()
        assert reply["type"] == "error", (param.id, reply)
        assert reply["error"] == error, (param.id, reply)
        assert reply.get("ref") == ref, (param.id, reply)
    await channel.ws.send_bytes(b"\x00\x01")
    reply = await channel.receive()
    assert (reply["type"], reply["error"]) == ("error", "Binary frames are not accepted")
    # After all that, the same socket still runs a job end to end.
    job_id = await submit(http, server, "ws_bad_frames", n=1)
    await take(channel, job_id)
    await channel.send({"type": "complete", "job_id": job_id, "output_data": {"ok": True}})
    ack = await channel.receive()
    assert (ack["type"], ack["job_id"], ack["applied"]) == ("ack", job_id, True)
    await channel.ws.close()


async def test_a_complete_sent_twice_is_applied_once(
    server: Proc, http: aiohttp.ClientSession
) -> None:
    channel = await connect(http, server, "ws_twice")
    job_id = await submit(http, server, "ws_twice", n=2)
    await take(channel, job_id)
    first = {"type": "complete", "job_id": job_id, "output_data": {"run": 1}}
    second = {"type": "complete", "job_id": job_id, "output_data": {"run": 2}}
    await channel.send(first)
    await channel.send(second)
    acks = [await channel.receive(), await channel.receive()]
    assert [(a["type"], a["job_id"], a["applied"]) for a in acks] == [
        ("ack", job_id, True),
        ("ack", job_id, False),
    ]
    assert acks[1]["reason"] == "job is completed"
    async with http.get(f"{server.url}/api/admin/jobs/{job_id}", headers=ADMIN) as resp:
        detail = await resp.json()
    assert (detail["status"], detail["output_data"], detail["attempts"]) == (
        "completed",
        {"run": 1},
        1,
    )
    await channel.ws.close()


async def test_a_slot_is_free_once_its_result_is_sent(
    server: Proc, http: aiohttp.ClientSession
) -> None:
    """A runner of one slot sends a result and, at once, ``ready``: the next job
    comes without waiting for the result to be stored and acknowledged."""
    channel = await connect(http, server, "ws_free_on_result", concurrency=1)
    # Two jobs submitted in the same millisecond are taken in the order of their ids.
    queued = {await submit(http, server, "ws_free_on_result", n=n) for n in (1, 2)}
    first = await take(channel, *queued)
    (second,) = queued - {first}
    await channel.send({"type": "complete", "job_id": first, "output_data": {"n": 1}})
    await channel.send({"type": "ready", "slots": 1})
    frames = [await channel.receive(), await channel.receive()]
    assert sorted((f["type"], f["job_id"]) for f in frames) == [("ack", first), ("job", second)]
    # The slot is one: a grant beyond it while the second job runs is not kept.
    await channel.send({"type": "ready", "slots": 1})
    third = await submit(http, server, "ws_free_on_result", n=3)
    await channel.send({"type": "complete", "job_id": second, "output_data": {"n": 2}})
    ack = await channel.receive()
    assert (ack["type"], ack["job_id"]) == ("ack", second)
    await take(channel, third)
    await channel.ws.close()
