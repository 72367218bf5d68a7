use super::{call, unexpected};
use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::api::{ImportReport, Request, Response};
use bd::api::{parse_issue_lines, read_import_file};
use bd::{Error, ErrorKind};
use clap::Args;
use std::path::PathBuf;

/// Record issues from a beads-format JSONL file
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The file to read ('-' for stdin)
    #[arg(short, long, value_name = "FILE")]
    pub input: PathBuf,
    /// Import the good lines even if some are refused (by default a file with
    /// a bad line changes nothing)
    #[arg(long)]
    pub skip_bad_lines: bool,
    /// Change nothing if any line is refused (the default; kept for scripts)
    #[arg(long, hide = true, conflicts_with = "skip_bad_lines")]
    pub strict: bool,
    /// Report what would change without changing anything
    #[arg(long)]
    pub dry_run: bool,
}

pub fn cmd_import(ctx: &Ctx, a: ImportArgs) -> Result<(), CliError> {
    let source = a.input.display().to_string();
    let text = if source == "-" {
        crate::output::read_stdin()?.0
    } else {
        read_import_file(&a.input)?
    };
    let (records, line_errors) = parse_issue_lines(&text);
    let strict = !a.skip_bad_lines;
    if strict && !line_errors.is_empty() {
        for e in &line_errors {
            crate::output::stderr_line(&format!("{source}:{}: {}", e.line, e.message));
        }
        return Err(CliError(
            Error::invalid(format!(
                "{} malformed line(s) in {source}; nothing imported",
                line_errors.len()
            ))
            .hint("fix the lines above, or import with --skip-bad-lines to import the others"),
        ));
    }
    let reply = call(
        ctx,
        Request::Import {
            records,
            dry_run: a.dry_run,
            strict,
        },
    );
    // A refused record made the whole import roll back. List every refused
    // line, not only the first: a trial run (nothing kept) collects them.
    let reply = match reply {
        Err(e) if strict && e.0.kind == ErrorKind::Invalid => {
            let (records, _) = parse_issue_lines(&text);
            let trial = call(
                ctx,
                Request::Import {
                    records,
                    dry_run: true,
                    strict: false,
                },
            );
            let refused = match trial {
                Ok(Response::Import(r)) if !r.errors.is_empty() => r.errors,
                _ => return Err(e),
            };
            for le in &refused {
                crate::output::stderr_line(&format!("{source}:{}: {}", le.line, le.message));
            }
            return Err(CliError(
                Error::invalid(format!(
                    "{} line(s) of {source} refused; nothing imported",
                    refused.len()
                ))
                .hint("fix the lines above, or import with --skip-bad-lines to import the others"),
            ));
        }
        other => other?,
    };
    let mut report: ImportReport = match reply {
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
            if report.unmodelled > 0 {
                output::print(&format!(
                    "{} record(s) carry a status or type bd does not model (kept as they are; `bd doctor` lists them)\n",
                    report.unmodelled
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
            .hint(if report.dry_run {
                "the other lines would be imported; fix these and try again"
            } else {
                "the other lines were imported (--skip-bad-lines); fix these and import again (it is idempotent)"
            }),
        ))
    }
}
