use super::{call, unexpected};
use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::api::{Request, Response};
use clap::Args;

/// Write this clone's op file and the issues.jsonl snapshot now
#[derive(Args, Debug)]
pub struct FlushArgs {}

pub fn cmd_flush(ctx: &Ctx, _a: FlushArgs) -> Result<(), CliError> {
    match call(ctx, Request::Flush)? {
        Response::Flush(r) if ctx.json => output::json(&r),
        Response::Flush(r) => {
            output::status(
                ctx.quiet,
                &format!(
                    "Wrote {} ops and {} issues to {}",
                    r.ops_written, r.issues, r.snapshot
                ),
            );
            Ok(())
        }
        other => Err(unexpected(other)),
    }
}
