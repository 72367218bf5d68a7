//! Import of beads-format `issues.jsonl` (ours or the Go bd's) as ops.
//!
//! Idempotent: a record already reflected in the state records no op, so importing
//! one file twice changes nothing. Values bd does not model (statuses, types,
//! dependency types, whole fields) are kept verbatim. A beads tombstone
//! (`"status": "tombstone"`) becomes a delete; an issue deleted here is never
//! brought back by an import.

use super::{Context, ImportReport, new_op};
use crate::ids;
use crate::jsonl::{ImportRecord, LineError};
use crate::model::{OpKind, STRUCTURAL_FIELDS};
use crate::storage::WriteTx;
use crate::{Error, Result};
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;

enum Outcome {
    Created,
    Updated,
    Unchanged,
    Deleted,
    SkippedDeleted,
}

/// Applies every record; a record that is refused is reported with its line and
/// the others still apply, unless `strict`, when the first refusal fails the whole
/// import (and the caller's transaction rolls back).
pub(super) fn import(
    tx: &mut WriteTx<'_>,
    ctx: &Context<'_>,
    records: &[ImportRecord],
    strict: bool,
) -> Result<ImportReport> {
    let mut report = ImportReport::default();
    let before = tx.recorded().len();
    // A file that names one id twice: the last record wins, the earlier are
    // skipped (applying each in turn would write ops on every re-import).
    let mut last = std::collections::HashMap::new();
    for (n, rec) in records.iter().enumerate() {
        if let Some(id) = rec.fields.get("id").and_then(Value::as_str) {
            last.insert(id, n);
        }
    }
    let mut meter = crate::progress::Meter::start("importing", Some(records.len() as u64));
    for (n, rec) in records.iter().enumerate() {
        meter.inc(1);
        if let Some(id) = rec.fields.get("id").and_then(Value::as_str)
            && last.get(id) != Some(&n)
        {
            report.repeated += 1;
            continue;
        }
        if n % 1000 == 999 {
            tx.flush()?; // bounds the doc cache on large files
            // Work past the deadline would be undone anyway: stop early.
            super::check_deadline(ctx)?;
        }
        let result = import_one(tx, ctx, rec);
        if result.is_ok() && unmodelled(&rec.fields) {
            report.unmodelled += 1;
        }
        match result {
            Ok(Outcome::Created) => report.created += 1,
            Ok(Outcome::Updated) => report.updated += 1,
            Ok(Outcome::Unchanged) => report.unchanged += 1,
            Ok(Outcome::Deleted) => report.deleted += 1,
            Ok(Outcome::SkippedDeleted) => report.skipped_deleted += 1,
            Err(e) => {
                let earlier = records[..n].iter().any(|r| {
                    r.fields.get("id").and_then(Value::as_str)
                        == rec.fields.get("id").and_then(Value::as_str)
                });
                report.errors.push(LineError {
                    line: rec.line,
                    message: if earlier {
                        format!(
                            "{} (earlier lines with this id were skipped: the last one decides)",
                            e.message
                        )
                    } else {
                        e.message
                    },
                })
            }
        }
    }
    if let Some(first) = report.errors.first().filter(|_| strict) {
        return Err(Error::invalid(format!(
            "line {}: {}; nothing imported",
            first.line, first.message
        ))
        .hint("fix the line, or import with --skip-bad-lines to import the others"));
    }
    report.ops = (tx.recorded().len() - before) as u64;
    tx.flush()?;
    Ok(report)
}

/// Checks a record as `bd create` and `bd batch` check their input, naming
/// the field: a title (present, at most 500 characters, one line), a priority
/// 0-4, times in RFC 3339, labels as `bd label add` takes them. Statuses and
/// types bd does not model are kept (beads data has them): see
/// [`unmodelled`].
fn validate_record(id: &str, f: &Map<String, Value>) -> Result<()> {
    let field = |name: &str, e: Error| Error::invalid(format!("{id}: {name}: {}", e.message));
    match f.get("title") {
        Some(Value::String(t)) => {
            crate::model::validate_title(t).map_err(|e| field("title", e))?;
        }
        _ => return Err(Error::invalid(format!("{id}: missing or empty \"title\""))),
    }
    for name in ["description", "design", "acceptance_criteria", "notes"] {
        if let Some(Value::String(t)) = f.get(name) {
            crate::model::validate_text(name, t).map_err(|e| field(name, e))?;
        }
    }
    match f.get("priority") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.as_i64().is_some_and(|p| (0..=4).contains(&p)) => {}
        Some(Value::String(p)) => {
            crate::model::parse_priority(p).map_err(|e| field("priority", e))?;
        }
        Some(other) => {
            return Err(Error::invalid(format!(
                "{id}: priority: {other} is not 0-4 (0 is the most urgent)"
            )));
        }
    }
    for name in ["created_at", "updated_at", "closed_at"] {
        match f.get(name) {
            None | Some(Value::Null) => {}
            Some(Value::String(t)) if crate::clock::parse_rfc3339(t).is_some() => {}
            Some(other) => {
                return Err(Error::invalid(format!(
                    "{id}: {name}: {other} is not a time (RFC 3339, e.g. 2026-01-31T09:00:00Z)"
                )));
            }
        }
    }
    match f.get("labels") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for l in items {
                let text = l
                    .as_str()
                    .ok_or_else(|| Error::invalid(format!("{id}: labels: {l} is not a string")))?;
                crate::model::validate_label(text).map_err(|e| field("labels", e))?;
            }
        }
        Some(other) => {
            return Err(Error::invalid(format!(
                "{id}: labels: {other} is not a list of labels"
            )));
        }
    }
    Ok(())
}

