//! Relay batches in causal order. A replica's ops carry contiguous seqs from
//! 1, and the relay delivers its batches in publish order, except after a
//! redelivery (a daemon that died or failed before acking one gets it again
//! after the ack wait, behind later ones), a tampered predecessor, or a
//! stream that no longer holds it. A batch whose predecessor is not here is
//! not applied: it is kept in the `transit` table (and acked 0 TRANSIT) until
//! the gap is filled, through the relay or through git, and then applied in
//! seq order (and acked +1). So a reader never sees an op of a replica
//! without every earlier op of that replica.

use super::Engine;
use crate::exchange::DEFAULT_MAX_SKEW_MS;
use crate::model::Op;
use crate::storage::{Received, WriteTx};
use crate::storage::sqlite::cached_row;
use crate::{Error, ErrorKind, Result};
use rusqlite::{OptionalExtension, params};

/// What became of one relay batch.
#[derive(Debug, Default)]
pub struct Delivery {
    /// Ops stored and folded in (not counting ops already here).
    pub applied: usize,
    /// Ops held for clock skew (stamped too far ahead).
    pub skewed: usize,
    /// Ops stored but kept out of the fold: late writes under a lapsed
    /// relay lease (see `merge`'s fencing), listed as `claim` conflicts.
    pub late: usize,
    /// The batch waits in transit: its replica's seqs `.0..=.1` are missing.
    pub missing: Option<(u64, u64)>,
    /// Batches held earlier that this one let through, in the order applied.
    pub released: Vec<Released>,
}

/// A batch taken out of transit and applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// Its replica.
    pub replica: String,
    /// Its last seq: the replica's watermark here now.
    pub last_seq: u64,
    /// The wall clock of its latest op (for the author's propagation time).
    pub wall_ms: u64,
}

impl Engine {
    /// Applies a batch another replica published through the relay, as a
    /// catch-up does for op files (the same merge; an op already here, from
    /// git or an earlier delivery, changes nothing), then any batches held in
    /// transit that it lets through, and makes it all durable before it
    /// returns. A batch whose replica's earlier ops are not all here is kept
    /// in transit instead (durably too). Any op whose id does not match its
    /// content fails the whole delivery with kind `corrupt` (nothing of it is
    /// kept).
    pub fn receive_batch(&mut self, replica: &str, mut ops: Vec<Op>) -> Result<Delivery> {
        if let Some(e) = self.state.failure() {
            return Err(e);
        }
        ops.sort_by_key(|o| o.seq);
        let mut checked = Vec::with_capacity(ops.len());
        for mut op in ops {
            let Some(body) = op.verified_line() else {
                return Err(Error::new(
                    ErrorKind::Corrupt,
                    format!("op {:?} does not match its content hash", op.op_id),
                ));
            };
            if op.replica != replica {
                return Err(Error::new(
                    ErrorKind::Corrupt,
                    format!("op {:?} is {}'s, in a batch from {replica}", op.op_id, op.replica),
                ));
            }
            checked.push((op, body));
        }
        let (Some(first), Some(last)) = (checked.first(), checked.last()) else {
            return Ok(Delivery::default());
        };
        let (first, last) = (first.0.seq, last.0.seq);
        let now = self.clock.now_ms() as i64;
        let out = self.store.write(self.clock.as_ref(), |tx| {
            let have = seq_below(tx, replica, first)?;
            if first > have + 1 {
                let ops: Vec<&Op> = checked.iter().map(|(op, _)| op).collect();
                tx.conn()
                    .prepare_cached(
                        "INSERT OR IGNORE INTO transit(replica, first_seq, last_seq, received_ms, ops)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?
                    .execute(params![
                        replica,
                        first as i64,
                        last as i64,
                        now,
                        serde_json::to_string(&ops)?
                    ])?;
                return Ok(Delivery {
                    missing: Some((have + 1, first - 1)),
                    ..Delivery::default()
                });
            }
            let mut out = Delivery::default();
            let mut fenced = Vec::new();
            for (op, body) in checked {
                if op.fence.is_some() {
                    fenced.push((op.issue.clone(), op.op_id.clone()));
                }
                count(&mut out, tx.receive_checked(op, Some(body), DEFAULT_MAX_SKEW_MS)?);
            }
            for (issue, op_id) in fenced {
                if tx.doc(&issue)?.is_late(&op_id) {
                    out.late += 1;
                }
            }
            release(tx, replica, &mut out)?;
            Ok(out)
        })?;
        self.committed();
        self.settle()?;
        Ok(out)
    }

    /// Applies every batch in transit whose gap has been filled since (by git,
    /// say), in seq order, durably; what it released, and how many batches
    /// still wait.
    pub fn release_transit(&mut self) -> Result<(Vec<Released>, u64)> {
        if let Some(e) = self.state.failure() {
            return Err(e);
        }
        let waiting = transit_len(&self.store)?;
        if waiting == 0 {
            return Ok((Vec::new(), 0));
        }
        let out = self.store.write(self.clock.as_ref(), |tx| {
            let replicas: Vec<String> = tx
                .conn()
                .prepare_cached("SELECT DISTINCT replica FROM transit")?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut out = Delivery::default();
            for replica in replicas {
                release(tx, &replica, &mut out)?;
            }
            Ok(out)
        })?;
        if out.released.is_empty() {
            return Ok((Vec::new(), waiting));
        }
        self.committed();
        self.settle()?;
        Ok((out.released, transit_len(&self.store)?))
    }
}

fn count(out: &mut Delivery, r: Received) {
    match r {
        Received::Applied => out.applied += 1,
        Received::Held => out.skewed += 1,
        Received::Duplicate => {}
    }
}

/// How many batches wait in transit.
pub fn transit_len(store: &crate::storage::Store) -> Result<u64> {
    Ok(cached_row(store.conn(), "SELECT COUNT(*) FROM transit", [], |r| {
        r.get::<_, i64>(0)
    })? as u64)
}

/// The highest seq of `replica` below `seq` stored here (0: none).
fn seq_below(tx: &WriteTx<'_>, replica: &str, seq: u64) -> Result<u64> {
    Ok(cached_row(
        tx.conn(),
        "SELECT COALESCE(MAX(seq), 0) FROM ops WHERE replica = ?1 AND seq < ?2",
        params![replica, seq as i64],
        |r| r.get::<_, i64>(0),
    )? as u64)
}

/// Applies, in seq order, each batch of `replica` in transit that follows on
/// from what is stored.
fn release(tx: &mut WriteTx<'_>, replica: &str, out: &mut Delivery) -> Result<()> {
    loop {
        let top = seq_below(tx, replica, i64::MAX as u64)?;
        let next: Option<(i64, i64, String)> = tx
            .conn()
            .prepare_cached(
                "SELECT first_seq, last_seq, ops FROM transit
                 WHERE replica = ?1 AND first_seq <= ?2 ORDER BY first_seq LIMIT 1",
            )?
            .query_row(params![replica, top as i64 + 1], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        let Some((first, last, text)) = next else {
            return Ok(());
        };
        tx.conn()
            .prepare_cached("DELETE FROM transit WHERE replica = ?1 AND first_seq = ?2")?
            .execute(params![replica, first])?;
        let ops: Vec<Op> = serde_json::from_str(&text)?;
        let wall_ms = ops.iter().map(|o| o.hlc.wall).max().unwrap_or(0);
        for op in ops {
            count(out, tx.receive(op, DEFAULT_MAX_SKEW_MS)?);
        }
        out.released.push(Released {
            replica: replica.to_string(),
            last_seq: last as u64,
            wall_ms,
        });
    }
}
