//! etcd's KV service. Reads (Range, read-only Txn) are answered from the published state
//! without touching storage or the writer; everything else goes through the log and is
//! answered once durable.

use super::{validate, Context};
use crate::auth::READ;
use crate::cluster::{forward, LeaderLink};
use crate::log::{Request, Response};
use crate::mvcc::{txn_all_ops, txn_is_read_only};
use crate::proto::etcdserverpb::kv_client::KvClient;
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RangeStreamResponse, TxnRequest, TxnResponse,
};
use futures::Stream;
use prost::Message;
use std::pin::Pin;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

/// etcd's rule: a read-only txn may be served locally only if all its ranges (in every
/// branch, nested ones included) are serializable.
fn txn_is_serializable(t: &TxnRequest) -> bool {
    use crate::proto::etcdserverpb::request_op::Request as Op;
    txn_all_ops(t, &|op| match op {
        Op::RequestRange(r) => r.serializable,
        _ => true,
    })
}

pub struct KvService {
    ctx: Context,
}

impl KvService {
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }

    fn check_size(&self, m: &impl Message) -> Result<(), Status> {
        if m.encoded_len() > self.ctx.limits.max_request_bytes {
            return Err(super::errors::request_too_large());
        }
        Ok(())
    }

    /// A client of the leader's KV service for a forwarded call.
    fn leader(&self, link: &LeaderLink) -> KvClient<tonic::transport::Channel> {
        KvClient::new(link.channel.clone())
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    }

    /// Completes the top-level header only: etcd leaves the per-op headers with just the
    /// revision the engine put there.
    fn fill_txn(&self, t: &mut TxnResponse) {
        self.ctx.fill(&mut t.header);
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    type RangeStreamStream =
        Pin<Box<dyn Stream<Item = Result<RangeStreamResponse, Status>> + Send + 'static>>;

    async fn range_stream(
        &self,
        request: GrpcRequest<RangeRequest>,
    ) -> Result<GrpcResponse<Self::RangeStreamStream>, Status> {
        let caller = self.ctx.caller(request.metadata())?;
        let r = request.into_inner();
        if let Some(c) = &caller {
            c.check(&r.key, &r.range_end, READ)?;
        }
        validate::range_stream(&r)?;
        let state = self.ctx.read_state(r.serializable).await?;
        let rev = state.check_revision(r.revision)?;
        // As Range's, the header carries the store's current revision.
        let header = self.ctx.header(state.revision);
        let chunks = super::range_stream::Chunks::new(
            state,
            &r,
            rev,
            header,
            self.ctx.limits.max_request_bytes,
        );
        Ok(GrpcResponse::new(Box::pin(futures::stream::iter(
            chunks.map(Ok),
        ))))
    }

    async fn range(
        &self,
        request: GrpcRequest<RangeRequest>,
    ) -> Result<GrpcResponse<RangeResponse>, Status> {
        let caller = self.ctx.caller(request.metadata())?;
        let r = request.into_inner();
        if let Some(c) = &caller {
            c.check(&r.key, &r.range_end, READ)?;
        }
        validate::range(&r)?;
        let state = self.ctx.read_state(r.serializable).await?;
        let mut resp = state.range(&r, None)?;
        // The header carries the store's current revision, whatever revision was read.
        resp.header = self.ctx.header(state.revision);
        Ok(GrpcResponse::new(resp))
    }

    async fn put(
        &self,
        request: GrpcRequest<PutRequest>,
    ) -> Result<GrpcResponse<PutResponse>, Status> {
        let target = self.ctx.write_target(&request)?;
        let (caller, token) = (
            self.ctx.caller(request.metadata())?,
            forward::token(&request),
        );
        let r = request.into_inner();
        validate::put(&r)?;
        self.check_size(&r)?;
        if let Some(c) = &caller {
            c.check_put(&r)?;
        }
        if let Some(link) = target {
            let answer = self
                .leader(&link)
                .put(forward::outbound_with(r, token))
                .await;
            return forward::written(&self.ctx.log, &link, answer).await;
        }
        match self.ctx.log.write(Request::Put(r)).await? {
            Response::Put(mut p) => {
                self.ctx.fill(&mut p.header);
                Ok(forward::marked(&self.ctx.log, p))
            }
            other => Err(super::unexpected(&other)),
        }
    }

    async fn delete_range(
        &self,
        request: GrpcRequest<DeleteRangeRequest>,
    ) -> Result<GrpcResponse<DeleteRangeResponse>, Status> {
        let target = self.ctx.write_target(&request)?;
        let (caller, token) = (
            self.ctx.caller(request.metadata())?,
            forward::token(&request),
        );
        let r = request.into_inner();
        validate::delete(&r)?;
        self.check_size(&r)?;
        if let Some(c) = &caller {
            c.check_delete(&r)?;
        }
        if let Some(link) = target {
            let answer = self
                .leader(&link)
                .delete_range(forward::outbound_with(r, token))
                .await;
            return forward::written(&self.ctx.log, &link, answer).await;
        }
        match self.ctx.log.write(Request::DeleteRange(r)).await? {
            Response::DeleteRange(mut d) => {
                self.ctx.fill(&mut d.header);
                Ok(forward::marked(&self.ctx.log, d))
            }
            other => Err(super::unexpected(&other)),
        }
    }

    async fn txn(
        &self,
        request: GrpcRequest<TxnRequest>,
    ) -> Result<GrpcResponse<TxnResponse>, Status> {
        // Only a transaction that writes needs the leader.
        let target = self.ctx.write_target(&request);
        let (caller, token) = (
            self.ctx.caller(request.metadata())?,
            forward::token(&request),
        );
        let t = request.into_inner();
        validate::txn(&t, self.ctx.limits.max_txn_ops)?;
        self.check_size(&t)?;
        if let Some(c) = &caller {
            c.check_txn(&t)?;
        }
        let read_only = txn_is_read_only(&t);
        if !read_only {
            if let Some(link) = target? {
                let answer = self
                    .leader(&link)
                    .txn(forward::outbound_with(t, token))
                    .await;
                return forward::written(&self.ctx.log, &link, answer).await;
            }
        }
        let mut resp = if read_only {
            // Evaluated on a private copy of the published state: no writer involved. As in
            // etcd, it is linearizable unless every range in it is serializable.
            let state = self.ctx.read_state(txn_is_serializable(&t)).await?;
            let mut state = (*state).clone();
            state.txn(&t)?.response
        } else {
            match self.ctx.log.write(Request::Txn(t)).await? {
                Response::Txn(t) => t,
                other => return Err(super::unexpected(&other)),
            }
        };
        self.fill_txn(&mut resp);
        Ok(if read_only {
            GrpcResponse::new(resp)
        } else {
            forward::marked(&self.ctx.log, resp)
        })
    }

    async fn compact(
        &self,
        request: GrpcRequest<CompactionRequest>,
    ) -> Result<GrpcResponse<CompactionResponse>, Status> {
        // As etcd 3.5+: compaction needs the root role while authentication is enabled.
        self.ctx.check_admin(&request)?;
        let target = self.ctx.write_target(&request)?;
        let token = forward::token(&request);
        let r = request.into_inner();
        let (compacted, physical) = (r.revision, r.physical);
        let answer = if let Some(link) = target {
            let answer = self
                .leader(&link)
                .compact(forward::outbound_with(r, token))
                .await;
            forward::written(&self.ctx.log, &link, answer).await?
        } else {
            match self.ctx.log.write(Request::Compact(r.revision)).await? {
                Response::Compact { revision } => forward::marked(
                    &self.ctx.log,
                    CompactionResponse {
                        header: self.ctx.header(revision),
                    },
                ),
                other => return Err(super::unexpected(&other)),
            }
        };
        // Physical: answered once the compaction's work (here its hash) is done, as etcd.
        if physical {
            let hashed = self.ctx.log.compaction_hashes().wait(compacted);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(30), hashed).await;
        }
        Ok(answer)
    }
}
