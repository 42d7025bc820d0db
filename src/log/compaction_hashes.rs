//! The hashes etcd keeps of its last compactions. Compacting at C, etcd hashes the history
//! it is about to drop (HashKV at C over everything since the previous compaction) and keeps
//! the last ten in memory; HashKV at such a C answers that hash, even after later
//! compactions, which is what etcd's corruption check compares between members. Netsy
//! does the same from the state published just before the compaction, off the writer's
//! path (a hash walks every retained version); like etcd's, the list does not survive a
//! restart.

use crate::mvcc::State;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// etcd's `hashStorageMaxSize`.
const KEPT: usize = 10;

/// One compaction's hash: HashKV at `revision` over the history since `compact_revision`
/// (-1: none before).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvHash {
    pub hash: u32,
    pub compact_revision: i64,
    pub revision: i64,
}

#[derive(Debug)]
pub struct CompactionHashes {
    kept: Mutex<VecDeque<KvHash>>,
    /// The last compaction revision whose hash is kept, or skipped.
    done: watch::Sender<i64>,
}

impl Default for CompactionHashes {
    fn default() -> Self {
        Self {
            kept: Mutex::default(),
            done: watch::channel(0).0,
        }
    }
}

impl CompactionHashes {
    /// Hashes `before` at `compacted`, the revision the next published state is compacted
    /// at. Skipped (as etcd skips it after an interrupted compaction) when `before` does not
    /// reach that revision: the compaction rode in the chunk that wrote it.
    pub fn compacted(self: &Arc<Self>, before: Arc<State>, compacted: i64) {
        let handle = tokio::runtime::Handle::try_current();
        if before.revision < compacted || handle.is_err() {
            self.done.send_replace(compacted);
            return;
        }
        let this = self.clone();
        handle.unwrap().spawn_blocking(move || {
            if let Ok((hash, revision)) = crate::etcd_backend::hash::hash_kv(&before, compacted) {
                let compact_revision =
                    crate::etcd_backend::hash::reported_compact_revision(before.compact_revision);
                let mut kept = this.kept.lock().unwrap();
                kept.push_back(KvHash {
                    hash,
                    compact_revision,
                    revision,
                });
                while kept.len() > KEPT {
                    kept.pop_front();
                }
                tracing::info!(hash, revision, compact_revision, "stored compaction hash");
            }
            this.done.send_replace(compacted);
        });
    }

    /// The kept hash at `revision`, if a recent compaction was at it.
    pub fn at(&self, revision: i64) -> Option<KvHash> {
        let kept = self.kept.lock().unwrap();
        kept.iter().find(|h| h.revision == revision).copied()
    }

    /// Waits until the compaction at `revision` (or a later one) is hashed: a physical
    /// compaction is answered after it, as etcd answers once its compaction job is done.
    pub async fn wait(&self, revision: i64) {
        let mut rx = self.done.subscribe();
        let _ = rx.wait_for(|done| *done >= revision).await;
    }
}
