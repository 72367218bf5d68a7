//! How programs reach bd — the library's public face besides [`crate::api`]:
//! - [`Backend`]: something that answers [`Request`]s; [`Direct`] runs them
//!   in-process through the engine, [`DaemonClient`] sends them to the
//!   tracker's daemon, [`connect`] picks between them, [`call_reliably`] sends
//!   one until its outcome is known;
//! - locating and making a tracker: [`BeadsPaths`], [`init`], [`rebuild`],
//!   [`doctor`], [`git`] (hooks and the merge driver);
//! - the daemon: serving as one and controlling one ([`daemon`]).

mod connect;
pub mod daemon;
mod daemon_client;
pub mod git;
pub mod mesh;
mod reliable;
mod setup;

pub(crate) use connect::wait_until;
pub use connect::{AutoStart, ConnectOptions, Connection, auto_start_configured, connect};
pub use daemon_client::{DaemonClient, LIVENESS, REPLY_GRACE};
pub use reliable::{Delivered, SETTLE_GRACE, call_reliably};
pub use setup::{BEADS_GITIGNORE, InitOptions, InitReport, RebuildReport, init, rebuild};

pub use crate::doctor::{Check, DoctorReport, Level, run as doctor};
pub use crate::ids::{new_replica_id, new_request_id};
pub use crate::jsonl::atomic_write as write_atomically;
pub use crate::storage::sqlite::SCHEMA_VERSION;
pub use crate::storage::{BEADS_DIR, BeadsPaths, DB_FILE};

use crate::api::{Request, Response};
use crate::clock::{Clock, SystemClock};
use crate::engine::{Engine, SnapshotPolicy};
use crate::{Error, Result};
use std::sync::Arc;

/// How one call is made: the write's request id and the deadline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallOptions {
    /// The caller's id for a write: sent again with the same id, a write that
    /// was applied is answered from the record instead of applied twice.
    pub request_id: Option<String>,
    /// When the caller stops waiting (ms since the epoch): work not committed
    /// by then is not committed at all. `None`: the backend's default.
    pub deadline_ms: Option<u64>,
}

/// Why a call failed, as far as its delivery goes: what a caller may do next
/// depends on which, never on the message.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// The request never reached a server: nothing was changed, and sending it
    /// again is safe.
    NotDelivered(Error),
    /// The request was sent and no answer came: it may or may not have been
    /// applied; only its request id can tell.
    InDoubt(Error),
    /// The server answered with the request's own failure (nothing of it was
    /// committed).
    Failed(Error),
}

impl CallError {
    /// The error, whichever the case.
    pub fn error(&self) -> &Error {
        match self {
            CallError::NotDelivered(e) | CallError::InDoubt(e) | CallError::Failed(e) => e,
        }
    }
}

impl From<CallError> for Error {
    /// The error as a person reads it: what happened, and what it means for
    /// the request.
    fn from(e: CallError) -> Error {
        match e {
            CallError::NotDelivered(e) => Error {
                message: format!("{}; nothing was changed", e.message),
                ..e
            },
            CallError::InDoubt(e) => Error {
                message: format!(
                    "{}; a write is resent by its request id, which cannot apply it twice",
                    e.message
                ),
                ..e
            },
            CallError::Failed(e) => e,
        }
    }
}

/// Something that answers [`Request`]s.
pub trait Backend {
    /// Runs one request with the backend's default deadline and no request id.
    fn call(&mut self, req: Request) -> Result<Response> {
        self.call_with(req, &CallOptions::default())
    }

    /// Runs one request as `opts` say.
    fn call_with(&mut self, req: Request, opts: &CallOptions) -> Result<Response> {
        self.send(req, opts).map_err(Error::from)
    }

    /// Runs one request as `opts` say, telling a request that never arrived
    /// and one whose fate is unknown apart from one that failed.
    fn send(&mut self, req: Request, opts: &CallOptions) -> Result<Response, CallError>;

    /// How requests are served (`direct` or `daemon`).
    fn mode(&self) -> &'static str;
}

/// Runs requests in this process against the tracker's database, each write
/// through the engine as a group of one.
pub struct Direct {
    engine: Engine,
    actor: String,
}

impl Direct {
    /// Opens the tracker at `paths` for `actor`, using the system clock.
    pub fn open(paths: BeadsPaths, actor: &str) -> Result<Direct> {
        Self::open_with_clock(paths, actor, Arc::new(SystemClock))
    }

    /// Opens the tracker with an explicit clock (tests, benchmarks).
    pub fn open_with_clock(
        paths: BeadsPaths,
        actor: &str,
        clock: Arc<dyn Clock>,
    ) -> Result<Direct> {
        Ok(Direct {
            engine: Engine::open(paths, clock, "direct", SnapshotPolicy::OnFlush)?,
            actor: actor.to_string(),
        })
    }

    /// The tracker's files.
    pub fn paths(&self) -> &BeadsPaths {
        self.engine.paths()
    }

    /// The engine (benchmarks and tests drive it directly).
    pub fn engine(&mut self) -> &mut Engine {
        &mut self.engine
    }
}

impl Backend for Direct {
    fn send(&mut self, req: Request, opts: &CallOptions) -> Result<Response, CallError> {
        self.engine
            .execute(
                &self.actor,
                opts.request_id.as_deref(),
                opts.deadline_ms,
                req,
            )
            .map_err(CallError::Failed)
    }

    fn mode(&self) -> &'static str {
        "direct"
    }
}
