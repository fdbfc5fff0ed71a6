"""``runpack import-d1``: load an export of the original's D1 database.

``wrangler d1 export`` writes SQLite SQL text (``PRAGMA defer_foreign_keys``,
``CREATE TABLE``, ``INSERT INTO "jobs" (...) VALUES(...)``, indexes, other
tables). The script runs in a private in-memory SQLite database, which speaks
exactly that dialect; the ``jobs`` and ``runners`` rows are then read back,
checked and mapped to Runpack's columns, and written through the store in
batches (``INSERT … ON CONFLICT DO NOTHING``: importing twice changes nothing).

Job hashes are kept as the original computed them, so its cache carries over;
each one is also recomputed with :func:`runpack.hashing.job_hash`, and any
difference is reported (such a job would not be found again by a submit).
Every row is checked before anything is written, so a bad row stops the import
with nothing written (or is skipped with ``skip_invalid``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from runpack import hashing
from runpack.d1_export import D1ImportError, Export, Row, read_export
from runpack.errors import RunpackError
from runpack.protocol import JobStatus
from runpack.store import JobRow, RunnerRow, Store, open_store

#: The states the original stored (its CHECK allows ``expired`` too).
ORIGINAL_STATUSES = (
    JobStatus.PENDING,
    JobStatus.CLAIMED,
    JobStatus.IN_PROGRESS,
    JobStatus.COMPLETED,
    JobStatus.FAILED,
    JobStatus.EXPIRED,
)
RUNNING = (JobStatus.CLAIMED, JobStatus.IN_PROGRESS)
BATCH_ROWS = 500
BATCH_BYTES = 4_000_000
SHOWN = 10  # problems listed by name in a message or summary

R = TypeVar("R", JobRow, RunnerRow)


class _Invalid(Exception):
    """A row that cannot be mapped (the message says why)."""


@dataclass
class ImportSummary:
    source: str
    jobs_read: int = 0
    jobs_imported: int = 0
    runners_read: int = 0
    runners_imported: int = 0
    has_runners_table: bool = True
    statuses: Counter[str] = field(default_factory=Counter)
    #: (job id, stored hash, recomputed hash) of every job whose hash differs.
    hash_mismatches: list[tuple[str, str, str]] = field(default_factory=list)
    #: Rows left out with ``skip_invalid``: "jobs row '<id>': <why>".
    skipped: list[str] = field(default_factory=list)

    @property
    def jobs_present(self) -> int:
        return self.jobs_read - len(self._skipped("jobs")) - self.jobs_imported

    @property
    def runners_present(self) -> int:
        return self.runners_read - len(self._skipped("runners")) - self.runners_imported

    def _skipped(self, table: str) -> list[str]:
        return [s for s in self.skipped if s.startswith(table + " ")]

    def render(self, target: str) -> str:
        statuses = ", ".join(f"{k} {n}" for k, n in sorted(self.statuses.items())) or "none"
        runners = (
            f"{self.runners_read} read, {self.runners_imported} imported, "
            f"{self.runners_present} already present"
            if self.has_runners_table
            else "none (the export has no runners table)"
        )
        lines = [
            f"Imported {self.source} into {target}",
            f"  jobs:     {self.jobs_read} read, {self.jobs_imported} imported, "
            f"{self.jobs_present} already present",
            f"  statuses: {statuses}",
            f"  runners:  {runners}",
            f"  hash mismatches: {len(self.hash_mismatches)}",
        ]
        if self.hash_mismatches:
            lines.append(
                "    (a submit of these inputs will not find the stored job: "
                "its hash is not the one Runpack computes)"
            )
            for job_id, stored, computed in self.hash_mismatches[:SHOWN]:
                lines.append(f"    job {job_id}: stored {stored}, computed {computed}")
            lines += _more(self.hash_mismatches, "    ")
        if self.skipped:
            lines.append(f"  skipped (invalid): {len(self.skipped)}")
            lines += [f"    {s}" for s in self.skipped[:SHOWN]] + _more(self.skipped, "    ")
        return "\n".join(lines)


def _more(items: Sequence[object], indent: str) -> list[str]:
    return [f"{indent}… and {len(items) - SHOWN} more"] if len(items) > SHOWN else []


# --- mapping rows -------------------------------------------------------------------
def _opt_text(row: Row, column: str) -> str | None:
    value = row.get(column)
    if value is not None and not isinstance(value, str):
        raise _Invalid(f"{column} is not text ({value!r:.60})")
    return value


def _text(row: Row, column: str) -> str:
    value = _opt_text(row, column)
    if not value:
        raise _Invalid(f"{column} is {'missing' if value is None else 'empty'}")
    return value


def _opt_int(row: Row, column: str) -> int | None:
    value = row.get(column)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    raise _Invalid(f"{column} is not an integer ({value!r:.60})")


def _int(row: Row, column: str) -> int:
    value = _opt_int(row, column)
    if value is None:
        raise _Invalid(f"{column} is missing")
    return value


def _id(row: Row) -> str:
    value = _text(row, "id")
    try:
        ok = str(uuid.UUID(value)) == value
    except ValueError:
        ok = False
    if not ok:
        raise _Invalid("id is not a lower-case UUID (Runpack could not address it)")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def job_row(row: Row, max_attempts: int) -> tuple[JobRow, str]:
    """Runpack's row for one of the original's jobs, and the hash Runpack computes for it."""
    job_id = _id(row)
    job_type = _text(row, "job_type")
    params_text = _text(row, "input_params")
    job_hash = _text(row, "job_hash")
    status = _text(row, "status")
    if status not in ORIGINAL_STATUSES:
        known = ", ".join(ORIGINAL_STATUSES)
        raise _Invalid(f"unknown status {status!r} (expected one of {known})")
    try:
        params = json.loads(params_text, parse_constant=_reject_constant)
        computed = hashing.job_hash(job_type, params)
    except (ValueError, TypeError, RecursionError) as exc:
        raise _Invalid(f"input_params is not valid JSON ({exc})") from None
    created_at = _int(row, "created_at")
    updated_at = _opt_int(row, "updated_at")
    updated_at = created_at if updated_at is None else updated_at
    claimed_at = _opt_int(row, "claimed_at")
    last_heartbeat = _opt_int(row, "last_heartbeat")
    if status in RUNNING and last_heartbeat is None:
        # The sweeper finds stale jobs by last heartbeat: give it one to go by.
        last_heartbeat = updated_at if claimed_at is None else claimed_at
    job = JobRow(
        id=job_id,
        job_hash=job_hash,
        job_type=job_type,
        input_params=params_text,
        status=status,
        priority=0,
        attempts=0 if status == JobStatus.PENDING else 1,
        max_attempts=max_attempts,
        not_before=0,
        timeout=None,
        created_at=created_at,
        updated_at=updated_at,
        claimed_by=_opt_text(row, "claimed_by"),
        claimed_at=claimed_at,
        last_heartbeat=last_heartbeat,
        progress_current=_opt_int(row, "progress_current"),
        progress_total=_opt_int(row, "progress_total"),
        console_output=_opt_text(row, "console_output"),
        output_data=_opt_text(row, "output_data"),
        error_message=_opt_text(row, "error_message"),
    )
    return job, computed


def runner_row(row: Row) -> RunnerRow:
    """Runpack's row for one of the original's runners (the same columns)."""
    runner_id = _id(row)
    name = _text(row, "name")
    capabilities = _text(row, "capabilities")
    try:
        parsed = json.loads(capabilities)
    except ValueError:
        parsed = None
    if not isinstance(parsed, list) or not all(isinstance(c, str) for c in parsed):
        raise _Invalid("capabilities is not a JSON array of strings")
    registered_at = _int(row, "registered_at")
    last_seen = _opt_int(row, "last_seen")
    last_seen = registered_at if last_seen is None else last_seen
    return RunnerRow(runner_id, name, capabilities, registered_at, last_seen)


def _label(table: str, row: Row) -> str:
    return f"{table} row {row.get('id')!r}"


# --- writing --------------------------------------------------------------------------
def _size(row: JobRow | RunnerRow) -> int:
    values = (getattr(row, f.name) for f in dataclasses.fields(row))
    return sum(len(v) for v in values if isinstance(v, str))


def _batches(rows: Sequence[R]) -> Iterator[list[R]]:
    """Batches of at most BATCH_ROWS rows or about BATCH_BYTES of text."""
    batch: list[R] = []
    size = 0
    for row in rows:
        batch.append(row)
        size += _size(row)
        if len(batch) >= BATCH_ROWS or size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


async def import_d1(
    path: str | Path, store: Store, *, max_attempts: int = 3, skip_invalid: bool = False
) -> ImportSummary:
    """Import a D1 export into an open store; raise D1ImportError with nothing written."""
    export = await asyncio.to_thread(read_export, path)
    return await import_export(export, store, max_attempts=max_attempts, skip_invalid=skip_invalid)


async def import_export(
    export: Export, store: Store, *, max_attempts: int = 3, skip_invalid: bool = False
) -> ImportSummary:
    """Check every row of a read export, then write them in batches."""
    path = export.source
    summary = ImportSummary(source=path, has_runners_table=export.runners is not None)
    problems: list[str] = []
    runners: list[RunnerRow] = []
    for raw in export.runners or []:
        try:
            runners.append(runner_row(raw))
        except _Invalid as why:
            problems.append(f"{_label('runners', raw)}: {why}")
    jobs: list[JobRow] = []
    for raw in export.jobs:
        try:
            job, computed = job_row(raw, max_attempts)
        except _Invalid as why:
            problems.append(f"{_label('jobs', raw)}: {why}")
            continue
        jobs.append(job)
        summary.statuses[job.status] += 1
        if computed != job.job_hash:
            summary.hash_mismatches.append((job.id, job.job_hash, computed))
    summary.jobs_read = len(export.jobs)
    summary.runners_read = len(export.runners or [])
    if problems and not skip_invalid:
        listed = "\n  ".join(problems[:SHOWN] + _more(problems, ""))
        raise D1ImportError(
            f"{path}: {len(problems)} row(s) cannot be imported; nothing was written "
            f"(--skip-invalid imports the others):\n  {listed}"
        )
    summary.skipped = problems
    summary.runners_imported = await _write(store.import_runners, runners, "runners")
    summary.jobs_imported = await _write(store.import_jobs, jobs, "jobs")
    return summary


async def _write(
    insert: Callable[[Sequence[R]], Awaitable[int]], rows: Sequence[R], what: str
) -> int:
    """Write in batches, each one transaction; a failure names what was written before it."""
    written = 0
    for batch in _batches(rows):
        try:
            written += await insert(batch)
        except RunpackError as exc:
            raise D1ImportError(
                f"writing {what} failed after {written} new row(s) were written "
                f"(the failed batch of {len(batch)} was not): {exc.details or exc.message}; "
                "running the import again skips the rows already there"
            ) from exc
    return written


async def import_d1_into(
    path: str | Path, db: str, *, max_attempts: int = 3, skip_invalid: bool = False
) -> ImportSummary:
    """Read the export, then open the store for ``db`` (SQLite path or DSN), import, close.

    An export that cannot be read leaves ``db`` untouched (not even created).
    """
    export = await asyncio.to_thread(read_export, path)
    store = open_store(db)
    try:
        await store.open()
    except RunpackError as exc:
        raise D1ImportError(f"cannot open the database: {exc.details or exc.message}") from exc
    try:
        return await import_export(
            export, store, max_attempts=max_attempts, skip_invalid=skip_invalid
        )
    finally:
        await store.close()
