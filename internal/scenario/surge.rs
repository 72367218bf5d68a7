//! The surge: a "live event". Provisioning agents create issues in a burst
//! through batches (100 to 1,000 operations each, with dependencies inside
//! a batch and on issues earlier batches made), while a director
//! re-prioritises thousands of them and workers claim and close what is
//! ready; a prober times `ready` throughout. At the end one agent creates a
//! personalised follow-up for every issue a worker closed, in batches as
//! large as bd takes.
//!
//! The model is what bd acknowledged: every create (its title, priority and
//! dependencies), the director's last priority for each issue, each won
//! claim and each close. The checker reads the whole tracker back and
//! counts lost writes (acknowledged, not there), duplicated ones (there
//! twice, or there without an acknowledgement), and claims won twice.

use super::machines::Machines;
use super::{
    Agent, CONVERGE_LIMIT, Fleet, Latencies, Report, Rng, converge, created_ids, export, ms, state,
};
use crate::api::{CreateRequest, ListFilter, Request, Response, UpdateRequest};
use crate::service::BATCH_MAX;
use crate::{Error, ErrorKind, Result};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// How big a surge is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SurgeSize {
    /// Issues provisioned in all.
    pub issues: usize,
    /// Provisioning agents.
    pub provisioners: usize,
    /// Operations per batch, smallest and largest.
    pub batch: (usize, usize),
    /// Issues the director re-prioritises.
    pub reprioritise: usize,
    /// Workers claiming and closing.
    pub workers: usize,
}

impl SurgeSize {
    /// The issue's size: 100,000 issues from 64 agents in batches of 100 to
    /// 1,000, 5,000 re-prioritised, 16 workers.
    pub const FULL: SurgeSize = SurgeSize {
        issues: 100_000,
        provisioners: 64,
        batch: (100, 1_000),
        reprioritise: 5_000,
        workers: 16,
    };
    /// The integration tests' size.
    pub const SMALL: SurgeSize = SurgeSize {
        issues: 3_000,
        provisioners: 8,
        batch: (50, 200),
        reprioritise: 600,
        workers: 4,
    };

    fn describe(&self) -> String {
        format!(
            "{} issues from {} agents in batches of {}-{}, {} re-prioritised, {} workers",
            self.issues,
            self.provisioners,
            self.batch.0,
            self.batch.1,
            self.reprioritise,
            self.workers
        )
    }
}

/// What bd acknowledged to the agents.
#[derive(Default)]
struct Model {
    /// Title → (id, priority at create, blockers' ids).
    created: HashMap<String, (String, i64, Vec<String>)>,
    /// Id → the director's last acknowledged priority.
    priority: HashMap<String, i64>,
    /// Id → the worker whose claim was acknowledged, and how many were.
    claims: HashMap<String, Vec<String>>,
    /// Id → the worker whose close was acknowledged.
    closed: HashMap<String, String>,
    /// Id → the clone its create was acknowledged on.
    made_on: HashMap<String, usize>,
    /// Won claims of issues made on another clone than the worker's.
    claimed_across: usize,
}

/// Counts shared by the agents while they run.
#[derive(Default)]
struct Live {
    /// Every issue id acknowledged on each clone, in acknowledgement order
    /// (an agent names only issues its own clone has).
    ids: Vec<RwLock<Vec<String>>>,
    provisioning_done: AtomicBool,
    director_done: AtomicBool,
    claims_refused: AtomicUsize,
    /// Claims granted by a clone alone because the relay could not be asked.
    claims_provisional: AtomicUsize,
}

/// How many clones share the work in the surge's mesh variant.
pub const MESH_CLONES: usize = 3;

/// Runs a surge of `size` against a new tracker served by a daemon started
/// from `exe`, and checks the end state.
pub fn run(exe: &std::path::Path, size: SurgeSize, seed: u64) -> Result<Report> {
    let fleet = Fleet::new(exe, "surge")?;
    run_on(&fleet, size, seed)
}

/// [`run`] on a fleet already set up.
pub fn run_on(fleet: &Fleet, size: SurgeSize, seed: u64) -> Result<Report> {
    surge(&[fleet], size, seed)
}

