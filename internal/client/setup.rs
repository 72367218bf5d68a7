//! Creating a tracker ([`init`]) and rebuilding its database from the op
//! files ([`rebuild`]).

use super::DaemonClient;
use crate::config::Config;
use crate::ids;
use crate::storage::{BEADS_DIR, BeadsPaths, Store};
use crate::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

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
