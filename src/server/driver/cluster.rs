//! The driver's part in a cluster: what it proposes instead of applying, what it refuses
//! when this node does not lead, and how it applies what the cluster committed.
//!
//! - Changes to durable state (publishes, topic and subscription creation and deletion,
//!   seeks) are decided here (the core's `check` refuses bad input at once) and proposed;
//!   every node applies them when they commit, through the same path as a single broker,
//!   with the wall time the leader decided them at, so every replica stores the same.
//! - What the leader's own state decides (a message given up on after its last attempt or
//!   a terminal nack, the dead-letter copies a redrive takes) is decided by its broker,
//!   held there, and proposed as a command every node applies (`DeadLetters`,
//!   `RedriveCopies`). Time retention and idempotency-key expiry are a `Retention` the
//!   leader proposes with its wall time: every node expires by the same clock.
//! - Everything else (streams, pulls, acks, reads) is served by the leader from its own
//!   state, as a single broker does. Leases, streams and sessions are the leader's alone and
//!   are lost when leadership moves: their messages are delivered again (at-least-once).
//! - A node that does not lead (or whose leadership lapsed: it heard from no quorum
//!   within the election timeout) refuses every call with UNAVAILABLE, naming the leader.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use prost::Message as _;
use tonic::Status;

use super::{Driver, DriverHandle, Job, Replier, StreamSink};
use crate::cluster::{Applier, Checkpoint, ClusterNode, Committed, ProposeError, SNAPSHOT_BYTES_MAX};
use crate::core::{Answer, BrokerError, Command, LeaderHint, Mutation};
use crate::record::{self, pb};
use crate::server::metrics::{self, LatencyTimer};

/// A node's link to its cluster, held by the driver.
pub(in crate::server) struct Replication {
    /// The running node; `None` until it is attached (until then every call is refused).
    node: Option<Arc<ClusterNode>>,
    /// Hands the node this driver's proposals, in the order they were made; with the node.
    proposer: Option<Proposer>,
    /// Where clients reach each node (`[cluster] brokers`), for leader hints.
    brokers: Arc<BTreeMap<u64, String>>,
    /// Whether this node served at the last look: when it stops, its streams end.
    serving: bool,
    /// The ack floors this leader proposed, by subscription uid and partition; only changes
    /// are proposed. Forgotten when leadership changes and every `FLOORS_REFRESH` rounds,
    /// so a proposal that was lost is made again.
    proposed_floors: BTreeMap<(u64, u32), u64>,
    /// Rounds of ack progress since the floors were last all proposed.
    floor_rounds: u32,
    /// Idempotency keys of the publishes this leader proposed and has not applied: a publish
    /// is proposed only if the dedupe index has room for its keys and these (see
    /// [`Broker::check_publish_room`](crate::core::Broker::check_publish_room)). Counted
    /// down as they apply here; back to 0 when leadership changes (what was proposed
    /// then is no longer this node's to answer).
    reserved_keys: usize,
    /// Seeks proposed and not yet answered: while one is, no floors are proposed, for a
    /// floor read before the seek applied could undo it.
    seeks_in_flight: Arc<AtomicUsize>,
    /// Times proposals into `mini_pubsub_raft_propose_seconds` (with metrics on).
    propose_timer: Option<LatencyTimer>,
    /// What the broker decided for the cluster to commit this turn (dead-letter moves,
    /// redrives), proposed at the turn's end.
    decided: Vec<Command>,
}

/// How often a leader proposes its ack progress: a failover redelivers at most what was
/// acknowledged in this long (and everything still leased).
pub(in crate::server) const ACK_FLOORS_INTERVAL_MS: u64 = 100;

/// Every this many rounds the leader proposes all floors again, changed or not.
const FLOORS_REFRESH: u32 = 50;

