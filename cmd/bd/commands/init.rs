use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::client::git::{self, SetUp};
use bd::client::{InitOptions, init};
use clap::Args;

/// Create a tracker (.beads/) in this repository
#[derive(Args, Debug)]
pub struct InitArgs {
    /// Id prefix for new issues (default: the directory's name)
    #[arg(long, short)]
    pub prefix: Option<String>,
}

/// A fresh random replica id (see [`bd::client::new_replica_id`]).
pub fn new_replica_id() -> Result<String, CliError> {
    Ok(bd::client::new_replica_id()?)
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
    // Inside a git repository: hooks and the merge driver, so the user's own
    // git commands keep bd's files fresh. A failure here does not undo the init.
    let paths = bd::client::BeadsPaths::new(&report.beads_dir);
    let git = match git::set_up(&paths, &std::env::current_exe()?) {
        SetUp::Installed => "git hooks and merge driver installed".to_string(),
        SetUp::Failed(e) => format!(
            "git hooks not installed: {} (`bd hooks install` retries)",
            e.message
        ),
        SetUp::NotARepository => {
            "not a git repository: no hooks installed (after `git init`, run `bd hooks install`)"
                .to_string()
        }
    };
    for p in &report.problems {
        crate::output::stderr_line(&format!("warning: {}:{}: {}", p.file, p.line, p.problem));
    }
    if ctx.json {
        let mut v = serde_json::to_value(&report).map_err(bd::Error::from)?;
        v["git"] = serde_json::Value::String(git);
        return output::json(&v);
    }
    if ctx.quiet {
        return Ok(());
    }
    let how = if report.adopted_existing {
        " (found committed .beads/ files)"
    } else {
        ""
    };
    let applied = match (report.ops_applied, report.kept_replica) {
        (0, _) => String::new(),
        (n, false) => format!("\n  applied: {n} ops from other clones"),
        (n, true) => format!("\n  applied: {n} ops (this clone's own, and other clones')"),
    };
    let kept = if report.kept_replica {
        " (kept from .beads/beads.db.replica: the database was deleted, this clone stays itself)"
    } else {
        ""
    };
    output::print(&format!(
        "Initialised bd in {}{how}\n  prefix:  {}\n  replica: {}{kept}{applied}\n  git:     {git}\nNext: bd create \"First task\" && bd ready\n",
        report.beads_dir, report.prefix, report.replica
    ))
}
