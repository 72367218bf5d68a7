-- Schema v3: exactly-once writes.

-- Every write request that carried a request id, kept for a window (see
-- `storage::sqlite::REQUEST_ID_WINDOW_MS`). A request whose id is here is not
-- applied again: its caller gets `outcome` back. `outcome` NULL means the id was
-- abandoned: its caller was told "not applied", so it never will be.
CREATE TABLE requests (
    id          TEXT PRIMARY KEY,
    digest      TEXT NOT NULL,      -- of the request, to refuse an id reused for another
    created_ms  INTEGER NOT NULL,
    outcome     TEXT                -- the Response's JSON; NULL: abandoned
) WITHOUT ROWID;
CREATE INDEX requests_by_time ON requests(created_ms);

-- Conflicts on the fields of deleted issues could never be resolved (only the
-- `deleted` conflict can be, and the fold no longer produces the others).
DELETE FROM conflicts
WHERE field <> 'deleted' AND issue_id IN (SELECT id FROM tombstones);
