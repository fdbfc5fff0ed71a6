-- The image allow list a runner offering the container job type sent (a JSON array
-- of patterns; NULL: none, it may be given any container job), so that any instance
-- claims over HTTP for it by its list and shows it (docs/containers.md).
ALTER TABLE runners ADD COLUMN images TEXT;
