"""The deployment guide's nginx, for real: its own nginx.conf and site (tests/nginx.py
says what is rewritten), TLS with a self-signed certificate, in front of ``runpack
serve`` instances on one PostgreSQL, with runners and watchers through it.

- 1,000 Server-Sent Event watchers stream at once, through TLS, with no 5xx, and all
  hear the job's end, run by a runner whose WebSocket goes through nginx too.
- ``nginx -s reload`` does not strand runner sockets: the old workers close them
  after the guide's ``worker_shutdown_timeout`` and the runners are back at once.
- After a failover the survivor holds every runner; once the other instance is back,
  runners are spread again (``RUNPACK_REBALANCE_INSTANCES`` and
  ``RUNPACK_REBALANCE_RUNNERS`` scale it up, as docs/deployment.md measured it).
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.nginx import Nginx, instances, running_nginx
from tests.pg import fresh_database, require_postgres
from tests.procs import KEYS, NO_LIMITS, Proc, running_runner, until

SUBMIT = {"Authorization": f"Bearer {KEYS['RUNPACK_SUBMIT_API_KEY']}"}
ADMIN = {"Authorization": f"Bearer {KEYS['RUNPACK_ADMIN_API_KEY']}"}
WATCHERS = int(os.environ.get("RUNPACK_NGINX_WATCHERS", "1000"))
#: The guide's worker_shutdown_timeout (10 s), and time for the runners to come back.
RELOAD_LIMIT = 20.0


@pytest.fixture
async def dsn() -> AsyncIterator[str]:
    require_postgres()
    async with fresh_database() as url:
        yield url


def server_env(dsn: str, **extra: str) -> dict[str, str]:
    return {
        **KEYS,
        "RUNPACK_DB": dsn,
        "RUNPACK_TRUST_PROXY": "true",
        **NO_LIMITS,
        "RUNPACK_LOG_LEVEL": "warning",
        **extra,
    }


def more_open_files() -> None:
    """Each watcher holds a socket in this process: lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def session(nginx: Nginx) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, ssl=nginx.ssl_context()))


def runners_through(
    stack: ExitStack, tmp: Path, nginx: Nginx, count: int, *args: str
) -> list[Proc]:
    """``count`` runners whose WebSockets go through nginx (trusting its certificate)."""
    env = {"SSL_CERT_FILE": str(nginx.cert), "RUNPACK_LOG_LEVEL": "info"}
    return [
        stack.enter_context(running_runner(tmp / f"runner-{i}", nginx.url, *args, env=env))
        for i in range(count)
    ]


async def submit(http: aiohttp.ClientSession, url: str, **params: Any) -> str:
    body = {"job_type": "hello_world", "input_params": params}
    async with http.post(f"{url}/api/jobs/submit", json=body, headers=SUBMIT) as resp:
        assert resp.status == 201, await resp.text()
        return str((await resp.json())["job_id"])


