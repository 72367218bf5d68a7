//! `bd demo`: simulated agents sharing one tracker, through the same client API the
//! CLI uses.

use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::client::{Backend, Direct, InitOptions, init};
use bd::model::Issue;
use bd::query::ListFilter;
use bd::service::{CreateRequest, Request, Response, UpdateRequest};
use bd::storage::{BEADS_DIR, BeadsPaths};
use bd::{Error, ErrorKind};
use clap::Args;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Run simulated agents against a throwaway repository
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Number of simulated agents
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=16))]
    pub agents: u8,
    /// Keep the demo repository and print where it is
    #[arg(long)]
    pub keep: bool,
}

struct Log {
    start: Instant,
    quiet: bool,
    lock: Mutex<()>,
}

impl Log {
    fn say(&self, who: &str, msg: &str) {
        if self.quiet {
            return;
        }
        let _g = self.lock.lock();
        eprintln!(
            "[{:>5} ms] {who:<8} {msg}",
            self.start.elapsed().as_millis()
        );
    }
}

fn issue(resp: Response) -> Result<Issue, Error> {
    match resp {
        Response::Issue(i) => Ok(*i),
        other => Err(Error::internal(format!("unexpected {other:?}"))),
    }
}

fn ready_ids(client: &mut Direct) -> Result<Vec<Issue>, Error> {
    let f = ListFilter {
        issue_type: vec![
            "task".into(),
            "bug".into(),
            "feature".into(),
            "chore".into(),
        ],
        unassigned: true,
        ..Default::default()
    };
    match client.call(Request::Ready(f))? {
        Response::Issues(i) => Ok(i),
        other => Err(Error::internal(format!("unexpected {other:?}"))),
    }
}

fn create(client: &mut Direct, req: CreateRequest) -> Result<Issue, Error> {
    issue(client.call(Request::Create(req))?)
}

#[derive(Default)]
struct Tally {
    closed: u32,
    lost_claims: u32,
    discovered: u32,
}

