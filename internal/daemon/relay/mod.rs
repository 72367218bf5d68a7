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

mod claims;
mod presence;

use presence::{Acks, HEARTBEAT, Heard, PRESENCE_TTL, Rtt, heartbeat, listen};
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

/// How long the relay keeps a batch. A clone away longer than this catches
/// up through git (`bd sync`), which always holds everything.
const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long a daemon looks in the stream for the ops a batch in transit
/// waits for before leaving them to redelivery or git.
const FETCH_FOR: Duration = Duration::from_secs(3);

/// The `meta` key of the last own op the relay acknowledged.
const PUBLISHED: &str = "mesh.published_seq";

/// A lease request from a connection to the relay session.
pub(in crate::daemon) enum LeaseJob {
    /// Take (or renew) the lease of an issue for an actor.
    Acquire {
        issue: String,
        holder: String,
        ttl: Duration,
        reply: oneshot::Sender<Result<mesh::lease::Grant>>,
    },
    /// Give it up, if the actor holds it, as `how` says; the reply says it
    /// is done.
    Release {
        issue: String,
        holder: String,
        how: GiveBack,
        reply: oneshot::Sender<()>,
    },
}

/// How a write gives an issue's lease back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::daemon) enum GiveBack {
    /// Given up: anyone may claim the issue at once.
    Released,
    /// Closed: the mark of the close takes the lease's place, and refuses
    /// other clones' claims until the close has reached them.
    Closed,
    /// Reopened: the mark of its close (whoever closed it) goes.
    Reopened,
}

/// Gives `issue`'s lease back as `how` says.
async fn give_back(leases: &jetstream::kv::Store, issue: &str, holder: &str, replica: &str, how: GiveBack) -> Result<()> {
    match how {
        GiveBack::Released => mesh::lease::release(leases, issue, holder, replica).await,
        GiveBack::Closed => mesh::lease::mark_closed(leases, issue, holder, replica).await,
        GiveBack::Reopened => mesh::lease::clear_closed(leases, issue).await,
    }
    .map(|_| ())
}

/// Clears the session's lease channel when the session ends.
struct LeaseDesk<'a>(&'a Shared);

impl Drop for LeaseDesk<'_> {
    fn drop(&mut self) {
        if let Ok(mut l) = self.0.leases.lock() {
            *l = None;
        }
    }
}

/// What the daemon needs to take part, when this clone joined a relay.
pub(super) struct Settings {
    config_dir: std::path::PathBuf,
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
            config_dir: config_dir.to_path_buf(),
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
    mut settings: Settings,
    paths: BeadsPaths,
    shared: Arc<Shared>,
    mut outbox: mpsc::UnboundedReceiver<Vec<Op>>,
) {
    let mut pause = Duration::from_millis(100);
    loop {
        if shared.is_stopping() {
            return;
        }
        // The breaker over the relay connection: open, no attempt until its
        // probe time (the outbox grows meanwhile, and git carries the sync).
        let wait = {
            let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
            let mut b = shared.relay_breaker.lock().unwrap_or_else(|p| p.into_inner());
            (!b.allow(now)).then(|| b.probe_in_ms(now))
        };
        if let Some(ms) = wait {
            tokio::time::sleep(Duration::from_millis(ms.clamp(1, 250))).await;
            continue;
        }
        let out = session(&settings, &paths, &shared, &mut outbox).await;
        update(&shared, |r| {
            r.connected = false;
            // What the peers were doing is unknown from here on.
            r.peers.clear();
        });
        match out {
            Ok(()) => return,
            Err(e) => {
                {
                    let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
                    let mut b = shared.relay_breaker.lock().unwrap_or_else(|p| p.into_inner());
                    let was = b.state;
                    // One outage, one failure: a drop the session counted
                    // already is not counted again when it ends the session
                    // (nor when its count opened the breaker).
                    let counted = shared.drop_counted.swap(false, std::sync::atomic::Ordering::SeqCst);
                    if was != crate::breaker::State::Open && !counted {
                        b.failure(now, &e.message, &crate::breaker::Policy::RELAY);
                    }
                    if b.state == crate::breaker::State::Open {
                        shared.note_error(&format!(
                            "relay: breaker open after {} failure(s) in a row; next try in {:.1} s (writes wait in the outbox; `bd sync` carries them through git)",
                            b.consecutive,
                            b.probe_in_ms(now) as f64 / 1000.0
                        ));
                    }
                }
                update(&shared, |r| r.last_error = Some(e.message.clone()));
                shared.note_error(&format!("relay: {}", e.message));
                refresh_outbox(&paths, &shared).await;
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
                // The mesh id or the relay may have changed (a `bd sync`
                // brought another clone's): the next session uses them.
                if let Ok(Some(now)) = Settings::load(&paths, Some(&settings.config_dir)) {
                    if now.repo_id != settings.repo_id || now.urls != settings.urls {
                        pause = Duration::from_millis(100);
                        update(&shared, |r| r.urls = now.urls.clone());
                    }
                    settings = now;
                }
            }
        }
    }
}

