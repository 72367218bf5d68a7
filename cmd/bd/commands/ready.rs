use super::filters::FilterArgs;
use super::{call, unexpected};
use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::service::{Request, Response};
use clap::Args;

/// Issues ready to work on: open, unblocked, by priority then age
///
/// By default what the acting agent can take: unassigned issues and its own
/// (claimed work of others is left out; `--any-assignee` shows it). An epic
/// is listed once its children are closed.
#[derive(Args, Debug)]
pub struct ReadyArgs {
    #[command(flatten)]
    pub filters: FilterArgs,
    /// Also list issues assigned to others
    #[arg(long)]
    pub any_assignee: bool,
}

/// Issues held back by open blockers, with what blocks them
#[derive(Args, Debug)]
pub struct BlockedArgs {
    #[command(flatten)]
    pub filters: FilterArgs,
}

/// Default size of the ready queue shown (`-n 0` shows all).
pub const READY_DEFAULT_LIMIT: usize = 10;

pub fn cmd_ready(ctx: &Ctx, a: ReadyArgs) -> Result<(), CliError> {
    let mut f = a.filters.to_filter(Some(READY_DEFAULT_LIMIT))?;
    if !a.any_assignee && f.assignee.is_none() && !f.unassigned {
        f.takeable_by = Some(ctx.actor.clone());
    }
    match call(ctx, Request::Ready(f))? {
        Response::Issues(issues) => output::issues(ctx, &issues, "No ready work."),
        other => Err(unexpected(other)),
    }
}

pub fn cmd_blocked(ctx: &Ctx, a: BlockedArgs) -> Result<(), CliError> {
    let f = a.filters.to_filter(None)?;
    match call(ctx, Request::Blocked(f))? {
        Response::Blocked(b) if ctx.json => output::json(&b),
        Response::Blocked(b) if b.is_empty() => {
            output::status(ctx.quiet, "Nothing is blocked.");
            Ok(())
        }
        Response::Blocked(b) => {
            let rows: Vec<Vec<String>> = b
                .iter()
                .map(|x| {
                    let by = if x.blocked_by.is_empty() {
                        "(status blocked)".to_string()
                    } else {
                        x.blocked_by.join(", ")
                    };
                    vec![
                        x.issue.id.clone(),
                        format!("P{}", x.issue.priority),
                        by,
                        x.issue.title.clone(),
                    ]
                })
                .collect();
            output::print(&output::table(&["ID", "PRI", "BLOCKED BY", "TITLE"], &rows))
        }
        other => Err(unexpected(other)),
    }
}
