//! The client commands of the `mini-pubsub` binary (`publish`, `subscribe`, `topic`, `sub`),
//! built on [`mini_pubsub::client`].
//!
//! Each command prints its results on stdout, one line each. A failure prints one line on
//! stderr, `error: ` and then the reason (for a refusal, the gRPC code name and the
//! broker's message), and exits with status 1; usage errors are clap's (status 2).

mod admin;
mod format;
mod publish;
mod subscribe;

use std::fmt;
use std::io::Write;
use std::time::Duration;

use clap::Subcommand;

use mini_pubsub::client::{Client, ClientError, ClientTls, ConnectOptions};

/// The broker the client commands talk to.
#[derive(clap::Args)]
pub struct ServerOption {
    /// The broker's URL (client commands), or a cluster's brokers, comma-separated: the
    /// commands go to the leader, and follow it when it changes.
    #[arg(long, global = true, env = "MINI_PUBSUB_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,
    /// Connect over TLS, trusting the CA certificate in this PEM file (the --server URLs then
    /// start with https://).
    #[arg(long, global = true, env = "MINI_PUBSUB_CA")]
    pub ca: Option<std::path::PathBuf>,
    /// For mutual TLS: this client's PEM certificate (with --cert-key and --ca).
    #[arg(long, global = true, env = "MINI_PUBSUB_CERT", requires_all = ["cert_key", "ca"])]
    pub cert: Option<std::path::PathBuf>,
    /// The PEM private key of --cert (`--key` is publish's message key).
    #[arg(long, global = true, env = "MINI_PUBSUB_CERT_KEY", requires = "cert")]
    pub cert_key: Option<std::path::PathBuf>,
    /// A bearer token, sent with every request as `authorization: Bearer TOKEN` (prefer the
    /// environment variable: a flag shows in the process list).
    #[arg(long, global = true, env = "MINI_PUBSUB_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl ServerOption {
    /// Connects as the options say.
    async fn connect(&self) -> Result<Client, ClientError> {
        let mut options = ConnectOptions::default();
        if let Some(ca) = &self.ca {
            let identity = self.cert.as_deref().zip(self.cert_key.as_deref());
            options = options.tls(ClientTls::from_files(ca, identity)?);
        }
        if let Some(token) = &self.token {
            options = options.token(token)?;
        }
        Client::connect_with(self.server.clone(), &options).await
    }
}

/// The client commands.
#[derive(Subcommand)]
pub enum ClientCommand {
    /// Publishes messages to a topic: VALUE, the contents of --file, or each line of stdin.
    Publish(publish::PublishArgs),
    /// Prints messages of a subscription (or of a topic, through an ephemeral subscription).
    Subscribe(subscribe::SubscribeArgs),
    /// Creates, lists, shows and deletes topics.
    #[command(subcommand)]
    Topic(admin::TopicCommand),
    /// Creates, lists, shows and deletes subscriptions, and shows their stats.
    #[command(subcommand)]
    Sub(admin::SubCommand),
}

/// Why a command failed: printed as one line.
#[derive(Debug)]
pub enum CliError {
    /// The client library's error (a refusal, a connection failure, a bad setting).
    Client(ClientError),
    /// Bad input found by the command itself (a flag's value, a file).
    Input(String),
    /// Stdout went away (`| head`): stop quietly.
    Gone,
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Client(error) => write!(f, "{error}"),
            CliError::Input(reason) => write!(f, "{reason}"),
            CliError::Gone => write!(f, "stdout closed"),
        }
    }
}

impl From<ClientError> for CliError {
    fn from(error: ClientError) -> Self {
        CliError::Client(error)
    }
}

impl From<std::io::Error> for CliError {
    fn from(error: std::io::Error) -> Self {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            CliError::Gone
        } else {
            CliError::Input(format!("cannot write the output: {error}"))
        }
    }
}

/// Runs a client command. On failure prints the reason on stderr and exits with 1.
pub async fn run(command: ClientCommand, server: ServerOption) {
    let outcome = async {
        let client = server.connect().await?;
        match command {
            ClientCommand::Publish(args) => publish::run(&client, args).await,
            ClientCommand::Subscribe(args) => subscribe::run(&client, args).await,
            ClientCommand::Topic(command) => admin::topic(&client, command).await,
            ClientCommand::Sub(command) => admin::sub(&client, command).await,
        }
    };
    match outcome.await {
        Ok(()) | Err(CliError::Gone) => {}
        Err(error) => {
            let _ = std::io::stdout().flush();
            eprintln!("error: {error}");
            std::process::exit(1);
        }
    }
}

/// Writes one line to stdout, flushed (the output is often a pipe read line by line).
fn print_line(line: impl fmt::Display) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// Parses `300s`, `500ms`, `2m`, `1h`, or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let explain = || format!("`{text}` is not a duration; write a whole number with ms, s, m or h (300s, 500ms, 2m)");
    let n: u64 = number.parse().map_err(|_| explain())?;
    let ms = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(explain()),
    };
    ms.map(Duration::from_millis).ok_or_else(|| format!("`{text}` is too long a duration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit_or_default_to_seconds() {
        assert_eq!(parse_duration("300s"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("5x").unwrap_err().contains("`5x` is not a duration"));
        assert!(parse_duration("").is_err());
    }
}
