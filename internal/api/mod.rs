//! The contract: every operation as a [`Request`], every answer as a
//! [`Response`]. The engine runs them, `rpc` carries them to a daemon and back,
//! the client sends them; all three depend on this module and on nothing of
//! each other for it.
//!
//! Both are plain serde data so the daemon can carry them over its socket unchanged;
//! JSON shapes are documented in README.md ("JSON output").

pub use crate::config::KNOWN_KEYS as CONFIG_KEYS;
pub use crate::gitsync::{Integration, SyncOptions, SyncReport, Upstream};
pub use crate::jsonl::{
    ImportRecord, LineError, SnapshotState, parse_issue_lines, read_import_file,
    render_snapshot as render_issues,
};
pub use crate::merge::wire_id;
pub use crate::model::{
    Comment, Conflict, Contender, DepType, Dependency, Issue, PRIORITY_DEFAULT, PRIORITY_MAX,
    parse_priority,
};
pub use crate::query::{BlockedIssue, LabelCount, ListFilter, SortKey, Stats, TreeNode};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Time as bd records it: ms since the epoch, RFC 3339 text.
pub mod time {
    pub use crate::clock::{
        format_duration_ms, format_rfc3339, parse_duration_any_ms, parse_duration_ms, parse_rfc3339,
    };

    /// Now, in ms since the epoch (the system clock).
    pub fn now_ms() -> u64 {
        crate::clock::Clock::now_ms(&crate::clock::SystemClock)
    }
}
use std::collections::BTreeMap;

/// Fields of a new issue.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CreateRequest {
    /// Title (required).
    pub title: String,
    /// Description.
    pub description: String,
    /// Design notes.
    pub design: String,
    /// Acceptance criteria.
    pub acceptance_criteria: String,
    /// Notes.
    pub notes: String,
    /// Priority 0-4 (default 2).
    pub priority: Option<i64>,
    /// Issue type (default task).
    pub issue_type: Option<String>,
    /// Assignee.
    pub assignee: Option<String>,
    /// Labels.
    pub labels: Vec<String>,
    /// Dependencies as (type, target id).
    pub deps: Vec<(String, String)>,
    /// Parent issue: the new issue gets the id `<parent>.<n>` and a parent-child edge.
    pub parent: Option<String>,
    /// Link to an outside tracker.
    pub external_ref: Option<String>,
    /// Explicit id instead of a generated one.
    pub id: Option<String>,
}

/// Changes to one or more issues; `None` fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpdateRequest {
    /// Issues to change (all or none are changed).
    pub ids: Vec<String>,
    /// New title.
    pub title: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New design notes.
    pub design: Option<String>,
    /// New acceptance criteria.
    pub acceptance_criteria: Option<String>,
    /// New notes.
    pub notes: Option<String>,
    /// New status.
    pub status: Option<String>,
    /// New priority.
    pub priority: Option<i64>,
    /// New type.
    pub issue_type: Option<String>,
    /// New assignee; `Some("")` unassigns.
    pub assignee: Option<String>,
    /// New external reference; `Some("")` clears.
    pub external_ref: Option<String>,
    /// Labels to add.
    pub add_labels: Vec<String>,
    /// Labels to remove.
    pub remove_labels: Vec<String>,
    /// Replace all labels with these.
    pub set_labels: Option<Vec<String>>,
    /// Claim: assign to the caller and start, only if unassigned and open.
    pub claim: bool,
    /// How long the claim lasts without a write by its holder, ms (10 s to
    /// 24 h): it then lapses and the issue is ready again. Without it a
    /// claim has no time limit (a relay lease still lasts 15 minutes
    /// unrenewed). Only with `claim`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim_ttl_ms: Option<u64>,
    /// Only renew: refused unless the caller holds a live claim on each
    /// issue. Only with `claim`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub renew: bool,
    /// Give a claim up: unassign and reopen, only if the caller holds it
    /// (and give its relay lease back).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unclaim: bool,
    /// Move under this parent (its parent-child edge replaces the old one);
    /// `Some("")` takes the issue out from under its parent. Refused if the
    /// new parent is the issue or lies under it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

