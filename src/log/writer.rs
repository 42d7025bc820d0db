//! The group-committing writer task.

use super::layout::{chunk_key, Position};
use super::leader::Leader;
use super::{Log, Proposal, Queue, Request, Response, WriteError};
use crate::format::{self, FileMeta};
use crate::mvcc::{Error as MvccError, Lease, State};
use crate::proto::netsy::{FileKind, Record, RecordKind};
use crate::store::{DynStore, PutMode, StoreError};
use bytes::Bytes;
use futures::stream::{FuturesOrdered, StreamExt};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Chunk PUTs in flight by default. At S3's 25 ms per PUT, one at a time makes a write
/// wait for the PUT in flight and then its own (two PUTs); with eight, a write waits on
/// average a sixteenth of a PUT for a slot (p50 1.2 PUTs with 64 clients, against 1.34
/// with four), and a leader under load sends up to 320 PUTs a second (docs/performance.md
/// has the table).
pub const DEFAULT_IN_FLIGHT: usize = 8;

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
    /// Most chunk PUTs in flight at once (1: each waits for the one before).
    pub max_in_flight: usize,
    /// Key prefixes of heartbeats: writes that tolerate seconds (Kubernetes' lease
    /// renewals, events). One that only touches keys under them waits for the next chunk,
    /// at the latest the one that proves the leader alive when it would otherwise renew its
    /// lease (`Leader::proof_due`); any other write cuts the batch at once and takes them
    /// along. On an idle control plane that turns 1.8 writes/s into one PUT per renewal.
    /// Empty (the default here; `netsy serve` names Kubernetes' leases, master leases and
    /// events under `/registry/`): every write is cut at once.
    pub heartbeat_prefixes: Vec<Bytes>,
}

/// How long before the leader's proof of life is due a batch of heartbeats is cut: its
/// chunk is then in flight when the renewal falls due, which waits for it to land instead
/// of writing the lease object (`Leader::keep_renewed`).
const HEARTBEAT_LEAD: Duration = Duration::from_millis(20);

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            leader_id: "netsy".into(),
            cluster_id: 0,
            max_batch_records: 10_000,
            max_batch_bytes: 16 * 1024 * 1024,
            commit_window: Duration::ZERO,
            max_in_flight: DEFAULT_IN_FLIGHT,
            heartbeat_prefixes: Vec::new(),
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

/// A batch cut and evaluated, its chunk PUT sent (or nothing to write).
struct Flight {
    batch: Vec<Proposal>,
    results: Vec<Result<Response, WriteError>>,
    /// What to publish once the chunk is durable; None: the batch changed nothing.
    chunk: Option<Chunk>,
}

struct Chunk {
    key: String,
    position: Position,
    /// The position after it.
    next: Position,
    work: State,
    data: Bytes,
    records: usize,
    /// The CRC of the chunk before it, which it names.
    previous_crc: u64,
    started: Instant,
}

type Landing = futures::future::BoxFuture<'static, (Flight, Option<Result<String, StoreError>>)>;

/// Whether the object `existing` at a position this writer is about to fill was left by
/// a failed pipelined commit ([`super::recovery::is_orphan`]): the only chunk in the log
/// that one at this position could follow is this writer's previous chunk, which is
/// durable; one naming another predecessor was never acknowledged.
fn is_orphan_of(existing: &[u8], key: &str, previous_crc: u64) -> bool {
    previous_crc != 0
        && format::decode(key, existing)
            .is_ok_and(|file| super::recovery::is_orphan(&file.header, |crc| crc == previous_crc))
}

/// The outcome of a chunk PUT that failed on a conflict, once an orphan left at the key
/// is deleted and the PUT sent again (only while the lease is valid).
async fn replace_orphan(
    store: &DynStore,
    leader: &Leader,
    chunk: &Chunk,
) -> Option<Result<String, StoreError>> {
    let existing = store.get(&chunk.key).await.ok()?;
    if !is_orphan_of(&existing.data, &chunk.key, chunk.previous_crc) || !leader.is_valid() {
        return None;
    }
    tracing::warn!(
        key = chunk.key,
        "deleting a chunk a failed pipelined commit left at this log position (never acknowledged)"
    );
    if let Err(e) = store.delete(&chunk.key).await {
        return Some(Err(e));
    }
    Some(
        store
            .put(&chunk.key, chunk.data.clone(), PutMode::Create)
            .await,
    )
}

