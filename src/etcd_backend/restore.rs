//! Reads an etcd snapshot (or a data dir's `member/snap/db`) into a state: every revision
//! the `key` bucket retains, with its sub-revision, the compacted revision from `meta`, the
//! leases, and the users and roles (authentication stays enabled if it was). `netsy snapshot restore` writes that state as a Netsy snapshot, so a Netsy
//! started on it answers as the etcd did: same head revision, same ranges at every retained
//! revision, same watch history, same HashKV.
//!
//! The file is checked as `etcdutl snapshot restore` checks it (the SHA-256 trailer etcd
//! appends to a streamed snapshot), then page by page as it is read; anything that does not
//! parse as etcd's layout is refused with the entry it failed on, before any object is
//! written.

use super::bolt::{BoltError, Db};
use super::schema::{self, LeaseRecord};
use crate::auth::hex;
use crate::mvcc::{Lease, State};
use crate::proto::netsy::Record;
use crate::store::ObjectStore;
use prost::Message;
use sha2::Digest;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("snapshot SHA-256 mismatch: the trailer says {want}, the data hashes to {got} (truncated or corrupt)")]
    Checksum { want: String, got: String },
    #[error("no SHA-256 trailer (a db file copied from a data dir?): pass --skip-hash-check to restore it anyway")]
    NoChecksum,
    #[error(transparent)]
    Bolt(#[from] BoltError),
    #[error("not an etcd database: {0}")]
    NotEtcd(String),
    #[error("key bucket entry {entry}: {reason}")]
    Entry { entry: String, reason: String },
}

/// What was read.
pub struct Restored {
    pub state: State,
    /// Entries of the `key` bucket (revisions of keys, tombstones included).
    pub entries: u64,
    /// The storage version `meta` records (etcd 3.6+), if any.
    pub storage_version: Option<String>,
    /// The etcd had authentication enabled (and so has the restored store).
    pub auth_enabled: bool,
}

/// etcd's test for a streamed snapshot's trailer: the database is whole pages, the trailer
/// 32 bytes.
fn has_checksum(len: usize) -> bool {
    len % 512 == 32
}

/// Splits off and checks the SHA-256 trailer; returns the database bytes.
pub fn verified(data: &[u8], skip_hash_check: bool) -> Result<&[u8], RestoreError> {
    if !has_checksum(data.len()) {
        return if skip_hash_check {
            Ok(data)
        } else {
            Err(RestoreError::NoChecksum)
        };
    }
    let (db, trailer) = data.split_at(data.len() - 32);
    if !skip_hash_check {
        let got = sha2::Sha256::digest(db);
        if got.as_slice() != trailer {
            return Err(RestoreError::Checksum {
                want: hex(trailer),
                got: hex(&got),
            });
        }
    }
    Ok(db)
}

