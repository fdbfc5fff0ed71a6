"""``runpack.client``: AsyncClient and Client against a real server and a real runner.

The runner runs ``hello_world`` (progress every second). Waits follow the job's
event stream; each is bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from runpack.client import (
    AsyncClient,
    Client,
    Event,
    JobFailed,
    RunpackClientError,
    RunpackConnectionError,
)
from runpack.client.sse import SSEParser
from tests.conftest import as_runner, claim, register, submit
from tests.live import ADMIN_KEY, SUBMIT_KEY, Live, live_fixture, unique  # noqa: F401
from tests.procs import clean_env, free_port


def hello(name: str, seconds: float = 0) -> dict[str, Any]:
    return {"name": name, "processing_time": seconds}


def seqs(events: list[Event]) -> list[int]:
    return [int((e.id or "").partition("-")[2]) for e in events]


# --- AsyncClient ------------------------------------------------------------------------------


async def test_submit_check_watch_wait_status(live: Live) -> None:
    name = unique("Ada")
    async with AsyncClient(live.url, SUBMIT_KEY) as runpack:
        missing = await runpack.check("hello_world", hello(name, 2))
        assert not missing.exists and missing.job_id is None
        job = await runpack.submit("hello_world", hello(name, 2))
        assert job.created and job.status == "pending" and job.result is None
        again = await runpack.submit("hello_world", {"processing_time": 2, "name": name})
        assert (again.job_id, again.created) == (job.job_id, False)
        found = await runpack.check("hello_world", hello(name, 2))
        assert found.exists and found.job_id == job.job_id

        events = [event async for event in runpack.watch(job.job_id)]
        assert events[0].type == "snapshot"
        assert events[-1].is_final and events[-1].status == "completed"
        assert all(not e.is_final for e in events[:-1])
        assert seqs(events) == sorted(set(seqs(events)))
        progress = [e.data["current"] for e in events if e.type == "progress"]
        assert progress == sorted(progress) and progress[-1] == 2
        assert events[-1].output_data == {"message": f"Hello, {name}!", "processing_time": 2}

        result = await runpack.wait(job.job_id, timeout=10)
        assert result == {"message": f"Hello, {name}!", "processing_time": 2}
        status = await runpack.status(job.job_id)
        assert status.status == "completed" and status.job_type == "hello_world"
        assert status.progress is not None and status.progress.current == 2
        assert status.result is not None and status.result["output_data"] == result
        cached = await runpack.submit("hello_world", hello(name, 2))
        assert not cached.created and cached.output_data == result
        details = await runpack.details(job.job_id)
        assert "Completed!" in details["console_output"]


async def test_wait_follows_a_job_to_its_result(live: Live) -> None:
    async with AsyncClient(live.url, SUBMIT_KEY) as runpack:
        job = await runpack.submit("hello_world", hello(unique(), 1))
        assert (await runpack.wait(job.job_id, timeout=20))["processing_time"] == 1


async def test_a_failed_job_raises_job_failed(live: Live) -> None:
    async with AsyncClient(live.url, SUBMIT_KEY) as runpack:
        job = await runpack.submit("hello_world", hello(unique(), 301))
        with pytest.raises(JobFailed) as failed:
            await runpack.wait(job.job_id, timeout=20)
    assert failed.value.job_id == job.job_id
    assert failed.value.status == "failed"
    assert "must not exceed 300 seconds" in failed.value.error


async def test_wait_times_out_and_cancel_ends_the_job(live: Live) -> None:
    async with AsyncClient(live.url, SUBMIT_KEY, ADMIN_KEY) as runpack:
        job = await runpack.submit("hello_world", hello(unique(), 120))
        with pytest.raises(TimeoutError):
            await runpack.wait(job.job_id, timeout=0.5)
        cancelled = await runpack.cancel(job.job_id)
        assert (cancelled.job_id, cancelled.status) == (job.job_id, "cancelled")
        with pytest.raises(JobFailed) as failed:
            await runpack.wait(job.job_id, timeout=10)
        assert failed.value.status == "cancelled"
        assert "Cancelled by an administrator" in failed.value.error
        assert (await runpack.status(job.job_id)).status == "cancelled"


async def test_the_submit_key_cannot_cancel_a_running_job(live: Live) -> None:
    async with AsyncClient(live.url, SUBMIT_KEY, ADMIN_KEY) as admin:
        job = await admin.submit("hello_world", hello(unique(), 120))
        async for event in admin.watch(job.job_id):
            if event.type == "progress":
                break  # running now
        async with AsyncClient(live.url, SUBMIT_KEY) as runpack:
            with pytest.raises(RunpackClientError) as refused:
                await runpack.cancel(job.job_id)
        assert refused.value.status == 409
        assert refused.value.details is not None and "admin key" in refused.value.details
        await admin.cancel(job.job_id)


async def test_server_errors_carry_status_error_and_details(live: Live) -> None:
    async with AsyncClient(live.url, "wrong-key") as runpack:
        with pytest.raises(RunpackClientError) as wrong:
            await runpack.submit("hello_world", hello(unique()))
    assert (wrong.value.status, wrong.value.error) == (401, "Invalid API key")
    async with AsyncClient(live.url, SUBMIT_KEY) as runpack:
        with pytest.raises(RunpackClientError) as no_admin:
            await runpack.jobs()
        assert (no_admin.value.status, no_admin.value.error) == (
            401,
            "Missing Authorization header",
        )
        with pytest.raises(RunpackClientError) as bad:
            await runpack.submit("", {})
        assert bad.value.status == 400
        with pytest.raises(RunpackClientError) as unknown:
            await runpack.wait("00000000-0000-4000-8000-000000000000", timeout=5)
        assert (unknown.value.status, unknown.value.error) == (404, "Job not found")


async def test_jobs_and_runners(live: Live) -> None:
    async with AsyncClient(live.url, admin_key=ADMIN_KEY) as runpack:
        job = await runpack.submit("hello_world", hello(unique()))  # the admin key submits
        await runpack.wait(job.job_id, timeout=20)
        done = await runpack.jobs(status="completed", job_type="hello", limit=1000)
        assert job.job_id in {j.job_id for j in done}
        assert all(j.status == "completed" for j in done)
        [runner] = [r for r in await runpack.runners() if r.connected]
        assert "hello_world" in runner.capabilities
        assert runner.is_active and runner.live["concurrency"] == 4


async def test_watch_fails_at_once_without_a_server() -> None:
    async with AsyncClient(f"http://127.0.0.1:{free_port()}") as runpack:
        with pytest.raises(RunpackConnectionError):
            async for _ in runpack.watch("00000000-0000-4000-8000-000000000000"):
                pass
        with pytest.raises(RunpackConnectionError):
            await runpack.status("00000000-0000-4000-8000-000000000000")


async def test_watch_reconnects_and_resumes_after_being_dropped(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An in-process server that drops every watcher that falls one event behind:
    the client reconnects with Last-Event-ID and still sees every event once."""
    from runpack import watch
    from runpack.api import events as events_api

    monkeypatch.setattr(watch, "WATCH_QUEUE", 1)
    streams = 0
    real_stream_job = events_api._stream_job

    async def counted(request: Any, job_id: str) -> Any:
        nonlocal streams
        streams += 1
        return await real_stream_job(request, job_id)

    monkeypatch.setattr(events_api, "_stream_job", counted)
    job_id = (await submit(client))["job_id"]
    runner = await register(client)
    url = str(client.make_url("/")).rstrip("/")
    async with AsyncClient(url, reconnect_timeout=10) as runpack:
        stream = runpack.watch(job_id)
        first = await anext(stream)
        assert first.type == "snapshot"
        await claim(client, runner, job_id)
        console = ""
        for i in range(1, 21):
            console += f"line {i}\n"
            resp = await client.post(
                f"/api/runner/jobs/{job_id}/heartbeat",
                json={"progress_current": i, "progress_total": 20, "console_output": console},
                headers=as_runner(runner),
            )
            assert resp.status == 200
        resp = await client.post(
            f"/api/runner/jobs/{job_id}/complete",
            json={"output_data": {"n": 20}},
            headers=as_runner(runner),
        )
        assert resp.status == 200
        async with asyncio.timeout(20):
            events = [first, *[event async for event in stream]]
    assert streams > 1  # it was dropped, and came back
    assert seqs(events) == sorted(set(seqs(events)))
    assert [e.data["current"] for e in events if e.type == "progress"] == list(range(1, 21))
    statuses = [e.status for e in events if e.type == "status"]
    assert statuses == ["claimed", "in_progress", "completed"]
    assert events[-1].output_data == {"n": 20}


