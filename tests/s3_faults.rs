//! A real `netsy serve` on LocalStack behind a fault-injecting proxy: random 500s, 503
//! SlowDowns, connection resets, stalls past the attempt timeout and PUTs whose response is
//! lost, on every kind of request (PUT, GET, LIST); then a full outage; then S3 returns.
//! Writes either succeed exactly once or fail with a clean gRPC error; reads never fail;
//! writes work again without a restart; a restart through the faults recovers everything
//! that was acknowledged.

mod common;

use common::proxy::{FaultyProxy, ProxyFault};
use common::{free_port, Netsy};
use etcd_client::{Client, GetOptions};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Acked = Arc<Mutex<BTreeMap<String, i64>>>;

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
    reads: AtomicU64,
    read_errors: AtomicU64,
    /// Linearizable reads refused with `no leader` while the lease could not be renewed.
    refused: AtomicU64,
    errors: Mutex<BTreeMap<String, usize>>,
}

async fn connect(addr: &str) -> Client {
    // Long enough for a write that waits out a stalled PUT and its retries.
    common::connect(addr, Duration::from_secs(40))
        .await
        .unwrap()
}

async fn writer(addr: String, w: usize, acked: Acked, counts: Arc<Counts>, stop: Arc<AtomicBool>) {
    let mut c = connect(&addr).await;
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let key = format!("/f/{w}/{i:06}");
        match c.put(key.clone(), "v", None).await {
            Ok(r) => {
                acked
                    .lock()
                    .unwrap()
                    .insert(key, r.header().unwrap().revision());
                counts.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(etcd_client::Error::GRpcStatus(s)) => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
                let kind = format!(
                    "{:?}: {}",
                    s.code(),
                    s.message().split(" (").next().unwrap()
                );
                *counts.errors.lock().unwrap().entry(kind).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("a write failed without a gRPC status: {e}"),
        }
    }
}

