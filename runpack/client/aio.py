"""Python client for a Runpack server: submit jobs, follow them live, get their results.

Asynchronous::

    async with AsyncClient("http://127.0.0.1:8080", submit_key=KEY) as runpack:
        job = await runpack.submit("hello_world", {"name": "Ada", "processing_time": 3})
        async for event in runpack.watch(job.job_id):
            print(event.type, event.data)
        result = await runpack.wait(job.job_id)  # the job's output_data

Synchronous, the same methods (``watch`` returns a plain iterator)::

    with Client("http://127.0.0.1:8080", submit_key=KEY) as runpack:
        result = runpack.wait(runpack.submit("hello_world", {"name": "Ada"}).job_id)

Everything is passed in explicitly: this module reads no environment variable.
A reply with an error status raises :class:`RunpackClientError` (with the server's
``error`` and ``details``); a job that ends badly makes :meth:`AsyncClient.wait`
raise :class:`JobFailed`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

import aiohttp
import orjson

from runpack.protocol import FINAL

__all__ = [
    "AsyncClient",
    "CancelResult",
    "CheckResult",
    "Client",
    "Event",
    "JobFailed",
    "JobInfo",
    "JobSummary",
    "Progress",
    "RunnerInfo",
    "RunpackClientError",
    "RunpackConnectionError",
    "SubmitResult",
]

T = TypeVar("T")

#: Statuses after which a job's stream ends.
FINAL_STATUSES = frozenset({*(s.value for s in FINAL), "deleted"})
#: The server sends a keepalive every 15 s: a stream silent for this long is dead.
STREAM_READ_TIMEOUT = 60.0


# --- errors ---------------------------------------------------------------------------------


class RunpackClientError(Exception):
    """The server answered with an error status (``status``), or could not be reached."""

    def __init__(self, status: int | None, error: str, details: str | None = None) -> None:
        self.status = status
        self.error = error
        self.details = details
        text = f"{status} {error}" if status is not None else error
        super().__init__(f"{text} ({details})" if details else text)


class RunpackConnectionError(RunpackClientError):
    """The server could not be reached, or the connection broke."""

    def __init__(self, error: str, details: str | None = None) -> None:
        super().__init__(None, error, details)


class JobFailed(Exception):
    """The job ended without a result: failed, cancelled, expired or deleted."""

    def __init__(self, job_id: str, status: str, error: str) -> None:
        self.job_id = job_id
        self.status = status
        self.error = error
        super().__init__(f"job {job_id} {status}: {error}")


# --- what the server answers ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Progress:
    current: int | None
    total: int | None

    @classmethod
    def from_json(cls, data: Any) -> Progress | None:
        if not isinstance(data, dict):
            return None
        return cls(data.get("current"), data.get("total"))


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """``POST /api/jobs/submit``: the job, new or the existing one with the same inputs."""

    job_id: str
    status: str
    message: str
    #: True when this submit queued the job (HTTP 201), False for an existing one.
    created: bool
    #: ``{"output_data", "console_output"}`` of a cached result.
    result: dict[str, Any] | None = None
    error: str | None = None

    @property
    def output_data(self) -> dict[str, Any] | None:
        return None if self.result is None else self.result.get("output_data")


@dataclass(frozen=True, slots=True)
class CheckResult:
    """``POST /api/jobs/check``: whether a job with these inputs exists, and its state."""

    exists: bool
    message: str
    job_id: str | None = None
    status: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class JobInfo:
    """``GET /api/jobs/{id}``."""

    job_id: str
    status: str
    job_type: str
    created_at: int
    updated_at: int
    progress: Progress | None = None
    result: dict[str, Any] | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class CancelResult:
    job_id: str
    status: str
    message: str


@dataclass(frozen=True, slots=True)
class JobSummary:
    """A row of ``GET /api/admin/jobs``."""

    job_id: str
    job_type: str
    status: str
    created_at: int
    updated_at: int
    claimed_by: str | None = None


@dataclass(frozen=True, slots=True)
class RunnerInfo:
    """A row of ``GET /api/admin/runners``; ``live`` holds the connection's details."""

    runner_id: str
    name: str
    capabilities: list[str]
    last_seen: int
    is_active: bool
    connected: bool
    live: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a job's stream.

    ``type`` is ``snapshot`` (the whole job, first), ``status`` (``{status, result?,
    error?, runner_id?}``), ``progress`` (``{current, total}``) or ``console``
    (``{append}`` or ``{replace}``). ``id`` is what a reconnect resumes from.
    """

    id: str | None
    type: str
    data: dict[str, Any]

    @property
    def status(self) -> str | None:
        if self.type in ("snapshot", "status"):
            status = self.data.get("status")
            return status if isinstance(status, str) else None
        return None

    @property
    def is_final(self) -> bool:
        """A final status: the stream ends after this event."""
        return self.status in FINAL_STATUSES

    @property
    def output_data(self) -> dict[str, Any] | None:
        """The result carried by a final ``completed`` event or snapshot."""
        if self.type == "snapshot":
            return self.data.get("output_data") or {}
        result = self.data.get("result")
        return result.get("output_data") or {} if isinstance(result, dict) else None

    @property
    def error(self) -> str | None:
        """The error of a failed or cancelled job."""
        value = self.data.get("error_message" if self.type == "snapshot" else "error")
        return value if isinstance(value, str) else None


class _SSEParser:
    """A ``text/event-stream`` body, fed in chunks, as the SSE specification reads it."""

    def __init__(self) -> None:
        self._buffer = b""
        self._skip_lf = False
        self._data: list[str] = []
        self._type = ""
        self.last_id: str | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        if self._skip_lf and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._skip_lf = False
        self._buffer += chunk
        events: list[Event] = []
        while True:
            cr, lf = self._buffer.find(b"\r"), self._buffer.find(b"\n")
            ends = [i for i in (cr, lf) if i >= 0]
            if not ends:
                return events
            end = min(ends)
            line = self._buffer[:end]
            step = 2 if self._buffer[end : end + 2] == b"\r\n" else 1
            if step == 1 and end == cr and end == len(self._buffer) - 1:
                self._skip_lf = True  # a CR at the end of a chunk: its LF may come next
            self._buffer = self._buffer[end + step :]
            event = self._line(line.decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)

    def _line(self, line: str) -> Event | None:
        if line == "":
            if not self._data:
                self._type = ""
                return None
            text = "\n".join(self._data)
            kind = self._type or "message"
            self._data, self._type = [], ""
            try:
                data = orjson.loads(text)
            except orjson.JSONDecodeError:
                data = {"text": text}
            if not isinstance(data, dict):
                data = {"value": data}
            return Event(self.last_id, kind, data)
        if line.startswith(":"):
            return None  # a comment: the server's keepalive
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._type = value
        elif name == "id" and "\0" not in value:
            self.last_id = value
        return None


# --- the asynchronous client -----------------------------------------------------------------


class AsyncClient:
    """A Runpack server at ``url``.

    ``submit_key`` is used for submit, check, status and cancel (the admin key
    stands in when it is not given); ``admin_key`` for listing jobs and runners and
    for cancelling running jobs. Following a job needs no key. ``timeout`` bounds
    each request (seconds); a stream that breaks is reopened, resuming from its last
    event, for up to ``reconnect_timeout`` seconds.

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
    ) -> None:
        self.url = url.rstrip("/")
        self.submit_key = submit_key or admin_key
        self.admin_key = admin_key
        self.timeout = timeout
        self.reconnect_timeout = reconnect_timeout
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
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        data = None
        if body is not None:
            data = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
        try:
            async with self._http().request(
                method, self.url + path, data=data, headers=headers, params=params
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise RunpackConnectionError(
                f"cannot reach {self.url}", str(exc) or type(exc).__name__
            ) from exc
        try:
            reply = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            reply = None
        if status >= 400:
            raise _server_error(status, reply, raw)
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
    ) -> list[JobSummary]:
        """Jobs, newest first (admin key); ``job_type`` matches any type containing it."""
        params = {"limit": str(limit), "offset": str(offset)}
        if status:
            params["status"] = status
        if job_type:
            params["job_type"] = job_type
        _, reply = await self._request("GET", "/api/admin/jobs", self.admin_key, params=params)
        return [
            JobSummary(
                job_id=j["job_id"],
                job_type=j["job_type"],
                status=j["status"],
                created_at=j["created_at"],
                updated_at=j["updated_at"],
                claimed_by=j.get("claimed_by"),
            )
            for j in reply["jobs"]
        ]

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
        parser = _SSEParser()
        try:
            async with self._http().get(self.url + path, headers=headers, timeout=timeout) as resp:
                if resp.status >= 400:
                    raw = await resp.read()
                    try:
                        reply = orjson.loads(raw) if raw else None
                    except orjson.JSONDecodeError:
                        reply = None
                    raise _server_error(resp.status, reply, raw)
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


