//! One task per client connection: length-prefixed frames, the hello, then each
//! request routed after the catch-up gate: a write to the writer's queue, a read
//! to a pooled read connection (a small one runs on the task itself).

use super::server::Shared;
use super::relay::{GiveBack, LeaseJob};
use super::writer::Job;
use crate::mesh::lease::{Grant, Lease};
use crate::api::{LeaseInfo, Request, Response};
use crate::clock::SystemClock;
use crate::engine::{self, Answer, Item};
use crate::rpc::{
    self, Call, Envelope, Hello, HelloReply, IssueRows, Outcome, PROTOCOL, Reply,
};
use crate::service::Context;
use crate::storage::Store;
use crate::{Error, ErrorKind, Result, progress};
use interprocess::local_socket::tokio::Stream;
use serde::{Serialize, de::DeserializeOwned};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

/// A client must say hello within this long, or it is disconnected.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Read connections kept open between requests.
const READER_POOL: usize = 8;

struct ConnectionGuard(Arc<Shared>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.counters.connections.fetch_sub(1, Ordering::SeqCst);
        self.0.touch();
    }
}

async fn read_frame<T: DeserializeOwned>(mut conn: &Stream) -> Result<Option<T>> {
    let mut len = [0u8; 4];
    let n = conn.read(&mut len).await?;
    if n == 0 {
        return Ok(None);
    }
    if n < 4 {
        conn.read_exact(&mut len[n..]).await?;
    }
    let len = rpc::check_len(u32::from_be_bytes(len))?;
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).await?;
    rpc::decode(&body).map(Some)
}

async fn write_frame<T: Serialize>(mut conn: &Stream, msg: &T) -> Result<()> {
    conn.write_all(&rpc::encode(msg)?).await?;
    conn.flush().await?;
    Ok(())
}

pub(super) async fn connection(conn: Stream, shared: Arc<Shared>) {
    shared.counters.connections.fetch_add(1, Ordering::SeqCst);
    let _guard = ConnectionGuard(shared.clone());
    let hello: Hello = match tokio::time::timeout(HELLO_TIMEOUT, read_frame(&conn)).await {
        Ok(Ok(Some(h))) => h,
        _ => return, // silent, garbage or too slow: this client only
    };
    let ok = hello.protocol == PROTOCOL;
    let reply = HelloReply {
        protocol: PROTOCOL,
        version: shared.opts.version.clone(),
        pid: std::process::id(),
        ok,
        message: (!ok).then(|| {
            format!(
                "daemon speaks protocol {PROTOCOL}, client {}",
                hello.protocol
            )
        }),
    };
    if write_frame(&conn, &reply).await.is_err() || !ok {
        return;
    }
    loop {
        let env: Envelope = match read_frame(&conn).await {
            Ok(Some(env)) => env,
            Ok(None) => return,
            Err(e) => {
                let _ = write_frame(
                    &conn,
                    &Reply {
                        id: 0,
                        result: Outcome::Err(e),
                    },
                )
                .await;
                return;
            }
        };
        shared.touch();
        let result = match env.call {
            Call::Status => Outcome::Status(Box::new(shared.status())),
            Call::Stop => {
                shared.begin_shutdown();
                Outcome::Stopping
            }
            Call::Request(req) => {
                shared.counters.requests.fetch_add(1, Ordering::SeqCst);
                shared.saw_agent(&env.actor);
                let item = Item {
                    actor: env.actor,
                    request: *req,
                    deadline_ms: Some(env.deadline_ms),
                    request_id: env.request_id,
                    fences: Vec::new(),
                };
                let answer = if env.progress {
                    match with_progress(&conn, env.id, |sink| request(&shared, item, sink)).await {
                        Some(answer) => answer,
                        None => return, // the client went away
                    }
                } else {
                    request(&shared, item, None).await
                };
                match answer {
                    Ok(Answer::Response(r)) => Outcome::Ok(r),
                    Ok(Answer::Rows(rows)) => Outcome::Rows(IssueRows(rows)),
                    Err(e) => Outcome::Err(e),
                }
            }
        };
        if write_frame(&conn, &Reply { id: env.id, result })
            .await
            .is_err()
        {
            return;
        }
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
    }
}

