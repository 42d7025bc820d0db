//! Several nodes on one bucket: one leader writes, every other node follows and serves.
//!
//! There is no membership protocol and no quorum of nodes: the bucket is the quorum. The
//! node holding the leader lease (`log::leader`) runs the writer and writes its identity
//! (member id, name, client URLs) into the lease object, so every other node finds it
//! through the bucket. A follower:
//!
//! - keeps its own copy of the state, fed by the leader's `Follow` stream (each committed
//!   chunk's bytes, pushed once its PUT succeeded) and, when it misses one, by reading the
//!   chunk from the bucket (its key is a pure function of the log position), or by a full
//!   reload when clean-up removed it: the bucket stays the truth;
//! - answers serializable reads and watches from that state, exactly as the leader does;
//! - answers a linearizable read after confirming the leader's committed position
//!   (`ReadIndex`, one round trip for every read waiting at that moment) and waiting until
//!   its state reaches it;
//! - forwards writes and lease calls to the leader and passes the answers through, each
//!   write only once its own state holds it (read-your-writes on the same node);
//! - contends for the lease all along, and on winning it catches up from the bucket and
//!   starts writing.
//!
//! Nothing here may acknowledge a write: only the leader's writer does, after its chunk PUT.

pub mod follower;
pub mod forward;
pub mod peer;
pub mod role;

use crate::log::layout::Position;
use crate::proto::peer as pb;
use arc_swap::ArcSwap;
use dashmap::DashMap;
use std::sync::Arc;
use tonic::transport::Channel;

/// A node as etcd's MemberList reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub client_urls: Vec<String>,
}

impl From<&Member> for pb::Member {
    fn from(m: &Member) -> Self {
        pb::Member {
            id: m.id,
            name: m.name.clone(),
            client_urls: m.client_urls.clone(),
        }
    }
}

/// The lease object names its holder this way.
impl From<&Member> for crate::log::leader::Identity {
    fn from(m: &Member) -> Self {
        Self {
            member_id: m.id,
            name: m.name.clone(),
            client_urls: m.client_urls.clone(),
        }
    }
}

impl From<pb::Member> for Member {
    fn from(m: pb::Member) -> Self {
        Member {
            id: m.id,
            name: m.name,
            client_urls: m.client_urls,
        }
    }
}

impl From<Position> for pb::Position {
    fn from(p: Position) -> Self {
        pb::Position {
            revision: p.revision,
            seq: p.seq,
        }
    }
}

impl From<pb::Position> for Position {
    fn from(p: pb::Position) -> Self {
        Position::new(p.revision, p.seq)
    }
}

/// The leader a follower is connected to.
#[derive(Debug, Clone)]
pub struct LeaderLink {
    pub member: Member,
    pub term: u64,
    /// One HTTP/2 connection to the leader, shared by the stream, forwarded calls and
    /// read-index rounds.
    pub channel: Channel,
}

/// What this node is doing right now.
#[derive(Debug, Clone)]
pub enum Role {
    /// Holds the leader lease (in `term`) and runs the writer.
    Leading { term: u64 },
    /// Follows the linked leader.
    Following(Arc<LeaderLink>),
    /// Knows of no reachable leader (starting, failing over, or cut off).
    NoLeader,
}

/// This node's place in the cluster, shared by the API services, the peer service and the
/// role loop.
pub struct Node {
    pub me: Member,
    role: ArcSwap<Role>,
    /// On the leader: the followers whose streams are open, each with its stream's number
    /// (a follower that reconnects opens its new stream before the old one is gone).
    followers: DashMap<u64, (Member, u64)>,
    streams: std::sync::atomic::AtomicU64,
    /// On a follower: the members the leader last reported.
    members: ArcSwap<Vec<Member>>,
    read_index: forward::ReadIndex,
    /// What this node has seen of the leader, for taking over when it goes quiet.
    pub contention: crate::log::leader::Contention,
    /// How this node reaches the leader's client port.
    pub peer_tls: forward::PeerTls,
    /// Bumped on every role change (the leader's streams end when it stops leading).
    changes: tokio::sync::watch::Sender<u64>,
}

