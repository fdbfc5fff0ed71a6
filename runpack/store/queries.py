"""Named SQL statements shared by both engines.

Parameters are written ``:name``; SQLite binds them as they are and the
PostgreSQL store rewrites them to ``$n`` once (see :func:`to_numbered`).
Each transition names the states it may start from, so a late or duplicate
message changes nothing.
"""

from __future__ import annotations

import re

from runpack.store.base import API_KEY_COLUMNS, JOB_COLUMNS, RUNNER_COLUMNS

JOB_COLS = ", ".join(JOB_COLUMNS)
RUNNER_COLS = ", ".join(RUNNER_COLUMNS)
RUNNING = "('claimed', 'in_progress')"

GET_JOB = f"SELECT {JOB_COLS} FROM jobs WHERE id = :id"
GET_JOB_BY_HASH = f"SELECT {JOB_COLS} FROM jobs WHERE job_hash = :job_hash"

# A new job, pending; or claimed at once when :runner_id names a runner with a
# free slot (the columns a claim sets, as CLAIM sets them).
INSERT_JOB = f"""
INSERT INTO jobs (id, job_hash, job_type, input_params, status, priority, attempts,
                  max_attempts, not_before, timeout, created_at, updated_at,
                  claimed_by, claimed_at, last_heartbeat)
VALUES (:id, :job_hash, :job_type, :input_params,
        CASE WHEN :runner_id IS NULL THEN 'pending' ELSE 'claimed' END, :priority,
        CASE WHEN :runner_id IS NULL THEN 0 ELSE 1 END, :max_attempts, 0, :timeout,
        :now, :now, :runner_id,
        CASE WHEN :runner_id IS NULL THEN NULL ELSE :now END,
        CASE WHEN :runner_id IS NULL THEN NULL ELSE :now END)
ON CONFLICT (job_hash) DO NOTHING
RETURNING {JOB_COLS}
"""

# `from_status` is expanded to a literal list by the store (trusted enum values).
REQUEUE = f"""
UPDATE jobs SET status = 'pending', attempts = 0, not_before = :not_before,
       updated_at = :now, claimed_by = NULL, claimed_at = NULL, last_heartbeat = NULL,
       progress_current = NULL, progress_total = NULL, console_output = NULL,
       output_data = NULL, error_message = NULL
WHERE id = :id AND status IN {{from_status}}
RETURNING {JOB_COLS}
"""

CANCEL = f"""
UPDATE jobs SET status = 'cancelled', updated_at = :now, error_message = :reason
WHERE id = :id AND status IN {{from_status}}
RETURNING {JOB_COLS}
"""

EXPIRE = """
UPDATE jobs SET status = 'expired', updated_at = :now
WHERE id = :id AND status = 'completed'
"""

_CLAIM_SET = """status = 'claimed', claimed_by = :runner_id, claimed_at = :now,
       last_heartbeat = :now, updated_at = :now, attempts = attempts + 1,
       progress_current = NULL, progress_total = NULL"""

CLAIM = f"""
UPDATE jobs SET {_CLAIM_SET}
WHERE id = :id AND status = 'pending' AND not_before <= :now
RETURNING {JOB_COLS}
"""

# The best pending jobs of some types (priority, then age), up to :limit, claimed
# in one statement; RETURNING gives them in no particular order. `{picked}` is
# PG_PICKED on PostgreSQL: `= ANY(ARRAY(…))` runs the choice once (an `IN (…)`
# may run it again per row and claim more than :limit), with SKIP_LOCKED as
# `{lock}` so concurrent claimers step over each other's rows (a row changed by
# another claim is checked again against the choice's conditions as it is locked).
# On SQLite it is SQLITE_PICKED: its single writer already makes the statement
# atomic. Outside the choice only `id` is named, so either planner finds the rows
# by primary key; a `status` term there led both to scan every pending job.
# `{of_types}`: `IN (:t0, …)` on SQLite, `= ANY(:job_types)` (an array) on
# PostgreSQL, where an `IN (SELECT unnest(…))` becomes a join that reads and sorts
# every pending job instead of walking jobs_pending_idx.
CLAIM_BATCH = f"""
UPDATE jobs SET {_CLAIM_SET}
WHERE {{picked}}
RETURNING {JOB_COLS}
"""
_PICK = """SELECT id FROM jobs {pending_index}
    WHERE status = 'pending' AND not_before <= :now AND job_type {of_types}
    ORDER BY priority DESC, created_at, id
    LIMIT :limit {lock}"""
PG_PICKED = f"id = ANY(ARRAY({_PICK}))"
SQLITE_PICKED = f"id IN ({_PICK})"
SKIP_LOCKED = "FOR UPDATE SKIP LOCKED"
# `{pending_index}` on SQLite: its planner would rather take an index on `status`
# and sort every pending job than walk jobs_pending_idx and stop at the first.
SQLITE_PENDING_INDEX = "INDEXED BY jobs_pending_idx"

