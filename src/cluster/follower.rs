//! A follower's state kept up with the leader's: chunks from the `Follow` stream, the
//! bucket for whatever the stream did not bring.
//!
//! The stream is only a fast path. Every chunk it brings is the exact object the leader
//! PUT, so applying it is the replay of one chunk, checked as recovery checks it (format,
//! cluster, position, every record against the state). When the leader's head is ahead of
//! this node (a hello, a heartbeat, or a chunk past the next position), the missing chunks
//! are read from the bucket by position; a chunk missing there too was removed by clean-up
//! after a snapshot, and the node reloads from the bucket.

use super::{LeaderLink, Member, Node, Role};
use crate::format;
use crate::log::layout::{self, chunk_key, Position};
use crate::log::leader::Leader;
use crate::log::recovery::{self, apply_records, check_cluster, chunk_position, RecoveryError};
use crate::log::{Committed, Log};
use crate::proto::peer::{self as pb, follow_event::Event};
use crate::store::{DynStore, StoreError};
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a stream may stay silent (the leader sends a heartbeat every
/// [`super::peer::HEARTBEAT`]) before the leader is presumed gone: a paused leader keeps
/// its connections open. Short, because a chunk the leader had in flight when it stopped
/// is only seen in the bucket once the follower looks there, and a contender dates that
/// sign of life from when it saw it: a paused leader is replaced about SILENCE plus the
/// lease's patience after it stopped. Too short costs little: a follower that wrongly
/// presumes a live leader gone reads the bucket and reconnects, and does not take over
/// while the leader's chunks or renewals keep coming.
const SILENCE: Duration = Duration::from_millis(1250);

/// How long a follower without a stream reads the bucket before it tries the leader again.
const TAIL_BUDGET: Duration = Duration::from_secs(1);

/// Between attempts to find and reach a leader.
const RETRY: Duration = Duration::from_millis(500);

/// Looks at the bucket after a stream broke, for a chunk its leader landed as it died.
const LATE_LOOKS: usize = 3;
const LATE_LOOK_EVERY: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
    #[error("{0}")]
    Protocol(String),
    /// The object at the next position does not follow this node's last chunk: one a
    /// failed pipelined commit left behind, which the leader deletes before it writes there.
    #[error("{0} does not follow the last chunk applied")]
    NotNext(String),
}

impl From<StoreError> for FollowError {
    fn from(e: StoreError) -> Self {
        Self::Recovery(e.into())
    }
}

impl From<format::FormatError> for FollowError {
    fn from(e: format::FormatError) -> Self {
        Self::Recovery(e.into())
    }
}

/// Applies the chunk object `data`, which the leader committed at `position`, to the
/// published state.
pub fn apply_chunk(
    log: &Log,
    key: &str,
    position: Position,
    data: Bytes,
    cluster_id: u64,
) -> Result<(), FollowError> {
    let file = format::decode(key, &data)?;
    check_cluster(key, file.header.cluster_id, cluster_id)?;
    let (at, after) = chunk_position(key, position.seq, &file)?;
    if at != position {
        return Err(FollowError::Protocol(format!(
            "{key} holds log position {at}, expected {position}"
        )));
    }
    let mut state = (*log.state()).clone();
    if !recovery::continues(&file.header, state.chain.last) {
        return Err(FollowError::NotNext(key.to_string()));
    }
    apply_records(&mut state, key, file.records)?;
    state.chain.applied(format::crc64(&data), after.seq == 0);
    log.publish(state, after);
    log.remember(Committed { position, data });
    Ok(())
}

fn applied(source: &str) {
    crate::metrics::METRICS
        .follower_applied
        .with_label_values(&[source])
        .inc();
}

