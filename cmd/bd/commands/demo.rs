//! `bd demo`: simulated agents sharing one tracker, through the same client API the
//! CLI uses.

use super::demo_relay::RelayAct;
use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::api::Issue;
use bd::api::ListFilter;
use bd::api::{CreateRequest, Request, Response, UpdateRequest};
use bd::client::{BEADS_DIR, BeadsPaths};
use bd::client::{Backend, Direct, InitOptions, init};
use bd::{Error, ErrorKind};
use clap::Args;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Run simulated agents against a throwaway repository
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Number of simulated agents
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=16), conflicts_with = "scenario")]
    pub agents: u8,
    /// Keep the demo repository and print where it is
    #[arg(long)]
    pub keep: bool,
    /// Run a fleet scenario instead, check its end state against a model of
    /// what bd acknowledged, and print its table of figures (exit 1 if the
    /// checker finds a difference)
    #[arg(long, value_enum, value_name = "NAME")]
    pub scenario: Option<super::scenario::Scenario>,
    /// With --scenario: how big (full: the sizes the aims are stated at,
    /// under a minute each on a 2-core machine; small: seconds)
    #[arg(long, value_enum, default_value = "full", requires = "scenario")]
    pub size: super::scenario::Size,
    /// With --scenario: the seed of the agents' random choices (how their
    /// threads and processes interleave still varies from run to run)
    #[arg(long, default_value_t = 1, requires = "scenario")]
    pub seed: u64,
    /// With --scenario surge or recursive: clones share the work through a
    /// relay (a nats-server -js the run starts on loopback; nats-server must
    /// be on PATH): three for the surge, two for the recursive scenario
    /// (joins on forks made on the other clone); the table adds the time
    /// they take to converge
    #[arg(long, requires = "scenario")]
    pub mesh: bool,
}

pub(super) struct Log {
    start: Instant,
    quiet: bool,
    lock: Mutex<()>,
    /// The config directory the demo's commands use (`XDG_CONFIG_HOME`), in
    /// the demo's directory: the relay act's keys never touch the user's.
    pub(super) config_dir: std::path::PathBuf,
}

impl Log {
    /// One line of the story, on stdout with the rest of the demo's output.
    pub(super) fn say(&self, who: &str, msg: &str) {
        if self.quiet {
            return;
        }
        let _g = self.lock.lock();
        let _ = crate::output::print(&format!(
            "[{:>5} ms] {who:<9} {msg}\n",
            self.start.elapsed().as_millis()
        ));
    }

    /// Runs a real `bd` command in `dir` as `actor` (the command a user would
    /// type there), shows it as `$ bd …` with its real output, and returns
    /// that output. Fails if the command fails.
    pub(super) fn run(
        &self,
        who: &str,
        dir: &std::path::Path,
        actor: &str,
        args: &[&str],
    ) -> Result<String, Error> {
        self.run_expecting(who, dir, actor, args, 0)
    }

    /// [`Log::run`] for a command that must exit with `code` (a refusal the
    /// demo shows on purpose).
    pub(super) fn run_expecting(
        &self,
        who: &str,
        dir: &std::path::Path,
        actor: &str,
        args: &[&str],
        code: i32,
    ) -> Result<String, Error> {
        let out = self.command(dir, actor, args)?.output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !self.quiet {
            let _g = self.lock.lock();
            let quoted: Vec<String> = args
                .iter()
                .map(|a| {
                    if a.contains(' ') || a.contains('"') {
                        format!("{a:?}")
                    } else {
                        a.to_string()
                    }
                })
                .collect();
            let mut shown = format!("{who:>18}  $ bd {}\n", quoted.join(" "));
            for line in text.lines() {
                shown.push_str(&format!("{:>18}    {line}\n", ""));
            }
            let _ = crate::output::print(&shown);
        }
        if out.status.code() != Some(code) {
            return Err(Error::internal(format!(
                "`bd {}` exited {:?} in the demo (expected {code}): {}",
                args.join(" "),
                out.status.code(),
                text.trim()
            )));
        }
        Ok(text)
    }
}

