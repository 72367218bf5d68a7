//! Adding and removing labels: one op per label that changes, none otherwise.

use super::{Context, new_op};
use crate::model::OpKind;
use crate::storage::WriteTx;
use crate::Result;
use serde_json::json;

pub(super) fn change_labels(
    tx: &mut WriteTx<'_>,
    ctx: &Context<'_>,
    id: &str,
    add: &[String],
    remove: &[String],
) -> Result<bool> {
    let mut changed = false;
    for label in add {
        if tx.doc(id)?.label_heads(label).is_empty() {
            tx.record(new_op(
                ctx,
                id,
                OpKind::LabelAdd,
                None,
                json!(label),
                vec![],
            ))?;
            changed = true;
        }
    }
    for label in remove {
        let heads = tx.doc(id)?.label_heads(label);
        if !heads.is_empty() {
            tx.record(new_op(
                ctx,
                id,
                OpKind::LabelRemove,
                None,
                json!(label),
                heads,
            ))?;
            changed = true;
        }
    }
    Ok(changed)
}
