//! The driver: the one task that owns the broker core.
//!
//! gRPC handlers send it jobs (closures over the [`Driver`]) on a bounded queue and await
//! their answers; between jobs it fires lease timers and routes the core's outputs to the
//! Subscribe streams. The core never waits on a client: a stream whose response queue is
//! full is ended with RESOURCE_EXHAUSTED, and its leases go back to the other members.
//!
//! Durability is the driver's turn structure. Under `fsync=always` a publish is appended
//! but not answered; at the end of the turn one sync covers every append of the turn (group
//! commit), and only then are the publishes answered and the records delivered. While that
//! fsync runs, new requests queue and form the next group. Under `interval` the driver
//! syncs on a timer; committed offsets are checkpointed on a timer and at shutdown.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use super::metrics::BrokerMetrics;
use super::Observer;
use crate::core::{
    AckOp, Broker, BrokerError, Delivery, Flow, OutgoingMessage, Output, Published, StreamId, StreamTarget,
};
use crate::env::Clock;
use crate::storage::{FsyncPolicy, StorageError};
use crate::wire::{self, pb};

/// What a Subscribe stream's responses travel on.
pub type ResponseTx = mpsc::Sender<Result<pb::SubscribeResponse, Status>>;

/// Jobs the driver runs before it flushes outputs, at most: a bound on how long a burst of
/// requests can delay deliveries and timers.
const JOBS_PER_TURN_MAX: usize = 256;

/// How often committed offsets are saved (and time retention applied). A crash forgets at
/// most this much ack progress: those messages are delivered again.
const CHECKPOINT_INTERVAL_MS: u64 = 1000;

type Job = Box<dyn FnOnce(&mut Driver) + Send>;

/// Where a publish's answer goes.
type PublishReply = oneshot::Sender<Result<Vec<Published>, BrokerError>>;

/// A publish appended in this turn, answered once the turn's sync covers it.
struct AwaitingSync {
    reply: PublishReply,
    topic: String,
    published: Vec<Published>,
}

/// The handlers' side of the driver.
#[derive(Clone)]
pub struct DriverHandle {
    jobs: mpsc::Sender<Job>,
}

impl DriverHandle {
    /// Runs `f` on the driver and returns its result. Waits while the job queue is full.
    pub async fn call<R, F>(&self, f: F) -> Result<R, Status>
    where
        R: Send + 'static,
        F: FnOnce(&mut Driver) -> R + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |driver| {
            let _ = tx.send(f(driver));
        });
        self.jobs.send(job).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())
    }

    /// Publishes, and answers once the storage's fsync policy is met.
    pub async fn publish(&self, topic: String, messages: Vec<OutgoingMessage>) -> Result<Vec<Published>, Status> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |driver| driver.publish(topic, messages, tx));
        self.jobs.send(job).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?.map_err(Status::from)
    }
}

/// Runs a call that may block on the disk (an fsync) without stalling the runtime's other
/// tasks: on a multi-threaded runtime they move to other threads meanwhile. The simulator's
/// runtime is single-threaded, and its disk does not block.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn stopped() -> Status {
    Status::unavailable("the broker is shutting down")
}

/// What the first request of a Subscribe stream asks for.
pub struct FirstRequest {
    pub target: StreamTarget,
    pub flow: Flow,
    /// `None`: the broker default.
    pub session_timeout_ms: Option<u64>,
    /// `None`: the stream does not name its client.
    pub client_id: Option<String>,
    /// Acks, nacks and deadline changes it carries, applied once the stream is open.
    pub ops: Vec<(AckOp, Vec<String>)>,
}

/// A stream as the driver knows it.
struct Sink {
    responses: ResponseTx,
    /// The subscription it reads (for metrics).
    subscription: String,
    /// Tells the stream's task to end the stream with this status.
    end: oneshot::Sender<Status>,
}

/// The broker, its clock, and the open streams' sinks.
pub struct Driver {
    pub broker: Broker,
    clock: Arc<dyn Clock>,
    sinks: BTreeMap<StreamId, Sink>,
    /// Set by shutdown: no new stream may open, so graceful shutdown is not kept waiting.
    closing: bool,
    /// Publishes of this turn waiting for its sync; at most `JOBS_PER_TURN_MAX`.
    awaiting_sync: Vec<AwaitingSync>,
    fsync: FsyncPolicy,
    next_checkpoint_ms: u64,
    next_interval_sync_ms: u64,
    sync_delay_ms: u64,
    /// Present only when a metrics recorder is installed (never in the simulator).
    metrics: Option<BrokerMetrics>,
    checks: Checks,
}

