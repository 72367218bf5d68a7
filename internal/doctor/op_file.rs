//! The op-file checks: every line of every op file sound (with `fix`, conflict
//! markers resolved as the union and this replica's file rewritten), this
//! replica's own file mirroring the database, and other clones' files in order.

use super::{Check, Level, check};
use crate::Result;
use crate::exchange::{LineProblem, op_files, scan_file};
use crate::storage::{BeadsPaths, Store};
use std::path::Path;

pub(super) fn op_files_check(
    paths: &BeadsPaths,
    store: Option<&Store>,
    fix: bool,
) -> Result<Check> {
    let own = store.map(|s| s.replica().to_string());
    let mut lines = Vec::new();
    let mut ops = 0;
    let files = op_files(paths)?;
    // A merge made without bd's driver leaves both sides' lines between
    // conflict markers: the merged file is their union.
    let mut unioned = Vec::new();
    if fix {
        for (_, path) in &files {
            let bytes = std::fs::read(path).map_err(|e| crate::jsonl::io_at(path, e))?;
            if bytes
                .split(|b| *b == b'\n')
                .any(crate::gitsync::hooks::is_conflict_marker)
            {
                let _lock = crate::jsonl::FlushLock::acquire(paths)?;
                crate::jsonl::atomic_write(path, &crate::gitsync::hooks::union_ops(&[&bytes]))?;
                unioned.push(path.display().to_string());
            }
        }
    }
    let mut own_bad = false;
    for (replica, path) in &files {
        let (good, problems) = scan_file(replica, path)?;
        ops += good;
        if Some(replica) == own.as_ref() && !problems.is_empty() {
            own_bad = true;
        }
        lines.extend(problems);
    }
    let mut c = check(
        "op files",
        Level::Ok,
        format!("{} file(s), {ops} op(s), every line sound", files.len()),
    );
    if !lines.is_empty() {
        c.level = Level::Error;
        let cure = if own_bad {
            "; `bd doctor --fix` rewrites this clone's file from the database"
        } else {
            "; all in other clones' files: bd skips those lines, and each owner's next flush rewrites its file"
        };
        c.message = format!(
            "{} bad line(s) in {} file(s) (listed with file:line){cure}",
            lines.len(),
            lines
                .iter()
                .map(|l| &l.file)
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        );
        c.lines = lines;
    }
    if !unioned.is_empty() {
        c.fixed = Some(format!(
            "resolved conflict markers in {} as the union of both sides' ops",
            unioned.join(", ")
        ));
    }
    if fix
        && own_bad
        && let Some(store) = store
    {
        // This replica's file is derived from its database: rewrite it
        // (sound ops the database lacks are taken in first), keeping the
        // lines that could not be read.
        if let Some(own) = &own {
            let path = paths.op_file(own);
            let text = std::fs::read(&path).map_err(|e| crate::jsonl::io_at(&path, e))?;
            let bad: std::collections::BTreeSet<u64> = c
                .lines
                .iter()
                .filter(|l| Path::new(&l.file) == path)
                .map(|l| l.line)
                .collect();
            let unreadable: Vec<String> = text
                .split(|b| *b == b'\n')
                .enumerate()
                .filter(|(i, _)| bad.contains(&(*i as u64 + 1)))
                .map(|(_, l)| String::from_utf8_lossy(l).into_owned())
                .collect();
            let unreadable: Vec<&str> = unreadable.iter().map(String::as_str).collect();
            let kept = super::keep_lines(paths, &format!("ops-{own}"), &unreadable)?;
            crate::jsonl::rewrite_own_ops(store, paths)?;
            c.lines.retain(|l| Path::new(&l.file) != path);
            c.fixed = Some(match kept {
                None => format!("rewrote {} from the database", path.display()),
                Some(k) => format!(
                    "rewrote {} from the database; its {} unreadable line(s) are kept in {}",
                    path.display(),
                    unreadable.len(),
                    k.display()
                ),
            });
            if c.lines.is_empty() {
                c.level = Level::Ok;
            } else {
                c.message = format!(
                    "{} bad line(s) left in other clones' files (their owners' data: a torn tail completes with the next pull)",
                    c.lines.len()
                );
            }
        }
    }
    Ok(c)
}

