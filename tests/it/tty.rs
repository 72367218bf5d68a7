//! What bd draws for a person at a terminal (progress bars, colour, tables
//! sized to the width) appears under a pseudo-terminal and never when the
//! output is captured, piped, `--json` or `NO_COLOR`.

use crate::common::{Mode, TestEnv};
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};

/// Which of the command's streams go to the pseudo-terminal.
#[derive(Clone, Copy)]
pub enum Tty {
    Stdout,
    Stderr,
}

/// What a command wrote: to the terminal, and to the other (piped) stream.
pub struct Seen {
    pub terminal: String,
    pub piped: String,
    pub code: Option<i32>,
}

/// Runs `cmd` with one stream on a fresh pseudo-terminal `cols` wide and the
/// other piped.
pub fn run_on_tty(mut cmd: Command, tty: Tty, cols: u16) -> Seen {
    let (mut master, mut slave) = (0, 0);
    let size = libc::winsize {
        ws_row: 40,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two descriptors into the given ints; the
    // name buffer and termios are optional (null).
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened and are owned here alone.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    match tty {
        Tty::Stdout => cmd.stdout(Stdio::from(slave)).stderr(Stdio::piped()),
        Tty::Stderr => cmd.stderr(Stdio::from(slave)).stdout(Stdio::piped()),
    };
    let mut child = cmd.spawn().expect("spawn bd");
    // The parent's copy of the slave went into the Command, which is
    // dropped with `cmd` below: the master reads EOF (EIO) once bd exits.
    drop(cmd);
    let reader = std::thread::spawn(move || {
        let mut file = std::fs::File::from(master);
        let mut all = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match file.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
        all
    });
    let mut piped = String::new();
    match tty {
        Tty::Stdout => child.stderr.take().unwrap().read_to_string(&mut piped),
        Tty::Stderr => child.stdout.take().unwrap().read_to_string(&mut piped),
    }
    .expect("read the piped stream");
    let status = child.wait().expect("wait for bd");
    let terminal = String::from_utf8_lossy(&reader.join().expect("reader")).into_owned();
    Seen {
        terminal,
        piped,
        code: status.code(),
    }
}

/// A beads JSONL file of `n` issues, big enough that importing it takes
/// longer than the progress bar's delay.
fn big_file(env: &TestEnv, n: usize) -> std::path::PathBuf {
    let path = env.root().join("big.jsonl");
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&format!(
            "{{\"id\":\"t-{i:05}\",\"title\":\"Issue {i}\",\"status\":\"open\",\"priority\":{},\"issue_type\":\"task\",\"created_at\":\"2026-01-01T00:00:00Z\",\"updated_at\":\"2026-01-01T00:00:00Z\",\"description\":\"{}\"}}\n",
            i % 5,
            "x".repeat(100)
        ));
    }
    std::fs::write(&path, text).unwrap();
    path
}

fn has_escape(s: &str) -> bool {
    s.contains('\u{1b}') || s.contains('\r')
}

/// A long import draws a bar with counts on a terminal's stderr, through the
/// daemon (progress frames) as in-process; piped or `--json`, nothing.
fn progress_shows_on_a_terminal_and_never_in_a_pipe(mode: Mode) {
    let env = TestEnv::new_in(mode);
    let file = big_file(&env, 8000);
    let file = file.to_str().unwrap();

    let seen = run_on_tty(env.command(&["import", "-i", file]), Tty::Stderr, 100);
    assert_eq!(seen.code, Some(0), "{}", seen.terminal);
    assert!(
        seen.terminal.contains("importing [")
            && seen.terminal.contains("/8,000")
            && seen.terminal.contains("/s"),
        "a bar with counts on the terminal: {:?}",
        seen.terminal
    );
    assert!(seen.piped.contains("8000 created"), "{}", seen.piped);
    assert!(
        !has_escape(&seen.piped),
        "stdout (piped) is plain: {:?}",
        seen.piped
    );

    // Piped stderr: the same work, no bar, no terminal control.
    let env2 = TestEnv::new_in(mode);
    let out = env2.run(&["import", "-i", file]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !has_escape(&stderr) && !stderr.contains("importing ["),
        "{stderr:?}"
    );

    // stdout on a terminal, stderr piped: the bar needs stderr's terminal.
    let env4 = TestEnv::new_in(mode);
    let seen = run_on_tty(env4.command(&["import", "-i", file]), Tty::Stdout, 100);
    assert_eq!(seen.code, Some(0));
    assert!(
        !has_escape(&seen.piped) && !seen.piped.contains("importing ["),
        "{:?}",
        seen.piped
    );

    // --json on a terminal: no bar either.
    let env3 = TestEnv::new_in(mode);
    let seen = run_on_tty(
        env3.command(&["import", "-i", file, "--json"]),
        Tty::Stderr,
        100,
    );
    assert_eq!(seen.code, Some(0));
    assert!(
        !seen.terminal.contains("importing ["),
        "{:?}",
        seen.terminal
    );
    serde_json::from_str::<serde_json::Value>(&seen.piped).expect("clean JSON on stdout");
}

