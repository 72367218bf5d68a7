//! Applying ops to one issue: the merge rules, as pure code.
//!
//! An [`IssueDoc`] is a fold of the ops of one issue. Every part of it is a
//! grow-only set (ops seen, superseded ids, adds, removed adds, comments,
//! deletes) or is fixed by them (a register's visible writes: every write not
//! among its superseded ids), so applying the same ops in any order, any number
//! of times, yields the same [`IssueDoc::materialise`] output. The rules:
//!
//! - Scalars are multi-value registers. A write is visible unless some op of the
//!   same field names it in `supersedes`. One visible value is the value; several
//!   visible values that differ are a [`Conflict`] listing every contender, and the
//!   displayed value is the contender with the greatest (hlc, replica, op id), so
//!   every replica shows the same one. Wall-clock time never decides a conflict.
//!   bd's own writes (a lapsed claim returned to open) yield to an agent's
//!   concurrent write: not shown, not a contender.
//! - Labels and dependencies are add-wins sets: a remove names the adds it saw, so a
//!   concurrent add survives it.
//! - Comments are append-only.
//! - A delete is a tombstone naming every write its author saw. An edit it did not
//!   see makes a `deleted` conflict; the issue stays deleted (never resurrected by
//!   itself) and the conflict is listed.
//! - Two creates of one id (two clones numbered a child alike, or chose one
//!   `--id`) are two issues, never one: see [`partition`]. A set of the field
//!   `id` acknowledges the collision (see [`IssueDoc::acknowledged`]).
//!
//! The parts: `crdt` holds the building blocks (stamps, multi-value registers,
//! add-wins sets), `partition` the rule for two creates of one id; this file
//! folds ops into an [`IssueDoc`] and materialises it.

mod crdt;
mod fence;
mod partition;
#[cfg(test)]
mod tests;

pub use fence::{CLAIM_FIELD, IssueDoc};
pub use partition::{DISPLACED_SUFFIX_LEN, displaced_id, partition, split_displaced, wire_id};

use crate::clock::{format_rfc3339, parse_rfc3339};
use crate::model::{
    Comment, Conflict, Contender, DepType, Dependency, Hlc, Issue, IssueType, Op, OpKind,
    PRIORITY_DEFAULT, STRUCTURAL_FIELDS, Status,
};
use crdt::{AddWinsSet, Register, Stamp};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Metadata kept with a dependency edge.
#[derive(Debug, Clone)]
struct EdgeMeta {
    created_at: String,
    created_by: String,
}

/// The materialised result of an issue's ops.
#[derive(Debug, Clone, PartialEq)]
pub struct Materialised {
    /// The issue as displayed.
    pub issue: Issue,
    /// Whether a delete op applies (the issue is hidden).
    pub deleted: bool,
    /// Open conflicts on this issue, sorted by field.
    pub conflicts: Vec<Conflict>,
    /// `updated_at` as epoch milliseconds, for sorting and filters.
    pub updated_ms: i64,
    /// Some ops are kept out as late writes under a lapsed lease (see
    /// [`fence`]): a comment shown before may be gone.
    pub late: bool,
}

/// The conflict field of moves that crossed: an issue under two parents
/// shows one and lists both (settled by `bd update ID --parent P` or `bd
/// resolve ID --field parent`).
pub const PARENT_FIELD: &str = "parent";

/// The fold of a set of ops of one issue (every op, or every op but the
/// late writes under lapsed leases: see [`fence`]); see the module docs for
/// the rules.
#[derive(Debug, Clone, Default)]
struct Fold {
    id: String,
    applied: BTreeSet<String>,
    creates: BTreeMap<String, Stamp>,
    registers: BTreeMap<String, Register>,
    labels: AddWinsSet<String, ()>,
    deps: AddWinsSet<(String, String), EdgeMeta>,
    comments: BTreeMap<String, (Comment, i64, Stamp)>,
    deletes: BTreeMap<String, (Stamp, BTreeSet<String>)>,
    updated: Option<(i64, String)>,
    /// Creates of this id acknowledged as displaced (sets of the field `id`).
    acknowledged: BTreeSet<String>,
    /// The id the create names (differs from `id` for a displaced issue).
    wire: Option<String>,
    /// Late writes under lapsed leases settled by a `claim` resolution.
    settled: BTreeSet<String>,
    /// Each actor's latest op on the issue (hlc wall ms): a claim with a
    /// time limit lasts until its holder's latest op plus the limit.
    last_by: BTreeMap<String, u64>,
}

