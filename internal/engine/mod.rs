//! The engine: the one way a request is run, in both modes.
//!
//! Direct mode hands [`Engine::run`] a group of one write; the daemon's writer
//! hands [`Engine::commit`] up to `MAX_GROUP` writes at once and settles them
//! inline or on its syncer thread. Reads go through [`read`] on any connection.
//! Everything around an operation happens here and nowhere else, in this order:
//!
//! 1. **catch-up**: ops other clones delivered into `.beads/ops` are applied
//!    when those files changed ([`CatchUpGate`]);
//! 2. **checks**: the actor, and each request's deadline before and after its
//!    work (late work is undone);
//! 3. **commit**: one transaction for the group, a savepoint per request only
//!    when one fails after writing;
//! 4. **durability point**: one `fdatasync` of the WAL ([`Syncer`]); commits use
//!    `synchronous = NORMAL`, so this is the only sync on the answer path;
//! 5. **op-file append**: this replica's ops, only once every commit is durable,
//!    so the file (which git carries to every other clone) never holds an op the
//!    database could still lose;
//! 6. **post-commit hook**: the same ops, in order ([`Engine::on_commit`]);
//! 7. the answers.
//!
//! A crash between any two steps is repaired by the next open: before step 4 the
//! commit may be lost, but nobody was told of it and no file holds its ops, so
//! its sequence numbers are free again; after step 4 the next append (any write,
//! `bd flush`, the daemon's idle flush) copies what the file lacks, and a torn
//! last line makes the file be rewritten from the database. See "Durability" in
//! DAEMON_DESIGN.md and `tests/it/durability.rs`.
//!
//! The snapshot (`issues.jsonl`) follows a [`SnapshotPolicy`]: written on
//! `bd flush`/`bd sync` only, or also once the engine has been idle a while.

mod fault;
mod read;
mod transit;

pub use read::{Answer, read, read_for_wire};
pub use transit::{Delivery, Released, transit_len};

use crate::api::{Request, Response};
use crate::clock::Clock;
use crate::exchange::{self, DEFAULT_MAX_SKEW_MS, DirSignature, IngestReport, OpDirWatch};
use crate::model::Op;
use crate::service::{self, Context};
use crate::storage::{BeadsPaths, Store, WalSync};
use crate::{Error, ErrorKind, Result};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One write of a group: the request with who sent it and how.
#[derive(Debug, Clone)]
pub struct Item {
    /// Who is acting (recorded on its ops).
    pub actor: String,
    /// The write request.
    pub request: Request,
    /// Do not commit it after this time (ms since the epoch).
    pub deadline_ms: Option<u64>,
    /// The caller's request id (see [`Context::request_id`]).
    pub request_id: Option<String>,
    /// Relay leases the daemon holds for this write (issue id, fencing
    /// token): set by the daemon, never taken from a client.
    pub fences: Vec<(String, u64)>,
}

/// When the snapshot is rewritten besides `bd flush` and `bd sync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotPolicy {
    /// Only when asked (a short-lived process: direct mode).
    OnFlush,
    /// Also once no write has come for this long (a long-lived daemon).
    AfterIdle(Duration),
}

/// Longest actor name accepted (characters).
pub const MAX_ACTOR_CHARS: usize = 128;

fn check_actor(actor: &str) -> Result<()> {
    if actor.trim().is_empty() {
        return Err(
            Error::invalid("actor must not be empty").hint("pass --actor NAME or set BD_ACTOR")
        );
    }
    // Recorded on every op and shown in every listing: a control character
    // would reach people's terminals and forge lines in files.
    if let Some(c) = actor.chars().find(|c| c.is_control()) {
        return Err(Error::invalid(format!(
            "actor contains the control character U+{:04X}",
            c as u32
        ))
        .hint("an actor is a short name such as alice or claude-code"));
    }
    if actor == crate::model::BD_ACTOR {
        return Err(Error::invalid(
            "the actor name bd is bd's own (it signs the return of lapsed claims)",
        )
        .hint("pass --actor NAME or set BD_ACTOR to a name of your own"));
    }
    if actor.chars().count() > MAX_ACTOR_CHARS {
        return Err(Error::invalid(format!(
            "actor is {} characters long; at most {MAX_ACTOR_CHARS}",
            actor.chars().count()
        ))
        .hint("an actor is a short name such as alice or claude-code"));
    }
    Ok(())
}

