//! The fleet scenarios (issue 16): what fleets of agents do to a work
//! tracker, run against a real tracker and a real daemon process, each with
//! a checker that compares the end state with a reference model built from
//! what the agents were told and what bd acknowledged, and one table of
//! figures.
//!
//! - [`surge`]: mass provisioning through `bd batch` while a director
//!   re-prioritises and workers claim and close what is ready.
//! - [`saga`]: multi-step sagas; the daemon and every agent are killed -9
//!   midway, and a recovery agent finishes or compensates what they left.
//! - [`recursive`]: deep goal trees rewritten while they are worked; the
//!   checker recomputes `ready` from the op file after every round.
//!
//! A scenario is a client of bd like any agent: it starts `bd` processes
//! (the daemon, agents that are killed) from the binary it is given and
//! talks to the daemon over its socket with [`crate::client`]. `bd demo
//! --scenario NAME` runs one at a size that finishes in under a minute; the
//! integration tests run small sizes, the benchmarks the full ones.

pub mod machines;
pub mod recursive;
pub mod saga;
pub mod surge;

use crate::api::{Request, Response};
use crate::client::{Backend, BeadsPaths, CallOptions, DaemonClient};
use crate::{Error, ErrorKind, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A throwaway repository with a tracker and its daemon, for one run.
pub struct Fleet {
    dir: Option<tempfile::TempDir>,
    /// The repository.
    pub root: PathBuf,
    /// Its tracker's files.
    pub paths: BeadsPaths,
    /// The `bd` binary every process of the run is started from.
    pub exe: PathBuf,
    /// The config directory (`XDG_CONFIG_HOME`) of this clone's machine,
    /// where its signing key is, in a run of several machines.
    config_dir: Option<PathBuf>,
}

impl Fleet {
    /// A new repository (git-initialised when git is there) with `bd init
    /// --prefix PREFIX` done and a daemon started.
    pub fn new(exe: &Path, prefix: &str) -> Result<Fleet> {
        Fleet::new_announced(exe, prefix, &|_| {})
    }

    /// [`Fleet::new`], telling `announce` the repository's directory as soon
    /// as it exists (so that an interrupted set-up can be cleaned up).
    pub fn new_announced(exe: &Path, prefix: &str, announce: &dyn Fn(&Path)) -> Result<Fleet> {
        let dir = tempfile::Builder::new().prefix("bd-scenario-").tempdir()?;
        let root = dir.path().to_path_buf();
        announce(&root);
        let _ = Command::new("git")
            .args(["init", "-q"])
            .current_dir(&root)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let fleet = Fleet {
            paths: BeadsPaths::new(root.join(crate::client::BEADS_DIR)),
            dir: Some(dir),
            root,
            exe: exe.to_path_buf(),
            config_dir: None,
        };
        fleet.bd("scenario", &["init", "--prefix", prefix, "-q"])?;
        fleet.start_daemon()?;
        Ok(fleet)
    }

    /// Keeps the repository after the run; returns where it is.
    pub fn keep(&mut self) -> PathBuf {
        if let Some(d) = self.dir.take() {
            let _ = d.keep();
        }
        self.root.clone()
    }

    /// Runs `bd ARGS` in the repository as `actor`; its stdout, or an error
    /// with its stderr.
    pub fn bd(&self, actor: &str, args: &[&str]) -> Result<String> {
        let out = self.command(actor, args).output()?;
        if !out.status.success() {
            return Err(Error::internal(format!(
                "`bd {}` exited {:?}: {}",
                args.join(" "),
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The command `bd ARGS` in the repository as `actor` (never starting a
    /// daemon by itself: the scenario decides when one runs).
    pub fn command(&self, actor: &str, args: &[&str]) -> Command {
        let mut c = Command::new(&self.exe);
        c.args(args)
            .current_dir(&self.root)
            .env("BD_ACTOR", actor)
            .env("BD_AUTO_START", "0")
            .env_remove("BEADS_DIR")
            .env_remove("BD_NO_DAEMON")
            .env_remove(crate::mesh::RELAY_ENV)
            .stdin(Stdio::null());
        if let Some(d) = &self.config_dir {
            c.env("XDG_CONFIG_HOME", d);
        }
        c
    }

    /// Starts the tracker's daemon (a process of its own).
    pub fn start_daemon(&self) -> Result<()> {
        self.bd(
            "scenario",
            // Short: a run interrupted (Ctrl-C) leaves its daemon behind
            // for two minutes at most.
            &["daemon", "start", "-q", "--idle-timeout", "120"],
        )
        .map(|_| ())
    }

    /// The running daemon's pid.
    pub fn daemon_pid(&self) -> Option<u32> {
        match crate::daemon::running(&self.paths) {
            Ok(Some(Some(r))) => Some(r.pid),
            _ => None,
        }
    }

    /// A connection to the daemon as `actor`: one agent's session.
    pub fn agent(&self, actor: &str) -> Result<Agent> {
        Agent::connect(&self.paths, actor)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self
            .command("scenario", &["daemon", "stop", "-q", "--timeout", "10"])
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .status();
    }
}

/// One agent's session with the daemon.
pub struct Agent {
    /// Its actor name.
    pub name: String,
    client: DaemonClient,
}

impl Agent {
    /// A session as `actor` with the daemon serving `paths` (an agent
    /// process of its own connects this way).
    pub fn connect(paths: &BeadsPaths, actor: &str) -> Result<Agent> {
        let client = DaemonClient::to_running(paths, actor, Duration::from_secs(120))?
            .ok_or_else(|| Error::new(ErrorKind::Unavailable, "no daemon runs for the scenario"))?;
        Ok(Agent {
            name: actor.to_string(),
            client,
        })
    }

    /// Runs a request that answers with issues (ready, list, export).
    pub fn issues(&mut self, req: Request) -> Result<Vec<crate::api::Issue>> {
        let name = req.op_name();
        match self.call(req)? {
            Response::Issues(i) => Ok(i),
            other => Err(Error::internal(format!("{name} answered {other:?}"))),
        }
    }

    /// Runs `req`.
    pub fn call(&mut self, req: Request) -> Result<Response> {
        self.client.call(req)
    }

    /// Runs a write with a request id: sent again with the same id, it is
    /// applied at most once.
    pub fn call_once(&mut self, req: Request, request_id: &str) -> Result<Response> {
        let opts = CallOptions {
            request_id: Some(request_id.to_string()),
            deadline_ms: None,
        };
        self.client.call_with(req, &opts)
    }
}

/// A small deterministic generator (splitmix64): a scenario's choices are
/// the same for the same seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }

    /// The next number.
    pub fn draw(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.draw() % (hi - lo + 1)
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.draw() % 100 < percent
    }
}

/// Latencies measured during a run.
#[derive(Debug, Default, Clone)]
pub struct Latencies(Vec<Duration>);

impl Latencies {
    /// Records one.
    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    /// Adds another set.
    pub fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `p`-th percentile (0..=100), nearest rank.
    pub fn percentile(&self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let mut v = self.0.clone();
        v.sort();
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1]
    }
}

/// A figure as printed: milliseconds with two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// A scenario's result: its figures, each with its aim when it has one,
/// and what its checker found wrong (nothing, for a run that passed).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// The size it ran at, in words.
    pub size: String,
    /// Figures: (name, value, aim).
    pub figures: Vec<Figure>,
    /// What the checker found: empty when the end state matches the model.
    pub problems: Vec<String>,
    /// Whether every aim was met.
    pub aims_met: bool,
    /// The durations the benchmarks time (provisioning, kill to settled).
    #[serde(skip)]
    pub timings: Vec<(&'static str, Duration)>,
}

/// One line of a report's table.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// What it measures.
    pub name: String,
    /// Its value, as printed.
    pub value: String,
    /// The aim it is held to, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aim: Option<String>,
    /// Whether the aim was met (`None` without an aim).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub met: Option<bool>,
}

impl Report {
    fn new(scenario: &str, size: String) -> Report {
        Report {
            scenario: scenario.to_string(),
            size,
            figures: Vec::new(),
            problems: Vec::new(),
            aims_met: true,
            timings: Vec::new(),
        }
    }

    /// Adds a figure without an aim.
    fn figure(&mut self, name: &str, value: impl ToString) {
        self.figures.push(Figure {
            name: name.to_string(),
            value: value.to_string(),
            aim: None,
            met: None,
        });
    }

    /// Adds a figure held to an aim.
    fn aim(&mut self, name: &str, value: impl ToString, aim: &str, met: bool) {
        self.aims_met &= met;
        self.figures.push(Figure {
            name: name.to_string(),
            value: value.to_string(),
            aim: Some(aim.to_string()),
            met: Some(met),
        });
    }

    /// The checker's verdict on one count that must be zero.
    fn must_be_zero(&mut self, name: &str, count: usize, examples: &[String]) {
        self.aim(name, count, "0", count == 0);
        if count > 0 {
            self.problems.push(format!(
                "{name}: {count} (e.g. {})",
                examples
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
    }

    /// Whether the checker found the end state as the model says.
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }

    /// The report as a plain table.
    pub fn table(&self) -> String {
        let w = self
            .figures
            .iter()
            .map(|f| f.name.chars().count())
            .max()
            .unwrap_or(6);
        // Values held to an aim are short; a long one without an aim runs on.
        let v = self
            .figures
            .iter()
            .filter(|f| f.aim.is_some())
            .map(|f| f.value.chars().count())
            .max()
            .unwrap_or(5)
            .max(5);
        let mut s = format!("{} ({})\n", self.scenario, self.size);
        s.push_str(&format!("{:<w$}  {:<v$}  AIM\n", "FIGURE", "VALUE"));
        for f in &self.figures {
            let aim = match (&f.aim, f.met) {
                (Some(a), Some(true)) => format!("{a} (met)"),
                (Some(a), _) => format!("{a} (MISSED)"),
                _ => String::new(),
            };
            s.push_str(format!("{:<w$}  {:<v$}  {aim}", f.name, f.value).trim_end());
            s.push('\n');
        }
        if self.problems.is_empty() {
            s.push_str("checker: the end state matches the model\n");
        } else {
            for p in &self.problems {
                s.push_str(&format!("checker: {p}\n"));
            }
        }
        s
    }
}

/// Ids of the issues in a batch's (or a create's) answer, in order.
fn created_ids(resp: &Response) -> Vec<String> {
    match resp {
        Response::Issue(i) => vec![i.id.clone()],
        Response::Batch(rs) => rs.iter().flat_map(created_ids).collect(),
        _ => Vec::new(),
    }
}

/// Every live issue of the tracker, with its dependencies and comments.
fn export(agent: &mut Agent) -> Result<Vec<crate::api::Issue>> {
    agent.issues(Request::Export)
}

/// How long the clones are given to converge.
pub const CONVERGE_LIMIT: Duration = Duration::from_secs(120);

/// A clone's state hash and live issue count.
fn state(agent: &mut Agent) -> Result<(String, u64)> {
    match agent.call(Request::Info)? {
        Response::Info(i) => Ok((i.state_hash, i.issues)),
        other => Err(Error::internal(format!("info answered {other:?}"))),
    }
}

/// Waits until every clone holds the same state (each holds its own ops,
/// so the same state means every op reached every clone): how long it
/// took, or `None` after [`CONVERGE_LIMIT`]. The clones' watermarks (each
/// replica's highest seq held, read from their databases) are polled until
/// they agree, and only then their state hashes compared: a hash is a pass
/// over every issue (~0.2 s at 100,000), and polling it would take a core
/// from the daemons whose convergence is being timed.
fn converge(clones: &[&Fleet], leads: &mut [Agent]) -> Result<Option<Duration>> {
    let start = Instant::now();
    loop {
        let marks = clones
            .iter()
            .map(|c| crate::mesh::watermarks(&c.paths))
            .collect::<Result<Vec<_>>>()?;
        if marks.windows(2).all(|w| w[0] == w[1]) {
            let mut states = Vec::with_capacity(leads.len());
            for l in leads.iter_mut() {
                states.push(state(l)?);
            }
            if states.windows(2).all(|w| w[0] == w[1]) {
                return Ok(Some(start.elapsed()));
            }
        }
        if start.elapsed() > CONVERGE_LIMIT {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
