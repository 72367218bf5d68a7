use super::update::render_changed;
use super::{call, split_list, unexpected};
use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::api::{Request, Response};
use clap::{Args, Subcommand};

/// Add, remove and list labels
#[derive(Subcommand, Debug)]
pub enum LabelCommand {
    /// Add labels to an issue
    Add(LabelChangeArgs),
    /// Remove labels from an issue
    #[command(alias = "rm")]
    Remove(LabelChangeArgs),
    /// Labels of one issue, or every label with its count
    List(LabelListArgs),
}

#[derive(Args, Debug)]
pub struct LabelChangeArgs {
    /// The issue
    pub id: String,
    /// Labels (several, or comma-separated)
    #[arg(required = true)]
    pub labels: Vec<String>,
}

#[derive(Args, Debug)]
pub struct LabelListArgs {
    /// The issue (omit to list every label in use)
    pub id: Option<String>,
}

pub fn cmd_label(ctx: &Ctx, c: LabelCommand) -> Result<(), CliError> {
    let (req, verb) = match c {
        LabelCommand::Add(a) => (
            Request::LabelAdd {
                ids: vec![a.id],
                labels: split_list(&a.labels),
            },
            "Labelled",
        ),
        LabelCommand::Remove(a) => (
            Request::LabelRemove {
                ids: vec![a.id],
                labels: split_list(&a.labels),
            },
            "Unlabelled",
        ),
        LabelCommand::List(a) => (Request::LabelList { id: a.id }, ""),
    };
    match call(ctx, req)? {
        Response::Changed(c) => render_changed(ctx, &c, verb),
        Response::Labels(l) if ctx.json => output::json(&l),
        Response::Labels(l) => {
            output::print(&l.iter().map(|l| format!("{l}\n")).collect::<String>())
        }
        Response::LabelCounts(l) if ctx.json => output::json(&l),
        Response::LabelCounts(l) => {
            let rows: Vec<Vec<String>> = l
                .iter()
                .map(|c| vec![c.label.clone(), c.count.to_string()])
                .collect();
            output::print_table(&output::table(&["LABEL", "ISSUES"], &rows))
        }
        other => Err(unexpected(other)),
    }
}
