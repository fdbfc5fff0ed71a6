"""Figure files: runners upload a job's folder; anyone reads it at ``/figures/<job_id>/<version>/``.

``POST /api/runner/jobs/{job_id}/files`` (runner key, ``X-Runner-ID`` of the runner
holding the job) takes the folder as one tar archive and answers its URLs (201),
or 507 (disk full) or 503 (storage not writable) naming the cause, keeping nothing
of it. ``GET /figures/{job_id}/{version}/{path}`` serves a file of the figure's
current version with its content type, HTTP range requests and CORS for any
origin; no folder is ever listed. The version is a hash of the figure's files, so
a file's URL never names other bytes: files are cached for a year
(``immutable``), except ``index.html``, which is revalidated so that a browser
opening an older version is sent to the current one. Another version's URL, the
bare ``/figures/{job_id}`` and the unversioned ``/figures/{job_id}/{path}`` of
results stored before versions existed answer 307 to the same path in the current
version (temporary, not cached: the current version changes when the job is
computed again, and a remembered permanent redirect could then loop). There is no
``figpack.json`` (figpack's cloud status file): without one, figpack's viewer shows
no "Manage Figure" button pointing at a cloud that does not know the figure, and
this server checks its own figures on disk.

A figure's files come from a runner, whose key may be held by a stranger, so no
response under ``/figures/`` (any status, type or method: files, ranges, 304s,
redirects, errors, preflights) may run script in this server's origin, where the
dashboard keeps its keys. Every one carries a sandbox CSP without
``allow-same-origin`` (a figure page runs its scripts in an opaque origin: no
access to this origin's storage, and its API calls carry no key) and ``nosniff``.
Only the types a figpack figure is made of are shown inline; anything else is a
download (``Content-Disposition: attachment``). SVG is a download too, though an
image: it is a document that can script. A figure only uses it as an image
(``<img>``, CSS), which browsers load whatever the disposition and never script;
opened by itself it is a download, and sandboxed should a browser render it anyway.

With ``RUNPACK_FIGURE_BASE_URL`` (another hostname pointed at this server), figure
URLs are handed out on that origin, and a figure request reaching the public URL's
host is redirected there (307): figures then never share the dashboard's origin,
even in a browser that ignores the CSP.
"""

from __future__ import annotations

from aiohttp import web

from runpack.api.common import json_response, policy
from runpack.appkeys import FIGURES, RUNNER_ID, SERVICE
from runpack.artifacts import CONTENT_TYPES, Moved, content_type
from runpack.errors import (
    InsufficientStorage,
    NotFound,
    NotOwned,
    StorageNotWritable,
    TooLarge,
)
from runpack.protocol import Role

routes = web.RouteTableDef()
UPLOAD_CHUNK = 256 * 1024

FIGURE_CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
    "Access-Control-Allow-Headers": "Range, If-None-Match, If-Modified-Since",
    "Access-Control-Expose-Headers": "Content-Length, Content-Range, Accept-Ranges, ETag",
}
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
#: Served with no-cache though its URL names its version: a browser asks again each
#: time it opens a figure, so an old version's page is redirected to the current
#: one, whose files it then loads, never a mix of two versions.
MUTABLE_NAMES = frozenset({"index.html"})
#: On every response under /figures/. A figure's pages run in an opaque origin:
#: figure scripts can never read what this server's dashboard keeps for its origin
#: (the API keys in localStorage). They load their files with CORS, which every
#: figure response allows.
FIGURE_GUARD = {
    "Content-Security-Policy": (
        "sandbox allow-scripts allow-popups allow-popups-to-escape-sandbox "
        "allow-downloads allow-modals"
    ),
    "X-Content-Type-Options": "nosniff",
}
#: The types a figure is made of, shown inline; any other response is a download.
INLINE_TYPES = frozenset(
    kind.split(";")[0] for kind in CONTENT_TYPES.values() if kind != "image/svg+xml"
)
ATTACHMENT = "attachment"


@routes.post("/api/runner/jobs/{job_id}/files")
@policy(
    Role.RUNNER,
    runner_header=True,
    failure="Failed to store files",
    errors=(NotOwned, StorageNotWritable, InsufficientStorage),
)
async def upload(request: web.Request) -> web.Response:
    """Store a job's figure folder (a tar archive body) before the job completes."""
    service = request.app[SERVICE]
    figures = request.app[FIGURES]
    rid = request[RUNNER_ID]
    job_id = request.match_info["job_id"]
    await service.check_holder(rid, job_id)
    length = request.content_length
    if length is not None and length > figures.max_bytes:
        raise TooLarge(f"Upload exceeds size limit of {figures.max_bytes} bytes")

    async def still_held() -> None:
        await service.check_holder(rid, job_id)

    stored = await figures.receive(
        job_id, request.content.iter_chunked(UPLOAD_CHUNK), still_allowed=still_held
    )
    body = {
        "success": True,
        "message": "Files stored",
        "url": stored.base_url,
        "version": stored.version,
        "files": stored.files,
        "bytes": stored.bytes,
    }
    if stored.index_url is not None:
        body["figpack_url"] = stored.index_url
    return json_response(body, status=201)


def _not_found() -> web.Response:
    return json_response({"error": "Not found"}, status=404, headers=FIGURE_CORS_HEADERS)


async def guard_figure_response(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the guard headers on every response under /figures/."""
    if not request.path.startswith("/figures/"):
        return
    response.headers.update(FIGURE_CORS_HEADERS)
    response.headers.update(FIGURE_GUARD)
    if response.content_type not in INLINE_TYPES:
        response.headers["Content-Disposition"] = ATTACHMENT


def _redirect(request: web.Request, target: str) -> web.HTTPTemporaryRedirect:
    """A 307 to ``target`` (a path, the request's query kept), on the figure origin
    when the request reached the main one."""
    if request.query_string:
        target += "?" + request.query_string
    there = request.app[FIGURES].moved_to_figure_origin(request.host, target)
    return web.HTTPTemporaryRedirect(there or target, headers={"Cache-Control": REVALIDATE})


def _to_figure_origin(request: web.Request) -> None:
    """Raise a redirect to the figure origin for a request that reached the main one."""
    there = request.app[FIGURES].moved_to_figure_origin(request.host, request.raw_path)
    if there is not None:
        raise web.HTTPTemporaryRedirect(there, headers={"Cache-Control": REVALIDATE})


@routes.get("/figures/{job_id}")
@policy(Role.PUBLIC, failure="Failed to serve the figure", errors=(NotFound,))
async def figure_root(request: web.Request) -> web.StreamResponse:
    return await _serve(request, request.match_info["job_id"], "")


@routes.get("/figures/{job_id}/{path:.*}")
@policy(Role.PUBLIC, failure="Failed to serve the figure", errors=(NotFound,))
async def figure_file(request: web.Request) -> web.StreamResponse:
    return await _serve(request, request.match_info["job_id"], request.match_info["path"])


async def _serve(request: web.Request, job_id: str, path: str) -> web.StreamResponse:
    """A file of the figure's current version, or a redirect to it (from an older
    version's URL or an unversioned one): 307, never cached, since the version it
    names changes whenever the figure is computed again."""
    found = await request.app[FIGURES].locate(job_id, path)
    if found is None:
        _to_figure_origin(request)
        return _not_found()
    if isinstance(found, Moved):
        raise _redirect(request, found.target)
    _to_figure_origin(request)
    cache = REVALIDATE if found.path in MUTABLE_NAMES else IMMUTABLE
    headers = {"Content-Type": content_type(found.path), "Cache-Control": cache}
    return web.FileResponse(found.blob, headers=headers)
