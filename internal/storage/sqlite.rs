//! The SQLite store: op table plus materialised state, one write transaction at a
//! time (`BEGIN IMMEDIATE`), WAL readers alongside.
//!
//! Invariants:
//! - [`WriteTx::record`] stamps an op (HLC, per-replica seq), seals it, stores it and
//!   folds it into the issue's [`IssueDoc`]; [`WriteTx::flush`] rewrites the touched
//!   issues' rows from their docs. Both happen inside one SQLite transaction, so the
//!   rows are always the fold of the stored ops.
//! - `issues.blocked` is 1 iff the issue has a `blocks` dependency on an existing,
//!   non-closed issue, or a `parent-child` dependency on a parent that is blocked or
//!   whose status is neither open nor in_progress. It is maintained incrementally:
//!   flushing an issue re-evaluates it and, transitively, its dependents.

use super::BeadsPaths;
use super::collisions;
use crate::clock::Clock;
use crate::merge::{IssueDoc, Materialised};
use crate::model::{Hlc, OF_LEN, Op, OpKind};
use crate::{Error, ErrorKind, Result};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::time::Duration;

/// Schema version written to `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 4;

const SCHEMA_V1: &str = include_str!("schema.sql");
const SCHEMA_V2: &str = include_str!("schema_v2.sql");
const SCHEMA_V3: &str = include_str!("schema_v3.sql");
const SCHEMA_V4: &str = include_str!("schema_v4.sql");

/// How long a write's request id is remembered (24 hours): a request sent
/// again with the same id within this window gets the first answer back
/// instead of being applied again. Longer than any deadline a command accepts.
pub const REQUEST_ID_WINDOW_MS: u64 = 24 * 60 * 60 * 1000;

/// The field of a `set` op that approves applying ops held for clock skew
/// now: its value is `{"apply": [op ids]}`. Every replica that holds (or
/// later receives) a listed op applies it at once, so settling a
/// `clock_skew` record on one clone settles it on all of them.
pub const CLOCK_SKEW_FIELD: &str = "clock_skew";

/// Indexes a bulk load into an empty database drops first and builds after (one
/// sort each, instead of a random insert per row); none is needed while loading.
const BULK_INDEXES: &[&str] = &[
    "ops_by_issue",
    "ops_by_replica",
    "issues_ready",
    "issues_not_closed",
    "issues_by_status",
];

/// The `CREATE INDEX` statement for `name`, from the schema itself.
fn index_sql(name: &str) -> Option<String> {
    let head = format!("CREATE INDEX {name} ");
    SCHEMA_V1
        .split(';')
        .map(|stmt| {
            stmt.lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .find(|stmt| stmt.trim_start().starts_with(&head))
}

/// Brings a database from `from` up to [`SCHEMA_VERSION`] inside `tx`.
fn migrate(tx: &Connection, from: i64) -> Result<()> {
    if from < 2 {
        tx.execute_batch(SCHEMA_V2)?;
    }
    if from < 3 {
        tx.execute_batch(SCHEMA_V3)?;
    }
    if from < 4 {
        tx.execute_batch(SCHEMA_V4)?;
        super::collisions::split_merged_creates(tx)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    Ok(())
}

/// How long a writer waits for another writer's lock before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(15);

/// An open tracker database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    replica: String,
    /// What this process last wrote to its op file (see `jsonl::flush_own_ops`).
    pub(crate) op_file: std::cell::Cell<Option<OpFileMark>>,
    /// Folded docs as of this connection's last commit (see [`DocCache`]).
    docs: DocCache,
    /// The database file's (device, inode) when opened: a write finding
    /// another file at the path (`bd rebuild` swapped one in) is refused
    /// rather than made into a file nobody will read again.
    identity: Option<(u64, u64)>,
}

fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The file beside the database that remembers its replica id, so a rebuild
/// of a damaged database keeps it (`beads.db.replica`: git ignores `*.db.*`).
pub fn replica_file(db: &Path) -> std::path::PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".replica");
    p.into()
}

/// The replica id remembered beside the database, if any.
pub fn remembered_replica(db: &Path) -> Option<String> {
    let id = std::fs::read_to_string(replica_file(db)).ok()?;
    let id = id.trim();
    (!id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| id.to_string())
}

/// Writes `replica` to [`replica_file`] unless it already says so.
pub fn remember_replica(db: &Path, replica: &str) {
    let path = replica_file(db);
    if remembered_replica(db).as_deref() != Some(replica) {
        let _ = crate::jsonl::atomic_write(&path, format!("{replica}\n").as_bytes());
    }
}

/// Issues' folded ops, kept between write transactions of one long-lived
/// connection (the daemon's writer, a library client), so a write to an issue
/// with a long history does not read and fold all of it again.
///
/// A doc is taken out while a transaction uses it and put back only when that
/// transaction commits, so the cache never holds the effect of a write that was
/// rolled back. Another connection's commit (a direct-mode writer beside the
/// daemon, an import) changes SQLite's `data_version`, and the whole cache is
/// dropped at the next transaction.
#[derive(Debug, Default)]
struct DocCache {
    docs: HashMap<String, IssueDoc>,
    /// `PRAGMA data_version` when `docs` was last known to match the database.
    data_version: Option<i64>,
}

/// The most docs kept between transactions; past it the cache starts over.
const MAX_CACHED_DOCS: usize = 4096;

/// The op file as this process last left it: while its identity and length are
/// unchanged, its last line is the op with `last_seq`, so appending needs no read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OpFileMark {
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
    /// Change time (s, ns): a file made anew at the same path can reuse a freed
    /// inode number and have the same length; it cannot have the same ctime.
    pub ctime: (i64, i64),
    pub last_seq: u64,
}

fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // SQLite's default is kept on purpose: the last connection to close checkpoints
    // and removes the WAL. Turning that off (NO_CKPT_ON_CLOSE) saved one fsync per
    // write but made every later process rebuild the WAL index by reading the whole
    // WAL and re-checkpoint it (measured: `bd create` 4 ms → 55 ms after an import).
    // The write path uses ~25 distinct statements; the default cache of 16 thrashes.
    conn.set_prepared_statement_cache_capacity(64);
    // Query-planner stability guarantee. Without it SQLite (3.50+) marks a bound
    // parameter in an `x = ?` term as "re-plan if this value changes", and
    // rusqlite's statement cache clears the bindings of every statement it takes
    // back, which SQLite treats as such a change: each cached statement was
    // compiled again on every use (measured: ~45% of a create's CPU). Our plans
    // never depend on parameter values (the hot queries name their index).
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    conn.execute_batch(
        "PRAGMA foreign_keys = ON;
         PRAGMA synchronous = FULL;
         PRAGMA temp_store = MEMORY;
         PRAGMA cache_size = -32768;",
    )?;
    Ok(())
}

