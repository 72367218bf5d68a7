//! Adding and removing dependency edges; a gating edge that would close a cycle
//! is refused.

use super::{Context, get_live, new_op};
use crate::api::Response;
use crate::model::{DepType, Dependency, OpKind};
use crate::query;
use crate::storage::WriteTx;
use crate::{Error, ErrorKind, Result};
use serde_json::json;

pub(super) fn dep_add(
    tx: &mut WriteTx<'_>,
    ctx: &Context<'_>,
    issue: &str,
    depends_on: &str,
    dep_type: &str,
) -> Result<Response> {
    let kind = DepType::parse(dep_type)?;
    let from = query::resolve_id(tx.conn(), issue)?;
    let to = query::resolve_id(tx.conn(), depends_on)?;
    if from == to {
        return Err(Error::invalid(format!("{from} cannot depend on itself")));
    }
    if kind.gates() && query::would_cycle(tx.conn(), &from, &to)? {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "{from} → {to} would create a dependency cycle ({to} already depends on {from})"
            ),
        )
        .hint(format!("see the chain with: bd dep tree {to}")));
    }
    let exists = !tx.doc(&from)?.dep_heads(&to, kind.as_str()).is_empty();
    if kind == DepType::ParentChild && !exists {
        // An issue has one parent: a second edge would put it under two.
        if let Some(other) = tx.doc(&from)?.parents().into_iter().find(|p| *p != to) {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("{from} is already under {other}; an issue has one parent"),
            )
            .hint(format!("move it instead: bd update {from} --parent {to}")));
        }
    }
    if !exists {
        let value = json!({"depends_on_id": to, "type": kind.as_str()});
        tx.record(new_op(ctx, &from, OpKind::DepAdd, None, value, vec![]))?;
        tx.flush()?;
    }
    let dependency = get_live(tx.conn(), &from)?
        .dependencies
        .into_iter()
        .find(|d| d.depends_on_id == to && d.dep_type == kind)
        .ok_or_else(|| Error::internal("dependency missing after add"))?;
    Ok(Response::Dependency {
        dependency,
        changed: !exists,
    })
}

pub(super) fn dep_remove(
    tx: &mut WriteTx<'_>,
    ctx: &Context<'_>,
    issue: &str,
    depends_on: &str,
    dep_type: Option<&str>,
) -> Result<Vec<Dependency>> {
    let kind = dep_type.map(DepType::parse).transpose()?;
    let from = query::resolve_id(tx.conn(), issue)?;
    // The target may be deleted; match it exactly in that case.
    let to = query::resolve_id(tx.conn(), depends_on).unwrap_or_else(|_| depends_on.to_string());
    let edges: Vec<Dependency> = get_live(tx.conn(), &from)?
        .dependencies
        .into_iter()
        .filter(|d| d.depends_on_id == to && kind.as_ref().is_none_or(|k| &d.dep_type == k))
        .collect();
    if edges.is_empty() {
        let what = kind.map(|k| format!(" ({k})")).unwrap_or_default();
        return Err(
            Error::not_found(format!("{from} does not depend on {to}{what}"))
                .hint(format!("see its dependencies with: bd show {from}")),
        );
    }
    for d in &edges {
        let heads = tx.doc(&from)?.dep_heads(&to, d.dep_type.as_str());
        let value = json!({"depends_on_id": to, "type": d.dep_type.as_str()});
        tx.record(new_op(ctx, &from, OpKind::DepRemove, None, value, heads))?;
    }
    Ok(edges)
}
