//! The broker process's configuration: every setting, where it can be given, and which
//! source wins.
//!
//! Each setting has one name, used in all three places:
//!
//! - the TOML file given by `--config FILE` (or `MINI_PUBSUB_CONFIG`), as `name = value`
//!   under its section (`[server]`, `[log]`, `[storage]`, `[broker]`, `[cluster]`);
//! - the environment, as `MINI_PUBSUB_` and the name in capitals
//!   (`MINI_PUBSUB_ACK_DEADLINE_MS=10000`);
//! - the command line, as `--` and the name with dashes (`--ack-deadline-ms 10000`).
//!
//! A flag beats the environment, the environment beats the file, the file beats the default.
//! `RUST_LOG` is the environment's `log_filter` when `MINI_PUBSUB_LOG_FILTER` is not set.
//! Unknown keys in the file are refused, so a typo cannot silently fall back to a default.
//!
//! [`Config::validate`] refuses settings that cannot work with a message that names the key
//! and the allowed range; [`Loaded::describe`] prints the effective settings as TOML, each
//! with the source it came from (`mini-pubsub config print`).

mod settings;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use settings::{Section, Setting, SETTINGS};

use crate::core::BrokerError;
use crate::server::{ServerConfig, ServerError};
use crate::storage::{FileStorageConfig, FsyncPolicy};

/// Prefix of the environment variables that set configuration keys.
pub const ENV_PREFIX: &str = "MINI_PUBSUB_";
/// The environment variable that names the configuration file when `--config` is not given.
pub const CONFIG_FILE_ENV: &str = "MINI_PUBSUB_CONFIG";
/// The largest configuration file read, in bytes.
const CONFIG_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// The most `worker_threads`.
const WORKER_THREADS_MAX: usize = 1024;

/// Settings whose value a refusal never shows.
const SECRET_SETTINGS: [&str; 1] = ["tokens"];

/// Everything the `serve` command needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The gRPC address (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Where Prometheus scrapes `/metrics`; `None` (the default) serves no metrics.
    pub metrics_listen: Option<SocketAddr>,
    /// Serve `/metrics` over HTTPS with the gRPC port's certificate (`tls_cert`, `tls_key`).
    pub metrics_tls: bool,
    /// Where the flight recorder writes (`serve --record DIR`); `None` records nothing.
    pub record: Option<PathBuf>,
    /// The flight recording's bound in bytes.
    pub record_max_bytes: u64,
    /// Threads of the runtime that serves gRPC and runs the driver; 0: one per core.
    pub worker_threads: usize,
    /// How log lines are written to standard error: pretty (the default) or JSON lines.
    pub log_format: LogFormat,
    /// A `tracing` filter (`RUST_LOG` syntax): `info`, `mini_pubsub=debug,tower=warn`, ...
    pub log_filter: String,
    /// Where messages are kept, and the file log's settings.
    pub storage: StorageSettings,
    /// The server shell's settings, with the core's in `server.broker`.
    pub server: ServerConfig,
    /// This node's place in a cluster; without peers, a single broker.
    pub cluster: ClusterSettings,
}

/// A replicated broker's static membership: this node and every node, by id and peer
/// address. No peers: a single broker, exactly as without this section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// This node's id among `peers` (`node_id` key); 0 with no peers.
    pub node_id: u64,
    /// Every node, this one included (`peers` key).
    pub peers: Peers,
    /// Where this node takes Raft traffic (`peer_listen` key); `None`: its own peer address.
    pub peer_listen: Option<SocketAddr>,
    /// Where clients reach each node (`brokers` key), for leader hints; may be empty.
    pub brokers: Peers,
    /// Raft entries between snapshots of the broker's state, at the fewest
    /// (`snapshot_entries` key); 0 takes none, and the Raft log is never purged.
    pub snapshot_entries: u64,
    /// Mutual TLS between nodes: this node's PEM certificate chain (`peer_tls_cert` key),
    /// presented on its peer port and to the peers it calls; `None`: plaintext.
    pub peer_tls_cert: Option<PathBuf>,
    /// The PEM private key of `peer_tls_cert` (`peer_tls_key` key).
    pub peer_tls_key: Option<PathBuf>,
    /// The cluster's CA (PEM) that signs every node's certificate (`peer_tls_ca` key).
    pub peer_tls_ca: Option<PathBuf>,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            node_id: 0,
            peers: Peers::default(),
            peer_listen: None,
            brokers: Peers::default(),
            snapshot_entries: crate::cluster::SNAPSHOT_ENTRIES_DEFAULT,
            peer_tls_cert: None,
            peer_tls_key: None,
            peer_tls_ca: None,
        }
    }
}

