use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::client::git::{self, HookState};
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
            let states = git::install(&ctx.paths()?, &std::env::current_exe()?)?;
            show(ctx, &states, "Installed")
        }
        HooksCommand::Uninstall => show(ctx, &git::uninstall(&ctx.paths()?)?, "Uninstalled"),
        HooksCommand::List => {
            let states = git::hooks(&ctx.paths()?)?;
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
    bd::client::git::run_hook(&paths, hook, &mut || {
        ctx.backend_without_auto_start().map_err(|e| e.0)
    })?;
    Ok(())
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
