//! `bd mcp` driven by a real MCP client (rmcp's, over the server's stdio):
//! every tool answers with the JSON the CLI's `--json` gives for the same
//! request, errors are tool errors carrying the CLI's message, hints and
//! exit code, and the tracker is served through the daemon or in-process
//! as the CLI would be.

use crate::common::{BD, Mode, TestEnv};
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation};
use serde_json::{Value, json};

const CLIENT: &str = "test-agent";

type Client = rmcp::service::RunningService<rmcp::RoleClient, ClientConfig>;

/// Starts `bd mcp` in `env`'s repository with no actor configured, so the
/// client's name is the actor.
async fn connect(env: &TestEnv) -> Client {
    let mut cmd = tokio::process::Command::new(BD);
    cmd.arg("mcp")
        .current_dir(env.root())
        .env_remove("BD_ACTOR")
        .env("BD_AUTO_START", "0")
        .env_remove("BEADS_DIR")
        .env("XDG_CONFIG_HOME", env.root().join(".config-test"));
    let transport = rmcp::transport::TokioChildProcess::new(cmd).expect("spawn bd mcp");
    ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new(CLIENT, "1.0"),
    )
    .serve(transport)
    .await
    .expect("MCP handshake with bd mcp")
}

/// What one tool call gave: its JSON, and whether it was a tool error.
struct Answer {
    json: Value,
    is_error: bool,
}

async fn call(client: &Client, tool: &str, args: Value) -> Answer {
    let Value::Object(args) = args else {
        panic!("arguments must be an object")
    };
    let result = client
        .call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(args))
        .await
        .unwrap_or_else(|e| panic!("calling {tool}: {e}"));
    let text = result
        .content
        .first()
        .and_then(|c| c.as_text())
        .map(|t| t.text.clone())
        .unwrap_or_else(|| panic!("{tool}: no text content: {result:?}"));
    let json =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{tool}: not JSON ({e}): {text}"));
    Answer {
        json,
        is_error: result.is_error == Some(true),
    }
}

/// A tool's successful answer.
async fn ok(client: &Client, tool: &str, args: Value) -> Value {
    let a = call(client, tool, args.clone()).await;
    assert!(!a.is_error, "{tool} {args}: tool error {}", a.json);
    a.json
}

/// A tool's error: the JSON `bd --json` writes to stderr on failure.
async fn err(client: &Client, tool: &str, args: Value) -> Value {
    let a = call(client, tool, args.clone()).await;
    assert!(a.is_error, "{tool} {args}: succeeded with {}", a.json);
    a.json
}

/// The CLI's `--json` answer, as the session's actor.
fn cli(env: &TestEnv, actor: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--actor", actor]);
    env.json(&all)
}

/// The CLI's `--json` error for a command that fails with `code`.
fn cli_err(env: &TestEnv, actor: &str, args: &[&str], code: i32) -> Value {
    let mut all = args.to_vec();
    all.extend(["--actor", actor, "--json"]);
    let stderr = env.fails(&all, code);
    serde_json::from_str(stderr.trim())
        .unwrap_or_else(|e| panic!("{args:?}: bad JSON error ({e}): {stderr}"))
}

fn id(v: &Value) -> String {
    v["id"].as_str().expect("an id").to_string()
}

const TOOLS: [&str; 21] = [
    "prime",
    "ready",
    "show",
    "list",
    "search",
    "create",
    "update",
    "claim",
    "unclaim",
    "close",
    "reopen",
    "comment",
    "dep_add",
    "dep_remove",
    "blocked",
    "batch",
    "stale",
    "epic_status",
    "conflicts",
    "resolve",
    "sync",
];