/// The nodes of a cluster, as `ID=HOST:PORT,...` (ids from 1, in the order given).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peers(pub Vec<Peer>);

/// One node of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its node id (1 or more; never reused for another node).
    pub id: u64,
    /// Where the other nodes reach its peer port (`HOST:PORT`).
    pub addr: String,
}

/// Nodes a cluster may have at most (Raft's quorum writes cost more with every voter).
pub const CLUSTER_NODES_MAX: usize = 7;

impl FromStr for Peers {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut peers = Vec::new();
        for item in text.split(',').map(str::trim).filter(|item| !item.is_empty()) {
            let shape = || format!("expected ID=HOST:PORT (such as 1=127.0.0.1:7001), got `{item}`");
            let (id, addr) = item.split_once('=').ok_or_else(shape)?;
            let id: u64 = id.trim().parse().map_err(|_| shape())?;
            let addr = addr.trim();
            let (host, port) = addr.rsplit_once(':').ok_or_else(shape)?;
            if host.is_empty() || host.contains(char::is_whitespace) || port.parse::<u16>().is_err() {
                return Err(shape());
            }
            peers.push(Peer { id, addr: addr.to_string() });
        }
        Ok(Peers(peers))
    }
}

impl fmt::Display for Peers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = self.0.iter().map(|p| format!("{}={}", p.id, p.addr)).collect();
        f.write_str(&items.join(","))
    }
}

impl ClusterSettings {
    /// Whether this node is part of a cluster (it has peers).
    pub fn enabled(&self) -> bool {
        !self.peers.0.is_empty()
    }

    /// Refuses a membership that cannot work, naming the key: a node id missing from the
    /// peers, an id of 0, duplicate ids or addresses, too many nodes, or a peer port that is
    /// also the gRPC port.
    fn validate(&self, listen: SocketAddr) -> Result<(), ConfigError> {
        let invalid = |key: &str, allowed: String| ConfigError::Invalid { key: key.to_string(), allowed };
        let peers = &self.peers.0;
        let tls = [
            ("peer_tls_cert", &self.peer_tls_cert),
            ("peer_tls_key", &self.peer_tls_key),
            ("peer_tls_ca", &self.peer_tls_ca),
        ];
        let tls_set = tls.iter().filter(|(_, path)| path.is_some()).count();
        if tls_set != 0 && tls_set != tls.len() {
            let (missing, _) = tls.iter().find(|(_, path)| path.is_none()).expect("one is unset");
            return Err(invalid(
                missing,
                "set with the other two of peer_tls_cert, peer_tls_key and peer_tls_ca (mutual TLS between nodes)"
                    .into(),
            ));
        }
        if peers.is_empty() {
            if self.node_id != 0 || self.peer_listen.is_some() || !self.brokers.0.is_empty() || tls_set != 0 {
                let key = if self.node_id != 0 {
                    "node_id"
                } else if self.peer_listen.is_some() {
                    "peer_listen"
                } else if tls_set != 0 {
                    "peer_tls_cert"
                } else {
                    "brokers"
                };
                return Err(invalid(
                    key,
                    "set only with peers (every node of the cluster, as ID=HOST:PORT,...)".into(),
                ));
            }
            return Ok(());
        }
        if peers.len() > CLUSTER_NODES_MAX {
            return Err(invalid("peers", format!("1 to {CLUSTER_NODES_MAX} nodes; {} are given", peers.len())));
        }
        let ids: Vec<String> = peers.iter().map(|p| p.id.to_string()).collect();
        if let Some(p) = peers.iter().find(|p| p.id == 0) {
            return Err(invalid("peers", format!("node ids of 1 or more; `0={}` has 0", p.addr)));
        }
        for (i, p) in peers.iter().enumerate() {
            if let Some(q) = peers[..i].iter().find(|q| q.id == p.id) {
                return Err(invalid(
                    "peers",
                    format!("distinct node ids; {} is given twice ({} and {})", p.id, q.addr, p.addr),
                ));
            }
            if let Some(q) = peers[..i].iter().find(|q| q.addr == p.addr) {
                return Err(invalid(
                    "peers",
                    format!("distinct addresses; {} is given for nodes {} and {}", p.addr, q.id, p.id),
                ));
            }
        }
        let Some(me) = peers.iter().find(|p| p.id == self.node_id) else {
            return Err(invalid(
                "node_id",
                format!("one of the ids in peers ({}); {} is not", ids.join(", "), self.node_id),
            ));
        };
        for b in &self.brokers.0 {
            if !peers.iter().any(|p| p.id == b.id) {
                return Err(invalid("brokers", format!("ids that are in peers ({}); {} is not", ids.join(", "), b.id)));
            }
        }
        let peer_listen = self.peer_listen.map(|a| a.to_string()).unwrap_or_else(|| me.addr.clone());
        if peer_listen == listen.to_string() {
            let key = if self.peer_listen.is_some() { "peer_listen" } else { "peers" };
            return Err(invalid(key, format!("a peer port other than the gRPC address listen = {listen}")));
        }
        Ok(())
    }
}

