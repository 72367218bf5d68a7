//! The derived files: `issues.jsonl` (one issue per line) and `conflicts.jsonl`,
//! rendered from one read transaction under `flush.lock` and rewritten only when
//! their bytes change; and whether they are behind the database.

use super::{FlushLock, atomic_write};
use crate::Result;
use crate::model::Issue;
use crate::query;
use crate::storage::sqlite::{meta_get, meta_set};
use crate::storage::{BeadsPaths, Store};
use serde::{Deserialize, Serialize};
use std::path::Path;

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
/// Whether `issues.jsonl` still holds exactly what bd last wrote there:
/// `false` when it was deleted or edited since; `true` when it is as written,
/// or bd has no record of writing it.
pub fn snapshot_as_written(store: &Store, paths: &BeadsPaths) -> Result<bool> {
    let Some(mark) = meta_get(store.conn(), "snapshot_mark")? else {
        return Ok(true);
    };
    let written = mark.split(':').nth(3).unwrap_or_default().to_string();
    Ok(file_digest(&paths.snapshot()).as_deref() == Some(written.as_str()))
}

fn file_digest(path: &Path) -> Option<String> {
    std::fs::read(path).ok().map(|b| digest(&b))
}
