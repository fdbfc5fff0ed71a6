"""Canonical JSON and job hashes, byte-for-byte compatible with the original.

The original Runpack (a JavaScript worker) deduplicates jobs by
``sha256(JSON.stringify({type, params: sortObjectKeys(params)}))``. Existing
databases and caches are keyed by those hashes, so this module reproduces what
V8 prints: JS number formatting, JS object key order (integer-like keys first,
in numeric order), keys sorted by UTF-16 code units, and JSON.stringify's string
escaping. A ``"__proto__"`` key is dropped from the sorted form, as the
original's ``sorted[key] = ...`` never created it as an own property.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterable

import orjson

__all__ = ["canonical_json", "job_canonical", "job_hash", "js_stringify", "utf8_size"]

_MAX_INDEX = 2**32 - 2  # largest JS array index; such keys come first in objects
_MAX_SAFE = 2**53  # ints up to this are exact as doubles
_ESCAPE = re.compile(r'[\ud800-\udbff][\udc00-\udfff]|[\x00-\x1f"\\\ud800-\udfff]')
_SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}

_KeyOrder = Callable[[Iterable[str]], list[str]]


def _escape_match(match: re.Match[str]) -> str:
    text = match.group()
    if len(text) == 2:  # a surrogate pair held as two code points: emit the character
        return text.encode("utf-16-be", "surrogatepass").decode("utf-16-be")
    return _SHORT.get(text) or f"\\u{ord(text):04x}"


def _quote(text: str) -> str:
    if _ESCAPE.search(text) is None:
        return f'"{text}"'
    return f'"{_ESCAPE.sub(_escape_match, text)}"'


def _format_float(number: float) -> str:
    """ECMAScript Number::toString for a finite double."""
    if not math.isfinite(number):
        raise ValueError(f"{number!r} is not valid JSON")
    if number.is_integer() and abs(number) < _MAX_SAFE:
        return str(int(number))  # also turns -0.0 into "0"
    mantissa, _, exp = repr(abs(number)).partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = (whole + frac).rstrip("0")
    stripped = digits.lstrip("0")
    point = len(whole) + int(exp or 0) - (len(digits) - len(stripped))
    digits, count = stripped, len(stripped)
    sign = "-" if number < 0 else ""
    if count <= point <= 21:
        return sign + digits + "0" * (point - count)
    if 0 < point <= 21:
        return sign + digits[:point] + "." + digits[point:]
    if -6 < point <= 0:
        return sign + "0." + "0" * -point + digits
    exponent = f"e{'+' if point > 0 else '-'}{abs(point - 1)}"
    return sign + digits[0] + ("." + digits[1:] if count > 1 else "") + exponent


def _format_int(number: int) -> str:
    if -_MAX_SAFE <= number <= _MAX_SAFE:
        return str(number)
    try:
        return _format_float(float(number))  # a double, as JSON.parse would make it
    except OverflowError:
        raise ValueError(f"{number} overflows a double") from None


def _is_index(key: str) -> bool:
    return (
        key.isascii()
        and key.isdigit()
        and len(key) <= 10
        and (key == "0" or key[0] != "0")
        and int(key) <= _MAX_INDEX
    )


def _js_order(keys: Iterable[str]) -> list[str]:
    """Key order of a JS object built in this order: array indices first, numerically."""
    keys = list(keys)
    indices = [k for k in keys if _is_index(k)]
    if not indices:
        return keys
    return sorted(indices, key=int) + [k for k in keys if not _is_index(k)]


def _utf16(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")


def _sorted_order(keys: Iterable[str]) -> list[str]:
    """Order after ``Object.keys(o).sort()`` reassigned into ``{}`` (drops __proto__)."""
    return _js_order(sorted((k for k in keys if k != "__proto__"), key=_utf16))


def _dump(value: object, order: _KeyOrder, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(_quote(value))
    elif isinstance(value, bool):
        out.append("true" if value else "false")
    elif isinstance(value, int):
        out.append(_format_int(value))
    elif isinstance(value, float):
        out.append(_format_float(value))
    elif value is None:
        out.append("null")
    elif isinstance(value, dict):
        sep = "{"
        for key in order(value):
            out.append(sep + _quote(key) + ":")
            _dump(value[key], order, out)
            sep = ","
        out.append("{}" if sep == "{" else "}")
    elif isinstance(value, list | tuple):
        sep = "["
        for item in value:
            out.append(sep)
            _dump(item, order, out)
            sep = ","
        out.append("[]" if sep == "[" else "]")
    else:
        raise TypeError(f"{type(value).__name__} is not a JSON value")


def _plain(value: object) -> bool:
    """Whether orjson prints ``value`` exactly as V8 does, so the fast path may.

    True for what most requests hold: objects whose keys are ASCII and not array
    indices (which JS puts first) nor ``__proto__``, strings, booleans, null, and
    integers a double holds exactly. Not for floats (JS formats them its own way),
    other keys or types; orjson refuses lone surrogates, which also falls back.
    orjson escapes strings as JSON.stringify does, and for ASCII keys its sorted
    order is the UTF-16 order the original sorted by.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str or kind is bool or item is None:
            continue
        if kind is int:
            if not -_MAX_SAFE <= item <= _MAX_SAFE:  # type: ignore[operator]
                return False
        elif kind is dict:
            for key, child in item.items():  # type: ignore[attr-defined]
                if type(key) is not str or not key.isascii() or key == "__proto__":
                    return False
                if key[:1].isdigit() and _is_index(key):
                    return False
                stack.append(child)
        elif kind is list:
            stack.extend(item)  # type: ignore[arg-type]
        else:
            return False
    return True


