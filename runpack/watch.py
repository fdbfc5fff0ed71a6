"""Live job events for watchers (browsers, curl, the Python client, the dashboard).

Every job has a channel: a short buffer of recent events and its watchers. Each
event gets a sequence number from one counter shared by all channels, so a
number never means two things, even for a channel that was evicted and made
anew. Each watcher has a bounded queue; one that falls behind is dropped (its
connection is closed at once, never waited for) and catches up on reconnect
from the buffer, or from a fresh snapshot when the buffer no longer reaches back
that far. The admin channel carries every job's events.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runpack.notify import EventKind, Notifier, ServerEvent
from runpack.protocol import FINAL, JobStatus

WATCH_QUEUE = 256
BUFFER = 512
MAX_CHANNELS = 10_000
#: Jobs remembered as in progress (for telling heartbeats from a start).
MAX_RUNNING = 100_000
ADMIN = "*"
#: Internal event: the stream sends the job as it is now (a ``snapshot``) instead.
REFRESH = "refresh"

#: One event as watchers see it: (sequence number, event type, data).
Item = tuple[int, str, dict[str, Any]]


class Watcher:
    """One stream's queue of events: at most ``WATCH_QUEUE``, then it is dropped.

    Thousands of watchers may idle at once, so an empty queue is no object at all,
    and the stream waits for the next event on a future made only while it waits.
    """

    __slots__ = ("_items", "_waiter", "dropped", "on_drop", "statuses")

    def __init__(self, statuses: frozenset[str] | None = None) -> None:
        #: Events not taken yet, oldest first, and None to end the stream (None if none).
        self._items: deque[Item | None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.dropped = False
        #: Called once when the watcher is dropped: closes its connection, so a stream
        #: stuck writing to a client that does not read ends too.
        self.on_drop: Callable[[], None] | None = None
        #: Only ``status`` events with one of these statuses (and the stream's own
        #: ``reset``) are queued; None: every event.
        self.statuses = statuses

    def offer(self, item: Item) -> None:
        if self.dropped:
            return
        if self.statuses is not None and not self.wants(item):
            return
        if self._items is None:
            self._items = deque()
        elif len(self._items) >= WATCH_QUEUE:
            self.drop()
            return
        self._items.append(item)
        self._wake()

    def wants(self, item: Item) -> bool:
        """Whether ``item`` passes the status filter (every item does without one)."""
        if self.statuses is None:
            return True
        _, kind, data = item
        if kind == "status":
            return data.get("status") in self.statuses
        return kind == "reset"

    def drop(self) -> None:
        """Too slow: end its stream now; it resumes from the buffer on reconnect."""
        if self.dropped:
            return
        self.dropped = True
        self._items = deque([None])  # what was queued is not sent
        self._wake()
        if self.on_drop is not None:
            self.on_drop()

    def end(self, item: Item) -> None:
        """Send ``item`` last, then end the stream (the server is shutting down)."""
        if self.dropped:
            return
        self.dropped = True
        if self._items is None or len(self._items) > WATCH_QUEUE - 2:
            self._items = deque()  # no room for both: what was queued is not sent
        self._items.extend((item, None))
        self._wake()

    async def wait(self) -> None:
        """Until something is queued."""
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def take(self, most: int) -> list[Item | None]:
        """Up to ``most`` of the queued events, oldest first (None: the stream ends)."""
        items = self._items
        if not items:
            return []
        if len(items) <= most:
            self._items = None
            return list(items)
        return [items.popleft() for _ in range(most)]

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class SequenceCounter:
    """Sequence numbers, one counter for every channel of a hub."""

    def __init__(self) -> None:
        self.last = 0

    def next(self) -> int:
        self.last += 1
        return self.last


@dataclass(eq=False)
class Channel:
    #: Hands out sequence numbers (shared by all the channels of a hub).
    counter: SequenceCounter = field(default_factory=SequenceCounter)
    #: The counter's value when this channel was made: it knows nothing before that.
    created_at: int = 0
    #: The number of its last event (``created_at`` before the first).
    seq: int = 0
    buffer: deque[Item] = field(default_factory=lambda: deque(maxlen=BUFFER))
    #: The number of the newest event that fell out of the buffer.
    forgotten: int = 0
    watchers: set[Watcher] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.seq = max(self.seq, self.created_at)

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        self.seq = self.counter.next()
        item = (self.seq, kind, data)
        if len(self.buffer) == self.buffer.maxlen:
            self.forgotten = self.buffer[0][0]
        self.buffer.append(item)
        for watcher in list(self.watchers):
            watcher.offer(item)

    def since(self, seq: int) -> list[Item] | None:
        """Events after ``seq``, or None if this channel cannot tell them all."""
        if seq > self.seq or seq < self.created_at or seq < self.forgotten:
            return None
        return [item for item in self.buffer if item[0] > seq]


def translate(event: ServerEvent) -> list[tuple[str, dict[str, Any]]]:
    """A service event as the events a watcher sees."""
    data = event.data
    if event.type == EventKind.JOB_QUEUED:
        queued = {"status": JobStatus.PENDING.value}
        if data.get("note"):  # a lost attempt: its story, which a completed job drops
            queued["note"] = data["note"]
        return [("status", queued)]
    if event.type == EventKind.JOB_DELETED:
        return [("status", {"status": "deleted"})]
    if event.type != EventKind.JOB_UPDATED:
        return []
    status = data.get("status")
    out: list[tuple[str, dict[str, Any]]] = []
    if status == JobStatus.IN_PROGRESS:
        if data.get("progress_current") is not None or data.get("progress_total") is not None:
            out.append(
                ("progress", {"current": data["progress_current"], "total": data["progress_total"]})
            )
        if data.get("console_output") is not None:
            out.append(("console", {"replace": data["console_output"]}))
        if data.get("console_append"):
            out.append(("console", {"append": data["console_append"]}))
    elif status in (JobStatus.COMPLETED, JobStatus.FAILED) and data.get("console_output"):
        # The runner's final console: the lines printed since its last heartbeat too.
        out.append(("console", {"replace": data["console_output"]}))
    body: dict[str, Any] = {"status": status}
    if status == JobStatus.COMPLETED:
        body["result"] = {"output_data": data.get("output_data") or {}}
    elif status in (JobStatus.FAILED, JobStatus.CANCELLED):
        body["error"] = data.get("error_message") or data.get("reason") or "Unknown error"
    elif status == JobStatus.CLAIMED:
        body["runner_id"] = data.get("runner_id")
    out.append(("status", body))
    return out


class WatchHub:
    def __init__(self, notifier: Notifier, clock: Callable[[], float] = time.monotonic) -> None:
        #: Sequence numbers are valid only with this epoch (it changes on restart).
        self.epoch = uuid.uuid4().hex[:8]
        self.counter = SequenceCounter()
        self.channels: OrderedDict[str, Channel] = OrderedDict()
        self.admin = Channel(self.counter)
        self.clock = clock
        self.closed = False
        #: Jobs whose last status was in_progress: a heartbeat does not say it again.
        self._running: set[str] = set()
        self._unsubscribe = notifier.subscribe(self.on_event)

    def close(self) -> None:
        """End every stream with a ``closing`` event (the server is shutting down);
        a stream opened after this ends at once. Closing again does nothing."""
        if self.closed:
            return
        self.closed = True
        self._unsubscribe()
        for channel in [self.admin, *self.channels.values()]:
            for watcher in channel.watchers:
                watcher.end((channel.seq, "closing", {}))

    def channel(self, job_id: str) -> Channel:
        channel = self.channels.get(job_id)
        if channel is None:
            last = self.counter.last
            channel = self.channels[job_id] = Channel(self.counter, created_at=last)
            if len(self.channels) > MAX_CHANNELS:
                self._evict()
        else:
            self.channels.move_to_end(job_id)
        return channel

    def _evict(self) -> None:
        for job_id, channel in list(self.channels.items()):
            if len(self.channels) <= MAX_CHANNELS * 0.9:
                break
            if not channel.watchers:
                del self.channels[job_id]

    def on_event(self, event: ServerEvent) -> None:
        if event.job_id is None:
            if event.type == EventKind.RESYNC and event.data.get("reconnected"):
                self.resync()
            elif event.type.startswith("runner_"):  # e.g. runner_attached: for the dashboard
                self.admin.emit("runner", {"change": event.type[7:], **event.data})
            return
        items = translate(event)
        if not items:
            return
        job_id = event.job_id
        # A job nobody watches has no channel: a stream opened later starts with a
        # snapshot anyway, so its events would only be buffered for nothing.
        channel = self.channels.get(job_id)
        if channel is not None:
            self.channels.move_to_end(job_id)
        running = self._running
        for kind, data in items:
            if kind == "status":
                status = data["status"]
                if status == JobStatus.IN_PROGRESS:
                    if job_id in running:
                        continue  # a heartbeat: progress and console already say it
                    if len(running) >= MAX_RUNNING:
                        running.clear()  # at worst one in_progress event said twice
                    running.add(job_id)
                else:
                    running.discard(job_id)
            if channel is not None:
                channel.emit(kind, data)
            self.admin.emit(kind, {"job_id": job_id, **data})

    def resync(self) -> None:
        """Events from other instances may have been missed (LISTEN was re-opened).

        Every job stream gets a ``refresh``, which its pump answers with a fresh
        snapshot, and the dashboard a ``reset``; a client resuming from an
        event before this one gets a snapshot too.
        """
        for channel in [*self.channels.values(), self.admin]:
            channel.forgotten = channel.seq
        for channel in self.channels.values():
            if channel.watchers:
                channel.emit(REFRESH, {})
        self.admin.emit("reset", {"watchers": self.watcher_count()})

    def watch(self, channel: Channel, statuses: frozenset[str] | None = None) -> Watcher:
        watcher = Watcher(statuses)
        channel.watchers.add(watcher)
        if self.closed:
            watcher.end((channel.seq, "closing", {}))
        return watcher

    def unwatch(self, channel: Channel, watcher: Watcher) -> None:
        channel.watchers.discard(watcher)

    def watcher_count(self) -> int:
        return len(self.admin.watchers) + sum(len(c.watchers) for c in self.channels.values())


def is_final(data: dict[str, Any]) -> bool:
    return data.get("status") in (*FINAL, "deleted")
