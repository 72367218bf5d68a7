//! Two creates of one id are two issues: which create keeps the id, the
//! displaced id the other takes, and which issue each op of the id belongs to.

use crate::model::{Hlc, Op, OpKind};
use std::collections::BTreeMap;

/// How many hex digits of its create's op id a displaced id ends with.
pub const DISPLACED_SUFFIX_LEN: usize = 6;

/// The id a create of `wire` takes when another create of `wire` keeps that id:
/// `<wire>~<first 6 hex digits of the create's op id>`. Ids given by bd or by
/// `--id` never contain `~`, so this never names another issue.
pub fn displaced_id(wire: &str, create_op_id: &str) -> String {
    let n = create_op_id.len().min(DISPLACED_SUFFIX_LEN);
    format!("{wire}~{}", &create_op_id[..n])
}

/// `(wire id, suffix)` when `id` is a displaced id (see [`displaced_id`]).
pub fn split_displaced(id: &str) -> Option<(&str, &str)> {
    let (wire, suffix) = id.rsplit_once('~')?;
    let shaped = !wire.is_empty()
        && suffix.len() == DISPLACED_SUFFIX_LEN
        && suffix
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    shaped.then_some((wire, suffix))
}

/// The id ops name for the issue `id`: its wire id when it was displaced,
/// else `id` itself.
pub fn wire_id(id: &str) -> &str {
    split_displaced(id).map_or(id, |(wire, _)| wire)
}

/// The order of creates of one id: the least (hlc, replica, op id) keeps it.
fn create_rank(op: &Op) -> (Hlc, &str, &str) {
    (op.hlc, &op.replica, &op.op_id)
}

/// Which issue each op of the id `wire` belongs to, given every op of it known
/// (`ops`: ops whose `issue` is `wire`; others are ignored). The rule, the same
/// on every replica in any delivery order because it depends only on the set:
///
/// - the create with the least (hlc, replica, op id) keeps `wire`; every other
///   create gets its [`displaced_id`];
/// - an op naming its create (`of`) belongs to that create's issue; one naming a
///   create not (yet) known stays with `wire` until it arrives;
/// - an op without `of` (written before bd told creates apart) belongs to the
///   first create its own replica made, or else to the one keeping `wire`.
///
/// Returns op id → issue id.
pub fn partition<'a>(
    wire: &str,
    ops: impl IntoIterator<Item = &'a Op>,
) -> BTreeMap<String, String> {
    let ops: Vec<&Op> = ops.into_iter().filter(|op| op.issue == wire).collect();
    let mut creates: Vec<&Op> = ops
        .iter()
        .copied()
        .filter(|op| op.kind == OpKind::Create)
        .collect();
    creates.sort_by(|a, b| create_rank(a).cmp(&create_rank(b)));
    let home = |n: usize| {
        if n == 0 {
            wire.to_string()
        } else {
            displaced_id(wire, &creates[n].op_id)
        }
    };
    let mut out = BTreeMap::new();
    for op in &ops {
        let n = match (&op.kind, &op.of) {
            (OpKind::Create, _) => creates.iter().position(|c| c.op_id == op.op_id),
            (_, Some(of)) => creates
                .iter()
                .position(|c| c.op_id.starts_with(of.as_str())),
            (_, None) => creates.iter().position(|c| c.replica == op.replica),
        };
        out.insert(op.op_id.clone(), home(n.unwrap_or(0)));
    }
    out
}
