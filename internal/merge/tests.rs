use super::*;
use proptest::prelude::*;
use serde_json::json;

/// A simulated replica: its own view of the issue and the ops it knows.
struct Replica {
    name: String,
    actor: String,
    doc: IssueDoc,
    known: Vec<Op>,
    hlc: Hlc,
    seq: u64,
}

impl Replica {
    fn new(i: usize) -> Self {
        Replica {
            name: format!("r{i}"),
            actor: format!("agent{i}"),
            doc: IssueDoc::new("bd-1"),
            known: Vec::new(),
            hlc: Hlc::default(),
            seq: 0,
        }
    }

    fn write(
        &mut self,
        now: u64,
        kind: OpKind,
        field: Option<&str>,
        value: Value,
        supersedes: Vec<String>,
    ) -> Op {
        self.hlc = self.hlc.tick(now);
        self.seq += 1;
        let op = Op {
            op_id: String::new(),
            issue: "bd-1".into(),
            of: None,
            kind,
            field: field.map(str::to_string),
            value,
            supersedes,
            hlc: self.hlc,
            actor: self.actor.clone(),
            replica: self.name.clone(),
            seq: self.seq,
        }
        .seal();
        self.receive(&op, now);
        op
    }

    fn receive(&mut self, op: &Op, now: u64) {
        self.hlc = self.hlc.observe(op.hlc, now);
        if self.doc.apply(op) {
            self.known.push(op.clone());
        }
    }

    fn set(&mut self, now: u64, field: &str, value: Value) -> Op {
        let heads = self.doc.field_heads(field);
        self.write(now, OpKind::Set, Some(field), value, heads)
    }

    fn label_add(&mut self, now: u64, label: &str) -> Op {
        self.write(now, OpKind::LabelAdd, None, json!(label), vec![])
    }

    fn label_rm(&mut self, now: u64, label: &str) -> Op {
        let heads = self.doc.label_heads(label);
        self.write(now, OpKind::LabelRemove, None, json!(label), heads)
    }

    fn dep_add(&mut self, now: u64, target: &str) -> Op {
        self.write(
            now,
            OpKind::DepAdd,
            None,
            json!({"depends_on_id": target, "type": "blocks"}),
            vec![],
        )
    }

    fn dep_rm(&mut self, now: u64, target: &str) -> Op {
        let heads = self.doc.dep_heads(target, "blocks");
        self.write(
            now,
            OpKind::DepRemove,
            None,
            json!({"depends_on_id": target, "type": "blocks"}),
            heads,
        )
    }

    fn delete(&mut self, now: u64) -> Op {
        let heads = self.doc.all_heads();
        self.write(now, OpKind::Delete, None, Value::Null, heads)
    }

    fn sync_from(&mut self, other_ops: &[Op], now: u64) {
        for op in other_ops {
            self.receive(op, now);
        }
    }
}

fn created(n: usize) -> Vec<Replica> {
    let mut rs: Vec<Replica> = (0..n).map(Replica::new).collect();
    let create = rs[0].write(
        1,
        OpKind::Create,
        None,
        json!({"title": "start", "status": "open", "priority": 2}),
        vec![],
    );
    for r in rs.iter_mut().skip(1) {
        r.receive(&create, 1);
    }
    rs
}

fn fold(ops: &[Op]) -> Materialised {
    let mut doc = IssueDoc::new("bd-1");
    for op in ops {
        doc.apply(op);
    }
    doc.materialise().expect("create op present")
}

#[test]
fn sequential_writes_do_not_conflict() {
    let mut rs = created(2);
    rs[0].set(10, "title", json!("one"));
    let ops = rs[0].known.clone();
    rs[1].sync_from(&ops, 11);
    rs[1].set(12, "title", json!("two"));
    let m = rs[1].doc.materialise().unwrap();
    assert_eq!(m.issue.title, "two");
    assert!(m.conflicts.is_empty());
}