impl Node {
    /// A node whose log is `log` (its position is part of what contention watches), reaching
    /// the leader with `peer_tls`.
    pub fn new(me: Member, log: &crate::log::Log, peer_tls: forward::PeerTls) -> Arc<Self> {
        let log = log.clone();
        Arc::new(Self {
            peer_tls,
            contention: crate::log::leader::Contention::new(Some(Box::new(move || {
                log.next_position()
            }))),
            me,
            role: ArcSwap::from_pointee(Role::NoLeader),
            followers: DashMap::new(),
            streams: Default::default(),
            members: ArcSwap::from_pointee(Vec::new()),
            read_index: forward::ReadIndex::default(),
            changes: tokio::sync::watch::channel(0).0,
        })
    }

    pub fn role(&self) -> Arc<Role> {
        self.role.load_full()
    }

    pub fn set_role(&self, role: Role) {
        let m = &crate::metrics::METRICS;
        match &role {
            Role::Leading { term } => m.set_role(Some(*term), true),
            Role::Following(l) => {
                tracing::info!(leader = %l.member.name, leader_id = format!("{:x}", l.member.id), term = l.term, urls = ?l.member.client_urls, "following");
                m.set_role(None, true);
            }
            Role::NoLeader => m.set_role(None, false),
        }
        let before = self.leader_id();
        self.role.store(Arc::new(role));
        self.changes.send_modify(|n| *n += 1);
        let after = self.leader_id();
        if after != 0 && after != before {
            m.leader_changes.inc();
        }
    }

    /// A receiver that changes whenever the role does.
    pub fn role_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Whether this node runs the writer.
    pub fn is_leading(&self) -> bool {
        matches!(**self.role.load(), Role::Leading { .. })
    }

    /// The leader's member id, 0 when none is known (etcd's "no leader").
    pub fn leader_id(&self) -> u64 {
        match &**self.role.load() {
            Role::Leading { .. } => self.me.id,
            Role::Following(l) => l.member.id,
            Role::NoLeader => 0,
        }
    }

    /// The link to follow or forward to; None while leading.
    pub fn link(&self) -> Result<Option<Arc<LeaderLink>>, tonic::Status> {
        match &**self.role.load() {
            Role::Leading { .. } => Ok(None),
            Role::Following(l) => Ok(Some(l.clone())),
            Role::NoLeader => Err(crate::api::errors::no_leader()),
        }
    }

    /// Every member this node knows: itself and its followers when leading, the leader's
    /// last report when following.
    pub fn members(&self) -> Vec<Member> {
        if self.is_leading() {
            let mut all = vec![self.me.clone()];
            all.extend(self.followers.iter().map(|m| m.value().0.clone()));
            all.sort_by_key(|m| m.id);
            all
        } else {
            let known = self.members.load();
            if known.is_empty() {
                vec![self.me.clone()]
            } else {
                known.to_vec()
            }
        }
    }

    /// On the leader: how many followers are streaming from it.
    pub fn follower_count(&self) -> usize {
        self.followers.len()
    }

    /// Records a follower's new stream; returns the stream's number.
    pub(crate) fn follower_joined(&self, m: Member) -> u64 {
        let stream = self
            .streams
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(member = %m.name, member_id = format!("{:x}", m.id), urls = ?m.client_urls, "follower connected");
        self.followers.insert(m.id, (m, stream));
        stream
    }

    /// Forgets a follower whose stream `stream` ended, unless it has a newer one.
    pub(crate) fn follower_left(&self, id: u64, stream: u64) {
        if let Some((_, (m, _))) = self.followers.remove_if(&id, |_, (_, s)| *s == stream) {
            tracing::info!(member = %m.name, member_id = format!("{:x}", m.id), "follower disconnected");
        }
    }

    pub(crate) fn set_members(&self, members: Vec<Member>) {
        self.members.store(Arc::new(members));
    }
}
