//! A gRPC server that stores nothing: tonic's stock HTTP/2 server answering every KV call at
//! once (`Put` with the next revision, `Range` and `DeleteRange` empty, `Txn` unimplemented).
//!
//! `scripts/bench.sh` runs `etcdctl check perf` against it as the ceiling of the machine for
//! that check: whatever no server can beat with this client on these cores is not a
//! shortfall of Netsy's. Usage: `cargo run --release --example noop_kv -- 127.0.0.1:23790`.

use netsy::proto::etcdserverpb::kv_server::{Kv, KvServer};
use netsy::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RangeStreamResponse, ResponseHeader, TxnRequest,
    TxnResponse,
};
use std::sync::atomic::{AtomicI64, Ordering};
use tonic::{Request, Response, Status};

#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

struct NoopKv {
    revision: AtomicI64,
}

impl NoopKv {
    fn header(&self) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: 1,
            member_id: 1,
            revision: self.revision.load(Ordering::Relaxed),
            raft_term: 1,
        })
    }
}

#[tonic::async_trait]
impl Kv for NoopKv {
    type RangeStreamStream = futures::stream::Empty<Result<RangeStreamResponse, Status>>;

    async fn range_stream(
        &self,
        _: Request<RangeRequest>,
    ) -> Result<Response<Self::RangeStreamStream>, Status> {
        Err(Status::unimplemented(
            "noop_kv answers Range, Put and DeleteRange only",
        ))
    }

    async fn range(&self, _: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        Ok(Response::new(RangeResponse {
            header: self.header(),
            ..Default::default()
        }))
    }

    async fn put(&self, _: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        self.revision.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(PutResponse {
            header: self.header(),
            ..Default::default()
        }))
    }

    async fn delete_range(
        &self,
        _: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        Ok(Response::new(DeleteRangeResponse {
            header: self.header(),
            ..Default::default()
        }))
    }

    async fn txn(&self, _: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        Err(Status::unimplemented(
            "noop_kv answers Range, Put and DeleteRange only",
        ))
    }

    async fn compact(
        &self,
        _: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        Ok(Response::new(CompactionResponse {
            header: self.header(),
        }))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:23790".into())
        .parse()?;
    let kv = NoopKv {
        revision: AtomicI64::new(1),
    };
    tonic::transport::Server::builder()
        .add_service(KvServer::new(kv))
        .serve(addr)
        .await?;
    Ok(())
}
