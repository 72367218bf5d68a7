//! Settling what merging left open: field conflicts (`--value` or `--take` a
//! contender; a delete is never undone), id notices (two creates used one id)
//! and ops held for clock skew.

use super::{Context, current_str, get_live, new_op, set_field, text_or_null};
use crate::api::{Changed, Response};
use crate::clock::format_rfc3339;
use crate::model::{self, IssueType, OpKind, Status, parse_priority};
use crate::query;
use crate::storage::WriteTx;
use crate::storage::collisions;
use crate::{Error, Result};
use serde_json::{Value, json};

/// Which contender `take` names: an op id or prefix of one, an actor or a replica;
/// it must name exactly one.
fn pick_contender<'a>(c: &'a model::Conflict, take: &str) -> Result<&'a model::Contender> {
    let hits: Vec<&model::Contender> = c
        .contenders
        .iter()
        .filter(|k| k.op_id.starts_with(take) || k.actor == take || k.replica.starts_with(take))
        .collect();
    match hits.as_slice() {
        [one] => Ok(one),
        [] => Err(Error::invalid(format!(
            "no contender of {} {} matches {take:?}",
            c.issue_id, c.field
        ))
        .hint("`bd conflicts` lists each contender's op id, actor and replica")),
        _ => Err(Error::invalid(format!(
            "{take:?} matches {} contenders of {} {}",
            hits.len(),
            c.issue_id,
            c.field
        ))
        .hint("name one by its op id (a prefix is enough)")),
    }
}

pub(super) fn resolve(
    tx: &mut WriteTx<'_>,
    ctx: &Context<'_>,
    id: &str,
    field: &str,
    value: Option<String>,
    take: Option<String>,
) -> Result<Response> {
    if value.is_some() == take.is_some() {
        return Err(Error::invalid("give exactly one of --value and --take")
            .hint("--value sets a new value; --take copies one contender's"));
    }
    if field == crate::query::QUARANTINE_FIELD {
        return resolve_quarantine(tx, id, value, take);
    }
    if field == "clock_skew" {
        return resolve_clock_skew(tx, ctx, id, value, take);
    }
    if field == collisions::ID_FIELD {
        return resolve_id_collision(tx, ctx, id, value, take);
    }
    if field == crate::merge::CLAIM_FIELD {
        return resolve_claim(tx, ctx, id, value, take);
    }
    if field == crate::merge::PARENT_FIELD {
        return resolve_parent(tx, ctx, id, value, take);
    }
    // A deleted issue has no row, so look it up by its exact id.
    let id = if field == "deleted" {
        id.to_string()
    } else {
        query::resolve_id(tx.conn(), id)?
    };
    let conflict = tx
        .doc(&id)?
        .materialise()
        .and_then(|m| m.conflicts.into_iter().find(|c| c.field == field))
        .ok_or_else(|| {
            Error::not_found(format!("{id} has no conflict on {field}"))
                .hint("`bd conflicts` lists the open ones")
        })?;
    if field == "deleted" {
        // Keeping the delete: a new tombstone that has seen every write.
        let keep = match (&take, &value) {
            (Some(t), _) => pick_contender(&conflict, t)?.value.is_null(),
            (_, Some(v)) => v == "deleted",
            _ => false,
        };
        if !keep {
            return Err(Error::invalid(format!(
                "{id} stays deleted: a deleted issue is never brought back"
            ))
            .hint(format!(
                "settle it with `bd resolve {id} --field deleted --value deleted`, and create a new issue if the work is still wanted"
            )));
        }
        let heads = tx.doc(&id)?.all_heads();
        tx.record(new_op(ctx, &id, OpKind::Delete, None, Value::Null, heads))?;
        tx.flush()?;
        return Ok(Response::Deleted(vec![id]));
    }
    let value = match (take, value) {
        (Some(t), _) => pick_contender(&conflict, &t)?.value.clone(),
        (_, Some(v)) => field_value_from_text(field, &v)?,
        _ => unreachable!("checked above"),
    };
    let was_closed = Status::from_wire(&current_str(tx, &id, "status")?).is_closed();
    set_field(tx, ctx, &id, field, value.clone())?;
    if field == "status" {
        let now_closed = value
            .as_str()
            .is_some_and(|s| Status::from_wire(s).is_closed());
        if now_closed && !was_closed {
            set_field(
                tx,
                ctx,
                &id,
                "closed_at",
                json!(format_rfc3339(tx.now_ms())),
            )?;
        } else if was_closed && !now_closed {
            set_field(tx, ctx, &id, "closed_at", Value::Null)?;
            set_field(tx, ctx, &id, "close_reason", Value::Null)?;
        }
    }
    tx.flush()?;
    changed_one(tx, &id)
}

