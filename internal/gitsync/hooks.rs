//! Git integration installed by `bd init`: hooks that keep bd's files fresh around
//! the user's own git commands, and a merge driver for the derived files.
//!
//! - pre-commit: flush ops and snapshot and stage bd's files.
//! - post-merge, post-checkout: apply the ops that arrived, regenerate the snapshot.
//! - `merge=bd` (in `.beads/.gitattributes`) for issues.jsonl and conflicts.jsonl:
//!   keeps this side's text (never conflict markers); the post-merge hook (or the
//!   next bd command's flush) regenerates the file from the merged ops.
//!
//! A user's existing hook is never replaced: it is moved to `<hook>.bd-chained`
//! and bd's hook runs it first (its failure still fails the git command);
//! uninstalling puts it back. `core.hooksPath` is honoured.

use super::Repo;
use crate::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The hooks bd installs.
pub const HOOKS: &[&str] = &["pre-commit", "post-merge", "post-checkout"];

/// First lines of every hook bd writes; how bd recognises its own.
const MARKER: &str = "# bd-hook: installed by bd (`bd hooks uninstall` removes it)";

/// One hook's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookState {
    /// Hook name.
    pub name: String,
    /// Where it lives.
    pub path: String,
    /// `bd` (ours), `other` (someone else's, not chained), or `missing`.
    pub installed: String,
    /// A user's hook that bd's runs first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chained: Option<String>,
    /// The bd binary ours calls no longer exists (`bd hooks install` fixes it).
    #[serde(default)]
    pub stale: bool,
}

impl Repo {
    /// The hooks directory: `core.hooksPath` (relative to the work tree) or
    /// `.git/hooks`.
    pub fn hooks_dir(&self) -> Result<PathBuf> {
        let config = self
            .repo
            .config()
            .map_err(|e| super::git_error("reading config", e))?;
        Ok(match config.get_path("core.hooksPath") {
            Ok(p) if p.is_absolute() => p,
            Ok(p) => self.workdir.join(p),
            Err(_) => self.repo.path().join("hooks"),
        })
    }

    /// Installs (or refreshes) bd's hooks, chaining any existing ones.
    pub fn install_hooks(&self, exe: &Path) -> Result<Vec<HookState>> {
        let dir = self.hooks_dir()?;
        std::fs::create_dir_all(&dir)?;
        for name in HOOKS {
            let path = dir.join(name);
            let chained = dir.join(format!("{name}.bd-chained"));
            if let Ok(text) = std::fs::read_to_string(&path)
                && !text.contains(MARKER)
            {
                if chained.exists() {
                    return Err(Error::new(
                        ErrorKind::Exists,
                        format!(
                            "{} and {} both exist; bd will not overwrite either",
                            path.display(),
                            chained.display()
                        ),
                    )
                    .hint("merge them into one hook by hand, then run `bd hooks install`"));
                }
                std::fs::rename(&path, &chained)?;
            } else if path.exists() && std::fs::read_to_string(&path).is_err() {
                // A hook that is not text (a compiled program): chain it as well.
                if chained.exists() {
                    return Err(Error::new(
                        ErrorKind::Exists,
                        format!("{} and {} both exist", path.display(), chained.display()),
                    )
                    .hint("merge them into one hook by hand, then run `bd hooks install`"));
                }
                std::fs::rename(&path, &chained)?;
            }
            // A hooks directory inside the work tree (husky's `.husky/`) is
            // usually committed: it must not hold this machine's path to bd.
            let shared = dir.starts_with(&self.workdir) && !dir.starts_with(self.repo.path());
            write_executable(&path, &hook_script(name, (!shared).then_some(exe)))?;
        }
        self.hook_states()
    }

    /// Removes bd's hooks and puts chained ones back.
    pub fn uninstall_hooks(&self) -> Result<Vec<HookState>> {
        let dir = self.hooks_dir()?;
        for name in HOOKS {
            let path = dir.join(name);
            let chained = dir.join(format!("{name}.bd-chained"));
            let ours = std::fs::read_to_string(&path).is_ok_and(|t| t.contains(MARKER));
            if ours {
                std::fs::remove_file(&path)?;
                if chained.exists() {
                    std::fs::rename(&chained, &path)?;
                }
            }
        }
        self.hook_states()
    }

