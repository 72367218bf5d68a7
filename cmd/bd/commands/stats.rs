use super::{call, unexpected};
use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::service::{Request, Response};
use clap::Args;
use std::fmt::Write;

/// Counts by status, type and priority
#[derive(Args, Debug)]
pub struct StatsArgs {}

/// List fields written concurrently by different writers, ops held for clock
/// skew, and ids two clones created
#[derive(Args, Debug)]
pub struct ConflictsArgs {}

pub fn cmd_stats(ctx: &Ctx, _a: StatsArgs) -> Result<(), CliError> {
    match call(ctx, Request::Stats)? {
        Response::Stats(s) if ctx.json => output::json(&s),
        Response::Stats(s) => {
            let mut out = String::new();
            let _ = writeln!(out, "Issues:     {}", s.total);
            let _ = writeln!(out, "Ready:      {}", s.ready);
            let _ = writeln!(out, "Blocked:    {}", s.blocked);
            let _ = writeln!(out, "Deleted:    {}", s.deleted);
            let _ = writeln!(out, "Conflicts:  {}", s.conflicts);
            let _ = writeln!(out, "Ops:        {}", s.ops);
            if let Some(h) = s.avg_lead_time_hours {
                let _ = writeln!(out, "Lead time:  {h} h (mean, created → closed)");
            }
            for (name, map) in [
                ("By status", &s.by_status),
                ("By type", &s.by_type),
                ("Open by priority", &s.open_by_priority),
            ] {
                if !map.is_empty() {
                    let parts: Vec<String> = map.iter().map(|(k, v)| format!("{k} {v}")).collect();
                    let _ = writeln!(out, "{name}: {}", parts.join(", "));
                }
            }
            output::print(&out)
        }
        other => Err(unexpected(other)),
    }
}

pub fn cmd_conflicts(ctx: &Ctx, _a: ConflictsArgs) -> Result<(), CliError> {
    match call(ctx, Request::Conflicts)? {
        Response::Conflicts(c) if ctx.json => output::json(&c),
        Response::Conflicts(c) if c.is_empty() => {
            output::status(ctx.quiet, "No conflicts.");
            Ok(())
        }
        Response::Conflicts(c) => {
            let mut out = String::new();
            for x in &c {
                if x.field == "id" {
                    let _ = writeln!(
                        out,
                        "{} id: created {} times on different clones; each is its own issue (`bd resolve {} --field id --value ack` to acknowledge):",
                        x.issue_id,
                        x.contenders.len(),
                        x.issue_id
                    );
                    for k in &x.contenders {
                        let field = |f: &str| k.value.get(f).cloned().unwrap_or_default();
                        let _ = writeln!(
                            out,
                            "  {} {} by {} on {} at {} (op {})",
                            field("id").as_str().unwrap_or_default(),
                            field("title"),
                            k.actor,
                            k.replica,
                            k.at,
                            k.op_id
                        );
                    }
                    continue;
                }
                let _ = writeln!(out, "{} {}:", x.issue_id, x.field);
                for k in &x.contenders {
                    let _ = writeln!(
                        out,
                        "  {} by {} on {} at {} (op {})",
                        k.value, k.actor, k.replica, k.at, k.op_id
                    );
                }
            }
            if !ctx.quiet && c.iter().any(|x| x.field != "id") {
                out.push_str(
                    "\nSettle one with `bd resolve ID --field FIELD --take CONTENDER` (an op id prefix, actor or replica) or `--value VALUE`; `--field deleted --value deleted` keeps a delete, `--field clock_skew --value apply` applies a held op.\n",
                );
            }
            output::print(&out)
        }
        other => Err(unexpected(other)),
    }
}
