//! `startup`: how fast a node rebuilds itself from a bucket, measured in-process on a local
//! directory store: a log of N records in chunks, and a snapshot of S MiB.
//!
//! The bucket is generated with the real writer's pieces (MVCC evaluation, the `.netsy`
//! encoder, the chunk naming), then timed through the real `recover`.

use super::Outcome;
use crate::format::{self, FileMeta};
use crate::log::layout::{chunk_key, Position};
use crate::log::recovery::recover;
use crate::mvcc::State;
use crate::proto::etcdserverpb::PutRequest;
use crate::proto::netsy::FileKind;
use crate::store::{local::LocalStore, ObjectStore, PutMode};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct StartupOptions {
    /// Records in the chunk log.
    pub records: usize,
    /// Records per chunk (a group-committed batch).
    pub per_chunk: usize,
    pub value_size: usize,
    /// Size of the snapshot to load, in MiB of keys and values (0: skip).
    pub snapshot_mib: usize,
}

/// Values with ~4 bits of entropy per byte: compressible about 2x, like Kubernetes objects,
/// so zstd has real work to do.
fn values(n: usize, size: usize) -> Vec<Bytes> {
    const ALPHABET: &[u8; 16] = b"abcdefghijklmnop";
    (0..n)
        .map(|_| {
            (0..size)
                .map(|_| ALPHABET[rand::random_range(0..16)])
                .collect::<Vec<u8>>()
                .into()
        })
        .collect()
}

fn put(state: &mut State, key: usize, value: &Bytes) -> Vec<crate::proto::netsy::Record> {
    state
        .put(&PutRequest {
            key: Bytes::from(format!("/registry/bench/{key:09}")),
            value: value.clone(),
            ..Default::default()
        })
        .expect("a put on a fresh state succeeds")
        .records
}

fn outcome(workload: &str, records: u64, bytes: u64, elapsed: std::time::Duration) -> Outcome {
    let seconds = elapsed.as_secs_f64().max(1e-9);
    let mut extra = BTreeMap::new();
    extra.insert("mib".into(), bytes as f64 / 1048576.0);
    extra.insert("mib_per_sec".into(), bytes as f64 / 1048576.0 / seconds);
    extra.insert("seconds".into(), seconds);
    Outcome {
        target: "netsy".into(),
        endpoint: "in-process, local directory store".into(),
        workload: workload.into(),
        clients: 1,
        ops: records,
        seconds,
        ops_per_sec: records as f64 / seconds,
        p50_ms: 0.0,
        p99_ms: 0.0,
        max_ms: 0.0,
        errors: 0,
        extra,
    }
}

pub async fn run(o: &StartupOptions, dir: &Path) -> anyhow::Result<Vec<Outcome>> {
    let mut out = Vec::new();
    let pool = values(1024, o.value_size);

    // A log of chunks, as the writer leaves it after N group-committed writes.
    let chunks_dir = dir.join("chunks-bucket");
    let store = LocalStore::open(&chunks_dir)?;
    let mut state = State::new();
    let mut written = 0;
    let mut chunks = 0;
    while written < o.records {
        let first = state.revision + 1;
        let mut records = Vec::new();
        for _ in 0..o.per_chunk.min(o.records - written) {
            records.extend(put(&mut state, written, &pool[written % pool.len()]));
            written += 1;
        }
        let encoded = format::encode(FileKind::Chunk, &FileMeta::default(), &mut records)?;
        store
            .put(
                &chunk_key(Position::new(first, 0)),
                encoded.into(),
                PutMode::Create,
            )
            .await?;
        chunks += 1;
    }
    drop(state);
    let started = Instant::now();
    let rec = recover(&store).await?;
    let elapsed = started.elapsed();
    anyhow::ensure!(
        rec.records as usize == o.records,
        "replayed {} of {}",
        rec.records,
        o.records
    );
    let mut chunk_outcome = outcome("startup-chunks", rec.records, rec.bytes, elapsed);
    chunk_outcome.extra.insert("chunks".into(), chunks as f64);
    out.push(chunk_outcome);
    drop(rec);
    std::fs::remove_dir_all(&chunks_dir)?;

    // A snapshot of S MiB of keys and values.
    if o.snapshot_mib > 0 {
        let snap_dir = dir.join("snapshot-bucket");
        let store = LocalStore::open(&snap_dir)?;
        let mut state = State::new();
        let per = o.value_size.max(1) + 24;
        let n = o.snapshot_mib * 1048576 / per;
        for i in 0..n {
            put(&mut state, i, &pool[i % pool.len()]);
        }
        let bytes = state.bytes() as u64;
        let writing = Instant::now();
        crate::log::snapshot::write_snapshot(&store, std::sync::Arc::new(state), "bench", 0)
            .await?;
        let write_seconds = writing.elapsed().as_secs_f64();
        let started = Instant::now();
        let rec = recover(&store).await?;
        let elapsed = started.elapsed();
        anyhow::ensure!(
            rec.state.keys_count() == n,
            "loaded {} of {n} keys",
            rec.state.keys_count()
        );
        let mut snap = outcome("startup-snapshot", n as u64, bytes, elapsed);
        snap.extra
            .insert("file_mib".into(), rec.bytes as f64 / 1048576.0);
        snap.extra.insert("write_seconds".into(), write_seconds);
        out.push(snap);
        drop(rec);
        std::fs::remove_dir_all(&snap_dir)?;
    }
    Ok(out)
}
