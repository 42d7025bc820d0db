//! One listener for gRPC and HTTP, plain or TLS, and the HTTP endpoints.
//!
//! etcd answers gRPC and HTTP/1.1 (`/metrics`, `/health`, `/version`) on the same client
//! URL, and tools depend on it: `etcdctl check datascale` fetches `/metrics` from the
//! endpoint it writes to, load balancers probe `/health` there. So connections are served
//! by hyper's auto-detecting builder (h2 prior knowledge for gRPC, HTTP/1.1 otherwise),
//! with TLS in front when configured. The same endpoints are served from process start on
//! `--listen-metrics-urls`, so readiness can be observed while the bucket is replayed.
//!
//! Client URLs take etcd's forms: `http://` and `https://` on TCP, `unix://` and `unixs://`
//! on a Unix socket named as etcd names it (the URL's host and path: `unix://localhost:2379`
//! is the file `localhost:2379` in the working directory, `unix:///run/etcd.sock` an
//! absolute path).

use crate::api::Context;
use crate::authority::AuthorityFix;
use crate::coalesce::CoalescedWrites;
use crate::tls::Reloader;
use axum::response::IntoResponse;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

/// A client URL to listen on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientUrl {
    Tcp {
        addr: std::net::SocketAddr,
        tls: bool,
    },
    Unix {
        path: std::path::PathBuf,
        tls: bool,
    },
}

impl ClientUrl {
    pub fn tls(&self) -> bool {
        match self {
            Self::Tcp { tls, .. } | Self::Unix { tls, .. } => *tls,
        }
    }
}

impl std::str::FromStr for ClientUrl {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("{url}: not a URL (http://, https://, unix:// or unixs://)"))?;
        match scheme {
            "http" | "https" => {
                let host_port = rest.trim_end_matches('/');
                let addr = host_port
                    .parse()
                    .map_err(|e| format!("{url}: {e} (an IP address and port)"))?;
                Ok(Self::Tcp {
                    addr,
                    tls: scheme == "https",
                })
            }
            "unix" | "unixs" if !rest.is_empty() => Ok(Self::Unix {
                path: rest.into(),
                tls: scheme == "unixs",
            }),
            _ => Err(format!(
                "{url}: unsupported (http://, https://, unix:// or unixs://)"
            )),
        }
    }
}

/// A bound client listener.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, std::path::PathBuf),
}

type Stream = Either<TcpStream, UnixStream>;

impl Listener {
    /// Binds `url`. A Unix socket file left by a process that is gone is replaced (etcd
    /// refuses to start on one; a VM replaced under the same path would never start).
    pub async fn bind(url: &ClientUrl) -> std::io::Result<Self> {
        match url {
            ClientUrl::Tcp { addr, .. } => Ok(Self::Tcp(TcpListener::bind(addr).await?)),
            ClientUrl::Unix { path, .. } => {
                if UnixStream::connect(path).await.is_err() {
                    let _ = std::fs::remove_file(path);
                }
                Ok(Self::Unix(UnixListener::bind(path)?, path.clone()))
            }
        }
    }

    /// The URL as bound (the port chosen for port 0).
    pub fn url(&self, tls: bool) -> String {
        match self {
            Self::Tcp(l) => {
                let addr = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
                format!("{}://{addr}", if tls { "https" } else { "http" })
            }
            Self::Unix(_, path) => {
                format!(
                    "{}://{}",
                    if tls { "unixs" } else { "unix" },
                    path.display()
                )
            }
        }
    }

