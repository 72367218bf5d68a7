//! Fencing (issue 14): late writes under lapsed leases stay out of the fold.
//!
//! An op written under a relay lease carries the lease's token
//! ([`Op::fence`]). Tokens only grow, and the relay grants a lease only once
//! the one before it was released or had expired, so the first op carrying
//! token `F` (the new holder's claim, first by hlc) marks where lease `F`
//! began. An op carrying an older token `f < F` with a later hlc than that
//! was written by a holder whose lease had lapsed: a **late write**. It is
//! kept (in the doc and the op files, and it syncs like any op) but stays out
//! of the fold, and the issue lists a `claim` conflict naming it beside the
//! op that began the current lease, until a `claim` resolution settles it.
//!
//! Which ops are late depends only on the set of fenced ops, never on the
//! order they arrived in, so every replica folds the same ops and shows the
//! same issue. The cost falls on fenced issues only: their doc keeps the
//! fenced ops and a second fold (`view`) beside the fold of the unfenced
//! ones, rebuilt when an arrival makes an op already folded late (rare: it
//! takes a partition or a dead holder).

use super::{Fold, Materialised, contender};
use crate::model::{Conflict, Hlc, Op, OpKind};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// The conflict field of late writes, and the field of the op that settles
/// them (its `supersedes` names the late ops it settles).
pub const CLAIM_FIELD: &str = "claim";

/// The fold of every op of one issue; see [`crate::merge`] for the rules and
/// this module for fencing.
#[derive(Debug, Clone, Default)]
pub struct IssueDoc {
    /// The ops without a token.
    base: Fold,
    /// The ops with a token, by op id.
    fenced: BTreeMap<String, Op>,
    /// `base` with the fenced ops that are not late; present once any op is
    /// fenced.
    view: Option<Box<Fold>>,
    /// The fenced ops that are late.
    late: BTreeSet<String>,
}

/// An op's place in the total order of ops: hlc, then replica, then op id.
fn rank(op: &Op) -> (Hlc, &str, &str) {
    (op.hlc, &op.replica, &op.op_id)
}

/// The late ops among `fenced`: those with a token older than a lease that
/// began (by hlc) before them.
fn late_ops(fenced: &BTreeMap<String, Op>) -> BTreeSet<String> {
    // Where each lease began: the least hlc among the ops carrying its token.
    let mut began: BTreeMap<u64, Hlc> = BTreeMap::new();
    for op in fenced.values() {
        let f = op.fence.unwrap_or(0);
        began
            .entry(f)
            .and_modify(|h| *h = (*h).min(op.hlc))
            .or_insert(op.hlc);
    }
    // For each token, the earliest beginning among the newer leases.
    let mut newer_began: BTreeMap<u64, Hlc> = BTreeMap::new();
    let mut earliest: Option<Hlc> = None;
    for (f, h) in began.iter().rev() {
        if let Some(e) = earliest {
            newer_began.insert(*f, e);
        }
        earliest = Some(earliest.map_or(*h, |e| e.min(*h)));
    }
    fenced
        .values()
        .filter(|op| {
            newer_began
                .get(&op.fence.unwrap_or(0))
                .is_some_and(|began| *began < op.hlc)
        })
        .map(|op| op.op_id.clone())
        .collect()
}

impl IssueDoc {
    /// An empty document for issue `id`.
    pub fn new(id: impl Into<String>) -> Self {
        IssueDoc {
            base: Fold::new(id),
            ..Default::default()
        }
    }

    /// The fold shown: every op but the late ones.
    fn shown(&self) -> &Fold {
        self.view.as_deref().unwrap_or(&self.base)
    }

    /// Applies `op`; returns false if it was already applied or is for another
    /// issue (one whose `issue` is neither this id nor the id it was displaced from).
    pub fn apply(&mut self, op: &Op) -> bool {
        if op.fence.is_none() {
            let fresh = self.base.apply(op);
            if fresh && let Some(view) = &mut self.view {
                view.apply(op);
            }
            return fresh;
        }
        if !self.base.owns(op) || self.fenced.contains_key(&op.op_id) {
            return false;
        }
        self.fenced.insert(op.op_id.clone(), op.clone());
        let late = late_ops(&self.fenced);
        if late == self.late {
            let view = self
                .view
                .get_or_insert_with(|| Box::new(self.base.clone()));
            if !late.contains(&op.op_id) {
                view.apply(op);
            }
        } else {
            // An op already folded may be late now: fold again without them.
            let mut view = self.base.clone();
            for op in self.fenced.values().filter(|o| !late.contains(&o.op_id)) {
                view.apply(op);
            }
            self.view = Some(Box::new(view));
            self.late = late;
        }
        true
    }

    /// The issue id.
    pub fn id(&self) -> &str {
        self.base.id()
    }

    /// Whether a create op has been applied.
    pub fn exists(&self) -> bool {
        self.shown().exists()
    }

    /// Whether a delete op has been applied.
    pub fn is_deleted(&self) -> bool {
        self.shown().is_deleted()
    }

    /// Whether the issue exists and is not deleted.
    pub fn is_live(&self) -> bool {
        self.shown().is_live()
    }

    /// Number of distinct ops applied (late ones included).
    pub fn op_count(&self) -> usize {
        self.base.op_count() + self.fenced.len()
    }

    /// The op id of the create that made this issue (the least ranked, should
    /// a database from before [`super::partition`] hold several).
    pub fn create_op_id(&self) -> Option<&str> {
        self.shown().create_op_id()
    }

