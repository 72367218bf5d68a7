//! This replica's op file, `.beads/ops/<replica>.jsonl`: appending the ops the
//! database holds and the file lacks (remembering where the file ends, so the
//! everyday append reads nothing back), rewriting it whole when it is torn or out
//! of step, and the one reader of an op file's tail that the foreign op files'
//! reader (`exchange`) uses too.

use super::{FlushLock, atomic_write, io_at};
use crate::model::Op;
use crate::storage::sqlite::OpFileMark;
use crate::storage::{BeadsPaths, Store};
use crate::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// The whole line of `f` that ends at byte `end` (its newline at `end - 1`),
/// without its newline; `None` if no whole line ends there or it cannot be read.
/// Both the own op file's append (its last seq) and the foreign op files' marks
/// (the hash of the line a mark ends on) read a file's tail through this.
pub(crate) fn line_ending_at(f: &mut File, end: u64) -> Option<Vec<u8>> {
    // An op line is a few hundred bytes; read a small tail first, more if needed.
    for window in [4 * 1024u64, 1024 * 1024] {
        let start = end.saturating_sub(window);
        f.seek(SeekFrom::Start(start)).ok()?;
        let mut tail = Vec::with_capacity((end - start) as usize);
        f.take(end - start).read_to_end(&mut tail).ok()?;
        if tail.last() != Some(&b'\n') {
            return None;
        }
        let body = &tail[..tail.len() - 1];
        let line = match body.iter().rposition(|b| *b == b'\n') {
            Some(i) => &body[i + 1..],
            None if start == 0 => body,
            None => continue,
        };
        return Some(line.to_vec());
    }
    None
}

/// The `seq` of the last whole line of an op file of `len` bytes, or `None` if it is
/// empty; `Err` if the tail is torn or unreadable (the caller rewrites the file).
fn last_seq_in_file(f: &mut File, len: u64) -> Result<Option<u64>, ()> {
    if len == 0 {
        return Ok(None);
    }
    let line = line_ending_at(f, len).ok_or(())?;
    let op: Op = serde_json::from_slice(&line).map_err(|_| ())?;
    Ok(Some(op.seq))
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
    match OwnOpsAppend::plan(store, paths, how, None)? {
        Some(append) => append.write(store),
        None => Ok(0),
    }
}

/// Appends this replica's ops up to `seq` at most: the engine's append after a
/// sync, bounded by the last op that sync made durable, so that ops committed
/// since (by this process or another writer) wait for the sync that covers
/// them. A file already past `seq` is left as it is.
pub fn flush_durable_ops(store: &Store, paths: &BeadsPaths, seq: i64) -> Result<usize> {
    match OwnOpsAppend::plan(store, paths, OwnFile::Append, Some(seq))? {
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
    fn plan(
        store: &Store,
        paths: &BeadsPaths,
        how: OwnFile,
        cap: Option<i64>,
    ) -> Result<Option<OwnOpsAppend>> {
        use std::os::unix::fs::MetadataExt;
        let lock = FlushLock::acquire(paths)?;
        let replica = store.replica();
        let path = paths.op_file(replica);
        let db_max: i64 = crate::storage::sqlite::cached_row(
            store.conn(),
            "SELECT COALESCE(MAX(seq), 0) FROM ops WHERE replica = ?1",
            [replica],
            |r| r.get(0),
        )?;
        let upto = cap.map_or(db_max, |c| c.min(db_max));
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
            Ok(Some(s)) if s as i64 <= db_max => (s as i64, false),
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
        if from >= upto && !rewrite {
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
                    fence: None,
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
        let plan = OwnOpsAppend::plan(&daemon, &paths, OwnFile::Append, None)
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
