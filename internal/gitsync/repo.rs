//! The repository handle: finding the repository around a tracker, where bd's
//! files sit in it, committing them, and the blob and index-entry helpers the
//! other parts share.

use crate::exchange::op_files;
use crate::storage::BeadsPaths;
use crate::{Error, ErrorKind, Result};
use git2::{Oid, Repository};
use std::path::{Path, PathBuf};

pub(super) fn git_error(what: &str, e: git2::Error) -> Error {
    Error::new(ErrorKind::Io, format!("git: {what}: {}", e.message()))
}

/// The repository around a tracker, and where bd's files sit in it.
pub struct Repo {
    pub(super) repo: Repository,
    pub(super) workdir: PathBuf,
    /// `.beads` relative to the work tree, with `/` separators.
    beads_rel: String,
    pub(super) paths: BeadsPaths,
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

    pub(super) fn rel(&self, name: &str) -> String {
        if self.beads_rel.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.beads_rel)
        }
    }

    /// Whether a repository path is one of bd's derived files, which are
    /// regenerated instead of merged.
    pub(super) fn is_derived(&self, path: &str) -> bool {
        path == self.rel("issues.jsonl") || path == self.rel("conflicts.jsonl")
    }

    pub(super) fn is_op_file(&self, path: &str) -> bool {
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
            "members.jsonl",
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

    pub(super) fn head_commit(&self) -> Result<Option<git2::Commit<'_>>> {
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

    /// Whether git knows who commits here (`user.name` and `user.email`).
    pub fn has_identity(&self) -> bool {
        self.repo.signature().is_ok()
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

    pub(super) fn signature(&self) -> Result<git2::Signature<'static>> {
        match self.repo.signature() {
            Ok(s) => Ok(s),
            Err(_) => git2::Signature::now("bd", "bd@localhost")
                .map_err(|e| git_error("making a signature", e)),
        }
    }

    /// Moves the branch to `to`, only if it still points at `from` (a commit the
    /// user made meanwhile is never overwritten).
    pub(super) fn move_branch(
        &self,
        branch_ref: &str,
        to: Oid,
        from: Option<Oid>,
        msg: &str,
    ) -> Result<()> {
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

    /// Settles the conflict `c` on `path` in the merged `index` with the
    /// bytes `merged`. The merged index has no repository behind it, so they
    /// are stored as a blob first and added by id (`add_frombuffer` needs an
    /// index that has one). A path both sides deleted gets nothing back.
    pub(super) fn settle(
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

/// The index entry of a plain file at `path` holding blob `id`, with the stat data
/// git compares to tell an unchanged work-tree file without reading it.
pub(super) fn index_entry(path: &str, id: Oid, meta: &std::fs::Metadata) -> git2::IndexEntry {
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

/// The bytes of a conflict side's blob (empty when that side has none).
pub(super) fn read_blob(repo: &Repository, e: &Option<git2::IndexEntry>) -> Result<Vec<u8>> {
    match e {
        Some(e) => Ok(repo
            .find_blob(e.id)
            .map_err(|x| git_error("reading a conflicted file", x))?
            .content()
            .to_vec()),
        None => Ok(Vec::new()),
    }
}

/// A copy of a conflict-side index entry at stage 0 (merged).
pub(super) fn stage0(e: &git2::IndexEntry, file_size: u32) -> git2::IndexEntry {
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
