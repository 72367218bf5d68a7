use super::fields::FieldArgs;
use super::{call, split_list, unexpected};
use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::api::{CreateRequest, Request, Response};
use clap::Args;

/// Create an issue
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// One-line title
    pub title: String,
    #[command(flatten)]
    pub fields: FieldArgs,
    /// Labels, comma-separated or repeated
    #[arg(short, long = "labels", alias = "label")]
    pub labels: Vec<String>,
    /// Dependencies: 'blocks:ID,discovered-from:ID' (a bare ID means blocks)
    #[arg(long)]
    pub deps: Vec<String>,
    /// Parent issue (an epic): the new issue becomes its child <parent>.<n>
    #[arg(long)]
    pub parent: Option<String>,
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
    let f = a.fields;
    let req = CreateRequest {
        title: a.title,
        priority: f.priority()?,
        description: f.description.unwrap_or_default(),
        design: f.design.unwrap_or_default(),
        acceptance_criteria: f.acceptance.unwrap_or_default(),
        notes: f.notes.unwrap_or_default(),
        issue_type: f.issue_type,
        assignee: f.assignee,
        labels: split_list(&a.labels),
        deps: parse_deps(&a.deps),
        parent: a.parent,
        external_ref: f.external_ref,
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
