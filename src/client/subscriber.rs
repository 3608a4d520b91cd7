//! The subscriber: a `Stream` of received messages over the bidirectional Subscribe call,
//! or [`Subscriber::run`] with an async handler. Its background task (`session`) holds the
//! gRPC stream, extends leases, batches acks and reconnects.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_stream::Stream;
use tracing::{debug, warn};

use super::error::ClientError;
use super::message::Message;
use super::received::{NackOptions, ReceivedMessage};
use super::retry::RetrySettings;
use super::session::Session;
use super::Client;
use crate::core::CLIENT_ID_BYTES_MAX;
use crate::wire::pb;

/// The broker's cap on a stream's `max_outstanding_messages` (`pull_messages_max`).
const MAX_OUTSTANDING_LIMIT: u32 = 1000;
/// Longest ack deadline the broker allows (`ack_deadline_max_ms`).
const ACK_DEADLINE_SECONDS_MAX: u32 = 600;
/// The broker's limits on a session timeout, in seconds.
const SESSION_TIMEOUT_SECONDS: std::ops::RangeInclusive<u64> = 1..=300;

/// What to subscribe to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeTarget {
    /// Join a subscription as one of its competing members.
    Subscription(String),
    /// Tap a topic with an ephemeral subscription, which the broker deletes when the stream
    /// ends. After a reconnect the new ephemeral subscription starts again from
    /// `start_position`: earliest sees everything again, latest misses what was published
    /// while disconnected. Use a named subscription to resume where you were.
    Topic {
        /// The topic.
        topic: String,
        /// Where the ephemeral subscription starts. Unspecified: earliest.
        start_position: pb::StartPosition,
        /// Its lease length, 1 to 600 s. Default 30.
        ack_deadline_seconds: u32,
    },
}

impl SubscribeTarget {
    /// A named subscription.
    pub fn subscription(name: impl Into<String>) -> Self {
        SubscribeTarget::Subscription(name.into())
    }

    /// An ephemeral subscription on `topic`, from the earliest message, with 30 s leases.
    pub fn topic(topic: impl Into<String>) -> Self {
        SubscribeTarget::Topic {
            topic: topic.into(),
            start_position: pb::StartPosition::Earliest,
            ack_deadline_seconds: 30,
        }
    }
}

/// How a [`Subscriber`] receives, holds and acknowledges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberSettings {
    /// Flow control: most messages the broker leases to this subscriber at once (received
    /// and not yet acked or nacked), 1 to 1000. Default 1000. Every queue of received
    /// messages in the client is bounded by it.
    pub max_outstanding_messages: u32,
    /// Flow control by size (about: one message may pass it). Unset: the broker's default
    /// (100 MiB).
    pub max_outstanding_bytes: Option<u64>,
    /// Acks and nacks sent in one request at most; reaching it sends them at once.
    /// 1 to 1000; default 100.
    pub ack_batch_max: usize,
    /// Longest an ack waits for its batch to fill before it is sent: 1 ms to 10 s.
    /// Default 50 ms.
    pub ack_flush_interval: Duration,
    /// How long after its arrival a held message's lease is still extended (each time by
    /// the subscription's ack deadline, when a third of it is left). Zero never extends.
    /// Default 60 min.
    pub max_lease_extension: Duration,
    /// Exclusive subscriptions: how long the member may send nothing before the broker
    /// removes it (1 to 300 s). Unset: the broker's default (10 s). The subscriber sends an
    /// empty request as a heartbeat when it has sent nothing for a third of it (3 s when
    /// unset), on every subscription (shared ones ignore them).
    pub session_timeout: Option<Duration>,
    /// [`Subscriber::run`]: handlers running at once, 1 to 1000. Default 16.
    pub handler_concurrency: usize,
    /// Reopening the stream after it ended with a retryable status (or the broker could not
    /// be reached): backoff, and the attempts in a row (and total time) before giving up.
    /// A stream that delivered something, or stayed open for `max_backoff`, starts the
    /// count again.
    pub reconnect: RetrySettings,
    /// [`Subscriber::shutdown`]: longest wait for the broker to confirm the last acks.
    /// Default 10 s.
    pub shutdown_timeout: Duration,
    /// Names this subscriber to the broker (Subscribe `client_id`), on every stream it
    /// opens: when a stream breaks, the broker keeps its leases for the next stream of the
    /// same id, so on a named subscription the messages received before a reconnect stay
    /// valid after it (see [`Subscriber`]). 1 to 128 bytes of printable ASCII without
    /// spaces. Unset: `{host}-{wall clock ms, hex}-{process id}-{n}`, with `n` a process-wide count
    /// of subscribers. Two subscribers running at once must not share one: the newer
    /// stream takes over the older (which ends with ABORTED and reconnects, taking it back).
    pub client_id: Option<String>,
}

