"""A runner on HTTP that restarts with its saved id registers again under it
(``POST /api/runner/verify``): the server keeps what it runs now (name, job types,
handler versions, image allow list), not what it ran when it first registered.

Real ``runpack serve`` and ``runpack-runner`` processes; the ``versioned`` job type's
two handlers are in tests/versioned_jobs.py. The attacker knows a runner's id (it is
public) and holds a runner key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runpack import hashing
from runpack.store import RunnerRow, Store
from tests.calls import ADMIN
from tests.procs import KEYS, running_runner, until
from tests.test_handler_versions import RUNNER_ENV, Server, serving
from tests.test_hostile_identity import call
from tests.test_store import T0, store_fixture  # noqa: F401
from tests.versioned_jobs import JOB_TYPE, install

RUNNER = {"Authorization": f"Bearer {KEYS['RUNPACK_RUNNER_API_KEY']}"}


async def shown(server: Server, runner_id: str) -> dict[str, Any]:
    """The runner as the admin view shows it, without what contact changes."""
    row = next(r for r in await server.runners() if r["runner_id"] == runner_id)
    return {k: v for k, v in row.items() if k not in ("last_seen", "is_active")}


async def test_a_known_runner_declares_anew_in_one_statement(store: Store) -> None:
    rid = "4f7c1c0e-8d1b-4a49-9d8e-0a6f5e3b2c11"
    await store.insert_runner(RunnerRow(rid, "old", '["a"]', T0, T0))
    await store.set_runner_versions(rid, {"a": "1"})
    assert await store.declare_runner(rid, "new", ["a", "container"], {"a": "2"}, ["x"], T0 + 5)
    got = await store.get_runner(rid)
    assert got is not None and (got.name, got.last_seen) == ("new", T0 + 5)
    assert json.loads(got.capabilities) == ["a", "container"]
    assert await store.runner_versions([rid]) == {rid: {"a": "2"}}
    assert await store.runner_images([rid]) == {rid: ["x"]}
    # Nothing declared now: none kept.
    assert await store.declare_runner(rid, "new", ["a"], {}, None, T0 + 6)
    assert await store.runner_versions([rid]) == {} and await store.runner_images([rid]) == {}
    unknown = "00000000-0000-4000-8000-000000000000"
    assert not await store.declare_runner(unknown, "x", ["a"], {}, None, T0)
    assert await store.get_runner(unknown) is None


async def test_a_restarted_http_runner_is_what_it_runs_now(tmp_path: Path) -> None:
    state = tmp_path / "runner"  # the same state folder, so the same saved id
    async with serving(tmp_path) as server:
        first = {
            **RUNNER_ENV,
            **install(tmp_path / "site-1", "1"),
            "RUNPACK_TRANSPORT": "http",
            "RUNPACK_JOB_TYPES": JOB_TYPE,
            "RUNPACK_NAME": "before",
        }
        with running_runner(state, server.url, env=first):
            rid = await server.connected("before", over="is_active")
        saved = json.loads((state / ".runpack_runner.json").read_text())
        assert saved["runner_id"] == rid
        view = await shown(server, rid)
        assert (view["capabilities"], view["versions"]) == ([JOB_TYPE], {JOB_TYPE: "1"})

        then = {
            **RUNNER_ENV,
            **install(tmp_path / "site-2", "2"),  # versioned 2, and hello_world
            "RUNPACK_TRANSPORT": "http",
            "RUNPACK_NAME": "after",
        }
        with running_runner(state, server.url, env=then):

            async def registered_again() -> dict[str, Any] | None:
                view = await shown(server, rid)
                return view if view["name"] == "after" else None

            view = await until(registered_again, "the runner registered again")
            assert sorted(view["capabilities"]) == ["hello_world", JOB_TYPE]
            assert view["versions"] == {JOB_TYPE: "2"}
            assert [r["runner_id"] for r in await server.runners()] == [rid]  # no new row

            # A job type it did not run before runs on it.
            hello = await server.submit({"name": "Ada", "processing_time": 0}, "hello_world")
            done = await server.completed(hello["job_id"])
            assert done["claimed_by"] == rid
            # The version it declares now is the job type's current one, and its jobs
            # (keyed by version 2) are its own.
            job = await server.completed((await server.submit({"n": 1}))["job_id"])
            assert (job["output_data"], job["claimed_by"]) == ({"computed_by": "2"}, rid)
            assert job["job_hash"] == hashing.job_hash(JOB_TYPE, {"n": 1}, "2")


async def test_post_verify_refuses_other_keys_and_bad_bodies(tmp_path: Path) -> None:
    async with serving(tmp_path) as server:
        http, url = server.http, server.url
        verify = f"{url}/api/runner/verify"
        status, made = await call(
            http,
            "POST",
            f"{url}/api/runner/register",
            RUNNER,
            {
                "name": "lab-a",
                "capabilities": ["container"],
                "with_secret": True,
                "images": ["busybox:1"],
            },
        )
        assert status == 201, made
        rid, secret = made["runner_id"], made["runner_secret"]
        own = {**RUNNER, "X-Runner-ID": rid, "X-Runner-Secret": secret}
        before = await shown(server, rid)
        assert before["images"] == ["busybox:1"]
        takeover = {"name": "mine now", "capabilities": ["container", "hello_world"]}

        # Another lab's stored runner key, the shared key without the runner's secret,
        # and with a wrong one: refused, and nothing changed.
        status, key = await call(
            http, "POST", f"{url}/api/admin/keys", ADMIN, {"role": "runner", "name": "lab-b"}
        )
        assert status == 201, key
        other = {"Authorization": f"Bearer {key['secret']}", "X-Runner-ID": rid}
        for headers in (
            other,
            {**other, "X-Runner-Secret": secret},
            {**RUNNER, "X-Runner-ID": rid},
            {**RUNNER, "X-Runner-ID": rid, "X-Runner-Secret": "x" * 43},
        ):
            status, answer = await call(http, "POST", verify, headers, takeover)
            assert status == 403, answer
            assert await shown(server, rid) == before

        # A bad body, with the right key and secret: a one-line 400, nothing changed.
        for body, why in (
            ({"name": "", "capabilities": ["container"]}, "name"),
            ({"name": "x", "capabilities": "container"}, "capabilities"),
            ({"name": "x", "capabilities": ["a"], "versions": {"b": "1"}}, "versions"),
            ({"name": "x", "capabilities": ["a"], "images": ["busybox:2"]}, "images"),
        ):
            status, answer = await call(http, "POST", verify, own, body)
            assert status == 400, answer
            assert answer["error"] == "Invalid registration data"
            assert why in answer["details"] and "\n" not in answer["details"]
            assert await shown(server, rid) == before
        async with http.post(verify, headers=own, data=b"{not json") as resp:
            assert resp.status == 400 and (await resp.json())["error"] == "Invalid JSON body"
        assert await shown(server, rid) == before

        # Unknown runner: 404 as GET answers; nothing made.
        unknown = {**RUNNER, "X-Runner-ID": "00000000-0000-4000-8000-000000000000"}
        status, answer = await call(http, "POST", verify, unknown, takeover)
        assert (status, answer) == (404, {"exists": False, "message": "Runner not found"})
        assert [r["runner_id"] for r in await server.runners()] == [rid]

        # Its own key and secret: the row is what the body says (no images: any image).
        status, answer = await call(http, "POST", verify, own, takeover)
        assert status == 200, answer
        assert answer == {
            "exists": True,
            "runner_name": "mine now",
            "message": "Runner verified successfully",
        }
        after = await shown(server, rid)
        assert after["name"] == "mine now"
        assert after["capabilities"] == ["container", "hello_world"]
        assert after.get("images") is None and not after.get("versions")


async def test_the_originals_get_verify_answers_as_before(tmp_path: Path) -> None:
    """The original's runner: no secret, ``GET /api/runner/verify`` with X-Runner-ID."""
    async with serving(tmp_path) as server:
        http, url = server.http, server.url
        body = {"name": "original", "capabilities": ["hello_world"]}
        status, made = await call(http, "POST", f"{url}/api/runner/register", RUNNER, body)
        assert status == 201 and "runner_secret" not in made, made
        rid = made["runner_id"]
        before = await shown(server, rid)
        verify = f"{url}/api/runner/verify"
        status, answer = await call(http, "GET", verify, {**RUNNER, "X-Runner-ID": rid})
        assert (status, answer) == (
            200,
            {"exists": True, "runner_name": "original", "message": "Runner verified successfully"},
        )
        unknown = {**RUNNER, "X-Runner-ID": "00000000-0000-4000-8000-000000000000"}
        status, answer = await call(http, "GET", verify, unknown)
        assert (status, answer) == (404, {"exists": False, "message": "Runner not found"})
        status, answer = await call(http, "GET", verify, RUNNER)
        assert (status, answer["error"]) == (400, "Missing X-Runner-ID header")
        assert await shown(server, rid) == before
