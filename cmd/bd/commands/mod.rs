//! One module per command: `<Verb>Args` (clap derive; the doc comment is the help
//! text) and `cmd_<verb>`.

mod batch;
mod blocked;
mod claim;
mod close;
mod comment;
mod comments;
mod completion;
mod config;
mod conflicts;
mod create;
mod daemon;
mod delete;
mod demo;
mod demo_relay;
mod dep;
mod doctor;
mod epic;
mod export;
mod fields;
mod filters;
mod flush;
mod graph;
mod hooks;
mod import;
mod info;
mod init;
mod label;
mod list;
mod mcp;
mod merge_driver;
pub mod mesh;
mod onboard;
pub mod prime;
mod ready;
mod rebuild;
mod reopen;
mod resolve;
mod scenario;
mod search;
mod show;
mod stale;
mod stats;
mod sync;
mod update;
mod version;

use crate::cli_error::CliError;
use crate::context::{Ctx, GLOBAL_ARG_IDS, GlobalArgs};
use bd::api::{Request, Response};
use clap::{ArgMatches, Args, FromArgMatches, Subcommand};

/// A command's arguments, built only when that command runs.
///
/// clap's derive builds every command's arguments before parsing, and drops
/// them all afterwards: two thirds of the instructions `bd version` ran, and a
/// hundred pages of heap. `Command::defer` builds a command's arguments when
/// the parser enters it (or when help or completion needs them), so one run
/// builds one command. Help text and errors are unchanged.
///
/// The deferred build also adds the [`GlobalArgs`] to the command, so they are
/// accepted after the command word as well as before it (`main` merges them).
#[derive(Debug)]
pub struct Lazy<T>(pub T);

impl<T: FromArgMatches> FromArgMatches for Lazy<T> {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        T::from_arg_matches(matches).map(Lazy)
    }
    fn from_arg_matches_mut(matches: &mut ArgMatches) -> Result<Self, clap::Error> {
        T::from_arg_matches_mut(matches).map(Lazy)
    }
    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches(matches)
    }
    fn update_from_arg_matches_mut(&mut self, matches: &mut ArgMatches) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches_mut(matches)
    }
}

impl<T: Args> Args for Lazy<T> {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.defer(|c| GlobalArgs::augment_args(T::augment_args(c)))
    }
    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        cmd.defer(|c| GlobalArgs::augment_args(T::augment_args_for_update(c)))
    }
    fn group_id() -> Option<clap::Id> {
        T::group_id()
    }
}

impl<T: Subcommand> Subcommand for Lazy<T> {
    fn augment_subcommands(cmd: clap::Command) -> clap::Command {
        cmd.defer(|c| with_global_args(T::augment_subcommands(c)))
    }
    fn augment_subcommands_for_update(cmd: clap::Command) -> clap::Command {
        cmd.defer(|c| with_global_args(T::augment_subcommands_for_update(c)))
    }
    fn has_subcommand(name: &str) -> bool {
        T::has_subcommand(name)
    }
}

/// Adds the [`GlobalArgs`] to a command group (`bd dep`), marked global so that
/// clap copies them into the group's few subcommands: `bd dep add A B --json`.
fn with_global_args(cmd: clap::Command) -> clap::Command {
    let mut cmd = GlobalArgs::augment_args(cmd);
    for id in GLOBAL_ARG_IDS {
        cmd = cmd.mut_arg(id, |a| a.global(true));
    }
    cmd
}

