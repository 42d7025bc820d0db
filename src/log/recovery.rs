//! Rebuilding the state from the bucket at start: the newest readable snapshot, then every
//! chunk after it, chained by the positions their footers prove.
//!
//! Nothing is skipped silently. A corrupt chunk, a gap in the chain, two chunks claiming
//! the same position, or a record that contradicts the state stops recovery with an error
//! naming the objects: serving a log with a hole would hand clients a history that never
//! happened. The only fallback is an unreadable newest snapshot, which is reported and
//! replaced by the previous one, and that is only accepted if the chunks after the older
//! snapshot are all still there.

use super::layout::{self, Position};
use crate::format::{self, FormatError};
use crate::mvcc::{self, State};
use crate::proto::netsy::{FileFooter, FileHeader, FileKind, Record};
use crate::store::{ObjectStore, StoreError};
use futures::StreamExt;
use std::time::{Duration, Instant};

/// Objects fetched at once during replay.
const FETCH_CONCURRENCY: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("reading the bucket: {0}")]
    Store(#[from] StoreError),
    #[error("corrupt object {0}")]
    Corrupt(#[from] FormatError),
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
    #[error("the log has a gap: no chunk at {expected}, yet later chunks exist: {orphans:?}")]
    Gap {
        expected: Position,
        orphans: Vec<String>,
    },
    #[error("chunks {first} and {second} both claim log position {position}")]
    Overlap {
        position: Position,
        first: String,
        second: String,
    },
    #[error("{key} belongs to cluster {found:016x}, but this bucket's log is cluster {expected:016x} ({established_by}); an object copied from another cluster's bucket? remove it (see docs/reliability.md)")]
    ForeignCluster {
        key: String,
        found: u64,
        expected: u64,
        established_by: String,
    },
    #[error("{key}: {source}")]
    Inconsistent {
        key: String,
        #[source]
        source: mvcc::Error,
    },
}

/// What recovery found and built.
#[derive(Debug)]
pub struct Recovered {
    pub state: State,
    /// Where the next chunk goes.
    pub next: Position,
    /// The snapshot loaded, if any, and the revision it covers.
    pub snapshot: Option<(String, i64)>,
    /// When the loaded snapshot was stored (the store's modification time, Unix ms).
    pub snapshot_stored_ms: Option<i64>,
    pub chunks: usize,
    /// Chunks a pipelined commit left behind, never acknowledged, skipped (see
    /// [`is_orphan`]): the next leader deletes them.
    pub orphans: Vec<String>,
    pub records: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// The bucket's cluster id: the one its objects carry, or a new one for a bucket whose
    /// objects carry none (a new bucket, or one the Go Netsy wrote).
    pub cluster_id: u64,
}

/// Refuses an object recording a cluster other than `expected` (0 records none).
pub(crate) fn check_cluster(key: &str, found: u64, expected: u64) -> Result<(), RecoveryError> {
    ClusterCheck {
        id: expected,
        established_by: format!("recorded in {}", layout::LEADER),
    }
    .check(key, found)
}

/// The cluster every object must belong to, learnt from the leader lease object or the
/// first object that records one.
struct ClusterCheck {
    id: u64,
    established_by: String,
}

impl ClusterCheck {
    fn check(&mut self, key: &str, found: u64) -> Result<(), RecoveryError> {
        if found == 0 {
            return Ok(());
        }
        if self.id == 0 {
            self.id = found;
            self.established_by = format!("recorded in {key}");
            return Ok(());
        }
        if found != self.id {
            return Err(RecoveryError::ForeignCluster {
                key: key.to_string(),
                found,
                expected: self.id,
                established_by: self.established_by.clone(),
            });
        }
        Ok(())
    }
}

/// Applies decoded records (each batch named by its object) to a state on a blocking
/// thread, in the order they are sent.
struct Applier {
    tx: tokio::sync::mpsc::Sender<(String, Vec<Record>)>,
    done: tokio::task::JoinHandle<Result<State, RecoveryError>>,
}

impl Applier {
    fn start(mut state: State) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, Vec<Record>)>(FETCH_CONCURRENCY);
        let done = tokio::task::spawn_blocking(move || {
            while let Some((key, records)) = rx.blocking_recv() {
                apply_records(&mut state, &key, records)?;
            }
            Ok(state)
        });
        Self { tx, done }
    }

    /// False when the applier has stopped (on an error that [`Applier::finish`] returns).
    async fn send(&self, key: String, records: Vec<Record>) -> bool {
        self.tx.send((key, records)).await.is_ok()
    }

    /// Waits until every batch sent has been applied; returns the state.
    async fn finish(self) -> Result<State, RecoveryError> {
        drop(self.tx);
        self.done.await.map_err(|e| RecoveryError::Invalid {
            key: "(applier task)".into(),
            reason: e.to_string(),
        })?
    }
}

