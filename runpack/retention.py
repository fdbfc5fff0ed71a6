"""Retention: forget old jobs, consoles, figures and runners.

Every limit is a time-to-live in seconds, 0 meaning keep forever: ``result_ttl``
deletes completed and expired jobs, ``failure_ttl`` failed and cancelled ones,
``console_ttl`` clears the console of finished jobs and keeps them, ``figure_ttl``
deletes the stored figure files of finished jobs (their cached result then fails
validation and the next submit computes it again), ``runner_ttl`` forgets runners
not seen for that long that hold no job, and ``input_ttl`` removes uploaded input
files (:mod:`runpack.inputs`) unused for that long that no pending or running job
names. The last two are on by default (a week), the others off. A job's age is
counted from ``updated_at``, when it finished. Pending and running jobs, and their
figures, are never touched.

Rows go in batches of :data:`BATCH`, one state at a time and oldest first, so a
large backlog never holds the SQLite writer (or PostgreSQL row locks) for long.
Each deleted job is announced as a ``job_deleted`` event and each cleared console
as ``job_console_cleared``: the result cache drops them, here and, through
LISTEN/NOTIFY, in every other instance. Deleting a job deletes its figure too.
A figure's files are blobs that other figures may share (:mod:`runpack.blobs`):
removing figures removes their manifests, and a pass with a TTL that removes
figures (results, failures, figures) ends with a sweep of the blobs that no
manifest names any more; the bytes freed are those of the blobs.

The server runs a pass every ``gc_interval`` seconds when a TTL is set (see
:mod:`runpack.sweeper`); ``runpack gc`` (:func:`collect`) runs one now, or counts
with ``--dry-run``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from runpack.artifacts import FigureStore
from runpack.inputs import UPLOAD_MARK, InputStore, uploads_in
from runpack.notify import EventKind, Notifier, ServerEvent
from runpack.protocol import FINAL, JobStatus
from runpack.service.core import now_ms
from runpack.settings import TTL_NAMES, Settings
from runpack.store import Store

log = logging.getLogger(__name__)

#: Rows per statement, and figure folders per look-up.
BATCH = 500
RESULT_STATES = (JobStatus.COMPLETED, JobStatus.EXPIRED)
FAILURE_STATES = (JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """The time-to-live settings, in seconds (0 = keep forever)."""

    result_ttl: float = 0.0
    failure_ttl: float = 0.0
    console_ttl: float = 0.0
    figure_ttl: float = 0.0
    runner_ttl: float = 0.0
    input_ttl: float = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RetentionPolicy:
        return cls(**{name: getattr(settings, name) for name in TTL_NAMES})

    @property
    def active(self) -> bool:
        return any(getattr(self, name) > 0 for name in TTL_NAMES)

    @property
    def frees_figures(self) -> bool:
        """Is a TTL set that removes figures (with their jobs, or alone)?"""
        return self.result_ttl > 0 or self.failure_ttl > 0 or self.figure_ttl > 0

    def delete_ttl(self, status: str) -> float:
        """The TTL after which a finished job in ``status`` is deleted (0 = never)."""
        if status in RESULT_STATES:
            return self.result_ttl
        if status in FAILURE_STATES:
            return self.failure_ttl
        return 0.0


@dataclass(slots=True)
class Report:
    """What one pass did, or with ``dry_run`` would do."""

    dry_run: bool = False
    deleted: dict[str, int] = field(default_factory=lambda: {str(s): 0 for s in FINAL})
    consoles: int = 0
    figures: int = 0
    #: Stored files (blobs) no figure names any more.
    blobs: int = 0
    bytes_freed: int = 0
    runners: int = 0
    #: Uploaded input files unused for input_ttl, and their bytes.
    inputs: int = 0
    input_bytes: int = 0

    @property
    def jobs(self) -> int:
        return sum(self.deleted.values())

    @property
    def changed(self) -> bool:
        return bool(
            self.jobs or self.consoles or self.figures or self.blobs or self.runners or self.inputs
        )

    def summary(self) -> str:
        """One line, for the server's log."""
        return (
            f"{self.jobs} jobs deleted, {self.consoles} consoles cleared, {self.figures} "
            f"figures removed ({self.blobs} files, {human_bytes(self.bytes_freed)}), "
            f"{self.runners} runners forgotten, {self.inputs} uploaded inputs removed "
            f"({human_bytes(self.input_bytes)})"
        )

    def render(self) -> str:
        """The table ``runpack gc`` prints."""
        by_state = ", ".join(f"{state} {n}" for state, n in self.deleted.items())
        verbs = (
            ("jobs to delete", "consoles to clear", "figures to remove", "runners to forget")
            if self.dry_run
            else ("jobs deleted", "consoles cleared", "figures removed", "runners forgotten")
        )
        freed = "to free" if self.dry_run else "freed"
        files = "files to remove" if self.dry_run else "files removed"
        lines = [
            f"{verbs[0]:18} {self.jobs} ({by_state})",
            f"{verbs[1]:18} {self.consoles}",
            f"{verbs[2]:18} {self.figures} ({human_bytes(self.bytes_freed)} {freed})",
            f"  {files:16} {self.blobs} (stored once, no figure names them any more)",
            f"{verbs[3]:18} {self.runners}",
            f"{'inputs to remove' if self.dry_run else 'inputs removed':18} {self.inputs} "
            f"({human_bytes(self.input_bytes)}; uploaded files unused for the input TTL)",
        ]
        if self.dry_run:
            lines.insert(0, "Dry run: nothing was changed.")
        return "\n".join(lines)


