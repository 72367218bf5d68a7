//! Claims across the mesh on the relay session's side: renewing the leases
//! of issues their holders write to, and turning provisional claims (granted
//! while the relay could not be asked) into leases once it answers again.
//!
//! - **Renewal by working**: every op a holder writes under a lease carries
//!   its token (see `merge`'s fencing), and its publication renews the lease
//!   when the last renewal is [`RENEW_EVERY`] old: an agent that keeps
//!   writing to its issue keeps it, one that stops loses it after its TTL.
//!   Ops written beside the daemon (`--no-daemon`) renew it too, when the
//!   daemon publishes them.
//! - **Provisional claims** are found in the database, not remembered: an
//!   issue in progress whose only assignee write was made on this clone
//!   without a token. Each is asked for its lease; granted, the claim is
//!   recorded again under the token (a claim op that supersedes only this
//!   clone's own write); held by another clone, it is left as it is, and the
//!   other clone's claim, when it arrives, makes the two an assignee conflict.

use super::{Settings, update};
use crate::api::{Request, UpdateRequest};
use crate::daemon::server::Shared;
use crate::storage::BeadsPaths;
use crate::engine::Item;
use crate::mesh::lease::{self, Grant};
use crate::model::Op;
use crate::{Error, Result};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A holder's writes renew its lease at most this often (and at least
/// three times per TTL).
pub(super) const RENEW_EVERY: Duration = Duration::from_secs(60);

/// When each lease this session holds was last granted or renewed, and its
/// TTL; the leases themselves go into the daemon's shared state, for
/// `bd mesh query leases`.
pub(super) struct Renewals {
    last: HashMap<String, (Instant, Duration)>,
    shared: Arc<Shared>,
}

impl Renewals {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        if let Ok(mut held) = shared.held.lock() {
            held.clear(); // a new session: what it holds, it learns again
        }
        Renewals {
            last: HashMap::new(),
            shared,
        }
    }

    pub(super) fn granted(&mut self, l: &lease::Lease) {
        let ttl = Duration::from_millis(l.ttl_ms);
        self.last.insert(l.issue.clone(), (Instant::now(), ttl));
        if let Ok(mut held) = self.shared.held.lock() {
            held.insert(
                l.issue.clone(),
                crate::mesh::query::HeldLease {
                    issue: l.issue.clone(),
                    holder: l.holder.clone(),
                    token: l.fence(),
                    expires_at: crate::clock::format_rfc3339(l.expires_ms()),
                },
            );
        }
    }

    pub(super) fn released(&mut self, issue: &str) {
        self.last.remove(issue);
        if let Ok(mut held) = self.shared.held.lock() {
            held.remove(issue);
        }
    }

    /// The (issue, holder) pairs among `ops` whose leases are due a renewal
    /// (a lease this session did not grant, after a restart say, is due at
    /// once: its TTL is learnt then).
    pub(super) fn due(&mut self, ops: &[Op]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for op in ops.iter().filter(|o| o.fence.is_some()) {
            let stale = self
                .last
                .get(&op.issue)
                .is_none_or(|(t, ttl)| t.elapsed() >= RENEW_EVERY.min(*ttl / 3));
            if stale && !out.iter().any(|(i, _)| i == &op.issue) {
                out.push((op.issue.clone(), op.actor.clone()));
            }
        }
        out
    }
}

/// Renews the leases `due` names.
pub(super) async fn renew(
    s: &Settings,
    shared: &Shared,
    leases: &async_nats::jetstream::kv::Store,
    renewals: &mut Renewals,
    due: Vec<(String, String)>,
) {
    for (issue, holder) in due {
        match lease::renew(leases, &issue, &holder, &s.replica).await {
            Ok(Some(Grant::Granted(l))) => {
                renewals.granted(&l);
                update(shared, |r| r.claims.renewed += 1)
            }
            Ok(Some(Grant::Held(l))) => {
                renewals.released(&issue);
                update(shared, |r| r.claims.lapsed += 1);
                (shared.log)(&format!(
                    "relay: {holder}'s lease of {issue} lapsed while they still write to it; {} holds it now (lease {}): those writes are late, and become a claim conflict",
                    l.holder,
                    l.fence()
                ));
            }
            Ok(None) => renewals.released(&issue), // given back meanwhile
            Err(e) => shared.note_error(&format!(
                "relay: renewing the lease of {issue}: {}",
                e.message
            )),
        }
    }
}

/// This clone's provisional claims, (issue, holder): issues in progress
/// whose only assignee write was made here without a lease token.
fn provisional(paths: &BeadsPaths, replica: &str) -> Result<Vec<(String, String)>> {
    let store = crate::storage::Store::open(&paths.db)?;
    let conn = store.conn();
    let mut stmt = conn.prepare(
        "SELECT id, assignee FROM issues
         WHERE status = 'in_progress' AND assignee IS NOT NULL AND assignee <> ''",
    )?;
    let rows: Vec<(String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = Vec::new();
    for (id, assignee) in rows {
        let doc = crate::storage::sqlite::load_doc(conn, &id)?;
        if let [(_, from, false)] = doc.field_writers("assignee").as_slice()
            && *from == replica
        {
            out.push((id, assignee));
        }
    }
    Ok(out)
}

/// Asks for the lease of each of this clone's provisional claims, and
/// records those granted as claims under their tokens.
pub(super) async fn convert(
    s: &Settings,
    paths: &BeadsPaths,
    shared: &Arc<Shared>,
    leases: &async_nats::jetstream::kv::Store,
    renewals: &mut Renewals,
) -> Result<()> {
    let (paths_, replica) = (paths.clone(), s.replica.clone());
    let found = tokio::task::spawn_blocking(move || provisional(&paths_, &replica))
        .await
        .map_err(|_| Error::internal("looking for provisional claims panicked"))??;
    for (issue, holder) in found {
        let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
        let ttl = Duration::from_millis(crate::api::CLAIM_TTL_DEFAULT_MS);
        match lease::acquire(leases, &issue, &holder, &s.replica, ttl, now).await? {
            Grant::Granted(l) => {
                let item = Item {
                    actor: holder.clone(),
                    request: Request::Update(UpdateRequest {
                        ids: vec![issue.clone()],
                        claim: true,
                        ..Default::default()
                    }),
                    deadline_ms: None,
                    request_id: None,
                    fences: vec![(issue.clone(), l.fence())],
                };
                match crate::daemon::connection::write(shared, item).await {
                    Ok(_) => {
                        renewals.granted(&l);
                        update(shared, |r| r.claims.converted += 1);
                        (shared.log)(&format!(
                            "relay: {holder}'s provisional claim of {issue} is lease {} now",
                            l.fence()
                        ));
                    }
                    Err(e) => {
                        let _ = lease::release(leases, &issue, &holder, &s.replica).await;
                        (shared.log)(&format!(
                            "relay: {holder}'s provisional claim of {issue} stays provisional: {}",
                            e.message
                        ));
                    }
                }
            }
            Grant::Held(l) => {
                update(shared, |r| r.claims.lost += 1);
                (shared.log)(&format!(
                    "relay: {holder}'s provisional claim of {issue} lost: {} on {} holds its lease ({}); the two claims show as an assignee conflict once theirs arrives",
                    l.holder,
                    l.replica,
                    l.fence()
                ));
            }
        }
    }
    Ok(())
}
