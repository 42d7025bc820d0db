//! Helpers shared by the behaviour tests: a LocalStack-backed S3 store under a fresh prefix,
//! and a `netsy serve` process started from the built binary.
#![allow(dead_code)]

pub mod proxy;

use netsy::store::s3::{S3Options, S3Store};
use std::time::Duration;

/// LocalStack's endpoint; the test command starts it (scripts/localstack.sh).
pub fn s3_endpoint() -> String {
    std::env::var("NETSY_TEST_S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4566".into())
}

pub fn s3_bucket() -> String {
    std::env::var("NETSY_TEST_BUCKET").unwrap_or_else(|_| "netsy-test".into())
}

/// A unique prefix so tests sharing the bucket never see each other's objects.
pub fn unique_prefix(name: &str) -> String {
    format!("{name}-{:016x}", rand::random::<u64>())
}

pub fn s3_options(prefix: &str) -> S3Options {
    S3Options {
        bucket: s3_bucket(),
        prefix: prefix.to_string(),
        endpoint: Some(s3_endpoint()),
        region: Some("us-east-1".into()),
        force_path_style: true,
        access_key_id: Some("test".into()),
        secret_access_key: Some("test".into()),
        max_attempts: Some(3),
        attempt_timeout: Some(Duration::from_secs(5)),
        ..Default::default()
    }
}

/// Connects to LocalStack, failing loudly (not skipping) when it is not running.
pub async fn s3_store(name: &str) -> S3Store {
    let store = S3Store::connect(s3_options(&unique_prefix(name)))
        .await
        .expect("S3 client");
    use netsy::store::ObjectStore;
    if let Err(e) = store.list("probe/", None).await {
        panic!(
            "LocalStack S3 is not reachable at {} ({e}); start it with scripts/localstack.sh",
            s3_endpoint()
        );
    }
    store
}

/// A `netsy serve` child process.
pub struct Netsy {
    pub child: std::process::Child,
    pub addr: String,
    pub store: String,
    pub log_path: std::path::PathBuf,
}

/// A free loopback port (bound then released; good enough for tests on one machine).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Netsy {
    /// Starts `netsy serve --store STORE` on a free port and waits until it answers.
    pub async fn start(store: &str, extra: &[&str]) -> Netsy {
        Self::start_on(store, free_port(), extra).await
    }

    pub async fn start_on(store: &str, port: u16, extra: &[&str]) -> Netsy {
        let mut n = Self::spawn(store, port, extra);
        n.wait_ready().await;
        n
    }

    /// Starts `netsy serve` without waiting for it to answer.
    pub fn spawn(store: &str, port: u16, extra: &[&str]) -> Netsy {
        Self::spawn_env(store, port, extra, &[])
    }

    /// Starts `netsy serve` with extra environment variables, without waiting.
    pub fn spawn_env(store: &str, port: u16, extra: &[&str], env: &[(&str, &str)]) -> Netsy {
        let addr = format!("127.0.0.1:{port}");
        let log_path =
            std::env::temp_dir().join(format!("netsy-test-{port}-{:x}.log", rand::random::<u32>()));
        let log = std::fs::File::create(&log_path).unwrap();
        // A test naming its own client URLs (etcd's flag) includes this port in them.
        let listen: &[&str] = if extra.contains(&"--listen-client-urls") {
            &[]
        } else {
            &["--listen-client-addr", &addr]
        };
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_netsy"))
            .args(["serve", "--store", store])
            .args(listen)
            .args(extra)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("NETSY_S3_ENDPOINT", s3_endpoint())
            .env("NETSY_S3_FORCE_PATH_STYLE", "true")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn netsy");
        Netsy {
            child,
            addr,
            store: store.to_string(),
            log_path,
        }
    }

    /// Polls `GET path` on `addr` (plain HTTP) until it answers `status`.
    pub async fn wait_http(&mut self, addr: &str, path: &str, status: u16) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(exit)) = self.child.try_wait() {
                panic!("netsy exited early ({exit}):\n{}", self.log());
            }
            if let Ok((code, body)) = http_get(addr, path).await {
                if code == status {
                    return body;
                }
            }
            if std::time::Instant::now() > deadline {
                panic!("{path} on {addr} never answered {status}:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_ready(&mut self) {
        // Answering is not enough: a node that follows no leader yet (its lease holder
        // died and the lease has not expired) answers but cannot write.
        self.wait_status("become ready", |s| s.leader() != 0).await;
    }

    /// Waits until this node leads (its status names itself).
    pub async fn wait_leading(&mut self) {
        self.wait_status("lead", |s| {
            s.leader() != 0 && Some(s.leader()) == s.header().map(|h| h.member_id())
        })
        .await;
    }

    /// Polls Status until `ok` holds; panics if the process exits or a minute passes.
    async fn wait_status(&mut self, what: &str, ok: impl Fn(&etcd_client::StatusResponse) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("netsy exited early ({status}):\n{}", self.log());
            }
            if let Ok(mut c) = self.client().await {
                if c.status().await.is_ok_and(|s| ok(&s)) {
                    return;
                }
            }
            if std::time::Instant::now() > deadline {
                panic!("netsy did not {what}:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn client(&self) -> Result<etcd_client::Client, etcd_client::Error> {
        connect(&self.addr, Duration::from_secs(10)).await
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe_sigterm(self.child.id());
        self.child.wait().unwrap()
    }
}

/// An etcd client for `addr`: connecting gives up after 2 s, each request after `timeout`.
pub async fn connect(
    addr: &str,
    timeout: Duration,
) -> Result<etcd_client::Client, etcd_client::Error> {
    etcd_client::Client::connect(
        [addr],
        Some(
            etcd_client::ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(2))
                .with_timeout(timeout),
        ),
    )
    .await
}

