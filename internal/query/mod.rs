//! Read queries over the materialised state: id resolution, filtered lists, the
//! ready queue and blocked list, the dependency graph (tree, cycles) and statistics.
//!
//! Everything here takes a `&Connection` and never writes. "Ready" means: status
//! open or in_progress, `blocked = 0` (see storage), and no conflict on status or
//! assignee.

mod conflicts;
mod graph;

pub use conflicts::{QUARANTINE_FIELD, conflicts};
pub use graph::{TreeNode, cycles, dependency_tree, would_cycle};

use crate::ids;
use crate::model::{Comment, Dependency, Issue};
use crate::{Error, ErrorKind, Result};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Resolves a full or short id (unique prefix, hash prefix or suffix) of a live issue.
pub fn resolve_id(conn: &Connection, query: &str) -> Result<String> {
    let q = query.trim();
    if q.is_empty() {
        return Err(Error::invalid("empty issue id"));
    }
    let exact: Option<String> = conn
        .prepare_cached("SELECT id FROM issues WHERE id = ?1")?
        .query_row(params![q], |r| r.get(0))
        .optional()?;
    if let Some(id) = exact {
        return Ok(id);
    }
    if is_deleted(conn, q)? {
        return Err(Error::not_found(format!("issue {q} was deleted")));
    }
    if ids::validate_imported_id(q).is_err() {
        return Err(Error::not_found(format!("no issue matches {q:?}"))
            .hint("ids look like bd-a1b2; run `bd list` to see them"));
    }
    let mut stmt =
        conn.prepare_cached("SELECT id FROM issues WHERE instr(id, ?1) > 0 ORDER BY id")?;
    let candidates: Vec<String> = stmt
        .query_map(params![q], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?
        .into_iter()
        .filter(|id| ids::short_id_matches(id, q))
        .collect();
    // An id without its prefix (`a1b2` for `bd-a1b2`) names that issue even
    // when its children (`bd-a1b2.1`) match too.
    let whole: Vec<&String> = candidates
        .iter()
        .filter(|id| id.split_once('-').is_some_and(|(_, rest)| rest == q))
        .collect();
    if let [one] = whole.as_slice() {
        return Ok((*one).clone());
    }
    match candidates.len() {
        1 => Ok(candidates.into_iter().next().unwrap_or_default()),
        0 => Err(Error::not_found(format!("no issue matches {q:?}"))
            .hint("run `bd list` to see issue ids")),
        n => {
            let shown: Vec<&str> = candidates.iter().take(8).map(String::as_str).collect();
            let more = if n > 8 {
                format!(" and {} more", n - 8)
            } else {
                String::new()
            };
            Err(Error::new(
                ErrorKind::Ambiguous,
                format!("{q:?} matches {n} issues: {}{more}", shown.join(", ")),
            )
            .hint("type more characters of the id"))
        }
    }
}

/// Whether `id` names a deleted issue.
pub fn is_deleted(conn: &Connection, id: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM tombstones WHERE id = ?1")?
        .exists(params![id])?)
}

/// Whether any op (live, deleted or pending) ever named `id`.
pub fn id_ever_used(conn: &Connection, id: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM ops WHERE issue_id = ?1 LIMIT 1")?
        .exists(params![id])?)
}

fn parse_issue(body: &str) -> Result<Issue> {
    serde_json::from_str(body)
        .map_err(|e| Error::new(ErrorKind::Corrupt, format!("unreadable issue row: {e}")))
}

/// Loads a live issue with its comments.
pub fn get_issue(conn: &Connection, id: &str) -> Result<Option<Issue>> {
    let body: Option<String> = conn
        .prepare_cached("SELECT body FROM issues WHERE id = ?1")?
        .query_row(params![id], |r| r.get(0))
        .optional()?;
    let Some(body) = body else { return Ok(None) };
    let mut issue = parse_issue(&body)?;
    issue.comments = comments(conn, id)?;
    Ok(Some(issue))
}

