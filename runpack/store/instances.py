"""The instances sharing a database, and which of them holds each runner's socket.

The statements and the store methods for :mod:`runpack.presence` (and ``runpack gc``,
which reads where the instances keep their figures). Every write here happens when an
instance starts, stops or ticks, or when a runner connects or disconnects: never per job.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from runpack.store.dialect import Statement
from runpack.store.queries import RUNNING

#: An instance whose row was not refreshed for this many presence intervals is gone.
ALIVE_INTERVALS = 3

Row = Sequence[Any]
Params = Mapping[str, Any]

INSTANCE_COLS = "id, host, data_dir, started_at, last_seen, stopped_at"

UPSERT_INSTANCE = Statement(f"""
INSERT INTO instances ({INSTANCE_COLS})
VALUES (:id, :host, :data_dir, :now, :now, NULL)
ON CONFLICT (id) DO UPDATE SET last_seen = :now, stopped_at = NULL
""")
TOUCH_INSTANCE = Statement(
    "UPDATE instances SET last_seen = :now WHERE id = :id AND stopped_at IS NULL"
)
STOP_INSTANCE = Statement("UPDATE instances SET stopped_at = :now WHERE id = :id")
LIST_INSTANCES = Statement(f"""
SELECT {INSTANCE_COLS} FROM instances WHERE last_seen > :since ORDER BY last_seen DESC, id
""")
FORGET_INSTANCES = Statement("DELETE FROM instances WHERE last_seen < :before")

# One row per runner (SQLite runs it for each; PostgreSQL once, with arrays).
HOLD_RUNNER = Statement(
    sqlite="""
UPDATE runners SET instance = :instance, transport = :transport, concurrency = :concurrency
WHERE id = :id
""",
    postgres="""
UPDATE runners SET instance = h.instance, transport = h.transport, concurrency = h.concurrency
FROM unnest(:id::text[], :instance::text[], :transport::text[], :concurrency::integer[])
    AS h(id, instance, transport, concurrency)
WHERE runners.id = h.id
""",
)
LET_GO_RUNNERS = Statement("""
UPDATE runners SET instance = NULL WHERE id {one_of[ids]} AND instance = :instance
""")
LET_GO_ALL = Statement("UPDATE runners SET instance = NULL WHERE instance = :instance")
# Runners recorded on an instance that stopped or stopped refreshing its row.
LET_GO_DEAD = Statement("""
UPDATE runners SET instance = NULL
WHERE instance IS NOT NULL AND instance NOT IN (
    SELECT id FROM instances WHERE stopped_at IS NULL AND last_seen > :alive_since)
""")
RUNNERS_PER_INSTANCE = Statement("""
SELECT r.instance, COUNT(*) FROM runners r JOIN instances i ON i.id = r.instance
WHERE i.stopped_at IS NULL AND i.last_seen > :alive_since
GROUP BY r.instance
""")
PRESENCE_OF = Statement("""
SELECT r.id, r.instance, r.transport, r.concurrency
FROM runners r JOIN instances i ON i.id = r.instance
WHERE r.id {one_of[ids]} AND i.stopped_at IS NULL AND i.last_seen > :alive_since
""")
JOBS_HELD_BY = Statement(f"""
SELECT claimed_by, id FROM jobs WHERE claimed_by {{one_of[ids]}} AND status IN {RUNNING}
ORDER BY id
""")


def alive_since(now_ms: int, interval: float) -> int:
    """The oldest ``last_seen`` of an instance still counted as alive."""
    return now_ms - int(ALIVE_INTERVALS * interval * 1000)


@dataclass(slots=True, frozen=True)
class InstanceRow:
    id: str
    #: The machine's name and the address the instance binds, for people.
    host: str
    data_dir: str
    started_at: int
    last_seen: int
    stopped_at: int | None

    def alive(self, since: int) -> bool:
        return self.stopped_at is None and self.last_seen > since


@dataclass(slots=True, frozen=True)
class RunnerPresence:
    """Where a runner's socket is: the instance holding it and that connection's shape."""

    instance: str
    transport: str
    concurrency: int
    jobs: tuple[str, ...]


class InstanceMethods:
    """The store's methods on instances and runner presence (mixed into SqlStore)."""

    @abstractmethod
    async def _read(self, stmt: Statement, params: Params) -> list[Row]: ...

    @abstractmethod
    async def _write_count(self, stmt: Statement, params: Params) -> int: ...

    @abstractmethod
    async def _write_many(self, stmt: Statement, rows: Sequence[Params]) -> int: ...

    async def register_instance(self, instance: str, host: str, data_dir: str, now: int) -> None:
        params = {"id": instance, "host": host, "data_dir": data_dir, "now": now}
        await self._write_count(UPSERT_INSTANCE, params)

    async def touch_instance(self, instance: str, now: int) -> bool:
        """Refresh the instance's row; False if it is gone (then register it again)."""
        return await self._write_count(TOUCH_INSTANCE, {"id": instance, "now": now}) > 0

    async def stop_instance(self, instance: str, now: int) -> None:
        """The instance stops: it holds no runner any more."""
        await self._write_count(LET_GO_ALL, {"instance": instance})
        await self._write_count(STOP_INSTANCE, {"id": instance, "now": now})

    async def list_instances(self, since: int) -> list[InstanceRow]:
        """Instances seen after ``since``, most recently seen first (stopped ones too)."""
        return [InstanceRow(*row) for row in await self._read(LIST_INSTANCES, {"since": since})]

    async def tidy_instances(self, alive_since: int, forget_before: int) -> None:
        """Let go of the runners of dead instances; forget instances long gone."""
        await self._write_count(LET_GO_DEAD, {"alive_since": alive_since})
        await self._write_count(FORGET_INSTANCES, {"before": forget_before})

    async def hold_runners(self, instance: str, held: Sequence[tuple[str, str, int]]) -> None:
        """Record ``instance`` as holding each (runner id, transport, concurrency)."""
        rows = [
            {"id": rid, "instance": instance, "transport": transport, "concurrency": concurrency}
            for rid, transport, concurrency in held
        ]
        if rows:
            await self._write_many(HOLD_RUNNER, rows)

    async def let_go_runners(self, instance: str, runner_ids: Sequence[str]) -> None:
        """These runners are no longer on ``instance`` (unless another has them now)."""
        if runner_ids:
            await self._write_count(LET_GO_RUNNERS, {"ids": list(runner_ids), "instance": instance})

    async def runners_per_instance(self, alive_since: int) -> dict[str, int]:
        rows = await self._read(RUNNERS_PER_INSTANCE, {"alive_since": alive_since})
        return {instance: int(n) for instance, n in rows}

    async def presence_of(
        self, runner_ids: Sequence[str], alive_since: int
    ) -> dict[str, RunnerPresence]:
        """The live instance holding each of these runners that is connected, and the
        jobs each runs."""
        if not runner_ids:
            return {}
        ids = list(runner_ids)
        rows = await self._read(PRESENCE_OF, {"ids": ids, "alive_since": alive_since})
        if not rows:
            return {}
        jobs: dict[str, list[str]] = {}
        for runner_id, job_id in await self._read(JOBS_HELD_BY, {"ids": [r[0] for r in rows]}):
            jobs.setdefault(runner_id, []).append(job_id)
        return {
            rid: RunnerPresence(
                instance, transport or "", int(concurrency or 0), tuple(jobs.get(rid, ()))
            )
            for rid, instance, transport, concurrency in rows
        }
