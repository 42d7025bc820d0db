//! etcd's consistency hashes, computed over the database a state is written as
//! ([`super::schema`]), so that `etcdctl endpoint hashkv` on an etcd and on the Netsy
//! restored from its snapshot (or the other way round) print the same number: a migration
//! is checked by comparing one number per revision.

use super::schema;
use crate::mvcc::{Error, State};

/// A compacted revision as etcd reports it: -1 until the first compaction.
pub fn reported_compact_revision(compact_revision: i64) -> i64 {
    match compact_revision {
        0 => -1,
        c => c,
    }
}

/// The `meta` entries etcd's backend hash leaves out (they differ between members for
/// reasons no user controls): consistent index, term, storage version.
pub fn ignored(bucket: &[u8], key: &[u8]) -> bool {
    bucket == schema::META
        && [
            schema::TERM,
            schema::CONSISTENT_INDEX,
            schema::STORAGE_VERSION_KEY,
        ]
        .contains(&key)
}

/// HashKV at `rev` (0: the head), as etcd's `kvHasher`: CRC-32C of the bucket name, then of
/// each `key` bucket entry up to `rev`. Entries at or below the compacted revision count
/// only while they are the newest live version of their key at `rev` (unless no key is live
/// at `rev`), and a tombstone at the compacted revision never counts: etcd versions differ
/// in whether compaction keeps it.
pub fn hash_kv(state: &State, rev: i64) -> Result<(u32, i64), Error> {
    if rev > 0 && rev < state.compact_revision {
        return Err(Error::Compacted);
    }
    if rev > state.revision {
        return Err(Error::FutureRevision);
    }
    let rev = if rev <= 0 { state.revision } else { rev };
    let compact = state.compact_revision;
    let keep_any = state.any_live_at(rev);
    let mut h = crc32c::crc32c(schema::KEY);
    for o in state.ordered_versions() {
        let main = o.version.mod_revision;
        if main > rev {
            break;
        }
        let tombstone = o.version.is_tombstone();
        if main <= compact && keep_any {
            let newest = state.history(o.key).and_then(|h| h.at(rev));
            let kept = !tombstone && newest.is_some_and(|n| n.mod_revision == main);
            if !kept {
                continue;
            }
        }
        if main == compact && tombstone {
            continue;
        }
        h = crc32c::crc32c_append(h, &schema::revision_key(main, o.sub, tombstone));
        h = crc32c::crc32c_append(h, &schema::key_value(&o));
    }
    Ok((h, rev))
}

/// Hash, as etcd's backend hash: CRC-32C over every bucket's name, keys and values in
/// bbolt's order, leaving out the `meta` entries etcd ignores (consistent index, term,
/// storage version). It covers leases and alarms too, and differs between any two etcd
/// members' databases as much as between etcd's and Netsy's; HashKV is the one to compare.
pub fn hash(state: &State, alarms: &[u64]) -> u32 {
    let mut h = 0;
    for (name, entries) in schema::buckets(state, alarms) {
        h = crc32c::crc32c_append(h, name);
        for (k, v) in entries {
            let ignored = name == schema::META
                && [
                    schema::TERM,
                    schema::CONSISTENT_INDEX,
                    schema::STORAGE_VERSION_KEY,
                ]
                .contains(&k.as_slice());
            if !ignored {
                h = crc32c::crc32c_append(h, &k);
                h = crc32c::crc32c_append(h, &v);
            }
        }
    }
    h
}
