//! The mesh, part 2 (issue 14): leases with fencing in the relay's key-value
//! bucket, against a real `nats-server -js`.

use crate::mesh::{Relay, block_on};
use bd::mesh::lease::{self, Grant};
use std::time::Duration;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn bucket(url: &str) -> async_nats::jetstream::kv::Store {
    let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
    lease::open(&js, "leasetest").await.unwrap()
}

/// Twenty agents on their own connections ask for one issue at once:
/// exactly one is granted, the others are told who holds it and its token.
#[test]
fn twenty_agents_racing_for_one_lease_make_one_winner() {
    let relay = Relay::start();
    let url = relay.url();
    let grants: Vec<Grant> = block_on(async {
        let stores: Vec<_> = futures_util::future::join_all((0..20).map(|_| bucket(&url))).await;
        futures_util::future::join_all(stores.iter().enumerate().map(|(i, kv)| async move {
            let (holder, replica) = (format!("agent-{i}"), format!("replica{}", i % 3));
            lease::acquire(
                kv,
                "m-race",
                &holder,
                &replica,
                Duration::from_secs(60),
                now_ms(),
            )
            .await
        }))
        .await
        .into_iter()
        .map(|g| g.unwrap())
        .collect()
    });
    let winners: Vec<&lease::Lease> = grants
        .iter()
        .filter_map(|g| match g {
            Grant::Granted(l) => Some(l),
            Grant::Held(_) => None,
        })
        .collect();
    assert_eq!(winners.len(), 1, "{grants:?}");
    let token = winners[0].fence();
    assert!(token > 0);
    for g in &grants {
        if let Grant::Held(l) = g {
            assert_eq!(
                l.holder, winners[0].holder,
                "every loser is told who holds it"
            );
            assert_eq!(l.fence(), token);
        }
    }
}

/// A renewal keeps the grant's token; a release by someone else does
/// nothing; a release by the holder frees it, and the next grant carries a
/// larger token. A lease past its TTL is taken over, with a larger token,
/// and its old holder is then told it lost it.
#[test]
fn tokens_only_grow_and_survive_renewal_not_takeover() {
    let relay = Relay::start();
    let url = relay.url();
    block_on(async {
        let kv = bucket(&url).await;
        let ttl = Duration::from_secs(60);
        let Grant::Granted(first) = lease::acquire(&kv, "m-1", "alice", "ra", ttl, now_ms())
            .await
            .unwrap()
        else {
            panic!("free lease not granted")
        };
        let Grant::Granted(renewed) = lease::acquire(&kv, "m-1", "alice", "ra", ttl, now_ms())
            .await
            .unwrap()
        else {
            panic!("the holder's renewal was refused")
        };
        assert_eq!(renewed.fence(), first.fence(), "a renewal keeps its token");
        assert!(renewed.written_ms >= first.written_ms);
        let held = lease::acquire(&kv, "m-1", "bob", "rb", ttl, now_ms())
            .await
            .unwrap();
        assert!(
            matches!(&held, Grant::Held(l) if l.holder == "alice"),
            "{held:?}"
        );
        assert!(
            !lease::release(&kv, "m-1", "bob", "rb").await.unwrap(),
            "not bob's to release"
        );
        assert!(lease::release(&kv, "m-1", "alice", "ra").await.unwrap());
        assert_eq!(lease::current(&kv, "m-1").await.unwrap(), None);
        let Grant::Granted(second) = lease::acquire(&kv, "m-1", "bob", "rb", ttl, now_ms())
            .await
            .unwrap()
        else {
            panic!("a released lease was not granted")
        };
        assert!(
            second.fence() > first.fence(),
            "a new grant has a larger token"
        );

        // Expiry: a short lease, then someone else after it lapsed.
        let short = Duration::from_millis(300);
        let Grant::Granted(old) = lease::acquire(&kv, "m-2", "carol", "rc", short, now_ms())
            .await
            .unwrap()
        else {
            panic!()
        };
        let early = lease::acquire(&kv, "m-2", "dave", "rd", short, now_ms())
            .await
            .unwrap();
        assert!(
            matches!(early, Grant::Held(_)),
            "not expired yet: {early:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Grant::Granted(new) = lease::acquire(&kv, "m-2", "dave", "rd", ttl, now_ms())
            .await
            .unwrap()
        else {
            panic!("an expired lease was not taken over")
        };
        assert!(new.fence() > old.fence(), "the takeover's token is larger");
        let late = lease::acquire(&kv, "m-2", "carol", "rc", short, now_ms())
            .await
            .unwrap();
        assert!(
            matches!(&late, Grant::Held(l) if l.holder == "dave"),
            "{late:?}"
        );
    });
}

/// Issue ids become bucket keys without two ids sharing one.
#[test]
fn lease_keys_are_valid_and_distinct() {
    let ids = [
        "m-1",
        "m-1.2",
        "m_1",
        "m~1",
        "m-1~9e7108",
        "m.",
        ".m",
        "m/1",
        "M-1",
        "a..b",
        "a.b",
    ];
    let keys: Vec<String> = ids.iter().map(|i| lease::key(i)).collect();
    for k in &keys {
        assert!(
            !k.is_empty() && !k.starts_with('.') && !k.ends_with('.') && !k.contains(".."),
            "{k}"
        );
        assert!(
            k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_=/.".contains(c)),
            "{k}"
        );
    }
    let mut unique = keys.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), keys.len(), "{keys:?}");
}

