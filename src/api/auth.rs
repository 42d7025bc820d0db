//! etcd's Auth service: users, roles and permissions kept as etcd keeps them (see
//! [`crate::auth`]), changed through the log like any write (a follower forwards the
//! change, with the caller's token) and read linearizably. While authentication is
//! enabled, managing users and roles needs the root role, as in etcd.

use super::Context;
use crate::auth::{AuthError, AuthStore, Change, Permission};
use crate::cluster::forward;
use crate::log::{Request as LogRequest, Response as LogResponse};
use crate::proto::authpb;
use crate::proto::etcdserverpb::auth_client::AuthClient;
use crate::proto::etcdserverpb::auth_server::Auth;
use crate::proto::etcdserverpb::*;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// etcd's default `--bcrypt-cost`.
const BCRYPT_COST: u32 = 10;

pub struct AuthService {
    ctx: Context,
}

impl AuthService {
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }

    /// Applies `change` through the log; returns the head revision for the header.
    async fn change(&self, change: Change) -> Result<i64, Status> {
        match self.ctx.log.write(LogRequest::Auth(change)).await? {
            LogResponse::Auth { revision } => Ok(revision),
            other => Err(super::unexpected(&other)),
        }
    }

    /// The store as of a linearizable read.
    async fn store(&self) -> Result<(Arc<AuthStore>, i64), Status> {
        let state = self.ctx.read_state(false).await?;
        let store = match self.ctx.auth_store_in(&state)? {
            Some(store) => store,
            None => Arc::new(AuthStore::decode(&[])?),
        };
        Ok((store, state.revision))
    }
}

/// The bcrypt hash to store: of `password`, or `hashed` (base64 of a bcrypt hash, as etcd
/// 3.5+ clients may send) when given.
async fn password_hash(password: String, hashed: String) -> Result<String, Status> {
    use base64::Engine;
    if !hashed.is_empty() {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&hashed)
            .map_err(|_| {
                Status::invalid_argument(
                    "etcdserver: authentication failed, password was given for no password user",
                )
            })?;
        return String::from_utf8(raw).map_err(|_| {
            Status::invalid_argument(
                "etcdserver: authentication failed, password was given for no password user",
            )
        });
    }
    tokio::task::spawn_blocking(move || bcrypt::hash(password, BCRYPT_COST))
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::internal(format!("hashing the password: {e}")))
}

/// Checks that the caller may manage auth (the root role, while authentication is
/// enabled), then forwards the change to the leader when this node follows one.
macro_rules! forwarded {
    ($self:ident, $request:ident, $method:ident) => {
        $self.ctx.check_admin(&$request)?;
        if let Some(link) = $self.ctx.write_target(&$request)? {
            let token = forward::token(&$request);
            let answer = AuthClient::new(link.channel.clone())
                .$method(forward::outbound_with($request.into_inner(), token))
                .await;
            return forward::written(&$self.ctx.log, &link, answer).await;
        }
    };
}

fn permission_of(p: authpb::Permission) -> Permission {
    Permission {
        perm_type: p.perm_type,
        key: p.key.to_vec(),
        range_end: p.range_end.to_vec(),
    }
}

