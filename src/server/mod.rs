//! The server shell: the driver task that owns the core, the tonic services, health and
//! reflection, all started by [`run`] on whatever listener and shutdown signal it is given.
//! [`metrics::install`] turns on Prometheus metrics for the servers started after it.

pub mod access;
mod admin;
pub mod auth;
pub mod conn;
mod driver;
pub mod metrics;
mod observer;
mod pubsub;
pub mod refusals;
pub mod stages;
pub mod tls;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_stream::Stream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::Connected;
use tonic::Status;
use tracing::info;

pub use driver::{Checks, Driver, DriverHandle, DriverSettings};
pub use observer::Observer;
pub use pubsub::PUBLISH_STREAM_WINDOW;

use crate::cluster::{Applier, ClusterNode, Connector, NodeSettings};
use crate::env::Fs;
use crate::record::Recorder;
use futures_util::future::BoxFuture;

use crate::core::{Broker, BrokerConfig, BrokerError};
use crate::env::Clock;
use crate::storage::Storage;
use crate::wire::pb;

/// Stream queue slots beyond one per outstanding message: the opening response, the final
/// status, and confirmations not yet read.
const STREAM_QUEUE_SLACK: usize = 16;

/// The largest `request_bytes_max`: a flight recording writes a request as one frame, of at
/// most `record::FRAME_BODY_MAX` (64 MiB), with room for its other fields.
const REQUEST_BYTES_MAX: usize = 60 * 1024 * 1024;

/// Settings of the server shell (the core's are in `broker`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// The broker core's limits and defaults (the `[broker]` section).
    pub broker: BrokerConfig,
    /// Requests waiting for the driver; when full, handlers wait (backpressure).
    pub command_queue_max: usize,
    /// Largest request the server decodes, in bytes (a Publish batch); larger is refused by
    /// gRPC itself with OUT_OF_RANGE. Single messages are bounded by `max_message_bytes`.
    pub request_bytes_max: usize,
    /// Responses queued on one Subscribe stream, the last slot kept for the status that ends
    /// it. At least `pull_messages_max + 16`, so deliveries (bounded by flow control) always
    /// fit; it fills only when a client keeps sending acks without reading the answers, and
    /// then the stream ends with RESOURCE_EXHAUSTED (its leases go to the other members).
    pub stream_queue_max: usize,
    /// How long a Subscribe stream's transport may take none of the responses waiting for it
    /// (a client that stopped reading) before the stream is ended with RESOURCE_EXHAUSTED
    /// and its leases go to the other members at once. Checked once a second.
    pub stream_stall_timeout_ms: u64,
    /// HTTP/2 keepalive pings on idle connections, so a stream cut by a partition is
    /// detected instead of hanging.
    pub keepalive_interval_ms: u64,
    /// How long a keepalive ping may go unanswered before the connection is dropped.
    pub keepalive_timeout_ms: u64,
    /// Connections open at once; one more is closed as soon as it is accepted (its client
    /// sees UNAVAILABLE), and the open ones are untouched.
    pub connections_max: usize,
    /// How long a new connection has to send its HTTP/2 preface before it is closed.
    pub handshake_timeout_ms: u64,
    /// How long a graceful stop waits for connections to finish after it has ended the
    /// streams and told every connection to go away (HTTP/2 GOAWAY); past it the remaining
    /// connections are dropped, so a client that does not answer cannot hold the stop.
    pub shutdown_grace_ms: u64,
    /// Simulated fsync latency: under `fsync=always` the driver waits this long between a
    /// turn's writes and its fsync. 0 in production, where the fsync itself takes the time;
    /// the simulator sets it (its disk syncs instantly) so that a crash can land between
    /// a write and the fsync that would make it durable.
    pub sync_delay_ms: u64,
    /// Checks the core's invariants after every driver turn, and panics at a broken one.
    /// Debug builds always check; the simulator turns it on in every build.
    pub check_invariants: bool,
    /// The PEM certificate chain the gRPC port presents over TLS (with `tls_key`); `None`:
    /// plaintext. Read again on SIGHUP.
    pub tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of `tls_cert`.
    pub tls_key: Option<std::path::PathBuf>,
    /// The CA (PEM) whose client certificates name a principal (mutual TLS); needs TLS.
    pub tls_client_ca: Option<std::path::PathBuf>,
    /// Which name of a client certificate is its principal: `subject` (its common name)
    /// or `san` (its first DNS or URI subject alternative name).
    pub tls_client_identity: String,
    /// Bearer tokens, as `PRINCIPAL=SHA256HEX,...` (see [`auth::parse_tokens`]).
    pub tokens: String,
    /// Grants, as `PERMISSION:PATTERN:PRINCIPAL,...` (see [`access`]).
    pub permissions: String,
    /// The services that answer without a credential when credentials are configured:
    /// `health`, `reflection`, both (the default), or none (empty).
    pub open_services: String,
}

