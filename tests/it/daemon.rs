//! The daemon: lifecycle, serving the CLI, bad clients, concurrency, stale state.

use crate::common::{BD, TestEnv, wait_clean};
use bd::api::{CreateRequest, Request};
use bd::rpc::{self, Call, Envelope, Hello, HelloReply, Outcome, Reply};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn start(env: &TestEnv) -> Value {
    env.json(&["daemon", "start", "--idle-timeout", "120"])
}

fn socket(env: &TestEnv) -> PathBuf {
    PathBuf::from(
        env.json(&["daemon", "status"])["socket"]
            .as_str()
            .expect("socket")
            .to_string(),
    )
}

fn hello(stream: &UnixStream, protocol: u32) -> HelloReply {
    rpc::write_frame(
        &mut &*stream,
        &Hello {
            protocol,
            version: "test".into(),
        },
    )
    .unwrap();
    rpc::read_frame(&mut &*stream)
        .unwrap()
        .expect("hello reply")
}

#[test]
fn lifecycle_start_serve_stop() {
    let env = TestEnv::new();
    let s = start(&env);
    assert!(s["pid"].as_u64().unwrap() > 0);
    // The daemon runs on mimalloc; short-lived commands keep the system allocator.
    let environ = std::fs::read(format!("/proc/{}/environ", s["pid"])).unwrap();
    assert!(
        environ
            .split(|b| *b == 0)
            .any(|kv| kv == b"BD_ALLOCATOR=mimalloc"),
        "the daemon was started with BD_ALLOCATOR=mimalloc"
    );
    let status = env.json(&["daemon", "status"]);
    assert_eq!(status["running"], true);
    assert_eq!(env.json(&["info"])["mode"], "daemon");
    let id = env.create(&["through the daemon", "-l", "x"]);
    assert_eq!(
        env.json(&["show", &id])[0]["labels"],
        serde_json::json!(["x"])
    );
    env.ok(&["update", &id, "--claim"]);
    assert_eq!(env.ids(&["ready"]), vec![id.clone()]);
    let err = env.fails(&["update", &id, "--claim", "--actor", "rival"], 3);
    assert!(err.contains("already claimed by tester"), "{err}");
    env.fails(&["create", ""], 2);
    let status = env.json(&["daemon", "status"]);
    assert!(status["requests"].as_u64().unwrap() >= 6);
    assert!(status["writes"].as_u64().unwrap() >= 3);
    // Every acknowledged write waited for a disk sync.
    let syncs = status["syncs"].as_u64().unwrap();
    assert!(
        syncs >= 1 && syncs <= status["groups"].as_u64().unwrap(),
        "{status}"
    );
    let err = env.fails(&["daemon", "start"], 1);
    assert!(err.contains("already running"), "{err}");
    let sock = socket(&env);
    assert!(env.json(&["daemon", "stop"])["stopped"] == true);
    assert!(!sock.exists(), "socket removed at stop");
    assert_eq!(env.json(&["info"])["mode"], "direct");
    assert_eq!(env.json(&["daemon", "status"])["running"], false);
    // What the daemon wrote is all there, and the snapshot was flushed at shutdown.
    assert_eq!(env.json(&["show", &id])[0]["assignee"], "tester");
    assert_eq!(env.json(&["info"])["snapshot"]["dirty"], false);
    assert!(env.ok(&["daemon", "logs"]).contains("listening on"));
}

