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

use crate::merge::IssueDoc;
use crate::model::{Hlc, Op, OpKind};
use serde::{Deserialize, Serialize};
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

/// How one strategy did on one workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Score {
    /// `last-writer-wins` or `bd`.
    pub strategy: String,
    /// The workload's name.
    pub workload: String,
    /// Writes made.
    pub writes: u64,
    /// Writes not superseded by a later write that saw them.
    pub must_survive: u64,
    /// Of those, not visible at the end.
    pub lost: u64,
    /// Whether every clone ended in the same state.
    pub converged: bool,
    /// Visible writes whose author the final state names.
    pub attributed: u64,
    /// Visible writes.
    pub visible: u64,
    /// Semantic conflicts in the history.
    pub conflicts: u64,
    /// Of those, recorded as conflicts at the end.
    pub escalated: u64,
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

/// What the history says must hold at the end.
struct Truth {
    /// Writes not superseded.
    survivors: Vec<usize>,
    /// Label removals that an unsuperseded add they did not see overrides (add
    /// wins): the label stays, and the removal is not a lost write.
    overridden_removals: BTreeSet<usize>,
    /// Semantic conflicts: (issue, field or "deleted").
    conflicts: BTreeSet<(usize, String)>,
}

fn truth(writes: &[Write]) -> Truth {
    let mut superseded = vec![false; writes.len()];
    for (j, later) in writes.iter().enumerate() {
        for &i in &later.seen {
            let w = &writes[i];
            if w.issue != later.issue || i == j {
                continue;
            }
            let covers = match (&later.action, &w.action) {
                (Action::Delete, _) => true,
                (Action::Set(f, _), Action::Set(g, _)) => f == g,
                (Action::LabelRm(l), Action::LabelAdd(m)) => l == m,
                (Action::LabelAdd(l), Action::LabelRm(m)) => l == m,
                _ => false,
            };
            if covers {
                superseded[i] = true;
            }
        }
    }
    let survivors: Vec<usize> = (0..writes.len()).filter(|&i| !superseded[i]).collect();
    let mut conflicts = BTreeSet::new();
    let mut values: BTreeMap<(usize, &str), BTreeSet<String>> = BTreeMap::new();
    for &i in &survivors {
        if let Action::Set(f, v) = &writes[i].action {
            values
                .entry((writes[i].issue, f))
                .or_default()
                .insert(v.to_string());
        }
    }
    for ((issue, f), vs) in values {
        if vs.len() > 1 {
            conflicts.insert((issue, f.to_string()));
        }
    }
    for &d in &survivors {
        if !matches!(writes[d].action, Action::Delete) {
            continue;
        }
        let raced = survivors.iter().any(|&i| {
            i != d
                && writes[i].issue == writes[d].issue
                && !writes[d].seen.contains(&i)
                && matches!(
                    writes[i].action,
                    Action::Set(..) | Action::LabelAdd(_) | Action::Comment(_)
                )
        });
        if raced {
            conflicts.insert((writes[d].issue, "deleted".into()));
        }
    }
    let overridden_removals = survivors
        .iter()
        .copied()
        .filter(|&r| {
            let Action::LabelRm(l) = &writes[r].action else {
                return false;
            };
            survivors.iter().any(|&a| {
                writes[a].issue == writes[r].issue
                    && !writes[r].seen.contains(&a)
                    && matches!(&writes[a].action, Action::LabelAdd(m) if m == l)
            })
        })
        .collect();
    Truth {
        survivors,
        overridden_removals,
        conflicts,
    }
}

/// Counts the must-survive writes by what `judge` says of each: `None` lost,
/// `Some(named)` visible (and whether the final state names its author).
fn tally(
    strategy: &str,
    w: &Workload,
    writes: &[Write],
    t: &Truth,
    converged: bool,
    escalated: u64,
    mut judge: impl FnMut(usize) -> Option<bool>,
) -> Score {
    let (mut lost, mut visible, mut attributed) = (0, 0, 0);
    for &i in &t.survivors {
        match judge(i) {
            None => lost += 1,
            Some(named) => {
                visible += 1;
                attributed += u64::from(named);
            }
        }
    }
    Score {
        strategy: strategy.into(),
        workload: w.name.into(),
        writes: writes.len() as u64,
        must_survive: t.survivors.len() as u64,
        lost,
        converged,
        attributed,
        visible,
        conflicts: t.conflicts.len() as u64,
        escalated,
    }
}

