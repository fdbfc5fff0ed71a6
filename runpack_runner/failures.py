"""How a failed run is told: one line for the public, the traceback for the runner's log.

A job's error message and console are public (the keyless job page and event stream
show them), so they get one line: what failed and why, e.g.
``figpack_nwb_raster_plot failed: KeyError: 'units'``. Paths on the runner's
machine (its Python installation, home, temporary and working folders) are
shortened to their last part. The traceback goes to the runner's log only.
"""

from __future__ import annotations

import functools
import os
import re
import site
import sys
import tempfile

from runpack_runner.context import RetryLater

#: Exceptions whose message is written for people: their type adds nothing.
PLAIN = (RuntimeError, Exception)


class HandlerFailed(Exception):
    """A handler's exception, brought from the job's process: its type's name, its
    message and its traceback (for the log)."""

    def __init__(self, type_name: str, message: str, traceback: str = "") -> None:
        super().__init__(message)
        self.type_name = type_name
        self.message = message
        self.traceback = traceback


class RunFailed(Exception):
    """A run that failed for a reason its message tells in full, in public words."""


class ProcessEnded(RunFailed):
    """The job's process ended without a result: it died of a signal, exited, or was
    stopped for using too much memory (the message says which)."""


def one_line(exc: BaseException) -> str:
    """An exception as one line: its message with whitespace runs joined, or its type."""
    return " ".join(str(exc).split()) or type(exc).__name__


def public_line(exc: BaseException) -> str:
    """What a handler's exception says in public: ``Type: message`` on one line (the
    message alone for RuntimeError and Exception), with local paths shortened."""
    if isinstance(exc, HandlerFailed):
        name, message = exc.type_name, " ".join(exc.message.split())
    else:
        name, message = type(exc).__name__, " ".join(str(exc).split())
    if name in {t.__name__ for t in PLAIN}:
        text = message or name
    else:
        text = f"{name}: {message}" if message else name
    return scrub(text)


@functools.cache
def _local_paths() -> re.Pattern[str]:
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, tempfile.gettempdir(), os.getcwd()}
    roots.update(p for p in (*site.getsitepackages(), site.getusersitepackages()) if p)
    roots.add(os.path.expanduser("~"))
    roots.add(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    usable = sorted((r.rstrip("/") for r in roots if r and r != "/"), key=len, reverse=True)
    alternatives = "|".join(re.escape(r) for r in usable)
    return re.compile(rf"(?:{alternatives})(?:/[^\s'\"]*)?")


def scrub(text: str) -> str:
    """``text`` with paths under the runner's local folders cut to their last part."""

    def short(match: re.Match[str]) -> str:
        tail = match.group(0).rstrip("/").rsplit("/", 1)[-1]
        return f"…/{tail}"

    return _local_paths().sub(short, text)


def retry_later(exc: BaseException | None) -> RetryLater | None:
    """The RetryLater that ``exc`` is or was raised from (``raise … from``), if any."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, RetryLater):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__
    return None
