"""Serving the app (``runpack serve``): aiohttp's runner with connections that keep time.

aiohttp closes a connection that sits idle between requests (``keepalive_timeout``,
here ``idle_timeout``), but it waits for a request's headers, and for the rest of a
body a handler is reading, as long as the client likes: a client sending one byte
every few seconds holds a connection (and its memory) for ever. Each connection
here also has

- a header deadline: a request's headers must be complete ``header_timeout`` after
  the connection opens or, on a kept-alive connection, after the request's first
  byte;
- a silence limit on bodies: a request whose body is still being sent is closed
  when no byte has come for ``idle_timeout``.

A request being answered (an event stream, a long poll) and an upgraded WebSocket
are not timed here: the server is the one sending, and WebSockets ping their peers.

A request aiohttp cannot parse gets a JSON error like every other, and is logged as
one line without a traceback: it is the client's mistake, not the server's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler, RequestPayloadError
from aiohttp.web_runner import GracefulExit

from runpack.api.common import json_response

log = logging.getLogger(__name__)


def _first_line(exc: BaseException | None, message: str | None) -> str:
    """The gist of a parse error: aiohttp's message is several lines with the bytes."""
    if not message:
        cause = exc.__cause__ if isinstance(exc, RequestPayloadError) else exc
        message = cause.message if isinstance(cause, HttpProcessingError) else str(exc or "")
    # Only the first sentence: aiohttp goes on with the bytes, or with what to install.
    return str(message).strip().split("\n", 1)[0].split(". ", 1)[0].rstrip(":").strip()


def _client_fault(exc: BaseException | None) -> bool:
    return isinstance(exc, RequestPayloadError | HttpProcessingError)


class Connection(RequestHandler):
    """One client connection: aiohttp's, with a header deadline and a body silence limit."""

    def __init__(
        self, manager: web.Server, *, header_timeout: float, idle_timeout: float, **kwargs: Any
    ) -> None:
        super().__init__(manager, keepalive_timeout=idle_timeout, **kwargs)
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._heard = 0.0  # when the last bytes came

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._heard = self._loop.time()
        self._expect_headers()

    def connection_lost(self, exc: BaseException | None) -> None:
        for timer in (self._header_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._heard = self._loop.time()
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:
            # A request's headers are complete: no deadline until the next one begins.
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            if self._messages and not self._messages[-1][1].is_eof():
                self._expect_body()
        elif data and self._waiter is not None and not self._waiter.done():
            # The first bytes of a request on a kept-alive connection: its headers are due.
            self._expect_headers()

    def _expect_headers(self) -> None:
        if self.header_timeout > 0 and self._header_timer is None:
            self._header_timer = self._loop.call_later(
                self.header_timeout, self._headers_late, self._request_count
            )

    def _headers_late(self, parsed: int) -> None:
        self._header_timer = None
        if self._request_count == parsed and self.transport is not None:
            log.debug("closed a connection whose request headers took too long")
            self.force_close()

    def _expect_body(self) -> None:
        if self.idle_timeout > 0 and self._body_timer is None:
            self._body_timer = self._loop.call_at(
                self._heard + self.idle_timeout, self._body_silent
            )

    def _body_silent(self) -> None:
        self._body_timer = None
        request = self._current_request
        if self.transport is None or self._upgraded:
            return
        waiting = [payload for _, payload in self._messages]
        if request is not None:
            waiting.append(request.content)
        if all(payload.is_eof() for payload in waiting):
            return  # every body has come
        if self._reading_paused or self._buffer_paused:
            self._heard = self._loop.time()  # the server is the slow one: not the client's silence
        if self._loop.time() - self._heard >= self.idle_timeout:
            log.debug("closed a connection whose request body stopped coming")
            self.force_close()
        else:
            self._expect_body()

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        if isinstance(exc, BaseException) and _client_fault(exc):
            # A body that is not in its declared encoding, met again when aiohttp drains it.
            log.info("bad request body: %s", _first_line(exc, None))
            return
        super().log_exception(*args, **kw)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's last resort (a request it cannot parse, a failure no middleware
        caught), as a JSON error; only a server failure is logged with its traceback."""
        if isinstance(exc, ConnectionError) and self.transport is None:
            raise ConnectionError("the client is gone") from exc  # aiohttp lets this go
        if status >= 500 and not _client_fault(exc):
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
            body: dict[str, str] = {"error": "Internal server error"}
        else:
            details = _first_line(exc, message)
            log.info("bad request from %s: %s", request.remote, details)
            body = {"error": HTTPStatus(status).phrase, "details": details}
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send another response")
        response = json_response(body, status=status)
        response.force_close()
        return response


class Server(web.Server):
    """aiohttp's protocol factory, making :class:`Connection` s."""

    def __init__(self, *args: Any, header_timeout: float, idle_timeout: float, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.timeouts = {"header_timeout": header_timeout, "idle_timeout": idle_timeout}

    def __call__(self) -> RequestHandler:
        return Connection(self, loop=self._loop, **self.timeouts, **self._kwargs)


class AppRunner(web.AppRunner):
    """aiohttp's app runner with :class:`Server` as the protocol factory."""

    def __init__(
        self, app: web.Application, *, header_timeout: float, idle_timeout: float, **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self.timeouts = {"header_timeout": header_timeout, "idle_timeout": idle_timeout}

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()  # starts the app
        return Server(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **self.timeouts,
            **made._kwargs,
        )


async def _serve(runner: AppRunner, host: str, port: int) -> None:
    try:
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        await asyncio.Event().wait()  # until a signal (GracefulExit) or a cancel
    finally:
        await runner.cleanup()


def run(
    app: web.Application,
    *,
    host: str,
    port: int,
    header_timeout: float,
    idle_timeout: float,
    shutdown_timeout: float,
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Serve ``app`` until SIGINT or SIGTERM, as ``web.run_app`` does."""
    runner = AppRunner(
        app,
        header_timeout=header_timeout,
        idle_timeout=idle_timeout,
        handle_signals=True,
        access_log=None,
        shutdown_timeout=shutdown_timeout,
    )
    asyncio.set_event_loop(loop)
    main = loop.create_task(_serve(runner, host, port))
    try:
        loop.run_until_complete(main)
    except (GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main.done():
                main.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(main)
        finally:
            left = asyncio.all_tasks(loop)
            for task in left:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
