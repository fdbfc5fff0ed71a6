"""The runner's parts on their own: handlers, discovery, context, settings, state, runs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from runpack_runner import Cancelled, JobContext, JobHandler, job
from runpack_runner.backoff import Backoff
from runpack_runner.cli import main as runner_main
from runpack_runner.execution import JobRun, StopReason
from runpack_runner.handler import FunctionHandler
from runpack_runner.jobs.hello_world import HelloWorld
from runpack_runner.registry import Registry, UnknownJobTypes, as_handler, installed
from runpack_runner.runner import Runner
from runpack_runner.settings import RunnerSettings, describe
from runpack_runner.state import RunnerState, load_state, save_state
from runpack_runner.transports import (
    Acked,
    Assignment,
    Beat,
    Event,
    Hello,
    Result,
    Transport,
    Welcome,
)
from tests.procs import until

# --- discovery ----------------------------------------------------------------------------


def test_hello_world_is_installed_as_an_entry_point() -> None:
    assert installed()["hello_world"].value == "runpack_runner.jobs.hello_world:HelloWorld"
    registry = Registry.discover()
    assert "hello_world" in registry.job_types
    assert isinstance(registry.get("hello_world"), HelloWorld)


def test_discover_a_subset_and_refuse_unknown_types() -> None:
    assert Registry.discover(["hello_world"]).job_types == ["hello_world"]
    with pytest.raises(UnknownJobTypes, match="no_such_type"):
        Registry.discover(["hello_world", "no_such_type"])


def test_entry_point_objects_become_handlers() -> None:
    @job("greet")
    def greet(ctx: JobContext, name: str = "World") -> dict[str, Any]:
        return {"message": f"Hello, {name}!"}

    assert as_handler("greet", greet) is greet
    assert isinstance(as_handler("hello_world", HelloWorld), HelloWorld)
    with pytest.raises(TypeError):
        as_handler("bad", object())


# --- the decorator ----------------------------------------------------------------------


def test_job_decorator_binds_params_as_keywords() -> None:
    @job("greet")
    def greet(ctx: JobContext, name: str, times: int = 1) -> dict[str, Any]:
        ctx.log(f"greeting {name}")
        ctx.progress(1, 1)
        return {"message": " ".join([f"Hello, {name}!"] * times)}

    assert isinstance(greet, FunctionHandler)
    assert isinstance(greet, JobHandler)
    assert greet.job_type == "greet"
    assert getattr(greet, "__name__", None) == "greet"  # functools.wraps
    ctx = JobContext()
    assert greet.execute({"name": "Ada", "times": 2}, ctx) == {"message": "Hello, Ada! Hello, Ada!"}
    assert "greeting Ada" in ctx.console
    assert ctx.snapshot().progress_current == 1
    assert greet(JobContext(), name="Bob") == {"message": "Hello, Bob!"}
    with pytest.raises(ValueError, match="unexpected keyword"):
        greet.execute({"name": "Ada", "colour": "red"}, JobContext())
    with pytest.raises(ValueError, match="name"):
        greet.execute({}, JobContext())


def test_a_function_taking_any_params_still_refuses_one_named_like_its_context() -> None:
    @job("any")
    def anything(ctx: JobContext, **params: Any) -> dict[str, Any]:
        return dict(params)

    assert anything.execute({"a": 1}, JobContext()) == {"a": 1}
    with pytest.raises(ValueError, match="ctx"):
        anything.execute({"ctx": 1}, JobContext())


def test_job_decorator_needs_a_type() -> None:
    with pytest.raises(TypeError):
        job("")


# --- hello_world --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"processing_time": -1},
        {"processing_time": 301},
        {"processing_time": "x"},
        {"processing_time": True},
        {"processing_time": float("nan")},
        {},
        {"processing_time": 0, "name": 5},
        {"processing_time": 0, "test_exception": "yes"},
    ],
)
def test_hello_world_rejects_bad_params(params: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"processing_time|name|test_exception"):
        HelloWorld().execute(params, JobContext())


def test_hello_world_greets_at_once_with_no_processing_time() -> None:
    ctx = JobContext()
    assert HelloWorld().execute({"processing_time": 0}, ctx) == {
        "message": "Hello, World!",
        "processing_time": 0,
    }
    assert "Completed!" in ctx.console


def test_hello_world_reports_progress_each_second() -> None:
    ctx = JobContext()
    out = HelloWorld().execute({"name": "Ada", "processing_time": 1.2}, ctx)
    assert out == {"message": "Hello, Ada!", "processing_time": 1.2}
    snap = ctx.snapshot()
    assert (snap.progress_current, snap.progress_total) == (1, 1)
    assert "Progress: 1/1 s" in snap.console


def test_hello_world_with_the_originals_callback() -> None:
    beats: list[dict[str, Any]] = []
    out = HelloWorld().execute({"processing_time": 0}, lambda **kw: beats.append(kw))
    assert out["message"] == "Hello, World!"
    assert beats and "Starting hello_world job" in beats[0]["console_output"]


def test_hello_world_stops_early_when_cancelled() -> None:
    ctx = JobContext()
    threading.Timer(0.2, ctx.cancel, args=("test",)).start()
    started = time.monotonic()
    HelloWorld().execute({"processing_time": 30}, ctx)
    assert time.monotonic() - started < 5
    assert "Cancelled" in ctx.console


# --- the context ----------------------------------------------------------------------------


def test_context_progress_log_and_cancel() -> None:
    pokes: list[int] = []
    ctx = JobContext("j1", "t", notify=lambda: pokes.append(1))
    ctx.progress(3, 10)
    ctx.log("two\nlines")
    snap = ctx.snapshot()
    assert (snap.progress_current, snap.progress_total) == (3, 10)
    assert snap.console.count("\n") == 2 and "] two\n" in snap.console
    assert len(pokes) == 2
    assert not ctx.cancelled
    ctx.check_cancelled()
    assert ctx.wait(0.01) is False
    ctx.cancel("by test")
    assert ctx.cancelled and ctx.cancel_reason == "by test"
    assert ctx.wait(10) is True
    with pytest.raises(Cancelled, match="by test"):
        ctx.check_cancelled()
    with pytest.raises(Cancelled):
        ctx.progress(4)
    with pytest.raises(Cancelled):
        ctx(progress_current=5)
    ctx.log("logging still works")  # never raises


def test_context_wait_wakes_at_once_when_cancelled_from_another_thread() -> None:
    ctx = JobContext()
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(ctx.wait(30)))
    waiter.start()
    ctx.cancel("by test")  # before or during the wait: either way it returns True
    waiter.join(10)
    assert woke == [True]


def test_context_as_the_originals_heartbeat_callback() -> None:
    ctx = JobContext()
    ctx(progress_current=1, progress_total=4, console_output="whole text")
    first = ctx.snapshot()
    assert (first.progress_current, first.progress_total, first.console) == (1, 4, "whole text")
    ctx(console_output="replaced")
    second = ctx.snapshot()
    assert second.console == "replaced" and second.progress_current == 1
    assert second.epoch > first.epoch  # replaced, not appended


def test_context_trims_the_console_to_its_limit() -> None:
    ctx = JobContext(max_console_bytes=1000)
    for i in range(100):
        ctx.log(f"line {i:03d} " + "x" * 20)
    console = ctx.console
    assert len(console.encode()) <= 1000
    assert console.startswith("[… earlier")
    assert "line 099" in console


# --- settings and state ---------------------------------------------------------------------


def test_settings_from_environment_and_flags() -> None:
    env = {
        "RUNPACK_WORKER_URL": "http://example.test:9000",
        "RUNPACK_RUNNER_API_KEY": "secret-key",
        "RUNPACK_CONCURRENCY": "3",
        "RUNPACK_JOB_TYPES": "a, b,,c",
        "RUNPACK_JOB_TIMEOUT": "2.5",
    }
    settings = RunnerSettings.from_env(env, concurrency=5)
    assert settings.worker_url == "http://example.test:9000"
    assert settings.concurrency == 5  # a flag beats the variable
    assert settings.job_types == ("a", "b", "c")
    assert settings.job_timeout == 2.5
    assert "secret-key" not in repr(settings)
    with pytest.raises(ValueError, match="RUNPACK_CONCURRENCY"):
        RunnerSettings.from_env({"RUNPACK_CONCURRENCY": "many"})
    with pytest.raises(ValueError, match="concurrency"):
        RunnerSettings.from_env({}, concurrency=0)
    with pytest.raises(ValueError, match="transport"):
        RunnerSettings.from_env({"RUNPACK_TRANSPORT": "carrier-pigeon"})
    specs = {s["name"]: s for s in describe()}
    assert specs["worker_url"]["env"] == "RUNPACK_WORKER_URL" and specs["worker_url"]["flag"] == (
        "--url"
    )
    assert specs["runner_api_key"]["secret"]


def test_state_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / ".runpack_runner.json"
    assert load_state(path) == RunnerState()
    save_state(path, RunnerState("abc", "host-1"))
    assert load_state(path) == RunnerState("abc", "host-1")
    path.write_text("{not json")
    assert load_state(path) == RunnerState()


def test_backoff_is_capped_full_jitter() -> None:
    top = Backoff(0.5, 30.0, rng=lambda: 1.0)
    assert [top.next() for _ in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    top.reset()
    assert top.next() == 0.5
    assert Backoff(0.5, 30.0, rng=lambda: 0.0).next() == 0.0


# --- one run ----------------------------------------------------------------------------------


def _run(handler: JobHandler, params: dict[str, Any] | None = None, **kw: Any) -> JobRun:
    assignment = Assignment("job-1", handler.job_type or "t", params or {})
    return JobRun(assignment, handler, **kw)


@job("t")
def returns_params(ctx: JobContext, **params: Any) -> dict[str, Any]:
    ctx.log("working")
    return dict(params)


@job("t")
def blocks(ctx: JobContext, seconds: float = 30, obey: bool = True) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if obey:
            ctx.progress(0, 1)  # raises Cancelled once cancelled
        time.sleep(0.01)
    return {}


async def test_run_reports_the_result_and_the_console() -> None:
    run = _run(returns_params, {"a": 1, "console_output": "from the handler"})
    run.start()
    result = await run.outcome(None)
    assert result is not None and result.kind == "complete"
    assert result.output_data == {"a": 1}
    assert result.console_output == "from the handler"  # the original's convention


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"bad": 1}, "Invalid parameters: "),
        ({"processing_time": 0, "test_exception": True}, "hello_world failed: Test exception"),
    ],
)
async def test_run_reports_errors(params: dict[str, Any], message: str) -> None:
    handler: JobHandler = HelloWorld() if "processing_time" in params else blocks
    run = _run(handler, params)
    run.start()
    result = await run.outcome(None)
    assert result is not None and result.kind == "error"
    assert result.error_message is not None and result.error_message.startswith(message)


async def test_run_refuses_results_that_are_no_json_object_or_too_large() -> None:
    run = _run(returns_params, {"big": "x" * 2000}, limits={"max_output_bytes": 1000})
    run.start()
    result = await run.outcome(None)
    assert result is not None and result.error_message == (
        "Output JSON exceeds size limit of 1000 bytes"
    )

    @job("t")
    def not_a_dict(ctx: JobContext) -> Any:
        return [1, 2]

    run = _run(not_a_dict)
    run.start()
    result = await run.outcome(None)
    assert result is not None and "not a dict" in (result.error_message or "")


async def test_run_times_out() -> None:
    run = _run(blocks)
    run.start()
    result = await run.outcome(0.2)
    assert result is not None and result.error_message == "Job timed out after 0.2 s"
    assert run.stop_reason == StopReason.TIMEOUT
    assert await run.wait_stopped(5)  # the handler saw the cancelled flag and stopped


async def test_a_cancelled_run_reports_nothing_and_stops() -> None:
    run = _run(blocks)
    run.start()
    asyncio.get_running_loop().call_later(0.1, run.stop, StopReason.CANCELLED, "test")
    assert await run.outcome(None) is None
    assert await run.wait_stopped(5)


async def test_a_handler_that_ignores_cancel_is_left_behind() -> None:
    run = _run(blocks, {"seconds": 1.0, "obey": False})
    run.start()
    run.stop(StopReason.RELEASED, "test")
    assert await run.outcome(None) is None
    assert not await run.wait_stopped(0.05)
    assert await run.wait_stopped(5)


# --- the runner over a scripted transport ------------------------------------------------------


class ScriptedTransport:
    """A WebSocket-like (serial) transport: the test feeds its events, it records what
    the runner sends, in order."""

    name = "websocket"
    mode = "push"
    min_heartbeat_gap = 0.25
    serial = True

    def __init__(self, free_on_result: bool = False) -> None:
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.sent: list[tuple[str, Any]] = []
        self.free_on_result = free_on_result

    async def start(self, hello: Hello) -> Welcome:
        return Welcome(runner_id="scripted", free_on_result=self.free_on_result)

    async def receive(self) -> Event:
        return await self.events.get()

    async def grant(self, slots: int) -> None:
        if slots > 0:
            self.sent.append(("ready", slots))

    def stop_taking(self) -> None:
        pass

    async def heartbeat(self, beat: Beat) -> None:
        self.sent.append(("heartbeat", beat.job_id))

    async def send_result(self, result: Result) -> None:
        self.sent.append((result.kind, result.job_id))

    async def release(self, job_id: str, reason: str) -> None:
        self.sent.append(("release", job_id))

    async def close(self) -> None:
        pass


@contextlib.asynccontextmanager
async def scripted(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    handler: JobHandler,
    *,
    free_on_result: bool = False,
) -> AsyncIterator[tuple[Runner, ScriptedTransport]]:
    """A runner of four slots on a scripted transport, running until the block ends;
    it must then stop cleanly. ``free_on_result``: the server's welcome says so (a
    server without the field keeps a job in its slot until the result's ack)."""
    transport = ScriptedTransport(free_on_result)

    async def connect(*args: Any, **kwargs: Any) -> Transport:
        return transport

    monkeypatch.setattr("runpack_runner.runner.open_transport", connect)
    settings = RunnerSettings(worker_url="http://127.0.0.1:9", runner_api_key="k", concurrency=4)
    runner = Runner(
        settings,
        Registry({"t": handler}),
        state_path=tmp_path / "state.json",
        state=RunnerState(),
        name="scripted",
    )
    task = asyncio.create_task(runner.run(handle_signals=False))
    try:
        yield runner, transport
    finally:
        runner.request_stop()
        assert await asyncio.wait_for(task, 10) == 0


