use super::graph::Family;
use super::{call, unexpected};
use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::api::{DepType, Issue, Request, Response};
use clap::{Args, Subcommand};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// Epics and the work under them
#[derive(Subcommand, Debug)]
pub enum EpicCommand {
    /// How far each open epic (or ID) has got: done/total under it, what is
    /// ready and in progress, and what outside it holds it back
    Status(EpicStatusArgs),
}

#[derive(Args, Debug)]
pub struct EpicStatusArgs {
    /// One issue (an epic or any parent) instead of every open epic
    pub id: Option<String>,
    /// Include closed epics
    #[arg(long)]
    pub all: bool,
}

/// `bd epic status --json`: one per epic.
#[derive(Serialize, Debug)]
struct EpicStatus {
    id: String,
    title: String,
    status: String,
    /// Issues under it (children, their children, ...).
    total: usize,
    closed: usize,
    in_progress: usize,
    /// Under it and ready to take.
    ready: usize,
    /// closed / total, in percent (100 when nothing is under it).
    percent: u32,
    /// Every issue under it is closed (it can be closed itself).
    done: bool,
    /// Open issues outside it that it or something under it waits for.
    blocked_by: Vec<String>,
}

pub fn cmd_epic(ctx: &Ctx, c: EpicCommand) -> Result<(), CliError> {
    let EpicCommand::Status(a) = c;
    let (issues, ready) = super::graph::issues_and_ready(ctx)?;
    let by_id: BTreeMap<&str, &Issue> = issues.iter().map(|i| (i.id.as_str(), i)).collect();
    let family = Family::of(&issues);
    let roots: Vec<&Issue> = match &a.id {
        Some(q) => {
            let shown = call(
                ctx,
                Request::Show {
                    ids: vec![q.clone()],
                },
            )?;
            let Response::Details(d) = shown else {
                return Err(unexpected(shown));
            };
            d.iter()
                .filter_map(|d| by_id.get(d.issue.id.as_str()).copied())
                .collect()
        }
        None => issues
            .iter()
            .filter(|i| i.issue_type.as_str() == "epic" && (a.all || !i.status.is_closed()))
            .collect(),
    };
    let statuses: Vec<EpicStatus> = roots
        .iter()
        .map(|root| status_of(root, &family, &by_id, &ready))
        .collect();
    if ctx.json {
        return output::json(&statuses);
    }
    if statuses.is_empty() {
        output::status(ctx.quiet, "No open epics.");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = statuses
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                format!("{}/{}", s.closed, s.total),
                format!("{}%", s.percent),
                s.ready.to_string(),
                s.in_progress.to_string(),
                if s.blocked_by.is_empty() {
                    "-".into()
                } else {
                    s.blocked_by.join(", ")
                },
                s.title.clone(),
            ]
        })
        .collect();
    let colour = |col: usize, text: &str| match col {
        0 => output::ID_COLOUR,
        2 if text == "100%" => Some("32"),
        5 if text != "-" => Some("31"),
        _ => None,
    };
    output::print_table(&output::table_coloured(
        &[
            "ID",
            "DONE",
            "PCT",
            "READY",
            "WORKING",
            "BLOCKED BY",
            "TITLE",
        ],
        &rows,
        colour,
    ))
}

/// The status of `root` and everything under it.
fn status_of(
    root: &Issue,
    family: &Family<'_>,
    by_id: &BTreeMap<&str, &Issue>,
    ready: &BTreeSet<String>,
) -> EpicStatus {
    let under = family.under(&root.id);
    let members: Vec<&Issue> = under
        .iter()
        .filter_map(|id| by_id.get(id).copied())
        .collect();
    let closed = members.iter().filter(|i| i.status.is_closed()).count();
    let in_progress = members
        .iter()
        .filter(|i| i.status.as_str() == "in_progress")
        .count();
    let ready_n = members.iter().filter(|i| ready.contains(&i.id)).count();
    let mut blocked_by: BTreeSet<String> = BTreeSet::new();
    for i in std::iter::once(&root).chain(members.iter()) {
        if i.status.is_closed() {
            continue;
        }
        for d in &i.dependencies {
            let blocker = d.depends_on_id.as_str();
            if d.dep_type == DepType::Blocks
                && blocker != root.id
                && !under.contains(blocker)
                && by_id.get(blocker).is_some_and(|b| !b.status.is_closed())
            {
                blocked_by.insert(blocker.to_string());
            }
        }
    }
    let total = members.len();
    EpicStatus {
        id: root.id.clone(),
        title: root.title.clone(),
        status: root.status.to_string(),
        total,
        closed,
        in_progress,
        ready: ready_n,
        percent: (closed * 100).checked_div(total).map_or(100, |p| p as u32),
        done: closed == total,
        blocked_by: blocked_by.into_iter().collect(),
    }
}
