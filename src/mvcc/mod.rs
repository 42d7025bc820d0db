//! The in-memory multi-version store: every revision of every key since the last compaction,
//! in persistent (structurally shared) maps.
//!
//! A [`State`] is an immutable value. The log's writer task derives the next state from the
//! current one (cheap: imbl maps share all untouched nodes) and publishes it only after the
//! chunk holding the change is in the bucket; readers take the published `Arc<State>` and
//! never wait for a writer or take a lock. Any revision still retained can be read from any
//! state, which is how historical reads, paginated lists pinned to a revision and watch
//! replay work without touching storage.
//!
//! Semantics follow etcd's mvcc: a write transaction bumps the revision by one whatever the
//! number of keys it changes; `version` counts modifications since creation and a delete
//! leaves a tombstone (version 0) so that history and watch events stay exact; compaction at
//! `rev` keeps, per key, the newest version at or below `rev` unless it is a tombstone.

mod key;
mod range;
mod revisions;
mod txn;

#[cfg(test)]
mod tests;

pub use key::Key;
pub use range::{has_revision_filters, key_in_range, prefix_end, KeyRange};
pub use txn::{txn_all_ops, txn_is_read_only, Evaluated, TxnEval};

use crate::proto::mvccpb;
use crate::proto::netsy::{Record, RecordKind};
use bytes::Bytes;
use imbl::{OrdMap, OrdSet};
use revisions::RevisionIndex;
use std::sync::Arc;
use triomphe::ThinArc;

/// Errors of the engine, with etcd's messages. The API layer maps them to gRPC codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("lease not found")]
    LeaseNotFound,
    #[error("lease already exists")]
    LeaseExists,
    #[error("key not found")]
    KeyNotFound,
    /// A replayed record contradicts the state it is applied to.
    #[error("record at revision {revision} for key {key:?}: {reason}")]
    Inconsistent {
        revision: i64,
        key: String,
        reason: String,
    },
}

/// One version of one key. `version == 0` marks a tombstone (the key was deleted at
/// `mod_revision`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub mod_revision: i64,
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
    pub value: Bytes,
}

impl Version {
    pub fn is_tombstone(&self) -> bool {
        self.version == 0
    }

    pub fn to_kv(&self, key: &[u8], keys_only: bool) -> mvccpb::KeyValue {
        mvccpb::KeyValue {
            key: Bytes::copy_from_slice(key),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            value: if keys_only {
                Bytes::new()
            } else {
                self.value.clone()
            },
            lease: self.lease,
        }
    }
}

/// All retained versions of one key, oldest first. Shared between states until a write to
/// this key replaces it. Most keys hold a few versions: one allocation, exactly sized, which
/// a write copies (the published state still shares it). A thin pointer (the length lives
/// in the allocation): the key map holds one per key in B-tree leaves of 16 entries, where
/// a pointer and length made each leaf 16 x 8 bytes larger and one allocator size class up.
/// Past [`SPILL_AFTER`] versions the history moves into a persistent vector held in the
/// allocation's header, so that a key written thousands of times between compactions (a
/// hot counter, etcd's benchmark tool) costs a write a path of the vector, not a copy of
/// every version: copying made such writes quadratic.
#[derive(Debug, Clone)]
pub struct History(ThinArc<Option<Box<imbl::Vector<Version>>>, Version>);

/// Versions a history holds in its own allocation before it moves into a vector.
const SPILL_AFTER: usize = 16;

impl PartialEq for History {
    fn eq(&self, other: &Self) -> bool {
        self.versions().iter().eq(other.versions().iter())
    }
}

impl Eq for History {}

