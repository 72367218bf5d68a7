//! The daemon process: accept loop (tokio + interprocess), one task per connection,
//! a writer thread doing group commits, and a pool of read connections.

use super::{DaemonLock, record_for};
use crate::api::{Request, Response};
use crate::clock::{Clock, SystemClock};
use crate::engine::{
    self, Answer, CatchUpGate, DurabilityView, Engine, Item, SnapshotPolicy, Syncer,
};
use crate::rpc::{
    self, Call, DaemonStatus, Envelope, Hello, HelloReply, IssueRows, Outcome, PROTOCOL, Reply,
};
use crate::service::Context;
use crate::storage::{BeadsPaths, Store};
use crate::{Error, ErrorKind, Result};
use interprocess::local_socket::tokio::{Stream, prelude::*};
use interprocess::local_socket::{GenericFilePath, ListenerOptions};
use interprocess::os::unix::local_socket::ListenerOptionsExt;
use serde::{Serialize, de::DeserializeOwned};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, oneshot};

/// Most writes committed in one group, unless [`DaemonOptions::max_group`] says
/// otherwise.
pub const MAX_GROUP: usize = 256;
/// A client must say hello within this long, or it is disconnected.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Read connections kept open between requests.
const READER_POOL: usize = 8;
/// On shutdown, how long queued writes may take to drain.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// How to run a daemon.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// The tracker.
    pub paths: BeadsPaths,
    /// Where to listen (see [`super::socket_path`]).
    pub socket: PathBuf,
    /// Exit after this long with no requests and no connections.
    pub idle_timeout: Duration,
    /// Write the issues.jsonl snapshot this long after the last write.
    pub flush_debounce: Duration,
    /// Most writes committed in one transaction ([`MAX_GROUP`]); 1 turns group
    /// commit off (each write its own transaction and fdatasync), for measuring.
    pub max_group: usize,
    /// The version this daemon reports (normally this build's; tests of the
    /// upgrade path make a daemon claim to be older).
    pub version: String,
}

/// Where the daemon's own messages go (the CLI sends them to `daemon.log`).
pub type Log = Arc<dyn Fn(&str) + Send + Sync>;

enum Job {
    Write {
        item: Box<Item>,
        reply: oneshot::Sender<Result<Response>>,
    },
    /// Apply what other clones delivered into `.beads/ops` (see
    /// [`Engine::catch_up`]) before the asking request is served.
    CatchUp(oneshot::Sender<Result<()>>),
    /// The syncer made commits durable: the engine hands their ops on.
    Durable,
    Stop,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    writes: AtomicU64,
    groups: AtomicU64,
    largest_group: AtomicU64,
    queue: AtomicU64,
    in_flight: AtomicU64,
    connections: AtomicU64,
}

struct Shared {
    opts: DaemonOptions,
    started: Instant,
    jobs: Mutex<mpsc::Sender<Job>>,
    readers: Mutex<Vec<Store>>,
    counters: Counters,
    last_error: Mutex<Option<String>>,
    last_activity: Mutex<Instant>,
    stopping: AtomicBool,
    shutdown: Notify,
    /// Decides when other clones' op files must be caught up with.
    gate: CatchUpGate,
    log: Log,
    /// The tracker's replica id (its own op file is not watched).
    replica: String,
    /// Groups handed to the syncer and not yet answered.
    sync_pending: AtomicU64,
    /// The writer's engine's durability, for the status.
    durability: DurabilityView,
}

