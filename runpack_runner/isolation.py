"""Each job in a process of its own: the runner's side.

A handler that is not declared ``in_process`` runs in a child process forked from
multiprocessing's fork server (started once per runner, with the handler modules
preloaded, so a job's process starts in milliseconds and shares nothing with the
runner but what it is sent). A worker thread of the runner starts it and follows
it: it applies the child's progress and console to the job's context, logs what
the child logs, uploads the folders it asks for, polls its memory (resident set,
from ``/proc``) against the job's limit, and, when the process ends, settles the
run with its result or with how it ended.

Stopping a run (cancel, time limit, shutdown) sends the child a cancel and
SIGTERM, which ends its handler at once (``SystemExit`` in its thread); the
runner SIGKILLs it if it is still there after its stop grace. A crash (a signal,
``os.abort()``, a segfault) or a process over its memory limit fails the job
alone with one clear line; the runner and its other slots go on.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from multiprocessing import forkserver
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import orjson

from runpack_runner.child import ChildJob, main
from runpack_runner.context import Cancelled, JobContext, RetryLater
from runpack_runner.failures import HandlerFailed, ProcessEnded, RunFailed, one_line
from runpack_runner.workers import WORKERS

log = logging.getLogger("runpack_runner.runner")

CONTEXT = multiprocessing.get_context("forkserver")
#: How often a job's resident memory is read (a run over its limit may exceed it
#: for this long).
MEMORY_POLL = 0.1
#: How long a process that closed its pipe may take to exit before it is killed.
EXIT_WAIT = 5.0
MIB = 1024 * 1024
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

#: ``settle(value, error)``, from the following thread: the run's outcome.
Settle = Callable[[Any, BaseException | None], None]


def prepare(modules: Iterable[str] = ()) -> None:
    """Preload ``modules`` (the handlers') in the fork server and start it; blocks
    (call it from a thread). Jobs started before it is up wait for it."""
    CONTEXT.set_forkserver_preload(["runpack_runner.child", *modules])
    forkserver.ensure_running()


def resident_bytes(pid: int) -> int | None:
    """The resident set size of process ``pid``, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


class ChildRun:
    """One job's process, followed from a worker thread of the runner."""

    def __init__(
        self,
        job: ChildJob,
        ctx: JobContext,
        settle: Settle,
        memory_limit: int | None = None,
    ) -> None:
        self.job = job
        self.ctx = ctx
        #: MiB of resident memory the process may use (None: no limit).
        self.memory_limit = memory_limit
        self._settle_run = settle
        self._settled = False
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._process: Any = None  # a multiprocessing Process, once started
        self._conn: Connection | None = None
        self._stop_reason: str | None = None
        self._exited = False
        self._over_memory = False

    @property
    def pid(self) -> int | None:
        process = self._process
        return None if process is None else process.pid

    # --- from the event loop ---------------------------------------------------------------
    def stop(self, reason: str) -> None:
        """Tell the handler to stop (a cancel, then SIGTERM); the first reason wins."""
        with self._lock:
            if self._stop_reason is None:
                self._stop_reason = reason
            started = self._process is not None and not self._exited
        if started:
            self._signal_stop()

    def kill(self) -> bool:
        """SIGKILL the process (it outlived its stop grace); False if it was gone."""
        return self._signal(signal.SIGKILL)

    # --- the following thread ----------------------------------------------------------------
    def follow(self) -> None:
        """Start the process and follow it to its end (in a worker thread)."""
        parent, child = CONTEXT.Pipe()
        process = CONTEXT.Process(
            target=main, args=(child, self.job), name=f"job-{self.job.job_id}", daemon=True
        )
        try:
            process.start()
        except Exception as exc:
            log.error("job %s: its process could not start", self.job.job_id, exc_info=exc)
            parent.close()
            self._settle(None, ProcessEnded(f"its process could not start: {one_line(exc)}"))
            return
        finally:
            child.close()
        with self._lock:
            self._process, self._conn = process, parent
            stopping = self._stop_reason is not None
        if stopping:
            self._signal_stop()
        try:
            self._read(parent, process)
        finally:
            process.join(EXIT_WAIT)
            if process.exitcode is None:
                self._signal(signal.SIGKILL)
                process.join()
            with self._lock:
                self._exited = True
            parent.close()
        self._settle(None, ProcessEnded(self._how_it_ended(process.exitcode)))
        process.close()

    def _read(self, conn: Connection, process: Any) -> None:
        checked = 0.0
        while True:
            ready = wait([conn, process.sentinel], timeout=MEMORY_POLL)
            if conn in ready:
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    return
                self._take(message)
            elif ready:  # the process ended: take what it sent before it did
                while conn.poll(0):
                    try:
                        self._take(conn.recv())
                    except (EOFError, OSError):
                        break
                return
            if self.memory_limit is not None and time.monotonic() - checked >= MEMORY_POLL:
                checked = time.monotonic()
                self._check_memory(process.pid)

    def _check_memory(self, pid: int) -> None:
        assert self.memory_limit is not None
        used = resident_bytes(pid)
        if used is not None and used > self.memory_limit * MIB and not self._over_memory:
            self._over_memory = True
            log.warning(
                "job %s: its process uses %d MiB, more than its %d MiB: killed",
                self.job.job_id,
                used // MIB,
                self.memory_limit,
            )
            self._signal(signal.SIGKILL)

    def _take(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "change":
            self.ctx.apply(message[1])
        elif kind == "log":
            _, level, name, text = message
            logging.getLogger(str(name)).log(int(level), "job %s: %s", self.job.job_id, text)
        elif kind == "upload":
            n, folder = message[1], Path(message[2])
            WORKERS.submit(lambda: self._upload(n, folder))
        elif kind == "result":
            self._settle(orjson.loads(message[1]), None)
        elif kind == "bad_result":
            self._settle(None, RunFailed(str(message[1])))
        elif kind == "error":
            self._settle(None, _exception(*message[1:]))

    def _upload(self, n: int, folder: Path) -> None:
        reply: tuple[Any, ...]
        try:
            reply = ("uploaded", n, self.ctx.upload_folder(folder))
        except Cancelled as exc:
            reply = ("upload_failed", n, "cancelled", str(exc))
        except RetryLater as exc:
            reply = ("upload_failed", n, "retry", str(exc))
        except Exception as exc:
            reply = ("upload_failed", n, "failed", one_line(exc))
        self._send(reply)

    def _how_it_ended(self, code: int | None) -> str:
        if self._over_memory:
            return f"the handler's process used more than {self.memory_limit} MiB of memory"
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = str(-code)
            return f"the handler's process died: signal {name}"
        return f"the handler's process exited with code {code} before it finished"

    # --- both --------------------------------------------------------------------------------
    def _settle(self, value: Any, error: BaseException | None) -> None:
        if not self._settled:
            self._settled = True
            self._settle_run(value, error)

    def _send(self, message: tuple[Any, ...]) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            with self._send_lock:
                conn.send(message)
        except (OSError, ValueError):  # the process is gone (or its pipe closed)
            pass

    def _signal_stop(self) -> None:
        self._send(("cancel", self._stop_reason or "stopped"))
        self._signal(signal.SIGTERM)

    def _signal(self, sig: signal.Signals) -> bool:
        with self._lock:
            process = self._process
            if process is None or self._exited or process.pid is None:
                return False
            try:
                os.kill(process.pid, sig)
            except ProcessLookupError:
                return False
            return True


def _exception(kind: str, type_name: str, message: str, trace: str) -> BaseException:
    """A handler's exception, as the child described it."""
    if kind == "invalid":
        return ValueError(message)
    if kind == "cancelled":
        return Cancelled(message)
    if kind == "retry":
        return RetryLater(message)
    return HandlerFailed(type_name, message, trace)
