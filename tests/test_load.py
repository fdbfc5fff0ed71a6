"""Load: one ``runpack serve`` holds many runner sockets and event-stream watchers at
once, and a client flooding submits is rate limited while the others keep their latency.

The default size suits CI (two shared cores, seconds); ``pytest --load-full`` or
``RUNPACK_LOAD_FULL=1`` runs the full size: 1000 runner sockets and 1000 watchers;
``RUNPACK_LOAD_CONNECTIONS=10000`` sets how many of each, ``RUNPACK_LOAD_WATCHERS``
how many watchers if not as many.
Both tests print their figures and add them to ``test-artifacts/load.json``.
Everything is on loopback: distinct source addresses in 127.0.0.0/8 make the server
see distinct client IPs without trusting a proxy. The flooding client is a process of
its own (``python -m tests.test_load flood …``), so that its work does not slow the
clients being measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import resource
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar, cast

import aiohttp
import orjson
import pytest

from runpack.bench import percentiles
from runpack.connections import RunnerConn
from runpack.hub import Hub
from runpack.service import JobService
from tests.procs import KEYS, NO_LIMITS, Proc, clean_env, running_server

ROOT = Path(__file__).resolve().parents[1]
ARTIFACT = ROOT / "test-artifacts" / "load.json"
SUBMIT = {"Authorization": f"Bearer {KEYS['RUNPACK_SUBMIT_API_KEY']}"}
RUNNER = {"Authorization": f"Bearer {KEYS['RUNPACK_RUNNER_API_KEY']}"}
ADMIN = {"Authorization": f"Bearer {KEYS['RUNPACK_ADMIN_API_KEY']}"}
#: The server's default rate limits (new jobs: 20 at once, then 20 a minute per address;
#: requests: 200 at once, then 600 a minute per address).
SERVER_ENV = {**KEYS, "RUNPACK_LOG_LEVEL": "warning"}
#: Holding connections is not about rate limits: this test's one client submits freely.
UNLIMITED_ENV = {
    **SERVER_ENV,
    **NO_LIMITS,
}
SUBMIT_LIMIT = 20  # new jobs at once, and per minute after that
POLL_LIMIT = 200  # requests at once
JOB_TYPE = "load_job"
#: Connections being opened at a time; the rest wait their turn. (Thousands of SYNs at
#: once would overflow the listen backlog and measure TCP's retransmit timer.)
OPENING = 64
#: A well-behaved client's requests: submits, and status reads after each, both under
#: the limits.
CLIENT_SUBMITS = 8
READS_PER_SUBMIT = 5
#: Generous bounds: a real regression fails them, a busy machine does not.
MAX_KIB_PER_CONNECTION = 200.0
MAX_P99_MS_UNDER_FLOOD = 1000.0
FLOOD_MAX_SECONDS = 120.0

T = TypeVar("T")


@dataclass(frozen=True)
class Size:
    connections: int  # runner sockets, and as many event-stream watchers (or ``watchers``)
    watched_jobs: int  # the watchers are spread over this many jobs
    clients: int  # well-behaved client IPs per phase of the flood test
    flood_connections: int  # concurrent requests of the flooding client
    within: float  # seconds one test may take
    watchers: int | None = None  # event-stream watchers, when not ``connections``


CI = Size(connections=200, watched_jobs=4, clients=8, flood_connections=16, within=45)
FULL = Size(connections=1000, watched_jobs=10, clients=16, flood_connections=64, within=240)


@pytest.fixture
def size(request: pytest.FixtureRequest) -> Size:
    full = request.config.getoption("--load-full") or os.environ.get("RUNPACK_LOAD_FULL") == "1"
    # Every connection is a descriptor on this side too.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    chosen = FULL if full else CI
    many = os.environ.get("RUNPACK_LOAD_CONNECTIONS")
    if many:  # e.g. 10000, to measure the memory of that many idle sockets
        n = int(many)
        chosen = dataclasses.replace(chosen, connections=n, within=max(chosen.within, n / 15))
    watchers = os.environ.get("RUNPACK_LOAD_WATCHERS")
    if watchers:  # each process may be allowed fewer descriptors than both need
        chosen = dataclasses.replace(chosen, watchers=int(watchers))
    return chosen


# --- measuring ---------------------------------------------------------------------------
def rss_kib(pid: int) -> int:
    """Resident memory of a live process (VmRSS), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