/// Settles a `parent` conflict (moves that crossed on two clones left the
/// issue under two parents): `--take` keeps the contender it names, `--value`
/// moves the issue under the issue it names (`""`: under none). Either is a
/// move, which takes away every other parent edge.
fn resolve_parent(
    tx: &mut WriteTx<'_>,
    ctx: &Context<'_>,
    id: &str,
    value: Option<String>,
    take: Option<String>,
) -> Result<Response> {
    let id = query::resolve_id(tx.conn(), id)?;
    let conflict = tx
        .doc(&id)?
        .materialise()
        .and_then(|m| m.conflicts.into_iter().find(|c| c.field == crate::merge::PARENT_FIELD))
        .ok_or_else(|| {
            Error::not_found(format!("{id} has no conflict on parent"))
                .hint(format!("move it with: bd update {id} --parent NEW"))
        })?;
    let parent = match (take, value) {
        (Some(t), _) => pick_contender(&conflict, &t)?
            .value
            .as_str()
            .unwrap_or_default()
            .to_string(),
        (_, Some(v)) => v,
        _ => unreachable!("checked by the caller"),
    };
    super::issues::set_parent(tx, ctx, &id, &parent)?;
    tx.flush()?;
    changed_one(tx, &id)
}

/// The answer to a resolution: the issue as it stands now.
fn changed_one(tx: &WriteTx<'_>, id: &str) -> Result<Response> {
    Ok(Response::Changed(vec![Changed {
        issue: get_live(tx.conn(), id)?,
        changed: true,
        lease: None,
    }]))
}

/// Settles an `id` notice (two creates used one id, and one was given
/// `<id>~<suffix>`) by acknowledging it: `--value ack` acknowledges every
/// displaced create of the id, `--take` the one it names (op id prefix, actor
/// or replica). `id` may name the issue keeping the id or a displaced one.
fn resolve_id_collision(
    tx: &mut WriteTx<'_>,
    ctx: &Context<'_>,
    id: &str,
    value: Option<String>,
    take: Option<String>,
) -> Result<Response> {
    if let Some(v) = value.as_deref().filter(|v| *v != "ack") {
        return Err(Error::invalid(format!(
            "an id notice is settled by acknowledging it, not with {v:?}"
        ))
        .hint(format!(
            "bd resolve {id} --field id --value ack (both issues stay; close one if they turn out to be the same work)"
        )));
    }
    // The issue keeping the id may have been deleted since: look it up exactly.
    let home = match query::resolve_id(tx.conn(), id) {
        Ok(home) => home,
        Err(_) if query::is_deleted(tx.conn(), id.trim())? => id.trim().to_string(),
        Err(e) => return Err(e),
    };
    let wire = crate::merge::wire_id(&home).to_string();
    let doc = tx.doc(&wire)?.clone();
    let notice = collisions::id_notice(tx.conn(), &wire, &doc)?.ok_or_else(|| {
        Error::not_found(format!("{wire} has no id notice"))
            .hint("`bd conflicts` lists the open ones")
    })?;
    let pending = collisions::unacknowledged(tx.conn(), &wire, &doc)?;
    let acknowledged: Vec<String> = match &take {
        None => pending,
        Some(t) => {
            let k = pick_contender(&notice, t)?;
            if !pending.contains(&k.op_id) {
                return Err(Error::invalid(format!(
                    "{t:?} names the create that keeps {wire}, not a displaced one"
                ))
                .hint("name a displaced create by its op id, or use --value ack for all"));
            }
            vec![k.op_id.clone()]
        }
    };
    tx.record(new_op(
        ctx,
        &wire,
        OpKind::Set,
        Some(collisions::ID_FIELD),
        json!({ "acknowledged": acknowledged }),
        vec![],
    ))?;
    tx.flush()?;
    let issue = match tx.is_live(&wire)? {
        true => vec![Changed {
            issue: get_live(tx.conn(), &wire)?,
            changed: true,
            lease: None,
        }],
        false => Vec::new(),
    };
    Ok(Response::Changed(issue))
}