/// Colour and width-fitted tables on a terminal; none of it piped, with
/// `NO_COLOR` (the width still applies), or with `--json`.
fn colour_and_layout_only_on_a_terminal(mode: Mode) {
    let env = TestEnv::new_in(mode);
    let long = "A very long title that a narrow terminal cannot show whole, so it is cut";
    let urgent = env.create(&[long, "-p", "0"]);
    env.create(&["Small", "-p", "3"]);
    // Wide characters take two columns each; a long assignee is cut too.
    let long_name = "someone-with-a-very-long-name".repeat(3);
    env.create(&[
        "漢字のとても長いタイトルが端末の幅を超えてしまう場合のテストです",
        "-a",
        &long_name,
    ]);

    let seen = run_on_tty(env.command(&["list"]), Tty::Stdout, 80);
    assert_eq!(seen.code, Some(0));
    let t = &seen.terminal;
    assert!(
        t.contains(&format!("\u{1b}[36m{urgent}\u{1b}[0m")),
        "ids coloured: {t:?}"
    );
    assert!(t.contains("\u{1b}[1;31mP0\u{1b}[0m"), "P0 bold red: {t:?}");
    assert!(t.contains("\u{1b}[32mopen\u{1b}[0m"), "open green: {t:?}");
    assert!(
        t.contains("A very long title that") && t.contains('…'),
        "title cut: {t:?}"
    );
    assert!(!t.contains("so it is cut"), "the cut part is gone: {t:?}");
    for line in t.lines() {
        use unicode_width::UnicodeWidthStr;
        let plain: String = strip_sgr(line);
        assert!(plain.trim_end().width() <= 80, "fits 80 columns: {plain:?}");
    }
    assert!(!t.contains(&long_name), "the assignee is cut: {t:?}");
    let shown = run_on_tty(env.command(&["show", &urgent]), Tty::Stdout, 60).terminal;
    assert!(
        shown.contains("\u{1b}[1;31mP0\u{1b}[0m"),
        "show colours too: {shown:?}"
    );

    // NO_COLOR: fitted, not coloured.
    let mut cmd = env.command(&["list"]);
    cmd.env("NO_COLOR", "1");
    let t = run_on_tty(cmd, Tty::Stdout, 80).terminal;
    assert!(!t.contains('\u{1b}') && t.contains('…'), "{t:?}");

    // Piped: whole titles, no escapes.
    for args in [
        vec!["list"],
        vec!["ready"],
        vec!["blocked"],
        vec!["show", &urgent],
    ] {
        let out = env.ok(&args);
        assert!(!has_escape(&out), "bd {args:?} piped: {out:?}");
    }
    assert!(env.ok(&["list"]).contains(long));

    // --json on a terminal: data, not decoration.
    let seen = run_on_tty(env.command(&["list", "--json"]), Tty::Stdout, 60);
    assert!(!seen.terminal.contains('\u{1b}'), "{:?}", seen.terminal);
    let v: serde_json::Value = serde_json::from_str(seen.terminal.trim()).expect("JSON");
    assert!(v.as_array().unwrap().iter().any(|i| i["title"] == long));
}

/// SGR sequences removed (what the terminal shows).
fn strip_sgr(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else if c != '\r' {
            out.push(c);
        }
    }
    out
}

/// `--format tsv`: a header, one line per issue, fields escaped so a tab or
/// newline in a title cannot make a column; refused together with `--json`.
#[test]
fn tsv_output_is_one_escaped_line_per_issue() {
    let env = TestEnv::new();
    let a = env.create(&["a back\\slash", "-p", "1", "-l", "x,y"]);
    let b = env.create(&["blocked one"]);
    env.ok(&["dep", "add", &b, &a]);
    let out = env.ok(&["list", "--format", "tsv", "--sort", "id"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "id\tpriority\ttype\tstatus\tassignee\tlabels\tcreated_at\tupdated_at\ttitle"
    );
    assert_eq!(lines.len(), 3, "{out:?}");
    let row: Vec<&str> = lines
        .iter()
        .find(|l| l.starts_with(&a))
        .unwrap()
        .split('\t')
        .collect();
    assert_eq!(row.len(), 9, "{row:?}");
    assert_eq!(row[1], "1");
    assert_eq!(row[5], "x,y");
    assert_eq!(row[8], "a back\\\\slash", "a backslash is doubled");
    let blocked = env.ok(&["blocked", "--format", "tsv"]);
    assert_eq!(
        blocked,
        format!("id\tpriority\tblocked_by\ttitle\n{b}\t2\t{a}\tblocked one\n")
    );
    let ready = env.ok(&["ready", "--format", "tsv"]);
    assert_eq!(ready.lines().count(), 2, "{ready}");
    let err = env.fails(&["list", "--format", "tsv", "--json"], 2);
    assert!(err.contains("--format tsv and --json"), "{err}");
}

crate::in_both_modes!(
    progress_shows_on_a_terminal_and_never_in_a_pipe,
    colour_and_layout_only_on_a_terminal
);
