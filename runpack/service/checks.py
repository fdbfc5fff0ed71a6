"""Small checks on what clients and runners send, shared by the service and the API."""

from __future__ import annotations

import re

#: Deepest nesting of objects/arrays stored as params or output. Replies wrap them in a
#: few more levels, and both the JSON encoder (orjson: 254) and the recursive hashing
#: have limits: a deeper value would be stored, then fail every read as a 500.
MAX_DEPTH = 100

#: PostgreSQL text cannot hold NUL: names with one are refused, and in text from
#: runners it becomes U+FFFD, so that both engines store the same.
NUL = "\x00"

#: An id as this server writes them: a lower-case UUID string.
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def too_deep(value: object) -> bool:
    """Does ``value`` nest objects and arrays more than MAX_DEPTH levels? (No recursion.)"""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, dict | list):
            continue
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, dict | list):
                if depth >= MAX_DEPTH:
                    return True
                stack.append((child, depth + 1))
    return False


def printable(text: str | None) -> str | None:
    """``text`` with each NUL as U+FFFD."""
    return text.replace(NUL, "\ufffd") if text else text


def is_uuid(value: str) -> bool:
    """Ids are lower-case uuid strings; anything else cannot name a row."""
    return _UUID.fullmatch(value) is not None
