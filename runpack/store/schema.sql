-- Runpack schema: one file, valid on SQLite and PostgreSQL.
-- Timestamps are BIGINT milliseconds since the epoch; JSON is kept as TEXT.
-- What the engines write differently (triggers) is in the migrations' engine twins
-- (migrations/NNNN_name.sqlite.sql, .postgres.sql), run right after this file.
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

-- The claim query: pending jobs in claim order (highest priority, then oldest); it
-- stops at the first of the runner's types. Only pending rows are in it.
CREATE INDEX IF NOT EXISTS jobs_pending_idx ON jobs (priority DESC, created_at, id)
    WHERE status = 'pending';
-- Where a pending job stands: the jobs of a type ahead of it, counted from the index.
CREATE INDEX IF NOT EXISTS jobs_pending_type_idx ON jobs (job_type, priority DESC, created_at, id)
    WHERE status = 'pending';
-- The admin list (newest first, optionally by status) and runner detail.
CREATE INDEX IF NOT EXISTS jobs_created_idx ON jobs (created_at);
CREATE INDEX IF NOT EXISTS jobs_status_created_idx ON jobs (status, created_at);
CREATE INDEX IF NOT EXISTS jobs_claimed_by_idx ON jobs (claimed_by, created_at)
    WHERE claimed_by IS NOT NULL;
-- The sweeper: running jobs by last heartbeat (only running jobs are in it).
CREATE INDEX IF NOT EXISTS jobs_running_idx ON jobs (last_heartbeat)
    WHERE status IN ('claimed', 'in_progress');
-- Retention: finished jobs of a state, oldest first (runpack.retention); only
-- finished jobs are in it.
CREATE INDEX IF NOT EXISTS jobs_finished_idx ON jobs (status, updated_at)
    WHERE status IN ('completed', 'failed', 'expired', 'cancelled');

-- Jobs per state, kept by triggers on jobs (migrations/0008_job_counts.*.sql),
-- so /api/admin/stats reads a few rows instead of counting every stored job.
CREATE TABLE IF NOT EXISTS job_counts (
    status TEXT   NOT NULL PRIMARY KEY,
    n      BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS runners (
    id            TEXT   NOT NULL PRIMARY KEY,
    name          TEXT   NOT NULL,
    capabilities  TEXT   NOT NULL,
    registered_at BIGINT NOT NULL,
    last_seen     BIGINT NOT NULL,
    -- The key that registered it: a stored key's id, or 'env' (the environment key).
    owner         TEXT   NOT NULL DEFAULT 'env',
    -- SHA-256 of the runner's own secret (Runpack's runner); NULL: the key alone.
    secret_sha256 TEXT,
    -- The instance whose socket the runner is on (NULL: none), and that connection's
    -- transport and concurrency: written when it connects and disconnects.
    instance      TEXT,
    transport     TEXT,
    concurrency   INTEGER,
    -- The handler versions it declared, by job type (a JSON object; NULL: none).
    versions      TEXT,
    -- The images it allows container jobs (a JSON array of patterns; NULL: no list,
    -- any image; migrations/0013_runner_images.sql).
    images        TEXT
);

CREATE INDEX IF NOT EXISTS runners_last_seen_idx ON runners (last_seen);

-- The server instances on this database (migrations/0011_instances.sql): each
-- refreshes last_seen while it runs and sets stopped_at when it stops.
CREATE TABLE IF NOT EXISTS instances (
    id         TEXT   NOT NULL PRIMARY KEY,
    host       TEXT   NOT NULL,
    data_dir   TEXT   NOT NULL,
    started_at BIGINT NOT NULL,
    last_seen  BIGINT NOT NULL,
    stopped_at BIGINT
);

-- The current version of each job type whose runners declare one: the highest
-- declared, in natural order; it only moves up (migrations/0012_job_type_versions.sql).
CREATE TABLE IF NOT EXISTS job_type_versions (
    job_type   TEXT   NOT NULL PRIMARY KEY,
    version    TEXT   NOT NULL,
    updated_at BIGINT NOT NULL
);

-- API keys beyond the three environment keys (runpack keys create / list / revoke).
-- Only the SHA-256 hex of a secret is kept. The secrets are 256-bit random strings,
-- so a fast unsalted hash is enough: there is no dictionary or brute force to slow
-- down (that is what bcrypt or argon2 are for, with human-chosen passwords), and a
-- token is then found with one probe of the UNIQUE index, whose timing says nothing
-- about any stored secret. job_types and origins are JSON arrays of text, NULL for
-- no limit. rate is new jobs per RUNPACK_RATE_WINDOW, NULL for the default limits.
-- max_priority is the highest priority the key may submit, NULL for no ceiling (a
-- submit key gets 0 unless it names one).
CREATE TABLE IF NOT EXISTS api_keys (
    id            TEXT    NOT NULL PRIMARY KEY,
    name          TEXT    NOT NULL DEFAULT '',
    role          TEXT    NOT NULL CHECK (role IN ('submit', 'runner', 'admin')),
    secret_sha256 TEXT    NOT NULL UNIQUE,
    job_types     TEXT,
    origins       TEXT,
    rate          INTEGER CHECK (rate IS NULL OR rate >= 0),
    created_at    BIGINT  NOT NULL,
    last_used_at  BIGINT,
    revoked_at    BIGINT,
    max_priority  INTEGER CHECK (max_priority IS NULL OR max_priority BETWEEN 0 AND 1000)
);

-- Rate-limit buckets counted by every instance on a shared database (migration 0009).
CREATE TABLE IF NOT EXISTS rate_buckets (
    name       TEXT             NOT NULL PRIMARY KEY,
    tokens     DOUBLE PRECISION NOT NULL,
    taken      INTEGER          NOT NULL,
    updated_at BIGINT           NOT NULL
);

INSERT INTO schema_version (version, applied_at) VALUES (1, 0) ON CONFLICT (version) DO NOTHING;
INSERT INTO schema_version (version, applied_at) VALUES (2, 0) ON CONFLICT (version) DO NOTHING;
INSERT INTO schema_version (version, applied_at) VALUES (3, 0) ON CONFLICT (version) DO NOTHING;
INSERT INTO schema_version (version, applied_at) VALUES (4, 0) ON CONFLICT (version) DO NOTHING;
INSERT INTO schema_version (version, applied_at) VALUES (5, 0) ON CONFLICT (version) DO NOTHING;
INSERT INTO schema_version (version, applied_at) VALUES (6, 0) ON CONFLICT (version) DO NOTHING;
INSERT INTO schema_version (version, applied_at) VALUES (7, 0) ON CONFLICT (version) DO NOTHING;
INSERT INTO schema_version (version, applied_at) VALUES (8, 0) ON CONFLICT (version) DO NOTHING;
INSERT INTO schema_version (version, applied_at) VALUES (9, 0) ON CONFLICT (version) DO NOTHING;
INSERT INTO schema_version (version, applied_at) VALUES (10, 0) ON CONFLICT (version) DO NOTHING;
INSERT INTO schema_version (version, applied_at) VALUES (11, 0) ON CONFLICT (version) DO NOTHING;
INSERT INTO schema_version (version, applied_at) VALUES (12, 0) ON CONFLICT (version) DO NOTHING;
INSERT INTO schema_version (version, applied_at) VALUES (13, 0) ON CONFLICT (version) DO NOTHING;