class Retention:
    """One pass of the TTLs over a store and its figure folders."""

    def __init__(
        self,
        store: Store,
        policy: RetentionPolicy,
        *,
        figures: FigureStore | None = None,
        inputs: InputStore | None = None,
        notifier: Notifier | None = None,
        clock: Callable[[], int] = now_ms,
        batch: int = BATCH,
    ) -> None:
        self.store = store
        self.policy = policy
        self.figures = figures
        self.inputs = inputs
        self.notifier = notifier or Notifier()
        self.clock = clock
        self.batch = batch
        #: In a dry run, the jobs whose figures would be removed.
        self._doomed: list[str] = []

    def _cutoff(self, ttl: float, now: int) -> int | None:
        """Rows last updated before this are past ``ttl``; None when it is off."""
        return now - int(ttl * 1000) if ttl > 0 else None

    async def run(self, dry_run: bool = False) -> Report:
        now = self.clock()
        report = Report(dry_run=dry_run)
        self._doomed = []
        if dry_run:
            await self._count_jobs(now, report)
        else:
            await self._delete_jobs(now, report)
        await self._consoles(now, report)
        await self._figures(now, report)
        await self._runners(now, report)
        await self._inputs(now, report)
        if self.figures is not None and self.policy.frees_figures:
            swept = await self.figures.sweep(dry_run=dry_run, without=self._doomed)
            report.blobs += swept.blobs
            report.bytes_freed += swept.bytes
            if not dry_run:
                await asyncio.to_thread(self.figures.clean_incoming)
        return report

    # --- jobs ---------------------------------------------------------------------------
    async def _delete_jobs(self, now: int, report: Report) -> None:
        for status in FINAL:
            before = self._cutoff(self.policy.delete_ttl(status), now)
            if before is None:
                continue
            while True:
                ids = await self.store.delete_finished(status, before, self.batch)
                report.deleted[status] += len(ids)
                for job_id in ids:
                    self.notifier.publish(ServerEvent(EventKind.JOB_DELETED, job_id))
                await self._remove_figures(ids, report)
                if len(ids) < self.batch:
                    break

    async def _count_jobs(self, now: int, report: Report) -> None:
        for status in FINAL:
            before = self._cutoff(self.policy.delete_ttl(status), now)
            if before is not None:
                report.deleted[status] = await self.store.count_finished(status, before)

    # --- consoles -----------------------------------------------------------------------
    async def _consoles(self, now: int, report: Report) -> None:
        before = self._cutoff(self.policy.console_ttl, now)
        if before is None:
            return
        for status in FINAL:
            if report.dry_run:
                # Jobs old enough to be deleted first are counted there, not here.
                since = self._cutoff(self.policy.delete_ttl(status), now) or 0
                if since < before:
                    report.consoles += await self.store.count_consoles(status, since, before)
                continue
            since = 0
            while True:  # oldest first; each batch starts where the last one ended
                rows = await self.store.clear_consoles(status, since, before, self.batch)
                report.consoles += len(rows)
                for job_id, _ in rows:
                    self.notifier.publish(ServerEvent(EventKind.JOB_CONSOLE_CLEARED, job_id))
                if len(rows) < self.batch:
                    break
                since = max(updated_at for _, updated_at in rows)

    # --- figures ------------------------------------------------------------------------
    async def _figures(self, now: int, report: Report) -> None:
        """Figure folders past figure_ttl (and, in a dry run, those of jobs to delete)."""
        if self.figures is None:
            return
        deletes = self.policy.result_ttl > 0 or self.policy.failure_ttl > 0
        if self.policy.figure_ttl <= 0 and not (report.dry_run and deletes):
            return
        folders = await asyncio.to_thread(self.figures.disk.stored)
        for start in range(0, len(folders), self.batch):
            chunk = folders[start : start + self.batch]
            states = await self.store.job_states([job_id for job_id, _ in chunk])
            doomed = [
                job_id
                for job_id, mtime_ms in chunk
                if self._figure_is_due(states.get(job_id), mtime_ms, now, report.dry_run)
            ]
            await self._remove_figures(doomed, report)

    def _figure_is_due(
        self, state: tuple[str, int] | None, mtime_ms: int, now: int, dry_run: bool
    ) -> bool:
        before = self._cutoff(self.policy.figure_ttl, now)
        if state is None:  # no such job (left by a crash): by the folder's age alone
            return before is not None and mtime_ms < before
        status, updated_at = state
        if status not in FINAL:
            return False  # queued or running: its figure may be in use or on its way
        if dry_run:
            deleted_before = self._cutoff(self.policy.delete_ttl(status), now)
            if deleted_before is not None and updated_at < deleted_before:
                return True  # the job itself goes, and its figure with it
        # The folder's own age too: a figure uploaded again since is left alone.
        return before is not None and updated_at < before and mtime_ms < before

    async def _remove_figures(self, job_ids: Sequence[str], report: Report) -> None:
        if self.figures is None or not job_ids:
            return
        disk = self.figures.disk
        for job_id in job_ids:
            if not await asyncio.to_thread(disk.has, job_id):
                continue
            # A folder of the old layout is freed as a whole; blobs by the sweep.
            size = await asyncio.to_thread(disk.legacy_bytes, job_id)
            if report.dry_run:
                self._doomed.append(job_id)
            elif not await self.figures.drop(job_id):
                continue
            report.figures += 1
            report.bytes_freed += size

    # --- uploaded inputs ----------------------------------------------------------------
    async def _inputs(self, now: int, report: Report) -> None:
        """Uploaded files unused for input_ttl, unless a pending or running job names one."""
        before = self._cutoff(self.policy.input_ttl, now)
        if self.inputs is None or before is None:
            return
        keep = uploads_in(await self.store.unfinished_params(f"%{UPLOAD_MARK}%"))
        swept = await asyncio.to_thread(
            self.inputs.sweep, before / 1000, keep, dry_run=report.dry_run
        )
        report.inputs += swept.blobs
        report.input_bytes += swept.bytes

    # --- runners ------------------------------------------------------------------------
    async def _runners(self, now: int, report: Report) -> None:
        before = self._cutoff(self.policy.runner_ttl, now)
        if before is None:
            return
        if report.dry_run:
            report.runners = await self.store.count_idle_runners(before)
            return
        while True:
            ids = await self.store.delete_idle_runners(before, self.batch)
            report.runners += len(ids)
            if len(ids) < self.batch:
                break


