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

use crate::model::{Issue, Op};
use crate::query;
use crate::storage::sqlite::{OpFileMark, meta_get, meta_set};
use crate::storage::{BeadsPaths, Store};
use crate::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
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

/// The `seq` of the last whole line of an op file of `len` bytes, or `None` if it is
/// empty; `Err` if the tail is torn or unreadable (the caller rewrites the file).
fn last_seq_in_file(f: &mut File, len: u64) -> Result<Option<u64>, ()> {
    if len == 0 {
        return Ok(None);
    }
    // An op line is a few hundred bytes; read a small tail first, more if needed.
    for window in [4 * 1024u64, 1024 * 1024] {
        let start = len.saturating_sub(window);
        f.seek(SeekFrom::Start(start)).map_err(|_| ())?;
        let mut tail = Vec::with_capacity((len - start) as usize);
        f.take(len - start).read_to_end(&mut tail).map_err(|_| ())?;
        if tail.last() != Some(&b'\n') {
            return Err(());
        }
        let body = &tail[..tail.len() - 1];
        let line = match body.iter().rposition(|b| *b == b'\n') {
            Some(i) => &body[i + 1..],
            None if start == 0 => body,
            None => continue,
        };
        let op: Op = serde_json::from_slice(line).map_err(|_| ())?;
        return Ok(Some(op.seq));
    }
    Err(())
}

/// Appends this replica's ops that are not yet in its op file; rewrites the file
/// from the database if its tail is torn or ahead of the database. Returns the
/// number of lines written.
///
/// The store remembers the file's identity, length and last seq after each write,
/// so the everyday append (the daemon's, after every group) reads nothing back;
/// any change by another process (length, inode) sends it back to reading the tail.
pub fn flush_own_ops(store: &Store, paths: &BeadsPaths) -> Result<usize> {
    flush_own_ops_with(store, paths, OwnFile::Append)
}

/// How [`flush_own_ops_with`] treats the op file it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnFile {
    /// Append what is past the file's last seq (the path of every write).
    Append,
    /// Also count the file's lines against the database's ops and rewrite the
    /// file when they differ (a duplicated or missing line): what `bd flush`,
    /// `bd sync` and `bd rebuild` do. Costs one read of the file.
    Verify,
    /// A file holding ops the database lacks is left alone instead of being
    /// rewritten (a rebuild reads it next, and those ops may be another
    /// clone's that shares this replica id).
    KeepIfAhead,
}

/// [`flush_own_ops`], choosing how far to trust the file (see [`OwnFile`]).
///
/// Exactly one process writes the file at a time (`flush.lock`), and it writes
/// exactly the ops with `seq` in (file's last seq, database's max seq read under
/// the lock]: other processes commit new ops without the lock, so the upper
/// bound is what keeps the remembered last seq true. (Without it, ops committed
/// between reading the max and reading the rows were appended but not
/// remembered, and the next append wrote them again: found with daemon and
/// `--no-daemon` writers at once.)
pub fn flush_own_ops_with(store: &Store, paths: &BeadsPaths, how: OwnFile) -> Result<usize> {
    match OwnOpsAppend::plan(store, paths, how)? {
        Some(append) => append.write(store),
        None => Ok(0),
    }
}

/// One append to the own op file, decided under `flush.lock` and written while
/// still holding it: the ops with `seq` in `(from, upto]`, or the whole file
/// when `rewrite`.
struct OwnOpsAppend {
    _lock: FlushLock,
    path: std::path::PathBuf,
    file: Option<File>,
    from: i64,
    upto: i64,
    rewrite: bool,
}

