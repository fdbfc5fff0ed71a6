"""A stored key's limits hold on every action it can take, played as its holder would
play them against a real ``runpack serve``, on SQLite and on PostgreSQL.

A key limited to some job types may not read or cancel a job of another type, even
one whose id it found (a job's hash is computed from guessable inputs, and the public
stream by hash names the job). A submit key has a priority ceiling, 0 unless it was
created with another: a public key cannot jump the queue. The environment submit key
keeps the whole range, and an existing database's keys get their ceiling on upgrade.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from runpack import hashing
from runpack.auth import hash_secret, new_secret
from runpack.errors import StoreError
from runpack.store import migrations, open_store
from runpack.store.base import API_KEY_COLUMNS, ApiKeyRow
from runpack.store.migrations import split_statements
from tests.procs import KEYS, NO_LIMITS, clean_env, running_server
from tests.test_instances import UNDO_INSTANCES

REPO = Path(__file__).resolve().parents[1]
SUBMIT = {"Authorization": f"Bearer {KEYS['RUNPACK_SUBMIT_API_KEY']}"}
RUNNER = {"Authorization": f"Bearer {KEYS['RUNPACK_RUNNER_API_KEY']}"}
ADMIN = {"Authorization": f"Bearer {KEYS['RUNPACK_ADMIN_API_KEY']}"}
#: No runner connects: every job stays pending, in the queue's order.
OTHER = {"job_type": "figpack_nwb_raster_plot", "input_params": {"nwb_url": "https://x/a.nwb"}}
T0 = 1_700_000_000_000
#: Every request here comes from one address: the per-IP limits stay out of the way.
SERVER_ENV = {
    **KEYS,
    **NO_LIMITS,
}


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def keys_cli(db: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``runpack keys …`` on ``db``, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "runpack.cli", "keys", *args, "--db", db],
        env=clean_env({"PYTHONPATH": str(REPO)}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def create_key(db: str, *args: str) -> dict[str, Any]:
    result = keys_cli(db, "create", *args, "--json")
    assert result.returncode == 0, result.stderr
    created: dict[str, Any] = json.loads(result.stdout)
    assert created["secret"].startswith("rpk_")
    return created


def listed(db: str) -> dict[str, dict[str, Any]]:
    result = keys_cli(db, "list", "--json")
    assert result.returncode == 0, result.stderr
    return {k["id"]: k for k in json.loads(result.stdout)}


def serve_args(db: str) -> tuple[str, ...]:
    return ("--db", db)


async def reply(resp: aiohttp.ClientResponse) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = await resp.json()
    return resp.status, body


async def submit(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{url}/api/jobs/submit", json=body, headers=headers) as resp:
        return await reply(resp)


async def detail(http: aiohttp.ClientSession, url: str, job_id: str) -> dict[str, Any]:
    """The job's public detail (no key), as anyone reads it by id."""
    async with http.get(f"{url}/api/admin/jobs/{job_id}") as resp:
        assert resp.status == 200
        return dict(await resp.json())


async def job_id_by_hash(http: aiohttp.ClientSession, url: str, job: dict[str, Any]) -> str:
    """The id of a job named by guessable inputs: its hash opens its public stream,
    whose first event is the job itself."""
    job_hash = hashing.job_hash(job["job_type"], job["input_params"])
    async with http.get(f"{url}/api/jobs/by-hash/{job_hash}/events") as resp:
        assert resp.status == 200
        async for raw in resp.content:
            line = raw.decode()
            if line.startswith("data: "):
                return str(orjson.loads(line[6:])["job_id"])
    raise AssertionError("the stream ended without a snapshot")


async def queue(http: aiohttp.ClientSession, url: str, job_type: str) -> list[str]:
    """The pending jobs of ``job_type`` in the order a runner gets them."""
    async with http.post(
        f"{url}/api/runner/register",
        json={"name": "order-reader", "capabilities": [job_type]},
        headers=RUNNER,
    ) as resp:
        assert resp.status in (200, 201), await resp.text()
        runner_id = (await resp.json())["runner_id"]
    async with http.get(
        f"{url}/api/runner/jobs/available",
        params={"types[]": job_type},
        headers={**RUNNER, "X-Runner-ID": runner_id},
    ) as resp:
        assert resp.status == 200
        return [j["job_id"] for j in (await resp.json())["jobs"]]


