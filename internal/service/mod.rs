//! The one implementation of every operation: [`apply`] runs a write in a write
//! transaction, [`query`] everything else. Both are called by the engine
//! (`crate::engine`), which owns what happens around them in either mode.
//!
//! Invariants: every mutation is recorded as ops through [`WriteTx::record`]; a
//! request's ops commit together or not at all; a local write supersedes exactly
//! the values its writer saw (the current heads), so locally there are no conflicts.

mod import;

use crate::api::{
    Changed, CreateRequest, FlushReport, ImportReport, Info, IssueDetails, Request, Response,
    UpdateRequest,
};

use crate::clock::{Clock, format_rfc3339};
use crate::config::Config;
use crate::ids;
use crate::jsonl;
use crate::model::{
    self, Comment, DepType, Dependency, Issue, IssueType, Op, OpKind, Status, parse_priority,
};
use crate::query::{self, Scope};
use crate::storage::collisions;
use crate::storage::{BeadsPaths, Store, WriteTx};
use crate::{Error, ErrorKind, Result};
use rusqlite::params;
use serde_json::{Map, Value, json};

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
}

fn check_deadline(ctx: &Context<'_>) -> Result<()> {
    match ctx.deadline_ms {
        Some(d) if ctx.clock.now_ms() > d => Err(Error::deadline_passed()),
        _ => Ok(()),
    }
}