impl OwnOpsAppend {
    /// What to write, or `None` when the file is current.
    fn plan(store: &Store, paths: &BeadsPaths, how: OwnFile) -> Result<Option<OwnOpsAppend>> {
        use std::os::unix::fs::MetadataExt;
        let lock = FlushLock::acquire(paths)?;
        let replica = store.replica();
        let path = paths.op_file(replica);
        let upto: i64 = crate::storage::sqlite::cached_row(
            store.conn(),
            "SELECT COALESCE(MAX(seq), 0) FROM ops WHERE replica = ?1",
            [replica],
            |r| r.get(0),
        )?;
        let mut file = match OpenOptions::new().read(true).append(true).open(&path) {
            Ok(f) => Some(f),
            // No op yet, no file: an empty one would only sit untracked in git.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && upto == 0 => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_at(&path, e)),
        };
        let meta = match &file {
            Some(f) => Some(f.metadata()?),
            None => None,
        };
        let known = store.op_file.get().filter(|m| {
            meta.as_ref().is_some_and(|md| {
                md.dev() == m.dev
                    && md.ino() == m.ino
                    && md.len() == m.len
                    && (md.ctime(), md.ctime_nsec()) == m.ctime
            })
        });
        let in_file = match (known, file.as_mut(), &meta) {
            (Some(m), _, _) => Ok(Some(m.last_seq)),
            (None, Some(f), Some(md)) => last_seq_in_file(f, md.len()),
            _ => Ok(None),
        };
        let (mut from, mut rewrite) = match in_file {
            Ok(None) => (0, true),
            Ok(Some(s)) if s as i64 <= upto => (s as i64, false),
            Ok(Some(_)) if how == OwnFile::KeepIfAhead => return Ok(None),
            _ => (0, true),
        };
        if how == OwnFile::Verify && !rewrite {
            // The file must hold exactly the ops up to `from`, once each.
            let db_count: i64 = crate::storage::sqlite::cached_row(
                store.conn(),
                "SELECT COUNT(*) FROM ops WHERE replica = ?1 AND seq <= ?2",
                rusqlite::params![replica, from],
                |r| r.get(0),
            )?;
            let lines = match file.as_mut() {
                Some(f) => count_lines(f).map_err(|e| io_at(&path, e))?,
                None => 0,
            };
            if lines != db_count as u64 {
                (from, rewrite) = (0, true);
            }
        }
        if from == upto && !rewrite {
            return Ok(None);
        }
        let mut upto = upto;
        if rewrite && file.is_some() && absorb_unknown_own_ops(store, &path)? > 0 {
            // They are in the database now, so the rewrite keeps them.
            upto = crate::storage::sqlite::cached_row(
                store.conn(),
                "SELECT COALESCE(MAX(seq), 0) FROM ops WHERE replica = ?1",
                [replica],
                |r| r.get(0),
            )?;
        }
        Ok(Some(OwnOpsAppend {
            _lock: lock,
            path,
            file,
            from,
            upto,
            rewrite,
        }))
    }

    /// Writes the planned ops and remembers where the file now ends.
    fn write(mut self, store: &Store) -> Result<usize> {
        use std::os::unix::fs::MetadataExt;
        // Bounded by `upto`: ops other processes committed since the plan are
        // the next append's (they hold no lock to commit), so the remembered
        // last seq below is exactly the file's.
        let mut stmt = store.conn().prepare_cached(
            "SELECT body FROM ops WHERE replica = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq, op_id",
        )?;
        let mut buf = String::new();
        let mut n = 0;
        for body in stmt.query_map(
            rusqlite::params![store.replica(), self.from, self.upto],
            |r| r.get::<_, String>(0),
        )? {
            buf.push_str(&body?);
            buf.push('\n');
            n += 1;
        }
        if self.rewrite {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| io_at(dir, e))?;
            }
            atomic_write(&self.path, buf.as_bytes())?;
            self.file = Some(File::open(&self.path).map_err(|e| io_at(&self.path, e))?);
        } else if let Some(f) = self.file.as_mut() {
            f.write_all(buf.as_bytes())
                .map_err(|e| io_at(&self.path, e))?;
        }
        let mark = match self.file.as_ref().map(File::metadata) {
            Some(Ok(md)) => Some(OpFileMark {
                dev: md.dev(),
                ino: md.ino(),
                len: md.len(),
                ctime: (md.ctime(), md.ctime_nsec()),
                last_seq: self.upto as u64,
            }),
            _ => None,
        };
        store.op_file.set(mark);
        Ok(n)
    }
}

