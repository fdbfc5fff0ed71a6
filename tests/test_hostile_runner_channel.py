"""A hostile or broken runner against real ``runpack serve`` processes, on SQLite and
PostgreSQL: one bad frame cannot stop the store, a bad report gets the same answer
over HTTP and over the socket, ``/health`` tells when the store cannot write, runner
names and capabilities are bounded and the runner list is paged, a runner is never
pushed more jobs than its concurrency, and a completed job shows no old attempt's
error."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from runpack.errors import StoreError
from runpack.protocol import RUNNER_SECRET_HEADER
from runpack.store.sqlite import SqliteStore
from tests.procs import KEYS, NO_LIMITS, Proc, running_runner, running_server, until

RUNNER = {"Authorization": f"Bearer {KEYS['RUNPACK_RUNNER_API_KEY']}"}
SUBMIT = {"Authorization": f"Bearer {KEYS['RUNPACK_SUBMIT_API_KEY']}"}
ADMIN = {"Authorization": f"Bearer {KEYS['RUNPACK_ADMIN_API_KEY']}"}
UNKNOWN = "00000000-0000-4000-8000-000000000000"
#: Smaller than the defaults, so that the tests' oversized reports stay small.
MAX_CONSOLE = 2000
MAX_ERROR = 1000
SERVER_ENV = {
    **KEYS,
    **NO_LIMITS,
    "RUNPACK_RATE_HEARTBEAT": "0",
    "RUNPACK_MAX_CONSOLE_BYTES": str(MAX_CONSOLE),
    "RUNPACK_MAX_ERROR_BYTES": str(MAX_ERROR),
}


@pytest.fixture
def server(tmp_path: Path, database: str) -> Iterator[Proc]:
    with running_server(tmp_path / "server", SERVER_ENV, ("--db", database)) as proc:
        yield proc


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


class Channel:
    """A raw runner socket: what a hostile runner sends, frame by frame."""

    def __init__(
        self, ws: aiohttp.ClientWebSocketResponse, runner_id: str, secret: str | None = None
    ) -> None:
        self.ws = ws
        self.runner_id = runner_id
        self.secret = secret

    def http_headers(self) -> dict[str, str]:
        """The headers that make an HTTP report as this runner (its id and secret)."""
        headers = {"X-Runner-ID": self.runner_id}
        if self.secret is not None:
            headers[RUNNER_SECRET_HEADER] = self.secret
        return headers

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send_str(orjson.dumps(frame).decode())

    async def receive(self) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        frame: dict[str, Any] = orjson.loads(msg.data)
        return frame

    async def take(self, job_id: str) -> None:
        await self.send({"type": "ready", "slots": 1})
        frame = await self.receive()
        assert (frame["type"], frame["job_id"]) == ("job", job_id), frame


async def connect(
    http: aiohttp.ClientSession, server: Proc, job_type: str, concurrency: int = 1, **hello: Any
) -> Channel:
    ws = await http.ws_connect(server.url + "/api/runner/ws", headers=RUNNER)
    frame = {
        "type": "hello",
        "name": "hostile",
        "capabilities": [job_type],
        "concurrency": concurrency,
        **hello,
    }
    await ws.send_str(orjson.dumps(frame).decode())
    msg = await ws.receive(timeout=10)
    welcome = orjson.loads(msg.data)
    assert welcome["type"] == "welcome", welcome
    return Channel(ws, welcome["runner_id"], welcome.get("runner_secret"))


async def submit(http: aiohttp.ClientSession, server: Proc, job_type: str, **params: Any) -> str:
    body = {"job_type": job_type, "input_params": params}
    async with http.post(server.url + "/api/jobs/submit", json=body, headers=SUBMIT) as resp:
        assert resp.status == 201, await resp.text()
        return str((await resp.json())["job_id"])


async def detail(http: aiohttp.ClientSession, server: Proc, job_id: str) -> dict[str, Any]:
    async with http.get(f"{server.url}/api/admin/jobs/{job_id}", headers=ADMIN) as resp:
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


async def health(http: aiohttp.ClientSession, server: Proc) -> tuple[int, dict[str, Any]]:
    async with http.get(server.url + "/health") as resp:
        return resp.status, await resp.json()


# --- item 1: one bad frame, one set of rules, a store that cannot write ----------------------


async def test_an_out_of_range_heartbeat_is_refused_and_writes_go_on(
    server: Proc, http: aiohttp.ClientSession
) -> None:
    """The frame that wedged every SQLite write until a restart: refused with the
    HTTP path's answer, and the store writes on."""
    channel = await connect(http, server, "wedge")
    job_id = await submit(http, server, "wedge", n=1)
    await channel.take(job_id)
    for target in (UNKNOWN, job_id):
        await channel.send(
            {"type": "heartbeat", "job_id": target, "progress_current": 9223372036854775808}
        )
        reply = await channel.receive()
        assert reply["type"] == "error", reply
        assert (reply["error"], reply["ref"]) == ("Invalid field: progress_current", "heartbeat")
    # Every kind of write still works: a submit, a registration, a heartbeat, a result.
    await submit(http, server, "wedge", n=2)
    body = {"name": "after", "capabilities": ["wedge"]}
    async with http.post(server.url + "/api/runner/register", json=body, headers=RUNNER) as resp:
        assert resp.status == 201, await resp.text()
    await channel.send({"type": "heartbeat", "job_id": job_id, "progress_current": 1})
    await channel.send({"type": "complete", "job_id": job_id, "output_data": {"ok": True}})
    ack = await channel.receive()
    assert (ack["type"], ack["applied"]) == ("ack", True), ack
    job = await detail(http, server, job_id)
    assert (job["status"], job["output_data"]) == ("completed", {"ok": True})
    assert await health(http, server) == (200, {"status": "ok", "service": "runpack-worker"})
    await channel.ws.close()


