//! A Kubernetes-shaped workload, driven by many concurrent clients through `etcd-client`:
//! the request shapes kube-apiserver's etcd3 storage sends (create/update/delete
//! transactions with leases, paginated lists pinned to a revision with `count`, a watch
//! with prev_kv and progress_notify from a revision, RequestProgress every 100 ms, a lease
//! per batch of events, and the periodic compaction transaction + Compact). Invariants:
//! no lost or duplicated watch events, revisions strictly increasing per watcher, progress
//! never ahead of an event still to come, lists consistent with the watch, non-create
//! events carry prev_kv.

mod common;

use common::Netsy;
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const PREFIX: &str = "/registry/";

async fn writer(mut c: Client, w: usize, stop: Arc<AtomicBool>) -> usize {
    let mut writes = 0;
    let mut lease = c.lease_grant(3600, None).await.unwrap().id();
    let mut known: BTreeMap<String, i64> = BTreeMap::new();
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        if i.is_multiple_of(50) {
            // A new lease per batch of events, as the apiserver's lease manager does.
            lease = c.lease_grant(3600, None).await.unwrap().id();
        }
        // Writers 0 and 1 share keys, so guaranteed updates conflict and retry.
        let owner = if w < 2 { 0 } else { w };
        let key = format!("{PREFIX}pods/ns{owner}/p{}", i % 20);
        match known.get(&key).copied() {
            None => {
                let txn = Txn::new()
                    .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        key.as_str(),
                        format!("w{w}-{i}"),
                        Some(PutOptions::new().with_lease(lease)),
                    )])
                    .or_else([TxnOp::get(key.as_str(), None)]);
                let r = c.txn(txn).await.unwrap();
                let rev = if r.succeeded() {
                    writes += 1;
                    r.header().unwrap().revision()
                } else {
                    current_rev(&r)
                };
                known.insert(key, rev);
            }
            Some(rev) if i.is_multiple_of(7) => {
                let txn = Txn::new()
                    .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, rev)])
                    .and_then([TxnOp::delete(key.as_str(), None)])
                    .or_else([TxnOp::get(key.as_str(), None)]);
                let r = c.txn(txn).await.unwrap();
                if r.succeeded() {
                    writes += 1;
                    known.remove(&key);
                } else {
                    record(&mut known, key, current_rev(&r));
                }
            }
            Some(rev) => {
                let txn = Txn::new()
                    .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, rev)])
                    .and_then([TxnOp::put(
                        key.as_str(),
                        format!("w{w}-{i}"),
                        Some(PutOptions::new().with_lease(lease)),
                    )])
                    .or_else([TxnOp::get(key.as_str(), None)]);
                let r = c.txn(txn).await.unwrap();
                if r.succeeded() {
                    writes += 1;
                    // The put's own header carries the new revision (apiserver <= 1.31).
                    let TxnOpResponse::Put(p) = &r.op_responses()[0] else {
                        panic!()
                    };
                    assert_eq!(
                        p.header().unwrap().revision(),
                        r.header().unwrap().revision()
                    );
                    known.insert(key, r.header().unwrap().revision());
                } else {
                    record(&mut known, key, current_rev(&r));
                }
            }
        }
    }
    writes
}

/// mod_revision from a failure branch's Get (0 if the key is gone).
fn current_rev(r: &etcd_client::TxnResponse) -> i64 {
    match &r.op_responses()[0] {
        TxnOpResponse::Get(g) => g.kvs().first().map_or(0, |kv| kv.mod_revision()),
        other => panic!("unexpected {other:?}"),
    }
}

fn record(known: &mut BTreeMap<String, i64>, key: String, rev: i64) {
    if rev == 0 {
        known.remove(&key);
    } else {
        known.insert(key, rev);
    }
}