/// Makes a database's write-ahead log durable: `fdatasync` on its `-wal` file.
///
/// Used with [`Store::defer_commit_sync`]. Every commit appends its frames to the
/// one log in order, so a sync covers every commit made before it started. The
/// file handle is reopened if the log was replaced (another inode at the path); a
/// missing log means the last connection checkpointed it into the synced database
/// file and removed it, so there is nothing left to make durable.
#[derive(Debug)]
pub struct WalSync {
    path: std::path::PathBuf,
    file: Option<(std::fs::File, u64)>,
}

impl WalSync {
    /// For the database at `db`.
    pub fn new(db: &Path) -> WalSync {
        let mut path = db.as_os_str().to_owned();
        path.push("-wal");
        WalSync {
            path: path.into(),
            file: None,
        }
    }

    /// Waits until every commit made so far is on disk.
    pub fn sync(&mut self) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let ino = match std::fs::metadata(&self.path) {
            Ok(m) => m.ino(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.file = None;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if self.file.as_ref().map(|(_, i)| *i) != Some(ino) {
            // Read-only is enough: fdatasync works on any descriptor of the file.
            // SQLite keeps no locks on the log itself, so opening and closing our
            // own descriptor cannot release any of its POSIX locks.
            match std::fs::File::open(&self.path) {
                Ok(f) => self.file = Some((f, ino)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.file = None;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        match &self.file {
            Some((f, _)) => f.sync_data(),
            None => Ok(()),
        }
    }
}

fn user_version(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
}

impl Store {
    /// Creates a new database at `paths.db` for replica `replica`.
    ///
    /// Fails with [`ErrorKind::Exists`] if a database with a schema is already there.
    pub fn create(paths: &BeadsPaths, replica: &str) -> Result<Store> {
        let conn = Connection::open(&paths.db)?;
        configure(&conn)?;
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
        let mut conn = conn;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if user_version(&tx)? != 0 {
            return Err(Error::new(
                ErrorKind::Exists,
                format!("{} already holds a bd database", paths.db.display()),
            ));
        }
        tx.execute_batch(SCHEMA_V1)?;
        tx.execute(
            "INSERT INTO meta(key, value) VALUES ('replica', ?1)",
            params![replica],
        )?;
        migrate(&tx, 1)?;
        tx.commit()?;
        remember_replica(&paths.db, replica);
        Ok(Store {
            conn,
            replica: replica.to_string(),
            op_file: Default::default(),
            docs: DocCache::default(),
            identity: file_identity(&paths.db),
        })
    }

    /// Opens an existing database, checking its schema version.
    pub fn open(db: &Path) -> Result<Store> {
        if !db.is_file() {
            return Err(Error::new(
                ErrorKind::NotInitialized,
                format!("no bd database at {}", db.display()),
            )
            .hint("run `bd init` in your repository first"));
        }
        match Self::open_with(db, false) {
            // With the disk full, or no right to write in `.beads/`, SQLite
            // cannot create or grow the shared-memory index file (`-shm`)
            // that every WAL connection maps: even reads failed ("disk I/O
            // error", "attempt to write a readonly database"). A connection in
            // exclusive locking mode keeps that index in its own memory, so
            // reads go on working (it holds the database's lock while it
            // lives: writers wait).
            Err(e) if e.kind == ErrorKind::Io && (disk_full(db).is_some() || !writable(db)) => {
                Self::open_with(db, true).map_err(|e| explain_io(e, db))
            }
            other => other.map_err(|e| explain_io(e, db)),
        }
    }

    fn open_with(db: &Path, exclusive: bool) -> Result<Store> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(db, flags).map_err(|e| {
            let err = Error::from(e);
            Error {
                message: format!("{}: {}", db.display(), err.message),
                ..err
            }
        })?;
        if exclusive {
            conn.execute_batch("PRAGMA locking_mode = EXCLUSIVE")?;
        }
        configure(&conn)?;
        let version = user_version(&conn)?;
        if version > SCHEMA_VERSION {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "database schema v{version} is newer than this bd understands (v{SCHEMA_VERSION})"
                ),
            )
            .hint("upgrade bd (`cargo install --path .` in the bd repository)"));
        }
        if version < 1 {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!("{} is not a bd database (schema v{version})", db.display()),
            )
            .hint("move it aside and run `bd init`"));
        }
        if version < SCHEMA_VERSION {
            // Upgrades are additive; the write lock makes a racing process wait and
            // then see the new version (and do nothing).
            let tx = Tx::begin(&conn, "BEGIN IMMEDIATE")?;
            let now = user_version(&tx)?;
            if now < SCHEMA_VERSION {
                migrate(&tx, now)?;
            }
            tx.commit()?;
        }
        let replica: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'replica'", [], |r| {
                r.get(0)
            })
            .optional()?;
        let replica = replica.ok_or_else(|| {
            Error::new(ErrorKind::Corrupt, "database has no replica id")
                .hint("`bd rebuild` makes a new database from the op files")
        })?;
        if !replica_file(db).exists() {
            remember_replica(db, &replica);
        }
        Ok(Store {
            conn,
            replica,
            op_file: Default::default(),
            docs: DocCache::default(),
            identity: file_identity(db),
        })
    }

    /// Whether the database file at this connection's path is no longer the
    /// one it opened (`bd rebuild` replaced it).
    pub fn was_replaced(&self) -> bool {
        match (self.identity, self.conn.path()) {
            (Some(id), Some(path)) => file_identity(Path::new(path)) != Some(id),
            _ => false,
        }
    }

    /// This replica's id.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// The connection, for read queries outside a transaction.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Stops this connection's commits from waiting for the disk
    /// (`synchronous = NORMAL`): a commit writes its WAL frames and returns. The
    /// caller takes over durability and must make the log durable with a
    /// [`WalSync`] before it tells anyone a write happened. The daemon's writer
    /// does this so it can commit the next group while the last one's fdatasync
    /// runs on another thread. Checkpoints still sync the log before copying it.
    pub fn defer_commit_sync(&self) -> Result<()> {
        self.conn.execute_batch("PRAGMA synchronous = NORMAL")?;
        Ok(())
    }

    /// Runs `f` in one read transaction (a consistent snapshot).
    pub fn read<T>(&mut self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let tx = Tx::begin(&self.conn, "BEGIN")?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Runs `f` in one write transaction; commits if it returns `Ok`, else rolls back.
    pub fn write<T>(
        &mut self,
        clock: &dyn Clock,
        f: impl FnOnce(&mut WriteTx<'_>) -> Result<T>,
    ) -> Result<T> {
        self.in_write_tx(clock, true, f)
    }

    /// Runs `f` in a write transaction that is always rolled back (dry runs).
    pub fn trial<T>(
        &mut self,
        clock: &dyn Clock,
        f: impl FnOnce(&mut WriteTx<'_>) -> Result<T>,
    ) -> Result<T> {
        self.in_write_tx(clock, false, f)
    }

    /// Group commit: runs `f` on each item in its own savepoint inside ONE
    /// transaction with one commit (one fsync for the whole group). An item whose
    /// `f` fails is rolled back alone; its neighbours are unaffected. Returns each
    /// item's result, or an error if the transaction itself could not commit (then
    /// nothing of the group is stored).
    ///
    /// The group first runs without savepoints: most refusals (bad input, a lost
    /// claim, an unknown id) happen before anything is written and need no
    /// rollback, and a savepoint makes SQLite copy every page it touches. Only if
    /// a request fails after writing is the whole group rolled back and run again,
    /// each request in its own savepoint.
    pub fn write_group<I: Clone, T>(
        &mut self,
        clock: &dyn Clock,
        items: Vec<I>,
        mut f: impl FnMut(&mut WriteTx<'_>, I) -> Result<T>,
    ) -> Result<Vec<Result<T>>> {
        if items.len() == 1 {
            // A group of one needs no savepoint: its transaction is rolled back
            // whole if it fails. (A savepoint costs ~15% of a small write: SQLite
            // copies every page it touches into the statement journal.)
            let item = items.into_iter().next().expect("one item");
            let mut item_failed = false;
            let out = self.write(clock, |tx| f(tx, item).inspect_err(|_| item_failed = true));
            return match out {
                Ok(v) => Ok(vec![Ok(v)]),
                Err(e) if item_failed => Ok(vec![Err(e)]),
                Err(e) => Err(e), // the commit itself failed, as for a larger group
            };
        }
        let mut needs_savepoints = false;
        let unguarded = self.write(clock, |tx| {
            let mut out = Vec::with_capacity(items.len());
            for item in items.iter().cloned() {
                match tx.attempt_unguarded(|tx| f(tx, item))? {
                    Some(result) => out.push(result),
                    None => {
                        needs_savepoints = true;
                        return Err(Error::internal(
                            "a request failed after writing; the group runs again",
                        ));
                    }
                }
            }
            Ok(out)
        });
        if !needs_savepoints {
            return unguarded;
        }
        self.write(clock, |tx| {
            Ok(items
                .into_iter()
                .map(|item| tx.attempt(|tx| f(tx, item)))
                .collect())
        })
    }

    fn in_write_tx<T>(
        &mut self,
        clock: &dyn Clock,
        commit: bool,
        f: impl FnOnce(&mut WriteTx<'_>) -> Result<T>,
    ) -> Result<T> {
        let db = self.conn.path().map(std::path::PathBuf::from);
        let explain = |e: Error| match &db {
            Some(db) => explain_io(e, db),
            None => e,
        };
        self.in_write_tx_inner(clock, commit, f).map_err(explain)
    }

    fn in_write_tx_inner<T>(
        &mut self,
        clock: &dyn Clock,
        commit: bool,
        f: impl FnOnce(&mut WriteTx<'_>) -> Result<T>,
    ) -> Result<T> {
        let tx = Tx::begin(&self.conn, "BEGIN IMMEDIATE")?;
        // A rebuild holds the write lock while it swaps the file: a writer
        // that waited for it would write into the old file, which nobody reads
        // again. Refused as "unavailable", so the caller reconnects.
        if self.was_replaced() {
            return Err(Error::new(
                ErrorKind::Unavailable,
                "the database was replaced (bd rebuild) while this connection waited",
            )
            .hint("run the command again"));
        }
        // Inside the transaction, so no other writer can commit between this
        // check and our own commit.
        let version: i64 = tx.query_row("PRAGMA data_version", [], |r| r.get(0))?;
        if self.docs.data_version != Some(version) {
            self.docs.docs.clear();
            self.docs.data_version = Some(version);
        }
        let mut dry_run_docs = HashMap::new();
        let cache = if commit {
            &mut self.docs.docs
        } else {
            &mut dry_run_docs // a dry run neither uses nor fills the cache
        };
        let mut w = WriteTx::begin(tx, &self.replica, clock, cache)?;
        let out = f(&mut w)?;
        if commit {
            w.commit()?;
        } else {
            w.flush()?; // materialise, so the caller saw real effects; dropping `w` rolls back
        }
        Ok(out)
    }

    /// Reads a `meta` value.
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        meta_get(&self.conn, key)
    }

    /// Sets a `meta` value in its own transaction.
    pub fn set_meta(&mut self, key: &str, value: &str) -> Result<()> {
        meta_set(&self.conn, key, value)
    }
}

/// Free space under which an I/O failure is taken for a full disk.
const NEARLY_FULL_BYTES: u64 = 1024 * 1024;

/// `Some(free bytes)` when the file system holding `path` has (nearly) no
/// room left for its user.
pub fn disk_full(path: &Path) -> Option<u64> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty())?;
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs writes into the struct we own; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let free = st.f_bavail as u64 * st.f_frsize as u64;
    (free < NEARLY_FULL_BYTES).then_some(free)
}

/// Whether this process may write the database file and its directory
/// (where SQLite keeps `-wal` and `-shm`).
/// The first of the database's files (the database, its directory, its
/// `-wal` and `-shm` when they exist) this process may not write.
fn unwritable(db: &Path) -> Option<std::path::PathBuf> {
    let ok = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
            // SAFETY: access(2) reads the NUL-terminated path only.
            .is_ok_and(|c| unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0)
    };
    let side = |suffix: &str| {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        std::path::PathBuf::from(p)
    };
    let dir = db
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map(Path::to_path_buf);
    [
        Some(db.to_path_buf()),
        dir,
        Some(side("-wal")),
        Some(side("-shm")),
    ]
    .into_iter()
    .flatten()
    .enumerate()
    // The database and its directory must be writable; the side files
    // only when they exist (SQLite makes them).
    .find(|(n, p)| (*n < 2 || p.exists()) && !ok(p))
    .map(|(_, p)| p)
}

fn writable(db: &Path) -> bool {
    unwritable(db).is_none()
}

/// An I/O failure of the database, said as what it is: a full disk, no right
/// to write, or at least which file.
pub fn explain_io(e: Error, db: &Path) -> Error {
    if e.kind != ErrorKind::Io {
        return e;
    }
    let dir = db.parent().unwrap_or(db);
    if let Some(free) = disk_full(db) {
        return Error::new(
            ErrorKind::Io,
            format!(
                "disk full: {} has {} KiB free ({})",
                dir.display(),
                free / 1024,
                e.message
            ),
        )
        .hint("free some space, then run the command again; reading works meanwhile");
    }
    if let Some(path) = unwritable(db) {
        return Error::new(
            ErrorKind::Io,
            format!(
                "permission denied: cannot write {} ({})",
                path.display(),
                e.message
            ),
        )
        .hint("run bd as the user who owns .beads/, or give yours write access");
    }
    if e.message.contains(&db.display().to_string()) {
        return e;
    }
    Error {
        message: format!("{}: {}", db.display(), e.message),
        ..e
    }
}

/// Reads a `meta` value.
pub fn meta_get(conn: &Connection, key: &str) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row(params![key], |r| r.get(0))
        .optional()?)
}

