//! `bd demo --scenario NAME`: the fleet scenarios (issue 16), and the hidden
//! `bd __scenario-agent` their agent processes run as.

use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::scenario::machines::Machines;
use bd::scenario::recursive::RecursiveSize;
use bd::scenario::saga::SagaSize;
use bd::scenario::surge::SurgeSize;
use bd::scenario::{Fleet, Report};
use clap::{Args, ValueEnum};

/// Which scenario `bd demo --scenario` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// 64 agents provision issues in a burst through batches while a director
    /// re-prioritises and 16 workers claim and close what is ready
    Surge,
    /// Agents run multi-step sagas; the daemon and every agent are killed -9
    /// midway, and a recovery agent finishes or compensates what they left
    SelfHealing,
    /// Agents decompose goals into deep trees and rewrite them while others
    /// work; ready is recomputed from the ops after every round
    Recursive,
}

/// How big a scenario runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Size {
    /// The sizes the aims are stated at, each under a minute here: 100,000
    /// issues (surge, recursive), 2,000 sagas (self-healing)
    Full,
    /// The integration tests' sizes (seconds)
    Small,
}

fn surge_size(s: Size) -> SurgeSize {
    match s {
        Size::Full => SurgeSize::FULL,
        Size::Small => SurgeSize::SMALL,
    }
}

fn recursive_size(s: Size) -> RecursiveSize {
    match s {
        Size::Full => RecursiveSize::FULL,
        Size::Small => RecursiveSize::SMALL,
    }
}

fn saga_size(s: Size) -> SagaSize {
    match s {
        Size::Full => SagaSize::FULL,
        Size::Small => SagaSize::SMALL,
    }
}

/// Runs `scenario` at `size`, prints its table (or JSON), and fails when
/// the checker found a difference.
pub fn run(
    ctx: &Ctx,
    scenario: Scenario,
    size: Size,
    seed: u64,
    keep: bool,
    mesh: bool,
) -> Result<(), CliError> {
    if mesh && scenario == Scenario::SelfHealing {
        return Err(bd::Error::invalid(
            "--mesh applies to the surge and recursive scenarios, not self-healing",
        )
        .hint("drop --mesh, or run `bd demo --scenario surge --mesh`")
        .into());
    }
    let exe = std::env::current_exe()?;
    let say = |root: &std::path::Path, how: &str| {
        if !ctx.quiet && !ctx.json {
            output::status(
                false,
                &format!(
                    "Running the {} scenario{how} in {} ...",
                    name(scenario),
                    root.display()
                ),
            );
        }
    };
    let (report, kept): (Report, _) = if mesh {
        let (prefix, clones) = match scenario {
            Scenario::Recursive => ("plan", bd::scenario::recursive::MESH_CLONES),
            _ => ("surge", bd::scenario::surge::MESH_CLONES),
        };
        let mut machines = Machines::new(&exe, prefix, clones)?;
        say(
            &machines.root,
            &format!(
                " on {} clones through the relay {}",
                machines.clones.len(),
                machines.relay_url()
            ),
        );
        let report = match scenario {
            Scenario::Recursive => {
                bd::scenario::recursive::run_on_machines(&machines, recursive_size(size), seed)?
            }
            _ => bd::scenario::surge::run_on_machines(&machines, surge_size(size), seed)?,
        };
        // (The first clone: `bd stats` there shows what every clone holds.)
        (report, keep.then(|| machines.keep().join("machine-a")))
    } else {
        let mut fleet = match scenario {
            Scenario::Surge => Fleet::new(&exe, "surge")?,
            Scenario::SelfHealing => Fleet::new(&exe, "saga")?,
            Scenario::Recursive => Fleet::new(&exe, "plan")?,
        };
        say(&fleet.root, "");
        let report = match scenario {
            Scenario::Surge => bd::scenario::surge::run_on(&fleet, surge_size(size), seed)?,
            Scenario::SelfHealing => bd::scenario::saga::run_on(&fleet, saga_size(size), seed)?,
            Scenario::Recursive => {
                bd::scenario::recursive::run_on(&fleet, recursive_size(size), seed)?
            }
        };
        (report, keep.then(|| fleet.keep()))
    };
    if ctx.json {
        output::json(&serde_json::json!({ "report": report, "kept": kept }))?;
    } else {
        let mut s = report.table();
        if let Some(p) = kept {
            s.push_str(&format!(
                "Kept the repository: cd {} && bd stats\n",
                p.display()
            ));
        }
        output::print(&s)?;
    }
    if !report.passed() {
        // Kind `internal` (exit 1): a difference is a bug in bd.
        return Err(CliError(
            bd::Error::new(
                bd::ErrorKind::Internal,
                format!(
                    "the {} scenario's checker found the end state differs from the model (see `checker:` above)",
                    name(scenario)
                ),
            )
            .hint("keep the repository with --keep to look at it, and report it"),
        ));
    }
    Ok(())
}

fn name(s: Scenario) -> &'static str {
    match s {
        Scenario::Surge => "surge",
        Scenario::SelfHealing => "self-healing",
        Scenario::Recursive => "recursive",
    }
}

/// `bd __scenario-agent`: one agent process of a scenario (hidden).
#[derive(Args, Debug)]
pub struct ScenarioAgentArgs {
    /// The scenario whose agent this is (saga)
    pub kind: String,
    /// Its journal file
    #[arg(long)]
    pub journal: std::path::PathBuf,
    /// Its claims' time limit, seconds
    #[arg(long, default_value_t = 10)]
    pub ttl: u64,
    /// Sagas it has in hand at once
    #[arg(long, default_value_t = 1)]
    pub parallel: usize,
    /// Its choices' seed
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub fn cmd_scenario_agent(ctx: &Ctx, a: ScenarioAgentArgs) -> Result<(), CliError> {
    if a.kind != "saga" {
        return Err(bd::Error::invalid(format!("no scenario agent {:?}", a.kind)).into());
    }
    let paths = ctx.paths()?;
    bd::scenario::saga::worker(
        &paths,
        &ctx.actor,
        &a.journal,
        a.ttl,
        a.parallel.max(1),
        a.seed,
    )?;
    Ok(())
}
