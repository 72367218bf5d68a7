//! The daemon process: [`run`] (lock, engine, threads, listener), the accept
//! loop (tokio + interprocess) with its back-off and the descriptor limit, and
//! the state shared by the connection tasks (`connection`) and the writer and
//! syncer threads (`writer`), from which the status is reported.

use super::connection::connection;
use super::writer::{Job, syncer_loop, writer_loop};
use super::{DaemonLock, record_for};
use crate::clock::{Clock, SystemClock};
use crate::engine::{CatchUpGate, DurabilityView, Engine, SnapshotPolicy};
use crate::rpc::{DaemonStatus, PROTOCOL};
use crate::storage::{BeadsPaths, Store};
use crate::{Error, ErrorKind, Result};
use interprocess::local_socket::tokio::prelude::*;
use interprocess::local_socket::{GenericFilePath, ListenerOptions};
use interprocess::os::unix::local_socket::ListenerOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Most writes committed in one group, unless [`DaemonOptions::max_group`] says
/// otherwise.
pub const MAX_GROUP: usize = 256;

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
    /// The user's config directory, where the mesh keeps this replica's key
    /// and secrets (`None`: the daemon does not use the relay).
    pub config_dir: Option<PathBuf>,
}

/// Where the daemon's own messages go (the CLI sends them to `daemon.log`).
pub type Log = Arc<dyn Fn(&str) + Send + Sync>;

/// Counts the status reports.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) requests: AtomicU64,
    pub(super) writes: AtomicU64,
    pub(super) groups: AtomicU64,
    pub(super) largest_group: AtomicU64,
    pub(super) queue: AtomicU64,
    pub(super) in_flight: AtomicU64,
    pub(super) connections: AtomicU64,
}

/// What the accept loop, the connection tasks, the writer and the syncer share.
pub(super) struct Shared {
    pub(super) opts: DaemonOptions,
    started: Instant,
    pub(super) jobs: Mutex<mpsc::Sender<Job>>,
    pub(super) readers: Mutex<Vec<Store>>,
    pub(super) counters: Counters,
    last_error: Mutex<Option<String>>,
    last_activity: Mutex<Instant>,
    pub(super) stopping: AtomicBool,
    shutdown: Notify,
    /// Decides when other clones' op files must be caught up with.
    pub(super) gate: CatchUpGate,
    pub(super) log: Log,
    /// The tracker's replica id (its own op file is not watched).
    pub(super) replica: String,
    /// Groups handed to the syncer and not yet answered.
    pub(super) sync_pending: AtomicU64,
    /// Smoothed time to apply a relay batch, ms (peers' impedance of us).
    pub(super) apply_ms: Mutex<f64>,
    /// Actors served, and when last (for the mesh's presence heartbeats).
    pub(super) agents: Mutex<std::collections::HashMap<String, Instant>>,
    /// The relay link's state, when this clone joined one.
    pub(super) relay: Mutex<Option<crate::rpc::RelayState>>,
    /// Lease requests to the relay session, while one is connected.
    pub(super) leases: Mutex<Option<tokio::sync::mpsc::UnboundedSender<super::relay::LeaseJob>>>,
    /// The writer's engine's durability, for the status.
    durability: DurabilityView,
    /// A claim was granted provisionally since the relay session last looked
    /// for provisional claims to turn into leases.
    pub(super) claims_unleased: AtomicBool,
    /// The relay leases this daemon holds for its agents, by issue.
    pub(super) held: Mutex<std::collections::BTreeMap<String, crate::mesh::query::HeldLease>>,
    /// The breaker over the relay connection.
    pub(super) relay_breaker: Mutex<crate::breaker::Breaker>,
    /// Leases given back while the relay could not be asked: (issue,
    /// holder), released when the session is next connected.
    pub(super) pending_releases: Mutex<Vec<(String, String, super::relay::GiveBack)>>,
    /// The relay session counted a drop its client has not recovered from
    /// (the session's end is then not counted again).
    pub(super) drop_counted: AtomicBool,
}

