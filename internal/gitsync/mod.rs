//! `bd sync`'s git side: committing bd's files, integrating the remote branch and
//! pushing. Local work goes through git2 (no network features); fetch and push run
//! the `git` program, so the user's credentials, ssh config and hooks apply.
//!
//! The user's own work is never touched: bd commits only its own files (a tree
//! built from HEAD with bd's paths replaced, and only those index entries
//! updated), and integrating the remote refuses before changing anything if an
//! incoming change overlaps a file the user has modified or staged.

pub mod hooks;

use crate::exchange::op_files;
use crate::storage::BeadsPaths;
use crate::{Error, ErrorKind, Result};
use git2::{Oid, Repository};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// How many times a push rejected as non-fast-forward is retried (fetch,
/// integrate, push again).
pub const PUSH_ATTEMPTS: u32 = 4;

fn git_error(what: &str, e: git2::Error) -> Error {
    Error::new(ErrorKind::Io, format!("git: {what}: {}", e.message()))
}

/// The repository around a tracker, and where bd's files sit in it.
pub struct Repo {
    repo: Repository,
    workdir: PathBuf,
    /// `.beads` relative to the work tree, with `/` separators.
    beads_rel: String,
    paths: BeadsPaths,
}

/// Where the branch syncs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    /// The remote's name.
    pub remote: String,
    /// The branch on the remote.
    pub branch: String,
}

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

/// Whether git is in the middle of an operation in the repository whose git
/// directory is `git_dir` that checks out commits one after another: a
/// rebase, a cherry-pick or a revert. bd then leaves its files alone:
/// regenerating them would make the work tree dirty under git, which then
/// refuses to go on ("your local changes would be overwritten"). The next bd
/// command after it catches up. (A merge is not one: git runs post-merge
/// once it is done, with `MERGE_HEAD` still present.)
pub fn operation_in_progress(git_dir: &Path) -> bool {
    [
        "rebase-merge",
        "rebase-apply",
        "CHERRY_PICK_HEAD",
        "REVERT_HEAD",
    ]
    .iter()
    .any(|f| git_dir.join(f).exists())
}

/// The git directory of the repository holding `paths.dir`, if any.
pub fn git_dir(paths: &BeadsPaths) -> Option<std::path::PathBuf> {
    Repository::discover(&paths.dir)
        .ok()
        .map(|r| r.path().to_path_buf())
}

/// Whether git's complaint says the network is what failed (no route, no
/// name resolution, nobody listening): this machine is offline or the
/// remote's host is down, as opposed to a remote that is wrong (no such
/// repository, no permission, a refused push). git is another program: its
/// words are all there is to go by.
fn network_unreachable(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    [
        "could not resolve host",
        "could not resolve hostname",
        "failed to connect",
        "connection refused",
        "connection timed out",
        "operation timed out",
        "network is unreachable",
        "no route to host",
        "temporary failure in name resolution",
        "connection reset",
    ]
    .iter()
    .any(|m| s.contains(m))
}

/// A failed `git fetch` or `git push`: kind `unavailable` when the network
/// failed (bd works on and syncs later: "offline"), `io` when the remote
/// itself is wrong (exit 1: someone must fix it).
fn remote_failure(what: &str, up: &Upstream, out: &GitOutput) -> Error {
    let offline = network_unreachable(&out.stderr);
    let kind = if offline {
        ErrorKind::Unavailable
    } else {
        ErrorKind::Io
    };
    let hint = if offline {
        "bd committed locally and syncs when the remote can be reached".to_string()
    } else {
        format!(
            "check the remote (`git remote -v`, `git {what} {}`); bd's files are committed locally",
            up.remote
        )
    };
    Error::new(
        kind,
        format!("git {what} {} failed: {}", up.remote, out.first_error()),
    )
    .hint(hint)
}

