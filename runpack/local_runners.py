"""Runner daemons started beside the server for local use (``--local-runners N``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from runpack.settings import Settings

log = logging.getLogger(__name__)


def runner_command(name: str) -> list[str]:
    return [sys.executable, "-m", "runpack_runner.cli", "--name", name]


def local_runners(settings: Settings) -> object:
    """A cleanup context that starts ``settings.local_runners`` daemons and stops them."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        procs: list[asyncio.subprocess.Process] = []
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
        env = {
            **os.environ,
            "RUNPACK_WORKER_URL": f"http://{host}:{settings.port}",
            "RUNPACK_RUNNER_API_KEY": settings.runner_api_key,
            "RUNPACK_ALLOW_PRIVATE_URLS": "true" if settings.allow_private_urls else "false",
        }
        for i in range(settings.local_runners):
            folder = Path(settings.data_dir) / f"runner-{i + 1}"
            folder.mkdir(parents=True, exist_ok=True)
            proc = await asyncio.create_subprocess_exec(
                *runner_command(f"local-{i + 1}"), cwd=folder, env=env
            )
            log.info("started local runner %d (pid %d) in %s", i + 1, proc.pid, folder)
            procs.append(proc)
        try:
            yield
        finally:
            for proc in procs:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.terminate()
            for proc in procs:
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()

    return ctx
