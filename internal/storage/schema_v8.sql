-- v8: claims with a time limit (`bd claim --ttl`). `claim_expires_ms` is the
-- issue's `claim_expires_at`: when the assignee's claim lapses unless they
-- write to the issue again. Derived from the ops like every other column.
-- (The column is added by `schema.rs` when missing: ALTER TABLE has no IF NOT
-- EXISTS, and a database set back to an older version is migrated again.)
CREATE INDEX IF NOT EXISTS issues_claim_expiry ON issues(claim_expires_ms)
    WHERE claim_expires_ms IS NOT NULL;

