//! The single-writer lease: one object, `leader.netsy`, changed only with conditional
//! writes. It is a `.netsy` chunk-format file whose single record (key `netsy/leader`) holds
//! the lease as JSON: CRC-checked, and readable by the Go tooling like every other object.
//!
//! The holder counts itself leader until `sent + duration - margin` by its own monotonic
//! clock, where `sent` is when its last successful PUT was *sent*: a renewal of this object
//! (with `If-Match` on the etag it last wrote), or a chunk of the log. A busy leader's chunks
//! prove it alive, so it renews the object only after `3/5 × (duration - margin)` without
//! any successful PUT. A contender never trusts the holder's wall clock: it takes over (with
//! `If-Match`) only after seeing neither the lease object nor the log change for `duration +
//! margin` on its own monotonic clock, checked against the bucket at the end (the object's
//! etag, and no chunk at the position its log would take next), or at once when the holder
//! released it on shutdown. A follower sees both change through the leader's stream, so it
//! asks the bucket nothing while the leader is alive. Clock rates are assumed to agree
//! within the margin.
//!
//! The lease is not the fence for the log (the conditional chunk PUT is); it keeps a paused
//! ex-leader from acknowledging writes after a successor could have started, and it bounds
//! how long a deleted chunk key could be re-created by a stale writer (see ARCHITECTURE.md).

use super::layout::{chunk_key, Position, LEADER};
use crate::clock::now_ms;
use crate::store::{DynStore, PutMode, StoreError};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
// tokio's clock, so that tests drive every interleaving in virtual time (`start_paused`).
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Doc {
    holder: String,
    term: u64,
    duration_ms: u64,
    /// Bumped on every renewal so each write is unique (an idempotent retry is recognised).
    renewals: u64,
    /// Wall-clock time of the write, for humans reading the object.
    written_at_ms: i64,
    released: bool,
    /// The cluster this bucket's log belongs to (0 until the first holder recovered it).
    #[serde(default, skip_serializing_if = "is_zero")]
    cluster_id: u64,
    /// On release: how many followers were streaming from the holder. A node starting then
    /// leaves the lease to them (they are caught up; it would first have to replay).
    #[serde(default, skip_serializing_if = "is_zero")]
    followers: u32,
    /// Who holds it and where followers reach it (absent in leases written before followers).
    #[serde(flatten)]
    identity: Identity,
}

/// A node as other nodes see it: written into the lease it holds, so that followers find
/// the leader through the bucket.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub member_id: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_urls: Vec<String>,
}

/// The lease object as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseView {
    pub holder: String,
    pub term: u64,
    pub released: bool,
    /// On a released lease, how many followers the holder had when it let go.
    pub followers: u32,
    pub cluster_id: u64,
    pub identity: Identity,
    pub etag: String,
}

fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("leader lease lost to another writer")]
    Lost,
    #[error("leader lease object {LEADER} is unreadable: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("shutting down")]
    Shutdown,
}

/// Timing of the lease.
#[derive(Debug, Clone, Copy)]
pub struct LeaderTiming {
    pub duration: Duration,
    pub margin: Duration,
}

impl Default for LeaderTiming {
    fn default() -> Self {
        Self::of(Duration::from_secs(3))
    }
}

impl LeaderTiming {
    /// A lease of `duration` with the margin Netsy uses (an eighth of it).
    pub fn of(duration: Duration) -> Self {
        Self {
            duration,
            margin: duration / 8,
        }
    }

    /// How long a contender must see nothing change before it takes over.
    fn patience(&self) -> Duration {
        self.duration + self.margin
    }

    /// How long the holder goes without a successful PUT before it renews: three fifths of
    /// its validity, leaving two fifths (1.05 s with the defaults, two attempts cut off at
    /// d/5) to renew before it lapses. Later is cheaper: an idle leader's renewals (or the
    /// chunks of heartbeats that wait for them) are most of an idle cluster's S3 bill.
    fn renew_after(&self) -> Duration {
        (self.duration - self.margin) * 3 / 5
    }
}

