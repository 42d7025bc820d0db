//! etcd's backend layout: which buckets hold what, and how keys and values are encoded, so
//! that a state can be written as the database etcd itself would hold, and hashed as etcd
//! hashes its own.
//!
//! Only what an etcd restored from the file needs is written: `key` (every retained
//! revision), `lease`, `meta` (compaction marks, storage version), `alarm`, and the users
//! and roles (`auth`, `authUsers`, `authRoles`). Members and the cluster version are left out: `snapshot restore`
//! rewrites membership anyway, and a cluster version newer than the etcd restoring it (3.4
//! refuses 3.6's) would stop that etcd from starting.

use crate::mvcc::{Ordered, State};
use crate::proto::{etcdserverpb, mvccpb};
use bytes::Bytes;
use prost::Message;

pub const KEY: &[u8] = b"key";
pub const AUTH: &[u8] = b"auth";
pub const AUTH_USERS: &[u8] = b"authUsers";
pub const AUTH_ROLES: &[u8] = b"authRoles";
pub const AUTH_ENABLED: &[u8] = b"authEnabled";
pub const AUTH_REVISION: &[u8] = b"authRevision";
pub const META: &[u8] = b"meta";
pub const LEASE: &[u8] = b"lease";
pub const ALARM: &[u8] = b"alarm";

/// The storage version written to `meta`: 3.6's layout, which etcd 3.6 and later read as
/// theirs and 3.4 and 3.5 ignore (3.7 adds nothing to it; a 3.6 etcd refuses "3.7.0").
pub const STORAGE_VERSION: &str = "3.6.0";

pub const SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";
pub const FINISHED_COMPACT: &[u8] = b"finishedCompactRev";
pub const CONSISTENT_INDEX: &[u8] = b"consistent_index";
pub const TERM: &[u8] = b"term";
pub const STORAGE_VERSION_KEY: &[u8] = b"storageVersion";

/// etcd's `leasepb.Lease` as stored in the `lease` bucket.
#[derive(Clone, PartialEq, Message)]
pub struct LeaseRecord {
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(int64, tag = "2")]
    pub ttl: i64,
    #[prost(int64, tag = "3")]
    pub remaining_ttl: i64,
}

/// A revision as a `key` bucket key: main and sub revision big-endian around `_`, and a
/// trailing `t` for a tombstone.
pub fn revision_key(main: i64, sub: i64, tombstone: bool) -> Vec<u8> {
    let mut k = Vec::with_capacity(18);
    k.extend_from_slice(&main.to_be_bytes());
    k.push(b'_');
    k.extend_from_slice(&sub.to_be_bytes());
    if tombstone {
        k.push(b't');
    }
    k
}

/// Reads a `key` bucket key: (main, sub, tombstone).
pub fn parse_revision_key(k: &[u8]) -> Option<(i64, i64, bool)> {
    let tombstone = match k.len() {
        17 => false,
        18 if k[17] == b't' => true,
        _ => return None,
    };
    if k[8] != b'_' {
        return None;
    }
    let main = i64::from_be_bytes(k[0..8].try_into().ok()?);
    let sub = i64::from_be_bytes(k[9..17].try_into().ok()?);
    Some((main, sub, tombstone))
}

/// The `key` bucket value of a version: the whole `KeyValue`, or only the key for a
/// tombstone, encoded as etcd encodes it (fields in number order, zero fields left out).
pub fn key_value(o: &Ordered<'_>) -> Vec<u8> {
    let kv = if o.version.is_tombstone() {
        mvccpb::KeyValue {
            key: o.key.to_bytes(),
            ..Default::default()
        }
    } else {
        o.version.to_kv(o.key, false)
    };
    kv.encode_to_vec()
}

/// The `key` bucket: every retained version, in revision order.
pub fn key_entries(state: &State) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> + '_ {
    state.ordered_versions().map(|o| {
        let k = revision_key(o.version.mod_revision, o.sub, o.version.is_tombstone());
        (k, key_value(&o))
    })
}

/// A bucket: its name and its entries in key order.
pub type Bucket<'a> = (
    &'static [u8],
    Box<dyn Iterator<Item = (Vec<u8>, Vec<u8>)> + 'a>,
);

/// Every bucket of the database `state` is written as, in name order (bbolt's order).
/// `alarms` are the member ids with an active NOSPACE alarm.
pub fn buckets<'a>(state: &'a State, alarms: &[u64]) -> Vec<Bucket<'a>> {
    let mut alarm: Vec<(Vec<u8>, Vec<u8>)> = alarms
        .iter()
        .map(|&member_id| {
            let a = etcdserverpb::AlarmMember {
                member_id,
                alarm: etcdserverpb::AlarmType::Nospace as i32,
            };
            (a.encode_to_vec(), Vec::new())
        })
        .collect();
    alarm.sort();
    let mut leases: Vec<(Vec<u8>, Vec<u8>)> = state
        .leases()
        .map(|l| {
            let record = LeaseRecord {
                id: l.id,
                ttl: l.ttl,
                remaining_ttl: 0,
            };
            (l.id.to_be_bytes().to_vec(), record.encode_to_vec())
        })
        .collect();
    leases.sort();
    let mut meta: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (
            CONSISTENT_INDEX.to_vec(),
            (state.revision as u64).to_be_bytes().to_vec(),
        ),
        (
            STORAGE_VERSION_KEY.to_vec(),
            STORAGE_VERSION.as_bytes().to_vec(),
        ),
        (TERM.to_vec(), 1u64.to_be_bytes().to_vec()),
    ];
    if state.compact_revision > 0 {
        let rev = revision_key(state.compact_revision, 0, false);
        meta.push((FINISHED_COMPACT.to_vec(), rev.clone()));
        meta.push((SCHEDULED_COMPACT.to_vec(), rev));
    }
    meta.sort();
    let (auth, users, roles) = auth_buckets(state);
    vec![
        (ALARM, Box::new(alarm.into_iter())),
        (AUTH, Box::new(auth.into_iter())),
        (AUTH_ROLES, Box::new(roles.into_iter())),
        (AUTH_USERS, Box::new(users.into_iter())),
        (KEY, Box::new(key_entries(state))),
        (LEASE, Box::new(leases.into_iter())),
        (META, Box::new(meta.into_iter())),
    ]
}

