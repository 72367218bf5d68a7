use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::client::Level;
use clap::Args;
use std::fmt::Write;

/// Check the tracker's health: database, op files, snapshot, git hooks, merge
/// driver, daemon
///
/// Exits 1 if a check fails (after `--fix`, if given). `--fix` repairs what is
/// safe and says what it did: reinstalls hooks and the merge driver, completes
/// .gitignore, resolves conflict markers in op files as the union of both
/// sides, rewrites this clone's own op file from the database (after taking in
/// any sound op it lacks), regenerates issues.jsonl and conflicts.jsonl. It
/// never deletes data: a line a repair takes out (unreadable, or not an issue
/// of this database) is kept in .beads/doctor-kept-*.jsonl. Other clones' op
/// files are never edited, and a damaged database is replaced with `bd rebuild`.
#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// Repair what is safe to repair, and say what was done
    #[arg(long)]
    pub fix: bool,
}

pub fn cmd_doctor(ctx: &Ctx, a: DoctorArgs) -> Result<(), CliError> {
    let paths = ctx.paths()?;
    let report = bd::client::doctor(&paths, a.fix, &std::env::current_exe()?)?;
    if ctx.json {
        output::json(&report)?;
    } else {
        let mut s = String::new();
        let width = report
            .checks
            .iter()
            .map(|c| c.name.chars().count())
            .max()
            .unwrap_or(0);
        for c in &report.checks {
            let mark = match c.level {
                Level::Ok => "ok   ",
                Level::Warn => "warn ",
                Level::Error => "ERROR",
            };
            let _ = writeln!(s, "{mark} {:<width$} {}", c.name, c.message);
            for l in &c.lines {
                let _ = writeln!(s, "      {}:{}: {}", l.file, l.line, l.problem);
            }
            if let Some(f) = &c.fixed {
                let _ = writeln!(s, "      fixed: {f}");
            }
        }
        let _ = writeln!(
            s,
            "{} error(s), {} warning(s){}",
            report.errors,
            report.warnings,
            match (report.errors, a.fix) {
                (0, _) => "",
                // A damaged database is not doctor's to repair.
                _ if report
                    .checks
                    .iter()
                    .any(|c| c.name == "database" && c.level == bd::client::Level::Error) =>
                {
                    "; `bd rebuild` replaces the damaged database"
                }
                (_, false)
                    if report.checks.iter().any(
                        |c| c.level == Level::Error && c.message.contains("bd doctor --fix")
                    ) =>
                {
                    "; `bd doctor --fix` repairs what is safe"
                }
                (_, false) => "",
                (_, true) => "",
            }
        );
        output::print(&s)?;
    }
    if report.errors > 0 {
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        std::process::exit(1);
    }
    Ok(())
}
