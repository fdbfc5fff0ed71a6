-- A runner belongs to the key that registered it: a stored key's id, or 'env' for
-- the environment runner key (every runner registered before owners were kept).
-- Runpack's own runner also holds a secret of its own; only its SHA-256 is kept.
ALTER TABLE runners ADD COLUMN owner TEXT NOT NULL DEFAULT 'env';
ALTER TABLE runners ADD COLUMN secret_sha256 TEXT;
