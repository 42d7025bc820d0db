//! Lease deadlines and expiry.
//!
//! Which leases exist, with which TTL and keys, is state (granted and revoked through the
//! log, so it survives restart). When each lease runs out is runtime only, as in etcd: a
//! keepalive is not written anywhere, and a node that starts leading gives every lease its
//! full TTL again. Expiry revokes the lease through the log like a client's revoke, so the
//! attached keys are deleted in one revision with ordinary watch events.

use crate::log::{Log, Request, WriteError};
use crate::mvcc::{self, State};
use dashmap::DashMap;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// etcd's largest TTL.
pub const MAX_TTL: i64 = 9_000_000_000;

#[derive(Debug)]
pub struct Lessor {
    deadlines: DashMap<i64, Instant>,
    /// Grants below this TTL get this TTL (etcd derives 2 s from its election timeout).
    pub min_ttl: i64,
}

impl Default for Lessor {
    fn default() -> Self {
        Self::new(2)
    }
}

impl Lessor {
    pub fn new(min_ttl: i64) -> Self {
        Self {
            deadlines: DashMap::new(),
            min_ttl,
        }
    }

    /// The TTL a grant actually gets.
    pub fn effective_ttl(&self, requested: i64) -> i64 {
        requested.max(self.min_ttl)
    }

    pub fn granted(&self, id: i64, ttl: i64) {
        self.deadlines
            .insert(id, Instant::now() + Duration::from_secs(ttl as u64));
    }

    pub fn forget(&self, id: i64) {
        self.deadlines.remove(&id);
    }

    fn deadline(&self, id: i64, ttl: i64) -> Instant {
        *self
            .deadlines
            .entry(id)
            .or_insert_with(|| Instant::now() + Duration::from_secs(ttl as u64))
    }

    /// Renews a lease; its TTL, or None when it does not exist or already expired.
    pub fn renew(&self, state: &State, id: i64) -> Option<i64> {
        let lease = state.lease(id)?;
        let now = Instant::now();
        if self.deadline(id, lease.ttl) <= now {
            return None;
        }
        self.deadlines
            .insert(id, now + Duration::from_secs(lease.ttl as u64));
        Some(lease.ttl)
    }

    /// Remaining whole seconds and granted TTL of a lease.
    pub fn remaining(&self, state: &State, id: i64) -> Option<(i64, i64)> {
        let lease = state.lease(id)?;
        let left = self
            .deadline(id, lease.ttl)
            .saturating_duration_since(Instant::now());
        Some((left.as_secs() as i64, lease.ttl))
    }

    /// Forgets every deadline: the next leader term starts all leases afresh.
    pub fn reset(&self) {
        self.deadlines.clear();
    }

    /// Grants, through the log, every lease that live keys reference but no record granted
    /// (a bucket written by the Go Netsy, which keeps no leases), with `ttl` seconds from
    /// now, so that those keys still expire. Returns how many were recreated.
    pub async fn adopt_orphans(&self, log: &Log, ttl: i64) -> usize {
        let orphans = log.state().orphan_leases();
        let mut adopted = 0;
        for (id, keys) in orphans {
            match log.write(Request::LeaseGrant { id, ttl }).await {
                Ok(_) => {
                    self.granted(id, ttl);
                    adopted += 1;
                    tracing::warn!(
                        lease = id,
                        keys,
                        ttl,
                        "recreated a lease the bucket's keys reference but no record granted (written by the Go Netsy?)"
                    );
                }
                Err(WriteError::Mvcc(mvcc::Error::LeaseExists)) => {}
                Err(e) => tracing::error!(lease = id, error = %e, "could not recreate lease"),
            }
        }
        adopted
    }

    /// Revokes expired leases until `stop`.
    pub async fn run_expiry(&self, log: Log, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let state = log.state();
            let now = Instant::now();
            let expired: Vec<i64> = state
                .leases()
                .filter(|l| self.deadline(l.id, l.ttl) <= now)
                .map(|l| l.id)
                .collect();
            self.deadlines.retain(|id, _| state.lease(*id).is_some());
            for id in expired {
                match log.write(Request::LeaseRevoke { id }).await {
                    Ok(_) => {
                        crate::metrics::METRICS.leases_expired.inc();
                        tracing::info!(lease = id, "lease expired and was revoked");
                        self.forget(id);
                    }
                    Err(WriteError::Mvcc(mvcc::Error::LeaseNotFound)) => self.forget(id),
                    Err(e) => {
                        tracing::warn!(lease = id, error = %e, "revoking an expired lease failed; will retry");
                    }
                }
            }
        }
    }
}
