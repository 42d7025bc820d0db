use super::*;
use crate::proto::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    range_request::{SortOrder, SortTarget},
    request_op, response_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};

fn b(s: &str) -> Bytes {
    Bytes::from(s.as_bytes().to_vec())
}

fn put(st: &mut State, k: &str, v: &str) -> i64 {
    st.put(&PutRequest {
        key: b(k),
        value: b(v),
        ..Default::default()
    })
    .unwrap()
    .response
    .header
    .unwrap()
    .revision
}

fn get(st: &State, k: &str, rev: i64) -> Option<mvccpb::KeyValue> {
    st.range(
        &RangeRequest {
            key: b(k),
            revision: rev,
            ..Default::default()
        },
        None,
    )
    .unwrap()
    .kvs
    .pop()
}

#[test]
fn revisions_versions_and_tombstones_follow_etcd() {
    let mut st = State::new();
    assert_eq!(st.revision, 1);
    assert_eq!(put(&mut st, "a", "1"), 2);
    assert_eq!(put(&mut st, "a", "2"), 3);
    let kv = get(&st, "a", 0).unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    let del = st
        .delete_range(&DeleteRangeRequest {
            key: b("a"),
            prev_kv: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(del.response.deleted, 1);
    assert_eq!(del.response.prev_kvs[0].value, "2");
    assert!(del.records[0].deleted);
    assert_eq!(st.revision, 4);
    assert!(get(&st, "a", 0).is_none());
    // Deleting nothing does not bump the revision.
    let none = st
        .delete_range(&DeleteRangeRequest {
            key: b("a"),
            ..Default::default()
        })
        .unwrap();
    assert!(none.records.is_empty());
    assert_eq!(none.response.header.unwrap().revision, 4);
    // Re-created keys start over at version 1.
    put(&mut st, "a", "3");
    let kv = get(&st, "a", 0).unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
    // History stays readable.
    assert_eq!(get(&st, "a", 2).unwrap().value, "1");
    assert!(get(&st, "a", 4).is_none());
    assert_eq!(
        st.range(
            &RangeRequest {
                key: b("a"),
                revision: 9,
                ..Default::default()
            },
            None
        )
        .unwrap_err(),
        Error::FutureRevision
    );
}

#[test]
fn range_counts_ignore_limit_and_sorts() {
    let mut st = State::new();
    for (k, v) in [("k3", "c"), ("k1", "z"), ("k2", "a"), ("l", "x")] {
        put(&mut st, k, v);
    }
    put(&mut st, "k1", "zz");
    let r = st
        .range(
            &RangeRequest {
                key: b("k"),
                range_end: b("l"),
                limit: 2,
                ..Default::default()
            },
            None,
        )
        .unwrap();
    assert_eq!(r.count, 3);
    assert!(r.more);
    assert_eq!(
        r.kvs.iter().map(|k| k.key.clone()).collect::<Vec<_>>(),
        [b("k1"), b("k2")]
    );
    let r = st
        .range(
            &RangeRequest {
                key: b("k"),
                range_end: b("l"),
                sort_order: SortOrder::Descend as i32,
                sort_target: SortTarget::Value as i32,
                ..Default::default()
            },
            None,
        )
        .unwrap();
    assert_eq!(
        r.kvs.iter().map(|k| k.value.clone()).collect::<Vec<_>>(),
        [b("zz"), b("c"), b("a")]
    );
    // From-key and all-keys.
    let all = st
        .range(
            &RangeRequest {
                key: b("\0"),
                range_end: b("\0"),
                count_only: true,
                ..Default::default()
            },
            None,
        )
        .unwrap();
    assert_eq!((all.count, all.kvs.len()), (4, 0));
    let r = st
        .range(
            &RangeRequest {
                key: b("k"),
                range_end: b("l"),
                min_mod_revision: 4,
                keys_only: true,
                ..Default::default()
            },
            None,
        )
        .unwrap();
    assert_eq!(r.count, 3);
    assert_eq!(r.kvs.len(), 2);
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty()));
}

