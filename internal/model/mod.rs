//! The data model: issues, dependencies, comments and the operations that build them.
//!
//! Field names follow beads' JSONL so tools that read beads' `issues.jsonl` read ours.
//! Enumerations keep values bd does not model (`Other`) byte for byte: an import never
//! drops or rewrites a status, type or dependency type it does not know.

mod op;

pub use op::{Hlc, OF_LEN, Op, OpKind, hex as hex_bytes, unhex};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Defines a string-backed enum whose unknown values survive as `Other(String)`.
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
            /// A value bd does not model, kept verbatim (from an import or a newer bd).
            Other(String),
        }

        impl $name {
            /// Every value bd models, in display order.
            pub const KNOWN: &'static [&'static str] = &[$($text),+];

            /// The wire spelling.
            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $text,)+
                    $name::Other(s) => s,
                }
            }

            /// Maps any string, keeping unknown values as `Other`.
            pub fn from_wire(s: &str) -> Self {
                match s {
                    $($text => $name::$variant,)+
                    other => $name::Other(other.to_string()),
                }
            }

            /// Parses user input, accepting only the values bd models.
            pub fn parse(s: &str) -> crate::Result<Self> {
                let norm = s.trim().to_ascii_lowercase().replace('_', "-");
                let norm = Self::alias(&norm);
                match Self::from_wire(&norm) {
                    $name::Other(_) => Err(crate::Error::invalid(format!(
                        "invalid {} {:?}", $what, s
                    ))
                    .hint(format!("valid values: {}", Self::KNOWN.join(", ")))),
                    v => Ok(v),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Ok(Self::from_wire(&s))
            }
        }
    };
}

string_enum!(
    /// Workflow state of an issue.
    Status, "status" {
        /// Not started.
        Open = "open",
        /// Someone is working on it.
        InProgress = "in_progress",
        /// Explicitly blocked (beyond what dependencies say).
        Blocked = "blocked",
        /// Postponed on purpose.
        Deferred = "deferred",
        /// Done or abandoned.
        Closed = "closed",
    }
);

string_enum!(
    /// Kind of work.
    IssueType, "issue type" {
        /// Something broken.
        Bug = "bug",
        /// New capability.
        Feature = "feature",
        /// A unit of work (the default).
        Task = "task",
        /// A container for child issues.
        Epic = "epic",
        /// Maintenance.
        Chore = "chore",
    }
);

string_enum!(
    /// How two issues relate. `blocks` and `parent-child` gate readiness.
    DepType, "dependency type" {
        /// The dependent cannot start until the blocker closes.
        Blocks = "blocks",
        /// The dependent is a child of the target (an epic, usually).
        ParentChild = "parent-child",
        /// Informational link.
        Related = "related",
        /// The dependent was found while working on the target.
        DiscoveredFrom = "discovered-from",
    }
);

impl Status {
    fn alias(s: &str) -> String {
        match s {
            "in-progress" | "inprogress" | "wip" => "in_progress".into(),
            "done" => "closed".into(),
            other => other.into(),
        }
    }

    /// Whether work on the issue is finished.
    pub fn is_closed(&self) -> bool {
        matches!(self, Status::Closed)
    }
}

impl IssueType {
    fn alias(s: &str) -> String {
        s.into()
    }
}

impl DepType {
    fn alias(s: &str) -> String {
        match s {
            "parent" | "child" => "parent-child".into(),
            "discovered" => "discovered-from".into(),
            other => other.into(),
        }
    }

    /// Whether this kind of edge keeps the dependent out of the ready queue.
    pub fn gates(&self) -> bool {
        matches!(self, DepType::Blocks | DepType::ParentChild)
    }
}

/// Lowest (least urgent) priority.
pub const PRIORITY_MAX: i64 = 4;
/// Default priority for new issues.
pub const PRIORITY_DEFAULT: i64 = 2;
/// Longest title accepted, in characters.
pub const TITLE_MAX_CHARS: usize = 500;

/// Parses a priority given as `0`..`4` or `P0`..`P4`.
pub fn parse_priority(s: &str) -> crate::Result<i64> {
    let t = s.trim();
    let digits = t.strip_prefix(['P', 'p']).unwrap_or(t);
    match digits.parse::<i64>() {
        Ok(p) if (0..=PRIORITY_MAX).contains(&p) => Ok(p),
        _ => Err(crate::Error::invalid(format!("invalid priority {s:?}"))
            .hint("use 0-4 or P0-P4 (0 is the most urgent)")),
    }
}

/// Checks a title: non-empty after trimming and at most [`TITLE_MAX_CHARS`].
pub fn validate_title(title: &str) -> crate::Result<()> {
    if title.trim().is_empty() {
        return Err(crate::Error::invalid("title must not be empty"));
    }
    let n = title.chars().count();
    if n > TITLE_MAX_CHARS {
        return Err(crate::Error::invalid(format!(
            "title is {n} characters; the limit is {TITLE_MAX_CHARS}"
        ))
        .hint("put the detail in --description"));
    }
    if let Some(c) = title.chars().find(|c| c.is_control()) {
        // Titles travel to every clone and are shown in terminals: an escape
        // sequence in one could retitle a window or clear a screen there.
        return Err(crate::Error::invalid(format!(
            "title contains the control character U+{:04X}",
            c as u32
        ))
        .hint("a title is one line of text; put the detail in --description"));
    }
    Ok(())
}

