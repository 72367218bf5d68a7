//! Opening a database: creating its schema or migrating it up to
//! [`SCHEMA_VERSION`], configuring each connection, and saying why an open or a
//! write failed (a full disk, no right to write).

use super::store::{DocCache, Store, Tx, file_identity, remember_replica, replica_file};
use crate::storage::{BeadsPaths, collisions};
use crate::{Error, ErrorKind, Result};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use std::path::Path;
use std::time::Duration;

/// Schema version written to `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 9;

const SCHEMA_V1: &str = include_str!("../schema.sql");
const SCHEMA_V2: &str = include_str!("../schema_v2.sql");
const SCHEMA_V3: &str = include_str!("../schema_v3.sql");
const SCHEMA_V4: &str = include_str!("../schema_v4.sql");
const SCHEMA_V5: &str = include_str!("../schema_v5.sql");
const SCHEMA_V6: &str = include_str!("../schema_v6.sql");
const SCHEMA_V7: &str = include_str!("../schema_v7.sql");
const SCHEMA_V8: &str = include_str!("../schema_v8.sql");
const SCHEMA_V9: &str = include_str!("../schema_v9.sql");

/// Indexes a bulk load into an empty database drops first and builds after (one
/// sort each, instead of a random insert per row); none is needed while loading.
pub(super) const BULK_INDEXES: &[&str] = &[
    "ops_by_issue",
    "ops_by_replica",
    "issues_ready",
    "issues_not_closed",
    "issues_by_status",
];

/// The `CREATE INDEX` statement for `name`, from the schema itself (its
/// latest definition: a later version may redefine an index).
pub(super) fn index_sql(name: &str) -> Option<String> {
    let head = format!("CREATE INDEX {name} ");
    [SCHEMA_V9, SCHEMA_V1]
        .iter()
        .flat_map(|schema| schema.split(';'))
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
        collisions::split_merged_creates(tx)?;
    }
    if from < 5 {
        tx.execute_batch(SCHEMA_V5)?;
    }
    if from < 6 {
        tx.execute_batch(SCHEMA_V6)?;
    }
    if from < 7 {
        tx.execute_batch(SCHEMA_V7)?;
    }
    if from < 8 {
        add_issues_column(tx, "claim_expires_ms", "INTEGER")?;
        tx.execute_batch(SCHEMA_V8)?;
    }
    if from < 9 {
        add_issues_column(tx, "held", "INTEGER NOT NULL DEFAULT 0")?;
        tx.execute_batch(SCHEMA_V9)?;
        super::row::recompute_all_held(tx)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    Ok(())
}

/// Adds a column to `issues` unless it is there: ALTER TABLE has no IF NOT
/// EXISTS, and a database set back to an older version is migrated again.
fn add_issues_column(tx: &Connection, name: &str, decl: &str) -> Result<()> {
    let has = tx
        .prepare("SELECT 1 FROM pragma_table_info('issues') WHERE name = ?1")?
        .exists([name])?;
    if !has {
        tx.execute_batch(&format!("ALTER TABLE issues ADD COLUMN {name} {decl}"))?;
    }
    Ok(())
}

/// How long a writer waits for another writer's lock before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(15);

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
