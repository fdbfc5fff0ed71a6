"""Daemon worker threads of the runner: handlers that run in-process, and the threads
that follow each job's process (see :mod:`runpack_runner.isolation`).

Daemon threads (not the default executor), so the event loop keeps sending
heartbeats while one blocks, and a thread that never returns can never keep the
runner from exiting. Idle workers are reused: starting a thread per job would
stall the event loop under load.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable


class Workers:
    """Daemon threads that run calls; grows when every worker is busy, never waits.

    Each worker has its own inbox; an idle one waits on it, listed in ``_idle``
    (a deque: its append and pop are atomic). Handing a call over takes no lock,
    so the event loop never waits for a worker thread that holds one.
    """

    def __init__(self) -> None:
        self._idle: deque[queue.SimpleQueue[Callable[[], None]]] = deque()
        self._lock = threading.Lock()  # only to name new workers
        self._count = 0

    def submit(self, fn: Callable[[], None]) -> None:
        try:
            inbox = self._idle.pop()  # the latest idle worker: its stack is still warm
        except IndexError:
            inbox = queue.SimpleQueue()
            with self._lock:
                self._count += 1
                name = f"job-worker-{self._count}"
            threading.Thread(target=self._work, args=(inbox,), name=name, daemon=True).start()
        inbox.put(fn)

    def _work(self, inbox: queue.SimpleQueue[Callable[[], None]]) -> None:
        while True:
            inbox.get()()
            self._idle.append(inbox)


WORKERS = Workers()
