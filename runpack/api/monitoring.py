"""Operations: ``GET /metrics``, and the middleware that gives every request an id,
an access-log line and its count in the metrics.

The request id is the caller's ``X-Request-ID`` when it is sane (at most 64 of
``A-Z a-z 0-9 . _ -``), else a new one; it is echoed in the reply's
``X-Request-ID``, is on every log record made while the request is handled, and
names the incident of a 500. The access log (logger ``runpack.access``, INFO)
has the method, the path without its query, the status, the time and the client
IP: never a header, so never a key.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from runpack import logs
from runpack.api.common import Handler, json_response, policy
from runpack.appkeys import METRICS, READINESS, REQUEST_ID
from runpack.errors import StoreError
from runpack.metrics import Metrics
from runpack.protocol import Role

REQUEST_ID_HEADER = "X-Request-ID"
#: The route label of requests no route matched (so random paths add no series).
UNMATCHED = "unmatched"
#: Status recorded for a request whose client went away before the reply.
CLIENT_GONE = 499

#: How long a readiness verdict is reused: however often /health is polled, the
#: store gets at most one probe write per this many seconds.
READY_TTL = 1.0
#: A probe that has not committed by then counts as a store that cannot write.
PROBE_TIMEOUT = 5.0
HEALTHY = {"status": "ok", "service": "runpack-worker"}

_SANE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
access_log = logging.getLogger("runpack.access")
log = logging.getLogger(__name__)


#: New request ids: 12 hex digits counting up from a random start, unique within a
#: process and unlikely to meet another process's (ids name requests in logs; they
#: are not secrets), without a system call per request.
_new_ids = itertools.count(int.from_bytes(os.urandom(6), "big"))


def request_id(header: str | None) -> str:
    """The caller's id if it is sane, else a new one."""
    if header and _SANE_ID.fullmatch(header):
        return header
    return f"{next(_new_ids) & 0xFFFF_FFFF_FFFF:012x}"


def incident_id(request: web.Request) -> str:
    """What a logged failure is called in its reply: the request's id."""
    return request.get(REQUEST_ID) or os.urandom(6).hex()


def _route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


def observe_requests(metrics: Metrics, client_ip: Callable[[web.Request], str]) -> Middleware:
    """The outermost middleware: request id, access log, HTTP metrics."""
    request_done = metrics.request_done

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        rid = request_id(request.headers.get(REQUEST_ID_HEADER))
        request[REQUEST_ID] = rid
        token = logs.bind_request(rid)
        start = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:  # redirects and 304s are raised
            status = exc.status
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            status = CLIENT_GONE
            raise
        finally:
            elapsed = time.perf_counter() - start
            request_done(request.method, _route_of(request), status, elapsed)
            if access_log.isEnabledFor(logging.INFO):
                ip = client_ip(request)
                ms = round(elapsed * 1000, 1)
                access_log.info(
                    "%s %s %d %.1f ms %s",
                    request.method,
                    request.path,
                    status,
                    ms,
                    ip,
                    extra={
                        "method": request.method,
                        "path": request.path,
                        "status": status,
                        "duration_ms": ms,
                        "client_ip": ip,
                    },
                )
            logs.unbind_request(token)

    return observe


async def echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every reply, streams included, names its request."""
    rid = request.get(REQUEST_ID)
    if rid is not None:
        response.headers[REQUEST_ID_HEADER] = rid


async def _scrape(request: web.Request) -> web.Response:
    body, content_type = await request.app[METRICS].exposition(request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type})


@policy(Role.ADMIN_READ, failure="Failed to collect metrics")
async def metrics(request: web.Request) -> web.Response:
    """``/metrics`` for the admin key (or the runner key, as other admin reads)."""
    return await _scrape(request)


@policy(Role.PUBLIC, failure="Failed to collect metrics")
async def public_metrics(request: web.Request) -> web.Response:
    """``/metrics`` with ``metrics_public``: for a Prometheus on a trusted network."""
    return await _scrape(request)


class Readiness:
    """Can the store write? Checked by a real write (one row, committed), one probe
    at a time, its verdict reused for ``ttl`` seconds."""

    def __init__(
        self,
        probe: Callable[[], Awaitable[None]],
        ttl: float = READY_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probe = probe
        self._ttl = ttl
        self._clock = clock
        self._until = 0.0
        self._failure: str | None = None
        self._probing: asyncio.Task[str | None] | None = None

    async def failure(self) -> str | None:
        """Why the store cannot write, or None when it can."""
        if self._clock() < self._until:
            return self._failure
        if self._probing is None:
            self._probing = asyncio.create_task(self._run(), name="runpack-readiness")
        return await asyncio.shield(self._probing)

    async def _run(self) -> str | None:
        failure: str | None = None
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                await self._probe()
        except StoreError as exc:
            failure = exc.details or exc.message
        except TimeoutError:
            failure = f"no commit within {PROBE_TIMEOUT:g} s"
        except Exception as exc:  # whatever stops the write, the store is not ready
            log.exception("readiness probe failed")
            failure = type(exc).__name__
        finally:
            self._probing = None
        if failure is not None:
            log.warning("not ready: the database cannot write: %s", failure)
        self._failure, self._until = failure, self._clock() + self._ttl
        return failure


async def health(request: web.Request) -> web.Response:
    """``/`` and ``/health``, any method, no key: 200 as the original's while the store
    writes; 503 (with Retry-After) while it cannot, for load balancers and probes."""
    if await request.app[READINESS].failure() is None:
        return json_response(HEALTHY)
    body = {
        **HEALTHY,
        "status": "unavailable",
        "error": "The database cannot write",
        "details": "see the server log",
    }
    return json_response(body, status=503, headers={"Retry-After": str(round(READY_TTL) or 1)})


def add_routes(app: web.Application, public: bool) -> None:
    app.router.add_get("/metrics", public_metrics if public else metrics)