/// This clone's own op file is written from its database, so it must mirror
/// it: every op once, in `seq` order. An op the database lacks was written by
/// another clone with the same replica id (a copied `.beads/beads.db`):
/// catch-up never reads the own file, so those ops would otherwise never be
/// applied here. A line that repeats an op, or comes out of order, is repaired
/// by `--fix` (rewriting the file from the database), unless the file also
/// holds ops the database lacks (those must be read by `bd rebuild --force`
/// first).
pub(super) fn own_file_check(paths: &BeadsPaths, store: &Store, fix: bool) -> Result<Check> {
    if let Some(remembered) = crate::storage::sqlite::remembered_replica(&paths.db)
        && remembered != store.replica()
    {
        // A database copied in from another clone: every write made here
        // would be recorded as that clone's.
        return Ok(check(
            "replica",
            Level::Error,
            format!(
                "the database's replica id {} is not this clone's ({remembered}, in {}): was beads.db copied from another clone? Its writes here are recorded as that clone's; move it aside (`mv {} {}.copied`) and run `bd rebuild`, which rebuilds this clone's database under its own id",
                store.replica(),
                crate::storage::sqlite::replica_file(&paths.db).display(),
                paths.db.display(),
                paths.db.display(),
            ),
        ));
    }
    let path = paths.op_file(store.replica());
    let text = std::fs::read(&path).unwrap_or_default();
    let mut known = store
        .conn()
        .prepare("SELECT EXISTS(SELECT 1 FROM ops WHERE op_id = ?1)")?;
    let (mut missing, mut repeated, mut disordered, mut shared) = (0u64, 0u64, 0u64, 0u64);
    let mut seen = std::collections::HashSet::new();
    let mut last_seq = 0u64;
    let mut lines = Vec::new();
    for (i, line) in text.split(|b| *b == b'\n').enumerate() {
        let Ok(op) = serde_json::from_slice::<crate::model::Op>(line) else {
            continue; // unreadable lines are the op-file check's business
        };
        if !op.is_sealed() {
            // A line whose content does not match its op id is damage (the
            // op-file check lists it), not another copy's op.
            continue;
        }
        let problem = |what: String| LineProblem {
            file: path.display().to_string(),
            line: i as u64 + 1,
            problem: what,
        };
        if !seen.insert(op.op_id.clone()) {
            repeated += 1;
            lines.push(problem(format!("op {} (seq {}) again", op.op_id, op.seq)));
            continue;
        }
        if op.seq == last_seq {
            // Two different ops with one seq: two writers use this replica id.
            shared += 1;
            lines.push(problem(format!(
                "op {} is a second op with seq {}: another copy of this clone writes under its replica id",
                op.op_id, op.seq
            )));
        } else if op.seq < last_seq {
            disordered += 1;
            lines.push(problem(format!(
                "seq {} after seq {last_seq}: out of order",
                op.seq
            )));
        }
        last_seq = last_seq.max(op.seq);
        let here: bool = known.query_row([&op.op_id], |r| r.get(0))?;
        if !here {
            missing += 1;
        }
    }
    if missing + shared > 0 {
        // Never rewritten away: those ops are in git, and every other clone
        // applies them from this file.
        let mut c = check(
            "replica",
            Level::Error,
            format!(
                "another copy of this clone writes under its replica id {} ({missing} op(s) in {} not in this database, {shared} seq(s) used twice): each copy needs its own id. In the copy, remove .beads/beads.db, .beads/beads.db-wal, .beads/beads.db-shm and .beads/beads.db.replica, then run `bd init`; `bd doctor --fix` (or the next `bd sync`) takes the other copy's ops into this database",
                store.replica(),
                path.display()
            ),
        );
        c.lines = lines;
        if fix && missing > 0 {
            crate::jsonl::rewrite_own_ops(store, paths)?;
            c.fixed = Some(format!(
                "took {missing} op(s) of the other copy into this database; the file keeps them"
            ));
        }
        return Ok(c);
    }
    if repeated + disordered == 0 {
        // The file mirrors the database only if it holds all of this
        // replica's ops: a deleted or cut-short file lacks some (the next
        // flush writes them; a daemon's file may trail its last commit).
        let in_db: i64 = store.conn().query_row(
            "SELECT COUNT(*) FROM ops WHERE replica = ?1",
            [store.replica()],
            |r| r.get(0),
        )?;
        let in_db = in_db as u64;
        let lacking = in_db.saturating_sub(seen.len() as u64);
        if lacking > 0 {
            let mut c = check(
                "replica",
                Level::Warn,
                format!(
                    "{} lacks {lacking} of this clone's {in_db} op(s) (written at the next flush; `bd doctor --fix` writes them now)",
                    path.display()
                ),
            );
            if fix {
                let n = crate::jsonl::rewrite_own_ops(store, paths)?;
                c.level = Level::Ok;
                c.fixed = Some(format!(
                    "rewrote {} from the database ({n} ops)",
                    path.display()
                ));
            }
            return Ok(c);
        }
        return Ok(check(
            "replica",
            Level::Ok,
            format!(
                "{} is this clone's own; its op file holds each op once, in order",
                store.replica()
            ),
        ));
    }
    let mut c = check(
        "replica",
        Level::Error,
        format!(
            "{} holds {repeated} repeated and {disordered} out-of-order line(s); `bd doctor --fix` rewrites it from the database",
            path.display()
        ),
    );
    c.lines = lines;
    if fix {
        let n = crate::jsonl::rewrite_own_ops(store, paths)?;
        c.level = Level::Ok;
        c.lines.clear();
        c.message = format!("{} is this clone's own", store.replica());
        c.fixed = Some(format!(
            "rewrote {} from the database ({n} ops, each once, in order)",
            path.display()
        ));
    }
    Ok(c)
}

