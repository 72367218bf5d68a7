use super::{call, unexpected};
use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::api::time::{format_duration_ms, now_ms, parse_duration_ms, parse_rfc3339};
use bd::api::{Issue, ListFilter, Request, Response, SortKey};
use clap::Args;
use serde::Serialize;
use std::collections::BTreeMap;

/// Claims about to lapse or lapsed, and in-progress work nobody has touched
///
/// An agent that died mid-work leaves its issue in progress and assigned.
/// This lists, first, claims with a time limit (`bd claim --ttl`) that
/// lapse within --within or already lapsed (a lapsed claim is takeable at
/// once: `bd claim ID`), then in-progress issues that went --idle without a
/// write (any change, comment or claim renewal counts), longest idle first,
/// so that a person or a recovery agent can take them over (`bd unclaim` as
/// the holder, or `bd update ID -a NEW`).
#[derive(Args, Debug)]
pub struct StaleArgs {
    /// Idle at least this long (e.g. 30m, 2h, 1d)
    #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = parse_duration)]
    pub idle: u64,
    /// Claims that lapse within this long (e.g. 5m; lapsed ones always show)
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub within: u64,
    /// Only this actor's work
    #[arg(short, long)]
    pub assignee: Option<String>,
    /// At most this many (0: all)
    #[arg(short = 'n', long, default_value_t = 50)]
    pub limit: usize,
    /// Output format without --json: table, or tsv for scripts (columns id,
    /// priority, assignee, idle_ms, claim_lapses_in_ms (negative: lapsed that
    /// long ago; empty: no time limit), title)
    #[arg(long, value_enum)]
    pub format: Option<output::Format>,
}

fn parse_duration(s: &str) -> Result<u64, String> {
    parse_duration_ms(s).ok_or_else(|| format!("{s:?} is not a duration such as 30m, 2h or 1d"))
}

/// `bd stale --json`: the issue, how long it has been idle, and when its
/// claim lapses (negative: lapsed that long ago).
#[derive(Serialize)]
struct Stale<'a> {
    #[serde(flatten)]
    issue: &'a Issue,
    idle_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    claim_lapses_in_ms: Option<i64>,
}

pub fn cmd_stale(ctx: &Ctx, a: StaleArgs) -> Result<(), CliError> {
    let now = now_ms();
    let base = ListFilter {
        status: vec!["in_progress".into()],
        assignee: a.assignee,
        limit: Some(a.limit),
        ..Default::default()
    };
    let list = |f: ListFilter| -> Result<Vec<Issue>, CliError> {
        match call(ctx, Request::List(f))? {
            Response::Issues(i) => Ok(i),
            other => Err(unexpected(other)),
        }
    };
    let claims = list(ListFilter {
        claim_expires_before: Some(now.saturating_add(a.within) as i64),
        ..base.clone()
    })?;
    let idle = list(ListFilter {
        updated_before: Some(now.saturating_sub(a.idle) as i64),
        sort: SortKey::Updated,
        ..base
    })?;
    let mut by_id: BTreeMap<String, Issue> = BTreeMap::new();
    for i in claims.into_iter().chain(idle) {
        by_id.entry(i.id.clone()).or_insert(i);
    }
    let mut stale: Vec<Stale> = by_id
        .values()
        .map(|i| Stale {
            issue: i,
            idle_ms: parse_rfc3339(&i.updated_at)
                .map_or(0, |t| now.saturating_sub(t.max(0) as u64)),
            claim_lapses_in_ms: i
                .claim_expires_at
                .as_deref()
                .and_then(parse_rfc3339)
                .map(|t| t - now as i64),
        })
        .collect();
    // Claims first, soonest (or longest lapsed) first; then idle work,
    // longest idle first.
    stale.sort_by(|x, y| {
        let key = |s: &Stale| {
            (
                s.claim_lapses_in_ms.is_none(),
                s.claim_lapses_in_ms,
                std::cmp::Reverse(s.idle_ms),
            )
        };
        key(x).cmp(&key(y)).then(x.issue.id.cmp(&y.issue.id))
    });
    if a.limit > 0 {
        stale.truncate(a.limit);
    }
    let format = output::format_of(ctx, a.format)?;
    if ctx.json {
        return output::json(&stale);
    }
    if format == output::Format::Tsv {
        let rows: Vec<Vec<String>> = stale
            .iter()
            .map(|s| {
                vec![
                    s.issue.id.clone(),
                    s.issue.priority.to_string(),
                    s.issue.assignee.clone().unwrap_or_default(),
                    s.idle_ms.to_string(),
                    s.claim_lapses_in_ms
                        .map(|ms| ms.to_string())
                        .unwrap_or_default(),
                    s.issue.title.clone(),
                ]
            })
            .collect();
        return output::print(&output::tsv(
            &[
                "id",
                "priority",
                "assignee",
                "idle_ms",
                "claim_lapses_in_ms",
                "title",
            ],
            &rows,
        ));
    }
    if stale.is_empty() {
        output::status(
            ctx.quiet,
            &format!(
                "No claim lapses within {} and nothing in progress has been idle for {}.",
                format_duration_ms(a.within),
                format_duration_ms(a.idle)
            ),
        );
        return Ok(());
    }
    if ctx.quiet {
        let ids: String = stale.iter().map(|s| format!("{}\n", s.issue.id)).collect();
        return output::print(&ids);
    }
    let secs = |ms: u64| format_duration_ms((ms / 1000).max(1) * 1000);
    let rows: Vec<Vec<String>> = stale
        .iter()
        .map(|s| {
            vec![
                s.issue.id.clone(),
                format!("P{}", s.issue.priority),
                s.issue.assignee.clone().unwrap_or_else(|| "-".into()),
                format_duration_ms(s.idle_ms / 1000 * 1000),
                match s.claim_lapses_in_ms {
                    Some(ms) if ms <= 0 => format!("lapsed {} ago", secs(ms.unsigned_abs())),
                    Some(ms) => format!("lapses in {}", secs(ms as u64)),
                    None => "-".into(),
                },
                s.issue.title.clone(),
            ]
        })
        .collect();
    output::print_table(&output::table(
        &["ID", "PRI", "ASSIGNEE", "IDLE", "CLAIM", "TITLE"],
        &rows,
    ))
}
