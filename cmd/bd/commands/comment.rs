use super::{call, unexpected};
use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::api::{Request, Response};
use clap::{Args, Subcommand};

/// Add comments
#[derive(Subcommand, Debug)]
pub enum CommentCommand {
    /// Add a comment to an issue
    Add(CommentAddArgs),
}

#[derive(Args, Debug)]
pub struct CommentAddArgs {
    /// The issue
    pub id: String,
    /// Comment text ('-' reads it from stdin)
    pub text: String,
}

pub fn cmd_comment(ctx: &Ctx, c: CommentCommand) -> Result<(), CliError> {
    let CommentCommand::Add(a) = c;
    let text = if a.text == "-" {
        // A file or heredoc ends with a newline that is not part of the text.
        let (mut t, _) = output::read_stdin()?;
        let kept = t.trim_end_matches(['\n', '\r']).len();
        t.truncate(kept);
        t
    } else {
        a.text
    };
    match call(ctx, Request::CommentAdd { id: a.id, text })? {
        Response::Comment(c) if ctx.json => output::json(&c),
        Response::Comment(c) if ctx.quiet => output::print(&format!("{}\n", c.id)),
        Response::Comment(c) => output::print(&format!("Commented on {} ({})\n", c.issue_id, c.id)),
        other => Err(unexpected(other)),
    }
}
