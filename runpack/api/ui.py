"""The dashboard: static files from ``runpack/ui``, no build step, nothing from a CDN.

``/ui/`` and every page path under it (``/ui/jobs/<id>`` …) answer ``index.html``;
the client-side router draws the page. The modules and the stylesheet are served
by name from ``/ui/static/``; a path that would leave the ui folder is a 404.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from runpack.api.common import policy
from runpack.errors import NotFound
from runpack.protocol import Role

routes = web.RouteTableDef()
UI_DIR = (Path(__file__).resolve().parent.parent / "ui").resolve()
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
#: Pages load only this server's files; a figure preview may frame any http(s) page.
DOCUMENT_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-src 'self' http: https:; object-src 'none'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'self'"
    ),
    "Referrer-Policy": "no-referrer",
}
COMMON_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


def _file(relative: str) -> Path:
    """The file under the ui folder at ``relative``; NotFound for anything else."""
    target = (UI_DIR / relative).resolve()
    if not target.is_relative_to(UI_DIR) or not target.is_file():
        raise NotFound()
    if target.suffix not in CONTENT_TYPES:
        raise NotFound()
    return target


def _respond(path: Path, extra: dict[str, str] | None = None) -> web.FileResponse:
    headers = {**COMMON_HEADERS, "Content-Type": CONTENT_TYPES[path.suffix], **(extra or {})}
    return web.FileResponse(path, headers=headers)


@routes.get("/ui")
@policy(Role.PUBLIC, failure="Failed to serve the dashboard")
async def ui_root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPMovedPermanently("/ui/")


@routes.get("/ui/static/{path:.+}")
@policy(Role.PUBLIC, failure="Failed to serve the dashboard", errors=(NotFound,))
async def ui_static(request: web.Request) -> web.StreamResponse:
    return _respond(_file(request.match_info["path"]))


@routes.get("/ui/{path:.*}")
@policy(Role.PUBLIC, failure="Failed to serve the dashboard", errors=(NotFound,))
async def ui_page(request: web.Request) -> web.StreamResponse:
    """Any page path (no file extension in its last segment) is the single-page shell."""
    last = request.match_info["path"].rstrip("/").rpartition("/")[2]
    if "." in last:
        raise NotFound()
    return _respond(_file("index.html"), DOCUMENT_HEADERS)
