//! etcd's users and roles: the store the Auth service manages, with etcd's rules for each
//! change and etcd's errors.
//!
//! The store is small and changes rarely, so it is kept whole: every change is applied by
//! the log's writer to the store of the state it writes on (so two concurrent changes
//! cannot lose one another) and recorded as one control record holding the store as it is
//! after the change; replay keeps the last one, and snapshots carry it. Passwords are kept
//! as etcd keeps them, bcrypt hashes, computed before the change is proposed.
//!
//! Enabling authentication (and with it tokens and permission checks on every request) is
//! not built yet: `AuthEnable` answers `Unimplemented`, so the store only ever has
//! `enabled == false`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const ROOT: &str = "root";

/// etcd's `authpb.Permission.Type`.
pub const READ: i32 = 0;
pub const WRITE: i32 = 1;
pub const READWRITE: i32 = 2;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthStore {
    pub enabled: bool,
    /// etcd's auth revision: 1 for a new store, one more for each change.
    pub revision: u64,
    pub users: BTreeMap<String, User>,
    pub roles: BTreeMap<String, Role>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The bcrypt hash; None for a user added with `no_password`.
    pub password: Option<String>,
    pub no_password: bool,
    /// Sorted, as etcd keeps them.
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// Sorted by key, as etcd keeps them.
    pub permissions: Vec<Permission>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    pub perm_type: i32,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

/// The permission etcd reports for the root role: read and write on every key.
pub fn root_permission() -> Permission {
    Permission {
        perm_type: READWRITE,
        key: vec![],
        range_end: vec![0],
    }
}

/// One change, as proposed to the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    UserAdd {
        name: String,
        password: Option<String>,
        no_password: bool,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        password: Option<String>,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        name: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        name: String,
    },
    RoleGrantPermission {
        name: String,
        permission: Option<Permission>,
    },
    RoleRevokePermission {
        role: String,
        key: Vec<u8>,
        range_end: Vec<u8>,
    },
    Disable,
}

/// etcd's auth errors; the API maps each to etcd's gRPC status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExists,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExists,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    #[error("etcdserver: authentication is not enabled")]
    NotEnabled,
    #[error("auth store record: {0}")]
    Corrupt(String),
}

impl AuthStore {
    /// The store a state records (`encoded`: its last auth record; empty: none yet).
    pub fn decode(encoded: &[u8]) -> Result<Self, AuthError> {
        if encoded.is_empty() {
            return Ok(Self {
                revision: 1,
                ..Default::default()
            });
        }
        serde_json::from_slice(encoded).map_err(|e| AuthError::Corrupt(e.to_string()))
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("the auth store serializes")
    }

    /// Applies `change` with etcd's rules. Ok(false): nothing changed (etcd ignores a role
    /// granted twice and a disable while disabled, without a new revision).
    pub fn apply(&mut self, change: &Change) -> Result<bool, AuthError> {
        match change {
            Change::UserAdd {
                name,
                password,
                no_password,
            } => {
                if name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if self.users.contains_key(name) {
                    return Err(AuthError::UserAlreadyExists);
                }
                self.users.insert(
                    name.clone(),
                    User {
                        password: if *no_password { None } else { password.clone() },
                        no_password: *no_password,
                        roles: vec![],
                    },
                );
            }
            Change::UserDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.users.remove(name).ok_or(AuthError::UserNotFound)?;
            }
            Change::UserChangePassword { name, password } => {
                let user = self.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
                if !user.no_password {
                    user.password = password.clone();
                }
            }
            Change::UserGrantRole { user, role } => {
                if !self.users.contains_key(user) {
                    return Err(AuthError::UserNotFound);
                }
                if role != ROOT && !self.roles.contains_key(role) {
                    return Err(AuthError::RoleNotFound);
                }
                let u = self.users.get_mut(user).expect("checked above");
                match u.roles.binary_search(role) {
                    Ok(_) => return Ok(false),
                    Err(at) => u.roles.insert(at, role.clone()),
                }
            }
            Change::UserRevokeRole { name, role } => {
                if self.enabled && name == ROOT && role == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let user = self.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
                let before = user.roles.len();
                user.roles.retain(|r| r != role);
                if user.roles.len() == before {
                    return Err(AuthError::RoleNotGranted);
                }
            }
            Change::RoleAdd { name } => {
                if name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if self.roles.contains_key(name) {
                    return Err(AuthError::RoleAlreadyExists);
                }
                self.roles.insert(name.clone(), Role::default());
            }
            Change::RoleDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.roles.remove(name).ok_or(AuthError::RoleNotFound)?;
                for user in self.users.values_mut() {
                    user.roles.retain(|r| r != name);
                }
            }
            Change::RoleGrantPermission { name, permission } => {
                let p = permission.as_ref().ok_or(AuthError::PermissionNotGiven)?;
                if !valid_range(&p.key, &p.range_end) {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let role = self.roles.get_mut(name).ok_or(AuthError::RoleNotFound)?;
                let at = role.permissions.partition_point(|q| q.key < p.key);
                match role.permissions.get_mut(at) {
                    Some(q) if q.key == p.key && q.range_end == p.range_end => {
                        q.perm_type = p.perm_type
                    }
                    _ => {
                        role.permissions.push(p.clone());
                        role.permissions.sort_by(|a, b| a.key.cmp(&b.key));
                    }
                }
            }
            Change::RoleRevokePermission {
                role,
                key,
                range_end,
            } => {
                let r = self.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
                let before = r.permissions.len();
                r.permissions
                    .retain(|p| !(p.key == *key && p.range_end == *range_end));
                if r.permissions.len() == before {
                    return Err(AuthError::PermissionNotGranted);
                }
            }
            Change::Disable => {
                if !self.enabled {
                    return Ok(false);
                }
                self.enabled = false;
            }
        }
        self.revision += 1;
        Ok(true)
    }
}