/// Writes a `meta` value.
pub fn meta_set(conn: &Connection, key: &str, value: &str) -> Result<()> {
    conn.prepare_cached("INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value")?
        .execute(params![key, value])?;
    Ok(())
}

/// Loads and folds every stored op of `id`.
pub fn load_doc(conn: &Connection, id: &str) -> Result<IssueDoc> {
    let mut doc = IssueDoc::new(id);
    // No ORDER BY: the fold is order-independent (see merge).
    let mut stmt = conn.prepare_cached("SELECT body FROM ops WHERE issue_id = ?1")?;
    let mut rows = stmt.query(params![id])?;
    while let Some(row) = rows.next()? {
        let body: String = row.get(0)?;
        doc.apply(&parse_stored_op(&body)?);
    }
    Ok(doc)
}

/// Parses an op body from the op table.
pub fn parse_stored_op(body: &str) -> Result<Op> {
    serde_json::from_str(body).map_err(|e| {
        Error::new(
            ErrorKind::Corrupt,
            format!("unreadable op in the database: {e}"),
        )
        .hint("`bd rebuild` makes a new database from the op files")
    })
}

/// An open transaction on a connection; rolled back when dropped uncommitted.
/// BEGIN and COMMIT go through the statement cache (rusqlite's `Transaction`
/// compiles them afresh each time, a measurable share of a small write).
struct Tx<'a> {
    conn: &'a Connection,
    open: bool,
}

