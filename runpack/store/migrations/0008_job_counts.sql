-- Jobs per state, kept by triggers on jobs (the engine's twin of this file), so
-- /api/admin/stats reads a few rows instead of counting every stored job. The
-- twins create the triggers first, then count the jobs already there.
CREATE TABLE IF NOT EXISTS job_counts (
    status TEXT   NOT NULL PRIMARY KEY,
    n      BIGINT NOT NULL
);
