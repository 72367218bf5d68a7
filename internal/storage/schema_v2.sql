-- Schema v2: what git (or the relay) delivers from other replicas.

-- Foreign ops stamped too far in the future (clock skew): kept, not applied, until
-- local time catches up; listed by `bd conflicts`.
CREATE TABLE held_ops (
    op_id    TEXT PRIMARY KEY,
    replica  TEXT NOT NULL,
    wall_ms  INTEGER NOT NULL,   -- the op's hlc wall time
    held_ms  INTEGER NOT NULL,   -- local time when it was held
    body     TEXT NOT NULL
) WITHOUT ROWID;

-- How far each op file has been read: the byte length and count of its whole
-- lines, and a hash of the last one. Content, not mtime, says whether the file moved on.
CREATE TABLE op_file_marks (
    replica     TEXT PRIMARY KEY,
    len         INTEGER NOT NULL,
    lines       INTEGER NOT NULL,
    last_line   TEXT NOT NULL   -- first 32 hex digits of SHA-256 of its bytes
) WITHOUT ROWID;