/// Comments of `id`, oldest first.
pub fn comments(conn: &Connection, id: &str) -> Result<Vec<Comment>> {
    let mut stmt = conn
        .prepare_cached("SELECT body FROM comments WHERE issue_id = ?1 ORDER BY created_ms, id")?;
    let rows = stmt.query_map(params![id], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for body in rows {
        out.push(serde_json::from_str(&body?)?);
    }
    Ok(out)
}

/// Edges pointing at `id` (issues that depend on it), sorted by dependent id.
pub fn dependents(conn: &Connection, id: &str) -> Result<Vec<Dependency>> {
    let mut stmt = conn.prepare_cached(
        "SELECT i.body FROM deps d JOIN issues i ON i.id = d.issue_id
         WHERE d.depends_on_id = ?1 GROUP BY i.id ORDER BY i.id",
    )?;
    let rows = stmt.query_map(params![id], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for body in rows {
        let issue = parse_issue(&body?)?;
        out.extend(
            issue
                .dependencies
                .into_iter()
                .filter(|d| d.depends_on_id == id),
        );
    }
    Ok(out)
}

/// Sort order for lists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SortKey {
    /// Priority, then age (oldest first).
    #[default]
    Priority,
    /// Creation time.
    Created,
    /// Last change.
    Updated,
    /// Id.
    Id,
    /// Title.
    Title,
    /// Status, then priority.
    Status,
}

impl SortKey {
    /// Every key's name, for help text and errors.
    pub const NAMES: &'static [&'static str] =
        &["priority", "created", "updated", "id", "title", "status"];

    /// Parses a sort key name.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "priority" => SortKey::Priority,
            "created" => SortKey::Created,
            "updated" => SortKey::Updated,
            "id" => SortKey::Id,
            "title" => SortKey::Title,
            "status" => SortKey::Status,
            _ => {
                return Err(Error::invalid(format!("invalid sort key {s:?}"))
                    .hint(format!("valid keys: {}", Self::NAMES.join(", "))));
            }
        })
    }

    fn order_by(self, desc: bool) -> String {
        let d = if desc { " DESC" } else { "" };
        match self {
            SortKey::Priority => format!("priority{d}, created_ms{d}, id{d}"),
            SortKey::Created => format!("created_ms{d}, id{d}"),
            SortKey::Updated => format!("updated_ms{d}, id{d}"),
            SortKey::Id => format!("id{d}"),
            SortKey::Title => format!("title COLLATE NOCASE{d}, id{d}"),
            SortKey::Status => format!("status{d}, priority{d}, created_ms{d}, id{d}"),
        }
    }
}

/// Which issues a list, ready or blocked query returns. Empty fields do not filter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListFilter {
    /// Any of these statuses (wire spelling). Empty: every status but closed, unless
    /// `all` is set.
    pub status: Vec<String>,
    /// Include closed issues when `status` is empty.
    pub all: bool,
    /// Lowest priority number (most urgent bound), inclusive.
    pub priority_min: Option<i64>,
    /// Highest priority number, inclusive.
    pub priority_max: Option<i64>,
    /// Any of these issue types.
    pub issue_type: Vec<String>,
    /// Assigned to exactly this actor.
    pub assignee: Option<String>,
    /// Only issues with no assignee.
    pub unassigned: bool,
    /// Only issues this actor can take: no assignee, or this one (`bd ready`
    /// by default: another agent's claimed work is not on your queue).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub takeable_by: Option<String>,
    /// The time claims lapse against (ms): with `takeable_by`, an issue whose
    /// claim lapsed before it is takeable too. Set by the engine's read path
    /// from its clock, never taken from a caller.
    #[serde(skip)]
    pub now_ms: Option<i64>,
    /// Must carry every one of these labels.
    pub labels_all: Vec<String>,
    /// Must carry at least one of these labels.
    pub labels_any: Vec<String>,
    /// Case-insensitive substring of id, title, description or notes.
    pub text: Option<String>,
    /// Created at or after (epoch ms).
    pub created_after: Option<i64>,
    /// Created before (epoch ms).
    pub created_before: Option<i64>,
    /// Updated at or after (epoch ms).
    pub updated_after: Option<i64>,
    /// Updated before (epoch ms).
    pub updated_before: Option<i64>,
    /// Closed at or after (epoch ms).
    pub closed_after: Option<i64>,
    /// Closed before (epoch ms).
    pub closed_before: Option<i64>,
    /// Has a claim with a time limit that lapses at or before (epoch ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim_expires_before: Option<i64>,
    /// At most this many results (0 or none: all).
    pub limit: Option<usize>,
    /// Sort order.
    pub sort: SortKey,
    /// Reverse the sort.
    pub reverse: bool,
}

