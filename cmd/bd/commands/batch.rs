use super::{call_as, unexpected};
use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::api::{Request, Response};
use clap::Args;
use std::path::PathBuf;

/// Run operations from JSON lines as one unit: all of them or none
///
/// Each line is one operation, the JSON form of a request, e.g.
///   {"op":"create","title":"Epic","issue_type":"epic"}
///   {"op":"create","title":"Child","parent":"$1"}
///   {"op":"update","ids":["$2"],"claim":true}
/// A string that is exactly $N names the issue created by operation N. Blank
/// lines and lines starting with # are skipped. A line {"request_id":"ID"}
/// gives the batch its request id (as --request-id does): sent again with the
/// same id, an applied batch answers as it did the first time and applies
/// nothing.
#[derive(Args, Debug)]
pub struct BatchArgs {
    /// Read operations from this file (default: stdin)
    #[arg(short, long, value_name = "FILE")]
    pub file: Option<PathBuf>,
}

/// Parses batch lines, failing on the first bad one with its line number.
/// Returns the operations and the request id a `{"request_id": ...}` line gave.
fn parse(text: &str, source: &str) -> Result<(Vec<Request>, Option<String>), CliError> {
    let mut out = Vec::new();
    let mut request_id: Option<String> = None;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Ok(serde_json::Value::Object(m)) = serde_json::from_str(line)
            && m.len() == 1
            && let Some(id) = m.get("request_id")
        {
            let where_ = format!("{source}:{}", i + 1);
            let id = id.as_str().ok_or_else(|| {
                CliError::usage(
                    format!("{where_}: request_id must be a string; nothing was run"),
                    r#"e.g. {"request_id":"plan-42"}"#,
                )
            })?;
            if request_id.is_some() {
                return Err(CliError::usage(
                    format!("{where_}: a second request_id; nothing was run"),
                    "a batch is one request: give it one id",
                ));
            }
            bd::api::validate_request_id(id)?;
            request_id = Some(id.to_string());
            continue;
        }
        if let Ok(serde_json::Value::Object(m)) = serde_json::from_str(line)
            && m.contains_key("op")
            && m.contains_key("request_id")
        {
            return Err(CliError::usage(
                format!(
                    "{source}:{}: request_id inside an operation; nothing was run",
                    i + 1
                ),
                r#"the whole batch has one id: put it on a line of its own, {"request_id":"plan-42"}"#,
            ));
        }
        let req: Request = serde_json::from_str(line).map_err(|e| {
            CliError::usage(
                format!("{source}:{}: not an operation: {e}; nothing was run", i + 1),
                r#"each line is one JSON operation, e.g. {"op":"create","title":"Fix login"}"#,
            )
        })?;
        out.push(req);
    }
    Ok((out, request_id))
}

fn summary(n: usize, resp: &Response) -> String {
    let what = match resp {
        Response::Issue(i) => format!("created {}: {}", i.id, i.title),
        Response::Changed(c) => {
            let ids: Vec<&str> = c.iter().map(|c| c.issue.id.as_str()).collect();
            let provisional = c
                .iter()
                .any(|c| c.lease.as_ref().is_some_and(|l| l.provisional));
            format!(
                "changed {}{}",
                ids.join(", "),
                if provisional {
                    " (claim provisional: the relay could not be asked)"
                } else {
                    ""
                }
            )
        }
        Response::Dependency { dependency: d, .. } => {
            format!(
                "{} depends on {} ({})",
                d.issue_id, d.depends_on_id, d.dep_type
            )
        }
        Response::Dependencies(d) => format!("removed {} dependencies", d.len()),
        Response::Comment(c) => format!("commented on {} ({})", c.issue_id, c.id),
        Response::Deleted(ids) if ids.is_empty() => "deleted nothing (already deleted)".into(),
        Response::Deleted(ids) => format!("deleted {}", ids.join(", ")),
        other => format!("{other:?}"),
    };
    format!("#{n} {what}\n")
}

pub fn cmd_batch(ctx: &Ctx, a: BatchArgs) -> Result<(), CliError> {
    let (text, source) = match &a.file {
        Some(p) if p.as_os_str() != "-" => (bd::api::read_import_file(p)?, p.display().to_string()),
        _ => output::read_stdin()?,
    };
    let (requests, in_file) = parse(&text, &source)?;
    let request_id = match (in_file, &ctx.request_id) {
        (Some(a), Some(b)) if &a != b => {
            return Err(CliError::usage(
                format!("{source} names request id {a}, --request-id says {b}; nothing was run"),
                "give the batch one request id",
            ));
        }
        (Some(a), _) => Some(a),
        (None, b) => b.clone(),
    };
    let claims: Vec<bool> = requests
        .iter()
        .map(|r| matches!(r, Request::Update(u) if u.claim))
        .collect();
    let mut answer = call_as(ctx, Request::Batch { requests }, request_id)?;
    if let Response::Batch(rs) = &mut answer {
        for (r, claimed) in rs.iter_mut().zip(&claims) {
            if let (Response::Changed(c), true) = (r, claimed) {
                super::update::mark_unleased(ctx, c);
            }
        }
    }
    if super::update::has_provisional(&answer) {
        crate::cli_error::succeed_with(crate::cli_error::EXIT_PROVISIONAL);
    }
    match answer {
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
