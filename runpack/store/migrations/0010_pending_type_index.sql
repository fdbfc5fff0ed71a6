-- Where a pending job stands (runpack.standing): the pending jobs of a type ahead of
-- it in claim order are one range of this index, so a status read counts them from
-- the index alone, however many pending jobs of other types are interleaved. Only
-- pending rows are indexed, so the index stays as small as the queue.
CREATE INDEX IF NOT EXISTS jobs_pending_type_idx ON jobs (job_type, priority DESC, created_at, id)
    WHERE status = 'pending';
