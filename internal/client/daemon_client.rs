//! [`DaemonClient`]: one blocking connection to the tracker's daemon.

use super::{Backend, CallError, CallOptions, wait_until};
use crate::api::{Request, Response};
use crate::clock::{Clock, SystemClock};
use crate::daemon;
use crate::rpc::{self, Call, DaemonStatus, Envelope, Hello, HelloReply, Outcome, Reply};
use crate::storage::BeadsPaths;
use crate::{Error, ErrorKind, Result};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// A connection to the tracker's daemon (blocking; one request at a time).
pub struct DaemonClient {
    stream: UnixStream,
    /// The tracker it serves, when known ([`DaemonClient::to_running`]): a
    /// sync runs here, in the caller's process, with its flushes sent over.
    paths: Option<BeadsPaths>,
    actor: String,
    timeout: Duration,
    next_id: u64,
    /// What the daemon said when we connected.
    pub hello: HelloReply,
}

/// How long a daemon has to accept a connection and answer its hello before
/// it is taken for stopped or wedged (and the command runs in-process). Kept
/// apart from how long an accepted request may run (`--timeout`): a live
/// daemon answers a hello in well under a millisecond, even while its writer
/// is busy, because hellos are answered on another thread.
pub const LIVENESS: Duration = Duration::from_millis(800);

/// How long past its deadline a caller waits for the daemon's answer: the
/// daemon starts nothing after the deadline, but a commit that began before
/// it still has to reach the disk.
pub const REPLY_GRACE: Duration = Duration::from_secs(2);

fn unavailable(message: String) -> Error {
    Error::new(ErrorKind::Unavailable, message)
        .hint("bd resends by itself; if this persists, `bd daemon restart` or --no-daemon")
}

fn io_to_error(e: std::io::Error, what: &str) -> Error {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            unavailable(format!("no answer from the daemon while {what}"))
        }
        _ => unavailable(format!("daemon connection failed while {what}: {e}")),
    }
}

impl DaemonClient {
    /// Connects to the daemon at `socket` and exchanges hellos, which must
    /// complete within [`LIVENESS`]. Requests sent without a deadline of their
    /// own get one `timeout` from when they are sent.
    pub fn connect(socket: &Path, actor: &str, timeout: Duration) -> Result<DaemonClient> {
        let stream = UnixStream::connect(socket).map_err(|e| io_to_error(e, "connecting"))?;
        stream.set_read_timeout(Some(LIVENESS))?;
        stream.set_write_timeout(Some(LIVENESS))?;
        rpc::write_frame(&mut &stream, &Hello::current())
            .map_err(|e| unavailable(format!("cannot greet the daemon: {}", e.message)))?;
        let hello: HelloReply = match rpc::read_frame(&mut &stream) {
            Ok(Some(h)) => h,
            Ok(None) => {
                return Err(unavailable(
                    "the daemon closed the connection during hello".into(),
                ));
            }
            Err(e)
                if matches!(
                    e.kind,
                    ErrorKind::Unavailable | ErrorKind::Io | ErrorKind::Timeout
                ) =>
            {
                // Kind `timeout`: a daemon that holds its lock and is silent
                // (stopped, wedged), unlike one that is leaving.
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "the daemon did not answer within {} ms; it may be stopped or wedged",
                        LIVENESS.as_millis()
                    ),
                )
                .hint("`bd daemon restart`, or --no-daemon; bd runs directly meanwhile"));
            }
            Err(e) => return Err(e),
        };
        if !hello.ok {
            let why = hello.message.clone().unwrap_or_else(|| "refused".into());
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("daemon {} will not serve this bd: {why}", hello.version),
            )
            .hint("restart it with `bd daemon restart`"));
        }
        Ok(DaemonClient {
            stream,
            paths: None,
            actor: actor.to_string(),
            timeout,
            next_id: 0,
            hello,
        })
    }

    fn round_trip(&mut self, call: Call) -> Result<Outcome> {
        self.round_trip_with(call, &CallOptions::default())
            .map_err(Error::from)
    }

    fn round_trip_with(&mut self, call: Call, opts: &CallOptions) -> Result<Outcome, CallError> {
        self.next_id += 1;
        let now = SystemClock.now_ms();
        let deadline_ms = opts
            .deadline_ms
            .unwrap_or(now + self.timeout.as_millis() as u64);
        let listener = crate::progress::current();
        let env = Envelope {
            progress: listener.is_some(),
            id: self.next_id,
            actor: self.actor.clone(),
            deadline_ms,
            request_id: opts.request_id.clone(),
            call,
        };
        // The daemon answers by the deadline (plus a commit's sync); the socket
        // timeout is the backstop for one that cannot.
        let wait = Duration::from_millis(deadline_ms.saturating_sub(now)) + REPLY_GRACE;
        let failed = |e: std::io::Error| CallError::Failed(e.into());
        self.stream.set_read_timeout(Some(wait)).map_err(failed)?;
        self.stream.set_write_timeout(Some(wait)).map_err(failed)?;
        // A daemon that died before reading the request never saw it: the
        // caller may safely send it again.
        rpc::write_frame(&mut &self.stream, &env).map_err(|e| {
            if matches!(e.kind, ErrorKind::Io | ErrorKind::Unavailable) {
                CallError::NotDelivered(unavailable(format!(
                    "the daemon went away before receiving the request ({})",
                    e.message
                )))
            } else {
                CallError::Failed(e)
            }
        })?;
        let lost = |why: &str| {
            // Past the read timeout the daemon is alive but silent (waiting
            // for the database's lock, or wedged), not gone.
            let silent = SystemClock.now_ms() + 50 >= now + wait.as_millis() as u64;
            let what = if silent {
                "the daemon did not answer by the deadline (it may be waiting for the database, held by another process)"
            } else {
                "the daemon went away before answering"
            };
            CallError::InDoubt(unavailable(format!("{what} ({why})")))
        };
        let read = loop {
            match rpc::read_frame::<Reply>(&mut &self.stream) {
                Ok(Some(Reply {
                    id,
                    result: Outcome::Progress(update),
                })) if id == env.id => {
                    if let Some(show) = &listener {
                        show(&update);
                    }
                }
                other => break other,
            }
        };
        if let Some(show) = &listener {
            // Whatever the daemon's last update was, the work is over.
            show(&crate::progress::Update {
                task: String::new(),
                done: 0,
                total: None,
                finished: true,
            });
        }
        let reply: Reply = match read {
            Ok(Some(reply)) => reply,
            Ok(None) => return Err(lost("connection closed")),
            Err(e) if matches!(e.kind, ErrorKind::Io | ErrorKind::Unavailable) => {
                return Err(lost(&e.message));
            }
            // The socket's read timeout: no answer by the deadline and its grace.
            Err(e) if e.kind == ErrorKind::Timeout => {
                return Err(lost(&format!(
                    "no answer {} s past the deadline",
                    REPLY_GRACE.as_secs()
                )));
            }
            Err(e) => return Err(CallError::Failed(e)),
        };
        match reply.result {
            Outcome::Err(e) => Err(CallError::Failed(e)),
            _ if reply.id != env.id => Err(CallError::Failed(Error::internal(format!(
                "reply {} to request {}",
                reply.id, env.id
            )))),
            other => Ok(other),
        }
    }

    /// The daemon's state.
    pub fn status(&mut self) -> Result<DaemonStatus> {
        match self.round_trip(Call::Status)? {
            Outcome::Status(s) => Ok(*s),
            other => Err(Error::internal(format!(
                "unexpected answer to status: {other:?}"
            ))),
        }
    }

    /// Asks the daemon to drain its queue, flush and exit.
    pub fn stop(&mut self) -> Result<()> {
        match self.round_trip(Call::Stop)? {
            Outcome::Stopping => Ok(()),
            other => Err(Error::internal(format!(
                "unexpected answer to stop: {other:?}"
            ))),
        }
    }
}