impl Repo {
    /// Finds the git repository holding `paths.dir`.
    pub fn open(paths: &BeadsPaths) -> Result<Repo> {
        // libgit2 re-hashes every object it reads (SHA-1 with collision
        // detection): 9% of the instructions of a sync bringing in 1,000 ops, for
        // blobs `git fetch` verified when they arrived. git itself does not
        // re-hash on read either.
        static READ_WITHOUT_REHASH: std::sync::Once = std::sync::Once::new();
        READ_WITHOUT_REHASH.call_once(|| git2::opts::strict_hash_verification(false));
        let repo = Repository::discover(&paths.dir).map_err(|e| {
            Error::new(
                ErrorKind::NotInitialized,
                format!(
                    "{} is not inside a git repository: {}",
                    paths.dir.display(),
                    e.message()
                ),
            )
            .hint("run `git init` (bd sync exchanges issues through git)")
        })?;
        let workdir = repo
            .workdir()
            .ok_or_else(|| Error::invalid("the git repository is bare; bd needs a work tree"))?
            .canonicalize()?;
        let beads = paths.dir.canonicalize()?;
        let rel = beads.strip_prefix(&workdir).map_err(|_| {
            Error::invalid(format!(
                "{} is outside the work tree {}",
                beads.display(),
                workdir.display()
            ))
        })?;
        let beads_rel = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        Ok(Repo {
            repo,
            workdir,
            beads_rel,
            paths: paths.clone(),
        })
    }

