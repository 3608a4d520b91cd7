//! `mini-pubsub subscribe`: prints messages as they come, acking them with --ack. Without
//! it, it holds them (their leases extended, so none prints twice) until it exits; its
//! stream then closes and the broker gives them at once to other consumers (the delivery
//! counts as an attempt, as any unacknowledged one does).

use tokio_stream::StreamExt;

use mini_pubsub::client::{Client, ReceivedMessage, StartPosition, SubscribeTarget, SubscriberSettings};

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
    // With --count N, no more than N messages are leased: the broker counts a delivery that
    // comes back unprinted as an attempt.
    let lease_max = args.count.map_or(args.max_outstanding, |n| args.max_outstanding.min(n.min(1000) as u32));
    let settings = SubscriberSettings { max_outstanding_messages: lease_max, ..Default::default() };
    let mut subscriber = client.subscribe(target, settings).await?;
    let subscription = subscriber.subscription();
    // Bounded by flow control: held messages stay leased, and the broker leases at most
    // `lease_max` at once.
    let mut held: Vec<ReceivedMessage> = Vec::new();
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
            let line = if args.json { message_json(&subscription, &received) } else { message_line(&received) };
            print_line(line)?;
            printed += 1;
            if args.ack {
                received.ack().await;
            } else {
                held.push(received);
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
