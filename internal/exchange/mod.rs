//! Exchanging ops between replicas: reading other clones' op files (delivered by
//! git) into the database.
//!
//! Every replica appends only to `.beads/ops/<replica>.jsonl`, so a git merge of op
//! files never conflicts, and applying a file is idempotent (ops are keyed by their
//! content hash). What has been read is remembered per file in `op_file_marks` as
//! (length, line count, hash of the last line): the next look reads only what was
//! appended, after checking that the line the mark ends on is still that line. Content,
//! never modification time, decides; a file that was rewritten, truncated or edited
//! is read again from the start (duplicates cost a lookup each).

use crate::model::Op;
use crate::storage::sqlite::cached_row;
use crate::storage::{BeadsPaths, Received, WriteTx};
use crate::{Error, ErrorKind, Result};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// While applying a file, rows are written (and the doc cache emptied) after
/// this many issues.
const FLUSH_EVERY_ISSUES: usize = 4096;

/// A long-running process looks at the op files' content at least this often
/// even when their signature has not changed (held ops become due with time).
pub const RECHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Ops stamped more than this far ahead of local time are held, not applied.
pub const DEFAULT_MAX_SKEW_MS: u64 = 60_000;

/// A line of an op file that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineProblem {
    /// The op file.
    pub file: String,
    /// 1-based line number.
    pub line: u64,
    /// What is wrong with it.
    pub problem: String,
}

/// What one look at the op files found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestReport {
    /// Op files that had something new (or were read from the start).
    pub files_read: u64,
    /// Ops stored and applied.
    pub applied: u64,
    /// Ops already known.
    pub duplicates: u64,
    /// Ops held for clock skew.
    pub held: u64,
    /// Lines that could not be used (the rest of the file was).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<LineProblem>,
}

impl IngestReport {
    fn add(&mut self, r: Received) {
        match r {
            Received::Applied => self.applied += 1,
            Received::Duplicate => self.duplicates += 1,
            Received::Held => self.held += 1,
        }
    }
}

/// The op files in `.beads/ops`, as (replica, path), sorted by replica.
pub fn op_files(paths: &BeadsPaths) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let dir = match std::fs::read_dir(paths.ops_dir()) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(crate::jsonl::io_at(&paths.ops_dir(), e)),
    };
    for entry in dir {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some(replica) = name.strip_suffix(".jsonl")
            && !replica.is_empty()
            && !replica.starts_with('.')
        {
            out.push((replica.to_string(), path.clone()));
        }
    }
    out.sort();
    Ok(out)
}

#[derive(Debug, Clone)]
struct Mark {
    len: u64,
    lines: u64,
    last_line: String,
}

fn line_hash(line: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    crate::model::hex_bytes(&Sha256::digest(line)[..16])
}

fn load_mark(tx: &WriteTx<'_>, replica: &str) -> Result<Option<Mark>> {
    Ok(tx
        .conn()
        .prepare_cached("SELECT len, lines, last_line FROM op_file_marks WHERE replica = ?1")?
        .query_row(params![replica], |r| {
            Ok(Mark {
                len: r.get::<_, i64>(0)? as u64,
                lines: r.get::<_, i64>(1)? as u64,
                last_line: r.get(2)?,
            })
        })
        .optional()?)
}

fn save_mark(tx: &WriteTx<'_>, replica: &str, m: &Mark) -> Result<()> {
    tx.conn()
        .prepare_cached(
            "INSERT INTO op_file_marks(replica, len, lines, last_line) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(replica) DO UPDATE SET
               len = excluded.len, lines = excluded.lines, last_line = excluded.last_line",
        )?
        .execute(params![replica, m.len as i64, m.lines as i64, m.last_line])?;
    Ok(())
}

/// The hash of the whole line that ends at byte `end` (its newline at `end - 1`),
/// if it can be read.
fn hash_of_line_ending_at(f: &mut File, end: u64) -> Option<String> {
    crate::jsonl::line_ending_at(f, end).map(|line| line_hash(&line))
}

/// Reads new ops from other replicas' op files into the open write transaction
/// (this replica's own file is written from the database, never read back; see
/// [`rebuild_into`] for reading every file). Lines that cannot be used are
/// reported with file and line and skipped; a torn last line (no newline yet) is
/// reported and left for a later look.
pub fn ingest(tx: &mut WriteTx<'_>, paths: &BeadsPaths, max_skew_ms: u64) -> Result<IngestReport> {
    let mut report = IngestReport::default();
    let own = tx.replica().to_string();
    for (replica, path) in op_files(paths)? {
        if replica == own {
            continue;
        }
        ingest_file(tx, &replica, &path, max_skew_ms, &mut report)?;
    }
    release_held(tx, max_skew_ms, &mut report)?;
    Ok(report)
}