@job("t", in_process=True)
def quiet(ctx: JobContext, **params: Any) -> dict[str, Any]:
    return dict(params)


async def test_slots_freed_together_are_granted_back_in_one_ready_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with scripted(tmp_path, monkeypatch, quiet) as (runner, transport):
        await until(lambda: transport.sent == [("ready", 4)], "the first grant")
        ids = [f"job-{n}" for n in range(4)]
        for job_id in ids:
            transport.events.put_nowait(Assignment(job_id, "t", {"n": job_id}))
        await until(lambda: len(transport.sent) == 5, "the four results")
        assert sorted(transport.sent[1:]) == [("complete", job_id) for job_id in ids]
        assert runner.busy == set(ids)  # held until acknowledged (the server wants that)

        for job_id in ids:  # four acks read in one go: one frame grants the four slots
            transport.events.put_nowait(Acked(job_id, "complete", True))
        await until(lambda: len(transport.sent) == 6, "the slots granted back")
        assert transport.sent[5] == ("ready", 4)
        assert not runner.busy and not runner.outbox and not runner.runs


async def test_a_slot_is_granted_back_with_its_result_when_the_server_frees_it_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with scripted(tmp_path, monkeypatch, quiet, free_on_result=True) as (runner, transport):
        await until(lambda: transport.sent == [("ready", 4)], "the first grant")
        ids = [f"job-{n}" for n in range(4)]
        for job_id in ids:
            transport.events.put_nowait(Assignment(job_id, "t", {"n": job_id}))

        def granted() -> int:
            return sum(n for kind, n in transport.sent[1:] if kind == "ready")

        await until(lambda: granted() == 4, "the four slots granted back, with no ack")
        assert sorted(item for item in transport.sent if item[0] == "complete") == [
            ("complete", job_id) for job_id in ids
        ]
        completes = 0  # each grant follows the results whose slots it gives back
        for kind, item in transport.sent[1:]:
            completes += kind == "complete"
            if kind == "ready":
                assert item <= completes, transport.sent
                completes -= item
        assert not runner.busy and set(runner.outbox) == set(ids)  # kept until acknowledged
        for job_id in ids:
            transport.events.put_nowait(Acked(job_id, "complete", True))
        await until(lambda: not runner.outbox, "the results acknowledged")
        assert granted() == 4  # an ack frees no slot twice