/// Which slice of the state a filtered query reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every issue matching the filter.
    All,
    /// The ready queue.
    Ready,
    /// Issues blocked by dependencies or marked blocked.
    Blocked,
}

fn like_pattern(s: &str) -> String {
    let mut p = String::from("%");
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// The FROM clause and filter for `f` in `scope`. The ready queue and the default
/// list (everything but closed) name their partial index: its condition is always
/// in the WHERE clause, and without statistics SQLite would otherwise pick
/// `issues_by_status` and sort every matching row (measured: 59 ms at 100k issues
/// for ten ready ones).
fn where_clause(f: &ListFilter, scope: Scope) -> (String, Vec<SqlValue>) {
    let default_statuses = f.status.is_empty() && !f.all;
    let mut sql = String::from(match scope {
        Scope::Ready => " FROM issues INDEXED BY issues_ready WHERE 1 = 1",
        Scope::All if default_statuses => " FROM issues INDEXED BY issues_not_closed WHERE 1 = 1",
        _ => " FROM issues WHERE 1 = 1",
    });
    let mut args: Vec<SqlValue> = Vec::new();
    let in_list = |sql: &mut String, col: &str, vals: &[String], args: &mut Vec<SqlValue>| {
        let marks = vec!["?"; vals.len()].join(", ");
        sql.push_str(&format!(" AND {col} IN ({marks})"));
        args.extend(vals.iter().map(|v| SqlValue::Text(v.clone())));
    };
    match scope {
        Scope::Ready => {
            // `held`: an epic whose children are not all closed is not work
            // to take; its children are (see `storage::sqlite::row`).
            sql.push_str(
                " AND blocked = 0 AND held = 0 AND status IN ('open', 'in_progress')
                  AND (conflicted = '' OR (instr(',' || conflicted || ',', ',status,') = 0
                       AND instr(',' || conflicted || ',', ',assignee,') = 0))",
            );
            if let Some(actor) = &f.takeable_by {
                sql.push_str(" AND (assignee IS NULL OR assignee = ? OR claim_expires_ms <= ?)");
                args.push(SqlValue::Text(actor.clone()));
                // No time given: no claim counts as lapsed.
                args.push(SqlValue::Integer(f.now_ms.unwrap_or(i64::MIN)));
            }
        }
        Scope::Blocked => {
            sql.push_str(" AND (blocked = 1 OR status = 'blocked') AND status <> 'closed'")
        }
        Scope::All => {}
    }
    if !f.status.is_empty() {
        in_list(&mut sql, "status", &f.status, &mut args);
    } else if scope == Scope::All && default_statuses {
        sql.push_str(" AND status <> 'closed'");
    }
    if !f.issue_type.is_empty() {
        in_list(&mut sql, "issue_type", &f.issue_type, &mut args);
    }
    let mut cmp = |sql: &mut String, cond: &str, v: Option<i64>| {
        if let Some(v) = v {
            sql.push_str(&format!(" AND {cond} ?"));
            args.push(SqlValue::Integer(v));
        }
    };
    cmp(&mut sql, "priority >=", f.priority_min);
    cmp(&mut sql, "priority <=", f.priority_max);
    cmp(&mut sql, "created_ms >=", f.created_after);
    cmp(&mut sql, "created_ms <", f.created_before);
    cmp(&mut sql, "updated_ms >=", f.updated_after);
    cmp(&mut sql, "updated_ms <", f.updated_before);
    cmp(&mut sql, "closed_ms >=", f.closed_after);
    cmp(&mut sql, "closed_ms <", f.closed_before);
    cmp(&mut sql, "claim_expires_ms <=", f.claim_expires_before);
    if let Some(a) = &f.assignee {
        sql.push_str(" AND assignee = ?");
        args.push(SqlValue::Text(a.clone()));
    }
    if f.unassigned {
        // In the ready queue a claim that lapsed counts as unassigned (it is
        // anyone's to take) before bd writes its return.
        match (scope, f.now_ms) {
            (Scope::Ready, Some(now)) => {
                sql.push_str(" AND (assignee IS NULL OR assignee = '' OR claim_expires_ms <= ?)");
                args.push(SqlValue::Integer(now));
            }
            _ => sql.push_str(" AND (assignee IS NULL OR assignee = '')"),
        }
    }
    for label in &f.labels_all {
        sql.push_str(
            " AND EXISTS (SELECT 1 FROM labels l WHERE l.issue_id = issues.id AND l.label = ?)",
        );
        args.push(SqlValue::Text(label.clone()));
    }
    if !f.labels_any.is_empty() {
        let marks = vec!["?"; f.labels_any.len()].join(", ");
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM labels l WHERE l.issue_id = issues.id AND l.label IN ({marks}))"
        ));
        args.extend(f.labels_any.iter().map(|v| SqlValue::Text(v.clone())));
    }
    if let Some(t) = f.text.as_ref().filter(|t| !t.is_empty()) {
        sql.push_str(
            " AND (id LIKE ?1x ESCAPE '\\' OR title LIKE ?1x ESCAPE '\\' OR description LIKE ?1x ESCAPE '\\'
                   OR json_extract(body, '$.notes') LIKE ?1x ESCAPE '\\')",
        );
        let pat = like_pattern(t);
        let n = args.len() + 1;
        sql = sql.replace("?1x", &format!("?{n}"));
        args.push(SqlValue::Text(pat));
    }
    (sql, args)
}

