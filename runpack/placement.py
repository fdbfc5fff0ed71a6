"""New jobs placed on free runner slots as they are inserted (runpack.service.Slots).

A job submitted while a connected runner has a free slot, and no queued job that
runner can run waits for one, is inserted already claimed for that runner and
pushed as its insert commits: its start costs one commit, the insert's, where the
dispatcher would claim it in a second statement after the insert's event woke it.

The hub owns one :class:`Placement` and keeps its record of free slots up to date
(:meth:`Placement.note`); the service asks it for a slot on each insert
(:meth:`take`, then :meth:`placed` or :meth:`unplaced`). Switched off
(``RUNPACK_PLACE_NEW_JOBS=false``), it never offers a slot and every new job is
queued and claimed by the dispatcher, as before it existed.

Measured gain (``runpack bench``, on and off alternating, 3 runs each, one hour;
docs/performance.md): submit → start p50 0.67 ms against 1.14 on SQLite and 4.3
against 8.3 on PostgreSQL; jobs/s 1,483 against 1,183 and 622 against 563.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from runpack.image_lists import refuses
from runpack.store import JobRow

if TYPE_CHECKING:
    from runpack.connections import RunnerConn
    from runpack.hub import Hub
    from runpack.service.core import RunnerSlot

#: A new job looks at most this many runners with free slots for the least busy.
TAKE_SCAN = 32


class Placement:
    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        #: The hub whose runners take new jobs: set while it runs.
        self._hub: Hub | None = None
        #: Connected runners with free slots (credits), for :meth:`take`.
        self._free: dict[str, RunnerConn] = {}
        #: Slots taken by new jobs whose insert is on its way, per runner.
        self._placing: Counter[str] = Counter()
        #: A dispatch round ran while slots were taken: a slot given back may be wanted.
        self.raced = False

    def serve(self, hub: Hub | None) -> None:
        """Place new jobs on ``hub``'s runners from now on (None: stop placing)."""
        self._hub = hub if self.enabled else None
        if hub is None:
            self._free.clear()

    # --- kept up to date by the hub --------------------------------------------------
    def note(self, conn: RunnerConn) -> None:
        """``conn``'s slots or connection changed."""
        hub = self._hub
        if hub is None:
            return
        if conn.free > 0 and hub.conns.get(conn.runner_id) is conn:
            self._free[conn.runner_id] = conn
        elif self._free.get(conn.runner_id) is conn:
            del self._free[conn.runner_id]

    def placing(self, runner_id: str) -> int:
        """Inserts on their way claimed for this runner."""
        return self._placing.get(runner_id, 0)

    def round_starts(self) -> None:
        self.raced = bool(self._placing)

    # --- asked by the service on each insert -------------------------------------------
    def take(self, job_type: str, params: Mapping[str, Any]) -> RunnerSlot | None:
        """A free slot of the least busy runner that can run ``job_type`` with these
        parameters (a container job's image on its list, runpack.image_lists), reserved,
        or None: while the dispatcher is woken or at work there may be queued jobs
        that come first (priority, then age), and they are left to it. A round finds
        nothing before the dispatcher sleeps, so a free slot then means no queued job
        that its runner can run (retries in backoff aside, and jobs queued on
        another instance whose event is still on its way)."""
        hub = self._hub
        if hub is None or not hub.idle():
            return None
        best: RunnerConn | None = None
        for i, conn in enumerate(self._free.values()):
            if i == TAKE_SCAN:
                break
            if job_type not in conn.capabilities or not hub.may_place_on(conn):
                continue
            if refuses(conn.capabilities, job_type, params):
                continue
            if best is None or conn.load < best.load:
                best = conn
                if not conn.held:
                    break
        if best is None:
            return None
        best.reserve(1)
        self.note(best)
        self._placing[best.runner_id] += 1
        return best

    def placed(self, slot: RunnerSlot, job: JobRow) -> None:
        conn = cast("RunnerConn", slot)
        if self._hub is not None:
            self._hub.push(conn, job)
        conn.unreserve(1, 0)
        self._done(conn)

    def unplaced(self, slot: RunnerSlot, *, unsure: bool) -> None:
        """The insert found the job already there (its slot is free again), or failed:
        ``unsure``, it may have committed, claimed for the runner."""
        conn = cast("RunnerConn", slot)
        self._done(conn)
        conn.unreserve(1, 1)
        self.note(conn)
        hub = self._hub
        if hub is not None:
            if unsure:  # the job may be claimed for it: the next round checks
                hub.check_claims_of(conn.runner_id)
            if unsure or self.raced:
                hub.wake()

    def _done(self, conn: RunnerConn) -> None:
        self._placing[conn.runner_id] -= 1
        if self._placing[conn.runner_id] <= 0:
            del self._placing[conn.runner_id]
            if self._hub is not None:
                self._hub.placements_done(conn.runner_id)