/// How long a relay session must stay up to count as a success for the
/// relay's breaker.
const STABLE: Duration = Duration::from_secs(10);

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
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let client = mesh::connect_watched(
        &s.urls,
        &s.secrets,
        &format!("bd {}", s.replica),
        Some(events_tx),
    )
    .await?;
    let js = jetstream::new(client.clone());
    // Peers ping us to measure their impedance to us: answer with our own
    // apply time and queue.
    let mut acks_in = client
        .subscribe(format!("bd.{}.ack.{}", s.repo_id, s.replica))
        .await
        .map_err(|e| relay_error("subscribing to acks", e))?;
    let mut acks: HashMap<String, Acks> = HashMap::new();
    let pings = client
        .subscribe(format!("bd.{}.ping.{}", s.repo_id, s.replica))
        .await
        .map_err(|e| relay_error("subscribing to pings", e))?;
    // Pings are answered on a task of their own: an answer must not wait for
    // this loop (which may itself be pinging, or applying a large batch), or
    // two daemons pinging each other at once would both time out.
    let _answering = Abort(tokio::spawn(presence::answer_pings(
        client.clone(),
        pings,
        shared.clone(),
    )));
    let questions = client
        .subscribe(mesh::query::subject(&s.repo_id))
        .await
        .map_err(|e| relay_error("subscribing to queries", e))?;
    let _querying = Abort(tokio::spawn(presence::answer_queries(
        client.clone(),
        questions,
        shared.clone(),
        paths.clone(),
        s.replica.clone(),
    )));
    // On a cluster the stream and buckets keep three copies (R3): losing one
    // server loses no acknowledged op or lease. A single server keeps one.
    let replicas = if client.server_info().cluster.is_some() { 3 } else { 1 };
    let config = jetstream::stream::Config {
        name: s.stream(),
        subjects: vec![format!("bd.{}.ops.>", s.repo_id)],
        storage: jetstream::stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        max_age: RETENTION,
        num_replicas: replicas,
        ..Default::default()
    };
    let stream = match js.get_stream(s.stream()).await {
        Ok(mut stream) => {
            let have = stream.cached_info().config.num_replicas;
            if have < replicas {
                // Made on one server, the cluster grew since: more copies.
                match js.update_stream(&config).await {
                    Ok(_) => (shared.log)(&format!("relay: the stream now keeps {replicas} copies (it kept {have})")),
                    Err(e) => shared.note_error(&format!("relay: the stream keeps {have} copies; raising it to {replicas} failed: {e}")),
                }
                let _ = stream.info().await;
            }
            stream
        }
        Err(_) => match js.create_stream(config.clone()).await {
            Ok(stream) => stream,
            Err(e) if replicas > 1 && e.to_string().contains("insufficient resources") => {
                // A cluster too small for three copies (two servers, say);
                // anything else (a cluster still electing its leaders) is
                // tried again by the next session.
                shared.note_error(&format!(
                    "relay: the cluster refused a stream with {replicas} copies ({e}); keeping one"
                ));
                js.create_stream(jetstream::stream::Config { num_replicas: 1, ..config })
                    .await
                    .map_err(|e| relay_error("opening the stream", e))?
            }
            Err(e) => return Err(relay_error("opening the stream", e)),
        },
    };
    // The buckets keep as many copies as the stream could.
    let replicas = stream.cached_info().config.num_replicas.max(1);
    update(shared, |r| r.copies = replicas);
    let mut consumer = stream
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
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| relay_error("opening the presence bucket", e))?,
    };
    let first = stream.cached_info().state.first_sequence;
    let cursor = consumer.cached_info().delivered.stream_sequence;
    if first > 1 && cursor > 0 && cursor + 1 < first {
        (shared.log)(&format!(
            "relay: this clone's cursor ({cursor}) fell out of the stream's retention (it starts at {first}); older ops come through git: run `bd sync`"
        ));
        update(shared, |r| r.behind_retention = true);
    }
    let leases = mesh::lease::open(&js, &s.repo_id, replicas).await?;
    let (lease_tx, lease_jobs) = mpsc::unbounded_channel();
    if let Ok(mut l) = shared.leases.lock() {
        *l = Some(lease_tx);
    }
    let _desk = LeaseDesk(shared);
    // Leases are asked for on tasks of their own: a claim must not wait for
    // this loop, which may be applying a large batch from a peer or
    // publishing one (under a surge that held claims for most of a second).
    // What they granted or gave back comes to the loop for renewals.
    let (lease_events_tx, mut lease_events) = mpsc::unbounded_channel();
    let _leasing = Abort(tokio::spawn(serve_leases(
        leases.clone(),
        lease_jobs,
        lease_events_tx,
        shared.clone(),
        s.replica.clone(),
    )));
    let mut renewals = claims::Renewals::new(shared.clone());
    // Leases given back while the relay was away go back now.
    let owed: Vec<(String, String, GiveBack)> = shared
        .pending_releases
        .lock()
        .map(|mut p| std::mem::take(&mut *p))
        .unwrap_or_default();
    for (issue, holder, how) in owed {
        if let Err(e) = give_back(&leases, &issue, &holder, &s.replica, how).await {
            shared.note_error(&format!("relay: giving back the lease of {issue}: {}", e.message));
        }
    }
    // Claims granted while the relay could not be asked become leases now.
    shared.claims_unleased.store(false, std::sync::atomic::Ordering::SeqCst);
    if let Err(e) = claims::convert(s, paths, shared, &leases, &mut renewals).await {
        shared.note_error(&format!("relay: turning provisional claims into leases: {}", e.message));
    }
    let mut peers: HashMap<String, Heard> = HashMap::new();
    let mut prober = presence::Prober::default();
    let mut beat = tokio::time::interval(HEARTBEAT);
    // On a slow link a tick's relay calls can outlast the period: the next
    // tick waits a period after, instead of firing at once and starving the
    // stream's messages.
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    (shared.log)(&format!("relay: connected to {}", s.urls.join(",")));
    // A session counts as a success for the breaker once it has stayed up
    // this long: a relay that drops every few seconds keeps failing.
    let mut connected_at = std::time::Instant::now();
    let mut stable = false;
    update(shared, |r| {
        r.connected = true;
        r.last_error = None;
    });
    // What the relay lacks since the last acknowledged publish.
    let mut outlet = Outlet {
        js: js.clone(),
        max_payload: match client.server_info().max_payload {
            0 => 1 << 20,
            n => n,
        },
        rtt: Rtt::default(),
        published: 0,
        last_send: None,
    };
    outlet.backlog(s, paths, shared).await?;
    let mut window = Duration::ZERO;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| relay_error("reading the stream", e))?;
    loop {
        tokio::select! {
            ops = outbox.recv() => {
                let Some(ops) = ops else { return Ok(()) };
                let ops = outlet.gather(outbox, ops, window).await;
                let due = renewals.due(&ops);
                outlet.send(s, paths, shared, ops).await?;
                claims::renew(s, shared, &leases, &mut renewals, due).await;
            }
            msg = messages.next() => {
                let Some(msg) = msg else { return Err(relay_error("the stream", "ended")) };
                let msg = msg.map_err(|e| relay_error("reading the stream", e))?;
                let out = apply(s, paths, shared, &msg.payload).await?;
                let new_peer = out.acks.first().is_some_and(|a| a.kind >= 0 && !peers.contains_key(&a.to));
                send_acks(s, &client, out.acks).await;
                if new_peer {
                    // A peer's first batch: measure it now rather than at the
                    // next tick, so the batching window fits it from the start.
                    window = meet(s, shared, &presence, &client, &mut peers, &mut acks, &mut prober).await?;
                }
                msg.ack().await.map_err(|e| relay_error("acknowledging", e))?;
                if let Some((replica, from, to)) = out.missing {
                    fetch(s, paths, shared, &client, &stream, &replica, (from, to)).await?;
                }
            }
            _ = beat.tick() => {
                if !stable && connected_at.elapsed() >= STABLE {
                    stable = true;
                    let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
                    shared
                        .relay_breaker
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .success(now, &crate::breaker::Policy::RELAY);
                }
                moved(s, paths)?;
                // At once: on a slow link the tick costs the longer of the two.
                let (beat_sent, met) = futures_util::future::join(
                    heartbeat(s, shared, &presence, outlet.published),
                    meet(s, shared, &presence, &client, &mut peers, &mut acks, &mut prober),
                )
                .await;
                beat_sent?;
                window = met?;
                // Batches in transit whose gaps git filled meanwhile.
                let (tx, rx) = oneshot::channel();
                shared.send_job(Job::Release(tx))?;
                match rx.await {
                    Ok(Ok((out, waiting))) => {
                        if waiting == 0 {
                            update(shared, |r| r.behind_retention = false);
                        }
                        send_acks(s, &client, out.into_iter().map(released).collect()).await
                    }
                    Ok(Err(e)) => shared.note_error(&format!("relay: releasing batches in transit: {}", e.message)),
                    Err(_) => return Err(Error::internal("the daemon's writer went away")),
                }
                if shared.claims_unleased.swap(false, std::sync::atomic::Ordering::SeqCst)
                    && let Err(e) = claims::convert(s, paths, shared, &leases, &mut renewals).await
                {
                    shared.note_error(&format!("relay: turning provisional claims into leases: {}", e.message));
                }
                if positions(paths, shared, &mut consumer, &stream).await > 0 {
                    // Written without the daemon (or missed): publish it now.
                    outlet.backlog(s, paths, shared).await?;
                }
            }
            event = events.recv() => {
                // The client reconnects by itself; each drop is a failure
                // for the breaker, and a link that keeps dropping ends the
                // session so the breaker's schedule decides the next try.
                match event {
                    Some(async_nats::Event::Disconnected) => {
                        update(shared, |r| r.connected = false);
                        let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
                        let mut b = shared.relay_breaker.lock().unwrap_or_else(|p| p.into_inner());
                        b.failure(now, "the relay dropped the connection", &crate::breaker::Policy::RELAY);
                        shared.drop_counted.store(true, std::sync::atomic::Ordering::SeqCst);
                        if b.state == crate::breaker::State::Open {
                            return Err(relay_error("the relay keeps dropping the connection", "breaker open"));
                        }
                    }
                    Some(async_nats::Event::Connected) => {
                        shared.drop_counted.store(false, std::sync::atomic::Ordering::SeqCst);
                        update(shared, |r| r.connected = true);
                        connected_at = std::time::Instant::now();
                        stable = false;
                    }
                    _ => {}
                }
            }
            Some(event) = lease_events.recv() => match event {
                LeaseEvent::Granted(l) => renewals.granted(&l),
                LeaseEvent::Released(issue) => renewals.released(&issue),
            },
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
            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                if shared.is_stopping() {
                    // A goodbye: peers drop this daemon at once instead of
                    // suspecting it for half a minute.
                    let _ = tokio::time::timeout(Duration::from_secs(1), presence.delete(&s.replica)).await;
                    return Ok(());
                }
            }
        }
    }
}

