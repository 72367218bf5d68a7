//! Scatter-gather across the mesh (issue 14): one question to every active
//! daemon at once (a request with many responders on `bd.<repo>.query`),
//! answered by each from what it holds (its watermarks, its leases, its
//! agents); the asker returns when a quorum fraction of the active daemons
//! has answered or the deadline passes, and always says how much of the
//! mesh it heard (answered / active / known) and whom it did not wait for.
//!
//! *Active* daemons are those whose heartbeat the relay's presence bucket
//! holds (60 s); *known* replicas are the members file's. Once the quorum
//! has answered the asker stops waiting: a slow peer (a high impedance Z)
//! costs a query nothing unless the quorum needs it.

use super::{MeshStatus, connect, secrets, status};
use crate::storage::BeadsPaths;
use crate::{Error, ErrorKind, Result};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

/// What a query asks for.
pub const PARTS: [&str; 3] = ["watermarks", "leases", "agents"];

/// The subject daemons answer queries on.
pub fn subject(repo_id: &str) -> String {
    format!("bd.{repo_id}.query")
}

/// The question on the wire.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ask {
    /// Parts asked for (see [`PARTS`]).
    pub what: Vec<String>,
}

/// A lease a daemon holds for one of its agents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldLease {
    /// The issue.
    pub issue: String,
    /// Who holds it.
    pub holder: String,
    /// Its fencing token.
    pub token: u64,
    /// When it expires unless renewed (relay clock, RFC 3339).
    pub expires_at: String,
}

/// One daemon's answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// Its replica.
    pub replica: String,
    /// Its host.
    pub host: String,
    /// Its bd version.
    pub version: String,
    /// Its mode (normal, degraded, isolated).
    #[serde(default)]
    pub mode: String,
    /// The highest seq of each replica's ops it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermarks: Option<BTreeMap<String, u64>>,
    /// The leases it holds for its agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leases: Option<Vec<HeldLease>>,
    /// The agents it served in the last minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agents: Option<Vec<String>>,
    /// How long after the question its answer arrived, ms (the asker's
    /// measure).
    #[serde(default)]
    pub answered_ms: f64,
}

/// An active daemon the query did not hear from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Unanswered {
    /// Its replica.
    pub replica: String,
    /// Its impedance as this clone's daemon measures it, ms (when known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub z_ms: Option<f64>,
    /// Why the query did not wait for it.
    pub why: String,
}

/// How a query is asked.
#[derive(Debug, Clone)]
pub struct QueryOptions {
    /// Parts asked for (see [`PARTS`]); empty: all.
    pub what: Vec<String>,
    /// The fraction of active daemons whose answers suffice, in (0, 1].
    pub quorum: f64,
    /// How long to wait at most.
    pub deadline: Duration,
    /// Impedance of the peers as this clone's daemon measures it (ms).
    pub impedance: HashMap<String, f64>,
}

/// What a query heard.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueryReport {
    /// Parts asked for.
    pub what: Vec<String>,
    /// The quorum fraction asked for.
    pub quorum: f64,
    /// The deadline, ms.
    pub deadline_ms: u64,
    /// Daemons that answered.
    pub answered: usize,
    /// Daemons active in the mesh (heartbeats in the relay).
    pub active: usize,
    /// Replicas the members file lists.
    pub known: usize,
    /// Answers the quorum needs.
    pub needed: usize,
    /// Whether they arrived before the deadline.
    pub quorum_reached: bool,
    /// How long the query took, ms.
    pub elapsed_ms: f64,
    /// The answers, in arrival order.
    pub answers: Vec<Answer>,
    /// Active daemons not heard from, and why they were not waited for.
    pub unanswered: Vec<Unanswered>,
}

/// Checks a query's parts and quorum.
pub fn check(what: &[String], quorum: f64) -> Result<()> {
    for w in what {
        if !PARTS.contains(&w.as_str()) && w != "all" {
            return Err(Error::invalid(format!("cannot query {w:?}"))
                .hint("ask for watermarks, leases, agents or all"));
        }
    }
    if !(quorum > 0.0 && quorum <= 1.0) {
        return Err(Error::invalid(format!("a quorum is a fraction in (0, 1], not {quorum}"))
            .hint("e.g. --quorum 0.66"));
    }
    Ok(())
}

