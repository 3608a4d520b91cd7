//! One node of a cluster, as the broker sees it: it proposes commands, is handed the
//! committed ones in log order to apply, and reads the cluster's state (who leads, the
//! term, the indexes). openraft runs underneath; none of its types show.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::TryStreamExt;
use openraft::errors::{ClientWriteError, InitializeError, RaftError};
use openraft::impls::ProgressResponder;
use openraft::metrics::{RaftDataMetrics, RaftServerMetrics};
use openraft::raft::ClientWriteResult;
use openraft::rt::watch::WatchReceiver;
use openraft::storage::{ApplyResponder, EntryResponder, RaftStateMachine};
use openraft::type_config::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::type_config::alias::{OneshotReceiverOf, WatchReceiverOf};
use openraft::Instant as _;
use openraft::{
    BasicNode, Config, EntryPayload, OptionalSend, RaftSnapshotBuilder, ServerState, SnapshotPolicy, StoredMembership,
};

use super::log::{identity, RaftLog};
use super::network::{Connector, PeerNetwork, RaftService, SnapshotData, PEER_MESSAGE_BYTES_MAX};
use super::snapshot::SnapshotStore;
use super::{pb, Applied, Proposal, TypeConfig};
use crate::core::Reply;
use crate::env::Fs;

type LogId = LogIdOf<TypeConfig>;
type Raft = openraft::Raft<TypeConfig, BrokerSm>;

/// How a node's Raft runs: its id, every node's peer address, and its timing.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// This node's id (a key of `peers`).
    pub id: u64,
    /// Every node's id and peer address (`HOST:PORT`), this one's included.
    pub peers: BTreeMap<u64, String>,
    /// How often a leader sends heartbeats.
    pub heartbeat_ms: u64,
    /// A follower that hears no leader for a time drawn from this range stands for election.
    pub election_timeout_ms: (u64, u64),
    /// Seeds the node's randomness (its election timeouts): from the OS in production, from
    /// the scenario's seed in the simulator.
    pub seed: u64,
    /// Whether the Raft log is fsynced before a write counts (`fsync = always`); without,
    /// a write is acknowledged once a majority wrote it (see [`RaftLog::without_fsync`]).
    pub fsync: bool,
    /// A defect on purpose, for the simulator's mutation test: the Raft log counts an
    /// append before it is synced (see [`RaftLog::with_unsynced_appends`]).
    pub appends_unsynced: bool,
    /// Entries applied since the last snapshot before the next is taken, at the soonest;
    /// as many entries are kept behind it, for a follower a little behind. 0 takes none
    /// (the log is never purged).
    pub snapshot_entries: u64,
    /// The largest entry a proposal makes (about the largest publish request): a batch of
    /// entries sent to a follower holds as many as fit in a peer message.
    pub entry_bytes_max: usize,
}

impl NodeSettings {
    /// The timing a broker cluster runs with: a heartbeat every 50 ms, elections after 150
    /// to 300 ms of silence, so a dead leader is replaced in well under a second. (The Raft
    /// log's fsyncs run beside the heartbeats, not in their way.)
    pub fn new(id: u64, peers: BTreeMap<u64, String>, seed: u64) -> Self {
        Self {
            id,
            peers,
            heartbeat_ms: 50,
            election_timeout_ms: (150, 300),
            seed,
            fsync: true,
            appends_unsynced: false,
            snapshot_entries: SNAPSHOT_ENTRIES_DEFAULT,
            entry_bytes_max: 16 << 20,
        }
    }
}

/// Entries in one AppendEntries at most: 64, or fewer when that many of the largest would
/// not fit in one peer message.
fn payload_entries_max(entry_bytes_max: usize) -> u64 {
    (PEER_MESSAGE_BYTES_MAX / entry_bytes_max.max(1)).clamp(1, 64) as u64
}