/// Settles a `clock_skew` record: applies the held op now (`--take` names it
/// by op id prefix, actor or replica prefix; `--value apply` takes the only
/// one held for the issue), by recording an approval that syncs (see
/// [`crate::storage::sqlite::CLOCK_SKEW_FIELD`]). A held op is never dropped:
/// it is in another clone's op file and would arrive again.
fn resolve_clock_skew(
    tx: &mut WriteTx<'_>,
    ctx: &Context<'_>,
    id: &str,
    value: Option<String>,
    take: Option<String>,
) -> Result<Response> {
    if let Some(v) = value.as_deref().filter(|v| *v != "apply") {
        return Err(Error::invalid(format!(
            "a clock_skew record is settled by applying its op now, not with {v:?}"
        ))
        .hint(format!(
            "bd resolve {id} --field clock_skew --value apply (or --take OP_ID)"
        )));
    }
    let held: Vec<crate::model::Conflict> = query::conflicts(tx.conn())?
        .into_iter()
        .filter(|c| c.field == "clock_skew" && (c.issue_id == id || c.issue_id.ends_with(id)))
        .collect();
    let candidates: Vec<(&str, &model::Contender)> = held
        .iter()
        .flat_map(|c| c.contenders.iter().map(|k| (c.issue_id.as_str(), k)))
        .filter(|(_, k)| {
            take.as_deref()
                .is_none_or(|t| k.op_id.starts_with(t) || k.actor == t || k.replica.starts_with(t))
        })
        .collect();
    let (issue, op_id) = match candidates.as_slice() {
        [(issue, one)] => (issue.to_string(), one.op_id.clone()),
        [] => {
            return Err(Error::not_found(format!(
                "{id} has no op held for clock skew{}",
                take.map(|t| format!(" matching {t:?}")).unwrap_or_default()
            ))
            .hint("`bd conflicts` lists the open ones"));
        }
        many => {
            return Err(Error::invalid(format!(
                "{} ops are held for {id}: {}",
                many.len(),
                many.iter()
                    .map(|(_, k)| k.op_id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .hint("name one with --take OP_ID (a prefix is enough)"));
        }
    };
    // The decision is an op, so it syncs: every clone holding the op (or
    // receiving it later) applies it too. Recording it applies it here.
    tx.record(new_op(
        ctx,
        &issue,
        OpKind::Set,
        Some(crate::storage::sqlite::CLOCK_SKEW_FIELD),
        json!({ "apply": [op_id] }),
        vec![],
    ))?;
    tx.flush()?;
    let issue = match query::resolve_id(tx.conn(), &issue) {
        Ok(id) => vec![Changed {
            issue: get_live(tx.conn(), &id)?,
            changed: true,
            lease: None,
        }],
        Err(_) => Vec::new(),
    };
    Ok(Response::Changed(issue))
}

/// Settles a `claim` conflict: late writes under a lapsed lease (see
/// `merge`'s fencing). `--value drop` keeps none of them; `--take OP` applies
/// that one now, as the resolver's write on the issue as it stands, and
/// settles it. A settled late write is never applied by itself.
fn resolve_claim(
    tx: &mut WriteTx<'_>,
    ctx: &Context<'_>,
    id: &str,
    value: Option<String>,
    take: Option<String>,
) -> Result<Response> {
    let hint = format!(
        "bd resolve {id} --field claim --value drop (keep none of the late writes), or --take OP_ID (apply that one now)"
    );
    let id = query::resolve_id(tx.conn(), id)?;
    let late: Vec<model::Op> = tx.doc(&id)?.unsettled_late().into_iter().cloned().collect();
    if late.is_empty() {
        return Err(Error::not_found(format!("{id} has no conflict on claim"))
            .hint("`bd conflicts` lists the open ones"));
    }
    let (settled, replay) = match (value.as_deref(), take.as_deref()) {
        (Some("drop"), _) => (late, None),
        (Some(v), _) => {
            return Err(Error::invalid(format!(
                "late writes under a lapsed lease are dropped or taken one by one, not set to {v:?}"
            ))
            .hint(hint));
        }
        (None, Some(t)) => {
            let hits: Vec<&model::Op> = late
                .iter()
                .filter(|o| o.op_id.starts_with(t) || o.actor == t || o.replica.starts_with(t))
                .collect();
            match hits.as_slice() {
                [one] => (vec![(*one).clone()], Some((*one).clone())),
                [] => {
                    return Err(Error::invalid(format!("no late write on {id} matches {t:?}"))
                        .hint("`bd conflicts` lists each late write's op id"));
                }
                _ => {
                    return Err(Error::invalid(format!(
                        "{t:?} matches {} late writes on {id}",
                        hits.len()
                    ))
                    .hint("name one by its op id (a prefix is enough)"));
                }
            }
        }
        (None, None) => unreachable!("checked by the caller"),
    };
    if let Some(op) = replay {
        replay_late(tx, ctx, &id, &op)?;
    }
    tx.record(new_op(
        ctx,
        &id,
        OpKind::Set,
        Some(crate::merge::CLAIM_FIELD),
        json!(if take.is_some() { "apply" } else { "drop" }),
        settled.into_iter().map(|o| o.op_id).collect(),
    ))?;
    tx.flush()?;
    changed_one(tx, &id)
}

/// Makes a late write's change again, as the resolver's write on the issue
/// as it stands now.
fn replay_late(tx: &mut WriteTx<'_>, ctx: &Context<'_>, id: &str, op: &model::Op) -> Result<()> {
    let doc = tx.doc(id)?;
    let heads = match (&op.kind, &op.field) {
        (OpKind::Set, Some(field)) => doc.field_heads(field),
        (OpKind::LabelRemove, _) => doc.label_heads(op.value.as_str().unwrap_or_default()),
        (OpKind::DepRemove, _) => {
            let field = |k: &str| op.value.get(k).and_then(Value::as_str).unwrap_or_default();
            doc.dep_heads(field("depends_on_id"), field("type"))
        }
        (OpKind::Delete, _) => {
            return Err(Error::invalid(format!("the late write is a delete of {id}"))
                .hint(format!("delete it yourself if it should go: bd delete {id}")));
        }
        _ => Vec::new(),
    };
    let mut value = op.value.clone();
    if op.kind == OpKind::Comment
        && let Value::Object(m) = &mut value
    {
        // Still the late writer's comment, from when they wrote it.
        m.entry("author").or_insert_with(|| json!(op.actor));
        m.entry("created_at")
            .or_insert_with(|| json!(format_rfc3339(op.hlc.wall)));
    }
    tx.record(new_op(ctx, id, op.kind.clone(), op.field.as_deref(), value, heads))?;
    Ok(())
}

/// Drops relay batches kept in quarantine for `id`: `--value drop` all of
/// them, `--take qN` the one `bd conflicts` lists as `qN`. They were never
/// applied; dropping only forgets them (this clone's record, not an op).
fn resolve_quarantine(
    tx: &mut WriteTx<'_>,
    id: &str,
    value: Option<String>,
    take: Option<String>,
) -> Result<Response> {
    let hint = format!(
        "bd resolve {id} --field quarantine --value drop (or --take qN for one)"
    );
    let dropped = match (value.as_deref(), take.as_deref()) {
        (Some("drop"), _) => tx
            .conn()
            .prepare_cached("DELETE FROM quarantine WHERE issue_id = ?1")?
            .execute([id])?,
        (_, Some(q)) => {
            let n: i64 = q
                .strip_prefix('q')
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| Error::invalid(format!("bad quarantine entry {q:?}")).hint(hint.clone()))?;
            tx.conn()
                .prepare_cached("DELETE FROM quarantine WHERE id = ?1 AND issue_id = ?2")?
                .execute(rusqlite::params![n, id])?
        }
        (Some(v), None) => {
            return Err(Error::invalid(format!(
                "a quarantined batch is dropped, not settled with {v:?}"
            ))
            .hint(hint));
        }
        (None, None) => unreachable!("checked by the caller"),
    };
    if dropped == 0 {
        return Err(Error::new(
            crate::ErrorKind::NotFound,
            format!("no quarantined batch for {id}"),
        )
        .hint("`bd conflicts` lists them"));
    }
    let issue = match get_live(tx.conn(), id) {
        Ok(issue) => vec![Changed {
            issue,
            changed: true,
            lease: None,
        }],
        Err(_) => Vec::new(),
    };
    Ok(Response::Changed(issue))
}

/// A field's value from command-line text, validated as `bd update` would.
fn field_value_from_text(field: &str, text: &str) -> Result<Value> {
    Ok(match field {
        "priority" => json!(parse_priority(text)?),
        "status" => json!(Status::parse(text)?.as_str()),
        "issue_type" => json!(IssueType::parse(text)?.as_str()),
        "title" => {
            model::validate_title(text)?;
            json!(text)
        }
        _ => text_or_null(text),
    })
}