/// Takes into the database the ops of this replica that its own op file holds
/// and the database lacks, and returns how many. They were written by another
/// copy of this clone sharing its replica id (a copied `.beads/` or
/// `beads.db`) and merged in by git, or appended just before a crash lost the
/// commit. Either way the file is what every other clone reads, so they are
/// real: a rewrite of the file must never drop them (until 2026-12-01 one did,
/// and `bd sync` deleted the other copy's ops from git).
fn absorb_unknown_own_ops(store: &Store, path: &Path) -> Result<usize> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_at(path, e)),
    };
    let mut unknown = Vec::new();
    {
        let mut known = store
            .conn()
            .prepare_cached("SELECT 1 FROM ops WHERE op_id = ?1")?;
        for line in text.split(|b| *b == b'\n') {
            let Ok(op) = serde_json::from_slice::<Op>(line) else {
                continue; // a torn tail or garbage: nothing to keep
            };
            if op.replica != store.replica() || !op.is_sealed() || op.malformed().is_some() {
                continue;
            }
            if !known.exists([&op.op_id])? {
                unknown.push(op);
            }
        }
    }
    if unknown.is_empty() {
        return Ok(0);
    }
    let n = unknown.len();
    // Another connection: the caller's may be the daemon's reader or writer,
    // and holds no transaction here (`flush.lock` is not the database's).
    let db = store
        .conn()
        .path()
        .map(std::path::PathBuf::from)
        .ok_or_else(|| Error::internal("the database has no file path"))?;
    let mut writer = Store::open(&db)?;
    writer.write(&crate::clock::SystemClock, |tx| {
        for op in unknown {
            tx.receive(op, crate::exchange::DEFAULT_MAX_SKEW_MS)?;
        }
        Ok(())
    })?;
    Ok(n)
}

/// An I/O error that names the file it happened on.
pub fn io_at(path: &Path, e: std::io::Error) -> Error {
    let mut err = Error::from(e);
    if err.kind == ErrorKind::Io {
        err.message = format!("{}: {}", path.display(), err.message);
    }
    err
}

/// Rewrites this replica's op file whole from the database (atomically, under
/// `flush.lock`): `bd doctor --fix` for a file that holds an op twice or out of
/// order. Returns the number of lines written.
pub fn rewrite_own_ops(store: &Store, paths: &BeadsPaths) -> Result<usize> {
    let _lock = FlushLock::acquire(paths)?;
    let path = paths.op_file(store.replica());
    absorb_unknown_own_ops(store, &path)?;
    let mut stmt = store
        .conn()
        .prepare("SELECT body FROM ops WHERE replica = ?1 ORDER BY seq, op_id")?;
    let mut buf = String::new();
    let mut n = 0;
    for body in stmt.query_map([store.replica()], |r| r.get::<_, String>(0))? {
        buf.push_str(&body?);
        buf.push('\n');
        n += 1;
    }
    std::fs::create_dir_all(paths.ops_dir())?;
    atomic_write(&path, buf.as_bytes())?;
    store.op_file.set(None);
    Ok(n)
}

/// Newlines in a whole file (one per op line).
fn count_lines(f: &mut File) -> std::io::Result<u64> {
    f.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        match f.read(&mut buf)? {
            0 => return Ok(n),
            got => n += buf[..got].iter().filter(|b| **b == b'\n').count() as u64,
        }
    }
}

