"""The synchronous client: :class:`AsyncClient` run on an event loop in a private
thread, each call waiting for its result."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine, Iterator
from types import TracebackType
from typing import Any, Self, TypeVar

from runpack.client.aio import AsyncClient
from runpack.client.models import (
    CancelResult,
    CheckResult,
    Event,
    JobInfo,
    JobPage,
    RunnerInfo,
    SubmitResult,
)

T = TypeVar("T")


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
        retry_on_limit: bool = False,
        limit_wait: float = 600.0,
    ) -> None:
        self._async = AsyncClient(
            url,
            submit_key,
            admin_key,
            timeout=timeout,
            reconnect_timeout=reconnect_timeout,
            retry_on_limit=retry_on_limit,
            limit_wait=limit_wait,
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

    def upload_input(self, source: bytes | str | os.PathLike[str]) -> str:
        """Upload an input file; its SHA-256, to name as ``{"upload": sha256}`` in a
        container job's ``inputs`` (see :meth:`AsyncClient.upload_input`)."""
        return self._run(self._async.upload_input(source))

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
        after: str | None = None,
    ) -> JobPage:
        return self._run(
            self._async.jobs(
                status=status, job_type=job_type, limit=limit, offset=offset, after=after
            )
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
