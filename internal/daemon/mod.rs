//! The per-repo daemon: one process per `.beads/`, owning the only SQLite writer,
//! serving [`crate::rpc`] frames on a Unix socket.
//!
//! Invariants:
//! - One daemon per tracker: it holds an exclusive lock on `.beads/daemon.lock` for
//!   its whole life. Liveness is the lock, never a pid; the file's content (a
//!   [`LockRecord`]) only says where to connect.
//! - A socket file is removed only by the lock holder (a stale socket left by a
//!   killed daemon is removed by the next daemon, which holds the lock).
//! - Every write goes through one writer thread, which commits everything waiting as
//!   one group (see `Store::write_group`) and answers each caller only after the
//!   commit. Reads run in parallel on their own connections.
//! - A request whose deadline has passed before the writer reaches it is not
//!   executed; its caller gets a timeout error.

mod connection;
mod relay;
mod server;
mod writer;

pub use server::{DaemonOptions, Log, MAX_GROUP, run};

use crate::rpc::PROTOCOL;
use crate::storage::BeadsPaths;
use crate::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Longest socket path used as is; longer ones move to the runtime directory
/// (`sockaddr_un` holds about 108 bytes).
pub const MAX_SOCKET_PATH: usize = 100;

/// How long a starting daemon retries its lock before deciding another daemon
/// holds it (clients' liveness probes hold a shared lock for microseconds).
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// What the daemon writes into its lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    /// Daemon process id (informational).
    pub pid: u32,
    /// Daemon bd version.
    pub version: String,
    /// Daemon protocol number.
    pub protocol: u32,
    /// Where it listens.
    pub socket: PathBuf,
    /// When it started (ms since the epoch).
    pub started_ms: u64,
}

/// The socket path for a tracker: `.beads/bd.sock`, or, when that path is too long
/// for a Unix socket, `<runtime_dir>/bd-<hash of the tracker path>.sock`.
/// `runtime_dir` is asked for only when it is needed.
pub fn socket_path(
    paths: &BeadsPaths,
    runtime_dir: impl FnOnce() -> Result<PathBuf>,
) -> Result<PathBuf> {
    let direct = paths.dir.join("bd.sock");
    if direct.as_os_str().len() <= MAX_SOCKET_PATH {
        return Ok(direct);
    }
    let dir = paths
        .dir
        .canonicalize()
        .unwrap_or_else(|_| paths.dir.clone());
    let digest = Sha256::digest(dir.as_os_str().as_encoded_bytes());
    Ok(runtime_dir()?.join(format!("bd-{}.sock", crate::model::hex_bytes(&digest[..8]))))
}

/// Where a user's short socket paths go: `xdg` (`$XDG_RUNTIME_DIR`) when it is
/// a directory owned by `uid`; else `<tmp>/bd-<uid>`, created with mode 0700 if
/// missing. An existing `<tmp>/bd-<uid>` that is not a directory owned by
/// `uid` with mode 0700 is refused, saying why: another user could otherwise
/// plant or read sockets there. (It is never chmod-ed: it may not be ours.)
pub fn private_runtime_dir(xdg: Option<&Path>, tmp: &Path, uid: u32) -> Result<PathBuf> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if let Some(x) = xdg
        && std::fs::metadata(x).is_ok_and(|m| m.is_dir() && m.uid() == uid)
    {
        return Ok(x.to_path_buf());
    }
    let dir = tmp.join(format!("bd-{uid}"));
    match std::fs::symlink_metadata(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut builder = std::fs::DirBuilder::new();
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            match builder.create(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(crate::jsonl::io_at(&dir, e)),
            }
            // Whoever won a race to create it, it must be ours: check again.
            private_runtime_dir(None, tmp, uid)
        }
        Err(e) => Err(crate::jsonl::io_at(&dir, e)),
        Ok(m) => {
            let why = if !m.is_dir() {
                "is not a directory".to_string()
            } else if m.uid() != uid {
                format!("belongs to uid {}, not to you (uid {uid})", m.uid())
            } else if m.permissions().mode() & 0o777 != 0o700 {
                format!(
                    "has mode {:o}, not 0700 (others could reach your sockets)",
                    m.permissions().mode() & 0o777
                )
            } else {
                return Ok(dir);
            };
            Err(Error::new(
                ErrorKind::Io,
                format!(
                    "cannot use {} for the daemon's socket: it {why}",
                    dir.display()
                ),
            )
            .hint("set XDG_RUNTIME_DIR to a private directory of yours, or remove that one (the socket goes there only when .beads/bd.sock would be too long a path)"))
        }
    }
}

/// The daemon's hold on `daemon.lock`; released when dropped (or when the process
/// dies, however it dies).
pub struct DaemonLock {
    file: File,
}

