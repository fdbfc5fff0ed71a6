"""What a running handler sees: progress, console lines, cancellation.

A handler runs in its own thread (of a process of its own, usually); the runner
reads the context from the event loop. Everything here is thread-safe. In a
job's process, a context *mirrors* every change (``mirror``) to the runner's
context of the same job, which :meth:`JobContext.apply` s it. A :class:`JobContext` is also the
original's ``heartbeat_callback``: calling it with ``progress_current``,
``progress_total`` and ``console_output`` records them, and raises
:class:`Cancelled` once the job was cancelled, so handlers written for the
original stop too.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from runpack import netrules
from runpack.protocol import MAX_CONSOLE_BYTES

log = logging.getLogger(__name__)

TRIMMED = "[… earlier console output trimmed]\n"


class Cancelled(Exception):
    """The job was stopped: cancelled by the server, timed out, or released at shutdown."""


class RetryLater(Exception):
    """The job could not finish for a reason outside it (the server could not store its
    files, the network failed): the server queues it again, with backoff, while it has
    attempts left. Raise it (or an exception caused by it) from a handler."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A consistent view of a job's reportable state."""

    progress_current: int | None
    progress_total: int | None
    console: str
    #: Changes when the console was replaced or trimmed (not a pure append).
    epoch: int
    #: Changes on every update.
    version: int


