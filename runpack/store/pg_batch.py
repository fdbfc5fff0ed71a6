"""PostgreSQL: the calls every job makes, many at once, one statement per batch.

:class:`~runpack.store.postgres.PostgresStore` gathers the reads by hash, the inserts
and the completions that arrive together (see :mod:`runpack.store.batching`) and runs
each batch here, on one pooled connection: one round trip and one commit for many
requests. Each statement is the batched twin of a single-job one in
:mod:`runpack.store.queries`, with one array parameter per column.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from runpack.errors import StoreError
from runpack.store.base import JobRow, NewJob
from runpack.store.dialect import Statement
from runpack.store.queries import JOB_COLS, RUNNING

JOBS_BY_HASH = Statement(
    postgres=f"SELECT {JOB_COLS} FROM jobs WHERE job_hash = ANY(:job_hash::text[])"
)
# New jobs as INSERT_JOB makes them (pending, or claimed for a runner_id); the
# hashes taken already come back too, read in the same statement: the first column
# says which rows are new. The read sees the jobs committed before the statement
# began: a job with the same hash committed meanwhile (the insert waited for it) is
# read again afterwards.
INSERT_JOBS = Statement(
    postgres=f"""
WITH created AS (
    INSERT INTO jobs (id, job_hash, job_type, input_params, status, priority, attempts,
                      max_attempts, not_before, timeout, created_at, updated_at,
                      claimed_by, claimed_at, last_heartbeat)
    SELECT id, job_hash, job_type, input_params,
           CASE WHEN runner_id IS NULL THEN 'pending' ELSE 'claimed' END, priority,
           CASE WHEN runner_id IS NULL THEN 0 ELSE 1 END, max_attempts, 0, timeout,
           now, now, runner_id,
           CASE WHEN runner_id IS NULL THEN NULL ELSE now END,
           CASE WHEN runner_id IS NULL THEN NULL ELSE now END
    FROM unnest(:id::text[], :job_hash::text[], :job_type::text[], :input_params::text[],
                :priority::int[], :max_attempts::int[], :timeout::bigint[], :now::bigint[],
                :runner_id::text[])
         AS v(id, job_hash, job_type, input_params, priority, max_attempts, timeout, now,
              runner_id)
    ON CONFLICT (job_hash) DO NOTHING
    RETURNING {JOB_COLS}
)
SELECT true, * FROM created
UNION ALL
SELECT false, {JOB_COLS} FROM jobs WHERE job_hash = ANY(:job_hash::text[])
"""
)
# `jobs.id = ANY(:id)` lets the planner see how few rows it reaches by the primary
# key (a join alone with unnest is estimated at 100 rows, and a sequential scan can
# look cheaper).
COMPLETE_JOBS = Statement(
    postgres=f"""
UPDATE jobs SET status = 'completed', output_data = v.output_data, updated_at = v.now,
       last_heartbeat = v.now, console_output = COALESCE(v.console_output, jobs.console_output),
       error_message = NULL
FROM unnest(:id::text[], :runner_id::text[], :now::bigint[], :output_data::text[],
            :console_output::text[])
     AS v(id, runner_id, now, output_data, console_output)
WHERE jobs.id = ANY(:id::text[]) AND jobs.id = v.id
      AND jobs.claimed_by IS NOT DISTINCT FROM v.runner_id AND jobs.status IN {RUNNING}
RETURNING jobs.id
"""
)
#: A completion: (job id, runner id, now, output data, console output).
Completion = tuple[str, str, int, str, str | None]
_COMPLETION = ("id", "runner_id", "now", "output_data", "console_output")


def _arrays(stmt: Statement, columns: dict[str, list[object]]) -> list[list[object]]:
    return [columns[name] for name in stmt.order]


async def jobs_by_hash(conn: asyncpg.Connection, hashes: Sequence[str]) -> list[JobRow | None]:
    """The job of each hash (None where there is none), in the order asked."""
    unique: list[object] = list(dict.fromkeys(hashes))
    rows = await conn.fetch(JOBS_BY_HASH.postgres, *_arrays(JOBS_BY_HASH, {"job_hash": unique}))
    found = {job.job_hash: job for job in (JobRow(*row) for row in rows)}
    return [found.get(job_hash) for job_hash in hashes]


async def insert_jobs(
    conn: asyncpg.Connection, jobs: Sequence[NewJob]
) -> list[tuple[JobRow, bool]]:
    """Insert each hash's first job; every job gets its hash's row, and whether it was
    the one created."""
    first: dict[str, NewJob] = {}
    for job in jobs:
        first.setdefault(job.job_hash, job)
    created: dict[str, JobRow] = {}
    existing: dict[str, JobRow] = {}
    # A conflicting insert waits for the other one to commit, so the row is then
    # visible to the next statement; it can only vanish if deleted in between, and is
    # then inserted again.
    wanted = list(first.values())
    for _ in range(3):
        columns = {name: [getattr(job, name) for job in wanted] for name in INSERT_JOBS.order}
        for row in await conn.fetch(INSERT_JOBS.postgres, *_arrays(INSERT_JOBS, columns)):
            (created if row[0] else existing)[row[2]] = JobRow(*row[1:])
        done = created.keys() | existing.keys()
        wanted = [job for job in wanted if job.job_hash not in done]
        if wanted:
            for row in await jobs_by_hash(conn, [job.job_hash for job in wanted]):
                if row is not None:
                    existing[row.job_hash] = row
            wanted = [job for job in wanted if job.job_hash not in existing]
        if not wanted:
            break
    else:
        gone = ", ".join(job.job_hash for job in wanted)
        raise StoreError(details=f"job {gone} was deleted while being inserted")
    out: list[tuple[JobRow, bool]] = []
    for job in jobs:
        row = created.get(job.job_hash)
        if row is not None:
            out.append((row, first[job.job_hash] is job))
        else:
            out.append((existing[job.job_hash], False))
    return out


async def complete_jobs(conn: asyncpg.Connection, calls: Sequence[Completion]) -> list[bool]:
    """Each job's first completion in the batch is the one tried; a second one for the
    same job finds it done, as it would a moment later."""
    first: dict[str, Completion] = {}
    for call in calls:
        first.setdefault(call[0], call)
    columns = {
        name: list(column)
        for name, column in zip(_COMPLETION, zip(*first.values(), strict=True), strict=True)
    }
    rows = await conn.fetch(COMPLETE_JOBS.postgres, *_arrays(COMPLETE_JOBS, columns))
    done = {row[0] for row in rows}
    return [call[0] in done and first[call[0]] is call for call in calls]