fn score_lww(w: &Workload, writes: &[Write], clones: &[LwwClone]) -> Score {
    let t = truth(writes);
    let fin = &clones[0].records;
    let converged = clones.iter().all(|c| &c.records == fin);
    // A snapshot line has nowhere to record a conflict: none is escalated.
    tally("last-writer-wins", w, writes, &t, converged, 0, |i| {
        let wr = &writes[i];
        let r = fin.get(&wr.issue)?;
        // A deleted record shows nothing but the deletion.
        let (seen, named) = match &wr.action {
            Action::Delete => (r.deleted, false),
            Action::LabelRm(_) if r.deleted => (true, false),
            _ if r.deleted => (false, false),
            Action::Set(f, v) => (r.fields.get(*f) == Some(v), false),
            Action::LabelAdd(l) => (r.labels.contains(*l), false),
            Action::LabelRm(l) => (
                !r.labels.contains(*l) || t.overridden_removals.contains(&i),
                false,
            ),
            Action::Comment(text) => {
                let found = r.comments.iter().any(|(_, c)| c == text);
                (found, found)
            }
        };
        seen.then_some(named)
    })
}

fn score_bd(w: &Workload, writes: &[Write], ops: &[Op], clones: &[BdClone]) -> Score {
    let t = truth(writes);
    let states: Vec<BTreeMap<usize, String>> = clones
        .iter()
        .map(|c| {
            c.docs
                .iter()
                .map(|(i, d)| (*i, format!("{:?}", d.materialise())))
                .collect()
        })
        .collect();
    let converged = states.iter().all(|s| s == &states[0]);
    let fin = &clones[0];
    let escalated = t
        .conflicts
        .iter()
        .filter(|(issue, field)| {
            fin.docs[issue].materialise().is_some_and(|m| {
                m.conflicts.iter().any(|c| &c.field == field)
                    // A deleted issue has no fields: a conflict among writes
                    // its delete did not see is recorded by listing every one
                    // of them in its `deleted` conflict.
                    || (m.deleted
                        && m.conflicts.iter().any(|c| {
                            c.field == "deleted"
                                && t.survivors.iter().all(|&i| {
                                    let same = writes[i].issue == *issue
                                        && matches!(&writes[i].action, Action::Set(f, _) if f == field);
                                    !same || c.contenders.iter().any(|k| k.op_id == ops[i].op_id)
                                })
                        }))
            })
        })
        .count() as u64;
    tally("bd", w, writes, &t, converged, escalated, |i| {
        let wr = &writes[i];
        let op = &ops[i];
        let doc = &fin.docs[&wr.issue];
        let m = doc.materialise()?;
        // Visible: the value shown, a listed conflict contender, or (for a
        // deleted issue) a contender of its `deleted` conflict.
        let contender = m
            .conflicts
            .iter()
            .any(|c| c.contenders.iter().any(|k| k.op_id == op.op_id));
        let shown = match &wr.action {
            Action::Delete => m.deleted,
            // A removal holds on a deleted issue: the label is gone with it.
            Action::LabelRm(_) if m.deleted => true,
            _ if m.deleted => false,
            Action::Set(f, v) => {
                doc.field_value(f) == Some(v) && doc.field_heads(f).contains(&op.op_id)
            }
            Action::LabelAdd(l) => m.issue.labels.iter().any(|x| x == l),
            Action::LabelRm(l) => {
                !m.issue.labels.iter().any(|x| x == l) || t.overridden_removals.contains(&i)
            }
            Action::Comment(text) => m.issue.comments.iter().any(|c| &c.text == text),
        };
        if !(shown || contender) {
            return None;
        }
        // Who wrote it: the op that holds the value (every op names its actor),
        // a contender's actor, a comment's author.
        Some(match &wr.action {
            Action::Comment(text) => m
                .issue
                .comments
                .iter()
                .any(|c| &c.text == text && c.author == actor(wr.clone)),
            _ => fin
                .ops
                .get(&op.op_id)
                .is_some_and(|o| o.actor == actor(wr.clone)),
        })
    })
}

/// The scores as a Markdown table.
pub fn table(scores: &[Score]) -> String {
    let mut s = String::from(
        "| workload | strategy | writes | must survive | lost | converged | attributed | conflicts escalated |\n|---|---|---:|---:|---:|---|---:|---:|\n",
    );
    for c in scores {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {}/{} | {}/{} |\n",
            c.workload,
            c.strategy,
            c.writes,
            c.must_survive,
            c.lost,
            if c.converged { "yes" } else { "no" },
            c.attributed,
            c.visible,
            c.escalated,
            c.conflicts
        ));
    }
    s
}