def _fast(value: object, option: int) -> bytes | None:
    """orjson's bytes for a :func:`_plain` value, None when the slow path must run."""
    if not _plain(value):
        return None
    try:
        return orjson.dumps(value, option=option)
    except orjson.JSONEncodeError:  # a lone surrogate, or nested past orjson's limit
        return None


def canonical_json(value: object) -> str:
    """``JSON.stringify(sortObjectKeys(value))`` as the original computed it."""
    fast = _fast(value, orjson.OPT_SORT_KEYS)
    if fast is not None:
        return fast.decode()
    out: list[str] = []
    _dump(value, _sorted_order, out)
    return "".join(out)


def js_stringify(value: object) -> str:
    """``JSON.stringify(JSON.parse(text))``: compact, JS key order, no sorting."""
    fast = _fast(value, 0)
    if fast is not None:
        return fast.decode()
    out: list[str] = []
    _dump(value, _js_order, out)
    return "".join(out)


def job_canonical(job_type: str, input_params: object, version: str | None = None) -> str:
    """The string the original hashed; ``type`` then ``params``, not sorted. A job type
    with a declared version (:class:`runpack.jobtypes.JobTypeVersions`) has it between
    them, so its results are keyed by the version; without one, the original's string."""
    params = canonical_json(input_params)
    if version is None:
        return f'{{"type":{_quote(job_type)},"params":{params}}}'
    return f'{{"type":{_quote(job_type)},"version":{_quote(version)},"params":{params}}}'


def job_hash(job_type: str, input_params: object, version: str | None = None) -> str:
    """Lowercase hex SHA-256 of the UTF-8 bytes of :func:`job_canonical`."""
    if version is not None:
        return hashlib.sha256(job_canonical(job_type, input_params, version).encode()).hexdigest()
    fast = _fast(input_params, orjson.OPT_SORT_KEYS)
    if fast is not None and _ESCAPE.search(job_type) is None:
        canonical = b'{"type":"%s","params":%s}' % (job_type.encode(), fast)
        return hashlib.sha256(canonical).hexdigest()
    return hashlib.sha256(job_canonical(job_type, input_params).encode()).hexdigest()


def utf8_size(text: str) -> int:
    """Size in bytes of ``text`` as UTF-8, as ``TextEncoder`` would count it."""
    return len(text.encode("utf-8", "surrogatepass"))
