"""What every part of the job service shares: its state, its collaborators, its answers,
and the events it publishes."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from runpack.cache import ResultCache
from runpack.errors import JobNotFound
from runpack.handler_versions import HandlerVersions
from runpack.identity import RunnerOwners
from runpack.notify import EventKind, Notifier, ServerEvent
from runpack.protocol import JobStatus
from runpack.service.checks import is_uuid
from runpack.settings import Settings
from runpack.store import JobRow, Store


def now_ms() -> int:
    return int(time.time() * 1000)


class Validator(Protocol):
    async def is_valid(self, output_data: str | None) -> bool: ...


class Figures(Protocol):
    """Stored figure folders (runpack.artifacts.FigureStore)."""

    def job_of_url(self, url: str) -> str | None: ...

    async def is_complete(self, job_id: str) -> bool: ...

    async def remove_all(self, job_ids: Sequence[str]) -> int: ...


class Observer(Protocol):
    """What the service reports as it works (runpack.metrics counts it). Must be cheap."""

    def answered(self, request: str, result: Answer) -> None:
        """A ``"submit"`` or ``"check"`` was answered with ``result``."""

    def started(self, job: JobRow) -> None:
        """A runner claimed ``job`` (the row as claimed)."""

    def ended(self, job_id: str, how: str, now: int) -> None:
        """A run ended: completed, failed, lost (taken back), released or cancelled."""


class RunnerSlot(Protocol):
    """A free slot of a connected runner, taken for a job about to be inserted."""

    @property
    def runner_id(self) -> str: ...


class Slots(Protocol):
    """Where a new job can start at once (runpack.placement). A job submitted while a runner
    has a free slot and no queued job waits for it is inserted already claimed for
    that runner, then pushed: it starts one commit sooner."""

    def take(self, job_type: str, params: Mapping[str, Any]) -> RunnerSlot | None:
        """A free slot for a job of this type and parameters, now reserved; None to queue
        the job."""
        ...

    def placed(self, slot: RunnerSlot, job: JobRow) -> None:
        """The job was inserted claimed for the slot's runner: send it."""
        ...

    def unplaced(self, slot: RunnerSlot, *, unsure: bool) -> None:
        """No job took the slot; ``unsure``: the insert failed and may have committed."""
        ...


class WorkBudget(Protocol):
    """What a client may still start: a submit takes one unit before it creates a job
    or runs one again, and gives it back if it did not after all
    (runpack.api.limits)."""

    #: Taking a unit costs a database write (budgets shared by instances): worth a read
    #: first, to find a job that exists without it.
    shared: bool

    async def take(self) -> None:
        """Take one unit; raises :class:`~runpack.errors.RateLimited` when spent."""
        ...

    async def give_back(self) -> None: ...


class NoObserver:
    def answered(self, request: str, result: Answer) -> None:
        pass

    def started(self, job: JobRow) -> None:
        pass

    def ended(self, job_id: str, how: str, now: int) -> None:
        pass


class Outcome(StrEnum):
    CREATED = "created"  # a new job, or an old one queued again: 201
    CACHED = "cached"  # completed, result still valid
    EXPIRED = "expired"  # check only: the result is no longer valid
    FAILED = "failed"  # failed, not yet due for a retry
    ACTIVE = "active"  # pending, claimed or in progress
    MISSING = "missing"  # check only: no such job


@dataclass(frozen=True, slots=True)
class JobRequest:
    job_type: str
    input_params: dict[str, Any]
    job_hash: str
    params_text: str
    force: bool = False
    priority: int = 0
    #: Seconds the job may run, if the submitter asked for less than its type allows.
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    """What the service answers a submit or a check: how it went, and the job."""

    outcome: Outcome
    job: JobRow | None
    #: CREATED for a job that existed and was queued again (not a new row).
    requeued: bool = False


class ServiceCore:
    """The state the parts of :class:`~runpack.service.JobService` share."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        validator: Validator,
        notifier: Notifier | None = None,
        clock: Callable[[], int] = now_ms,
        rng: Callable[[], float] = random.random,
        figures: Figures | None = None,
        observer: Observer | None = None,
        slots: Slots | None = None,
        versions: HandlerVersions | None = None,
    ) -> None:
        self.store = store
        self.observer: Observer = observer or NoObserver()
        self.figures = figures
        self.settings = settings
        self.validator = validator
        self.notifier = notifier or Notifier()
        self.clock = clock
        self.rng = rng
        self.results = ResultCache()
        #: Who may act for which runner.
        self.owners = RunnerOwners(store)
        #: Free runner slots for new jobs (the hub's placement), if any.
        self.slots = slots
        #: The job types' versions (runpack.handler_versions).
        self.versions = versions or HandlerVersions.from_settings(settings)
        self.notifier.subscribe(self.results.on_event)

    async def get_job(self, job_id: str) -> JobRow:
        job = await self.store.get_job(job_id) if is_uuid(job_id) else None
        if job is None:
            raise JobNotFound()
        return job

    # --- events -----------------------------------------------------------------------
    def _queued(
        self,
        job: JobRow,
        *,
        new: bool,
        not_before: int = 0,
        runner_id: str | None = None,
        note: str | None = None,
    ) -> None:
        """``runner_id``: the job was claimed for it as it was inserted (no runner
        needs waking for it); ``note``: why a run of it was lost."""
        data: dict[str, Any] = {
            "job_hash": job.job_hash,
            "job_type": job.job_type,
            "status": JobStatus.PENDING.value,
            "priority": job.priority,
            "not_before": not_before,
            "new": new,
        }
        if runner_id is not None:
            data["runner_id"] = runner_id
        if note is not None:
            data["note"] = note
        self.notifier.publish(ServerEvent(EventKind.JOB_QUEUED, job.id, data))

    def _updated(self, job_id: str, status: str, **data: Any) -> None:
        self.notifier.publish(
            ServerEvent(EventKind.JOB_UPDATED, job_id, {"status": str(status), **data})
        )
