//! The `mini-pubsub` binary: `mini-pubsub serve` runs the broker; `mini-pubsub config` shows
//! its configuration; `publish`, `subscribe`, `topic` and `sub` are its client (see `cli`).

mod cli;
mod dev_cluster;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Arg, Parser, Subcommand};
use tracing::info;
use tracing_subscriber::EnvFilter;

use mini_pubsub::config::{self, Config, Loaded, LogFormat, StorageKind, CONFIG_FILE_ENV, SETTINGS};
use mini_pubsub::env::{Net, StdFs, TokioClock, TokioNet};
use mini_pubsub::server;
use mini_pubsub::storage::{FileStorage, MemoryStorage, Storage};

#[derive(Parser)]
#[command(name = "mini-pubsub", version, about = "A gRPC publish/subscribe broker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    server: cli::ServerOption,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the broker until Ctrl-C or SIGTERM. Every setting can come from the file given by
    /// --config, from MINI_PUBSUB_* environment variables, or from the flags below; a flag
    /// beats the environment, which beats the file, which beats the default.
    Serve(ConfigArgs),
    /// Shows the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Starts a local cluster on 127.0.0.1 (three nodes unless --nodes says otherwise),
    /// prints each node's ports, pid, data and log, and stops them all on Ctrl-C.
    DevCluster(dev_cluster::DevCluster),
    /// Makes certificates for TLS.
    #[command(subcommand)]
    Certs(CertsCommand),
    #[command(flatten)]
    Client(cli::ClientCommand),
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Writes a local CA, a server certificate for localhost, 127.0.0.1 and ::1, and a client
    /// certificate (for mutual TLS), each with its key, as PEM files; for trying TLS on one
    /// machine, not for production.
    Dev {
        /// The directory to write them into (created if missing; existing files are kept,
        /// and the command refuses).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Prints the effective settings as TOML, each with where it came from, and checks them.
    Print(ConfigArgs),
    /// Prints a configuration file with every key at its default, documented.
    Example,
}