/// What a lease job did, for the session's renewals.
enum LeaseEvent {
    Granted(mesh::lease::Lease),
    Released(String),
}

/// Serves the connections' lease jobs, each on a task of its own (the
/// relay's compare-and-set decides between two asking for one issue), until
/// the session ends (its tasks end with it).
async fn serve_leases(
    leases: jetstream::kv::Store,
    mut jobs: mpsc::UnboundedReceiver<LeaseJob>,
    events: mpsc::UnboundedSender<LeaseEvent>,
    shared: Arc<Shared>,
    replica: String,
) {
    let mut running = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            job = jobs.recv() => {
                let Some(job) = job else { return };
                let (leases, events, shared, replica) =
                    (leases.clone(), events.clone(), shared.clone(), replica.clone());
                running.spawn(async move {
                    lease_job(&leases, job, &events, &shared, &replica).await
                });
            }
            Some(_) = running.join_next(), if !running.is_empty() => {}
        }
    }
}

async fn lease_job(
    leases: &jetstream::kv::Store,
    job: LeaseJob,
    events: &mpsc::UnboundedSender<LeaseEvent>,
    shared: &Shared,
    replica: &str,
) {
    match job {
        LeaseJob::Acquire {
            issue,
            holder,
            ttl,
            reply,
        } => {
            let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
            let grant = mesh::lease::acquire(leases, &issue, &holder, replica, ttl, now).await;
            match &grant {
                Ok(mesh::lease::Grant::Granted(l)) => {
                    let _ = events.send(LeaseEvent::Granted(l.clone()));
                    update(shared, |r| r.claims.granted += 1);
                }
                Ok(mesh::lease::Grant::Held(_)) => update(shared, |r| r.claims.refused += 1),
                Err(_) => {}
            }
            let _ = reply.send(grant);
        }
        LeaseJob::Release {
            issue,
            holder,
            how,
            reply,
        } => {
            let _ = events.send(LeaseEvent::Released(issue.clone()));
            if let Err(e) = give_back(leases, &issue, &holder, replica, how).await {
                shared.note_error(&format!(
                    "relay: releasing the lease of {issue}: {}",
                    e.message
                ));
            }
            let _ = reply.send(());
        }
    }
}

