use super::{call, unexpected};
use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::service::{Request, Response};
use clap::Args;
use std::path::PathBuf;

/// Run operations from JSON lines as one unit: all of them or none
///
/// Each line is one operation, the JSON form of a request, e.g.
///   {"op":"create","title":"Epic","issue_type":"epic"}
///   {"op":"create","title":"Child","parent":"$1"}
///   {"op":"update","ids":["$2"],"claim":true}
/// A string that is exactly $N names the issue created by operation N. Blank
/// lines and lines starting with # are skipped.
#[derive(Args, Debug)]
pub struct BatchArgs {
    /// Read operations from this file (default: stdin)
    #[arg(short, long, value_name = "FILE")]
    pub file: Option<PathBuf>,
}

/// Parses batch lines, failing on the first bad one with its line number.
fn parse(text: &str, source: &str) -> Result<Vec<Request>, CliError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let req: Request = serde_json::from_str(line).map_err(|e| {
            CliError::usage(
                format!("{source}:{}: not an operation: {e}; nothing was run", i + 1),
                r#"each line is one JSON operation, e.g. {"op":"create","title":"Fix login"}"#,
            )
        })?;
        out.push(req);
    }
    Ok(out)
}

fn summary(n: usize, resp: &Response) -> String {
    let what = match resp {
        Response::Issue(i) => format!("created {}: {}", i.id, i.title),
        Response::Changed(c) => {
            let ids: Vec<&str> = c.iter().map(|c| c.issue.id.as_str()).collect();
            format!("changed {}", ids.join(", "))
        }
        Response::Dependency { dependency: d, .. } => {
            format!(
                "{} depends on {} ({})",
                d.issue_id, d.depends_on_id, d.dep_type
            )
        }
        Response::Dependencies(d) => format!("removed {} dependencies", d.len()),
        Response::Comment(c) => format!("commented on {} ({})", c.issue_id, c.id),
        other => format!("{other:?}"),
    };
    format!("#{n} {what}\n")
}

pub fn cmd_batch(ctx: &Ctx, a: BatchArgs) -> Result<(), CliError> {
    let (text, source) = match &a.file {
        Some(p) if p.as_os_str() != "-" => {
            (bd::jsonl::read_import_file(p)?, p.display().to_string())
        }
        _ => (
            std::io::read_to_string(std::io::stdin())?,
            "stdin".to_string(),
        ),
    };
    let requests = parse(&text, &source)?;
    match call(ctx, Request::Batch { requests })? {
        Response::Batch(r) if ctx.json => output::json(&r),
        Response::Batch(_) if ctx.quiet => Ok(()),
        Response::Batch(r) => output::print(
            &r.iter()
                .enumerate()
                .map(|(i, x)| summary(i + 1, x))
                .collect::<String>(),
        ),
        other => Err(unexpected(other)),
    }
}
