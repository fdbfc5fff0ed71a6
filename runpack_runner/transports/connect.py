"""Which transport to use: the WebSocket when it opens, else HTTP while the server answers."""

from __future__ import annotations

import logging

import aiohttp

from runpack_runner.settings import RunnerSettings
from runpack_runner.transports.base import ServerUnreachable, SocketUnavailable, Transport
from runpack_runner.transports.http import HttpTransport
from runpack_runner.transports.websocket import WebSocketTransport

log = logging.getLogger(__name__)


async def open_transport(
    session: aiohttp.ClientSession,
    settings: RunnerSettings,
    job_types: list[str],
    *,
    long_poll: bool = True,
    quiet: bool = False,
) -> Transport | None:
    """A transport to start a session on, or None if the server cannot be reached.

    ``settings.transport``: "websocket" never falls back, "http" never tries the
    socket, "auto" uses HTTP when the upgrade is refused (404, 400…) or fails while
    ``/health`` answers. ``quiet`` logs the fallback at debug level (already known).
    """
    mode = settings.transport
    level = logging.DEBUG if quiet else logging.INFO
    if mode != "http":
        try:
            return await WebSocketTransport.open(
                session, settings.worker_url, settings.runner_api_key
            )
        except SocketUnavailable as exc:
            if mode == "websocket":
                log.warning("no WebSocket: %s", exc)
                return None
            log.log(level, "no WebSocket (%s): using HTTP", exc)
        except ServerUnreachable as exc:
            if mode == "websocket" or not await server_answers(session, settings.worker_url):
                log.warning("cannot reach %s: %s", settings.worker_url, exc)
                return None
            log.log(level, "WebSocket failed (%s) but the server answers: using HTTP", exc)
    return HttpTransport(session, settings, job_types, long_poll=long_poll)


async def server_answers(session: aiohttp.ClientSession, base_url: str) -> bool:
    """True if ``GET /health`` answers 200."""
    try:
        async with session.get(
            base_url.rstrip("/") + "/health", timeout=aiohttp.ClientTimeout(total=10)
        ) as resp:
            return resp.status == 200
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False