/// Runs `work` with a progress listener whose updates go to the client as
/// [`Outcome::Progress`] replies, the latest one at a time (a slow client
/// skips updates, never delays the work). `None` when the client went away.
async fn with_progress<F, Fut>(conn: &Stream, id: u64, work: F) -> Option<Result<Answer>>
where
    F: FnOnce(Option<progress::Sink>) -> Fut,
    Fut: std::future::Future<Output = Result<Answer>>,
{
    let (tx, mut updates) = tokio::sync::watch::channel::<Option<progress::Update>>(None);
    let sink: progress::Sink = Arc::new(move |u: &progress::Update| {
        let _ = tx.send(Some(u.clone()));
    });
    let work = work(Some(sink));
    tokio::pin!(work);
    let mut listening = true;
    loop {
        tokio::select! {
            answer = &mut work => return Some(answer),
            changed = updates.changed(), if listening => {
                if changed.is_err() {
                    listening = false; // the work dropped its listener
                    continue;
                }
                let update = updates.borrow_and_update().clone();
                if let Some(update) = update {
                    let reply = Reply { id, result: Outcome::Progress(update) };
                    if write_frame(conn, &reply).await.is_err() {
                        return None;
                    }
                }
            }
        }
    }
}

async fn request(
    shared: &Arc<Shared>,
    item: Item,
    progress: Option<progress::Sink>,
) -> Result<Answer> {
    if shared.stopping.load(Ordering::SeqCst) {
        // Not accepted, so certainly not applied: the client resends it
        // (through the next daemon, or in-process).
        return Err(
            Error::new(ErrorKind::Unavailable, "the daemon is shutting down")
                .hint("run the command again"),
        );
    }
    catch_up(shared, progress.clone()).await?;
    if item.request.is_write() {
        // Across the mesh a claim holds only with the relay's lease: taken
        // before the write, given back if the write does not happen.
        let mut item = item;
        let claims = leases_for(shared, &item).await?;
        item.fences = claims
            .granted
            .iter()
            .map(|(issue, l)| (issue.clone(), l.fence()))
            .collect();
        let actor = item.actor.clone();
        let released = released_by(&item.request);
        let out = write_with(shared, item, progress).await;
        if out.is_ok() {
            note_provisional(shared, &claims);
        }
        let give_back: Vec<(String, GiveBack)> = match &out {
            Ok(_) if !released.is_empty() && shared.relay_configured() => released
                .into_iter()
                .filter_map(|(i, how)| Some((full_ids(shared, vec![(i, None)]).ok()?.pop()?.0, how)))
                .collect(),
            Ok(_) => Vec::new(),
            Err(_) => claims.granted.iter().map(|(i, _)| (i.clone(), GiveBack::Released)).collect(),
        };
        for (issue, how) in give_back {
            release(shared, issue, &actor, how).await;
        }
        return out.map(|answer| claims.annotate(answer));
    }
    if is_light(&item.request) {
        // A bounded read (a few issues, a short page) takes tens of µs: running it
        // here costs less than handing it to another thread and back.
        return read(shared, item);
    }
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || progress::scoped(progress, || read(&shared, item)))
        .await
        .unwrap_or_else(|_| Err(Error::internal("a read task panicked")))
}

/// What a write's claims came to across the mesh.
#[derive(Default)]
struct Claims {
    /// The relay leases granted (or renewed), by issue.
    granted: Vec<(String, Lease)>,
    /// Issues claimed without a lease, and why: the relay could not be asked.
    provisional: Vec<(String, String)>,
}

impl Claims {
    /// Puts each claimed issue's lease on the answer.
    fn annotate(&self, answer: Answer) -> Answer {
        match answer {
            Answer::Response(r) => Answer::Response(self.annotate_response(r)),
            other => other,
        }
    }

    fn annotate_response(&self, r: Response) -> Response {
        match r {
            Response::Changed(mut changed) => {
                for c in &mut changed {
                    c.lease = self.lease_of(&c.issue.id);
                }
                Response::Changed(changed)
            }
            Response::Batch(rs) => {
                Response::Batch(rs.into_iter().map(|r| self.annotate_response(r)).collect())
            }
            other => other,
        }
    }

    fn lease_of(&self, issue: &str) -> Option<LeaseInfo> {
        if let Some((_, l)) = self.granted.iter().find(|(i, _)| i == issue) {
            return Some(LeaseInfo {
                token: Some(l.fence()),
                expires_at: Some(crate::clock::format_rfc3339(l.expires_ms())),
                provisional: false,
                reason: None,
            });
        }
        self.provisional
            .iter()
            .find(|(i, _)| i == issue)
            .map(|(_, why)| LeaseInfo {
                token: None,
                expires_at: None,
                provisional: true,
                reason: Some(why.clone()),
            })
    }
}

