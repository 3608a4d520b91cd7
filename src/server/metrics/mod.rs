//! Prometheus metrics, served as text on `/metrics` once [`install`] is called, and off
//! (every update a no-op, no series kept) until then.
//!
//! The series go through the `metrics` facade to `metrics-exporter-prometheus`, which
//! renders them. Three sources feed them:
//!
//! - the core's cumulative [`SubscriptionCounts`](crate::core::SubscriptionCounts), with
//!   each subscription's backlog and outstanding leases, which the driver exports once a
//!   second (`export`), so a delivery or an ack costs the hot path one addition;
//! - the driver itself: acknowledged publishes by topic, the end-to-end latency of each
//!   delivery, and the open streams;
//! - the edges: the Publish handler times its requests, and a storage wrapper (`timed`)
//!   times every append and every fsync that has something to sync.
//!
//! All timing goes through the [`Clock`](crate::env::Clock). The simulator never installs
//! the recorder, and with none installed the driver keeps no metrics state at all, so a
//! simulated run is the same with or without this module.
//!
//! Series of deleted topics and subscriptions stop being refreshed and leave the output
//! [`IDLE_TIMEOUT`] later (counters and gauges). Histograms stay: the exporter cannot
//! delete one without losing its buckets. Ephemeral subscriptions (one per Subscribe on a
//! topic) share one series per topic, labelled [`EPHEMERAL_LABEL`], so short-lived streams
//! do not add a series each.

mod export;
pub mod raft;
mod timed;

pub use export::BrokerMetrics;
pub use timed::TimedStorage;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Histogram, Unit};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

use crate::env::Clock;

/// Messages published (acknowledged, duplicates excluded), by `topic`.
pub const PUBLISHED: &str = "mini_pubsub_published_messages_total";
/// Stored records found damaged (a CRC or framing failure), by `topic`.
pub const DAMAGED: &str = "mini_pubsub_damaged_records_total";
/// Messages leased to consumers, redeliveries included, by `topic` and `subscription`.
pub const DELIVERED: &str = "mini_pubsub_delivered_messages_total";
/// Deliveries with an attempt number above 1, by `topic` and `subscription`.
pub const REDELIVERED: &str = "mini_pubsub_redelivered_messages_total";
/// Acks applied, by `topic` and `subscription`.
pub const ACKED: &str = "mini_pubsub_acked_messages_total";
/// Nacks applied (deadline changes to 0 included), by `topic` and `subscription`.
pub const NACKED: &str = "mini_pubsub_nacked_messages_total";
/// Messages copied to the dead-letter topic, by `topic` and `subscription` (the source).
pub const DEAD_LETTERED: &str = "mini_pubsub_dead_lettered_messages_total";
/// Messages not yet acked, by `topic` and `subscription`.
pub const BACKLOG: &str = "mini_pubsub_backlog_messages";
/// Messages leased out and not yet acked, by `topic` and `subscription`.
pub const OUTSTANDING: &str = "mini_pubsub_outstanding_messages";
/// Open Subscribe streams.
pub const OPEN_STREAMS: &str = "mini_pubsub_open_streams";
/// Publish requests, from the handler receiving one to its reply (acknowledged ones).
pub const PUBLISH_LATENCY: &str = "mini_pubsub_publish_latency_seconds";
/// A delivery's wall-clock time minus its message's publish time, by `topic` and
/// `subscription`. Millisecond resolution: publish times are stored in milliseconds.
pub const END_TO_END_LATENCY: &str = "mini_pubsub_end_to_end_latency_seconds";
/// One partition's append of one request's records.
pub const STORAGE_APPEND: &str = "mini_pubsub_storage_append_seconds";
/// One partition's fsync, when it had records to make durable.
pub const STORAGE_FSYNC: &str = "mini_pubsub_storage_fsync_seconds";
/// A cluster node's Raft term.
pub const RAFT_TERM: &str = "mini_pubsub_raft_term";
/// The leader this node knows of (0: none).
pub const RAFT_LEADER: &str = "mini_pubsub_raft_leader";
/// 1 while this node leads and takes calls.
pub const RAFT_SERVING: &str = "mini_pubsub_raft_serving";
/// The last index the cluster committed, as this node knows.
pub const RAFT_COMMITTED: &str = "mini_pubsub_raft_committed_index";
/// The last index this node applied.
pub const RAFT_APPLIED: &str = "mini_pubsub_raft_applied_index";
/// Committed entries this node has not applied yet.
pub const RAFT_APPLY_LAG: &str = "mini_pubsub_raft_apply_lag_entries";
/// Terms this node saw begin (each is an election).
pub const RAFT_ELECTIONS: &str = "mini_pubsub_raft_elections_total";
/// Fsyncs of the Raft log.
pub const RAFT_LOG_FSYNC: &str = "mini_pubsub_raft_log_fsync_seconds";
/// A leader's proposals, from proposing to applying (the replication round trip).
pub const RAFT_PROPOSE: &str = "mini_pubsub_raft_propose_seconds";

