"""Operations: /metrics after real work, its auth, request ids in replies and logs,
JSON logs of a real server, and a prompt clean shutdown on SIGTERM and SIGINT."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import signal
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from runpack import __version__, logs
from runpack.appkeys import SERVICE
from runpack.cli import main as cli_main
from runpack.errors import StoreError
from runpack.metrics import MAX_JOB_TYPES, OTHER_TYPES, JobCounts, Metrics
from runpack.service.core import Answer, Outcome
from runpack.store import JobRow
from tests.conftest import (
    ADMIN,
    RUNNER,
    SUBMIT,
    MakeClient,
    as_runner,
    claim,
    register,
    submit,
)
from tests.procs import KEYS, NO_LIMITS, Proc, running_server

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def scrape(client: TestClient, **headers: str) -> Samples:
    resp = await client.get("/metrics", headers=headers)
    text = await resp.text()
    assert resp.status == 200, text
    assert resp.content_type == "text/plain"
    return parse(text)


async def hello(ws: aiohttp.ClientWebSocketResponse, caps: list[str], slots: int) -> str:
    """Say hello on the runner socket; the runner id from the welcome."""
    return str((await welcome_of(ws, caps, slots))["runner_id"])


async def welcome_of(
    ws: aiohttp.ClientWebSocketResponse, caps: list[str], slots: int
) -> dict[str, Any]:
    """Say hello on the runner socket; the welcome."""
    await ws.send_json(
        {"type": "hello", "name": "obs", "capabilities": caps, "concurrency": slots, "jobs": []}
    )
    welcome = await ws.receive_json(timeout=10)
    assert welcome["type"] == "welcome", welcome
    return dict(welcome)


async def first_event(resp: aiohttp.ClientResponse) -> list[str]:
    """The lines of the first event of an SSE stream."""
    assert resp.status == 200, await resp.text()
    lines: list[str] = []
    async with asyncio.timeout(10):
        while (line := (await resp.content.readline()).decode().rstrip("\n")) or not lines:
            lines.append(line)
    return lines


# --- /metrics ----------------------------------------------------------------------------


async def test_metrics_after_real_work(make_client: MakeClient) -> None:
    client = await make_client()
    first = await submit(client, name="metrics-a")
    assert (await submit(client, name="metrics-a"))["status"] == "pending"  # joins it
    runner = await register(client)
    await claim(client, runner, first["job_id"])
    resp = await client.post(
        f"/api/runner/jobs/{first['job_id']}/complete",
        json={"output_data": {"answer": 42}},
        headers=as_runner(runner),
    )
    assert resp.status == 200, await resp.text()
    cached = await submit(client, name="metrics-a")
    assert cached["status"] == "completed"
    for name in ("metrics-a", "nothing-like-it"):
        body = {"job_type": "hello_world", "input_params": {"name": name}}
        resp = await client.post("/api/jobs/check", json=body, headers=SUBMIT)
        assert resp.status == 200
    second = await submit(client, name="metrics-b")
    # A runner on the socket that grants no slot (so the second job stays queued),
    # and a watcher of that job.
    ws = await client.ws_connect("/api/runner/ws", headers=RUNNER)
    await hello(ws, ["hello_world"], 3)
    stream = await client.get(f"/api/jobs/{second['job_id']}/events")
    await first_event(stream)

    got = await scrape(client, **ADMIN)

    assert value(got, "runpack_submits_total", outcome="new") == 2
    assert value(got, "runpack_submits_total", outcome="deduplicated") == 1
    assert value(got, "runpack_submits_total", outcome="cached") == 1
    assert value(got, "runpack_checks_total", outcome="cached") == 1
    assert value(got, "runpack_checks_total", outcome="missing") == 1
    assert value(got, "runpack_cache_hits_total") == 2  # the cached submit and check
    assert value(got, "runpack_cache_misses_total") == 2  # the two new jobs
    assert value(got, "runpack_jobs", status="completed", job_type="hello_world") == 1
    assert value(got, "runpack_jobs", status="pending", job_type="hello_world") == 1
    assert value(got, "runpack_queue_depth") == 1
    assert value(got, "runpack_job_queue_wait_seconds_count", job_type="hello_world") == 1
    run = {"job_type": "hello_world", "outcome": "completed"}
    assert value(got, "runpack_job_run_seconds_count", **run) == 1
    assert value(got, "runpack_runners_connected") == 1
    assert value(got, "runpack_runner_slots") == 3
    assert value(got, "runpack_runner_jobs") == 0
    assert value(got, "runpack_watchers_connected") == 1
    # Every submit not answered from memory: the insert finds an existing hash's job.
    assert value(got, "runpack_db_seconds_count", operation="insert_job") == 4
    assert value(got, "runpack_db_seconds_count", operation="complete") == 1
    assert value(got, "runpack_db_seconds_count", operation="claim") == 1
    assert value(got, "runpack_db_seconds_count", operation="delete_jobs") is None  # never called
    submits = {"method": "POST", "route": "/api/jobs/submit"}
    assert value(got, "runpack_http_requests_total", status="201", **submits) == 2
    assert value(got, "runpack_http_requests_total", status="200", **submits) == 2
    claims = {"method": "POST", "route": "/api/runner/jobs/{job_id}/claim", "status": "200"}
    assert value(got, "runpack_http_requests_total", **claims) == 1
    assert value(got, "runpack_http_request_duration_seconds_count", **submits) == 4
    stream.close()
    await ws.close()


async def test_unmatched_paths_share_one_route_label(client: TestClient) -> None:
    for n in range(3):
        assert (await client.get(f"/no/such/page/{n}")).status == 404
    got = await scrape(client, **ADMIN)
    labels = {"method": "GET", "route": "unmatched", "status": "404"}
    assert value(got, "runpack_http_requests_total", **labels) == 3
    assert not [k for k in got if ("route", "/no/such/page/0") in k[1]]


async def test_metrics_needs_an_admin_read_key(client: TestClient) -> None:
    assert (await client.get("/metrics")).status == 401
    assert (await client.get("/metrics", headers=SUBMIT)).status == 401
    assert (await client.get("/metrics", headers={"Authorization": "Bearer nope"})).status == 401
    await scrape(client, **ADMIN)
    await scrape(client, **RUNNER)  # as for the other admin reads


async def test_metrics_public_opens_it(make_client: MakeClient) -> None:
    client = await make_client(metrics_public=True)
    got = await scrape(client)
    assert value(got, "runpack_queue_depth") == 0


async def test_openmetrics_when_asked(client: TestClient) -> None:
    resp = await client.get(
        "/metrics", headers={**ADMIN, "Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert resp.status == 200
    assert resp.content_type == "application/openmetrics-text"
    assert (await resp.text()).rstrip().endswith("# EOF")


def _job(**changes: Any) -> JobRow:
    row = {
        "id": str(uuid.uuid4()),
        "job_hash": "h",
        "job_type": "t",
        "input_params": "{}",
        "status": "claimed",
        "priority": 0,
        "attempts": 1,
        "max_attempts": 3,
        "not_before": 0,
        "timeout": None,
        "created_at": 1_000,
        "updated_at": 2_500,
        "claimed_by": "r",
        "claimed_at": 2_500,
        "last_heartbeat": 2_500,
        "progress_current": None,
        "progress_total": None,
        "console_output": None,
        "output_data": None,
        "error_message": None,
    }
    return JobRow(**{**row, **changes})


def test_queue_wait_and_run_time_come_from_the_rows() -> None:
    metrics = Metrics()
    sample = metrics.registry.get_sample_value
    first = _job()  # created at 1.0 s, claimed at 2.5 s
    retried = _job(created_at=0, not_before=5_000, claimed_at=5_200)  # its retry came due at 5 s
    metrics.started(first)
    metrics.started(retried)
    assert sample("runpack_job_queue_wait_seconds_sum", {"job_type": "t"}) == pytest.approx(1.7)
    assert sample("runpack_job_queue_wait_seconds_bucket", {"job_type": "t", "le": "0.25"}) == 1
    metrics.ended(first.id, "completed", 4_500)
    metrics.ended(retried.id, "lost", 5_300)
    metrics.ended(str(uuid.uuid4()), "completed", 9_000)  # claimed elsewhere: not observed
    metrics.ended(first.id, "completed", 9_000)  # a repeat: already ended
    done = {"job_type": "t", "outcome": "completed"}
    assert sample("runpack_job_run_seconds_count", done) == 1
    assert sample("runpack_job_run_seconds_sum", done) == pytest.approx(2.0)
    lost = {"job_type": "t", "outcome": "lost"}
    assert sample("runpack_job_run_seconds_sum", lost) == pytest.approx(0.1)


def test_submit_outcomes_and_the_cache_counters() -> None:
    metrics = Metrics()
    for outcome, requeued in [
        (Outcome.CREATED, False),
        (Outcome.CREATED, True),
        (Outcome.CACHED, False),
        (Outcome.ACTIVE, False),
        (Outcome.FAILED, False),
    ]:
        metrics.answered("submit", Answer(outcome, None, requeued=requeued))
    metrics.answered("check", Answer(Outcome.EXPIRED, None))
    sample = metrics.registry.get_sample_value
    for label in ("new", "requeued", "cached", "deduplicated", "failed"):
        assert sample("runpack_submits_total", {"outcome": label}) == 1, label
    assert sample("runpack_checks_total", {"outcome": "expired"}) == 1
    assert sample("runpack_cache_hits_total") == 1
    assert sample("runpack_cache_misses_total") == 2


class CountingStore:
    def __init__(self, counts: dict[tuple[str, str], int] | Exception) -> None:
        self.counts = counts
        self.queries = 0

    async def count_jobs_by_status_and_type(self) -> dict[tuple[str, str], int]:
        self.queries += 1
        if isinstance(self.counts, Exception):
            raise self.counts
        return self.counts


def job_levels(collector: JobCounts) -> dict[tuple[str, ...], float]:
    return {
        (s.name, *s.labels.values()): s.value  # labels: status, then job_type
        for family in collector.collect()
        for s in family.samples
    }


async def test_job_counts_are_read_at_most_once_per_ttl() -> None:
    now = [100.0]
    collector = JobCounts(ttl=1.0, clock=lambda: now[0])
    store = CountingStore({("pending", "a"): 2, ("completed", "a"): 5, ("pending", "b"): 1})
    collector.store = store  # type: ignore[assignment]
    await asyncio.gather(collector.refresh(), collector.refresh())
    now[0] += 0.5
    await collector.refresh()
    assert store.queries == 1
    levels = job_levels(collector)
    assert levels[("runpack_jobs", "pending", "a")] == 2
    assert levels[("runpack_queue_depth",)] == 3
    store.counts = {("pending", "a"): 7}
    now[0] += 0.6
    await collector.refresh()
    assert store.queries == 2
    assert job_levels(collector)[("runpack_queue_depth",)] == 7


async def test_job_types_beyond_the_limit_are_added_up() -> None:
    collector = JobCounts(ttl=0)
    counts = {("pending", f"type-{i:03}"): 1000 - i for i in range(MAX_JOB_TYPES + 5)}
    collector.store = CountingStore(counts)  # type: ignore[assignment]
    await collector.refresh()
    levels = job_levels(collector)
    types = {key[2] for key in levels if key[0] == "runpack_jobs"}
    assert len(types) == MAX_JOB_TYPES + 1
    assert "type-000" in types and f"type-{MAX_JOB_TYPES + 4:03}" not in types
    # The five smallest types, added up.
    assert levels[("runpack_jobs", "pending", OTHER_TYPES)] == sum(
        1000 - i for i in range(MAX_JOB_TYPES, MAX_JOB_TYPES + 5)
    )
    assert levels[("runpack_queue_depth",)] == sum(counts.values())


async def test_a_failed_count_leaves_the_job_levels_out() -> None:
    metrics = Metrics(jobs_ttl=0)
    metrics.jobs.store = CountingStore(StoreError(details="down"))  # type: ignore[assignment]
    body, _ = await metrics.exposition(None)
    got = parse(body.decode())
    assert value(got, "runpack_queue_depth") is None
    assert value(got, "runpack_runners_connected") == 0  # the rest is still served


# --- request ids -----------------------------------------------------------------------


async def test_a_sane_request_id_is_echoed_on_every_reply(client: TestClient) -> None:
    for method, path, headers, status in [
        ("GET", "/health", {}, 200),
        ("GET", "/metrics", {}, 401),
        ("GET", "/api/nothing", {}, 404),
        ("OPTIONS", "/api/jobs/submit", {}, 204),
        ("POST", "/api/jobs/submit", SUBMIT, 400),
    ]:
        rid = f"trace.{uuid.uuid4().hex}_x-1"
        resp = await client.request(method, path, headers={**headers, "X-Request-ID": rid})
        assert resp.status == status, path
        assert resp.headers["X-Request-ID"] == rid, path


@pytest.mark.parametrize(
    "sent",
    [None, "", "a" * 65, "has space", "semi;colon", "ünicode", "new\\nline"],
    ids=["none", "empty", "too-long", "space", "semicolon", "non-ascii", "backslash"],
)
async def test_other_request_ids_are_replaced(client: TestClient, sent: str | None) -> None:
    headers = {} if sent is None else {"X-Request-ID": sent}
    first = (await client.get("/health", headers=headers)).headers["X-Request-ID"]
    second = (await client.get("/health", headers=headers)).headers["X-Request-ID"]
    assert first != sent
    assert len(first) == 12 and int(first, 16) >= 0
    assert first != second


async def test_a_stream_names_its_request_too(client: TestClient) -> None:
    job_id = (await submit(client, name="stream-id"))["job_id"]
    stream = await client.get(f"/api/jobs/{job_id}/events", headers={"X-Request-ID": "sse-1"})
    assert stream.headers["X-Request-ID"] == "sse-1"
    await first_event(stream)
    stream.close()


async def test_the_incident_of_a_500_is_the_request_id(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def explode(*args: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(client.app[SERVICE], "get_job", explode)  # type: ignore[index]
    with caplog.at_level(logging.ERROR):
        resp = await client.get(
            f"/api/jobs/{uuid.uuid4()}", headers={**SUBMIT, "X-Request-ID": "trace-500"}
        )
    assert resp.status == 500
    assert (await resp.json())["details"] == "incident trace-500"
    assert resp.headers["X-Request-ID"] == "trace-500"
    assert "incident trace-500" in caplog.text


# --- log formats ------------------------------------------------------------------------


def capture(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(logs.ContextFilter())
    logger = logging.getLogger(f"runpack.test.{uuid.uuid4().hex}")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def test_json_lines_carry_the_context_and_the_extras() -> None:
    logger, stream = capture(logs.JsonFormatter())
    request = logs.bind_request("r-1")
    token = logs.bind(runner_id="run-1")
    try:
        logger.info("job %s done", "j-1", extra={"job_id": "j-1"})
        logger.warning("again", extra={"runner_id": "explicit"})
    finally:
        logs.unbind(token)
        logs.unbind_request(request)
    logger.info("outside")
    first, second, third = (json.loads(line) for line in stream.getvalue().splitlines())
    assert set(first) == {"ts", "level", "logger", "message", "request_id", "runner_id", "job_id"}
    assert first["ts"].endswith("Z")
    assert (first["level"], first["logger"]) == ("INFO", logger.name)
    assert (first["message"], first["request_id"], first["job_id"]) == (
        "job j-1 done",
        "r-1",
        "j-1",
    )
    assert second["runner_id"] == "explicit"  # an explicit extra wins over the context
    assert third["request_id"] is None and "runner_id" not in third


def test_text_lines_end_with_the_context() -> None:
    logger, stream = capture(logs.TextFormatter())
    token = logs.bind_request("r-2")
    try:
        logger.info("hello", extra={"job_id": "j-2"})
    finally:
        logs.unbind_request(token)
    logger.info("plain")
    first, second = stream.getvalue().splitlines()
    assert first.endswith(f"INFO {logger.name}: hello [request_id=r-2 job_id=j-2]")
    assert second.endswith(f"INFO {logger.name}: plain")


def test_an_unknown_log_format_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["serve", "--log-format", "yaml"]) == 2
    assert "log_format must be one of text, json" in capsys.readouterr().err


# --- a real server -----------------------------------------------------------------------

SERVER_KEYS = {
    **KEYS,
    **NO_LIMITS,
}


def json_lines(proc: Proc) -> list[dict[str, Any]]:
    """Every log line of the server (its other output is the startup banner)."""
    return [json.loads(line) for line in proc.output().splitlines() if line.startswith("{")]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        yield http


async def test_a_real_server_logs_json_with_request_ids(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    env = {**SERVER_KEYS, "RUNPACK_LOG_FORMAT": "json"}
    submit_key = KEYS["RUNPACK_SUBMIT_API_KEY"]
    runner_key = KEYS["RUNPACK_RUNNER_API_KEY"]
    with running_server(tmp_path, env) as server:
        body = {"job_type": "hello_world", "input_params": {"name": "json-logs"}}
        async with session.post(
            server.url + "/api/jobs/submit",
            json=body,
            headers={"Authorization": f"Bearer {submit_key}", "X-Request-ID": "obs-submit-1"},
        ) as resp:
            assert resp.status == 201
            assert resp.headers["X-Request-ID"] == "obs-submit-1"
        async with session.ws_connect(
            server.url + "/api/runner/ws",
            headers={"Authorization": f"Bearer {runner_key}", "X-Request-ID": "obs-ws-1"},
        ) as ws:
            runner_id = await hello(ws, ["noop"], 1)
        lines = json_lines(server)
        output = server.output()

    [access] = [
        line
        for line in lines
        if line["logger"] == "runpack.access" and line["request_id"] == "obs-submit-1"
    ]
    assert access["level"] == "INFO"
    assert (access["method"], access["path"], access["status"]) == ("POST", "/api/jobs/submit", 201)
    assert isinstance(access["duration_ms"], float) and access["duration_ms"] >= 0
    assert access["client_ip"] == "127.0.0.1"
    assert access["message"].startswith("POST /api/jobs/submit 201 ")
    # A record made inside the runner's socket names the request and the runner.
    # (Not the line about the submitted job no runner handles: "…; runners connected: …".)
    connected = [
        line for line in lines if re.match(r"runner \S+ \(.*\) connected: ", line["message"])
    ]
    assert connected, output
    assert connected[0]["request_id"] == "obs-ws-1"
    assert connected[0]["runner_id"] == runner_id
    for key in KEYS.values():
        assert key not in output


@pytest.mark.parametrize("choice", ["auto", "asyncio"])
async def test_a_real_server_names_its_event_loop(
    tmp_path: Path, session: aiohttp.ClientSession, choice: str
) -> None:
    """uvloop where it is installed (a dependency on Linux), asyncio's loop when asked."""
    env = {**SERVER_KEYS, "RUNPACK_EVENT_LOOP": choice}
    admin = {"Authorization": f"Bearer {KEYS['RUNPACK_ADMIN_API_KEY']}"}
    with running_server(tmp_path, env) as server:
        async with session.get(server.url + "/metrics", headers=admin) as resp:
            text = await resp.text()
    [info] = [
        sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "runpack_info"
    ]
    assert info.labels["event_loop"] == ("uvloop" if choice == "auto" else "asyncio")
    assert info.labels["version"] == __version__


