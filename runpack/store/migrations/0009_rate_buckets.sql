-- Rate-limit buckets that instances sharing a database count together
-- (runpack.ratelimit_shared; SQLite's one instance counts in memory): tokens left as
-- of updated_at (ms), and how many the last statement took. A bucket not counted
-- for as long as it takes to refill is full again, as good as none: deleted.
CREATE TABLE IF NOT EXISTS rate_buckets (
    name       TEXT             NOT NULL PRIMARY KEY,
    tokens     DOUBLE PRECISION NOT NULL,
    taken      INTEGER          NOT NULL,
    updated_at BIGINT           NOT NULL
);