    /// The work tree's root.
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    fn rel(&self, name: &str) -> String {
        if self.beads_rel.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.beads_rel)
        }
    }

    /// Whether a repository path is one of bd's derived files, which are
    /// regenerated instead of merged.
    fn is_derived(&self, path: &str) -> bool {
        path == self.rel("issues.jsonl") || path == self.rel("conflicts.jsonl")
    }

    fn is_op_file(&self, path: &str) -> bool {
        path.strip_prefix(&self.rel("ops/"))
            .is_some_and(|f| f.ends_with(".jsonl") && !f.contains('/'))
    }

    /// bd's files as they are in the work tree (repository paths).
    pub fn bd_files(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for name in [
            "config.json",
            ".gitignore",
            ".gitattributes",
            "issues.jsonl",
            "conflicts.jsonl",
        ] {
            if self.paths.dir.join(name).is_file() {
                out.push(self.rel(name));
            }
        }
        for (replica, _) in op_files(&self.paths)? {
            out.push(self.rel(&format!("ops/{replica}.jsonl")));
        }
        Ok(out)
    }

    /// The current branch's full ref name; errors on a detached HEAD.
    pub fn branch_ref(&self) -> Result<String> {
        if self.repo.head_detached().unwrap_or(false) {
            return Err(
                Error::invalid("HEAD is detached; bd sync commits to a branch")
                    .hint("check out a branch (`git switch main`), then run bd sync"),
            );
        }
        // Works for an unborn branch too (HEAD names it, nothing points there yet).
        let head = std::fs::read_to_string(self.repo.path().join("HEAD"))?;
        head.trim()
            .strip_prefix("ref: ")
            .map(str::to_string)
            .ok_or_else(|| Error::invalid("cannot tell which branch HEAD is on"))
    }

    fn head_commit(&self) -> Result<Option<git2::Commit<'_>>> {
        match self.repo.head() {
            Ok(h) => Ok(Some(
                h.peel_to_commit()
                    .map_err(|e| git_error("reading HEAD", e))?,
            )),
            Err(e) if e.code() == git2::ErrorCode::UnbornBranch => Ok(None),
            Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
            Err(e) => Err(git_error("reading HEAD", e)),
        }
    }

    /// The branch's upstream: its configured remote and merge branch, else
    /// `origin` and the same name; `None` when the repository has no remote.
    pub fn upstream(&self) -> Result<Option<Upstream>> {
        let branch_ref = self.branch_ref()?;
        let branch = branch_ref.trim_start_matches("refs/heads/").to_string();
        let config = self
            .repo
            .config()
            .map_err(|e| git_error("reading config", e))?;
        let remote = config.get_string(&format!("branch.{branch}.remote")).ok();
        let merge = config.get_string(&format!("branch.{branch}.merge")).ok();
        let remotes = self
            .repo
            .remotes()
            .map_err(|e| git_error("listing remotes", e))?;
        let names: Vec<String> = remotes
            .iter()
            .filter_map(|r| r.ok().flatten().map(str::to_string))
            .collect();
        let remote = match remote {
            Some(r) if r != "." => Some(r),
            _ if names.iter().any(|n| n == "origin") => Some("origin".to_string()),
            _ => names.first().cloned(),
        };
        Ok(remote.map(|remote| Upstream {
            remote,
            branch: merge
                .map(|m| m.trim_start_matches("refs/heads/").to_string())
                .unwrap_or(branch),
        }))
    }

    /// Whether the current branch has an upstream configured (git's
    /// `branch.<name>.remote`), as opposed to the one [`Repo::upstream`] falls
    /// back to.
    pub fn upstream_configured(&self) -> bool {
        let Ok(branch_ref) = self.branch_ref() else {
            return false;
        };
        let branch = branch_ref.trim_start_matches("refs/heads/");
        self.repo
            .config()
            .and_then(|c| c.get_string(&format!("branch.{branch}.remote")))
            .is_ok()
    }

    /// Whether git knows who commits here (`user.name` and `user.email`).
    pub fn has_identity(&self) -> bool {
        self.repo.signature().is_ok()
    }

    fn tracking_ref(up: &Upstream) -> String {
        format!("refs/bd-sync/{}/{}", up.remote, up.branch)
    }

    /// bd's files whose work-tree content differs from HEAD's. Writes nothing.
    pub fn changed_bd_files(&self) -> Result<Vec<String>> {
        Ok(self
            .changes(false)?
            .into_iter()
            .map(|(path, _)| path)
            .collect())
    }

    /// bd's files that differ from HEAD's, each with a copy of its bytes and
    /// stat data as of one moment.
    ///
    /// A file whose index entry matches HEAD and whose stat data (size, times,
    /// inode) matches the work-tree file is unchanged without being read, as in
    /// `git status`; only the others are read. So a sync costs what changed,
    /// not the size of every op file (SHA-1 with collision detection runs at
    /// ~27 instructions a byte), nor the size of the repository (git's own
    /// status walks the whole index). An entry no older than the index file is
    /// "racily clean" (the file may have changed within the same clock tick)
    /// and is read. With `refresh`, what reading showed unchanged goes back
    /// into the index with the file's stat data, as `git status` does, so the
    /// next sync need not read it again.
    ///
    /// The files are read under `flush.lock`, the lock every writer of bd's
    /// files holds: an op file is never caught in the middle of an append, and
    /// the bytes hashed, committed and entered in the index are one and the
    /// same copy. (libgit2 reading a file that grew while it read failed the
    /// sync: "failed to read file into stream", 19 of 26 syncs with agents
    /// writing.)
    fn changes(&self, refresh: bool) -> Result<Vec<(String, FileCopy)>> {
        use std::os::unix::fs::MetadataExt;
        let files = self.bd_files()?;
        let head_tree = match self.head_commit()? {
            Some(c) => Some(c.tree().map_err(|e| git_error("reading HEAD's tree", e))?),
            None => None,
        };
        let mut index = self
            .repo
            .index()
            .map_err(|e| git_error("reading the index", e))?;
        // The repository object keeps the index it read first; someone else's
        // `git add` since then is on disk.
        index
            .read(false)
            .map_err(|e| git_error("reading the index", e))?;
        let index_time = std::fs::metadata(self.repo.path().join("index"))
            .ok()
            .map(|m| (m.mtime(), m.mtime_nsec()));
        // Which files need reading: those the stat data does not vouch for.
        let mut to_read = Vec::new();
        for path in files {
            let in_head = head_tree
                .as_ref()
                .and_then(|t| t.get_path(Path::new(&path)).ok())
                .map(|e| e.id());
            let full = self.workdir.join(&path);
            let meta = std::fs::metadata(&full).map_err(|e| crate::jsonl::io_at(&full, e))?;
            let entry = index.get_path(Path::new(&path), 0);
            if let (Some(e), Some(head_id)) = (&entry, in_head)
                && e.id == head_id
                && stat_matches(e, &meta)
                && index_time.is_some_and(|t| {
                    (
                        i64::from(e.mtime.seconds()),
                        i64::from(e.mtime.nanoseconds()),
                    ) < t
                })
            {
                continue;
            }
            to_read.push((path, in_head, entry));
        }
        if to_read.is_empty() {
            return Ok(Vec::new());
        }
        let copies = {
            let _lock = crate::jsonl::FlushLock::acquire(&self.paths)?;
            let mut copies = Vec::with_capacity(to_read.len());
            for (path, _, _) in &to_read {
                copies.push(FileCopy::read(&self.workdir.join(path))?);
            }
            copies
        };
        let mut refreshed = false;
        let mut out = Vec::new();
        for ((path, in_head, entry), copy) in to_read.into_iter().zip(copies) {
            // HEAD's blob in the index, and a different length: changed, no need
            // to hash it here (an appended op file). A length of 0 may be git's
            // mark for "racily clean, compare contents".
            if let (Some(e), Some(head_id)) = (&entry, in_head)
                && e.id == head_id
                && e.file_size != 0
                && e.file_size != copy.meta.len() as u32
            {
                out.push((path, copy));
                continue;
            }
            let blob = Oid::hash_object(git2::ObjectType::Blob, &copy.bytes)
                .map_err(|e| git_error("hashing a file", e))?;
            if in_head != Some(blob) {
                out.push((path, copy));
            } else if refresh && entry.as_ref().is_some_and(|e| e.id == blob) {
                // Unchanged after all: remember its stat data, unless the file
                // has changed since it was read.
                let fresh = index_entry(&path, blob, &copy.meta);
                if std::fs::metadata(self.workdir.join(&path))
                    .is_ok_and(|m| stat_matches(&fresh, &m))
                {
                    index
                        .add(&fresh)
                        .map_err(|e| git_error("updating the index", e))?;
                    refreshed = true;
                }
            }
        }
        if refreshed {
            index
                .write()
                .map_err(|e| git_error("writing the index", e))?;
        }
        Ok(out)
    }

    /// Refuses to go on while one of bd's files is in the middle of a merge:
    /// unmerged in the index, or an op file holding git's conflict markers
    /// (a merge made without bd's driver). `bd sync` checks this before it
    /// flushes or commits anything, so such a file is never rewritten or
    /// committed silently.
    pub fn refuse_unmerged_bd_files(&self) -> Result<()> {
        let mut bad = BTreeSet::new();
        let index = self
            .repo
            .index()
            .map_err(|e| git_error("reading the index", e))?;
        if index.has_conflicts() {
            for c in index
                .conflicts()
                .map_err(|e| git_error("reading merge conflicts", e))?
            {
                let c = c.map_err(|e| git_error("reading merge conflicts", e))?;
                let entry = c.our.as_ref().or(c.their.as_ref()).or(c.ancestor.as_ref());
                if let Some(e) = entry {
                    let path = String::from_utf8_lossy(&e.path).into_owned();
                    if path.starts_with(&self.rel("")) {
                        bad.insert(path);
                    }
                }
            }
        }
        for (path, copy) in self.changes(false)? {
            if self.is_op_file(&path)
                && copy
                    .bytes
                    .split(|b| *b == b'\n')
                    .any(hooks::is_conflict_marker)
            {
                bad.insert(path);
            }
        }
        if bad.is_empty() {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "conflict markers in {} (an unfinished git merge); bd sync changed nothing",
                bad.into_iter().collect::<Vec<_>>().join(", ")
            ),
        )
        .hint("`bd doctor --fix` resolves op files as the union of both sides' ops; then `git add .beads` and commit")
        .hint("`bd hooks install` registers bd's merge driver, so git merges never stop on bd's files"))
    }

    /// Commits bd's changed files (and only them) on the current branch. The
    /// index entries of those files are updated; every other entry, staged or
    /// not, is left as it was. Returns the files committed and the new commit
    /// (`None` if nothing changed).
    pub fn commit_bd_files(&self, message: &str) -> Result<(Vec<String>, Option<Oid>)> {
        let changed = self.changes(true)?;
        if changed.is_empty() {
            return Ok((Vec::new(), None));
        }
        let branch_ref = self.branch_ref()?;
        let parent = self.head_commit()?;
        let mut builder = git2::build::TreeUpdateBuilder::new();
        // Each file's index entry: the blob stored, with the stat data read
        // with those very bytes. A file that has moved on since (the daemon
        // appended to it) then differs from its entry, as it should.
        let mut entries = Vec::with_capacity(changed.len());
        for (path, copy) in &changed {
            let blob = self
                .repo
                .blob(&copy.bytes)
                .map_err(|e| git_error("storing a file", e))?;
            builder.upsert(path.as_str(), blob, git2::FileMode::Blob);
            entries.push(index_entry(path, blob, &copy.meta));
        }
        let base = match &parent {
            Some(c) => c.tree().map_err(|e| git_error("reading HEAD's tree", e))?,
            None => {
                let empty = self
                    .repo
                    .treebuilder(None)
                    .and_then(|b| b.write())
                    .map_err(|e| git_error("making an empty tree", e))?;
                self.repo
                    .find_tree(empty)
                    .map_err(|e| git_error("reading a tree", e))?
            }
        };
        let tree_id = builder
            .create_updated(&self.repo, &base)
            .map_err(|e| git_error("building the commit's tree", e))?;
        let tree = self
            .repo
            .find_tree(tree_id)
            .map_err(|e| git_error("reading a tree", e))?;
        let sig = self.signature()?;
        let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
        let commit = self
            .repo
            .commit(None, &sig, &sig, message, &tree, &parents)
            .map_err(|e| git_error("committing", e))?;
        self.move_branch(
            &branch_ref,
            commit,
            parent.as_ref().map(|c| c.id()),
            message,
        )?;
        let mut index = self
            .repo
            .index()
            .map_err(|e| git_error("reading the index", e))?;
        for entry in &entries {
            index
                .add(entry)
                .map_err(|e| git_error("updating the index", e))?;
        }
        index
            .write()
            .map_err(|e| git_error("writing the index", e))?;
        Ok((changed.into_iter().map(|(p, _)| p).collect(), Some(commit)))
    }

    fn signature(&self) -> Result<git2::Signature<'static>> {
        match self.repo.signature() {
            Ok(s) => Ok(s),
            Err(_) => git2::Signature::now("bd", "bd@localhost")
                .map_err(|e| git_error("making a signature", e)),
        }
    }

    /// Moves the branch to `to`, only if it still points at `from` (a commit the
    /// user made meanwhile is never overwritten).
    fn move_branch(&self, branch_ref: &str, to: Oid, from: Option<Oid>, msg: &str) -> Result<()> {
        let res = match from {
            Some(old) => self.repo.reference_matching(branch_ref, to, true, old, msg),
            None => self.repo.reference(branch_ref, to, false, msg),
        };
        res.map(|_| ()).map_err(|e| {
            Error::new(
                ErrorKind::Conflict,
                format!("{branch_ref} moved while bd sync ran: {}", e.message()),
            )
            .hint("run bd sync again")
        })
    }

    /// Fetches the upstream branch into bd's own tracking ref. `Ok(false)` when
    /// the remote has no such branch yet.
    pub fn fetch(&self, up: &Upstream) -> Result<bool> {
        let refspec = format!("+refs/heads/{}:{}", up.branch, Self::tracking_ref(up));
        let out = run_git(
            &self.workdir,
            &["fetch", "--quiet", "--no-tags", &up.remote, &refspec],
        )?;
        if out.ok {
            return Ok(true);
        }
        if out.stderr.contains("couldn't find remote ref") {
            return Ok(false);
        }
        Err(remote_failure("fetch", up, &out))
    }

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

    /// Pushes the current branch. `Ok(false)` when the remote moved on (rejected
    /// as not a fast-forward): fetch, integrate and try again.
    pub fn push(&self, up: &Upstream) -> Result<bool> {
        let refspec = format!("HEAD:refs/heads/{}", up.branch);
        let out = run_git(
            &self.workdir,
            &["push", "--quiet", "--porcelain", &up.remote, &refspec],
        )?;
        if out.ok {
            // The remote's branch is now our HEAD: so is what bd knows of it
            // (`sync --status` counts against this ref; the push does not
            // move it, and said "1 commits to push" right after pushing).
            if let Some(head) = self.head_commit()? {
                self.repo
                    .reference(&Self::tracking_ref(up), head.id(), true, "bd sync: pushed")
                    .map_err(|e| git_error("recording the pushed commit", e))?;
            }
            return Ok(true);
        }
        let all = format!("{}\n{}", out.stdout, out.stderr);
        // The remote moved on: refused as not a fast-forward, or (a push racing
        // another) the remote's ref was no longer where the push expected it.
        let moved = [
            "[rejected]",
            "non-fast-forward",
            "fetch first",
            "cannot lock ref",
        ]
        .iter()
        .any(|m| all.contains(m));
        if moved {
            return Ok(false);
        }
        Err(remote_failure("push", up, &out))
    }

    /// Commits on the branch not yet on the fetched upstream, and the reverse.
    pub fn ahead_behind(&self, up: &Upstream) -> Result<Option<(usize, usize)>> {
        let (Some(ours), Ok(theirs)) = (
            self.head_commit()?,
            self.repo.refname_to_id(&Self::tracking_ref(up)),
        ) else {
            return Ok(None);
        };
        self.repo
            .graph_ahead_behind(ours.id(), theirs)
            .map(Some)
            .map_err(|e| git_error("counting commits", e))
    }
}

