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

use super::machines::Machines;
use super::{Agent, CONVERGE_LIMIT, Fleet, Latencies, Report, Rng, converge, created_ids, ms};
use crate::api::{CreateRequest, ListFilter, Request, Response, UpdateRequest};
use crate::{Error, ErrorKind, Result};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
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
    /// Forks made on one clone, waiting for an agent on another clone to
    /// join on them once they have reached it (the mesh variant).
    pending_joins: Vec<PendingJoin>,
    /// The round and clone of each node's latest move.
    moved_in: HashMap<String, (usize, usize)>,
}

/// Two children an agent made under another agent's node, on its clone.
struct PendingJoin {
    forks: [String; 2],
    theirs: String,
    made_on: usize,
    round: usize,
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

    /// Whether `t` came under `x` by a move this round on another clone
    /// than `seat`'s (it may not have reached `seat`'s clone yet: a move of
    /// `x` under `t` there would not be seen as a cycle, and would make a
    /// loop of parents once the clones exchange their moves).
    fn crossed(&self, t: &str, x: &str, seat: Seat) -> bool {
        let mut at = t;
        for _ in 0..10_000 {
            if at == x {
                return false;
            }
            if self
                .moved_in
                .get(at)
                .is_some_and(|(r, c)| *r == seat.round && *c != seat.clone)
            {
                return true;
            }
            match self.parent.get(at) {
                Some(p) => at = p,
                None => return false,
            }
        }
        false
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
    /// Joins on forks another clone's agent made.
    joins_across: usize,
    /// Actions refused for naming an issue made this round on another
    /// clone, not there yet (the mesh variant).
    stale: usize,
    closed: usize,
    /// Deliberate cycles tried (a move under the node's own descendant),
    /// and how many bd refused.
    cycles_tried: usize,
    cycles_refused: usize,
    /// Other moves and blockers refused because they would close a cycle
    /// through edges the agent had not counted on.
    other_cycles_refused: usize,
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
    recursive(&[fleet], size, seed)
}

/// How many clones the recursive scenario's mesh variant runs on.
pub const MESH_CLONES: usize = 2;

/// The mesh variant: [`MESH_CLONES`] clones, each with its daemon, on a
/// relay (`nats-server` on PATH), no git sync during the run. The trees are
/// decomposed on the first; the agents are dealt out among the clones, and
/// an agent's fork of another agent's node is joined on by an agent of
/// another clone once it has arrived there. After every round the clones
/// converge and the checker compares each clone's `ready` with its fold of
/// every clone's op file.
pub fn run_mesh(exe: &std::path::Path, size: RecursiveSize, seed: u64) -> Result<Report> {
    let machines = Machines::new(exe, "plan", MESH_CLONES)?;
    run_on_machines(&machines, size, seed)
}

/// [`run_mesh`] on machines already set up.
pub fn run_on_machines(machines: &Machines, size: RecursiveSize, seed: u64) -> Result<Report> {
    let clones: Vec<&Fleet> = machines.clones.iter().collect();
    recursive(&clones, size, seed)
}

/// The scenario on one clone or several.
fn recursive(clones: &[&Fleet], size: RecursiveSize, seed: u64) -> Result<Report> {
    let n = clones.len();
    let plan = Mutex::new(Plan::default());
    let mut leads: Vec<Agent> = clones
        .iter()
        .map(|c| c.agent("planner"))
        .collect::<Result<_>>()?;
    let built = Instant::now();
    decompose(&mut leads[0], &plan, size, seed)?;
    let built_in = built.elapsed();
    let initial = plan
        .lock()
        .map_err(|_| Error::internal("plan poisoned"))?
        .nodes
        .len();

    let mut model = Model::default();
    let mut readers: Vec<OpReader> = clones
        .iter()
        .zip(leads.iter_mut())
        .map(|(c, lead)| OpReader::new(c, lead))
        .collect::<Result<_>>()?;
    let mut checked = 0;
    let mut mismatches: Vec<String> = Vec::new();
    let mut slowest_converge = Duration::ZERO;
    let mut compare = |leads: &mut [Agent], model: &mut Model, round: usize| -> Result<()> {
        if leads.len() > 1 {
            match converge(clones, leads)? {
                Some(d) => slowest_converge = slowest_converge.max(d),
                None => mismatches.push(format!(
                    "round {round}: the clones did not converge within {} s",
                    CONVERGE_LIMIT.as_secs()
                )),
            }
        }
        for r in readers.iter_mut() {
            for op in r.new_ops()? {
                model.apply(&op);
            }
        }
        let want = model.ready();
        for (c, lead) in leads.iter_mut().enumerate() {
            let got: BTreeSet<String> = lead
                .issues(Request::Ready(ListFilter::default()))?
                .into_iter()
                .map(|i| i.id)
                .collect();
            checked += 1;
            if want != got {
                let extra: Vec<_> = got.difference(&want).take(3).cloned().collect();
                let missing: Vec<_> = want.difference(&got).take(3).cloned().collect();
                let on = if n > 1 {
                    format!(" on clone {}", c + 1)
                } else {
                    String::new()
                };
                mismatches.push(format!(
                    "round {round}{on}: bd's ready has {} the model has not (e.g. {extra:?}), lacks {} (e.g. {missing:?})",
                    got.difference(&want).count(),
                    want.difference(&got).count()
                ));
            }
        }
        Ok(())
    };
    compare(&mut leads, &mut model, 0)?;

    let mut agents: Vec<(Agent, Rng, usize)> = (0..size.agents)
        .map(|a| {
            Ok((
                clones[a % n].agent(&format!("agent-{a}"))?,
                Rng::new(seed ^ (a as u64 + 7) << 8),
                a % n,
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
                .map(|(i, (agent, rng, clone))| {
                    let (plan, tally) = (&plan, &tally);
                    let seat = Seat {
                        me: i,
                        clone: *clone,
                        clones: n,
                        round,
                    };
                    s.spawn(move || act(agent, rng, seat, plan, tally, size))
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().map_err(|_| Error::internal("an agent panicked"))?)
                .collect()
        })?;
        for l in lats {
            lat.extend(l);
        }
        compare(&mut leads, &mut model, round)?;
    }
    // `ready` on the deep trees, as an agent asks it, when the dust settled.
    let lead = &mut leads[0];
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
    let described = if n > 1 {
        format!("{}, on {n} clones through a relay", size.describe())
    } else {
        size.describe()
    };
    let mut report = Report::new("recursive", described);
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
    if n > 1 {
        report.timings.push(("converged", slowest_converge));
        report.figure(
            "joins on another clone's fork",
            format!("{} of {}", tally.joins_across, tally.joins),
        );
        report.figure("actions on issues not yet arrived (refused)", tally.stale);
        report.figure(
            "clones converged after a round in (slowest)",
            format!("{:.2} s", slowest_converge.as_secs_f64()),
        );
    }
    report.figure("work closed", tally.closed);
    report.figure(
        "cycle attempts refused",
        format!(
            "{} of {} deliberate, and {} other moves or blockers",
            tally.cycles_refused, tally.cycles_tried, tally.other_cycles_refused
        ),
    );
    report.figure("ready answers checked", checked);
    report.figure("ready p50", ms(lat.percentile(50.0)));
    let p99 = lat.percentile(99.0);
    if n == 1 {
        report.aim(
            "ready p99",
            ms(p99),
            "under 20 ms",
            p99 < Duration::from_millis(20),
        );
    } else {
        // The aim is stated for one daemon; here two share the cores.
        report.figure("ready p99", ms(p99));
    }
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

/// Where an agent sits: its number, its clone (of how many), the round.
#[derive(Clone, Copy)]
struct Seat {
    me: usize,
    clone: usize,
    clones: usize,
    round: usize,
}

/// One agent's actions for a round; returns the `ready` latencies it saw.
fn act(
    agent: &mut Agent,
    rng: &mut Rng,
    seat: Seat,
    plan: &Mutex<Plan>,
    tally: &Mutex<Tally>,
    size: RecursiveSize,
) -> Result<Latencies> {
    let me = seat.me;
    let lock = || plan.lock().map_err(|_| Error::internal("plan poisoned"));
    let count = |f: &dyn Fn(&mut Tally)| tally_up(tally, f);
    let mine = |rng: &mut Rng| own_goal(rng, me, size);
    let mut lat = Latencies::default();
    if seat.clones > 1 {
        join_forks(agent, rng, seat, plan, tally, size)?;
    }
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
            if refused(agent.call(claim), seat, tally)? {
                continue;
            }
            let close = Request::Close {
                ids: vec![pick.clone()],
                reason: Some("done".into()),
                force: false,
            };
            if refused(agent.call(close), seat, tally)? {
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
                    if p.crossed(&t, &x, seat) {
                        continue; // not a cycle this clone can see
                    }
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
                            t.cycles_tried += 1;
                            t.cycles_accepted
                                .push(format!("{x} under its descendant {target}"))
                        })?;
                    }
                    let mut p = lock()?;
                    p.reparent(&x, &target);
                    p.moved_in.insert(x.clone(), (seat.round, seat.clone));
                    drop(p);
                    count(&|t| {
                        t.moves += 1;
                        t.rewrites += 1;
                    })?;
                }
                Err(e) if e.kind == ErrorKind::NotFound && seat.clones > 1 => {
                    count(&|t| t.stale += 1)?
                }
                Err(e) if e.kind == ErrorKind::Conflict => {
                    count(&|t| {
                        if deliberate {
                            t.cycles_tried += 1;
                            t.cycles_refused += 1;
                        } else {
                            t.other_cycles_refused += 1;
                        }
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
            if !refused(agent.call(Request::Batch { requests }), seat, tally)? {
                let mut p = lock()?;
                for k in &moved {
                    p.reparent(k, &target);
                    p.moved_in.insert(k.clone(), (seat.round, seat.clone));
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
            if !refused(agent.call(close), seat, tally)? {
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
                Err(e) if e.kind == ErrorKind::NotFound && seat.clones > 1 => {
                    count(&|t| t.stale += 1)?
                }
                Err(e) if e.kind == ErrorKind::Conflict => count(&|t| t.other_cycles_refused += 1)?,
                Err(e) => return Err(e),
            }
        } else {
            // Fork another agent's node and join on the fork: two children
            // under their node, and an issue under one of ours blocked by both.
            let (theirs, ours, goal) = {
                let p = lock()?;
                let g = mine(rng) % size.goals;
                // Another agent's goal, whose agent works on this clone: on
                // several clones, children are made under a node only on its
                // goal's clone, so two clones never number a new child of
                // one parent alike (that would be two creates of one id,
                // which the id-collision tests cover, not this checker).
                let other = (g + seat.clones) % size.goals;
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
            // Across clones the join is another clone's agent's, once the
            // fork has reached it (`join_forks`, next round).
            let across = seat.clones > 1;
            let mut requests = vec![
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
            ];
            if !across {
                requests.push(mk(
                    format!("join on the fork of {theirs}"),
                    &ours,
                    vec![
                        ("blocks".into(), "$1".into()),
                        ("blocks".into(), "$2".into()),
                    ],
                ));
            }
            match agent.call(Request::Batch { requests }) {
                Ok(resp) => {
                    let ids = created_ids(&resp);
                    let mut p = lock()?;
                    let other = p.goal_of.get(&theirs).copied().unwrap_or(goal);
                    p.add(&ids[0], Some(&theirs), other);
                    p.add(&ids[1], Some(&theirs), other);
                    if across {
                        p.pending_joins.push(PendingJoin {
                            forks: [ids[0].clone(), ids[1].clone()],
                            theirs: theirs.clone(),
                            made_on: seat.clone,
                            round: seat.round,
                        });
                    } else {
                        p.add(&ids[2], Some(&ours), goal);
                    }
                    drop(p);
                    count(&|t| {
                        t.joins += usize::from(!across);
                        t.rewrites += 1;
                    })?;
                }
                // The node was closed meanwhile (a child of a closed parent
                // is refused) or the join would close a cycle.
                Err(e) if e.kind == ErrorKind::Conflict => {}
                Err(e) if e.kind == ErrorKind::NotFound && seat.clones > 1 => {
                    count(&|t| t.stale += 1)?
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(lat)
}

/// The mesh variant's joins: up to two forks made on another clone in an
/// earlier round (so they have reached this one: the clones converge
/// between rounds), each joined on by an issue under one of this agent's
/// nodes, blocked by both fork children.
fn join_forks(
    agent: &mut Agent,
    rng: &mut Rng,
    seat: Seat,
    plan: &Mutex<Plan>,
    tally: &Mutex<Tally>,
    size: RecursiveSize,
) -> Result<()> {
    let lock = || plan.lock().map_err(|_| Error::internal("plan poisoned"));
    for _ in 0..2 {
        let (fork, ours, goal) = {
            let mut p = lock()?;
            let Some(k) = p
                .pending_joins
                .iter()
                .position(|j| j.made_on != seat.clone && j.round < seat.round)
            else {
                return Ok(());
            };
            let goal = own_goal(rng, seat.me, size) % size.goals;
            let Some(ours) = p.open_node(rng, Some(goal)) else {
                return Ok(());
            };
            (p.pending_joins.remove(k), ours, goal)
        };
        let join = Request::Create(CreateRequest {
            title: format!("join on the fork of {}", fork.theirs),
            parent: Some(ours.clone()),
            labels: vec![format!("goal-{goal}")],
            deps: fork
                .forks
                .iter()
                .map(|f| ("blocks".to_string(), f.clone()))
                .collect(),
            ..Default::default()
        });
        match agent.call(join) {
            Ok(resp) => {
                if let Some(id) = created_ids(&resp).first() {
                    lock()?.add(id, Some(&ours), goal);
                }
                tally_up(tally, |t| {
                    t.joins += 1;
                    t.joins_across += 1;
                    t.rewrites += 1;
                })?;
            }
            // Our node was closed meanwhile, or the join would close a cycle.
            Err(e) if e.kind == ErrorKind::Conflict => {}
            // Our node was made this round on the other clone.
            Err(e) if e.kind == ErrorKind::NotFound => tally_up(tally, |t| t.stale += 1)?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Counts what an agent did.
fn tally_up(tally: &Mutex<Tally>, f: impl FnOnce(&mut Tally)) -> Result<()> {
    f(&mut *tally
        .lock()
        .map_err(|_| Error::internal("tally poisoned"))?);
    Ok(())
}

/// One of agent `me`'s own goals (goal g is agent g mod agents'), at random.
fn own_goal(rng: &mut Rng, me: usize, size: RecursiveSize) -> usize {
    (rng.draw() as usize % size.goals / size.agents.max(1)) * size.agents + me
}

/// `Ok(true)` for a refusal because of the state (exit 3), or across
/// clones for naming an issue another clone made that has not reached this
/// one yet (counted); `Ok(false)` for success; the error otherwise.
fn refused(r: Result<Response>, seat: Seat, tally: &Mutex<Tally>) -> Result<bool> {
    match r {
        Ok(_) => Ok(false),
        Err(e) if e.kind == ErrorKind::Conflict => Ok(true),
        Err(e) if e.kind == ErrorKind::NotFound && seat.clones > 1 => {
            tally_up(tally, |t| t.stale += 1)?;
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

/// Reads the ops bd appended to a clone's own op file (its replica's:
/// other clones' files may be there too, from git) since the last call.
struct OpReader {
    path: std::path::PathBuf,
    /// Opened once the clone has written its first op.
    file: Option<std::io::BufReader<std::fs::File>>,
}

impl OpReader {
    fn new(fleet: &Fleet, lead: &mut Agent) -> Result<OpReader> {
        let replica = match lead.call(Request::Info)? {
            Response::Info(i) => i.replica,
            other => return Err(Error::internal(format!("info answered {other:?}"))),
        };
        Ok(OpReader {
            path: fleet.paths.dir.join("ops").join(format!("{replica}.jsonl")),
            file: None,
        })
    }

    fn new_ops(&mut self) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        if self.file.is_none() {
            match std::fs::File::open(&self.path) {
                Ok(f) => self.file = Some(std::io::BufReader::new(f)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
                Err(e) => return Err(e.into()),
            }
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(out);
        };
        loop {
            let at = file.stream_position()?;
            let mut line = String::new();
            if file.read_line(&mut line)? == 0 {
                return Ok(out);
            }
            if !line.ends_with('\n') {
                // A line still being written: read it whole next time.
                file.seek(std::io::SeekFrom::Start(at))?;
                return Ok(out);
            }
            out.push(serde_json::from_str(&line)?);
        }
    }
}

/// The checker's own fold of the ops, by the documented merge rules (no bd
/// code): status and type are registers (a write is visible unless a later
/// one lists it in `supersedes`; the shown value is the visible write with
/// the greatest (hlc, replica, op id)); edges are add-wins sets by tag; an
/// issue under two parents (moves that crossed on two clones) is under the
/// one whose latest add ranks highest. Order-independent, so the op files
/// of several clones fold in any order.
#[derive(Default)]
struct Model {
    issues: BTreeMap<String, Node>,
    /// Edge adds by tag (op id, or `<op id>:d<n>` for a create's edges):
    /// (issue, target, type).
    edge_tags: HashMap<String, (String, String, String)>,
    /// Tags removed (a remove may fold before the add it saw).
    removed_tags: HashSet<String>,
}

/// (hlc wall, hlc logical, replica, op id): how writes rank.
type Rank = (u64, u64, String, String);

/// A multi-value register of one field.
#[derive(Default)]
struct Reg {
    visible: BTreeMap<String, (Rank, String)>,
    gone: HashSet<String>,
}

impl Reg {
    fn write(&mut self, id: &str, rank: Rank, value: String, supersedes: &[String]) {
        for s in supersedes {
            self.visible.remove(s);
            self.gone.insert(s.clone());
        }
        if !self.gone.contains(id) {
            self.visible.insert(id.to_string(), (rank, value));
        }
    }

    fn shown<'a>(&'a self, default: &'a str) -> &'a str {
        self.visible
            .values()
            .max_by(|a, b| a.0.cmp(&b.0))
            .map_or(default, |(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Node {
    status: Reg,
    issue_type: Reg,
    deleted: bool,
    /// (target, type) → its live add tags, with each add's rank.
    edges: BTreeMap<(String, String), BTreeMap<String, Rank>>,
}

impl Node {
    fn status(&self) -> &str {
        self.status.shown("open")
    }

    fn issue_type(&self) -> &str {
        self.issue_type.shown("task")
    }

    /// The parent shown: of the targets of live parent-child edges, the
    /// one whose latest add ranks highest.
    fn parent(&self) -> Option<&str> {
        self.edges
            .iter()
            .filter(|((_, ty), tags)| ty == "parent-child" && !tags.is_empty())
            .filter_map(|((t, _), tags)| tags.values().max().map(|r| (r, t)))
            .max()
            .map(|(_, t)| t.as_str())
    }
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
        let hlc = op.get("hlc").cloned().unwrap_or(Value::Null);
        let num = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        let rank: Rank = (
            num(&hlc, "wall"),
            num(&hlc, "logical"),
            s(op, "replica"),
            op_id.clone(),
        );
        let supersedes: Vec<String> = op
            .get("supersedes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect();
        let value = op.get("value").cloned().unwrap_or(Value::Null);
        let mut edges = Vec::new();
        match kind.as_str() {
            "create" => {
                let n = self.issues.entry(issue.clone()).or_default();
                let field = |f: &str, default: &str| {
                    value
                        .get(f)
                        .and_then(Value::as_str)
                        .unwrap_or(default)
                        .to_string()
                };
                n.status
                    .write(&op_id, rank.clone(), field("status", "open"), &[]);
                n.issue_type
                    .write(&op_id, rank.clone(), field("issue_type", "task"), &[]);
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
                let v = value.as_str().unwrap_or_default().to_string();
                match field.as_str() {
                    "status" => n.status.write(&op_id, rank.clone(), v, &supersedes),
                    "issue_type" => n.issue_type.write(&op_id, rank.clone(), v, &supersedes),
                    _ => {}
                }
            }
            "dep_add" => edges.push((op_id.clone(), s(&value, "depends_on_id"), s(&value, "type"))),
            "dep_rm" => {
                for tag in supersedes {
                    if let Some((i, t, k)) = self.edge_tags.remove(&tag)
                        && let Some(n) = self.issues.get_mut(&i)
                        && let Some(tags) = n.edges.get_mut(&(t.clone(), k.clone()))
                    {
                        tags.remove(&tag);
                        if tags.is_empty() {
                            n.edges.remove(&(t, k));
                        }
                    }
                    self.removed_tags.insert(tag);
                }
            }
            "delete" => self.issues.entry(issue.clone()).or_default().deleted = true,
            _ => {}
        }
        for (tag, target, ty) in edges {
            if self.removed_tags.contains(&tag) {
                continue;
            }
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
                .insert(tag, rank.clone());
        }
    }

    /// Whether following parents up from `id` comes back to it.
    fn in_parent_loop(&self, id: &str) -> bool {
        let mut seen: HashSet<&str> = HashSet::new();
        let mut at = id;
        while let Some(p) = self.live(at).and_then(Node::parent) {
            if p == id {
                return true;
            }
            if !seen.insert(p) {
                return false;
            }
            at = p;
        }
        false
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
            if let Some(p) = n.parent()
                && n.status() != "closed"
            {
                open_children.insert(p);
            }
            self.is_blocked(id, &mut blocked, 0);
        }
        self.issues
            .iter()
            .filter(|(id, n)| {
                !n.deleted
                    && (n.status() == "open" || n.status() == "in_progress")
                    && !blocked.get(id.as_str()).copied().unwrap_or(false)
                    && !(n.issue_type() == "epic" && open_children.contains(id.as_str()))
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
        // In a loop of parents (moves that crossed on two clones) an issue
        // waits for itself.
        let mut b = self.in_parent_loop(id);
        for (target, ty) in n.edges.keys() {
            if ty != "blocks" {
                continue;
            }
            if let Some(t) = self.live(target) {
                b |= t.status() != "closed";
            }
        }
        if let Some(p) = n.parent()
            && let Some(t) = self.live(p)
            && depth < 10_000
        {
            b |= (t.status() != "open" && t.status() != "in_progress")
                || self.is_blocked(p, memo, depth + 1);
        }
        memo.insert(id, b);
        b
    }
}