impl Fold {
    /// An empty fold for issue `id`.
    fn new(id: impl Into<String>) -> Self {
        Fold {
            id: id.into(),
            ..Default::default()
        }
    }

    /// The issue id.
    fn id(&self) -> &str {
        &self.id
    }

    /// Whether a create op has been applied.
    fn exists(&self) -> bool {
        !self.creates.is_empty()
    }

    /// Whether a delete op has been applied.
    fn is_deleted(&self) -> bool {
        !self.deletes.is_empty()
    }

    /// Whether the issue exists and is not deleted.
    fn is_live(&self) -> bool {
        self.exists() && !self.is_deleted()
    }

    /// Number of distinct ops applied.
    fn op_count(&self) -> usize {
        self.applied.len()
    }

    /// The op id of the create that made this issue (the least ranked, should
    /// a database from before [`partition`] hold several).
    fn create_op_id(&self) -> Option<&str> {
        self.creates
            .iter()
            .min_by(|a, b| a.1.order_key(a.0).cmp(&b.1.order_key(b.0)))
            .map(|(id, _)| id.as_str())
    }

    /// The id this issue's ops name: the one its create gave it (for a
    /// displaced issue, the id another create kept).
    fn wire(&self) -> Option<&str> {
        self.wire.as_deref()
    }

    /// The replica that made this issue's create.
    fn create_replica(&self) -> Option<&str> {
        let id = self.create_op_id()?;
        self.creates.get(id).map(|s| &*s.replica)
    }

    /// Op ids of creates of this id that an `id` set acknowledged as displaced.
    fn acknowledged(&self) -> &BTreeSet<String> {
        &self.acknowledged
    }

    /// Whether `op` is for this issue: its `issue` is this id or the id this
    /// one was displaced from.
    fn owns(&self, op: &Op) -> bool {
        op.issue == self.id || split_displaced(&self.id).is_some_and(|(w, _)| op.issue == w)
    }

