"""Stored API keys: ``runpack keys`` create/list/revoke, their storage on both engines,
and what the server does with them (roles, revocation, job types, Origins, rates)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from runpack.appkeys import KEYS, SERVICE
from runpack.auth import KEY_ROLES, KeyRing
from runpack.errors import BadRequest, NotFound, StoreError
from runpack.keys import create_key, key_spec, now_ms, parse_origin, revoke_key
from runpack.protocol import Role
from runpack.store import Store, migrations, open_store
from runpack.store.base import ApiKeyRow
from runpack_runner.jobs.hello_world import HelloWorld
from runpack_runner.registry import Registry
from runpack_runner.runner import Runner
from runpack_runner.settings import RunnerSettings
from runpack_runner.state import RunnerState
from tests.conftest import ADMIN, RUNNER, SUBMIT, MakeClient, bearer, submit
from tests.pg import fresh_database
from tests.procs import clean_env

REPO = Path(__file__).resolve().parents[1]
HELLO = {"job_type": "hello_world", "input_params": {"name": "Ada"}}
VIEWER = "https://viewer.example.org"
T0 = 1_700_000_000_000


def app_of(client: TestClient) -> web.Application:
    app = client.app
    assert app is not None
    return app


def store_of(client: TestClient) -> Store:
    return app_of(client)[SERVICE].store


def keyring_of(client: TestClient) -> KeyRing:
    return app_of(client)[KEYS]


async def new_key(client: TestClient, role: str = "submit", **limits: Any) -> tuple[str, str]:
    """A stored key made as ``runpack keys create`` makes it: (secret, id)."""
    secret, row = await create_key(store_of(client), key_spec(role, **limits), now_ms())
    return secret, row.id


class Clock:
    """The key ring's monotonic clock, moved by hand (seconds)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def opened(db: str) -> AsyncIterator[Store]:
    store = open_store(db)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


# --- storage, on both engines ------------------------------------------------------------


async def test_the_store_keeps_a_hash_lists_touches_and_revokes_once(db: str) -> None:
    async with opened(db) as store:
        spec = key_spec("submit", "viewer", ["hello_world"], [VIEWER], 30)
        secret, row = await create_key(store, spec, T0)
        assert secret.startswith("rpk_") and len(secret) >= 40
        assert row.secret_sha256 == hashlib.sha256(secret.encode()).hexdigest()
        assert secret not in repr(row)
        assert await store.api_key_by_hash(row.secret_sha256) == row
        assert await store.api_key_by_hash(hashlib.sha256(b"other").hexdigest()) is None
        assert await store.get_api_key(row.id) == row
        assert (row.job_types, row.origins, row.rate) == ('["hello_world"]', f'["{VIEWER}"]', 30)
        _, other = await create_key(store, key_spec("admin"), T0 + 1)
        listed = [k for k in await store.list_api_keys() if k.id in (row.id, other.id)]
        assert listed == [row, other]  # oldest first

        # Uses only move last_used_at forward (several instances may record them).
        assert await store.touch_api_key(row.id, T0 + 10)
        assert not await store.touch_api_key(row.id, T0 + 5)
        assert not await store.touch_api_key("000000000000", T0 + 10)
        assert (await store.get_api_key(row.id)).last_used_at == T0 + 10  # type: ignore[union-attr]

        revoked, changed = await revoke_key(store, row.id, T0 + 20)
        assert changed and revoked.revoked_at == T0 + 20
        again, changed = await revoke_key(store, row.id, T0 + 30)
        assert not changed and again.revoked_at == T0 + 20  # the first revocation stands
        assert await store.revoke_api_key(row.id, T0 + 40) is None
        for unknown in ("000000000000", "not an id", "a\x00"):
            with pytest.raises(NotFound):
                await revoke_key(store, unknown, T0)
        assert (await store.get_api_key(other.id)).revoked_at is None  # type: ignore[union-attr]