impl Shared {
    fn note_error(&self, what: &str) {
        (self.log)(what);
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(what.to_string());
        }
    }

    fn touch(&self) {
        if let Ok(mut t) = self.last_activity.lock() {
            *t = Instant::now();
        }
    }

    fn status(&self) -> DaemonStatus {
        let c = &self.counters;
        DaemonStatus {
            pid: std::process::id(),
            version: self.opts.version.clone(),
            protocol: PROTOCOL,
            uptime_ms: self.started.elapsed().as_millis() as u64,
            socket: self.opts.socket.display().to_string(),
            queue_depth: c.queue.load(Ordering::SeqCst),
            in_flight: c.in_flight.load(Ordering::SeqCst),
            requests: c.requests.load(Ordering::SeqCst),
            writes: c.writes.load(Ordering::SeqCst),
            groups: c.groups.load(Ordering::SeqCst),
            largest_group: c.largest_group.load(Ordering::SeqCst),
            connections: c.connections.load(Ordering::SeqCst),
            syncs: self.durability.syncs(),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
        }
    }

    fn begin_shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.shutdown.notify_one();
    }
}

/// Descriptors the daemon cannot run without: the database and its `-wal`
/// and `-shm`, the lock, the log, op files, the socket, tokio's own (its
/// signal handling panics when it cannot make one), and some clients.
const MIN_DESCRIPTORS: u64 = 32;

/// Raises this process's soft limit on open files towards its hard limit (to
/// 4,096 at most), as servers do: a shell's `ulimit -Sn` of 256 or less would
/// otherwise cap how many agents can be connected at once. Refuses to start,
/// saying why, when even the hard limit is below [`MIN_DESCRIPTORS`]
/// (commands then run directly).
fn ensure_descriptors() -> Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Ok(()); // nothing known: go ahead
    }
    let want = lim.rlim_max.min(4096);
    if lim.rlim_cur < want {
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = want;
        }
    }
    if lim.rlim_cur < MIN_DESCRIPTORS {
        return Err(Error::new(
            ErrorKind::Io,
            format!(
                "the daemon needs at least {MIN_DESCRIPTORS} open files and may have {} (ulimit -n)",
                lim.rlim_cur
            ),
        )
        .hint("raise the limit (`ulimit -n 1024`); commands run directly meanwhile"));
    }
    Ok(())
}