/// A history's versions, oldest first, wherever they are held.
#[derive(Debug, Clone, Copy)]
pub enum Versions<'a> {
    Slice(&'a [Version]),
    Vector(&'a imbl::Vector<Version>),
}

impl<'a> Versions<'a> {
    pub fn len(&self) -> usize {
        match self {
            Self::Slice(s) => s.len(),
            Self::Vector(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, i: usize) -> Option<&'a Version> {
        match *self {
            Self::Slice(s) => s.get(i),
            Self::Vector(v) => v.get(i),
        }
    }

    pub fn last(&self) -> Option<&'a Version> {
        self.len().checked_sub(1).and_then(|i| self.get(i))
    }

    /// The index of the first version for which `pred` is false (`pred` holds for a prefix).
    pub fn partition_point(&self, pred: impl Fn(&Version) -> bool) -> usize {
        match *self {
            Self::Slice(s) => s.partition_point(pred),
            // Never Equal: the search ends where `pred` turns false.
            Self::Vector(v) => v
                .binary_search_by(|x| {
                    if pred(x) {
                        std::cmp::Ordering::Less
                    } else {
                        std::cmp::Ordering::Greater
                    }
                })
                .unwrap_or_else(|i| i),
        }
    }

    pub fn iter(&self) -> VersionsIter<'a> {
        match *self {
            Self::Slice(s) => VersionsIter::Slice(s.iter()),
            Self::Vector(v) => VersionsIter::Vector(v.iter()),
        }
    }
}

impl std::ops::Index<usize> for Versions<'_> {
    type Output = Version;

    fn index(&self, i: usize) -> &Version {
        self.get(i).expect("version index in bounds")
    }
}

pub enum VersionsIter<'a> {
    Slice(std::slice::Iter<'a, Version>),
    Vector(imbl::vector::Iter<'a, Version, imbl::shared_ptr::DefaultSharedPtr>),
}

impl<'a> Iterator for VersionsIter<'a> {
    type Item = &'a Version;

    fn next(&mut self) -> Option<&'a Version> {
        match self {
            Self::Slice(i) => i.next(),
            Self::Vector(i) => i.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Self::Slice(i) => i.size_hint(),
            Self::Vector(i) => i.size_hint(),
        }
    }
}

impl History {
    fn one(v: Version) -> Self {
        Self(ThinArc::from_header_and_iter(None, std::iter::once(v)))
    }

    /// A history of `versions`, in its own allocation or spilled, by how many there are.
    fn collect<'a>(versions: impl ExactSizeIterator<Item = &'a Version>) -> Self {
        if versions.len() <= SPILL_AFTER {
            Self(ThinArc::from_header_and_iter(None, versions.cloned()))
        } else {
            Self::spilled(versions.cloned().collect())
        }
    }

    fn spilled(versions: imbl::Vector<Version>) -> Self {
        Self(ThinArc::from_header_and_iter(
            Some(Box::new(versions)),
            std::iter::empty(),
        ))
    }

    /// The versions from the `start`-th on.
    fn from(&self, start: usize) -> Self {
        match self.versions() {
            Versions::Slice(s) => Self::collect(s[start..].iter()),
            Versions::Vector(v) => {
                let rest = v.clone().split_off(start);
                if rest.len() <= SPILL_AFTER {
                    Self::collect(rest.iter())
                } else {
                    Self::spilled(rest)
                }
            }
        }
    }

    /// The version in effect at `rev` (the newest with `mod_revision <= rev`), tombstones
    /// included.
    pub fn at(&self, rev: i64) -> Option<&Version> {
        let versions = self.versions();
        let i = versions.partition_point(|v| v.mod_revision <= rev);
        i.checked_sub(1).and_then(|i| versions.get(i))
    }

    /// The live version at `rev` (None when absent or deleted).
    pub fn live_at(&self, rev: i64) -> Option<&Version> {
        self.at(rev).filter(|v| !v.is_tombstone())
    }

    /// The version written exactly at `rev` and the live one before it.
    pub fn change_at(&self, rev: i64) -> Option<(&Version, Option<&Version>)> {
        let versions = self.versions();
        let i = versions.partition_point(|v| v.mod_revision < rev);
        let v = versions.get(i).filter(|v| v.mod_revision == rev)?;
        let prev = i
            .checked_sub(1)
            .and_then(|j| versions.get(j))
            .filter(|p| !p.is_tombstone());
        Some((v, prev))
    }

    pub fn latest(&self) -> Option<&Version> {
        self.versions().last()
    }

    pub fn versions(&self) -> Versions<'_> {
        match &self.0.header.header {
            Some(v) => Versions::Vector(v),
            None => Versions::Slice(&self.0.slice),
        }
    }

    /// This history with `v` appended, and the lease of the live version `v` follows (0
    /// if none); None when a version at or after `v`'s revision is already held.
    fn appended(&self, v: Version) -> Option<(History, i64)> {
        let latest = self.latest();
        if latest.is_some_and(|l| l.mod_revision >= v.mod_revision) {
            return None;
        }
        let prev_lease = latest.filter(|p| !p.is_tombstone()).map_or(0, |p| p.lease);
        let history = match self.versions() {
            Versions::Slice(old) if old.len() < SPILL_AFTER => {
                let mut v = Some(v);
                // A range, so that the allocation is sized from the iterator's exact length.
                let versions = (0..old.len() + 1).map(|i| match old.get(i) {
                    Some(o) => o.clone(),
                    None => v.take().expect("the new version comes last, once"),
                });
                History(ThinArc::from_header_and_iter(None, versions))
            }
            Versions::Slice(old) => {
                let mut all: imbl::Vector<Version> = old.iter().cloned().collect();
                all.push_back(v);
                History::spilled(all)
            }
            Versions::Vector(old) => {
                let mut all = old.clone();
                all.push_back(v);
                History::spilled(all)
            }
        };
        Some((history, prev_lease))
    }
}

