use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::ErrorKind;
use bd::client::DaemonClient;
use bd::client::daemon::{self, DaemonOptions, DaemonStatus, StartOptions};
use clap::{Args, Subcommand};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

/// Run and inspect the per-repository daemon (one SQLite writer for every agent)
#[derive(Subcommand, Debug)]
pub enum DaemonCommand {
    /// Start the daemon in the background (or --foreground)
    Start(StartArgs),
    /// Ask the daemon to drain its queue, flush and exit (--all: every daemon of yours)
    Stop(StopArgs),
    /// This user's running daemons, in every repository
    List,
    /// Pid, version, uptime, socket, queue depth, requests served, group sizes
    Status,
    /// Stop the daemon if it runs, then start a fresh one
    Restart(StartArgs),
    /// Print the end of .beads/daemon.log (and daemon.log.1 before it)
    Logs(LogsArgs),
}

#[derive(Args, Debug)]
pub struct StopArgs {
    /// Stop every daemon of yours, in every repository (see `bd daemon list`)
    #[arg(long)]
    pub all: bool,
}

#[derive(Args, Debug)]
pub struct StartArgs {
    /// Run in this process, logging to stderr, until stopped (for debugging)
    #[arg(long)]
    pub foreground: bool,
    /// Exit after this many seconds without requests
    #[arg(long, value_name = "SECS", default_value_t = 1800,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout: u64,
    /// Write issues.jsonl this many milliseconds after the last write
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub flush_debounce: u64,
    /// Most writes committed together in one transaction (1 turns group commit off)
    #[arg(long, value_name = "N", default_value_t = daemon::MAX_GROUP as u64,
          value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub max_group: u64,
    /// Report this version instead of the real one (tests of the upgrade path)
    #[arg(long, hide = true, requires = "foreground")]
    pub report_version: Option<String>,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Number of lines
    #[arg(short = 'n', long, default_value_t = 50)]
    pub lines: usize,
}

/// How long `start` waits for the new daemon to answer, and `stop` for it to exit.
const WAIT: Duration = Duration::from_secs(5);

pub fn cmd_daemon(ctx: &Ctx, c: DaemonCommand) -> Result<(), CliError> {
    match c {
        DaemonCommand::Start(a) => start(ctx, &a),
        DaemonCommand::Stop(a) if a.all => stop_all(ctx),
        DaemonCommand::Stop(_) => stop(ctx).map(|_| ()),
        DaemonCommand::List => list(ctx),
        DaemonCommand::Status => status(ctx),
        DaemonCommand::Restart(a) => restart(ctx, &a),
        DaemonCommand::Logs(a) => logs(ctx, &a),
    }
}

/// Where a foreground daemon's log lines go: stderr, which a detached daemon
/// has pointed at `.beads/daemon.log`. Then the log is rotated while the
/// daemon runs, not only when one starts: past
/// [`daemon::LOG_ROTATE_BYTES`] the file becomes `daemon.log.1` and a fresh
/// `daemon.log` takes over stdout and stderr.
struct LogSink {
    paths: bd::client::BeadsPaths,
    /// Bytes in the current log file; `None` when stderr is not the log.
    written: std::sync::Mutex<Option<u64>>,
}

impl LogSink {
    fn new(paths: &bd::client::BeadsPaths) -> LogSink {
        use std::os::unix::fs::MetadataExt;
        // Is stderr the daemon log? (Compare the open file with the path.)
        let stderr = std::fs::metadata("/proc/self/fd/2").ok();
        let log = std::fs::metadata(paths.daemon_log()).ok();
        let written = match (stderr, log) {
            (Some(e), Some(l)) if e.dev() == l.dev() && e.ino() == l.ino() => Some(l.len()),
            _ => None,
        };
        LogSink {
            paths: paths.clone(),
            written: std::sync::Mutex::new(written),
        }
    }

    fn write(&self, line: &str) {
        let text = format!(
            "[{}] {line}\n",
            bd::api::time::format_rfc3339(bd::api::time::now_ms())
        );
        let Ok(mut written) = self.written.lock() else {
            return;
        };
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
        if let Some(n) = written.as_mut() {
            *n += text.len() as u64;
            if *n > daemon::LOG_ROTATE_BYTES && self.rotate().is_ok() {
                *n = 0;
            }
        }
    }

