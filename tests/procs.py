"""Real ``runpack serve`` and ``runpack-runner`` processes on loopback ports, for tests."""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

# Re-exported: the tests take them from here.
from runpack.bench import NO_LIMITS as NO_LIMITS
from runpack.bench import free_port as free_port

KEYS = {
    "RUNPACK_SUBMIT_API_KEY": "proc-submit-key",
    "RUNPACK_RUNNER_API_KEY": "proc-runner-key",
    "RUNPACK_ADMIN_API_KEY": "proc-admin-key",
}


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment without any RUNPACK_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNPACK_")}
    env.update(extra or {})
    return env


async def until(check: Callable[[], Any], what: str, limit: float = 20) -> Any:
    """Poll ``check`` (plain or async) until it returns something truthy; fail after
    ``limit`` seconds naming ``what``. For state that has no event to wait on."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {limit:g} s waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"server at {url} not healthy after {timeout} s:\n{log.read_text()}")


def stop(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def running_server(
    cwd: Path, env: Mapping[str, str] | None = None, args: tuple[str, ...] = ()
) -> Iterator[Proc]:
    """``runpack serve`` on a free loopback port in ``cwd``; stopped on exit."""
    port = free_port()
    cwd.mkdir(parents=True, exist_ok=True)
    log = cwd / f"server-{port}.log"
    cmd = [sys.executable, "-m", "runpack.cli", "serve", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), *args]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=clean_env(env), stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log)
        yield Proc(proc, url, log)
    finally:
        stop(proc)


@contextmanager
def running_runner(
    cwd: Path, url: str, *args: str, env: Mapping[str, str] | None = None
) -> Iterator[Proc]:
    """``runpack-runner`` against ``url`` with the test runner key, in ``cwd``; stopped on exit."""
    cwd.mkdir(parents=True, exist_ok=True)
    log = cwd / "runner-output.log"
    extra = {
        "RUNPACK_WORKER_URL": url,
        "RUNPACK_RUNNER_API_KEY": KEYS["RUNPACK_RUNNER_API_KEY"],
        "RUNPACK_REMOTE_CACHE_DIR": str(cwd / "remote-cache"),  # not shared between tests
        **(env or {}),
    }
    cmd = [sys.executable, "-m", "runpack_runner.cli", *args]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=clean_env(extra), stdout=out, stderr=out)
    try:
        yield Proc(proc, url, log)
    finally:
        stop(proc)


def load_example(name: str) -> ModuleType:
    """A script of examples/ as a module (they are not a package)."""
    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def runners_listed(url: str) -> str:
    """What ``runpack runners`` prints for the server at ``url`` (admin key, wide)."""
    env = clean_env({"RUNPACK_URL": url, **KEYS, "COLUMNS": "300"})
    listed = await asyncio.to_thread(
        subprocess.run,
        [str(Path(sys.executable).parent / "runpack"), "runners"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert listed.returncode == 0, listed.stderr
    return listed.stdout


async def refused_registration(http: Any, url: str, body: dict[str, Any]) -> tuple[Any, Any]:
    """Register ``body`` over HTTP and as a WebSocket hello: (the HTTP answer, the
    error frame), each checked to be a refusal."""
    headers = {"Authorization": f"Bearer {KEYS['RUNPACK_RUNNER_API_KEY']}"}
    async with http.post(f"{url}/api/runner/register", json=body, headers=headers) as r:
        answer = await r.json()
    assert r.status == 400, answer
    assert answer["error"] == "Invalid registration data"
    async with http.ws_connect(f"{url}/api/runner/ws", headers=headers) as ws:
        await ws.send_json({"type": "hello", **body, "concurrency": 1})
        frame = await ws.receive_json(timeout=10)
    assert frame["type"] == "error" and frame["error"] == "Invalid registration data", frame
    return answer, frame