#[test]
fn bad_clients_do_not_disturb_the_daemon() {
    let env = TestEnv::new();
    start(&env);
    let sock = socket(&env);
    // A client that connects and says nothing (held open while others are served).
    let silent = UnixStream::connect(&sock).unwrap();
    // Garbage instead of a hello.
    let mut garbage = UnixStream::connect(&sock).unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    // An absurd frame length.
    let mut huge = UnixStream::connect(&sock).unwrap();
    huge.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).unwrap();
    // A newer protocol is refused politely.
    let newer = UnixStream::connect(&sock).unwrap();
    let reply = hello(&newer, 99);
    assert!(!reply.ok && reply.message.unwrap().contains("protocol"));
    // After a good hello: an unknown operation gets an error reply, not a crash.
    let bad_op = UnixStream::connect(&sock).unwrap();
    assert!(hello(&bad_op, rpc::PROTOCOL).ok);
    let body =
        br#"{"id":5,"actor":"x","deadline_ms":99999999999999,"call":{"request":{"op":"explode"}}}"#;
    (&bad_op)
        .write_all(&[&(body.len() as u32).to_be_bytes()[..], body].concat())
        .unwrap();
    let reply: Reply = rpc::read_frame(&mut &bad_op).unwrap().unwrap();
    assert!(matches!(reply.result, Outcome::Err(_)));
    // A request whose deadline already passed is not executed.
    let late = UnixStream::connect(&sock).unwrap();
    assert!(hello(&late, rpc::PROTOCOL).ok);
    let create = Request::Create(CreateRequest {
        title: "too late".into(),
        ..Default::default()
    });
    let env_late = Envelope {
        progress: false,
        id: 9,
        actor: "x".into(),
        deadline_ms: 1,
        request_id: None,
        call: Call::Request(Box::new(create)),
    };
    rpc::write_frame(&mut &late, &env_late).unwrap();
    let reply: Reply = rpc::read_frame(&mut &late).unwrap().unwrap();
    match reply.result {
        Outcome::Err(e) => assert_eq!(e.kind, bd::ErrorKind::Timeout),
        other => panic!("{other:?}"),
    }
    // Through all of that, the daemon serves the CLI, and nothing "too late" exists.
    let id = env.create(&["still serving"]);
    assert_eq!(env.ids(&["list", "--all"]), vec![id]);
    assert_eq!(env.json(&["info"])["mode"], "daemon");
    drop(silent);
}

