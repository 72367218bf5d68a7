//! Storage: where a tracker's files live ([`BeadsPaths`]) and the SQLite store
//! ([`sqlite::Store`]) holding the op table and the state materialised from it.
//!
//! Invariant: the op table and the materialised tables change in the same
//! transaction, so the materialised state is always the fold of the stored ops.

pub mod collisions;
pub mod sqlite;

pub use sqlite::{Received, Store, WalSync, WriteTx};

use std::path::{Path, PathBuf};

/// Name of the tracker directory inside a repository.
pub const BEADS_DIR: &str = ".beads";
/// Database file name inside `.beads/`.
pub const DB_FILE: &str = "beads.db";

/// The files of one tracker, derived from its `.beads/` directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeadsPaths {
    /// The `.beads/` directory.
    pub dir: PathBuf,
    /// The SQLite database.
    pub db: PathBuf,
}

impl BeadsPaths {
    /// Paths for the tracker in `dir` (a `.beads/` directory) with the default database.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        let db = dir.join(DB_FILE);
        BeadsPaths { dir, db }
    }

    /// Paths with an explicit database file (its directory is the tracker directory).
    pub fn with_db(db: impl Into<PathBuf>) -> Self {
        let db = db.into();
        let dir = db
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        BeadsPaths { dir, db }
    }

    /// The directory of per-replica op files.
    pub fn ops_dir(&self) -> PathBuf {
        self.dir.join("ops")
    }

    /// This replica's op file.
    pub fn op_file(&self, replica: &str) -> PathBuf {
        self.ops_dir().join(format!("{replica}.jsonl"))
    }

    /// The derived snapshot, one issue per line.
    pub fn snapshot(&self) -> PathBuf {
        self.dir.join("issues.jsonl")
    }

    /// The derived list of open conflicts, `conflicts.jsonl`.
    pub fn conflicts_file(&self) -> PathBuf {
        self.dir.join("conflicts.jsonl")
    }

    /// The tracked configuration file.
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    /// Lock serialising writers of the op files and the snapshot.
    pub fn flush_lock(&self) -> PathBuf {
        self.dir.join("flush.lock")
    }

    /// Held by the running daemon for its whole life; records its pid and socket.
    pub fn daemon_lock(&self) -> PathBuf {
        self.dir.join("daemon.lock")
    }

    /// Held by whoever is starting a daemon, so racing commands start only one.
    pub fn daemon_start_lock(&self) -> PathBuf {
        self.dir.join("daemon.start.lock")
    }

    /// The daemon's log.
    pub fn daemon_log(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }

    /// The previous daemon log, kept by rotation.
    pub fn daemon_log_old(&self) -> PathBuf {
        self.dir.join("daemon.log.1")
    }

    /// The repository root (the parent of `.beads/`).
    pub fn repo_root(&self) -> &Path {
        self.dir.parent().unwrap_or(&self.dir)
    }

    /// Walks up from `start` to the first directory holding `.beads/`.
    pub fn discover(start: &Path) -> Option<BeadsPaths> {
        start
            .ancestors()
            .map(|d| d.join(BEADS_DIR))
            .find(|d| d.join(DB_FILE).is_file() || d.join("config.json").is_file())
            .map(BeadsPaths::new)
    }
}
