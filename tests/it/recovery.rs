//! Recovery that recovers: a damaged database is rebuilt from the op files,
//! with or without a daemon, and every hint names the command that works.

use crate::common::{Mode, TestEnv, spawn_script, wait_clean};
use std::collections::BTreeSet;

fn titles(env: &TestEnv) -> BTreeSet<String> {
    env.json(&["list", "--all", "-n", "0"])
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["title"].as_str().unwrap().to_string())
        .collect()
}

/// Regression (issue 10, item 7): with a truncated database the hint said to
/// re-import the snapshot (which failed), and `rebuild` and `rebuild --force`
/// both refused because the database was corrupt.
#[test]
fn a_truncated_database_is_rebuilt_keeping_the_replica_id() {
    let env = TestEnv::new();
    for t in ["one", "two", "three"] {
        env.create(&[t]);
    }
    let replica = env.json(&["info"])["replica"].clone();
    let db = env.beads().join("beads.db");
    let len = std::fs::metadata(&db).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    f.set_len(len / 3).unwrap();
    drop(f);
    let err = env.fails(&["list"], 1);
    assert!(err.contains("corrupt"), "{err}");
    assert!(
        err.contains("bd rebuild"),
        "the hint names the command that works: {err}"
    );
    let doctor = env.run(&["doctor"]);
    assert!(String::from_utf8_lossy(&doctor.stdout).contains("bd rebuild"));
    let r = env.json(&["rebuild"]);
    assert_eq!(r["replaced"], true, "{r}");
    assert!(r["damaged"].is_string(), "{r}");
    assert_eq!(r["kept_replica"], true, "{r}");
    assert!(env.beads().join("beads.db.damaged").exists(), "kept aside");
    assert_eq!(env.json(&["info"])["replica"], replica, "same replica");
    let want: BTreeSet<String> = ["one", "two", "three"].map(String::from).into();
    assert_eq!(titles(&env), want);
    // Writes go on where the op file left off, nothing written twice.
    env.create(&["four"]);
    let seqs: Vec<u64> = env
        .op_lines()
        .iter()
        .map(|l| l["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    assert_eq!(env.json(&["doctor"])["errors"], 0);
}

/// Regression (issue 10, item 7): a database whose header and `meta` read
/// but whose inner pages are corrupt opened fine, so `rebuild` took it for
/// sound, failed copying it (`VACUUM INTO`: "malformed"), and had already
/// replaced the previous `beads.db.bak` with an empty file.
#[test]
fn a_database_corrupt_inside_is_rebuilt_and_the_last_backup_kept() {
    let env = TestEnv::new();
    let lines: String = (0..300)
        .map(|n| {
            format!(
                "{{\"id\":\"t-{n}\",\"title\":\"issue {n}\",\"description\":\"{}\"}}\n",
                "x".repeat(1500)
            )
        })
        .collect();
    let file = env.root().join("many.jsonl");
    std::fs::write(&file, lines).unwrap();
    env.ok(&["import", "-q", "-i", file.to_str().unwrap()]);
    env.ok(&["rebuild", "-q"]); // leaves a good beads.db.bak
    let backup = env.beads().join("beads.db.bak");
    let good_backup = std::fs::read(&backup).unwrap();
    assert!(!good_backup.is_empty());
    let db = env.beads().join("beads.db");
    let len = std::fs::metadata(&db).unwrap().len();
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
        // Garbage over the middle of the file: page 1 (the schema) and the
        // first pages (`meta`) stay readable.
        f.seek(SeekFrom::Start(len / 2)).unwrap();
        f.write_all(&vec![0xA5; (len / 4) as usize]).unwrap();
    }
    // Doctor names the command that repairs it, not its own --fix.
    let doctor = env.run(&["doctor"]);
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        text.contains("`bd rebuild` replaces the damaged database") && !text.contains("--fix"),
        "{text}"
    );
    let r = env.json(&["rebuild"]);
    assert_eq!(r["replaced"], true, "{r}");
    assert!(r["damaged"].is_string(), "{r}");
    assert_eq!(r["kept_replica"], true, "{r}");
    assert_eq!(titles(&env).len(), 300);
    assert_eq!(
        std::fs::read(&backup).unwrap(),
        good_backup,
        "the last good backup is kept"
    );
    assert!(!env.beads().join("beads.db.bak.partial").exists());
    assert_eq!(env.json(&["doctor"])["errors"], 0);
}

/// The replica id is remembered beside the database (`beads.db.replica`), so
/// a database too damaged to read its own still keeps it.
#[test]
fn a_database_destroyed_outright_still_keeps_its_replica_id() {
    let env = TestEnv::new();
    env.create(&["one"]);
    let replica = env.json(&["info"])["replica"].clone();
    std::fs::write(env.beads().join("beads.db"), b"not a database at all").unwrap();
    let r = env.json(&["rebuild"]);
    assert_eq!(r["kept_replica"], true, "{r}");
    assert_eq!(env.json(&["info"])["replica"], replica);
    assert_eq!(titles(&env), BTreeSet::from(["one".to_string()]));
}

