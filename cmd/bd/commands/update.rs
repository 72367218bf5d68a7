use super::fields::FieldArgs;
use super::{call, split_list, unexpected};
use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::api::{Changed, Request, Response, UpdateRequest};
use clap::Args;

/// Change issues: fields, labels, or claim one atomically
#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// Issues to change (all or none change)
    #[arg(required = true)]
    pub ids: Vec<String>,
    /// New title
    #[arg(long)]
    pub title: Option<String>,
    /// New status: open, in_progress, blocked, deferred, closed
    #[arg(short, long)]
    pub status: Option<String>,
    #[command(flatten)]
    pub fields: FieldArgs,
    /// Add labels (comma-separated or repeated)
    #[arg(long = "add-label", value_name = "LABEL")]
    pub add_labels: Vec<String>,
    /// Remove labels
    #[arg(long = "remove-label", value_name = "LABEL")]
    pub remove_labels: Vec<String>,
    /// Replace all labels with these ('' for none)
    #[arg(long = "set-labels", value_name = "LABELS")]
    pub set_labels: Option<String>,
    /// Take the issue: assign it to you and start it, only if nobody has it (exit 3 if taken)
    #[arg(long)]
    pub claim: bool,
    /// Move under this parent: its parent link replaces the old one ('' takes it
    /// out from under its parent); refused if the parent lies under the issue
    #[arg(long, value_name = "ID")]
    pub parent: Option<String>,
    /// With --claim: the claim lapses after this long without a write by you
    /// to the issue (e.g. 30m or 1h30m, a bare number is seconds; 10s to 24h;
    /// default: config claim.ttl, else none)
    #[arg(long, value_name = "DURATION", requires = "claim", value_parser = parse_ttl)]
    pub ttl: Option<u64>,
}

/// Parses a claim's `--ttl` (10s to 24h) into ms.
pub fn parse_ttl(s: &str) -> Result<u64, String> {
    let ms = bd::api::time::parse_duration_any_ms(s).ok_or_else(|| {
        format!("{s:?} is not a duration such as 90s, 15m or 1h30m (a bare number is seconds)")
    })?;
    if !bd::api::CLAIM_TTL_MS.contains(&ms) {
        return Err(format!("a claim lasts 10s to 24h without renewal, not {s}"));
    }
    Ok(ms)
}

/// Marks the claimed issues of an answer that carry no lease as
/// provisional when this clone joined a relay: no daemon connected to the
/// relay answered the claim (it ran without the daemon, or the daemon
/// started before the clone joined), so no relay lease backs it.
pub fn mark_unleased(ctx: &Ctx, changed: &mut [Changed]) {
    if changed.iter().all(|c| c.lease.is_some()) {
        return;
    }
    // Most clones never join a relay: a config read settles it for them.
    let joined = ctx.paths().ok().is_some_and(|p| {
        bd::client::mesh::relay_configured(&p)
            && super::mesh::config_dir()
                .ok()
                .and_then(|dir| bd::client::mesh::status(&p, &dir, false).ok())
                .is_some_and(|st| st.joined)
    });
    if !joined {
        return;
    }
    for c in changed.iter_mut().filter(|c| c.lease.is_none()) {
        c.lease = Some(bd::api::LeaseInfo {
            token: None,
            expires_at: None,
            provisional: true,
            reason: Some(
                "no daemon connected to the relay took this claim (it ran without the daemon)"
                    .into(),
            ),
        });
    }
}

/// Whether an answer holds a provisional claim (a batch's included).
pub fn has_provisional(resp: &Response) -> bool {
    match resp {
        Response::Changed(c) => c
            .iter()
            .any(|c| c.lease.as_ref().is_some_and(|l| l.provisional)),
        Response::Batch(rs) => rs.iter().any(has_provisional),
        _ => false,
    }
}

/// Prints per-issue outcomes of update, close, reopen and label changes; a
/// provisional claim among them makes the command exit 4.
pub fn render_changed(ctx: &Ctx, changed: &[Changed], verb: &str) -> Result<(), CliError> {
    if changed
        .iter()
        .any(|c| c.lease.as_ref().is_some_and(|l| l.provisional))
    {
        crate::cli_error::succeed_with(crate::cli_error::EXIT_PROVISIONAL);
    }
    if ctx.json {
        return output::json(&changed);
    }
    let mut s = String::new();
    for c in changed {
        if ctx.quiet {
            s.push_str(&format!("{}\n", c.issue.id));
            continue;
        } else if c.changed {
            s.push_str(&format!("{verb} {}: {}\n", c.issue.id, c.issue.title));
        } else {
            s.push_str(&format!("{} unchanged (already so)\n", c.issue.id));
        }
        if let (true, Some(at)) = (
            verb == "Claimed" || verb == "Renewed",
            &c.issue.claim_expires_at,
        ) {
            s.push_str(&format!(
                "  lapses at {at} unless you write to it (bd claim {} --renew)\n",
                c.issue.id
            ));
        }
        match &c.lease {
            Some(l) if l.provisional => s.push_str(&format!(
                "  provisional: {}; it becomes a lease when the relay is back, or a claim conflict if another clone claimed {} meanwhile\n",
                l.reason.as_deref().unwrap_or("the relay could not be asked"),
                c.issue.id
            )),
            Some(l) => s.push_str(&format!(
                "  lease {} until {}, renewed while you write to it\n",
                l.token.unwrap_or(0),
                l.expires_at.as_deref().unwrap_or("?")
            )),
            None => {}
        }
    }
    output::print(&s)
}

pub fn cmd_update(ctx: &Ctx, a: UpdateArgs) -> Result<(), CliError> {
    let f = a.fields;
    let req = UpdateRequest {
        ids: super::once_each(a.ids),
        title: a.title,
        priority: f.priority()?,
        description: f.description,
        design: f.design,
        acceptance_criteria: f.acceptance,
        notes: f.notes,
        status: a.status,
        issue_type: f.issue_type,
        assignee: f.assignee,
        external_ref: f.external_ref,
        add_labels: split_list(&a.add_labels),
        remove_labels: split_list(&a.remove_labels),
        set_labels: a.set_labels.map(|s| split_list(&[s])),
        claim: a.claim,
        claim_ttl_ms: a.ttl,
        renew: false,
        unclaim: false,
        parent: a.parent,
    };

    let verb = if req.claim { "Claimed" } else { "Updated" };
    let claim = req.claim;
    match call(ctx, Request::Update(req))? {
        Response::Changed(mut c) => {
            if claim {
                mark_unleased(ctx, &mut c);
            }
            render_changed(ctx, &c, verb)
        }
        other => Err(unexpected(other)),
    }
}