/// How log lines are written to standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (coloured when standard error is a terminal).
    Pretty,
    /// One JSON object per line, with the span fields, for log collectors.
    Json,
}

/// Where messages are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageKind {
    /// The segmented file log in `data_dir`.
    File,
    /// In memory: lost when the process ends.
    Memory,
}

/// When the file log acknowledges a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncMode {
    /// After an fsync that covers it (group commit).
    Always,
    /// After the write, with an fsync every `fsync_interval_ms`.
    Interval,
    /// After the write; the OS flushes when it likes.
    Never,
}

/// The storage settings (the file log's are ignored under `storage = "memory"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageSettings {
    /// The file log (the default) or memory (`storage` key).
    pub kind: StorageKind,
    /// The file log's directory (`./data` by default).
    pub data_dir: PathBuf,
    /// When a publish is acknowledged: after an fsync (the default), the write, or neither.
    pub fsync: FsyncMode,
    /// Milliseconds between fsyncs under [`FsyncMode::Interval`] (1 to 3600000; 100 by default).
    pub fsync_interval_ms: u64,
    /// Size at which a segment file rolls, in bytes (1 MiB to 1 TiB).
    pub segment_bytes: u64,
    /// Age of its first record at which a segment file rolls, in ms (1 minute to 365 days).
    pub segment_ms: u64,
    /// The newest bytes of each partition kept in memory for readers (64 KiB to 1 GiB).
    pub tail_cache_bytes: usize,
    /// On damage in an older segment, cut the log there instead of refusing to start.
    pub truncate_corrupt: bool,
}

impl Default for Config {
    fn default() -> Self {
        let file = FileStorageConfig::new("./data");
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            metrics_listen: None,
            metrics_tls: false,
            record: None,
            record_max_bytes: crate::record::RECORD_MAX_BYTES_DEFAULT,
            worker_threads: 0,
            log_format: LogFormat::Pretty,
            // openraft writes a line at info for every vote and heartbeat round trip.
            log_filter: "info,openraft=warn".to_string(),
            storage: StorageSettings {
                kind: StorageKind::File,
                data_dir: file.dir,
                fsync: FsyncMode::Always,
                fsync_interval_ms: 100,
                segment_bytes: file.segment_bytes,
                segment_ms: file.segment_ms,
                tail_cache_bytes: file.tail_cache_bytes,
                truncate_corrupt: file.truncate_corrupt,
            },
            server: ServerConfig::default(),
            cluster: ClusterSettings::default(),
        }
    }
}