/// The lease channel of the relay session, when one is connected.
fn lease_desk(shared: &Shared) -> Option<tokio::sync::mpsc::UnboundedSender<LeaseJob>> {
    shared.leases.lock().ok().and_then(|l| l.clone())
}

/// Takes the relay's lease of every issue a claim names, for as long as the
/// claim asks (none without a relay configured: the claim is then this
/// clone's, as in a clone that never joined a mesh). Someone else's live
/// lease refuses the claim, with nothing changed. When the relay cannot be
/// asked (not connected, failing, slow) the claim is provisional.
async fn leases_for(shared: &Shared, item: &Item) -> Result<Claims> {
    let claimed = claimed_by(&item.request);
    let mut claims = Claims::default();
    if claimed.is_empty() || !shared.relay_configured() {
        return Ok(claims);
    }
    // A lease is keyed by the issue's full id, however the caller shortened it.
    let claimed = open_here(shared, full_ids(shared, claimed)?, &item.request)?;
    let provisional = |claims: &mut Claims, id: &str, why: &str| {
        claims.provisional.push((id.to_string(), why.to_string()));
    };
    let Some(desk) = lease_desk(shared) else {
        for (id, _) in &claimed {
            provisional(&mut claims, id, "the relay is unreachable");
        }
        return Ok(claims);
    };
    // One budget for all of a write's leases, however many it claims.
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    // A claim without --ttl lasts the tracker's claim.ttl if it sets one
    // (the local claim does too), else the default lease.
    let default_ttl = crate::config::Config::load_cached(&shared.opts.paths.config())
        .ok()
        .and_then(|c| c.get("claim.ttl").and_then(|v| crate::config::claim_ttl_ms(v).ok()))
        .unwrap_or(crate::api::CLAIM_TTL_DEFAULT_MS);
    for (id, ttl) in &claimed {
        // A relay error (a cluster electing a new leader after losing a
        // server, say) is asked again while the budget lasts.
        let mut pause = Duration::from_millis(200);
        let grant = loop {
            let (reply, answer) = oneshot::channel();
            let asked = desk.send(LeaseJob::Acquire {
                issue: id.clone(),
                holder: item.actor.clone(),
                ttl: Duration::from_millis(ttl.unwrap_or(default_ttl)),
                reply,
            });
            if asked.is_err() {
                break None;
            }
            let grant = tokio::time::timeout_at(until, answer).await;
            let retry = matches!(grant, Ok(Ok(Err(_))))
                && tokio::time::Instant::now() + pause < until;
            if !retry {
                break Some(grant);
            }
            tokio::time::sleep(pause).await;
            pause *= 2;
        };
        let Some(grant) = grant else {
            provisional(&mut claims, id, "the relay link just went down");
            continue;
        };
        match grant {
            Ok(Ok(Ok(Grant::Granted(l)))) => claims.granted.push((id.clone(), l)),
            Ok(Ok(Ok(Grant::Held(l)))) => {
                for (g, _) in claims.granted {
                    release(shared, g, &item.actor, GiveBack::Released).await;
                }
                let where_ = if l.replica == shared.replica {
                    "on this clone".to_string()
                } else {
                    format!("on another clone ({})", l.replica)
                };
                let what = if l.closed {
                    format!(
                        "{id} was closed by {} {where_}; the close has not reached this clone yet",
                        l.holder
                    )
                } else {
                    format!(
                        "{id} is already claimed by {} {where_} (lease {}, until {})",
                        l.holder,
                        l.fence(),
                        crate::clock::format_rfc3339(l.expires_ms())
                    )
                };
                let message = match batch_op_claiming(&item.request, id) {
                    Some(n) => format!(
                        "batch operation #{n} (update) failed: {what}; nothing in the batch was applied"
                    ),
                    None => what,
                };
                return Err(Error::new(ErrorKind::Conflict, message)
                    .hint("pick another issue from `bd ready`"));
            }
            Ok(Ok(Err(e))) => provisional(&mut claims, id, &format!("the relay failed: {}", e.message)),
            Ok(Err(_)) => provisional(&mut claims, id, "the relay link just went down"),
            Err(_) => provisional(&mut claims, id, "the relay did not answer within 5 s"),
        }
    }
    Ok(claims)
}

