//! Snapshots and clean-up.
//!
//! A snapshot is every retained version (tombstones included, so history and watch replay
//! survive), every lease and the compacted revision, at one head revision S, written from
//! an immutable published state: writers never wait for it. Recovery then skips every chunk
//! named at or below S.
//!
//! Clean-up deletes chunks covered by a snapshot only once that snapshot is older than a
//! grace period far longer than the leader lease. A writer that was paused holding a lease
//! has, by then, seen its lease expire by its own clock long ago, so even if it wakes and
//! re-creates a deleted chunk key it will not acknowledge the write (it checks its lease
//! after every PUT), and recovery ignores chunks at or below the snapshot. The grace period
//! also lets a node that is replaying (it listed the chunks a moment ago) fetch them. The
//! newest `keep` snapshots are kept; older ones go with the chunks they cover.

use super::layout;
use super::Log;
use crate::clock::{now_ms, now_timestamp};
use crate::format::{self, FileMeta};
use crate::mvcc::State;
use crate::proto::netsy::FileKind;
use crate::store::{DynStore, ObjectStore, PutMode, StoreError};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// When to snapshot and what to keep.
#[derive(Debug, Clone)]
pub struct SnapshotPolicy {
    /// Snapshot after this many records were written since the last one.
    pub every_records: u64,
    /// ... or this many chunk bytes.
    pub every_bytes: u64,
    /// ... or when the last one is this old and something was written since.
    pub max_age: Duration,
    /// Covered chunks are deleted once their snapshot is this old.
    pub grace: Duration,
    /// Snapshots kept.
    pub keep: usize,
    /// How often thresholds and clean-up are checked.
    pub check_every: Duration,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        Self {
            every_records: 100_000,
            every_bytes: 256 * 1024 * 1024,
            max_age: Duration::from_secs(3600),
            grace: Duration::from_secs(600),
            keep: 3,
            check_every: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("encoding snapshot: {0}")]
    Encode(String),
}

/// Writes a snapshot of `state`; returns its key. An existing snapshot at the same
/// revision holds the same state, so finding one counts as success.
pub async fn write_snapshot(
    store: &dyn ObjectStore,
    state: std::sync::Arc<State>,
    leader_id: &str,
    cluster_id: u64,
) -> Result<String, SnapshotError> {
    let revision = state.revision;
    let key = layout::snapshot_key(revision);
    let leader_id = leader_id.to_string();
    let encoded = tokio::task::spawn_blocking(move || {
        let meta = FileMeta {
            leader_id,
            created_at: Some(now_timestamp()),
            compact_revision: state.compact_revision,
            revision: state.revision,
            cluster_id,
            previous_crc: state.chain.at_revision,
            ..Default::default()
        };
        // Streamed: records are made and compressed one at a time.
        let mut encoder = format::Encoder::new(FileKind::Snapshot, &meta, true)?;
        for mut record in state.records() {
            encoder.push(&mut record)?;
        }
        let count = encoder.count();
        encoder.finish().map(|b| (b, count))
    })
    .await
    .map_err(|e| SnapshotError::Encode(e.to_string()))?
    .map_err(|e| SnapshotError::Encode(e.to_string()))?;
    let (bytes, records) = encoded;
    let size = bytes.len();
    crate::crashpoint::hit("snapshot-before-put");
    match store.put(&key, bytes.into(), PutMode::Create).await {
        Ok(_) => {
            crate::crashpoint::hit("snapshot-after-put");
            tracing::info!(key, records, bytes = size, "wrote snapshot");
            crate::metrics::METRICS.snapshot_taken(revision, now_ms());
            Ok(key)
        }
        Err(e) if e.is_conflict() => Ok(key),
        Err(e) => Err(e.into()),
    }
}

/// Covered chunks deleted at a time.
const CLEAN_UP_CONCURRENCY: usize = 16;

/// What one clean-up pass deleted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Cleaned {
    pub chunks: usize,
    pub snapshots: usize,
}