impl Backend for DaemonClient {
    fn send(&mut self, req: Request, opts: &CallOptions) -> Result<Response, CallError> {
        if let Request::Sync(sync) = req {
            // The git work runs here, with the caller's environment
            // (credentials, ssh agent); its flushes go to the daemon.
            let Some(paths) = self.paths.clone() else {
                return Err(CallError::Failed(Error::invalid(
                    "sync needs the tracker's paths: connect with DaemonClient::to_running",
                )));
            };
            return crate::gitsync::sync(&mut |r| self.call(r), &paths, &sync)
                .map(Response::Sync)
                .map_err(CallError::Failed);
        }
        match self.round_trip_with(Call::Request(Box::new(req)), opts)? {
            Outcome::Ok(resp) => Ok(resp),
            other => Err(CallError::Failed(Error::internal(format!(
                "unexpected answer: {other:?}"
            )))),
        }
    }

    fn mode(&self) -> &'static str {
        "daemon"
    }
}

impl DaemonClient {
    /// A connection to the tracker's running daemon, or `None` if no daemon holds
    /// the lock. Waits up to 2 s for a daemon that holds the lock but is still
    /// starting (has not published its socket yet).
    pub fn to_running(
        paths: &BeadsPaths,
        actor: &str,
        timeout: Duration,
    ) -> Result<Option<DaemonClient>> {
        let mut record = None;
        let mut alive = false;
        wait_until(Duration::from_secs(2), || {
            match daemon::running(paths)? {
                None => alive = false,
                Some(r) => {
                    alive = true;
                    record = r;
                }
            }
            Ok(!alive || record.is_some())
        })?;
        match record {
            None => Ok(None),
            Some(r) => DaemonClient::connect(&r.socket, actor, timeout)
                .map(|c| {
                    Some(DaemonClient {
                        paths: Some(paths.clone()),
                        ..c
                    })
                })
                .map_err(|e| {
                    Error::new(
                        e.kind,
                        format!("daemon (pid {}) not usable: {}", r.pid, e.message),
                    )
                }),
        }
    }
}
