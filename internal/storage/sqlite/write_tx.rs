//! [`WriteTx`], the write transaction: recording local ops, folding them into
//! docs, flushing docs to rows, savepoints for one request of a group, request
//! ids, and committing (which fills the store's doc cache).

use super::meta::{cached_row, meta_get, meta_set};
use super::row::{load_doc, recompute_all_blocked, refresh_blocked, write_rows};
use super::schema::{BULK_INDEXES, index_sql};
use super::store::{MAX_CACHED_DOCS, Tx};
use crate::clock::Clock;
use crate::merge::IssueDoc;
use crate::model::{Hlc, OF_LEN, Op, OpKind};
use crate::storage::collisions;
use crate::{Error, ErrorKind, Result};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::{BTreeSet, HashMap, HashSet};

/// How long a write's request id is remembered (24 hours): a request sent
/// again with the same id within this window gets the first answer back
/// instead of being applied again. Longer than any deadline a command accepts.
pub const REQUEST_ID_WINDOW_MS: u64 = 24 * 60 * 60 * 1000;

/// Request ids between two prunings of those past [`REQUEST_ID_WINDOW_MS`].
const REQUEST_PRUNE_EVERY: i64 = 64;

/// The stamp of a stored op, read without parsing the rest of it.
fn stamp_of(body: &str) -> Result<Hlc> {
    #[derive(serde::Deserialize)]
    struct Stamp {
        hlc: Hlc,
    }
    Ok(serde_json::from_str::<Stamp>(body)
        .map_err(|e| {
            Error::new(
                ErrorKind::Corrupt,
                format!("unreadable op in the database: {e}"),
            )
            .hint("`bd rebuild` makes a new database from the op files")
        })?
        .hlc)
}

/// A write transaction: records ops and keeps the materialised rows in step.
pub struct WriteTx<'a> {
    pub(super) tx: Tx<'a>,
    pub(super) clock: &'a dyn Clock,
    pub(super) replica: String,
    pub(super) hlc: Hlc,
    /// The clock as the next transaction would find it without writing `meta`.
    recoverable: Hlc,
    /// `seq` when the transaction began.
    begin_seq: u64,
    /// The seq and stamp of the last op [`WriteTx::record`] stored.
    last_stamp: Option<(u64, Hlc)>,
    pub(super) seq: u64,
    pub(super) docs: HashMap<String, IssueDoc>,
    /// Docs flushed in this transaction, put in `cache` if it commits.
    pub(super) flushed: HashMap<String, IssueDoc>,
    /// The connection's docs as of its last commit (taken out while in use).
    pub(super) cache: &'a mut HashMap<String, IssueDoc>,
    /// Issues that had no row when this transaction first looked (nothing to delete).
    pub(super) fresh: HashSet<String>,
    pub(super) touched: BTreeSet<String>,
    recorded: Vec<String>,
    /// The caller guarantees every op of an issue arrives in one contiguous run
    /// into a database that holds none of them (a rebuild): docs start empty
    /// instead of being read back.
    no_prior_ops: bool,
    /// Whether some id was used by two creates here (see [`collisions`]):
    /// until one is, flushing has no `id` notice to look for.
    pub(super) collisions: bool,
}

