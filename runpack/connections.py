"""A connected runner's slots, as the hub accounts them (runpack.hub)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from runpack.protocol import ServerMessage

#: What a runner holding no job holds (``frozenset()`` makes a new object each time).
NO_JOBS: frozenset[str] = frozenset()
#: The versions of a runner that declares none.
NO_VERSIONS: Mapping[str, str] = MappingProxyType({})


@dataclass(eq=False, slots=True)
class RunnerConn:
    """One runner's live connection, as the hub sees it.

    The slots of a connection, whatever order its ``ready`` frames and the hub's
    claims come in, are accounted so that two invariants hold:

    - ``len(held) + reserved + credits <= concurrency``: a job pushed and not yet
      reported, a slot reserved for a claim or an insert on its way, and a slot
      granted and unused each take one of the runner's slots. A ``ready`` frame
      grants at most the slots that are in none of these; more is ignored. So the
      server never has more jobs out to a runner than its concurrency.
    - A slot whose job was reported (``free_on_result``: the runner frees it as it
      sends the result) may be granted at once, but takes a new job only once that
      result is stored (:attr:`free`): the jobs the database shows claimed or in
      progress for a runner never outnumber its slots either.
    """

    runner_id: str
    name: str
    #: The job types it takes jobs of: those it declared (``job_types``) whose version
    #: it runs (runpack.handler_versions); an ImageGroup if it sent ``images``
    #: (runpack.image_lists).
    capabilities: frozenset[str]
    concurrency: int
    send: Callable[[ServerMessage], None]
    close: Callable[[], None]
    transport: str = "websocket"
    #: Slots granted by the runner and not used yet.
    credits: int = 0
    #: Slots taken from ``credits`` for a claim or an insert whose answer is on its way.
    reserved: int = 0
    #: The jobs pushed to it that use a slot: not finished, nor reported; NO_JOBS
    #: while there are none (an empty set, on each of thousands of idle runners,
    #: would cost 216 bytes).
    held: set[str] | frozenset[str] = NO_JOBS
    #: Jobs whose result (complete or error) came and is being stored: the runner
    #: freed their slots as it sent them, but they are its own until acknowledged.
    reporting: set[str] | frozenset[str] = NO_JOBS
    connected_at: float = 0.0
    #: The job types it declared, and the versions of them its handlers declared.
    job_types: frozenset[str] = NO_JOBS
    versions: Mapping[str, str] = field(default_factory=lambda: NO_VERSIONS)
    #: The images its container jobs may run (patterns), if it sent a list.
    images: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not self.job_types:
            self.job_types = self.capabilities

    def live(self) -> dict[str, Any]:
        """Its live state, as the hub's snapshot shows it."""
        return {
            "connected": True,
            "transport": self.transport,
            "concurrency": self.concurrency,
            "free_slots": self.credits,
            "current_jobs": sorted(self.held),
        }

    @property
    def load(self) -> float:
        return len(self.held) / max(self.concurrency, 1)

    @property
    def free(self) -> int:
        """Slots that may take a job now: granted, and not still holding a result
        that is being stored."""
        busy = len(self.held) + len(self.reporting) + self.reserved
        return max(0, min(self.credits, self.concurrency - busy))

    def hold(self, job_ids: Iterable[str]) -> None:
        held = self.held if isinstance(self.held, set) else set()
        held.update(job_ids)
        self.held = held or NO_JOBS

    def report(self, job_id: str) -> None:
        """The job's result came: its slot is free, the job still the runner's."""
        if job_id in self.held:
            self.held = _without(self.held, job_id)
            reporting = self.reporting if isinstance(self.reporting, set) else set()
            reporting.add(job_id)
            self.reporting = reporting

    def forget(self, job_id: str) -> None:
        self.held = _without(self.held, job_id)
        self.reporting = _without(self.reporting, job_id)

    def holds(self, job_id: str) -> bool:
        return job_id in self.held or job_id in self.reporting

    def grant(self, slots: int) -> None:
        room = self.concurrency - len(self.held) - self.reserved - self.credits
        self.credits += max(0, min(slots, room))

    def reserve(self, slots: int) -> None:
        self.credits -= slots
        self.reserved += slots

    def unreserve(self, slots: int, unused: int) -> None:
        """A claim or insert for ``slots`` answered; ``unused`` of them found no job."""
        self.reserved -= slots
        self.credits += unused


def _without(jobs: set[str] | frozenset[str], job_id: str) -> set[str] | frozenset[str]:
    if isinstance(jobs, set):
        jobs.discard(job_id)
        if not jobs:
            return NO_JOBS
    return jobs
