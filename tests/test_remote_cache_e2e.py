"""A second figure from the same NWB file reads the runner's disk cache, not the server.

A real ``runpack serve`` and a real ``runpack-runner`` (each job in its own process)
make figures from an NWB file served on loopback by a server here that counts the
range requests it answers, and can wait before each (as a distant server would).
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.procs import KEYS, load_example, running_runner, running_server

ROOT = Path(__file__).resolve().parents[1]
SUBMIT_KEY = KEYS["RUNPACK_SUBMIT_API_KEY"]
JOB_TYPES = "figpack_nwb_raster_plot,figpack_nwb_pose_estimation"
#: Seconds the file server waits before each range it answers, as a distant one would.
DELAY = 0.02

pytestmark = pytest.mark.timeout(240)


neurosift = load_example("neurosift_like")
local_nwb = load_example("local_nwb")


@dataclass
class FileServer:
    """Static files on loopback (aiohttp: Range, ETag, Last-Modified), in a thread."""

    folder: Path
    delay: float = 0.0
    ranges: Counter[str] = field(default_factory=Counter)
    url: str = ""

    def __post_init__(self) -> None:
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)

    async def _serve(self) -> None:
        @web.middleware
        async def count(request: web.Request, handler: Any) -> web.StreamResponse:
            if "Range" in request.headers:
                self.ranges[request.path] += 1
                if self.delay:
                    await asyncio.sleep(self.delay)  # the distance to a remote server
            return await handler(request)

        app = web.Application(middlewares=[count])
        app.router.add_static("/", self.folder)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def __enter__(self) -> FileServer:
        self._thread.start()
        assert self._ready.wait(10), "the file server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture(scope="module")
def nwb_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("nwb")
    local_nwb.write_small_nwb(folder / "a.nwb")
    for name in ("b.nwb", "c.nwb", "d.nwb"):
        shutil.copy(folder / "a.nwb", folder / name)
    return folder


@contextmanager
def figure_stack(tmp: Path, files: FileServer, cache_mb: int) -> Iterator[str]:
    """runpack serve and a runner of the figure job types with this cache size: the URL."""
    env = {**KEYS, "RUNPACK_RATE_NEW_JOBS": "0", "RUNPACK_RATE_KEY_NEW_JOBS": "0"}
    with running_server(tmp / "server", env=env) as server:
        runner_env = {
            "FIGPACK_API_KEY": "",
            "RUNPACK_ALLOW_PRIVATE_URLS": "true",
            "RUNPACK_REMOTE_CACHE_DIR": str(tmp / "cache"),
            "RUNPACK_REMOTE_CACHE_MB": str(cache_mb),
        }
        with running_runner(
            tmp / "runner", server.url, "--job-types", JOB_TYPES, env=runner_env
        ) as runner:
            try:
                yield server.url
            except BaseException:
                print(server.output()[-3000:], runner.output()[-5000:])
                raise


def run_job(url: str, job_type: str, params: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """Submit, follow to the end: (seconds from submit to result, the final job)."""
    start = time.monotonic()
    job = neurosift.submit(url, SUBMIT_KEY, job_type, params)
    assert job["status"] == "pending", job
    final = neurosift.follow(url, job["job_id"], show=lambda line: None, timeout=120)
    assert final["status"] == "completed", final
    return time.monotonic() - start, {**final, "job_id": job["job_id"]}


def raster(files: FileServer, name: str) -> tuple[str, dict[str, Any]]:
    params = {"nwb_url": f"{files.url}/{name}", "units_path": local_nwb.UNITS_PATH}
    return "figpack_nwb_raster_plot", params


def pose(files: FileServer, name: str) -> tuple[str, dict[str, Any]]:
    return "figpack_nwb_pose_estimation", {
        "nwb_url": f"{files.url}/{name}",
        "path": local_nwb.POSE_PATH,
    }


def ranges_of(
    files: FileServer, url: str, job: tuple[str, dict[str, Any]]
) -> tuple[int, float, str]:
    """Range requests the job made to the file server, its time and its id."""
    name = "/" + job[1]["nwb_url"].rsplit("/", 1)[1]
    before = files.ranges[name]
    seconds, final = run_job(url, *job)
    return files.ranges[name] - before, seconds, final["job_id"]


def forget(tmp: Path, job_id: str) -> None:
    """Remove a figure's files, so that the same submit computes it again."""
    (tmp / "server" / "runpack-data" / "figures" / "manifests" / f"{job_id}.json").unlink()


def test_a_second_figure_from_a_file_reads_the_runner_cache(
    nwb_folder: Path, tmp_path: Path
) -> None:
    with FileServer(nwb_folder, delay=DELAY) as files, figure_stack(tmp_path, files, 64) as url:
        first, cold, job_id = ranges_of(files, url, raster(files, "a.nwb"))
        assert first > 0
        # The same figure computed again, by another job process: nothing from the server.
        forget(tmp_path, job_id)
        second, warm, _ = ranges_of(files, url, raster(files, "a.nwb"))
        assert second == 0, second
        # Another figure type from the same file shares what both read (its metadata).
        pose_warm, pose_warm_s, _ = ranges_of(files, url, pose(files, "a.nwb"))
        pose_cold, pose_cold_s, _ = ranges_of(files, url, pose(files, "b.nwb"))
        assert pose_cold > 0 and pose_warm <= pose_cold // 2, (pose_warm, pose_cold)
        # A file changed in place (another size and date: another ETag) is read again.
        _, _, job_id = ranges_of(files, url, raster(files, "c.nwb"))
        local_nwb.write_small_nwb(nwb_folder / "c.nwb", seed=1)
        forget(tmp_path, job_id)
        changed, _, _ = ranges_of(files, url, raster(files, "c.nwb"))
        assert changed > 0
        assert (tmp_path / "cache" / "remote-ranges.sqlite3").is_file()
    print(
        f"\ncache on, {DELAY * 1000:g} ms per range: raster {first} ranges {cold:.2f} s, "
        f"again {second} ranges {warm:.2f} s; pose after raster {pose_warm} ranges "
        f"{pose_warm_s:.2f} s, pose cold {pose_cold} ranges {pose_cold_s:.2f} s"
    )


def test_without_the_cache_each_figure_reads_the_file_again(
    nwb_folder: Path, tmp_path: Path
) -> None:
    with FileServer(nwb_folder, delay=DELAY) as files, figure_stack(tmp_path, files, 0) as url:
        first, cold, job_id = ranges_of(files, url, raster(files, "d.nwb"))
        forget(tmp_path, job_id)
        second, again, _ = ranges_of(files, url, raster(files, "d.nwb"))
        assert second == first > 0
        assert not (tmp_path / "cache").exists()
    print(
        f"\ncache off, {DELAY * 1000:g} ms per range: raster {first} ranges {cold:.2f} s, "
        f"again {second} ranges {again:.2f} s"
    )