impl Default for SubscriberSettings {
    fn default() -> Self {
        Self {
            max_outstanding_messages: 1000,
            max_outstanding_bytes: None,
            ack_batch_max: 100,
            ack_flush_interval: Duration::from_millis(50),
            max_lease_extension: Duration::from_secs(3600),
            session_timeout: None,
            handler_concurrency: 16,
            reconnect: RetrySettings::default(),
            shutdown_timeout: Duration::from_secs(10),
            client_id: None,
        }
    }
}

impl SubscriberSettings {
    /// Refuses settings that cannot work, naming the field and the allowed range.
    pub fn validate(&self) -> Result<(), ClientError> {
        let check = ClientError::check;
        let n = self.max_outstanding_messages;
        check(
            (1..=MAX_OUTSTANDING_LIMIT).contains(&n),
            "max_outstanding_messages",
            format!("is {n}; allowed is 1 to {MAX_OUTSTANDING_LIMIT}"),
        )?;
        check(
            self.max_outstanding_bytes != Some(0),
            "max_outstanding_bytes",
            "is 0; it must be at least 1 (or unset for the broker's default)".to_string(),
        )?;
        check(
            (1..=1000).contains(&self.ack_batch_max),
            "ack_batch_max",
            format!("is {}; allowed is 1 to 1000", self.ack_batch_max),
        )?;
        check(
            (Duration::from_millis(1)..=Duration::from_secs(10)).contains(&self.ack_flush_interval),
            "ack_flush_interval",
            format!("is {:?}; allowed is 1 ms to 10 s", self.ack_flush_interval),
        )?;
        if let Some(timeout) = self.session_timeout {
            check(
                timeout.subsec_nanos() == 0 && SESSION_TIMEOUT_SECONDS.contains(&timeout.as_secs()),
                "session_timeout",
                format!("is {timeout:?}; allowed is 1 to 300 whole seconds"),
            )?;
        }
        check(
            (1..=1000).contains(&self.handler_concurrency),
            "handler_concurrency",
            format!("is {}; allowed is 1 to 1000", self.handler_concurrency),
        )?;
        check(!self.shutdown_timeout.is_zero(), "shutdown_timeout", "is 0; it must be positive".to_string())?;
        if let Some(id) = &self.client_id {
            let rule = format!("allowed is 1 to {CLIENT_ID_BYTES_MAX} bytes of printable ASCII without spaces");
            check(
                !id.is_empty() && id.len() <= CLIENT_ID_BYTES_MAX,
                "client_id",
                format!("is {} bytes; {rule} (or unset for a generated one)", id.len()),
            )?;
            check(
                id.bytes().all(|b| b.is_ascii_graphic()),
                "client_id",
                format!("`{id}` has a space or a character outside printable ASCII; {rule}"),
            )?;
        }
        self.reconnect.validate()
    }
}

/// Counters of what a subscriber did, for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubscriberStats {
    /// Messages received (redeliveries included).
    pub received: u64,
    /// Acks the broker confirmed as applied.
    pub acked: u64,
    /// Nacks the broker confirmed as applied.
    pub nacked: u64,
    /// Acks and nacks the broker did not apply: confirmed EXPIRED (the lease had ended)
    /// or INVALID. Lease extensions it did not apply count in `extensions_refused`.
    pub rejected: u64,
    /// Lease extensions sent.
    pub lease_extensions: u64,
    /// Lease extensions the broker did not apply (the lease had ended, after a broker
    /// restart say): those messages are no longer extended, and come again.
    pub extensions_refused: u64,
    /// Streams opened after the first one.
    pub reconnects: u64,
}

