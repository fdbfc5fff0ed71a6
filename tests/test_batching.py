"""The Batcher: calls of one turn of the event loop, and those made while a batch is
on its way, go to the database as one statement."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from runpack.errors import StoreError
from runpack.store.batching import Batcher


class Recorder:
    """A ``run`` that records each batch and waits until the test lets it answer."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()
        self.fail_with: Exception | None = None

    async def __call__(self, args: Sequence[int]) -> list[int]:
        self.batches.append(list(args))
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return [arg * 10 for arg in args]


async def test_calls_of_one_turn_go_together_and_answer_in_order() -> None:
    run = Recorder()
    batcher = Batcher(run)
    assert await asyncio.gather(*(batcher(i) for i in range(5))) == [0, 10, 20, 30, 40]
    assert run.batches == [[0, 1, 2, 3, 4]]
    assert await batcher(7) == 70  # alone, when nothing else is waiting
    assert run.batches[-1] == [7]


async def test_calls_made_while_a_batch_is_on_its_way_go_in_the_next() -> None:
    run = Recorder()
    run.gate = asyncio.Event()
    batcher = Batcher(run)
    first = asyncio.ensure_future(batcher(1))
    await run.started.wait()
    later = [asyncio.ensure_future(batcher(i)) for i in (2, 3, 4)]
    await asyncio.sleep(0)  # a turn of the loop: nothing may be sent while one is out
    assert run.batches == [[1]]
    run.gate.set()
    assert await first == 10
    assert await asyncio.gather(*later) == [20, 30, 40]
    assert run.batches == [[1], [2, 3, 4]]


async def test_a_limit_splits_a_batch() -> None:
    run = Recorder()
    batcher = Batcher(run, limit=2)
    assert await asyncio.gather(*(batcher(i) for i in range(5))) == [0, 10, 20, 30, 40]
    assert run.batches == [[0, 1], [2, 3], [4]]


async def test_an_error_reaches_every_call_of_its_batch_only() -> None:
    run = Recorder()
    batcher = Batcher(run)
    run.fail_with = StoreError(details="database gone")
    results = await asyncio.gather(batcher(1), batcher(2), return_exceptions=True)
    assert all(isinstance(r, StoreError) for r in results)
    run.fail_with = None
    assert await batcher(3) == 30


async def test_a_cancelled_caller_leaves_the_others_answered() -> None:
    run = Recorder()
    run.gate = asyncio.Event()
    batcher = Batcher(run)
    calls = [asyncio.ensure_future(batcher(i)) for i in (1, 2, 3)]
    await run.started.wait()
    calls[1].cancel()
    run.gate.set()
    assert await calls[0] == 10 and await calls[2] == 30
    with pytest.raises(asyncio.CancelledError):
        await calls[1]
    assert run.batches == [[1, 2, 3]]  # its call was already on its way


async def test_drain_waits_for_every_call_made_so_far() -> None:
    run = Recorder()
    run.gate = asyncio.Event()
    batcher = Batcher(run)
    calls = [asyncio.ensure_future(batcher(i)) for i in (1, 2)]
    await run.started.wait()
    calls.append(asyncio.ensure_future(batcher(3)))
    await asyncio.sleep(0)
    drained = asyncio.ensure_future(batcher.drain())
    await asyncio.sleep(0)
    assert not drained.done()
    run.gate.set()
    await drained
    assert all(call.done() for call in calls)
    assert run.batches == [[1, 2], [3]]
