//! Claims with a time limit on one machine (issue 16): `bd claim --ttl`
//! lapses after that long without a write by the holder to the issue, the
//! issue is ready again with a comment naming whose claim lapsed, any write
//! by the holder (or `bd claim --renew`) renews it, and `bd stale` lists
//! claims about to lapse. Time is moved with `BD_TEST_CLOCK_AHEAD_MS` (a
//! testing build's clock runs that far ahead), except in the daemon test,
//! which waits out a 10 s limit for real.

use crate::common::{DAEMON_START, TestEnv};
use crate::sync::{Cluster, exchange, pair};
use serde_json::Value;
use std::time::{Duration, Instant};

const MIN: u64 = 60_000;

/// Runs bd with the clock `ahead` ms in the future, as `actor`.
fn at(env: &TestEnv, ahead: u64, actor: &str, args: &[&str]) -> std::process::Output {
    env.command(args)
        .env("BD_TEST_CLOCK_AHEAD_MS", ahead.to_string())
        .env("BD_ACTOR", actor)
        .output()
        .expect("bd")
}

fn ok_at(env: &TestEnv, ahead: u64, actor: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = at(env, ahead, actor, &all);
    assert!(
        out.status.success(),
        "bd {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

fn comments(env: &TestEnv, id: &str) -> Vec<(String, String)> {
    env.json(&["comments", id])
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["author"].as_str().unwrap().to_string(),
                c["text"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The whole life of a claim with a time limit, in direct mode: taken, kept
/// by working, let run out, returned to ready with a comment, taken over.
#[test]
fn a_claim_with_a_time_limit_lapses_back_to_ready_unless_its_holder_works() {
    let env = TestEnv::new();
    let job = env.create(&["Saga job"]);
    let claimed = ok_at(&env, 0, "alice", &["claim", &job, "--ttl", "10m"]);
    let issue = &claimed[0];
    assert_eq!(issue["claim_ttl"], "10m", "{claimed}");
    assert!(issue["claim_expires_at"].is_string(), "{claimed}");
    // Bob's queue does not offer alice's live claim; his claim is refused
    // and says when it would lapse.
    assert!(!ids(&ok_at(&env, 0, "bob", &["ready"])).contains(&job));
    let out = at(&env, 0, "bob", &["claim", &job]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already claimed by alice") && err.contains("lapses at"),
        "{err}"
    );

    // Alice works at minute 8 (a comment): the claim now lasts to minute 18.
    ok_at(
        &env,
        8 * MIN,
        "alice",
        &["comment", "add", &job, "step 1 done"],
    );
    let out = at(&env, 15 * MIN, "bob", &["claim", &job]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "alice worked at minute 8: her claim holds at 15"
    );
    assert!(!ids(&ok_at(&env, 15 * MIN, "bob", &["ready"])).contains(&job));
    // `bd stale` lists it as about to lapse (within 5m by default).
    let stale = ok_at(&env, 15 * MIN, "bob", &["stale"]);
    assert_eq!(ids(&stale), vec![job.clone()], "{stale}");
    let left = stale[0]["claim_lapses_in_ms"].as_i64().unwrap();
    assert!((0..=3 * MIN as i64 + 1_000).contains(&left), "{stale}");

    // Minute 19: lapsed. Before anyone writes, it is on bob's ready queue
    // (also among the unassigned: it is anyone's) and `bd stale` says it
    // lapsed.
    assert!(ids(&ok_at(&env, 19 * MIN, "bob", &["ready"])).contains(&job));
    assert!(ids(&ok_at(&env, 19 * MIN, "bob", &["ready", "--unassigned"])).contains(&job));
    assert!(!ids(&ok_at(&env, 15 * MIN, "bob", &["ready", "--unassigned"])).contains(&job));
    let stale = ok_at(&env, 19 * MIN, "bob", &["stale"]);
    assert!(
        stale[0]["claim_lapses_in_ms"].as_i64().unwrap() < 0,
        "{stale}"
    );
    let table = String::from_utf8(at(&env, 19 * MIN, "bob", &["stale"]).stdout).unwrap();
    assert!(table.contains("lapsed") && table.contains("ago"), "{table}");
    // For scripts: TSV with the same figures as --json (bd-yfor).
    let tsv =
        String::from_utf8(at(&env, 19 * MIN, "bob", &["stale", "--format", "tsv"]).stdout).unwrap();
    let lines: Vec<Vec<&str>> = tsv.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(
        lines[0],
        [
            "id",
            "priority",
            "assignee",
            "idle_ms",
            "claim_lapses_in_ms",
            "title"
        ],
        "{tsv}"
    );
    assert_eq!(lines[1][0], job, "{tsv}");
    assert_eq!(lines[1][2], "alice", "{tsv}");
    assert!(lines[1][4].parse::<i64>().unwrap() < 0, "{tsv}");
    let both = at(
        &env,
        19 * MIN,
        "bob",
        &["stale", "--format", "tsv", "--json"],
    );
    assert_eq!(both.status.code(), Some(2));

    // Alice's renewal comes too late: refused, nothing written.
    let before = env.json(&["stats"])["ops"].clone();
    let out = at(&env, 19 * MIN, "alice", &["claim", &job, "--renew"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nothing was renewed") && err.contains("bd claim"),
        "{err}"
    );
    // The write that found the lapse returned the issue to open (bd's own
    // ops, committed before the refused request); only those were written.
    let shown = env.json(&["show", &job]);
    assert_eq!(shown[0]["status"], "open", "{shown}");
    assert!(
        shown[0].get("assignee").is_none() && shown[0].get("claim_ttl").is_none(),
        "{shown}"
    );
    assert!(env.json(&["stats"])["ops"].as_u64() > before.as_u64());
    let c = comments(&env, &job);
    let lapse = c.iter().find(|(a, _)| a == "bd").expect("a comment by bd");
    assert!(
        lapse.1.contains("alice's claim lapsed") && lapse.1.contains("10m"),
        "{c:?}"
    );
    assert_eq!(c.iter().filter(|(a, _)| a == "bd").count(), 1, "{c:?}");

    // Bob takes it; its expiry is his now (no limit: none was given).
    let took = ok_at(&env, 19 * MIN, "bob", &["claim", &job]);
    assert_eq!(took[0]["assignee"], "bob");
    assert!(took[0].get("claim_expires_at").is_none(), "{took}");
    // A claim without a limit never lapses.
    assert!(!ids(&ok_at(&env, 3 * 24 * 60 * MIN, "carol", &["ready"])).contains(&job));
}

/// The holder renews by working: any write to the issue, or `bd claim
/// --renew`; claiming one's own issue again renews too, and --ttl changes
/// the limit. A close, an unclaim or an unassignment ends the limit.
#[test]
fn renewal_by_any_write_of_the_holder_and_the_end_of_a_limit() {
    let env = TestEnv::new();
    let a = env.create(&["A"]);
    let b = env.create(&["B"]);
    ok_at(&env, 0, "alice", &["claim", &a, &b, "--ttl", "10m"]);
    // An update by alice at minute 7 renews A (not B).
    ok_at(&env, 7 * MIN, "alice", &["update", &a, "--priority", "1"]);
    let ready = ids(&ok_at(&env, 12 * MIN, "bob", &["ready"]));
    assert!(ready.contains(&b) && !ready.contains(&a), "{ready:?}");
    // A write by someone else is no renewal: bob comments on A at minute 16,
    // A lapses at 17 all the same.
    ok_at(&env, 16 * MIN, "bob", &["comment", "add", &a, "any news?"]);
    // `--renew` at minute 16.5 with a new limit of 1h.
    let r = ok_at(
        &env,
        16 * MIN + MIN / 2,
        "alice",
        &["claim", &a, "--renew", "--ttl", "1h"],
    );
    assert_eq!(r[0]["claim_ttl"], "1h", "{r}");
    assert!(!ids(&ok_at(&env, 70 * MIN, "bob", &["ready"])).contains(&a));
    // Claiming her own issue again renews with the limit it had.
    ok_at(&env, 70 * MIN, "alice", &["claim", &a]);
    let shown = ok_at(&env, 70 * MIN, "alice", &["show", &a]);
    assert_eq!(shown[0]["claim_ttl"], "1h", "{shown}");
    assert!(!ids(&ok_at(&env, 120 * MIN, "bob", &["ready"])).contains(&a));
    assert!(ids(&ok_at(&env, 131 * MIN, "bob", &["ready"])).contains(&a));
    // --renew by someone who does not hold it: refused, nothing written.
    let before = env.fingerprint();
    let out = at(&env, 70 * MIN, "bob", &["claim", &a, "--renew"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("alice holds it"));
    assert_eq!(
        env.fingerprint(),
        before,
        "a refused renewal changes nothing"
    );

    // Closing ends the limit (a reopened issue has no claim to lapse).
    let c = env.create(&["C"]);
    ok_at(&env, 0, "alice", &["claim", &c, "--ttl", "10m"]);
    ok_at(&env, 0, "alice", &["close", &c]);
    let shown = env.json(&["show", &c]);
    assert!(shown[0].get("claim_ttl").is_none() && shown[0].get("claim_expires_at").is_none());
    // Unclaim ends it too, and so does handing the issue to someone else.
    let d = env.create(&["D"]);
    ok_at(&env, 0, "alice", &["claim", &d, "--ttl", "10m"]);
    ok_at(&env, 0, "alice", &["unclaim", &d]);
    assert!(env.json(&["show", &d])[0].get("claim_ttl").is_none());
    ok_at(&env, 0, "alice", &["claim", &d, "--ttl", "10m"]);
    ok_at(&env, 0, "lead", &["update", &d, "--assignee", "carol"]);
    let shown = env.json(&["show", &d]);
    assert!(shown[0].get("claim_ttl").is_none(), "{shown}");
    assert!(!ids(&ok_at(&env, 60 * MIN, "bob", &["ready"])).contains(&d));
}

/// Input: limits outside 10s..24h, --renew without anything to renew, and
/// the tracker's default limit (`claim.ttl`).
#[test]
fn claim_time_limits_are_checked_and_the_tracker_can_set_a_default() {
    let env = TestEnv::new();
    let a = env.create(&["A"]);
    let before = env.fingerprint();
    for bad in ["5s", "25h", "soon"] {
        let err = env.fails(&["claim", &a, "--ttl", bad], 2);
        assert!(
            err.contains("10s to 24h") || err.contains("not a duration"),
            "{err}"
        );
    }
    let err = env.fails(&["claim", &a, "--renew"], 3);
    assert!(err.contains("nobody holds it"), "{err}");
    // bd's own name is reserved: nobody forges its lapse comments.
    let err = env.fails(&["comment", "add", &a, "claim lapsed", "--actor", "bd"], 2);
    assert!(err.contains("bd's own"), "{err}");
    let err = env.fails(&["config", "set", "claim.ttl", "2s"], 2);
    assert!(err.contains("10s to 24h"), "{err}");
    assert_eq!(env.fingerprint(), before);
    env.ok(&["config", "set", "claim.ttl", "20m"]);
    let c = env.json(&["claim", &a]);
    assert_eq!(c[0]["claim_ttl"], "20m", "{c}");
    let human = env.ok(&["show", &a]);
    assert!(
        human.contains("Claim: lapses at") && human.contains("20m"),
        "{human}"
    );
    // --ttl wins over the default.
    let b = env.create(&["B"]);
    let c = env.json(&["update", &b, "--claim", "--ttl", "1h"]);
    assert_eq!(c[0]["claim_ttl"], "1h", "{c}");
    // `none` takes the default away again.
    env.ok(&["config", "set", "claim.ttl", "none"]);
    let d = env.create(&["D"]);
    let c = env.json(&["claim", &d]);
    assert!(c[0].get("claim_ttl").is_none(), "{c}");
}

/// The daemon returns a lapsed claim to ready when it lapses, with no
/// write to trigger it (a real 10 s limit, waited out).
#[test]
fn the_daemon_returns_a_lapsed_claim_to_ready_by_itself() {
    let env = TestEnv::empty();
    env.ok(&["init", "--prefix", "t"]);
    env.ok(DAEMON_START);
    let job = env.create(&["Job"]);
    env.ok(&["claim", &job, "--ttl", "10s", "--actor", "alice"]);
    let start = Instant::now();
    let status = loop {
        let shown = env.json(&["show", &job]);
        if shown[0]["status"] != "in_progress" || start.elapsed() > Duration::from_secs(40) {
            break shown;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(
        status[0]["status"], "open",
        "returned by the daemon: {status}"
    );
    assert!(status[0].get("assignee").is_none(), "{status}");
    let c = comments(&env, &job);
    assert!(
        c.iter()
            .any(|(a, t)| a == "bd" && t.contains("alice's claim lapsed")),
        "{c:?}"
    );
    assert!(
        start.elapsed() >= Duration::from_secs(8),
        "not before its time"
    );
    assert_eq!(env.json(&["info"])["mode"], "daemon");
}

/// A claim made on another clone is that clone's to return to open: here
/// it is takeable once lapsed, and the taker's comment says whose lapsed.
/// The clone that made it returns it by itself; when that return and the
/// takeover race (neither saw the other), the takeover stands on both
/// clones: bd's own return yields to an agent's write, with no conflict,
/// and nobody else can claim the issue (a review found it reopened, with
/// an assignee conflict, and claimable by a third agent).
#[test]
fn a_takeover_on_another_clone_stands_against_the_home_clones_return_of_the_lapsed_claim() {
    let cluster = Cluster::new();
    let (mut a, mut b, id) = pair(&cluster);
    a.ok(&["claim", &id, "--ttl", "10m"]);
    exchange(&a, &b);
    assert_eq!(b.json(&["show", &id])[0]["assignee"], "alice");
    b.env
        .push(("BD_TEST_CLOCK_AHEAD_MS".into(), (11 * MIN).to_string()));
    // A write on b does not return a's claim (not b's to return) ...
    b.create(&["unrelated"]);
    assert_eq!(b.json(&["show", &id])[0]["status"], "in_progress");
    // ... but b's queue offers it and b's claim takes it over, saying so.
    assert!(ids(&b.json(&["ready"])).contains(&id));
    let took = b.json(&["claim", &id]);
    assert_eq!(took[0]["assignee"], "bob", "{took}");
    let c = b.json(&["comments", &id]);
    let texts: Vec<&str> = c
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    assert!(
        texts
            .iter()
            .any(|t| t.contains("alice's claim lapsed") && t.contains("bob took it over")),
        "{texts:?}"
    );
    // Meanwhile a (its clock 11 minutes on) returns its own lapsed claim.
    a.env
        .push(("BD_TEST_CLOCK_AHEAD_MS".into(), (11 * MIN).to_string()));
    a.create(&["a's own write"]);
    assert_eq!(a.json(&["show", &id])[0]["status"], "open");
    exchange(&a, &b);
    assert_eq!(a.state_hash(), b.state_hash());
    for clone in [&a, &b] {
        let shown = clone.json(&["show", &id]);
        assert_eq!(shown[0]["assignee"], "bob", "{shown}");
        assert_eq!(shown[0]["status"], "in_progress", "{shown}");
        let conflicts = clone.json(&["conflicts"]);
        assert!(
            conflicts
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["issue_id"] != id.as_str()),
            "{conflicts}"
        );
    }
    let out = b.bd(&["claim", &id, "--actor", "carol"]);
    assert_eq!(out.status.code(), Some(3), "bob holds it: {out:?}");
}

/// A database from before `held` (schema v8: the column and the ready
/// index's new condition missing, as an earlier build of this version left
/// it) is brought up to date on open: an epic with an open child is held
/// (off the ready queue) at once, and one whose children all closed is not.
#[test]
fn a_database_from_before_held_epics_is_upgraded_and_its_epics_are_held() {
    let env = TestEnv::new();
    let busy = env.create(&["Busy epic", "-t", "epic"]);
    let child = env.create(&["Open child", "--parent", &busy]);
    let done = env.create(&["Done epic", "-t", "epic"]);
    let finished = env.create(&["Closed child", "--parent", &done]);
    env.ok(&["close", &finished]);
    let conn = rusqlite::Connection::open(env.beads().join("beads.db")).unwrap();
    conn.execute_batch(
        "DROP INDEX issues_ready;
         CREATE INDEX issues_ready ON issues(priority, created_ms, id)
             WHERE blocked = 0 AND status IN ('open', 'in_progress');
         ALTER TABLE issues DROP COLUMN held;
         PRAGMA user_version = 8;",
    )
    .unwrap();
    drop(conn);
    let ready = ids(&env.json(&["ready", "-n", "0"]));
    assert!(ready.contains(&child) && ready.contains(&done), "{ready:?}");
    assert!(
        !ready.contains(&busy),
        "an epic with an open child is held: {ready:?}"
    );
    assert!(env.ok(&["info"]).contains("schema v9"));
}

/// An exported claim with a limit, imported into another tracker, keeps a
/// limit that runs from the import (it used to keep `claim_ttl` and never
/// lapse: the holder had no op there to count from).
#[test]
fn an_imported_claim_with_a_limit_lapses_from_the_import() {
    let env = TestEnv::new();
    let job = env.create(&["Job"]);
    ok_at(&env, 0, "alice", &["claim", &job, "--ttl", "10m"]);
    let file = env.root().join("export.jsonl");
    env.ok(&["export", "-o", file.to_str().unwrap()]);
    let other = TestEnv::new();
    other.ok(&["import", "-i", file.to_str().unwrap()]);
    let shown = other.json(&["show", &job]);
    assert_eq!(shown[0]["claim_ttl"], "10m", "{shown}");
    assert!(shown[0]["claim_expires_at"].is_string(), "{shown}");
    assert!(!ids(&ok_at(&other, 5 * MIN, "bob", &["ready"])).contains(&job));
    assert!(ids(&ok_at(&other, 11 * MIN, "bob", &["ready"])).contains(&job));
}

/// Before its lapse is written (no write since, no daemon), `bd prime` no
/// longer lists a lapsed claim among what its old holder holds: it says the
/// claim lapsed (bd-b8rj: it listed it as held).
#[test]
fn prime_tells_the_old_holder_a_claim_lapsed_before_its_lapse_is_written() {
    let env = TestEnv::new();
    let id = env.create(&["time-boxed work"]);
    let kept = env.create(&["still mine"]);
    ok_at(&env, 0, "alice", &["claim", &id, "--ttl", "10m"]);
    ok_at(&env, 0, "alice", &["claim", &kept]);
    let now = ok_at(&env, 0, "alice", &["prime"]);
    assert_eq!(now["held"].as_array().unwrap().len(), 2, "{now}");
    let later = ok_at(&env, 11 * MIN, "alice", &["prime"]);
    let held = later["held"].to_string();
    assert!(held.contains(&kept) && !held.contains(&id), "{later}");
    assert!(later["lapsed"].to_string().contains(&id), "{later}");
    let text =
        String::from_utf8_lossy(&at(&env, 11 * MIN, "alice", &["prime"]).stdout).into_owned();
    assert!(
        text.contains(&format!("your claim lapsed on 1: {id}")),
        "{text}"
    );
    assert!(text.contains(&format!("you hold 1: {kept}")), "{text}");
}
