//! The workloads, written against the generated etcd v3 gRPC stubs.

use super::report::{Latencies, Outcome};
use super::{Options, Target, Workload};
use crate::proto::etcdserverpb::{
    compare, kv_client::KvClient, request_op, watch_client::WatchClient, watch_request,
    CompactionRequest, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest,
    WatchCreateRequest, WatchRequest,
};
use anyhow::Context as _;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tonic::transport::Channel;

/// Per-client tally.
#[derive(Default)]
struct Tally {
    ops: u64,
    errors: u64,
    lat: Vec<u32>,
    /// Highest revision acknowledged to this client.
    revision: i64,
}

impl Tally {
    fn record(&mut self, started: Instant, ok: bool) {
        if ok {
            self.ops += 1;
            self.lat
                .push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
        } else {
            self.errors += 1;
        }
    }
}

fn merge(tallies: Vec<Tally>) -> (u64, u64, Latencies, i64) {
    let mut ops = 0;
    let mut errors = 0;
    let mut lat = Vec::new();
    let mut rev = 0;
    for t in tallies {
        ops += t.ops;
        errors += t.errors;
        lat.extend(t.lat);
        rev = rev.max(t.revision);
    }
    (ops, errors, Latencies(lat), rev)
}

async fn channels(target: &Target, n: usize) -> anyhow::Result<Vec<Channel>> {
    channels_to(&target.endpoint, n).await
}

async fn channels_to(endpoint: &str, n: usize) -> anyhow::Result<Vec<Channel>> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let ch = tonic::transport::Endpoint::from_shared(endpoint.to_string())?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("connecting to {endpoint}"))?;
        v.push(ch);
    }
    Ok(v)
}

fn kv(channels: &[Channel], client: usize) -> KvClient<Channel> {
    KvClient::new(channels[client % channels.len()].clone()).max_decoding_message_size(usize::MAX)
}

fn key(prefix: &str, i: usize) -> Bytes {
    Bytes::from(format!("{prefix}{i:08}"))
}

/// A value of `size` bytes that does not compress (as real objects mostly do not at 4 KiB
/// granularity), starting with the send time in microseconds since the epoch.
fn value(size: usize, pattern: &Bytes) -> Bytes {
    let mut v = Vec::with_capacity(size.max(8));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64;
    v.extend_from_slice(&now.to_be_bytes());
    v.extend_from_slice(&pattern[..size.saturating_sub(8).min(pattern.len())]);
    Bytes::from(v)
}

fn sent_at(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.get(..8)?.try_into().ok()?))
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

/// Puts `count` keys with `clients` concurrent clients; returns the tallies.
async fn load(
    chans: &[Channel],
    prefix: &str,
    count: usize,
    clients: usize,
    pattern: &Bytes,
    size: usize,
) -> Vec<Tally> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..clients.max(1) {
        let (mut kv, next, prefix, pattern) = (
            kv(chans, c),
            next.clone(),
            prefix.to_string(),
            pattern.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= count {
                    return t;
                }
                let started = Instant::now();
                let r = kv
                    .put(PutRequest {
                        key: key(&prefix, i),
                        value: value(size, &pattern),
                        ..Default::default()
                    })
                    .await;
                if let Ok(r) = &r {
                    t.revision = t
                        .revision
                        .max(r.get_ref().header.as_ref().map_or(0, |h| h.revision));
                }
                t.record(started, r.is_ok());
            }
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap_or_default());
    }
    out
}

/// Runs `op` from `clients` tasks for `duration`; `op(kv, client, i, tally)`.
async fn timed<F, Fut>(chans: &[Channel], clients: usize, duration: Duration, op: F) -> Vec<Tally>
where
    F: Fn(KvClient<Channel>, usize, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<i64, tonic::Status>> + Send,
{
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for c in 0..clients.max(1) {
        let (kv, op) = (kv(chans, c), op.clone());
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let started = Instant::now();
                let r = op(kv.clone(), c, i).await;
                if let Ok(rev) = &r {
                    t.revision = t.revision.max(*rev);
                }
                t.record(started, r.is_ok());
                i += 1;
            }
            t
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap_or_default());
    }
    out
}

fn header_rev(h: &Option<crate::proto::etcdserverpb::ResponseHeader>) -> i64 {
    h.as_ref().map_or(0, |h| h.revision)
}

