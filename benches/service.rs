//! Library-level benchmarks: every everyday operation through the same client API
//! the CLI uses (direct mode), at 100, 10,000 and 100,000 issues; import and export
//! of 10,000 issues; group commit; the same calls through a daemon (in a thread of
//! this process, over its socket); durable creates per second from 1, 8 and 50
//! clients with group commit on and off.
//!
//! Run: `cargo bench --bench service` (add `-- --quick` for a fast pass).

use bd::api::{CreateRequest, Request, UpdateRequest};
use bd::client::{Backend, Direct};
use bd::query::ListFilter;
use bd::storage::BeadsPaths;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::time::Duration;

/// As in the `bd` binary, so the figures are the binary's.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Tracker {
    _dir: tempfile::TempDir,
    client: Direct,
}

fn tracker(n: usize) -> Tracker {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = bd::fixture::tracker(dir.path(), "bench0000000000", n).expect("tracker");
    Tracker { _dir: dir, client }
}

fn everyday(c: &mut Criterion) {
    for n in [100usize, 10_000, 100_000] {
        let mut t = tracker(n);
        let mut g = c.benchmark_group(format!("at_{n}"));
        g.sample_size(30)
            .measurement_time(Duration::from_secs(3))
            .warm_up_time(Duration::from_secs(1));
        let target = "b-000001".to_string();
        g.bench_function(BenchmarkId::new("create", n), |b| {
            b.iter(|| {
                t.client
                    .call(Request::Create(CreateRequest {
                        title: "bench issue".into(),
                        labels: vec!["x".into()],
                        ..Default::default()
                    }))
                    .expect("create")
            })
        });
        // The same create as every CLI write sends it: with a request id, which
        // the commit records with the answer (exactly-once writes).
        let mut r = 0u64;
        g.bench_function(BenchmarkId::new("create_with_request_id", n), |b| {
            b.iter(|| {
                r += 1;
                t.client
                    .call_with(
                        Request::Create(CreateRequest {
                            title: "bench issue".into(),
                            labels: vec!["x".into()],
                            ..Default::default()
                        }),
                        &bd::client::CallOptions {
                            request_id: Some(format!("bench-{n}-{r}")),
                            deadline_ms: None,
                        },
                    )
                    .expect("create")
            })
        });
        // Updates spread over many issues (the usual case: each has a few ops).
        let mut k = 0usize;
        g.bench_function(BenchmarkId::new("update", n), |b| {
            b.iter(|| {
                k += 1;
                let (pass, j) = (k / n, k % n);
                let id = format!("b-{j:06}");
                // Always a real change: the fixture gives issue j priority j % 5, and
                // each pass over the issues moves every one up by one.
                let req = UpdateRequest {
                    ids: vec![id],
                    priority: Some(((j + pass + 1) % 5) as i64),
                    ..Default::default()
                };
                t.client.call(Request::Update(req)).expect("update")
            })
        });
        // One issue written over and over: every write re-folds all of its ops, so
        // this grows with the history (thousands of ops by the end).
        let mut p = 0;
        g.bench_function(BenchmarkId::new("update_hot_issue", n), |b| {
            b.iter(|| {
                p = (p + 1) % 5;
                t.client
                    .call(Request::Update(UpdateRequest {
                        ids: vec![target.clone()],
                        priority: Some(p),
                        ..Default::default()
                    }))
                    .expect("update")
            })
        });
        g.bench_function(BenchmarkId::new("show", n), |b| {
            b.iter(|| {
                t.client
                    .call(Request::Show {
                        ids: vec![target.clone()],
                    })
                    .expect("show")
            })
        });
        g.bench_function(BenchmarkId::new("list_50", n), |b| {
            b.iter(|| {
                t.client
                    .call(Request::List(ListFilter {
                        limit: Some(50),
                        ..Default::default()
                    }))
                    .expect("list")
            })
        });
        g.bench_function(BenchmarkId::new("list_label_50", n), |b| {
            let f = ListFilter {
                labels_all: vec!["area-3".into()],
                limit: Some(50),
                ..Default::default()
            };
            b.iter(|| t.client.call(Request::List(f.clone())).expect("list"))
        });
        g.bench_function(BenchmarkId::new("ready_10", n), |b| {
            b.iter(|| {
                t.client
                    .call(Request::Ready(ListFilter {
                        limit: Some(10),
                        ..Default::default()
                    }))
                    .expect("ready")
            })
        });
        if n <= 10_000 {
            g.bench_function(BenchmarkId::new("ready_all", n), |b| {
                b.iter(|| {
                    t.client
                        .call(Request::Ready(ListFilter::default()))
                        .expect("ready")
                })
            });
        }
        g.finish();
    }
}

