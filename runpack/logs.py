"""Log records for people (``text``) or machines (``json``), each with its context.

While an HTTP request is handled, :func:`bind_request` holds its id in a context
variable, and :func:`bind` may add more (on a runner's socket, the runner's id);
tasks started meanwhile inherit them.
A filter copies that context onto every record, where an explicit
``extra={"job_id": …}`` may add more. ``text`` appends the context to the usual
line; ``json`` writes one object per line: ``ts``, ``level``, ``logger``,
``message``, ``request_id`` and every extra field. No headers are ever logged,
so keys never reach a record.

Whatever a client sends may end up in a record (a path, a runner's name), so both
formats escape control characters (``\\n``, ``\\x1b``, ``\\u2028``, ``\\udcff`` for a byte
that was not UTF-8): a text record is one line, and a forged line cannot be written
into the log. A traceback's own lines follow its record, indented.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TextIO

import orjson

from runpack.dsn import redact

FORMATS = ("text", "json")
#: Context fields the text format shows, in this order (json shows every field).
TEXT_FIELDS = ("request_id", "runner_id", "job_id")

_EMPTY: Mapping[str, str] = MappingProxyType({})
_CONTEXT: ContextVar[Mapping[str, str]] = ContextVar("runpack_log_context", default=_EMPTY)
#: The request id on its own: it is set for every request, so it must cost little.
_REQUEST_ID: ContextVar[str | None] = ContextVar("runpack_request_id", default=None)
#: Attributes every LogRecord has: anything else on a record is an extra field.
_STANDARD = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys() | {"message", "asctime", "taskName"}
)
#: Characters escaped in logged text: C0 and C1 controls (tab aside), DEL, the Unicode
#: line and paragraph separators, bidirectional overrides, and lone surrogates.
_UNSAFE = re.compile(
    r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_NAMED = {"\n": "\\n", "\r": "\\r"}


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """``text`` with every control character written as an escape: one safe line."""
    return _UNSAFE.sub(_escape_one, text)


def _indented(text: str) -> str:
    """A traceback below its record: each line escaped and indented, so that no line
    of it (an exception's message included) can pass for a record of its own."""
    return "\n".join("  " + escape(line) for line in text.split("\n"))


def bind(**fields: str) -> Token[Mapping[str, str]]:
    """Add fields to the log context of this task (and the tasks it starts)."""
    return _CONTEXT.set(MappingProxyType({**_CONTEXT.get(), **fields}))


def unbind(token: Token[Mapping[str, str]]) -> None:
    _CONTEXT.reset(token)


def bind_request(request_id: str) -> Token[str | None]:
    """The id of the request this task is handling (``request_id`` on records)."""
    return _REQUEST_ID.set(request_id)


def unbind_request(token: Token[str | None]) -> None:
    _REQUEST_ID.reset(token)


class ContextFilter(logging.Filter):
    """Puts the bound context on each record; an explicit ``extra`` field wins."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = record.__dict__
        request_id = _REQUEST_ID.get()
        if request_id is not None:
            fields.setdefault("request_id", request_id)
        for key, value in _CONTEXT.get().items():
            fields.setdefault(key, value)
        return True


class SecretFilter(logging.Filter):
    """Masks the password of any DSN in a record's message (a DSN is never logged whole)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if "://" in str(record.msg) or any("://" in str(a) for a in args):
            record.msg, record.args = redact(record.getMessage()), None
        return True


class TextFormatter(logging.Formatter):
    """The usual human line, then ``[request_id=… runner_id=… job_id=…]`` when known."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        known = [f"{k}={record.__dict__[k]}" for k in TEXT_FIELDS if record.__dict__.get(k)]
        return escape(f"{line} [{' '.join(known)}]" if known else line)

    def formatException(self, ei: Any) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        out: dict[str, Any] = {
            "ts": ts.replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": escape(record.getMessage()),
            "request_id": record.__dict__.get("request_id"),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out.setdefault(key, escape(value) if isinstance(value, str) else value)
        if record.exc_info:
            out["exc_info"] = _escape_lines(self.formatException(record.exc_info))
        if record.stack_info:
            out["stack_info"] = _escape_lines(self.formatStack(record.stack_info))
        return orjson.dumps(out, default=str).decode()


def _escape_lines(text: str) -> str:
    """A traceback for a JSON field: its own line breaks kept, anything else escaped."""
    return "\n".join(escape(line) for line in text.split("\n"))


def setup_logging(level: str, fmt: str, stream: TextIO | None = None) -> None:
    """Send every logger's records to ``stream`` (stderr) in ``fmt``, at ``level``."""
    if fmt not in FORMATS:
        raise ValueError(f"log_format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    handler.addFilter(SecretFilter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