fn mcp_tools_answer_as_the_cli_does(mode: Mode) {
    let env = TestEnv::new_in(mode);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = connect(&env).await;
        let info = client.peer_info().expect("server info");
        assert_eq!(info.server_info.as_ref().map(|s| s.name.as_str()), Some("bd"));
        assert!(
            info.instructions.as_deref().unwrap_or("").contains("ready"),
            "the instructions teach the workflow"
        );

        // Every tool is listed, with an object schema that names its arguments.
        let tools = client.list_all_tools().await.expect("tools/list");
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        for t in TOOLS {
            assert!(names.contains(&t), "tool {t} missing from {names:?}");
        }
        for t in &tools {
            assert_eq!(t.input_schema["type"], "object", "{}: schema {:?}", t.name, t.input_schema);
            assert!(t.description.as_deref().is_some_and(|d| d.len() > 20), "{} has a description", t.name);
        }
        let create_schema = &tools.iter().find(|t| t.name == "create").unwrap().input_schema;
        assert_eq!(create_schema["required"], json!(["title"]));
        for field in ["description", "priority", "type", "labels", "deps", "parent"] {
            assert!(create_schema["properties"].get(field).is_some(), "create takes {field}");
        }

        // create: all fields; the actor is the client's name.
        let epic = ok(&client, "create", json!({"title": "Launch", "type": "epic", "priority": "P1"})).await;
        let a = ok(
            &client,
            "create",
            json!({
                "title": "--title that looks like a flag",
                "description": "line one\nline two",
                "priority": 0,
                "type": "bug",
                "labels": ["backend", "urgent"],
                "parent": id(&epic),
                "external_ref": "gh-7",
            }),
        )
        .await;
        assert_eq!(a["title"], "--title that looks like a flag");
        let actor = a["created_by"].as_str().unwrap().to_string();
        let tag = actor.strip_prefix("test-agent-").expect("the actor is the client's name");
        assert!(
            tag.len() == 8 && tag.chars().all(|c| c.is_ascii_hexdigit()),
            "with this session's tag: {actor}"
        );
        assert_eq!(epic["created_by"], actor.as_str(), "one actor for the session");
        let actor = actor.as_str();
        assert_eq!(a["labels"], json!(["backend", "urgent"]));
        let b = ok(
            &client,
            "create",
            json!({"title": "Found while fixing", "deps": [format!("discovered-from:{}", id(&a))]}),
        )
        .await;
        let c = ok(&client, "create", json!({"title": "Docs", "priority": 3})).await;

        // Reads equal the CLI's --json for the same request.
        let (ia, ib, ic) = (id(&a), id(&b), id(&c));
        assert_eq!(ok(&client, "show", json!({"ids": [&ia, &ib]})).await, cli(&env, actor, &["show", &ia, &ib]));
        assert_eq!(ok(&client, "ready", json!({})).await, cli(&env, actor, &["ready"]));
        assert_eq!(
            ok(&client, "ready", json!({"limit": 1, "labels": ["backend"]})).await,
            cli(&env, actor, &["ready", "-n", "1", "-l", "backend"])
        );
        assert_eq!(ok(&client, "list", json!({})).await, cli(&env, actor, &["list"]));
        assert_eq!(
            ok(&client, "list", json!({"type": ["bug"], "priority_max": 1, "sort": "title"})).await,
            cli(&env, actor, &["list", "-t", "bug", "--priority-max", "1", "--sort", "title"])
        );
        assert_eq!(ok(&client, "search", json!({"query": "fixing"})).await, cli(&env, actor, &["search", "fixing"]));
        assert_eq!(ok(&client, "prime", json!({})).await, cli(&env, actor, &["prime"]));

        // update, then the CLI sees it.
        let up = ok(
            &client,
            "update",
            json!({"ids": [&ia], "notes": "-n is not a flag here", "add_labels": ["triaged"], "priority": 1}),
        )
        .await;
        assert_eq!(up[0]["changed"], true);
        let shown = cli(&env, actor, &["show", &ia]);
        assert_eq!(shown[0]["notes"], "-n is not a flag here");
        assert_eq!(shown[0]["priority"], 1);
        assert!(shown[0]["labels"].as_array().unwrap().contains(&json!("triaged")));

        // claim: atomic; a second claimant gets the CLI's refusal, exit 3.
        let claimed = ok(&client, "claim", json!({"ids": [&ia]})).await;
        assert_eq!(claimed[0]["assignee"], actor);
        assert_eq!(claimed[0]["status"], "in_progress");
        env.ok(&["claim", &ic, "--actor", "rival"]);
        let refused = err(&client, "claim", json!({"ids": [&ic]})).await;
        assert_eq!(refused, cli_err(&env, actor, &["claim", &ic], 3), "the same error as the CLI's");
        assert_eq!(refused["exit_code"], 3);
        assert!(refused["error"]["message"].as_str().unwrap().contains("rival"), "names the holder: {refused}");

        // comment: any text, newlines and a leading dash kept.
        let text = "- started\nsecond line";
        let comment = ok(&client, "comment", json!({"id": &ia, "text": text})).await;
        assert_eq!(comment["text"], text);
        assert_eq!(cli(&env, actor, &["comments", &ia]).as_array().unwrap().last().unwrap()["text"], text);

        // dep_add / blocked / cycle refused / dep_remove.
        ok(&client, "dep_add", json!({"issue": &ib, "depends_on": &ia})).await;
        assert_eq!(ok(&client, "blocked", json!({})).await, cli(&env, actor, &["blocked"]));
        let cycle = err(&client, "dep_add", json!({"issue": &ia, "depends_on": &ib})).await;
        assert_eq!(cycle, cli_err(&env, actor, &["dep", "add", &ia, &ib], 3));
        ok(&client, "dep_remove", json!({"issue": &ib, "depends_on": &ia, "type": "blocks"})).await;
        assert!(!cli(&env, actor, &["blocked"]).as_array().unwrap().iter().any(|i| i["id"] == ib.as_str()));

        // close / reopen / unclaim.
        let closed = ok(&client, "close", json!({"ids": [&ia], "reason": "fixed"})).await;
        assert_eq!(closed[0]["status"], "closed");
        assert_eq!(cli(&env, actor, &["show", &ia])[0]["close_reason"], "fixed");
        ok(&client, "reopen", json!({"ids": [&ia]})).await;
        assert_eq!(cli(&env, actor, &["show", &ia])[0]["status"], "open");
        ok(&client, "claim", json!({"ids": [&ib]})).await;
        ok(&client, "unclaim", json!({"ids": [&ib]})).await;
        assert_eq!(cli(&env, actor, &["show", &ib])[0]["assignee"], Value::Null);

        // batch: all or nothing.
        let before = env.fingerprint();
        let bad = err(
            &client,
            "batch",
            json!({"operations": [{"op": "create", "title": "one"}, {"op": "update", "ids": ["t-missing"], "status": "closed"}]}),
        )
        .await;
        assert!(bad["error"]["message"].as_str().unwrap().contains("#2"), "names the operation: {bad}");
        assert_eq!(env.fingerprint(), before, "a refused batch changes nothing");
        let bad_line = err(&client, "batch", json!({"operations": [{"op": "create", "title": "x"}, {"op": "frobnicate"}]})).await;
        assert_eq!(bad_line["exit_code"], 2);
        assert!(bad_line["error"]["message"].as_str().unwrap().starts_with("operations:2:"), "{bad_line}");
        let done = ok(
            &client,
            "batch",
            json!({"operations": [
                {"op": "create", "title": "Plan", "issue_type": "epic"},
                {"op": "create", "title": "Step", "parent": "$1"},
            ], "request_id": "plan-1"}),
        )
        .await;
        assert_eq!(done.as_array().unwrap().len(), 2);
        let again = ok(
            &client,
            "batch",
            json!({"operations": [
                {"op": "create", "title": "Plan", "issue_type": "epic"},
                {"op": "create", "title": "Step", "parent": "$1"},
            ], "request_id": "plan-1"}),
        )
        .await;
        assert_eq!(again, done, "the same request id answers as the first time");

        // stale / epic_status.
        assert_eq!(ok(&client, "stale", json!({"idle": "1h"})).await, cli(&env, actor, &["stale", "--idle", "1h"]));
        assert_eq!(ok(&client, "epic_status", json!({})).await, cli(&env, actor, &["epic", "status"]));
        assert_eq!(
            ok(&client, "epic_status", json!({"id": epic["id"]})).await,
            cli(&env, actor, &["epic", "status", epic["id"].as_str().unwrap()])
        );

        // conflicts / resolve / sync.
        assert_eq!(ok(&client, "conflicts", json!({})).await, cli(&env, actor, &["conflicts"]));
        let nothing = err(&client, "resolve", json!({"id": &ia, "field": "title", "value": "x"})).await;
        assert_eq!(nothing, cli_err(&env, actor, &["resolve", &ia, "--field", "title", "--value", "x"], nothing["exit_code"].as_i64().unwrap() as i32));
        let status = ok(&client, "sync", json!({"status": true})).await;
        assert_eq!(status, cli(&env, actor, &["sync", "--status"]));

        // Bad input: one line, a hint, exit code 2, nothing changed.
        let before = env.fingerprint();
        let unknown = err(&client, "ready", json!({"limt": 5})).await;
        assert_eq!(unknown["exit_code"], 2);
        assert!(unknown["error"]["message"].as_str().unwrap().contains("unknown field `limt`"));
        assert!(!unknown["error"]["hints"].as_array().unwrap().is_empty());
        let ttl = err(&client, "claim", json!({"ids": [&ic], "ttl": "3 weeks"})).await;
        assert_eq!(ttl["exit_code"], 2, "{ttl}");
        assert!(!ttl["error"]["message"].as_str().unwrap().contains('\n'));
        let none = err(&client, "claim", json!({"ids": []})).await;
        assert_eq!(none["exit_code"], 2);
        let said = none["error"]["message"].as_str().unwrap();
        assert!(said.contains("'ids'") && !said.contains("--"), "in the tool's words: {said}");
        let both = err(&client, "resolve", json!({"id": &ia, "field": "title", "value": "a", "take": "b"})).await;
        assert_eq!(both["error"]["message"], "the argument 'value' cannot be used with 'take'");
        let comma = err(&client, "create", json!({"title": "x", "labels": ["a,b"]})).await;
        assert!(comma["error"]["message"].as_str().unwrap().contains("holds a comma"), "{comma}");
        let negative = err(&client, "create", json!({"title": "x", "priority": -1})).await;
        assert!(negative["error"]["message"].as_str().unwrap().contains("priority -1 is not 0-4"), "{negative}");
        let nul = err(&client, "search", json!({"query": "a\u{0}b"})).await;
        assert_eq!(nul["exit_code"], 2, "{nul}");
        let wrong_type = err(&client, "create", json!({"title": 5})).await;
        assert_eq!(wrong_type["exit_code"], 2);
        assert_eq!(env.fingerprint(), before);

        // An unknown tool is a protocol error, and the server carries on.
        let unknown_tool = client
            .call_tool(CallToolRequestParams::new("frobnicate"))
            .await;
        assert!(unknown_tool.is_err(), "an unknown tool is refused: {unknown_tool:?}");
        ok(&client, "ready", json!({})).await;

        client.cancel().await.expect("close the session");
    });

    // The mode the CLI would have used: the daemon served the writes, or
    // none ran at all.
    match mode {
        Mode::Daemon => {
            let st = env.json(&["daemon", "status"]);
            assert!(
                st["writes"].as_u64().unwrap() > 10,
                "the daemon served the tools' writes: {st}"
            );
        }
        Mode::Direct => assert!(
            !env.beads().join("daemon.lock").exists(),
            "no daemon was started in direct mode"
        ),
    }
}

