"""Server faults, with real processes on loopback.

- A ``runpack serve`` killed with SIGKILL while jobs are queued, running and
  just finished, then started again on the same port and database (SQLite and
  PostgreSQL): its runners reconnect and every job completes once.
- The server's PostgreSQL connections terminated under it (``pg_terminate_backend``)
  while jobs run, are submitted and watched, with two instances sharing the
  database: requests caught in the drop answer a clear 503, the rest go on,
  LISTEN/NOTIFY resumes between the instances, and every job ends once.
- Cases of the same faults that timing cannot pin down with processes, made
  exactly in one process: a claim whose answer is lost, events missed while
  LISTEN was down, a runner's hello while the database is away, and the
  LISTEN/NOTIFY connections terminated.

The process tests check that no job is lost, that none runs twice or has two results
stored, and that each ends in the state it should. Waits poll the API, the
database or the logs with a deadline; nothing sleeps to synchronize.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient

from runpack import notify
from runpack.appkeys import HUB, SERVICE
from runpack.errors import StoreUnavailable
from runpack.notify import Notifier, PgBridge, ServerEvent
from runpack.service import JobService
from runpack.service.core import now_ms
from runpack.store import JobRow, NewJob
from tests.conftest import RUNNER, claim, register
from tests.conftest import SUBMIT as CLIENT_SUBMIT
from tests.conftest import submit as conftest_submit
from tests.pg import fresh_database, require_postgres
from tests.procs import KEYS, NO_LIMITS, clean_env, free_port, until

SUBMIT = {"Authorization": f"Bearer {KEYS['RUNPACK_SUBMIT_API_KEY']}"}
ADMIN = {"Authorization": f"Bearer {KEYS['RUNPACK_ADMIN_API_KEY']}"}
SERVER_ENV = {
    **KEYS,
    **NO_LIMITS,
    "RUNPACK_RATE_AVAILABLE": "0",
    "RUNPACK_RATE_HEARTBEAT": "0",
}
RUNNER_ENV = {
    "RUNPACK_RUNNER_API_KEY": KEYS["RUNPACK_RUNNER_API_KEY"],
    "RUNPACK_RECONNECT_MAX": "1",
}
#: What PgBridge logs each time its LISTEN connection is (re)established.
LISTENING = "listening to other instances on PostgreSQL channel"


# --- processes ---------------------------------------------------------------------------------


class Procs:
    """The processes a test started. Stopped in order at the end of the test; any
    left running (a failed test) is killed, by its pid."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(
        self, cmd: list[str], cwd: Path, env: Mapping[str, str], log: Path
    ) -> subprocess.Popen[bytes]:
        cwd.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            proc = subprocess.Popen(
                cmd, cwd=cwd, env=clean_env(env), stdout=out, stderr=subprocess.STDOUT
            )
        self.started.append(proc)
        return proc

    async def stop(self, proc: subprocess.Popen[bytes], within: float = 15) -> int:
        """SIGTERM, then wait for the process to end by itself; its exit code."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        await until(lambda: proc.poll() is not None, f"process {proc.pid} to exit", within)
        return proc.returncode

    def kill_leftovers(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)  # a frozen one, too
                proc.kill()
            proc.wait(10)


@dataclass
class Server:
    """``runpack serve`` on a fixed loopback port, so it can be started again there."""

    procs: Procs
    cwd: Path
    db: str
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.cwd / "server.log"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def start(self, http: aiohttp.ClientSession) -> None:
        cmd = [sys.executable, "-m", "runpack.cli", "serve", "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--db", self.db, "--data-dir", str(self.cwd / "data")]
        proc = self.proc = self.procs.start(cmd, self.cwd, SERVER_ENV, self.log)

        async def healthy() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}:\n{self.output()}")
            try:
                async with http.get(self.url + "/health") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await until(healthy, f"the server on :{self.port} to answer /health")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def freeze(self) -> None:
        """SIGSTOP: the process holds its sockets but reads and writes nothing."""
        os.kill(self.pid, signal.SIGSTOP)

    async def kill(self) -> None:
        """SIGKILL: no shutdown of any kind."""
        assert self.proc is not None
        proc = self.proc
        os.kill(proc.pid, signal.SIGKILL)
        await until(lambda: proc.poll() is not None, "the killed server to be gone")


@dataclass
class Runner:
    proc: subprocess.Popen[bytes]
    cwd: Path

    def log(self) -> str:
        path = self.cwd / "runpack_runner.log"
        return path.read_text(errors="replace") if path.exists() else ""


def start_runner(procs: Procs, cwd: Path, url: str, *args: str) -> Runner:
    cmd = [sys.executable, "-m", "runpack_runner.cli", *args]
    env = {**RUNNER_ENV, "RUNPACK_WORKER_URL": url}
    return Runner(procs.start(cmd, cwd, env, cwd / "runner-output.log"), cwd)


@pytest.fixture
def procs() -> Iterator[Procs]:
    started = Procs()
    try:
        yield started
    finally:
        started.kill_leftovers()


class HoldProxy:
    """A loopback TCP proxy in front of a server that can hold back what the server sends.

    While held, the server's bytes stop in the proxy, as an answer lost in the
    network would: the client sends, the server receives, the client hears
    nothing. :meth:`drop` resets every connection (what was held is lost) and
    lets new connections through. It runs on the test's event loop.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._links: dict[asyncio.Future[Any], list[asyncio.StreamWriter]] = {}
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> HoldProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        self.drop()
        await asyncio.gather(*self._links, return_exceptions=True)
        await self._server.wait_closed()

    def hold(self) -> None:
        self._flowing.clear()

    def drop(self) -> None:
        for task, writers in list(self._links.items()):
            task.cancel()
            for writer in writers:
                writer.transport.abort()
        self._flowing.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        link = asyncio.ensure_future(
            asyncio.gather(
                self._pipe(reader, up_writer, None), self._pipe(up_reader, writer, self._flowing)
            )
        )
        self._links[link] = [writer, up_writer]
        try:
            await link
        except asyncio.CancelledError:
            pass
        finally:
            self._links.pop(link, None)
            writer.transport.abort()
            up_writer.transport.abort()

    @staticmethod
    async def _pipe(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gate: asyncio.Event | None
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            while data := await reader.read(65536):
                if gate is not None:
                    await gate.wait()
                writer.write(data)
                await writer.drain()
        writer.transport.abort()  # one side ended: so does the other


# --- the API -----------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    body: Any
    headers: Mapping[str, str]


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: Mapping[str, str] | None = None,
    json: Any = None,
    within: float = 15,
) -> Reply:
    """One request; it must be answered within ``within`` seconds (no hang)."""
    async with asyncio.timeout(within):
        async with http.request(method, url, headers=headers, json=json) as resp:
            body = await resp.json() if resp.content_type == "application/json" else None
            return Reply(resp.status, body, resp.headers)


