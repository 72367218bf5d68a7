use super::call;
use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::api::{ListFilter, Request, Response};
use clap::Args;
use serde::Serialize;

/// What an agent needs at the start of a session here, in a few hundred words
///
/// The workflow (ready → claim → work → close; create what you discover),
/// the commands and flags an agent uses, and the live state: how much is
/// ready, what the acting agent holds, and conflicts waiting. Paste it into
/// an agent's context, or have the agent run it first.
#[derive(Args, Debug)]
pub struct PrimeArgs {}

/// The workflow, as numbered steps.
pub const WORKFLOW: [&str; 5] = [
    "bd ready --json: pick the first issue (highest priority, nothing blocking it)",
    "bd claim ID: take it (exit 3: someone has it, pick another; exit 4: granted provisionally, the relay is away)",
    "work; record progress with bd update ID --notes \"...\" and bd comment add ID \"...\"",
    "bd create \"TITLE\" --deps discovered-from:ID for anything new you find (-t bug, -p 0-4)",
    "bd close ID -r \"what was done\" when finished; then back to bd ready",
];

/// The commands an agent uses, one line each.
pub const COMMANDS: [&str; 10] = [
    "bd ready --json [-n 5] [-l LABEL] [--unassigned]   what you can take now",
    "bd show ID --json                                   fields, deps, comments",
    "bd claim ID / bd unclaim ID                         take / give back, atomically",
    "bd update ID -s STATUS -p N --notes TEXT            change fields",
    "bd create TITLE -d TEXT -p N -t TYPE --parent ID --deps blocks:ID",
    "bd dep add ID OTHER -t blocks                       ID waits for OTHER",
    "bd close ID -r REASON                               finish",
    "bd batch -f plan.jsonl                              many writes, all or none",
    "bd conflicts / bd resolve ID --field F --take WHO   settle concurrent edits",
    "bd sync                                             exchange through git",
];

/// `bd prime --json`.
#[derive(Serialize)]
struct Prime<'a> {
    actor: &'a str,
    workflow: &'a [&'a str],
    commands: &'a [&'a str],
    ready: u64,
    held: Vec<String>,
    /// Claims of yours that lapsed (no write by you within their time
    /// limit): anyone may take these now.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    lapsed: Vec<String>,
    conflicts: u64,
}

pub fn cmd_prime(ctx: &Ctx, _a: PrimeArgs) -> Result<(), CliError> {
    let Response::Stats(stats) = call(ctx, Request::Stats)? else {
        return Err(CliError(bd::Error::internal("unexpected answer to stats")));
    };
    let mine = match call(
        ctx,
        Request::List(ListFilter {
            assignee: Some(ctx.actor.clone()),
            status: vec!["in_progress".into()],
            limit: Some(20),
            ..Default::default()
        }),
    )? {
        Response::Issues(issues) => issues,
        _ => Vec::new(),
    };
    // A claim past its time limit is no longer held, even before bd has
    // written its lapse (the daemon's timer, or the next write, does).
    let now = bd::api::time::now_ms() as i64;
    let (lapsed, held): (Vec<_>, Vec<_>) = mine.into_iter().partition(|i| {
        i.claim_expires_at
            .as_deref()
            .and_then(bd::api::time::parse_rfc3339)
            .is_some_and(|t| t <= now)
    });
    let line = |i: bd::api::Issue| format!("{} {}", i.id, i.title);
    let held: Vec<String> = held.into_iter().map(line).collect();
    let lapsed: Vec<String> = lapsed.into_iter().map(line).collect();
    let p = Prime {
        actor: &ctx.actor,
        workflow: &WORKFLOW,
        commands: &COMMANDS,
        ready: stats.ready,
        held,
        lapsed,
        conflicts: stats.conflicts,
    };
    if ctx.json {
        return output::json(&p);
    }
    let mut s = String::new();
    s.push_str("# bd: this repository's issue tracker and work queue\n\n");
    s.push_str("Work through bd, not through TODO files. Every command takes --json; exit 0 ok, 1 error, 2 bad input, 3 refused by the current state, 4 done provisionally.\n\n");
    s.push_str("## Workflow\n");
    for (n, step) in WORKFLOW.iter().enumerate() {
        s.push_str(&format!("{}. {step}\n", n + 1));
    }
    s.push_str("\n## Commands\n");
    for c in COMMANDS {
        s.push_str(&format!("    {c}\n"));
    }
    s.push_str(&format!(
        "\n## Now (as {})\n- {} issue(s) ready\n",
        p.actor, p.ready
    ));
    if p.held.is_empty() {
        s.push_str("- you hold nothing in progress\n");
    } else {
        s.push_str(&format!(
            "- you hold {}: {}\n",
            p.held.len(),
            p.held.join("; ")
        ));
    }
    if !p.lapsed.is_empty() {
        s.push_str(&format!(
            "- your claim lapsed on {}: {} (claim again to take it back, if no one has)\n",
            p.lapsed.len(),
            p.lapsed.join("; ")
        ));
    }
    if p.conflicts > 0 {
        s.push_str(&format!(
            "- {} conflict(s) wait: bd conflicts\n",
            p.conflicts
        ));
    }
    output::print(&s)
}
