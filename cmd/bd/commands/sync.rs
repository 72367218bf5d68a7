use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::api::{Integration, Request, Response, SyncOptions, SyncReport};
use clap::Args;
use std::fmt::Write;

/// Exchange issues with the git remote: commit, pull, apply, push
///
/// Flushes this clone's ops and the snapshot, commits bd's files (only bd's:
/// your own staged and unstaged changes are left alone), fetches and merges the
/// remote branch, applies the other clones' ops, regenerates issues.jsonl and
/// conflicts.jsonl, commits, and pushes (retrying if the remote moved on).
/// Without a remote, or offline, it commits locally and says so.
#[derive(Args, Debug)]
pub struct SyncArgs {
    /// Commit and integrate, but do not push
    #[arg(long)]
    pub no_push: bool,
    /// Commit (and push) without fetching the remote first
    #[arg(long)]
    pub no_pull: bool,
    /// Say what would be committed and exchanged; change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Show the branch, its upstream, what is unsynced, and open conflicts
    #[arg(long, conflicts_with_all = ["dry_run", "no_push", "no_pull", "message"])]
    pub status: bool,
    /// Commit message for bd's files
    #[arg(short, long)]
    pub message: Option<String>,
    /// Try the remote now even if repeated network failures opened its
    /// breaker (bd sync otherwise skips it until the next probe time)
    #[arg(long)]
    pub retry_now: bool,
}

pub fn cmd_sync(ctx: &Ctx, a: SyncArgs) -> Result<(), CliError> {
    let opts = SyncOptions {
        pull: !a.no_pull,
        push: !a.no_push,
        dry_run: a.dry_run,
        message: a.message,
        // A dry run that also counts conflicts and reports freshness.
        status: a.status,
        retry_now: a.retry_now,
    };
    let report = match ctx.backend()?.call(Request::Sync(opts))? {
        Response::Sync(r) => r,
        other => return Err(crate::commands::unexpected(other)),
    };
    if ctx.json {
        return output::json(&report);
    }
    if a.status || a.dry_run {
        // What was asked for: data, on stdout.
        return output::print(&render(&report, a.status));
    }
    output::status(ctx.quiet, render(&report, a.status).trim_end());
    Ok(())
}

fn render(r: &SyncReport, status: bool) -> String {
    let mut s = String::new();
    let target = match &r.upstream {
        Some(u) => format!("{}/{}", u.remote, u.branch),
        None => "no remote".into(),
    };
    if status {
        let _ = writeln!(s, "branch {} → {target}", r.branch);
        if let Some(b) = r.remote_breaker.as_ref().filter(|b| b.consecutive > 0) {
            let _ = writeln!(
                s,
                "remote breaker {}: {} network failure(s) in a row{}",
                super::mesh::state_name(b.state),
                b.consecutive,
                if b.probe_in_ms > 0 {
                    format!(
                        ", next try in {:.0} s (`bd sync --retry-now` tries now)",
                        b.probe_in_ms as f64 / 1000.0
                    )
                } else {
                    String::new()
                }
            );
        }
        if r.files.is_empty() {
            let _ = writeln!(s, "bd's files: all committed");
        } else {
            let _ = writeln!(s, "bd's files not yet committed: {}", r.files.join(", "));
        }
        let _ = writeln!(s, "open conflicts: {}", r.conflicts);
    } else if r.dry_run {
        if r.files.is_empty() {
            let _ = writeln!(s, "Would commit nothing of bd's (all committed)");
        } else {
            let _ = writeln!(s, "Would commit: {}", r.files.join(", "));
        }
    } else {
        let how = match r.integration {
            Some(Integration::Merge) => ", merged the remote",
            Some(Integration::FastForward) => ", fast-forwarded to the remote",
            _ => "",
        };
        let _ = writeln!(
            s,
            "Synced {} with {target}: {} commit(s){how}, {} op(s) from other clones applied, {}",
            r.branch,
            r.commits.len(),
            r.ops_applied,
            if r.pushed { "pushed" } else { "NOT pushed" }
        );
        if r.conflicts > 0 {
            let _ = writeln!(s, "{} open conflict(s): see `bd conflicts`", r.conflicts);
        }
    }
    for n in &r.notes {
        let _ = writeln!(s, "note: {n}");
    }
    s
}