impl Log {
    /// The `bd` command `args` in `dir` as `actor`, as the demo runs it.
    fn command(
        &self,
        dir: &std::path::Path,
        actor: &str,
        args: &[&str],
    ) -> Result<std::process::Command, Error> {
        let mut c = std::process::Command::new(std::env::current_exe()?);
        c.args(args)
            .current_dir(dir)
            .env("BD_ACTOR", actor)
            .env("BD_AUTO_START", "0")
            .env("XDG_CONFIG_HOME", &self.config_dir)
            .env_remove("BEADS_DIR")
            .stdin(std::process::Stdio::null());
        Ok(c)
    }

    /// Runs a `bd` command without showing it; its stdout when it succeeded.
    pub(super) fn quiet_run(
        &self,
        dir: &std::path::Path,
        actor: &str,
        args: &[&str],
    ) -> Option<String> {
        let out = self.command(dir, actor, args).ok()?.output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
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
            force: false,
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
    if let Some(scenario) = a.scenario {
        return super::scenario::run(ctx, scenario, a.size, a.seed, a.keep, a.mesh);
    }
    let dir = tempfile::Builder::new().prefix("bd-demo-").tempdir()?;
    let root = dir.path().to_path_buf();
    let log = Log {
        start: Instant::now(),
        quiet: ctx.quiet || ctx.json,
        lock: Mutex::new(()),
        config_dir: root.join("config"),
    };
    let git = std::process::Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["init", "-q"])
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
    log.say(
        "lead",
        &format!(
            "planned epic {} with 6 children; what can be taken now:",
            epic.id
        ),
    );
    log.run("lead", &root, "lead", &["ready"])?;

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
        force: false,
    })?;
    log.say("lead", &format!("closed epic {}", epic.id));
    log.run("lead", &root, "lead", &["stats"])?;
    // Act two: a second machine, through a git remote.
    let two = if git {
        Some(two_machines(&root, &mut lead, &log)?)
    } else {
        None
    };
    // Act three: the same two machines through a relay, in real time.
    let relay = if git {
        super::demo_relay::act(&root, &root.join("machine-b"), &log)?
    } else {
        RelayAct::skipped("needs git (the members file travels through it)")
    };
    // The figures of the whole run, the second act's issues included.
    lead.call(Request::Flush)?;
    let stats = match lead.call(Request::Stats)? {
        Response::Stats(s) => s,
        other => return Err(super::unexpected(other)),
    };
    let kept = if a.keep { Some(dir.keep()) } else { None };
    if ctx.json {
        return output::json(&serde_json::json!({
            "agents": a.agents, "closed_by_agents": total.closed, "lost_claim_races": total.lost_claims,
            "discovered": total.discovered, "stats": stats, "kept": kept, "two_machines": two,
            "relay": relay,
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
    if let Some(t) = &two {
        s.push_str(&format!(
            "Two machines through git: {} ops exchanged, {} conflicts (a title, an id used twice) escalated and resolved, no write lost; both end with state {}.\n",
            t.ops_exchanged,
            t.conflicts_resolved,
            &t.state_hash[..12]
        ));
    }
    match (&relay.skipped, relay.create_seen_ms, relay.claim_seen_ms) {
        (None, Some(create), Some(claim)) => s.push_str(&format!(
            "Two machines through a relay, no git: B saw A's create {create:.0} ms after it was answered, A saw B's claim {claim:.0} ms after.\n"
        )),
        (Some(why), _, _) => s.push_str(&format!("Relay act skipped: {why}.\n")),
        _ => {}
    }
    match kept {
        Some(p) => s.push_str(&format!(
            "Kept the demo repository: cd {} && bd list --all\n",
            p.display()
        )),
        None => s.push_str("The demo repository was removed (use --keep to explore it).\n"),
    }
    output::print(&s)
}

/// What the second act showed.
#[derive(Debug, serde::Serialize)]
struct TwoMachines {
    ops_exchanged: u64,
    conflicts_resolved: u64,
    state_hash: String,
}

use bd::scenario::machines::git;

fn info_hash(c: &mut Direct) -> Result<String, Error> {
    match c.call(Request::Info)? {
        Response::Info(i) => Ok(i.state_hash),
        other => Err(Error::internal(format!("unexpected {other:?}"))),
    }
}

fn sync(c: &mut Direct) -> Result<bd::api::SyncReport, Error> {
    match c.call(Request::Sync(Default::default()))? {
        Response::Sync(r) => Ok(r),
        other => Err(Error::internal(format!("unexpected {other:?}"))),
    }
}

/// A bare repository as `origin`, a clone of it as a second machine, the same
/// issue edited on both without either seeing the other: after syncing, both
/// list the conflict; one resolves it; after syncing again both agree.
fn two_machines(
    root: &std::path::Path,
    lead: &mut Direct,
    log: &Log,
) -> Result<TwoMachines, Error> {
    let remotes = root.join("remotes");
    std::fs::create_dir_all(&remotes)?;
    git(&remotes, &["init", "-q", "--bare", "origin.git"])?;
    let origin = remotes.join("origin.git");
    git(
        root,
        &["remote", "add", "origin", &origin.display().to_string()],
    )?;
    git(root, &["checkout", "-q", "-b", "main"])?;
    let r = sync(lead)?;
    log.say(
        "machine A",
        &format!("bd sync: committed bd's files, pushed: {}", r.pushed),
    );
    let b_root = root.join("machine-b");
    git(
        root,
        &[
            "clone",
            "-q",
            "-b",
            "main",
            &origin.display().to_string(),
            "machine-b",
        ],
    )?;
    let b_init = init(
        &b_root,
        &InitOptions {
            prefix: None,
            replica: bd::client::new_replica_id()?,
        },
    )?;
    let b_paths = BeadsPaths::new(b_root.join(BEADS_DIR));
    let mut bob = Direct::open(b_paths.clone(), "bob")?;
    log.say(
        "machine B",
        &format!(
            "cloned and ran bd init: {} ops from machine A applied",
            b_init.ops_applied
        ),
    );
    let follow = create(
        lead,
        CreateRequest {
            title: "Add remember-me".into(),
            labels: vec!["login".into()],
            ..Default::default()
        },
    )?;
    sync(lead)?;
    let got = sync(&mut bob)?.ops_applied;
    log.say(
        "machine B",
        &format!("bd sync: {got} new op(s), including {}", follow.id),
    );
    // Both retitle it, neither having seen the other's edit: where the
    // conflict below comes from.
    log.say("both", "each retitles it before seeing the other's edit:");
    log.run(
        "machine A (lead)",
        root,
        "lead",
        &[
            "update",
            &follow.id,
            "--title",
            "Add a remember-me checkbox",
        ],
    )?;
    log.run(
        "machine B (bob)",
        &b_root,
        "bob",
        &[
            "update",
            &follow.id,
            "--title",
            "Add remember-me (30-day cookie)",
        ],
    )?;
    log.run(
        "machine B (bob)",
        &b_root,
        "bob",
        &[
            "comment",
            "add",
            &follow.id,
            "security wants 30 days at most",
        ],
    )?;
    let mut exchanged = got;
    exchanged += sync(lead)?.ops_applied;
    exchanged += sync(&mut bob)?.ops_applied;
    let conflicts = match bob.call(Request::Conflicts)? {
        Response::Conflicts(c) => c,
        other => return Err(Error::internal(format!("unexpected {other:?}"))),
    };
    let names: Vec<String> = conflicts
        .iter()
        .flat_map(|c| {
            c.contenders
                .iter()
                .map(|k| format!("{} ({})", k.value, k.actor))
        })
        .collect();
    log.say(
        "machine B",
        &format!(
            "bd sync: {} conflict on {} title: {}",
            conflicts.len(),
            follow.id,
            names.join(" vs ")
        ),
    );
    log.run("machine B (bob)", &b_root, "bob", &["conflicts"])?;
    log.run(
        "machine B (bob)",
        &b_root,
        "bob",
        &["resolve", &follow.id, "--field", "title", "--take", "bob"],
    )?;
    exchanged += sync(&mut bob)?.ops_applied;
    exchanged += sync(lead)?.ops_applied;
    // Both split it into a sub-task before syncing: each machine numbers its
    // child <id>.1. Two pieces of work, so two issues, named alike everywhere.
    log.say(
        "both",
        "each splits off a sub-task, numbered alike on both machines:",
    );
    let mine_id = log
        .run(
            "machine A (lead)",
            root,
            "lead",
            &[
                "create",
                "Remember-me: server-side token",
                "--parent",
                &follow.id,
                "-q",
            ],
        )?
        .trim()
        .to_string();
    let theirs_id = log
        .run(
            "machine B (bob)",
            &b_root,
            "bob",
            &[
                "create",
                "Remember-me: checkbox on the form",
                "--parent",
                &follow.id,
                "-q",
            ],
        )?
        .trim()
        .to_string();
    if mine_id != theirs_id {
        return Err(Error::internal(format!(
            "expected the same child id on both machines, got {mine_id} and {theirs_id}"
        )));
    }
    struct Made {
        id: String,
    }
    let mine = Made { id: mine_id };
    exchanged += sync(lead)?.ops_applied;
    exchanged += sync(&mut bob)?.ops_applied;
    exchanged += sync(lead)?.ops_applied;
    let children = |c: &mut Direct| -> Result<Vec<(String, String)>, Error> {
        let mut out = Vec::new();
        let all = ListFilter {
            all: true,
            ..Default::default()
        };
        let issues = match c.call(Request::List(all))? {
            Response::Issues(i) => i,
            other => return Err(Error::internal(format!("unexpected {other:?}"))),
        };
        for i in issues {
            if i.id == mine.id || bd::api::wire_id(&i.id) == mine.id {
                out.push((i.id, i.title));
            }
        }
        out.sort();
        Ok(out)
    };
    let (on_a, on_b) = (children(lead)?, children(&mut bob)?);
    if on_a.len() != 2 || on_a != on_b {
        return Err(Error::internal(format!(
            "two creates of {} did not stay two issues alike on both machines: {on_a:?} vs {on_b:?}",
            mine.id
        )));
    }
    log.say(
        "both",
        &format!(
            "bd sync: both kept, as {} and {}, alike on both machines",
            on_a[0].0, on_a[1].0
        ),
    );
    log.run("machine A (lead)", root, "lead", &["show", &mine.id])?;
    log.run(
        "machine B (bob)",
        &b_root,
        "bob",
        &["resolve", &mine.id, "--field", "id", "--value", "ack"],
    )?;
    exchanged += sync(&mut bob)?.ops_applied;
    exchanged += sync(lead)?.ops_applied;
    let (ha, hb) = (info_hash(lead)?, info_hash(&mut bob)?);
    if ha != hb {
        return Err(Error::internal("the two machines did not converge"));
    }
    // Nothing was lost on the way: both titles were listed, and bob's comment
    // reached machine A.
    let contenders = conflicts.iter().map(|c| c.contenders.len()).sum::<usize>();
    let seen_on_a = match lead.call(Request::Show {
        ids: vec![follow.id.clone()],
    })? {
        Response::Details(d) => d.first().is_some_and(|d| {
            d.issue.title == "Add remember-me (30-day cookie)"
                && d.issue.comments.iter().any(|c| c.author == "bob")
        }),
        other => return Err(Error::internal(format!("unexpected {other:?}"))),
    };
    if contenders != 2 || !seen_on_a {
        return Err(Error::internal("a write was lost between the two machines"));
    }
    let left = match lead.call(Request::Conflicts)? {
        Response::Conflicts(c) => c.len(),
        _ => 0,
    };
    log.say(
        "machine A",
        &format!(
            "bd sync: the resolutions arrived; {left} conflicts left; both machines at state {}",
            &ha[..12]
        ),
    );
    Ok(TwoMachines {
        ops_exchanged: exchanged,
        conflicts_resolved: conflicts.len() as u64 + 1,
        state_hash: ha,
    })
}