/// The keys one revision changed, in change order. Most revisions change one key, which is
/// held inline: no allocation beyond the map's own node.
#[derive(Debug, Clone)]
pub enum ChangedKeys {
    One(Key),
    Many(Arc<Vec<Key>>),
}

impl ChangedKeys {
    pub fn iter(&self) -> std::slice::Iter<'_, Key> {
        match self {
            Self::One(k) => std::slice::from_ref(k).iter(),
            Self::Many(ks) => ks.iter(),
        }
    }

    fn push(&mut self, key: Key) {
        match self {
            Self::One(first) => *self = Self::Many(Arc::new(vec![first.clone(), key])),
            Self::Many(ks) => Arc::make_mut(ks).push(key),
        }
    }
}

/// A granted lease as the store remembers it. Deadlines are runtime state (see `lease`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    pub ttl: i64,
}

/// One immutable state of the store.
#[derive(Debug, Clone)]
pub struct State {
    /// The head revision: the last revision written (1 for an empty store, as in etcd).
    pub revision: i64,
    /// Reads and watches below this revision fail with [`Error::Compacted`].
    pub compact_revision: i64,
    keys: OrdMap<Key, History>,
    /// Keys changed at each retained revision, in change order: drives watch replay.
    changes: RevisionIndex,
    leases: OrdMap<i64, Lease>,
    lease_keys: OrdMap<i64, OrdSet<Key>>,
    /// etcd's sub-revision of each retained version that is not its revision's first
    /// change (multi-key transactions, range deletes, lease revocations): etcd keeps it
    /// through compaction in its database keys, which its HashKV covers, while the change
    /// log that gives it here is dropped by compaction. Empty for single-key writes.
    subs: OrdMap<(i64, Key), i64>,
    /// etcd's users and roles as the last auth record left them (encoded by
    /// [`crate::auth`]; empty: none yet). Opaque here: the store only carries it.
    auth: Bytes,
    /// Bytes of keys and values held across all retained versions.
    bytes: i64,
    /// Number of retained versions (tombstones included).
    versions: i64,
    /// The revisions the last few publications added, with their watch events built once
    /// for all watch streams: oldest first, contiguous, ending at the head.
    tails: Arc<Vec<Arc<Tail>>>,
    /// Which chunks this state came from, carried with it so that whatever publishes or
    /// snapshots it names the same chunks (the log's fence for pipelined commits).
    pub chain: Chain,
}

/// The CRC-64s of the chunk objects a state was built from (0: not known, as after a Go
/// snapshot or for a new store).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Chain {
    /// The last chunk applied: the one the next chunk names as its predecessor.
    pub last: u64,
    /// The chunk that wrote `revision` (control-only chunks after it leave it): the one
    /// the chunk at log position (revision + 1, 0) names, which a snapshot records.
    pub at_revision: u64,
}

impl Chain {
    /// After applying a chunk whose object has CRC `crc`; `writes_keys` if it moved the
    /// revision.
    pub fn applied(&mut self, crc: u64, writes_keys: bool) {
        self.last = crc;
        if writes_keys {
            self.at_revision = crc;
        }
    }
}

/// Publications whose events stay shared: a stream that is a few commits behind (busy
/// sending while the writer committed again) still reads shared events.
const SHARED_PUBLICATIONS: usize = 16;
/// A publication adding more revisions than this (a reload after another node wrote) gets
/// no shared events: watchers catch up through bounded batches of lookups instead.
const MAX_SHARED_REVISIONS: i64 = 4096;

