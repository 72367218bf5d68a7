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
}

/// Prints per-issue outcomes of update, close, reopen and label changes.
pub fn render_changed(ctx: &Ctx, changed: &[Changed], verb: &str) -> Result<(), CliError> {
    if ctx.json {
        return output::json(&changed);
    }
    let mut s = String::new();
    for c in changed {
        if ctx.quiet {
            s.push_str(&format!("{}\n", c.issue.id));
        } else if c.changed {
            s.push_str(&format!("{verb} {}: {}\n", c.issue.id, c.issue.title));
        } else {
            s.push_str(&format!("{} unchanged (already so)\n", c.issue.id));
        }
    }
    output::print(&s)
}

pub fn cmd_update(ctx: &Ctx, a: UpdateArgs) -> Result<(), CliError> {
    let f = a.fields;
    let req = UpdateRequest {
        ids: a.ids,
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
    };

    let verb = if req.claim { "Claimed" } else { "Updated" };
    match call(ctx, Request::Update(req))? {
        Response::Changed(c) => render_changed(ctx, &c, verb),
        other => Err(unexpected(other)),
    }
}
