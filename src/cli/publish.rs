//! `mini-pubsub publish`: one message (VALUE or --file), or one per line of stdin, through
//! a batching publisher; prints where each was stored, in order.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use mini_pubsub::client::{Client, OutgoingMessage, PublishHandle, PublishResult, Publisher, PublisherSettings};

use super::{print_line, CliError};

/// Answers awaited at once while reading stdin: past it, reading waits for the oldest.
const IN_FLIGHT_MAX: usize = 1000;
/// Longest stdin line (and --file) read: the broker's largest possible max_message_bytes.
const VALUE_BYTES_MAX: usize = 3 * 1024 * 1024;

#[derive(clap::Args)]
pub struct PublishArgs {
    /// The topic (created on first publish unless the broker refuses that).
    topic: String,
    /// The message's value. Without VALUE and --file, each line of stdin is one message.
    #[arg(conflicts_with = "file")]
    value: Option<String>,
    /// Publish the contents of this file as one message.
    #[arg(long)]
    file: Option<PathBuf>,
    /// The key (messages with one key land on one partition).
    #[arg(long)]
    key: Option<String>,
    /// An attribute, NAME=VALUE; repeat for more.
    #[arg(long = "attr", value_name = "NAME=VALUE", value_parser = parse_attribute)]
    attributes: Vec<(String, String)>,
    /// An explicit partition (overrides the key).
    #[arg(long)]
    partition: Option<u32>,
}

fn parse_attribute(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("`{text}` is not NAME=VALUE (a non-empty name, `=`, then the value)")),
    }
}

impl PublishArgs {
    fn message(&self, value: impl Into<bytes::Bytes>) -> OutgoingMessage {
        OutgoingMessage {
            value: value.into(),
            key: self.key.clone(),
            partition: self.partition,
            attributes: self.attributes.iter().cloned().collect::<BTreeMap<_, _>>(),
            idempotency_key: None,
        }
    }
}

pub async fn run(client: &Client, args: PublishArgs) -> Result<(), CliError> {
    let publisher = client.publisher(args.topic.clone(), PublisherSettings::default())?;
    let outcome = async {
        if let Some(value) = &args.value {
            let handle = publisher.publish(args.message(value.clone())).await?;
            print_result(handle.await?)
        } else if let Some(path) = &args.file {
            let value = read_file(path).await?;
            let handle = publisher.publish(args.message(value)).await?;
            print_result(handle.await?)
        } else {
            publish_lines(&publisher, &args).await
        }
    }
    .await;
    // Whatever happened, what was handed to the publisher is sent before the command ends.
    let stopped = publisher.shutdown().await;
    outcome?;
    Ok(stopped?)
}

async fn read_file(path: &PathBuf) -> Result<Vec<u8>, CliError> {
    let cannot = |e: std::io::Error| CliError::Input(format!("--file {}: {e}", path.display()));
    let file = tokio::fs::File::open(path).await.map_err(cannot)?;
    let mut value = Vec::new();
    file.take(VALUE_BYTES_MAX as u64 + 1).read_to_end(&mut value).await.map_err(cannot)?;
    if value.len() > VALUE_BYTES_MAX {
        return Err(CliError::Input(format!(
            "--file {}: larger than {VALUE_BYTES_MAX} bytes (3 MiB), more than any broker accepts in one message",
            path.display()
        )));
    }
    Ok(value)
}

/// Publishes each line of stdin (without its line ending) and prints the answers in order.
/// When stdout goes away (`| head`) it keeps publishing and stops printing: every line is
/// published either way. A failure names its line.
async fn publish_lines(publisher: &Publisher, args: &PublishArgs) -> Result<(), CliError> {
    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut waiting: VecDeque<(u64, PublishHandle)> = VecDeque::new();
    let mut printing = true;
    let mut line = Vec::new();
    for number in 1.. {
        line.clear();
        let read = (&mut stdin).take(VALUE_BYTES_MAX as u64 + 2).read_until(b'\n', &mut line).await;
        let read = read.map_err(|e| CliError::Input(format!("cannot read stdin: {e}")))?;
        if read == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        if line.len() > VALUE_BYTES_MAX {
            return Err(CliError::Input(format!(
                "stdin line {number} is longer than {VALUE_BYTES_MAX} bytes (3 MiB), more than any broker accepts"
            )));
        }
        if waiting.len() == IN_FLIGHT_MAX {
            print_oldest(&mut waiting, &mut printing).await?;
        }
        let handle = publisher.publish(args.message(line.clone())).await.map_err(|e| at_line(number, e.into()))?;
        waiting.push_back((number, handle));
    }
    while !waiting.is_empty() {
        print_oldest(&mut waiting, &mut printing).await?;
    }
    Ok(())
}

async fn print_oldest(waiting: &mut VecDeque<(u64, PublishHandle)>, printing: &mut bool) -> Result<(), CliError> {
    if let Some((number, handle)) = waiting.pop_front() {
        let result = handle.await.map_err(|e| at_line(number, e.into()))?;
        if *printing {
            match print_result(result) {
                Err(CliError::Gone) => *printing = false,
                other => other?,
            }
        }
    }
    Ok(())
}

fn at_line(number: u64, error: CliError) -> CliError {
    match error {
        CliError::Gone => CliError::Gone,
        other => CliError::Input(format!("stdin line {number}: {other}")),
    }
}

fn print_result(result: PublishResult) -> Result<(), CliError> {
    let duplicate = if result.duplicate { " duplicate" } else { "" };
    print_line(format_args!(
        "partition={} offset={} message_id={}{duplicate}",
        result.partition, result.offset, result.message_id
    ))
}
