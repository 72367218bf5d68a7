use super::{call, split_list, unexpected};
use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::service::{CreateRequest, Request, Response};
use clap::Args;

/// Create an issue
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// One-line title
    pub title: String,
    /// Description
    #[arg(short, long)]
    pub description: Option<String>,
    /// Design notes
    #[arg(long)]
    pub design: Option<String>,
    /// Acceptance criteria
    #[arg(long)]
    pub acceptance: Option<String>,
    /// Notes
    #[arg(long)]
    pub notes: Option<String>,
    /// Priority 0-4 or P0-P4 (0 is most urgent; default 2)
    #[arg(short, long)]
    pub priority: Option<String>,
    /// Type: bug, feature, task, epic, chore (default task)
    #[arg(short = 't', long = "type")]
    pub issue_type: Option<String>,
    /// Assignee
    #[arg(short, long)]
    pub assignee: Option<String>,
    /// Labels, comma-separated or repeated
    #[arg(short, long = "labels", alias = "label")]
    pub labels: Vec<String>,
    /// Dependencies: 'blocks:ID,discovered-from:ID' (a bare ID means blocks)
    #[arg(long)]
    pub deps: Vec<String>,
    /// Parent issue (an epic): the new issue becomes its child <parent>.<n>
    #[arg(long)]
    pub parent: Option<String>,
    /// Reference in another tracker (e.g. gh-123)
    #[arg(long)]
    pub external_ref: Option<String>,
    /// Use this id instead of a generated one
    #[arg(long)]
    pub id: Option<String>,
}

/// Parses `type:ID` pairs (a bare ID is a `blocks` edge).
pub fn parse_deps(specs: &[String]) -> Vec<(String, String)> {
    split_list(specs)
        .into_iter()
        .map(|s| match s.split_once(':') {
            Some((t, id)) => (t.trim().to_string(), id.trim().to_string()),
            None => ("blocks".to_string(), s),
        })
        .collect()
}

pub fn cmd_create(ctx: &Ctx, a: CreateArgs) -> Result<(), CliError> {
    let req = CreateRequest {
        title: a.title,
        description: a.description.unwrap_or_default(),
        design: a.design.unwrap_or_default(),
        acceptance_criteria: a.acceptance.unwrap_or_default(),
        notes: a.notes.unwrap_or_default(),
        priority: a
            .priority
            .as_deref()
            .map(bd::model::parse_priority)
            .transpose()?,
        issue_type: a.issue_type,
        assignee: a.assignee,
        labels: split_list(&a.labels),
        deps: parse_deps(&a.deps),
        parent: a.parent,
        external_ref: a.external_ref,
        id: a.id,
    };
    match call(ctx, Request::Create(req))? {
        Response::Issue(issue) if ctx.json => output::json(&issue),
        Response::Issue(issue) if ctx.quiet => output::print(&format!("{}\n", issue.id)),
        Response::Issue(issue) => {
            output::print(&format!("Created {}: {}\n", issue.id, issue.title))
        }
        other => Err(unexpected(other)),
    }
}