/// A request's fingerprint, stored with its id so that an id reused for a
/// different request is refused rather than answered with the other's outcome.
fn request_digest(req: &Request) -> Result<String> {
    use sha2::{Digest, Sha256};
    let bytes = serde_json::to_vec(req)?;
    Ok(crate::model::hex_bytes(&Sha256::digest(&bytes)[..16]))
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
    let digest = request_digest(&req)?;
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
                "request id {rid} was already used for a different request"
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

/// Runs a request that is not a write on `store`: queries, dry runs, and the
/// file-only requests (flush, config). The engine calls it (`engine::read`).
pub(crate) fn query(store: &mut Store, ctx: &Context<'_>, req: Request) -> Result<Response> {
    match req {
        Request::Import {
            records,
            dry_run: true,
            strict,
        } => {
            let report = store.trial(ctx.clock, |tx| import::import(tx, ctx, &records, strict))?;
            Ok(Response::Import(ImportReport {
                dry_run: true,
                ..report
            }))
        }
        req => without_write_tx(store, ctx, req),
    }
}

/// A list or ready request's issues as their stored JSON, unparsed (for an
/// answer about to be serialised); `None` for any other request.
pub(crate) fn query_rows(
    store: &mut Store,
    req: &Request,
) -> Result<Option<Vec<Box<serde_json::value::RawValue>>>> {
    let (f, scope) = match req {
        Request::List(f) => (f, Scope::All),
        Request::Ready(f) => (f, Scope::Ready),
        _ => return Ok(None),
    };
    store.read(|conn| query::list_rows(conn, &checked(conn, f.clone())?, scope).map(Some))
}

fn write(tx: &mut WriteTx<'_>, ctx: &Context<'_>, req: Request) -> Result<Response> {
    let resp = match req {
        Request::Create(r) => Response::Issue(Box::new(create(tx, ctx, r)?)),
        Request::Update(r) => Response::Changed(update(tx, ctx, r)?),
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

/// Requests that need no write transaction: queries, and the file-only writes
/// (flush, config).
/// Longest batch accepted.
pub const BATCH_MAX: usize = 10_000;

/// Runs a batch's operations in order in the caller's transaction; the first
/// failure fails the whole batch (the caller's transaction or savepoint then rolls
/// everything back).
fn batch(tx: &mut WriteTx<'_>, ctx: &Context<'_>, requests: Vec<Request>) -> Result<Vec<Response>> {
    if requests.is_empty() {
        return Err(Error::invalid("empty batch"));
    }
    if requests.len() > BATCH_MAX {
        return Err(Error::invalid(format!(
            "batch of {} operations; the limit is {BATCH_MAX}",
            requests.len()
        )));
    }
    let mut created: Vec<Option<String>> = Vec::with_capacity(requests.len());
    let mut out = Vec::with_capacity(requests.len());
    for (i, req) in requests.into_iter().enumerate() {
        let n = i + 1;
        let name = req.op_name();
        let fail = |e: Error| Error {
            kind: e.kind,
            message: format!(
                "batch operation #{n} ({name}) failed: {}; nothing in the batch was applied",
                e.message
            ),
            hints: e.hints,
        };
        if !req.is_write()
            || matches!(
                req,
                Request::Batch { .. } | Request::Import { .. } | Request::Settle { .. }
            )
        {
            return Err(fail(Error::invalid(
                "only create, update, close, reopen, dep, label and comment operations can be batched",
            )));
        }
        let req = substitute_refs(req, &created).map_err(fail)?;
        let resp = write(tx, ctx, req).map_err(fail)?;
        created.push(match &resp {
            Response::Issue(issue) => Some(issue.id.clone()),
            _ => None,
        });
        out.push(resp);
    }
    Ok(out)
}

/// Replaces every string that is exactly `$N` with the id created by operation N.
fn substitute_refs(req: Request, created: &[Option<String>]) -> Result<Request> {
    fn walk(v: &mut Value, created: &[Option<String>]) -> Result<()> {
        match v {
            Value::String(s)
                if s.len() > 1
                    && s.starts_with('$')
                    && s[1..].bytes().all(|b| b.is_ascii_digit()) =>
            {
                let n: usize = s[1..]
                    .parse()
                    .map_err(|_| Error::invalid(format!("bad reference {s}")))?;
                match n.checked_sub(1).and_then(|i| created.get(i)) {
                    Some(Some(id)) => *s = id.clone(),
                    Some(None) => {
                        return Err(Error::invalid(format!(
                            "{s} refers to operation #{n}, which creates no issue"
                        )));
                    }
                    None => {
                        return Err(Error::invalid(format!(
                            "{s} refers to operation #{n}, which has not run yet"
                        ))
                        .hint("$N can only name an earlier operation"));
                    }
                }
            }
            Value::Array(items) => items.iter_mut().try_for_each(|i| walk(i, created))?,
            Value::Object(map) => map.values_mut().try_for_each(|i| walk(i, created))?,
            _ => {}
        }
        Ok(())
    }
    let mut v = serde_json::to_value(&req)?;
    walk(&mut v, created)?;
    Ok(serde_json::from_value(v)?)
}

fn without_write_tx(store: &mut Store, ctx: &Context<'_>, req: Request) -> Result<Response> {
    match req {
        Request::Flush => {
            let ops_written = jsonl::flush_own_ops_with(store, ctx.paths, jsonl::OwnFile::Verify)?;
            let issues = jsonl::write_snapshot(store, ctx.paths)?;
            Ok(Response::Flush(FlushReport {
                ops_written,
                issues,
                snapshot: ctx.paths.snapshot().display().to_string(),
                ops: jsonl::snapshot_state(store)?.ops,
            }))
        }
        Request::Info => info(store, ctx),
        Request::ConfigGet { key } => {
            crate::config::check_key(&key)?;
            let config = Config::load(&ctx.paths.config())?;
            Ok(Response::ConfigValue {
                value: config.get(&key).map(str::to_string),
                key,
            })
        }
        Request::ConfigSet { key, value } => {
            let path = ctx.paths.config();
            let _lock = jsonl::FlushLock::acquire(ctx.paths)?;
            let mut config = Config::load(&path)?;
            config.set(&key, &value)?;
            config.save(&path)?;
            Ok(Response::ConfigValue {
                key,
                value: Some(value),
            })
        }
        Request::ConfigList => Ok(Response::Config(
            Config::load(&ctx.paths.config())?.entries().clone(),
        )),
        req => store.read(|conn| query_request(conn, req)),
    }
}

fn query_request(conn: &rusqlite::Connection, req: Request) -> Result<Response> {
    Ok(match req {
        Request::Show { ids } => {
            let mut out = Vec::new();
            for q in ids {
                out.push(details(conn, &query::resolve_id(conn, &q)?)?);
            }
            Response::Details(out)
        }
        Request::List(f) => Response::Issues(query::list(conn, &checked(conn, f)?, Scope::All)?),
        Request::Ready(f) => Response::Issues(query::list(conn, &checked(conn, f)?, Scope::Ready)?),
        Request::Blocked(f) => Response::Blocked(query::blocked(conn, &checked(conn, f)?)?),
        Request::DepTree {
            id,
            reverse,
            max_depth,
        } => {
            let id = query::resolve_id(conn, &id)?;
            Response::Tree(query::dependency_tree(conn, &id, reverse, max_depth)?)
        }
        Request::DepCycles => Response::Cycles(query::cycles(conn)?),
        Request::LabelList { id: Some(id) } => {
            let id = query::resolve_id(conn, &id)?;
            Response::Labels(get_live(conn, &id)?.labels)
        }
        Request::LabelList { id: None } => Response::LabelCounts(query::label_counts(conn)?),
        Request::Comments { id } => {
            Response::Comments(query::comments(conn, &query::resolve_id(conn, &id)?)?)
        }
        Request::Conflicts => Response::Conflicts(query::conflicts(conn)?),
        Request::Stats => Response::Stats(query::stats(conn)?),
        Request::Export => Response::Issues(query::all_issues(conn)?),
        other => return Err(Error::internal(format!("not a read request: {other:?}"))),
    })
}

/// Validates filter values that arrive as strings: a status or type is accepted if
/// bd models it, or if some issue here carries it (values kept from an import);
/// anything else is a typo and an error.
fn checked(conn: &rusqlite::Connection, mut f: query::ListFilter) -> Result<query::ListFilter> {
    let in_use = |column: &str, value: &str| -> Result<bool> {
        let sql = format!("SELECT 1 FROM issues WHERE {column} = ?1 LIMIT 1");
        Ok(conn.prepare_cached(&sql)?.exists(params![value])?)
    };
    for s in &mut f.status {
        *s = match Status::parse(s) {
            Ok(known) => known.as_str().to_string(),
            Err(_) if in_use("status", s)? => s.clone(),
            Err(e) => return Err(e),
        };
    }
    for t in &mut f.issue_type {
        *t = match IssueType::parse(t) {
            Ok(known) => known.as_str().to_string(),
            Err(_) if in_use("issue_type", t)? => t.clone(),
            Err(e) => return Err(e),
        };
    }
    for p in [f.priority_min, f.priority_max].into_iter().flatten() {
        parse_priority(&p.to_string())?;
    }
    Ok(f)
}

fn get_live(conn: &rusqlite::Connection, id: &str) -> Result<Issue> {
    query::get_issue(conn, id)?.ok_or_else(|| Error::not_found(format!("issue {id} not found")))
}

fn details(conn: &rusqlite::Connection, id: &str) -> Result<IssueDetails> {
    let issue = get_live(conn, id)?;
    // A closed issue is not held back by anything.
    let blocked: bool = !issue.status.is_closed()
        && crate::storage::sqlite::cached_row(
            conn,
            "SELECT blocked FROM issues WHERE id = ?1",
            params![id],
            |r| r.get(0),
        )?;
    let conflicts = query::conflicts(conn)?
        .into_iter()
        .filter(|c| c.issue_id == id)
        .collect();
    let displaced_from = collisions::displaced_from(conn, id)?;
    let displaced = match displaced_from {
        Some(_) => Vec::new(),
        None => crate::storage::collisions::displaced_issues(conn, id)?,
    };
    let mut dangling = std::collections::BTreeMap::new();
    for d in &issue.dependencies {
        let here = conn
            .prepare_cached("SELECT 1 FROM issues WHERE id = ?1")?
            .exists(params![d.depends_on_id])?;
        if !here {
            let what = if query::is_deleted(conn, &d.depends_on_id)? {
                "deleted"
            } else {
                "missing"
            };
            dangling.insert(d.depends_on_id.clone(), what.to_string());
        }
    }
    Ok(IssueDetails {
        dependents: query::dependents(conn, id)?,
        issue,
        blocked,
        conflicts,
        displaced,
        displaced_from,
        dangling,
    })
}

fn info(store: &mut Store, ctx: &Context<'_>) -> Result<Response> {
    let config = Config::load(&ctx.paths.config())?;
    let issues: i64 = store
        .conn()
        .query_row("SELECT COUNT(*) FROM issues", [], |r| r.get(0))?;
    Ok(Response::Info(Info {
        version: env!("CARGO_PKG_VERSION").to_string(),
        mode: ctx.mode.into(),
        beads_dir: ctx.paths.dir.display().to_string(),
        database: ctx.paths.db.display().to_string(),
        schema_version: crate::storage::sqlite::SCHEMA_VERSION,
        replica: store.replica().to_string(),
        prefix: config.prefix().to_string(),
        issues: issues as u64,
        snapshot: jsonl::snapshot_state(store)?,
        state_hash: crate::storage::sqlite::state_hash(store.conn())?,
        held_ops: crate::exchange::held_op_count(store.conn())?,
    }))
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
        hlc: Default::default(),
        actor: ctx.actor.to_string(),
        replica: String::new(),
        seq: 0,
    }
}

/// Resolves every id first (so a typo fails before anything changes), then applies
/// `f` to each, flushing between them so later steps see earlier ones.
/// The full ids the (possibly shortened) `ids` name; refuses an empty list.
fn resolve_ids(tx: &WriteTx<'_>, ids: &[String]) -> Result<Vec<String>> {
    if ids.is_empty() {
        return Err(Error::invalid("no issue ids given"));
    }
    ids.iter()
        .map(|q| query::resolve_id(tx.conn(), q))
        .collect()
}

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
        });
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

