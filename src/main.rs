//! The `mini-pubsub` binary: `mini-pubsub serve` runs the broker; `publish`, `subscribe`,
//! `topic` and `sub` are its client (see `cli`).

mod cli;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing::info;
use tracing_subscriber::EnvFilter;

use mini_pubsub::env::{Net, StdFs, TokioClock, TokioNet};
use mini_pubsub::server::{self, ServerConfig};
use mini_pubsub::storage::{FileStorage, FileStorageConfig, FsyncPolicy, MemoryStorage, Storage};

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
    /// Runs the broker until Ctrl-C or SIGTERM.
    Serve(ServeArgs),
    #[command(flatten)]
    Client(cli::ClientCommand),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Refuse publishes to topics that do not exist, instead of creating them.
    #[arg(long)]
    no_auto_create_topics: bool,
    /// Partitions of topics created without a count.
    #[arg(long, default_value_t = 1)]
    default_partitions: u32,
    /// Lease length of subscriptions created without one, in seconds.
    #[arg(long, default_value_t = 30)]
    ack_deadline_seconds: u64,
    /// Largest message (value + key + attributes), in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    max_message_bytes: usize,
    /// Where messages are kept: `file` (a segmented log in --data-dir) or `memory` (lost
    /// when the process ends).
    #[arg(long, value_enum, default_value_t = StorageKind::File)]
    storage: StorageKind,
    /// The file log's directory.
    #[arg(long, default_value = "./data")]
    data_dir: std::path::PathBuf,
    /// When a publish is acknowledged: `always` after an fsync that covers it (group
    /// commit), `interval` after the write with an fsync every --fsync-interval-ms, `never`
    /// after the write (the OS flushes when it likes).
    #[arg(long, value_enum, default_value_t = FsyncArg::Always)]
    fsync: FsyncArg,
    /// Milliseconds between fsyncs under --fsync interval.
    #[arg(long, default_value_t = 100)]
    fsync_interval_ms: u64,
    /// Size at which a segment file rolls, in bytes.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    segment_bytes: u64,
    /// Bytes each partition keeps; past it the oldest segments are deleted.
    #[arg(long, default_value_t = 1 << 30)]
    retention_bytes: u64,
    /// Hours a message is kept (by publish time); 0 keeps messages until --retention-bytes.
    #[arg(long, default_value_t = 168)]
    retention_hours: u64,
    /// On damage in an older segment, cut the log there (losing what follows) instead of
    /// refusing to start. Damage at the tail of the newest segment is always cut.
    #[arg(long)]
    truncate_corrupt: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum StorageKind {
    File,
    Memory,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FsyncArg {
    Always,
    Interval,
    Never,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Client(command) => {
            cli::run(command, cli.server).await;
            Ok(())
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = ServerConfig::default();
    config.broker.auto_create_topics = !args.no_auto_create_topics;
    config.broker.default_partitions = args.default_partitions;
    config.broker.ack_deadline_ms = args.ack_deadline_seconds.saturating_mul(1000);
    config.broker.max_message_bytes = args.max_message_bytes;
    config.broker.partition_retention_bytes = args.retention_bytes;
    config.broker.partition_retention_ms =
        (args.retention_hours > 0).then(|| args.retention_hours.saturating_mul(3_600_000));
    config.validate()?;
    let (storage, described) = open_storage(&args)?;

    let (addr, incoming) =
        TokioNet.bind(args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    info!("mini-pubsub listening on {addr} (storage: {described})");
    server::run(incoming, shutdown_signal(), config, storage, Arc::new(TokioClock::new())).await?;
    Ok(())
}

fn open_storage(args: &ServeArgs) -> anyhow::Result<(Box<dyn Storage>, String)> {
    if let StorageKind::Memory = args.storage {
        return Ok((Box::new(MemoryStorage), "memory".to_string()));
    }
    anyhow::ensure!(
        (1024 * 1024..=1 << 40).contains(&args.segment_bytes),
        "--segment-bytes must be 1 MiB to 1 TiB; it is {}",
        args.segment_bytes
    );
    anyhow::ensure!(
        (1..=3_600_000).contains(&args.fsync_interval_ms),
        "--fsync-interval-ms must be 1 to 3600000; it is {}",
        args.fsync_interval_ms
    );
    let mut config = FileStorageConfig::new(&args.data_dir);
    config.fsync = match args.fsync {
        FsyncArg::Always => FsyncPolicy::Always,
        FsyncArg::Interval => FsyncPolicy::IntervalMs(args.fsync_interval_ms),
        FsyncArg::Never => FsyncPolicy::Never,
    };
    config.segment_bytes = args.segment_bytes;
    config.truncate_corrupt = args.truncate_corrupt;
    let described = format!("file log in {}, fsync {}", args.data_dir.display(), config.fsync);
    let storage = FileStorage::open(Arc::new(StdFs), config)
        .with_context(|| format!("cannot open the data directory {}", args.data_dir.display()))?;
    Ok((Box::new(storage), described))
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => info!("Ctrl-C received"),
        () = terminate => info!("SIGTERM received"),
    }
}