/// New whole lines of one op file, parsed, and the mark to save once they are
/// applied. Bad lines go to `report.problems`.
struct FileRead {
    /// (line number, op), in file order.
    ops: Vec<(u64, Op)>,
    /// Where the file has been read to, if it has any whole line.
    mark: Option<Mark>,
}

/// Reads what is new in `path` since `mark` (everything if the mark no longer
/// matches); `None` if there is nothing new.
fn read_file(
    replica: &str,
    path: &Path,
    mark: Option<&Mark>,
    report: &mut IngestReport,
) -> Result<Option<FileRead>> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(crate::jsonl::io_at(path, e)),
    };
    let len = f.metadata()?.len();
    // Where to start: after the mark if the file still holds it there.
    let (from, first_line) = match mark {
        Some(m) if m.len <= len && m.len > 0 => match hash_of_line_ending_at(&mut f, m.len) {
            Some(h) if h == m.last_line => {
                if m.len == len {
                    return Ok(None); // nothing new: the everyday case
                }
                (m.len, m.lines + 1)
            }
            _ => (0, 1),
        },
        _ => (0, 1),
    };
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::with_capacity((len - from) as usize);
    f.take(len - from).read_to_end(&mut buf)?;
    report.files_read += 1;
    let shown = path.display().to_string();
    let mut offset = from;
    let mut line_no = first_line;
    let mut last: Option<(u64, u64, &[u8])> = None; // (end offset, line number, line)
    let mut ops = Vec::new();
    let mut rest: &[u8] = &buf;
    while !rest.is_empty() {
        let Some(nl) = rest.iter().position(|b| *b == b'\n') else {
            report.problems.push(LineProblem {
                file: shown.clone(),
                line: line_no,
                problem: format!(
                    "torn last line ({} bytes without a newline); left for later",
                    rest.len()
                ),
            });
            break;
        };
        let line = &rest[..nl];
        rest = &rest[nl + 1..];
        offset += nl as u64 + 1;
        let this_line = line_no;
        line_no += 1;
        // Every whole line moves the mark, used or not: a bad line is reported
        // once, when it arrives (`bd doctor` reads every file in full).
        last = Some((offset, this_line, line));
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let op: Op = match serde_json::from_slice(line) {
            Ok(op) => op,
            Err(e) => {
                report.problems.push(LineProblem {
                    file: shown.clone(),
                    line: this_line,
                    problem: format!("not an op: {e}"),
                });
                continue;
            }
        };
        if op.replica != replica {
            report.problems.push(LineProblem {
                file: shown.clone(),
                line: this_line,
                problem: format!("op of replica {:?} in another replica's file", op.replica),
            });
            continue;
        }
        if let Some(what) = op.malformed() {
            report.problems.push(LineProblem {
                file: shown.clone(),
                line: this_line,
                problem: format!("op {:?}: {what}; not applied", op.op_id),
            });
            continue;
        }
        ops.push((this_line, op));
    }
    Ok(Some(FileRead {
        ops,
        mark: last.map(|(len, lines, line)| Mark {
            len,
            lines,
            last_line: line_hash(line),
        }),
    }))
}

