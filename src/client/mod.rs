//! The client library: a connection to a broker, admin helpers, a batching [`Publisher`]
//! that retries with idempotency keys, and a streaming [`Subscriber`] that extends leases,
//! batches acks and reconnects.
//!
//! Everything works from a [`tonic::transport::Channel`] alone ([`Client::from_channel`]),
//! so the simulator can hand it a channel over its own network. The client reads time only
//! through `tokio::time` (sleeps, timeouts, intervals) and [`crate::env::TokioClock`], so
//! under a paused or simulated tokio clock it follows that clock; it uses no randomness
//! (backoff has no jitter) and no hash-ordered maps.
//!
//! - [`Client`]: connect by URL or wrap a channel; topic and subscription admin (`admin`).
//! - [`Publisher`]: batches by count, bytes and linger; retries transient failures with
//!   exponential backoff; numbers messages with idempotency keys so a retry is stored once.
//! - [`Subscriber`]: a `Stream` of [`ReceivedMessage`]s, or [`Subscriber::run`] with an async
//!   handler; leases of held messages are extended, acks go out in batches, and a stream
//!   that ends with a retryable status is opened again under the same client id, so the
//!   messages it held stay valid (the broker keeps their leases for it).
//!
//! ```no_run
//! use mini_pubsub::client::{Client, OutgoingMessage, PublisherSettings, SubscribeTarget, SubscriberSettings};
//! use tokio_stream::StreamExt;
//!
//! # async fn example() -> Result<(), mini_pubsub::client::ClientError> {
//! let client = Client::connect("http://127.0.0.1:50051").await?;
//! let publisher = client.publisher("events", PublisherSettings::default())?;
//! let stored = publisher.publish(OutgoingMessage::new("hello").key("user-7")).await?.await?;
//! println!("stored at partition {} offset {}", stored.partition, stored.offset);
//! publisher.shutdown().await?;
//!
//! let mut subscriber =
//!     client.subscribe(SubscribeTarget::topic("events"), SubscriberSettings::default()).await?;
//! if let Some(message) = subscriber.next().await {
//!     let message = message?;
//!     println!("{}", message.value_lossy());
//!     message.ack().await;
//! }
//! subscriber.shutdown().await?;
//! # Ok(())
//! # }
//! ```

mod acks;
mod admin;
mod error;
mod held;
mod lease;
pub(crate) mod message;
mod publisher;
mod received;
mod retry;
mod session;
mod subscriber;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Status;

pub use admin::{DeadLetterPolicy, RetryPolicy, SubscriptionSettings, TopicSettings};
pub use error::{code_name, is_retryable, ClientError};
pub use message::{Message, OutgoingMessage, PublishResult};
pub use publisher::{PublishHandle, Publisher, PublisherSettings, PublisherStats};
pub use received::{AckHandle, AckResponse, NackOptions, ReceivedMessage};
pub use retry::RetrySettings;
pub use subscriber::{SubscribeTarget, Subscriber, SubscriberSettings, SubscriberStats};

pub use crate::wire::pb;
pub use crate::wire::pb::{DeliveryMode, StartPosition};

use pb::admin_client::AdminClient;
use pb::pub_sub_client::PubSubClient;

/// How long [`Client::connect`] waits for the TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings on an idle connection, so a Subscribe stream cut by the network is noticed
/// (and reopened) instead of hanging; the server pings at the same rate.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a ping may go unanswered before the connection is dropped.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// A connection to a broker, or to a cluster of them. Cheap to clone: clones share the
/// HTTP/2 connections, which tonic reopens by itself after they break.
///
/// Given several brokers (`"http://a:50051,http://b:50051,http://c:50051"`), requests go to
/// one at a time, the leader once it is known. A broker that answers UNAVAILABLE naming the
/// leader (the `leader-addr` trailer of a cluster's follower) sends the next request there,
/// when it is one of those given; one that cannot be reached, or answers UNAVAILABLE without
/// a hint, sends it to the next in the list. Publishers and subscribers retry UNAVAILABLE,
/// so they find the leader by themselves; a retried publish keeps its idempotency keys, so
/// it is stored once.
#[derive(Debug, Clone)]
pub struct Client {
    brokers: Arc<Brokers>,
}

/// A broker's channel, each request on it carrying the client's bearer token if it has
/// one (see [`ConnectOptions::token`]).
pub type Connection = InterceptedService<Channel, Credentials>;

/// The brokers a client knows, and which one it sends to.
#[derive(Debug)]
struct Brokers {
    /// Each broker's address (`host:port`, as a leader hint names it) and its connection,
    /// in the order given.
    nodes: Vec<(String, Connection)>,
    /// The index of the one requests go to now.
    current: AtomicUsize,
}

