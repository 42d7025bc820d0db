//! What a follower asks of the leader: writes and lease calls forwarded, and the committed
//! position for linearizable reads.
//!
//! A forwarded answer is passed through unchanged, but not before this node's state holds
//! it: the leader marks every write's answer with its log position after the write
//! (`netsy-next` metadata), and the follower waits until it has applied that far. A client
//! that writes through a follower and then reads from it sees its write.
//!
//! Linearizable reads follow etcd's ReadIndex: one round trip confirms the leader's
//! committed position (under its valid lease) for every read that was waiting when the
//! round started; each read then waits until the local state reaches that position. A read
//! that arrives while a round is in flight waits for the next one, since the round in
//! flight may have been answered before the read began.

use super::Node;
use crate::api::errors;
use crate::log::layout::Position;
use crate::log::Log;
use crate::mvcc::State;
use crate::proto::peer as pb;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// Metadata the leader adds to a write's answer: the log position after it.
pub const POSITION_HEADER: &str = "netsy-next";

/// Metadata a follower adds to what it forwards, so a node that is no longer leading
/// refuses it instead of forwarding it on.
pub const FORWARDED_HEADER: &str = "netsy-forwarded";

/// How long a follower waits for its state to reach a position the leader reported.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);

/// How this node reaches the others' client ports.
#[derive(Clone)]
pub enum PeerTls {
    /// No TLS configured here: only `http://` URLs.
    Plain,
    /// This node's certificate and trusted CA.
    Tls(Arc<rustls::ClientConfig>),
    /// TLS is configured here but cannot be used as a client (why).
    Unusable(String),
}

/// An HTTP/2 connection to another node's client URL, over TLS for an `https://` one.
pub async fn connect(url: &str, tls: &PeerTls) -> Result<Channel, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{url}: no host"))?
        .clone();
    // The scheme only picks the connector: TLS is done here, so tonic sees plain h2.
    let endpoint = Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(3))
        .keep_alive_while_idle(true);
    if uri.scheme_str() != Some("https") {
        return endpoint.connect().await.map_err(|e| e.to_string());
    }
    let config = match tls {
        PeerTls::Tls(c) => c.clone(),
        PeerTls::Unusable(why) => return Err(format!("{url}: {why}")),
        PeerTls::Plain => {
            return Err(format!(
            "{url} serves TLS but this node has none (--cert-file, --key-file, --trusted-ca-file)"
        ))
        }
    };
    let host = authority
        .host()
        .trim_matches(|c| c == '[' || c == ']')
        .to_string();
    let port = authority.port_u16().unwrap_or(443);
    let name =
        rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| format!("{url}: {e}"))?;
    let connector = tower::service_fn(move |_: http::Uri| {
        let (config, name, host) = (config.clone(), name.clone(), host.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)))
}

fn encode_position(p: Position) -> String {
    format!("{}.{}", p.revision, p.seq)
}

fn decode_position(s: &str) -> Option<Position> {
    let (r, n) = s.split_once('.')?;
    Some(Position::new(r.parse().ok()?, n.parse().ok()?))
}

/// On the leader: a write's answer, marked with the log position after it.
pub fn marked<T>(log: &Log, message: T) -> tonic::Response<T> {
    let mut response = tonic::Response::new(message);
    if let Ok(v) = encode_position(log.next_position()).parse() {
        response.metadata_mut().insert(POSITION_HEADER, v);
    }
    response
}

/// Whether a request came from a follower (and must not be forwarded again).
pub fn is_forwarded<T>(request: &tonic::Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED_HEADER)
}

/// Where etcd clients put their auth token.
pub const TOKEN_HEADER: &str = "token";

/// A caller's auth token, if it sent one.
pub type Token = Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>;

/// The caller's auth token, to forward with its request: the leader checks it again.
pub fn token<T>(request: &tonic::Request<T>) -> Token {
    request.metadata().get(TOKEN_HEADER).cloned()
}

/// `request`, made on behalf of the caller whose token this is.
pub fn with_token<T>(mut request: tonic::Request<T>, token: Token) -> tonic::Request<T> {
    if let Some(t) = token {
        request.metadata_mut().insert(TOKEN_HEADER, t);
    }
    request
}

/// A request to send to the leader on behalf of the caller whose token this is.
pub fn outbound_with<T>(message: T, token: Token) -> tonic::Request<T> {
    with_token(outbound(message), token)
}

/// A request to send to the leader.
pub fn outbound<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert(
        FORWARDED_HEADER,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    r
}

