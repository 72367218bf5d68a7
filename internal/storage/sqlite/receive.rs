//! Taking in ops recorded elsewhere (other clones' op files, or this replica's
//! own file in a rebuild): idempotent storing, holding ops stamped too far
//! ahead, approvals that release held ops, and finding an op's home issue when
//! two creates used one id.

use super::meta::cached_row;
use super::row::{load_doc, parse_stored_op};
use super::write_tx::WriteTx;
use crate::model::{Op, OpKind};
use crate::storage::collisions;
use crate::{Error, ErrorKind, Result};
use rusqlite::{OptionalExtension, params};

/// The field of a `set` op that approves applying ops held for clock skew
/// now: its value is `{"apply": [op ids]}`. Every replica that holds (or
/// later receives) a listed op applies it at once, so settling a
/// `clock_skew` record on one clone settles it on all of them.
pub const CLOCK_SKEW_FIELD: &str = "clock_skew";

/// What [`WriteTx::receive`] did with an op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Stored and folded in.
    Applied,
    /// Already stored.
    Duplicate,
    /// Stamped too far in the future; kept aside in `held_ops`.
    Held,
}

impl WriteTx<'_> {
    /// Stores and folds an op recorded elsewhere (another clone's op file, or this
    /// replica's own file when rebuilding). Idempotent: an op already stored is a
    /// `Duplicate`. An op whose clock is more than `max_skew_ms` ahead of local time
    /// is `Held` (kept in `held_ops`, not applied) until local time catches up.
    /// Fails with [`ErrorKind::Corrupt`] if the op's id does not match its content.
    pub fn receive(&mut self, mut op: Op, max_skew_ms: u64) -> Result<Received> {
        let body = op.verified_line();
        self.receive_checked(op, body, max_skew_ms)
    }

    /// [`WriteTx::receive`] with the content check already done: `body` is what
    /// [`Op::verified_line`] returned for `op` (so the check can run on other
    /// threads during a bulk load).
    pub fn receive_checked(
        &mut self,
        op: Op,
        body: Option<String>,
        max_skew_ms: u64,
    ) -> Result<Received> {
        let Some(body) = body else {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!("op {:?} does not match its content hash", op.op_id),
            ));
        };
        let now = self.clock.now_ms();
        if op.hlc.wall > now.saturating_add(max_skew_ms) && self.approved(&op)? {
            return self.store_received(op, body, false);
        }
        if op.hlc.wall > now.saturating_add(max_skew_ms) {
            let known: bool = cached_row(
                &self.tx,
                "SELECT EXISTS(SELECT 1 FROM ops WHERE op_id = ?1)",
                params![op.op_id],
                |r| r.get(0),
            )?;
            if known {
                return Ok(Received::Duplicate);
            }
            self.tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO held_ops(op_id, replica, wall_ms, held_ms, body)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![
                    op.op_id,
                    op.replica,
                    op.hlc.wall as i64,
                    now as i64,
                    body
                ])?;
            return Ok(Received::Held);
        }
        self.store_received(op, body, true)
    }

    /// Applies an op that was held for clock skew now, as a person settling its
    /// `clock_skew` record asked: stored and folded, but the hybrid clock does
    /// not jump to its far-future stamp (local ops keep local time).
    pub fn receive_held_now(&mut self, mut op: Op) -> Result<Received> {
        let Some(body) = op.verified_line() else {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!("op {:?} does not match its content hash", op.op_id),
            ));
        };
        self.store_received(op, body, false)
    }

    fn store_received(&mut self, op: Op, body: String, observe: bool) -> Result<Received> {
        let now = self.clock.now_ms();
        // One statement both stores the op and tells a duplicate (the op id is
        // unique). Find its home first (which loads the doc, so loading does
        // not read the op back).
        let (home, reroute) = self.home_of(&op)?;
        if home != op.issue {
            self.doc(&home)?;
        }
        let stored = self
            .tx
            .prepare_cached(
                "INSERT INTO ops(op_id, issue_id, replica, seq, body) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(op_id) DO NOTHING",
            )?
            .execute(params![op.op_id, home, op.replica, op.seq as i64, body])?;
        if stored == 0 {
            return Ok(Received::Duplicate);
        }
        if observe {
            self.hlc = self.hlc.observe(op.hlc, now);
        }
        if op.replica == self.replica {
            // Our own op coming back (a rebuild): later local ops continue after it.
            self.seq = self.seq.max(op.seq);
        }
        if reroute {
            self.reroute(&op.issue)?;
        } else if let Some(doc) = self.docs.get_mut(&home) {
            doc.apply(&op);
        }
        self.touched.insert(home);
        self.release_approved(&op)?;
        Ok(Received::Applied)
    }

    /// If `op` approves applying held ops now (see [`CLOCK_SKEW_FIELD`]),
    /// applies those held here.
    pub(super) fn release_approved(&mut self, op: &Op) -> Result<()> {
        if op.kind != OpKind::Set || op.field.as_deref() != Some(CLOCK_SKEW_FIELD) {
            return Ok(());
        }
        let listed = op.value.get("apply").and_then(serde_json::Value::as_array);
        for id in listed
            .into_iter()
            .flatten()
            .filter_map(serde_json::Value::as_str)
        {
            let body: Option<String> = self
                .tx
                .prepare_cached("SELECT body FROM held_ops WHERE op_id = ?1")?
                .query_row(params![id], |r| r.get(0))
                .optional()?;
            let Some(body) = body else { continue };
            self.tx
                .prepare_cached("DELETE FROM held_ops WHERE op_id = ?1")?
                .execute(params![id])?;
            self.receive_held_now(parse_stored_op(&body)?)?;
        }
        Ok(())
    }

    /// Whether some stored op approved applying `op` now although it is
    /// stamped too far ahead (see [`CLOCK_SKEW_FIELD`]). Asked only before
    /// holding an op, which is rare.
    fn approved(&self, op: &Op) -> Result<bool> {
        let (lo, hi) = (format!("{}~", op.issue), format!("{}~~", op.issue));
        Ok(self
            .tx
            .prepare_cached(
                "SELECT 1 FROM ops WHERE (issue_id = ?1 OR (issue_id > ?2 AND issue_id < ?3))
                 AND instr(body, '\"field\":\"clock_skew\"') > 0 AND instr(body, ?4) > 0",
            )?
            .exists(params![op.issue, lo, hi, op.op_id])?)
    }

    /// Re-partitions the ops of `wire` after a second create of it (or an op
    /// of unknown home) arrived: see [`collisions::reroute`]. Every issue
    /// involved is read back from its moved ops and written afresh.
    pub(super) fn reroute(&mut self, wire: &str) -> Result<()> {
        let involved = collisions::reroute(&self.tx, wire)?;
        self.collisions = self.collisions || collisions::any_collision(&self.tx)?;
        for id in involved {
            self.docs.remove(&id);
            self.flushed.remove(&id);
            self.cache.remove(&id);
            collisions::wipe_rows(&self.tx, &id)?;
            let doc = load_doc(&self.tx, &id)?;
            self.docs.insert(id.clone(), doc);
            self.fresh.insert(id.clone());
            self.touched.insert(id);
        }
        Ok(())
    }

    /// Where a foreign op goes (see [`collisions`]): `(home, reroute)`, where
    /// `reroute` says the op's id must be re-partitioned once it is stored.
    fn home_of(&mut self, op: &Op) -> Result<(String, bool)> {
        let wire = op.issue.as_str();
        let doc = self.doc(wire)?;
        let (holder, holder_replica) = (
            doc.create_op_id().map(str::to_string),
            doc.create_replica().map(str::to_string),
        );
        let at_wire = |reroute| Ok((wire.to_string(), reroute));
        match (&op.kind, &op.of, holder) {
            // The first create of an id, or an op for it before its create.
            (OpKind::Create, _, None) => at_wire(false),
            (OpKind::Create, _, Some(_)) => at_wire(true),
            (_, Some(of), Some(h)) if h.starts_with(of.as_str()) => at_wire(false),
            (_, Some(of), _) => match collisions::home_of_create(&self.tx, wire, of)? {
                Some(home) => Ok((home, false)),
                // Its create has not arrived: it waits at the id, and moves
                // if that create turns out to be displaced.
                None => at_wire(false),
            },
            // Written before ops named their create: its replica's own
            // create, or the one holding the id.
            (_, None, _) if holder_replica.as_deref() == Some(op.replica.as_str()) => {
                at_wire(false)
            }
            (_, None, _) => {
                let collided = self.collisions && collisions::has_collision(&self.tx, wire)?;
                at_wire(collided)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, SystemClock};
    use crate::model::Hlc;
    use crate::model::OpKind;
    use crate::storage::{BeadsPaths, Store};
    use serde_json::json;

    fn foreign(
        issue: &str,
        replica: &str,
        seq: u64,
        wall: u64,
        kind: OpKind,
        value: serde_json::Value,
    ) -> Op {
        Op {
            op_id: String::new(),
            issue: issue.into(),
            of: None,
            kind,
            field: None,
            value,
            supersedes: vec![],
            fence: None,
            hlc: Hlc { wall, logical: 0 },
            actor: "a".into(),
            replica: replica.into(),
            seq,
        }
    }

    /// Review of issue 10, item 6: settling a `clock_skew` record is an op
    /// that syncs. A clone may receive the approval before the held op
    /// itself (another file, read first): the op is then applied, not held.
    #[test]
    fn an_approved_op_is_applied_whichever_arrives_first() {
        let now = SystemClock.now_ms();
        let future = foreign(
            "t-1",
            "skewed",
            1,
            now + 3_600_000,
            OpKind::Create,
            json!({"title": "ahead"}),
        )
        .seal();
        let mut approval = foreign(
            "t-1",
            "settler",
            1,
            now,
            OpKind::Set,
            json!({"apply": [future.op_id]}),
        );
        approval.field = Some(CLOCK_SKEW_FIELD.into());
        let approval = approval.seal();
        for order in [[&approval, &future], [&future, &approval]] {
            let dir = tempfile::tempdir().unwrap();
            let paths = BeadsPaths::new(dir.path().join(".beads"));
            std::fs::create_dir_all(&paths.dir).unwrap();
            let mut store = Store::create(&paths, "local").unwrap();
            for op in order {
                store
                    .write(&SystemClock, |tx| tx.receive(op.clone(), 60_000))
                    .unwrap();
            }
            let held: i64 = store
                .conn()
                .query_row("SELECT COUNT(*) FROM held_ops", [], |r| r.get(0))
                .unwrap();
            assert_eq!(held, 0);
            let issue = crate::query::get_issue(store.conn(), "t-1")
                .unwrap()
                .unwrap();
            assert_eq!(issue.title, "ahead");
            assert!(issue.extra.is_empty(), "the approval is not a field");
        }
    }
}