/// Runs a daemon until it is stopped, idles out or gets SIGTERM/SIGINT. Fails with
/// [`ErrorKind::Exists`] if another daemon holds the tracker's lock.
pub fn run(opts: DaemonOptions, log: Log) -> Result<()> {
    ensure_descriptors()?;
    let mut lock = DaemonLock::acquire(&opts.paths)?;
    // We hold the lock, so any socket file at our path is a dead daemon's.
    let _ = std::fs::remove_file(&opts.socket);
    let engine = Engine::open(
        opts.paths.clone(),
        Arc::new(SystemClock),
        "daemon",
        SnapshotPolicy::AfterIdle(opts.flush_debounce),
    )?;
    let syncer = engine.syncer()?;
    let (tx, rx) = mpsc::channel();
    let (acks_tx, acks_rx) = mpsc::channel();
    let shared = Arc::new(Shared {
        opts: opts.clone(),
        started: Instant::now(),
        jobs: Mutex::new(tx),
        readers: Mutex::new(Vec::new()),
        counters: Counters::default(),
        last_error: Mutex::new(None),
        last_activity: Mutex::new(Instant::now()),
        stopping: AtomicBool::new(false),
        shutdown: Notify::new(),
        gate: engine.gate(),
        log: log.clone(),
        replica: engine.replica().to_string(),
        sync_pending: AtomicU64::new(0),
        durability: engine.durability(),
    });
    let syncer = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("bd-syncer".into())
            .spawn(move || syncer_loop(syncer, acks_rx, &shared))?
    };
    let writer = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("bd-writer".into())
            .spawn(move || writer_loop(engine, rx, acks_tx, &shared))?
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listener = runtime.block_on(async {
        let name = opts.socket.as_path().to_fs_name::<GenericFilePath>()?;
        ListenerOptions::new().name(name).mode(0o600).create_tokio()
    });
    let served = match listener {
        Ok(listener) => {
            // Only now tell clients where to connect: a client that can read the
            // record can always connect.
            let mut record = record_for(opts.socket.clone(), SystemClock.now_ms());
            record.version = opts.version.clone();
            lock.publish(&record)?;
            log(&format!(
                "daemon {} (pid {}) listening on {}",
                opts.version,
                std::process::id(),
                opts.socket.display()
            ));
            runtime.block_on(serve(shared.clone(), listener))
        }
        Err(e) => Err(Error::new(
            ErrorKind::Io,
            format!("cannot listen on {}: {e}", opts.socket.display()),
        )),
    };
    if let Ok(jobs) = shared.jobs.lock() {
        let _ = jobs.send(Job::Stop);
    }
    // Go on serving the connections already open while the writer drains and
    // the syncer answers: a hello gets its reply, a request hears "shutting
    // down", a committed write its answer. Left undriven, such a client waited
    // out its whole liveness deadline and then said the daemon was wedged.
    runtime.block_on(async {
        while !writer.is_finished() || !syncer.is_finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    if writer.join().is_err() {
        log("writer thread panicked");
    }
    // The writer's end of the ack channel is gone, so the syncer answers what is
    // left and stops.
    if syncer.join().is_err() {
        log("syncer thread panicked");
    }
    drop(runtime);
    let _ = std::fs::remove_file(&opts.socket);
    drop(lock);
    log("daemon stopped");
    served
}

async fn serve(
    shared: Arc<Shared>,
    listener: interprocess::local_socket::tokio::Listener,
) -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    // The idle check needs no finer grain than a quarter of the idle timeout
    // (bounded 250 ms to 5 s): an idle daemon wakes every 5 s, not 4 times a second.
    let period =
        (shared.opts.idle_timeout / 4).clamp(Duration::from_millis(250), Duration::from_secs(5));
    let mut tick = tokio::time::interval(period);
    let mut refusals = AcceptBackoff::default();
    loop {
        tokio::select! {
            conn = listener.accept() => match conn {
                Ok(conn) => {
                    refusals.reset();
                    tokio::spawn(connection(conn, shared.clone()));
                }
                Err(e) => {
                    // Out of file descriptors (EMFILE) and the like: accepting
                    // again at once fails again at once. Wait, doubling up to a
                    // second, and say so once per interval, while the
                    // connections already open go on being served.
                    let (wait, report) = refusals.failed();
                    if let Some(n) = report {
                        shared.note_error(&format!(
                            "accept failed: {e} ({n} times since the last report); retrying every {} ms at most",
                            wait.as_millis()
                        ));
                    }
                    tokio::time::sleep(wait).await;
                }
            },
            _ = shared.shutdown.notified() => { (shared.log)("stop requested"); break; }
            _ = term.recv() => { (shared.log)("SIGTERM"); break; }
            _ = int.recv() => { (shared.log)("SIGINT"); break; }
            _ = tick.tick() => {
                let idle = shared.last_activity.lock().map(|t| t.elapsed()).unwrap_or_default();
                if shared.counters.connections.load(Ordering::SeqCst) == 0 && idle >= shared.opts.idle_timeout {
                    (shared.log)(&format!("idle for {} s; exiting", idle.as_secs()));
                    break;
                }
            }
        }
    }
    shared.stopping.store(true, Ordering::SeqCst);
    drop(listener);
    // Let queued writes commit and their callers hear back.
    let start = Instant::now();
    while shared.counters.queue.load(Ordering::SeqCst) > 0 && start.elapsed() < DRAIN_LIMIT {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    Ok(())
}

/// Back-off for a failing `accept`: 10 ms doubling to 1 s, and a log line at
/// most every [`ACCEPT_REPORT_EVERY`] (before, an exhausted descriptor table
/// made the loop spin at 100% CPU writing ~25 MB of log a second).
#[derive(Default)]
struct AcceptBackoff {
    wait: Option<Duration>,
    failures: u64,
    reported: Option<Instant>,
}

/// How often a run of failing accepts is reported in the log.
const ACCEPT_REPORT_EVERY: Duration = Duration::from_secs(10);

impl AcceptBackoff {
    /// Records a failure: how long to wait, and the count to report if a
    /// report is due.
    fn failed(&mut self) -> (Duration, Option<u64>) {
        self.failures += 1;
        let wait = self.wait.map_or(Duration::from_millis(10), |w| {
            (w * 2).min(Duration::from_secs(1))
        });
        self.wait = Some(wait);
        let due = self
            .reported
            .is_none_or(|t| t.elapsed() >= ACCEPT_REPORT_EVERY);
        if !due {
            return (wait, None);
        }
        self.reported = Some(Instant::now());
        (wait, Some(std::mem::take(&mut self.failures)))
    }

    fn reset(&mut self) {
        self.wait = None;
    }
}

struct ConnectionGuard(Arc<Shared>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.counters.connections.fetch_sub(1, Ordering::SeqCst);
        self.0.touch();
    }
}