/// What a contender has seen of the leader: the lease object's etag and the position of
/// its own log, and when either last changed. Fed by the leader's stream on a follower
/// (the etag in each heartbeat, every chunk applied) and by the contender's own reads of
/// the bucket; a change is dated when this node noticed it, never earlier.
pub struct Contention {
    seen: Mutex<Seen>,
    wake: Notify,
    /// The next log position of this node's state (None: no log, as in unit tests).
    log: Option<Box<dyn Fn() -> Position + Send + Sync>>,
}

struct Seen {
    etag: Option<String>,
    position: Option<Position>,
    changed: Instant,
    woken: bool,
}

/// Without a log, a contender cannot see the holder's chunks: only for taking a lease that
/// is free (a new bucket, a released lease; start-up bounds that wait well below the
/// lease), and for tests of the lease object alone.
impl Default for Contention {
    fn default() -> Self {
        Self::new(None)
    }
}

impl Contention {
    pub fn new(log: Option<Box<dyn Fn() -> Position + Send + Sync>>) -> Self {
        Self {
            seen: Mutex::new(Seen {
                etag: None,
                position: None,
                changed: Instant::now(),
                woken: false,
            }),
            wake: Notify::new(),
            log,
        }
    }

    /// Records the lease etag (if given) and the log's position; returns how long neither
    /// has changed.
    pub fn observe(&self, etag: Option<&str>) -> Duration {
        let position = self.log.as_ref().map(|f| f());
        let mut s = self.seen.lock().unwrap();
        let mut changed = position != s.position;
        s.position = position;
        if let Some(e) = etag {
            if s.etag.as_deref() != Some(e) {
                s.etag = Some(e.to_string());
                changed = true;
            }
        }
        if changed {
            s.changed = Instant::now();
        }
        s.changed.elapsed()
    }

    /// The leader was seen alive some other way (a chunk in the bucket this node has not
    /// applied yet).
    pub fn saw_life(&self) {
        self.seen.lock().unwrap().changed = Instant::now();
    }

    /// Makes a waiting contender read the lease object now (the leader's stream ended: it
    /// may have released the lease).
    pub fn wake(&self) {
        self.seen.lock().unwrap().woken = true;
        self.wake.notify_one();
    }

    fn take_woken(&self) -> bool {
        std::mem::take(&mut self.seen.lock().unwrap().woken)
    }

    /// The key of the chunk this node's log would take next.
    fn next_chunk(&self) -> Option<String> {
        self.log.as_ref().map(|f| chunk_key(f()))
    }
}

#[derive(Debug)]
struct Held {
    doc: Doc,
    etag: String,
    /// A renewal whose outcome is unknown (timed out or failed in flight): its renewal
    /// number and when it was first sent. If it landed, the lease counts from then.
    pending: Option<(u64, Instant)>,
}

