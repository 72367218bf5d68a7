//! Presence in the mesh: heartbeats in the relay's key-value bucket with phi
//! accrual over their arrivals, pings for each peer's impedance (RFC 6298),
//! and the acknowledgements peers send for this replica's batches.

use super::{Settings, relay_error};
use super::super::server::Shared;
use crate::Result;
use async_nats::jetstream;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;

/// How often a daemon tells the mesh it is alive.
pub(super) const HEARTBEAT: Duration = Duration::from_secs(5);

/// How long a heartbeat stays in the presence bucket without a newer one.
pub(super) const PRESENCE_TTL: Duration = Duration::from_secs(60);

/// The acknowledgements one peer sent for this replica's batches.
#[derive(Default)]
pub(super) struct Acks {
    ready: u64,
    transit: u64,
    conflict: u64,
    /// (when recorded, commit-to-+1 latency in ms), the last hour's.
    latency: std::collections::VecDeque<(std::time::Instant, u64)>,
}

impl Acks {
    pub(super) fn record(&mut self, kind: i64, wall_ms: u64) {
        match kind {
            1 => {
                self.ready += 1;
                let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
                if wall_ms > 0 {
                    self.latency
                        .push_back((std::time::Instant::now(), now.saturating_sub(wall_ms)));
                }
            }
            0 => self.transit += 1,
            _ => self.conflict += 1,
        }
        let hour = Duration::from_secs(3600);
        while self
            .latency
            .front()
            .is_some_and(|(at, _)| at.elapsed() > hour)
            || self.latency.len() > 10_000
        {
            self.latency.pop_front();
        }
    }

    pub(super) fn summary(&self) -> crate::rpc::AckSummary {
        let mut l: Vec<u64> = self.latency.iter().map(|(_, ms)| *ms).collect();
        l.sort_unstable();
        let at = |q: f64| l.get(((l.len() as f64 * q) as usize).min(l.len().saturating_sub(1))).copied();
        crate::rpc::AckSummary {
            ready: self.ready,
            transit: self.transit,
            conflict: self.conflict,
            propagation_p50_ms: at(0.5),
            propagation_p95_ms: at(0.95),
        }
    }
}

/// What a heartbeat says.
#[derive(Debug, Serialize, Deserialize)]
struct Beat {
    host: String,
    version: String,
    published_seq: i64,
    agents: Vec<String>,
    #[serde(default)]
    apply_ms: f64,
    #[serde(default)]
    queue: u64,
}

/// Heartbeat arrivals from one peer, for its phi; and its round trips.
pub(super) struct Heard {
    revision: u64,
    at: std::time::Instant,
    /// Smoothed interval between arrivals, in ms.
    mean_ms: f64,
}

/// RFC 6298's round-trip estimator: the first sample sets SRTT = R and
/// RTTVAR = R/2; then RTTVAR = 3/4 RTTVAR + 1/4 |SRTT - R| and
/// SRTT = 7/8 SRTT + 1/8 R (ms; `None` before the first sample).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Rtt(Option<(f64, f64)>);

impl Rtt {
    /// Folds in a round trip of `r` ms; the new (SRTT, RTTVAR).
    pub(super) fn sample(&mut self, r: f64) -> (f64, f64) {
        let next = match self.0 {
            None => (r, r / 2.0),
            Some((srtt, rttvar)) => (
                0.875 * srtt + 0.125 * r,
                0.75 * rttvar + 0.25 * (srtt - r).abs(),
            ),
        };
        self.0 = Some(next);
        next
    }

    /// RFC 6298's retransmission timeout, SRTT + 4 RTTVAR, kept within
    /// `[floor, ceiling]` (`ceiling` before any sample).
    pub(super) fn rto(&self, floor: Duration, ceiling: Duration) -> Duration {
        self.0
            .map_or(ceiling, |(srtt, rttvar)| {
                Duration::from_secs_f64((srtt + 4.0 * rttvar) / 1e3)
            })
            .clamp(floor, ceiling)
    }
}

/// A ping not answered in this long failed (a slower answer is a slow
/// peer, not a dead one: it counts, and raises its impedance).
const PING_LIMIT: Duration = Duration::from_secs(30);

/// What pinging one peer has shown: its round trips, its last impedance, and
/// the breaker over its answers.
#[derive(Default)]
struct Probe {
    rtt: Rtt,
    last: Option<crate::rpc::Impedance>,
    in_flight: bool,
    breaker: crate::breaker::Breaker,
}