/// Issues matching `f` within `scope`, without comments.
pub fn list(conn: &Connection, f: &ListFilter, scope: Scope) -> Result<Vec<Issue>> {
    list_bodies(conn, f, scope, |body| parse_issue(&body))
}

/// [`list`] without parsing: each issue's stored JSON (without comments), for
/// an answer that is only going to be serialised again. Each row is still
/// checked to be JSON, so a damaged row is refused here, not in the client.
pub fn list_rows(
    conn: &Connection,
    f: &ListFilter,
    scope: Scope,
) -> Result<Vec<Box<serde_json::value::RawValue>>> {
    list_bodies(conn, f, scope, |body| {
        serde_json::value::RawValue::from_string(body)
            .map_err(|e| Error::new(ErrorKind::Corrupt, format!("unreadable issue row: {e}")))
    })
}

/// The stored bodies of the issues matching `f` within `scope`, in order, each
/// passed through `each`.
fn list_bodies<T>(
    conn: &Connection,
    f: &ListFilter,
    scope: Scope,
    mut each: impl FnMut(String) -> Result<T>,
) -> Result<Vec<T>> {
    let (mut sql, args) = where_clause(f, scope);
    sql = format!("SELECT body{sql} ORDER BY {}", f.sort.order_by(f.reverse));
    if let Some(n) = f.limit.filter(|n| *n > 0) {
        sql.push_str(&format!(" LIMIT {n}"));
    }
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params_from_iter(args), |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for body in rows {
        out.push(each(body?)?);
    }
    Ok(out)
}

/// How many issues match `f` within `scope`, ignoring `limit`.
pub fn count(conn: &Connection, f: &ListFilter, scope: Scope) -> Result<u64> {
    let (sql, args) = where_clause(f, scope);
    let sql = format!("SELECT COUNT(*){sql}");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row(params_from_iter(args), |r| r.get::<_, i64>(0))? as u64)
}

/// A blocked issue and what blocks it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockedIssue {
    /// The issue.
    #[serde(flatten)]
    pub issue: Issue,
    /// Open blockers and gating parents (ids), sorted.
    pub blocked_by: Vec<String>,
}

/// Blocked issues matching `f`, each with its open blockers.
pub fn blocked(conn: &Connection, f: &ListFilter) -> Result<Vec<BlockedIssue>> {
    let issues = list(conn, f, Scope::Blocked)?;
    let mut stmt = conn.prepare_cached(
        "SELECT d.depends_on_id FROM deps d JOIN issues b ON b.id = d.depends_on_id
         WHERE d.issue_id = ?1 AND (
            (d.type = 'blocks' AND b.status <> 'closed') OR
            (d.type = 'parent-child' AND (b.blocked = 1 OR b.status NOT IN ('open', 'in_progress'))))
         ORDER BY d.depends_on_id",
    )?;
    let mut out = Vec::with_capacity(issues.len());
    for issue in issues {
        let blocked_by = stmt
            .query_map(params![issue.id], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        out.push(BlockedIssue { issue, blocked_by });
    }
    Ok(out)
}

/// A label and how many live issues carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelCount {
    /// The label.
    pub label: String,
    /// Number of issues with it.
    pub count: u64,
}

