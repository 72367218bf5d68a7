use super::filters::{DateArgs, FilterArgs};
use super::split_list;
use crate::cli_error::CliError;
use crate::context::Ctx;
use clap::Args;

/// Search issues by text in id, title, description and notes
#[derive(Args, Debug)]
pub struct SearchArgs {
    /// Text to look for (case-insensitive)
    pub query: String,
    /// Only these statuses; default: every status
    #[arg(short, long)]
    pub status: Vec<String>,
    #[command(flatten)]
    pub filters: FilterArgs,
    #[command(flatten)]
    pub dates: DateArgs,
}

pub fn cmd_search(ctx: &Ctx, a: SearchArgs) -> Result<(), CliError> {
    if a.query.trim().is_empty() {
        return Err(CliError::usage(
            "empty search text",
            "bd search \"login bug\"",
        ));
    }
    let mut f = a.filters.to_filter(None)?;
    a.dates.apply(&mut f)?;
    f.status = split_list(&a.status);
    f.all = true;
    f.text = Some(a.query);
    super::list::run(ctx, f, a.filters.format)
}
