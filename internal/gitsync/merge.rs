//! Bringing the fetched upstream into the current branch: fast-forward or a merge
//! commit, with bd's derived files taken from this side, op files joined as the
//! union of their ops, the members file as the union of its lines, and
//! `config.json`s joined key by key; then the work tree
//! and index updated, never over the user's own uncommitted work.

use super::hooks;
use super::remote::Upstream;
use super::repo::{Repo, git_error, index_entry, read_blob, stage0};
use crate::{Error, ErrorKind, Result};
use git2::Oid;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::Path;

/// How the remote's work was brought in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Integration {
    /// Nothing new on the remote.
    UpToDate,
    /// The local branch moved forward to the remote's.
    FastForward,
    /// A merge commit joins the two.
    Merge,
}

impl Repo {
    /// Brings the fetched upstream into the current branch: fast-forward, or a
    /// merge commit. bd's derived files are taken from this side (they are
    /// regenerated right after), op files that both sides changed are joined
    /// line by line; any other conflict, or an incoming change to a file the user
    /// has modified or staged, stops it before anything changes.
    pub fn integrate(&self, up: &Upstream) -> Result<Integration> {
        let theirs = match self.repo.refname_to_id(&Self::tracking_ref(up)) {
            Ok(id) => self
                .repo
                .find_commit(id)
                .map_err(|e| git_error("reading the fetched commit", e))?,
            Err(_) => return Ok(Integration::UpToDate),
        };
        let branch_ref = self.branch_ref()?;
        let ours = self.head_commit()?;
        let (target, kind) = match &ours {
            None => (theirs.id(), Integration::FastForward),
            Some(o) if o.id() == theirs.id() => return Ok(Integration::UpToDate),
            Some(o)
                if self
                    .repo
                    .graph_descendant_of(o.id(), theirs.id())
                    .unwrap_or(false) =>
            {
                return Ok(Integration::UpToDate);
            }
            Some(o)
                if self
                    .repo
                    .graph_descendant_of(theirs.id(), o.id())
                    .unwrap_or(false) =>
            {
                (theirs.id(), Integration::FastForward)
            }
            Some(o) => (self.merge_commit(o, &theirs, up)?, Integration::Merge),
        };
        let new_tree = self
            .repo
            .find_commit(target)
            .and_then(|c| c.tree())
            .map_err(|e| git_error("reading the merged tree", e))?;
        let old_tree = match &ours {
            Some(o) => Some(o.tree().map_err(|e| git_error("reading HEAD's tree", e))?),
            None => None,
        };
        self.update_work_tree(old_tree.as_ref(), &new_tree)?;
        self.move_branch(
            &branch_ref,
            target,
            ours.as_ref().map(|c| c.id()),
            &format!("bd sync: {} {}/{}", kind_word(kind), up.remote, up.branch),
        )?;
        Ok(kind)
    }

