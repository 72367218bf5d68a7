use super::{call, unexpected};
use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::api::{Request, Response};
use clap::Args;
use std::fmt::Write;

/// List fields written concurrently by different writers, ops held for clock
/// skew, ids two clones created, and late writes under a lapsed lease
#[derive(Args, Debug)]
pub struct ConflictsArgs {}

pub fn cmd_conflicts(ctx: &Ctx, _a: ConflictsArgs) -> Result<(), CliError> {
    match call(ctx, Request::Conflicts)? {
        Response::Conflicts(c) if ctx.json => output::json(&c),
        Response::Conflicts(c) if c.is_empty() => {
            output::status(ctx.quiet, "No conflicts.");
            Ok(())
        }
        Response::Conflicts(c) => {
            let mut out = String::new();
            for x in &c {
                if x.field == "id" {
                    let _ = writeln!(
                        out,
                        "{} id: created {} times on different clones; each is its own issue (`bd resolve {} --field id --value ack` to acknowledge):",
                        x.issue_id,
                        x.contenders.len(),
                        x.issue_id
                    );
                    for k in &x.contenders {
                        let field = |f: &str| k.value.get(f).cloned().unwrap_or_default();
                        let _ = writeln!(
                            out,
                            "  {} {} by {} on {} at {} (op {})",
                            field("id").as_str().unwrap_or_default(),
                            field("title"),
                            k.actor,
                            k.replica,
                            k.at,
                            k.op_id
                        );
                    }
                    continue;
                }
                let _ = writeln!(out, "{} {}:", x.issue_id, x.field);
                for k in &x.contenders {
                    let _ = writeln!(
                        out,
                        "  {} by {} on {} at {} (op {})",
                        k.value, k.actor, k.replica, k.at, k.op_id
                    );
                }
            }
            if !ctx.quiet && c.iter().any(|x| x.field != "id") {
                out.push_str(
                    "\nSettle one with `bd resolve ID --field FIELD --take CONTENDER` (an op id prefix, actor or replica) or `--value VALUE`; `--field deleted --value deleted` keeps a delete, `--field clock_skew --value apply` applies a held op, `--field claim --value drop` drops late writes under a lapsed lease (`--take OP` applies one), `--field parent --value P` settles moves that crossed.\n",
                );
            }
            output::print(&out)
        }
        other => Err(unexpected(other)),
    }
}