/// kube-apiserver's GuaranteedUpdate as it reaches etcd: put `value` if `key` is still at
/// mod revision `last`, else read it back to retry from.
fn guaranteed_update(key: &Bytes, last: i64, value: Bytes) -> TxnRequest {
    TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Mod as i32,
            key: key.clone(),
            target_union: Some(compare::TargetUnion::ModRevision(last)),
            ..Default::default()
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.clone(),
                value,
                ..Default::default()
            })),
        }],
        failure: vec![RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: key.clone(),
                ..Default::default()
            })),
        }],
    }
}

/// The target's `/metrics` text (None if it serves none).
async fn metrics_text(endpoint: &str) -> Option<String> {
    let addr = endpoint.trim_start_matches("http://").trim_end_matches('/');
    match crate::http::get(addr, "/metrics").await {
        Ok((200, text)) => Some(text),
        _ => None,
    }
}

/// Every unlabelled sample of the target's `/metrics` (empty if it has none).
async fn scrape(endpoint: &str) -> BTreeMap<String, f64> {
    let Some(text) = metrics_text(endpoint).await else {
        return BTreeMap::new();
    };
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.contains('{'))
        .filter_map(|l| {
            let (name, v) = l.split_once(' ')?;
            Some((name.to_string(), v.trim().parse::<f64>().ok()?))
        })
        .collect()
}

/// The resident memory metric every target exposes (etcd and Netsy alike).
const RSS: &str = "process_resident_memory_bytes";