async fn read_frame<T: DeserializeOwned>(mut conn: &Stream) -> Result<Option<T>> {
    let mut len = [0u8; 4];
    let n = conn.read(&mut len).await?;
    if n == 0 {
        return Ok(None);
    }
    if n < 4 {
        conn.read_exact(&mut len[n..]).await?;
    }
    let len = rpc::check_len(u32::from_be_bytes(len))?;
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).await?;
    rpc::decode(&body).map(Some)
}

async fn write_frame<T: Serialize>(mut conn: &Stream, msg: &T) -> Result<()> {
    conn.write_all(&rpc::encode(msg)?).await?;
    conn.flush().await?;
    Ok(())
}

async fn connection(conn: Stream, shared: Arc<Shared>) {
    shared.counters.connections.fetch_add(1, Ordering::SeqCst);
    let _guard = ConnectionGuard(shared.clone());
    let hello: Hello = match tokio::time::timeout(HELLO_TIMEOUT, read_frame(&conn)).await {
        Ok(Ok(Some(h))) => h,
        _ => return, // silent, garbage or too slow: this client only
    };
    let ok = hello.protocol == PROTOCOL;
    let reply = HelloReply {
        protocol: PROTOCOL,
        version: shared.opts.version.clone(),
        pid: std::process::id(),
        ok,
        message: (!ok).then(|| {
            format!(
                "daemon speaks protocol {PROTOCOL}, client {}",
                hello.protocol
            )
        }),
    };
    if write_frame(&conn, &reply).await.is_err() || !ok {
        return;
    }
    loop {
        let env: Envelope = match read_frame(&conn).await {
            Ok(Some(env)) => env,
            Ok(None) => return,
            Err(e) => {
                let _ = write_frame(
                    &conn,
                    &Reply {
                        id: 0,
                        result: Outcome::Err(e),
                    },
                )
                .await;
                return;
            }
        };
        shared.touch();
        let result = match env.call {
            Call::Status => Outcome::Status(shared.status()),
            Call::Stop => {
                shared.begin_shutdown();
                Outcome::Stopping
            }
            Call::Request(req) => {
                shared.counters.requests.fetch_add(1, Ordering::SeqCst);
                let item = Item {
                    actor: env.actor,
                    request: *req,
                    deadline_ms: Some(env.deadline_ms),
                    request_id: env.request_id,
                };
                match request(&shared, item).await {
                    Ok(Answer::Response(r)) => Outcome::Ok(r),
                    Ok(Answer::Rows(rows)) => Outcome::Rows(IssueRows(rows)),
                    Err(e) => Outcome::Err(e),
                }
            }
        };
        if write_frame(&conn, &Reply { id: env.id, result })
            .await
            .is_err()
        {
            return;
        }
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
    }
}