/// Every `bd` command.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a tracker (.beads/) in this repository
    Init(Lazy<init::InitArgs>),
    /// Create an issue
    Create(Lazy<create::CreateArgs>),
    /// Show issues with dependencies, dependents and comments
    Show(Lazy<show::ShowArgs>),
    /// List issues (open ones by default) with filters
    List(Lazy<list::ListArgs>),
    /// Search issues by text in id, title, description and notes
    Search(Lazy<search::SearchArgs>),
    /// Change issues: fields, labels, or claim one atomically
    Update(Lazy<update::UpdateArgs>),
    /// Take issues, only if nobody has them (a relay lease across machines)
    Claim(Lazy<claim::ClaimArgs>),
    /// Give claims up: unassign, reopen, return the lease
    Unclaim(Lazy<claim::UnclaimArgs>),
    /// Close issues
    Close(Lazy<close::CloseArgs>),
    /// Reopen closed issues
    Reopen(Lazy<reopen::ReopenArgs>),
    /// Issues ready to work on: open, unblocked, by priority then age
    Ready(Lazy<ready::ReadyArgs>),
    /// Issues held back by open blockers, with what blocks them
    Blocked(Lazy<blocked::BlockedArgs>),
    /// In-progress work nobody has touched for a while (--idle 30m)
    Stale(Lazy<stale::StaleArgs>),
    /// Run operations from JSON lines as one unit: all of them or none
    Batch(Lazy<batch::BatchArgs>),
    /// Add, remove and inspect dependencies
    #[command(subcommand)]
    Dep(Lazy<dep::DepCommand>),
    /// Add, remove and list labels
    #[command(subcommand)]
    Label(Lazy<label::LabelCommand>),
    /// Add comments
    #[command(subcommand)]
    Comment(Lazy<comment::CommentCommand>),
    /// List the comments of an issue
    Comments(Lazy<comments::CommentsArgs>),
    /// How far epics have got: done/total under each, ready, in progress, blockers
    #[command(subcommand)]
    Epic(Lazy<epic::EpicCommand>),
    /// Delete issues (a tombstone that syncs; never resurrected by itself)
    Delete(Lazy<delete::DeleteArgs>),
    /// List fields written concurrently by different writers, ops held for clock
    /// skew, and ids two clones created
    Conflicts(Lazy<conflicts::ConflictsArgs>),
    /// Settle a conflicted field with one value that supersedes every contender
    Resolve(Lazy<resolve::ResolveArgs>),
    /// Counts by status, type and priority
    Stats(Lazy<stats::StatsArgs>),
    /// Write every issue as beads-format JSONL (stdout or a file)
    Export(Lazy<export::ExportArgs>),
    /// Record issues from a beads-format JSONL file
    Import(Lazy<import::ImportArgs>),
    /// Write this clone's op file and the issues.jsonl snapshot now
    Flush(Lazy<flush::FlushArgs>),
    /// Rebuild the database from the op files and check the state is unchanged
    Rebuild(Lazy<rebuild::RebuildArgs>),
    /// Exchange issues with the git remote: commit, pull, apply, push
    Sync(Lazy<sync::SyncArgs>),
    /// Manage the git hooks that keep bd's files fresh
    #[command(subcommand)]
    Hooks(Lazy<hooks::HooksCommand>),
    /// Join, leave and inspect the relay that carries ops between machines' daemons
    #[command(subcommand)]
    Mesh(Lazy<mesh::MeshCommand>),
    /// Check the tracker's health; --fix repairs what is safe
    Doctor(Lazy<doctor::DoctorArgs>),
    /// Merge driver for bd's derived files (run by git)
    MergeDriver(Lazy<merge_driver::MergeDriverArgs>),
    /// Read and change the tracker's configuration
    #[command(subcommand)]
    Config(Lazy<config::ConfigCommand>),
    /// Where the tracker is and how it is doing
    Info(Lazy<info::InfoArgs>),
    /// Run and inspect the per-repository daemon
    #[command(subcommand)]
    Daemon(Lazy<daemon::DaemonCommand>),
    /// Print the version
    Version(Lazy<version::VersionArgs>),
    /// Run simulated agents against a throwaway repository
    Demo(Lazy<demo::DemoArgs>),
    /// What an agent needs at the start of a session: workflow, commands, live state
    Prime(Lazy<prime::PrimeArgs>),
    /// The dependency graph of an epic or of everything open, as Mermaid or dot
    Graph(Lazy<graph::GraphArgs>),
    /// Add (or --remove) a short marked section about bd in AGENTS.md
    Onboard(Lazy<onboard::OnboardArgs>),
    /// Serve the tracker to agents over the Model Context Protocol (stdio)
    Mcp(Lazy<mcp::McpArgs>),
    /// Print a shell completion script (bash, zsh, fish, powershell, elvish)
    Completion(Lazy<completion::CompletionArgs>),
    #[command(name = "__complete-ids", hide = true)]
    CompleteIds(Lazy<completion::CompleteIdsArgs>),
    #[command(name = "__scenario-agent", hide = true)]
    ScenarioAgent(Lazy<scenario::ScenarioAgentArgs>),
}

