"""Named SQL statements shared by both engines.

Parameters are written ``:name``; SQLite binds them as they are and the
PostgreSQL store rewrites them to ``$n`` once (see :func:`to_numbered`).
Each transition names the states it may start from, so a late or duplicate
message changes nothing.
"""

from __future__ import annotations

import re

from runpack.store.base import JOB_COLUMNS, RUNNER_COLUMNS

JOB_COLS = ", ".join(JOB_COLUMNS)
RUNNER_COLS = ", ".join(RUNNER_COLUMNS)
RUNNING = "('claimed', 'in_progress')"

GET_JOB = f"SELECT {JOB_COLS} FROM jobs WHERE id = :id"
GET_JOB_BY_HASH = f"SELECT {JOB_COLS} FROM jobs WHERE job_hash = :job_hash"

INSERT_JOB = f"""
INSERT INTO jobs (id, job_hash, job_type, input_params, status, priority, attempts,
                  max_attempts, not_before, timeout, created_at, updated_at)
VALUES (:id, :job_hash, :job_type, :input_params, 'pending', :priority, 0,
        :max_attempts, 0, :timeout, :now, :now)
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

# The best pending job of some types, claimed in one statement. `{lock}` is
# SKIP_LOCKED on PostgreSQL (concurrent claimers step over each other's row) and
# empty on SQLite, whose single writer already makes the statement atomic.
CLAIM_NEXT = f"""
UPDATE jobs SET {_CLAIM_SET}
WHERE status = 'pending' AND id = (
    SELECT id FROM jobs
    WHERE status = 'pending' AND not_before <= :now AND job_type IN {{job_types}}
    ORDER BY priority DESC, created_at, id
    LIMIT 1 {{lock}}
)
RETURNING {JOB_COLS}
"""
SKIP_LOCKED = "FOR UPDATE SKIP LOCKED"

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
       last_heartbeat = :now, console_output = COALESCE(:console_output, console_output)
WHERE id = :id AND claimed_by = :runner_id AND status IN {RUNNING}
"""

FAIL = f"""
UPDATE jobs SET status = 'failed', error_message = :error_message, updated_at = :now,
       last_heartbeat = :now, console_output = COALESCE(:console_output, console_output)
WHERE id = :id AND claimed_by = :runner_id AND status IN {RUNNING}
"""

AVAILABLE = f"""
SELECT {JOB_COLS} FROM jobs
WHERE status = 'pending' AND not_before <= :now AND job_type IN {{job_types}}
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

COUNT_JOBS = "SELECT status, COUNT(*) FROM jobs GROUP BY status"

JOBS_OF_RUNNER = f"""
SELECT {JOB_COLS} FROM jobs WHERE claimed_by = :runner_id
ORDER BY created_at DESC LIMIT :limit
"""

DELETE_JOB = "DELETE FROM jobs WHERE id = :id RETURNING id"
# PostgreSQL twin: the whole batch in one statement, with an array parameter.
DELETE_JOBS_PG = "DELETE FROM jobs WHERE id = ANY(:ids) RETURNING id"

INSERT_RUNNER = f"""
INSERT INTO runners ({RUNNER_COLS})
VALUES (:id, :name, :capabilities, :registered_at, :last_seen)
"""

GET_RUNNER = f"SELECT {RUNNER_COLS} FROM runners WHERE id = :id"
TOUCH_RUNNER = "UPDATE runners SET last_seen = :now WHERE id = :id"
LIST_RUNNERS = f"SELECT {RUNNER_COLS} FROM runners ORDER BY last_seen DESC"
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
