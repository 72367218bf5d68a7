//! Leases with fencing (issue 14): at most one holder per issue in the whole
//! mesh, decided by the relay's key-value bucket `BD_<repo id>_leases`, one
//! key per issue.
//!
//! - **Grant** by compare-and-set: create the key if it is absent (or was
//!   released), or replace an expired lease at the revision it was read at.
//!   Two daemons racing for one issue: the relay takes one write at that
//!   revision and refuses the other, so exactly one wins.
//! - **Fencing token**: the bucket revision of the write that granted the
//!   lease. Revisions of a bucket only grow, so a later grant always carries
//!   a larger token. A renewal is a new write (a new revision) but keeps the
//!   token of its grant, in the value, so the holder's ops keep one token for
//!   as long as it holds the lease.
//! - **Expiry** counts from the relay's own timestamp of the last write
//!   (grant or renewal) plus the lease's TTL, so two machines' clocks matter
//!   only by their skew against each other, not against the holder's.

use crate::{Error, ErrorKind, Result};
use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How many times a grant re-reads and retries after losing a race to
/// another writer of the same key before saying so.
const ATTEMPTS: usize = 5;

/// A lease as the bucket holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The issue.
    pub issue: String,
    /// Who holds it (the actor).
    pub holder: String,
    /// The replica (clone) whose daemon took it.
    pub replica: String,
    /// How long it lasts after its last write, ms.
    pub ttl_ms: u64,
    /// The fencing token: the revision of the write that granted it (`None`
    /// in the granting write itself, whose revision it is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
    /// When the relay stored its last write, ms since the epoch (from the
    /// entry, not stored).
    #[serde(skip)]
    pub written_ms: u64,
    /// Not a lease but the mark of a close: `holder` closed the issue on
    /// `replica`. For [`CLOSED_MARK_TTL`] another clone's claim is refused
    /// (the close may not have reached it yet); a reopen clears it. A daemon
    /// of an earlier version reads it as a lease, which refuses the same.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub closed: bool,
}

/// How long the mark of a close refuses other clones' claims of the issue:
/// longer than a close takes to reach every connected clone.
pub const CLOSED_MARK_TTL: Duration = Duration::from_secs(10 * 60);

impl Lease {
    /// Its fencing token.
    pub fn fence(&self) -> u64 {
        self.token.unwrap_or(0)
    }

    /// When it expires, ms since the epoch (by the relay's clock).
    pub fn expires_ms(&self) -> u64 {
        self.written_ms.saturating_add(self.ttl_ms)
    }
}

/// What asking for a lease came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Granted (or renewed, when the asker held it already).
    Granted(Lease),
    /// Someone else holds it and it has not expired.
    Held(Lease),
}

/// The bucket's name for a repository.
pub fn bucket(repo_id: &str) -> String {
    format!("BD_{repo_id}_leases")
}

/// Opens (or makes, with `replicas` copies) the lease bucket. Its reads go
/// to the stream's leader (no direct gets, which any replica may answer from
/// behind): a lease just released or granted is seen as such.
pub async fn open(js: &async_nats::jetstream::Context, repo_id: &str, replicas: usize) -> Result<kv::Store> {
    let kv = open_as_is(js, repo_id, replicas).await?;
    if !kv.stream.cached_info().config.allow_direct {
        return Ok(kv);
    }
    let mut config = kv.stream.cached_info().config.clone();
    config.allow_direct = false;
    js.update_stream(&config)
        .await
        .map_err(|e| relay_error("making the lease bucket's reads go to its leader", e))?;
    js.get_key_value(bucket(repo_id))
        .await
        .map_err(|e| relay_error("opening the lease bucket", e))
}

async fn open_as_is(js: &async_nats::jetstream::Context, repo_id: &str, replicas: usize) -> Result<kv::Store> {
    if let Ok(kv) = js.get_key_value(bucket(repo_id)).await {
        return Ok(kv);
    }
    let made = js
        .create_key_value(kv::Config {
            bucket: bucket(repo_id),
            history: 1,
            num_replicas: replicas,
            ..Default::default()
        })
        .await;
    match made {
        Ok(kv) => Ok(kv),
        // Another daemon made it meanwhile (and may have changed its reads
        // already, so ours was "a different configuration"): use theirs.
        Err(e) => js
            .get_key_value(bucket(repo_id))
            .await
            .map_err(|_| relay_error("opening the lease bucket", e)),
    }
}