/// Tool calls in flight at once each get their own answer.
fn concurrent_tool_calls_each_get_their_answer(mode: Mode) {
    let env = TestEnv::new_in(mode);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = connect(&env).await;
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..12 {
            let peer = client.peer().clone();
            calls.spawn(async move {
                let Value::Object(args) = json!({"title": format!("parallel {i}")}) else {
                    unreachable!()
                };
                let r = peer
                    .call_tool(CallToolRequestParams::new("create").with_arguments(args))
                    .await
                    .expect("call");
                (i, r)
            });
        }
        while let Some(joined) = calls.join_next().await {
            let (i, r) = joined.expect("task");
            assert_ne!(r.is_error, Some(true), "{r:?}");
            let text = &r.content[0].as_text().expect("text").text;
            let issue: Value = serde_json::from_str(text).expect("json");
            assert_eq!(
                issue["title"],
                format!("parallel {i}"),
                "each call gets its own answer"
            );
        }
        client.cancel().await.expect("close");
    });
    assert_eq!(env.json(&["list"]).as_array().unwrap().len(), 12);
}

/// Regression (review of issue 15): two sessions of one client (the same
/// `clientInfo.name`) were one actor, so both claims of one issue
/// succeeded and either could unclaim the other's. Each session is an agent
/// of its own; a client name that is no name (control characters, spaces) is
/// made one.
#[test]
fn two_sessions_of_one_client_are_two_agents() {
    let env = TestEnv::new();
    let id = env.create(&["contested"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let first = connect(&env).await;
        let second = connect(&env).await;
        let won = ok(&first, "claim", json!({"ids": [&id]})).await;
        let lost = err(&second, "claim", json!({"ids": [&id]})).await;
        assert_eq!(lost["exit_code"], 3, "{lost}");
        let holder = won[0]["assignee"].as_str().unwrap();
        assert!(
            lost["error"]["message"].as_str().unwrap().contains(holder),
            "{lost}"
        );
        let refused = err(&second, "unclaim", json!({"ids": [&id]})).await;
        assert_eq!(refused["exit_code"], 3, "{refused}");

        let mut cmd = tokio::process::Command::new(BD);
        cmd.arg("mcp")
            .current_dir(env.root())
            .env_remove("BD_ACTOR")
            .env("BD_AUTO_START", "0");
        let odd = ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("My \u{1b}[31mClient\n v2", "1"),
        )
        .serve(rmcp::transport::TokioChildProcess::new(cmd).unwrap())
        .await
        .unwrap();
        let made = ok(
            &odd,
            "create",
            json!({"title": "from an oddly named client"}),
        )
        .await;
        let by = made["created_by"].as_str().unwrap();
        assert!(by.starts_with("My---31mClient--v2-"), "{by}");
        assert!(
            by.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
            "{by}"
        );
        for c in [first, second, odd] {
            c.cancel().await.unwrap();
        }
    });
    let err = env.fails(&["create", "x", "--actor", "ev\u{1b}il"], 2);
    assert!(
        err.contains("actor contains the control character"),
        "{err}"
    );
}