impl DaemonLock {
    /// Takes the lock (leaving the record empty until [`DaemonLock::publish`]);
    /// [`ErrorKind::Exists`] if another daemon holds it.
    pub fn acquire(paths: &BeadsPaths) -> Result<DaemonLock> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(paths.daemon_lock())
            .map_err(|e| crate::jsonl::io_at(&paths.daemon_lock(), e))?;
        // Clients probe liveness with a momentary shared lock; retry briefly so a
        // probe is never mistaken for a running daemon. A real daemon holds the lock
        // for its whole life, so after the window it is one.
        let start = std::time::Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if start.elapsed() < LOCK_RETRY => {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    let pid = read_record(&mut file)
                        .map(|r| r.pid.to_string())
                        .unwrap_or_else(|| "?".into());
                    return Err(Error::new(
                        ErrorKind::Exists,
                        format!("a bd daemon is already running here (pid {pid})"),
                    )
                    .hint("see it with `bd daemon status`; stop it with `bd daemon stop`"));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
            }
        }
        file.set_len(0)?;
        Ok(DaemonLock { file })
    }

    /// Writes the record clients connect by. Called once the socket is listening,
    /// so a client that reads a record can always connect.
    pub fn publish(&mut self, record: &LockRecord) -> Result<()> {
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(&serde_json::to_vec(record)?)?;
        self.file.flush()?;
        Ok(())
    }
}

impl Drop for DaemonLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

fn read_record(file: &mut File) -> Option<LockRecord> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

/// Whether a daemon is running for this tracker, judged by the lock alone. Returns
/// its record (`None` inside if it holds the lock but has not written it yet).
pub fn running(paths: &BeadsPaths) -> Result<Option<Option<LockRecord>>> {
    let mut file = match File::open(paths.daemon_lock()) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    match file.try_lock_shared() {
        Ok(()) => {
            let _ = file.unlock();
            Ok(None)
        }
        Err(std::fs::TryLockError::WouldBlock) => Ok(Some(read_record(&mut file))),
        Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
    }
}

/// Asks the tracker's running daemon to drain and exit with SIGTERM (for a
/// daemon of another protocol, which cannot be asked over its socket). The pid
/// comes from the lock record, which only the lock's holder writes, and the
/// lock is checked to be held right before the signal.
pub fn terminate(paths: &BeadsPaths) -> Result<()> {
    match running(paths)? {
        Some(Some(record)) => {
            let pid = libc::pid_t::try_from(record.pid)
                .map_err(|_| Error::internal(format!("bad daemon pid {}", record.pid)))?;
            // SAFETY: kill(2) has no memory effects; a stale pid is ruled out
            // by the lock being held by the record's writer.
            if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ESRCH) {
                    return Err(Error::new(
                        ErrorKind::Io,
                        format!("cannot stop the daemon (pid {pid}): {e}"),
                    )
                    .hint(format!("stop it yourself: kill {pid}")));
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Starts a detached daemon for `paths` by running `exe daemon start --foreground`
/// in its own process group, stdin closed, output appended to `daemon.log`.
pub fn spawn(
    paths: &BeadsPaths,
    exe: &Path,
    idle_timeout_s: u64,
    flush_debounce_ms: u64,
    max_group: usize,
) -> Result<std::process::Child> {
    rotate_log(paths)?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(paths.daemon_log())
        .map_err(|e| crate::jsonl::io_at(&paths.daemon_log(), e))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--dir")
        .arg(&paths.dir)
        .args(["daemon", "start", "--foreground"]);
    cmd.arg("--idle-timeout").arg(idle_timeout_s.to_string());
    cmd.arg("--flush-debounce")
        .arg(flush_debounce_ms.to_string());
    cmd.arg("--max-group").arg(max_group.to_string());
    // The daemon is long-lived and allocation heavy: it runs on mimalloc (the
    // binary reads this before its first allocation; see cmd/bd/alloc.rs).
    cmd.env("BD_ALLOCATOR", "mimalloc");
    cmd.stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    Ok(cmd.spawn()?)
}

/// One of this user's running daemons, found by [`list_mine`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningDaemon {
    /// Its process id.
    pub pid: u32,
    /// The tracker it serves (a `.beads/` directory).
    pub dir: PathBuf,
    /// What its lock record says (version, socket, start time).
    pub record: LockRecord,
}

/// This user's running bd daemons, in every repository: processes of this
/// user running `bd ... daemon start --foreground` whose tracker's lock is
/// held by that same process (so a stale or reused pid is never listed).
/// Each repository's daemon lives until it has been idle a while; this is
/// how to see (and stop) them all at once. Linux (`/proc`) only; elsewhere
/// the list is empty.
pub fn list_mine() -> Result<Vec<RunningDaemon>> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if entry.metadata().map(|m| m.uid()).ok() != Some(uid) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_daemon = args
            .windows(3)
            .any(|w| w[0] == "daemon" && w[1] == "start" && w[2] == "--foreground");
        if !is_daemon {
            continue;
        }
        // `--dir` as bd passes it when it starts one; else where it runs.
        let dir = match args.iter().position(|a| a == "--dir") {
            Some(i) => args.get(i + 1).map(PathBuf::from),
            None => std::fs::read_link(entry.path().join("cwd"))
                .ok()
                .map(|cwd| cwd.join(crate::storage::BEADS_DIR)),
        };
        let Some(dir) = dir else { continue };
        let paths = BeadsPaths::new(&dir);
        if let Ok(Some(Some(record))) = running(&paths)
            && record.pid == pid
        {
            out.push(RunningDaemon { pid, dir, record });
        }
    }
    out.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(out)
}

