//! An issue's life: create (with id generation: hashed, explicit or a parent's
//! next child), update, claim, status changes (close and reopen, refused while
//! children are open) and delete (refused while open issues depend on it).

use super::labels::change_labels;
use super::{
    Context, current_str, for_each_id, get_live, new_op, resolve_ids, set_field, text_or_null,
};
use crate::api::{Changed, CreateRequest, UpdateRequest};
use crate::clock::format_rfc3339;
use crate::config::Config;
use crate::ids;
use crate::model::{self, DepType, Issue, IssueType, OpKind, Status, parse_priority};
use crate::query;
use crate::storage::WriteTx;
use crate::{Error, ErrorKind, Result};
use rusqlite::params;
use serde_json::{Map, Value, json};

fn dedup<T: PartialEq + Clone>(items: &[T]) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(items.len());
    for i in items {
        if !out.contains(i) {
            out.push(i.clone());
        }
    }
    out
}

/// Checks the free-text fields given, in the order description, design,
/// acceptance criteria, notes.
fn check_texts(texts: [Option<&String>; 4]) -> Result<()> {
    let names = ["description", "design", "acceptance criteria", "notes"];
    for (name, text) in names.into_iter().zip(texts) {
        if let Some(t) = text {
            model::validate_text(name, t)?;
        }
    }
    Ok(())
}

pub(super) fn create(tx: &mut WriteTx<'_>, ctx: &Context<'_>, r: CreateRequest) -> Result<Issue> {
    model::validate_title(&r.title)?;
    if let Some(a) = &r.assignee {
        model::validate_assignee(a)?;
    }
    check_texts([
        Some(&r.description),
        Some(&r.design),
        Some(&r.acceptance_criteria),
        Some(&r.notes),
    ])?;
    let priority = match r.priority {
        Some(p) => parse_priority(&p.to_string())?,
        None => model::PRIORITY_DEFAULT,
    };
    let issue_type = match &r.issue_type {
        Some(t) => IssueType::parse(t)?,
        None => IssueType::Task,
    };
    let labels = dedup(&r.labels);
    for l in &labels {
        model::validate_label(l)?;
    }
    let mut edges: Vec<(DepType, String)> = Vec::new();
    if let Some(p) = &r.parent {
        edges.push((DepType::ParentChild, query::resolve_id(tx.conn(), p)?));
    }
    for (kind, target) in &r.deps {
        edges.push((DepType::parse(kind)?, query::resolve_id(tx.conn(), target)?));
    }
    let edges = dedup(&edges);
    let id = match (&r.id, edges.first()) {
        (Some(explicit), _) => {
            ids::validate_id(explicit)?;
            if !explicit.starts_with(|c: char| c.is_ascii_alphanumeric()) {
                // `-x` reads as a flag and `.` / `..` as paths wherever the
                // id is typed back.
                return Err(Error::invalid(format!("invalid issue id {explicit:?}"))
                    .hint("a new id starts with a letter or digit"));
            }
            if query::id_ever_used(tx.conn(), explicit)? {
                let what = if query::is_deleted(tx.conn(), explicit)? {
                    "was used by a deleted issue"
                } else {
                    "already exists"
                };
                return Err(
                    Error::new(ErrorKind::Exists, format!("issue id {explicit} {what}"))
                        .hint("choose another --id, or leave it out to get a generated one"),
                );
            }
            explicit.clone()
        }
        (None, Some((DepType::ParentChild, parent))) if r.parent.is_some() => {
            next_child_id(tx, parent)?
        }
        _ => {
            let prefix = Config::load_cached(&ctx.paths.config())?
                .prefix()
                .to_string();
            let seed = format!(
                "{}|{}|{}|{}|{}",
                tx.replica(),
                tx.now_ms(),
                tx.recorded().len(),
                ctx.actor,
                r.title
            );
            generate_id(tx, &prefix, &seed)?
        }
    };
    let mut fields = Map::new();
    fields.insert("title".into(), json!(r.title));
    for (k, v) in [
        ("description", &r.description),
        ("design", &r.design),
        ("acceptance_criteria", &r.acceptance_criteria),
        ("notes", &r.notes),
    ] {
        if !v.is_empty() {
            fields.insert(k.into(), json!(v));
        }
    }
    fields.insert("status".into(), json!(Status::Open.as_str()));
    fields.insert("priority".into(), json!(priority));
    fields.insert("issue_type".into(), json!(issue_type.as_str()));
    for (k, v) in [("assignee", &r.assignee), ("external_ref", &r.external_ref)] {
        if let Some(v) = v.as_ref().filter(|v| !v.is_empty()) {
            fields.insert(k.into(), json!(v));
        }
    }
    fields.insert("created_at".into(), json!(format_rfc3339(tx.now_ms())));
    fields.insert("created_by".into(), json!(ctx.actor));
    // Labels and edges travel inside the create op: one op per new issue.
    if !labels.is_empty() {
        fields.insert("labels".into(), json!(labels));
    }
    if !edges.is_empty() {
        let deps: Vec<Value> = edges
            .iter()
            .map(|(kind, target)| json!({"depends_on_id": target, "type": kind.as_str()}))
            .collect();
        fields.insert("dependencies".into(), Value::Array(deps));
    }
    tx.record(new_op(
        ctx,
        &id,
        OpKind::Create,
        None,
        Value::Object(fields),
        vec![],
    ))?;
    tx.flush()?;
    // The rows were just written from this doc: reading them back would only
    // parse what it holds. (A create carries no comments, whose order the rows
    // would decide.)
    match tx
        .flushed_doc(&id)
        .and_then(crate::merge::IssueDoc::materialise)
    {
        Some(m) if !m.deleted => Ok(m.issue),
        _ => get_live(tx.conn(), &id),
    }
}

