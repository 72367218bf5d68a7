use super::{call, unexpected};
use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::api::{IssueDetails, Request, Response};
use clap::Args;
use std::fmt::Write;

/// Show issues with dependencies, dependents and comments
#[derive(Args, Debug)]
pub struct ShowArgs {
    /// Issue ids (short forms work: a unique prefix or suffix)
    #[arg(required = true)]
    pub ids: Vec<String>,
}

pub fn cmd_show(ctx: &Ctx, a: ShowArgs) -> Result<(), CliError> {
    match call(
        ctx,
        Request::Show {
            ids: super::once_each(a.ids),
        },
    )? {
        Response::Details(d) if ctx.json => output::json(&d),
        Response::Details(d) => {
            let look = output::look();
            let text: Vec<String> = d
                .iter()
                .map(|d| colour(&look, d, output::terminal_safe(&render(d)).into_owned()))
                .collect();
            output::print_data(&text.join("\n"))
        }
        other => Err(unexpected(other)),
    }
}

/// Colours the id, status and priority in an issue's escaped text (ids and
/// those values never hold control characters, so they read the same
/// escaped).
fn colour(look: &output::Look, d: &IssueDetails, text: String) -> String {
    if !look.colour {
        return text;
    }
    let i = &d.issue;
    let status = i.status.to_string();
    let text = text.replacen(
        &format!("{}: ", i.id),
        &format!("{}: ", look.paint(&i.id, output::ID_COLOUR)),
        1,
    );
    let text = text.replacen(
        &format!("Status: {status}"),
        &format!(
            "Status: {}",
            look.paint(&status, output::status_colour(&status))
        ),
        1,
    );
    let p = format!("P{}", i.priority);
    text.replacen(
        &format!("Priority: {p}"),
        &format!(
            "Priority: {}",
            look.paint(&p, output::priority_colour(i.priority))
        ),
        1,
    )
}

fn render(d: &IssueDetails) -> String {
    let i = &d.issue;
    let mut s = String::new();
    let conflicted = |f: &str| {
        if d.conflicts.iter().any(|c| c.field == f) {
            " [CONFLICT]"
        } else {
            ""
        }
    };
    let _ = writeln!(s, "{}: {}{}", i.id, i.title, conflicted("title"));
    let blocked = if d.blocked { " (blocked)" } else { "" };
    let _ = writeln!(
        s,
        "Status: {}{}{}   Priority: P{}{}   Type: {}",
        i.status,
        conflicted("status"),
        blocked,
        i.priority,
        conflicted("priority"),
        i.issue_type
    );
    if let Some(a) = &i.assignee {
        let _ = writeln!(s, "Assignee: {a}{}", conflicted("assignee"));
    }
    if let (Some(at), Some(ttl)) = (&i.claim_expires_at, &i.claim_ttl) {
        let lapsed =
            bd::api::time::parse_rfc3339(at).is_some_and(|t| t <= bd::api::time::now_ms() as i64);
        let _ = if lapsed {
            writeln!(
                s,
                "Claim: lapsed at {at} (no write by the assignee for {ttl}); anyone may take it"
            )
        } else {
            writeln!(
                s,
                "Claim: lapses at {at} unless the assignee writes to it (time limit {ttl})"
            )
        };
    }
    if let Some(from) = &d.displaced_from {
        let _ = writeln!(
            s,
            "Id: {} (created as {from}, which an earlier create of another issue keeps)",
            i.id
        );
    }
    if !d.displaced.is_empty() {
        let _ = writeln!(
            s,
            "Id: {} was also created for other issues, now {}",
            i.id,
            d.displaced.join(", ")
        );
    }
    if !i.labels.is_empty() {
        let _ = writeln!(s, "Labels: {}", i.labels.join(", "));
    }
    if let Some(r) = &i.external_ref {
        let _ = writeln!(s, "External: {r}");
    }
    let by = if i.created_by.is_empty() {
        String::new()
    } else {
        format!(" by {}", i.created_by)
    };
    let _ = writeln!(
        s,
        "Created: {}{by}   Updated: {}",
        i.created_at, i.updated_at
    );
    // Only for a closed issue: a close that lost a status conflict (to a
    // claim made elsewhere, say) leaves its time behind, and `bd conflicts`
    // lists it there.
    if let Some(c) = i.closed_at.as_ref().filter(|_| i.status.is_closed()) {
        let reason = i
            .close_reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        let _ = writeln!(s, "Closed: {c}{reason}");
    }
    for (name, text) in [
        ("Description", &i.description),
        ("Design", &i.design),
        ("Acceptance criteria", &i.acceptance_criteria),
        ("Notes", &i.notes),
    ] {
        if !text.is_empty() {
            let _ = writeln!(s, "\n{name}:");
            for line in text.lines() {
                let _ = writeln!(s, "  {line}");
            }
        }
    }
    for (k, v) in &i.extra {
        let _ = writeln!(s, "{k}: {v}");
    }
    if !i.dependencies.is_empty() {
        let _ = writeln!(s, "\nDepends on:");
        for dep in &i.dependencies {
            let gone = d
                .dangling
                .get(&dep.depends_on_id)
                .map(|w| format!(" [{w}]"))
                .unwrap_or_default();
            let _ = writeln!(s, "  → {} ({}){gone}", dep.depends_on_id, dep.dep_type);
        }
    }
    if !d.dependents.is_empty() {
        let _ = writeln!(s, "\nDependents:");
        for dep in &d.dependents {
            let _ = writeln!(s, "  ← {} ({})", dep.issue_id, dep.dep_type);
        }
    }
    if !i.comments.is_empty() {
        let _ = writeln!(s, "\nComments:");
        for c in &i.comments {
            let _ = writeln!(
                s,
                "  [{}] {}: {}",
                c.created_at,
                c.author,
                crate::output::indent_continuation(&c.text, "    ")
            );
        }
    }
    for c in &d.conflicts {
        if c.field == "id" {
            let _ = writeln!(
                s,
                "\nCreated as {} on more than one clone (`bd resolve {} --field id --value ack` acknowledges it):",
                i.id, i.id
            );
            for k in &c.contenders {
                let field = |f: &str| k.value.get(f).cloned().unwrap_or_default();
                let _ = writeln!(
                    s,
                    "  {} {} by {} on {} at {}",
                    field("id").as_str().unwrap_or_default(),
                    field("title"),
                    k.actor,
                    k.replica,
                    k.at
                );
            }
            continue;
        }
        let _ = writeln!(s, "\nConflict on {}:", c.field);
        for k in &c.contenders {
            let _ = writeln!(
                s,
                "  {} by {} on {} at {}",
                k.value, k.actor, k.replica, k.at
            );
        }
    }
    s
}
