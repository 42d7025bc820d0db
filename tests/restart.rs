//! No acknowledged write is lost across `kill -9`: many clients write, the server is killed
//! in the middle, restarted on the same bucket, and every acknowledged write must be there
//! with the revision it was acknowledged at, and revisions must have no gaps.

mod common;

use common::Netsy;
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Acked = Arc<Mutex<BTreeMap<String, (i64, String)>>>;

/// Writers that each put unique keys (plain puts and Kubernetes-style create txns) until the
/// server goes away, recording what was acknowledged.
fn spawn_writers(addr: String, acked: Acked, round: usize) -> Vec<tokio::task::JoinHandle<()>> {
    (0..8)
        .map(|w| {
            let (addr, acked) = (addr.clone(), acked.clone());
            tokio::spawn(async move {
                let Ok(mut c) = etcd_client::Client::connect([addr.as_str()], None).await else {
                    return;
                };
                for i in 0.. {
                    let key = format!("/registry/r{round}/w{w}/k{i:05}");
                    let value = format!("v-{round}-{w}-{i}");
                    let rev = if i % 2 == 0 {
                        match c.put(key.clone(), value.clone(), None).await {
                            Ok(r) => r.header().unwrap().revision(),
                            Err(_) => return,
                        }
                    } else {
                        let txn = Txn::new()
                            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, 0)])
                            .and_then([TxnOp::put(key.clone(), value.clone(), None)])
                            .or_else([TxnOp::get(key.clone(), None)]);
                        match c.txn(txn).await {
                            Ok(r) if r.succeeded() => r.header().unwrap().revision(),
                            Ok(_) => panic!("create of a fresh key failed"),
                            Err(_) => return,
                        }
                    };
                    acked.lock().unwrap().insert(key, (rev, value));
                }
            })
        })
        .collect()
}

async fn verify(n: &Netsy, acked: &Acked) -> i64 {
    let mut c = n.client().await.unwrap();
    let all = c
        .get("/registry/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let head = all.header().unwrap().revision();
    let present: BTreeMap<String, (i64, String)> = all
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                (kv.mod_revision(), kv.value_str().unwrap().to_string()),
            )
        })
        .collect();
    for (key, (rev, value)) in acked.lock().unwrap().iter() {
        assert_eq!(
            present.get(key),
            Some(&(*rev, value.clone())),
            "acknowledged write {key}@{rev} lost or changed"
        );
    }
    // Every write is one new key at one new revision from 2 on: no gaps, no duplicates.
    assert_eq!(present.len() as i64, head - 1, "revisions are not gap-free");
    let mut revs: Vec<i64> = present.values().map(|(r, _)| *r).collect();
    revs.sort();
    assert_eq!(revs, (2..=head).collect::<Vec<_>>());
    head
}

