//! The driver: the one task that owns the broker core.
//!
//! gRPC handlers build [`Command`]s (and [`Query`]s) and send them on a bounded queue;
//! the driver applies each at the time it stamps on it, in arrival order, through one
//! path ([`Driver::apply`]), and answers. Between them it ticks the core's timers and its
//! own (interval sync, retention, checkpoint: kept in the core's timer table, so
//! `poll_timeout` alone says when to wake), themselves commands, and routes the outputs to
//! the Subscribe streams. Nothing else touches the core. The core never waits on a client:
//! a stream whose response queue is full is ended with RESOURCE_EXHAUSTED, and its leases
//! go back to the other members.
//!
//! Durability is the driver's turn structure. Under `fsync=always` a publish is appended
//! but not answered; at the end of the turn one sync covers every append of the turn (group
//! commit), and only then are the publishes answered and the records delivered. While that
//! fsync runs, new requests queue and form the next group. Under `interval` the driver
//! syncs on a timer; committed offsets are checkpointed on a timer and at shutdown.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use super::metrics::BrokerMetrics;
use super::Observer;
use crate::cluster::{Answerer, ClusterNode, Committed};
use crate::core::{
    AckReply, Answer, At, Broker, BrokerError, Command, Delivery, DriverTimer, Output, Published, Query, Reply,
    StreamId,
};
use crate::env::{blocking, Clock};
use crate::record::{self, Recorder};
use crate::storage::{FsyncPolicy, StorageError};
use crate::wire::{self, pb};

/// What a Subscribe stream's responses travel on.
pub type ResponseTx = mpsc::Sender<Result<pb::SubscribeResponse, Status>>;

/// Jobs the driver runs before it flushes outputs, at most: a bound on how long a burst of
/// requests can delay deliveries and timers.
const JOBS_PER_TURN_MAX: usize = 256;

/// How often committed offsets are saved and time retention applied. A crash forgets at
/// most this much ack progress: those messages are delivered again.
const CHECKPOINT_INTERVAL_MS: u64 = 1000;

/// What a handler asks of the driver.
enum Job {
    /// A command; `sink` comes with [`Command::OpenStream`] only: where the new stream's
    /// responses go.
    /// `link` places a PublishStream's batch in its stream's order.
    Command { command: Command, sink: Option<StreamSink>, reply: oneshot::Sender<Reply>, link: Option<Link> },
    /// A read, answered with the time it was read at.
    Query { query: Query, reply: oneshot::Sender<(Reply, At)> },
    /// Shutdown: end every open stream with `status` and refuse new ones.
    EndAllStreams { status: Status, done: oneshot::Sender<()> },
    /// The last turn: sync and save everything.
    Stop { done: oneshot::Sender<()> },
    /// Committed cluster entries to apply, in log order; `done` once all are applied.
    Apply { batch: Vec<Committed>, done: oneshot::Sender<()> },
    /// The broker's checkpoint, for a cluster snapshot: its state but the records, and the
    /// sync of its logs to run off the driver.
    Snapshot { done: oneshot::Sender<Result<crate::cluster::Checkpoint, String>> },
    /// The broker's whole state, records included, to send a follower.
    WholeState { done: oneshot::Sender<Result<bytes::Bytes, String>> },
    /// A whole state from another node, the state after entry `index`, to replace the
    /// broker's with.
    Install { index: u64, snapshot: bytes::Bytes, done: oneshot::Sender<Result<(), String>> },
    /// The node starts: its checkpoint at entry `index`, if it took one, to restore.
    Restore { checkpoint: Option<(u64, bytes::Bytes)>, done: oneshot::Sender<Result<(), String>> },
    /// This node of a cluster runs: from now on it proposes what it is asked to change.
    Attach { node: Arc<ClusterNode> },
    /// The cluster's state may have changed (a term, a leader, an index).
    ClusterChanged,
}

/// Where a command's reply goes: the handler that sent it, or, for a committed cluster
/// entry, the proposer waiting for it (on the node that proposed it; nobody elsewhere).
pub(super) enum Replier {
    Client(oneshot::Sender<Reply>),
    /// A PublishStream's batch: a refusal the client sends again breaks its stream's chain.
    Chained(oneshot::Sender<Reply>, Link),
    Raft(Option<Answerer>),
}