fn generate_id(tx: &mut WriteTx<'_>, prefix: &str, seed: &str) -> Result<String> {
    // An upper bound on the number of issues, in O(log n): rowids only grow, and
    // over-estimating only lengthens ids. (COUNT(*) cost 3 ms at 100k issues.)
    let n: i64 = crate::storage::sqlite::cached_row(
        tx.conn(),
        "SELECT COALESCE((SELECT MAX(rowid) FROM issues), 0) + (SELECT COUNT(*) FROM tombstones)",
        [],
        |r| r.get(0),
    )?;
    let mut len = ids::hash_len_for(n as u64);
    for attempt in 0..64u32 {
        if attempt > 0 && attempt % 4 == 0 {
            len = (len + 1).min(ids::MAX_HASH_LEN);
        }
        let id = ids::hashed_id(prefix, format!("{seed}|{attempt}").as_bytes(), len);
        if !query::id_ever_used(tx.conn(), &id)? {
            return Ok(id);
        }
    }
    Err(Error::internal(
        "could not find a free issue id after 64 attempts",
    ))
}

fn next_child_id(tx: &mut WriteTx<'_>, parent: &str) -> Result<String> {
    let lo = format!("{parent}.");
    let hi = format!("{parent}/"); // '/' sorts right after '.'
    let mut stmt = tx.conn().prepare_cached(
        "SELECT DISTINCT issue_id FROM ops WHERE issue_id > ?1 AND issue_id < ?2",
    )?;
    let max = stmt
        .query_map(params![lo, hi], |r| r.get::<_, String>(0))?
        .filter_map(|id| id.ok())
        .filter_map(|id| id[lo.len()..].parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    Ok(ids::child_id(parent, max + 1))
}

pub(super) fn update(tx: &mut WriteTx<'_>, ctx: &Context<'_>, r: UpdateRequest) -> Result<Vec<Changed>> {
    let nothing = UpdateRequest {
        ids: r.ids.clone(),
        ..Default::default()
    };
    if r == nothing {
        return Err(Error::invalid("nothing to change")
            .hint("pass a field to set, e.g. --status in_progress, --priority 1, or --claim"));
    }
    if let Some(t) = &r.title {
        model::validate_title(t)?;
    }
    if let Some(a) = &r.assignee {
        model::validate_assignee(a)?;
    }
    check_texts([
        r.description.as_ref(),
        r.design.as_ref(),
        r.acceptance_criteria.as_ref(),
        r.notes.as_ref(),
    ])?;
    let status = r.status.as_deref().map(Status::parse).transpose()?;
    let issue_type = r.issue_type.as_deref().map(IssueType::parse).transpose()?;
    if let Some(p) = r.priority {
        parse_priority(&p.to_string())?;
    }
    let mut all_labels: Vec<&String> = r.add_labels.iter().chain(&r.remove_labels).collect();
    all_labels.extend(r.set_labels.iter().flatten());
    for l in all_labels {
        model::validate_label(l)?;
    }
    if r.claim && (r.assignee.is_some() || status.is_some()) {
        return Err(
            Error::invalid("--claim sets the assignee and status itself")
                .hint("drop --assignee/--status, or drop --claim"),
        );
    }
    if r.unclaim && (r.claim || r.assignee.is_some() || status.is_some()) {
        return Err(
            Error::invalid("unclaim clears the assignee and reopens by itself")
                .hint("drop --claim/--assignee/--status"),
        );
    }
    if r.renew && !r.claim {
        return Err(Error::invalid("a renewal goes with a claim")
            .hint("use `bd claim ID --renew`"));
    }
    if let Some(ttl) = r.claim_ttl_ms {
        if !r.claim {
            return Err(Error::invalid("a claim's time limit goes with a claim")
                .hint("add --claim, or drop --ttl"));
        }
        if !crate::api::CLAIM_TTL_MS.contains(&ttl) {
            return Err(Error::invalid(format!(
                "a claim lasts 10s to 24h without renewal, not {}",
                crate::clock::format_duration_ms(ttl)
            ))
            .hint("e.g. --ttl 30m"));
        }
    }
    for_each_id(tx, &r.ids, |tx, id| {
        let mut changed = false;
        if r.claim {
            changed |= claim(tx, ctx, id, r.claim_ttl_ms, r.renew)?;
        }
        if r.unclaim {
            changed |= unclaim(tx, ctx, id)?;
        }
        for (field, value) in [
            ("title", &r.title),
            ("description", &r.description),
            ("design", &r.design),
            ("acceptance_criteria", &r.acceptance_criteria),
            ("notes", &r.notes),
            ("assignee", &r.assignee),
            ("external_ref", &r.external_ref),
        ] {
            if let Some(v) = value {
                let set = set_field(tx, ctx, id, field, text_or_null(v))?;
                if set && field == "assignee" {
                    // A claim's time limit was the claimer's; it ends with
                    // their assignment.
                    clear_claim_ttl(tx, ctx, id)?;
                }
                changed |= set;
            }
        }
        if let Some(p) = r.priority {
            changed |= set_field(tx, ctx, id, "priority", json!(p))?;
        }
        if let Some(t) = &issue_type {
            changed |= set_field(tx, ctx, id, "issue_type", json!(t.as_str()))?;
        }
        if let Some(s) = &status {
            changed |= set_status(tx, ctx, id, s, None)?;
        }
        let (mut add, mut remove) = (r.add_labels.clone(), r.remove_labels.clone());
        if let Some(set) = &r.set_labels {
            let current = tx
                .doc(id)?
                .materialise()
                .map(|m| m.issue.labels)
                .unwrap_or_default();
            remove.extend(current.iter().filter(|l| !set.contains(l)).cloned());
            add.extend(set.iter().cloned());
        }
        changed |= change_labels(tx, ctx, id, &add, &remove)?;
        if let Some(p) = &r.parent {
            changed |= set_parent(tx, ctx, id, p)?;
        }
        Ok(changed)
    })
}

/// Moves `id` under `parent` (`""`: under none): its parent-child edges to
/// any other issue go, one to `parent` comes. Its id stays as it is. Refused
/// when `parent` is `id` or lies under it (through parent links or blockers:
/// either would make a cycle of gating edges).
pub(super) fn set_parent(tx: &mut WriteTx<'_>, ctx: &Context<'_>, id: &str, parent: &str) -> Result<bool> {
    // Every live parent edge, not only the one shown: after moves crossed
    // on two clones the issue has two, and a move settles that.
    let current: Vec<String> = tx.doc(id)?.parents();
    let target = match parent.trim() {
        "" => None,
        p => Some(query::resolve_id(tx.conn(), p)?),
    };
    if let Some(t) = &target {
        if t == id {
            return Err(Error::invalid(format!("{id} cannot be its own parent")));
        }
        if !current.contains(t) && query::would_cycle(tx.conn(), id, t)? {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("{t} lies under {id} (or waits for it): moving {id} under {t} would make a cycle; nothing was changed"),
            )
            .hint(format!("see what is under it with: bd dep tree {id} --reverse")));
        }
    }
    let mut changed = false;
    for old in current.iter().filter(|o| Some(*o) != target.as_ref()) {
        // (Not `dep_remove`, which removes what the issue shows: an edge
        // hidden by a `parent` conflict goes too.)
        let kind = DepType::ParentChild.as_str();
        let heads = tx.doc(id)?.dep_heads(old, kind);
        let value = json!({"depends_on_id": old, "type": kind});
        tx.record(new_op(ctx, id, OpKind::DepRemove, None, value, heads))?;
        changed = true;
    }
    if let Some(t) = &target
        && !current.contains(t)
    {
        super::dependencies::dep_add(tx, ctx, id, t, DepType::ParentChild.as_str())?;
        changed = true;
    } else if let Some(t) = &target
        && current.len() > 1
    {
        // Settling a `parent` conflict by keeping one of its parents: the
        // kept edge is added again, so that a clone settling it the other
        // way at the same time (removing this edge, keeping its own) does
        // not leave the issue with no parent: the two new adds survive each
        // other's removes, and make a `parent` conflict again.
        let kind = DepType::ParentChild.as_str();
        let value = json!({"depends_on_id": t, "type": kind});
        tx.record(new_op(ctx, id, OpKind::DepAdd, None, value, vec![]))?;
    }
    Ok(changed)
}

