//! etcd's Lease service.

use super::{errors, Context};
use crate::cluster::{forward, LeaderLink};
use crate::lease::MAX_TTL;
use crate::log::{Request, Response};
use crate::proto::etcdserverpb::lease_client::LeaseClient;
use crate::proto::etcdserverpb::lease_server::Lease;
use crate::proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use futures::Stream;
use std::pin::Pin;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status, Streaming};

pub struct LeaseService {
    ctx: Context,
    stop: CancellationToken,
}

impl LeaseService {
    /// Keepalive streams end when `stop` is cancelled (server shutdown).
    pub fn new(ctx: Context, stop: CancellationToken) -> Self {
        Self { ctx, stop }
    }
}

/// A client of the leader's Lease service: leases live on the leader (their deadlines are
/// its runtime state), so a follower forwards every lease call.
fn leader(link: &LeaderLink) -> LeaseClient<tonic::transport::Channel> {
    LeaseClient::new(link.channel.clone())
}

type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: GrpcRequest<LeaseGrantRequest>,
    ) -> Result<GrpcResponse<LeaseGrantResponse>, Status> {
        let target = self.ctx.write_target(&request)?;
        let r = request.into_inner();
        if r.ttl > MAX_TTL {
            return Err(errors::lease_ttl_too_large());
        }
        if let Some(link) = target {
            let answer = leader(&link).lease_grant(forward::outbound(r)).await;
            return forward::written(&self.ctx.log, &link, answer).await;
        }
        let ttl = self.ctx.lessor.effective_ttl(r.ttl);
        match self
            .ctx
            .log
            .write(Request::LeaseGrant { id: r.id, ttl })
            .await?
        {
            Response::LeaseGrant { id, ttl, revision } => {
                self.ctx.lessor.granted(id, ttl);
                Ok(forward::marked(
                    &self.ctx.log,
                    LeaseGrantResponse {
                        header: self.ctx.header(revision),
                        id,
                        ttl,
                        error: String::new(),
                    },
                ))
            }
            other => Err(super::unexpected(&other)),
        }
    }

    async fn lease_revoke(
        &self,
        request: GrpcRequest<LeaseRevokeRequest>,
    ) -> Result<GrpcResponse<LeaseRevokeResponse>, Status> {
        // As etcd: revoking deletes the lease's keys, so the caller must be able to write
        // each of them.
        if let Some(c) = self.ctx.caller(request.metadata())? {
            let state = self.ctx.log.state();
            for key in state.lease_keys(request.get_ref().id) {
                c.check(key, &[], crate::auth::WRITE)?;
            }
        }
        if let Some(link) = self.ctx.write_target(&request)? {
            let token = forward::token(&request);
            let answer = leader(&link)
                .lease_revoke(forward::outbound_with(request.into_inner(), token))
                .await;
            return forward::written(&self.ctx.log, &link, answer).await;
        }
        let id = request.into_inner().id;
        match self.ctx.log.write(Request::LeaseRevoke { id }).await? {
            Response::LeaseRevoke { revision } => {
                self.ctx.lessor.forget(id);
                Ok(forward::marked(
                    &self.ctx.log,
                    LeaseRevokeResponse {
                        header: self.ctx.header(revision),
                    },
                ))
            }
            other => Err(super::unexpected(&other)),
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: GrpcRequest<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<GrpcResponse<Self::LeaseKeepAliveStream>, Status> {
        if let Some(link) = self.ctx.write_target(&request)? {
            // One stream to the leader per client stream, passed through both ways.
            let outbound = request.into_inner().map_while(|r| r.ok());
            let answer = leader(&link)
                .lease_keep_alive(forward::outbound(outbound))
                .await
                .map_err(|s| forward::leader_error(&link, s))?;
            let back = answer
                .into_inner()
                .map(move |r| r.map_err(|s| forward::leader_error(&link, s)));
            return Ok(GrpcResponse::new(Box::pin(back)));
        }
        let ctx = self.ctx.clone();
        let mut inbound = request.into_inner();
        let stop = self.stop.clone();
        let out = async_stream(move |tx| async move {
            loop {
                let req = tokio::select! {
                    req = inbound.next() => req,
                    _ = stop.cancelled() => break,
                };
                let Some(Ok(req)) = req else { break };
                let state = ctx.log.state();
                // etcd answers an unknown or expired lease with TTL 0, not an error.
                let ttl = ctx.lessor.renew(&state, req.id).unwrap_or(0);
                let resp = LeaseKeepAliveResponse {
                    header: ctx.header(state.revision),
                    id: req.id,
                    ttl,
                };
                if tx.send(Ok(resp)).await.is_err() {
                    break;
                }
            }
        });
        Ok(GrpcResponse::new(Box::pin(out)))
    }

    async fn lease_time_to_live(
        &self,
        request: GrpcRequest<LeaseTimeToLiveRequest>,
    ) -> Result<GrpcResponse<LeaseTimeToLiveResponse>, Status> {
        if let Some(link) = self.ctx.write_target(&request)? {
            let answer = leader(&link)
                .lease_time_to_live(forward::outbound(request.into_inner()))
                .await;
            return forward::answered(&link, answer);
        }
        let r = request.into_inner();
        let state = self.ctx.log.state();
        let resp = match self.ctx.lessor.remaining(&state, r.id) {
            Some((ttl, granted)) => LeaseTimeToLiveResponse {
                header: self.ctx.header(state.revision),
                id: r.id,
                ttl,
                granted_ttl: granted,
                keys: if r.keys {
                    state.lease_keys(r.id).map(|k| k.to_bytes()).collect()
                } else {
                    vec![]
                },
            },
            // etcd reports a missing lease as TTL -1.
            None => LeaseTimeToLiveResponse {
                header: self.ctx.header(state.revision),
                id: r.id,
                ttl: -1,
                granted_ttl: 0,
                keys: vec![],
            },
        };
        Ok(GrpcResponse::new(resp))
    }

    async fn lease_leases(
        &self,
        request: GrpcRequest<LeaseLeasesRequest>,
    ) -> Result<GrpcResponse<LeaseLeasesResponse>, Status> {
        if let Some(link) = self.ctx.write_target(&request)? {
            let answer = leader(&link)
                .lease_leases(forward::outbound(request.into_inner()))
                .await;
            return forward::answered(&link, answer);
        }
        let state = self.ctx.log.state();
        Ok(GrpcResponse::new(LeaseLeasesResponse {
            header: self.ctx.header(state.revision),
            leases: state.leases().map(|l| LeaseStatus { id: l.id }).collect(),
        }))
    }
}

/// A response stream fed by a task: `f` gets the sending half of a bounded channel.
pub fn async_stream<T, F, Fut>(f: F) -> impl Stream<Item = Result<T, Status>> + Send + 'static
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<Result<T, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
