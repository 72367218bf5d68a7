//! Exchanging ops between clones: applying other clones' ops, `bd rebuild` from op
//! files, snapshot regeneration, and a whole `bd sync` through a local bare remote.
//!
//! Run: `cargo bench --bench sync` (add `-- --quick` for a fast pass).

use bd::api::{CreateRequest, Request};
use bd::client::{Backend, Direct, InitOptions, init};
use bd::storage::BeadsPaths;
use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn tracker(dir: &Path, replica: &str) -> BeadsPaths {
    init(
        dir,
        &InitOptions {
            prefix: Some("b".into()),
            replica: replica.into(),
        },
    )
    .expect("init");
    BeadsPaths::new(dir.join(".beads"))
}

/// A tracker whose op file holds `n` ops: `n` imported issues.
fn source_with_issues(n: usize) -> (tempfile::TempDir, BeadsPaths, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = tracker(dir.path(), "aaaaaaaaaaaaaaaa");
    let mut d = Direct::open(paths.clone(), "bench").expect("open");
    d.call(Request::Import {
        records: bd::fixture::records("b", n),
        dry_run: false,
        strict: true,
    })
    .expect("import");
    d.call(Request::Flush).expect("flush");
    let file = paths.op_file("aaaaaaaaaaaaaaaa");
    (dir, paths, file)
}

/// `n` creates titled `"{title} {i}"`, by `actor(i)`, committed as one group.
fn create_group(d: &mut Direct, n: usize, title: &str, actor: impl Fn(usize) -> String) {
    let items = (0..n)
        .map(|i| bd::engine::Item {
            actor: actor(i),
            request: Request::Create(CreateRequest {
                title: format!("{title} {i}"),
                ..Default::default()
            }),
            deadline_ms: None,
            request_id: None,
            fences: Vec::new(),
        })
        .collect();
    d.engine().run(items).expect("creates");
}

/// A tracker whose op file holds `n` ops: `n` creates by single calls (small
/// ops, like everyday agent work).
fn source_with_creates(n: usize) -> (tempfile::TempDir, BeadsPaths, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = tracker(dir.path(), "aaaaaaaaaaaaaaaa");
    let mut d = Direct::open(paths.clone(), "bench").expect("open");
    create_group(&mut d, n, "work item", |i| format!("agent{}", i % 8));
    d.call(Request::Flush).expect("flush");
    let file = paths.op_file("aaaaaaaaaaaaaaaa");
    (dir, paths, file)
}

/// A tracker with a history: `issues` creates, then `per_issue - 1` field changes
/// to each (title, description, assignee in turn), as agents' work looks.
fn source_with_history(issues: usize, per_issue: usize) -> (tempfile::TempDir, BeadsPaths) {
    let (dir, paths, _) = source_with_creates(issues);
    let mut d = Direct::open(paths.clone(), "bench").expect("open");
    let ids: Vec<String> = match d
        .call(Request::List(bd::query::ListFilter {
            all: true,
            limit: Some(0),
            ..Default::default()
        }))
        .expect("list")
    {
        bd::api::Response::Issues(v) => v.into_iter().map(|i| i.id).collect(),
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(ids.len(), issues);
    for round in 1..per_issue {
        for chunk in ids.chunks(2_000) {
            let items = chunk
                .iter()
                .map(|id| {
                    let mut u = bd::api::UpdateRequest {
                        ids: vec![id.clone()],
                        ..Default::default()
                    };
                    // Always a real change, so each is one op.
                    match round % 3 {
                        0 => u.title = Some(format!("retitled {round}")),
                        1 => u.description = Some(format!("notes after round {round}")),
                        _ => u.assignee = Some(format!("agent{}", round % 8)),
                    }
                    bd::engine::Item {
                        actor: format!("agent{}", round % 8),
                        request: Request::Update(u),
                        deadline_ms: None,
                        request_id: None,
                        fences: Vec::new(),
                    }
                })
                .collect();
            for r in d.engine().run(items).expect("updates") {
                r.expect("update");
            }
        }
    }
    d.call(Request::Flush).expect("flush");
    (dir, paths)
}

fn apply_foreign(c: &mut Criterion) {
    let mut g = c.benchmark_group("apply_foreign_ops");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    let (_src, _paths, file) = source_with_creates(1_000);
    g.bench_function("1000_creates", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().expect("tempdir");
                let paths = tracker(dir.path(), "bbbbbbbbbbbbbbbb");
                std::fs::copy(&file, paths.op_file("aaaaaaaaaaaaaaaa")).expect("copy");
                let d = Direct::open(paths.clone(), "bench").expect("open");
                (dir, paths, d)
            },
            |(_dir, _paths, mut d)| {
                let r = d.engine().catch_up().expect("catch up").expect("news");
                assert_eq!(r.applied, 1_000);
            },
            BatchSize::PerIteration,
        )
    });
    // Nothing new: what every command pays per foreign op file.
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = tracker(dir.path(), "bbbbbbbbbbbbbbbb");
    std::fs::copy(&file, paths.op_file("aaaaaaaaaaaaaaaa")).expect("copy");
    let mut d = Direct::open(paths.clone(), "bench").expect("open");
    d.engine().catch_up().expect("catch up");
    g.bench_function("nothing_new_check", |b| {
        b.iter(|| assert!(d.engine().catch_up().expect("check").is_none()))
    });
    g.finish();
}

