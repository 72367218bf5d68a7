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
    let format = output::format_of(ctx, a.filters.format)?;
    match call(ctx, Request::Blocked(f))? {
        Response::Blocked(b) if ctx.json => output::json(&b),
        Response::Blocked(b) if format == output::Format::Tsv => {
            let rows: Vec<Vec<String>> = b
                .iter()
                .map(|x| {
                    vec![
                        x.issue.id.clone(),
                        x.issue.priority.to_string(),
                        x.blocked_by.join(","),
                        x.issue.title.clone(),
                    ]
                })
                .collect();
            output::print_data(&output::tsv(
                &["id", "priority", "blocked_by", "title"],
                &rows,
            ))
        }
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
            let colour = |col: usize, text: &str| match col {
                0 => output::ID_COLOUR,
                1 => text
                    .strip_prefix('P')
                    .and_then(|n| n.parse().ok())
                    .and_then(output::priority_colour),
                2 => output::ID_COLOUR.filter(|_| !text.starts_with('(')),
                _ => None,
            };
            output::print_table(&output::table_coloured(
                &["ID", "PRI", "BLOCKED BY", "TITLE"],
                &rows,
                colour,
            ))
        }
        other => Err(unexpected(other)),
    }
}
