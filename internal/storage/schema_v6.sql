-- v6: relay batches refused (unknown key, bad signature, an op altered in
-- transit): kept, never applied, listed by `bd conflicts` until dropped.
-- This clone's own record: quarantine is not an op and does not sync.
CREATE TABLE IF NOT EXISTS quarantine (
    id          INTEGER PRIMARY KEY,
    received_ms INTEGER NOT NULL,
    replica     TEXT NOT NULL,   -- the replica the batch claims to come from
    issue_id    TEXT NOT NULL,   -- the first op's issue ('' when unreadable)
    reason      TEXT NOT NULL,
    payload     TEXT NOT NULL    -- the batch as received
);
CREATE INDEX IF NOT EXISTS quarantine_by_issue ON quarantine(issue_id);