/// Every label in use with its issue count, by label.
pub fn label_counts(conn: &Connection) -> Result<Vec<LabelCount>> {
    let mut stmt =
        conn.prepare_cached("SELECT label, COUNT(*) FROM labels GROUP BY label ORDER BY label")?;
    let rows = stmt.query_map([], |r| {
        Ok(LabelCount {
            label: r.get(0)?,
            count: r.get::<_, i64>(1)? as u64,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Counts over the whole tracker.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Live issues.
    pub total: u64,
    /// Issues per status.
    pub by_status: BTreeMap<String, u64>,
    /// Issues per type.
    pub by_type: BTreeMap<String, u64>,
    /// Open (not closed) issues per priority.
    pub open_by_priority: BTreeMap<String, u64>,
    /// Issues in the ready queue.
    pub ready: u64,
    /// Open issues blocked by dependencies or marked blocked.
    pub blocked: u64,
    /// Deleted issues.
    pub deleted: u64,
    /// Open conflict records.
    pub conflicts: u64,
    /// Ops stored.
    pub ops: u64,
    /// Mean hours from creation to close over closed issues.
    pub avg_lead_time_hours: Option<f64>,
}

/// Computes [`Stats`].
pub fn stats(conn: &Connection) -> Result<Stats> {
    let mut s = Stats::default();
    let scalar = |sql: &str| -> Result<i64> { Ok(conn.query_row(sql, [], |r| r.get(0))?) };
    s.total = scalar("SELECT COUNT(*) FROM issues")? as u64;
    for (sql, map) in [
        (
            "SELECT status, COUNT(*) FROM issues GROUP BY status",
            &mut s.by_status,
        ),
        (
            "SELECT issue_type, COUNT(*) FROM issues GROUP BY issue_type",
            &mut s.by_type,
        ),
        (
            "SELECT 'P' || priority, COUNT(*) FROM issues WHERE status <> 'closed' GROUP BY priority",
            &mut s.open_by_priority,
        ),
    ] {
        let mut stmt = conn.prepare(sql)?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (k, v) = row?;
            map.insert(k, v as u64);
        }
    }
    s.ready = count(conn, &ListFilter::default(), Scope::Ready)?;
    s.blocked = count(conn, &ListFilter::default(), Scope::Blocked)?;
    s.deleted = scalar("SELECT COUNT(*) FROM tombstones")? as u64;
    // As many as `bd conflicts` lists: field conflicts and held ops.
    s.conflicts =
        scalar("SELECT (SELECT COUNT(*) FROM conflicts) + (SELECT COUNT(*) FROM held_ops) + (SELECT COUNT(*) FROM quarantine)")? as u64;
    s.ops = scalar("SELECT COUNT(*) FROM ops")? as u64;
    let avg: Option<f64> = conn.query_row(
        "SELECT AVG(closed_ms - created_ms) FROM issues WHERE status = 'closed' AND closed_ms IS NOT NULL",
        [],
        |r| r.get(0),
    )?;
    s.avg_lead_time_hours = avg.map(|ms| (ms / 3_600_000.0 * 100.0).round() / 100.0);
    Ok(s)
}

/// Every live issue with comments, sorted by id: the snapshot's content.
pub fn all_issues(conn: &Connection) -> Result<Vec<Issue>> {
    let mut by_issue: BTreeMap<String, Vec<Comment>> = BTreeMap::new();
    let mut stmt =
        conn.prepare("SELECT issue_id, body FROM comments ORDER BY issue_id, created_ms, id")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    for row in rows {
        let (id, body) = row?;
        by_issue
            .entry(id)
            .or_default()
            .push(serde_json::from_str(&body)?);
    }
    let mut stmt = conn.prepare("SELECT body FROM issues ORDER BY id")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for body in rows {
        let mut issue = parse_issue(&body?)?;
        issue.comments = by_issue.remove(&issue.id).unwrap_or_default();
        out.push(issue);
    }
    Ok(out)
}