#[test]
fn long_repository_paths_use_a_short_socket() {
    let env = TestEnv::empty();
    let deep = env
        .root()
        .join("a-rather-long-directory-name-for-testing".repeat(2))
        .join("and-some-more-nesting-here");
    std::fs::create_dir_all(&deep).unwrap();
    let run = |args: &[&str]| {
        let out = env.command(args).current_dir(&deep).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    run(&["init", "--prefix", "d"]);
    run(&["daemon", "start", "--idle-timeout", "120"]);
    let status: Value = serde_json::from_str(&run(&["daemon", "status", "--json"])).unwrap();
    let sock = status["socket"].as_str().unwrap().to_string();
    assert!(
        sock.len() <= 100 && !sock.starts_with(deep.to_str().unwrap()),
        "{sock}"
    );
    run(&["create", "deep", "-q"]);
    let info: Value = serde_json::from_str(&run(&["info", "--json"])).unwrap();
    assert_eq!(info["mode"], "daemon");
    run(&["daemon", "stop"]);
    assert!(!PathBuf::from(sock).exists());
}

#[test]
fn a_killed_daemon_leaves_nothing_that_slows_the_next_command() {
    let env = TestEnv::new();
    let pid = start(&env)["pid"].as_u64().unwrap();
    let sock = socket(&env);
    env.create(&["before the crash"]);
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let t = Instant::now();
    while env.json(&["info"])["mode"] == "daemon" {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "lock not released after kill -9"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(sock.exists(), "the dead daemon's socket is still there");
    // Commands run directly at once (the lock is free), with no complaint.
    let out = env.run(&["create", "after the crash", "-q"]);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(env.ids(&["list"]).len(), 2);
    // A new daemon replaces the stale socket.
    start(&env);
    assert_eq!(env.json(&["info"])["mode"], "daemon");
    assert_eq!(env.ids(&["list"]).len(), 2);
}

/// Daemon processes serving this test's tracker (matched by its path on their
/// command line).
fn daemons_for(env: &TestEnv) -> usize {
    let out = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .unwrap();
    let beads = env.beads().display().to_string();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("daemon start --foreground") && l.contains(&beads))
        .count()
}

#[test]
fn group_commit_can_be_turned_off() {
    let env = TestEnv::new();
    env.json(&[
        "daemon",
        "start",
        "--idle-timeout",
        "120",
        "--max-group",
        "1",
    ]);
    let procs: Vec<_> = (0..4)
        .map(|p| {
            let script =
                format!(r#"for i in 1 2 3 4 5 6 7 8; do "$0" create "w{p} $i" -q || exit 1; done"#);
            crate::common::spawn_script(env.root(), &script, &[], "tester")
        })
        .collect();
    for p in procs {
        assert_eq!(wait_clean(p).lines().count(), 8);
    }
    let status = env.json(&["daemon", "status"]);
    assert_eq!(status["writes"], 32, "{status}");
    assert_eq!(status["groups"], 32, "one transaction per write: {status}");
    assert_eq!(status["largest_group"], 1, "{status}");
    assert!(status["syncs"].as_u64().unwrap() >= 1, "{status}");
    assert_eq!(env.ids(&["list"]).len(), 32);
    env.fails(&["daemon", "start", "--max-group", "0"], 2);
}

#[test]
fn fifty_racing_commands_start_exactly_one_daemon() {
    let env = TestEnv::new();
    let procs: Vec<_> = (0..50)
        .map(|i| {
            let mut c = env.command(&["create", &format!("racer {i}"), "-q"]);
            c.env("BD_AUTO_START", "1")
                .env_remove("CI")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            c.spawn().unwrap()
        })
        .collect();
    let mut ids = BTreeSet::new();
    for p in procs {
        ids.insert(wait_clean(p).trim().to_string());
    }
    assert_eq!(ids.len(), 50);
    assert_eq!(daemons_for(&env), 1, "exactly one daemon");
    let status = env.json(&["daemon", "status"]);
    assert_eq!(status["running"], true);
    assert!(status["writes"].as_u64().unwrap() >= 50, "{status}");
    assert_eq!(env.ids(&["list"]).len(), 50);
}

#[test]
fn auto_start_stays_off_in_ci_and_when_configured_off() {
    let env = TestEnv::new();
    let out = env
        .command(&["create", "in ci", "-q"])
        .env_remove("BD_AUTO_START")
        .env("CI", "true")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(daemons_for(&env), 0);
    env.ok(&["config", "set", "daemon.auto_start", "false"]);
    let out = env
        .command(&["create", "configured off", "-q"])
        .env_remove("BD_AUTO_START")
        .env_remove("CI")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(daemons_for(&env), 0);
    env.fails(&["config", "set", "daemon.auto_start", "maybe"], 2);
    // And with it on, the first command starts one.
    env.ok(&["config", "set", "daemon.auto_start", "true"]);
    let out = env
        .command(&["info", "--json"])
        .env_remove("BD_AUTO_START")
        .env_remove("CI")
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["mode"], "daemon");
    assert_eq!(daemons_for(&env), 1);
}

#[test]
fn kill_9_mid_stream_loses_no_acknowledged_write_and_no_batch_is_partial() {
    use std::io::BufRead;
    let env = TestEnv::new();
    let pid = start(&env)["pid"].as_u64().unwrap();
    // Each iteration: one batch of three creates; "ok N" once it is acknowledged.
    let script = r#"for i in $(seq 1 60); do
        printf '{"op":"create","title":"b%s x"}\n{"op":"create","title":"b%s y"}\n{"op":"create","title":"b%s z"}\n' $i $i $i \
          | "$0" batch -q && echo "ok $i" || echo "failed $i"
      done"#;
    let mut child = std::process::Command::new("sh")
        .args(["-c", script, BD])
        .current_dir(env.root())
        .env("BD_ACTOR", "streamer")
        .env("BD_AUTO_START", "1")
        .env_remove("CI")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acked = Vec::new();
    let mut failed = 0;
    let mut killed = false;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("ok ") {
            acked.push(n.to_string());
        } else {
            failed += 1;
        }
        if acked.len() == 20 && !killed {
            let status = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status()
                .unwrap();
            assert!(status.success());
            killed = true;
        }
    }
    assert!(child.wait().unwrap().success());
    assert!(killed);
    // Exactly-once delivery: the batch in flight at the kill is resent by its
    // request id through the next daemon, so none fails.
    assert_eq!(failed, 0, "no batch fails because its daemon died");
    assert_eq!(acked.len(), 60, "clients recovered by themselves");
    // Every acknowledged batch is whole; no batch is partial.
    let all = env.json(&["list", "--all"]);
    let titles: Vec<String> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["title"].as_str().unwrap().to_string())
        .collect();
    for i in 1..=60 {
        let n = titles
            .iter()
            .filter(|t| t.starts_with(&format!("b{i} ")))
            .count();
        assert!(n == 0 || n == 3, "batch {i} is partial ({n} of 3)");
        if acked.contains(&i.to_string()) {
            assert_eq!(n, 3, "acknowledged batch {i} lost");
        }
    }
    // A new daemon serves, and the database is sound.
    assert_eq!(env.json(&["info"])["mode"], "daemon");
    env.ok(&["daemon", "stop"]);
    let conn = rusqlite::Connection::open(env.beads().join("beads.db")).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