/// Bytes of proposals applied since the last snapshot past which a node asks openraft for
/// one, whatever [`NodeSettings::snapshot_entries`] says: a node keeps its Raft log in memory
/// until a snapshot lets it purge, and an entry is a publish request, of any size up to the
/// limit, so a count of entries alone bounds that memory only loosely.
pub const SNAPSHOT_APPLIED_BYTES: u64 = 64 << 20;

/// [`NodeSettings::snapshot_entries`] by default.
pub const SNAPSHOT_ENTRIES_DEFAULT: u64 = 10_000;

/// Entries kept behind a snapshot, at most: a follower further behind gets the snapshot.
const SNAPSHOT_KEEP_ENTRIES_MAX: u64 = 1_000;

/// How long a snapshot may take to reach a follower and be installed there.
const SNAPSHOT_SEND_TIMEOUT_MS: u64 = 30_000;

/// A committed proposal, handed to the broker to apply, in log order.
pub struct Committed {
    /// Its log index.
    pub index: u64,
    /// The proposal's bytes (a command-log entry).
    pub proposal: Bytes,
    /// Where its reply goes: present on the node that proposed it, in the process that did.
    pub answer: Option<Answerer>,
}

/// Answers the client waiting for a committed proposal.
pub struct Answerer {
    index: u64,
    responder: ApplyResponder<TypeConfig>,
}

impl Answerer {
    /// Sends the broker's reply to the proposer.
    pub fn send(self, reply: Reply) {
        self.responder.send(Applied { index: self.index, reply: Some(reply) });
    }
}

/// Applies committed proposals: the broker's driver, which owns the broker.
pub trait Applier: Send + Sync + 'static {
    /// Applies `batch` in order and resolves once every entry is applied (its answer may
    /// be sent later). An error stops this node's Raft: the broker cannot go on.
    fn apply(&self, batch: Vec<Committed>) -> BoxFuture<'static, Result<(), String>>;

    /// The broker's checkpoint now, every entry handed to [`Applier::apply`] applied: its
    /// state but the records, to restart from ([`Applier::restore`]), and what makes the
    /// records durable where they are. An error puts the snapshot off.
    fn snapshot(&self) -> BoxFuture<'static, Result<Checkpoint, String>>;

    /// The broker's whole state now, records included, every entry handed to
    /// [`Applier::apply`] applied: what a follower behind the purged log is sent. An error
    /// (a state too large to send) fails the sending, which is tried again.
    fn whole_state(&self) -> BoxFuture<'static, Result<Bytes, String>>;

    /// Replaces the broker's state with `state`, the state after entry `index` (from
    /// [`Applier::whole_state`] on another node). An error stops this node's Raft.
    fn install(&self, index: u64, state: Bytes) -> BoxFuture<'static, Result<(), String>>;

    /// As the node starts, before any entry is applied: restores the broker to this node's
    /// last checkpoint and the entry it was taken after, or with none to nothing. An error
    /// refuses the start.
    fn restore(&self, checkpoint: Option<(u64, Bytes)>) -> BoxFuture<'static, Result<(), String>>;
}

/// A broker's checkpoint ([`Applier::snapshot`]).
pub struct Checkpoint {
    /// The broker's state but its records.
    pub state: Bytes,
    /// Makes the records the state counts durable: it may block, and runs beside the
    /// broker's next applies. The checkpoint counts only once it succeeded.
    pub sync: FileWork,
    /// Removes files of records the state no longer counts (retention's and deleted
    /// topics'), once the checkpoint is saved: the snapshot before it may count them.
    pub after_save: FileWork,
}

/// Work on the broker's files that may block, run off the broker's thread.
pub type FileWork = Box<dyn FnOnce() -> Result<(), String> + Send + Sync>;

impl Checkpoint {
    /// Runs the sync (on a thread that may block), then hands back the state and what to
    /// run once it is saved.
    fn synced(self) -> io::Result<(Bytes, FileWork)> {
        crate::env::blocking(self.sync).map_err(io::Error::other)?;
        Ok((self.state, self.after_save))
    }
}