/// The `subscription` label of ephemeral subscriptions, all of a topic's in one series.
/// Names starting with `__` are the broker's, so no subscription of a user has it.
pub const EPHEMERAL_LABEL: &str = "__ephemeral";

/// How long a counter or gauge that is no longer refreshed stays in the output. The driver
/// refreshes every live series each second, so only deleted topics and subscriptions age
/// out.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often histogram samples are folded into their buckets between scrapes, so that they
/// do not pile up in memory.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Request and end-to-end latency buckets, in seconds: 100 µs to 1 h.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0,
];

/// Storage latency buckets, in seconds: 10 µs to 10 s.
const STORAGE_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

/// Why metrics could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The metrics address cannot be bound.
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding it (or reading the bound address) failed.
        source: std::io::Error,
    },
    /// The Prometheus recorder cannot be built, or another recorder is already installed.
    #[error("cannot install the metrics recorder: {0}")]
    Recorder(#[from] BuildError),
    /// The certificate cannot serve HTTPS.
    #[error("cannot serve the metrics over TLS: {0}")]
    Tls(String),
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder for the whole process and serves its text format on
/// `http://<addr>/metrics`; returns the address bound (port 0 picks a free one). Call it
/// before [`run`](super::run), which only keeps metrics when a recorder is installed.
/// Needs a tokio runtime; fails if the address cannot be bound or a recorder is already
/// installed.
pub async fn install(addr: SocketAddr) -> Result<SocketAddr, MetricsError> {
    install_with(addr, None).await
}

/// [`install`], serving `https://<addr>/metrics` with `tls` (the gRPC port's certificate,
/// reloaded on SIGHUP by its owner) when given.
pub async fn install_with(
    addr: SocketAddr,
    tls: Option<Arc<super::tls::Certificates>>,
) -> Result<SocketAddr, MetricsError> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| MetricsError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(|source| MetricsError::Bind { addr, source })?;
    let acceptor = match tls {
        Some(certificates) => Some(super::tls::http1_acceptor(certificates).map_err(MetricsError::Tls)?),
        None => None,
    };
    let handle = builder()?.install_recorder()?;
    describe();
    let _ = HANDLE.set(handle.clone());
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    match acceptor {
        Some(acceptor) => {
            tokio::spawn(serve(super::tls::HttpsListener::new(listener, acceptor), handle));
            tracing::info!("metrics on https://{local}/metrics");
        }
        None => {
            tokio::spawn(serve(listener, handle));
            tracing::info!("metrics on http://{local}/metrics");
        }
    }
    Ok(local)
}

/// Whether [`install`] has run: the server keeps metrics only then.
pub fn enabled() -> bool {
    HANDLE.get().is_some()
}

