"""Handler versions: runners declare them, the server keys jobs by each job type's
current version and gives its jobs only to runners of that version.

Real ``runpack serve`` and ``runpack-runner`` processes; the ``versioned`` job type's
two handlers are in tests/versioned_jobs.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from runpack import hashing
from runpack.handler_versions import HandlerVersions
from runpack.jobtypes import JobTypeVersions, version_order
from runpack.notify import CHANNEL, EventKind, Notifier, PgBridge
from runpack.protocol import Hello
from runpack.store import Store
from runpack.store.base import RunnerRow
from runpack_runner.handler import JobHandler, job
from runpack_runner.jobs.hello_world import HelloWorld
from runpack_runner.registry import Registry, as_handler
from tests.calls import ServerCalls
from tests.pg import fresh_database, require_postgres
from tests.procs import (
    KEYS,
    NO_LIMITS,
    Proc,
    refused_registration,
    runners_listed,
    running_runner,
    running_server,
    until,
)
from tests.test_hostile_identity import new_key
from tests.test_store import T0, store_fixture  # noqa: F401
from tests.versioned_jobs import JOB_TYPE, install, version_1, version_2

SERVER_ENV = {
    **KEYS,
    **NO_LIMITS,
}
RUNNER_ENV = {"RUNPACK_RECONNECT_MIN": "0.2", "RUNPACK_RECONNECT_MAX": "1"}


class Server(ServerCalls):
    """What a test does with a running server: submit, wait, look at runners."""

    def __init__(self, http: aiohttp.ClientSession, proc: Proc) -> None:
        super().__init__(http, proc.url)
        self.proc = proc

    async def submit(self, params: dict[str, Any], job_type: str = JOB_TYPE) -> dict[str, Any]:
        return await self.submit_job(job_type, params)

    async def completed(self, job_id: str) -> dict[str, Any]:
        def done(job: dict[str, Any]) -> bool:
            assert job["status"] in ("pending", "claimed", "in_progress", "completed"), job.get(
                "error_message"
            )
            return bool(job["status"] == "completed")

        return await self.until_job(job_id, done, "completed", 20)


@contextlib.asynccontextmanager
async def serving(tmp: Path, **env: str) -> AsyncIterator[Server]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        with running_server(tmp / "server", env={**SERVER_ENV, **env}) as proc:
            yield Server(http, proc)


@contextlib.contextmanager
def runner_of(tmp: Path, url: str, version: str, **extra: str) -> Iterator[Proc]:
    env = {**RUNNER_ENV, **install(tmp / f"site-{version}", version), **extra}
    env["RUNPACK_NAME"] = f"v{version}"
    with running_runner(tmp / f"runner-{version}", url, env=env) as proc:
        yield proc


# --- real processes -----------------------------------------------------------------------------


async def test_submits_move_to_the_new_version_and_only_its_runners_run_them(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path) as server:
        with runner_of(tmp_path, server.url, "1"):
            v1 = await server.connected("v1")
            before = await server.submit({"n": 0})
            old = await server.completed(before["job_id"])
            assert old["output_data"] == {"computed_by": "1"}
            assert old["job_hash"] == hashing.job_hash(JOB_TYPE, {"n": 0}, "1")

            with runner_of(tmp_path, server.url, "2"):
                v2 = await server.connected("v2")
                # The same parameters are another job now: computed again, by version 2.
                again = await server.submit({"n": 0})
                assert again["job_id"] != before["job_id"]
                new = await server.completed(again["job_id"])
                assert new["output_data"] == {"computed_by": "2"}
                assert new["job_hash"] == hashing.job_hash(JOB_TYPE, {"n": 0}, "2")
                for n in range(1, 9):
                    job = await server.completed((await server.submit({"n": n}))["job_id"])
                    assert (job["output_data"], job["claimed_by"]) == ({"computed_by": "2"}, v2)
                assert (await server.submit({"n": 0}))["job_id"] == again["job_id"]  # cached

                # Job types without a version hash as the original did, on any runner.
                hello = await server.submit({"name": "Ada", "processing_time": 0}, "hello_world")
                done = await server.completed(hello["job_id"])
                assert done["job_hash"] == hashing.job_hash(
                    "hello_world", {"name": "Ada", "processing_time": 0}
                )
                shown = {r["runner_id"]: r.get("versions") for r in await server.runners()}
                assert shown[v1] == {JOB_TYPE: "1"} and shown[v2] == {JOB_TYPE: "2"}
                listed = await runners_listed(server.url)
                assert f"{JOB_TYPE} 1" in listed and f"{JOB_TYPE} 2" in listed

            # Version 2's runner left: the version stays (it never goes back by itself),
            # and the runner of version 1 does not take its jobs.
            waiting = await server.submit({"n": 100})
            assert (await server.job(waiting["job_id"]))["status"] == "pending"
            assert (await server.job(waiting["job_id"]))["claimed_by"] is None
            assert v1 in {r["runner_id"] for r in await server.runners() if r.get("connected")}


async def test_over_http_too_only_runners_of_the_version_take_its_jobs(tmp_path: Path) -> None:
    """Runners on the HTTP long-poll: each is judged by the versions it registered with."""
    async with serving(tmp_path) as server:
        with runner_of(tmp_path, server.url, "1", RUNPACK_TRANSPORT="http"):
            v1 = await server.connected("v1", over="is_active")
            early = await server.completed((await server.submit({"n": "early"}))["job_id"])
            assert (early["output_data"], early["claimed_by"]) == ({"computed_by": "1"}, v1)
            with runner_of(tmp_path, server.url, "2", RUNPACK_TRANSPORT="http"):
                v2 = await server.connected("v2", over="is_active")
                for n in range(6):
                    job = await server.completed((await server.submit({"n": n}))["job_id"])
                    assert (job["output_data"], job["claimed_by"]) == ({"computed_by": "2"}, v2)
                    assert job["job_hash"] == hashing.job_hash(JOB_TYPE, {"n": n}, "2")


async def test_the_operators_setting_wins(tmp_path: Path) -> None:
    async with serving(tmp_path, RUNPACK_JOB_TYPE_VERSIONS=f"{JOB_TYPE}=1") as server:
        with runner_of(tmp_path, server.url, "2"), runner_of(tmp_path, server.url, "1"):
            await server.connected("v2")
            v1 = await server.connected("v1")
            for n in range(6):
                job = await server.completed((await server.submit({"n": n}))["job_id"])
                assert job["output_data"] == {"computed_by": "1"}
                assert job["claimed_by"] == v1
                assert job["job_hash"] == hashing.job_hash(JOB_TYPE, {"n": n}, "1")


async def test_another_instance_hashes_with_the_new_version(tmp_path: Path) -> None:
    """Two instances on one PostgreSQL: a runner of version 2 registers with the first;
    the second keys its submits by version 2 too (the same body it hashed before as well),
    and the runner of version 2 runs them."""
    require_postgres()
    async with (
        fresh_database() as dsn,
        serving(tmp_path / "a", RUNPACK_DB=dsn) as a,
        serving(tmp_path / "b", RUNPACK_DB=dsn) as b,
    ):
        probe = await b.submit({"n": "same"})
        assert (await b.job(probe["job_id"]))["job_hash"] == hashing.job_hash(
            JOB_TYPE, {"n": "same"}
        )
        with runner_of(tmp_path, a.url, "2"):
            v2 = await a.connected("v2")

            async def keyed_by_2() -> dict[str, Any] | None:
                answer = await b.submit({"n": "same"})
                job = await b.job(answer["job_id"])
                wanted = hashing.job_hash(JOB_TYPE, {"n": "same"}, "2")
                return job if job["job_hash"] == wanted else None

            job = await until(keyed_by_2, "instance b keys by version 2", limit=30)
            done = await a.completed(job["job_id"])
            assert (done["output_data"], done["claimed_by"]) == ({"computed_by": "2"}, v2)


# --- a hostile runner -----------------------------------------------------------------------


HOSTILE = [
    ({JOB_TYPE: "x" * 65}, "1 to 64 printable characters"),
    ({JOB_TYPE: "1\x00"}, "1 to 64 printable characters"),
    ({JOB_TYPE: ""}, "1 to 64 printable characters"),
    ({JOB_TYPE: 2}, "1 to 64 printable characters"),
    ({"other": "1"}, "only of job types in capabilities"),
    ({f"t{i}": "1" for i in range(5000)}, "at most 256 job types"),
    (["1"], "an object of job type to version"),
]


async def test_absurd_versions_are_refused_at_registration(tmp_path: Path) -> None:
    async with serving(tmp_path) as server:
        http = server.http
        for versions, why in HOSTILE:
            body = {"name": "evil", "capabilities": [JOB_TYPE], "versions": versions}
            # Over HTTP and over WebSocket (an error frame), and no runner.
            answer, frame = await refused_registration(http, server.url, body)
            assert why in answer["details"], answer
            assert why in frame["details"], frame
        assert await server.runners() == []
        versions = (await server.submit({"n": 1}))["job_id"]
        job = await server.job(versions)
        assert job["job_hash"] == hashing.job_hash(JOB_TYPE, {"n": 1})  # nothing changed


async def test_another_labs_runner_cannot_raise_a_version(tmp_path: Path) -> None:
    """A runner on another lab's stored key declares version 999: the version stays,
    the operator's runner keeps the jobs, and the stranger's runner takes none of them.
    Listed in version_keys, the same key's runners do raise it."""
    async with serving(tmp_path) as server:
        secret, key_id = await new_key(server.http, server.url, "runner", "lab-b")
        with runner_of(tmp_path, server.url, "1"):
            v1 = await server.connected("v1")
            with runner_of(tmp_path, server.url, "999", RUNPACK_RUNNER_API_KEY=secret):
                v999 = await server.connected("v999")
                shown = {r["runner_id"]: r.get("versions") for r in await server.runners()}
                assert shown[v999] == {JOB_TYPE: "999"}  # declared, and kept to itself
                for n in range(3):
                    job = await server.completed((await server.submit({"n": 300 + n}))["job_id"])
                    assert job["claimed_by"] == v1 and job["output_data"]["computed_by"] == "1"
                    assert job["job_hash"] == hashing.job_hash(JOB_TYPE, {"n": 300 + n}, "1")
    # A key is trusted by its id: made first, then listed (the same database).
    async with serving(tmp_path / "trusted") as server:
        secret, key_id = await new_key(server.http, server.url, "runner", "lab-c")
    async with serving(tmp_path / "trusted", RUNPACK_VERSION_KEYS=f"env,{key_id}") as server:
        with runner_of(tmp_path / "trusted", server.url, "999", RUNPACK_RUNNER_API_KEY=secret):
            v999 = await server.connected("v999")
            job = await server.completed((await server.submit({"n": 1}))["job_id"])
            assert job["claimed_by"] == v999
            assert job["job_hash"] == hashing.job_hash(JOB_TYPE, {"n": 1}, "999")


