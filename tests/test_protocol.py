"""The runner channel's messages (runpack.protocol): every frame kind, both ways,
comes back equal from its encoding, read by the side that receives it."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from runpack import protocol
from runpack.protocol import (
    MAX_REASON_CHARS,
    Acked,
    Assignment,
    Cancel,
    Complete,
    ErrorReply,
    Failure,
    Heartbeat,
    Hello,
    ProtocolError,
    Ready,
    Release,
    Welcome,
)

FROM_RUNNER: list[protocol.RunnerMessage] = [
    Hello(None, "r1", ["a", "b"], 4, "1.0", []),
    Hello("run-1", "r1", ["a"], 16, "1.0", ["j1", "j2"], runner_secret="s3cret"),
    Ready(0),
    Ready(7),
    Heartbeat("j1"),
    Heartbeat("j1", 3, 10, console_output="all of it\n"),
    Heartbeat("j1", -1, 2**62 - 1, console_append="more\n"),
    Complete("j1", {"ok": True, "nested": {"x": [1, 2]}}),
    Complete("j1", {}, console_output="done\n"),
    Failure("j1", "boom"),
    Failure("j1", "disk full", console_output="tail", retryable=True),
    Release("j1"),
    Release("j1", "shutting down"),
]

FROM_SERVER: list[protocol.ServerMessage] = [
    Welcome("run-1"),
    Welcome(
        "run-1",
        heartbeat_interval=10.0,
        resumed=["j1"],
        dropped=["j2"],
        limits={"max_output_bytes": 512_000},
        free_on_result=True,
        runner_secret="s3cret",
        server_version="0.9.0",
    ),
    Assignment("j1", "a", {"n": 1}),
    Assignment("j1", "a", {"n": 1}, attempt=3, timeout=1.5),
    Cancel("j1"),
    Cancel("j1", "cancelled by an administrator"),
    Acked("j1", "complete", True),
    Acked("j1", "error", False, reason="job is completed"),
    ErrorReply("Invalid JSON"),
    ErrorReply("Job not held by this runner", ref="complete", job_id="j1"),
    ErrorReply("API key revoked", "this runner key no longer works", code=protocol.KEY_REVOKED),
]


def _wire(message: Any) -> dict[str, Any]:
    """The message as the other side reads it: encoded, written, parsed."""
    return orjson.loads(orjson.dumps(message.encode()))


@pytest.mark.parametrize("message", FROM_RUNNER, ids=repr)
def test_every_runner_frame_round_trips(message: protocol.RunnerMessage) -> None:
    frame = _wire(message)
    assert frame["type"] == message.TYPE
    assert protocol.decode_runner_frame(frame) == message


@pytest.mark.parametrize("message", FROM_SERVER, ids=repr)
def test_every_server_frame_round_trips(message: protocol.ServerMessage) -> None:
    frame = _wire(message)
    assert frame["type"] == message.TYPE
    assert protocol.decode_server_frame(frame) == message


def test_the_examples_cover_every_frame_kind() -> None:
    assert {m.TYPE for m in FROM_RUNNER} == set(protocol.RUNNER_TO_SERVER)
    assert {m.TYPE for m in FROM_SERVER} == set(protocol.SERVER_TO_RUNNER)
    assert set(protocol.RUNNER_TO_SERVER) == {
        "hello",
        "ready",
        "heartbeat",
        "complete",
        "error",
        "release",
    }
    assert set(protocol.SERVER_TO_RUNNER) == {"welcome", "job", "cancel", "ack", "error"}


@pytest.mark.parametrize("message", [m for m in FROM_RUNNER if hasattr(m, "body")], ids=repr)
def test_a_report_reads_the_same_from_an_http_body_and_a_frame(message: Any) -> None:
    """The body of ``POST /api/runner/jobs/{id}/<kind>`` is the frame less type and job id."""
    body = orjson.loads(orjson.dumps(message.body()))
    assert "type" not in body and "job_id" not in body
    assert type(message).read(message.job_id, body) == message


def test_an_assignment_is_the_long_polls_job_too() -> None:
    job = Assignment("j1", "a", {"n": 1}, attempt=2, timeout=3.0)
    assert Assignment.read(orjson.loads(orjson.dumps(job.body()))) == job


@pytest.mark.parametrize(
    ("frame", "error", "details"),
    [
        ({"type": "nope"}, "Unknown message type", None),
        ({"type": "complete", "output_data": {}}, "Invalid or missing field: job_id", None),
        ({"type": "ready"}, "Invalid or missing field: slots", "expected int"),
        ({"type": "ready", "slots": True}, "Invalid or missing field: slots", "expected int"),
        ({"type": "ready", "slots": -1}, "Invalid field: slots", "must be 0 or more"),
        (
            {"type": "heartbeat", "job_id": "j", "progress_current": 2**63},
            "Invalid field: progress_current",
            None,
        ),
        (
            {"type": "error", "job_id": "j", "error_message": "x", "retryable": "yes"},
            "Invalid or missing field: retryable",
            "expected bool",
        ),
        (
            {"type": "hello", "name": "", "capabilities": [], "concurrency": 1},
            "Invalid registration data",
            "name: a non-empty string",
        ),
        (
            {"type": "hello", "name": "r", "capabilities": [], "concurrency": 1001},
            "Invalid field: concurrency",
            "from 1 to 1000",
        ),
    ],
)
def test_a_bad_runner_frame_says_what_is_wrong(
    frame: dict[str, Any], error: str, details: str | None
) -> None:
    with pytest.raises(ProtocolError) as caught:
        protocol.decode_runner_frame(frame)
    assert caught.value.error == error
    if details is not None:
        assert caught.value.details == details


def test_a_release_reason_is_cut_and_defaulted() -> None:
    assert Release.read("j", {}).reason == protocol.RELEASED_BY_RUNNER
    long = Release.read("j", {"reason": "x" * (MAX_REASON_CHARS + 50)})
    assert long.reason == "x" * MAX_REASON_CHARS


def test_the_runner_reads_a_server_frame_leniently() -> None:
    """Fields of the wrong type take their defaults (servers older or newer than it)."""
    welcome = Welcome.decode({"type": "welcome", "runner_id": "r", "resumed": [1, "j"]})
    assert welcome == Welcome("r", resumed=["j"])
    job = Assignment.decode({"type": "job", "job_id": "j", "input_params": [], "attempt": "2"})
    assert job == Assignment("j", "", {}, attempt=1, timeout=None)
    with pytest.raises(ProtocolError):
        Welcome.decode({"type": "welcome"})


def test_decoding_a_report_is_cheap() -> None:
    """The server reads a frame per job started and ended, thousands per second: the
    typed read adds a few microseconds to orjson's parse (about 1 µs on the 2-core
    machine of docs/performance.md)."""
    raw = orjson.dumps(Complete("0" * 36, {"ok": True, "n": 1}, "console\n").encode())
    n = 20_000
    start = time.perf_counter()
    for _ in range(n):
        orjson.loads(raw)
    parse = (time.perf_counter() - start) / n
    start = time.perf_counter()
    for _ in range(n):
        protocol.decode_report(orjson.loads(raw))
    typed = (time.perf_counter() - start) / n
    assert typed - parse < 20e-6, (parse, typed)  # generous: the machine is shared