/// Runs one command.
pub fn run(ctx: &Ctx, command: Command) -> Result<(), CliError> {
    match command {
        Command::Init(Lazy(a)) => init::cmd_init(ctx, a),
        Command::Create(Lazy(a)) => create::cmd_create(ctx, a),
        Command::Show(Lazy(a)) => show::cmd_show(ctx, a),
        Command::List(Lazy(a)) => list::cmd_list(ctx, a),
        Command::Search(Lazy(a)) => search::cmd_search(ctx, a),
        Command::Update(Lazy(a)) => update::cmd_update(ctx, a),
        Command::Claim(Lazy(a)) => claim::cmd_claim(ctx, a),
        Command::Unclaim(Lazy(a)) => claim::cmd_unclaim(ctx, a),
        Command::Close(Lazy(a)) => close::cmd_close(ctx, a),
        Command::Reopen(Lazy(a)) => reopen::cmd_reopen(ctx, a),
        Command::Ready(Lazy(a)) => ready::cmd_ready(ctx, a),
        Command::Blocked(Lazy(a)) => blocked::cmd_blocked(ctx, a),
        Command::Stale(Lazy(a)) => stale::cmd_stale(ctx, a),
        Command::Batch(Lazy(a)) => batch::cmd_batch(ctx, a),
        Command::Dep(Lazy(c)) => dep::cmd_dep(ctx, c),
        Command::Label(Lazy(c)) => label::cmd_label(ctx, c),
        Command::Comment(Lazy(c)) => comment::cmd_comment(ctx, c),
        Command::Comments(Lazy(a)) => comments::cmd_comments(ctx, a),
        Command::Epic(Lazy(c)) => epic::cmd_epic(ctx, c),
        Command::Conflicts(Lazy(a)) => conflicts::cmd_conflicts(ctx, a),
        Command::Delete(Lazy(a)) => delete::cmd_delete(ctx, a),
        Command::Resolve(Lazy(a)) => resolve::cmd_resolve(ctx, a),
        Command::Stats(Lazy(a)) => stats::cmd_stats(ctx, a),
        Command::Export(Lazy(a)) => export::cmd_export(ctx, a),
        Command::Import(Lazy(a)) => import::cmd_import(ctx, a),
        Command::Flush(Lazy(a)) => flush::cmd_flush(ctx, a),
        Command::Rebuild(Lazy(a)) => rebuild::cmd_rebuild(ctx, a),
        Command::Sync(Lazy(a)) => sync::cmd_sync(ctx, a),
        Command::Hooks(Lazy(c)) => hooks::cmd_hooks(ctx, c),
        Command::Mesh(Lazy(c)) => mesh::cmd_mesh(ctx, c),
        Command::Doctor(Lazy(a)) => doctor::cmd_doctor(ctx, a),
        Command::MergeDriver(Lazy(a)) => merge_driver::cmd_merge_driver(ctx, a),
        Command::Config(Lazy(c)) => config::cmd_config(ctx, c),
        Command::Info(Lazy(a)) => info::cmd_info(ctx, a),
        Command::Daemon(Lazy(c)) => daemon::cmd_daemon(ctx, c),
        Command::Version(Lazy(a)) => version::cmd_version(ctx, a),
        Command::Demo(Lazy(a)) => demo::cmd_demo(ctx, a),
        Command::Prime(Lazy(a)) => prime::cmd_prime(ctx, a),
        Command::Graph(Lazy(a)) => graph::cmd_graph(ctx, a),
        Command::Onboard(Lazy(a)) => onboard::cmd_onboard(ctx, a),
        Command::Mcp(Lazy(a)) => mcp::cmd_mcp(ctx, a),
        Command::Completion(Lazy(a)) => completion::cmd_completion(ctx, a),
        Command::CompleteIds(Lazy(a)) => completion::cmd_complete_ids(ctx, a),
        Command::ScenarioAgent(Lazy(a)) => scenario::cmd_scenario_agent(ctx, a),
    }
}

/// Sends one request through the tracker's backend until its real outcome is
/// known (`bd::client::call_reliably`): a write carries a request id
/// (`--request-id`, else a fresh random one), so it is resent through a new
/// daemon or in-process when its daemon dies, restarts or falls silent, and
/// never applied twice; `--timeout` bounds the wait.
pub fn call(ctx: &Ctx, req: Request) -> Result<Response, CliError> {
    call_as(ctx, req, ctx.request_id.clone())
}

/// [`call`] with an explicit request id (a batch file may name its own).
pub fn call_as(ctx: &Ctx, req: Request, request_id: Option<String>) -> Result<Response, CliError> {
    let request_id = match (req.is_write(), request_id) {
        (true, Some(id)) => {
            bd::api::validate_request_id(&id)?;
            Some(id)
        }
        (true, None) => Some(bd::client::new_request_id()?),
        (false, Some(_)) => {
            return Err(CliError::usage(
                "--request-id applies to commands that change the tracker",
                "drop --request-id: reading is always safe to repeat",
            ));
        }
        (false, None) => None,
    };
    let paths = ctx.paths()?;
    let deadline_ms = bd::api::time::now_ms() + ctx.timeout.as_millis() as u64;
    let delivered = bd::client::call_reliably(
        &mut || ctx.backend().map_err(|e| e.0),
        &paths,
        req,
        request_id.clone(),
        deadline_ms,
    )?;
    if delivered.late {
        crate::output::stderr_line(&format!(
            "bd: applied (request {}); its answer came after --timeout",
            request_id.as_deref().unwrap_or("?")
        ));
    }
    Ok(delivered.response)
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

/// The ids once each, in the order given (`bd show X X` shows X once).
pub fn once_each(ids: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(ids.len());
    for id in ids {
        if !out.contains(&id) {
            out.push(id);
        }
    }
    out
}
