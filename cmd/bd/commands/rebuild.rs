use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use clap::Args;

/// Rebuild the database from the op files and check the state is unchanged
///
/// Reads every file in .beads/ops into a new database, compares its state hash
/// with the current database's, and swaps it in (the old one is kept as
/// beads.db.bak). On a fresh clone with no database it creates one. Stop the
/// daemon first (`bd daemon stop`).
#[derive(Args, Debug)]
pub struct RebuildArgs {
    /// Swap in the rebuilt database even if its state differs
    #[arg(long)]
    pub force: bool,
}

pub fn cmd_rebuild(ctx: &Ctx, a: RebuildArgs) -> Result<(), CliError> {
    let paths = ctx.paths()?;
    let r = bd::client::rebuild(&paths, a.force)?;
    if ctx.json {
        return output::json(&r);
    }
    for p in &r.problems {
        crate::output::stderr_line(&format!("warning: {}:{}: {}", p.file, p.line, p.problem));
    }
    let check = match &r.previous_hash {
        Some(prev) if *prev == r.state_hash => "state unchanged".to_string(),
        Some(_) => "state DIFFERS from the old database (--force)".to_string(),
        None => "no previous database".to_string(),
    };
    output::status(
        ctx.quiet,
        &format!(
            "Rebuilt from {} op files: {} ops applied, {} held for clock skew; {check}; state {}{}\n",
            r.files,
            r.ops,
            r.held,
            &r.state_hash[..r.state_hash.len().min(16)],
            r.backup
                .as_deref()
                .map(|b| format!("\nold database kept at {b}"))
                .unwrap_or_default()
        ),
    );
    Ok(())
}