/// `--config FILE` and one flag per setting, collected as (setting, flag, value).
#[derive(Clone)]
struct ConfigArgs {
    file: Option<PathBuf>,
    flags: Vec<(&'static str, String, String)>,
}

/// Turns an older flag's value into its setting's.
type Convert = fn(&str) -> Result<String, String>;

/// Flags kept from before the configuration file: (flag, setting, help, conversion).
const LEGACY_FLAGS: [(&str, &str, &str, Convert); 4] = [
    ("no-auto-create-topics", "auto_create_topics", "Same as --auto-create-topics false.", |_| Ok("false".into())),
    ("ack-deadline-seconds", "ack_deadline_ms", "--ack-deadline-ms in seconds.", |s| scaled(s, 1000)),
    ("retention-bytes", "partition_retention_bytes", "Same as --partition-retention-bytes.", |s| Ok(s.into())),
    ("retention-hours", "partition_retention_ms", "--partition-retention-ms in hours.", |s| scaled(s, 3_600_000)),
];

fn scaled(text: &str, factor: u64) -> Result<String, String> {
    let n: u64 = text.parse().map_err(|_| format!("expected a non-negative integer, got `{text}`"))?;
    n.checked_mul(factor).map(|n| n.to_string()).ok_or_else(|| format!("`{text}` is too large"))
}

impl clap::FromArgMatches for ConfigArgs {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let given = |id: &str| {
            let from_command_line = matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
            let raw = || matches.get_raw(id).and_then(|mut values| values.next_back());
            from_command_line.then(raw).flatten().map(|value| value.to_string_lossy().into_owned())
        };
        let mut flags = Vec::new();
        for (flag, name, _, convert) in LEGACY_FLAGS {
            if let Some(value) = given(flag) {
                let value = convert(&value).map_err(|reason| {
                    clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("--{flag}: {reason}\n"))
                })?;
                flags.push((name, format!("--{flag}"), value));
            }
        }
        for setting in SETTINGS {
            if let Some(value) = given(setting.name) {
                flags.push((setting.name, format!("--{}", setting.flag()), value));
            }
        }
        let file = matches.get_one::<PathBuf>("config").cloned();
        Ok(ConfigArgs { file, flags })
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl clap::Args for ConfigArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let mut cmd = cmd.arg(
            Arg::new("config")
                .long("config")
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help(format!("A TOML configuration file (also {CONFIG_FILE_ENV}); see config/mini-pubsub.toml")),
        );
        for setting in SETTINGS {
            let mut arg = Arg::new(setting.name)
                .long(setting.flag())
                .value_name(setting.hint)
                .help(setting.doc)
                .help_heading(format!("[{}] settings", setting.section.name()));
            if setting.hint == "true|false" {
                arg = arg.num_args(0..=1).default_missing_value("true");
            }
            cmd = cmd.arg(arg);
        }
        for (flag, _, help, _) in LEGACY_FLAGS {
            let arg = Arg::new(flag).long(flag).help(help).help_heading("Older spellings");
            let arg = if flag.starts_with("no-") { arg.action(clap::ArgAction::SetTrue) } else { arg };
            cmd = cmd.arg(arg);
        }
        cmd
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl ConfigArgs {
    /// Reads the file, the environment and the flags, and validates the result.
    fn load(self) -> anyhow::Result<Loaded> {
        let file = self.file.or_else(|| std::env::var_os(CONFIG_FILE_ENV).map(PathBuf::from));
        let loaded = Loaded::load(file.as_deref(), std::env::vars(), self.flags)?;
        loaded.validate()?;
        Ok(loaded)
    }
}

/// `mini-pubsub certs dev --out DIR`: writes the files and says how to use them.
fn certs_dev(out: &std::path::Path) -> anyhow::Result<()> {
    let written = mini_pubsub::certs::write_dev(out).map_err(anyhow::Error::msg)?;
    for path in &written {
        println!("wrote {}", path.display());
    }
    let dir = out.display();
    println!("serve with:   mini-pubsub serve --tls-cert {dir}/server.pem --tls-key {dir}/server-key.pem");
    println!("connect with: --server https://localhost:50051 --ca {dir}/ca.pem");
    println!(
        "cluster with: --peer-tls-cert {dir}/peer.pem --peer-tls-key {dir}/peer-key.pem --peer-tls-ca {dir}/ca.pem"
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => args.clone().load().and_then(|loaded| {
            init_logging(loaded.config.log_format, &loaded.config.log_filter);
            server_runtime(loaded.config.worker_threads)?.block_on(serve(loaded, args))
        }),
        Command::Config(ConfigCommand::Print(args)) => args.load().map(|loaded| print!("{}", loaded.describe())),
        Command::DevCluster(args) => runtime().and_then(|runtime| {
            let stop = {
                let _inside = runtime.enter();
                shutdown_signal()
            };
            runtime.block_on(args.run(stop))
        }),
        Command::Certs(CertsCommand::Dev { out }) => certs_dev(&out),
        Command::Config(ConfigCommand::Example) => {
            print!("{}", config::example_file());
            Ok(())
        }
        Command::Client(command) => {
            // The client's own log lines (retries, reconnects) are warnings; RUST_LOG picks more.
            let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_string());
            init_logging(LogFormat::Pretty, &filter);
            runtime().map(|runtime| runtime.block_on(cli::run(command, cli.server)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// The server's runtime: `worker_threads` threads, or one per core when 0.
fn server_runtime(worker_threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if worker_threads > 0 {
        builder.worker_threads(worker_threads);
    }
    Ok(builder.enable_all().build()?)
}

/// Log lines go to standard error, filtered by `log_filter` (RUST_LOG syntax), as readable
/// lines or one JSON object per line with the fields of the spans they happened in.
fn init_logging(format: LogFormat, filter: &str) {
    let filter = EnvFilter::new(filter);
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(true).init(),
    }
}

/// Serves the broker `loaded` configures; on SIGHUP, `args` are read again for the tokens
/// and permissions to put in force.
async fn serve(loaded: Loaded, args: ConfigArgs) -> anyhow::Result<()> {
    let config = &loaded.config;
    let (storage, described) = if config.cluster.enabled() { open_node_state(config)? } else { open_storage(config)? };
    let (addr, incoming) =
        TokioNet.bind(config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
    // Before the line that says the port is open: a signal from then on stops the server.
    let stop = shutdown_signal();
    let security = if config.server.tls_cert.is_some() { "TLS" } else { "plaintext" };
    info!("mini-pubsub listening on {addr} ({security}; storage: {described})");
    if config.server.tls_cert.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "listening beyond this machine without TLS: anyone who can reach the port can read \
            and change every topic; set tls_cert and tls_key (mini-pubsub certs dev makes a pair to try)");
    }
    if let Some(metrics_addr) = config.metrics_listen {
        let tls = match (&config.server.tls_cert, &config.server.tls_key) {
            (Some(cert), Some(key)) if config.metrics_tls => {
                let certificates = Arc::new(server::tls::Certificates::load(cert, key).map_err(anyhow::Error::msg)?);
                server::tls::reload_on_sighup(certificates.clone());
                Some(certificates)
            }
            _ => None,
        };
        server::metrics::install_with(metrics_addr, tls).await?;
    }
    let record = config.record.clone().map(|dir| server::RecordTo {
        fs: Arc::new(StdFs),
        dir,
        max_bytes: config.record_max_bytes,
        settings_toml: loaded.describe(),
    });
    let cluster = if config.cluster.enabled() { Some(cluster_run(config).await?) } else { None };
    let reload: server::Reload =
        Box::new(move || args.clone().load().map(|loaded| loaded.config.server).map_err(|e| format!("{e:#}")));
    let hooks = server::Hooks { observer: None, record, cluster, reload: Some(reload) };
    let clock = Arc::new(TokioClock::new());
    server::run_with(incoming, stop, config.server.clone(), storage, clock, hooks).await?;
    Ok(())
}

fn open_storage(config: &Config) -> anyhow::Result<(Box<dyn Storage>, String)> {
    if let StorageKind::Memory = config.storage.kind {
        return Ok((Box::new(MemoryStorage), "memory".to_string()));
    }
    let file = config.file_storage();
    let dir = file.dir.clone();
    let described = format!("file log in {}, fsync {}", dir.display(), file.fsync);
    let storage = FileStorage::open(Arc::new(StdFs), file)
        .with_context(|| format!("cannot open the data directory {}", dir.display()))?;
    Ok((Box::new(storage), described))
}

/// A cluster node's broker state: `<data_dir>/state`, the partition logs its Raft
/// snapshots (`<data_dir>/raft`) checkpoint. It is synced when a snapshot is taken, not
/// before a write is acknowledged: the Raft log makes a write durable, and a restart cuts
/// the partition logs back to the snapshot and applies the log on.
fn open_node_state(config: &Config) -> anyhow::Result<(Box<dyn Storage>, String)> {
    anyhow::ensure!(
        config.storage.kind == StorageKind::File,
        "invalid configuration: storage must be file on a cluster node (its Raft log is kept in data_dir)"
    );
    let file = config.file_storage();
    let data_dir = file.dir.clone();
    anyhow::ensure!(
        !data_dir.join("meta").exists(),
        "{} holds a single broker's data; a cluster node starts on an empty data_dir (or its own), \
         so give it another",
        data_dir.display()
    );
    let file = file.node_state();
    let storage = FileStorage::open(Arc::new(StdFs), file)
        .with_context(|| format!("cannot open the node's broker state in {}", data_dir.display()))?;
    let synced = if config.storage.fsync == config::FsyncMode::Always {
        "fsynced on a majority before every acknowledgement"
    } else {
        "written (not fsynced) on a majority before every acknowledgement, as fsync is not always"
    };
    let described = format!(
        "cluster node {} of {}: Raft log in {}, {synced}",
        config.cluster.node_id,
        config.cluster.peers,
        data_dir.join("raft").display()
    );
    Ok((Box::new(storage), described))
}

/// What this node of a cluster runs with: its peers, its peer port (bound here), and a seed
/// for its election timeouts from the OS.
async fn cluster_run(config: &Config) -> anyhow::Result<server::ClusterRun> {
    use std::hash::{BuildHasher, Hasher};
    let cluster = &config.cluster;
    let peers: std::collections::BTreeMap<u64, String> =
        cluster.peers.0.iter().map(|p| (p.id, p.addr.clone())).collect();
    let brokers = cluster.brokers.0.iter().map(|b| (b.id, b.addr.clone())).collect();
    let own = peers[&cluster.node_id].clone();
    let peer_listen = cluster.peer_listen.map_or(own, |a| a.to_string());
    let listener = tokio::net::TcpListener::bind(&peer_listen)
        .await
        .with_context(|| format!("cannot listen for peers on {peer_listen}"))?;
    info!("cluster node {} takes Raft traffic on {}", cluster.node_id, listener.local_addr()?);
    // Raft's messages are small and each waits for its answer: Nagle's algorithm would hold
    // them back for the peer's delayed ack.
    let incoming = tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(listener), |conn| {
        conn.and_then(|stream| stream.set_nodelay(true).map(|()| stream))
    });
    let (serve_peers, connect): (_, mini_pubsub::cluster::Connector) = match peer_tls(config)? {
        Some(tls) => {
            let tls = Arc::new(tls);
            server::tls::reload_on_sighup(tls.certificates());
            let serve_peers = serve_peers_on(tls.secure(incoming));
            let connect = Arc::new(move |addr: &str| {
                let endpoint = tls.endpoint(addr).expect("peers are HOST:PORT");
                endpoint.tcp_nodelay(true).connect_lazy()
            });
            (serve_peers, connect)
        }
        None => {
            let connect = Arc::new(|addr: &str| {
                let endpoint =
                    tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("peers are HOST:PORT");
                endpoint.tcp_nodelay(true).connect_lazy()
            });
            (serve_peers_on(incoming), connect)
        }
    };
    // The standard library seeds each RandomState from the OS: a seed nobody picked.
    let seed = std::collections::hash_map::RandomState::new().build_hasher().finish();
    let mut settings = mini_pubsub::cluster::NodeSettings::new(cluster.node_id, peers, seed);
    settings.fsync = config.storage.fsync == config::FsyncMode::Always;
    settings.snapshot_entries = cluster.snapshot_entries;
    // A proposal is a request, encoded again with the time it was decided at.
    settings.entry_bytes_max = config.server.request_bytes_max + (1 << 20);
    Ok(server::ClusterRun {
        settings,
        brokers,
        fs: Arc::new(StdFs),
        dir: config.storage.data_dir.join("raft"),
        connect,
        serve_peers,
    })
}

/// Mutual TLS between the nodes, when `peer_tls_cert`, `peer_tls_key` and `peer_tls_ca` are
/// set (validation makes it all three or none).
fn peer_tls(config: &Config) -> anyhow::Result<Option<server::tls::peer::PeerTls>> {
    let cluster = &config.cluster;
    let (Some(cert), Some(key), Some(ca)) = (&cluster.peer_tls_cert, &cluster.peer_tls_key, &cluster.peer_tls_ca)
    else {
        return Ok(None);
    };
    let client_ca = config.server.tls_client_ca.as_deref();
    let tls = server::tls::peer::PeerTls::load(cert, key, ca, client_ca)
        .map_err(|e| anyhow::anyhow!("cannot serve peers: {e}"))?;
    // Every peer's endpoint is built now, so a setting that cannot make one stops the start
    // here rather than a connection later.
    for peer in &cluster.peers.0 {
        tls.endpoint(&peer.addr).map_err(|e| anyhow::anyhow!("cannot call peers: {e}"))?;
    }
    info!(cert = %cert.display(), ca = %ca.display(), "Raft traffic is mutual TLS with the cluster's CA");
    Ok(Some(tls))
}

/// What serves the Raft service on `incoming` until the node stops.
fn serve_peers_on<S, IO>(
    incoming: S,
) -> Box<dyn FnOnce(server::PeerService, PeerStop) -> futures_util::future::BoxFuture<'static, ()> + Send>
where
    S: tokio_stream::Stream<Item = std::io::Result<IO>> + Send + 'static,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + tonic::transport::server::Connected + Unpin + Send + 'static,
{
    Box::new(move |service, stop| {
        Box::pin(async move {
            let served =
                tonic::transport::Server::builder().add_service(service).serve_with_incoming_shutdown(incoming, stop);
            if let Err(error) = served.await {
                tracing::error!(%error, "the peer port stopped serving");
            }
        })
    })
}

/// Resolves when a node's peer port should stop.
type PeerStop = futures_util::future::BoxFuture<'static, ()>;

/// Resolves on Ctrl-C or SIGTERM. The handlers are in place when this returns, not when the
/// future is first polled: a server polls it only from its accept loop, and a SIGTERM sent
/// before that (a client that connects at once, or a supervisor stopping a server that has
/// just started) would otherwise end the process with no graceful stop. Call it inside the
/// runtime.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let (ctrl_c, terminate) = {
        use tokio::signal::unix::{signal, SignalKind};
        (delivered(signal(SignalKind::interrupt()), "Ctrl-C"), delivered(signal(SignalKind::terminate()), "SIGTERM"))
    };
    #[cfg(not(unix))]
    let (ctrl_c, terminate) = (
        async {
            if let Err(error) = tokio::signal::ctrl_c().await {
                tracing::error!(%error, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
        },
        std::future::pending::<()>(),
    );
    async move {
        tokio::select! {
            () = ctrl_c => info!("Ctrl-C received"),
            () = terminate => info!("SIGTERM received"),
        }
    }
}

/// Resolves when `signal` (`name`) is delivered; never, logged, if it could not be listened for.
#[cfg(unix)]
async fn delivered(signal: std::io::Result<tokio::signal::unix::Signal>, name: &str) {
    match signal {
        Ok(mut signal) => {
            signal.recv().await;
        }
        Err(error) => {
            tracing::error!(%error, "cannot listen for {name}");
            std::future::pending::<()>().await;
        }
    }
}
