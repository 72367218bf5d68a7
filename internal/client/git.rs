//! The tracker's place in its git repository: the hooks that keep bd's files
//! fresh around the user's own git commands, and the merge driver for them.

pub use crate::gitsync::hooks::{HOOKS, HookState};

use super::Backend;
use crate::api::Request;
use crate::gitsync::{self, Repo};
use crate::storage::BeadsPaths;
use crate::{Error, ErrorKind, Result};
use std::path::Path;

/// Installs bd's hooks (chaining, never replacing, existing ones) and
/// registers the merge driver, both running `exe`. Their states.
pub fn install(paths: &BeadsPaths, exe: &Path) -> Result<Vec<HookState>> {
    let repo = Repo::open(paths)?;
    let states = repo.install_hooks(exe)?;
    repo.register_merge_driver(exe)?;
    Ok(states)
}

/// What [`set_up`] did for a new tracker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetUp {
    /// Hooks and merge driver installed.
    Installed,
    /// Not inside a git repository: nothing to install.
    NotARepository,
    /// Installing failed (the tracker works; `bd hooks install` retries).
    Failed(Error),
}

/// [`install`] for a tracker just made: outside git, or failing, it says so
/// instead of failing the init.
pub fn set_up(paths: &BeadsPaths, exe: &Path) -> SetUp {
    if Repo::open(paths).is_err() {
        return SetUp::NotARepository;
    }
    match install(paths, exe) {
        Ok(_) => SetUp::Installed,
        Err(e) => SetUp::Failed(e),
    }
}

/// Removes bd's hooks and puts chained ones back. Their states.
pub fn uninstall(paths: &BeadsPaths) -> Result<Vec<HookState>> {
    Repo::open(paths)?.uninstall_hooks()
}

/// Which hooks are installed.
pub fn hooks(paths: &BeadsPaths) -> Result<Vec<HookState>> {
    Repo::open(paths)?.hook_states()
}

/// Merges the three versions of a bd file git hands its merge driver, into
/// `ours` (op files: the union of lines; others: regenerated or merged by
/// record). `path` is the file's path in the repository.
pub fn merge_driver(ancestor: &Path, ours: &Path, theirs: &Path, path: Option<&str>) -> Result<()> {
    gitsync::hooks::merge_driver(ancestor, ours, theirs, path)
}

/// One hook's work, as the installed hooks call it (`bd hooks run NAME`):
/// - `pre-commit`: flush, and stage bd's files into the commit being made;
/// - `post-merge`, `post-checkout`: apply what arrived and regenerate the
///   derived files (not while git rebases or merges: the files are git's then,
///   and the next bd command catches up).
///
/// `backend` is asked for a backend only when one is needed.
pub fn run_hook(
    paths: &BeadsPaths,
    hook: &str,
    backend: &mut dyn FnMut() -> Result<Box<dyn Backend>>,
) -> Result<()> {
    match hook {
        "pre-commit" => {
            backend()?.call(Request::Flush)?;
            let repo = Repo::open(paths)?;
            let files = repo.bd_files()?;
            // The git program, not libgit2: inside a hook git may be using a
            // temporary index (GIT_INDEX_FILE), which `git add` honours.
            // `-C`, not a working directory: see gitsync's `run_git`.
            let status = std::process::Command::new("git")
                .arg("-C")
                .arg(repo.workdir())
                .arg("add")
                .arg("--")
                .args(&files)
                .stdin(std::process::Stdio::null())
                .status()?;
            if !status.success() {
                return Err(Error::new(ErrorKind::Io, "git add of bd's files failed"));
            }
            Ok(())
        }
        "post-merge" | "post-checkout" => {
            if gitsync::git_dir(paths).is_some_and(|d| gitsync::operation_in_progress(&d)) {
                return Ok(());
            }
            // Any request applies the ops that arrived; flush also regenerates
            // issues.jsonl and conflicts.jsonl from them.
            backend()?.call(Request::Flush)?;
            Ok(())
        }
        other => Err(Error::invalid(format!("unknown hook {other:?}"))
            .hint("bd runs pre-commit, post-merge and post-checkout")),
    }
}