def cpu_s(pid: int) -> float:
    """CPU time (user and system) a live process has used, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_files_limits(pid: int) -> tuple[int, int]:
    """A live process's (soft, hard) limit on open files."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError(f"no open files limit for process {pid}")


@contextlib.contextmanager
def soft_open_files(limit: int) -> Iterator[None]:
    """Processes started inside inherit a soft open-files limit of ``limit``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def record(section: str, figures: dict[str, Any]) -> None:
    """Print the figures and keep them in test-artifacts/load.json under ``section``."""
    print(f"\nload test, {section}:\n{json.dumps(figures, indent=2)}")
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    try:
        everything = json.loads(ARTIFACT.read_text())
    except (OSError, ValueError):
        everything = {}
    everything[section] = {**figures, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    ARTIFACT.write_text(json.dumps(everything, indent=2) + "\n")


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


# --- clients -------------------------------------------------------------------------------
async def submit(http: aiohttp.ClientSession, url: str, job_type: str, **params: Any) -> str:
    body = {"job_type": job_type, "input_params": params}
    async with http.post(f"{url}/api/jobs/submit", json=body, headers=SUBMIT) as resp:
        assert resp.status == 201, await resp.text()
        return str((await resp.json())["job_id"])


@dataclass
class Board:
    """What the fake runners received, by job id: futures that either side may create
    first (a push can arrive before the submit that caused it has answered)."""

    pushes: dict[str, asyncio.Future[tuple[FakeRunner, float]]] = field(default_factory=dict)
    acks: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    unexpected: list[dict[str, Any]] = field(default_factory=list)

    @staticmethod
    def _slot(table: dict[str, asyncio.Future[T]], job_id: str) -> asyncio.Future[T]:
        if job_id not in table:
            table[job_id] = asyncio.get_running_loop().create_future()
        return table[job_id]

    def pushed(self, job_id: str) -> asyncio.Future[tuple[FakeRunner, float]]:
        return self._slot(self.pushes, job_id)

    def acked(self, job_id: str) -> asyncio.Future[dict[str, Any]]:
        return self._slot(self.acks, job_id)

    def saw(self, runner: FakeRunner, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "job" and not self.pushed(frame["job_id"]).done():
            self.pushed(frame["job_id"]).set_result((runner, time.monotonic()))
        elif kind == "ack" and not self.acked(frame["job_id"]).done():
            self.acked(frame["job_id"]).set_result(frame)
        else:
            self.unexpected.append(frame)  # a second push of a job, an error frame…


@dataclass(eq=False)
class FakeRunner:
    """A runner that speaks the real protocol on its own socket and runs nothing."""

    ws: aiohttp.ClientWebSocketResponse
    runner_id: str
    board: Board
    reader: asyncio.Task[None] | None = None

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send_str(orjson.dumps(frame).decode())

    async def read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            self.board.saw(self, orjson.loads(msg.data))

    async def close(self) -> None:
        await self.ws.close()
        if self.reader is not None:
            await self.reader


async def connect_runner(
    http: aiohttp.ClientSession,
    url: str,
    name: str,
    board: Board,
    opening: asyncio.Semaphore,
    slots: int = 1,
) -> FakeRunner:
    """hello → welcome, then ``ready`` with ``slots`` free slots."""
    async with opening:
        ws = await http.ws_connect(f"{url}/api/runner/ws", headers=RUNNER)
        hello = {
            "type": "hello",
            "name": name,
            "capabilities": [JOB_TYPE],
            "concurrency": 1,
            "version": "load-test",
            "jobs": [],
        }
        await ws.send_str(orjson.dumps(hello).decode())
        msg = await ws.receive(timeout=30)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        welcome = orjson.loads(msg.data)
        assert welcome["type"] == "welcome", welcome
        runner = FakeRunner(ws, welcome["runner_id"], board)
        if slots:
            await runner.send({"type": "ready", "slots": slots})
    runner.reader = asyncio.create_task(runner.read())
    return runner


#: One event of a job's stream as a watcher saw it: (event type, data, arrival time).
Seen = tuple[str, dict[str, Any], float]


async def watch(
    http: aiohttp.ClientSession,
    url: str,
    job_id: str,
    opening: asyncio.Semaphore,
    opened: asyncio.Future[None],
) -> list[Seen]:
    """Follow a job's SSE stream to its end; ``opened`` is set at its first event."""
    seen: list[Seen] = []
    holding = True
    await opening.acquire()
    try:
        async with http.get(f"{url}/api/jobs/{job_id}/events") as resp:
            assert resp.status == 200, await resp.text()
            kind = ""
            async for raw in resp.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    seen.append((kind, orjson.loads(line[6:]), time.monotonic()))
                    if holding:
                        holding = False
                        opening.release()
                        opened.set_result(None)
    except Exception as exc:
        if not opened.done():
            opened.set_exception(exc)
        raise
    finally:
        if holding:
            opening.release()
    if not opened.done():
        opened.set_exception(AssertionError(f"the stream of {job_id} ended without an event"))
    return seen