    fn rotate(&self) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        std::fs::rename(self.paths.daemon_log(), self.paths.daemon_log_old())?;
        let fresh = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.paths.daemon_log())?;
        for fd in [1, 2] {
            // SAFETY: dup2 onto the standard descriptors, from a file that is
            // open for the duration of the call.
            if unsafe { libc::dup2(fresh.as_raw_fd(), fd) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

fn client(ctx: &Ctx) -> Result<Option<DaemonClient>, CliError> {
    Ok(DaemonClient::to_running(
        &ctx.paths()?,
        &ctx.actor,
        ctx.timeout,
    )?)
}

fn start(ctx: &Ctx, a: &StartArgs) -> Result<(), CliError> {
    let paths = startable(ctx)?;
    let socket = daemon::socket_path(&paths, || ctx.runtime_dir())?;
    if a.foreground {
        let sink = LogSink::new(&paths);
        let log: daemon::Log = Arc::new(move |line: &str| sink.write(line));
        let opts = DaemonOptions {
            paths,
            socket,
            idle_timeout: Duration::from_secs(a.idle_timeout),
            flush_debounce: Duration::from_millis(a.flush_debounce),
            max_group: a.max_group as usize,
            version: a
                .report_version
                .clone()
                .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string()),
            config_dir: crate::commands::mesh::config_dir().ok(),
        };
        return Ok(daemon::serve(opts, log)?);
    }
    let s = start_detached(ctx, a)?;
    if ctx.json {
        return output::json(&s);
    }
    output::status(
        ctx.quiet,
        &format!("Started bd daemon (pid {}) on {}", s.pid, s.socket),
    );
    Ok(())
}

/// The tracker's paths, if a daemon may serve it (see
/// [`daemon::check_servable`]).
fn startable(ctx: &Ctx) -> Result<bd::client::BeadsPaths, CliError> {
    let paths = ctx.paths()?;
    daemon::check_servable(&paths)?;
    Ok(paths)
}

/// Starts a detached daemon and waits until it answers; its status.
fn start_detached(ctx: &Ctx, a: &StartArgs) -> Result<DaemonStatus, CliError> {
    let opts = StartOptions {
        exe: std::env::current_exe()?,
        idle_timeout_s: a.idle_timeout,
        flush_debounce_ms: a.flush_debounce,
        max_group: a.max_group as usize,
        wait: WAIT,
    };
    let mut c = daemon::start(&ctx.paths()?, &opts, &ctx.actor, ctx.timeout)?;
    Ok(c.status()?)
}

fn list(ctx: &Ctx) -> Result<(), CliError> {
    let all = daemon::list_mine()?;
    if ctx.json {
        return output::json(&all);
    }
    if all.is_empty() {
        output::status(ctx.quiet, "No bd daemons of yours are running.");
        return Ok(());
    }
    let now = bd::api::time::now_ms();
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|d| {
            vec![
                d.pid.to_string(),
                d.record.version.clone(),
                format!("{} s", now.saturating_sub(d.record.started_ms) / 1000),
                d.dir.display().to_string(),
            ]
        })
        .collect();
    output::print_table(&output::table(&["PID", "VERSION", "UP", "TRACKER"], &rows))
}

/// Asks every daemon of this user to stop (each drains and exits as for
/// `bd daemon stop`) and waits for them.
fn stop_all(ctx: &Ctx) -> Result<(), CliError> {
    let pids = daemon::stop_all(WAIT)?;
    if ctx.json {
        return output::json(&serde_json::json!({"stopped": pids}));
    }
    output::status(ctx.quiet, &format!("Stopped {} bd daemon(s).", pids.len()));
    Ok(())
}

/// Stops a running daemon; false if none ran.
fn stop(ctx: &Ctx) -> Result<bool, CliError> {
    let Some(pid) = stop_running(ctx)? else {
        if ctx.json {
            output::json(&serde_json::json!({"stopped": false, "running": false}))?;
        }
        output::status(ctx.quiet, "No bd daemon is running here.");
        return Ok(false);
    };
    if ctx.json {
        output::json(&serde_json::json!({"stopped": true, "pid": pid}))?;
    }
    output::status(ctx.quiet, &format!("Stopped bd daemon (pid {pid})"));
    Ok(true)
}