/// A daemon log larger than this is moved to `daemon.log.1` when a daemon starts.
pub const LOG_ROTATE_BYTES: u64 = 1024 * 1024;

/// Log rotation, done at daemon start (callers hold the start lock, or are the
/// user's one `bd daemon start`): a `daemon.log` over [`LOG_ROTATE_BYTES`] replaces
/// `daemon.log.1`, so the two together stay under about twice the limit plus what
/// one daemon writes in its life (a line per start, stop and error).
pub fn rotate_log(paths: &BeadsPaths) -> Result<()> {
    let log = paths.daemon_log();
    match std::fs::metadata(&log) {
        Ok(m) if m.len() > LOG_ROTATE_BYTES => {
            std::fs::rename(&log, paths.daemon_log_old())?;
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Holds `daemon.start.lock`: whoever holds it is the one process starting a daemon.
pub struct StartLock(File);

impl StartLock {
    /// Waits up to `wait` for the start lock.
    pub fn acquire(paths: &BeadsPaths, wait: std::time::Duration) -> Result<StartLock> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(paths.daemon_start_lock())
            .map_err(|e| crate::jsonl::io_at(&paths.daemon_start_lock(), e))?;
        let start = std::time::Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(StartLock(file)),
                Err(std::fs::TryLockError::WouldBlock) if start.elapsed() < wait => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        "another process is still starting the daemon",
                    ));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
            }
        }
    }
}

impl Drop for StartLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// Whether version `a` is newer than `b` (dotted numbers; anything unparsable
/// compares as 0).
pub fn newer_version(a: &str, b: &str) -> bool {
    let parse = |v: &str| -> Vec<u64> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parse(a) > parse(b)
}

/// The record a daemon started now by this process would write.
pub fn record_for(socket: PathBuf, now_ms: u64) -> LockRecord {
    LockRecord {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        protocol: PROTOCOL,
        socket,
        started_ms: now_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert!(newer_version("0.2.0", "0.1.9"));
        assert!(newer_version("0.10.0", "0.9.0"));
        assert!(!newer_version("0.1.0", "0.1.0"));
        assert!(!newer_version("0.1.0", "0.2.0"));
    }

    #[test]
    fn long_tracker_paths_get_a_short_socket() {
        let run = || Ok(PathBuf::from("/run/u"));
        let short = BeadsPaths::new("/r/.beads");
        let never = || -> Result<PathBuf> { panic!("not needed for a short path") };
        assert_eq!(
            socket_path(&short, never).unwrap(),
            PathBuf::from("/r/.beads/bd.sock")
        );
        let long = BeadsPaths::new(format!("/{}/.beads", "x".repeat(120)));
        let s = socket_path(&long, run).unwrap();
        assert!(
            s.starts_with("/run/u") && s.as_os_str().len() < MAX_SOCKET_PATH,
            "{s:?}"
        );
        assert_eq!(s, socket_path(&long, run).unwrap(), "stable");
    }

    #[test]
    fn a_runtime_dir_that_is_not_private_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(tmp.path()).unwrap());
        let made = private_runtime_dir(None, tmp.path(), uid).unwrap();
        let mode = std::fs::metadata(&made).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "created private");
        std::fs::set_permissions(&made, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = private_runtime_dir(None, tmp.path(), uid).unwrap_err();
        assert!(err.message.contains("not 0700"), "{}", err.message);
        let err = private_runtime_dir(None, tmp.path(), uid + 1).unwrap_err();
        assert!(
            err.message.contains("not a directory") || err.message.contains("cannot"),
            "{}",
            err.message
        );
        // XDG_RUNTIME_DIR wins when it is ours.
        assert_eq!(
            private_runtime_dir(Some(tmp.path()), tmp.path(), uid).unwrap(),
            tmp.path()
        );
    }
}