/// A file's bytes and its stat data, read from one open descriptor.
struct FileCopy {
    bytes: Vec<u8>,
    meta: std::fs::Metadata,
}

impl FileCopy {
    fn read(path: &Path) -> Result<FileCopy> {
        use std::io::Read;
        let at = |e| crate::jsonl::io_at(path, e);
        let mut f = std::fs::File::open(path).map_err(at)?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).map_err(at)?;
        let meta = f.metadata().map_err(at)?;
        Ok(FileCopy { bytes, meta })
    }
}

/// The index entry of a plain file at `path` holding blob `id`, with the stat data
/// git compares to tell an unchanged work-tree file without reading it.
fn index_entry(path: &str, id: Oid, meta: &std::fs::Metadata) -> git2::IndexEntry {
    use std::os::unix::fs::MetadataExt;
    // The index keeps 32-bit fields; git truncates the same way.
    let time = |secs: i64, nanos: i64| git2::IndexTime::new(secs as i32, nanos as u32);
    git2::IndexEntry {
        ctime: time(meta.ctime(), meta.ctime_nsec()),
        mtime: time(meta.mtime(), meta.mtime_nsec()),
        dev: meta.dev() as u32,
        ino: meta.ino() as u32,
        mode: 0o100644,
        uid: meta.uid(),
        gid: meta.gid(),
        file_size: meta.len() as u32,
        id,
        // The low 12 bits hold the path's length (0xfff: longer).
        flags: path.len().min(0xfff) as u16,
        flags_extended: 0,
        path: path.as_bytes().to_vec(),
    }
}