/// Aborts a task when dropped (a session's helpers end with it).
struct Abort(tokio::task::JoinHandle<()>);

impl Drop for Abort {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads every peer's heartbeat, pings each, and shows them in the status
/// with their acks; the batching window their impedance asks for.
async fn meet(
    s: &Settings,
    shared: &Shared,
    presence: &jetstream::kv::Store,
    client: &async_nats::Client,
    peers: &mut HashMap<String, Heard>,
    acks: &mut HashMap<String, Acks>,
    prober: &mut presence::Prober,
) -> Result<Duration> {
    let mut seen = listen(s, presence, peers).await?;
    // Pings go on their own tasks: this tick shows what the last ones found.
    let replicas: Vec<String> = seen.iter().map(|p| p.replica.clone()).collect();
    prober.round(s, client, &replicas);
    let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
    for p in &mut seen {
        let (z, breaker) = prober.of(&p.replica);
        p.impedance = z;
        p.breaker = breaker.map(|b| crate::rpc::BreakerView::of("peer", &b, now));
        if let Some(a) = acks.get_mut(&p.replica) {
            p.acks = Some(a.summary());
        }
    }
    let window = self::window(&seen);
    update(shared, |r| {
        r.peers = seen;
        r.window_ms = window.as_secs_f64() * 1e3;
    });
    Ok(window)
}

/// Fails when the committed config no longer names this session's mesh id
/// or relay (a `bd sync` merged another clone's, or `bd mesh join` changed
/// it): the daemon then reconnects with the new settings.
fn moved(s: &Settings, paths: &BeadsPaths) -> Result<()> {
    let config = crate::config::Config::load(&paths.config())?;
    let repo_id = config.get(mesh::REPO_ID_KEY).unwrap_or_default();
    let urls = mesh::relay_urls(&config);
    if repo_id != s.repo_id || urls != s.urls {
        return Err(relay_error(
            "the mesh settings changed",
            format!("mesh id {repo_id}, relay {}; reconnecting", urls.join(",")),
        ));
    }
    Ok(())
}

/// Sends each acknowledgement to its batch's author (best effort: an ack is
/// telemetry, not part of the data).
async fn send_acks(s: &Settings, client: &async_nats::Client, acks: Vec<AckOut>) {
    for ack in acks {
        let body = serde_json::json!({
            "from": s.replica,
            "kind": ack.kind,
            "seq": ack.seq,
            "wall_ms": ack.wall_ms,
            "reason": ack.reason,
        });
        if let Ok(body) = serde_json::to_vec(&body) {
            let _ = client
                .publish(format!("bd.{}.ack.{}", s.repo_id, ack.to), body.into())
                .await;
        }
    }
}

/// Looks in the stream for the ops `(from, to)` of `replica` that a batch in
/// transit waits for (a redelivery may hold them back behind it) and applies
/// what it finds, which lets the batch through; bounded by [`FETCH_FOR`].
/// What the stream no longer holds comes through git.
async fn fetch(
    s: &Settings,
    paths: &BeadsPaths,
    shared: &Arc<Shared>,
    client: &async_nats::Client,
    stream: &jetstream::stream::Stream,
    replica: &str,
    (from, to): (u64, u64),
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + FETCH_FOR;
    let subject = s.subject(replica);
    let Ok(info) = stream.get_info().await else {
        return Ok(());
    };
    // One replica's batches are stored in publish order, so their op seqs
    // grow with the stream sequence: find the first that ends at `from` or
    // later.
    let (mut lo, mut hi) = (info.state.first_sequence.max(1), info.state.last_sequence + 1);
    while lo < hi && tokio::time::Instant::now() < deadline {
        let mid = lo + (hi - lo) / 2;
        match next_batch(stream, &subject, mid).await {
            Some((at, _, end, _)) if end < from => lo = at + 1,
            _ => hi = mid,
        }
    }
    let found = next_batch(stream, &subject, lo).await;
    if found.as_ref().is_none_or(|(_, first, _, _)| *first > from) {
        // Not in the stream: it no longer keeps them (or never had them).
        if info.state.first_sequence > 1 {
            behind_retention(shared, replica, (from, to));
        }
        return Ok(());
    }
    let mut at = lo;
    while tokio::time::Instant::now() < deadline {
        let Some((seq, first, _, payload)) = next_batch(stream, &subject, at).await else {
            break;
        };
        if first > to {
            break;
        }
        let out = apply(s, paths, shared, &payload).await?;
        send_acks(s, client, out.acks).await;
        at = seq + 1;
    }
    Ok(())
}

/// Says that ops a batch in transit waits for are older than what the stream
/// keeps: they come through git.
fn behind_retention(shared: &Shared, replica: &str, (from, to): (u64, u64)) {
    (shared.log)(&format!(
        "relay: ops {from}..{to} of {replica} fell out of the stream's retention; they come through git: run `bd sync`"
    ));
    update(shared, |r| r.behind_retention = true);
}

/// The first batch on `subject` at stream sequence `at` or later: its
/// sequence, its first and last op seq, and the message.
async fn next_batch(
    stream: &jetstream::stream::Stream,
    subject: &str,
    at: u64,
) -> Option<(u64, u64, u64, Vec<u8>)> {
    #[derive(Deserialize)]
    struct Seq {
        seq: u64,
    }
    let m = stream.get_first_raw_message_by_subject(subject, at).await.ok()?;
    let seqs = serde_json::from_slice::<Batch>(&m.payload)
        .ok()
        .and_then(|b| serde_json::from_str::<Vec<Seq>>(&b.ops).ok())
        .unwrap_or_default();
    let first = seqs.iter().map(|o| o.seq).min().unwrap_or(0);
    let last = seqs.iter().map(|o| o.seq).max().unwrap_or(0);
    Some((m.sequence, first, last, m.payload.to_vec()))
}

/// Refreshes where this daemon stands: the stream's end and its cursor, and
/// the outbox (own ops the relay has not acknowledged).
async fn positions(
    paths: &BeadsPaths,
    shared: &Shared,
    consumer: &mut jetstream::consumer::Consumer<jetstream::consumer::pull::Config>,
    stream: &jetstream::stream::Stream,
) -> u64 {
    // Both at once, and the outbox beside them: one round trip on a slow link.
    let (mine, theirs, outbox) = futures_util::future::join3(
        consumer.info(),
        stream.get_info(),
        refresh_outbox(paths, shared),
    )
    .await;
    if let Ok(info) = mine {
        let (delivered, pending) = (info.delivered.stream_sequence, info.num_pending);
        update(shared, |r| {
            r.delivered_seq = delivered;
            r.pending = pending;
        });
    }
    if let Ok(info) = theirs {
        update(shared, |r| r.stream_seq = info.state.last_sequence);
    }
    outbox
}

/// Refreshes the outbox in the status from the database (the watermark as
/// saved, this replica's last op): right also while the relay is away and
/// for writes made without the daemon. Its depth.
async fn refresh_outbox(paths: &BeadsPaths, shared: &Shared) -> u64 {
    let paths = paths.clone();
    let outbox = tokio::task::spawn_blocking(move || {
        let store = Store::open(&paths.db)?;
        let published: i64 = store
            .meta(PUBLISHED)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        crate::engine::outbox(&store, published).map(|o| (published, o))
    })
    .await;
    let Ok(Ok((published, (depth, oldest)))) = outbox else {
        return 0;
    };
    let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
    update(shared, |r| {
        r.published_seq = published;
        r.outbox = depth;
        r.oldest_unacked_ms = oldest.map(|wall| now.saturating_sub(wall));
    });
    depth
}

/// The most ops one batch carries.
const MAX_BATCH: usize = 256;

/// The longest a batch waits for more ops under load.
const MAX_WINDOW: Duration = Duration::from_millis(20);

/// The publishing half: the stream's context, the relay's round trips
/// (publish to ack: the relay's impedance, which sets the ack timeout), and
/// the watermark.
struct Outlet {
    js: jetstream::Context,
    /// The largest message the relay takes (its `max_payload`).
    max_payload: usize,
    rtt: Rtt,
    published: i64,
    last_send: Option<tokio::time::Instant>,
}

impl Outlet {
    /// Publishes the own ops past the watermark (after a restart or an outage).
    async fn backlog(&mut self, s: &Settings, paths: &BeadsPaths, shared: &Shared) -> Result<()> {
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
        self.published = from;
        update(shared, |r| r.published_seq = from);
        self.send(s, paths, shared, ops).await
    }

