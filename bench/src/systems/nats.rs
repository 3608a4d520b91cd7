//! NATS JetStream through `async-nats`: a stream `bench` (memory or file storage) on the
//! subject `bench`; publishes answered by their ack futures; one durable pull consumer per
//! group. A consumer with one member uses AckPolicy::All and acks the last message of each
//! received batch (its batched ack); one shared by several workers uses AckPolicy::Explicit
//! and acks every message, since an "all" ack from one worker would also ack messages
//! another worker is still holding.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use futures::FutureExt;

use async_nats::jetstream::{self, consumer, stream};

use super::{take_ready, Ack, Layout};
use crate::plan::Class;

pub const STREAM: &str = "bench";
/// How long set-up waits for a cluster's JetStream to take a stream.
const CLUSTER_WAIT: Duration = Duration::from_secs(20);
const SUBJECT: &str = "bench";
/// Deliveries a consumer may have unacked, as mini-pubsub's subscriber default.
const MAX_ACK_PENDING: i64 = 1000;

pub struct Nats {
    urls: Vec<String>,
    storage: stream::StorageType,
    /// Members of each group.
    groups: Vec<usize>,
}

impl Nats {
    /// Connects (to every server given: a cluster's) and makes the stream, with one replica
    /// per server, and its consumers.
    pub async fn connect(addrs: &[SocketAddr], class: Class, layout: &Layout) -> anyhow::Result<Nats> {
        let urls: Vec<String> = addrs.iter().map(|a| format!("nats://{a}")).collect();
        let js = context(&urls).await?;
        let storage = match class {
            Class::Memory => stream::StorageType::Memory,
            Class::NoFsync | Class::Fsync => stream::StorageType::File,
        };
        let config = stream::Config {
            name: STREAM.to_string(),
            subjects: vec![SUBJECT.to_string()],
            storage,
            num_replicas: addrs.len(),
            ..Default::default()
        };
        // A new cluster elects its JetStream meta leader first: until then creating fails.
        let started = std::time::Instant::now();
        let created = loop {
            match js.create_stream(config.clone()).await {
                Ok(created) => break created,
                Err(_) if started.elapsed() < CLUSTER_WAIT => tokio::time::sleep(Duration::from_millis(200)).await,
                Err(e) => return Err(e).context("create stream"),
            }
        };
        for (group, &members) in layout.groups.iter().enumerate() {
            let ack_policy = if members > 1 { consumer::AckPolicy::Explicit } else { consumer::AckPolicy::All };
            let config = consumer::pull::Config {
                durable_name: Some(durable(group)),
                ack_policy,
                ack_wait: Duration::from_secs(60),
                max_ack_pending: MAX_ACK_PENDING,
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            };
            created.create_consumer(config).await.context("create consumer")?;
        }
        Ok(Nats { urls, storage, groups: layout.groups.clone() })
    }

    pub async fn sender(&self) -> anyhow::Result<NatsSender> {
        let js = context(&self.urls).await?;
        Ok(NatsSender { js })
    }

    pub async fn creator(&self) -> anyhow::Result<NatsCreator> {
        Ok(NatsCreator { js: context(&self.urls).await?, storage: self.storage })
    }

    pub async fn consumer(&self, group: usize) -> anyhow::Result<NatsConsumer> {
        let js = context(&self.urls).await?;
        let pull: consumer::PullConsumer = js
            .get_stream(STREAM)
            .await?
            .get_consumer(&durable(group))
            .await
            .map_err(|e| anyhow::anyhow!("get consumer: {e}"))?;
        let messages = pull.messages().await?;
        let ack_all = self.groups.get(group).is_some_and(|&members| members <= 1);
        Ok(NatsConsumer { js, messages, ack_all, scratch: Vec::new() })
    }
}

/// A JetStream context on a connection of its own. Publishes wait (rather than fail) when
/// the client already has its most unanswered publishes out.
async fn context(urls: &[String]) -> anyhow::Result<jetstream::Context> {
    let client = async_nats::connect(urls).await.with_context(|| format!("connect to {}", urls.join(",")))?;
    Ok(jetstream::ContextBuilder::new().backpressure_on_inflight(true).build(client))
}

fn durable(group: usize) -> String {
    format!("bench-{group}")
}

pub struct NatsCreator {
    js: jetstream::Context,
    storage: stream::StorageType,
}

impl NatsCreator {
    pub async fn create_topic(&self, i: usize) -> anyhow::Result<()> {
        let name = format!("t{i}");
        let config =
            stream::Config { name: name.clone(), subjects: vec![name], storage: self.storage, ..Default::default() };
        self.js.create_stream(config).await.context("create stream")?;
        Ok(())
    }

    pub async fn create_subscription(&self, i: usize) -> anyhow::Result<()> {
        let stream = self.js.get_stream(format!("t{i}")).await.context("get stream")?;
        let config = consumer::pull::Config { durable_name: Some(format!("s{i}")), ..Default::default() };
        stream.create_consumer(config).await.context("create consumer")?;
        Ok(())
    }
}

pub struct NatsSender {
    js: jetstream::Context,
}

impl NatsSender {
    pub async fn send(&self, value: Bytes) -> anyhow::Result<Ack> {
        let ack = self.js.publish(SUBJECT, value).await?;
        Ok(async move {
            ack.await?;
            Ok(())
        }
        .boxed())
    }

    /// NATS has no batch request: the values are published back to back and the batch is
    /// answered when every ack is in.
    pub async fn send_batch(&self, values: Vec<Bytes>) -> anyhow::Result<Ack> {
        let mut acks = Vec::with_capacity(values.len());
        for value in values {
            acks.push(self.js.publish(SUBJECT, value).await?.into_future());
        }
        Ok(async move {
            futures::future::try_join_all(acks).await?;
            Ok(())
        }
        .boxed())
    }

    pub async fn close(self) -> anyhow::Result<()> {
        Ok(self.js.client().flush().await?)
    }
}

pub struct NatsConsumer {
    js: jetstream::Context,
    messages: consumer::pull::Stream,
    ack_all: bool,
    scratch: Vec<jetstream::Message>,
}

impl NatsConsumer {
    pub async fn receive(&mut self, max: usize, wait: Duration, out: &mut Vec<Bytes>) -> anyhow::Result<()> {
        take_ready(&mut self.messages, max, wait, &mut self.scratch).await?;
        let count = self.scratch.len();
        for (i, message) in self.scratch.drain(..).enumerate() {
            out.push(message.payload.clone());
            if !self.ack_all || i + 1 == count {
                message.ack().await.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
            }
        }
        Ok(())
    }

    /// Flushes the acks still buffered in the connection.
    pub async fn close(self) -> anyhow::Result<()> {
        Ok(self.js.client().flush().await?)
    }
}
