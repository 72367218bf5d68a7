//! Exactly-once delivery: [`call_reliably`] sends a request until its real
//! outcome is known.

use super::{Backend, CallError, CallOptions, REPLY_GRACE};
use crate::api::{Request, Response};
use crate::clock::{Clock, SystemClock};
use crate::storage::{BeadsPaths, Store};
use crate::{Error, ErrorKind, Result};
use std::time::Duration;

/// A command's answer from [`call_reliably`].
#[derive(Debug)]
pub struct Delivered {
    /// The request's answer.
    pub response: Response,
    /// The answer was learnt after the deadline, by settling the request id:
    /// the write was applied, its answer was late.
    pub late: bool,
}

/// How long past its deadline a caller keeps trying to settle a write whose
/// answer never came (the daemon may be finishing its commit's sync, or be
/// restarting).
pub const SETTLE_GRACE: Duration = Duration::from_secs(10);

/// Sends `req` until its real outcome is known: exactly-once delivery.
///
/// Each attempt goes through a fresh `connect()` (the daemon, a new one it
/// starts, or in-process). An attempt that fails before the request can have
/// reached a server (no daemon, one shutting down, the database busy) is
/// simply made again until `deadline_ms`. A write that may have reached a
/// daemon that then went away is sent again with the same `request_id`, which
/// the tracker answers from its record if the first copy was applied. When the
/// deadline passes with the write's fate unknown, the request id is settled
/// ([`Request::Settle`]): its recorded answer if it was applied (then
/// [`Delivered::late`]), else it is marked abandoned so no copy can apply it
/// later, and the error says "not applied". Only if no process can settle it
/// (a writer that holds the database's lock and does not run) does the error
/// say the outcome is unknown, naming the request id to resend.
///
/// A write without a request id is never sent twice once it may have arrived:
/// that error is returned as it is. Reads are always safe to repeat.
pub fn call_reliably(
    connect: &mut dyn FnMut() -> Result<Box<dyn Backend>>,
    paths: &BeadsPaths,
    req: Request,
    request_id: Option<String>,
    deadline_ms: u64,
) -> Result<Delivered> {
    let opts = CallOptions {
        request_id: request_id.clone(),
        deadline_ms: Some(deadline_ms),
    };
    let write = req.is_write();
    let mut in_doubt = false;
    let mut last: Option<CallError> = None;
    let mut pause = Duration::from_millis(5);
    loop {
        let now = SystemClock.now_ms();
        if now > deadline_ms && last.is_some() {
            break;
        }
        let mut backend = match connect() {
            Ok(b) => b,
            Err(e) if e.kind == ErrorKind::Unavailable => {
                last = Some(CallError::NotDelivered(e));
                pause_before_retry(&mut pause, deadline_ms);
                continue;
            }
            Err(e) => return Err(e),
        };
        match backend.send(req.clone(), &opts) {
            Ok(response) => {
                return Ok(Delivered {
                    response,
                    late: false,
                });
            }
            Err(CallError::InDoubt(e)) if write && request_id.is_none() => {
                return Err(Error::from(CallError::InDoubt(e))
                    .hint("check with `bd show` or `bd list` before running it again"));
            }
            Err(e @ (CallError::NotDelivered(_) | CallError::InDoubt(_))) => {
                in_doubt |= matches!(e, CallError::InDoubt(_));
                last = Some(e);
                pause_before_retry(&mut pause, deadline_ms);
            }
            Err(CallError::Failed(e)) => match e.kind {
                // A daemon shutting down, or the write lock held too long:
                // refused before anything was done.
                ErrorKind::Unavailable | ErrorKind::Busy => {
                    last = Some(CallError::NotDelivered(e));
                    pause_before_retry(&mut pause, deadline_ms);
                }
                ErrorKind::Timeout => {
                    last = Some(CallError::Failed(e));
                    break;
                }
                _ => return Err(e),
            },
        }
    }
    let last = last.unwrap_or_else(|| CallError::Failed(Error::deadline_passed()));
    let Some(rid) = request_id.filter(|_| write && in_doubt) else {
        return Err(not_applied(last));
    };
    settle(connect, paths, &rid, deadline_ms, last.error())
}

/// Sleeps before the next attempt: 5 ms, doubling to 100 ms, never far past
/// the deadline.
fn pause_before_retry(pause: &mut Duration, deadline_ms: u64) {
    let left = Duration::from_millis(deadline_ms.saturating_sub(SystemClock.now_ms()));
    std::thread::sleep((*pause).min(left).max(Duration::from_millis(1)));
    *pause = (*pause * 2).min(Duration::from_millis(100));
}

/// The error for a request known not to be applied, from the last attempt's:
/// the tracker's own refusal as it is, a delivery failure as "not applied".
fn not_applied(last: CallError) -> Error {
    match last {
        CallError::Failed(e) => e,
        CallError::NotDelivered(e) | CallError::InDoubt(e) => Error::new(
            ErrorKind::Timeout,
            format!("not applied: {}; nothing was changed", e.message),
        )
        .hint("run it again, or raise --timeout"),
    }
}

/// Learns (or decides) the fate of write `rid` after its deadline: see
/// [`call_reliably`].
fn settle(
    connect: &mut dyn FnMut() -> Result<Box<dyn Backend>>,
    paths: &BeadsPaths,
    rid: &str,
    deadline_ms: u64,
    last: &Error,
) -> Result<Delivered> {
    let settle_by = deadline_ms + (REPLY_GRACE + SETTLE_GRACE).as_millis() as u64;
    let opts = CallOptions {
        request_id: None,
        deadline_ms: Some(settle_by),
    };
    let mut pause = Duration::from_millis(5);
    let mut why = last.message.clone();
    while SystemClock.now_ms() < settle_by {
        let answer = connect().and_then(|mut b| {
            b.call_with(
                Request::Settle {
                    request_id: rid.to_string(),
                },
                &opts,
            )
        });
        match answer {
            Ok(Response::Settled(Some(response))) => {
                return Ok(Delivered {
                    response: *response,
                    late: true,
                });
            }
            Ok(Response::Settled(None)) => {
                return Err(not_applied(CallError::InDoubt(last.clone())));
            }
            Ok(other) => {
                return Err(Error::internal(format!(
                    "unexpected answer to settle: {other:?}"
                )));
            }
            Err(e) if matches!(e.kind, ErrorKind::Unavailable | ErrorKind::Busy) => {
                why = e.message;
                pause_before_retry(&mut pause, settle_by);
            }
            Err(e) => {
                why = e.message;
                break;
            }
        }
    }
    // Nobody could settle it: what the database shows without the write lock.
    let committed = Store::open(&paths.db).ok().and_then(|s| {
        s.conn()
            .query_row(
                "SELECT outcome IS NOT NULL FROM requests WHERE id = ?1",
                [rid],
                |r| r.get::<_, bool>(0),
            )
            .ok()
    });
    let message = match committed {
        Some(true) => format!(
            "applied (request {rid}), but the daemon has not confirmed that it is on disk ({why})"
        ),
        _ => format!(
            "outcome unknown: request {rid} could not be settled; the tracker's writer does not respond ({why})"
        ),
    };
    Err(Error::new(ErrorKind::Timeout, message).hint(format!(
        "resend with `--request-id {rid}`: it is applied at most once and answers with the outcome"
    )))
}
