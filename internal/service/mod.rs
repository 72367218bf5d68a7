//! The one implementation of every operation: [`apply`] runs a write in a write
//! transaction, [`query`] everything else. Both are called by the engine
//! (`crate::engine`), which owns what happens around them in either mode.
//!
//! Invariants: every mutation is recorded as ops through [`WriteTx::record`]; a
//! request's ops commit together or not at all; a local write supersedes exactly
//! the values its writer saw (the current heads), so locally there are no conflicts.
//!
//! Where each part lives: `reads` (queries, details, info), `issues` (create,
//! update, claim, close and reopen, delete), `labels`, `dependencies`,
//! `comments`, `conflicts` (resolve, id notices, clock skew), `batch`, and
//! `import`; this file holds the context, the write dispatch, exactly-once
//! delivery and the helpers the operations share.

mod batch;
mod comments;
mod conflicts;
mod dependencies;
mod import;
mod issues;
mod labels;
mod reads;

use batch::batch;
use comments::comment_add;
use conflicts::resolve;
use dependencies::{dep_add, dep_remove};
use issues::{create, delete, refuse_open_children, set_status, update};
use labels::change_labels;

use crate::api::{Changed, ImportReport, Request, Response};
use crate::clock::Clock;
use crate::model::{self, Issue, Op, OpKind, Status};
use crate::query;
use crate::storage::{BeadsPaths, WriteTx};
use crate::{Error, ErrorKind, Result};
use serde_json::Value;

pub use batch::BATCH_MAX;
pub use comments::COMMENT_MAX_BYTES;
pub(crate) use issues::expire_claims;
pub(crate) use reads::{query, query_rows};

pub use crate::model::BD_ACTOR;

/// Who is asking, and the environment the request runs in.
pub struct Context<'a> {
    /// The actor recorded on ops (`--actor`, `$BD_ACTOR`, the user name).
    pub actor: &'a str,
    /// Time source.
    pub clock: &'a dyn Clock,
    /// The tracker's files.
    pub paths: &'a BeadsPaths,
    /// How the request is being served (`direct` or `daemon`), for `info`.
    pub mode: &'static str,
    /// The caller's id for this write: a write whose id was already committed
    /// is answered from the record instead of being applied again.
    pub request_id: Option<&'a str>,
    /// Do not commit this request's work after this time (ms since the epoch).
    pub deadline_ms: Option<u64>,
    /// The relay leases held for this write, (issue id, fencing token): its
    /// ops on those issues carry the token (see [`crate::merge`]'s fencing).
    pub fences: &'a [(String, u64)],
}

impl Context<'_> {
    /// The fencing token of the lease held for this write on `issue`.
    pub fn fence(&self, issue: &str) -> Option<u64> {
        self.fences.iter().find(|(i, _)| i == issue).map(|(_, f)| *f)
    }
}

fn check_deadline(ctx: &Context<'_>) -> Result<()> {
    match ctx.deadline_ms {
        Some(d) if ctx.clock.now_ms() > d => Err(Error::deadline_passed()),
        _ => Ok(()),
    }
}

/// A request's fingerprint with its actor, stored with its id so that an id
/// reused for a different request, or by another actor, is refused rather
/// than answered with the other's outcome (another actor's `claim` replayed
/// under one id was told it held the issue).
fn request_digest(actor: &str, req: &Request) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(actor.as_bytes());
    h.update(b"\n");
    h.update(serde_json::to_vec(req)?);
    Ok(crate::model::hex_bytes(&h.finalize()[..16]))
}

