use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::api::Request;
use bd::gitsync::Repo;
use bd::gitsync::hooks::HookState;
use clap::{Args, Subcommand};
use std::fmt::Write;

/// Manage the git hooks that keep bd's files fresh
#[derive(Subcommand, Debug)]
pub enum HooksCommand {
    /// Install pre-commit, post-merge and post-checkout hooks (existing hooks are
    /// chained, never replaced) and register the merge driver
    Install,
    /// Remove bd's hooks and put chained ones back
    Uninstall,
    /// Show which hooks are installed
    List,
    /// Run one hook's work (what the installed hooks call)
    Run(RunArgs),
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// pre-commit, post-merge or post-checkout
    pub hook: String,
    /// What git passed to the hook
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn cmd_hooks(ctx: &Ctx, c: HooksCommand) -> Result<(), CliError> {
    match c {
        HooksCommand::Install => {
            let repo = Repo::open(&ctx.paths()?)?;
            let exe = std::env::current_exe()?;
            let states = repo.install_hooks(&exe)?;
            repo.register_merge_driver(&exe)?;
            show(ctx, &states, "Installed")
        }
        HooksCommand::Uninstall => {
            let repo = Repo::open(&ctx.paths()?)?;
            show(ctx, &repo.uninstall_hooks()?, "Uninstalled")
        }
        HooksCommand::List => {
            let repo = Repo::open(&ctx.paths()?)?;
            let states = repo.hook_states()?;
            if ctx.json {
                return output::json(&states);
            }
            output::print(&render(&states, "Hooks"))
        }
        HooksCommand::Run(a) => {
            // A hook must never break the user's git command because of bd:
            // problems are reported and the hook succeeds.
            if let Err(e) = run_hook(ctx, &a.hook) {
                crate::output::stderr_line(&format!("bd: {} hook: {}", a.hook, e.0.message));
            }
            Ok(())
        }
    }
}

fn run_hook(ctx: &Ctx, hook: &str) -> Result<(), CliError> {
    let paths = match ctx.paths() {
        Ok(p) => p,
        Err(_) => return Ok(()), // no tracker here: nothing to do
    };
    match hook {
        "pre-commit" => {
            ctx.backend_without_auto_start()?.call(Request::Flush)?;
            let repo = Repo::open(&paths)?;
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
                return Err(CliError(bd::Error::new(
                    bd::ErrorKind::Io,
                    "git add of bd's files failed",
                )));
            }
            Ok(())
        }
        "post-merge" | "post-checkout" => {
            // In the middle of a rebase (which checks out commits as it goes)
            // the files are git's to change; the next bd command catches up.
            if bd::gitsync::git_dir(&paths).is_some_and(|d| bd::gitsync::operation_in_progress(&d))
            {
                return Ok(());
            }
            // Any command applies the ops that arrived; flush also regenerates
            // issues.jsonl and conflicts.jsonl from them.
            ctx.backend_without_auto_start()?.call(Request::Flush)?;
            Ok(())
        }
        other => Err(CliError(
            bd::Error::invalid(format!("unknown hook {other:?}"))
                .hint("bd runs pre-commit, post-merge and post-checkout"),
        )),
    }
}

fn show(ctx: &Ctx, states: &[HookState], verb: &str) -> Result<(), CliError> {
    if ctx.json {
        return output::json(&states);
    }
    output::status(ctx.quiet, &render(states, verb));
    Ok(())
}

fn render(states: &[HookState], verb: &str) -> String {
    let mut s = format!("{verb}:\n");
    for h in states {
        let _ = write!(s, "  {:<14} {}", h.name, h.installed);
        if let Some(c) = &h.chained {
            let _ = write!(s, " (runs {c} first)");
        }
        if h.stale {
            let _ = write!(s, " [stale: run `bd hooks install`]");
        }
        s.push('\n');
    }
    s
}
