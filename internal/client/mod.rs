//! How programs reach bd: the [`Backend`] trait; [`Direct`], which runs every
//! request in-process through the engine; [`DaemonClient`], which sends the
//! same [`Request`]s to the tracker's daemon; [`connect`], which picks between them;
//! and [`init`], which creates a tracker.

use crate::api::{Request, Response};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::daemon;
use crate::engine::{Engine, SnapshotPolicy};
use crate::ids;
use crate::rpc::{self, Call, DaemonStatus, Envelope, Hello, HelloReply, Outcome, Reply};
use crate::storage::{BEADS_DIR, BeadsPaths, Store};
use crate::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

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

/// A connection to the tracker's daemon (blocking; one request at a time).
pub struct DaemonClient {
    stream: UnixStream,
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
        let env = Envelope {
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
        let reply: Reply = match rpc::read_frame(&mut &self.stream) {
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
            Outcome::Status(s) => Ok(s),
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

/// How [`connect`] should reach the tracker.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Who is acting.
    pub actor: String,
    /// Never use a daemon.
    pub no_daemon: bool,
    /// Deadline for each request sent to a daemon.
    pub timeout: Duration,
    /// Start a daemon when none runs (`None`: never).
    pub auto_start: Option<AutoStart>,
}

/// How to start a daemon on demand.
#[derive(Debug, Clone)]
pub struct AutoStart {
    /// The bd binary to run (`bd daemon start --foreground`).
    pub exe: std::path::PathBuf,
    /// How long to wait for the start lock and for the new daemon to answer.
    pub wait: Duration,
    /// The new daemon's idle timeout, in seconds.
    pub idle_timeout_s: u64,
}

/// A backend, and why it is not the daemon when a daemon was wanted.
pub struct Connection {
    /// Where requests go.
    pub backend: Box<dyn Backend>,
    /// Set when a daemon was running or wanted but could not be used; the command
    /// then runs directly, which is safe (SQLite serialises writers). Kind
    /// `unavailable` is a daemon leaving (a restart, an upgrade): passing.
    pub note: Option<Error>,
}

/// Uses the tracker's daemon when one runs (starting one first if `auto_start` is
/// set, under a lock so that racing commands start exactly one; replacing one that
/// is older than this bd); otherwise runs requests in this process.
pub fn connect(paths: BeadsPaths, opts: &ConnectOptions) -> Result<Connection> {
    // A daemon serves its directory's own database; a request for another
    // database file (`--db`) must reach that file, so it runs in-process.
    let own_db = paths.db == paths.dir.join(crate::storage::DB_FILE);
    if opts.no_daemon || !own_db {
        return Ok(Connection {
            backend: Box::new(Direct::open(paths, &opts.actor)?),
            note: None,
        });
    }
    let note = match try_daemon(&paths, opts) {
        Ok(Some(client)) => {
            return Ok(Connection {
                backend: Box::new(client),
                note: None,
            });
        }
        Ok(None) => None,
        Err(e) => Some(Error {
            message: format!("{}; running directly", e.message),
            ..e
        }),
    };
    Ok(Connection {
        backend: Box::new(Direct::open(paths, &opts.actor)?),
        note,
    })
}

fn try_daemon(paths: &BeadsPaths, opts: &ConnectOptions) -> Result<Option<DaemonClient>> {
    match running_client(paths, opts) {
        Ok(Some(client)) => {
            let ours = env!("CARGO_PKG_VERSION");
            if !daemon::newer_version(ours, &client.hello.version) || opts.auto_start.is_none() {
                return Ok(Some(client));
            }
            // An older daemon after an upgrade: ask it to leave, then start ours.
            let mut old = client;
            old.stop()?;
            wait_until(Duration::from_secs(5), || {
                Ok(daemon::running(paths)?.is_none())
            })?;
        }
        Ok(None) => {}
        // A daemon of another protocol refused our hello, so it cannot be asked
        // over the socket: with auto-start on, it is told to leave by signal
        // (it drains and exits as for `bd daemon stop`), and ours replaces it.
        Err(e) if e.kind == ErrorKind::Conflict && opts.auto_start.is_some() => {
            daemon::terminate(paths)?;
            wait_until(Duration::from_secs(10), || {
                Ok(daemon::running(paths)?.is_none())
            })?;
        }
        Err(e) => return Err(e),
    }
    let Some(auto) = &opts.auto_start else {
        return Ok(None);
    };
    let _lock = daemon::StartLock::acquire(paths, auto.wait)?;
    // Someone may have started it while we waited for the lock.
    if let Some(client) = running_client(paths, opts)? {
        return Ok(Some(client));
    }
    let mut child = daemon::spawn(
        paths,
        &auto.exe,
        auto.idle_timeout_s,
        1000,
        daemon::MAX_GROUP,
    )?;
    let mut ready = None;
    wait_until(auto.wait, || {
        if let Some(status) = child.try_wait()? {
            return Err(Error::new(
                ErrorKind::Io,
                format!("the daemon exited at start ({status}); see .beads/daemon.log"),
            ));
        }
        ready = running_client(paths, opts).ok().flatten();
        Ok(ready.is_some())
    })?;
    Ok(ready)
}

fn running_client(paths: &BeadsPaths, opts: &ConnectOptions) -> Result<Option<DaemonClient>> {
    DaemonClient::to_running(paths, &opts.actor, opts.timeout)
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
                .map(Some)
                .map_err(|e| {
                    Error::new(
                        e.kind,
                        format!("daemon (pid {}) not usable: {}", r.pid, e.message),
                    )
                }),
        }
    }
}

