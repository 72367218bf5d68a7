//! Many processes writing at once, in both modes.

use crate::common::{Mode, TestEnv, wait_clean};
use std::collections::BTreeSet;

fn eight_agents_times_fifty_creates_lose_nothing(mode: Mode) {
    agents_create_concurrently(mode, 8, 50);
}

/// `agents` processes each create `each` issues at once: every acknowledged id is
/// distinct and present, and database, op file and snapshot agree.
fn agents_create_concurrently(mode: Mode, agents: usize, each: usize) {
    let total = (agents * each) as u64;
    let env = TestEnv::new_in(mode);
    let procs: Vec<_> = (0..agents)
        .map(|p| {
            let script = format!(
                "for i in $(seq 1 {each}); do \"$0\" create \"agent {p} issue $i\" -q || exit 1; done"
            );
            crate::common::spawn_script(env.root(), &script, &[], &format!("agent{p}"))
        })
        .collect();
    let mut printed = BTreeSet::new();
    for p in procs {
        for id in wait_clean(p).lines() {
            assert!(printed.insert(id.to_string()), "duplicate id {id}");
        }
    }
    assert_eq!(printed.len() as u64, total);
    if mode == Mode::Daemon {
        assert!(env.json(&["daemon", "status"])["writes"].as_u64().unwrap() >= total);
    }
    let listed: BTreeSet<String> = env.ids(&["list", "--all"]).into_iter().collect();
    assert_eq!(
        listed, printed,
        "database holds exactly the acknowledged issues"
    );
    env.ok(&["flush"]);
    let snapshot = std::fs::read_to_string(env.beads().join("issues.jsonl")).unwrap();
    assert_eq!(
        crate::common::jsonl_ids(&snapshot),
        printed,
        "snapshot agrees"
    );
    let mut op_issues = BTreeSet::new();
    let mut seqs = Vec::new();
    for op in env.op_lines() {
        assert_eq!(op["kind"], "create");
        op_issues.insert(op["issue"].as_str().unwrap().to_string());
        seqs.push(op["seq"].as_u64().unwrap());
    }
    assert_eq!(op_issues, printed, "op file agrees");
    assert_eq!(
        seqs,
        (1..=total).collect::<Vec<u64>>(),
        "op file in seq order, no gaps or duplicates"
    );
}

fn twenty_processes_claiming_one_issue_have_one_winner(mode: Mode) {
    let env = TestEnv::new_in(mode);
    let id = env.create(&["contested"]);
    let procs: Vec<_> = (0..20)
        .map(|i| {
            let mut c = env.command(&["update", &id, "--claim"]);
            c.env("BD_ACTOR", format!("agent{i}"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped());
            c.spawn().unwrap()
        })
        .collect();
    let codes: Vec<i32> = procs
        .into_iter()
        .map(|p| p.wait_with_output().unwrap().status.code().unwrap())
        .collect();
    assert_eq!(codes.iter().filter(|c| **c == 0).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 3).count(), 19, "{codes:?}");
    let shown = &env.json(&["show", &id])[0];
    assert_eq!(shown["status"], "in_progress");
    assert!(shown["assignee"].as_str().unwrap().starts_with("agent"));
}

#[test]
fn ten_agents_times_a_hundred_creates_through_the_daemon() {
    agents_create_concurrently(Mode::Daemon, 10, 100);
}

crate::in_both_modes!(
    eight_agents_times_fifty_creates_lose_nothing,
    twenty_processes_claiming_one_issue_have_one_winner
);