/// Pings the peers in the background, one ping per peer at a time, each on
/// its own task: a slow peer's ping never holds up the session (or another
/// peer's ping). Dropped with the session, it stops its pings.
#[derive(Default)]
pub(super) struct Prober {
    probes: std::sync::Arc<std::sync::Mutex<HashMap<String, Probe>>>,
    tasks: tokio::task::JoinSet<()>,
}

impl Prober {
    /// Starts a ping to each of `replicas` that has none under way and whose
    /// breaker lets one go.
    pub(super) fn round(&mut self, s: &Settings, client: &async_nats::Client, replicas: &[String]) {
        while self.tasks.try_join_next().is_some() {}
        let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
        let Ok(mut probes) = self.probes.lock() else {
            return;
        };
        for replica in replicas {
            let p = probes.entry(replica.clone()).or_default();
            if p.in_flight || !p.breaker.allow(now) {
                continue;
            }
            p.in_flight = true;
            let (client, probes, replica) = (client.clone(), self.probes.clone(), replica.clone());
            let subject = format!("bd.{}.ping.{replica}", s.repo_id);
            self.tasks.spawn(async move {
                let start = std::time::Instant::now();
                let answer = tokio::time::timeout(PING_LIMIT, client.request(subject, "".into())).await;
                let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
                let policy = crate::breaker::Policy::LINK;
                let Ok(mut probes) = probes.lock() else { return };
                let p = probes.entry(replica).or_default();
                p.in_flight = false;
                match answer {
                    Ok(Ok(msg)) => {
                        let (srtt, rttvar) = p.rtt.sample(start.elapsed().as_secs_f64() * 1e3);
                        let v: serde_json::Value =
                            serde_json::from_slice(&msg.payload).unwrap_or_default();
                        let apply_ms = v["apply_ms"].as_f64().unwrap_or(0.0);
                        let queue = v["queue"].as_u64().unwrap_or(0);
                        p.last = Some(crate::rpc::Impedance {
                            rtt_ms: srtt,
                            rttvar_ms: rttvar,
                            apply_ms,
                            queue,
                            z_ms: srtt + apply_ms + queue as f64 * apply_ms,
                        });
                        p.breaker.success(now, &policy);
                    }
                    Ok(Err(e)) => p.breaker.failure(now, &format!("ping: {e}"), &policy),
                    Err(_) => p.breaker.failure(
                        now,
                        &format!("ping: no answer in {} s", PING_LIMIT.as_secs()),
                        &policy,
                    ),
                }
            });
        }
    }

    /// A peer's last impedance and its breaker.
    pub(super) fn of(&self, replica: &str) -> (Option<crate::rpc::Impedance>, Option<crate::breaker::Breaker>) {
        self.probes
            .lock()
            .ok()
            .and_then(|p| p.get(replica).map(|p| (p.last.clone(), Some(p.breaker.clone()))))
            .unwrap_or((None, None))
    }
}

/// Answers other daemons' pings with this daemon's apply time and queue,
/// until the subscription ends (or the session aborts this task).
pub(super) async fn answer_pings(
    client: async_nats::Client,
    mut pings: async_nats::Subscriber,
    shared: std::sync::Arc<Shared>,
) {
    while let Some(ping) = pings.next().await {
        if let Some(reply) = ping.reply {
            let answer = serde_json::json!({
                "apply_ms": shared.apply_ms(),
                "queue": queue(&shared),
            });
            if let Ok(body) = serde_json::to_vec(&answer) {
                let _ = client.publish(reply, body.into()).await;
            }
        }
    }
}

/// The work waiting in this daemon: writes queued for its writer and relay
/// messages not yet delivered to it (as of the last heartbeat tick).
pub(super) fn queue(shared: &Shared) -> u64 {
    let pending = shared
        .relay
        .lock()
        .ok()
        .and_then(|r| r.as_ref().map(|r| r.pending))
        .unwrap_or(0);
    shared.counters.queue.load(std::sync::atomic::Ordering::SeqCst) + pending
}