    /// Signs and publishes `ops` (own, in seq order; those the relay holds
    /// already are skipped) in batches of [`MAX_BATCH`], waiting for the
    /// relay's ack of each and moving the watermark after it.
    async fn send(&mut self, s: &Settings, paths: &BeadsPaths, shared: &Shared, ops: Vec<Op>) -> Result<()> {
        let ops: Vec<Op> = ops
            .into_iter()
            .filter(|o| o.seq as i64 > self.published)
            .collect();
        let limit = self.max_payload;
        let mut pending: std::collections::VecDeque<&[Op]> = ops.chunks(MAX_BATCH).collect();
        while let Some(chunk) = pending.pop_front() {
            let (Some(first), Some(last)) = (chunk.first(), chunk.last()) else {
                continue;
            };
            let batch = seal(s, chunk)?;
            if batch.len() > limit {
                if chunk.len() > 1 {
                    // Too big for one message: halves, in order.
                    let (head, tail) = chunk.split_at(chunk.len() / 2);
                    pending.push_front(tail);
                    pending.push_front(head);
                    continue;
                }
                // One op larger than the relay takes: it travels through git
                // only (receivers keep what follows in transit until it is
                // there). Counted, said, and passed over.
                (shared.log)(&format!(
                    "relay: op {} ({} bytes sealed) is larger than the relay's {limit}-byte messages; it travels through git only (`bd sync`)",
                    first.op_id,
                    batch.len()
                ));
                self.moved_past(paths, shared, last.seq as i64, false).await;
                update(shared, |r| r.too_large += 1);
                continue;
            }
            // RFC 6298's timeout: a relay that stopped answering is noticed
            // in a few round trips, not JetStream's default 5 s.
            self.js
                .set_timeout(self.rtt.rto(Duration::from_secs(1), Duration::from_secs(5)));
            let start = std::time::Instant::now();
            publish(s, &self.js, first.seq, last.seq, batch).await?;
            let (srtt, rttvar) = self.rtt.sample(start.elapsed().as_secs_f64() * 1e3);
            self.moved_past(paths, shared, last.seq as i64, true).await;
            update(shared, |r| {
                r.impedance = Some(crate::rpc::Impedance {
                    rtt_ms: srtt,
                    rttvar_ms: rttvar,
                    z_ms: srtt,
                    ..Default::default()
                });
            });
        }
        Ok(())
    }

