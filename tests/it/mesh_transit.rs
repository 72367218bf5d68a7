//! The mesh, part 1 (issue 13): batches out of order. A replica's ops carry
//! contiguous seqs; a relay batch whose predecessor is not here waits in
//! transit (acked 0 TRANSIT) until the predecessor arrives (through the relay
//! or git), then is applied and acked +1.

use crate::mesh::{
    Relay, batch, block_on, create_op, eventually, first_clone, publish_raw, replica_key, seen,
};
use async_nats::jetstream;
use futures_util::StreamExt;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Collects the acknowledgements published on `subject` (for 60 s after the
/// last one at most), subscribed before it returns.
fn collect(url: &str, subject: String) -> Arc<Mutex<Vec<Value>>> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let (url, seen) = (url.to_string(), out.clone());
    std::thread::spawn(move || {
        block_on(async {
            let client = async_nats::connect(url).await.unwrap();
            let mut sub = client.subscribe(subject).await.unwrap();
            client.flush().await.unwrap();
            ready_tx.send(()).unwrap();
            while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(60), sub.next()).await
            {
                if let Ok(v) = serde_json::from_slice::<Value>(&m.payload) {
                    seen.lock().unwrap().push(v);
                }
            }
        });
    });
    ready.recv_timeout(Duration::from_secs(10)).unwrap();
    out
}

/// The acks so far, as (kind, seq).
fn kinds(acks: &Mutex<Vec<Value>>) -> Vec<(i64, u64)> {
    acks.lock()
        .unwrap()
        .iter()
        .map(|a| (a["kind"].as_i64().unwrap(), a["seq"].as_u64().unwrap()))
        .collect()
}

fn mesh_status(c: &crate::sync::Clone) -> Value {
    serde_json::from_str(&c.ok(&["mesh", "status", "--json"])).unwrap()
}

/// Clone a (joined, no daemon) and clone b (joined, with a's key, no daemon
/// yet); a's replica, the repo id, and the next seq of a's replica.
fn setup(
    relay: &Relay,
) -> (
    crate::sync::Cluster,
    crate::sync::Clone,
    crate::sync::Clone,
    String,
    String,
    u64,
) {
    let (cluster, a) = first_clone(relay);
    let b = cluster.clone("b", "bob");
    b.ok(&["init"]);
    b.ok(&["mesh", "join", &relay.url()]);
    let st = mesh_status(&a);
    let replica = st["replica"].as_str().unwrap().to_string();
    let repo = st["repo_id"].as_str().unwrap().to_string();
    let next = a.json(&["stats"])["ops"].as_u64().unwrap() + 1;
    (cluster, a, b, replica, repo, next)
}

/// A signed one-op batch creating `issue` as a's replica's op `seq`.
fn signed(cluster: &crate::sync::Cluster, replica: &str, issue: &str, seq: u64) -> Vec<u8> {
    let text = serde_json::to_string(&vec![create_op(issue, issue, replica, seq)]).unwrap();
    batch(replica, &text, &replica_key(cluster, replica), &text)
}