/// Applies (file, line, op) triples issue by issue (the fold does not depend
/// on order): each issue's doc is loaded once and its rows written once, and
/// rows are flushed every few thousand issues so memory stays bounded.
fn apply_sorted(
    tx: &mut WriteTx<'_>,
    mut ops: Vec<(usize, u64, Op)>,
    files: &[String],
    max_skew_ms: u64,
    report: &mut IngestReport,
) -> Result<()> {
    ops.sort_by(|a, b| a.2.issue.cmp(&b.2.issue));
    // Checking content hashes is a serialisation and a SHA-256 per op and needs
    // no database: do it on every core first.
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    let chunk = ops.len().div_ceil(threads).max(1);
    let bodies: Vec<Option<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = ops
            .chunks_mut(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter_mut()
                        .map(|(_, _, op)| op.verified_line())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(|parts| parts.into_iter().flatten().collect())
    })
    .map_err(|_| Error::internal("a thread checking op hashes panicked"))?;
    let mut issues_since_flush = 0;
    let mut previous: Option<String> = None;
    let mut meter = crate::progress::Meter::start("applying ops", Some(ops.len() as u64));
    for ((file, line, op), body) in ops.into_iter().zip(bodies) {
        meter.inc(1);
        if previous.as_deref() != Some(op.issue.as_str()) {
            issues_since_flush += 1;
            if issues_since_flush > FLUSH_EVERY_ISSUES {
                tx.flush()?;
                issues_since_flush = 1;
            }
            previous = Some(op.issue.clone());
        }
        match tx.receive_checked(op, body, max_skew_ms) {
            Ok(r) => report.add(r),
            Err(e) if e.kind == ErrorKind::Corrupt => report.problems.push(LineProblem {
                file: files[file].clone(),
                line,
                problem: e.message,
            }),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn ingest_file(
    tx: &mut WriteTx<'_>,
    replica: &str,
    path: &Path,
    max_skew_ms: u64,
    report: &mut IngestReport,
) -> Result<()> {
    let mark = load_mark(tx, replica)?;
    let Some(read) = read_file(replica, path, mark.as_ref(), report)? else {
        return Ok(());
    };
    let ops = read.ops.into_iter().map(|(l, op)| (0, l, op)).collect();
    apply_sorted(tx, ops, &[path.display().to_string()], max_skew_ms, report)?;
    if let Some(m) = read.mark {
        save_mark(tx, replica, &m)?;
    }
    Ok(())
}

/// Fills an empty database from every op file (a rebuild): all files are read
/// first so each issue's ops, whichever files they are in, apply as one run;
/// the docs then start empty instead of being read back, and the bulk indexes
/// are built once at the end.
pub fn rebuild_into(
    tx: &mut WriteTx<'_>,
    paths: &BeadsPaths,
    max_skew_ms: u64,
) -> Result<IngestReport> {
    let mut report = IngestReport::default();
    let mut all = Vec::new();
    let mut names = Vec::new();
    let mut marks = Vec::new();
    for (replica, path) in op_files(paths)? {
        if let Some(read) = read_file(&replica, &path, None, &mut report)? {
            let k = names.len();
            names.push(path.display().to_string());
            all.extend(read.ops.into_iter().map(|(l, op)| (k, l, op)));
            if let Some(m) = read.mark {
                marks.push((replica, m));
            }
        }
    }
    tx.assume_no_prior_ops();
    tx.without_bulk_indexes(|tx| apply_sorted(tx, all, &names, max_skew_ms, &mut report))?;
    for (replica, m) in marks {
        save_mark(tx, &replica, &m)?;
    }
    Ok(report)
}

/// Ops held back for clock skew.
pub fn held_op_count(conn: &rusqlite::Connection) -> Result<u64> {
    let n: i64 = cached_row(conn, "SELECT COUNT(*) FROM held_ops", [], |r| r.get(0))?;
    Ok(n as u64)
}

/// Applies held ops whose time has come.
fn release_held(tx: &mut WriteTx<'_>, max_skew_ms: u64, report: &mut IngestReport) -> Result<()> {
    let now = tx.now_ms();
    let bodies: Vec<String> = {
        let mut stmt = tx
            .conn()
            .prepare_cached("SELECT body FROM held_ops WHERE wall_ms <= ?1 ORDER BY wall_ms")?;
        stmt.query_map(params![now.saturating_add(max_skew_ms) as i64], |r| {
            r.get(0)
        })?
        .collect::<rusqlite::Result<_>>()?
    };
    for body in bodies {
        let op: Op = serde_json::from_str(&body)
            .map_err(|e| Error::new(ErrorKind::Corrupt, format!("unreadable held op: {e}")))?;
        let id = op.op_id.clone();
        let r = tx.receive(op, max_skew_ms)?;
        if r != Received::Held {
            tx.conn()
                .prepare_cached("DELETE FROM held_ops WHERE op_id = ?1")?
                .execute(params![id])?;
        }
        report.add(r);
    }
    Ok(())
}

/// Whether [`ingest`] (foreign scope) would find anything: a foreign op file whose
/// content moved past its mark, or a held op whose time has come. Reads only the
/// tail of each file; no write lock.
pub fn has_news(
    conn: &rusqlite::Connection,
    paths: &BeadsPaths,
    own: &str,
    now_ms: u64,
    max_skew_ms: u64,
) -> Result<bool> {
    let mut mark_of =
        conn.prepare_cached("SELECT len, last_line FROM op_file_marks WHERE replica = ?1")?;
    for (replica, path) in op_files(paths)? {
        if replica == own {
            continue;
        }
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(crate::jsonl::io_at(&path, e)),
        };
        let len = f.metadata()?.len();
        let mark: Option<(i64, String)> = mark_of
            .query_row(params![replica], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        match mark {
            Some((m_len, hash)) if m_len as u64 == len => {
                let same =
                    len == 0 || hash_of_line_ending_at(&mut f, len).as_deref() == Some(&hash);
                if !same {
                    return Ok(true);
                }
            }
            // A torn last line leaves the file longer than its mark; it is news
            // only once something after the mark is a whole line.
            Some((m_len, hash)) if (m_len as u64) < len => {
                let m_len = m_len as u64;
                if m_len > 0 && hash_of_line_ending_at(&mut f, m_len).as_deref() != Some(&hash) {
                    return Ok(true);
                }
                f.seek(SeekFrom::Start(m_len))?;
                let mut rest = Vec::new();
                f.take(len - m_len).read_to_end(&mut rest)?;
                if rest.contains(&b'\n') {
                    return Ok(true);
                }
            }
            Some(_) => return Ok(true), // shorter than what was read: rewritten
            None if len > 0 => return Ok(true),
            None => {}
        }
    }
    let due: bool = cached_row(
        conn,
        "SELECT EXISTS(SELECT 1 FROM held_ops WHERE wall_ms <= ?1)",
        params![now_ms.saturating_add(max_skew_ms) as i64],
        |r| r.get(0),
    )?;
    Ok(due)
}

/// Per entry: name (empty for the directory itself), inode, length, mtime and
/// ctime (ns).
pub type DirSignature = Vec<(String, u64, u64, i64, i64)>;

fn stamp_of(m: &std::fs::Metadata) -> (u64, u64, i64, i64) {
    use std::os::unix::fs::MetadataExt;
    (
        m.ino(),
        m.len(),
        m.mtime_nsec() + m.mtime() * 1_000_000_000,
        m.ctime_nsec() + m.ctime() * 1_000_000_000,
    )
}

/// A cheap fingerprint of the other replicas' op files (inodes, sizes, change
/// times) that tells a long-running process when to look at the content again
/// with [`has_news`]. Only a trigger: the content check decides.
///
/// The list of files is read again only when the directory itself changed
/// (adding, removing or renaming an entry always changes a directory's times),
/// and this replica's own file is left out (only this process writes it), so a
/// one-clone repository costs a single `stat` per request.
#[derive(Debug, Default)]
pub struct OpDirWatch {
    dir: Option<(u64, u64, i64, i64)>,
    foreign: Vec<(String, PathBuf)>,
}

impl OpDirWatch {
    /// The current signature.
    pub fn signature(&mut self, paths: &BeadsPaths, own: &str) -> Result<DirSignature> {
        let dir = match std::fs::metadata(paths.ops_dir()) {
            Ok(m) => stamp_of(&m),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.dir = None;
                self.foreign.clear();
                return Ok(Vec::new());
            }
            Err(e) => return Err(e.into()),
        };
        if self.dir != Some(dir) {
            self.foreign = op_files(paths)?
                .into_iter()
                .filter(|(r, _)| r != own)
                .collect();
            self.dir = Some(dir);
        }
        let mut sig = vec![(String::new(), dir.0, dir.1, dir.2, dir.3)];
        for (replica, path) in &self.foreign {
            match std::fs::metadata(path) {
                Ok(m) => {
                    let (ino, len, mt, ct) = stamp_of(&m);
                    sig.push((replica.clone(), ino, len, mt, ct));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(sig)
    }
}

/// Reads a whole op file and reports every line that is not a sealed op of its
/// replica, and a torn last line. Returns the number of good ops too.
pub fn scan_file(replica: &str, path: &Path) -> Result<(u64, Vec<LineProblem>)> {
    let bytes = std::fs::read(path).map_err(|e| crate::jsonl::io_at(path, e))?;
    let shown = path.display().to_string();
    let mut problems = Vec::new();
    let mut good = 0;
    let mut rest: &[u8] = &bytes;
    let mut line_no = 0u64;
    while !rest.is_empty() {
        line_no += 1;
        let (line, torn) = match rest.iter().position(|b| *b == b'\n') {
            Some(nl) => {
                let l = &rest[..nl];
                rest = &rest[nl + 1..];
                (l, false)
            }
            None => {
                let l = rest;
                rest = &[];
                (l, true)
            }
        };
        if torn {
            problems.push(LineProblem {
                file: shown.clone(),
                line: line_no,
                problem: format!("torn last line ({} bytes without a newline)", line.len()),
            });
            break;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let problem = match serde_json::from_slice::<Op>(line) {
            Err(_) if crate::gitsync::hooks::is_conflict_marker(line) => Some(
                "a git conflict marker (an unfinished merge): `bd doctor --fix` resolves the file as the union of both sides' ops"
                    .to_string(),
            ),
            Err(e) => Some(format!("not an op: {e}")),
            Ok(op) if !op.is_sealed() => {
                Some(format!("op {:?} does not match its content hash", op.op_id))
            }
            Ok(op) if op.replica != replica => Some(format!(
                "op of replica {:?} in another replica's file",
                op.replica
            )),
            Ok(op) => op
                .malformed()
                .map(|what| format!("op {:?}: {what}; not applied", op.op_id)),
        };
        match problem {
            Some(problem) => problems.push(LineProblem {
                file: shown.clone(),
                line: line_no,
                problem,
            }),
            None => good += 1,
        }
    }
    Ok((good, problems))
}
