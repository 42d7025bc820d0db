//! etcd's Election service: the leader of election `name` is the live key under `name/`
//! created first, and its value is what the leader proclaims. Campaigns, proclamations and
//! resignations are compare-and-swap transactions on the candidate's key (its create
//! revision names the leadership), as etcd's server runs them with its
//! `concurrency.Election`; a leader that loses its lease loses the election.

use super::concurrency::{
    created_at, delete_op, first_created, key_of, prefix_of, put_op, Abandon, Recipes, Token,
};
use super::Context;
use crate::cluster::forward::token as token_of;
use crate::proto::etcdserverpb::TxnRequest;
use crate::proto::v3electionpb::election_server::Election;
use crate::proto::v3electionpb::*;
use bytes::Bytes;
use futures::Stream;
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct ElectionService {
    recipes: Arc<Recipes>,
}

impl ElectionService {
    pub fn new(ctx: Context) -> Self {
        Self {
            recipes: Recipes::new(ctx),
        }
    }

    /// Puts `value` under the leader's key if it still holds that leadership.
    async fn proclaim_as(
        &self,
        leader: &LeaderKey,
        value: &Bytes,
        token: &Token,
    ) -> Result<crate::proto::etcdserverpb::TxnResponse, Status> {
        let t = TxnRequest {
            compare: vec![created_at(&leader.key, leader.rev)],
            success: vec![put_op(&leader.key, value, leader.lease)],
            failure: vec![],
        };
        let resp = self.recipes.txn(t, token).await?;
        if !resp.succeeded {
            return Err(not_leader());
        }
        Ok(resp)
    }
}

fn not_leader() -> Status {
    Status::unknown("election: not leader")
}

fn missing_leader() -> Status {
    Status::unknown("\"leader\" field must be provided")
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        r: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let token = token_of(&r);
        let r = r.into_inner();
        let lease = self.recipes.session_lease(r.lease, &token).await?;
        let prefix = prefix_of(&r.name);
        let key = key_of(&prefix, lease);
        let claim = self.recipes.claim(&key, &r.value, lease, &token).await?;
        let leader = LeaderKey {
            name: r.name.clone(),
            key: key.clone(),
            rev: claim.rev,
            lease,
        };
        let mut abandon = Abandon {
            recipes: self.recipes.clone(),
            key: Some(key.clone()),
            token: token.clone(),
        };
        if !claim.created {
            // Campaigning again with the same lease: the same candidacy, its value updated.
            let Some(kv) = claim.existing else {
                return Err(not_leader());
            };
            if kv.value != r.value {
                self.proclaim_as(&leader, &r.value, &token).await?;
            }
        }
        self.recipes.wait_deletes(&prefix, leader.rev - 1).await;
        abandon.key = None;
        Ok(Response::new(CampaignResponse {
            header: claim.header,
            leader: Some(leader),
        }))
    }

    async fn proclaim(
        &self,
        r: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let token = token_of(&r);
        let r = r.into_inner();
        let leader = r.leader.ok_or_else(missing_leader)?;
        let resp = self.proclaim_as(&leader, &r.value, &token).await?;
        Ok(Response::new(ProclaimResponse {
            header: resp.header,
        }))
    }

    async fn leader(&self, r: Request<LeaderRequest>) -> Result<Response<LeaderResponse>, Status> {
        let token = token_of(&r);
        let prefix = prefix_of(&r.into_inner().name);
        let (kv, header) = self
            .recipes
            .first_created_linearizable(&prefix, &token)
            .await?;
        let kv = kv.ok_or_else(|| Status::unknown("election: no leader"))?;
        Ok(Response::new(LeaderResponse {
            header,
            kv: Some(kv),
        }))
    }

    type ObserveStream = ObserveStream;

    /// The leader's key and value as this node's state has them, then each new leader or
    /// value; nothing while there is no leader.
    async fn observe(
        &self,
        r: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let prefix = prefix_of(&r.get_ref().name);
        if let Some(c) = self.recipes.ctx.caller(r.metadata())? {
            c.check(
                &prefix,
                &crate::mvcc::prefix_end(&prefix),
                crate::auth::READ,
            )?;
        }
        let recipes = self.recipes.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut head = recipes.ctx.log.subscribe();
            let mut sent: Option<(Bytes, i64)> = None;
            loop {
                let state = recipes.ctx.log.state();
                if let Some(kv) = first_created(&state, &prefix) {
                    let seen = (kv.key.clone(), kv.mod_revision);
                    if sent.as_ref() != Some(&seen) {
                        let resp = LeaderResponse {
                            header: recipes.ctx.header(state.revision),
                            kv: Some(kv),
                        };
                        if tx.send(Ok(resp)).await.is_err() {
                            return;
                        }
                        sent = Some(seen);
                    }
                }
                tokio::select! {
                    changed = head.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn resign(&self, r: Request<ResignRequest>) -> Result<Response<ResignResponse>, Status> {
        let token = token_of(&r);
        let leader = r.into_inner().leader.ok_or_else(missing_leader)?;
        let t = TxnRequest {
            compare: vec![created_at(&leader.key, leader.rev)],
            success: vec![delete_op(&leader.key)],
            failure: vec![],
        };
        let resp = self.recipes.txn(t, &token).await?;
        Ok(Response::new(ResignResponse {
            header: resp.header,
        }))
    }
}