fn import_export(c: &mut Criterion) {
    let mut g = c.benchmark_group("bulk_10000");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    let records = bd::fixture::records("b", 10_000);
    g.bench_function("import", |b| {
        b.iter_with_setup(
            || tracker(0),
            |mut t| {
                t.client
                    .call(Request::Import {
                        records: records.clone(),
                        dry_run: false,
                        strict: true,
                    })
                    .expect("import")
            },
        )
    });
    let mut t = tracker(10_000);
    g.bench_function("export", |b| {
        b.iter(|| t.client.call(Request::Export).expect("export"))
    });
    g.bench_function("flush_snapshot", |b| {
        b.iter(|| t.client.call(Request::Flush).expect("flush"))
    });
    g.finish();
}

/// 64 creates as 64 transactions versus one group commit (one transaction, one
/// fsync, a savepoint each): what the daemon's writer gains by grouping.
fn group_commit(c: &mut Criterion) {
    let mut g = c.benchmark_group("group_commit_64_creates");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    let mut t = tracker(10_000);
    let req = |i: usize| {
        Request::Create(CreateRequest {
            title: format!("grouped {i}"),
            ..Default::default()
        })
    };
    g.bench_function("one_transaction_each", |b| {
        b.iter(|| {
            for i in 0..64 {
                t.client.call(req(i)).expect("create");
            }
        })
    });
    g.bench_function("one_group", |b| {
        b.iter(|| {
            let items = (0..64)
                .map(|i| bd::engine::Item {
                    actor: format!("agent{}", i % 8),
                    request: req(i),
                    deadline_ms: None,
                    request_id: None,
                    fences: Vec::new(),
                })
                .collect();
            t.client.engine().run(items).expect("group")
        })
    });
    g.finish();
}

/// A daemon for `paths` in a thread of this process, and a way to connect to it.
struct BenchDaemon {
    socket: std::path::PathBuf,
    thread: Option<std::thread::JoinHandle<bd::Result<()>>>,
}

impl BenchDaemon {
    fn start(paths: &BeadsPaths, max_group: usize) -> BenchDaemon {
        use bd::daemon::{DaemonOptions, run, socket_path};
        let socket = socket_path(paths, || Ok(std::env::temp_dir())).expect("socket path");
        let opts = DaemonOptions {
            paths: paths.clone(),
            socket: socket.clone(),
            idle_timeout: Duration::from_secs(600),
            flush_debounce: Duration::from_millis(1000),
            max_group,
            version: env!("CARGO_PKG_VERSION").to_string(),
            config_dir: None,
        };
        let thread = std::thread::spawn(move || run(opts, std::sync::Arc::new(|_: &str| {})));
        BenchDaemon {
            socket,
            thread: Some(thread),
        }
    }