/// The leader's answer as the client gets it: etcd's own errors pass through; a leader
/// that cannot be reached is etcd's retryable "no leader".
pub fn leader_error(link: &super::LeaderLink, status: Status) -> Status {
    let why = match status.code() {
        _ if status.message().starts_with("etcdserver:") => return status,
        // Not reached: the request was not sent.
        Code::Unavailable => "etcdserver: no leader",
        // The connection broke with the request in flight (tonic's "transport error"; no
        // handler of ours answers Unknown): it may or may not have been applied, which is
        // what etcd's error for a lost connection says (also Unavailable).
        Code::Unknown => "etcdserver: request timed out, possibly due to connection lost",
        _ => return status,
    };
    tracing::info!(
        leader = link.member.client_urls.first().map_or("?", |u| u.as_str()),
        error = status.message(),
        answer = why,
        "forwarding to the leader failed"
    );
    Status::new(Code::Unavailable, why)
}

/// Waits until this node's state reaches `position`.
pub async fn wait_applied(log: &Log, position: Position) -> Result<(), Status> {
    match tokio::time::timeout(CATCH_UP_TIMEOUT, log.wait_for(position)).await {
        Ok(()) => Ok(()),
        Err(_) => {
            tracing::warn!(
                position = %encode_position(position),
                "request timed out: this node has not caught up with the leader's position"
            );
            Err(Status::new(
                Code::Unavailable,
                "etcdserver: request timed out",
            ))
        }
    }
}

/// On a follower: the leader's answer to a forwarded write (its error as the client should
/// see it), once this node's state holds it.
pub async fn written<T>(
    log: &Log,
    link: &super::LeaderLink,
    answer: Result<tonic::Response<T>, Status>,
) -> Result<tonic::Response<T>, Status> {
    let response = answer.map_err(|s| leader_error(link, s))?;
    let position = response
        .metadata()
        .get(POSITION_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(decode_position);
    if let Some(p) = position {
        wait_applied(log, p).await?;
    }
    Ok(tonic::Response::new(response.into_inner()))
}

/// On a follower: the leader's answer to a forwarded call that writes nothing.
pub fn answered<T>(
    link: &super::LeaderLink,
    answer: Result<tonic::Response<T>, Status>,
) -> Result<tonic::Response<T>, Status> {
    let response = answer.map_err(|s| leader_error(link, s))?;
    Ok(tonic::Response::new(response.into_inner()))
}

type Waiter = oneshot::Sender<Result<Position, Status>>;

/// Read-index rounds: at most one in flight, each serving every read queued before it.
#[derive(Default)]
pub struct ReadIndex {
    queue: Mutex<Rounds>,
}

#[derive(Default)]
struct Rounds {
    running: bool,
    waiting: Vec<Waiter>,
}

impl Node {
    /// The leader's committed position, confirmed by a round that started after this call.
    pub async fn read_index(self: &Arc<Self>) -> Result<Position, Status> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut q = self.read_index.queue.lock().unwrap();
            q.waiting.push(tx);
            !std::mem::replace(&mut q.running, true)
        };
        if start {
            let node = self.clone();
            tokio::spawn(async move { node.read_index_rounds().await });
        }
        rx.await.unwrap_or_else(|_| Err(errors::no_leader()))
    }

    async fn read_index_rounds(self: Arc<Self>) {
        loop {
            let waiting = {
                let mut q = self.read_index.queue.lock().unwrap();
                if q.waiting.is_empty() {
                    q.running = false;
                    return;
                }
                std::mem::take(&mut q.waiting)
            };
            crate::metrics::METRICS
                .read_index_batch
                .observe(waiting.len() as f64);
            let result = self.read_index_once().await;
            for w in waiting {
                let _ = w.send(result.clone());
            }
        }
    }

    async fn read_index_once(&self) -> Result<Position, Status> {
        let link = self.link()?.ok_or_else(errors::no_leader)?;
        let mut client = pb::peer_client::PeerClient::new(link.channel.clone());
        let call = client.read_index(outbound(pb::ReadIndexRequest {}));
        match tokio::time::timeout(CATCH_UP_TIMEOUT, call).await {
            Ok(Ok(r)) => Ok(r.into_inner().committed.unwrap_or_default().into()),
            Ok(Err(status)) => Err(leader_error(&link, status)),
            Err(_) => {
                tracing::warn!(
                    "read index timed out: the leader did not confirm its committed position"
                );
                Err(Status::new(
                    Code::Unavailable,
                    "etcdserver: request timed out",
                ))
            }
        }
    }

    /// The state a linearizable read is answered from: the published one under this
    /// node's valid lease when leading; after a read-index round when following.
    pub async fn linearizable_state(self: &Arc<Self>, log: &Log) -> Result<Arc<State>, Status> {
        match self.link()? {
            None => Ok(log.linearizable_state()?),
            Some(_) => {
                let committed = self.read_index().await?;
                wait_applied(log, committed).await?;
                Ok(log.state())
            }
        }
    }
}