    /// Moves the watermark to `last` (the relay holds everything up to it,
    /// or the rest goes through git) and saves it.
    async fn moved_past(&mut self, paths: &BeadsPaths, shared: &Shared, last: i64, sent: bool) {
        self.published = last;
        if sent {
            self.last_send = Some(tokio::time::Instant::now());
        }
        save_watermark(paths, last).await;
        update(shared, |r| {
            r.published_seq = last;
            r.batches_out += u64::from(sent);
        });
    }

    /// Under load (the last batch went out less than `window` ago), gathers
    /// the commits that arrive until `window` has passed since it, so that
    /// each peer applies one batch (one transaction, one fdatasync) for many
    /// commits; a lone commit goes at once.
    async fn gather(
        &self,
        outbox: &mut mpsc::UnboundedReceiver<Vec<Op>>,
        mut ops: Vec<Op>,
        window: Duration,
    ) -> Vec<Op> {
        if let Some(until) = self.last_send.map(|at| at + window) {
            while ops.len() < MAX_BATCH {
                match tokio::time::timeout_at(until, outbox.recv()).await {
                    Ok(Some(more)) => ops.extend(more),
                    _ => break,
                }
            }
        }
        while ops.len() < MAX_BATCH {
            match outbox.try_recv() {
                Ok(more) => ops.extend(more),
                Err(_) => break,
            }
        }
        ops
    }
}

/// The batching window the peers' impedance asks for: the largest Z among
/// the peers that seem alive (phi under [`crate::rpc::SUSPECT_PHI`]),
/// [`MAX_WINDOW`] at most. A peer
/// with a queue shows a larger Z, so the window grows under load, and batches
/// with it, until the slowest peer keeps up.
fn window(peers: &[crate::rpc::Peer]) -> Duration {
    let z = peers
        .iter()
        .filter(|p| p.phi < crate::rpc::SUSPECT_PHI)
        .filter(|p| p.breaker.as_ref().is_none_or(|b| b.state == crate::breaker::State::Closed))
        .filter_map(|p| p.impedance.as_ref().map(|z| z.z_ms))
        .fold(0.0, f64::max);
    Duration::from_secs_f64(z / 1e3).min(MAX_WINDOW)
}

/// `ops` (own, in seq order) as a signed batch message.
fn seal(s: &Settings, ops: &[Op]) -> Result<Vec<u8>> {
    let text = serde_json::to_string(ops)?;
    let sig = crate::model::hex_bytes(&s.key.sign(text.as_bytes()).to_bytes());
    Ok(serde_json::to_vec(&Batch {
        replica: s.replica.clone(),
        ops: text,
        sig,
    })?)
}

/// Publishes a sealed batch of ops `first..=last` and waits for the relay's
/// ack.
async fn publish(s: &Settings, js: &jetstream::Context, first: u64, last: u64, batch: Vec<u8>) -> Result<()> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "Nats-Msg-Id",
        format!("{}-{first}-{last}", s.replica).as_str(),
    );
    js.publish_with_headers(s.subject(&s.replica), headers, batch.into())
        .await
        .map_err(|e| relay_error("publishing", e))?
        .await
        .map_err(|e| relay_error("publishing (no ack)", e))?;
    Ok(())
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

