-- v9: `held` = 1 for an epic with a child that is not closed: not work to
-- take (its children are), so not in the ready queue. Maintained with the
-- rows (`row::refresh_held`), and part of the ready index's condition, so
-- `bd ready` never walks past the epics of deep trees (at 100,000 issues in
-- trees of depth 6, a third are epics: 23 ms for ten ready ones before).
-- The column is added by `schema.rs` when missing.
DROP INDEX IF EXISTS issues_ready;
CREATE INDEX issues_ready ON issues(priority, created_ms, id)
    WHERE blocked = 0 AND held = 0 AND status IN ('open', 'in_progress');
