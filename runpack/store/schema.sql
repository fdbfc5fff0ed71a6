-- Runpack schema: one file, valid on SQLite and PostgreSQL.
-- Timestamps are BIGINT milliseconds since the epoch; JSON is kept as TEXT.
-- New databases run this file; existing ones are upgraded by the ordered
-- forward migrations in runpack/store/migrations/ (see schema_version).

CREATE TABLE IF NOT EXISTS schema_version (
    version    INTEGER NOT NULL PRIMARY KEY,
    applied_at BIGINT  NOT NULL
);

CREATE TABLE IF NOT EXISTS jobs (
    id               TEXT    NOT NULL PRIMARY KEY,
    job_hash         TEXT    NOT NULL UNIQUE,
    job_type         TEXT    NOT NULL,
    input_params     TEXT    NOT NULL,
    status           TEXT    NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'claimed', 'in_progress', 'completed',
                          'failed', 'expired', 'cancelled')),
    priority         INTEGER NOT NULL DEFAULT 0,
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL DEFAULT 3,
    not_before       BIGINT  NOT NULL DEFAULT 0,
    timeout          BIGINT,
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL,
    claimed_by       TEXT,
    claimed_at       BIGINT,
    last_heartbeat   BIGINT,
    progress_current BIGINT,
    progress_total   BIGINT,
    console_output   TEXT,
    output_data      TEXT,
    error_message    TEXT
);

-- The claim query: pending jobs of some types, highest priority, then oldest.
CREATE INDEX IF NOT EXISTS jobs_claim_idx ON jobs (status, job_type, priority DESC, created_at);
-- The admin list (newest first, optionally by status) and runner detail.
CREATE INDEX IF NOT EXISTS jobs_created_idx ON jobs (created_at);
CREATE INDEX IF NOT EXISTS jobs_status_created_idx ON jobs (status, created_at);
CREATE INDEX IF NOT EXISTS jobs_claimed_by_idx ON jobs (claimed_by, created_at);
-- The sweeper: running jobs by last heartbeat.
CREATE INDEX IF NOT EXISTS jobs_heartbeat_idx ON jobs (status, last_heartbeat);

CREATE TABLE IF NOT EXISTS runners (
    id            TEXT   NOT NULL PRIMARY KEY,
    name          TEXT   NOT NULL,
    capabilities  TEXT   NOT NULL,
    registered_at BIGINT NOT NULL,
    last_seen     BIGINT NOT NULL
);

CREATE INDEX IF NOT EXISTS runners_last_seen_idx ON runners (last_seen);

INSERT INTO schema_version (version, applied_at) VALUES (1, 0) ON CONFLICT (version) DO NOTHING;