    /// The id this issue's ops name: the one its create gave it (for a
    /// displaced issue, the id another create kept).
    pub fn wire(&self) -> Option<&str> {
        self.shown().wire()
    }

    /// The replica that made this issue's create.
    pub fn create_replica(&self) -> Option<&str> {
        self.shown().create_replica()
    }

    /// Op ids of creates of this id that an `id` set acknowledged as displaced.
    pub fn acknowledged(&self) -> &BTreeSet<String> {
        self.shown().acknowledged()
    }

    /// The visible writes of `field` (what a new write must supersede).
    pub fn field_heads(&self, field: &str) -> Vec<String> {
        self.shown().field_heads(field)
    }

    /// The displayed value of `field`, if it was ever written.
    pub fn field_value(&self, field: &str) -> Option<&Value> {
        self.shown().field_value(field)
    }

    /// Names of fields that currently display a non-null value.
    pub fn field_names(&self) -> impl Iterator<Item = &str> {
        self.shown().field_names()
    }

    /// The live adds of `label` (what a remove must supersede).
    pub fn label_heads(&self, label: &str) -> Vec<String> {
        self.shown().label_heads(label)
    }

    /// The live adds of the edge to `target` of `dep_type`.
    pub fn dep_heads(&self, target: &str, dep_type: &str) -> Vec<String> {
        self.shown().dep_heads(target, dep_type)
    }

    /// Every visible write, live add and comment: what a delete must supersede.
    pub fn all_heads(&self) -> Vec<String> {
        self.shown().all_heads()
    }

    /// Every issue a live parent-child edge points to: one, unless moves
    /// on two clones crossed (the issue then shows one of them and has a
    /// `parent` conflict); a move must take every one of them away.
    pub fn parents(&self) -> Vec<String> {
        self.shown().parents()
    }

    /// The newest lease the ops show: its token and the actor whose op began
    /// it (`None` when no op carries a token).
    pub fn lease(&self) -> Option<(u64, &str)> {
        self.fenced
            .values()
            .filter(|o| !self.late.contains(&o.op_id))
            .max_by(|a, b| {
                (a.fence, std::cmp::Reverse(rank(a))).cmp(&(b.fence, std::cmp::Reverse(rank(b))))
            })
            .map(|o| (o.fence.unwrap_or(0), o.actor.as_str()))
    }

    /// The newest token `actor` wrote under on this issue, if any.
    pub fn held_by(&self, actor: &str) -> Option<u64> {
        self.fenced
            .values()
            .filter(|o| o.actor == actor)
            .filter_map(|o| o.fence)
            .max()
    }

    /// The visible writes of `field`: (op id, replica, whether it carries a
    /// lease token).
    pub fn field_writers(&self, field: &str) -> Vec<(&str, &str, bool)> {
        self.shown()
            .registers
            .get(field)
            .map(|r| {
                r.visible()
                    .map(|(id, (_, s))| (id.as_str(), &*s.replica, self.fenced.contains_key(id)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether the op `op_id` is a late write under a lapsed lease (kept out
    /// of the fold).
    pub fn is_late(&self, op_id: &str) -> bool {
        self.late.contains(op_id)
    }

    /// The late writes no resolution has settled yet, first by rank.
    pub fn unsettled_late(&self) -> Vec<&Op> {
        let settled = &self.shown().settled;
        let mut ops: Vec<&Op> = self
            .late
            .iter()
            .filter(|id| !settled.contains(*id))
            .filter_map(|id| self.fenced.get(id))
            .collect();
        ops.sort_by(|a, b| rank(a).cmp(&rank(b)));
        ops
    }

    /// The displayed issue, or `None` while no create op has been applied;
    /// unsettled late writes make a `claim` conflict.
    pub fn materialise(&self) -> Option<Materialised> {
        let mut m = self.shown().materialise()?;
        m.late = !self.late.is_empty();
        if !m.deleted
            && let Some(c) = self.claim_conflict()
        {
            m.conflicts.push(c);
            m.conflicts.sort_by(|a, b| a.field.cmp(&b.field));
        }
        Some(m)
    }

    /// The `claim` conflict: the op that began the newest lease, then each
    /// unsettled late write with its token and what it would have changed.
    fn claim_conflict(&self) -> Option<Conflict> {
        let late = self.unsettled_late();
        if late.is_empty() {
            return None;
        }
        let (token, _) = self.lease()?;
        let began = self
            .fenced
            .values()
            .filter(|o| o.fence == Some(token))
            .min_by(|a, b| rank(a).cmp(&rank(b)))?;
        let mut contenders = vec![contender(
            &began.op_id,
            json!({ "fence": token, "lease": "current" }),
            &super::crdt::Stamp::of(began),
        )];
        for op in late {
            contenders.push(contender(
                &op.op_id,
                json!({ "fence": op.fence, "late": what(op) }),
                &super::crdt::Stamp::of(op),
            ));
        }
        Some(Conflict {
            issue_id: self.id().to_string(),
            field: CLAIM_FIELD.into(),
            contenders,
        })
    }
}

/// What an op would have changed, for a person reading the conflict.
fn what(op: &Op) -> Value {
    match (&op.kind, &op.field) {
        (OpKind::Set, Some(field)) => json!({ field.clone(): op.value }),
        (kind, _) => json!({ kind.as_str(): op.value }),
    }
}