/// What is durable, shared by the engine and its [`Syncer`].
#[derive(Debug, Default)]
struct Durability {
    /// Commits made (groups and catch-ups).
    committed: AtomicU64,
    /// Commits known to be on disk.
    durable: AtomicU64,
    /// This replica's last op known to be on disk (its `seq`): the op file may
    /// hold ops up to here.
    durable_seq: AtomicI64,
    /// This replica's last op this engine (or its syncer) wrote to the op file.
    in_file_seq: AtomicI64,
    /// fdatasync calls made.
    syncs: AtomicU64,
    /// Set for good by the first failed fdatasync.
    failed: Mutex<Option<Error>>,
}

impl Durability {
    /// Step 5: appends the op file up to the last durable op, unless this
    /// engine or its syncer already did (the writer and the syncer both come
    /// here after a sync; the second one only pays an atomic load). The op
    /// table is the durable record and the file can always be regenerated from
    /// it, so a failure is left for the next append or `bd flush` to retry.
    fn append(&self, store: &Store, paths: &BeadsPaths) -> i64 {
        let seq = self.durable_seq.load(Ordering::SeqCst);
        if self.in_file_seq.load(Ordering::SeqCst) < seq
            && crate::jsonl::flush_durable_ops(store, paths, seq).is_ok()
        {
            self.in_file_seq.fetch_max(seq, Ordering::SeqCst);
        }
        seq
    }

    fn failure(&self) -> Option<Error> {
        self.failed.lock().ok().and_then(|f| f.clone())
    }

    /// Makes every commit made so far durable. After a failed fdatasync the
    /// kernel may have dropped the dirty pages, and a retry can report success
    /// without writing them; later frames sit behind the ones that may be lost
    /// (recovery stops at the first bad frame), so from then on nothing is
    /// called durable.
    fn sync(&self, wal: &mut WalSync, store: &Store) -> Result<()> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        // Read before syncing: every commit counted here, and every op `store`
        // can see, wrote its frames before, so the sync covers them.
        let upto = self.committed.load(Ordering::SeqCst);
        if self.durable.load(Ordering::SeqCst) >= upto {
            return Ok(());
        }
        let seq = max_own_seq(store)?;
        match wal.sync() {
            Ok(()) => {
                self.syncs.fetch_add(1, Ordering::SeqCst);
                self.durable.fetch_max(upto, Ordering::SeqCst);
                self.durable_seq.fetch_max(seq, Ordering::SeqCst);
                Ok(())
            }
            Err(e) => {
                let err = Error::new(
                    ErrorKind::Io,
                    format!(
                        "the disk reported an error making committed writes durable: {e}; \
                         they may be lost if the machine crashes"
                    ),
                )
                .hint("check the disk (dmesg), then run `bd doctor`");
                if let Ok(mut f) = self.failed.lock() {
                    *f = Some(err.clone());
                }
                Err(err)
            }
        }
    }
}

/// Makes the engine's commits durable from another thread (the daemon's
/// syncer), so the writer can commit the next group during the fdatasync.
pub struct Syncer {
    wal: WalSync,
    state: Arc<Durability>,
    /// Its own connection, to see what is committed and append the op file.
    store: Store,
    paths: BeadsPaths,
    /// Told after each sync, when a [`Checkpointer`] runs.
    checkpointer: Option<std::sync::mpsc::Sender<()>>,
}

/// The write-ahead log's size past which the [`Checkpointer`] copies it
/// into the database file.
const CHECKPOINT_AT_BYTES: u64 = 16 << 20;

