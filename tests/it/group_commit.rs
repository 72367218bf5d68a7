//! Group commit through the library: many requests, one transaction, one savepoint
//! each; a failing request leaves no trace and does not fail its neighbours.

use bd::client::{Backend, Direct, InitOptions, init};
use bd::clock::SystemClock;
use bd::service::{CreateRequest, GroupItem, Request, Response, UpdateRequest, execute_group};
use bd::storage::{BeadsPaths, Store};
use bd::{ErrorKind, fixture};

fn item((actor, request): (String, Request)) -> GroupItem {
    GroupItem {
        actor,
        request,
        deadline_ms: None,
    }
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
    let mut store = Store::open(&paths.db).unwrap();
    let results = execute_group(
        &mut store,
        &SystemClock,
        &paths,
        items.into_iter().map(item).collect(),
    )
    .unwrap();
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
    drop(store);

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
    let store = Store::open(&paths.db).unwrap();
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
    let mut store = Store::open(&paths.db).unwrap();
    let items = (0..200)
        .map(|i| item((format!("agent{}", i % 8), create(&format!("issue {i}")))))
        .collect();
    let results = execute_group(&mut store, &SystemClock, &paths, items).unwrap();
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
    let mut store = Store::open(&paths.db).unwrap();
    let items = vec![
        item(("a".into(), create("on time"))),
        GroupItem {
            actor: "b".into(),
            request: create("too late"),
            deadline_ms: Some(1),
        },
        GroupItem {
            actor: "c".into(),
            request: create("far future"),
            deadline_ms: Some(u64::MAX),
        },
    ];
    let results = execute_group(&mut store, &SystemClock, &paths, items).unwrap();
    assert!(results[0].is_ok() && results[2].is_ok());
    assert_eq!(results[1].as_ref().unwrap_err().kind, ErrorKind::Timeout);
    let n: i64 = store
        .conn()
        .query_row("SELECT COUNT(*) FROM issues", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2);
}
