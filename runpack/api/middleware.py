"""The two middlewares every request passes: errors and CORS outside, the route's
declared policy (key, role, runner identity, rate limits) inside; see create_app."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from runpack.api.common import CORS_HEADERS, Handler, check_headers, json_response, policy_of
from runpack.api.files import FIGURE_CORS_HEADERS
from runpack.api.monitoring import incident_id
from runpack.appkeys import (
    CALLER,
    KEYS,
    LIMITS,
    ROLE,
    RUNNER_ID,
    SERVICE,
)
from runpack.errors import BadRequest, RunpackError, StoreError, StoreUnavailable, TooLarge
from runpack.protocol import RUNNER_SECRET_HEADER, Role

log = logging.getLogger("runpack.app")  # the name its error lines have always had

HEALTH_PATHS = ("/", "/health")


def _render(exc: RunpackError) -> web.Response:
    return json_response(exc.to_body(), status=exc.status, headers=exc.headers)


@web.middleware
async def errors_and_cors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One error renderer, and the original's CORS headers on every /api response.

    aiohttp-cors is not used: it answers only preflights that carry an Origin and
    decorates only matched routes, while the original's clients rely on the
    headers on every /api reply (404s included) and on a 204 for any OPTIONS.
    """
    path = request.path
    if request.method == "OPTIONS" and path not in HEALTH_PATHS:
        figure = path.startswith("/figures/")
        return web.Response(status=204, headers=FIGURE_CORS_HEADERS if figure else CORS_HEADERS)
    try:
        response = await handler(request)
    except RunpackError as exc:
        if isinstance(exc, StoreUnavailable):
            response = _unavailable(request, exc)
        elif isinstance(exc, StoreError):
            response = _failure(request, exc)
        else:
            response = _render(exc)
    except web.HTTPRequestEntityTooLarge as exc:
        response = _render(TooLarge(details=exc.text))
    except web.RequestPayloadError as exc:
        # A body that cannot be read, such as one not in its declared Content-Encoding.
        why = getattr(exc.__cause__, "message", None) or str(exc)
        response = _render(BadRequest("Invalid request body", details=why))
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
        response = json_response({"error": "Not found"}, status=404)
    except web.HTTPException as exc:
        if exc.empty_body or exc.status < 400:
            raise
        response = json_response({"error": exc.reason}, status=exc.status)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if isinstance(exc, ConnectionResetError) and request.transport is None:
            raise  # the client went away, or was sent away, mid-request: nobody to answer
        response = _failure(request, exc)
    if path.startswith("/api/") and not response.prepared:
        response.headers.update(CORS_HEADERS)
        caller = request.get(CALLER)
        if caller is not None and caller.origin is not None:
            # A browser key that lists its Origins: the reply is for that Origin only.
            response.headers["Access-Control-Allow-Origin"] = caller.origin
            response.headers.add("Vary", "Origin")
    return response


def _unavailable(request: web.Request, exc: StoreUnavailable) -> web.Response:
    """The database is out of reach for now: 503 with Retry-After, the route's message."""
    incident = incident_id(request)
    log.warning(
        "%s %s: database unavailable (incident %s): %s",
        request.method,
        request.path,
        incident,
        exc.details,
    )
    route_policy = policy_of(request.match_info.handler)
    body = {
        "error": route_policy.failure if route_policy else "Internal server error",
        "details": f"{exc.message} (incident {incident})",
    }
    return json_response(body, status=exc.status, headers=exc.headers)


def _failure(request: web.Request, exc: Exception) -> web.Response:
    """An unexpected failure: logged with the request's id, answered without internals."""
    incident = incident_id(request)
    log.error("%s %s failed (incident %s)", request.method, request.path, incident, exc_info=exc)
    route_policy = policy_of(request.match_info.handler)
    message = route_policy.failure if route_policy else "Internal server error"
    return json_response({"error": message, "details": f"incident {incident}"}, status=500)


@web.middleware
async def enforce_policy(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Per-route policy: headers that are text, X-Runner-ID presence, then auth (401/403),
    then the runner's owner (403), then rate limit (429), then, for a route that acts for
    a runner, the runner's contact noted (404 until it registers) and its id put on the
    request (``request[RUNNER_ID]``) for the handler."""
    route_policy = policy_of(request.match_info.handler)
    if route_policy is None:
        return await handler(request)
    check_headers(request)
    if route_policy.runner_header and not request.headers.get("X-Runner-ID"):
        return json_response({"error": "Missing X-Runner-ID header"}, status=400)
    caller = await request.app[KEYS].authorize(
        request.headers.get("Authorization"), route_policy.role, request.headers.get("Origin")
    )
    request[CALLER] = caller
    request[ROLE] = caller.role
    acting_for = request.headers.get("X-Runner-ID")
    if acting_for and route_policy.role == Role.RUNNER:
        # A runner acts only with the key that registered it (and its own secret).
        secret = request.headers.get(RUNNER_SECRET_HEADER)
        await request.app[SERVICE].owners.check(acting_for, caller.owner, secret)
    if route_policy.bucket is not None:
        await request.app[LIMITS].admit(request, route_policy, caller)
    if route_policy.runner_header and acting_for:
        await request.app[SERVICE].touch_runner(acting_for)
        request[RUNNER_ID] = acting_for
    return await handler(request)
