//! `mini-pubsub subscribe`: prints messages as they come, acking them with --ack. Without
//! it, it holds them (their leases extended, so none prints twice) until it exits; its
//! stream then closes and the broker gives them at once to other consumers (the delivery
//! counts as an attempt, as any unacknowledged one does).

use tokio_stream::StreamExt;

use mini_pubsub::client::{
    pb, Client, ClientError, Message, ReceivedMessage, StartPosition, SubscribeTarget, SubscriberSettings,
};

/// The most messages one Pull returns (the broker's default `pull_messages_max`).
const PULL_MESSAGES_MAX: u32 = 1000;

use super::format::{message_json, message_line};
use super::{print_line, CliError};

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["subscription", "topic"]))]
pub struct SubscribeArgs {
    /// The subscription to join as one more competing consumer.
    subscription: Option<String>,
    /// Tap this topic instead, through an ephemeral subscription deleted on exit.
    #[arg(long)]
    topic: Option<String>,
    /// With --topic: start at the earliest retained message (the default), or only new ones.
    #[arg(long, value_enum, requires = "topic")]
    start: Option<Start>,
    /// Acknowledge each message once printed. Without it messages are held unacknowledged
    /// until exit, then go back to the subscription for other consumers.
    #[arg(long)]
    ack: bool,
    /// Print one JSON object per message instead of a line of text.
    #[arg(long)]
    json: bool,
    /// Exit after this many messages.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Most messages leased to this command at once (1 to 1000). Without --ack this is also
    /// the most it prints, since held messages stay leased.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1000))]
    max_outstanding: u32,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Start {
    Earliest,
    Latest,
}

pub async fn run(client: &Client, args: SubscribeArgs) -> Result<(), CliError> {
    if let (Some(name), Some(count)) = (&args.subscription, args.count) {
        return pull(client, name, count, &args).await;
    }
    let target = match (&args.subscription, &args.topic) {
        (Some(name), _) => SubscribeTarget::subscription(name.clone()),
        (None, Some(topic)) => SubscribeTarget::Topic {
            topic: topic.clone(),
            start_position: match args.start {
                Some(Start::Latest) => StartPosition::Latest,
                Some(Start::Earliest) | None => StartPosition::Earliest,
            },
            ack_deadline_seconds: 30,
        },
        (None, None) => unreachable!("clap requires a subscription or --topic"),
    };
    // With --count N (here only with --topic), no more than N messages are leased.
    let lease_max = args.count.map_or(args.max_outstanding, |n| args.max_outstanding.min(n.min(1000) as u32));
    // Held messages (no --ack) keep their leases for as long as the command runs, not the
    // library's default hour, after which they would come back and print again.
    let max_lease_extension = std::time::Duration::from_secs(365 * 24 * 3600);
    let settings =
        SubscriberSettings { max_outstanding_messages: lease_max, max_lease_extension, ..Default::default() };
    let mut subscriber = client.subscribe(target, settings).await?;
    // Bounded by flow control: held messages stay leased, and the broker leases at most
    // `lease_max` at once. Keyed by place, so a message delivered again (a broker restart
    // loses leases) replaces its stale copy instead of adding one.
    let mut held: std::collections::BTreeMap<(u32, u64), ReceivedMessage> = Default::default();
    let mut printed = 0u64;
    let outcome = async {
        let interrupted = tokio::signal::ctrl_c();
        tokio::pin!(interrupted);
        // Bounded by --count when given; otherwise it runs until Ctrl-C or the stream ends.
        while args.count.is_none_or(|n| printed < n) {
            let next = tokio::select! {
                _ = &mut interrupted => break,
                next = subscriber.next() => next,
            };
            let Some(received) = next else { break };
            let received = received?;
            let line = if args.json {
                message_json(&subscriber.subscription(), &received, received.ack_id())
            } else {
                message_line(&received)
            };
            print_line(line)?;
            printed += 1;
            if args.ack {
                received.ack().await;
            } else {
                held.insert((received.partition, received.offset), received);
            }
        }
        Ok::<(), CliError>(())
    }
    .await;
    // Shutdown ends the stream with `leave`, which gives the held messages back at once; a
    // nack first would have the broker redeliver them to this very stream before it ends,
    // costing a second attempt.
    let stopped = subscriber.shutdown().await;
    drop(held);
    outcome?;
    Ok(stopped?)
}

/// How long `--count` waits between Pulls that found nothing.
const PULL_IDLE_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// `subscribe SUBSCRIPTION --count N` pulls (unary), asking each time for no more than it
/// still has to print: a stream would be leased more while it acks (flow control refills),
/// and the messages it then closes on would count a delivery attempt without being seen.
/// With `--ack` each Pull's messages are acked once printed; without it they are nacked on
/// exit, so they go back at once.
async fn pull(client: &Client, subscription: &str, count: u64, args: &SubscribeArgs) -> Result<(), CliError> {
    let mut pubsub = client.pubsub_client();
    let mut unacked: Vec<String> = Vec::new();
    let mut printed = 0u64;
    let outcome = async {
        let interrupted = tokio::signal::ctrl_c();
        tokio::pin!(interrupted);
        // Bounded by --count; it waits (between empty Pulls) until Ctrl-C otherwise.
        while printed < count {
            let max_messages = (count - printed).min(u64::from(PULL_MESSAGES_MAX)) as u32;
            let request = pb::PullRequest { subscription: subscription.to_string(), max_messages };
            let pulled = tokio::select! {
                _ = &mut interrupted => break,
                pulled = pubsub.pull(request) => pulled.map_err(ClientError::from)?.into_inner(),
            };
            if pulled.received_messages.is_empty() {
                tokio::select! {
                    _ = &mut interrupted => break,
                    () = tokio::time::sleep(PULL_IDLE_WAIT) => continue,
                }
            }
            let mut ack_ids = Vec::new();
            for received in pulled.received_messages {
                let (message, ack_id) = Message::from_pulled(received);
                let line =
                    if args.json { message_json(subscription, &message, &ack_id) } else { message_line(&message) };
                print_line(line)?;
                printed += 1;
                ack_ids.push(ack_id);
            }
            if args.ack {
                let request = pb::AckRequest { subscription: subscription.to_string(), ack_ids };
                pubsub.ack(request).await.map_err(ClientError::from)?;
            } else {
                unacked.extend(ack_ids);
            }
        }
        Ok::<(), CliError>(())
    }
    .await;
    if !unacked.is_empty() {
        let request =
            pb::NackRequest { subscription: subscription.to_string(), ack_ids: unacked, ..Default::default() };
        let nacked = pubsub.nack(request).await.map_err(ClientError::from);
        outcome?;
        nacked?;
        return Ok(());
    }
    outcome
}
