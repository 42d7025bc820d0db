//! The leader's side of the peer protocol, served on every node's client port (a node that
//! is not leading refuses it, and the follower looks for the leader again).
//!
//! `Follow` sends a hello with the leader's head, then the chunks the follower is missing
//! that this node still has in memory (see `log::recent`), then every chunk the writer
//! commits, in order, as the bytes of the object it PUT. A follower that falls behind the
//! in-memory feed is sent a heartbeat instead, whose head tells it to read the rest from the
//! bucket: the leader never buffers without bound for a slow follower.

use super::{Member, Node};
use crate::api::errors;
use crate::log::Log;
use crate::proto::peer::{self as pb, follow_event::Event, peer_server::Peer};
use futures::Stream;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// How often an idle leader tells its followers it is there (no S3 request involved).
pub const HEARTBEAT: Duration = Duration::from_millis(500);

pub struct PeerService {
    node: Arc<Node>,
    log: Log,
    cluster_id: u64,
    term: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl PeerService {
    /// Streams end when `stop` is cancelled (server shutdown).
    pub fn new(
        node: Arc<Node>,
        log: Log,
        cluster_id: u64,
        term: Arc<AtomicU64>,
        stop: CancellationToken,
    ) -> Self {
        Self {
            node,
            log,
            cluster_id,
            term,
            stop,
        }
    }
}

type FollowStream = Pin<Box<dyn Stream<Item = Result<pb::FollowEvent, Status>> + Send + 'static>>;

fn event(e: Event) -> Result<pb::FollowEvent, Status> {
    Ok(pb::FollowEvent { event: Some(e) })
}

#[tonic::async_trait]
impl Peer for PeerService {
    type FollowStream = FollowStream;

    async fn follow(
        &self,
        request: Request<pb::FollowRequest>,
    ) -> Result<Response<Self::FollowStream>, Status> {
        if !self.node.is_leading() {
            return Err(errors::no_leader());
        }
        let r = request.into_inner();
        let member: Member = r
            .member
            .ok_or_else(|| Status::invalid_argument("a follower names itself"))?
            .into();
        // Subscribed before the head is read: every chunk after the hello's head is in
        // the feed (those before it the follower skips).
        let mut roles = self.node.role_changes();
        let mut feed = self.log.feed();
        let head = self.log.next_position();
        // What the follower missed, from memory when this node still has it all.
        let since = r.next.map(crate::log::layout::Position::from);
        let backlog = since.and_then(|n| self.log.recent_from(n));
        let hello = pb::Hello {
            leader: Some((&self.node.me).into()),
            term: self.term.load(Ordering::Relaxed),
            cluster_id: self.cluster_id,
            head: Some(head.into()),
            lease_etag: self.log.lease_etag(),
            backlog_from: since.filter(|_| backlog.is_some()).map(Into::into),
        };
        let (node, log, stop) = (self.node.clone(), self.log.clone(), self.stop.clone());
        let out = crate::api::lease::async_stream(move |tx| async move {
            if tx.send(event(Event::Hello(hello))).await.is_err() {
                return;
            }
            for c in backlog.into_iter().flatten() {
                let chunk = Event::Chunk(pb::Chunk {
                    position: Some(c.position.into()),
                    data: c.data,
                });
                if tx.send(event(chunk)).await.is_err() {
                    return;
                }
            }
            let id = member.id;
            let stream = node.follower_joined(member);
            let mut tick = tokio::time::interval(HEARTBEAT);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let heartbeat = |node: &Node, log: &Log| {
                Event::Heartbeat(pb::Heartbeat {
                    head: Some(log.next_position().into()),
                    members: node.members().iter().map(Into::into).collect(),
                    lease_etag: log.lease_etag(),
                })
            };
            loop {
                let e = tokio::select! {
                    c = feed.recv() => match c {
                        Ok(c) => Event::Chunk(pb::Chunk {
                            position: Some(c.position.into()),
                            data: c.data,
                        }),
                        // Fallen behind the feed: the head sends it to the bucket.
                        Err(RecvError::Lagged(_)) => heartbeat(&node, &log),
                        Err(RecvError::Closed) => break,
                    },
                    _ = tick.tick() => heartbeat(&node, &log),
                    // Stepped down (released, fenced, or lost the lease): the followers
                    // look for the leader again at once.
                    _ = roles.changed() => {
                        if node.is_leading() {
                            continue;
                        }
                        break;
                    }
                    _ = stop.cancelled() => break,
                    _ = tx.closed() => break,
                };
                if tx.send(event(e)).await.is_err() {
                    break;
                }
            }
            node.follower_left(id, stream);
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn read_index(
        &self,
        _request: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        if !self.node.is_leading() {
            return Err(errors::no_leader());
        }
        // Under a valid lease no successor exists, so every acknowledged write is at or
        // before the published position.
        self.log.linearizable_state()?;
        Ok(Response::new(pb::ReadIndexResponse {
            committed: Some(self.log.next_position().into()),
        }))
    }
}