/// Records handed from a snapshot's decoder to its applier at a time.
const SNAPSHOT_BATCH: usize = 4096;

/// Loads the newest readable snapshot. Returns the state and the revision it covers.
async fn load_snapshot(
    store: &dyn ObjectStore,
    key: &str,
) -> Result<(State, i64, u64, u64), RecoveryError> {
    let obj = store.get(key).await?;
    let size = obj.data.len() as u64;
    // Decoding (CRCs, zstd, protobuf) and applying each take about half of a large
    // snapshot's load: they run on two threads, records handed over in batches.
    let applier = Applier::start(State::at_revision(0));
    let sender = applier.tx.clone();
    let name = key.to_string();
    let decoded = tokio::task::spawn_blocking(move || {
        let mut batch = Vec::with_capacity(SNAPSHOT_BATCH);
        // A send fails only once the applier has stopped on an error, which `finish`
        // reports; the decoder still runs to the end so corruption is reported first.
        let result = format::decode_with(&name, &obj.data, |r| {
            batch.push(r);
            if batch.len() == SNAPSHOT_BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(SNAPSHOT_BATCH));
                let _ = sender.blocking_send((name.clone(), full));
            }
            Ok(())
        });
        if !batch.is_empty() {
            let _ = sender.blocking_send((name.clone(), batch));
        }
        result
    })
    .await
    .map_err(|e| RecoveryError::Invalid {
        key: "(snapshot decoder task)".into(),
        reason: e.to_string(),
    })?;
    let (header, footer) = decoded?;
    check_snapshot_kind(key, &header)?;
    let state = applier.finish().await?;
    let (state, revision) = finish_snapshot(key, state, &header, &footer)?;
    Ok((state, revision, size, header.cluster_id))
}

/// The state a decoded snapshot file holds, and the revision it covers.
pub fn snapshot_state(key: &str, file: format::DataFile) -> Result<(State, i64), RecoveryError> {
    check_snapshot_kind(key, &file.header)?;
    let mut state = State::at_revision(0);
    apply_records(&mut state, key, file.records)?;
    finish_snapshot(key, state, &file.header, &file.footer)
}

/// Applies the records of object `key` in order; the first inconsistent one is the error.
pub(crate) fn apply_records(
    state: &mut State,
    key: &str,
    records: Vec<Record>,
) -> Result<(), RecoveryError> {
    for r in records {
        state
            .apply_record(r)
            .map_err(|source| RecoveryError::Inconsistent {
                key: key.into(),
                source,
            })?;
    }
    Ok(())
}

fn check_snapshot_kind(key: &str, header: &FileHeader) -> Result<(), RecoveryError> {
    if header.kind != FileKind::Snapshot as i32 {
        return Err(RecoveryError::Invalid {
            key: key.into(),
            reason: "not a snapshot file".into(),
        });
    }
    Ok(())
}

