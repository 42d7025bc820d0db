//! etcd's backend layout: which buckets hold what, and how keys and values are encoded, so
//! that a state can be written as the database etcd itself would hold, and hashed as etcd
//! hashes its own.
//!
//! Only what an etcd restored from the file needs is written: `key` (every retained
//! revision), `lease`, `meta` (compaction marks, storage version) and `alarm`, plus etcd's
//! empty `auth` buckets. Members and the cluster version are left out: `snapshot restore`
//! rewrites membership anyway, and a cluster version newer than the etcd restoring it (3.4
//! refuses 3.6's) would stop that etcd from starting.

use crate::mvcc::{Ordered, State};
use crate::proto::{etcdserverpb, mvccpb};
use bytes::Bytes;
use prost::Message;

pub const KEY: &[u8] = b"key";
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
    let empty = || -> Box<dyn Iterator<Item = (Vec<u8>, Vec<u8>)>> { Box::new(std::iter::empty()) };
    vec![
        (ALARM, Box::new(alarm.into_iter())),
        (b"auth", empty()),
        (b"authRoles", empty()),
        (b"authUsers", empty()),
        (KEY, Box::new(key_entries(state))),
        (LEASE, Box::new(leases.into_iter())),
        (META, Box::new(meta.into_iter())),
    ]
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
