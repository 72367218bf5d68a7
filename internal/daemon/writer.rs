//! The writer thread, the only one that writes: it commits everything waiting as
//! one group and catches up with other clones' ops when asked; the syncer thread
//! makes committed groups durable and only then answers their callers.

use super::server::Shared;
use crate::api::{Request, Response};
use crate::engine::{Engine, Item, Syncer};
use crate::{Result, progress};
use std::sync::atomic::Ordering;
use std::collections::VecDeque;
use std::sync::mpsc::{self, RecvTimeoutError};
use tokio::sync::oneshot;

/// Work for the writer thread.
pub(super) enum Job {
    Write {
        item: Box<Item>,
        reply: oneshot::Sender<Result<Response>>,
        /// Listens to the progress of the group this write commits in.
        progress: Option<progress::Sink>,
    },
    /// Apply what other clones delivered into `.beads/ops` (see
    /// [`Engine::catch_up`]) before the asking request is served.
    CatchUp(oneshot::Sender<Result<()>>, Option<progress::Sink>),
    /// The syncer made commits durable: the engine hands their ops on.
    Durable,
    /// A batch another replica published through the relay: apply (or keep
    /// in transit), make durable.
    Receive(
        String,
        Vec<crate::model::Op>,
        oneshot::Sender<Result<crate::engine::Delivery>>,
    ),
    /// Apply the batches in transit whose gaps have been filled.
    Release(oneshot::Sender<Result<(Vec<crate::engine::Released>, u64)>>),
    /// A refused relay batch to keep: replica, issue, reason, payload.
    Quarantine([String; 4]),
    Stop,
}

type Pending = (oneshot::Sender<Result<Response>>, Item);

/// A committed group's answers, held until the log is durable.
type Acks = Vec<(oneshot::Sender<Result<Response>>, Result<Response>)>;

