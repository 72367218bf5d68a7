use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use clap::Args;
use serde::Serialize;
use std::path::PathBuf;

/// Add a short section about bd to AGENTS.md (or FILE), or take it out again
///
/// The section sits between two marker lines and is all bd ever writes:
/// running it again replaces the section in place (what is between the
/// markers is bd's), `--remove` takes it out, and nothing else in the file is
/// touched: marker lines quoted in a fenced code block are left alone, the
/// file's line endings and permissions are kept, and a read-only file is
/// refused. The file is made if absent.
#[derive(Args, Debug)]
pub struct OnboardArgs {
    /// The file (default: AGENTS.md at the top of the repository, or here)
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Take bd's section out instead
    #[arg(long)]
    pub remove: bool,
}

const BEGIN: &str =
    "<!-- bd:begin (written by `bd onboard`; `bd onboard --remove` takes it out) -->";
const END: &str = "<!-- bd:end -->";

#[derive(Serialize)]
struct Onboarded {
    file: String,
    /// added, updated, unchanged, removed or absent
    action: &'static str,
}

/// bd's section of an agents file, with the file's line endings.
fn section_for(text: &str) -> String {
    if text.contains("\r\n") {
        section().replace('\n', "\r\n")
    } else {
        section()
    }
}

/// bd's section of an agents file.
fn section() -> String {
    let mut s = format!("{BEGIN}\n## Issue tracking: bd\n\n");
    s.push_str("This repository tracks its work with bd (`.beads/`). Start a session with `bd prime`; then:\n\n");
    for (n, step) in super::prime::WORKFLOW.iter().enumerate() {
        s.push_str(&format!("{}. {step}\n", n + 1));
    }
    s.push_str("\nEvery command takes `--json`. Do not track work in TODO files.\n");
    s.push_str(END);
    s.push('\n');
    s
}

/// The byte range of bd's section in `text` (its end line included): from a
/// line that is exactly [`BEGIN`] to the first line after it that is exactly
/// [`END`]. An end line with no begin before it is the user's text (an
/// example in a code block, say). A begin line twice, or one with no end
/// after it, is refused: the user's text around it is not bd's to guess at.
fn find(text: &str, file: &std::path::Path) -> Result<Option<std::ops::Range<usize>>, CliError> {
    let mut begins = Vec::new();
    let mut section = None;
    let mut at = 0;
    let mut fence: Option<&str> = None;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        // Marker lines quoted in a fenced code block are the user's text.
        let opener = ["```", "~~~"]
            .into_iter()
            .find(|f| bare.trim_start().starts_with(f));
        match (fence, opener) {
            (None, Some(f)) => fence = Some(f),
            (Some(open), Some(f)) if open == f => fence = None,
            _ => {}
        }
        if fence.is_some() || opener.is_some() {
            at += line.len();
            continue;
        }
        if bare == BEGIN {
            begins.push(n + 1);
            if begins.len() == 1 {
                section = Some((at, None));
            }
        } else if bare == END
            && let Some((_, end @ None)) = &mut section
        {
            *end = Some(at + line.len());
        }
        at += line.len();
    }
    match (begins.len(), section) {
        (0, _) => Ok(None),
        (1, Some((start, Some(end)))) => Ok(Some(start..end)),
        _ => {
            let lines: Vec<String> = begins.iter().map(|n| n.to_string()).collect();
            let why = if begins.len() > 1 {
                "more than once"
            } else {
                "with no end line after it"
            };
            Err(CliError(
                bd::Error::new(
                    bd::ErrorKind::Conflict,
                    format!(
                        "{} has bd's begin line {why} (line {}); nothing was changed",
                        file.display(),
                        lines.join(", ")
                    ),
                )
                .hint("fix or delete those lines by hand, then run bd onboard again"),
            ))
        }
    }
}

/// Replaces `file` atomically, keeping its permission bits; a read-only file
/// is refused (the replacement would otherwise go through it).
fn write_keeping_mode(file: &std::path::Path, bytes: &[u8]) -> Result<(), CliError> {
    let mode = match std::fs::metadata(file) {
        Ok(m) if m.permissions().readonly() => {
            return Err(CliError(
                bd::Error::new(
                    bd::ErrorKind::Io,
                    format!("{} is read-only; nothing was changed", file.display()),
                )
                .hint("make it writable first (chmod u+w), or name another file"),
            ));
        }
        Ok(m) => Some(m.permissions()),
        Err(_) => None,
    };
    bd::client::write_atomically(file, bytes)?;
    if let Some(p) = mode {
        std::fs::set_permissions(file, p)?;
    }
    Ok(())
}

pub fn cmd_onboard(ctx: &Ctx, a: OnboardArgs) -> Result<(), CliError> {
    let file = match a.file {
        Some(f) => f,
        None => {
            // The repository's top, where agents look for AGENTS.md.
            let top = ctx
                .paths()
                .ok()
                .and_then(|p| p.dir.parent().map(|d| d.to_path_buf()))
                .unwrap_or_else(|| PathBuf::from("."));
            top.join("AGENTS.md")
        }
    };
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(CliError(
                bd::Error::from(e).hint(format!("bd onboard reads and writes {}", file.display())),
            ));
        }
    };
    let (next, action) = match (find(&text, &file)?, a.remove) {
        (Some(r), true) => {
            // With the blank line `onboard` put before it, so that adding
            // and removing gives the file back byte for byte.
            let start = if text[..r.start].ends_with("\n\n") {
                r.start - 1
            } else {
                r.start
            };
            let mut t = text.clone();
            t.replace_range(start..r.end, "");
            (t, "removed")
        }
        (None, true) => (text.clone(), "absent"),
        (Some(r), false) if text[r.clone()] == section_for(&text) => (text.clone(), "unchanged"),
        (Some(r), false) => {
            let mut t = text.clone();
            t.replace_range(r, &section_for(&text));
            (t, "updated")
        }
        (None, false) => {
            let eol = if text.contains("\r\n") { "\r\n" } else { "\n" };
            let mut t = text.clone();
            if !t.is_empty() && !t.ends_with('\n') {
                t.push_str(eol);
            }
            if !t.is_empty() {
                t.push_str(eol);
            }
            t.push_str(&section_for(&text));
            (t, "added")
        }
    };
    if next != text {
        write_keeping_mode(&file, next.as_bytes())?;
    }
    let shown = file.display().to_string();
    if ctx.json {
        return output::json(&Onboarded {
            file: shown,
            action,
        });
    }
    let what = match action {
        "added" => format!("Added bd's section to {shown}"),
        "updated" => format!("Updated bd's section in {shown}"),
        "unchanged" => format!("{shown} already has bd's section (unchanged)"),
        "removed" => format!("Removed bd's section from {shown}"),
        _ => format!("{shown} has no bd section (nothing to remove)"),
    };
    output::status(ctx.quiet, &what);
    Ok(())
}
