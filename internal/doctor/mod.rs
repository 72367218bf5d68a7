//! `bd doctor`: checks a tracker's health, and with `fix`, repairs what is safe.
//!
//! Safe repairs: reinstall hooks and the merge driver, rewrite this replica's
//! own op file from the database (the database is the durable record), and
//! regenerate the snapshot and conflicts files. Never repaired by hand: other
//! replicas' op files (their owners' data; a torn tail completes with the next
//! pull) and a damaged database (`bd rebuild` replaces it from the op files).

mod op_file;

use crate::exchange::LineProblem;
use crate::gitsync::Repo;
use crate::storage::{BeadsPaths, Store};
use crate::{ErrorKind, Result};
use op_file::{foreign_files_check, op_files_check, own_file_check};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Fine.
    Ok,
    /// Worth knowing; nothing is wrong with the data.
    Warn,
    /// Something needs repair.
    Error,
}

/// One check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// How it came out (after any fix).
    pub level: Level,
    /// What was found.
    pub message: String,
    /// What `--fix` did about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed: Option<String>,
    /// Bad op lines, for the op file check.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<LineProblem>,
}

/// Every check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoctorReport {
    /// The checks in order.
    pub checks: Vec<Check>,
    /// Checks still at `error`.
    pub errors: u64,
    /// Checks at `warn`.
    pub warnings: u64,
}

fn check(name: &str, level: Level, message: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        level,
        message: message.into(),
        fixed: None,
        lines: Vec::new(),
    }
}

/// Runs every check; with `fix`, repairs what is safe first. `exe` is the bd
/// binary hooks should call.
pub fn run(paths: &BeadsPaths, fix: bool, exe: &Path) -> Result<DoctorReport> {
    let mut checks = Vec::new();
    let mut meter = crate::progress::Meter::start("checking the database", None);
    let store = match Store::open(&paths.db) {
        Ok(s) => Some(s),
        Err(e) => {
            let hint = if e.kind == ErrorKind::NotInitialized {
                "run `bd init` (a fresh clone gets every issue from the op files)"
            } else {
                "`bd rebuild` makes a new database from the op files"
            };
            checks.push(check(
                "database",
                Level::Error,
                format!("{}; {hint}", e.message),
            ));
            None
        }
    };
    if let Some(store) = &store {
        checks.push(database_check(store));
    }
    meter.next("checking the op files");
    checks.push(op_files_check(paths, store.as_ref(), fix)?);
    if let Some(store) = &store {
        checks.push(own_file_check(paths, store, fix)?);
    }
    checks.push(foreign_files_check(
        paths,
        store.as_ref().map(Store::replica),
    )?);
    if let Some(store) = &store {
        // A damaged database is the database check's to report.
        checks.push(values_check(store).unwrap_or_else(|e| {
            check(
                "values",
                Level::Warn,
                format!("cannot read the issues' statuses and types: {}", e.message),
            )
        }));
    }
    if let Some(store) = store {
        meter.next("checking the snapshot");
        checks.push(snapshot_check(store, paths, fix)?);
    }
    meter.next("checking config, hooks and daemon");
    checks.push(config_check(paths));
    checks.push(gitignore_check(paths, fix)?);
    checks.extend(git_checks(paths, fix, exe));
    checks.push(daemon_check(paths));
    for c in &mut checks {
        // A repaired check says what it found as what it was, without the
        // advice to run the repair.
        if c.fixed.is_some() && c.level == Level::Ok {
            if let Some(at) = c.message.find("; `bd doctor --fix`") {
                c.message.truncate(at);
            }
            c.message = format!("was: {}", c.message);
        }
    }
    let errors = checks.iter().filter(|c| c.level == Level::Error).count() as u64;
    let warnings = checks.iter().filter(|c| c.level == Level::Warn).count() as u64;
    Ok(DoctorReport {
        checks,
        errors,
        warnings,
    })
}

