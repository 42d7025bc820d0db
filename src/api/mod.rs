//! The etcd v3 gRPC API over the engine: one module per etcd service.
//!
//! This is the only place that speaks gRPC. Requests are validated first (with etcd's exact
//! errors, which clients match by message text), then reads go straight to the published
//! state and writes to the log. Engine errors are typed enums inside and become
//! `tonic::Status` here.

pub mod auth;
pub mod cluster;
pub mod concurrency;
pub mod election;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod range_stream;
pub mod validate;
pub mod watch;

use crate::log::{Log, WriteError};
use crate::mvcc;
use crate::proto::etcdserverpb::ResponseHeader;
use std::sync::Arc;
use tonic::{Code, Status};

/// What every service needs: the log, the identity that goes in response headers, and
/// this node's place in the cluster (leading, or following a leader to forward to).
#[derive(Clone)]
pub struct Context {
    pub log: Log,
    pub ids: Ids,
    pub limits: Limits,
    pub lessor: Arc<crate::lease::Lessor>,
    pub node: Arc<crate::cluster::Node>,
    /// The auth store of the published state, decoded once per change.
    pub auth: Arc<arc_swap::ArcSwapOption<(bytes::Bytes, Arc<crate::auth::AuthStore>)>>,
}

/// Who makes a request while authentication is enabled.
pub struct Caller {
    pub user: String,
    pub store: Arc<crate::auth::AuthStore>,
}

impl Caller {
    /// etcd's check of `need` (auth::READ or auth::WRITE) on a key or range.
    pub fn check(&self, key: &[u8], range_end: &[u8], need: i32) -> Result<(), Status> {
        if self.store.permits(&self.user, key, range_end, need) {
            Ok(())
        } else {
            Err(crate::auth::AuthError::PermissionDenied.into())
        }
    }

    pub fn check_admin(&self) -> Result<(), Status> {
        if self.store.is_admin(&self.user) {
            Ok(())
        } else {
            Err(crate::auth::AuthError::PermissionDenied.into())
        }
    }

    /// A put writes its key, and reads it too when it asks for the previous value.
    pub fn check_put(&self, r: &crate::proto::etcdserverpb::PutRequest) -> Result<(), Status> {
        self.check(&r.key, &[], crate::auth::WRITE)?;
        if r.prev_kv {
            self.check(&r.key, &[], crate::auth::READ)?;
        }
        Ok(())
    }

    /// A delete writes its range, and reads it too when it asks for the previous values.
    pub fn check_delete(
        &self,
        r: &crate::proto::etcdserverpb::DeleteRangeRequest,
    ) -> Result<(), Status> {
        self.check(&r.key, &r.range_end, crate::auth::WRITE)?;
        if r.prev_kv {
            self.check(&r.key, &r.range_end, crate::auth::READ)?;
        }
        Ok(())
    }

    /// A transaction's comparisons are reads; its operations as each would be alone.
    pub fn check_txn(&self, t: &crate::proto::etcdserverpb::TxnRequest) -> Result<(), Status> {
        use crate::proto::etcdserverpb::request_op::Request as Op;
        for c in &t.compare {
            self.check(&c.key, &c.range_end, crate::auth::READ)?;
        }
        for op in t.success.iter().chain(&t.failure) {
            match &op.request {
                Some(Op::RequestRange(r)) => self.check(&r.key, &r.range_end, crate::auth::READ)?,
                Some(Op::RequestPut(r)) => self.check_put(r)?,
                Some(Op::RequestDeleteRange(r)) => self.check_delete(r)?,
                Some(Op::RequestTxn(t)) => self.check_txn(t)?,
                None => {}
            }
        }
        Ok(())
    }
}

/// Identity reported in headers and by Cluster/Maintenance.
#[derive(Debug, Clone)]
pub struct Ids {
    pub cluster_id: u64,
    pub member_id: u64,
    pub name: String,
    pub client_urls: Vec<String>,
    /// The leader lease term, reported as raft_term.
    pub term: Arc<std::sync::atomic::AtomicU64>,
}

/// Request limits, as etcd's flags of the same meaning.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `--max-request-bytes` (default 1.5 MiB).
    pub max_request_bytes: usize,
    /// `--max-txn-ops` (default 128).
    pub max_txn_ops: usize,
    /// `--quota-backend-bytes` (default 2 GiB).
    pub quota_backend_bytes: i64,
    /// `--max-watchers-per-stream` (Netsy's; default 10,000).
    pub max_watchers_per_stream: usize,
    /// `--auth-token-ttl` (default 300 s): how long an auth token lives.
    pub auth_token_ttl: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_bytes: 1536 * 1024,
            max_txn_ops: 128,
            quota_backend_bytes: crate::log::DEFAULT_QUOTA_BYTES,
            max_watchers_per_stream: 10_000,
            auth_token_ttl: std::time::Duration::from_secs(300),
        }
    }
}

