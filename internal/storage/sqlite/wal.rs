//! Durability of commits made without waiting for the disk: [`WalSync`] syncs
//! a database's write-ahead log.

use std::path::Path;

/// Makes a database's write-ahead log durable: `fdatasync` on its `-wal` file.
///
/// Used with [`Store::defer_commit_sync`]. Every commit appends its frames to the
/// one log in order, so a sync covers every commit made before it started. The
/// file handle is reopened if the log was replaced (another inode at the path); a
/// missing log means the last connection checkpointed it into the synced database
/// file and removed it, so there is nothing left to make durable.
///
/// [`Store::defer_commit_sync`]: super::Store::defer_commit_sync
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