/// Atomic claim: assign to the actor and start, only if unassigned (or
/// assigned under a claim that lapsed: a relay lease another clone's newer
/// lease replaced, or a claim with a time limit its holder let run out) and
/// not closed. `ttl`: the claim lapses that long after the holder's last
/// write to the issue. Claiming an issue one holds renews it (with `ttl` if
/// given, else the limit it had); `renew` refuses to take an issue one does
/// not hold.
fn claim(tx: &mut WriteTx<'_>, ctx: &Context<'_>, id: &str, ttl: Option<u64>, renew: bool) -> Result<bool> {
    let assignee = current_str(tx, id, "assignee")?;
    let status = Status::from_wire(&current_str(tx, id, "status")?);
    if status.is_closed() {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!("{id} is closed; it cannot be claimed"),
        )
        .hint(format!("reopen it first: bd reopen {id}")));
    }
    let lapsed_at = claim_lapsed_at(tx, id)?;
    if renew {
        refuse_renewal(ctx, id, &assignee, &status, lapsed_at)?;
    }
    let fence = ctx.fence(id);
    let lease = tx.doc(id)?.lease().map(|(f, who)| (f, who.to_string()));
    let holder = !assignee.is_empty() && assignee == ctx.actor;
    if !assignee.is_empty() && assignee != ctx.actor {
        // The relay granted this write a newer lease than the one the
        // assignee claimed under, while the work is in progress: that lease
        // expired. A claim made without a lease (provisional) is not taken
        // over this way, nor an issue assigned but not in progress (closed
        // and reopened, say: its lease was given back, the assignment stays,
        // as it does without a relay).
        let lease_lapsed = status == Status::InProgress
            && matches!((fence, &lease), (Some(new), Some((old, holder)))
                if *holder == assignee && *old < new);
        if !lease_lapsed && lapsed_at.is_none() {
            let until = current_expiry(tx, id)?
                .map(|t| format!(" (unless they write to it, their claim lapses at {t})"))
                .unwrap_or_default();
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("{id} is already claimed by {assignee}{until}"),
            )
            .hint("pick another issue from `bd ready`"));
        }
        if let Some(at) = lapsed_at {
            // Taken over from a holder whose time ran out (made on another
            // clone: this clone returns its own claims to open itself).
            let ttl_text = current_str(tx, id, "claim_ttl")?;
            let text = format!(
                "{assignee}'s claim lapsed at {} (no write by them for {ttl_text}); {} took it over",
                format_rfc3339(at),
                ctx.actor
            );
            super::comments::comment_add(tx, ctx, id, &text)?;
        }
    }
    // A new lease is recorded even when the assignee stays the same: its
    // first op is where the lease begins (see `merge`'s fencing).
    let new_lease = fence.is_some() && lease.map(|l| l.0) != fence;
    let mut changed = if new_lease {
        let heads = tx.doc(id)?.field_heads("assignee");
        if heads.len() > 1 {
            // Two claims made apart (provisional ones, say): a lease must not
            // settle that silently.
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("{id} has a claim conflict: it was claimed on two clones at once"),
            )
            .hint(format!("settle it first: bd conflicts, then bd resolve {id} --field assignee --take WHO")));
        }
        tx.record(new_op(ctx, id, OpKind::Set, Some("assignee"), json!(ctx.actor), heads))?;
        true
    } else {
        set_field(tx, ctx, id, "assignee", json!(ctx.actor))?
    };
    if lapsed_at.is_some() && status == Status::InProgress {
        // A takeover writes the status even though it stays in progress: a
        // return to open the lapsed claim's own clone makes meanwhile
        // (bd's write) then yields to it instead of reopening the issue.
        let heads = tx.doc(id)?.field_heads("status");
        tx.record(new_op(ctx, id, OpKind::Set, Some("status"), json!(Status::InProgress.as_str()), heads))?;
        changed = true;
    } else {
        changed |= set_status(tx, ctx, id, &Status::InProgress, None)?;
    }
    let current_ttl = current_str(tx, id, "claim_ttl")?;
    let want = match ttl {
        Some(ms) => Some(crate::clock::format_duration_ms(ms)),
        // The holder claiming again keeps the limit it had.
        None if holder => Some(current_ttl.clone()).filter(|t| !t.is_empty()),
        // The tracker's default, if it sets one.
        None => match Config::load_cached(&ctx.paths.config())?.get("claim.ttl") {
            Some("none") | None => None,
            Some(v) => Some(crate::clock::format_duration_ms(crate::config::claim_ttl_ms(v)?)),
        },
    };
    match want {
        // A renewal is a write by the holder, whatever it sets: the claim
        // lasts from its last write.
        Some(t) if holder && !changed => {
            let heads = tx.doc(id)?.field_heads("claim_ttl");
            tx.record(new_op(ctx, id, OpKind::Set, Some("claim_ttl"), json!(t), heads))?;
            changed = true;
        }
        Some(t) => changed |= set_field(tx, ctx, id, "claim_ttl", json!(t))?,
        None => changed |= clear_claim_ttl(tx, ctx, id)?,
    }
    Ok(changed)
}