    /// What is installed.
    pub fn hook_states(&self) -> Result<Vec<HookState>> {
        let dir = self.hooks_dir()?;
        let mut out = Vec::new();
        for name in HOOKS {
            let path = dir.join(name);
            let chained = dir.join(format!("{name}.bd-chained"));
            let text = std::fs::read_to_string(&path).ok();
            let (installed, stale) = match &text {
                Some(t) if t.contains(MARKER) && t.contains("command -v bd") => {
                    ("bd", !bd_on_path())
                }
                Some(t) if t.contains(MARKER) => ("bd", !hook_exe_exists(t)),
                Some(_) => ("other", false),
                None if path.exists() => ("other", false),
                None => ("missing", false),
            };
            out.push(HookState {
                name: name.to_string(),
                path: path.display().to_string(),
                installed: installed.into(),
                chained: chained.exists().then(|| chained.display().to_string()),
                stale,
            });
        }
        Ok(out)
    }

    /// Registers the `bd` merge driver in `.git/config` and marks the derived
    /// files with it in `.beads/.gitattributes`.
    pub fn register_merge_driver(&self, exe: &Path) -> Result<()> {
        let mut config = self
            .repo
            .config()
            .and_then(|c| c.open_level(git2::ConfigLevel::Local))
            .map_err(|e| super::git_error("opening .git/config", e))?;
        config
            .set_str(
                "merge.bd.name",
                "bd: derived file, regenerated from the ops",
            )
            .and_then(|()| {
                config.set_str(
                    "merge.bd.driver",
                    // Should bd be gone, the merge stops with a conflict: op
                    // files merge through this driver, and keeping one side's
                    // text would drop the other side's ops without a word.
                    &format!("{} merge-driver %O %A %B %P", shell_quote(exe)),
                )
            })
            .map_err(|e| super::git_error("writing .git/config", e))?;
        let attrs = self.paths.dir.join(".gitattributes");
        let want = GITATTRIBUTES;
        if std::fs::read_to_string(&attrs).ok().as_deref() != Some(want) {
            crate::jsonl::atomic_write(&attrs, want.as_bytes())?;
        }
        Ok(())
    }

    /// Whether the merge driver is registered and marked, and its binary exists.
    pub fn merge_driver_ok(&self) -> Result<bool> {
        let config = self
            .repo
            .config()
            .map_err(|e| super::git_error("reading config", e))?;
        let driver = config.get_string("merge.bd.driver").ok();
        let attrs = std::fs::read_to_string(self.paths.dir.join(".gitattributes")).ok();
        // Registered as this bd registers it now (an older form is refreshed by
        // `bd doctor --fix`), with a binary that exists.
        let current =
            |d: &str| hook_exe_exists(d) && d.ends_with("merge-driver %O %A %B %P");
        Ok(driver.is_some_and(|d| current(&d)) && attrs.as_deref() == Some(GITATTRIBUTES))
    }
}

/// `.beads/.gitattributes`: bd's files merge with the bd driver: the derived
/// files by record, the op files as sets of ops.
pub const GITATTRIBUTES: &str = "# bd: derived files are regenerated from the ops, never merged as text;\n# op files are sets of ops and the members file a set of keys, merged as their union\nissues.jsonl merge=bd\nconflicts.jsonl merge=bd\nops/*.jsonl merge=bd\nmembers.jsonl merge=bd\n";

/// The hook: run the user's chained hook (its failure fails the git command),
/// then bd's work, which never fails it: a missing bd binary is reported and
/// skipped.
fn hook_script(name: &str, exe: Option<&Path>) -> String {
    // `None`: the `bd` on PATH (for a hooks directory that is committed).
    let (find, gone) = match exe {
        Some(exe) => (
            format!("bd={}", shell_quote(exe)),
            "$bd is gone".to_string(),
        ),
        None => (
            "bd=\"$(command -v bd)\"".to_string(),
            "bd is not on PATH".to_string(),
        ),
    };
    format!(
        "#!/bin/sh\n{MARKER}\n\
         hook=\"$(dirname \"$0\")/{name}.bd-chained\"\n\
         if [ -x \"$hook\" ]; then \"$hook\" \"$@\" || exit $?; fi\n\
         {find}\n\
         if [ -z \"$bd\" ] || [ ! -x \"$bd\" ]; then\n\
         \techo \"bd: {gone}; skipping bd's {name} hook (run \\`bd hooks install\\`)\" >&2\n\
         \texit 0\n\
         fi\n\
         exec \"$bd\" hooks run {name} \"$@\"\n"
    )
}