/// The shortest and longest claim lease a caller may ask for.
pub const CLAIM_TTL_MS: std::ops::RangeInclusive<u64> = 10_000..=86_400_000;

/// The lease of a claim when the default is not overridden: 15 minutes.
pub const CLAIM_TTL_DEFAULT_MS: u64 = 15 * 60 * 1000;

/// How strongly a claim holds across the mesh: on the answer to a claim in
/// a clone that joined a relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    /// The relay lease's fencing token (its bucket revision: a later grant
    /// always has a larger one); `None` for a provisional claim.
    pub token: Option<u64>,
    /// When the lease expires unless renewed (by the relay's clock).
    pub expires_at: Option<String>,
    /// Granted by this clone alone because the relay could not be asked: it
    /// becomes a lease when the relay is back, or a claim conflict if
    /// another clone claimed the issue meanwhile.
    pub provisional: bool,
    /// Why it is provisional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One operation on the tracker. Unknown fields are refused (a misspelt
/// `"priorty"` in `bd batch` is an error naming it, not silently dropped).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Create an issue.
    Create(CreateRequest),
    /// Change issues.
    Update(UpdateRequest),
    /// Close issues.
    Close {
        /// Issues to close.
        ids: Vec<String>,
        /// Why.
        reason: Option<String>,
        /// Close an epic (any parent) whose children are still open.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        force: bool,
    },
    /// Reopen closed issues.
    Reopen {
        /// Issues to reopen.
        ids: Vec<String>,
    },
    /// Delete issues (a tombstone op each; a deleted issue never comes back by
    /// itself, and an edit made concurrently elsewhere becomes a conflict).
    Delete {
        /// Issues to delete.
        ids: Vec<String>,
        /// Delete even when open issues depend on them (their edges then
        /// point at a deleted issue, which holds nothing back).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        force: bool,
        /// Delete the issues that depend on them too, recursively.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        cascade: bool,
    },
    /// Settle a conflicted field with one new value that supersedes every
    /// contender.
    Resolve {
        /// The issue.
        id: String,
        /// The conflicted field (`deleted` for a delete concurrent with edits).
        field: String,
        /// The new value (text; a number for priority).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<String>,
        /// Take a contender's value: its op id (or a prefix), actor or replica.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        take: Option<String>,
    },
    /// Issues with comments.
    Show {
        /// Issues to show.
        ids: Vec<String>,
    },
    /// Filtered list.
    List(ListFilter),
    /// Ready queue.
    Ready(ListFilter),
    /// Blocked issues with their blockers.
    Blocked(ListFilter),
    /// Add a dependency: `issue` depends on `depends_on`.
    DepAdd {
        /// The dependent.
        issue: String,
        /// The blocker or parent.
        depends_on: String,
        /// Edge type (wire spelling); `blocks` when left out, as on the
        /// command line.
        #[serde(default = "blocks")]
        dep_type: String,
    },
    /// Remove a dependency (every type when `dep_type` is `None`).
    DepRemove {
        /// The dependent.
        issue: String,
        /// The blocker or parent.
        depends_on: String,
        /// Edge type, or all.
        dep_type: Option<String>,
    },
    /// Dependency tree.
    DepTree {
        /// Root issue.
        id: String,
        /// Show dependents instead of dependencies.
        reverse: bool,
        /// Depth limit.
        max_depth: usize,
    },
    /// Cycles among gating dependencies.
    DepCycles,
    /// Add labels to issues.
    LabelAdd {
        /// Issues.
        ids: Vec<String>,
        /// Labels.
        labels: Vec<String>,
    },
    /// Remove labels from issues.
    LabelRemove {
        /// Issues.
        ids: Vec<String>,
        /// Labels.
        labels: Vec<String>,
    },
    /// Labels of one issue, or every label with counts.
    LabelList {
        /// The issue, or all.
        id: Option<String>,
    },
    /// Several write requests as one unit: all succeed or none does. A string that
    /// is exactly `$N` names the issue created by operation N (1-based).
    Batch {
        /// The operations, in order.
        requests: Vec<Request>,
    },
    /// Add a comment.
    CommentAdd {
        /// Issue.
        id: String,
        /// Text.
        text: String,
    },
    /// Comments of an issue.
    Comments {
        /// Issue.
        id: String,
    },
    /// Open conflict records.
    Conflicts,
    /// Counts.
    Stats,
    /// Every live issue with comments, sorted by id.
    Export,
    /// Record issues from a beads-format JSONL file as ops.
    Import {
        /// Parsed lines.
        records: Vec<ImportRecord>,
        /// Report what would change without changing anything.
        dry_run: bool,
        /// Refuse the whole import (change nothing) if any record is refused.
        strict: bool,
    },
    /// Write the op file and the issues.jsonl snapshot now.
    Flush,
    /// Tracker facts.
    Info,
    /// Read one config key.
    ConfigGet {
        /// Key.
        key: String,
    },
    /// Set one config key.
    ConfigSet {
        /// Key.
        key: String,
        /// Value.
        value: String,
    },
    /// All config keys.
    ConfigList,
    /// Exchange ops with the git remote (`bd sync`). Runs in the calling
    /// process whichever backend serves its flushes: the git work needs the
    /// caller's environment (credentials, ssh agent).
    Sync(SyncOptions),
    /// Learn the outcome of a write sent with `request_id` whose answer never
    /// came: its recorded answer if it was applied; otherwise the id is marked
    /// abandoned, so it can never be applied later, and the answer is `None`.
    Settle {
        /// The write's request id.
        request_id: String,
    },
}