fn database_check(store: &Store) -> Check {
    let result: std::result::Result<Vec<String>, rusqlite::Error> = store
        .conn()
        .prepare("PRAGMA integrity_check")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect());
    match result {
        Ok(rows) if rows == ["ok"] => {
            let held = crate::exchange::held_op_count(store.conn()).unwrap_or(0);
            if held > 0 {
                check(
                    "database",
                    Level::Warn,
                    format!(
                        "integrity ok; {held} op(s) from other clones held for clock skew (see `bd conflicts`)"
                    ),
                )
            } else {
                check("database", Level::Ok, "integrity ok")
            }
        }
        Ok(rows) => check(
            "database",
            Level::Error,
            format!(
                "integrity check failed: {}; `bd rebuild` makes a new database from the op files",
                rows.join("; ")
            ),
        ),
        Err(e) => check(
            "database",
            Level::Error,
            format!(
                "cannot check integrity: {e}; `bd rebuild` makes a new database from the op files (the damaged one is kept beside it)"
            ),
        ),
    }
}

fn snapshot_check(mut store: Store, paths: &BeadsPaths, fix: bool) -> Result<Check> {
    let state = crate::jsonl::snapshot_state(&store)?;
    let text = std::fs::read_to_string(paths.snapshot()).unwrap_or_default();
    let markers = text.lines().any(is_marker);
    // Every line is one issue record; anything else (text appended by hand or
    // by a tool) is reported with its line number.
    let garbage: Vec<LineProblem> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .filter(|(_, l)| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(|_| ()))
                .is_none()
        })
        .map(|(n, _)| LineProblem {
            file: paths.snapshot().display().to_string(),
            line: n as u64 + 1,
            problem: "not an issue record".into(),
        })
        .collect();
    let mut c = if markers {
        check(
            "snapshot",
            Level::Error,
            "issues.jsonl holds merge conflict markers; `bd doctor --fix` regenerates it",
        )
    } else if !garbage.is_empty() {
        let mut c = check(
            "snapshot",
            Level::Error,
            format!(
                "issues.jsonl has {} line(s) that are not issue records; `bd doctor --fix` regenerates it from the database",
                garbage.len()
            ),
        );
        c.lines = garbage;
        c
    } else if state.dirty {
        check(
            "snapshot",
            Level::Warn,
            "issues.jsonl is behind the database (written at the next flush or sync)",
        )
    } else if !crate::jsonl::snapshot_as_written(&store, paths)? {
        check(
            "snapshot",
            Level::Warn,
            if paths.snapshot().exists() {
                "issues.jsonl is not what bd wrote (edited since?): the database is the truth, and the next flush writes it again; `bd doctor --fix` does now"
            } else {
                "issues.jsonl is missing (written at the next flush or sync; `bd doctor --fix` writes it now)"
            },
        )
    } else {
        check("snapshot", Level::Ok, "issues.jsonl is current")
    };
    if fix && c.level != Level::Ok {
        // Derived: rewritten from the database. What the rewrite would drop
        // that might be someone's data (a line that is not an issue record,
        // a record of an issue this database has no op of) is kept first.
        let fresh = store.read(|conn| crate::jsonl::render_snapshot(&crate::query::all_issues(conn)?))?;
        let fresh: std::collections::HashSet<&str> = fresh.lines().collect();
        let dropped: Vec<&str> = text
            .lines()
            .filter(|l| !(l.trim().is_empty() || fresh.contains(l) || markers && is_marker(l)))
            .collect();
        let kept = keep_lines(paths, "snapshot", &dropped)?;
        crate::jsonl::write_snapshot(&mut store, paths)?;
        c.level = Level::Ok;
        c.lines.clear();
        c.fixed = Some(match kept {
            None => "regenerated issues.jsonl and conflicts.jsonl".into(),
            Some(file) => format!(
                "regenerated issues.jsonl and conflicts.jsonl; the {} line(s) it held that the database does not are kept in {} (records no clone's op file carries can be taken in with `bd import -i` that file)",
                dropped.len(),
                file.display()
            ),
        });
    }
    Ok(c)
}

