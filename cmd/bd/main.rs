//! The `bd` command line: parses arguments, builds a request, calls the client and
//! renders the answer. No rules live here.

mod alloc;
mod cli_error;
mod commands;
mod context;
mod output;
mod progress;

use clap::{CommandFactory, FromArgMatches, Parser};

/// mimalloc in the daemon, the system allocator in every short-lived command
/// (see `alloc`).
#[global_allocator]
static ALLOC: alloc::Chosen = alloc::Chosen::new();
use context::{Ctx, GlobalArgs};

/// bd: a local-first issue tracker and work queue for AI coding agents
#[derive(Parser, Debug)]
#[command(name = "bd", version, about, long_about = None, after_help = AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: commands::Command,
}

const AFTER_HELP: &str = "Exit codes: 0 ok, 1 error, 2 usage or invalid input, 3 conflict (claim lost, cycle), 4 done but provisional (a claim the relay could not back).\nStart with `bd init`, then `bd create \"First task\"` and `bd ready`.";

/// Parses a command line: the process's, or one `bd mcp` builds for a tool
/// call. The global flags may also follow the command word, at any depth.
fn parse_cli<I, T>(command: &mut clap::Command, args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    command
        .try_get_matches_from_mut(args)
        .and_then(|mut matches| {
            let mut global = GlobalArgs::from_arg_matches(&matches)?;
            let mut level = &matches;
            while let Some((_, sub)) = level.subcommand() {
                global.merge_command_line(sub);
                level = sub;
            }
            let mut cli = Cli::from_arg_matches_mut(&mut matches)?;
            cli.global = global;
            Ok(cli)
        })
        .map_err(|e| e.format(command))
}

fn main() {
    let mut command = Cli::command();
    let parsed = parse_cli(&mut command, std::env::args_os());
    // Freeing clap's command tree costs a tenth of this process's instructions
    // and buys nothing: the process exits when the command is done.
    std::mem::forget(command);
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => {
            // A script that asked for JSON gets its usage errors as JSON too.
            if e.use_stderr() && std::env::args_os().any(|a| a == "--json") {
                let word = std::env::args()
                    .skip(1)
                    .find(|a| !a.starts_with('-'))
                    .filter(|w| <commands::Command as clap::Subcommand>::has_subcommand(w));
                let hint = match word {
                    Some(w) => format!("see `bd {w} --help`"),
                    None => "see `bd --help`".to_string(),
                };
                let err = cli_error::CliError::from_clap(&e, &hint);
                std::process::exit(err.report(true));
            }
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    if std::env::var_os("BD_DEBUG_ALLOCATOR").is_some() {
        eprintln!("bd: allocator: {}", alloc::name());
    }
    let ctx = Ctx::new(cli.global);
    // Servers and tools run by other programs draw no bars: their stderr is
    // a log, a client's, or git's.
    let serves = matches!(
        cli.command,
        commands::Command::Mcp(_)
            | commands::Command::Daemon(_)
            | commands::Command::Demo(_)
            | commands::Command::MergeDriver(_)
            | commands::Command::Completion(_)
            | commands::Command::CompleteIds(_)
            | commands::Command::ScenarioAgent(_)
    );
    if !serves && progress::wanted(ctx.json, ctx.quiet) {
        progress::install();
    }
    let result = commands::run(&ctx, cli.command);
    let code = match result {
        Ok(()) => cli_error::success_code(),
        Err(e) => e.report(ctx.json),
    };
    std::process::exit(code);
}