fn to_proto(p: &Permission) -> authpb::Permission {
    authpb::Permission {
        perm_type: p.perm_type,
        key: p.key.clone().into(),
        range_end: p.range_end.clone().into(),
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        r: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        forwarded!(self, r, auth_enable);
        let token_key = crate::auth::new_token_key();
        let revision = self.change(Change::Enable { token_key }).await?;
        let header = self.ctx.header(revision);
        Ok(forward::marked(
            &self.ctx.log,
            AuthEnableResponse { header },
        ))
    }

    async fn auth_disable(
        &self,
        r: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        forwarded!(self, r, auth_disable);
        let revision = self.change(Change::Disable).await?;
        let header = self.ctx.header(revision);
        Ok(forward::marked(
            &self.ctx.log,
            AuthDisableResponse { header },
        ))
    }

    async fn auth_status(
        &self,
        _r: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        let (store, revision) = self.store().await?;
        Ok(Response::new(AuthStatusResponse {
            header: self.ctx.header(revision),
            enabled: store.enabled,
            auth_revision: store.revision,
        }))
    }

    /// Checks the password against the user's bcrypt hash and issues a token any node
    /// accepts until `--auth-token-ttl` has passed.
    async fn authenticate(
        &self,
        r: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let r = r.into_inner();
        let (store, revision) = self.store().await?;
        if !store.enabled {
            return Err(AuthError::NotEnabled.into());
        }
        let user = store.users.get(&r.name).ok_or(AuthError::AuthFailed)?;
        let Some(hash) = user.password.clone() else {
            return Err(AuthError::AuthFailed.into());
        };
        let password = r.password;
        let ok =
            tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
        if !ok {
            return Err(AuthError::AuthFailed.into());
        }
        let expires =
            crate::clock::now_ms() as u64 + self.ctx.limits.auth_token_ttl.as_millis() as u64;
        Ok(Response::new(AuthenticateResponse {
            header: self.ctx.header(revision),
            token: store.issue(&r.name, expires),
        }))
    }

    async fn user_add(
        &self,
        r: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        forwarded!(self, r, user_add);
        let r = r.into_inner();
        let no_password = r.options.as_ref().is_some_and(|o| o.no_password);
        if r.name.is_empty() {
            return Err(AuthError::UserEmpty.into());
        }
        let password = if no_password {
            None
        } else {
            Some(password_hash(r.password, r.hashed_password).await?)
        };
        let revision = self
            .change(Change::UserAdd {
                name: r.name,
                password,
                no_password,
            })
            .await?;
        let header = self.ctx.header(revision);
        Ok(forward::marked(
            &self.ctx.log,
            AuthUserAddResponse { header },
        ))
    }

    async fn user_get(
        &self,
        r: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        // As etcd: the root role, or the user asking about itself.
        if let Some(c) = self.ctx.caller(r.metadata())? {
            if c.user != r.get_ref().name {
                c.check_admin()?;
            }
        }
        let (store, revision) = self.store().await?;
        let user = store
            .users
            .get(&r.into_inner().name)
            .ok_or(AuthError::UserNotFound)?;
        Ok(Response::new(AuthUserGetResponse {
            header: self.ctx.header(revision),
            roles: user.roles.clone(),
        }))
    }

    async fn user_list(
        &self,
        r: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        self.ctx.check_admin(&r)?;
        let (store, revision) = self.store().await?;
        Ok(Response::new(AuthUserListResponse {
            header: self.ctx.header(revision),
            users: store.users.keys().cloned().collect(),
        }))
    }

    async fn user_delete(
        &self,
        r: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        forwarded!(self, r, user_delete);
        let name = r.into_inner().name;
        let revision = self.change(Change::UserDelete { name }).await?;
        let header = self.ctx.header(revision);
        Ok(forward::marked(
            &self.ctx.log,
            AuthUserDeleteResponse { header },
        ))
    }

    async fn user_change_password(
        &self,
        r: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        forwarded!(self, r, user_change_password);
        let r = r.into_inner();
        let password = Some(password_hash(r.password, r.hashed_password).await?);
        let revision = self
            .change(Change::UserChangePassword {
                name: r.name,
                password,
            })
            .await?;
        let header = self.ctx.header(revision);
        Ok(forward::marked(
            &self.ctx.log,
            AuthUserChangePasswordResponse { header },
        ))
    }

    async fn user_grant_role(
        &self,
        r: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        forwarded!(self, r, user_grant_role);
        let r = r.into_inner();
        let revision = self
            .change(Change::UserGrantRole {
                user: r.user,
                role: r.role,
            })
            .await?;
        let header = self.ctx.header(revision);
        Ok(forward::marked(
            &self.ctx.log,
            AuthUserGrantRoleResponse { header },
        ))
    }

    async fn user_revoke_role(
        &self,
        r: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        forwarded!(self, r, user_revoke_role);
        let r = r.into_inner();
        let revision = self
            .change(Change::UserRevokeRole {
                name: r.name,
                role: r.role,
            })
            .await?;
        let header = self.ctx.header(revision);
        Ok(forward::marked(
            &self.ctx.log,
            AuthUserRevokeRoleResponse { header },
        ))
    }

    async fn role_add(
        &self,
        r: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        forwarded!(self, r, role_add);
        let name = r.into_inner().name;
        let revision = self.change(Change::RoleAdd { name }).await?;
        let header = self.ctx.header(revision);
        Ok(forward::marked(
            &self.ctx.log,
            AuthRoleAddResponse { header },
        ))
    }

    async fn role_get(
        &self,
        r: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        // As etcd: the root role, or a user holding the role asked about.
        if let Some(c) = self.ctx.caller(r.metadata())? {
            let holds = c
                .store
                .users
                .get(&c.user)
                .is_some_and(|u| u.roles.contains(&r.get_ref().role));
            if !holds {
                c.check_admin()?;
            }
        }
        let name = r.into_inner().role;
        let (store, revision) = self.store().await?;
        let role = store.roles.get(&name).ok_or(AuthError::RoleNotFound)?;
        let perm = if name == crate::auth::ROOT {
            vec![to_proto(&crate::auth::root_permission())]
        } else {
            role.permissions.iter().map(to_proto).collect()
        };
        Ok(Response::new(AuthRoleGetResponse {
            header: self.ctx.header(revision),
            perm,
        }))
    }

    async fn role_list(
        &self,
        r: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        self.ctx.check_admin(&r)?;
        let (store, revision) = self.store().await?;
        Ok(Response::new(AuthRoleListResponse {
            header: self.ctx.header(revision),
            roles: store.roles.keys().cloned().collect(),
        }))
    }

    async fn role_delete(
        &self,
        r: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        forwarded!(self, r, role_delete);
        let name = r.into_inner().role;
        let revision = self.change(Change::RoleDelete { name }).await?;
        let header = self.ctx.header(revision);
        Ok(forward::marked(
            &self.ctx.log,
            AuthRoleDeleteResponse { header },
        ))
    }

    async fn role_grant_permission(
        &self,
        r: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        forwarded!(self, r, role_grant_permission);
        let r = r.into_inner();
        let revision = self
            .change(Change::RoleGrantPermission {
                name: r.name,
                permission: r.perm.map(permission_of),
            })
            .await?;
        let header = self.ctx.header(revision);
        Ok(forward::marked(
            &self.ctx.log,
            AuthRoleGrantPermissionResponse { header },
        ))
    }

    async fn role_revoke_permission(
        &self,
        r: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        forwarded!(self, r, role_revoke_permission);
        let r = r.into_inner();
        let revision = self
            .change(Change::RoleRevokePermission {
                role: r.role,
                key: r.key.to_vec(),
                range_end: r.range_end.to_vec(),
            })
            .await?;
        let header = self.ctx.header(revision);
        Ok(forward::marked(
            &self.ctx.log,
            AuthRoleRevokePermissionResponse { header },
        ))
    }
}
