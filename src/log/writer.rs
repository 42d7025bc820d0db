//! The group-committing writer task.

use super::layout::{chunk_key, Position};
use super::leader::Leader;
use super::{Log, Proposal, Queue, Request, Response, WriteError};
use crate::format::{self, FileMeta};
use crate::mvcc::{Error as MvccError, Lease, State};
use crate::proto::netsy::{FileKind, Record, RecordKind};
use crate::store::DynStore;
use bytes::Bytes;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Written into every chunk header and record.
    pub leader_id: String,
    /// Written into every chunk header (0: none).
    pub cluster_id: u64,
    /// Most records one chunk may hold.
    pub max_batch_records: usize,
    /// Most request bytes one batch may take.
    pub max_batch_bytes: usize,
    /// Extra wait before cutting a batch, to trade latency for fewer PUTs (default 0).
    pub commit_window: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            leader_id: "netsy".into(),
            cluster_id: 0,
            max_batch_records: 10_000,
            max_batch_bytes: 16 * 1024 * 1024,
            commit_window: Duration::ZERO,
        }
    }
}

/// Why the writer stopped.
#[derive(Debug)]
pub enum WriterExit {
    Shutdown,
    /// Another writer extended the log, or the lease was lost: reload before writing again.
    Fenced(WriteError),
    /// The queue closed (every `Log` handle dropped).
    Closed,
}

/// Evaluates one request against `work`, appending its records.
pub(crate) fn evaluate(
    work: &mut State,
    request: &Request,
    records: &mut Vec<Record>,
) -> Result<Response, WriteError> {
    let control = |work: &State, kind: RecordKind| Record {
        revision: work.revision,
        kind: kind as i32,
        ..Default::default()
    };
    match request {
        Request::Put(r) => {
            let e = work.put(r)?;
            records.extend(e.records);
            Ok(Response::Put(e.response))
        }
        Request::DeleteRange(r) => {
            let e = work.delete_range(r)?;
            records.extend(e.records);
            Ok(Response::DeleteRange(e.response))
        }
        Request::Txn(r) => {
            let e = work.txn(r)?;
            records.extend(e.records);
            Ok(Response::Txn(e.response))
        }
        Request::Compact(rev) => {
            let rev = *rev;
            if rev > work.revision {
                return Err(MvccError::FutureRevision.into());
            }
            if rev <= work.compact_revision {
                return Err(MvccError::Compacted.into());
            }
            work.compact(rev);
            records.push(Record {
                compact_revision: rev,
                ..control(work, RecordKind::Compact)
            });
            Ok(Response::Compact {
                revision: work.revision,
            })
        }
        Request::LeaseGrant { id, ttl } => {
            let id = if *id == 0 {
                loop {
                    let candidate = (rand::random::<u64>() >> 1) as i64;
                    if candidate != 0 && work.lease(candidate).is_none() {
                        break candidate;
                    }
                }
            } else {
                *id
            };
            if work.lease(id).is_some() {
                return Err(MvccError::LeaseExists.into());
            }
            work.put_lease(Lease { id, ttl: *ttl });
            records.push(Record {
                lease: id,
                ttl: *ttl,
                ..control(work, RecordKind::LeaseGrant)
            });
            Ok(Response::LeaseGrant {
                id,
                ttl: *ttl,
                revision: work.revision,
            })
        }
        Request::LeaseRevoke { id } => {
            if work.lease(*id).is_none() {
                return Err(MvccError::LeaseNotFound.into());
            }
            let keys: Vec<Bytes> = work.lease_keys(*id).map(|k| k.to_bytes()).collect();
            if !keys.is_empty() {
                // All attached keys go in one revision, like etcd's revoke.
                let txn = crate::proto::etcdserverpb::TxnRequest {
                    compare: vec![],
                    success: keys
                        .into_iter()
                        .map(|key| crate::proto::etcdserverpb::RequestOp {
                            request: Some(
                                crate::proto::etcdserverpb::request_op::Request::RequestDeleteRange(
                                    crate::proto::etcdserverpb::DeleteRangeRequest {
                                        key,
                                        ..Default::default()
                                    },
                                ),
                            ),
                        })
                        .collect(),
                    failure: vec![],
                };
                records.extend(work.txn(&txn)?.records);
            }
            work.remove_lease(*id);
            records.push(Record {
                lease: *id,
                ..control(work, RecordKind::LeaseRevoke)
            });
            Ok(Response::LeaseRevoke {
                revision: work.revision,
            })
        }
        Request::Auth(change) => {
            let mut store = crate::auth::AuthStore::decode(work.auth())?;
            if store.apply(change)? {
                let encoded = Bytes::from(store.encode());
                work.set_auth(encoded.clone());
                records.push(Record {
                    value: encoded,
                    ..control(work, RecordKind::Auth)
                });
            }
            Ok(Response::Auth {
                revision: work.revision,
            })
        }
    }
}

