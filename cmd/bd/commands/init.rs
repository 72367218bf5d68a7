use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::client::{InitOptions, init};
use clap::Args;

/// Create a tracker (.beads/) in this repository
#[derive(Args, Debug)]
pub struct InitArgs {
    /// Id prefix for new issues (default: the directory's name)
    #[arg(long, short)]
    pub prefix: Option<String>,
}

/// A fresh random replica id (see [`bd::ids::new_replica_id`]).
pub fn new_replica_id() -> Result<String, CliError> {
    Ok(bd::ids::new_replica_id()?)
}

pub fn cmd_init(ctx: &Ctx, args: InitArgs) -> Result<(), CliError> {
    let root = ctx.init_root()?;
    let report = init(
        &root,
        &InitOptions {
            prefix: args.prefix,
            replica: new_replica_id()?,
        },
    )?;
    if ctx.json {
        return output::json(&report);
    }
    let how = if report.adopted_existing {
        " (found committed .beads/ files)"
    } else {
        ""
    };
    output::print(&format!(
        "Initialised bd in {}{how}\n  prefix:  {}\n  replica: {}\nNext: bd create \"First task\" && bd ready\n",
        report.beads_dir, report.prefix, report.replica
    ))
}