/// Polls `done` every 5 ms until it says true, failing with a timeout after `limit`.
fn wait_until(limit: Duration, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let start = std::time::Instant::now();
    loop {
        if done()? {
            return Ok(());
        }
        if start.elapsed() > limit {
            return Err(Error::new(
                ErrorKind::Timeout,
                "the daemon did not become ready in time",
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What `bd init` needs.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    /// Id prefix; `None` keeps a committed config's prefix or derives one from the
    /// repository directory's name.
    pub prefix: Option<String>,
    /// This clone's replica id (random, made by the caller).
    pub replica: String,
}

/// What `bd init` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitReport {
    /// The `.beads/` directory.
    pub beads_dir: String,
    /// The database.
    pub database: String,
    /// Id prefix in use.
    pub prefix: String,
    /// Replica id of this clone.
    pub replica: String,
    /// True when the id was kept from `beads.db.replica` (the database had
    /// been deleted): this clone's own op file was read back as its own.
    #[serde(default)]
    pub kept_replica: bool,
    /// True when `.beads/` already held committed files (a fresh clone).
    pub adopted_existing: bool,
    /// Ops of other clones found in `.beads/ops` and applied.
    pub ops_applied: u64,
    /// Op lines that could not be used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<crate::exchange::LineProblem>,
}

/// Lines bd adds to `.beads/.gitignore`: the per-clone files.
pub const BEADS_GITIGNORE: &str = "# bd: per-clone files (the database and daemon state) stay out of git\n*.db\n*.db-*\n*.db.*\n*.lock\nbd.sock\ndaemon.*\n.bd-tmp-*\n";

/// Creates a tracker in `<root>/.beads/`. Refuses if a database is already there.
pub fn init(root: &Path, opts: &InitOptions) -> Result<InitReport> {
    let paths = BeadsPaths::new(root.join(BEADS_DIR));
    if paths.db.exists() {
        return Err(Error::new(
            ErrorKind::Exists,
            format!("bd is already initialised in {}", paths.dir.display()),
        )
        .hint("nothing to do; run `bd info` to see it"));
    }
    if let Some(p) = &opts.prefix {
        ids::validate_prefix(p)?;
    }
    std::fs::create_dir_all(paths.ops_dir())?;
    let existing = Config::load(&paths.config())?;
    let adopted_existing = existing.get("prefix").is_some();
    let prefix = match (&opts.prefix, existing.get("prefix")) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) => p.to_string(),
        (None, None) => ids::prefix_from_dir_name(
            &root
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
    };
    let mut config = existing;
    config.set("prefix", &prefix)?;
    config.save(&paths.config())?;
    let gitignore = paths.dir.join(".gitignore");
    if !gitignore.exists() {
        crate::jsonl::atomic_write(&gitignore, BEADS_GITIGNORE.as_bytes())?;
    }
    // A database deleted by hand leaves its replica id beside it: this clone
    // keeps its identity, and its own op file is read back as its own.
    let remembered = crate::storage::sqlite::remembered_replica(&paths.db);
    let replica = remembered.clone().unwrap_or_else(|| opts.replica.clone());
    let mut store = Store::create(&paths, &replica)?;
    // A fresh clone: the other clones' ops are already here (committed in git).
    let ingested = store.write(&crate::clock::SystemClock, |tx| match remembered {
        Some(_) => crate::exchange::rebuild_into(tx, &paths, crate::exchange::DEFAULT_MAX_SKEW_MS),
        None => crate::exchange::ingest(tx, &paths, crate::exchange::DEFAULT_MAX_SKEW_MS),
    })?;
    crate::jsonl::flush_own_ops(&store, &paths)?;
    crate::jsonl::write_snapshot(&mut store, &paths)?;
    Ok(InitReport {
        beads_dir: paths.dir.display().to_string(),
        database: paths.db.display().to_string(),
        prefix,
        kept_replica: remembered.is_some(),
        replica,
        adopted_existing,
        ops_applied: ingested.applied,
        problems: ingested.problems,
    })
}

/// What [`rebuild`] did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RebuildReport {
    /// Op files read.
    pub files: u64,
    /// Ops applied.
    pub ops: u64,
    /// Ops held for clock skew.
    pub held: u64,
    /// State hash of the rebuilt database.
    pub state_hash: String,
    /// State hash of the database it replaced (`None`: there was none, or it
    /// was too damaged to read).
    pub previous_hash: Option<String>,
    /// Whether the rebuilt database replaced the old one.
    pub replaced: bool,
    /// Where the old database was kept.
    pub backup: Option<String>,
    /// Why the old database could not be read, when it was damaged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damaged: Option<String>,
    /// Whether the replica id came from the old database (or the file beside
    /// it); false: a new one was made and this clone's old op file is read as
    /// another clone's.
    #[serde(default)]
    pub kept_replica: bool,
    /// Lines that could not be used.
    pub problems: Vec<crate::exchange::LineProblem>,
}

/// The old database as a rebuild finds it.
enum OldDb {
    /// Readable; its write lock is held until the swap, so no writer (the
    /// daemon's or another process's) commits to it meanwhile.
    Sound {
        store: Box<Store>,
        hash: String,
        files_current: bool,
        held: u64,
    },
    /// There is none.
    Missing,
    /// It cannot be read: the error, and the replica id if it could be saved.
    Damaged(Error, Option<String>),
}

/// Rebuilds the database from the op files alone.
///
/// A readable database is rebuilt under its own write lock (writers, the
/// daemon's included, wait; one that waited and then finds the file replaced
/// is refused and reconnects), and the result must have the same state hash:
/// then it is swapped in, the old one kept as `beads.db.bak`. A different
/// hash keeps the old one and leaves the rebuilt one at `beads.db.rebuild`,
/// unless `force`. A damaged database (corrupt, truncated, unreadable) is
/// what rebuild is for: it is moved aside to `beads.db.damaged` and the
/// rebuilt one takes its place, keeping the replica id (from the damaged
/// file if it still reads, else from `beads.db.replica`). A running daemon is
/// asked to stop afterwards; the next command starts a fresh one.
pub fn rebuild(paths: &BeadsPaths, force: bool) -> Result<RebuildReport> {
    use crate::exchange::DEFAULT_MAX_SKEW_MS;
    let backup = {
        let mut p = paths.db.as_os_str().to_owned();
        p.push(".bak");
        std::path::PathBuf::from(p)
    };
    // A database that opens may still be damaged inside (a corrupt page is
    // found only when read): corruption met at any step of reading it makes
    // it damaged, which is what a rebuild is for.
    let old = match Store::open(&paths.db).and_then(|old| read_old(old, paths, &backup)) {
        Ok(sound) => sound,
        Err(e) if e.kind == ErrorKind::NotInitialized => OldDb::Missing,
        Err(e) if e.kind == ErrorKind::Corrupt => {
            let replica = salvage_replica(&paths.db);
            OldDb::Damaged(e, replica)
        }
        Err(e) => return Err(e),
    };
    let (replica, kept_replica) = match &old {
        OldDb::Sound { store, .. } => (store.replica().to_string(), true),
        OldDb::Damaged(_, Some(r)) => (r.clone(), true),
        OldDb::Missing => match crate::storage::sqlite::remembered_replica(&paths.db) {
            Some(r) => (r, true),
            None => (ids::new_replica_id()?, false),
        },
        OldDb::Damaged(_, None) => (ids::new_replica_id()?, false),
    };
    let side = |suffix: &str| {
        let mut p = paths.db.as_os_str().to_owned();
        p.push(suffix);
        std::path::PathBuf::from(p)
    };
    let fresh_db = side(".rebuild");
    for stale in [
        ".rebuild",
        ".rebuild-wal",
        ".rebuild-shm",
        ".rebuild.replica",
    ] {
        remove_if_present(&side(stale))?;
    }
    let fresh_paths = BeadsPaths {
        dir: paths.dir.clone(),
        db: fresh_db.clone(),
    };
    let mut fresh = Store::create(&fresh_paths, &replica)?;
    remove_if_present(&side(".rebuild.replica"))?;
    // A scratch file until it is complete and synced (a crash leaves garbage that
    // the next rebuild deletes): no journal, no per-commit sync, a big cache.
    fresh.conn().execute_batch(
        "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA cache_size = -262144;",
    )?;
    let report = fresh.write(&crate::clock::SystemClock, |tx| {
        crate::exchange::rebuild_into(tx, paths, DEFAULT_MAX_SKEW_MS)
    })?;
    fresh.conn().execute_batch("PRAGMA journal_mode = WAL;")?;
    std::fs::File::open(&fresh_db)?.sync_all()?;
    let state_hash = crate::storage::sqlite::state_hash(fresh.conn())?;
    drop(fresh); // checkpoints and removes its WAL
    let mut out = RebuildReport {
        files: report.files_read,
        ops: report.applied,
        held: report.held,
        state_hash,
        previous_hash: None,
        replaced: false,
        backup: None,
        damaged: None,
        kept_replica,
        problems: report.problems,
    };
    let (old_files_current, old_held) = match old {
        OldDb::Sound {
            store,
            hash,
            files_current,
            held,
            ..
        } => {
            out.previous_hash = Some(hash.clone());
            if hash != out.state_hash && !force {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "the database rebuilt from the op files differs from the current one \
                         (state {} vs {}); kept the current database, the rebuilt one is at {}",
                        short(&out.state_hash),
                        short(&hash),
                        fresh_db.display()
                    ),
                )
                .hint(
                    "`bd doctor` shows unreadable op lines; `bd rebuild --force` takes the rebuilt one",
                ));
            }
            // The rebuilt tables replace the old ones inside the old file, in
            // the transaction that has held its write lock since before the
            // op files were read: no write can fall between, and every
            // connection (a running daemon's too) goes on using one file and
            // one write-ahead log. (Renaming another file into place would
            // leave the old `-wal` and `-shm` to whoever opened the new one.)
            // Request ids stay: a retried write must still find its answer.
            replace_tables(store.conn(), &fresh_db)?;
            drop(store);
            remove_if_present(&fresh_db)?;
            out.backup = Some(backup.display().to_string());
            (files_current, held)
        }
        OldDb::Missing => {
            std::fs::rename(&fresh_db, &paths.db)?;
            (false, 0)
        }
        OldDb::Damaged(e, _) => {
            let aside = side(".damaged");
            for suffix in ["", "-wal", "-shm"] {
                let from = side(suffix);
                let to = {
                    let mut p = aside.as_os_str().to_owned();
                    p.push(suffix);
                    std::path::PathBuf::from(p)
                };
                if from.exists() {
                    std::fs::rename(&from, &to)?;
                }
            }
            std::fs::rename(&fresh_db, &paths.db)?;
            out.damaged = Some(e.message);
            out.backup = Some(aside.display().to_string());
            (false, 0)
        }
    };
    out.replaced = true;
    // The file beside it says which replica this database is (a new id when
    // none could be kept).
    crate::storage::sqlite::remember_replica(&paths.db, &replica);
    let mut store = Store::open(&paths.db)?;
    // The new database holds each op once: a file that held one twice (or
    // missed one) is rewritten from it.
    crate::jsonl::flush_own_ops_with(&store, paths, crate::jsonl::OwnFile::Verify)?;
    // The same state (hash) with the same held ops renders the same files: if the
    // old database's were current, only the new database's mark is missing.
    let same = out.previous_hash.as_deref() == Some(out.state_hash.as_str());
    if same && old_files_current && old_held == out.held {
        let pos = crate::jsonl::snapshot_state(&store)?.ops;
        crate::storage::sqlite::meta_set(store.conn(), "snapshot_pos", &pos.to_string())?;
    } else {
        crate::jsonl::write_snapshot(&mut store, paths)?;
    }
    drop(store);
    // A daemon that had the damaged file open still serves it: ask it to
    // leave (the next command starts one on the new file). A sound database
    // was rebuilt in place, and a running daemon simply sees the new tables.
    if out.damaged.is_some()
        && let Ok(Some(mut daemon)) =
            DaemonClient::to_running(paths, "bd-rebuild", Duration::from_secs(10))
    {
        let _ = daemon.stop();
    }
    Ok(out)
}

