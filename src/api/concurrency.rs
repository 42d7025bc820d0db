//! What etcd's Lock and Election services are built from: keys named `prefix/<lease in
//! hex>`, ordered by create revision, held by a lease. etcd's servers run its client-side
//! recipes (the `concurrency` package) against themselves; here the same recipes write
//! through this node's own KV service (so a follower forwards them as any write) and wait on
//! this node's state, which is safe on a follower too: a candidate's own key is applied
//! locally before it waits (read-your-writes), so every key created before it is there, and
//! a deletion seen locally happened.

use super::kv::KvService;
use super::Context;
use crate::mvcc::{prefix_end, KeyRange, State};
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::{
    compare, request_op, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    TxnResponse,
};
use crate::proto::mvccpb::KeyValue;
use bytes::Bytes;
use std::sync::Arc;
use tonic::{Request, Status};

/// The caller's auth token, carried into the recipes' own KV requests so they are checked
/// as the caller's.
pub use crate::cluster::forward::Token;

fn as_caller<T>(message: T, token: &Token) -> Request<T> {
    crate::cluster::forward::with_token(Request::new(message), token.clone())
}

pub struct Recipes {
    pub ctx: Context,
    kv: KvService,
}

/// `name/`, the prefix of an election's or a lock's keys.
pub fn prefix_of(name: &[u8]) -> Bytes {
    let mut p = name.to_vec();
    p.push(b'/');
    p.into()
}

/// A candidate's key: the prefix and its lease id in hex, as etcd names it.
pub fn key_of(prefix: &[u8], lease: i64) -> Bytes {
    let mut k = prefix.to_vec();
    k.extend_from_slice(format!("{lease:x}").as_bytes());
    k.into()
}

fn op(request: request_op::Request) -> RequestOp {
    RequestOp {
        request: Some(request),
    }
}

pub fn put_op(key: &Bytes, value: &Bytes, lease: i64) -> RequestOp {
    op(request_op::Request::RequestPut(PutRequest {
        key: key.clone(),
        value: value.clone(),
        lease,
        ..Default::default()
    }))
}

fn get_op(key: &Bytes) -> RequestOp {
    op(request_op::Request::RequestRange(RangeRequest {
        key: key.clone(),
        ..Default::default()
    }))
}

pub fn delete_op(key: &Bytes) -> RequestOp {
    op(request_op::Request::RequestDeleteRange(
        DeleteRangeRequest {
            key: key.clone(),
            ..Default::default()
        },
    ))
}

/// A comparison of `key`'s create revision with `rev`.
pub fn created_at(key: &Bytes, rev: i64) -> crate::proto::etcdserverpb::Compare {
    crate::proto::etcdserverpb::Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.clone(),
        range_end: Bytes::new(),
        target_union: Some(compare::TargetUnion::CreateRevision(rev)),
    }
}

/// The first (range) response of a transaction's branch.
fn first_range(resp: &TxnResponse) -> Vec<KeyValue> {
    match resp.responses.first().and_then(|r| r.response.as_ref()) {
        Some(crate::proto::etcdserverpb::response_op::Response::ResponseRange(r)) => r.kvs.clone(),
        _ => vec![],
    }
}

/// The live key under `prefix` created first (the owner, the leader), at the head.
pub fn first_created(state: &State, prefix: &[u8]) -> Option<KeyValue> {
    let range = KeyRange::prefix(prefix);
    state
        .live_in(&range, state.revision)
        .min_by_key(|(_, v)| v.create_revision)
        .map(|(k, v)| v.to_kv(k, false))
}

/// What [`Recipes::claim`] found.
pub struct Claim {
    /// Whether the key was put now (else it existed).
    pub created: bool,
    pub header: Option<crate::proto::etcdserverpb::ResponseHeader>,
    /// The key's create revision: its place in line.
    pub rev: i64,
    /// The key as it was, when it existed.
    pub existing: Option<KeyValue>,
}

impl Recipes {
    pub fn new(ctx: Context) -> Arc<Self> {
        Arc::new(Self {
            kv: KvService::new(ctx.clone()),
            ctx,
        })
    }

