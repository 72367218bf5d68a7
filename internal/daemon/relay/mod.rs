//! The daemon's side of the mesh (issue 13): publishing this replica's durable
//! ops to the relay and applying other replicas' ops from it.
//!
//! - **Stream**: `BD_<repo id>`, subjects `bd.<repo id>.ops.<replica>`, on the
//!   relay's disk; a message id (`<replica>-<first seq>-<last seq>`) makes a
//!   resend a duplicate JetStream drops.
//! - **Publishing**: the engine's post-commit hook hands each durable commit's
//!   own ops to this task; a batch is signed with the replica's key (the
//!   signature covers the exact `ops` text sent). A publish ack means stored on
//!   the relay; the watermark `mesh.published_seq` (the database's `meta`) then
//!   moves, and after a restart or an outage publishing resumes from it. No
//!   command waits for any of this.
//! - **Receiving**: a durable pull consumer `bd-<replica>`; a batch from
//!   another replica is verified against the members file, applied by the
//!   writer through the same merge as git sync, made durable, and only then
//!   acked. A batch that does not verify is never applied: it is logged,
//!   kept in quarantine (listed by `bd conflicts`) and acked, so it is not
//!   redelivered for ever.

mod presence;

use presence::{Acks, HEARTBEAT, Heard, PRESENCE_TTL, heartbeat, listen, ping};
use super::server::Shared;
use super::writer::Job;
use crate::mesh::{self, Member};
use crate::model::Op;
use crate::storage::{BeadsPaths, Store};
use crate::{Error, Result};
use async_nats::jetstream;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long the relay waits for a delivered batch's ack before delivering it
/// again (JetStream's default is 30 s: a killed daemon's batches would wait
/// that long).
const ACK_WAIT: Duration = Duration::from_secs(5);

/// The `meta` key of the last own op the relay acknowledged.
const PUBLISHED: &str = "mesh.published_seq";

/// What the daemon needs to take part, when this clone joined a relay.
pub(super) struct Settings {
    urls: Vec<String>,
    repo_id: String,
    replica: String,
    key: SigningKey,
    secrets: mesh::Secrets,
}

impl Settings {
    /// `None` when this clone has not joined (or no relay is configured).
    pub(super) fn load(paths: &BeadsPaths, config_dir: Option<&Path>) -> Result<Option<Settings>> {
        let Some(config_dir) = config_dir else {
            return Ok(None);
        };
        let st = mesh::status(paths, config_dir, false)?;
        let (true, Some(repo_id), false) = (st.joined, st.repo_id, st.relay.is_empty()) else {
            return Ok(None);
        };
        let secrets = mesh::secrets(config_dir, &repo_id, &st.replica)?;
        Ok(Some(Settings {
            key: mesh::signing_key(config_dir, &st.replica)?,
            urls: st.relay,
            repo_id,
            replica: st.replica,
            secrets,
        }))
    }

    /// The state the status shows before the first connection.
    pub(super) fn initial_state(&self) -> crate::rpc::RelayState {
        crate::rpc::RelayState {
            urls: self.urls.clone(),
            ..Default::default()
        }
    }

    fn presence(&self) -> String {
        format!("BD_{}_presence", self.repo_id)
    }

    fn stream(&self) -> String {
        format!("BD_{}", self.repo_id)
    }

    fn subject(&self, replica: &str) -> String {
        format!("bd.{}.ops.{replica}", self.repo_id)
    }
}

/// One published batch: a replica's ops, signed.
#[derive(Debug, Serialize, Deserialize)]
struct Batch {
    replica: String,
    /// The ops as JSON text: exactly the bytes the signature covers.
    ops: String,
    /// Ed25519 signature of `ops`, hex.
    sig: String,
}

