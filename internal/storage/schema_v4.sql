-- Schema v4: two creates of one id are two issues (see merge::partition).
-- `ops.issue_id` is now the issue an op belongs to, which for the ops of a
-- displaced create is `<id>~<suffix>` while the op names `<id>`.

-- Ids that two or more creates used: the ones whose issue lists an `id` notice
-- until the collision is acknowledged.
CREATE TABLE id_collisions (
    wire TEXT PRIMARY KEY
) WITHOUT ROWID;
