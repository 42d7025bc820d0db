//! Several `netsy serve` processes on one LocalStack prefix, through the real etcd client:
//! followers answer every RPC (reads from their own state, linearizable ones after a
//! read-index round, writes and lease calls forwarded to the leader and answered once the
//! follower holds them), watches on a follower see what was written anywhere, and when the
//! leader goes (kill -9, SIGTERM) a follower takes over with every acknowledged write.

mod common;

use common::Netsy;
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

async fn s3_prefix(name: &str) -> String {
    common::s3_store("probe").await;
    format!(
        "s3://{}/{}",
        common::s3_bucket(),
        common::unique_prefix(name)
    )
}

/// Starts `n` nodes on `store`, the first of which leads.
async fn start_cluster(store: &str, n: usize, lease_seconds: &str) -> Vec<Netsy> {
    let mut nodes = Vec::new();
    for i in 0..n {
        let name = format!("n{i}");
        nodes.push(
            Netsy::start(
                store,
                &["--name", &name, "--leader-lease-seconds", lease_seconds],
            )
            .await,
        );
    }
    nodes
}

async fn client(n: &Netsy) -> Client {
    n.client().await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_serve_every_rpc() {
    let store = s3_prefix("cluster").await;
    let nodes = start_cluster(&store, 3, "15").await;
    let (mut a, mut b, mut c) = (
        client(&nodes[0]).await,
        client(&nodes[1]).await,
        client(&nodes[2]).await,
    );

    // Status: everyone reports the same leader, the first node.
    let leader_id = a.status().await.unwrap().header().unwrap().member_id();
    for cl in [&mut a, &mut b, &mut c] {
        let s = cl.status().await.unwrap();
        assert_eq!(s.leader(), leader_id);
        assert_eq!(s.raft_term(), 1);
    }
    // MemberList from a follower: every node with its client URL.
    let members = c.member_list().await.unwrap();
    let mut urls: Vec<String> = members
        .members()
        .iter()
        .map(|m| m.client_urls()[0].clone())
        .collect();
    urls.sort();
    let mut expected: Vec<String> = nodes.iter().map(|n| format!("http://{}", n.addr)).collect();
    expected.sort();
    assert_eq!(urls, expected);

    // A watch on a follower, from before the first write.
    let mut events = c
        .watch("k", Some(WatchOptions::new().with_prefix().with_prev_key()))
        .await
        .unwrap();

    // A write through a follower is visible, linearizably, on every node at once: the
    // revision it was acknowledged at is in each node's answer.
    let put = b.put("k1", "v1", None).await.unwrap();
    let rev = put.header().unwrap().revision();
    assert_eq!(rev, 2);
    for cl in [&mut a, &mut b, &mut c] {
        let got = cl.get("k1", None).await.unwrap();
        assert_eq!(got.kvs()[0].value(), b"v1");
        assert_eq!(got.kvs()[0].mod_revision(), rev);
    }
    // Read-your-writes on the node written through, even serializably.
    let put = c.put("k2", "v2", None).await.unwrap();
    let got = c
        .get("k2", Some(GetOptions::new().with_serializable()))
        .await
        .unwrap();
    assert_eq!(
        got.kvs()[0].mod_revision(),
        put.header().unwrap().revision()
    );

    // Compare-and-swap through a follower: one wins, the other sees the new value.
    let cas = |value: &'static str| {
        Txn::new()
            .when([Compare::value("k1", CompareOp::Equal, "v1")])
            .and_then([TxnOp::put("k1", value, None)])
            .or_else([TxnOp::get("k1", None)])
    };
    let first = b.txn(cas("b")).await.unwrap();
    let second = c.txn(cas("c")).await.unwrap();
    assert!(first.succeeded());
    assert!(!second.succeeded());
    // Deletes through the leader and a follower.
    a.delete("k2", None).await.unwrap();
    let head = b
        .delete("k1", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();

    let mut seen = Vec::new();
    while seen.len() < 5 {
        let resp = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .expect("the follower's watch went quiet")
            .unwrap()
            .unwrap();
        for e in resp.events() {
            let kv = e.kv().unwrap();
            seen.push((
                e.event_type(),
                kv.key_str().unwrap().to_string(),
                kv.mod_revision(),
                e.prev_kv().map(|p| p.value_str().unwrap().to_string()),
            ));
        }
    }
    assert_eq!(
        seen,
        vec![
            (EventType::Put, "k1".into(), 2, None),
            (EventType::Put, "k2".into(), 3, None),
            (EventType::Put, "k1".into(), 4, Some("v1".into())),
            (EventType::Delete, "k2".into(), 5, Some("v2".into())),
            (EventType::Delete, "k1".into(), head, Some("b".into())),
        ]
    );

    // Compaction through a follower, seen by the other follower.
    b.compact(4, None).await.unwrap();
    let err = c
        .get("k1", Some(GetOptions::new().with_revision(3)))
        .await
        .expect_err("read below the compacted revision");
    assert!(err.to_string().contains("compacted"), "{err}");

    // Leases live on the leader; every call works from any node.
    let lease = c.lease_grant(30, None).await.unwrap().id();
    b.put("leased", "x", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    let ttl = b
        .lease_time_to_live(
            lease,
            Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
        )
        .await
        .unwrap();
    assert_eq!(ttl.granted_ttl(), 30);
    assert_eq!(ttl.keys(), [b"leased".to_vec()]);
    let leases = c.leases().await.unwrap();
    assert!(leases.leases().iter().any(|l| l.id() == lease));
    let (mut keeper, mut kept) = c.lease_keep_alive(lease).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let answer = kept.message().await.unwrap().unwrap();
    assert_eq!((answer.id(), answer.ttl()), (lease, 30));
    c.lease_revoke(lease).await.unwrap();
    // The revoke deleted the key, on the follower it was sent to.
    assert!(c
        .get("leased", Some(GetOptions::new().with_serializable()))
        .await
        .unwrap()
        .kvs()
        .is_empty());
}

/// Acknowledged writes: key -> revision.
type Acked = Arc<Mutex<BTreeMap<String, i64>>>;

/// Writes a new key through `addr` every 50 ms, noting every acknowledgement's time; one
/// runs per node, so together they are a client writing to all of them.
async fn writer(
    addr: String,
    w: usize,
    acked: Acked,
    times: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
) {
    let mut client: Option<Client> = None;
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        if client.is_none() {
            client = common::connect(&addr, Duration::from_secs(2)).await.ok();
        }
        if let Some(c) = client.as_mut() {
            i += 1;
            let key = format!("/w/{w}/{i:06}");
            match c.put(key.clone(), "x", None).await {
                Ok(r) => {
                    acked
                        .lock()
                        .unwrap()
                        .insert(key, r.header().unwrap().revision());
                    times.lock().unwrap().push(Instant::now());
                }
                Err(_) => client = None,
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The head revision a node serves (serializably).
async fn follower_head(n: &Netsy) -> i64 {
    client(n)
        .await
        .get("/", Some(GetOptions::new().with_serializable()))
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
}

/// The longest gap between acknowledgements after `from`.
fn longest_gap(times: &[Instant], from: Instant) -> Duration {
    let mut last = from;
    let mut gap = Duration::ZERO;
    for t in times.iter().filter(|t| **t > from) {
        gap = gap.max(t.duration_since(last));
        last = *t;
    }
    gap
}

async fn verify(addr: &str, acked: &Acked) {
    let mut c = common::connect(addr, Duration::from_secs(5)).await.unwrap();
    let all = c
        .get("/w/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let present: BTreeMap<String, i64> = all
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_string(), kv.mod_revision()))
        .collect();
    for (key, rev) in acked.lock().unwrap().iter() {
        assert_eq!(
            present.get(key),
            Some(rev),
            "acknowledged write {key}@{rev} is lost"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_takes_over_after_kill_9_and_sigterm() {
    let store = s3_prefix("failover").await;
    let mut nodes = start_cluster(&store, 3, "3").await;
    let acked: Acked = Arc::default();
    let times: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(w, n)| {
            tokio::spawn(writer(
                n.addr.clone(),
                w,
                acked.clone(),
                times.clone(),
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // kill -9: no word from the leader. A follower serves serializable reads meanwhile and
    // refuses linearizable ones until a new leader exists.
    let mut require_leader = etcd_client::Client::connect(
        [nodes[1].addr.as_str()],
        Some(etcd_client::ConnectOptions::new().with_require_leader(true)),
    )
    .await
    .unwrap();
    require_leader
        .get("/w/", Some(GetOptions::new().with_serializable()))
        .await
        .expect("a leader exists");
    // A require-leader watch on a follower outlives a failover shorter than its grace.
    let mut watch = require_leader
        .watch("/w/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let head_at_kill = follower_head(&nodes[1]).await;
    let killed = Instant::now();
    nodes[0].kill9();
    let mut follower = client(&nodes[1]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = follower
        .get("/w/", Some(GetOptions::new().with_prefix()))
        .await
        .expect_err("a linearizable read with no leader");
    assert!(err.to_string().contains("etcdserver: no leader"), "{err}");
    // A client that requires a leader (etcd's `hasleader` metadata) is refused even a
    // serializable read.
    let err = require_leader
        .get("/w/", Some(GetOptions::new().with_serializable()))
        .await
        .expect_err("hasleader with no leader");
    assert!(err.to_string().contains("etcdserver: no leader"), "{err}");
    follower
        .get(
            "/w/",
            Some(GetOptions::new().with_prefix().with_serializable()),
        )
        .await
        .expect("serializable reads are served without a leader");
    let deadline = Instant::now() + Duration::from_secs(30);
    while times
        .lock()
        .unwrap()
        .iter()
        .filter(|t| **t > killed)
        .count()
        < 10
    {
        assert!(
            Instant::now() < deadline,
            "no new leader:\n{}\n{}",
            nodes[1].log(),
            nodes[2].log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after_kill = longest_gap(&times.lock().unwrap(), killed);
    let mut newest = 0;
    while newest <= head_at_kill + 5 {
        let msg = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .expect("the require-leader watch went quiet")
            .expect("the require-leader watch failed across the failover")
            .expect("the require-leader watch ended across the failover");
        assert!(!msg.canceled(), "canceled: {}", msg.cancel_reason());
        newest = msg
            .events()
            .iter()
            .filter_map(|e| e.kv().map(|kv| kv.mod_revision()))
            .max()
            .unwrap_or(newest);
    }

    // SIGTERM: the leader releases its lease and a follower takes it at once.
    let leader = {
        let mut c = client(&nodes[1]).await;
        let s = c.status().await.unwrap();
        if s.leader() == s.header().unwrap().member_id() {
            1
        } else {
            2
        }
    };
    let terminated = Instant::now();
    assert!(nodes[leader].terminate().success());
    let survivor = 3 - leader;
    let deadline = Instant::now() + Duration::from_secs(30);
    while times
        .lock()
        .unwrap()
        .iter()
        .filter(|t| **t > terminated)
        .count()
        < 10
    {
        assert!(
            Instant::now() < deadline,
            "no new leader:\n{}",
            nodes[survivor].log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after_term = longest_gap(&times.lock().unwrap(), terminated);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    verify(&nodes[survivor].addr, &acked).await;
    eprintln!(
        "{} writes acknowledged and verified; longest gap between acknowledged writes: {after_kill:?} after kill -9 of the leader, {after_term:?} after SIGTERM",
        acked.lock().unwrap().len()
    );
}