/// A setting that cannot work, or a source that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A setting's value is outside what can work (found by [`Config::validate`]).
    #[error("invalid configuration: {key} must be {allowed}")]
    Invalid {
        /// The setting's name, as in the file.
        key: String,
        /// The values it may take, as text (a range, with the value it has when known).
        allowed: String,
    },
    /// A value given as text (file, environment or flag) does not parse as its type.
    #[error("{key} (from {origin}): {reason}")]
    Value {
        /// The setting's name, as in the file.
        key: String,
        /// Where the value was given.
        origin: Source,
        /// What was expected and what was given.
        reason: String,
    },
    /// The configuration file cannot be read, is too large, or is not TOML of the expected
    /// shape (an unknown section or key, a section that is not a table); names the file.
    #[error("{0}")]
    File(String),
}

impl Config {
    /// Refuses settings that cannot work, naming the key and the allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, allowed: &str| ConfigError::Invalid { key: key.to_string(), allowed: allowed.into() };
        self.server.validate().map_err(|e| match e {
            ServerError::Config(BrokerError::InvalidArgument { field, reason }) => {
                invalid(field, reason.strip_prefix("must be ").unwrap_or(&reason))
            }
            ServerError::ServerConfig { key, allowed } => invalid(key, allowed),
            ServerError::StreamQueue { least } => {
                invalid("stream_queue_max", &format!("pull_messages_max + 16 = {least} to 1000000"))
            }
            ServerError::Tokens(reason) => invalid("tokens", &format!("PRINCIPAL=SHA256HEX,... ({reason})")),
            ServerError::Permissions(reason) => {
                invalid("permissions", &format!("PERMISSION:PATTERN:PRINCIPAL,... ({reason})"))
            }
            other => invalid("server", &other.to_string()),
        })?;
        if self.log_filter.parse::<tracing_subscriber::EnvFilter>().is_err() {
            return Err(invalid("log_filter", "a tracing filter such as `info` or `mini_pubsub=debug,warn`"));
        }
        let storage = &self.storage;
        if !(1024 * 1024..=1 << 40).contains(&storage.segment_bytes) {
            return Err(invalid("segment_bytes", "1048576 to 1099511627776 (1 MiB to 1 TiB)"));
        }
        if !(60_000..=365 * 24 * 3_600_000).contains(&storage.segment_ms) {
            return Err(invalid("segment_ms", "60000 to 31536000000 (1 minute to 365 days)"));
        }
        if !(1..=3_600_000).contains(&storage.fsync_interval_ms) {
            return Err(invalid("fsync_interval_ms", "1 to 3600000"));
        }
        if !(64 * 1024..=1 << 30).contains(&storage.tail_cache_bytes) {
            return Err(invalid("tail_cache_bytes", "65536 to 1073741824 (64 KiB to 1 GiB)"));
        }
        if storage.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "a directory path"));
        }
        if self.worker_threads > WORKER_THREADS_MAX {
            return Err(invalid("worker_threads", "0 (one per core) to 1024"));
        }
        if self.record_max_bytes < crate::record::RECORD_MAX_BYTES_MIN {
            return Err(invalid("record_max_bytes", "at least 8388608 (8 MiB)"));
        }
        if self.metrics_listen.is_some_and(|m| m == self.listen && m.port() != 0) {
            return Err(invalid("metrics_listen", "a different address from listen"));
        }
        if self.metrics_tls && (self.metrics_listen.is_none() || self.server.tls_cert.is_none()) {
            return Err(invalid("metrics_tls", "false unless metrics_listen and tls_cert are set"));
        }
        self.cluster.validate(self.listen)
    }

    /// These settings with the storage `file` describes (`None`: in memory): what a
    /// recording made by a server started from parts (a test, the simulator) replays with.
    pub fn with_storage(mut self, file: Option<&FileStorageConfig>) -> Self {
        let Some(file) = file else {
            self.storage.kind = StorageKind::Memory;
            return self;
        };
        let s = &mut self.storage;
        s.kind = StorageKind::File;
        s.data_dir = file.dir.clone();
        (s.fsync, s.fsync_interval_ms) = match file.fsync {
            FsyncPolicy::Always => (FsyncMode::Always, s.fsync_interval_ms),
            FsyncPolicy::IntervalMs(ms) => (FsyncMode::Interval, ms),
            FsyncPolicy::Never => (FsyncMode::Never, s.fsync_interval_ms),
        };
        s.segment_bytes = file.segment_bytes;
        s.segment_ms = file.segment_ms;
        s.tail_cache_bytes = file.tail_cache_bytes;
        s.truncate_corrupt = file.truncate_corrupt;
        self
    }

    /// The file log's settings.
    pub fn file_storage(&self) -> FileStorageConfig {
        let s = &self.storage;
        let mut config = FileStorageConfig::new(&s.data_dir);
        config.fsync = match s.fsync {
            FsyncMode::Always => FsyncPolicy::Always,
            FsyncMode::Interval => FsyncPolicy::IntervalMs(s.fsync_interval_ms),
            FsyncMode::Never => FsyncPolicy::Never,
        };
        config.segment_bytes = s.segment_bytes;
        config.segment_ms = s.segment_ms;
        config.tail_cache_bytes = s.tail_cache_bytes;
        config.truncate_corrupt = s.truncate_corrupt;
        config
    }
}