/// The services `open_services` may name.
pub const OPEN_SERVICES: [&str; 2] = ["health", "reflection"];

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            broker: BrokerConfig::default(),
            command_queue_max: 1024,
            request_bytes_max: 16 * 1024 * 1024,
            stream_queue_max: 1024,
            stream_stall_timeout_ms: 10_000,
            keepalive_interval_ms: 10_000,
            keepalive_timeout_ms: 20_000,
            connections_max: 10_000,
            handshake_timeout_ms: 10_000,
            shutdown_grace_ms: 10_000,
            sync_delay_ms: 0,
            check_invariants: false,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_client_identity: "subject".to_string(),
            tokens: String::new(),
            permissions: String::new(),
            open_services: "health,reflection".to_string(),
        }
    }
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// This node's Raft stopped on its own (its log failed): the server shut down, and a
    /// supervisor should start it again on its data.
    #[error("this node's Raft stopped after its log failed; start it again on its data")]
    RaftStopped,
    /// The core's settings (`server.broker`) cannot work.
    #[error("invalid configuration: {0}")]
    Config(#[from] BrokerError),
    /// A server shell setting is out of its range.
    #[error("invalid configuration: {key} must be {allowed}")]
    ServerConfig {
        /// The setting's name, as in the file.
        key: &'static str,
        /// Its allowed range, as text.
        allowed: &'static str,
    },
    /// `stream_queue_max` is too small for the deliveries flow control lets a stream have.
    #[error("invalid configuration: stream_queue_max must be from pull_messages_max + 16 = {least} to 1000000")]
    StreamQueue {
        /// The least it may be: `pull_messages_max + 16`.
        least: usize,
    },
    /// The broker could not be opened on its storage (a damaged or unreadable log or
    /// metadata file).
    #[error("cannot open the stored state: {0}")]
    Recovery(BrokerError),
    /// The flight recording cannot start: its directory cannot be written, already holds a
    /// recording, or its bound is under the least (8 MiB).
    #[error("cannot start the flight recording: {0}")]
    Record(std::io::Error),
    /// The gRPC reflection service could not be built from the descriptor sets.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC server failed while serving.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// This node of a cluster cannot start: its Raft log cannot be opened (another node's
    /// or another cluster's, or damaged), or Raft refused to start.
    #[error("cannot start this cluster node: {0}")]
    Cluster(std::io::Error),
    /// The TLS certificate or key cannot be read, or they do not belong together.
    #[error("cannot serve TLS: {0}")]
    Tls(String),
    /// `tokens` is not `PRINCIPAL=SHA256HEX,...`.
    #[error("invalid configuration: tokens: {0}")]
    Tokens(String),
    /// `permissions` is not `PERMISSION:PATTERN:PRINCIPAL,...`.
    #[error("invalid configuration: permissions: {0}")]
    Permissions(String),
}

