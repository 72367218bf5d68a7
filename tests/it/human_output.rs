//! What people read: the human (non-JSON) output of every command, held by a
//! snapshot file (`tests/it/snapshots/`) that a reviewer reads in a diff.
//!
//! One session of commands runs in direct mode and again through a daemon; the
//! two transcripts must be identical (output never depends on how a request is
//! served) and equal the snapshot. What differs between runs is replaced:
//! the temp directory, the replica id, timestamps, the serving mode, pids.
//! `bd demo` is left out: its figures are timings. After an intended change:
//! `INSTA_UPDATE=always cargo test --test it human_output`, then read the diff.

use crate::common::{Mode, TestEnv};

/// The session: (what it shows, arguments). Explicit ids keep it deterministic.
const SESSION: &[(&str, &[&str])] = &[
    (
        "create",
        &[
            "create",
            "First task",
            "--id",
            "t-a1",
            "-p",
            "1",
            "-l",
            "backend",
            "-d",
            "Line one\nline two",
        ],
    ),
    (
        "create a bug",
        &["create", "Second", "--id", "t-b2", "-t", "bug"],
    ),
    (
        "create an epic",
        &["create", "An epic", "--id", "t-e3", "-t", "epic"],
    ),
    ("create a child", &["create", "Child", "--parent", "t-e3"]),
    ("dep add", &["dep", "add", "t-b2", "t-a1"]),
    ("dep tree", &["dep", "tree", "t-b2"]),
    ("dep cycles", &["dep", "cycles"]),
    ("list", &["list"]),
    ("ready", &["ready"]),
    ("blocked", &["blocked"]),
    ("search", &["search", "task"]),
    ("show", &["show", "t-a1"]),
    ("show a blocked issue", &["show", "t-b2"]),
    ("label add", &["label", "add", "t-b2", "urgent"]),
    ("label list", &["label", "list", "t-b2"]),
    ("label counts", &["label", "list"]),
    ("label remove", &["label", "remove", "t-b2", "urgent"]),
    ("comment", &["comment", "add", "t-a1", "Looks good"]),
    ("comments", &["comments", "t-a1"]),
    ("claim", &["update", "t-a1", "--claim"]),
    (
        "update",
        &["update", "t-b2", "-p", "0", "--title", "Second, renamed"],
    ),
    ("close", &["close", "t-a1", "--reason", "done"]),
    ("reopen", &["reopen", "t-a1"]),
    ("close without a reason", &["close", "t-a1"]),
    ("close an epic with open children", &["close", "t-e3"]),
    ("delete", &["delete", "t-b2"]),
    (
        "dep remove of a deleted issue's edge",
        &["dep", "remove", "t-b2", "t-a1"],
    ),
    ("list all", &["list", "--all"]),
    ("conflicts", &["conflicts"]),
    (
        "resolve without a conflict",
        &["resolve", "t-a1", "--field", "title", "--value", "x"],
    ),
    ("stats", &["stats"]),
    ("info", &["info"]),
    ("config set", &["config", "set", "custom.team", "core"]),
    ("config get", &["config", "get", "custom.team"]),
    ("config list", &["config", "list"]),
    ("flush", &["flush"]),
    ("export", &["export"]),
    ("import", &["import", "-i", "exported.jsonl"]),
    ("batch", &["batch", "-f", "batch.jsonl"]),
    ("doctor", &["doctor"]),
    ("hooks list", &["hooks", "list"]),
    ("sync --status", &["sync", "--status"]),
    ("sync", &["sync"]),
    ("an unknown issue", &["show", "t-nope"]),
    ("a bad priority", &["create", "Bad", "-p", "9"]),
    ("version", &["version"]),
];

const BATCH: &str = "{\"op\":\"create\",\"title\":\"From a batch\",\"id\":\"t-f4\"}\n\
                     {\"op\":\"update\",\"ids\":[\"$1\"],\"claim\":true}\n";