/// The revisions one publication added (`from..=to`) and their watch events, built on
/// first use: every watch stream that is caught up needs exactly these, and looking each
/// one up per stream (a map walk, key and value clones) was most of a fan-out's cost.
#[derive(Debug)]
pub struct Tail {
    from: i64,
    to: i64,
    events: std::sync::OnceLock<Vec<TailEvent>>,
}

impl Tail {
    /// The last revision this publication added.
    pub fn to(&self) -> i64 {
        self.to
    }

    /// The events of this publication's revisions, in revision and change order. `state`
    /// is any state that retains them (they never change once written).
    pub fn events(&self, state: &State) -> &[TailEvent] {
        self.events.get_or_init(|| {
            let mut out = Vec::new();
            for (rev, keys) in state.changes(self.from, self.to) {
                for key in keys.iter() {
                    if let Some((event, prev)) = state.event(key, rev) {
                        out.push(TailEvent {
                            revision: rev,
                            event,
                            prev,
                        });
                    }
                }
            }
            out
        })
    }
}

/// One change of a [`Tail`]: the event (without `prev_kv`) and the previous live version.
#[derive(Debug)]
pub struct TailEvent {
    pub revision: i64,
    pub event: mvccpb::Event,
    pub prev: Option<mvccpb::KeyValue>,
}

impl Default for State {
    fn default() -> Self {
        Self::new()
    }
}

impl State {
    /// An empty store at revision 1, like a fresh etcd.
    pub fn new() -> Self {
        Self::at_revision(1)
    }

    /// An empty store whose head is `revision` (used before replaying a bucket whose first
    /// record is at `revision + 1`).
    pub fn at_revision(revision: i64) -> Self {
        Self {
            revision,
            compact_revision: 0,
            keys: OrdMap::new(),
            changes: RevisionIndex::default(),
            leases: OrdMap::new(),
            lease_keys: OrdMap::new(),
            subs: OrdMap::new(),
            auth: Bytes::new(),
            bytes: 0,
            versions: 0,
            tails: Arc::default(),
            chain: Chain::default(),
        }
    }

    /// Takes the shared events of the state published before this one. A state built on
    /// one still in flight (pipelined commits) carries the shared events of whatever was
    /// published when its base was built, which may miss the revisions published since.
    pub fn inherit_shared(&mut self, published: &State) {
        // Only onto a state at or past it: its events are then this state's too.
        if published.revision <= self.revision {
            self.tails = published.tails.clone();
        }
    }

    /// Records that this state is published after one whose head was `previous`: the
    /// revisions it adds get shared events (see [`Tail`]), next to those of the last few
    /// publications when they lead up to `previous`.
    pub fn set_published_after(&mut self, previous: i64) {
        let added = self.revision - previous;
        if added <= 0 {
            return;
        }
        let mut tails: Vec<Arc<Tail>> = Vec::with_capacity(SHARED_PUBLICATIONS);
        if self.tails.last().is_some_and(|t| t.to == previous) {
            let keep = self.tails.len().min(SHARED_PUBLICATIONS - 1);
            tails.extend(
                self.tails[self.tails.len() - keep..]
                    .iter()
                    .filter(|t| t.from >= self.compact_revision)
                    .cloned(),
            );
        }
        if added <= MAX_SHARED_REVISIONS {
            tails.push(Arc::new(Tail {
                from: previous + 1,
                to: self.revision,
                events: Default::default(),
            }));
        } else {
            tails.clear();
        }
        self.tails = Arc::new(tails);
    }

    /// The first revision whose events are shared, if any; every later one up to the head
    /// is shared too, in [`State::shared`].
    pub fn shared_from(&self) -> Option<i64> {
        self.tails.first().map(|t| t.from)
    }

    /// The publications whose events are shared, oldest first.
    pub fn shared(&self) -> impl Iterator<Item = &Tail> {
        self.tails.iter().map(|t| t.as_ref())
    }

    pub fn history(&self, key: &[u8]) -> Option<&History> {
        self.keys.get(key)
    }

    /// Checks that `rev` (0 = head) can be read, and resolves it.
    pub fn check_revision(&self, rev: i64) -> Result<i64, Error> {
        if rev <= 0 {
            return Ok(self.revision);
        }
        if rev > self.revision {
            return Err(Error::FutureRevision);
        }
        if rev < self.compact_revision {
            return Err(Error::Compacted);
        }
        Ok(rev)
    }