/// Refuses to close `id` while children of it (not themselves being closed
/// in the same request) are open: closing a parent does not finish its work.
fn refuse_open_children(conn: &rusqlite::Connection, id: &str, closing: &[String]) -> Result<()> {
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

fn delete(
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

fn resolve(
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
    if field == "clock_skew" {
        return resolve_clock_skew(tx, ctx, id, value, take);
    }
    if field == collisions::ID_FIELD {
        return resolve_id_collision(tx, ctx, id, value, take);
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
    Ok(Response::Changed(vec![Changed {
        issue: get_live(tx.conn(), &id)?,
        changed: true,
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

/// Sets the status, keeping `closed_at` / `close_reason` in step with it.
fn set_status(
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

fn change_labels(
    tx: &mut WriteTx<'_>,
    ctx: &Context<'_>,
    id: &str,
    add: &[String],
    remove: &[String],
) -> Result<bool> {
    let mut changed = false;
    for label in add {
        if tx.doc(id)?.label_heads(label).is_empty() {
            tx.record(new_op(
                ctx,
                id,
                OpKind::LabelAdd,
                None,
                json!(label),
                vec![],
            ))?;
            changed = true;
        }
    }
    for label in remove {
        let heads = tx.doc(id)?.label_heads(label);
        if !heads.is_empty() {
            tx.record(new_op(
                ctx,
                id,
                OpKind::LabelRemove,
                None,
                json!(label),
                heads,
            ))?;
            changed = true;
        }
    }
    Ok(changed)
}

fn dedup<T: PartialEq + Clone>(items: &[T]) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(items.len());
    for i in items {
        if !out.contains(i) {
            out.push(i.clone());
        }
    }
    out
}

fn create(tx: &mut WriteTx<'_>, ctx: &Context<'_>, r: CreateRequest) -> Result<Issue> {
    model::validate_title(&r.title)?;
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

fn update(tx: &mut WriteTx<'_>, ctx: &Context<'_>, r: UpdateRequest) -> Result<Vec<Changed>> {
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
    for_each_id(tx, &r.ids, |tx, id| {
        let mut changed = false;
        if r.claim {
            changed |= claim(tx, ctx, id)?;
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
                changed |= set_field(tx, ctx, id, field, text_or_null(v))?;
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
        Ok(changed)
    })
}

/// Atomic claim: assign to the actor and start, only if unassigned and not closed.
fn claim(tx: &mut WriteTx<'_>, ctx: &Context<'_>, id: &str) -> Result<bool> {
    let assignee = current_str(tx, id, "assignee")?;
    let status = Status::from_wire(&current_str(tx, id, "status")?);
    if status.is_closed() {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!("{id} is closed; it cannot be claimed"),
        )
        .hint(format!("reopen it first: bd reopen {id}")));
    }
    if !assignee.is_empty() && assignee != ctx.actor {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!("{id} is already claimed by {assignee}"),
        )
        .hint("pick another issue from `bd ready`"));
    }
    let mut changed = set_field(tx, ctx, id, "assignee", json!(ctx.actor))?;
    changed |= set_status(tx, ctx, id, &Status::InProgress, None)?;
    Ok(changed)
}

fn dep_add(
    tx: &mut WriteTx<'_>,
    ctx: &Context<'_>,
    issue: &str,
    depends_on: &str,
    dep_type: &str,
) -> Result<Response> {
    let kind = DepType::parse(dep_type)?;
    let from = query::resolve_id(tx.conn(), issue)?;
    let to = query::resolve_id(tx.conn(), depends_on)?;
    if from == to {
        return Err(Error::invalid(format!("{from} cannot depend on itself")));
    }
    if kind.gates() && query::would_cycle(tx.conn(), &from, &to)? {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "{from} → {to} would create a dependency cycle ({to} already depends on {from})"
            ),
        )
        .hint(format!("see the chain with: bd dep tree {to}")));
    }
    let exists = !tx.doc(&from)?.dep_heads(&to, kind.as_str()).is_empty();
    if !exists {
        let value = json!({"depends_on_id": to, "type": kind.as_str()});
        tx.record(new_op(ctx, &from, OpKind::DepAdd, None, value, vec![]))?;
        tx.flush()?;
    }
    let dependency = get_live(tx.conn(), &from)?
        .dependencies
        .into_iter()
        .find(|d| d.depends_on_id == to && d.dep_type == kind)
        .ok_or_else(|| Error::internal("dependency missing after add"))?;
    Ok(Response::Dependency {
        dependency,
        changed: !exists,
    })
}

fn dep_remove(
    tx: &mut WriteTx<'_>,
    ctx: &Context<'_>,
    issue: &str,
    depends_on: &str,
    dep_type: Option<&str>,
) -> Result<Vec<Dependency>> {
    let kind = dep_type.map(DepType::parse).transpose()?;
    let from = query::resolve_id(tx.conn(), issue)?;
    // The target may be deleted; match it exactly in that case.
    let to = query::resolve_id(tx.conn(), depends_on).unwrap_or_else(|_| depends_on.to_string());
    let edges: Vec<Dependency> = get_live(tx.conn(), &from)?
        .dependencies
        .into_iter()
        .filter(|d| d.depends_on_id == to && kind.as_ref().is_none_or(|k| &d.dep_type == k))
        .collect();
    if edges.is_empty() {
        let what = kind.map(|k| format!(" ({k})")).unwrap_or_default();
        return Err(
            Error::not_found(format!("{from} does not depend on {to}{what}"))
                .hint(format!("see its dependencies with: bd show {from}")),
        );
    }
    for d in &edges {
        let heads = tx.doc(&from)?.dep_heads(&to, d.dep_type.as_str());
        let value = json!({"depends_on_id": to, "type": d.dep_type.as_str()});
        tx.record(new_op(ctx, &from, OpKind::DepRemove, None, value, heads))?;
    }
    Ok(edges)
}

/// Longest comment accepted, in bytes.
pub const COMMENT_MAX_BYTES: usize = 64 * 1024;

fn comment_add(tx: &mut WriteTx<'_>, ctx: &Context<'_>, id: &str, text: &str) -> Result<Comment> {
    let id = query::resolve_id(tx.conn(), id)?;
    if text.trim().is_empty() {
        return Err(Error::invalid("comment text must not be empty"));
    }
    if text.len() > COMMENT_MAX_BYTES {
        return Err(Error::invalid(format!(
            "comment is {} bytes; the limit is {COMMENT_MAX_BYTES}",
            text.len()
        )));
    }
    let op_id = tx.record(new_op(
        ctx,
        &id,
        OpKind::Comment,
        None,
        json!({"text": text}),
        vec![],
    ))?;
    let want = format!("c-{}", &op_id[..12]);
    tx.doc(&id)?
        .materialise()
        .and_then(|m| m.issue.comments.into_iter().find(|c| c.id == want))
        .ok_or_else(|| Error::internal("comment missing after add"))
}
