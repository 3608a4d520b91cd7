//! The table of settings: one entry per key, with its section, type and documentation. The
//! file parser, the environment, the command-line flags and `config print` all read it.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::{Config, FsyncMode, LogFormat, Peers, StorageKind};

/// A section of the configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// `[server]`: addresses, the server shell's queues, keepalives and stop grace, the recorder.
    Server,
    /// `[log]`: the log lines' format and filter.
    Log,
    /// `[storage]`: where messages are kept, and the file log's settings.
    Storage,
    /// `[broker]`: the core's limits and the defaults of topics and subscriptions.
    Broker,
    /// `[cluster]`: this node's id and its peers, for a replicated broker.
    Cluster,
}

impl Section {
    /// Every section, in the order the file and `config print` show them.
    pub const ALL: [Section; 5] = [Section::Server, Section::Log, Section::Storage, Section::Broker, Section::Cluster];

    /// The section's table name in the file, without brackets (`server`, `log`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Section::Server => "server",
            Section::Log => "log",
            Section::Storage => "storage",
            Section::Broker => "broker",
            Section::Cluster => "cluster",
        }
    }
}

/// One configuration key.
pub struct Setting {
    /// The key in the file; `MINI_PUBSUB_` + capitals in the environment; `--` + dashes as a flag.
    pub name: &'static str,
    /// The file section the key belongs in (a key elsewhere is refused).
    pub section: Section,
    /// What the value looks like, for `--help`.
    pub hint: &'static str,
    /// One sentence on what the key does, shown in the example file and `--help`.
    pub doc: &'static str,
    /// Parses a value given as text (env, flag, or a file value) into the configuration.
    pub set_text: fn(&mut Config, &str) -> Result<(), String>,
    /// The current value, as TOML.
    pub show: fn(&Config) -> String,
}

impl Setting {
    /// The environment variable that sets this key.
    pub fn env_var(&self) -> String {
        format!("{}{}", super::ENV_PREFIX, self.name.to_ascii_uppercase())
    }

    /// The command-line flag that sets this key, without its dashes.
    pub fn flag(&self) -> String {
        self.name.replace('_', "-")
    }
}

/// A type a setting can have: parsed from text, shown as TOML.
trait Value: Sized {
    const HINT: &'static str;
    fn parse(text: &str) -> Result<Self, String>;
    fn show(&self) -> String;
}

fn parse_integer<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, String> {
    text.replace('_', "").parse().map_err(|_| format!("expected {what}, got `{text}`"))
}

macro_rules! integer_value {
    ($($ty:ty => $what:literal),*) => {$(
        impl Value for $ty {
            const HINT: &'static str = "N";
            fn parse(text: &str) -> Result<Self, String> {
                parse_integer(text, $what)
            }
            fn show(&self) -> String {
                self.to_string()
            }
        }
    )*};
}

integer_value!(u64 => "an integer from 0 to 18446744073709551615", u32 => "an integer from 0 to 4294967295",
    usize => "a non-negative integer");

impl Value for Option<u64> {
    const HINT: &'static str = "N";
    fn parse(text: &str) -> Result<Self, String> {
        Ok(Some(parse_integer::<u64>(text, "an integer from 0 to 18446744073709551615")?).filter(|&n| n > 0))
    }
    fn show(&self) -> String {
        self.unwrap_or(0).to_string()
    }
}

