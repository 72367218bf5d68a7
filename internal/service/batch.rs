//! Batches: several writes in one transaction, all or nothing, where `$N`
//! names the issue created by the batch's operation N.

use super::{Context, write};
use crate::api::{Request, Response};
use crate::storage::WriteTx;
use crate::{Error, Result};
use serde_json::Value;

/// Longest batch accepted.
pub const BATCH_MAX: usize = 10_000;

/// Runs a batch's operations in order in the caller's transaction; the first
/// failure fails the whole batch (the caller's transaction or savepoint then rolls
/// everything back).
pub(super) fn batch(tx: &mut WriteTx<'_>, ctx: &Context<'_>, requests: Vec<Request>) -> Result<Vec<Response>> {
    if requests.is_empty() {
        return Err(Error::invalid("empty batch"));
    }
    if requests.len() > BATCH_MAX {
        return Err(Error::invalid(format!(
            "batch of {} operations; the limit is {BATCH_MAX}",
            requests.len()
        )));
    }
    let mut created: Vec<Option<String>> = Vec::with_capacity(requests.len());
    let mut out = Vec::with_capacity(requests.len());
    for (i, req) in requests.into_iter().enumerate() {
        let n = i + 1;
        let name = req.op_name();
        // A hint naming an issue this batch created would send the caller
        // to an id that, rolled back, does not exist: such hints are left out.
        let made = &created;
        let fail = |e: Error| Error {
            kind: e.kind,
            message: format!(
                "batch operation #{n} ({name}) failed: {}; nothing in the batch was applied",
                e.message
            ),
            hints: e
                .hints
                .into_iter()
                .filter(|h| !made.iter().flatten().any(|id| h.contains(id.as_str())))
                .collect(),
        };
        if !req.is_write()
            || matches!(
                req,
                Request::Batch { .. } | Request::Import { .. } | Request::Settle { .. }
            )
        {
            return Err(fail(Error::invalid(
                "only create, update, close, reopen, delete, resolve, dep, label and comment operations can be batched",
            )));
        }
        let req = substitute_refs(req, &created).map_err(fail)?;
        let resp = write(tx, ctx, req).map_err(fail)?;
        created.push(match &resp {
            Response::Issue(issue) => Some(issue.id.clone()),
            _ => None,
        });
        out.push(resp);
    }
    Ok(out)
}

/// Fields whose strings name issues: there, and only there, a string that is
/// exactly `$N` is a reference (a title "$1" stays a title).
const ID_FIELDS: [&str; 6] = ["ids", "id", "issue", "depends_on", "parent", "deps"];

/// Replaces every issue reference `$N` (N without leading zeros) with the id
/// created by operation N.
fn substitute_refs(req: Request, created: &[Option<String>]) -> Result<Request> {
    fn walk(v: &mut Value, created: &[Option<String>], names_issues: bool, hit: &mut bool) -> Result<()> {
        match v {
            Value::String(s)
                if names_issues
                    && s.len() > 1
                    && s.starts_with('$')
                    && !s.starts_with("$0")
                    && s[1..].bytes().all(|b| b.is_ascii_digit()) =>
            {
                let n: usize = s[1..]
                    .parse()
                    .map_err(|_| Error::invalid(format!("bad reference {s}")))?;
                match n.checked_sub(1).and_then(|i| created.get(i)) {
                    Some(Some(id)) => {
                        *s = id.clone();
                        *hit = true;
                    }
                    Some(None) => {
                        return Err(Error::invalid(format!(
                            "{s} refers to operation #{n}, which creates no issue"
                        )));
                    }
                    None => {
                        return Err(Error::invalid(format!(
                            "{s} refers to operation #{n}, which has not run yet"
                        ))
                        .hint("$N can only name an earlier operation"));
                    }
                }
            }
            Value::Array(items) => items
                .iter_mut()
                .try_for_each(|i| walk(i, created, names_issues, hit))?,
            Value::Object(map) => map
                .iter_mut()
                .try_for_each(|(k, i)| walk(i, created, ID_FIELDS.contains(&k.as_str()), hit))?,
            _ => {}
        }
        Ok(())
    }
    let mut v = serde_json::to_value(&req)?;
    let mut hit = false;
    walk(&mut v, created, false, &mut hit)?;
    if !hit {
        // No reference: the request as it came (reading it back from JSON
        // cost ~4% of a large batch of creates).
        return Ok(req);
    }
    Ok(serde_json::from_value(v)?)
}