/// The mesh variant: [`MESH_CLONES`] clones, each with its daemon, share
/// the work through a relay (`nats-server` on PATH), with no git sync
/// during the run. The agents are dealt out among the clones; the director
/// and the follow-ups are on the first. Adds the time the clones take to
/// converge, and checks that they end in the same state.
pub fn run_mesh(exe: &std::path::Path, size: SurgeSize, seed: u64) -> Result<Report> {
    let machines = Machines::new(exe, "surge", MESH_CLONES)?;
    run_on_machines(&machines, size, seed)
}

/// [`run_mesh`] on machines already set up.
pub fn run_on_machines(machines: &Machines, size: SurgeSize, seed: u64) -> Result<Report> {
    let clones: Vec<&Fleet> = machines.clones.iter().collect();
    surge(&clones, size, seed)
}

/// The surge on one clone or several (the agents dealt out among them).
fn surge(clones: &[&Fleet], size: SurgeSize, seed: u64) -> Result<Report> {
    let n = clones.len();
    let model = Mutex::new(Model::default());
    let live = Arc::new(Live {
        ids: (0..n).map(|_| RwLock::new(Vec::new())).collect(),
        ..Default::default()
    });
    let start = Instant::now();
    let (provisioned_in, ready_lat, worker_time, director_rounds) =
        std::thread::scope(|s| -> Result<_> {
            let probers: Vec<_> = clones
                .iter()
                .map(|c| -> Result<_> {
                    let live = live.clone();
                    let mut agent = c.agent("prober")?;
                    Ok(s.spawn(move || probe_ready(&mut agent, &live)))
                })
                .collect::<Result<_>>()?;
            let workers: Vec<_> = (0..size.workers)
                .map(|w| -> Result<_> {
                    let mut agent = clones[w % n].agent(&format!("worker-{w:02}"))?;
                    let (live, model) = (live.clone(), &model);
                    Ok(s.spawn(move || {
                        work(&mut agent, w % n, &live, model, seed ^ (w as u64 + 1) << 20)
                    }))
                })
                .collect::<Result<_>>()?;
            let director = {
                let mut agent = clones[0].agent("director")?;
                let (live, model) = (live.clone(), &model);
                s.spawn(move || direct(&mut agent, &live.ids[0], &live, model, size, seed ^ 0xD1))
            };
            let provisioners: Vec<_> = (0..size.provisioners)
                .map(|p| -> Result<_> {
                    let mut agent = clones[p % n].agent(&format!("provisioner-{p:02}"))?;
                    let quota = size.issues / size.provisioners
                        + usize::from(p < size.issues % size.provisioners);
                    let (live, model) = (live.clone(), &model);
                    Ok(s.spawn(move || {
                        provision(
                            &mut agent,
                            (p, p % n),
                            quota,
                            size,
                            &live.ids[p % n],
                            model,
                            seed ^ p as u64,
                        )
                    }))
                })
                .collect::<Result<_>>()?;
            for p in provisioners {
                join(p)?;
            }
            let provisioned_in = start.elapsed();
            live.provisioning_done.store(true, Ordering::SeqCst);
            let director_rounds = join(director)?;
            live.director_done.store(true, Ordering::SeqCst);
            let mut worker_time = Duration::ZERO;
            for w in workers {
                worker_time = worker_time.max(join(w)?);
            }
            let mut ready_lat = Latencies::default();
            for p in probers {
                ready_lat.extend(join(p)?);
            }
            Ok((provisioned_in, ready_lat, worker_time, director_rounds))
        })?;
    let model = model
        .into_inner()
        .map_err(|_| Error::internal("model poisoned"))?;

    // Across clones: every clone holds every acknowledged write before the
    // follow-ups name issues closed anywhere.
    let mut leads: Vec<Agent> = clones
        .iter()
        .map(|c| c.agent("lead"))
        .collect::<Result<_>>()?;
    let converged_in = (n > 1).then(|| converge(clones, &mut leads)).transpose()?;

    // The follow-ups: one per closed issue, named for its worker.
    let lead = &mut leads[0];
    let mut closed: Vec<(&String, &String)> = model.closed.iter().collect();
    closed.sort();
    let follow_start = Instant::now();
    let mut follow_ups: BTreeMap<String, String> = BTreeMap::new();
    let mut follow_batches = 0;
    for chunk in closed.chunks(BATCH_MAX) {
        let reqs = chunk
            .iter()
            .map(|(id, worker)| {
                Request::Create(CreateRequest {
                    title: format!("Follow-up for {worker}: confirm {id} with the customer"),
                    priority: Some(3),
                    assignee: Some((*worker).clone()),
                    labels: vec!["follow-up".into()],
                    deps: vec![("discovered-from".into(), (*id).clone())],
                    ..Default::default()
                })
            })
            .collect();
        let resp = lead.call_once(
            Request::Batch { requests: reqs },
            &format!("follow-ups-{follow_batches}"),
        )?;
        for ((id, _), new) in chunk.iter().zip(created_ids(&resp)) {
            follow_ups.insert((*id).clone(), new);
        }
        follow_batches += 1;
    }
    let follow_in = follow_start.elapsed();
    let follow_converged_in = (n > 1).then(|| converge(clones, &mut leads)).transpose()?;

    let described = if n > 1 {
        format!("{}, on {n} clones through a relay", size.describe())
    } else {
        size.describe()
    };
    let mut report = Report::new("surge", described);
    report.timings.push(("provisioning", provisioned_in));
    let won: usize = model.claims.values().map(Vec::len).sum();
    let rate = size.issues as f64 / provisioned_in.as_secs_f64().max(1e-9);
    // The aims are stated at the full size through one daemon; a smaller
    // run, or the mesh variant (three daemons and the relay sharing the
    // machine's cores with the agents), only reports.
    let full = n == 1 && size.issues >= SurgeSize::FULL.issues;
    let provisioned = format!("{} in {:.2} s", size.issues, provisioned_in.as_secs_f64());
    if full {
        report.aim(
            "provisioned",
            provisioned,
            "under 10 s",
            provisioned_in.as_secs_f64() <= 10.0,
        );
    } else {
        report.figure("provisioned", provisioned);
    }
    report.figure("provisioning throughput", format!("{rate:.0} issues/s"));
    report.figure("ready calls timed", ready_lat.len());
    report.figure("ready p50", ms(ready_lat.percentile(50.0)));
    let p99 = ready_lat.percentile(99.0);
    if full {
        report.aim(
            "ready p99",
            ms(p99),
            "under 20 ms",
            p99 < Duration::from_millis(20),
        );
    } else {
        report.figure("ready p99", ms(p99));
    }
    report.figure("ready max", ms(ready_lat.percentile(100.0)));
    report.figure(
        "director re-prioritised",
        format!("{} in {director_rounds} batches", model.priority.len()),
    );
    report.figure(
        "claims won / refused",
        format!("{won} / {}", live.claims_refused.load(Ordering::SeqCst)),
    );
    report.figure(
        "claims per second",
        format!("{:.0}", won as f64 / worker_time.as_secs_f64().max(1e-9)),
    );
    if n > 1 {
        report.figure("claims of another clone's issues", model.claimed_across);
        report.figure(
            "claims granted provisionally",
            live.claims_provisional.load(Ordering::SeqCst),
        );
    }
    report.figure("closed by workers", model.closed.len());
    report.figure(
        "follow-ups",
        format!(
            "{} in {follow_batches} batch(es), {:.2} s",
            follow_ups.len(),
            follow_in.as_secs_f64()
        ),
    );
    let mut differ = Vec::new();
    if let (Some(after), Some(follow)) = (converged_in, follow_converged_in) {
        report
            .timings
            .push(("converged", after.unwrap_or(CONVERGE_LIMIT)));
        let shown = |c: Option<Duration>| match c {
            Some(d) => format!("{:.2} s", d.as_secs_f64()),
            None => format!("not within {} s", CONVERGE_LIMIT.as_secs()),
        };
        report.figure("clones converged after the surge in", shown(after));
        report.figure("clones converged after the follow-ups in", shown(follow));
        let first = state(&mut leads[0])?;
        for (i, lead) in leads.iter_mut().enumerate().skip(1) {
            let other = state(lead)?;
            if other != first {
                differ.push(format!(
                    "clone {} holds {} issues (state {}), the first {} (state {})",
                    i + 1,
                    other.1,
                    &other.0[..12.min(other.0.len())],
                    first.1,
                    &first.0[..12.min(first.0.len())]
                ));
            }
        }
    }
    check(&mut report, &model, &follow_ups, &export(&mut leads[0])?);
    if n > 1 {
        report.must_be_zero("clones in another state", differ.len(), &differ);
    }
    Ok(report)
}

