//! A fault-injecting HTTP proxy for S3 tests: each new client connection either gets a
//! fault or is piped to LocalStack. Faults are taken from a queue in order, so a test says
//! exactly what the next requests suffer.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyFault {
    /// Answer `503 SlowDown` without forwarding.
    SlowDown,
    /// Forward the request, read S3's response, then drop the connection unanswered.
    LoseResponse,
    /// Answer `500 InternalError` without forwarding.
    InternalError,
    /// Drop the connection without forwarding (a reset).
    Reset,
    /// Hold the request unanswered for 12 s (past the client's attempt timeout), then drop.
    Stall,
}

impl ProxyFault {
    pub const ALL: [ProxyFault; 5] = [
        ProxyFault::SlowDown,
        ProxyFault::LoseResponse,
        ProxyFault::InternalError,
        ProxyFault::Reset,
        ProxyFault::Stall,
    ];
}

#[derive(Clone, Default)]
pub struct FaultyProxy {
    pub faults: Arc<Mutex<VecDeque<ProxyFault>>>,
    pub faulted: Arc<Mutex<Vec<ProxyFault>>>,
    /// Percent of requests (beyond the queued faults) given a random fault of `random`.
    pub rate: Arc<std::sync::atomic::AtomicU32>,
    pub random: Arc<Mutex<Vec<ProxyFault>>>,
    /// While set, every request is reset: S3 is down.
    pub down: Arc<std::sync::atomic::AtomicBool>,
    /// Requests seen, by method.
    pub seen: Arc<Mutex<std::collections::BTreeMap<String, usize>>>,
    /// Every GET (object reads and listings) answered this many ms late: a slow bucket.
    pub get_delay_ms: Arc<std::sync::atomic::AtomicU64>,
}

/// Reads one HTTP request (head and Content-Length body).
async fn read_request(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap_or(0));
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some(buf);
        }
    }
}

/// Sends one request upstream with `Connection: close` and reads the whole response.
async fn forward(upstream: &str, req: &[u8]) -> Option<Vec<u8>> {
    let end = req.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&req[..end]);
    let mut out: Vec<u8> = head
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect::<Vec<_>>()
        .join("\r\n")
        .into_bytes();
    out.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    out.extend_from_slice(&req[end + 4..]);
    let mut server = TcpStream::connect(upstream).await.ok()?;
    server.write_all(&out).await.ok()?;
    let mut resp = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        server.read_to_end(&mut resp),
    )
    .await
    .ok()?
    .ok()?;
    Some(resp)
}

impl FaultyProxy {
    /// Starts the proxy in front of `upstream` (host:port); returns its endpoint URL.
    pub async fn start(&self, upstream: String) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let (upstream, this) = (upstream.clone(), this.clone());
                tokio::spawn(async move {
                    // One request at a time; each is forwarded on its own upstream
                    // connection, so faults apply per request even when the client reuses
                    // its connection.
                    while let Some(req) = read_request(&mut client).await {
                        let method = String::from_utf8_lossy(&req[..req.len().min(8)])
                            .split(' ')
                            .next()
                            .unwrap_or_default()
                            .to_string();
                        let delay = this.get_delay_ms.load(std::sync::atomic::Ordering::Relaxed);
                        if method == "GET" && delay > 0 {
                            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                        }
                        *this.seen.lock().unwrap().entry(method).or_default() += 1;
                        if this.down.load(std::sync::atomic::Ordering::Relaxed) {
                            return;
                        }
                        let mut fault = this.faults.lock().unwrap().pop_front();
                        let rate = this.rate.load(std::sync::atomic::Ordering::Relaxed);
                        if fault.is_none() && rand::random::<u32>() % 100 < rate {
                            let kinds = this.random.lock().unwrap().clone();
                            if !kinds.is_empty() {
                                fault = Some(kinds[rand::random::<u32>() as usize % kinds.len()]);
                            }
                        }
                        if let Some(f) = fault {
                            this.faulted.lock().unwrap().push(f);
                        }
                        match fault {
                            Some(ProxyFault::Reset) => return,
                            Some(ProxyFault::Stall) => {
                                tokio::time::sleep(std::time::Duration::from_secs(12)).await;
                                return;
                            }
                            Some(ProxyFault::InternalError) => {
                                let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InternalError</Code><Message>We encountered an internal error. Please try again.</Message></Error>";
                                let resp = format!(
                                    "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                    body.len()
                                );
                                let _ = client.write_all(resp.as_bytes()).await;
                                return;
                            }
                            Some(ProxyFault::SlowDown) => {
                                let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
                                let resp = format!(
                                    "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                    body.len()
                                );
                                let _ = client.write_all(resp.as_bytes()).await;
                                return;
                            }
                            Some(ProxyFault::LoseResponse) => {
                                // S3 applies the request; the client never hears back.
                                let _ = forward(&upstream, &req).await;
                                return;
                            }
                            None => {
                                let Some(resp) = forward(&upstream, &req).await else {
                                    return;
                                };
                                if client.write_all(&resp).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        url
    }

    pub fn push(&self, f: ProxyFault) {
        self.faults.lock().unwrap().push_back(f);
    }
}