/// What the driver checks and reports after each turn.
pub struct Checks {
    /// Check the core's invariants (debug builds, the simulator).
    pub invariants: bool,
    /// Told the core's notices, unreadable records, and a broken invariant.
    pub observer: Option<Arc<dyn Observer>>,
}

impl Driver {
    /// Starts the driver task. `sync_delay_ms` is the simulated disk's fsync latency (see
    /// [`ServerConfig::sync_delay_ms`](super::ServerConfig::sync_delay_ms)); with
    /// `metrics`, the driver exports the broker's counts once a second (at each checkpoint);
    /// `checks` says whether it checks invariants and whom it tells what the broker did.
    pub fn spawn(
        broker: Broker,
        clock: Arc<dyn Clock>,
        queue_max: usize,
        sync_delay_ms: u64,
        metrics: Option<BrokerMetrics>,
        checks: Checks,
    ) -> DriverHandle {
        let (jobs, rx) = mpsc::channel(queue_max);
        let now = clock.now_ms();
        let fsync = broker.fsync_policy();
        let driver = Driver {
            broker,
            clock,
            sinks: BTreeMap::new(),
            closing: false,
            awaiting_sync: Vec::new(),
            fsync,
            next_checkpoint_ms: now + CHECKPOINT_INTERVAL_MS,
            next_interval_sync_ms: match fsync {
                FsyncPolicy::IntervalMs(ms) => now + ms,
                _ => u64::MAX,
            },
            sync_delay_ms,
            metrics,
            checks,
        };
        tokio::spawn(driver.run(rx));
        DriverHandle { jobs }
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    pub fn wall_ms(&self) -> u64 {
        self.clock.wall_ms()
    }

    async fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        // What the broker restored, as it starts.
        self.tell_notices();
        loop {
            let deadline =
                [self.broker.poll_timeout(), Some(self.next_checkpoint_ms), Some(self.next_interval_sync_ms)]
                    .into_iter()
                    .flatten()
                    .min()
                    .expect("the checkpoint deadline is always set");
            let wait = Duration::from_millis(deadline.saturating_sub(self.now_ms()));
            tokio::select! {
                job = jobs.recv() => {
                    let Some(job) = job else { break };
                    let wall = self.wall_ms();
                    self.broker.set_wall_ms(wall);
                    job(&mut self);
                    for _ in 1..JOBS_PER_TURN_MAX {
                        let Ok(job) = jobs.try_recv() else { break };
                        job(&mut self);
                    }
                }
                () = tokio::time::sleep(wait) => self.handle_timers(),
            }
            self.commit().await;
            self.flush();
            if !self.after_turn() {
                // A broken core must not go on: the driver ends without a last turn, and
                // every handler is told the broker is stopping.
                return;
            }
        }
        self.stop();
    }

    /// Tells the observer the notices the core recorded (none without an observer).
    fn tell_notices(&mut self) {
        if let Some(observer) = &self.checks.observer {
            while let Some(notice) = self.broker.poll_notice() {
                observer.notice(notice);
            }
        }
    }