async def server_watchers(http: aiohttp.ClientSession, url: str) -> int:
    """How many event streams the server is serving (its admin stream starts with a
    ``reset`` event that says so; this stream itself is one of them)."""
    async with http.get(f"{url}/api/admin/events", headers=ADMIN) as resp:
        assert resp.status == 200, await resp.text()
        async for raw in resp.content:
            line = raw.decode()
            if line.startswith("data: "):
                return int(orjson.loads(line[6:])["watchers"]) - 1
    raise AssertionError("the admin stream ended without an event")


async def connected_runners(http: aiohttp.ClientSession, url: str) -> int:
    """Connected runners, counted over every page of the runner list."""
    connected, offset, page = 0, 0, 500
    while True:
        query = f"limit={page}&offset={offset}"
        async with http.get(f"{url}/api/admin/runners?{query}", headers=ADMIN) as resp:
            assert resp.status == 200, await resp.text()
            runners = (await resp.json())["runners"]
        connected += sum(1 for r in runners if r.get("connected"))
        if len(runners) < page:
            return connected
        offset += page


# --- 1. many runner sockets and watchers on one server ----------------------------------------
@pytest.mark.timeout(300)
async def test_one_server_holds_runner_sockets_and_watchers(tmp_path: Path, size: Size) -> None:
    with contextlib.ExitStack() as stack:
        # Started with the usual low soft limit: the server must raise it itself.
        with soft_open_files(1024):
            server = stack.enter_context(running_server(tmp_path / "server", UNLIMITED_ENV))
        soft, hard = open_files_limits(server.popen.pid)
        assert soft == hard, f"runpack serve kept a soft open-files limit of {soft} < {hard}"
        async with asyncio.timeout(size.within):
            figures = await _hold_connections(server, size)
        output = server.output()
    assert "Traceback" not in output, output
    record("connections", figures)
    assert figures["kib_per_runner_socket"] < MAX_KIB_PER_CONNECTION, figures
    assert figures["kib_per_watcher"] < MAX_KIB_PER_CONNECTION, figures