/// Copies the write-ahead log into the database file on a thread of its
/// own (the daemon's), so the writer never does: SQLite's automatic
/// checkpoint ran inside the commit that crossed 1,000 pages, fsyncs
/// included, and a surge of large batches crossed it on nearly every
/// commit (measured: 11% of the writer's time). A passive checkpoint never
/// blocks the writer; the log restarts from its beginning once a
/// checkpoint has copied all of it.
pub struct Checkpointer {
    store: Store,
    wal: PathBuf,
}

impl Checkpointer {
    /// Checkpoints whenever the syncer reports a sync and the log has grown
    /// past [`CHECKPOINT_AT_BYTES`], until the syncer is gone.
    pub fn run(self, nudges: std::sync::mpsc::Receiver<()>) {
        while nudges.recv().is_ok() {
            while nudges.try_recv().is_ok() {}
            let big = std::fs::metadata(&self.wal).is_ok_and(|m| m.len() > CHECKPOINT_AT_BYTES);
            if big {
                let _ = self
                    .store
                    .conn()
                    .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
            }
        }
    }
}

impl Syncer {
    /// Waits until every commit the engine made so far is on disk, then
    /// appends the op file with the ops that made durable (steps 4 and 5), so
    /// that a write answered after this is in the file. An error is final:
    /// the engine refuses further writes.
    pub fn sync(&mut self) -> Result<()> {
        self.state.sync(&mut self.wal, &self.store)?;
        self.state.append(&self.store, &self.paths);
        if let Some(c) = &self.checkpointer {
            let _ = c.send(());
        }
        Ok(())
    }
}

/// A view of an engine's durability from any thread, for status reports.
#[derive(Debug, Clone)]
pub struct DurabilityView(Arc<Durability>);

impl DurabilityView {
    /// fdatasync calls made so far.
    pub fn syncs(&self) -> u64 {
        self.0.syncs.load(Ordering::SeqCst)
    }
}

/// Decides when other clones' op files must be looked at: their directory
/// signature changed since the last catch-up, or a few seconds passed (held
/// ops may have become due). Cheap (a stat per file), and shareable: the
/// daemon's connections ask it before queueing a catch-up for the writer.
#[derive(Clone, Default)]
pub struct CatchUpGate {
    inner: Arc<Mutex<GateState>>,
}

/// The op directory's watch, and its signature when last caught up with.
type GateState = (OpDirWatch, Option<(DirSignature, Instant)>);

impl CatchUpGate {
    /// The current signature if a catch-up is due, `None` if nothing changed.
    pub fn due(&self, paths: &BeadsPaths, replica: &str) -> Result<Option<DirSignature>> {
        let mut guard = self
            .inner
            .lock()
            .map_err(|_| Error::internal("op directory watch poisoned"))?;
        let (watch, seen) = &mut *guard;
        let sig = watch.signature(paths, replica)?;
        let fresh = seen
            .as_ref()
            .is_some_and(|(s, at)| *s == sig && at.elapsed() < exchange::RECHECK_EVERY);
        Ok((!fresh).then_some(sig))
    }

    /// Records that the files with signature `sig` were caught up with.
    pub fn done(&self, sig: DirSignature) {
        if let Ok(mut guard) = self.inner.lock() {
            guard.1 = Some((sig, Instant::now()));
        }
    }
}

/// The post-commit hook: this replica's ops of each durable commit, in order.
pub type PostCommit = Box<dyn FnMut(&[Op]) + Send>;

/// Owns the tracker's writing connection and runs every write.
pub struct Engine {
    store: Store,
    paths: BeadsPaths,
    clock: Arc<dyn Clock>,
    mode: &'static str,
    gate: CatchUpGate,
    wal: WalSync,
    state: Arc<Durability>,
    /// This replica's last durable op this engine handled (op file, hook).
    appended: i64,
    snapshot: SnapshotPolicy,
    /// When the last commit the snapshot lags behind was made (`None`: the
    /// snapshot is current, or its rewrite was given up until the next write).
    last_write: Option<Instant>,
    /// The repository's git directory: the snapshot is not rewritten while
    /// git rebases or merges there. Found when first needed (finding it opens
    /// the repository: a cost a short-lived direct process should not pay).
    git_dir: std::sync::OnceLock<Option<PathBuf>>,
    hook: Option<(PostCommit, i64)>,
    /// Lapsed claims made on other clones: takeable here, but theirs to
    /// return to open (see [`Engine::expire_claims`]).
    foreign_lapsed: std::collections::BTreeSet<String>,
}

