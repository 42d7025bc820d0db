//! etcd's Cluster service: Netsy reports the node serving the request as the one member.
//! Membership changes are not raft changes here (nodes share a bucket), so they are
//! refused.

use super::{errors, Context};
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::*;
use tonic::{Request, Response, Status};

pub struct ClusterService {
    ctx: Context,
}

impl ClusterService {
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        _r: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        Err(errors::unimplemented("Cluster.MemberAdd"))
    }

    async fn member_remove(
        &self,
        _r: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(errors::unimplemented("Cluster.MemberRemove"))
    }

    async fn member_update(
        &self,
        _r: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(errors::unimplemented("Cluster.MemberUpdate"))
    }

    async fn member_list(
        &self,
        _r: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        let state = self.ctx.log.state();
        Ok(Response::new(MemberListResponse {
            header: self.ctx.header(state.revision),
            members: vec![Member {
                id: self.ctx.ids.member_id,
                name: self.ctx.ids.name.clone(),
                peer_ur_ls: vec![],
                client_ur_ls: self.ctx.ids.client_urls.clone(),
                is_learner: false,
            }],
        }))
    }

    async fn member_promote(
        &self,
        _r: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(errors::unimplemented("Cluster.MemberPromote"))
    }
}
