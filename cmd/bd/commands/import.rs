use super::{call, unexpected};
use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::jsonl::{parse_issue_lines, read_import_file};
use bd::service::{ImportReport, Request, Response};
use bd::{Error, ErrorKind};
use clap::Args;
use std::path::PathBuf;

/// Record issues from a beads-format JSONL file
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The file to read ('-' for stdin)
    #[arg(short, long, value_name = "FILE")]
    pub input: PathBuf,
    /// Change nothing if any line is malformed
    #[arg(long)]
    pub strict: bool,
    /// Report what would change without changing anything
    #[arg(long)]
    pub dry_run: bool,
}

pub fn cmd_import(ctx: &Ctx, a: ImportArgs) -> Result<(), CliError> {
    let source = a.input.display().to_string();
    let text = if source == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        read_import_file(&a.input)?
    };
    let (records, line_errors) = parse_issue_lines(&text);
    if a.strict && !line_errors.is_empty() {
        for e in &line_errors {
            crate::output::stderr_line(&format!("{source}:{}: {}", e.line, e.message));
        }
        return Err(CliError(
            Error::invalid(format!(
                "{} malformed line(s) in {source}; nothing imported (--strict)",
                line_errors.len()
            ))
            .hint("fix the lines above, or import without --strict to skip them"),
        ));
    }
    let mut report: ImportReport = match call(
        ctx,
        Request::Import {
            records,
            dry_run: a.dry_run,
            strict: a.strict,
        },
    )? {
        Response::Import(r) => r,
        other => return Err(unexpected(other)),
    };
    report.errors.extend(line_errors);
    report.errors.sort_by_key(|e| e.line);
    if ctx.json {
        output::json(&report)?;
    } else {
        for e in &report.errors {
            crate::output::stderr_line(&format!("{source}:{}: {}", e.line, e.message));
        }
        let verb = if report.dry_run {
            "Would import"
        } else {
            "Imported"
        };
        // The summary is the command's output; -q leaves only the errors.
        if !ctx.quiet {
            output::print(&format!(
                "{verb} {source}: {} created, {} updated, {} unchanged, {} deleted, {} skipped (deleted here), {} ops, {} bad lines\n",
                report.created,
                report.updated,
                report.unchanged,
                report.deleted,
                report.skipped_deleted,
                report.ops,
                report.errors.len()
            ))?;
            if report.repeated > 0 {
                output::print(&format!(
                    "{} record(s) skipped: a later line names the same id (the last one wins)\n",
                    report.repeated
                ))?;
            }
        }
    }
    if report.errors.is_empty() {
        Ok(())
    } else {
        Err(CliError(
            Error::new(
                ErrorKind::Invalid,
                format!(
                    "{} line(s) of {source} were not imported",
                    report.errors.len()
                ),
            )
            .hint("the other lines were imported; fix these and import again (it is idempotent)"),
        ))
    }
}
