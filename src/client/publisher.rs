//! The publisher: queues messages, sends them in batches from one background task,
//! retries transient failures, and numbers every message with an idempotency key so a
//! retried batch is stored once.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::client::Client;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::debug;

use super::error::ClientError;
use super::message::{OutgoingMessage, PublishResult};
use super::retry::RetrySettings;

mod batcher;
mod pipeline;

/// The broker's limit on messages in one publish request (`publish_batch_messages_max`).
const BATCH_MESSAGES_LIMIT: usize = 1000;
/// Largest batch: the broker decodes requests of up to 16 MiB; 1 MiB is kept for framing.
const BATCH_BYTES_LIMIT: usize = 15 * 1024 * 1024;
/// Longest linger: past it a publisher would look hung.
const LINGER_LIMIT: Duration = Duration::from_secs(60);
/// Most bytes the queue may hold (the byte bound is a `u32` count of semaphore permits).
const QUEUE_BYTES_LIMIT: usize = u32::MAX as usize;
/// Longest publisher id: the key `{id}-{sequence}` must stay within the broker's 256 bytes.
const PUBLISHER_ID_BYTES_MAX: usize = 200;

/// How a [`Publisher`] batches, bounds its queue and retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublisherSettings {
    /// Prefix of the idempotency keys (`{publisher_id}-{sequence}`, the sequence counting
    /// from 0). Unset: `{host}-{wall clock ms, hex}-{process id}-{n}`, with `n` a process-wide
    /// counter, unique across processes and restarts without any randomness.
    ///
    /// Set it only to something unique to this publisher's life: a new publisher reusing an
    /// id within the topic's dedupe window (120 s by default) has its first messages
    /// answered as duplicates of the old one's, and not stored. That is the point when it
    /// replays the same messages in the same order (a restarted job re-sending its input).
    pub publisher_id: Option<String>,
    /// Most messages in one publish request: 1 to 1000 (the broker's limit). Default 1000.
    pub batch_messages_max: usize,
    /// Most bytes in one publish request (messages as encoded): 1 to 15 MiB. A message
    /// larger than this goes alone in its batch. Default 1 MiB.
    pub batch_bytes_max: usize,
    /// How long the first message of a batch waits for more before the batch is sent:
    /// 0 to 60 s. Default 0: a batch goes as soon as the batch before it is answered, with
    /// every message queued meanwhile (up to the bounds), so batches grow with the load by
    /// themselves and a lone message waits for nothing. A full batch goes at once. A linger
    /// helps only a publisher that can queue a full batch within it: one that waits for its
    /// answers with fewer messages in flight than `batch_messages_max` waits a whole linger
    /// for every batch.
    pub linger: Duration,
    /// Messages waiting to be sent (the batch being sent, at most `batch_messages_max`
    /// more, is not counted). When the queue is full, [`Publisher::publish`] waits for room
    /// (backpressure). At least `batch_messages_max`; default 10 000.
    pub queue_messages_max: usize,
    /// Bytes queued and not yet answered, the batch being sent included: `publish` waits
    /// while a message does not fit, and a message larger than this is refused. At least
    /// `batch_bytes_max`, at most 4 GiB; default 64 MiB.
    pub queue_bytes_max: usize,
    /// Batches sent and not yet answered, at most: 1 to 16 (a broker reads at most 16
    /// unanswered batches of a stream; a cluster node reads one at a time, and the rest wait
    /// in the connection's flow control). Batches go on one PublishStream and are stored in
    /// the order they were sent, across retries too. Default 4.
    pub batches_in_flight: usize,
    /// How long one attempt waits for its answer before it counts as DEADLINE_EXCEEDED
    /// and is retried. Default 30 s.
    pub request_timeout: Duration,
    /// Retries of a batch that failed with a retryable status ([`super::is_retryable`]).
    pub retry: RetrySettings,
}

impl Default for PublisherSettings {
    fn default() -> Self {
        Self {
            publisher_id: None,
            batch_messages_max: BATCH_MESSAGES_LIMIT,
            batch_bytes_max: 1024 * 1024,
            linger: Duration::ZERO,
            queue_messages_max: 10_000,
            queue_bytes_max: 64 * 1024 * 1024,
            batches_in_flight: 4,
            request_timeout: Duration::from_secs(30),
            retry: RetrySettings::default(),
        }
    }
}