impl ServerConfig {
    /// Refuses settings that cannot work, naming the key and the allowed range.
    pub fn validate(&self) -> Result<(), ServerError> {
        self.broker.validate()?;
        let check = |ok: bool, key, allowed| if ok { Ok(()) } else { Err(ServerError::ServerConfig { key, allowed }) };
        check((1..=1_000_000).contains(&self.command_queue_max), "command_queue_max", "1 to 1000000")?;
        // Flow control bounds what a stream has in flight: at most one response per
        // outstanding message, plus the opening response and confirmations. The queue must
        // hold all of it, so that only a client that stops reading can fill it.
        let least = self.broker.pull_messages_max as usize + STREAM_QUEUE_SLACK;
        if !(least..=1_000_000).contains(&self.stream_queue_max) {
            return Err(ServerError::StreamQueue { least });
        }
        check(
            (self.broker.max_message_bytes + 64 * 1024..=REQUEST_BYTES_MAX).contains(&self.request_bytes_max),
            "request_bytes_max",
            "at least max_message_bytes + 64 KiB, at most 60 MiB (a flight recording's frame holds one request)",
        )?;
        check(
            (1000..=3_600_000).contains(&self.stream_stall_timeout_ms),
            "stream_stall_timeout_ms",
            "1000 to 3600000",
        )?;
        check(self.keepalive_interval_ms >= 100, "keepalive_interval_ms", "at least 100")?;
        check(self.keepalive_timeout_ms >= 100, "keepalive_timeout_ms", "at least 100")?;
        check((1..=1_000_000).contains(&self.connections_max), "connections_max", "1 to 1000000")?;
        check((100..=600_000).contains(&self.handshake_timeout_ms), "handshake_timeout_ms", "100 to 600000")?;
        check((1..=3_600_000).contains(&self.shutdown_grace_ms), "shutdown_grace_ms", "1 to 3600000")?;
        check(self.sync_delay_ms <= 1000, "sync_delay_ms", "0 to 1000")?;
        check(
            self.tls_key.is_some() || self.tls_cert.is_none(),
            "tls_key",
            "set with tls_cert (the certificate's PEM private key)",
        )?;
        check(
            self.tls_cert.is_some() || self.tls_key.is_none(),
            "tls_cert",
            "set with tls_key (a PEM certificate chain)",
        )?;
        check(
            self.tls_client_ca.is_none() || self.tls_cert.is_some(),
            "tls_client_ca",
            "unset unless tls_cert and tls_key are set (client certificates travel over TLS)",
        )?;
        check(
            auth::IdentityField::parse(&self.tls_client_identity).is_some(),
            "tls_client_identity",
            "subject or san",
        )?;
        if let Err(reason) = auth::parse_tokens(&self.tokens) {
            return Err(ServerError::Tokens(reason));
        }
        check(
            self.open_services.split(',').map(str::trim).filter(|s| !s.is_empty()).all(|s| OPEN_SERVICES.contains(&s)),
            "open_services",
            "health, reflection, both (comma-separated) or empty",
        )?;
        if let Err(reason) = access::parse_permissions(&self.permissions) {
            return Err(ServerError::Permissions(reason));
        }
        Ok(())
    }
}

/// Logs, at debug level and in the request's span, a request the server refused with a
/// status (a unary call's refusal travels in its response headers).
fn log_refusal(response: http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body> {
    // Every response passes here: read its headers only when the line would be written.
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return response;
    }
    if let Some(status) = Status::from_header_map(response.headers()) {
        if status.code() != tonic::Code::Ok {
            tracing::debug!(code = ?status.code(), error = status.message(), "refused");
        }
    }
    response
}