#: (report, body): each refused with a 400 over HTTP and an ``error`` frame over the
#: socket, with the same error and details, and nothing changed.
BAD_REPORTS = [
    ("heartbeat", {"progress_current": 2**63}),
    ("heartbeat", {"progress_total": -(2**63)}),
    ("heartbeat", {"progress_current": 1.5}),
    ("heartbeat", {"progress_total": "many"}),
    ("heartbeat", {"console_output": "x" * (MAX_CONSOLE + 1)}),
    ("heartbeat", {"console_append": "é" * (MAX_CONSOLE // 2 + 1)}),
    ("heartbeat", {"console_output": 7}),
    ("error", {"error_message": "e" * (MAX_ERROR + 1)}),
    ("error", {"error_message": "failed", "retryable": "yes"}),
    ("error", {"error_message": ["failed"]}),
    ("complete", {"output_data": ["not", "an", "object"]}),
    ("release", {"reason": 5}),
]
#: A well-formed result refused for its size: the runner also hears it will never apply.
UNAPPLIED = ("error", "e" * (MAX_ERROR + 1))


async def test_a_bad_report_gets_the_same_answer_over_http_and_the_socket(
    server: Proc, http: aiohttp.ClientSession
) -> None:
    channel = await connect(http, server, "same_rules")
    job_id = await submit(http, server, "same_rules", n=1)
    await channel.take(job_id)
    headers = {**RUNNER, **channel.http_headers()}
    for kind, body in BAD_REPORTS:
        url = f"{server.url}/api/runner/jobs/{job_id}/{kind}"
        async with http.post(url, json=body, headers=headers) as resp:
            assert resp.status == 400, (kind, body, await resp.text())
            over_http = await resp.json()
        await channel.send({"type": kind, "job_id": job_id, **body})
        reply = await channel.receive()
        assert reply["type"] == "error", (kind, body, reply)
        assert reply["ref"] == kind, reply
        over_ws = {k: reply[k] for k in ("error", "details") if k in reply}
        assert over_ws == over_http, (kind, body)
        if (kind, body.get("error_message")) == UNAPPLIED:
            ack = await channel.receive()
            assert (ack["type"], ack["of"], ack["applied"]) == ("ack", "error", False), ack
    # Nothing changed: the job is still this runner's, with no error and no console.
    job = await detail(http, server, job_id)
    assert (job["status"], job["claimed_by"]) == ("claimed", channel.runner_id), job
    assert "error_message" not in job and job["console_output"] == "", job
    await channel.send({"type": "complete", "job_id": job_id, "output_data": {"ok": 1}})
    ack = await channel.receive()
    assert (ack["type"], ack["applied"]) == ("ack", True), ack
    await channel.ws.close()


async def test_a_release_reason_is_cut_the_same_on_both_channels(
    server: Proc, http: aiohttp.ClientSession
) -> None:
    channel = await connect(http, server, "long_reason")
    job_id = await submit(http, server, "long_reason", n=1)
    reason = "why " * 2500
    notes = []
    for over_http in (False, True):
        await channel.take(job_id)
        if over_http:
            headers = {**RUNNER, **channel.http_headers()}
            url = f"{server.url}/api/runner/jobs/{job_id}/release"
            async with http.post(url, json={"reason": reason}, headers=headers) as resp:
                assert resp.status == 200, await resp.text()
        else:
            await channel.send({"type": "release", "job_id": job_id, "reason": reason})
            ack = await channel.receive()
            assert (ack["type"], ack["of"], ack["applied"]) == ("ack", "release", True), ack
        job = await detail(http, server, job_id)
        assert job["status"] == "pending", job
        notes.append(job["error_message"])
    assert notes[0] == notes[1] == f"Released: {reason[:500]}"
    await channel.ws.close()


async def test_a_failing_write_leaves_no_transaction_open(tmp_path: Path) -> None:
    """Whatever a write raises, the next write starts a transaction of its own."""
    store = SqliteStore(str(tmp_path / "store.db"))
    await store.open()
    try:
        with pytest.raises(OverflowError):  # raised by the driver, before any change
            await store.heartbeat(UNKNOWN, UNKNOWN, 0, 2**63, None, None)

        def wrote_then_failed(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE schema_version SET applied_at = 42")
            raise ValueError("failed after its change")

        with pytest.raises(ValueError):
            await store._run(wrote_then_failed, savepoint=False)
        with pytest.raises(StoreError):  # a write of the same transaction goes with it
            await store.probe_write()
        await store.probe_write()  # the next transaction commits
        applied = store._get("SELECT MAX(applied_at) FROM schema_version", {})[0]
        assert applied != 42  # the half-done write was undone, not committed
    finally:
        await store.close()


async def test_health_is_503_while_the_store_cannot_write(
    server: Proc, database: str, http: aiohttp.ClientSession
) -> None:
    assert (await health(http, server))[0] == 200

    async def answers(status: int) -> bool:
        return (await health(http, server))[0] == status

    if database.startswith("postgresql://"):
        admin = await asyncpg.connect(database)
        name = database.rsplit("/", 1)[1]
        kill = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        kill += "WHERE datname = $1 AND pid <> pg_backend_pid()"
        try:
            await admin.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
            await admin.execute(kill, name)
            await until(lambda: answers(503), "/health to see a read-only database", 30)
            _, body = await health(http, server)
            assert body["error"] == "The database cannot write", body
            await admin.execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
            await admin.execute(kill, name)
            await until(lambda: answers(200), "/health to see a writable database again", 30)
        finally:
            await admin.close()
        return
    # SQLite: another process holds the write lock past the server's busy timeout.
    locker = sqlite3.connect(database, isolation_level=None)
    try:
        locker.execute("BEGIN IMMEDIATE")
        await until(lambda: answers(503), "/health to see a locked database", 30)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    await until(lambda: answers(200), "/health to see a writable database again", 30)


# --- item 10: bounded runner names and capabilities, a paged runner list ----------------------

LONG = "n" * 201
#: (name, capabilities) refused at registration and in a hello, with the rule broken.
BAD_REGISTRATIONS = [
    (LONG, ["a"], "name: at most 200 characters"),
    ("r", ["a"] * 257, "capabilities: at most 256 job types"),
    ("r", ["a", LONG], "capabilities: job types of 1 to 200 characters"),
    ("r", [""], "capabilities: job types of 1 to 200 characters"),
    ("r", "a", "capabilities: an array of job types"),
]


async def register(
    http: aiohttp.ClientSession, server: Proc, body: Any
) -> tuple[int, dict[str, Any]]:
    async with http.post(server.url + "/api/runner/register", json=body, headers=RUNNER) as resp:
        return resp.status, await resp.json()


async def hello_reply(
    http: aiohttp.ClientSession, server: Proc, name: Any, caps: Any, **extra: Any
) -> dict[str, Any]:
    ws = await http.ws_connect(server.url + "/api/runner/ws", headers=RUNNER)
    try:
        frame = {"type": "hello", "name": name, "capabilities": caps, "concurrency": 1, **extra}
        await ws.send_str(orjson.dumps(frame).decode())
        msg = await ws.receive(timeout=10)
        reply: dict[str, Any] = orjson.loads(msg.data)
        return reply
    finally:
        await ws.close()


async def test_runner_names_and_capabilities_are_bounded_on_both_channels(
    server: Proc, http: aiohttp.ClientSession
) -> None:
    known = await connect(http, server, "bounded")
    for name, caps, why in BAD_REGISTRATIONS:
        status, body = await register(http, server, {"name": name, "capabilities": caps})
        expected = {"error": "Invalid registration data", "details": why}
        assert (status, body) == (400, expected)
        # A new runner's hello, and one resuming a known runner id, get the same answer.
        for extra in ({}, {"runner_id": known.runner_id}):
            reply = await hello_reply(http, server, name, caps, **extra)
            assert reply["type"] == "error", reply
            assert (reply["error"], reply["details"], reply["ref"]) == (*expected.values(), "hello")
    # At the limits, both are fine.
    widest = {"name": "n" * 200, "capabilities": [f"{i:03d}" + "t" * 197 for i in range(256)]}
    assert (await register(http, server, widest))[0] == 201
    reply = await hello_reply(http, server, widest["name"], widest["capabilities"])
    assert reply["type"] == "welcome", reply
    await known.ws.close()


async def test_the_runner_list_is_paged(server: Proc, http: aiohttp.ClientSession) -> None:
    for i in range(101):
        body = {"name": f"r{i}", "capabilities": ["paged"]}
        assert (await register(http, server, body))[0] == 201

    async def page(query: str) -> tuple[int, dict[str, Any]]:
        async with http.get(f"{server.url}/api/admin/runners{query}", headers=ADMIN) as resp:
            return resp.status, await resp.json()

    # The original's clients read the first page: the 100 runners seen last.
    status, first = await page("")
    assert status == 200 and first["total"] == len(first["runners"]) == 100
    row = first["runners"][0]
    assert set(row) >= {"runner_id", "name", "capabilities", "last_seen", "is_active"}
    _, rest = await page("?offset=100")
    rows = first["runners"] + rest["runners"]
    seen = [r["runner_id"] for r in rows]
    assert len(set(seen)) == 101 and len(rest["runners"]) == 1
    last_seen = [r["last_seen"] for r in rows]
    assert last_seen == sorted(last_seen, reverse=True)
    _, small = await page("?limit=7&offset=3")
    assert [r["runner_id"] for r in small["runners"]] == seen[3:10]
    for query in ("?limit=0", "?limit=501", "?offset=-1", "?limit=x"):
        status, body = await page(query)
        assert status == 400 and "error" in body, (query, body)


async def runner_count(http: aiohttp.ClientSession, server: Proc) -> int:
    async with http.get(f"{server.url}/api/admin/runners?limit=500", headers=ADMIN) as resp:
        assert resp.status == 200, await resp.text()
        return len((await resp.json())["runners"])


async def test_one_address_cannot_register_runners_without_end(
    tmp_path: Path, database: str, http: aiohttp.ClientSession
) -> None:
    """Another lab's runner key registering runner after runner (each a row kept until
    RUNPACK_RUNNER_TTL): past RUNPACK_RATE_REGISTRATIONS, over HTTP and over the socket,
    it is refused and nothing is kept; a runner coming back under its id still is
    welcome."""
    env = {**SERVER_ENV, "RUNPACK_RATE_REGISTRATIONS": "3"}
    with running_server(tmp_path / "server", env, ("--db", database)) as server:
        body = {"name": "flood", "capabilities": ["flood"]}
        assert [(await register(http, server, body))[0] for _ in range(2)] == [201, 201]
        known = await connect(http, server, "flood")  # the third, over the socket
        status, refused = await register(http, server, body)
        assert status == 429, refused
        assert refused["limit"] == "registrations"
        assert "RUNPACK_RATE_REGISTRATIONS" in refused["details"]
        reply = await hello_reply(http, server, "flood", ["flood"])
        assert (reply["type"], reply["error"], reply["ref"]) == (
            "error",
            "Rate limit exceeded",
            "hello",
        )
        assert "RUNPACK_RATE_REGISTRATIONS" in reply["details"]
        assert await runner_count(http, server) == 3
        # Coming back under its id (and secret) registers nothing, and is not refused.
        await known.ws.close()
        back = await hello_reply(
            http,
            server,
            "flood",
            ["flood"],
            runner_id=known.runner_id,
            runner_secret=known.secret,
        )
        assert (back["type"], back["runner_id"]) == ("welcome", known.runner_id), back
        assert await runner_count(http, server) == 3


# --- item 14: a completed job shows no old attempt's error ------------------------------------


@pytest.fixture
def quick_server(tmp_path: Path, database: str) -> Iterator[Proc]:
    """A server that takes a job back after one silent second and retries it at once."""
    env = {
        **SERVER_ENV,
        "RUNPACK_HEARTBEAT_TIMEOUT": "1",
        "RUNPACK_SWEEP_INTERVAL": "0.2",
        "RUNPACK_RETRY_BASE_DELAY": "0.01",
        "RUNPACK_RETRY_MAX_DELAY": "0.01",
    }
    with running_server(tmp_path / "server", env, ("--db", database)) as proc:
        yield proc


async def test_a_job_completed_on_a_retry_shows_no_error(
    quick_server: Proc, http: aiohttp.ClientSession
) -> None:
    server = quick_server
    silent = await connect(http, server, "retried")
    job_id = await submit(http, server, "retried", n=1)
    await silent.take(job_id)

    async def lost() -> bool:
        return "Attempt 1 of 3 lost" in (await detail(http, server, job_id)).get(
            "error_message", ""
        )

    await until(lost, "the silent runner's attempt to be taken back")
    other = await connect(http, server, "retried")
    await other.send({"type": "ready", "slots": 1})
    frame = await other.receive()
    assert (frame["type"], frame["job_id"], frame["attempt"]) == ("job", job_id, 2), frame
    await other.send({"type": "complete", "job_id": job_id, "output_data": {"n": 1}})
    ack = await other.receive()
    assert (ack["type"], ack["applied"]) == ("ack", True), ack
    job = await detail(http, server, job_id)
    assert (job["status"], job["attempts"], job["output_data"]) == ("completed", 2, {"n": 1})
    assert "error_message" not in job, job
    async with http.get(f"{server.url}/api/jobs/{job_id}", headers=SUBMIT) as resp:
        status = await resp.json()
    assert status["status"] == "completed" and "error" not in status, status
    assert "re-queued: runner" in server.output()  # the lost attempt is in the log
    await asyncio.gather(silent.ws.close(), other.ws.close())


# --- item 12: never more jobs pushed than slots, never more handlers than --concurrency -------


class Pushes:
    """What the server sends a raw runner that floods ``ready``: the jobs pushed, and
    how many were out at once (pushed, and not yet reported by the runner)."""

    def __init__(self, channel: Channel, concurrency: int) -> None:
        self.channel = channel
        self.concurrency = concurrency
        self.jobs: list[str] = []
        self.reported = 0
        self.most = 0
        self.acks: set[str] = set()
        self.sentinel = asyncio.Event()

    async def read(self) -> None:
        while True:
            frame = await self.channel.receive()
            if frame["type"] == "job":
                self.jobs.append(frame["job_id"])
                self.most = max(self.most, len(self.jobs) - self.reported)
            elif frame["type"] == "ack":
                self.acks.add(frame["job_id"])
            elif frame["type"] == "error" and frame.get("ref") == "ready":
                self.sentinel.set()  # every frame sent before it was handled

    async def flood(self, frames: int) -> None:
        for _ in range(frames):
            await self.channel.send({"type": "ready", "slots": 1})

    async def handled(self) -> None:
        """Wait until the server has handled every frame sent so far."""
        self.sentinel.clear()
        await self.channel.send({"type": "ready"})  # no slots: answered with an error
        await asyncio.wait_for(self.sentinel.wait(), 10)

    def all_acked(self) -> bool:
        return self.acks >= set(self.jobs[: self.reported])

    def unreported(self) -> list[str]:
        return self.jobs[self.reported :]

    async def report(self, job_id: str) -> None:
        self.reported += 1  # before the send: its slot may be used as soon as it arrives
        await self.channel.send({"type": "complete", "job_id": job_id, "output_data": {}})


@pytest.mark.parametrize("concurrency", [1, 2])
async def test_ready_floods_never_get_a_runner_more_jobs_than_its_slots(
    server: Proc, http: aiohttp.ClientSession, concurrency: int
) -> None:
    job_type = f"flood_{concurrency}"
    channel = await connect(http, server, job_type, concurrency=concurrency)
    pushes = Pushes(channel, concurrency)
    reader = asyncio.create_task(pushes.read())
    try:
        # `ready` frames pour in while jobs are submitted (placed on free slots as they
        # are inserted, or claimed for the runner): none adds a slot on top of those
        # already reserved, taken or granted.
        jobs = 16
        submits = asyncio.gather(*(submit(http, server, job_type, n=i) for i in range(jobs)))
        await asyncio.gather(submits, pushes.flood(400))
        await pushes.handled()

        async def claims_settled() -> bool:
            url = f"{server.url}/api/admin/runners/{channel.runner_id}"
            async with http.get(url, headers=ADMIN) as resp:
                body = await resp.json()
            claimed = [j["job_id"] for j in body["jobs"] if j["status"] == "claimed"]
            return sorted(claimed) == sorted(pushes.jobs) and len(claimed) == concurrency

        await until(claims_settled, "the server's claims to match the jobs pushed")
        assert len(pushes.jobs) == concurrency == pushes.most
        # Each result frees one slot; floods after it add nothing more.
        for _ in range(jobs):
            [job_id, *_] = await until(pushes.unreported, "a job pushed to the runner")
            await pushes.report(job_id)
            await pushes.flood(20)
            await pushes.handled()
            await until(pushes.all_acked, "the results sent to be acknowledged")
            assert pushes.most <= concurrency, pushes.most
        assert len(pushes.jobs) == jobs and pushes.most == concurrency
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await channel.ws.close()


async def test_a_real_runner_never_runs_more_jobs_than_its_concurrency(
    server: Proc, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    jobs = [
        await submit(http, server, "hello_world", name=f"n{i}", processing_time=0.3)
        for i in range(12)
    ]
    most = 0

    async def all_done() -> bool:
        nonlocal most
        async with http.get(server.url + "/api/admin/jobs?limit=100", headers=ADMIN) as resp:
            states = {j["job_id"]: j["status"] for j in (await resp.json())["jobs"]}
        running = sum(states[j] in ("claimed", "in_progress") for j in jobs)
        assert running <= 2, states
        most = max(most, running)
        return all(states[j] == "completed" for j in jobs)

    folder = tmp_path / "runner"
    with running_runner(folder, server.url, "--concurrency", "2"):
        await until(all_done, "twelve jobs to complete", 60)
    assert most == 2
    # The runner's own record: never more than two handlers running at once.
    running: set[str] = set()
    for line in (folder / "runpack_runner.log").read_text().splitlines():
        words = line.split()
        if "job" in words and words.index("job") + 1 < len(words):
            job_id = words[words.index("job") + 1]
            if "started," in words:
                running.add(job_id)
                assert len(running) <= 2, line
            elif "completed" in words:
                running.discard(job_id)
    assert not running