    /// Tells the observer the turn's notices, then checks the core's invariants; false
    /// when one broke. A broken invariant is a bug: an observer hears of it (the
    /// simulator stops the run there, with its seed) and the driver stops; without one
    /// the driver panics.
    fn after_turn(&mut self) -> bool {
        self.tell_notices();
        if !self.checks.invariants {
            return true;
        }
        let broker = &self.broker;
        let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| broker.assert_invariants())) else {
            return true;
        };
        let what = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        match &self.checks.observer {
            Some(observer) => {
                tracing::error!(invariant = what, "the broker core broke an invariant; the driver stops");
                observer.invariant_broken(what);
                false
            }
            None => panic!("the broker core broke an invariant: {what}"),
        }
    }

    fn handle_timers(&mut self) {
        let (now, wall) = (self.now_ms(), self.wall_ms());
        self.broker.set_wall_ms(wall);
        self.broker.handle_timeout(now);
        if now >= self.next_interval_sync_ms {
            if let FsyncPolicy::IntervalMs(ms) = self.fsync {
                self.next_interval_sync_ms = now + ms;
            }
            self.sync_logging_failures();
        }
        if now >= self.next_checkpoint_ms {
            self.next_checkpoint_ms = now + CHECKPOINT_INTERVAL_MS;
            let wall = self.wall_ms();
            if let Err(e) = self.broker.enforce_retention(now, wall) {
                tracing::warn!(error = %e, "time retention failed; it is tried again at the next checkpoint");
            }
            if let Err(e) = self.broker.checkpoint() {
                tracing::warn!(error = %e, "saving committed offsets failed; it is tried again at the next checkpoint");
            }
            if let Some(metrics) = &mut self.metrics {
                metrics.export(now, &self.broker, self.sinks.len());
            }
        }
    }

    /// Under `fsync=always` every answer waits for the turn's sync, duplicates included: a
    /// duplicate may name a record appended earlier in this very turn, and it must not be
    /// acknowledged before that record is durable. It names the original's partition, so
    /// a failed sync there refuses it like the original.
    fn publish(&mut self, topic: String, messages: Vec<OutgoingMessage>, reply: PublishReply) {
        let (now, wall) = (self.now_ms(), self.wall_ms());
        let answer_at_once = self.broker.config().mutated(crate::core::Mutation::AnswerBeforeSync);
        match self.broker.publish(now, wall, &topic, messages) {
            Ok(published) if self.broker.acks_after_sync() && !answer_at_once => {
                self.awaiting_sync.push(AwaitingSync { reply, topic, published });
            }
            result => {
                if let (Some(metrics), Ok(published)) = (&mut self.metrics, &result) {
                    metrics.published(&topic, published);
                }
                let _ = reply.send(result);
            }
        }
    }

    /// Ends a turn under `fsync=always`: one sync for every append of the turn, then the
    /// answers. A publish that touched a partition whose sync failed is refused.
    async fn commit(&mut self) {
        if self.sync_delay_ms > 0 && self.commit_due() {
            tokio::time::sleep(Duration::from_millis(self.sync_delay_ms)).await;
        }
        self.commit_now();
    }

    fn commit_due(&self) -> bool {
        self.broker.acks_after_sync() && (!self.awaiting_sync.is_empty() || self.broker.needs_sync())
    }

    /// `commit` without the disk latency.
    fn commit_now(&mut self) {
        if !self.commit_due() {
            return;
        }
        let now = self.now_ms();
        let broker = &mut self.broker;
        let failures = blocking(|| broker.sync(now));
        for failure in &failures {
            tracing::warn!(topic = %failure.topic, partition = failure.partition, error = %failure.error,
                "fsync failed: the partition's unsynced records were cut and their publishes refused");
        }
        for waiting in self.awaiting_sync.drain(..) {
            let failed = failures
                .iter()
                .find(|f| f.topic == waiting.topic && waiting.published.iter().any(|p| p.partition == f.partition));
            // Indeterminate: the publish's share in partitions that synced is stored.
            let answer = match failed {
                Some(f) => Err(BrokerError::Storage(StorageError::Io(format!(
                    "not acknowledged: {}; its messages in other partitions may be stored, so a retry may store them twice",
                    f.error
                )))),
                None => {
                    if let Some(metrics) = &mut self.metrics {
                        metrics.published(&waiting.topic, &waiting.published);
                    }
                    Ok(waiting.published)
                }
            };
            let _ = waiting.reply.send(answer);
        }
    }

    fn sync_logging_failures(&mut self) {
        let now = self.now_ms();
        let broker = &mut self.broker;
        for failure in blocking(|| broker.sync(now)) {
            tracing::warn!(topic = %failure.topic, partition = failure.partition, error = %failure.error,
                "fsync failed; it is tried again");
        }
    }

    /// The last turn: everything written is synced and the offsets saved, whatever the
    /// policy, so a clean stop loses nothing.
    pub fn stop(&mut self) {
        self.commit_now();
        let unsynced = self.broker.needs_sync();
        self.sync_logging_failures();
        match self.broker.checkpoint() {
            Ok(saved) if saved || unsynced => tracing::info!("storage synced and committed offsets saved"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "saving committed offsets at shutdown failed"),
        }
    }

    /// Sends the core's outputs to their streams.
    fn flush(&mut self) {
        while let Some(output) = self.broker.poll_output() {
            match output {
                Output::Deliver { stream, deliveries } => {
                    self.count_delivered(stream, &deliveries);
                    let received_messages = deliveries.into_iter().map(wire::received_message).collect();
                    self.send(stream, pb::SubscribeResponse { received_messages, ..Default::default() });
                }
                Output::ReadFailed { topic, partition, offset, error } => {
                    if let Some(observer) = &self.checks.observer {
                        observer.read_failed(&topic, partition, offset, &error);
                    }
                    tracing::error!(%topic, partition, offset, %error,
                        "a stored record cannot be read: it is not delivered, and its partition waits at it (Seek past it to go on)");
                }
                Output::EndStream { stream, reason } => {
                    if let Some(sink) = self.sinks.remove(&stream) {
                        let _ = sink.end.send(wire::status_of(&reason));
                    }
                }
                Output::Assignment { stream, generation, partitions } => {
                    self.send(stream, wire::assignment(generation, partitions));
                }
            }
        }
    }

    /// Records the end-to-end latency of deliveries to a stream.
    fn count_delivered(&mut self, stream: StreamId, deliveries: &[Delivery]) {
        let (Some(metrics), Some(sink)) = (&mut self.metrics, self.sinks.get(&stream)) else { return };
        metrics.delivered(self.clock.wall_ms(), &sink.subscription, deliveries);
    }

    /// Leases up to `max_messages` of `subscription` to a Pull.
    pub fn pull(&mut self, subscription: &str, max_messages: u32) -> Result<Vec<Delivery>, BrokerError> {
        let now = self.now_ms();
        let deliveries = self.broker.pull(now, subscription, max_messages)?;
        if let Some(metrics) = &mut self.metrics {
            metrics.delivered(self.clock.wall_ms(), subscription, &deliveries);
        }
        Ok(deliveries)
    }

    /// Queues a response on a stream without waiting. A full queue means the client is not
    /// reading: the stream ends, and its leases go to the other members. The last slot of
    /// the queue is kept for the status that ends the stream.
    fn send(&mut self, stream: StreamId, response: pb::SubscribeResponse) {
        let Some(sink) = self.sinks.get(&stream) else { return };
        let sent = if sink.responses.is_closed() {
            Err(mpsc::error::TrySendError::Closed(()))
        } else if sink.responses.capacity() > 1 {
            sink.responses.try_send(Ok(response)).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => mpsc::error::TrySendError::Full(()),
                mpsc::error::TrySendError::Closed(_) => mpsc::error::TrySendError::Closed(()),
            })
        } else {
            Err(mpsc::error::TrySendError::Full(()))
        };
        match sent {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                let capacity = sink.responses.max_capacity();
                let status = Status::resource_exhausted(format!(
                    "the client is not reading this stream: its queue of stream_queue_max = {capacity} responses is full"
                ));
                self.end_stream(stream, status);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => self.close_stream(stream),
        }
    }

    /// Opens a stream and applies what its first request carried: the first response names
    /// the subscription, confirmations and deliveries follow. A refused first request opens
    /// nothing.
    pub fn open_stream(
        &mut self,
        first: FirstRequest,
        responses: ResponseTx,
        end: oneshot::Sender<Status>,
    ) -> Result<StreamId, Status> {
        if self.closing {
            return Err(stopped());
        }
        let FirstRequest { target, flow, session_timeout_ms, client_id, ops: first_ops } = first;
        self.broker.check_stream_ops(&target, &first_ops)?;
        let now = self.now_ms();
        let (stream, subscription) = self.broker.open_member(now, target, flow, session_timeout_ms, client_id)?;
        self.sinks.insert(stream, Sink { responses, subscription: subscription.clone(), end });
        let hello = pb::SubscribeResponse { subscription, ..Default::default() };
        // The hello goes first; the assignment and deliveries the join made are flushed
        // after it, at the end of the turn.
        self.send(stream, hello);
        self.stream_acks(stream, first_ops)?;
        Ok(stream)
    }

    /// Applies a stream's acks, nacks and deadline changes (all, or none if one is refused)
    /// and queues their confirmations. Every request, an empty one too, is a heartbeat.
    pub fn stream_acks(&mut self, stream: StreamId, ops: Vec<(AckOp, Vec<String>)>) -> Result<(), BrokerError> {
        let now = self.now_ms();
        self.broker.heartbeat(now, stream);
        if ops.is_empty() {
            return Ok(());
        }
        let replies = self.broker.stream_acks(now, stream, ops)?;
        let ack_confirmations = replies.into_iter().map(wire::ack_confirmation).collect();
        self.send(stream, pb::SubscribeResponse { ack_confirmations, ..Default::default() });
        Ok(())
    }

    /// The client went away: forget the stream and release its leases (or, for a stream
    /// that named its client, keep them for the client).
    pub fn close_stream(&mut self, stream: StreamId) {
        self.sinks.remove(&stream);
        let now = self.now_ms();
        self.broker.close_stream(now, stream);
    }

    /// The client leaves (a request with `leave`): forget the stream and release its
    /// leases at once, client id or not.
    pub fn leave_stream(&mut self, stream: StreamId) {
        self.sinks.remove(&stream);
        let now = self.now_ms();
        self.broker.leave_stream(now, stream);
    }

    /// Ends a stream from the server's side with `status`.
    pub fn end_stream(&mut self, stream: StreamId, status: Status) {
        if let Some(sink) = self.sinks.remove(&stream) {
            let _ = sink.end.send(status);
        }
        let now = self.now_ms();
        self.broker.close_stream(now, stream);
    }

    /// Ends every open stream with `status` and refuses new ones (shutdown).
    pub fn end_all_streams(&mut self, status: Status) {
        self.closing = true;
        let streams: Vec<StreamId> = self.sinks.keys().copied().collect();
        for stream in streams {
            self.end_stream(stream, status.clone());
        }
    }
}
