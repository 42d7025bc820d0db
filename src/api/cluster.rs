//! etcd's Cluster service: the members are the nodes that share the bucket, as the leader
//! sees them (itself and every follower with an open stream). Membership is not configured
//! here (a node joins by following and leaves by stopping), so changes are refused.

use super::{errors, Context};
use crate::cluster::forward;
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
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        // A follower asks the leader, who knows every follower; without one it reports
        // what it last heard.
        if let Ok(Some(link)) = self.ctx.write_target(&request) {
            let mut client = cluster_client::ClusterClient::new(link.channel.clone());
            if let Ok(answer) = client
                .member_list(forward::outbound(request.into_inner()))
                .await
            {
                return Ok(Response::new(answer.into_inner()));
            }
        }
        let state = self.ctx.log.state();
        Ok(Response::new(MemberListResponse {
            header: self.ctx.header(state.revision),
            members: self
                .ctx
                .node
                .members()
                .into_iter()
                .map(|m| Member {
                    id: m.id,
                    name: m.name,
                    peer_ur_ls: vec![],
                    client_ur_ls: m.client_urls,
                    is_learner: false,
                })
                .collect(),
        }))
    }

    async fn member_promote(
        &self,
        _r: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(errors::unimplemented("Cluster.MemberPromote"))
    }
}
