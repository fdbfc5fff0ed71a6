"""``runpack bench``: end-to-end throughput and latency, like pgbench or redis-benchmark.

It starts a server (SQLite, or PostgreSQL with ``--db``) and runner processes on
loopback, or targets a running server with ``--url``; submits distinct no-op jobs
from concurrent clients; follows them on the admin event stream; and reports
jobs/s end to end, submit→start and submit→completed latency percentiles,
cache-hit submits/s, and the peak memory of the server and the runners.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from runpack.bench_figures import (
    cpu_ms_per_job,
    cpu_seconds,
    database_kind,
    peak_rss_mb,
    percentiles,
)
from runpack.bench_http import LeanHttp, Poster
from runpack.eventloop import run

BENCH_KEYS = {
    "RUNPACK_SUBMIT_API_KEY": "bench-submit",
    "RUNPACK_RUNNER_API_KEY": "bench-runner",
    "RUNPACK_ADMIN_API_KEY": "bench-admin",
}
JOB_TYPE = "noop"


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """What to run (``runpack bench``'s flags)."""

    jobs: int = 2000
    runners: int = 1
    runner_concurrency: int = 16
    concurrency: int = 32
    latency_jobs: int = 200
    warmup: int = 20
    cache_hits: int = 5000
    #: A SQLite path or postgresql:// DSN; None for SQLite in a temporary folder.
    db: str | None = None
    #: A running server to target instead of starting one (keys from the environment).
    url: str | None = None
    timeout: float = 300
    #: Settings of the server it starts, as NAME=VALUE (``--set place_new_jobs=false``).
    set: tuple[str, ...] = ()


@dataclass
class Timeline:
    """When the admin stream showed each job start and finish (client clock)."""

    started: dict[str, float] = field(default_factory=dict)
    completed: dict[str, float] = field(default_factory=dict)
    waiters: dict[str, asyncio.Future[None]] = field(default_factory=dict)

    def saw(self, job_id: str, status: str, t: float) -> None:
        if status == "claimed":
            self.started.setdefault(job_id, t)
        elif status in ("completed", "failed"):
            self.completed.setdefault(job_id, t)
            waiter = self.waiters.pop(job_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def completion(self, job_id: str) -> asyncio.Future[None]:
        """A future done once the job finished (at once if it already has)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if job_id in self.completed:
            fut.set_result(None)
        else:
            self.waiters[job_id] = fut
        return fut


#: A server's rate limits off, for clients that submit more than a page would (the
#: bench, and the tests' servers).
NO_LIMITS = {
    "RUNPACK_RATE_NEW_JOBS": "0",
    "RUNPACK_RATE_KEY_NEW_JOBS": "0",
    "RUNPACK_RATE_REQUESTS": "0",
    "RUNPACK_RATE_REGISTRATIONS": "0",
}
#: What the bench sets on the server it starts: no rate limit, few log lines.
SERVER_SETTINGS = {**NO_LIMITS, "RUNPACK_LOG_LEVEL": "warning"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _processes(
    args: BenchOptions, workdir: Path, environ: Mapping[str, str]
) -> Iterator[tuple[str, list[int], Callable[[], str | None]]]:
    """Start the server and runners; yield (url, [server pid, runner pids…], exited):
    ``exited()`` says which process ended early, and the last line it logged."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in environ.items() if not k.startswith("RUNPACK_")}
    env.update(BENCH_KEYS)
    db = args.db or str(workdir / "bench.db")
    procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []  # (who, process, its log)

    def start(who: str, cmd: list[str], env: dict[str, str], folder: Path, cwd: bool) -> None:
        """``cwd``: run in ``folder`` (a runner keeps its identity file there), or here
        (the server, so that a relative --db is the user's)."""
        folder.mkdir(exist_ok=True)
        log_path = folder / "output.log"
        with log_path.open("ab") as log:  # the child keeps its own copy open
            where = folder if cwd else None
            proc = subprocess.Popen(cmd, env=env, cwd=where, stdout=log, stderr=log)
        procs.append((who, proc, log_path))

    try:
        server_cmd = [sys.executable, "-m", "runpack.cli", "serve", "--host", "127.0.0.1"]
        server_cmd += ["--port", str(port), "--data-dir", str(workdir / "data")]
        server_env = {
            **env,
            "RUNPACK_DB": db,  # not on the command line, where ps shows a DSN's password
            **SERVER_SETTINGS,
        }
        for setting in args.set:
            name, _, value = setting.partition("=")
            server_env[f"RUNPACK_{name.strip().upper().replace('-', '_')}"] = value
        start("the server", server_cmd, server_env, workdir / "server", cwd=False)
        runner_env = {**env, "RUNPACK_WORKER_URL": url, "RUNPACK_LOG_LEVEL": "warning"}
        for i in range(args.runners):
            cmd = [sys.executable, "-m", "runpack_runner.cli", "--name", f"bench-{i}"]
            cmd += ["--concurrency", str(args.runner_concurrency), "--job-types", JOB_TYPE]
            start(f"runner bench-{i}", cmd, runner_env, workdir / f"runner-{i}", cwd=True)

        def exited() -> str | None:
            for who, proc, log_path in procs:
                if proc.poll() is not None:
                    lines = log_path.read_text(errors="replace").strip().splitlines()
                    last = f": {lines[-1]}" if lines else ""
                    return f"{who} exited with status {proc.returncode}{last}"
            return None

        yield url, [proc.pid for _, proc, _ in procs], exited
    finally:
        for _, proc, _ in procs:
            if proc.poll() is None:
                proc.terminate()
        for _, proc, _ in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


async def _wait_ready(
    session: aiohttp.ClientSession,
    url: str,
    admin: dict[str, str],
    runners: int,
    exited: Callable[[], str | None],
) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (ended := exited()) is not None:
            raise SystemExit(f"runpack bench: {ended}")
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(f"{url}/api/admin/runners", headers=admin) as resp:
                if resp.status in (401, 403):
                    raise SystemExit(
                        f"runpack bench: {url} refused the admin key ({resp.status}): "
                        "set RUNPACK_ADMIN_API_KEY and RUNPACK_SUBMIT_API_KEY to its keys"
                    )
                if resp.status == 200:
                    body = await resp.json()
                    live = [r for r in body["runners"] if r.get("connected")]
                    if len(live) >= runners:
                        return
        await asyncio.sleep(0.1)
    raise SystemExit(f"runpack bench: {runners} runner(s) did not connect to {url} in 60 s")


async def _follow(
    session: aiohttp.ClientSession,
    url: str,
    admin: dict[str, str],
    timeline: Timeline,
    ready: asyncio.Event,
    statuses: str,
) -> None:
    """Read the admin event stream, noting when each job started and finished.
    Only the statuses it times are sent: the bench's own watching costs the server
    as little as it can."""
    follow = f"{url}/api/admin/events?status={statuses}"
    async with session.get(follow, headers=admin, timeout=None) as resp:
        resp.raise_for_status()
        ready.set()
        event = ""
        async for raw in resp.content:
            line = raw.rstrip(b"\n")
            if line.startswith(b"event: "):
                event = line[7:].decode()
            elif line.startswith(b"data: ") and event == "status":
                data = orjson.loads(line[6:])
                timeline.saw(data["job_id"], data["status"], time.perf_counter())


async def _submit_all(
    poster: Poster,
    bodies: list[bytes],
    clients: int,
    on_answer: Any = None,
) -> float:
    """Submit every body with ``clients`` concurrent clients; return the elapsed seconds."""
    raws = [poster.prepare(body) for body in bodies]
    conns = [await poster.connect() for _ in range(min(clients, len(raws)))]
    queue = iter(range(len(raws)))

    async def client(conn: LeanHttp) -> None:
        for i in queue:
            t = time.perf_counter()
            status, body = await conn.request(raws[i])
            if status not in (200, 201):
                raise SystemExit(f"runpack bench: submit answered {status}: {body[:200]!r}")
            if on_answer is not None:
                on_answer(i, t, body)

    try:
        start = time.perf_counter()
        await asyncio.gather(*(client(conn) for conn in conns))
        return time.perf_counter() - start
    finally:
        for conn in conns:
            conn.close()


async def _latency_phase(
    poster: Poster, timeline: Timeline, bodies: list[bytes], limit_s: float
) -> tuple[list[float], list[float]]:
    """One job at a time, each after the previous one completed: latency without a queue."""
    to_start: list[float] = []
    to_done: list[float] = []
    conn = await poster.connect()
    try:
        for raw in [poster.prepare(body) for body in bodies]:
            t0 = time.perf_counter()
            status, body = await conn.request(raw)
            if status not in (200, 201):
                raise SystemExit(f"runpack bench: submit answered {status}: {body[:200]!r}")
            job_id = orjson.loads(body)["job_id"]
            await asyncio.wait_for(timeline.completion(job_id), limit_s)
            to_start.append(timeline.started.get(job_id, timeline.completed[job_id]) - t0)
            to_done.append(timeline.completed[job_id] - t0)
    finally:
        conn.close()
    return to_start, to_done


async def run_bench(
    args: BenchOptions,
    url: str,
    pids: list[int],
    keys: Mapping[str, str],
    exited: Callable[[], str | None] = lambda: None,
) -> dict[str, Any]:
    submit_h = {
        "Authorization": f"Bearer {keys['RUNPACK_SUBMIT_API_KEY']}",
        "Content-Type": "application/json",
    }
    admin_h = {"Authorization": f"Bearer {keys['RUNPACK_ADMIN_API_KEY']}"}
    connector = aiohttp.TCPConnector(limit=args.concurrency + 4)
    async with aiohttp.ClientSession(connector=connector) as session:
        await _wait_ready(session, url, admin_h, args.runners if not args.url else 1, exited)
        run = uuid.uuid4().hex[:8]

        def bodies(phase: str, n: int) -> list[bytes]:
            params = ({"run": run, "phase": phase, "i": i} for i in range(n))
            return [orjson.dumps({"job_type": JOB_TYPE, "input_params": p}) for p in params]

        timeline = Timeline()

        @contextlib.asynccontextmanager
        async def following(statuses: str) -> AsyncIterator[None]:
            ready = asyncio.Event()
            follower = asyncio.create_task(
                _follow(session, url, admin_h, timeline, ready, statuses)
            )
            try:
                await asyncio.wait_for(ready.wait(), 10)
                yield
            finally:
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                    await follower

        poster = Poster(url, "/api/jobs/submit", submit_h)
        # 1. Latency: jobs one after another on an idle server, once the first few
        # have opened what a server opens on first use (database connections,
        # prepared statements, the runner's handler thread).
        async with following("claimed,completed,failed"):
            await _latency_phase(poster, timeline, bodies("warmup", args.warmup), args.timeout)
            idle_start, idle_done = await _latency_phase(
                poster, timeline, bodies("latency", args.latency_jobs), args.timeout
            )

        # 2. Throughput: every job at once from concurrent clients; only ends are followed.
        load = bodies("load", args.jobs)
        submitted: dict[str, float] = {}

        def answered(i: int, t: float, body: bytes) -> None:
            submitted[orjson.loads(body)["job_id"]] = t

        server_pids, runner_pids = pids[:1], pids[1:]
        server_cpu = [cpu_seconds(pid) for pid in server_pids]
        runner_cpu = [cpu_seconds(pid) for pid in runner_pids]
        async with following("completed,failed"):
            first = time.perf_counter()
            await _submit_all(poster, load, args.concurrency, answered)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(timeline.completion(j) for j in submitted)), args.timeout
                )
        finished = [timeline.completed[j] for j in submitted if j in timeline.completed]
        last = max(finished) if finished else time.perf_counter()
        server_ms = cpu_ms_per_job(server_pids, server_cpu, len(finished))
        runner_ms = cpu_ms_per_job(runner_pids, runner_cpu, len(finished))
        loaded_done = [
            timeline.completed[j] - t for j, t in submitted.items() if j in timeline.completed
        ]

        # 3. Cache hits: the same inputs again.
        hits = max(1, args.cache_hits)
        hit_elapsed = await _submit_all(
            poster, [load[i % len(load)] for i in range(hits)], args.concurrency
        )
    server_pid = server_pids[0] if server_pids else None
    runner_rss = [r for r in (peak_rss_mb(p) for p in runner_pids) if r is not None]
    return {
        "jobs": args.jobs,
        "completed": len(finished),
        # With --url the server, its database and its runners are not ours to know.
        "runners": None if args.url else args.runners,
        "runner_concurrency": None if args.url else args.runner_concurrency,
        "clients": args.concurrency,
        "db": None if args.url else database_kind(args.db),
        "elapsed_s": round(last - first, 3),
        "jobs_per_s": round(len(finished) / max(last - first, 1e-9), 1),
        "latency_jobs": args.latency_jobs,
        "warmup_jobs": args.warmup,
        "submit_to_start_ms": percentiles(idle_start),
        "submit_to_completed_ms": percentiles(idle_done),
        "under_load_submit_to_completed_ms": percentiles(loaded_done),
        "server_cpu_ms_per_job": server_ms,
        "runner_cpu_ms_per_job": runner_ms,
        "cache_hits": hits,
        "cache_hits_per_s": round(hits / hit_elapsed, 1),
        "server_rss_mb": peak_rss_mb(server_pid) if server_pid else None,
        "runner_rss_mb": max(runner_rss) if runner_rss else None,
        "runners_rss_total_mb": round(sum(runner_rss), 1) if runner_rss else None,
    }


def bench(args: BenchOptions, environ: Mapping[str, str]) -> dict[str, Any]:
    """Start the server and runners (or target ``args.url``, with the keys of
    ``environ``), run the three phases, and return the figures."""
    if min(args.jobs, args.runners, args.concurrency, args.runner_concurrency) < 1:
        raise SystemExit("runpack bench: --jobs, --runners and the concurrencies must be ≥ 1")
    if args.warmup < 0:
        raise SystemExit("runpack bench: --warmup must be ≥ 0")
    if args.url:
        keys = {k: environ.get(k, v) for k, v in BENCH_KEYS.items()}
        return run(run_bench(args, args.url.rstrip("/"), [], keys))
    with (
        tempfile.TemporaryDirectory(prefix="runpack-bench-") as tmp,
        _processes(args, Path(tmp), environ) as (url, pids, exited),
    ):
        return run(run_bench(args, url, pids, BENCH_KEYS, exited))
