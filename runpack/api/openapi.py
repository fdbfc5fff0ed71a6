"""The OpenAPI 3.1 description of the app's HTTP routes, served at ``/api/openapi.json``.

Built from the app's route table. What each route declares once, with ``@policy``,
gives its security and its error replies: the role (401, 403), the rate-limit bucket
(429), ``X-Runner-ID`` (400, 404 for an unknown runner), the errors the handler raises
(their statuses), a body (400, 413) and, for every route, 500 with the route's failure
message and 503 when the database is out of reach. Path parameters come from the path.
What only prose can say (a summary, the answers, query parameters, the body's shape)
is in ``OPERATIONS`` (openapi_operations.py); a route missing there is still described,
by its handler's docstring. Shapes live in openapi_schemas.py, and openapi_models.py
describes the handlers' typed models. tests/test_openapi.py holds this document
against the router and fuzzes the server with it.
"""

from __future__ import annotations

import re
import weakref
from collections import defaultdict
from typing import Any

import orjson
from aiohttp import web

from runpack import __version__
from runpack.api.common import RoutePolicy, policy, policy_of
from runpack.api.openapi_doc import PATH_PARAMS, RUNNER_ID, RUNNER_SECRET, TAG_OF_PREFIX, TAGS, Doc
from runpack.api.openapi_models import JSON, Json, ref
from runpack.api.openapi_operations import OPERATIONS
from runpack.api.openapi_schemas import SCHEMAS, SECURITY, SECURITY_SCHEMES, json_reply
from runpack.errors import RunpackError
from runpack.protocol import Role

routes = web.RouteTableDef()

#: The methods a route added for any method (``"*"``) is described with.
ANY_METHOD = ("GET", "POST", "PUT", "PATCH", "DELETE")
RUNNER_HEADERS: list[Json] = [
    {"$ref": "#/components/parameters/RunnerId"},
    {"$ref": "#/components/parameters/RunnerSecret"},
]
ORIGIN_403 = "a stored key sent from a browser Origin that it does not list."
FORBIDDEN = {
    Role.SUBMIT: "A stored key sent from a browser Origin that it does not list, for a job "
    "(type) that it may not act on, or with a priority above its ceiling.",
    Role.RUNNER: ORIGIN_403.capitalize(),
    Role.ADMIN_READ: ORIGIN_403.capitalize(),
    Role.ADMIN: f"The runner key may read but not change jobs; {ORIGIN_403}",
}
RUNNER_403 = (
    "The runner was registered with another key, or its secret is missing or wrong; " + ORIGIN_403
)
RETRY_AFTER: Json = {"Retry-After": {"description": "Seconds", "schema": {"type": "string"}}}


def error_shape(error: type[RunpackError]) -> str:
    """The shared ``{error, details}``, or the original's ``{success, message}`` for an
    error with a fixed body (an error named in a policy is made without arguments)."""
    return "Error" if error().body is None else "SuccessMessage"


def error_replies(rule: RoutePolicy, doc: Doc) -> dict[str, Json]:
    """The error replies that the route's policy, errors and body imply."""
    why: dict[int, list[tuple[str, str]]] = defaultdict(list)  # (description, shape)
    if rule.runner_header:
        why[400].append(("A missing X-Runner-ID header.", "Error"))
        why[404].append(("Unknown runner: register first.", "Error"))
    if doc.body is not None:
        why[400].append(("Invalid input.", "Error"))
        why[413].append(("The body is over RUNPACK_MAX_BODY_BYTES.", "Error"))
    if rule.role != Role.PUBLIC:
        why[401].append(("Missing, malformed or wrong key.", "Error"))
        why[403].append((RUNNER_403 if rule.runner_header else FORBIDDEN[rule.role], "Error"))
    for error in rule.errors:
        why[error.status].append((f"{(error.__doc__ or '').strip()}.", error_shape(error)))
    failure = f"Unexpected failure (`{rule.failure}`), logged with an incident id."
    why[500].append((failure, "Error"))
    why[503].append(("The database is out of reach for now (safe to repeat).", "Error"))
    out: dict[str, Json] = {}
    for status, reasons in why.items():
        texts = dict.fromkeys(text for text, _ in reasons)
        shapes = [ref(name) for name in dict.fromkeys(shape for _, shape in reasons)]
        schema = shapes[0] if len(shapes) == 1 else {"anyOf": shapes}
        description = doc.notes.get(str(status), " ".join(texts))
        out[str(status)] = json_reply(description, schema, RETRY_AFTER if status == 503 else None)
    if rule.bucket is not None:
        out["429"] = json_reply(
            "Over a rate limit (a submit: the request budget, or the new-work budget when it "
            "would queue a job); `details` names it and the setting that raises it, and "
            "nothing changed.",
            ref("RateLimited"),
            RETRY_AFTER,
        )
    return out