def hello(name: str, seconds: float) -> dict[str, Any]:
    return {"job_type": "hello_world", "input_params": {"name": name, "processing_time": seconds}}


def greeting(name: str, seconds: float) -> dict[str, Any]:
    return {"message": f"Hello, {name}!", "processing_time": seconds}


async def submit(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> str:
    reply = await call(http, "POST", f"{url}/api/jobs/submit", SUBMIT, body)
    assert reply.status == 201, (reply.status, reply.body)
    return str(reply.body["job_id"])


async def job(http: aiohttp.ClientSession, url: str, job_id: str) -> dict[str, Any]:
    reply = await call(http, "GET", f"{url}/api/admin/jobs/{job_id}")
    assert reply.status == 200, (reply.status, reply.body)
    return dict(reply.body)


def status_is(
    http: aiohttp.ClientSession, url: str, job_id: str, status: str
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await job(http, url, job_id))["status"] == status

    return check


async def status_is_all(statuses: Callable[[], Awaitable[list[str]]], wanted: list[str]) -> bool:
    got = await statuses()
    assert not set(got) - {"pending", "claimed", "in_progress"}, got  # too late: nothing ended
    return got == wanted


def runner_connected(
    http: aiohttp.ClientSession, url: str, name: str
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        reply = await call(http, "GET", f"{url}/api/admin/runners", ADMIN)
        return any(r["name"] == name and r.get("connected") for r in reply.body["runners"])

    return check


async def job_count(http: aiohttp.ClientSession, url: str) -> int:
    reply = await call(http, "GET", f"{url}/api/admin/stats", ADMIN)
    assert reply.status == 200, reply.body
    return int(reply.body["jobs"]["total"])


async def read_events(
    http: aiohttp.ClientSession, url: str, job_id: str
) -> list[tuple[str, dict[str, Any]]] | None:
    """A job's SSE stream read to its end: [(event, data), …]; None if refused with 503."""
    out: list[tuple[str, dict[str, Any]]] = []
    kind = ""
    async with http.get(f"{url}/api/jobs/{job_id}/events") as resp:
        if resp.status == 503:
            return None
        assert resp.status == 200, await resp.text()
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                out.append((kind, orjson.loads(line[6:])))
    return out


def final_status(events: list[tuple[str, dict[str, Any]]]) -> str:
    kind, data = events[-1]
    assert kind in ("status", "snapshot"), events[-1]
    return str(data["status"])


def assert_completed_once(
    detail: dict[str, Any], name: str, seconds: float, runner_logs: str, attempts: int | None = 1
) -> None:
    """Completed with its own result, run once by one runner, its result applied once."""
    job_id = detail["job_id"]
    assert detail["status"] == "completed", detail
    assert detail["output_data"] == greeting(name, seconds), detail
    if attempts is not None:
        assert detail["attempts"] == attempts, detail
    console = detail["console_output"]
    assert console.count(f"Starting hello_world job for {name}") == 1, console
    assert console.count("Completed!") == 1, console
    assert runner_logs.count(f"job {job_id} (hello_world) started") == 1, job_id
    assert runner_logs.count(f"job {job_id} completed in") == 1, job_id


# --- a server killed and started again -----------------------------------------------------------


async def test_a_killed_server_restarted_on_its_database_loses_no_job(
    tmp_path: Path, database: str, procs: Procs
) -> None:
    server = Server(procs, tmp_path / "server", database)
    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(timeout=timeout) as http, HoldProxy(server.port) as proxy:
        await server.start(http)

        # A runner behind the proxy runs `unacked`, and the server stores its result,
        # but the ack is held back: the runner still holds the result when it dies.
        far = start_runner(procs, tmp_path / "far", proxy.url, "--name", "far")
        await until(runner_connected(http, server.url, "far"), "the runner behind the proxy")
        unacked = await submit(http, server.url, hello("unacked", 2))
        await until(status_is(http, server.url, unacked, "in_progress"), "`unacked` to run")
        proxy.hold()
        await until(status_is(http, server.url, unacked, "completed"), "`unacked` to be stored")
        # Its slot was free once it sent the result: `pushed` takes it, and its push
        # stops in the proxy too (the runner never hears of it).
        pushed = await submit(http, server.url, hello("pushed", 0))
        await until(status_is(http, server.url, pushed, "claimed"), "`pushed` to be claimed")

        # A second runner: `unsent` finishes while the server is frozen (its result
        # never reaches the database), `running` outlives the restart, and the
        # `queued` jobs wait for a free slot.
        near = start_runner(
            procs, tmp_path / "near", server.url, "--name", "near", "--concurrency", "2"
        )
        await until(runner_connected(http, server.url, "near"), "the second runner")
        unsent = await submit(http, server.url, hello("unsent", 2))
        running = await submit(http, server.url, hello("running", 5))
        queued = [await submit(http, server.url, hello(f"queued-{i}", 0)) for i in range(3)]

        async def statuses() -> list[str]:
            return [(await job(http, server.url, j))["status"] for j in (unsent, running, *queued)]

        await until(
            lambda: status_is_all(statuses, ["in_progress"] * 2 + ["pending"] * 3),
            "`unsent` and `running` to run",
        )
        server.freeze()
        await until(lambda: f"job {unsent} completed in" in near.log(), "`unsent` to finish")
        await server.kill()
        proxy.drop()

        await server.start(http)  # the same port and database
        names = {unacked: ("unacked", 2), unsent: ("unsent", 2), running: ("running", 5)}
        names.update({job_id: (f"queued-{i}", 0) for i, job_id in enumerate(queued)})
        for job_id in names:
            await until(status_is(http, server.url, job_id, "completed"), f"{job_id} to complete")

        await until(status_is(http, server.url, pushed, "completed"), "`pushed` to complete")
        logs = near.log() + far.log()
        for job_id, (name, seconds) in names.items():
            assert_completed_once(await job(http, server.url, job_id), name, seconds, logs)
        # `pushed` was queued again once the runner reconnected without it, and run once.
        assert_completed_once(await job(http, server.url, pushed), "pushed", 0, logs, attempts=2)
        assert await job_count(http, server.url) == len(names) + 1  # and no other job
        # `unacked` was stored before the kill: the runner drops its copy, never re-sends it.
        assert f"job {unacked} dropped: the server no longer assigns it" in far.log()
        # `unsent` never reached the database: sent again after the restart, and applied.
        assert f"did not apply the complete of job {unsent}" not in near.log()
        assert "resumed 2 jobs" in server.output()  # `unsent` and `running`, not run again

        for runner in (near, far):  # nothing left unacknowledged: both exit 0
            assert await procs.stop(runner.proc) == 0, runner.log()
        assert server.proc is not None
        assert await procs.stop(server.proc) == 0, server.output()


# --- PostgreSQL connections dropped under the server ---------------------------------------------

#: The server's statements blocked on a lock the test holds (fresh on every call).
WAITING = """SELECT pid, query FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'runpack'
               AND wait_event_type = 'Lock'"""
#: Every connection the server instances hold to this test's database.
DROP_ALL = """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
              WHERE datname = current_database() AND application_name = 'runpack'
                AND pid <> pg_backend_pid()"""
HEARTBEAT_SQL = "SET status = 'in_progress', last_heartbeat"
COMPLETE_SQL = "SET status = 'completed', output_data"
CANCEL_SQL = "SET status = 'cancelled'"


@pytest.fixture
async def pg() -> AsyncIterator[str]:
    require_postgres()
    async with fresh_database() as dsn:
        yield dsn


@dataclass
class Stream:
    """Jobs submitted one after another to a server, each watched to its end."""

    prefix: str
    jobs: dict[str, str] = field(default_factory=dict)  # name -> job id
    answers: list[int] = field(default_factory=list)  # every submit's status

    async def run(self, http: aiohttp.ClientSession, url: str, stop: asyncio.Event) -> None:
        while not stop.is_set():
            name = f"{self.prefix}-{len(self.jobs)}"
            while True:
                reply = await call(http, "POST", f"{url}/api/jobs/submit", SUBMIT, hello(name, 0))
                self.answers.append(reply.status)
                if reply.status != 503:
                    break
                # The drop: a clear answer, and the same submit again gets one job.
                assert reply.body["error"] == "Failed to submit job", reply.body
                await asyncio.sleep(float(reply.headers["Retry-After"]))
            assert reply.status in (200, 201), (reply.status, reply.body)
            self.jobs[name] = job_id = reply.body["job_id"]
            events = None
            while events is None:
                events = await asyncio.wait_for(read_events(http, url, job_id), 15)
            assert final_status(events) == "completed", events


async def test_dropped_database_connections_lose_no_job(
    tmp_path: Path, pg: str, procs: Procs
) -> None:
    a = Server(procs, tmp_path / "a", pg)
    b = Server(procs, tmp_path / "b", pg)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=20)
    monitor = await asyncpg.connect(pg)  # autocommit: a fresh pg_stat_activity each time
    locker = await asyncpg.connect(pg)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            await a.start(http)
            await b.start(http)
            runner = start_runner(
                procs, tmp_path / "runner", b.url, "--name", "on-b", "--concurrency", "3"
            )
            await until(runner_connected(http, b.url, "on-b"), "the runner on B")

            # Jobs submitted to A run on B; one is watched on A across the drop.
            finishing = await submit(http, a.url, hello("finishing", 2))
            watched = await submit(http, a.url, hello("watched", 4))
            victim = await submit(http, a.url, {"job_type": "nobody_runs_this", "input_params": {}})
            for job_id in (finishing, watched):
                await until(status_is(http, a.url, job_id, "in_progress"), f"{job_id} to run")
            watching = asyncio.create_task(read_events(http, a.url, watched))
            stop = asyncio.Event()
            streams = [Stream(f"stream-{i}") for i in range(2)]
            streaming = [asyncio.create_task(s.run(http, a.url, stop)) for s in streams]

            # Hold two rows, so that `finishing`'s result and a cancel of `victim`
            # are in flight when the connections go.
            tx = locker.transaction()
            await tx.start()
            await locker.execute(
                "SELECT id FROM jobs WHERE id = ANY($1::text[]) FOR UPDATE", [finishing, victim]
            )
            cancel = asyncio.create_task(
                call(http, "POST", f"{a.url}/api/jobs/{victim}/cancel", SUBMIT)
            )

            async def result_and_cancel_waiting() -> bool:
                rows = await monitor.fetch(WAITING)
                for row in rows:  # `finishing`'s heartbeats come first: cut them off
                    if HEARTBEAT_SQL in row["query"]:
                        await monitor.execute("SELECT pg_terminate_backend($1)", row["pid"])
                queries = [row["query"] for row in rows]
                return any(COMPLETE_SQL in q for q in queries) and any(
                    CANCEL_SQL in q for q in queries
                )

            await until(result_and_cancel_waiting, "the result and the cancel to wait")
            listening = (a.output().count(LISTENING), b.output().count(LISTENING))
            dropped = await monitor.fetchval(DROP_ALL)
            await tx.rollback()
            assert dropped >= 6, dropped  # two pools, and each instance's LISTEN and NOTIFY

            # The cancel was a write cut off mid-statement: a clear 503, never run twice.
            refused = await cancel
            assert refused.status == 503, (refused.status, refused.body)
            assert refused.body["error"] == "Failed to cancel job", refused.body
            assert refused.headers["Retry-After"] == "1"
            assert refused.headers["Access-Control-Allow-Origin"] == "*"
            again = await call(http, "POST", f"{a.url}/api/jobs/{victim}/cancel", SUBMIT)
            assert again.status == 200 and again.body["status"] == "cancelled", again.body

            # Both instances listen again...
            def relistened() -> bool:
                now = (a.output().count(LISTENING), b.output().count(LISTENING))
                return all(n > before for n, before in zip(now, listening, strict=True))

            await until(relistened, "both instances to LISTEN again")
            # ...so what B hears of a job submitted to A reaches A's watchers,
            after = await submit(http, a.url, hello("after", 1))
            events = await asyncio.wait_for(read_events(http, a.url, after), 15)
            assert events is not None
            kinds = [kind for kind, _ in events]
            assert kinds[0] == "snapshot" and "progress" in kinds, kinds
            assert final_status(events) == "completed", events
            assert events[-1][1]["result"]["output_data"] == greeting("after", 1)
            # ...and a cancel received by A reaches the runner connected to B.
            doomed = await submit(http, a.url, hello("doomed", 60))
            await until(status_is(http, a.url, doomed, "in_progress"), "`doomed` to run")
            reply = await call(http, "POST", f"{a.url}/api/jobs/{doomed}/cancel", ADMIN)
            assert reply.status == 200, reply.body
            await until(
                lambda: f"job {doomed} cancelled by the server" in runner.log(),
                "the cancel to reach the runner through B",
                10,
            )

            stop.set()
            await asyncio.wait_for(asyncio.gather(*streaming), 30)
            seen = await asyncio.wait_for(watching, 15)
            assert seen is not None and final_status(seen) == "completed", seen

            # Every job ended once, in the state it should.
            logs = runner.log()
            for job_id, name, seconds in (
                (finishing, "finishing", 2),
                (watched, "watched", 4),
                (after, "after", 1),
            ):
                assert_completed_once(await job(http, a.url, job_id), name, seconds, logs)
            # `finishing`'s result was cut off mid-write: B stored it on a later try.
            assert "result not stored" in b.output()
            assert f"did not apply the complete of job {finishing}" not in logs
            for stream in streams:
                assert set(stream.answers) <= {200, 201, 503}, stream.answers
                for name, job_id in stream.jobs.items():
                    # attempts may be 2: a claim whose answer was lost is made again
                    detail = await job(http, b.url, job_id)
                    assert_completed_once(detail, name, 0, logs, attempts=None)
            assert (await job(http, a.url, victim))["status"] == "cancelled"
            assert (await job(http, a.url, doomed))["status"] == "cancelled"
            total = 5 + sum(len(s.jobs) for s in streams)
            assert await job_count(http, a.url) == total  # nothing lost, nothing doubled

            assert await procs.stop(runner.proc) == 0, runner.log()
            for server in (a, b):
                assert server.proc is not None
                assert await procs.stop(server.proc) == 0, server.output()
    finally:
        await monitor.close()
        await locker.close()


# --- the same faults, made exactly, in one process -----------------------------------------------


def app_service(client: TestClient) -> JobService:
    assert client.app is not None
    return client.app[SERVICE]


async def test_a_claim_whose_answer_was_lost_is_queued_again(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim that commits but whose connection drops before the answer: the job
    is claimed for a runner that was never sent it. It goes back to the queue."""
    service = app_service(client)
    claim_batch = service.claim_batch
    lost: list[str] = []

    async def answer_lost(runner_id: str, job_types: Sequence[str], limit: int) -> list[JobRow]:
        jobs = await claim_batch(runner_id, job_types, limit)
        if jobs and not lost:
            lost.extend(job.id for job in jobs)
            raise StoreUnavailable(details="connection lost after the commit")
        return jobs

    monkeypatch.setattr(service, "claim_batch", answer_lost)
    ws = await client.ws_connect("/api/runner/ws", headers=RUNNER)
    hello = {"type": "hello", "name": "r", "capabilities": ["hello_world"], "concurrency": 1}
    await ws.send_json(hello)
    welcome = await ws.receive_json(timeout=5)
    # Queued before the runner has a slot, the job is claimed (not placed as inserted).
    job_id = (await conftest_submit(client, name="claimed twice"))["job_id"]
    await ws.send_json({"type": "ready", "slots": 1})
    frame = await ws.receive_json(timeout=10)
    assert frame["type"] == "job" and frame["job_id"] == job_id, frame
    assert lost == [job_id] and frame["attempt"] == 2  # the lost claim counts as an attempt
    row = await service.get_job(job_id)
    assert (row.status, row.claimed_by) == ("claimed", welcome["runner_id"])
    await ws.close()


async def test_a_new_job_placed_on_a_free_slot_whose_insert_answer_was_lost_runs(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job submitted while a runner has a free slot is inserted claimed for it. If
    that insert commits but its answer is lost, the submit fails and the runner is
    never sent the job: the hub takes it back, and it runs as its second attempt."""
    assert client.app is not None
    service, hub = app_service(client), client.app[HUB]
    insert_job = service.store.insert_job
    lost: list[tuple[str, str | None]] = []

    async def answer_lost(new: NewJob) -> tuple[JobRow, bool]:
        row, created = await insert_job(new)
        if not lost:
            lost.append((row.id, new.runner_id))
            raise StoreUnavailable(details="connection lost after the commit")
        return row, created

    monkeypatch.setattr(service.store, "insert_job", answer_lost)
    ws = await client.ws_connect("/api/runner/ws", headers=RUNNER)
    hello = {"type": "hello", "name": "r", "capabilities": ["hello_world"], "concurrency": 1}
    await ws.send_json(hello)
    welcome = await ws.receive_json(timeout=5)
    await ws.send_json({"type": "ready", "slots": 1})
    slot = lambda: hub.snapshot().get(welcome["runner_id"], {}).get("free_slots")  # noqa: E731
    await until(slot, "the runner's slot")
    async with asyncio.timeout(10):
        await hub.settled()  # the round the slot woke found nothing
    body = {"job_type": "hello_world", "input_params": {"name": "placed, answer lost"}}
    resp = await client.post("/api/jobs/submit", json=body, headers=CLIENT_SUBMIT)
    assert resp.status == 503, await resp.text()
    assert len(lost) == 1 and lost[0][1] == welcome["runner_id"]  # placed on the free slot
    frame = await ws.receive_json(timeout=10)
    assert frame["type"] == "job" and frame["job_id"] == lost[0][0], frame
    assert frame["attempt"] == 2  # taken back from the runner, then claimed for it
    row = await service.get_job(lost[0][0])
    assert (row.status, row.claimed_by) == ("claimed", welcome["runner_id"])
    await ws.close()


async def test_watchers_get_the_job_afresh_when_listen_is_reopened(client: TestClient) -> None:
    """Events from other instances published while this one was not listening are
    lost; once it listens again, every job stream gets the job as it is now."""
    service = app_service(client)
    job_id = (await conftest_submit(client, name="finished elsewhere"))["job_id"]
    runner_id = await register(client)
    await claim(client, runner_id, job_id)
    async with asyncio.timeout(10):
        resp = await client.get(f"/api/jobs/{job_id}/events")
        events = sse_lines(resp)
        kind, data = await anext(events)
        assert (kind, data["status"]) == ("snapshot", "claimed")
        # Completed through another instance, whose NOTIFY this one did not hear.
        assert await service.store.complete(job_id, runner_id, now_ms(), '{"x": 1}', None)
        again = ServerEvent("resync", data={"reconnected": True}, origin="this-instance")
        service.notifier.publish(again)
        rest = [item async for item in events]
    assert [kind for kind, _ in rest] == ["snapshot"], rest
    assert rest[0][1]["status"] == "completed" and rest[0][1]["output_data"] == {"x": 1}


async def sse_lines(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    kind = ""
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            yield kind, orjson.loads(line[6:])


async def no_job(job_id: str) -> None:
    return None


@contextlib.asynccontextmanager
async def two_bridges(
    pg: str, fetch_job: Callable[[str], Awaitable[Any]] = no_job
) -> AsyncIterator[tuple[Notifier, list[ServerEvent]]]:
    """Two instances' bridges on one database, both listening: yields the other
    instance's notifier and every event this instance heard from it (reading the
    fields too large to send with ``fetch_job``)."""
    heard: list[ServerEvent] = []
    here, there = Notifier(), Notifier()
    here.subscribe(heard.append)
    bridges = [PgBridge(pg, here, fetch_job, "here"), PgBridge(pg, there, no_job, "there")]
    try:
        for bridge in bridges:
            await bridge.start()
        async with asyncio.timeout(10):
            for bridge in bridges:
                await bridge.connected.wait()
        yield there, heard
    finally:
        for bridge in bridges:
            await bridge.close()


async def test_the_bridge_listens_again_at_once_when_its_connection_is_terminated(
    pg: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only hearing of the loss itself can wake the listener in time: no probe will.
    monkeypatch.setattr(notify, "LISTEN_PROBE", 600.0)
    admin = await asyncpg.connect(pg)
    try:
        async with two_bridges(pg) as (there, heard):
            async with asyncio.timeout(10):
                there.publish(ServerEvent("job_updated", "before", {"status": "in_progress"}))
                await until(lambda: any(e.job_id == "before" for e in heard), "the first event")
            assert await admin.fetchval(DROP_ALL) == 3  # two LISTEN connections, one NOTIFY
            async with asyncio.timeout(3):
                await until(
                    lambda: any(e.type == "resync" and e.data.get("reconnected") for e in heard),
                    "the listener to be back",
                )
                there.publish(ServerEvent("job_updated", "after", {"status": "completed"}))
                await until(lambda: any(e.job_id == "after" for e in heard), "events to flow")
            (after,) = [e for e in heard if e.job_id == "after"]
            assert after.origin == "there" and after.data == {"status": "completed"}
    finally:
        await admin.close()


async def test_events_published_together_cross_the_bridge_whole_and_in_order(pg: str) -> None:
    async with two_bridges(pg) as (there, heard):

        def crossed() -> list[ServerEvent]:
            return [e for e in heard if (e.job_id or "").startswith("job-")]

        for i in range(300):  # one turn of the loop: they leave as batches
            there.publish(ServerEvent("job_updated", f"job-{i}", {"status": "in_progress", "i": i}))
        async with asyncio.timeout(10):
            await until(lambda: len(crossed()) >= 300, "all of them")
        assert [e.data["i"] for e in crossed()] == list(range(300))
        assert all(e.origin == "there" for e in crossed())


def test_events_sent_together_share_payloads_that_postgresql_accepts() -> None:
    bridge = PgBridge("postgresql://unused", Notifier(), no_job, "there")
    events = [ServerEvent("job_updated", f"job-{i}", {"status": "in_progress"}) for i in range(300)]
    console = ServerEvent(
        "job_updated", "job-c", {"status": "in_progress", "console_append": "é" * 9000}
    )
    records = [r for e in [*events[:150], console, *events[150:]] for r in bridge.encode(e)]
    payloads = notify.pack("there", records)
    assert len(payloads) < 20  # not one per event
    assert all(len(p.encode()) < 8000 for p in payloads)  # PostgreSQL's limit, in bytes
    decoded = [orjson.loads(p) for p in payloads]
    assert all(d["o"] == "there" for d in decoded)
    assert [r for d in decoded for r in d["e"]] == [orjson.loads(r) for r in records]


async def test_a_long_error_message_crosses_the_bridge_read_from_the_database(pg: str) -> None:
    """Too long for a NOTIFY payload, it goes by name and the other instance reads
    it; before, the batch holding it failed, again and again, and held up the rest."""
    message = "traceback line\n" * 700  # 10 KB, the largest error a runner may send
    row = {"error_message": message}

    async def fetch_job(job_id: str) -> Any:
        return type("Job", (), row)()

    async with two_bridges(pg, fetch_job) as (there, heard):
        there.publish(
            ServerEvent("job_updated", "failed-job", {"status": "failed", "error_message": message})
        )
        there.publish(ServerEvent("job_updated", "next-job", {"status": "completed"}))
        async with asyncio.timeout(10):
            await until(lambda: any(e.job_id == "next-job" for e in heard), "the next event")
        (failed,) = [e for e in heard if e.job_id == "failed-job"]
        assert failed.data == {"status": "failed", "error_message": message}


async def test_a_payload_that_is_not_a_batch_of_events_is_ignored(pg: str) -> None:
    admin = await asyncpg.connect(pg)
    try:
        async with two_bridges(pg) as (there, heard):
            for junk in ["not json", '{"o": "elsewhere"}', '{"o": "x", "e": [{"j": "no type"}]}']:
                await admin.execute("SELECT pg_notify($1, $2)", notify.CHANNEL, junk)
            there.publish(ServerEvent("job_updated", "after-junk", {"status": "completed"}))
            async with asyncio.timeout(10):
                await until(lambda: any(e.job_id == "after-junk" for e in heard), "events to flow")
            assert [e.job_id for e in heard if e.type != "resync"] == ["after-junk"]
    finally:
        await admin.close()


async def test_a_hello_while_the_database_is_away_is_refused_clearly(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def away(*args: Any, **kwargs: Any) -> None:
        raise StoreUnavailable(details="connection refused")

    monkeypatch.setattr(app_service(client), "register_runner", away)
    ws = await client.ws_connect("/api/runner/ws", headers=RUNNER)
    await ws.send_json({"type": "hello", "name": "r", "capabilities": [], "concurrency": 1})
    frame = await ws.receive_json(timeout=5)
    assert frame == {
        "type": "error",
        "error": "Database unavailable: try again shortly",
        "ref": "hello",
    }
    closing = await ws.receive(timeout=5)  # and the socket closes: the runner comes back later
    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), closing
    await ws.close()