/// etcd's rule for a permission's range: a key, and no end, the end `\0` (every key from
/// the key on), or an end after the key.
fn valid_range(key: &[u8], range_end: &[u8]) -> bool {
    !key.is_empty() && (range_end.is_empty() || range_end == [0] || key < range_end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add_user(s: &mut AuthStore, name: &str) -> Result<bool, AuthError> {
        s.apply(&Change::UserAdd {
            name: name.into(),
            password: Some("hash".into()),
            no_password: false,
        })
    }

    #[test]
    fn users_and_roles_follow_etcds_rules() {
        let mut s = AuthStore::decode(&[]).unwrap();
        assert_eq!(s.revision, 1);
        assert_eq!(add_user(&mut s, ""), Err(AuthError::UserEmpty));
        assert_eq!(add_user(&mut s, "alice"), Ok(true));
        assert_eq!(add_user(&mut s, "alice"), Err(AuthError::UserAlreadyExists));
        let grant = |role: &str| Change::UserGrantRole {
            user: "alice".into(),
            role: role.into(),
        };
        assert_eq!(s.apply(&grant("reader")), Err(AuthError::RoleNotFound));
        assert_eq!(
            s.apply(&grant("root")),
            Ok(true),
            "root needs no role record"
        );
        s.apply(&Change::RoleAdd {
            name: "reader".into(),
        })
        .unwrap();
        assert_eq!(s.apply(&grant("reader")), Ok(true));
        assert_eq!(
            s.apply(&grant("reader")),
            Ok(false),
            "granted twice: ignored"
        );
        assert_eq!(s.users["alice"].roles, vec!["reader", "root"]);
        let perm = |key: &[u8], end: &[u8], t| Change::RoleGrantPermission {
            name: "reader".into(),
            permission: Some(Permission {
                perm_type: t,
                key: key.to_vec(),
                range_end: end.to_vec(),
            }),
        };
        assert_eq!(
            s.apply(&perm(b"b", b"a", READ)),
            Err(AuthError::InvalidAuthMgmt)
        );
        s.apply(&perm(b"k", b"", READ)).unwrap();
        s.apply(&perm(b"a", b"\0", WRITE)).unwrap();
        s.apply(&perm(b"k", b"", READWRITE)).unwrap();
        let keys: Vec<_> = s.roles["reader"]
            .permissions
            .iter()
            .map(|p| (p.key.clone(), p.perm_type))
            .collect();
        assert_eq!(
            keys,
            vec![(b"a".to_vec(), WRITE), (b"k".to_vec(), READWRITE)]
        );
        s.apply(&Change::RoleDelete {
            name: "reader".into(),
        })
        .unwrap();
        assert_eq!(
            s.users["alice"].roles,
            vec!["root"],
            "a deleted role leaves its users"
        );
        let again = s.clone();
        assert_eq!(AuthStore::decode(&again.encode()).unwrap(), again);
        assert_eq!(s.apply(&Change::Disable), Ok(false));
    }
}
