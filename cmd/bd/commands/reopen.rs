use super::update::render_changed;
use super::{call, unexpected};
use crate::cli_error::CliError;
use crate::context::Ctx;
use bd::api::{Request, Response};
use clap::Args;

/// Reopen closed issues
#[derive(Args, Debug)]
pub struct ReopenArgs {
    /// Issues to reopen
    #[arg(required = true)]
    pub ids: Vec<String>,
}

pub fn cmd_reopen(ctx: &Ctx, a: ReopenArgs) -> Result<(), CliError> {
    match call(
        ctx,
        Request::Reopen {
            ids: super::once_each(a.ids),
        },
    )? {
        Response::Changed(c) => render_changed(ctx, &c, "Reopened"),
        other => Err(unexpected(other)),
    }
}