/// Whether the first absolute path quoted in a hook or driver line exists.
fn hook_exe_exists(text: &str) -> bool {
    text.split('\'')
        .nth(1)
        .is_some_and(|p| Path::new(p).is_file())
}

/// Whether a `bd` is on this process's PATH (what a PATH hook would run).
fn bd_on_path() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join("bd").is_file()))
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

fn write_executable(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    crate::jsonl::atomic_write(path, text.as_bytes())?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The merge driver: git gives the ancestor, ours (`%A`, where the result goes)
/// and theirs. The files are derived, one JSON record per line keyed by issue id
/// (or issue and field, for conflicts), so this merges by key: a record only one
/// side changed takes that side's version, a record both changed keeps ours, a
/// record one side removed and the other left alone goes. The result never holds
/// conflict markers, and the post-merge hook then regenerates the file exactly
/// from the merged ops.
///
/// An op file (`path`, git's `%P`, under `ops/`) is a set of ops keyed by op
/// id, so it merges as the union of both sides ([`union_ops`]): never a
/// conflict, and the same bytes whichever side merges.
pub fn merge_driver(ancestor: &Path, ours: &Path, theirs: &Path, path: Option<&str>) -> Result<()> {
    let read = |p: &Path| std::fs::read(p).unwrap_or_default();
    let merged = if path.is_some_and(is_op_file_path) {
        union_ops(&[&read(ours), &read(theirs)])
    } else if path.is_some_and(|p| Path::new(p).file_name() == Some("members.jsonl".as_ref())) {
        union_lines(&read(ours), &read(theirs))
    } else {
        merge_records(&read(ancestor), &read(ours), &read(theirs))
    };
    std::fs::write(ours, merged).map_err(|e| crate::jsonl::io_at(ours, e))?;
    Ok(())
}

/// The members file merged as a set of lines: ours, then theirs' lines ours
/// lacks, each once (never a conflict; no key is dropped).
pub fn union_lines(ours: &[u8], theirs: &[u8]) -> Vec<u8> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for line in ours.split(|b| *b == b'\n').chain(theirs.split(|b| *b == b'\n')) {
        if !line.is_empty() && !is_conflict_marker(line) && seen.insert(line) {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
    }
    out
}

/// Whether a repository path names an op file (`…/ops/<replica>.jsonl`).
pub fn is_op_file_path(path: &str) -> bool {
    let p = Path::new(path);
    p.extension().is_some_and(|e| e == "jsonl")
        && p.parent()
            .and_then(Path::file_name)
            .is_some_and(|d| d == "ops")
}

/// Whether a line is one of git's conflict markers.
pub fn is_conflict_marker(line: &[u8]) -> bool {
    [b"<<<<<<<".as_slice(), b"=======", b">>>>>>>", b"|||||||"]
        .iter()
        .any(|m| line.starts_with(m))
}

/// The union of op files' lines as one op file: each op once (by op id), in
/// (seq, op id) order; lines that are not ops (damage, for `bd doctor` to
/// report) follow, each once, in byte order; conflict markers and blank lines
/// go. Deterministic: the same ops give the same bytes in any input order.
pub fn union_ops(files: &[&[u8]]) -> Vec<u8> {
    let mut ops = std::collections::BTreeMap::new();
    let mut other = std::collections::BTreeSet::new();
    for file in files {
        for line in file.split(|b| *b == b'\n') {
            if line.iter().all(u8::is_ascii_whitespace) || is_conflict_marker(line) {
                continue;
            }
            match serde_json::from_slice::<crate::model::Op>(line) {
                Ok(op) => {
                    ops.entry((op.seq, op.op_id)).or_insert(line);
                }
                Err(_) => {
                    other.insert(line);
                }
            }
        }
    }
    let mut out = Vec::new();
    for line in ops.values().copied().chain(other) {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out
}

fn records(text: &[u8]) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    for line in text.split(|b| *b == b'\n') {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue; // blank lines, conflict markers, damage
        };
        let key = match (v.get("id"), v.get("issue_id"), v.get("field")) {
            (Some(id), _, _) => id.to_string(),
            (None, Some(issue), Some(field)) => format!("{issue}\u{1f}{field}"),
            _ => continue,
        };
        out.insert(key, line.to_vec());
    }
    out
}

