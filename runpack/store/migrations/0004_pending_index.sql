-- The claim and available-job queries walk the pending jobs in claim order
-- (priority, then age) and stop at the first of the runner's types, instead of
-- sorting every pending job of those types on each claim. Only pending rows are
-- indexed, so the index stays as small as the queue.
CREATE INDEX IF NOT EXISTS jobs_pending_idx ON jobs (priority DESC, created_at, id)
    WHERE status = 'pending';
-- It replaces the (status, job_type, …) index, which every claim had to sort.
DROP INDEX IF EXISTS jobs_claim_idx;
