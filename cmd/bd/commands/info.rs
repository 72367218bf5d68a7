use super::{call, unexpected};
use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::api::{Request, Response};
use clap::Args;

/// Where the tracker is and how it is doing
#[derive(Args, Debug)]
pub struct InfoArgs {}

pub fn cmd_info(ctx: &Ctx, _a: InfoArgs) -> Result<(), CliError> {
    match call(ctx, Request::Info)? {
        Response::Info(i) if ctx.json => output::json(&i),
        Response::Info(i) => {
            let snap = if i.snapshot.dirty {
                format!(
                    "behind ({} of {} ops; run `bd flush`)",
                    i.snapshot.snapshot_ops.unwrap_or(0),
                    i.snapshot.ops
                )
            } else {
                "up to date".to_string()
            };
            output::print(&format!(
                "bd {}  mode: {}\ntracker:  {}\ndatabase: {} (schema v{})\nreplica:  {}\nprefix:   {}\nissues:   {}\nsnapshot: {snap}\n",
                i.version,
                i.mode,
                i.beads_dir,
                i.database,
                i.schema_version,
                i.replica,
                i.prefix,
                i.issues
            ))
        }
        other => Err(unexpected(other)),
    }
}