/// Deletes chunks covered by the newest snapshot older than `grace`, and snapshots beyond
/// the newest `keep` (never the one that covers the deleted chunks).
pub async fn clean_up(
    store: &dyn ObjectStore,
    grace: Duration,
    keep: usize,
) -> Result<Cleaned, StoreError> {
    let now = now_ms();
    let mut snapshots: Vec<(i64, String, i64)> = store
        .list(layout::SNAPSHOTS, None)
        .await?
        .into_iter()
        .filter_map(|m| layout::parse_snapshot_key(&m.key).map(|r| (r, m.key, m.last_modified_ms)))
        .collect();
    snapshots.sort();
    let Some((covered, covering_key, _)) = snapshots
        .iter()
        .rev()
        .find(|(_, _, modified)| now - modified >= grace.as_millis() as i64)
        .cloned()
    else {
        return Ok(Cleaned::default());
    };
    let mut cleaned = Cleaned::default();
    // Every chunk named at or below the snapshot revision is covered: ours and the Go
    // preview's are named by their first position, Netsy 1.0's by their last revision.
    let mut covered_chunks: Vec<(i64, String)> = store
        .list(layout::CHUNKS, None)
        .await?
        .into_iter()
        .filter_map(|m| {
            let (rev, _) = layout::parse_chunk_key(&m.key)?;
            (rev <= covered).then_some((rev, m.key))
        })
        .collect();
    // Oldest first (keys sort by partition, not by revision), so the segments store can
    // drop its oldest segments as the pass goes; several at a time: it syncs the deletes
    // that arrive together once, and S3 answers them in parallel.
    covered_chunks.sort();
    let covered_chunks: Vec<String> = covered_chunks.into_iter().map(|(_, key)| key).collect();
    for batch in covered_chunks.chunks(CLEAN_UP_CONCURRENCY) {
        let deleted = futures::future::join_all(batch.iter().map(|key| store.delete(key))).await;
        for result in deleted {
            result?;
            crate::crashpoint::hit("cleanup-after-delete");
            cleaned.chunks += 1;
        }
    }
    let excess = snapshots.len().saturating_sub(keep.max(1));
    for (rev, key, _) in snapshots.iter().take(excess) {
        if *rev < covered && *key != covering_key {
            store.delete(key).await?;
            cleaned.snapshots += 1;
        }
    }
    if cleaned != Cleaned::default() {
        tracing::info!(
            covered_by = covering_key,
            chunks = cleaned.chunks,
            snapshots = cleaned.snapshots,
            "cleaned up"
        );
    }
    Ok(cleaned)
}

/// Background snapshotter and cleaner, run by the leader. `start` is where recovery left
/// the log (its snapshot revision counts as the last snapshot).
pub async fn run(
    log: Log,
    store: DynStore,
    policy: SnapshotPolicy,
    leader_id: String,
    cluster_id: u64,
    last_snapshot: Option<i64>,
    stop: CancellationToken,
) {
    let mut last_rev = last_snapshot.unwrap_or(0);
    let mut last_at = Instant::now();
    let mut base_records = log.written().records.load(Ordering::Relaxed);
    let mut base_bytes = log.written().bytes.load(Ordering::Relaxed);
    // Clean-up lists every chunk; what it may delete only changes as snapshots age past the
    // grace period, so it runs a tenth as often as that (and at once on taking over).
    let cleanup_every = (policy.grace / 10).max(policy.check_every);
    let mut last_cleanup: Option<Instant> = None;
    let mut tick = tokio::time::interval(policy.check_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let state = log.state();
        let records = log.written().records.load(Ordering::Relaxed) - base_records;
        let bytes = log.written().bytes.load(Ordering::Relaxed) - base_bytes;
        tracing::debug!(
            revision = state.revision,
            last_rev,
            records,
            bytes,
            "snapshot check"
        );
        // Revisions since the newest snapshot count as records too: a log whose leaders
        // change more often than each of them writes `every_records` must still be
        // snapshotted, or every restart replays it all.
        let due = state.revision > last_rev
            && (records >= policy.every_records
                || (state.revision - last_rev) as u64 >= policy.every_records
                || bytes >= policy.every_bytes
                || last_at.elapsed() >= policy.max_age);
        // A leader that stops (shutdown, deposed) abandons a snapshot or clean-up in
        // progress rather than hold up its release of the lease: a successor takes both
        // over, and a half-done clean-up only deletes chunks a snapshot already covers.
        if due {
            let started = Instant::now();
            let written = tokio::select! {
                w = write_snapshot(store.as_ref(), state.clone(), &leader_id, cluster_id) => w,
                _ = stop.cancelled() => return,
            };
            match written {
                Ok(_) => {
                    tracing::info!(
                        revision = state.revision,
                        ms = started.elapsed().as_millis() as u64,
                        "snapshot done"
                    );
                    last_rev = state.revision;
                    last_at = Instant::now();
                    base_records += records;
                    base_bytes += bytes;
                }
                Err(e) => {
                    crate::metrics::METRICS.snapshot_failures.inc();
                    tracing::warn!(error = %e, "snapshot failed; will retry")
                }
            }
        }
        if last_cleanup.is_none_or(|t| t.elapsed() >= cleanup_every) {
            let cleaned = tokio::select! {
                c = clean_up(store.as_ref(), policy.grace, policy.keep) => c,
                _ = stop.cancelled() => return,
            };
            match cleaned {
                Ok(_) => last_cleanup = Some(Instant::now()),
                Err(e) => tracing::warn!(error = %e, "clean-up failed; will retry"),
            }
        }
    }
}
