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
    /// The token of the lease this replica's writer believes it holds.
    fence: Option<u64>,
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
            fence: None,
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
            fence: self.fence,
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
    /// The replica's writer is granted the next lease and claims.
    Claim(usize),
    /// The replica's writer stops writing under a lease.
    Unfence(usize),
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
        2 => r.clone().prop_map(Action::Claim),
        1 => r.clone().prop_map(Action::Unfence),
        3 => (r.clone(), r).prop_map(|(a, b)| Action::Sync(a, b)),
    ]
}

fn run(actions: &[Action]) -> (Vec<Replica>, Vec<Op>) {
    let mut rs = created(3);
    let mut all = rs[0].known.clone();
    let mut tokens = 0u64; // the relay's revisions: they only grow
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
            | Action::Claim(r)
            | Action::Delete(r) => *r,
            Action::Unfence(r) => {
                rs[*r].fence = None;
                continue;
            }
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
            Action::Claim(_) => {
                tokens += 1 + t as u64 % 3;
                rs[r].fence = Some(tokens);
                let actor = json!(rs[r].actor.clone());
                rs[r].set(now, "assignee", actor)
            }
            Action::Sync(..) | Action::Unfence(_) => unreachable!(),
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
        // No comment is ever lost: each is shown, or is a late write listed
        // in the claim conflict.
        let mut doc = IssueDoc::new("bd-1");
        for op in &all {
            doc.apply(op);
        }
        let comments = all
            .iter()
            .filter(|o| o.kind == OpKind::Comment && !doc.is_late(&o.op_id))
            .count();
        prop_assert_eq!(reference.issue.comments.len(), comments);
        let late = all.iter().filter(|o| doc.is_late(&o.op_id)).count();
        let listed = reference
            .conflicts
            .iter()
            .find(|c| c.field == CLAIM_FIELD)
            .map_or(0, |c| c.contenders.len() - 1);
        prop_assert!(reference.deleted || listed == late);
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

/// A replica's writer granted lease `token`, claiming: every later write of
/// it carries the token.
fn claim(r: &mut Replica, now: u64, token: u64) -> Op {
    r.fence = Some(token);
    let actor = json!(r.actor.clone());
    r.set(now, "assignee", actor)
}

#[test]
fn a_late_write_under_a_lapsed_lease_stays_out_and_is_a_claim_conflict() {
    let mut rs = created(2);
    let a_claim = claim(&mut rs[0], 2, 3);
    let a_note = rs[0].set(3, "notes", json!("working"));
    // B sees A's work, A's lease lapses, B takes it over with a newer token.
    let a_ops = rs[0].known.clone();
    rs[1].sync_from(&a_ops, 4);
    let b_claim = claim(&mut rs[1], 5, 7);
    // A, cut off, goes on writing under its old token.
    let late = rs[0].set(6, "title", json!("A's late title"));
    let all: Vec<Op> = rs[0].known.iter().chain(&rs[1].known).cloned().collect();
    for order in [all.clone(), all.iter().rev().cloned().collect()] {
        let m = fold(&order);
        assert_eq!(m.issue.title, "start", "the late write is not applied");
        assert_eq!(m.issue.notes, "working", "A's write before B's lease stays");
        assert_eq!(m.issue.assignee.as_deref(), Some("agent1"));
        let c = m.conflicts.iter().find(|c| c.field == CLAIM_FIELD).expect("claim conflict");
        let ids: Vec<&str> = c.contenders.iter().map(|k| k.op_id.as_str()).collect();
        assert_eq!(ids, [b_claim.op_id.as_str(), late.op_id.as_str()]);
        assert_eq!(c.contenders[0].value["fence"], 7);
        assert_eq!(c.contenders[1].value["fence"], 3);
        assert_eq!(c.contenders[1].value["late"]["title"], "A's late title");
    }
    let mut doc = IssueDoc::new("bd-1");
    for op in &all {
        doc.apply(op);
    }
    assert!(doc.is_late(&late.op_id));
    assert!(!doc.is_late(&a_claim.op_id) && !doc.is_late(&a_note.op_id));
    assert_eq!(doc.lease(), Some((7, "agent1")));
}

#[test]
fn a_claim_resolution_settles_late_writes_without_applying_them() {
    let mut rs = created(2);
    claim(&mut rs[0], 2, 3);
    let a_ops = rs[0].known.clone();
    rs[1].sync_from(&a_ops, 3);
    claim(&mut rs[1], 4, 8);
    let late = rs[0].write(5, OpKind::Comment, None, json!({"text": "late"}), vec![]);
    rs[1].receive(&late, 6);
    rs[1].fence = None;
    let settle = rs[1].write(7, OpKind::Set, Some(CLAIM_FIELD), json!("drop"), vec![late.op_id.clone()]);
    let m = rs[1].doc.materialise().unwrap();
    assert!(m.conflicts.iter().all(|c| c.field != CLAIM_FIELD), "{:?}", m.conflicts);
    assert!(m.issue.comments.is_empty(), "settled, not applied");
    // Settled anywhere, in any order.
    let all: Vec<Op> = rs[0].known.iter().chain(&rs[1].known).chain([&settle]).cloned().collect();
    assert_eq!(fold(&all), fold(&all.iter().rev().cloned().collect::<Vec<_>>()));
}