def operation(method: str, path: str, handler: Any) -> Json:
    """One operation: declared policy, path parameters, and the prose of ``OPERATIONS``."""
    rule = policy_of(handler)
    doc = OPERATIONS.get((method, path)) or OPERATIONS.get(("*", path))
    if doc is None:
        doc = Doc((handler.__doc__ or handler.__name__).strip().split("\n")[0])
    out: Json = {
        "summary": doc.summary,
        "operationId": method.lower() + re.sub(r"\W+", "_", path).rstrip("_"),
        "tags": [tag_of(path)],
        "security": SECURITY[rule.role] if rule is not None else [],
    }
    if doc.description:
        out["description"] = doc.description
    params = list(RUNNER_HEADERS) if doc.runner_id or (rule and rule.runner_header) else []
    for name in re.findall(r"{(\w+)}", path):
        text, fmt = PATH_PARAMS.get(name, ("", None))
        schema = {"type": "string", **({"format": fmt} if fmt else {})}
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
        if text:
            params[-1]["description"] = text
    params += doc.query
    if params:
        out["parameters"] = params
    if doc.body is not None:
        content = {doc.body_type: {"schema": doc.body}}
        out["requestBody"] = {"required": doc.body_required, "content": content}
    replies = error_replies(rule, doc) if rule is not None else {}
    out["responses"] = dict(sorted({**replies, **doc.answers}.items()))
    return out


def tag_of(path: str) -> str:
    if path.endswith("/events"):
        return "events"
    return next(tag for prefix, tag in TAG_OF_PREFIX if path.startswith(prefix))


def paths(app: web.Application) -> Json:
    """Every route of the app (OPTIONS is the CORS middleware's; a HEAD beside its GET,
    aiohttp's own)."""
    out: dict[str, Json] = {}
    for route in app.router.routes():
        if route.resource is None or is_implied_head(route):
            continue
        path = route.resource.canonical
        for method in ANY_METHOD if route.method == "*" else (route.method,):
            out.setdefault(path, {})[method.lower()] = operation(method, path, route.handler)
    return out


def is_implied_head(route: web.AbstractRoute) -> bool:
    """A HEAD route that aiohttp added for a GET (same handler): not an operation."""
    if route.method != "HEAD" or route.resource is None:
        return False
    return any(other.method == "GET" and other.handler is route.handler for other in route.resource)


def document(app: web.Application) -> Json:
    """The whole OpenAPI 3.1 document of ``app``."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Runpack",
            "version": __version__,
            "summary": "On-demand computation and result caching.",
            "description": "Submit `{job_type, input_params}` once; every identical request "
            "after that gets the same job, or its cached result, at once. Wire-compatible "
            "with the original Cloudflare Worker. Every `/api` reply carries CORS headers; "
            "`OPTIONS` on any `/api` path answers 204. An unknown route or method is a 404 "
            '`{"error": "Not found"}`.',
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": [{"name": tag, "description": text} for tag, text in TAGS.items()],
        "paths": paths(app),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": SECURITY_SCHEMES,
            "parameters": {"RunnerId": RUNNER_ID, "RunnerSecret": RUNNER_SECRET},
        },
    }


#: Each app's document, made on the first request for it (the routes are frozen by then).
_DOCUMENTS: weakref.WeakKeyDictionary[web.Application, bytes] = weakref.WeakKeyDictionary()


@routes.get("/api/openapi.json")
@policy(Role.PUBLIC, failure="Failed to describe the API")
async def openapi_json(request: web.Request) -> web.Response:
    body = _DOCUMENTS.get(request.app)
    if body is None:
        body = _DOCUMENTS[request.app] = orjson.dumps(document(request.app))
    return web.Response(body=body, content_type=JSON)
