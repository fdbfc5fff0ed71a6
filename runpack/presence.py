"""This instance among those on one database: its row in ``instances``, the runners it
holds recorded in ``runners``, and rebalancing.

Every instance writes which runners' sockets it holds when they connect (and, each
tick, those that left), so the admin views answer the same from every instance. Each
tick (``RUNPACK_PRESENCE_INTERVAL``) it also refreshes its own row; an instance whose
row is not refreshed for three ticks counts as gone, and the runners
recorded on it as not connected.

Rebalancing: after a failover or a rolling restart the runners sit on the instances
that stayed up. An instance that holds far more than its share (the connected runners
over the live instances) closes the sockets of some idle runners (no job held, no
result being stored) with GOING_AWAY; a runner reconnects at once with jitter, and the
balancer (nginx ``least_conn``) sends it to an instance with fewer connections. When
most of the runners sent away come straight back (no balancer in front, or one that
still counts the other instances as down), the next round waits twice as long, up to
:data:`MAX_PAUSE`: a loop costs one reconnect per extra runner per pause at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from runpack.errors import RunpackError
from runpack.eventloop import cancel_and_wait
from runpack.notify import EventKind, ServerEvent
from runpack.store.instances import alive_since

if TYPE_CHECKING:
    from runpack.connections import RunnerConn
    from runpack.hub import Hub
    from runpack.store import Store

log = logging.getLogger(__name__)

#: Rows of instances not seen for this long are deleted (gc reads data_dir from them).
FORGET_AFTER_MS = 7 * 24 * 3600 * 1000
#: The longest wait between rebalancing rounds whose runners keep coming back (s).
MAX_PAUSE = 600.0
#: How often the runners that left are recorded, at most (s); arrivals at once.
SYNC_EVERY = 1.0


def over_share(mine: int, total: int, instances: int) -> int:
    """How many runners to send away: those above an even share, once they are at
    least 2 and at least a tenth of that share."""
    if instances < 2 or total <= 0:
        return 0
    share = math.ceil(total / instances)
    if mine - share < max(2, math.ceil(share / 10)):
        return 0
    return mine - share


class Presence:
    """This instance's presence on the database (started and stopped by the app)."""

    def __init__(
        self,
        store: Store,
        hub: Hub,
        instance: str,
        *,
        host: str,
        data_dir: str,
        interval: float,
        rebalance: bool,
        clock: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.store = store
        self.hub = hub
        self.instance = instance
        self.host = host
        #: Absolute, as runpack gc reads it from anywhere.
        self.data_dir = os.path.abspath(data_dir)
        self.interval = interval
        self.rebalance = rebalance
        self.clock = clock
        #: What the database says this instance holds: runner id → its connection.
        self._recorded: dict[str, RunnerConn] = {}
        #: The runners sent away by the last round, to see if they came back.
        self._sent_away: set[str] = set()
        self._pause = 0.0
        self._next_round = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None

    async def start(self) -> None:
        try:  # so runpack gc, which reads it from our row, finds it even before a figure
            await asyncio.to_thread(os.makedirs, self.data_dir, exist_ok=True)
        except OSError as exc:
            log.warning("cannot create the data directory %s: %s", self.data_dir, exc)
        await self.store.register_instance(self.instance, self.host, self.data_dir, self.clock())
        self._unsubscribe = self.hub.service.notifier.subscribe(
            self._on_event, [EventKind.RUNNER_ATTACHED]
        )
        self._task = asyncio.create_task(self._run(), name="runpack-presence")

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        await cancel_and_wait([self._task])
        try:
            await self.store.stop_instance(self.instance, self.clock())
        except RunpackError as exc:  # the others count us out after a few ticks anyway
            log.warning("could not record this instance as stopped: %s", exc)

    def _on_event(self, event: ServerEvent) -> None:
        if event.type is EventKind.RUNNER_ATTACHED:
            self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time() + self.interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(SYNC_EVERY, self.interval))
            self._wake.clear()
            tick = loop.time() >= next_tick
            if tick:
                next_tick = loop.time() + self.interval
            try:
                await self.sync(everyone=tick)
                if tick:
                    await self.tick()
            except asyncio.CancelledError:
                raise
            except RunpackError as exc:
                log.warning(
                    "presence: %s (%s); trying again in %.1f s",
                    exc.message,
                    exc.details,
                    SYNC_EVERY,
                )
            except Exception:
                log.exception("presence pass failed; trying again in %.1f s", SYNC_EVERY)

    async def sync(self, everyone: bool = False) -> None:
        """Record the runners that connected here and those that left; with
        ``everyone``, write every runner held (another instance may have written over a
        runner that came back here)."""
        conns = dict(self.hub.conns)
        arrived = [c for rid, c in conns.items() if everyone or self._recorded.get(rid) is not c]
        left = [rid for rid in self._recorded if rid not in conns]
        if arrived:
            held = [(c.runner_id, c.transport, c.concurrency) for c in arrived]
            await self.store.hold_runners(self.instance, held)
        if left:
            await self.store.let_go_runners(self.instance, left)
        self._recorded = conns

    async def tick(self) -> None:
        """Refresh this instance's row, tidy up after dead ones, and rebalance."""
        now = self.clock()
        if not await self.store.touch_instance(self.instance, now):
            await self.store.register_instance(self.instance, self.host, self.data_dir, now)
        since = alive_since(now, self.interval)
        await self.store.tidy_instances(since, now - FORGET_AFTER_MS)
        if self.rebalance:
            await self._rebalance(since)

    async def _rebalance(self, since: int) -> None:
        now = asyncio.get_running_loop().time()
        self._judge_last_round()
        if now < self._next_round or self.hub.stopping:
            return
        live = [i.id for i in await self.store.list_instances(since) if i.alive(since)]
        if self.instance not in live:
            return
        counts = await self.store.runners_per_instance(since)
        mine = len(self.hub.conns)
        counts[self.instance] = mine
        total = sum(counts.get(instance, 0) for instance in live)
        excess = over_share(mine, total, len(live))
        if excess <= 0:
            return
        idle = [c for c in self.hub.conns.values() if not c.held and not c.reporting]
        chosen = idle[:excess]
        for conn in chosen:
            conn.close()
        self._sent_away = {conn.runner_id for conn in chosen}
        self._next_round = now + self._pause
        if chosen:
            log.info(
                "rebalancing: %d runners here, %d on %d instances; asked %d idle ones to reconnect",
                mine,
                total,
                len(live),
                len(chosen),
            )

    def _judge_last_round(self) -> None:
        """Runners sent away last round that are back here already: the balancer sends
        them to this instance again (it has no other, or it counts this one as the
        least busy). Wait twice as long before the next round, up to MAX_PAUSE."""
        if not self._sent_away:
            return
        back = sum(1 for rid in self._sent_away if rid in self.hub.conns)
        if 2 * back >= len(self._sent_away):
            self._pause = min(MAX_PAUSE, max(self.interval, 2 * self._pause))
            log.info(
                "rebalancing: %d of %d runners came back here; next round in %.0f s",
                back,
                len(self._sent_away),
                self._pause,
            )
            self._next_round = asyncio.get_running_loop().time() + self._pause
        else:
            self._pause = 0.0
        self._sent_away = set()