/// Runs `after_save` (on a thread that may block); a failure leaves files behind, and says so.
fn run_after_save(after_save: FileWork) {
    if let Err(e) = crate::env::blocking(after_save) {
        tracing::warn!(error = %e, "files the last snapshot no longer counts were not removed");
    }
}

/// Why a proposal got no reply from the state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposeError {
    /// This node does not lead (or its leadership lapsed); nothing was appended. The
    /// leader, when known.
    NotLeader(Option<u64>),
    /// The entry was appended but its fate is unknown: this node lost its leadership before
    /// it committed, and another leader may yet commit it.
    Indeterminate(String),
}

/// An entry handed to the Raft core: [`Submitted::applied`] waits for the broker's reply.
pub struct Submitted(OneshotReceiverOf<TypeConfig, ClientWriteResult<TypeConfig>>);

impl Submitted {
    /// Waits until this node applied the entry; the broker's reply, or why there is none.
    pub async fn applied(self) -> Result<Reply, ProposeError> {
        let Ok(written) = self.0.await else {
            return Err(ProposeError::Indeterminate("this node's Raft stopped before the entry applied".into()));
        };
        match written {
            Ok(response) => response
                .data
                .reply
                .ok_or_else(|| ProposeError::Indeterminate("the entry applied without a reply".into())),
            Err(ClientWriteError::ForwardToLeader(f)) => Err(ProposeError::NotLeader(f.leader_id)),
            Err(e) => Err(ProposeError::Indeterminate(e.to_string())),
        }
    }
}

/// The cluster's state as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterState {
    /// This node's id.
    pub id: u64,
    /// `leader`, `candidate`, `follower`, `learner` or `shutdown`.
    pub role: &'static str,
    /// The current term.
    pub term: u64,
    /// The leader this node knows of.
    pub leader: Option<u64>,
    /// The index the cluster committed, as far as this node knows.
    pub committed: u64,
    /// The index this node applied.
    pub applied: u64,
    /// The last index in this node's log.
    pub last_log: u64,
    /// True when this node leads, has applied an entry of its own term (so its state holds
    /// everything committed before it), and heard from a quorum within the election
    /// timeout: it may take writes and serve reads.
    pub serving: bool,
}

/// A running node.
#[derive(Clone)]
pub struct ClusterNode {
    id: u64,
    raft: Raft,
    /// A leader that heard from no quorum for this long stops serving.
    quorum_lapse: Duration,
    /// openraft's reports, read in place: its role, vote and leader; its log's and applies'
    /// progress; and the whole, read only for the stop (its last report goes there alone).
    server: WatchReceiverOf<TypeConfig, RaftServerMetrics<TypeConfig>>,
    data: WatchReceiverOf<TypeConfig, RaftDataMetrics<TypeConfig>>,
    all: WatchReceiverOf<TypeConfig, openraft::RaftMetrics<TypeConfig>>,
}

/// The state machine openraft drives: it hands each committed batch to the broker, and
/// takes and installs the broker's snapshots.
///
/// A snapshot saved here is the broker's checkpoint: its partition logs are the data, synced
/// before it is saved, and the snapshot holds the rest (topics, subscriptions, offsets, dedupe
/// indexes), so taking one costs a sync and the metadata, not a copy of every record. The
/// node restarts from it and applies the Raft log on. A follower behind the purged log is
/// sent the broker's whole state instead, records included, taken when it is sent.
pub struct BrokerSm {
    applier: Arc<dyn Applier>,
    applied: Option<LogId>,
    membership: StoredMembershipOf<TypeConfig>,
    snapshots: SnapshotStore,
    /// Set once Raft started: from then on openraft reads the current snapshot only to send
    /// it to a follower (before, to learn where the node restarts from).
    sending: Arc<std::sync::atomic::AtomicBool>,
    /// Bytes of proposals applied since the last snapshot.
    applied_bytes: u64,
    /// The last snapshot's size: the next waits until as many bytes were applied since, so
    /// taking snapshots costs at most about what writing the log did.
    snapshot_bytes: u64,
    /// The node's Raft once it started (never set when snapshots are off): asked for a
    /// snapshot each time another [`SNAPSHOT_APPLIED_BYTES`] were applied since the last.
    raft: Arc<std::sync::OnceLock<Raft>>,
}

