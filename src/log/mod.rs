//! The log: the only path by which the state changes.
//!
//! One writer task owns the head. Requests queue on a channel; the writer takes everything
//! queued (bounded by records and bytes), evaluates each in order against a working copy of
//! the state with consecutive revisions, writes ONE chunk with a conditional PUT
//! (`If-None-Match: *`) at the key of the next log position, and only when that PUT succeeds
//! publishes the new state and answers every request in the batch. A failed PUT fails the
//! whole batch and nothing of it becomes visible. A conflict means another writer extended
//! the log: this writer stops, and the supervisor reloads from the bucket.
//!
//! Readers never go through here: they load the published `Arc<State>`.

pub mod compaction_hashes;
pub mod layout;
pub mod leader;
mod recent;
pub mod recovery;
pub mod snapshot;
pub mod writer;

pub use writer::{run_writer, WriterConfig, WriterExit};

use crate::mvcc::{self, State};
use crate::proto::etcdserverpb::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, TxnRequest, TxnResponse,
};
use crate::store::StoreError;
use arc_swap::ArcSwap;
use bytes::Bytes;
use layout::Position;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

/// A change to the store.
#[derive(Debug, Clone)]
pub enum Request {
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(i64),
    /// `id == 0` lets the writer choose one.
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    LeaseRevoke {
        id: i64,
    },
    /// A change to etcd's users and roles.
    Auth(crate::auth::Change),
}

impl Request {
    /// Whether the request can add data (and so is refused under the NOSPACE alarm).
    pub fn adds_data(&self) -> bool {
        use crate::proto::etcdserverpb::request_op::Request as Op;
        match self {
            Request::Put(_) | Request::LeaseGrant { .. } => true,
            Request::Txn(t) => !mvcc::txn_all_ops(t, &|op| !matches!(op, Op::RequestPut(_))),
            _ => false,
        }
    }

    /// Whether every key the request writes (and every key a transaction reads) is under
    /// one of `prefixes`: a heartbeat, which may wait for the chunk that proves the leader
    /// alive (see [`writer::WriterConfig::heartbeat_prefixes`]).
    pub fn is_heartbeat(&self, prefixes: &[Bytes]) -> bool {
        use crate::proto::etcdserverpb::request_op::Request as Op;
        if prefixes.is_empty() {
            return false;
        }
        let under = |key: &[u8]| prefixes.iter().any(|p| key.starts_with(p));
        match self {
            Request::Put(r) => under(&r.key),
            Request::DeleteRange(r) => under(&r.key) && r.range_end.is_empty(),
            Request::Txn(t) => {
                t.compare
                    .iter()
                    .all(|c| under(&c.key) && c.range_end.is_empty())
                    && mvcc::txn_all_ops(t, &|op| match op {
                        Op::RequestPut(p) => under(&p.key),
                        Op::RequestDeleteRange(d) => under(&d.key) && d.range_end.is_empty(),
                        Op::RequestRange(r) => under(&r.key) && r.range_end.is_empty(),
                        Op::RequestTxn(_) => false,
                    })
            }
            _ => false,
        }
    }

    /// Rough size, for bounding a batch.
    fn size(&self) -> usize {
        use prost::Message;
        match self {
            Request::Put(r) => r.encoded_len(),
            Request::DeleteRange(r) => r.encoded_len(),
            Request::Txn(r) => r.encoded_len(),
            _ => 16,
        }
    }
}