/// The server's metrics once its RSS has stopped moving: a second apart, three samples
/// within 1 % of each other (at most `SETTLE_LIMIT` after the first). Right after a load,
/// memory still in flight (a snapshot being written, the allocator's not yet returned
/// pages) is counted as well as the keyset; the settled figure is what holding the keyset
/// costs.
async fn settled_metrics(endpoint: &str) -> (BTreeMap<String, f64>, Duration) {
    const SETTLE_LIMIT: Duration = Duration::from_secs(30);
    let started = Instant::now();
    let mut samples: Vec<f64> = Vec::new();
    loop {
        let metrics = scrape(endpoint).await;
        let Some(rss) = metrics.get(RSS).copied() else {
            return (metrics, started.elapsed());
        };
        samples.push(rss);
        let flat = match samples[..] {
            [.., a, b, c] => a.max(b).max(c) - a.min(b).min(c) <= rss * 0.01,
            _ => false,
        };
        if flat || started.elapsed() >= SETTLE_LIMIT {
            return (metrics, started.elapsed());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, name: &str) -> Option<f64> {
    Some(after.get(name)? - before.get(name).copied().unwrap_or(0.0))
}

/// Adds what Netsy's own metrics say about the PUTs behind the writes (absent on etcd).
fn put_figures(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    writes: u64,
    elapsed: Duration,
    extra: &mut BTreeMap<String, f64>,
) {
    let Some(puts) = delta(before, after, "netsy_chunk_put_duration_seconds_count") else {
        return;
    };
    if puts <= 0.0 {
        return;
    }
    let secs = elapsed.as_secs_f64();
    extra.insert("store_puts_per_sec".into(), puts / secs);
    extra.insert("writes_per_put".into(), writes as f64 / puts);
    if let Some(records) = delta(before, after, "netsy_commit_batch_records_sum") {
        extra.insert("records_per_put".into(), records / puts);
    }
    if let Some(put_secs) = delta(before, after, "netsy_chunk_put_duration_seconds_sum") {
        extra.insert("mean_put_ms".into(), put_secs / puts * 1000.0);
    }
}

async fn compact(chans: &[Channel]) {
    let mut kv = kv(chans, 0);
    if let Ok(r) = kv
        .range(RangeRequest {
            key: Bytes::from_static(b"\0"),
            limit: 1,
            ..Default::default()
        })
        .await
    {
        let rev = header_rev(&r.get_ref().header);
        let _ = kv
            .compact(CompactionRequest {
                revision: rev,
                physical: false,
            })
            .await;
    }
}

pub(super) async fn run(
    target: &Target,
    workload: Workload,
    o: &Options,
    prefix: &str,
) -> anyhow::Result<Outcome> {
    let chans = channels(target, o.connections).await?;
    let pattern: Bytes = (0..o.value_size.max(8))
        .map(|_| rand::random::<u8>())
        .collect::<Vec<u8>>()
        .into();
    let size = o.value_size;
    let mut extra = BTreeMap::new();
    let before = scrape(&target.endpoint).await;
    let started;
    let tallies = match workload {
        Workload::Put => {
            let (prefix, pattern, keys) = (prefix.to_string(), pattern.clone(), o.keys.max(1));
            started = Instant::now();
            timed(&chans, o.clients, o.duration, move |mut kv, _c, _i| {
                let (prefix, pattern) = (prefix.clone(), pattern.clone());
                async move {
                    let r = kv
                        .put(PutRequest {
                            key: key(&prefix, rand::random_range(0..keys)),
                            value: value(size, &pattern),
                            ..Default::default()
                        })
                        .await?;
                    Ok(header_rev(&r.get_ref().header))
                }
            })
            .await
        }
        Workload::Get | Workload::GetSerializable | Workload::Mixed => {
            let keys = o.keys.max(1);
            load(&chans, prefix, keys, o.clients, &pattern, size).await;
            let serializable = workload == Workload::GetSerializable;
            let mixed = workload == Workload::Mixed;
            let (prefix, pattern) = (prefix.to_string(), pattern.clone());
            started = Instant::now();
            timed(&chans, o.clients, o.duration, move |mut kv, _c, i| {
                let (prefix, pattern) = (prefix.clone(), pattern.clone());
                async move {
                    let k = key(&prefix, rand::random_range(0..keys));
                    if mixed && i % 10 == 9 {
                        let r = kv
                            .put(PutRequest {
                                key: k,
                                value: value(size, &pattern),
                                ..Default::default()
                            })
                            .await?;
                        return Ok(header_rev(&r.get_ref().header));
                    }
                    let r = kv
                        .range(RangeRequest {
                            key: k,
                            serializable,
                            ..Default::default()
                        })
                        .await?;
                    if r.get_ref().kvs.is_empty() {
                        return Err(tonic::Status::not_found("preloaded key missing"));
                    }
                    Ok(0)
                }
            })
            .await
        }
        Workload::Txn => {
            // Each client owns a few keys and updates them as kube-apiserver does: compare
            // the mod_revision it last saw; on a conflict the failure branch returns the
            // current object and the client retries from that.
            let per_client = 4;
            let count = o.clients.max(1) * per_client;
            load(&chans, prefix, count, o.clients, &pattern, size).await;
            let revs: Arc<Vec<AtomicI64>> =
                Arc::new((0..count).map(|_| AtomicI64::new(0)).collect());
            {
                let mut kv = kv(&chans, 0);
                let r = kv
                    .range(RangeRequest {
                        key: Bytes::from(prefix.to_string()),
                        range_end: crate::mvcc::prefix_end(prefix.as_bytes()),
                        ..Default::default()
                    })
                    .await?;
                for (i, item) in r.get_ref().kvs.iter().enumerate().take(count) {
                    revs[i].store(item.mod_revision, Ordering::Relaxed);
                }
            }
            let (prefix, pattern) = (prefix.to_string(), pattern.clone());
            started = Instant::now();
            timed(&chans, o.clients, o.duration, move |mut kv, c, i| {
                let (prefix, pattern, revs) = (prefix.clone(), pattern.clone(), revs.clone());
                async move {
                    let slot = c * per_client + (i as usize % per_client);
                    let k = key(&prefix, slot);
                    let last = revs[slot].load(Ordering::Relaxed);
                    let r = kv
                        .txn(guaranteed_update(&k, last, value(size, &pattern)))
                        .await?;
                    let r = r.into_inner();
                    let rev = header_rev(&r.header);
                    if r.succeeded {
                        revs[slot].store(rev, Ordering::Relaxed);
                        Ok(rev)
                    } else {
                        // Another update won (cannot happen with owned keys): resync.
                        Err(tonic::Status::aborted("guaranteed update conflict"))
                    }
                }
            })
            .await
        }
        Workload::List => {
            let count = 10_000;
            load(&chans, prefix, count, o.clients, &pattern, size).await;
            let (start, end) = (
                Bytes::from(prefix.to_string()),
                crate::mvcc::prefix_end(prefix.as_bytes()),
            );
            started = Instant::now();
            timed(&chans, o.clients, o.duration, move |mut kv, _c, _i| {
                let (start, end) = (start.clone(), end.clone());
                async move {
                    let r = kv
                        .range(RangeRequest {
                            key: start,
                            range_end: end,
                            limit: 500,
                            ..Default::default()
                        })
                        .await?;
                    let r = r.get_ref();
                    if r.kvs.len() != 500 || r.count != count as i64 || !r.more {
                        return Err(tonic::Status::data_loss("short page"));
                    }
                    Ok(0)
                }
            })
            .await
        }
        Workload::Watch => return watch(target, &chans, o, prefix, &pattern).await,
        Workload::Idle => return idle(target, &chans, o, prefix).await,
        Workload::Kubernetes => {
            let objects = 1000;
            load(&chans, prefix, objects, o.clients, &pattern, size).await;
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let background = kubernetes_readers(&chans, prefix, stop.clone());
            let (prefix_owned, pattern) = (prefix.to_string(), pattern.clone());
            started = Instant::now();
            let t = timed(&chans, o.clients, o.duration, move |mut kv, _c, _i| {
                let (prefix, pattern) = (prefix_owned.clone(), pattern.clone());
                async move {
                    let k = key(&prefix, rand::random::<u64>() as usize % objects);
                    // GuaranteedUpdate: read the object (as kube-apiserver's etcd3 store
                    // does when its cache cannot say, linearizably), then compare-and-swap,
                    // retrying from what a conflict returns.
                    let r = kv
                        .range(RangeRequest {
                            key: k.clone(),
                            ..Default::default()
                        })
                        .await?;
                    let mut last = r.get_ref().kvs.first().map_or(0, |kv| kv.mod_revision);
                    for _ in 0..16 {
                        let r = kv
                            .txn(guaranteed_update(&k, last, value(size, &pattern)))
                            .await?
                            .into_inner();
                        if r.succeeded {
                            return Ok(header_rev(&r.header));
                        }
                        last = r
                            .responses
                            .first()
                            .and_then(|op| match &op.response {
                                Some(crate::proto::etcdserverpb::response_op::Response::ResponseRange(rr)) => {
                                    rr.kvs.first().map(|kv| kv.mod_revision)
                                }
                                _ => None,
                            })
                            .unwrap_or(0);
                    }
                    Err(tonic::Status::aborted("16 conflicts in a row"))
                }
            })
            .await;
            stop.store(true, Ordering::Relaxed);
            let (events, lists) = background.await;
            let secs = started.elapsed().as_secs_f64();
            extra.insert("watch_events_per_sec".into(), events as f64 / secs);
            extra.insert("lists_per_sec".into(), lists as f64 / secs);
            t
        }
        Workload::Memory => {
            let (keys, size) = (o.memory_keys.max(1), o.memory_value_size);
            let pattern: Bytes = (0..size.max(8))
                .map(|_| rand::random::<u8>())
                .collect::<Vec<u8>>()
                .into();
            started = Instant::now();
            let t = load(&chans, prefix, keys, o.clients, &pattern, size).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let after = scrape(&target.endpoint).await;
            if let Some(growth) = delta(&before, &after, RSS) {
                let key_len = key(prefix, 0).len();
                let raw = (keys * (key_len + size)) as f64;
                extra.insert("rss_growth_mib".into(), growth / 1048576.0);
                extra.insert("raw_mib".into(), raw / 1048576.0);
                extra.insert("rss_bytes_per_key".into(), growth / keys as f64);
                extra.insert("rss_over_raw".into(), growth / raw);
                if let Some(total) = after.get(RSS) {
                    extra.insert("rss_mib".into(), total / 1048576.0);
                }
                let (settled, waited) = settled_metrics(&target.endpoint).await;
                if let Some(growth) = delta(&before, &settled, RSS) {
                    extra.insert("settled_bytes_per_key".into(), growth / keys as f64);
                    extra.insert("settled_over_raw".into(), growth / raw);
                    extra.insert("settled_after_s".into(), waited.as_secs_f64());
                }
            }
            t
        }
    };
    let elapsed = started.elapsed();
    let (ops, errors, lat, _) = merge(tallies);
    if matches!(
        workload,
        Workload::Put | Workload::Mixed | Workload::Txn | Workload::Kubernetes
    ) {
        let after = scrape(&target.endpoint).await;
        let writes = if workload == Workload::Mixed {
            ops / 10
        } else {
            ops
        };
        put_figures(&before, &after, writes, elapsed, &mut extra);
    }
    compact(&chans).await;
    Ok(Outcome::new(
        target, workload, o.clients, ops, elapsed, lat, errors, extra,
    ))
}

/// The Kubernetes workload's readers until `stop`: 4 watch streams with prev_kv on the
/// prefix (counting events) and one client listing it in pages of 500 ten times a second
/// (a reflector's relist or a paginated list the watch cache cannot serve). Returns
/// (events, lists).
fn kubernetes_readers(
    chans: &[Channel],
    prefix: &str,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> impl std::future::Future<Output = (u64, u64)> {
    let (start, end) = (
        Bytes::from(prefix.to_string()),
        crate::mvcc::prefix_end(prefix.as_bytes()),
    );
    let mut tasks = Vec::new();
    for w in 0..4 {
        let mut client =
            WatchClient::new(chans[w % chans.len()].clone()).max_decoding_message_size(usize::MAX);
        let create = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key: start.clone(),
                    range_end: end.clone(),
                    prev_kv: true,
                    ..Default::default()
                },
            )),
        };
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let _ = tx.send(create).await;
            let Ok(stream) = client
                .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
            else {
                return 0;
            };
            let mut stream = stream.into_inner();
            let mut events = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(200), stream.message()).await {
                    Ok(Ok(Some(m))) => events += m.events.len() as u64,
                    Ok(_) => break,
                    Err(_) => {}
                }
            }
            events
        }));
    }
    let mut lister = kv(chans, 0);
    let lists = tokio::spawn(async move {
        let mut n = 0u64;
        let mut every = tokio::time::interval(Duration::from_millis(100));
        while !stop.load(Ordering::Relaxed) {
            every.tick().await;
            let mut from = start.clone();
            loop {
                let Ok(r) = lister
                    .range(RangeRequest {
                        key: from.clone(),
                        range_end: end.clone(),
                        limit: 500,
                        ..Default::default()
                    })
                    .await
                else {
                    return n;
                };
                let r = r.into_inner();
                match (r.more, r.kvs.last()) {
                    (true, Some(last)) => {
                        let mut k = last.key.to_vec();
                        k.push(0);
                        from = k.into();
                    }
                    _ => break,
                }
            }
            n += 1;
        }
        n
    });
    async move {
        let mut events = 0;
        for t in tasks {
            events += t.await.unwrap_or(0);
        }
        (events, lists.await.unwrap_or(0))
    }
}