# --- the store, on SQLite and PostgreSQL ------------------------------------------------------


async def test_a_version_only_moves_from_the_one_seen(store: Store) -> None:
    assert await store.job_type_versions() == {}
    assert await store.raise_job_type_version("t", None, "1", 1)
    assert not await store.raise_job_type_version("t", None, "9", 2)  # it has one now
    assert not await store.raise_job_type_version("t", "0", "9", 3)  # not the one seen
    assert await store.raise_job_type_version("t", "1", "2", 4)
    assert await store.raise_job_type_version("u", None, "a", 5)
    assert await store.job_type_versions() == {"t": "2", "u": "a"}


async def test_a_runners_versions_are_kept(store: Store) -> None:
    for rid in ("r1", "r2"):
        await store.insert_runner(RunnerRow(rid, rid, '["t"]', T0, T0))
    await store.set_runner_versions("r1", {"t": "2"})
    assert await store.runner_versions(["r1", "r2", "r3"]) == {"r1": {"t": "2"}}
    await store.set_runner_versions("r1", {})
    assert await store.runner_versions(["r1"]) == {}


async def test_versions_raised_by_two_instances_at_once_end_at_the_highest(store: Store) -> None:
    first, second = HandlerVersions(), HandlerVersions()
    first.store = second.store = store
    await first.declare({"t": "1.9"}, "env")
    await second.declare({"t": "1.10"}, "env")  # it has not read 1.9: its first try fails
    await first.declare({"t": "1.2"}, "env")  # lower: nothing changes
    await first.refresh()
    assert first.declared == second.declared == {"t": "1.10"}


