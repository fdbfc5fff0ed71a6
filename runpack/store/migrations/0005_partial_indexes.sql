-- The sweeper reads only running jobs, retention only finished ones, and a
-- runner's jobs are looked up by runner: their indexes hold only those rows, so a
-- queued job, and every step of a job but the one that enters or leaves those
-- states, no longer changes them.
DROP INDEX IF EXISTS jobs_heartbeat_idx;
CREATE INDEX IF NOT EXISTS jobs_running_idx ON jobs (last_heartbeat)
    WHERE status IN ('claimed', 'in_progress');
DROP INDEX IF EXISTS jobs_status_updated_idx;
CREATE INDEX IF NOT EXISTS jobs_finished_idx ON jobs (status, updated_at)
    WHERE status IN ('completed', 'failed', 'expired', 'cancelled');
DROP INDEX IF EXISTS jobs_claimed_by_idx;
CREATE INDEX IF NOT EXISTS jobs_claimed_by_idx ON jobs (claimed_by, created_at)
    WHERE claimed_by IS NOT NULL;