/// Runs the session and returns its normalised transcript.
fn transcript(mode: Mode) -> String {
    let env = TestEnv::new_in(mode);
    let replica = env.json(&["info"])["replica"].as_str().unwrap().to_string();
    std::fs::write(env.root().join("batch.jsonl"), BATCH).unwrap();
    let mut out = String::new();
    for (what, args) in SESSION {
        if *what == "import" {
            let exported = env.ok(&["export"]);
            std::fs::write(env.root().join("exported.jsonl"), exported).unwrap();
        }
        let o = env.run(args);
        out.push_str(&format!("# {what}\n$ bd {}\n", shell_words(args)));
        out.push_str(&String::from_utf8_lossy(&o.stdout));
        let stderr = String::from_utf8_lossy(&o.stderr);
        for line in stderr.lines() {
            out.push_str(&format!("[stderr] {line}\n"));
        }
        if o.status.code() != Some(0) {
            out.push_str(&format!("[exit {:?}]\n", o.status.code()));
        }
        out.push('\n');
    }
    normalise(&out, &env.root().display().to_string(), &replica)
}

fn shell_words(args: &[&str]) -> String {
    args.iter()
        .map(|a| {
            if a.contains([' ', '\n', ',']) {
                format!("{a:?}")
            } else {
                a.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Replaces what differs from run to run.
fn normalise(text: &str, root: &str, replica: &str) -> String {
    let text = text
        .replace(root, "<repo>")
        .replace(replica, "<replica>")
        .replace("mode: direct", "mode: <mode>")
        .replace("mode: daemon", "mode: <mode>");
    let text = comment_ids(&timestamps(&text));
    text.lines()
        .map(|l| {
            // Whether a daemon runs (and its pid) is the one fact that differs.
            if l.starts_with("ok    daemon ") {
                "ok    daemon        <running or not>"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Replaces comment ids (`c-` and 12 hex digits, random) with `<comment>`.
fn comment_ids(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("c-") {
        let hex = rest[at + 2..]
            .bytes()
            .take_while(u8::is_ascii_hexdigit)
            .count();
        let word_start = at == 0 || !rest.as_bytes()[at - 1].is_ascii_alphanumeric();
        if hex == 12 && word_start {
            out.push_str(&rest[..at]);
            out.push_str("<comment>");
        } else {
            out.push_str(&rest[..at + 2]);
        }
        rest = &rest[at + 2 + if hex == 12 && word_start { 12 } else { 0 }..];
    }
    out.push_str(rest);
    out
}

/// Replaces RFC 3339 timestamps (`2026-12-01T05:30:09.251Z`) with `<time>`.
fn timestamps(text: &str) -> String {
    let b = text.as_bytes();
    let shape = b"dddd-dd-ddTdd:dd:dd";
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let fits = b.len() - i >= shape.len()
            && shape.iter().zip(&b[i..]).all(|(s, c)| match s {
                b'd' => c.is_ascii_digit(),
                s => s == c,
            });
        if !fits {
            let ch = text[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
            continue;
        }
        i += shape.len();
        if b.get(i) == Some(&b'.') {
            i += 1;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
        }
        if b.get(i) == Some(&b'Z') {
            i += 1;
        }
        out.push_str("<time>");
    }
    out
}

#[test]
fn every_commands_human_output_is_the_same_in_both_modes_and_as_snapshotted() {
    let direct = transcript(Mode::Direct);
    let daemon = transcript(Mode::Daemon);
    assert!(
        direct == daemon,
        "the daemon's output differs from direct mode's:\n{}",
        first_difference(&direct, &daemon)
    );
    insta::assert_snapshot!("human_output", direct);
}

fn first_difference(a: &str, b: &str) -> String {
    for (n, (x, y)) in a.lines().zip(b.lines()).enumerate() {
        if x != y {
            return format!("line {}:\n  direct: {x}\n  daemon: {y}", n + 1);
        }
    }
    format!(
        "one is a prefix of the other ({} vs {} lines)",
        a.lines().count(),
        b.lines().count()
    )
}
