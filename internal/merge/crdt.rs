//! The building blocks of an issue's fold: the stamp that orders contenders,
//! the multi-value register (a scalar field) and the add-wins set (labels and
//! dependencies). Each is order-independent on its own.

use crate::model::{BD_ACTOR, Hlc, Op};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Who wrote something, and when; orders contenders deterministically. Shared
/// (`Arc`) because one op stamps every field and element it carries: a create
/// fills a dozen registers, and a rebuild folds a hundred thousand ops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Stamp {
    pub(super) hlc: Hlc,
    pub(super) replica: std::sync::Arc<str>,
    pub(super) actor: std::sync::Arc<str>,
}

impl Stamp {
    pub(super) fn of(op: &Op) -> Self {
        Stamp {
            hlc: op.hlc,
            replica: op.replica.as_str().into(),
            actor: op.actor.as_str().into(),
        }
    }

    pub(super) fn order_key<'a>(&'a self, op_id: &'a str) -> (Hlc, &'a str, &'a str) {
        (self.hlc, &self.replica, op_id)
    }
}

/// A multi-value register. `writes` holds only the visible writes: a write is
/// dropped once an op supersedes it (and not kept if it arrives after), so
/// reading a field costs the same however long its history. `superseded` keeps
/// every superseded id, which is what makes the fold order-independent.
#[derive(Debug, Clone, Default)]
pub(super) struct Register {
    writes: BTreeMap<String, (Value, Stamp)>,
    superseded: BTreeSet<String>,
}

impl Register {
    pub(super) fn visible(&self) -> impl Iterator<Item = (&String, &(Value, Stamp))> {
        self.writes.iter()
    }

    pub(super) fn write(&mut self, id: &str, value: &Value, stamp: &Stamp) {
        if !self.superseded.contains(id) {
            self.writes
                .insert(id.to_string(), (value.clone(), stamp.clone()));
        }
    }

    pub(super) fn supersede(&mut self, ids: &[String]) {
        for id in ids {
            self.writes.remove(id);
            self.superseded.insert(id.clone());
        }
    }

    /// Visible writes, the displayed one first. bd's own writes (actor
    /// [`BD_ACTOR`]: a lapsed claim returned to open) yield to any write an
    /// agent made concurrently: a takeover on another clone that did not
    /// see the lapse stands, with no conflict. Which writes yield depends
    /// only on the set of visible writes, so every replica agrees.
    pub(super) fn ranked(&self) -> Vec<(&String, &(Value, Stamp))> {
        let agents = self.visible().any(|(_, (_, s))| &*s.actor != BD_ACTOR);
        let mut v: Vec<_> = self
            .visible()
            .filter(|(_, (_, s))| !agents || &*s.actor != BD_ACTOR)
            .collect();
        v.sort_by(|a, b| b.1.1.order_key(b.0).cmp(&a.1.1.order_key(a.0)));
        v
    }

    pub(super) fn winner(&self) -> Option<&Value> {
        self.ranked().first().map(|(_, (v, _))| v)
    }
}

/// An add-wins set: each element is present while any of its adds is not removed.
#[derive(Debug, Clone)]
pub(super) struct AddWinsSet<K: Ord, M> {
    pub(super) adds: BTreeMap<K, BTreeMap<String, (M, Stamp)>>,
    pub(super) removed: BTreeSet<String>,
}

impl<K: Ord, M> Default for AddWinsSet<K, M> {
    fn default() -> Self {
        AddWinsSet {
            adds: BTreeMap::new(),
            removed: BTreeSet::new(),
        }
    }
}

impl<K: Ord + Clone, M> AddWinsSet<K, M> {
    pub(super) fn live_adds(&self, key: &K) -> Vec<&String> {
        self.adds
            .get(key)
            .map(|m| m.keys().filter(|id| !self.removed.contains(*id)).collect())
            .unwrap_or_default()
    }

    /// Present elements with the metadata of their earliest live add.
    pub(super) fn present(&self) -> impl Iterator<Item = (&K, &M, &Stamp)> {
        self.adds.iter().filter_map(|(k, adds)| {
            adds.iter()
                .filter(|(id, _)| !self.removed.contains(*id))
                .min_by(|a, b| a.1.1.order_key(a.0).cmp(&b.1.1.order_key(b.0)))
                .map(|(_, (m, s))| (k, m, s))
        })
    }

    pub(super) fn live_ids(&self) -> impl Iterator<Item = (&K, &String, &Stamp)> {
        self.adds.iter().flat_map(move |(k, adds)| {
            adds.iter()
                .filter(|(id, _)| !self.removed.contains(*id))
                .map(move |(id, (_, s))| (k, id, s))
        })
    }
}
