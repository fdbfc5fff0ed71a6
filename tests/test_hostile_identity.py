"""Hostile runners and revoked keys, played against real ``runpack serve`` and
``runpack-runner`` processes on SQLite and PostgreSQL.

A runner id is public (a job's keyless detail names its runner), so these tests
act as another lab that knows it: with its own stored runner key, with the
environment key that Runpack runners may share, over HTTP and over the socket.
A runner row belongs to the key that registered it, and Runpack's runner proves
itself with a secret of its own. Then a key is revoked while the connections it
opened are still up: they close within ``RUNPACK_KEY_CACHE_TTL``.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from runpack.store import RunnerRow, open_store
from tests.procs import KEYS, Proc, clean_env, running_runner, running_server, until
from tests.test_instances import UNDO_INSTANCES

ADMIN = {"Authorization": f"Bearer {KEYS['RUNPACK_ADMIN_API_KEY']}"}
SUBMIT = {"Authorization": f"Bearer {KEYS['RUNPACK_SUBMIT_API_KEY']}"}
ENV_RUNNER = {"Authorization": f"Bearer {KEYS['RUNPACK_RUNNER_API_KEY']}"}
#: Short, so that a revoke takes effect quickly; the tests wait for the event.
KEY_CACHE_TTL = 2.0
TIMEOUT = aiohttp.ClientTimeout(total=30)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as processes:
        yield processes


def serve(stack: ExitStack, cwd: Path, database: str) -> Proc:
    env = {**KEYS, "RUNPACK_KEY_CACHE_TTL": str(KEY_CACHE_TTL)}
    return stack.enter_context(running_server(cwd, env, ("--db", database)))


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: dict[str, str],
    body: Any = None,
) -> tuple[int, Any]:
    async with http.request(method, url, headers=headers, json=body) as resp:
        text = await resp.read()
        return resp.status, orjson.loads(text) if text else None


async def new_key(http: aiohttp.ClientSession, url: str, role: str, name: str) -> tuple[str, str]:
    """A stored key: (secret, id)."""
    status, body = await call(
        http, "POST", f"{url}/api/admin/keys", ADMIN, {"role": role, "name": name}
    )
    assert status == 201, body
    return body["secret"], body["id"]


async def submit(http: aiohttp.ClientSession, url: str, name: str, seconds: float = 0) -> str:
    body = {"job_type": "hello_world", "input_params": {"name": name, "processing_time": seconds}}
    status, reply = await call(http, "POST", f"{url}/api/jobs/submit", SUBMIT, body)
    assert status == 201, reply
    return str(reply["job_id"])


async def job(http: aiohttp.ClientSession, url: str, job_id: str) -> dict[str, Any]:
    status, body = await call(http, "GET", f"{url}/api/admin/jobs/{job_id}", ADMIN)
    assert status == 200, body
    return dict(body)


async def register(http: aiohttp.ClientSession, url: str, key: dict[str, str], name: str) -> str:
    """A runner registered the original's way (no secret asked for)."""
    body = {"name": name, "capabilities": ["hello_world"]}
    status, reply = await call(http, "POST", f"{url}/api/runner/register", key, body)
    assert status == 201, reply
    assert "runner_secret" not in reply  # only Runpack's runner asks for one
    return str(reply["runner_id"])


async def claim(
    http: aiohttp.ClientSession, url: str, key: dict[str, str], runner: str, job_id: str
) -> None:
    headers = {**key, "X-Runner-ID": runner}
    status, reply = await call(http, "POST", f"{url}/api/runner/jobs/{job_id}/claim", headers)
    assert status == 200, reply


async def runner_row(http: aiohttp.ClientSession, url: str, name: str) -> dict[str, Any] | None:
    status, body = await call(http, "GET", f"{url}/api/admin/runners", ADMIN)
    assert status == 200, body
    return next((r for r in body["runners"] if r["name"] == name and r.get("connected")), None)


def ws_url(url: str) -> str:
    return url.replace("http://", "ws://") + "/api/runner/ws"


def hello(runner_id: str | None, jobs: list[str], **extra: Any) -> dict[str, Any]:
    frame = {
        "type": "hello",
        "name": "intruder",
        "capabilities": ["hello_world"],
        "concurrency": 1,
        "version": "0",
        "jobs": jobs,
        **extra,
    }
    if runner_id is not None:
        frame["runner_id"] = runner_id
    return frame