/// State the subscriber's task shares with the application side.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Numbers the sets of leases the subscriber held. On a named subscription one set
    /// lasts across reconnects (the broker keeps a stream's leases for the next stream of
    /// its client id); a topic's ephemeral subscription starts a new set with each stream.
    /// A message of an earlier set has lost its lease.
    pub epoch: AtomicU64,
    /// The subscription the current stream joined (for ephemeral ones, `__ephemeral.N`).
    pub subscription: Mutex<String>,
    /// The client id every stream names.
    pub client_id: Mutex<String>,
    pub received: AtomicU64,
    pub acked: AtomicU64,
    pub nacked: AtomicU64,
    pub rejected: AtomicU64,
    pub lease_extensions: AtomicU64,
    pub extensions_refused: AtomicU64,
    pub reconnects: AtomicU64,
}

impl Shared {
    /// The counters as they are now.
    fn stats(&self) -> SubscriberStats {
        let s = self;
        SubscriberStats {
            received: s.received.load(Ordering::Relaxed),
            acked: s.acked.load(Ordering::Relaxed),
            nacked: s.nacked.load(Ordering::Relaxed),
            rejected: s.rejected.load(Ordering::Relaxed),
            lease_extensions: s.lease_extensions.load(Ordering::Relaxed),
            extensions_refused: s.extensions_refused.load(Ordering::Relaxed),
            reconnects: s.reconnects.load(Ordering::Relaxed),
        }
    }

