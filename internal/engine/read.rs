//! The read path: every request that is not a write, on any connection
//! (direct mode's, the daemon's pooled readers).

use super::check_actor;
use crate::api::{Request, Response};
use crate::service::{self, Context};
use crate::storage::{Store, WalSync};
use crate::{Error, Result};

/// A read's answer: a response, or (for a list or the ready queue read for the
/// wire) each issue's stored JSON as it is, not parsed only to be written out
/// again.
pub enum Answer {
    /// A response.
    Response(Response),
    /// Stored issue rows, for the wire encoding.
    Rows(Vec<Box<serde_json::value::RawValue>>),
}

impl Answer {
    /// The answer as a [`Response`] (rows parsed).
    pub fn into_response(self) -> Result<Response> {
        match self {
            Answer::Response(r) => Ok(r),
            Answer::Rows(rows) => Ok(Response::Issues(
                rows.iter()
                    .map(|r| serde_json::from_str(r.get()))
                    .collect::<serde_json::Result<_>>()?,
            )),
        }
    }
}

/// Runs a request that is not a write on `store` (any connection): queries,
/// dry runs, and the file-only requests (flush, config).
pub fn read(store: &mut Store, ctx: &Context<'_>, req: Request) -> Result<Answer> {
    read_as(store, ctx, req, false)
}

/// [`read`] for an answer about to be serialised: list and ready answers are
/// [`Answer::Rows`].
pub fn read_for_wire(store: &mut Store, ctx: &Context<'_>, req: Request) -> Result<Answer> {
    read_as(store, ctx, req, true)
}

fn read_as(store: &mut Store, ctx: &Context<'_>, mut req: Request, wire: bool) -> Result<Answer> {
    check_actor(ctx.actor)?;
    if let Request::Ready(f) = &mut req {
        // A claim that lapsed leaves the ready queue's "taken" side at once,
        // before anyone writes (the sweep that returns it to open follows).
        f.now_ms = Some(ctx.clock.now_ms() as i64);
    }
    if req.is_write() {
        return Err(Error::internal(format!(
            "a write request was sent to the read path: {}",
            req.op_name()
        )));
    }
    if matches!(req, Request::Sync(_)) {
        // Its git work needs the caller's environment (credentials, ssh
        // agent): the client runs it and sends its flushes here.
        return Err(Error::invalid("a sync runs in the calling process, not in a daemon")
            .hint("send it through bd::client (DaemonClient::to_running), which runs it"));
    }
    if matches!(req, Request::Flush) {
        // A flush writes the op file and the snapshot from what is committed:
        // every commit must be durable first, whoever made it.
        WalSync::new(&ctx.paths.db)
            .sync()
            .map_err(|e| crate::jsonl::io_at(&ctx.paths.db, e))?;
    }
    if wire && let Some(rows) = service::query_rows(store, &req)? {
        return Ok(Answer::Rows(rows));
    }
    service::query(store, ctx, req).map(Answer::Response)
}
