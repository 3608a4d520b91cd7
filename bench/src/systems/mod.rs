//! The clients of the three systems behind one shape, so every workload is written once:
//! a [`Driver`] prepares the topic and its consumer groups, a [`Sender`] publishes (one
//! message, or a batch, each answered by an [`Ack`] future), and a [`Consumer`] receives and
//! acknowledges in batches.
//!
//! How the words map:
//!
//! | here | mini-pubsub | NATS JetStream | Redis Streams |
//! |---|---|---|---|
//! | topic | topic (1 or 4 partitions) | stream `bench` on subject `bench` | stream key `bench` |
//! | group | subscription | durable pull consumer | consumer group |
//! | member | `Subscriber` | worker pulling from the shared consumer | consumer name in the group |

mod nats;
mod ours;
mod redis;

pub use nats::STREAM;

use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::plan::{Class, System};
use crate::servers::ServerProcess;

/// Resolves when the server has acknowledged what was sent.
pub type Ack = BoxFuture<'static, anyhow::Result<()>>;

/// The topic and consumer groups a case needs, made before anything is published so
/// every group sees every message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Partitions of the topic (mini-pubsub only: the others have none).
    pub partitions: u32,
    /// Consumer groups, each with its count of members.
    pub groups: Vec<usize>,
}

impl Layout {
    /// Only a topic.
    pub fn publish_only() -> Self {
        Layout { partitions: 1, groups: vec![] }
    }
}

/// A connected client of one system.
pub enum Driver {
    Ours(ours::Ours),
    Nats(nats::Nats),
    Redis(redis::Redis),
}

impl Driver {
    /// Connects to `server` and makes `layout`.
    pub async fn connect(server: &ServerProcess, class: Class, layout: &Layout) -> anyhow::Result<Driver> {
        let addrs = &server.addrs;
        Ok(match server.system {
            System::Ours | System::OursRecorded | System::OursBaseline | System::OursCluster | System::OursTls => {
                Driver::Ours(ours::Ours::connect(addrs, server.ca().as_deref(), layout).await?)
            }
            System::Nats | System::NatsCluster => Driver::Nats(nats::Nats::connect(addrs, class, layout).await?),
            System::Redis => Driver::Redis(redis::Redis::connect(addrs[0], layout).await?),
        })
    }

    /// A new publishing client on the topic; mini-pubsub's keeps `publisher_in_flight`
    /// batches in flight when given.
    pub async fn sender(&self, publisher_in_flight: Option<usize>) -> anyhow::Result<Sender> {
        Ok(match self {
            Driver::Ours(d) => Sender::Ours(d.sender(publisher_in_flight).await?),
            Driver::Nats(d) => Sender::Nats(d.sender().await?),
            Driver::Redis(d) => Sender::Redis(d.sender().await?),
        })
    }

    /// A new client that makes topics and subscriptions (the creates workload).
    pub async fn creator(&self) -> anyhow::Result<Creator> {
        Ok(match self {
            Driver::Ours(d) => Creator::Ours(d.creator().await?),
            Driver::Nats(d) => Creator::Nats(d.creator().await?),
            Driver::Redis(d) => Creator::Redis(d.creator().await?),
        })
    }

    /// A new member of group `group` (its index in the layout).
    pub async fn consumer(&self, group: usize, member: usize) -> anyhow::Result<Consumer> {
        Ok(match self {
            Driver::Ours(d) => Consumer::Ours(d.consumer(group, member).await?),
            Driver::Nats(d) => Consumer::Nats(Box::new(d.consumer(group).await?)),
            Driver::Redis(d) => Consumer::Redis(d.consumer(group, member).await?),
        })
    }
}

/// A client that makes the `i`th topic (`t{i}`) and its subscription (`s{i}`): a stream
/// and a durable consumer in NATS; in Redis, whose streams are made by their first use, the
/// stream with a first group (`XGROUP CREATE t{i} s{i} $ MKSTREAM`), then a second group.
pub enum Creator {
    Ours(ours::OursCreator),
    Nats(nats::NatsCreator),
    Redis(redis::RedisCreator),
}