/// A plain HTTP/1.1 GET: status code and body.
pub async fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    netsy::http::get(addr, path).await
}

/// The etcd the differential suites compare with: `NETSY_TEST_ETCD` (scripts/test.sh runs
/// them once with Debian's 3.4 and once with 3.7 built from go.etcd.io/etcd), else `etcd`.
pub fn etcd_bin() -> String {
    std::env::var("NETSY_TEST_ETCD").unwrap_or_else(|_| "etcd".into())
}

/// The (major, minor) version of [`etcd_bin`], from `etcd --version`.
pub fn etcd_version() -> (u32, u32) {
    let out = std::process::Command::new(etcd_bin())
        .arg("--version")
        .output()
        .expect("etcd is installed (scripts/test.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text
        .lines()
        .find_map(|l| l.strip_prefix("etcd Version: "))
        .unwrap_or_else(|| panic!("no version in `etcd --version`: {text}"));
    let mut parts = v.trim().split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// etcd's flag for the watch progress notification interval: experimental before 3.6.
pub fn etcd_progress_notify_flag() -> &'static str {
    if etcd_version() >= (3, 6) {
        "--watch-progress-notify-interval"
    } else {
        "--experimental-watch-progress-notify-interval"
    }
}

/// The etcdctl the suites run: `NETSY_TEST_ETCDCTL`, else `etcdctl`.
pub fn etcdctl_bin() -> String {
    std::env::var("NETSY_TEST_ETCDCTL").unwrap_or_else(|_| "etcdctl".into())
}

/// The environment etcdctl needs for the v3 API: `ETCDCTL_API=3` for 3.4 (etcdctl 3.5+
/// speaks only v3 and warns about the variable).
pub fn etcdctl_env() -> Vec<(&'static str, &'static str)> {
    static OLD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let old = *OLD.get_or_init(|| {
        let out = std::process::Command::new(etcdctl_bin())
            .arg("version")
            .env("ETCDCTL_API", "3")
            .output()
            .expect("etcdctl is installed (scripts/test.sh installs it)");
        String::from_utf8_lossy(&out.stdout).contains("etcdctl version: 3.4.")
    });
    if old {
        vec![("ETCDCTL_API", "3")]
    } else {
        vec![]
    }
}

/// Runs etcdctl (v3 API) with `args`; returns (success, stdout, stderr).
pub fn etcdctl(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(etcdctl_bin())
        .args(args)
        .envs(etcdctl_env())
        .output()
        .expect("etcdctl is installed (scripts/test.sh installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn unsafe_sigterm(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

impl Drop for Netsy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How [`Etcd::launch_at`] serves clients besides its TCP port.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Clients<'a> {
    /// Plain HTTP on the port.
    Plain,
    /// Plain HTTP on the port and on this Unix socket (`unix://` name).
    AndSocket(&'a str),
    /// TLS on the port (the certificate files are in `extra`).
    Tls,
}

/// The etcdctl commands every endpoint form must answer as etcd does (`snapshot` is where
/// `snapshot save` writes).
pub fn endpoint_commands(snapshot: &str) -> Vec<Vec<String>> {
    let commands: &[&[&str]] = &[
        &["put", "k", "v"],
        &["get", "k"],
        &["endpoint", "status"],
        &["endpoint", "status", "-w", "table"],
        &["endpoint", "status", "--cluster"],
        &["endpoint", "health"],
        &["endpoint", "health", "--cluster"],
        &["endpoint", "hashkv"],
        &["member", "list"],
        &["alarm", "list"],
        &["defrag"],
        &["snapshot", "save", snapshot],
        &["lock", "mylock", "echo", "held"],
    ];
    commands
        .iter()
        .map(|c| c.iter().map(|s| s.to_string()).collect())
        .collect()
}

/// A real etcd ([`etcd_bin`]: the Debian `etcd-server` package, 3.4, or 3.7) on free
/// loopback ports.
pub struct Etcd {
    pub child: std::process::Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Etcd {
    pub async fn start() -> Etcd {
        Self::start_with(&[]).await
    }

    pub async fn start_with(extra: &[&str]) -> Etcd {
        Self::launch(extra, |_, _| {}).await
    }

    /// An etcd started on a data dir that `prepare` fills first (given the data dir's path
    /// and the peer URL of the member named `diff`), e.g. by restoring a snapshot.
    pub async fn launch(extra: &[&str], prepare: impl Fn(&std::path::Path, &str)) -> Etcd {
        Self::launch_at(extra, Clients::Plain, prepare).await
    }

    /// An etcd serving TLS (no client certificates) with `cert`, `key` on its client URL.
    pub async fn start_tls(cert: &str, key: &str) -> Etcd {
        Self::launch_at(
            &["--cert-file", cert, "--key-file", key],
            Clients::Tls,
            |_, _| {},
        )
        .await
    }

    /// An etcd that also listens on a Unix socket, named as etcd 3.4 requires
    /// (`unix://localhost:N`, a file in its working directory, its temporary directory);
    /// returns it and the socket's absolute path, which clients dial as `unix://PATH`.
    pub async fn start_with_socket() -> (Etcd, String) {
        let name = format!("localhost:{}", free_port());
        let etcd = Self::launch_at(&[], Clients::AndSocket(&name), |_, _| {}).await;
        let path = etcd._dir.path().join(&name).display().to_string();
        (etcd, path)
    }

    async fn launch_at(
        extra: &[&str],
        clients: Clients<'_>,
        prepare: impl Fn(&std::path::Path, &str),
    ) -> Etcd {
        // Ports are picked free, then bound by etcd: another test may take one in between
        // (or both picks may be the same port). etcd then exits at once; pick again.
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let client = free_port();
            let peer = loop {
                let p = free_port();
                if p != client {
                    break p;
                }
            };
            let addr = format!("127.0.0.1:{client}");
            prepare(
                &dir.path().join("data"),
                &format!("http://127.0.0.1:{peer}"),
            );
            let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
            let child = std::process::Command::new(etcd_bin())
                .args([
                    "--name",
                    "diff",
                    "--data-dir",
                    dir.path().join("data").to_str().unwrap(),
                    "--listen-client-urls",
                    &match clients {
                        Clients::Tls => format!("https://{addr}"),
                        Clients::AndSocket(path) => format!("http://{addr},unix://{path}"),
                        Clients::Plain => format!("http://{addr}"),
                    },
                    "--advertise-client-urls",
                    &format!(
                        "{}://{addr}",
                        if clients == Clients::Tls {
                            "https"
                        } else {
                            "http"
                        }
                    ),
                    "--listen-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                    "--initial-cluster",
                    &format!("diff=http://127.0.0.1:{peer}"),
                ])
                .args(extra)
                .current_dir(dir.path())
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .expect(
                    "etcd is not installed (apt-get install etcd-server; scripts/test.sh does it)",
                );
            let mut e = Etcd {
                child,
                addr,
                _dir: dir,
            };
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                if let Some(status) = e.child.try_wait().unwrap() {
                    let log =
                        std::fs::read_to_string(e._dir.path().join("etcd.log")).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(3).collect();
                    eprintln!("etcd exited ({status}) at start, retrying: {tail:?}");
                    break;
                }
                if clients == Clients::Tls {
                    // The plain client cannot probe TLS: etcd answers once its port does.
                    if tokio::net::TcpStream::connect(&e.addr).await.is_ok() {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        return e;
                    }
                } else if let Ok(mut c) =
                    etcd_client::Client::connect([e.addr.as_str()], None).await
                {
                    if c.get("probe", None).await.is_ok() {
                        return e;
                    }
                }
                assert!(std::time::Instant::now() < deadline, "etcd did not start");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        panic!("etcd exited at start five times");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