async def _hold_connections(server: Proc, size: Size) -> dict[str, Any]:
    url, pid, n = server.url, server.popen.pid, size.connections
    w = size.watchers if size.watchers is not None else n
    loop = asyncio.get_running_loop()
    board = Board()
    opening = asyncio.Semaphore(OPENING)
    started = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        # Warm up with one of each connection and one whole job, so that code loaded
        # and caches filled on first use do not count as memory per connection.
        warm_job = await submit(http, url, JOB_TYPE, warm_up=True)
        opened: asyncio.Future[None] = loop.create_future()
        warm_watch = asyncio.create_task(watch(http, url, warm_job, opening, opened))
        await opened
        warm = await connect_runner(http, url, "warm-up", board, opening)
        assert (await board.pushed(warm_job))[0] is warm
        await warm.send({"type": "complete", "job_id": warm_job, "output_data": {}})
        assert (await board.acked(warm_job))["applied"] is True
        assert (await warm_watch)[-1][1]["status"] == "completed"  # the server ended it
        await warm.close()
        rss_before = rss_kib(pid)

        # Jobs to watch, pushed to the first runners to connect, which hold them.
        watched = [await submit(http, url, JOB_TYPE, watched=i) for i in range(size.watched_jobs)]

        t0, cpu0 = time.monotonic(), cpu_s(pid)
        runners = await asyncio.gather(
            *(connect_runner(http, url, f"load-{i}", board, opening) for i in range(n))
        )
        runners_s, runners_cpu = time.monotonic() - t0, cpu_s(pid) - cpu0
        rss_runners = rss_kib(pid)
        holders = {job_id: (await board.pushed(job_id))[0] for job_id in watched}

        t0, cpu0 = time.monotonic(), cpu_s(pid)
        opens = [loop.create_future() for _ in range(w)]
        watchers = [
            asyncio.create_task(watch(http, url, watched[i % len(watched)], opening, opens[i]))
            for i in range(w)
        ]
        await asyncio.gather(*opens)
        watchers_s, watchers_cpu = time.monotonic() - t0, cpu_s(pid) - cpu0
        rss_all = rss_kib(pid)

        # The server says it holds them all.
        held_runners = await connected_runners(http, url)
        held_watchers = await server_watchers(http, url)
        assert (held_runners, held_watchers) == (n, w)

        # A job submitted now is pushed to one of the idle runners.
        t0 = time.monotonic()
        fresh = await submit(http, url, JOB_TYPE, fresh=True)
        runner, pushed_at = await board.pushed(fresh)
        push_ms = (pushed_at - t0) * 1000
        assert runner not in holders.values()
        await runner.send({"type": "complete", "job_id": fresh, "output_data": {"fresh": 1}})
        assert (await board.acked(fresh))["applied"] is True

        # The watched jobs report progress and finish: every watcher sees it all.
        t0 = time.monotonic()
        for i, job_id in enumerate(watched):
            holder = holders[job_id]
            beat = {"type": "heartbeat", "job_id": job_id, "progress_current": 1}
            await holder.send({**beat, "progress_total": 2, "console_append": "half way\n"})
            await holder.send({"type": "complete", "job_id": job_id, "output_data": {"i": i}})
        streams = await asyncio.gather(*watchers)
        fanout_ms = (max(seen[-1][2] for seen in streams) - t0) * 1000
        for i, seen in enumerate(streams):
            index = i % len(watched)
            kinds = [kind for kind, _, _ in seen]
            assert kinds[0] == "snapshot" and seen[0][1]["status"] == "claimed", seen
            assert ("progress", {"current": 1, "total": 2}) in [(k, d) for k, d, _ in seen], seen
            assert ("console", {"append": "half way\n"}) in [(k, d) for k, d, _ in seen], seen
            assert kinds[-1] == "status" and seen[-1][1]["status"] == "completed", seen
            assert seen[-1][1]["result"] == {"output_data": {"i": index}}, seen
        for job_id in watched:
            assert (await board.acked(job_id))["applied"] is True
        assert board.unexpected == []
        await asyncio.gather(*(r.close() for r in runners))

    return {
        "connections": n,
        "watchers": w,
        "runner_sockets_held": held_runners,
        "watchers_held": held_watchers,
        "watched_jobs": size.watched_jobs,
        "server_rss_kib": {"before": rss_before, "runners": rss_runners, "all": rss_all},
        "kib_per_runner_socket": round((rss_runners - rss_before) / n, 1),
        "kib_per_watcher": round((rss_all - rss_runners) / w, 1),
        "runners_connected_in_s": round(runners_s, 2),
        "watchers_connected_in_s": round(watchers_s, 2),
        "server_cpu_ms_per_runner_connect": round(runners_cpu * 1000 / n, 2),
        "server_cpu_ms_per_watcher_connect": round(watchers_cpu * 1000 / w, 2),
        "push_ms": round(push_ms, 1),
        "fanout_to_all_watchers_ms": round(fanout_ms, 1),
        "test_s": round(time.monotonic() - started, 1),
        "loadavg_1min": loadavg(),
    }