/// The answer to a [`Request`], valid only once the chunk holding it is in the bucket.
#[derive(Debug, Clone)]
pub enum Response {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact { revision: i64 },
    LeaseGrant { id: i64, ttl: i64, revision: i64 },
    LeaseRevoke { revision: i64 },
    Auth { revision: i64 },
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Mvcc(#[from] mvcc::Error),
    /// The chunk could not be written; the batch was not applied (or its outcome is unknown
    /// if the store lost the response).
    #[error("writing chunk {key}: {message}")]
    Store { key: String, message: String },
    #[error("another writer extended the log at {key}; this node stopped writing")]
    Fenced { key: String },
    #[error("this node is not the leader")]
    NotLeader,
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error("leader lease expired before the write could be acknowledged")]
    LeaseExpired,
    #[error("chunk too large: {0}")]
    TooLarge(String),
    /// The space quota is exhausted (etcd's NOSPACE alarm).
    #[error("database space exceeded")]
    NoSpace,
    #[error("shutting down")]
    Shutdown,
    /// The writer stopped (deposed, or cut off from the store) with this write in a batch
    /// whose PUT may or may not have landed: like a crash, the outcome is unknown.
    #[error("the writer stopped with this write in flight; its outcome is unknown")]
    Abandoned,
}

impl WriteError {
    fn store(key: &str, e: &StoreError) -> Self {
        Self::Store {
            key: key.to_string(),
            message: e.to_string(),
        }
    }
}

pub(crate) struct Proposal {
    pub request: Request,
    pub reply: oneshot::Sender<Result<Response, WriteError>>,
}

/// A chunk the writer committed: its log position and the object's bytes, as followers
/// receive it.
#[derive(Debug, Clone)]
pub struct Committed {
    pub position: Position,
    pub data: Bytes,
}

/// Committed chunks kept for followers that fall behind the feed; one that lags further
/// reads the chunks from the bucket.
const FEED_DEPTH: usize = 1024;

/// Shared handle: the published state, the head revision as a watch channel, and the
/// writer's queue.
#[derive(Clone)]
pub struct Log {
    state: Arc<ArcSwap<State>>,
    head: watch::Sender<i64>,
    /// The log position after the published state: where its next chunk goes.
    next: watch::Sender<Position>,
    /// Every chunk this node's writer commits, for the followers' streams.
    feed: broadcast::Sender<Committed>,
    /// The chunks this node applied last, for followers that (re)connect behind the feed.
    recent: Arc<std::sync::Mutex<recent::Recent>>,
    queue: mpsc::Sender<Proposal>,
    written: Arc<Written>,
    /// The lease under which the published state is known to be the newest: linearizable
    /// reads need it valid, so an ex-leader that was paused (and may have been succeeded)
    /// cannot answer them from its stale state before it notices.
    leader: Arc<arc_swap::ArcSwapOption<leader::Leader>>,
    quota: Arc<Quota>,
    compaction_hashes: Arc<compaction_hashes::CompactionHashes>,
}

/// etcd's space quota (`--quota-backend-bytes`) over the bytes of every retained version,
/// the state's size in memory: past it the NOSPACE alarm is raised and requests that add
/// data fail (deletes, compaction and revokes still work) until an operator compacts and
/// disarms it. This is the bound on memory: a clear error instead of an OOM kill.
///
/// As in etcd, the alarm is kept per member id: `Alarm` requests may activate and deactivate
/// it for any id (0 included), a list returns each member's entry, and writes are refused
/// while any entry is active. The quota itself raises it for this node's id.
#[derive(Debug)]
pub struct Quota {
    limit: std::sync::atomic::AtomicI64,
    nospace: std::sync::atomic::AtomicBool,
    /// Member ids with an active NOSPACE alarm; `nospace` caches whether it is non-empty.
    alarmed: std::sync::Mutex<std::collections::BTreeSet<u64>>,
    /// This node's member id, which the quota raises the alarm for.
    member: std::sync::atomic::AtomicU64,
}

impl Default for Quota {
    fn default() -> Self {
        Self {
            limit: std::sync::atomic::AtomicI64::new(DEFAULT_QUOTA_BYTES),
            nospace: Default::default(),
            alarmed: Default::default(),
            member: Default::default(),
        }
    }
}

/// etcd's default `--quota-backend-bytes`.
pub const DEFAULT_QUOTA_BYTES: i64 = 2 * 1024 * 1024 * 1024;