/// Puts this daemon's heartbeat into the presence bucket.
pub(super) async fn heartbeat(
    s: &Settings,
    shared: &Shared,
    kv: &jetstream::kv::Store,
    published: i64,
) -> Result<()> {
    let beat = Beat {
        host: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default(),
        version: shared.opts.version.clone(),
        published_seq: published,
        agents: shared.recent_agents(),
        apply_ms: shared.apply_ms(),
        queue: queue(shared),
    };
    kv.put(&s.replica, serde_json::to_vec(&beat)?.into())
        .await
        .map_err(|e| relay_error("sending a heartbeat", e))?;
    Ok(())
}

/// Reads every other daemon's heartbeat and updates its phi: the suspicion
/// that it failed, from how late its next heartbeat is against the intervals
/// seen so far (phi accrual with exponentially distributed arrivals:
/// phi = elapsed / mean / ln 10; 1 means a 10% chance it is still alive and
/// merely late, 8 about one in 10^8).
pub(super) async fn listen(
    s: &Settings,
    kv: &jetstream::kv::Store,
    heard: &mut HashMap<String, Heard>,
) -> Result<Vec<crate::rpc::Peer>> {
    let mut keys = kv.keys().await.map_err(|e| relay_error("reading presence", e))?;
    let mut names = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| relay_error("reading presence", e))?;
        if key != s.replica {
            names.push(key);
        }
    }
    // All entries at once: on a slow link one round trip, not one per peer.
    let entries = futures_util::future::join_all(names.iter().map(|k| kv.entry(k))).await;
    let mut out = Vec::new();
    for (key, entry) in names.into_iter().zip(entries) {
        let Some(entry) = entry.map_err(|e| relay_error("reading presence", e))? else {
            continue;
        };
        let Ok(beat) = serde_json::from_slice::<Beat>(&entry.value) else {
            continue;
        };
        let now = std::time::Instant::now();
        let h = heard.entry(key.clone()).or_insert(Heard {
            revision: entry.revision,
            at: now,
            mean_ms: HEARTBEAT.as_millis() as f64,
        });
        if entry.revision != h.revision {
            let gap = now.duration_since(h.at).as_millis() as f64;
            h.mean_ms = 0.8 * h.mean_ms + 0.2 * gap.max(1.0);
            h.revision = entry.revision;
            h.at = now;
        }
        let elapsed = now.duration_since(h.at).as_millis() as f64;
        out.push(crate::rpc::Peer {
            replica: key,
            host: beat.host,
            version: beat.version,
            published_seq: beat.published_seq,
            agents: beat.agents,
            apply_ms: beat.apply_ms,
            queue: beat.queue,
            last_heard_ms: elapsed as u64,
            phi: elapsed / h.mean_ms / std::f64::consts::LN_10,
            impedance: None,
            acks: None,
            breaker: None,
        });
    }
    out.sort_by(|a, b| a.replica.cmp(&b.replica));
    Ok(out)
}


/// Answers `bd mesh query` questions (see [`crate::mesh::query`]) with what
/// this daemon holds, until the subscription ends (or the session aborts
/// this task). The watermarks are read from the database, one index lookup
/// per member replica.
pub(super) async fn answer_queries(
    client: async_nats::Client,
    mut questions: async_nats::Subscriber,
    shared: std::sync::Arc<Shared>,
    paths: crate::storage::BeadsPaths,
    replica: String,
) {
    use crate::mesh::query::{Answer, Ask};
    while let Some(q) = questions.next().await {
        let Some(reply) = q.reply else { continue };
        let ask: Ask = serde_json::from_slice(&q.payload).unwrap_or_default();
        let wants = |part: &str| ask.what.is_empty() || ask.what.iter().any(|w| w == part);
        let mut answer = Answer {
            replica: replica.clone(),
            host: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_default(),
            version: shared.opts.version.clone(),
            mode: shared
                .relay
                .lock()
                .ok()
                .and_then(|r| r.as_ref().map(|r| r.current_mode().to_string()))
                .unwrap_or_default(),
            ..Default::default()
        };
        if wants("watermarks") {
            let paths = paths.clone();
            answer.watermarks = tokio::task::spawn_blocking(move || crate::mesh::watermarks(&paths).ok())
                .await
                .ok()
                .flatten();
        }
        if wants("leases") {
            answer.leases = shared.held.lock().ok().map(|h| h.values().cloned().collect());
        }
        if wants("agents") {
            answer.agents = Some(shared.recent_agents());
        }
        if let Ok(body) = serde_json::to_vec(&answer) {
            let _ = client.publish(reply, body.into()).await;
        }
    }
}

