-- The PostgreSQL part of schema.sql: as migrations/0008_job_counts.postgres.sql.
-- Concurrent transactions must not queue on a state's row: a job's change only
-- appends +1/-1 rows to job_count_deltas (no index, no lock), which the sweeper
-- folds into job_counts every pass (FOLD_JOB_COUNTS); a read adds what is not
-- folded yet (JOB_COUNTS_PG).
CREATE TABLE IF NOT EXISTS job_count_deltas (
    status TEXT    NOT NULL,
    delta  INTEGER NOT NULL
);
CREATE OR REPLACE FUNCTION jobs_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO job_count_deltas (status, delta) VALUES (NEW.status, 1);
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO job_count_deltas (status, delta) VALUES (OLD.status, -1);
    ELSE
        INSERT INTO job_count_deltas (status, delta) VALUES (OLD.status, -1), (NEW.status, 1);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_count_insert_delete AFTER INSERT OR DELETE ON jobs
    FOR EACH ROW EXECUTE FUNCTION jobs_count();
CREATE TRIGGER jobs_count_update AFTER UPDATE OF status ON jobs
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION jobs_count();