# --- job types: cancel, status, and the rest ------------------------------------------------


async def test_a_key_limited_to_job_types_acts_on_no_job_of_another_type(
    db: str, tmp_path: Path
) -> None:
    key = create_key(db, "--role", "submit", "--job-types", "hello_world", "--name", "page")
    limited = bearer(key["secret"])
    # An admin key limited to a type: on the client routes its limits hold as well.
    admin_key = create_key(db, "--role", "admin", "--job-types", "hello_world")
    with running_server(tmp_path / "server", SERVER_ENV, serve_args(db)) as server:
        url = server.url
        async with aiohttp.ClientSession() as http:
            status, body = await submit(http, url, OTHER, SUBMIT)
            assert status == 201, body
            # The holder of the limited key finds the job from guessable inputs.
            job_id = await job_id_by_hash(http, url, OTHER)
            assert job_id == body["job_id"]
            before = await detail(http, url, job_id)
            assert before["status"] == "pending"

            refused = {
                "cancel": ("POST", f"/api/jobs/{job_id}/cancel", None),
                "read": ("GET", f"/api/jobs/{job_id}", None),
                "submit": ("POST", "/api/jobs/submit", {**OTHER, "force": True}),
            }
            for headers in (limited, bearer(admin_key["secret"])):
                for action, (method, path, payload) in refused.items():
                    async with http.request(
                        method, url + path, json=payload, headers=headers
                    ) as resp:
                        status, body = await reply(resp)
                    assert status == 403, (action, body)
                    assert body == {
                        "error": f"This key may not {action} this job type",
                        "details": "'figpack_nwb_raster_plot' is not one of: hello_world",
                    }
                async with http.post(f"{url}/api/jobs/check", json=OTHER, headers=headers) as resp:
                    assert resp.status == 403
            assert await detail(http, url, job_id) == before  # nothing changed

            # Its own type it reads and cancels as before; the environment key any type.
            hello = {"job_type": "hello_world", "input_params": {"name": "Ada"}}
            status, body = await submit(http, url, hello, limited)
            assert status == 201, body
            own = body["job_id"]
            async with http.get(f"{url}/api/jobs/{own}", headers=limited) as resp:
                assert resp.status == 200 and (await resp.json())["status"] == "pending"
            async with http.post(f"{url}/api/jobs/{own}/cancel", headers=limited) as resp:
                assert resp.status == 200, await resp.text()
            async with http.get(f"{url}/api/jobs/{job_id}", headers=SUBMIT) as resp:
                assert resp.status == 200
            async with http.post(f"{url}/api/jobs/{job_id}/cancel", headers=SUBMIT) as resp:
                assert resp.status == 200
            # An unknown job is still a 404, whatever the key.
            missing = "00000000-0000-4000-8000-000000000000"
            async with http.post(f"{url}/api/jobs/{missing}/cancel", headers=limited) as resp:
                assert resp.status == 404
        assert "Traceback" not in server.output()


# --- priority ceilings ------------------------------------------------------------------------