/// Runs the relay's two halves until the daemon stops; reconnects with a
/// backoff when the relay is away. `outbox` carries each durable commit's own
/// ops from the engine's hook.
pub(super) async fn run(
    settings: Settings,
    paths: BeadsPaths,
    shared: Arc<Shared>,
    mut outbox: mpsc::UnboundedReceiver<Vec<Op>>,
) {
    let mut pause = Duration::from_millis(100);
    loop {
        if shared.is_stopping() {
            return;
        }
        let out = session(&settings, &paths, &shared, &mut outbox).await;
        update(&shared, |r| r.connected = false);
        match out {
            Ok(()) => return,
            Err(e) => {
                update(&shared, |r| r.last_error = Some(e.message.clone()));
                shared.note_error(&format!("relay: {}", e.message));
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Changes the relay state the daemon's status reports.
fn update(shared: &Shared, f: impl FnOnce(&mut crate::rpc::RelayState)) {
    if let Ok(mut r) = shared.relay.lock()
        && let Some(r) = r.as_mut()
    {
        f(r);
    }
}

fn relay_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(crate::ErrorKind::Unavailable, format!("{what}: {e}"))
}

async fn session(
    s: &Settings,
    paths: &BeadsPaths,
    shared: &Arc<Shared>,
    outbox: &mut mpsc::UnboundedReceiver<Vec<Op>>,
) -> Result<()> {
    let client = mesh::connect(&s.urls, &s.secrets, &format!("bd {}", s.replica)).await?;
    let js = jetstream::new(client.clone());
    // Peers ping us to measure their impedance to us: answer with our own
    // apply time and queue.
    let mut acks_in = client
        .subscribe(format!("bd.{}.ack.{}", s.repo_id, s.replica))
        .await
        .map_err(|e| relay_error("subscribing to acks", e))?;
    let mut acks: HashMap<String, Acks> = HashMap::new();
    let mut pings = client
        .subscribe(format!("bd.{}.ping.{}", s.repo_id, s.replica))
        .await
        .map_err(|e| relay_error("subscribing to pings", e))?;
    let stream = js
        .get_or_create_stream(jetstream::stream::Config {
            name: s.stream(),
            subjects: vec![format!("bd.{}.ops.>", s.repo_id)],
            storage: jetstream::stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| relay_error("opening the stream", e))?;
    let consumer = stream
        .get_or_create_consumer(
            &format!("bd-{}", s.replica),
            jetstream::consumer::pull::Config {
                durable_name: Some(format!("bd-{}", s.replica)),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                // A batch delivered to a daemon that died before acking it
                // comes again after this (applying twice changes nothing).
                ack_wait: ACK_WAIT,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| relay_error("opening the consumer", e))?;
    let presence = match js.get_key_value(s.presence()).await {
        Ok(kv) => kv,
        Err(_) => js
            .create_key_value(jetstream::kv::Config {
                bucket: s.presence(),
                history: 1,
                max_age: PRESENCE_TTL,
                ..Default::default()
            })
            .await
            .map_err(|e| relay_error("opening the presence bucket", e))?,
    };
    let mut peers: HashMap<String, Heard> = HashMap::new();
    let mut beat = tokio::time::interval(HEARTBEAT);
    (shared.log)(&format!("relay: connected to {}", s.urls.join(",")));
    update(shared, |r| {
        r.connected = true;
        r.last_error = None;
    });
    // What the relay lacks since the last acknowledged publish.
    let mut published = backlog(s, paths, shared, &js).await?;
    update(shared, |r| r.published_seq = published);
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| relay_error("reading the stream", e))?;
    loop {
        tokio::select! {
            ops = outbox.recv() => {
                let Some(ops) = ops else { return Ok(()) };
                let ops: Vec<Op> = ops.into_iter().filter(|o| o.seq as i64 > published).collect();
                if let Some(last) = publish(s, &js, &ops).await? {
                    published = last;
                    save_watermark(paths, last).await;
                    update(shared, |r| {
                        r.published_seq = last;
                        r.batches_out += 1;
                    });
                }
            }
            msg = messages.next() => {
                let Some(msg) = msg else { return Err(relay_error("the stream", "ended")) };
                let msg = msg.map_err(|e| relay_error("reading the stream", e))?;
                if let Some(ack) = apply(s, paths, shared, &msg.payload).await? {
                    let body = serde_json::json!({
                        "from": s.replica,
                        "kind": ack.kind,
                        "seq": ack.seq,
                        "wall_ms": ack.wall_ms,
                        "reason": ack.reason,
                    });
                    let _ = client
                        .publish(
                            format!("bd.{}.ack.{}", s.repo_id, ack.to),
                            serde_json::to_vec(&body)?.into(),
                        )
                        .await;
                }
                msg.ack().await.map_err(|e| relay_error("acknowledging", e))?;
            }
            _ = beat.tick() => {
                heartbeat(s, shared, &presence, published).await?;
                let mut seen = listen(s, &presence, &mut peers).await?;
                for p in &mut seen {
                    if let Some(h) = peers.get_mut(&p.replica) {
                        p.impedance = ping(s, &client, &p.replica, h).await;
                    }
                    if let Some(a) = acks.get_mut(&p.replica) {
                        p.acks = Some(a.summary());
                    }
                }
                update(shared, |r| r.peers = seen);
            }
            ack = acks_in.next() => {
                let Some(ack) = ack else { return Err(relay_error("acks", "ended")) };
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&ack.payload)
                    && let Some(from) = v["from"].as_str()
                {
                    acks.entry(from.to_string())
                        .or_default()
                        .record(v["kind"].as_i64().unwrap_or(0), v["wall_ms"].as_u64().unwrap_or(0));
                }
            }
            ping = pings.next() => {
                let Some(ping) = ping else { return Err(relay_error("pings", "ended")) };
                if let Some(reply) = ping.reply {
                    let answer = serde_json::json!({
                        "apply_ms": shared.apply_ms(),
                        "queue": shared.counters.queue.load(std::sync::atomic::Ordering::SeqCst),
                    });
                    let _ = client.publish(reply, serde_json::to_vec(&answer)?.into()).await;
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                if shared.is_stopping() {
                    return Ok(());
                }
            }
        }
    }
}

/// Publishes the own ops past the watermark (after a restart or an outage);
/// the new watermark.
async fn backlog(
    s: &Settings,
    paths: &BeadsPaths,
    shared: &Shared,
    js: &jetstream::Context,
) -> Result<i64> {
    let (from, ops) = {
        let paths = paths.clone();
        tokio::task::spawn_blocking(move || -> Result<(i64, Vec<Op>)> {
            let store = Store::open(&paths.db)?;
            let from: i64 = store
                .meta(PUBLISHED)?
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            Ok((from, crate::engine::own_ops_after(&store, from)?))
        })
        .await
        .map_err(|e| Error::internal(format!("reading the outbox: {e}")))??
    };
    let mut last = from;
    for chunk in ops.chunks(256) {
        if let Some(seq) = publish(s, js, chunk).await? {
            last = seq;
            save_watermark(paths, last).await;
            update(shared, |r| r.batches_out += 1);
        }
    }
    Ok(last)
}

/// Signs and publishes `ops` (own, in seq order) and waits for the relay's
/// ack; the last seq it now holds, or `None` for nothing to send.
async fn publish(s: &Settings, js: &jetstream::Context, ops: &[Op]) -> Result<Option<i64>> {
    let (Some(first), Some(last)) = (ops.first(), ops.last()) else {
        return Ok(None);
    };
    let text = serde_json::to_string(ops)?;
    let sig = crate::model::hex_bytes(&s.key.sign(text.as_bytes()).to_bytes());
    let batch = serde_json::to_vec(&Batch {
        replica: s.replica.clone(),
        ops: text,
        sig,
    })?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "Nats-Msg-Id",
        format!("{}-{}-{}", s.replica, first.seq, last.seq).as_str(),
    );
    js.publish_with_headers(s.subject(&s.replica), headers, batch.into())
        .await
        .map_err(|e| relay_error("publishing", e))?
        .await
        .map_err(|e| relay_error("publishing (no ack)", e))?;
    Ok(Some(last.seq as i64))
}

async fn save_watermark(paths: &BeadsPaths, seq: i64) {
    let paths = paths.clone();
    let _ = tokio::task::spawn_blocking(move || {
        Store::open(&paths.db).and_then(|mut st| st.set_meta(PUBLISHED, &seq.to_string()))
    })
    .await;
}

/// The acknowledgement a receiver owes a batch's author.
struct AckOut {
    to: String,
    /// +1 READY (applied), 0 TRANSIT (held for now), -1 CONFLICT (refused and
    /// quarantined).
    kind: i8,
    seq: i64,
    wall_ms: u64,
    reason: Option<String>,
}

/// Verifies a batch from another replica and has the writer apply it; the
/// acknowledgement owed to its author.
async fn apply(
    s: &Settings,
    paths: &BeadsPaths,
    shared: &Arc<Shared>,
    payload: &[u8],
) -> Result<Option<AckOut>> {
    let batch: Batch = match serde_json::from_slice(payload) {
        Ok(b) => b,
        Err(e) => {
            refused(shared, payload, &format!("an unreadable batch was refused: {e}"));
            return Ok(None);
        }
    };
    if batch.replica == s.replica {
        return Ok(None); // our own, back from the stream
    }
    let members = mesh::members(paths)?;
    if let Err(why) = verify(&batch, &members) {
        let what = format!("a batch from {} was refused: {why}", batch.replica);
        refused(shared, payload, &what);
        return Ok(Some(refusal(&batch, what)));
    }
    let ops: Vec<Op> = match serde_json::from_str(&batch.ops) {
        Ok(ops) => ops,
        Err(e) => {
            let what = format!("unreadable ops from {} were refused: {e}", batch.replica);
            refused(shared, payload, &what);
            return Ok(Some(refusal(&batch, what)));
        }
    };
    if ops.iter().any(|o| o.replica != batch.replica) {
        let what = format!("a batch from {} carries another replica's ops; refused", batch.replica);
        refused(shared, payload, &what);
        return Ok(Some(refusal(&batch, what)));
    }
    let (seq, wall_ms) = ops
        .iter()
        .map(|o| (o.seq as i64, o.hlc.wall))
        .max()
        .unwrap_or_default();
    let (tx, rx) = oneshot::channel();
    let started = std::time::Instant::now();
    shared.send_job(Job::Receive(ops, tx))?;
    let answer = rx.await;
    shared.applied_in(started.elapsed());
    match answer {
        Ok(Ok((_, held))) => {
            update(shared, |r| r.batches_in += 1);
            Ok(Some(AckOut {
                to: batch.replica.clone(),
                kind: if held > 0 { 0 } else { 1 },
                seq,
                wall_ms,
                reason: (held > 0).then(|| format!("{held} op(s) held for clock skew")),
            }))
        }
        Ok(Err(e)) if e.kind == crate::ErrorKind::Corrupt => {
            let what = format!("a batch from {} was refused: {}", batch.replica, e.message);
            refused(shared, payload, &what);
            Ok(Some(refusal(&batch, what)))
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::internal("the daemon's writer dropped a relay batch")),
    }
}

/// The -1 CONFLICT acknowledgement of a refused batch, to the replica it
/// claims to come from.
fn refusal(batch: &Batch, reason: String) -> AckOut {
    AckOut {
        to: batch.replica.clone(),
        kind: -1,
        seq: 0,
        wall_ms: 0,
        reason: Some(reason),
    }
}

/// Reports a refused batch (log, status), counts it, and has the writer keep
/// it in quarantine (listed by `bd conflicts` under its first op's issue).
fn refused(shared: &Shared, payload: &[u8], what: &str) {
    shared.note_error(&format!("relay: {what}"));
    update(shared, |r| r.refused += 1);
    let batch: Option<serde_json::Value> = serde_json::from_slice(payload).ok();
    let replica = batch
        .as_ref()
        .and_then(|b| b["replica"].as_str())
        .unwrap_or("")
        .to_string();
    let issue = batch
        .as_ref()
        .and_then(|b| b["ops"].as_str())
        .and_then(|ops| serde_json::from_str::<serde_json::Value>(ops).ok())
        .and_then(|ops| ops[0]["issue"].as_str().map(str::to_string))
        .unwrap_or_default();
    let payload = String::from_utf8_lossy(payload).into_owned();
    let _ = shared.send_job(Job::Quarantine([replica, issue, what.to_string(), payload]));
}

/// Checks a batch's signature against the key the members file lists for its
/// replica.
fn verify(batch: &Batch, members: &[Member]) -> std::result::Result<(), String> {
    let keys: Vec<&Member> = members
        .iter()
        .filter(|m| m.replica == batch.replica)
        .collect();
    if keys.is_empty() {
        return Err("its replica is not in the members file".into());
    }
    let sig = crate::model::unhex(&batch.sig)
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .map(|b| Signature::from_bytes(&b))
        .ok_or("its signature is malformed")?;
    for m in keys {
        let Some(key) = crate::model::unhex(&m.key)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .and_then(|b| VerifyingKey::from_bytes(&b).ok())
        else {
            continue;
        };
        if key.verify(batch.ops.as_bytes(), &sig).is_ok() {
            return Ok(());
        }
    }
    Err("its signature does not match the replica's key".into())
}