    async fn accept(&self) -> std::io::Result<(Stream, String)> {
        match self {
            Self::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok((Either::Left(s), peer.to_string()))
            }
            Self::Unix(l, path) => {
                let (s, _) = l.accept().await?;
                Ok((Either::Right(s), path.display().to_string()))
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Self::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Where the node is in its life, for `/readyz` and `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Starting = 0,
    WaitingForLease = 1,
    Replaying = 2,
    Serving = 3,
    Stopping = 4,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::WaitingForLease => "waiting for the leader lease",
            Phase::Replaying => "replaying the bucket",
            Phase::Serving => "serving",
            Phase::Stopping => "stopping",
        }
    }
}

/// What the HTTP endpoints report; shared by the server's phases.
#[derive(Default)]
pub struct Health {
    phase: AtomicU8,
    ctx: OnceLock<Context>,
}

impl Health {
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::SeqCst);
        crate::metrics::METRICS
            .ready
            .set((phase == Phase::Serving) as i64);
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::SeqCst) {
            0 => Phase::Starting,
            1 => Phase::WaitingForLease,
            2 => Phase::Replaying,
            3 => Phase::Serving,
            _ => Phase::Stopping,
        }
    }

    pub fn set_context(&self, ctx: Context) {
        let _ = self.ctx.set(ctx);
    }

    /// Ready: the bucket is replayed, and the node leads or follows a leader it has caught
    /// up with, so every request is answered.
    fn ready(&self) -> Result<(), String> {
        match self.phase() {
            Phase::Serving => self.has_leader(),
            p => Err(p.name().to_string()),
        }
    }

    /// Healthy: ready (writes can be committed: this node leads, or forwards to the leader).
    fn healthy(&self) -> Result<(), String> {
        self.ready()
    }

    fn has_leader(&self) -> Result<(), String> {
        match self.ctx.get().map(|c| c.node.leader_id()) {
            Some(id) if id != 0 => Ok(()),
            _ => Err(
                "no leader: this node neither holds the leader lease nor follows a node that does"
                    .into(),
            ),
        }
    }
}

fn verdict(r: Result<(), String>) -> axum::response::Response {
    let (code, health, reason) = match r {
        Ok(()) => (http::StatusCode::OK, "true", String::new()),
        Err(reason) => (http::StatusCode::SERVICE_UNAVAILABLE, "false", reason),
    };
    (
        code,
        axum::Json(serde_json::json!({ "health": health, "reason": reason })),
    )
        .into_response()
}

/// `/metrics`, `/health`, `/livez`, `/readyz`, `/version`.
pub fn routes(health: Arc<Health>) -> axum::Router {
    use axum::routing::get;
    let (h1, h2, h3) = (health.clone(), health.clone(), health);
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let text = crate::metrics::render(h1.ctx.get());
                async move {
                    (
                        [(
                            http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        text,
                    )
                }
            }),
        )
        .route("/health", get(move || async move { verdict(h2.healthy()) }))
        .route("/readyz", get(move || async move { verdict(h3.ready()) }))
        .route("/livez", get(|| async { verdict(Ok(())) }))
        .route(
            "/version",
            get(|| async {
                axum::Json(serde_json::json!({
                    "etcdserver": crate::api::maintenance::ETCD_VERSION,
                    "etcdcluster": crate::api::maintenance::ETCD_CLUSTER_VERSION,
                }))
            }),
        )
}

/// Serves `app` on `listener` until `shutdown`, then lets open connections finish their
/// requests for at most `drain`.
pub async fn serve(
    listener: Listener,
    tls: Option<Arc<Reloader>>,
    app: axum::Router,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let service = hyper_util::service::TowerToHyperService::new(app);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let (builder, service, watcher, tls) = (
            builder.clone(),
            service.clone(),
            graceful.watcher(),
            tls.clone(),
        );
        tokio::spawn(async move {
            let result = match tls {
                None => {
                    let conn = builder.serve_connection_with_upgrades(
                        TokioIo::new(CoalescedWrites::new(AuthorityFix::new(stream))),
                        service,
                    );
                    watcher.watch(conn).await
                }
                Some(tls) => {
                    let handshake = tls.acceptor().accept(stream);
                    match tokio::time::timeout(Duration::from_secs(10), handshake).await {
                        Ok(Ok(stream)) => {
                            let conn = builder.serve_connection_with_upgrades(
                                TokioIo::new(CoalescedWrites::new(AuthorityFix::new(stream))),
                                service,
                            );
                            watcher.watch(conn).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(drain) => {
            tracing::warn!(drain_ms = drain.as_millis() as u64, "connections still open after the drain timeout; closing them");
        }
    }
}

/// A plain HTTP/1.1 GET of `path` on `addr` (`host:port`): status code and body. Enough for
/// reading `/metrics` and probing health from `netsy bench` and the test suites; not a
/// general client (no TLS, no redirects, no chunked decoding).
pub async fn get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .map_err(|_| std::io::Error::other("timed out"))??;
    let text = String::from_utf8_lossy(&raw);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text}")))?;
    let body = text.split_once("\r\n\r\n").map_or("", |x| x.1);
    Ok((code, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::ClientUrl;

    #[test]
    fn client_urls_take_etcds_forms() {
        let tcp = |s: &str, tls| ClientUrl::Tcp {
            addr: s.parse().unwrap(),
            tls,
        };
        let unix = |s: &str, tls| ClientUrl::Unix {
            path: s.into(),
            tls,
        };
        let cases = [
            ("http://127.0.0.1:2379", tcp("127.0.0.1:2379", false)),
            ("https://0.0.0.0:2379/", tcp("0.0.0.0:2379", true)),
            ("http://[::1]:2379", tcp("[::1]:2379", false)),
            ("unix://localhost:2379", unix("localhost:2379", false)),
            ("unix:///run/netsy.sock", unix("/run/netsy.sock", false)),
            ("unixs:///run/netsy.sock", unix("/run/netsy.sock", true)),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<ClientUrl>(), Ok(want), "{text}");
        }
        for bad in [
            "127.0.0.1:2379",
            "http://localhost:2379",
            "ftp://x:1",
            "unix://",
        ] {
            let e = bad.parse::<ClientUrl>().unwrap_err();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }
}