/// Reads the database `db` (without trailer). `progress` is called every so many entries
/// with the count read so far.
pub fn read(db: &[u8], mut progress: impl FnMut(u64)) -> Result<Restored, RestoreError> {
    let db = Db::open(db)?;
    let names = db.bucket_names()?;
    for needed in [schema::KEY, schema::META] {
        if !names.iter().any(|n| n == needed) {
            return Err(RestoreError::NotEtcd(format!(
                "no {:?} bucket (buckets: {})",
                String::from_utf8_lossy(needed),
                names
                    .iter()
                    .map(|n| String::from_utf8_lossy(n).into_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    let mut meta = std::collections::BTreeMap::new();
    db.for_each(schema::META, |k, v| -> Result<(), BoltError> {
        meta.insert(k.to_vec(), v.to_vec());
        Ok(())
    })?;
    let compact_of = |name: &[u8]| -> Result<i64, RestoreError> {
        match meta.get(name) {
            None => Ok(0),
            Some(v) => schema::parse_revision_key(v)
                .map(|(main, _, _)| main)
                .ok_or_else(|| {
                    RestoreError::NotEtcd(format!(
                        "meta {:?} is not a revision",
                        String::from_utf8_lossy(name)
                    ))
                }),
        }
    };
    // A compaction etcd scheduled but had not finished is finished by the etcd that opens
    // the file; so it is here.
    let compact = compact_of(schema::FINISHED_COMPACT)?.max(compact_of(schema::SCHEDULED_COMPACT)?);
    let storage_version = meta
        .get(schema::STORAGE_VERSION_KEY)
        .map(|v| String::from_utf8_lossy(v).into_owned());

    let mut state = State::at_revision(1);
    let mut head = 1;
    let mut entries = 0u64;
    db.for_each(schema::KEY, |k, v| -> Result<(), RestoreError> {
        let bad = |reason: String| RestoreError::Entry {
            entry: hex(k),
            reason,
        };
        let (main, sub, tombstone) =
            schema::parse_revision_key(k).ok_or_else(|| bad("not a revision".into()))?;
        let kv = schema::decode_key_value(v).map_err(|e| bad(format!("value: {e}")))?;
        head = head.max(main);
        entries += 1;
        if entries.is_multiple_of(100_000) {
            progress(entries);
        }
        if kv.key.is_empty() {
            // `etcdutl snapshot restore --bump-revision` marks the bumped head with an
            // entry holding no key.
            return Ok(());
        }
        let prev = state
            .history(&kv.key)
            .and_then(|h| h.latest())
            .filter(|p| !p.is_tombstone())
            .cloned();
        let record = if tombstone {
            Record {
                revision: main,
                key: kv.key,
                deleted: true,
                create_revision: prev.as_ref().map_or(0, |p| p.create_revision),
                prev_revision: prev.as_ref().map_or(0, |p| p.mod_revision),
                sub_revision: sub,
                ..Default::default()
            }
        } else {
            if kv.mod_revision != main {
                return Err(bad(format!(
                    "mod_revision {} under revision {main}",
                    kv.mod_revision
                )));
            }
            Record {
                revision: main,
                key: kv.key,
                created: prev.is_none(),
                create_revision: kv.create_revision,
                prev_revision: prev.as_ref().map_or(0, |p| p.mod_revision),
                version: kv.version,
                lease: kv.lease,
                value: kv.value,
                sub_revision: sub,
                ..Default::default()
            }
        };
        state.apply_record(record).map_err(|e| bad(e.to_string()))
    })?;
    if names.iter().any(|n| n == schema::LEASE) {
        db.for_each(schema::LEASE, |k, v| -> Result<(), RestoreError> {
            let l = LeaseRecord::decode(v)
                .map_err(|e| RestoreError::NotEtcd(format!("lease {}: {e}", hex(k))))?;
            state.put_lease(Lease {
                id: l.id,
                ttl: l.ttl,
            });
            Ok(())
        })?;
    }
    let entries_of = |name: &[u8]| -> Result<schema::Entries, RestoreError> {
        let mut out = Vec::new();
        if names.iter().any(|n| n == name) {
            db.for_each(name, |k, v| -> Result<(), BoltError> {
                out.push((k.to_vec(), v.to_vec()));
                Ok(())
            })?;
        }
        Ok(out)
    };
    let mut auth = schema::auth_store(
        &entries_of(schema::AUTH)?,
        &entries_of(schema::AUTH_USERS)?,
        &entries_of(schema::AUTH_ROLES)?,
    )
    .map_err(RestoreError::NotEtcd)?;
    let auth_enabled = auth.enabled;
    if auth.enabled && auth.token_key.is_empty() {
        // Tokens are Netsy's own: a new signing key (etcd's tokens never outlive a restore).
        auth.token_key = crate::auth::new_token_key();
    }
    if auth.users.is_empty() && auth.roles.is_empty() && auth.revision <= 1 {
        // A store that never had users: nothing to record.
    } else {
        state.set_auth(auth.encode().into());
    }
    state.revision = head.max(compact);
    state.compact(compact);
    progress(entries);
    Ok(Restored {
        state,
        entries,
        storage_version,
        auth_enabled,
    })
}

/// Writes a restored state into an empty store as its first snapshot, under a new cluster
/// id; returns the snapshot's key. A store holding anything is refused: restoring over a
/// cluster's log would fork it.
pub async fn write(store: &dyn ObjectStore, state: State) -> anyhow::Result<String> {
    if let Some(existing) = store.list("", None).await?.first() {
        anyhow::bail!(
            "{} is not empty (it holds {}): restore into an empty directory or prefix",
            store.describe(),
            existing.key
        );
    }
    let cluster_id = (rand::random::<u64>() >> 1).max(1);
    let key =
        crate::log::snapshot::write_snapshot(store, Arc::new(state), "etcd-restore", cluster_id)
            .await?;
    Ok(key)
}