async fn request(shared: &Arc<Shared>, item: Item) -> Result<Answer> {
    if shared.stopping.load(Ordering::SeqCst) {
        // Not accepted, so certainly not applied: the client resends it
        // (through the next daemon, or in-process).
        return Err(
            Error::new(ErrorKind::Unavailable, "the daemon is shutting down")
                .hint("run the command again"),
        );
    }
    catch_up(shared).await?;
    if item.request.is_write() {
        let (tx, rx) = oneshot::channel();
        shared.counters.queue.fetch_add(1, Ordering::SeqCst);
        let sent = shared
            .jobs
            .lock()
            .map_err(|_| Error::internal("writer queue poisoned"))?
            .send(Job::Write {
                item: Box::new(item),
                reply: tx,
            });
        if sent.is_err() {
            shared.counters.queue.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::internal("the daemon's writer has stopped"));
        }
        return rx
            .await
            .unwrap_or_else(|_| Err(Error::internal("the daemon's writer dropped the request")))
            .map(Answer::Response);
    }
    if is_light(&item.request) {
        // A bounded read (a few issues, a short page) takes tens of µs: running it
        // here costs less than handing it to another thread and back.
        return read(shared, item);
    }
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || read(&shared, item))
        .await
        .unwrap_or_else(|_| Err(Error::internal("a read task panicked")))
}

/// Before serving anything, make sure ops that git delivered since the last look
/// are applied: the engine's gate looks at the op files here, and the writer is
/// asked to catch up only when they changed.
async fn catch_up(shared: &Arc<Shared>) -> Result<()> {
    let Some(sig) = shared.gate.due(&shared.opts.paths, &shared.replica)? else {
        return Ok(());
    };
    let (tx, rx) = oneshot::channel();
    let sent = shared
        .jobs
        .lock()
        .map_err(|_| Error::internal("writer queue poisoned"))?
        .send(Job::CatchUp(tx));
    if sent.is_err() {
        return Err(Error::internal("the daemon's writer has stopped"));
    }
    rx.await
        .unwrap_or_else(|_| Err(Error::internal("the daemon's writer dropped the request")))?;
    shared.gate.done(sig);
    Ok(())
}

/// Reads small and bounded enough to run on the connection task itself.
fn is_light(req: &Request) -> bool {
    match req {
        Request::Show { ids } => ids.len() <= 16,
        Request::Ready(f) | Request::List(f) => f.limit.is_some_and(|n| (1..=100).contains(&n)),
        _ => false,
    }
}

/// Runs a read on a pooled read connection.
fn read(shared: &Shared, item: Item) -> Result<Answer> {
    let pooled = shared.readers.lock().ok().and_then(|mut p| p.pop());
    let mut store = match pooled {
        Some(s) => s,
        None => Store::open(&shared.opts.paths.db)?,
    };
    let ctx = Context {
        actor: &item.actor,
        clock: &SystemClock,
        paths: &shared.opts.paths,
        mode: "daemon",
        request_id: None,
        deadline_ms: item.deadline_ms,
    };
    let out = engine::read_for_wire(&mut store, &ctx, item.request);
    if let Ok(mut pool) = shared.readers.lock()
        && pool.len() < READER_POOL
    {
        pool.push(store);
    }
    out
}

type Pending = (oneshot::Sender<Result<Response>>, Item);

/// A committed group's answers, held until the log is durable.
type Acks = Vec<(oneshot::Sender<Result<Response>>, Result<Response>)>;

