//! One module per command: `<Verb>Args` (clap derive; the doc comment is the help
//! text) and `cmd_<verb>`.

mod batch;
mod close;
mod comment;
mod config;
mod create;
mod daemon;
mod demo;
mod dep;
mod doctor;
mod export;
mod fields;
mod filters;
mod flush;
mod hooks;
mod import;
mod info;
mod init;
mod label;
mod list;
mod ready;
mod rebuild;
mod resolve;
mod show;
mod stats;
mod sync;
mod update;
mod version;

use crate::cli_error::CliError;
use crate::context::Ctx;
use bd::service::{Request, Response};
use clap::Subcommand;

/// Every `bd` command.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a tracker (.beads/) in this repository
    Init(init::InitArgs),
    /// Create an issue
    Create(create::CreateArgs),
    /// Show issues with dependencies, dependents and comments
    Show(show::ShowArgs),
    /// List issues (open ones by default) with filters
    List(list::ListArgs),
    /// Search issues by text in id, title, description and notes
    Search(list::SearchArgs),
    /// Change issues: fields, labels, or claim one atomically
    Update(update::UpdateArgs),
    /// Close issues
    Close(close::CloseArgs),
    /// Reopen closed issues
    Reopen(close::ReopenArgs),
    /// Issues ready to work on: open, unblocked, by priority then age
    Ready(ready::ReadyArgs),
    /// Issues held back by open blockers, with what blocks them
    Blocked(ready::BlockedArgs),
    /// Run operations from JSON lines as one unit: all of them or none
    Batch(batch::BatchArgs),
    /// Add, remove and inspect dependencies
    #[command(subcommand)]
    Dep(dep::DepCommand),
    /// Add, remove and list labels
    #[command(subcommand)]
    Label(label::LabelCommand),
    /// Add comments
    #[command(subcommand)]
    Comment(comment::CommentCommand),
    /// List the comments of an issue
    Comments(comment::CommentsArgs),
    /// Delete issues (a tombstone that syncs; never resurrected by itself)
    Delete(resolve::DeleteArgs),
    /// List fields written concurrently by different writers
    Conflicts(stats::ConflictsArgs),
    /// Settle a conflicted field with one value that supersedes every contender
    Resolve(resolve::ResolveArgs),
    /// Counts by status, type and priority
    Stats(stats::StatsArgs),
    /// Write every issue as beads-format JSONL (stdout or a file)
    Export(export::ExportArgs),
    /// Record issues from a beads-format JSONL file
    Import(import::ImportArgs),
    /// Write this clone's op file and the issues.jsonl snapshot now
    Flush(flush::FlushArgs),
    /// Rebuild the database from the op files and check the state is unchanged
    Rebuild(rebuild::RebuildArgs),
    /// Exchange issues with the git remote: commit, pull, apply, push
    Sync(sync::SyncArgs),
    /// Manage the git hooks that keep bd's files fresh
    #[command(subcommand)]
    Hooks(hooks::HooksCommand),
    /// Check the tracker's health; --fix repairs what is safe
    Doctor(doctor::DoctorArgs),
    /// Merge driver for bd's derived files (run by git)
    MergeDriver(hooks::MergeDriverArgs),
    /// Read and change the tracker's configuration
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Where the tracker is and how it is doing
    Info(info::InfoArgs),
    /// Run and inspect the per-repository daemon
    #[command(subcommand)]
    Daemon(daemon::DaemonCommand),
    /// Print the version
    Version(version::VersionArgs),
    /// Run simulated agents against a throwaway repository
    Demo(demo::DemoArgs),
}

/// Runs one command.
pub fn run(ctx: &Ctx, command: Command) -> Result<(), CliError> {
    match command {
        Command::Init(a) => init::cmd_init(ctx, a),
        Command::Create(a) => create::cmd_create(ctx, a),
        Command::Show(a) => show::cmd_show(ctx, a),
        Command::List(a) => list::cmd_list(ctx, a),
        Command::Search(a) => list::cmd_search(ctx, a),
        Command::Update(a) => update::cmd_update(ctx, a),
        Command::Close(a) => close::cmd_close(ctx, a),
        Command::Reopen(a) => close::cmd_reopen(ctx, a),
        Command::Ready(a) => ready::cmd_ready(ctx, a),
        Command::Blocked(a) => ready::cmd_blocked(ctx, a),
        Command::Batch(a) => batch::cmd_batch(ctx, a),
        Command::Dep(c) => dep::cmd_dep(ctx, c),
        Command::Label(c) => label::cmd_label(ctx, c),
        Command::Comment(c) => comment::cmd_comment(ctx, c),
        Command::Comments(a) => comment::cmd_comments(ctx, a),
        Command::Conflicts(a) => stats::cmd_conflicts(ctx, a),
        Command::Delete(a) => resolve::cmd_delete(ctx, a),
        Command::Resolve(a) => resolve::cmd_resolve(ctx, a),
        Command::Stats(a) => stats::cmd_stats(ctx, a),
        Command::Export(a) => export::cmd_export(ctx, a),
        Command::Import(a) => import::cmd_import(ctx, a),
        Command::Flush(a) => flush::cmd_flush(ctx, a),
        Command::Rebuild(a) => rebuild::cmd_rebuild(ctx, a),
        Command::Sync(a) => sync::cmd_sync(ctx, a),
        Command::Hooks(c) => hooks::cmd_hooks(ctx, c),
        Command::Doctor(a) => doctor::cmd_doctor(ctx, a),
        Command::MergeDriver(a) => hooks::cmd_merge_driver(ctx, a),
        Command::Config(c) => config::cmd_config(ctx, c),
        Command::Info(a) => info::cmd_info(ctx, a),
        Command::Daemon(c) => daemon::cmd_daemon(ctx, c),
        Command::Version(a) => version::cmd_version(ctx, a),
        Command::Demo(a) => demo::cmd_demo(ctx, a),
    }
}

/// Sends one request through the tracker's backend.
pub fn call(ctx: &Ctx, req: Request) -> Result<Response, CliError> {
    Ok(ctx.backend()?.call(req)?)
}

/// A response of an unexpected shape (a bug, never user error).
pub fn unexpected(resp: Response) -> CliError {
    CliError(bd::Error::internal(format!(
        "unexpected response: {resp:?}"
    )))
}

/// Splits repeated and comma-separated values (`-l a,b -l c`) into a list.
pub fn split_list(values: &[String]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}
