"""A real ``runpack serve`` with a real ``runpack-runner`` for a whole test module.

Import the fixture as ``live_fixture`` (``from tests.live import live_fixture  #
noqa: F401``) and take ``live`` in a test. Jobs of different tests share the
server, so each test gives its jobs parameters of its own.
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.procs import KEYS, NO_LIMITS, Proc, running_runner, running_server

SERVER_ENV = {
    **KEYS,
    **NO_LIMITS,
}
SUBMIT_KEY = KEYS["RUNPACK_SUBMIT_API_KEY"]
ADMIN_KEY = KEYS["RUNPACK_ADMIN_API_KEY"]


@dataclass
class Live:
    url: str
    server: Proc
    runner: Proc

    def logs(self) -> str:
        return f"--- server\n{self.server.output()}\n--- runner\n{self.runner.output()}"


def unique(prefix: str = "t") -> str:
    """A name no other job of the session has (so no submit finds another's job)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def connected_runners(url: str) -> list[dict[str, object]]:
    request = urllib.request.Request(
        url + "/api/admin/runners", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        runners = json.load(resp)["runners"]
    return [r for r in runners if r.get("connected")]


def wait_for_runner(url: str, runner: Proc, limit: float = 30) -> None:
    """Poll the admin API (bounded) until the runner's socket is attached."""
    deadline = time.monotonic() + limit
    while not connected_runners(url):
        if runner.popen.poll() is not None:
            raise RuntimeError(f"the runner exited:\n{runner.output()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no runner connected after {limit:g} s:\n{runner.output()}")
        time.sleep(0.05)


@pytest.fixture(scope="module", name="live")
def live_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("live")
    with (
        running_server(tmp / "server", env=SERVER_ENV) as server,
        running_runner(tmp / "runner", server.url, "--concurrency", "4") as runner,
    ):
        wait_for_runner(server.url, runner)
        yield Live(server.url, server, runner)