impl PublisherSettings {
    /// Refuses settings that cannot work, naming the field and the allowed range.
    pub fn validate(&self) -> Result<(), ClientError> {
        let check = ClientError::check;
        if let Some(id) = &self.publisher_id {
            check(
                !id.is_empty() && id.len() <= PUBLISHER_ID_BYTES_MAX,
                "publisher_id",
                format!("is {} bytes; allowed is 1 to {PUBLISHER_ID_BYTES_MAX}", id.len()),
            )?;
        }
        let messages = self.batch_messages_max;
        check(
            (1..=BATCH_MESSAGES_LIMIT).contains(&messages),
            "batch_messages_max",
            format!("is {messages}; allowed is 1 to {BATCH_MESSAGES_LIMIT}"),
        )?;
        let bytes = self.batch_bytes_max;
        check(
            (1..=BATCH_BYTES_LIMIT).contains(&bytes),
            "batch_bytes_max",
            format!("is {bytes}; allowed is 1 to {BATCH_BYTES_LIMIT} (15 MiB)"),
        )?;
        check(self.linger <= LINGER_LIMIT, "linger", format!("is {:?}; allowed is 0 to 60 s", self.linger))?;
        check(
            self.queue_messages_max >= messages && self.queue_messages_max <= Semaphore::MAX_PERMITS,
            "queue_messages_max",
            format!("is {}; it must be at least batch_messages_max ({messages})", self.queue_messages_max),
        )?;
        check(
            (bytes..=QUEUE_BYTES_LIMIT).contains(&self.queue_bytes_max),
            "queue_bytes_max",
            format!("is {}; allowed is batch_bytes_max ({bytes}) to {QUEUE_BYTES_LIMIT}", self.queue_bytes_max),
        )?;
        let window = crate::server::PUBLISH_STREAM_WINDOW;
        check(
            (1..=window).contains(&self.batches_in_flight),
            "batches_in_flight",
            format!("is {}; allowed is 1 to {window} (the broker's window per stream)", self.batches_in_flight),
        )?;
        check(!self.request_timeout.is_zero(), "request_timeout", "is 0; it must be positive".to_string())?;
        self.retry.validate()
    }

    /// Refuses a retry budget the topic's dedupe window does not cover: a retry sent after
    /// the window has passed since the first attempt is stored again instead of answered as
    /// a duplicate. `retry.total_timeout` and `request_timeout` must be at most half of
    /// `window`, the topic's `dedupe_window` (from [`Client::get_topic`](super::Client::get_topic)).
    ///
    /// The publisher does not check this itself: [`Client::publisher`](super::Client::publisher)
    /// does no IO, so that a publisher can be made, and queue, while the broker is down.
    pub fn validate_for_dedupe_window(&self, window: Duration) -> Result<(), ClientError> {
        let half = window / 2;
        let check = ClientError::check;
        let total = self.retry.total_timeout;
        let rule = format!("at most half the topic's dedupe window ({window:?}), or retries may be stored twice");
        check(total <= half, "retry.total_timeout", format!("is {total:?}; it must be {rule}"))?;
        let request = self.request_timeout;
        check(request <= half, "request_timeout", format!("is {request:?}; it must be {rule}"))
    }
}

/// Counters of what a publisher did, for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublisherStats {
    /// Batches finished (answered, or failed for good).
    pub batches: u64,
    /// Publish requests sent, retries included.
    pub requests: u64,
    /// Requests that failed with a retryable status and were sent again.
    pub retries: u64,
    /// Messages answered with a place (duplicates included).
    pub published: u64,
    /// Messages whose batch failed for good.
    pub failed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
    published: AtomicU64,
    failed: AtomicU64,
}