/// Serves the broker on `incoming` until `shutdown` resolves.
///
/// On shutdown, open Subscribe streams end with UNAVAILABLE (a status, not a reset), health
/// turns NOT_SERVING, every connection is told to go away (requests sent after that are
/// never read, and the client sees the connection close), and in-flight requests finish
/// before this returns. Connections still open `shutdown_grace_ms` later are dropped. The
/// last turn syncs what was written and saves the committed offsets. Production passes
/// a TCP listener and Ctrl-C; the simulator passes a turmoil listener and its own signal.
pub async fn run<I, IO, IE>(
    incoming: I,
    shutdown: impl Future<Output = ()> + Send + 'static,
    config: ServerConfig,
    storage: Box<dyn Storage>,
    clock: Arc<dyn Clock>,
) -> Result<(), ServerError>
where
    I: Stream<Item = Result<IO, IE>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    run_with(incoming, shutdown, config, storage, clock, Hooks::default()).await
}

/// What else a server may be given besides its settings: whom to tell what the broker
/// does, and where to record the commands it applies.
#[derive(Default)]
pub struct Hooks {
    /// Told the broker's notices and a broken invariant (see [`Observer`]).
    pub observer: Option<Arc<dyn Observer>>,
    /// Records every command the driver applies (`serve --record DIR`).
    pub record: Option<RecordTo>,
    /// Runs this broker as a node of a cluster.
    pub cluster: Option<ClusterRun>,
    /// Reads the settings again on SIGHUP, for the `tokens` and `permissions` to put in
    /// force (`serve` reads its file, environment and flags again).
    pub reload: Option<Reload>,
}

/// Reads the settings again: the server's, or why they cannot be read.
pub type Reload = Box<dyn Fn() -> Result<ServerConfig, String> + Send + Sync>;

/// Puts the `tokens` and `permissions` that `reload` reads in force on every SIGHUP, while
/// the server runs, logging the outcome; settings that cannot be read or parsed keep the
/// old ones.
fn reload_access_on_sighup(access: Arc<access::Access>, reload: Reload) {
    let access = Arc::downgrade(&access);
    tls::on_sighup("tokens and permissions will not be reloaded", move || {
        let Some(access) = access.upgrade() else { return false };
        match reload().and_then(|config| access.reload(&config)) {
            Ok((tokens, grants)) => {
                info!(tokens, grants, "SIGHUP: tokens and permissions reloaded; the next requests use them");
            }
            Err(error) => tracing::warn!(%error, "SIGHUP: tokens and permissions not reloaded; the old ones stay"),
        }
        true
    });
}

/// Who may do what, as `config` says: reloaded on SIGHUP by `reload`, its refusals
/// exported while `metrics` are on.
fn start_access(
    config: &ServerConfig,
    clock: Arc<dyn Clock>,
    metrics: bool,
    reload: Option<Reload>,
) -> Arc<access::Access> {
    let refusals = Arc::new(refusals::Refusals::new(clock));
    let access = Arc::new(access::Access::from_config(config, refusals.clone()));
    if metrics {
        tokio::spawn(export_refusals(Arc::downgrade(&refusals)));
    }
    if let Some(reload) = reload {
        reload_access_on_sighup(access.clone(), reload);
    }
    access
}

/// Keeps the refusal counters in the Prometheus output, refreshed every second, until the
/// server that counts them is gone.
async fn export_refusals(refusals: std::sync::Weak<refusals::Refusals>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One pass per second over a bounded table, while the server runs.
    loop {
        tick.tick().await;
        let Some(refusals) = refusals.upgrade() else { return };
        refusals.export();
    }
}