/// Whether an index entry's stat data describes `meta` (git's own comparison,
/// fields truncated to the index's 32 bits).
fn stat_matches(e: &git2::IndexEntry, meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    e.file_size == meta.len() as u32
        && e.mtime.seconds() == meta.mtime() as i32
        && e.mtime.nanoseconds() == meta.mtime_nsec() as u32
        && e.ctime.seconds() == meta.ctime() as i32
        && e.ctime.nanoseconds() == meta.ctime_nsec() as u32
        && e.ino == meta.ino() as u32
        && e.dev == meta.dev() as u32
}

/// A copy of a conflict-side index entry at stage 0 (merged).
impl Repo {
    /// Settles the conflict `c` on `path` in the merged `index` with the
    /// bytes `merged`. The merged index has no repository behind it, so they
    /// are stored as a blob first and added by id (`add_frombuffer` needs an
    /// index that has one). A path both sides deleted gets nothing back.
    fn settle(
        &self,
        index: &mut git2::Index,
        path: &str,
        c: &git2::IndexConflict,
        merged: &[u8],
    ) -> Result<()> {
        index
            .conflict_remove(Path::new(path))
            .map_err(|e| git_error("settling a conflict", e))?;
        let Some(side) = c.our.as_ref().or(c.their.as_ref()) else {
            return Ok(());
        };
        let mut entry = stage0(side, merged.len() as u32);
        entry.id = self
            .repo
            .blob(merged)
            .map_err(|e| git_error("storing a merged file", e))?;
        index
            .add(&entry)
            .map_err(|e| git_error("settling a conflict", e))
    }
}