    fn connect(&self) -> bd::client::DaemonClient {
        for _ in 0..500 {
            if let Ok(c) =
                bd::client::DaemonClient::connect(&self.socket, "bench", Duration::from_secs(30))
            {
                return c;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("daemon did not come up");
    }

    fn stop(mut self) {
        self.connect().stop().expect("stop");
        if let Some(t) = self.thread.take() {
            t.join().expect("daemon thread").expect("daemon run");
        }
    }
}

fn create() -> Request {
    Request::Create(CreateRequest {
        title: "bench issue".into(),
        ..Default::default()
    })
}

/// The same calls through a real daemon (running in a thread of this process,
/// reached over its Unix socket) and directly, at 10,000 issues; and 8 clients
/// creating at once.
fn daemon_vs_direct(c: &mut Criterion) {
    let mut t = tracker(10_000);
    let paths = t.client.paths().clone();
    let daemon = BenchDaemon::start(&paths, bd::daemon::MAX_GROUP);
    let mut d = daemon.connect();
    let mut g = c.benchmark_group("daemon_vs_direct_10000");
    g.sample_size(30)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    let ready = || {
        Request::Ready(ListFilter {
            limit: Some(10),
            ..Default::default()
        })
    };
    let list = || {
        Request::List(ListFilter {
            limit: Some(50),
            ..Default::default()
        })
    };
    let show = || Request::Show {
        ids: vec!["b-000001".into()],
    };
    // A real change every time (see `everyday`), alternating between the two
    // backends over the same issues.
    let mut k = 0usize;
    let mut update = move || {
        k += 1;
        let (pass, j) = (k / 10_000, k % 10_000);
        Request::Update(UpdateRequest {
            ids: vec![format!("b-{j:06}")],
            priority: Some(((j + pass + 1) % 5) as i64),
            ..Default::default()
        })
    };
    g.bench_function("daemon_status_round_trip", |b| {
        b.iter(|| d.status().expect("status"))
    });
    g.bench_function("direct_create", |b| {
        b.iter(|| t.client.call(create()).expect("create"))
    });
    g.bench_function("daemon_create", |b| {
        b.iter(|| d.call(create()).expect("create"))
    });
    g.bench_function("direct_update", |b| {
        b.iter(|| t.client.call(update()).expect("update"))
    });
    g.bench_function("daemon_update", |b| {
        b.iter(|| d.call(update()).expect("update"))
    });
    g.bench_function("direct_show", |b| {
        b.iter(|| t.client.call(show()).expect("show"))
    });
    g.bench_function("daemon_show", |b| b.iter(|| d.call(show()).expect("show")));
    g.bench_function("direct_list_50", |b| {
        b.iter(|| t.client.call(list()).expect("list"))
    });
    g.bench_function("daemon_list_50", |b| {
        b.iter(|| d.call(list()).expect("list"))
    });
    g.bench_function("direct_ready_10", |b| {
        b.iter(|| t.client.call(ready()).expect("ready"))
    });
    g.bench_function("daemon_ready_10", |b| {
        b.iter(|| d.call(ready()).expect("ready"))
    });
    g.finish();

    // 8 clients × 50 creates at once, each with its own direct connection.
    let mut g = c.benchmark_group("concurrent_8x50_creates");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.throughput(criterion::Throughput::Elements(400));
    g.bench_function("daemon", |b| {
        let mut clients: Vec<_> = (0..8).map(|_| daemon.connect()).collect();
        b.iter(|| {
            std::thread::scope(|s| {
                for c in clients.iter_mut() {
                    s.spawn(move || (0..50).for_each(|_| drop(c.call(create()).expect("create"))));
                }
            })
        })
    });
    g.bench_function("direct", |b| {
        let mut clients: Vec<Direct> = (0..8)
            .map(|_| Direct::open(paths.clone(), "bench").expect("open"))
            .collect();
        b.iter(|| {
            std::thread::scope(|s| {
                for c in clients.iter_mut() {
                    s.spawn(move || (0..50).for_each(|_| drop(c.call(create()).expect("create"))));
                }
            })
        })
    });
    g.finish();
    drop(d);
    daemon.stop();
}

/// Acknowledged durable creates per second through the daemon from 1, 8 and 50
/// clients at once (400 creates in all), with group commit on and off.
fn daemon_throughput(c: &mut Criterion) {
    for (label, max_group) in [
        ("group_commit", bd::daemon::MAX_GROUP),
        ("one_per_commit", 1),
    ] {
        let t = tracker(10_000);
        let daemon = BenchDaemon::start(t.client.paths(), max_group);
        let mut g = c.benchmark_group(format!("daemon_400_creates_{label}"));
        g.sample_size(10).measurement_time(Duration::from_secs(8));
        g.throughput(criterion::Throughput::Elements(400));
        for clients in [1usize, 8, 50] {
            let per = 400 / clients;
            let mut conns: Vec<_> = (0..clients).map(|_| daemon.connect()).collect();
            g.bench_function(BenchmarkId::new("clients", clients), |b| {
                b.iter(|| {
                    std::thread::scope(|s| {
                        for c in conns.iter_mut() {
                            s.spawn(move || {
                                (0..per).for_each(|_| drop(c.call(create()).expect("create")))
                            });
                        }
                    })
                })
            });
        }
        g.finish();
        daemon.stop();
    }
}

criterion_group!(
    benches,
    everyday,
    import_export,
    group_commit,
    daemon_vs_direct,
    daemon_throughput
);
criterion_main!(benches);
