//! Wiring: `serve(config, shutdown)` is the library's entry point; `main` only parses flags.
//!
//! Start-up order matters: a free lease is taken before the bucket is replayed, so that the
//! replay sees every chunk a previous leader could have acknowledged; a held one means
//! another node leads, and this one replays, then follows it (`cluster::role`; a node that
//! wins the lease later catches up from the bucket before it writes). Only then does the
//! gRPC port answer. On shutdown the lease is handed over before the port drains.

use crate::api::{self, Context, Ids, Limits};
use crate::cluster::forward::PeerTls;
use crate::cluster::role::{Renewing, RoleLoop, Settings, Start};
use crate::cluster::{Member, Node};
use crate::http::{self, Health, Phase};
use crate::lease::Lessor;
use crate::log::leader::{Leader, LeaderError, LeaderTiming};
use crate::log::recovery::recover_cluster;
use crate::log::snapshot::SnapshotPolicy;
use crate::log::{Log, WriterConfig};
use crate::metrics::{GrpcMetricsLayer, METRICS};
use crate::proto::etcdserverpb;
use crate::store::{self, StoreOptions};
use crate::tls::{Reloader, TlsFiles};
use anyhow::Context as _;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct Config {
    /// Object store URL: `file:///dir`, a directory path, `s3://bucket/prefix`, `memory://`.
    pub store: String,
    pub store_options: StoreOptions,
    pub listen_client_addr: SocketAddr,
    /// etcd's `--listen-client-urls`: when set, served instead of `listen_client_addr`.
    pub listen_client_urls: Vec<http::ClientUrl>,
    /// Reported by Cluster.MemberList; defaults to the first client URL.
    pub advertise_client_urls: Vec<String>,
    pub name: String,
    pub leader: LeaderTiming,
    pub writer: WriterConfig,
    pub limits: Limits,
    pub progress_notify_interval: Duration,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_timeout: Duration,
    pub snapshots: SnapshotPolicy,
    /// TTL given to leases that keys reference but no record granted (Go Netsy buckets).
    pub orphan_lease_ttl: i64,
    /// TLS on the client port.
    pub tls: Option<TlsFiles>,
    /// Plain-HTTP listener for /metrics and health, up from process start.
    pub listen_metrics_addr: Option<SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            store: "data".into(),
            store_options: StoreOptions::default(),
            listen_client_addr: ([127, 0, 0, 1], 2379).into(),
            listen_client_urls: vec![],
            advertise_client_urls: vec![],
            name: "netsy".into(),
            leader: LeaderTiming::default(),
            writer: WriterConfig::default(),
            limits: Limits::default(),
            progress_notify_interval: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(10),
            snapshots: SnapshotPolicy::default(),
            orphan_lease_ttl: 3600,
            tls: None,
            listen_metrics_addr: None,
        }
    }
}

fn id_of(s: &str) -> u64 {
    // etcd ids are non-zero u64s; keep them positive for tools that print them signed.
    (crate::format::crc64(s.as_bytes()) >> 1).max(1)
}

