//! The remote: which one the branch syncs with, and fetch and push through the
//! `git` program (the user's credentials, ssh config and hooks apply), with its
//! failures classified as offline (`unavailable`) or a wrong remote (`io`).

use super::repo::{Repo, git_error};
use crate::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::process::{Command, Stdio};

/// Where the branch syncs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    /// The remote's name.
    pub remote: String,
    /// The branch on the remote.
    pub branch: String,
}

/// Whether git's complaint says the network is what failed (no route, no
/// name resolution, nobody listening): this machine is offline or the
/// remote's host is down, as opposed to a remote that is wrong (no such
/// repository, no permission, a refused push). git is another program: its
/// words are all there is to go by.
fn network_unreachable(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    [
        "could not resolve host",
        "could not resolve hostname",
        "failed to connect",
        "connection refused",
        "connection timed out",
        "operation timed out",
        "network is unreachable",
        "no route to host",
        "temporary failure in name resolution",
        "connection reset",
    ]
    .iter()
    .any(|m| s.contains(m))
}

/// A failed `git fetch` or `git push`: kind `unavailable` when the network
/// failed (bd works on and syncs later: "offline"), `io` when the remote
/// itself is wrong (exit 1: someone must fix it).
fn remote_failure(what: &str, up: &Upstream, out: &GitOutput) -> Error {
    let offline = network_unreachable(&out.stderr);
    let kind = if offline {
        ErrorKind::Unavailable
    } else {
        ErrorKind::Io
    };
    let hint = if offline {
        "bd committed locally and syncs when the remote can be reached".to_string()
    } else {
        format!(
            "check the remote (`git remote -v`, `git {what} {}`); bd's files are committed locally",
            up.remote
        )
    };
    Error::new(
        kind,
        format!("git {what} {} failed: {}", up.remote, out.first_error()),
    )
    .hint(hint)
}

impl Repo {
    /// The branch's upstream: its configured remote and merge branch, else
    /// `origin` and the same name; `None` when the repository has no remote.
    pub fn upstream(&self) -> Result<Option<Upstream>> {
        let branch_ref = self.branch_ref()?;
        let branch = branch_ref.trim_start_matches("refs/heads/").to_string();
        let config = self
            .repo
            .config()
            .map_err(|e| git_error("reading config", e))?;
        let remote = config.get_string(&format!("branch.{branch}.remote")).ok();
        let merge = config.get_string(&format!("branch.{branch}.merge")).ok();
        let remotes = self
            .repo
            .remotes()
            .map_err(|e| git_error("listing remotes", e))?;
        let names: Vec<String> = remotes
            .iter()
            .filter_map(|r| r.ok().flatten().map(str::to_string))
            .collect();
        let remote = match remote {
            Some(r) if r != "." => Some(r),
            _ if names.iter().any(|n| n == "origin") => Some("origin".to_string()),
            _ => names.first().cloned(),
        };
        Ok(remote.map(|remote| Upstream {
            remote,
            branch: merge
                .map(|m| m.trim_start_matches("refs/heads/").to_string())
                .unwrap_or(branch),
        }))
    }

    /// Whether the current branch has an upstream configured (git's
    /// `branch.<name>.remote`), as opposed to the one [`Repo::upstream`] falls
    /// back to.
    pub fn upstream_configured(&self) -> bool {
        let Ok(branch_ref) = self.branch_ref() else {
            return false;
        };
        let branch = branch_ref.trim_start_matches("refs/heads/");
        self.repo
            .config()
            .and_then(|c| c.get_string(&format!("branch.{branch}.remote")))
            .is_ok()
    }

    pub(super) fn tracking_ref(up: &Upstream) -> String {
        format!("refs/bd-sync/{}/{}", up.remote, up.branch)
    }

    /// Fetches the upstream branch into bd's own tracking ref. `Ok(false)` when
    /// the remote has no such branch yet.
    pub fn fetch(&self, up: &Upstream) -> Result<bool> {
        let refspec = format!("+refs/heads/{}:{}", up.branch, Self::tracking_ref(up));
        let _meter = crate::progress::Meter::start(&format!("fetching from {}", up.remote), None);
        let out = run_git(
            &self.workdir,
            &["fetch", "--quiet", "--no-tags", &up.remote, &refspec],
        )?;
        if out.ok {
            return Ok(true);
        }
        if out.stderr.contains("couldn't find remote ref") {
            return Ok(false);
        }
        Err(remote_failure("fetch", up, &out))
    }

    /// Pushes the current branch. `Ok(false)` when the remote moved on (rejected
    /// as not a fast-forward): fetch, integrate and try again.
    pub fn push(&self, up: &Upstream) -> Result<bool> {
        let refspec = format!("HEAD:refs/heads/{}", up.branch);
        let _meter = crate::progress::Meter::start(&format!("pushing to {}", up.remote), None);
        let out = run_git(
            &self.workdir,
            &["push", "--quiet", "--porcelain", &up.remote, &refspec],
        )?;
        if out.ok {
            // The remote's branch is now our HEAD: so is what bd knows of it
            // (`sync --status` counts against this ref; the push does not
            // move it, and said "1 commits to push" right after pushing).
            if let Some(head) = self.head_commit()? {
                self.repo
                    .reference(&Self::tracking_ref(up), head.id(), true, "bd sync: pushed")
                    .map_err(|e| git_error("recording the pushed commit", e))?;
            }
            return Ok(true);
        }
        let all = format!("{}\n{}", out.stdout, out.stderr);
        // The remote moved on: refused as not a fast-forward, or (a push racing
        // another) the remote's ref was no longer where the push expected it.
        let moved = [
            "[rejected]",
            "non-fast-forward",
            "fetch first",
            "cannot lock ref",
        ]
        .iter()
        .any(|m| all.contains(m));
        if moved {
            return Ok(false);
        }
        Err(remote_failure("push", up, &out))
    }
}

