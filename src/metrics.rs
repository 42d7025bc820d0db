//! Prometheus metrics, named as etcd names them where etcd has the same thing.
//!
//! Operators already have dashboards and alerts for etcd (`etcd_server_has_leader`,
//! `etcd_mvcc_db_total_size_in_bytes`, `grpc_server_handled_total`, the `process_*` set), and
//! `etcdctl check datascale` reads `process_resident_memory_bytes` from `/metrics`, so those
//! names are kept. What etcd has no name for (object store PUTs, group commit, replay,
//! snapshots) is `netsy_*`.
//!
//! Counters and histograms live in one process-wide registry (as in etcd), updated where
//! things happen; gauges that describe the state are set from it when scraped.

use crate::api::Context;
use crate::store::StoreError;
use prometheus::{
    exponential_buckets, Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

pub struct Metrics {
    pub has_leader: IntGauge,
    pub is_leader: IntGauge,
    pub leader_changes: IntCounter,
    pub proposals_committed: IntGauge,
    pub proposals_applied: IntGauge,
    pub proposals_failed: IntCounter,
    pub db_total_size: IntGauge,
    pub db_in_use: IntGauge,
    pub keys_total: IntGauge,
    pub current_revision: IntGauge,
    pub compact_revision: IntGauge,
    pub server_version: IntGaugeVec,
    pub watch_streams: IntGauge,
    pub watchers: IntGauge,
    pub progress_requests: IntCounterVec,
    pub grpc_started: IntCounterVec,
    pub grpc_handled: IntCounterVec,
    pub grpc_seconds: HistogramVec,
    pub batch_records: Histogram,
    pub batch_requests: Histogram,
    pub read_index_batch: Histogram,
    pub follower_applied: IntCounterVec,
    pub chunk_bytes: Histogram,
    pub chunk_put_seconds: Histogram,
    pub chunk_put_failures: IntCounterVec,
    pub store_seconds: HistogramVec,
    pub replay_seconds: Gauge,
    pub replay_records: IntGauge,
    pub snapshot_revision: IntGauge,
    pub snapshot_timestamp: Gauge,
    pub snapshot_age: Gauge,
    pub snapshot_failures: IntCounter,
    pub leases: IntGauge,
    pub leases_expired: IntCounter,
    pub leader_term: IntGauge,
    pub ready: IntGauge,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    reg(r, IntGauge::new(name, help).expect("valid metric"))
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    reg(r, IntCounter::new(name, help).expect("valid metric"))
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    reg(
        r,
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid"),
    )
}

/// Seconds from 0.5 ms to ~16 s, doubling (etcd's disk histograms start at 1 ms).
fn latency_buckets() -> Vec<f64> {
    exponential_buckets(0.0005, 2.0, 16).expect("valid buckets")
}

impl Metrics {
    fn new(r: &Registry) -> Self {
        let grpc_labels = ["grpc_type", "grpc_service", "grpc_method"];
        let server_version = reg(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "etcd_server_version",
                    "Which etcd version this server answers as.",
                ),
                &["server_version"],
            )
            .expect("valid"),
        );
        server_version
            .with_label_values(&[crate::api::maintenance::ETCD_VERSION])
            .set(1);
        Self {
            has_leader: gauge(r, "etcd_server_has_leader", "1 while this node leads or follows a leader it can reach."),
            is_leader: gauge(r, "etcd_server_is_leader", "1 while this node holds the leader lease and writes the log."),
            leader_changes: counter(r, "etcd_server_leader_changes_seen_total", "Times this node saw a new leader (itself or another node)."),
            proposals_committed: gauge(r, "etcd_server_proposals_committed_total", "Revision of the last committed write (Netsy's counterpart of the raft index)."),
            proposals_applied: gauge(r, "etcd_server_proposals_applied_total", "Revision of the last applied write (equal to committed: a write is applied when its chunk is durable)."),
            proposals_failed: counter(r, "etcd_server_proposals_failed_total", "Write requests that failed after reaching the writer (store errors, fencing, lease loss)."),
            db_total_size: gauge(r, "etcd_mvcc_db_total_size_in_bytes", "Bytes of keys and values held, all revisions."),
            db_in_use: gauge(r, "etcd_mvcc_db_total_size_in_use_in_bytes", "Bytes of keys and values held, all revisions (no free pages in memory)."),
            keys_total: gauge(r, "etcd_debugging_mvcc_keys_total", "Live keys."),
            current_revision: gauge(r, "etcd_debugging_mvcc_current_revision", "Current revision."),
            compact_revision: gauge(r, "etcd_debugging_mvcc_compact_revision", "Compacted revision."),
            server_version,
            watch_streams: gauge(r, "etcd_debugging_mvcc_watch_stream_total", "Open watch streams."),
            watchers: gauge(r, "etcd_debugging_mvcc_watcher_total", "Active watchers."),
            progress_requests: reg(r, IntCounterVec::new(Opts::new("netsy_watch_progress_requests_total", "Watch progress requests (kube-apiserver's consistent reads from its watch cache), by outcome: answered, or withheld while a watcher starts above the head (as etcd 3.6+)."), &["outcome"]).expect("valid")),
            grpc_started: reg(r, IntCounterVec::new(Opts::new("grpc_server_started_total", "RPCs started."), &grpc_labels).expect("valid")),
            grpc_handled: reg(r, IntCounterVec::new(Opts::new("grpc_server_handled_total", "RPCs completed, by gRPC status code."), &["grpc_type", "grpc_service", "grpc_method", "grpc_code"]).expect("valid")),
            grpc_seconds: reg(r, HistogramVec::new(HistogramOpts::new("grpc_server_handling_seconds", "Time from request to the end of the response (streams: their whole life).").buckets(latency_buckets()), &grpc_labels).expect("valid")),
            batch_records: histogram(r, "netsy_commit_batch_records", "Records in one committed chunk.", exponential_buckets(1.0, 2.0, 15).expect("valid")),
            batch_requests: histogram(r, "netsy_commit_batch_requests", "Write requests group-committed in one chunk.", exponential_buckets(1.0, 2.0, 15).expect("valid")),
            read_index_batch: histogram(r, "netsy_read_index_batch_reads", "Linearizable reads a follower answered with one read-index round trip to the leader.", exponential_buckets(1.0, 2.0, 15).expect("valid")),
            follower_applied: reg(r, IntCounterVec::new(Opts::new("netsy_follower_chunks_applied_total", "Chunks a follower applied, by where it got them: stream (the leader pushed it) or bucket (read by position)."), &["source"]).expect("valid")),
            chunk_bytes: histogram(r, "netsy_chunk_bytes", "Encoded size of a committed chunk.", exponential_buckets(256.0, 4.0, 10).expect("valid")),
            chunk_put_seconds: histogram(r, "netsy_chunk_put_duration_seconds", "Latency of the conditional PUT of a chunk (Netsy's WAL fsync).", latency_buckets()),
            chunk_put_failures: reg(r, IntCounterVec::new(Opts::new("netsy_chunk_put_failures_total", "Chunk PUTs that failed, by reason: conflict (another writer), lease_expired, transient, error."), &["reason"]).expect("valid")),
            store_seconds: reg(r, HistogramVec::new(HistogramOpts::new("netsy_store_request_duration_seconds", "Object store requests by operation and outcome, after the client's own retries.").buckets(latency_buckets()), &["op", "outcome"]).expect("valid")),
            replay_seconds: reg(r, Gauge::new("netsy_replay_duration_seconds", "How long the last replay of the bucket took.").expect("valid")),
            replay_records: gauge(r, "netsy_replay_records", "Records read by the last replay (snapshot and chunks)."),
            snapshot_revision: gauge(r, "netsy_snapshot_revision", "Revision of the newest snapshot written or loaded (0: none)."),
            snapshot_timestamp: reg(r, Gauge::new("netsy_snapshot_timestamp_seconds", "Unix time the newest snapshot was written (0: none).").expect("valid")),
            snapshot_age: reg(r, Gauge::new("netsy_snapshot_age_seconds", "Seconds since the newest snapshot was written (-1: none).").expect("valid")),
            snapshot_failures: counter(r, "netsy_snapshot_failures_total", "Snapshots that could not be written."),
            leases: gauge(r, "netsy_leases", "Leases that exist."),
            leases_expired: counter(r, "netsy_leases_expired_total", "Leases revoked because their TTL ran out."),
            leader_term: gauge(r, "netsy_leader_term", "Term of the leader lease this node holds (0: not leading)."),
            ready: gauge(r, "netsy_ready", "1 once the bucket is replayed and the client API serves."),
        }
    }

    /// Sets the gauges that describe the served state.
    pub fn observe_state(&self, ctx: &Context) {
        let state = ctx.log.state();
        self.proposals_committed.set(state.revision);
        self.proposals_applied.set(state.revision);
        self.db_total_size.set(state.bytes());
        self.db_in_use.set(state.bytes());
        self.keys_total.set(state.keys_count() as i64);
        self.current_revision.set(state.revision);
        self.compact_revision.set(state.compact_revision);
        self.leases.set(state.leases().count() as i64);
        let taken = self.snapshot_timestamp.get();
        self.snapshot_age.set(if taken > 0.0 {
            (crate::clock::now_ms() as f64 / 1000.0 - taken).max(0.0)
        } else {
            -1.0
        });
    }

    pub fn snapshot_taken(&self, revision: i64, unix_ms: i64) {
        if revision >= self.snapshot_revision.get() {
            self.snapshot_revision.set(revision);
            self.snapshot_timestamp.set(unix_ms as f64 / 1000.0);
        }
    }

    /// This node's role: leading (with its term), following a leader, or neither.
    pub fn set_role(&self, leading: Option<u64>, has_leader: bool) {
        self.has_leader.set(has_leader as i64);
        self.is_leader.set(leading.is_some() as i64);
        self.leader_term.set(leading.unwrap_or(0) as i64);
    }
}