/// What a node of a cluster starts with. Its broker's storage is the state machine's: the
/// partition logs its last checkpoint synced are kept, every other file of it is replaced
/// as the node restores the checkpoint and applies its Raft log on.
pub struct ClusterRun {
    /// Its Raft settings: its id, every node's peer address, timing, seed.
    pub settings: NodeSettings,
    /// Where clients reach each node (the `brokers` setting), for leader hints and
    /// `GetCluster`.
    pub brokers: BTreeMap<u64, String>,
    /// The filesystem its Raft log is on.
    pub fs: Arc<dyn Fs>,
    /// The Raft log's directory.
    pub dir: std::path::PathBuf,
    /// Makes the channel to a peer.
    pub connect: Connector,
    /// Serves the Raft service on the peer port; the future runs until the process ends.
    /// It stops accepting when the second future resolves (the node stops) and closes its
    /// connections, so that peers connect again to whatever serves the port next.
    pub serve_peers: Box<dyn FnOnce(PeerService, BoxFuture<'static, ()>) -> BoxFuture<'static, ()> + Send>,
}

/// The Raft service a node's peer port serves.
pub type PeerService =
    crate::cluster::pb::raft_server::RaftServer<crate::cluster::RaftService<crate::cluster::BrokerSm>>;

/// Where and how a flight recording is written.
pub struct RecordTo {
    /// The filesystem the recording is written on.
    pub fs: Arc<dyn Fs>,
    /// The directory its segments go in: created if missing, and refused if it already
    /// holds a recording.
    pub dir: std::path::PathBuf,
    /// The recording's bound in bytes; the oldest segments go past it.
    pub max_bytes: u64,
    /// The effective configuration, as `mini-pubsub config print` writes it: a replay
    /// runs a broker with the same settings.
    pub settings_toml: String,
}

/// Starts the flight recorder on `broker` as it opened (snapshotted first if it holds
/// anything).
fn start_recording(to: RecordTo, broker: &Broker) -> Result<Recorder, ServerError> {
    let from_empty = broker.is_pristine();
    let recorder =
        Recorder::create(to.fs, &to.dir, to.max_bytes, to.settings_toml, broker).map_err(ServerError::Record)?;
    info!(dir = %to.dir.display(), max_bytes = to.max_bytes, from_empty, "recording every command");
    Ok(recorder)
}

/// The connections of `incoming` the server takes: admitted under the bounds
/// ([`conn::Admitting`]), over TLS when `config` names a certificate.
fn admit<I, IO, IE>(incoming: I, config: &ServerConfig) -> Result<tls::Connections<conn::Admitted<IO>>, ServerError>
where
    I: Stream<Item = Result<IO, IE>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let handshake = Duration::from_millis(config.handshake_timeout_ms);
    let admitting = conn::Admitting::new(Box::pin(incoming), config.connections_max, handshake);
    tls::secure(admitting, config).map_err(ServerError::Tls)
}

/// The PubSub and Admin services, each request authenticated first when the settings
/// configure credentials (`tokens`, `tls_client_ca`).
fn authenticated(
    pubsub: pubsub::PubSubService,
    admin: admin::AdminService,
    config: &ServerConfig,
    access: Arc<access::Access>,
) -> (
    InterceptedService<pb::pub_sub_server::PubSubServer<pubsub::PubSubService>, auth::Authenticate>,
    InterceptedService<pb::admin_server::AdminServer<admin::AdminService>, auth::Authenticate>,
) {
    let authenticate = auth::Authenticate::new(access);
    let pubsub = pb::pub_sub_server::PubSubServer::new(pubsub).max_decoding_message_size(config.request_bytes_max);
    let admin = pb::admin_server::AdminServer::new(admin).max_decoding_message_size(config.request_bytes_max);
    (InterceptedService::new(pubsub, authenticate.clone()), InterceptedService::new(admin, authenticate))
}

/// `service`, its requests authenticated unless `open_services` names it (`name`).
fn gated<S>(
    service: S,
    name: &str,
    config: &ServerConfig,
    access: &Arc<access::Access>,
) -> InterceptedService<S, auth::Authenticate> {
    let open = config.open_services.split(',').any(|s| s.trim() == name);
    InterceptedService::new(service, auth::Authenticate::open_if(access.clone(), open))
}

