-- v5: request ids kept in arrival order. An insert appends to the table's last
-- page (the id index is the one random page); forgetting ids older than the
-- window takes rows from the front, in batches, instead of a random row and an
-- index page on every write.
CREATE TABLE requests_v5 (
    seq         INTEGER PRIMARY KEY,  -- arrival order
    id          TEXT NOT NULL UNIQUE,
    digest      TEXT NOT NULL,        -- of the request, to refuse an id reused for another
    created_ms  INTEGER NOT NULL,
    outcome     TEXT                  -- the Response's JSON; NULL: abandoned
);
INSERT INTO requests_v5(id, digest, created_ms, outcome)
    SELECT id, digest, created_ms, outcome FROM requests ORDER BY created_ms;
DROP TABLE requests;
ALTER TABLE requests_v5 RENAME TO requests;