impl Replier {
    fn send(self, reply: Reply) {
        match self {
            Replier::Client(tx) => {
                let _ = tx.send(reply);
            }
            Replier::Chained(tx, link) => {
                if let Err(refused) = &reply {
                    if wire::resent_by_clients(&wire::status_of(refused)) {
                        link.chain.break_at(link.sequence);
                    }
                }
                let _ = tx.send(reply);
            }
            Replier::Raft(Some(answer)) => answer.send(reply),
            Replier::Raft(None) => {}
        }
    }
}

mod cluster;
use cluster::Replication;

/// A publish appended in this turn, answered once the turn's sync covers it.
struct AwaitingSync {
    reply: Replier,
    topic: String,
    published: Vec<Published>,
}

/// A topic or subscription change of this turn, answered once the turn's sync made its
/// journal entry durable.
struct AwaitingMetadata {
    reply: Replier,
    answer: Answer,
}

/// The handlers' side of the driver.
#[derive(Clone)]
pub struct DriverHandle {
    jobs: mpsc::Sender<Job>,
}

/// Where a new stream's responses go, and how the driver ends it.
pub struct StreamSink {
    pub responses: ResponseTx,
    /// Tells the stream's task to end the stream with this status.
    pub end: oneshot::Sender<Status>,
}

impl DriverHandle {
    /// Has the driver apply `command` and returns its answer; waits while the queue is
    /// full. A publish is answered once the storage's fsync policy is met.
    pub async fn handle(&self, command: Command) -> Result<Answer, Status> {
        self.submit(command).await?.await
    }

    /// Opens a stream ([`Command::OpenStream`]) whose responses go to `sink`.
    pub async fn open_stream(&self, command: Command, sink: StreamSink) -> Result<Answer, Status> {
        let (reply, rx) = oneshot::channel();
        self.jobs.send(Job::Command { command, sink: Some(sink), reply, link: None }).await.map_err(|_| stopped())?;
        Ok(rx.await.map_err(|_| stopped())??)
    }