/// Counts a write's provisional claims, and has the relay session look for
/// them to turn into leases.
fn note_provisional(shared: &Shared, claims: &Claims) {
    if claims.provisional.is_empty() {
        return;
    }
    shared.claims_unleased.store(true, Ordering::SeqCst);
    let n = claims.provisional.len() as u64;
    if let Ok(mut r) = shared.relay.lock()
        && let Some(r) = r.as_mut()
    {
        r.claims.provisional += n;
    }
}

/// The full ids of the issues `claimed` names (by a unique prefix, say).
fn full_ids(shared: &Shared, claimed: Vec<(String, Option<u64>)>) -> Result<Vec<(String, Option<u64>)>> {
    with_reader(shared, |conn| {
        claimed
            .into_iter()
            .map(|(id, ttl)| Ok((crate::query::resolve_id(conn, &id)?, ttl)))
            .collect()
    })
}

/// Leaves out the issues closed on this clone that `req` does not reopen:
/// the write refuses to claim them, and asking for their leases would only
/// take the mark of their close off the relay (it is given back after the
/// refusal).
fn open_here(shared: &Shared, claimed: Vec<(String, Option<u64>)>, req: &Request) -> Result<Vec<(String, Option<u64>)>> {
    with_reader(shared, |conn| {
        let mut out = Vec::with_capacity(claimed.len());
        for (id, ttl) in claimed {
            let status: Option<String> = rusqlite::OptionalExtension::optional(conn.query_row(
                "SELECT status FROM issues WHERE id = ?1",
                [&id],
                |r| r.get(0),
            ))?;
            if status.as_deref() != Some("closed") || reopens(req, &id) {
                out.push((id, ttl));
            }
        }
        Ok(out)
    })
}

/// Whether `req` reopens `id` (named in full or by a prefix of it).
fn reopens(req: &Request, id: &str) -> bool {
    match req {
        Request::Reopen { ids } => ids.iter().any(|i| id.starts_with(i.as_str())),
        Request::Batch { requests } => requests.iter().any(|r| reopens(r, id)),
        _ => false,
    }
}

/// Runs `f` on a pooled read connection.
fn with_reader<T>(shared: &Shared, f: impl FnOnce(&rusqlite::Connection) -> Result<T>) -> Result<T> {
    let pooled = shared.readers.lock().ok().and_then(|mut p| p.pop());
    let store = match pooled {
        Some(s) => s,
        None => Store::open(&shared.opts.paths.db)?,
    };
    let out = f(store.conn());
    if let Ok(mut pool) = shared.readers.lock()
        && pool.len() < READER_POOL
    {
        pool.push(store);
    }
    out
}

/// The existing issues a write claims, with the lease time each asks for, a
/// batch's included (an issue the batch itself creates, `$N`, is new: no
/// other clone can claim it yet).
fn claimed_by(req: &Request) -> Vec<(String, Option<u64>)> {
    match req {
        Request::Update(u) if u.claim => {
            let mut ids: Vec<(String, Option<u64>)> = Vec::new();
            for i in u.ids.iter().filter(|i| !i.starts_with('$')) {
                if !ids.iter().any(|(j, _)| j == i) {
                    ids.push((i.clone(), u.claim_ttl_ms));
                }
            }
            ids
        }
        Request::Batch { requests } => requests.iter().flat_map(claimed_by).collect(),
        _ => Vec::new(),
    }
}

/// Which operation of a batch claims `issue` (1-based), for its refusal.
fn batch_op_claiming(req: &Request, issue: &str) -> Option<usize> {
    let Request::Batch { requests } = req else {
        return None;
    };
    requests
        .iter()
        .position(|r| matches!(r, Request::Update(u) if u.claim && u.ids.iter().any(|i| issue.starts_with(i.as_str()))))
        .map(|n| n + 1)
}

/// The issues whose leases a successful write gives back, and how: closed
/// ones leave the mark of their close in place of the lease; ones given up
/// (unassigned, or set to a status other than in progress) are released;
/// reopened ones lose the mark of their close.
fn released_by(req: &Request) -> Vec<(String, GiveBack)> {
    let each = |ids: &[String], how: GiveBack| ids.iter().map(|i| (i.clone(), how)).collect();
    match req {
        Request::Close { ids, .. } => each(ids, GiveBack::Closed),
        Request::Reopen { ids } => each(ids, GiveBack::Reopened),
        Request::Update(u)
            if u.unclaim
                || !u.claim
                && (u.assignee.as_deref() == Some("")
                    || u.status.as_deref().is_some_and(|s| s != "in_progress")) =>
        {
            let how = match u.status.as_deref() {
                Some("closed") => GiveBack::Closed,
                _ => GiveBack::Released,
            };
            each(&u.ids, how)
        }
        Request::Batch { requests } => requests.iter().flat_map(released_by).collect(),
        _ => Vec::new(),
    }
}