async def run_retention(retention: Retention, interval: float) -> None:
    """A pass now, then every ``interval`` seconds until cancelled; failures are logged."""
    while True:
        try:
            report = await retention.run()
            if report.changed:
                log.info("retention: %s", report.summary())
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("retention pass failed; trying again in %.0f s", interval)
        await asyncio.sleep(interval)


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


async def collect(settings: Settings, policy: RetentionPolicy, dry_run: bool) -> Report:
    """One pass on the configured database and data folder, as ``runpack gc`` runs it."""
    from runpack.store import open_store

    store = open_store(settings.db)
    figures = FigureStore.from_settings(settings)
    events: list[ServerEvent] = []
    notifier = Notifier()
    notifier.subscribe(events.append)
    await store.open()
    try:
        inputs = InputStore.from_settings(settings)
        retention = Retention(store, policy, figures=figures, inputs=inputs, notifier=notifier)
        report = await retention.run(dry_run=dry_run)
    finally:
        await store.close()
    if events and _is_postgres(settings.db):
        await announce(settings.db, events)
    return report


async def announce(dsn: str, events: Sequence[ServerEvent]) -> None:
    """Tell running server instances, over NOTIFY, which jobs went (their caches drop them)."""
    import asyncpg

    from runpack.notify import CHANNEL, NOTIFY_ALL, PgBridge, pack

    bridge = PgBridge(dsn, Notifier(), lambda _id: None, f"gc-{uuid.uuid4().hex[:8]}")
    records = [record for event in events for record in bridge.encode(event)]
    payloads = pack(bridge.instance, records)
    try:
        conn = await asyncpg.connect(dsn)
        try:
            for start in range(0, len(payloads), BATCH):
                await conn.execute(NOTIFY_ALL, CHANNEL, payloads[start : start + BATCH])
        finally:
            await conn.close()
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        print(
            f"runpack gc: could not tell running servers ({exc}); their caches re-read "
            "a job within a minute",
            file=sys.stderr,
        )


def _is_postgres(db: str) -> bool:
    return db.startswith(("postgres://", "postgresql://"))
