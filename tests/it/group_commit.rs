//! Group commit through the library: many requests, one transaction, one savepoint
//! each; a failing request leaves no trace and does not fail its neighbours.

use bd::api::{CreateRequest, Request, Response, UpdateRequest};
use bd::client::{Backend, Direct, InitOptions, init};
use bd::clock::SystemClock;
use bd::engine::{Engine, Item, SnapshotPolicy};
use bd::storage::BeadsPaths;
use bd::{ErrorKind, fixture};
use std::sync::Arc;

fn item((actor, request): (String, Request)) -> Item {
    Item {
        actor,
        request,
        deadline_ms: None,
        request_id: None,
        fences: Vec::new(),
    }
}

/// The engine of the tracker at `paths`, as direct mode opens it.
fn engine(paths: &BeadsPaths) -> Engine {
    Engine::open(
        paths.clone(),
        Arc::new(SystemClock),
        "direct",
        SnapshotPolicy::OnFlush,
    )
    .unwrap()
}

/// A fresh tracker (prefix `g`) in a temp dir; keep the dir alive.
fn tracker(replica: &str) -> (tempfile::TempDir, BeadsPaths) {
    let dir = tempfile::tempdir().unwrap();
    init(
        dir.path(),
        &InitOptions {
            prefix: Some("g".into()),
            replica: replica.into(),
        },
    )
    .unwrap();
    let paths = BeadsPaths::new(dir.path().join(".beads"));
    (dir, paths)
}

fn create(title: &str) -> Request {
    Request::Create(CreateRequest {
        title: title.into(),
        ..Default::default()
    })
}