    /// Counts the broker's answer for one ack id.
    pub(crate) fn count(&self, confirmation: &pb::AckConfirmation) {
        let applied = confirmation.result == pb::AckResult::Applied as i32;
        let counter = match pb::AckOperation::try_from(confirmation.operation) {
            Ok(pb::AckOperation::Ack) if applied => &self.acked,
            Ok(pb::AckOperation::Nack) if applied => &self.nacked,
            Ok(pb::AckOperation::Ack | pb::AckOperation::Nack) => &self.rejected,
            Ok(pb::AckOperation::ModifyDeadline) if applied => return,
            Ok(pb::AckOperation::ModifyDeadline) => &self.extensions_refused,
            // An operation this client does not know (a newer broker): nothing it sent.
            Ok(pb::AckOperation::Unspecified) | Err(_) => return,
        };
        if !applied {
            debug!(ack_id = %confirmation.ack_id, operation = confirmation.operation, result = confirmation.result, "not applied");
        }
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the subscriber's task hands the application.
pub(crate) type Delivery = Result<ReceivedMessage, ClientError>;

/// Subscribers made in this process so far: part of the default client id.
static SUBSCRIBERS: AtomicU64 = AtomicU64::new(0);

fn default_client_id() -> String {
    let n = SUBSCRIBERS.fetch_add(1, Ordering::Relaxed);
    super::instance_id(n)
}

/// A streaming subscriber. Open it with [`Client::subscribe`]; read it as a
/// [`Stream`] of [`ReceivedMessage`]s, or hand it a handler with [`Subscriber::run`].
///
/// - **Leases.** A received message is held until it is acked, nacked or dropped; while it
///   is held its lease is extended (up to `max_lease_extension`), so a slow handler does
///   not see its message redelivered to another member.
/// - **Acks** are queued and sent in batches of `ack_batch_max`, or after
///   `ack_flush_interval`.
/// - **Reconnects.** When the stream ends with a retryable status (UNAVAILABLE, a broken
///   connection) it is opened again with the same first request, after a backoff. Every
///   stream names the subscriber's `client_id`, and the broker keeps a broken stream's
///   leases until their deadlines for the next stream of that id, which takes them over.
///   So on a named subscription nothing received is lost to a reconnect: messages already
///   handed out stay valid (their acks and nacks go on the new stream, their leases keep
///   being extended), messages not yet handed out are handed out, and acks sent just
///   before the break and never confirmed are sent again. A message the broker sent as the
///   connection broke, and that never arrived, stays leased until its deadline and then
///   comes again (meanwhile it counts against flow control). After a broker restart the
///   leases are gone: the first extension after the reconnect finds out, the messages not
///   yet handed out are dropped, and acks of handed-out ones are confirmed as not applied;
///   all of them come again. A topic's ephemeral subscription ends with its stream, so
///   there the messages of the old stream are dropped and come again on the new one. A
///   status that is not retryable (NOT_FOUND: the subscription was deleted) ends the
///   stream: it yields that error, then `None`.
/// - **Flow control.** `max_outstanding_messages` goes to the broker; the client's own
///   queues hold at most that many messages.
pub struct Subscriber {
    deliveries: mpsc::Receiver<Delivery>,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<Result<(), ClientError>>>,
    handler_concurrency: usize,
}

impl Subscriber {
    pub(super) async fn open(
        client: Client,
        target: SubscribeTarget,
        settings: SubscriberSettings,
    ) -> Result<Self, ClientError> {
        settings.validate()?;
        if let SubscribeTarget::Topic { ack_deadline_seconds, .. } = &target {
            if !(1..=ACK_DEADLINE_SECONDS_MAX).contains(ack_deadline_seconds) {
                return Err(ClientError::invalid(
                    "ack_deadline_seconds",
                    format!("is {ack_deadline_seconds}; allowed is 1 to {ACK_DEADLINE_SECONDS_MAX}"),
                ));
            }
        }
        let capacity = settings.max_outstanding_messages as usize;
        let (deliveries_tx, deliveries) = mpsc::channel(capacity);
        let shared = Arc::new(Shared::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (opened_tx, opened) = oneshot::channel();
        let handler_concurrency = settings.handler_concurrency;
        let client_id = settings.client_id.clone().unwrap_or_else(default_client_id);
        *shared.client_id.lock().map_err(|_| ClientError::Closed { what: "subscriber" })? = client_id.clone();
        let session = Session::new(client, target, settings, shared.clone(), deliveries_tx, client_id);
        let task = tokio::spawn(session.run(opened_tx, shutdown_rx));
        match opened.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(error),
            // The task reports before it ends, unless it panicked.
            Err(_) => {
                return Err(task.await.map_err(task_failed).err().unwrap_or(ClientError::Closed { what: "subscriber" }))
            }
        }
        Ok(Self { deliveries, shared, shutdown, task: Some(task), handler_concurrency })
    }

    /// The subscription the stream joined: the name given, or for a topic the ephemeral
    /// subscription's `__ephemeral.N` (a new one after each reconnect).
    pub fn subscription(&self) -> String {
        self.shared.subscription.lock().map(|name| name.clone()).unwrap_or_default()
    }

    /// The client id its streams name to the broker (given, or generated).
    pub fn client_id(&self) -> String {
        self.shared.client_id.lock().map(|id| id.clone()).unwrap_or_default()
    }

    /// What the subscriber has done so far.
    pub fn stats(&self) -> SubscriberStats {
        self.shared.stats()
    }

    /// Stops the subscriber: queued acks and nacks are sent, then the stream is ended with
    /// `leave`, and the broker's end of it awaited (up to `shutdown_timeout`): the acks are
    /// applied, and the leases of every other message (received but not handed out, or
    /// still held) are given back, for other members at once. Decisions on held messages
    /// made after this are lost.
    pub async fn shutdown(mut self) -> Result<(), ClientError> {
        let _ = self.shutdown.send(true);
        match self.task.take() {
            Some(task) => task.await.map_err(task_failed)?,
            None => Ok(()),
        }
    }

    /// Calls `handler` for each message, up to `handler_concurrency` at a time, and acks
    /// the message when the handler returns `Ok`, nacks it (with the error as the reason)
    /// on `Err`. While a handler runs its message's lease is extended. Returns when
    /// `shutdown` resolves (after the running handlers finish, and a clean
    /// [`shutdown`](Subscriber::shutdown)), or with the error that ended the stream.
    ///
    /// ```no_run
    /// use mini_pubsub::client::{Client, Message, SubscribeTarget, SubscriberSettings};
    ///
    /// # async fn example() -> Result<(), mini_pubsub::client::ClientError> {
    /// let client = Client::connect("http://127.0.0.1:50051").await?;
    /// let target = SubscribeTarget::subscription("orders-audit");
    /// let subscriber = client.subscribe(target, SubscriberSettings::default()).await?;
    /// let handler = |message: Message| async move {
    ///     if message.value.is_empty() {
    ///         return Err(format!("message {} is empty", message.message_id));
    ///     }
    ///     println!("{}", message.value_lossy());
    ///     Ok(())
    /// };
    /// subscriber.run(handler, async { tokio::signal::ctrl_c().await.unwrap_or(()) }).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn run<H, Fut, E>(mut self, handler: H, shutdown: impl Future<Output = ()>) -> Result<(), ClientError>
    where
        H: Fn(Message) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        use tokio_stream::StreamExt;
        let mut running = JoinSet::new();
        tokio::pin!(shutdown);
        let ended = loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break Ok(()),
                Some(joined) = running.join_next(), if !running.is_empty() => log_handler_end(joined),
                next = self.next(), if running.len() < self.handler_concurrency => match next {
                    None => break Ok(()),
                    Some(Err(error)) => break Err(error),
                    Some(Ok(received)) => {
                        let (message, handle) = received.into_parts();
                        let handled = handler(message);
                        running.spawn(async move {
                            match handled.await.map_err(|error| error.to_string()) {
                                Ok(()) => handle.ack().await,
                                Err(reason) => {
                                    handle.nack_with(NackOptions { reason: Some(reason), ..Default::default() }).await;
                                }
                            }
                        });
                    }
                },
            }
        };
        // Handlers already running finish (their leases still extended) before the acks
        // are flushed; the bound is the handlers' own.
        while let Some(joined) = running.join_next().await {
            log_handler_end(joined);
        }
        let stopped = self.shutdown().await;
        ended.and(stopped)
    }
}

