//! The own op file mirrors the database exactly: each op once, in seq order.

use crate::common::{Mode, TestEnv, spawn_script, wait_clean};
use std::collections::BTreeSet;

/// Checks the own op file holds exactly the database's ops, once each, in seq
/// order from 1.
fn assert_exact_mirror(env: &TestEnv, context: &str) {
    let ops = env.json(&["info"])["snapshot"]["ops"].as_u64().unwrap();
    let lines = env.op_lines();
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    let ids: BTreeSet<&str> = lines.iter().map(|l| l["op_id"].as_str().unwrap()).collect();
    assert_eq!(
        ids.len(),
        lines.len(),
        "{context}: an op repeated: {seqs:?}"
    );
    assert_eq!(
        seqs,
        (1..=ops).collect::<Vec<u64>>(),
        "{context}: the op file is the database's ops in seq order"
    );
}

/// Regression (issue 10, item 2): with daemon and `--no-daemon` writers at
/// once, the daemon's remembered "last seq in the file" fell behind what it had
/// appended (ops committed by a direct writer between its reading the max seq
/// and reading the rows), and its next append wrote those ops again.
#[test]
fn op_file_holds_each_op_once_with_daemon_and_direct_writers() {
    let env = TestEnv::new_in(Mode::Daemon);
    let each = 40;
    let procs: Vec<_> = (0..6)
        .map(|p| {
            let flag = if p % 2 == 0 { "--no-daemon" } else { "" };
            let script = format!(
                "for i in $(seq 1 {each}); do \"$0\" create \"w{p} $i\" -q {flag} >/dev/null || exit 1; done"
            );
            spawn_script(env.root(), &script, &[], &format!("w{p}"))
        })
        .collect();
    for p in procs {
        wait_clean(p);
    }
    assert_eq!(env.ids(&["list", "-n", "0"]).len(), 6 * each);
    // Read the file as the writers left it: no verifying flush has run.
    assert_exact_mirror(&env, "after mixed writers");
}

fn append_copy_of_line(env: &TestEnv, n: usize) {
    let dir = env.beads().join("ops");
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let text = std::fs::read_to_string(&file).unwrap();
    let line = text.lines().nth(n).unwrap().to_string();
    std::fs::write(&file, format!("{text}{line}\n")).unwrap();
}

/// Regression (issue 10, item 2): a repeated line stayed for good: `flush` and
/// `rebuild` kept it and `doctor` said nothing.
fn repeated_op_lines_are_found_by_doctor_and_removed(mode: Mode) {
    let env = TestEnv::new_in(mode);
    for t in ["a", "b", "c"] {
        env.create(&[t]);
    }
    env.ok(&["flush"]);
    append_copy_of_line(&env, 1);
    let out = env.run(&["doctor", "--json"]);
    assert_eq!(out.status.code(), Some(1), "doctor fails on a repeated op");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let replica = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "replica")
        .unwrap();
    assert_eq!(replica["level"], "error", "{replica}");
    assert!(
        replica["message"].as_str().unwrap().contains("1 repeated"),
        "{replica}"
    );
    assert_eq!(replica["lines"][0]["line"], 4, "{replica}");

    env.ok(&["flush"]);
    assert_exact_mirror(&env, "after flush");

    append_copy_of_line(&env, 0);
    let fixed = env.json(&["doctor", "--fix"]);
    let replica = fixed["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "replica")
        .unwrap()
        .clone();
    assert_eq!(replica["level"], "ok", "{replica}");
    assert!(replica["fixed"].as_str().unwrap().contains("rewrote"));
    assert_exact_mirror(&env, "after doctor --fix");

    if mode == Mode::Direct {
        // (rebuild refuses while a daemon has the database open)
        append_copy_of_line(&env, 2);
        env.ok(&["rebuild"]);
        assert_exact_mirror(&env, "after rebuild");
    }
}

crate::in_both_modes!(repeated_op_lines_are_found_by_doctor_and_removed);