    /// Applies `op`; returns false if it was already applied or is for another
    /// issue (one whose `issue` is neither this id nor the id it was displaced from).
    fn apply(&mut self, op: &Op) -> bool {
        if !self.owns(op) || !self.applied.insert(op.op_id.clone()) {
            return false;
        }
        let stamp = Stamp::of(op);
        let id = op.op_id.clone();
        let mut effective = None;
        match &op.kind {
            OpKind::Create => {
                if let Value::Object(fields) = &op.value {
                    for (k, v) in fields {
                        match k.as_str() {
                            "updated_at" => {
                                effective = v.as_str().and_then(|s| Some((parse_rfc3339(s)?, s)));
                            }
                            "labels" => {
                                for label in
                                    v.as_array().into_iter().flatten().filter_map(Value::as_str)
                                {
                                    self.add_label(format!("{id}:{label}"), label, &stamp);
                                }
                            }
                            "dependencies" => {
                                for (n, dep) in v.as_array().into_iter().flatten().enumerate() {
                                    self.add_dep(format!("{id}:d{n}"), dep, op, &stamp);
                                }
                            }
                            "comments" => {
                                for (n, c) in v.as_array().into_iter().flatten().enumerate() {
                                    self.add_comment(format!("{id}:c{n}"), c, op);
                                }
                            }
                            k if STRUCTURAL_FIELDS.contains(&k) => {}
                            _ => {
                                let reg = self.registers.entry(k.clone()).or_default();
                                reg.write(&id, v, &stamp);
                            }
                        }
                    }
                }
                self.creates.insert(id.clone(), stamp.clone());
                self.wire = Some(op.issue.clone());
            }
            OpKind::Set if op.field.as_deref() == Some("id") => {
                // Acknowledges displaced creates (a grow-only set, so any
                // order of acknowledgements gives the same result).
                let acked = op.value.get("acknowledged").and_then(Value::as_array);
                for id in acked.into_iter().flatten().filter_map(Value::as_str) {
                    self.acknowledged.insert(id.to_string());
                }
                return true; // a notice settled, not an edit: `updated_at` stays
            }
            // Approves applying held ops now (see `storage::sqlite::CLOCK_SKEW_FIELD`):
            // storage acts on it; it is not a field of the issue.
            OpKind::Set if op.field.as_deref() == Some("clock_skew") => return true,
            // Settles late writes under lapsed leases (see `fence`): they stay
            // out of the fold, and are no longer listed.
            OpKind::Set if op.field.as_deref() == Some(CLAIM_FIELD) => {
                self.settled.extend(op.supersedes.iter().cloned());
                return true;
            }
            OpKind::Set => {
                if let Some(field) = &op.field {
                    let reg = self.registers.entry(field.clone()).or_default();
                    reg.write(&id, &op.value, &stamp);
                    reg.supersede(&op.supersedes);
                }
            }
            OpKind::LabelAdd => {
                if let Some(label) = op.value.as_str() {
                    self.add_label(id.clone(), label, &stamp);
                }
            }
            OpKind::LabelRemove => self.labels.removed.extend(op.supersedes.iter().cloned()),
            OpKind::DepAdd => self.add_dep(id.clone(), &op.value, op, &stamp),
            OpKind::DepRemove => self.deps.removed.extend(op.supersedes.iter().cloned()),
            OpKind::Comment => self.add_comment(id.clone(), &op.value, op),
            OpKind::Delete => {
                let seen = op.supersedes.iter().cloned().collect();
                self.deletes.insert(id.clone(), (stamp.clone(), seen));
            }
            OpKind::Other(_) => return true,
        }
        let last = self.last_by.entry(op.actor.clone()).or_default();
        *last = (*last).max(op.hlc.wall);
        let (ms, text) = match effective {
            Some((ms, s)) => (ms, s.to_string()),
            None => (op.hlc.wall as i64, format_rfc3339(op.hlc.wall)),
        };
        if self
            .updated
            .as_ref()
            .is_none_or(|u| (ms, &text) > (u.0, &u.1))
        {
            self.updated = Some((ms, text));
        }
        true
    }

    /// Adds `label` under the add tag `tag` (an op id, or `<op id>:<label>` for a
    /// label carried by a create op).
    fn add_label(&mut self, tag: String, label: &str, stamp: &Stamp) {
        self.labels
            .adds
            .entry(label.to_string())
            .or_default()
            .insert(tag, ((), stamp.clone()));
    }

    /// Adds the edge described by `value` = {depends_on_id, type, created_at?,
    /// created_by?} under the add tag `tag`; ignores a value without a target.
    fn add_dep(&mut self, tag: String, value: &Value, op: &Op, stamp: &Stamp) {
        let field = |k: &str| value.get(k).and_then(Value::as_str);
        let Some(target) = field("depends_on_id") else {
            return;
        };
        let kind = field("type").unwrap_or("blocks");
        let meta = EdgeMeta {
            created_at: field("created_at")
                .map(str::to_string)
                .unwrap_or_else(|| format_rfc3339(op.hlc.wall)),
            created_by: field("created_by").unwrap_or(&op.actor).to_string(),
        };
        self.deps
            .adds
            .entry((target.to_string(), kind.to_string()))
            .or_default()
            .insert(tag, (meta, stamp.clone()));
    }