/// How long a client waits for its proposal to commit before it is answered that its fate is
/// unknown (a leader cut off from its quorum after it accepted the proposal).
const PROPOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Proposals handed to the node and not yet answered, at most: past it, a publish or an
/// admin call is refused (RESOURCE_EXHAUSTED, which clients retry) until the quorum catches
/// up. A PublishStream holds at most its window of them.
const PROPOSALS_IN_FLIGHT_MAX: usize = 8_192;

/// Ack floors in one Raft entry at most (about 40 bytes each).
const FLOORS_PER_ENTRY: usize = 10_000;

/// Dead-letter moves in one Raft entry at most.
const MOVES_PER_ENTRY: usize = 1_000;

/// Bytes of dead-letter copies in one Raft entry at most (one copy alone may be larger: it
/// goes in an entry of its own, as a publish of it would).
const MOVE_BYTES_PER_ENTRY: usize = 8 << 20;

impl Replication {
    /// A link whose leader hints name the nodes' client addresses.
    pub(in crate::server) fn new(brokers: BTreeMap<u64, String>) -> Self {
        Self {
            node: None,
            proposer: None,
            brokers: Arc::new(brokers),
            serving: false,
            proposed_floors: BTreeMap::new(),
            floor_rounds: 0,
            reserved_keys: 0,
            seeks_in_flight: Arc::new(AtomicUsize::new(0)),
            propose_timer: None,
            decided: Vec::new(),
        }
    }
}

/// Whether an entry being applied was proposed by this node while it led (its client waits here).
fn reply_is_ours(reply: &Replier) -> bool {
    matches!(reply, Replier::Raft(Some(_)))
}

/// The idempotency keys a publish carries (0 for any other command).
fn keyed(command: &Command) -> usize {
    match command {
        Command::Publish { messages, .. } => messages.iter().filter(|m| m.idempotency_key.is_some()).count(),
        _ => 0,
    }
}

/// The hint for leader `id`: its id and, when configured, its client address.
fn hint(brokers: &BTreeMap<u64, String>, id: Option<u64>) -> Option<LeaderHint> {
    id.map(|id| LeaderHint { id, addr: brokers.get(&id).cloned() })
}

/// A command as a cluster entry: a command-log `Entry` with the wall time it was decided at
/// (the monotonic time is each node's own, so it is not sent).
fn encode(wall_ms: u64, command: &Command) -> bytes::Bytes {
    let entry = pb::Entry { wall_ms, command: Some(record::encode_command(command)), ..Default::default() };
    entry.encode_to_vec().into()
}

fn decode(bytes: &[u8]) -> Result<(u64, Command), String> {
    let entry = pb::Entry::decode(bytes).map_err(|e| format!("a cluster entry that does not decode: {e}"))?;
    let command = entry.command.ok_or("a cluster entry without a command")?;
    Ok((entry.wall_ms, record::decode_command(command)?))
}

impl DriverHandle {
    /// Tells the driver its cluster node runs.
    pub(in crate::server) async fn attach(&self, node: Arc<ClusterNode>) {
        let _ = self.jobs.send(Job::Attach { node }).await;
    }
}

impl DriverHandle {
    /// Sends the driver the job `job` makes, and waits for its answer.
    fn ask<T: Send + 'static>(
        &self,
        job: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> Job + Send + 'static,
    ) -> BoxFuture<'static, Result<T, String>> {
        let jobs = self.jobs.clone();
        Box::pin(async move {
            let gone = || "the broker's driver stopped".to_string();
            let (done, answered) = tokio::sync::oneshot::channel();
            jobs.send(job(done)).await.map_err(|_| gone())?;
            answered.await.map_err(|_| gone())
        })
    }
}