# --- 2. looking for work with many idle runners ----------------------------------------------
class ClaimCounter:
    """Stands in for the job service: hands out ``pending`` jobs and counts claims."""

    def __init__(self) -> None:
        self.pending = 0
        self.claims = 0

    async def claim_batch(self, runner_id: str, job_types: list[str], limit: int) -> list[Any]:
        self.claims += 1  # one statement, however many jobs it takes
        jobs = []
        while self.pending and len(jobs) < limit:
            self.pending -= 1
            job = {"id": f"job-{self.pending}", "job_type": JOB_TYPE, "input_params": "{}"}
            jobs.append(SimpleNamespace(**job, attempts=1, timeout=0))
        return jobs


async def test_looking_for_work_costs_a_claim_per_group_not_per_idle_runner(size: Size) -> None:
    """With many idle runners connected, the hub's search for work (on every queued job,
    every slot granted, and every second) must not make a claim per free slot."""
    service = ClaimCounter()
    hub = Hub(cast(JobService, service), reconnect_grace=30.0)
    pushed: list[str] = []
    groups = [frozenset({JOB_TYPE}), frozenset({JOB_TYPE, "other"})]
    for i in range(size.connections):
        conn = RunnerConn(
            runner_id=f"runner-{i}",
            name=f"runner-{i}",
            capabilities=groups[i % 2],
            concurrency=4,
            send=lambda message: pushed.append(message.job_id),
            close=lambda: None,
        )
        hub.conns[conn.runner_id] = conn
        hub.grant(conn, 4)
    # Nothing queued: one claim per group of runners that can run the same job types.
    assert not await hub._dispatch_round()
    assert service.claims == len(groups)
    # Jobs queued: every one is pushed, with at most a few claims wasted per group.
    service.pending = 25
    service.claims = 0
    while await hub._dispatch_round():
        pass
    assert len(pushed) == len(set(pushed)) == 25
    assert service.claims <= 2 * 25 + 2 * len(groups), service.claims
    assert sum(c.credits for c in hub.conns.values()) == 4 * size.connections - 25


# --- 3. a flooding client --------------------------------------------------------------------
@pytest.mark.timeout(300)
async def test_flooding_client_is_limited_and_others_keep_latency(
    tmp_path: Path, size: Size
) -> None:
    with running_server(tmp_path / "server", SERVER_ENV) as server:
        async with asyncio.timeout(size.within):
            quiet = await _clients(server.url, "127.0.1", size.clients)
            async with _flooding(server.url, "127.0.0.2", size.flood_connections) as flood:
                loud = await _clients(server.url, "127.0.2", size.clients)
        output = server.output()
    assert "Traceback" not in output, output
    summary = flood["summary"]
    figures = {
        "clients": size.clients,
        "requests_per_client": CLIENT_SUBMITS * (1 + READS_PER_SUBMIT),
        "without_flood_ms": percentiles([s for _, _, s in quiet]),
        "during_flood_ms": percentiles([s for _, _, s in loud]),
        "flood": summary,
        "loadavg_1min": loadavg(),
    }
    record("flood", figures)
    # The others are never limited…
    assert {status for _, status, _ in quiet + loud} <= {200, 201}
    # …while the flooder, far over its limit, is, and is told when to come back.
    assert summary["refused"] >= 10 * SUBMIT_LIMIT, summary
    assert summary["accepted"] <= SUBMIT_LIMIT * (1 + summary["seconds"] / 60) + 1, summary
    assert summary["other"] == 0, summary
    assert summary["bad_retry_after"] == 0, summary
    assert figures["during_flood_ms"]["p99"] < MAX_P99_MS_UNDER_FLOOD, figures


#: One request of a well-behaved client: (what, HTTP status, seconds).
Sample = tuple[str, int, float]


async def _clients(url: str, prefix: str, count: int) -> list[Sample]:
    """``count`` well-behaved clients at once, each from its own IP ``prefix.<i>``."""
    runs = await asyncio.gather(*(_client(url, f"{prefix}.{i + 1}") for i in range(count)))
    return [sample for run in runs for sample in run]


