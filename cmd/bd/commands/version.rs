use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use clap::Args;

/// Print the version
#[derive(Args, Debug)]
pub struct VersionArgs {}

pub fn cmd_version(ctx: &Ctx, _a: VersionArgs) -> Result<(), CliError> {
    let version = env!("CARGO_PKG_VERSION");
    let schema = bd::client::SCHEMA_VERSION;
    if ctx.json {
        return output::json(&serde_json::json!({"version": version, "schema_version": schema}));
    }
    output::print(&format!("bd {version} (database schema v{schema})\n"))
}
