-- The current version of each job type whose runners declare one (docs/runners.md):
-- the highest any runner declared, in natural order. It only moves up, each change
-- one conditional statement, so every instance hashes a job type's submits the same
-- way. The versions a runner declared, by job type (a JSON object; NULL: none), so
-- that any instance can tell whether the runner may take a job type's jobs.
CREATE TABLE IF NOT EXISTS job_type_versions (
    job_type   TEXT   NOT NULL PRIMARY KEY,
    version    TEXT   NOT NULL,
    updated_at BIGINT NOT NULL
);
ALTER TABLE runners ADD COLUMN versions TEXT;