pub static REGISTRY: LazyLock<Registry> = LazyLock::new(|| prometheus::default_registry().clone());
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics::new(&REGISTRY));

/// The text exposition (format 0.0.4) of every metric, with state gauges refreshed.
pub fn render(ctx: Option<&Context>) -> String {
    if let Some(ctx) = ctx {
        METRICS.observe_state(ctx);
    } else {
        LazyLock::force(&METRICS);
    }
    let mut out = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&REGISTRY.gather(), &mut out)
        .expect("text encoding to memory cannot fail");
    String::from_utf8(out).expect("the text format is UTF-8")
}

/// Label for a store error (or success) in `outcome` and `reason` labels.
pub fn outcome<T>(r: &Result<T, StoreError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(StoreError::NotFound { .. }) => "not_found",
        Err(StoreError::AlreadyExists { .. }) => "already_exists",
        Err(StoreError::Precondition { .. }) => "precondition",
        Err(StoreError::Transient { .. }) => "transient",
        Err(StoreError::Other { .. }) => "error",
    }
}

/// go-grpc-prometheus names for gRPC codes.
fn code_name(code: &[u8]) -> &'static str {
    match code {
        b"0" => "OK",
        b"1" => "Canceled",
        b"2" => "Unknown",
        b"3" => "InvalidArgument",
        b"4" => "DeadlineExceeded",
        b"5" => "NotFound",
        b"6" => "AlreadyExists",
        b"7" => "PermissionDenied",
        b"8" => "ResourceExhausted",
        b"9" => "FailedPrecondition",
        b"10" => "Aborted",
        b"11" => "OutOfRange",
        b"12" => "Unimplemented",
        b"13" => "Internal",
        b"14" => "Unavailable",
        b"15" => "DataLoss",
        b"16" => "Unauthenticated",
        _ => "Unknown",
    }
}