impl Applier for DriverHandle {
    fn apply(&self, batch: Vec<Committed>) -> BoxFuture<'static, Result<(), String>> {
        self.ask(|done| Job::Apply { batch, done })
    }

    fn snapshot(&self) -> BoxFuture<'static, Result<Checkpoint, String>> {
        let taken = self.ask(|done| Job::Snapshot { done });
        Box::pin(async move { taken.await? })
    }

    fn whole_state(&self) -> BoxFuture<'static, Result<bytes::Bytes, String>> {
        let taken = self.ask(|done| Job::WholeState { done });
        Box::pin(async move { taken.await? })
    }

    fn restore(&self, checkpoint: Option<(u64, bytes::Bytes)>) -> BoxFuture<'static, Result<(), String>> {
        let restored = self.ask(move |done| Job::Restore { checkpoint, done });
        Box::pin(async move { restored.await? })
    }

    fn install(&self, index: u64, snapshot: bytes::Bytes) -> BoxFuture<'static, Result<(), String>> {
        let installed = self.ask(move |done| Job::Install { index, snapshot, done });
        Box::pin(async move { installed.await? })
    }
}

/// Whether a command changes durable state, and so goes through the Raft log.
fn replicated(command: &Command) -> bool {
    matches!(
        command,
        Command::Publish { .. }
            | Command::CreateTopic { .. }
            | Command::DeleteTopic { .. }
            | Command::CreateSubscription(_)
            | Command::DeleteSubscription { .. }
            | Command::Seek { .. }
    )
}

impl Driver {
    /// In a cluster, takes the commands that are not this node's to apply now: refuses every
    /// call on a node that does not lead, and proposes the changes to durable state. What
    /// it gives back, the caller applies as a single broker would.
    pub(super) fn route(
        &mut self,
        command: Command,
        sink: Option<StreamSink>,
        reply: Replier,
    ) -> Option<(Command, Option<StreamSink>, Replier)> {
        if self.replication.is_none() || self.decided_wall_ms.is_some() {
            return Some((command, sink, reply));
        }
        if let Some(refused) = self.refuse_unless_leading() {
            reply.send(Err(refused));
            return None;
        }
        if !self.replication.as_ref().is_some_and(|r| r.serving) {
            // It leads, and the watcher has not said so yet: take the lead before serving.
            self.cluster_changed();
        }
        if !replicated(&command) {
            return Some((command, sink, reply));
        }
        if let Err(refused) = self.broker.check(&command) {
            reply.send(Err(refused));
            return None;
        }
        if let (Command::Publish { topic, messages }, Some(replication)) = (&command, &mut self.replication) {
            match self.broker.check_publish_room(topic, messages, replication.reserved_keys) {
                Ok(keys) => replication.reserved_keys += keys,
                Err(refused) => {
                    reply.send(Err(refused));
                    return None;
                }
            }
        }
        let holds_floors = matches!(command, Command::Seek { .. });
        self.propose_answering(&command, holds_floors, reply, |answer| answer);
        None
    }

    /// Proposes `command` and answers `reply` with what it did when it commits, through
    /// `then`; or that this node does not lead, or that its fate is unknown. With
    /// `holds_floors` (a seek, a redrive: they may move committed offsets back) no ack
    /// floors are proposed until it is answered, for a floor read before it applied could
    /// undo it.
    fn propose_answering(
        &mut self,
        command: &Command,
        holds_floors: bool,
        reply: Replier,
        then: impl FnOnce(crate::core::Reply) -> crate::core::Reply + Send + 'static,
    ) {
        let replication = self.replication.as_ref().expect("only a cluster node proposes");
        let proposer = replication.proposer.as_ref().expect("a serving node is attached");
        if proposer.in_flight.load(Ordering::SeqCst) >= PROPOSALS_IN_FLIGHT_MAX {
            reply.send(Err(BrokerError::LimitReached {
                what: "not proposed: this leader waits for a quorum to commit as many proposals as it holds".into(),
                limit_name: "proposals in flight (fixed)",
                limit: PROPOSALS_IN_FLIGHT_MAX as u64,
            }));
            return;
        }
        let seeks = holds_floors.then(|| replication.seeks_in_flight.clone());
        if let Some(seeks) = &seeks {
            seeks.fetch_add(1, Ordering::SeqCst);
        }
        let brokers = replication.brokers.clone();
        let timer = replication.propose_timer.clone();
        let start = timer.as_ref().map(LatencyTimer::start);
        proposer.propose(
            encode(self.clock.wall_ms(), command),
            Box::new(move |proposed| {
                if let (Some(timer), Some(start), Ok(_)) = (&timer, start, &proposed) {
                    timer.record(start);
                }
                if let Some(seeks) = seeks {
                    seeks.fetch_sub(1, Ordering::SeqCst);
                }
                let answer = match proposed {
                    Ok(answer) => then(answer),
                    Err(ProposeError::NotLeader(leader)) => {
                        Err(BrokerError::NotLeader { leader: hint(&brokers, leader) })
                    }
                    Err(ProposeError::Indeterminate(why)) => Err(BrokerError::Indeterminate(why)),
                };
                reply.send(answer);
            }),
        );
    }

