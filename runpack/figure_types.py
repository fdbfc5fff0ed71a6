"""What a figure's files are served as: a content type by name."""

from __future__ import annotations

import os

#: Content types by suffix; anything else is served as application/octet-stream.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".htm": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
    ".wasm": "application/wasm",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
}
#: Zarr's metadata files (``.zmetadata`` …) are JSON; its chunks are binary.
ZARR_METADATA = frozenset({".zmetadata", ".zattrs", ".zgroup", ".zarray"})
BINARY = "application/octet-stream"


def content_type(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    if base in ZARR_METADATA:
        return "application/json"
    suffix = os.path.splitext(base)[1].lower()
    return CONTENT_TYPES.get(suffix, BINARY)