fn cmp_mod(key: &str, rev: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Mod as i32,
        key: b(key),
        target_union: Some(TargetUnion::ModRevision(rev)),
        range_end: Bytes::new(),
    }
}

fn op_put(k: &str, v: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: b(k),
            value: b(v),
            ..Default::default()
        })),
    }
}

fn op_get(k: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: b(k),
            ..Default::default()
        })),
    }
}

#[test]
fn kubernetes_create_and_update_txns() {
    let mut st = State::new();
    // Create: mod_revision == 0 succeeds once.
    let create = TxnRequest {
        compare: vec![cmp_mod("/registry/pods/a", 0)],
        success: vec![op_put("/registry/pods/a", "v1")],
        failure: vec![op_get("/registry/pods/a")],
    };
    let first = st.txn(&create).unwrap();
    assert!(first.response.succeeded);
    let Some(response_op::Response::ResponsePut(p)) = &first.response.responses[0].response else {
        panic!()
    };
    assert_eq!(p.header.as_ref().unwrap().revision, 2);
    let second = st.txn(&create).unwrap();
    assert!(!second.response.succeeded);
    assert!(second.records.is_empty());
    let Some(response_op::Response::ResponseRange(r)) = &second.response.responses[0].response
    else {
        panic!()
    };
    assert_eq!(r.kvs[0].value, "v1");
    // Guaranteed update pinned to the read mod_revision.
    let update = |rev| TxnRequest {
        compare: vec![cmp_mod("/registry/pods/a", rev)],
        success: vec![op_put("/registry/pods/a", "v2")],
        failure: vec![op_get("/registry/pods/a")],
    };
    assert!(!st.txn(&update(7)).unwrap().response.succeeded);
    let ok = st.txn(&update(2)).unwrap();
    assert!(ok.response.succeeded);
    assert_eq!(ok.response.header.unwrap().revision, 3);
}

#[test]
fn txn_reads_its_own_writes_and_fails_atomically() {
    let mut st = State::new();
    let t = TxnRequest {
        compare: vec![],
        success: vec![op_put("x", "1"), op_get("x")],
        failure: vec![],
    };
    let r = st.txn(&t).unwrap();
    let Some(response_op::Response::ResponseRange(g)) = &r.response.responses[1].response else {
        panic!()
    };
    assert_eq!(g.kvs[0].value, "1");
    assert_eq!(g.header.as_ref().unwrap().revision, 2);
    // A put with an unknown lease fails the whole transaction.
    let bad = TxnRequest {
        compare: vec![],
        success: vec![
            op_put("y", "1"),
            RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: b("z"),
                    lease: 42,
                    ..Default::default()
                })),
            },
        ],
        failure: vec![],
    };
    assert_eq!(st.txn(&bad).unwrap_err(), Error::LeaseNotFound);
    assert!(get(&st, "y", 0).is_none());
    assert_eq!(st.revision, 2);
    // Compares on a missing key: value always false, version equals 0.
    let c = |target, union| Compare {
        result: CompareResult::Equal as i32,
        target: target as i32,
        key: b("missing"),
        target_union: Some(union),
        range_end: Bytes::new(),
    };
    let t = |c| TxnRequest {
        compare: vec![c],
        success: vec![],
        failure: vec![],
    };
    assert!(
        !st.txn(&t(c(
            CompareTarget::Value,
            TargetUnion::Value(Bytes::new())
        )))
        .unwrap()
        .response
        .succeeded
    );
    assert!(
        st.txn(&t(c(CompareTarget::Version, TargetUnion::Version(0))))
            .unwrap()
            .response
            .succeeded
    );
}

