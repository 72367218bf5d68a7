use super::filters::{DateArgs, FilterArgs};
use super::{call, split_list, unexpected};
use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::api::ListFilter;
use bd::api::{Request, Response};
use clap::Args;

/// List issues (open ones by default) with filters
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only these statuses (comma-separated or repeated); default: all but closed
    #[arg(short, long)]
    pub status: Vec<String>,
    /// Include closed issues
    #[arg(long)]
    pub all: bool,
    /// Case-insensitive text in id, title, description or notes
    #[arg(long)]
    pub text: Option<String>,
    #[command(flatten)]
    pub filters: FilterArgs,
    #[command(flatten)]
    pub dates: DateArgs,
}

pub(super) fn run(
    ctx: &Ctx,
    f: ListFilter,
    format: Option<output::Format>,
) -> Result<(), CliError> {
    match call(ctx, Request::List(f))? {
        Response::Issues(issues) => output::issues(ctx, &issues, "No issues match.", format),
        other => Err(unexpected(other)),
    }
}

pub fn cmd_list(ctx: &Ctx, a: ListArgs) -> Result<(), CliError> {
    let mut f = a.filters.to_filter(None)?;
    a.dates.apply(&mut f)?;
    f.status = split_list(&a.status);
    f.all = a.all;
    f.text = a.text;
    run(ctx, f, a.filters.format)
}
