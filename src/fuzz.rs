//! Entry points shared by the `cargo fuzz` targets (`fuzz/`) and the corpus regression test
//! (`tests/fuzz_corpus.rs`), so a crash the fuzzer finds stays fixed in every `cargo test`.
//!
//! Hostile bytes must end in an error, never in a panic, a hang or an allocation the input
//! did not pay for; and what the engine accepts must survive the trip through the log and
//! through a snapshot unchanged, since that trip is how every node rebuilds its state.

use crate::api::validate;
use crate::format::{self, FileMeta};
use crate::log::writer::{align_control_records, evaluate};
use crate::log::Request;
use crate::mvcc::State;
use crate::proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RangeResponse, TxnRequest,
};
use crate::proto::netsy::{FileKind, Record};
use prost::Message;

/// A `.netsy` file from untrusted bytes: decoding may fail, but must not panic; a file
/// that decodes re-encodes to one that decodes to the same records, and replays (or is
/// refused) without panicking.
pub fn decode_file(data: &[u8]) {
    let Ok(file) = format::decode("fuzz.netsy", data) else {
        return;
    };
    let kind = FileKind::try_from(file.header.kind).unwrap_or(FileKind::Chunk);
    let meta = FileMeta {
        leader_id: file.header.leader_id.clone(),
        created_at: file.header.created_at,
        compact_revision: file.header.compact_revision,
        revision: file.header.revision,
        cluster_id: file.header.cluster_id,
        previous_crc: file.header.previous_crc,
        pending: (file.header.pending_revision, file.header.pending_seq),
    };
    let mut records = file.records.clone();
    if let Ok(bytes) = format::encode(kind, &meta, &mut records) {
        let again = format::decode("fuzz.netsy", &bytes).expect("our own encoding decodes");
        assert_eq!(again.records.len(), file.records.len());
        for (a, b) in again.records.iter().zip(&file.records) {
            assert_eq!(
                (&a.key, &a.value, a.revision),
                (&b.key, &b.value, b.revision)
            );
        }
    }
    let mut state = State::at_revision(0);
    for r in file.records {
        if state.apply_record(r).is_err() {
            break;
        }
    }
}

/// A sequence of client requests from untrusted bytes: each is `[op, len, body…]` with
/// `body` an etcd protobuf message. Each goes through the API's validation and the writer's
/// evaluation as one chunk; afterwards the chunks' records must replay to the same state,
/// and so must a snapshot of it.
pub fn requests(data: &[u8]) {
    let mut state = State::at_revision(1);
    let mut written: Vec<Record> = Vec::new();
    let mut input = data;
    while input.len() >= 2 {
        let (op, len) = (input[0], input[1] as usize);
        let end = (2 + len).min(input.len());
        let body = &input[2..end];
        input = &input[end..];
        let request = match op % 7 {
            0 => {
                if let Ok(r) = RangeRequest::decode(body) {
                    if validate::range(&r).is_ok() {
                        let _ = state.range(&r, None);
                    }
                }
                continue;
            }
            1 => match PutRequest::decode(body) {
                Ok(r) if validate::put(&r).is_ok() => Request::Put(r),
                _ => continue,
            },
            2 => match DeleteRangeRequest::decode(body) {
                Ok(r) if validate::delete(&r).is_ok() => Request::DeleteRange(r),
                _ => continue,
            },
            3 => match TxnRequest::decode(body) {
                Ok(t) if validate::txn(&t, 128).is_ok() => Request::Txn(t),
                _ => continue,
            },
            4 => Request::Compact(small_int(body)),
            5 => Request::LeaseGrant {
                id: small_int(body).max(1),
                ttl: small_int(body.get(1..).unwrap_or_default()).clamp(1, 1000),
            },
            _ => Request::LeaseRevoke {
                id: small_int(body),
            },
        };
        let mut work = state.clone();
        let mut records = Vec::new();
        if evaluate(&mut work, &request, &mut records).is_ok() {
            align_control_records(&mut records);
            assert!(work.revision >= state.revision, "the revision went back");
            state = work;
            written.extend(records);
        }
    }

    // The log's records replay to the same state.
    let mut replayed = State::at_revision(1);
    for r in written {
        replayed
            .apply_record(r)
            .expect("records the engine wrote replay");
    }
    assert_same(&state, &replayed, "replay");

    // A snapshot of it loads to the same state.
    let meta = FileMeta {
        compact_revision: state.compact_revision,
        revision: state.revision,
        ..Default::default()
    };
    let mut records = state.to_records();
    let bytes = format::encode(FileKind::Snapshot, &meta, &mut records).expect("snapshot encodes");
    let file = format::decode("snapshot.netsy", &bytes).expect("snapshot decodes");
    let (loaded, _) = crate::log::recovery::snapshot_state("snapshot.netsy", file)
        .expect("the snapshot loads as recovery loads it");
    assert_same(&state, &loaded, "snapshot");
}

fn small_int(body: &[u8]) -> i64 {
    body.first().map_or(0, |b| i64::from(*b % 64))
}

fn everything(state: &State) -> RangeResponse {
    let all = RangeRequest {
        key: vec![0].into(),
        range_end: vec![0].into(),
        ..Default::default()
    };
    let mut r = state.range(&all, None).expect("a range of every key");
    r.header = None;
    r
}

fn assert_same(a: &State, b: &State, what: &str) {
    assert_eq!(a.revision, b.revision, "{what}: revision");
    assert_eq!(a.compact_revision, b.compact_revision, "{what}: compacted");
    assert_eq!(a.versions_count(), b.versions_count(), "{what}: versions");
    assert_eq!(everything(a), everything(b), "{what}: keys");
    let leases = |s: &State| {
        let mut l: Vec<(i64, i64)> = s.leases().map(|l| (l.id, l.ttl)).collect();
        l.sort();
        l
    };
    assert_eq!(leases(a), leases(b), "{what}: leases");
}