async fn lister(mut c: Client, stop: Arc<AtomicBool>) -> usize {
    let mut lists = 0;
    while !stop.load(Ordering::Relaxed) {
        // First page at the head, next pages pinned to its revision, continuing after the
        // last key with "\0" appended.
        let first = c
            .get(PREFIX, Some(GetOptions::new().with_prefix().with_limit(25)))
            .await
            .unwrap();
        let rev = first.header().unwrap().revision();
        let total = first.count();
        let mut seen: Vec<Vec<u8>> = first.kvs().iter().map(|kv| kv.key().to_vec()).collect();
        let mut more = first.more();
        while more {
            let mut from = seen.last().unwrap().clone();
            from.push(0);
            let page = c
                .get(
                    from,
                    Some(
                        GetOptions::new()
                            .with_range(b"/registry0".to_vec())
                            .with_limit(25)
                            .with_revision(rev),
                    ),
                )
                .await
                .unwrap();
            assert!(page.kvs().iter().all(|kv| kv.mod_revision() <= rev));
            seen.extend(page.kvs().iter().map(|kv| kv.key().to_vec()));
            more = page.more();
        }
        assert_eq!(
            seen.len() as i64,
            total,
            "pages disagree with the first page's count"
        );
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "pages out of order or repeated"
        );
        lists += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lists
}

async fn compactor(mut c: Client, stop: Arc<AtomicBool>) -> usize {
    // kube-apiserver's compaction: bump compact_rev_key guarded by its version, then
    // compact to the revision seen at the previous round.
    let key = "compact_rev_key";
    let mut version = 0;
    let mut previous = 0;
    let mut rounds = 0;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let txn = Txn::new()
            .when([Compare::version(key, CompareOp::Equal, version)])
            .and_then([TxnOp::put(key, "x", None)])
            .or_else([TxnOp::get(key, None)]);
        let r = c.txn(txn).await.unwrap();
        let rev = r.header().unwrap().revision();
        if r.succeeded() {
            version += 1;
            if previous > 0 {
                c.compact(previous, None).await.unwrap();
                rounds += 1;
            }
            previous = rev;
        } else if let TxnOpResponse::Get(g) = &r.op_responses()[0] {
            version = g.kvs()[0].version();
        }
    }
    rounds
}

async fn workload(store: &str) {
    workload_on(Netsy::start(store, &["--progress-notify-interval-ms", "200"]).await).await;
}

