"""A job's own process: runs one handler and tells the runner everything over a pipe.

Started by :mod:`runpack_runner.isolation` (from multiprocessing's fork server), it
runs the handler in its main thread with a :class:`JobContext` that mirrors every
change (progress, console) to the runner, and a thread that listens to the runner:
a cancel sets the context's flag, an answer to an upload wakes the handler. Uploads
go through the runner (it holds the connection to the server). SIGTERM stops the
handler (``SystemExit`` in its thread); the runner SIGKILLs it after its stop grace.
The process exits as soon as its result is sent, whatever threads the handler left,
and at once if the runner goes away (its end of the pipe closes).

Messages, child → runner: ``("change", change)`` (see ``JobContext.apply``),
``("log", level, logger, text)``, ``("upload", n, folder)``, and last
``("result", json)``, ``("bad_result", text)`` or ``("error", kind, type, message,
traceback)``. Runner → child: ``("cancel", reason)``, ``("uploaded", n, url)``,
``("upload_failed", n, kind, message)``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import Any

import orjson

from runpack import netrules
from runpack_runner.context import Cancelled, JobContext
from runpack_runner.failures import one_line, retry_later
from runpack_runner.handler import JobHandler
from runpack_runner.uploads import UploadFailed, UploadRetryable

#: How often a handler waiting for an upload checks whether its job was stopped.
POLL = 0.25


@dataclass(frozen=True, slots=True)
class ChildJob:
    """What a job's process needs: the job, its handler and the runner's rules."""

    job_id: str
    job_type: str
    attempt: int
    input_params: dict[str, Any]
    handler: JobHandler
    allow_private_urls: bool
    max_console_bytes: int
    log_level: int


class Link:
    """The child's end of the pipe: sends from any thread, listens in one."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._send_lock = threading.Lock()
        self._uploads: dict[int, tuple[threading.Event, list[tuple[Any, ...]]]] = {}
        self._count = 0
        self._lock = threading.Lock()

    def send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            self.conn.send(message)

    def change(self, change: tuple[Any, ...]) -> None:
        self.send(("change", change))

    def listen(self, ctx: JobContext) -> None:
        """Until the runner's end closes (it is gone: so is this process)."""
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                os._exit(1)
            kind = message[0]
            if kind == "cancel":
                ctx.cancel(str(message[1]))
            elif kind in ("uploaded", "upload_failed"):
                with self._lock:
                    waiting = self._uploads.get(message[1])
                if waiting is not None:
                    waiting[1].append(message)
                    waiting[0].set()

    def upload(self, ctx: JobContext, folder: Path) -> str:
        """``ctx.upload_folder`` in the job's process: the runner uploads, we wait."""
        ctx.check_cancelled()
        done = threading.Event()
        answer: list[tuple[Any, ...]] = []
        with self._lock:
            self._count += 1
            n = self._count
            self._uploads[n] = (done, answer)
        try:
            self.send(("upload", n, str(folder)))
            while not done.wait(POLL):
                ctx.check_cancelled()
        finally:
            with self._lock:
                del self._uploads[n]
        message = answer[0]
        if message[0] == "uploaded":
            return str(message[2])
        kind, text = message[2], str(message[3])
        if kind == "cancelled":
            raise Cancelled(text)
        if kind == "retry":
            raise UploadRetryable(text)
        raise UploadFailed(text)


class ForwardLogs(logging.Handler):
    """Log records of the job's process, sent to the runner's log."""

    def __init__(self, link: Link) -> None:
        super().__init__()
        self.link = link

    def emit(self, record: logging.LogRecord) -> None:
        # The runner is gone, or the message cannot be sent: no log.
        with contextlib.suppress(Exception):
            self.link.send(("log", record.levelno, record.name, record.getMessage()))


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(f"stopped by signal {signal.Signals(signum).name}")


def main(conn: Connection, job: ChildJob) -> None:
    """The job process's entry point: run the handler, send the outcome, exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the runner's
    signal.signal(signal.SIGTERM, _stop)
    link = Link(conn)
    root = logging.getLogger()
    root.handlers[:] = [ForwardLogs(link)]
    root.setLevel(job.log_level)
    ctx = JobContext(
        job.job_id,
        job.job_type,
        job.attempt,
        max_console_bytes=job.max_console_bytes,
        mirror=link.change,
    )
    ctx.allow_private_urls = job.allow_private_urls
    ctx.uploader = link.upload
    threading.Thread(target=link.listen, args=(ctx,), name="runner-link", daemon=True).start()
    netrules.guard_process(job.allow_private_urls)
    try:
        outcome = _outcome(job.handler.execute(job.input_params, ctx), ctx)
    except BaseException as exc:  # the job's error, never lost
        outcome = _error(exc)
    try:
        link.send(outcome)
    finally:
        os._exit(0)  # threads the handler left behind end with the process


def _outcome(value: Any, ctx: JobContext) -> tuple[Any, ...]:
    if not isinstance(value, dict):
        return ("bad_result", f"the handler returned {type(value).__name__}, not a dict")
    output = dict(value)
    console = output.pop("console_output", None)  # the original's handlers return it
    if isinstance(console, str) and console:
        ctx.set_console(console)
    try:
        return ("result", orjson.dumps(output, option=orjson.OPT_SERIALIZE_NUMPY))
    except TypeError as exc:
        return ("bad_result", f"the result is not JSON: {exc}")


def _error(exc: BaseException) -> tuple[Any, ...]:
    if isinstance(exc, ValueError):
        kind = "invalid"
    elif isinstance(exc, Cancelled):
        kind = "cancelled"
    elif retry_later(exc) is not None:
        kind = "retry"
    else:
        kind = "failed"
    if kind == "retry":
        retry = retry_later(exc)
        text = str(retry) or type(retry).__name__
    elif kind == "failed":
        text = " ".join(str(exc).split())
    else:
        text = one_line(exc)
    trace = "".join(traceback.format_exception(exc)) if kind == "failed" else ""
    return ("error", kind, type(exc).__name__, text, trace)