#[test]
fn a_write_to_a_daemon_that_died_before_reading_it_fails_and_changes_nothing() {
    // The kill -9 stress test once saw a batch acknowledged (exit 0) that no
    // daemon had received: the CLI reported every broken pipe as success.
    use bd::client::DaemonClient;
    let env = TestEnv::new();
    let mut daemon = env
        .command(&["daemon", "start", "--foreground", "--idle-timeout", "120"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let sock = loop {
        if let Some(socket) = env.json(&["daemon", "status"])["socket"].as_str() {
            break PathBuf::from(socket);
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "daemon did not come up"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // Connected (hello answered), then the daemon dies before the request.
    let mut client = DaemonClient::connect(&sock, "tester", Duration::from_secs(5)).unwrap();
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let failure = bd::client::Backend::send(
        &mut client,
        Request::Create(CreateRequest {
            title: "never received".into(),
            ..Default::default()
        }),
        &Default::default(),
    )
    .expect_err("no daemon received it");
    assert!(
        matches!(failure, bd::client::CallError::NotDelivered(_)),
        "never received, so not in doubt: {failure:?}"
    );
    let err = bd::Error::from(failure);
    assert!(
        err.message.contains("before receiving the request")
            && err.message.ends_with("nothing was changed"),
        "{err:?}"
    );
    assert_eq!(
        err.kind,
        bd::ErrorKind::Unavailable,
        "the CLI may send it again"
    );
    let all = env.json(&["--no-daemon", "list", "--all"]);
    assert!(
        !all.to_string().contains("never received"),
        "nothing was written: {all}"
    );
}

#[test]
fn an_older_daemon_is_replaced_by_a_newer_client() {
    let env = TestEnv::new();
    let mut old = env
        .command(&[
            "daemon",
            "start",
            "--foreground",
            "--report-version",
            "0.0.1",
            "--idle-timeout",
            "120",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while env.json(&["daemon", "status"])["version"] != "0.0.1" {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "old daemon did not come up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Without auto-start, a compatible older daemon is simply used.
    env.create(&["served by the old daemon"]);
    assert_eq!(env.json(&["daemon", "status"])["version"], "0.0.1");
    // With auto-start, the newer client asks it to leave and starts its own.
    let out = env
        .command(&["create", "served by the new daemon", "-q"])
        .env("BD_AUTO_START", "1")
        .env_remove("CI")
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exited = old.wait().unwrap();
    assert!(exited.success(), "the old daemon exited cleanly: {exited}");
    let status = env.json(&["daemon", "status"]);
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_ne!(status["pid"].as_u64().unwrap(), old.id() as u64);
    assert_eq!(env.ids(&["list"]).len(), 2);
}

#[test]
fn a_request_stuck_behind_a_long_import_times_out_and_changes_nothing() {
    let env = TestEnv::new_in(crate::common::Mode::Daemon);
    std::fs::write(
        env.root().join("big.jsonl"),
        bd::fixture::jsonl("big", 5_000),
    )
    .unwrap();
    let mut import = env
        .command(&["import", "-i", "big.jsonl", "-q", "--timeout", "120"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while env.json(&["daemon", "status"])["in_flight"]
        .as_u64()
        .unwrap()
        == 0
    {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the import never reached the writer"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let err = env.fails(&["create", "impatient", "--timeout", "0.2", "--json"], 1);
    let v: Value = serde_json::from_str(err.trim()).unwrap();
    assert_eq!(v["error"]["kind"], "timeout", "{err}");
    assert!(import.wait().unwrap().success());
    assert!(
        env.ids(&["search", "impatient"]).is_empty(),
        "a timed-out request was committed"
    );
    assert_eq!(env.json(&["stats"])["total"], 5_000);
}

#[test]
fn six_agents_times_fifty_mixed_operations() {
    let env = TestEnv::new_in(crate::common::Mode::Daemon);
    // Each agent, 10 rounds of: create, update it, show it, list, ready, claim the
    // first ready issue (others may win it: exit 3 is the only allowed failure).
    let script = r#"bd="$0"; agent="$1"; claims=0
      for i in $(seq 1 10); do
        id=$("$bd" create "mixed $agent $i" -q) || exit 10
        "$bd" update "$id" -p 1 -q >/dev/null || exit 11
        "$bd" show "$id" --json >/dev/null || exit 12
        "$bd" list -q >/dev/null || exit 13
        pick=$("$bd" ready -n 1 --unassigned -q) || exit 14
        if [ -n "$pick" ]; then
          "$bd" update "$pick" --claim -q >/dev/null 2>&1; rc=$?
          if [ $rc = 0 ]; then claims=$((claims+1)); elif [ $rc != 3 ]; then exit 15; fi
        fi
      done
      echo "$claims""#;
    let procs: Vec<_> = (0..6)
        .map(|p| {
            let actor = format!("agent{p}");
            crate::common::spawn_script(env.root(), script, &[&actor], &actor)
        })
        .collect();
    let mut claims = 0;
    for p in procs {
        let out = p.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "exit {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        claims += String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap();
    }
    let all = env.json(&["list", "--all"]);
    let issues = all.as_array().unwrap();
    assert_eq!(issues.len(), 60, "every create landed once");
    assert!(
        issues.iter().all(|i| i["priority"] == 1),
        "every update landed"
    );
    let in_progress = issues
        .iter()
        .filter(|i| i["status"] == "in_progress")
        .count() as u64;
    assert_eq!(
        in_progress, claims,
        "each successful claim is visible, none twice"
    );
    assert_eq!(env.json(&["daemon", "status"])["last_error"], Value::Null);
}

#[test]
fn a_large_log_is_rotated_when_a_daemon_starts() {
    let env = TestEnv::new();
    let log = env.beads().join("daemon.log");
    let old_line = "old entry that must survive one rotation\n";
    let big = old_line.repeat(1024 * 1024 / old_line.len() + 10);
    assert!(big.len() as u64 > bd::daemon::LOG_ROTATE_BYTES);
    std::fs::write(&log, &big).unwrap();
    start(&env);
    let rotated = std::fs::read_to_string(env.beads().join("daemon.log.1")).unwrap();
    assert_eq!(rotated, big, "the old log is kept whole as daemon.log.1");
    let current = std::fs::read_to_string(&log).unwrap();
    assert!(current.len() < 4096, "a fresh log: {} bytes", current.len());
    assert!(current.contains("listening on"), "{current}");
    // `logs` reads across the rotation: the newest line last, older lines before.
    let tail = env.ok(&["daemon", "logs", "-n", "5"]);
    assert!(tail.contains("old entry"), "{tail}");
    assert!(
        tail.trim_end()
            .lines()
            .last()
            .unwrap()
            .contains("listening on"),
        "{tail}"
    );
    env.ok(&["daemon", "stop"]);
    // A small log is left alone on the next start.
    start(&env);
    assert_eq!(
        std::fs::read_to_string(env.beads().join("daemon.log.1")).unwrap(),
        big
    );
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .matches("listening on")
            .count()
            == 2
    );
}

#[test]
fn list_and_ready_rows_pass_through_the_daemon_unchanged() {
    // The daemon sends list and ready answers as the stored rows' JSON, without
    // parsing them (service::execute_for_wire); the client must read back
    // exactly the issues direct mode builds from the same rows.
    use bd::api::Response;
    use bd::client::{Backend, DaemonClient, Direct};
    use bd::query::ListFilter;
    let env = TestEnv::new();
    let blocker = env.create(&["blocker \"quoted\"", "-p", "0"]);
    env.create(&[
        // (Titles refuse control characters; the description carries them.)
        "unicode é ✓, backslash \\, \"quotes\"",
        "-l",
        "x,y",
        "--deps",
        &format!("blocks:{blocker}"),
        "-d",
        "tab\there, newline\nthere\r\nline two \u{7f}",
    ]);
    env.create(&["plain", "-a", "someone"]);
    start(&env);
    let mut daemon =
        DaemonClient::connect(&socket(&env), "tester", Duration::from_secs(10)).expect("connect");
    let mut direct =
        Direct::open(bd::storage::BeadsPaths::new(env.beads()), "tester").expect("open");
    for req in [
        Request::List(ListFilter::default()),
        Request::List(ListFilter {
            limit: Some(2),
            ..Default::default()
        }),
        Request::Ready(ListFilter::default()),
    ] {
        let through_daemon = daemon.call(req.clone()).expect("daemon");
        let here = direct.call(req.clone()).expect("direct");
        let Response::Issues(issues) = &here else {
            panic!("direct answered {here:?}")
        };
        assert!(!issues.is_empty(), "{req:?}");
        assert_eq!(through_daemon, here, "{req:?}");
    }
    // Bad filters are refused the same way.
    let bad = Request::List(ListFilter {
        status: vec!["nope".into()],
        ..Default::default()
    });
    let e = daemon.call(bad.clone()).expect_err("bad status");
    assert_eq!(e.message, direct.call(bad).expect_err("bad status").message);
    env.ok(&["daemon", "stop"]);
}

/// Review of issue 10: `bd daemon restart` under load failed about one time
/// in five although it had worked: it waited for nobody to hold the daemon
/// lock (a command had already auto-started a new daemon: "did not exit
/// within 5 s"), or refused to start because that new one ran ("already
/// running"). And `--json` printed two documents (issue 11, item 8).
#[test]
fn daemon_restart_under_auto_starting_writers_succeeds_with_one_answer() {
    let env = TestEnv::new();
    start(&env);
    let script = r#"i=0; while [ $i -lt 400 ] && [ ! -e stop ]; do i=$((i+1)); "$0" create "w$1-$i" -q >/dev/null || exit 1; done"#;
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let mut c = std::process::Command::new("sh");
            c.args(["-c", script, BD, &w.to_string()])
                .current_dir(env.root())
                .env("BD_ACTOR", "writer")
                .env("BD_AUTO_START", "1")
                .env_remove("CI")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            c.spawn().unwrap()
        })
        .collect();
    for round in 0..8 {
        let out = env.run(&["daemon", "restart", "--json", "--idle-timeout", "120"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "restart {round}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let doc: Value = serde_json::from_str(&stdout).expect("exactly one JSON document");
        assert!(doc["pid"].as_u64().is_some(), "{doc}");
        if round == 0 {
            // And the log as JSON too (issue 11, item 8).
            let logs = env.json(&["daemon", "logs", "-n", "5"]);
            assert!(
                logs["path"].as_str().unwrap().ends_with("daemon.log"),
                "{logs}"
            );
            assert!(!logs["lines"].as_array().unwrap().is_empty(), "{logs}");
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    std::fs::write(env.root().join("stop"), "").unwrap();
    for w in writers {
        let out = w.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        // A daemon leaving is passing: no note about it.
        assert!(!stderr.contains("shutting down"), "{stderr}");
    }
    // The last one stopped may still be on its way out.
    let t = Instant::now();
    while daemons_for(&env) > 1 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(daemons_for(&env), 1, "one daemon at the end");
}

/// Regression (issue 11, item 17): each repository's daemon lives 30 idle
/// minutes and they piled up with no way to see or stop them together.
/// `bd daemon list` and `bd daemon stop --all` act on this user's daemons in
/// every repository. (Run as the user nobody, so that stopping "all" cannot
/// touch the daemons of tests running beside it.)
#[test]
fn daemon_list_and_stop_all_cover_every_repository_of_the_user() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: getuid cannot fail.
    if unsafe { libc::getuid() } != 0 {
        return; // only root can act as another user here
    }
    let envs = [TestEnv::new(), TestEnv::new()];
    let as_nobody = |env: &TestEnv, args: &[&str]| {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", BD])
            .args(args)
            .current_dir(env.root())
            .env("BD_ACTOR", "nobody")
            .env("BD_AUTO_START", "0")
            .env_remove("XDG_RUNTIME_DIR")
            .output()
            .unwrap()
    };
    for env in &envs {
        for dir in [
            env.root().to_path_buf(),
            env.beads(),
            env.beads().join("ops"),
        ] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
            for f in std::fs::read_dir(&dir).unwrap().flatten() {
                if f.path().is_file() {
                    std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o666))
                        .unwrap();
                }
            }
        }
        let out = as_nobody(env, &["daemon", "start", "-q", "--idle-timeout", "120"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = as_nobody(&envs[0], &["daemon", "list", "--json"]);
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let dirs: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["dir"].as_str().unwrap().to_string())
        .collect();
    for env in &envs {
        assert!(
            dirs.contains(&env.beads().display().to_string()),
            "{listed}"
        );
    }
    let out = as_nobody(&envs[0], &["daemon", "stop", "--all", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stopped: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stopped["stopped"].as_array().unwrap().len(), dirs.len());
    for env in &envs {
        assert_eq!(daemons_for(env), 0, "stopped");
    }
    let out = as_nobody(&envs[1], &["daemon", "list", "--json"]);
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );
}

/// Regression (review of issue 15, bd-c26b): after `rm -rf .beads` the
/// daemon ran on, unlisted and unreachable, until its idle timeout. It now
/// notices its directory gone at its next idle check (at most 5 s) and exits.
#[test]
fn a_daemon_whose_tracker_is_removed_exits() {
    let env = TestEnv::new();
    env.ok(&["daemon", "start", "-q", "--idle-timeout", "600"]);
    let pid = env.json(&["daemon", "status"])["pid"].as_u64().unwrap();
    std::fs::remove_dir_all(env.beads()).unwrap();
    let start = Instant::now();
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    // A zombie (exited, not yet reaped by init) counts as gone.
    let gone = || {
        std::fs::read_to_string(proc_dir.join("stat"))
            .map_or(true, |s| s.split_whitespace().nth(2) == Some("Z"))
    };
    while !gone() && start.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        gone(),
        "daemon {pid} still runs {:?} after its tracker was removed",
        start.elapsed()
    );
}