impl Engine {
    /// Opens the tracker at `paths`. `mode` names how requests reach it
    /// (`direct` or `daemon`), for `bd info`.
    pub fn open(
        paths: BeadsPaths,
        clock: Arc<dyn Clock>,
        mode: &'static str,
        snapshot: SnapshotPolicy,
    ) -> Result<Engine> {
        let store = Store::open(&paths.db)?;
        // The engine's sync (step 4) is the durability point; a commit only
        // writes its WAL frames.
        store.defer_commit_sync()?;
        Ok(Engine {
            wal: WalSync::new(&paths.db),
            git_dir: std::sync::OnceLock::new(),
            store,
            paths,
            clock,
            mode,
            gate: CatchUpGate::default(),
            state: Arc::default(),
            appended: 0,
            snapshot,
            last_write: None,
            hook: None,
            foreign_lapsed: Default::default(),
        })
    }

    /// The tracker's files.
    pub fn paths(&self) -> &BeadsPaths {
        &self.paths
    }

    /// This replica's id.
    pub fn replica(&self) -> &str {
        self.store.replica()
    }

    /// The writing connection (tests and benchmarks inspect it).
    pub fn store(&mut self) -> &mut Store {
        &mut self.store
    }

    /// The gate that decides when a catch-up is due, for sharing.
    pub fn gate(&self) -> CatchUpGate {
        self.gate.clone()
    }

    /// A handle that makes this engine's commits durable from another thread.
    pub fn syncer(&self) -> Result<Syncer> {
        Ok(Syncer {
            wal: WalSync::new(&self.paths.db),
            state: self.state.clone(),
            store: Store::open(&self.paths.db)?,
            paths: self.paths.clone(),
            checkpointer: None,
        })
    }

    /// Hands checkpoints to a [`Checkpointer`] told by `syncer` after each
    /// sync: this engine's connection no longer checkpoints by itself (a
    /// short-lived process keeps SQLite's automatic checkpoint, and the
    /// checkpoint its last connection makes on closing).
    pub fn checkpoint_elsewhere(&mut self, syncer: &mut Syncer) -> Result<(Checkpointer, std::sync::mpsc::Receiver<()>)> {
        self.store.conn().pragma_update(None, "wal_autocheckpoint", 0)?;
        // A log that grew during a surge is cut back when it restarts.
        self.store.conn().query_row("PRAGMA journal_size_limit = 67108864", [], |_| Ok(()))?;
        let (tx, rx) = std::sync::mpsc::channel();
        syncer.checkpointer = Some(tx);
        let mut wal = self.paths.db.as_os_str().to_owned();
        wal.push("-wal");
        Ok((
            Checkpointer {
                store: Store::open(&self.paths.db)?,
                wal: wal.into(),
            },
            rx,
        ))
    }

    /// A view of this engine's durability from any thread.
    pub fn durability(&self) -> DurabilityView {
        DurabilityView(self.state.clone())
    }

    /// Hands every later durable commit's own ops to `hook`, in commit order
    /// (where the relay's outbox attaches).
    pub fn on_commit(&mut self, hook: PostCommit) -> Result<()> {
        let from = max_own_seq(&self.store)?;
        self.hook = Some((hook, from));
        Ok(())
    }