/// Regression (issue 10, item 7): `rebuild` was refused while a daemon ran,
/// though nearly every command starts one. Now it works through writers at
/// once: they wait for it, and every acknowledged write is there after.
#[test]
fn rebuild_works_while_a_daemon_serves_writers() {
    let env = TestEnv::new_in(Mode::Daemon);
    env.create(&["before"]);
    let writers: Vec<_> = (0..2)
        .map(|w| {
            spawn_script(
                env.root(),
                &format!("for i in $(seq 1 40); do \"$0\" create \"w{w}-$i\" -q || exit 1; done"),
                &[],
                &format!("w{w}"),
            )
        })
        .collect();
    for _ in 0..3 {
        let r = env.json(&["rebuild"]);
        assert_eq!(r["replaced"], true, "{r}");
        assert_eq!(r["previous_hash"], r["state_hash"], "{r}");
    }
    let mut acked = BTreeSet::new();
    for w in writers {
        acked.extend(wait_clean(w).lines().map(str::to_string));
    }
    assert_eq!(acked.len(), 80);
    assert_eq!(
        env.json(&["info"])["mode"],
        "daemon",
        "the daemon kept serving"
    );
    let ids: BTreeSet<String> = env.ids(&["list", "-n", "0"]).into_iter().collect();
    assert!(acked.is_subset(&ids), "every acknowledged write is there");
    assert_eq!(ids.len(), 81);
    env.ok(&["flush"]);
    let seqs: Vec<u64> = env
        .op_lines()
        .iter()
        .map(|l| l["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=81).collect::<Vec<u64>>(), "op file exact");
    let hash = env.json(&["info"])["state_hash"].clone();
    env.ok(&["daemon", "stop", "-q"]);
    let r = env.json(&["rebuild"]);
    assert_eq!(
        r["state_hash"], hash,
        "a rebuild agrees with what the daemon served"
    );
}

/// Regression (issue 10, item 7): `--db other.db` while a daemon served the
/// directory wrote into the daemon's database.
#[test]
fn a_request_reaches_the_database_it_names() {
    let env = TestEnv::new();
    env.create(&["main one"]);
    let other = env.beads().join("other.db");
    std::fs::copy(env.beads().join("beads.db"), &other).unwrap();
    env.ok(&["daemon", "start", "-q", "--idle-timeout", "60"]);
    let o = other.to_str().unwrap();
    env.ok(&["--db", o, "create", "other one", "-q"]);
    let in_other: BTreeSet<String> = env
        .json(&["--db", o, "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["title"].as_str().unwrap().to_string())
        .collect();
    assert!(in_other.contains("other one"), "{in_other:?}");
    assert!(
        !titles(&env).contains("other one"),
        "not in the daemon's database"
    );
    let err = env.fails(&["--db", o, "daemon", "start"], 2);
    assert!(err.contains("a daemon serves"), "{err}");
}

/// Regression (issue 10, item 7): `bd init` after the database was deleted
/// made a new replica id, so this clone's own op file was read as another
/// clone's and the clone lost its identity. The id is kept from
/// `beads.db.replica`, and writes go on where the op file left off.
#[test]
fn init_after_the_database_was_deleted_keeps_the_replica_id() {
    let env = TestEnv::new();
    env.create(&["one"]);
    let replica = env.json(&["info"])["replica"].clone();
    for f in ["beads.db", "beads.db-wal", "beads.db-shm"] {
        let _ = std::fs::remove_file(env.beads().join(f));
    }
    let init = env.json(&["init"]);
    assert_eq!(init["replica"], replica, "{init}");
    assert_eq!(init["kept_replica"], true, "{init}");
    assert_eq!(init["ops_applied"], 1, "{init}");
    assert_eq!(titles(&env), BTreeSet::from(["one".to_string()]));
    env.create(&["two"]);
    let seqs: Vec<u64> = env
        .op_lines()
        .iter()
        .map(|l| l["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 2]);
    assert_eq!(env.json(&["doctor"])["errors"], 0);
    let quiet = TestEnv::empty();
    assert_eq!(
        quiet.ok(&["init", "-q", "--prefix", "q"]),
        "",
        "-q is quiet"
    );
}

/// Review of issue 10, item 7: a database copied in from another clone was
/// used silently, recording this clone's writes as the other's. `doctor`
/// says so, and its hint (move it aside, rebuild) restores this clone's id.
#[test]
fn doctor_notices_a_database_copied_from_another_clone() {
    let ours = TestEnv::new();
    ours.create(&["ours"]);
    let replica = ours.json(&["info"])["replica"].clone();
    let theirs = TestEnv::new();
    theirs.create(&["theirs"]);
    std::fs::copy(
        theirs.beads().join("beads.db"),
        ours.beads().join("beads.db"),
    )
    .unwrap();
    let doctor = ours.run(&["doctor"]);
    assert_eq!(doctor.status.code(), Some(1));
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        text.contains("copied") && text.contains("bd rebuild"),
        "{text}"
    );
    std::fs::rename(
        ours.beads().join("beads.db"),
        ours.beads().join("beads.db.copied"),
    )
    .unwrap();
    ours.ok(&["rebuild", "-q"]);
    assert_eq!(ours.json(&["info"])["replica"], replica);
    assert_eq!(titles(&ours), BTreeSet::from(["ours".to_string()]));
    assert_eq!(ours.json(&["doctor"])["errors"], 0);
}
