"""Job events inside one server process, and between instances (PostgreSQL NOTIFY).

The service publishes small events (ids and deltas); the hub, watchers and the
NotifyRelay integration (:mod:`runpack.notify_relay`) subscribe. A subscriber is a
plain callable that must not block: it hands slow work to a task of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from runpack.eventloop import cancel_and_wait
from runpack.store.base import JOB_COLUMNS

log = logging.getLogger(__name__)


class EventKind(StrEnum):
    """Every kind of event the server publishes (and relays between instances)."""

    #: A job was inserted or queued again (``new``: inserted; ``runner_id``: inserted
    #: already claimed for that runner; ``note``: why its last run was lost).
    JOB_QUEUED = "job_queued"
    #: A job changed: ``status`` and the fields that changed with it.
    JOB_UPDATED = "job_updated"
    #: A job was deleted (by an administrator or by retention).
    JOB_DELETED = "job_deleted"
    #: Retention cleared a finished job's console output.
    JOB_CONSOLE_CLEARED = "job_console_cleared"
    #: A runner connected over WebSocket to some instance.
    RUNNER_ATTACHED = "runner_attached"
    #: This instance may have missed events (LISTEN reconnected): re-read what matters.
    RESYNC = "resync"
    #: A job type's version changed (runpack.handler_versions): read them again.
    JOB_TYPE_VERSIONS = "job_type_versions"


KINDS = frozenset(EventKind)


@dataclass(frozen=True, slots=True)
class ServerEvent:
    type: EventKind
    job_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    #: The server instance it came from over LISTEN/NOTIFY; None when it is local.
    origin: str | None = None


Subscriber = Callable[[ServerEvent], None]


class Notifier:
    """Fan-out of events to the subscribers of this process.

    A subscriber may name the kinds of event it wants: it is then called for those
    only (and publishing skips it for the others, at no cost). Each kind's subscribers,
    in the order they subscribed, are kept ready as a tuple, made again when one
    subscribes or leaves, so publishing only looks them up.
    """

    def __init__(self) -> None:
        #: (callback, the kinds it wants or None for all), in the order they came.
        self._subscribers: list[tuple[Subscriber, frozenset[EventKind] | None]] = []
        #: Event kind (its value) -> the callbacks that want it, in order.
        self._by_kind: dict[str, tuple[Subscriber, ...]] = {}
        #: Those that want every kind (an unknown kind goes to them).
        self._all: tuple[Subscriber, ...] = ()

    def subscribe(
        self, callback: Subscriber, kinds: Iterable[EventKind] | None = None
    ) -> Callable[[], None]:
        """Call ``callback`` for every event published (or those of ``kinds`` only);
        the function returned unsubscribes it."""
        entry = (callback, frozenset(kinds) if kinds is not None else None)
        self._subscribers.append(entry)
        self._index()

        def unsubscribe() -> None:
            self._subscribers.remove(entry)
            self._index()

        return unsubscribe

    def _index(self) -> None:
        self._by_kind = {
            kind.value: tuple(c for c, kinds in self._subscribers if kinds is None or kind in kinds)
            for kind in EventKind
        }
        self._all = tuple(c for c, kinds in self._subscribers if kinds is None)

    def publish(self, event: ServerEvent) -> None:
        # By the kind's value: hashing an enum member is a Python call, a str's is not.
        kind = getattr(event.type, "_value_", event.type)
        for callback in self._by_kind.get(kind, self._all):
            try:
                callback(event)
            except Exception:
                log.exception("event subscriber %r failed on %s", callback, event.type)


CHANNEL = "runpack_events"
#: A batch of payloads in one statement (in the array's order).
NOTIFY_ALL = "SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload"
#: PostgreSQL's NOTIFY payload limit is 8000 bytes; stay well under it. One
#: payload carries an instance's events ``{"o": instance, "e": [event, …]}``,
#: as many as fit; one event alone fits with room to spare.
MAX_PAYLOAD = 7000
MAX_EVENT = MAX_PAYLOAD - 200
#: The least time between two NOTIFY statements (seconds): an event that comes
#: sooner after the last waits that long for the ones that follow it, so that under
#: load a statement carries many (each one costs both sides a round trip).
NOTIFY_GAP = 0.005
#: How often the listening connection is checked (seconds).
LISTEN_PROBE = 5.0
#: How long opening the LISTEN or the NOTIFY connection may take (seconds).
CONNECT_TIMEOUT = 10.0
#: Delays before opening a lost connection again: doubling from the first to the last.
RETRY_MIN = 0.2
RETRY_MAX = 5.0
#: How the bridge's connections show in pg_stat_activity (as the store's pool's do),
#: and their commits: a NOTIFY is not kept across a database crash anyway, so its
#: transaction need not wait for the disk (the jobs' own changes are durable).
SESSION = {"application_name": "runpack", "synchronous_commit": "off"}
#: Fields too large to send; the receiving side reads them from the database.
HEAVY = ("output_data", "console_output")


def pack(instance: str, events: list[bytes]) -> list[str]:
    """Encoded events as few payloads as hold them, in order (each under MAX_PAYLOAD bytes)."""
    head = orjson.dumps({"o": instance})[:-1] + b',"e":['
    payloads: list[str] = []
    group: list[bytes] = []
    size = len(head) + 2
    for event in events:
        if group and size + len(event) + 1 > MAX_PAYLOAD:
            payloads.append((head + b",".join(group) + b"]}").decode())
            group, size = [], len(head) + 2
        group.append(event)
        size += len(event) + 1
    if group:
        payloads.append((head + b",".join(group) + b"]}").decode())
    return payloads


class PgBridge:
    """Fan-out between server instances through PostgreSQL LISTEN/NOTIFY.

    Local events go out as small JSON records (ids and deltas; long console
    chunks split across several), those sent together packed into as few
    payloads as hold them; events from other instances are published to
    the local subscribers (hub, watchers, result cache). A connection that
    drops (database restart, failover, terminated backend) is opened again with
    backoff: the listening one at once, since it hears of its loss, and the
    hub then looks for the jobs queued meanwhile (a ``resync`` event).
    """

    def __init__(
        self,
        dsn: str,
        notifier: Notifier,
        fetch_job: Callable[[str], Any],
        instance: str,
    ) -> None:
        self.dsn = dsn
        self.notifier = notifier
        self.fetch_job = fetch_job  # async: job id -> JobRow | None
        self.instance = instance
        #: How this instance's own payloads start: they come back to it, unread.
        self._own = orjson.dumps({"o": instance}).decode()[:-1] + ","
        self._outbox: asyncio.Queue[bytes] = asyncio.Queue(100_000)
        self._inbox: asyncio.Queue[tuple[ServerEvent, list[str]]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._unsubscribe: Callable[[], None] | None = None
        self.connected = asyncio.Event()
        self._listened = False  # has the LISTEN connection been open before?

    async def start(self) -> None:
        self._unsubscribe = self.notifier.subscribe(self._outgoing)
        self._tasks = [
            asyncio.create_task(self._listen(), name="runpack-pg-listen"),
            asyncio.create_task(self._send(), name="runpack-pg-notify"),
            asyncio.create_task(self._deliver(), name="runpack-pg-deliver"),
        ]

    async def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        await cancel_and_wait(list(self._tasks))

    # --- out ---------------------------------------------------------------------
    def _outgoing(self, event: ServerEvent) -> None:
        if event.origin is not None:
            return  # it came from another instance: do not echo it back
        for payload in self.encode(event):
            try:
                self._outbox.put_nowait(payload)
            except asyncio.QueueFull:
                log.warning("NOTIFY backlog full: dropping an event for job %s", event.job_id)

    def encode(self, event: ServerEvent) -> list[bytes]:
        """The event as JSON records of at most MAX_EVENT bytes, in order."""
        data = {k: v for k, v in event.data.items() if k not in HEAVY}
        heavy = [k for k in HEAVY if event.data.get(k) is not None]
        base = {"t": event.type, "j": event.job_id, "d": data, "h": heavy}
        append = data.pop("console_append", None)
        text = orjson.dumps(base)
        if len(text) > MAX_EVENT and event.job_id:
            # A long error message, say: the receiving side reads it from the database.
            for name in [k for k in data if k in JOB_COLUMNS and k != "status"]:
                heavy.append(name)
                del data[name]
            text = orjson.dumps(base)
        if len(text) > MAX_EVENT:
            log.warning("%s of %s too large to send: its status only", event.type, event.job_id)
            base["d"] = {"status": data.get("status")}
            text = orjson.dumps(base)
        if not append:
            return [text]
        # Console chunks travel in pieces that fit, in order, after the event itself.
        room = MAX_EVENT - len(text) - 64
        step = max(room // 6, 1)  # a character is at most 6 bytes in JSON (\u00xx)
        pieces = [append[i : i + step] for i in range(0, len(append), step)]
        out = []
        for i, piece in enumerate(pieces):
            chunk = {**base, "d": {**data, "console_append": piece}}
            if i:  # only the first piece carries the event's other fields' effect
                chunk["d"] = {"status": data.get("status"), "console_append": piece}
                chunk["h"] = []
            out.append(orjson.dumps(chunk))
        return out

    async def _connect(self) -> Any:
        import asyncpg

        return await asyncpg.connect(self.dsn, timeout=CONNECT_TIMEOUT, server_settings=SESSION)

    async def _send(self) -> None:
        errors = _db_errors()
        conn: Any = None
        delay = RETRY_MIN
        loop = asyncio.get_running_loop()
        sent = -NOTIFY_GAP
        try:
            while True:
                events = [await self._outbox.get()]
                # Under load, what comes in the gap after a send goes with this one.
                gap = sent + NOTIFY_GAP - loop.time()
                if gap > 0:
                    await asyncio.sleep(gap)
                while not self._outbox.empty() and len(events) < 5000:
                    events.append(self._outbox.get_nowait())
                batch = pack(self.instance, events)
                while True:
                    try:
                        if conn is None or conn.is_closed():
                            conn = await self._connect()
                        # One statement, so one transaction: the batch is sent whole,
                        # in order, or not at all.
                        await conn.execute(NOTIFY_ALL, CHANNEL, batch)
                        sent = loop.time()
                        delay = RETRY_MIN
                        break
                    except errors as exc:
                        log.warning("NOTIFY failed (%s); retrying in %.1f s", exc, delay)
                        if conn is not None and not conn.is_closed():
                            conn.terminate()
                        conn = None
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, RETRY_MAX)
        finally:
            if conn is not None and not conn.is_closed():
                conn.terminate()

    # --- in ----------------------------------------------------------------------
    async def _listen(self) -> None:
        errors = _db_errors()
        delay = RETRY_MIN
        while True:
            conn = None
            lost = asyncio.Event()
            try:
                conn = await self._connect()
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, self._incoming)
                self.connected.set()
                delay = RETRY_MIN
                log.info("listening to other instances on PostgreSQL channel %s", CHANNEL)
                # Nudge the hub: jobs queued while we were not listening are found now;
                # after a loss, watchers get the state of what they may have missed.
                again = {"reconnected": self._listened}
                self._listened = True
                self.notifier.publish(
                    ServerEvent(EventKind.RESYNC, data=again, origin=self.instance)
                )
                while not lost.is_set():
                    # A closed connection says so at once; one whose peer vanished
                    # without a word (a cut network) shows it only when used.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(LISTEN_PROBE):
                            await lost.wait()
                    if not lost.is_set():
                        await conn.execute("SELECT 1")
                log.warning("LISTEN connection lost; listening again in %.1f s", delay)
            except asyncio.CancelledError:
                raise
            except errors as exc:
                log.warning("LISTEN failed (%s); retrying in %.1f s", exc, delay)
            finally:
                self.connected.clear()
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    def _incoming(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        if payload.startswith(self._own):
            return
        try:
            msg = orjson.loads(payload)
            origin = msg.get("o")
            for record in msg["e"]:
                if record["t"] not in KINDS:  # from a newer instance: the others still count
                    continue
                event = ServerEvent(
                    EventKind(record["t"]), record.get("j"), record.get("d") or {}, origin=origin
                )
                self._inbox.put_nowait((event, record.get("h") or []))
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
            log.warning("ignored a payload on %s that is not a batch of events", CHANNEL)

    async def _deliver(self) -> None:
        """Publish remote events in arrival order, filling in what was too big to send."""
        while True:
            event, heavy = await self._inbox.get()
            if heavy and event.job_id:
                job = None
                try:
                    job = await self.fetch_job(event.job_id)
                except Exception:
                    log.exception("cannot read job %s for a remote event", event.job_id)
                data = dict(event.data)
                if job is not None:
                    for name in heavy:
                        value = getattr(job, name, None)
                        if name == "output_data" and isinstance(value, str):
                            value = orjson.loads(value)
                        data[name] = value
                event = ServerEvent(event.type, event.job_id, data, origin=event.origin)
            self.notifier.publish(event)


def _db_errors() -> tuple[type[BaseException], ...]:
    """What the driver, the server or the network can raise on the bridge's connections.

    (asyncpg is imported here, not at the top: the server runs without it on SQLite.)
    """
    import asyncpg

    return (
        OSError,
        TimeoutError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.InternalClientError,
    )
