//! Whole `bd` processes, as agents run them: the real binary started once per
//! call, through the daemon (a real daemon process) and with `--no-daemon`, at
//! 100 and 10,000 issues; and the same calls as tools of one `bd mcp` server
//! (an agent client's round trip over the server's stdio).
//!
//! Run: `cargo bench --bench process` (add `-- --quick` for a fast pass;
//! `-- mcp` for the MCP part alone).

use criterion::{BenchmarkId, Criterion, criterion_group};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const BD: &str = env!("CARGO_BIN_EXE_bd");

/// Runs `bd` in `root` and checks that it worked.
fn bd(root: &Path, args: &[&str]) {
    let out = Command::new(BD)
        .args(args)
        .current_dir(root)
        .env("BD_ACTOR", "bench")
        .env_remove("BD_NO_DAEMON")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .output()
        .expect("run bd");
    assert!(
        out.status.success(),
        "bd {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Set in the child that builds a tracker: `<issues>:<directory>`.
const BUILD_TRACKER: &str = "BD_BENCH_BUILD_TRACKER";

/// A tracker of `n` issues, built by a child process. Built here, its heap would
/// stay with this process, and every `bd` started below would pay to copy this
/// process's page tables (std forks rather than posix_spawns when the child gets a
/// working directory in a static binary): ~17 ms a process at 10,000 issues, which
/// the figures of 2026-11-23's last run wrongly carried.
fn tracker(n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let status = Command::new(std::env::current_exe().expect("bench binary"))
        .env(BUILD_TRACKER, format!("{n}:{}", dir.path().display()))
        .status()
        .expect("run tracker builder");
    assert!(status.success(), "building the {n}-issue tracker failed");
    dir
}

fn processes(c: &mut Criterion) {
    for n in [100usize, 10_000] {
        let dir = tracker(n);
        let root = dir.path();
        bd(root, &["daemon", "start", "--idle-timeout", "600"]);
        let mut g = c.benchmark_group(format!("process_{n}"));
        g.sample_size(30).measurement_time(Duration::from_secs(6));
        for (mode, extra) in [("daemon", None), ("direct", Some("--no-daemon"))] {
            let with = |args: &[&'static str]| -> Vec<&'static str> {
                extra.into_iter().chain(args.iter().copied()).collect()
            };
            let create = with(&["create", "bench issue", "-q"]);
            g.bench_function(BenchmarkId::new("create", mode), |b| {
                b.iter(|| bd(root, &create))
            });
            let ready = with(&["ready", "--json"]);
            g.bench_function(BenchmarkId::new("ready_json", mode), |b| {
                b.iter(|| bd(root, &ready))
            });
            let list = with(&["list", "--json", "-n", "50"]);
            g.bench_function(BenchmarkId::new("list_50_json", mode), |b| {
                b.iter(|| bd(root, &list))
            });
            let show = with(&["show", "--json", "b-000000"]);
            g.bench_function(BenchmarkId::new("show_json", mode), |b| {
                b.iter(|| bd(root, &show))
            });
        }
        g.finish();
        bd(root, &["daemon", "stop"]);
    }
    // The floor: starting the binary at all.
    let dir = tempfile::tempdir().expect("tempdir");
    c.bench_function("process_version", |b| {
        b.iter(|| bd(dir.path(), &["version"]))
    });
}

/// A `bd mcp` server driven over its stdio, one JSON-RPC line each way.
struct Mcp {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    next: u64,
}

impl Mcp {
    fn start(root: &Path, extra: Option<&str>) -> Mcp {
        let mut child = Command::new(BD)
            .args(extra)
            .arg("mcp")
            .current_dir(root)
            .env_remove("BD_ACTOR")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start bd mcp");
        let stdin = child.stdin.take().unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut mcp = Mcp {
            child,
            stdin,
            stdout,
            next: 0,
        };
        mcp.request(
            "initialize",
            serde_json::json!({"protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "bench-agent", "version": "1"}}),
        );
        mcp.send(&serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        mcp
    }

    fn send(&mut self, msg: &serde_json::Value) {
        use std::io::Write;
        writeln!(self.stdin, "{msg}").expect("write to bd mcp");
        self.stdin.flush().expect("flush");
    }

    fn request(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        use std::io::BufRead;
        self.next += 1;
        let id = self.next;
        self.send(
            &serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
        );
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read from bd mcp");
        let reply: serde_json::Value = serde_json::from_str(&line).expect("a JSON-RPC line");
        assert_eq!(reply["id"], id, "{reply}");
        reply
    }

    /// One tool call, checked to have worked.
    fn call(&mut self, tool: &str, args: serde_json::Value) {
        let reply = self.request(
            "tools/call",
            serde_json::json!({"name": tool, "arguments": args}),
        );
        assert_eq!(reply["result"]["isError"], false, "{tool}: {reply}");
    }
}

impl Drop for Mcp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The calls of `processes` as tool calls of one `bd mcp` server: what an
/// agent pays per call once its client has started the server.
fn mcp(c: &mut Criterion) {
    let dir = tracker(10_000);
    let root = dir.path();
    bd(root, &["daemon", "start", "--idle-timeout", "600"]);
    let mut g = c.benchmark_group("mcp_10000");
    g.sample_size(30).measurement_time(Duration::from_secs(6));
    for (mode, extra) in [("daemon", None), ("direct", Some("--no-daemon"))] {
        let mut server = Mcp::start(root, extra);
        g.bench_function(BenchmarkId::new("create", mode), |b| {
            b.iter(|| server.call("create", serde_json::json!({"title": "bench issue"})))
        });
        g.bench_function(BenchmarkId::new("ready", mode), |b| {
            b.iter(|| server.call("ready", serde_json::json!({})))
        });
        g.bench_function(BenchmarkId::new("show", mode), |b| {
            b.iter(|| server.call("show", serde_json::json!({"ids": ["b-000000"]})))
        });
    }
    g.finish();
    bd(root, &["daemon", "stop"]);
}

criterion_group!(benches, processes, mcp);

fn main() {
    if let Ok(spec) = std::env::var(BUILD_TRACKER) {
        let (n, dir) = spec.split_once(':').expect("<issues>:<directory>");
        let n: usize = n.parse().expect("issue count");
        bd::fixture::tracker(Path::new(dir), "bench0000000000", n).expect("tracker");
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
