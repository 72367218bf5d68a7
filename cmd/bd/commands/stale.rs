use super::{call, unexpected};
use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::api::time::{format_duration_ms, now_ms, parse_duration_ms, parse_rfc3339};
use bd::api::{Issue, ListFilter, Request, Response, SortKey};
use clap::Args;
use serde::Serialize;

/// In-progress work nobody has touched for a while, longest idle first
///
/// An agent that died mid-work leaves its issue in progress and assigned:
/// this lists such issues, each with how long it has gone without a write
/// (any change, comment or claim renewal counts), so that a person or a
/// recovery agent can take them over (`bd unclaim` as the holder, or
/// `bd update ID -a NEW`).
#[derive(Args, Debug)]
pub struct StaleArgs {
    /// Idle at least this long (e.g. 30m, 2h, 1d)
    #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = parse_idle)]
    pub idle: u64,
    /// Only this actor's work
    #[arg(short, long)]
    pub assignee: Option<String>,
    /// At most this many (0: all)
    #[arg(short = 'n', long, default_value_t = 50)]
    pub limit: usize,
}

fn parse_idle(s: &str) -> Result<u64, String> {
    parse_duration_ms(s).ok_or_else(|| format!("{s:?} is not a duration such as 30m, 2h or 1d"))
}

/// `bd stale --json`: the issue, and how long it has been idle.
#[derive(Serialize)]
struct Stale<'a> {
    #[serde(flatten)]
    issue: &'a Issue,
    idle_ms: u64,
}

pub fn cmd_stale(ctx: &Ctx, a: StaleArgs) -> Result<(), CliError> {
    let now = now_ms();
    let filter = ListFilter {
        status: vec!["in_progress".into()],
        assignee: a.assignee,
        updated_before: Some(now.saturating_sub(a.idle) as i64),
        sort: SortKey::Updated,
        limit: Some(a.limit),
        ..Default::default()
    };
    let issues = match call(ctx, Request::List(filter))? {
        Response::Issues(i) => i,
        other => return Err(unexpected(other)),
    };
    let mut stale: Vec<Stale> = issues
        .iter()
        .map(|i| Stale {
            issue: i,
            idle_ms: parse_rfc3339(&i.updated_at)
                .map_or(0, |t| now.saturating_sub(t.max(0) as u64)),
        })
        .collect();
    stale.sort_by(|x, y| y.idle_ms.cmp(&x.idle_ms).then(x.issue.id.cmp(&y.issue.id)));
    if ctx.json {
        return output::json(&stale);
    }
    if stale.is_empty() {
        output::status(
            ctx.quiet,
            &format!(
                "Nothing in progress has been idle for {}.",
                format_duration_ms(a.idle)
            ),
        );
        return Ok(());
    }
    if ctx.quiet {
        let ids: String = stale.iter().map(|s| format!("{}\n", s.issue.id)).collect();
        return output::print(&ids);
    }
    let rows: Vec<Vec<String>> = stale
        .iter()
        .map(|s| {
            vec![
                s.issue.id.clone(),
                format!("P{}", s.issue.priority),
                s.issue.assignee.clone().unwrap_or_else(|| "-".into()),
                format_duration_ms(s.idle_ms / 1000 * 1000),
                s.issue.title.clone(),
            ]
        })
        .collect();
    output::print_table(&output::table(
        &["ID", "PRI", "ASSIGNEE", "IDLE", "TITLE"],
        &rows,
    ))
}