/// `bd claim --renew` is for the holder of a live claim only.
fn refuse_renewal(
    ctx: &Context<'_>,
    id: &str,
    assignee: &str,
    status: &Status,
    lapsed_at: Option<u64>,
) -> Result<()> {
    if assignee.is_empty() {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "{id} is not claimed by {}: nobody holds it; nothing was renewed",
                ctx.actor
            ),
        )
        .hint(format!(
            "claim it: bd claim {id} (a claim that lapsed was returned to ready, with a comment saying so)"
        )));
    }
    if assignee != ctx.actor || *status != Status::InProgress {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!("{id} is not claimed by {} ({assignee} holds it); nothing was renewed", ctx.actor),
        )
        .hint("only the holder renews a claim; pick another issue from `bd ready`"));
    }
    if let Some(at) = lapsed_at {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "{}'s claim on {id} lapsed at {}; nothing was renewed",
                ctx.actor,
                format_rfc3339(at)
            ),
        )
        .hint(format!("claim it again: bd claim {id}")));
    }
    Ok(())
}

/// When the claim on `id` lapsed, if it has (a time limit, in progress, and
/// no write by the holder for that long).
fn claim_lapsed_at(tx: &mut WriteTx<'_>, id: &str) -> Result<Option<u64>> {
    let now = tx.now_ms();
    Ok(current_expiry_ms(tx, id)?.filter(|at| *at <= now))
}