async def test_the_database_allows_exactly_the_key_roles(db: str) -> None:
    """The CHECK on api_keys.role holds the same three roles as runpack.auth.KEY_ROLES."""

    def row(role: str, rate: int | None = None) -> ApiKeyRow:
        key_id = secrets.token_hex(6)
        return ApiKeyRow(key_id, "", role, key_id * 5, None, None, rate, T0, None, None)

    async with opened(db) as store:
        for role in [*KEY_ROLES, "admin_read", "public", ""]:
            candidate = row(role)
            if role in KEY_ROLES:
                await store.insert_api_key(candidate)
                assert await store.get_api_key(candidate.id) == candidate
            else:
                with pytest.raises(StoreError):
                    await store.insert_api_key(candidate)
                assert await store.get_api_key(candidate.id) is None
        negative = row("submit", rate=-1)
        with pytest.raises(StoreError):
            await store.insert_api_key(negative)
        assert await store.get_api_key(negative.id) is None


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
async def test_migration_2_adds_the_table_to_a_version_1_database(
    engine: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database made before keys existed gets the table from 0002_api_keys.sql (and
    its priority ceilings from 0007_key_priority.sql)."""
    only_keys = [m for m in migrations.migrations() if m[0] in (2, 7)]
    assert [name for _, name, _ in only_keys] == ["0002_api_keys.sql", "0007_key_priority.sql"]
    monkeypatch.setattr(migrations, "migrations", lambda: only_keys)
    v1 = "CREATE TABLE schema_version (version INTEGER NOT NULL PRIMARY KEY, applied_at BIGINT)"
    if engine == "sqlite":
        db = str(tmp_path / "v1.db")
        with closing(sqlite3.connect(db)) as conn:
            conn.execute(v1)
            conn.execute("INSERT INTO schema_version VALUES (1, 0)")
            conn.commit()
        await _create_and_find_a_key(db)
        return
    async with fresh_database() as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(v1)
            await conn.execute("INSERT INTO schema_version VALUES (1, 0)")
        finally:
            await conn.close()
        await _create_and_find_a_key(dsn)


async def _create_and_find_a_key(db: str) -> None:
    async with opened(db) as store:
        _, row = await create_key(store, key_spec("runner"), T0)
        assert await store.list_api_keys() == [row]


def test_key_settings_are_checked() -> None:
    assert parse_origin("HTTPS://Viewer.Example.org:443/") == VIEWER
    assert parse_origin("http://localhost:5173") == "http://localhost:5173"
    assert parse_origin("http://[::1]:8080") == "http://[::1]:8080"
    spec = key_spec("submit", "x", ["a", "a", "b"], [VIEWER, VIEWER + "/"], 0)
    assert (spec.role, spec.job_types, spec.origins, spec.rate) == (
        Role.SUBMIT,
        ("a", "b"),
        (VIEWER,),
        0,
    )
    bad: list[dict[str, Any]] = [
        {"role": "admin_read"},
        {"role": "owner"},
        {"role": "submit", "name": "x" * 201},
        {"role": "submit", "name": "a\x00"},
        {"role": "submit", "job_types": []},
        {"role": "submit", "job_types": [""]},
        {"role": "submit", "job_types": ["a\x00"]},
        {"role": "runner", "job_types": ["hello_world"]},
        {"role": "submit", "origins": []},
        {"role": "submit", "rate": -1},
        {"role": "submit", "rate": 10**10},
    ]
    bad += [
        {"role": "submit", "origins": [origin]}
        for origin in (
            "viewer.example.org",
            "ftp://viewer.example.org",
            "https://viewer.example.org/page",
            "https://viewer.example.org?x=1",
            "https://user@viewer.example.org",
            "https://viewer.example.org:99999",
            "https://exa mple.org",
            "null",
            "*",
        )
    ]
    for kwargs in bad:
        with pytest.raises(BadRequest):
            key_spec(**kwargs)


# --- the command, as a real process on a SQLite file ---------------------------------------


def keys_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = clean_env({"PYTHONPATH": str(REPO), "RUNPACK_DB": str(tmp_path / "keys.db")})
    return subprocess.run(
        [sys.executable, "-m", "runpack.cli", "keys", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def listed(tmp_path: Path) -> list[dict[str, Any]]:
    result = keys_cli(tmp_path, "list", "--json")
    assert result.returncode == 0, result.stderr
    keys: list[dict[str, Any]] = json.loads(result.stdout)
    return keys


def test_the_command_creates_lists_and_revokes(tmp_path: Path) -> None:
    result = keys_cli(
        tmp_path,
        "create",
        "--role=submit",
        "--name=public viewer",
        "--job-types=hello_world, noop",
        f"--origins={VIEWER}/,http://localhost:5173",
        "--rate=30",
    )
    assert result.returncode == 0, result.stderr
    secret = result.stdout.strip().splitlines()[-1]  # the last line: the secret alone
    assert secret.startswith("rpk_")
    key_id = result.stdout.split("submit key ", 1)[1].split()[0]
    db = tmp_path / "keys.db"
    result = keys_cli(tmp_path, "create", "--role", "admin", "--db", str(db), "--json")
    assert result.returncode == 0, result.stderr
    admin = json.loads(result.stdout)
    assert admin["secret"].startswith("rpk_") and admin["secret"] != secret

    keys = listed(tmp_path)
    assert [k["id"] for k in keys] == [key_id, admin["id"]]
    viewer = keys[0]
    assert viewer["name"] == "public viewer" and viewer["role"] == "submit"
    assert viewer["job_types"] == ["hello_world", "noop"]
    assert viewer["origins"] == [VIEWER, "http://localhost:5173"]
    assert viewer["rate"] == 30
    assert viewer["last_used_at"] is None and viewer["revoked_at"] is None
    assert viewer["created_at"] > 0
    table = keys_cli(tmp_path, "list")
    assert table.returncode == 0
    assert key_id in table.stdout and "public viewer" in table.stdout
    digest = hashlib.sha256(secret.encode()).hexdigest()
    for out in (json.dumps(keys), table.stdout):  # never a secret, nor its hash
        assert secret not in out and admin["secret"] not in out and digest not in out

    result = keys_cli(tmp_path, "revoke", key_id)
    assert result.returncode == 0, result.stderr
    assert "Revoked" in result.stdout
    revoked = {k["id"]: k["revoked_at"] for k in listed(tmp_path)}
    assert revoked[key_id] is not None and revoked[admin["id"]] is None
    again = keys_cli(tmp_path, "revoke", key_id)
    assert again.returncode == 0 and "already revoked" in again.stdout
    assert {k["id"]: k["revoked_at"] for k in listed(tmp_path)} == revoked


def test_the_command_refuses_bad_input_and_changes_nothing(tmp_path: Path) -> None:
    assert keys_cli(tmp_path, "create", "--role", "submit").returncode == 0
    before = listed(tmp_path)
    cases = [
        (["create", "--role", "owner"], "invalid choice: 'owner'"),
        (["create", "--role", "submit", "--origins", "viewer.example.org"], "Invalid origin"),
        (["create", "--role", "submit", "--origins", f"{VIEWER}/page"], "Invalid origin"),
        (["create", "--role", "submit", "--rate", "-5"], "Invalid rate"),
        (["create", "--role", "submit", "--job-types", ","], "at least one of the job types"),
        (["create", "--role", "runner", "--job-types", "a"], "A runner key takes no job types"),
        (["revoke", "0123456789ab"], "API key not found"),
        (["revoke", "bogus"], "API key not found"),
    ]
    for args, message in cases:
        result = keys_cli(tmp_path, *args)
        assert result.returncode != 0, args
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert listed(tmp_path) == before
    missing = keys_cli(tmp_path, "list", "--db", str(tmp_path / "typo.db"))
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    assert not (tmp_path / "typo.db").exists()


# --- the server ---------------------------------------------------------------------------


async def test_a_stored_submit_key_submits_checks_and_reads(make_client: MakeClient) -> None:
    client = await make_client()
    secret, _ = await new_key(client, "submit")
    key = bearer(secret)
    resp = await client.post("/api/jobs/submit", json=HELLO, headers=key)
    assert resp.status == 201, await resp.text()
    job_id = (await resp.json())["job_id"]
    resp = await client.post("/api/jobs/check", json=HELLO, headers=key)
    assert (await resp.json())["job_id"] == job_id
    assert (await client.get(f"/api/jobs/{job_id}", headers=key)).status == 200
    # The same role as the environment's submit key: no admin or runner routes.
    assert (await client.get("/api/admin/stats", headers=key)).status == 401
    assert (await client.post("/api/runner/register", json={}, headers=key)).status == 401
    # The environment keys work as before, beside it.
    assert (await client.post("/api/jobs/check", json=HELLO, headers=SUBMIT)).status == 200
    assert (await client.get("/api/admin/stats", headers=RUNNER)).status == 200


async def test_a_revoked_key_is_refused_within_the_cache_time(make_client: MakeClient) -> None:
    client = await make_client(key_cache_ttl=5.0)
    clock = Clock()
    keyring_of(client).clock = clock
    secret, key_id = await new_key(client, "submit")
    check = {"json": HELLO, "headers": bearer(secret)}
    assert (await client.post("/api/jobs/check", **check)).status == 200
    # Revoked in the database, as `runpack keys revoke` (or another instance) does it.
    await revoke_key(store_of(client), key_id, now_ms())
    clock.now += 4.9
    assert (await client.post("/api/jobs/check", **check)).status == 200  # still remembered
    clock.now += 0.2
    resp = await client.post("/api/jobs/check", **check)
    assert resp.status == 401
    assert await resp.json() == {"error": "Invalid API key", "details": "This key has been revoked"}


async def test_with_no_cache_a_revoked_key_is_refused_at_once(make_client: MakeClient) -> None:
    client = await make_client(key_cache_ttl=0.0)
    secret, key_id = await new_key(client, "admin")
    assert (await client.get("/api/admin/stats", headers=bearer(secret))).status == 200
    await revoke_key(store_of(client), key_id, now_ms())
    assert (await client.get("/api/admin/stats", headers=bearer(secret))).status == 401


async def test_a_key_submits_only_its_job_types(make_client: MakeClient) -> None:
    client = await make_client()
    secret, _ = await new_key(client, "submit", job_types=["hello_world", "noop"])
    key = bearer(secret)
    other = {"job_type": "figpack_nwb_raster_plot", "input_params": {"nwb_url": "x"}}
    for path in ("/api/jobs/submit", "/api/jobs/check"):
        resp = await client.post(path, json=other, headers=key)
        assert resp.status == 403
        assert await resp.json() == {
            "error": "This key may not submit this job type",
            "details": "'figpack_nwb_raster_plot' is not one of: hello_world, noop",
        }
    resp = await client.post("/api/jobs/check", json=other, headers=SUBMIT)
    assert (await resp.json())["exists"] is False  # nothing was created
    assert (await client.post("/api/jobs/submit", json=HELLO, headers=key)).status == 201


async def test_a_browser_key_is_refused_from_other_origins(make_client: MakeClient) -> None:
    client = await make_client()
    secret, _ = await new_key(client, "submit", origins=[VIEWER, "http://localhost:5173"])
    key = bearer(secret)
    resp = await client.post(
        "/api/jobs/submit", json=HELLO, headers={**key, "Origin": "https://elsewhere.example"}
    )
    assert resp.status == 403
    assert await resp.json() == {
        "error": "This key may not be used from this origin",
        "details": "https://elsewhere.example",
    }
    resp = await client.post("/api/jobs/check", json=HELLO, headers=SUBMIT)
    assert (await resp.json())["exists"] is False

    resp = await client.post("/api/jobs/submit", json=HELLO, headers={**key, "Origin": VIEWER})
    assert resp.status == 201
    assert resp.headers["Access-Control-Allow-Origin"] == VIEWER
    assert "Origin" in resp.headers.getall("Vary")
    # Without an Origin (curl, a server): no browser involved, the key works as usual.
    resp = await client.post("/api/jobs/check", json=HELLO, headers=key)
    assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == "*"
    # The environment keys and keys without Origins take any Origin, as before.
    other = {"Origin": "https://elsewhere.example"}
    resp = await client.post("/api/jobs/check", json=HELLO, headers={**SUBMIT, **other})
    assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == "*"
    any_origin, _ = await new_key(client, "submit")
    resp = await client.post("/api/jobs/check", json=HELLO, headers={**bearer(any_origin), **other})
    assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == "*"


async def final_status(client: TestClient, job_id: str, limit: float = 20) -> str:
    """Follow the job's event stream to its final status."""
    resp = await client.get(f"/api/jobs/{job_id}/events")
    assert resp.status == 200
    event = ""
    async with asyncio.timeout(limit):
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event in ("status", "snapshot"):
                status = str(orjson.loads(line[6:])["status"])
                if status in ("completed", "failed", "cancelled"):
                    resp.close()
                    return status
    raise AssertionError("the stream ended before a final status")


async def test_a_stored_runner_key_runs_a_runner(make_client: MakeClient, tmp_path: Path) -> None:
    client = await make_client()
    secret, _ = await new_key(client, "runner", name="lab machine")
    url = str(client.make_url("")).rstrip("/")
    settings = RunnerSettings(worker_url=url, runner_api_key=secret, log_file="")
    runner = Runner(
        settings,
        Registry({"hello_world": HelloWorld()}),
        state_path=tmp_path / "state.json",
        state=RunnerState(),
        name="stored-key",
    )
    task = asyncio.create_task(runner.run(handle_signals=False))
    try:
        job = await submit(client, "hello_world", name="stored", processing_time=0)
        assert await final_status(client, job["job_id"]) == "completed"
        resp = await client.get(f"/api/admin/jobs/{job['job_id']}", headers=ADMIN)
        assert (await resp.json())["output_data"]["message"] == "Hello, stored!"
    finally:
        runner.request_stop()
        assert await asyncio.wait_for(task, 10) == 0
    # Like the environment's runner key: it reads admin data but changes nothing.
    assert (await client.get("/api/admin/stats", headers=bearer(secret))).status == 200
    resp = await client.delete(f"/api/admin/jobs/{job['job_id']}", headers=bearer(secret))
    assert resp.status == 403
    assert (await client.post("/api/jobs/submit", json=HELLO, headers=bearer(secret))).status == 401


async def test_a_stored_admin_key_deletes(make_client: MakeClient) -> None:
    client = await make_client()
    admin, _ = await new_key(client, "admin")
    submitter, _ = await new_key(client, "submit")
    job = await submit(client)
    path = f"/api/admin/jobs/{job['job_id']}"
    assert (await client.delete(path, headers=bearer(submitter))).status == 401
    resp = await client.delete(path, headers=bearer(admin))
    assert resp.status == 200, await resp.text()
    assert (await client.get(path, headers=ADMIN)).status == 404
    # The admin key submits too, as the environment's does; it cannot act as a runner.
    assert (await client.post("/api/jobs/submit", json=HELLO, headers=bearer(admin))).status == 201
    resp = await client.post("/api/runner/register", json={"name": "x"}, headers=bearer(admin))
    assert resp.status == 401


async def test_wrong_tokens_are_remembered_and_uses_written_once_a_minute(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await make_client(key_cache_ttl=5.0)
    clock = Clock()
    keyring_of(client).clock = clock
    store = keyring_of(client).store  # the key ring's own, as create_app gives it
    assert store is not None
    secret, key_id = await new_key(client, "submit")
    lookups: list[str] = []
    touches: list[int] = []
    lookup, touch = store.api_key_by_hash, store.touch_api_key

    async def counted_lookup(digest: str) -> ApiKeyRow | None:
        lookups.append(digest)
        return await lookup(digest)

    async def counted_touch(key: str, now: int) -> bool:
        touches.append(now)
        return await touch(key, now)

    monkeypatch.setattr(store, "api_key_by_hash", counted_lookup)
    monkeypatch.setattr(store, "touch_api_key", counted_touch)

    wrong = bearer("rpk_" + "A" * 43)
    for _ in range(20):
        assert (await client.post("/api/jobs/check", json=HELLO, headers=wrong)).status == 401
    assert len(lookups) == 1  # one lookup; the 19 others were answered from memory
    for token in ("not-a-stored-key", "rpk_short", SUBMIT["Authorization"][7:] + "x"):
        resp = await client.post("/api/jobs/check", json=HELLO, headers=bearer(token))
        assert resp.status == 401
    assert len(lookups) == 1  # tokens of another shape never reach the database

    for _ in range(5):
        assert (
            await client.post("/api/jobs/check", json=HELLO, headers=bearer(secret))
        ).status == 200
    assert len(lookups) == 2 and len(touches) == 1
    row = await store.get_api_key(key_id)
    assert row is not None and row.last_used_at == touches[0]
    clock.now += 59
    assert (await client.post("/api/jobs/check", json=HELLO, headers=bearer(secret))).status == 200
    assert len(touches) == 1
    clock.now += 2
    assert (await client.post("/api/jobs/check", json=HELLO, headers=bearer(secret))).status == 200
    assert len(touches) == 2 and len(lookups) == 3  # the cache had expired too
    clock.now += 6
    assert (await client.post("/api/jobs/check", json=HELLO, headers=wrong)).status == 401
    assert len(lookups) == 4  # a wrong token is looked up again once forgotten


async def test_the_admin_api_creates_lists_and_revokes_keys(make_client: MakeClient) -> None:
    client = await make_client()
    body = {"role": "submit", "name": "viewer", "job_types": ["hello_world"], "origins": [VIEWER]}
    resp = await client.post("/api/admin/keys", json=body, headers=ADMIN)
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    secret, key_id = created["secret"], created["id"]
    assert secret.startswith("rpk_")
    assert created["origins"] == [VIEWER] and created["rate"] is None
    resp = await client.post("/api/jobs/submit", json=HELLO, headers=bearer(secret))
    assert resp.status == 201

    resp = await client.get("/api/admin/keys", headers=ADMIN)
    text = await resp.text()
    assert resp.status == 200 and secret not in text
    listing = {k["id"]: k for k in (await resp.json())["keys"]}
    assert listing[key_id]["name"] == "viewer" and listing[key_id]["last_used_at"] is not None
    assert "secret" not in listing[key_id] and "secret_sha256" not in listing[key_id]

    # Revoked over HTTP: this instance refuses it at once, cache or not.
    resp = await client.delete(f"/api/admin/keys/{key_id}", headers=ADMIN)
    assert resp.status == 200
    assert (await resp.json())["message"] == "Key revoked"
    resp = await client.post("/api/jobs/check", json=HELLO, headers=bearer(secret))
    assert resp.status == 401
    resp = await client.delete(f"/api/admin/keys/{key_id}", headers=ADMIN)
    assert (await resp.json())["message"] == "Key was already revoked"
    resp = await client.delete("/api/admin/keys/0123456789ab", headers=ADMIN)
    assert resp.status == 404 and (await resp.json())["error"] == "API key not found"

    count = len((await (await client.get("/api/admin/keys", headers=ADMIN)).json())["keys"])
    for bad in (
        {"role": "owner"},
        {"role": 1},
        {"name": "no role"},
        {"role": "submit", "origins": ["https://viewer.example.org/page"]},
        {"role": "submit", "origins": "https://viewer.example.org"},
        {"role": "submit", "rate": -1},
        {"role": "submit", "rate": 1.5},
        {"role": "submit", "rate": True},
        {"role": "submit", "job_types": [1]},
        {"role": "submit", "secret": "rpk_mine"},
    ):
        resp = await client.post("/api/admin/keys", json=bad, headers=ADMIN)
        assert resp.status == 400, bad
        assert "error" in await resp.json()
    resp = await client.get("/api/admin/keys", headers=ADMIN)
    assert len((await resp.json())["keys"]) == count  # nothing was created

    # Admin only: the runner key, which reads other admin routes, may not.
    assert (await client.get("/api/admin/keys", headers=SUBMIT)).status == 401
    assert (await client.get("/api/admin/keys", headers=RUNNER)).status == 403
    resp = await client.post("/api/admin/keys", json={"role": "admin"}, headers=RUNNER)
    assert resp.status == 403


async def test_keys_are_never_logged(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = await make_client(key_cache_ttl=0.0)
    resp = await client.post("/api/admin/keys", json={"role": "submit"}, headers=ADMIN)
    created = await resp.json()
    secret, key_id = created["secret"], created["id"]
    store = keyring_of(client).store
    assert store is not None

    async def broken_touch(key: str, now: int) -> bool:
        raise StoreError(details="the database went away")

    monkeypatch.setattr(store, "touch_api_key", broken_touch)
    # Recording the use fails: the request still goes through, with a warning.
    assert (await client.post("/api/jobs/submit", json=HELLO, headers=bearer(secret))).status == 201
    assert any(key_id in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    await client.delete(f"/api/admin/keys/{key_id}", headers=ADMIN)
    assert (await client.post("/api/jobs/check", json=HELLO, headers=bearer(secret))).status == 401
    wrong = secret[:-4] + "AAAA"
    assert (await client.post("/api/jobs/check", json=HELLO, headers=bearer(wrong))).status == 401
    logged = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    digest = hashlib.sha256(secret.encode()).hexdigest()
    for text in (secret, wrong, digest, ADMIN["Authorization"][7:]):
        assert text not in logged