    /// A redrive in a cluster: the leader takes the dead-letter copies that can go back and
    /// proposes them; every node puts them back when that commits, and the client hears of
    /// those with the copies that stay. Nothing to put back is answered at once.
    pub(super) fn redrive(&mut self, command: Command, reply: Replier) {
        let answer = self.apply(command);
        let replication = self.replication.as_mut().expect("a cluster node");
        let at = replication.decided.iter().position(|c| matches!(c, Command::RedriveCopies { .. }));
        let copies = at.map(|at| replication.decided.remove(at));
        match (answer, copies) {
            (Ok(Answer::Redriven(stayed)), Some(copies)) => {
                self.propose_answering(&copies, true, reply, move |answer| match answer {
                    Ok(Answer::Redriven(mut moved)) => {
                        moved.extend(stayed);
                        Ok(Answer::Redriven(moved))
                    }
                    other => other,
                });
            }
            (answer, _) => reply.send(answer),
        }
    }

    /// Takes what the broker decided for the cluster to commit (see
    /// [`Broker::take_decided`](crate::core::Broker::take_decided)).
    pub(super) fn take_decided(&mut self) {
        if let Some(replication) = &mut self.replication {
            replication.decided.extend(self.broker.take_decided());
        }
    }

    /// At a turn's end, proposes what the broker decided during it that no client waits
    /// for: its dead-letter moves, in as few entries as fit. A proposal that fails leaves
    /// their messages held until this node leads again (a new leader delivers them again).
    pub(super) fn propose_decided(&mut self) {
        let Some(replication) = &mut self.replication else { return };
        if replication.decided.is_empty() {
            return;
        }
        let decided = std::mem::take(&mut replication.decided);
        let Some(proposer) = replication.proposer.clone() else { return };
        let mut moves = Vec::new();
        for command in decided {
            match command {
                Command::DeadLetters(more) => moves.extend(more),
                other => tracing::error!(command = other.name(), "a decided command no client waits for was dropped"),
            }
        }
        let wall_ms = self.clock.wall_ms();
        let mut chunks: Vec<Vec<_>> = vec![Vec::new()];
        let mut bytes = 0;
        for m in moves {
            let size = m.copy.size_bytes();
            let last = chunks.last().expect("one chunk at least");
            if !last.is_empty() && (last.len() >= MOVES_PER_ENTRY || bytes + size > MOVE_BYTES_PER_ENTRY) {
                chunks.push(Vec::new());
                bytes = 0;
            }
            bytes += size;
            chunks.last_mut().expect("one chunk at least").push(m);
        }
        let proposals: Vec<_> = chunks.into_iter().map(|chunk| encode(wall_ms, &Command::DeadLetters(chunk))).collect();
        proposer
            .propose_unanswered(proposals, "dead-letter moves were not replicated; a new leader delivers them again");
    }