/// One message waiting in the queue, with what it holds of the queue's bounds.
struct Queued {
    message: crate::wire::pb::OutgoingMessage,
    bytes: usize,
    /// When `publish` queued it (monotonic ms): its retry budget, `retry.total_timeout`,
    /// counts from here, so messages queued behind a failing batch do not each get a
    /// budget of their own.
    queued_ms: u64,
    reply: oneshot::Sender<Result<PublishResult, ClientError>>,
    /// Its share of `queue_bytes_max`, given back when it is answered.
    _bytes_permit: OwnedSemaphorePermit,
}

enum Command {
    Publish(Queued),
    /// Send what is queued now, and answer once everything before this is answered.
    Flush(oneshot::Sender<()>),
}

/// Publishes to one topic in batches. Create it with [`super::Client::publisher`].
///
/// Messages are sent in the order they were queued, in batches on one PublishStream, up to
/// `batches_in_flight` unanswered. When the stream breaks, or a batch fails with a
/// retryable status, every unanswered batch is sent again, unchanged and in order, after a
/// backoff; because each message carries an idempotency key, a batch whose first answer was
/// lost is answered from the topic's dedupe index the second time (`duplicate: true`)
/// instead of being stored twice, and the broker applies nothing of a stream after a batch
/// it refused for resending, so a retry never stores a message after one queued later. A
/// batch that fails for good fails every message in it.
///
/// Dropping the publisher without [`shutdown`](Publisher::shutdown) still sends what was
/// queued, in the background, while the runtime lives.
///
/// ```no_run
/// use mini_pubsub::client::{Client, OutgoingMessage, PublisherSettings};
///
/// # async fn example() -> Result<(), mini_pubsub::client::ClientError> {
/// let client = Client::connect("http://127.0.0.1:50051").await?;
/// let publisher = client.publisher("orders", PublisherSettings::default())?;
/// let mut pending = Vec::new();
/// for n in 0..10 {
///     // Waits only when the queue is full; the result comes later.
///     pending.push(publisher.publish(OutgoingMessage::new(format!("order {n}"))).await?);
/// }
/// for handle in pending {
///     let stored = handle.await?;
///     println!("{}:{}", stored.partition, stored.offset);
/// }
/// publisher.shutdown().await?;
/// # Ok(())
/// # }
/// ```
pub struct Publisher {
    id: String,
    topic: String,
    next_sequence: AtomicU64,
    commands: mpsc::Sender<Command>,
    queue_bytes: Arc<Semaphore>,
    queue_bytes_max: usize,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
    /// Stamps queued messages; the batcher reads the same clock.
    clock: crate::env::TokioClock,
}

/// Publishers made in this process so far: part of the default publisher id.
static PUBLISHERS: AtomicU64 = AtomicU64::new(0);

fn default_publisher_id() -> String {
    let n = PUBLISHERS.fetch_add(1, Ordering::Relaxed);
    super::instance_id(n)
}

impl Publisher {
    pub(super) fn new(client: Client, topic: String, settings: PublisherSettings) -> Result<Self, ClientError> {
        settings.validate()?;
        let id = settings.publisher_id.clone().unwrap_or_else(default_publisher_id);
        let (commands, rx) = mpsc::channel(settings.queue_messages_max);
        let counters = Arc::new(Counters::default());
        let clock = crate::env::TokioClock::new();
        let (items, batches) = mpsc::channel(settings.batches_in_flight);
        let batcher = batcher::Batcher {
            settings: settings.clone(),
            window: Arc::new(Semaphore::new(settings.batches_in_flight)),
            pipeline: items,
        };
        let pipeline = pipeline::Pipeline {
            client,
            topic: topic.clone(),
            settings: settings.clone(),
            counters: counters.clone(),
            clock: clock.clone(),
        };
        // The gatherer ends when the publisher is gone; the pipeline once it has answered
        // every batch the gatherer handed it.
        tokio::spawn(batcher.run(rx));
        let task = tokio::spawn(pipeline.run(batches));
        debug!(publisher = %id, %topic, "publisher started");
        Ok(Self {
            id,
            topic,
            next_sequence: AtomicU64::new(0),
            commands,
            queue_bytes: Arc::new(Semaphore::new(settings.queue_bytes_max)),
            queue_bytes_max: settings.queue_bytes_max,
            counters,
            task,
            clock,
        })
    }