fn join<T>(h: std::thread::ScopedJoinHandle<'_, Result<T>>) -> Result<T> {
    h.join()
        .map_err(|_| Error::internal("a scenario agent panicked"))?
}

/// One provisioning agent (number `p`, on clone `clone`): batches until its
/// quota is made.
fn provision(
    agent: &mut Agent,
    (p, clone): (usize, usize),
    quota: usize,
    size: SurgeSize,
    known: &RwLock<Vec<String>>,
    model: &Mutex<Model>,
    seed: u64,
) -> Result<()> {
    let mut rng = Rng::new(seed);
    let mut made = 0;
    let mut b = 0;
    while made < quota {
        let n = (rng.range(size.batch.0 as u64, size.batch.1 as u64) as usize).min(quota - made);
        let earlier: Vec<String> = {
            let ids = known.read().map_err(|_| Error::internal("ids poisoned"))?;
            if ids.is_empty() {
                Vec::new()
            } else {
                (0..n / 10)
                    .map(|_| ids[rng.draw() as usize % ids.len()].clone())
                    .collect()
            }
        };
        let mut reqs = Vec::with_capacity(n);
        let mut want = Vec::with_capacity(n);
        for k in 0..n {
            let title = format!("surge p{p:02} b{b} #{k}");
            let priority = rng.range(0, 4) as i64;
            let mut deps = Vec::new();
            if k > 0 && rng.chance(20) {
                // Blocked by an issue this batch created before it.
                deps.push(("blocks".to_string(), format!("${}", rng.range(1, k as u64))));
            } else if rng.chance(10) && !earlier.is_empty() {
                // Blocked by an issue an earlier batch (any agent's) made.
                deps.push(("blocks".to_string(), earlier[k % earlier.len()].clone()));
            }
            want.push((title.clone(), priority, deps.clone()));
            reqs.push(Request::Create(CreateRequest {
                title,
                priority: Some(priority),
                labels: vec!["surge".into()],
                deps,
                ..Default::default()
            }));
        }
        let resp = agent.call_once(
            Request::Batch { requests: reqs },
            &format!("surge-p{p}-b{b}"),
        )?;
        let ids = created_ids(&resp);
        if ids.len() != n {
            return Err(Error::internal(format!(
                "a batch of {n} creates answered {} ids",
                ids.len()
            )));
        }
        {
            let mut m = model
                .lock()
                .map_err(|_| Error::internal("model poisoned"))?;
            for ((title, priority, deps), id) in want.into_iter().zip(&ids) {
                let blockers = deps
                    .into_iter()
                    .map(|(_, d)| match d.strip_prefix('$') {
                        Some(n) => ids[n.parse::<usize>().unwrap_or(1) - 1].clone(),
                        None => d,
                    })
                    .collect();
                m.created.insert(title, (id.clone(), priority, blockers));
                m.made_on.insert(id.clone(), clone);
            }
        }
        known
            .write()
            .map_err(|_| Error::internal("ids poisoned"))?
            .extend(ids);
        made += n;
        b += 1;
    }
    Ok(())
}

