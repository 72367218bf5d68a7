//! Scoring a simulated run: what its causal history says must hold at the end
//! (survivors, overridden label removals, semantic conflicts), each strategy's
//! final state held against it, and the scores as a table.

use super::{Action, BdClone, LwwClone, Workload, Write, actor};
use crate::model::Op;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

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

pub(super) fn score_lww(w: &Workload, writes: &[Write], clones: &[LwwClone]) -> Score {
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

pub(super) fn score_bd(w: &Workload, writes: &[Write], ops: &[Op], clones: &[BdClone]) -> Score {
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