async fn workload_on(n: Netsy) {
    let mut wc = n.client().await.unwrap();
    let start = wc
        .get("probe", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let (mut sender, mut events_stream) = wc
        .watch(
            PREFIX,
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(start + 1)
                    .with_prev_key()
                    .with_progress_notify(),
            ),
        )
        .await
        .unwrap()
        .split();

    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        writers.push(tokio::spawn(writer(
            n.client().await.unwrap(),
            w,
            stop.clone(),
        )));
    }
    let listers: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            let addr = n.addr.clone();
            tokio::spawn(
                async move { lister(Client::connect([addr], None).await.unwrap(), stop).await },
            )
        })
        .collect();
    let compact = tokio::spawn(compactor(n.client().await.unwrap(), stop.clone()));
    let progress_stop = stop.clone();
    let progress = tokio::spawn(async move {
        while !progress_stop.load(Ordering::Relaxed) {
            sender.request_progress().await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sender
    });

    // Consume the watch while the workload runs.
    let mut state: BTreeMap<Vec<u8>, (Vec<u8>, i64)> = BTreeMap::new();
    let mut seen: HashSet<(Vec<u8>, i64)> = HashSet::new();
    let mut last_rev = start;
    let mut progress_rev = start;
    let mut events = 0usize;
    let mut progress_notes = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    let mut finishing = false;
    let mut head = i64::MAX;
    loop {
        if !finishing && tokio::time::Instant::now() > deadline {
            stop.store(true, Ordering::Relaxed);
            finishing = true;
            let mut total = 0;
            for w in writers.drain(..) {
                total += w.await.unwrap();
            }
            assert!(total > 200, "only {total} writes");
            eprintln!("writes {total}");
            head = n
                .client()
                .await
                .unwrap()
                .get("probe", None)
                .await
                .unwrap()
                .header()
                .unwrap()
                .revision();
        }
        if finishing && progress_rev >= head && last_rev <= head {
            break;
        }
        let resp = tokio::time::timeout(Duration::from_secs(10), events_stream.message())
            .await
            .expect("watch stalled")
            .unwrap()
            .expect("watch ended");
        assert!(
            !resp.canceled(),
            "watch canceled: {:?}",
            resp.cancel_reason()
        );
        if resp.events().is_empty() {
            // Progress (periodic or requested): everything up to this revision was sent.
            let rev = resp.header().unwrap().revision();
            assert!(
                rev >= last_rev,
                "progress {rev} behind delivered event {last_rev}"
            );
            progress_rev = progress_rev.max(rev);
            progress_notes += 1;
            continue;
        }
        for ev in resp.events() {
            let kv = ev.kv().unwrap();
            let rev = kv.mod_revision();
            assert!(
                rev > progress_rev,
                "event at {rev} after progress reported {progress_rev}"
            );
            assert!(
                rev >= last_rev,
                "revisions went backwards: {rev} after {last_rev}"
            );
            last_rev = rev;
            assert!(seen.insert((kv.key().to_vec(), rev)), "duplicate event");
            events += 1;
            match ev.event_type() {
                EventType::Put => {
                    if kv.version() > 1 {
                        let prev = ev.prev_kv().expect("update without prev_kv");
                        assert_eq!(state.get(kv.key()).map(|s| s.1), Some(prev.mod_revision()));
                    }
                    state.insert(kv.key().to_vec(), (kv.value().to_vec(), rev));
                }
                EventType::Delete => {
                    let prev = ev.prev_kv().expect("delete without prev_kv");
                    assert_eq!(
                        state.remove(kv.key()).map(|s| s.1),
                        Some(prev.mod_revision())
                    );
                }
            }
        }
    }
    let lists: usize = futures::future::join_all(listers)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .sum();
    let compactions = compact.await.unwrap();
    drop(progress.await.unwrap());

    // The watch replays to exactly what a list at the head returns.
    let list = n
        .client()
        .await
        .unwrap()
        .get(
            PREFIX,
            Some(GetOptions::new().with_prefix().with_revision(head)),
        )
        .await
        .unwrap();
    let listed: BTreeMap<Vec<u8>, (Vec<u8>, i64)> = list
        .kvs()
        .iter()
        .map(|kv| (kv.key().to_vec(), (kv.value().to_vec(), kv.mod_revision())))
        .collect();
    assert_eq!(listed, state, "list at {head} disagrees with the watch");
    assert!(compactions >= 3, "only {compactions} compactions");
    assert!(lists > 10 && progress_notes > 10);
    eprintln!(
        "{events} events, {progress_notes} progress notifications, {lists} paginated lists, {compactions} compactions, head {head}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_workload_on_file_store() {
    let dir = tempfile::tempdir().unwrap();
    workload(&format!("file://{}", dir.path().display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_workload_on_s3() {
    common::s3_store("probe").await;
    workload(&format!(
        "s3://{}/{}",
        common::s3_bucket(),
        common::unique_prefix("k8s")
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_workload_through_a_follower() {
    common::s3_store("probe").await;
    let store = format!(
        "s3://{}/{}",
        common::s3_bucket(),
        common::unique_prefix("k8s-follower")
    );
    let flags = ["--progress-notify-interval-ms", "200"];
    let _leader = Netsy::start(&store, &[&["--name", "n0"][..], &flags].concat()).await;
    // Started second, it follows the first: writes are forwarded, the watch is its own.
    workload_on(Netsy::start(&store, &[&["--name", "n1"][..], &flags].concat()).await).await;
}