/// Whether a record carries a status or type bd does not model (kept as
/// they are, and counted in the report).
fn unmodelled(f: &Map<String, Value>) -> bool {
    let status = f.get("status").and_then(Value::as_str);
    let kind = f.get("issue_type").and_then(Value::as_str);
    status.is_some_and(|s| {
        s != "tombstone"
            && matches!(
                crate::model::Status::from_wire(s),
                crate::model::Status::Other(_)
            )
    }) || kind.is_some_and(|t| {
        matches!(
            crate::model::IssueType::from_wire(t),
            crate::model::IssueType::Other(_)
        )
    })
}

fn same(a: Option<&Value>, b: Option<&Value>) -> bool {
    let empty = |v: Option<&Value>| {
        matches!(v, None | Some(Value::Null)) || v.and_then(Value::as_str) == Some("")
    };
    a == b || (empty(a) && empty(b))
}

fn import_one(tx: &mut WriteTx<'_>, ctx: &Context<'_>, rec: &ImportRecord) -> Result<Outcome> {
    let f = &rec.fields;
    let id = f
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    ids::validate_imported_id(&id)?;
    let tombstone = f.get("status").and_then(Value::as_str) == Some("tombstone");
    if !tombstone {
        validate_record(&id, f)?;
    }
    let labels: BTreeSet<String> = strings(f.get("labels"));
    let deps = edges(f.get("dependencies"));
    let comments = match f.get("comments") {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_object).cloned().collect(),
        _ => Vec::new(),
    };
    let mut scalars: Map<String, Value> = f
        .iter()
        .filter(|(k, _)| !STRUCTURAL_FIELDS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // A priority written as text ("P1", "1") is stored as the number it
    // names (validated above), as `bd create -p P1` stores it.
    if let Some(Value::String(p)) = scalars.get("priority")
        && let Ok(n) = crate::model::parse_priority(p)
    {
        scalars.insert("priority".into(), json!(n));
    }

    let doc = tx.doc(&id)?;
    if doc.is_deleted() {
        return Ok(if tombstone {
            Outcome::Unchanged
        } else {
            Outcome::SkippedDeleted
        });
    }
    if !doc.exists() {
        // One op carries the whole issue, so its time (the file's updated_at) is the
        // issue's time.
        let mut value = scalars;
        if let Some(u) = f.get("updated_at") {
            value.insert("updated_at".into(), u.clone());
        }
        if !labels.is_empty() {
            value.insert("labels".into(), json!(labels));
        }
        if !deps.is_empty() {
            let deps = deps.iter().cloned().map(Value::Object).collect();
            value.insert("dependencies".into(), Value::Array(deps));
        }
        if !comments.is_empty() {
            let comments = comments.iter().map(comment_value).collect();
            value.insert("comments".into(), Value::Array(comments));
        }
        tx.record(new_op(
            ctx,
            &id,
            OpKind::Create,
            None,
            Value::Object(value),
            vec![],
        ))?;
        if tombstone {
            delete(tx, ctx, &id)?;
            return Ok(Outcome::Deleted);
        }
        return Ok(Outcome::Created);
    }
    if tombstone {
        delete(tx, ctx, &id)?;
        return Ok(Outcome::Deleted);
    }

    // Scalars: every field in the record, and every field shown here but absent
    // there. Compared with the issue as shown (defaults and derived times
    // included), so importing an export of what a file made changes nothing.
    let shown: Vec<String> = doc.field_names().map(str::to_string).collect();
    let displayed = doc
        .materialise()
        .map(|m| serde_json::to_value(m.issue))
        .transpose()?
        .unwrap_or(Value::Null);
    let before = tx.recorded().len();
    let mut fields: BTreeSet<String> = scalars.keys().cloned().collect();
    fields.extend(
        shown
            .into_iter()
            .filter(|k| !STRUCTURAL_FIELDS.contains(&k.as_str())),
    );
    for field in fields {
        let want = match scalars.get(&field) {
            Some(v) => v.clone(),
            // Absent: the default for fields that have one; kept for facts of
            // the issue's origin; cleared otherwise.
            None => match field.as_str() {
                "status" => json!("open"),
                "priority" => json!(crate::model::PRIORITY_DEFAULT),
                "issue_type" => json!("task"),
                "created_at" | "created_by" => continue,
                _ => Value::Null,
            },
        };
        let doc = tx.doc(&id)?;
        if same(displayed.get(&field), Some(&want)) || same(doc.field_value(&field), Some(&want)) {
            continue;
        }
        let heads = doc.field_heads(&field);
        tx.record(new_op(ctx, &id, OpKind::Set, Some(&field), want, heads))?;
    }
    let current = tx
        .doc(&id)?
        .materialise()
        .map(|m| m.issue)
        .ok_or_else(|| Error::internal("issue vanished"))?;
    for label in labels.iter().filter(|l| !current.labels.contains(l)) {
        tx.record(new_op(
            ctx,
            &id,
            OpKind::LabelAdd,
            None,
            json!(label),
            vec![],
        ))?;
    }
    for label in current.labels.iter().filter(|l| !labels.contains(*l)) {
        let heads = tx.doc(&id)?.label_heads(label);
        tx.record(new_op(
            ctx,
            &id,
            OpKind::LabelRemove,
            None,
            json!(label),
            heads,
        ))?;
    }
    let key = |d: &Map<String, Value>| {
        (
            d.get("depends_on_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            d.get("type")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        )
    };
    let have: BTreeSet<(String, String)> = current
        .dependencies
        .iter()
        .map(|d| (d.depends_on_id.clone(), d.dep_type.as_str().to_string()))
        .collect();
    let want: BTreeSet<(String, String)> = deps.iter().map(key).collect();
    for dep in deps.iter().filter(|d| !have.contains(&key(d))) {
        tx.record(new_op(
            ctx,
            &id,
            OpKind::DepAdd,
            None,
            Value::Object(dep.clone()),
            vec![],
        ))?;
    }
    for (target, kind) in have.difference(&want) {
        let heads = tx.doc(&id)?.dep_heads(target, kind);
        let value = json!({"depends_on_id": target, "type": kind});
        tx.record(new_op(ctx, &id, OpKind::DepRemove, None, value, heads))?;
    }
    for c in &comments {
        let value = comment_value(c);
        let known = current.comments.iter().any(|have| match value.get("id") {
            Some(cid) => {
                &json!(have.id) == cid || cid.as_i64().is_some_and(|n| have.id == n.to_string())
            }
            None => {
                Some(&json!(have.text)) == value.get("text")
                    && Some(&json!(have.created_at)) == value.get("created_at")
            }
        });
        if !known {
            tx.record(new_op(ctx, &id, OpKind::Comment, None, value, vec![]))?;
        }
    }
    Ok(if tx.recorded().len() > before {
        Outcome::Updated
    } else {
        Outcome::Unchanged
    })
}

fn delete(tx: &mut WriteTx<'_>, ctx: &Context<'_>, id: &str) -> Result<()> {
    let heads = tx.doc(id)?.all_heads();
    tx.record(new_op(ctx, id, OpKind::Delete, None, Value::Null, heads))?;
    Ok(())
}

fn strings(v: Option<&Value>) -> BTreeSet<String> {
    match v {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => BTreeSet::new(),
    }
}

/// Dependency objects with a target and a type; `issue_id` is implied by the record.
fn edges(v: Option<&Value>) -> Vec<Map<String, Value>> {
    let Some(Value::Array(items)) = v else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(Value::as_object)
        .filter_map(|d| {
            let target = d.get("depends_on_id").and_then(Value::as_str)?;
            let kind = d.get("type").and_then(Value::as_str).unwrap_or("blocks");
            let mut out = Map::new();
            out.insert("depends_on_id".into(), json!(target));
            out.insert("type".into(), json!(kind));
            for k in ["created_at", "created_by"] {
                if let Some(Value::String(s)) = d.get(k) {
                    out.insert(k.into(), json!(s));
                }
            }
            Some(out)
        })
        .collect()
}

fn comment_value(c: &Map<String, Value>) -> Value {
    let mut out = Map::new();
    for k in ["id", "author", "text", "created_at"] {
        if let Some(v) = c.get(k).filter(|v| !v.is_null()) {
            out.insert(k.into(), v.clone());
        }
    }
    Value::Object(out)
}