async def refused_hello(http: aiohttp.ClientSession, url: str, token: str, frame: Any) -> None:
    """A hello that must get an error frame, then a close with 1008 and a reason."""
    async with http.ws_connect(ws_url(url), headers=bearer(token)) as ws:
        await ws.send_json(frame)
        error = await ws.receive_json(timeout=10)
        assert error["type"] == "error" and error["code"] == "not_your_runner", error
        closing = await ws.receive(timeout=10)
        assert closing.type == aiohttp.WSMsgType.CLOSE, closing
        assert closing.data == 1008 and closing.extra, closing


def revoke_in_database(database: str, key_id: str) -> None:
    """``runpack keys revoke``: straight in the database, no server is told."""
    done = subprocess.run(
        [sys.executable, "-m", "runpack.cli", "keys", "revoke", key_id, "--db", database],
        env=clean_env(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


# --- the store: a runner's owner and secret ----------------------------------------------------

DOWNGRADE = (
    *UNDO_INSTANCES,
    "ALTER TABLE runners DROP COLUMN owner",
    "ALTER TABLE runners DROP COLUMN secret_sha256",
    "ALTER TABLE api_keys DROP COLUMN max_priority",
    "DELETE FROM schema_version WHERE version >= 6",
    "INSERT INTO runners (id, name, capabilities, registered_at, last_seen)"
    " VALUES ('0f0e0d0c-0b0a-4990-8877-665544332211', 'old', '[]', 1, 1)",
)


async def test_runners_keep_their_owner_and_old_runners_belong_to_the_environment_key(
    database: str,
) -> None:
    store = open_store(database)
    await store.open()
    await store.close()
    # The database as version 5 left it, with a runner registered then.
    if database.startswith("postgresql://"):
        conn = await asyncpg.connect(database)
        for statement in DOWNGRADE:
            await conn.execute(statement)
        await conn.close()
    else:
        with sqlite3.connect(database) as db:
            for statement in DOWNGRADE:
                db.execute(statement)
    store = open_store(database)
    await store.open()  # migrations 0006 and on
    try:
        old = await store.get_runner("0f0e0d0c-0b0a-4990-8877-665544332211")
        assert old is not None and (old.owner, old.secret_sha256) == ("env", None)
        new = RunnerRow(
            "1f0e0d0c-0b0a-4990-8877-665544332211", "new", "[]", 2, 2, "a1b2c3d4e5f6", "ab" * 32
        )
        await store.insert_runner(new)
        assert await store.get_runner(new.id) == new
    finally:
        await store.close()


# --- HTTP: another lab's key names our runner ---------------------------------------------------


async def test_a_stored_runner_key_cannot_act_for_another_keys_runner_over_http(
    tmp_path: Path, database: str, stack: ExitStack
) -> None:
    server = serve(stack, tmp_path / "server", database)
    url = server.url
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        lab_a, _ = await new_key(http, url, "runner", "lab A")
        lab_b, _ = await new_key(http, url, "runner", "lab B")
        victim = await register(http, url, bearer(lab_b), "lab-b-runner")
        job_id = await submit(http, url, "victim")
        await claim(http, url, bearer(lab_b), victim, job_id)
        before = await job(http, url, job_id)
        assert before["status"] == "claimed" and before["claimed_by"] == victim

        # Lab A (and the environment key, another owner) knows the runner id.
        forged = {"output_data": {"message": "forged"}, "console_output": "forged"}
        for key in (bearer(lab_a), ENV_RUNNER):
            headers = {**key, "X-Runner-ID": victim}
            base = f"{url}/api/runner/jobs/{job_id}"
            attempts = [
                ("POST", f"{base}/heartbeat", {"progress_current": 9, "console_output": "x"}),
                ("POST", f"{base}/complete", forged),
                ("POST", f"{base}/error", {"error_message": "forged", "console_output": ""}),
                ("POST", f"{base}/release", {"reason": "forged"}),
                ("GET", f"{url}/api/runner/verify", None),
                ("GET", f"{url}/api/runner/jobs/next?wait=0", None),
            ]
            for method, target, body in attempts:
                status, reply = await call(http, method, target, headers, body)
                assert status == 403, (target, status, reply)
                assert reply["error"] == "This runner belongs to another key", reply
        after = await job(http, url, job_id)
        assert after == before  # nothing changed, not even the console

        # The owner still acts for its runner, the original's way.
        headers = {**bearer(lab_b), "X-Runner-ID": victim}
        done = {"output_data": {"message": "Hello, victim!"}, "console_output": "done"}
        status, _ = await call(
            http, "POST", f"{url}/api/runner/jobs/{job_id}/complete", headers, done
        )
        assert status == 200
        assert (await job(http, url, job_id))["status"] == "completed"


async def test_the_original_runner_flow_works_with_the_environment_key_and_no_secret(
    tmp_path: Path, database: str, stack: ExitStack
) -> None:
    server = serve(stack, tmp_path / "server", database)
    url = server.url
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        runner = await register(http, url, ENV_RUNNER, "original")
        headers = {**ENV_RUNNER, "X-Runner-ID": runner}
        status, reply = await call(http, "GET", f"{url}/api/runner/verify", headers)
        assert status == 200 and reply["exists"] is True, reply
        job_id = await submit(http, url, "original")
        available = f"{url}/api/runner/jobs/available?types[]=hello_world"
        status, reply = await call(http, "GET", available, headers)
        assert status == 200 and [j["job_id"] for j in reply["jobs"]] == [job_id], reply
        await claim(http, url, ENV_RUNNER, runner, job_id)
        base = f"{url}/api/runner/jobs/{job_id}"
        beat = {"progress_current": None, "progress_total": None, "console_output": "working"}
        status, reply = await call(http, "POST", f"{base}/heartbeat", headers, beat)
        assert status == 200, reply
        done = {"output_data": {"message": "Hello, original!"}, "console_output": "done"}
        status, reply = await call(http, "POST", f"{base}/complete", headers, done)
        assert status == 200, reply
        finished = await job(http, url, job_id)
        assert finished["status"] == "completed" and finished["claimed_by"] == runner


# --- the socket: a hello that names another runner ----------------------------------------------


async def test_a_hello_for_another_keys_runner_is_refused_and_the_victim_keeps_its_job(
    tmp_path: Path, database: str, stack: ExitStack
) -> None:
    server = serve(stack, tmp_path / "server", database)
    url = server.url
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        lab_a, _ = await new_key(http, url, "runner", "lab A")
        lab_b, _ = await new_key(http, url, "runner", "lab B")
        victim = stack.enter_context(
            running_runner(
                tmp_path / "victim",
                url,
                "--name",
                "victim",
                env={"RUNPACK_RUNNER_API_KEY": lab_b},
            )
        )
        row = await until(lambda: runner_row(http, url, "victim"), "the victim to connect")
        job_id = await submit(http, url, "victim", seconds=3)

        async def running() -> bool:
            return (await job(http, url, job_id))["status"] == "in_progress"

        await until(running, "the victim to run the job")
        assert (await job(http, url, job_id))["claimed_by"] == row["runner_id"]

        # Lab A's key, and the environment key, name the victim and its job.
        for token in (lab_a, KEYS["RUNPACK_RUNNER_API_KEY"]):
            await refused_hello(http, url, token, hello(row["runner_id"], [job_id]))

        async def completed() -> bool:
            return (await job(http, url, job_id))["status"] == "completed"

        await until(completed, "the victim to finish its job")
        done = await job(http, url, job_id)
        assert done["claimed_by"] == row["runner_id"] and done["attempts"] == 1, done
        assert done["output_data"]["message"] == "Hello, victim!"
        # The victim never lost its socket.
        assert "connection lost" not in victim.output(), victim.output()
        assert server.output().count(f"runner {row['runner_id']} (victim) connected") == 1


# --- Runpack runners sharing the environment key ------------------------------------------------


async def test_runners_on_one_environment_key_cannot_act_for_each_other_without_the_secret(
    tmp_path: Path, database: str, stack: ExitStack
) -> None:
    server = serve(stack, tmp_path / "server", database)
    url = server.url
    victim_dir = tmp_path / "victim"
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        victim_ctx = running_runner(victim_dir, url, "--name", "victim")
        victim = victim_ctx.__enter__()
        try:
            row = await until(lambda: runner_row(http, url, "victim"), "the victim to connect")
            runner_id = row["runner_id"]

            def saved() -> dict[str, Any] | None:
                # The runner saves its id and secret once the welcome is in.
                path = victim_dir / ".runpack_runner.json"
                state: dict[str, Any] = orjson.loads(path.read_bytes()) if path.exists() else {}
                return state if state.get("runner_id") == runner_id else None

            state = await until(saved, "the victim to save its id")
            assert state["runner_id"] == runner_id and state["runner_secret"]
            mode = stat.S_IMODE(os.stat(victim_dir / ".runpack_runner.json").st_mode)
            assert mode == 0o600, oct(mode)

            job_id = await submit(http, url, "shared", seconds=3)

            async def running() -> bool:
                return (await job(http, url, job_id))["status"] == "in_progress"

            await until(running, "the victim to run the job")
            before = await job(http, url, job_id)

            # Same key, no secret or a wrong one: over the socket and over HTTP.
            token = KEYS["RUNPACK_RUNNER_API_KEY"]
            await refused_hello(http, url, token, hello(runner_id, [job_id]))
            await refused_hello(http, url, token, hello(runner_id, [job_id], runner_secret="guess"))
            for secret in (None, "guess"):
                headers = {**ENV_RUNNER, "X-Runner-ID": runner_id}
                if secret is not None:
                    headers["X-Runner-Secret"] = secret
                forged = {"output_data": {"message": "forged"}, "console_output": ""}
                status, reply = await call(
                    http, "POST", f"{url}/api/runner/jobs/{job_id}/complete", headers, forged
                )
                assert status == 403, reply
                assert reply["error"] == "Wrong or missing runner secret", reply
            assert (await job(http, url, job_id))["claimed_by"] == before["claimed_by"]

            async def completed() -> bool:
                return (await job(http, url, job_id))["status"] == "completed"

            await until(completed, "the victim to finish its job")
            done = await job(http, url, job_id)
            assert done["attempts"] == 1 and done["output_data"]["message"] == "Hello, shared!"
            assert "connection lost" not in victim.output(), victim.output()
        finally:
            victim_ctx.__exit__(None, None, None)

        # Restarted, the runner is the same runner: it proves itself with the saved secret.
        with running_runner(victim_dir, url, "--name", "victim") as again:
            back = await until(lambda: runner_row(http, url, "victim"), "the victim to return")
            assert back["runner_id"] == runner_id
            second = await submit(http, url, "again")

            async def second_done() -> bool:
                return (await job(http, url, second))["status"] == "completed"

            await until(second_done, "the restarted runner to run a job")
            assert (await job(http, url, second))["claimed_by"] == runner_id
            assert "registering anew" not in again.output()


async def test_the_http_transport_registers_with_a_secret_and_sends_it(
    tmp_path: Path, database: str, stack: ExitStack
) -> None:
    server = serve(stack, tmp_path / "server", database)
    url = server.url
    runner_dir = tmp_path / "runner"
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        stack.enter_context(
            running_runner(runner_dir, url, "--name", "poller", "--transport", "http")
        )
        job_id = await submit(http, url, "poller")

        async def completed() -> bool:
            return (await job(http, url, job_id))["status"] == "completed"

        await until(completed, "the HTTP runner to run a job")
        state = orjson.loads((runner_dir / ".runpack_runner.json").read_bytes())
        assert state["runner_secret"]
        assert (await job(http, url, job_id))["claimed_by"] == state["runner_id"]
        # Its id without the secret is refused.
        headers = {**ENV_RUNNER, "X-Runner-ID": state["runner_id"]}
        status, _ = await call(http, "GET", f"{url}/api/runner/verify", headers)
        assert status == 403


async def test_a_runner_whose_id_belongs_to_another_key_registers_anew(
    tmp_path: Path, database: str, stack: ExitStack
) -> None:
    """A lab moves its runner to a key of its own: the saved id (the environment
    key's) is refused, so the runner becomes a new runner of the new key."""
    server = serve(stack, tmp_path / "server", database)
    url = server.url
    runner_dir = tmp_path / "moved"
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        old_id = await register(http, url, ENV_RUNNER, "moved")
        runner_dir.mkdir()
        state = {"runner_id": old_id, "name": "moved"}
        (runner_dir / ".runpack_runner.json").write_bytes(orjson.dumps(state))
        lab, _ = await new_key(http, url, "runner", "lab")
        moved = stack.enter_context(
            running_runner(runner_dir, url, env={"RUNPACK_RUNNER_API_KEY": lab})
        )
        row = await until(lambda: runner_row(http, url, "moved"), "the runner to connect")
        assert row["runner_id"] != old_id
        job_id = await submit(http, url, "moved")

        async def completed() -> bool:
            return (await job(http, url, job_id))["status"] == "completed"

        await until(completed, "the runner to run a job")
        assert (await job(http, url, job_id))["claimed_by"] == row["runner_id"]
        assert f"the server refused runner {old_id}" in moved.output()
        saved = orjson.loads((runner_dir / ".runpack_runner.json").read_bytes())
        assert saved["runner_id"] == row["runner_id"] and saved["runner_secret"]


# --- a revoked key closes what it opened --------------------------------------------------------


async def test_a_revoked_runner_key_closes_its_open_sockets_within_the_ttl(
    tmp_path: Path, database: str, stack: ExitStack
) -> None:
    server = serve(stack, tmp_path / "server", database)
    url = server.url
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        lab, key_id = await new_key(http, url, "runner", "lab")
        runner = stack.enter_context(
            running_runner(
                tmp_path / "runner", url, "--name", "revoked", env={"RUNPACK_RUNNER_API_KEY": lab}
            )
        )
        await until(lambda: runner_row(http, url, "revoked"), "the runner to connect")
        async with http.ws_connect(ws_url(url), headers=bearer(lab)) as ws:
            await ws.send_json(hello(None, [], name="raw"))
            welcome = await ws.receive_json(timeout=10)
            assert welcome["type"] == "welcome", welcome

            revoke_in_database(database, key_id)  # no server hears of it
            revoked_at = time.monotonic()
            error = await ws.receive_json(timeout=KEY_CACHE_TTL + 10)
            assert error["type"] == "error" and error["code"] == "key_revoked", error
            closing = await ws.receive(timeout=10)
            elapsed = time.monotonic() - revoked_at
            assert closing.type == aiohttp.WSMsgType.CLOSE, closing
            assert closing.data == 1008 and closing.extra == "API key revoked", closing
            assert elapsed < KEY_CACHE_TTL + 1.5, elapsed

        # Runpack's runner stops for good (exit code 2) instead of connecting again.
        await until(lambda: runner.popen.poll() is not None, "the runner to exit")
        assert runner.popen.returncode == 2, runner.output()
        assert "revoked the runner key" in runner.output()
        # A job submitted now is not run by anyone.
        job_id = await submit(http, url, "after")
        assert (await job(http, url, job_id))["status"] == "pending"


async def test_a_long_poll_of_a_revoked_runner_key_ends_without_a_job(
    tmp_path: Path, database: str, stack: ExitStack
) -> None:
    server = serve(stack, tmp_path / "server", database)
    url = server.url
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        lab, key_id = await new_key(http, url, "runner", "lab")
        runner = await register(http, url, bearer(lab), "poller")
        headers = {**bearer(lab), "X-Runner-ID": runner}
        poll = asyncio.ensure_future(
            call(http, "GET", f"{url}/api/runner/jobs/next?types[]=noop&wait=25", headers)
        )

        async def polling() -> bool:
            # The long-poll notes the runner's contact before it waits.
            async with http.get(f"{url}/metrics", headers=ADMIN) as resp:
                return 'operation="touch_runner"' in await resp.text()

        await until(polling, "the long-poll to wait")
        revoke_in_database(database, key_id)
        revoked_at = time.monotonic()
        status, reply = await asyncio.wait_for(poll, KEY_CACHE_TTL + 10)
        elapsed = time.monotonic() - revoked_at
        assert status == 401 and reply["details"] == "This key has been revoked", reply
        assert elapsed < KEY_CACHE_TTL + 1.5, elapsed


async def test_a_revoked_admin_key_ends_its_event_stream_on_every_instance(
    tmp_path: Path, database: str, stack: ExitStack
) -> None:
    watched = serve(stack, tmp_path / "watched", database)
    # On PostgreSQL the key is revoked through another instance on the same database;
    # on SQLite through the instance that serves the stream.
    revoker = (
        serve(stack, tmp_path / "revoker", database)
        if database.startswith("postgresql://")
        else watched
    )
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        admin, key_id = await new_key(http, watched.url, "admin", "dashboard")
        async with http.get(f"{watched.url}/api/admin/events", headers=bearer(admin)) as stream:
            assert stream.status == 200
            first = await asyncio.wait_for(stream.content.readline(), 10)
            assert first.startswith(b"id: "), first
            status, reply = await call(
                http, "DELETE", f"{revoker.url}/api/admin/keys/{key_id}", ADMIN
            )
            assert status == 200, reply
            revoked_at = time.monotonic()
            rest = await asyncio.wait_for(stream.content.read(), KEY_CACHE_TTL + 10)
            elapsed = time.monotonic() - revoked_at
            assert b"event: closing" in rest and b"API key revoked" in rest, rest
            assert elapsed < KEY_CACHE_TTL + 1.5, elapsed
        status, _ = await call(http, "GET", f"{watched.url}/api/admin/events", bearer(admin))
        assert status == 401
