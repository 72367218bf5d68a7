//! Operations: the unit of change, of storage and of sync.
//!
//! Wire format (one JSON object per line in `.beads/ops/<replica>.jsonl`), keys in
//! this order: `op_id`, `issue`, `of` (omitted on creates), `kind`, `field` (only
//! for `set`), `value`,
//! `supersedes` (omitted when empty), `fence` (omitted when none), `hlc`
//! {`wall`, `logical`}, `actor`, `replica`, `seq`. `op_id` is the first 32 hex digits of the SHA-256 of the same object
//! serialised with `op_id` left out, so any change to an op changes its id and a
//! corrupt line is detected by recomputing it.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Hybrid logical clock stamp: wall milliseconds plus a counter that orders events
/// within one millisecond (and past a clock that went backwards).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct Hlc {
    /// Milliseconds since the Unix epoch.
    pub wall: u64,
    /// Tie breaker within one `wall`.
    pub logical: u32,
}

/// What an op does. Unknown kinds (from a newer bd) are stored and ignored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// Brings an issue into existence; `value` maps field names to initial values,
    /// and may carry the initial `labels`, `dependencies` and `comments` as arrays.
    Create,
    /// Writes one scalar `field`; `supersedes` names the writes the writer saw.
    Set,
    /// Adds the label `value`.
    LabelAdd,
    /// Removes the label `value`; `supersedes` names the adds the writer saw.
    LabelRemove,
    /// Adds the edge `value` = {depends_on_id, type, created_at?}.
    DepAdd,
    /// Removes the edge `value` = {depends_on_id, type}; `supersedes` names the adds seen.
    DepRemove,
    /// Appends the comment `value` = {text, author?, created_at?, id?}.
    Comment,
    /// Tombstone; `supersedes` names every write the deleter saw.
    Delete,
    /// A kind this bd does not know.
    Other(String),
}

impl OpKind {
    /// The wire spelling.
    pub fn as_str(&self) -> &str {
        match self {
            OpKind::Create => "create",
            OpKind::Set => "set",
            OpKind::LabelAdd => "label_add",
            OpKind::LabelRemove => "label_rm",
            OpKind::DepAdd => "dep_add",
            OpKind::DepRemove => "dep_rm",
            OpKind::Comment => "comment",
            OpKind::Delete => "delete",
            OpKind::Other(s) => s,
        }
    }

    fn from_wire(s: &str) -> Self {
        match s {
            "create" => OpKind::Create,
            "set" => OpKind::Set,
            "label_add" => OpKind::LabelAdd,
            "label_rm" => OpKind::LabelRemove,
            "dep_add" => OpKind::DepAdd,
            "dep_rm" => OpKind::DepRemove,
            "comment" => OpKind::Comment,
            "delete" => OpKind::Delete,
            other => OpKind::Other(other.to_string()),
        }
    }
}

impl Serialize for OpKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for OpKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(OpKind::from_wire(&String::deserialize(d)?))
    }
}

/// One recorded change to one issue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// Content hash; see the module docs.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub op_id: String,
    /// The issue changed: the id its create op gave it. Two creates of one id
    /// (on two clones) make two issues; see [`crate::merge::partition`].
    pub issue: String,
    /// Which create of `issue` this op changes: the first [`OF_LEN`] hex digits
    /// of that create's op id, as its writer saw it. `None` on creates, and on
    /// ops written before bd told creates of one id apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub of: Option<String>,
    /// What the op does.
    pub kind: OpKind,
    /// The scalar field, for `set`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Kind-specific payload.
    #[serde(default)]
    pub value: Value,
    /// Op ids this op replaces (the values its writer saw).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supersedes: Vec<String>,
    /// The fencing token of the relay lease its writer held on `issue`
    /// (issue 14): written under a claim, the op carries the claim's token.
    /// An op whose token is older than one already granted before it (by
    /// the hlc) is a late write under a lapsed lease: see
    /// [`crate::merge`]. `None` for ops written without a lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<u64>,
    /// Clock stamp.
    pub hlc: Hlc,
    /// Who made the change.
    pub actor: String,
    /// Replica (clone) that recorded it.
    pub replica: String,
    /// Per-replica sequence number, from 1.
    pub seq: u64,
}

impl Op {
    /// The content hash of this op (ignoring whatever `op_id` holds now).
    pub fn compute_id(&self) -> String {
        let mut hasher = Sha256::new();
        if self.op_id.is_empty() {
            // Serialising a struct of strings, numbers and JSON values cannot fail.
            hasher.update(serde_json::to_vec(self).unwrap_or_default());
        } else {
            let mut bare = self.clone();
            bare.op_id.clear();
            hasher.update(serde_json::to_vec(&bare).unwrap_or_default());
        }
        hex(&hasher.finalize()[..16])
    }

