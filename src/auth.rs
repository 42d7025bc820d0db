//! etcd's users and roles: the store the Auth service manages, with etcd's rules for each
//! change and etcd's errors.
//!
//! The store is small and changes rarely, so it is kept whole: every change is applied by
//! the log's writer to the store of the state it writes on (so two concurrent changes
//! cannot lose one another) and recorded as one control record holding the store as it is
//! after the change; replay keeps the last one, and snapshots carry it. Passwords are kept
//! as etcd keeps them, bcrypt hashes, computed before the change is proposed.
//!
//! Once enabled, a client authenticates with a password and gets a token; every request
//! carries it and is checked against the user's roles here. Tokens are signed with a key
//! kept in the store (so any node verifies any node's tokens, and the bucket, which already
//! holds every key and value, is their trust root), expire after `--auth-token-ttl`, and
//! die with their user or its password. A client refreshes an expired one, as against
//! etcd's simple tokens.

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
    /// Hex of the key tokens are signed with, made when authentication is first enabled.
    #[serde(default)]
    pub token_key: String,
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
    /// `token_key`: the signing key to use if the store has none yet.
    Enable {
        token_key: String,
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
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: invalid auth token")]
    InvalidToken,
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
            Change::Enable { token_key } => {
                if self.enabled {
                    return Ok(false);
                }
                let root = self.users.get(ROOT).ok_or(AuthError::RootUserNotExist)?;
                if !root.roles.iter().any(|r| r == ROOT) {
                    return Err(AuthError::RootRoleNotExist);
                }
                self.enabled = true;
                if self.token_key.is_empty() {
                    self.token_key = token_key.clone();
                }
                // As etcd: enabling is no new revision.
                return Ok(true);
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

impl AuthStore {
    /// Whether `user` holds the root role.
    pub fn is_admin(&self, user: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == ROOT))
    }

    /// Whether `user` may `need` (READ or WRITE) the key `key`, or the range
    /// `[key, range_end)` (`range_end` `\0`: every key from `key` on), as etcd decides: the
    /// root role may do anything; otherwise the user's permissions of a fitting type,
    /// merged, must cover the whole range.
    pub fn permits(&self, user: &str, key: &[u8], range_end: &[u8], need: i32) -> bool {
        let Some(u) = self.users.get(user) else {
            return false;
        };
        if u.roles.iter().any(|r| r == ROOT) {
            return true;
        }
        // Intervals [start, end) with `None` as no end.
        let mut granted: Vec<(Vec<u8>, Option<Vec<u8>>)> = u
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| r.permissions.iter())
            .filter(|p| p.perm_type == READWRITE || p.perm_type == need)
            .map(|p| (p.key.clone(), interval_end(&p.key, &p.range_end)))
            .collect();
        granted.sort();
        let want_end = interval_end(key, range_end);
        // Walk the merged intervals from `key` on.
        let mut covered_to: Option<Vec<u8>> = None;
        let mut reached = false;
        for (start, end) in granted {
            let from = covered_to.clone().unwrap_or_else(|| key.to_vec());
            if !reached {
                if start.as_slice() > key {
                    continue;
                }
                if end.as_ref().is_some_and(|e| e.as_slice() <= key) {
                    continue;
                }
                reached = true;
                covered_to = end;
            } else if start <= from {
                covered_to = match (covered_to, end) {
                    (None, _) | (_, None) => None,
                    (Some(a), Some(b)) => Some(a.max(b)),
                };
            } else {
                break;
            }
            if covered_to.is_none() {
                return true;
            }
            if let (Some(c), Some(w)) = (&covered_to, &want_end) {
                if c >= w {
                    return true;
                }
            }
        }
        false
    }

    /// A token for `user`, valid until `expires_ms`.
    pub fn issue(&self, user: &str, expires_ms: u64) -> String {
        use base64::Engine;
        let name = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(user);
        let body = format!("{name}.{expires_ms}.{}", self.fingerprint(user));
        format!("{body}.{}", self.sign(&body))
    }

    /// The user a token names, if it is this store's, unexpired at `now_ms`, and its user
    /// still exists with the same password.
    pub fn verify(&self, token: &str, now_ms: u64) -> Result<String, AuthError> {
        use base64::Engine;
        let (body, sig) = token.rsplit_once('.').ok_or(AuthError::InvalidToken)?;
        if !constant_time_eq(self.sign(body).as_bytes(), sig.as_bytes()) {
            return Err(AuthError::InvalidToken);
        }
        let mut parts = body.split('.');
        let (Some(name), Some(expires), Some(fingerprint), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::InvalidToken);
        };
        let user = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(name)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or(AuthError::InvalidToken)?;
        let expires: u64 = expires.parse().map_err(|_| AuthError::InvalidToken)?;
        if now_ms >= expires
            || !self.users.contains_key(&user)
            || fingerprint != self.fingerprint(&user)
        {
            return Err(AuthError::InvalidToken);
        }
        Ok(user)
    }

    /// Changes with the user's password (and so invalidates its tokens).
    fn fingerprint(&self, user: &str) -> String {
        use sha2::Digest;
        let hash = self
            .users
            .get(user)
            .and_then(|u| u.password.clone())
            .unwrap_or_default();
        let d = sha2::Sha256::digest(hash.as_bytes());
        hex(&d[..8])
    }

    fn sign(&self, body: &str) -> String {
        use hmac::{KeyInit, Mac};
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(self.token_key.as_bytes())
            .expect("HMAC takes any key length");
        mac.update(body.as_bytes());
        hex(&mac.finalize().into_bytes())
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh key to sign tokens with.
pub fn new_token_key() -> String {
    hex(&rand::random::<[u8; 32]>())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The exclusive end of a key or range: a single key ends just after itself, `\0` has no
/// end.
fn interval_end(key: &[u8], range_end: &[u8]) -> Option<Vec<u8>> {
    match range_end {
        [] => {
            let mut e = key.to_vec();
            e.push(0);
            Some(e)
        }
        [0] => None,
        end => Some(end.to_vec()),
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

    #[test]
    fn permissions_cover_ranges_as_etcds_do() {
        let mut s = AuthStore::decode(&[]).unwrap();
        add_user(&mut s, "u").unwrap();
        s.apply(&Change::RoleAdd { name: "r".into() }).unwrap();
        s.apply(&Change::UserGrantRole {
            user: "u".into(),
            role: "r".into(),
        })
        .unwrap();
        let grant = |s: &mut AuthStore, key: &[u8], end: &[u8], t| {
            s.apply(&Change::RoleGrantPermission {
                name: "r".into(),
                permission: Some(Permission {
                    perm_type: t,
                    key: key.to_vec(),
                    range_end: end.to_vec(),
                }),
            })
            .unwrap();
        };
        grant(&mut s, b"a", b"c", READ);
        grant(&mut s, b"c", b"e", READWRITE);
        grant(&mut s, b"k", b"", WRITE);
        grant(&mut s, b"x", b"\0", READ);
        assert!(s.permits("u", b"b", b"", READ));
        assert!(s.permits("u", b"a", b"e", READ), "merged across a and c");
        assert!(!s.permits("u", b"a", b"f", READ));
        assert!(!s.permits("u", b"b", b"", WRITE));
        assert!(s.permits("u", b"d", b"", WRITE));
        assert!(s.permits("u", b"k", b"", WRITE));
        assert!(!s.permits("u", b"k", b"l", WRITE), "a key is not its range");
        assert!(!s.permits("u", b"k", b"", READ));
        assert!(s.permits("u", b"y", b"\0", READ));
        assert!(!s.permits("u", b"w", b"\0", READ));
        assert!(!s.permits("nobody", b"b", b"", READ));
        s.apply(&Change::UserGrantRole {
            user: "u".into(),
            role: ROOT.into(),
        })
        .unwrap();
        assert!(s.permits("u", b"zzz", b"\0", WRITE));
    }

    #[test]
    fn tokens_are_signed_expire_and_die_with_the_password() {
        let mut s = AuthStore::decode(&[]).unwrap();
        add_user(&mut s, "root").unwrap();
        assert_eq!(
            s.apply(&Change::Enable {
                token_key: "k1".into()
            }),
            Err(AuthError::RootRoleNotExist)
        );
        s.apply(&Change::UserGrantRole {
            user: "root".into(),
            role: ROOT.into(),
        })
        .unwrap();
        let revision = s.revision;
        assert_eq!(
            s.apply(&Change::Enable {
                token_key: "k1".into()
            }),
            Ok(true)
        );
        assert_eq!(s.revision, revision, "enabling is no new revision");
        let t = s.issue("root", 1000);
        assert_eq!(s.verify(&t, 999), Ok("root".into()));
        assert_eq!(s.verify(&t, 1000), Err(AuthError::InvalidToken), "expired");
        let forged = t.replace("1000", "9999");
        assert_eq!(s.verify(&forged, 999), Err(AuthError::InvalidToken));
        let mut other = s.clone();
        other.token_key = "k2".into();
        assert_eq!(
            other.verify(&t, 999),
            Err(AuthError::InvalidToken),
            "another store's key"
        );
        s.apply(&Change::UserChangePassword {
            name: "root".into(),
            password: Some("other".into()),
        })
        .unwrap();
        assert_eq!(
            s.verify(&t, 999),
            Err(AuthError::InvalidToken),
            "password changed"
        );
    }
}