fn is_marker(line: &str) -> bool {
    line.starts_with("<<<<<<<") || line.starts_with("=======") || line.starts_with(">>>>>>>")
}

/// Keeps lines a repair takes out of a file in `.beads/doctor-kept-WHAT-MS.jsonl`
/// (`--fix` never deletes what might be data). `None` when there are none.
pub(super) fn keep_lines(
    paths: &BeadsPaths,
    what: &str,
    lines: &[&str],
) -> Result<Option<std::path::PathBuf>> {
    if lines.is_empty() {
        return Ok(None);
    }
    let ms = crate::api::time::now_ms();
    let path = paths.dir.join(format!("doctor-kept-{what}-{ms}.jsonl"));
    let mut text = lines.join("\n");
    text.push('\n');
    crate::jsonl::atomic_write(&path, text.as_bytes())?;
    Ok(Some(path))
}

/// Statuses and types in use that bd does not model (kept from imports:
/// beads data has them). Worth knowing, not wrong: `ready` and `blocked`
/// treat such a status as neither open nor closed.
fn values_check(store: &Store) -> Result<Check> {
    let mut found = Vec::new();
    for (column, what) in [("status", "status"), ("issue_type", "type")] {
        let mut stmt = store.conn().prepare(&format!(
            "SELECT {column}, COUNT(*) FROM issues GROUP BY {column} ORDER BY {column}"
        ))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        for (value, n) in rows {
            let other = match column {
                "status" => matches!(
                    crate::model::Status::from_wire(&value),
                    crate::model::Status::Other(_)
                ),
                _ => matches!(
                    crate::model::IssueType::from_wire(&value),
                    crate::model::IssueType::Other(_)
                ),
            };
            if other {
                found.push(format!("{what} {value:?} ({n} issue(s))"));
            }
        }
    }
    Ok(if found.is_empty() {
        check(
            "values",
            Level::Ok,
            "every status and type is one bd models",
        )
    } else {
        check(
            "values",
            Level::Warn,
            format!(
                "kept from imports, not modelled by bd: {}; `bd update ID --status open` (or --type) maps one",
                found.join(", ")
            ),
        )
    })
}

/// `.beads/config.json` is read by every command: one that does not parse
/// stops them all. Never rewritten here (it holds the user's settings).
fn config_check(paths: &BeadsPaths) -> Check {
    match crate::config::Config::load(&paths.config()) {
        Ok(_) => check("config", Level::Ok, "config.json reads"),
        Err(e) => check(
            "config",
            Level::Error,
            format!(
                "{} does not read: {}; fix it by hand (a JSON object such as {{\"prefix\": \"bd\"}}), or `git checkout -- {}` for the committed one",
                paths.config().display(),
                e.message,
                paths.config().display()
            ),
        ),
    }
}

/// `.beads/.gitignore` must keep every per-clone file out of git; a tracker made
/// by an older bd may lack newer patterns (e.g. `*.db.*` for a rebuild's backup).
fn gitignore_check(paths: &BeadsPaths, fix: bool) -> Result<Check> {
    let path = paths.dir.join(".gitignore");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let have: std::collections::BTreeSet<&str> = text.lines().map(str::trim).collect();
    let missing: Vec<&str> = crate::client::BEADS_GITIGNORE
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty() && !have.contains(l.trim()))
        .collect();
    if missing.is_empty() {
        return Ok(check(
            ".gitignore",
            Level::Ok,
            "keeps every per-clone file out of git",
        ));
    }
    let mut c = check(
        ".gitignore",
        Level::Warn,
        format!("does not ignore {}", missing.join(" ")),
    );
    if fix {
        let mut new = text.clone();
        if !new.is_empty() && !new.ends_with('\n') {
            new.push('\n');
        }
        if new.is_empty() {
            new.push_str(crate::client::BEADS_GITIGNORE);
        } else {
            for m in &missing {
                new.push_str(m);
                new.push('\n');
            }
        }
        crate::jsonl::atomic_write(&path, new.as_bytes())?;
        c.level = Level::Ok;
        c.fixed = Some(format!("added {}", missing.join(" ")));
    }
    Ok(c)
}

