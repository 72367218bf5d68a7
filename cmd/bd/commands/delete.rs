use super::{call, unexpected};
use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::api::{Request, Response};
use clap::Args;

/// Delete issues (a tombstone; it syncs like any change and never comes back by itself)
#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// Issues to delete
    #[arg(required = true)]
    pub ids: Vec<String>,
    /// Delete even when open issues depend on these (their edges then hold
    /// nothing back)
    #[arg(long)]
    pub force: bool,
    /// Delete the open issues that depend on these too, recursively
    #[arg(long, conflicts_with = "force")]
    pub cascade: bool,
}

pub fn cmd_delete(ctx: &Ctx, a: DeleteArgs) -> Result<(), CliError> {
    let req = Request::Delete {
        ids: a.ids,
        force: a.force,
        cascade: a.cascade,
    };
    match call(ctx, req)? {
        Response::Deleted(ids) if ctx.json => output::json(&ids),
        Response::Deleted(ids) if ids.is_empty() => {
            output::status(ctx.quiet, "Nothing deleted (already deleted).");
            Ok(())
        }
        Response::Deleted(ids) => {
            output::status(ctx.quiet, &format!("Deleted {}", ids.join(", ")));
            Ok(())
        }
        other => Err(unexpected(other)),
    }
}