/// W watch streams on the prefix, `clients` writers putting for the duration; then every
/// watcher must catch up to the last acknowledged revision.
async fn watch(
    target: &Target,
    chans: &[Channel],
    o: &Options,
    prefix: &str,
    pattern: &Bytes,
) -> anyhow::Result<Outcome> {
    let watchers = o.watchers.max(1);
    let watch_chans = match &target.watch_endpoint {
        Some(e) => channels_to(e, chans.len()).await?,
        None => chans.to_vec(),
    };
    let goal = Arc::new(AtomicI64::new(i64::MAX));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(watchers);
    let mut tasks = Vec::new();
    for w in 0..watchers {
        let mut client = WatchClient::new(watch_chans[w % watch_chans.len()].clone())
            .max_decoding_message_size(usize::MAX);
        let (goal, ready_tx) = (goal.clone(), ready_tx.clone());
        let create = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key: Bytes::from(prefix.to_string()),
                    range_end: crate::mvcc::prefix_end(prefix.as_bytes()),
                    ..Default::default()
                },
            )),
        };
        tasks.push(tokio::spawn(async move {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let _ = tx.send(create).await;
            let mut stream = client
                .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await?
                .into_inner();
            let mut events = 0u64;
            let mut lat = Vec::new();
            // When each revision reached this watcher (the first watcher only: one sample
            // per write).
            let mut arrived: Vec<(i64, u64)> = Vec::new();
            let mut seen = 0i64;
            let mut signalled = false;
            loop {
                if seen >= goal.load(Ordering::Relaxed) {
                    break;
                }
                let msg = match tokio::time::timeout(Duration::from_millis(200), stream.message())
                    .await
                {
                    Ok(Ok(Some(m))) => m,
                    Ok(Ok(None)) | Ok(Err(_)) => break,
                    Err(_) => continue,
                };
                if msg.created && !signalled {
                    signalled = true;
                    let _ = ready_tx.send(()).await;
                }
                let now = now_micros();
                for e in &msg.events {
                    if let Some(kv) = &e.kv {
                        events += 1;
                        seen = seen.max(kv.mod_revision);
                        if let Some(t) = sent_at(&kv.value) {
                            lat.push(now.saturating_sub(t).min(u32::MAX as u64) as u32);
                        }
                        if w == 0 {
                            arrived.push((kv.mod_revision, now));
                        }
                    }
                }
            }
            drop(tx);
            Ok::<_, tonic::Status>((events, lat, arrived))
        }));
    }
    drop(ready_tx);
    for _ in 0..watchers {
        if tokio::time::timeout(Duration::from_secs(10), ready_rx.recv())
            .await
            .ok()
            .flatten()
            .is_none()
        {
            anyhow::bail!("a watcher was not created within 10 s");
        }
    }
    let started = Instant::now();
    let (p, pattern2, keys, size) = (
        prefix.to_string(),
        pattern.clone(),
        o.keys.max(1),
        o.value_size,
    );
    // When each put was acknowledged, by revision.
    let acked = Arc::new(std::sync::Mutex::new(Vec::<(i64, u64)>::new()));
    let acked2 = acked.clone();
    let writers = timed(chans, o.clients, o.duration, move |mut kv, _c, _i| {
        let (p, pattern, acked) = (p.clone(), pattern2.clone(), acked2.clone());
        async move {
            let r = kv
                .put(PutRequest {
                    key: key(&p, rand::random_range(0..keys)),
                    value: value(size, &pattern),
                    ..Default::default()
                })
                .await?;
            let rev = header_rev(&r.get_ref().header);
            acked.lock().expect("acks").push((rev, now_micros()));
            Ok(rev)
        }
    })
    .await;
    let write_secs = started.elapsed().as_secs_f64();
    let (writes, write_errors, _, last_rev) = merge(writers);
    goal.store(last_rev, Ordering::Relaxed);
    let mut events = 0u64;
    let mut lat = Vec::new();
    let mut arrived = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for t in tasks {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Ok(Ok(Ok((e, l, a)))) = tokio::time::timeout(left, t).await {
            events += e;
            lat.extend(l);
            arrived.extend(a);
        }
    }
    // From the writer's acknowledgement to the watcher's event (0 when the event came
    // first, as it can on the node that wrote).
    let mut ack_to_event = Latencies(
        acked
            .lock()
            .expect("acks")
            .iter()
            .filter_map(|(rev, at)| arrived.get(rev).map(|e: &u64| e.saturating_sub(*at)))
            .map(|us| us.min(u32::MAX as u64) as u32)
            .collect(),
    );
    let elapsed = started.elapsed();
    let mut extra = BTreeMap::new();
    extra.insert("watchers".into(), watchers as f64);
    extra.insert("ack_to_event_p50_ms".into(), ack_to_event.quantile_ms(0.5));
    extra.insert("ack_to_event_p99_ms".into(), ack_to_event.quantile_ms(0.99));
    extra.insert("writes_per_sec".into(), writes as f64 / write_secs);
    // Failed puts may or may not have been applied; lost counts only acknowledged ones.
    let expected = writes * watchers as u64;
    extra.insert("lost_events".into(), expected.saturating_sub(events) as f64);
    compact(chans).await;
    Ok(Outcome::new(
        target,
        Workload::Watch,
        o.clients,
        events,
        elapsed,
        Latencies(lat),
        write_errors,
        extra,
    ))
}

