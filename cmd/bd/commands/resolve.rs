use super::update::render_changed;
use super::{call, unexpected};
use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::api::{Request, Response};
use clap::Args;

/// Settle a conflicted field: one value that supersedes every contender
///
/// `bd conflicts` lists the open conflicts with each contender's op id, actor
/// and replica. The resolution is an ordinary op: it syncs to every clone and
/// clears the conflict there too.
#[derive(Args, Debug)]
pub struct ResolveArgs {
    /// The issue
    pub id: String,
    /// The conflicted field (e.g. title, status, assignee; `deleted` for a
    /// delete that raced with edits; `clock_skew` for an op held back; `id`
    /// for an id two clones created; `claim` for late writes under a lapsed
    /// lease; `parent` for moves that crossed on two clones; `quarantine` for
    /// relay batches kept as evidence)
    #[arg(long, short)]
    pub field: String,
    /// The value to keep (`--field deleted`: `deleted`; `clock_skew`: `apply`;
    /// `id`: `ack`; `claim` and `quarantine`: `drop`; `parent`: the parent's
    /// id, or "" for none)
    #[arg(long, conflicts_with = "take", required_unless_present = "take")]
    pub value: Option<String>,
    /// Keep one contender's value: its op id (a prefix is enough), actor or
    /// replica (a prefix is enough); `--field claim`: apply that late write now
    #[arg(long, value_name = "CONTENDER")]
    pub take: Option<String>,
}

pub fn cmd_resolve(ctx: &Ctx, a: ResolveArgs) -> Result<(), CliError> {
    let req = Request::Resolve {
        id: a.id,
        field: a.field,
        value: a.value,
        take: a.take,
    };
    match call(ctx, req)? {
        Response::Changed(c) => render_changed(ctx, &c, "Resolved"),
        Response::Deleted(ids) if ctx.json => output::json(&ids),
        Response::Deleted(ids) => {
            output::status(
                ctx.quiet,
                &format!("Resolved: {} stays deleted", ids.join(", ")),
            );
            Ok(())
        }
        other => Err(unexpected(other)),
    }
}