#[test]
fn compaction_keeps_the_newest_live_version_and_drops_the_rest() {
    let mut st = State::new();
    put(&mut st, "a", "1"); // 2
    put(&mut st, "a", "2"); // 3
    put(&mut st, "b", "1"); // 4
    st.delete_range(&DeleteRangeRequest {
        key: b("b"),
        ..Default::default()
    })
    .unwrap(); // 5
    put(&mut st, "a", "3"); // 6
    st.compact(5);
    assert_eq!(st.compact_revision, 5);
    assert_eq!(st.check_revision(4), Err(Error::Compacted));
    assert_eq!(get(&st, "a", 5).unwrap().value, "2");
    assert_eq!(get(&st, "a", 0).unwrap().value, "3");
    assert!(
        st.history(b"b").is_none(),
        "a deleted key's history is gone"
    );
    assert_eq!(st.history(b"a").unwrap().versions().len(), 2);
    assert_eq!(st.versions_count(), 2);
    assert_eq!(st.bytes(), 4);
}

#[test]
fn records_replay_into_the_same_state() {
    let mut st = State::new();
    let mut log = Vec::new();
    for i in 0..20 {
        let k = format!("k{}", i % 5);
        log.extend(
            st.put(&PutRequest {
                key: b(&k),
                value: b(&format!("v{i}")),
                ..Default::default()
            })
            .unwrap()
            .records,
        );
        if i % 7 == 0 {
            log.extend(
                st.delete_range(&DeleteRangeRequest {
                    key: b("k1"),
                    ..Default::default()
                })
                .unwrap()
                .records,
            );
        }
    }
    let mut replayed = State::new();
    for r in &log {
        replayed.apply_record(r.clone()).unwrap();
    }
    assert_eq!(replayed.revision, st.revision);
    assert_eq!(replayed.keys, st.keys);
    assert_eq!(
        replayed.changes(0, i64::MAX).count(),
        st.changes(0, i64::MAX).count()
    );
    // `created` only guides the order of map operations: wrong everywhere, same state.
    let mut misled = State::new();
    for r in &log {
        let mut r = r.clone();
        r.created = !r.created;
        misled.apply_record(r).unwrap();
    }
    assert_eq!(misled.keys, st.keys);
    // A record for a version already held is refused whichever way it is guided, and
    // changes nothing.
    for created in [true, false] {
        let mut again = log[log.len() - 1].clone();
        again.created = created;
        let before = misled.keys.clone();
        assert!(misled.apply_record(again).is_err());
        assert_eq!(misled.keys, before);
    }
    // The snapshot form replays to the same state too, compacted or not.
    st.compact(12);
    let mut from_snapshot = State::at_revision(1);
    for r in st.to_records() {
        from_snapshot.apply_record(r).unwrap();
    }
    from_snapshot.compact(12);
    assert_eq!(from_snapshot.keys, st.keys);
    // A record that moves history backwards is refused.
    let mut stale = log[3].clone();
    stale.revision = 1;
    assert!(matches!(
        replayed.apply_record(stale),
        Err(Error::Inconsistent { .. })
    ));
}

#[test]
fn stored_values_do_not_pin_the_request_buffer() {
    // A request's key and value are slices of a larger receive buffer; the state must keep
    // its own exact copies, or every retained version pins the whole buffer.
    let buffer = Bytes::from(vec![b'x'; 64 * 1024]);
    let req = PutRequest {
        key: buffer.slice(0..3),
        value: buffer.slice(100..1124),
        ..Default::default()
    };
    let mut st = State::new();
    st.put(&req).unwrap();
    let h = st.history(b"xxx").unwrap();
    let v = &h.versions()[0].value;
    assert_eq!(v.len(), 1024);
    let inside = |p: *const u8| {
        let start = buffer.as_ptr() as usize;
        (start..start + buffer.len()).contains(&(p as usize))
    };
    assert!(
        !inside(v.as_ptr()),
        "value still points into the request buffer"
    );
    let (k, _) = st.keys.get_key_value(&b"xxx"[..]).unwrap();
    assert!(
        !inside(k.as_ptr()),
        "key still points into the request buffer"
    );
}