async def runners_view(http: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    async with http.get(f"{url}/api/admin/runners", headers=ADMIN) as resp:
        assert resp.status == 200, await resp.text()
        return list((await resp.json())["runners"])


async def per_instance(http: aiohttp.ClientSession, url: str) -> Counter[str]:
    return Counter(r["instance"] for r in await runners_view(http, url) if r["connected"])


@pytest.mark.timeout(120)  # 1,000 TLS handshakes on a shared two-core machine
async def test_guide_nginx_streams_a_thousand_watchers_and_runner_sockets(
    tmp_path: Path, dsn: str
) -> None:
    more_open_files()
    with (
        instances(tmp_path, 2, server_env(dsn)) as (a, b),
        running_nginx([a.port, b.port]) as nginx,
        ExitStack() as stack,
    ):
        async with session(nginx) as http:
            # Port 80 only redirects to HTTPS.
            plain = f"http://127.0.0.1:{nginx.http_port}/health"
            async with http.get(plain, allow_redirects=False) as resp:
                assert resp.status == 301
                assert resp.headers["Location"].startswith("https://")
            job_id = await submit(http, nginx.url, name="nginx-watchers", processing_time=1)

            statuses: Counter[int | str] = Counter()  # an HTTP status, or an exception
            settled = 0  # watchers with their snapshot, or with an answer that is not one
            everyone_in = asyncio.Event()
            opening = asyncio.Semaphore(100)  # TLS handshakes in flight at once

            def settle(status: int | str) -> None:
                nonlocal settled
                statuses[status] += 1
                settled += 1
                if settled == WATCHERS:
                    everyone_in.set()

            async def watch() -> list[str]:
                kinds: list[str] = []
                try:
                    async with opening:
                        resp = await http.get(f"{nginx.url}/api/jobs/{job_id}/events")
                except aiohttp.ClientError as exc:
                    settle(type(exc).__name__)
                    return kinds
                async with resp:
                    if resp.status != 200:
                        settle(resp.status)
                        return kinds
                    async for raw in resp.content:
                        line = raw.decode().rstrip("\n")
                        if line.startswith("event: "):
                            kinds.append(line[7:])
                            if line == "event: snapshot":
                                settle(200)
                        elif line.startswith("data: ") and kinds[-1] == "status":
                            kinds[-1] = f"status {line[6:]}"
                return kinds

            started = time.monotonic()
            watchers = [asyncio.create_task(watch()) for _ in range(WATCHERS)]
            try:
                await asyncio.wait_for(everyone_in.wait(), 40)
                print(f"\n{WATCHERS} watchers streaming in {time.monotonic() - started:.1f} s")
                assert statuses == {200: WATCHERS}, (statuses, nginx.log()[-1000:])
            except BaseException:
                for task in watchers:
                    task.cancel()
                raise
            assert "worker_connections are not enough" not in nginx.log()
            # Both instances hold watchers; a runner reaches one through nginx (WebSocket).
            runners_through(stack, tmp_path, nginx, 1)
            ends = await asyncio.wait_for(asyncio.gather(*watchers), 60)
            done = [k[0] == "snapshot" and '"status":"completed"' in k[-1] for k in ends]
            assert all(done), {tuple(k) for k in ends}
            view = await runners_view(http, nginx.url)
            assert [r["transport"] for r in view if r["connected"]] == ["websocket"]


def connections(runner: Proc) -> int:
    return runner.output().count("connected to https://")


async def test_a_reload_does_not_strand_runner_sockets(tmp_path: Path, dsn: str) -> None:
    with (
        instances(tmp_path, 2, server_env(dsn)) as (a, b),
        running_nginx([a.port, b.port]) as nginx,
        ExitStack() as stack,
    ):
        runners = runners_through(stack, tmp_path, nginx, 2)
        async with session(nginx) as http:

            async def all_connected() -> bool:
                view = await runners_view(http, nginx.url)
                return sum(r["connected"] for r in view) == len(runners)

            await until(all_connected, "both runners on an instance through nginx", 30)
            assert all(connections(r) == 1 for r in runners)
            old = nginx.workers()
            started = time.monotonic()
            nginx.reload()
            await until(
                lambda: not (old & nginx.workers()) and all(connections(r) == 2 for r in runners),
                "the old workers to end and the runners to reconnect",
                RELOAD_LIMIT + 5,
            )
            elapsed = time.monotonic() - started
            print(f"\nrunners back on new workers {elapsed:.1f} s after the reload")
            assert elapsed < RELOAD_LIMIT, elapsed
            await until(all_connected, "both runners connected after the reload", 10)
            job_id = await submit(http, nginx.url, name="after-reload", processing_time=0)

            async def completed() -> bool:
                async with http.get(f"{nginx.url}/api/jobs/{job_id}", headers=SUBMIT) as resp:
                    return bool((await resp.json()).get("status") == "completed")

            await until(completed, "a job run through the new workers", 20)


def _scaled(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


async def test_runners_spread_again_after_a_failover(tmp_path: Path, dsn: str) -> None:
    count = _scaled("RUNPACK_REBALANCE_INSTANCES", 2)
    runner_count = _scaled("RUNPACK_REBALANCE_RUNNERS", 6)
    env = server_env(dsn, RUNPACK_PRESENCE_INTERVAL="1")
    with (
        instances(tmp_path, count, env) as servers,
        running_nginx([s.port for s in servers]) as nginx,
        ExitStack() as stack,
    ):
        runners_through(stack, tmp_path, nginx, runner_count)
        async with session(nginx) as http:
            view = lambda: per_instance(http, nginx.url)  # noqa: E731

            async def counted(n: int, instances_holding: int | None = None) -> Counter[str]:
                seen = await view()
                held = sum(seen.values()) == n
                ok = held and (instances_holding is None or len(seen) == instances_holding)
                return seen if ok else Counter()

            await until(lambda: counted(runner_count), "every runner connected", 60)
            before = await view()
            # A failover: every instance but the last stops; the last holds every runner.
            for server in servers[:-1]:
                server.stop()
            await until(lambda: counted(runner_count, 1), "the runners on the survivor", 60)
            after_failover = await view()
            started = time.monotonic()
            for server in servers[:-1]:
                server.start()
            share = -(-runner_count // count)

            async def spread() -> Counter[str]:
                seen = await counted(runner_count, count)
                return seen if seen and max(seen.values()) <= share + 1 else Counter()

            spread_out = await until(spread, "the runners spread again", 60)
            took = time.monotonic() - started
            print(
                f"\nrunners per instance: at first {sorted(before.values())}, after the "
                f"failover {sorted(after_failover.values())}, {took:.1f} s after the "
                f"restart {sorted(spread_out.values())}"
            )
            # The views of every instance agree with nginx's answer.
            for server in servers:
                assert await per_instance(http, server.url) == spread_out