async def test_a_stored_submit_key_cannot_jump_the_queue(db: str, tmp_path: Path) -> None:
    public = create_key(db, "--role", "submit", "--name", "public page")  # no ceiling named
    admin = create_key(db, "--role", "admin")

    def job(name: str, priority: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"job_type": "hello_world", "input_params": {"name": name}}
        if priority is not None:
            body["priority"] = priority
        return body

    with running_server(tmp_path / "server", SERVER_ENV, serve_args(db)) as server:
        url = server.url
        async with aiohttp.ClientSession() as http:
            ids = {}
            for name in ("first", "second"):
                status, body = await submit(http, url, job(name), SUBMIT)
                assert status == 201
                ids[name] = body["job_id"]
            # Two jobs submitted in the same millisecond stand in the order of their ids.
            first_two = await queue(http, url, "hello_world")
            assert sorted(first_two) == sorted([ids["first"], ids["second"]])

            async def refused(secret: str, priority: int, ceiling: int) -> None:
                status, body = await submit(http, url, job("jumper", priority), bearer(secret))
                assert status == 403, body
                assert body["error"] == f"This key may submit priority at most {ceiling}"
                assert str(priority) in body["details"]

            await refused(public["secret"], 1000, 0)
            await refused(public["secret"], 1, 0)
            # Made while the server runs, as an operator would.
            trusted = create_key(db, "--role", "submit", "--max-priority", "5")
            await refused(trusted["secret"], 6, 5)
            # A known job too: the ceiling holds before the job is looked up.
            status, body = await submit(http, url, job("first", 1000), bearer(public["secret"]))
            assert status == 403, body
            async with http.post(f"{url}/api/jobs/check", json=job("jumper"), headers=SUBMIT) as r:
                assert (await r.json())["exists"] is False  # nothing was created
            assert await queue(http, url, "hello_world") == first_two

            # At or below the ceiling, as before; out of range is still a 400 for anyone.
            for secret, name, priority in (
                (public["secret"], "low", -5),
                (public["secret"], "zero", 0),
                (trusted["secret"], "five", 5),
            ):
                status, body = await submit(http, url, job(name, priority), bearer(secret))
                assert status == 201, body
                ids[name] = body["job_id"]
            status, body = await submit(http, url, job("huge", 1001), bearer(admin["secret"]))
            assert status == 400

            # The environment submit key and an admin key keep the whole range.
            status, body = await submit(http, url, job("urgent", 1000), SUBMIT)
            assert status == 201, body
            ids["urgent"] = body["job_id"]
            status, body = await submit(http, url, job("admin", 999), bearer(admin["secret"]))
            assert status == 201, body
            ids["admin"] = body["job_id"]
            status, body = await submit(http, url, job("too high", 1001), SUBMIT)
            assert status == 400
            ahead = [ids[n] for n in ("urgent", "admin", "five")]
            after = [ids[n] for n in ("zero", "low")]
            assert await queue(http, url, "hello_world") == [*ahead, *first_two, *after]
        assert "Traceback" not in server.output()

    # The ceilings as the operator sees them: a submit key's default is 0, an admin
    # key has none.
    assert (public["max_priority"], trusted["max_priority"], admin["max_priority"]) == (0, 5, None)
    keys = listed(db)
    assert [keys[k["id"]]["max_priority"] for k in (public, trusted, admin)] == [0, 5, None]
    table = keys_cli(db, "list")
    assert "priority at most 0" in table.stdout and "priority at most 5" in table.stdout


