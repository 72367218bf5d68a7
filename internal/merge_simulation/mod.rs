//! The merge simulation: the same multi-agent workloads merged two
//! ways, scored against the workload's own causal history.
//!
//! - **Naive last-writer-wins**: each clone keeps one record per issue (as a JSONL
//!   snapshot line) stamped with its own wall clock; merging keeps the record with
//!   the later stamp. This is how snapshot files merged in the Go bd era.
//! - **bd**: each clone keeps ops; merging is the union of op sets, folded by
//!   [`crate::merge::IssueDoc`] exactly as the real tracker does.
//!
//! Agents work on several clones whose wall clocks are skewed by up to a few
//! seconds, syncing pairwise at random, then everyone syncs until quiet. Every
//! write remembers which writes its clone had seen when it was made. From that:
//! - a write is **superseded** if a later write to the same thing had seen it
//!   (a label add by a remove that saw it; anything by a delete that saw it);
//! - every write that is not superseded must still be visible at the end: as the
//!   value, or as a contender of a recorded conflict (otherwise it is **lost**);
//! - a **semantic conflict** is two or more unsuperseded writes of different
//!   values to one field, or an unsuperseded delete racing a write it did not see;
//!   it is **escalated** if the final state records it as a conflict (on a
//!   deleted issue, which has no fields, a field's conflict is recorded by its
//!   contenders all being listed in the `deleted` conflict);
//! - a visible write is **attributed** if the final state can name who wrote it.
//!
//! `examples/merge_simulation.rs` prints the table; `tests/it/merge_simulation.rs` holds bd to
//! zero lost writes, full attribution and every conflict escalated.
//!
//! This file runs the workloads through both strategies; `score` judges the
//! outcome against the history and renders the table.

mod score;

pub use score::{Score, table};

use crate::merge::IssueDoc;
use crate::model::{Hlc, Op, OpKind};
use score::{score_bd, score_lww};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A multi-agent workload.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Shown in the table.
    pub name: &'static str,
    /// Clones (one agent each).
    pub clones: usize,
    /// Issues the agents share.
    pub issues: usize,
    /// Writes in all.
    pub steps: usize,
    /// One pairwise sync per this many writes (0: none until the end).
    pub sync_every: usize,
    /// Clock skew: clone `k`'s wall clock is off by up to this much.
    pub skew_ms: u64,
    /// Per mille of writes that delete an issue.
    pub delete_per_mille: u64,
    /// PRNG seed.
    pub seed: u64,
}

/// The standard workloads.
pub fn workloads() -> Vec<Workload> {
    vec![
        Workload {
            name: "hot issue (4 agents, 3 issues)",
            clones: 4,
            issues: 3,
            steps: 240,
            sync_every: 6,
            skew_ms: 1_500,
            delete_per_mille: 0,
            seed: 7,
        },
        Workload {
            name: "busy tracker (6 agents, 40 issues)",
            clones: 6,
            issues: 40,
            steps: 600,
            sync_every: 4,
            skew_ms: 2_000,
            delete_per_mille: 10,
            seed: 11,
        },
        Workload {
            name: "offline then merge (3 agents, 15 issues)",
            clones: 3,
            issues: 15,
            steps: 300,
            sync_every: 0,
            skew_ms: 3_000,
            delete_per_mille: 20,
            seed: 23,
        },
    ]
}

const FIELDS: &[&str] = &["title", "status", "assignee", "priority", "description"];
const LABELS: &[&str] = &["ui", "db", "urgent", "infra"];

