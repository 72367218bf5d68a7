//! The open [`Store`]: its connection, replica id and doc cache, read and write
//! transactions (group commit included), and the replica id remembered beside
//! the database file.

use super::meta::{meta_get, meta_set};
use super::schema::explain_io;
use super::write_tx::WriteTx;
use crate::clock::Clock;
use crate::merge::IssueDoc;
use crate::{Error, ErrorKind, Result};
use rusqlite::Connection;
use std::collections::HashMap;
use std::path::Path;

/// An open tracker database.
#[derive(Debug)]
pub struct Store {
    pub(super) conn: Connection,
    pub(super) replica: String,
    /// What this process last wrote to its op file (see `jsonl::flush_own_ops`).
    pub(crate) op_file: std::cell::Cell<Option<OpFileMark>>,
    /// Folded docs as of this connection's last commit (see [`DocCache`]).
    pub(super) docs: DocCache,
    /// The database file's (device, inode) when opened: a write finding
    /// another file at the path (`bd rebuild` swapped one in) is refused
    /// rather than made into a file nobody will read again.
    pub(super) identity: Option<(u64, u64)>,
}

pub(super) fn file_identity(path: &Path) -> Option<(u64, u64)> {
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
pub(super) struct DocCache {
    docs: HashMap<String, IssueDoc>,
    /// `PRAGMA data_version` when `docs` was last known to match the database.
    data_version: Option<i64>,
}

/// The most docs kept between transactions; past it the cache starts over.
pub(super) const MAX_CACHED_DOCS: usize = 4096;

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

impl Store {
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
    ///
    /// [`WalSync`]: super::WalSync
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

    /// Removes a `meta` value (nothing if it is not set).
    pub fn delete_meta(&mut self, key: &str) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM meta WHERE key = ?1")?
            .execute([key])?;
        Ok(())
    }
}

/// An open transaction on a connection; rolled back when dropped uncommitted.
/// BEGIN and COMMIT go through the statement cache (rusqlite's `Transaction`
/// compiles them afresh each time, a measurable share of a small write).
pub(super) struct Tx<'a> {
    conn: &'a Connection,
    open: bool,
}

impl<'a> Tx<'a> {
    pub(super) fn begin(conn: &'a Connection, begin: &str) -> Result<Tx<'a>> {
        conn.prepare_cached(begin)?.execute([])?;
        Ok(Tx { conn, open: true })
    }

    pub(super) fn commit(mut self) -> Result<()> {
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