    /// A leader proposes a retention pass with its wall time, which every node applies
    /// alike: messages and idempotency keys expire by one clock, the leader's. Nothing when
    /// there is nothing time could expire, or on a node that does not serve.
    pub(super) fn propose_retention(&mut self) {
        if self.refuse_unless_leading().is_some() || !self.broker.retention_has_work() {
            return;
        }
        let Some(proposer) = self.replication.as_ref().and_then(|r| r.proposer.clone()) else { return };
        let proposal = encode(self.clock.wall_ms(), &Command::Retention);
        proposer
            .propose_unanswered(vec![proposal], "a retention pass was not replicated; the next one is a second later");
    }

    /// In a cluster, the refusal of a call on a node that does not serve now.
    pub(super) fn refuse_unless_leading(&mut self) -> Option<BrokerError> {
        let replication = self.replication.as_mut()?;
        let Some(node) = &replication.node else {
            return Some(BrokerError::NotLeader { leader: None });
        };
        let state = node.state();
        if state.serving {
            return None;
        }
        Some(BrokerError::NotLeader { leader: hint(&replication.brokers, state.leader.filter(|l| *l != state.id)) })
    }

    /// Applies committed entries in log order, each with the wall time it was decided at;
    /// the node that proposed one answers its client.
    pub(super) fn apply_committed(&mut self, batch: Vec<Committed>) {
        for committed in batch {
            let reply = Replier::Raft(committed.answer);
            match decode(&committed.proposal) {
                Ok((wall_ms, mut command)) => {
                    if self.broker.config().mutated(Mutation::FollowerDiverges) && committed.index % 7 == 0 {
                        diverge(&mut command, self.replication.as_ref().is_some_and(|r| r.serving));
                    }
                    if let (Some(replication), true) = (&mut self.replication, reply_is_ours(&reply)) {
                        replication.reserved_keys = replication.reserved_keys.saturating_sub(keyed(&command));
                    }
                    self.decided_wall_ms = Some(wall_ms);
                    self.command(command, None, reply);
                    self.decided_wall_ms = None;
                }
                Err(e) => {
                    // Every node skips it alike, so the replicas stay the same.
                    tracing::error!(index = committed.index, error = %e, "a committed entry was skipped");
                    reply.send(Err(BrokerError::Indeterminate(e)));
                }
            }
        }
    }

    /// The broker's checkpoint now, for a cluster snapshot: its state but the records, and
    /// the sync of its partition logs, which the snapshot runs off the driver.
    pub(super) fn take_checkpoint(&mut self) -> Result<Checkpoint, String> {
        let (state, mut sync) =
            self.broker.checkpoint_replica().map_err(|e| format!("no checkpoint of the broker: {e}"))?;
        let retired = sync.take_retired();
        let sync = Box::new(move || sync.run().map_err(|e| format!("the partition logs did not sync: {e}")));
        let after_save = Box::new(move || retired.remove_retired().map_err(|e| e.to_string()));
        Ok(Checkpoint { state: state.into(), sync, after_save })
    }

    /// The broker's whole state now, records included, for a follower that fell behind
    /// the purged log.
    pub(super) fn take_whole_state(&mut self) -> Result<bytes::Bytes, String> {
        let taken = self.broker.snapshot(SNAPSHOT_BYTES_MAX).map_err(|e| format!("no snapshot of the broker: {e}"))?;
        Ok(taken.into())
    }

    /// Restores the broker, as its node starts, to the node's checkpoint at entry `index`
    /// (or, with none, to nothing): the Raft log is applied on from there.
    pub(super) fn restore_checkpoint(&mut self, checkpoint: Option<(u64, bytes::Bytes)>) -> Result<(), String> {
        let index = checkpoint.as_ref().map_or(0, |(index, _)| *index);
        self.broker
            .restore_replica(checkpoint.as_ref().map(|(_, bytes)| bytes.as_ref()))
            .map_err(|e| format!("the checkpoint at entry {index} was not restored: {e}"))?;
        if checkpoint.is_some() {
            tracing::info!(index, "the broker's state was restored from this node's checkpoint");
            if let Some(observer) = &self.checks.observer {
                observer.installed(index);
            }
            if let Some(recorder) = &mut self.checks.recorder {
                recorder.begin_again(&self.broker);
            }
        }
        Ok(())
    }