fn log_handler_end(joined: Result<(), tokio::task::JoinError>) {
    if let Err(error) = joined {
        // A panicking handler drops its message's handle, which nacks it.
        warn!(%error, "a message handler panicked; its message was nacked");
    }
}

fn task_failed(error: tokio::task::JoinError) -> ClientError {
    ClientError::invalid("subscriber", format!("its task failed: {error}"))
}

impl Stream for Subscriber {
    type Item = Result<ReceivedMessage, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Bounded by the queue: each turn takes one message out of it.
        loop {
            match self.deliveries.poll_recv(cx) {
                Poll::Ready(Some(Ok(received))) if received.epoch() != self.shared.epoch.load(Ordering::SeqCst) => {
                    // Its ephemeral subscription ended with its stream, and its lease with
                    // it: it comes again on the new one.
                    debug!(ack_id = received.ack_id(), "dropping a message of an earlier stream");
                    received.forget();
                }
                other => return other,
            }
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        // The task flushes what it has and closes the stream.
        let _ = self.shutdown.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_checked_and_the_default_differs_per_subscriber() {
        let with = |id: &str| SubscriberSettings { client_id: Some(id.into()), ..Default::default() };
        with("worker-7").validate().unwrap();
        let long = with(&"x".repeat(129)).validate().unwrap_err().to_string();
        assert_eq!(
            long,
            "client_id: is 129 bytes; allowed is 1 to 128 bytes of printable ASCII without spaces (or unset for a generated one)"
        );
        let spaced = with("a b").validate().unwrap_err().to_string();
        assert!(spaced.starts_with("client_id: `a b` has a space"), "{spaced}");
        let (a, b) = (default_client_id(), default_client_id());
        assert_ne!(a, b);
        assert!(a.len() <= CLIENT_ID_BYTES_MAX && a.bytes().all(|c| c.is_ascii_graphic()), "{a}");
    }

    #[test]
    fn refused_extensions_are_counted_apart_from_refused_acks_and_nacks() {
        let shared = Shared::default();
        let answers = [
            (pb::AckOperation::Ack, pb::AckResult::Applied),
            (pb::AckOperation::Ack, pb::AckResult::Expired),
            (pb::AckOperation::Nack, pb::AckResult::Invalid),
            (pb::AckOperation::ModifyDeadline, pb::AckResult::Applied),
            (pb::AckOperation::ModifyDeadline, pb::AckResult::Expired),
            (pb::AckOperation::ModifyDeadline, pb::AckResult::Invalid),
        ];
        for (operation, result) in answers {
            let ack_id = "s-0-1-7".to_string();
            shared.count(&pb::AckConfirmation { ack_id, operation: operation as i32, result: result as i32 });
        }
        let stats = shared.stats();
        assert_eq!((stats.acked, stats.nacked, stats.rejected, stats.extensions_refused), (1, 0, 2, 2), "{stats:?}");
    }
}
