//! etcd's Watch service: one task per stream, many watchers per stream.

use super::Context;
use crate::metrics::METRICS;
use crate::mvcc::KeyRange;
use crate::proto::etcdserverpb::watch_server::Watch;
use crate::proto::etcdserverpb::{
    watch_create_request::FilterType, watch_request, WatchCreateRequest, WatchRequest,
    WatchResponse,
};
use crate::watch::{Sync, Watcher};
use bytes::Bytes;
use futures::Stream;
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

pub struct WatchService {
    ctx: Context,
    progress_interval: Duration,
    stop: CancellationToken,
}

impl WatchService {
    /// Streams end when `stop` is cancelled (server shutdown).
    pub fn new(ctx: Context, progress_interval: Duration, stop: CancellationToken) -> Self {
        Self {
            ctx,
            progress_interval,
            stop,
        }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

/// How long a follower may be without a leader before its require-leader watch streams
/// end with `etcdserver: no leader` (long enough for a failover to finish first).
const NO_LEADER_GRACE: Duration = Duration::from_secs(10);

/// Responses a slow client may leave unread before its stream (only) waits.
const OUTBOUND_BUFFER: usize = 256;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let require_leader = super::requires_leader(request.metadata().as_ref());
        let metadata = request.metadata().clone();
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(OUTBOUND_BUFFER);
        let stream = StreamTask {
            ctx: self.ctx.clone(),
            metadata,
            tx,
            watchers: BTreeMap::new(),
            next_id: 0,
            active: BTreeSet::new(),
        };
        METRICS.watch_streams.inc();
        tokio::spawn(stream.run(
            inbound,
            self.progress_interval,
            self.stop.clone(),
            require_leader,
        ));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

struct StreamTask {
    ctx: Context,
    /// The stream's metadata: its auth token, checked at each watch it creates.
    metadata: tonic::metadata::MetadataMap,
    tx: mpsc::Sender<Result<WatchResponse, Status>>,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
    /// Watchers that received events since the last progress tick.
    active: BTreeSet<i64>,
}

impl Drop for StreamTask {
    fn drop(&mut self) {
        METRICS.watchers.sub(self.watchers.len() as i64);
        METRICS.watch_streams.dec();
    }
}

impl StreamTask {
    async fn run(
        mut self,
        mut inbound: Streaming<WatchRequest>,
        progress_interval: Duration,
        stop: CancellationToken,
        require_leader: bool,
    ) {
        let mut head = self.ctx.log.subscribe();
        let mut roles = self.ctx.node.role_changes();
        // A stream that requires a leader ends once this node has had none for a while,
        // so the client re-watches where there is one.
        let mut leaderless_since: Option<tokio::time::Instant> = None;
        let mut tick = tokio::time::interval(progress_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let progress_requested = tokio::select! {
                req = inbound.next() => match req {
                    Some(Ok(req)) => match self.handle(req).await {
                        Ok(progress) => progress,
                        Err(()) => return,
                    },
                    _ => return,
                },
                changed = head.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    false
                }
                _ = stop.cancelled() => return,
                _ = roles.changed(), if require_leader => {
                    leaderless_since = match self.ctx.node.leader_id() {
                        0 => leaderless_since.or_else(|| Some(tokio::time::Instant::now())),
                        _ => None,
                    };
                    continue;
                }
                _ = tokio::time::sleep_until(
                    leaderless_since.unwrap_or_else(tokio::time::Instant::now) + NO_LEADER_GRACE
                ), if leaderless_since.is_some() => {
                    let _ = self.tx.send(Err(super::errors::no_leader())).await;
                    return;
                }
                _ = tick.tick() => {
                    if self.progress().await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let Ok(rev) = self.sync().await else { return };
            if !progress_requested {
                continue;
            }
            // As etcd 3.6+, a stream whose watchers do not all start at or below the head
            // gets no answer to a progress request.
            let allowed = self.watchers.values().all(|w| w.progress_allowed(rev));
            let outcome = if allowed { "answered" } else { "withheld" };
            METRICS
                .progress_requests
                .with_label_values(&[outcome])
                .inc();
            if allowed {
                // Every watcher of this stream has been sent everything up to `rev`.
                let resp = WatchResponse {
                    header: self.ctx.header(rev),
                    watch_id: -1,
                    ..Default::default()
                };
                if self.send(resp).await.is_err() {
                    return;
                }
            }
        }
    }

    /// Handles one client request; true when it asked for a progress notification.
    async fn handle(&mut self, req: WatchRequest) -> Result<bool, ()> {
        match req.request_union {
            Some(watch_request::RequestUnion::CreateRequest(c)) => self.create(c).await?,
            // etcd ignores a cancel for an unknown watch id.
            Some(watch_request::RequestUnion::CancelRequest(c))
                if self.watchers.remove(&c.watch_id).is_some() =>
            {
                METRICS.watchers.dec();
                let rev = self.ctx.log.state().revision;
                self.send(WatchResponse {
                    header: self.ctx.header(rev),
                    watch_id: c.watch_id,
                    canceled: true,
                    ..Default::default()
                })
                .await?;
            }
            Some(watch_request::RequestUnion::CancelRequest(_)) => {}
            Some(watch_request::RequestUnion::ProgressRequest(_)) => return Ok(true),
            None => {}
        }
        Ok(false)
    }

    async fn send(&self, resp: WatchResponse) -> Result<(), ()> {
        self.tx.send(Ok(resp)).await.map_err(|_| ())
    }

    async fn create(&mut self, c: WatchCreateRequest) -> Result<(), ()> {
        let state = self.ctx.log.state();
        let id = if c.watch_id != 0 {
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id
        };
        // As etcd: a watch the caller may not read is refused (any auth failure is this).
        let permitted = || {
            let key: &[u8] = if c.key.is_empty() { b"\0" } else { &c.key };
            match self.ctx.caller(&self.metadata) {
                Ok(None) => true,
                Ok(Some(caller)) => caller.check(key, &c.range_end, crate::auth::READ).is_ok(),
                Err(_) => false,
            }
        };
        let refused = if !permitted() {
            Some(
                "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
                    .to_string(),
            )
        } else if self.watchers.contains_key(&id) {
            Some("mvcc: duplicate watch ID provided on the WatchStream".to_string())
        } else if self.watchers.len() >= self.ctx.limits.max_watchers_per_stream {
            // etcd has no such bound; every watcher costs the stream memory and wake-ups.
            Some(format!(
                "netsy: too many watchers on this stream (--max-watchers-per-stream {})",
                self.ctx.limits.max_watchers_per_stream
            ))
        } else {
            None
        };
        if let Some(cancel_reason) = refused {
            let resp = WatchResponse {
                header: self.ctx.header(state.revision),
                watch_id: -1,
                created: true,
                canceled: true,
                cancel_reason,
                ..Default::default()
            };
            return self.send(resp).await;
        }
        if c.watch_id == 0 {
            self.next_id += 1;
        }
        // etcd's normalisation: an empty key is "\0", the smallest key.
        let key = if c.key.is_empty() {
            Bytes::from_static(b"\0")
        } else {
            c.key.clone()
        };
        let watcher = Watcher {
            id,
            range: KeyRange::new(key, c.range_end.clone()),
            next: if c.start_revision > 0 {
                c.start_revision
            } else {
                state.revision + 1
            },
            start_revision: c.start_revision.max(0),
            prev_kv: c.prev_kv,
            no_put: c.filters.contains(&(FilterType::Noput as i32)),
            no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
            progress_notify: c.progress_notify,
            fragment: c.fragment,
        };
        self.watchers.insert(id, watcher);
        METRICS.watchers.inc();
        self.send(WatchResponse {
            header: self.ctx.header(state.revision),
            watch_id: id,
            created: true,
            ..Default::default()
        })
        .await
    }

    /// Brings every watcher up to the published head; returns the revision synced to.
    async fn sync(&mut self) -> Result<i64, ()> {
        let state = self.ctx.log.state();
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            while let Some(w) = self.watchers.get_mut(&id) {
                match w.sync(&state) {
                    Sync::Idle => break,
                    Sync::Compacted(compact_revision) => {
                        self.watchers.remove(&id);
                        METRICS.watchers.dec();
                        // etcd's compaction cancel carries no revision in its header.
                        self.send(WatchResponse {
                            header: self.ctx.header(0),
                            watch_id: id,
                            canceled: true,
                            compact_revision,
                            ..Default::default()
                        })
                        .await?;
                        break;
                    }
                    Sync::Events(events) if events.is_empty() => {}
                    Sync::Events(events) => {
                        let fragment = w.fragment;
                        self.active.insert(id);
                        let resp = WatchResponse {
                            header: self.ctx.header(state.revision),
                            watch_id: id,
                            events,
                            ..Default::default()
                        };
                        for part in fragments(resp, fragment, self.ctx.limits.max_request_bytes) {
                            self.send(part).await?;
                        }
                    }
                }
            }
        }
        Ok(state.revision)
    }

    /// Periodic progress: watchers that asked for it and saw no events get the head.
    async fn progress(&mut self) -> Result<(), ()> {
        let state = self.ctx.log.state();
        let idle: Vec<i64> = self
            .watchers
            .values()
            .filter(|w| w.progress_notify && w.next > state.revision)
            .filter(|w| w.progress_allowed(state.revision))
            .filter(|w| !self.active.contains(&w.id))
            .map(|w| w.id)
            .collect();
        self.active.clear();
        for id in idle {
            self.send(WatchResponse {
                header: self.ctx.header(state.revision),
                watch_id: id,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }
}

/// Splits a response whose events exceed `limit` bytes into fragments, when the watcher
/// asked for fragmentation; every part but the last has `fragment` set.
fn fragments(resp: WatchResponse, fragment: bool, limit: usize) -> Vec<WatchResponse> {
    if !fragment || resp.encoded_len() <= limit || resp.events.len() < 2 {
        return vec![resp];
    }
    let mut parts = Vec::new();
    let mut current = WatchResponse {
        events: vec![],
        ..resp.clone()
    };
    let mut size = 0;
    for ev in resp.events {
        let len = ev.encoded_len();
        if !current.events.is_empty() && size + len > limit {
            let next = WatchResponse {
                events: vec![],
                ..current.clone()
            };
            current.fragment = true;
            parts.push(std::mem::replace(&mut current, next));
            size = 0;
        }
        size += len;
        current.events.push(ev);
    }
    parts.push(current);
    parts
}
