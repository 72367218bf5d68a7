//! `bd batch`: all or nothing, `$N` references, in both modes.

use crate::common::{BD, Mode, TestEnv};
use std::io::Write;
use std::process::{Command, Output, Stdio};

fn batch(env: &TestEnv, lines: &[&str], extra: &[&str]) -> Output {
    let mut args = vec!["batch"];
    args.extend_from_slice(extra);
    let mut child = env
        .command(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all((lines.join("\n") + "\n").as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn for_each_mode(test: impl Fn(&TestEnv)) {
    for mode in [Mode::Direct, Mode::Daemon] {
        let env = TestEnv::new_in(mode);
        test(&env);
        assert_eq!(env.json(&["info"])["mode"], mode.name());
    }
}

#[test]
fn a_batch_applies_everything_with_references() {
    for_each_mode(|env| {
        let out = batch(
            env,
            &[
                r#"# plan an epic"#,
                r#"{"op":"create","title":"Epic","issue_type":"epic","priority":1}"#,
                r#"{"op":"create","title":"Child","parent":"$1","labels":["x"]}"#,
                r#"{"op":"create","title":"Blocker"}"#,
                "",
                r#"{"op":"dep_add","issue":"$2","depends_on":"$3","dep_type":"blocks"}"#,
                r#"{"op":"update","ids":["$3"],"claim":true}"#,
                r#"{"op":"comment_add","id":"$2","text":"made in a batch"}"#,
            ],
            &["--json"],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 6);
        let epic = v[0]["data"]["id"].as_str().unwrap().to_string();
        let child = v[1]["data"]["id"].as_str().unwrap().to_string();
        assert_eq!(child, format!("{epic}.1"));
        let shown = &env.json(&["show", &child])[0];
        assert_eq!(shown["labels"], serde_json::json!(["x"]));
        assert_eq!(shown["blocked"], true);
        assert_eq!(shown["comments"][0]["text"], "made in a batch");
        assert_eq!(shown["dependencies"].as_array().unwrap().len(), 2);
    });
}

#[test]
fn a_batch_failing_halfway_leaves_no_trace() {
    for_each_mode(|env| {
        let existing = env.create(&["existing"]);
        let before = env.fingerprint();
        let claim_taken = format!(r#"{{"op":"update","ids":["{existing}"],"claim":true}}"#);
        env.ok(&["update", &existing, "--claim", "--actor", "someone-else"]);
        let before_claimed = env.fingerprint();
        assert_ne!(before, before_claimed);
        for (lines, code, needle) in [
            (
                vec![
                    r#"{"op":"create","title":"a"}"#,
                    r#"{"op":"create","title":""}"#,
                ],
                2,
                "#2 (create)",
            ),
            (
                vec![r#"{"op":"create","title":"a"}"#, claim_taken.as_str()],
                3,
                "#2 (update)",
            ),
            (
                vec![
                    r#"{"op":"create","title":"a"}"#,
                    r#"{"op":"update","ids":["$5"],"priority":1}"#,
                ],
                2,
                "not run yet",
            ),
            (
                vec![r#"{"op":"comment_add","id":"t-nope","text":"x"}"#],
                1,
                "#1",
            ),
            (vec![r#"{"op":"list"}"#], 2, "can be batched"),
            (
                vec![r#"{"op":"create","title":"a"}"#, "{not json"],
                2,
                "stdin:2",
            ),
        ] {
            let out = batch(env, &lines, &[]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(code), "{lines:?}: {err}");
            assert!(err.contains(needle), "{lines:?}: {err}");
            assert_eq!(env.fingerprint(), before_claimed, "{lines:?} left a trace");
        }
    });
}

#[test]
fn four_agents_times_twenty_five_batches_are_each_all_or_nothing() {
    let env = TestEnv::new();
    env.ok(&["daemon", "start", "--idle-timeout", "120"]);
    let file = env.root().join("good.jsonl");
    std::fs::write(&file, "{\"op\":\"create\",\"title\":\"parent\"}\n{\"op\":\"create\",\"title\":\"kid\",\"parent\":\"$1\"}\n{\"op\":\"label_add\",\"ids\":[\"$2\"],\"labels\":[\"ok\"]}\n").unwrap();
    let bad = env.root().join("bad.jsonl");
    std::fs::write(&bad, "{\"op\":\"create\",\"title\":\"doomed\"}\n{\"op\":\"create\",\"title\":\"doomed kid\",\"parent\":\"$1\"}\n{\"op\":\"create\",\"title\":\"\"}\n").unwrap();
    let procs: Vec<_> = (0..4)
        .map(|p| {
            let script = "for i in $(seq 1 25); do if [ $((i % 2)) = 0 ]; then \"$0\" batch -f \"$1\" -q || exit 1; else \"$0\" batch -f \"$2\" -q 2>/dev/null && exit 2; fi; done; exit 0";
            Command::new("sh")
                .args(["-c", script, BD, file.to_str().unwrap(), bad.to_str().unwrap()])
                .current_dir(env.root())
                .env("BD_ACTOR", format!("agent{p}"))
                .env("BD_AUTO_START", "0")
                .spawn()
                .unwrap()
        })
        .collect();
    for p in procs {
        assert_eq!(p.wait_with_output().unwrap().status.code(), Some(0));
    }
    let all = env.json(&["list", "--all"]);
    let titles: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles.iter().filter(|t| **t == "parent").count(), 4 * 12);
    assert_eq!(titles.iter().filter(|t| **t == "kid").count(), 4 * 12);
    assert!(
        !titles.iter().any(|t| t.starts_with("doomed")),
        "a failed batch left a trace"
    );
    assert_eq!(env.json(&["label", "list"])[0]["count"], 48);
}

/// Regression (issue 11, item 3): unknown fields (`"priorty"`, `"labelz"`)
/// were dropped and the batch succeeded; a `request_id` put on an operation
/// line was ignored the same way. Refused, naming field and line, and
/// nothing runs.
#[test]
fn a_batch_refuses_unknown_fields_naming_field_and_line() {
    for_each_mode(|env| {
        for (line, field) in [
            (r#"{"op":"create","title":"x","priorty":1}"#, "priorty"),
            (r#"{"op":"create","title":"x","labelz":["a"]}"#, "labelz"),
            (r#"{"op":"close","ids":["$1"],"reasn":"done"}"#, "reasn"),
            (
                r#"{"op":"update","ids":["$1"],"statuss":"closed"}"#,
                "statuss",
            ),
            (
                r#"{"op":"create","title":"x","request_id":"r-1"}"#,
                "request_id",
            ),
        ] {
            let out = batch(env, &[r#"{"op":"create","title":"first"}"#, line], &[]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{line}: {err}");
            assert!(
                err.contains("stdin:2") && err.contains(field),
                "{line}: {err}"
            );
            assert!(err.contains("nothing was run"), "{err}");
        }
        assert_eq!(env.json(&["list", "--all"]), serde_json::json!([]));
    });
}

/// `bd update ID --parent NEW` moves an issue (and so its subtree) under
/// another: one parent link replaces the other, the id stays, `''` takes it
/// out; a move that would make a cycle, through parent links or blockers,
/// is refused with nothing changed. A batch moves several at once, all or
/// none (issue 16, recursive plans).
#[test]
fn reparenting_moves_subtrees_and_refuses_cycles() {
    let env = TestEnv::new();
    let a = env.create(&["Goal A", "-t", "epic"]);
    let b = env.create(&["Goal B", "-t", "epic"]);
    let step = env.create(&["Step", "--parent", &a]);
    let sub = env.create(&["Sub-step", "--parent", &step]);
    let parents = |id: &str| -> Vec<String> {
        env.json(&["show", id])[0]["dependencies"]
            .as_array()
            .cloned()
            .unwrap_or_default() // left out when there are none
            .iter()
            .filter(|d| d["type"] == "parent-child")
            .map(|d| d["depends_on_id"].as_str().unwrap().to_string())
            .collect()
    };
    let moved = env.json(&["update", &step, "--parent", &b]);
    assert_eq!(moved[0]["changed"], true);
    assert_eq!(parents(&step), vec![b.clone()], "one parent, the new one");
    assert_eq!(parents(&sub), vec![step.clone()], "the subtree comes along");
    assert_eq!(
        env.json(&["update", &step, "--parent", &b])[0]["changed"],
        false
    );

    // Cycles: under its own descendant, or under an issue that waits for it.
    let waiter = env.create(&["Waits for the step", "--deps", &format!("blocks:{step}")]);
    let before = env.fingerprint();
    let err = env.fails(&["update", &b, "--parent", &sub], 3);
    assert!(err.contains("would make a cycle"), "{err}");
    let err = env.fails(&["update", &step, "--parent", &waiter], 3);
    assert!(err.contains("would make a cycle"), "{err}");
    env.fails(&["update", &step, "--parent", &step], 2);
    assert_eq!(env.fingerprint(), before, "refusals change nothing");

    // A batch moves a subtree and takes another issue out, or nothing. In
    // `plan`, A goes under the sub-step only after the sub-step has left the
    // step, so no cycle forms.
    let plan = env.root().join("move.jsonl");
    std::fs::write(
        &plan,
        format!(
            "{{\"op\":\"update\",\"ids\":[\"{step}\"],\"parent\":\"{a}\"}}\n{{\"op\":\"update\",\"ids\":[\"{sub}\"],\"parent\":\"\"}}\n{{\"op\":\"update\",\"ids\":[\"{a}\"],\"parent\":\"{sub}\"}}\n"
        ),
    )
    .unwrap();
    // Moving the step back under A, then A under the step's child: the
    // second closes a cycle, so neither happens.
    let before = env.fingerprint();
    let bad = env.root().join("bad.jsonl");
    std::fs::write(
        &bad,
        format!(
            "{{\"op\":\"update\",\"ids\":[\"{step}\"],\"parent\":\"{a}\"}}\n{{\"op\":\"update\",\"ids\":[\"{a}\"],\"parent\":\"{sub}\"}}\n"
        ),
    )
    .unwrap();
    env.fails(&["batch", "-f", bad.to_str().unwrap()], 3);
    assert_eq!(env.fingerprint(), before, "a refused batch moves nothing");
    env.ok(&["batch", "-f", plan.to_str().unwrap()]);
    assert_eq!(parents(&step), vec![a.clone()]);
    assert!(parents(&sub).is_empty());
    assert_eq!(parents(&a), vec![sub.clone()]);
}

/// Regression (review of issue 15, bd-j1n4): a batch refused for closing a
/// cycle hinted `bd dep tree ID` with an issue the rolled-back batch had
/// created, which does not exist. Hints naming the batch's own creations are
/// left out.
#[test]
fn a_refused_batch_hints_no_issue_it_created() {
    let env = TestEnv::new();
    let plan = env.root().join("cycle.jsonl");
    std::fs::write(
        &plan,
        concat!(
            "{\"op\":\"create\",\"title\":\"one\"}\n",
            "{\"op\":\"create\",\"title\":\"two\",\"deps\":[[\"blocks\",\"$1\"]]}\n",
            "{\"op\":\"dep_add\",\"issue\":\"$1\",\"depends_on\":\"$2\"}\n",
        ),
    )
    .unwrap();
    let err = env.fails(&["batch", "-f", plan.to_str().unwrap(), "--json"], 3);
    let v: serde_json::Value = serde_json::from_str(err.trim()).unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("cycle"),
        "{v}"
    );
    let hints = v["error"]["hints"].as_array().cloned().unwrap_or_default();
    assert!(
        !hints
            .iter()
            .any(|h| h.as_str().unwrap().contains("dep tree")),
        "no hint at a rolled-back issue: {v}"
    );
    assert!(env.json(&["list"]).as_array().unwrap().is_empty());
}
