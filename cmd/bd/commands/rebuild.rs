use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use clap::Args;

/// Rebuild the database from the op files and check the state is unchanged
///
/// Reads every file in .beads/ops into a new database, compares its state hash
/// with the current database's, and puts it in place (a copy of the old one is
/// kept as beads.db.bak); writers, a running daemon's included, wait meanwhile.
/// A damaged database (corrupt, truncated) is moved aside to beads.db.damaged
/// and replaced, keeping this clone's replica id. On a fresh clone with no
/// database it creates one.
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
    let check = match (&r.previous_hash, &r.damaged) {
        (Some(prev), _) if *prev == r.state_hash => "state unchanged".to_string(),
        (Some(_), _) => "state DIFFERS from the old database (--force)".to_string(),
        (None, Some(why)) => format!(
            "the old database was damaged ({why}){}",
            if r.kept_replica {
                ""
            } else {
                "; its replica id could not be read, so this clone has a new one"
            }
        ),
        (None, None) => "no previous database".to_string(),
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