impl<'a> WriteTx<'a> {
    pub(super) fn begin(
        tx: Tx<'a>,
        replica: &str,
        clock: &'a dyn Clock,
        cache: &'a mut HashMap<String, IssueDoc>,
    ) -> Result<Self> {
        // The clock resumes from the later of the stamp saved in `meta` (what
        // received ops advanced it to) and this replica's last op's own stamp
        // (what local writes advanced it to; they do not write `meta`).
        let saved = meta_get(&tx, "hlc")?
            .and_then(|s| {
                let (w, l) = s.split_once('.')?;
                Some(Hlc {
                    wall: w.parse().ok()?,
                    logical: l.parse().ok()?,
                })
            })
            .unwrap_or_default();
        let last: Option<(i64, String)> = tx
            .prepare_cached("SELECT seq, body FROM ops WHERE replica = ?1 ORDER BY seq DESC LIMIT 1")?
            .query_row(params![replica], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let (seq, own) = match last {
            Some((seq, body)) => (seq, stamp_of(&body)?),
            None => (0, Hlc::default()),
        };
        let hlc = saved.max(own);
        let collisions = collisions::any_collision(&tx)?;
        Ok(WriteTx {
            tx,
            clock,
            replica: replica.to_string(),
            hlc,
            recoverable: hlc,
            begin_seq: seq as u64,
            last_stamp: None,
            seq: seq as u64,
            docs: HashMap::new(),
            flushed: HashMap::new(),
            cache,
            fresh: HashSet::new(),
            touched: BTreeSet::new(),
            recorded: Vec::new(),
            no_prior_ops: false,
            collisions,
        })
    }

    /// The connection inside this transaction, for queries.
    pub fn conn(&self) -> &Connection {
        &self.tx
    }

    /// This replica's id.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Current wall time from the transaction's clock.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The folded ops of `id` (including ops recorded earlier in this transaction).
    pub fn doc(&mut self, id: &str) -> Result<&IssueDoc> {
        if !self.docs.contains_key(id) {
            let known = self.flushed.remove(id).or_else(|| self.cache.remove(id));
            let doc = if let Some(doc) = known {
                doc
            } else if self.no_prior_ops {
                IssueDoc::new(id)
            } else {
                load_doc(&self.tx, id)?
            };
            if doc.op_count() == 0 {
                self.fresh.insert(id.to_string());
            }
            self.docs.insert(id.to_string(), doc);
        }
        Ok(&self.docs[id])
    }

    /// Whether `id` names an issue that exists and is not deleted.
    pub fn is_live(&mut self, id: &str) -> Result<bool> {
        Ok(self.doc(id)?.is_live())
    }

    /// Stamps, seals and stores `op` (its hlc, seq and replica are overwritten) and
    /// folds it into the issue's doc. Returns the op id.
    ///
    /// `op.issue` names the issue as bd shows it; an op other than a create is
    /// written naming the id its create gave it and that create (`of`), so it
    /// reaches the same issue on every replica even when two creates used the
    /// id (see [`crate::merge::partition`]).
    pub fn record(&mut self, mut op: Op) -> Result<String> {
        self.hlc = self.hlc.tick(self.clock.now_ms());
        self.seq += 1;
        op.hlc = self.hlc;
        op.seq = self.seq;
        self.last_stamp = Some((self.seq, self.hlc));
        op.replica = self.replica.clone();
        // Load the doc before storing the op, so loading does not read it back.
        let home = op.issue.clone();
        let doc = self.doc(&home)?;
        // The holder of the issue's relay lease writes under its token, also
        // when the write does not go through the daemon that took the lease
        // (see `merge`'s fencing).
        if op.fence.is_none()
            && op.kind != OpKind::Create
            && let Some((token, holder)) = doc.lease()
        {
            // Read only for fenced issues: a field's value ranks its writes.
            let assignee = doc.field_value("assignee").and_then(|v| v.as_str());
            if holder == op.actor && assignee == Some(op.actor.as_str()) {
                op.fence = Some(token);
            } else if assignee == Some(holder)
                && op.field.as_deref() != Some(crate::merge::CLAIM_FIELD)
                && doc.field_value("status").and_then(|v| v.as_str()) != Some("closed")
                && doc.held_by(&op.actor).is_some_and(|mine| mine < token)
            {
                // A holder whose lease lapsed and was taken over, writing on
                // as if it still held it: told, not applied.
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "{}'s claim on {} lapsed: {holder} took it over (lease {token}); nothing was written",
                        op.actor, op.issue
                    ),
                )
                .hint("pick another issue from `bd ready`"));
            }
        }
        let collides = match op.kind {
            OpKind::Create => doc.exists(),
            _ => {
                if let Some(wire) = doc.wire() {
                    op.issue = wire.to_string();
                }
                op.of = doc
                    .create_op_id()
                    .map(|c| c[..c.len().min(OF_LEN)].to_string());
                false
            }
        };
        let op = op.seal();
        let body = serde_json::to_string(&op)?;
        self.tx
            .prepare_cached(
                "INSERT INTO ops(op_id, issue_id, replica, seq, body) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![op.op_id, home, op.replica, op.seq as i64, body])?;
        if collides {
            self.reroute(&op.issue)?;
        } else if let Some(doc) = self.docs.get_mut(&home) {
            doc.apply(&op);
        }
        self.touched.insert(home);
        self.recorded.push(op.op_id.clone());
        self.release_approved(&op)?;
        Ok(op.op_id)
    }

    /// For a rebuild into an empty database: see the `no_prior_ops` field. The
    /// caller must flush only between issues' runs of ops.
    pub fn assume_no_prior_ops(&mut self) {
        self.no_prior_ops = true;
    }

    /// Runs a bulk load with the [`BULK_INDEXES`] dropped, then builds them.
    pub fn without_bulk_indexes<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let mut create = Vec::new();
        for name in BULK_INDEXES {
            let sql = index_sql(name)
                .ok_or_else(|| Error::internal(format!("index {name} is not in the schema")))?;
            self.tx.execute_batch(&format!("DROP INDEX {name}"))?;
            create.push(sql);
        }
        let out = f(self)?;
        self.flush()?;
        for sql in create {
            self.tx.execute_batch(&sql)?;
        }
        if self.no_prior_ops {
            recompute_all_blocked(&self.tx)?;
            super::row::recompute_all_held(&self.tx)?;
        }
        Ok(out)
    }

    /// Runs `f` inside a savepoint. If `f` fails, everything it did is undone (rows,
    /// ops, the clock, the sequence number and the doc cache) and the transaction
    /// carries on; if it succeeds its rows are materialised before the savepoint is
    /// released.
    pub fn attempt<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.flush()?;
        let (hlc, seq, recorded) = (self.hlc, self.seq, self.recorded.len());
        self.tx
            .prepare_cached("SAVEPOINT bd_request")?
            .execute([])?;
        let out = f(self).and_then(|v| self.flush().map(|()| v));
        match out {
            Ok(v) => {
                self.tx.prepare_cached("RELEASE bd_request")?.execute([])?;
                Ok(v)
            }
            Err(e) => {
                self.tx
                    .execute_batch("ROLLBACK TO bd_request; RELEASE bd_request")?;
                self.hlc = hlc;
                self.seq = seq;
                self.recorded.truncate(recorded);
                self.docs.clear();
                // Docs flushed before the savepoint may have been changed inside
                // it; the database has them right, so they are simply reloaded.
                self.flushed.clear();
                self.fresh.clear();
                self.touched.clear();
                Err(e)
            }
        }
    }

    /// The doc of `id` as the last [`WriteTx::flush`] wrote its rows, if this
    /// transaction still holds it.
    pub fn flushed_doc(&self, id: &str) -> Option<&IssueDoc> {
        self.flushed.get(id)
    }

    /// Runs `f` without a savepoint. `Some(result)` when it succeeded, or failed
    /// having changed nothing in the database (then the transaction carries on,
    /// its clock, sequence number and op list restored); `None` when it failed
    /// after changing something, which only rolling back the whole transaction
    /// can undo.
    pub fn attempt_unguarded<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<Option<Result<T>>> {
        self.flush()?;
        let (hlc, seq, recorded) = (self.hlc, self.seq, self.recorded.len());
        let before = self.footprint()?;
        match f(self).and_then(|v| self.flush().map(|()| v)) {
            Ok(v) => Ok(Some(Ok(v))),
            Err(e) if self.footprint()? == before => {
                // Docs change only after a row is written, so the cached ones
                // still match the database.
                self.hlc = hlc;
                self.seq = seq;
                self.recorded.truncate(recorded);
                Ok(Some(Err(e)))
            }
            Err(_) => Ok(None),
        }
    }

    /// What tells whether anything was written: rows changed by this
    /// connection, and the schema version (dropping an index changes no row).
    fn footprint(&self) -> Result<(u64, i64)> {
        let schema: i64 = cached_row(&self.tx, "PRAGMA schema_version", [], |r| r.get(0))?;
        Ok((self.tx.total_changes(), schema))
    }

    /// What an earlier request with this id left: `Some((digest, outcome))`,
    /// where `outcome` is the answer's JSON, or `None` if it was abandoned.
    pub fn request_outcome(&self, request_id: &str) -> Result<Option<(String, Option<String>)>> {
        Ok(self
            .tx
            .prepare_cached("SELECT digest, outcome FROM requests WHERE id = ?1")?
            .query_row(params![request_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    /// Records a request id with its answer (`None`: abandoned, never to be
    /// applied), and forgets ids older than [`REQUEST_ID_WINDOW_MS`].
    pub fn record_request(
        &mut self,
        request_id: &str,
        digest: &str,
        outcome: Option<&str>,
    ) -> Result<()> {
        let now = self.clock.now_ms();
        self.tx
            .prepare_cached(
                "INSERT INTO requests(id, digest, created_ms, outcome) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![request_id, digest, now as i64, outcome])?;
        // Every 64th id, forget those older than the window: the rows before
        // the first young one in arrival order (a few leaf pages at the front),
        // not a random row and an index page on every write.
        if self.tx.last_insert_rowid() % REQUEST_PRUNE_EVERY == 0 {
            self.tx
                .prepare_cached(
                    "DELETE FROM requests WHERE seq < \
                     (SELECT seq FROM requests WHERE created_ms >= ?1 ORDER BY seq LIMIT 1)",
                )?
                .execute(params![now.saturating_sub(REQUEST_ID_WINDOW_MS) as i64])?;
        }
        Ok(())
    }

    /// Ids of the ops recorded so far in this transaction.
    pub fn recorded(&self) -> &[String] {
        &self.recorded
    }

    /// Rewrites the rows of every issue touched since the last flush, refreshes the
    /// `blocked` flags that depend on them, and empties the doc cache (docs reload
    /// from this transaction's view, so memory stays bounded on long imports).
    pub fn flush(&mut self) -> Result<()> {
        if self.touched.is_empty() {
            return Ok(());
        }
        let touched = std::mem::take(&mut self.touched);
        for id in &touched {
            let Some(doc) = self.docs.get(id) else {
                continue;
            };
            let Some(mut m) = doc.materialise() else {
                continue; // ops for an issue whose create has not arrived
            };
            if self.collisions
                && let Some(notice) = collisions::id_notice(&self.tx, id, doc)?
            {
                m.conflicts.push(notice);
                m.conflicts.sort_by(|a, b| a.field.cmp(&b.field));
            }
            write_rows(&self.tx, m, self.fresh.remove(id))?;
        }
        // Keep the docs for the cache, within bounds (a long import flushes
        // often and touches far more issues than are worth keeping).
        if self.flushed.len() + self.docs.len() <= MAX_CACHED_DOCS {
            self.flushed.extend(self.docs.drain());
        } else {
            self.flushed.clear();
        }
        self.docs.clear();
        self.fresh.clear();
        if self.no_prior_ops {
            return Ok(()); // a bulk load sets every flag at the end
        }
        refresh_blocked(&self.tx, touched)
    }

    pub(super) fn commit(mut self) -> Result<()> {
        self.flush()?;
        // `meta` is written only when the next transaction could not recover
        // the clock from this replica's last op: a received op advanced it (or
        // an op whose stamp is unknown here was rolled back). A local write
        // then touches one page fewer.
        let recoverable = match self.last_stamp {
            _ if self.seq == self.begin_seq => Some(self.recoverable),
            Some((seq, stamp)) if seq == self.seq => Some(self.recoverable.max(stamp)),
            _ => None,
        };
        if recoverable.is_none_or(|r| self.hlc > r) {
            meta_set(
                &self.tx,
                "hlc",
                &format!("{}.{}", self.hlc.wall, self.hlc.logical),
            )?;
        }
        self.tx.commit()?;
        if self.cache.len() + self.flushed.len() > MAX_CACHED_DOCS {
            self.cache.clear();
        }
        self.cache.extend(self.flushed.drain());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::clock::FixedClock;
    use crate::model::{Hlc, Op, OpKind};
    use crate::storage::{BeadsPaths, Store};
    use serde_json::json;

    fn store(dir: &tempfile::TempDir) -> Store {
        let paths = BeadsPaths::new(dir.path().join(".beads"));
        std::fs::create_dir_all(&paths.dir).unwrap();
        Store::create(&paths, "local").unwrap();
        Store::open(&paths.db).unwrap()
    }

    fn op(issue: &str, kind: OpKind, value: serde_json::Value) -> Op {
        Op {
            op_id: String::new(),
            issue: issue.into(),
            of: None,
            kind,
            field: None,
            value,
            supersedes: vec![],
            fence: None,
            hlc: Hlc::default(),
            actor: "a".into(),
            replica: String::new(),
            seq: 0,
        }
    }

    fn last_stamp(store: &Store) -> Hlc {
        let body: String = store
            .conn()
            .query_row(
                "SELECT body FROM ops WHERE replica = 'local' ORDER BY seq DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        super::stamp_of(&body).unwrap()
    }

    /// Local writes no longer save the clock in `meta` (one page fewer per
    /// write): the next transaction, and the next process, resume it from the
    /// last op's own stamp; a received op that advanced it past that is saved.
    /// Either way no stamp is ever given twice or goes backwards.
    #[test]
    fn the_clock_never_goes_back_though_local_writes_do_not_save_it() {
        let dir = tempfile::tempdir().unwrap();
        let clock = FixedClock::new(1_000_000);
        let mut s = store(&dir);
        let mut stamps = Vec::new();
        for i in 0..3 {
            // The wall clock stands still: only the logical part moves.
            s.write(&clock, |tx| {
                tx.record(op(&format!("t-{i}"), OpKind::Create, json!({"title": "x"})))
            })
            .unwrap();
            stamps.push(last_stamp(&s));
        }
        let saved = crate::storage::sqlite::meta_get(s.conn(), "hlc").unwrap();
        assert_eq!(saved, None, "local writes left meta alone");
        // A remote op from 5 s ahead (within the skew allowed) advances it.
        let mut remote = op("t-r", OpKind::Create, json!({"title": "r"}));
        remote.replica = "remote".into();
        remote.seq = 1;
        remote.hlc = Hlc {
            wall: 1_005_000,
            logical: 7,
        };
        let remote = remote.seal();
        s.write(&clock, |tx| tx.receive(remote.clone(), 60_000))
            .unwrap();
        assert!(
            crate::storage::sqlite::meta_get(s.conn(), "hlc")
                .unwrap()
                .is_some(),
            "a received op's advance is saved"
        );
        drop(s);
        // A new process: its next local stamp is past everything seen.
        let mut s = store_reopen(&dir);
        s.write(&clock, |tx| {
            tx.record(op("t-9", OpKind::Create, json!({"title": "y"})))
        })
        .unwrap();
        let next = last_stamp(&s);
        assert!(next > remote.hlc, "{next:?} after {:?}", remote.hlc);
        stamps.push(next);
        assert!(stamps.windows(2).all(|w| w[0] < w[1]), "{stamps:?}");
    }

    fn store_reopen(dir: &tempfile::TempDir) -> Store {
        Store::open(&dir.path().join(".beads").join("beads.db")).unwrap()
    }

    /// Request ids are forgotten after the window, in batches taken from the
    /// front of the table (arrival order), and never before.
    #[test]
    fn request_ids_are_forgotten_after_the_window_and_not_before() {
        let dir = tempfile::tempdir().unwrap();
        let clock = FixedClock::new(10_000_000_000);
        let mut s = store(&dir);
        let count = |s: &Store| -> i64 {
            s.conn()
                .query_row("SELECT COUNT(*) FROM requests", [], |r| r.get(0))
                .unwrap()
        };
        for i in 0..100 {
            s.write(&clock, |tx| tx.record_request(&format!("old-{i}"), "d", Some("{}")))
                .unwrap();
        }
        assert_eq!(count(&s), 100, "none is past the window");
        clock.advance(super::REQUEST_ID_WINDOW_MS + 1);
        for i in 0..64 {
            s.write(&clock, |tx| tx.record_request(&format!("new-{i}"), "d", Some("{}")))
                .unwrap();
        }
        assert_eq!(count(&s), 64, "the old ones are gone, every new one kept");
        for rid in ["old-0", "old-99"] {
            let gone = s.write(&clock, |tx| tx.request_outcome(rid)).unwrap();
            assert_eq!(gone, None, "{rid}");
        }
        let kept = s.write(&clock, |tx| tx.request_outcome("new-0")).unwrap();
        assert!(kept.is_some());
    }

    /// The v5 upgrade keeps every remembered request id and its answer, in
    /// arrival order.
    #[test]
    fn upgrading_to_v5_keeps_the_request_ids() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        s.conn()
            .execute_batch(
                "DROP TABLE requests;
                 CREATE TABLE requests (id TEXT PRIMARY KEY, digest TEXT NOT NULL,
                     created_ms INTEGER NOT NULL, outcome TEXT) WITHOUT ROWID;
                 CREATE INDEX requests_by_time ON requests(created_ms);
                 INSERT INTO requests VALUES ('b', 'db', 2, '{\"x\":2}'), ('a', 'da', 1, NULL);
                 PRAGMA user_version = 4;",
            )
            .unwrap();
        drop(s);
        let s = store_reopen(&dir);
        let rows: Vec<(i64, String, Option<String>)> = s
            .conn()
            .prepare("SELECT seq, id, outcome FROM requests ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            rows,
            vec![
                (1, "a".to_string(), None),
                (2, "b".to_string(), Some("{\"x\":2}".to_string()))
            ]
        );
    }
}
