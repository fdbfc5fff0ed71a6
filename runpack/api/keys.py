"""Admin routes for stored API keys: the same as ``runpack keys``, over HTTP (admin key)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from runpack.api.common import json_response, policy, read_json
from runpack.appkeys import KEYS, SERVICE
from runpack.errors import BadRequest
from runpack.keys import KeyNotFound, KeySpec, create_key, key_spec, key_view, now_ms, revoke_key
from runpack.protocol import Role

routes = web.RouteTableDef()
FIELDS = ("role", "name", "job_types", "origins", "rate", "max_priority")


def _spec(body: dict[str, Any]) -> KeySpec:
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise BadRequest("Unknown field", details=f"{', '.join(unknown)}; fields: {FIELDS}")
    role, name, rate = body.get("role"), body.get("name", ""), body.get("rate")
    if not isinstance(role, str):
        raise BadRequest("role must be one of submit, runner, admin")
    if not isinstance(name, str):
        raise BadRequest("name must be a string")
    for field in ("rate", "max_priority"):
        value = body.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise BadRequest(f"{field} must be an integer or null")
    lists = {}
    for field in ("job_types", "origins"):
        value = body.get(field)
        if value is not None and not (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        ):
            raise BadRequest(f"{field} must be an array of strings or null")
        lists[field] = value
    return key_spec(
        role, name, lists["job_types"], lists["origins"], rate, body.get("max_priority")
    )


@routes.get("/api/admin/keys")
@policy(Role.ADMIN, failure="Failed to list API keys")
async def list_keys(request: web.Request) -> web.Response:
    rows = await request.app[SERVICE].store.list_api_keys()
    return json_response({"keys": [key_view(r) for r in rows], "total": len(rows)})


@routes.post("/api/admin/keys")
@policy(Role.ADMIN, failure="Failed to create the API key")
async def create(request: web.Request) -> web.Response:
    spec = _spec(await read_json(request))
    secret, row = await create_key(request.app[SERVICE].store, spec, now_ms())
    body = {
        **key_view(row),
        "secret": secret,
        "message": "Key created: keep the secret now, it cannot be shown again",
    }
    return json_response(body, status=201)


@routes.delete("/api/admin/keys/{key_id}")
@policy(Role.ADMIN, failure="Failed to revoke the API key", errors=(KeyNotFound,))
async def revoke(request: web.Request) -> web.Response:
    row, changed = await revoke_key(
        request.app[SERVICE].store, request.match_info["key_id"], now_ms()
    )
    request.app[KEYS].forget(row.id)  # this instance refuses it at once, others within the TTL
    message = "Key revoked" if changed else "Key was already revoked"
    return json_response({"key": key_view(row), "message": message})