HEARTBEAT = f"""
UPDATE jobs SET status = 'in_progress', last_heartbeat = :now, updated_at = :now,
       progress_current = :progress_current, progress_total = :progress_total,
       console_output = COALESCE(:console_output, console_output)
WHERE id = :id AND claimed_by = :runner_id AND status IN {RUNNING}
"""

# Appends stream console chunks; the stored console keeps its last :max_console characters.
_APPENDED = "(COALESCE(console_output, '') || :console_append)"
HEARTBEAT_APPEND = f"""
UPDATE jobs SET status = 'in_progress', last_heartbeat = :now, updated_at = :now,
       progress_current = :progress_current, progress_total = :progress_total,
       console_output = CASE WHEN LENGTH({_APPENDED}) > :max_console
                             THEN SUBSTR({_APPENDED}, LENGTH({_APPENDED}) - :max_console + 1)
                             ELSE {_APPENDED} END
WHERE id = :id AND claimed_by = :runner_id AND status IN {RUNNING}
"""

COMPLETE = f"""
UPDATE jobs SET status = 'completed', output_data = :output_data, updated_at = :now,
       last_heartbeat = :now, console_output = COALESCE(:console_output, console_output),
       error_message = NULL
WHERE id = :id AND claimed_by = :runner_id AND status IN {RUNNING}
"""

FAIL = f"""
UPDATE jobs SET status = 'failed', error_message = :error_message, updated_at = :now,
       last_heartbeat = :now, console_output = COALESCE(:console_output, console_output)
WHERE id = :id AND claimed_by = :runner_id AND status IN {RUNNING}
"""

AVAILABLE = f"""
SELECT {JOB_COLS} FROM jobs {{pending_index}}
WHERE status = 'pending' AND not_before <= :now AND job_type {{of_types}}
ORDER BY priority DESC, created_at, id
LIMIT :limit
"""

STALE = f"""
SELECT {JOB_COLS} FROM jobs
WHERE status IN {RUNNING} AND last_heartbeat < :cutoff
ORDER BY last_heartbeat
LIMIT :limit
"""

# Both stale transitions require the row to be exactly as the sweeper read it.
RETRY_STALE = f"""
UPDATE jobs SET status = 'pending', not_before = :not_before, updated_at = :now,
       claimed_by = NULL, claimed_at = NULL, last_heartbeat = NULL,
       progress_current = NULL, progress_total = NULL, error_message = :note
WHERE id = :id AND status IN {RUNNING} AND claimed_by = :runner_id
      AND last_heartbeat = :last_heartbeat
"""

FAIL_STALE = f"""
UPDATE jobs SET status = 'failed', updated_at = :now, error_message = :error_message
WHERE id = :id AND status IN {RUNNING} AND claimed_by = :runner_id
      AND last_heartbeat = :last_heartbeat
"""

LIST_JOBS = f"""
SELECT {JOB_COLS} FROM jobs
WHERE (CAST(:status AS TEXT) IS NULL OR status = :status)
  AND (CAST(:job_type AS TEXT) IS NULL OR LOWER(job_type) LIKE LOWER(:job_type) ESCAPE '\\')
ORDER BY created_at DESC, id
LIMIT :limit OFFSET :offset
"""

# The page after a job of an earlier page (keyset paging): jobs_created_idx is entered
# at that job's created_at, so a deep page costs what the first does. Its terms are
# plain ranges (no `IS NULL OR`), which SQLite's planner can use.
LIST_JOBS_AFTER = f"""
SELECT {JOB_COLS} FROM jobs
WHERE created_at <= :created_at AND (created_at < :created_at OR id > :id)
  AND (CAST(:status AS TEXT) IS NULL OR status = :status)
  AND (CAST(:job_type AS TEXT) IS NULL OR LOWER(job_type) LIKE LOWER(:job_type) ESCAPE '\\')
ORDER BY created_at DESC, id
LIMIT :limit OFFSET :offset
"""