impl Client {
    /// Connects to `url` (`http://host:port`) now; fails if the broker cannot be reached.
    /// A comma-separated list names a cluster's brokers: the first that answers says which
    /// one leads, and requests go there (the others are connected on first use).
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), mini_pubsub::client::ClientError> {
    /// let client = mini_pubsub::client::Client::connect("http://127.0.0.1:50051").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(url: impl Into<String>) -> Result<Self, ClientError> {
        Self::connect_with(url, &ConnectOptions::default()).await
    }

    /// [`Client::connect`] with TLS (the URLs then start `https://`) or a bearer token, as
    /// `options` say.
    pub async fn connect_with(url: impl Into<String>, options: &ConnectOptions) -> Result<Self, ClientError> {
        let url = url.into();
        let urls = split(&url);
        if urls.len() == 1 {
            let endpoint = endpoint(&url, options.tls.as_ref())?;
            let channel = endpoint
                .connect()
                .await
                .map_err(|e| ClientError::Connect { url: url.clone(), reason: error_chain(&e) })?;
            return Ok(Self::with_credentials(vec![(authority(&url), channel)], options.credentials()));
        }
        let client = Self::connect_lazy_with(url.clone(), options)?;
        let mut last = String::new();
        for (index, (_, channel)) in client.brokers.nodes.iter().enumerate() {
            let mut admin = AdminClient::new(channel.clone());
            match tokio::time::timeout(CONNECT_TIMEOUT, admin.get_cluster(pb::GetClusterRequest {})).await {
                Ok(Ok(cluster)) => {
                    let leader = &cluster.get_ref().leader_address;
                    let at = client.brokers.position(leader).unwrap_or(index);
                    client.brokers.current.store(at, Ordering::Relaxed);
                    return Ok(client);
                }
                Ok(Err(status)) => last = format!("{}: {}", urls[index], status.message()),
                Err(_) => last = format!("{}: no answer within {CONNECT_TIMEOUT:?}", urls[index]),
            }
        }
        Err(ClientError::Connect { url, reason: format!("no broker answered (the last: {last})") })
    }

    /// A client for `url` (or a comma-separated list, as [`Client::connect`] takes) that
    /// connects on first use (and reconnects after a failure), so it can be made while the
    /// brokers are down; requests until one is up fail with UNAVAILABLE, which publishers
    /// and subscribers retry. Must be called within a tokio runtime.
    ///
    /// ```
    /// # #[tokio::main] async fn main() {
    /// let client = mini_pubsub::client::Client::connect_lazy("http://127.0.0.1:50051").unwrap();
    /// # drop(client) }
    /// ```
    pub fn connect_lazy(url: impl Into<String>) -> Result<Self, ClientError> {
        Self::connect_lazy_with(url, &ConnectOptions::default())
    }

    /// [`Client::connect_lazy`] with TLS (the URLs then start `https://`) or a bearer token,
    /// as `options` say.
    pub fn connect_lazy_with(url: impl Into<String>, options: &ConnectOptions) -> Result<Self, ClientError> {
        let url = url.into();
        let mut nodes = Vec::new();
        for one in split(&url) {
            nodes.push((authority(&one), endpoint(&one, options.tls.as_ref())?.connect_lazy()));
        }
        Ok(Self::with_credentials(nodes, options.credentials()))
    }

    /// A client over an existing channel (the simulator builds its channels with
    /// `Endpoint::connect_with_connector` over its own network).
    pub fn from_channel(channel: Channel) -> Self {
        Self::from_channels(vec![(String::new(), channel)])
    }

    /// A client over several brokers' channels, each with its address as a leader hint
    /// names it (`host:port`); requests go to the first until one points elsewhere.
    pub fn from_channels(nodes: Vec<(String, Channel)>) -> Self {
        Self::with_credentials(nodes, Credentials::default())
    }

    fn with_credentials(nodes: Vec<(String, Channel)>, credentials: Credentials) -> Self {
        assert!(!nodes.is_empty(), "a client needs a broker");
        let nodes = nodes
            .into_iter()
            .map(|(addr, channel)| (addr, InterceptedService::new(channel, credentials.clone())))
            .collect();
        Self { brokers: Arc::new(Brokers { nodes, current: AtomicUsize::new(0) }) }
    }

    /// The broker requests go to now: its index (for [`Client::observe`]) and connection.
    pub fn target(&self) -> (usize, Connection) {
        let index = self.brokers.current.load(Ordering::Relaxed) % self.brokers.nodes.len();
        (index, self.brokers.nodes[index].1.clone())
    }

    /// Learns from a failed request sent to broker `used`: a leader hint moves the client
    /// there; UNAVAILABLE without one (a broker down, or one that knows no leader), or a
    /// failure of the connection itself (UNKNOWN: it broke; DEADLINE_EXCEEDED: the broker
    /// did not answer in time, as one cut off or powered off does not), moves it to the
    /// next broker, unless another request already moved it. Says where the next attempt
    /// goes, so a retry can go there at once instead of backing off.
    pub fn observe(&self, used: usize, status: &Status) -> Moved {
        let moves =
            matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::DeadlineExceeded);
        if !moves || self.brokers.nodes.len() == 1 {
            return Moved::Stayed;
        }
        let hinted = status.metadata().get("leader-addr").and_then(|v| v.to_str().ok());
        match hinted.and_then(|addr| self.brokers.position(addr)) {
            Some(leader) if leader != used => {
                self.brokers.current.store(leader, Ordering::Relaxed);
                Moved::ToLeader
            }
            _ => {
                let next = (used + 1) % self.brokers.nodes.len();
                let _ = self.brokers.current.compare_exchange(used, next, Ordering::Relaxed, Ordering::Relaxed);
                Moved::ToNext
            }
        }
    }

    /// The generated `pubsub.PubSub` client on this connection, for calls this library does
    /// not wrap (Pull, Seek, unary Ack).
    pub fn pubsub_client(&self) -> PubSubClient<Connection> {
        PubSubClient::new(self.target().1)
    }

    /// The generated `pubsub.Admin` client on this connection (ListPending, redrive).
    pub fn admin_client(&self) -> AdminClient<Connection> {
        AdminClient::new(self.target().1)
    }

    /// A [`Publisher`] for `topic`; see [`PublisherSettings`] for batching, bounds and
    /// retries. Must be called within a tokio runtime (it spawns the batching task).
    pub fn publisher(&self, topic: impl Into<String>, settings: PublisherSettings) -> Result<Publisher, ClientError> {
        Publisher::new(self.clone(), topic.into(), settings)
    }

    /// Opens a [`Subscriber`] on a subscription or (ephemerally) a topic, and waits until
    /// its stream is open: a subscription that does not exist fails here with NOT_FOUND.
    /// While the broker is unreachable, opening is retried under `settings.reconnect`.
    pub async fn subscribe(
        &self,
        target: SubscribeTarget,
        settings: SubscriberSettings,
    ) -> Result<Subscriber, ClientError> {
        Subscriber::open(self.clone(), target, settings).await
    }
}

