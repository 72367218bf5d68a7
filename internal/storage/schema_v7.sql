-- v7: relay batches that arrived before an earlier op of their replica (acked
-- 0 TRANSIT): kept, not applied, until the gap is filled (through the relay or
-- git), then applied in seq order and acked +1. This clone's own record: not
-- an op, does not sync.
CREATE TABLE IF NOT EXISTS transit (
    replica     TEXT NOT NULL,
    first_seq   INTEGER NOT NULL,
    last_seq    INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    ops         TEXT NOT NULL,   -- the batch's ops as JSON (signature checked)
    PRIMARY KEY (replica, first_seq)
) WITHOUT ROWID;