#[derive(Debug, Clone)]
enum Action {
    Set(&'static str, Value),
    LabelAdd(&'static str),
    LabelRm(&'static str),
    Comment(String),
    Delete,
}

#[derive(Debug, Clone)]
struct Write {
    clone: usize,
    issue: usize,
    action: Action,
    /// Writes this clone had seen when it made this one.
    seen: BTreeSet<usize>,
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn issue_id(i: usize) -> String {
    format!("s-{i:03}")
}

fn actor(k: usize) -> String {
    format!("agent{k}")
}

// ---- bd: ops folded by the real merge code --------------------------------

struct BdClone {
    k: usize,
    docs: HashMap<usize, IssueDoc>,
    ops: BTreeMap<String, Op>,
    hlc: Hlc,
    seq: u64,
}

impl BdClone {
    fn doc(&mut self, issue: usize) -> &mut IssueDoc {
        self.docs
            .entry(issue)
            .or_insert_with(|| IssueDoc::new(issue_id(issue)))
    }

    fn receive(&mut self, op: &Op, now: u64) {
        if self.ops.contains_key(&op.op_id) {
            return;
        }
        self.hlc = self.hlc.observe(op.hlc, now);
        let issue: usize = op.issue[2..].parse().unwrap_or(0);
        self.doc(issue).apply(op);
        self.ops.insert(op.op_id.clone(), op.clone());
    }

    /// Makes the op for an action, as the real service would (supersedes the
    /// heads this clone sees), and applies it.
    fn write(&mut self, issue: usize, action: &Action, now: u64) -> Op {
        let doc = self.doc(issue);
        let (kind, field, value, supersedes) = match action {
            Action::Set(f, v) => (
                OpKind::Set,
                Some(f.to_string()),
                v.clone(),
                doc.field_heads(f),
            ),
            Action::LabelAdd(l) => (OpKind::LabelAdd, None, json!(l), vec![]),
            Action::LabelRm(l) => (OpKind::LabelRemove, None, json!(l), doc.label_heads(l)),
            Action::Comment(t) => (
                OpKind::Comment,
                None,
                json!({"text": t, "author": actor(self.k)}),
                vec![],
            ),
            Action::Delete => (OpKind::Delete, None, Value::Null, doc.all_heads()),
        };
        self.hlc = self.hlc.tick(now);
        self.seq += 1;
        let op = Op {
            op_id: String::new(),
            issue: issue_id(issue),
            of: None,
            kind,
            field,
            value,
            supersedes,
            fence: None,
            hlc: self.hlc,
            actor: actor(self.k),
            replica: format!("clone{}", self.k),
            seq: self.seq,
        }
        .seal();
        self.receive(&op, now);
        op
    }
}

// ---- naive last-writer-wins: whole records by wall-clock stamp ------------

#[derive(Debug, Clone, PartialEq)]
struct Record {
    fields: BTreeMap<String, Value>,
    labels: BTreeSet<String>,
    comments: Vec<(String, String)>,
    deleted: bool,
    /// The writing clone's wall clock, and the clone (tie-break).
    stamp: (u64, usize),
}

struct LwwClone {
    records: BTreeMap<usize, Record>,
}

impl LwwClone {
    fn write(&mut self, k: usize, issue: usize, action: &Action, clock: u64) {
        let r = self.records.entry(issue).or_insert_with(|| Record {
            fields: BTreeMap::new(),
            labels: BTreeSet::new(),
            comments: Vec::new(),
            deleted: false,
            stamp: (0, 0),
        });
        match action {
            Action::Set(f, v) => {
                r.fields.insert(f.to_string(), v.clone());
            }
            Action::LabelAdd(l) => {
                r.labels.insert(l.to_string());
            }
            Action::LabelRm(l) => {
                r.labels.remove(*l);
            }
            Action::Comment(t) => r.comments.push((actor(k), t.clone())),
            Action::Delete => r.deleted = true,
        }
        r.stamp = (clock, k);
    }

    fn merge_from(&mut self, other: &LwwClone) {
        for (issue, theirs) in &other.records {
            match self.records.get(issue) {
                Some(mine) if mine.stamp >= theirs.stamp => {}
                _ => {
                    self.records.insert(*issue, theirs.clone());
                }
            }
        }
    }
}

/// Runs `w` through both strategies: `[last-writer-wins, bd]`.
pub fn run(w: &Workload) -> [Score; 2] {
    let mut rng = Rng(w.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let skew: Vec<i64> = (0..w.clones)
        .map(|_| rng.below(2 * w.skew_ms + 1) as i64 - w.skew_ms as i64)
        .collect();
    let base: u64 = 1_800_000_000_000;
    let mut bd: Vec<BdClone> = (0..w.clones)
        .map(|k| BdClone {
            k,
            docs: HashMap::new(),
            ops: BTreeMap::new(),
            hlc: Hlc::default(),
            seq: 0,
        })
        .collect();
    let mut lww: Vec<LwwClone> = (0..w.clones)
        .map(|_| LwwClone {
            records: BTreeMap::new(),
        })
        .collect();
    // Clone 0 creates every issue; everyone has them before the work starts.
    let mut creates = Vec::new();
    for i in 0..w.issues {
        bd[0].hlc = bd[0].hlc.tick(base);
        bd[0].seq += 1;
        let op = Op {
            op_id: String::new(),
            issue: issue_id(i),
            of: None,
            kind: OpKind::Create,
            field: None,
            value: json!({"title": format!("issue {i}"), "status": "open", "priority": 2}),
            supersedes: vec![],
            fence: None,
            hlc: bd[0].hlc,
            actor: actor(0),
            replica: "clone0".into(),
            seq: bd[0].seq,
        }
        .seal();
        creates.push(op);
        lww[0].write(
            0,
            i,
            &Action::Set("title", json!(format!("issue {i}"))),
            base,
        );
    }
    for c in bd.iter_mut() {
        for op in &creates {
            c.receive(op, base);
        }
    }
    let first = lww[0].records.clone();
    for c in lww.iter_mut().skip(1) {
        c.records = first.clone();
    }

    let mut writes: Vec<Write> = Vec::new();
    let mut ops_of: Vec<Op> = Vec::new(); // bd's op for each write
    let mut known: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); w.clones];
    let sync = |a: usize,
                b: usize,
                bd: &mut Vec<BdClone>,
                lww: &mut Vec<LwwClone>,
                known: &mut Vec<BTreeSet<usize>>,
                now: u64| {
        let union: BTreeSet<usize> = known[a].union(&known[b]).copied().collect();
        known[a] = union.clone();
        known[b] = union;
        let (from_a, from_b): (Vec<Op>, Vec<Op>) = (
            bd[a].ops.values().cloned().collect(),
            bd[b].ops.values().cloned().collect(),
        );
        for op in &from_b {
            bd[a].receive(op, now);
        }
        for op in &from_a {
            bd[b].receive(op, now);
        }
        let snapshot_b = LwwClone {
            records: lww[b].records.clone(),
        };
        lww[a].merge_from(&snapshot_b);
        let snapshot_a = LwwClone {
            records: lww[a].records.clone(),
        };
        lww[b].merge_from(&snapshot_a);
    };

    for step in 0..w.steps {
        let now = base + 1_000 + step as u64 * 250;
        let k = rng.below(w.clones as u64) as usize;
        let issue = rng.below(w.issues as u64) as usize;
        let roll = rng.below(1000);
        let action = if roll < w.delete_per_mille {
            Action::Delete
        } else {
            match rng.below(10) {
                0..=4 => {
                    let f = FIELDS[rng.below(FIELDS.len() as u64) as usize];
                    let v = match f {
                        "priority" => json!(rng.below(5)),
                        "status" => json!(
                            ["open", "in_progress", "blocked", "closed"][rng.below(4) as usize]
                        ),
                        "assignee" => json!(actor(k)),
                        _ => json!(format!("{f} by {} at {step}", actor(k))),
                    };
                    Action::Set(f, v)
                }
                5 | 6 => Action::LabelAdd(LABELS[rng.below(LABELS.len() as u64) as usize]),
                7 => Action::LabelRm(LABELS[rng.below(LABELS.len() as u64) as usize]),
                _ => Action::Comment(format!("note {step} from {}", actor(k))),
            }
        };
        let id = writes.len();
        writes.push(Write {
            clone: k,
            issue,
            action: action.clone(),
            seen: known[k].clone(),
        });
        ops_of.push(bd[k].write(issue, &action, now));
        let clock = (now as i64 + skew[k]) as u64;
        lww[k].write(k, issue, &action, clock);
        known[k].insert(id);
        if w.sync_every > 0 && step % w.sync_every == w.sync_every - 1 {
            let a = rng.below(w.clones as u64) as usize;
            let b = rng.below(w.clones as u64) as usize;
            if a != b {
                sync(a, b, &mut bd, &mut lww, &mut known, now);
            }
        }
    }
    // Everyone syncs until quiet (two all-pairs rounds reach a fixed point).
    let end = base + 1_000 + w.steps as u64 * 250 + 1_000;
    for _ in 0..2 {
        for a in 0..w.clones {
            for b in 0..w.clones {
                if a != b {
                    sync(a, b, &mut bd, &mut lww, &mut known, end);
                }
            }
        }
    }
    [
        score_lww(w, &writes, &lww),
        score_bd(w, &writes, &ops_of, &bd),
    ]
}
