use super::filters::FilterArgs;
use super::{call, unexpected};
use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::api::{Request, Response};
use clap::Args;

/// Issues held back by open blockers, with what blocks them
#[derive(Args, Debug)]
pub struct BlockedArgs {
    #[command(flatten)]
    pub filters: FilterArgs,
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