    /// Replaces the broker's state with a cluster snapshot's, the state after entry `index`
    /// (this node fell behind the leader's purged log, or restarts from its own snapshot).
    /// Streams still open here end first; a recording begins again from the new state.
    pub(super) fn install_snapshot(&mut self, index: u64, snapshot: &[u8]) -> Result<(), String> {
        self.leave_streams(&Status::unavailable("this node's state is being replaced by the leader's snapshot"));
        self.broker
            .install_replica(snapshot)
            .map_err(|e| format!("the snapshot at entry {index} was not installed: {e}"))?;
        tracing::info!(index, bytes = snapshot.len(), "the broker's state was replaced by a snapshot");
        if let Some(observer) = &self.checks.observer {
            observer.installed(index);
        }
        if let Some(recorder) = &mut self.checks.recorder {
            recorder.begin_again(&self.broker);
        }
        Ok(())
    }

    /// The node runs: the driver learns of its changes from a watcher task.
    pub(super) fn attach(&mut self, node: Arc<ClusterNode>) {
        let Some(replication) = self.replication.as_mut() else { return };
        let mut watcher = node.watcher();
        replication.proposer = Some(Proposer::start(node.clone()));
        replication.node = Some(node);
        if self.metrics.is_some() {
            replication.propose_timer = Some(LatencyTimer::new(self.clock.clone(), metrics::RAFT_PROPOSE));
        }
        let jobs = self.jobs.clone();
        tokio::spawn(async move {
            while watcher.changed().await {
                let Some(jobs) = jobs.upgrade() else { return };
                if jobs.send(Job::ClusterChanged).await.is_err() {
                    return;
                }
            }
        });
        self.cluster_changed();
    }

    /// When this node stops serving, its streams end with UNAVAILABLE naming the leader
    /// (their clients reconnect there); their leases are released at once.
    pub(super) fn cluster_changed(&mut self) {
        let refused = self.refuse_unless_leading();
        let Some(replication) = self.replication.as_mut() else { return };
        let was = std::mem::replace(&mut replication.serving, refused.is_none());
        if was != replication.serving {
            replication.proposed_floors.clear();
            replication.reserved_keys = 0;
        }
        if !was && replication.serving {
            let term = replication.node.as_ref().map_or(0, |n| n.state().term);
            tracing::info!(term, "this node leads");
            let _ = self.apply(Command::Lead { term });
        }
        if let (true, Some(refused)) = (was, refused) {
            tracing::info!(%refused, "this node no longer leads: its streams end");
            self.leave_streams(&refused.into());
        }
    }

    /// Ends every open stream with `status`; their leases are released at once.
    fn leave_streams(&mut self, status: &Status) {
        let streams: Vec<_> = self.sinks.keys().copied().collect();
        for stream in streams {
            self.end_stream_with(stream, status.clone(), Command::LeaveStream { stream });
        }
    }
}