impl<'a> Tx<'a> {
    fn begin(conn: &'a Connection, begin: &str) -> Result<Tx<'a>> {
        conn.prepare_cached(begin)?.execute([])?;
        Ok(Tx { conn, open: true })
    }

    fn commit(mut self) -> Result<()> {
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        self.open = false;
        Ok(())
    }
}

impl std::ops::Deref for Tx<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if self.open && !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

/// Runs a cached statement that returns one row.
pub(crate) fn cached_row<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<T> {
    Ok(conn.prepare_cached(sql)?.query_row(params, f)?)
}

/// A write transaction: records ops and keeps the materialised rows in step.
pub struct WriteTx<'a> {
    tx: Tx<'a>,
    clock: &'a dyn Clock,
    replica: String,
    hlc: Hlc,
    seq: u64,
    docs: HashMap<String, IssueDoc>,
    /// Docs flushed in this transaction, put in `cache` if it commits.
    flushed: HashMap<String, IssueDoc>,
    /// The connection's docs as of its last commit (taken out while in use).
    cache: &'a mut HashMap<String, IssueDoc>,
    /// Issues that had no row when this transaction first looked (nothing to delete).
    fresh: HashSet<String>,
    touched: BTreeSet<String>,
    recorded: Vec<String>,
    /// The caller guarantees every op of an issue arrives in one contiguous run
    /// into a database that holds none of them (a rebuild): docs start empty
    /// instead of being read back.
    no_prior_ops: bool,
    /// Whether some id was used by two creates here (see [`collisions`]):
    /// until one is, flushing has no `id` notice to look for.
    collisions: bool,
}

impl<'a> WriteTx<'a> {
    fn begin(
        tx: Tx<'a>,
        replica: &str,
        clock: &'a dyn Clock,
        cache: &'a mut HashMap<String, IssueDoc>,
    ) -> Result<Self> {
        let hlc = meta_get(&tx, "hlc")?
            .and_then(|s| {
                let (w, l) = s.split_once('.')?;
                Some(Hlc {
                    wall: w.parse().ok()?,
                    logical: l.parse().ok()?,
                })
            })
            .unwrap_or_default();
        let seq: i64 = cached_row(
            &tx,
            "SELECT COALESCE(MAX(seq), 0) FROM ops WHERE replica = ?1",
            params![replica],
            |r| r.get(0),
        )?;
        let collisions = collisions::any_collision(&tx)?;
        Ok(WriteTx {
            tx,
            clock,
            replica: replica.to_string(),
            hlc,
            seq: seq as u64,
            docs: HashMap::new(),
            flushed: HashMap::new(),
            cache,
            fresh: HashSet::new(),
            touched: BTreeSet::new(),
            recorded: Vec::new(),
            no_prior_ops: false,
            collisions,
        })
    }

    /// The connection inside this transaction, for queries.
    pub fn conn(&self) -> &Connection {
        &self.tx
    }

    /// This replica's id.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Current wall time from the transaction's clock.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The folded ops of `id` (including ops recorded earlier in this transaction).
    pub fn doc(&mut self, id: &str) -> Result<&IssueDoc> {
        if !self.docs.contains_key(id) {
            let known = self.flushed.remove(id).or_else(|| self.cache.remove(id));
            let doc = if let Some(doc) = known {
                doc
            } else if self.no_prior_ops {
                IssueDoc::new(id)
            } else {
                load_doc(&self.tx, id)?
            };
            if doc.op_count() == 0 {
                self.fresh.insert(id.to_string());
            }
            self.docs.insert(id.to_string(), doc);
        }
        Ok(&self.docs[id])
    }

    /// Whether `id` names an issue that exists and is not deleted.
    pub fn is_live(&mut self, id: &str) -> Result<bool> {
        Ok(self.doc(id)?.is_live())
    }