/// Runs Netsy until `shutdown` is cancelled.
pub async fn serve(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let started = Instant::now();
    let health = Arc::new(Health::default());
    let tls = match &config.tls {
        Some(files) => Some(Arc::new(Reloader::new(files.clone())?)),
        None => None,
    };
    // The metrics/health listener answers from the start, so readiness is observable
    // while the lease is awaited and the bucket replayed.
    let metrics_server = match config.listen_metrics_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding --listen-metrics-addr {addr}"))?;
            tracing::info!(phase = "metrics", addr = %listener.local_addr()?, "serving /metrics, /health, /readyz");
            Some(tokio::spawn(http::serve(
                http::Listener::Tcp(listener),
                None,
                http::routes(health.clone()),
                shutdown.clone(),
                Duration::from_secs(1),
            )))
        }
        None => None,
    };
    let store = store::open(&config.store, &config.store_options)
        .await
        .with_context(|| format!("opening store {}", config.store))?;
    let urls = if config.listen_client_urls.is_empty() {
        vec![http::ClientUrl::Tcp {
            addr: config.listen_client_addr,
            tls: tls.is_some(),
        }]
    } else {
        config.listen_client_urls.clone()
    };
    let mut listeners = Vec::new();
    for url in &urls {
        if url.tls() && tls.is_none() {
            anyhow::bail!("client URL {url:?} is TLS: it needs --cert-file and --key-file");
        }
        if !url.tls() && tls.is_some() {
            tracing::warn!(?url, "plain client URL while TLS files are given: served without TLS there, as etcd does");
        }
        let listener = http::Listener::bind(url)
            .await
            .with_context(|| format!("binding client URL {url:?}"))?;
        listeners.push((listener, url.tls()));
    }
    let bound: Vec<String> = listeners.iter().map(|(l, tls)| l.url(*tls)).collect();
    // The first URL names the member, as --listen-client-addr did (host:port for TCP).
    let first = bound[0]
        .split_once("://")
        .map_or(bound[0].as_str(), |(_, a)| a)
        .to_string();
    tracing::info!(
        phase = "store",
        store = %store.describe(),
        urls = ?bound,
        tls = tls.is_some(),
        client_cert_auth = tls.as_ref().is_some_and(|t| t.client_cert_required()),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "store opened, client URLs bound"
    );

    let me = Member {
        id: id_of(&format!("{}@{}", config.name, first)),
        name: config.name.clone(),
        client_urls: if config.advertise_client_urls.is_empty() {
            vec![bound[0].clone()]
        } else {
            config.advertise_client_urls.clone()
        },
    };
    let holder = format!("{}-{:08x}", config.name, rand::random::<u32>());

    // A free lease (a new bucket, or a leader that released it) is taken before the
    // replay, so the replay sees every chunk a previous leader could have acknowledged.
    // A held one means another node leads: replay without it and follow that node. So
    // does one released by a leader that had followers (a rolling replacement): they are
    // caught up and take it within moments, where this node would first replay; if none
    // does, this node takes it once replayed, as any follower would.
    health.set_phase(Phase::WaitingForLease);
    let lease_started = Instant::now();
    let view = match Leader::read(&store).await {
        Ok(v) => v,
        Err(e) => return Err(e).context("reading the leader lease"),
    };
    let mut lead = None;
    if view.as_ref().is_none_or(|v| v.released && v.followers == 0) {
        let contention = crate::log::leader::Contention::default();
        let identity = (&me).into();
        let acquire = Leader::acquire(
            store.clone(),
            &holder,
            &identity,
            config.leader,
            &shutdown,
            &contention,
        );
        // Another node starting at the same moment may win it: then follow that one.
        match tokio::time::timeout(config.leader.duration / 5, acquire).await {
            Ok(Ok(l)) => lead = Some(l),
            Ok(Err(LeaderError::Shutdown)) => return Ok(()),
            Ok(Err(e)) => return Err(e).context("acquiring the leader lease"),
            Err(_) => {}
        }
    }
    let (cluster_id_hint, renewing) = match &lead {
        Some(leader) => {
            tracing::info!(
                phase = "leader",
                holder,
                term = leader.term(),
                duration_ms = lease_started.elapsed().as_millis() as u64,
                "leader lease acquired"
            );
            (leader.cluster_id(), Some(Renewing::start(leader)))
        }
        None => {
            // The leader records the bucket's cluster id in the lease once it has replayed;
            // a follower replays against it (a bucket with no objects yet carries none).
            let deadline = Instant::now() + config.leader.duration + config.leader.margin;
            let mut current = Leader::read(&store).await.ok().flatten();
            while current
                .as_ref()
                .is_some_and(|v| v.cluster_id == 0 && !v.released)
                && Instant::now() < deadline
                && !shutdown.is_cancelled()
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
                current = Leader::read(&store).await.ok().flatten();
            }
            tracing::info!(
                phase = "follower",
                leader = current.as_ref().map(|v| v.holder.as_str()),
                term = current.as_ref().map(|v| v.term),
                "another node holds the leader lease: replaying, then following it"
            );
            (current.map_or(0, |v| v.cluster_id), None)
        }
    };
    health.set_phase(Phase::Replaying);
    let recovered = match recover_cluster(store.as_ref(), cluster_id_hint).await {
        Ok(recovered) => recovered,
        Err(e) => {
            if let Some(r) = renewing {
                r.stop().await;
            }
            return Err(e).context("recovering from the bucket");
        }
    };
    tracing::info!(
        phase = "replay",
        revision = recovered.state.revision,
        compact_revision = recovered.state.compact_revision,
        keys = recovered.state.keys_count(),
        snapshot = recovered.snapshot.as_ref().map(|s| s.0.as_str()),
        chunks = recovered.chunks,
        records = recovered.records,
        bytes = recovered.bytes,
        duration_ms = recovered.elapsed.as_millis() as u64,
        "recovered"
    );
    METRICS.replay_seconds.set(recovered.elapsed.as_secs_f64());
    METRICS.replay_records.set(recovered.records as i64);
    if let (Some((_, rev)), Some(ms)) = (&recovered.snapshot, recovered.snapshot_stored_ms) {
        METRICS.snapshot_taken(*rev, ms);
    }

    let term = Arc::new(AtomicU64::new(lead.as_ref().map_or(0, |l| l.term())));
    // The cluster id is the bucket's: kept in the lease object and every file from now on.
    let cluster_id = recovered.cluster_id;
    let mut config = config;
    config.writer.cluster_id = cluster_id;
    let (log, queue) = Log::new(recovered.state, recovered.next, 10_000);
    log.quota().set_limit(config.limits.quota_backend_bytes);
    log.quota().set_member(me.id);
    // etcd keeps the alarm in its backend; here it is recomputed from the state at start.
    let state = log.state();
    if state.bytes() > log.quota().limit() {
        log.quota().raise();
        tracing::error!(
            bytes = state.bytes(),
            quota_bytes = log.quota().limit(),
            "the data exceeds the space quota; NOSPACE alarm raised"
        );
    }
    let peer_tls = match &config.tls {
        None => PeerTls::Plain,
        Some(files) => match files.peer_client_config() {
            Ok(c) => PeerTls::Tls(Arc::new(c)),
            Err(e) => PeerTls::Unusable(e.to_string()),
        },
    };
    let node = Node::new(me.clone(), &log, peer_tls);
    let lessor = Arc::new(Lessor::default());
    let ids = Ids {
        cluster_id,
        member_id: me.id,
        name: config.name.clone(),
        client_urls: me.client_urls.clone(),
        term: term.clone(),
    };
    let ctx = Context {
        log: log.clone(),
        ids,
        limits: config.limits,
        lessor: lessor.clone(),
        node: node.clone(),
        auth: Default::default(),
    };

    let start = match (lead, renewing) {
        (Some(leader), Some(renewing)) => {
            if leader.cluster_id() == 0 {
                // Followers learn the cluster id from the lease: record it now, not at the
                // next renewal.
                leader.set_cluster_id(cluster_id);
                if let Err(e) = leader.renew().await {
                    tracing::warn!(error = %e, "recording the cluster id in the leader lease failed; the next renewal retries");
                }
            }
            log.set_leader(Some(leader.clone()));
            node.set_role(crate::cluster::Role::Leading {
                term: leader.term(),
            });
            Start::Leading {
                leader,
                renewing,
                last_snapshot: recovered.snapshot.as_ref().map(|s| s.1),
            }
        }
        _ => Start::Following,
    };
    let writer_stop = CancellationToken::new();
    let roles = tokio::spawn(
        RoleLoop {
            node: node.clone(),
            log: log.clone(),
            queue,
            store: store.clone(),
            settings: Settings {
                holder,
                timing: config.leader,
                writer: config.writer.clone(),
                snapshots: config.snapshots.clone(),
                orphan_lease_ttl: config.orphan_lease_ttl,
            },
            term: term.clone(),
            lessor: lessor.clone(),
            stop: writer_stop.clone(),
        }
        .run(start),
    );

    // Keys must not be served with a lease that does not exist yet (Go Netsy buckets): the
    // orphans are granted before the port answers. (The role loop repeats this whenever it
    // starts leading; a lease granted twice is reported as existing and skipped.)
    if node.is_leading() {
        lessor.adopt_orphans(&log, config.orphan_lease_ttl).await;
    }
    // Client traffic stops after the hand-over below, not at the signal.
    let serving_stop = CancellationToken::new();
    let app = grpc_routes(&ctx, &config, serving_stop.clone())
        .await?
        .layer(GrpcMetricsLayer)
        .merge(http::routes(health.clone()));
    health.set_context(ctx);
    health.set_phase(Phase::Serving);
    let servers: Vec<_> = listeners
        .into_iter()
        .map(|(listener, with_tls)| {
            tokio::spawn(http::serve(
                listener,
                if with_tls { tls.clone() } else { None },
                app.clone(),
                serving_stop.clone(),
                config.shutdown_timeout,
            ))
        })
        .collect();
    let server = futures::future::join_all(servers);
    tracing::info!(
        phase = "serving",
        addr = %first,
        urls = ?bound,
        startup_ms = started.elapsed().as_millis() as u64,
        try_it = %format!("ETCDCTL_API=3 etcdctl --endpoints={} put foo bar", bound[0]),
        "serving etcd v3 API"
    );
    shutdown.cancelled().await;
    health.set_phase(Phase::Stopping);
    let stopping = Instant::now();
    // Hand over first: the writer stops after the chunk in flight and the lease is
    // released, so a follower leads within moments (the followers' streams end as this
    // node stops leading, and they read the released lease at once). Releasing is one
    // conditional PUT; bounded so a dead store cannot hold the process (a successor then
    // waits for the lease to expire instead).
    tracing::info!(
        phase = "shutdown",
        "stopping the writer and releasing the leader lease"
    );
    writer_stop.cancel();
    if tokio::time::timeout(config.shutdown_timeout, roles)
        .await
        .is_err()
    {
        tracing::warn!("the writer did not stop in time; the leader lease was not released");
    }
    tracing::info!(
        phase = "shutdown",
        "stopped accepting; draining in-flight requests"
    );
    serving_stop.cancel();
    // http::serve bounds the drain itself; the margin covers a task that failed to start.
    match tokio::time::timeout(config.shutdown_timeout + Duration::from_secs(1), server).await {
        Ok(done) => {
            for e in done.into_iter().filter_map(Result::err) {
                tracing::warn!(error = %e, "client server task failed");
            }
        }
        Err(_) => tracing::warn!("in-flight requests did not finish in time"),
    }
    if let Some(m) = metrics_server {
        let _ = m.await;
    }
    tracing::info!(
        phase = "stopped",
        duration_ms = stopping.elapsed().as_millis() as u64,
        "stopped"
    );
    Ok(())
}