struct GitOutput {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl GitOutput {
    fn first_error(&self) -> String {
        self.stderr
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("(no message)")
            .trim()
            .to_string()
    }
}

/// Runs the `git` program for network work: fixed locale, no stdin, no prompts.
///
/// The directory goes to git as `-C`, not as the child's working directory: with
/// one, std cannot use posix_spawn in a static binary (its `addchdir` is looked up
/// dynamically) and forks instead, which copies the page tables of a process that
/// may hold a whole tracker.
fn run_git(dir: &Path, args: &[&str]) -> Result<GitOutput> {
    let mut cmd = Command::new("git");
    cmd.arg("-C")
        .arg(dir)
        .args(args)
        .env("LC_ALL", "C")
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null());
    if std::env::var_os("GIT_SSH_COMMAND").is_none() && std::env::var_os("GIT_SSH").is_none() {
        cmd.env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes");
    }
    let out = cmd.output().map_err(|e| {
        Error::new(ErrorKind::Io, format!("cannot run git: {e}"))
            .hint("install git; bd sync uses it to fetch and push")
    })?;
    Ok(GitOutput {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// The breaker over one git remote (see [`crate::breaker`]): after three
/// network failures in a row `bd sync` skips the remote until a probe time
/// (30 s, doubling to 10 minutes), instead of waiting out a network timeout
/// on every sync. Kept per remote in `.git/bd-remote-breaker.json` (this
/// clone's, never committed), so it holds across processes.
pub(crate) struct RemoteBreaker {
    file: std::path::PathBuf,
    remote: String,
    all: std::collections::BTreeMap<String, crate::breaker::Breaker>,
    pub(crate) breaker: crate::breaker::Breaker,
}

impl RemoteBreaker {
    pub(crate) fn load(repo: &Repo, remote: &str) -> RemoteBreaker {
        let file = repo.repo.path().join("bd-remote-breaker.json");
        let mut all: std::collections::BTreeMap<String, crate::breaker::Breaker> =
            std::fs::read(&file)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
        // Keyed by the remote's URL too: pointing the remote elsewhere starts
        // a new breaker.
        let url = repo
            .repo
            .find_remote(remote)
            .ok()
            .and_then(|r| r.url().ok().map(str::to_string))
            .unwrap_or_default();
        let remote = &format!("{remote} {url}");
        let mut breaker = all.remove(remote.as_str()).unwrap_or_default();
        if breaker.state == crate::breaker::State::HalfOpen {
            // A probe whose process ended before its outcome: probe again.
            breaker.state = crate::breaker::State::Open;
        }
        RemoteBreaker {
            file,
            remote: remote.to_string(),
            all,
            breaker,
        }
    }

    fn now() -> u64 {
        crate::clock::Clock::now_ms(&crate::clock::SystemClock)
    }

    pub(crate) fn allow(&mut self, now_ms: u64) -> bool {
        self.breaker.allow(now_ms)
    }

    pub(crate) fn failed(&mut self, why: &str) {
        self.breaker
            .failure(Self::now(), why, &crate::breaker::Policy::REMOTE);
    }

    pub(crate) fn worked(&mut self) {
        self.breaker.success(Self::now(), &crate::breaker::Policy::REMOTE);
    }

    /// What the user is told when the remote is skipped.
    pub(crate) fn skipped_note(&self, now_ms: u64) -> String {
        format!(
            "{} was not tried: its last {} attempt(s) failed on the network ({}); the next try is in {:.0} s (`bd sync --retry-now` tries now); committed locally only",
            self.name(),
            self.breaker.consecutive,
            self.breaker.last_failure.as_deref().unwrap_or("unreachable"),
            self.breaker.probe_in_ms(now_ms) as f64 / 1000.0
        )
    }

    pub(crate) fn view(&self) -> crate::rpc::BreakerView {
        crate::rpc::BreakerView::of(&format!("git remote {}", self.remote), &self.breaker, Self::now())
    }

    /// The remote's name (the key is name and URL).
    fn name(&self) -> &str {
        self.remote.split(' ').next().unwrap_or(&self.remote)
    }

    /// Writes the breaker back (best effort: a breaker that cannot be kept
    /// only means the next sync tries the remote); its view.
    pub(crate) fn save(mut self) -> crate::rpc::BreakerView {
        let view = self.view();
        self.all.insert(self.remote.clone(), self.breaker.clone());
        if let Ok(body) = serde_json::to_vec(&self.all) {
            let _ = crate::jsonl::atomic_write(&self.file, &body);
        }
        view
    }
}
