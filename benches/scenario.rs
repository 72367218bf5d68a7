//! The fleet scenarios at their full sizes (issue 16), each against a new
//! tracker and a real daemon process started from the bd binary:
//!
//! - `surge_100k/provisioning`: 64 agents provisioning 100,000 issues in
//!   batches of 100 to 1,000 while a director re-prioritises 5,000 and 16
//!   workers claim and close (aim: under 10 s);
//! - `self_healing_2000/kill_to_settled`: 2,000 sagas, the daemon and 8
//!   worker processes killed -9 at half-way, time until every saga is
//!   complete or compensated (bounded below by the claims' 10 s limit);
//! - `recursive_100k/ready_10`: `ready` (ten, as an agent asks) at 100,000
//!   issues in goal trees of depth 6 (aim: p99 under 20 ms);
//! - `surge_mesh_100k/converged`: the surge on three clones through a relay
//!   (a `nats-server` on PATH), time from the last write until every clone
//!   holds the same state;
//! - `recursive_mesh_100k/converged`: the recursive scenario on two clones
//!   through a relay, the slowest convergence after a round (the first:
//!   the 100,000 decomposed issues reaching the second clone).
//!
//! Each run's checker must pass (the bench panics otherwise), and the first
//! run's table of figures is printed. Slow: each surge or saga sample is a
//! whole run. Run: `cargo bench --bench scenario` (`-- surge_100k`,
//! `-- self_healing`, `-- recursive_100k`, `-- mesh` for one or the mesh pair).

use bd::scenario::recursive::RecursiveSize;
use bd::scenario::saga::SagaSize;
use bd::scenario::surge::SurgeSize;
use bd::scenario::{Fleet, Report};
use criterion::{Criterion, criterion_group, criterion_main};
use std::path::Path;
use std::time::Duration;

const BD: &str = env!("CARGO_BIN_EXE_bd");

/// Times `what` of each run; prints the first run's table.
fn whole_runs(c: &mut Criterion, group: &str, what: &'static str, run: impl Fn(u64) -> Report) {
    let mut g = c.benchmark_group(group);
    g.sample_size(10)
        .measurement_time(Duration::from_secs(60))
        .warm_up_time(Duration::from_millis(1));
    let mut printed = false;
    let mut seed = 1;
    g.bench_function(what, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let report = run(seed);
                seed += 1;
                assert!(report.passed(), "{}", report.table());
                if !printed {
                    eprintln!("{}", report.table());
                    printed = true;
                }
                total += report
                    .timings
                    .iter()
                    .find(|(n, _)| *n == what)
                    .map(|(_, d)| *d)
                    .expect("the run timed it");
            }
            total
        })
    });
    g.finish();
}

fn surge(c: &mut Criterion) {
    whole_runs(c, "surge_100k", "provisioning", |seed| {
        bd::scenario::surge::run(Path::new(BD), SurgeSize::FULL, seed).expect("surge")
    });
}

fn self_healing(c: &mut Criterion) {
    whole_runs(c, "self_healing_2000", "kill to settled", |seed| {
        bd::scenario::saga::run(Path::new(BD), SagaSize::FULL, seed).expect("self-healing")
    });
}

fn recursive(c: &mut Criterion) {
    let fleet = Fleet::new(Path::new(BD), "plan").expect("fleet");
    let n = bd::scenario::recursive::build_trees(&fleet, RecursiveSize::FULL, 1).expect("trees");
    eprintln!("recursive: {n} issues in goal trees of depth 6");
    let mut agent = fleet.agent("bench").expect("agent");
    let mut g = c.benchmark_group("recursive_100k");
    g.bench_function("ready_10", |b| {
        b.iter(|| {
            agent
                .call(bd::api::Request::Ready(bd::api::ListFilter {
                    takeable_by: Some("bench".into()),
                    limit: Some(10),
                    ..Default::default()
                }))
                .expect("ready")
        })
    });
    g.finish();
    // The whole scenario once, for its table (rewrites, checks, latencies).
    let report =
        bd::scenario::recursive::run(Path::new(BD), RecursiveSize::FULL, 1).expect("recursive");
    assert!(report.passed(), "{}", report.table());
    eprintln!("{}", report.table());
}

fn mesh(c: &mut Criterion) {
    whole_runs(c, "surge_mesh_100k", "converged", |seed| {
        bd::scenario::surge::run_mesh(Path::new(BD), SurgeSize::FULL, seed).expect("surge mesh")
    });
    whole_runs(c, "recursive_mesh_100k", "converged", |seed| {
        bd::scenario::recursive::run_mesh(Path::new(BD), RecursiveSize::FULL, seed)
            .expect("recursive mesh")
    });
}

criterion_group!(benches, surge, self_healing, recursive, mesh);
criterion_main!(benches);
