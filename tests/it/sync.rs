//! Clones exchanging ops through git: a local bare `origin`, clones in temp dirs,
//! hermetic git (temp HOME, no system config). Here the user runs git by hand;
//! bd applies what arrives in `.beads/ops` on its next command.

use crate::common::BD;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub(crate) struct Cluster {
    dir: tempfile::TempDir,
}

pub(crate) struct Clone {
    pub(crate) root: PathBuf,
    home: PathBuf,
    actor: String,
    /// More environment for every bd this clone runs (the fault tests').
    pub(crate) env: Vec<(String, String)>,
}

impl Drop for Clone {
    fn drop(&mut self) {
        if self.root.join(".beads/daemon.lock").exists() {
            let _ = self.bd(&["daemon", "stop", "-q", "--timeout", "5"]);
        }
    }
}

fn git_in(dir: &Path, home: &Path, args: &[&str]) -> Output {
    let out = git_in_raw(dir, home, args);
    assert!(
        out.status.success(),
        "git {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Cluster {
    pub(crate) fn new() -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("bd-sync-")
            .tempdir()
            .unwrap();
        // HOME is the cluster dir: git and libgit2 (bd's local commits) both read
        // this file and nothing from the real user.
        let config = "[init]\n\tdefaultBranch = main\n[pull]\n\trebase = false\n\
                      [user]\n\tname = t\n\temail = t@example.invalid\n";
        std::fs::write(dir.path().join("gitconfig"), config).unwrap();
        std::fs::write(dir.path().join(".gitconfig"), config).unwrap();
        git_in(
            dir.path(),
            dir.path(),
            &["init", "-q", "--bare", "origin.git"],
        );
        Cluster { dir }
    }

    pub(crate) fn home(&self) -> &Path {
        self.dir.path()
    }

    /// A clone of origin named `name`, acting as `actor`.
    pub(crate) fn clone(&self, name: &str, actor: &str) -> Clone {
        git_in(
            self.home(),
            self.home(),
            &["clone", "-q", "origin.git", name],
        );
        Clone {
            root: self.home().join(name),
            home: self.home().to_path_buf(),
            actor: actor.into(),
            env: Vec::new(),
        }
    }
}

impl Clone {
    pub(crate) fn bd(&self, args: &[&str]) -> Output {
        Command::new(BD)
            .args(args)
            .current_dir(&self.root)
            .env("HOME", &self.home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", self.home.join("gitconfig"))
            .env("BD_ACTOR", &self.actor)
            .env("BD_AUTO_START", "0")
            .env_remove("BEADS_DIR")
            // Keys go under $HOME/.config (the cluster's), never the real user's.
            .env_remove("XDG_CONFIG_HOME")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .expect("bd")
    }

    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let out = self.bd(args);
        assert!(
            out.status.success(),
            "bd {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `bd create ARGS --json` and returns the new issue's id.
    pub(crate) fn create(&self, args: &[&str]) -> String {
        let mut all = vec!["create"];
        all.extend_from_slice(args);
        self.json(&all)["id"]
            .as_str()
            .expect("create answers with an id")
            .to_string()
    }

    pub(crate) fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.ok(&all)).expect("json")
    }

    pub(crate) fn git(&self, args: &[&str]) -> String {
        String::from_utf8(git_in(&self.root, &self.home, args).stdout).unwrap()
    }