async def test_the_admin_api_sets_and_shows_a_ceiling(db: str, tmp_path: Path) -> None:
    with running_server(tmp_path / "server", SERVER_ENV, serve_args(db)) as server:
        url = server.url
        async with aiohttp.ClientSession() as http:

            async def create(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
                async with http.post(f"{url}/api/admin/keys", json=body, headers=ADMIN) as resp:
                    return await reply(resp)

            status, plain = await create({"role": "submit"})
            assert status == 201
            job = {"job_type": "hello_world", "input_params": {}, "priority": 1000}
            status, body = await submit(http, url, job, bearer(plain["secret"]))
            assert status == 403 and "at most 0" in body["error"]
            assert plain["max_priority"] == 0
            status, high = await create({"role": "submit", "max_priority": 1000})
            assert status == 201 and high["max_priority"] == 1000
            status, admin = await create({"role": "admin"})
            assert status == 201 and admin["max_priority"] is None
            for bad in (
                {"role": "submit", "max_priority": -1},
                {"role": "submit", "max_priority": 1001},
                {"role": "submit", "max_priority": "5"},
                {"role": "submit", "max_priority": 2.5},
                {"role": "submit", "max_priority": True},
                {"role": "runner", "max_priority": 0},
            ):
                status, body = await create(bad)
                assert status == 400, (bad, body)
                assert set(body) == {"error", "details"} or set(body) == {"error"}
            async with http.get(f"{url}/api/admin/keys", headers=ADMIN) as resp:
                shown = {k["id"]: k["max_priority"] for k in (await resp.json())["keys"]}
            assert shown == {plain["id"]: 0, high["id"]: 1000, admin["id"]: None}

            status, _ = await submit(http, url, job, bearer(high["secret"]))
            assert status == 201
    bad = keys_cli(db, "create", "--role", "submit", "--max-priority", "1001")
    assert bad.returncode == 1 and "Invalid priority ceiling" in bad.stderr
    bad = keys_cli(db, "create", "--role", "runner", "--max-priority", "1")
    assert bad.returncode == 1 and "takes no priority ceiling" in bad.stderr
    assert len(listed(db)) == 3


# --- an existing database ---------------------------------------------------------------------


def _old_key(role: str, job_types: str | None = None) -> tuple[str, dict[str, Any]]:
    """A key as it was stored before ceilings existed: (secret, its row's columns)."""
    secret = new_secret()
    row = {
        "id": secrets.token_hex(6),
        "name": f"old {role}",
        "role": role,
        "secret_sha256": hash_secret(secret),
        "job_types": job_types,
        "origins": None,
        "rate": None,
        "created_at": T0,
        "last_used_at": None,
        "revoked_at": None,
    }
    return secret, row


def _before_0007() -> list[str]:
    """Statements that take a current database back to the api_keys of version 6."""
    [(_, _, keys_sql)] = [m for m in migrations.migrations() if m[0] == 2]
    return [
        *UNDO_INSTANCES,
        "DROP TABLE api_keys",
        *split_statements(keys_sql),
        "DELETE FROM schema_version WHERE version >= 7",
    ]


async def _make_old_database(db: str, rows: list[dict[str, Any]]) -> None:
    store = open_store(db)
    await store.open()  # the current schema
    await store.close()
    columns = [c for c in API_KEY_COLUMNS if c != "max_priority"]
    assert set(columns) == set(rows[0])
    if db.startswith("postgresql://"):
        conn = await asyncpg.connect(db)
        try:
            for statement in _before_0007():
                await conn.execute(statement)
            marks = ", ".join(f"${i + 1}" for i in range(len(columns)))
            for row in rows:
                await conn.execute(
                    f"INSERT INTO api_keys ({', '.join(columns)}) VALUES ({marks})",
                    *(row[c] for c in columns),
                )
        finally:
            await conn.close()
        return
    with closing(sqlite3.connect(db)) as conn:
        for statement in _before_0007():
            conn.execute(statement)
        marks = ", ".join("?" for _ in columns)
        for row in rows:
            conn.execute(
                f"INSERT INTO api_keys ({', '.join(columns)}) VALUES ({marks})",
                [row[c] for c in columns],
            )
        conn.commit()


async def test_an_upgraded_database_gives_existing_submit_keys_the_ceiling(
    db: str, tmp_path: Path
) -> None:
    """Submit keys stored before ceilings existed get 0 (the safe default: a key
    handed out then, perhaps in a public page, cannot jump the queue after the
    upgrade); admin and runner keys get none."""
    old_submit, submit_row = _old_key("submit", '["hello_world"]')
    _, admin_row = _old_key("admin")
    _, runner_row = _old_key("runner")
    await _make_old_database(db, [submit_row, admin_row, runner_row])

    keys = listed(db)  # opening the database upgrades it
    assert keys[submit_row["id"]]["max_priority"] == 0
    assert keys[submit_row["id"]]["job_types"] == ["hello_world"]
    assert keys[admin_row["id"]]["max_priority"] is None
    assert keys[runner_row["id"]]["max_priority"] is None

    store = open_store(db)
    await store.open()
    try:
        # The database refuses a ceiling out of range, whoever writes it.
        for ceiling in (-1, 1001):
            secret = new_secret()
            row = ApiKeyRow(
                secrets.token_hex(6),
                "",
                "submit",
                hash_secret(secret),
                None,
                None,
                None,
                T0,
                None,
                None,
            )
            row.max_priority = ceiling
            with pytest.raises(StoreError):
                await store.insert_api_key(row)
    finally:
        await store.close()

    with running_server(tmp_path / "server", SERVER_ENV, serve_args(db)) as server:
        async with aiohttp.ClientSession() as http:
            job = {"job_type": "hello_world", "input_params": {"name": "old"}}
            status, body = await submit(
                http, server.url, {**job, "priority": 1}, bearer(old_submit)
            )
            assert status == 403 and body["error"] == "This key may submit priority at most 0"
            status, body = await submit(http, server.url, job, bearer(old_submit))
            assert status == 201, body
