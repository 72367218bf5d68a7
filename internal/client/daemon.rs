//! The daemon as a program embedding bd controls it: serving as one
//! ([`serve`]), starting one and waiting until it answers ([`start`]), asking
//! one or all to stop ([`stop`], [`stop_all`]), and finding them ([`running`],
//! [`list_mine`]). Auto-start ([`super::connect`]) and `bd daemon start` use
//! the same [`start`].

pub use crate::daemon::{
    DaemonOptions, LOG_ROTATE_BYTES, LockRecord, Log, MAX_GROUP, RunningDaemon, list_mine,
    private_runtime_dir, rotate_log, run as serve, running, socket_path, terminate,
};
pub use crate::rpc::DaemonStatus;

use super::DaemonClient;
use crate::storage::{BeadsPaths, DB_FILE, Store};
use crate::{Error, ErrorKind, Result};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How a detached daemon is started.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// The bd binary to run (`bd daemon start --foreground`).
    pub exe: PathBuf,
    /// Exit after this long without requests, in seconds.
    pub idle_timeout_s: u64,
    /// Write the snapshot this long after the last write, in ms.
    pub flush_debounce_ms: u64,
    /// Most writes committed together.
    pub max_group: usize,
    /// How long to wait for it to answer.
    pub wait: Duration,
}

/// Checks that a daemon may serve the tracker at `paths`: its directory's own
/// database (clients reach a daemon by its directory, so a daemon on another
/// file would take requests meant for this one), and one that opens (a clear
/// error now beats one in the log).
pub fn check_servable(paths: &BeadsPaths) -> Result<()> {
    let own = paths.dir.join(DB_FILE);
    if paths.db != own {
        return Err(Error::invalid(format!(
            "a daemon serves {}, not {}",
            own.display(),
            paths.db.display()
        ))
        .hint("commands with --db run in-process; drop --db to start the daemon"));
    }
    Store::open(&paths.db)?;
    Ok(())
}

/// Starts a detached daemon for `paths` and waits until it answers: a client of
/// it for `actor`. Fails with kind `exists` if a daemon already runs there.
pub fn start(
    paths: &BeadsPaths,
    opts: &StartOptions,
    actor: &str,
    timeout: Duration,
) -> Result<DaemonClient> {
    if let Some(Some(record)) = running(paths)? {
        return Err(Error::new(
            ErrorKind::Exists,
            format!("a bd daemon is already running here (pid {})", record.pid),
        )
        .hint("see it with `bd daemon status`; stop it with `bd daemon stop`"));
    }
    let mut child = crate::daemon::spawn(
        paths,
        &opts.exe,
        opts.idle_timeout_s,
        opts.flush_debounce_ms,
        opts.max_group,
    )?;
    let started = Instant::now();
    loop {
        if let Some(Some(_)) = running(paths)?
            && let Ok(Some(c)) = DaemonClient::to_running(paths, actor, timeout)
        {
            return Ok(c);
        }
        if let Some(exit) = child.try_wait()? {
            return Err(Error::new(
                ErrorKind::Io,
                format!("the daemon exited at start ({exit})"),
            )
            .hint("see `bd daemon logs` (.beads/daemon.log)"));
        }
        if started.elapsed() > opts.wait {
            return Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "the daemon did not answer within {} s",
                    opts.wait.as_secs_f64()
                ),
            )
            .hint("see `bd daemon logs` (.beads/daemon.log)"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Asks the tracker's daemon to drain, flush and exit, and waits until it has
/// let go of its lock (another may take it at once: a command that needs one
/// starts it). Its pid, or `None` if none ran.
pub fn stop(paths: &BeadsPaths, actor: &str, wait: Duration) -> Result<Option<u32>> {
    let Some(mut c) = DaemonClient::to_running(paths, actor, wait)? else {
        return Ok(None);
    };
    let pid = c.hello.pid;
    c.stop()?;
    drop(c);
    let started = Instant::now();
    while running(paths)?.is_some_and(|r| r.is_none_or(|r| r.pid == pid)) {
        if started.elapsed() > wait {
            return Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "the daemon (pid {pid}) did not exit within {} s",
                    wait.as_secs_f64()
                ),
            )
            .hint("see `bd daemon logs`"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(Some(pid))
}

/// Asks every daemon of this user to stop (each drains and exits as for
/// [`stop`]) and waits for them: their pids.
pub fn stop_all(wait: Duration) -> Result<Vec<u32>> {
    let all = list_mine()?;
    for d in &all {
        terminate(&BeadsPaths::new(&d.dir))?;
    }
    let started = Instant::now();
    let mut left: Vec<&RunningDaemon> = all.iter().collect();
    while !left.is_empty() && started.elapsed() < wait {
        left.retain(|d| {
            running(&BeadsPaths::new(&d.dir))
                .is_ok_and(|r| r.is_some_and(|r| r.is_none_or(|r| r.pid == d.pid)))
        });
        std::thread::sleep(Duration::from_millis(10));
    }
    if let Some(d) = left.first() {
        return Err(Error::new(
            ErrorKind::Timeout,
            format!(
                "{} daemon(s) did not exit within {} s (pid {} for {})",
                left.len(),
                wait.as_secs_f64(),
                d.pid,
                d.dir.display()
            ),
        )
        .hint("see `bd daemon logs` in that repository"));
    }
    Ok(all.iter().map(|d| d.pid).collect())
}