def test_an_unknown_event_loop_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["serve", "--event-loop", "trio"]) == 2
    assert "event_loop must be one of auto, uvloop, asyncio" in capsys.readouterr().err


def test_the_runner_refuses_an_unknown_event_loop(capsys: pytest.CaptureFixture[str]) -> None:
    from runpack_runner.cli import main as runner_main

    assert runner_main(["--event-loop", "trio", "--log-file", ""]) == 2
    assert "event_loop must be one of auto, uvloop, asyncio" in capsys.readouterr().err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_shutdown_closes_sockets_and_streams_at_once(
    tmp_path: Path, session: aiohttp.ClientSession, sig: signal.Signals
) -> None:
    """A connected runner hears GOING_AWAY (1001); an idle event stream and a long-poll
    end at once, so the server exits 0 without waiting out its shutdown timeout (5 s)."""
    admin = {"Authorization": f"Bearer {KEYS['RUNPACK_ADMIN_API_KEY']}"}
    runner = {"Authorization": f"Bearer {KEYS['RUNPACK_RUNNER_API_KEY']}"}
    with running_server(tmp_path, SERVER_KEYS) as server:
        ws = await session.ws_connect(server.url + "/api/runner/ws", headers=runner)
        welcome = await welcome_of(ws, ["noop"], 1)
        stream = await session.get(server.url + "/api/admin/events", headers=admin)
        assert "event: reset" in await first_event(stream)
        long_poll = asyncio.ensure_future(
            session.get(
                server.url + "/api/runner/jobs/next?types[]=noop&wait=60",
                headers={
                    **runner,
                    "X-Runner-ID": welcome["runner_id"],
                    "X-Runner-Secret": welcome["runner_secret"],
                },
            )
        )
        await watchers_and_polls_open(server)
        started = time.monotonic()
        server.popen.send_signal(sig)

        closing = await ws.receive(timeout=10)
        assert closing.type == WSMsgType.CLOSE, closing
        assert closing.data == 1001
        rest = (await asyncio.wait_for(stream.content.read(), 10)).decode()
        assert "event: closing" in rest
        poll = await asyncio.wait_for(long_poll, 10)
        assert poll.status == 204
        code = await asyncio.to_thread(server.popen.wait, 10)
        elapsed = time.monotonic() - started
        await ws.close()
        stream.close()
        poll.close()
    assert code == 0, server.output()
    assert elapsed < 3.0, f"took {elapsed:.1f} s to stop:\n{server.output()}"


async def watchers_and_polls_open(server: Proc) -> None:
    """Wait (bounded) until the server counts the event stream and has begun the long-poll."""
    admin = {"Authorization": f"Bearer {KEYS['RUNPACK_ADMIN_API_KEY']}"}
    deadline = time.monotonic() + 10
    request = urllib.request.Request(server.url + "/metrics", headers=admin)
    while True:
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(request, timeout=5).read())
        got = parse(text.decode())
        # The long-poll notes the runner's contact before it waits.
        polled = value(got, "runpack_db_seconds_count", operation="touch_runner")
        if value(got, "runpack_watchers_connected") == 1 and polled:
            return
        assert time.monotonic() < deadline, "the stream or the long-poll never started"
        await asyncio.sleep(0.05)