impl Quota {
    pub fn set_limit(&self, bytes: i64) {
        let bytes = if bytes <= 0 {
            DEFAULT_QUOTA_BYTES
        } else {
            bytes
        };
        self.limit
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn limit(&self) -> i64 {
        self.limit.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether a request costing `cost` bytes may be applied to a state of `current` bytes;
    /// raises the alarm when not.
    pub fn admit(&self, current: i64, cost: i64) -> bool {
        if self.is_raised() {
            return false;
        }
        if current + cost > self.limit() {
            self.raise();
            tracing::error!(
                quota_bytes = self.limit(),
                bytes = current,
                "space quota exceeded; NOSPACE alarm raised: writes that add data fail until keys are deleted or compacted and the alarm is disarmed (etcdctl alarm disarm)"
            );
            return false;
        }
        true
    }

    /// The member id the quota raises the alarm for.
    pub fn set_member(&self, id: u64) {
        self.member.store(id, std::sync::atomic::Ordering::Relaxed);
    }

    /// Raises the alarm for this node.
    pub fn raise(&self) {
        self.raise_for(self.member.load(std::sync::atomic::Ordering::Relaxed));
    }

    pub fn raise_for(&self, member: u64) {
        let mut alarmed = self.alarmed.lock().expect("quota lock");
        alarmed.insert(member);
        self.nospace
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Deactivates `member`'s alarm; whether it was active. Writes resume once no member's
    /// alarm is.
    pub fn disarm_for(&self, member: u64) -> bool {
        let mut alarmed = self.alarmed.lock().expect("quota lock");
        let was = alarmed.remove(&member);
        self.nospace
            .store(!alarmed.is_empty(), std::sync::atomic::Ordering::Relaxed);
        was
    }

    /// The member ids with an active alarm.
    pub fn alarmed(&self) -> Vec<u64> {
        self.alarmed
            .lock()
            .expect("quota lock")
            .iter()
            .copied()
            .collect()
    }

    pub fn is_raised(&self) -> bool {
        self.nospace.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// What the writer has put in the bucket since start, for snapshot thresholds and metrics.
#[derive(Debug, Default)]
pub struct Written {
    pub chunks: std::sync::atomic::AtomicU64,
    pub records: std::sync::atomic::AtomicU64,
    pub bytes: std::sync::atomic::AtomicU64,
}

/// The receiving side of the writer's queue, owned by whoever runs the writer.
pub struct Queue(pub(crate) mpsc::Receiver<Proposal>);

impl Queue {
    /// Answers everything queued with `err` (used while this node cannot write).
    pub fn reject_pending(&mut self, err: &WriteError) {
        while let Ok(p) = self.0.try_recv() {
            let _ = p.reply.send(Err(err.clone()));
        }
    }

    /// Waits for the next proposal and rejects it.
    pub async fn reject_next(&mut self, err: &WriteError) -> bool {
        match self.0.recv().await {
            Some(p) => {
                let _ = p.reply.send(Err(err.clone()));
                true
            }
            None => false,
        }
    }
}

impl Log {
    /// A log over `state`, whose next chunk goes at `next`, and the queue its writer will
    /// drain.
    pub fn new(state: State, next: Position, queue_depth: usize) -> (Self, Queue) {
        let (tx, rx) = mpsc::channel(queue_depth);
        let (head, _) = watch::channel(state.revision);
        (
            Self {
                state: Arc::new(ArcSwap::from_pointee(state)),
                head,
                next: watch::channel(next).0,
                feed: broadcast::channel(FEED_DEPTH).0,
                recent: Arc::default(),
                queue: tx,
                written: Arc::default(),
                leader: Arc::default(),
                quota: Arc::default(),
                compaction_hashes: Arc::default(),
            },
            Queue(rx),
        )
    }

    /// The current published state. Never blocks.
    pub fn state(&self) -> Arc<State> {
        self.state.load_full()
    }

    /// The published state for a linearizable read: only while this node holds a valid
    /// leader lease, since only then is no newer write possibly acknowledged elsewhere.
    pub fn linearizable_state(&self) -> Result<Arc<State>, WriteError> {
        match &*self.leader.load() {
            Some(l) if l.is_valid() => Ok(self.state()),
            _ => Err(WriteError::NotLeader),
        }
    }

    /// The hashes of the last compactions (HashKV at a compaction revision).
    pub fn compaction_hashes(&self) -> &compaction_hashes::CompactionHashes {
        &self.compaction_hashes
    }

    /// The space quota and its alarm.
    pub fn quota(&self) -> &Quota {
        &self.quota
    }

    /// The etag of the leader lease object as this node last wrote it (empty: not leading).
    pub fn lease_etag(&self) -> String {
        self.leader
            .load()
            .as_ref()
            .map(|l| l.etag())
            .unwrap_or_default()
    }

    /// Sets (or clears, when leadership is lost) the lease that linearizable reads rely on.
    pub fn set_leader(&self, leader: Option<leader::Leader>) {
        self.leader.store(leader.map(Arc::new));
    }

    /// Publishes a state whose next chunk goes at `next` (after its chunk is durable, after
    /// recovery, or on a follower after applying the leader's chunk).
    pub(crate) fn publish(&self, mut state: State, next: Position) {
        let before = self.state.load_full();
        if state.compact_revision > before.compact_revision {
            self.compaction_hashes
                .compacted(before.clone(), state.compact_revision);
        }
        state.inherit_shared(&before);
        state.set_published_after(before.revision);
        let rev = state.revision;
        self.state.store(Arc::new(state));
        self.next.send_replace(next);
        self.head.send_replace(rev);
    }

    /// The log position after the published state.
    pub fn next_position(&self) -> Position {
        *self.next.borrow()
    }

    /// Waits until the published state reaches `position`.
    pub async fn wait_for(&self, position: Position) {
        // The sender lives in `self`, so the channel cannot close while this waits.
        let _ = self.next.subscribe().wait_for(|p| *p >= position).await;
    }

    /// Hands a committed chunk to the followers' streams.
    pub(crate) fn committed(&self, chunk: Committed) {
        // Kept before it is sent: a follower that subscribes to the feed and then reads
        // the window sees every chunk in one or the other (or both, and skips the copy).
        self.remember(chunk.clone());
        // No receiver is not an error: a node without followers.
        let _ = self.feed.send(chunk);
    }

    /// Keeps a chunk this node applied (as leader or follower) in the recent window.
    pub(crate) fn remember(&self, chunk: Committed) {
        self.recent.lock().expect("recent chunks").push(chunk);
    }

    /// Forgets the recent window (the state was replaced by a reload).
    pub(crate) fn forget_recent(&self) {
        self.recent.lock().expect("recent chunks").clear();
    }

    /// The chunks this node applied from log position `next` on, if it still has them all.
    pub fn recent_from(&self, next: Position) -> Option<Vec<Committed>> {
        self.recent.lock().expect("recent chunks").from(next)
    }

    /// The chunks committed from now on.
    pub fn feed(&self) -> broadcast::Receiver<Committed> {
        self.feed.subscribe()
    }

    /// Counters of what the writer has written.
    pub fn written(&self) -> &Written {
        &self.written
    }

    /// A receiver that changes whenever a new state is published.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.head.subscribe()
    }

    /// Submits a change and waits until it is durable (or failed).
    pub async fn write(&self, request: Request) -> Result<Response, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.queue
            .send(Proposal { request, reply })
            .await
            .map_err(|_| WriteError::Shutdown)?;
        rx.await.map_err(|_| WriteError::Abandoned)?
    }
}

#[cfg(test)]
mod tests;
