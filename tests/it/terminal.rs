//! Human output is safe for a terminal: text from other clones cannot carry
//! escape sequences to it.

use crate::common::{Mode, TestEnv};

const HOSTILE: &str = "innocent \u{1b}]0;owned\u{7}\u{1b}[2J\u{9b}31m";

/// Puts an issue titled [`HOSTILE`] (with a hostile label and description)
/// into the tracker the way another clone's would arrive: an op in a foreign
/// op file, applied by the next command.
fn arrive_from_another_clone(env: &TestEnv) -> String {
    let op = bd::model::Op {
        op_id: String::new(),
        issue: "t-evil".into(),
        of: None,
        kind: bd::model::OpKind::Create,
        field: None,
        value: serde_json::json!({
            "title": HOSTILE,
            "description": format!("line one\n{HOSTILE}"),
            "status": "open",
            "priority": 1,
            "issue_type": "bug",
            "labels": ["x\u{1b}[1m"],
        }),
        supersedes: vec![],
        fence: None,
        hlc: bd::model::Hlc {
            wall: 1_000,
            logical: 0,
        },
        actor: "mallory\u{1b}[8m".into(),
        replica: "ffffffffffffffff".into(),
        seq: 1,
    }
    .seal();
    std::fs::write(
        env.beads().join("ops/ffffffffffffffff.jsonl"),
        format!("{}\n", serde_json::to_string(&op).unwrap()),
    )
    .unwrap();
    "t-evil".into()
}

fn assert_no_raw_controls(what: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let raw: Vec<char> = text
        .chars()
        .filter(|c| c.is_control() && *c != '\n' && *c != '\t')
        .collect();
    assert!(
        raw.is_empty(),
        "{what} wrote raw control characters {raw:?}:\n{text}"
    );
}

/// Regression (issue 10, item 9): `bd create "$(printf 'innocent
/// \033]0;owned\007\033[2J')"` was accepted and `bd list` wrote the escape
/// sequences to the terminal.
fn terminal_output_never_carries_escape_sequences(mode: Mode) {
    let env = TestEnv::new_in(mode);
    let err = env.fails(&["create", HOSTILE], 2);
    assert!(err.contains("control character"), "{err}");
    assert_no_raw_controls("the refusal", err.as_bytes());
    let err = env.fails(&["create", "ok", "-l", "bad\u{7}label"], 2);
    assert!(err.contains("invalid label"), "{err}");

    let id = arrive_from_another_clone(&env);
    for args in [
        vec!["list"],
        vec!["ready"],
        vec!["show", &id],
        vec!["search", "innocent"],
        vec!["label", "list"],
        vec!["comments", &id],
    ] {
        let out = env.run(&args);
        assert!(out.status.success(), "{args:?}");
        assert_no_raw_controls(&format!("bd {args:?}"), &out.stdout);
        assert_no_raw_controls(&format!("bd {args:?} (stderr)"), &out.stderr);
    }
    let shown = env.ok(&["list"]);
    assert!(
        shown.contains("innocent \\x1b]0;owned\\x07\\x1b[2J\\u{9b}31m"),
        "{shown}"
    );
    // JSON keeps the data exactly (escaped the JSON way).
    let json = env.json(&["show", &id]);
    assert_eq!(json[0]["title"], HOSTILE);
}

crate::in_both_modes!(terminal_output_never_carries_escape_sequences);

/// Review of issue 10, item 9: an op from another clone's file whose issue id
/// holds control characters (sealed, so its hash checks out) was applied, and
/// its id became a key people and agents must type back. It is refused and
/// reported with file and line; the file's other ops apply.
#[test]
fn a_foreign_op_with_an_unusable_id_is_refused_and_reported() {
    let env = TestEnv::new();
    let op = |issue: &str, seq: u64| {
        bd::model::Op {
            op_id: String::new(),
            issue: issue.into(),
            of: None,
            kind: bd::model::OpKind::Create,
            field: None,
            value: serde_json::json!({"title": format!("from {seq}")}),
            supersedes: vec![],
            fence: None,
            hlc: bd::model::Hlc {
                wall: 1_000 + seq,
                logical: 0,
            },
            actor: "mallory".into(),
            replica: "eeeeeeeeeeeeeeee".into(),
            seq,
        }
        .seal()
    };
    let lines = [op("t-bad\u{1b}[2J", 1), op("t bad", 2), op("t-good", 3)]
        .iter()
        .map(|o| serde_json::to_string(o).unwrap() + "\n")
        .collect::<String>();
    std::fs::write(env.beads().join("ops/eeeeeeeeeeeeeeee.jsonl"), lines).unwrap();
    let listed = env.json(&["list"]);
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["t-good"]);
    let out = env.run(&["doctor", "--json"]);
    assert_eq!(out.status.code(), Some(1), "bad lines are errors");
    let doctor: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bad: Vec<u64> = doctor["checks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["lines"].as_array().cloned().unwrap_or_default())
        .filter(|l| l["problem"].as_str().unwrap().contains("unusable issue id"))
        .map(|l| l["line"].as_u64().unwrap())
        .collect();
    assert_eq!(bad, [1, 2], "{doctor}");
}
