use super::{call, unexpected};
use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::api::{Request, Response};
use clap::Args;
use std::fmt::Write;

/// Counts by status, type and priority
#[derive(Args, Debug)]
pub struct StatsArgs {}

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