/// The director: re-prioritises issues already made on its clone (`known`),
/// 500 a batch, while provisioning goes on. Returns how many batches it
/// sent.
fn direct(
    agent: &mut Agent,
    known: &RwLock<Vec<String>>,
    live: &Live,
    model: &Mutex<Model>,
    size: SurgeSize,
    seed: u64,
) -> Result<usize> {
    let mut rng = Rng::new(seed);
    let mut done = 0;
    let mut rounds = 0;
    while done < size.reprioritise {
        let pick: Vec<String> = {
            let ids = known.read().map_err(|_| Error::internal("ids poisoned"))?;
            if ids.len() < 1_000 && !live.provisioning_done.load(Ordering::SeqCst) {
                drop(ids);
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            let n = 500.min(size.reprioritise - done).min(ids.len());
            let mut pick: Vec<String> = (0..n)
                .map(|_| ids[rng.draw() as usize % ids.len()].clone())
                .collect();
            pick.sort();
            pick.dedup();
            pick
        };
        if pick.is_empty() {
            break;
        }
        let new: Vec<i64> = pick.iter().map(|_| rng.range(0, 4) as i64).collect();
        let reqs = pick
            .iter()
            .zip(&new)
            .map(|(id, p)| {
                Request::Update(UpdateRequest {
                    ids: vec![id.clone()],
                    priority: Some(*p),
                    ..Default::default()
                })
            })
            .collect();
        agent.call_once(
            Request::Batch { requests: reqs },
            &format!("director-{rounds}"),
        )?;
        let mut m = model
            .lock()
            .map_err(|_| Error::internal("model poisoned"))?;
        for (id, p) in pick.iter().zip(new) {
            m.priority.insert(id.clone(), p);
        }
        done += pick.len();
        rounds += 1;
        drop(m);
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(rounds)
}

/// A worker on clone `clone`: claims one of the first ready issues and
/// closes it, until the provisioning and the director are done. Returns how
/// long it worked.
fn work(
    agent: &mut Agent,
    clone: usize,
    live: &Live,
    model: &Mutex<Model>,
    seed: u64,
) -> Result<Duration> {
    let mut rng = Rng::new(seed);
    let start = Instant::now();
    let me = agent.name.clone();
    while !live.director_done.load(Ordering::SeqCst) {
        let ready = agent.issues(Request::Ready(ListFilter {
            labels_all: vec!["surge".into()],
            takeable_by: Some(me.clone()),
            limit: Some(16),
            ..Default::default()
        }))?;
        if ready.is_empty() {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        let pick = ready[rng.draw() as usize % ready.len()].id.clone();
        let claim = Request::Update(UpdateRequest {
            ids: vec![pick.clone()],
            claim: true,
            ..Default::default()
        });
        match agent.call(claim) {
            Ok(resp) => {
                if provisional(&resp) {
                    live.claims_provisional.fetch_add(1, Ordering::SeqCst);
                }
                let mut m = model
                    .lock()
                    .map_err(|_| Error::internal("model poisoned"))?;
                m.claims.entry(pick.clone()).or_default().push(me.clone());
                if m.made_on.get(&pick).is_some_and(|c| *c != clone) {
                    m.claimed_across += 1;
                }
            }
            Err(e) if e.kind == ErrorKind::Conflict => {
                live.claims_refused.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            Err(e) => return Err(e),
        }
        agent.call(Request::Close {
            ids: vec![pick.clone()],
            reason: Some(format!("done by {me}")),
            force: false,
        })?;
        model
            .lock()
            .map_err(|_| Error::internal("model poisoned"))?
            .closed
            .insert(pick, me.clone());
    }
    Ok(start.elapsed())
}

/// Whether a claim's answer says it was granted by the clone alone.
fn provisional(resp: &Response) -> bool {
    matches!(resp, Response::Changed(cs)
        if cs.iter().any(|c| c.lease.as_ref().is_some_and(|l| l.provisional)))
}

/// Times `ready` (the first ten an agent would see) every 5 ms until the
/// workers stop.
fn probe_ready(agent: &mut Agent, live: &Live) -> Result<Latencies> {
    let mut lat = Latencies::default();
    while !live.director_done.load(Ordering::SeqCst) {
        let t = Instant::now();
        agent.call(Request::Ready(ListFilter {
            takeable_by: Some(agent.name.clone()),
            limit: Some(10),
            ..Default::default()
        }))?;
        lat.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(lat)
}

/// Compares the tracker with the model.
fn check(
    report: &mut Report,
    model: &Model,
    follow_ups: &BTreeMap<String, String>,
    issues: &[crate::api::Issue],
) {
    let mut by_title: HashMap<&str, Vec<&crate::api::Issue>> = HashMap::new();
    for i in issues {
        by_title.entry(i.title.as_str()).or_default().push(i);
    }
    let by_id: HashMap<&str, &crate::api::Issue> =
        issues.iter().map(|i| (i.id.as_str(), i)).collect();
    let (mut lost, mut duplicated, mut wrong) = (Vec::new(), Vec::new(), Vec::new());
    let mut displaced = Vec::new();
    // Ids acknowledged for two creates (on two clones at once).
    let mut acked: HashMap<&str, usize> = HashMap::new();
    for (id, _, _) in model.created.values() {
        *acked.entry(id.as_str()).or_default() += 1;
    }
    let collided: std::collections::HashSet<&str> = acked
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(id, _)| id)
        .collect();
    for (title, (id, priority, blockers)) in &model.created {
        match by_title.get(title.as_str()).map(Vec::as_slice) {
            None | Some([]) => lost.push(format!("create {title:?} ({id})")),
            Some([one]) => {
                let want = model.priority.get(id).unwrap_or(priority);
                let moved = one.id.starts_with(&format!("{id}~"));
                if moved {
                    // Another clone's create took the same id at the same
                    // time: one keeps it, the other is displaced to
                    // `<id>~<suffix>` with an id notice (see "Two creates of
                    // one id"). Documented, so counted, not a problem.
                    displaced.push(format!("{id} is {} now", one.id));
                } else if one.id != *id {
                    wrong.push(format!("{title:?} is {} (acknowledged as {id})", one.id));
                }
                // A re-prioritisation by an id two clones created went (as
                // documented) to the displaced issue if made before its clone
                // knew of both creates, else to the issue that kept the id:
                // for both issues either value is right.
                let shared = collided.contains(id.as_str());
                if one.priority != *want && !(shared && one.priority == *priority) {
                    lost.push(format!(
                        "priority {want} of {id} (it shows {})",
                        one.priority
                    ));
                }
                for b in blockers {
                    if !one.dependencies.iter().any(|d| &d.depends_on_id == b) {
                        lost.push(format!("{id} blocked by {b}"));
                    }
                }
            }
            Some(many) => duplicated.push(format!("{title:?} {} times", many.len())),
        }
    }
    let surge_issues = issues
        .iter()
        .filter(|i| i.labels.iter().any(|l| l == "surge"));
    for i in surge_issues {
        if !model.created.contains_key(&i.title) {
            duplicated.push(format!("{} ({:?}) was never acknowledged", i.id, i.title));
        }
        let closed = i.status.is_closed();
        match model.closed.get(&i.id) {
            Some(w) if !closed => lost.push(format!("close of {} by {w}", i.id)),
            Some(w) if i.assignee.as_deref() != Some(w) => wrong.push(format!(
                "{} closed by {w} but assigned to {:?}",
                i.id, i.assignee
            )),
            None if closed => {
                duplicated.push(format!("{} closed without an acknowledged close", i.id))
            }
            _ => {}
        }
    }
    let twice: Vec<String> = model
        .claims
        .iter()
        .filter(|(_, w)| w.len() > 1)
        .map(|(id, w)| format!("{id} claimed by {}", w.join(" and ")))
        .collect();
    for (closed_id, new) in follow_ups {
        match by_id.get(new.as_str()) {
            None => lost.push(format!("follow-up {new} of {closed_id}")),
            Some(f) if !f.dependencies.iter().any(|d| &d.depends_on_id == closed_id) => {
                lost.push(format!("follow-up {new}'s link to {closed_id}"))
            }
            _ => {}
        }
    }
    let follow_count = issues
        .iter()
        .filter(|i| i.labels.iter().any(|l| l == "follow-up"))
        .count();
    if follow_count != follow_ups.len() {
        duplicated.push(format!(
            "{follow_count} follow-ups in the tracker, {} acknowledged",
            follow_ups.len()
        ));
    }
    if !displaced.is_empty() || report.size.contains("clones") {
        report.figure(
            "ids displaced by another clone's create",
            match displaced.first() {
                Some(e) => format!("{} (e.g. {e})", displaced.len()),
                None => "0".into(),
            },
        );
    }
    report.must_be_zero("lost writes", lost.len(), &lost);
    report.must_be_zero("duplicated writes", duplicated.len(), &duplicated);
    report.must_be_zero("claims won twice", twice.len(), &twice);
    report.must_be_zero("other mismatches", wrong.len(), &wrong);
}
