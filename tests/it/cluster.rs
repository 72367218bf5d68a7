//! The mesh on a 3-server NATS cluster (issue 14): the stream and buckets
//! keep three copies (R3), and losing one server (kill -9) under load loses
//! no acknowledged op or lease; the daemons fail over by themselves.

use crate::mesh::{Relay, eventually, seen};
use serde_json::Value;
use std::time::Duration;

/// Three `nats-server -js` routed into one cluster on loopback, each with
/// its own store; stopped when dropped.
pub(crate) struct NatsCluster {
    pub(crate) servers: Vec<Relay>,
}

impl NatsCluster {
    pub(crate) fn start() -> NatsCluster {
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let routes: Vec<u16> = (0..3).map(|_| free()).collect();
        let servers = (0..3)
            .map(|i| {
                let others: Vec<String> = routes
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, p)| format!("nats://127.0.0.1:{p}"))
                    .collect();
                Relay::start_with(&[
                    "--server_name",
                    &format!("s{i}"),
                    "--cluster_name",
                    "bd",
                    "--cluster",
                    &format!("nats://127.0.0.1:{}", routes[i]),
                    "--routes",
                    &others.join(","),
                ])
            })
            .collect();
        NatsCluster { servers }
    }

    pub(crate) fn urls(&self) -> Vec<String> {
        self.servers.iter().map(Relay::url).collect()
    }
}

/// Two clones joined to every server of the cluster, daemons running.
fn pair_on(urls: &[String]) -> (crate::sync::Cluster, crate::sync::Clone, crate::sync::Clone) {
    let cluster = crate::sync::Cluster::new();
    let a = cluster.clone("a", "alice");
    a.ok(&["init", "--prefix", "m"]);
    let mut join = vec!["mesh", "join"];
    join.extend(urls.iter().map(String::as_str));
    a.ok(&join);
    a.ok(&["sync"]);
    let b = cluster.clone("b", "bob");
    b.ok(&["init"]);
    b.ok(&join);
    b.ok(&["sync"]);
    a.ok(&["sync"]);
    for c in [&a, &b] {
        c.ok(&["daemon", "start", "-q"]);
    }
    (cluster, a, b)
}

fn status(c: &crate::sync::Clone) -> Value {
    let st: Value = serde_json::from_str(&c.ok(&["mesh", "status", "--json"])).unwrap();
    st["daemon"].clone()
}

#[test]
fn a_three_server_cluster_loses_no_acknowledged_op_or_lease_when_one_server_dies() {
    let mut nats = NatsCluster::start();
    let (_cluster, a, b) = pair_on(&nats.urls());
    // JetStream elects its leaders first: the daemons keep trying until then.
    for c in [&a, &b] {
        assert!(
            eventually(Duration::from_secs(60), || {
                let d = status(c);
                d["connected"] == true && d["copies"] == 3
            }),
            "{}",
            c.ok(&["mesh", "status"])
        );
    }
    // A healthy cluster grants every uncontested claim a lease (a read
    // right after a write once reached a replica behind it: "vanished").
    for i in 0..15 {
        let id = a.create(&[&format!("leased {i}")]);
        let out = a.bd(&["claim", &id, "--json"]);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
    }
    let contested = a.create(&["claimed before the crash"]);
    assert!(eventually(Duration::from_secs(20), || seen(&b, &contested)));
    let token = a.json(&["claim", &contested])[0]["lease"]["token"]
        .as_u64()
        .expect("a lease");
    let mut from_a: Vec<String> = (0..10)
        .map(|i| a.create(&[&format!("a before {i}")]))
        .collect();
    // One server dies mid-load.
    nats.servers[0].stop();
    from_a.extend((0..10).map(|i| a.create(&[&format!("a during {i}")])));
    let from_b: Vec<String> = (0..5)
        .map(|i| b.create(&[&format!("b during {i}")]))
        .collect();
    // Every acknowledged op crosses; the lease survived the crash.
    assert!(
        eventually(Duration::from_secs(60), || {
            from_a.iter().all(|id| seen(&b, id)) && from_b.iter().all(|id| seen(&a, id))
        }),
        "a: {}\nb: {}",
        a.ok(&["mesh", "status"]),
        b.ok(&["mesh", "status"])
    );
    // Refused every time; once the cluster has a leader for the lease bucket
    // again (a claim during the election is refused by the local check), by
    // the very lease taken before the crash.
    let mut last = String::new();
    let by_the_lease = eventually(Duration::from_secs(30), || {
        let refused = b.bd(&["claim", &contested]);
        assert_eq!(refused.status.code(), Some(3), "{refused:?}");
        last = String::from_utf8_lossy(&refused.stderr).into_owned();
        last.contains(&format!("lease {token}"))
    });
    assert!(by_the_lease, "{last}");
    // The server comes back: nothing to do, everything still agrees.
    nats.servers[0].restart();
    let last = a.create(&["after the return"]);
    assert!(eventually(Duration::from_secs(30), || seen(&b, &last)));
    assert_eq!(a.state_hash(), b.state_hash());
    let acked = 1 + from_a.len() + from_b.len() + 1;
    println!(
        "jepsen 3-server cluster, one killed -9: ops acknowledged {acked} / present {acked} / lost 0, leases 1 / kept 1 (token {token})"
    );
}
