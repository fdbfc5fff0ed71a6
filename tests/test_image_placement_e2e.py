"""Container jobs go only to runners whose image list allows their image: real
``runpack serve`` and ``runpack-runner`` processes, a real dockerd, busybox images built
here (tests/dockerimages.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests import dockerimages
from tests.calls import ServerCalls
from tests.pg import fresh_database, require_postgres
from tests.procs import (
    KEYS,
    NO_LIMITS,
    Proc,
    runners_listed,
    running_runner,
    running_server,
)


@pytest.fixture(scope="module")
def api() -> Any:
    return dockerimages.connect()


@pytest.fixture(scope="module")
def images(api: Any) -> Iterator[list[tuple[str, str]]]:
    """Four busybox images, each its own ID: (``repository:tag``, ID)."""
    built = [dockerimages.build(api, {"etc/which": name}) for name in "abcd"]
    yield built
    for name, _ in built:
        dockerimages.remove(api, name)


def pinned(image: tuple[str, str]) -> str:
    name, image_id = image
    return f"{name.rsplit(':', 1)[0]}@{image_id}"


class Server(ServerCalls):
    def __init__(self, http: aiohttp.ClientSession, proc: Proc, tmp: Path) -> None:
        super().__init__(http, proc.url)
        self.tmp = tmp

    async def submit(self, image: tuple[str, str], n: int, reference: str = "") -> str:
        params = {
            "image": reference or pinned(image),
            "command": ["sh", "-c", f"cat /etc/which; echo {n}"],
        }
        return str((await self.submit_job("container", params, (201,)))["job_id"])

    async def by_name(self) -> dict[str, dict[str, Any]]:
        """The runners, by name."""
        return {row["name"]: row for row in await self.runners()}

    @contextlib.contextmanager
    def runner(
        self, name: str, allowed: str | None, transport: str = "websocket"
    ) -> Iterator[Proc]:
        env = {
            "RUNPACK_TRANSPORT": transport,
            "RUNPACK_NAME": name,
            "RUNPACK_JOB_TYPES": "container",
            "RUNPACK_CONCURRENCY": "2",
            "RUNPACK_CONTAINER_WORK_DIR": str(self.tmp / "work"),
            "RUNPACK_CONTAINER_MEMORY_MB": "64",
            "RUNPACK_CONTAINER_TIME_LIMIT": "60",
        }
        if allowed is not None:
            env["RUNPACK_CONTAINER_IMAGES"] = allowed
        with running_runner(self.tmp / f"runner-{name}", self.url, env=env) as proc:
            yield proc


@contextlib.asynccontextmanager
async def serving(tmp: Path, engine: str) -> AsyncIterator[Server]:
    (tmp / "work").mkdir()
    async with contextlib.AsyncExitStack() as stack:
        args: tuple[str, ...] = ()
        if engine == "postgres":
            require_postgres()
            args = ("--db", await stack.enter_async_context(fresh_database()))
        http = await stack.enter_async_context(
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        )
        proc = stack.enter_context(running_server(tmp / "server", {**KEYS, **NO_LIMITS}, args))
        yield Server(http, proc, tmp)


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
async def test_container_jobs_go_only_to_runners_that_allow_their_image(
    tmp_path: Path, api: Any, images: list[tuple[str, str]], engine: str
) -> None:
    a, b, c, d = images
    async with serving(tmp_path, engine) as server:
        # Runner "a" allows image a by reference; "b" allows image b by its tag, which
        # it sends resolved: the image ID, by itself and after any name. "b" talks HTTP
        # (it registers with its list, and long-polls).
        with server.runner("a", pinned(a)), server.runner("b", b[0], "http"):
            ra, rb = await server.connected("a"), await server.connected("b", "is_active")
            shown = await server.by_name()
            assert shown["a"]["images"] == [pinned(a)]
            assert shown["b"]["images"] == [b[0], b[1], f"*@{b[1]}"]
            listed = await runners_listed(server.url)
            assert "container (1 image)" in listed and "container (3 images)" in listed, listed
            jobs = {
                await server.submit(image, n): rid
                for n in range(3)
                for image, rid in ((a, ra), (b, rb))
            }
            for job_id, rid in jobs.items():
                job = await server.settled(job_id)
                assert job["status"] == "completed", job
                assert job["claimed_by"] == rid, job
            # Image c: neither allows it. It waits, pending, and says why, while the
            # jobs the runners allow keep running past it.
            waiting = await server.submit(c, 0)
            after = await server.submit(a, 9)
            assert (await server.settled(after))["claimed_by"] == ra
            job = await server.job(waiting)
            assert job["status"] == "pending", job
            assert "no connected runner allows its image" in job["queue"]["message"], job
            # A runner that allows it connects: it takes it.
            with server.runner("c", f"{dockerimages.REPOSITORY}@{c[1]}"):
                rc = await server.connected("c")
                job = await server.settled(waiting)
                assert job["status"] == "completed" and job["claimed_by"] == rc, job
                assert job["output_data"]["image_id"] == c[1]
            # Image d: allowed by no list. A runner that sends none (as before) is given
            # it, and its own check refuses it.
            refused = await server.submit(d, 0)
            unpinned = await server.submit(d, 0, reference=d[0])
            assert (await server.job(refused))["status"] == "pending"
            with server.runner("plain", None):
                plain = await server.connected("plain")
                assert "images" not in (await server.by_name())["plain"]
                job = await server.settled(refused)
                assert job["claimed_by"] == plain, job
                assert job["error_message"] == (
                    f"Invalid parameters: image {pinned(d)} is not allowed: this runner"
                    " allows no images (RUNPACK_CONTAINER_IMAGES is empty)"
                )
                assert "Container" not in job["console_output"]  # none was started
                job = await server.settled(unpinned)
                assert job["error_message"].startswith(
                    "Invalid parameters: Parameter 'image' is not pinned"
                )
                assert "docker image inspect" in job["error_message"]


async def test_an_http_runner_restarted_with_another_list_is_judged_by_it(
    tmp_path: Path, api: Any, images: list[tuple[str, str]]
) -> None:
    """Over HTTP a runner that starts again with its saved id sends its list anew."""
    a, b, _, _ = images
    async with serving(tmp_path, "sqlite") as server:
        with server.runner("h", pinned(a), "http"):
            rid = await server.connected("h", "is_active")
            waiting = await server.submit(b, 0)
            assert (await server.settled(await server.submit(a, 0)))["claimed_by"] == rid
            assert (await server.job(waiting))["status"] == "pending"
        # The same state folder: the same id, now allowing image b only.
        with server.runner("h", pinned(b), "http"):
            job = await server.settled(waiting)
            assert job["status"] == "completed" and job["claimed_by"] == rid, job
            shown = await server.by_name()
            assert list(shown) == ["h"] and shown["h"]["images"] == [pinned(b)]
