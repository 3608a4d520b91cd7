//! Redis Streams through the `redis` crate (tokio, multiplexed connections): XADD to the
//! key `bench` (a pipeline of XADDs for a batch), and one consumer group per group with
//! XREADGROUP; the ids of each read batch are acked with one XACK, sent while the next read
//! is awaited (both on the consumer's connection, so in order). Redis streams have no
//! partitions: the 4-member group is one stream with one group of 4 consumers.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures::FutureExt;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::AsyncCommands;

use super::{Ack, Layout};

const KEY: &str = "bench";
const FIELD: &str = "v";
/// Longest wait for any one reply (the crate's default, 500 ms, is too short for an
/// fsync-always pipeline under load).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Redis {
    client: redis::Client,
}

impl Redis {
    pub async fn connect(addr: SocketAddr, layout: &Layout) -> anyhow::Result<Redis> {
        let client = redis::Client::open(format!("redis://{addr}/"))?;
        let redis = Redis { client };
        let mut conn = redis.connection().await?;
        for group in 0..layout.groups.len() {
            redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(KEY)
                .arg(group_name(group))
                .arg("0")
                .arg("MKSTREAM")
                .query_async::<()>(&mut conn)
                .await
                .context("XGROUP CREATE")?;
        }
        Ok(redis)
    }

    /// A connection of its own.
    async fn connection(&self) -> anyhow::Result<MultiplexedConnection> {
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(RESPONSE_TIMEOUT));
        Ok(self.client.get_multiplexed_async_connection_with_config(&config).await?)
    }

    pub async fn sender(&self) -> anyhow::Result<RedisSender> {
        Ok(RedisSender { conn: self.connection().await? })
    }

    pub async fn creator(&self) -> anyhow::Result<RedisCreator> {
        Ok(RedisCreator { conn: self.connection().await? })
    }

    pub async fn consumer(&self, group: usize, member: usize) -> anyhow::Result<RedisConsumer> {
        Ok(RedisConsumer {
            conn: self.connection().await?,
            group: group_name(group),
            name: format!("c{member}"),
            acking: None,
        })
    }
}

fn group_name(group: usize) -> String {
    format!("bench-{group}")
}

pub struct RedisSender {
    conn: MultiplexedConnection,
}

impl RedisSender {
    /// The XADD goes out when the ack future is first polled (the connection pipelines
    /// every request sent before their replies come).
    pub fn send(&self, value: Bytes) -> Ack {
        let mut conn = self.conn.clone();
        async move {
            redis::cmd("XADD").arg(KEY).arg("*").arg(FIELD).arg(&value[..]).query_async::<String>(&mut conn).await?;
            Ok(())
        }
        .boxed()
    }

    /// A pipeline of one XADD per value (not a MULTI transaction).
    pub fn send_batch(&self, values: Vec<Bytes>) -> Ack {
        let mut conn = self.conn.clone();
        async move {
            let mut pipe = redis::pipe();
            for value in &values {
                pipe.cmd("XADD").arg(KEY).arg("*").arg(FIELD).arg(&value[..]);
            }
            let ids: Vec<String> = pipe.query_async(&mut conn).await?;
            anyhow::ensure!(ids.len() == values.len(), "{} added, {} answered", values.len(), ids.len());
            Ok(())
        }
        .boxed()
    }
}

pub struct RedisCreator {
    conn: MultiplexedConnection,
}

impl RedisCreator {
    /// The stream, with a first group (a stream is made by its first use).
    pub async fn create_topic(&self, i: usize) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        let command = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(format!("t{i}"))
            .arg(format!("g{i}"))
            .arg("$")
            .arg("MKSTREAM")
            .to_owned();
        command.query_async::<()>(&mut conn).await.context("XGROUP CREATE MKSTREAM")?;
        Ok(())
    }

    pub async fn create_subscription(&self, i: usize) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        let command = redis::cmd("XGROUP").arg("CREATE").arg(format!("t{i}")).arg(format!("s{i}")).arg("$").to_owned();
        command.query_async::<()>(&mut conn).await.context("XGROUP CREATE")?;
        Ok(())
    }
}

pub struct RedisConsumer {
    conn: MultiplexedConnection,
    group: String,
    name: String,
    /// The XACK of the previous batch, running.
    acking: Option<tokio::task::JoinHandle<redis::RedisResult<i64>>>,
}

impl RedisConsumer {
    pub async fn receive(&mut self, max: usize, wait: Duration, out: &mut Vec<Bytes>) -> anyhow::Result<()> {
        // BLOCK 0 would wait for ever.
        let block_ms = wait.as_millis().clamp(1, 60_000) as usize;
        let options = StreamReadOptions::default().group(&self.group, &self.name).count(max).block(block_ms);
        let reply: Option<StreamReadReply> = self.conn.xread_options(&[KEY], &[">"], &options).await?;
        self.finish_ack().await?;
        let Some(reply) = reply else { return Ok(()) };
        let mut ids = Vec::new();
        for entry in reply.keys.into_iter().flat_map(|key| key.ids) {
            match entry.map.get(FIELD) {
                Some(redis::Value::BulkString(value)) => out.push(Bytes::copy_from_slice(value)),
                other => anyhow::bail!("entry {} has no value field: {other:?}", entry.id),
            }
            ids.push(entry.id);
        }
        if !ids.is_empty() {
            let mut conn = self.conn.clone();
            let (key, group) = (KEY, self.group.clone());
            self.acking = Some(tokio::spawn(async move { conn.xack(key, group, &ids).await }));
        }
        Ok(())
    }

    /// Waits for the XACK in flight, if any.
    async fn finish_ack(&mut self) -> anyhow::Result<()> {
        if let Some(acking) = self.acking.take() {
            acking.await?.context("XACK")?;
        }
        Ok(())
    }

    pub async fn close(mut self) -> anyhow::Result<()> {
        self.finish_ack().await
    }
}