/// gRPC reflection, v1 and v1alpha, of the broker's services and health.
#[allow(clippy::type_complexity, reason = "the two services' own types")]
fn reflection(
    config: &ServerConfig,
    access: &Arc<access::Access>,
) -> Result<
    (
        InterceptedService<
            tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
            auth::Authenticate,
        >,
        InterceptedService<
            tonic_reflection::server::v1alpha::ServerReflectionServer<
                impl tonic_reflection::server::v1alpha::ServerReflection,
            >,
            auth::Authenticate,
        >,
    ),
    ServerError,
> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = gated(builder().build_v1()?, "reflection", config, access);
    let v1alpha = gated(builder().build_v1alpha()?, "reflection", config, access);
    Ok((v1, v1alpha))
}

/// [`run`], with [`Hooks`].
pub async fn run_with<I, IO, IE>(
    incoming: I,
    shutdown: impl Future<Output = ()> + Send + 'static,
    config: ServerConfig,
    storage: Box<dyn Storage>,
    clock: Arc<dyn Clock>,
    mut hooks: Hooks,
) -> Result<(), ServerError>
where
    I: Stream<Item = Result<IO, IE>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    config.validate()?;
    let incoming = admit(incoming, &config)?;
    let metrics_on = metrics::enabled();
    let storage: Box<dyn Storage> =
        if metrics_on { Box::new(metrics::TimedStorage::new(storage, clock.clone())) } else { storage };
    let access = start_access(&config, clock.clone(), metrics_on, hooks.reload.take());
    let (driver, cluster) = start_driver(&config, storage, clock.clone(), hooks, metrics_on).await?;
    let publish_latency = metrics_on.then(|| metrics::LatencyTimer::new(clock.clone(), metrics::PUBLISH_LATENCY));
    let (pubsub, stop_publish_streams) =
        pubsub::PubSubService::new(driver.clone(), config.clone(), publish_latency, access.clone());
    let admin = admin::AdminService { driver: driver.clone(), cluster: cluster.clone(), access: access.clone() };
    crate::wire::set_entry_limits(config.broker.publish_batch_messages_max, config.broker.attributes_max);
    let (pubsub, admin) = authenticated(pubsub, admin, &config, access.clone());

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<pb::pub_sub_server::PubSubServer<pubsub::PubSubService>>().await;
    health.set_serving::<pb::admin_server::AdminServer<admin::AdminService>>().await;
    if let Some(view) = &cluster {
        tokio::spawn(report_leadership(view.node.clone(), health.clone(), metrics_on));
    }

    let (reflection_v1, reflection_v1alpha) = reflection(&config, &access)?;
    let health_service = gated(health_service, "health", &config, &access);

    let last_call = driver.clone();
    let (stopping_tx, stopping) = tokio::sync::oneshot::channel::<()>();
    // A node whose Raft stopped on its own (its log failed) cannot serve again in this
    // process: the server shuts down and `run` fails, so a supervisor starts it again on its
    // data (as it does after a crash).
    let raft_stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let shutdown = until_raft_stops(shutdown, cluster.as_ref().map(|view| view.node.clone()), raft_stopped.clone());
    let signal = async move {
        shutdown.await;
        let _ = stopping_tx.send(());
        info!("shutting down: ending open streams");
        health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        health.set_not_serving::<pb::pub_sub_server::PubSubServer<pubsub::PubSubService>>().await;
        let status = Status::unavailable("the server is shutting down; reconnect to another broker or retry later");
        let _ = stop_publish_streams.send(true);
        driver.end_all_streams(status).await;
    };

    let serve = tonic::transport::Server::builder()
        // Every request runs in a span naming its method, so its log lines can be told apart
        // (`--log-format json` writes the span's fields into each line).
        .trace_fn(|request| tracing::info_span!("request", method = request.uri().path()))
        .layer(tower::util::MapResponseLayer::new(log_refusal))
        .http2_keepalive_interval(Some(Duration::from_millis(config.keepalive_interval_ms)))
        .http2_keepalive_timeout(Some(Duration::from_millis(config.keepalive_timeout_ms)))
        .initial_stream_window_size(crate::wire::HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(crate::wire::HTTP2_CONNECTION_WINDOW)
        .max_frame_size(crate::wire::HTTP2_MAX_FRAME)
        .add_service(pubsub)
        .add_service(admin)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, signal);
    let grace_over = async {
        if stopping.await.is_ok() {
            tokio::time::sleep(Duration::from_millis(config.shutdown_grace_ms)).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        biased;
        served = serve => served?,
        () = grace_over => tracing::warn!(
            grace_ms = config.shutdown_grace_ms,
            "connections still open when the shutdown grace period ended; dropping them"
        ),
    }
    if let Some(view) = &cluster {
        stop_node(view, Duration::from_millis(config.shutdown_grace_ms)).await;
    }
    // In-flight requests are done: sync what was written and save the offsets.
    last_call.stop().await;
    stages::write_summary();
    info!("stopped");
    if raft_stopped.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(ServerError::RaftStopped);
    }
    Ok(())
}

