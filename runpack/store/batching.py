"""Calls of one kind sent to the database together, as one statement.

A :class:`Batcher` collects the calls made in one turn of the event loop, and
those made while its previous batch is on its way, and runs them as one
statement: under load, one round trip and one commit serve many requests; an
idle server sends each call on the next turn of the loop, alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

A = TypeVar("A")
R = TypeVar("R")


class Batcher(Generic[A, R]):
    """``await batcher(arg)`` runs ``run([arg, …])`` with whatever else arrived by then.

    ``run`` returns one result per argument, in order; if it raises, every call of
    that batch raises the same error. A caller that is cancelled leaves its call in
    the batch: the statement may already be on its way.
    """

    def __init__(self, run: Callable[[Sequence[A]], Awaitable[Sequence[R]]], limit: int = 256):
        self._run = run
        self._limit = limit
        self._waiting: list[tuple[A, asyncio.Future[R]]] = []
        self._scheduled = False
        self._sending: asyncio.Task[None] | None = None

    async def __call__(self, arg: A) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._waiting.append((arg, future))
        if not self._scheduled and self._sending is None:
            self._scheduled = True
            loop.call_soon(self._send)
        return await future  # a cancelled caller cancels only its own future

    def _send(self) -> None:
        self._scheduled = False
        if self._sending is not None or not self._waiting:
            return
        batch, self._waiting = self._waiting[: self._limit], self._waiting[self._limit :]
        self._sending = asyncio.get_running_loop().create_task(self._send_batch(batch))

    async def _send_batch(self, batch: list[tuple[A, asyncio.Future[R]]]) -> None:
        try:
            results = await self._run([arg for arg, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # every caller of the batch hears of it
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
        finally:
            self._sending = None
            if self._waiting:
                self._send()

    async def drain(self) -> None:
        """Wait until every call made so far has been sent and answered."""
        while self._sending is not None or self._waiting:
            if self._sending is not None:
                await asyncio.wait([self._sending])
            elif self._waiting:
                self._send()
