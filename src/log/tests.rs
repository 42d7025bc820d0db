use super::layout::{chunk_key, Position};
use super::leader::{Leader, LeaderTiming};
use super::recovery::{recover, RecoveryError};
use super::*;
use crate::format;
use crate::proto::etcdserverpb::{PutRequest, RangeRequest};
use crate::store::memory::{Fault, MemoryStore, Op};
use crate::store::{DynStore, ObjectStore, PutMode};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

fn put(k: &str, v: &str) -> Request {
    Request::Put(PutRequest {
        key: Bytes::from(k.to_string()),
        value: Bytes::from(v.to_string()),
        ..Default::default()
    })
}

struct Running {
    log: Log,
    mem: std::sync::Arc<MemoryStore>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<WriterExit>,
}

async fn start(mem: std::sync::Arc<MemoryStore>) -> Running {
    start_as(mem, WriterConfig::default()).await
}

async fn start_as(mem: std::sync::Arc<MemoryStore>, config: WriterConfig) -> Running {
    let store: DynStore = mem.clone();
    let stop = CancellationToken::new();
    let leader = Leader::acquire(
        store.clone(),
        "test",
        &Default::default(),
        LeaderTiming::default(),
        &stop,
        &Default::default(),
    )
    .await
    .unwrap();
    let rec = recover(store.as_ref()).await.unwrap();
    let (log, mut queue) = Log::new(rec.state, rec.next, 1024);
    let (l, s) = (log.clone(), stop.clone());
    let task = tokio::spawn(async move {
        run_writer(&l, &mut queue, &store, &leader, &config, rec.next, &s).await
    });
    Running {
        log,
        mem,
        stop,
        task,
    }
}

fn value(log: &Log, key: &str) -> Option<Bytes> {
    log.state()
        .range(
            &RangeRequest {
                key: Bytes::from(key.to_string()),
                ..Default::default()
            },
            None,
        )
        .unwrap()
        .kvs
        .pop()
        .map(|kv| kv.value)
}

#[tokio::test]
async fn concurrent_writes_are_group_committed_with_consecutive_revisions() {
    let r = start(std::sync::Arc::new(MemoryStore::new())).await;
    // Hold the first PUT so the rest queue up behind it.
    r.mem.inject(
        Op::Put,
        1,
        Fault::Delay(std::time::Duration::from_millis(200)),
    );
    let puts_before = r.mem.calls(Op::Put);
    let results =
        futures::future::join_all((0..50).map(|i| r.log.write(put(&format!("k{i}"), "v")))).await;
    let mut revs: Vec<i64> = results
        .into_iter()
        .map(|res| match res.unwrap() {
            Response::Put(p) => p.header.unwrap().revision,
            other => panic!("{other:?}"),
        })
        .collect();
    revs.sort();
    assert_eq!(revs, (2..52).collect::<Vec<_>>());
    let puts = r.mem.calls(Op::Put) - puts_before;
    assert!(puts <= 3, "50 writes took {puts} PUTs");
    assert_eq!(r.log.state().revision, 51);
    r.stop.cancel();
    assert!(matches!(r.task.await.unwrap(), WriterExit::Shutdown));
    // Everything acknowledged is in the bucket.
    let rec = recover(r.mem.as_ref()).await.unwrap();
    assert_eq!(rec.state.revision, 51);
    assert_eq!(rec.next, Position::new(52, 0));
}