/// Reads what a rebuild needs from the old database `old`, leaving its write
/// lock held: a copy at `backup` (written beside it and renamed, so a failed
/// copy never replaces the last good one), its own op file brought up to
/// date, its state hash.
fn read_old(old: Store, paths: &BeadsPaths, backup: &Path) -> Result<OldDb> {
    let partial = {
        let mut p = backup.as_os_str().to_owned();
        p.push(".partial");
        std::path::PathBuf::from(p)
    };
    remove_if_present(&partial)?;
    let copied = old
        .conn()
        .execute("VACUUM INTO ?1", [partial.to_string_lossy().as_ref()]);
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&partial);
        return Err(e.into());
    }
    std::fs::rename(&partial, backup).map_err(|e| crate::jsonl::io_at(backup, e))?;
    old.conn().execute_batch("BEGIN IMMEDIATE")?;
    // Everything this replica wrote must be in its op file first (but a
    // file that is ahead is kept: the rebuild applies what it holds).
    crate::jsonl::flush_own_ops_with(&old, paths, crate::jsonl::OwnFile::KeepIfAhead)?;
    let hash = crate::storage::sqlite::state_hash(old.conn())?;
    let files_current = !crate::jsonl::snapshot_state(&old)?.dirty;
    let held = crate::exchange::held_op_count(old.conn())?;
    Ok(OldDb::Sound {
        store: Box::new(old),
        hash,
        files_current,
        held,
    })
}