/// Stops the daemon and then starts one: one answer (one JSON document). A
/// command that needed a daemon meanwhile may have started one first: one of
/// this bd's version serving is what a restart is for, so that is success.
fn restart(ctx: &Ctx, a: &StartArgs) -> Result<(), CliError> {
    startable(ctx)?;
    let stopped = stop_running(ctx)?;
    if a.foreground {
        return start(ctx, a);
    }
    let (s, by_us) = match start_detached(ctx, a) {
        Ok(s) => (s, true),
        Err(e) if e.0.kind == ErrorKind::Exists => match client(ctx)? {
            Some(mut c) if c.hello.version == env!("CARGO_PKG_VERSION") => (c.status()?, false),
            _ => return Err(e),
        },
        Err(e) => return Err(e),
    };
    if ctx.json {
        let mut v = serde_json::to_value(&s).map_err(bd::Error::from)?;
        v["stopped"] = serde_json::json!(stopped);
        return output::json(&v);
    }
    let before = stopped.map_or("no daemon was running".to_string(), |p| {
        format!("stopped pid {p}")
    });
    let how = if by_us {
        "started"
    } else {
        "a waiting command had started"
    };
    output::status(
        ctx.quiet,
        &format!(
            "Restarted bd daemon: {before}; {how} pid {} on {}",
            s.pid, s.socket
        ),
    );
    Ok(())
}

/// Asks the running daemon to stop and waits until it has let go of its lock
/// (another daemon may take it at once: a command that needs one starts it).
/// Its pid, or `None` if none ran.
fn stop_running(ctx: &Ctx) -> Result<Option<u32>, CliError> {
    Ok(daemon::stop(&ctx.paths()?, &ctx.actor, WAIT)?)
}

fn status(ctx: &Ctx) -> Result<(), CliError> {
    let Some(mut c) = client(ctx)? else {
        if ctx.json {
            return output::json(&serde_json::json!({"running": false}));
        }
        return output::print("No bd daemon is running here.\n");
    };
    let s = c.status()?;
    if ctx.json {
        let mut v = serde_json::to_value(&s).map_err(bd::Error::from)?;
        v["running"] = serde_json::json!(true);
        return output::json(&v);
    }
    let mean = if s.groups > 0 {
        s.writes as f64 / s.groups as f64
    } else {
        0.0
    };
    output::print(&format!(
        "bd daemon {} (protocol {})\npid:         {}\nuptime:      {} s\nsocket:      {}\nconnections: {}\nqueue:       {} waiting, {} being committed\nrequests:    {}\nwrites:      {} in {} groups (mean {:.1}, largest {}), {} disk syncs\nlast error:  {}\n",
        s.version,
        s.protocol,
        s.pid,
        s.uptime_ms / 1000,
        s.socket,
        s.connections,
        s.queue_depth,
        s.in_flight,
        s.requests,
        s.writes,
        s.groups,
        mean,
        s.largest_group,
        s.syncs,
        s.last_error.as_deref().unwrap_or("none")
    ))?;
    if let Some(r) = &s.relay {
        output::print(&format!(
            "relay:       {} ({}); published through seq {}; batches out {}, in {}, refused {}\n",
            if r.connected {
                "connected"
            } else {
                "not connected"
            },
            r.urls.join(", "),
            r.published_seq,
            r.batches_out,
            r.batches_in,
            r.refused
        ))?;
    }
    Ok(())
}

fn logs(ctx: &Ctx, a: &LogsArgs) -> Result<(), CliError> {
    let paths = ctx.paths()?;
    let path = paths.daemon_log();
    // The rotated log first, so a short current log still shows enough history.
    let older = std::fs::read_to_string(paths.daemon_log_old()).unwrap_or_default();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => older + &t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !older.is_empty() => older,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if ctx.json {
                return output::json(
                    &serde_json::json!({"path": path.display().to_string(), "lines": []}),
                );
            }
            output::status(
                ctx.quiet,
                &format!("No daemon log yet ({}).", path.display()),
            );
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(a.lines)..];
    if ctx.json {
        return output::json(
            &serde_json::json!({"path": path.display().to_string(), "lines": tail}),
        );
    }
    output::print(&tail.iter().map(|l| format!("{l}\n")).collect::<String>())
}