fn writer_loop(
    mut engine: Engine,
    rx: mpsc::Receiver<Job>,
    acks: mpsc::Sender<Acks>,
    shared: &Shared,
) {
    let mut stopping = false;
    loop {
        // With nothing to flush, sleep until work arrives (no periodic wake-up).
        let next = match engine.idle_in() {
            Some(wait) => rx.recv_timeout(wait),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let first = match next {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => {
                idle(&mut engine, shared);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut jobs = vec![first];
        let max_group = shared.opts.max_group.max(1);
        while jobs.len() < max_group {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let mut live: Vec<Pending> = Vec::with_capacity(jobs.len());
        let mut catch_ups = Vec::new();
        for job in jobs {
            match job {
                Job::Stop => stopping = true,
                Job::CatchUp(reply) => catch_ups.push(reply),
                Job::Durable => engine.after_durable(),
                Job::Write { item, reply } => {
                    shared.counters.queue.fetch_sub(1, Ordering::SeqCst);
                    if reply.is_closed() {
                        continue; // the client went away before its turn
                    }
                    live.push((reply, *item));
                }
            }
        }
        if !catch_ups.is_empty() {
            let out = engine.catch_up();
            match &out {
                Ok(Some(report)) => {
                    for p in &report.problems {
                        (shared.log)(&format!("{}:{}: {}", p.file, p.line, p.problem));
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    shared.note_error(&format!("applying other clones' ops failed: {}", e.message))
                }
            }
            let out = out.map(|_| ());
            for reply in catch_ups {
                let _ = reply.send(out.clone());
            }
        }
        if !live.is_empty() {
            commit_group(&mut engine, shared, live, &acks);
        }
        if stopping && shared.counters.queue.load(Ordering::SeqCst) == 0 {
            break;
        }
    }
    idle(&mut engine, shared);
}

/// The engine's idle work: durable, op file, snapshot.
fn idle(engine: &mut Engine, shared: &Shared) {
    if let Err(e) = engine.idle() {
        shared.note_error(&format!("snapshot flush failed: {}", e.message));
    }
}

/// Makes committed groups durable and only then answers their callers. While it
/// waits for the disk the writer commits the next groups, and one fdatasync then
/// covers all of them (the log is appended in commit order).
fn syncer_loop(mut syncer: Syncer, rx: mpsc::Receiver<Acks>, shared: &Shared) {
    while let Ok(first) = rx.recv() {
        let mut waiting = first;
        let mut groups = 1;
        while let Ok(more) = rx.try_recv() {
            waiting.extend(more);
            groups += 1;
        }
        let durable = syncer.sync();
        let synced = durable.is_ok();
        answer(durable, waiting, shared);
        shared.sync_pending.fetch_sub(groups, Ordering::SeqCst);
        if synced && let Ok(jobs) = shared.jobs.lock() {
            let _ = jobs.send(Job::Durable);
        }
    }
}

/// Answers `waiting` once their commits are durable (`durable` is `Ok`). A
/// failed fdatasync is final (see the engine): nobody is told a write is safe
/// any more, and the daemon stops.
fn answer(durable: Result<()>, waiting: Acks, shared: &Shared) {
    match durable {
        Ok(()) => {
            for (reply, result) in waiting {
                let _ = reply.send(result);
            }
        }
        Err(err) => {
            shared.note_error(&err.message);
            let err = err.hint("the daemon has stopped");
            for (reply, _) in waiting {
                let _ = reply.send(Err(err.clone()));
            }
            shared.begin_shutdown();
        }
    }
}

fn commit_group(
    engine: &mut Engine,
    shared: &Shared,
    live: Vec<Pending>,
    acks: &mpsc::Sender<Acks>,
) {
    let n = live.len() as u64;
    let (replies, items): (Vec<_>, Vec<_>) = live.into_iter().unzip();
    let c = &shared.counters;
    c.writes.fetch_add(n, Ordering::SeqCst);
    c.groups.fetch_add(1, Ordering::SeqCst);
    c.largest_group.fetch_max(n, Ordering::SeqCst);
    c.in_flight.store(n, Ordering::SeqCst);
    let outcome = engine.commit(items);
    c.in_flight.store(0, Ordering::SeqCst);
    match outcome {
        Ok(results) => {
            let answers: Acks = replies.into_iter().zip(results).collect();
            // Nothing else waiting and every earlier group already durable: settle
            // here and answer at once (a lone write skips the hand-off, and its
            // ops reach the op file before its answer). Only when no earlier
            // group is still being synced, so an answer never vouches for frames
            // behind ones whose sync might yet fail.
            let idle = shared.sync_pending.load(Ordering::SeqCst) == 0
                && shared.counters.queue.load(Ordering::SeqCst) == 0;
            if idle {
                answer(engine.settle(), answers, shared);
            } else {
                shared.sync_pending.fetch_add(1, Ordering::SeqCst);
                // The syncer outlives the writer (it stops when this sender is
                // dropped), so this send only fails if it panicked.
                let _ = acks.send(answers);
            }
        }
        Err(e) => {
            shared.note_error(&format!("group commit of {n} writes failed: {}", e.message));
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
