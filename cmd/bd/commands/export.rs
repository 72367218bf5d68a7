use super::{call, unexpected};
use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::api::{Request, Response};
use clap::Args;
use std::path::PathBuf;

/// Write every issue as beads-format JSONL (stdout or a file)
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Write to this file instead of stdout ("-" is stdout). A regular file is
    /// replaced atomically; a symlink is followed; a device or FIFO is written into
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

pub fn cmd_export(ctx: &Ctx, a: ExportArgs) -> Result<(), CliError> {
    let issues = match call(ctx, Request::Export)? {
        Response::Issues(i) => i,
        other => return Err(unexpected(other)),
    };
    let text = bd::api::render_issues(&issues)?;
    match a.output {
        None => output::print_data(&text),
        Some(path) if path.as_os_str() == "-" => output::print_data(&text),
        Some(path) => {
            bd::client::write_atomically(&path, text.as_bytes())?;
            if ctx.json {
                return output::json(&serde_json::json!({"path": path, "issues": issues.len()}));
            }
            output::status(
                ctx.quiet,
                &format!(
                    "Exported {} issue{} to {}",
                    issues.len(),
                    if issues.len() == 1 { "" } else { "s" },
                    path.display()
                ),
            );
            Ok(())
        }
    }
}
