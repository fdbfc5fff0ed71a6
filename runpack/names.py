"""Runner names by id, for what shows jobs (job pages, lists, streams, the CLI).

A job row names its runner by id only; a name is read once per runner and remembered
(a runner's name rarely changes, and a hello that changes it is seen here at once).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from runpack.service.checks import is_uuid
from runpack.store import Store

if TYPE_CHECKING:
    from runpack.hub import Hub

#: Names remembered per instance; past it the memory starts over.
MAX_REMEMBERED = 10_000


class RunnerNames:
    def __init__(self, store: Store, hub: Hub) -> None:
        self.store = store
        self.hub = hub
        self._known: dict[str, str] = {}

    async def of(self, runner_ids: Iterable[str | None]) -> dict[str, str]:
        """The names of those runners that exist."""
        out: dict[str, str] = {}
        for runner_id in set(runner_ids):
            if not runner_id:
                continue
            conn = self.hub.conns.get(runner_id)
            name = conn.name if conn is not None else self._known.get(runner_id)
            if name is None and is_uuid(runner_id):
                row = await self.store.get_runner(runner_id)
                name = row.name if row is not None else None
            if name is None:
                continue
            if len(self._known) >= MAX_REMEMBERED:
                self._known.clear()
            self._known[runner_id] = name
            out[runner_id] = name
        return out