/// Three-way merge of derived JSONL files by record key (see [`merge_driver`]).
pub fn merge_records(ancestor: &[u8], ours: &[u8], theirs: &[u8]) -> Vec<u8> {
    let (base, mine, other) = (records(ancestor), records(ours), records(theirs));
    let keys: std::collections::BTreeSet<&String> =
        base.keys().chain(mine.keys()).chain(other.keys()).collect();
    let mut out = Vec::new();
    for key in keys {
        let (b, m, o) = (base.get(key), mine.get(key), other.get(key));
        let pick = if m == o {
            m
        } else if m == b {
            o
        } else {
            m
        };
        if let Some(line) = pick {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    /// The members file merges as a set of lines: both sides' keys, each
    /// once, ours first; stray conflict markers are dropped.
    #[test]
    fn members_lines_merge_as_their_union() {
        let ours = b"{\"replica\":\"a\"}\n{\"replica\":\"b\"}\n";
        let theirs = b"{\"replica\":\"a\"}\n<<<<<<< x\n{\"replica\":\"c\"}\n";
        assert_eq!(
            super::union_lines(ours, theirs),
            b"{\"replica\":\"a\"}\n{\"replica\":\"b\"}\n{\"replica\":\"c\"}\n".to_vec()
        );
    }

    use super::{merge_records, union_ops};

    fn op_line(seq: u64, title: &str) -> String {
        let op = crate::model::Op {
            op_id: String::new(),
            issue: format!("t-{seq}"),
            of: None,
            kind: crate::model::OpKind::Create,
            field: None,
            value: serde_json::json!({ "title": title }),
            supersedes: vec![],
            fence: None,
            hlc: Default::default(),
            actor: "a".into(),
            replica: "r".into(),
            seq,
        }
        .seal();
        serde_json::to_string(&op).unwrap()
    }

    #[test]
    fn op_files_merge_as_the_same_union_in_any_order() {
        let (a, b, c) = (op_line(1, "a"), op_line(2, "b"), op_line(3, "c"));
        let ours = format!("{a}\n{b}\n");
        let theirs = format!("{a}\n{c}\n<<<<<<< x\ngarbage\n");
        let one = union_ops(&[ours.as_bytes(), theirs.as_bytes()]);
        let two = union_ops(&[theirs.as_bytes(), ours.as_bytes()]);
        assert_eq!(one, two, "deterministic");
        assert_eq!(
            String::from_utf8(one).unwrap(),
            format!("{a}\n{b}\n{c}\ngarbage\n"),
            "each op once in seq order, damage kept for doctor, markers gone"
        );
    }

    #[test]
    fn merges_by_record_and_never_leaves_markers() {
        let base = b"{\"id\":\"a\",\"v\":1}\n{\"id\":\"b\",\"v\":1}\n{\"id\":\"c\",\"v\":1}\n";
        let ours = b"{\"id\":\"a\",\"v\":2}\n{\"id\":\"b\",\"v\":1}\n<<<<<<< x\n";
        let theirs = b"{\"id\":\"a\",\"v\":3}\n{\"id\":\"b\",\"v\":4}\n{\"id\":\"c\",\"v\":1}\n{\"id\":\"d\",\"v\":1}\n";
        let merged = String::from_utf8(merge_records(base, ours, theirs)).unwrap();
        // a: both changed, ours kept; b: only theirs changed; c: we removed it;
        // d: theirs added it.
        assert_eq!(
            merged,
            "{\"id\":\"a\",\"v\":2}\n{\"id\":\"b\",\"v\":4}\n{\"id\":\"d\",\"v\":1}\n"
        );
    }
}