    /// Live keys in `range` at `rev`, in key order.
    pub fn live_in<'a>(
        &'a self,
        range: &'a KeyRange,
        rev: i64,
    ) -> impl Iterator<Item = (&'a Key, &'a Version)> + 'a {
        range
            .iter(&self.keys)
            .filter_map(move |(k, h)| h.live_at(rev).map(|v| (k, v)))
    }

    pub fn bytes(&self) -> i64 {
        self.bytes
    }

    pub fn versions_count(&self) -> i64 {
        self.versions
    }

    pub fn keys_count(&self) -> usize {
        self.keys.len()
    }

    pub fn lease(&self, id: i64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    /// Lease ids that live keys reference but no lease record granted: what a bucket written
    /// by the Go Netsy (which never stored leases) leaves behind.
    pub fn orphan_leases(&self) -> Vec<(i64, usize)> {
        self.lease_keys
            .iter()
            .filter(|(id, keys)| !keys.is_empty() && !self.leases.contains_key(*id))
            .map(|(id, keys)| (*id, keys.len()))
            .collect()
    }

    /// Keys currently attached to lease `id`.
    pub fn lease_keys(&self, id: i64) -> impl Iterator<Item = &Key> {
        self.lease_keys.get(&id).into_iter().flat_map(|s| s.iter())
    }

    /// Revisions with changes in `from..=to`, and the keys changed at each.
    pub fn changes(&self, from: i64, to: i64) -> impl Iterator<Item = (i64, &ChangedKeys)> {
        self.changes.range(from, to)
    }

    /// Builds the watch event for `key` changed at `rev`, with the previous live version.
    pub fn event(&self, key: &Key, rev: i64) -> Option<(mvccpb::Event, Option<mvccpb::KeyValue>)> {
        let (v, prev) = self.keys.get(key)?.change_at(rev)?;
        let prev = prev.map(|p| p.to_kv(key, false));
        let event = if v.is_tombstone() {
            mvccpb::Event {
                r#type: mvccpb::event::EventType::Delete as i32,
                kv: Some(mvccpb::KeyValue {
                    key: key.to_bytes(),
                    mod_revision: rev,
                    ..Default::default()
                }),
                prev_kv: None,
            }
        } else {
            mvccpb::Event {
                r#type: mvccpb::event::EventType::Put as i32,
                kv: Some(v.to_kv(key, false)),
                prev_kv: None,
            }
        };
        Some((event, prev))
    }

    /// The encoded auth store (empty: none yet).
    pub fn auth(&self) -> &Bytes {
        &self.auth
    }

    pub fn set_auth(&mut self, encoded: Bytes) {
        self.auth = encoded;
    }

    pub fn put_lease(&mut self, lease: Lease) {
        self.leases.insert(lease.id, lease);
    }

    pub fn remove_lease(&mut self, id: i64) {
        self.leases.remove(&id);
        self.lease_keys.remove(&id);
    }

    /// Appends a version of `key` at `rev` (which must be the head or head + 1). Returns
    /// false, changing nothing, when the key already has a version at or after `rev`. A key
    /// new to the map gets a [`Key`] of its own; a known one keeps the map's.
    /// `likely_new` picks the order of map operations (one tree walk when the guess is right;
    /// the result is the same either way): replay takes it from the record's `created`.
    /// `sub` is the version's sub-revision when known (a snapshot record's), else 0: its
    /// place among the changes of `rev`.
    fn push_version(&mut self, key: &[u8], v: Version, likely_new: bool, sub: i64) -> bool {
        let rev = v.mod_revision;
        let new_lease = if v.is_tombstone() { 0 } else { v.lease };
        let added = (key.len() + v.value.len()) as i64;
        let (stored, prev_lease) = if likely_new {
            let k = Key::new(key);
            let one = History::one(v);
            match self.keys.insert(k.clone(), one.clone()) {
                None => (k, 0),
                Some(old) => match old.appended(one.versions()[0].clone()) {
                    Some((h, prev_lease)) => {
                        self.keys.insert(k.clone(), h);
                        (k, prev_lease)
                    }
                    None => {
                        self.keys.insert(k, old);
                        return false;
                    }
                },
            }
        } else {
            match self.keys.get_key_value_mut(key) {
                Some((k, h)) => {
                    let Some((appended, prev_lease)) = h.appended(v) else {
                        return false;
                    };
                    *h = appended;
                    (k.clone(), prev_lease)
                }
                None => {
                    let k = Key::new(key);
                    self.keys.insert(k.clone(), History::one(v));
                    (k, 0)
                }
            }
        };
        if prev_lease != 0 && prev_lease != new_lease {
            if let Some(set) = self.lease_keys.get_mut(&prev_lease) {
                set.remove(&stored);
            }
        }
        if new_lease != 0 {
            self.lease_keys
                .entry(new_lease)
                .or_default()
                .insert(stored.clone());
        }
        self.bytes += added;
        self.versions += 1;
        let place = self.changes.push(rev, stored.clone()) as i64;
        let sub = sub.max(place);
        if sub > 0 {
            self.subs.insert((rev, stored), sub);
        }
        self.revision = self.revision.max(rev);
        true
    }

    /// Applies one record from the log (replay). Records carry every field, so replay trusts
    /// them rather than recomputing, but rejects a record that would move history backwards.
    /// The record's value is kept as it is, not copied: it must be a buffer of its own (as
    /// [`crate::format`] decodes it), not a slice pinning a larger one.
    pub fn apply_record(&mut self, r: Record) -> Result<(), Error> {
        let revision = r.revision;
        let inconsistent = |key: &[u8], reason: &str| Error::Inconsistent {
            revision,
            key: String::from_utf8_lossy(key).into_owned(),
            reason: reason.to_string(),
        };
        if r.kind == RecordKind::Compact as i32 {
            if r.compact_revision > self.compact_revision {
                self.compact(r.compact_revision);
            }
            return Ok(());
        }
        if r.kind == RecordKind::LeaseGrant as i32 {
            self.put_lease(Lease {
                id: r.lease,
                ttl: r.ttl,
            });
            return Ok(());
        }
        if r.kind == RecordKind::LeaseRevoke as i32 {
            self.remove_lease(r.lease);
            return Ok(());
        }
        if r.kind == RecordKind::Auth as i32 {
            self.auth = r.value;
            return Ok(());
        }
        if r.kind != RecordKind::Kv as i32 {
            return Err(inconsistent(
                &r.key,
                &format!("unknown record kind {}", r.kind),
            ));
        }
        if r.revision < self.revision {
            return Err(inconsistent(
                &r.key,
                &format!("revision is below the head revision {}", self.revision),
            ));
        }
        let v = if r.deleted {
            Version {
                mod_revision: r.revision,
                create_revision: r.create_revision,
                version: 0,
                lease: 0,
                value: Bytes::new(),
            }
        } else {
            Version {
                mod_revision: r.revision,
                create_revision: r.create_revision,
                version: r.version,
                lease: r.lease,
                value: r.value,
            }
        };
        if !r.deleted && v.version <= 0 {
            return Err(inconsistent(&r.key, "live version must be positive"));
        }
        if !self.push_version(&r.key, v, r.created, r.sub_revision) {
            return Err(inconsistent(
                &r.key,
                "key already has a version at this revision",
            ));
        }
        Ok(())
    }

    /// Drops history below `rev`: per key, everything older than the newest version at or
    /// below `rev`, and that one too if it is a tombstone.
    pub fn compact(&mut self, rev: i64) {
        let rev = rev.min(self.revision);
        if rev <= self.compact_revision {
            return;
        }
        // Only keys changed since the previous compaction can hold more than one version or
        // a tombstone, so only those need work.
        let mut touched: Vec<Key> = self
            .changes
            .range(i64::MIN, rev)
            .flat_map(|(_, ks)| ks.iter().cloned())
            .collect();
        touched.sort();
        touched.dedup();
        for key in touched {
            let Some(h) = self.keys.get(&key) else {
                continue;
            };
            let versions = h.versions();
            let keep_from = versions.partition_point(|v| v.mod_revision <= rev);
            // Index of the newest version <= rev, kept if live.
            let mut start = keep_from.saturating_sub(1);
            if keep_from == 0 {
                continue;
            }
            if versions[start].is_tombstone() {
                start += 1;
            }
            if start == 0 {
                continue;
            }
            let dropped = || versions.iter().take(start);
            if !self.subs.is_empty() {
                for v in dropped() {
                    self.subs.remove(&(v.mod_revision, key.clone()));
                }
            }
            self.bytes -= dropped()
                .map(|v| (key.len() + v.value.len()) as i64)
                .sum::<i64>();
            self.versions -= start as i64;
            if start == versions.len() {
                self.keys.remove(&key);
            } else {
                let kept = h.from(start);
                self.keys.insert(key, kept);
            }
        }
        self.changes.drop_below(rev);
        self.compact_revision = rev;
    }

    /// Whether a record is a control record (uses no revision of its own).
    pub fn is_control(r: &Record) -> bool {
        r.kind != RecordKind::Kv as i32
    }

    /// Every retained version as a log record, in revision order: the body of a snapshot.
    /// Within one revision, records keep the order the transaction changed the keys in, so
    /// watch events replayed after a restart come out as they did before.
    pub fn to_records(&self) -> Vec<Record> {
        self.records().collect()
    }

    /// [`State::to_records`] one record at a time: a snapshot of a large state is encoded
    /// as it is walked, never holding every record at once.
    pub fn records(&self) -> impl Iterator<Item = Record> + '_ {
        let changed = self.ordered_versions().map(|o| {
            let v = o.version;
            Record {
                revision: v.mod_revision,
                key: o.key.to_bytes(),
                created: o.prev.is_none() && !v.is_tombstone(),
                deleted: v.is_tombstone(),
                create_revision: v.create_revision,
                prev_revision: o.prev.map_or(0, |p| p.mod_revision),
                version: v.version,
                lease: v.lease,
                value: v.value.clone(),
                sub_revision: o.sub,
                ..Default::default()
            }
        });
        let leases = self.leases.values().map(|lease| Record {
            revision: self.revision,
            kind: RecordKind::LeaseGrant as i32,
            lease: lease.id,
            ttl: lease.ttl,
            ..Default::default()
        });
        let auth = (!self.auth.is_empty()).then(|| Record {
            revision: self.revision,
            kind: RecordKind::Auth as i32,
            value: self.auth.clone(),
            ..Default::default()
        });
        changed.chain(leases).chain(auth)
    }

    /// etcd's sub-revision of `key`'s version at `rev`.
    fn sub(&self, rev: i64, key: &Key) -> i64 {
        if self.subs.is_empty() {
            return 0;
        }
        self.subs.get(&(rev, key.clone())).copied().unwrap_or(0)
    }

    /// Every retained version in (revision, sub-revision) order, with its sub-revision and,
    /// within the change log, the live version before it. Only the versions older than the
    /// retained change log (at most one live version per key) are gathered first, as
    /// references, to be put in order.
    pub fn ordered_versions(&self) -> impl Iterator<Item = Ordered<'_>> + '_ {
        // Every revision from the oldest retained change up is in the change log.
        let logged_from = self.changes.first_revision().unwrap_or(i64::MAX);
        let mut older: Vec<(i64, &Key, &Version)> = self
            .keys
            .iter()
            .flat_map(|(key, h)| {
                h.versions()
                    .iter()
                    .take_while(move |v| v.mod_revision < logged_from)
                    .map(move |v| (self.sub(v.mod_revision, key), key, v))
            })
            .collect();
        older.sort_by_key(|(sub, _, v)| (v.mod_revision, *sub));
        let older = older.into_iter().map(|(sub, key, version)| Ordered {
            sub,
            key,
            version,
            prev: None,
        });
        // Change order is sub-revision order (a change compaction dropped, a tombstone at
        // the compacted revision, is skipped).
        let changed = self.changes.iter().flat_map(move |(rev, keys)| {
            keys.iter().filter_map(move |key| {
                let (version, prev) = self.keys.get(key)?.change_at(rev)?;
                Some(Ordered {
                    sub: self.sub(rev, key),
                    key,
                    version,
                    prev,
                })
            })
        });
        older.chain(changed)
    }

    /// Whether any key is live at `rev`.
    pub fn any_live_at(&self, rev: i64) -> bool {
        self.keys.values().any(|h| h.live_at(rev).is_some())
    }
}

/// One retained version, from [`State::ordered_versions`].
pub struct Ordered<'a> {
    pub sub: i64,
    pub key: &'a Key,
    pub version: &'a Version,
    pub prev: Option<&'a Version>,
}
