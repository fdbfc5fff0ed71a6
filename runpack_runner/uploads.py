"""Folders from handlers to the server: ``POST /api/runner/jobs/{id}/files``, one tar archive.

A handler thread calls the uploader (through ``JobContext.upload_folder``); the
folder is packed into a temporary tar file in that thread, then sent on the
event loop with the runner key and ``X-Runner-ID``, whichever transport carries
the jobs. Network failures and 5xx answers are retried with backoff; a refusal
(too large, not our job any more) fails at once with the server's message. When
the tries run out on a passing condition (the server's disk is full: 507; its
storage or a proxy is unavailable: 503, 502, 504; the network), the upload raises
:class:`UploadRetryable`, a :class:`RetryLater`: the runner reports the job as
retryable and the server queues it again. The job completes only after this
returns, so a result never names missing files.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tarfile
import tempfile
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import aiohttp

from runpack import protocol
from runpack_runner.context import JobContext, RetryLater
from runpack_runner.settings import RunnerSettings

log = logging.getLogger(__name__)

TRIES = 4
FIRST_RETRY_DELAY = 1.0
#: Reading the answer may take a while: the server unpacks the archive first.
UPLOAD_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=15, sock_read=300)
POLL = 0.25
#: Answers that say "not now": the job is worth running again later.
PASSING = frozenset({408, 429, 502, 503, 504, 507})


class UploadFailed(RuntimeError):
    """The server refused the files or could not be reached."""


class UploadRetryable(UploadFailed, RetryLater):
    """The files could not be stored for a passing reason (disk full, network down)."""


def pack(folder: Path) -> tuple[Path, int, int]:
    """A temporary tar archive of the regular files under ``folder``: (path, files, bytes)."""
    if not folder.is_dir():
        raise UploadFailed(f"not a folder: {folder}")
    fd, name = tempfile.mkstemp(prefix="runpack-upload-", suffix=".tar")
    os.close(fd)
    archive = Path(name)
    count = size = 0
    try:
        with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(folder.rglob("*")):
                if path.is_symlink() or not path.is_file():
                    continue
                tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)
                count += 1
                size += path.stat().st_size
    except BaseException:
        archive.unlink(missing_ok=True)
        raise
    return archive, count, size


class FolderUploader:
    """Sends a job's folder to the server as the runner holding the job."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: RunnerSettings,
        runner_id: Callable[[], str | None],
        runner_secret: Callable[[], str | None] = lambda: None,
    ) -> None:
        self._session = session
        self._settings = settings
        self._runner_id = runner_id
        self._runner_secret = runner_secret
        self._loop = asyncio.get_running_loop()

    def __call__(self, ctx: JobContext, folder: Path) -> str:
        """From the handler's thread: upload ``folder``, return its URL (figpack_url if any)."""
        ctx.check_cancelled()
        archive, count, size = pack(folder)
        try:
            ctx.log(f"Uploading {count} files ({size / 1e6:.1f} MB) to the server...")
            future: Future[str] = asyncio.run_coroutine_threadsafe(
                self.upload(ctx.job_id, archive), self._loop
            )
            while True:
                try:
                    return future.result(timeout=POLL)
                except TimeoutError:
                    if ctx.cancelled:
                        future.cancel()
                        ctx.check_cancelled()
        finally:
            archive.unlink(missing_ok=True)

    async def upload(self, job_id: str, archive: Path) -> str:
        url = f"{self._settings.worker_url.rstrip('/')}/api/runner/jobs/{job_id}/files"
        problem = ""
        passing = False
        for attempt in range(TRIES):
            if attempt:
                await asyncio.sleep(FIRST_RETRY_DELAY * 2 ** (attempt - 1))
            headers = {
                "Authorization": f"Bearer {self._settings.runner_api_key}",
                "X-Runner-ID": self._runner_id() or "",
                "Content-Type": "application/x-tar",
            }
            secret = self._runner_secret()
            if secret:
                headers[protocol.RUNNER_SECRET_HEADER] = secret
            try:
                with archive.open("rb") as body:
                    async with self._session.post(
                        url, data=body, headers=headers, timeout=UPLOAD_TIMEOUT
                    ) as resp:
                        reply = await _json(resp)
                        if resp.status == 201 and isinstance(reply, dict):
                            return str(reply.get("figpack_url") or reply["url"])
                        problem = f"HTTP {resp.status}: {_error_text(reply)}"
                        passing = resp.status in PASSING
                        if 400 <= resp.status < 500 and not passing:
                            raise UploadFailed(f"The server refused the files ({problem})")
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
                passing = True
            log.warning("upload of job %s failed (%s), attempt %d", job_id, problem, attempt + 1)
        failure = UploadRetryable if passing else UploadFailed
        raise failure(f"Could not upload the files after {TRIES} attempts ({problem})")


async def _json(resp: aiohttp.ClientResponse) -> Any:
    try:
        return await resp.json(content_type=None)
    except ValueError:
        return None


def _error_text(reply: Any) -> str:
    if isinstance(reply, dict):
        text = str(reply.get("error") or reply.get("message") or reply)
        details = reply.get("details")
        return f"{text}: {details}" if details else text
    return str(reply)