#[tokio::test]
async fn failed_put_fails_the_batch_and_publishes_nothing() {
    let r = start(std::sync::Arc::new(MemoryStore::new())).await;
    r.log.write(put("a", "1")).await.unwrap();
    r.mem.inject(Op::Put, 1, Fault::Fail);
    let err = r.log.write(put("a", "2")).await.unwrap_err();
    assert!(matches!(err, WriteError::Store { .. }), "{err}");
    assert_eq!(value(&r.log, "a").unwrap(), "1");
    assert_eq!(r.log.state().revision, 2);
    // The next write takes the same position and succeeds.
    match r.log.write(put("a", "3")).await.unwrap() {
        Response::Put(p) => assert_eq!(p.header.unwrap().revision, 3),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_put_that_landed_but_failed_is_found_by_the_next_write_and_reloaded() {
    let r = start(std::sync::Arc::new(MemoryStore::new())).await;
    r.mem.inject(Op::Put, 1, Fault::ApplyThenFail);
    assert!(r.log.write(put("a", "1")).await.is_err());
    // The write is in the bucket though not acknowledged: the next one collides with it
    // and the writer stops rather than fork the log.
    let err = r.log.write(put("b", "1")).await.unwrap_err();
    assert!(matches!(err, WriteError::Fenced { .. }), "{err}");
    assert!(matches!(r.task.await.unwrap(), WriterExit::Fenced(_)));
    let rec = recover(r.mem.as_ref()).await.unwrap();
    assert_eq!(
        rec.state.revision, 2,
        "the unacknowledged write is in the log"
    );
}

#[tokio::test]
async fn second_writer_at_the_same_position_is_fenced() {
    let mem = std::sync::Arc::new(MemoryStore::new());
    let r = start(mem.clone()).await;
    r.log.write(put("a", "1")).await.unwrap();
    // Another writer extends the log behind this one's back.
    let mut records = vec![crate::proto::netsy::Record {
        revision: 3,
        key: Bytes::from_static(b"x"),
        created: true,
        create_revision: 3,
        version: 1,
        ..Default::default()
    }];
    let other = format::encode(
        crate::proto::netsy::FileKind::Chunk,
        &Default::default(),
        &mut records,
    )
    .unwrap();
    mem.put(
        &chunk_key(Position::new(3, 0)),
        other.into(),
        PutMode::Create,
    )
    .await
    .unwrap();
    let err = r.log.write(put("a", "2")).await.unwrap_err();
    assert!(matches!(err, WriteError::Fenced { .. }));
    assert_eq!(
        value(&r.log, "a").unwrap(),
        "1",
        "nothing of the failed batch is visible"
    );
}

#[tokio::test]
async fn leases_and_compaction_survive_restart_without_using_revisions() {
    let mem = std::sync::Arc::new(MemoryStore::new());
    let r = start(mem.clone()).await;
    let Response::LeaseGrant { id, .. } = r
        .log
        .write(Request::LeaseGrant { id: 0, ttl: 60 })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(r.log.state().revision, 1, "a grant uses no revision");
    r.log
        .write(Request::Put(PutRequest {
            key: Bytes::from_static(b"leased"),
            lease: id,
            ..Default::default()
        }))
        .await
        .unwrap();
    r.log.write(put("a", "1")).await.unwrap();
    r.log.write(put("a", "2")).await.unwrap();
    r.log.write(Request::Compact(3)).await.unwrap();
    r.stop.cancel();
    r.task.await.unwrap();
    // The grant took position (2, 0) without a revision, so the first key write sits at
    // (2, 1); the compaction takes (5, 0).
    for pos in [(2, 0), (2, 1), (3, 0), (4, 0), (5, 0)] {
        let key = chunk_key(Position::new(pos.0, pos.1));
        assert!(
            mem.keys().contains(&key),
            "{key} missing from {:?}",
            mem.keys()
        );
    }

    let r = start(mem.clone()).await;
    let st = r.log.state();
    assert_eq!((st.revision, st.compact_revision), (4, 3));
    assert_eq!(st.lease(id).unwrap().ttl, 60);
    assert_eq!(st.lease_keys(id).count(), 1);
    // Revoking deletes the attached key in one new revision.
    r.log.write(Request::LeaseRevoke { id }).await.unwrap();
    assert_eq!(r.log.state().revision, 5);
    assert!(value(&r.log, "leased").is_none());
    r.stop.cancel();
    r.task.await.unwrap();
    let rec = recover(mem.as_ref()).await.unwrap();
    assert!(rec.state.lease(id).is_none());
    assert_eq!(rec.state.revision, 5);
}

const GO_BUCKET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/go-netsy/bucket");

async fn go_bucket() -> std::sync::Arc<MemoryStore> {
    let mem = std::sync::Arc::new(MemoryStore::new());
    let local = crate::store::local::LocalStore::open(GO_BUCKET).unwrap();
    for m in local.list("", None).await.unwrap() {
        mem.raw_put(&m.key, local.get(&m.key).await.unwrap().data);
    }
    mem
}

#[tokio::test]
async fn recovers_the_go_bucket_and_continues_at_201() {
    let mem = go_bucket().await;
    let rec = recover(mem.as_ref()).await.unwrap();
    assert_eq!(rec.state.revision, 200);
    assert_eq!(rec.next, Position::new(201, 0));
    assert_eq!(rec.chunks, 50);
    let r = start(mem.clone()).await;
    match r.log.write(put("/new", "x")).await.unwrap() {
        Response::Put(p) => assert_eq!(p.header.unwrap().revision, 201),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn gap_overlap_and_corruption_stop_recovery_with_the_object_named() {
    let mem = go_bucket().await;
    let missing = chunk_key(Position::new(170, 0));
    mem.raw_delete(&missing);
    match recover(mem.as_ref()).await.unwrap_err() {
        RecoveryError::Gap { expected, orphans } => {
            assert_eq!(expected, Position::new(170, 0));
            assert_eq!(orphans.len(), 30);
        }
        other => panic!("{other}"),
    }

    let mem = go_bucket().await;
    let key = chunk_key(Position::new(160, 0));
    let mut data = mem.get(&key).await.unwrap().data.to_vec();
    let n = data.len();
    data[n / 2] ^= 0x40;
    mem.raw_put(&key, data.into());
    let err = recover(mem.as_ref()).await.unwrap_err();
    assert!(err.to_string().contains(&key), "{err}");

    // A 1.0-style chunk keyed by its last revision, duplicating revision 175.
    let mem = go_bucket().await;
    let dup = mem
        .get(&chunk_key(Position::new(175, 0)))
        .await
        .unwrap()
        .data;
    mem.raw_put("chunks/0999/0000000000000000999.netsy", dup);
    assert!(matches!(
        recover(mem.as_ref()).await.unwrap_err(),
        RecoveryError::Overlap { .. }
    ));
}

#[tokio::test]
async fn objects_from_another_cluster_stop_recovery_with_the_object_named() {
    use super::recovery::recover_cluster;
    use crate::log::snapshot::write_snapshot;
    let ours = WriterConfig {
        cluster_id: 7,
        ..Default::default()
    };
    // A Go bucket (no ids) continued by cluster 7: its id is learnt from its chunks.
    let mem = go_bucket().await;
    let r = start_as(mem.clone(), ours.clone()).await;
    r.log.write(put("/a", "1")).await.unwrap();
    r.stop.cancel();
    r.task.await.unwrap();
    assert_eq!(recover(mem.as_ref()).await.unwrap().cluster_id, 7);
    assert_eq!(
        recover_cluster(mem.as_ref(), 7).await.unwrap().cluster_id,
        7
    );

    // The lease object says 7, but a chunk was written by cluster 9.
    let err = recover_cluster(mem.as_ref(), 9).await.unwrap_err();
    assert!(
        matches!(
            err,
            RecoveryError::ForeignCluster {
                found: 7,
                expected: 9,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains(&chunk_key(Position::new(201, 0))),
        "{err}"
    );

    // A snapshot copied in from cluster 9 is refused, not skipped for an older one.
    let state = recover(mem.as_ref()).await.unwrap().state;
    let key = write_snapshot(mem.as_ref(), std::sync::Arc::new(state), "other", 9)
        .await
        .unwrap();
    let err = recover_cluster(mem.as_ref(), 7).await.unwrap_err();
    assert!(err.to_string().contains(&key), "{err}");
    assert!(err.to_string().contains("another cluster"), "{err}");

    // A bucket no object of which records an id gets a new one.
    let fresh = go_bucket().await;
    let a = recover(fresh.as_ref()).await.unwrap().cluster_id;
    assert_ne!(a, 0);
}

mod snapshots {
    use super::*;
    use crate::log::snapshot::{clean_up, write_snapshot};
    use crate::proto::etcdserverpb::DeleteRangeRequest;
    use std::time::Duration;

    async fn busy_log(mem: std::sync::Arc<MemoryStore>) -> Running {
        let r = start(mem).await;
        let Response::LeaseGrant { id, .. } = r
            .log
            .write(Request::LeaseGrant { id: 7, ttl: 30 })
            .await
            .unwrap()
        else {
            panic!()
        };
        for i in 0..20 {
            r.log
                .write(put(&format!("k{}", i % 4), &format!("v{i}")))
                .await
                .unwrap();
        }
        r.log
            .write(Request::Put(PutRequest {
                key: Bytes::from_static(b"leased"),
                lease: id,
                ..Default::default()
            }))
            .await
            .unwrap();
        r.log
            .write(Request::DeleteRange(DeleteRangeRequest {
                key: Bytes::from_static(b"k1"),
                ..Default::default()
            }))
            .await
            .unwrap();
        r.log.write(Request::Compact(10)).await.unwrap();
        r
    }

    fn same(a: &crate::mvcc::State, b: &crate::mvcc::State) {
        assert_eq!(a.revision, b.revision);
        assert_eq!(a.compact_revision, b.compact_revision);
        assert_eq!(a.to_records(), b.to_records());
        assert_eq!(a.lease(7), b.lease(7));
    }

    #[tokio::test]
    async fn snapshot_then_recovery_rebuilds_the_same_state_and_history() {
        let mem = std::sync::Arc::new(MemoryStore::new());
        let r = busy_log(mem.clone()).await;
        let before = r.log.state();
        write_snapshot(mem.as_ref(), before.clone(), "test", 0)
            .await
            .unwrap();
        // Writes after the snapshot come from chunks.
        r.log.write(put("after", "1")).await.unwrap();
        r.log
            .write(Request::LeaseGrant { id: 8, ttl: 5 })
            .await
            .unwrap();
        let head = r.log.state();
        r.stop.cancel();
        r.task.await.unwrap();
        let gets_before = mem.calls(Op::Get);
        let rec = recover(mem.as_ref()).await.unwrap();
        assert_eq!(rec.snapshot.as_ref().unwrap().1, before.revision);
        // Only chunks after the snapshot are read: the compaction's control chunk at
        // (S + 1, 0) (it used no revision, so its name is above S; replaying it again is a
        // no-op), the put at (S + 1, 1), the grant at (S + 2, 0).
        assert_eq!(rec.chunks, 3);
        assert_eq!(mem.calls(Op::Get) - gets_before, 4);
        same(&rec.state, &head);
        assert!(rec.state.lease(8).is_some());
        // History above the compaction point survives: k0 at revision 11.
        let at = rec
            .state
            .range(
                &RangeRequest {
                    key: Bytes::from_static(b"k0"),
                    revision: 11,
                    ..Default::default()
                },
                None,
            )
            .unwrap();
        assert_eq!(at.kvs.len(), 1);
        assert!(rec.state.check_revision(9).is_err());
    }

    #[tokio::test]
    async fn clean_up_waits_for_the_grace_period_and_keeps_recovery_whole() {
        let mem = std::sync::Arc::new(MemoryStore::new());
        let r = busy_log(mem.clone()).await;
        write_snapshot(mem.as_ref(), r.log.state(), "test", 0)
            .await
            .unwrap();
        r.log.write(put("after", "1")).await.unwrap();
        let head = r.log.state();
        let chunks_before = mem
            .keys()
            .iter()
            .filter(|k| k.starts_with("chunks/"))
            .count();
        let none = clean_up(mem.as_ref(), Duration::from_secs(600), 3)
            .await
            .unwrap();
        assert_eq!(none.chunks, 0, "a fresh snapshot must not free its chunks");
        let cleaned = clean_up(mem.as_ref(), Duration::ZERO, 3).await.unwrap();
        // All but the two named above the snapshot: the compaction at (S + 1, 0) and the put.
        assert_eq!(cleaned.chunks, chunks_before - 2);
        let rec = recover(mem.as_ref()).await.unwrap();
        same(&rec.state, &head);
        // More snapshots than `keep`: the oldest go.
        for i in 0..3 {
            r.log.write(put("more", &i.to_string())).await.unwrap();
            write_snapshot(mem.as_ref(), r.log.state(), "test", 0)
                .await
                .unwrap();
        }
        clean_up(mem.as_ref(), Duration::ZERO, 2).await.unwrap();
        let snaps = mem
            .keys()
            .iter()
            .filter(|k| k.starts_with("snapshots/"))
            .count();
        assert_eq!(snaps, 2);
        same(&recover(mem.as_ref()).await.unwrap().state, &r.log.state());
    }

    #[tokio::test]
    async fn every_object_netsy_writes_is_a_file_the_go_reader_accepts() {
        let mem = std::sync::Arc::new(MemoryStore::new());
        let r = busy_log(mem.clone()).await;
        write_snapshot(mem.as_ref(), r.log.state(), "test", 0)
            .await
            .unwrap();
        let keys = mem.keys();
        assert!(keys.iter().any(|k| k == crate::log::layout::LEADER));
        assert!(keys.iter().any(|k| k.starts_with("snapshots/")));
        for key in keys {
            let data = mem.get(&key).await.unwrap().data;
            crate::format::tests::go_reader_accepts(&data);
        }
    }

    #[tokio::test]
    async fn a_paused_writer_whose_lease_ran_out_never_acknowledges() {
        // Writer A's chunk PUT stalls past its lease (as if the process were SIGSTOPped
        // mid-request). B takes over, writes the same log position, snapshots it and cleans
        // up (grace 0 here, to reach the worst case: the key is free again). A's PUT then
        // lands on the deleted key, but A must not acknowledge it, and recovery must serve
        // B's history, not A's orphan.
        let mem = std::sync::Arc::new(MemoryStore::new());
        let store: DynStore = mem.clone();
        let timing = LeaderTiming {
            duration: Duration::from_millis(300),
            margin: Duration::from_millis(50),
        };
        let stop = CancellationToken::new();
        let a_leader = Leader::acquire(
            store.clone(),
            "a",
            &Default::default(),
            timing,
            &stop,
            &Default::default(),
        )
        .await
        .unwrap();
        let rec = recover(store.as_ref()).await.unwrap();
        let (a_log, mut a_queue) = Log::new(rec.state, rec.next, 16);
        let (l, st, s) = (a_log.clone(), store.clone(), stop.clone());
        let a_task = tokio::spawn(async move {
            run_writer(
                &l,
                &mut a_queue,
                &st,
                &a_leader,
                &WriterConfig::default(),
                rec.next,
                &s,
            )
            .await
        });
        // A's next PUT (its chunk) stalls for 3 s, far past its 300 ms lease.
        mem.inject(Op::Put, 1, Fault::Delay(Duration::from_millis(3000)));
        let a_write = tokio::spawn({
            let a_log = a_log.clone();
            async move { a_log.write(put("from-a", "1")).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;

        let b_leader = Leader::acquire(
            store.clone(),
            "b",
            &Default::default(),
            timing,
            &stop,
            &Default::default(),
        )
        .await
        .unwrap();
        let b_rec = recover(store.as_ref()).await.unwrap();
        assert_eq!(b_rec.next, Position::new(2, 0));
        let (b_log, mut b_queue) = Log::new(b_rec.state, b_rec.next, 16);
        let (l, st, s) = (b_log.clone(), store.clone(), stop.clone());
        let b_task = tokio::spawn(async move {
            run_writer(
                &l,
                &mut b_queue,
                &st,
                &b_leader,
                &WriterConfig::default(),
                b_rec.next,
                &s,
            )
            .await
        });
        b_log.write(put("from-b", "1")).await.unwrap();
        write_snapshot(mem.as_ref(), b_log.state(), "b", 0)
            .await
            .unwrap();
        clean_up(mem.as_ref(), Duration::ZERO, 3).await.unwrap();
        let contested = chunk_key(Position::new(2, 0));
        assert!(
            !mem.keys().contains(&contested),
            "clean-up should have freed {contested}"
        );

        let a_result = a_write.await.unwrap();
        assert!(
            matches!(a_result, Err(WriteError::LeaseExpired)),
            "A acknowledged (or misreported) a write after its lease ran out: {a_result:?}"
        );
        assert!(matches!(a_task.await.unwrap(), WriterExit::Fenced(_)));
        assert!(mem.keys().contains(&contested), "A's stalled PUT did land");

        let rec = recover(store.as_ref()).await.unwrap();
        let get = |k: &'static [u8]| {
            rec.state
                .range(
                    &RangeRequest {
                        key: Bytes::from_static(k),
                        ..Default::default()
                    },
                    None,
                )
                .unwrap()
                .count
        };
        assert_eq!((get(b"from-b"), get(b"from-a")), (1, 0));
        assert_eq!(rec.state.revision, 2);
        stop.cancel();
        let _ = b_task.await;
    }
}

/// Pipelined commits: several chunk PUTs in flight, acknowledged in log order, and what a
/// failure in the middle leaves behind.
mod pipeline {
    use super::*;
    use crate::store::latency::{Latency, LatencySpec};
    use crate::store::{Object, ObjectMeta};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// Counts chunk PUTs in flight at once.
    #[derive(Debug)]
    struct Counting {
        inner: DynStore,
        now: AtomicUsize,
        most: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl ObjectStore for Counting {
        async fn get(&self, key: &str) -> crate::store::Result<Object> {
            self.inner.get(key).await
        }
        async fn get_range(&self, key: &str, s: u64, e: u64) -> crate::store::Result<Bytes> {
            self.inner.get_range(key, s, e).await
        }
        async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> crate::store::Result<String> {
            let chunk = key.starts_with(super::super::layout::CHUNKS);
            if chunk {
                let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
                self.most.fetch_max(n, Ordering::SeqCst);
            }
            let r = self.inner.put(key, data, mode).await;
            if chunk {
                self.now.fetch_sub(1, Ordering::SeqCst);
            }
            r
        }
        async fn list(&self, p: &str, a: Option<&str>) -> crate::store::Result<Vec<ObjectMeta>> {
            self.inner.list(p, a).await
        }
        async fn delete(&self, key: &str) -> crate::store::Result<()> {
            self.inner.delete(key).await
        }
        fn describe(&self) -> String {
            "counting".into()
        }
    }

    async fn start_on(store: DynStore, config: WriterConfig) -> (Log, CancellationToken) {
        let stop = CancellationToken::new();
        let leader = Leader::acquire(
            store.clone(),
            "test",
            &Default::default(),
            LeaderTiming::default(),
            &stop,
            &Default::default(),
        )
        .await
        .unwrap();
        let rec = recover(store.as_ref()).await.unwrap();
        let (log, mut queue) = Log::new(rec.state, rec.next, 1024);
        let (l, s) = (log.clone(), stop.clone());
        tokio::spawn(async move {
            run_writer(&l, &mut queue, &store, &leader, &config, rec.next, &s).await
        });
        (log, stop)
    }

    fn revision(r: Response) -> i64 {
        match r {
            Response::Put(p) => p.header.unwrap().revision,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn chunks_overlap_in_flight_and_are_acknowledged_in_log_order() {
        let mem = Arc::new(MemoryStore::new());
        let slow: DynStore = Arc::new(Latency::new(
            mem.clone(),
            LatencySpec {
                base: Duration::from_millis(20),
                jitter: Duration::from_millis(20),
            },
        ));
        let counting = Arc::new(Counting {
            inner: slow,
            now: AtomicUsize::new(0),
            most: AtomicUsize::new(0),
        });
        let config = WriterConfig {
            max_in_flight: 4,
            ..Default::default()
        };
        let (log, stop) = start_on(counting.clone(), config).await;
        // 16 writers, 20 writes each: each acknowledgement must come with every earlier
        // revision already published (log order), whatever order the PUTs landed in.
        let writers = (0..16).map(|w| {
            let log = log.clone();
            async move {
                for i in 0..20 {
                    // Arriving apart, as clients do (writes arriving together share a chunk).
                    tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 15)).await;
                    let rev = revision(log.write(put(&format!("w{w}/{i}"), "v")).await.unwrap());
                    assert!(log.state().revision >= rev, "acknowledged before published");
                }
            }
        });
        futures::future::join_all(writers).await;
        let most = counting.most.load(Ordering::SeqCst);
        assert!(
            (2..=4).contains(&most),
            "{most} chunk PUTs in flight at most"
        );
        assert_eq!(log.state().revision, 321);
        stop.cancel();
        let rec = recover(mem.as_ref()).await.unwrap();
        assert_eq!(rec.state.revision, 321);
        assert!(rec.orphans.is_empty());
        assert_eq!(rec.state.chain, log.state().chain);
    }

    /// Three writes in flight; the first PUT times out after the other two landed.
    async fn first_of_three_fails(mem: &Arc<MemoryStore>, log: &Log) {
        log.write(put("a", "1")).await.unwrap();
        mem.inject(Op::Put, 1, Fault::DelayThenFail(Duration::from_millis(150)));
        let b = tokio::spawn({
            let log = log.clone();
            async move { log.write(put("b", "1")).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let c = tokio::spawn({
            let log = log.clone();
            async move { log.write(put("c", "1")).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let d = tokio::spawn({
            let log = log.clone();
            async move { log.write(put("d", "1")).await }
        });
        for (name, w) in [("b", b), ("c", c), ("d", d)] {
            let err = w.await.unwrap().unwrap_err();
            assert!(matches!(err, WriteError::Store { .. }), "{name}: {err}");
        }
        assert_eq!(
            log.state().revision,
            2,
            "nothing after the failure is visible"
        );
    }

    #[tokio::test]
    async fn a_failed_chunk_fails_every_later_one_whose_chunks_are_replaced() {
        let mem = Arc::new(MemoryStore::new());
        let (log, stop) = start_on(mem.clone(), WriterConfig::default()).await;
        first_of_three_fails(&mem, &log).await;
        // The later chunks landed and stay until the log reaches their positions again:
        // the failed one might still land and chain them.
        let left = [
            chunk_key(Position::new(4, 0)),
            chunk_key(Position::new(5, 0)),
        ];
        for key in &left {
            assert!(mem.get(key).await.is_ok(), "{key}");
        }
        // The next writes take the failed one's position, then replace each of them.
        for (k, rev) in [("e", 3), ("f", 4), ("g", 5)] {
            assert_eq!(revision(log.write(put(k, "1")).await.unwrap()), rev);
        }
        stop.cancel();
        let rec = recover(mem.as_ref()).await.unwrap();
        assert_eq!(rec.state.revision, 5);
        assert!(rec.orphans.is_empty());
        for k in ["b", "c", "d"] {
            assert!(value_in(&rec.state, k).is_none(), "{k}");
        }
        assert_eq!(value_in(&rec.state, "g").unwrap(), "1");
    }

    #[tokio::test]
    async fn a_failed_chunk_that_landed_after_all_is_adopted_with_the_chunks_after_it() {
        let mem = Arc::new(MemoryStore::new());
        let (log, stop) = start_on(mem.clone(), WriterConfig::default()).await;
        log.write(put("a", "1")).await.unwrap();
        // The first PUT lands, but its answer is lost after the second one landed.
        mem.inject(
            Op::Put,
            1,
            Fault::DelayApplyThenFail(Duration::from_millis(100)),
        );
        let b = tokio::spawn({
            let log = log.clone();
            async move { log.write(put("b", "1")).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let c = log.write(put("c", "1")).await;
        assert!(b.await.unwrap().is_err() && c.is_err());
        // Nothing deleted: b and c are a chain in the bucket, which the next write meets
        // (the position is taken) and a reload adopts, unacknowledged.
        let err = log.write(put("d", "1")).await.unwrap_err();
        assert!(matches!(err, WriteError::Fenced { .. }), "{err}");
        stop.cancel();
        let rec = recover(mem.as_ref()).await.unwrap();
        assert_eq!(rec.state.revision, 4);
        assert!(rec.orphans.is_empty());
        assert_eq!(value_in(&rec.state, "c").unwrap(), "1");
    }

    fn value_in(state: &crate::mvcc::State, key: &str) -> Option<Bytes> {
        state
            .range(
                &RangeRequest {
                    key: Bytes::from(key.to_string()),
                    ..Default::default()
                },
                None,
            )
            .unwrap()
            .kvs
            .pop()
            .map(|kv| kv.value)
    }

    #[tokio::test]
    async fn chunks_left_behind_are_skipped_by_recovery_and_replaced_by_the_next_leader() {
        let mem = Arc::new(MemoryStore::new());
        let (log, stop) = start_on(mem.clone(), WriterConfig::default()).await;
        // The writer stops right after: the later chunks stay, as after a crash.
        first_of_three_fails(&mem, &log).await;
        stop.cancel();
        let left = [
            chunk_key(Position::new(4, 0)),
            chunk_key(Position::new(5, 0)),
        ];
        for key in &left {
            assert!(mem.get(key).await.is_ok(), "{key} left behind");
        }
        // Recovery skips them: never acknowledged, their predecessor is not in the log.
        let rec = recover(mem.as_ref()).await.unwrap();
        assert_eq!(rec.state.revision, 2);
        assert_eq!(rec.next, Position::new(3, 0));
        assert_eq!(rec.orphans, left.to_vec());
        // A new leader writes over them: (3, 0) is free; (4, 0) holds a chunk that names
        // another predecessor, which it deletes and replaces.
        mem.raw_delete(super::super::layout::LEADER);
        let (log, stop) = start_on(mem.clone(), WriterConfig::default()).await;
        assert_eq!(revision(log.write(put("x", "1")).await.unwrap()), 3);
        assert_eq!(revision(log.write(put("y", "1")).await.unwrap()), 4);
        stop.cancel();
        let rec = recover(mem.as_ref()).await.unwrap();
        assert_eq!(rec.state.revision, 4);
        assert_eq!(rec.orphans, vec![left[1].clone()]);
        assert_eq!(value_in(&rec.state, "y").unwrap(), "1");
        assert!(value_in(&rec.state, "c").is_none());
    }

    #[tokio::test]
    async fn a_chunk_that_names_another_predecessor_without_pending_ones_is_corruption() {
        let mem = Arc::new(MemoryStore::new());
        let (log, stop) = start_on(mem.clone(), WriterConfig::default()).await;
        log.write(put("a", "1")).await.unwrap();
        stop.cancel();
        let mut records = vec![crate::proto::netsy::Record {
            revision: 3,
            key: Bytes::from_static(b"x"),
            created: true,
            create_revision: 3,
            version: 1,
            ..Default::default()
        }];
        let meta = format::FileMeta {
            previous_crc: 0x1234,
            ..Default::default()
        };
        let forged =
            format::encode(crate::proto::netsy::FileKind::Chunk, &meta, &mut records).unwrap();
        let key = chunk_key(Position::new(3, 0));
        mem.raw_put(&key, forged.into());
        let err = recover(mem.as_ref()).await.unwrap_err();
        assert!(
            err.to_string().contains(&key) && err.to_string().contains("names a previous chunk"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_snapshot_names_the_chunk_that_wrote_its_revision() {
        let mem = Arc::new(MemoryStore::new());
        let (log, stop) = start_on(mem.clone(), WriterConfig::default()).await;
        log.write(put("a", "1")).await.unwrap();
        log.write(Request::LeaseGrant { id: 7, ttl: 60 })
            .await
            .unwrap();
        let state = log.state();
        assert_ne!(state.chain.last, state.chain.at_revision);
        super::super::snapshot::write_snapshot(mem.as_ref(), state.clone(), "test", 0)
            .await
            .unwrap();
        log.write(put("b", "1")).await.unwrap();
        stop.cancel();
        let rec = recover(mem.as_ref()).await.unwrap();
        assert_eq!(rec.state.revision, 3);
        assert_eq!(rec.state.chain, log.state().chain);
    }
}

/// A control-only chunk (a lease grant) in flight behind a key write: its state was built
/// before the key write was published, and must still share the key write's events with
/// watchers once published (it used to keep the older shared events, and watchers at the
/// key write's revision skipped it).
#[test]
fn a_state_built_on_one_in_flight_shares_the_events_published_since() {
    let (log, _queue) = Log::new(crate::mvcc::State::at_revision(1), Position::new(2, 0), 8);
    let mut b = (*log.state()).clone();
    let mut records = Vec::new();
    writer::evaluate(&mut b, &put("k", "v"), &mut records).unwrap();
    let mut c = b.clone();
    writer::evaluate(
        &mut c,
        &Request::LeaseGrant { id: 9, ttl: 60 },
        &mut records,
    )
    .unwrap();
    log.publish(b, Position::new(3, 0));
    log.publish(c, Position::new(3, 1));
    let state = log.state();
    assert_eq!(
        state.shared_from(),
        Some(2),
        "revision 2's events are shared"
    );
    assert_eq!(state.shared().last().map(|t| t.to()), Some(2));
}

/// Heartbeats wait for the chunk that proves the leader alive; any other write takes them
/// along at once.
#[tokio::test(start_paused = true)]
async fn heartbeats_wait_for_the_proof_of_life_unless_another_write_goes_first() {
    let mem = std::sync::Arc::new(MemoryStore::new());
    let config = WriterConfig {
        heartbeat_prefixes: vec![Bytes::from_static(b"/hb/")],
        ..Default::default()
    };
    let r = start_as(mem.clone(), config).await;
    let chunk_puts = || {
        mem.keys()
            .iter()
            .filter(|k| k.starts_with(super::layout::CHUNKS))
            .count()
    };
    // Five heartbeats 200 ms apart share one chunk, cut 20 ms before the renewal is due
    // (3/5 of 3 s - 375 ms after the lease was taken: 1,575 ms).
    let started = tokio::time::Instant::now();
    let mut beats = Vec::new();
    for i in 0..5 {
        let log = r.log.clone();
        beats.push(tokio::spawn(async move {
            log.write(put(&format!("/hb/node{i}"), "t")).await.unwrap();
            tokio::time::Instant::now()
        }));
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    for b in beats {
        let at = b.await.unwrap() - started;
        assert!(
            at >= std::time::Duration::from_millis(1500)
                && at <= std::time::Duration::from_millis(1600),
            "heartbeat acknowledged after {at:?}"
        );
    }
    assert_eq!(chunk_puts(), 1);
    // A heartbeat, then an ordinary write 100 ms later: both go in that write's chunk.
    let log = r.log.clone();
    let beat = tokio::spawn(async move { log.write(put("/hb/node0", "u")).await });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let t = tokio::time::Instant::now();
    r.log.write(put("/registry/pods/p", "v")).await.unwrap();
    beat.await.unwrap().unwrap();
    assert!(t.elapsed() < std::time::Duration::from_millis(50));
    assert_eq!(chunk_puts(), 2);
    assert_eq!(value(&r.log, "/hb/node0").unwrap(), "u");
}

#[test]
fn a_heartbeat_touches_only_keys_under_the_prefixes() {
    use crate::proto::etcdserverpb::{
        compare, request_op, Compare, DeleteRangeRequest, RequestOp, TxnRequest,
    };
    let prefixes = [Bytes::from_static(b"/registry/leases/")];
    let lease = "/registry/leases/kube-node-lease/n1";
    // kube-apiserver's GuaranteedUpdate of a lease.
    let update = |put_key: &str| {
        Request::Txn(TxnRequest {
            compare: vec![Compare {
                key: Bytes::from(lease.to_string()),
                target: compare::CompareTarget::Mod as i32,
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: Bytes::from(put_key.to_string()),
                    ..Default::default()
                })),
            }],
            failure: vec![RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: Bytes::from(lease.to_string()),
                    ..Default::default()
                })),
            }],
        })
    };
    assert!(update(lease).is_heartbeat(&prefixes));
    assert!(!update("/registry/pods/p").is_heartbeat(&prefixes));
    assert!(put(lease, "x").is_heartbeat(&prefixes));
    assert!(!put(lease, "x").is_heartbeat(&[]));
    assert!(!put("/registry/leasesX", "x").is_heartbeat(&prefixes));
    let wide = Request::DeleteRange(DeleteRangeRequest {
        key: Bytes::from(lease.to_string()),
        range_end: Bytes::from_static(b"\0"),
        ..Default::default()
    });
    assert!(!wide.is_heartbeat(&prefixes));
    assert!(!Request::Compact(5).is_heartbeat(&prefixes));
}

/// Under steady load the queue is never empty: the writer still stops at once when asked
/// (a SIGTERM handover used to wait for a lull in the load).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_stops_promptly_under_steady_load() {
    let r = start(std::sync::Arc::new(MemoryStore::new())).await;
    let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    for w in 0..32 {
        let (log, busy) = (r.log.clone(), busy.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while busy.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let _ = log.write(put(&format!("w{w}/{}", i % 8), "v")).await;
            }
        });
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(r.log.state().revision > 100, "the load is running");
    r.stop.cancel();
    let exit = tokio::time::timeout(std::time::Duration::from_secs(2), r.task)
        .await
        .expect("the writer stopped within 2 s under load")
        .unwrap();
    busy.store(false, std::sync::atomic::Ordering::Relaxed);
    assert!(matches!(exit, WriterExit::Shutdown));
}
