"""The HTTP fallback: the original's runner endpoints plus a long-poll for jobs.

Jobs come from ``GET /api/runner/jobs/next?types[]=…&wait=S`` (a job already
claimed for us, or 204), or, where a server lacks it (404), from the original's
``jobs/available`` + ``jobs/{id}/claim`` polling. Heartbeats, results and
releases are POSTs. In ``auto`` mode the session ends every
``socket_retry_interval`` seconds (between two polls, so no claimed job is lost
in flight) so that the runner tries the WebSocket again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import aiohttp

from runpack import protocol
from runpack.protocol import Heartbeat, ProtocolError, Registration, Release
from runpack_runner.settings import RunnerSettings
from runpack_runner.transports.base import (
    Acked,
    Assignment,
    AuthFailed,
    Beat,
    CancelJob,
    Event,
    Hello,
    NotOurRunner,
    Reconnect,
    Result,
    TransportClosed,
    Welcome,
)

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 30.0
POLL_MIN, POLL_MAX = 1.0, 5.0
RESULT_TRIES = 4
NOT_OWNED = "Job not found or not claimed by this runner"


class _Closed:
    def __init__(self, reason: str, auth: bool = False) -> None:
        self.reason = reason
        self.auth = auth


class HttpTransport:
    name = "http"
    #: Each result or release is its own request, sent alongside the others.
    serial = False

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: RunnerSettings,
        job_types: list[str],
        *,
        long_poll: bool = True,
    ) -> None:
        self._session = session
        self._settings = settings
        self._base = settings.worker_url.rstrip("/")
        self._types = job_types
        self._runner_id = ""
        #: Our runner's own secret (X-Runner-Secret), if it has one.
        self._secret: str | None = None
        self._events: asyncio.Queue[Event | _Closed] = asyncio.Queue()
        self._credits = 0
        self._taking = True
        self._wake = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None
        self._long_poll = long_poll
        # Keep all heartbeats of this runner under the original's 120 per minute.
        self.min_heartbeat_gap = max(1.0, 0.6 * settings.concurrency)

    @property
    def mode(self) -> str:
        return "long-poll" if self._long_poll else "polling"

    # --- session --------------------------------------------------------------------
    async def start(self, hello: Hello) -> Welcome:
        runner_id = hello.runner_id
        self._secret = hello.runner_secret if runner_id else None
        new_secret = None
        if runner_id:
            status, reply = await self._verify(hello, runner_id)
            if status == 404:
                log.warning("the server does not know runner %s: registering again", runner_id)
                runner_id = None
            elif status == 403:
                log.warning("runner %s is not ours: %s", runner_id, _error_text(reply))
                raise NotOurRunner(_error_text(reply))
            elif status != 200:
                raise TransportClosed(f"verify answered HTTP {status}: {_error_text(reply)}")
        if not runner_id:
            # A secret of our own, so that no other runner can act as this one.
            body = Registration(
                hello.name,
                hello.capabilities,
                with_secret=True,
                versions=hello.versions,
                images=hello.images,
            ).body()
            status, reply = await self._call("POST", "/api/runner/register", json=body)
            new_id = reply.get("runner_id") if isinstance(reply, dict) else None
            if status != 201 or not isinstance(new_id, str):
                raise TransportClosed(f"register answered HTTP {status}: {reply}")
            runner_id = new_id
            secret = reply.get("runner_secret")
            new_secret = self._secret = secret if isinstance(secret, str) and secret else None
        self._runner_id = runner_id
        kept = hello.jobs if runner_id == hello.runner_id else []
        self._poller = asyncio.create_task(self._poll_loop(), name="runner-http-poll")
        return Welcome(
            runner_id=runner_id,
            resumed=list(kept),
            dropped=[j for j in hello.jobs if j not in kept],
            runner_secret=new_secret,
        )

    async def _verify(self, hello: Hello, runner_id: str) -> tuple[int, Any]:
        """Verify our saved id, registering again under it (``POST /api/runner/verify``):
        the server keeps what we run now, not what we ran when we first registered. A
        server without it (405, or a 404 that is not about our runner) is asked with the
        original's ``GET``, and keeps our first registration."""
        body = Registration(
            hello.name, hello.capabilities, versions=hello.versions, images=hello.images
        ).body()
        status, reply = await self._call(
            "POST", "/api/runner/verify", json=body, runner_id=runner_id
        )
        if status == 405 or (status == 404 and not (isinstance(reply, dict) and "exists" in reply)):
            log.warning(
                "the server keeps runner %s's first registration (no POST verify)", runner_id
            )
            status, reply = await self._call("GET", "/api/runner/verify", runner_id=runner_id)
        return status, reply

    async def receive(self) -> Event:
        item = await self._events.get()
        if isinstance(item, _Closed):
            self._events.put_nowait(item)
            if item.auth:
                raise AuthFailed(item.reason)
            raise TransportClosed(item.reason)
        return item

    async def grant(self, slots: int) -> None:
        self._credits += max(slots, 0)
        self._wake.set()

    def stop_taking(self) -> None:
        self._taking = False
        self._wake.set()

    async def heartbeat(self, beat: Beat) -> None:
        body = Heartbeat(
            beat.job_id, beat.progress_current, beat.progress_total, console_output=beat.console
        ).body()
        try:
            status, reply = await self._call(
                "POST", f"/api/runner/jobs/{beat.job_id}/heartbeat", json=body
            )
        except TransportClosed as exc:
            log.debug("heartbeat for job %s not sent: %s", beat.job_id, exc)
            return
        if status == 400 and _not_owned(reply):
            self._events.put_nowait(
                CancelJob(beat.job_id, "the server no longer assigns this job to us", lost=True)
            )
        elif status == 404:
            self._close("the server no longer knows this runner")
        elif status >= 400 and status != 429:
            log.warning("heartbeat for job %s: HTTP %s %s", beat.job_id, status, reply)

    async def send_result(self, result: Result) -> None:
        path = f"/api/runner/jobs/{result.job_id}/{result.kind}"
        body = result.body()
        for attempt in range(RESULT_TRIES):
            if attempt:
                await asyncio.sleep(0.5 * 2**attempt)
            try:
                status, reply = await self._call("POST", path, json=body)
            except TransportClosed as exc:
                log.warning("%s of job %s not delivered: %s", result.kind, result.job_id, exc)
                continue
            if 200 <= status < 300:
                self._ack(result.job_id, result.kind, True)
                return
            if status == 400 and _not_owned(reply):
                self._ack(result.job_id, result.kind, False, NOT_OWNED)
                return
            if status == 400 and result.kind == "complete":
                # A result the server can never store (too large…): fail the job instead.
                message = f"Result rejected by the server: {_error_text(reply)}"
                path = f"/api/runner/jobs/{result.job_id}/error"
                body = {"error_message": message, "console_output": result.console_output}
                continue
            if status in (400, 404):
                self._ack(result.job_id, result.kind, False, f"HTTP {status}: {_error_text(reply)}")
                return
            log.warning("%s of job %s: HTTP %s", result.kind, result.job_id, status)
        self._close(f"could not deliver the {result.kind} of job {result.job_id}")

    async def release(self, job_id: str, reason: str) -> None:
        try:
            status, reply = await self._call(
                "POST", f"/api/runner/jobs/{job_id}/release", json=Release(job_id, reason).body()
            )
        except TransportClosed as exc:
            status, reply = 0, {"error": str(exc)}
        applied = 200 <= status < 300
        note = None if applied else f"not released over HTTP ({status or _error_text(reply)})"
        self._ack(job_id, "release", applied, note)

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

    # --- jobs -------------------------------------------------------------------------
    async def _poll_loop(self) -> None:
        retry_socket = self._settings.transport == "auto"
        deadline = time.monotonic() + self._settings.socket_retry_interval
        delay = POLL_MIN
        try:
            while True:
                left = deadline - time.monotonic()
                if retry_socket and left <= 0:
                    self._events.put_nowait(Reconnect("time to try the WebSocket again"))
                    return
                if self._credits <= 0 or not self._taking:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), left if retry_socket else None)
                    continue
                wait = min(self._settings.poll_wait, max(left, 1.0) if retry_socket else 1e9)
                got = await (self._next_job(wait) if self._long_poll else self._claim_some())
                if self._long_poll or got:
                    delay = POLL_MIN
                    continue
                with contextlib.suppress(TimeoutError):
                    self._wake.clear()
                    await asyncio.wait_for(self._wake.wait(), delay)
                delay = min(delay + 1.0, POLL_MAX)
        except TransportClosed as exc:
            self._close(str(exc))
        except AuthFailed as exc:
            self._close(str(exc), auth=True)

    async def _next_job(self, wait: float) -> bool:
        query = [("types[]", t) for t in self._types] + [("wait", f"{wait:g}")]
        status, reply = await self._call(
            "GET", "/api/runner/jobs/next", params=query, seconds=wait + REQUEST_TIMEOUT
        )
        if status == 200 and isinstance(reply, dict) and isinstance(reply.get("job"), dict):
            return self._assigned(reply["job"])
        if status == 204:
            return False
        if status == 404 and _error_text(reply) == "Not found":
            log.info("the server has no long-poll endpoint: polling jobs/available instead")
            self._long_poll = False
            return False
        self._trouble("jobs/next", status, reply)
        return False

    async def _claim_some(self) -> bool:
        query = [("types[]", t) for t in self._types]
        status, reply = await self._call("GET", "/api/runner/jobs/available", params=query)
        if status != 200 or not isinstance(reply, dict):
            self._trouble("jobs/available", status, reply)
            return False
        got = False
        for job in reply.get("jobs") or []:
            if self._credits <= 0 or not self._taking:
                break
            job_id = job.get("job_id") if isinstance(job, dict) else None
            if not isinstance(job_id, str):
                continue
            status, claimed = await self._call("POST", f"/api/runner/jobs/{job_id}/claim")
            if status == 200 and isinstance(claimed, dict) and isinstance(claimed.get("job"), dict):
                got = self._assigned(claimed["job"]) or got
            elif status not in (404, 409):
                self._trouble("claim", status, claimed)
        return got

    def _assigned(self, job: dict[str, Any]) -> bool:
        try:
            assignment = Assignment.read(job)
        except ProtocolError:
            return False
        self._credits -= 1
        self._events.put_nowait(assignment)
        return True

    def _trouble(self, what: str, status: int, reply: Any) -> None:
        if status == 404:
            raise TransportClosed("the server no longer knows this runner")
        if status == 429:
            log.warning("%s: rate limited", what)
            return
        raise TransportClosed(f"{what} answered HTTP {status}: {_error_text(reply)}")

    # --- plumbing ---------------------------------------------------------------------
    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Any = None,
        seconds: float = REQUEST_TIMEOUT,
        runner_id: str | None = None,
    ) -> tuple[int, Any]:
        """(status, parsed JSON body or None); TransportClosed on network failure."""
        headers = {"Authorization": f"Bearer {self._settings.runner_api_key}"}
        rid = runner_id or self._runner_id
        if rid:
            headers["X-Runner-ID"] = rid
            if self._secret:
                headers[protocol.RUNNER_SECRET_HEADER] = self._secret
        try:
            async with self._session.request(
                method,
                self._base + path,
                json=json,
                params=params,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=seconds),
            ) as resp:
                if resp.status == 401:
                    raise AuthFailed("the server refused the runner key (HTTP 401)")
                try:
                    body = await resp.json(content_type=None) if resp.status != 204 else None
                except ValueError:
                    body = None
                return resp.status, body
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise TransportClosed(f"{method} {path}: {type(exc).__name__}: {exc}") from None

    def _ack(self, job_id: str, of: str, applied: bool, reason: str | None = None) -> None:
        self._events.put_nowait(Acked(job_id, of, applied, reason))

    def _close(self, reason: str, auth: bool = False) -> None:
        self._events.put_nowait(_Closed(reason, auth))


def _not_owned(reply: Any) -> bool:
    return isinstance(reply, dict) and reply.get("success") is False


def _error_text(reply: Any) -> str:
    if isinstance(reply, dict):
        return str(reply.get("error") or reply.get("message") or reply)
    return str(reply)
