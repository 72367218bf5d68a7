//! Rendering: JSON to stdout, aligned tables, and issue summaries.

use crate::cli_error::CliError;
use bd::api::Issue;
use serde::Serialize;
use std::io::Write;

/// Text for a terminal: every control character except newline and tab is
/// shown as an escape (`\x1b`, `\u{9b}`) instead of being written raw. Titles
/// and other fields arrive from other clones through git; written raw, an
/// escape sequence in one could retitle the window, clear the screen or
/// rewrite what the terminal shows. (JSON output escapes them itself.)
pub fn terminal_safe(text: &str) -> std::borrow::Cow<'_, str> {
    escape_controls(text, false)
}

/// [`terminal_safe`] for one line (a table cell, a title): newlines, tabs and
/// carriage returns are escaped too, so a field cannot forge another row.
pub fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    escape_controls(text, true)
}

fn escape_controls(text: &str, line: bool) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() && (line || (c != '\n' && c != '\t'));
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if !unsafe_char(c) {
            out.push(c);
        } else if (c as u32) < 0x80 {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Writes human-readable `text` to stdout, control characters escaped
/// ([`terminal_safe`]); a closed pipe ends the command quietly.
pub fn print(text: &str) -> Result<(), CliError> {
    print_data(&terminal_safe(text))
}

/// Writes data (JSON, JSONL) to stdout exactly as given; a closed pipe ends
/// the command quietly.
pub fn print_data(text: &str) -> Result<(), CliError> {
    if with_capture(|c| c.stdout.push_str(text)).is_some() {
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        other => Ok(other?),
    }
}

/// Prints `value` as pretty JSON on stdout.
pub fn json<T: Serialize>(value: &T) -> Result<(), CliError> {
    let mut s = serde_json::to_string_pretty(value).map_err(bd::Error::from)?;
    s.push('\n');
    print_data(&s)
}

/// Writes one line to stderr, control characters escaped. A stderr that
/// cannot be written (closed, a full disk) is ignored: `eprintln!` panics
/// there, and a command that did its work must not die with exit 101 for
/// want of somewhere to say so.
pub fn stderr_line(line: &str) {
    if with_capture(|c| c.push_stderr(&terminal_safe(line))).is_some() {
        return;
    }
    let mut e = std::io::stderr().lock();
    let _ = e
        .write_all(terminal_safe(line).as_bytes())
        .and_then(|()| e.write_all(b"\n"));
}

/// [`stderr_line`] for data (a JSON error): written as it is.
pub fn stderr_data_line(line: &str) {
    if with_capture(|c| c.push_stderr(line)).is_some() {
        return;
    }
    let mut e = std::io::stderr().lock();
    let _ = e
        .write_all(line.as_bytes())
        .and_then(|()| e.write_all(b"\n"));
}

/// What a command run in-process by `bd mcp` wrote, and the input it reads
/// in place of stdin (the process's stdin carries the MCP protocol there).
#[derive(Debug, Default)]
pub struct Capture {
    /// Given to a command that reads stdin (`comment add ID -`, `batch`).
    pub stdin: Option<String>,
    /// How an error names that input ("stdin" on the command line).
    pub stdin_name: String,
    pub stdout: String,
    pub stderr: String,
}

impl Capture {
    fn push_stderr(&mut self, line: &str) {
        self.stderr.push_str(line);
        self.stderr.push('\n');
    }
}

thread_local! {
    static CAPTURE: std::cell::RefCell<Option<Capture>> = const { std::cell::RefCell::new(None) };
}

fn with_capture<T>(f: impl FnOnce(&mut Capture) -> T) -> Option<T> {
    CAPTURE.with(|c| c.borrow_mut().as_mut().map(f))
}

/// Runs `f` with everything this module would write to stdout and stderr
/// kept in `capture` instead, and [`read_stdin`] answering from it.
pub fn captured<T>(capture: Capture, f: impl FnOnce() -> T) -> (T, Capture) {
    struct Restore;
    impl Drop for Restore {
        fn drop(&mut self) {
            CAPTURE.with(|c| c.borrow_mut().take());
        }
    }
    CAPTURE.with(|c| *c.borrow_mut() = Some(capture));
    let guard = Restore;
    let out = f();
    let capture = CAPTURE.with(|c| c.borrow_mut().take()).unwrap_or_default();
    drop(guard);
    (out, capture)
}

/// Everything on stdin, and how errors should name it ("stdin"); a captured
/// command reads the input it was given.
pub fn read_stdin() -> std::io::Result<(String, String)> {
    match with_capture(|c| (c.stdin.take(), c.stdin_name.clone())) {
        Some((Some(text), name)) => Ok((text, name)),
        Some((None, _)) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "no input was given to read in place of stdin",
        )),
        None => Ok((
            std::io::read_to_string(std::io::stdin())?,
            "stdin".to_string(),
        )),
    }
}

/// `text` with every line after the first indented by `indent`, so a
/// multi-line comment stays under its header.
pub fn indent_continuation(text: &str, indent: &str) -> String {
    text.replace('\n', &format!("\n{indent}"))
}

/// Prints a status line to stderr unless quiet (control characters escaped).
pub fn status(quiet: bool, msg: &str) {
    if !quiet {
        stderr_line(msg);
    }
}

/// Aligns rows into columns separated by two spaces; the last column is not padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut width = vec![0; cols];
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| one_line(c).into_owned()).collect())
        .collect();
    for row in std::iter::once(header.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .chain(rows.iter().cloned())
    {
        for (i, cell) in row.iter().enumerate().take(cols) {
            width[i] = width[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(c);
                l.push_str(&" ".repeat(width[i] - c.chars().count() + 2));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.iter().map(|s| s.to_string()).collect());
    for row in &rows {
        line(row.clone());
    }
    out
}

/// The standard issue table: id, priority, type, status, assignee, title.
pub fn issue_table(issues: &[Issue]) -> String {
    let rows: Vec<Vec<String>> = issues
        .iter()
        .map(|i| {
            vec![
                i.id.clone(),
                format!("P{}", i.priority),
                i.issue_type.to_string(),
                i.status.to_string(),
                i.assignee.clone().unwrap_or_else(|| "-".into()),
                i.title.clone(),
            ]
        })
        .collect();
    table(&["ID", "PRI", "TYPE", "STATUS", "ASSIGNEE", "TITLE"], &rows)
}

/// Prints issues as JSON or as a table, with a count on stderr.
pub fn issues(ctx: &crate::context::Ctx, issues: &[Issue], empty: &str) -> Result<(), CliError> {
    if ctx.json {
        return json(&issues);
    }
    if issues.is_empty() {
        status(ctx.quiet, empty);
        return Ok(());
    }
    if ctx.quiet {
        let ids: String = issues.iter().map(|i| format!("{}\n", i.id)).collect();
        return print(&ids);
    }
    print(&issue_table(issues))
}