/// Runs one write in `tx`, exactly once per request id: a request whose id is
/// already recorded gets the recorded answer and applies nothing; otherwise its
/// answer is recorded in the same transaction as its ops. Work that ends past
/// the deadline is refused (the caller's transaction or savepoint undoes it).
pub(crate) fn apply(tx: &mut WriteTx<'_>, ctx: &Context<'_>, req: Request) -> Result<Response> {
    if let Request::Settle { request_id } = req {
        // Never refused for lateness: it is how a late caller learns the truth.
        return settle(tx, &request_id);
    }
    check_deadline(ctx)?;
    let Some(rid) = ctx.request_id else {
        let resp = write(tx, ctx, req)?;
        check_deadline(ctx)?;
        return Ok(resp);
    };
    crate::api::validate_request_id(rid)?;
    let digest = request_digest(ctx.actor, &req)?;
    if let Some((seen, outcome)) = tx.request_outcome(rid)? {
        return match outcome {
            None => Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "request {rid} was abandoned: its command gave up and reported it not applied"
                ),
            )
            .hint("send it again with a new request id")),
            Some(_) if seen != digest => Err(Error::invalid(format!(
                "request id {rid} was already used for a different request (or by another actor)"
            ))
            .hint("give each distinct write its own --request-id")),
            Some(json) => Ok(serde_json::from_str(&json)?),
        };
    }
    let resp = write(tx, ctx, req)?;
    check_deadline(ctx)?;
    tx.record_request(rid, &digest, Some(&serde_json::to_string(&resp)?))?;
    Ok(resp)
}

/// Settles a request id whose caller gave up waiting: its recorded answer if it
/// was applied, else it is marked abandoned, so that a copy still on its way
/// is refused when it arrives, and the caller can say "not applied" for sure.
fn settle(tx: &mut WriteTx<'_>, request_id: &str) -> Result<Response> {
    crate::api::validate_request_id(request_id)?;
    match tx.request_outcome(request_id)? {
        Some((_, Some(json))) => Ok(Response::Settled(Some(Box::new(serde_json::from_str(
            &json,
        )?)))),
        Some((_, None)) => Ok(Response::Settled(None)),
        None => {
            tx.record_request(request_id, "abandoned", None)?;
            Ok(Response::Settled(None))
        }
    }
}

fn write(tx: &mut WriteTx<'_>, ctx: &Context<'_>, req: Request) -> Result<Response> {
    let resp = match req {
        Request::Create(r) => Response::Issue(Box::new(create(tx, ctx, r)?)),
        Request::Update(r) => {
            // Closing through update closes as `close` does: not a parent
            // whose children are open (update has no --force).
            if r.status.as_deref().map(Status::parse).transpose()? == Some(Status::Closed) {
                let full = resolve_ids(tx, &r.ids)?;
                for id in &full {
                    refuse_open_children(tx.conn(), id, &full)?;
                }
            }
            Response::Changed(update(tx, ctx, r)?)
        }
        Request::Close { ids, reason, force } => {
            let closed = Status::Closed;
            if !force {
                for id in resolve_ids(tx, &ids)? {
                    refuse_open_children(tx.conn(), &id, &ids)?;
                }
            }
            Response::Changed(for_each_id(tx, &ids, |tx, id| {
                set_status(tx, ctx, id, &closed, reason.as_deref())
            })?)
        }
        Request::Reopen { ids } => Response::Changed(for_each_id(tx, &ids, |tx, id| {
            set_status(tx, ctx, id, &Status::Open, None)
        })?),
        Request::Delete {
            ids,
            force,
            cascade,
        } => Response::Deleted(delete(tx, ctx, &ids, force, cascade)?),
        Request::Resolve {
            id,
            field,
            value,
            take,
        } => resolve(tx, ctx, &id, &field, value, take)?,
        Request::DepAdd {
            issue,
            depends_on,
            dep_type,
        } => dep_add(tx, ctx, &issue, &depends_on, &dep_type)?,
        Request::DepRemove {
            issue,
            depends_on,
            dep_type,
        } => Response::Dependencies(dep_remove(
            tx,
            ctx,
            &issue,
            &depends_on,
            dep_type.as_deref(),
        )?),
        Request::LabelAdd { ids, labels } | Request::LabelRemove { ids, labels }
            if labels.is_empty() =>
        {
            let _ = ids;
            return Err(Error::invalid("no labels given").hint("bd label add ID LABEL [LABEL...]"));
        }
        Request::LabelAdd { ids, labels } => {
            for l in &labels {
                model::validate_label(l)?;
            }
            Response::Changed(for_each_id(tx, &ids, |tx, id| {
                change_labels(tx, ctx, id, &labels, &[])
            })?)
        }
        Request::LabelRemove { ids, labels } => {
            Response::Changed(for_each_id(tx, &ids, |tx, id| {
                change_labels(tx, ctx, id, &[], &labels)
            })?)
        }
        Request::CommentAdd { id, text } => Response::Comment(comment_add(tx, ctx, &id, &text)?),
        Request::Batch { requests } => Response::Batch(batch(tx, ctx, requests)?),
        Request::Import {
            records, strict, ..
        } => Response::Import(import::import(tx, ctx, &records, strict)?),
        other => return Err(Error::internal(format!("not a write request: {other:?}"))),
    };
    tx.flush()?;
    Ok(resp)
}

