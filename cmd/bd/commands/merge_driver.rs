use crate::cli_error::CliError;
use crate::context::Ctx;
use clap::Args;
use std::path::PathBuf;

/// Merge driver for bd's files (git runs it: `bd merge-driver %O %A %B %P`)
#[derive(Args, Debug)]
pub struct MergeDriverArgs {
    /// The common ancestor's version
    pub ancestor: PathBuf,
    /// This side's version; the result is written here
    pub ours: PathBuf,
    /// The other side's version
    pub theirs: PathBuf,
    /// The file's path in the repository
    pub path: Option<String>,
}

pub fn cmd_merge_driver(_ctx: &Ctx, a: MergeDriverArgs) -> Result<(), CliError> {
    bd::client::git::merge_driver(&a.ancestor, &a.ours, &a.theirs, a.path.as_deref())?;
    Ok(())
}