    /// Stamps, seals and stores `op` (its hlc, seq and replica are overwritten) and
    /// folds it into the issue's doc. Returns the op id.
    ///
    /// `op.issue` names the issue as bd shows it; an op other than a create is
    /// written naming the id its create gave it and that create (`of`), so it
    /// reaches the same issue on every replica even when two creates used the
    /// id (see [`crate::merge::partition`]).
    pub fn record(&mut self, mut op: Op) -> Result<String> {
        self.hlc = self.hlc.tick(self.clock.now_ms());
        self.seq += 1;
        op.hlc = self.hlc;
        op.seq = self.seq;
        op.replica = self.replica.clone();
        // Load the doc before storing the op, so loading does not read it back.
        let home = op.issue.clone();
        let doc = self.doc(&home)?;
        let collides = match op.kind {
            OpKind::Create => doc.exists(),
            _ => {
                if let Some(wire) = doc.wire() {
                    op.issue = wire.to_string();
                }
                op.of = doc
                    .create_op_id()
                    .map(|c| c[..c.len().min(OF_LEN)].to_string());
                false
            }
        };
        let op = op.seal();
        let body = serde_json::to_string(&op)?;
        self.tx
            .prepare_cached(
                "INSERT INTO ops(op_id, issue_id, replica, seq, body) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![op.op_id, home, op.replica, op.seq as i64, body])?;
        if collides {
            self.reroute(&op.issue)?;
        } else if let Some(doc) = self.docs.get_mut(&home) {
            doc.apply(&op);
        }
        self.touched.insert(home);
        self.recorded.push(op.op_id.clone());
        self.release_approved(&op)?;
        Ok(op.op_id)
    }

    /// If `op` approves applying held ops now (see [`CLOCK_SKEW_FIELD`]),
    /// applies those held here.
    fn release_approved(&mut self, op: &Op) -> Result<()> {
        if op.kind != OpKind::Set || op.field.as_deref() != Some(CLOCK_SKEW_FIELD) {
            return Ok(());
        }
        let listed = op.value.get("apply").and_then(serde_json::Value::as_array);
        for id in listed
            .into_iter()
            .flatten()
            .filter_map(serde_json::Value::as_str)
        {
            let body: Option<String> = self
                .tx
                .prepare_cached("SELECT body FROM held_ops WHERE op_id = ?1")?
                .query_row(params![id], |r| r.get(0))
                .optional()?;
            let Some(body) = body else { continue };
            self.tx
                .prepare_cached("DELETE FROM held_ops WHERE op_id = ?1")?
                .execute(params![id])?;
            self.receive_held_now(parse_stored_op(&body)?)?;
        }
        Ok(())
    }

    /// Whether some stored op approved applying `op` now although it is
    /// stamped too far ahead (see [`CLOCK_SKEW_FIELD`]). Asked only before
    /// holding an op, which is rare.
    fn approved(&self, op: &Op) -> Result<bool> {
        let (lo, hi) = (format!("{}~", op.issue), format!("{}~~", op.issue));
        Ok(self
            .tx
            .prepare_cached(
                "SELECT 1 FROM ops WHERE (issue_id = ?1 OR (issue_id > ?2 AND issue_id < ?3))
                 AND instr(body, '\"field\":\"clock_skew\"') > 0 AND instr(body, ?4) > 0",
            )?
            .exists(params![op.issue, lo, hi, op.op_id])?)
    }

    /// Re-partitions the ops of `wire` after a second create of it (or an op
    /// of unknown home) arrived: see [`collisions::reroute`]. Every issue
    /// involved is read back from its moved ops and written afresh.
    fn reroute(&mut self, wire: &str) -> Result<()> {
        let involved = collisions::reroute(&self.tx, wire)?;
        self.collisions = self.collisions || collisions::any_collision(&self.tx)?;
        for id in involved {
            self.docs.remove(&id);
            self.flushed.remove(&id);
            self.cache.remove(&id);
            collisions::wipe_rows(&self.tx, &id)?;
            let doc = load_doc(&self.tx, &id)?;
            self.docs.insert(id.clone(), doc);
            self.fresh.insert(id.clone());
            self.touched.insert(id);
        }
        Ok(())
    }

    /// Where a foreign op goes (see [`collisions`]): `(home, reroute)`, where
    /// `reroute` says the op's id must be re-partitioned once it is stored.
    fn home_of(&mut self, op: &Op) -> Result<(String, bool)> {
        let wire = op.issue.as_str();
        let doc = self.doc(wire)?;
        let (holder, holder_replica) = (
            doc.create_op_id().map(str::to_string),
            doc.create_replica().map(str::to_string),
        );
        let at_wire = |reroute| Ok((wire.to_string(), reroute));
        match (&op.kind, &op.of, holder) {
            // The first create of an id, or an op for it before its create.
            (OpKind::Create, _, None) => at_wire(false),
            (OpKind::Create, _, Some(_)) => at_wire(true),
            (_, Some(of), Some(h)) if h.starts_with(of.as_str()) => at_wire(false),
            (_, Some(of), _) => match collisions::home_of_create(&self.tx, wire, of)? {
                Some(home) => Ok((home, false)),
                // Its create has not arrived: it waits at the id, and moves
                // if that create turns out to be displaced.
                None => at_wire(false),
            },
            // Written before ops named their create: its replica's own
            // create, or the one holding the id.
            (_, None, _) if holder_replica.as_deref() == Some(op.replica.as_str()) => {
                at_wire(false)
            }
            (_, None, _) => {
                let collided = self.collisions && collisions::has_collision(&self.tx, wire)?;
                at_wire(collided)
            }
        }
    }

    /// For a rebuild into an empty database: see the `no_prior_ops` field. The
    /// caller must flush only between issues' runs of ops.
    pub fn assume_no_prior_ops(&mut self) {
        self.no_prior_ops = true;
    }

    /// Runs a bulk load with the [`BULK_INDEXES`] dropped, then builds them.
    pub fn without_bulk_indexes<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let mut create = Vec::new();
        for name in BULK_INDEXES {
            let sql = index_sql(name)
                .ok_or_else(|| Error::internal(format!("index {name} is not in the schema")))?;
            self.tx.execute_batch(&format!("DROP INDEX {name}"))?;
            create.push(sql);
        }
        let out = f(self)?;
        self.flush()?;
        for sql in create {
            self.tx.execute_batch(&sql)?;
        }
        if self.no_prior_ops {
            recompute_all_blocked(&self.tx)?;
        }
        Ok(out)
    }