/// Gives back a lease (as `how` says) before the write is answered, so
/// that another clone that sees the issue free can take it, or one that
/// has not seen its close yet cannot (best effort, 2 s at most: an
/// unreleased lease expires).
async fn release(shared: &Shared, issue: String, holder: &str, how: GiveBack) {
    if !shared.relay_configured() {
        return;
    }
    let Some(desk) = lease_desk(shared) else {
        // The relay is away: given back when the session is next connected
        // (before then it may expire by itself).
        if let Ok(mut p) = shared.pending_releases.lock() {
            p.push((issue, holder.to_string(), how));
        }
        return;
    };
    let (reply, done) = oneshot::channel();
    let asked = desk.send(LeaseJob::Release {
        issue: issue.clone(),
        holder: holder.to_string(),
        how,
        reply,
    });
    let done = match asked {
        Ok(()) => tokio::time::timeout(Duration::from_secs(2), done).await.is_ok_and(|r| r.is_ok()),
        Err(_) => false,
    };
    if !done && let Ok(mut p) = shared.pending_releases.lock() {
        p.push((issue, holder.to_string(), how));
    }
}

/// Hands a write to the writer and waits for its answer.
pub(super) async fn write(shared: &Arc<Shared>, item: Item) -> Result<Answer> {
    write_with(shared, item, None).await
}

/// [`write`], with a listener for the progress of the group it commits in.
async fn write_with(
    shared: &Arc<Shared>,
    item: Item,
    progress: Option<progress::Sink>,
) -> Result<Answer> {
    let (tx, rx) = oneshot::channel();
    shared.counters.queue.fetch_add(1, Ordering::SeqCst);
    let sent = shared
        .jobs
        .lock()
        .map_err(|_| Error::internal("writer queue poisoned"))?
        .send(Job::Write {
            item: Box::new(item),
            reply: tx,
            progress,
        });
    if sent.is_err() {
        shared.counters.queue.fetch_sub(1, Ordering::SeqCst);
        return Err(Error::internal("the daemon's writer has stopped"));
    }
    rx.await
        .unwrap_or_else(|_| Err(Error::internal("the daemon's writer dropped the request")))
        .map(Answer::Response)
}

/// Before serving anything, make sure ops that git delivered since the last look
/// are applied: the engine's gate looks at the op files here, and the writer is
/// asked to catch up only when they changed.
async fn catch_up(shared: &Arc<Shared>, progress: Option<progress::Sink>) -> Result<()> {
    let Some(sig) = shared.gate.due(&shared.opts.paths, &shared.replica)? else {
        return Ok(());
    };
    let (tx, rx) = oneshot::channel();
    let sent = shared
        .jobs
        .lock()
        .map_err(|_| Error::internal("writer queue poisoned"))?
        .send(Job::CatchUp(tx, progress));
    if sent.is_err() {
        return Err(Error::internal("the daemon's writer has stopped"));
    }
    rx.await
        .unwrap_or_else(|_| Err(Error::internal("the daemon's writer dropped the request")))?;
    shared.gate.done(sig);
    Ok(())
}

/// Reads small and bounded enough to run on the connection task itself.
fn is_light(req: &Request) -> bool {
    match req {
        Request::Show { ids } => ids.len() <= 16,
        Request::Ready(f) | Request::List(f) => f.limit.is_some_and(|n| (1..=100).contains(&n)),
        _ => false,
    }
}

/// Runs a read on a pooled read connection.
fn read(shared: &Shared, item: Item) -> Result<Answer> {
    let pooled = shared.readers.lock().ok().and_then(|mut p| p.pop());
    let mut store = match pooled {
        Some(s) => s,
        None => Store::open(&shared.opts.paths.db)?,
    };
    let ctx = Context {
        actor: &item.actor,
        clock: &SystemClock,
        paths: &shared.opts.paths,
        mode: "daemon",
        request_id: None,
        deadline_ms: item.deadline_ms,
        fences: &[],
    };
    let out = engine::read_for_wire(&mut store, &ctx, item.request);
    if let Ok(mut pool) = shared.readers.lock()
        && pool.len() < READER_POOL
    {
        pool.push(store);
    }
    out
}
