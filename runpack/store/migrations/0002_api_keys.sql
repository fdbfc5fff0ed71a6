-- API keys beyond the three environment keys (runpack keys create / list / revoke).
-- Only the SHA-256 hex of a secret is kept. The secrets are 256-bit random strings,
-- so a fast unsalted hash is enough: there is no dictionary or brute force to slow
-- down (that is what bcrypt or argon2 are for, with human-chosen passwords), and a
-- token is then found with one probe of the UNIQUE index, whose timing says nothing
-- about any stored secret. job_types and origins are JSON arrays of text, NULL for
-- no limit. rate is requests per RUNPACK_RATE_WINDOW, NULL for the per-IP limits.
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
    revoked_at    BIGINT
);