/// Checks a free-text field (description, design, acceptance criteria,
/// notes, a comment): any text but the NUL character, which search and
/// every C string end at.
pub fn validate_text(field: &str, text: &str) -> crate::Result<()> {
    if text.contains('\0') {
        return Err(crate::Error::invalid(format!(
            "{field} contains the NUL character (U+0000)"
        ))
        .hint("remove it: text ends there for search and for most tools"));
    }
    Ok(())
}

/// Checks an assignee: someone who can act, so a name `check_actor` would
/// take (no control characters; '' unassigns and is checked by the caller).
pub fn validate_assignee(name: &str) -> crate::Result<()> {
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(crate::Error::invalid(format!(
            "assignee contains the control character U+{:04X}",
            c as u32
        ))
        .hint("an assignee is an actor's name, such as alice or claude-code"));
    }
    Ok(())
}

/// Checks a label: non-empty, no whitespace or commas, at most 100 characters.
pub fn validate_label(label: &str) -> crate::Result<()> {
    if label.is_empty()
        || label.chars().count() > 100
        || label
            .chars()
            .any(|c| c.is_whitespace() || c == ',' || c.is_control())
    {
        return Err(crate::Error::invalid(format!("invalid label {label:?}"))
            .hint("labels are 1-100 characters without spaces, commas or control characters"));
    }
    Ok(())
}

/// A directed edge: `issue_id` depends on `depends_on_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    /// The dependent issue.
    pub issue_id: String,
    /// The issue it depends on (the blocker, or the parent).
    pub depends_on_id: String,
    /// Kind of edge.
    #[serde(rename = "type")]
    pub dep_type: DepType,
    /// When the edge was added.
    pub created_at: String,
    /// Who added it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub created_by: String,
}

/// A comment; comments are append-only and all of them survive merges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comment {
    /// Stable id (derived from the op that added it, or kept from an import).
    pub id: String,
    /// The issue commented on.
    pub issue_id: String,
    /// Who wrote it.
    pub author: String,
    /// Body text.
    pub text: String,
    /// When it was written.
    pub created_at: String,
}

fn is_zero_len(s: &str) -> bool {
    s.is_empty()
}

/// An issue as materialised from its ops; also one line of `issues.jsonl`.
///
/// Serialisation is deterministic: fixed key order, empty optional fields left out,
/// labels sorted, dependencies sorted by (target, type), comments by (time, id), and
/// fields bd does not model kept in `extra` (sorted by key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Issue {
    /// `<prefix>-<hash>` or `<parent>.<n>`.
    pub id: String,
    /// One-line summary.
    pub title: String,
    /// Long description.
    #[serde(default, skip_serializing_if = "is_zero_len")]
    pub description: String,
    /// Design notes.
    #[serde(default, skip_serializing_if = "is_zero_len")]
    pub design: String,
    /// Acceptance criteria.
    #[serde(default, skip_serializing_if = "is_zero_len")]
    pub acceptance_criteria: String,
    /// Free-form notes.
    #[serde(default, skip_serializing_if = "is_zero_len")]
    pub notes: String,
    /// Workflow state.
    pub status: Status,
    /// 0 (most urgent) to 4.
    pub priority: i64,
    /// Kind of work.
    pub issue_type: IssueType,
    /// Who is working on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignee: Option<String>,
    /// How long the assignee's claim lasts without a write by them (`30m`):
    /// set by a claim with `--ttl`, cleared when the claim ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_ttl: Option<String>,
    /// When that claim lapses unless the assignee writes to the issue again
    /// (RFC 3339): their last op on it plus `claim_ttl`, while it is in
    /// progress. Derived, never written by an op.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_expires_at: Option<String>,
    /// Link to an outside tracker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_ref: Option<String>,
    /// Creation time (RFC 3339).
    pub created_at: String,
    /// Creator.
    #[serde(default, skip_serializing_if = "is_zero_len")]
    pub created_by: String,
    /// Time of the latest change (RFC 3339).
    pub updated_at: String,
    /// When it was closed, while it is closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<String>,
    /// Why it was closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_reason: Option<String>,
    /// Labels, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Outgoing edges, sorted by (depends_on_id, type).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<Dependency>,
    /// Comments, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub comments: Vec<Comment>,
    /// Fields bd does not model, kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// The actor bd's own writes are recorded under (a lapsed claim returned to
/// open); reserved: no caller may act as it. Its writes to a field yield to
/// an agent's concurrent write (see `merge`).
pub const BD_ACTOR: &str = "bd";

/// The scalar fields bd models, settable with `bd update`.
pub const SCALAR_FIELDS: &[&str] = &[
    "title",
    "description",
    "design",
    "acceptance_criteria",
    "notes",
    "status",
    "priority",
    "issue_type",
    "assignee",
    "claim_ttl",
    "external_ref",
    "created_at",
    "created_by",
    "closed_at",
    "close_reason",
];

/// Fields of an issue line that are not registers (derived or collections).
pub const STRUCTURAL_FIELDS: &[&str] = &[
    "id",
    "updated_at",
    "claim_expires_at",
    "labels",
    "dependencies",
    "comments",
];

/// One contender of a conflicted field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contender {
    /// The op that wrote this value.
    pub op_id: String,
    /// The value it wrote (`null` for a deletion).
    pub value: Value,
    /// Who wrote it.
    pub actor: String,
    /// On which replica.
    pub replica: String,
    /// When (RFC 3339, from the op's clock).
    pub at: String,
}

/// Concurrent writes to one field that no writer saw the other of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// The issue.
    pub issue_id: String,
    /// The field (`deleted` for a delete concurrent with an edit).
    pub field: String,
    /// The competing writes, in a deterministic order; the first is displayed.
    pub contenders: Vec<Contender>,
}
