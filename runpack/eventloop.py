"""Which asyncio event loop the server, the runner and the bench run on.

uvloop (libuv, from the makers of asyncpg) moves bytes between sockets and
coroutines with less Python in between than asyncio's own loop, and every job
crosses several sockets. ``auto`` takes it where it is installed (it is a
dependency on Linux and macOS) and asyncio's loop elsewhere; ``asyncio`` and
``uvloop`` choose one (``uvloop`` fails clearly when it is missing). And how the
tasks started on it end: :func:`cancel_and_wait`.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

T = TypeVar("T")
CHOICES = ("auto", "uvloop", "asyncio")
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_factory(choice: str = "auto") -> LoopFactory:
    """How to make a new loop for ``choice``; ValueError for an unknown or missing one."""
    if choice not in CHOICES:
        raise ValueError(f"event_loop must be one of {', '.join(CHOICES)}, not {choice!r}")
    if choice == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ValueError("event_loop is uvloop but uvloop is not installed") from None
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio``: what a running loop is, for logs and metrics."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def run(main: Coroutine[Any, Any, T], choice: str = "auto") -> T:
    """``asyncio.run(main)`` on the chosen loop."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)


#: Allocations between young-generation collections (Python's default is 700).
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """Less time in the cycle collector for a long-running daemon, called once its
    modules are imported: what exists now is kept out of every later collection
    (``gc.freeze``), and the young generation is collected every 10,000
    allocations instead of 700. A request allocates hundreds of short-lived
    objects, nearly all freed by reference counting, so the default threshold made
    the collector run every few requests to find almost nothing."""
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any] | None]) -> None:
    """Cancel ``tasks`` (None stands for a task never started) and wait until each has
    ended; what they raise is dropped, as their owner is closing."""
    started = [task for task in tasks if task is not None]
    for task in started:
        task.cancel()
    await asyncio.gather(*started, return_exceptions=True)