/// The exporter's settings: buckets for every histogram, and idle removal of the counters
/// and gauges that nothing refreshes any more.
fn builder() -> Result<PrometheusBuilder, BuildError> {
    PrometheusBuilder::new()
        .idle_timeout(MetricKindMask::COUNTER | MetricKindMask::GAUGE, Some(IDLE_TIMEOUT))
        .set_buckets_for_metric(Matcher::Full(PUBLISH_LATENCY.to_string()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(END_TO_END_LATENCY.to_string()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(STORAGE_APPEND.to_string()), STORAGE_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(STORAGE_FSYNC.to_string()), STORAGE_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(RAFT_LOG_FSYNC.to_string()), STORAGE_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(RAFT_PROPOSE.to_string()), LATENCY_BUCKETS)
}

/// The HELP lines.
fn describe() {
    describe_counter!(PUBLISHED, Unit::Count, "Messages published (acknowledged; duplicates excluded)");
    describe_counter!(DAMAGED, Unit::Count, "Stored records found damaged (CRC or framing); they cannot be delivered");
    describe_counter!(DELIVERED, Unit::Count, "Messages delivered to consumers, redeliveries included");
    describe_counter!(REDELIVERED, Unit::Count, "Deliveries with a delivery attempt above 1");
    describe_counter!(ACKED, Unit::Count, "Acks applied");
    describe_counter!(NACKED, Unit::Count, "Nacks applied (ack deadline changes to 0 included)");
    describe_counter!(DEAD_LETTERED, Unit::Count, "Messages copied to the subscription's dead-letter topic");
    describe_gauge!(BACKLOG, Unit::Count, "Messages of the subscription not yet acked");
    describe_gauge!(OUTSTANDING, Unit::Count, "Messages leased out and not yet acked");
    describe_gauge!(OPEN_STREAMS, Unit::Count, "Open Subscribe streams");
    describe_histogram!(PUBLISH_LATENCY, Unit::Seconds, "Acknowledged publish requests, from the handler to the reply");
    describe_histogram!(END_TO_END_LATENCY, Unit::Seconds, "Delivery time minus publish time (ms resolution)");
    describe_histogram!(STORAGE_APPEND, Unit::Seconds, "Appends to one partition's log");
    describe_histogram!(STORAGE_FSYNC, Unit::Seconds, "Fsyncs of one partition's log that had records to sync");
    describe_gauge!(RAFT_TERM, Unit::Count, "This cluster node's Raft term");
    describe_gauge!(RAFT_LEADER, Unit::Count, "The node id of the leader this node knows of (0: none)");
    describe_gauge!(RAFT_SERVING, Unit::Count, "1 while this node leads and takes calls, else 0");
    describe_gauge!(RAFT_COMMITTED, Unit::Count, "The last Raft log index the cluster committed, as this node knows");
    describe_gauge!(RAFT_APPLIED, Unit::Count, "The last Raft log index this node applied");
    describe_gauge!(RAFT_APPLY_LAG, Unit::Count, "Committed Raft entries this node has not applied yet");
    describe_counter!(RAFT_ELECTIONS, Unit::Count, "Raft terms this node saw begin (each is an election)");
    describe_histogram!(RAFT_LOG_FSYNC, Unit::Seconds, "Fsyncs of the Raft log (votes, appends, truncations)");
    describe_histogram!(RAFT_PROPOSE, Unit::Seconds, "A leader's proposals, from proposing to applying them");
}

/// Answers `GET /metrics` with the rendered series, anything else with 404. Rendering runs
/// on a blocking thread: with 10 000 subscriptions it takes about 0.2 s and 12 MiB of text,
/// which would otherwise hold up one of the runtime's workers.
async fn serve<L>(listener: L, handle: PrometheusHandle)
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    use axum::http::header::CONTENT_TYPE;
    use axum::http::StatusCode;
    let render = move || {
        let handle = handle.clone();
        async move {
            match tokio::task::spawn_blocking(move || handle.render()).await {
                Ok(text) => (StatusCode::OK, [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text),
                Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, [(CONTENT_TYPE, "text/plain")], error.to_string()),
            }
        }
    };
    let app = axum::Router::new().route("/metrics", axum::routing::get(render));
    if let Err(error) = axum::serve(listener, app).await {
        tracing::error!(%error, "the metrics listener stopped; /metrics is no longer served");
    }
}

/// Times requests into a histogram by the server's clock.
#[derive(Clone)]
pub struct LatencyTimer {
    clock: Arc<dyn Clock>,
    histogram: Histogram,
}

impl LatencyTimer {
    /// A timer recording into the unlabelled histogram `name`.
    pub fn new(clock: Arc<dyn Clock>, name: &'static str) -> Self {
        Self { clock, histogram: metrics::histogram!(name) }
    }

    /// The time a request started, for [`LatencyTimer::record`].
    pub fn start(&self) -> u64 {
        self.clock.now_us()
    }

    /// Records the time since `start`.
    pub fn record(&self, start_us: u64) {
        self.histogram.record(seconds_from_us(self.clock.now_us().saturating_sub(start_us)));
    }
}

fn seconds_from_us(us: u64) -> f64 {
    us as f64 / 1e6
}

#[cfg(test)]
mod tests;
