//! etcd's Lock service: a mutex named by a key prefix. The holder is the live key under
//! `name/` created first; a waiter holds its own key `name/<lease>` and waits for every
//! older one to go, as etcd's server does with its `concurrency.Mutex`. A lock lives as
//! long as its lease, so a crashed holder frees it when the lease expires.

use super::concurrency::{key_of, prefix_of, Abandon, Recipes};
use super::Context;
use crate::proto::v3lockpb::lock_server::Lock;
use crate::proto::v3lockpb::*;
use bytes::Bytes;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct LockService {
    recipes: Arc<Recipes>,
}

impl LockService {
    pub fn new(ctx: Context) -> Self {
        Self {
            recipes: Recipes::new(ctx),
        }
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, r: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let token = crate::cluster::forward::token(&r);
        let r = r.into_inner();
        let lease = self.recipes.session_lease(r.lease, &token).await?;
        let prefix = prefix_of(&r.name);
        let key = key_of(&prefix, lease);
        let mine = self
            .recipes
            .claim(&key, &Bytes::new(), lease, &token)
            .await?
            .rev;
        // From here until the lock is held, a request cut short gives its place up.
        let mut abandon = Abandon {
            recipes: self.recipes.clone(),
            key: Some(key.clone()),
            token: token.clone(),
        };
        self.recipes.wait_deletes(&prefix, mine - 1).await;
        abandon.key = None;
        if !self.recipes.is_live(&key) {
            return Err(Status::unknown("mutex: session is expired"));
        }
        let state = self.recipes.ctx.log.state();
        Ok(Response::new(LockResponse {
            header: self.recipes.ctx.header(state.revision),
            key,
        }))
    }

    async fn unlock(&self, r: Request<UnlockRequest>) -> Result<Response<UnlockResponse>, Status> {
        let token = crate::cluster::forward::token(&r);
        let key = r.into_inner().key;
        let resp = self.recipes.delete(&key, &token).await?;
        Ok(Response::new(UnlockResponse {
            header: resp.header,
        }))
    }
}