/// TLS for a client: the CA certificate that signed the broker's (PEM), and, for mutual
/// TLS, this client's certificate and private key (PEM).
#[derive(Debug, Clone)]
pub struct ClientTls {
    ca: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl ClientTls {
    /// Trusts the CA certificates in `ca_pem` (and only those).
    pub fn new(ca_pem: impl Into<Vec<u8>>) -> Self {
        Self { ca: ca_pem.into(), identity: None }
    }

    /// Reads the CA file, and the client's certificate and key files when both are given
    /// (`--ca`, `--cert`, `--key`); the error names the file.
    pub fn from_files(
        ca: &std::path::Path,
        identity: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Result<Self, ClientError> {
        let read = |field: &'static str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| ClientError::invalid(field, format!("cannot read {}: {e}", path.display())))
        };
        let mut tls = Self::new(read("ca", ca)?);
        if let Some((cert, key)) = identity {
            tls = tls.identity(read("cert", cert)?, read("key", key)?);
        }
        Ok(tls)
    }

    /// Presents `cert_pem` with its private key `key_pem` (mutual TLS).
    pub fn identity(mut self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    fn config(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca));
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        config
    }
}

/// How a client connects: over TLS or plaintext, and with or without a bearer token.
///
/// ```
/// # fn example(ca_pem: Vec<u8>) -> Result<(), mini_pubsub::client::ClientError> {
/// use mini_pubsub::client::{ClientTls, ConnectOptions};
/// let options = ConnectOptions::default().tls(ClientTls::new(ca_pem)).token("s3cret")?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct ConnectOptions {
    tls: Option<ClientTls>,
    authorization: Option<MetadataValue<Ascii>>,
}

/// The longest token [`ConnectOptions::token`] takes, as the broker bounds it.
pub const TOKEN_BYTES_MAX: usize = 4096;

