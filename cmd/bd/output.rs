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

/// Invisible characters that change how the text around them shows:
/// bidirectional overrides and isolates (a title could read backwards),
/// zero-width spaces and marks, word joiners, the byte-order mark, and the
/// line and paragraph separators (which some readers split lines at). The
/// zero-width joiners U+200C and U+200D stay: emoji and several scripts need
/// them.
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{061C}' | '\u{180E}' | '\u{200B}' | '\u{200E}' | '\u{200F}'
        | '\u{202A}'..='\u{202E}' | '\u{2028}' | '\u{2029}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

fn escape_controls(text: &str, line: bool) -> std::borrow::Cow<'_, str> {
    let unsafe_char =
        |c: char| (c.is_control() && (line || (c != '\n' && c != '\t'))) || invisible(c);
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

/// How stdout is decorated for a person: colour, and the terminal's width
/// that tables are fitted to. Plain (no colour, no width) unless stdout is a
/// terminal; no colour with `NO_COLOR` set (to anything but "") or
/// `TERM=dumb`. Output captured for `bd mcp` is plain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Look {
    pub colour: bool,
    pub width: Option<usize>,
}

impl Look {
    const PLAIN: Look = Look {
        colour: false,
        width: None,
    };

    /// `text` in the SGR colour `code` (e.g. "31" red, "1" bold), or as it is.
    pub fn paint(&self, text: &str, code: Option<&str>) -> String {
        match code {
            Some(c) if self.colour && !text.is_empty() => format!("\x1b[{c}m{text}\x1b[0m"),
            _ => text.to_string(),
        }
    }
}

/// This process's [`Look`] (decided once).
pub fn look() -> Look {
    use std::io::IsTerminal;
    static LOOK: std::sync::OnceLock<Look> = std::sync::OnceLock::new();
    if with_capture(|_| ()).is_some() {
        return Look::PLAIN;
    }
    *LOOK.get_or_init(|| {
        if !std::io::stdout().is_terminal() {
            return Look::PLAIN;
        }
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let dumb = var("TERM").is_some_and(|t| t == "dumb");
        Look {
            colour: var("NO_COLOR").is_none() && !dumb,
            width: terminal_width(),
        }
    })
}

/// The width of the terminal on stdout, in columns.
fn terminal_width() -> Option<usize> {
    // SAFETY: TIOCGWINSZ fills the winsize it is given; a zeroed one is valid.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) };
    (rc == 0 && size.ws_col > 0).then_some(size.ws_col as usize)
}

/// The colour of a priority: P0 bold red, P1 red, P3 and P4 dim.
pub fn priority_colour(p: i64) -> Option<&'static str> {
    match p {
        0 => Some("1;31"),
        1 => Some("31"),
        3 | 4 => Some("2"),
        _ => None,
    }
}

/// The colour of a status: open green, in progress yellow, blocked red,
/// closed and deferred dim.
pub fn status_colour(s: &str) -> Option<&'static str> {
    match s {
        "open" => Some("32"),
        "in_progress" => Some("33"),
        "blocked" => Some("31"),
        "closed" | "deferred" => Some("2"),
        _ => None,
    }
}

/// The colour of issue ids.
pub const ID_COLOUR: Option<&str> = Some("36");

/// A table, possibly coloured: written as it is by [`print_table`] (its
/// cells were escaped when it was built).
pub struct Table(String);

/// Prints a [`Table`]; a closed pipe ends the command quietly.
pub fn print_table(t: &Table) -> Result<(), CliError> {
    print_data(&t.0)
}

/// Aligns rows into columns separated by two spaces; the last column is not
/// padded, and on a terminal it is cut to fit the width (long titles end in …).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> Table {
    table_coloured(header, rows, |_, _| None)
}

/// [`table`] with each cell's colour chosen by `colour(column, text)`.
pub fn table_coloured(
    header: &[&str],
    rows: &[Vec<String>],
    colour: impl Fn(usize, &str) -> Option<&'static str>,
) -> Table {
    use unicode_width::UnicodeWidthStr;
    let look = look();
    let cols = header.len();
    let mut rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| one_line(c).into_owned()).collect())
        .collect();
    if let Some(w) = look.width {
        // On a terminal no column but the first and the last is wider than a
        // quarter of it, or 24 (a long assignee is cut); the last gets the rest.
        let max = MAX_COLUMN.min(w / 4).max(8);
        for row in &mut rows {
            // The first column (the id) is never cut: it is typed back.
            for cell in row.iter_mut().take(cols.saturating_sub(1)).skip(1) {
                *cell = cut(cell, max);
            }
        }
    }
    let mut width = vec![0; cols];
    for row in std::iter::once(header.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .chain(rows.iter().cloned())
    {
        for (i, cell) in row.iter().enumerate().take(cols) {
            width[i] = width[i].max(cell.width());
        }
    }
    // What the last column may take: the rest of the terminal's width (never
    // under 10 columns: a very narrow terminal wraps instead).
    let last_room = look.width.map(|w| {
        let used: usize = width
            .iter()
            .take(cols.saturating_sub(1))
            .map(|w| w + 2)
            .sum();
        w.saturating_sub(used).max(10)
    });
    let mut out = String::new();
    let mut line = |cells: &[String], header: bool| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            let last = i + 1 == cells.len();
            let text = match last_room {
                Some(room) if last => cut(c, room),
                _ => c.clone(),
            };
            let code = if header { Some("1") } else { colour(i, c) };
            l.push_str(&look.paint(&text, code));
            if !last {
                l.push_str(&" ".repeat(width[i] - c.width() + 2));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(
        &header.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        true,
    );
    for row in &rows {
        line(row, false);
    }
    Table(out)
}

/// The widest a column other than the last gets on a wide terminal.
const MAX_COLUMN: usize = 24;

/// `text` cut to `room` terminal columns, ending in `…` when cut.
fn cut(text: &str, room: usize) -> String {
    use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};
    if text.width() <= room {
        return text.to_string();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in text.chars() {
        let w = c.width().unwrap_or(0);
        if used + w > room.saturating_sub(1) {
            break;
        }
        used += w;
        out.push(c);
    }
    out.push('…');
    out
}

/// The colour of an issue table's cells: ids, priorities, statuses.
fn issue_colour(col: usize, text: &str) -> Option<&'static str> {
    match col {
        0 => ID_COLOUR,
        1 => text
            .strip_prefix('P')
            .and_then(|n| n.parse().ok())
            .and_then(priority_colour),
        3 => status_colour(text),
        _ => None,
    }
}

