"""Named SQL statements shared by both engines.

Each is a :class:`~runpack.store.dialect.Statement`: parameters are written
``:name``, and a slot stands for a word the engines spell differently
(``{pending_index}``, ``{lock}``, ``{held_by_runner}``, ``{one_of[list]}``,
``{filter_one_of[list]}``: see :mod:`runpack.store.dialect`; braces are doubled
in an f-string). Both texts are final once this module is imported; a statement
only one engine runs, or of a different shape on each, is given as
``Statement(sqlite=…, postgres=…)``.
Each transition names the states it may start from, so a late or duplicate
message changes nothing.

To add a statement: write it here, and call it from a method of
:class:`runpack.store.sql.SqlStore` with its parameters as a dict.
"""

from __future__ import annotations

from collections.abc import Iterable

from runpack import protocol
from runpack.store.base import API_KEY_COLUMNS, JOB_COLUMNS, RUNNER_COLUMNS
from runpack.store.dialect import Statement


def _states(states: Iterable[str]) -> str:
    return "(" + ", ".join(f"'{state}'" for state in states) + ")"


JOB_COLS = ", ".join(JOB_COLUMNS)
RUNNER_COLS = ", ".join(RUNNER_COLUMNS)
RUNNING = _states(protocol.RUNNING)

GET_JOB = Statement(f"SELECT {JOB_COLS} FROM jobs WHERE id = :id")
GET_JOB_BY_HASH = Statement(f"SELECT {JOB_COLS} FROM jobs WHERE job_hash = :job_hash")