impl ConnectOptions {
    /// Connects over TLS (the URLs then start `https://`).
    #[must_use]
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sends `token` with every request, as `authorization: Bearer TOKEN`. Refused unless it
    /// is 1 to 4096 visible ASCII characters (no spaces); the error never shows the token.
    pub fn token(mut self, token: &str) -> Result<Self, ClientError> {
        let shape = !token.is_empty() && token.len() <= TOKEN_BYTES_MAX && token.bytes().all(|b| b.is_ascii_graphic());
        let value = shape.then(|| MetadataValue::try_from(format!("Bearer {token}")).ok()).flatten();
        let Some(mut value) = value else {
            return Err(ClientError::invalid(
                "token",
                format!("must be 1 to {TOKEN_BYTES_MAX} visible ASCII characters without spaces"),
            ));
        };
        value.set_sensitive(true);
        self.authorization = Some(value);
        Ok(self)
    }

    fn credentials(&self) -> Credentials {
        if self.authorization.is_some() && self.tls.is_none() {
            tracing::warn!("the bearer token travels in plaintext: anyone on the path can read it; connect over https");
        }
        Credentials { authorization: self.authorization.clone() }
    }
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let token = self.authorization.as_ref().map(|_| "<hidden>");
        f.debug_struct("ConnectOptions").field("tls", &self.tls).field("token", &token).finish()
    }
}

/// What every request of a [`Connection`] carries: the `authorization` header, if any.
#[derive(Clone, Default)]
pub struct Credentials {
    authorization: Option<MetadataValue<Ascii>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let token = self.authorization.as_ref().map(|_| "<hidden>");
        f.debug_struct("Credentials").field("token", &token).finish()
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.authorization {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Where a failed request sent the client's next one (see [`Client::observe`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moved {
    /// To the same broker (one broker, or a failure that says nothing of leadership): back
    /// off as usual.
    Stayed,
    /// To the leader a hint named: retry at once.
    ToLeader,
    /// To the next broker of the list: retry after the first backoff step, not a grown one
    /// (an election takes a fraction of a second).
    ToNext,
}

impl Brokers {
    /// The index of the broker at `addr` (`host:port`), if it is one of these.
    fn position(&self, addr: &str) -> Option<usize> {
        (!addr.is_empty()).then(|| self.nodes.iter().position(|(a, _)| a == addr)).flatten()
    }
}

/// The URLs of a comma-separated list, trimmed.
fn split(urls: &str) -> Vec<String> {
    let urls: Vec<String> = urls.split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_string).collect();
    if urls.is_empty() {
        vec![String::new()]
    } else {
        urls
    }
}

/// `host:port` of a URL (`http://host:port/` gives `host:port`).
fn authority(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split('/').next().unwrap_or_default().to_string()
}

fn endpoint(url: &str, tls: Option<&ClientTls>) -> Result<Endpoint, ClientError> {
    let refused = |reason: String| ClientError::Connect { url: url.to_string(), reason };
    let mut endpoint = Endpoint::from_shared(url.to_string()).map_err(|e| refused(error_chain(&e)))?;
    let https = url.starts_with("https://");
    match tls {
        Some(tls) if https => {
            endpoint = endpoint.tls_config(tls.config()).map_err(|e| refused(error_chain(&e)))?;
        }
        Some(_) => return Err(refused("TLS settings were given, so the URL must start with https://".into())),
        None if https => {
            return Err(refused("an https:// URL needs the CA that signed the broker's certificate (--ca)".into()))
        }
        None => {}
    }
    Ok(endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        // Deliveries of large messages cross in one frame each (windows: hyper's defaults
        // for a client, 2 MiB a stream and 5 MiB a connection).
        .max_frame_size(crate::wire::HTTP2_MAX_FRAME)
        .tcp_nodelay(true))
}

/// An error and its causes on one line ("transport error: tcp connect error: Connection
/// refused"), since tonic's top-level message alone says little.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    // A cause chain is a few links long; the bound only guards a cyclic one.
    for _ in 0..16 {
        let Some(cause) = source else { break };
        let text = cause.to_string();
        if !line.contains(&text) {
            line = format!("{line}: {text}");
        }
        source = cause.source();
    }
    line
}

/// A default publisher or client id, unique across machines and restarts without
/// randomness: `{host}-{wall clock ms, hex}-{process id}-{n}`, `n` counting the ids this
/// process made. The host name tells apart containers, whose process ids are often alike.
pub(crate) fn instance_id(n: u64) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let host: String = host.trim().chars().filter(|c| c.is_ascii_graphic()).take(63).collect();
    let host = if host.is_empty() { "host".to_string() } else { host };
    format!("{host}-{:x}-{}-{n}", crate::env::Clock::wall_ms(&crate::env::TokioClock::new()), std::process::id())
}