async fn kill_restart_cycles(store: &str, cycles: usize) {
    let acked: Acked = Arc::default();
    let mut n = Netsy::start(store, &["--leader-lease-seconds", "3"]).await;
    for round in 0..cycles {
        let writers = spawn_writers(n.addr.clone(), acked.clone(), round);
        tokio::time::sleep(Duration::from_millis(300 + rand::random::<u64>() % 500)).await;
        n.kill9();
        for w in writers {
            let _ = w.await;
        }
        // The killed process's leader lease must expire before the new one can write.
        n = Netsy::start(store, &["--leader-lease-seconds", "3"]).await;
        let head = verify(&n, &acked).await;
        assert!(head > 1, "round {round} wrote nothing");
    }
    let total = acked.lock().unwrap().len();
    assert!(total > 100, "only {total} writes were acknowledged");
    eprintln!("{cycles} kill -9 cycles, {total} acknowledged writes verified on {store}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    kill_restart_cycles(&format!("file://{}", dir.path().display()), 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_survives_kill_9() {
    // Fails loudly if LocalStack is not running.
    common::s3_store("probe").await;
    let store = format!(
        "s3://{}/{}",
        common::s3_bucket(),
        common::unique_prefix("restart")
    );
    kill_restart_cycles(&store, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_hands_over_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file://{}", dir.path().display());
    let mut n = Netsy::start(&store, &[]).await;
    n.client().await.unwrap().put("k", "v", None).await.unwrap();
    assert!(n.terminate().success(), "{}", n.log());
    // With the default 15 s lease, a successor that started within a few seconds proves the
    // lease was released, not waited out.
    let started = std::time::Instant::now();
    let n = Netsy::start(&store, &[]).await;
    assert!(started.elapsed() < Duration::from_secs(10), "{}", n.log());
    let got = n.client().await.unwrap().get("k", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_written_cleaned_up_and_used_at_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file://{}", dir.path().display());
    let flags = [
        "--leader-lease-seconds",
        "3",
        "--snapshot-every-records",
        "50",
        "--snapshot-grace-seconds",
        "12",
    ];
    let mut n = Netsy::start(&store, &flags).await;
    let mut c = n.client().await.unwrap();
    // Users and roles too: once the chunks are cleaned up, only the snapshot holds them.
    c.user_add("alice", "pw", None).await.unwrap();
    c.role_add("reader").await.unwrap();
    let read = etcd_client::Permission::read("/k/").with_prefix();
    c.role_grant_permission("reader", read).await.unwrap();
    c.user_grant_role("alice", "reader").await.unwrap();
    for i in 0..120 {
        c.put(format!("/k/{i:03}"), format!("v{i}"), None)
            .await
            .unwrap();
    }
    // The test reads the chunks through the store, as another process would.
    let reader = netsy::store::open(&store, &Default::default())
        .await
        .unwrap();
    let mut chunks = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    // A snapshot appears within the check interval; covered chunks go after the grace.
    while walk(&dir.path().join("snapshots")) == 0 || {
        chunks = reader.list("chunks/", None).await.unwrap().len();
        chunks > 10
    } {
        assert!(
            std::time::Instant::now() < deadline,
            "no snapshot/clean-up ({chunks} chunks):\n{}",
            n.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    n.kill9();
    let n = Netsy::start(&store, &flags).await;
    let got = n
        .client()
        .await
        .unwrap()
        .get("/k/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(got.count(), 120);
    assert_eq!(got.header().unwrap().revision(), 121);
    assert!(n.log().contains("loaded snapshot"), "{}", n.log());
    let mut c = n.client().await.unwrap();
    assert_eq!(c.user_list().await.unwrap().users(), ["alice"]);
    assert_eq!(c.user_get("alice").await.unwrap().roles(), ["reader"]);
    let perms = c.role_get("reader").await.unwrap();
    assert_eq!(perms.permissions().len(), 1);
    assert_eq!(perms.permissions()[0].key(), b"/k/");
    let mut auth =
        netsy::proto::etcdserverpb::auth_client::AuthClient::connect(format!("http://{}", n.addr))
            .await
            .unwrap();
    let status = auth.auth_status(netsy::proto::etcdserverpb::AuthStatusRequest {});
    assert_eq!(status.await.unwrap().into_inner().auth_revision, 5);
}

fn walk(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .map(|e| e.unwrap())
        .map(|e| {
            if e.file_type().unwrap().is_dir() {
                walk(&e.path())
            } else {
                1
            }
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_survive_restart_with_their_ttl_reset() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file://{}", dir.path().display());
    let flags = ["--leader-lease-seconds", "3"];
    let mut n = Netsy::start(&store, &flags).await;
    let mut c = n.client().await.unwrap();
    let long = c.lease_grant(600, None).await.unwrap().id();
    let short = c.lease_grant(4, None).await.unwrap().id();
    c.put(
        "long",
        "1",
        Some(etcd_client::PutOptions::new().with_lease(long)),
    )
    .await
    .unwrap();
    c.put(
        "short",
        "1",
        Some(etcd_client::PutOptions::new().with_lease(short)),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    n.kill9();
    let n = Netsy::start(&store, &flags).await;
    let mut c = n.client().await.unwrap();
    let ttl = c
        .lease_time_to_live(
            long,
            Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
        )
        .await
        .unwrap();
    assert_eq!(ttl.granted_ttl(), 600);
    assert!(
        ttl.ttl() > 590,
        "TTL is reset on a new leader, got {}",
        ttl.ttl()
    );
    assert_eq!(ttl.keys(), [b"long".to_vec()]);
    // The short lease also restarted its full TTL, then expires for real.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(c.get("short", None).await.unwrap().count(), 0);
    assert_eq!(c.get("long", None).await.unwrap().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_and_reflection_answer() {
    let dir = tempfile::tempdir().unwrap();
    let n = Netsy::start(&format!("file://{}", dir.path().display()), &[]).await;
    let ch = tonic::transport::Channel::from_shared(format!("http://{}", n.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut refl = ServerReflectionClient::new(ch);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = refl
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        resp.message().await.unwrap().unwrap().message_response
    else {
        panic!("no service list")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for svc in [
        "etcdserverpb.KV",
        "etcdserverpb.Watch",
        "etcdserverpb.Lease",
        "etcdserverpb.Maintenance",
    ] {
        assert!(names.contains(&svc), "{names:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drains_loses_nothing_and_exits_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file://{}", dir.path().display());
    let acked: Acked = Arc::default();
    let mut n = Netsy::start(&store, &["--shutdown-timeout-seconds", "5"]).await;
    // Open streams (a watch, a keepalive) must not hold the shutdown up.
    let mut c = n.client().await.unwrap();
    let _watch = c.watch("/registry/", None).await.unwrap();
    let lease = c.lease_grant(60, None).await.unwrap();
    let _keepalive = c.lease_keep_alive(lease.id()).await.unwrap();
    let writers = spawn_writers(n.addr.clone(), acked.clone(), 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    assert!(n.terminate().success(), "{}", n.log());
    let took = started.elapsed();
    for w in writers {
        let _ = w.await;
    }
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    assert!(n.log().contains("released leader lease"), "{}", n.log());
    let n = Netsy::start(&store, &[]).await;
    verify(&n, &acked).await;
    assert!(acked.lock().unwrap().len() > 10);
}