/// `--actor` (or `$BD_ACTOR`) wins over the client's name.
#[test]
fn a_named_actor_wins_over_the_clients_name() {
    let env = TestEnv::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut cmd = tokio::process::Command::new(BD);
        cmd.args(["mcp", "--actor", "named-agent"])
            .current_dir(env.root())
            .env("BD_AUTO_START", "0");
        let transport = rmcp::transport::TokioChildProcess::new(cmd).unwrap();
        let client = ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new(CLIENT, "1"),
        )
        .serve(transport)
        .await
        .unwrap();
        let made = ok(&client, "create", json!({"title": "mine"})).await;
        assert_eq!(made["created_by"], "named-agent");
        client.cancel().await.unwrap();
    });
}

/// Outside a repository with a tracker, `bd mcp` stops at once with the
/// CLI's error instead of serving tools that can only fail.
#[test]
fn mcp_outside_a_tracker_says_so_and_exits() {
    let env = TestEnv::empty();
    let err = env.fails(&["mcp"], 1);
    assert!(err.contains("bd init"), "{err}");
    // So does a --dir that names no tracker (it served, and every call failed).
    let err = env.fails(&["mcp", "--dir", "/nonexistent/repo"], 1);
    assert!(err.contains("no tracker"), "{err}");
}

crate::in_both_modes!(
    mcp_tools_answer_as_the_cli_does,
    concurrent_tool_calls_each_get_their_answer
);