impl ClusterNode {
    /// Opens the node's Raft log in `dir` (refused if it belongs to another node or
    /// cluster), starts Raft, and initialises a pristine cluster (every node may: they all
    /// propose the same membership, and a node with a log refuses). Committed entries go to
    /// `applier`. openraft's tasks run in its seeded runtime scope, from `settings.seed`.
    pub async fn start(
        settings: &NodeSettings,
        fs: Arc<dyn Fs>,
        dir: &Path,
        connect: Connector,
        applier: Arc<dyn Applier>,
    ) -> io::Result<Self> {
        let scoped = openraft::rt::deterministic_rng::DeterministicRng::<openraft_rt_tokio::TokioRuntime>::scope;
        scoped(settings.seed, async move {
            let log = RaftLog::open(fs.clone(), dir, &identity(settings.id, settings.peers.keys().copied()))?;
            let snapshots = SnapshotStore::open(fs, dir)?;
            let log = if settings.fsync { log } else { log.without_fsync() };
            let log = if settings.appends_unsynced { log.with_unsynced_appends() } else { log };
            let config = Config {
                cluster_name: "mini-pubsub".into(),
                heartbeat_interval: settings.heartbeat_ms,
                election_timeout_min: settings.election_timeout_ms.0,
                election_timeout_max: settings.election_timeout_ms.1,
                snapshot_policy: match settings.snapshot_entries {
                    0 => SnapshotPolicy::Never,
                    n => SnapshotPolicy::LogsSinceLast(n),
                },
                max_in_snapshot_log_to_keep: settings.snapshot_entries.min(SNAPSHOT_KEEP_ENTRIES_MAX),
                install_snapshot_timeout: SNAPSHOT_SEND_TIMEOUT_MS,
                // Proposals are up to a publish request each; a lagging follower gets them in
                // batches that fit in one peer message.
                max_payload_entries: payload_entries_max(settings.entry_bytes_max),
                // A node that times out asks first whether it would win: one whose log is
                // behind (back from a crash, say) or that was cut off then moves no term, so it
                // neither deposes a leader nor keeps a node that could win from standing.
                enable_pre_vote: Some(true),
                ..Default::default()
            };
            let config = Arc::new(config.validate().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?);
            // The broker restarts from its checkpoint; openraft applies the log on from there.
            let current = snapshots.current();
            let (applied, membership) = current
                .as_ref()
                .map_or((None, StoredMembership::default()), |s| (s.meta.last_log_id, s.meta.last_membership.clone()));
            let checkpoint = current.as_ref().map(|s| (s.meta.last_log_id.map_or(0, |l| l.index), s.snapshot.clone()));
            applier.restore(checkpoint).await.map_err(io::Error::other)?;
            let snapshot_bytes = current.map_or(0, |s| s.snapshot.len() as u64);
            let sending = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let raft_of_machine = Arc::new(std::sync::OnceLock::new());
            let machine = BrokerSm {
                applier,
                applied,
                membership,
                snapshots,
                sending: sending.clone(),
                applied_bytes: 0,
                snapshot_bytes,
                raft: raft_of_machine.clone(),
            };
            let raft = Raft::new(settings.id, config, PeerNetwork::new(settings.id, connect), log, machine)
                .await
                .map_err(|e| io::Error::other(e.to_string()))?;
            if settings.snapshot_entries > 0 {
                let _ = raft_of_machine.set(raft.clone());
            }
            sending.store(true, std::sync::atomic::Ordering::Release);
            let members: BTreeMap<u64, BasicNode> =
                settings.peers.iter().map(|(id, addr)| (*id, BasicNode { addr: addr.clone() })).collect();
            match raft.initialize(members).await {
                Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(io::Error::other(format!("cannot initialise the cluster: {e}"))),
            }
            let quorum_lapse = Duration::from_millis(settings.election_timeout_ms.1);
            let (server, data, all) = (raft.server_metrics(), raft.data_metrics(), raft.metrics());
            Ok(Self { id: settings.id, raft, quorum_lapse, server, data, all })
        })
        .await
    }