impl Request {
    /// Whether the request may change the database.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Request::Create(_)
                | Request::Update(_)
                | Request::Close { .. }
                | Request::Reopen { .. }
                | Request::Delete { .. }
                | Request::Resolve { .. }
                | Request::DepAdd { .. }
                | Request::DepRemove { .. }
                | Request::LabelAdd { .. }
                | Request::LabelRemove { .. }
                | Request::CommentAdd { .. }
                | Request::Import { dry_run: false, .. }
                | Request::Batch { .. }
                | Request::Settle { .. }
        )
    }

    /// The request's `op` name, for messages.
    pub fn op_name(&self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.get("op").and_then(|o| o.as_str()).map(str::to_string))
            .unwrap_or_else(|| "?".into())
    }
}

/// One issue as `bd show` presents it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IssueDetails {
    /// The issue with comments.
    #[serde(flatten)]
    pub issue: Issue,
    /// Incoming edges: issues that depend on this one.
    pub dependents: Vec<Dependency>,
    /// Whether a gating dependency holds it back.
    pub blocked: bool,
    /// Open conflicts on its fields.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub conflicts: Vec<Conflict>,
    /// Other issues whose create used this issue's id (on other clones), each
    /// given `<id>~<suffix>`; see the README's "Two creates of one id".
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub displaced: Vec<String>,
    /// For an issue whose create used an id another create kept: that id.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub displaced_from: Option<String>,
    /// Dependencies whose issue is not here: `deleted`, or `missing` (never
    /// seen here: another clone's not yet synced, or a stale import).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty", default)]
    pub dangling: std::collections::BTreeMap<String, String>,
}

/// What happened to each issue of a multi-issue change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Changed {
    /// The issue after the change.
    #[serde(flatten)]
    pub issue: Issue,
    /// Whether anything changed (false: it was already so).
    pub changed: bool,
    /// For a claim in a clone that joined a relay: the lease it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseInfo>,
}