COUNT_JOBS = "SELECT status, COUNT(*) FROM jobs GROUP BY status"
# The same answer from the counts that triggers keep (schema.sqlite.sql,
# schema.postgres.sql): a few rows whatever the number of jobs. On PostgreSQL the
# changes not yet folded are added; one statement sees a fold whole or not at all.
JOB_COUNTS = "SELECT status, n FROM job_counts WHERE n <> 0"
JOB_COUNTS_PG = """
SELECT status, SUM(n) FROM (
    SELECT status, n FROM job_counts UNION ALL SELECT status, delta FROM job_count_deltas
) AS counts GROUP BY status HAVING SUM(n) <> 0
"""
# Moves the changes into job_counts. Concurrent folds each move the rows they
# deleted, and DO UPDATE adds them to the row as last committed.
FOLD_JOB_COUNTS_PG = """
WITH moved AS (DELETE FROM job_count_deltas RETURNING status, delta)
INSERT INTO job_counts (status, n) SELECT status, SUM(delta) FROM moved GROUP BY status
ON CONFLICT (status) DO UPDATE SET n = job_counts.n + EXCLUDED.n
"""
# For /metrics; the claim index (status, job_type, …) covers it.
COUNT_JOBS_BY_STATUS_AND_TYPE = (
    "SELECT status, job_type, COUNT(*) FROM jobs GROUP BY status, job_type"
)

JOBS_OF_RUNNER = f"""
SELECT {JOB_COLS} FROM jobs WHERE claimed_by = :runner_id
ORDER BY created_at DESC LIMIT :limit
"""

DELETE_JOB = "DELETE FROM jobs WHERE id = :id RETURNING id"
# PostgreSQL twin: the whole batch in one statement, with an array parameter.
DELETE_JOBS_PG = "DELETE FROM jobs WHERE id = ANY(:ids) RETURNING id"

INSERT_RUNNER = f"""
INSERT INTO runners ({RUNNER_COLS})
VALUES (:id, :name, :capabilities, :registered_at, :last_seen, :owner, :secret_sha256)
"""

GET_RUNNER = f"SELECT {RUNNER_COLS} FROM runners WHERE id = :id"
TOUCH_RUNNER = "UPDATE runners SET last_seen = :now WHERE id = :id"
#: A real write of one row, for the readiness check: its commit proves the store writes.
PROBE_WRITE = """
UPDATE schema_version SET applied_at = applied_at
WHERE version = (SELECT MAX(version) FROM schema_version)
"""
LIST_RUNNERS = f"""
SELECT {RUNNER_COLS} FROM runners ORDER BY last_seen DESC, id LIMIT :limit OFFSET :offset
"""
LIST_RUNNERS_AFTER = f"""
SELECT {RUNNER_COLS} FROM runners
WHERE last_seen <= :last_seen AND (last_seen < :last_seen OR id > :id)
ORDER BY last_seen DESC, id LIMIT :limit OFFSET :offset
"""
COUNT_RUNNERS = """
SELECT COUNT(*), COALESCE(SUM(CASE WHEN last_seen > :active_since THEN 1 ELSE 0 END), 0)
FROM runners
"""

# Imports (runpack import-d1): rows written as given; a row whose id or job_hash is
# already there is skipped (no conflict target: any unique key), so importing twice
# changes nothing.
IMPORT_JOB = f"""
INSERT INTO jobs ({JOB_COLS}) VALUES ({", ".join(":" + c for c in JOB_COLUMNS)})
ON CONFLICT DO NOTHING
"""
IMPORT_RUNNER = f"""
INSERT INTO runners ({RUNNER_COLS}) VALUES ({", ".join(":" + c for c in RUNNER_COLUMNS)})
ON CONFLICT DO NOTHING
"""
# PostgreSQL twins: a whole batch in one statement, one array parameter per column.
_PG_TYPES = {"priority": "integer", "attempts": "integer", "max_attempts": "integer"}
_PG_BIGINT = {
    "not_before",
    "timeout",
    "created_at",
    "updated_at",
    "claimed_at",
    "last_heartbeat",
    "progress_current",
    "progress_total",
    "registered_at",
    "last_seen",
}


def _pg_arrays(columns: tuple[str, ...]) -> str:
    types = [_PG_TYPES.get(c, "bigint" if c in _PG_BIGINT else "text") for c in columns]
    return ", ".join(f":{c}::{t}[]" for c, t in zip(columns, types, strict=True))


IMPORT_JOBS_PG = f"""
INSERT INTO jobs ({JOB_COLS}) SELECT * FROM unnest({_pg_arrays(JOB_COLUMNS)})
ON CONFLICT DO NOTHING
"""
IMPORT_RUNNERS_PG = f"""
INSERT INTO runners ({RUNNER_COLS}) SELECT * FROM unnest({_pg_arrays(RUNNER_COLUMNS)})
ON CONFLICT DO NOTHING
"""

_PARAM = re.compile(r"(?<!:):([a-z_][a-z0-9_]*)")


def in_list(values: list[str] | tuple[str, ...], prefix: str) -> tuple[str, dict[str, str]]:
    """``(:p0, :p1, …)`` and its bindings, for an ``IN`` of caller-given values."""
    names = [f"{prefix}{i}" for i in range(len(values))]
    return "(" + ", ".join(":" + n for n in names) + ")", dict(zip(names, values, strict=True))