/// Reads from the bucket every chunk from the published state's next position on, until
/// one is missing (or `budget` is spent). Returns whether the bucket had no more (true) or
/// the node must reload because `target` is not reached yet and the next chunk is gone
/// (false).
async fn read_chunks(
    log: &Log,
    store: &DynStore,
    cluster_id: u64,
    target: Option<Position>,
    budget: Option<Duration>,
) -> Result<bool, FollowError> {
    let started = tokio::time::Instant::now();
    loop {
        let next = log.next_position();
        if target.is_some_and(|t| next >= t) {
            return Ok(true);
        }
        if budget.is_some_and(|b| started.elapsed() >= b) {
            return Ok(true);
        }
        let key = chunk_key(next);
        match store.get(&key).await {
            Ok(obj) => match apply_chunk(log, &key, next, obj.data, cluster_id) {
                Ok(()) => applied("bucket"),
                // Not written yet, as far as the log goes.
                Err(FollowError::NotNext(_)) => return Ok(target.is_none()),
                Err(e) => return Err(e),
            },
            Err(StoreError::NotFound { .. }) => return Ok(target.is_none()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads the bucket's newest chunks while no leader streams them; says when it found any.
/// Each restarts the contenders' wait, from now: their own look would notice the new
/// position only when it wakes, a whole lease later than it moved.
async fn tail(node: &Node, log: &Log, store: &DynStore, cluster_id: u64) {
    let before = log.next_position();
    if let Err(e) = read_chunks(log, store, cluster_id, None, Some(TAIL_BUDGET)).await {
        tracing::warn!(error = %e, "reading the bucket's newest chunks failed");
    }
    let after = log.next_position();
    if after != before {
        node.contention.observe(None);
        tracing::info!(from = %before, to = %after, "read chunks no leader streamed");
    }
}

/// Replaces the published state with a full replay of the bucket.
pub async fn reload(log: &Log, store: &DynStore, cluster_id: u64) -> Result<(), FollowError> {
    let rec = recovery::recover_cluster(store.as_ref(), cluster_id).await?;
    tracing::info!(
        revision = rec.state.revision,
        next = %rec.next,
        "reloaded from the bucket"
    );
    log.forget_recent();
    log.publish(rec.state, rec.next);
    Ok(())
}

/// Brings the state up to the head of the bucket (a node that just took the lease): every
/// chunk after the next position, or a full reload if a snapshot newer than the state
/// exists (its chunks may be gone). Returns the newest snapshot's revision.
pub async fn catch_up(
    log: &Log,
    store: &DynStore,
    cluster_id: u64,
) -> Result<Option<i64>, FollowError> {
    read_chunks(log, store, cluster_id, None, None).await?;
    let newest = store
        .list(layout::SNAPSHOTS, None)
        .await?
        .into_iter()
        .filter_map(|m| layout::parse_snapshot_key(&m.key))
        .max();
    if newest.is_some_and(|s| s > log.state().revision) {
        tracing::info!(
            snapshot = newest,
            revision = log.state().revision,
            "a snapshot is newer than this node's state; reloading"
        );
        reload(log, store, cluster_id).await?;
    }
    Ok(newest)
}

/// Brings the state to the leader's `head`: from the bucket, or by a reload when the
/// chunks are gone.
async fn fill_to(
    log: &Log,
    store: &DynStore,
    cluster_id: u64,
    head: Position,
) -> Result<(), FollowError> {
    if log.next_position() >= head {
        return Ok(());
    }
    if !read_chunks(log, store, cluster_id, Some(head), None).await? {
        tracing::info!(next = %log.next_position(), leader_head = %head, "the next chunk is no longer in the bucket; reloading");
        reload(log, store, cluster_id).await?;
    }
    Ok(())
}

/// Follows whoever leads until `stop`: finds the leader in the lease object, streams its
/// chunks, and starts over when the stream ends or goes silent.
pub async fn run(
    node: Arc<Node>,
    log: Log,
    store: DynStore,
    cluster_id: u64,
    term: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let mut last_error = String::new();
    let mut quick = 0;
    while !stop.is_cancelled() {
        let outcome = follow_once(&node, &log, &store, cluster_id, &term, &stop).await;
        if !matches!(**node.role.load(), Role::NoLeader) {
            // It was following: a new series of attempts.
            quick = 0;
            node.set_role(Role::NoLeader);
            // The stream ended: the leader may have released the lease on its way out.
            node.contention.wake();
        }
        if let Err(e) = outcome {
            // Said once per distinct reason: a leader that stays away is not news each time.
            let text = e.to_string();
            if text != last_error {
                tracing::warn!(error = %text, "not following a leader");
                last_error = text;
            }
            // A handover (the lease released, or already taken by a newer term): the old
            // leader landed everything before it let go, and its successor streams. Look
            // for it again at once, for a second at most, rather than spend the tail and
            // the late looks below (up to four seconds while the successor writes) first.
            if quick < QUICK_RETRIES && handed_over(&store, &term).await {
                if quick == 0 {
                    // A released lease is this node's to take too.
                    node.contention.wake();
                }
                quick += 1;
                tokio::select! {
                    _ = tokio::time::sleep(QUICK_RETRY) => {}
                    _ = stop.cancelled() => return,
                }
                continue;
            }
            // Unreachable is not gone: a leader cut off from this node may still write to
            // the bucket, which this node then reads. For a while only, then it tries the
            // leader again: read one GET at a time, the bucket may never run out under a
            // busy leader, whose stream (and its backlog) would bring the rest at once.
            tail(&node, &log, &store, cluster_id).await;
            // A leader killed mid-PUT may land its last chunk a moment after its stream
            // broke. Finding it at once (rather than after the next attempt to reach the
            // leader, which a node restarted on its port keeps waiting for a second) starts
            // the contenders' wait from then: a late find restarts it, a whole lease later.
            for _ in 0..LATE_LOOKS {
                tokio::select! {
                    _ = tokio::time::sleep(LATE_LOOK_EVERY) => {}
                    _ = stop.cancelled() => return,
                }
                tail(&node, &log, &store, cluster_id).await;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = stop.cancelled() => {}
        }
    }
}

/// Between quick attempts to find a successor after a handover, and how many.
const QUICK_RETRY: Duration = Duration::from_millis(50);
const QUICK_RETRIES: usize = 20;

/// Whether the lease shows a handover: released by its holder, or held under a newer term
/// than the leader this node followed.
async fn handed_over(store: &DynStore, term: &AtomicU64) -> bool {
    match Leader::read(store).await {
        Ok(Some(view)) => view.released || view.term > term.load(Ordering::Relaxed),
        _ => false,
    }
}

async fn follow_once(
    node: &Arc<Node>,
    log: &Log,
    store: &DynStore,
    cluster_id: u64,
    term: &AtomicU64,
    stop: &CancellationToken,
) -> Result<(), FollowError> {
    let view = Leader::read(store)
        .await
        .map_err(|e| FollowError::Protocol(e.to_string()))?
        .ok_or_else(|| FollowError::Protocol("no node has held the leader lease yet".into()))?;
    if view.released {
        return Err(FollowError::Protocol(
            "the leader released its lease".into(),
        ));
    }
    if view.identity.member_id == node.me.id {
        return Err(FollowError::Protocol(
            "the lease names this node (its previous run, or this run before it stepped down); waiting for it to expire".into(),
        ));
    }
    let url = view.identity.client_urls.first().ok_or_else(|| {
        FollowError::Protocol(format!(
            "the lease holder {} advertises no client URL (a Netsy without followers?)",
            view.holder
        ))
    })?;
    let channel = super::forward::connect(url, &node.peer_tls)
        .await
        .map_err(|e| FollowError::Protocol(format!("connecting to the leader at {url}: {e}")))?;
    let mut client = pb::peer_client::PeerClient::new(channel.clone());
    let request = pb::FollowRequest {
        member: Some((&node.me).into()),
        next: Some(log.next_position().into()),
    };
    let mut stream = tokio::select! {
        r = tokio::time::timeout(SILENCE, client.follow(request)) => r
            .map_err(|_| FollowError::Protocol(format!("the leader at {url} did not answer within {SILENCE:?}")))?
            .map_err(|e| FollowError::Protocol(format!("{url}: {}", e.message())))?
            .into_inner(),
        _ = stop.cancelled() => return Ok(()),
    };
    let mut linked = false;
    let mut awaiting: Option<(Arc<LeaderLink>, Position)> = None;
    loop {
        let message = tokio::select! {
            m = tokio::time::timeout(SILENCE, stream.message()) => m,
            _ = stop.cancelled() => return Ok(()),
        };
        let event = match message {
            Err(_) => {
                return Err(FollowError::Protocol(format!(
                    "the leader at {url} went silent for {SILENCE:?}"
                )))
            }
            Ok(Err(e)) => {
                return Err(FollowError::Protocol(format!(
                    "stream from {url}: {}",
                    e.message()
                )))
            }
            Ok(Ok(None)) => return Err(FollowError::Protocol(format!("{url} ended the stream"))),
            Ok(Ok(Some(m))) => m.event,
        };
        match event {
            Some(Event::Hello(h)) => {
                if cluster_id != 0 && h.cluster_id != 0 && h.cluster_id != cluster_id {
                    return Err(FollowError::Protocol(format!(
                        "the leader at {url} serves cluster {:016x}, this node cluster {cluster_id:016x}",
                        h.cluster_id
                    )));
                }
                term.store(h.term, Ordering::Relaxed);
                node.contention.observe(Some(&h.lease_etag));
                let member: Member = h.leader.unwrap_or_default().into();
                // The chunks from backlog_from on come next in the stream.
                let head: Position = h.head.unwrap_or_default().into();
                let from_bucket = h.backlog_from.map_or(head, |b| head.min(b.into()));
                fill_to(log, store, cluster_id, from_bucket).await?;
                let link = Arc::new(LeaderLink {
                    member,
                    term: h.term,
                    channel: channel.clone(),
                });
                // Following (ready, forwarding, serving linearizable reads) once caught up
                // with the hello's head: after the backlog, if any.
                if log.next_position() >= head {
                    node.set_role(Role::Following(link));
                } else {
                    awaiting = Some((link, head));
                }
                linked = true;
            }
            Some(Event::Chunk(c)) if linked => {
                let position: Position = c.position.unwrap_or_default().into();
                let next = log.next_position();
                if position < next {
                    continue;
                }
                if position > next {
                    fill_to(log, store, cluster_id, position).await?;
                }
                if log.next_position() == position {
                    apply_chunk(log, &chunk_key(position), position, c.data, cluster_id)?;
                    applied("stream");
                }
            }
            Some(Event::Heartbeat(h)) if linked => {
                node.set_members(h.members.into_iter().map(Member::from).collect());
                fill_to(log, store, cluster_id, h.head.unwrap_or_default().into()).await?;
                node.contention.observe(Some(&h.lease_etag));
            }
            _ => {
                return Err(FollowError::Protocol(format!(
                    "{url} sent a stream that does not start with a hello"
                )))
            }
        }
        if awaiting
            .as_ref()
            .is_some_and(|(_, head)| log.next_position() >= *head)
        {
            if let Some((link, _)) = awaiting.take() {
                node.set_role(Role::Following(link));
            }
        }
    }
}
