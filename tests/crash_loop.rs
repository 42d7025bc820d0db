//! The crash loop: a Kubernetes-shaped write workload (creates, guaranteed updates, deletes,
//! leases with keys, revokes) against a server that is killed again and again: by `kill -9`
//! at a random moment, or by aborting itself at a crash point (a chunk about to be stored,
//! stored but not acknowledged, written but not yet linked into place, a snapshot before and
//! after its PUT, a clean-up after a delete). After every restart the whole history is read
//! back through a watch from revision 1 and checked against the ledger of acknowledged
//! writes: each one is there at the revision it was acknowledged with, every revision from 2
//! to the head holds at least one change, the current keys equal the history folded up, and
//! every acknowledged lease is alive (or revoked, if its revoke was acknowledged).
//!
//! `NETSY_CRASH_CYCLES` sets the number of cycles on the directory store (default 40, every
//! crash point reached in turn; more for a longer search) and
//! `NETSY_CRASH_CYCLES_S3` on LocalStack (default 8).

mod common;

use common::{free_port, Netsy};
use etcd_client::{Client, Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, WatchOptions};
use std::collections::{BTreeMap, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A change the server acknowledged: the key and its new value (`None`: deleted).
type Change = (String, Option<String>);

#[derive(Default, Clone)]
struct Ledger {
    /// Acknowledged changes by the revision they were acknowledged at.
    changes: BTreeMap<i64, Vec<Change>>,
    /// Leases whose grant was acknowledged, and what became of them.
    leases: HashMap<i64, LeaseFate>,
    /// Keys acknowledged as attached to each lease.
    lease_keys: HashMap<i64, Vec<String>>,
    acknowledged: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum LeaseFate {
    Alive,
    /// A revoke was sent but not acknowledged: either outcome is correct.
    Unknown,
    Revoked(i64),
}

impl Ledger {
    fn record(&mut self, rev: i64, change: Change) {
        self.changes.entry(rev).or_default().push(change);
        self.acknowledged += 1;
    }
}

type Shared = Arc<Mutex<Ledger>>;

async fn connect(addr: &str) -> Result<Client, etcd_client::Error> {
    common::connect(addr, Duration::from_secs(5)).await
}

/// One client writing until the server goes away. Panics (failing the test) only on an
/// answer that contradicts what was acknowledged before.
async fn writer(addr: String, ledger: Shared, cycle: usize, w: usize) {
    let Ok(mut c) = connect(&addr).await else {
        return;
    };
    let mut own: Vec<String> = Vec::new();
    let mut known: HashMap<String, i64> = HashMap::new();
    let mut leases: Vec<i64> = Vec::new();
    for i in 0u64.. {
        let roll = rand::random::<u32>() % 100;
        let value = format!("c{cycle}.w{w}.i{i}");
        let result: Result<(), etcd_client::Error> = async {
            if roll < 35 {
                let key = format!("/registry/pods/c{cycle}/w{w}/p{i}");
                let rev = c
                    .put(key.clone(), value.clone(), None)
                    .await?
                    .header()
                    .unwrap()
                    .revision();
                ledger
                    .lock()
                    .unwrap()
                    .record(rev, (key.clone(), Some(value)));
                own.push(key);
            } else if roll < 55 {
                // Kubernetes create: only if absent.
                let key = format!("/registry/pods/c{cycle}/w{w}/t{i}");
                let txn = Txn::new()
                    .when([Compare::mod_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key.clone(), value.clone(), None)])
                    .or_else([TxnOp::get(key.clone(), None)]);
                let resp = c.txn(txn).await?;
                assert!(resp.succeeded(), "create of the fresh key {key} failed");
                let rev = resp.header().unwrap().revision();
                ledger
                    .lock()
                    .unwrap()
                    .record(rev, (key.clone(), Some(value)));
                own.push(key);
            } else if roll < 82 {
                // Kubernetes GuaranteedUpdate of a long-lived key, with the last revision seen.
                let key = format!("/registry/leases/w{w}/s{}", i % 8);
                let last = known.get(&key).copied().unwrap_or(0);
                let txn = Txn::new()
                    .when([Compare::mod_revision(key.clone(), CompareOp::Equal, last)])
                    .and_then([TxnOp::put(key.clone(), value.clone(), None)])
                    .or_else([TxnOp::get(key.clone(), None)]);
                let resp = c.txn(txn).await?;
                let rev = resp.header().unwrap().revision();
                if resp.succeeded() {
                    ledger
                        .lock()
                        .unwrap()
                        .record(rev, (key.clone(), Some(value)));
                    known.insert(key, rev);
                } else {
                    let current = match resp.op_responses().into_iter().next() {
                        Some(etcd_client::TxnOpResponse::Get(g)) => {
                            g.kvs().first().map_or(0, |kv| kv.mod_revision())
                        }
                        _ => panic!("the failure branch of {key} returned no get"),
                    };
                    known.insert(key, current);
                }
            } else if roll < 92 && !own.is_empty() {
                let key = own.swap_remove(rand::random::<u32>() as usize % own.len());
                let resp = c.delete(key.clone(), None).await?;
                assert_eq!(
                    resp.deleted(),
                    1,
                    "acknowledged key {key} was not there to delete"
                );
                let rev = resp.header().unwrap().revision();
                ledger.lock().unwrap().record(rev, (key, None));
            } else if leases.len() < 2 || roll.is_multiple_of(2) {
                let id = c.lease_grant(300, None).await?.id();
                ledger.lock().unwrap().leases.insert(id, LeaseFate::Alive);
                leases.push(id);
                let key = format!("/registry/events/c{cycle}/w{w}/l{i}");
                let opts = PutOptions::new().with_lease(id);
                let rev = c
                    .put(key.clone(), value.clone(), Some(opts))
                    .await?
                    .header()
                    .unwrap()
                    .revision();
                let mut l = ledger.lock().unwrap();
                l.record(rev, (key.clone(), Some(value)));
                l.lease_keys.entry(id).or_default().push(key);
            } else {
                let id = leases.remove(0);
                ledger.lock().unwrap().leases.insert(id, LeaseFate::Unknown);
                let rev = c.lease_revoke(id).await?.header().unwrap().revision();
                let mut l = ledger.lock().unwrap();
                l.leases.insert(id, LeaseFate::Revoked(rev));
                for key in l.lease_keys.remove(&id).unwrap_or_default() {
                    l.record(rev, (key, None));
                }
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            return;
        }
    }
}

/// What one verification read.
struct Verified {
    head: i64,
    events: usize,
}

/// Reads the whole history and checks it against the ledger. Connection errors are returned
/// (the server may be crashing); contradictions panic.
async fn verify(addr: &str, ledger: &Ledger) -> Result<Verified, etcd_client::Error> {
    let mut c = connect(addr).await?;
    let head = c.get("/", None).await?.header().unwrap().revision();
    let mut stream = c
        .watch(
            "",
            Some(WatchOptions::new().with_all_keys().with_start_revision(1)),
        )
        .await?;
    let mut history: BTreeMap<i64, Vec<Change>> = BTreeMap::new();
    let mut events = 0;
    let mut seen = 1;
    while seen < head {
        let Ok(msg) = tokio::time::timeout(Duration::from_secs(30), stream.message()).await else {
            panic!("the history watch stalled at revision {seen} of {head}");
        };
        let Some(msg) = msg? else {
            panic!("the history watch ended at revision {seen} of {head}")
        };
        assert!(
            !msg.canceled(),
            "history watch canceled: {}",
            msg.cancel_reason()
        );
        for ev in msg.events() {
            let kv = ev.kv().unwrap();
            let key = kv.key_str().unwrap().to_string();
            let value = match ev.event_type() {
                EventType::Put => Some(kv.value_str().unwrap().to_string()),
                EventType::Delete => None,
            };
            history
                .entry(kv.mod_revision())
                .or_default()
                .push((key, value));
            seen = seen.max(kv.mod_revision());
            events += 1;
        }
    }
    // Gap-free: every revision after the initial one changed something.
    for rev in 2..=head {
        assert!(
            history.contains_key(&rev),
            "revision {rev} of {head} holds no change"
        );
    }
    if let Some((&acked, _)) = ledger.changes.last_key_value() {
        assert!(
            acked <= head,
            "revision {acked} was acknowledged, the head is {head}"
        );
    }
    for (rev, changes) in &ledger.changes {
        let got = history.get(rev).map(Vec::as_slice).unwrap_or_default();
        for change in changes {
            assert!(
                got.contains(change),
                "acknowledged {change:?} at revision {rev} is missing; revision {rev} holds {got:?}"
            );
        }
    }
    // The keyspace at the head equals the history up to it folded up (the watch may have
    // gone past the head: a write abandoned by a stopped writer can still be committed).
    let mut folded: BTreeMap<String, (String, i64)> = BTreeMap::new();
    for (rev, changes) in history.range(..=head) {
        for (key, value) in changes {
            match value {
                Some(v) => folded.insert(key.clone(), (v.clone(), *rev)),
                None => folded.remove(key),
            };
        }
    }
    let all = c
        .get(
            "",
            Some(
                etcd_client::GetOptions::new()
                    .with_all_keys()
                    .with_revision(head),
            ),
        )
        .await?;
    let current: BTreeMap<String, (String, i64)> = all
        .kvs()
        .iter()
        .map(|kv| {
            let key = kv.key_str().unwrap().to_string();
            (
                key,
                (kv.value_str().unwrap().to_string(), kv.mod_revision()),
            )
        })
        .collect();
    if current != folded {
        let differ: Vec<_> = current
            .keys()
            .chain(folded.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter(|k| current.get(*k) != folded.get(*k))
            .take(10)
            .map(|k| (k, current.get(k), folded.get(k)))
            .collect();
        panic!(
            "the keys at {head} differ from the history folded up (key, range, watch): {differ:?}"
        );
    }
    for (id, fate) in &ledger.leases {
        let ttl = c.lease_time_to_live(*id, None).await?.ttl();
        match fate {
            LeaseFate::Alive => assert!(ttl > 0, "acknowledged lease {id:x} is gone"),
            LeaseFate::Revoked(rev) => {
                assert_eq!(ttl, -1, "lease {id:x} revoked at {rev} is alive")
            }
            LeaseFate::Unknown => {}
        }
    }
    Ok(Verified { head, events })
}

/// Starts a server and waits until it answers or exits; `None` if it exited (it may have
/// reached its crash point while starting).
async fn start(store: &str, flags: &[&str], crash: Option<&str>) -> Option<Netsy> {
    let env: Vec<(&str, &str)> = crash.map(|c| ("NETSY_CRASHPOINT", c)).into_iter().collect();
    let mut n = Netsy::spawn_env(store, free_port(), flags, &env);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(_)) = n.child.try_wait() {
            return None;
        }
        // Serving with a leader: until the crashed process's lease expires, the new one
        // answers but follows no one.
        if let Ok(mut c) = n.client().await {
            if c.status().await.is_ok_and(|s| s.leader() != 0) {
                return Some(n);
            }
        }
        assert!(
            Instant::now() < deadline,
            "netsy did not start:\n{}",
            n.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Picks this cycle's way to die: a crash point (and which hit of it), or a random kill.
/// Crash points take turns (`turn` counts the cycles that chose one), so every point is
/// tried as often as the others however few cycles run.
fn pick_crash(store: &str, points: &[&str], turn: &mut usize) -> Option<String> {
    if rand::random::<u32>() % 10 < 4 {
        return None;
    }
    let point = points[*turn % points.len()];
    *turn += 1;
    let nth = match point {
        "snapshot-before-put" | "snapshot-after-put" => 1,
        "cleanup-after-delete" => 1 + rand::random::<u64>() % 3,
        // On the default directory store only snapshots and the leader lease are files of
        // their own (chunks are appended to segments).
        "store-before-link" if store.starts_with("file://") => 1 + rand::random::<u64>() % 2,
        _ => 1 + rand::random::<u64>() % 60,
    };
    Some(format!("{point}:{nth}"))
}

/// `follower`: every cycle also starts a second node that follows the one that crashes; the
/// clients talk only to it (their writes are forwarded), and once the leader is dead it
/// takes over and must hold every acknowledged write before it is stopped in turn.
async fn crash_loop(store: &str, cycles: usize, points: &[&str], follower: bool) {
    let flags = [
        "--leader-lease-seconds",
        "3",
        "--snapshot-every-records",
        "150",
        "--snapshot-check-interval-ms",
        "100",
        "--snapshot-grace-seconds",
        "12",
        "--snapshot-keep",
        "2",
    ];
    let ledger: Shared = Arc::default();
    let mut reached: BTreeMap<String, usize> = BTreeMap::new();
    let (mut random_kills, mut not_reached, mut verifications, mut events_read) = (0, 0, 0, 0);
    let mut takeovers = 0;
    let started = Instant::now();
    let mut turn = 0;
    for cycle in 0..cycles {
        let crash = pick_crash(store, points, &mut turn);
        let Some(mut n) = start(store, &flags, crash.as_deref()).await else {
            // Only a crash point may end a server before it answers.
            let point = crash.expect("netsy exited while starting without a crash point");
            *reached.entry(point).or_default() += 1;
            continue;
        };
        // Started second, it follows `n` (or leads, if `n` reached its crash point already).
        let mut follower = if follower {
            Some(
                start(store, &flags, None)
                    .await
                    .expect("the follower starts"),
            )
        } else {
            None
        };
        let serving = follower.as_ref().unwrap_or(&n).addr.clone();
        // Verify what every earlier cycle acknowledged (a crash point may cut this short;
        // the next cycle verifies again).
        let snapshot = ledger.lock().unwrap().clone();
        match verify(&serving, &snapshot).await {
            Ok(v) => {
                verifications += 1;
                events_read += v.events;
                assert!(v.head >= 1);
            }
            Err(e) => {
                // The server may be dying at its crash point: give the exit time to show.
                let dying = Instant::now() + Duration::from_secs(3);
                while n.child.try_wait().unwrap().is_none() && Instant::now() < dying {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                assert!(
                    n.child.try_wait().unwrap().is_some(),
                    "verification failed against a live server: {e}\n{}",
                    n.log()
                );
            }
        }
        let writers: Vec<_> = (0..8)
            .map(|w| tokio::spawn(writer(serving.clone(), ledger.clone(), cycle, w)))
            .collect();
        let limit = match crash.as_deref() {
            None => Duration::from_millis(50 + rand::random::<u64>() % 850),
            // A clean-up runs only once a snapshot is older than the grace period (12 s):
            // long enough for one taken in this very cycle, so every turn can reach it.
            Some(p) if p.starts_with("cleanup-after-delete") => Duration::from_secs(16),
            Some(_) => Duration::from_secs(3),
        };
        let until = Instant::now() + limit;
        let exit = loop {
            if let Some(status) = n.child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() >= until {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        match (&crash, exit) {
            (Some(point), Some(status)) => {
                assert_eq!(
                    status.signal(),
                    Some(6),
                    "expected an abort at {point}:\n{}",
                    n.log()
                );
                *reached.entry(point.clone()).or_default() += 1;
            }
            (Some(_), None) => {
                not_reached += 1;
                n.kill9();
            }
            (None, Some(status)) => panic!("netsy exited by itself ({status}):\n{}", n.log()),
            (None, None) => {
                random_kills += 1;
                n.kill9();
            }
        }
        if let Some(f) = follower.as_mut() {
            // The follower takes over from the bucket and what it was sent: it must hold
            // everything acknowledged through it, crash points included.
            f.wait_leading().await;
            let snapshot = ledger.lock().unwrap().clone();
            let v = verify(&f.addr, &snapshot).await.unwrap_or_else(|e| {
                panic!(
                    "verification on the node that took over failed: {e}\n{}",
                    f.log()
                )
            });
            verifications += 1;
            events_read += v.events;
            takeovers += 1;
            // Stopped either way: a released lease or one that must expire.
            if rand::random::<bool>() {
                f.kill9();
            } else {
                assert!(f.terminate().success(), "{}", f.log());
            }
        }
        for w in writers {
            if let Err(e) = w.await {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
    }
    let n = start(store, &flags, None)
        .await
        .expect("the final server starts");
    let snapshot = ledger.lock().unwrap().clone();
    let last = verify(&n.addr, &snapshot)
        .await
        .expect("final verification");
    let mut by_point: BTreeMap<&str, usize> = BTreeMap::new();
    for (spec, count) in &reached {
        let name = spec.split(':').next().unwrap_or_default();
        *by_point.entry(name).or_default() += count;
    }
    eprintln!(
        "crash loop on {store}{}: {cycles} cycles in {:.0} s: {random_kills} random kills, crash points reached {by_point:?}, {not_reached} not reached; {takeovers} takeovers by the follower; {} acknowledged writes, {} leases; {verifications} verifications read {events_read} events; final head {}",
        if follower { " through a follower" } else { "" },
        started.elapsed().as_secs_f64(),
        snapshot.acknowledged,
        snapshot.leases.len(),
        last.head,
    );
    assert!(
        snapshot.acknowledged > 100 * cycles as u64 / 10,
        "too few writes were acknowledged"
    );
    if cycles >= 40 {
        for p in points {
            assert!(
                by_point.contains_key(p),
                "crash point {p} was never reached in {cycles} cycles"
            );
        }
    }
}

fn cycles(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_crash_loop() {
    let dir = tempfile::tempdir().unwrap();
    crash_loop(
        &format!("file://{}", dir.path().display()),
        cycles("NETSY_CRASH_CYCLES", 40),
        netsy::crashpoint::POINTS,
        false,
    )
    .await;
}

/// `files://`, a file per object: every chunk is linked into place (no segment sync).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_store_crash_loop() {
    let dir = tempfile::tempdir().unwrap();
    let points = points_except(&["segment-before-sync"]);
    crash_loop(
        &format!("files://{}", dir.path().display()),
        cycles("NETSY_CRASH_CYCLES_FILES", 16),
        &points,
        false,
    )
    .await;
}

/// Every crash point but `excluded` (steps a store does not have).
fn points_except(excluded: &[&str]) -> Vec<&'static str> {
    netsy::crashpoint::POINTS
        .iter()
        .copied()
        .filter(|p| !excluded.contains(p))
        .collect()
}

/// The crash points an S3 store can reach: the directory stores' link and segment sync
/// steps do not exist there.
fn s3_points() -> Vec<&'static str> {
    points_except(&["store-before-link", "segment-before-sync"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_crash_loop() {
    common::s3_store("probe").await;
    let store = format!(
        "s3://{}/{}",
        common::s3_bucket(),
        common::unique_prefix("crash")
    );
    crash_loop(
        &store,
        cycles("NETSY_CRASH_CYCLES_S3", 8),
        &s3_points(),
        false,
    )
    .await;
}

/// The S3 crash loop with the clients on a follower of the crashing leader, which then takes
/// over (see `crash_loop`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_crash_loop_through_a_follower() {
    common::s3_store("probe").await;
    let store = format!(
        "s3://{}/{}",
        common::s3_bucket(),
        common::unique_prefix("crash-follower")
    );
    crash_loop(
        &store,
        cycles("NETSY_CRASH_CYCLES_S3", 8),
        &s3_points(),
        true,
    )
    .await;
}