/// S3 request prices, US East (N. Virginia), per 1,000 requests: (PUT, COPY, POST and
/// LIST; GET and the rest). DELETE is free. S3 Express One Zone also bills upload and
/// retrieval per GB beyond 512 KiB per request, which chunks and lease objects never reach.
const STANDARD_PRICES: (f64, f64) = (0.005, 0.0004);
const EXPRESS_PRICES: (f64, f64) = (0.00113, 0.00003);
const MONTH_SECONDS: f64 = 30.0 * 24.0 * 3600.0;

/// Store requests by operation (put, get, get_range, list, delete), every outcome counted
/// (S3 bills failed requests too), from one node's metrics.
async fn store_requests(endpoint: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Some(text) = metrics_text(endpoint).await else {
        return out;
    };
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("netsy_store_request_duration_seconds_count{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let Some(op) = labels
            .split(',')
            .find_map(|l| l.strip_prefix("op=\""))
            .map(|v| v.trim_end_matches('"'))
        else {
            continue;
        };
        if let Ok(v) = value.trim().parse::<f64>() {
            *out.entry(op.to_string()).or_insert(0.0) += v;
        }
    }
    out
}

/// The idle workload: a control plane of `nodes` nodes renewing its leases, for the
/// duration. Reports writes (ops), their latency, and the S3 requests every node made.
async fn idle(
    target: &Target,
    chans: &[Channel],
    o: &Options,
    prefix: &str,
) -> anyhow::Result<Outcome> {
    let nodes = target.nodes.len().max(1);
    // Under kube-apiserver's prefix, as the heartbeats are; named after this run.
    let run: String = prefix
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let mut schedule: Vec<(String, Duration, bool)> = Vec::new();
    for n in 0..nodes {
        schedule.push((
            format!("/registry/leases/kube-node-lease/{run}-node-{n}"),
            Duration::from_secs(10),
            false,
        ));
        schedule.push((
            format!("/registry/leases/kube-system/{run}-apiserver-{n}"),
            Duration::from_secs(10),
            false,
        ));
    }
    for who in ["kube-controller-manager", "kube-scheduler"] {
        schedule.push((
            format!("/registry/leases/kube-system/{run}-{who}"),
            Duration::from_secs(2),
            false,
        ));
    }
    schedule.push((
        format!("/registry/events/default/{run}-event-"),
        Duration::from_secs(5),
        true,
    ));
    let mut before = BTreeMap::new();
    for node in &target.nodes {
        for (op, n) in store_requests(node).await {
            *before.entry(op).or_insert(0.0) += n;
        }
    }
    let started = Instant::now();
    let deadline = started + o.duration;
    let mut tasks = Vec::new();
    for (i, (key, period, fresh_keys)) in schedule.into_iter().enumerate() {
        let mut kv = kv(chans, i);
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            // Each renewer starts at its own phase, as real components do.
            let phase = period.mul_f64(rand::random::<f64>());
            let mut next = Instant::now() + phase;
            let mut last = 0i64;
            let mut n = 0u64;
            loop {
                if next >= deadline {
                    return t;
                }
                tokio::time::sleep_until(next.into()).await;
                next += period;
                let sent = Instant::now();
                let ok = if fresh_keys {
                    n += 1;
                    kv.put(PutRequest {
                        key: Bytes::from(format!("{key}{n:08}")),
                        value: Bytes::from_static(b"event"),
                        ..Default::default()
                    })
                    .await
                    .is_ok()
                } else {
                    // GuaranteedUpdate, as the lease clients' updates reach etcd.
                    let k = Bytes::from(key.clone());
                    match kv
                        .txn(guaranteed_update(
                            &k,
                            last,
                            Bytes::from(format!("renewed {n}")),
                        ))
                        .await
                    {
                        Ok(r) => {
                            let r = r.into_inner();
                            last = header_rev(&r.header);
                            r.succeeded
                        }
                        Err(_) => false,
                    }
                };
                t.record(sent, ok);
            }
        }));
    }
    let mut tallies = Vec::new();
    for task in tasks {
        tallies.push(task.await.unwrap_or_default());
    }
    let elapsed = started.elapsed();
    let (ops, errors, lat, _) = merge(tallies);
    let mut after = BTreeMap::new();
    for node in &target.nodes {
        for (op, n) in store_requests(node).await {
            *after.entry(op).or_insert(0.0) += n;
        }
    }
    let mut extra = BTreeMap::new();
    extra.insert("nodes".into(), nodes as f64);
    let secs = elapsed.as_secs_f64();
    let rate = |op: &str| (after.get(op).unwrap_or(&0.0) - before.get(op).unwrap_or(&0.0)) / secs;
    if !after.is_empty() {
        let (puts, lists) = (rate("put"), rate("list"));
        let gets = rate("get") + rate("get_range");
        extra.insert("s3_put_per_sec".into(), puts);
        extra.insert("s3_get_per_sec".into(), gets);
        extra.insert("s3_list_per_sec".into(), lists);
        extra.insert("s3_delete_per_sec".into(), rate("delete"));
        let monthly =
            |(put, get): (f64, f64)| ((puts + lists) * put + gets * get) / 1000.0 * MONTH_SECONDS;
        extra.insert("usd_month_standard".into(), monthly(STANDARD_PRICES));
        extra.insert("usd_month_express".into(), monthly(EXPRESS_PRICES));
    }
    compact(chans).await;
    Ok(Outcome::new(
        target,
        Workload::Idle,
        0,
        ops,
        elapsed,
        lat,
        errors,
        extra,
    ))
}
