//! `bd sync` itself: flush, commit bd's files, fetch, integrate, apply the other
//! clones' ops, commit again and push, retrying a push the remote rejected.

use super::merge::Integration;
use super::remote::Upstream;
use super::repo::Repo;
use crate::storage::BeadsPaths;
use crate::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};

/// How many times a push rejected as non-fast-forward is retried (fetch,
/// integrate, push again).
pub const PUSH_ATTEMPTS: u32 = 4;

/// What `bd sync` should do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncOptions {
    /// Fetch and integrate the remote branch.
    pub pull: bool,
    /// Push the branch.
    pub push: bool,
    /// Say what would happen; change nothing.
    pub dry_run: bool,
    /// Commit message for bd's files.
    pub message: Option<String>,
    /// Report where things stand (`bd sync --status`): a dry run that also
    /// counts open conflicts.
    pub status: bool,
    /// Try the remote even while its breaker is open (repeated network
    /// failures make `bd sync` skip it until a probe time).
    pub retry_now: bool,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            pull: true,
            push: true,
            dry_run: false,
            message: None,
            status: false,
            retry_now: false,
        }
    }
}

/// What `bd sync` did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncReport {
    /// The branch synced.
    pub branch: String,
    /// Its upstream, if the repository has a remote.
    pub upstream: Option<Upstream>,
    /// bd's files that differed from HEAD (committed, or to be committed).
    pub files: Vec<String>,
    /// Commits bd made (its files, and a merge if one was needed).
    pub commits: Vec<String>,
    /// How the remote's work came in.
    pub integration: Option<Integration>,
    /// Other clones' ops applied.
    pub ops_applied: u64,
    /// Open conflicts afterwards.
    pub conflicts: u64,
    /// Whether the branch is on the remote now.
    pub pushed: bool,
    /// Push attempts (a rejected push is retried after integrating again).
    pub push_attempts: u32,
    /// The remote could not be reached or there is none: committed locally only.
    pub offline: bool,
    /// Nothing was changed (`--dry-run`).
    pub dry_run: bool,
    /// Things the user should know.
    pub notes: Vec<String>,
    /// The breaker over the remote (after repeated network failures `bd
    /// sync` skips the remote until a probe time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_breaker: Option<Box<crate::rpc::BreakerView>>,
}

/// A remote that failed after bd committed its own files: the error says so.
fn committed_first(mut e: Error, report: &SyncReport) -> Error {
    if let Some(c) = report.commits.last() {
        e.message = format!(
            "{}; bd's files were committed locally (commit {}), not pushed",
            e.message,
            &c[..c.len().min(10)]
        );
    }
    e
}