impl Driver {
    /// A leader proposes its subscriptions' ack floors that moved since it last did, so a
    /// new leader redelivers from close to where this one was acknowledged, not from the
    /// start. Nothing while a seek is in flight, or on a node that does not serve.
    pub(super) fn propose_ack_floors(&mut self) {
        if self.refuse_unless_leading().is_some() {
            return;
        }
        let Some(replication) = self.replication.as_mut() else { return };
        if replication.seeks_in_flight.load(Ordering::SeqCst) > 0 {
            return;
        }
        replication.floor_rounds += 1;
        if replication.floor_rounds >= FLOORS_REFRESH {
            replication.floor_rounds = 0;
            replication.proposed_floors.clear();
        }
        let proposed = &mut replication.proposed_floors;
        let mut moved = self.broker.ack_floors();
        moved.retain(|f| proposed.get(&(f.uid, f.partition)) != Some(&f.offset));
        if moved.is_empty() {
            return;
        }
        for f in &moved {
            proposed.insert((f.uid, f.partition), f.offset);
        }
        let proposer = replication.proposer.clone().expect("a serving node is attached");
        let wall_ms = self.clock.wall_ms();
        let proposals: Vec<_> =
            moved.chunks(FLOORS_PER_ENTRY).map(|chunk| encode(wall_ms, &Command::AckFloors(chunk.to_vec()))).collect();
        proposer
            .propose_unanswered(proposals, "ack progress was not replicated; the next leader redelivers from its own");
    }
}

/// What a proposal's maker does with its outcome.
type Answered = Box<dyn FnOnce(Result<crate::core::Reply, ProposeError>) + Send>;

/// Hands a node the driver's proposals in the order the driver made them: one task submits
/// them one after another, so the Raft log holds them in that order and a PublishStream's
/// batches, several in flight, are stored in the stream's order. Each is answered once it
/// applied, without holding up the next.
#[derive(Clone)]
struct Proposer {
    /// To the submitting task. Unbounded, for the driver must never wait on Raft (Raft waits
    /// on the driver to apply); its length is bounded by `in_flight`.
    submit: tokio::sync::mpsc::UnboundedSender<(bytes::Bytes, Answered)>,
    /// Proposals made and not yet answered.
    in_flight: Arc<AtomicUsize>,
}

impl Proposer {
    /// Starts the submitting task; it ends when the driver drops its last `Proposer`.
    fn start(node: Arc<ClusterNode>) -> Self {
        let (submit, mut proposals) = tokio::sync::mpsc::unbounded_channel::<(bytes::Bytes, Answered)>();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let answered_count = in_flight.clone();
        tokio::spawn(async move {
            while let Some((proposal, answered)) = proposals.recv().await {
                let submitted = node.submit(proposal).await;
                let in_flight = answered_count.clone();
                tokio::spawn(async move {
                    let proposed = match submitted {
                        Ok(submitted) => {
                            tokio::time::timeout(PROPOSE_TIMEOUT, submitted.applied()).await.unwrap_or_else(|_| {
                                Err(ProposeError::Indeterminate(format!(
                                    "it was not committed within {} s (no quorum answered); it stays in this node's \
                                     log and commits if a quorum comes back",
                                    PROPOSE_TIMEOUT.as_secs()
                                )))
                            })
                        }
                        Err(e) => Err(e),
                    };
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    answered(proposed);
                });
            }
        });
        Self { submit, in_flight }
    }

    /// Submits `proposal` behind every proposal made before it; `answered` gets its outcome.
    fn propose(&self, proposal: bytes::Bytes, answered: Answered) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if let Err(unsent) = self.submit.send((proposal, answered)) {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            let (_, answered) = unsent.0;
            answered(Err(ProposeError::Indeterminate("this node's proposer stopped".into())));
        }
    }

    /// Proposes `proposals` in order for no client; a failure is logged (at debug) with
    /// `lost`, what it means.
    fn propose_unanswered(&self, proposals: Vec<bytes::Bytes>, lost: &'static str) {
        for proposal in proposals {
            self.propose(
                proposal,
                Box::new(move |proposed| {
                    if let Err(e) = proposed {
                        tracing::debug!(error = ?e, "{lost}");
                    }
                }),
            );
        }
    }
}

/// [`Mutation::FollowerDiverges`]: a node that does not lead changes the value of the
/// first message of a replicated publish.
fn diverge(command: &mut Command, serving: bool) {
    if let (false, Command::Publish { messages, .. }) = (serving, command) {
        if let Some(first) = messages.first_mut() {
            first.value = bytes::Bytes::from(format!("diverged {}", first.value.len()));
        }
    }
}