impl Creator {
    pub async fn create_topic(&self, i: usize) -> anyhow::Result<()> {
        match self {
            Creator::Ours(c) => c.create_topic(i).await,
            Creator::Nats(c) => c.create_topic(i).await,
            Creator::Redis(c) => c.create_topic(i).await,
        }
    }

    pub async fn create_subscription(&self, i: usize) -> anyhow::Result<()> {
        match self {
            Creator::Ours(c) => c.create_subscription(i).await,
            Creator::Nats(c) => c.create_subscription(i).await,
            Creator::Redis(c) => c.create_subscription(i).await,
        }
    }
}

/// A publishing client.
pub enum Sender {
    Ours(ours::OursSender),
    Nats(nats::NatsSender),
    Redis(redis::RedisSender),
}

impl Sender {
    /// Sends one message; returns once it is on its way (waiting if the client's queue is
    /// full), with a future for its acknowledgement.
    pub async fn send(&self, value: Bytes) -> anyhow::Result<Ack> {
        match self {
            Sender::Ours(s) => s.send(value).await,
            Sender::Nats(s) => s.send(value).await,
            Sender::Redis(s) => Ok(s.send(value)),
        }
    }

    /// Sends one message for the one-in-flight workload: as [`Sender::send`], except that
    /// mini-pubsub uses its generated client when `library` is false (`--sync-via-generated`).
    pub async fn send_sync(&self, value: Bytes, library: bool) -> anyhow::Result<Ack> {
        match self {
            Sender::Ours(s) if !library => Ok(s.send_generated(value)),
            _ => self.send(value).await,
        }
    }

    /// Sends `values` as one batch (one request where the system has such a thing).
    pub async fn send_batch(&self, values: Vec<Bytes>) -> anyhow::Result<Ack> {
        match self {
            Sender::Ours(s) => Ok(s.send_batch(values)),
            Sender::Nats(s) => s.send_batch(values).await,
            Sender::Redis(s) => Ok(s.send_batch(values)),
        }
    }

    /// Sends what is queued and stops.
    pub async fn close(self) -> anyhow::Result<()> {
        match self {
            Sender::Ours(s) => s.close().await,
            Sender::Nats(s) => s.close().await,
            Sender::Redis(_) => Ok(()),
        }
    }
}

/// A member of a consumer group.
pub enum Consumer {
    Ours(ours::OursConsumer),
    // Boxed: its pull stream is several times larger than the others.
    Nats(Box<nats::NatsConsumer>),
    Redis(redis::RedisConsumer),
}

impl Consumer {
    /// Waits up to `wait` for messages and appends at most `max` values to `out`, acking
    /// them (in batches: the ack of this batch may go out with a later one).
    pub async fn receive(&mut self, max: usize, wait: Duration, out: &mut Vec<Bytes>) -> anyhow::Result<()> {
        match self {
            Consumer::Ours(c) => c.receive(max, wait, out).await,
            Consumer::Nats(c) => c.receive(max, wait, out).await,
            Consumer::Redis(c) => c.receive(max, wait, out).await,
        }
    }

    /// Sends the acks still queued, and waits for them where the client can.
    pub async fn close(self) -> anyhow::Result<()> {
        match self {
            Consumer::Ours(c) => c.close().await,
            Consumer::Nats(c) => c.close().await,
            Consumer::Redis(c) => c.close().await,
        }
    }
}

/// Takes from a stream what is ready now, after waiting up to `wait` for the first item.
/// Shared by the two clients whose consumers are streams.
async fn take_ready<S, T, E>(stream: &mut S, max: usize, wait: Duration, out: &mut Vec<T>) -> anyhow::Result<()>
where
    S: futures::Stream<Item = Result<T, E>> + Unpin,
    E: Into<anyhow::Error>,
{
    use futures::{FutureExt, StreamExt};
    let first = match tokio::time::timeout(wait, stream.next()).await {
        Err(_elapsed) => return Ok(()),
        Ok(None) => anyhow::bail!("the consumer's stream ended"),
        Ok(Some(item)) => item.map_err(Into::into)?,
    };
    out.push(first);
    // Bounded by `max`: each turn takes one ready item.
    while out.len() < max {
        match stream.next().now_or_never() {
            Some(Some(item)) => out.push(item.map_err(Into::into)?),
            Some(None) | None => break,
        }
    }
    Ok(())
}
