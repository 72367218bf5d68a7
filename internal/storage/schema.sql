-- Schema v1. Materialised tables are derived from `ops`; see DAEMON_DESIGN.md.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- Every op ever recorded or received; `body` is the op's canonical JSON line.
CREATE TABLE ops (
    pos      INTEGER PRIMARY KEY,          -- local arrival order
    op_id    TEXT NOT NULL UNIQUE,
    issue_id TEXT NOT NULL,
    replica  TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    body     TEXT NOT NULL
);
CREATE INDEX ops_by_issue ON ops(issue_id);
CREATE INDEX ops_by_replica ON ops(replica, seq);

-- Live issues. `body` is the issue JSON without comments; the other columns exist
-- for filtering and sorting. `blocked` is maintained incrementally (see sqlite.rs).
CREATE TABLE issues (
    id          TEXT PRIMARY KEY,
    title       TEXT NOT NULL,
    description TEXT NOT NULL,
    status      TEXT NOT NULL,
    priority    INTEGER NOT NULL,
    issue_type  TEXT NOT NULL,
    assignee    TEXT,
    created_ms  INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL,
    closed_ms   INTEGER,
    blocked     INTEGER NOT NULL DEFAULT 0,
    conflicted  TEXT NOT NULL DEFAULT '',  -- comma-separated conflicted fields
    body        TEXT NOT NULL
);
-- The two everyday listings, each in its default order (priority, age, id), so a
-- LIMIT reads only the first rows. Queries name them with INDEXED BY (see query).
CREATE INDEX issues_ready ON issues(priority, created_ms, id)
    WHERE blocked = 0 AND status IN ('open', 'in_progress');
CREATE INDEX issues_not_closed ON issues(priority, created_ms, id)
    WHERE status <> 'closed';
CREATE INDEX issues_by_status ON issues(status, priority, created_ms);

CREATE TABLE labels (
    issue_id TEXT NOT NULL REFERENCES issues(id) ON DELETE CASCADE,
    label    TEXT NOT NULL,
    PRIMARY KEY (issue_id, label)
) WITHOUT ROWID;
CREATE INDEX labels_by_label ON labels(label, issue_id);

CREATE TABLE deps (
    issue_id      TEXT NOT NULL REFERENCES issues(id) ON DELETE CASCADE,
    depends_on_id TEXT NOT NULL,   -- may name an issue not (yet) known here
    type          TEXT NOT NULL,
    PRIMARY KEY (issue_id, depends_on_id, type)
) WITHOUT ROWID;
CREATE INDEX deps_by_target ON deps(depends_on_id, type);

CREATE TABLE comments (
    issue_id   TEXT NOT NULL REFERENCES issues(id) ON DELETE CASCADE,
    id         TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    body       TEXT NOT NULL,
    PRIMARY KEY (issue_id, id)
) WITHOUT ROWID;

CREATE TABLE conflicts (
    issue_id TEXT NOT NULL,
    field    TEXT NOT NULL,
    body     TEXT NOT NULL,
    PRIMARY KEY (issue_id, field)
) WITHOUT ROWID;

-- Ids of deleted issues (their ops stay in `ops`).
CREATE TABLE tombstones (
    id TEXT PRIMARY KEY
) WITHOUT ROWID;
