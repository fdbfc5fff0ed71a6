"""The asynchronous client: one aiohttp session, each method one request, and
:meth:`AsyncClient.watch` following a job's stream across reconnects."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import aiohttp
import orjson

from runpack.client.errors import (
    JobFailed,
    RateLimitedError,
    RunpackClientError,
    RunpackConnectionError,
    server_error,
)
from runpack.client.models import (
    CancelResult,
    CheckResult,
    Event,
    JobInfo,
    JobPage,
    JobSummary,
    Progress,
    RunnerInfo,
    SubmitResult,
)
from runpack.client.sse import SSEParser
from runpack.client.upload import upload_body

#: The server sends a keepalive every 15 s: a stream silent for this long is dead.
STREAM_READ_TIMEOUT = 60.0


class AsyncClient:
    """A Runpack server at ``url``.

    ``submit_key`` is used for submit, check, status and cancel (the admin key
    stands in when it is not given); ``admin_key`` for listing jobs and runners and
    for cancelling running jobs. Following a job needs no key. ``timeout`` bounds
    each request (seconds); a stream that breaks is reopened, resuming from its last
    event, for up to ``reconnect_timeout`` seconds.

    A request over one of the server's rate limits raises :class:`RateLimitedError`
    (its ``retry_after`` says how long to wait); with ``retry_on_limit=True`` the
    client waits that long and tries again, for up to ``limit_wait`` seconds of
    waiting in all per call, then raises it.

    Use it as an async context manager, or call :meth:`close` when done.
    """

    def __init__(
        self,
        url: str,
        submit_key: str | None = None,
        admin_key: str | None = None,
        *,
        timeout: float = 30.0,
        reconnect_timeout: float = 30.0,
        retry_on_limit: bool = False,
        limit_wait: float = 600.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.submit_key = submit_key or admin_key
        self.admin_key = admin_key
        self.timeout = timeout
        self.reconnect_timeout = reconnect_timeout
        self.retry_on_limit = retry_on_limit
        self.limit_wait = limit_wait
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._http()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(limit=0),
            )
        return self._session

    async def _request(
        self,
        method: str,
        path: str,
        key: str | None,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        upload: bytes | str | os.PathLike[str] | None = None,
    ) -> tuple[int, Any]:
        waited = 0.0
        while True:
            try:
                return await self._request_once(method, path, key, body, params, upload)
            except RateLimitedError as exc:
                waited = await self._wait_for_limit(exc, waited)

    async def _wait_for_limit(self, exc: RateLimitedError, waited: float) -> float:
        """Wait out a refusal, if the client may; the time waited so far."""
        if not self.retry_on_limit or waited + exc.retry_after > self.limit_wait:
            raise exc
        await asyncio.sleep(exc.retry_after)
        return waited + exc.retry_after

    async def _request_once(
        self,
        method: str,
        path: str,
        key: str | None,
        body: dict[str, Any] | None,
        params: dict[str, str] | None,
        upload: bytes | str | os.PathLike[str] | None = None,
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        data: Any = None
        timeout = None
        if body is not None:
            data = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
        try:
            if upload is not None:  # streamed, opened anew for each try; each read bounded
                data = await asyncio.to_thread(upload_body, upload)
                headers["Content-Type"] = "application/octet-stream"
                timeout = aiohttp.ClientTimeout(sock_connect=self.timeout, sock_read=self.timeout)
            async with self._http().request(
                method, self.url + path, data=data, headers=headers, params=params, timeout=timeout
            ) as resp:
                raw = await resp.read()
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise RunpackConnectionError(
                f"cannot reach {self.url}", str(exc) or type(exc).__name__
            ) from exc
        finally:
            if upload is not None and data is not None:
                data.close()
        try:
            reply = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            reply = None
        if status >= 400:
            raise server_error(status, reply, raw, retry_after)
        return status, reply

    # --- jobs -----------------------------------------------------------------------------
    async def submit(
        self,
        job_type: str,
        params: dict[str, Any],
        *,
        force: bool = False,
        priority: int = 0,
    ) -> SubmitResult:
        """Queue a job, or find the one with the same inputs (and its cached result).

        ``force`` queues a failed or expired job again at once; higher ``priority``
        runs first.
        """
        body: dict[str, Any] = {"job_type": job_type, "input_params": params}
        if force:
            body["force"] = True
        if priority:
            body["priority"] = priority
        status, reply = await self._request("POST", "/api/jobs/submit", self.submit_key, body)
        return SubmitResult(
            job_id=reply["job_id"],
            status=reply["status"],
            message=reply.get("message", ""),
            created=status == 201,
            result=reply.get("result"),
            error=reply.get("error"),
        )

    async def upload_input(self, source: bytes | str | os.PathLike[str]) -> str:
        """Upload an input file (bytes, or a path); its SHA-256 (docs/containers.md)."""
        _, reply = await self._request("POST", "/api/inputs", self.submit_key, upload=source)
        return str(reply["sha256"])

    async def check(self, job_type: str, params: dict[str, Any]) -> CheckResult:
        """Whether a job with these inputs exists, without creating it."""
        body = {"job_type": job_type, "input_params": params}
        _, reply = await self._request("POST", "/api/jobs/check", self.submit_key, body)
        return CheckResult(
            exists=bool(reply.get("exists")),
            message=reply.get("message", ""),
            job_id=reply.get("job_id"),
            status=reply.get("status"),
            result=reply.get("result"),
            error=reply.get("error"),
        )

    async def status(self, job_id: str) -> JobInfo:
        """A job's status, progress, and its result or error once it has one."""
        _, reply = await self._request("GET", f"/api/jobs/{_segment(job_id)}", self.submit_key)
        return JobInfo(
            job_id=reply["job_id"],
            status=reply["status"],
            job_type=reply["job_type"],
            created_at=reply["created_at"],
            updated_at=reply["updated_at"],
            progress=Progress.from_json(reply.get("progress")),
            result=reply.get("result"),
            error=reply.get("error"),
            queue=reply.get("queue"),
        )

    async def details(self, job_id: str) -> dict[str, Any]:
        """Everything about a job (``GET /api/admin/jobs/{id}``): parameters, runner,
        console, result or error. Needs no key."""
        _, reply = await self._request("GET", f"/api/admin/jobs/{_segment(job_id)}", None)
        return dict(reply)

    async def cancel(self, job_id: str) -> CancelResult:
        """Cancel a job: a pending one with the submit key, a running one with the admin key."""
        key = self.admin_key or self.submit_key
        _, reply = await self._request("POST", f"/api/jobs/{_segment(job_id)}/cancel", key)
        return CancelResult(reply["job_id"], reply["status"], reply.get("message", ""))

    async def jobs(
        self,
        *,
        status: str | None = None,
        job_type: str | None = None,
        limit: int = 100,
        offset: int = 0,
        after: str | None = None,
    ) -> JobPage:
        """Jobs, newest first (admin key); ``job_type`` matches any type containing it.
        A list whose ``next``, when more follow, is the ``after`` of the following
        page (as fast at any depth; ``offset`` then counts from there)."""
        params = {"limit": str(limit), "offset": str(offset)}
        if status:
            params["status"] = status
        if job_type:
            params["job_type"] = job_type
        if after:
            params["after"] = after
        _, reply = await self._request("GET", "/api/admin/jobs", self.admin_key, params=params)
        rows = (
            JobSummary(
                job_id=j["job_id"],
                job_type=j["job_type"],
                status=j["status"],
                created_at=j["created_at"],
                updated_at=j["updated_at"],
                claimed_by=j.get("claimed_by"),
                runner_name=j.get("runner_name"),
            )
            for j in reply["jobs"]
        )
        return JobPage(rows, reply.get("next"))

    async def runners(self) -> list[RunnerInfo]:
        """Registered runners and, for connected ones, their connection (admin key)."""
        _, reply = await self._request("GET", "/api/admin/runners", self.admin_key)
        out = []
        for r in reply["runners"]:
            known = ("runner_id", "name", "capabilities", "last_seen", "is_active", "connected")
            out.append(
                RunnerInfo(
                    runner_id=r["runner_id"],
                    name=r["name"],
                    capabilities=list(r.get("capabilities") or []),
                    last_seen=r["last_seen"],
                    is_active=bool(r.get("is_active")),
                    connected=bool(r.get("connected")),
                    live={k: v for k, v in r.items() if k not in known},
                )
            )
        return out

    # --- following a job -----------------------------------------------------------------
    async def watch(
        self, job_id: str, *, last_event_id: str | None = None
    ) -> AsyncGenerator[Event, None]:
        """The job's events: a ``snapshot`` first, then every change, ending after a
        final status. A broken stream is reopened from its last event, so nothing is
        missed or repeated; :class:`RunpackConnectionError` once that fails for
        ``reconnect_timeout`` seconds (or at once if the first connection fails).

        Pass an event's ``id`` as ``last_event_id`` to resume where an earlier watch
        stopped. After a server restart the stream starts again with a ``snapshot``
        (the server cannot tell what was missed), so take a snapshot at any time as
        the whole state.
        """
        path = f"/api/jobs/{_segment(job_id)}/events"
        last = last_event_id
        connected_once = False
        broken_since: float | None = None
        delay = 0.1
        limit_waited = 0.0
        while True:
            try:
                async for event in self._stream(path, last):
                    connected_once = True
                    broken_since, delay = None, 0.1
                    last = event.id or last
                    yield event
                    if event.is_final:
                        return
                connected_once = True  # it ended without a final status: dropped, resume
            except RunpackConnectionError:
                if not connected_once:
                    raise
            except RateLimitedError as exc:
                limit_waited = await self._wait_for_limit(exc, limit_waited)
                continue
            except RunpackClientError as exc:
                if exc.status is None or exc.status < 500:
                    raise
            now = time.monotonic()
            broken_since = broken_since if broken_since is not None else now
            if now - broken_since > self.reconnect_timeout:
                raise RunpackConnectionError(
                    f"lost the event stream of job {job_id}",
                    f"could not reconnect for {self.reconnect_timeout:g} s",
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _stream(self, path: str, last_event_id: str | None) -> AsyncIterator[Event]:
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.timeout, sock_read=STREAM_READ_TIMEOUT
        )
        parser = SSEParser()
        try:
            async with self._http().get(self.url + path, headers=headers, timeout=timeout) as resp:
                if resp.status >= 400:
                    raw = await resp.read()
                    try:
                        reply = orjson.loads(raw) if raw else None
                    except orjson.JSONDecodeError:
                        reply = None
                    raise server_error(resp.status, reply, raw, resp.headers.get("Retry-After"))
                async for chunk in resp.content.iter_any():
                    for event in parser.feed(chunk):
                        yield event
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            raise RunpackConnectionError(
                f"cannot follow {self.url}{path}", str(exc) or type(exc).__name__
            ) from exc

    async def wait(
        self,
        job_id: str,
        timeout: float | None = None,  # noqa: ASYNC109 (what users of wait() expect)
    ) -> dict[str, Any]:
        """The job's ``output_data`` once it completes, following its stream.

        Raises :class:`JobFailed` if it fails or is cancelled, and ``TimeoutError``
        after ``timeout`` seconds (None: no limit). The job goes on either way.
        """
        async with asyncio.timeout(timeout):
            retried_expired = False
            while True:
                final: Event | None = None
                async for event in self.watch(job_id):
                    if event.is_final:
                        final = event
                assert final is not None  # watch() ends only after a final status
                if final.status == "completed":
                    return final.output_data or {}
                if final.status == "expired" and not retried_expired:
                    # A cached result found invalid: the submit that found it re-queues it.
                    retried_expired = True
                    continue
                raise JobFailed(
                    job_id, final.status or "unknown", final.error or final.status or ""
                )


def _segment(value: str) -> str:
    return quote(value, safe="")