/// Sets the revision a snapshot's records were applied to from its header and applies the
/// compaction it records.
fn finish_snapshot(
    key: &str,
    mut state: State,
    header: &FileHeader,
    footer: &FileFooter,
) -> Result<(State, i64), RecoveryError> {
    let revision = if header.revision > 0 {
        header.revision
    } else {
        footer.last_revision
    };
    if revision < state.revision {
        return Err(RecoveryError::Invalid {
            key: key.into(),
            reason: format!(
                "header revision {revision} is below its records' {}",
                state.revision
            ),
        });
    }
    state.revision = revision;
    state.compact(header.compact_revision);
    // The chunk at the position after the snapshot names the one that wrote its revision.
    state.chain = mvcc::Chain {
        last: header.previous_crc,
        at_revision: header.previous_crc,
    };
    Ok((state, revision))
}

/// The log position a decoded chunk holds (its first key write's revision, or the head
/// after it for a control-only chunk, with the `seq` its name carries) and the position
/// after it.
pub(crate) fn chunk_position(
    key: &str,
    seq: u32,
    file: &format::DataFile,
) -> Result<(Position, Position), RecoveryError> {
    if file.records.is_empty() {
        return Err(RecoveryError::Invalid {
            key: key.into(),
            reason: "chunk holds no records".into(),
        });
    }
    if file.records.iter().any(|r| !State::is_control(r)) {
        Ok((
            Position::new(file.footer.first_revision, seq),
            Position::new(file.footer.last_revision + 1, 0),
        ))
    } else {
        if file.footer.first_revision != file.footer.last_revision {
            return Err(RecoveryError::Invalid {
                key: key.into(),
                reason: "control-only chunk spans several revisions".into(),
            });
        }
        let at = Position::new(file.footer.last_revision + 1, seq);
        Ok((at, Position::new(at.revision, seq + 1)))
    }
}

/// Whether a chunk that does not continue the log is one a pipelined commit left behind:
/// it was sent while an earlier chunk was not yet durable (`pending_revision` set), and the
/// chunk it names as its predecessor is not in the log (`in_log` says, by CRC: in
/// recovery, every chunk replayed and the one a snapshot names). Such a chunk was never acknowledged:
/// a leader acknowledges a chunk only after every chunk before it is durable, and a durable
/// chunk stays in the log. Its key may even be reused by the chunk that is in the log there
/// after a new leader deleted it. Anything else that does not fit is corruption.
pub(crate) fn is_orphan(header: &FileHeader, in_log: impl Fn(u64) -> bool) -> bool {
    header.pending_revision != 0 && header.previous_crc != 0 && !in_log(header.previous_crc)
}

/// Whether a chunk at the log position `expected` continues a log whose last chunk has CRC
/// `last` (either 0: not recorded, so not checked).
pub(crate) fn continues(header: &FileHeader, last: u64) -> bool {
    header.previous_crc == 0 || last == 0 || header.previous_crc == last
}

/// Rebuilds the state from `store`, accepting objects of any one cluster.
pub async fn recover(store: &dyn ObjectStore) -> Result<Recovered, RecoveryError> {
    recover_cluster(store, 0).await
}

