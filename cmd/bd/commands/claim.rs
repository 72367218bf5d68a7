use super::update::{mark_unleased, parse_ttl, render_changed};
use super::{call, once_each, unexpected};
use crate::cli_error::CliError;
use crate::context::Ctx;
use bd::api::{Request, Response, UpdateRequest};
use clap::Args;

/// Take issues: assign them to you and start them, only if nobody has them
///
/// All or none: exit 3 names who holds one already. With --ttl (or the
/// tracker's `claim.ttl`), the claim lapses after that long without a write
/// by you to the issue (any change or comment renews it, and so does
/// `bd claim ID --renew`): the issue is then ready again, with a comment
/// saying whose claim lapsed, and `bd stale` lists claims about to lapse.
/// Claiming an issue you hold renews it. In a clone that joined
/// a relay (`bd mesh join`), the claim first takes the relay's lease of each
/// issue, so only one agent in the whole mesh wins it; the lease's token
/// (which only grows) goes on every op you write to the issue, and the lease
/// is renewed while you write to it. Close or `bd unclaim` gives it back;
/// unrenewed, it expires after --ttl and another agent may take the issue
/// over. When the relay cannot be asked, the claim is granted by this clone
/// alone, marked provisional, and bd exits 4: it becomes a lease when the
/// relay is back, or a claim conflict (`bd conflicts`) if another clone
/// claimed the issue meanwhile.
#[derive(Args, Debug)]
pub struct ClaimArgs {
    /// Issues to claim
    #[arg(required = true)]
    pub ids: Vec<String>,
    /// The claim lapses after this long without a write by you to the issue
    /// (e.g. 30m or 1h30m, a bare number is seconds; 10s to 24h; default:
    /// config claim.ttl, else none; a relay
    /// lease without it lasts 15m)
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
    pub ttl: Option<u64>,
    /// Only renew claims you hold (exit 3 for an issue you do not hold, or
    /// whose claim lapsed); with --ttl, also change its time limit
    #[arg(long)]
    pub renew: bool,
}

/// Give claims up: unassign and reopen issues you hold, and return their leases
///
/// Refused (exit 3) for an issue someone else holds; an unassigned issue is
/// left as it is.
#[derive(Args, Debug)]
pub struct UnclaimArgs {
    /// Issues to give up
    #[arg(required = true)]
    pub ids: Vec<String>,
}

pub fn cmd_claim(ctx: &Ctx, a: ClaimArgs) -> Result<(), CliError> {
    let req = UpdateRequest {
        ids: once_each(a.ids),
        claim: true,
        claim_ttl_ms: a.ttl,
        renew: a.renew,
        ..Default::default()
    };
    let verb = if a.renew { "Renewed" } else { "Claimed" };
    match call(ctx, Request::Update(req))? {
        Response::Changed(mut c) => {
            mark_unleased(ctx, &mut c);
            render_changed(ctx, &c, verb)
        }
        other => Err(unexpected(other)),
    }
}

pub fn cmd_unclaim(ctx: &Ctx, a: UnclaimArgs) -> Result<(), CliError> {
    let req = UpdateRequest {
        ids: once_each(a.ids),
        unclaim: true,
        ..Default::default()
    };
    match call(ctx, Request::Update(req))? {
        Response::Changed(c) => render_changed(ctx, &c, "Unclaimed"),
        other => Err(unexpected(other)),
    }
}