fn rebuild(c: &mut Criterion) {
    let mut g = c.benchmark_group("rebuild");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    for n in [10_000usize, 100_000] {
        let (_src, paths, _file) = source_with_issues(n);
        g.bench_function(BenchmarkId::new("imported_issues", n), |b| {
            b.iter(|| {
                let r = bd::client::rebuild(&paths, false).expect("rebuild");
                assert_eq!(r.ops, n as u64);
            })
        });
    }
    let (_src, paths, _file) = source_with_creates(100_000);
    g.bench_function(BenchmarkId::new("creates", 100_000), |b| {
        b.iter(|| {
            let r = bd::client::rebuild(&paths, false).expect("rebuild");
            assert_eq!(r.ops, 100_000);
        })
    });
    // The usual shape of a history: many ops per issue.
    let (_src, paths) = source_with_history(10_000, 10);
    g.bench_function(BenchmarkId::new("10000_issues_x_10_ops", 100_000), |b| {
        b.iter(|| {
            let r = bd::client::rebuild(&paths, false).expect("rebuild");
            assert_eq!(r.ops, 100_000);
        })
    });
    g.finish();
}

fn snapshot(c: &mut Criterion) {
    let mut g = c.benchmark_group("snapshot_regenerate");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    for n in [10_000usize, 100_000] {
        let (_src, paths, _file) = source_with_issues(n);
        let mut d = Direct::open(paths.clone(), "bench").expect("open");
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_batched(
                || std::fs::remove_file(paths.snapshot()).expect("remove"),
                |()| bd::jsonl::write_snapshot(d.engine().store(), &paths).expect("snapshot"),
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

fn git(dir: &Path, home: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", home.join(".gitconfig"))
        .env("BD_AUTO_START", "0")
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `bd sync` without the push (the remote is shared by every iteration).
fn sync_no_push(d: &mut Direct) -> bd::api::SyncReport {
    sync(
        d,
        bd::api::SyncOptions {
            push: false,
            ..Default::default()
        },
    )
}

/// `bd sync` with `opts`, as the CLI sends it.
fn sync(d: &mut Direct, opts: bd::api::SyncOptions) -> bd::api::SyncReport {
    match d.call(Request::Sync(opts)).expect("sync") {
        bd::api::Response::Sync(r) => r,
        other => panic!("{other:?}"),
    }
}

/// A whole `bd sync` that brings in 1,000 foreign ops from a local bare remote,
/// and the same sync with nothing to bring in (the git floor).
fn whole_sync(c: &mut Criterion) {
    let mut g = c.benchmark_group("bd_sync");
    g.sample_size(10).measurement_time(Duration::from_secs(15));
    let home = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    std::fs::write(
        h.join(".gitconfig"),
        "[init]\n\tdefaultBranch = main\n[user]\n\tname = b\n\temail = b@example.invalid\n",
    )
    .expect("gitconfig");
    // SAFETY: the benchmark is single-threaded here; libgit2 reads HOME.
    unsafe {
        std::env::set_var("HOME", h);
        std::env::set_var("GIT_CONFIG_NOSYSTEM", "1");
        std::env::set_var("GIT_CONFIG_GLOBAL", h.join(".gitconfig"));
    }
    git(h, h, &["init", "-q", "--bare", "origin.git"]);
    git(h, h, &["clone", "-q", "origin.git", "a"]);
    git(
        &h.join("a"),
        h,
        &["commit", "-q", "--allow-empty", "-m", "base"],
    );
    git(&h.join("a"), h, &["push", "-q", "origin", "HEAD:main"]);
    let base = String::from_utf8(
        Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(h.join("a"))
            .output()
            .expect("rev-parse")
            .stdout,
    )
    .expect("utf-8");
    let a = tracker(&h.join("a"), "aaaaaaaaaaaaaaaa");
    {
        let mut d = Direct::open(a.clone(), "alice").expect("open");
        create_group(&mut d, 1_000, "from a", |_| "alice".into());
        sync(&mut d, Default::default());
    }
    // A clone whose branch is still at the base commit with its own tracker
    // committed: the next sync merges a's 1,000 ops in.
    let fresh_clone = |k: &str| {
        let name = format!("b{k}");
        let _ = std::fs::remove_dir_all(h.join(&name));
        git(h, h, &["clone", "-q", "origin.git", &name]);
        let root = h.join(&name);
        git(&root, h, &["reset", "-q", "--hard", base.trim()]);
        let paths = tracker(&root, "bbbbbbbbbbbbbbbb");
        let mut d = Direct::open(paths.clone(), "bob").expect("open");
        sync(
            &mut d,
            bd::api::SyncOptions {
                pull: false,
                push: false,
                ..Default::default()
            },
        );
        (paths, d)
    };
    let mut k = 0;
    g.bench_function("1000_foreign_ops", |b| {
        b.iter_batched(
            || {
                k += 1;
                fresh_clone(&k.to_string())
            },
            |(_, mut d)| {
                let r = sync_no_push(&mut d);
                assert_eq!(r.ops_applied, 1_000, "{r:?}");
            },
            BatchSize::PerIteration,
        )
    });
    let (_, mut d) = fresh_clone("steady");
    sync(&mut d, Default::default());
    g.bench_function("nothing_new", |b| {
        b.iter(|| {
            let r = sync_no_push(&mut d);
            assert_eq!(r.ops_applied, 0);
        })
    });
    g.finish();
}

criterion_group!(benches, apply_foreign, rebuild, snapshot, whole_sync);
criterion_main!(benches);