fn git_checks(paths: &BeadsPaths, fix: bool, exe: &Path) -> Vec<Check> {
    let repo = match Repo::open(paths) {
        Ok(r) => r,
        Err(e) => return vec![check("git", Level::Warn, e.message)],
    };
    let mut out = Vec::new();
    let hooks = match repo.hook_states() {
        Ok(h) => h,
        Err(e) => return vec![check("hooks", Level::Error, e.message)],
    };
    let missing: Vec<&str> = hooks
        .iter()
        .filter(|h| h.installed != "bd" || h.stale)
        .map(|h| h.name.as_str())
        .collect();
    let mut c = if missing.is_empty() {
        check(
            "hooks",
            Level::Ok,
            "pre-commit, post-merge, post-checkout installed",
        )
    } else {
        check(
            "hooks",
            Level::Warn,
            format!("not installed or stale: {}", missing.join(", ")),
        )
    };
    if fix && !missing.is_empty() {
        match repo.install_hooks(exe) {
            Ok(_) => {
                c.level = Level::Ok;
                c.fixed = Some("installed bd's hooks (existing ones chained)".into());
            }
            Err(e) => c.message = format!("{}; install failed: {}", c.message, e.message),
        }
    }
    out.push(c);
    let ok = repo.merge_driver_ok().unwrap_or(false);
    let mut c = if ok {
        check(
            "merge driver",
            Level::Ok,
            "registered for issues.jsonl and conflicts.jsonl",
        )
    } else {
        check(
            "merge driver",
            Level::Warn,
            "not registered, or registered by an older bd or a binary that is gone (a git merge could leave conflict markers in issues.jsonl)",
        )
    };
    if fix && !ok {
        match repo.register_merge_driver(exe) {
            Ok(()) => {
                c.level = Level::Ok;
                c.fixed = Some("registered the merge driver".into());
            }
            Err(e) => c.message = format!("{}; registering failed: {}", c.message, e.message),
        }
    }
    out.push(c);
    out
}

fn daemon_check(paths: &BeadsPaths) -> Check {
    match crate::daemon::running(paths) {
        Ok(None) => check(
            "daemon",
            Level::Ok,
            "not running (the next command starts one if wanted)",
        ),
        Ok(Some(Some(record))) => {
            let connects = crate::client::DaemonClient::connect(
                &record.socket,
                "doctor",
                std::time::Duration::from_secs(2),
            )
            .and_then(|mut c| c.status());
            match connects {
                Ok(s) if s.version == env!("CARGO_PKG_VERSION") => check(
                    "daemon",
                    match &s.last_error {
                        Some(_) => Level::Warn,
                        None => Level::Ok,
                    },
                    match &s.last_error {
                        Some(e) => format!("pid {} serving; last error: {e}", s.pid),
                        None => format!("pid {} serving, {} requests", s.pid, s.requests),
                    },
                ),
                Ok(s) => check(
                    "daemon",
                    Level::Warn,
                    format!(
                        "pid {} runs bd {} (this is {}); the next command replaces it",
                        s.pid,
                        s.version,
                        env!("CARGO_PKG_VERSION")
                    ),
                ),
                Err(e) => check(
                    "daemon",
                    Level::Error,
                    format!(
                        "pid {} holds the lock but does not answer: {}",
                        record.pid, e.message
                    ),
                ),
            }
        }
        Ok(Some(None)) => check("daemon", Level::Ok, "starting"),
        Err(e) => check("daemon", Level::Warn, format!("cannot tell: {}", e.message)),
    }
}
