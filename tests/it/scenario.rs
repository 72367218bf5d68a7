//! The fleet scenarios (issue 16) at their small sizes, through `bd demo
//! --scenario NAME --size small --json`: the real binary starts a real
//! daemon and agent processes in a throwaway repository, runs the scenario
//! and checks the end state against its model. The checker's verdict is
//! the test's: every count that must be zero is zero.

use crate::common::TestEnv;
use serde_json::Value;

fn run(scenario: &str) -> Value {
    run_with(scenario, &[])
}

fn run_with(scenario: &str, more: &[&str]) -> Value {
    let env = TestEnv::empty();
    let mut args = vec!["demo", "--scenario", scenario, "--size", "small", "--json"];
    args.extend(more);
    let out = env.command(&args).output().expect("bd demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{scenario} failed ({:?}):\n{stdout}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&stdout).expect("json");
    let report = v["report"].clone();
    assert_eq!(report["problems"], serde_json::json!([]), "{report}");
    report
}

fn figure<'a>(report: &'a Value, name: &str) -> &'a str {
    report["figures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no figure {name:?}: {report}"))["value"]
        .as_str()
        .unwrap()
}

#[test]
fn the_surge_loses_and_duplicates_nothing_and_claims_have_one_winner() {
    let r = run("surge");
    for zero in [
        "lost writes",
        "duplicated writes",
        "claims won twice",
        "other mismatches",
    ] {
        assert_eq!(figure(&r, zero), "0", "{r}");
    }
    assert!(figure(&r, "provisioned").starts_with("3000 in"), "{r}");
    let closed: usize = figure(&r, "closed by workers").parse().unwrap();
    assert!(closed > 0, "workers closed nothing: {r}");
    assert!(
        figure(&r, "follow-ups").starts_with(&format!("{closed} in")),
        "{r}"
    );
    assert!(figure(&r, "ready calls timed").parse::<usize>().unwrap() > 0);
}

/// The mesh variant: three clones, each with its daemon, share the surge
/// through a real `nats-server -js` (the relay tests' requirement: it must
/// be on PATH), with no git sync during the run.
#[test]
fn a_surge_shared_by_three_clones_through_the_relay_converges_with_nothing_lost() {
    crate::mesh::nats_server();
    let r = run_with("surge", &["--mesh"]);
    for zero in [
        "lost writes",
        "duplicated writes",
        "claims won twice",
        "other mismatches",
        "clones in another state",
    ] {
        assert_eq!(figure(&r, zero), "0", "{r}");
    }
    assert!(r["size"].as_str().unwrap().contains("on 3 clones"), "{r}");
    for c in [
        "clones converged after the surge in",
        "clones converged after the follow-ups in",
    ] {
        assert!(figure(&r, c).ends_with(" s"), "{c}: {r}");
        assert!(!figure(&r, c).starts_with("not"), "{c}: {r}");
    }
    let closed: usize = figure(&r, "closed by workers").parse().unwrap();
    assert!(closed > 0, "workers closed nothing: {r}");
    // The clones shared the work: workers took issues made on other clones.
    let across: usize = figure(&r, "claims of another clone's issues")
        .parse()
        .unwrap();
    assert!(across > 0, "{r}");
}

/// The recursive scenario's mesh variant: two clones on a real relay; an
/// agent's fork of another agent's node is joined on by an agent of the
/// other clone; after every round the clones converge and each clone's
/// `ready` must match the checker's fold of both clones' op files.
#[test]
fn plans_rewritten_on_two_clones_keep_ready_exact_on_both() {
    crate::mesh::nats_server();
    let r = run_with("recursive", &["--mesh"]);
    assert_eq!(figure(&r, "ready answers that differ"), "0", "{r}");
    assert_eq!(figure(&r, "cycles accepted"), "0", "{r}");
    assert!(r["size"].as_str().unwrap().contains("on 2 clones"), "{r}");
    assert_eq!(
        figure(&r, "ready answers checked"),
        "14",
        "both clones, before the first round and after each of 6: {r}"
    );
    let joins = figure(&r, "joins on another clone's fork");
    let (across, all) = joins.split_once(" of ").unwrap();
    let across: usize = across.parse().unwrap();
    assert!(across > 0, "no join across clones: {r}");
    assert_eq!(
        across.to_string(),
        all,
        "every join is on a fork made elsewhere: {r}"
    );
}

