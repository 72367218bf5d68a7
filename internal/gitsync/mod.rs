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

// `hooks` reaches this as `super::git_error`.
use repo::git_error;