class JobContext:
    """Progress, console and cancellation of one job (the handler's side)."""

    def __init__(
        self,
        job_id: str = "local",
        job_type: str = "",
        attempt: int = 1,
        *,
        notify: Callable[[], None] | None = None,
        max_console_bytes: int = MAX_CONSOLE_BYTES,
        mirror: Callable[[tuple[Any, ...]], None] | None = None,
    ) -> None:
        self.job_id = job_id
        self.job_type = job_type
        self.attempt = attempt
        self._notify = notify
        #: Told every change, as a tuple that :meth:`apply` takes.
        self._mirror = mirror
        self._max_console = max_console_bytes
        self._lock = threading.Lock()
        self._stopped = False
        #: Made by the first wait() only: most handlers never wait, and an Event is costly.
        self._wakeup: threading.Event | None = None
        self._reason: str | None = None
        self._current: int | None = None
        self._total: int | None = None
        self._chunks: list[str] = []
        self._bytes = 0
        self._epoch = 0
        self._version = 0
        #: Sends a folder to the server and returns its URL (set by the runner).
        self.uploader: Callable[[JobContext, Path], str] | None = None
        #: Whether the handler may fetch URLs on private addresses (the runner's
        #: ``allow_private_urls``); the runner runs the handler under that rule.
        self.allow_private_urls = False
        #: The runner that runs the job: its id and name (set by the runner for a
        #: handler in its own process; the container job type labels containers so).
        self.runner_id: str | None = None
        self.runner_name = ""

    # --- cancellation -------------------------------------------------------------
    @property
    def cancelled(self) -> bool:
        """True once the job should stop; a handler returns or raises soon after."""
        return self._stopped

    @property
    def cancel_reason(self) -> str | None:
        return self._reason

    def cancel(self, reason: str = "cancelled") -> None:
        """Ask the handler to stop (the runner calls this; thread-safe)."""
        with self._lock:
            if self._reason is None:
                self._reason = reason
            self._stopped = True
            wakeup = self._wakeup
        if wakeup is not None:
            wakeup.set()

    def check_cancelled(self) -> None:
        """Raise :class:`Cancelled` if the job should stop."""
        if self._stopped:
            raise Cancelled(self._reason or "cancelled")

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking at once on cancel; True if cancelled."""
        with self._lock:
            if self._stopped:
                return True
            if self._wakeup is None:
                self._wakeup = threading.Event()
            wakeup = self._wakeup
        return wakeup.wait(max(seconds, 0.0))

    # --- reporting ----------------------------------------------------------------
    def progress(self, current: int | float, total: int | float | None = None) -> None:
        """Report progress (``total`` unchanged when None); raises Cancelled if cancelled."""
        self._set_progress(int(current), None if total is None else int(total))
        self.check_cancelled()

    def _set_progress(self, current: int | None, total: int | None) -> None:
        with self._lock:
            if current is not None:
                self._current = current
            if total is not None:
                self._total = total
            self._version += 1
        if self._mirror is not None:
            self._mirror(("progress", current, total))
        self._changed()

    def log(self, line: str) -> None:
        """Append a timestamped line to the job's console (never raises Cancelled)."""
        stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        text = "".join(f"[{stamp}] {part}\n" for part in str(line).splitlines() or [""])
        log.debug("job %s: %s", self.job_id, line)
        self._append(text)

    def _append(self, text: str) -> None:
        with self._lock:
            self._chunks.append(text)
            self._bytes += len(text.encode())
            if self._bytes > self._max_console:
                self._trim()
            self._version += 1
        if self._mirror is not None:
            self._mirror(("append", text))
        self._changed()

    def set_console(self, text: str) -> None:
        """Replace the whole console (what the original's handlers send)."""
        with self._lock:
            self._chunks = [text]
            self._bytes = len(text.encode())
            self._epoch += 1
            if self._bytes > self._max_console:
                self._trim()
            self._version += 1
        if self._mirror is not None:
            self._mirror(("console", text))
        self._changed()

    def apply(self, change: tuple[Any, ...]) -> None:
        """Take a change that a mirroring context (in the job's process) made."""
        kind = change[0]
        if kind == "progress":
            current, total = change[1], change[2]
            self._set_progress(
                current if isinstance(current, int) else None,
                total if isinstance(total, int) else None,
            )
        elif kind == "append" and isinstance(change[1], str):
            self._append(change[1])
        elif kind == "console" and isinstance(change[1], str):
            self.set_console(change[1])

    def __call__(
        self,
        progress_current: int | float | None = None,
        progress_total: int | float | None = None,
        console_output: str | None = None,
    ) -> None:
        """The original's ``heartbeat_callback``: record, then raise Cancelled if cancelled.

        Progress left as None keeps the last reported value; ``console_output``
        replaces the console.
        """
        self._set_progress(
            None if progress_current is None else int(progress_current),
            None if progress_total is None else int(progress_total),
        )
        if console_output is not None:
            self.set_console(console_output)
        self.check_cancelled()

    heartbeat = __call__

    def snapshot(self) -> Snapshot:
        with self._lock:
            if len(self._chunks) > 1:
                self._chunks = ["".join(self._chunks)]
            console = self._chunks[0] if self._chunks else ""
            return Snapshot(self._current, self._total, console, self._epoch, self._version)

    @property
    def console(self) -> str:
        with self._lock:
            if len(self._chunks) > 1:
                self._chunks = ["".join(self._chunks)]
            return self._chunks[0] if self._chunks else ""

    @property
    def reported_progress(self) -> tuple[int | None, int | None]:
        """(progress_current, progress_total) as last reported."""
        with self._lock:
            return self._current, self._total

    # --- URLs named by the job -------------------------------------------------------
    def check_url(self, url: str) -> None:
        """Raise :class:`runpack.netrules.URLNotAllowed` (a ValueError, so the job fails
        with "Invalid parameters: URL not allowed: …") unless ``url`` may be fetched: an
        http(s) URL without credentials whose host resolves only to public addresses
        (any address with ``allow_private_urls``). Call it before opening a URL that a
        submitter named; the runner also refuses, at connect time, every connection the
        handler's thread makes to a private address (redirects included).
        """
        netrules.check_url(url, allow_private=self.allow_private_urls)

    # --- files ----------------------------------------------------------------------
    def upload_folder(self, folder: str | os.PathLike[str]) -> str:
        """Send a folder (a saved figpack figure) to the server; the URL it is served at.

        Blocks until the server has every file, so call it before returning the
        result that names the URL. Raises Cancelled if the job is stopped meanwhile,
        and RuntimeError if the server refuses the files or cannot be reached.
        """
        if self.uploader is None:
            raise RuntimeError("this job runs without a server to upload files to")
        return self.uploader(self, Path(folder))

    # --- internals ----------------------------------------------------------------
    def _trim(self) -> None:
        """Keep the newest three quarters of the limit (lock held)."""
        data = "".join(self._chunks).encode()
        keep = data[-(self._max_console * 3 // 4) :].decode(errors="ignore")
        text = TRIMMED + keep
        self._chunks = [text]
        self._bytes = len(text.encode())
        self._epoch += 1

    def _changed(self) -> None:
        if self._notify is not None:
            self._notify()