fn agent(paths: BeadsPaths, name: String, log: &Log, seed: u64) -> Result<Tally, Error> {
    let mut client = Direct::open(paths, &name)?;
    let mut tally = Tally::default();
    let mut idle = 0;
    for round in 0..200u64 {
        let ready = ready_ids(&mut client)?;
        let Some(pick) = ready.first() else {
            idle += 1;
            if idle >= 20 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        idle = 0;
        let claim = UpdateRequest {
            ids: vec![pick.id.clone()],
            claim: true,
            ..Default::default()
        };
        match client.call(Request::Update(claim)) {
            Ok(_) => log.say(&name, &format!("claimed {} \"{}\"", pick.id, pick.title)),
            Err(e) if e.kind() == ErrorKind::Conflict => {
                tally.lost_claims += 1;
                log.say(
                    &name,
                    &format!("lost the race for {} ({})", pick.id, e.message),
                );
                continue;
            }
            Err(e) => return Err(e),
        }
        std::thread::sleep(Duration::from_millis(15 + (seed * 7 + round * 13) % 25));
        if tally.discovered == 0 && (seed + round).is_multiple_of(3) {
            let found = create(
                &mut client,
                CreateRequest {
                    title: format!("Follow-up found by {name} while doing {}", pick.id),
                    priority: Some(3),
                    issue_type: Some("chore".into()),
                    labels: vec!["discovered".into()],
                    deps: vec![("discovered-from".into(), pick.id.clone())],
                    ..Default::default()
                },
            )?;
            tally.discovered += 1;
            log.say(
                &name,
                &format!("discovered new work {} \"{}\"", found.id, found.title),
            );
        }
        client.call(Request::CommentAdd {
            id: pick.id.clone(),
            text: format!("done by {name}"),
        })?;
        client.call(Request::Close {
            ids: vec![pick.id.clone()],
            reason: Some("done".into()),
        })?;
        tally.closed += 1;
        let now: Vec<String> = ready_ids(&mut client)?.into_iter().map(|i| i.id).collect();
        log.say(
            &name,
            &format!("closed {}; ready queue now: [{}]", pick.id, now.join(", ")),
        );
    }
    Ok(tally)
}

pub fn cmd_demo(ctx: &Ctx, a: DemoArgs) -> Result<(), CliError> {
    let dir = tempfile::Builder::new().prefix("bd-demo-").tempdir()?;
    let root = dir.path().to_path_buf();
    let log = Log {
        start: Instant::now(),
        quiet: ctx.quiet || ctx.json,
        lock: Mutex::new(()),
    };
    let git = std::process::Command::new("git")
        .args(["init", "-q"])
        .current_dir(&root)
        .stdin(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    log.say(
        "demo",
        &format!(
            "repository {} ({})",
            root.display(),
            if git {
                "git init"
            } else {
                "git not found; plain directory"
            }
        ),
    );
    let replica = super::init::new_replica_id()?;
    init(
        &root,
        &InitOptions {
            prefix: Some("demo".into()),
            replica,
        },
    )?;
    let paths = BeadsPaths::new(root.join(BEADS_DIR));
    let mut lead = Direct::open(paths.clone(), "lead")?;

    let epic = create(
        &mut lead,
        CreateRequest {
            title: "Ship the login page".into(),
            issue_type: Some("epic".into()),
            priority: Some(1),
            ..Default::default()
        },
    )?;
    let child = |lead: &mut Direct, title: &str, p: i64, deps: Vec<(String, String)>| {
        create(
            lead,
            CreateRequest {
                title: title.into(),
                priority: Some(p),
                parent: Some(epic.id.clone()),
                deps,
                labels: vec!["login".into()],
                ..Default::default()
            },
        )
    };
    let schema = child(&mut lead, "Design the session schema", 1, vec![])?;
    let api = child(
        &mut lead,
        "Build the login API",
        1,
        vec![("blocks".into(), schema.id.clone())],
    )?;
    let form = child(&mut lead, "Build the login form", 2, vec![])?;
    let wire = child(
        &mut lead,
        "Wire the form to the API",
        2,
        vec![
            ("blocks".into(), api.id.clone()),
            ("blocks".into(), form.id.clone()),
        ],
    )?;
    let tests = child(
        &mut lead,
        "End-to-end login tests",
        2,
        vec![("blocks".into(), wire.id.clone())],
    )?;
    child(
        &mut lead,
        "Document the login flow",
        3,
        vec![("blocks".into(), tests.id.clone())],
    )?;
    let first: Vec<String> = ready_ids(&mut lead)?.into_iter().map(|i| i.id).collect();
    log.say(
        "lead",
        &format!(
            "planned epic {} with 6 children; ready queue: [{}]",
            epic.id,
            first.join(", ")
        ),
    );

    let tallies: Vec<Result<Tally, Error>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..a.agents)
            .map(|i| {
                let (paths, log) = (paths.clone(), &log);
                s.spawn(move || agent(paths, format!("agent-{}", i + 1), log, i as u64))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::internal("agent thread panicked")))
            })
            .collect()
    });
    let mut total = Tally::default();
    for t in tallies {
        let t = t?;
        total.closed += t.closed;
        total.lost_claims += t.lost_claims;
        total.discovered += t.discovered;
    }
    lead.call(Request::Close {
        ids: vec![epic.id.clone()],
        reason: Some("all children done".into()),
    })?;
    log.say("lead", &format!("closed epic {}", epic.id));
    lead.call(Request::Flush)?;
    let stats = match lead.call(Request::Stats)? {
        Response::Stats(s) => s,
        other => return Err(super::unexpected(other)),
    };
    let kept = if a.keep { Some(dir.keep()) } else { None };
    if ctx.json {
        return output::json(&serde_json::json!({
            "agents": a.agents, "closed_by_agents": total.closed, "lost_claim_races": total.lost_claims,
            "discovered": total.discovered, "stats": stats, "kept": kept,
        }));
    }
    let mut s = format!(
        "\nDemo finished: {} agents closed {} issues, discovered {}, lost {} claim races (each issue had exactly one winner).\n",
        a.agents, total.closed, total.discovered, total.lost_claims
    );
    s.push_str(&format!(
        "Final stats: {} issues, {} ready, {} blocked, {} conflicts, {} ops recorded.\n",
        stats.total, stats.ready, stats.blocked, stats.conflicts, stats.ops
    ));
    let by: Vec<String> = stats
        .by_status
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    s.push_str(&format!("By status: {}\n", by.join(", ")));
    match kept {
        Some(p) => s.push_str(&format!(
            "Kept the demo repository: cd {} && bd list --all\n",
            p.display()
        )),
        None => s.push_str("The demo repository was removed (use --keep to explore it).\n"),
    }
    output::print(&s)
}