/// Runs two claims at the same moment; asserts that exactly one succeeded
/// and the other was refused with exit 3. Whether the first won.
fn one_wins(
    first: impl FnOnce() -> std::process::Output + Send,
    second: impl FnOnce() -> std::process::Output + Send,
) -> bool {
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(first);
        let tb = s.spawn(second);
        (ta.join().unwrap(), tb.join().unwrap())
    });
    let codes = [ra.status.code(), rb.status.code()];
    assert!(
        codes == [Some(0), Some(3)] || codes == [Some(3), Some(0)],
        "{codes:?} {} {}",
        String::from_utf8_lossy(&ra.stderr),
        String::from_utf8_lossy(&rb.stderr)
    );
    codes[0] == Some(0)
}

/// Two clones, each with its daemon on the relay, claim the same issues at
/// the same moment: for each issue exactly one claim is granted (the relay's
/// lease decides); the other is refused with exit 3, and both clones end
/// with the winner as the assignee and no conflict.
#[test]
fn claims_on_two_clones_at_once_make_one_winner_per_issue() {
    let relay = Relay::start();
    let (_cluster, a, b) = crate::mesh::pair(&relay);
    // Both daemons are connected (their lease desks open) before racing.
    for c in [&a, &b] {
        assert!(crate::mesh::eventually(Duration::from_secs(10), || {
            let st: serde_json::Value =
                serde_json::from_str(&c.ok(&["mesh", "status", "--json"])).unwrap();
            st["daemon"]["connected"] == true
        }));
    }
    let ids: Vec<String> = (0..5)
        .map(|i| a.create(&[&format!("contested {i}")]))
        .collect();
    for id in &ids {
        assert!(crate::mesh::eventually(Duration::from_secs(10), || {
            crate::mesh::seen(&b, id)
        }));
    }
    for id in &ids {
        let a_won = one_wins(
            || a.bd(&["update", id, "--claim"]),
            || b.bd(&["update", id, "--claim"]),
        );
        let winner = if a_won { "alice" } else { "bob" };
        for c in [&a, &b] {
            assert!(
                crate::mesh::eventually(Duration::from_secs(10), || {
                    c.json(&["show", id])[0]["assignee"] == winner
                }),
                "{id}: {}",
                c.json(&["show", id])
            );
        }
    }
    for c in [&a, &b] {
        assert_eq!(
            c.json(&["stats"])["conflicts"],
            0,
            "no two winners anywhere"
        );
    }
    // A claim inside a batch takes the lease too (all or nothing).
    let batched = a.create(&["contested in a batch"]);
    assert!(crate::mesh::eventually(Duration::from_secs(10), || {
        crate::mesh::seen(&b, &batched)
    }));
    let file = a.root.join("claim.jsonl");
    std::fs::write(
        &file,
        format!("{{\"op\":\"update\",\"ids\":[\"{batched}\"],\"claim\":true}}\n"),
    )
    .unwrap();
    one_wins(
        || a.bd(&["batch", "-f", file.to_str().unwrap()]),
        || b.bd(&["update", &batched, "--claim"]),
    );
    // Given up (unassigned and back to open), an issue can be claimed from
    // the other clone at once: its lease went with it.
    let id = &ids[0];
    let (holder, other) = if a.json(&["show", id])[0]["assignee"] == "alice" {
        (&a, &b)
    } else {
        (&b, &a)
    };
    holder.ok(&["update", id, "--assignee", "", "--status", "open"]);
    assert!(crate::mesh::eventually(Duration::from_secs(10), || {
        other.json(&["show", id])[0]["assignee"].is_null()
    }));
    other.ok(&["update", id, "--claim"]);
}