    /// Appends the comment `value` = {text, author?, created_at?, id?} under `key`.
    fn add_comment(&mut self, key: String, value: &Value, op: &Op) {
        let field = |k: &str| value.get(k).and_then(Value::as_str);
        let created_at = field("created_at")
            .map(str::to_string)
            .unwrap_or_else(|| format_rfc3339(op.hlc.wall));
        let sort_ms = parse_rfc3339(&created_at).unwrap_or(op.hlc.wall as i64);
        let id = match value.get("id") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => format!("c-{}", &key[..key.len().min(12)]),
        };
        let comment = Comment {
            id,
            issue_id: self.id.clone(),
            author: field("author").unwrap_or(&op.actor).to_string(),
            text: field("text").unwrap_or_default().to_string(),
            created_at,
        };
        self.comments.insert(key, (comment, sort_ms, Stamp::of(op)));
    }

    /// The visible writes of `field` (what a new write must supersede).
    fn field_heads(&self, field: &str) -> Vec<String> {
        self.registers
            .get(field)
            .map(|r| r.visible().map(|(id, _)| id.clone()).collect())
            .unwrap_or_default()
    }

    /// The displayed value of `field`, if it was ever written.
    fn field_value(&self, field: &str) -> Option<&Value> {
        self.registers.get(field).and_then(Register::winner)
    }

    /// Names of fields that currently display a non-null value.
    fn field_names(&self) -> impl Iterator<Item = &str> {
        self.registers
            .iter()
            .filter(|(_, r)| r.winner().is_some_and(|v| !v.is_null()))
            .map(|(k, _)| k.as_str())
    }

    /// The live adds of `label` (what a remove must supersede).
    fn label_heads(&self, label: &str) -> Vec<String> {
        self.labels
            .live_adds(&label.to_string())
            .into_iter()
            .cloned()
            .collect()
    }

    /// The live adds of the edge to `target` of `dep_type`.
    fn dep_heads(&self, target: &str, dep_type: &str) -> Vec<String> {
        self.deps
            .live_adds(&(target.to_string(), dep_type.to_string()))
            .into_iter()
            .cloned()
            .collect()
    }

    /// Every issue a live parent-child edge points to.
    fn parents(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .deps
            .live_ids()
            .filter(|((_, kind), _, _)| kind == DepType::ParentChild.as_str())
            .map(|((target, _), _, _)| target.clone())
            .collect();
        out.dedup();
        out
    }

    /// With live parent-child edges to more than one issue (moves made on
    /// two clones at once: each took away the edge it saw and added its
    /// own), the parent shown: the one whose latest add ranks highest
    /// (hlc, replica, op id), as a register shows its greatest write; and
    /// the `parent` conflict listing each. `None` with one parent or none.
    fn parent_conflict(&self) -> Option<(String, Conflict)> {
        let mut latest: BTreeMap<&String, (Hlc, String, String, &Stamp)> = BTreeMap::new();
        for ((target, kind), id, s) in self.deps.live_ids() {
            if kind != DepType::ParentChild.as_str() {
                continue;
            }
            let k = key(s, id);
            match latest.get(target) {
                Some(have) if (have.0, &have.1, &have.2) >= (k.0, &k.1, &k.2) => {}
                _ => {
                    latest.insert(target, (k.0, k.1, k.2, s));
                }
            }
        }
        if latest.len() < 2 {
            return None;
        }
        let mut ranked: Vec<_> = latest.into_iter().collect();
        ranked.sort_by(|a, b| (b.1.0, &b.1.1, &b.1.2).cmp(&(a.1.0, &a.1.1, &a.1.2)));
        let shown = ranked[0].0.clone();
        let conflict = Conflict {
            issue_id: self.id.clone(),
            field: PARENT_FIELD.into(),
            contenders: ranked
                .iter()
                .map(|(target, (_, _, id, s))| contender(id, Value::String((*target).clone()), s))
                .collect(),
        };
        Some((shown, conflict))
    }

    /// Every visible write, live add and comment: what a delete must supersede.
    fn all_heads(&self) -> Vec<String> {
        let mut out: BTreeSet<String> = BTreeSet::new();
        for reg in self.registers.values() {
            out.extend(reg.visible().map(|(id, _)| id.clone()));
        }
        out.extend(self.labels.live_ids().map(|(_, id, _)| id.clone()));
        out.extend(self.deps.live_ids().map(|(_, id, _)| id.clone()));
        out.extend(self.comments.keys().cloned());
        out.into_iter().collect()
    }

    /// When the assignee's claim lapses: their latest op on the issue plus
    /// the claim's time limit, while the issue is in progress (`None`: no
    /// claim, or one without a limit).
    fn claim_expiry(&self, status: &Status, assignee: Option<String>, ttl: Option<String>) -> Option<String> {
        if *status != Status::InProgress {
            return None;
        }
        let ttl = crate::clock::parse_duration_ms(&ttl?)?;
        // The holder's latest op, or the write of the limit itself when the
        // holder has none here (an imported claim: its limit starts at the
        // import).
        let set_at = self
            .registers
            .get("claim_ttl")
            .and_then(|r| r.ranked().first().map(|(_, (_, s))| s.hlc.wall))
            .unwrap_or(0);
        let last = self.last_by.get(&assignee?).copied().unwrap_or(0).max(set_at);
        Some(format_rfc3339(last.saturating_add(ttl)))
    }

    /// The displayed issue, or `None` while no create op has been applied.
    fn materialise(&self) -> Option<Materialised> {
        let create = self
            .creates
            .iter()
            .min_by(|a, b| a.1.order_key(a.0).cmp(&b.1.order_key(b.0)))?;
        // One pass over the registers: each field's displayed value, extra
        // fields, and conflicts (different values among the visible writes).
        // Sorted by field (the registers are a BTreeMap): looked up by binary
        // search, cheaper than hashing for a dozen short keys.
        let mut shown: Vec<(&str, &Value)> = Vec::with_capacity(self.registers.len());
        let mut extra = BTreeMap::new();
        let mut conflicts = Vec::new();
        for (field, reg) in &self.registers {
            let ranked = reg.ranked();
            let Some((_, (first, _))) = ranked.first() else {
                continue;
            };
            if ranked.iter().skip(1).any(|(_, (v, _))| v != first) {
                conflicts.push(Conflict {
                    issue_id: self.id.clone(),
                    field: field.clone(),
                    contenders: ranked
                        .iter()
                        .map(|(id, (v, s))| contender(id, v.clone(), s))
                        .collect(),
                });
            }
            shown.push((field.as_str(), first));
            if !first.is_null() && !crate::model::SCALAR_FIELDS.contains(&field.as_str()) {
                extra.insert(field.clone(), first.clone());
            }
        }
        let get = |f: &str| -> Option<&Value> {
            shown
                .binary_search_by(|(k, _)| (*k).cmp(f))
                .ok()
                .map(|i| shown[i].1)
        };
        let text = |f: &str| -> String {
            match get(f) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            }
        };
        let opt = |f: &str| -> Option<String> { Some(text(f)).filter(|s| !s.is_empty()) };
        let priority = match get("priority") {
            Some(Value::Number(n)) => n.as_i64().unwrap_or(PRIORITY_DEFAULT),
            Some(Value::String(s)) => s.trim().parse().unwrap_or(PRIORITY_DEFAULT),
            _ => PRIORITY_DEFAULT,
        };
        let status = opt("status").map_or(Status::Open, |s| Status::from_wire(&s));
        let issue_type = opt("issue_type").map_or(IssueType::Task, |s| IssueType::from_wire(&s));
        // One parent: crossed moves show the latest, and are a conflict.
        let parent = self.parent_conflict().map(|(shown, c)| {
            conflicts.push(c);
            shown
        });
        if self.is_deleted() {
            // A deleted issue has no fields to show, so no conflicts on them:
            // the delete settled what it saw, and a write it did not see is a
            // contender of the `deleted` conflict instead. (Field conflicts kept
            // on a deleted issue could never be resolved.)
            conflicts.clear();
        }
        if let Some(c) = self.delete_conflict() {
            conflicts.push(c);
        }
        conflicts.sort_by(|a, b| a.field.cmp(&b.field));
        let mut comments: Vec<_> = self.comments.iter().collect();
        comments.sort_by(|a, b| (a.1.1, a.0).cmp(&(b.1.1, b.0)));
        let (updated_ms, updated_at) = self
            .updated
            .clone()
            .unwrap_or_else(|| (create.1.hlc.wall as i64, format_rfc3339(create.1.hlc.wall)));
        let claim_expires_at = self.claim_expiry(&status, opt("assignee"), opt("claim_ttl"));
        let issue = Issue {
            id: self.id.clone(),
            title: text("title"),
            description: text("description"),
            design: text("design"),
            acceptance_criteria: text("acceptance_criteria"),
            notes: text("notes"),
            status,
            priority,
            issue_type,
            assignee: opt("assignee"),
            claim_ttl: opt("claim_ttl"),
            claim_expires_at,
            external_ref: opt("external_ref"),
            created_at: opt("created_at").unwrap_or_else(|| format_rfc3339(create.1.hlc.wall)),
            created_by: text("created_by"),
            updated_at,
            closed_at: opt("closed_at"),
            close_reason: opt("close_reason"),
            labels: self.labels.present().map(|(k, _, _)| k.clone()).collect(),
            dependencies: self
                .deps
                .present()
                .filter(|((target, kind), _, _)| {
                    parent.is_none()
                        || kind != DepType::ParentChild.as_str()
                        || parent.as_ref() == Some(target)
                })
                .map(|((target, kind), meta, _)| Dependency {
                    issue_id: self.id.clone(),
                    depends_on_id: target.clone(),
                    dep_type: DepType::from_wire(kind),
                    created_at: meta.created_at.clone(),
                    created_by: meta.created_by.clone(),
                })
                .collect(),
            comments: comments
                .into_iter()
                .map(|(_, (c, _, _))| c.clone())
                .collect(),
            extra,
        };
        Some(Materialised {
            issue,
            deleted: self.is_deleted(),
            conflicts,
            updated_ms,
            late: false,
        })
    }

    /// Writes the deletes did not see, as a `deleted` conflict.
    fn delete_conflict(&self) -> Option<Conflict> {
        if self.deletes.is_empty() {
            return None;
        }
        let seen: BTreeSet<&String> = self.deletes.values().flat_map(|(_, s)| s).collect();
        let mut contenders: Vec<(Contender, (Hlc, String, String))> = Vec::new();
        for (field, reg) in &self.registers {
            for (id, (v, s)) in reg.visible().filter(|(id, _)| !seen.contains(id)) {
                let value = serde_json::json!({ field.clone(): v });
                contenders.push((contender(id, value, s), key(s, id)));
            }
        }
        for (label, id, s) in self
            .labels
            .live_ids()
            .filter(|(_, id, _)| !seen.contains(id))
        {
            let value = serde_json::json!({ "label_add": label });
            contenders.push((contender(id, value, s), key(s, id)));
        }
        for ((target, kind), id, s) in self.deps.live_ids().filter(|(_, id, _)| !seen.contains(id))
        {
            let value = serde_json::json!({ "dep_add": { "depends_on_id": target, "type": kind } });
            contenders.push((contender(id, value, s), key(s, id)));
        }
        // A comment written without knowing of the delete is an edit it did not
        // see. (Comments carried by the create are part of what every delete saw.)
        for (id, (c, _, s)) in self.comments.iter().filter(|(id, _)| !seen.contains(*id)) {
            if id.contains(':') {
                continue;
            }
            let value = serde_json::json!({ "comment": c.text });
            contenders.push((contender(id, value, s), key(s, id)));
        }
        if contenders.is_empty() {
            return None;
        }
        for (id, (s, _)) in &self.deletes {
            contenders.push((contender(id, Value::Null, s), key(s, id)));
        }
        contenders.sort_by(|a, b| b.1.cmp(&a.1));
        Some(Conflict {
            issue_id: self.id.clone(),
            field: "deleted".into(),
            contenders: contenders.into_iter().map(|(c, _)| c).collect(),
        })
    }
}

fn key(s: &Stamp, id: &str) -> (Hlc, String, String) {
    (s.hlc, s.replica.to_string(), id.to_string())
}

fn contender(op_id: &str, value: Value, s: &Stamp) -> Contender {
    Contender {
        op_id: op_id.to_string(),
        value,
        actor: s.actor.to_string(),
        replica: s.replica.to_string(),
        at: format_rfc3339(s.hlc.wall),
    }
}