impl Context {
    /// A response header at `revision`.
    pub fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.ids.cluster_id,
            member_id: self.ids.member_id,
            revision,
            raft_term: self.ids.term.load(std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// The auth store the published state holds (None: no user was ever added).
    pub fn auth_store(&self) -> Result<Option<Arc<crate::auth::AuthStore>>, Status> {
        self.auth_store_in(&self.log.state())
    }

    /// The auth store `state` holds, decoded once per change of it.
    pub fn auth_store_in(
        &self,
        state: &mvcc::State,
    ) -> Result<Option<Arc<crate::auth::AuthStore>>, Status> {
        let encoded = state.auth();
        if encoded.is_empty() {
            return Ok(None);
        }
        if let Some(cached) = self.auth.load().as_ref() {
            if cached.0 == *encoded {
                return Ok(Some(cached.1.clone()));
            }
        }
        let store = Arc::new(crate::auth::AuthStore::decode(encoded)?);
        self.auth
            .store(Some(Arc::new((encoded.clone(), store.clone()))));
        Ok(Some(store))
    }

    /// Who makes a request, by its token, while authentication is enabled (None when it is
    /// not). Without a token: etcd's "user name is empty"; with a bad or expired one:
    /// "invalid auth token", which clients answer by authenticating again.
    pub fn caller(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Option<Caller>, Status> {
        let Some(store) = self.auth_store()? else {
            return Ok(None);
        };
        if !store.enabled {
            return Ok(None);
        }
        let token = metadata
            .get(crate::cluster::forward::TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or(crate::auth::AuthError::UserEmpty)?;
        let user = store.verify(token, crate::clock::now_ms() as u64)?;
        Ok(Some(Caller { user, store }))
    }

    /// Checks that the caller holds the root role (nothing while authentication is
    /// disabled).
    pub fn check_admin<T>(&self, request: &tonic::Request<T>) -> Result<(), Status> {
        match self.caller(request.metadata())? {
            Some(c) => c.check_admin(),
            None => Ok(()),
        }
    }

    /// Where a write or lease call goes: None to this node's own log (it leads), else the
    /// leader to forward it to. A request a follower already forwarded is not forwarded
    /// again: this node no longer leads, which the follower's client hears as no leader.
    pub fn write_target<T>(
        &self,
        request: &tonic::Request<T>,
    ) -> Result<Option<Arc<crate::cluster::LeaderLink>>, Status> {
        match self.node.link()? {
            Some(_) if crate::cluster::forward::is_forwarded(request) => Err(errors::no_leader()),
            link => Ok(link),
        }
    }

    /// The state a read is answered from: the published one when serializable, else a
    /// linearizable one (under the leader lease, or after a read-index round on a
    /// follower), or etcd's `no leader`.
    pub async fn read_state(&self, serializable: bool) -> Result<Arc<mvcc::State>, Status> {
        if serializable {
            Ok(self.log.state())
        } else {
            self.node.linearizable_state(&self.log).await
        }
    }

    /// Completes a header the engine filled with a revision only.
    pub fn fill(&self, header: &mut Option<ResponseHeader>) {
        let rev = header.as_ref().map_or(0, |h| h.revision);
        *header = self.header(rev);
    }
}

/// etcd's gRPC errors, with the codes and messages its clients match.
pub mod errors {
    use tonic::{Code, Status};

    pub fn empty_key() -> Status {
        Status::new(Code::InvalidArgument, "etcdserver: key is not provided")
    }
    pub fn key_not_found() -> Status {
        Status::new(Code::InvalidArgument, "etcdserver: key not found")
    }
    pub fn value_provided() -> Status {
        Status::new(Code::InvalidArgument, "etcdserver: value is provided")
    }
    pub fn lease_provided() -> Status {
        Status::new(Code::InvalidArgument, "etcdserver: lease is provided")
    }
    pub fn too_many_ops() -> Status {
        Status::new(
            Code::InvalidArgument,
            "etcdserver: too many operations in txn request",
        )
    }
    pub fn duplicate_key() -> Status {
        Status::new(
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request",
        )
    }
    pub fn invalid_sort_option() -> Status {
        Status::new(Code::InvalidArgument, "etcdserver: invalid sort option")
    }
    pub fn request_too_large() -> Status {
        Status::new(Code::InvalidArgument, "etcdserver: request is too large")
    }
    pub fn compacted() -> Status {
        Status::new(
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        )
    }
    pub fn future_rev() -> Status {
        Status::new(
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision",
        )
    }
    pub fn lease_not_found() -> Status {
        Status::new(Code::NotFound, "etcdserver: requested lease not found")
    }
    pub fn lease_exists() -> Status {
        Status::new(Code::FailedPrecondition, "etcdserver: lease already exists")
    }
    pub fn lease_ttl_too_large() -> Status {
        Status::new(Code::OutOfRange, "etcdserver: too large lease TTL")
    }
    pub fn no_leader() -> Status {
        Status::new(Code::Unavailable, "etcdserver: no leader")
    }
    pub fn stopped() -> Status {
        Status::new(Code::Unavailable, "etcdserver: server stopped")
    }
    pub fn unimplemented(what: &str) -> Status {
        Status::new(
            Code::Unimplemented,
            format!("netsy: {what} is not supported (see docs/differences.md)"),
        )
    }
}

/// The metadata etcd clients send with `WithRequireLeader` (kube-apiserver's watches do).
pub const REQUIRE_LEADER: &str = "hasleader";

/// Whether a request asks for a leader (`hasleader: true`).
pub fn requires_leader(headers: &http::HeaderMap) -> bool {
    headers
        .get(REQUIRE_LEADER)
        .is_some_and(|v| v.as_bytes() == b"true")
}

/// As etcd's interceptors: a request that requires a leader is refused with `etcdserver:
/// no leader` by a node that has none, before any service sees it.
pub async fn require_leader(
    axum::extract::State(node): axum::extract::State<Arc<crate::cluster::Node>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if requires_leader(request.headers()) && node.leader_id() == 0 {
        return errors::no_leader().into_http();
    }
    next.run(request).await
}

/// The log answered a request with a response of another kind: a bug, reported as such.
pub(crate) fn unexpected(response: &crate::log::Response) -> Status {
    Status::internal(format!("unexpected response {response:?}"))
}

impl From<mvcc::Error> for Status {
    fn from(e: mvcc::Error) -> Self {
        match e {
            mvcc::Error::Compacted => errors::compacted(),
            mvcc::Error::FutureRevision => errors::future_rev(),
            mvcc::Error::LeaseNotFound => errors::lease_not_found(),
            mvcc::Error::LeaseExists => errors::lease_exists(),
            mvcc::Error::KeyNotFound => errors::key_not_found(),
            mvcc::Error::Inconsistent { .. } => Status::new(Code::Internal, e.to_string()),
        }
    }
}

impl From<WriteError> for Status {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Mvcc(m) => m.into(),
            // etcd's exact descriptions (clients match them: `rpctypes.ErrNoLeader`); the
            // reason goes to the log.
            WriteError::NotLeader | WriteError::Fenced { .. } | WriteError::LeaseExpired => {
                // Retryable: the client tries again (or elsewhere) once a leader serves.
                tracing::info!(error = %e, "write refused: no leader");
                Status::new(Code::Unavailable, "etcdserver: no leader")
            }
            WriteError::Store { .. } | WriteError::Abandoned => {
                tracing::warn!(error = %e, "write failed: the chunk was not stored");
                Status::new(Code::Unavailable, "etcdserver: request timed out")
            }
            WriteError::TooLarge(_) => errors::request_too_large(),
            WriteError::NoSpace => Status::new(
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded",
            ),
            WriteError::Shutdown => errors::stopped(),
            WriteError::Auth(a) => a.into(),
        }
    }
}

impl From<crate::auth::AuthError> for Status {
    fn from(e: crate::auth::AuthError) -> Self {
        use crate::auth::AuthError::*;
        let code = match e {
            UserEmpty | RoleEmpty | PermissionNotGiven | InvalidAuthMgmt | AuthFailed => {
                Code::InvalidArgument
            }
            UserAlreadyExists | UserNotFound | RoleAlreadyExists | RoleNotFound
            | RoleNotGranted | PermissionNotGranted | NotEnabled | RootUserNotExist
            | RootRoleNotExist => Code::FailedPrecondition,
            PermissionDenied => Code::PermissionDenied,
            InvalidToken => Code::Unauthenticated,
            Corrupt(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}
