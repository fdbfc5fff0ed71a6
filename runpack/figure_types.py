"""Figures by name: the content type a figure's file is served as, and the figure
URLs a job's result names."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

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


def figpack_urls(value: Any) -> Iterator[Any]:
    """Every value of a key named ``figpack_url``, anywhere in a JSON value."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "figpack_url":
                yield item
            else:
                yield from figpack_urls(item)
    elif isinstance(value, list):
        for item in value:
            yield from figpack_urls(item)


def may_name_figures(text: str) -> bool:
    """False when the JSON ``text`` cannot have a key named ``figpack_url``: it has
    neither that key as written plainly nor a ``\\u`` escape, which could spell it.
    Most results name no figure; this spares walking them (:func:`figpack_urls`)."""
    return '"figpack_url"' in text or "\\u" in text