fn grpc_type(service: &str, method: &str) -> &'static str {
    match (service, method) {
        ("etcdserverpb.Watch", "Watch")
        | ("etcdserverpb.Lease", "LeaseKeepAlive")
        | (_, "ServerReflectionInfo") => "bidi_stream",
        ("etcdserverpb.Maintenance", "Snapshot")
        | ("etcdserverpb.KV", "RangeStream")
        | ("grpc.health.v1.Health", "Watch") => "server_stream",
        _ => "unary",
    }
}

/// A method's label values and its most used series, resolved once: a labelled lookup
/// hashes every label on each call, which is measurable at tens of thousands of calls/s.
struct Method {
    labels: [String; 3],
    started: IntCounter,
    ok: IntCounter,
    seconds: Histogram,
}

static METHODS: LazyLock<dashmap::DashMap<String, Arc<Method>>> =
    LazyLock::new(dashmap::DashMap::new);

fn method(path: &str) -> Arc<Method> {
    if let Some(m) = METHODS.get(path) {
        return m.clone();
    }
    // Paths come from clients: past a bound (far above the number of real methods), new
    // ones share one series instead of growing the map and the label set.
    let path = if METHODS.len() >= 256 {
        "/unknown/unknown"
    } else {
        path
    };
    if let Some(m) = METHODS.get(path) {
        return m.clone();
    }
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or_default().to_string();
    let method = parts.next().unwrap_or_default().to_string();
    let typ = grpc_type(&service, &method).to_string();
    let labels = [typ, service, method];
    let [t, s, m] = &labels;
    let resolved = Arc::new(Method {
        started: METRICS.grpc_started.with_label_values(&labels),
        ok: METRICS.grpc_handled.with_label_values(&[t, s, m, "OK"]),
        seconds: METRICS.grpc_seconds.with_label_values(&labels),
        labels,
    });
    METHODS.insert(path.to_string(), resolved.clone());
    resolved
}

