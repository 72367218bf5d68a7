use super::{call, unexpected};
use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::api::{Request, Response};
use clap::{Args, Subcommand};

/// Add, remove and inspect dependencies
#[derive(Subcommand, Debug)]
pub enum DepCommand {
    /// ISSUE depends on DEPENDS_ON (refused if it would close a cycle)
    Add(DepEdgeArgs),
    /// Remove a dependency (every type unless --type is given)
    #[command(alias = "rm")]
    Remove(DepRemoveArgs),
    /// Show what an issue depends on, as a tree (--reverse: what depends on it)
    Tree(DepTreeArgs),
    /// List dependency cycles among blocks and parent-child edges
    Cycles,
}

#[derive(Args, Debug)]
pub struct DepEdgeArgs {
    /// The dependent issue
    pub issue: String,
    /// The issue it depends on
    pub depends_on: String,
    /// blocks, parent-child, related, discovered-from
    #[arg(short = 't', long = "type", default_value = "blocks")]
    pub dep_type: String,
}

#[derive(Args, Debug)]
pub struct DepRemoveArgs {
    /// The dependent issue
    pub issue: String,
    /// The issue it depends on
    pub depends_on: String,
    /// Only this type
    #[arg(short = 't', long = "type")]
    pub dep_type: Option<String>,
}

#[derive(Args, Debug)]
pub struct DepTreeArgs {
    /// Root issue
    pub id: String,
    /// Show dependents instead of dependencies
    #[arg(long)]
    pub reverse: bool,
    /// Levels below the root to show
    #[arg(long, default_value_t = 10)]
    pub max_depth: usize,
}

pub fn cmd_dep(ctx: &Ctx, c: DepCommand) -> Result<(), CliError> {
    let req = match c {
        DepCommand::Add(a) => Request::DepAdd {
            issue: a.issue,
            depends_on: a.depends_on,
            dep_type: a.dep_type,
        },
        DepCommand::Remove(a) => Request::DepRemove {
            issue: a.issue,
            depends_on: a.depends_on,
            dep_type: a.dep_type,
        },
        DepCommand::Tree(a) => Request::DepTree {
            id: a.id,
            reverse: a.reverse,
            max_depth: a.max_depth,
        },
        DepCommand::Cycles => Request::DepCycles,
    };
    match call(ctx, req)? {
        Response::Dependency {
            dependency,
            changed,
        } if ctx.json => {
            output::json(&serde_json::json!({"dependency": dependency, "changed": changed}))
        }
        // Quiet: the exit code says it all.
        Response::Dependency { .. } | Response::Dependencies(_) if ctx.quiet => Ok(()),
        Response::Dependency {
            dependency: d,
            changed,
        } => {
            let what = if changed { "Added" } else { "Already present:" };
            output::print(&format!(
                "{what} {} depends on {} ({})\n",
                d.issue_id, d.depends_on_id, d.dep_type
            ))
        }
        Response::Dependencies(d) if ctx.json => output::json(&d),
        Response::Dependencies(d) => {
            let lines: String = d
                .iter()
                .map(|d| {
                    format!(
                        "Removed {} depends on {} ({})\n",
                        d.issue_id, d.depends_on_id, d.dep_type
                    )
                })
                .collect();
            output::print(&lines)
        }
        Response::Tree(t) if ctx.json => output::json(&t),
        Response::Tree(t) => {
            let mut s = String::new();
            for n in &t {
                let indent = "  ".repeat(n.depth);
                let arrow = n
                    .dep_type
                    .as_deref()
                    .map(|k| format!("[{k}] "))
                    .unwrap_or_default();
                let rep = if n.repeated { " (shown above)" } else { "" };
                let line = match n.priority {
                    Some(p) => format!("{} P{p} {} {}", n.id, n.status, n.title),
                    None => format!("{} ({})", n.id, n.status),
                };
                s.push_str(&format!("{indent}{arrow}{line}{rep}\n"));
            }
            output::print(&s)
        }
        Response::Cycles(c) if ctx.json => output::json(&c),
        Response::Cycles(c) if c.is_empty() => {
            output::status(ctx.quiet, "No dependency cycles.");
            Ok(())
        }
        Response::Cycles(c) => {
            let s: String = c
                .iter()
                .map(|cycle| format!("cycle: {}\n", cycle.join(" ↔ ")))
                .collect();
            output::print(&s)
        }
        other => Err(unexpected(other)),
    }
}