    /// The service this node's peer port serves.
    pub fn service(&self) -> pb::raft_server::RaftServer<RaftService<BrokerSm>> {
        RaftService::new(self.raft.clone())
    }

    /// Hands one entry to the Raft core without waiting for it to commit. The core takes
    /// entries in the order of these calls, so one task submitting one after another puts
    /// them in the log in that order; [`Submitted::applied`] waits for its reply.
    pub async fn submit(&self, proposal: Bytes) -> Result<Submitted, ProposeError> {
        let (responder, applied) = ProgressResponder::complete_only();
        self.raft
            .client_write_ff(Proposal(proposal), Some(responder))
            .await
            .map_err(|e| ProposeError::Indeterminate(format!("this node's Raft stopped: {e}")))?;
        Ok(Submitted(applied))
    }

    /// The cluster's state as this node sees it now.
    ///
    /// It is read from the two reports a [`StateWatcher`] wakes on (openraft sends the
    /// progress, then the role, then the whole), so a watcher that wakes reads what woke it.
    /// The term is the vote's once it is saved.
    pub fn state(&self) -> ClusterState {
        // Read in place: this runs for every call a node takes.
        let stopped = self.all.borrow_watched().state == ServerState::Shutdown;
        let server = self.server.borrow_watched();
        let data = self.data.borrow_watched();
        let state = if stopped { ServerState::Shutdown } else { server.state };
        let role = match state {
            ServerState::Leader => "leader",
            ServerState::Candidate => "candidate",
            ServerState::Follower => "follower",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let term = server.vote.leader_id.term;
        let own_term_applied = data.last_applied.is_some_and(|l| l.leader_id.term == term);
        let quorum_heard = data.last_quorum_acked.is_some_and(|at| (*at).elapsed() < self.quorum_lapse);
        ClusterState {
            id: self.id,
            role,
            term,
            leader: server.current_leader,
            committed: data.cluster_committed.or(data.local_committed).map_or(0, |l| l.index),
            applied: data.last_applied.map_or(0, |l| l.index),
            last_log: data.last_log.map_or(0, |l| l.index),
            serving: state == ServerState::Leader
                && server.current_leader == Some(self.id)
                && own_term_applied
                && quorum_heard,
        }
    }

    /// A watcher of the cluster's state for another task.
    pub fn watcher(&self) -> StateWatcher {
        StateWatcher {
            node: self.clone(),
            server: self.server.clone(),
            data: self.data.clone(),
            seen: None,
            stopped: false,
        }
    }

    /// Asks node `to` to take over the leadership from this node (a leader).
    pub async fn transfer_leader(&self, to: u64) -> Result<(), String> {
        self.raft.trigger().transfer_leader(to).await.map_err(|e| e.to_string())
    }

    /// Resolves when this node's Raft stopped on its own: openraft stops a node whose log
    /// or state machine failed (a disk error), and it does not start again by itself.
    pub async fn stopped(&self) {
        let mut watcher = self.watcher();
        while self.state().role != "shutdown" {
            if !watcher.changed().await {
                return;
            }
        }
    }

    /// Stops this node's Raft.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "stopping Raft failed");
        }
    }
}