/// One RPC being measured; finished exactly once, with its status code.
struct Call {
    method: Arc<Method>,
    started: Instant,
}

impl Call {
    fn start(path: &str) -> Self {
        let method = method(path);
        method.started.inc();
        Self {
            method,
            started: Instant::now(),
        }
    }

    fn finish(self, code: &'static str) {
        let m = &self.method;
        if code == "OK" {
            m.ok.inc();
        } else {
            let [t, s, n] = &m.labels;
            METRICS
                .grpc_handled
                .with_label_values(&[t, s, n, code])
                .inc();
        }
        m.seconds.observe(self.started.elapsed().as_secs_f64());
    }
}

/// Tower layer counting gRPC calls as go-grpc-prometheus does.
#[derive(Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<MeteredBody<RB>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let call = Call::start(req.uri().path());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            // A trailers-only response (an error) carries its status in the headers.
            let call = match resp.headers().get("grpc-status") {
                Some(code) => {
                    call.finish(code_name(code.as_bytes()));
                    None
                }
                None => Some(call),
            };
            Ok(resp.map(|inner| MeteredBody { inner, call }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that records the call when its trailers pass (or it is dropped).
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }

    impl<B> PinnedDrop for MeteredBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(call) = this.project().call.take() {
                call.finish("Canceled");
            }
        }
    }
}

impl<B: http_body::Body> http_body::Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(|t| t.get("grpc-status")) {
                    if let Some(call) = this.call.take() {
                        call.finish(code_name(code.as_bytes()));
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(call) = this.call.take() {
                    call.finish("Unknown");
                }
            }
            Poll::Ready(None) => {
                if let Some(call) = this.call.take() {
                    call.finish("OK");
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_etcd_names() {
        let text = render(None);
        for name in [
            "etcd_server_has_leader",
            "etcd_mvcc_db_total_size_in_bytes",
            "process_resident_memory_bytes",
            "netsy_chunk_put_duration_seconds",
            "etcd_server_version{server_version=\"3.7.0\"} 1",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }

    #[test]
    fn client_chosen_paths_cannot_grow_the_series_without_bound() {
        for i in 0..400 {
            Call::start(&format!("/etcdserverpb.KV/Made{i}")).finish("Unimplemented");
        }
        assert!(METHODS.len() <= 257, "{}", METHODS.len());
        let text = render(None);
        assert!(text.contains("grpc_method=\"unknown\""));
    }

    #[test]
    fn codes_and_types() {
        assert_eq!(code_name(b"0"), "OK");
        assert_eq!(code_name(b"11"), "OutOfRange");
        assert_eq!(code_name(b"x"), "Unknown");
        assert_eq!(grpc_type("etcdserverpb.Watch", "Watch"), "bidi_stream");
        assert_eq!(grpc_type("etcdserverpb.KV", "Range"), "unary");
        assert_eq!(grpc_type("etcdserverpb.KV", "RangeStream"), "server_stream");
    }
}