    /// Stores and folds an op recorded elsewhere (another clone's op file, or this
    /// replica's own file when rebuilding). Idempotent: an op already stored is a
    /// `Duplicate`. An op whose clock is more than `max_skew_ms` ahead of local time
    /// is `Held` (kept in `held_ops`, not applied) until local time catches up.
    /// Fails with [`ErrorKind::Corrupt`] if the op's id does not match its content.
    pub fn receive(&mut self, mut op: Op, max_skew_ms: u64) -> Result<Received> {
        let body = op.verified_line();
        self.receive_checked(op, body, max_skew_ms)
    }

    /// [`WriteTx::receive`] with the content check already done: `body` is what
    /// [`Op::verified_line`] returned for `op` (so the check can run on other
    /// threads during a bulk load).
    pub fn receive_checked(
        &mut self,
        op: Op,
        body: Option<String>,
        max_skew_ms: u64,
    ) -> Result<Received> {
        let Some(body) = body else {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!("op {:?} does not match its content hash", op.op_id),
            ));
        };
        let now = self.clock.now_ms();
        if op.hlc.wall > now.saturating_add(max_skew_ms) && self.approved(&op)? {
            return self.store_received(op, body, false);
        }
        if op.hlc.wall > now.saturating_add(max_skew_ms) {
            let known: bool = cached_row(
                &self.tx,
                "SELECT EXISTS(SELECT 1 FROM ops WHERE op_id = ?1)",
                params![op.op_id],
                |r| r.get(0),
            )?;
            if known {
                return Ok(Received::Duplicate);
            }
            self.tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO held_ops(op_id, replica, wall_ms, held_ms, body)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![
                    op.op_id,
                    op.replica,
                    op.hlc.wall as i64,
                    now as i64,
                    body
                ])?;
            return Ok(Received::Held);
        }
        self.store_received(op, body, true)
    }

    /// Applies an op that was held for clock skew now, as a person settling its
    /// `clock_skew` record asked: stored and folded, but the hybrid clock does
    /// not jump to its far-future stamp (local ops keep local time).
    pub fn receive_held_now(&mut self, mut op: Op) -> Result<Received> {
        let Some(body) = op.verified_line() else {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!("op {:?} does not match its content hash", op.op_id),
            ));
        };
        self.store_received(op, body, false)
    }

    fn store_received(&mut self, op: Op, body: String, observe: bool) -> Result<Received> {
        let now = self.clock.now_ms();
        // One statement both stores the op and tells a duplicate (the op id is
        // unique). Find its home first (which loads the doc, so loading does
        // not read the op back).
        let (home, reroute) = self.home_of(&op)?;
        if home != op.issue {
            self.doc(&home)?;
        }
        let stored = self
            .tx
            .prepare_cached(
                "INSERT INTO ops(op_id, issue_id, replica, seq, body) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(op_id) DO NOTHING",
            )?
            .execute(params![op.op_id, home, op.replica, op.seq as i64, body])?;
        if stored == 0 {
            return Ok(Received::Duplicate);
        }
        if observe {
            self.hlc = self.hlc.observe(op.hlc, now);
        }
        if op.replica == self.replica {
            // Our own op coming back (a rebuild): later local ops continue after it.
            self.seq = self.seq.max(op.seq);
        }
        if reroute {
            self.reroute(&op.issue)?;
        } else if let Some(doc) = self.docs.get_mut(&home) {
            doc.apply(&op);
        }
        self.touched.insert(home);
        self.release_approved(&op)?;
        Ok(Received::Applied)
    }

    /// Runs `f` inside a savepoint. If `f` fails, everything it did is undone (rows,
    /// ops, the clock, the sequence number and the doc cache) and the transaction
    /// carries on; if it succeeds its rows are materialised before the savepoint is
    /// released.
    pub fn attempt<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.flush()?;
        let (hlc, seq, recorded) = (self.hlc, self.seq, self.recorded.len());
        self.tx
            .prepare_cached("SAVEPOINT bd_request")?
            .execute([])?;
        let out = f(self).and_then(|v| self.flush().map(|()| v));
        match out {
            Ok(v) => {
                self.tx.prepare_cached("RELEASE bd_request")?.execute([])?;
                Ok(v)
            }
            Err(e) => {
                self.tx
                    .execute_batch("ROLLBACK TO bd_request; RELEASE bd_request")?;
                self.hlc = hlc;
                self.seq = seq;
                self.recorded.truncate(recorded);
                self.docs.clear();
                // Docs flushed before the savepoint may have been changed inside
                // it; the database has them right, so they are simply reloaded.
                self.flushed.clear();
                self.fresh.clear();
                self.touched.clear();
                Err(e)
            }
        }
    }

    /// The doc of `id` as the last [`WriteTx::flush`] wrote its rows, if this
    /// transaction still holds it.
    pub fn flushed_doc(&self, id: &str) -> Option<&IssueDoc> {
        self.flushed.get(id)
    }

    /// Runs `f` without a savepoint. `Some(result)` when it succeeded, or failed
    /// having changed nothing in the database (then the transaction carries on,
    /// its clock, sequence number and op list restored); `None` when it failed
    /// after changing something, which only rolling back the whole transaction
    /// can undo.
    pub fn attempt_unguarded<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<Option<Result<T>>> {
        self.flush()?;
        let (hlc, seq, recorded) = (self.hlc, self.seq, self.recorded.len());
        let before = self.footprint()?;
        match f(self).and_then(|v| self.flush().map(|()| v)) {
            Ok(v) => Ok(Some(Ok(v))),
            Err(e) if self.footprint()? == before => {
                // Docs change only after a row is written, so the cached ones
                // still match the database.
                self.hlc = hlc;
                self.seq = seq;
                self.recorded.truncate(recorded);
                Ok(Some(Err(e)))
            }
            Err(_) => Ok(None),
        }
    }

    /// What tells whether anything was written: rows changed by this
    /// connection, and the schema version (dropping an index changes no row).
    fn footprint(&self) -> Result<(u64, i64)> {
        let schema: i64 = cached_row(&self.tx, "PRAGMA schema_version", [], |r| r.get(0))?;
        Ok((self.tx.total_changes(), schema))
    }

    /// What an earlier request with this id left: `Some((digest, outcome))`,
    /// where `outcome` is the answer's JSON, or `None` if it was abandoned.
    pub fn request_outcome(&self, request_id: &str) -> Result<Option<(String, Option<String>)>> {
        Ok(self
            .tx
            .prepare_cached("SELECT digest, outcome FROM requests WHERE id = ?1")?
            .query_row(params![request_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    /// Records a request id with its answer (`None`: abandoned, never to be
    /// applied), and forgets ids older than [`REQUEST_ID_WINDOW_MS`].
    pub fn record_request(
        &mut self,
        request_id: &str,
        digest: &str,
        outcome: Option<&str>,
    ) -> Result<()> {
        let now = self.clock.now_ms();
        self.tx
            .prepare_cached("DELETE FROM requests WHERE created_ms < ?1")?
            .execute(params![now.saturating_sub(REQUEST_ID_WINDOW_MS) as i64])?;
        self.tx
            .prepare_cached(
                "INSERT INTO requests(id, digest, created_ms, outcome) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![request_id, digest, now as i64, outcome])?;
        Ok(())
    }

    /// Ids of the ops recorded so far in this transaction.
    pub fn recorded(&self) -> &[String] {
        &self.recorded
    }

    /// Rewrites the rows of every issue touched since the last flush, refreshes the
    /// `blocked` flags that depend on them, and empties the doc cache (docs reload
    /// from this transaction's view, so memory stays bounded on long imports).
    pub fn flush(&mut self) -> Result<()> {
        if self.touched.is_empty() {
            return Ok(());
        }
        let touched = std::mem::take(&mut self.touched);
        for id in &touched {
            let Some(doc) = self.docs.get(id) else {
                continue;
            };
            let Some(mut m) = doc.materialise() else {
                continue; // ops for an issue whose create has not arrived
            };
            if self.collisions
                && let Some(notice) = collisions::id_notice(&self.tx, id, doc)?
            {
                m.conflicts.push(notice);
                m.conflicts.sort_by(|a, b| a.field.cmp(&b.field));
            }
            write_rows(&self.tx, m, self.fresh.remove(id))?;
        }
        // Keep the docs for the cache, within bounds (a long import flushes
        // often and touches far more issues than are worth keeping).
        if self.flushed.len() + self.docs.len() <= MAX_CACHED_DOCS {
            self.flushed.extend(self.docs.drain());
        } else {
            self.flushed.clear();
        }
        self.docs.clear();
        self.fresh.clear();
        if self.no_prior_ops {
            return Ok(()); // a bulk load sets every flag at the end
        }
        refresh_blocked(&self.tx, touched)
    }

    fn commit(mut self) -> Result<()> {
        self.flush()?;
        meta_set(
            &self.tx,
            "hlc",
            &format!("{}.{}", self.hlc.wall, self.hlc.logical),
        )?;
        self.tx.commit()?;
        if self.cache.len() + self.flushed.len() > MAX_CACHED_DOCS {
            self.cache.clear();
        }
        self.cache.extend(self.flushed.drain());
        Ok(())
    }
}

/// What [`WriteTx::receive`] did with an op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Stored and folded in.
    Applied,
    /// Already stored.
    Duplicate,
    /// Stamped too far in the future; kept aside in `held_ops`.
    Held,
}

/// Writes the rows of one materialised issue. `fresh`: the issue had no rows before
/// this transaction, so there is nothing to delete first.
pub(super) fn write_rows(conn: &Connection, mut m: Materialised, fresh: bool) -> Result<()> {
    // The row's body is the issue without comments (they have their own rows).
    let comments = std::mem::take(&mut m.issue.comments);
    let issue = &m.issue;
    let conflicted: Vec<&str> = m.conflicts.iter().map(|c| c.field.as_str()).collect();
    if !fresh {
        conn.prepare_cached("DELETE FROM conflicts WHERE issue_id = ?1")?
            .execute(params![issue.id])?;
    }
    let mut add_conflict =
        conn.prepare_cached("INSERT INTO conflicts(issue_id, field, body) VALUES (?1, ?2, ?3)")?;
    for c in &m.conflicts {
        add_conflict.execute(params![issue.id, c.field, serde_json::to_string(c)?])?;
    }
    if m.deleted {
        conn.prepare_cached("DELETE FROM issues WHERE id = ?1")?
            .execute(params![issue.id])?;
        conn.prepare_cached("INSERT OR IGNORE INTO tombstones(id) VALUES (?1)")?
            .execute(params![issue.id])?;
        return Ok(());
    }
    let ms = |s: &str| crate::clock::parse_rfc3339(s);
    conn.prepare_cached(
        "INSERT INTO issues(id, title, description, status, priority, issue_type, assignee,
                            created_ms, updated_ms, closed_ms, conflicted, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
         ON CONFLICT(id) DO UPDATE SET
           title = excluded.title, description = excluded.description,
           status = excluded.status, priority = excluded.priority,
           issue_type = excluded.issue_type, assignee = excluded.assignee,
           created_ms = excluded.created_ms, updated_ms = excluded.updated_ms,
           closed_ms = excluded.closed_ms, conflicted = excluded.conflicted,
           body = excluded.body",
    )?
    .execute(params![
        issue.id,
        issue.title,
        issue.description,
        issue.status.as_str(),
        issue.priority,
        issue.issue_type.as_str(),
        issue.assignee,
        ms(&issue.created_at).unwrap_or(m.updated_ms),
        m.updated_ms,
        issue.closed_at.as_deref().and_then(ms),
        conflicted.join(","),
        serde_json::to_string(issue)?,
    ])?;
    if !fresh {
        conn.prepare_cached("DELETE FROM labels WHERE issue_id = ?1")?
            .execute(params![issue.id])?;
        conn.prepare_cached("DELETE FROM deps WHERE issue_id = ?1")?
            .execute(params![issue.id])?;
    }
    let mut add_label =
        conn.prepare_cached("INSERT INTO labels(issue_id, label) VALUES (?1, ?2)")?;
    for label in &issue.labels {
        add_label.execute(params![issue.id, label])?;
    }
    let mut add_dep =
        conn.prepare_cached("INSERT INTO deps(issue_id, depends_on_id, type) VALUES (?1, ?2, ?3)")?;
    for d in &issue.dependencies {
        add_dep.execute(params![issue.id, d.depends_on_id, d.dep_type.as_str()])?;
    }
    let mut add_comment = conn.prepare_cached(
        "INSERT OR IGNORE INTO comments(issue_id, id, created_ms, body) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for c in &comments {
        add_comment.execute(params![
            issue.id,
            c.id,
            ms(&c.created_at).unwrap_or(0),
            serde_json::to_string(c)?
        ])?;
    }
    Ok(())
}

/// The blocking rule, written once for both the incremental and the bulk
/// computation: the issue whose id is the SQL expression `$issue` has a `blocks`
/// edge to an existing issue that is not closed ...
macro_rules! blocked_by_blocker {
    ($issue:literal) => {
        concat!(
            "EXISTS(SELECT 1 FROM deps d JOIN issues b ON b.id = d.depends_on_id WHERE d.issue_id = ",
            $issue,
            " AND d.type = 'blocks' AND b.status <> 'closed')"
        )
    };
}

/// ... or a parent-child edge to a parent that is blocked or neither open nor in
/// progress.
macro_rules! blocked_by_parent {
    ($issue:literal) => {
        concat!(
            "EXISTS(SELECT 1 FROM deps d JOIN issues p ON p.id = d.depends_on_id WHERE d.issue_id = ",
            $issue,
            " AND d.type = 'parent-child' AND (p.blocked = 1 OR p.status NOT IN ('open', 'in_progress')))"
        )
    };
}

/// Sets every issue's `blocked` flag from scratch (after a bulk load): first the
/// `blocks` edges, then parent-child blocking spread down the tree one level per
/// pass until nothing changes. The same fixed point the incremental
/// [`refresh_blocked`] maintains; the passes are bounded by the depth of the
/// parent-child tree (and by a budget, should imported data hold a cycle).
fn recompute_all_blocked(conn: &Connection) -> Result<()> {
    conn.execute(
        concat!(
            "UPDATE issues SET blocked = ",
            blocked_by_blocker!("issues.id")
        ),
        [],
    )?;
    for _ in 0..10_000 {
        let changed = conn.execute(
            concat!(
                "UPDATE issues SET blocked = 1 WHERE blocked = 0 AND ",
                blocked_by_parent!("issues.id")
            ),
            [],
        )?;
        if changed == 0 {
            break;
        }
    }
    Ok(())
}

/// Re-evaluates `blocked` for `seeds` and, transitively, for whatever depends on an
/// issue whose flag or status may have changed.
pub(super) fn refresh_blocked(conn: &Connection, seeds: BTreeSet<String>) -> Result<()> {
    // The stored flag and the freshly computed one, in one statement.
    let mut get = conn.prepare_cached(concat!(
        "SELECT i.blocked, ",
        blocked_by_blocker!("i.id"),
        " OR ",
        blocked_by_parent!("i.id"),
        " FROM issues i WHERE i.id = ?1"
    ))?;
    let mut set = conn.prepare_cached("UPDATE issues SET blocked = ?2 WHERE id = ?1")?;
    // `+type`: filter the edge type on the index entries rather than look each
    // type up through the index. An indexed `IN` list makes SQLite build an
    // ephemeral table (with its own page cache) on every run: ~9k instructions
    // of memset alone per refreshed issue.
    let mut dependents = conn.prepare_cached(
        "SELECT issue_id FROM deps WHERE depends_on_id = ?1 AND +type IN ('blocks', 'parent-child')",
    )?;
    let mut pending_seeds: HashSet<String> = seeds.iter().cloned().collect();
    let mut queue: VecDeque<String> = seeds.into_iter().collect();
    // Gating edges form a DAG (cycles are refused), so this terminates; the budget
    // bounds the work even if imported data holds a cycle.
    let mut budget = 1_000_000usize;
    while let Some(id) = queue.pop_front() {
        budget = budget.saturating_sub(1);
        if budget == 0 {
            break;
        }
        let was_seed = pending_seeds.remove(&id);
        let flags: Option<(bool, bool)> = get
            .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let changed = match flags {
            Some((old, new)) => {
                if new != old {
                    set.execute(params![id, new])?;
                }
                new != old
            }
            None => false,
        };
        if changed || was_seed {
            let rows = dependents.query_map(params![id], |r| r.get::<_, String>(0))?;
            for dep in rows {
                queue.push_back(dep?);
            }
        }
    }
    Ok(())
}

/// SHA-256 (hex) of the whole materialised state: issues with comments, conflicts
/// and tombstones, in id order. Equal on every replica that holds the same ops.
pub fn state_hash(conn: &Connection) -> Result<String> {
    let mut h = Sha256::new();
    for (sql, tag) in [
        (
            "SELECT id || char(31) || body FROM issues ORDER BY id",
            b'i',
        ),
        (
            "SELECT issue_id || char(31) || id || char(31) || body FROM comments ORDER BY issue_id, id",
            b'c',
        ),
        (
            "SELECT issue_id || char(31) || field || char(31) || body FROM conflicts ORDER BY issue_id, field",
            b'x',
        ),
        ("SELECT id FROM tombstones ORDER BY id", b't'),
    ] {
        let mut stmt = conn.prepare(sql)?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let s: String = row.get(0)?;
            h.update([tag]);
            h.update(s.as_bytes());
            h.update([b'\n']);
        }
    }
    Ok(crate::model::hex_bytes(&h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::model::OpKind;
    use serde_json::json;

    fn foreign(
        issue: &str,
        replica: &str,
        seq: u64,
        wall: u64,
        kind: OpKind,
        value: serde_json::Value,
    ) -> Op {
        Op {
            op_id: String::new(),
            issue: issue.into(),
            of: None,
            kind,
            field: None,
            value,
            supersedes: vec![],
            hlc: Hlc { wall, logical: 0 },
            actor: "a".into(),
            replica: replica.into(),
            seq,
        }
    }

    /// Review of issue 10, item 6: settling a `clock_skew` record is an op
    /// that syncs. A clone may receive the approval before the held op
    /// itself (another file, read first): the op is then applied, not held.
    #[test]
    fn an_approved_op_is_applied_whichever_arrives_first() {
        let now = SystemClock.now_ms();
        let future = foreign(
            "t-1",
            "skewed",
            1,
            now + 3_600_000,
            OpKind::Create,
            json!({"title": "ahead"}),
        )
        .seal();
        let mut approval = foreign(
            "t-1",
            "settler",
            1,
            now,
            OpKind::Set,
            json!({"apply": [future.op_id]}),
        );
        approval.field = Some(CLOCK_SKEW_FIELD.into());
        let approval = approval.seal();
        for order in [[&approval, &future], [&future, &approval]] {
            let dir = tempfile::tempdir().unwrap();
            let paths = BeadsPaths::new(dir.path().join(".beads"));
            std::fs::create_dir_all(&paths.dir).unwrap();
            let mut store = Store::create(&paths, "local").unwrap();
            for op in order {
                store
                    .write(&SystemClock, |tx| tx.receive(op.clone(), 60_000))
                    .unwrap();
            }
            let held: i64 = store
                .conn()
                .query_row("SELECT COUNT(*) FROM held_ops", [], |r| r.get(0))
                .unwrap();
            assert_eq!(held, 0);
            let issue = crate::query::get_issue(store.conn(), "t-1")
                .unwrap()
                .unwrap();
            assert_eq!(issue.title, "ahead");
            assert!(issue.extra.is_empty(), "the approval is not a field");
        }
    }
}