/// The standard issue table: id, priority, type, status, assignee, title.
pub fn issue_table(issues: &[Issue]) -> Table {
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
    table_coloured(
        &["ID", "PRI", "TYPE", "STATUS", "ASSIGNEE", "TITLE"],
        &rows,
        issue_colour,
    )
}

/// How a listing is printed when not `--json`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns for people (coloured and fitted on a terminal)
    #[default]
    Table,
    /// Tab-separated values for scripts: a header line, then one line per
    /// row; backslashes doubled, control characters (tabs, newlines) as \xNN
    Tsv,
}

/// One TSV field: a backslash doubled, control characters escaped.
pub fn tsv_field(text: &str) -> String {
    one_line(&text.replace('\\', "\\\\")).into_owned()
}

/// Rows as TSV: a header line, then one line per row.
pub fn tsv(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = header.join("\t");
    out.push('\n');
    for r in rows {
        let fields: Vec<String> = r.iter().map(|f| tsv_field(f)).collect();
        out.push_str(&fields.join("\t"));
        out.push('\n');
    }
    out
}

/// Checks a `--format` against `--json`: both choose the output.
pub fn format_of(ctx: &crate::context::Ctx, format: Option<Format>) -> Result<Format, CliError> {
    match format {
        Some(Format::Tsv) if ctx.json => Err(CliError::usage(
            "--format tsv and --json both choose the output",
            "give one of them",
        )),
        f => Ok(f.unwrap_or_default()),
    }
}

/// Prints issues as JSON, TSV or a table.
pub fn issues(
    ctx: &crate::context::Ctx,
    issues: &[Issue],
    empty: &str,
    format: Option<Format>,
) -> Result<(), CliError> {
    let format = format_of(ctx, format)?;
    if ctx.json {
        return json(&issues);
    }
    if format == Format::Tsv {
        let rows: Vec<Vec<String>> = issues
            .iter()
            .map(|i| {
                vec![
                    i.id.clone(),
                    i.priority.to_string(),
                    i.issue_type.to_string(),
                    i.status.to_string(),
                    i.assignee.clone().unwrap_or_default(),
                    i.labels.join(","),
                    i.created_at.clone(),
                    i.updated_at.clone(),
                    i.title.clone(),
                ]
            })
            .collect();
        let header = [
            "id",
            "priority",
            "type",
            "status",
            "assignee",
            "labels",
            "created_at",
            "updated_at",
            "title",
        ];
        return print_data(&tsv(&header, &rows));
    }
    if issues.is_empty() {
        status(ctx.quiet, empty);
        return Ok(());
    }
    if ctx.quiet {
        let ids: String = issues.iter().map(|i| format!("{}\n", i.id)).collect();
        return print(&ids);
    }
    print_table(&issue_table(issues))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutting_counts_terminal_columns() {
        assert_eq!(cut("漢字漢字", 8), "漢字漢字");
        assert_eq!(cut("漢字漢字", 7), "漢字漢…");
        assert_eq!(cut("abcdef", 4), "abc…");
    }

    #[test]
    fn invisible_characters_that_reorder_text_are_shown_escaped() {
        assert_eq!(one_line("evil\u{202E}txt.exe"), "evil\\u{202e}txt.exe");
        assert_eq!(
            terminal_safe("a\u{2028}b\u{200B}c"),
            "a\\u{2028}b\\u{200b}c"
        );
        // Joiners stay: emoji sequences need them.
        assert_eq!(one_line("👨\u{200D}👩"), "👨\u{200D}👩");
    }

    #[test]
    fn a_tsv_field_cannot_make_a_column_or_a_row() {
        assert_eq!(tsv_field("a\tb\nc\\d"), "a\\x09b\\x0ac\\\\d");
        assert_eq!(tsv(&["h"], &[vec!["x\ty".into()]]), "h\nx\\x09y\n");
    }
}