def _server_error(status: int, reply: Any, raw: bytes) -> RunpackClientError:
    if isinstance(reply, dict) and isinstance(reply.get("error"), str):
        details = reply.get("details")
        return RunpackClientError(status, reply["error"], None if details is None else str(details))
    text = raw.decode("utf-8", errors="replace").strip()[:200]
    return RunpackClientError(status, text or f"HTTP {status}")


# --- the synchronous client ------------------------------------------------------------------


class Client:
    """The same API as :class:`AsyncClient`, synchronous.

    It runs an event loop in a private thread; each call waits for its result.
    ``watch`` returns a plain iterator. Use it as a context manager, or call
    :meth:`close` when done.
    """

    def __init__(
        self,
        url: str,
        submit_key: str | None = None,
        admin_key: str | None = None,
        *,
        timeout: float = 30.0,
        reconnect_timeout: float = 30.0,
    ) -> None:
        self._async = AsyncClient(
            url, submit_key, admin_key, timeout=timeout, reconnect_timeout=reconnect_timeout
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="runpack-client", daemon=True
        )
        self._thread.start()
        self._closed = False

    @property
    def url(self) -> str:
        return self._async.url

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self._async.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed and not self._loop.is_running():
            coro.close()
            raise RuntimeError("the client is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt: stop the call in the loop too
            raise

    def submit(
        self, job_type: str, params: dict[str, Any], *, force: bool = False, priority: int = 0
    ) -> SubmitResult:
        return self._run(self._async.submit(job_type, params, force=force, priority=priority))

    def check(self, job_type: str, params: dict[str, Any]) -> CheckResult:
        return self._run(self._async.check(job_type, params))

    def status(self, job_id: str) -> JobInfo:
        return self._run(self._async.status(job_id))

    def details(self, job_id: str) -> dict[str, Any]:
        return self._run(self._async.details(job_id))

    def cancel(self, job_id: str) -> CancelResult:
        return self._run(self._async.cancel(job_id))

    def jobs(
        self,
        *,
        status: str | None = None,
        job_type: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[JobSummary]:
        return self._run(
            self._async.jobs(status=status, job_type=job_type, limit=limit, offset=offset)
        )

    def runners(self) -> list[RunnerInfo]:
        return self._run(self._async.runners())

    def wait(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        return self._run(self._async.wait(job_id, timeout))

    def watch(self, job_id: str, *, last_event_id: str | None = None) -> Iterator[Event]:
        """The job's events as a plain iterator (see :meth:`AsyncClient.watch`)."""
        events = self._async.watch(job_id, last_event_id=last_event_id)

        async def step() -> Event | None:
            try:
                return await anext(events)
            except StopAsyncIteration:
                return None

        try:
            while (event := self._run(step())) is not None:
                yield event
        finally:
            self._run(events.aclose())