/// What an import did (or would do, on a dry run).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImportReport {
    /// Issues new to this tracker.
    pub created: u64,
    /// Existing issues changed to match the file.
    pub updated: u64,
    /// Issues already as in the file.
    pub unchanged: u64,
    /// Issues deleted (beads tombstones).
    pub deleted: u64,
    /// Issues left alone because they are deleted here.
    pub skipped_deleted: u64,
    /// Records skipped because a later line of the file names the same id
    /// (the last one wins).
    #[serde(default)]
    pub repeated: u64,
    /// Records imported with a status or type bd does not model (kept as
    /// they are; `bd doctor` lists the values in use).
    #[serde(default)]
    pub unmodelled: u64,
    /// Ops recorded.
    pub ops: u64,
    /// Records that were refused, with their line numbers.
    pub errors: Vec<crate::jsonl::LineError>,
    /// True when nothing was written.
    pub dry_run: bool,
}

/// Facts about the tracker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Info {
    /// bd version.
    pub version: String,
    /// How requests are served (`direct`).
    pub mode: String,
    /// The `.beads/` directory.
    pub beads_dir: String,
    /// The database file.
    pub database: String,
    /// Database schema version.
    pub schema_version: i64,
    /// This clone's replica id.
    pub replica: String,
    /// Id prefix.
    pub prefix: String,
    /// Live issues.
    pub issues: u64,
    /// Freshness of issues.jsonl.
    pub snapshot: SnapshotState,
    /// SHA-256 of the whole materialised state: equal on every clone that holds
    /// the same ops (a full pass over the issues).
    #[serde(default)]
    pub state_hash: String,
    /// Foreign ops held back for clock skew.
    #[serde(default)]
    pub held_ops: u64,
}

/// What flushing wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlushReport {
    /// Op lines appended to this replica's op file.
    pub ops_written: usize,
    /// Issues in the snapshot.
    pub issues: usize,
    /// The snapshot path.
    pub snapshot: String,
    /// Ops in the database (its highest arrival position) after the flush.
    #[serde(default)]
    pub ops: u64,
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
pub enum Response {
    /// One issue (create).
    Issue(Box<Issue>),
    /// Issues (list, ready, export).
    Issues(Vec<Issue>),
    /// Issues with details (show).
    Details(Vec<IssueDetails>),
    /// Per-issue outcome (update, close, reopen, label add/remove, resolve).
    Changed(Vec<Changed>),
    /// Issues deleted by this request (already-deleted ones are left out).
    Deleted(Vec<String>),
    /// Blocked issues.
    Blocked(Vec<BlockedIssue>),
    /// A dependency that was added or removed.
    Dependency {
        /// The edge.
        dependency: Dependency,
        /// False when it already existed.
        changed: bool,
    },
    /// Removed dependencies.
    Dependencies(Vec<Dependency>),
    /// A dependency tree.
    Tree(Vec<TreeNode>),
    /// Dependency cycles.
    Cycles(Vec<Vec<String>>),
    /// Labels of one issue.
    Labels(Vec<String>),
    /// Label counts.
    LabelCounts(Vec<LabelCount>),
    /// One comment.
    Comment(Comment),
    /// The answers to a batch's operations, in order.
    Batch(Vec<Response>),
    /// Comments.
    Comments(Vec<Comment>),
    /// Conflict records.
    Conflicts(Vec<Conflict>),
    /// Counts.
    Stats(Stats),
    /// Import outcome.
    Import(ImportReport),
    /// Flush outcome.
    Flush(FlushReport),
    /// Tracker facts.
    Info(Info),
    /// A config value.
    ConfigValue {
        /// Key.
        key: String,
        /// Value, if set.
        value: Option<String>,
    },
    /// All config values.
    Config(BTreeMap<String, String>),
    /// What a sync did.
    Sync(SyncReport),
    /// The outcome of a settled request: its answer if it was applied, `None`
    /// if it was not (and now never will be).
    Settled(Option<Box<Response>>),
}

/// Checks a request id given by a caller: 1 to 128 characters of letters,
/// digits, `.`, `_`, `:` and `-`.
pub fn validate_request_id(id: &str) -> Result<()> {
    let ok = (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!("bad request id {id:?}"))
            .hint("use 1 to 128 letters, digits, '.', '_', ':' or '-' (a UUID works)"))
    }
}

/// The edge type a dependency gets when none is named.
fn blocks() -> String {
    "blocks".to_string()
}