/// `shutdown`, or for a node of a cluster also its Raft stopping on its own (its log
/// failed), which sets `stopped`.
async fn until_raft_stops(
    shutdown: impl Future<Output = ()> + Send + 'static,
    node: Option<Arc<ClusterNode>>,
    stopped: Arc<std::sync::atomic::AtomicBool>,
) {
    let Some(node) = node else { return shutdown.await };
    tokio::select! {
        biased;
        () = shutdown => {}
        () = node.stopped() => {
            tracing::error!("this node's Raft stopped (its log failed); the server shuts down");
            stopped.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Stops a node's Raft, then its peer port and the port's connections, so that a server
/// started again in this process takes the port and peers reach the new node, not the
/// stopped one; waits for the connections at most `grace`.
async fn stop_node(view: &admin::ClusterView, grace: Duration) {
    view.node.shutdown().await;
    let peer_port = view.peer_port.lock().ok().and_then(|mut p| p.take());
    if let Some((stop, served)) = peer_port {
        let _ = stop.send(());
        if tokio::time::timeout(grace, served).await.is_err() {
            tracing::warn!("the peer port still had connections when the grace period ended");
        }
    }
}

/// Opens the broker and starts its driver, and in a cluster the node's Raft.
async fn start_driver(
    config: &ServerConfig,
    storage: Box<dyn Storage>,
    clock: Arc<dyn Clock>,
    hooks: Hooks,
    metrics_on: bool,
) -> Result<(DriverHandle, Option<admin::ClusterView>), ServerError> {
    let Hooks { observer, record, cluster, reload: _ } = hooks;
    // A node of a cluster does not read its storage's metadata: it restores the broker from
    // its checkpoint (the Raft snapshot) when its Raft starts, and applies the log on.
    let mut broker = match cluster {
        Some(_) => Broker::new(config.broker.clone(), storage).map_err(ServerError::Recovery)?,
        None => Broker::open(config.broker.clone(), storage).map_err(ServerError::Recovery)?,
    };
    if observer.is_some() {
        broker.observe();
    }
    let watcher = observer.clone();
    let recorder = record.map(|to| start_recording(to, &broker)).transpose()?;
    let checks = Checks {
        invariants: config.check_invariants || cfg!(debug_assertions),
        observer,
        recorder,
        metrics: metrics_on.then(metrics::BrokerMetrics::new),
    };
    let settings = DriverSettings {
        queue_max: config.command_queue_max,
        sync_delay_ms: config.sync_delay_ms,
        stream_stall_ms: config.stream_stall_timeout_ms,
        brokers: cluster.as_ref().map(|c| c.brokers.clone()),
    };
    let driver = Driver::spawn(broker, clock.clone(), settings, checks);
    let cluster = match cluster {
        Some(mut run) => {
            if config.broker.mutated(crate::core::Mutation::RaftLogUnsynced) {
                run.settings.appends_unsynced = true;
            }
            Some(start_node(run, &driver, clock.clone(), watcher).await?)
        }
        None => None,
    };
    Ok((driver, cluster))
}

/// Starts this node's Raft, its peer service, and tells the driver.
async fn start_node(
    run: ClusterRun,
    driver: &DriverHandle,
    clock: Arc<dyn Clock>,
    observer: Option<Arc<dyn Observer>>,
) -> Result<admin::ClusterView, ServerError> {
    let applier: Arc<dyn Applier> = Arc::new(driver.clone());
    let fs: Arc<dyn Fs> =
        if metrics::enabled() { Arc::new(metrics::raft::TimedFs::new(run.fs, clock)) } else { run.fs };
    let node =
        ClusterNode::start(&run.settings, fs, &run.dir, run.connect, applier).await.map_err(ServerError::Cluster)?;
    let node = Arc::new(node);
    let (stop_peers, peers_stop) = tokio::sync::oneshot::channel::<()>();
    let peers_stop: BoxFuture<'static, ()> = Box::pin(async move {
        let _ = peers_stop.await;
    });
    let peer_port = tokio::spawn((run.serve_peers)(node.service(), peers_stop));
    driver.attach(node.clone()).await;
    if let Some(observer) = observer {
        tokio::spawn(observe_cluster(node.clone(), observer));
    }
    info!(node = run.settings.id, peers = ?run.settings.peers, "cluster node started");
    let peer_port = Arc::new(std::sync::Mutex::new(Some((stop_peers, peer_port))));
    Ok(admin::ClusterView { node, peers: run.settings.peers, brokers: run.brokers, peer_port })
}

/// How often a node rechecks whether it serves: a leader that stops hearing from a quorum
/// changes nothing Raft reports, so it is looked at on this period too.
const LEADERSHIP_CHECK_MS: u64 = 200;

/// Tells `observer` each change of this node's role, term, leader or serving (see
/// [`Observer::cluster`]), looking on every change Raft reports and every
/// [`LEADERSHIP_CHECK_MS`].
async fn observe_cluster(node: Arc<ClusterNode>, observer: Arc<dyn Observer>) {
    let mut watcher = node.watcher();
    let mut told = None;
    loop {
        let state = node.state();
        let now = (state.role, state.term, state.leader, state.serving);
        if told != Some(now) {
            told = Some(now);
            observer.cluster(&state);
        }
        tokio::select! {
            biased;
            () = tokio::time::sleep(Duration::from_millis(LEADERSHIP_CHECK_MS)) => {}
            alive = watcher.changed() => if !alive { return },
        }
    }
}

/// Keeps the health of `pubsub.PubSub` and `pubsub.Admin` SERVING only while this node
/// leads and hears from a quorum, so a load balancer's health check finds the leader; with
/// `metrics`, keeps the Raft gauges current too.
async fn report_leadership(node: Arc<ClusterNode>, health: tonic_health::server::HealthReporter, metrics: bool) {
    let mut watcher = node.watcher();
    let mut serving = None;
    let mut term = None;
    loop {
        let state = node.state();
        if metrics {
            metrics::raft::export(&state, &mut term);
        }
        let now = state.serving;
        if serving != Some(now) {
            serving = Some(now);
            if now {
                health.set_serving::<pb::pub_sub_server::PubSubServer<pubsub::PubSubService>>().await;
                health.set_serving::<pb::admin_server::AdminServer<admin::AdminService>>().await;
            } else {
                health.set_not_serving::<pb::pub_sub_server::PubSubServer<pubsub::PubSubService>>().await;
                health.set_not_serving::<pb::admin_server::AdminServer<admin::AdminService>>().await;
            }
        }
        tokio::select! {
            biased;
            () = tokio::time::sleep(Duration::from_millis(LEADERSHIP_CHECK_MS)) => {}
            alive = watcher.changed() => if !alive { return },
        }
    }
}
