-- The server instances on this database. Each writes its row when it starts,
-- refreshes last_seen every RUNPACK_PRESENCE_INTERVAL and sets stopped_at when it
-- stops; a row not refreshed for three intervals is an instance that died. The
-- rows say how many instances share the runners (rebalancing) and where each keeps
-- its figures (runpack gc reads data_dir); rows of instances gone for a week go.
CREATE TABLE IF NOT EXISTS instances (
    id         TEXT   NOT NULL PRIMARY KEY,
    host       TEXT   NOT NULL,
    data_dir   TEXT   NOT NULL,
    started_at BIGINT NOT NULL,
    last_seen  BIGINT NOT NULL,
    stopped_at BIGINT
);
-- The instance whose socket a runner is on (NULL: none), and that connection's
-- transport and concurrency: written when the runner connects and disconnects,
-- never per job.
ALTER TABLE runners ADD COLUMN instance TEXT;
ALTER TABLE runners ADD COLUMN transport TEXT;
ALTER TABLE runners ADD COLUMN concurrency INTEGER;