/// Runs `bd sync`, with `run` serving its requests (the caller's backend,
/// direct or daemon): flush → commit bd's
/// files → fetch → integrate → apply other clones' ops and regenerate the
/// derived files → commit → push, retrying a rejected push.
pub fn sync(
    run: &mut dyn FnMut(crate::api::Request) -> Result<crate::api::Response>,
    paths: &BeadsPaths,
    opts: &SyncOptions,
) -> Result<SyncReport> {
    use crate::api::{Request, Response};
    let repo = Repo::open(paths)?;
    let mut report = SyncReport {
        branch: repo
            .branch_ref()?
            .trim_start_matches("refs/heads/")
            .to_string(),
        upstream: repo.upstream()?,
        dry_run: opts.dry_run || opts.status,
        ..Default::default()
    };
    let message = opts
        .message
        .clone()
        .unwrap_or_else(|| "bd sync".to_string());
    let opts = &SyncOptions {
        dry_run: opts.dry_run || opts.status,
        ..opts.clone()
    };
    let flush = |run: &mut dyn FnMut(Request) -> Result<Response>| -> Result<u64> {
        match run(Request::Flush)? {
            Response::Flush(f) => Ok(f.ops),
            other => Err(Error::internal(format!(
                "unexpected answer to flush: {other:?}"
            ))),
        }
    };
    if opts.dry_run {
        report.files = repo.changed_bd_files()?;
        if let Some(up) = &report.upstream
            && let Some((ahead, behind)) = repo.ahead_behind(up)?
        {
            report.notes.push(format!(
                "as of the last fetch: {ahead} commit(s) to push, {behind} to bring in"
            ));
        }
        report.conflicts = count_conflicts(run)?;
        if let Some(up) = &report.upstream {
            let b = super::remote::RemoteBreaker::load(&repo, &up.remote);
            if b.breaker.failures > 0 {
                report.remote_breaker = Some(Box::new(b.view()));
            }
        }
        if !opts.status {
            report
                .notes
                .push("dry run: nothing was written, committed, fetched or pushed".into());
        }
        return Ok(report);
    }
    repo.refuse_unmerged_bd_files()?;
    let mut ops = flush(run)?;
    let (files, commit) = repo.commit_bd_files(&message)?;
    report.files = files;
    if let Some(c) = commit {
        report.commits.push(c.to_string());
    }
    match report.upstream.clone() {
        None => {
            report.offline = true;
            report.notes.push(
                "no git remote: committed locally only (add one with `git remote add`)".into(),
            );
        }
        Some(up) => {
            if !repo.upstream_configured() {
                report.notes.push(format!(
                    "{} has no upstream configured: syncing with {}/{}",
                    report.branch, up.remote, up.branch
                ));
            }
            let mut remote_branch_missing = false;
            let mut breaker = super::remote::RemoteBreaker::load(&repo, &up.remote);
            let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
            let skip = (opts.pull || opts.push) && !opts.retry_now && !breaker.allow(now);
            if skip {
                report.offline = true;
                report.notes.push(breaker.skipped_note(now));
            }
            for attempt in (1..=PUSH_ATTEMPTS).filter(|_| !skip) {
                if opts.pull {
                    match repo.fetch(&up) {
                        Ok(true) => {}
                        Ok(false) => remote_branch_missing = true,
                        Err(e) if e.kind == ErrorKind::Unavailable => {
                            report.offline = true;
                            breaker.failed(&e.message);
                            report
                                .notes
                                .push(format!("{}; committed locally only", e.message));
                            break;
                        }
                        Err(e) => return Err(committed_first(e, &report)),
                    }
                    breaker.worked();
                    let kind = match repo.integrate(&up) {
                        Ok(kind) => kind,
                        // Stopped before touching anything of the user's; bd's
                        // own files were committed already: say so.
                        Err(mut e) if e.kind == ErrorKind::Conflict => {
                            if let Some(c) = report.commits.last() {
                                e.message = format!(
                                    "{}; bd's own files were committed locally first (commit {}), nothing else was changed or pushed",
                                    e.message,
                                    &c[..c.len().min(10)]
                                );
                            } else {
                                e.message = format!("{}; nothing was changed", e.message);
                            }
                            return Err(e);
                        }
                        Err(e) => return Err(e),
                    };
                    if kind != Integration::UpToDate || report.integration.is_none() {
                        report.integration = Some(kind);
                    }
                    let now = flush(run)?;
                    report.ops_applied += now.saturating_sub(ops);
                    ops = now;
                    let (files, commit) = repo.commit_bd_files(&message)?;
                    for f in files {
                        if !report.files.contains(&f) {
                            report.files.push(f);
                        }
                    }
                    if let Some(c) = commit {
                        report.commits.push(c.to_string());
                    }
                }
                if !opts.push {
                    break;
                }
                report.push_attempts = attempt;
                match repo.push(&up) {
                    Ok(true) => {
                        breaker.worked();
                        report.pushed = true;
                        if remote_branch_missing {
                            report.notes.push(format!(
                                "created branch {} on {} (it had none){}",
                                up.branch,
                                up.remote,
                                if repo.upstream_configured() {
                                    String::new()
                                } else {
                                    format!(
                                        "; `git branch -u {}/{}` makes it this branch's upstream",
                                        up.remote, up.branch
                                    )
                                }
                            ));
                        }
                        break;
                    }
                    Ok(false) => breaker.worked(),
                    Err(e) if e.kind == ErrorKind::Unavailable => {
                        report.offline = true;
                        breaker.failed(&e.message);
                        report
                            .notes
                            .push(format!("{}; committed locally only", e.message));
                        break;
                    }
                    Err(e) => return Err(committed_first(e, &report)),
                }
                if !opts.pull {
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        format!(
                            "{}/{} has commits this clone lacks; push rejected",
                            up.remote, up.branch
                        ),
                    )
                    .hint("run bd sync without --no-pull"));
                }
            }
            report.remote_breaker = Some(Box::new(breaker.save()));
            if opts.push && !report.pushed && !report.offline {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "{}/{} kept moving: push rejected {} times",
                        up.remote, up.branch, PUSH_ATTEMPTS
                    ),
                )
                .hint("run bd sync again; everything is committed locally"));
            }
        }
    }
    if !report.commits.is_empty() && !repo.has_identity() {
        report.notes.push(
            "committed as \"bd <bd@localhost>\": git has no identity here (set `git config user.name` and `user.email`)"
                .into(),
        );
    }
    report.conflicts = count_conflicts(run)?;
    Ok(report)
}

/// Open conflicts, counted.
fn count_conflicts(
    run: &mut dyn FnMut(crate::api::Request) -> Result<crate::api::Response>,
) -> Result<u64> {
    use crate::api::{Request, Response};
    match run(Request::Conflicts)? {
        Response::Conflicts(c) => Ok(c.len() as u64),
        other => Err(Error::internal(format!(
            "unexpected answer to conflicts: {other:?}"
        ))),
    }
}