# A new job, pending; or claimed at once when :runner_id names a runner with a
# free slot (the columns a claim sets, as CLAIM sets them). PostgreSQL inserts in
# batches instead (runpack.store.pg_batch.INSERT_JOBS).
INSERT_JOB = Statement(
    sqlite=f"""
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
)

REQUEUE = Statement(f"""
UPDATE jobs SET status = 'pending', attempts = 0, not_before = :not_before,
       updated_at = :now, claimed_by = NULL, claimed_at = NULL, last_heartbeat = NULL,
       progress_current = NULL, progress_total = NULL, console_output = NULL,
       output_data = NULL, error_message = NULL
WHERE id = :id AND status {{filter_one_of[from_status]}}
RETURNING {JOB_COLS}
""")

CANCEL = Statement(f"""
UPDATE jobs SET status = 'cancelled', updated_at = :now, error_message = :reason
WHERE id = :id AND status {{filter_one_of[from_status]}}
RETURNING {JOB_COLS}
""")

EXPIRE = Statement("""
UPDATE jobs SET status = 'expired', updated_at = :now
WHERE id = :id AND status = 'completed'
""")

_CLAIM_SET = """status = 'claimed', claimed_by = :runner_id, claimed_at = :now,
       last_heartbeat = :now, updated_at = :now, attempts = attempts + 1,
       progress_current = NULL, progress_total = NULL"""

CLAIM = Statement(f"""
UPDATE jobs SET {_CLAIM_SET}
WHERE id = :id AND status = 'pending' AND not_before <= :now
RETURNING {JOB_COLS}
""")

# The best pending jobs of some types (priority, then age), up to :limit, claimed
# in one statement; RETURNING gives them in no particular order. On PostgreSQL,
# `= ANY(ARRAY(…))` runs the choice once (an `IN (…)` may run it again per row and
# claim more than :limit), and `{lock}` lets concurrent claimers step over each
# other's rows. On SQLite its single writer already makes the statement atomic.
# Outside the choice only `id` is named, so either planner finds the rows by
# primary key; a `status` term there led both to scan every pending job.
_PICK = """SELECT id FROM jobs {pending_index}
    WHERE status = 'pending' AND not_before <= :now AND job_type {one_of[job_types]}
    ORDER BY priority DESC, created_at, id
    LIMIT :limit {lock}"""
CLAIM_BATCH = Statement(
    sqlite=f"UPDATE jobs SET {_CLAIM_SET}\nWHERE id IN ({_PICK})\nRETURNING {JOB_COLS}",
    postgres=f"UPDATE jobs SET {_CLAIM_SET}\nWHERE id = ANY(ARRAY({_PICK}))\nRETURNING {JOB_COLS}",
)

HEARTBEAT = Statement(f"""
UPDATE jobs SET status = 'in_progress', last_heartbeat = :now, updated_at = :now,
       progress_current = :progress_current, progress_total = :progress_total,
       console_output = COALESCE(:console_output, console_output)
WHERE id = :id AND {{held_by_runner}} AND status IN {RUNNING}
""")

# Appends stream console chunks; the stored console keeps its last :max_console characters.
_APPENDED = "(COALESCE(console_output, '') || :console_append)"
HEARTBEAT_APPEND = Statement(f"""
UPDATE jobs SET status = 'in_progress', last_heartbeat = :now, updated_at = :now,
       progress_current = :progress_current, progress_total = :progress_total,
       console_output = CASE WHEN LENGTH({_APPENDED}) > :max_console
                             THEN SUBSTR({_APPENDED}, LENGTH({_APPENDED}) - :max_console + 1)
                             ELSE {_APPENDED} END
WHERE id = :id AND {{held_by_runner}} AND status IN {RUNNING}
""")

COMPLETE = Statement(f"""
UPDATE jobs SET status = 'completed', output_data = :output_data, updated_at = :now,
       last_heartbeat = :now, console_output = COALESCE(:console_output, console_output),
       error_message = NULL
WHERE id = :id AND {{held_by_runner}} AND status IN {RUNNING}
""")

FAIL = Statement(f"""
UPDATE jobs SET status = 'failed', error_message = :error_message, updated_at = :now,
       last_heartbeat = :now, console_output = COALESCE(:console_output, console_output)
WHERE id = :id AND {{held_by_runner}} AND status IN {RUNNING}
""")

AVAILABLE = Statement(f"""
SELECT {JOB_COLS} FROM jobs {{pending_index}}
WHERE status = 'pending' AND not_before <= :now AND job_type {{one_of[job_types]}}
ORDER BY priority DESC, created_at, id
LIMIT :limit
""")

STALE = Statement(f"""
SELECT {JOB_COLS} FROM jobs
WHERE status IN {RUNNING} AND last_heartbeat < :cutoff
ORDER BY last_heartbeat
LIMIT :limit
""")

# Both stale transitions require the row to be exactly as the sweeper read it.
RETRY_STALE = Statement(f"""
UPDATE jobs SET status = 'pending', not_before = :not_before, updated_at = :now,
       claimed_by = NULL, claimed_at = NULL, last_heartbeat = NULL,
       progress_current = NULL, progress_total = NULL, error_message = :note
WHERE id = :id AND status IN {RUNNING} AND {{held_by_runner}}
      AND last_heartbeat = :last_heartbeat
""")

FAIL_STALE = Statement(f"""
UPDATE jobs SET status = 'failed', updated_at = :now, error_message = :error_message
WHERE id = :id AND status IN {RUNNING} AND {{held_by_runner}}
      AND last_heartbeat = :last_heartbeat
""")

LIST_JOBS = Statement(f"""
SELECT {JOB_COLS} FROM jobs
WHERE (CAST(:status AS TEXT) IS NULL OR status = :status)
  AND (CAST(:job_type AS TEXT) IS NULL OR LOWER(job_type) LIKE LOWER(:job_type) ESCAPE '\\')
ORDER BY created_at DESC, id
LIMIT :limit OFFSET :offset
""")

# The page after a job of an earlier page (keyset paging): jobs_created_idx is entered
# at that job's created_at, so a deep page costs what the first does. Its terms are
# plain ranges (no `IS NULL OR`), which SQLite's planner can use.
LIST_JOBS_AFTER = Statement(f"""
SELECT {JOB_COLS} FROM jobs
WHERE created_at <= :created_at AND (created_at < :created_at OR id > :id)
  AND (CAST(:status AS TEXT) IS NULL OR status = :status)
  AND (CAST(:job_type AS TEXT) IS NULL OR LOWER(job_type) LIKE LOWER(:job_type) ESCAPE '\\')
ORDER BY created_at DESC, id
LIMIT :limit OFFSET :offset
""")

COUNT_JOBS = Statement("SELECT status, COUNT(*) FROM jobs GROUP BY status")
# The same answer from the counts that triggers keep (migrations/0008_job_counts
# twins): a few rows whatever the number of jobs. On PostgreSQL the
# changes not yet folded are added; one statement sees a fold whole or not at all.
JOB_COUNTS = Statement(
    sqlite="SELECT status, n FROM job_counts WHERE n <> 0",
    postgres="""
SELECT status, SUM(n) FROM (
    SELECT status, n FROM job_counts UNION ALL SELECT status, delta FROM job_count_deltas
) AS counts GROUP BY status HAVING SUM(n) <> 0
""",
)
# Moves the changes into job_counts (PostgreSQL: SQLite's triggers update the counts
# themselves). Concurrent folds each move the rows they deleted, and DO UPDATE adds
# them to the row as last committed.
FOLD_JOB_COUNTS = Statement(
    postgres="""
WITH moved AS (DELETE FROM job_count_deltas RETURNING status, delta)
INSERT INTO job_counts (status, n) SELECT status, SUM(delta) FROM moved GROUP BY status
ON CONFLICT (status) DO UPDATE SET n = job_counts.n + EXCLUDED.n
"""
)
# For /metrics.
COUNT_JOBS_BY_STATUS_AND_TYPE = Statement(
    "SELECT status, job_type, COUNT(*) FROM jobs GROUP BY status, job_type"
)

JOBS_OF_RUNNER = Statement(f"""
SELECT {JOB_COLS} FROM jobs WHERE claimed_by = :runner_id
ORDER BY created_at DESC LIMIT :limit
""")

DELETE_JOBS = Statement("DELETE FROM jobs WHERE id {one_of[ids]} RETURNING id")

INSERT_RUNNER = Statement(f"""
INSERT INTO runners ({RUNNER_COLS})
VALUES (:id, :name, :capabilities, :registered_at, :last_seen, :owner, :secret_sha256)
""")

GET_RUNNER = Statement(f"SELECT {RUNNER_COLS} FROM runners WHERE id = :id")
TOUCH_RUNNER = Statement("UPDATE runners SET last_seen = :now WHERE id = :id")
#: A real write of one row, for the readiness check: its commit proves the store writes.
PROBE_WRITE = Statement("""
UPDATE schema_version SET applied_at = applied_at
WHERE version = (SELECT MAX(version) FROM schema_version)
""")
LIST_RUNNERS = Statement(f"""
SELECT {RUNNER_COLS} FROM runners ORDER BY last_seen DESC, id LIMIT :limit OFFSET :offset
""")
LIST_RUNNERS_AFTER = Statement(f"""
SELECT {RUNNER_COLS} FROM runners
WHERE last_seen <= :last_seen AND (last_seen < :last_seen OR id > :id)
ORDER BY last_seen DESC, id LIMIT :limit OFFSET :offset
""")
COUNT_RUNNERS = Statement("""
SELECT COUNT(*), COALESCE(SUM(CASE WHEN last_seen > :active_since THEN 1 ELSE 0 END), 0)
FROM runners
""")

# Imports (runpack import-d1): rows written as given; a row whose id or job_hash is
# already there is skipped (no conflict target: any unique key), so importing twice
# changes nothing. SQLite runs the statement once per row, in one transaction;
# PostgreSQL once for the batch, with one array parameter per column.
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


def _import(table: str, columns: tuple[str, ...]) -> Statement:
    names = ", ".join(columns)
    return Statement(
        sqlite=f"""INSERT INTO {table} ({names}) VALUES ({", ".join(":" + c for c in columns)})
ON CONFLICT DO NOTHING""",
        postgres=f"""INSERT INTO {table} ({names}) SELECT * FROM unnest({_pg_arrays(columns)})
ON CONFLICT DO NOTHING""",
    )


IMPORT_JOBS = _import("jobs", JOB_COLUMNS)
IMPORT_RUNNERS = _import("runners", RUNNER_COLUMNS)


# --- retention (runpack.retention) -----------------------------------------------------
# One state at a time, so the (status, updated_at) index gives the oldest rows first with
# no sort, and in batches of :limit, so a large backlog never holds the writer for long.
# The batch is a MATERIALIZED CTE: chosen once (PostgreSQL would rescan an IN subquery
# and, skipping the rows it just changed, pick more). The outer conditions are checked
# again on each row: on PostgreSQL a job queued again after the batch was chosen is
# re-read and left alone. `{lock}` as in CLAIM_BATCH.
FINISHED = _states(protocol.FINAL)

DELETE_FINISHED = Statement(f"""
WITH batch AS MATERIALIZED (
    SELECT id FROM jobs WHERE status = :status AND status IN {FINISHED} AND updated_at < :before
    ORDER BY updated_at LIMIT :limit {{lock}}
)
DELETE FROM jobs WHERE id IN (SELECT id FROM batch)
  AND status = :status AND status IN {FINISHED} AND updated_at < :before
RETURNING id
""")

COUNT_FINISHED = Statement(f"""
SELECT COUNT(*) FROM jobs WHERE status = :status AND status IN {FINISHED} AND updated_at < :before
""")

# The job keeps its updated_at: the console's age does not restart the job's.
CLEAR_CONSOLES = Statement(f"""
WITH batch AS MATERIALIZED (
    SELECT id FROM jobs
    WHERE status = :status AND status IN {FINISHED} AND updated_at >= :since
      AND updated_at < :before AND console_output IS NOT NULL
    ORDER BY updated_at LIMIT :limit {{lock}}
)
UPDATE jobs SET console_output = NULL WHERE id IN (SELECT id FROM batch)
  AND status = :status AND status IN {FINISHED} AND updated_at < :before
RETURNING id, updated_at
""")

COUNT_CONSOLES = Statement(f"""
SELECT COUNT(*) FROM jobs
WHERE status = :status AND status IN {FINISHED} AND updated_at >= :since
  AND updated_at < :before AND console_output IS NOT NULL
""")

# Status and finish time of some jobs (their figure folders are being judged).
JOB_STATES = Statement("SELECT id, status, updated_at FROM jobs WHERE id {one_of[ids]}")
UNFINISHED_PARAMS = Statement(
    "SELECT input_params FROM jobs WHERE input_params LIKE :pattern AND status IN "
    + _states((protocol.JobStatus.PENDING, *protocol.RUNNING))
)

_IDLE_RUNNER = f"""last_seen < :before AND NOT EXISTS (
        SELECT 1 FROM jobs WHERE jobs.claimed_by = runners.id AND jobs.status IN {RUNNING})"""

DELETE_IDLE_RUNNERS = Statement(f"""
WITH batch AS MATERIALIZED (
    SELECT id FROM runners WHERE {_IDLE_RUNNER}
    ORDER BY last_seen LIMIT :limit {{lock}}
)
DELETE FROM runners WHERE id IN (SELECT id FROM batch) AND {_IDLE_RUNNER}
RETURNING id
""")

COUNT_IDLE_RUNNERS = Statement(f"SELECT COUNT(*) FROM runners WHERE {_IDLE_RUNNER}")


# --- where a pending job stands (runpack.standing) ---------------------------------------
# The pending jobs of some types that claims take before a job of :priority, :created_at
# and :id, per type, counting at most :limit of each part: higher priorities, then the
# same priority and older. For each type each part is one range of jobs_pending_type_idx
# (job_type, then claim order), counted from the index: a status read costs the jobs
# ahead (at most :limit), whatever else is queued.
_AHEAD = """SELECT job_type FROM jobs %s
    WHERE status = 'pending' AND job_type {one_of[job_types]} AND %s
    LIMIT :limit"""
_OLDER = (
    "priority = :priority AND created_at <= :created_at AND (created_at < :created_at OR id < :id)"
)


def _ahead(hint: str) -> str:
    higher = _AHEAD % (hint, "priority > :priority")
    older = _AHEAD % (hint, _OLDER)
    return f"""
SELECT job_type, COUNT(*) FROM (
    SELECT job_type FROM ({higher}) AS higher
    UNION ALL
    SELECT job_type FROM ({older}) AS older
) AS ahead GROUP BY job_type
"""


JOBS_AHEAD = Statement(sqlite=_ahead("INDEXED BY jobs_pending_type_idx"), postgres=_ahead(""))

# How long the latest runs of a type took (claim to result), newest first: the rows
# come from jobs_finished_idx, finished since :since.
RECENT_RUNS = Statement("""
SELECT updated_at - claimed_at FROM jobs
WHERE status = 'completed' AND updated_at >= :since AND job_type = :job_type
  AND claimed_at IS NOT NULL
ORDER BY updated_at DESC
LIMIT :limit
""")

# The jobs some runners are running: whose, of what type, since when.
RUNNING_ON = Statement(f"""
SELECT claimed_by, job_type, claimed_at FROM jobs
WHERE claimed_by {{one_of[runner_ids]}} AND status IN {RUNNING}
LIMIT :limit
""")

# Runners heard from since :since (runners_last_seen_idx).
RUNNERS_SEEN = Statement(f"""
SELECT {RUNNER_COLS} FROM runners WHERE last_seen > :since ORDER BY last_seen DESC LIMIT :limit
""")


# --- stored API keys (runpack keys) ------------------------------------------------------
API_KEY_COLS = ", ".join(API_KEY_COLUMNS)
INSERT_API_KEY = Statement(f"""
INSERT INTO api_keys ({API_KEY_COLS}) VALUES ({", ".join(":" + c for c in API_KEY_COLUMNS)})
""")
GET_API_KEY = Statement(f"SELECT {API_KEY_COLS} FROM api_keys WHERE id = :id")
API_KEY_BY_HASH = Statement(
    f"SELECT {API_KEY_COLS} FROM api_keys WHERE secret_sha256 = :secret_sha256"
)
LIST_API_KEYS = Statement(f"SELECT {API_KEY_COLS} FROM api_keys ORDER BY created_at, id")
REVOKE_API_KEY = Statement(f"""
UPDATE api_keys SET revoked_at = :now WHERE id = :id AND revoked_at IS NULL
RETURNING {API_KEY_COLS}
""")
# Several instances may record uses of one key: the time only moves forward.
TOUCH_API_KEY = Statement("""
UPDATE api_keys SET last_used_at = :now
WHERE id = :id AND (last_used_at IS NULL OR last_used_at < :now)
""")


# --- rate buckets shared by instances (runpack.ratelimit_shared) ---------------------
# Take up to :n tokens (one at least, or none) from the bucket :name, refilled for the
# time since it was last counted, in one statement: instances counting on the same
# bucket queue on its row, so none spends a token another took. A new bucket starts
# full. RETURNING: what this statement took, and what is left. (In SET, every column
# named is its value before the update.)
def _take_tokens(least: str, greatest: str, floor: str, num: str) -> str:
    burst, per_ms, now, n = (num.format(p) for p in (":burst", ":per_ms", ":now", ":n"))
    refilled = f"{least}({burst}, b.tokens + {greatest}(0, {now} - b.updated_at) * {per_ms})"
    taken = f"{least}({n}, {floor.format(refilled)})"
    return f"""
INSERT INTO rate_buckets AS b (name, tokens, taken, updated_at)
VALUES (:name, {burst} - {least}({n}, {burst}), {least}({n}, {burst}), :now)
ON CONFLICT (name) DO UPDATE SET
    taken = {taken},
    tokens = {refilled} - {taken},
    updated_at = {greatest}(b.updated_at, :now)
RETURNING taken, tokens
"""


TAKE_TOKENS = Statement(
    # SQLite's MIN and MAX of two are LEAST and GREATEST; the integer part of a number
    # that is not negative is its floor.
    sqlite=_take_tokens("MIN", "MAX", "CAST(({}) AS INTEGER)", "{}"),
    postgres=_take_tokens("LEAST", "GREATEST", "FLOOR({})", "CAST({} AS DOUBLE PRECISION)"),
)
# A token taken for work that was not done after all.
GIVE_BACK_TOKEN = Statement(
    sqlite="UPDATE rate_buckets SET tokens = MIN(:burst, tokens + 1) WHERE name = :name",
    postgres="""
UPDATE rate_buckets SET tokens = LEAST(CAST(:burst AS DOUBLE PRECISION), tokens + 1)
WHERE name = :name
""",
)
# Buckets not counted since :before are full again: as good as none.
DELETE_IDLE_BUCKETS = Statement("DELETE FROM rate_buckets WHERE updated_at < :before")