    /// Runs any request for `actor`: a write as a group of one (see [`Engine::run`]),
    /// anything else through [`read`] on the engine's connection.
    pub fn execute(
        &mut self,
        actor: &str,
        request_id: Option<&str>,
        deadline_ms: Option<u64>,
        req: Request,
    ) -> Result<Response> {
        check_actor(actor)?;
        if let Request::Sync(opts) = req {
            // Its flushes and queries are requests to this same engine.
            let paths = self.paths.clone();
            return crate::gitsync::sync(&mut |r| self.execute(actor, None, None, r), &paths, &opts)
                .map(Response::Sync);
        }
        self.catch_up_if_due()?;
        if !req.is_write() {
            let ctx = Context {
                actor,
                clock: self.clock.as_ref(),
                paths: &self.paths,
                mode: self.mode,
                request_id: None,
                deadline_ms,
                fences: &[],
            };
            return read(&mut self.store, &ctx, req)?.into_response();
        }
        let item = Item {
            actor: actor.to_string(),
            request: req,
            deadline_ms,
            request_id: request_id.map(str::to_string),
            fences: Vec::new(),
        };
        self.run(vec![item])?
            .pop()
            .unwrap_or_else(|| Err(Error::internal("a group of one gave no answer")))
    }

    /// Runs a group of writes to the end: catch-up, commit, durability point,
    /// op-file append, hook. Each item gets its own answer; the outer `Err`
    /// means nothing of the group can be counted on.
    pub fn run(&mut self, items: Vec<Item>) -> Result<Vec<Result<Response>>> {
        self.catch_up_if_due()?;
        let results = self.commit(items)?;
        self.settle()?;
        Ok(results)
    }

    /// Applies other clones' ops if their files changed since the last look.
    pub fn catch_up_if_due(&mut self) -> Result<Option<IngestReport>> {
        match self.gate.due(&self.paths, self.store.replica())? {
            Some(sig) => {
                let report = self.catch_up()?;
                self.gate.done(sig);
                Ok(report)
            }
            None => Ok(None),
        }
    }

    /// Applies ops that other clones delivered into `.beads/ops` (a `git pull`,
    /// `checkout` or `merge`). Costs a tail read per foreign op file when there
    /// is nothing new; `None` then.
    pub fn catch_up(&mut self) -> Result<Option<IngestReport>> {
        let news = exchange::has_news(
            self.store.conn(),
            &self.paths,
            self.store.replica(),
            self.clock.now_ms(),
            DEFAULT_MAX_SKEW_MS,
        )?;
        if !news {
            return Ok(None);
        }
        let paths = &self.paths;
        let report = self.store.write(self.clock.as_ref(), |tx| {
            exchange::ingest(tx, paths, DEFAULT_MAX_SKEW_MS)
        })?;
        self.committed();
        Ok(Some(report))
    }