/// Runs the writer until shutdown or fencing. `next` is the log position after recovery.
///
/// Up to [`WriterConfig::max_in_flight`] chunks are in flight at once, each evaluated on
/// the state the one before it will publish, each at the next log position, and answered
/// strictly in log order: a batch is acknowledged only once its PUT and every earlier one
/// succeeded. When one fails, every later batch fails too and is never acknowledged; a
/// later chunk that landed anyway is never adopted unless the failed one landed too (it
/// names a predecessor), and is replaced once this writer's chunk holds the failed one's
/// position.
pub async fn run_writer(
    log: &Log,
    queue: &mut Queue,
    store: &DynStore,
    leader: &Leader,
    config: &WriterConfig,
    next: Position,
    shutdown: &CancellationToken,
) -> WriterExit {
    let depth = config.max_in_flight.max(1);
    let mut chunks_written = 0usize;
    let mut flights: FuturesOrdered<Landing> = FuturesOrdered::new();
    // The state and position the last batch in flight leads to (None: the published ones).
    let mut tail: Option<(State, Position)> = None;
    let mut forming: Vec<Proposal> = Vec::new();
    let mut forming_bytes = 0usize;
    let mut cut_at: Option<Instant> = None;
    // The queue ended (every `Log` handle dropped).
    let mut closed = false;
    // When a proposal joins the batch being formed: a heartbeat waits for the proof of
    // life, anything else for the commit window at most.
    let deadline = |p: &Proposal| {
        if p.request.is_heartbeat(&config.heartbeat_prefixes) {
            leader
                .proof_due()
                .checked_sub(HEARTBEAT_LEAD)
                .unwrap_or_else(Instant::now)
        } else {
            Instant::now() + config.commit_window
        }
    };
    debug_assert_eq!(log.next_position(), next);
    loop {
        // Take what is queued, up to a batch.
        while forming.len() < config.max_batch_records && forming_bytes < config.max_batch_bytes {
            match queue.0.try_recv() {
                Ok(p) => {
                    forming_bytes += p.request.size();
                    let at = deadline(&p);
                    cut_at = Some(cut_at.map_or(at, |c| c.min(at)));
                    forming.push(p);
                }
                Err(_) => break,
            }
        }
        let due = cut_at.is_some_and(|t| t <= Instant::now());
        if due && flights.len() < depth && !shutdown.is_cancelled() {
            cut_at = None;
            forming_bytes = 0;
            let batch = std::mem::take(&mut forming);
            if !leader.is_valid() {
                let mut batch = batch;
                fail_all(&mut batch, &WriteError::LeaseExpired);
                return abandon(flights, WriteError::LeaseExpired).await;
            }
            let (flight, next_tail) = cut(log, store, leader, config, batch, tail.take());
            tail = next_tail;
            flights.push_back(flight);
            continue;
        }
        if closed && forming.is_empty() {
            // Every handle is gone: what is in flight lands, then the writer ends.
            land_all(log, store, leader, &mut flights, &mut chunks_written).await;
            return WriterExit::Closed;
        }
        let full =
            forming.len() >= config.max_batch_records || forming_bytes >= config.max_batch_bytes;
        let wait_cut = cut_at.filter(|_| flights.len() < depth);
        tokio::select! {
            // Shutdown first: under steady load the queue is never empty, and a handover
            // must not wait for a lull.
            biased;
            _ = shutdown.cancelled() => {
                // The chunks in flight land and are answered (a handover loses nothing
                // acknowledged-to-be); what was not cut yet is refused.
                fail_all(&mut forming, &WriteError::Shutdown);
                land_all(log, store, leader, &mut flights, &mut chunks_written).await;
                return WriterExit::Shutdown;
            }
            landed = flights.next(), if !flights.is_empty() => {
                let (flight, put) = landed.expect("not empty");
                match land(log, store, leader, flight, put, &mut chunks_written).await {
                    Ok(()) => {
                        if flights.is_empty() {
                            tail = None;
                        }
                    }
                    Err(Failure::Fenced(err)) => return abandon(flights, err).await,
                    Err(Failure::Failed(err)) => {
                        // Nothing after the failed chunk may be acknowledged; the next
                        // batch takes its position.
                        tail = None;
                        unwind(&mut flights, &err).await;
                    }
                }
            }
            p = queue.0.recv(), if !full && !closed => match p {
                Some(p) => {
                    forming_bytes += p.request.size();
                    let at = deadline(&p);
                    cut_at = Some(cut_at.map_or(at, |c| c.min(at)));
                    forming.push(p);
                }
                None => closed = true,
            },
            _ = sleep_until(wait_cut) => {}
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Evaluates a batch on the state the flights before it lead to and sends its chunk.
/// Returns the flight and the new tail.
fn cut(
    log: &Log,
    store: &DynStore,
    leader: &Leader,
    config: &WriterConfig,
    batch: Vec<Proposal>,
    tail: Option<(State, Position)>,
) -> (Landing, Option<(State, Position)>) {
    let in_flight = tail.is_some();
    // Flights land in order, so the first chunk not yet acknowledged (landed or not) is
    // the one at the published position; one is in flight when the tail is past it.
    let published = log.next_position();
    let pending = tail
        .as_ref()
        .is_some_and(|t| t.1 != published)
        .then_some(published);
    let (mut work, position) = match tail {
        Some(t) => t,
        None => ((*log.state()).clone(), published),
    };
    let base_revision = work.revision;
    let mut records = Vec::new();
    let mut results = Vec::with_capacity(batch.len());
    let quota = log.quota();
    let before = work.clone();
    for p in &batch {
        let request = &p.request;
        if request.adds_data() && !quota.admit(work.bytes(), request.size() as i64) {
            results.push(Err(WriteError::NoSpace));
            continue;
        }
        results.push(evaluate(&mut work, request, &mut records));
    }
    let nothing = |batch, results| -> Landing {
        Box::pin(futures::future::ready((
            Flight {
                batch,
                results,
                chunk: None,
            },
            None,
        )))
    };
    if records.is_empty() {
        // Nothing to persist: every request failed or changed nothing. Answered in order
        // with the flights before it (its answers may rest on their state); the tail
        // stays where they lead.
        let keep = in_flight.then_some((before, position));
        return (nothing(batch, results), keep);
    }
    let created_at = crate::clock::now_timestamp();
    for r in records.iter_mut() {
        r.leader_id.clone_from(&config.leader_id);
        r.created_at = Some(created_at);
    }
    let first_kv = align_control_records(&mut records);
    if let Some(first_kv) = first_kv {
        debug_assert_eq!(first_kv, position.revision);
        debug_assert_eq!(first_kv, base_revision + 1);
    }
    let key = chunk_key(position);
    let previous_crc = work.chain.last;
    let meta = FileMeta {
        leader_id: config.leader_id.clone(),
        cluster_id: config.cluster_id,
        created_at: Some(created_at),
        previous_crc,
        // Conservative (it may have landed already), so that a chunk naming no pending
        // position really followed a durable one.
        pending: pending.map_or((0, 0), |p| (p.revision, p.seq)),
        ..Default::default()
    };
    let encoded = match format::encode(FileKind::Chunk, &meta, &mut records) {
        Ok(b) => Bytes::from(b),
        Err(e) => {
            let err = WriteError::TooLarge(e.to_string());
            let results = batch.iter().map(|_| Err(err.clone())).collect();
            let keep = in_flight.then_some((before, position));
            return (nothing(batch, results), keep);
        }
    };
    let next = if first_kv.is_some() {
        Position::new(work.revision + 1, 0)
    } else {
        Position::new(position.revision, position.seq + 1)
    };
    work.chain
        .applied(format::crc64(&encoded), first_kv.is_some());
    crate::crashpoint::hit("chunk-before-put");
    let chunk = Chunk {
        key: key.clone(),
        position,
        next,
        work: work.clone(),
        data: encoded.clone(),
        records: records.len(),
        previous_crc,
        started: Instant::now(),
    };
    let store = store.clone();
    let flight = Flight {
        batch,
        results,
        chunk: Some(chunk),
    };
    let sending = leader.chunk_sent();
    let landing: Landing = Box::pin(async move {
        let put = store.put(&key, encoded, PutMode::Create).await;
        drop(sending);
        (flight, Some(put))
    });
    (landing, Some((work, next)))
}

/// Why a landed flight could not be acknowledged.
enum Failure {
    /// Another writer extended the log, or the lease ran out: stop writing.
    Fenced(WriteError),
    /// This chunk failed (and so every later one): the writer goes on from the published
    /// state.
    Failed(WriteError),
}

/// Acknowledges a flight whose chunk PUT (if any) returned `put`, every earlier one having
/// been acknowledged: publishes its state, hands its chunk to the followers, answers its
/// batch. On failure the batch is failed and the reason returned.
async fn land(
    log: &Log,
    store: &DynStore,
    leader: &Leader,
    flight: Flight,
    put: Option<Result<String, StoreError>>,
    chunks_written: &mut usize,
) -> Result<(), Failure> {
    let Flight {
        mut batch,
        results,
        chunk,
    } = flight;
    let (Some(chunk), Some(mut put)) = (chunk, put) else {
        for (p, r) in batch.drain(..).zip(results) {
            let _ = p.reply.send(r);
        }
        return Ok(());
    };
    if matches!(&put, Err(e) if e.is_conflict()) {
        if let Some(again) = replace_orphan(store, leader, &chunk).await {
            put = again;
        }
    }
    if put.is_ok() {
        crate::crashpoint::hit("chunk-after-put");
    }
    let m = &crate::metrics::METRICS;
    m.chunk_put_seconds
        .observe(chunk.started.elapsed().as_secs_f64());
    // Checked once: the acknowledgement below and the lease extension rest on it.
    let valid = put.is_ok() && leader.is_valid();
    let key = chunk.key.clone();
    let failure = match &put {
        Ok(_) if valid => None,
        Ok(_) => Some("lease_expired"),
        Err(e) if e.is_conflict() => Some("conflict"),
        Err(StoreError::Transient { .. }) => Some("transient"),
        Err(_) => Some("error"),
    };
    if let Some(reason) = failure {
        m.chunk_put_failures.with_label_values(&[reason]).inc();
        m.proposals_failed.inc_by(batch.len() as u64);
    }
    match put {
        Ok(_) if valid => {
            let size = chunk.data.len();
            m.batch_records.observe(chunk.records as f64);
            m.batch_requests.observe(batch.len() as f64);
            m.chunk_bytes.observe(size as f64);
            leader.proved_alive(chunk.started);
            tracing::debug!(
                key,
                requests = batch.len(),
                records = chunk.records,
                bytes = size,
                put_ms = chunk.started.elapsed().as_millis() as u64,
                "committed chunk"
            );
            *chunks_written += 1;
            if *chunks_written == PREPARE_AFTER_CHUNKS {
                store.prepare_prefixes(super::layout::chunk_partitions_from(
                    chunk.position.revision,
                ));
            }
            let w = log.written();
            w.chunks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            w.records
                .fetch_add(chunk.records as u64, std::sync::atomic::Ordering::Relaxed);
            w.bytes
                .fetch_add(size as u64, std::sync::atomic::Ordering::Relaxed);
            log.publish(chunk.work, chunk.next);
            log.committed(super::Committed {
                position: chunk.position,
                data: chunk.data,
            });
            for (p, r) in batch.drain(..).zip(results) {
                let _ = p.reply.send(r);
            }
            Ok(())
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
            Err(Failure::Fenced(err))
        }
        Err(e) if e.is_conflict() => {
            tracing::error!(
                key,
                "another writer already wrote this log position; this node stops writing and reloads"
            );
            let err = WriteError::Fenced { key };
            fail_all(&mut batch, &err);
            Err(Failure::Fenced(err))
        }
        Err(e) => {
            tracing::warn!(key, error = %e, requests = batch.len(), "chunk PUT failed; batch failed");
            let err = WriteError::store(&key, &e);
            fail_all(&mut batch, &err);
            Err(Failure::Failed(err))
        }
    }
}

/// After a chunk failed: fails every later flight as each lands. A later chunk that landed
/// anyway stays where it is, for now: the failed one may have landed too (a lost answer) or
/// still land (a request still travelling), and then the two are a chain a follower may
/// already have read from the bucket and a reload will adopt. Only once this writer's own
/// chunk holds the failed position is such a chunk provably never part of the log; the
/// writer deletes it when its PUT meets it ([`replace_orphan`]).
async fn unwind(flights: &mut FuturesOrdered<Landing>, cause: &WriteError) {
    let err = WriteError::Store {
        key: match cause {
            WriteError::Store { key, .. } => key.clone(),
            _ => String::new(),
        },
        message: format!("an earlier chunk in flight failed ({cause}); this write was not applied"),
    };
    for key in fail_flights(flights, &err).await {
        tracing::warn!(
            key,
            "a chunk landed after an earlier one failed; never acknowledged, it is replaced when the log reaches its position again"
        );
    }
}

/// Stops writing with `err`: every flight still in the air is failed as it lands (their
/// chunks, if they land, are never adopted: each names a predecessor this writer never
/// acknowledged, or is a successor that whoever leads next may adopt, unacknowledged).
async fn abandon(mut flights: FuturesOrdered<Landing>, err: WriteError) -> WriterExit {
    fail_flights(&mut flights, &err).await;
    WriterExit::Fenced(err)
}

/// Fails every flight still in the air with `err` as it lands; returns the keys of the
/// chunks that landed anyway.
async fn fail_flights(flights: &mut FuturesOrdered<Landing>, err: &WriteError) -> Vec<String> {
    let mut landed = Vec::new();
    while let Some((mut flight, put)) = flights.next().await {
        crate::metrics::METRICS
            .proposals_failed
            .inc_by(flight.batch.len() as u64);
        fail_all(&mut flight.batch, err);
        if let (Some(chunk), Some(Ok(_))) = (flight.chunk, put) {
            landed.push(chunk.key);
        }
    }
    landed
}

/// Lands every flight still in the air, in order (the writer is stopping and cuts no
/// more); once one fails, the rest fail with it.
async fn land_all(
    log: &Log,
    store: &DynStore,
    leader: &Leader,
    flights: &mut FuturesOrdered<Landing>,
    chunks_written: &mut usize,
) {
    while let Some((flight, put)) = flights.next().await {
        if let Err(Failure::Fenced(e) | Failure::Failed(e)) =
            land(log, store, leader, flight, put, chunks_written).await
        {
            fail_flights(flights, &e).await;
        }
    }
}