/// A held leader lease. Cheap to clone; all clones see renewals.
#[derive(Debug, Clone)]
pub struct Leader {
    store: DynStore,
    timing: LeaderTiming,
    held: Arc<Mutex<Held>>,
    /// When the lease was acquired: the times below are nanoseconds since then (see
    /// [`Leader::ns`]), so validity is one atomic load, as every linearizable read checks it.
    base: Instant,
    /// Until when (see [`Leader::ns`]) this process may act as leader.
    valid_until: Arc<AtomicU64>,
    /// When (see [`Leader::ns`]) the last successful PUT that proves this holder alive (a
    /// renewal or a chunk) was sent.
    proved_at: Arc<AtomicU64>,
    /// Chunk PUTs in flight: one that lands proves the holder alive, so a renewal falling
    /// due meanwhile waits for it (while the lease has time to spare).
    chunks_in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

/// Counts a chunk PUT in flight for as long as it lives (see [`Leader::chunk_sent`]).
pub struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

const RECORD_KEY: &[u8] = b"netsy/leader";

fn encode(doc: &Doc) -> Bytes {
    let json = serde_json::to_vec_pretty(doc).expect("serialisable");
    let mut records = vec![crate::proto::netsy::Record {
        key: Bytes::from_static(RECORD_KEY),
        value: json.into(),
        leader_id: doc.holder.clone(),
        ..Default::default()
    }];
    let meta = crate::format::FileMeta {
        leader_id: doc.holder.clone(),
        ..Default::default()
    };
    crate::format::encode(crate::proto::netsy::FileKind::Chunk, &meta, &mut records)
        .expect("a small record always encodes")
        .into()
}

fn decode(data: &[u8]) -> Result<Doc, LeaderError> {
    let file =
        crate::format::decode(LEADER, data).map_err(|e| LeaderError::Corrupt(e.to_string()))?;
    let record = file
        .records
        .iter()
        .find(|r| r.key.as_ref() == RECORD_KEY)
        .ok_or_else(|| LeaderError::Corrupt("no lease record".into()))?;
    serde_json::from_slice(&record.value).map_err(|e| LeaderError::Corrupt(e.to_string()))
}

impl Leader {
    /// Reads the lease object: who holds it, if anyone ever did.
    pub async fn read(store: &DynStore) -> Result<Option<LeaseView>, LeaderError> {
        let obj = match store.get(LEADER).await {
            Ok(obj) => obj,
            Err(StoreError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let doc = decode(&obj.data)?;
        Ok(Some(LeaseView {
            holder: doc.holder,
            term: doc.term,
            released: doc.released,
            followers: doc.followers,
            cluster_id: doc.cluster_id,
            identity: doc.identity,
            etag: obj.etag,
        }))
    }

    /// Waits until this process holds the lease, then writes `identity` into it. A lease
    /// held by another is taken only once `contention` has seen nothing change for the
    /// lease's duration plus the margin, and the bucket confirms it (see the module doc).
    pub async fn acquire(
        store: DynStore,
        holder: &str,
        identity: &Identity,
        timing: LeaderTiming,
        shutdown: &CancellationToken,
        contention: &Contention,
    ) -> Result<Self, LeaderError> {
        let mut announced = false;
        let mut look = true;
        loop {
            if shutdown.is_cancelled() {
                return Err(LeaderError::Shutdown);
            }
            if !look {
                let quiet = contention.observe(None);
                if quiet < timing.patience() {
                    tokio::select! {
                        _ = tokio::time::sleep(timing.patience() - quiet) => {}
                        _ = contention.wake.notified() => {}
                        _ = shutdown.cancelled() => return Err(LeaderError::Shutdown),
                    }
                    look = contention.take_woken() || contention.observe(None) >= timing.patience();
                    continue;
                }
            }
            look = false;
            let current = match store.get(LEADER).await {
                Ok(obj) => Some(obj),
                Err(StoreError::NotFound { .. }) => None,
                Err(e) => return Err(e.into()),
            };
            let mut cluster_id = 0;
            let (term, mode) = match &current {
                None => (1, PutMode::Create),
                Some(obj) => {
                    let doc = decode(&obj.data)?;
                    cluster_id = doc.cluster_id;
                    let quiet = contention.observe(Some(&obj.etag));
                    if !doc.released && doc.holder != holder {
                        if quiet < timing.patience() {
                            if !announced {
                                tracing::info!(
                                    holder = %doc.holder,
                                    term = doc.term,
                                    "another writer holds the leader lease; waiting for it to stop or expire"
                                );
                                announced = true;
                            }
                            continue;
                        }
                        // The lease object has not changed for long enough: has the log?
                        if let Some(key) = contention.next_chunk() {
                            match store.get(&key).await {
                                Ok(_) => {
                                    // The holder writes chunks this node has not applied:
                                    // alive (the follower reads them from the bucket).
                                    tracing::info!(
                                        holder = %doc.holder,
                                        chunk = %key,
                                        "the holder wrote a chunk this node has not applied: waiting again"
                                    );
                                    contention.saw_life();
                                    continue;
                                }
                                Err(StoreError::NotFound { .. }) => {}
                                Err(e) => return Err(e.into()),
                            }
                        }
                    }
                    (doc.term + 1, PutMode::Update(obj.etag.clone()))
                }
            };
            let doc = Doc {
                holder: holder.to_string(),
                term,
                duration_ms: timing.duration.as_millis() as u64,
                renewals: 0,
                written_at_ms: now_ms(),
                released: false,
                cluster_id,
                followers: 0,
                identity: identity.clone(),
            };
            let sent = Instant::now();
            match store.put(LEADER, encode(&doc), mode).await {
                Ok(etag) => {
                    tracing::info!(holder, term, "acquired leader lease");
                    return Ok(Self {
                        store,
                        timing,
                        held: Arc::new(Mutex::new(Held {
                            doc,
                            etag,
                            pending: None,
                        })),
                        base: sent,
                        valid_until: Arc::new(AtomicU64::new(
                            (timing.duration - timing.margin).as_nanos() as u64,
                        )),
                        proved_at: Arc::new(AtomicU64::new(0)),
                        chunks_in_flight: Arc::default(),
                    });
                }
                Err(e) if e.is_conflict() => {
                    look = true;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub fn term(&self) -> u64 {
        self.held.lock().unwrap().doc.term
    }

    /// The cluster id the lease object carries (0: not yet recorded).
    pub fn cluster_id(&self) -> u64 {
        self.held.lock().unwrap().doc.cluster_id
    }

    /// Records the cluster id in the lease object from the next renewal on.
    pub fn set_cluster_id(&self, id: u64) {
        self.held.lock().unwrap().doc.cluster_id = id;
    }

    /// Whether this process may still acknowledge writes.
    pub fn is_valid(&self) -> bool {
        self.ns(Instant::now()) < self.valid_until.load(Ordering::Acquire)
    }

    /// Nanoseconds from the acquisition to `t` (0 before it).
    fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64
    }

    /// The etag of the lease object as this holder last wrote it.
    pub fn etag(&self) -> String {
        self.held.lock().unwrap().etag.clone()
    }

    /// A chunk PUT sent at `sent` succeeded while the lease was valid. Contenders watch the
    /// log as well as the lease object, so the chunk shows them this holder alive as a
    /// renewal would: the lease counts from it, and no renewal is needed for a while.
    pub fn proved_alive(&self, sent: Instant) {
        let until = self.ns(sent + self.timing.duration - self.timing.margin);
        self.valid_until.fetch_max(until, Ordering::AcqRel);
        self.proved_at.fetch_max(self.ns(sent), Ordering::AcqRel);
    }

    /// Renews once. A conflict means another writer took the lease.
    ///
    /// Each attempt is bounded (a stalled request must not outlive the lease); an attempt
    /// whose outcome is unknown may have landed, so a later conflict is checked against the
    /// object before the lease is given up: finding our own renewal there means it is ours.
    pub async fn renew(&self) -> Result<(), LeaderError> {
        let now = Instant::now();
        let (doc, etag, first_sent) = {
            let mut held = self.held.lock().unwrap();
            let mut doc = held.doc.clone();
            doc.renewals += 1;
            doc.written_at_ms = now_ms();
            let first_sent = match held.pending {
                Some((n, at)) if n == doc.renewals => at,
                _ => now,
            };
            held.pending = Some((doc.renewals, first_sent));
            (doc, held.etag.clone(), first_sent)
        };
        let attempt = self.store.put(LEADER, encode(&doc), PutMode::Update(etag));
        let result = match tokio::time::timeout(self.timing.duration / 5, attempt).await {
            Ok(r) => r,
            Err(_) => {
                return Err(LeaderError::Store(StoreError::Transient {
                    key: LEADER.into(),
                    message: "renewal attempt timed out".into(),
                }))
            }
        };
        let etag = match result {
            Ok(etag) => etag,
            Err(e) if e.is_conflict() => match self.store.get(LEADER).await {
                Ok(obj) => match decode(&obj.data) {
                    Ok(found)
                        if found.holder == doc.holder
                            && found.term == doc.term
                            && found.renewals == doc.renewals =>
                    {
                        tracing::info!(
                            renewals = doc.renewals,
                            "an earlier renewal attempt had landed; keeping the lease"
                        );
                        obj.etag
                    }
                    _ => return Err(LeaderError::Lost),
                },
                Err(e) => return Err(e.into()),
            },
            Err(e) => return Err(e.into()),
        };
        let mut held = self.held.lock().unwrap();
        held.doc = doc;
        held.etag = etag;
        held.pending = None;
        // Counted from the first attempt: a contender may have seen that one land.
        self.valid_until.fetch_max(
            self.ns(first_sent + self.timing.duration - self.timing.margin),
            Ordering::AcqRel,
        );
        self.proved_at
            .fetch_max(self.ns(first_sent), Ordering::AcqRel);
        Ok(())
    }

    /// When the holder will renew unless a PUT proves it alive before: [`renew_after`]
    /// after the last proof.
    ///
    /// [`renew_after`]: LeaderTiming::renew_after
    pub fn proof_due(&self) -> Instant {
        self.base
            + Duration::from_nanos(self.proved_at.load(Ordering::Acquire))
            + self.timing.renew_after()
    }

    /// A chunk PUT is on its way; in flight until the guard is dropped.
    pub fn chunk_sent(&self) -> InFlight {
        self.chunks_in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.chunks_in_flight.clone())
    }

    /// How long this holder stays valid without another proof of life.
    fn valid_for(&self) -> Duration {
        Duration::from_nanos(
            self.valid_until
                .load(Ordering::Acquire)
                .saturating_sub(self.ns(Instant::now())),
        )
    }

    /// Renews until cancelled or lost, whenever no successful PUT (renewal or chunk) was
    /// sent for [`LeaderTiming::renew_after`]. Transient failures are retried while the
    /// lease is still valid; returns why it stopped.
    pub async fn keep_renewed(&self, stop: CancellationToken) -> LeaderError {
        loop {
            let due = self.proof_due();
            if Instant::now() < due {
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => {}
                    _ = stop.cancelled() => return LeaderError::Shutdown,
                }
                continue;
            }
            if stop.is_cancelled() {
                return LeaderError::Shutdown;
            }
            // A chunk on its way will prove it alive when it lands (heartbeats are cut just
            // before a renewal would fall due, to ride on it): wait for it, while the lease
            // leaves room for a renewal attempt after all.
            if self.chunks_in_flight.load(Ordering::Acquire) > 0
                && self.valid_for() > self.timing.duration / 5
            {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                    _ = stop.cancelled() => return LeaderError::Shutdown,
                }
                continue;
            }
            loop {
                match self.renew().await {
                    Ok(()) => break,
                    Err(LeaderError::Lost) => return LeaderError::Lost,
                    Err(e) => {
                        tracing::warn!(error = %e, "leader lease renewal failed; retrying");
                        if !self.is_valid() {
                            return e;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
    }

    /// Marks the lease released so a successor takes over at once, saying how many
    /// `followers` were streaming from this node.
    pub async fn release(&self, followers: usize) -> Result<(), LeaderError> {
        let (mut doc, etag) = {
            let held = self.held.lock().unwrap();
            (held.doc.clone(), held.etag.clone())
        };
        doc.released = true;
        doc.followers = u32::try_from(followers).unwrap_or(u32::MAX);
        doc.written_at_ms = now_ms();
        match self
            .store
            .put(LEADER, encode(&doc), PutMode::Update(etag))
            .await
        {
            Ok(_) => {
                self.valid_until.store(0, Ordering::Release);
                tracing::info!(term = doc.term, "released leader lease");
                Ok(())
            }
            Err(e) if e.is_conflict() => Err(LeaderError::Lost),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::ObjectStore;

    /// The shipped timing: the tests run in tokio's virtual time (`start_paused`), so
    /// waiting out a lease costs nothing and every deadline falls where the code puts it.
    fn timing() -> LeaderTiming {
        LeaderTiming::default()
    }

    #[tokio::test(start_paused = true)]
    async fn second_writer_waits_then_takes_over_after_release() {
        let store: DynStore = Arc::new(MemoryStore::new());
        let stop = CancellationToken::new();
        let a = Leader::acquire(
            store.clone(),
            "a",
            &Identity::default(),
            timing(),
            &stop,
            &Contention::default(),
        )
        .await
        .unwrap();
        assert!(a.is_valid());
        let store2 = store.clone();
        let stop2 = stop.clone();
        let b = tokio::spawn(async move {
            Leader::acquire(
                store2,
                "b",
                &Identity::default(),
                timing(),
                &stop2,
                &Contention::default(),
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        a.renew().await.unwrap();
        assert!(!b.is_finished(), "b must wait while a renews");
        a.release(0).await.unwrap();
        assert!(!a.is_valid());
        let b = b.await.unwrap().unwrap();
        assert_eq!(b.term(), 2);
        // The old holder's renewal now conflicts.
        assert!(matches!(a.renew().await, Err(LeaderError::Lost)));
    }

    #[tokio::test(start_paused = true)]
    async fn takes_over_an_abandoned_lease_after_it_expires() {
        let store: DynStore = Arc::new(MemoryStore::new());
        let stop = CancellationToken::new();
        let a = Leader::acquire(
            store.clone(),
            "a",
            &Identity::default(),
            timing(),
            &stop,
            &Contention::default(),
        )
        .await
        .unwrap();
        let started = Instant::now();
        let b = Leader::acquire(
            store.clone(),
            "b",
            &Identity::default(),
            timing(),
            &stop,
            &Contention::default(),
        )
        .await
        .unwrap();
        assert!(
            started.elapsed() >= timing().duration,
            "took over too early"
        );
        assert_eq!(b.term(), 2);
        assert!(!a.is_valid());
        assert!(matches!(a.renew().await, Err(LeaderError::Lost)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_that_landed_but_was_not_answered_keeps_the_lease() {
        use crate::store::memory::{Fault, Op};
        let mem = Arc::new(MemoryStore::new());
        let store: DynStore = mem.clone();
        let stop = CancellationToken::new();
        let a = Leader::acquire(
            store.clone(),
            "a",
            &Identity::default(),
            timing(),
            &stop,
            &Contention::default(),
        )
        .await
        .unwrap();
        mem.inject(Op::Put, 1, Fault::ApplyThenFail);
        assert!(matches!(a.renew().await, Err(LeaderError::Store(_))));
        // The retry conflicts with our own landed renewal, which is recognised.
        a.renew().await.unwrap();
        assert!(a.is_valid());
        a.renew().await.unwrap();
        assert_eq!(
            decode(&store.get(LEADER).await.unwrap().data)
                .unwrap()
                .renewals,
            2
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_renewal_attempt_is_cut_short_inside_the_lease() {
        use crate::store::memory::{Fault, Op};
        let mem = Arc::new(MemoryStore::new());
        let store: DynStore = mem.clone();
        let stop = CancellationToken::new();
        let a = Leader::acquire(
            store.clone(),
            "a",
            &Identity::default(),
            timing(),
            &stop,
            &Contention::default(),
        )
        .await
        .unwrap();
        mem.inject(Op::Put, 1, Fault::Delay(Duration::from_secs(30)));
        let started = Instant::now();
        assert!(a.renew().await.is_err());
        assert!(
            started.elapsed() < timing().duration / 2,
            "the attempt was not bounded"
        );
        a.renew().await.unwrap();
        assert!(a.is_valid());
    }

    /// A contender whose log position is an atomic the test moves, as a follower's moves
    /// when it applies a chunk.
    fn contention_at(position: &Arc<std::sync::atomic::AtomicI64>) -> Contention {
        let p = position.clone();
        Contention::new(Some(Box::new(move || {
            Position::new(p.load(Ordering::SeqCst), 0)
        })))
    }

    async fn renewals(store: &MemoryStore) -> u64 {
        decode(&ObjectStore::get(store, LEADER).await.unwrap().data)
            .unwrap()
            .renewals
    }

    #[tokio::test(start_paused = true)]
    async fn chunks_keep_a_holder_alive_without_renewals_and_contenders_wait() {
        let mem = Arc::new(MemoryStore::new());
        let store: DynStore = mem.clone();
        let stop = CancellationToken::new();
        let timing = LeaderTiming::of(Duration::from_millis(800));
        let a = Leader::acquire(
            store.clone(),
            "a",
            &Identity::default(),
            timing,
            &stop,
            &Contention::default(),
        )
        .await
        .unwrap();
        let renewer = {
            let (a, stop) = (a.clone(), stop.clone());
            tokio::spawn(async move { a.keep_renewed(stop).await })
        };
        let position = Arc::new(std::sync::atomic::AtomicI64::new(2));
        let b = {
            let (store, stop, position) = (store.clone(), stop.clone(), position.clone());
            tokio::spawn(async move {
                let contention = contention_at(&position);
                let l =
                    Leader::acquire(store, "b", &Identity::default(), timing, &stop, &contention)
                        .await;
                (l, Instant::now())
            })
        };
        // The holder commits a chunk every 100 ms; the follower applies each.
        for _ in 0..25 {
            let sent = Instant::now();
            let p = position.load(Ordering::SeqCst);
            store
                .put(
                    &chunk_key(Position::new(p, 0)),
                    Bytes::from_static(b"chunk"),
                    PutMode::Create,
                )
                .await
                .unwrap();
            a.proved_alive(sent);
            position.store(p + 1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(a.is_valid());
        }
        assert!(!b.is_finished(), "b took over from a holder writing chunks");
        assert_eq!(renewals(&mem).await, 0, "a busy holder renewed its lease");
        // The holder goes quiet (its renewer too, as in a crash): b takes over, and only
        // once a's lease has run out by a's own clock.
        stop.cancel();
        let _ = renewer.await;
        let quiet = Instant::now();
        let stop2 = CancellationToken::new();
        let (b, at) = {
            let contention = contention_at(&position);
            let l = Leader::acquire(
                store.clone(),
                "b",
                &Identity::default(),
                timing,
                &stop2,
                &contention,
            )
            .await
            .unwrap();
            (l, Instant::now())
        };
        assert!(at.duration_since(quiet) >= timing.patience());
        assert!(!a.is_valid(), "b took over while a could still acknowledge");
        assert_eq!(b.term(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_falling_due_waits_for_a_chunk_in_flight() {
        let mem = Arc::new(MemoryStore::new());
        let store: DynStore = mem.clone();
        let stop = CancellationToken::new();
        let timing = LeaderTiming::of(Duration::from_millis(800));
        let a = Leader::acquire(
            store.clone(),
            "a",
            &Identity::default(),
            timing,
            &stop,
            &Contention::default(),
        )
        .await
        .unwrap();
        let renewer = {
            let (a, stop) = (a.clone(), stop.clone());
            tokio::spawn(async move { a.keep_renewed(stop).await })
        };
        // A chunk sent 10 ms before the renewal is due (420 ms) lands 100 ms later: no
        // renewal, its landing is the proof.
        tokio::time::sleep(Duration::from_millis(410)).await;
        let sent = Instant::now();
        let chunk = a.chunk_sent();
        tokio::time::sleep(Duration::from_millis(100)).await;
        a.proved_alive(sent);
        drop(chunk);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(renewals(&mem).await, 0);
        // One that does not land: the renewal goes out once only d/5 of validity is left
        // (validity 700 ms from the chunk's send at 410 ms, so at 950 ms).
        let _stuck = a.chunk_sent();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(renewals(&mem).await, 1);
        assert!(a.is_valid());
        stop.cancel();
        let _ = renewer.await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_holder_renews_after_three_fifths_of_its_validity() {
        let mem = Arc::new(MemoryStore::new());
        let store: DynStore = mem.clone();
        let stop = CancellationToken::new();
        let timing = LeaderTiming::of(Duration::from_millis(800));
        let a = Leader::acquire(
            store.clone(),
            "a",
            &Identity::default(),
            timing,
            &stop,
            &Contention::default(),
        )
        .await
        .unwrap();
        let renewer = {
            let (a, stop) = (a.clone(), stop.clone());
            tokio::spawn(async move { a.keep_renewed(stop).await })
        };
        // renew_after = 3/5 × (800 - 100) = 420 ms: about four renewals in 2 s, none early.
        tokio::time::sleep(Duration::from_millis(2000)).await;
        let n = renewals(&mem).await;
        assert_eq!(n, 4, "{n} renewals in 2 s");
        assert!(a.is_valid());
        stop.cancel();
        let _ = renewer.await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_contender_behind_the_log_waits_for_what_the_bucket_holds() {
        let mem = Arc::new(MemoryStore::new());
        let store: DynStore = mem.clone();
        let stop = CancellationToken::new();
        let timing = LeaderTiming::of(Duration::from_millis(800));
        let a = Leader::acquire(
            store.clone(),
            "a",
            &Identity::default(),
            timing,
            &stop,
            &Contention::default(),
        )
        .await
        .unwrap();
        // b's stream is cut: it does not see a's chunks. a writes one at b's next position
        // late in b's wait, then goes quiet.
        let position = Arc::new(std::sync::atomic::AtomicI64::new(2));
        let b = {
            let (store, stop, position) = (store.clone(), stop.clone(), position.clone());
            tokio::spawn(async move {
                let contention = contention_at(&position);
                let l =
                    Leader::acquire(store, "b", &Identity::default(), timing, &stop, &contention)
                        .await;
                (l.unwrap(), Instant::now())
            })
        };
        tokio::time::sleep(Duration::from_millis(700)).await;
        let sent = Instant::now();
        store
            .put(
                &chunk_key(Position::new(2, 0)),
                Bytes::from_static(b"chunk"),
                PutMode::Create,
            )
            .await
            .unwrap();
        a.proved_alive(sent);
        // b finds the chunk at its final check and waits again; its follower reads it from
        // the bucket a little later.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(!b.is_finished(), "b took over past a chunk it had not seen");
        position.store(3, Ordering::SeqCst);
        let (b, _) = b.await.unwrap();
        assert!(!a.is_valid(), "b took over while a could still acknowledge");
        assert_eq!(b.term(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_woken_contender_takes_a_released_lease_at_once() {
        let store: DynStore = Arc::new(MemoryStore::new());
        let stop = CancellationToken::new();
        let timing = LeaderTiming::of(Duration::from_secs(10));
        let a = Leader::acquire(
            store.clone(),
            "a",
            &Identity::default(),
            timing,
            &stop,
            &Contention::default(),
        )
        .await
        .unwrap();
        let contention = Arc::new(Contention::default());
        let b = {
            let (store, stop, contention) = (store.clone(), stop.clone(), contention.clone());
            tokio::spawn(async move {
                Leader::acquire(store, "b", &Identity::default(), timing, &stop, &contention).await
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        a.release(0).await.unwrap();
        let released = Instant::now();
        contention.wake();
        let b = b.await.unwrap().unwrap();
        assert!(released.elapsed() < Duration::from_secs(1));
        assert_eq!(b.term(), 2);
    }
}