/// Issue 13's out-of-order test: a batch whose predecessor has not arrived is
/// not applied (0 TRANSIT, kept in transit, shown by `bd mesh status`); when
/// the predecessor arrives both are applied, in order, each acked +1.
#[test]
fn a_batch_ahead_of_its_predecessor_waits_in_transit_then_follows_it() {
    let relay = Relay::start();
    let (cluster, _a, b, replica, repo, next) = setup(&relay);
    crate::mesh::start_connected(&b);
    let acks = collect(&relay.url(), format!("bd.{repo}.ack.{replica}"));
    let subject = format!("bd.{repo}.ops.{replica}");

    publish_raw(
        &relay.url(),
        subject.clone(),
        signed(&cluster, &replica, "m-second", next + 1),
    );
    assert!(
        eventually(Duration::from_secs(10), || kinds(&acks) == [(0, next + 1)]),
        "0 TRANSIT for the early batch: {:?}",
        kinds(&acks)
    );
    assert!(
        !seen(&b, "m-second"),
        "a batch ahead of its predecessor is not applied"
    );
    assert_eq!(mesh_status(&b)["in_transit"], 1);
    let human = b.ok(&["mesh", "status"]);
    assert!(human.contains("in transit: 1 batch(es) waiting"), "{human}");
    let reason = acks.lock().unwrap()[0]["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains(&format!("{next}..{next}")), "{reason}");

    publish_raw(
        &relay.url(),
        subject,
        signed(&cluster, &replica, "m-first", next),
    );
    assert!(eventually(Duration::from_secs(10), || seen(&b, "m-first")
        && seen(&b, "m-second")));
    assert!(
        eventually(Duration::from_secs(5), || kinds(&acks).len() == 3),
        "{:?}",
        kinds(&acks)
    );
    assert_eq!(
        kinds(&acks),
        [(0, next + 1), (1, next), (1, next + 1)],
        "+1 for each, in order"
    );
    assert_eq!(mesh_status(&b)["in_transit"], 0);
    // Each op once.
    let list = b.json(&["list", "--all", "-n", "0"]);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    assert!(b.bd(&["doctor"]).status.success(), "doctor is clean");
}

/// A batch held back behind a redelivery (here: delivered to someone who
/// never acks it, so the relay would deliver it again only after a minute)
/// does not wait for it: the daemon finds the predecessor in the stream.
#[test]
fn a_predecessor_held_back_by_a_redelivery_is_fetched_from_the_stream() {
    let relay = Relay::start();
    let (cluster, _a, b, replica, repo, next) = setup(&relay);
    let b_replica = mesh_status(&b)["replica"].as_str().unwrap().to_string();
    let subject = format!("bd.{repo}.ops.{replica}");
    let (url, first, second) = (
        relay.url(),
        signed(&cluster, &replica, "m-first", next),
        signed(&cluster, &replica, "m-second", next + 1),
    );
    let taken = block_on(async {
        let js = jetstream::new(async_nats::connect(&url).await.unwrap());
        let stream = js
            .get_or_create_stream(jetstream::stream::Config {
                name: format!("BD_{repo}"),
                subjects: vec![format!("bd.{repo}.ops.>")],
                ..Default::default()
            })
            .await
            .unwrap();
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::Config {
                durable_name: Some(format!("bd-{b_replica}")),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(60),
                ..Default::default()
            })
            .await
            .unwrap();
        for payload in [first, second] {
            js.publish(subject.clone(), payload.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
        // Take the first batch off b's consumer and never ack it.
        let mut batch = consumer.fetch().max_messages(1).messages().await.unwrap();
        let m = batch.next().await.unwrap().unwrap();
        String::from_utf8_lossy(&m.payload).into_owned()
    });
    assert!(taken.contains("m-first"), "{taken}");
    b.ok(&["daemon", "start", "-q"]);
    assert!(
        eventually(Duration::from_secs(15), || seen(&b, "m-first")
            && seen(&b, "m-second")),
        "the held-back predecessor is fetched, not waited for"
    );
    assert_eq!(mesh_status(&b)["in_transit"], 0);
    let list = b.json(&["list", "--all", "-n", "0"]);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
}

/// A stream that keeps less than a clone missed (here: one message): the
/// daemon says its cursor fell out of the retention, keeps what it got in
/// transit, and git fills the gap, after which the batch goes through.
#[test]
fn a_cursor_out_of_retention_is_told_and_git_fills_the_gap() {
    let relay = Relay::start();
    let (_cluster, a, b, _replica, repo, _next) = setup(&relay);
    b.ok(&["sync"]);
    a.ok(&["sync"]);
    let url = relay.url();
    block_on(async {
        let js = jetstream::new(async_nats::connect(&url).await.unwrap());
        js.create_stream(jetstream::stream::Config {
            name: format!("BD_{repo}"),
            subjects: vec![format!("bd.{repo}.ops.>")],
            max_messages: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    });
    a.ok(&["daemon", "start", "-q"]);
    let ids: Vec<String> = (0..3).map(|i| a.create(&[&format!("early {i}")])).collect();
    assert!(eventually(Duration::from_secs(10), || {
        mesh_status(&a)["daemon"]["outbox"] == 0
            && mesh_status(&a)["daemon"]["published_seq"].as_u64() > Some(0)
    }));
    b.ok(&["daemon", "start", "-q"]);
    assert!(
        eventually(Duration::from_secs(10), || {
            let st = mesh_status(&b);
            st["in_transit"] == 1 && st["daemon"]["behind_retention"] == true
        }),
        "{}",
        mesh_status(&b)
    );
    assert!(
        !seen(&b, &ids[2]),
        "the kept batch waits for its predecessors"
    );
    let human = b.ok(&["mesh", "status"]);
    assert!(
        human.contains("fell out of the stream's retention"),
        "{human}"
    );
    a.ok(&["sync"]);
    b.ok(&["sync"]);
    assert!(
        eventually(Duration::from_secs(15), || mesh_status(&b)["in_transit"]
            == 0),
        "the batch leaves transit once git filled the gap"
    );
    for id in &ids {
        assert!(seen(&b, id), "{id}");
    }
    assert!(eventually(Duration::from_secs(10), || a.state_hash() == b.state_hash()));
}
