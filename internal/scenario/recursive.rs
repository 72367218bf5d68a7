//! Recursive agents: plans that rewrite themselves. Each goal is decomposed
//! into a tree of sub-goals (depth 6, fan-out up to 8); then, round after
//! round, agents rewrite the trees while others work them: they move
//! subtrees under other parents (some moves in one batch), close obsolete
//! branches, insert blockers between siblings, fork another agent's node and
//! join on the fork (an issue of their own blocked by the children they
//! created under the other's node), try moves that would make a cycle, and
//! claim and close ready work.
//!
//! The checker keeps its own model of the tracker, folded from the op file
//! (the ops bd appended for every acknowledged write: no bd code is shared
//! with it), and after every round recomputes the ready set from it by the
//! documented rule, then compares it with bd's `ready`: every answer must
//! match. A move bd accepted that the model says closed a cycle, or a
//! deliberate cycle bd accepted, is a problem too.

use super::{Agent, Fleet, Latencies, Report, Rng, created_ids, ms};
use crate::api::{CreateRequest, ListFilter, Request, Response, UpdateRequest};
use crate::{Error, ErrorKind, Result};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, Seek};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How big a recursive run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecursiveSize {
    /// Goals (tree roots).
    pub goals: usize,
    /// Issues the trees hold at the start, about.
    pub issues: usize,
    /// Agents rewriting and working.
    pub agents: usize,
    /// Rounds (the checker compares after each).
    pub rounds: usize,
    /// Actions each agent takes per round.
    pub actions: usize,
}

/// Depth of the goal trees (a goal, then five levels of sub-goals).
pub const DEPTH: usize = 6;
/// Most children a sub-goal is decomposed into.
pub const FAN_OUT: u64 = 8;

impl RecursiveSize {
    /// The benchmark's size: 100,000 issues in deep trees.
    pub const FULL: RecursiveSize = RecursiveSize {
        goals: 24,
        issues: 100_000,
        agents: 8,
        rounds: 10,
        actions: 10,
    };
    /// The integration tests' size.
    pub const SMALL: RecursiveSize = RecursiveSize {
        goals: 4,
        issues: 1_500,
        agents: 4,
        rounds: 6,
        actions: 8,
    };

    fn describe(&self) -> String {
        format!(
            "{} goals, ~{} issues in trees of depth {DEPTH} and fan-out up to {FAN_OUT}, {} agents, {} rounds of {} actions each",
            self.goals, self.issues, self.agents, self.rounds, self.actions
        )
    }
}

/// What the agents know of the trees: each node's parent and children (as
/// bd acknowledged them), and which nodes are closed.
#[derive(Default)]
struct Plan {
    parent: HashMap<String, String>,
    children: HashMap<String, BTreeSet<String>>,
    closed: BTreeSet<String>,
    /// Goal of each node's tree at creation, and the goals by agent.
    goal_of: HashMap<String, usize>,
    nodes: Vec<String>,
}

impl Plan {
    fn add(&mut self, id: &str, parent: Option<&str>, goal: usize) {
        if let Some(p) = parent {
            self.parent.insert(id.to_string(), p.to_string());
            self.children
                .entry(p.to_string())
                .or_default()
                .insert(id.to_string());
        }
        self.goal_of.insert(id.to_string(), goal);
        self.nodes.push(id.to_string());
    }

    fn reparent(&mut self, id: &str, to: &str) {
        if let Some(old) = self.parent.insert(id.to_string(), to.to_string())
            && let Some(c) = self.children.get_mut(&old)
        {
            c.remove(id);
        }
        self.children
            .entry(to.to_string())
            .or_default()
            .insert(id.to_string());
    }