#[test]
fn concurrent_title_sets_make_one_conflict_naming_both_actors() {
    let mut rs = created(2);
    rs[0].set(10, "title", json!("from zero"));
    rs[1].set(10, "title", json!("from one"));
    let (a, b) = (rs[0].known.clone(), rs[1].known.clone());
    rs[0].sync_from(&b, 20);
    rs[1].sync_from(&a, 20);
    let m0 = rs[0].doc.materialise().unwrap();
    let m1 = rs[1].doc.materialise().unwrap();
    assert_eq!(m0, m1, "both replicas display the same");
    assert_eq!(m0.conflicts.len(), 1);
    let c = &m0.conflicts[0];
    assert_eq!(c.field, "title");
    let actors: BTreeSet<_> = c.contenders.iter().map(|c| c.actor.as_str()).collect();
    assert_eq!(actors, BTreeSet::from(["agent0", "agent1"]));
    assert_eq!(json!(m0.issue.title), c.contenders[0].value);
    // Resolution: a write that saw both contenders clears the conflict everywhere.
    rs[0].set(30, "title", json!("agreed"));
    let a = rs[0].known.clone();
    rs[1].sync_from(&a, 31);
    let m = rs[1].doc.materialise().unwrap();
    assert!(m.conflicts.is_empty());
    assert_eq!(m.issue.title, "agreed");
}

#[test]
fn concurrent_equal_values_are_not_a_conflict() {
    let mut rs = created(2);
    rs[0].set(10, "status", json!("closed"));
    rs[1].set(10, "status", json!("closed"));
    let b = rs[1].known.clone();
    rs[0].sync_from(&b, 20);
    assert!(rs[0].doc.materialise().unwrap().conflicts.is_empty());
}

#[test]
fn concurrent_label_add_and_remove_keeps_the_label() {
    let mut rs = created(2);
    rs[0].label_add(5, "ui");
    let a = rs[0].known.clone();
    rs[1].sync_from(&a, 6);
    rs[1].label_rm(10, "ui");
    rs[0].label_add(10, "ui");
    let (a, b) = (rs[0].known.clone(), rs[1].known.clone());
    rs[0].sync_from(&b, 20);
    rs[1].sync_from(&a, 20);
    for r in &rs {
        let m = r.doc.materialise().unwrap();
        assert_eq!(m.issue.labels, vec!["ui".to_string()]);
        assert!(m.conflicts.is_empty());
    }
    // A remove that saw every add does remove it.
    rs[1].label_rm(30, "ui");
    assert!(rs[1].doc.materialise().unwrap().issue.labels.is_empty());
}

#[test]
fn delete_concurrent_with_edit_is_a_conflict_not_a_resurrection() {
    let mut rs = created(2);
    rs[0].delete(10);
    rs[1].set(10, "title", json!("still working on it"));
    let (a, b) = (rs[0].known.clone(), rs[1].known.clone());
    rs[0].sync_from(&b, 20);
    rs[1].sync_from(&a, 20);
    for r in &rs {
        let m = r.doc.materialise().unwrap();
        assert!(m.deleted);
        assert_eq!(m.conflicts.len(), 1);
        assert_eq!(m.conflicts[0].field, "deleted");
        assert_eq!(m.conflicts[0].contenders.len(), 2);
    }
    // A delete that saw everything is clean.
    let mut rs = created(1);
    rs[0].set(5, "title", json!("x"));
    rs[0].delete(6);
    let m = rs[0].doc.materialise().unwrap();
    assert!(m.deleted && m.conflicts.is_empty());
}

#[test]
fn comments_all_survive_and_unknown_fields_are_kept() {
    let mut rs = created(2);
    rs[0].write(5, OpKind::Comment, None, json!({"text": "a"}), vec![]);
    rs[1].write(5, OpKind::Comment, None, json!({"text": "b"}), vec![]);
    rs[1].set(6, "estimated_minutes", json!(30));
    let b = rs[1].known.clone();
    rs[0].sync_from(&b, 7);
    let m = rs[0].doc.materialise().unwrap();
    assert_eq!(m.issue.comments.len(), 2);
    assert_eq!(m.issue.extra.get("estimated_minutes"), Some(&json!(30)));
}

#[derive(Debug, Clone)]
enum Action {
    Title(usize, u8),
    Status(usize, u8),
    LabelAdd(usize, u8),
    LabelRm(usize, u8),
    DepAdd(usize, u8),
    DepRm(usize, u8),
    Comment(usize),
    Delete(usize),
    Sync(usize, usize),
}

fn action() -> impl Strategy<Value = Action> {
    let r = 0..3usize;
    prop_oneof![
        3 => (r.clone(), 0..3u8).prop_map(|(r, v)| Action::Title(r, v)),
        3 => (r.clone(), 0..3u8).prop_map(|(r, v)| Action::Status(r, v)),
        3 => (r.clone(), 0..3u8).prop_map(|(r, v)| Action::LabelAdd(r, v)),
        3 => (r.clone(), 0..3u8).prop_map(|(r, v)| Action::LabelRm(r, v)),
        3 => (r.clone(), 0..2u8).prop_map(|(r, v)| Action::DepAdd(r, v)),
        3 => (r.clone(), 0..2u8).prop_map(|(r, v)| Action::DepRm(r, v)),
        3 => r.clone().prop_map(Action::Comment),
        1 => r.clone().prop_map(Action::Delete),
        3 => (r.clone(), r).prop_map(|(a, b)| Action::Sync(a, b)),
    ]
}