/// The bytes of a conflict side's blob (empty when that side has none).
fn read_blob(repo: &Repository, e: &Option<git2::IndexEntry>) -> Result<Vec<u8>> {
    match e {
        Some(e) => Ok(repo
            .find_blob(e.id)
            .map_err(|x| git_error("reading a conflicted file", x))?
            .content()
            .to_vec()),
        None => Ok(Vec::new()),
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

fn stage0(e: &git2::IndexEntry, file_size: u32) -> git2::IndexEntry {
    git2::IndexEntry {
        ctime: e.ctime,
        mtime: e.mtime,
        dev: e.dev,
        ino: e.ino,
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        file_size,
        id: e.id,
        flags: e.flags & !0x3000, // the stage bits
        flags_extended: e.flags_extended,
        path: e.path.clone(),
    }
}

fn kind_word(k: Integration) -> &'static str {
    match k {
        Integration::UpToDate => "up to date with",
        Integration::FastForward => "fast-forward to",
        Integration::Merge => "merge",
    }
}

struct GitOutput {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl GitOutput {
    fn first_error(&self) -> String {
        self.stderr
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("(no message)")
            .trim()
            .to_string()
    }
}

/// Runs the `git` program for network work: fixed locale, no stdin, no prompts.
///
/// The directory goes to git as `-C`, not as the child's working directory: with
/// one, std cannot use posix_spawn in a static binary (its `addchdir` is looked up
/// dynamically) and forks instead, which copies the page tables of a process that
/// may hold a whole tracker.
fn run_git(dir: &Path, args: &[&str]) -> Result<GitOutput> {
    let mut cmd = Command::new("git");
    cmd.arg("-C")
        .arg(dir)
        .args(args)
        .env("LC_ALL", "C")
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null());
    if std::env::var_os("GIT_SSH_COMMAND").is_none() && std::env::var_os("GIT_SSH").is_none() {
        cmd.env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes");
    }
    let out = cmd.output().map_err(|e| {
        Error::new(ErrorKind::Io, format!("cannot run git: {e}"))
            .hint("install git; bd sync uses it to fetch and push")
    })?;
    Ok(GitOutput {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// What `bd sync` should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncOptions {
    /// Fetch and integrate the remote branch.
    pub pull: bool,
    /// Push the branch.
    pub push: bool,
    /// Say what would happen; change nothing.
    pub dry_run: bool,
    /// Commit message for bd's files.
    pub message: Option<String>,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            pull: true,
            push: true,
            dry_run: false,
            message: None,
        }
    }
}

/// What `bd sync` did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncReport {
    /// The branch synced.
    pub branch: String,
    /// Its upstream, if the repository has a remote.
    pub upstream: Option<Upstream>,
    /// bd's files that differed from HEAD (committed, or to be committed).
    pub files: Vec<String>,
    /// Commits bd made (its files, and a merge if one was needed).
    pub commits: Vec<String>,
    /// How the remote's work came in.
    pub integration: Option<Integration>,
    /// Other clones' ops applied.
    pub ops_applied: u64,
    /// Open conflicts afterwards.
    pub conflicts: u64,
    /// Whether the branch is on the remote now.
    pub pushed: bool,
    /// Push attempts (a rejected push is retried after integrating again).
    pub push_attempts: u32,
    /// The remote could not be reached or there is none: committed locally only.
    pub offline: bool,
    /// Nothing was changed (`--dry-run`).
    pub dry_run: bool,
    /// Things the user should know.
    pub notes: Vec<String>,
}

