//! The `netsy` binary: parses flags and environment, then hands over to the library.

use clap::{Args, Parser, Subcommand};
use netsy::log::leader::LeaderTiming;
use netsy::log::WriterConfig;
use netsy::server::{self, Config};
use netsy::store::s3::S3Options;
use netsy::store::StoreOptions;
use netsy::tls::TlsFiles;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// jemalloc rather than glibc's malloc: no per-allocation header (a key's versions, history
/// and change-log entries are small allocations, and its value is exactly one size class),
/// and thread caches without glibc's per-thread arenas holding freed memory.
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once at its start (`_RJEM_MALLOC_CONF` in the environment still
/// overrides them). jemalloc returns freed pages to the kernel only from inside later
/// allocator calls, so a server that goes quiet after a burst (a snapshot's buffers, a
/// compaction's garbage) kept them resident for good: 100k keys of 1 KiB stayed at 1.42x
/// their raw size, 14 s after the writes stopped. A background thread purges pages left
/// unused for a second (the same figure settles at 1.25-1.32x). jemalloc reads the symbol
/// as a `const char *`: a thin pointer to the first byte of a NUL-terminated string.
#[cfg(target_os = "linux")]
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &u8 = &b"background_thread:true,dirty_decay_ms:1000\0"[0];

#[derive(Parser)]
#[command(
    name = "netsy",
    version,
    about = "An etcd replacement whose only durable state is a bucket"
)]
struct Cli {
    /// Log format: text or json.
    #[arg(long, global = true, env = "NETSY_LOG_FORMAT", default_value = "text")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the etcd v3 API from a bucket.
    Serve(Box<ServeArgs>),
    /// Benchmark etcd v3 endpoints (Netsy, etcd) with the same client and workloads.
    Bench(Box<BenchArgs>),
    /// etcd snapshots: bring an etcd's data into Netsy (`etcdctl snapshot save` against
    /// Netsy takes it out).
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Show a .netsy file (path, file:// or s3:// URL) and verify its CRCs.
    Inspect {
        /// Path or URL of the file.
        target: String,
        /// Print JSON (protojson field names) instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        s3: S3Args,
    },
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Load an etcd snapshot (`etcdctl snapshot save`, etcd 3.4 to 3.7, or a data dir's
    /// member/snap/db with --skip-hash-check) into an empty store: every retained revision,
    /// the compacted revision and the leases. `netsy serve --store` on it then answers as
    /// that etcd did.
    Restore {
        /// The snapshot file.
        file: PathBuf,
        /// The store to create: file:///dir, a directory path, or s3://bucket/prefix. It
        /// must be empty.
        #[arg(long)]
        store: String,
        /// Restore a file without etcd's SHA-256 trailer, or whose trailer does not match.
        #[arg(long)]
        skip_hash_check: bool,
        #[command(flatten)]
        s3: S3Args,
    },
}

#[derive(Args)]
struct S3Args {
    /// S3 endpoint for S3-compatible stores (LocalStack, MinIO). AWS_ENDPOINT_URL also works.
    #[arg(long, env = "NETSY_S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    /// S3 region (else AWS_REGION or the profile's).
    #[arg(long, env = "NETSY_S3_REGION")]
    s3_region: Option<String>,
    /// Use path-style addressing (needed for LocalStack and MinIO).
    #[arg(long, env = "NETSY_S3_FORCE_PATH_STYLE", default_value_t = false)]
    s3_force_path_style: bool,
    /// Role to assume through STS on top of the default credential chain.
    #[arg(long, env = "NETSY_S3_ASSUME_ROLE_ARN")]
    s3_assume_role_arn: Option<String>,
    /// Testing and benchmarks only: milliseconds added to every store request (25 is about
    /// S3 Standard's PUT, 5 S3 Express One Zone's), so a local store answers like S3.
    #[arg(long, env = "NETSY_STORE_LATENCY_MS", default_value_t = 0.0)]
    store_latency_ms: f64,
    /// Testing and benchmarks only: up to this many milliseconds more, drawn per request.
    #[arg(long, env = "NETSY_STORE_JITTER_MS", default_value_t = 0.0)]
    store_jitter_ms: f64,
}

#[derive(Args)]
struct BenchArgs {
    /// A server to measure, NAME=HOST:PORT (plain http); repeat to compare. Ratios are to
    /// the first. NAME=HOST:PORT,HOST2:PORT2 sends the watch workload's watches to the
    /// second (a follower of the first: how long until another node shows a write).
    #[arg(long = "target", default_value = "netsy=127.0.0.1:2379")]
    targets: Vec<netsy::bench::Target>,
    /// Workloads to run (repeat, or comma-separated), in this order; `startup` runs
    /// in-process. `memory` comes first by default: it needs servers that have not yet
    /// freed memory their allocator could reuse.
    #[arg(long = "workload", value_delimiter = ',', default_values = ["memory", "put", "get", "get-serializable", "txn", "list", "watch", "mixed"])]
    workloads: Vec<BenchWorkload>,
    /// Concurrent clients (writers, for watch).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// gRPC connections the clients share.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Seconds each timed workload runs.
    #[arg(long, default_value_t = 10)]
    duration_seconds: u64,
    /// Keys written or read (memory: keys loaded).
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Watch streams for the watch workload.
    #[arg(long, default_value_t = 16)]
    watchers: usize,
    /// memory: keys loaded.
    #[arg(long, default_value_t = 100_000)]
    memory_keys: usize,
    /// memory: value size in bytes.
    #[arg(long, default_value_t = 1024)]
    memory_value_size: usize,
    /// startup: records in the chunk log.
    #[arg(long, default_value_t = 1_000_000)]
    startup_records: usize,
    /// startup: records per chunk.
    #[arg(long, default_value_t = 1000)]
    startup_records_per_chunk: usize,
    /// startup: MiB of keys and values in the snapshot (0 skips it).
    #[arg(long, default_value_t = 1024)]
    startup_snapshot_mib: usize,
    /// startup: directory for the generated buckets (default: the system temp dir).
    #[arg(long)]
    startup_dir: Option<PathBuf>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BenchWorkload {
    Put,
    Get,
    GetSerializable,
    Txn,
    List,
    Watch,
    Mixed,
    Memory,
    Kubernetes,
    Idle,
    Startup,
}

async fn bench(a: BenchArgs) -> anyhow::Result<()> {
    use netsy::bench::{self, Workload};
    let mut outcomes = Vec::new();
    let online: Vec<Workload> = a
        .workloads
        .iter()
        .filter_map(|w| match w {
            BenchWorkload::Put => Some(Workload::Put),
            BenchWorkload::Get => Some(Workload::Get),
            BenchWorkload::GetSerializable => Some(Workload::GetSerializable),
            BenchWorkload::Txn => Some(Workload::Txn),
            BenchWorkload::List => Some(Workload::List),
            BenchWorkload::Watch => Some(Workload::Watch),
            BenchWorkload::Mixed => Some(Workload::Mixed),
            BenchWorkload::Memory => Some(Workload::Memory),
            BenchWorkload::Kubernetes => Some(Workload::Kubernetes),
            BenchWorkload::Idle => Some(Workload::Idle),
            BenchWorkload::Startup => None,
        })
        .collect();
    anyhow::ensure!(a.clients > 0, "--clients must be positive");
    anyhow::ensure!(a.connections > 0, "--connections must be positive");
    let options = bench::Options {
        clients: a.clients,
        connections: a.connections,
        duration: Duration::from_secs(a.duration_seconds.max(1)),
        keys: a.keys,
        value_size: a.value_size,
        watchers: a.watchers,
        memory_keys: a.memory_keys,
        memory_value_size: a.memory_value_size,
    };
    if !online.is_empty() {
        outcomes.extend(bench::run(&a.targets, &online, &options).await?);
    }
    if a.workloads.contains(&BenchWorkload::Startup) {
        let dir = tempfile_dir(a.startup_dir.as_deref())?;
        eprintln!("bench: startup in {}", dir.display());
        let result = bench::startup::run(
            &bench::startup::StartupOptions {
                records: a.startup_records,
                per_chunk: a.startup_records_per_chunk.max(1),
                value_size: a.value_size,
                snapshot_mib: a.startup_snapshot_mib,
            },
            &dir,
        )
        .await;
        let _ = std::fs::remove_dir_all(&dir);
        outcomes.extend(result?);
    }
    println!("{}", bench::print_table(&outcomes));
    if let Some(path) = a.json {
        std::fs::write(&path, serde_json::to_string_pretty(&outcomes)?)?;
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(())
}

fn tempfile_dir(base: Option<&std::path::Path>) -> anyhow::Result<PathBuf> {
    let base = base.map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = base.join(format!("netsy-bench-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[derive(Args)]
struct ServeArgs {
    /// TOML file of options, keyed by the long flag names (`s3-bucket = "b"`). Flags and
    /// environment variables override it.
    #[arg(long, env = "NETSY_CONFIG_FILE")]
    config_file: Option<PathBuf>,
    /// Object store: file:///dir, a directory path, or s3://bucket/prefix.
    #[arg(long, env = "NETSY_STORE")]
    store: Option<String>,
    /// S3 bucket (the Go Netsy's name); used when --store is not given.
    #[arg(long, env = "NETSY_S3_BUCKET_NAME")]
    s3_bucket: Option<String>,
    /// Key prefix inside the bucket (the Go Netsy's name).
    #[arg(long, env = "NETSY_S3_KEY_PREFIX")]
    s3_key_prefix: Option<String>,
    #[command(flatten)]
    s3: S3Args,
    /// Storage class of written objects (e.g. STANDARD, INTELLIGENT_TIERING).
    #[arg(long, env = "NETSY_S3_STORAGE_CLASS")]
    s3_storage_class: Option<String>,
    /// Server-side encryption: AES256 or aws:kms.
    #[arg(long, env = "NETSY_S3_SSE")]
    s3_sse: Option<String>,
    /// KMS key id for --s3-sse aws:kms.
    #[arg(long, env = "NETSY_S3_SSE_KMS_KEY_ID")]
    s3_sse_kms_key_id: Option<String>,
    /// Address the etcd client API listens on.
    #[arg(
        long,
        env = "NETSY_LISTEN_CLIENTS_ADDR",
        default_value = "127.0.0.1:2379"
    )]
    listen_client_addr: SocketAddr,
    /// etcd's client URLs, instead of --listen-client-addr: http://IP:PORT, https://IP:PORT,
    /// unix://PATH, unixs://PATH (TLS ones need --cert-file and --key-file).
    #[arg(
        long,
        env = "NETSY_LISTEN_CLIENT_URLS",
        value_delimiter = ',',
        conflicts_with = "listen_client_addr"
    )]
    listen_client_urls: Vec<netsy::http::ClientUrl>,
    /// Client URLs reported by member list (default: the first client URL).
    #[arg(long, env = "NETSY_ADVERTISE_CLIENT_URLS", value_delimiter = ',')]
    advertise_client_urls: Vec<String>,
    /// Seconds an auth token lives (etcd's --auth-token-ttl).
    #[arg(long, env = "NETSY_AUTH_TOKEN_TTL", default_value_t = 300)]
    auth_token_ttl: u64,
    /// This node's name (written into every chunk as the leader id).
    #[arg(long, env = "NETSY_NAME", default_value = "netsy")]
    name: String,
    /// Extra wait before cutting a commit batch, in milliseconds (fewer PUTs, more latency).
    #[arg(long, env = "NETSY_COMMIT_WINDOW_MS", default_value_t = 0)]
    commit_window_ms: u64,
    /// Most chunk PUTs in flight at once (pipelined commits; 1: one at a time).
    #[arg(long, env = "NETSY_MAX_CHUNKS_IN_FLIGHT", default_value_t = netsy::log::writer::DEFAULT_IN_FLIGHT)]
    max_chunks_in_flight: usize,
    /// Key prefixes of heartbeats (comma-separated; "" for none): writes only to keys under
    /// them wait for the chunk that proves the leader alive (at most about 1.6 s with the
    /// default lease) unless another write is committed first.
    #[arg(
        long,
        env = "NETSY_HEARTBEAT_PREFIXES",
        value_delimiter = ',',
        default_value = "/registry/leases/,/registry/masterleases/,/registry/events/"
    )]
    heartbeat_prefixes: Vec<String>,
    /// Most records in one chunk.
    #[arg(long, env = "NETSY_MAX_BATCH_RECORDS", default_value_t = 10_000)]
    max_batch_records: usize,
    /// Single-writer lease duration in seconds.
    #[arg(long, env = "NETSY_LEADER_LEASE_SECONDS", default_value_t = 3)]
    leader_lease_seconds: u64,
    /// Largest request accepted, in bytes (etcd's --max-request-bytes).
    #[arg(long, env = "NETSY_MAX_REQUEST_BYTES", default_value_t = 1536 * 1024)]
    max_request_bytes: usize,
    /// Most operations in one transaction (etcd's --max-txn-ops).
    #[arg(long, env = "NETSY_MAX_TXN_OPS", default_value_t = 128)]
    max_txn_ops: usize,
    /// Space quota in bytes of retained key+value data (etcd's flag; 0: the 2 GiB default).
    /// Past it the NOSPACE alarm is raised and writes that add data fail.
    #[arg(long, env = "NETSY_QUOTA_BACKEND_BYTES", default_value_t = 2 * 1024 * 1024 * 1024)]
    quota_backend_bytes: i64,
    /// Most watchers one Watch stream may hold (Netsy's own bound; etcd has none); a
    /// create beyond it is answered created-and-canceled with the reason.
    #[arg(long, env = "NETSY_MAX_WATCHERS_PER_STREAM", default_value_t = 10_000)]
    max_watchers_per_stream: usize,
    /// Snapshot after this many records were written since the last snapshot.
    #[arg(long, env = "NETSY_SNAPSHOT_EVERY_RECORDS", default_value_t = 100_000)]
    snapshot_every_records: u64,
    /// Snapshot after this many chunk bytes were written since the last snapshot.
    #[arg(long, env = "NETSY_SNAPSHOT_EVERY_BYTES", default_value_t = 256 * 1024 * 1024)]
    snapshot_every_bytes: u64,
    /// Snapshot when the last one is this old (seconds) and something changed.
    #[arg(long, env = "NETSY_SNAPSHOT_MAX_AGE_SECONDS", default_value_t = 3600)]
    snapshot_max_age_seconds: u64,
    /// Delete chunks covered by a snapshot once it is this old (seconds); must far exceed
    /// the leader lease.
    #[arg(long, env = "NETSY_SNAPSHOT_GRACE_SECONDS", default_value_t = 600)]
    snapshot_grace_seconds: u64,
    /// Snapshots kept.
    #[arg(long, env = "NETSY_SNAPSHOT_KEEP", default_value_t = 3)]
    snapshot_keep: usize,
    /// How often (ms) the snapshot thresholds and clean-up are checked.
    #[arg(long, env = "NETSY_SNAPSHOT_CHECK_INTERVAL_MS", default_value_t = 5000)]
    snapshot_check_interval_ms: u64,
    /// TTL (seconds) of leases recreated at start for keys whose lease was never stored
    /// (buckets written by the Go Netsy).
    #[arg(long, env = "NETSY_ORPHAN_LEASE_TTL_SECONDS", default_value_t = 3600)]
    orphan_lease_ttl_seconds: i64,
    /// Path to the server TLS certificate (PEM); enables TLS on the client port (etcd's flag).
    #[arg(long, env = "NETSY_CERT_FILE")]
    cert_file: Option<PathBuf>,
    /// Path to the server TLS private key (PEM).
    #[arg(long, env = "NETSY_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// CA bundle (PEM) that signs client certificates; giving it makes client certificates
    /// mandatory, as in etcd.
    #[arg(long, env = "NETSY_TRUSTED_CA_FILE")]
    trusted_ca_file: Option<PathBuf>,
    /// Require client certificates signed by --trusted-ca-file (etcd's flag).
    #[arg(long, env = "NETSY_CLIENT_CERT_AUTH", default_value_t = false)]
    client_cert_auth: bool,
    /// Plain-HTTP address for /metrics, /health, /readyz, /livez, answering from process
    /// start (the client port serves them too once ready). Off when not given.
    #[arg(long, env = "NETSY_LISTEN_METRICS_ADDR")]
    listen_metrics_addr: Option<SocketAddr>,
    /// On SIGTERM, how long in-flight requests may take before connections are closed
    /// (and, separately, how long releasing the leader lease may take), in seconds.
    #[arg(long, env = "NETSY_SHUTDOWN_TIMEOUT_SECONDS", default_value_t = 10)]
    shutdown_timeout_seconds: u64,
    /// Interval of progress notifications to idle watchers, in milliseconds.
    #[arg(
        long,
        env = "NETSY_PROGRESS_NOTIFY_INTERVAL_MS",
        default_value_t = 5000
    )]
    progress_notify_interval_ms: u64,
}

