use super::update::render_changed;
use super::{call, unexpected};
use crate::cli_error::CliError;
use crate::context::Ctx;
use bd::api::{Request, Response};
use clap::Args;

/// Close issues
#[derive(Args, Debug)]
pub struct CloseArgs {
    /// Issues to close
    #[arg(required = true)]
    pub ids: Vec<String>,
    /// Why (recorded as close_reason)
    #[arg(short, long)]
    pub reason: Option<String>,
    /// Close a parent whose children are still open
    #[arg(long)]
    pub force: bool,
}

pub fn cmd_close(ctx: &Ctx, a: CloseArgs) -> Result<(), CliError> {
    match call(
        ctx,
        Request::Close {
            ids: super::once_each(a.ids),
            reason: a.reason,
            force: a.force,
        },
    )? {
        Response::Changed(c) => render_changed(ctx, &c, "Closed"),
        other => Err(unexpected(other)),
    }
}