    fn merge_commit(
        &self,
        ours: &git2::Commit<'_>,
        theirs: &git2::Commit<'_>,
        up: &Upstream,
    ) -> Result<Oid> {
        let mut index = self
            .repo
            .merge_commits(ours, theirs, None)
            .map_err(|e| git_error("merging", e))?;
        if index.has_conflicts() {
            let conflicts: Vec<git2::IndexConflict> = index
                .conflicts()
                .map_err(|e| git_error("reading merge conflicts", e))?
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| git_error("reading merge conflicts", e))?;
            let mut foreign = BTreeSet::new();
            for c in conflicts {
                let entry = c.our.as_ref().or(c.their.as_ref()).or(c.ancestor.as_ref());
                let Some(entry) = entry else { continue };
                let path = String::from_utf8_lossy(&entry.path).into_owned();
                if self.is_derived(&path) {
                    index
                        .conflict_remove(Path::new(&path))
                        .map_err(|e| git_error("settling a conflict", e))?;
                    if let Some(ours) = &c.our {
                        index
                            .add(&stage0(ours, ours.file_size))
                            .map_err(|e| git_error("settling a conflict", e))?;
                    }
                } else if self.is_op_file(&path) {
                    let joined = hooks::union_ops(&[
                        &read_blob(&self.repo, &c.our)?,
                        &read_blob(&self.repo, &c.their)?,
                    ]);
                    self.settle(&mut index, &path, &c, &joined)?;
                } else if path == self.rel("members.jsonl") {
                    // A set of keys: two clones that each joined the mesh
                    // add a line each; both stay.
                    let joined = hooks::union_lines(
                        &read_blob(&self.repo, &c.our)?,
                        &read_blob(&self.repo, &c.their)?,
                    );
                    self.settle(&mut index, &path, &c, &joined)?;
                } else if path == self.rel("config.json")
                    && let Some(joined) = join_configs(
                        &read_blob(&self.repo, &c.our)?,
                        &read_blob(&self.repo, &c.their)?,
                    )
                {
                    // Two clones that each ran `bd init` before pulling: one
                    // tracker's settings, the remote's winning where both set
                    // a key (its issues already carry its prefix).
                    self.settle(&mut index, &path, &c, &joined)?;
                } else {
                    foreign.insert(path);
                }
            }
            if !foreign.is_empty() {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "the remote's changes conflict with yours in {}; bd merges only its own files",
                        foreign.into_iter().collect::<Vec<_>>().join(", ")
                    ),
                )
                .hint(format!(
                    "merge them with git (`git pull {} {}`), then run bd sync",
                    up.remote, up.branch
                )));
            }
        }
        let tree_id = index
            .write_tree_to(&self.repo)
            .map_err(|e| git_error("writing the merged tree", e))?;
        let tree = self
            .repo
            .find_tree(tree_id)
            .map_err(|e| git_error("reading a tree", e))?;
        let sig = self.signature()?;
        self.repo
            .commit(
                None,
                &sig,
                &sig,
                &format!("bd sync: merge {}/{}", up.remote, up.branch),
                &tree,
                &[ours, theirs],
            )
            .map_err(|e| git_error("committing the merge", e))
    }

    /// Writes every path that differs between the two trees into the work tree
    /// and the index, after checking that none of them holds the user's own
    /// uncommitted work (bd's derived files excepted: they are regenerated).
    fn update_work_tree(&self, old: Option<&git2::Tree<'_>>, new: &git2::Tree<'_>) -> Result<()> {
        let diff = self
            .repo
            .diff_tree_to_tree(old, Some(new), None)
            .map_err(|e| git_error("comparing trees", e))?;
        let mut changes: Vec<(String, Option<(Oid, git2::FileMode)>)> = Vec::new();
        for delta in diff.deltas() {
            let file = delta.new_file();
            let path = file
                .path()
                .or_else(|| delta.old_file().path())
                .map(|p| p.to_string_lossy().into_owned())
                .ok_or_else(|| Error::internal("a change without a path"))?;
            let gone = delta.status() == git2::Delta::Deleted;
            let mode = file.mode();
            if !gone && !matches!(mode, git2::FileMode::Blob | git2::FileMode::BlobExecutable) {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "the remote changed {path}, which is not a plain file (link or submodule)"
                    ),
                )
                .hint("bring it in with `git pull`, then run bd sync"));
            }
            changes.push((path, (!gone).then(|| (file.id(), mode))));
        }
        let mut dirty = Vec::new();
        for (path, _) in &changes {
            if self.is_derived(path) {
                continue;
            }
            let status = match self.repo.status_file(Path::new(path)) {
                Ok(s) => s,
                Err(e) if e.code() == git2::ErrorCode::NotFound => git2::Status::CURRENT,
                Err(e) => return Err(git_error("reading the status", e)),
            };
            let untracked_clash = status.contains(git2::Status::WT_NEW);
            if !status.is_empty()
                && status != git2::Status::CURRENT
                && !status.contains(git2::Status::IGNORED)
                || untracked_clash
            {
                dirty.push(path.clone());
            }
        }
        if !dirty.is_empty() {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "the remote changed files you have uncommitted changes in: {}",
                    dirty.join(", ")
                ),
            )
            .hint("commit or stash them, then run bd sync (bd never touches your own work)"));
        }
        let mut index = self
            .repo
            .index()
            .map_err(|e| git_error("reading the index", e))?;
        for (path, new) in &changes {
            let full = self.workdir.join(path);
            match new {
                Some((id, mode)) => {
                    let blob = self
                        .repo
                        .find_blob(*id)
                        .map_err(|e| git_error("reading a file", e))?;
                    if let Some(parent) = full.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    let written = crate::jsonl::atomic_write_stat(&full, blob.content())?;
                    match written {
                        // The blob's id is known and the file is exactly it: no
                        // need for `add_path` to read and hash it again.
                        Some(meta) if *mode == git2::FileMode::Blob => index
                            .add(&index_entry(path, *id, &meta))
                            .map_err(|e| git_error("updating the index", e))?,
                        _ => {
                            if *mode == git2::FileMode::BlobExecutable {
                                use std::os::unix::fs::PermissionsExt;
                                std::fs::set_permissions(
                                    &full,
                                    std::fs::Permissions::from_mode(0o755),
                                )?;
                            }
                            index
                                .add_path(Path::new(path))
                                .map_err(|e| git_error("updating the index", e))?;
                        }
                    }
                }
                None => {
                    match std::fs::remove_file(&full) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e.into()),
                    }
                    let _ = index.remove_path(Path::new(path));
                }
            }
        }
        index
            .write()
            .map_err(|e| git_error("writing the index", e))?;
        Ok(())
    }
}

/// Two `config.json`s as one: every key of both, `theirs` winning where both
/// set one. `None` unless both are JSON objects (then git's conflict stands).
fn join_configs(ours: &[u8], theirs: &[u8]) -> Option<Vec<u8>> {
    let parse = |b: &[u8]| -> Option<serde_json::Map<String, serde_json::Value>> {
        if b.is_empty() {
            return Some(serde_json::Map::new());
        }
        match serde_json::from_slice(b).ok()? {
            serde_json::Value::Object(m) => Some(m),
            _ => None,
        }
    };
    let mut joined = parse(ours)?;
    joined.extend(parse(theirs)?);
    let mut out = serde_json::to_vec_pretty(&serde_json::Value::Object(joined)).ok()?;
    out.push(b'\n');
    Some(out)
}

fn kind_word(k: Integration) -> &'static str {
    match k {
        Integration::UpToDate => "up to date with",
        Integration::FastForward => "fast-forward to",
        Integration::Merge => "merge",
    }
}
