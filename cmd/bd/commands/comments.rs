use super::{call, unexpected};
use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::api::{Request, Response};
use clap::Args;

/// List the comments of an issue
#[derive(Args, Debug)]
pub struct CommentsArgs {
    /// The issue
    pub id: String,
}

pub fn cmd_comments(ctx: &Ctx, a: CommentsArgs) -> Result<(), CliError> {
    match call(ctx, Request::Comments { id: a.id })? {
        Response::Comments(c) if ctx.json => output::json(&c),
        Response::Comments(c) if c.is_empty() => {
            output::status(ctx.quiet, "No comments.");
            Ok(())
        }
        Response::Comments(c) => {
            let s: String = c
                .iter()
                .map(|c| {
                    format!(
                        "[{}] {}: {}\n",
                        c.created_at,
                        c.author,
                        crate::output::indent_continuation(&c.text, "  ")
                    )
                })
                .collect();
            output::print(&s)
        }
        other => Err(unexpected(other)),
    }
}
