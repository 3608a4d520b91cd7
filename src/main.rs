//! The `mini-pubsub` binary: `mini-pubsub serve` runs the broker.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing::info;
use tracing_subscriber::EnvFilter;

use mini_pubsub::env::{Net, TokioClock, TokioNet};
use mini_pubsub::server::{self, ServerConfig};
use mini_pubsub::storage::MemoryStorage;

#[derive(Parser)]
#[command(name = "mini-pubsub", version, about = "A gRPC publish/subscribe broker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the broker until Ctrl-C or SIGTERM.
    Serve(ServeArgs),
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match Cli::parse().command {
        Command::Serve(args) => serve(args).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = ServerConfig::default();
    config.broker.auto_create_topics = !args.no_auto_create_topics;
    config.broker.default_partitions = args.default_partitions;
    config.broker.ack_deadline_ms = args.ack_deadline_seconds.saturating_mul(1000);
    config.broker.max_message_bytes = args.max_message_bytes;
    config.validate()?;

    let (addr, incoming) =
        TokioNet.bind(args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    info!("mini-pubsub listening on {addr} (storage: memory)");
    server::run(incoming, shutdown_signal(), config, Box::new(MemoryStorage), Arc::new(TokioClock::new())).await?;
    Ok(())
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