    /// The lease a lock or campaign is held by: the request's, or, for 0, a new one of 60 s
    /// (etcd's session default), which nobody keeps alive.
    pub async fn session_lease(&self, lease: i64, token: &Token) -> Result<i64, Status> {
        use crate::proto::etcdserverpb::lease_server::Lease;
        if lease != 0 {
            return Ok(lease);
        }
        let leases = super::lease::LeaseService::new(
            self.ctx.clone(),
            tokio_util::sync::CancellationToken::new(),
        );
        let granted = leases
            .lease_grant(as_caller(
                crate::proto::etcdserverpb::LeaseGrantRequest { ttl: 60, id: 0 },
                token,
            ))
            .await?;
        Ok(granted.into_inner().id)
    }

    pub async fn txn(&self, t: TxnRequest, token: &Token) -> Result<TxnResponse, Status> {
        Ok(self.kv.txn(as_caller(t, token)).await?.into_inner())
    }

    /// The recipes' first step: puts `value` under `key` with `lease` unless the key exists
    /// (the same lock or candidacy asked for again), and learns its create revision.
    pub async fn claim(
        &self,
        key: &Bytes,
        value: &Bytes,
        lease: i64,
        token: &Token,
    ) -> Result<Claim, Status> {
        let t = TxnRequest {
            compare: vec![created_at(key, 0)],
            success: vec![put_op(key, value, lease)],
            failure: vec![get_op(key)],
        };
        let resp = self.txn(t, token).await?;
        let existing = if resp.succeeded {
            None
        } else {
            first_range(&resp).into_iter().next()
        };
        let rev = match &existing {
            Some(kv) => kv.create_revision,
            None if resp.succeeded => resp.header.as_ref().map_or(0, |h| h.revision),
            None => 0,
        };
        Ok(Claim {
            created: resp.succeeded,
            header: resp.header,
            rev,
            existing,
        })
    }

    /// Deletes `key` (an unlock, an abandoned waiter's key).
    pub async fn delete(&self, key: &Bytes, token: &Token) -> Result<TxnResponse, Status> {
        let t = TxnRequest {
            success: vec![delete_op(key)],
            ..Default::default()
        };
        self.txn(t, token).await
    }

    /// A linearizable read of the first-created key under `prefix`, and the header.
    pub async fn first_created_linearizable(
        &self,
        prefix: &Bytes,
        token: &Token,
    ) -> Result<
        (
            Option<KeyValue>,
            Option<crate::proto::etcdserverpb::ResponseHeader>,
        ),
        Status,
    > {
        use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
        let resp = self
            .kv
            .range(as_caller(
                RangeRequest {
                    key: prefix.clone(),
                    range_end: prefix_end(prefix),
                    limit: 1,
                    sort_order: SortOrder::Ascend as i32,
                    sort_target: SortTarget::Create as i32,
                    ..Default::default()
                },
                token,
            ))
            .await?
            .into_inner();
        Ok((resp.kvs.into_iter().next(), resp.header))
    }

    /// Waits until no live key under `prefix` has a create revision at or below
    /// `max_create` (etcd's `waitDeletes`).
    pub async fn wait_deletes(&self, prefix: &[u8], max_create: i64) {
        let range = KeyRange::prefix(prefix);
        let mut head = self.ctx.log.subscribe();
        loop {
            let state = self.ctx.log.state();
            let waiting = state
                .live_in(&range, state.revision)
                .any(|(_, v)| v.create_revision <= max_create);
            if !waiting {
                return;
            }
            if head.changed().await.is_err() {
                // The log is gone (shutting down): the request is cut short anyway.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Whether `key` is live in this node's state.
    pub fn is_live(&self, key: &[u8]) -> bool {
        let state = self.ctx.log.state();
        state
            .history(key)
            .and_then(|h| h.live_at(state.revision))
            .is_some()
    }

    /// Deletes `key` (a waiter's key when its request is cut short), in the background.
    pub fn delete_later(self: &Arc<Self>, key: Bytes, token: Token) {
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.delete(&key, &token).await {
                tracing::warn!(key = ?key, error = %e, "could not delete an abandoned waiter's key");
            }
        });
    }
}

/// Deletes a waiter's key if its request ends before it is done (the client went away or
/// its deadline passed), as etcd's recipes clean up.
pub struct Abandon {
    pub recipes: Arc<Recipes>,
    pub key: Option<Bytes>,
    pub token: Token,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.recipes.delete_later(key, self.token.take());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_prefixes_as_etcd_names_them() {
        assert_eq!(prefix_of(b"lock"), Bytes::from_static(b"lock/"));
        assert_eq!(key_of(b"lock/", 0x694d), Bytes::from_static(b"lock/694d"));
    }
}