/// Tables a rebuild replaces (children after their parents for inserts).
const REBUILT_TABLES: &[&str] = &[
    "meta",
    "ops",
    "issues",
    "labels",
    "deps",
    "comments",
    "conflicts",
    "tombstones",
    "held_ops",
    "op_file_marks",
];

/// Replaces [`REBUILT_TABLES`] of `conn`'s database (in its open write
/// transaction) with those of the database at `fresh`, and commits.
fn replace_tables(conn: &rusqlite::Connection, fresh: &Path) -> Result<()> {
    conn.execute(
        "ATTACH DATABASE ?1 AS fresh",
        [fresh.to_string_lossy().as_ref()],
    )?;
    let copy = || -> Result<()> {
        for t in REBUILT_TABLES.iter().rev() {
            conn.execute_batch(&format!("DELETE FROM main.{t}"))?;
        }
        for t in REBUILT_TABLES {
            conn.execute_batch(&format!("INSERT INTO main.{t} SELECT * FROM fresh.{t}"))?;
        }
        Ok(())
    };
    match copy() {
        Ok(()) => {
            conn.execute_batch("COMMIT")?;
            conn.execute_batch("DETACH DATABASE fresh")?;
            Ok(())
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            let _ = conn.execute_batch("DETACH DATABASE fresh");
            Err(e)
        }
    }
}

/// The replica id of a database that cannot be opened: from its `meta` table
/// if that page still reads, else from `beads.db.replica`.
fn salvage_replica(db: &Path) -> Option<String> {
    let from_meta = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .ok()
    .and_then(|c| {
        c.query_row("SELECT value FROM meta WHERE key = 'replica'", [], |r| {
            r.get::<_, String>(0)
        })
        .ok()
    })
    .filter(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_alphanumeric()));
    from_meta.or_else(|| crate::storage::sqlite::remembered_replica(db))
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(crate::jsonl::io_at(path, e)),
    }
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}