async fn reader(addr: String, counts: Arc<Counts>, stop: Arc<AtomicBool>) {
    let mut c = connect(&addr).await;
    while !stop.load(Ordering::Relaxed) {
        for opts in [None, Some(GetOptions::new().with_serializable())] {
            let linearizable = opts.is_none();
            match c.get("/f/0/000001", opts).await {
                Ok(_) => counts.reads.fetch_add(1, Ordering::Relaxed),
                // Once S3 has refused the lease's renewal for its validity, the node cannot
                // know that no other node took over: it refuses linearizable reads, as an
                // etcd member without quorum does, and serves serializable ones.
                Err(e) if linearizable && e.to_string().contains("etcdserver: no leader") => {
                    counts.refused.fetch_add(1, Ordering::Relaxed)
                }
                Err(_) => counts.read_errors.fetch_add(1, Ordering::Relaxed),
            };
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn verify(addr: &str, acked: &Acked) -> usize {
    let mut c = connect(addr).await;
    let all = c
        .get("/f/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let head = all.header().unwrap().revision();
    let present: BTreeMap<String, i64> = all
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_string(), kv.mod_revision()))
        .collect();
    let acked = acked.lock().unwrap();
    for (key, rev) in acked.iter() {
        assert_eq!(present.get(key), Some(rev), "acknowledged {key}@{rev} lost");
    }
    // Each write applied at most once: one key per revision, no gaps.
    let mut revs: Vec<i64> = present.values().copied().collect();
    revs.sort();
    assert_eq!(
        revs,
        (2..=head).collect::<Vec<_>>(),
        "revisions have gaps or repeats"
    );
    acked.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_faults_and_outage_lose_nothing_and_reads_go_on() {
    s3_faults(false).await;
}

/// The same faults with the clients on a follower (both nodes behind the faulty proxy): its
/// forwarded writes succeed exactly once or fail cleanly, its reads go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_faults_and_outage_lose_nothing_through_a_follower() {
    s3_faults(true).await;
}

async fn s3_faults(through_follower: bool) {
    common::s3_store("probe").await;
    let proxy = FaultyProxy::default();
    // Stalls are injected once, below: one stalled PUT holds every write for the attempt
    // timeout, since chunks are written one at a time.
    *proxy.random.lock().unwrap() = ProxyFault::ALL
        .into_iter()
        .filter(|f| *f != ProxyFault::Stall)
        .collect();
    let upstream = common::s3_endpoint()
        .trim_start_matches("http://")
        .to_string();
    let endpoint = proxy.start(upstream).await;
    let store = format!(
        "s3://{}/{}",
        common::s3_bucket(),
        common::unique_prefix("faults")
    );
    let flags = ["--s3-endpoint", endpoint.as_str()];
    let mut nodes = vec![Netsy::start(&store, &flags).await];
    if through_follower {
        // Started second, it follows the first.
        nodes.push(Netsy::start(&store, &flags).await);
    }
    let serving = nodes.last().expect("a node").addr.clone();
    let logs = |nodes: &[Netsy]| nodes.iter().map(Netsy::log).collect::<Vec<_>>().join("\n");

    let acked: Acked = Arc::default();
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..8 {
        tasks.push(tokio::spawn(writer(
            serving.clone(),
            w,
            acked.clone(),
            counts.clone(),
            stop.clone(),
        )));
    }
    tasks.push(tokio::spawn(reader(
        serving.clone(),
        counts.clone(),
        stop.clone(),
    )));

    // Phase 1: one request in six suffers a random fault.
    proxy.rate.store(16, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(10)).await;
    proxy.rate.store(0, Ordering::Relaxed);
    let ok_faults = counts.ok.load(Ordering::Relaxed);
    assert!(
        ok_faults > 50,
        "too few writes succeeded through the faults:\n{}",
        logs(&nodes)
    );

    // Phase 1b: the next request stalls past the attempt timeout.
    proxy.push(ProxyFault::Stall);
    let stalled = Instant::now();
    while !proxy.faults.lock().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ok_stall = counts.ok.load(Ordering::Relaxed);
    while counts.ok.load(Ordering::Relaxed) < ok_stall + 20 {
        assert!(
            stalled.elapsed() < Duration::from_secs(60),
            "writes never resumed after a stall:\n{}",
            logs(&nodes)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stall_took = stalled.elapsed();
    let faulted = proxy.faulted.lock().unwrap().len();

    // Phase 2: S3 is down. Writes fail cleanly; serializable reads go on.
    proxy.down.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let failed_before = counts.failed.load(Ordering::Relaxed);
    let ok_before = counts.ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let failed_outage = counts.failed.load(Ordering::Relaxed) - failed_before;
    proxy.down.store(false, Ordering::Relaxed);
    assert!(failed_outage > 0, "no write failed while S3 was down");
    let ok_outage = counts.ok.load(Ordering::Relaxed) - ok_before;
    assert!(
        ok_outage <= 8,
        "{ok_outage} writes succeeded while S3 was down"
    );

    // Phase 3: S3 is back; writes succeed again without a restart.
    let back = Instant::now();
    let ok_back = counts.ok.load(Ordering::Relaxed);
    while counts.ok.load(Ordering::Relaxed) < ok_back + 50 {
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "writes never recovered:\n{}",
            logs(&nodes)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovered_after = back.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        counts.read_errors.load(Ordering::Relaxed),
        0,
        "a read failed"
    );
    let total = verify(&serving, &acked).await;

    // Phase 4: a restart that lists and fetches through the faults.
    // The follower first: the leader then releases a lease no one follows.
    for n in nodes.iter_mut().rev() {
        assert!(n.terminate().success(), "{}", n.log());
    }
    proxy.rate.store(10, Ordering::Relaxed);
    let mut n = Netsy::spawn(&store, free_port(), &flags);
    n.wait_ready().await;
    proxy.rate.store(0, Ordering::Relaxed);
    verify(&n.addr, &acked).await;
    let seen = proxy.seen.lock().unwrap().clone();
    for method in ["GET", "PUT"] {
        assert!(seen.get(method).copied().unwrap_or(0) > 10, "{seen:?}");
    }
    eprintln!(
        "{total} writes acknowledged and verified; {} failed cleanly ({:?}); {failed_outage} failed during a 5 s outage; writes back {:.1} s after S3; writes resumed {:.1} s after a stalled request; {} reads, none failed, {} linearizable ones refused (`no leader`) while the lease was lapsed; {} faults injected (16 % of requests, then 10 % during the restart); requests {seen:?}",
        counts.failed.load(Ordering::Relaxed),
        counts.errors.lock().unwrap(),
        recovered_after.as_secs_f64(),
        stall_took.as_secs_f64(),
        counts.reads.load(Ordering::Relaxed),
        counts.refused.load(Ordering::Relaxed),
        faulted,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_longer_than_the_leader_lease_keeps_it() {
    common::s3_store("probe").await;
    let store = format!(
        "s3://{}/{}",
        common::s3_bucket(),
        common::unique_prefix("slow-replay")
    );
    // A log of 30 chunks, left by a node that stopped cleanly (the lease is released).
    let mut first = Netsy::start(&store, &[]).await;
    let mut c = first.client().await.unwrap();
    for i in 0..30 {
        c.put(format!("/slow/{i:02}"), "v", None).await.unwrap();
    }
    assert!(first.terminate().success());

    // Every GET of the bucket answered 3 s late: the listings and the chunk fetches make
    // the replay outlast a 6 s lease (valid 4.8 s after it is taken).
    let proxy = FaultyProxy::default();
    proxy.get_delay_ms.store(3000, Ordering::Relaxed);
    let upstream = common::s3_endpoint()
        .trim_start_matches("http://")
        .to_string();
    let endpoint = proxy.start(upstream).await;
    let flags = [
        "--s3-endpoint",
        endpoint.as_str(),
        "--leader-lease-seconds",
        "6",
    ];
    let started = Instant::now();
    let mut n = Netsy::start(&store, &flags).await;
    let took = started.elapsed();
    // The first linearizable read after the port answers is served: the lease was renewed
    // while the replay ran.
    let mut c = n.client().await.unwrap();
    let got = c.get("/slow/29", None).await;
    let log = n.log();
    assert!(
        took > Duration::from_secs(8),
        "the replay was not slow enough to test anything ({took:?}):\n{log}"
    );
    let got = got.unwrap_or_else(|e| panic!("read after a slow replay failed: {e}\n{log}"));
    assert_eq!(got.kvs().len(), 1);
    c.put("/slow/after", "v", None).await.unwrap();
    assert!(n.terminate().success());
}
