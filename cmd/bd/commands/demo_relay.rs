//! `bd demo`, act three: the two machines of act two exchange work in real
//! time through a relay (a `nats-server -js` the demo starts on loopback, with
//! its own store in the demo's directory), when one is at hand.

use super::demo::Log;
use bd::Error;
use bd::scenario::machines::{INSTALL, RelayServer};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What act three showed, or why it did not run.
#[derive(Debug, Default, serde::Serialize)]
pub struct RelayAct {
    /// Why the act did not run (`None`: it ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// From A's create being answered to B showing it, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub create_seen_ms: Option<f64>,
    /// From B's claim being answered to A showing it, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim_seen_ms: Option<f64>,
}

impl RelayAct {
    pub fn skipped(why: impl Into<String>) -> RelayAct {
        RelayAct {
            skipped: Some(why.into()),
            ..Default::default()
        }
    }
}

/// The relay server and the two daemons, stopped when dropped (also when
/// the act fails half-way).
struct Running {
    // Dropped (killed) after the daemons are stopped.
    _server: RelayServer,
    roots: Vec<PathBuf>,
    log_env: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(exe) = std::env::current_exe() {
            for root in &self.roots {
                let _ = Command::new(&exe)
                    .args(["daemon", "stop", "-q"])
                    .current_dir(root)
                    .env("XDG_CONFIG_HOME", &self.log_env)
                    .env_remove("BEADS_DIR")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// Polls `done` (a quiet `bd` command in `dir`) every 2 ms for up to 10 s;
/// how long it took, in ms.
fn until(
    log: &Log,
    dir: &Path,
    actor: &str,
    args: &[&str],
    done: impl Fn(&str) -> bool,
) -> Result<f64, Error> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Some(out) = log.quiet_run(dir, actor, args)
            && done(&out)
        {
            return Ok(start.elapsed().as_secs_f64() * 1e3);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Err(Error::internal(format!(
        "`bd {}` did not show the change through the relay within 10 s",
        args.join(" ")
    )))
}

/// Act three: both machines join a relay, start their daemons, and see each
/// other's writes without any git sync.
pub fn act(a: &Path, b: &Path, log: &Log) -> Result<RelayAct, Error> {
    let Some(server) = RelayServer::find() else {
        let why = format!("no nats-server on PATH; {INSTALL}");
        log.say("relay", &format!("act three skipped: {why}"));
        return Ok(RelayAct::skipped(why));
    };
    let relay = RelayServer::start(&server, &a.join("relay-store"))?;
    let url = relay.url.clone();
    let _running = Running {
        _server: relay,
        roots: vec![a.to_path_buf(), b.to_path_buf()],
        log_env: log.config_dir.clone(),
    };
    log.say(
        "relay",
        &format!(
            "started {} -js on {url}; both machines join it",
            server.display()
        ),
    );
    let (ma, mb) = ("machine A (lead)", "machine B (bob)");
    log.run(ma, a, "lead", &["mesh", "join", &url])?;
    // The mesh id (in config.json) and the members file travel through git,
    // so trust arrives the way the code does.
    log.run(ma, a, "lead", &["sync", "-q"])?;
    log.run(mb, b, "bob", &["sync", "-q"])?;
    log.run(mb, b, "bob", &["mesh", "join", &url])?;
    log.run(mb, b, "bob", &["sync", "-q"])?;
    log.run(ma, a, "lead", &["sync", "-q"])?;
    for (who, dir, actor) in [(ma, a, "lead"), (mb, b, "bob")] {
        log.run(who, dir, actor, &["daemon", "start", "-q"])?;
    }
    log.say("both", "from here on, no git sync: only the relay");
    let id = log
        .run(
            ma,
            a,
            "lead",
            &["create", "Rotate the session keys", "-p", "1", "-q"],
        )?
        .trim()
        .to_string();
    let create_ms = until(log, b, "bob", &["show", &id, "--json"], |_| true)?;
    log.say(
        "machine B",
        &format!("sees {id} {create_ms:.0} ms after machine A's create was answered"),
    );
    log.run(mb, b, "bob", &["update", &id, "--claim"])?;
    let claim_ms = until(log, a, "lead", &["show", &id, "--json"], |out| {
        serde_json::from_str::<serde_json::Value>(out)
            .is_ok_and(|v| v.pointer("/0/assignee").and_then(|a| a.as_str()) == Some("bob"))
    })?;
    log.say(
        "machine A",
        &format!("sees bob's claim on {id} {claim_ms:.0} ms after it was answered"),
    );
    // The relay's lease: one holder in the whole mesh.
    log.run_expecting(ma, a, "lead", &["claim", &id], 3)?;
    log.run(ma, a, "lead", &["mesh", "ping"])?;
    log.say("relay", "stopping both daemons and the relay");
    Ok(RelayAct {
        skipped: None,
        create_seen_ms: Some(create_ms),
        claim_seen_ms: Some(claim_ms),
    })
}
