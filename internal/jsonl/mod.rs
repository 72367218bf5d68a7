//! Files in `.beads/`: atomic writes, the per-replica op files, the derived
//! `issues.jsonl` snapshot, and parsing of beads-format JSONL for import.
//!
//! Invariants:
//! - Every whole-file write is atomic: temp file in the same directory, fsync, rename,
//!   fsync the directory. A reader sees the old file or the new one, never a mix.
//! - The op file `.beads/ops/<replica>.jsonl` holds this replica's ops in `seq`
//!   order with no gaps; it is appended from the op table (the durable record) under
//!   `flush.lock`, so concurrent processes never interleave or duplicate lines, and it
//!   is rewritten whole from the database when its tail is torn or out of step.
//! - The snapshot is rendered from one read transaction taken while holding
//!   `flush.lock`, so an older state can never overwrite a newer one.
//!
//! The parts: this file holds the primitives every writer uses (atomic writes,
//! `flush.lock`, I/O errors that name their file); `op_file` writes this
//! replica's op file and reads the tail of any op file; `snapshot` writes
//! `issues.jsonl` and `conflicts.jsonl`; `import` parses beads-format JSONL.

mod import;
mod op_file;
mod snapshot;

pub use import::{ImportRecord, LineError, parse_issue_lines, read_import_file};
pub(crate) use op_file::line_ending_at;
pub use op_file::{
    OwnFile, flush_durable_ops, flush_own_ops, flush_own_ops_with, rewrite_own_ops,
};
pub use snapshot::{
    SnapshotState, render_snapshot, snapshot_as_written, snapshot_state, write_snapshot,
};

use crate::storage::BeadsPaths;
use crate::{Error, ErrorKind, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` atomically (temp, fsync, rename, fsync directory).
///
/// Only a regular file is replaced. A symlink is followed, so the link survives and
/// its target gets the new contents. Anything else that exists at `path` (a device
/// such as `/dev/null`, a FIFO) is written into in place: renaming over it would
/// put a regular file where the device was, and run as root over `/dev/null` that
/// breaks every program on the machine that reads its null stdin.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    atomic_write_stat(path, bytes).map(|_| ())
}

/// [`atomic_write`], answering with the written file's metadata as of the end of
/// the write (read from the open file, so a later replacement of `path` by
/// someone else cannot be mistaken for it); `None` when `path` was a device or
/// FIFO written in place.
pub fn atomic_write_stat(path: &Path, bytes: &[u8]) -> Result<Option<std::fs::Metadata>> {
    let path = follow_symlinks(path)?;
    let path = path.as_path();
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {
            return Err(Error::invalid(format!("{} is a directory", path.display()))
                .hint("name a file to write"));
        }
        Ok(m) if !m.is_file() => {
            let mut f = OpenOptions::new().write(true).open(path)?;
            f.write_all(bytes)?;
            return Ok(None);
        }
        _ => {}
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".bd-tmp-")
        .tempfile_in(dir)
        .map_err(|e| {
            // tempfile's message names its temporary file; say what the caller named,
            // with the OS's reason when the directory itself is the problem.
            let reason = match std::fs::metadata(dir) {
                Err(dir_err) => dir_err.to_string(),
                Ok(_) => std::io::Error::from(e.kind()).to_string(),
            };
            Error::new(
                ErrorKind::Io,
                format!("cannot write {}: {reason}", path.display()),
            )
            .hint("check that the directory exists and that you may write to it")
        })?;
    tmp.write_all(bytes)?;
    let mut perms = tmp.as_file().metadata()?.permissions();
    // tempfile creates 0600; these files are shared through git like any source file.
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    tmp.as_file().set_permissions(perms)?;
    tmp.as_file().sync_all()?;
    let file = tmp.persist(path).map_err(|e| Error::from(e.error))?;
    File::open(dir)?.sync_all()?;
    Ok(Some(file.metadata()?))
}

/// The path a chain of symlinks at `path` ends at (which need not exist yet), or
/// `path` itself when it is not a symlink.
fn follow_symlinks(path: &Path) -> Result<std::path::PathBuf> {
    let mut at = path.to_path_buf();
    // The kernel's own bound on a chain of links (ELOOP).
    for _ in 0..40 {
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&at)?;
                at = match at.parent() {
                    Some(parent) if target.is_relative() => parent.join(target),
                    _ => target,
                };
            }
            _ => return Ok(at),
        }
    }
    Err(Error::invalid(format!(
        "{}: too many levels of symbolic links",
        path.display()
    ))
    .hint("check where the link points"))
}

/// Holds `flush.lock` for the lifetime of the value.
pub struct FlushLock(File);

impl FlushLock {
    /// Blocks until the lock is ours.
    pub fn acquire(paths: &BeadsPaths) -> Result<FlushLock> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(paths.flush_lock())
            .map_err(|e| io_at(&paths.flush_lock(), e))?;
        f.lock().map_err(|e| io_at(&paths.flush_lock(), e))?;
        Ok(FlushLock(f))
    }
}

impl Drop for FlushLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// An I/O error that names the file it happened on.
pub fn io_at(path: &Path, e: std::io::Error) -> Error {
    let mut err = Error::from(e);
    if err.kind == ErrorKind::Io {
        err.message = format!("{}: {}", path.display(), err.message);
    }
    err
}
