//! A one-machine Jepsen for the mesh (issue 14): three clones with their
//! daemons, a real `nats-server -js` on loopback, a fault proxy between each
//! daemon and the server (cut, delay), a seeded generator of agent
//! operations, a nemesis that breaks the network (or kills a daemon, or
//! skews a clock), and a checker that compares every clone's end state with
//! what bd acknowledged. Each case is bounded in time, stops every process
//! it started, and prints its verdict as one line of figures:
//!
//! `jepsen <case>: ops acknowledged N / present N / lost 0, conflicts K, claimed issues M (one winner W, claim conflicts C)`

use crate::mesh::{Relay, eventually, seen};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A TCP proxy on loopback in front of one relay server: what a daemon's
/// link to the relay goes through, and what the nemesis breaks.
pub(crate) struct FaultProxy {
    pub(crate) port: u16,
    state: Arc<ProxyState>,
    accept: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct ProxyState {
    stop: AtomicBool,
    cut: AtomicBool,
    /// Added to every chunk each way, ms.
    delay_ms: AtomicU64,
    conns: Mutex<Vec<TcpStream>>,
}

impl FaultProxy {
    pub(crate) fn start(target: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let state = Arc::new(ProxyState::default());
        let st = state.clone();
        let accept = std::thread::spawn(move || {
            while !st.stop.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                if st.cut.load(Ordering::SeqCst) {
                    drop(client); // refused while cut
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let _ = client.set_nonblocking(false);
                if let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone())
                    && let Ok(mut conns) = st.conns.lock()
                {
                    conns.push(c2);
                    conns.push(s2);
                }
                for (from, to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ] {
                    let (Ok(from), Ok(to)) = (from, to) else {
                        continue;
                    };
                    let st = st.clone();
                    std::thread::spawn(move || pump(from, to, &st));
                }
            }
        });
        FaultProxy {
            port,
            state,
            accept: Some(accept),
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Cuts the link: open connections are closed, new ones refused.
    pub(crate) fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        if let Ok(mut conns) = self.state.conns.lock() {
            for c in conns.drain(..) {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }

    /// Lets connections through again.
    pub(crate) fn heal(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }

    /// Adds `ms` to every round trip (half each way).
    pub(crate) fn delay(&self, ms: u64) {
        self.state.delay_ms.store(ms / 2, Ordering::SeqCst);
    }
}

/// Copies one direction of a connection until either side closes or the
/// proxy cuts or stops, delaying each chunk as told.
fn pump(mut from: TcpStream, mut to: TcpStream, st: &ProxyState) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if st.stop.load(Ordering::SeqCst) || st.cut.load(Ordering::SeqCst) {
            break;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let d = st.delay_ms.load(Ordering::SeqCst);
                if d > 0 {
                    std::thread::sleep(Duration::from_millis(d));
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.cut();
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Three joined clones (prefix `m`; alice, bob, carol), each daemon reaching
/// the relay through its own proxy.
pub(crate) struct Mesh3 {
    pub(crate) clones: Vec<crate::sync::Clone>,
    pub(crate) proxies: Vec<FaultProxy>,
    pub(crate) cluster: crate::sync::Cluster,
    pub(crate) relay: Relay,
}

impl Mesh3 {
    pub(crate) fn start() -> Mesh3 {
        let relay = Relay::start();
        let cluster = crate::sync::Cluster::new();
        let proxies: Vec<FaultProxy> = (0..3).map(|_| FaultProxy::start(relay.port)).collect();
        let mut clones = Vec::new();
        for (i, (name, actor)) in [("a", "alice"), ("b", "bob"), ("c", "carol")]
            .iter()
            .enumerate()
        {
            let mut c = cluster.clone(name, actor);
            c.env.push(("BD_RELAY_URLS".into(), proxies[i].url()));
            if i == 0 {
                c.ok(&["init", "--prefix", "m"]);
            } else {
                c.ok(&["init"]);
            }
            c.ok(&["mesh", "join", &relay.url()]);
            c.ok(&["sync"]);
            clones.push(c);
        }
        // Everyone's members line everywhere.
        for c in &clones[..2] {
            c.ok(&["sync"]);
        }
        for c in &clones {
            c.ok(&["daemon", "start", "-q"]);
        }
        let mesh = Mesh3 {
            clones,
            proxies,
            cluster,
            relay,
        };
        for c in &mesh.clones {
            assert!(
                eventually(Duration::from_secs(20), || mode(c) == "normal"),
                "{}",
                c.ok(&["mesh", "status"])
            );
        }
        mesh
    }
}

pub(crate) fn mode(c: &crate::sync::Clone) -> String {
    status(c)["mode"].as_str().unwrap_or_default().to_string()
}

pub(crate) fn status(c: &crate::sync::Clone) -> Value {
    let st: Value = serde_json::from_str(&c.ok(&["mesh", "status", "--json"])).unwrap_or_default();
    st["daemon"].clone()
}

/// A small deterministic generator (xorshift64*), seeded per case.
pub(crate) struct Gen(u64);

impl Gen {
    pub(crate) fn new(seed: u64) -> Gen {
        Gen(seed | 1)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n.max(1)
    }
}

/// What bd acknowledged (exit 0, or 4 for a provisional claim).
#[derive(Debug, Clone)]
pub(crate) enum Acked {
    Create {
        issue: String,
    },
    Comment {
        issue: String,
        text: String,
    },
    Set {
        issue: String,
    },
    Claim {
        issue: String,
        actor: String,
        token: Option<u64>,
    },
}

/// Runs `n` generated agent operations against `on` (clone indexes), over
/// `issues`, recording what was acknowledged.
pub(crate) fn agents(
    mesh: &Mesh3,
    on: &[usize],
    issues: &mut Vec<String>,
    rng: &mut Gen,
    n: usize,
    acked: &mut Vec<Acked>,
) {
    for step in 0..n {
        let i = on[rng.below(on.len())];
        let c = &mesh.clones[i];
        let pick = issues[rng.below(issues.len())].clone();
        match rng.below(5) {
            0 => {
                let out = c.bd(&["create", &format!("made by {i} at step {step}"), "--json"]);
                if out.status.success() {
                    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
                    let id = v["id"].as_str().unwrap().to_string();
                    issues.push(id.clone());
                    acked.push(Acked::Create { issue: id });
                }
            }
            1 => {
                let text = format!("note {i}.{step}");
                if c.bd(&["comment", "add", &pick, &text]).status.success() {
                    acked.push(Acked::Comment { issue: pick, text });
                }
            }
            2 => {
                let p = rng.below(5).to_string();
                if c.bd(&["update", &pick, "-p", &p]).status.success() {
                    acked.push(Acked::Set { issue: pick });
                }
            }
            _ => {
                let out = c.bd(&["claim", &pick, "--json"]);
                if matches!(out.status.code(), Some(0) | Some(4)) {
                    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
                    acked.push(Acked::Claim {
                        issue: v[0]["id"].as_str().unwrap_or(&pick).to_string(),
                        actor: v[0]["assignee"].as_str().unwrap_or_default().to_string(),
                        token: v[0]["lease"]["token"].as_u64(),
                    });
                }
            }
        }
    }
}

/// The checker's verdict.
#[derive(Debug, Default)]
pub(crate) struct Verdict {
    pub(crate) acked: usize,
    pub(crate) present: usize,
    pub(crate) lost: Vec<String>,
    pub(crate) conflicts: usize,
    pub(crate) claimed: usize,
    pub(crate) one_winner: usize,
    pub(crate) claim_conflicts: usize,
    pub(crate) silent_double_winners: Vec<String>,
}

impl Verdict {
    pub(crate) fn line(&self, case: &str) -> String {
        format!(
            "jepsen {case}: ops acknowledged {} / present {} / lost {}, conflicts {}, claimed issues {} (one winner {}, claim conflicts {})",
            self.acked,
            self.present,
            self.lost.len(),
            self.conflicts,
            self.claimed,
            self.one_winner,
            self.claim_conflicts
        )
    }
}

/// Waits until every clone shows the same state, then checks what was
/// acknowledged against each clone.
pub(crate) fn check(mesh: &Mesh3, acked: &[Acked]) -> Verdict {
    check_within(mesh, acked, Duration::from_secs(60))
}

/// [`check`], waiting up to `limit` for convergence.
pub(crate) fn check_within(mesh: &Mesh3, acked: &[Acked], limit: Duration) -> Verdict {
    let same = eventually(limit, || {
        let hashes: Vec<String> = mesh.clones.iter().map(|c| c.state_hash()).collect();
        hashes.windows(2).all(|w| w[0] == w[1])
    });
    assert!(
        same,
        "the clones never converged:\n{}",
        mesh.clones
            .iter()
            .map(|c| c.ok(&["mesh", "status"]))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let mut v = Verdict {
        acked: acked.len(),
        ..Default::default()
    };
    let conflicts: Vec<Value> = mesh.clones[0]
        .json(&["conflicts"])
        .as_array()
        .cloned()
        .unwrap_or_default();
    v.conflicts = conflicts.len();
    // Every clone shows every acknowledged create and comment; sets and
    // claims are there when the issue is (they are ops of it).
    let shown: Vec<Vec<Value>> = mesh
        .clones
        .iter()
        .map(|c| {
            c.json(&["list", "--all", "-n", "0"])
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    for a in acked {
        let (issue, text) = match a {
            Acked::Create { issue } | Acked::Set { issue } | Acked::Claim { issue, .. } => {
                (issue, None)
            }
            Acked::Comment { issue, text } => (issue, Some(text)),
        };
        let everywhere = mesh.clones.iter().zip(&shown).all(|(c, list)| {
            list.iter().any(|x| x["id"] == issue.as_str())
                && text.is_none_or(|t| {
                    c.json(&["comments", issue])
                        .as_array()
                        .is_some_and(|cs| cs.iter().any(|x| x["text"] == t.as_str()))
                })
        });
        if everywhere {
            v.present += 1;
        } else {
            v.lost.push(format!("{a:?}"));
        }
    }
    // Leased claims of one issue: each grant's token larger than the last
    // (in the order they were acknowledged).
    let mut tokens: std::collections::BTreeMap<&str, Vec<u64>> = Default::default();
    for a in acked {
        if let Acked::Claim {
            issue,
            token: Some(t),
            ..
        } = a
        {
            tokens.entry(issue).or_default().push(*t);
        }
    }
    for (issue, ts) in &tokens {
        let mut distinct = ts.clone();
        distinct.dedup(); // a renewal by the holder keeps its token
        assert!(
            distinct.windows(2).all(|w| w[0] < w[1]),
            "{issue}: lease tokens did not grow: {ts:?}"
        );
    }
    // Claims: per issue, the acknowledged claimants; two or more different
    // ones must leave a conflict (never two silent winners).
    let mut claimants: std::collections::BTreeMap<&str, std::collections::BTreeSet<&str>> =
        Default::default();
    for a in acked {
        if let Acked::Claim { issue, actor, .. } = a {
            claimants.entry(issue).or_default().insert(actor);
        }
    }
    v.claimed = claimants.len();
    for (issue, who) in &claimants {
        let conflicted = conflicts.iter().any(|c| {
            c["issue_id"] == *issue && (c["field"] == "assignee" || c["field"] == "claim")
        });
        if conflicted {
            v.claim_conflicts += 1;
        } else if who.len() == 1 {
            v.one_winner += 1;
        } else {
            v.silent_double_winners.push(format!("{issue}: {who:?}"));
        }
    }
    v
}

/// Asserts the verdict is clean and prints its line.
fn judge(case: &str, v: &Verdict) {
    println!("{}", v.line(case));
    assert!(v.lost.is_empty(), "{}: lost {:?}", v.line(case), v.lost);
    assert!(
        v.silent_double_winners.is_empty(),
        "{}: two silent winners {:?}",
        v.line(case),
        v.silent_double_winners
    );
}

/// Partition {A} vs {B, C} with writes and claims on both sides, then heal:
/// one state everywhere, every acknowledged op present, overlapping claims
/// conflicts (A's provisional, B's and C's leased: the token shows which
/// lease was real), never two silent winners.
#[test]
fn jepsen_partition_a_from_b_and_c_then_heal() {
    let mesh = Mesh3::start();
    let mut rng = Gen::new(0x5eed_0001);
    let mut acked = Vec::new();
    let mut issues: Vec<String> = (0..6)
        .map(|i| mesh.clones[0].create(&[&format!("shared {i}")]))
        .collect();
    for id in &issues {
        acked.push(Acked::Create { issue: id.clone() });
        for c in &mesh.clones[1..] {
            assert!(eventually(Duration::from_secs(15), || seen(c, id)));
        }
    }
    mesh.proxies[0].cut();
    assert!(eventually(Duration::from_secs(20), || mode(
        &mesh.clones[0]
    ) == "isolated"));
    // Both sides claim the same two issues: A provisionally, B with a lease.
    for id in &issues[..2] {
        for (i, want) in [(0usize, 4), (1, 0)] {
            let out = mesh.clones[i].bd(&["claim", id, "--json"]);
            assert_eq!(out.status.code(), Some(want), "clone {i}: {out:?}");
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            acked.push(Acked::Claim {
                issue: id.clone(),
                actor: v[0]["assignee"].as_str().unwrap().to_string(),
                token: v[0]["lease"]["token"].as_u64(),
            });
        }
    }
    agents(&mesh, &[0], &mut issues.clone(), &mut rng, 12, &mut acked);
    agents(&mesh, &[1, 2], &mut issues, &mut rng, 12, &mut acked);
    mesh.proxies[0].heal();
    let v = check(&mesh, &acked);
    judge("partition {A} | {B,C}", &v);
    assert!(v.claim_conflicts >= 2, "{}", v.line("partition"));
    // The real lease is the token the relay granted: B's.
    let q = mesh.clones[0].json(&[
        "mesh",
        "query",
        "leases",
        "--quorum",
        "1",
        "--deadline",
        "5s",
    ]);
    let leased: Vec<Value> = q["answers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|a| a["leases"].as_array().cloned().unwrap_or_default())
        .collect();
    for id in &issues[..2] {
        let holders: Vec<&Value> = leased
            .iter()
            .filter(|l| l["issue"] == id.as_str())
            .collect();
        assert_eq!(holders.len(), 1, "one real lease for {id}: {q}");
        assert_eq!(holders[0]["holder"], "bob");
    }
}

/// A slow peer (2 s added to C's every round trip): its impedance rises
/// (smoothed, so it is checked past 500 ms),
/// quorum queries stop waiting for it, the others are not held up, and no
/// breaker opens for a peer that answers.
#[test]
fn jepsen_slow_peer() {
    let mesh = Mesh3::start();
    mesh.proxies[2].delay(2000);
    let c_replica = mesh.clones[2].json(&["info"])["replica"]
        .as_str()
        .unwrap()
        .to_string();
    let a = &mesh.clones[0];
    assert!(
        eventually(Duration::from_secs(45), || {
            status(a)["peers"]
                .as_array()
                .unwrap_or(&Vec::new())
                .iter()
                .any(|p| {
                    p["replica"] == c_replica.as_str()
                        && p["impedance"]["z_ms"].as_f64().unwrap_or(0.0) > 500.0
                })
        }),
        "{}",
        a.ok(&["mesh", "status"])
    );
    let q = a.json(&[
        "mesh",
        "query",
        "watermarks",
        "--quorum",
        "0.66",
        "--deadline",
        "5s",
    ]);
    assert_eq!(q["quorum_reached"], true, "{q}");
    assert!(
        q["answers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["replica"] != c_replica.as_str()),
        "{q}"
    );
    assert!(
        q["elapsed_ms"].as_f64().unwrap() < 1500.0,
        "not waited for: {q}"
    );
    // (SRTT moves an eighth of the way per sample: past 500 ms of the 2 s
    // within three pings.)
    let z = q["unanswered"][0]["z_ms"].as_f64().unwrap_or(0.0);
    assert!(z > 500.0, "{q}");
    // Writes elsewhere cross at once; C gets them late but gets them.
    let mut acked = Vec::new();
    let mut issues = vec![a.create(&["while C is slow"])];
    acked.push(Acked::Create {
        issue: issues[0].clone(),
    });
    agents(
        &mesh,
        &[0, 1],
        &mut issues,
        &mut Gen::new(0x5eed_0002),
        10,
        &mut acked,
    );
    assert!(eventually(Duration::from_secs(10), || seen(
        &mesh.clones[1],
        &issues[0]
    )));
    // C converges at its link's pace: every relay call it makes costs 2 s.
    let v = check_within(&mesh, &acked, Duration::from_secs(180));
    judge("slow peer", &v);
    for p in status(a)["peers"].as_array().unwrap() {
        let state = p["breaker"]["state"].as_str().unwrap_or("closed");
        assert_eq!(
            state, "closed",
            "no breaker opens for a peer that answers: {p}"
        );
    }
}

/// One daemon's clock runs three hours ahead: its ops are held as
/// clock-skew conflicts everywhere else, not applied and not dropped.
#[test]
fn jepsen_clock_skew() {
    let mut mesh = Mesh3::start();
    let c = &mut mesh.clones[2];
    c.ok(&["daemon", "stop"]);
    c.env.push((
        "BD_TEST_CLOCK_AHEAD_MS".into(),
        (3 * 3600 * 1000).to_string(),
    ));
    c.ok(&["daemon", "start", "-q"]);
    let future = mesh.clones[2].create(&["from three hours ahead"]);
    let (mut held, mut applied) = (0, 0);
    for other in &mesh.clones[..2] {
        assert!(
            eventually(Duration::from_secs(20), || {
                other
                    .json(&["conflicts"])
                    .as_array()
                    .is_some_and(|cs| cs.iter().any(|x| x["field"] == "clock_skew"))
            }),
            "{}",
            other.ok(&["mesh", "status"])
        );
        let held_here = other.json(&["info"])["held_ops"].as_u64().unwrap_or(0);
        let applied_here = usize::from(seen(other, &future));
        assert_eq!(applied_here, 0, "held, not applied");
        assert!(held_here >= 1, "kept, not dropped");
        held += usize::from(held_here >= 1);
        applied += applied_here;
    }
    println!(
        "jepsen clock skew: the op is held as clock skew on {held} of 2 other clones, applied on {applied}, dropped on {}",
        2 - held
    );
}

/// A lease holder's daemon is killed (-9): its lease expires, another agent
/// takes the issue with a larger token, and the old holder's late write,
/// made without a daemon under the old token, becomes a claim conflict.
#[test]
fn jepsen_lease_holder_killed() {
    let mesh = Mesh3::start();
    let (a, b) = (&mesh.clones[0], &mesh.clones[1]);
    let id = a.create(&["held by a doomed daemon"]);
    assert!(eventually(Duration::from_secs(15), || seen(b, &id)));
    let old = a.json(&["claim", &id, "--ttl", "10s"])[0]["lease"]["token"]
        .as_u64()
        .unwrap();
    crate::mesh::kill_daemon(a);
    mesh.proxies[0].cut(); // and its machine is cut off
    std::thread::sleep(Duration::from_secs(11));
    let taken = b.json(&["claim", &id]);
    let new = taken[0]["lease"]["token"].as_u64().unwrap();
    assert!(new > old, "{taken}");
    a.ok(&["update", &id, "--title", "late, under the old token"]);
    mesh.proxies[0].heal();
    a.ok(&["daemon", "start", "-q"]);
    let acked = vec![
        Acked::Create { issue: id.clone() },
        Acked::Claim {
            issue: id.clone(),
            actor: "alice".into(),
            token: Some(old),
        },
        Acked::Claim {
            issue: id.clone(),
            actor: "bob".into(),
            token: Some(new),
        },
    ];
    let v = check(&mesh, &acked);
    judge("lease holder killed", &v);
    for c in &mesh.clones {
        let shown = &c.json(&["show", &id])[0];
        assert_eq!(shown["assignee"], "bob");
        assert_eq!(
            shown["title"], "held by a doomed daemon",
            "the late write is kept out"
        );
        let conflict = c.json(&["conflicts"]);
        let claim = conflict
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["field"] == "claim")
            .cloned();
        let claim = claim.unwrap_or_else(|| panic!("no claim conflict: {conflict}"));
        assert_eq!(
            claim["contenders"][0]["value"]["fence"], new,
            "the real lease: {claim}"
        );
        assert_eq!(claim["contenders"][1]["value"]["fence"], old);
    }
}

/// Duplicated and reordered deliveries: a clone's batches published again,
/// in reverse order and twice, before its daemon publishes them itself:
/// every receiver ends in the same state as the author.
#[test]
fn jepsen_duplicated_and_reordered_deliveries() {
    let mesh = Mesh3::start();
    let a = &mesh.clones[0];
    a.ok(&["daemon", "stop"]);
    let mut issues = vec![a.create(&["written offline"])];
    let mut acked = vec![Acked::Create {
        issue: issues[0].clone(),
    }];
    agents(
        &mesh,
        &[0],
        &mut issues,
        &mut Gen::new(0x5eed_0003),
        8,
        &mut acked,
    );
    a.ok(&["flush"]);
    let replica = a.json(&["info"])["replica"].as_str().unwrap().to_string();
    let repo = a.json(&["config", "get", "mesh.repo_id"]);
    let repo = repo
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| repo["value"].as_str().unwrap().to_string());
    let key = crate::mesh::replica_key(&mesh.cluster, &replica);
    let ops = std::fs::read_to_string(a.root.join(format!(".beads/ops/{replica}.jsonl"))).unwrap();
    let lines: Vec<&str> = ops.lines().filter(|l| !l.trim().is_empty()).collect();
    // One batch per op, newest first, each twice.
    for line in lines.iter().rev() {
        let text = format!("[{line}]");
        let payload = crate::mesh::batch(&replica, &text, &key, &text);
        for _ in 0..2 {
            crate::mesh::publish_raw(
                &mesh.relay.url(),
                format!("bd.{repo}.ops.{replica}"),
                payload.clone(),
            );
        }
    }
    a.ok(&["daemon", "start", "-q"]);
    let v = check(&mesh, &acked);
    judge("duplicated and reordered", &v);
}

/// Twenty agents on three machines claim one issue at the same moment
/// through their daemons: exactly one wins (exit 0 with a lease), the other
/// nineteen are refused (exit 3), and every clone ends with the winner as
/// the assignee and no conflict.
#[test]
fn jepsen_twenty_agents_on_three_machines_claim_one_issue() {
    let mesh = Mesh3::start();
    let id = mesh.clones[0].create(&["wanted by everyone"]);
    for c in &mesh.clones[1..] {
        assert!(eventually(Duration::from_secs(15), || seen(c, &id)));
    }
    let outs: Vec<(String, std::process::Output)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let (c, id) = (&mesh.clones[i % 3], &id);
                s.spawn(move || {
                    let actor = format!("agent-{i}");
                    (
                        actor.clone(),
                        c.bd(&["--actor", &actor, "claim", id, "--json"]),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winners: Vec<&String> = outs
        .iter()
        .filter(|(_, o)| o.status.code() == Some(0))
        .map(|(a, _)| a)
        .collect();
    let refused = outs
        .iter()
        .filter(|(_, o)| o.status.code() == Some(3))
        .count();
    assert_eq!(winners.len(), 1, "{outs:?}");
    assert_eq!(refused, 19, "{outs:?}");
    let winner = winners[0].clone();
    let mut acked = vec![Acked::Create { issue: id.clone() }];
    acked.push(Acked::Claim {
        issue: id.clone(),
        actor: winner.clone(),
        token: None,
    });
    let v = check(&mesh, &acked);
    judge("20 agents on 3 machines, one issue", &v);
    for c in &mesh.clones {
        assert_eq!(c.json(&["show", &id])[0]["assignee"], winner.as_str());
        assert_eq!(v.conflicts, 0);
    }
}