/// Where a setting's effective value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Nothing set it: the built-in default.
    Default,
    /// The configuration file at this path.
    File(PathBuf),
    /// This environment variable (`MINI_PUBSUB_...`, or `RUST_LOG` for `log_filter`).
    Env(String),
    /// This command-line flag, as typed.
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => write!(f, "default"),
            Source::File(path) => write!(f, "file {}", path.display()),
            Source::Env(var) => write!(f, "env {var}"),
            Source::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// A configuration with the source of every setting.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The effective configuration, every layer applied.
    pub config: Config,
    /// One per entry of [`SETTINGS`], in the same order.
    pub sources: Vec<Source>,
}

impl Loaded {
    /// `config`, every setting shown as a default (no file, environment or flag gave it).
    pub fn from_config(config: Config) -> Self {
        Loaded { config, sources: vec![Source::Default; SETTINGS.len()] }
    }

    /// Builds the configuration from the defaults, then the file, then the environment
    /// (`env` yields name/value pairs, normally `std::env::vars()`), then `flags` (setting
    /// name, the flag as typed, its value). Each layer overrides the ones before it.
    pub fn load<'a>(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: impl IntoIterator<Item = (&'a str, String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut loaded = Loaded { config: Config::default(), sources: vec![Source::Default; SETTINGS.len()] };
        if let Some(path) = file {
            loaded.apply_file(path)?;
        }
        let env: std::collections::BTreeMap<String, String> = env.into_iter().collect();
        for (i, setting) in SETTINGS.iter().enumerate() {
            let var = setting.env_var();
            let (var, value) = match (env.get(&var), setting.name) {
                (Some(value), _) => (var, value),
                (None, "log_filter") => match env.get("RUST_LOG") {
                    Some(value) => ("RUST_LOG".to_string(), value),
                    None => continue,
                },
                (None, _) => continue,
            };
            loaded.set_text(i, value, Source::Env(var))?;
        }
        for (name, flag, value) in flags {
            let i = SETTINGS.iter().position(|s| s.name == name).expect("flags name known settings");
            loaded.set_text(i, &value, Source::Flag(flag))?;
        }
        Ok(loaded)
    }

    fn set_text(&mut self, i: usize, text: &str, source: Source) -> Result<(), ConfigError> {
        let setting = &SETTINGS[i];
        (setting.set_text)(&mut self.config, text.trim()).map_err(|reason| ConfigError::Value {
            key: setting.name.to_string(),
            origin: source.clone(),
            reason,
        })?;
        self.sources[i] = source;
        Ok(())
    }

    fn apply_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let unreadable = |e: std::io::Error| ConfigError::File(format!("cannot read {}: {e}", path.display()));
        let size = std::fs::metadata(path).map_err(unreadable)?.len();
        if size > CONFIG_FILE_BYTES_MAX {
            return Err(ConfigError::File(format!(
                "{}: the file is {size} bytes; a configuration file may have at most {CONFIG_FILE_BYTES_MAX}",
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(unreadable)?;
        self.apply_text(&text, path)
    }

    /// The configuration a TOML text gives over the defaults (no environment, no flags):
    /// what a flight recording's settings replay with. `path` names where the text came
    /// from, in messages.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut loaded = Loaded { config: Config::default(), sources: vec![Source::Default; SETTINGS.len()] };
        loaded.apply_text(text, path)?;
        Ok(loaded)
    }

    fn apply_text(&mut self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let table = toml::Table::from_str(text)
            .map_err(|e| ConfigError::File(format!("{} is not valid TOML: {}", path.display(), e.message())))?;
        let source = Source::File(path.to_path_buf());
        for (section_name, section) in &table {
            let Some(section_kind) = Section::ALL.iter().find(|s| s.name() == section_name) else {
                let known = Section::ALL.map(|s| format!("[{}]", s.name())).join(", ");
                return Err(ConfigError::File(format!(
                    "{}: unknown section or key `{section_name}` at the top level; settings go in one of {known}",
                    path.display()
                )));
            };
            let toml::Value::Table(entries) = section else {
                return Err(ConfigError::File(format!("{}: `{section_name}` must be a table", path.display())));
            };
            for (key, value) in entries {
                let found = SETTINGS.iter().position(|s| s.section == *section_kind && s.name == key);
                let Some(i) = found else {
                    let hint = match SETTINGS.iter().find(|s| s.name == key) {
                        Some(s) => format!("; it belongs in [{}]", s.section.name()),
                        None => String::new(),
                    };
                    return Err(ConfigError::File(format!(
                        "{}: unknown key `{key}` in [{section_name}]{hint}",
                        path.display()
                    )));
                };
                let text = match value {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Integer(_) | toml::Value::Boolean(_) => value.to_string(),
                    other => {
                        return Err(ConfigError::Value {
                            key: key.clone(),
                            origin: source,
                            reason: format!("expected a string, an integer or a boolean, got a {}", other.type_str()),
                        })
                    }
                };
                self.set_text(i, &text, source.clone())?;
            }
        }
        Ok(())
    }

    /// Validates, adding to a refusal where the offending value came from.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.config.validate().map_err(|error| match &error {
            ConfigError::Invalid { key, allowed } => match SETTINGS.iter().position(|s| s.name == key) {
                Some(i) => {
                    // `tokens` holds hashes, but a token pasted in place of its hash is a
                    // secret: a refusal (logged at start and on SIGHUP) never shows it.
                    let value = if SECRET_SETTINGS.contains(&key.as_str()) {
                        "not shown (it may hold a secret)".to_string()
                    } else {
                        (SETTINGS[i].show)(&self.config)
                    };
                    ConfigError::Invalid {
                        key: key.clone(),
                        allowed: format!("{allowed}; it is {value} (from {})", self.sources[i]),
                    }
                }
                None => error,
            },
            _ => error,
        })
    }

    /// The effective settings as a TOML document that can be used as a configuration file,
    /// each line commented with its source.
    pub fn describe(&self) -> String {
        let mut out =
            String::from("# mini-pubsub: effective configuration (precedence: flag > env > file > default)\n");
        for section in Section::ALL {
            out.push_str(&format!("\n[{}]\n", section.name()));
            for (i, setting) in SETTINGS.iter().enumerate().filter(|(_, s)| s.section == section) {
                let line = format!("{} = {}", setting.name, (setting.show)(&self.config));
                out.push_str(&format!("{line:<44} # {}\n", self.sources[i]));
            }
        }
        out
    }
}

/// A configuration file with every key at its default, each with its documentation: the
/// example in `config/` (`mini-pubsub config example`).
pub fn example_file() -> String {
    let defaults = Config::default();
    let mut out = String::from(
        "# mini-pubsub configuration: every key with its default value.\n\
         # Use with `mini-pubsub serve --config FILE`. Each key can also be set by the\n\
         # environment (MINI_PUBSUB_ + the key in capitals) or a flag (--key-with-dashes);\n\
         # a flag beats the environment, which beats this file, which beats the default.\n\
         # `mini-pubsub config print` shows the effective settings and where each came from.\n",
    );
    for section in Section::ALL {
        out.push_str(&format!("\n[{}]\n", section.name()));
        for setting in SETTINGS.iter().filter(|s| s.section == section) {
            out.push_str(&format!("# {}\n{} = {}\n", setting.doc, setting.name, (setting.show)(&defaults)));
        }
    }
    out
}

#[cfg(test)]
mod tests;