/// Renders issues as snapshot lines (one JSON object per line, trailing newline).
pub fn render_snapshot(issues: &[Issue]) -> Result<String> {
    let mut out = String::with_capacity(issues.len() * 512);
    for issue in issues {
        out.push_str(&serde_json::to_string(issue)?);
        out.push('\n');
    }
    Ok(out)
}

/// Freshness of `issues.jsonl` relative to the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotState {
    /// Ops stored in the database.
    pub ops: u64,
    /// Ops reflected in the snapshot file when it was last written (`None`: never).
    pub snapshot_ops: Option<u64>,
    /// Whether the file is behind the database.
    pub dirty: bool,
}

/// Whether the snapshot is behind the database.
pub fn snapshot_state(store: &Store) -> Result<SnapshotState> {
    let ops: i64 = store
        .conn()
        .query_row("SELECT COALESCE(MAX(pos), 0) FROM ops", [], |r| r.get(0))?;
    let mark = meta_get(store.conn(), "snapshot_pos")?.and_then(|s| s.parse::<u64>().ok());
    Ok(SnapshotState {
        ops: ops as u64,
        snapshot_ops: mark,
        dirty: mark != Some(ops as u64),
    })
}

/// Writes `issues.jsonl` from the current state (if its bytes changed) and records
/// that it is fresh. Returns the number of issues written.
pub fn write_snapshot(store: &mut Store, paths: &BeadsPaths) -> Result<usize> {
    let _lock = FlushLock::acquire(paths)?;
    // Nothing changed since the last write, and both files still hold exactly
    // what was written: skip rendering every issue again (a `bd sync` or a hook
    // flushes twice; at 10,000 issues a render costs ~40 ms, a check ~2 ms).
    let (pos, held) = store.read(|conn| {
        let pos: i64 = conn.query_row("SELECT COALESCE(MAX(pos), 0) FROM ops", [], |r| r.get(0))?;
        let held: String = conn.query_row(
            "SELECT COALESCE(group_concat(op_id), '') FROM held_ops",
            [],
            |r| r.get(0),
        )?;
        Ok((pos, digest(held.as_bytes())))
    })?;
    if let Some(mark) = meta_get(store.conn(), "snapshot_mark")? {
        let parts: Vec<&str> = mark.split(':').collect();
        if let [p, h, n, issues_digest, conflicts_digest] = parts[..]
            && p == pos.to_string()
            && h == held
            && file_digest(&paths.snapshot()).as_deref() == Some(issues_digest)
            && file_digest(&paths.conflicts_file())
                .as_deref()
                .unwrap_or("-")
                == conflicts_digest
            && let Ok(n) = n.parse::<usize>()
        {
            meta_set(store.conn(), "snapshot_pos", &pos.to_string())?;
            return Ok(n);
        }
    }
    let (text, conflicts, n, pos) = store.read(|conn| {
        let issues = query::all_issues(conn)?;
        let pos: i64 = conn.query_row("SELECT COALESCE(MAX(pos), 0) FROM ops", [], |r| r.get(0))?;
        let mut conflicts = String::new();
        for c in query::conflicts(conn)? {
            conflicts.push_str(&serde_json::to_string(&c)?);
            conflicts.push('\n');
        }
        Ok((render_snapshot(&issues)?, conflicts, issues.len(), pos))
    })?;
    for (path, text, optional) in [
        (paths.snapshot(), &text, false),
        (paths.conflicts_file(), &conflicts, true),
    ] {
        let same = std::fs::read(&path).is_ok_and(|old| old == text.as_bytes());
        // The conflicts file appears with the first conflict.
        let absent_and_empty = optional && text.is_empty() && !path.exists();
        if !same && !absent_and_empty {
            atomic_write(&path, text.as_bytes())?;
        }
    }
    meta_set(store.conn(), "snapshot_pos", &pos.to_string())?;
    let conflicts_digest = match file_digest(&paths.conflicts_file()) {
        Some(d) => d,
        None => "-".to_string(),
    };
    meta_set(
        store.conn(),
        "snapshot_mark",
        &format!(
            "{pos}:{held}:{n}:{}:{conflicts_digest}",
            digest(text.as_bytes())
        ),
    )?;
    Ok(n)
}