    /// Keeps a relay batch that was refused (see `daemon::relay`): never
    /// applied, listed by `bd conflicts` until dropped; [`QUARANTINE_CAP`]
    /// at most (beyond, refused with kind `conflict`).
    pub fn quarantine(&mut self, replica: &str, issue: &str, reason: &str, payload: &str) -> Result<()> {
        let now = self.clock.now_ms() as i64;
        let kept: i64 = crate::storage::sqlite::cached_row(
            self.store.conn(),
            "SELECT COUNT(*) FROM quarantine",
            [],
            |r| r.get(0),
        )?;
        if kept >= QUARANTINE_CAP {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("quarantine holds {kept} batches already; this one was not kept"),
            )
            .hint("`bd conflicts` lists them; `bd resolve ID --field quarantine --value drop` forgets one"));
        }
        self.store.write(self.clock.as_ref(), |tx| {
            tx.conn()
                .prepare_cached(
                    "INSERT INTO quarantine(received_ms, replica, issue_id, reason, payload)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(rusqlite::params![now, replica, issue, reason, payload])?;
            Ok(())
        })?;
        self.committed();
        self.settle()
    }

    /// Claims with a time limit, made on this clone, whose holders let it run
    /// out: each issue is unassigned and reopened with a comment saying whose
    /// claim lapsed (bd's own write, actor `bd`). Runs before every group (so
    /// a write never acts on a claim that has lapsed) and, in the daemon, when
    /// the next claim is due. Costs one indexed lookup when none is due.
    /// Not durable yet, like [`Engine::commit`].
    pub fn expire_claims(&mut self) -> Result<Vec<String>> {
        let now = self.clock.now_ms();
        let due = self.claims_by_expiry(Some(now))?;
        if due.iter().all(|(id, _)| self.foreign_lapsed.contains(id)) {
            return Ok(Vec::new());
        }
        let (clock, paths, mode) = (self.clock.as_ref(), &self.paths, self.mode);
        let ctx = Context {
            actor: service::BD_ACTOR,
            clock,
            paths,
            mode,
            request_id: None,
            deadline_ms: None,
            fences: &[],
        };
        let expired = self.store.write(clock, |tx| service::expire_claims(tx, &ctx, now))?;
        if !expired.is_empty() {
            self.committed();
        }
        self.foreign_lapsed = due
            .into_iter()
            .map(|(id, _)| id)
            .filter(|id| !expired.contains(id))
            .collect();
        Ok(expired)
    }

    /// How long until [`Engine::expire_claims`] has work, if it will: the
    /// earliest claim expiry not yet acted on.
    pub fn claims_due_in(&mut self) -> Result<Option<Duration>> {
        let now = self.clock.now_ms();
        Ok(self
            .claims_by_expiry(None)?
            .into_iter()
            .find(|(id, _)| !self.foreign_lapsed.contains(id))
            .map(|(_, at)| Duration::from_millis((at.max(0) as u64).saturating_sub(now))))
    }

    /// Issues with a claim expiry (up to `until`, ms), earliest first.
    fn claims_by_expiry(&self, until: Option<u64>) -> Result<Vec<(String, i64)>> {
        let mut stmt = self.store.conn().prepare_cached(
            "SELECT id, claim_expires_ms FROM issues INDEXED BY issues_claim_expiry
             WHERE claim_expires_ms IS NOT NULL AND claim_expires_ms <= ?1
             ORDER BY claim_expires_ms, id",
        )?;
        let until = until.map_or(i64::MAX, |u| u as i64);
        let rows = stmt
            .query_map([until], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Steps 2 and 3: checks and commits a group of writes. Not durable yet:
    /// follow with [`Engine::settle`] or a [`Syncer`] before answering.
    pub fn commit(&mut self, items: Vec<Item>) -> Result<Vec<Result<Response>>> {
        if let Some(e) = self.state.failure() {
            return Err(e);
        }
        self.expire_claims()?;
        self.after_durable();
        // Waiting for another process's write lock counts against the
        // deadline: wait until the latest deadline in the group at most.
        let busy = items
            .iter()
            .map(|i| i.deadline_ms)
            .try_fold(0u64, |latest, d| d.map(|d| latest.max(d)))
            .map_or(crate::storage::sqlite::BUSY_TIMEOUT, |d| {
                Duration::from_millis(d.saturating_sub(self.clock.now_ms()).max(1))
                    .min(crate::storage::sqlite::BUSY_TIMEOUT)
            });
        self.store.conn().busy_timeout(busy)?;
        let (clock, paths, mode) = (self.clock.as_ref(), &self.paths, self.mode);
        let results = self.store.write_group(clock, items, |tx, item| {
            let Item {
                actor,
                request,
                deadline_ms,
                request_id,
                fences,
            } = item;
            check_actor(&actor)?;
            if !request.is_write() {
                return Err(Error::internal("only write requests can be grouped"));
            }
            let ctx = Context {
                actor: &actor,
                clock,
                paths,
                mode,
                request_id: request_id.as_deref(),
                deadline_ms,
                fences: &fences,
            };
            service::apply(tx, &ctx, request)
        });
        let results = results?;
        if results.iter().any(|r| r.is_ok()) {
            self.committed();
        }
        fault::point("after-commit");
        Ok(results)
    }

    fn committed(&mut self) {
        self.state.committed.fetch_add(1, Ordering::SeqCst);
        self.last_write = Some(Instant::now());
    }

    /// Steps 4 to 6: makes every commit durable, then appends the op file and
    /// runs the hook. An error means a commit may not be durable: nothing
    /// committed since the last successful settle may be reported as done.
    pub fn settle(&mut self) -> Result<()> {
        self.state.sync(&mut self.wal, &self.store)?;
        fault::point("after-sync");
        self.after_durable();
        fault::point("after-append");
        Ok(())
    }

    /// Steps 5 and 6 for what a [`Syncer`] (or [`Engine::settle`]) made
    /// durable: the op file is appended up to the last op known durable, never
    /// past it, and the hook gets the same ops. The daemon's writer calls it
    /// when its syncer reports a sync.
    pub fn after_durable(&mut self) {
        let seq = self.state.durable_seq.load(Ordering::SeqCst);
        if seq <= self.appended {
            return;
        }
        self.state.append(&self.store, &self.paths);
        if let Some((hook, from)) = self.hook.as_mut()
            && let Ok(ops) = own_ops_between(&self.store, *from, seq)
            && !ops.is_empty()
        {
            *from = seq;
            hook(&ops);
        }
        self.appended = seq;
    }

    /// How long until [`Engine::idle`] has work, if it will.
    pub fn idle_in(&self) -> Option<Duration> {
        match (self.snapshot, self.last_write) {
            (SnapshotPolicy::AfterIdle(after), Some(at)) => Some(after.saturating_sub(at.elapsed())),
            _ => None,
        }
    }

    /// Nothing arrived for a while (or the daemon is stopping): make everything
    /// durable, append the op file and rewrite the snapshot. Problems are
    /// returned for the log; nothing is lost by them. Whatever happens, the
    /// next attempt waits for the next write (or `bd flush`): an idle engine
    /// never retries in a loop.
    pub fn idle(&mut self) -> Result<()> {
        if self.last_write.take().is_none() {
            return Ok(());
        }
        // Not while git rebases or merges: a file regenerated under it makes git
        // refuse to go on. The next write or command flushes.
        if self
            .git_dir
            .get_or_init(|| crate::gitsync::git_dir(&self.paths))
            .as_deref()
            .is_some_and(crate::gitsync::operation_in_progress)
        {
            return Ok(());
        }
        // The snapshot must never show a write the database could still lose.
        self.settle()?;
        crate::jsonl::write_snapshot(&mut self.store, &self.paths)?;
        Ok(())
    }
}

/// The most refused relay batches kept: a member's key used to flood would
/// otherwise grow the table without end.
pub const QUARANTINE_CAP: i64 = 1_000;

/// This replica's last op's `seq` in `store` (0 before any).
fn max_own_seq(store: &Store) -> Result<i64> {
    crate::storage::sqlite::cached_row(
        store.conn(),
        "SELECT COALESCE(MAX(seq), 0) FROM ops WHERE replica = ?1",
        [store.replica()],
        |r| r.get(0),
    )
}

/// This replica's ops with `seq` past `from`, in order.
pub fn own_ops_after(store: &Store, from: i64) -> Result<Vec<Op>> {
    own_ops_between(store, from, i64::MAX)
}

/// This replica's ops with `seq` in `(from, upto]`, in order.
fn own_ops_between(store: &Store, from: i64, upto: i64) -> Result<Vec<Op>> {
    let mut stmt = store.conn().prepare_cached(
        "SELECT body FROM ops WHERE replica = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq",
    )?;
    let bodies = stmt.query_map(rusqlite::params![store.replica(), from, upto], |r| {
        r.get::<_, String>(0)
    })?;
    let mut ops = Vec::new();
    for body in bodies {
        ops.push(crate::storage::sqlite::parse_stored_op(&body?)?);
    }
    Ok(ops)
}

/// The own ops past `published` (the relay's watermark): how many, and the
/// wall clock of the oldest.
pub fn outbox(store: &Store, published: i64) -> Result<(u64, Option<u64>)> {
    let depth = (max_own_seq(store)? - published).max(0) as u64;
    let oldest = own_ops_between(store, published, published + 1)?
        .first()
        .map(|op| op.hlc.wall);
    Ok((depth, oldest))
}