async def test_resume_from_an_earlier_watch(live: Live) -> None:
    async with AsyncClient(live.url, SUBMIT_KEY) as runpack:
        job = await runpack.submit("hello_world", hello(unique(), 2))
        seen = []
        async for event in runpack.watch(job.job_id):
            seen.append(event)
            if event.type == "progress":
                break
        rest = [e async for e in runpack.watch(job.job_id, last_event_id=seen[-1].id)]
    assert rest[0].type != "snapshot"
    assert seqs(seen + rest) == sorted(set(seqs(seen + rest)))
    assert rest[-1].status == "completed"


async def test_jobs_pages_with_the_keyset_cursor(live: Live) -> None:
    """``jobs`` answers a list whose ``next`` is the ``after`` of the following page;
    the pages hold every job once, in the order of one long page, and the last has
    no ``next``. The old call (no ``after``) still answers the list."""
    kind = unique("paging")  # no runner runs it: the jobs stay pending
    async with AsyncClient(live.url, admin_key=ADMIN_KEY) as runpack:
        submitted = {(await runpack.submit(kind, {"n": n})).job_id for n in range(5)}
        everything = await runpack.jobs(job_type=kind)
        assert {j.job_id for j in everything} == submitted and everything.next is None
        pages = [await runpack.jobs(job_type=kind, limit=2)]
        while pages[-1].next is not None and len(pages) < 5:
            pages.append(await runpack.jobs(job_type=kind, limit=2, after=pages[-1].next))
        assert [len(page) for page in pages] == [2, 2, 1]
        assert [j for page in pages for j in page] == everything
        skipped = await runpack.jobs(job_type=kind, limit=2, offset=1, after=pages[0].next)
        assert skipped == everything[3:5] and skipped.next is None
        with pytest.raises(RunpackClientError) as bad:
            await runpack.jobs(after="not a cursor")
        assert bad.value.status == 400
    with Client(live.url, admin_key=ADMIN_KEY) as sync:
        first = sync.jobs(job_type=kind, limit=3)
        rest = sync.jobs(job_type=kind, limit=3, after=first.next)
        assert [*first, *rest] == everything and first.next and rest.next is None