fn run(actions: &[Action]) -> (Vec<Replica>, Vec<Op>) {
    let mut rs = created(3);
    let mut all = rs[0].known.clone();
    for (t, a) in actions.iter().enumerate() {
        let now = 10 + t as u64 / 2; // several ops share a millisecond
        let r = match a {
            Action::Title(r, _)
            | Action::Status(r, _)
            | Action::LabelAdd(r, _)
            | Action::LabelRm(r, _)
            | Action::DepAdd(r, _)
            | Action::DepRm(r, _)
            | Action::Comment(r)
            | Action::Delete(r) => *r,
            Action::Sync(from, to) => {
                let ops = rs[*from].known.clone();
                rs[*to].sync_from(&ops, now);
                continue;
            }
        };
        if rs[r].doc.is_deleted() {
            continue; // a replica never edits what it knows is deleted
        }
        let op = match a {
            Action::Title(_, v) => rs[r].set(now, "title", json!(format!("t{v}"))),
            Action::Status(_, v) => rs[r].set(
                now,
                "status",
                json!(["open", "in_progress", "closed"][*v as usize]),
            ),
            Action::LabelAdd(_, v) => rs[r].label_add(now, &format!("l{v}")),
            Action::LabelRm(_, v) => rs[r].label_rm(now, &format!("l{v}")),
            Action::DepAdd(_, v) => rs[r].dep_add(now, &format!("bd-t{v}")),
            Action::DepRm(_, v) => rs[r].dep_rm(now, &format!("bd-t{v}")),
            Action::Comment(_) => rs[r].write(
                now,
                OpKind::Comment,
                None,
                json!({"text": format!("c{t}")}),
                vec![],
            ),
            Action::Delete(_) => rs[r].delete(now),
            Action::Sync(..) => unreachable!(),
        };
        all.push(op);
    }
    (rs, all)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn any_delivery_order_converges(actions in prop::collection::vec(action(), 0..40), seed in any::<u64>()) {
        let (mut rs, all) = run(&actions);
        let reference = fold(&all);
        // Shuffle deterministically from the seed, and deliver some ops twice.
        let mut shuffled = all.clone();
        let mut x = seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let dup: Vec<Op> = shuffled.iter().chain(all.iter().step_by(3)).cloned().collect();
        prop_assert_eq!(&fold(&shuffled), &reference);
        prop_assert_eq!(&fold(&dup), &reference);
        // Every replica that has seen every op shows the same thing.
        for r in rs.iter_mut() {
            r.sync_from(&all, 1_000);
            prop_assert_eq!(&r.doc.materialise().unwrap(), &reference);
            prop_assert_eq!(r.doc.op_count(), all.len());
        }
        // No comment is ever lost.
        let comments = all.iter().filter(|o| o.kind == OpKind::Comment).count();
        prop_assert_eq!(reference.issue.comments.len(), comments);
        // Every concurrent scalar pair yields exactly one conflict record per field.
        let fields: BTreeSet<_> = reference.conflicts.iter().map(|c| &c.field).collect();
        prop_assert_eq!(fields.len(), reference.conflicts.len());
        for c in &reference.conflicts {
            prop_assert!(c.contenders.len() >= 2);
            // A deleted issue lists only the delete's conflict: every listed
            // conflict can be resolved.
            prop_assert!(!reference.deleted || c.field == "deleted");
        }
    }
}

#[test]
fn labels_carried_by_a_create_are_removed_one_at_a_time() {
    let mut r = Replica::new(0);
    r.write(1, OpKind::Create, None, json!({"title": "t", "labels": ["a", "b"],
        "dependencies": [{"depends_on_id": "bd-9", "type": "blocks"}, {"depends_on_id": "bd-8", "type": "related"}]}), vec![]);
    assert_eq!(r.doc.materialise().unwrap().issue.labels, vec!["a", "b"]);
    r.label_rm(2, "a");
    r.dep_rm(3, "bd-9");
    let m = r.doc.materialise().unwrap();
    assert_eq!(m.issue.labels, vec!["b"]);
    assert_eq!(m.issue.dependencies.len(), 1);
    assert_eq!(m.issue.dependencies[0].depends_on_id, "bd-8");
}