/// A remote that failed after bd committed its own files: the error says so.
fn committed_first(mut e: Error, report: &SyncReport) -> Error {
    if let Some(c) = report.commits.last() {
        e.message = format!(
            "{}; bd's files were committed locally (commit {}), not pushed",
            e.message,
            &c[..c.len().min(10)]
        );
    }
    e
}

/// Runs `bd sync` through `backend` (direct or daemon): flush → commit bd's
/// files → fetch → integrate → apply other clones' ops and regenerate the
/// derived files → commit → push, retrying a rejected push.
pub fn sync(
    backend: &mut dyn crate::client::Backend,
    paths: &BeadsPaths,
    opts: &SyncOptions,
) -> Result<SyncReport> {
    use crate::api::{Request, Response};
    let repo = Repo::open(paths)?;
    let mut report = SyncReport {
        branch: repo
            .branch_ref()?
            .trim_start_matches("refs/heads/")
            .to_string(),
        upstream: repo.upstream()?,
        dry_run: opts.dry_run,
        ..Default::default()
    };
    let message = opts
        .message
        .clone()
        .unwrap_or_else(|| "bd sync".to_string());
    let flush = |backend: &mut dyn crate::client::Backend| -> Result<u64> {
        match backend.call(Request::Flush)? {
            Response::Flush(f) => Ok(f.ops),
            other => Err(Error::internal(format!(
                "unexpected answer to flush: {other:?}"
            ))),
        }
    };
    if opts.dry_run {
        report.files = repo.changed_bd_files()?;
        if let Some(up) = &report.upstream
            && let Some((ahead, behind)) = repo.ahead_behind(up)?
        {
            report.notes.push(format!(
                "as of the last fetch: {ahead} commit(s) to push, {behind} to bring in"
            ));
        }
        report
            .notes
            .push("dry run: nothing was written, committed, fetched or pushed".into());
        return Ok(report);
    }
    repo.refuse_unmerged_bd_files()?;
    let mut ops = flush(backend)?;
    let (files, commit) = repo.commit_bd_files(&message)?;
    report.files = files;
    if let Some(c) = commit {
        report.commits.push(c.to_string());
    }
    match report.upstream.clone() {
        None => {
            report.offline = true;
            report.notes.push(
                "no git remote: committed locally only (add one with `git remote add`)".into(),
            );
        }
        Some(up) => {
            if !repo.upstream_configured() {
                report.notes.push(format!(
                    "{} has no upstream configured: syncing with {}/{}",
                    report.branch, up.remote, up.branch
                ));
            }
            let mut remote_branch_missing = false;
            for attempt in 1..=PUSH_ATTEMPTS {
                if opts.pull {
                    match repo.fetch(&up) {
                        Ok(true) => {}
                        Ok(false) => remote_branch_missing = true,
                        Err(e) if e.kind == ErrorKind::Unavailable => {
                            report.offline = true;
                            report
                                .notes
                                .push(format!("{}; committed locally only", e.message));
                            break;
                        }
                        Err(e) => return Err(committed_first(e, &report)),
                    }
                    let kind = match repo.integrate(&up) {
                        Ok(kind) => kind,
                        // Stopped before touching anything of the user's; bd's
                        // own files were committed already: say so.
                        Err(mut e) if e.kind == ErrorKind::Conflict => {
                            if let Some(c) = report.commits.last() {
                                e.message = format!(
                                    "{}; bd's own files were committed locally first (commit {}), nothing else was changed or pushed",
                                    e.message,
                                    &c[..c.len().min(10)]
                                );
                            } else {
                                e.message = format!("{}; nothing was changed", e.message);
                            }
                            return Err(e);
                        }
                        Err(e) => return Err(e),
                    };
                    if kind != Integration::UpToDate || report.integration.is_none() {
                        report.integration = Some(kind);
                    }
                    let now = flush(backend)?;
                    report.ops_applied += now.saturating_sub(ops);
                    ops = now;
                    let (files, commit) = repo.commit_bd_files(&message)?;
                    for f in files {
                        if !report.files.contains(&f) {
                            report.files.push(f);
                        }
                    }
                    if let Some(c) = commit {
                        report.commits.push(c.to_string());
                    }
                }
                if !opts.push {
                    break;
                }
                report.push_attempts = attempt;
                match repo.push(&up) {
                    Ok(true) => {
                        report.pushed = true;
                        if remote_branch_missing {
                            report.notes.push(format!(
                                "created branch {} on {} (it had none){}",
                                up.branch,
                                up.remote,
                                if repo.upstream_configured() {
                                    String::new()
                                } else {
                                    format!(
                                        "; `git branch -u {}/{}` makes it this branch's upstream",
                                        up.remote, up.branch
                                    )
                                }
                            ));
                        }
                        break;
                    }
                    Ok(false) => {}
                    Err(e) if e.kind == ErrorKind::Unavailable => {
                        report.offline = true;
                        report
                            .notes
                            .push(format!("{}; committed locally only", e.message));
                        break;
                    }
                    Err(e) => return Err(committed_first(e, &report)),
                }
                if !opts.pull {
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        format!(
                            "{}/{} has commits this clone lacks; push rejected",
                            up.remote, up.branch
                        ),
                    )
                    .hint("run bd sync without --no-pull"));
                }
            }
            if opts.push && !report.pushed && !report.offline {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "{}/{} kept moving: push rejected {} times",
                        up.remote, up.branch, PUSH_ATTEMPTS
                    ),
                )
                .hint("run bd sync again; everything is committed locally"));
            }
        }
    }
    if !report.commits.is_empty() && !repo.has_identity() {
        report.notes.push(
            "committed as \"bd <bd@localhost>\": git has no identity here (set `git config user.name` and `user.email`)"
                .into(),
        );
    }
    report.conflicts = match backend.call(Request::Conflicts)? {
        Response::Conflicts(c) => c.len() as u64,
        _ => 0,
    };
    Ok(report)
}