/// Control records placed before the first key-value record of a chunk take that record's
/// revision, so revisions never decrease within a chunk and the footer's first revision is
/// the chunk's log position.
pub(crate) fn align_control_records(records: &mut [Record]) -> Option<i64> {
    let first_kv = records
        .iter()
        .find(|r| !State::is_control(r))
        .map(|r| r.revision)?;
    for r in records.iter_mut() {
        if !State::is_control(r) {
            break;
        }
        r.revision = first_kv;
    }
    Some(first_kv)
}

/// Answers every request of a batch that will not be acknowledged.
fn fail_all(batch: &mut Vec<Proposal>, err: &WriteError) {
    for p in batch.drain(..) {
        let _ = p.reply.send(Err(err.clone()));
    }
}

/// Chunks this writer commits before it asks the store to prepare every chunk partition.
/// A directory store creates them ahead, once: a `mkdir` and a sync of its parent (on the
/// development machine's ext4, up to 350 us of kernel CPU and a disk flush), which a new
/// bucket's first 10,000 chunks would otherwise each pay on the write path. A store written
/// to this much will need them all soon; one that is not (a test, an idle cluster) is
/// spared the 10,000 directories.
const PREPARE_AFTER_CHUNKS: usize = 256;

/// Runs the writer until shutdown or fencing. `next` is the log position after recovery.
pub async fn run_writer(
    log: &Log,
    queue: &mut Queue,
    store: &DynStore,
    leader: &Leader,
    config: &WriterConfig,
    mut next: Position,
    shutdown: &CancellationToken,
) -> WriterExit {
    let mut chunks_written = 0usize;
    let mut batch: Vec<Proposal> = Vec::new();
    loop {
        batch.clear();
        let first = tokio::select! {
            p = queue.0.recv() => match p {
                Some(p) => p,
                None => return WriterExit::Closed,
            },
            _ = shutdown.cancelled() => return WriterExit::Shutdown,
        };
        if !config.commit_window.is_zero() {
            tokio::time::sleep(config.commit_window).await;
        }
        let mut bytes = first.request.size();
        batch.push(first);
        while batch.len() < config.max_batch_records && bytes < config.max_batch_bytes {
            match queue.0.try_recv() {
                Ok(p) => {
                    bytes += p.request.size();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }

        let base = log.state();
        let mut work = (*base).clone();
        let mut records = Vec::new();
        let mut results = Vec::with_capacity(batch.len());
        let quota = log.quota();
        for p in &batch {
            let request = &p.request;
            if request.adds_data() && !quota.admit(work.bytes(), request.size() as i64) {
                results.push(Err(WriteError::NoSpace));
                continue;
            }
            results.push(evaluate(&mut work, request, &mut records));
        }
        if records.is_empty() {
            // Nothing to persist or publish: every request failed or changed nothing, so the
            // state is the published one (republishing would only wake every watcher).
            for (p, r) in batch.drain(..).zip(results) {
                let _ = p.reply.send(r);
            }
            continue;
        }

        let created_at = crate::clock::now_timestamp();
        for r in records.iter_mut() {
            r.leader_id.clone_from(&config.leader_id);
            r.created_at = Some(created_at);
        }
        let first_kv = align_control_records(&mut records);
        let position = next;
        if let Some(first_kv) = first_kv {
            debug_assert_eq!(first_kv, position.revision);
        }
        let key = chunk_key(position);
        let meta = FileMeta {
            leader_id: config.leader_id.clone(),
            cluster_id: config.cluster_id,
            created_at: Some(created_at),
            ..Default::default()
        };
        let encoded = match format::encode(FileKind::Chunk, &meta, &mut records) {
            Ok(b) => b,
            Err(e) => {
                let err = WriteError::TooLarge(e.to_string());
                fail_all(&mut batch, &err);
                continue;
            }
        };
        if !leader.is_valid() {
            let err = WriteError::LeaseExpired;
            fail_all(&mut batch, &err);
            return WriterExit::Fenced(err);
        }
        let started = tokio::time::Instant::now();
        let size = encoded.len();
        crate::crashpoint::hit("chunk-before-put");
        let data = Bytes::from(encoded);
        let put = store
            .put(&key, data.clone(), crate::store::PutMode::Create)
            .await;
        if put.is_ok() {
            crate::crashpoint::hit("chunk-after-put");
        }
        let m = &crate::metrics::METRICS;
        m.chunk_put_seconds.observe(started.elapsed().as_secs_f64());
        // Checked once: the acknowledgement below and the lease extension rest on it.
        let valid = put.is_ok() && leader.is_valid();
        let failure = match &put {
            Ok(_) if valid => None,
            Ok(_) => Some("lease_expired"),
            Err(e) if e.is_conflict() => Some("conflict"),
            Err(crate::store::StoreError::Transient { .. }) => Some("transient"),
            Err(_) => Some("error"),
        };
        match failure {
            None => {
                m.batch_records.observe(records.len() as f64);
                m.batch_requests.observe(batch.len() as f64);
                m.chunk_bytes.observe(size as f64);
            }
            Some(reason) => {
                m.chunk_put_failures.with_label_values(&[reason]).inc();
                m.proposals_failed.inc_by(batch.len() as u64);
            }
        }
        match put {
            Ok(_) if valid => {
                leader.proved_alive(started);
                tracing::debug!(
                    key,
                    requests = batch.len(),
                    records = records.len(),
                    bytes = size,
                    put_ms = started.elapsed().as_millis() as u64,
                    "committed chunk"
                );
                chunks_written += 1;
                if chunks_written == PREPARE_AFTER_CHUNKS {
                    store.prepare_prefixes(super::layout::chunk_partitions_from(next.revision));
                }
                let w = log.written();
                w.chunks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                w.records
                    .fetch_add(records.len() as u64, std::sync::atomic::Ordering::Relaxed);
                w.bytes
                    .fetch_add(size as u64, std::sync::atomic::Ordering::Relaxed);
                next = if first_kv.is_some() {
                    Position::new(work.revision + 1, 0)
                } else {
                    Position::new(position.revision, position.seq + 1)
                };
                log.publish(work, next);
                log.committed(super::Committed { position, data });
                for (p, r) in batch.drain(..).zip(results) {
                    let _ = p.reply.send(r);
                }
            }
            Ok(_) => {
                // Durable, but the lease ran out while the PUT was in flight: a successor may
                // already be serving, so the outcome cannot be acknowledged.
                tracing::error!(
                    key,
                    "chunk written after the leader lease expired; stepping down"
                );
                let err = WriteError::LeaseExpired;
                fail_all(&mut batch, &err);
                return WriterExit::Fenced(err);
            }
            Err(e) if e.is_conflict() => {
                tracing::error!(
                    key,
                    "another writer already wrote this log position; this node stops writing and reloads"
                );
                let err = WriteError::Fenced { key };
                fail_all(&mut batch, &err);
                return WriterExit::Fenced(err);
            }
            Err(e) => {
                tracing::warn!(key, error = %e, requests = batch.len(), "chunk PUT failed; batch failed");
                let err = WriteError::store(&key, &e);
                fail_all(&mut batch, &err);
            }
        }
    }
}