    /// The prefix of this publisher's idempotency keys.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The topic it publishes to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Queues a message, waiting while the queue is full (backpressure), and returns a
    /// handle that resolves to where the message was stored, or why it was not.
    ///
    /// A message without an idempotency key gets `{publisher_id}-{sequence}`. Fails at
    /// once only if the message is larger than `queue_bytes_max` or the publisher's task
    /// has ended.
    pub async fn publish(&self, message: impl Into<OutgoingMessage>) -> Result<PublishHandle, ClientError> {
        let mut message = message.into();
        if message.idempotency_key.is_none() {
            let sequence = self.next_sequence.fetch_add(1, Ordering::Relaxed);
            message.idempotency_key = Some(crate::core::dashed_after(&self.id, sequence));
        }
        let message = message.into_wire();
        let bytes = super::message::wire_len(&message);
        if bytes > self.queue_bytes_max {
            return Err(ClientError::invalid(
                "message",
                format!("is {bytes} bytes encoded; the publisher's queue_bytes_max is {}", self.queue_bytes_max),
            ));
        }
        // Cannot fail the conversion: `bytes` <= queue_bytes_max <= u32::MAX (validated).
        let permits = u32::try_from(bytes).unwrap_or(u32::MAX);
        let permit = self.queue_bytes.clone().acquire_many_owned(permits).await.map_err(|_| closed())?;
        let (reply, answer) = oneshot::channel();
        let queued_ms = crate::env::Clock::now_ms(&self.clock);
        let queued = Queued { message, bytes, reply, queued_ms, _bytes_permit: permit };
        self.commands.send(Command::Publish(queued)).await.map_err(|_| closed())?;
        Ok(PublishHandle { answer })
    }

    /// Sends what is queued without waiting for the linger, and returns once every message
    /// queued before the call is answered (stored or failed).
    pub async fn flush(&self) -> Result<(), ClientError> {
        let (done, flushed) = oneshot::channel();
        self.commands.send(Command::Flush(done)).await.map_err(|_| closed())?;
        flushed.await.map_err(|_| closed())
    }

    /// Sends everything queued, waits for the answers, and stops the background task.
    /// Handles returned earlier still resolve.
    pub async fn shutdown(self) -> Result<(), ClientError> {
        let Publisher { commands, task, id, .. } = self;
        drop(commands);
        // The task ends once the queue is drained and the last batch is answered.
        task.await.map_err(|e| ClientError::invalid("publisher", format!("its task failed: {e}")))?;
        debug!(publisher = %id, "publisher stopped");
        Ok(())
    }

    /// What the publisher has done so far.
    pub fn stats(&self) -> PublisherStats {
        let c = &self.counters;
        PublisherStats {
            batches: c.batches.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            published: c.published.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
        }
    }
}

fn closed() -> ClientError {
    ClientError::Closed { what: "publisher" }
}

/// Resolves to where a published message was stored, or why it was not. Dropping it does
/// not cancel the publish.
#[derive(Debug)]
pub struct PublishHandle {
    answer: oneshot::Receiver<Result<PublishResult, ClientError>>,
}

impl Future for PublishHandle {
    type Output = Result<PublishResult, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.answer).poll(cx).map(|answer| answer.unwrap_or_else(|_| Err(closed())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_budget_longer_than_half_the_dedupe_window_is_refused() {
        let settings = PublisherSettings::default();
        settings.validate_for_dedupe_window(Duration::from_secs(120)).unwrap();
        let error = settings.validate_for_dedupe_window(Duration::from_secs(90)).unwrap_err().to_string();
        assert_eq!(
            error,
            "retry.total_timeout: is 60s; it must be at most half the topic's dedupe window (90s), or retries may be stored twice"
        );
        let retry = RetrySettings { total_timeout: Duration::from_secs(5), ..Default::default() };
        let short = PublisherSettings { retry, ..Default::default() };
        let error = short.validate_for_dedupe_window(Duration::from_secs(20)).unwrap_err().to_string();
        assert!(error.starts_with("request_timeout: is 30s;"), "{error}");
    }
}