async def test_a_stopping_runner_exits_once_its_results_are_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with scripted(tmp_path, monkeypatch, quiet, free_on_result=True) as (runner, transport):
        transport.events.put_nowait(Assignment("job-last", "t", {}))
        await until(lambda: ("complete", "job-last") in transport.sent, "the result")
        runner.request_stop()
        assert not runner.busy and not runner._exit.is_set()  # the result is not safe yet
        transport.events.put_nowait(Acked("job-last", "complete", True))
        await until(runner._exit.is_set, "the exit once acknowledged")


@job("t")
def reports_progress(ctx: JobContext) -> dict[str, Any]:
    ctx.progress(1, 1)
    return {"done": True}


async def test_a_job_that_reported_progress_beats_before_its_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with scripted(tmp_path, monkeypatch, reports_progress) as (runner, transport):
        transport.events.put_nowait(Assignment("job-p", "t", {}))
        await until(lambda: ("complete", "job-p") in transport.sent, "the result")
        sent = transport.sent
        assert ("heartbeat", "job-p") in sent
        assert sent.index(("heartbeat", "job-p")) < sent.index(("complete", "job-p"))
        transport.events.put_nowait(Acked("job-p", "complete", True))
        await until(lambda: not runner.busy, "the slot freed")


async def test_quiet_jobs_that_outlast_the_first_beat_delay_get_their_heartbeats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first beats of several jobs come from one shared timer (FirstBeats)."""
    release = threading.Event()

    @job("t", in_process=True)
    def waits(ctx: JobContext) -> dict[str, Any]:
        release.wait(30)
        return {}

    ids = ["slow-1", "slow-2", "slow-3"]
    async with scripted(tmp_path, monkeypatch, waits) as (runner, transport):
        try:  # the handlers are let go before the runner is asked to stop
            for job_id in ids:
                transport.events.put_nowait(Assignment(job_id, "t", {}))
            beats = {("heartbeat", job_id) for job_id in ids}
            await until(lambda: beats <= set(transport.sent), "a beat of each job")
            assert not any(kind == "complete" for kind, _ in transport.sent)
            release.set()
            await until(lambda: len(runner.outbox) == 3, "the results")
            for job_id in ids:
                transport.events.put_nowait(Acked(job_id, "complete", True))
            await until(lambda: not runner.busy, "the slots freed")
        finally:
            release.set()


def test_the_runner_needs_no_server_modules() -> None:
    """The runner shares only the wire protocol, settings parsing, the choice of
    event loop and the address rule with the server."""
    code = (
        "import sys, runpack_runner.cli, runpack_runner.runner\n"
        "shared = ('runpack.protocol', 'runpack.envvars', 'runpack.eventloop',\n"
        "          'runpack.netrules')\n"
        "server = [m for m in sys.modules if m.startswith(('aiosqlite', 'asyncpg'))\n"
        "          or (m.startswith('runpack.') and m not in shared\n"
        "              and not m.startswith('runpack.protocol.'))]\n"
        "assert not server, server\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


# --- the command line -----------------------------------------------------------------------


def test_runpack_runner_subcommand_lists_job_types(capsys: pytest.CaptureFixture[str]) -> None:
    from runpack.cli import main as runpack_main

    assert runpack_main(["runner", "--list-job-types"]) == 0
    assert "hello_world" in capsys.readouterr().out
    assert runner_main(["--settings-markdown"]) == 0
    table = capsys.readouterr().out
    assert "| `RUNPACK_CONCURRENCY` | `--concurrency` | `1` |" in table
    assert "| `RUNPACK_RUNNER_API_KEY` | — | required |" in table


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ([], {}, "RUNPACK_RUNNER_API_KEY is not set"),
        (["--job-types", "hello_world,nope"], {"RUNPACK_RUNNER_API_KEY": "k"}, "nope"),
        (["--concurrency", "0"], {"RUNPACK_RUNNER_API_KEY": "k"}, "concurrency"),
        ([], {"RUNPACK_RUNNER_API_KEY": "k", "RUNPACK_WORKER_URL": "ftp://x"}, "http://"),
    ],
)
def test_runner_refuses_bad_settings(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RUNPACK_")}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "runpack-runner"), *args],
        env={**clean, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert message in proc.stdout + proc.stderr