    /// Sets `op_id` from the content.
    pub fn seal(mut self) -> Self {
        self.op_id = self.compute_id();
        self
    }

    /// If `op_id` matches the content, the op's canonical JSON line (what
    /// `serde_json::to_string` gives), made with one serialisation instead of two
    /// and no clone; `None` for a corrupt or forged op.
    pub fn verified_line(&mut self) -> Option<String> {
        let claimed = std::mem::take(&mut self.op_id);
        let bare = serde_json::to_string(&*self).ok();
        self.op_id = claimed;
        let bare = bare?;
        let actual = hex(&Sha256::digest(bare.as_bytes())[..16]);
        if self.op_id.is_empty() || self.op_id != actual {
            return None;
        }
        // `op_id` is the first field, so the full line is the bare one with it
        // put in front.
        Some(format!("{{\"op_id\":\"{}\",{}", self.op_id, &bare[1..]))
    }

    /// Whether `op_id` matches the content (false for a corrupt or forged line).
    pub fn is_sealed(&self) -> bool {
        !self.op_id.is_empty() && self.op_id == self.compute_id()
    }

    /// What is wrong with an op from another clone's file beyond its hash (a
    /// sealed op can still be written by a tool that is not bd): `None` when
    /// its ids and actor are usable. Ids are keys, typed back by people and
    /// agents, so control characters, whitespace and absurd lengths are
    /// refused in them. (Text such as titles and actors may hold anything:
    /// human output escapes it.)
    pub fn malformed(&self) -> Option<String> {
        let bad_id = |s: &str| {
            s.is_empty() || s.len() > 200 || s.chars().any(|c| c.is_control() || c.is_whitespace())
        };
        if bad_id(&self.issue) {
            return Some(format!("unusable issue id {:?}", self.issue));
        }
        if self.replica.is_empty()
            || self.replica.len() > 64
            || !self.replica.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Some(format!("unusable replica id {:?}", self.replica));
        }
        if self.actor.len() > 200 {
            return Some(format!("actor of {} bytes", self.actor.len()));
        }
        if let Some(of) = &self.of
            && (of.is_empty() || of.len() > 32 || !of.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Some(format!("unusable create reference {of:?}"));
        }
        None
    }

    /// The label or edge key this op adds/removes, as a string, when it has one.
    pub fn value_str(&self, key: &str) -> Option<&str> {
        self.value.get(key).and_then(Value::as_str)
    }
}

/// How many hex digits of a create's op id an op's `of` carries.
pub const OF_LEN: usize = 16;

/// Lower-case hex of `bytes`.
/// The bytes of a lower- or upper-case hex string; `None` if it is not one.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op() -> Op {
        Op {
            op_id: String::new(),
            issue: "bd-1".into(),
            of: None,
            kind: OpKind::Set,
            field: Some("title".into()),
            value: Value::String("x".into()),
            supersedes: vec![],
            fence: None,
            hlc: Hlc {
                wall: 5,
                logical: 0,
            },
            actor: "a".into(),
            replica: "r".into(),
            seq: 1,
        }
    }

    #[test]
    fn seal_is_content_hash_and_detects_tampering() {
        let sealed = op().seal();
        assert_eq!(sealed.op_id.len(), 32);
        assert!(sealed.is_sealed());
        let mut tampered = sealed.clone();
        tampered.value = Value::String("y".into());
        assert!(!tampered.is_sealed());
        let line = serde_json::to_string(&sealed).unwrap();
        let back: Op = serde_json::from_str(&line).unwrap();
        assert!(back.is_sealed());
        assert!(line.starts_with("{\"op_id\":"));
    }

    #[test]
    fn verified_line_is_the_canonical_line_and_refuses_tampering() {
        let mut sealed = op().seal();
        let want = serde_json::to_string(&sealed).unwrap();
        assert_eq!(sealed.verified_line().as_deref(), Some(want.as_str()));
        assert_eq!(sealed.op_id, op().seal().op_id, "the id is put back");
        let mut tampered = sealed.clone();
        tampered.seq = 2;
        assert_eq!(tampered.verified_line(), None);
        let mut unsealed = op();
        assert_eq!(unsealed.verified_line(), None);
    }

    #[test]
    fn unknown_kind_round_trips() {
        let line = r#"{"op_id":"x","issue":"a","kind":"lease","value":null,"hlc":{"wall":1,"logical":0},"actor":"a","replica":"r","seq":1}"#;
        let op: Op = serde_json::from_str(line).unwrap();
        assert_eq!(op.kind, OpKind::Other("lease".into()));
        assert!(serde_json::to_string(&op).unwrap().contains("\"lease\""));
    }
}
