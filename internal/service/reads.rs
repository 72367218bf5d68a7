//! Everything that is not a write: queries, dry runs, issue details, `info`, and
//! the file-only requests (flush, config); list filters are checked here.

use super::{Context, get_live, import};
use crate::api::{FlushReport, ImportReport, Info, IssueDetails, Request, Response};
use crate::config::Config;
use crate::jsonl;
use crate::model::{IssueType, Status, parse_priority};
use crate::query::{self, Scope};
use crate::storage::Store;
use crate::storage::collisions;
use crate::{Error, Result};
use rusqlite::params;

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

/// Requests that need no write transaction: queries, and the file-only writes
/// (flush, config).
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
