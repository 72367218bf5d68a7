//! What `bd sync --status` reports and what sync checks first: which of bd's files
//! differ from HEAD (read cheaply, under `flush.lock`), whether one is in the
//! middle of a merge, how far the branch is from the fetched upstream, and
//! whether git is in the middle of an operation bd must not disturb.

use super::hooks;
use super::remote::Upstream;
use super::repo::{Repo, git_error, index_entry};
use crate::storage::BeadsPaths;
use crate::{Error, ErrorKind, Result};
use git2::{Oid, Repository};
use std::collections::BTreeSet;
use std::path::Path;

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

impl Repo {
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
    pub(super) fn changes(&self, refresh: bool) -> Result<Vec<(String, FileCopy)>> {
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
pub(super) struct FileCopy {
    pub(super) bytes: Vec<u8>,
    pub(super) meta: std::fs::Metadata,
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