/// The bucket key of an issue id. Keys allow letters, digits and `-/=.`
/// (a `.` neither first, last nor doubled: it separates subject tokens);
/// anything else (and `_`, the escape) becomes `_` and two hex digits, so
/// two ids never share a key.
pub fn key(issue: &str) -> String {
    let mut out = String::with_capacity(issue.len());
    for b in issue.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'=' | b'/') || (b == b'.' && !out.is_empty() && !out.ends_with('.')) {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    if out.ends_with('.') {
        out.pop();
        out.push_str("_2e");
    }
    out
}

fn relay_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Unavailable, format!("{what}: {e}"))
}

/// The lease an entry holds, with its token and write time filled in;
/// `None` for a released key.
fn read(entry: &kv::Entry) -> Option<Lease> {
    if entry.operation != kv::Operation::Put {
        return None;
    }
    let mut lease: Lease = serde_json::from_slice(&entry.value).ok()?;
    lease.token = Some(lease.token.unwrap_or(entry.revision));
    lease.written_ms = (entry.created.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
    Some(lease)
}

/// The current lease of `issue`, if any (expired or not).
pub async fn current(store: &kv::Store, issue: &str) -> Result<Option<Lease>> {
    let entry = store
        .entry(key(issue))
        .await
        .map_err(|e| relay_error("reading a lease", e))?;
    Ok(entry.as_ref().and_then(read))
}

/// Asks for the lease of `issue` for `holder` on `replica`: granted when no
/// one holds it, when the lease there expired by `now_ms`, or when the asker
/// holds it already (then renewed, keeping its token).
pub async fn acquire(
    store: &kv::Store,
    issue: &str,
    holder: &str,
    replica: &str,
    ttl: Duration,
    now_ms: u64,
) -> Result<Grant> {
    let k = key(issue);
    for _ in 0..ATTEMPTS {
        let entry = store
            .entry(&k)
            .await
            .map_err(|e| relay_error("reading a lease", e))?;
        let held = entry.as_ref().and_then(read);
        let mut lease = Lease {
            issue: issue.to_string(),
            holder: holder.to_string(),
            replica: replica.to_string(),
            ttl_ms: ttl.as_millis() as u64,
            token: None,
            written_ms: 0,
            closed: false,
        };
        match (&entry, &held) {
            // A close on this clone: the clone's own state says whether the
            // issue was reopened since (the claim is then checked there).
            (Some(e), Some(h)) if h.closed && h.replica != replica && h.expires_ms() > now_ms => {
                let _ = e;
                return Ok(Grant::Held(h.clone()));
            }
            (Some(e), Some(h)) if !h.closed && h.holder == holder && h.replica == replica => {
                // A renewal: the same grant, so the same token.
                lease.token = h.token;
                let value = serde_json::to_vec(&lease)?;
                match store.update(&k, value.into(), e.revision).await {
                    Ok(rev) => return Ok(written(lease, rev, now_ms)),
                    Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                    Err(err) => return Err(relay_error("renewing a lease", err)),
                }
            }
            (Some(e), Some(h)) if !h.closed && h.expires_ms() > now_ms => {
                let _ = e;
                return Ok(Grant::Held(h.clone()));
            }
            (Some(e), _) => {
                // Expired or released: taken over at the revision read.
                let value = serde_json::to_vec(&lease)?;
                match store.update(&k, value.into(), e.revision).await {
                    Ok(rev) => return Ok(written(lease, rev, now_ms)),
                    Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                    Err(err) => return Err(relay_error("taking over a lease", err)),
                }
            }
            (None, _) => {
                let value = serde_json::to_vec(&lease)?;
                match store.create(&k, value.into()).await {
                    Ok(rev) => return Ok(written(lease, rev, now_ms)),
                    Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => continue,
                    Err(err) => return Err(relay_error("taking a lease", err)),
                }
            }
        }
    }
    Err(Error::new(
        ErrorKind::Conflict,
        format!("the lease of {issue} changed hands {ATTEMPTS} times while asking for it"),
    )
    .hint("try again"))
}

/// Renews the lease of `issue` if `holder` on `replica` holds it, keeping its
/// token and TTL: `Granted` with the renewed lease, `Held` when it is
/// someone else's now, `None` when there is none (given back).
pub async fn renew(store: &kv::Store, issue: &str, holder: &str, replica: &str) -> Result<Option<Grant>> {
    let k = key(issue);
    for _ in 0..ATTEMPTS {
        let Some(entry) = store
            .entry(&k)
            .await
            .map_err(|e| relay_error("reading a lease", e))?
        else {
            return Ok(None);
        };
        let Some(held) = read(&entry) else {
            return Ok(None);
        };
        if held.closed {
            return Ok(None); // closed meanwhile: nothing to renew
        }
        if held.holder != holder || held.replica != replica {
            return Ok(Some(Grant::Held(held)));
        }
        let value = serde_json::to_vec(&held)?;
        match store.update(&k, value.into(), entry.revision).await {
            Ok(rev) => {
                let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
                return Ok(Some(written(held, rev, now)));
            }
            Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
            Err(err) => return Err(relay_error("renewing a lease", err)),
        }
    }
    Ok(None)
}

/// The lease a write at revision `rev` granted: its token is that revision
/// (a renewal keeps its grant's), its time the asker's (not read back: on a
/// cluster a read right after a write may reach a replica behind it).
fn written(mut lease: Lease, rev: u64, now_ms: u64) -> Grant {
    lease.token = Some(lease.token.unwrap_or(rev));
    lease.written_ms = now_ms;
    Grant::Granted(lease)
}

/// Gives up the lease of `issue` if `holder` on `replica` holds it (and only
/// then: a lease taken over meanwhile is someone else's). Whether it was
/// released.
pub async fn release(store: &kv::Store, issue: &str, holder: &str, replica: &str) -> Result<bool> {
    delete_if(store, issue, |h| !h.closed && h.holder == holder && h.replica == replica).await
}

/// Deletes `issue`'s key if what it holds passes `keep_out`, at the revision
/// read (changed meanwhile, it is left: no longer what was judged). Whether
/// it was deleted.
async fn delete_if(store: &kv::Store, issue: &str, keep_out: impl Fn(&Lease) -> bool) -> Result<bool> {
    let k = key(issue);
    let Some(entry) = store
        .entry(&k)
        .await
        .map_err(|e| relay_error("reading a lease", e))?
    else {
        return Ok(false);
    };
    match read(&entry) {
        Some(h) if keep_out(&h) => Ok(store
            .delete_expect_revision(&k, Some(entry.revision))
            .await
            .is_ok()),
        _ => Ok(false),
    }
}

/// Marks `issue` closed by `closer` on `replica`, in place of its lease:
/// the closer's own lease, an expired or released one, or none. A live
/// lease of someone else, or an earlier mark, is left as it is. Whether
/// the mark was written.
pub async fn mark_closed(store: &kv::Store, issue: &str, closer: &str, replica: &str) -> Result<bool> {
    let k = key(issue);
    let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
    let mark = Lease {
        issue: issue.to_string(),
        holder: closer.to_string(),
        replica: replica.to_string(),
        ttl_ms: CLOSED_MARK_TTL.as_millis() as u64,
        token: None,
        written_ms: 0,
        closed: true,
    };
    let value = serde_json::to_vec(&mark)?;
    for _ in 0..ATTEMPTS {
        let entry = store
            .entry(&k)
            .await
            .map_err(|e| relay_error("reading a lease", e))?;
        let written = match (&entry, entry.as_ref().and_then(read)) {
            (None, _) => store.create(&k, value.clone().into()).await.map_err(|e| e.kind() == kv::CreateErrorKind::AlreadyExists),
            (Some(_), Some(h)) if h.closed && h.expires_ms() > now => return Ok(false),
            (Some(_), Some(h))
                if h.expires_ms() > now && (h.holder != closer || h.replica != replica) =>
            {
                return Ok(false);
            }
            (Some(e), _) => store
                .update(&k, value.clone().into(), e.revision)
                .await
                .map_err(|e| e.kind() == kv::UpdateErrorKind::WrongLastRevision),
        };
        match written {
            Ok(_) => return Ok(true),
            Err(true) => continue, // changed meanwhile: read again
            Err(false) => return Err(relay_error("marking a lease closed", "the relay refused the write")),
        }
    }
    Ok(false)
}

/// Clears the mark of a close of `issue` (a reopen: the issue may be
/// claimed again at once), whoever closed it. Whether there was one.
pub async fn clear_closed(store: &kv::Store, issue: &str) -> Result<bool> {
    delete_if(store, issue, |h| h.closed).await
}