/// A new op for `issue` by the context's actor; storage fills in clock and sequence.
fn new_op(
    ctx: &Context<'_>,
    issue: &str,
    kind: OpKind,
    field: Option<&str>,
    value: Value,
    supersedes: Vec<String>,
) -> Op {
    Op {
        op_id: String::new(),
        issue: issue.to_string(),
        of: None,
        kind,
        field: field.map(str::to_string),
        value,
        supersedes,
        fence: ctx.fence(issue),
        hlc: Default::default(),
        actor: ctx.actor.to_string(),
        replica: String::new(),
        seq: 0,
    }
}

/// The full ids the (possibly shortened) `ids` name; refuses an empty list.
fn resolve_ids(tx: &WriteTx<'_>, ids: &[String]) -> Result<Vec<String>> {
    if ids.is_empty() {
        return Err(Error::invalid("no issue ids given"));
    }
    ids.iter()
        .map(|q| query::resolve_id(tx.conn(), q))
        .collect()
}

/// Resolves every id first (so a typo fails before anything changes), then applies
/// `f` to each, flushing between them so later steps see earlier ones.
fn for_each_id(
    tx: &mut WriteTx<'_>,
    ids: &[String],
    mut f: impl FnMut(&mut WriteTx<'_>, &str) -> Result<bool>,
) -> Result<Vec<Changed>> {
    let mut out = Vec::new();
    for id in resolve_ids(tx, ids)? {
        let changed = f(tx, &id)?;
        tx.flush()?;
        out.push(Changed {
            issue: get_live(tx.conn(), &id)?,
            changed,
            lease: None,
        });
    }
    Ok(out)
}

fn get_live(conn: &rusqlite::Connection, id: &str) -> Result<Issue> {
    query::get_issue(conn, id)?.ok_or_else(|| Error::not_found(format!("issue {id} not found")))
}

fn is_empty_value(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        _ => false,
    }
}

/// Writes `field` = `value` unless it already displays that value (and is not in
/// conflict). Returns whether an op was recorded.
fn set_field(
    tx: &mut WriteTx<'_>,
    ctx: &Context<'_>,
    id: &str,
    field: &str,
    value: Value,
) -> Result<bool> {
    let doc = tx.doc(id)?;
    let heads = doc.field_heads(field);
    let current = doc.field_value(field);
    let same = current == Some(&value) || (is_empty_value(current) && is_empty_value(Some(&value)));
    if same && heads.len() <= 1 {
        return Ok(false);
    }
    tx.record(new_op(ctx, id, OpKind::Set, Some(field), value, heads))?;
    Ok(true)
}

fn text_or_null(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::String(s.to_string())
    }
}

fn current_str(tx: &mut WriteTx<'_>, id: &str, field: &str) -> Result<String> {
    Ok(match tx.doc(id)?.field_value(field) {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    })
}