/// Waits for changes of a node's role, term, leader or serving.
///
/// openraft reports its metrics after every turn of its loop, thousands of times a second
/// under load, mostly for the log's and the applies' progress. A watcher of those would
/// wake on each; this one wakes on a change of the node's role, vote or membership, and
/// looks at the progress only while it can make a leader serve (its own term's first entry
/// applied, a quorum heard). That a serving leader stops hearing from a quorum changes
/// nothing Raft reports, so it is looked at on a timer then.
pub struct StateWatcher {
    node: ClusterNode,
    server: WatchReceiverOf<TypeConfig, RaftServerMetrics<TypeConfig>>,
    data: WatchReceiverOf<TypeConfig, RaftDataMetrics<TypeConfig>>,
    seen: Option<(&'static str, u64, Option<u64>, bool)>,
    /// openraft stopped: its reports end.
    stopped: bool,
}

impl StateWatcher {
    /// Resolves when the node's role, term, leader or serving differs from what the last
    /// call saw (the first call at once); false once the node stopped and its last state
    /// (shutdown) was told.
    pub async fn changed(&mut self) -> bool {
        loop {
            let state = self.node.state();
            let now = (state.role, state.term, state.leader, state.serving);
            if self.seen != Some(now) {
                self.seen = Some(now);
                return true;
            }
            if self.stopped {
                return false;
            }
            let leading = state.role == "leader";
            // A report channel that closes is openraft stopping: its state is read once more.
            self.stopped = tokio::select! {
                changed = self.server.changed() => changed.is_err(),
                changed = self.data.changed(), if leading && !state.serving => changed.is_err(),
                () = tokio::time::sleep(self.node.quorum_lapse / 4), if leading && state.serving => false,
            };
        }
    }
}

/// A snapshot taken, to be saved: openraft runs [`RaftSnapshotBuilder::build_snapshot`] in
/// a task of its own, beside the next applies, so the broker's state is taken before.
pub struct SnapshotBuilder {
    meta: SnapshotMetaOf<TypeConfig>,
    taken: Option<Result<Checkpoint, String>>,
    snapshots: SnapshotStore,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    /// Syncs the records the checkpoint counts (the broker applies on meanwhile), then
    /// saves it.
    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, SnapshotData>, io::Error> {
        let taken = self.taken.take().unwrap_or_else(|| Err("the snapshot was built already".into()));
        let synced = taken.map_err(io::Error::other).and_then(Checkpoint::synced);
        let (data, after_save) = match (synced, self.snapshots.current()) {
            (Ok(synced), _) => synced,
            // openraft stops a node whose snapshot fails: the last one stands instead (it
            // purges nothing behind an older snapshot), and the next is tried later.
            (Err(e), Some(last)) => {
                tracing::warn!(error = %e, "no snapshot now; the last one stands and the Raft log is kept");
                return Ok(last);
            }
            (Err(e), None) => return Err(e),
        };
        let saved = self.snapshots.save_if_newer(&self.meta, data.clone())?;
        // Either way a snapshot at or after this one is saved: it counts none of them.
        run_after_save(after_save);
        if !saved {
            // An install from the leader saved a newer one meanwhile.
            return Ok(self.snapshots.current().expect("a newer one was saved"));
        }
        tracing::info!(index = self.meta.last_log_id.map_or(0, |l| l.index), bytes = data.len(), "snapshot saved");
        Ok(SnapshotOf::<TypeConfig, SnapshotData> { meta: self.meta.clone(), snapshot: data })
    }
}

impl BrokerSm {
    /// Takes the broker's state now, for a snapshot at the last applied entry.
    async fn take(&mut self) -> SnapshotBuilder {
        let meta = SnapshotMetaOf::<TypeConfig> { last_log_id: self.applied, last_membership: self.membership.clone() };
        let taken = self.applier.snapshot().await;
        if let Ok(checkpoint) = &taken {
            self.applied_bytes = 0;
            self.snapshot_bytes = checkpoint.state.len() as u64;
        }
        SnapshotBuilder { meta, taken: Some(taken), snapshots: self.snapshots.clone() }
    }
}

impl RaftStateMachine<TypeConfig> for BrokerSm {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembershipOf<TypeConfig>), io::Error> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<S>(&mut self, mut entries: S) -> Result<(), io::Error>
    where
        S: futures_util::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            self.applied = Some(entry.log_id);
            let index = entry.log_id.index;
            match entry.payload {
                EntryPayload::Normal(Proposal(proposal)) => {
                    let before = self.applied_bytes;
                    self.applied_bytes += proposal.len() as u64;
                    if self.applied_bytes / SNAPSHOT_APPLIED_BYTES > before / SNAPSHOT_APPLIED_BYTES {
                        if let Some(raft) = self.raft.get() {
                            // Asked from a task of its own: openraft's core may be waiting for
                            // this apply to end.
                            let raft = raft.clone();
                            tokio::spawn(async move {
                                if let Err(e) = raft.trigger().snapshot().await {
                                    tracing::debug!(error = %e, "no snapshot asked for: Raft stopped");
                                }
                            });
                        }
                    }
                    let answer = responder.map(|responder| Answerer { index, responder });
                    batch.push(Committed { index, proposal, answer });
                }
                EntryPayload::Blank => {
                    if let Some(responder) = responder {
                        responder.send(Applied { index, reply: None });
                    }
                }
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    if let Some(responder) = responder {
                        responder.send(Applied { index, reply: None });
                    }
                }
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.applier.apply(batch).await.map_err(io::Error::other)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        self.take().await
    }

    async fn try_create_snapshot_builder(&mut self, force: bool) -> Option<SnapshotBuilder> {
        if !force && self.applied_bytes < self.snapshot_bytes {
            // Not yet: a large state is snapshotted as often as its size is written again.
            return None;
        }
        let builder = self.take().await;
        match (&builder.taken, force) {
            (Some(Err(e)), false) => {
                tracing::warn!(error = %e, "no snapshot now; the Raft log is kept until one is taken");
                None
            }
            _ => Some(builder),
        }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMetaOf<TypeConfig>, data: SnapshotData) -> io::Result<()> {
        let index = meta.last_log_id.map_or(0, |l| l.index);
        // Saved first: a crash while the broker's logs are rewritten restarts from it.
        self.snapshots.save(meta, data.clone())?;
        self.applier.install(index, data).await.map_err(io::Error::other)?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        // The node restarts from its own checkpoint of what it installed.
        let (checkpoint, after_save) = self.applier.snapshot().await.map_err(io::Error::other)?.synced()?;
        self.snapshots.save(meta, checkpoint.clone())?;
        run_after_save(after_save);
        self.applied_bytes = 0;
        self.snapshot_bytes = checkpoint.len() as u64;
        tracing::info!(index, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<TypeConfig, SnapshotData>>, io::Error> {
        let Some(saved) = self.snapshots.current() else { return Ok(None) };
        if !self.sending.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(Some(saved));
        }
        // For a follower: the whole state now, at the last entry applied (at or after the
        // checkpoint's, which openraft purged the log behind).
        let meta = SnapshotMetaOf::<TypeConfig> { last_log_id: self.applied, last_membership: self.membership.clone() };
        let index = self.applied.map_or(0, |l| l.index);
        let state = match self.applier.whole_state().await {
            Ok(state) => {
                tracing::info!(index, bytes = state.len(), "whole state taken for a follower");
                state
            }
            // An error here would stop this node's Raft: the sending fails instead (an empty
            // state, which the network refuses to send), and is tried again later.
            Err(e) => {
                tracing::warn!(error = %e, "a follower behind the purged log cannot be sent this node's state");
                Bytes::new()
            }
        };
        Ok(Some(SnapshotOf::<TypeConfig, SnapshotData> { meta, snapshot: state }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_of_the_largest_entries_fits_in_one_peer_message() {
        assert_eq!(payload_entries_max(16 << 20), 64, "the default request bound");
        let largest = (60 << 20) + (1 << 20);
        let entries = payload_entries_max(largest);
        assert_eq!(entries, 17);
        assert!(entries as usize * largest <= PEER_MESSAGE_BYTES_MAX);
        assert_eq!(payload_entries_max(usize::MAX), 1, "one entry always goes");
    }
}