impl Shared {
    pub(super) fn note_error(&self, what: &str) {
        (self.log)(what);
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(what.to_string());
        }
    }

    pub(super) fn touch(&self) {
        if let Ok(mut t) = self.last_activity.lock() {
            *t = Instant::now();
        }
    }

    pub(super) fn status(&self) -> DaemonStatus {
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
            relay: self.relay.lock().ok().and_then(|r| r.clone()).map(|mut r| {
                r.mode = r.current_mode().to_string();
                let now = crate::clock::Clock::now_ms(&SystemClock);
                r.breaker = self
                    .relay_breaker
                    .lock()
                    .ok()
                    .map(|b| crate::rpc::BreakerView::of("relay", &b, now));
                r
            }),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
        }
    }

    /// Folds one relay batch's apply time into the smoothed figure peers see.
    pub(super) fn applied_in(&self, took: Duration) {
        let ms = took.as_secs_f64() * 1e3;
        if let Ok(mut a) = self.apply_ms.lock() {
            *a = if *a == 0.0 { ms } else { 0.8 * *a + 0.2 * ms };
        }
    }

    /// The smoothed time to apply a relay batch, ms.
    pub(super) fn apply_ms(&self) -> f64 {
        self.apply_ms.lock().map(|a| *a).unwrap_or(0.0)
    }

    /// Notes that `actor` used this daemon now.
    pub(super) fn saw_agent(&self, actor: &str) {
        if let Ok(mut a) = self.agents.lock()
            && a.get(actor).is_none_or(|t| t.elapsed() > Duration::from_secs(1))
        {
            a.insert(actor.to_string(), Instant::now());
        }
    }

    /// Actors seen in the last minute, sorted.
    pub(super) fn recent_agents(&self) -> Vec<String> {
        let Ok(mut a) = self.agents.lock() else {
            return Vec::new();
        };
        a.retain(|_, t| t.elapsed() < Duration::from_secs(60));
        let mut out: Vec<String> = a.keys().cloned().collect();
        out.sort();
        out
    }

    /// Whether this clone joined a relay (connected or not).
    pub(super) fn relay_configured(&self) -> bool {
        self.relay.lock().is_ok_and(|r| r.is_some())
    }

    pub(super) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Hands a job to the writer.
    pub(super) fn send_job(&self, job: super::writer::Job) -> Result<()> {
        self.jobs
            .lock()
            .map_err(|_| Error::internal("writer queue poisoned"))?
            .send(job)
            .map_err(|_| Error::internal("the daemon's writer has stopped"))
    }

    pub(super) fn begin_shutdown(&self) {
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
    let mut engine = Engine::open(
        opts.paths.clone(),
        Arc::new(SystemClock),
        "daemon",
        SnapshotPolicy::AfterIdle(opts.flush_debounce),
    )?;
    let mut syncer = engine.syncer()?;
    let (checkpointer, nudges) = engine.checkpoint_elsewhere(&mut syncer)?;
    std::thread::Builder::new()
        .name("bd-checkpoint".into())
        .spawn(move || checkpointer.run(nudges))?;
    // The relay, when this clone joined one: each durable commit's own ops go
    // to its outbox (see `relay`).
    let relay = match super::relay::Settings::load(&opts.paths, opts.config_dir.as_deref()) {
        Ok(r) => r,
        Err(e) => {
            log(&format!("relay not used: {}", e.message));
            None
        }
    };
    let outbox = match &relay {
        Some(_) => {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            engine.on_commit(Box::new(move |ops| {
                let _ = tx.send(ops.to_vec());
            }))?;
            Some(rx)
        }
        None => None,
    };
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
        relay: Mutex::new(None),
        leases: Mutex::new(None),
        agents: Mutex::new(Default::default()),
        apply_ms: Mutex::new(0.0),
        claims_unleased: AtomicBool::new(false),
        held: Mutex::new(Default::default()),
        relay_breaker: Mutex::new(Default::default()),
        pending_releases: Mutex::new(Vec::new()),
        drop_counted: AtomicBool::new(false),
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
            if let (Some(settings), Some(outbox)) = (relay, outbox) {
                if let Ok(mut r) = shared.relay.lock() {
                    *r = Some(settings.initial_state());
                }
                runtime.spawn(super::relay::run(
                    settings,
                    opts.paths.clone(),
                    shared.clone(),
                    outbox,
                ));
            }
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
                if !shared.opts.paths.dir.is_dir() {
                    // `rm -rf .beads`: nobody can reach this daemon through the
                    // tracker any more, and its lock and log are gone with it.
                    (shared.log)("the tracker's directory is gone; exiting");
                    break;
                }
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