# --- the rule -------------------------------------------------------------------------------


def test_natural_order() -> None:
    ordered = ["1", "1.2", "1.9", "1.10", "2", "2.0", "2.0b", "10", "a", "b2", "b10"]
    assert sorted(reversed(ordered), key=version_order) == ordered
    assert version_order("01") != version_order("1")  # a total order: ties broken by text


def test_who_takes_a_job_types_jobs() -> None:
    versions = HandlerVersions(JobTypeVersions.parse("pinned=3"))
    versions.declared = {"t": "2", "pinned": "9"}
    assert versions.version("t") == "2" and versions.version("pinned") == "3"
    assert versions.version("plain") is None
    assert versions.may_run("t", "2") and not versions.may_run("t", "1")
    assert not versions.may_run("t", None)  # its runners declare versions: one must
    assert versions.may_run("pinned", None)  # the operator's: a runner declaring none too
    assert versions.may_run("pinned", "3") and not versions.may_run("pinned", "9")
    assert versions.may_run("plain", None)
    kinds = frozenset({"t", "pinned", "plain"})
    assert versions.eligible(kinds, {"t": "1"}) == {"pinned", "plain"}
    assert versions.eligible(kinds, {"t": "2"}) is kinds


def test_a_handler_declares_its_version_and_the_runner_says_it() -> None:
    registry = Registry({JOB_TYPE: version_2, "hello_world": HelloWorld()})
    assert version_1.version == "1" and HelloWorld.version is None
    assert registry.versions() == {JOB_TYPE: "2"}
    hello = Hello(None, "r", registry.job_types, 1, versions=registry.versions())
    assert Hello.decode(hello.encode()).versions == {JOB_TYPE: "2"}
    assert "versions" not in Hello(None, "r", ["hello_world"], 1).encode()  # as the original

    class TooLong(JobHandler):
        version = "x" * 65

    with pytest.raises(TypeError, match="bad version"):  # discover logs it and leaves it out
        as_handler("too_long", TooLong)
    with pytest.raises(TypeError, match="version must be a string"):
        job("t", version=2)  # type: ignore[arg-type]


def test_an_event_kind_an_instance_does_not_know_is_skipped_not_its_batch() -> None:
    """A newer instance's event (as this one's versions event is to an older one)."""
    bridge = PgBridge("postgresql://unused", Notifier(), lambda _: None, "me")
    records = [{"t": "from_a_newer_instance", "j": None, "d": {}}, {"t": "job_type_versions"}]
    bridge._incoming(None, 0, CHANNEL, orjson.dumps({"o": "other", "e": records}).decode())
    event, _ = bridge._inbox.get_nowait()
    assert (event.type, event.origin) == (EventKind.JOB_TYPE_VERSIONS, "other")
    assert bridge._inbox.empty()