    /// The children of `id` that are not closed.
    fn open_children(&self, id: &str) -> Vec<String> {
        self.children
            .get(id)
            .map(|c| {
                c.iter()
                    .filter(|c| !self.closed.contains(*c))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `id` and everything under it.
    fn subtree(&self, id: &str) -> Vec<String> {
        let mut out = vec![id.to_string()];
        let mut i = 0;
        while i < out.len() {
            if let Some(c) = self.children.get(&out[i]) {
                out.extend(c.iter().cloned());
            }
            i += 1;
        }
        out
    }

    fn open_node(&self, rng: &mut Rng, goal: Option<usize>) -> Option<String> {
        for _ in 0..64 {
            let n = &self.nodes[rng.draw() as usize % self.nodes.len()];
            if !self.closed.contains(n) && goal.is_none_or(|g| self.goal_of.get(n) == Some(&g)) {
                return Some(n.clone());
            }
        }
        None
    }
}

/// Counts of what the agents did.
#[derive(Default)]
struct Tally {
    rewrites: usize,
    moves: usize,
    batch_moves: usize,
    branches_closed: usize,
    blockers: usize,
    joins: usize,
    closed: usize,
    cycles_tried: usize,
    cycles_refused: usize,
    /// Deliberate cycles bd accepted (must be none).
    cycles_accepted: Vec<String>,
}

/// Runs the scenario against a new tracker served by a daemon started from
/// `exe`.
pub fn run(exe: &std::path::Path, size: RecursiveSize, seed: u64) -> Result<Report> {
    let fleet = Fleet::new(exe, "plan")?;
    run_on(&fleet, size, seed)
}

/// [`run`] on a fleet already set up.
pub fn run_on(fleet: &Fleet, size: RecursiveSize, seed: u64) -> Result<Report> {
    let plan = Mutex::new(Plan::default());
    let mut lead = fleet.agent("planner")?;
    let built = Instant::now();
    decompose(&mut lead, &plan, size, seed)?;
    let built_in = built.elapsed();
    let initial = plan
        .lock()
        .map_err(|_| Error::internal("plan poisoned"))?
        .nodes
        .len();

    let mut model = Model::default();
    let mut ops = OpReader::open(fleet)?;
    let mut checked = 0;
    let mut mismatches: Vec<String> = Vec::new();
    let mut compare = |lead: &mut Agent, model: &mut Model, round: usize| -> Result<()> {
        for op in ops.new_ops()? {
            model.apply(&op);
        }
        let want = model.ready();
        let got: BTreeSet<String> = lead
            .issues(Request::Ready(ListFilter::default()))?
            .into_iter()
            .map(|i| i.id)
            .collect();
        checked += 1;
        if want != got {
            let extra: Vec<_> = got.difference(&want).take(3).cloned().collect();
            let missing: Vec<_> = want.difference(&got).take(3).cloned().collect();
            mismatches.push(format!(
                "round {round}: bd's ready has {} the model has not (e.g. {extra:?}), lacks {} (e.g. {missing:?})",
                got.difference(&want).count(),
                want.difference(&got).count()
            ));
        }
        Ok(())
    };
    compare(&mut lead, &mut model, 0)?;

    let mut agents: Vec<(Agent, Rng)> = (0..size.agents)
        .map(|a| {
            Ok((
                fleet.agent(&format!("agent-{a}"))?,
                Rng::new(seed ^ (a as u64 + 7) << 8),
            ))
        })
        .collect::<Result<_>>()?;
    let tally = Mutex::new(Tally::default());
    let mut lat = Latencies::default();
    for round in 1..=size.rounds {
        let lats = std::thread::scope(|s| -> Result<Vec<Latencies>> {
            let hs: Vec<_> = agents
                .iter_mut()
                .enumerate()
                .map(|(i, (agent, rng))| {
                    let (plan, tally) = (&plan, &tally);
                    s.spawn(move || act(agent, rng, i, plan, tally, size))
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().map_err(|_| Error::internal("an agent panicked"))?)
                .collect()
        })?;
        for l in lats {
            lat.extend(l);
        }
        compare(&mut lead, &mut model, round)?;
    }
    // `ready` on the deep trees, as an agent asks it, when the dust settled.
    for _ in 0..200 {
        let t = Instant::now();
        lead.call(Request::Ready(ListFilter {
            takeable_by: Some("planner".into()),
            limit: Some(10),
            ..Default::default()
        }))?;
        lat.push(t.elapsed());
    }
    let tally = tally
        .into_inner()
        .map_err(|_| Error::internal("tally poisoned"))?;
    let mut report = Report::new("recursive", size.describe());
    report.figure(
        "trees decomposed",
        format!("{initial} issues in {:.2} s", built_in.as_secs_f64()),
    );
    report.figure("issues at the end", model.live_count());
    report.figure("rounds", size.rounds);
    report.figure(
        "rewrites",
        format!(
            "{}: {} moves ({} in batches), {} branches closed, {} blockers, {} joins",
            tally.rewrites,
            tally.moves,
            tally.batch_moves,
            tally.branches_closed,
            tally.blockers,
            tally.joins
        ),
    );
    report.figure("work closed", tally.closed);
    report.figure(
        "cycle attempts refused",
        format!(
            "{} of {} deliberate",
            tally.cycles_refused, tally.cycles_tried
        ),
    );
    report.figure("ready answers checked", checked);
    report.figure("ready p50", ms(lat.percentile(50.0)));
    let p99 = lat.percentile(99.0);
    report.aim(
        "ready p99",
        ms(p99),
        "under 20 ms",
        p99 < Duration::from_millis(20),
    );
    report.must_be_zero("ready answers that differ", mismatches.len(), &mismatches);
    report.must_be_zero(
        "cycles accepted",
        tally.cycles_accepted.len(),
        &tally.cycles_accepted,
    );
    Ok(report)
}

/// Builds the goal trees of `size` in `fleet`'s tracker (the benchmark's
/// deep trees); returns how many issues they hold.
pub fn build_trees(fleet: &Fleet, size: RecursiveSize, seed: u64) -> Result<usize> {
    let plan = Mutex::new(Plan::default());
    decompose(&mut fleet.agent("planner")?, &plan, size, seed)?;
    let n = plan
        .lock()
        .map_err(|_| Error::internal("plan poisoned"))?
        .nodes
        .len();
    Ok(n)
}

/// Builds the goal trees level by level, in batches: each node's children
/// (1 to [`FAN_OUT`]) under it, some siblings blocking each other, until
/// the size's budget of issues.
fn decompose(agent: &mut Agent, plan: &Mutex<Plan>, size: RecursiveSize, seed: u64) -> Result<()> {
    let mut rng = Rng::new(seed ^ 0xDEC0);
    let per_goal = (size.issues / size.goals.max(1)).max(2);
    let mut level: Vec<(Option<String>, usize)> = (0..size.goals).map(|g| (None, g)).collect();
    let mut budget: Vec<usize> = vec![per_goal; size.goals];
    for depth in 0..DEPTH {
        // The nodes of this level: (parent, goal) → children to make.
        let mut wanted: Vec<(Option<String>, usize)> = Vec::new();
        if depth == 0 {
            wanted = level.clone();
            for b in &mut budget {
                *b -= 1;
            }
        } else {
            let share = |b: usize, left: usize| (b / left.max(1)).max(1) as u64;
            let mut left_per_goal: HashMap<usize, usize> = HashMap::new();
            for (_, g) in &level {
                *left_per_goal.entry(*g).or_default() += 1;
            }
            for (parent, g) in &level {
                let left = left_per_goal[g];
                // 4 to 8 children while the goal's budget allows (fewer as
                // it runs out), so trees reach the size at depth 6.
                let cap = FAN_OUT.min(share(budget[*g], left).max(1));
                let fan = rng.range(cap.min(4), cap);
                let fan = (fan as usize).min(budget[*g]);
                if let Some(l) = left_per_goal.get_mut(g) {
                    *l -= 1;
                }
                budget[*g] -= fan;
                for _ in 0..fan {
                    wanted.push((parent.clone(), *g));
                }
            }
        }
        let mut next = Vec::new();
        for chunk in wanted.chunks(1_000) {
            let reqs: Vec<Request> = chunk
                .iter()
                .enumerate()
                .map(|(k, (parent, g))| {
                    let mut deps = Vec::new();
                    // A sibling made just before blocks this one, now and then.
                    if k > 0 && chunk[k - 1].0 == *parent && parent.is_some() && rng.chance(15) {
                        deps.push(("blocks".to_string(), format!("${k}")));
                    }
                    Request::Create(CreateRequest {
                        title: format!("goal {g} level {depth} node {k}"),
                        issue_type: Some(if depth + 1 < DEPTH { "epic" } else { "task" }.into()),
                        parent: parent.clone(),
                        labels: vec![format!("goal-{g}")],
                        deps,
                        ..Default::default()
                    })
                })
                .collect();
            let ids = created_ids(&agent.call(Request::Batch { requests: reqs })?);
            let mut p = plan.lock().map_err(|_| Error::internal("plan poisoned"))?;
            for ((parent, g), id) in chunk.iter().zip(ids) {
                p.add(&id, parent.as_deref(), *g);
                next.push((Some(id), *g));
            }
        }
        level = next;
        if budget.iter().all(|b| *b == 0) {
            break;
        }
    }
    Ok(())
}

/// One agent's actions for a round; returns the `ready` latencies it saw.
fn act(
    agent: &mut Agent,
    rng: &mut Rng,
    me: usize,
    plan: &Mutex<Plan>,
    tally: &Mutex<Tally>,
    size: RecursiveSize,
) -> Result<Latencies> {
    let lock = || plan.lock().map_err(|_| Error::internal("plan poisoned"));
    let count = |f: &dyn Fn(&mut Tally)| -> Result<()> {
        f(&mut *tally
            .lock()
            .map_err(|_| Error::internal("tally poisoned"))?);
        Ok(())
    };
    let mine =
        |rng: &mut Rng| (rng.draw() as usize % size.goals / size.agents.max(1)) * size.agents + me;
    let mut lat = Latencies::default();
    for _ in 0..size.actions {
        let roll = rng.range(0, 99);
        if roll < 35 {
            // Work: take something ready and finish it.
            let t = Instant::now();
            let ready = agent.issues(Request::Ready(ListFilter {
                takeable_by: Some(agent.name.clone()),
                issue_type: vec!["task".into()],
                limit: Some(10),
                ..Default::default()
            }))?;
            lat.push(t.elapsed());
            let Some(pick) =
                (!ready.is_empty()).then(|| ready[rng.draw() as usize % ready.len()].id.clone())
            else {
                continue;
            };
            let claim = Request::Update(UpdateRequest {
                ids: vec![pick.clone()],
                claim: true,
                ..Default::default()
            });
            if refused(agent.call(claim))? {
                continue;
            }
            let close = Request::Close {
                ids: vec![pick.clone()],
                reason: Some("done".into()),
                force: false,
            };
            if refused(agent.call(close))? {
                // Someone forked it meanwhile: its new children come first.
                agent.call(Request::Update(UpdateRequest {
                    ids: vec![pick],
                    unclaim: true,
                    ..Default::default()
                }))?;
                continue;
            }
            lock()?.closed.insert(pick);
            count(&|t| t.closed += 1)?;
        } else if roll < 55 {
            // Move a subtree: under another open node, or (a third of the
            // time) under its own descendant, which must be refused.
            let (x, target, deliberate) = {
                let p = lock()?;
                let Some(mut x) = p.open_node(rng, None).filter(|x| p.parent.contains_key(x))
                else {
                    continue;
                };
                let cycle = rng.chance(33);
                if cycle && p.subtree(&x).len() == 1 {
                    // Most nodes are leaves: a cycle needs one with
                    // something under it, so try its parent (not a goal).
                    if let Some(up) = p.parent.get(&x).filter(|u| p.parent.contains_key(*u)) {
                        x = up.clone();
                    }
                }
                let sub = p.subtree(&x);
                if sub.len() > 1 && cycle {
                    let t = sub[1 + rng.draw() as usize % (sub.len() - 1)].clone();
                    (x, t, true)
                } else {
                    let Some(t) = p.open_node(rng, None).filter(|t| !sub.contains(t)) else {
                        continue;
                    };
                    (x, t, false)
                }
            };
            let req = Request::Update(UpdateRequest {
                ids: vec![x.clone()],
                parent: Some(target.clone()),
                ..Default::default()
            });
            match agent.call(req) {
                Ok(_) => {
                    if deliberate {
                        count(&|t| {
                            t.cycles_accepted
                                .push(format!("{x} under its descendant {target}"))
                        })?;
                    }
                    lock()?.reparent(&x, &target);
                    count(&|t| {
                        t.moves += 1;
                        t.rewrites += 1;
                    })?;
                }
                Err(e) if e.kind == ErrorKind::Conflict => {
                    count(&|t| {
                        t.cycles_refused += 1;
                        t.cycles_tried += usize::from(deliberate);
                    })?;
                }
                Err(e) => return Err(e),
            }
        } else if roll < 63 {
            // Move two or three siblings together, in one batch.
            let (moved, target) = {
                let p = lock()?;
                let g = mine(rng) % size.goals;
                let Some(parent) = p.open_node(rng, Some(g)) else {
                    continue;
                };
                let mut kids = p.open_children(&parent);
                kids.truncate(3);
                if kids.len() < 2 {
                    continue;
                }
                let under: BTreeSet<String> = kids.iter().flat_map(|k| p.subtree(k)).collect();
                let Some(t) = p.open_node(rng, None).filter(|t| !under.contains(t)) else {
                    continue;
                };
                (kids, t)
            };
            let requests = moved
                .iter()
                .map(|k| {
                    Request::Update(UpdateRequest {
                        ids: vec![k.clone()],
                        parent: Some(target.clone()),
                        ..Default::default()
                    })
                })
                .collect();
            if !refused(agent.call(Request::Batch { requests }))? {
                let mut p = lock()?;
                for k in &moved {
                    p.reparent(k, &target);
                }
                count(&|t| {
                    t.batch_moves += 1;
                    t.moves += moved.len();
                    t.rewrites += 1;
                })?;
            }
        } else if roll < 71 {
            // Close an obsolete branch (not a goal), all of it at once.
            let ids = {
                let p = lock()?;
                let g = mine(rng) % size.goals;
                let Some(x) = p
                    .open_node(rng, Some(g))
                    .filter(|x| p.parent.contains_key(x))
                else {
                    continue;
                };
                let sub: Vec<String> = p
                    .subtree(&x)
                    .into_iter()
                    .filter(|i| !p.closed.contains(i))
                    .collect();
                if sub.len() > 200 {
                    continue;
                }
                sub
            };
            let close = Request::Close {
                ids: ids.clone(),
                reason: Some("obsolete: the plan changed".into()),
                force: true,
            };
            if !refused(agent.call(close))? {
                lock()?.closed.extend(ids);
                count(&|t| {
                    t.branches_closed += 1;
                    t.rewrites += 1;
                })?;
            }
        } else if roll < 85 {
            // A new blocker between two siblings (refused if it would close
            // a cycle through other blockers).
            let (a, b) = {
                let p = lock()?;
                let Some(parent) = p.open_node(rng, None) else {
                    continue;
                };
                let kids = p.open_children(&parent);
                if kids.len() < 2 {
                    continue;
                }
                let i = rng.draw() as usize % kids.len();
                let j = (i + 1 + rng.draw() as usize % (kids.len() - 1)) % kids.len();
                (kids[i].clone(), kids[j].clone())
            };
            let dep = Request::DepAdd {
                issue: b,
                depends_on: a,
                dep_type: "blocks".into(),
            };
            match agent.call(dep) {
                Ok(_) => count(&|t| {
                    t.blockers += 1;
                    t.rewrites += 1;
                })?,
                Err(e) if e.kind == ErrorKind::Conflict => count(&|t| t.cycles_refused += 1)?,
                Err(e) => return Err(e),
            }
        } else {
            // Fork another agent's node and join on the fork: two children
            // under their node, and an issue under one of ours blocked by both.
            let (theirs, ours, goal) = {
                let p = lock()?;
                let g = mine(rng) % size.goals;
                let other = (g + 1) % size.goals;
                let (Some(t), Some(o)) = (p.open_node(rng, Some(other)), p.open_node(rng, Some(g)))
                else {
                    continue;
                };
                (t, o, g)
            };
            let mk = |title: String, parent: &str, deps: Vec<(String, String)>| {
                Request::Create(CreateRequest {
                    title,
                    parent: Some(parent.to_string()),
                    labels: vec![format!("goal-{goal}")],
                    deps,
                    ..Default::default()
                })
            };
            let requests = vec![
                mk(
                    format!("fork of {theirs} by agent-{me} (a)"),
                    &theirs,
                    Vec::new(),
                ),
                mk(
                    format!("fork of {theirs} by agent-{me} (b)"),
                    &theirs,
                    Vec::new(),
                ),
                mk(
                    format!("join on the fork of {theirs}"),
                    &ours,
                    vec![
                        ("blocks".into(), "$1".into()),
                        ("blocks".into(), "$2".into()),
                    ],
                ),
            ];
            match agent.call(Request::Batch { requests }) {
                Ok(resp) => {
                    let ids = created_ids(&resp);
                    let mut p = lock()?;
                    let other = p.goal_of.get(&theirs).copied().unwrap_or(goal);
                    p.add(&ids[0], Some(&theirs), other);
                    p.add(&ids[1], Some(&theirs), other);
                    p.add(&ids[2], Some(&ours), goal);
                    drop(p);
                    count(&|t| {
                        t.joins += 1;
                        t.rewrites += 1;
                    })?;
                }
                // The node was closed meanwhile (a child of a closed parent
                // is refused) or the join would close a cycle.
                Err(e) if e.kind == ErrorKind::Conflict => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(lat)
}

/// `Ok(true)` for a refusal because of the state (exit 3), `Ok(false)` for
/// success, the error otherwise.
fn refused(r: Result<Response>) -> Result<bool> {
    match r {
        Ok(_) => Ok(false),
        Err(e) if e.kind == ErrorKind::Conflict => Ok(true),
        Err(e) => Err(e),
    }
}

/// Reads the ops bd appended to this clone's op file since the last call.
struct OpReader {
    file: std::io::BufReader<std::fs::File>,
}

impl OpReader {
    fn open(fleet: &Fleet) -> Result<OpReader> {
        let dir = fleet.paths.dir.join("ops");
        let file = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .ok_or_else(|| Error::internal(format!("no op file in {}", dir.display())))?;
        Ok(OpReader {
            file: std::io::BufReader::new(std::fs::File::open(file)?),
        })
    }

    fn new_ops(&mut self) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        loop {
            let at = self.file.stream_position()?;
            let mut line = String::new();
            if self.file.read_line(&mut line)? == 0 {
                return Ok(out);
            }
            if !line.ends_with('\n') {
                // A line still being written: read it whole next time.
                self.file.seek(std::io::SeekFrom::Start(at))?;
                return Ok(out);
            }
            out.push(serde_json::from_str(&line)?);
        }
    }
}

/// The checker's own fold of the ops: one replica, so ops apply in order.
#[derive(Default)]
struct Model {
    issues: BTreeMap<String, Node>,
    /// Edge adds by tag (op id, or `<op id>:d<n>` for a create's edges):
    /// (issue, target, type).
    edge_tags: HashMap<String, (String, String, String)>,
}

#[derive(Default)]
struct Node {
    status: String,
    issue_type: String,
    deleted: bool,
    /// (target, type) → its live add tags.
    edges: BTreeMap<(String, String), BTreeSet<String>>,
}

impl Model {
    fn apply(&mut self, op: &Value) {
        let s = |v: &Value, k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let (issue, kind, op_id) = (s(op, "issue"), s(op, "kind"), s(op, "op_id"));
        let value = op.get("value").cloned().unwrap_or(Value::Null);
        let mut edges = Vec::new();
        match kind.as_str() {
            "create" => {
                let n = self.issues.entry(issue.clone()).or_default();
                n.status = value
                    .get("status")
                    .and_then(Value::as_str)
                    .unwrap_or("open")
                    .to_string();
                n.issue_type = value
                    .get("issue_type")
                    .and_then(Value::as_str)
                    .unwrap_or("task")
                    .to_string();
                for (k, d) in value
                    .get("dependencies")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    edges.push((format!("{op_id}:d{k}"), s(d, "depends_on_id"), s(d, "type")));
                }
            }
            "set" => {
                let field = s(op, "field");
                let n = self.issues.entry(issue.clone()).or_default();
                match field.as_str() {
                    "status" => n.status = value.as_str().unwrap_or("open").to_string(),
                    "issue_type" => n.issue_type = value.as_str().unwrap_or("task").to_string(),
                    _ => {}
                }
            }
            "dep_add" => edges.push((op_id, s(&value, "depends_on_id"), s(&value, "type"))),
            "dep_rm" => {
                for tag in op
                    .get("supersedes")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some((i, t, k)) = tag.as_str().and_then(|t| self.edge_tags.remove(t))
                        && let Some(n) = self.issues.get_mut(&i)
                        && let Some(tags) = n.edges.get_mut(&(t.clone(), k.clone()))
                    {
                        tags.remove(tag.as_str().unwrap_or_default());
                        if tags.is_empty() {
                            n.edges.remove(&(t, k));
                        }
                    }
                }
            }
            "delete" => self.issues.entry(issue.clone()).or_default().deleted = true,
            _ => {}
        }
        for (tag, target, ty) in edges {
            let ty = if ty.is_empty() {
                "blocks".to_string()
            } else {
                ty
            };
            self.edge_tags
                .insert(tag.clone(), (issue.clone(), target.clone(), ty.clone()));
            self.issues
                .entry(issue.clone())
                .or_default()
                .edges
                .entry((target, ty))
                .or_default()
                .insert(tag);
        }
    }

    fn live(&self, id: &str) -> Option<&Node> {
        self.issues.get(id).filter(|n| !n.deleted)
    }

    fn live_count(&self) -> usize {
        self.issues.values().filter(|n| !n.deleted).count()
    }

    /// The documented rule: open or in progress; no `blocks` edge to a live
    /// issue that is not closed; no parent that is blocked or neither open
    /// nor in progress; not an epic with a child that is not closed.
    fn ready(&self) -> BTreeSet<String> {
        let mut blocked: HashMap<&str, bool> = HashMap::new();
        let mut open_children: BTreeSet<&str> = BTreeSet::new();
        for (id, n) in self.issues.iter().filter(|(_, n)| !n.deleted) {
            for (target, ty) in n.edges.keys() {
                if ty == "parent-child" && n.status != "closed" {
                    open_children.insert(target.as_str());
                }
            }
            self.is_blocked(id, &mut blocked, 0);
        }
        self.issues
            .iter()
            .filter(|(id, n)| {
                !n.deleted
                    && (n.status == "open" || n.status == "in_progress")
                    && !blocked.get(id.as_str()).copied().unwrap_or(false)
                    && !(n.issue_type == "epic" && open_children.contains(id.as_str()))
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn is_blocked<'a>(
        &'a self,
        id: &'a str,
        memo: &mut HashMap<&'a str, bool>,
        depth: usize,
    ) -> bool {
        if let Some(b) = memo.get(id) {
            return *b;
        }
        let Some(n) = self.live(id) else { return false };
        let mut b = false;
        for (target, ty) in n.edges.keys() {
            let Some(t) = self.live(target) else { continue };
            b |= match ty.as_str() {
                "blocks" => t.status != "closed",
                "parent-child" if depth < 10_000 => {
                    (t.status != "open" && t.status != "in_progress")
                        || self.is_blocked(target, memo, depth + 1)
                }
                _ => false,
            };
        }
        memo.insert(id, b);
        b
    }
}
