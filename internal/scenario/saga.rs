//! Self-healing: agents die mid-work. Worker processes run sagas: claim a
//! job (with a time limit), create its sub-tasks in one batch, close them
//! one by one (commenting on the job, which renews the claim), close the
//! job. Each step is a write with a request id derived from the saga, and
//! each worker keeps a journal: the request before it is sent, and its
//! acknowledgement. Midway the daemon and every worker are killed -9.
//!
//! Recovery: a new daemon starts; the requests the journals show sent but
//! never acknowledged are sent again by their agent's identity with the same
//! request id (applied once, whether or not the first copy was); then a
//! recovery agent settles every saga left: an interrupted one is finished,
//! or compensated if its job says so (its open sub-tasks and the job closed
//! as compensated), once its holder's claim has lapsed; one never started is
//! run whole. The checker proves that no sub-task exists twice, no saga
//! holds half a plan, every acknowledged step is there, and every saga ends
//! complete or compensated.

use super::{Agent, Fleet, Report, Rng, created_ids, export};
use crate::api::{CreateRequest, ListFilter, Request, Response, UpdateRequest};
use crate::{Error, ErrorKind, Result};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How big a self-healing run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SagaSize {
    /// Sagas in all.
    pub sagas: usize,
    /// Worker processes.
    pub workers: usize,
    /// Killed once this share of sagas (percent) is complete.
    pub kill_at_percent: usize,
    /// The workers' claims' time limit, seconds (10 at least).
    pub ttl_s: u64,
    /// Sagas each worker has in hand at once.
    pub parallel: usize,
}

impl SagaSize {
    /// The benchmark's size: 2,000 sagas of 3 to 5 steps, 8 workers.
    pub const FULL: SagaSize = SagaSize {
        sagas: 2_000,
        workers: 8,
        kill_at_percent: 50,
        ttl_s: 10,
        parallel: 8,
    };
    /// The integration tests' size.
    pub const SMALL: SagaSize = SagaSize {
        sagas: 120,
        workers: 4,
        kill_at_percent: 40,
        ttl_s: 10,
        parallel: 4,
    };

    fn describe(&self) -> String {
        format!(
            "{} sagas of 3-5 steps, {} worker processes with {} at once each, killed at {}% done, claims lapse after {}s",
            self.sagas, self.workers, self.parallel, self.kill_at_percent, self.ttl_s
        )
    }
}

/// Steps of saga `n` (3 to 5).
fn steps_of(n: usize) -> usize {
    3 + n % 3
}

/// Whether saga `n` is compensated (rather than finished) if interrupted.
fn compensates(n: usize) -> bool {
    n.is_multiple_of(4)
}

fn job_title(n: usize) -> String {
    format!("saga {n}")
}

fn step_title(n: usize, k: usize) -> String {
    format!("saga {n} step {k}")
}

/// The saga number a job's title names.
fn saga_no(title: &str) -> Option<usize> {
    title.strip_prefix("saga ")?.parse().ok()
}

/// Runs the scenario against a new tracker served by a daemon started from
/// `exe` (the workers are `exe __scenario-agent saga` processes).
pub fn run(exe: &Path, size: SagaSize, seed: u64) -> Result<Report> {
    let fleet = Fleet::new(exe, "saga")?;
    run_on(&fleet, size, seed)
}