    /// Commits this clone's op files (what a user or hook would) and pushes.
    pub(crate) fn commit_ops_and_push(&self, message: &str) {
        self.ok(&["flush", "-q"]);
        self.git(&[
            "add",
            ".beads/ops",
            ".beads/config.json",
            ".beads/.gitignore",
        ]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.git(&["push", "-q", "origin", "HEAD:main"]);
    }

    pub(crate) fn pull(&self) {
        self.git(&["pull", "-q", "--no-edit", "origin", "main"]);
    }

    pub(crate) fn state_hash(&self) -> String {
        self.json(&["info"])["state_hash"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub(crate) fn title(&self, id: &str) -> String {
        self.json(&["show", id])[0]["title"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

pub(crate) fn ids(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

/// The titles of every issue `c` lists, sorted.
fn titles(c: &Clone) -> Vec<String> {
    let mut t: Vec<String> = c
        .json(&["list", "--all"])
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["title"].as_str().unwrap().to_string())
        .collect();
    t.sort();
    t
}

#[test]
fn a_fresh_clone_gets_every_issue_and_pulled_ops_apply_on_the_next_command() {
    let cluster = Cluster::new();
    let a = cluster.clone("a", "alice");
    a.ok(&["init", "--prefix", "s"]);
    let first = a.create(&["first", "-l", "x"]);
    let second = a.create(&["second"]);
    a.ok(&["dep", "add", &second, &first]);
    a.ok(&["comment", "add", &first, "a note"]);
    a.commit_ops_and_push("alice's issues");

    let b = cluster.clone("b", "bob");
    let init = b.json(&["init"]);
    assert_eq!(init["adopted_existing"], true);
    assert_eq!(init["ops_applied"], 4, "{init}");
    assert_ne!(
        init["replica"],
        a.json(&["info"])["replica"],
        "a clone is its own replica"
    );
    // Regression (issue 11, item 16): init left an empty op file, untracked.
    let own = format!(".beads/ops/{}.jsonl", init["replica"].as_str().unwrap());
    assert!(!b.root.join(&own).exists(), "no op yet, no file");
    assert!(!b.git(&["status", "--porcelain"]).contains("ops/"));
    assert_eq!(
        ids(&b.json(&["list", "--all"])),
        ids(&a.json(&["list", "--all"]))
    );
    assert_eq!(b.state_hash(), a.state_hash());
    assert_eq!(
        b.json(&["ready"]).as_array().unwrap().len(),
        1,
        "the dependency came too"
    );

    // Bob edits; alice pulls by hand and her next command sees it, in direct mode
    // and through a daemon that was already running.
    b.ok(&["update", &first, "--title", "first, retitled by bob"]);
    b.commit_ops_and_push("bob's edit");
    a.pull();
    assert_eq!(a.title(&first), "first, retitled by bob");
    a.ok(&["daemon", "start", "-q", "--idle-timeout", "120"]);
    assert_eq!(a.json(&["info"])["mode"], "daemon");
    b.ok(&["close", &second]);
    b.commit_ops_and_push("bob closes");
    a.pull();
    assert_eq!(a.json(&["show", &second])[0]["status"], "closed");
    assert_eq!(a.state_hash(), b.state_hash());
}

#[test]
fn concurrent_title_edits_become_one_conflict_on_every_clone() {
    let cluster = Cluster::new();
    let a = cluster.clone("a", "alice");
    a.ok(&["init", "--prefix", "s"]);
    let id = a.create(&["shared"]);
    a.commit_ops_and_push("base");
    let b = cluster.clone("b", "bob");
    b.ok(&["init"]);

    a.ok(&["update", &id, "--title", "alice's title"]);
    a.ok(&["label", "add", &id, "from-a"]);
    b.ok(&["update", &id, "--title", "bob's title"]);
    b.ok(&["label", "add", &id, "from-b"]);
    a.commit_ops_and_push("alice");
    b.ok(&["flush", "-q"]);
    b.git(&["add", ".beads/ops"]);
    b.git(&["commit", "-q", "-m", "bob"]);
    b.pull(); // a merge: the two op files are different files, so no conflict
    b.git(&["push", "-q", "origin", "HEAD:main"]);
    a.pull();

    for clone in [&a, &b] {
        let conflicts = clone.json(&["conflicts"]);
        let list = conflicts.as_array().expect("array");
        assert_eq!(list.len(), 1, "{conflicts}");
        let text = conflicts.to_string();
        for needle in ["alice", "bob", "alice's title", "bob's title", "title"] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
        let labels = &clone.json(&["show", &id])[0]["labels"];
        assert_eq!(
            labels,
            &serde_json::json!(["from-a", "from-b"]),
            "no label lost"
        );
        // Regression (issue 12 review): a dry run counted 0 open conflicts.
        for how in [&["sync", "--dry-run"][..], &["sync", "--status"]] {
            assert_eq!(clone.json(how)["conflicts"], 1, "{how:?}");
        }
    }
    assert_eq!(
        a.title(&id),
        b.title(&id),
        "the same value is shown everywhere"
    );
    assert_eq!(a.state_hash(), b.state_hash());
}

#[test]
fn rebuild_from_op_files_gives_the_same_state() {
    let cluster = Cluster::new();
    let a = cluster.clone("a", "alice");
    a.ok(&["init", "--prefix", "s"]);
    let mut made = Vec::new();
    for i in 0..20 {
        made.push(a.create(&[&format!("issue {i}"), "-l", "l"]));
    }
    a.ok(&["update", &made[0], "--claim"]);
    a.ok(&["close", &made[1]]);
    a.ok(&["comment", "add", &made[2], "c"]);
    // Blocking of every kind: an open blocker, a closed one, and a parent-child
    // chain under a blocked epic (blocked flags are not part of the state hash,
    // so they are compared through `ready` and `blocked`).
    a.ok(&["dep", "add", &made[5], &made[6]]);
    a.ok(&["dep", "add", &made[7], &made[1]]);
    let epic = a.create(&["epic", "-t", "epic"]);
    a.ok(&["dep", "add", &epic, &made[8]]);
    let child = a.create(&["child", "--parent", &epic]);
    let grandchild = a.create(&["grandchild", "--parent", &child]);
    a.commit_ops_and_push("work");
    let b = cluster.clone("b", "bob");
    b.ok(&["init"]);
    b.ok(&["update", &made[3], "--priority", "0"]);
    let ready_before = ids(&b.json(&["ready", "-n", "0"]));
    let blocked_before = ids(&b.json(&["blocked"]));
    for id in [&made[5], &epic, &child, &grandchild] {
        assert!(
            blocked_before.contains(id),
            "{id} blocked before: {blocked_before:?}"
        );
    }
    assert!(
        ready_before.contains(&made[7]),
        "a closed blocker does not block"
    );

    let before = b.state_hash();
    let r = b.json(&["rebuild"]);
    assert_eq!(r["replaced"], true, "{r}");
    assert_eq!(r["previous_hash"], before.as_str());
    assert_eq!(r["state_hash"], before.as_str());
    assert!(b.root.join(".beads/beads.db.bak").exists());
    assert_eq!(b.state_hash(), before);
    assert_eq!(
        ids(&b.json(&["ready", "-n", "0"])),
        ready_before,
        "same ready queue"
    );
    assert_eq!(
        ids(&b.json(&["blocked"])),
        blocked_before,
        "same blocked set"
    );
    // Bob's own edit survived (it came back from his own op file), and his next
    // write continues his sequence.
    assert_eq!(b.json(&["show", &made[3]])[0]["priority"], 0);
    b.ok(&["update", &made[4], "--priority", "1"]);
    let own = b.json(&["info"])["replica"].as_str().unwrap().to_string();
    let text = std::fs::read_to_string(b.root.join(format!(".beads/ops/{own}.jsonl"))).unwrap();
    let seqs: Vec<u64> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, vec![1, 2], "contiguous after a rebuild");
}

#[test]
fn a_torn_or_corrupt_foreign_line_is_reported_and_the_rest_applied() {
    let cluster = Cluster::new();
    let a = cluster.clone("a", "alice");
    a.ok(&["init", "--prefix", "s"]);
    for i in 0..3 {
        a.ok(&["create", &format!("issue {i}"), "-q"]);
    }
    a.commit_ops_and_push("work");
    let replica = a.json(&["info"])["replica"].as_str().unwrap().to_string();
    let b = cluster.clone("b", "bob");
    let file = b.root.join(format!(".beads/ops/{replica}.jsonl"));
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    // Line 2 corrupted in place (its content no longer matches its hash), line 3
    // torn (no newline).
    let corrupt = lines[1].replace("issue 1", "issue X");
    let torn = &lines[2][..lines[2].len() / 2];
    std::fs::write(&file, format!("{}\n{corrupt}\n{torn}", lines[0])).unwrap();
    let init = b.json(&["init"]);
    assert_eq!(init["ops_applied"], 1, "{init}");
    let problems = init["problems"].to_string();
    assert!(problems.contains(&format!("{replica}.jsonl")), "{problems}");
    assert!(
        problems.contains("\"line\":2") && problems.contains("content hash"),
        "{problems}"
    );
    assert!(
        problems.contains("\"line\":3") && problems.contains("torn"),
        "{problems}"
    );
    assert_eq!(b.json(&["list"]).as_array().unwrap().len(), 1);
    // The rest of the torn line arrives: the next command applies it.
    std::fs::write(&file, format!("{}\n{corrupt}\n{}\n", lines[0], lines[2])).unwrap();
    assert_eq!(b.json(&["list"]).as_array().unwrap().len(), 2);
}

/// Two clones of one tracker holding issue `id`, both initialised.
pub(crate) fn pair(cluster: &Cluster) -> (Clone, Clone, String) {
    let a = cluster.clone("a", "alice");
    a.ok(&["init", "--prefix", "s"]);
    let id = a.create(&["shared"]);
    a.commit_ops_and_push("base");
    let b = cluster.clone("b", "bob");
    b.ok(&["init"]);
    (a, b, id)
}

/// Both clones exchange their ops through origin (b merges, pushes; a pulls).
pub(crate) fn exchange(a: &Clone, b: &Clone) {
    a.commit_ops_and_push("a");
    b.ok(&["flush", "-q"]);
    b.git(&["add", ".beads/ops"]);
    b.git(&["commit", "-q", "--allow-empty", "-m", "b"]);
    b.pull();
    b.git(&["push", "-q", "origin", "HEAD:main"]);
    a.pull();
}

#[test]
fn resolve_clears_a_conflict_everywhere_and_a_status_conflict_keeps_the_issue_out_of_ready() {
    let cluster = Cluster::new();
    let (a, b, id) = pair(&cluster);
    a.ok(&["update", &id, "--status", "in_progress"]);
    b.ok(&["update", &id, "--status", "blocked"]);
    exchange(&a, &b);
    for c in [&a, &b] {
        let conflicts = c.json(&["conflicts"]);
        assert_eq!(conflicts[0]["field"], "status", "{conflicts}");
        assert!(
            c.json(&["ready"]).as_array().unwrap().is_empty(),
            "status in conflict: not ready"
        );
        assert!(
            c.ok(&["show", &id]).contains("[CONFLICT]"),
            "show marks the field"
        );
        // And says how to settle it (issue 11, item 15).
        let listed = c.ok(&["conflicts"]);
        assert!(listed.contains("bd resolve ID --field FIELD"), "{listed}");
        c.ok(&["flush", "-q"]);
        let file = std::fs::read_to_string(c.root.join(".beads/conflicts.jsonl")).unwrap();
        assert!(file.contains(&id) && file.contains("\"status\""), "{file}");
    }
    // Errors: both or neither of --value/--take, an unknown contender, no conflict.
    assert_eq!(
        b.bd(&["resolve", &id, "--field", "status"]).status.code(),
        Some(2)
    );
    let out = b.bd(&["resolve", &id, "--field", "status", "--take", "carol"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = b.bd(&["resolve", &id, "--field", "title", "--value", "x"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no conflict on title"));

    b.ok(&["resolve", &id, "--field", "status", "--take", "alice"]);
    assert!(b.json(&["conflicts"]).as_array().unwrap().is_empty());
    exchange(&a, &b);
    for c in [&a, &b] {
        assert!(
            c.json(&["conflicts"]).as_array().unwrap().is_empty(),
            "cleared on every clone"
        );
        assert_eq!(c.json(&["show", &id])[0]["status"], "in_progress");
        assert_eq!(c.json(&["ready"]).as_array().unwrap().len(), 1);
    }
    assert_eq!(a.state_hash(), b.state_hash());
}

#[test]
fn a_delete_racing_an_edit_is_a_conflict_not_a_resurrection() {
    let cluster = Cluster::new();
    let (a, b, id) = pair(&cluster);
    a.ok(&["delete", &id]);
    b.ok(&["update", &id, "--title", "edited while deleted elsewhere"]);
    b.ok(&["comment", "add", &id, "late comment"]);
    exchange(&a, &b);
    for c in [&a, &b] {
        assert!(
            c.json(&["list", "--all"]).as_array().unwrap().is_empty(),
            "stays deleted"
        );
        let conflicts = c.json(&["conflicts"]);
        assert_eq!(conflicts[0]["field"], "deleted", "{conflicts}");
        assert!(
            conflicts
                .to_string()
                .contains("edited while deleted elsewhere")
        );
        assert!(
            conflicts.to_string().contains("late comment"),
            "a comment the delete did not see is a contender too: {conflicts}"
        );
    }
    assert_eq!(a.state_hash(), b.state_hash());
    // Bob wrote two contenders: naming him is ambiguous.
    let out = a.bd(&["resolve", &id, "--field", "deleted", "--take", "bob"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("matches 2 contenders"));
    // Taking the edit is refused: nothing comes back by itself or by resolve.
    let conflicts = a.json(&["conflicts"]);
    let edit = conflicts[0]["contenders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["value"].to_string().contains("edited while deleted"))
        .expect("the edit is a contender");
    let prefix = &edit["op_id"].as_str().unwrap()[..10];
    let out = a.bd(&["resolve", &id, "--field", "deleted", "--take", prefix]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("never brought back"));
    a.ok(&["resolve", &id, "--field", "deleted", "--value", "deleted"]);
    exchange(&a, &b);
    for c in [&a, &b] {
        assert!(c.json(&["conflicts"]).as_array().unwrap().is_empty());
        assert!(c.json(&["list", "--all"]).as_array().unwrap().is_empty());
    }
    // Deleting again is a no-op, and a deleted id is not found.
    assert_ne!(a.bd(&["delete", &id]).status.code(), Some(0));
}

#[test]
fn concurrent_labels_dependencies_and_comments_merge_without_conflict() {
    let cluster = Cluster::new();
    let (a, b, id) = pair(&cluster);
    let other = a.create(&["other"]);
    a.commit_ops_and_push("other");
    b.pull();
    a.ok(&["label", "add", &id, "a1"]);
    a.ok(&["comment", "add", &id, "from alice"]);
    a.ok(&["dep", "add", &id, &other]);
    b.ok(&["label", "add", &id, "b1"]);
    b.ok(&["comment", "add", &id, "from bob"]);
    b.ok(&["label", "add", &other, "x"]);
    b.ok(&["label", "remove", &other, "x"]);
    exchange(&a, &b);
    for c in [&a, &b] {
        assert!(c.json(&["conflicts"]).as_array().unwrap().is_empty());
        let issue = &c.json(&["show", &id])[0];
        assert_eq!(issue["labels"], serde_json::json!(["a1", "b1"]));
        let comments = issue["comments"].to_string();
        assert!(comments.contains("from alice") && comments.contains("from bob"));
        assert_eq!(issue["dependencies"][0]["depends_on_id"], other.as_str());
    }
    assert_eq!(a.state_hash(), b.state_hash());
    let snap_a = std::fs::read_to_string(a.root.join(".beads/issues.jsonl")).unwrap();
    a.ok(&["flush", "-q"]);
    b.ok(&["flush", "-q"]);
    let snap_a2 = std::fs::read_to_string(a.root.join(".beads/issues.jsonl")).unwrap();
    let snap_b = std::fs::read_to_string(b.root.join(".beads/issues.jsonl")).unwrap();
    assert_eq!(snap_a2, snap_b, "identical snapshots");
    assert!(snap_a2.len() >= snap_a.len());
    for part in ["a1", "b1", &other] {
        assert!(snap_a2.contains(part), "{part} in the snapshot");
    }
}

#[test]
fn ops_stamped_far_in_the_future_are_held_as_clock_skew() {
    let cluster = Cluster::new();
    let (_a, b, id) = pair(&cluster);
    let op = future_title_op(&id);
    // The derived files are current before the op arrives (so a later flush
    // must notice that only the held ops changed).
    b.ok(&["flush", "-q"]);
    let snapshot_before = snapshot(&b);
    std::fs::write(
        b.root.join(".beads/ops/feedfacefeedface.jsonl"),
        serde_json::to_string(&op).unwrap() + "\n",
    )
    .unwrap();
    assert_eq!(b.title(&id), "shared", "not applied");
    b.ok(&["flush", "-q"]);
    assert_eq!(snapshot(&b), snapshot_before, "the issue did not change");
    let conflicts_file = std::fs::read_to_string(b.root.join(".beads/conflicts.jsonl")).unwrap();
    assert!(conflicts_file.contains("clock_skew"), "{conflicts_file}");
    let conflicts = b.json(&["conflicts"]);
    assert_eq!(conflicts[0]["field"], "clock_skew", "{conflicts}");
    assert_eq!(conflicts[0]["contenders"][0]["actor"], "mallory");
    assert_eq!(b.json(&["info"])["held_ops"], 1);
    // Kept, not dropped: a rebuild holds it again.
    let r = b.json(&["rebuild"]);
    assert_eq!(r["held"], 1, "{r}");
    assert_eq!(b.json(&["info"])["held_ops"], 1);
}

/// A sealed title write on `issue` by "mallory" on replica `feedfacefeedface`,
/// stamped an hour ahead of now (held for clock skew when it arrives).
fn future_title_op(issue: &str) -> bd::model::Op {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut op = label_op(issue, "", "mallory", "feedfacefeedface", 1);
    op.kind = bd::model::OpKind::Set;
    op.field = Some("title".into());
    op.value = serde_json::json!("from the future");
    op.hlc.wall = now + 3_600_000;
    op.seal()
}

/// A sealed op as another clone would write it: `actor` on `replica` adds
/// label `label` to `issue` (the caller changes the fields a test needs).
pub(crate) fn label_op(
    issue: &str,
    label: &str,
    actor: &str,
    replica: &str,
    seq: u64,
) -> bd::model::Op {
    bd::model::Op {
        op_id: String::new(),
        issue: issue.into(),
        of: None,
        kind: bd::model::OpKind::LabelAdd,
        field: None,
        value: serde_json::json!(label),
        supersedes: vec![],
        fence: None,
        hlc: bd::model::Hlc {
            wall: 1_000 + seq,
            logical: 0,
        },
        actor: actor.into(),
        replica: replica.into(),
        seq,
    }
    .seal()
}

fn snapshot(c: &Clone) -> String {
    std::fs::read_to_string(c.root.join(".beads/issues.jsonl")).unwrap()
}

#[test]
fn bd_sync_in_every_order_converges_on_three_clones() {
    let cluster = Cluster::new();
    let a = cluster.clone("a", "alice");
    a.ok(&["init", "--prefix", "s"]);
    let shared = a.create(&["shared"]);
    let r = a.json(&["sync"]);
    assert_eq!(r["pushed"], true, "{r}");
    let b = cluster.clone("b", "bob");
    b.ok(&["init"]);
    let c = cluster.clone("c", "carol");
    c.ok(&["init"]);
    let clones = [&a, &b, &c];
    let mut made = Vec::new();
    for round in 0..3 {
        for (k, clone) in clones.iter().enumerate() {
            let id = clone.create(&[&format!("{} round {round}", clone.actor)]);
            made.push(id);
            clone.ok(&["label", "add", &shared, &format!("{}-{round}", clone.actor)]);
            clone.ok(&[
                "comment",
                "add",
                &shared,
                &format!("{} says {round}", clone.actor),
            ]);
            // A different order each round.
            let order: Vec<&Clone> = match (round + k) % 3 {
                0 => vec![clone],
                1 => vec![clone, clones[(k + 1) % 3]],
                _ => vec![clones[(k + 2) % 3], clone],
            };
            for o in order {
                let r = o.json(&["sync"]);
                assert_eq!(r["pushed"], true, "{r}");
            }
        }
    }
    // Everyone syncs twice more: the last pushes reach everyone.
    for _ in 0..2 {
        for clone in clones {
            clone.ok(&["sync", "-q"]);
        }
    }
    let hash = a.state_hash();
    for clone in clones {
        assert_eq!(clone.state_hash(), hash, "{} converged", clone.actor);
        assert_eq!(snapshot(clone), snapshot(&a), "identical snapshots");
        let all = ids(&clone.json(&["list", "--all"]));
        for id in &made {
            assert!(all.contains(id), "{id} present on {}", clone.actor);
        }
        let issue = &clone.json(&["show", &shared])[0];
        assert_eq!(issue["labels"].as_array().unwrap().len(), 9, "{issue}");
        assert_eq!(issue["comments"].as_array().unwrap().len(), 9);
        assert!(clone.json(&["conflicts"]).as_array().unwrap().is_empty());
        // Nothing of bd's left uncommitted, and git history holds it.
        assert_eq!(clone.git(&["status", "--porcelain", ".beads"]), "");
    }
}

#[test]
fn bd_sync_never_touches_the_users_own_work() {
    let cluster = Cluster::new();
    let (a, b, _id) = pair(&cluster);
    // Some shared history with a user file.
    std::fs::write(a.root.join("code.txt"), "v1\n").unwrap();
    a.git(&["add", "code.txt"]);
    a.git(&["commit", "-q", "-m", "code"]);
    a.ok(&["sync", "-q"]);
    b.ok(&["sync", "-q"]);
    // Bob stages a change and has another unstaged; alice pushes issues.
    std::fs::write(b.root.join("code.txt"), "v2 staged\n").unwrap();
    b.git(&["add", "code.txt"]);
    std::fs::write(b.root.join("notes.txt"), "untracked\n").unwrap();
    a.ok(&["create", "from alice", "-q"]);
    a.ok(&["sync", "-q"]);
    b.ok(&["create", "from bob", "-q"]);
    let r = b.json(&["sync"]);
    assert_eq!(r["pushed"], true, "{r}");
    assert_eq!(r["integration"], "merge", "{r}");
    assert_eq!(
        b.git(&["diff", "--cached", "--name-only"]),
        "code.txt\n",
        "still staged"
    );
    assert_eq!(
        std::fs::read_to_string(b.root.join("code.txt")).unwrap(),
        "v2 staged\n"
    );
    assert!(b.git(&["status", "--porcelain"]).contains("?? notes.txt"));
    let committed = b.git(&["show", "--name-only", "--format=", "HEAD", "HEAD^"]);
    assert!(
        !committed.contains("code.txt") && !committed.contains("notes.txt"),
        "{committed}"
    );
    assert_eq!(b.json(&["list"]).as_array().unwrap().len(), 3);

    // An incoming change to a file bob has modified: refused before anything
    // changes.
    b.git(&["reset", "-q", "code.txt"]);
    std::fs::write(a.root.join("code.txt"), "v2 from alice\n").unwrap();
    a.git(&["commit", "-q", "-am", "alice edits code"]);
    a.ok(&["sync", "-q"]);
    let head = b.git(&["rev-parse", "HEAD"]);
    let out = b.bd(&["sync"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("code.txt") && err.contains("uncommitted"),
        "{err}"
    );
    assert_eq!(b.git(&["rev-parse", "HEAD"]), head, "branch not moved");
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(
        std::fs::read_to_string(b.root.join("code.txt")).unwrap(),
        "v2 staged\n"
    );
    // Regression (issue 11, item 6): with a write of bob's pending, the stop
    // came after bd had committed its own files, while saying nothing of it.
    b.ok(&["create", "pending", "-q"]);
    let out = b.bd(&["sync"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    let now = b.git(&["rev-parse", "--short=10", "HEAD"]);
    assert!(
        err.contains("committed locally first") && err.contains(now.trim()),
        "says which commit it made: {err}"
    );
    assert_eq!(
        b.git(&["show", "--name-only", "--format=", "HEAD"])
            .lines()
            .filter(|f| !f.starts_with(".beads/"))
            .count(),
        0,
        "only bd's files"
    );
}

#[test]
fn bd_sync_without_a_remote_commits_locally_and_says_so() {
    let dir = tempfile::Builder::new()
        .prefix("bd-sync-")
        .tempdir()
        .unwrap();
    let cluster = Cluster { dir };
    let root = cluster.home().join("solo");
    std::fs::create_dir_all(&root).unwrap();
    git_in(&root, cluster.home(), &["init", "-q"]);
    std::fs::write(
        cluster.home().join(".gitconfig"),
        "[user]\n\tname = t\n\temail = t@example.invalid\n",
    )
    .unwrap();
    let solo = Clone {
        root,
        home: cluster.home().to_path_buf(),
        actor: "solo".into(),
        env: Vec::new(),
    };
    solo.ok(&["init", "--prefix", "s"]);
    solo.ok(&["create", "alone", "-q"]);
    let objects = solo.git(&["count-objects"]);
    let dry = solo.json(&["sync", "--dry-run"]);
    assert_eq!(
        solo.git(&["count-objects"]),
        objects,
        "a dry run writes no git objects"
    );
    assert_eq!(dry["dry_run"], true);
    assert!(dry["files"].to_string().contains("issues.jsonl"), "{dry}");
    assert!(
        solo.git(&["status", "--porcelain"]).contains(".beads"),
        "dry run committed nothing"
    );
    let r = solo.json(&["sync"]);
    assert_eq!(r["offline"], true, "{r}");
    assert_eq!(r["pushed"], false);
    assert!(r["notes"].to_string().contains("no git remote"), "{r}");
    assert_eq!(solo.git(&["status", "--porcelain", ".beads"]), "");
    let log = solo.git(&["log", "--format=%s", "--name-only"]);
    assert!(
        log.contains("bd sync") && log.contains(".beads/ops/"),
        "{log}"
    );
    let status = solo.json(&["sync", "--status"]);
    assert_eq!(status["files"], serde_json::json!([]), "{status}");
}

#[test]
fn conflict_markers_in_the_snapshot_are_regenerated_not_merged() {
    let cluster = Cluster::new();
    let (a, b, id) = pair(&cluster);
    a.ok(&["sync", "-q"]);
    b.ok(&["sync", "-q"]);
    // A human merge left conflict markers in the snapshot and committed them.
    let path = b.root.join(".beads/issues.jsonl");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        format!("<<<<<<< HEAD\n{good}=======\n{good}>>>>>>> other\n"),
    )
    .unwrap();
    b.git(&["commit", "-q", "-am", "bad merge"]);
    b.ok(&["update", &id, "--priority", "0"]);
    b.ok(&["sync", "-q"]);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        !text.contains("<<<<<<<") && !text.contains(">>>>>>>"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1);
    a.ok(&["sync", "-q"]);
    assert_eq!(snapshot(&a), text, "the regenerated snapshot travels");
    assert_eq!(a.json(&["show", &id])[0]["priority"], 0);
}

#[test]
fn hooks_chain_the_users_own_and_keep_bd_files_fresh() {
    let cluster = Cluster::new();
    let a = cluster.clone("a", "alice");
    // The user's own pre-commit hook, there before bd.
    let hooks = a.root.join(".git/hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    let user_hook = hooks.join("pre-commit");
    std::fs::write(
        &user_hook,
        "#!/bin/sh\necho ran >> \"$(git rev-parse --show-toplevel)/user-hook-ran\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&user_hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let init = a.json(&["init", "--prefix", "s"]);
    assert!(
        init["git"].as_str().unwrap().contains("installed"),
        "{init}"
    );
    let list = a.json(&["hooks", "list"]);
    let pre = list
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "pre-commit")
        .unwrap();
    assert_eq!(pre["installed"], "bd");
    assert!(
        pre["chained"]
            .as_str()
            .unwrap()
            .ends_with("pre-commit.bd-chained")
    );
    assert_eq!(
        std::fs::read_to_string(a.root.join(".beads/.gitattributes")).unwrap(),
        bd::gitsync::hooks::GITATTRIBUTES
    );
    assert!(
        a.git(&["config", "merge.bd.driver"])
            .contains("merge-driver %O %A %B %P")
    );

    // The user's plain `git commit`: their hook ran, and bd's staged its files.
    let id = a.create(&["hooked"]);
    std::fs::write(a.root.join("README"), "hi\n").unwrap();
    a.git(&["add", "README"]);
    a.git(&["commit", "-q", "-m", "user commit"]);
    assert!(
        a.root.join("user-hook-ran").exists(),
        "the chained hook ran"
    );
    let files = a.git(&["show", "--name-only", "--format=", "HEAD"]);
    assert!(
        files.contains(".beads/issues.jsonl") && files.contains(".beads/ops/"),
        "{files}"
    );
    assert!(a.git(&["show", "HEAD:.beads/issues.jsonl"]).contains(&id));
    // A failing user hook still fails the commit.
    std::fs::write(hooks.join("pre-commit.bd-chained"), "#!/bin/sh\nexit 1\n").unwrap();
    std::fs::write(a.root.join("README"), "again\n").unwrap();
    let out = Command::new("git")
        .args(["commit", "-q", "-am", "blocked"])
        .current_dir(&a.root)
        .env("HOME", &a.home)
        .env("BD_AUTO_START", "0")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the user's failing hook is respected"
    );

    let after = a.json(&["hooks", "uninstall"]);
    let pre = after
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "pre-commit")
        .unwrap();
    assert_eq!(pre["installed"], "other", "the user's hook is back");
    assert_eq!(
        std::fs::read_to_string(&user_hook).unwrap(),
        "#!/bin/sh\nexit 1\n"
    );
}

#[test]
fn hooks_honour_core_hooks_path_and_a_plain_git_pull_regenerates_the_snapshot() {
    let cluster = Cluster::new();
    let (a, b, id) = pair(&cluster);
    for c in [&a, &b] {
        c.git(&["config", "core.hooksPath", ".githooks"]);
        c.ok(&["hooks", "install", "-q"]);
        // Regression (issue 11, item 16): a hooks directory in the work tree
        // (husky's) is committed: its hooks call the `bd` on PATH, not this
        // machine's path to the binary.
        let hook = std::fs::read_to_string(c.root.join(".githooks/post-merge")).unwrap();
        assert!(hook.contains("command -v bd"), "{hook}");
        assert!(!hook.contains(crate::common::BD), "{hook}");
    }
    a.ok(&["sync", "-q"]);
    b.ok(&["sync", "-q"]);
    a.ok(&["sync", "-q"]);
    // Both sides change the snapshot and commit it with plain git.
    a.ok(&["update", &id, "--title", "alice's"]);
    a.ok(&["create", "only on a", "-q"]);
    a.git(&["commit", "-q", "-m", "a", "--allow-empty"]); // pre-commit stages bd's files
    a.git(&["push", "-q", "origin", "HEAD:main"]);
    b.ok(&["label", "add", &id, "b-label"]);
    b.git(&["commit", "-q", "-m", "b", "--allow-empty"]);
    // A plain `git pull`: the merge driver keeps markers out, post-merge
    // regenerates from the ops.
    b.pull();
    let text = snapshot(&b);
    assert!(!text.contains("<<<<<<<"), "{text}");
    b.ok(&["flush", "-q"]);
    assert_eq!(
        snapshot(&b),
        text,
        "already regenerated by the post-merge hook"
    );
    let issue = &b.json(&["show", &id])[0];
    assert_eq!(issue["title"], "alice's");
    assert_eq!(issue["labels"], serde_json::json!(["b-label"]));
    assert_eq!(b.json(&["list"]).as_array().unwrap().len(), 2);
}

#[test]
fn doctor_reports_with_file_and_line_and_fix_repairs_what_is_safe() {
    let cluster = Cluster::new();
    let a = cluster.clone("a", "alice");
    a.ok(&["init", "--prefix", "s"]);
    let id = a.create(&["doc"]);
    a.ok(&["update", &id, "--priority", "1"]);
    a.ok(&["flush", "-q"]);
    let healthy = a.json(&["doctor"]);
    assert_eq!(healthy["errors"], 0, "{healthy}");

    // Damage: own op file torn, a foreign file with a corrupt middle line,
    // conflict markers in the snapshot, hooks gone.
    let own = a.json(&["info"])["replica"].as_str().unwrap().to_string();
    let own_file = a.root.join(format!(".beads/ops/{own}.jsonl"));
    let own_text = std::fs::read_to_string(&own_file).unwrap();
    std::fs::write(&own_file, &own_text[..own_text.len() - 10]).unwrap();
    let op = |seq: u64| {
        let op = label_op(&id, &format!("l{seq}"), "zed", "feedfacefeedface", seq);
        serde_json::to_string(&op).unwrap()
    };
    let foreign = a.root.join(".beads/ops/feedfacefeedface.jsonl");
    std::fs::write(&foreign, format!("{}\n{{not json\n{}\n", op(1), op(2))).unwrap();
    let snap = a.root.join(".beads/issues.jsonl");
    let good = std::fs::read_to_string(&snap).unwrap();
    std::fs::write(&snap, format!("<<<<<<< HEAD\n{good}=======\n>>>>>>> x\n")).unwrap();
    a.ok(&["hooks", "uninstall", "-q"]);
    // An older bd's .gitignore, without the rebuild backup's pattern.
    let ignore = a.root.join(".beads/.gitignore");
    let old_ignore = std::fs::read_to_string(&ignore)
        .unwrap()
        .replace("*.db.*\n", "");
    std::fs::write(&ignore, &old_ignore).unwrap();

    let out = a.bd(&["doctor", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = report.to_string();
    assert!(
        text.contains(&format!("{own}.jsonl")) && text.contains("torn"),
        "{text}"
    );
    assert!(
        text.contains("feedfacefeedface.jsonl") && text.contains("\"line\":2"),
        "{text}"
    );
    assert!(text.contains("conflict markers"), "{text}");
    assert!(text.contains("not installed"), "{text}");
    assert!(text.contains("does not ignore *.db.*"), "{text}");

    let out = a.bd(&["doctor", "--fix"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the foreign line is not ours to fix"
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("fixed: rewrote"), "{shown}");
    assert!(shown.contains("feedfacefeedface.jsonl:2"), "{shown}");
    assert!(!std::fs::read_to_string(&snap).unwrap().contains("<<<<<<<"));
    assert_eq!(
        std::fs::read_to_string(&own_file).unwrap(),
        own_text,
        "own file rewritten whole"
    );
    assert_eq!(a.json(&["hooks", "list"])[0]["installed"], "bd");
    assert!(
        std::fs::read_to_string(&ignore)
            .unwrap()
            .ends_with("*.db.*\n")
    );
    // The good foreign ops around the bad line were applied.
    assert_eq!(
        a.json(&["show", &id])[0]["labels"],
        serde_json::json!(["l1", "l2"])
    );

    std::fs::write(&foreign, format!("{}\n{}\n", op(1), op(2))).unwrap();
    let report = a.json(&["doctor"]);
    assert_eq!(report["errors"], 0, "{report}");
}

/// Everything doctor kept aside in `.beads/` files whose names start with
/// `prefix`.
fn kept_lines(root: &std::path::Path, prefix: &str) -> String {
    std::fs::read_dir(root.join(".beads"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

/// Regression (issue 15's audit of `--fix`): an own op file with a torn
/// line was deleted and written again from the database, losing the sound
/// ops in it that the database lacked (another copy writing under this
/// replica id); and a regenerated snapshot dropped lines that were not this
/// database's issues. `--fix` now takes such ops in before rewriting, and
/// keeps every line it takes out in `.beads/doctor-kept-*`.
#[test]
fn doctor_fix_never_deletes_what_might_be_data() {
    let cluster = Cluster::new();
    let a = cluster.clone("a", "alice");
    a.ok(&["init", "--prefix", "s"]);
    let id = a.create(&["doc"]);
    a.ok(&["flush", "-q"]);
    let own = a.json(&["info"])["replica"].as_str().unwrap().to_string();
    let own_file = a.root.join(format!(".beads/ops/{own}.jsonl"));
    let copy_op = serde_json::to_string(&label_op(&id, "from-the-copy", "zed", &own, 50)).unwrap();
    let torn = "{\"op_id\":\"abc\",\"iss";
    let mut text = std::fs::read_to_string(&own_file).unwrap();
    text.push_str(&format!("{copy_op}\n{torn}\n"));
    std::fs::write(&own_file, &text).unwrap();
    let snap = a.root.join(".beads/issues.jsonl");
    let stranger = r#"{"id":"s-zzzz","title":"written by another tool","status":"open","priority":2,"issue_type":"task"}"#;
    let mut snapshot = std::fs::read_to_string(&snap).unwrap();
    snapshot.push_str(&format!("{stranger}\nsome notes someone appended\n"));
    std::fs::write(&snap, &snapshot).unwrap();

    let out = a.bd(&["doctor", "--fix", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let fixed: Vec<String> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["fixed"].as_str().map(str::to_string))
        .collect();
    assert!(
        fixed
            .iter()
            .any(|f| f.contains("unreadable line(s) are kept in")),
        "{fixed:?}"
    );
    assert!(
        fixed
            .iter()
            .any(|f| f.contains("regenerated issues.jsonl") && f.contains("kept in")),
        "{fixed:?}"
    );

    // The other copy's op survived: in the database and in the rewritten file.
    let labels = &a.json(&["show", &id])[0]["labels"];
    assert_eq!(
        labels,
        &serde_json::json!(["from-the-copy"]),
        "the copy's op was taken in"
    );
    assert!(
        std::fs::read_to_string(&own_file)
            .unwrap()
            .contains(&copy_op)
    );

    // Every line taken out is kept, byte for byte.
    let kept = kept_lines(&a.root, "doctor-kept-");
    for line in [torn, stranger, "some notes someone appended"] {
        assert!(kept.lines().any(|l| l == line), "{line:?} kept: {kept:?}");
    }
    let report = a.json(&["doctor"]);
    assert_eq!(report["errors"], 0, "{report}");
}

/// Regression (review of issue 15): doctor said nothing when this clone's
/// own op file was deleted or cut short, and offered `--fix` for damage it
/// cannot repair (another clone's file). A repaired check says what it was.
#[test]
fn doctor_notices_a_missing_own_op_file_and_offers_only_repairs_it_can_make() {
    let cluster = Cluster::new();
    let a = cluster.clone("a", "alice");
    a.ok(&["init", "--prefix", "s"]);
    for n in 0..3 {
        a.create(&[&format!("issue {n}")]);
    }
    a.ok(&["flush", "-q"]);
    let own = a.json(&["info"])["replica"].as_str().unwrap().to_string();
    let own_file = a.root.join(format!(".beads/ops/{own}.jsonl"));
    let whole = std::fs::read_to_string(&own_file).unwrap();
    std::fs::remove_file(&own_file).unwrap();
    let report = a.json(&["doctor"]);
    let replica = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "replica")
        .unwrap()
        .clone();
    assert_eq!(replica["level"], "warn", "{replica}");
    assert!(
        replica["message"].as_str().unwrap().contains("lacks 3"),
        "{replica}"
    );
    let fixed = a.ok(&["doctor", "--fix"]);
    assert!(
        fixed.contains("was: ") && fixed.contains("fixed: rewrote"),
        "{fixed}"
    );
    assert_eq!(std::fs::read_to_string(&own_file).unwrap(), whole);

    // issues.jsonl deleted, then edited by hand (second review: both were
    // reported "current"); --fix writes it again and keeps the edited line.
    let snap = a.root.join(".beads/issues.jsonl");
    std::fs::remove_file(&snap).unwrap();
    let report = a.json(&["doctor"]);
    assert!(
        report.to_string().contains("issues.jsonl is missing"),
        "{report}"
    );
    a.ok(&["doctor", "--fix"]);
    let good = std::fs::read_to_string(&snap).unwrap();
    let edited = good.replacen("issue 1", "HAND EDITED", 1);
    std::fs::write(&snap, &edited).unwrap();
    let report = a.json(&["doctor"]);
    assert!(report.to_string().contains("not what bd wrote"), "{report}");
    let fixed = a.ok(&["doctor", "--fix"]);
    assert!(fixed.contains("kept in"), "{fixed}");
    assert_eq!(std::fs::read_to_string(&snap).unwrap(), good);
    let kept = kept_lines(&a.root, "doctor-kept-snapshot");
    assert!(kept.contains("HAND EDITED"), "{kept}");

    // Damage only in another clone's file: no repair is offered.
    let foreign = a.root.join(".beads/ops/feedfacefeedface.jsonl");
    std::fs::write(&foreign, "{not json\n").unwrap();
    let out = a.bd(&["doctor"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("other clones' files"), "{text}");
    assert!(!text.contains("`bd doctor --fix` repairs"), "{text}");
}

#[test]
fn bd_sync_through_a_running_daemon() {
    let cluster = Cluster::new();
    let (a, b, id) = pair(&cluster);
    a.ok(&["daemon", "start", "-q", "--idle-timeout", "120"]);
    assert_eq!(a.json(&["info"])["mode"], "daemon");
    a.ok(&["sync", "-q"]);
    b.ok(&["sync", "-q"]);
    for i in 0..5 {
        b.ok(&["create", &format!("from bob {i}"), "-q"]);
    }
    b.ok(&["update", &id, "--title", "bob's title"]);
    b.ok(&["sync", "-q"]);
    a.ok(&["create", "from alice", "-q"]);
    let r = a.json(&["sync"]);
    assert_eq!(r["pushed"], true, "{r}");
    assert_eq!(r["ops_applied"], 6, "{r}");
    assert_eq!(a.title(&id), "bob's title");
    b.ok(&["sync", "-q"]);
    assert_eq!(a.state_hash(), b.state_hash());
    assert_eq!(a.json(&["daemon", "status"])["running"], true);
    assert_eq!(a.git(&["status", "--porcelain", ".beads"]), "");
}

#[test]
fn a_push_rejected_because_the_remote_moved_is_integrated_and_retried() {
    let cluster = Cluster::new();
    let (a, b, _id) = pair(&cluster);
    a.ok(&["sync", "-q"]);
    b.ok(&["sync", "-q"]);
    a.ok(&["sync", "-q"]);
    // The first time alice pushes, bob pushes first (from alice's pre-push
    // hook), so her push is rejected as not a fast-forward.
    b.ok(&["create", "bob slipped in", "-q"]);
    b.ok(&["flush", "-q"]);
    b.git(&["add", ".beads"]);
    b.git(&["commit", "-q", "-m", "bob"]);
    let hook = a.root.join(".git/hooks/pre-push");
    let once = a.root.join(".git/bob-pushed");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nif [ ! -e '{once}' ]; then touch '{once}'; git -C '{bob}' push -q origin HEAD:main; fi\n",
            once = once.display(),
            bob = b.root.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    a.ok(&["create", "alice's", "-q"]);
    let r = a.json(&["sync"]);
    assert_eq!(r["pushed"], true, "{r}");
    assert_eq!(r["push_attempts"], 2, "{r}");
    assert!(once.exists(), "bob's push happened in between");
    assert_eq!(r["ops_applied"], 1, "bob's issue came in on the retry: {r}");
    b.ok(&["sync", "-q"]);
    assert_eq!(a.state_hash(), b.state_hash());
    assert_eq!(b.json(&["list"]).as_array().unwrap().len(), 3);
}

#[test]
fn an_unreachable_remote_means_committed_locally_and_said_so() {
    let cluster = Cluster::new();
    let (a, _b, _id) = pair(&cluster);
    // Nobody listens there: the network is what failed (offline, exit 0).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/bd-remote.git");
    a.git(&["remote", "set-url", "origin", &url]);
    a.ok(&["create", "offline work", "-q"]);
    let r = a.json(&["sync"]);
    assert_eq!(r["offline"], true, "{r}");
    assert_eq!(r["pushed"], false);
    assert!(r["notes"].to_string().contains("committed locally"), "{r}");
    assert_eq!(a.git(&["status", "--porcelain", ".beads"]), "", "committed");
}

/// Regression (issue 11, item 7): a misconfigured remote (no repository at
/// the URL) exited 0 as "offline", while a failed fetch is exit 1. Offline
/// (the network failed) and broken (the remote is wrong) are told apart.
#[test]
fn a_broken_remote_is_an_error_not_offline() {
    let cluster = Cluster::new();
    let (a, _b, _id) = pair(&cluster);
    a.git(&["remote", "set-url", "origin", "/nonexistent/bd-remote.git"]);
    a.ok(&["create", "work", "-q"]);
    let out = a.bd(&["sync"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("git fetch origin failed"), "{err}");
    assert!(err.contains("committed locally (commit"), "{err}");
    assert!(
        err.contains("git remote -v"),
        "the hint says where to look: {err}"
    );
    assert_eq!(a.git(&["status", "--porcelain", ".beads"]), "", "committed");
}

#[test]
fn sync_commits_bd_files_whether_staged_or_not_and_leaves_the_index_clean() {
    // What changed is read from git's status (stat data first, content when that
    // does not settle it); a file someone staged is compared with HEAD by content.
    let cluster = Cluster::new();
    let (a, b, _id) = pair(&cluster);
    a.ok(&["create", "staged by the user", "-q"]);
    a.ok(&["flush", "-q"]);
    a.git(&["add", ".beads"]);
    let r = a.json(&["sync"]);
    assert_eq!(r["pushed"], true, "{r}");
    assert_eq!(a.git(&["status", "--porcelain", ".beads"]), "", "committed");
    assert_eq!(
        a.git(&["diff", "--cached", "--name-only"]),
        "",
        "index = HEAD"
    );
    // Staged, then changed again in the work tree before the sync.
    a.ok(&["create", "staged, then more", "-q"]);
    a.ok(&["flush", "-q"]);
    a.git(&["add", ".beads"]);
    a.ok(&["create", "not staged", "-q"]);
    a.ok(&["sync", "-q"]);
    assert_eq!(a.git(&["status", "--porcelain", ".beads"]), "");
    // Changes appended within the same second as the index write (racily clean
    // for git's stat check) are still seen: each sync commits the create before it.
    for k in 0..3 {
        a.ok(&["create", &format!("quick {k}"), "-q"]);
        a.ok(&["sync", "-q"]);
        assert_eq!(a.git(&["status", "--porcelain", ".beads"]), "", "round {k}");
    }
    // Bringing the remote's files in writes index entries bd builds itself.
    b.ok(&["sync", "-q"]);
    assert_eq!(
        b.git(&["status", "--porcelain"]),
        "",
        "clean after integrate"
    );
    assert_eq!(b.git(&["diff", "HEAD", "--stat"]), "");
    assert_eq!(b.state_hash(), a.state_hash());
}

#[test]
fn a_long_lived_library_client_sees_op_files_that_change_under_it() {
    use bd::api::{CreateRequest, Request, Response};
    use bd::client::{Backend, Direct, InitOptions, init};
    let make = |replica: &str| {
        let dir = tempfile::tempdir().unwrap();
        init(
            dir.path(),
            &InitOptions {
                prefix: Some("s".into()),
                replica: replica.into(),
            },
        )
        .unwrap();
        let paths = bd::storage::BeadsPaths::new(dir.path().join(".beads"));
        let d = Direct::open(paths.clone(), "lib").unwrap();
        (dir, paths, d)
    };
    let (_da, pa, mut a) = make("aaaaaaaaaaaaaaaa");
    let (_db, pb, mut b) = make("bbbbbbbbbbbbbbbb");
    let count = |d: &mut Direct| match d
        .call(Request::List(bd::query::ListFilter::default()))
        .unwrap()
    {
        Response::Issues(v) => v.len(),
        other => panic!("{other:?}"),
    };
    let create = |d: &mut Direct, t: &str| {
        d.call(Request::Create(CreateRequest {
            title: t.into(),
            ..Default::default()
        }))
        .unwrap();
        d.call(Request::Flush).unwrap();
    };
    assert_eq!(count(&mut b), 0);
    create(&mut a, "one");
    // A new file appears in b's op directory, then grows.
    let theirs = pa.op_file("aaaaaaaaaaaaaaaa");
    let copy = pb.op_file("aaaaaaaaaaaaaaaa");
    std::fs::copy(&theirs, &copy).unwrap();
    assert_eq!(count(&mut b), 1, "a new op file is noticed");
    create(&mut a, "two");
    std::fs::copy(&theirs, &copy).unwrap();
    assert_eq!(count(&mut b), 2, "a grown op file is noticed");
}

#[test]
fn a_hook_whose_bd_binary_is_gone_never_fails_the_users_commit() {
    let cluster = Cluster::new();
    let a = cluster.clone("a", "alice");
    a.ok(&["init", "--prefix", "s"]);
    let hook = a.root.join(".git/hooks/pre-commit");
    let text = std::fs::read_to_string(&hook).unwrap();
    std::fs::write(&hook, text.replace(crate::common::BD, "/nonexistent/bd")).unwrap();
    let list = a.json(&["hooks", "list"]);
    assert_eq!(list[0]["stale"], true, "{list}");
    std::fs::write(a.root.join("f.txt"), "x\n").unwrap();
    a.git(&["add", "f.txt"]);
    let out = Command::new("git")
        .args(["commit", "-q", "-m", "still works"])
        .current_dir(&a.root)
        .env("HOME", &a.home)
        .env("GIT_CONFIG_GLOBAL", a.home.join("gitconfig"))
        .env("BD_AUTO_START", "0")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("is gone"));
    let fixed = a.json(&["doctor", "--fix"]);
    assert!(
        fixed.to_string().contains("installed bd's hooks"),
        "{fixed}"
    );
    assert_eq!(a.json(&["hooks", "list"])[0]["stale"], false);
}

#[test]
fn doctor_notices_another_clone_writing_under_this_replica_id() {
    let cluster = Cluster::new();
    let a = cluster.clone("a", "alice");
    a.ok(&["init", "--prefix", "s"]);
    let id = a.create(&["shared id"]);
    a.ok(&["flush", "-q"]);
    assert_eq!(a.json(&["doctor"])["errors"], 0);
    // Another clone with a copied database appended to "our" file.
    let own = a.json(&["info"])["replica"].as_str().unwrap().to_string();
    let op = label_op(&id, "from-the-twin", "twin", &own, 99);
    let file = a.root.join(format!(".beads/ops/{own}.jsonl"));
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str(&(serde_json::to_string(&op).unwrap() + "\n"));
    std::fs::write(&file, text).unwrap();
    let out = a.bd(&["doctor", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        report.contains("another copy of this clone writes under its replica id"),
        "{report}"
    );
    // A rebuild reads this clone's own file too, so the twin's op is applied.
    let r = a.json(&["rebuild", "--force"]);
    assert_eq!(r["replaced"], true, "{r}");
    assert_eq!(
        a.json(&["show", &id])[0]["labels"],
        serde_json::json!(["from-the-twin"])
    );
    assert_eq!(a.json(&["doctor"])["errors"], 0);
}

#[test]
fn a_git_commit_never_leaves_a_daemon_behind() {
    let cluster = Cluster::new();
    let a = cluster.clone("a", "alice");
    a.ok(&["init", "--prefix", "s"]);
    a.ok(&["create", "hooked", "-q"]);
    std::fs::write(a.root.join("f.txt"), "x\n").unwrap();
    a.git(&["add", "f.txt"]);
    // Auto-start wanted (as on a developer's machine), yet the hook works
    // in-process: a commit must not leave a background process running.
    let out = Command::new("git")
        .args(["commit", "-q", "-m", "with hooks"])
        .current_dir(&a.root)
        .env("HOME", &a.home)
        .env("GIT_CONFIG_GLOBAL", a.home.join("gitconfig"))
        .env("BD_AUTO_START", "1")
        .env_remove("CI")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(a.json(&["daemon", "status"])["running"], false);
    let files = a.git(&["show", "--name-only", "--format=", "HEAD"]);
    assert!(
        files.contains(".beads/issues.jsonl"),
        "the hook still staged bd's files: {files}"
    );
}

impl Clone {
    /// Starts a shell loop creating up to `n` issues titled `<prefix>-<i>` as
    /// agent `actor`, printing each acknowledged id; it stops early once the
    /// file `stop` exists in the clone.
    fn spawn_writer(&self, prefix: &str, n: usize) -> std::process::Child {
        let script = format!(
            "for i in $(seq 1 {n}); do [ -e stop ] && break; \"$0\" create \"{prefix}-$i\" -q || exit 1; done"
        );
        Command::new("sh")
            .args(["-c", &script, BD])
            .current_dir(&self.root)
            .env("HOME", &self.home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", self.home.join("gitconfig"))
            .env("BD_ACTOR", prefix)
            .env("BD_AUTO_START", "0")
            .env_remove("BEADS_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

/// Regression (issue 10, item 3): with an agent creating in a loop, 26 of 72
/// syncs failed with "git: storing a file: failed to read file into stream"
/// (also "hashing a file", "updating the index"): libgit2 read the op file
/// while the daemon appended to it. Four writers per clone, each clone's
/// daemon serving them, and `bd sync` in both clones over and over.
#[test]
fn bd_sync_works_while_agents_write() {
    let cluster = Cluster::new();
    let (a, b, _) = pair(&cluster);
    b.ok(&["sync", "-q"]);
    for c in [&a, &b] {
        c.ok(&[
            "daemon",
            "start",
            "-q",
            "--idle-timeout",
            "120",
            "--flush-debounce",
            "50",
        ]);
    }
    let writers: Vec<_> = (0..4)
        .flat_map(|w| {
            [
                a.spawn_writer(&format!("a{w}"), 400),
                b.spawn_writer(&format!("b{w}"), 400),
            ]
        })
        .collect();
    let started = std::time::Instant::now();
    let mut failures = Vec::new();
    let mut syncs = 0;
    while started.elapsed() < std::time::Duration::from_secs(8) {
        for c in [&a, &b] {
            let out = c.bd(&["sync", "--json"]);
            syncs += 1;
            if !out.status.success() {
                failures.push(String::from_utf8_lossy(&out.stderr).into_owned());
            }
        }
    }
    for c in [&a, &b] {
        std::fs::write(c.root.join("stop"), "").unwrap();
    }
    let mut acked = Vec::new();
    for w in writers {
        let out = w.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        acked.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string),
        );
    }
    for c in [&a, &b] {
        std::fs::remove_file(c.root.join("stop")).unwrap();
    }
    assert!(
        failures.is_empty(),
        "{} of {syncs} syncs failed: {failures:#?}",
        failures.len()
    );
    // Two more rounds carry the last ops both ways.
    for _ in 0..2 {
        for c in [&a, &b] {
            c.ok(&["sync", "-q"]);
        }
    }
    assert_eq!(a.state_hash(), b.state_hash(), "both clones converge");
    for c in [&a, &b] {
        let all = ids(&c.json(&["list", "--all", "-n", "0"]));
        for id in &acked {
            assert!(all.binary_search(id).is_ok(), "{id} missing on {}", c.actor);
        }
        assert_eq!(
            c.git(&["status", "--porcelain", ".beads"]),
            "",
            "all committed"
        );
    }
    eprintln!(
        "{syncs} syncs, 0 failed, {} acknowledged creates on both clones",
        acked.len()
    );
}

/// A clone with no remote: `git init`, `bd init` (hooks and merge driver).
fn solo(cluster: &Cluster) -> Clone {
    let root = cluster.home().join("solo");
    std::fs::create_dir_all(&root).unwrap();
    git_in(&root, cluster.home(), &["init", "-q", "-b", "main"]);
    let solo = Clone {
        root,
        home: cluster.home().to_path_buf(),
        actor: "solo".into(),
        env: Vec::new(),
    };
    solo.ok(&["init", "--prefix", "s"]);
    solo
}

/// Regression (issue 10, item 5): create on a feature branch, create on main,
/// `git merge feature` stopped with a content conflict in the op file, and `bd
/// sync` then stripped the markers itself and exited 0. Op files are sets keyed
/// by op id: bd's merge driver unions them, so merge never stops on them.
#[test]
fn git_merge_of_branches_unions_op_files() {
    let cluster = Cluster::new();
    let c = solo(&cluster);
    c.create(&["base"]);
    c.ok(&["sync", "-q"]);
    c.git(&["checkout", "-q", "-b", "feature"]);
    c.create(&["on feature"]);
    c.ok(&["sync", "-q"]);
    c.git(&["checkout", "-q", "main"]);
    c.create(&["on main"]);
    c.ok(&["sync", "-q"]);
    c.git(&["merge", "-q", "--no-edit", "feature"]);
    assert_eq!(c.git(&["status", "--porcelain"]), "", "merged cleanly");
    assert_eq!(titles(&c), ["base", "on feature", "on main"]);
    let doctor = c.json(&["doctor"]);
    assert_eq!(doctor["errors"], 0, "{doctor}");
    c.ok(&["sync", "-q"]);
    assert_eq!(c.git(&["status", "--porcelain"]), "");
}

/// Regression (issue 10, item 5): markers that reach an op file anyway (a merge
/// made without the driver) stop `bd sync`, which changes nothing; `bd doctor
/// --fix` resolves them as the union of both sides' ops.
#[test]
fn bd_sync_refuses_an_op_file_with_conflict_markers() {
    let cluster = Cluster::new();
    let c = solo(&cluster);
    c.create(&["one"]);
    c.ok(&["sync", "-q"]);
    let own = std::fs::read_dir(c.root.join(".beads/ops"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let text = std::fs::read_to_string(&own).unwrap();
    let marked = format!("<<<<<<< HEAD\n{text}=======\n{text}>>>>>>> feature\n");
    std::fs::write(&own, &marked).unwrap();
    let head = c.git(&["rev-parse", "HEAD"]);
    let out = c.bd(&["sync"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("conflict markers") && err.contains(".jsonl"),
        "{err}"
    );
    assert!(err.contains("bd doctor --fix"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&own).unwrap(),
        marked,
        "file left as it was"
    );
    assert_eq!(c.git(&["rev-parse", "HEAD"]), head, "nothing committed");
    c.ok(&["doctor", "--fix"]);
    assert_eq!(
        std::fs::read_to_string(&own).unwrap(),
        text,
        "the union: each op once"
    );
    c.ok(&["sync", "-q"]);
}

/// The number of open conflicts: `bd conflicts`' length, which `bd stats`
/// and `conflicts.jsonl` must agree with.
pub(crate) fn open_conflicts(c: &Clone) -> usize {
    let listed = c.json(&["conflicts"]).as_array().unwrap().len();
    assert_eq!(
        c.json(&["stats"])["conflicts"].as_u64().unwrap() as usize,
        listed,
        "stats counts what conflicts lists"
    );
    c.ok(&["flush", "-q"]);
    let file = std::fs::read_to_string(c.root.join(".beads/conflicts.jsonl")).unwrap_or_default();
    assert_eq!(
        file.lines().count(),
        listed,
        "conflicts.jsonl agrees: {file}"
    );
    listed
}

/// Regression (issue 10, item 6): a title conflict on an issue that was then
/// deleted could never be cleared (`resolve` said the issue was deleted,
/// `--field deleted` said there was no conflict), and stayed in `stats` and
/// `conflicts.jsonl` for good. Deleting settles the conflicts it saw.
#[test]
fn a_conflict_on_a_deleted_issue_is_settled_by_the_delete() {
    let cluster = Cluster::new();
    let (a, b, id) = pair(&cluster);
    a.ok(&["update", &id, "--title", "alice's"]);
    b.ok(&["update", &id, "--title", "bob's"]);
    exchange(&a, &b);
    assert_eq!(open_conflicts(&a), 1);
    a.ok(&["delete", &id]);
    exchange(&a, &b);
    for c in [&a, &b] {
        assert_eq!(open_conflicts(c), 0, "{} keeps no conflict", c.actor);
    }
    assert_eq!(a.state_hash(), b.state_hash());
}

/// Regression (issue 10, item 6): clock-skew records were listed by
/// `conflicts` but not counted by `stats`, and could not be resolved by their
/// field. Resolving one applies the held op now, without dragging the local
/// clock to its stamp.
#[test]
fn a_clock_skew_record_is_counted_and_can_be_resolved() {
    let cluster = Cluster::new();
    let (a, b, id) = pair(&cluster);
    let op = future_title_op(&id);
    std::fs::write(
        b.root.join(".beads/ops/feedfacefeedface.jsonl"),
        serde_json::to_string(&op).unwrap() + "\n",
    )
    .unwrap();
    assert_eq!(open_conflicts(&b), 1);
    // Both clones hold it.
    exchange(&a, &b);
    assert_eq!(open_conflicts(&a), 1);
    let out = b.bd(&["resolve", &id, "--field", "clock_skew", "--value", "drop"]);
    assert_eq!(out.status.code(), Some(2), "never dropped");
    let r = b.json(&[
        "resolve",
        &id,
        "--field",
        "clock_skew",
        "--take",
        "feedface", // a replica prefix names it too
    ]);
    assert!(r.to_string().contains("from the future"), "{r}");
    // Its title write did not see the create's title: now an ordinary title
    // conflict, listed and counted alike; the clock-skew record is gone.
    assert_eq!(open_conflicts(&b), 1);
    assert_eq!(b.json(&["conflicts"])[0]["field"], "title");
    assert_eq!(b.json(&["info"])["held_ops"], 0);
    // The local clock stayed local: a new issue is stamped now, not an hour on.
    let fresh = b.json(&["create", "after"]);
    let stamp = fresh["created_at"].as_str().unwrap().to_string();
    let year_month_day_hour = &stamp[..13];
    let later = b.json(&["show", &id])[0]["updated_at"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(
        &later[..13],
        year_month_day_hour,
        "the held op kept its own stamp"
    );
    // A rebuild agrees (the op is applied from its file, not held again).
    let hash = b.state_hash();
    b.ok(&["rebuild"]);
    assert_eq!(b.state_hash(), hash);
    // Regression (review of issue 10, item 6): the decision was local, so
    // the other clone kept holding the op. It is an op now, and syncs.
    exchange(&a, &b);
    assert_eq!(a.json(&["info"])["held_ops"], 0);
    assert_eq!(a.json(&["conflicts"])[0]["field"], "title");
    assert_eq!(a.state_hash(), b.state_hash());
}

/// Regression (issue 10, items 2 and 3): another clone pushed a change to
/// this clone's own op file (a line repeated, as an old bd could write),
/// while this clone appended to it: `bd sync` failed merging ("settling a
/// conflict: could not initialize index entry") and kept failing. The file is
/// a set of ops: the merge is the union, each op once.
#[test]
fn a_repeated_line_pushed_into_our_op_file_merges_as_a_set() {
    let cluster = Cluster::new();
    let (a, b, _) = pair(&cluster);
    b.create(&["b's first"]);
    b.ok(&["sync", "-q"]);
    a.ok(&["sync", "-q"]);
    let replica = b.json(&["info"])["replica"].as_str().unwrap().to_string();
    let rel = format!(".beads/ops/{replica}.jsonl");
    let theirs = a.root.join(&rel);
    let text = std::fs::read_to_string(&theirs).unwrap();
    let last = text.lines().last().unwrap().to_string();
    std::fs::write(&theirs, format!("{text}{last}\n")).unwrap();
    let foreign_check = |c: &Clone| -> Value {
        c.json(&["doctor"])["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == "other clones' op files")
            .cloned()
            .expect("doctor checks other clones' files")
    };
    let warned = foreign_check(&a);
    assert_eq!(warned["level"], "warn", "{warned}");
    assert_eq!(warned["lines"][0]["line"], 2, "{warned}");
    a.git(&["add", &rel]);
    a.git(&["commit", "-q", "-m", "a repeated line"]);
    a.git(&["push", "-q", "origin", "HEAD:main"]);
    b.create(&["b's second"]);
    let out = b.bd(&["sync"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let own = std::fs::read_to_string(b.root.join(&rel)).unwrap();
    let lines: Vec<&str> = own.lines().collect();
    let unique: std::collections::BTreeSet<&str> = lines.iter().copied().collect();
    assert_eq!(lines.len(), unique.len(), "each op once: {own}");
    assert_eq!(lines.len(), 2);
    assert_eq!(b.json(&["doctor"])["errors"], 0);
    a.ok(&["sync", "-q"]);
    assert_eq!(a.state_hash(), b.state_hash());
    assert_eq!(a.json(&["doctor"])["errors"], 0);
    assert_eq!(foreign_check(&a)["level"], "ok", "the owner rewrote it");
}

/// Regression (review of issue 10): two working copies sharing one replica id
/// (a checkout copied with `cp -r`) both wrote seq 2 to "their" op file; the
/// second `bd sync` rewrote the file from its own database and deleted the
/// other copy's op from git for good. A rewrite never drops an op the file
/// holds: it takes it into the database first.
#[test]
fn a_copied_checkout_never_deletes_the_other_copys_ops() {
    let cluster = Cluster::new();
    let a = cluster.clone("a", "alice");
    a.ok(&["init", "--prefix", "s"]);
    a.create(&["parent"]);
    a.ok(&["sync", "-q"]);
    let twin_root = cluster.home().join("a2");
    let cp = Command::new("cp")
        .args(["-r", a.root.to_str().unwrap(), twin_root.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(cp.success());
    let twin = Clone {
        root: twin_root,
        home: cluster.home().to_path_buf(),
        actor: "twin".into(),
        env: Vec::new(),
    };
    a.create(&["made in A"]);
    twin.create(&["made in the copy"]);
    a.ok(&["sync", "-q"]);
    twin.ok(&["sync", "-q"]);
    a.ok(&["sync", "-q"]);
    let want = ["made in A", "made in the copy", "parent"];
    let fresh = cluster.clone("c", "carol");
    fresh.ok(&["init"]);
    assert_eq!(titles(&fresh), want, "both writes are in git");
    assert_eq!(titles(&a), want);
    assert_eq!(titles(&twin), want);
    assert_eq!(a.state_hash(), fresh.state_hash());
    assert_eq!(twin.state_hash(), fresh.state_hash());
    // The shared id is named, with what to do about it.
    let out = twin.bd(&["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("another copy of this clone") && text.contains("bd init"),
        "{text}"
    );
}

/// Regression (review of issue 10, item 5): `git pull --rebase` stopped half
/// way: the post-checkout hook bd installed regenerated bd's files when the
/// rebase checked out upstream, and git refused to replay the local commit
/// over them ("your local changes would be overwritten"). While git rebases,
/// bd leaves its files alone.
#[test]
fn git_pull_rebase_is_not_stopped_by_bds_hooks() {
    let cluster = Cluster::new();
    let (a, b, _) = pair(&cluster);
    b.ok(&["sync", "-q"]);
    a.create(&["from a"]);
    a.ok(&["sync", "-q"]);
    b.create(&["from b"]);
    b.ok(&["flush", "-q"]);
    b.git(&["add", ".beads"]);
    b.git(&["commit", "-q", "-m", "b's work"]);
    let out = git_in_raw(
        &b.root,
        cluster.home(),
        &["pull", "-q", "--rebase", "origin", "main"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !b.root.join(".git/rebase-merge").exists() && !b.root.join(".git/rebase-apply").exists(),
        "the rebase finished"
    );
    assert_eq!(titles(&b), ["from a", "from b", "shared"]);
    b.ok(&["sync", "-q"]);
    a.ok(&["sync", "-q"]);
    assert_eq!(a.state_hash(), b.state_hash());
}

/// Runs git hermetically (the cluster's HOME and config only); bd's hooks
/// inside it never start a daemon.
fn git_in_raw(dir: &Path, home: &Path, args: &[&str]) -> Output {
    // The built bd first on PATH, as a user's would be (hooks in a committed
    // hooks directory call the `bd` on PATH).
    let bd_dir = Path::new(crate::common::BD).parent().unwrap();
    let path = std::env::join_paths(std::iter::once(bd_dir.to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .unwrap();
    Command::new("git")
        .args(args)
        .env("PATH", path)
        .current_dir(dir)
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", home.join("gitconfig"))
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        // bd's hooks run inside git: no daemon behind the test's back.
        .env("BD_AUTO_START", "0")
        .env("BD_ACTOR", "git-hook")
        .stdin(Stdio::null())
        .output()
        .expect("git")
}

/// Regression (issue 11, item 5): right after bd's own push, `bd sync
/// --status` said there were commits to push: it counted against bd's
/// record of the remote branch, which the push did not move.
#[test]
fn sync_status_right_after_a_push_has_nothing_to_push() {
    let cluster = Cluster::new();
    let (a, _b, _) = pair(&cluster);
    a.create(&["one more"]);
    let r = a.json(&["sync"]);
    assert_eq!(r["pushed"], true, "{r}");
    let status = a.json(&["sync", "--status"]);
    assert!(
        status["notes"]
            .to_string()
            .contains("0 commit(s) to push, 0 to bring in"),
        "{status}"
    );
}

/// Regression (issue 11, item 12): with no git identity, `bd sync` committed
/// as a made-up author without a word; on a branch with no upstream it made
/// the branch on the remote without a word.
#[test]
fn sync_says_who_it_commits_as_and_which_branch_it_creates() {
    let cluster = Cluster::new();
    let (a, _b, _id) = pair(&cluster);
    a.git(&["checkout", "-q", "-b", "feature"]);
    a.create(&["on a new branch"]);
    let r = a.json(&["sync"]);
    assert_eq!(r["pushed"], true, "{r}");
    let notes = r["notes"].to_string();
    assert!(
        notes.contains("feature has no upstream configured"),
        "{notes}"
    );
    assert!(
        notes.contains("created branch feature on origin"),
        "{notes}"
    );
    assert!(!notes.contains("no identity"), "{notes}");

    // Nobody configured: a HOME without a git config.
    let bare_home = tempfile::tempdir().unwrap();
    std::fs::write(bare_home.path().join("gitconfig"), "").unwrap();
    a.create(&["anonymous"]);
    let out = Command::new(crate::common::BD)
        .args(["sync", "--json"])
        .current_dir(&a.root)
        .env("HOME", bare_home.path())
        .env("XDG_CONFIG_HOME", bare_home.path())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", bare_home.path().join("gitconfig"))
        .env("BD_ACTOR", "alice")
        .env("BD_AUTO_START", "0")
        .output()
        .unwrap();
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        r["notes"].to_string().contains("git has no identity here"),
        "{r} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Regression (issue 11, item 9): `bd doctor` missed a broken `config.json`
/// (which stops every command), garbage appended to `issues.jsonl`, and gave
/// no guidance for conflict markers in another clone's op file.
#[test]
fn doctor_checks_every_file_bd_reads_and_names_the_cure() {
    let cluster = Cluster::new();
    let (a, b, _id) = pair(&cluster);
    b.create(&["b's"]);
    b.ok(&["sync", "-q"]);
    a.ok(&["sync", "-q"]);
    let report = |c: &Clone| -> Value {
        serde_json::from_slice(&c.bd(&["doctor", "--json"]).stdout).unwrap()
    };
    let level = |r: &Value, name: &str| -> String {
        r["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| c["level"].as_str().unwrap().to_string())
            .unwrap_or_default()
    };
    // Garbage after the snapshot's records: reported by line, fixed by --fix.
    let snapshot = a.root.join(".beads/issues.jsonl");
    let mut text = std::fs::read_to_string(&snapshot).unwrap();
    let lines = text.lines().count();
    text.push_str("this is not json\n");
    std::fs::write(&snapshot, text).unwrap();
    let r = report(&a);
    assert_eq!(level(&r, "snapshot"), "error", "{r}");
    assert!(
        r.to_string().contains(&format!("\"line\":{}", lines + 1)),
        "{r}"
    );
    a.ok(&["doctor", "--fix", "-q"]);
    assert_eq!(level(&report(&a), "snapshot"), "ok");

    // Conflict markers in another clone's op file: the line says what cures it.
    let b_replica = b.json(&["info"])["replica"].as_str().unwrap().to_string();
    let theirs = a.root.join(format!(".beads/ops/{b_replica}.jsonl"));
    let t = std::fs::read_to_string(&theirs).unwrap();
    std::fs::write(&theirs, format!("<<<<<<< HEAD\n{t}=======\n{t}>>>>>>> x\n")).unwrap();
    let r = report(&a);
    assert!(
        r.to_string().contains("git conflict marker") && r.to_string().contains("doctor --fix"),
        "{r}"
    );
    a.ok(&["doctor", "--fix", "-q"]);
    assert_eq!(std::fs::read_to_string(&theirs).unwrap(), t, "the union");

    // A config.json that does not parse.
    let config = a.root.join(".beads/config.json");
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, "{\"prefix\": ").unwrap();
    let out = a.bd(&["doctor", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(level(&r, "config"), "error", "{r}");
    assert!(r.to_string().contains("git checkout -- "), "{r}");
    std::fs::write(&config, good).unwrap();
    assert_eq!(level(&report(&a), "config"), "ok");
}

/// Regression (review of issue 10): two clones of an empty origin both ran
/// `bd init`; the second `bd sync` stopped on `config.json` ("the remote's
/// changes conflict with yours"), and the hint's `git pull` failed too. The
/// two configs join, the remote's settings winning (its issues carry its
/// prefix), and the clones share one tracker.
#[test]
fn two_clones_that_ran_init_before_pulling_join_one_tracker() {
    let cluster = Cluster::new();
    let a = cluster.clone("a", "alice");
    let b = cluster.clone("b", "bob");
    a.ok(&["init", "--prefix", "a"]);
    let first = a.create(&["made on a"]);
    a.ok(&["sync", "-q"]);
    b.ok(&["init", "--prefix", "b"]);
    b.ok(&["config", "set", "custom.mine", "kept"]);
    let out = b.bd(&["sync"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        b.ok(&["config", "get", "prefix", "-q"]),
        "a\n",
        "the remote's prefix"
    );
    assert_eq!(b.ok(&["config", "get", "custom.mine", "-q"]), "kept\n");
    assert_eq!(b.title(&first), "made on a");
    let made = b.create(&["made on b"]);
    assert!(made.starts_with("a-"), "{made}");
    b.ok(&["sync", "-q"]);
    a.ok(&["sync", "-q"]);
    assert_eq!(a.state_hash(), b.state_hash());
}

/// Regression (issue 12 review): the merge driver was registered as
/// `bd merge-driver … || true`, so with the bd binary moved or gone git took
/// the failing driver for a clean merge and kept this side's op file, dropping
/// the other side's ops without a word. Now the merge stops with a conflict,
/// and doctor calls the old registration stale.
#[test]
fn a_merge_driver_whose_bd_is_gone_stops_the_merge_instead_of_dropping_ops() {
    let cluster = Cluster::new();
    let a = cluster.clone("a", "alice");
    a.ok(&["init", "--prefix", "s"]);
    let no_hooks = ["-c", "core.hooksPath=/nonexistent-hooks"];
    let git = |args: &[&str]| {
        let mut all = no_hooks.to_vec();
        all.extend_from_slice(args);
        a.git(&all)
    };
    let ops = a.root.join(".beads/ops/ffffffffffffffff.jsonl");
    std::fs::write(&ops, "{\"line\":0}\n").unwrap();
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "base"]);
    git(&["checkout", "-q", "-b", "side"]);
    std::fs::write(&ops, "{\"line\":0}\n{\"line\":\"side\"}\n").unwrap();
    git(&["commit", "-q", "-a", "-m", "side"]);
    git(&["checkout", "-q", "-"]);
    std::fs::write(&ops, "{\"line\":0}\n{\"line\":\"main\"}\n").unwrap();
    git(&["commit", "-q", "-a", "-m", "main"]);
    let driver = a.git(&["config", "merge.bd.driver"]);
    assert!(!driver.contains("|| true"), "{driver}");
    a.git(&[
        "config",
        "merge.bd.driver",
        &driver.trim().replace(crate::common::BD, "/nonexistent/bd"),
    ]);
    let merged = git_in_raw(
        &a.root,
        &a.home,
        &["-c", "core.hooksPath=/nonexistent-hooks", "merge", "side"],
    );
    assert!(
        !merged.status.success(),
        "the merge must stop, not keep one side: {}",
        String::from_utf8_lossy(&merged.stdout)
    );
    let unmerged = a.git(&["ls-files", "-u"]);
    assert!(unmerged.contains("ffffffffffffffff.jsonl"), "{unmerged}");
    // An old `|| true` registration is stale: doctor says so and --fix renews it.
    a.git(&["merge", "--abort"]);
    a.git(&[
        "config",
        "merge.bd.driver",
        &format!("'{}' merge-driver %O %A %B %P || true", crate::common::BD),
    ]);
    // (Doctor exits 1 here anyway: the made-up op file is not real ops.)
    let doctor: Value =
        serde_json::from_slice(&a.bd(&["doctor", "--json"]).stdout).expect("doctor json");
    let check = doctor["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "merge driver")
        .unwrap()
        .clone();
    assert_ne!(check["level"], "ok", "{check}");
    let _ = a.bd(&["doctor", "--fix"]);
    assert!(!a.git(&["config", "merge.bd.driver"]).contains("|| true"));
}

/// A remote that keeps failing on the network opens its breaker: after three
/// failures in a row `bd sync` skips it (no network wait, exit 0, said in a
/// note and in `--status`) until its probe time; `--retry-now` tries anyway,
/// and a success closes it.
#[test]
fn a_remote_failing_on_the_network_is_skipped_until_its_probe_time() {
    let cluster = Cluster::new();
    let a = cluster.clone("a", "alice");
    a.ok(&["init", "--prefix", "w"]);
    a.ok(&["sync"]);
    let good = a.git(&["remote", "get-url", "origin"]);
    a.git(&[
        "remote",
        "set-url",
        "origin",
        "git://127.0.0.1:1/nothing.git",
    ]);
    for i in 0..3 {
        a.ok(&["create", &format!("offline {i}"), "-q"]);
        let r = a.json(&["sync"]);
        assert_eq!(r["offline"], true, "{r}");
        assert!(
            !r["notes"].to_string().contains("was not tried"),
            "attempt {i} tries: {r}"
        );
    }
    let skipped = a.json(&["sync"]);
    assert_eq!(skipped["offline"], true);
    assert!(
        skipped["notes"].to_string().contains("was not tried"),
        "{skipped}"
    );
    assert_eq!(skipped["remote_breaker"]["state"], "open", "{skipped}");
    let status = a.ok(&["sync", "--status"]);
    assert!(status.contains("remote breaker open"), "{status}");
    let mesh: Value = serde_json::from_str(&a.ok(&["mesh", "status", "--json"])).unwrap();
    assert_eq!(mesh["git_breaker"]["state"], "open", "{mesh}");
    let forced = a.json(&["sync", "--retry-now"]);
    assert!(
        !forced["notes"].to_string().contains("was not tried"),
        "{forced}"
    );
    // Pointing the remote elsewhere starts afresh: tried at once.
    a.git(&["remote", "set-url", "origin", good.trim()]);
    let back = a.json(&["sync"]);
    assert_eq!(back["pushed"], true, "{back}");
    assert_eq!(back["remote_breaker"]["state"], "closed", "{back}");
    assert_eq!(a.json(&["sync"])["offline"], false);
}

/// Moves of one issue made on two clones at once (bd-5smj): each took away
/// the parent edge it saw and added its own, and the child used to end up
/// under both parents with no conflict. Now it shows one parent (the later
/// move), the same on both clones, with a `parent` conflict listing both;
/// a move (or `bd resolve --field parent`) settles it everywhere. A second
/// parent-child edge by `bd dep add` is refused.
#[test]
fn moves_crossed_on_two_clones_leave_one_parent_and_a_parent_conflict() {
    let cluster = Cluster::new();
    let (a, b, [p1, p2, p3, x]) = crossed_moves(&cluster);
    let parents = |c: &Clone| -> Vec<String> {
        c.json(&["show", &x])[0]["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["type"] == "parent-child")
            .map(|d| d["depends_on_id"].as_str().unwrap().to_string())
            .collect()
    };
    let (pa, pb) = (parents(&a), parents(&b));
    assert_eq!(pa.len(), 1, "one parent: {pa:?}");
    assert_eq!(pa, pb, "the same on both clones");
    assert!(pa[0] == p2 || pa[0] == p3, "{pa:?}");
    for c in [&a, &b] {
        let conflicts = c.json(&["conflicts"]);
        let on_x: Vec<&Value> = conflicts
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["issue_id"] == x.as_str() && k["field"] == "parent")
            .collect();
        assert_eq!(on_x.len(), 1, "{conflicts}");
        let mut values: Vec<&str> = on_x[0]["contenders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["value"].as_str().unwrap())
            .collect();
        values.sort();
        let mut want = vec![p2.as_str(), p3.as_str()];
        want.sort();
        assert_eq!(values, want, "{conflicts}");
    }
    // Only the shown parent counts: the other epic holds no open child.
    let hidden = if pa[0] == p2 { &p3 } else { &p2 };
    let ready = ids(&a.json(&["ready", "-n", "0"]));
    assert!(
        ready.contains(hidden),
        "{hidden} has no child now: {ready:?}"
    );
    assert!(!ready.contains(&pa[0]), "{} holds {x}: {ready:?}", pa[0]);
    // A second parent by hand is refused.
    let out = a.bd(&["dep", "add", &x, &p1, "-t", "parent-child"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("one parent"));
    // Settled by taking the hidden one: every other edge goes.
    let settled = a.json(&["resolve", &x, "--field", "parent", "--value", hidden]);
    assert_eq!(settled[0]["id"], x.as_str(), "{settled}");
    exchange(&a, &b);
    for c in [&a, &b] {
        assert_eq!(parents(c), vec![hidden.clone()]);
        assert!(
            !c.json(&["conflicts"])
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["field"] == "parent"),
            "settled everywhere"
        );
    }
    assert_eq!(a.state_hash(), b.state_hash());
}

/// Moves that crossed on two clones can make a loop of parents (x under y
/// on one, y under x on the other): every command still answers, nothing
/// in the loop or under it is ready (each waits for the other), on both
/// clones and after a rebuild alike, and `bd dep cycles` names the loop; a
/// move out of it mends it. (Before, the loop kept whatever blocked flags
/// it had when it formed: two tasks in a loop were both ready, and a
/// rebuild could say otherwise.)
#[test]
fn a_loop_of_parents_made_on_two_clones_is_blocked_listed_and_mended_by_a_move() {
    let cluster = Cluster::new();
    let (a, b, _) = pair(&cluster);
    let x = a.create(&["x"]);
    let y = a.create(&["y"]);
    exchange(&a, &b);
    a.ok(&["update", &x, "--parent", &y]);
    b.ok(&["update", &y, "--parent", &x]);
    exchange(&a, &b);
    let z = a.create(&["under the loop", "--parent", &x]);
    exchange(&a, &b);
    b.ok(&["rebuild", "-q"]);
    for c in [&a, &b] {
        let ready = ids(&c.json(&["ready", "-n", "0"]));
        for i in [&x, &y, &z] {
            assert!(
                !ready.contains(i),
                "in (or under) a loop of parents, nothing is ready: {ready:?}"
            );
        }
        let cycles = c.json(&["dep", "cycles"]);
        let listed = cycles.to_string();
        assert!(listed.contains(&x) && listed.contains(&y), "{listed}");
    }
    a.ok(&["update", &y, "--parent", ""]);
    exchange(&a, &b);
    for c in [&a, &b] {
        let ready = ids(&c.json(&["ready", "-n", "0"]));
        assert!(
            ready.contains(&x) && ready.contains(&y) && ready.contains(&z),
            "{ready:?}"
        );
        assert_eq!(c.json(&["dep", "cycles"]), serde_json::json!([]));
    }
}

/// A `parent` conflict settled two ways at once, on two clones (each keeping
/// its own move): the issue stays under one parent, the same on both, and
/// the conflict is listed again (the review found it with no parent at all:
/// each settlement removed the other's edge, and kept its own without
/// writing it again).
#[test]
fn a_parent_conflict_settled_two_ways_at_once_keeps_a_parent_and_the_conflict() {
    let cluster = Cluster::new();
    let (a, b, [_, p2, p3, x]) = crossed_moves(&cluster);
    a.ok(&["resolve", &x, "--field", "parent", "--value", &p2]);
    b.ok(&["resolve", &x, "--field", "parent", "--take", "bob"]);
    exchange(&a, &b);
    for c in [&a, &b] {
        let parents: Vec<String> = c.json(&["show", &x])[0]["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["type"] == "parent-child")
            .map(|d| d["depends_on_id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(parents.len(), 1, "one parent still: {parents:?}");
        assert!(parents[0] == p2 || parents[0] == p3, "{parents:?}");
        let conflicts = c.json(&["conflicts"]);
        assert!(
            conflicts
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["issue_id"] == x.as_str() && k["field"] == "parent"),
            "settled two ways: a conflict again: {conflicts}"
        );
    }
    assert_eq!(a.state_hash(), b.state_hash());
}

/// Two clones where `x` (under `p1`) was moved under `p2` on a (alice) and
/// under `p3` on b (bob) without either seeing the other's move, then
/// exchanged: `(a, b, [p1, p2, p3, x])`.
fn crossed_moves(cluster: &Cluster) -> (Clone, Clone, [String; 4]) {
    let (a, b, _) = pair(cluster);
    let p1 = a.create(&["first home", "-t", "epic"]);
    let p2 = a.create(&["second home", "-t", "epic"]);
    let p3 = a.create(&["third home", "-t", "epic"]);
    let x = a.create(&["moved around", "--parent", &p1]);
    exchange(&a, &b);
    a.ok(&["update", &x, "--parent", &p2]);
    b.ok(&["update", &x, "--parent", &p3]);
    exchange(&a, &b);
    (a, b, [p1, p2, p3, x])
}

/// A close that lost a status conflict to a later write on another clone:
/// `bd show` prints the status with its conflict and no `Closed:` line (the
/// close's time stays in `bd conflicts`, not shown as if it were closed;
/// bd-nn3b).
#[test]
fn a_close_that_lost_a_status_conflict_is_not_shown_as_closed() {
    let cluster = Cluster::new();
    let (a, b, id) = pair(&cluster);
    exchange(&a, &b);
    a.ok(&["close", &id]);
    std::thread::sleep(std::time::Duration::from_millis(20));
    b.ok(&["update", &id, "--status", "in_progress"]);
    exchange(&a, &b);
    for c in [&a, &b] {
        let shown = c.ok(&["show", &id]);
        assert!(
            shown.contains("in_progress") && shown.contains("CONFLICT"),
            "{shown}"
        );
        assert!(!shown.contains("Closed:"), "{shown}");
    }
}
