"""The runner's background tasks: each named, owned until done, its failure logged."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from runpack.eventloop import cancel_and_wait

#: The runner's logger: its lines name one source whichever module writes them.
log = logging.getLogger("runpack_runner.runner")


class TaskSet:
    """Tasks started for the runner; none is lost, and all end with it."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    async def cancel_all(self) -> None:
        await cancel_and_wait(list(self._tasks))
