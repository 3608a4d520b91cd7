//! `mini-pubsub topic ...` and `mini-pubsub sub ...`: the Admin RPCs with their main options.

use std::time::Duration;

use clap::Subcommand;

use mini_pubsub::client::{
    Client, DeadLetterPolicy, DeliveryMode, RetryPolicy, StartPosition, SubscriptionSettings, TopicSettings,
};

use super::format;
use super::{parse_duration, print_line, CliError};

#[derive(Subcommand)]
pub enum TopicCommand {
    /// Creates a topic and prints it.
    Create {
        name: String,
        /// Partitions (default: the broker's --default-partitions).
        #[arg(long)]
        partitions: Option<u32>,
        /// How long an idempotency key is remembered, 1s to 24h (default 120s).
        #[arg(long, value_parser = parse_duration)]
        dedupe_window: Option<Duration>,
    },
    /// Lists topics, one per line.
    List,
    /// Prints a topic: partitions with their offsets, subscriptions.
    Get { name: String },
    /// Deletes a topic.
    Delete {
        name: String,
        /// Delete its subscriptions too (refused without it when it has any).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
pub enum SubCommand {
    /// Creates a subscription and prints it.
    Create(CreateSubArgs),
    /// Lists subscriptions, one per line.
    List {
        /// Only the subscriptions of this topic.
        #[arg(long)]
        topic: Option<String>,
    },
    /// Prints a subscription's settings.
    Get { name: String },
    /// Deletes a subscription (its open streams end).
    Delete { name: String },
    /// Prints backlog, leases and per-partition committed offsets.
    Stats { name: String },
}

#[derive(clap::Args)]
pub struct CreateSubArgs {
    name: String,
    /// The topic it reads.
    #[arg(long)]
    topic: String,
    /// Lease length in seconds, 1 to 600 (default: the broker's, 30).
    #[arg(long)]
    ack_deadline: Option<u32>,
    /// Where it starts reading.
    #[arg(long, value_enum, default_value_t = Start::Earliest)]
    start: Start,
    /// Retry policy: backoff after the first failed delivery (0 to 600s; default 1s when
    /// only --max-backoff is given). Without either, redelivery is immediate.
    #[arg(long, value_parser = parse_duration)]
    min_backoff: Option<Duration>,
    /// Retry policy: longest backoff (default 60s when only --min-backoff is given).
    #[arg(long, value_parser = parse_duration)]
    max_backoff: Option<Duration>,
    /// Dead-letter topic: where messages go after --max-delivery-attempts.
    #[arg(long)]
    dead_letter_topic: Option<String>,
    /// Deliveries before dead-lettering, 1 to 100 (default 5).
    #[arg(long, requires = "dead_letter_topic")]
    max_delivery_attempts: Option<u32>,
    /// Deliver each key's messages in order, one at a time.
    #[arg(long)]
    ordering: bool,
    /// shared: members compete for messages; exclusive: members share partitions.
    #[arg(long, value_enum, default_value_t = Mode::Shared)]
    mode: Mode,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Start {
    Earliest,
    Latest,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Mode {
    Shared,
    Exclusive,
}

pub async fn topic(client: &Client, command: TopicCommand) -> Result<(), CliError> {
    match command {
        TopicCommand::Create { name, partitions, dedupe_window } => {
            let settings = TopicSettings { partitions, dedupe_window };
            print_line(format::topic(&client.create_topic(&name, &settings).await?))
        }
        TopicCommand::List => {
            for topic in client.list_topics().await? {
                print_line(format::topic_summary(&topic))?;
            }
            Ok(())
        }
        TopicCommand::Get { name } => print_line(format::topic(&client.get_topic(&name).await?)),
        TopicCommand::Delete { name, force } => {
            let deleted = client.delete_topic(&name, force).await?;
            print_line(format_args!("deleted topic {name}"))?;
            for subscription in deleted {
                print_line(format_args!("deleted subscription {subscription}"))?;
            }
            Ok(())
        }
    }
}

pub async fn sub(client: &Client, command: SubCommand) -> Result<(), CliError> {
    match command {
        SubCommand::Create(args) => {
            let settings = subscription_settings(&args);
            print_line(format::subscription(&client.create_subscription(&args.name, &args.topic, &settings).await?))
        }
        SubCommand::List { topic } => {
            for subscription in client.list_subscriptions(topic.as_deref()).await? {
                print_line(format::subscription_summary(&subscription))?;
            }
            Ok(())
        }
        SubCommand::Get { name } => print_line(format::subscription(&client.get_subscription(&name).await?)),
        SubCommand::Delete { name } => {
            client.delete_subscription(&name).await?;
            print_line(format_args!("deleted subscription {name}"))
        }
        SubCommand::Stats { name } => print_line(format::stats(&client.subscription_stats(&name).await?)),
    }
}

fn subscription_settings(args: &CreateSubArgs) -> SubscriptionSettings {
    let retry_policy = (args.min_backoff.is_some() || args.max_backoff.is_some())
        .then_some(RetryPolicy { minimum_backoff: args.min_backoff, maximum_backoff: args.max_backoff });
    let dead_letter_policy = args
        .dead_letter_topic
        .clone()
        .map(|topic| DeadLetterPolicy { topic, max_delivery_attempts: args.max_delivery_attempts });
    SubscriptionSettings {
        ack_deadline_seconds: args.ack_deadline,
        start_position: match args.start {
            Start::Earliest => StartPosition::Earliest,
            Start::Latest => StartPosition::Latest,
        },
        retry_policy,
        dead_letter_policy,
        enable_message_ordering: args.ordering,
        delivery_mode: match args.mode {
            Mode::Shared => DeliveryMode::Shared,
            Mode::Exclusive => DeliveryMode::Exclusive,
        },
    }
}
