-- A ceiling on the priority a stored key may submit (runpack keys create
-- --max-priority): a submit above it is refused. NULL: no ceiling (admin and runner
-- keys). A submit key gets 0 unless it names one, and so do the submit keys made
-- before this version: a key handed out then, perhaps in a public page, could
-- otherwise jump the queue. A holder that needs higher priorities gets a new key
-- made with --max-priority.
ALTER TABLE api_keys ADD COLUMN max_priority INTEGER
    CHECK (max_priority IS NULL OR max_priority BETWEEN 0 AND 1000);
UPDATE api_keys SET max_priority = 0 WHERE role = 'submit';