/// Rebuilds the state from `store`. Every object that records a cluster id must record
/// `cluster_id` (the one in the leader lease object), or, when that is 0, the one the
/// first such object records.
pub async fn recover_cluster(
    store: &dyn ObjectStore,
    cluster_id: u64,
) -> Result<Recovered, RecoveryError> {
    let started = Instant::now();
    let mut cluster = ClusterCheck {
        id: cluster_id,
        established_by: format!("recorded in {}", layout::LEADER),
    };
    let mut snapshots: Vec<(i64, String, i64)> = store
        .list(layout::SNAPSHOTS, None)
        .await?
        .into_iter()
        .filter_map(|m| layout::parse_snapshot_key(&m.key).map(|r| (r, m.key, m.last_modified_ms)))
        .collect();
    snapshots.sort();
    let chunk_keys: Vec<(i64, String)> = store
        .list(layout::CHUNKS, None)
        .await?
        .into_iter()
        .filter_map(|m| match layout::parse_chunk_key(&m.key) {
            Some((rev, _)) => Some((rev, m.key)),
            None => {
                tracing::warn!(key = %m.key, "ignoring object with an unrecognised chunk name");
                None
            }
        })
        .collect();
    tracing::info!(
        snapshots = snapshots.len(),
        chunks = chunk_keys.len(),
        "listed bucket"
    );

    let mut bytes = 0u64;
    let mut base: Option<(State, i64, String)> = None;
    let mut snapshot_errors = Vec::new();
    let mut snapshot_stored_ms = None;
    while let Some((_, key, stored_ms)) = snapshots.pop() {
        match load_snapshot(store, &key).await {
            Ok((state, rev, size, id)) => {
                // Another cluster's snapshot is refused outright, never skipped for an
                // older one: it means someone copied objects between buckets.
                cluster.check(&key, id)?;
                bytes += size;
                tracing::info!(
                    key,
                    revision = rev,
                    versions = state.versions_count(),
                    "loaded snapshot"
                );
                base = Some((state, rev, key));
                snapshot_stored_ms = Some(stored_ms);
                break;
            }
            Err(e) => {
                tracing::error!(key, error = %e, "snapshot unreadable, trying the previous one");
                snapshot_errors.push(e);
            }
        }
    }
    if base.is_none() {
        if let Some(e) = snapshot_errors.into_iter().next() {
            // Every snapshot is unreadable: nothing safe to start from.
            return Err(e);
        }
    }
    let covered = base.as_ref().map_or(0, |(_, rev, _)| *rev);

    // Chunks named at or below the snapshot revision are covered by it (and await cleanup).
    // In a valid log, name order is log order (names carry a revision inside the chunk's
    // range, or the position itself), so chunks are applied in name order as they arrive;
    // every position is still checked against the chain, so a misnamed, missing or
    // duplicated chunk stops the replay exactly as before.
    let mut wanted: Vec<((i64, u32), String)> = chunk_keys
        .into_iter()
        .filter(|(rev, _)| *rev > covered)
        .map(|(rev, key)| {
            let seq = layout::parse_chunk_key(&key).map_or(0, |(_, s)| s);
            ((rev, seq), key)
        })
        .collect();
    wanted.sort();
    let names: Vec<String> = wanted.into_iter().map(|(_, key)| key).collect();
    // Fetch and decode (CRCs, zstd, protobuf) ahead on the blocking pool while earlier
    // chunks are applied: decoding is most of a replay's CPU and chunks are independent.
    let mut decoded = futures::stream::iter(names.clone())
        .map(|key| async move {
            let obj = store.get(&key).await?;
            let size = obj.data.len() as u64;
            let (key, file) = tokio::task::spawn_blocking(move || {
                let file = format::decode(&key, &obj.data).map(|f| (f, format::crc64(&obj.data)));
                (key, file)
            })
            .await
            .map_err(|e| RecoveryError::Invalid {
                key: "(decoder task)".into(),
                reason: e.to_string(),
            })?;
            Ok::<_, RecoveryError>((key, size, file?))
        })
        .buffered(FETCH_CONCURRENCY);

    let snapshot = base.as_ref().map(|(_, rev, key)| (key.clone(), *rev));
    let mut next: Option<Position> = base.as_ref().map(|(_, rev, _)| Position::new(rev + 1, 0));
    // The state is built on a thread of its own, fed in log order, so that applying one
    // chunk (the critical path) overlaps with fetching, decoding and checking the next ones.
    let mut last_crc = base.as_ref().map_or(0, |(state, _, _)| state.chain.last);
    let mut chain: std::collections::HashSet<u64> =
        [last_crc].into_iter().filter(|c| *c != 0).collect();
    let mut orphans = Vec::new();
    let mut at_revision_crc = base
        .as_ref()
        .map_or(0, |(state, _, _)| state.chain.at_revision);
    let mut applier: Option<Applier> = base.map(|(state, _, _)| Applier::start(state));
    let mut previous: Option<(Position, String)> = None;
    let mut records = 0u64;
    let mut last_progress = Instant::now();
    let mut decode_wait = Duration::ZERO;
    let total = names.len();
    let mut i = 0;
    loop {
        let waited = Instant::now();
        let Some(item) = decoded.next().await else {
            break;
        };
        decode_wait += waited.elapsed();
        let (key, size, (file, crc)) = item?;
        bytes += size;
        cluster.check(&key, file.header.cluster_id)?;
        let seq = layout::parse_chunk_key(&key).map_or(0, |(_, s)| s);
        let (position, after) = chunk_position(&key, seq, &file)?;
        let follows = match next {
            Some(n) => position == n && continues(&file.header, last_crc),
            // A log's first chunk names no predecessor.
            None => file.header.previous_crc == 0,
        };
        if !follows && is_orphan(&file.header, |crc| chain.contains(&crc)) {
            tracing::warn!(
                key,
                %position,
                "skipping a chunk a failed pipelined commit left behind (never acknowledged: the chunk it follows is not in the log)"
            );
            orphans.push(key);
            i += 1;
            continue;
        }
        // No snapshot: the log starts at the first chunk, which must be at revision 1 (Go
        // Netsy) or 2 (an empty Netsy starts at 1 like etcd; its first write is 2).
        let next = next.get_or_insert(position);
        if snapshot.is_none() && i == 0 && (position.seq != 0 || position.revision > 2) {
            return Err(RecoveryError::Gap {
                expected: Position::new(1, 0),
                orphans: names.clone(),
            });
        }
        if position < *next {
            let first = match &previous {
                Some((p, k)) if *p == position => k.clone(),
                _ => "an earlier chunk or snapshot".into(),
            };
            return Err(RecoveryError::Overlap {
                position,
                first,
                second: key,
            });
        }
        if position > *next {
            return Err(RecoveryError::Gap {
                expected: *next,
                orphans: names[i..].to_vec(),
            });
        }
        if !follows {
            return Err(RecoveryError::Invalid {
                key,
                reason: format!(
                    "it names a previous chunk with CRC {:016x}, not the one before it in the log ({last_crc:016x}), though it was written after every chunk before it was durable",
                    file.header.previous_crc
                ),
            });
        }
        last_crc = crc;
        chain.insert(crc);
        if after.seq == 0 {
            at_revision_crc = crc;
        }
        records += file.records.len() as u64;
        *next = after;
        let sent = applier
            .get_or_insert_with(|| Applier::start(State::at_revision(position.revision - 1)))
            .send(key.clone(), file.records)
            .await;
        if !sent {
            // The applier stopped at an inconsistent record: its error is the outcome.
            if let Some(stopped) = applier.take() {
                stopped.finish().await?;
            }
            return Err(RecoveryError::Invalid {
                key,
                reason: "the applier stopped without an error".into(),
            });
        }
        previous = Some((position, key));
        i += 1;
        if last_progress.elapsed() > Duration::from_secs(2) {
            last_progress = Instant::now();
            tracing::info!(
                objects = i,
                of = total,
                records,
                bytes,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "replaying chunks"
            );
        }
    }
    let (mut state, next) = match (applier, next) {
        (Some(applier), Some(next)) => (applier.finish().await?, next),
        _ => (State::at_revision(1), Position::new(2, 0)),
    };
    state.chain = mvcc::Chain {
        last: last_crc,
        at_revision: at_revision_crc,
    };
    tracing::info!(
        chunks = total,
        records,
        waited_for_decode_ms = decode_wait.as_millis() as u64,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "replayed chunks"
    );
    Ok(Recovered {
        state,
        next,
        snapshot,
        snapshot_stored_ms,
        chunks: total - orphans.len(),
        orphans,
        records,
        bytes,
        elapsed: started.elapsed(),
        cluster_id: if cluster.id != 0 {
            cluster.id
        } else {
            (rand::random::<u64>() >> 1).max(1)
        },
    })
}
