//! Two creates of one id on two clones (issue 10, item 4): child numbers are a
//! local maximum + 1, and two `--id`s can meet the same way. They stay two
//! issues with ids every clone derives alike; see the README's "Two creates
//! of one id".

use crate::sync::{Cluster, exchange, ids, open_conflicts, pair};
use serde_json::Value;

/// The issues of `c` whose id starts with `prefix`, sorted.
fn issues_under(c: &crate::sync::Clone, prefix: &str) -> Vec<String> {
    ids(&c.json(&["list", "--all"]))
        .into_iter()
        .filter(|id| id.starts_with(prefix))
        .collect()
}

fn show(c: &crate::sync::Clone, id: &str) -> Value {
    c.json(&["show", id])[0].clone()
}

/// Regression (issue 10, item 4): on clone A `bd create --parent X` gave X.1,
/// on clone B another create gave X.1 too, and after a sync there was one
/// issue X.1 with a title conflict: two pieces of work merged into one.
#[test]
fn two_children_numbered_alike_on_two_clones_stay_two_issues() {
    let cluster = Cluster::new();
    let (a, b, parent) = pair(&cluster);
    // A works in direct mode, B through its daemon: one rule in both.
    b.ok(&["daemon", "start", "-q", "--idle-timeout", "120"]);
    assert_eq!(b.json(&["info"])["mode"], "daemon");
    let child = format!("{parent}.1");
    assert_eq!(a.create(&["child from A", "--parent", &parent]), child);
    assert_eq!(b.create(&["child from B", "--parent", &parent]), child);
    a.ok(&["update", &child, "--notes", "A's notes"]);
    b.ok(&["comment", "add", &child, "B's comment"]);
    b.ok(&["update", &child, "--priority", "0"]);
    exchange(&a, &b);

    let on_a = issues_under(&a, &child);
    assert_eq!(on_a.len(), 2, "two issues, not one: {on_a:?}");
    assert_eq!(
        issues_under(&b, &child),
        on_a,
        "the same ids on both clones"
    );
    let displaced = on_a[1].clone();
    assert!(
        displaced.starts_with(&format!("{child}~")),
        "the later create moves aside: {displaced}"
    );
    for c in [&a, &b] {
        let kept = show(c, &child);
        assert_eq!(
            kept["title"], "child from A",
            "the earlier create keeps X.1"
        );
        assert_eq!(kept["notes"], "A's notes");
        assert_eq!(kept["priority"], 2, "B's edit did not reach A's issue");
        assert!(kept["comments"].as_array().is_none_or(|c| c.is_empty()));
        assert_eq!(kept["displaced"], serde_json::json!([displaced]));
        assert!(kept.get("conflicts").is_some_and(|x| x[0]["field"] == "id"));

        let moved = show(c, &displaced);
        assert_eq!(moved["title"], "child from B");
        assert_eq!(moved["priority"], 0);
        assert_eq!(moved["comments"][0]["text"], "B's comment");
        assert_eq!(moved["displaced_from"], child.as_str());
        assert_eq!(
            moved["dependencies"][0]["depends_on_id"], parent,
            "still a child of X"
        );
        let human = c.ok(&["show", &child]);
        assert!(human.contains(&displaced), "show names the other: {human}");

        // One notice, counted alike by conflicts, stats and conflicts.jsonl.
        assert_eq!(open_conflicts(c), 1);
        let notice = &c.json(&["conflicts"])[0];
        assert_eq!(notice["issue_id"], child.as_str());
        assert_eq!(notice["field"], "id");
        assert_eq!(notice["contenders"][0]["value"]["id"], child.as_str());
        assert_eq!(notice["contenders"][1]["value"]["id"], displaced.as_str());
        assert_eq!(notice["contenders"][1]["value"]["title"], "child from B");
        let listed = c.ok(&["conflicts"]);
        assert!(listed.contains("--field id --value ack"), "{listed}");
    }
    assert_eq!(a.state_hash(), b.state_hash());

    // Once the collision is known each clone addresses either issue, and the
    // edits land where they were meant on both.
    b.ok(&["update", &displaced, "--title", "B's child, renamed"]);
    a.ok(&["update", &child, "--title", "A's child, renamed"]);
    exchange(&a, &b);
    for c in [&a, &b] {
        assert_eq!(c.title(&displaced), "B's child, renamed");
        assert_eq!(c.title(&child), "A's child, renamed");
    }

    // Settling: only acknowledging is a resolution; then the notice is gone
    // on every clone and both issues stay.
    let out = b.bd(&["resolve", &child, "--field", "id", "--value", "keep"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--value ack"));
    b.ok(&["resolve", &displaced, "--field", "id", "--value", "ack"]);
    assert_eq!(open_conflicts(&b), 0);
    let again = b.bd(&["resolve", &child, "--field", "id", "--value", "ack"]);
    assert!(!again.status.success(), "nothing left to acknowledge");
    exchange(&a, &b);
    for c in [&a, &b] {
        assert_eq!(open_conflicts(c), 0);
        assert_eq!(issues_under(c, &child).len(), 2);
    }
    assert_eq!(a.state_hash(), b.state_hash());

    // A rebuild from the op files derives the same issues.
    b.ok(&["rebuild", "-q"]);
    assert_eq!(b.state_hash(), a.state_hash());

    // An export holds the displaced id; importing it again changes nothing,
    // and a fresh tracker takes it in as it is.
    let export = cluster.home().join("export.jsonl");
    a.ok(&["export", "-o", export.to_str().unwrap()]);
    let again = a.json(&["import", "-i", export.to_str().unwrap()]);
    assert_eq!(again["created"], 0, "{again}");
    assert_eq!(again["updated"], 0, "{again}");
    assert_eq!(a.state_hash(), b.state_hash());
    let fresh = crate::common::TestEnv::new();
    fresh.ok(&["import", "-i", export.to_str().unwrap()]);
    let title = |id: &str| fresh.json(&["show", id])[0]["title"].clone();
    assert_eq!(title(&displaced), "B's child, renamed");
    assert_eq!(title(&child), "A's child, renamed");
    assert_eq!(
        fresh.json(&["conflicts"]),
        serde_json::json!([]),
        "imported as two plain issues"
    );
}

/// Issue 10, item 4, in the other delivery order: the clone whose own create
/// was earlier syncs last, so the other clone's issue, already local and
/// edited, is the one that moves aside; explicit `--id`s meet the same way.
#[test]
fn an_explicit_id_used_on_two_clones_keeps_the_earlier_create_in_any_order() {
    let cluster = Cluster::new();
    let (a, b, _) = pair(&cluster);
    b.ok(&["create", "B's plan", "--id", "s-plan"]);
    std::thread::sleep(std::time::Duration::from_millis(5));
    a.ok(&["create", "A's plan", "--id", "s-plan"]);
    a.ok(&["label", "add", "s-plan", "from-a"]);
    // A publishes first, B merges it (B's own, earlier create keeps the id
    // there at once), then A learns of B's.
    exchange(&a, &b);
    for c in [&a, &b] {
        let plans = issues_under(c, "s-plan");
        assert_eq!(plans.len(), 2, "{plans:?}");
        assert_eq!(c.title("s-plan"), "B's plan");
        let moved = show(c, &plans[1]);
        assert_eq!(moved["title"], "A's plan");
        assert_eq!(moved["labels"], serde_json::json!(["from-a"]));
        assert_eq!(open_conflicts(c), 1);
    }
    assert_eq!(a.state_hash(), b.state_hash());
    // The displaced id is not free for a new --id, and `~` is never accepted.
    let plans = issues_under(&a, "s-plan");
    let out = a.bd(&["create", "again", "--id", &plans[1]]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue 10, item 4: a third clone that saw only the later create edits it;
/// when the earlier create arrives the edit stays with the issue it was made
/// on (ops name the create they change), not with the id's new holder.
#[test]
fn an_edit_made_before_the_collision_was_seen_stays_with_its_issue() {
    let cluster = Cluster::new();
    let (a, b, parent) = pair(&cluster);
    let c = cluster.clone("c", "carol");
    c.ok(&["init"]);
    let child = format!("{parent}.1");
    // A creates first but keeps it to itself for now.
    a.create(&["A's child", "--parent", &parent]);
    std::thread::sleep(std::time::Duration::from_millis(5));
    b.create(&["B's child", "--parent", &parent]);
    b.commit_ops_and_push("b");
    c.pull();
    c.ok(&["update", &child, "--title", "B's child, edited by carol"]);
    c.commit_ops_and_push("c");
    // A merges everything (its own create is the earlier one) and publishes.
    a.ok(&["flush", "-q"]);
    a.git(&["add", ".beads/ops"]);
    a.git(&["commit", "-q", "-m", "a"]);
    a.pull();
    a.git(&["push", "-q", "origin", "HEAD:main"]);
    b.pull();
    c.pull();
    for x in [&a, &b, &c] {
        let all = issues_under(x, &child);
        assert_eq!(all.len(), 2, "{all:?}");
        assert_eq!(
            x.title(&child),
            "A's child",
            "carol's edit did not move to A's"
        );
        assert_eq!(x.title(&all[1]), "B's child, edited by carol");
    }
    assert_eq!(a.state_hash(), c.state_hash());
    assert_eq!(b.state_hash(), c.state_hash());
}
