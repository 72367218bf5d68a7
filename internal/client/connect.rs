//! Choosing the backend: the daemon (started on demand) or in-process.

use super::{Backend, DaemonClient, Direct};
use crate::config::Config;
use crate::daemon;
use crate::storage::BeadsPaths;
use crate::{Error, ErrorKind, Result};
use std::time::Duration;

/// How [`connect`] should reach the tracker.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Who is acting.
    pub actor: String,
    /// Never use a daemon.
    pub no_daemon: bool,
    /// Deadline for each request sent to a daemon.
    pub timeout: Duration,
    /// Start a daemon when none runs (`None`: never).
    pub auto_start: Option<AutoStart>,
}

/// How to start a daemon on demand.
#[derive(Debug, Clone)]
pub struct AutoStart {
    /// The bd binary to run (`bd daemon start --foreground`).
    pub exe: std::path::PathBuf,
    /// How long to wait for the start lock and for the new daemon to answer.
    pub wait: Duration,
    /// The new daemon's idle timeout, in seconds.
    pub idle_timeout_s: u64,
}

/// A backend, and why it is not the daemon when a daemon was wanted.
pub struct Connection {
    /// Where requests go.
    pub backend: Box<dyn Backend>,
    /// Set when a daemon was running or wanted but could not be used; the command
    /// then runs directly, which is safe (SQLite serialises writers). Kind
    /// `unavailable` is a daemon leaving (a restart, an upgrade): passing.
    pub note: Option<Error>,
}

/// Uses the tracker's daemon when one runs (starting one first if `auto_start` is
/// set, under a lock so that racing commands start exactly one; replacing one that
/// is older than this bd); otherwise runs requests in this process.
pub fn connect(paths: BeadsPaths, opts: &ConnectOptions) -> Result<Connection> {
    // A daemon serves its directory's own database; a request for another
    // database file (`--db`) must reach that file, so it runs in-process.
    let own_db = paths.db == paths.dir.join(crate::storage::DB_FILE);
    if opts.no_daemon || !own_db {
        return Ok(Connection {
            backend: Box::new(Direct::open(paths, &opts.actor)?),
            note: None,
        });
    }
    let note = match try_daemon(&paths, opts) {
        Ok(Some(client)) => {
            return Ok(Connection {
                backend: Box::new(client),
                note: None,
            });
        }
        Ok(None) => None,
        Err(e) => Some(Error {
            message: format!("{}; running directly", e.message),
            ..e
        }),
    };
    Ok(Connection {
        backend: Box::new(Direct::open(paths, &opts.actor)?),
        note,
    })
}

fn try_daemon(paths: &BeadsPaths, opts: &ConnectOptions) -> Result<Option<DaemonClient>> {
    match running_client(paths, opts) {
        Ok(Some(client)) => {
            let ours = env!("CARGO_PKG_VERSION");
            if !daemon::newer_version(ours, &client.hello.version) || opts.auto_start.is_none() {
                return Ok(Some(client));
            }
            // An older daemon after an upgrade: ask it to leave, then start ours.
            let mut old = client;
            old.stop()?;
            wait_until(Duration::from_secs(5), || {
                Ok(daemon::running(paths)?.is_none())
            })?;
        }
        Ok(None) => {}
        // A daemon of another protocol refused our hello, so it cannot be asked
        // over the socket: with auto-start on, it is told to leave by signal
        // (it drains and exits as for `bd daemon stop`), and ours replaces it.
        Err(e) if e.kind == ErrorKind::Conflict && opts.auto_start.is_some() => {
            daemon::terminate(paths)?;
            wait_until(Duration::from_secs(10), || {
                Ok(daemon::running(paths)?.is_none())
            })?;
        }
        Err(e) => return Err(e),
    }
    let Some(auto) = &opts.auto_start else {
        return Ok(None);
    };
    let _lock = daemon::StartLock::acquire(paths, auto.wait)?;
    // Someone may have started it while we waited for the lock.
    if let Some(client) = running_client(paths, opts)? {
        return Ok(Some(client));
    }
    let start = super::daemon::StartOptions {
        exe: auto.exe.clone(),
        idle_timeout_s: auto.idle_timeout_s,
        flush_debounce_ms: 1000,
        max_group: daemon::MAX_GROUP,
        wait: auto.wait,
    };
    super::daemon::start(paths, &start, &opts.actor, opts.timeout).map(Some)
}

/// Whether the tracker's config allows starting a daemon on demand
/// (`daemon.auto_start`, default yes).
pub fn auto_start_configured(paths: &BeadsPaths) -> bool {
    let config = Config::load(&paths.config()).unwrap_or_default();
    config.get("daemon.auto_start") != Some("false")
}

fn running_client(paths: &BeadsPaths, opts: &ConnectOptions) -> Result<Option<DaemonClient>> {
    DaemonClient::to_running(paths, &opts.actor, opts.timeout)
}

/// Polls `done` every 5 ms until it says true, failing with a timeout after `limit`.
pub(crate) fn wait_until(limit: Duration, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let start = std::time::Instant::now();
    loop {
        if done()? {
            return Ok(());
        }
        if start.elapsed() > limit {
            return Err(Error::new(
                ErrorKind::Timeout,
                "the daemon did not become ready in time",
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