fn current_expiry_ms(tx: &mut WriteTx<'_>, id: &str) -> Result<Option<u64>> {
    Ok(tx
        .doc(id)?
        .materialise()
        .and_then(|m| m.issue.claim_expires_at)
        .and_then(|t| crate::clock::parse_rfc3339(&t))
        .map(|ms| ms.max(0) as u64))
}

fn current_expiry(tx: &mut WriteTx<'_>, id: &str) -> Result<Option<String>> {
    Ok(current_expiry_ms(tx, id)?.map(format_rfc3339))
}

/// Clears a claim's time limit, if it has one.
fn clear_claim_ttl(tx: &mut WriteTx<'_>, ctx: &Context<'_>, id: &str) -> Result<bool> {
    if current_str(tx, id, "claim_ttl")?.is_empty() {
        return Ok(false);
    }
    set_field(tx, ctx, id, "claim_ttl", Value::Null)
}

/// Returns the issues whose claims lapsed by `now` to open: for each claim
/// made on this clone without a relay lease (a claim made elsewhere is its
/// own clone's to return, a leased one the mesh's to take over; here both
/// are takeable at once, see [`claim`]), unassigns it and reopens it with a
/// comment saying whose claim lapsed. `ctx` is bd's own actor.
pub(crate) fn expire_claims(tx: &mut WriteTx<'_>, ctx: &Context<'_>, now: u64) -> Result<Vec<String>> {
    let due: Vec<String> = tx
        .conn()
        .prepare_cached(
            "SELECT id FROM issues INDEXED BY issues_claim_expiry
             WHERE claim_expires_ms IS NOT NULL AND claim_expires_ms <= ?1 ORDER BY id",
        )?
        .query_map(rusqlite::params![now as i64], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let replica = tx.replica().to_string();
    let mut out = Vec::new();
    for id in due {
        let doc = tx.doc(&id)?;
        let ours = doc.field_writers("assignee").iter().all(|(_, r, _)| *r == replica);
        let lease_holder = doc.lease().map(|(_, who)| who.to_string());
        let Some(m) = doc.materialise() else { continue };
        let (Some(holder), Some(at), Some(ttl)) = (
            m.issue.assignee.clone(),
            m.issue.claim_expires_at.clone(),
            m.issue.claim_ttl.clone(),
        ) else {
            continue;
        };
        // A claim under a relay lease is the mesh's: another clone takes it
        // over with a newer lease once it lapsed (returning it here as well
        // would race that takeover into a conflict).
        if !ours || lease_holder.as_deref() == Some(holder.as_str()) {
            continue;
        }
        let text = format!(
            "{holder}'s claim lapsed at {at} (no write by them for {ttl}); the issue is ready again"
        );
        super::comments::comment_add(tx, ctx, &id, &text)?;
        set_field(tx, ctx, &id, "assignee", Value::Null)?;
        set_status(tx, ctx, &id, &Status::Open, None)?;
        tx.flush()?;
        out.push(id);
    }
    Ok(out)
}

/// Gives a claim up: unassigns and reopens (if in progress), only if the
/// actor holds it; already unassigned is no change.
fn unclaim(tx: &mut WriteTx<'_>, ctx: &Context<'_>, id: &str) -> Result<bool> {
    let assignee = current_str(tx, id, "assignee")?;
    if assignee.is_empty() {
        return Ok(false);
    }
    if assignee != ctx.actor {
        if tx.doc(id)?.lease().is_some_and(|(_, holder)| holder == ctx.actor) {
            // Assigned to someone else since (a conflict settled their way),
            // but the relay lease is still the caller's: the daemon gives it
            // back; the issue stays as it is.
            return Ok(false);
        }
        return Err(Error::new(
            ErrorKind::Conflict,
            format!("{id} is claimed by {assignee}, not by {}", ctx.actor),
        )
        .hint(format!(
            "only the holder gives a claim up; to take it from them: bd update {id} --assignee ''"
        )));
    }
    let mut changed = set_field(tx, ctx, id, "assignee", Value::Null)?;
    if Status::from_wire(&current_str(tx, id, "status")?) == Status::InProgress {
        changed |= set_status(tx, ctx, id, &Status::Open, None)?;
    }
    changed |= clear_claim_ttl(tx, ctx, id)?;
    Ok(changed)
}

/// Sets the status, keeping `closed_at` / `close_reason` in step with it.
pub(super) fn set_status(
    tx: &mut WriteTx<'_>,
    ctx: &Context<'_>,
    id: &str,
    status: &Status,
    reason: Option<&str>,
) -> Result<bool> {
    let was = Status::from_wire(&current_str(tx, id, "status")?);
    if &was == status {
        return Ok(false);
    }
    set_field(tx, ctx, id, "status", json!(status.as_str()))?;
    if *status != Status::InProgress {
        // A claim lasts while the work is in progress.
        clear_claim_ttl(tx, ctx, id)?;
    }
    if status.is_closed() {
        set_field(tx, ctx, id, "closed_at", json!(format_rfc3339(tx.now_ms())))?;
        if let Some(r) = reason.filter(|r| !r.trim().is_empty()) {
            set_field(tx, ctx, id, "close_reason", json!(r))?;
        }
    } else if was.is_closed() {
        set_field(tx, ctx, id, "closed_at", Value::Null)?;
        set_field(tx, ctx, id, "close_reason", Value::Null)?;
    }
    Ok(true)
}

/// Refuses to close `id` while children of it (not themselves being closed
/// in the same request) are open: closing a parent does not finish its work.
pub(super) fn refuse_open_children(conn: &rusqlite::Connection, id: &str, closing: &[String]) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "SELECT i.id FROM deps d JOIN issues i ON i.id = d.issue_id
         WHERE d.depends_on_id = ?1 AND d.type = 'parent-child' AND i.status <> 'closed'
         ORDER BY i.id",
    )?;
    let open: Vec<String> = stmt
        .query_map(params![id], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?
        .into_iter()
        .filter(|c| !closing.contains(c))
        .collect();
    if open.is_empty() {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Conflict,
        format!(
            "{id} has {} open child issue(s): {}; nothing was closed",
            open.len(),
            open.join(", ")
        ),
    )
    .hint(format!(
        "close them first (or in the same command), or `bd close {id} --force`"
    )))
}