impl S3Args {
    fn options(&self) -> S3Options {
        S3Options {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            force_path_style: self.s3_force_path_style,
            assume_role_arn: self.s3_assume_role_arn.clone(),
            ..Default::default()
        }
    }

    fn store_options(&self) -> StoreOptions {
        let ms = |v: f64| Duration::from_secs_f64(v.max(0.0) / 1000.0);
        StoreOptions {
            s3: self.options(),
            latency: netsy::store::latency::LatencySpec {
                base: ms(self.store_latency_ms),
                jitter: ms(self.store_jitter_ms),
            },
        }
    }
}

impl ServeArgs {
    fn config(self) -> anyhow::Result<Config> {
        let store = match (&self.store, &self.s3_bucket) {
            (Some(s), _) => s.clone(),
            (None, Some(bucket)) => format!(
                "s3://{bucket}/{}",
                self.s3_key_prefix.clone().unwrap_or_default()
            ),
            (None, None) => "data".to_string(),
        };
        let mut s3 = self.s3.options();
        if let Some(prefix) = &self.s3_key_prefix {
            s3.prefix = prefix.clone();
        }
        s3.storage_class = self.s3_storage_class.clone();
        s3.sse = self.s3_sse.clone();
        s3.sse_kms_key_id = self.s3_sse_kms_key_id.clone();
        anyhow::ensure!(
            self.leader_lease_seconds >= 3,
            "--leader-lease-seconds must be at least 3"
        );
        anyhow::ensure!(
            self.max_batch_records > 0,
            "--max-batch-records must be positive"
        );
        anyhow::ensure!(self.max_txn_ops > 0, "--max-txn-ops must be positive");
        anyhow::ensure!(
            (1024..=3 * 1024 * 1024).contains(&self.max_request_bytes),
            "--max-request-bytes must be between 1 KiB and 3 MiB (records must stay under the 4 MiB message limit)"
        );
        anyhow::ensure!(
            self.snapshot_grace_seconds >= 4 * self.leader_lease_seconds,
            "--snapshot-grace-seconds ({}) must be at least 4 x --leader-lease-seconds ({}): a paused ex-leader must never see a deleted chunk key as free while its lease could be valid",
            self.snapshot_grace_seconds,
            self.leader_lease_seconds
        );
        anyhow::ensure!(
            self.snapshot_keep >= 1,
            "--snapshot-keep must be at least 1"
        );
        let tls = match (self.cert_file, self.key_file) {
            (Some(cert_file), Some(key_file)) => Some(TlsFiles {
                cert_file,
                key_file,
                trusted_ca_file: self.trusted_ca_file,
                client_cert_auth: self.client_cert_auth,
            }),
            (Some(_), None) => anyhow::bail!("--cert-file needs --key-file"),
            (None, Some(_)) => anyhow::bail!("--key-file needs --cert-file"),
            (None, None) => {
                anyhow::ensure!(
                    self.trusted_ca_file.is_none() && !self.client_cert_auth,
                    "--trusted-ca-file and --client-cert-auth need TLS: give --cert-file and --key-file"
                );
                None
            }
        };
        anyhow::ensure!(
            self.shutdown_timeout_seconds >= 1,
            "--shutdown-timeout-seconds must be at least 1"
        );
        let lease = Duration::from_secs(self.leader_lease_seconds);
        Ok(Config {
            tls,
            listen_metrics_addr: self.listen_metrics_addr,
            shutdown_timeout: Duration::from_secs(self.shutdown_timeout_seconds),
            store,
            store_options: StoreOptions {
                s3,
                latency: self.s3.store_options().latency,
            },
            listen_client_addr: self.listen_client_addr,
            listen_client_urls: self.listen_client_urls,
            advertise_client_urls: self.advertise_client_urls,
            name: self.name.clone(),
            leader: LeaderTiming::of(lease),
            writer: WriterConfig {
                leader_id: self.name,
                max_batch_records: self.max_batch_records,
                commit_window: Duration::from_millis(self.commit_window_ms),
                max_in_flight: self.max_chunks_in_flight.max(1),
                heartbeat_prefixes: self
                    .heartbeat_prefixes
                    .iter()
                    .filter(|p| !p.is_empty())
                    .map(|p| bytes::Bytes::from(p.clone()))
                    .collect(),
                ..Default::default()
            },
            limits: netsy::api::Limits {
                max_request_bytes: self.max_request_bytes,
                max_txn_ops: self.max_txn_ops,
                quota_backend_bytes: self.quota_backend_bytes,
                max_watchers_per_stream: self.max_watchers_per_stream.max(1),
                auth_token_ttl: Duration::from_secs(self.auth_token_ttl.max(1)),
            },
            progress_notify_interval: Duration::from_millis(
                self.progress_notify_interval_ms.max(1),
            ),
            orphan_lease_ttl: self
                .orphan_lease_ttl_seconds
                .clamp(1, netsy::lease::MAX_TTL),
            snapshots: netsy::log::snapshot::SnapshotPolicy {
                every_records: self.snapshot_every_records.max(1),
                every_bytes: self.snapshot_every_bytes.max(1),
                max_age: Duration::from_secs(self.snapshot_max_age_seconds.max(1)),
                grace: Duration::from_secs(self.snapshot_grace_seconds),
                keep: self.snapshot_keep,
                check_every: Duration::from_millis(self.snapshot_check_interval_ms.max(10)),
            },
        })
    }
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The command line with the config file's options added where neither a flag nor an
/// environment variable set them (so the order of precedence is flag, env, file, default).
fn parse_cli() -> Cli {
    use clap::parser::ValueSource;
    use clap::{ArgAction, CommandFactory};
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let matches = Cli::command().get_matches_from(&args);
    let Some(("serve", serve)) = matches.subcommand() else {
        return Cli::parse_from(&args);
    };
    let Some(path) = serve.get_one::<PathBuf>("config_file") else {
        return Cli::parse_from(&args);
    };
    let fail = |message: String| -> ! {
        eprintln!("netsy: config file {}: {message}", path.display());
        std::process::exit(2)
    };
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| fail(e.to_string()));
    let table: toml::Table = text
        .parse()
        .unwrap_or_else(|e: toml::de::Error| fail(e.to_string()));
    let command = Cli::command();
    let serve_command = command
        .find_subcommand("serve")
        .expect("serve exists")
        .clone();
    let mut extra: Vec<std::ffi::OsString> = Vec::new();
    for (key, value) in table {
        let named = |a: &&clap::Arg| a.get_long() == Some(key.as_str()) && key != "config-file";
        let (arg, set_in) = serve_command
            .get_arguments()
            .find(named)
            .map(|a| (a, serve))
            .or_else(|| command.get_arguments().find(named).map(|a| (a, &matches)))
            .unwrap_or_else(|| {
                fail(format!(
                    "unknown option `{key}` (keys are the long flags of `netsy serve --help`, e.g. s3-bucket)"
                ))
            });
        let id = arg.get_id().as_str();
        let source = set_in.value_source(id);
        if matches!(
            source,
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let scalar = |v: &toml::Value| match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            _ => fail(format!("`{key}` must be a string, number or boolean")),
        };
        match (&value, arg.get_action()) {
            (toml::Value::Boolean(b), ArgAction::SetTrue) => {
                if *b {
                    extra.push(format!("--{key}").into());
                }
            }
            (_, ArgAction::SetTrue) => fail(format!("`{key}` must be true or false")),
            (toml::Value::Array(items), _) => {
                let joined: Vec<String> = items.iter().map(scalar).collect();
                extra.push(format!("--{key}={}", joined.join(",")).into());
            }
            (v, _) => extra.push(format!("--{key}={}", scalar(v)).into()),
        }
    }
    let mut all = args;
    all.extend(extra);
    Cli::try_parse_from(all).unwrap_or_else(|e| {
        // Flags and env parsed before the file's options were added: the error is the file's.
        fail(
            e.to_string()
                .trim_start_matches("error: ")
                .trim()
                .to_string(),
        )
    })
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = parse_cli();
    init_tracing(&cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => match (*args).config() {
            Ok(config) => {
                let shutdown = CancellationToken::new();
                let signal = shutdown.clone();
                tokio::spawn(async move {
                    let mut term =
                        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                            .expect("SIGTERM handler");
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                    signal.cancel();
                });
                server::serve(config, shutdown).await
            }
            Err(e) => Err(e),
        },
        Command::Bench(args) => bench(*args).await,
        Command::Snapshot(SnapshotCommand::Restore {
            file,
            store,
            skip_hash_check,
            s3,
        }) => restore_snapshot(&file, &store, skip_hash_check, &s3).await,
        Command::Inspect { target, json, s3 } => {
            match netsy::inspect::fetch(&target, &s3.options()).await {
                Ok(data) => {
                    netsy::inspect::render(&target, &data, json).map(|out| println!("{out}"))
                }
                Err(e) => Err(e),
            }
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netsy: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `netsy snapshot restore`: read and check the whole file first, then write.
async fn restore_snapshot(
    file: &std::path::Path,
    store: &str,
    skip_hash_check: bool,
    s3: &S3Args,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use netsy::etcd_backend::restore;
    let started = std::time::Instant::now();
    let data = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let db = restore::verified(&data, skip_hash_check)?;
    eprintln!("netsy: reading {} ({} bytes)", file.display(), db.len());
    let restored = restore::read(db, |n| eprintln!("netsy: {n} revisions of keys read"))?;
    if restored.auth_enabled {
        eprintln!(
            "netsy: authentication is enabled, as it was on the etcd: clients authenticate again"
        );
    }
    let state = restored.state;
    eprintln!(
        "netsy: etcd storage version {}, revision {}, compacted at {}, {} keys, {} leases",
        restored
            .storage_version
            .as_deref()
            .unwrap_or("(3.5 or older)"),
        state.revision,
        state.compact_revision,
        state.keys_count(),
        state.leases().count()
    );
    let store = netsy::store::open(store, &s3.store_options()).await?;
    let key = restore::write(store.as_ref(), state).await?;
    println!(
        "restored {} into {} ({key}) in {:.1} s",
        file.display(),
        store.describe(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