/// Asks every active daemon of the mesh at once; see the module docs.
pub fn query(paths: &BeadsPaths, config_dir: &Path, opts: &QueryOptions) -> Result<QueryReport> {
    check(&opts.what, opts.quorum)?;
    let st = status(paths, config_dir, false)?;
    let repo_id = joined(&st)?;
    let s = secrets(config_dir, &repo_id, &st.replica)?;
    // `all` anywhere asks for everything; each part once, in the usual order.
    let what: Vec<String> = PARTS
        .iter()
        .filter(|p| opts.what.is_empty() || opts.what.iter().any(|w| w == *p || w == "all"))
        .map(|s| s.to_string())
        .collect();
    let mut known: Vec<&str> = st.members.iter().map(|m| m.replica.as_str()).collect();
    known.sort_unstable();
    known.dedup();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let started = Instant::now();
        let client = connect(&st.relay, &s, &format!("bd mesh query {}", st.replica)).await?;
        // Coverage is always reported: who is active is read first, with a
        // budget of its own (the deadline is for the answers).
        let active = tokio::time::timeout(Duration::from_secs(2), active_daemons(&client, &repo_id))
            .await
            .map_err(|_| unavailable("reading who is active", "no answer within 2 s"))??;
        let until = tokio::time::Instant::now() + opts.deadline;
        let needed = (opts.quorum * active.len() as f64).ceil() as usize;
        let inbox = client.new_inbox();
        let mut replies = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| unavailable("listening for answers", e))?;
        let ask = serde_json::to_vec(&Ask { what: what.clone() })?;
        client
            .publish_with_reply(subject(&repo_id), inbox, ask.into())
            .await
            .map_err(|e| unavailable("asking", e))?;
        client.flush().await.map_err(|e| unavailable("asking", e))?;
        let mut answers: Vec<Answer> = Vec::new();
        while answers.len() < needed.max(active.len()) {
            let Ok(Some(msg)) = tokio::time::timeout_at(until, replies.next()).await else {
                break;
            };
            let Ok(mut a) = serde_json::from_slice::<Answer>(&msg.payload) else {
                continue;
            };
            if answers.iter().any(|b| b.replica == a.replica) {
                continue;
            }
            a.answered_ms = started.elapsed().as_secs_f64() * 1e3;
            answers.push(a);
            if answers.len() >= needed {
                break;
            }
        }
        // With no daemon active there is no quorum to reach.
        let quorum_reached = needed > 0 && answers.len() >= needed;
        let unanswered = active
            .iter()
            .filter(|r| !answers.iter().any(|a| &a.replica == *r))
            .map(|r| Unanswered {
                replica: r.clone(),
                z_ms: opts.impedance.get(r).copied(),
                why: if quorum_reached && *r == st.replica {
                    "this clone's own daemon: not needed, the quorum had answered".into()
                } else if quorum_reached {
                    "not needed: the quorum had answered".into()
                } else {
                    format!("no answer within {} ms", opts.deadline.as_millis())
                },
            })
            .collect();
        Ok(QueryReport {
            what,
            quorum: opts.quorum,
            deadline_ms: opts.deadline.as_millis() as u64,
            answered: answers.len(),
            active: active.len(),
            known: known.len(),
            needed,
            quorum_reached,
            elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
            answers,
            unanswered,
        })
    })
}

/// The repository's mesh id, when this clone joined a relay.
fn joined(st: &MeshStatus) -> Result<String> {
    let Some(repo_id) = st.repo_id.clone().filter(|_| !st.relay.is_empty()) else {
        return Err(Error::invalid("no relay is configured here").hint("bd mesh join nats://HOST:PORT"));
    };
    if !st.joined {
        return Err(Error::invalid("this clone has not joined the mesh (or left it)")
            .hint(format!("bd mesh join {}", st.relay.join(" "))));
    }
    Ok(repo_id)
}

/// The replicas whose heartbeats the presence bucket holds.
async fn active_daemons(client: &async_nats::Client, repo_id: &str) -> Result<Vec<String>> {
    let js = async_nats::jetstream::new(client.clone());
    let Ok(kv) = js.get_key_value(format!("BD_{repo_id}_presence")).await else {
        return Ok(Vec::new()); // no daemon ever connected
    };
    let mut keys = kv.keys().await.map_err(|e| unavailable("reading presence", e))?;
    let mut out = Vec::new();
    while let Some(k) = keys.next().await {
        out.push(k.map_err(|e| unavailable("reading presence", e))?);
    }
    out.sort();
    Ok(out)
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Unavailable, format!("{what}: {e}"))
}
