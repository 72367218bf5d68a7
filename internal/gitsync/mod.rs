//! `bd sync`'s git side: committing bd's files, integrating the remote branch and
//! pushing. Local work goes through git2 (no network features); fetch and push run
//! the `git` program, so the user's credentials, ssh config and hooks apply.
//!
//! The user's own work is never touched: bd commits only its own files (a tree
//! built from HEAD with bd's paths replaced, and only those index entries
//! updated), and integrating the remote refuses before changing anything if an
//! incoming change overlaps a file the user has modified or staged.
//!
//! The parts: [`Repo`] (`repo`) is the handle on the repository and bd's paths in
//! it; `status` compares bd's files with HEAD; `remote` runs fetch and push;
//! `merge` brings fetched work in; `sync` is `bd sync` itself; `hooks` holds the
//! git hooks and the merge driver.

pub mod hooks;
mod merge;
mod remote;
mod repo;
mod status;
mod sync;

pub use merge::Integration;
pub use remote::Upstream;
pub use repo::Repo;
pub use status::{git_dir, operation_in_progress};
pub use sync::{PUSH_ATTEMPTS, SyncOptions, SyncReport, sync};

/// The breaker over this clone's git remote, once it has seen a failure
/// (see `bd sync --retry-now`).
pub fn remote_breaker(paths: &crate::storage::BeadsPaths) -> Option<crate::rpc::BreakerView> {
    let repo = Repo::open(paths).ok()?;
    let up = repo.upstream().ok()??;
    let b = remote::RemoteBreaker::load(&repo, &up.remote);
    (b.breaker.failures > 0).then(|| b.view())
}

// `hooks` reaches this as `super::git_error`.
use repo::git_error;
