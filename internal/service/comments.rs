//! Adding comments: one op each, bounded in size; a comment's id comes from its op.

use super::{Context, new_op};
use crate::model::{Comment, OpKind};
use crate::query;
use crate::storage::WriteTx;
use crate::{Error, Result};
use serde_json::json;

/// Longest comment accepted, in bytes.
pub const COMMENT_MAX_BYTES: usize = 64 * 1024;

pub(super) fn comment_add(tx: &mut WriteTx<'_>, ctx: &Context<'_>, id: &str, text: &str) -> Result<Comment> {
    let id = query::resolve_id(tx.conn(), id)?;
    crate::model::validate_text("comment", text)?;
    if text.trim().is_empty() {
        return Err(Error::invalid("comment text must not be empty"));
    }
    if text.len() > COMMENT_MAX_BYTES {
        return Err(Error::invalid(format!(
            "comment is {} bytes; the limit is {COMMENT_MAX_BYTES}",
            text.len()
        )));
    }
    let op_id = tx.record(new_op(
        ctx,
        &id,
        OpKind::Comment,
        None,
        json!({"text": text}),
        vec![],
    ))?;
    let want = format!("c-{}", &op_id[..12]);
    tx.doc(&id)?
        .materialise()
        .and_then(|m| m.issue.comments.into_iter().find(|c| c.id == want))
        .ok_or_else(|| Error::internal("comment missing after add"))
}
