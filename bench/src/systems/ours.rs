//! mini-pubsub through its own client library: a [`Publisher`] for single publishes, and
//! [`Subscriber`]s (acks batched by the library, 100 per request). The one thing the
//! library cannot express is "send exactly these 100 messages as one request" (its
//! publisher makes its own batches), so the batched workload calls the generated `Publish`
//! directly, through the library's [`Client::pubsub_client`].

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures::FutureExt;
use mini_pubsub::client::{
    pb, Client, ClientTls, ConnectOptions, DeliveryMode, PublisherSettings, StartPosition, SubscribeTarget, Subscriber,
    SubscriberSettings, SubscriptionSettings, TopicSettings,
};

use super::{take_ready, Ack, Layout};

const TOPIC: &str = "bench";
/// How long set-up waits for a cluster's first leader.
const LEADER_WAIT: Duration = Duration::from_secs(15);

/// The broker's address; every sender and consumer opens a connection of its own, as
/// separate processes would.
pub struct Ours {
    url: String,
    options: ConnectOptions,
}

impl Ours {
    /// Connects to the broker (the leader, given a cluster's nodes: the client library finds
    /// it) and makes the topic and subscriptions.
    pub async fn connect(addrs: &[SocketAddr], ca: Option<&std::path::Path>, layout: &Layout) -> anyhow::Result<Ours> {
        let scheme = if ca.is_some() { "https" } else { "http" };
        let urls: Vec<String> = addrs.iter().map(|a| format!("{scheme}://{a}")).collect();
        let url = urls.join(",");
        let options = match ca {
            Some(ca) => ConnectOptions::default().tls(ClientTls::from_files(ca, None)?),
            None => ConnectOptions::default(),
        };
        let topic = TopicSettings { partitions: Some(layout.partitions), ..Default::default() };
        // A new cluster elects its leader within a second or so: until then calls are
        // refused with UNAVAILABLE.
        let started = std::time::Instant::now();
        let client = loop {
            let attempt = async {
                let client = Client::connect_with(url.clone(), &options).await?;
                match client.create_topic(TOPIC, &topic).await {
                    Ok(_) => Ok(client),
                    Err(e) if e.to_string().contains("already exists") => Ok(client),
                    Err(e) => Err(e),
                }
            };
            match attempt.await {
                Ok(client) => break client,
                Err(e) if started.elapsed() < LEADER_WAIT => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e).context("create topic"),
            }
        };
        for (group, &members) in layout.groups.iter().enumerate() {
            // Several members on a partitioned topic split its partitions (Kafka-like);
            // a single member has the subscription to itself either way.
            let delivery_mode = if members > 1 { DeliveryMode::Exclusive } else { DeliveryMode::Shared };
            let settings = SubscriptionSettings {
                ack_deadline_seconds: Some(60),
                start_position: StartPosition::Earliest,
                delivery_mode,
                ..Default::default()
            };
            client.create_subscription(&subscription(group), TOPIC, &settings).await.context("create subscription")?;
        }
        Ok(Ours { url, options })
    }

    pub async fn sender(&self, in_flight: Option<usize>) -> anyhow::Result<OursSender> {
        let client = Client::connect_with(self.url.clone(), &self.options).await?;
        // No linger: a batch goes as soon as a slot of the window is free, holding what
        // queued meanwhile, so one message in flight is sent alone and at once.
        let mut settings = PublisherSettings { linger: Duration::ZERO, ..Default::default() };
        if let Some(in_flight) = in_flight {
            settings.batches_in_flight = in_flight;
        }
        let publisher = client.publisher(TOPIC, settings)?;
        Ok(OursSender { publisher, raw: client.pubsub_client() })
    }

    pub async fn creator(&self) -> anyhow::Result<OursCreator> {
        Ok(OursCreator { client: Client::connect_with(self.url.clone(), &self.options).await? })
    }

    pub async fn consumer(&self, group: usize, member: usize) -> anyhow::Result<OursConsumer> {
        let settings = SubscriberSettings { client_id: Some(format!("bench-{group}-{member}")), ..Default::default() };
        let client = Client::connect_with(self.url.clone(), &self.options).await?;
        let subscriber = client.subscribe(SubscribeTarget::subscription(subscription(group)), settings).await?;
        Ok(OursConsumer { subscriber, scratch: Vec::new() })
    }
}

fn subscription(group: usize) -> String {
    format!("bench-{group}")
}

pub struct OursCreator {
    client: Client,
}

impl OursCreator {
    pub async fn create_topic(&self, i: usize) -> anyhow::Result<()> {
        self.client.create_topic(&format!("t{i}"), &TopicSettings::default()).await?;
        Ok(())
    }

    pub async fn create_subscription(&self, i: usize) -> anyhow::Result<()> {
        let settings = SubscriptionSettings::default();
        self.client.create_subscription(&format!("s{i}"), &format!("t{i}"), &settings).await?;
        Ok(())
    }
}

pub struct OursSender {
    publisher: mini_pubsub::client::Publisher,
    raw: pb::pub_sub_client::PubSubClient<mini_pubsub::client::Connection>,
}

impl OursSender {
    pub async fn send(&self, value: Bytes) -> anyhow::Result<Ack> {
        let handle = self.publisher.publish(value).await?;
        Ok(async move {
            handle.await?;
            Ok(())
        }
        .boxed())
    }

    /// One message in one `PublishRequest` of the generated client, for the sync workload
    /// under `--sync-via-generated` (the library's `Publisher` is the default).
    pub fn send_generated(&self, value: Bytes) -> Ack {
        self.send_batch(vec![value])
    }

    /// One `PublishRequest` carrying every value, without idempotency keys.
    pub fn send_batch(&self, values: Vec<Bytes>) -> Ack {
        let count = values.len();
        let messages = values.into_iter().map(|value| pb::OutgoingMessage { value, ..Default::default() }).collect();
        let request = pb::PublishRequest { topic: TOPIC.to_string(), messages, ..Default::default() };
        let mut raw = self.raw.clone();
        async move {
            let response = raw.publish(request).await?.into_inner();
            anyhow::ensure!(response.results.len() == count, "{count} published, {} answered", response.results.len());
            Ok(())
        }
        .boxed()
    }

    pub async fn close(self) -> anyhow::Result<()> {
        Ok(self.publisher.shutdown().await?)
    }
}

pub struct OursConsumer {
    subscriber: Subscriber,
    scratch: Vec<mini_pubsub::client::ReceivedMessage>,
}

impl OursConsumer {
    pub async fn receive(&mut self, max: usize, wait: Duration, out: &mut Vec<Bytes>) -> anyhow::Result<()> {
        take_ready(&mut self.subscriber, max, wait, &mut self.scratch).await?;
        for message in self.scratch.drain(..) {
            out.push(message.value.clone());
            // Queues the ack; the library sends 100 per request (or after 50 ms).
            message.ack().await;
        }
        Ok(())
    }

    /// Sends the queued acks and waits for the broker to confirm them.
    pub async fn close(self) -> anyhow::Result<()> {
        Ok(self.subscriber.shutdown().await?)
    }
}
