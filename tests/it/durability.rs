//! The durability order (issue 12): a commit is durable before the op file
//! holds its ops, and a crash at any step between leaves a state that the next
//! command repairs, losing no acknowledged write, applying none twice, and
//! reusing no sequence number that a file ever showed.
//!
//! Each test crashes bd at one step of the engine (`BD_FAULT` names an abort
//! point compiled into testing builds only: `after-commit`, `after-sync`,
//! `after-append`), in direct mode and in a daemon.

use crate::common::{Mode, TestEnv};
use serde_json::Value;
use std::collections::BTreeSet;
use std::process::Output;

const POINTS: [&str; 3] = ["after-commit", "after-sync", "after-append"];

/// Every op id in the database.
fn db_op_ids(env: &TestEnv) -> BTreeSet<String> {
    let conn = rusqlite::Connection::open(env.beads().join("beads.db")).unwrap();
    let mut stmt = conn.prepare("SELECT op_id FROM ops").unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The op file's sequence numbers and op ids, in file order.
fn file_ops(env: &TestEnv) -> (Vec<u64>, Vec<String>) {
    let lines = env.op_lines();
    (
        lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect(),
        lines
            .iter()
            .map(|l| l["op_id"].as_str().unwrap().to_string())
            .collect(),
    )
}

fn titles(env: &TestEnv) -> Vec<String> {
    let mut t: Vec<String> = env
        .json(&["list", "--all", "-n", "0"])
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["title"].as_str().unwrap().to_string())
        .collect();
    t.sort();
    t
}

/// A tracker with one issue ("before", seq 1) whose writes crash at `point`:
/// in direct mode each command is armed as it runs (see [`armed`]); a daemon
/// is started armed here.
fn tracker(mode: Mode, point: &str) -> TestEnv {
    let env = TestEnv::new();
    env.create(&["before"]);
    if mode == Mode::Daemon {
        let out = env
            .command(crate::common::DAEMON_START)
            .env("BD_FAULT", point)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(env.json(&["info"])["mode"], "daemon");
    }
    env
}

/// Runs `bd create victim --json`, armed to crash at `point` in direct mode.
fn armed(env: &TestEnv, mode: Mode, point: &str) -> Output {
    let mut c = env.command(&["create", "victim", "--json"]);
    if mode == Mode::Direct {
        c.env("BD_FAULT", point);
    }
    c.output().unwrap()
}

/// The state every crash must leave once the next command ran: the write the
/// crash interrupted is there exactly once (a process crash keeps what the
/// kernel holds), and the op file equals the database, one line per op, with
/// contiguous sequence numbers that go on without reuse.
fn repaired(env: &TestEnv) {
    assert_eq!(
        titles(env),
        ["before", "victim"],
        "no write lost or doubled"
    );
    env.create(&["after"]);
    let (seqs, ids) = file_ops(env);
    assert_eq!(
        seqs,
        [1, 2, 3],
        "one line per op, no sequence number reused"
    );
    assert_eq!(
        ids.iter().cloned().collect::<BTreeSet<_>>(),
        db_op_ids(env),
        "the op file holds exactly the database's ops"
    );
    assert_eq!(env.json(&["doctor"])["errors"], 0);
}

fn a_direct_write_crashing_at_each_step_is_repaired_by_the_next_command(point: &str) {
    let env = tracker(Mode::Direct, point);
    let out = armed(&env, Mode::Direct, point);
    assert!(!out.status.success(), "the process crashed at {point}");
    let (seqs, _) = file_ops(&env);
    let appended = point == "after-append";
    assert_eq!(
        seqs.len(),
        if appended { 2 } else { 1 },
        "the op file holds the crashed write only once it was durable and appended ({point})"
    );
    repaired(&env);
}

#[test]
fn a_direct_write_crashing_after_commit_is_repaired() {
    a_direct_write_crashing_at_each_step_is_repaired_by_the_next_command(POINTS[0]);
}

#[test]
fn a_direct_write_crashing_after_sync_is_repaired() {
    a_direct_write_crashing_at_each_step_is_repaired_by_the_next_command(POINTS[1]);
}

#[test]
fn a_direct_write_crashing_after_append_is_repaired() {
    a_direct_write_crashing_at_each_step_is_repaired_by_the_next_command(POINTS[2]);
}

/// A daemon that crashes at each step: the command (which had sent its write
/// with a request id) learns the outcome from the record instead of applying
/// it again, and answers success; nothing is doubled or lost.
#[test]
fn a_daemon_crashing_at_each_step_loses_and_doubles_nothing() {
    for point in POINTS {
        let env = tracker(Mode::Daemon, point);
        let out = armed(&env, Mode::Daemon, point);
        assert!(
            out.status.success(),
            "{point}: the write was committed before the crash, so the command reports it: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(answer["title"], "victim");
        assert!(
            crate::common::daemon_pid(&env).is_none() || env.json(&["info"])["mode"] == "direct",
            "{point}: the daemon is gone"
        );
        repaired(&env);
    }
}

/// The reason for the order: a machine that loses power after a commit but
/// before its fdatasync loses the commit's log frames. Nobody was told of the
/// write, and no op file may hold it: had the file been appended first, git
/// would carry an op to every other clone that this clone no longer has, and
/// its next write would reuse the sequence number. Simulated by crashing after
/// the commit and removing the log (the only place the commit's frames are
/// until a checkpoint, and the one a power loss takes).
#[test]
fn a_commit_lost_before_its_sync_leaves_no_trace_in_the_op_file() {
    let env = tracker(Mode::Direct, "after-commit");
    let out = armed(&env, Mode::Direct, "after-commit");
    assert!(!out.status.success(), "crashed after the commit");
    let (_, before_ids) = file_ops(&env);
    assert_eq!(
        before_ids.len(),
        1,
        "the file holds nothing of the unsynced write"
    );
    for ext in ["-wal", "-shm"] {
        let mut p = env.beads().join("beads.db").into_os_string();
        p.push(ext);
        let _ = std::fs::remove_file(p);
    }
    assert_eq!(titles(&env), ["before"], "the unsynced write is gone");
    env.create(&["after"]);
    let (seqs, ids) = file_ops(&env);
    assert_eq!(
        seqs,
        [1, 2],
        "the lost write's number was never shown, so it is free"
    );
    assert_eq!(
        ids.iter().cloned().collect::<BTreeSet<_>>(),
        db_op_ids(&env),
        "the op file holds exactly the database's ops"
    );
    assert_eq!(env.json(&["doctor"])["errors"], 0);
}