fn digest(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    crate::model::hex_bytes(&Sha256::digest(bytes)[..16])
}

/// The digest of a file's bytes, `None` if it does not exist or cannot be read.
fn file_digest(path: &Path) -> Option<String> {
    std::fs::read(path).ok().map(|b| digest(&b))
}

/// One issue object read from a JSONL file, with where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportRecord {
    /// 1-based line number in the source file.
    pub line: usize,
    /// The object's fields.
    pub fields: Map<String, Value>,
}

/// A line that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub message: String,
}

/// Splits beads-format JSONL into issue objects and per-line errors. Blank lines are
/// skipped; a line that is not a JSON object, or lacks a string `id`, is an error.
pub fn parse_issue_lines(text: &str) -> (Vec<ImportRecord>, Vec<LineError>) {
    let mut records = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            continue;
        }
        if trimmed.starts_with("<<<<<<<") || trimmed.starts_with(">>>>>>>") || trimmed == "======="
        {
            errors.push(LineError {
                line,
                message: "git conflict marker".into(),
            });
            continue;
        }
        match serde_json::from_str::<Value>(trimmed) {
            Ok(Value::Object(fields)) => {
                if fields
                    .get("id")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    errors.push(LineError {
                        line,
                        message: "missing string field \"id\"".into(),
                    });
                } else {
                    records.push(ImportRecord { line, fields });
                }
            }
            Ok(_) => errors.push(LineError {
                line,
                message: "not a JSON object".into(),
            }),
            Err(e) => errors.push(LineError {
                line,
                message: format!("invalid JSON: {e}"),
            }),
        }
    }
    (records, errors)
}

/// Reads a whole import file, with a clear error when it cannot be read.
pub fn read_import_file(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!("cannot read {}: {e}", path.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::model::{Op, OpKind};

    fn commit_one(store: &mut Store, issue: &str) {
        store
            .write(&SystemClock, |tx| {
                tx.record(Op {
                    op_id: String::new(),
                    issue: issue.into(),
                    of: None,
                    kind: OpKind::Create,
                    field: None,
                    value: serde_json::json!({"title": issue}),
                    supersedes: vec![],
                    hlc: Default::default(),
                    actor: "t".into(),
                    replica: String::new(),
                    seq: 0,
                })?;
                Ok(())
            })
            .unwrap();
    }

    /// Regression (issue 10, item 2): a long-lived writer (the daemon) planned
    /// an append, another process committed before the rows were read, and the
    /// rows past the planned maximum were appended but not remembered: the next
    /// append wrote them again.
    #[test]
    fn an_op_committed_while_appending_is_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let paths = BeadsPaths::new(dir.path().join(".beads"));
        std::fs::create_dir_all(paths.ops_dir()).unwrap();
        let mut daemon = Store::create(&paths, "r1").unwrap();
        let mut other = Store::open(&paths.db).unwrap();
        commit_one(&mut daemon, "t-1");
        flush_own_ops(&daemon, &paths).unwrap();
        commit_one(&mut daemon, "t-2");
        let plan = OwnOpsAppend::plan(&daemon, &paths, OwnFile::Append)
            .unwrap()
            .unwrap();
        commit_one(&mut other, "t-3"); // between the plan and the rows
        plan.write(&daemon).unwrap();
        flush_own_ops(&daemon, &paths).unwrap();
        let text = std::fs::read_to_string(paths.op_file("r1")).unwrap();
        let seqs: Vec<u64> = text
            .lines()
            .map(|l| serde_json::from_str::<Op>(l).unwrap().seq)
            .collect();
        assert_eq!(seqs, vec![1, 2, 3]);
    }
}