/// [`run`] on a fleet already set up.
pub fn run_on(fleet: &Fleet, size: SagaSize, seed: u64) -> Result<Report> {
    let mut lead = fleet.agent("lead")?;
    let mut jobs: BTreeMap<usize, String> = BTreeMap::new();
    for chunk in (0..size.sagas).collect::<Vec<_>>().chunks(1_000) {
        let reqs = chunk
            .iter()
            .map(|&n| {
                let mut labels = vec!["saga-job".to_string()];
                if compensates(n) {
                    labels.push("compensate".into());
                }
                Request::Create(CreateRequest {
                    title: job_title(n),
                    description: format!("steps: {}", steps_of(n)),
                    labels,
                    ..Default::default()
                })
            })
            .collect();
        let ids = created_ids(&lead.call(Request::Batch { requests: reqs })?);
        jobs.extend(chunk.iter().copied().zip(ids));
    }
    let journals = fleet.root.join("journals");
    std::fs::create_dir_all(&journals)?;
    let mut workers = Vec::new();
    for w in 0..size.workers {
        let actor = format!("worker-{w}");
        let child = fleet
            .command(
                &actor,
                &[
                    "__scenario-agent",
                    "saga",
                    "--ttl",
                    &size.ttl_s.to_string(),
                    "--parallel",
                    &size.parallel.to_string(),
                ],
            )
            .arg("--journal")
            .arg(journals.join(format!("{actor}.log")))
            .arg("--seed")
            .arg((seed ^ w as u64).to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        workers.push(child);
    }

    // Wait until the share is done, then kill the machine: daemon and agents.
    let want = size.sagas * size.kill_at_percent / 100;
    let started = Instant::now();
    let done_before = loop {
        let done = closed_jobs(&mut lead)?;
        if done >= want.max(1) {
            break done;
        }
        if started.elapsed() > Duration::from_secs(300) {
            return Err(Error::internal(format!(
                "the sagas stalled at {done} of {want}"
            )));
        }
        if let Some(i) = workers
            .iter_mut()
            .position(|c| c.try_wait().ok().flatten().is_some())
        {
            let out = workers.swap_remove(i).wait_with_output()?;
            for w in &mut workers {
                kill9(w.id());
            }
            return Err(Error::internal(format!(
                "a saga worker ended early ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let daemon = fleet
        .daemon_pid()
        .ok_or_else(|| Error::internal("no daemon pid to kill"))?;
    let killed_at = Instant::now();
    kill9(daemon);
    for w in &mut workers {
        kill9(w.id());
    }
    for w in &mut workers {
        let _ = w.wait();
    }
    drop(lead);

    // The machine comes back: a new daemon, then the recovery.
    let mut down = Instant::now();
    while fleet.daemon_pid().is_some() && down.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    fleet.start_daemon()?;
    down = Instant::now();
    let journal = read_journals(&journals)?;
    let (mut resent_applied_before, mut resent_applied_now) = (0, 0);
    for (actor, entries) in &journal {
        let mut agent = fleet.agent(actor)?;
        for e in entries.iter().filter(|e| e.acked.is_none()) {
            let before = applied(&mut agent, &e.request)?;
            agent.call_once(e.request.clone(), &e.request_id)?;
            if before {
                resent_applied_before += 1;
            } else {
                resent_applied_now += 1;
            }
        }
    }
    // The recovery agent works its way through the sagas on as many
    // sessions as there were workers, each taking its share.
    let share = size.workers.max(1);
    let tallies = std::thread::scope(|s| -> Result<Vec<Tally>> {
        let handles: Vec<_> = (0..share)
            .map(|t| -> Result<_> {
                let mut agent = fleet.agent(&format!("recovery-{t}"))?;
                let mine: BTreeMap<usize, String> = jobs
                    .iter()
                    .filter(|(n, _)| *n % share == t)
                    .map(|(n, id)| (*n, id.clone()))
                    .collect();
                Ok(s.spawn(move || settle_all(&mut agent, &mine, size)))
            })
            .collect::<Result<_>>()?;
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| Error::internal("a recovery session panicked"))?
            })
            .collect()
    })?;
    let settled_in = killed_at.elapsed();
    let _ = down;
    let mut tally = Tally::default();
    for t in tallies {
        tally.interrupted += t.interrupted;
        tally.finished += t.finished;
        tally.compensated += t.compensated;
        tally.fresh += t.fresh;
    }
    let mut recovery = fleet.agent("recovery")?;

    let mut report = Report::new("self-healing", size.describe());
    report.timings.push(("kill to settled", settled_in));
    report.figure("sagas complete before the kill", done_before);
    report.figure("interrupted mid-saga", tally.interrupted);
    report.figure(
        "in-flight requests resent",
        format!(
            "{}: {resent_applied_before} applied before, {resent_applied_now} now",
            resent_applied_before + resent_applied_now
        ),
    );
    report.figure("resumed and finished", tally.finished);
    report.figure("compensated", tally.compensated);
    report.figure("not started, run by recovery", tally.fresh);
    report.figure(
        "time from the kill to every saga settled",
        format!("{:.2} s", settled_in.as_secs_f64()),
    );
    check(&mut report, &jobs, &journal, &export(&mut recovery)?);
    Ok(report)
}

/// Sends SIGKILL to `pid`.
fn kill9(pid: u32) {
    // SAFETY: kill(2) with a pid this run started; no memory is involved.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

fn closed_jobs(agent: &mut Agent) -> Result<usize> {
    Ok(list(
        agent,
        ListFilter {
            labels_all: vec!["saga-job".into()],
            status: vec!["closed".into()],
            ..Default::default()
        },
    )?
    .len())
}

fn list(agent: &mut Agent, f: ListFilter) -> Result<Vec<crate::api::Issue>> {
    agent.issues(Request::List(f))
}

/// The sub-tasks of `job`, by step number.
fn steps(agent: &mut Agent, job: &str) -> Result<BTreeMap<usize, Vec<crate::api::Issue>>> {
    Ok(job_state(agent, job)?.1)
}

/// `job` with its comments, and its sub-tasks by step number.
fn job_state(
    agent: &mut Agent,
    job: &str,
) -> Result<(crate::api::Issue, BTreeMap<usize, Vec<crate::api::Issue>>)> {
    let details = match agent.call(Request::Show {
        ids: vec![job.to_string()],
    })? {
        Response::Details(mut d) if d.len() == 1 => d.remove(0),
        other => return Err(Error::internal(format!("show answered {other:?}"))),
    };
    let issue = details.issue.clone();
    let children: Vec<String> = details
        .dependents
        .iter()
        .filter(|d| d.dep_type == crate::api::DepType::ParentChild)
        .map(|d| d.issue_id.clone())
        .collect();
    let mut out: BTreeMap<usize, Vec<crate::api::Issue>> = BTreeMap::new();
    if children.is_empty() {
        return Ok((issue, out));
    }
    if let Response::Details(ds) = agent.call(Request::Show { ids: children })? {
        for d in ds {
            let k = d
                .issue
                .title
                .rsplit(' ')
                .next()
                .and_then(|k| k.parse().ok())
                .unwrap_or(0);
            out.entry(k).or_default().push(d.issue);
        }
    }
    Ok((issue, out))
}

/// Whether a journaled request had been applied (before it is resent).
fn applied(agent: &mut Agent, req: &Request) -> Result<bool> {
    match req {
        Request::Batch { requests } => {
            // A plan: its first sub-task's parent has sub-tasks.
            let parent = requests.iter().find_map(|r| match r {
                Request::Create(c) => c.parent.clone(),
                _ => None,
            });
            match parent {
                Some(job) => Ok(!steps(agent, &job)?.is_empty()),
                None => Ok(false),
            }
        }
        Request::Close { ids, .. } => match agent.call(Request::Show { ids: ids.clone() })? {
            Response::Details(d) => Ok(d.iter().all(|d| d.issue.status.is_closed())),
            _ => Ok(false),
        },
        _ => Ok(false),
    }
}

#[derive(Default)]
struct Tally {
    interrupted: usize,
    finished: usize,
    compensated: usize,
    fresh: usize,
}

/// The recovery agent: settles every saga not closed, waiting for dead
/// holders' claims to lapse (bounded).
fn settle_all(agent: &mut Agent, jobs: &BTreeMap<usize, String>, size: SagaSize) -> Result<Tally> {
    let mut tally = Tally::default();
    let deadline = Instant::now() + Duration::from_secs(size.ttl_s * 4 + 120);
    loop {
        let open: Vec<crate::api::Issue> = list(
            agent,
            ListFilter {
                labels_all: vec!["saga-job".into()],
                ..Default::default()
            },
        )?
        .into_iter()
        .filter(|j| saga_no(&j.title).is_some_and(|n| jobs.get(&n) == Some(&j.id)))
        .collect();
        if open.is_empty() {
            return Ok(tally);
        }
        if Instant::now() > deadline {
            return Err(Error::internal(format!(
                "{} sagas were never settled",
                open.len()
            )));
        }
        let mut waiting = 0;
        for job in open {
            let Some(n) = saga_no(&job.title) else {
                continue;
            };
            if jobs.get(&n) != Some(&job.id) {
                continue;
            }
            let claim = Request::Update(UpdateRequest {
                ids: vec![job.id.clone()],
                claim: true,
                claim_ttl_ms: Some(60_000),
                ..Default::default()
            });
            match agent.call(claim) {
                Ok(_) => {}
                // A dead worker's claim has not lapsed yet.
                Err(e) if e.kind == ErrorKind::Conflict => {
                    waiting += 1;
                    continue;
                }
                Err(e) => return Err(e),
            }
            let (shown, had) = job_state(agent, &job.id)?;
            let touched = !had.is_empty()
                || shown
                    .comments
                    .iter()
                    .any(|c| c.author == crate::service::BD_ACTOR);
            if !touched {
                run_saga(agent, &job.id, n, "recovery")?;
                tally.fresh += 1;
                continue;
            }
            tally.interrupted += 1;
            if compensates(n) {
                let open: Vec<String> = had
                    .values()
                    .flatten()
                    .filter(|s| !s.status.is_closed())
                    .map(|s| s.id.clone())
                    .collect();
                let mut ids = open;
                ids.push(job.id.clone());
                agent.call_once(
                    Request::Close {
                        ids,
                        reason: Some(
                            "compensated: its agent died; the saga was rolled back".into(),
                        ),
                        force: true,
                    },
                    &format!("recovery:{}:compensate", job.id),
                )?;
                tally.compensated += 1;
            } else {
                if had.is_empty() {
                    plan(agent, &job.id, n, "recovery")?;
                }
                finish(agent, &job.id, n, "recovery")?;
                tally.finished += 1;
            }
        }
        if waiting > 0 {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Creates saga `n`'s sub-tasks under `job` in one batch: a chain, each
/// blocked by the one before.
fn plan_request(job: &str, n: usize) -> Request {
    let requests = (1..=steps_of(n))
        .map(|k| {
            Request::Create(CreateRequest {
                title: step_title(n, k),
                parent: Some(job.to_string()),
                labels: vec!["saga-step".into()],
                deps: if k > 1 {
                    vec![("blocks".into(), format!("${}", k - 1))]
                } else {
                    Vec::new()
                },
                ..Default::default()
            })
        })
        .collect();
    Request::Batch { requests }
}

fn plan(agent: &mut Agent, job: &str, n: usize, who: &str) -> Result<Vec<String>> {
    Ok(created_ids(&agent.call_once(
        plan_request(job, n),
        &format!("{who}:{job}:plan"),
    )?))
}

/// Closes what is open of a planned saga's steps, in order, then the job.
fn finish(agent: &mut Agent, job: &str, n: usize, who: &str) -> Result<()> {
    for (k, s) in steps(agent, job)? {
        for s in s.into_iter().filter(|s| !s.status.is_closed()) {
            agent.call_once(
                Request::Close {
                    ids: vec![s.id],
                    reason: Some("step done".into()),
                    force: false,
                },
                &format!("{who}:{job}:step-{k}"),
            )?;
        }
    }
    agent.call_once(
        Request::Close {
            ids: vec![job.to_string()],
            reason: Some(format!("done: saga {n}")),
            force: false,
        },
        &format!("{who}:{job}:done"),
    )?;
    Ok(())
}

fn run_saga(agent: &mut Agent, job: &str, n: usize, who: &str) -> Result<()> {
    plan(agent, job, n, who)?;
    finish(agent, job, n, who)
}

/// One journaled write: the request as sent, its id, and the answer's ids
/// once acknowledged.
#[derive(Debug, Clone)]
struct Entry {
    request_id: String,
    request: Request,
    acked: Option<Vec<String>>,
}

/// Every journal, by actor, in the order written.
fn read_journals(dir: &Path) -> Result<BTreeMap<String, Vec<Entry>>> {
    let mut out = BTreeMap::new();
    for f in std::fs::read_dir(dir)? {
        let path = f?.path();
        let Some(actor) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        let mut entries: Vec<Entry> = Vec::new();
        for line in std::fs::read_to_string(&path)?.lines() {
            // A line cut by the kill is the last one: it was never sent.
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let rid = v["request_id"].as_str().unwrap_or_default().to_string();
            if let Some(ids) = v.get("acked") {
                let ids = serde_json::from_value(ids.clone()).unwrap_or_default();
                if let Some(e) = entries.iter_mut().rev().find(|e| e.request_id == rid) {
                    e.acked = Some(ids);
                }
            } else if let Ok(request) = serde_json::from_value(v["request"].clone()) {
                entries.push(Entry {
                    request_id: rid,
                    request,
                    acked: None,
                });
            }
        }
        out.insert(actor, entries);
    }
    Ok(out)
}

/// A worker's journal: each write before it is sent, then its answer.
struct Journal(std::fs::File);

impl Journal {
    fn send(&mut self, agent: &mut Agent, req: Request, request_id: &str) -> Result<Response> {
        let line = serde_json::json!({ "request_id": request_id, "request": req });
        writeln!(self.0, "{line}")?;
        let resp = agent.call_once(req, request_id)?;
        let acked = serde_json::json!({ "request_id": request_id, "acked": created_ids(&resp) });
        writeln!(self.0, "{acked}")?;
        Ok(resp)
    }
}

/// A worker process (`bd __scenario-agent saga`): runs up to `parallel`
/// sagas at once, a step of one of them at a time, until none is left to
/// take, journaling each write.
pub fn worker(
    paths: &crate::client::BeadsPaths,
    actor: &str,
    journal: &PathBuf,
    ttl_s: u64,
    parallel: usize,
    seed: u64,
) -> Result<()> {
    let mut agent = Agent::connect(paths, actor)?;
    let mut journal = Journal(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(journal)?,
    );
    let mut rng = Rng::new(seed);
    let mut idle = 0;
    // The sagas this agent has in hand: job id, saga number, its sub-tasks,
    // how many of them are done.
    let mut active: Vec<(String, usize, Vec<String>, usize)> = Vec::new();
    loop {
        if active.len() < parallel {
            let ready = agent.issues(Request::Ready(ListFilter {
                labels_all: vec!["saga-job".into()],
                status: vec!["open".into()],
                takeable_by: Some(actor.to_string()),
                limit: Some(16),
                ..Default::default()
            }))?;
            if let Some(job) =
                (!ready.is_empty()).then(|| ready[rng.draw() as usize % ready.len()].clone())
                && let Some(n) = saga_no(&job.title)
            {
                idle = 0;
                let claim = Request::Update(UpdateRequest {
                    ids: vec![job.id.clone()],
                    claim: true,
                    claim_ttl_ms: Some(ttl_s * 1000),
                    ..Default::default()
                });
                match agent.call(claim) {
                    Ok(_) => {
                        let plan = journal.send(
                            &mut agent,
                            plan_request(&job.id, n),
                            &format!("{}:plan", job.id),
                        )?;
                        active.push((job.id, n, created_ids(&plan), 0));
                    }
                    Err(e) if e.kind == ErrorKind::Conflict => {}
                    Err(e) => return Err(e),
                }
                continue;
            }
        }
        if active.is_empty() {
            idle += 1;
            if idle > 200 {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        // One step of one saga in hand.
        let i = rng.draw() as usize % active.len();
        let (job, n, ids, done) = &mut active[i];
        std::thread::sleep(Duration::from_millis(rng.range(0, 2)));
        if *done < ids.len() {
            journal.send(
                &mut agent,
                Request::Close {
                    ids: vec![ids[*done].clone()],
                    reason: Some("step done".into()),
                    force: false,
                },
                &format!("{job}:step-{}", *done + 1),
            )?;
            *done += 1;
            // Working on the job renews its claim.
            agent.call(Request::CommentAdd {
                id: job.clone(),
                text: format!("step {done} of {} done", ids.len()),
            })?;
        } else {
            journal.send(
                &mut agent,
                Request::Close {
                    ids: vec![job.clone()],
                    reason: Some(format!("done: saga {n}")),
                    force: false,
                },
                &format!("{job}:done"),
            )?;
            active.swap_remove(i);
        }
    }
}

/// Compares the end state with the jobs and the journals.
fn check(
    report: &mut Report,
    jobs: &BTreeMap<usize, String>,
    journal: &BTreeMap<String, Vec<Entry>>,
    issues: &[crate::api::Issue],
) {
    let by_id: BTreeMap<&str, &crate::api::Issue> =
        issues.iter().map(|i| (i.id.as_str(), i)).collect();
    let mut steps: BTreeMap<&str, BTreeMap<usize, Vec<&crate::api::Issue>>> = BTreeMap::new();
    for i in issues
        .iter()
        .filter(|i| i.labels.iter().any(|l| l == "saga-step"))
    {
        let parent = i
            .dependencies
            .iter()
            .find(|d| d.dep_type == crate::api::DepType::ParentChild)
            .map(|d| d.depends_on_id.as_str())
            .unwrap_or("");
        let k = i
            .title
            .rsplit(' ')
            .next()
            .and_then(|k| k.parse().ok())
            .unwrap_or(0);
        steps
            .entry(parent)
            .or_default()
            .entry(k)
            .or_default()
            .push(i);
    }
    let (mut dup, mut partial, mut unsettled, mut lost, mut wrong) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (n, id) in jobs {
        let Some(job) = by_id.get(id.as_str()) else {
            lost.push(format!("job {id}"));
            continue;
        };
        let mine = steps.get(id.as_str()).cloned().unwrap_or_default();
        for (k, s) in &mine {
            if s.len() > 1 {
                dup.push(format!("{id} step {k} exists {} times", s.len()));
            }
        }
        if !mine.is_empty() && mine.len() != steps_of(*n) {
            partial.push(format!("{id} has {} of {} steps", mine.len(), steps_of(*n)));
        }
        let reason = job.close_reason.as_deref().unwrap_or("");
        let all_closed = mine.values().flatten().all(|s| s.status.is_closed());
        if !job.status.is_closed()
            || !all_closed
            || mine.is_empty() && !reason.starts_with("compensated")
        {
            unsettled.push(format!("{id} ({}, {} steps)", job.status, mine.len()));
        } else if reason.starts_with("compensated") && !compensates(*n) {
            wrong.push(format!(
                "{id} compensated, but saga {n} finishes when interrupted"
            ));
        }
    }
    for entries in journal.values() {
        for e in entries.iter().filter(|e| e.acked.is_some()) {
            if let Request::Close { ids, .. } = &e.request {
                for id in ids {
                    if !by_id.get(id.as_str()).is_some_and(|i| i.status.is_closed()) {
                        lost.push(format!("acknowledged close of {id} ({})", e.request_id));
                    }
                }
            }
            for id in e.acked.iter().flatten() {
                if !by_id.contains_key(id.as_str()) {
                    lost.push(format!("acknowledged sub-task {id} ({})", e.request_id));
                }
            }
        }
    }
    report.must_be_zero("duplicated sub-tasks", dup.len(), &dup);
    report.must_be_zero("half-made plans", partial.len(), &partial);
    report.must_be_zero("lost acknowledged writes", lost.len(), &lost);
    report.must_be_zero("sagas not settled", unsettled.len(), &unsettled);
    report.must_be_zero("other mismatches", wrong.len(), &wrong);
}
