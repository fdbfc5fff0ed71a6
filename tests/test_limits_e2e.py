"""Rate limits seen by real clients of a real ``runpack serve``: Neurosift's page meets
none with the defaults, a flood of new jobs from one address is refused while other
addresses go on, instances on one PostgreSQL share the budgets, local development on
loopback is not limited; and the CLI's refusals, ``--timeout`` and ``-q``."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from tests.pg import fresh_database, require_postgres
from tests.procs import KEYS, Proc, clean_env, running_runner, running_server, until

SUBMIT = {"Authorization": f"Bearer {KEYS['RUNPACK_SUBMIT_API_KEY']}"}
ADMIN = {"Authorization": f"Bearer {KEYS['RUNPACK_ADMIN_API_KEY']}"}
#: The server's defaults, with keys given: every limit applies, loopback included.
DEFAULTS = {**KEYS, "RUNPACK_LOG_LEVEL": "warning"}
NEUROSIFT = "https://neurosift.app"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def hello(name: str, **params: Any) -> dict[str, Any]:
    return {"job_type": "hello_world", "input_params": {"name": name, **params}}


@asynccontextmanager
async def session_from(ip: str, headers: dict[str, str]) -> AsyncIterator[aiohttp.ClientSession]:
    """A client whose connections come from ``ip`` (any 127.x.y.z is this machine)."""
    connector = aiohttp.TCPConnector(local_addr=(ip, 0))
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:
        yield http


def check_429(status: int, headers: Any, body: dict[str, Any], setting: str) -> None:
    assert status == 429, body
    assert body["error"] == "Rate limit exceeded"
    assert isinstance(body["resetTime"], int) and body["resetTime"] > time.time() * 1000
    assert setting in body["details"], body
    assert int(headers["Retry-After"]) >= 1


async def test_neurosift_page_meets_no_limit(tmp_path: Path, database: str) -> None:
    """What Neurosift's hook does, from one address, against the default settings:
    a preflight from its Origin, a check per figure view mounted (50 in a minute), a
    submit, status reads until the job is done, and the checks of the next page."""
    with (
        running_server(tmp_path / "server", DEFAULTS, ("--db", database)) as server,
        running_runner(tmp_path / "runner", server.url),
    ):
        url = server.url
        statuses: list[int] = []
        params = {"processing_time": 1}
        headers = {**SUBMIT, "Origin": NEUROSIFT}
        async with session_from("127.0.0.1", headers) as http:
            preflight = {
                "Origin": NEUROSIFT,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            }
            async with http.options(f"{url}/api/jobs/check", headers=preflight) as resp:
                assert resp.status == 204
                assert resp.headers["Access-Control-Allow-Origin"] == "*"
            for i in range(50):
                body = hello(f"unit-{i % 10}", **params)
                async with http.post(f"{url}/api/jobs/check", json=body) as resp:
                    statuses.append(resp.status)
                    assert (await resp.json())["exists"] is False
            async with http.post(f"{url}/api/jobs/submit", json=hello("unit-0", **params)) as resp:
                statuses.append(resp.status)
                job_id = (await resp.json())["job_id"]

            async def completed() -> bool:
                async with http.get(f"{url}/api/jobs/{job_id}") as resp:
                    statuses.append(resp.status)
                    return (await resp.json())["status"] == "completed"

            await until(completed, "the job to complete", limit=60)
            for _ in range(50):  # the next page view: the cached result
                async with http.post(f"{url}/api/jobs/check", json=hello("unit-0", **params)) as r:
                    statuses.append(r.status)
                    assert (await r.json())["status"] == "completed"
        assert 429 not in statuses
        assert set(statuses) == {200, 201}


async def test_a_flood_of_new_jobs_is_refused_and_other_addresses_go_on(
    tmp_path: Path, database: str
) -> None:
    with running_server(tmp_path / "server", DEFAULTS, ("--db", database)) as server:
        url = server.url
        refused = []
        async with (
            session_from("127.0.0.2", SUBMIT) as flooder,
            session_from("127.0.0.3", SUBMIT) as other,
        ):
            created = 0
            for i in range(30):  # the default burst is 20
                async with flooder.post(f"{url}/api/jobs/submit", json=hello(f"f{i}")) as resp:
                    if resp.status == 201:
                        created += 1
                    else:
                        refused.append((resp.status, resp.headers, await resp.json()))
            assert created == 20
            assert len(refused) == 10
            for status, headers, body in refused:
                check_429(status, headers, body, "RUNPACK_RATE_NEW_JOBS")
                assert body["limit"] == "new_jobs"
            # The flooder's cheap requests still pass: a cache hit, a check.
            async with flooder.post(f"{url}/api/jobs/submit", json=hello("f0")) as resp:
                assert resp.status == 200
            async with flooder.post(f"{url}/api/jobs/check", json=hello("f25")) as resp:
                assert resp.status == 200 and (await resp.json())["exists"] is False
            # Another address starts new work as if nothing happened.
            for i in range(5):
                async with other.post(f"{url}/api/jobs/submit", json=hello(f"o{i}")) as resp:
                    assert resp.status == 201
        async with (
            aiohttp.ClientSession(headers=ADMIN) as http,
            http.get(f"{url}/api/admin/stats") as resp,
        ):
            assert (await resp.json())["jobs"]["total"] == 25  # refused: nothing made


@asynccontextmanager
async def two_instances(
    tmp_path: Path, env: dict[str, str]
) -> AsyncIterator[tuple[tuple[Proc, Proc], aiohttp.ClientSession]]:
    """Two ``runpack serve`` on one fresh PostgreSQL database, and a submit-key client."""
    require_postgres()
    async with fresh_database() as dsn:
        with (
            running_server(tmp_path / "a", env, ("--db", dsn)) as a,
            running_server(tmp_path / "b", env, ("--db", dsn)) as b,
        ):
            async with aiohttp.ClientSession(headers=SUBMIT) as http:
                yield (a, b), http


async def test_instances_on_one_postgresql_share_the_new_work_budget(tmp_path: Path) -> None:
    async with two_instances(tmp_path, DEFAULTS) as (servers, http):
        # 20 new jobs at once per address, wherever they land.
        for i in range(20):
            body = hello(f"shared-{i}")
            async with http.post(f"{servers[i % 2].url}/api/jobs/submit", json=body) as resp:
                assert resp.status == 201
        for server in servers:
            body = hello(f"more-{server.url}")
            async with http.post(f"{server.url}/api/jobs/submit", json=body) as resp:
                body = await resp.json()
                check_429(resp.status, resp.headers, body, "RUNPACK_RATE_NEW_JOBS")


async def test_requests_budget_is_shared_between_instances(tmp_path: Path) -> None:
    env = {**DEFAULTS, "RUNPACK_RATE_REQUESTS": "10", "RUNPACK_RATE_REQUESTS_BURST": "10"}
    async with two_instances(tmp_path, env) as (servers, http):
        for i in range(10):
            async with http.post(f"{servers[i % 2].url}/api/jobs/check", json=hello("x")) as r:
                assert r.status == 200
        for server in servers:
            async with http.post(f"{server.url}/api/jobs/check", json=hello("x")) as r:
                check_429(r.status, r.headers, await r.json(), "RUNPACK_RATE_REQUESTS")


async def test_loopback_is_not_limited_in_local_development(tmp_path: Path) -> None:
    """With keys it generated (make run), the server limits no client on loopback;
    one from elsewhere (through a trusted proxy here) still is."""
    env = {"RUNPACK_TRUST_PROXY": "true", "RUNPACK_LOG_LEVEL": "warning"}
    with running_server(tmp_path / "server", env) as server:
        keys = dict(
            line.removeprefix("export ").split("=", 1)
            for line in (tmp_path / "server/runpack-data/dev-keys.env").read_text().splitlines()
        )
        headers = {"Authorization": f"Bearer {keys['RUNPACK_SUBMIT_API_KEY']}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            for i in range(30):
                body = hello(f"local-{i}")
                async with http.post(f"{server.url}/api/jobs/submit", json=body) as resp:
                    assert resp.status == 201
            outside = {"X-Forwarded-For": "203.0.113.7"}
            statuses = []
            for i in range(21):
                body = hello(f"remote-{i}")
                async with http.post(
                    f"{server.url}/api/jobs/submit", json=body, headers=outside
                ) as resp:
                    statuses.append(resp.status)
            assert statuses == [201] * 20 + [429]


# --- the command line ------------------------------------------------------------------------


def cli(url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = clean_env({**KEYS, "RUNPACK_URL": url})
    return subprocess.run(
        [sys.executable, "-m", "runpack.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_cli_reports_a_rate_limit_as_a_refusal(tmp_path: Path) -> None:
    # One new job at once, then one every 8 s (ample for a second command to start).
    env = {**DEFAULTS, "RUNPACK_RATE_NEW_JOBS": "1", "RUNPACK_RATE_NEW_JOBS_BURST": "1"}
    env["RUNPACK_RATE_WINDOW"] = "8"
    with running_server(tmp_path / "server", env) as server:
        first = cli(server.url, "submit", "hello_world", "-p", "name=first")
        assert first.returncode == 0, first.stderr
        refused = cli(server.url, "submit", "hello_world", "-p", "name=second")
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert refused.stdout == ""
        assert "Rate limit exceeded" in refused.stderr
        assert "RUNPACK_RATE_NEW_JOBS" in refused.stderr
        assert re.search(r"Try again in \d+ s, or pass --retry", refused.stderr), refused.stderr
        # --retry waits as long as the server says, then gets its job.
        waited = cli(server.url, "submit", "hello_world", "-p", "name=second", "--retry")
        assert waited.returncode == 0, waited.stderr
        assert '"status": "pending"' in waited.stdout


def test_submit_id_only_and_wait_timeout(tmp_path: Path) -> None:
    """No runner handles the type: ``--wait --timeout`` gives up with 124, the job
    left pending; ``-q`` prints the id alone."""
    with running_server(tmp_path / "server", DEFAULTS) as server:
        started = time.monotonic()
        waited = cli(
            server.url, "submit", "nobody_runs_this", "-p", "n=1", "--wait", "--timeout", "1"
        )
        assert waited.returncode == 124, waited.stderr
        assert time.monotonic() - started < 30
        assert "gave up waiting after 1 s" in waited.stderr
        job_id = re.search(r"job ([0-9a-f-]{36}) goes on", waited.stderr)
        assert job_id is not None, waited.stderr
        status = cli(server.url, "status", job_id.group(1), "--json")
        assert '"status": "pending"' in status.stdout

        quiet = cli(server.url, "submit", "nobody_runs_this", "-p", "n=2", "-q")
        assert quiet.returncode == 0, quiet.stderr
        assert UUID.fullmatch(quiet.stdout.strip()), quiet.stdout
        assert quiet.stdout.count("\n") == 1
        # The same job again: the same id.
        again = cli(server.url, "submit", "nobody_runs_this", "-p", "n=2", "--id-only")
        assert again.stdout == quiet.stdout
        # With --wait too: the id alone on stdout, the ending in the exit status.
        both = cli(
            server.url, "submit", "nobody_runs_this", "-p", "n=3", "-q", "--wait", "--timeout", "1"
        )
        assert both.returncode == 124, both.stderr
        assert UUID.fullmatch(both.stdout.strip()), both.stdout
        # --timeout goes with --wait, and is a number of seconds above 0.
        for args in (["--timeout", "1"], ["--wait", "--timeout", "0"]):
            result = cli(server.url, "submit", "nobody_runs_this", "-p", "n=4", *args)
            assert result.returncode == 2
            assert "--timeout" in result.stderr
