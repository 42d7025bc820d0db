//! etcd's Maintenance service. Status reports a 3.5 version string because
//! kube-apiserver enables watch progress requests (consistent reads from cache) only for
//! etcd ≥ 3.5.13, and Netsy implements what those need.

use super::{errors, Context};
use crate::cluster::forward;
use crate::etcd_backend::{self, hash};
use crate::mvcc::State;
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::proto::etcdserverpb::*;
use futures::Stream;
use std::pin::Pin;
use tonic::{Request, Response, Status};

/// The etcd API version Netsy answers as: 3.7's (RangeStream, and 3.6+'s progress
/// notifications), which kube-apiserver 1.34+ is built against. kube-apiserver reads it to
/// decide on watch progress requests (3.4.31+, 3.5.13+).
pub const ETCD_VERSION: &str = "3.7.0";

/// The cluster version (`/version`'s `etcdcluster`), etcd's major.minor.0.
pub const ETCD_CLUSTER_VERSION: &str = "3.7.0";

pub struct MaintenanceService {
    ctx: Context,
}

impl MaintenanceService {
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, r: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        // The only alarm is NOSPACE (the space quota); corruption stops recovery instead.
        // The leader's quota refuses the writes, so a follower passes the call to it.
        if let Some(link) = self.ctx.write_target(&r)? {
            let answer = maintenance_client::MaintenanceClient::new(link.channel.clone())
                .alarm(forward::outbound(r.into_inner()))
                .await;
            return forward::answered(&link, answer);
        }
        let r = r.into_inner();
        let quota = self.ctx.log.quota();
        let nospace = AlarmType::Nospace as i32;
        let entry = |member_id| AlarmMember {
            member_id,
            alarm: nospace,
        };
        // As etcd's alarm store: entries by member id, whatever id the request names.
        let alarms = match alarm_request::AlarmAction::try_from(r.action) {
            Ok(alarm_request::AlarmAction::Get) => {
                if r.alarm == AlarmType::None as i32 || r.alarm == nospace {
                    quota.alarmed().into_iter().map(entry).collect()
                } else {
                    vec![]
                }
            }
            Ok(alarm_request::AlarmAction::Activate) if r.alarm == nospace => {
                quota.raise_for(r.member_id);
                vec![entry(r.member_id)]
            }
            Ok(alarm_request::AlarmAction::Deactivate) if r.alarm == nospace => {
                if quota.disarm_for(r.member_id) {
                    tracing::info!(member_id = r.member_id, "NOSPACE alarm disarmed");
                    vec![entry(r.member_id)]
                } else {
                    vec![]
                }
            }
            Ok(_) => vec![],
            Err(_) => return Err(Status::invalid_argument("unknown alarm action")),
        };
        let state = self.ctx.log.state();
        Ok(Response::new(AlarmResponse {
            header: self.ctx.header(state.revision),
            alarms,
        }))
    }

    async fn status(&self, _r: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let state = self.ctx.log.state();
        let term = self.ctx.ids.term.load(std::sync::atomic::Ordering::Relaxed);
        let leader = self.ctx.node.leader_id();
        Ok(Response::new(StatusResponse {
            header: self.ctx.header(state.revision),
            version: ETCD_VERSION.to_string(),
            db_size: state.bytes(),
            leader,
            raft_index: state.revision as u64,
            raft_term: term,
            raft_applied_index: state.revision as u64,
            // etcd 3.5+ reports a member without a leader this way.
            errors: if leader == 0 {
                vec![errors::no_leader().message().to_string()]
            } else {
                vec![]
            },
            db_size_in_use: state.bytes(),
            is_learner: false,
        }))
    }

    async fn defragment(
        &self,
        r: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        // As etcd: maintenance needs the root role while authentication is enabled.
        self.ctx.check_admin(&r)?;
        // Nothing to defragment: memory is freed by compaction. etcd answers without a
        // header.
        Ok(Response::new(DefragmentResponse { header: None }))
    }

    async fn hash(&self, r: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        // As etcd: maintenance needs the root role while authentication is enabled.
        self.ctx.check_admin(&r)?;
        let state = self.ctx.log.state();
        let alarms = self.ctx.log.quota().alarmed();
        let revision = state.revision;
        let hash = blocking(move || Ok(hash::hash(&state, &alarms))).await?;
        Ok(Response::new(HashResponse {
            header: self.ctx.header(revision),
            hash,
        }))
    }

    async fn hash_kv(&self, r: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        // As etcd: maintenance needs the root role while authentication is enabled.
        self.ctx.check_admin(&r)?;
        let rev = r.into_inner().revision;
        let state = self.ctx.log.state();
        if let Some(kept) = self.ctx.log.compaction_hashes().at(rev) {
            return Ok(Response::new(HashKvResponse {
                header: self.ctx.header(state.revision),
                hash: kept.hash,
                compact_revision: kept.compact_revision,
                hash_revision: kept.revision,
            }));
        }
        let compact_revision = hash::reported_compact_revision(state.compact_revision);
        let head = state.revision;
        let (hash, hash_revision) =
            blocking(move || hash::hash_kv(&state, rev).map_err(Status::from)).await?;
        Ok(Response::new(HashKvResponse {
            header: self.ctx.header(head),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    type SnapshotStream = SnapshotStream;

    /// The state as etcd's database (bbolt, etcd's layout), streamed as etcd streams its
    /// own: 32 KiB blobs with the bytes remaining, then the SHA-256 of the whole that
    /// `snapshot restore` checks. Served from this node's state, leader or follower.
    async fn snapshot(
        &self,
        r: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        // As etcd: maintenance needs the root role while authentication is enabled.
        self.ctx.check_admin(&r)?;
        let state = self.ctx.log.state();
        let alarms = self.ctx.log.quota().alarmed();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let sent = send_snapshot(&state, &alarms, &tx);
            if let Err(e) = sent {
                tracing::warn!(error = %e, "snapshot failed");
                let _ = tx.blocking_send(Err(Status::internal(format!("snapshot: {e}"))));
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    /// As etcd: only the leader moves leadership, only to a member; moving it to itself
    /// is done at once (answered without a header, as etcd). Moving it to another node is
    /// not supported yet.
    async fn move_leader(
        &self,
        r: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        // As etcd: maintenance needs the root role while authentication is enabled.
        self.ctx.check_admin(&r)?;
        let target = r.into_inner().target_id;
        let node = &self.ctx.node;
        if !node.is_leading() {
            return Err(Status::failed_precondition("etcdserver: not leader"));
        }
        if !node.members().iter().any(|m| m.id == target) {
            return Err(Status::failed_precondition(
                "etcdserver: bad leader transferee",
            ));
        }
        if target == self.ctx.ids.member_id {
            return Ok(Response::new(MoveLeaderResponse { header: None }));
        }
        Err(errors::unimplemented(
            "Maintenance.MoveLeader to another node",
        ))
    }

    async fn downgrade(
        &self,
        _r: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(errors::unimplemented("Maintenance.Downgrade"))
    }
}

/// etcd's snapshot blob size.
const SNAPSHOT_BLOB: usize = 32 * 1024;

/// Runs `f` off the async workers: hashing and snapshots walk every retained version.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(e.to_string()))?
}

/// Writes the database and sends it; an error is returned only while the client listens.
fn send_snapshot(
    state: &State,
    alarms: &[u64],
    tx: &tokio::sync::mpsc::Sender<Result<SnapshotResponse, Status>>,
) -> Result<(), etcd_backend::bolt::BoltError> {
    use sha2::Digest;
    use std::io::Read;
    let started = std::time::Instant::now();
    let (mut file, total) = etcd_backend::write_db(state, alarms)?;
    tracing::info!(
        revision = state.revision,
        bytes = total,
        write_ms = started.elapsed().as_millis() as u64,
        "sending database snapshot"
    );
    let version = etcd_backend::schema::STORAGE_VERSION.to_string();
    let mut sha = sha2::Sha256::new();
    let mut sent = 0u64;
    while sent < total {
        let mut blob = vec![0u8; SNAPSHOT_BLOB.min((total - sent) as usize)];
        file.read_exact(&mut blob)?;
        sha.update(&blob);
        sent += blob.len() as u64;
        let resp = SnapshotResponse {
            header: None,
            remaining_bytes: total - sent,
            blob: blob.into(),
            version: version.clone(),
        };
        if tx.blocking_send(Ok(resp)).is_err() {
            return Ok(()); // the client went away
        }
    }
    let resp = SnapshotResponse {
        header: None,
        remaining_bytes: 0,
        blob: sha.finalize().to_vec().into(),
        version,
    };
    let _ = tx.blocking_send(Ok(resp));
    Ok(())
}