#[test]
fn failures_inside_a_group_are_isolated_and_leave_no_gaps() {
    let (_dir, paths) = tracker("groupreplica0001");
    let mut direct = Direct::open(paths.clone(), "setup").unwrap();
    let Response::Issue(taken) = direct.call(create("already taken")).unwrap() else {
        panic!()
    };
    direct
        .call(Request::Update(UpdateRequest {
            ids: vec![taken.id.clone()],
            claim: true,
            ..Default::default()
        }))
        .unwrap();

    let mut bad_import = fixture::records("imp", 2);
    bad_import[1].fields.remove("title"); // refused → strict import fails after recording the first
    let items = vec![
        ("a1".to_string(), create("first")),
        ("a2".to_string(), create("")),
        (
            "a3".to_string(),
            Request::Update(UpdateRequest {
                ids: vec![taken.id.clone()],
                claim: true,
                ..Default::default()
            }),
        ),
        (
            "a4".to_string(),
            Request::Import {
                records: bad_import,
                dry_run: false,
                strict: true,
            },
        ),
        ("a5".to_string(), create("second")),
        (
            "a6".to_string(),
            Request::Show {
                ids: vec![taken.id.clone()],
            },
        ),
    ];
    let mut engine = engine(&paths);
    let results = engine.run(items.into_iter().map(item).collect()).unwrap();
    let kinds: Vec<Result<(), ErrorKind>> = results
        .iter()
        .map(|r| r.as_ref().map(|_| ()).map_err(|e| e.kind()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            Ok(()),
            Err(ErrorKind::Invalid),
            Err(ErrorKind::Conflict),
            Err(ErrorKind::Invalid),
            Ok(()),
            Err(ErrorKind::Internal)
        ]
    );
    let Response::Issues(all) = direct
        .call(Request::List(bd::query::ListFilter {
            all: true,
            ..Default::default()
        }))
        .unwrap()
    else {
        panic!()
    };
    let mut titles: Vec<&str> = all.iter().map(|i| i.title.as_str()).collect();
    titles.sort();
    assert_eq!(
        titles,
        vec!["already taken", "first", "second"],
        "nothing of the failed requests is stored"
    );
    let first = all.iter().find(|i| i.title == "first").unwrap();
    assert_eq!(first.created_by, "a1", "each request keeps its own actor");

    // The op table and the op file: contiguous sequence numbers, nothing from rollbacks.
    let store = engine.store();
    let seqs: Vec<i64> = store
        .conn()
        .prepare("SELECT seq FROM ops ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    let file = std::fs::read_to_string(paths.op_file("groupreplica0001")).unwrap();
    assert_eq!(file.lines().count(), seqs.len());
}

#[test]
fn a_group_of_many_writes_commits_them_all() {
    let (_dir, paths) = tracker("groupreplica0002");
    let mut engine = engine(&paths);
    let items = (0..200)
        .map(|i| item((format!("agent{}", i % 8), create(&format!("issue {i}")))))
        .collect();
    let results = engine.run(items).unwrap();
    assert!(results.iter().all(Result::is_ok));
    let ids: std::collections::BTreeSet<String> = results
        .into_iter()
        .map(|r| match r.unwrap() {
            Response::Issue(i) => i.id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ids.len(), 200, "distinct ids within one transaction");
}

#[test]
fn an_item_past_its_deadline_is_not_run_but_its_neighbours_are() {
    let (_dir, paths) = tracker("groupreplica0003");
    let mut engine = engine(&paths);
    let items = vec![
        item(("a".into(), create("on time"))),
        Item {
            actor: "b".into(),
            request: create("too late"),
            deadline_ms: Some(1),
            request_id: None,
            fences: Vec::new(),
        },
        Item {
            actor: "c".into(),
            request: create("far future"),
            deadline_ms: Some(u64::MAX),
            request_id: None,
            fences: Vec::new(),
        },
    ];
    let results = engine.run(items).unwrap();
    assert!(results[0].is_ok() && results[2].is_ok());
    assert_eq!(results[1].as_ref().unwrap_err().kind, ErrorKind::Timeout);
    let n: i64 = engine
        .store()
        .conn()
        .query_row("SELECT COUNT(*) FROM issues", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2);
}

fn issue(d: &mut Direct, id: &str) -> bd::model::Issue {
    match d
        .call(Request::Show {
            ids: vec![id.into()],
        })
        .unwrap()
    {
        Response::Details(mut v) => v.remove(0).issue,
        other => panic!("{other:?}"),
    }
}

fn set(id: &str, f: impl FnOnce(&mut UpdateRequest)) -> Request {
    let mut u = UpdateRequest {
        ids: vec![id.into()],
        ..Default::default()
    };
    f(&mut u);
    Request::Update(u)
}

#[test]
fn cached_docs_follow_other_connections_and_forget_rolled_back_writes() {
    // A long-lived connection keeps folded docs between its transactions
    // (storage::DocCache). They must never hide another connection's write or
    // keep one that was rolled back.
    let (_dir, paths) = tracker("cachereplica0001");
    let mut a = Direct::open(paths.clone(), "a").unwrap();
    let Response::Issue(x) = a.call(create("original")).unwrap() else {
        panic!()
    };
    a.call(set(&x.id, |u| u.priority = Some(3))).unwrap(); // x is now cached in `a`
    // Another connection (a direct-mode writer beside the daemon) changes x.
    let mut b = Direct::open(paths.clone(), "b").unwrap();
    b.call(set(&x.id, |u| u.title = Some("from b".into())))
        .unwrap();
    // `a` writes x again: its rows must carry b's title as well as its own change.
    a.call(set(&x.id, |u| u.assignee = Some("ann".into())))
        .unwrap();
    let seen = issue(&mut b, &x.id);
    assert_eq!(seen.title, "from b");
    assert_eq!(seen.priority, 3);
    assert_eq!(seen.assignee.as_deref(), Some("ann"));

    // A batch that changes x and then fails leaves x's cached doc untouched...
    let failed = a.call(Request::Batch {
        requests: vec![
            set(&x.id, |u| u.title = Some("rolled back".into())),
            set("g-nosuchissue", |u| u.priority = Some(1)),
        ],
    });
    assert!(failed.is_err());
    // ...so the next write to x does not resurrect the rolled-back title.
    a.call(set(&x.id, |u| u.priority = Some(1))).unwrap();
    // So does a failing request inside a group (a savepoint rolled back).
    let items = vec![
        (
            "a1".to_string(),
            set(&x.id, |u| u.notes = Some("kept".into())),
        ),
        (
            "a2".to_string(),
            Request::Batch {
                requests: vec![
                    set(&x.id, |u| u.title = Some("also rolled back".into())),
                    set("g-nosuchissue", |u| u.priority = Some(1)),
                ],
            },
        ),
        (
            "a3".to_string(),
            set(&x.id, |u| u.design = Some("d".into())),
        ),
    ]
    .into_iter()
    .map(item)
    .collect();
    let out = a.engine().run(items).unwrap();
    assert!(
        out[0].is_ok() && out[1].is_err() && out[2].is_ok(),
        "{out:?}"
    );
    a.call(set(&x.id, |u| u.external_ref = Some("ext-1".into())))
        .unwrap();
    for d in [&mut a, &mut b] {
        let now = issue(d, &x.id);
        assert_eq!(now.title, "from b");
        assert_eq!(now.priority, 1);
        assert_eq!(now.notes, "kept");
        assert_eq!(now.design, "d");
        assert_eq!(now.external_ref.as_deref(), Some("ext-1"));
    }
    // And the rows agree with a fold of every stored op from scratch.
    drop((a, b));
    let report = bd::client::rebuild(&paths, false).expect("rebuild agrees");
    assert_eq!(
        report.previous_hash.as_deref(),
        Some(report.state_hash.as_str())
    );
}

#[test]
fn refusals_before_any_write_leave_their_group_whole() {
    // No request here writes before failing, so the group commits in its first
    // run, without savepoints (Store::write_group).
    let (_dir, paths) = tracker("fastreplica00001");
    let mut a = Direct::open(paths.clone(), "a").unwrap();
    let Response::Issue(taken) = a.call(create("taken")).unwrap() else {
        panic!()
    };
    a.call(set(&taken.id, |u| u.claim = true)).unwrap();
    let before: usize = a
        .engine()
        .store()
        .conn()
        .query_row("SELECT COUNT(*) FROM ops", [], |r| r.get::<_, i64>(0))
        .unwrap() as usize;
    let items = vec![
        ("b1".to_string(), create("one")),
        ("b2".to_string(), create("")),
        ("b3".to_string(), set(&taken.id, |u| u.claim = true)),
        (
            "b4".to_string(),
            set("g-nosuchissue", |u| u.priority = Some(1)),
        ),
        (
            "b5".to_string(),
            set(&taken.id, |u| u.notes = Some("n".into())),
        ),
        ("b6".to_string(), create("two")),
    ]
    .into_iter()
    .map(item)
    .collect();
    let out = a.engine().run(items).unwrap();
    let ok: Vec<bool> = out.iter().map(Result::is_ok).collect();
    assert_eq!(ok, vec![true, false, false, false, true, true], "{out:?}");
    assert_eq!(issue(&mut a, &taken.id).notes, "n");
    let seqs: Vec<i64> = a
        .engine()
        .store()
        .conn()
        .prepare("SELECT seq FROM ops ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    // Contiguous, and exactly three more than before: one, the note and two.
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    assert_eq!(seqs.len(), before + 3);
}

/// The post-commit hook (where the relay's outbox attaches) is handed this
/// replica's ops of each commit once it is durable, in order, exactly once:
/// the same ops, in the same order, as the op file.
#[test]
fn the_post_commit_hook_sees_each_durable_commits_ops_once_in_order() {
    let (_dir, paths) = tracker("hookreplica00001");
    let mut engine = engine(&paths);
    let seen = Arc::new(std::sync::Mutex::new(Vec::<(u64, String)>::new()));
    let sink = seen.clone();
    engine
        .on_commit(Box::new(move |ops| {
            let mut s = sink.lock().unwrap();
            s.extend(ops.iter().map(|o| (o.seq, o.op_id.clone())));
        }))
        .unwrap();
    let items = (0..3)
        .map(|i| item((format!("a{i}"), create(&format!("one of three {i}")))))
        .collect();
    assert!(engine.run(items).unwrap().iter().all(Result::is_ok));
    let after_group = seen.lock().unwrap().len();
    assert!(after_group >= 3, "each create's ops: {after_group}");
    // Committed but not yet durable: not handed over.
    let out = engine
        .commit(vec![item(("b".into(), create("later")))])
        .unwrap();
    assert!(out[0].is_ok());
    assert_eq!(
        seen.lock().unwrap().len(),
        after_group,
        "not before it is durable"
    );
    engine.settle().unwrap();
    let file: Vec<(u64, String)> = std::fs::read_to_string(paths.op_file("hookreplica00001"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["seq"].as_u64().unwrap(),
                v["op_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(file.len() > after_group);
    assert_eq!(
        *seen.lock().unwrap(),
        file,
        "the op file's ops, in its order, once each"
    );
}

/// Regression (issue 12 review): the daemon's snapshot is rewritten once no
/// write came for the debounce, counted from the *last* write (the engine
/// first counted from the first write after a flush, so under steady writes it
/// rewrote the whole snapshot every debounce); and an idle pass, done or given
/// up, never leaves the engine asking to be woken at once (a spin).
#[test]
fn the_snapshot_debounce_counts_from_the_last_write_and_never_spins() {
    let (_dir, paths) = tracker("debounce00000001");
    let mut engine = Engine::open(
        paths.clone(),
        Arc::new(SystemClock),
        "daemon",
        SnapshotPolicy::AfterIdle(std::time::Duration::from_secs(10)),
    )
    .unwrap();
    assert_eq!(engine.idle_in(), None, "nothing to write yet");
    engine.run(vec![item(("a".into(), create("one")))]).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(1));
    engine.run(vec![item(("a".into(), create("two")))]).unwrap();
    let wait = engine.idle_in().expect("a snapshot is due");
    assert!(
        wait > std::time::Duration::from_millis(9_500),
        "counted from the last write: {wait:?}"
    );
    engine.idle().unwrap();
    assert_eq!(engine.idle_in(), None, "written; nothing more to do");
    let snapshot = std::fs::read_to_string(paths.snapshot()).unwrap();
    assert_eq!(snapshot.lines().count(), 2);
    // Given up (here: the snapshot cannot be written), it waits for the next write.
    engine
        .run(vec![item(("a".into(), create("three")))])
        .unwrap();
    std::fs::remove_file(paths.snapshot()).unwrap();
    std::fs::create_dir(paths.snapshot()).unwrap();
    assert!(
        engine.idle().is_err(),
        "a directory where the snapshot goes"
    );
    assert_eq!(engine.idle_in(), None, "no retry in a loop");
}

/// Rows are written only where they change (issue 12, item 7): labels, edges
/// and conflicts are diffed against what is stored, and an update that keeps
/// status, priority and creation time leaves the ordering indexes alone. The
/// rows must still be exactly what a fold of every op from scratch gives, after
/// every kind of change, and show must agree.
#[test]
fn rows_written_only_where_they_change_still_equal_a_fresh_fold() {
    let (_dir, paths) = tracker("diffrows00000001");
    let mut a = Direct::open(paths.clone(), "a").unwrap();
    let mut ids = Vec::new();
    for t in ["one", "two", "three"] {
        let Response::Issue(i) = a.call(create(t)).unwrap() else {
            panic!()
        };
        ids.push(i.id);
    }
    let (x, y, z) = (ids[0].clone(), ids[1].clone(), ids[2].clone());
    let steps: Vec<Request> = vec![
        set(&x, |u| u.add_labels = vec!["l1".into(), "l2".into()]),
        set(&x, |u| u.title = Some("one, retitled".into())),
        set(&x, |u| u.remove_labels = vec!["l1".into()]),
        set(&x, |u| u.set_labels = Some(vec!["l3".into(), "l2".into()])),
        Request::DepAdd {
            issue: x.clone(),
            depends_on: y.clone(),
            dep_type: "blocks".into(),
        },
        Request::DepAdd {
            issue: x.clone(),
            depends_on: z.clone(),
            dep_type: "related".into(),
        },
        set(&x, |u| u.description = Some("text".into())),
        set(&x, |u| u.priority = Some(0)),
        Request::DepRemove {
            issue: x.clone(),
            depends_on: y.clone(),
            dep_type: Some("blocks".into()),
        },
        set(&x, |u| u.status = Some("in_progress".into())),
        Request::Close {
            ids: vec![z.clone()],
            reason: None,
            force: false,
        },
        set(&x, |u| u.assignee = Some("ann".into())),
    ];
    for (n, step) in steps.into_iter().enumerate() {
        a.call(step).unwrap_or_else(|e| panic!("step {n}: {e:?}"));
    }
    let now = issue(&mut a, &x);
    assert_eq!(now.title, "one, retitled");
    assert_eq!(now.labels, vec!["l2".to_string(), "l3".to_string()]);
    assert_eq!(now.dependencies.len(), 1, "{:?}", now.dependencies);
    assert_eq!(now.dependencies[0].depends_on_id, z);
    let Response::Issues(ready) = a
        .call(Request::Ready(bd::query::ListFilter::default()))
        .unwrap()
    else {
        panic!()
    };
    assert!(
        ready.iter().any(|i| i.id == x),
        "in progress, unblocked: ready"
    );
    drop(a);
    let report = bd::client::rebuild(&paths, false).expect("rebuild agrees");
    assert_eq!(
        report.previous_hash.as_deref(),
        Some(report.state_hash.as_str()),
        "the incrementally written rows equal a fresh fold"
    );
}