pub(super) fn delete(
    tx: &mut WriteTx<'_>,
    ctx: &Context<'_>,
    ids: &[String],
    force: bool,
    cascade: bool,
) -> Result<Vec<String>> {
    let mut ids = resolve_ids(tx, ids)?;
    if cascade {
        // Everything that depends on them, transitively.
        let mut i = 0;
        while i < ids.len() {
            for d in open_dependents(tx.conn(), &ids[i].clone(), &ids)? {
                ids.push(d);
            }
            i += 1;
        }
    } else if !force {
        for id in &ids {
            let deps = open_dependents(tx.conn(), id, &ids)?;
            if !deps.is_empty() {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "{} open issue(s) depend on {id}: {}; nothing was deleted",
                        deps.len(),
                        deps.join(", ")
                    ),
                )
                .hint(format!(
                    "`bd delete {id} --cascade` deletes them too; `--force` deletes only {id} (their edges then hold nothing back)"
                )));
            }
        }
    }
    let mut out = Vec::new();
    for id in ids {
        if !tx.is_live(&id)? {
            continue;
        }
        let heads = tx.doc(&id)?.all_heads();
        tx.record(new_op(ctx, &id, OpKind::Delete, None, Value::Null, heads))?;
        tx.flush()?;
        out.push(id);
    }
    Ok(out)
}

/// Live issues that depend on `id` (a `blocks` or `parent-child` edge: a
/// `related` or `discovered-from` link is a reference, not a dependency),
/// not closed, and not in `except`, sorted.
fn open_dependents(
    conn: &rusqlite::Connection,
    id: &str,
    except: &[String],
) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT i.id FROM deps d JOIN issues i ON i.id = d.issue_id
         WHERE d.depends_on_id = ?1 AND d.type IN ('blocks', 'parent-child')
           AND i.status <> 'closed' ORDER BY i.id",
    )?;
    let ids = stmt
        .query_map(params![id], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(ids.into_iter().filter(|d| !except.contains(d)).collect())
}