/// A bucket's entries, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// etcd's `auth`, `authUsers` and `authRoles` buckets for the state's users and roles
/// (records as etcd writes them: `authpb.User` with its bcrypt hash, `authpb.Role`).
fn auth_buckets(state: &State) -> (Entries, Entries, Entries) {
    use crate::proto::authpb;
    let store = crate::auth::AuthStore::decode(state.auth()).unwrap_or_default();
    let auth = vec![
        (AUTH_ENABLED.to_vec(), vec![u8::from(store.enabled)]),
        (
            AUTH_REVISION.to_vec(),
            store.revision.max(1).to_be_bytes().to_vec(),
        ),
    ];
    let users = store
        .users
        .iter()
        .map(|(name, u)| {
            let user = authpb::User {
                name: name.clone().into_bytes().into(),
                password: u.password.clone().unwrap_or_default().into_bytes().into(),
                roles: u.roles.clone(),
                options: Some(authpb::UserAddOptions {
                    no_password: u.no_password,
                }),
            };
            (name.clone().into_bytes(), user.encode_to_vec())
        })
        .collect();
    let roles = store
        .roles
        .iter()
        .map(|(name, r)| {
            let role = authpb::Role {
                name: name.clone().into_bytes().into(),
                key_permission: r
                    .permissions
                    .iter()
                    .map(|p| authpb::Permission {
                        perm_type: p.perm_type,
                        key: p.key.clone().into(),
                        range_end: p.range_end.clone().into(),
                    })
                    .collect(),
            };
            (name.clone().into_bytes(), role.encode_to_vec())
        })
        .collect();
    (auth, users, roles)
}

/// etcd's users and roles from its `auth*` buckets' entries.
pub fn auth_store(
    auth: &[(Vec<u8>, Vec<u8>)],
    users: &[(Vec<u8>, Vec<u8>)],
    roles: &[(Vec<u8>, Vec<u8>)],
) -> Result<crate::auth::AuthStore, String> {
    use crate::auth::{AuthStore, Permission, Role, User};
    use crate::proto::authpb;
    let mut store = AuthStore {
        revision: 1,
        ..Default::default()
    };
    for (k, v) in auth {
        if k == AUTH_ENABLED {
            store.enabled = v.first() == Some(&1);
        } else if k == AUTH_REVISION && v.len() == 8 {
            store.revision = u64::from_be_bytes(v[..8].try_into().unwrap()).max(1);
        }
    }
    for (k, v) in users {
        let u = authpb::User::decode(v.as_slice()).map_err(|e| format!("user {k:?}: {e}"))?;
        let no_password = u.options.is_some_and(|o| o.no_password);
        let password = (!u.password.is_empty())
            .then(|| String::from_utf8(u.password.to_vec()))
            .transpose()
            .map_err(|_| format!("user {k:?}: password hash is not text"))?;
        let mut roles = u.roles;
        roles.sort();
        let name = String::from_utf8(u.name.to_vec()).map_err(|_| format!("user {k:?}: name"))?;
        store.users.insert(
            name,
            User {
                password,
                no_password,
                roles,
            },
        );
    }
    for (k, v) in roles {
        let r = authpb::Role::decode(v.as_slice()).map_err(|e| format!("role {k:?}: {e}"))?;
        let name = String::from_utf8(r.name.to_vec()).map_err(|_| format!("role {k:?}: name"))?;
        let mut permissions: Vec<Permission> = r
            .key_permission
            .into_iter()
            .map(|p| Permission {
                perm_type: p.perm_type,
                key: p.key.to_vec(),
                range_end: p.range_end.to_vec(),
            })
            .collect();
        permissions.sort_by(|a, b| a.key.cmp(&b.key));
        store.roles.insert(name, Role { permissions });
    }
    Ok(store)
}

/// A value of the `key` bucket, decoded.
pub fn decode_key_value(v: &[u8]) -> Result<mvccpb::KeyValue, prost::DecodeError> {
    mvccpb::KeyValue::decode(Bytes::copy_from_slice(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_keys_sort_as_revisions_and_read_back() {
        let a = revision_key(2, 1, false);
        let b = revision_key(2, 2, true);
        let c = revision_key(300, 0, false);
        assert!(a < b && b < c);
        assert_eq!(a.len(), 17);
        assert_eq!(parse_revision_key(&b), Some((2, 2, true)));
        assert_eq!(parse_revision_key(&c), Some((300, 0, false)));
        assert_eq!(parse_revision_key(b"short"), None);
    }
}
