//! What `bd conflicts` lists: field conflicts, ops held for clock skew, and
//! relay batches kept in quarantine.

use crate::Result;
use rusqlite::Connection;

/// The field of a conflict record that lists a refused relay batch.
pub const QUARANTINE_FIELD: &str = "quarantine";

/// Everything `bd conflicts` lists: field conflicts, ops held for clock skew,
/// and relay batches kept in quarantine.
pub fn conflicts(conn: &Connection) -> Result<Vec<crate::model::Conflict>> {
    let mut stmt = conn.prepare("SELECT body FROM conflicts ORDER BY issue_id, field")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for body in rows {
        out.push(serde_json::from_str(&body?)?);
    }
    // Ops held back for clock skew: one `clock_skew` record per op, its
    // contender showing what the op would do.
    let mut held = conn.prepare("SELECT body FROM held_ops ORDER BY wall_ms, op_id")?;
    let rows = held.query_map([], |r| r.get::<_, String>(0))?;
    for body in rows {
        let op: crate::model::Op = serde_json::from_str(&body?)?;
        out.push(crate::model::Conflict {
            issue_id: op.issue.clone(),
            field: "clock_skew".into(),
            contenders: vec![crate::model::Contender {
                value: serde_json::json!({
                    "kind": op.kind.as_str(),
                    "field": op.field,
                    "value": op.value,
                }),
                actor: op.actor,
                replica: op.replica,
                at: crate::clock::format_rfc3339(op.hlc.wall),
                op_id: op.op_id,
            }],
        });
    }
    // Relay batches refused and kept: one `quarantine` record each.
    let mut q = conn.prepare(
        "SELECT id, received_ms, replica, issue_id, reason FROM quarantine ORDER BY id",
    )?;
    let rows = q.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
        ))
    })?;
    for row in rows {
        let (id, at, replica, issue, reason) = row?;
        out.push(crate::model::Conflict {
            issue_id: issue,
            field: QUARANTINE_FIELD.into(),
            contenders: vec![crate::model::Contender {
                op_id: format!("q{id}"),
                value: serde_json::json!({ "reason": reason }),
                actor: String::new(),
                replica,
                at: crate::clock::format_rfc3339(at as u64),
            }],
        });
    }
    out.sort_by(|a, b| (&a.issue_id, &a.field).cmp(&(&b.issue_id, &b.field)));
    Ok(out)
}
