"""Stored JSON text as it goes into a reply or a runner's frame."""

from __future__ import annotations

from typing import Any

import orjson


def parse_json_text(text: str | None, default: Any = None) -> Any:
    """``text`` parsed, or ``default`` when it is empty or not JSON."""
    if not text:
        return default
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return default


def params_fragment(text: str | None) -> Any:
    """Stored input parameters as they go into a frame or a reply, not parsed and
    printed again: the store holds them as JSON text the server wrote (or checked
    when it imported them)."""
    if text and text[0] == "{" and text[-1] == "}":
        return orjson.Fragment(text)
    return parse_json_text(text, {})
