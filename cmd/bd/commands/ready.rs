use super::filters::FilterArgs;
use super::{call, unexpected};
use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::api::{Request, Response};
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

/// Default size of the ready queue shown (`-n 0` shows all).
pub const READY_DEFAULT_LIMIT: usize = 10;

pub fn cmd_ready(ctx: &Ctx, a: ReadyArgs) -> Result<(), CliError> {
    let mut f = a.filters.to_filter(Some(READY_DEFAULT_LIMIT))?;
    if !a.any_assignee && f.assignee.is_none() && !f.unassigned {
        f.takeable_by = Some(ctx.actor.clone());
    }
    match call(ctx, Request::Ready(f))? {
        Response::Issues(issues) => {
            output::issues(ctx, &issues, "No ready work.", a.filters.format)
        }
        other => Err(unexpected(other)),
    }
}