/// The largest response sent, as etcd's default `--max-send-bytes`-equivalent (gRPC's
/// math.MaxInt32): a range beyond it fails (tonic: OutOfRange) instead of growing
/// past what the frame can carry; clients page with `limit` (kube-apiserver asks for 500 keys at a time).
const MAX_RESPONSE_BYTES: usize = i32::MAX as usize;

/// The etcd gRPC services, health and reflection, as an axum router.
async fn grpc_routes(
    ctx: &Context,
    config: &Config,
    streams_stop: CancellationToken,
) -> anyhow::Result<axum::Router> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<etcdserverpb::kv_server::KvServer<api::kv::KvService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building reflection service")?;
    let max_msg = config.limits.max_request_bytes + 512 * 1024;
    let routes = tonic::service::Routes::new(
        etcdserverpb::kv_server::KvServer::new(api::kv::KvService::new(ctx.clone()))
            .max_decoding_message_size(max_msg)
            .max_encoding_message_size(MAX_RESPONSE_BYTES),
    )
    .add_service(
        etcdserverpb::watch_server::WatchServer::new(api::watch::WatchService::new(
            ctx.clone(),
            config.progress_notify_interval,
            streams_stop.clone(),
        ))
        .max_decoding_message_size(max_msg)
        .max_encoding_message_size(MAX_RESPONSE_BYTES),
    )
    .add_service(etcdserverpb::lease_server::LeaseServer::new(
        api::lease::LeaseService::new(ctx.clone(), streams_stop.clone()),
    ))
    .add_service(etcdserverpb::maintenance_server::MaintenanceServer::new(
        api::maintenance::MaintenanceService::new(ctx.clone()),
    ))
    .add_service(etcdserverpb::cluster_server::ClusterServer::new(
        api::cluster::ClusterService::new(ctx.clone()),
    ))
    .add_service(etcdserverpb::auth_server::AuthServer::new(
        api::auth::AuthService::new(ctx.clone()),
    ))
    .add_service(crate::proto::v3lockpb::lock_server::LockServer::new(
        api::lock::LockService::new(ctx.clone()),
    ))
    .add_service(
        crate::proto::v3electionpb::election_server::ElectionServer::new(
            api::election::ElectionService::new(ctx.clone()),
        ),
    )
    .add_service(
        crate::proto::peer::peer_server::PeerServer::new(crate::cluster::peer::PeerService::new(
            ctx.node.clone(),
            ctx.log.clone(),
            ctx.ids.cluster_id,
            ctx.ids.term.clone(),
            streams_stop.clone(),
        ))
        .max_encoding_message_size(MAX_RESPONSE_BYTES),
    )
    .add_service(health_service)
    .add_service(reflection);
    Ok(routes
        .prepare()
        .into_axum_router()
        .layer(axum::middleware::from_fn_with_state(
            ctx.node.clone(),
            api::require_leader,
        )))
}