# --- the synchronous Client -------------------------------------------------------------------


def test_the_sync_client(live: Live) -> None:
    name = unique("Sync")
    with Client(live.url, SUBMIT_KEY, ADMIN_KEY) as runpack:
        assert not runpack.check("hello_world", hello(name, 1)).exists
        job = runpack.submit("hello_world", hello(name, 1))
        assert job.created
        events = list(runpack.watch(job.job_id))
        assert events[0].type == "snapshot" and events[-1].status == "completed"
        assert runpack.wait(job.job_id, timeout=10) == {
            "message": f"Hello, {name}!",
            "processing_time": 1,
        }
        assert runpack.status(job.job_id).status == "completed"
        assert job.job_id in {j.job_id for j in runpack.jobs(limit=1000)}
        assert any(r.connected for r in runpack.runners())

        failing = runpack.submit("hello_world", hello(unique(), 301))
        with pytest.raises(JobFailed, match="must not exceed 300 seconds"):
            runpack.wait(failing.job_id, timeout=20)

        slow = runpack.submit("hello_world", hello(unique(), 120))
        with pytest.raises(TimeoutError):
            runpack.wait(slow.job_id, timeout=0.3)
        events = runpack.watch(slow.job_id)
        assert next(events).type == "snapshot"
        events.close()  # leaving a watch early closes its stream
        assert runpack.cancel(slow.job_id).status == "cancelled"
        with pytest.raises(JobFailed) as cancelled:
            runpack.wait(slow.job_id, timeout=10)
        assert cancelled.value.status == "cancelled"
    with Client(live.url, "wrong-key") as runpack, pytest.raises(RunpackClientError) as wrong:
        runpack.submit("hello_world", hello(unique()))
    assert wrong.value.status == 401


def test_a_closed_sync_client_refuses_calls(live: Live) -> None:
    runpack = Client(live.url, SUBMIT_KEY)
    runpack.close()
    runpack.close()  # closing twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        runpack.status("00000000-0000-4000-8000-000000000000")


# --- the SSE parser ---------------------------------------------------------------------------


@pytest.mark.parametrize("split", [1, 2, 3, 7, 1000])
@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_the_sse_parser_handles_any_chunking_and_line_ending(split: int, newline: bytes) -> None:
    body = (
        b": keepalive\n\n"
        b'id: e-1\nevent: snapshot\ndata: {"status": "pending", "text": "\xc3\xa9t\xc3\xa9"}\n\n'
        b'event: console\ndata: {"append":\ndata: "a"}\n\n'
        b"id: e-3\ndata: 42\n\n"
        b'id: e-4\nevent: status\ndata: {"status": "completed"}\n\n'
        b"event: partial\ndata: {}"  # no blank line yet: not an event
    ).replace(b"\n", newline)
    parser = SSEParser()
    events = []
    for i in range(0, len(body), split):
        events += parser.feed(body[i : i + split])
    assert events == [
        Event("e-1", "snapshot", {"status": "pending", "text": "été"}),
        Event("e-1", "console", {"append": "a"}),
        Event("e-3", "message", {"value": 42}),
        Event("e-4", "status", {"status": "completed"}),
    ]
    assert events[-1].is_final and not events[0].is_final


def test_the_example_runs(live: Live) -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "client_example.py"
    env = clean_env({"RUNPACK_URL": live.url, "RUNPACK_SUBMIT_API_KEY": SUBMIT_KEY})
    done = subprocess.run(
        [sys.executable, str(example)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "result: {'message': 'Hello, Ada!', 'processing_time': 3}" in done.stdout
    assert "failed: Invalid parameters" in done.stdout
    assert "again: Job already completed (cached result)" in done.stdout
    # Each console line once, though the final console event repeats the whole text.
    lines = [line for line in done.stdout.splitlines() if "console:" in line]
    assert len(lines) == len(set(lines)) and any("Completed!" in line for line in lines)