PG_OF_TYPES = "= ANY(:job_types)"


def pg_in(name: str) -> str:
    """PostgreSQL's operand for an ``IN {…}`` slot: one text-array parameter ``name``.

    One statement text for any number of values (``in_list`` makes one per
    count, and its ``:t0`` names are not ``to_numbered``'s ``[a-z_]`` names).
    """
    return f"(SELECT unnest(:{name}::text[]))"


def to_numbered(sql: str) -> tuple[str, list[str]]:
    """Rewrite ``:name`` parameters to PostgreSQL's ``$n``; return the name order."""
    order: list[str] = []

    def repl(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in order:
            order.append(name)
        return f"${order.index(name) + 1}"

    return _PARAM.sub(repl, sql), order


# --- retention (runpack.retention) -----------------------------------------------------
# One state at a time, so the (status, updated_at) index gives the oldest rows first with
# no sort, and in batches of :limit, so a large backlog never holds the writer for long.
# The batch is a MATERIALIZED CTE: chosen once (PostgreSQL would rescan an IN subquery
# and, skipping the rows it just changed, pick more). The outer conditions are checked
# again on each row: on PostgreSQL a job queued again after the batch was chosen is
# re-read and left alone. `{lock}` as in CLAIM_BATCH.
FINISHED = "('completed', 'failed', 'expired', 'cancelled')"

DELETE_FINISHED = f"""
WITH batch AS MATERIALIZED (
    SELECT id FROM jobs WHERE status = :status AND status IN {FINISHED} AND updated_at < :before
    ORDER BY updated_at LIMIT :limit {{lock}}
)
DELETE FROM jobs WHERE id IN (SELECT id FROM batch)
  AND status = :status AND status IN {FINISHED} AND updated_at < :before
RETURNING id
"""

COUNT_FINISHED = f"""
SELECT COUNT(*) FROM jobs WHERE status = :status AND status IN {FINISHED} AND updated_at < :before
"""

# The job keeps its updated_at: the console's age does not restart the job's.
CLEAR_CONSOLES = f"""
WITH batch AS MATERIALIZED (
    SELECT id FROM jobs
    WHERE status = :status AND status IN {FINISHED} AND updated_at >= :since
      AND updated_at < :before AND console_output IS NOT NULL
    ORDER BY updated_at LIMIT :limit {{lock}}
)
UPDATE jobs SET console_output = NULL WHERE id IN (SELECT id FROM batch)
  AND status = :status AND status IN {FINISHED} AND updated_at < :before
RETURNING id, updated_at
"""

COUNT_CONSOLES = f"""
SELECT COUNT(*) FROM jobs
WHERE status = :status AND status IN {FINISHED} AND updated_at >= :since
  AND updated_at < :before AND console_output IS NOT NULL
"""

# Status and finish time of some jobs (their figure folders are being judged).
JOB_STATES = "SELECT id, status, updated_at FROM jobs WHERE id IN {ids}"

_IDLE_RUNNER = f"""last_seen < :before AND NOT EXISTS (
        SELECT 1 FROM jobs WHERE jobs.claimed_by = runners.id AND jobs.status IN {RUNNING})"""

DELETE_IDLE_RUNNERS = f"""
WITH batch AS MATERIALIZED (
    SELECT id FROM runners WHERE {_IDLE_RUNNER}
    ORDER BY last_seen LIMIT :limit {{lock}}
)
DELETE FROM runners WHERE id IN (SELECT id FROM batch) AND {_IDLE_RUNNER}
RETURNING id
"""

COUNT_IDLE_RUNNERS = f"SELECT COUNT(*) FROM runners WHERE {_IDLE_RUNNER}"


# --- stored API keys (runpack keys) ------------------------------------------------------
API_KEY_COLS = ", ".join(API_KEY_COLUMNS)
INSERT_API_KEY = f"""
INSERT INTO api_keys ({API_KEY_COLS}) VALUES ({", ".join(":" + c for c in API_KEY_COLUMNS)})
"""
GET_API_KEY = f"SELECT {API_KEY_COLS} FROM api_keys WHERE id = :id"
API_KEY_BY_HASH = f"SELECT {API_KEY_COLS} FROM api_keys WHERE secret_sha256 = :secret_sha256"
LIST_API_KEYS = f"SELECT {API_KEY_COLS} FROM api_keys ORDER BY created_at, id"
REVOKE_API_KEY = f"""
UPDATE api_keys SET revoked_at = :now WHERE id = :id AND revoked_at IS NULL
RETURNING {API_KEY_COLS}
"""
# Several instances may record uses of one key: the time only moves forward.
TOUCH_API_KEY = """
UPDATE api_keys SET last_used_at = :now
WHERE id = :id AND (last_used_at IS NULL OR last_used_at < :now)
"""