/// What applying one delivered batch came to.
#[derive(Default)]
struct Applied {
    /// The acknowledgements owed: the batch's own, and +1 for each batch it
    /// let out of transit.
    acks: Vec<AckOut>,
    /// The batch waits in transit for these seqs of this replica.
    missing: Option<(String, u64, u64)>,
}

/// Verifies a batch from another replica and has the writer apply it (or
/// keep it in transit until its replica's earlier ops are here).
async fn apply(
    s: &Settings,
    paths: &BeadsPaths,
    shared: &Arc<Shared>,
    payload: &[u8],
) -> Result<Applied> {
    let batch: Batch = match serde_json::from_slice(payload) {
        Ok(b) => b,
        Err(e) => {
            // Anyone who can publish to the relay can send junk: counted and
            // logged, never kept (it would fill every clone's conflicts).
            dropped(shared, &format!("an unreadable message was dropped: {e}"));
            return Ok(Applied::default());
        }
    };
    if batch.replica == s.replica {
        return Ok(Applied::default()); // our own, back from the stream
    }
    let members = mesh::members(paths)?;
    if !members.iter().any(|m| m.replica == batch.replica) {
        // Not kept either: a clone that joined before its members line
        // reached this one sends these; its ops arrive through git, and
        // its later batches wait in transit until they have.
        let what = format!(
            "a batch from {} was dropped: its replica is not in the members file (yet: `bd sync` brings new members)",
            batch.replica
        );
        dropped(shared, &what);
        return Ok(refusal(&batch, what));
    }
    if let Err(why) = verify(&batch, &members) {
        let what = format!("a batch from {} was refused: {why}", batch.replica);
        refused(shared, payload, &what);
        return Ok(refusal(&batch, what));
    }
    let ops: Vec<Op> = match serde_json::from_str(&batch.ops) {
        Ok(ops) => ops,
        Err(e) => {
            let what = format!("unreadable ops from {} were refused: {e}", batch.replica);
            refused(shared, payload, &what);
            return Ok(refusal(&batch, what));
        }
    };
    let (seq, wall_ms) = ops
        .iter()
        .map(|o| (o.seq as i64, o.hlc.wall))
        .max()
        .unwrap_or_default();
    let (tx, rx) = oneshot::channel();
    let started = std::time::Instant::now();
    shared.send_job(Job::Receive(batch.replica.clone(), ops, tx))?;
    let answer = rx.await;
    shared.applied_in(started.elapsed());
    match answer {
        Ok(Ok(d)) => {
            update(shared, |r| r.batches_in += 1);
            let (kind, reason) = match (d.missing, d.skewed, d.late) {
                (Some((from, to)), _, _) => (
                    0,
                    Some(format!("waiting for its ops {from}..{to} (kept in transit)")),
                ),
                (None, _, n @ 1..) => (
                    -1,
                    Some(format!(
                        "CONFLICT: {n} op(s) written under a lapsed lease (kept out, listed as claim conflicts)"
                    )),
                ),
                (None, 0, 0) => (1, None),
                (None, n, _) => (0, Some(format!("{n} op(s) held for clock skew"))),
            };
            let mut out = Applied {
                acks: vec![AckOut {
                    to: batch.replica.clone(),
                    kind,
                    seq,
                    wall_ms,
                    reason,
                }],
                missing: d.missing.map(|(from, to)| (batch.replica.clone(), from, to)),
            };
            out.acks.extend(d.released.into_iter().map(released));
            Ok(out)
        }
        Ok(Err(e)) if e.kind == crate::ErrorKind::Corrupt => {
            let what = format!("a batch from {} was refused: {}", batch.replica, e.message);
            refused(shared, payload, &what);
            Ok(refusal(&batch, what))
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::internal("the daemon's writer dropped a relay batch")),
    }
}

/// The +1 READY owed for a batch let out of transit.
fn released(r: crate::engine::Released) -> AckOut {
    AckOut {
        to: r.replica,
        kind: 1,
        seq: r.last_seq as i64,
        wall_ms: r.wall_ms,
        reason: None,
    }
}

/// The -1 CONFLICT acknowledgement of a refused batch, to the replica it
/// claims to come from.
fn refusal(batch: &Batch, reason: String) -> Applied {
    Applied {
        acks: vec![AckOut {
            to: batch.replica.clone(),
            kind: -1,
            seq: 0,
            wall_ms: 0,
            reason: Some(reason),
        }],
        missing: None,
    }
}

/// Counts a message that is not kept; logs the first ten and then every
/// hundredth (a flood must not fill the log either).
fn dropped(shared: &Shared, what: &str) {
    let mut n = 0;
    update(shared, |r| {
        r.refused += 1;
        n = r.refused;
    });
    if n <= 10 || n.is_multiple_of(100) {
        shared.note_error(&format!("relay: {what} ({n} refused so far)"));
    }
}

/// Reports a refused batch from a listed member (log, status), counts it,
/// and has the writer keep it in quarantine (listed by `bd conflicts` under
/// its first op's issue): evidence of tampering on the way.
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
