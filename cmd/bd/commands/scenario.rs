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
    let cleanup = Cleanup::watch();
    let outcome = (|| -> Result<(Report, Option<std::path::PathBuf>), CliError> {
        Ok(if mesh {
            let (prefix, clones) = match scenario {
                Scenario::Recursive => ("plan", bd::scenario::recursive::MESH_CLONES),
                _ => ("surge", bd::scenario::surge::MESH_CLONES),
            };
            let mut machines = Machines::new_announced(&exe, prefix, clones, &|d| cleanup.set(d))?;
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
            let prefix = match scenario {
                Scenario::Surge => "surge",
                Scenario::SelfHealing => "saga",
                Scenario::Recursive => "plan",
            };
            let mut fleet = Fleet::new_announced(&exe, prefix, &|d| cleanup.set(d))?;
            say(&fleet.root, "");
            let report = match scenario {
                Scenario::Surge => bd::scenario::surge::run_on(&fleet, surge_size(size), seed)?,
                Scenario::SelfHealing => bd::scenario::saga::run_on(&fleet, saga_size(size), seed)?,
                Scenario::Recursive => {
                    bd::scenario::recursive::run_on(&fleet, recursive_size(size), seed)?
                }
            };
            (report, keep.then(|| fleet.keep()))
        })
    })();
    if outcome.is_err() && cleanup.interrupted() {
        // The run failed because the interrupt is stopping its daemons:
        // the interrupt's thread ends the process (exit 130).
        loop {
            std::thread::park();
        }
    }
    let (report, kept) = outcome?;
    // Finished: an interrupt from here on leaves what --keep kept.
    if let Ok(mut c) = cleanup.dir.lock() {
        *c = None;
    }
    if ctx.json {
        output::json(&serde_json::json!({ "report": report, "kept": kept }))?;
    } else {
        let mut s = report.table();
        match kept {
            Some(p) if mesh => {
                // Each clone's signing key is in the run's config-<letter>
                // (its machine's config directory); the relay is stopped.
                let run = p.parent().unwrap_or(&p);
                s.push_str(&format!(
                    "Kept the run: cd {} && XDG_CONFIG_HOME={} bd --no-daemon stats\n(clones machine-a, machine-b, ...; each one's key in config-a, config-b, ...; the relay is stopped)\n",
                    p.display(),
                    run.join("config-a").display()
                ));
            }
            Some(p) => s.push_str(&format!(
                "Kept the repository: cd {} && bd stats\n",
                p.display()
            )),
            None => {}
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

/// What an interrupted run (Ctrl-C, SIGTERM) leaves to clean up: its
/// directory and the daemons of the repositories in it (the run's own
/// repository, or its clones `machine-*`). Taken back when the run ends by
/// itself.
#[derive(Clone, Default)]
struct Cleanup {
    dir: std::sync::Arc<std::sync::Mutex<Option<std::path::PathBuf>>>,
    interrupted: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Cleanup {
    /// Watches for SIGINT and SIGTERM on a thread of its own: on either,
    /// stops the run's daemons, removes its directory and exits 130.
    fn watch() -> Cleanup {
        let c = Cleanup::default();
        let mine = c.clone();
        let _ = std::thread::Builder::new()
            .name("bd-scenario-interrupt".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async {
                    use tokio::signal::unix::{SignalKind, signal};
                    let (Ok(mut int), Ok(mut term)) = (
                        signal(SignalKind::interrupt()),
                        signal(SignalKind::terminate()),
                    ) else {
                        return;
                    };
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                });
                mine.interrupted
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                mine.run();
                std::process::exit(130);
            });
        c
    }

    /// The run's directory, as soon as it exists.
    fn set(&self, dir: &std::path::Path) {
        if let Ok(mut c) = self.dir.lock() {
            *c = Some(dir.to_path_buf());
        }
    }

    /// Whether an interrupt came (and its thread is cleaning up).
    fn interrupted(&self) -> bool {
        self.interrupted.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn run(&self) {
        let Some(dir) = self.dir.lock().ok().and_then(|mut c| c.take()) else {
            return;
        };
        let mut roots = vec![dir.clone()];
        if let Ok(entries) = std::fs::read_dir(&dir) {
            roots.extend(entries.filter_map(|e| e.ok().map(|e| e.path())));
        }
        roots.retain(|r| r.join(".beads").join("daemon.lock").exists());
        eprintln!(
            "interrupted: stopping the scenario's daemons and removing {}",
            dir.display()
        );
        if let Ok(exe) = std::env::current_exe() {
            for root in &roots {
                let _ = std::process::Command::new(&exe)
                    .args(["daemon", "stop", "-q", "--timeout", "5"])
                    .current_dir(root)
                    .env("BD_AUTO_START", "0")
                    .env_remove("BEADS_DIR")
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
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