#[test]
fn the_mesh_variant_is_refused_for_a_scenario_without_one() {
    let env = TestEnv::empty();
    let out = env
        .command(&[
            "demo",
            "--scenario",
            "self-healing",
            "--mesh",
            "--size",
            "small",
        ])
        .output()
        .expect("bd demo");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--mesh applies to the surge and recursive"),
        "{err}"
    );
}

#[test]
fn agents_killed_mid_saga_leave_nothing_half_done_or_twice() {
    let r = run("self-healing");
    for zero in [
        "duplicated sub-tasks",
        "half-made plans",
        "lost acknowledged writes",
        "sagas not settled",
        "other mismatches",
    ] {
        assert_eq!(figure(&r, zero), "0", "{r}");
    }
    let before: usize = figure(&r, "sagas complete before the kill")
        .parse()
        .unwrap();
    assert!((48..120).contains(&before), "killed at 40% of 120: {r}");
    let interrupted: usize = figure(&r, "interrupted mid-saga").parse().unwrap();
    let finished: usize = figure(&r, "resumed and finished").parse().unwrap();
    let compensated: usize = figure(&r, "compensated").parse().unwrap();
    assert_eq!(interrupted, finished + compensated, "{r}");
    assert!(interrupted > 0, "the kill interrupted no saga: {r}");
}

#[test]
fn plans_rewritten_while_worked_keep_ready_exact_and_refuse_every_cycle() {
    let r = run("recursive");
    assert_eq!(figure(&r, "ready answers that differ"), "0", "{r}");
    assert_eq!(figure(&r, "cycles accepted"), "0", "{r}");
    assert_eq!(
        figure(&r, "ready answers checked"),
        "7",
        "a check before the first round and after each of 6: {r}"
    );
    let rewrites: usize = figure(&r, "rewrites")
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rewrites > 20, "{r}");
    let refused = figure(&r, "cycle attempts refused");
    let (got, tried) = refused.split_once(" of ").unwrap();
    let tried: usize = tried.split(' ').next().unwrap().parse().unwrap();
    assert!(tried > 0, "no deliberate cycle tried: {r}");
    assert_eq!(
        got.parse::<usize>().unwrap(),
        tried,
        "every one refused: {r}"
    );
}

/// An interrupted run (Ctrl-C) stops its daemons and removes its directory,
/// during the set-up as well as during the run, and exits 130 (bd-1fdb: it
/// used to leave both behind).
#[test]
fn an_interrupted_scenario_leaves_no_directory_or_daemon_behind() {
    use std::io::{BufRead, BufReader};
    use std::time::{Duration, Instant};
    let env = TestEnv::empty();
    for wait_ms in [0, 1500] {
        let mut child = env
            .command(&["demo", "--scenario", "surge", "--size", "small"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("bd demo");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let first = lines.next().expect("a line").expect("stderr");
        let dir = first
            .rsplit_once(" in ")
            .map(|(_, d)| d.trim_end_matches(" ...").to_string())
            .unwrap_or_else(|| panic!("no directory in {first:?}"));
        let dir = std::path::PathBuf::from(dir);
        assert!(dir.exists(), "{first}");
        std::thread::sleep(Duration::from_millis(wait_ms));
        let killed = std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "still running");
            std::thread::sleep(Duration::from_millis(20));
        };
        let rest: Vec<String> = lines.map_while(|l| l.ok()).collect();
        assert_eq!(status.code(), Some(130), "{rest:?}");
        assert!(!dir.exists(), "{} is left behind: {rest:?}", dir.display());
    }
}