pub(super) fn writer_loop(
    mut engine: Engine,
    rx: mpsc::Receiver<Job>,
    acks: mpsc::Sender<Acks>,
    shared: &Shared,
) {
    let mut stopping = false;
    // Jobs taken off the channel but left for a later group (large writes
    // past the group's weight).
    let mut backlog: VecDeque<Job> = VecDeque::new();
    let mut small_turn = true;
    loop {
        if let Some(first) = backlog.pop_front() {
            let jobs = compose_group(first, &mut backlog, &rx, shared, &mut small_turn);
            if run_jobs(&mut engine, jobs, &acks, shared, &mut stopping) {
                break;
            }
            continue;
        }
        // With nothing to flush and no claim due to lapse, sleep until work
        // arrives (no periodic wake-up).
        let claims_due = engine.claims_due_in().unwrap_or_else(|e| {
            shared.note_error(&format!("looking for lapsed claims failed: {}", e.message));
            None
        });
        let next = match [engine.idle_in(), claims_due].into_iter().flatten().min() {
            Some(wait) => rx.recv_timeout(wait.min(CLAIM_CHECK_MAX)),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let first = match next {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => {
                expire_claims(&mut engine, shared);
                if engine.idle_in().is_some_and(|d| d.is_zero()) {
                    idle(&mut engine, shared);
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let jobs = compose_group(first, &mut backlog, &rx, shared, &mut small_turn);
        if run_jobs(&mut engine, jobs, &acks, shared, &mut stopping) {
            break;
        }
    }
    idle(&mut engine, shared);
}

/// The most operations a group takes beyond its first job, counting a batch
/// or an import by its operations: a group of large batches takes a few
/// hundred milliseconds at most, so small writes waiting behind them (a
/// claim, a close) are answered within a group or two.
const GROUP_WEIGHT: usize = 2_000;

/// A write this small joins the next group whatever its weight.
const SMALL_WRITE: usize = 16;

/// How many operations a job commits.
fn weight(job: &Job) -> usize {
    match job {
        Job::Write { item, .. } => match &item.request {
            Request::Batch { requests } => requests.len(),
            Request::Import { records, .. } => records.len(),
            _ => 1,
        },
        _ => 0,
    }
}

/// The next group, from `first` and whatever waits (on the channel and in
/// `backlog`, in arrival order). Small writes (a claim, a close) go first:
/// when any waits, the group is the small writes and control jobs only, and
/// commits in a few milliseconds however many large batches queue behind
/// it. The group after such a group is taken in arrival order, large writes
/// while its weight allows, so a large write is never passed over for
/// ever. What is left stays in `backlog`, in order.
fn compose_group(
    first: Job,
    backlog: &mut VecDeque<Job>,
    rx: &mpsc::Receiver<Job>,
    shared: &Shared,
    small_turn: &mut bool,
) -> Vec<Job> {
    let max_group = shared.opts.max_group.max(1);
    backlog.push_front(first);
    while let Ok(job) = rx.try_recv() {
        backlog.push_back(job);
    }
    let small_only = *small_turn && backlog.iter().any(|j| matches!(j, Job::Write { .. }) && weight(j) <= SMALL_WRITE);
    *small_turn = !small_only;
    let mut total = 0;
    let mut jobs = Vec::new();
    let mut rest = VecDeque::with_capacity(backlog.len());
    for job in backlog.drain(..) {
        let w = weight(&job);
        let fits = if small_only {
            w <= SMALL_WRITE
        } else {
            jobs.is_empty() || w <= SMALL_WRITE || total + w <= GROUP_WEIGHT
        };
        if fits && jobs.len() < max_group {
            total += w;
            jobs.push(job);
        } else {
            rest.push_back(job);
        }
    }
    *backlog = rest;
    jobs
}

/// Runs one group's jobs; true when the writer should stop.
fn run_jobs(
    engine: &mut Engine,
    jobs: Vec<Job>,
    acks: &mpsc::Sender<Acks>,
    shared: &Shared,
    stopping: &mut bool,
) -> bool {
    let mut live: Vec<Pending> = Vec::with_capacity(jobs.len());
    let mut catch_ups = Vec::new();
    // The first listener of the group hears its catch-up and its commit.
    let mut listener: Option<progress::Sink> = None;
    for job in jobs {
        match job {
            Job::Stop => *stopping = true,
            Job::CatchUp(reply, progress) => {
                listener = listener.or(progress);
                catch_ups.push(reply)
            }
            Job::Durable => engine.after_durable(),
            Job::Receive(replica, ops, reply) => {
                let _ = reply.send(engine.receive_batch(&replica, ops));
            }
            Job::Release(reply) => {
                let _ = reply.send(engine.release_transit());
            }
            Job::Quarantine([replica, issue, reason, payload]) => {
                if let Err(e) = engine.quarantine(&replica, &issue, &reason, &payload) {
                    shared.note_error(&format!("relay: quarantine failed: {}", e.message));
                }
            }
            Job::Write {
                item,
                reply,
                progress,
            } => {
                shared.counters.queue.fetch_sub(1, Ordering::SeqCst);
                if reply.is_closed() {
                    continue; // the client went away before its turn
                }
                listener = listener.or(progress);
                live.push((reply, *item));
            }
        }
    }
    if !catch_ups.is_empty() {
        let out = progress::scoped(listener.clone(), || engine.catch_up());
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
        progress::scoped(listener, || commit_group(engine, shared, live, acks));
    }
    *stopping && shared.counters.queue.load(Ordering::SeqCst) == 0
}

/// The longest the writer sleeps while a claim is due to lapse (the clock
/// may be set forward meanwhile).
const CLAIM_CHECK_MAX: std::time::Duration = std::time::Duration::from_secs(60);

/// Returns lapsed claims to open when no write came to do it first, and
/// makes that durable (it is a write nobody waits for).
fn expire_claims(engine: &mut Engine, shared: &Shared) {
    match engine.expire_claims() {
        Ok(ids) if ids.is_empty() => {}
        Ok(ids) => {
            (shared.log)(&format!("claims lapsed, back to ready: {}", ids.join(", ")));
            if let Err(e) = engine.settle() {
                shared.note_error(&format!("making lapsed claims durable failed: {}", e.message));
            }
        }
        Err(e) => shared.note_error(&format!("returning lapsed claims failed: {}", e.message)),
    }
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
pub(super) fn syncer_loop(mut syncer: Syncer, rx: mpsc::Receiver<Acks>, shared: &Shared) {
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
