//! The role loop: lead while holding the lease, follow (and contend) otherwise.
//!
//! Leading runs the writer, the snapshotter, lease expiry and orphan adoption under a lease
//! kept renewed in the background. Losing it (fenced by another writer's chunk, or a
//! renewal that failed past the lease) stops all of them: the node then follows whoever
//! leads while it waits for the lease again, and on winning it catches up from the bucket
//! (every chunk after its position, or a full reload behind a newer snapshot) before the
//! writer starts at the position the bucket proves.

use super::{follower, Node, Role};
use crate::lease::Lessor;
use crate::log::layout::Position;
use crate::log::leader::{Leader, LeaderError, LeaderTiming};
use crate::log::snapshot::{self, SnapshotPolicy};
use crate::log::{run_writer, Log, Queue, WriteError, WriterConfig, WriterExit};
use crate::store::DynStore;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The leader lease kept renewed in the background from the moment it is held, replay
/// included: a replay longer than the lease must not let it lapse (a contender would take
/// over meanwhile, and this node would start serving on an expired lease).
pub struct Renewing {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<LeaderError>,
}

impl Renewing {
    pub fn start(leader: &Leader) -> Self {
        let stop = CancellationToken::new();
        let task = {
            let (leader, stop) = (leader.clone(), stop.clone());
            tokio::spawn(async move { leader.keep_renewed(stop).await })
        };
        Self { stop, task }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// How this node enters the loop.
pub enum Start {
    /// It acquired the lease and replayed the bucket under it.
    Leading {
        leader: Leader,
        renewing: Renewing,
        last_snapshot: Option<i64>,
    },
    /// Another node holds the lease: follow it and contend.
    Following,
}

/// What the loop needs from the configuration.
#[derive(Clone)]
pub struct Settings {
    pub holder: String,
    pub timing: LeaderTiming,
    pub writer: WriterConfig,
    pub snapshots: SnapshotPolicy,
    pub orphan_lease_ttl: i64,
}

/// Everything the loop drives.
pub struct RoleLoop {
    pub node: Arc<Node>,
    pub log: Log,
    pub queue: Queue,
    pub store: DynStore,
    pub settings: Settings,
    pub term: Arc<AtomicU64>,
    pub lessor: Arc<Lessor>,
    pub stop: CancellationToken,
}

impl RoleLoop {
    /// Runs until `stop`; releases the lease if it holds it then.
    pub async fn run(mut self, mut start: Start) {
        loop {
            let (leader, renewing, last_snapshot) = match start {
                Start::Leading {
                    leader,
                    renewing,
                    last_snapshot,
                } => (leader, renewing, last_snapshot),
                Start::Following => match self.follow_until_leading().await {
                    Some(x) => x,
                    None => return,
                },
            };
            if !self.lead(leader, renewing, last_snapshot).await {
                return;
            }
            start = Start::Following;
        }
    }

    /// Leads until fenced (true: follow again) or stopped (false).
    async fn lead(
        &mut self,
        leader: Leader,
        renewing: Renewing,
        last_snapshot: Option<i64>,
    ) -> bool {
        let (log, store, settings) = (self.log.clone(), self.store.clone(), self.settings.clone());
        let next: Position = log.next_position();
        self.term.store(leader.term(), Ordering::Relaxed);
        log.set_leader(Some(leader.clone()));
        self.node.set_role(Role::Leading {
            term: leader.term(),
        });
        tracing::info!(term = leader.term(), next = %next, revision = log.state().revision, "leading");
        let Renewing {
            stop: renew_stop,
            task: mut renewer,
        } = renewing;
        let snapshotter = tokio::spawn(snapshot::run(
            log.clone(),
            store.clone(),
            settings.snapshots.clone(),
            settings.writer.leader_id.clone(),
            settings.writer.cluster_id,
            last_snapshot,
            renew_stop.clone(),
        ));
        let adopt = {
            let (lessor, log, ttl) = (self.lessor.clone(), log.clone(), settings.orphan_lease_ttl);
            tokio::spawn(async move { lessor.adopt_orphans(&log, ttl).await })
        };
        let expiry = {
            let (lessor, log, stop) = (self.lessor.clone(), log.clone(), renew_stop.clone());
            tokio::spawn(async move { lessor.run_expiry(log, stop).await })
        };
        // The writer notices a lost lease at its next write; an idle one learns it from the
        // renewer, so the node steps down (and refuses linearizable reads) either way. A
        // batch dropped mid-PUT is unacknowledged, as after a crash.
        let (exit, renewal) = tokio::select! {
            exit = run_writer(&log, &mut self.queue, &store, &leader, &settings.writer, next, &self.stop) => {
                renew_stop.cancel();
                (exit, (&mut renewer).await)
            }
            renewal = &mut renewer => {
                let reason = match &renewal {
                    Ok(LeaderError::Lost) => WriteError::NotLeader,
                    _ => WriteError::LeaseExpired,
                };
                (WriterExit::Fenced(reason), renewal)
            }
        };
        renew_stop.cancel();
        // Counted before stepping down closes their streams.
        let followers = self.node.follower_count();
        log.set_leader(None);
        let stopping = matches!(exit, WriterExit::Shutdown | WriterExit::Closed);
        if stopping {
            // Released before the followers' streams end: a follower whose stream ends
            // wakes its contender, which takes a released lease at once but waits a whole
            // lease for one still held (it raced the release before: seconds of no leader).
            self.queue.reject_pending(&WriteError::Shutdown);
            if let Err(e) = leader.release(followers).await {
                tracing::warn!(error = %e, "could not release the leader lease");
            }
        }
        self.node.set_role(Role::NoLeader);
        let _ = snapshotter.await;
        let _ = expiry.await;
        adopt.abort();
        match exit {
            WriterExit::Shutdown | WriterExit::Closed => {
                debug_assert!(stopping);
                false
            }
            WriterExit::Fenced(reason) => {
                tracing::error!(
                    reason = %reason,
                    renewal = ?renewal.ok(),
                    "stopped writing; following whoever leads while waiting to lead again"
                );
                true
            }
        }
    }

    /// Follows whoever leads while contending for the lease; once it is won, catches up
    /// from the bucket. None when stopped.
    async fn follow_until_leading(&mut self) -> Option<(Leader, Renewing, Option<i64>)> {
        let settings = self.settings.clone();
        let cluster_id = settings.writer.cluster_id;
        loop {
            let follow_stop = CancellationToken::new();
            let following = tokio::spawn(follower::run(
                self.node.clone(),
                self.log.clone(),
                self.store.clone(),
                cluster_id,
                self.term.clone(),
                follow_stop.clone(),
            ));
            // Writes reach this queue only from a node that believed it was leading a
            // moment ago; everything else is forwarded by the API.
            let acquired = {
                let identity = (&self.node.me).into();
                let acquire = Leader::acquire(
                    self.store.clone(),
                    &settings.holder,
                    &identity,
                    settings.timing,
                    &self.stop,
                    &self.node.contention,
                );
                tokio::pin!(acquire);
                loop {
                    tokio::select! {
                        res = &mut acquire => break res,
                        more = self.queue.reject_next(&WriteError::NotLeader) => if !more { break Err(LeaderError::Shutdown) },
                    }
                }
            };
            follow_stop.cancel();
            let _ = following.await;
            self.node.set_role(Role::NoLeader);
            let leader = match acquired {
                Ok(l) => l,
                Err(LeaderError::Shutdown) => return None,
                Err(e) => {
                    tracing::error!(error = %e, "acquiring the leader lease failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            leader.set_cluster_id(cluster_id);
            let renewing = Renewing::start(&leader);
            match follower::catch_up(&self.log, &self.store, cluster_id).await {
                Ok(last_snapshot) => {
                    tracing::info!(
                        revision = self.log.state().revision,
                        next = %self.log.next_position(),
                        "caught up with the bucket"
                    );
                    self.lessor.reset();
                    return Some((leader, renewing, last_snapshot));
                }
                Err(e) => {
                    tracing::error!(error = %e, "catching up with the bucket failed; releasing leadership and retrying");
                    renewing.stop().await;
                    let _ = leader.release(0).await;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}