    /// Queues `command` for the driver (waiting for room in its queue) and returns, without
    /// waiting for it, the future of its answer: commands submitted one after another are
    /// applied in that order.
    pub async fn submit(
        &self,
        command: Command,
    ) -> Result<impl std::future::Future<Output = Result<Answer, Status>> + Send + 'static, Status> {
        self.submit_linked(command, None).await
    }

    /// [`DriverHandle::submit`] for a PublishStream's batch, in its stream's chain.
    pub async fn submit_chained(
        &self,
        command: Command,
        link: Link,
    ) -> Result<impl std::future::Future<Output = Result<Answer, Status>> + Send + 'static, Status> {
        self.submit_linked(command, Some(link)).await
    }

    async fn submit_linked(
        &self,
        command: Command,
        link: Option<Link>,
    ) -> Result<impl std::future::Future<Output = Result<Answer, Status>> + Send + 'static, Status> {
        let (reply, rx) = oneshot::channel();
        self.jobs.send(Job::Command { command, sink: None, reply, link }).await.map_err(|_| stopped())?;
        Ok(async move { Ok(rx.await.map_err(|_| stopped())??) })
    }

    /// Answers a read, with the time it was read at.
    pub async fn query(&self, query: Query) -> Result<(Answer, At), Status> {
        let (reply, rx) = oneshot::channel();
        self.jobs.send(Job::Query { query, reply }).await.map_err(|_| stopped())?;
        let (answer, at) = rx.await.map_err(|_| stopped())?;
        Ok((answer?, at))
    }

    /// Ends every open stream with `status` and refuses new ones (shutdown).
    pub async fn end_all_streams(&self, status: Status) {
        let (done, rx) = oneshot::channel();
        if self.jobs.send(Job::EndAllStreams { status, done }).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// The last turn: everything written is synced and the offsets saved.
    pub async fn stop(&self) {
        let (done, rx) = oneshot::channel();
        if self.jobs.send(Job::Stop { done }).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// The order of one PublishStream's batches. The driver applies them in the order they
/// were submitted; once one is refused in a way the client answers by sending it again
/// ([`wire::resent_by_clients`]), none after it is applied (each is answered
/// [`BrokerError::BatchAfterRefused`]), so the batches resent from the refused one on a new
/// stream are stored in their first order, never behind a later batch. Kafka's idempotent
/// producer gets the same from the broker refusing a batch out of sequence.
#[derive(Debug, Default)]
pub struct PublishChain {
    /// The sequence number of the first batch refused that way, once there is one.
    broken_at: std::sync::OnceLock<u64>,
}

impl PublishChain {
    /// The refused batch's sequence number, once the chain is broken.
    pub fn broken_at(&self) -> Option<u64> {
        self.broken_at.get().copied()
    }

    /// Breaks the chain at batch `sequence`, unless it is broken already.
    pub fn break_at(&self, sequence: u64) {
        let _ = self.broken_at.set(sequence);
    }
}

/// A batch's place in its stream's [`PublishChain`].
#[derive(Debug, Clone)]
pub struct Link {
    pub chain: Arc<PublishChain>,
    pub sequence: u64,
}

/// A handler got an answer of another kind than its command's: a bug in the driver.
pub fn unexpected(answer: &Answer) -> Status {
    Status::internal(format!("the broker answered `{}`, which this call does not expect", answer.name()))
}

fn stopped() -> Status {
    Status::unavailable("the broker is shutting down")
}

/// A stream as the driver knows it.
struct Sink {
    responses: ResponseTx,
    /// The subscription it reads (for metrics).
    subscription: String,
    /// Tells the stream's task to end the stream with this status.
    end: oneshot::Sender<Status>,
    /// Responses put in the queue so far, and how many of them the transport had taken at
    /// the last look: a stream whose transport takes nothing for `stream_stall_ms` while
    /// responses wait is ended (see [`Driver::end_stalled_streams`]).
    sent: u64,
    taken: u64,
    /// Since when nothing queued was taken.
    still_since_ms: Option<u64>,
}

/// The broker, its clock, and the open streams' sinks.
pub struct Driver {
    broker: Broker,
    clock: Arc<dyn Clock>,
    sinks: BTreeMap<StreamId, Sink>,
    /// The core's outputs of this turn, sent to their streams when it ends.
    outbox: VecDeque<Output>,
    /// Set by shutdown: no new stream may open, so graceful shutdown is not kept waiting.
    closing: bool,
    /// Publishes of this turn waiting for its sync; at most `JOBS_PER_TURN_MAX`.
    awaiting_sync: Vec<AwaitingSync>,
    /// Topic and subscription changes of this turn waiting for its sync; as many at most.
    awaiting_metadata: Vec<AwaitingMetadata>,
    fsync: FsyncPolicy,
    sync_delay_ms: u64,
    /// See [`ServerConfig::stream_stall_timeout_ms`](super::ServerConfig::stream_stall_timeout_ms).
    stream_stall_ms: u64,
    /// Present only when a metrics recorder is installed (never in the simulator).
    metrics: Option<BrokerMetrics>,
    checks: Checks,
    /// Present on a node of a cluster (see [`cluster`]).
    replication: Option<Replication>,
    /// While a committed cluster entry is applied: the wall time it was decided at.
    decided_wall_ms: Option<u64>,
    /// The driver's own queue, for tasks it starts (weak: the driver ends when the
    /// handlers are gone).
    jobs: mpsc::WeakSender<Job>,
}

/// What the driver checks and reports after each turn.
pub struct Checks {
    /// Check the core's invariants (debug builds, the simulator).
    pub invariants: bool,
    /// Told the core's notices, unreadable records, and a broken invariant.
    pub observer: Option<Arc<dyn Observer>>,
    /// Records every command applied, with digests of its reply and outputs.
    pub recorder: Option<Recorder>,
    /// Present only when a metrics recorder is installed (never in the simulator): the
    /// driver exports the broker's counts once a second (at each checkpoint).
    pub metrics: Option<BrokerMetrics>,
}

/// How the driver runs.
pub struct DriverSettings {
    /// Jobs waiting for the driver; when full, handlers wait (backpressure).
    pub queue_max: usize,
    /// The simulated disk's fsync latency (see
    /// [`ServerConfig::sync_delay_ms`](super::ServerConfig::sync_delay_ms)).
    pub sync_delay_ms: u64,
    /// See [`ServerConfig::stream_stall_timeout_ms`](super::ServerConfig::stream_stall_timeout_ms).
    pub stream_stall_ms: u64,
    /// On a node of a cluster: where clients reach each node (may be empty). `None`: a
    /// single broker.
    pub brokers: Option<BTreeMap<u64, String>>,
}

impl Driver {
    /// Starts the driver task: `checks` says whether it checks invariants, whom it tells
    /// what the broker did, and where it exports metrics.
    pub fn spawn(broker: Broker, clock: Arc<dyn Clock>, settings: DriverSettings, mut checks: Checks) -> DriverHandle {
        let DriverSettings { queue_max, sync_delay_ms, stream_stall_ms, brokers } = settings;
        let metrics = checks.metrics.take();
        let (jobs, rx) = mpsc::channel(queue_max);
        let now = clock.now_ms();
        let fsync = broker.fsync_policy();
        let mut broker = broker;
        broker.set_driver_timer(DriverTimer::Retention, Some(now + CHECKPOINT_INTERVAL_MS));
        broker.set_driver_timer(DriverTimer::Checkpoint, Some(now + CHECKPOINT_INTERVAL_MS));
        if let FsyncPolicy::IntervalMs(ms) = fsync {
            broker.set_driver_timer(DriverTimer::IntervalSync, Some(now + ms));
        }
        if brokers.is_some() {
            broker.set_driver_timer(DriverTimer::AckFloors, Some(now + cluster::ACK_FLOORS_INTERVAL_MS));
        }
        let driver = Driver {
            broker,
            clock,
            sinks: BTreeMap::new(),
            outbox: VecDeque::new(),
            closing: false,
            awaiting_sync: Vec::new(),
            awaiting_metadata: Vec::new(),
            fsync,
            sync_delay_ms,
            stream_stall_ms,
            metrics,
            checks,
            replication: brokers.map(Replication::new),
            decided_wall_ms: None,
            jobs: jobs.downgrade(),
        };
        tokio::spawn(driver.run(rx));
        DriverHandle { jobs }
    }

    /// The time a command is stamped with now; a committed cluster entry carries the wall
    /// time its leader decided it at, so that every replica stores the same.
    fn at(&self) -> At {
        At { now_ms: self.clock.now_ms(), wall_ms: self.decided_wall_ms.unwrap_or_else(|| self.clock.wall_ms()) }
    }

    /// The one path by which anything changes the broker: `command` is stamped with the
    /// time and applied, and the outputs it produced wait for the end of the turn.
    fn apply(&mut self, command: Command) -> Reply {
        let at = self.at();
        let command = match &mut self.checks.recorder {
            Some(recorder) => recorder.begin(at, command),
            None => command,
        };
        let reply = self.broker.handle(at, command);
        self.take_decided();
        let first = self.outbox.len();
        while let Some(output) = self.broker.poll_output() {
            self.outbox.push_back(output);
        }
        if let Some(recorder) = &mut self.checks.recorder {
            let outputs = record::digest_outputs(self.outbox.range(first..));
            recorder.end(record::digest_reply(&reply), outputs);
        }
        reply
    }

    async fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        // What the broker restored, as it starts.
        self.tell_notices();
        loop {
            let deadline = self.broker.poll_timeout().expect("the checkpoint timer is always set");
            let wait = Duration::from_millis(deadline.saturating_sub(self.clock.now_ms()));
            // Biased, in this order, so that a run replays (an unbiased select picks at random,
            // from a seed tokio draws per process): the timers first, which are ready only
            // when due, so the jobs never starve them.
            let mut turn = None;
            tokio::select! {
                biased;
                () = tokio::time::sleep(wait) => self.handle_timers(),
                job = jobs.recv() => {
                    let Some(job) = job else { break };
                    turn = super::stages::turn_started();
                    if self.run_job(job) {
                        return;
                    }
                    for _ in 1..JOBS_PER_TURN_MAX {
                        let Ok(job) = jobs.try_recv() else { break };
                        if self.run_job(job) {
                            return;
                        }
                    }
                }
            }
            self.propose_decided();
            self.commit().await;
            if let Some(turn) = &mut turn {
                turn.committed();
            }
            let delivered = turn.is_some() && self.outbox.iter().any(|o| matches!(o, Output::Deliver { .. }));
            self.flush();
            if let Some(turn) = turn {
                turn.flushed(delivered);
            }
            if let Some(recorder) = &mut self.checks.recorder {
                recorder.turn_ended(&self.broker);
            }
            if !self.after_turn() {
                // A broken core must not go on: the driver ends without a last turn, and
                // every handler is told the broker is stopping.
                return;
            }
        }
        self.stop();
    }

    /// Runs one job; true when it was the last turn (the driver ends).
    fn run_job(&mut self, job: Job) -> bool {
        match job {
            Job::Command { command, sink, reply, link: None } => self.command(command, sink, Replier::Client(reply)),
            Job::Command { command, reply, link: Some(link), .. } => match link.chain.broken_at() {
                Some(refused) if !self.broker.config().mutated(crate::core::Mutation::PublishChainIgnored) => {
                    let _ = reply.send(Err(BrokerError::BatchAfterRefused { refused }));
                }
                _ => self.command(command, None, Replier::Chained(reply, link)),
            },
            Job::Query { query, reply } => {
                let at = self.at();
                let answer = match self.refuse_unless_leading() {
                    Some(refused) => Err(refused),
                    None => self.broker.query(at.now_ms, query),
                };
                let _ = reply.send((answer, at));
            }
            Job::Apply { batch, done } => {
                self.apply_committed(batch);
                let _ = done.send(());
            }
            Job::Snapshot { done } => {
                let _ = done.send(self.take_checkpoint());
            }
            Job::WholeState { done } => {
                let _ = done.send(self.take_whole_state());
            }
            Job::Install { index, snapshot, done } => {
                let _ = done.send(self.install_snapshot(index, &snapshot));
            }
            Job::Restore { checkpoint, done } => {
                let _ = done.send(self.restore_checkpoint(checkpoint));
            }
            Job::Attach { node } => self.attach(node),
            Job::ClusterChanged => self.cluster_changed(),
            Job::EndAllStreams { status, done } => {
                self.end_all_streams(status);
                let _ = done.send(());
            }
            Job::Stop { done } => {
                self.stop();
                let _ = done.send(());
                return true;
            }
        }
        false
    }

    /// Applies a handler's command and answers it, doing the driver's part: a publish
    /// waits for the turn's sync, a stream's sink is kept, confirmations go on the stream.
    fn command(&mut self, command: Command, sink: Option<StreamSink>, reply: Replier) {
        let Some((command, sink, reply)) = self.route(command, sink, reply) else { return };
        match command {
            Command::Publish { .. } => self.publish(command, reply),
            Command::OpenStream { .. } => {
                let Some(sink) = sink.filter(|_| !self.closing) else {
                    // Dropping `reply` tells the handler the broker is stopping.
                    drop(reply);
                    return;
                };
                reply.send(self.open_stream(command, sink));
            }
            Command::StreamRequest { stream, .. } => {
                let answer = self.apply(command);
                let answer = match answer {
                    Ok(Answer::Confirmations(replies)) => {
                        self.send_confirmations(stream, replies);
                        Ok(Answer::Done)
                    }
                    other => other,
                };
                reply.send(answer);
            }
            Command::CloseStream { stream } | Command::LeaveStream { stream } => {
                self.sinks.remove(&stream);
                reply.send(self.apply(command));
            }
            Command::Pull { ref subscription, .. } => {
                let subscription = subscription.clone();
                let answer = self.apply(command);
                if let (Some(metrics), Ok(Answer::Deliveries(deliveries))) = (&mut self.metrics, &answer) {
                    metrics.delivered(self.clock.wall_ms(), &subscription, deliveries);
                }
                reply.send(answer);
            }
            Command::Redrive { .. } if self.replication.is_some() => self.redrive(command, reply),
            Command::CreateTopic { .. }
            | Command::DeleteTopic { .. }
            | Command::CreateSubscription(_)
            | Command::DeleteSubscription { .. } => match self.apply(command) {
                Ok(answer) if self.broker.metadata_unsynced() => {
                    self.awaiting_metadata.push(AwaitingMetadata { reply, answer });
                }
                answer => {
                    reply.send(answer);
                }
            },
            command => {
                reply.send(self.apply(command));
            }
        }
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
        let _ = self.apply(Command::Tick);
        let now = self.clock.now_ms();
        if self.broker.driver_timer_due(DriverTimer::IntervalSync, now) {
            if let FsyncPolicy::IntervalMs(ms) = self.fsync {
                self.broker.set_driver_timer(DriverTimer::IntervalSync, Some(now + ms));
            }
            self.sync_logging_failures();
        }
        if self.broker.driver_timer_due(DriverTimer::AckFloors, now) {
            self.broker.set_driver_timer(DriverTimer::AckFloors, Some(now + cluster::ACK_FLOORS_INTERVAL_MS));
            self.propose_ack_floors();
        }
        if self.broker.driver_timer_due(DriverTimer::Retention, now) {
            self.broker.set_driver_timer(DriverTimer::Retention, Some(now + CHECKPOINT_INTERVAL_MS));
            if self.replication.is_some() {
                self.propose_retention();
            } else if let Err(e) = self.apply(Command::Retention) {
                tracing::warn!(error = %e, "time retention failed; it is tried again in a second");
            }
        }
        if self.broker.driver_timer_due(DriverTimer::Checkpoint, now) {
            self.broker.set_driver_timer(DriverTimer::Checkpoint, Some(now + CHECKPOINT_INTERVAL_MS));
            self.end_stalled_streams(now);
            // A leader that stopped hearing from a quorum: Raft reports no change for it.
            self.cluster_changed();
            if let Err(e) = self.apply(Command::Checkpoint) {
                tracing::warn!(error = %e, "saving committed offsets failed; it is tried again at the next checkpoint");
            }
            if let Some(metrics) = &mut self.metrics {
                metrics.export(now, &self.broker, self.sinks.len());
            }
            if let Some(recorder) = &mut self.checks.recorder {
                recorder.flush();
            }
        }
    }

    /// Under `fsync=always` every answer waits for the turn's sync, duplicates included: a
    /// duplicate may name a record appended earlier in this very turn, and it must not be
    /// acknowledged before that record is durable. It names the original's partition, so
    /// a failed sync there refuses it like the original.
    fn publish(&mut self, command: Command, reply: Replier) {
        let Command::Publish { topic, .. } = &command else { return };
        let topic = topic.clone();
        let answer_at_once = self.broker.config().mutated(crate::core::Mutation::AnswerBeforeSync);
        match self.apply(command) {
            Ok(Answer::Published(published)) if self.broker.acks_after_sync() && !answer_at_once => {
                self.awaiting_sync.push(AwaitingSync { reply, topic, published });
            }
            answer => {
                if let (Some(metrics), Ok(Answer::Published(published))) = (&mut self.metrics, &answer) {
                    metrics.published(&topic, published);
                }
                reply.send(answer);
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

    /// Whether the turn ends with a sync: under `fsync=always` for its publishes, and under
    /// every policy for its topic and subscription changes.
    fn commit_due(&self) -> bool {
        let publishes = self.broker.acks_after_sync() && (!self.awaiting_sync.is_empty() || self.broker.needs_sync());
        publishes || !self.awaiting_metadata.is_empty() || self.broker.metadata_unsynced()
    }

    /// Applies a sync, on a thread that may block (see [`blocking`]).
    fn sync(&mut self) -> (Vec<crate::core::SyncFailure>, Option<StorageError>) {
        match blocking(|| self.apply(Command::Sync)) {
            Ok(Answer::Synced(failures, metadata)) => (failures, metadata),
            _ => (Vec::new(), None),
        }
    }

    /// `commit` without the disk latency.
    fn commit_now(&mut self) {
        if !self.commit_due() {
            return;
        }
        let (failures, metadata) = self.sync();
        for failure in &failures {
            tracing::warn!(topic = %failure.topic, partition = failure.partition, error = %failure.error,
                "fsync failed: the partition's unsynced records were cut and their publishes refused");
        }
        if let Some(error) = &metadata {
            tracing::warn!(%error, "saving the metadata failed: the turn's topic and subscription changes, and its publishes, are refused; the changes stay in effect and the next checkpoint saves them again");
        }
        for waiting in self.awaiting_metadata.drain(..) {
            let answer = match &metadata {
                Some(e) => Err(BrokerError::Storage(StorageError::Io(format!(
                    "not acknowledged: saving the metadata failed ({e}); the change is in effect but may not survive a restart"
                )))),
                None => Ok(waiting.answer),
            };
            waiting.reply.send(answer);
        }
        for waiting in self.awaiting_sync.drain(..) {
            let failed = failures
                .iter()
                .find(|f| f.topic == waiting.topic && waiting.published.iter().any(|p| p.partition == f.partition))
                .map(|f| f.error.to_string())
                // The journal may hold that the topic's records carry idempotency keys.
                .or_else(|| metadata.as_ref().map(|e| format!("saving the metadata failed ({e})")));
            // Indeterminate: the publish's share in partitions that synced is stored.
            let answer = match failed {
                Some(error) => Err(BrokerError::Storage(StorageError::Io(format!(
                    "not acknowledged: {error}; its messages in other partitions may be stored, so a retry may store them twice"
                )))),
                None => {
                    if let Some(metrics) = &mut self.metrics {
                        metrics.published(&waiting.topic, &waiting.published);
                    }
                    Ok(Answer::Published(waiting.published))
                }
            };
            waiting.reply.send(answer);
        }
    }

    fn sync_logging_failures(&mut self) {
        let (failures, metadata) = self.sync();
        for failure in failures {
            tracing::warn!(topic = %failure.topic, partition = failure.partition, error = %failure.error,
                "fsync failed; it is tried again");
        }
        if let Some(error) = metadata {
            tracing::warn!(%error, "saving the metadata failed; it is tried again");
        }
    }

    /// The last turn: everything written is synced and the offsets saved, whatever the
    /// policy, so a clean stop loses nothing.
    fn stop(&mut self) {
        self.commit_now();
        let unsynced = self.broker.needs_sync();
        self.sync_logging_failures();
        match self.apply(Command::Checkpoint) {
            Ok(Answer::Checkpointed { saved }) if saved || unsynced => {
                tracing::info!("storage synced and committed offsets saved");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "saving committed offsets at shutdown failed"),
        }
        if let Some(recorder) = &mut self.checks.recorder {
            let now = self.clock.now_ms();
            recorder.finish(now, record::digest_state(&self.broker, now));
        }
    }

    /// Sends the turn's outputs to their streams.
    fn flush(&mut self) {
        while let Some(output) = self.outbox.pop_front() {
            match output {
                Output::Deliver { stream, deliveries } => {
                    self.count_delivered(stream, &deliveries);
                    let received_messages = deliveries.into_iter().map(wire::received_message).collect();
                    self.send(stream, pb::SubscribeResponse { received_messages, ..Default::default() });
                }
                Output::Damaged { topic, partition, offsets } => {
                    if let Some(observer) = &self.checks.observer {
                        observer.damaged(&topic, partition, offsets.clone());
                    }
                    if let Some(metrics) = &mut self.metrics {
                        metrics.damaged(&topic, offsets.end - offsets.start);
                    }
                    tracing::error!(%topic, partition, first = offsets.start, end = offsets.end,
                        "stored records are damaged: they cannot be delivered, and a subscription that reaches them waits there (Seek past them to go on); publishes and subscriptions past them go on");
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

    /// Queues a response on a stream without waiting. A full queue means the client is not
    /// reading: the stream ends, and its leases go to the other members. The last slot of
    /// the queue is kept for the status that ends the stream.
    fn send(&mut self, stream: StreamId, response: pb::SubscribeResponse) {
        let Some(sink) = self.sinks.get_mut(&stream) else { return };
        let sent = if sink.responses.is_closed() {
            Err(mpsc::error::TrySendError::Closed(()))
        } else if sink.responses.capacity() > 1 {
            let queueing = super::stages::queueing();
            let sent = sink.responses.try_send(Ok(response)).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => mpsc::error::TrySendError::Full(()),
                mpsc::error::TrySendError::Closed(_) => mpsc::error::TrySendError::Closed(()),
            });
            super::stages::queued(queueing);
            sent
        } else {
            Err(mpsc::error::TrySendError::Full(()))
        };
        match sent {
            Ok(()) => sink.sent += 1,
            Err(mpsc::error::TrySendError::Full(_)) => {
                let capacity = sink.responses.max_capacity();
                let status = Status::resource_exhausted(format!(
                    "the client is not reading this stream: its queue of stream_queue_max = {capacity} responses is full"
                ));
                self.end_stream(stream, status);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.sinks.remove(&stream);
                let _ = self.apply(Command::CloseStream { stream });
            }
        }
    }

    /// Opens a stream and applies what its first request carried: the first response names
    /// the subscription, confirmations and deliveries follow. A refused first request opens
    /// nothing.
    fn open_stream(&mut self, command: Command, sink: StreamSink) -> Reply {
        let answer = self.apply(command)?;
        let Answer::Opened { stream, subscription, confirmations } = answer else { return Ok(answer) };
        let StreamSink { responses, end } = sink;
        let sink = Sink { responses, subscription: subscription.clone(), end, sent: 0, taken: 0, still_since_ms: None };
        self.sinks.insert(stream, sink);
        let hello = pb::SubscribeResponse { subscription: subscription.clone(), ..Default::default() };
        // The hello goes first; the assignment and deliveries the join made are flushed
        // after it, at the end of the turn.
        self.send(stream, hello);
        if let Some(replies) = confirmations {
            self.send_confirmations(stream, replies);
        }
        Ok(Answer::Opened { stream, subscription, confirmations: None })
    }

    /// Sends a stream's confirmations, in order, in as many responses as keep each under
    /// `response_bytes_max` (a request may name any number of ack ids).
    fn send_confirmations(&mut self, stream: StreamId, replies: Vec<AckReply>) {
        let limit = self.broker.config().response_bytes_max;
        let mut ack_confirmations: Vec<pb::AckConfirmation> = Vec::new();
        let mut bytes = 0;
        for reply in replies {
            let confirmation = wire::ack_confirmation(reply);
            // The field's tag and length prefix, at most 1 + 2 bytes for a confirmation.
            let size = confirmation.encoded_len() + 3;
            if bytes + size > limit && !ack_confirmations.is_empty() {
                let full = std::mem::take(&mut ack_confirmations);
                self.send(stream, pb::SubscribeResponse { ack_confirmations: full, ..Default::default() });
                bytes = 0;
            }
            bytes += size;
            ack_confirmations.push(confirmation);
        }
        if !ack_confirmations.is_empty() {
            self.send(stream, pb::SubscribeResponse { ack_confirmations, ..Default::default() });
        }
    }

    /// Ends every stream whose transport has taken none of its queued responses for
    /// `stream_stall_ms`: a client that stopped reading (or a connection that stopped
    /// moving) holds its leases only that long, and then they go to the other members at
    /// once, instead of expiring and being leased to it again. Bounded by the open streams.
    fn end_stalled_streams(&mut self, now_ms: u64) {
        let mut stalled = Vec::new();
        for (stream, sink) in &mut self.sinks {
            let queued = (sink.responses.max_capacity() - sink.responses.capacity()) as u64;
            let taken = sink.sent.saturating_sub(queued);
            if queued == 0 || taken > sink.taken {
                sink.taken = taken;
                sink.still_since_ms = None;
                continue;
            }
            let since = *sink.still_since_ms.get_or_insert(now_ms);
            if now_ms.saturating_sub(since) >= self.stream_stall_ms {
                stalled.push((*stream, queued));
            }
        }
        for (stream, queued) in stalled {
            let status = Status::resource_exhausted(format!(
                "the client has read nothing of this stream for stream_stall_timeout_ms = {} ms ({queued} responses \
                 waiting); its leases went to the other members",
                self.stream_stall_ms
            ));
            // Released at once, even for a stream that named its client: a client that
            // stopped reading does not get its leases kept for it.
            self.end_stream_with(stream, status, Command::LeaveStream { stream });
        }
    }

    /// Ends a stream from the server's side with `status`.
    fn end_stream(&mut self, stream: StreamId, status: Status) {
        self.end_stream_with(stream, status, Command::CloseStream { stream });
    }

    /// Ends a stream with `status` and applies `closing` (a close, or a leave that releases
    /// its leases whatever client it named).
    fn end_stream_with(&mut self, stream: StreamId, status: Status, closing: Command) {
        if let Some(sink) = self.sinks.remove(&stream) {
            let _ = sink.end.send(status);
        }
        let _ = self.apply(closing);
    }

    /// Ends every open stream with `status` and refuses new ones (shutdown).
    fn end_all_streams(&mut self, status: Status) {
        self.closing = true;
        let streams: Vec<StreamId> = self.sinks.keys().copied().collect();
        for stream in streams {
            self.end_stream(stream, status.clone());
        }
    }
}