/// etcd numbers each change of a revision (its sub-revision) and keeps the number through
/// compaction; so does the state, and through a snapshot's records into a replayed state.
#[test]
fn sub_revisions_survive_compaction_and_snapshots() {
    let mut st = State::new();
    let del = |k: &str| RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key: b(k),
                ..Default::default()
            },
        )),
    };
    let txn = |st: &mut State, ops: Vec<RequestOp>| {
        st.txn(&TxnRequest {
            success: ops,
            ..Default::default()
        })
        .unwrap();
    };
    txn(
        &mut st,
        vec![op_put("b", "1"), op_put("d", "1"), op_put("c", "1")],
    ); // 2
    txn(&mut st, vec![del("b"), op_put("e", "1")]); // 3
    txn(&mut st, vec![op_put("x", "1")]); // 4
    txn(&mut st, vec![del("x"), op_put("f", "1")]); // 5
    let subs = |st: &State| -> Vec<(i64, i64, String)> {
        st.ordered_versions()
            .map(|o| {
                (
                    o.version.mod_revision,
                    o.sub,
                    String::from_utf8_lossy(o.key).into(),
                )
            })
            .collect()
    };
    st.compact(5);
    let want = vec![
        (2, 1, "d".to_string()),
        (2, 2, "c".to_string()),
        (3, 1, "e".to_string()),
        (5, 1, "f".to_string()),
    ];
    assert_eq!(subs(&st), want);
    let mut replayed = State::new();
    for r in st.records() {
        replayed.apply_record(r).unwrap();
    }
    replayed.compact(5);
    assert_eq!(subs(&replayed), want);
    // Dropped versions leave no number behind.
    txn(&mut st, vec![op_put("d", "2")]);
    st.compact(6);
    assert_eq!(st.subs.len(), 3);
}

#[test]
fn a_key_written_many_times_keeps_every_version_and_compacts_either_way() {
    let mut st = State::new();
    let old = st.clone();
    // Past SPILL_AFTER versions the history moves into a vector: reads at every revision,
    // the shared older state, and compaction must not tell the difference.
    let revs: Vec<i64> = (0..200)
        .map(|i| put(&mut st, "hot", &i.to_string()))
        .collect();
    put(&mut st, "cold", "x");
    assert!(matches!(
        st.history(b"hot").unwrap().versions(),
        Versions::Vector(_)
    ));
    for (i, rev) in revs.iter().enumerate() {
        let kv = get(&st, "hot", *rev).unwrap();
        assert_eq!(kv.value, i.to_string());
        assert_eq!(kv.version, i as i64 + 1);
        assert_eq!(kv.mod_revision, *rev);
    }
    assert!(old.history(b"hot").is_none());
    let snapshot = st.clone();
    // Compacting to the 190th write leaves 10 versions: back in the history's own allocation.
    st.compact(revs[190]);
    let h = st.history(b"hot").unwrap();
    assert!(matches!(h.versions(), Versions::Slice(_)));
    assert_eq!(h.versions().len(), 10);
    assert_eq!(get(&st, "hot", revs[195]).unwrap().value, "195");
    assert_eq!(st.versions_count(), 11);
    // The state before the compaction still holds all of them.
    assert_eq!(snapshot.history(b"hot").unwrap().versions().len(), 200);
    // Compacting to the 50th leaves 150: still a vector, starting at the 50th.
    let mut st = snapshot;
    st.compact(revs[50]);
    let h = st.history(b"hot").unwrap();
    assert!(matches!(h.versions(), Versions::Vector(_)));
    assert_eq!(h.versions().len(), 150);
    assert_eq!(h.versions()[0].mod_revision, revs[50]);
    assert_eq!(st.check_revision(revs[49]), Err(Error::Compacted));
    assert_eq!(get(&st, "hot", revs[50]).unwrap().value, "50");
    assert_eq!(get(&st, "hot", 0).unwrap().value, "199");
}