impl Value for bool {
    const HINT: &'static str = "true|false";
    fn parse(text: &str) -> Result<Self, String> {
        match text {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(format!("expected true or false, got `{text}`")),
        }
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

fn quoted(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

impl Value for String {
    const HINT: &'static str = "TEXT";
    fn parse(text: &str) -> Result<Self, String> {
        Ok(text.to_string())
    }
    fn show(&self) -> String {
        quoted(self)
    }
}

impl Value for PathBuf {
    const HINT: &'static str = "DIR";
    fn parse(text: &str) -> Result<Self, String> {
        Ok(PathBuf::from(text))
    }
    fn show(&self) -> String {
        quoted(&self.to_string_lossy())
    }
}

impl Value for Option<PathBuf> {
    const HINT: &'static str = "DIR";
    fn parse(text: &str) -> Result<Self, String> {
        Ok((!text.is_empty()).then(|| PathBuf::from(text)))
    }
    fn show(&self) -> String {
        quoted(&self.as_deref().map(|p| p.to_string_lossy()).unwrap_or_default())
    }
}

impl Value for SocketAddr {
    const HINT: &'static str = "ADDR";
    fn parse(text: &str) -> Result<Self, String> {
        text.parse().map_err(|_| format!("expected an address such as 127.0.0.1:50051, got `{text}`"))
    }
    fn show(&self) -> String {
        quoted(&self.to_string())
    }
}

impl Value for Option<SocketAddr> {
    const HINT: &'static str = "ADDR";
    fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Ok(None);
        }
        SocketAddr::parse(text).map(Some)
    }
    fn show(&self) -> String {
        quoted(&self.map(|a| a.to_string()).unwrap_or_default())
    }
}

impl Value for Peers {
    const HINT: &'static str = "ID=HOST:PORT,...";
    fn parse(text: &str) -> Result<Self, String> {
        text.parse()
    }
    fn show(&self) -> String {
        quoted(&self.to_string())
    }
}

macro_rules! choice_value {
    ($ty:ty, $hint:literal, $($text:literal => $variant:expr),*) => {
        impl Value for $ty {
            const HINT: &'static str = $hint;
            fn parse(text: &str) -> Result<Self, String> {
                match text {
                    $($text => Ok($variant),)*
                    _ => Err(format!("expected one of {}, got `{text}`", $hint.replace('|', ", "))),
                }
            }
            fn show(&self) -> String {
                let text = match self { $(v if *v == $variant => $text,)* _ => unreachable!() };
                quoted(text)
            }
        }
    };
}

choice_value!(LogFormat, "pretty|json", "pretty" => LogFormat::Pretty, "json" => LogFormat::Json);
choice_value!(StorageKind, "file|memory", "file" => StorageKind::File, "memory" => StorageKind::Memory);
choice_value!(FsyncMode, "always|interval|never",
    "always" => FsyncMode::Always, "interval" => FsyncMode::Interval, "never" => FsyncMode::Never);

macro_rules! settings {
    ($($section:ident $name:ident: $ty:ty = $($field:ident).+, $doc:literal;)*) => {
        /// Every setting, in the order `config print` shows them.
        pub static SETTINGS: &[Setting] = &[$(Setting {
            name: stringify!($name),
            section: Section::$section,
            hint: <$ty as Value>::HINT,
            doc: $doc,
            set_text: |config, text| {
                config.$($field).+ = <$ty as Value>::parse(text)?;
                Ok(())
            },
            show: |config| Value::show(&config.$($field).+),
        },)*];
    };
}

settings! {
    Server listen: SocketAddr = listen,
        "The gRPC address to listen on (port 0 picks a free one).";
    Server metrics_listen: Option<SocketAddr> = metrics_listen,
        "Serve Prometheus metrics at http://ADDR/metrics; empty (the default) serves none.";
    Server metrics_tls: bool = metrics_tls,
        "Serve the metrics over HTTPS (https://ADDR/metrics) with tls_cert and tls_key, read again on SIGHUP.";
    Server command_queue_max: usize = server.command_queue_max,
        "Requests waiting for the broker's driver; when full, handlers wait (backpressure).";
    Server request_bytes_max: usize = server.request_bytes_max,
        "Largest request decoded, in bytes (a publish batch); larger is OUT_OF_RANGE.";
    Server stream_queue_max: usize = server.stream_queue_max,
        "Responses queued on one Subscribe stream; a client that stops reading is ended with RESOURCE_EXHAUSTED.";
    Server stream_stall_timeout_ms: u64 = server.stream_stall_timeout_ms,
        "How long a Subscribe stream's client may read nothing before the stream is ended and its leases go to others.";
    Server keepalive_interval_ms: u64 = server.keepalive_interval_ms,
        "HTTP/2 keepalive pings on idle connections, so a cut stream is detected.";
    Server keepalive_timeout_ms: u64 = server.keepalive_timeout_ms,
        "How long a keepalive ping may go unanswered before the connection is dropped.";
    Server connections_max: usize = server.connections_max,
        "Connections open at once; one more is closed at once (its client sees UNAVAILABLE).";
    Server handshake_timeout_ms: u64 = server.handshake_timeout_ms,
        "How long a new connection has to send its HTTP/2 preface before it is closed.";
    Server shutdown_grace_ms: u64 = server.shutdown_grace_ms,
        "How long a graceful stop waits for connections to close before dropping them.";
    Server tls_cert: Option<PathBuf> = server.tls_cert,
        "Serve the gRPC port over TLS (1.2 and 1.3) with this PEM certificate chain (and tls_key); read again on SIGHUP. Empty (the default): plaintext.";
    Server tls_key: Option<PathBuf> = server.tls_key,
        "The PEM private key of tls_cert.";
    Server tls_client_ca: Option<PathBuf> = server.tls_client_ca,
        "Mutual TLS: a client certificate signed by this CA (PEM) names the client's principal; needs tls_cert. Empty (the default): no client certificates.";
    Server open_services: String = server.open_services,
        "The services that answer without a credential when tokens or tls_client_ca are set, comma-separated: health, reflection, both (the default) or none (empty).";
    Server tls_client_identity: String = server.tls_client_identity,
        "Which name of a client certificate is its principal: subject (its common name) or san (its first DNS or URI alternative name).";
    Server tokens: String = server.tokens,
        "Bearer tokens, as PRINCIPAL=SHA256HEX,... (the SHA-256 of each token, never the token). With tokens or tls_client_ca set, PubSub and Admin calls without a known credential are refused UNAUTHENTICATED.";
    Server permissions: String = server.permissions,
        "Grants, as PERMISSION:PATTERN:PRINCIPAL,... (publish, subscribe or admin; a name or a prefix ending in *; the principal anonymous is a client without a credential). With permissions, tokens or tls_client_ca set, a call no grant covers is refused PERMISSION_DENIED.";
    Server record: Option<PathBuf> = record,
        "Record every command the broker applies into this directory (a flight recording, replayed by mini-pubsub-sim replay DIR); empty (the default) records nothing.";
    Server record_max_bytes: u64 = record_max_bytes,
        "The flight recording's bound in bytes; past it its oldest segments are removed (at least 8388608).";
    Server worker_threads: usize = worker_threads,
        "Threads that serve gRPC and run the broker's driver; 0 (the default) is one per core. On a machine whose cores the clients share, 1 saves waking a second thread for each delivery (perf log 14).";
    Log log_format: LogFormat = log_format,
        "How log lines are written to standard error: pretty or json (one object per line).";
    Log log_filter: String = log_filter,
        "Which log lines are written, in RUST_LOG syntax (RUST_LOG sets it too).";
    Storage storage: StorageKind = storage.kind,
        "Where messages are kept: file (a segmented log in data_dir) or memory (lost when the process ends).";
    Storage data_dir: PathBuf = storage.data_dir,
        "The file log's directory.";
    Storage fsync: FsyncMode = storage.fsync,
        "When a publish is acknowledged: always (after an fsync, group commit), interval, or never (after the write).";
    Storage fsync_interval_ms: u64 = storage.fsync_interval_ms,
        "Milliseconds between fsyncs under fsync = interval.";
    Storage segment_bytes: u64 = storage.segment_bytes,
        "Size at which a segment file rolls, in bytes.";
    Storage segment_ms: u64 = storage.segment_ms,
        "Age of its first record at which a segment file rolls, in milliseconds.";
    Storage tail_cache_bytes: usize = storage.tail_cache_bytes,
        "The newest bytes of each partition kept in memory for readers.";
    Storage truncate_corrupt: bool = storage.truncate_corrupt,
        "On damage in an older segment, cut the log there instead of refusing to start.";
    Broker auto_create_topics: bool = server.broker.auto_create_topics,
        "Create a topic on its first publish; when false such a publish is NOT_FOUND.";
    Broker default_partitions: u32 = server.broker.default_partitions,
        "Partitions of a topic created without a count.";
    Broker partitions_max: u32 = server.broker.partitions_max,
        "Most partitions a topic may have.";
    Broker topics_max: usize = server.broker.topics_max,
        "Most topics; another is RESOURCE_EXHAUSTED.";
    Broker subscriptions_max: usize = server.broker.subscriptions_max,
        "Most subscriptions, ephemeral ones included.";
    Broker streams_max: usize = server.broker.streams_max,
        "Most open Subscribe streams.";
    Broker max_message_bytes: usize = server.broker.max_message_bytes,
        "Largest message (value + key + attributes), in bytes.";
    Broker attributes_max: usize = server.broker.attributes_max,
        "Most attributes on one message.";
    Broker publish_batch_messages_max: usize = server.broker.publish_batch_messages_max,
        "Most messages in one publish request.";
    Broker ack_deadline_ms: u64 = server.broker.ack_deadline_ms,
        "Lease length of subscriptions created without one.";
    Broker ack_deadline_max_ms: u64 = server.broker.ack_deadline_max_ms,
        "Longest lease a subscription or a ModifyAckDeadline may ask for.";
    Broker retry_minimum_backoff_ms: u64 = server.broker.retry_minimum_backoff_ms,
        "Backoff after the first failed delivery, for a retry policy that leaves it unset.";
    Broker retry_maximum_backoff_ms: u64 = server.broker.retry_maximum_backoff_ms,
        "Longest backoff, for a retry policy that leaves it unset.";
    Broker nack_delay_max_ms: u64 = server.broker.nack_delay_max_ms,
        "Longest backoff or nack delay anyone may ask for.";
    Broker nack_reason_bytes_max: usize = server.broker.nack_reason_bytes_max,
        "Longest nack reason, in bytes.";
    Broker max_delivery_attempts: u32 = server.broker.max_delivery_attempts,
        "Deliveries before dead-lettering, for a dead-letter policy that leaves it unset.";
    Broker max_delivery_attempts_max: u32 = server.broker.max_delivery_attempts_max,
        "Most deliveries a dead-letter policy may allow.";
    Broker redrive_rewind_offsets_max: u64 = server.broker.redrive_rewind_offsets_max,
        "How far behind its committed offset a redrive may put a message back, in offsets.";
    Broker ordered_parked_messages_max: usize = server.broker.ordered_parked_messages_max,
        "Messages a partition of an ordered subscription may hold back behind unfinished keys.";
    Broker max_outstanding_messages: u32 = server.broker.max_outstanding_messages,
        "A stream's max_outstanding_messages when it asks for 0.";
    Broker max_outstanding_bytes: u64 = server.broker.max_outstanding_bytes,
        "A stream's max_outstanding_bytes when it asks for 0.";
    Broker pull_messages_max: u32 = server.broker.pull_messages_max,
        "Most messages one Pull may return (and the cap on a stream's outstanding messages).";
    Broker response_bytes_max: usize = server.broker.response_bytes_max,
        "Most bytes in one Pull or Subscribe response; larger deliveries are split.";
    Broker partition_retention_bytes: u64 = server.broker.partition_retention_bytes,
        "Bytes each partition keeps; past it the oldest messages are dropped.";
    Broker partition_retention_ms: Option<u64> = server.broker.partition_retention_ms,
        "How long a message is kept, by publish time; 0 keeps it until size retention.";
    Broker dedupe_window_ms: u64 = server.broker.dedupe_window_ms,
        "How long an idempotency key is remembered, for topics without a window of their own.";
    Broker dedupe_keys_max: usize = server.broker.dedupe_keys_max,
        "Most dedupe entries a topic holds at once: one per idempotency key, but keys {prefix}-{n} published in order count once per batch per partition; more is RESOURCE_EXHAUSTED.";
    Broker dedupe_keys_broker_max: usize = server.broker.dedupe_keys_broker_max,
        "Most dedupe entries all topics hold together; a publish whose keys would pass it is RESOURCE_EXHAUSTED.";
    Broker idempotency_key_bytes_max: usize = server.broker.idempotency_key_bytes_max,
        "Longest idempotency key, in bytes.";
    Broker session_timeout_ms: u64 = server.broker.session_timeout_ms,
        "How long a member of an exclusive subscription may send nothing before it is dropped.";
    Broker session_timeout_max_ms: u64 = server.broker.session_timeout_max_ms,
        "Longest session timeout a member may ask for.";
    Cluster node_id: u64 = cluster.node_id,
        "This node's id in peers; 0 (the default) runs a single broker with no replication.";
    Cluster peers: Peers = cluster.peers,
        "Every node of the cluster, this one included, as ID=HOST:PORT of its peer port, comma-separated; empty (the default) is no cluster.";
    Cluster peer_listen: Option<SocketAddr> = cluster.peer_listen,
        "The address this node takes Raft traffic on; empty (the default) is its own address in peers.";
    Cluster brokers: Peers = cluster.brokers,
        "Where clients reach each node's gRPC port, as ID=HOST:PORT, comma-separated: a node that does not lead names the leader's in its refusals and GetCluster; empty (the default) names the leader's id only.";
    Cluster snapshot_entries: u64 = cluster.snapshot_entries,
        "Raft entries applied between two snapshots of the broker's state, at the fewest (a large state waits until about its size was written again); as many entries, up to 1000, stay in the log behind a snapshot, and a follower further behind is sent the snapshot. 0 takes none: the Raft log is never purged.";
    Cluster peer_tls_cert: Option<PathBuf> = cluster.peer_tls_cert,
        "Mutual TLS between nodes: this node's PEM certificate chain, presented on its peer port and to the peers it calls (with peer_tls_key and peer_tls_ca); read again on SIGHUP for new connections. Empty (the default): plaintext Raft traffic.";
    Cluster peer_tls_key: Option<PathBuf> = cluster.peer_tls_key,
        "The PEM private key of peer_tls_cert.";
    Cluster peer_tls_ca: Option<PathBuf> = cluster.peer_tls_ca,
        "The cluster's CA (PEM): a node talks Raft only with peers whose certificate it signed, on both ends of a connection.";
}