/// Other clones' op files should hold each op once, in `seq` order, as their
/// owners write them. A repeat or a line out of order is harmless here (an
/// op applies once, in any order) but says something wrote into another
/// clone's file; its owner's next `bd flush`, `bd sync` or `bd doctor --fix`
/// rewrites it. Never repaired here: the file is its owner's data.
pub(super) fn foreign_files_check(paths: &BeadsPaths, own: Option<&str>) -> Result<Check> {
    let mut lines = Vec::new();
    let mut files = std::collections::BTreeSet::new();
    for (replica, path) in op_files(paths)? {
        if Some(replica.as_str()) == own {
            continue;
        }
        let text = std::fs::read(&path).map_err(|e| crate::jsonl::io_at(&path, e))?;
        let mut seen = std::collections::HashSet::new();
        let mut last_seq = 0u64;
        for (i, line) in text.split(|b| *b == b'\n').enumerate() {
            let Ok(op) = serde_json::from_slice::<crate::model::Op>(line) else {
                continue; // unreadable lines are the op-file check's business
            };
            let what = if !seen.insert(op.op_id.clone()) {
                format!("op {} (seq {}) again", op.op_id, op.seq)
            } else if op.seq <= last_seq {
                format!("seq {} after seq {last_seq}: out of order", op.seq)
            } else {
                last_seq = op.seq;
                continue;
            };
            last_seq = last_seq.max(op.seq);
            files.insert(path.display().to_string());
            lines.push(LineProblem {
                file: path.display().to_string(),
                line: i as u64 + 1,
                problem: what,
            });
        }
    }
    if lines.is_empty() {
        return Ok(check(
            "other clones' op files",
            Level::Ok,
            "each holds every op once, in order",
        ));
    }
    let mut c = check(
        "other clones' op files",
        Level::Warn,
        format!(
            "{} repeated or out-of-order line(s) in {}: harmless here (each op applies once), but something wrote into another clone's file; its owner's `bd doctor --fix` (or next `bd sync`) rewrites it",
            lines.len(),
            files.into_iter().collect::<Vec<_>>().join(", ")
        ),
    );
    c.lines = lines;
    Ok(c)
}
