//! Whole `bd` processes, as agents run them: the real binary started once per
//! call, through the daemon (a real daemon process) and with `--no-daemon`, at
//! 100 and 10,000 issues.
//!
//! Run: `cargo bench --bench process` (add `-- --quick` for a fast pass).

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

criterion_group!(benches, processes);

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
