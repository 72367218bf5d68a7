//! From ops to rows: folding an issue's stored ops into its doc, writing a
//! materialised issue's rows, keeping the `blocked` flags, and the hash of the
//! whole materialised state.

use crate::merge::{IssueDoc, Materialised};
use crate::model::Op;
use crate::{Error, ErrorKind, Result};
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashSet, VecDeque};

/// Loads and folds every stored op of `id`.
pub fn load_doc(conn: &Connection, id: &str) -> Result<IssueDoc> {
    let mut doc = IssueDoc::new(id);
    // No ORDER BY: the fold is order-independent (see merge).
    let mut stmt = conn.prepare_cached("SELECT body FROM ops WHERE issue_id = ?1")?;
    let mut rows = stmt.query(params![id])?;
    while let Some(row) = rows.next()? {
        let body: String = row.get(0)?;
        doc.apply(&parse_stored_op(&body)?);
    }
    Ok(doc)
}

/// Parses an op body from the op table.
pub fn parse_stored_op(body: &str) -> Result<Op> {
    serde_json::from_str(body).map_err(|e| {
        Error::new(
            ErrorKind::Corrupt,
            format!("unreadable op in the database: {e}"),
        )
        .hint("`bd rebuild` makes a new database from the op files")
    })
}

/// Writes the rows of one materialised issue. `fresh`: the issue had no rows before
/// this transaction, so there is nothing to delete first.
pub(in crate::storage) fn write_rows(
    conn: &Connection,
    mut m: Materialised,
    fresh: bool,
) -> Result<()> {
    // The row's body is the issue without comments (they have their own rows).
    let comments = std::mem::take(&mut m.issue.comments);
    let issue = &m.issue;
    let conflicted: Vec<&str> = m.conflicts.iter().map(|c| c.field.as_str()).collect();
    // Only what changed is written: an unchanged row of a side table, and an
    // index whose columns keep their values, cost no page (each page a write
    // touches is a WAL frame and part of the commit's sync).
    let conflict_rows = m
        .conflicts
        .iter()
        .map(|c| Ok((c.field.clone(), serde_json::to_string(c)?)))
        .collect::<Result<BTreeSet<(String, String)>>>()?;
    if m.deleted {
        // Its parents lose a child: they may no longer be held (see
        // `refresh_held`).
        let parents: Vec<String> = if fresh {
            Vec::new()
        } else {
            conn.prepare_cached(
                "SELECT depends_on_id FROM deps WHERE issue_id = ?1 AND type = 'parent-child'",
            )?
            .query_map(params![issue.id], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?
        };
        if !fresh {
            conn.prepare_cached("DELETE FROM conflicts WHERE issue_id = ?1")?
                .execute(params![issue.id])?;
        }
        for (field, body) in &conflict_rows {
            conn.prepare_cached("INSERT INTO conflicts(issue_id, field, body) VALUES (?1, ?2, ?3)")?
                .execute(params![issue.id, field, body])?;
        }
        conn.prepare_cached("DELETE FROM issues WHERE id = ?1")?
            .execute(params![issue.id])?;
        conn.prepare_cached("INSERT OR IGNORE INTO tombstones(id) VALUES (?1)")?
            .execute(params![issue.id])?;
        for p in &parents {
            refresh_held(conn, p)?;
        }
        return Ok(());
    }
    sync_rows(
        conn,
        fresh,
        &issue.id,
        conflict_rows,
        "SELECT field, body FROM conflicts WHERE issue_id = ?1",
        "DELETE FROM conflicts WHERE issue_id = ?1 AND field = ?2 AND body = ?3",
        "INSERT INTO conflicts(issue_id, field, body) VALUES (?1, ?2, ?3)",
    )?;
    let ms = |s: &str| crate::clock::parse_rfc3339(s);
    let created_ms = ms(&issue.created_at).unwrap_or(m.updated_ms);
    let body = serde_json::to_string(issue)?;
    let claim_expires_ms = issue.claim_expires_at.as_deref().and_then(ms);
    // The ordering indexes cover status, priority and created_ms: when those
    // keep their values, an update that does not name them leaves the indexes
    // alone (SQLite rewrites an index's entry whenever its columns are SET).
    let same_keys = !fresh
        && conn
            .prepare_cached("SELECT status, priority, created_ms FROM issues WHERE id = ?1")?
            .query_row(params![issue.id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
            })
            .optional()?
            .is_some_and(|(status, priority, created)| {
                status == issue.status.as_str() && priority == issue.priority && created == created_ms
            });
    if same_keys {
        conn.prepare_cached(
            "UPDATE issues SET title = ?2, description = ?3, issue_type = ?4, assignee = ?5,
                               updated_ms = ?6, closed_ms = ?7, conflicted = ?8, body = ?9,
                               claim_expires_ms = ?10
             WHERE id = ?1",
        )?
        .execute(params![
            issue.id,
            issue.title,
            issue.description,
            issue.issue_type.as_str(),
            issue.assignee,
            m.updated_ms,
            issue.closed_at.as_deref().and_then(ms),
            conflicted.join(","),
            body,
            claim_expires_ms,
        ])?;
    } else {
        conn.prepare_cached(
            "INSERT INTO issues(id, title, description, status, priority, issue_type, assignee,
                                created_ms, updated_ms, closed_ms, conflicted, body,
                                claim_expires_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
             ON CONFLICT(id) DO UPDATE SET
               title = excluded.title, description = excluded.description,
               status = excluded.status, priority = excluded.priority,
               issue_type = excluded.issue_type, assignee = excluded.assignee,
               created_ms = excluded.created_ms, updated_ms = excluded.updated_ms,
               closed_ms = excluded.closed_ms, conflicted = excluded.conflicted,
               body = excluded.body, claim_expires_ms = excluded.claim_expires_ms",
        )?
        .execute(params![
            issue.id,
            issue.title,
            issue.description,
            issue.status.as_str(),
            issue.priority,
            issue.issue_type.as_str(),
            issue.assignee,
            created_ms,
            m.updated_ms,
            issue.closed_at.as_deref().and_then(ms),
            conflicted.join(","),
            body,
            claim_expires_ms,
        ])?;
    }
    sync_rows(
        conn,
        fresh,
        &issue.id,
        issue.labels.iter().map(|l| (l.clone(), String::new())).collect(),
        "SELECT label, '' FROM labels WHERE issue_id = ?1",
        "DELETE FROM labels WHERE issue_id = ?1 AND label = ?2 AND ?3 = ''",
        "INSERT INTO labels(issue_id, label) SELECT ?1, ?2 WHERE ?3 = ''",
    )?;
    let old_edges = sync_rows(
        conn,
        fresh,
        &issue.id,
        issue
            .dependencies
            .iter()
            .map(|d| (d.depends_on_id.clone(), d.dep_type.as_str().to_string()))
            .collect(),
        "SELECT depends_on_id, type FROM deps WHERE issue_id = ?1",
        "DELETE FROM deps WHERE issue_id = ?1 AND depends_on_id = ?2 AND type = ?3",
        "INSERT INTO deps(issue_id, depends_on_id, type) VALUES (?1, ?2, ?3)",
    )?;
    // The parents it had and has: one that lost or gained a child, or whose
    // child changed status, may change whether it is held.
    let parent_child = crate::model::DepType::ParentChild.as_str();
    let parents: BTreeSet<&str> = old_edges
        .iter()
        .filter(|(_, t)| t == parent_child)
        .map(|(p, _)| p.as_str())
        .chain(
            issue
                .dependencies
                .iter()
                .filter(|d| d.dep_type == crate::model::DepType::ParentChild)
                .map(|d| d.depends_on_id.as_str()),
        )
        .collect();
    // A new row starts unheld; only an epic can be held.
    if !fresh || issue.issue_type == crate::model::IssueType::Epic {
        refresh_held(conn, &issue.id)?;
    }
    for p in &parents {
        refresh_held(conn, p)?;
    }
    if m.late && !fresh {
        // A comment folded in before its op turned out late is taken out.
        let mut stmt = conn.prepare_cached("SELECT id FROM comments WHERE issue_id = ?1")?;
        let stored: Vec<String> = stmt
            .query_map(params![issue.id], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for id in stored.iter().filter(|id| !comments.iter().any(|c| &c.id == *id)) {
            conn.prepare_cached("DELETE FROM comments WHERE issue_id = ?1 AND id = ?2")?
                .execute(params![issue.id, id])?;
        }
    }
    let mut add_comment = conn.prepare_cached(
        "INSERT OR IGNORE INTO comments(issue_id, id, created_ms, body) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for c in &comments {
        add_comment.execute(params![
            issue.id,
            c.id,
            ms(&c.created_at).unwrap_or(0),
            serde_json::to_string(c)?
        ])?;
    }
    Ok(())
}

/// Makes an issue's rows in a side table (two text columns besides the issue
/// id) equal `want`: deletes the rows it no longer has and inserts the new
/// ones, leaving unchanged rows (and their index entries) untouched. Returns
/// the rows it had.
fn sync_rows(
    conn: &Connection,
    fresh: bool,
    id: &str,
    want: BTreeSet<(String, String)>,
    select: &str,
    delete: &str,
    insert: &str,
) -> Result<BTreeSet<(String, String)>> {
    let have: BTreeSet<(String, String)> = if fresh {
        BTreeSet::new()
    } else {
        conn.prepare_cached(select)?
            .query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?
    };
    for (a, b) in have.difference(&want) {
        conn.prepare_cached(delete)?.execute(params![id, a, b])?;
    }
    for (a, b) in want.difference(&have) {
        conn.prepare_cached(insert)?.execute(params![id, a, b])?;
    }
    Ok(have)
}

/// The blocking rule, written once for both the incremental and the bulk
/// computation: the issue whose id is the SQL expression `$issue` has a `blocks`
/// edge to an existing issue that is not closed ...
macro_rules! blocked_by_blocker {
    ($issue:literal) => {
        concat!(
            "EXISTS(SELECT 1 FROM deps d JOIN issues b ON b.id = d.depends_on_id WHERE d.issue_id = ",
            $issue,
            " AND d.type = 'blocks' AND b.status <> 'closed')"
        )
    };
}

/// ... or a parent-child edge to a parent that is blocked or neither open nor in
/// progress.
macro_rules! blocked_by_parent {
    ($issue:literal) => {
        concat!(
            "EXISTS(SELECT 1 FROM deps d JOIN issues p ON p.id = d.depends_on_id WHERE d.issue_id = ",
            $issue,
            " AND d.type = 'parent-child' AND (p.blocked = 1 OR p.status NOT IN ('open', 'in_progress')))"
        )
    };
}

/// Whether the issue whose id is the SQL expression `$issue` is held: an
/// epic with a child that is not closed (work to take is its children).
macro_rules! held {
    ($issue:literal) => {
        concat!(
            "(issue_type = 'epic' AND EXISTS(SELECT 1 FROM deps d JOIN issues c ON c.id = d.issue_id WHERE d.depends_on_id = ",
            $issue,
            " AND d.type = 'parent-child' AND c.status <> 'closed'))"
        )
    };
}

/// Sets `held` for `id` (an epic with a child that is not closed), writing
/// the row only when it changes.
pub(in crate::storage) fn refresh_held(conn: &Connection, id: &str) -> Result<()> {
    conn.prepare_cached(concat!(
        "UPDATE issues SET held = ",
        held!("issues.id"),
        " WHERE id = ?1 AND held <> ",
        held!("issues.id")
    ))?
    .execute(params![id])?;
    Ok(())
}

/// Sets every issue's `held` flag from scratch (after a bulk load, and when
/// the column is added).
pub(in crate::storage) fn recompute_all_held(conn: &Connection) -> Result<()> {
    conn.execute(concat!("UPDATE issues SET held = ", held!("issues.id")), [])?;
    Ok(())
}

/// Sets every issue's `blocked` flag from scratch (after a bulk load): first the
/// `blocks` edges and loops of parents, then parent-child blocking spread down
/// the tree one level per pass until nothing changes. The same fixed point the incremental
/// [`refresh_blocked`] maintains; the passes are bounded by the depth of the
/// parent-child tree (and by a budget, should imported data hold a cycle).
pub(super) fn recompute_all_blocked(conn: &Connection) -> Result<()> {
    conn.execute(
        concat!(
            "UPDATE issues SET blocked = ",
            blocked_by_blocker!("issues.id")
        ),
        [],
    )?;
    let mut in_loop = conn.prepare("UPDATE issues SET blocked = 1 WHERE id = ?1")?;
    for id in parent_loops(conn)? {
        in_loop.execute([id])?;
    }
    for _ in 0..10_000 {
        let changed = conn.execute(
            concat!(
                "UPDATE issues SET blocked = 1 WHERE blocked = 0 AND ",
                blocked_by_parent!("issues.id")
            ),
            [],
        )?;
        if changed == 0 {
            break;
        }
    }
    Ok(())
}

/// Re-evaluates `blocked` for `seeds` and, transitively, for whatever depends on an
/// issue whose flag or status may have changed.
pub(in crate::storage) fn refresh_blocked(
    conn: &Connection,
    seeds: BTreeSet<String>,
) -> Result<()> {
    // The stored flag and the freshly computed one, in one statement.
    let mut get = conn.prepare_cached(concat!(
        "SELECT i.blocked, ",
        blocked_by_blocker!("i.id"),
        " OR ",
        blocked_by_parent!("i.id"),
        ", (SELECT d.depends_on_id FROM deps d WHERE d.issue_id = i.id AND d.type = 'parent-child' LIMIT 1)",
        " FROM issues i WHERE i.id = ?1"
    ))?;
    let mut parent_of = conn.prepare_cached(
        "SELECT depends_on_id FROM deps WHERE issue_id = ?1 AND type = 'parent-child' LIMIT 1",
    )?;
    let mut set = conn.prepare_cached("UPDATE issues SET blocked = ?2 WHERE id = ?1")?;
    // `+type`: filter the edge type on the index entries rather than look each
    // type up through the index. An indexed `IN` list makes SQLite build an
    // ephemeral table (with its own page cache) on every run: ~9k instructions
    // of memset alone per refreshed issue.
    let mut dependents = conn.prepare_cached(
        "SELECT issue_id FROM deps WHERE depends_on_id = ?1 AND +type IN ('blocks', 'parent-child')",
    )?;
    let mut pending_seeds: HashSet<String> = seeds.iter().cloned().collect();
    let mut queue: VecDeque<String> = seeds.into_iter().collect();
    // Gating edges form a DAG (cycles are refused), so this terminates; the budget
    // bounds the work even if imported data holds a cycle.
    let mut budget = 1_000_000usize;
    while let Some(id) = queue.pop_front() {
        budget = budget.saturating_sub(1);
        if budget == 0 {
            break;
        }
        let was_seed = pending_seeds.remove(&id);
        let flags: Option<(bool, bool, Option<String>)> = get
            .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        let changed = match flags {
            Some((old, new, parent)) => {
                let new = new
                    || match parent {
                        Some(p) => in_parent_loop(&mut parent_of, &id, p)?,
                        None => false,
                    };
                if new != old {
                    set.execute(params![id, new])?;
                }
                new != old
            }
            None => false,
        };
        if changed || was_seed {
            let rows = dependents.query_map(params![id], |r| r.get::<_, String>(0))?;
            for dep in rows {
                queue.push_back(dep?);
            }
        }
    }
    Ok(())
}

/// Whether `id`, whose parent is `parent`, lies in a loop of parents (moves
/// that crossed on two clones: x under y on one, y under x on the other).
/// An issue in such a loop waits for itself: it is blocked, and so is
/// everything under it. (Without this rule the loop's flags would keep
/// whatever they had when it formed, which differs between clones.)
fn in_parent_loop(parent_of: &mut rusqlite::CachedStatement<'_>, id: &str, parent: String) -> Result<bool> {
    let mut seen: HashSet<String> = HashSet::new();
    let mut at = parent;
    while at != id {
        if !seen.insert(at.clone()) {
            return Ok(false); // a loop above, without `id`: its parent is blocked anyway
        }
        match parent_of
            .query_row(params![at], |r| r.get::<_, String>(0))
            .optional()?
        {
            Some(p) => at = p,
            None => return Ok(false),
        }
    }
    Ok(true)
}

/// The issues in loops of parents (each issue has one parent row at most:
/// the rows follow the parent the fold shows).
fn parent_loops(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT issue_id, depends_on_id FROM deps WHERE type = 'parent-child'")?;
    let parent: std::collections::HashMap<String, String> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    // Walk up from each issue; a walk that meets itself closes a loop.
    let mut done: HashSet<&str> = HashSet::new();
    let mut out = Vec::new();
    for start in parent.keys() {
        let mut path: Vec<&str> = Vec::new();
        let mut on_path: HashSet<&str> = HashSet::new();
        let mut at = start.as_str();
        loop {
            if done.contains(at) {
                break;
            }
            if on_path.contains(at) {
                let from = path.iter().position(|p| *p == at).unwrap_or(0);
                out.extend(path[from..].iter().map(|p| p.to_string()));
                break;
            }
            path.push(at);
            on_path.insert(at);
            match parent.get(at) {
                Some(p) => at = p.as_str(),
                None => break,
            }
        }
        done.extend(path);
    }
    Ok(out)
}

/// SHA-256 (hex) of the whole materialised state: issues with comments, conflicts
/// and tombstones, in id order. Equal on every replica that holds the same ops.
pub fn state_hash(conn: &Connection) -> Result<String> {
    let mut h = Sha256::new();
    for (sql, tag) in [
        (
            "SELECT id || char(31) || body FROM issues ORDER BY id",
            b'i',
        ),
        (
            "SELECT issue_id || char(31) || id || char(31) || body FROM comments ORDER BY issue_id, id",
            b'c',
        ),
        (
            "SELECT issue_id || char(31) || field || char(31) || body FROM conflicts ORDER BY issue_id, field",
            b'x',
        ),
        ("SELECT id FROM tombstones ORDER BY id", b't'),
    ] {
        let mut stmt = conn.prepare(sql)?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let s: String = row.get(0)?;
            h.update([tag]);
            h.update(s.as_bytes());
            h.update([b'\n']);
        }
    }
    Ok(crate::model::hex_bytes(&h.finalize()))
}