async def _client(url: str, ip: str) -> list[Sample]:
    """Submits, each followed by status reads: one request at a time, under the limits."""
    assert CLIENT_SUBMITS <= SUBMIT_LIMIT and CLIENT_SUBMITS * READS_PER_SUBMIT <= POLL_LIMIT
    samples: list[Sample] = []
    connector = aiohttp.TCPConnector(local_addr=(ip, 0))
    async with aiohttp.ClientSession(connector=connector, headers=SUBMIT) as http:
        for i in range(CLIENT_SUBMITS):
            body = {"job_type": JOB_TYPE, "input_params": {"client": ip, "i": i}}
            t0 = time.perf_counter()
            async with http.post(f"{url}/api/jobs/submit", json=body) as resp:
                answer = await resp.read()
            samples.append(("submit", resp.status, time.perf_counter() - t0))
            if resp.status != 201:
                continue
            job_id = orjson.loads(answer)["job_id"]
            for _ in range(READS_PER_SUBMIT):
                t0 = time.perf_counter()
                async with http.get(f"{url}/api/jobs/{job_id}") as resp:
                    await resp.read()
                samples.append(("status", resp.status, time.perf_counter() - t0))
    return samples


@contextlib.asynccontextmanager
async def _flooding(url: str, ip: str, connections: int) -> AsyncIterator[dict[str, Any]]:
    """A flooding process, refused already on entry; on exit its summary is in the
    yielded dict under ``summary``."""
    cmd = [sys.executable, "-m", "tests.test_load", "flood", url, ip, str(connections)]
    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=ROOT, env=clean_env(), stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    result: dict[str, Any] = {}
    try:
        line = await proc.stdout.readline()
        assert line.strip() == b"flooding", line
        yield result
        proc.send_signal(signal.SIGTERM)  # stop: it prints its summary and exits
        result["summary"] = json.loads(await proc.stdout.readline())
        assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def flood(url: str, ip: str, connections: int) -> dict[str, Any]:
    """Submit as fast as ``connections`` concurrent requests allow, from ``ip``, until
    SIGTERM (or FLOOD_MAX_SECONDS); print ``flooding`` once refused, then a summary."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.call_later(FLOOD_MAX_SECONDS, stop.set)
    refused = asyncio.Event()
    counts = {"accepted": 0, "refused": 0, "other": 0, "bad_retry_after": 0}
    latencies: list[float] = []

    async def worker(http: aiohttp.ClientSession, k: int) -> None:
        i = 0
        while not stop.is_set():
            body = {"job_type": JOB_TYPE, "input_params": {"flood": k, "i": i}}
            i += 1
            t0 = time.perf_counter()
            async with http.post(f"{url}/api/jobs/submit", json=body) as resp:
                await resp.read()
            latencies.append(time.perf_counter() - t0)
            if resp.status == 429:
                counts["refused"] += 1
                retry_after = resp.headers.get("Retry-After", "")
                if not (retry_after.isdigit() and int(retry_after) >= 1):
                    counts["bad_retry_after"] += 1
                refused.set()
            elif resp.status in (200, 201):
                counts["accepted"] += 1
            else:
                counts["other"] += 1

    connector = aiohttp.TCPConnector(local_addr=(ip, 0), limit=connections)
    async with aiohttp.ClientSession(connector=connector, headers=SUBMIT) as http:
        t0 = time.monotonic()
        workers = [asyncio.create_task(worker(http, k)) for k in range(connections)]
        async with asyncio.timeout(30):
            await refused.wait()
        print("flooding", flush=True)
        await stop.wait()
        await asyncio.gather(*workers)
        seconds = time.monotonic() - t0
    return {
        **counts,
        "requests": len(latencies),
        "seconds": round(seconds, 2),
        "requests_per_s": round(len(latencies) / seconds),
        "connections": connections,
        "latency_ms": percentiles(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="load-test helpers")
    parser.add_argument("command", choices=["flood"])
    parser.add_argument("url")
    parser.add_argument("ip")
    parser.add_argument("connections", type=int)
    args = parser.parse_args()
    summary = asyncio.run(flood(args.url, args.ip, args.connections))
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
