//! The broker: topics, subscriptions and streams, and the counters that number them.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::config::BrokerConfig;
use super::dead_letter::Transit;
use super::delivery::Output;
use super::error::BrokerError;
use super::stream::StreamState;
use super::subscription::{Cursor, Subscription};
use super::timers::{DriverTimer, MessageKey, Timer, TimerTable};
use super::topic::Topic;
use super::{Notice, StreamId};
use crate::storage::{Storage, StorageError};

/// The whole broker state. See the module docs for how a driver calls it.
pub struct Broker {
    pub(super) config: BrokerConfig,
    pub(super) storage: Box<dyn Storage>,
    pub(super) topics: BTreeMap<String, Topic>,
    /// Subscriptions by uid; `subscription_uids` finds them by name.
    pub(super) subscriptions: BTreeMap<u64, Subscription>,
    pub(super) subscription_uids: BTreeMap<String, u64>,
    pub(super) streams: BTreeMap<StreamId, StreamState>,
    /// Closed streams that named their client and left leases, which wait for the client
    /// (see `client_id`). Each holds at least one lease: never more of them than leases.
    pub(super) detached: BTreeMap<StreamId, StreamState>,
    /// Every lease deadline, backoff end and member session, and the driver's timers.
    /// Session timers of streams that are gone are skipped when they come due.
    pub(super) timers: TimerTable,
    /// Dead-letter copies waiting for a sync (acknowledgement after fsync only).
    pub(super) transits: Vec<Transit>,
    /// Topics that got dead-letter copies during the current input, dispatched at its end.
    pub(super) topics_to_dispatch: BTreeSet<String>,
    /// The latest wall-clock time the driver gave (publish times of dead-letter copies).
    pub(super) wall_ms: u64,
    pub(super) outputs: VecDeque<Output>,
    pub(super) next_topic_uid: u64,
    pub(super) next_subscription_uid: u64,
    pub(super) next_stream_id: u64,
    pub(super) next_lease_seq: u64,
    /// Set when the broker restored saved state: the first wall time it is given moves the
    /// lease counter past every sequence number an earlier run could have issued, so an
    /// ack id from before the restart never names a new lease (see `set_wall_ms`).
    pub(super) lease_seq_from_wall: bool,
    pub(super) next_ephemeral: u64,
    /// Publishes are acknowledged (and records shown to readers) only once synced.
    pub(super) after_sync: bool,
    /// The metadata as last saved, so a checkpoint writes only when something changed.
    pub(super) saved_meta: Vec<u8>,
    /// Topic and subscription changes since the metadata was last saved.
    pub(super) journal: super::journal::Journal,
    /// Records that could not be read, by (topic uid, partition, offset).
    pub(super) read_faults: BTreeMap<(u64, u32, u64), StorageError>,
    /// Notices for an observer, when one asked for them (see `notice`); drained every turn.
    pub(super) notices: Option<VecDeque<Notice>>,
    /// Dedupe entries of all topics together (see `BrokerConfig::dedupe_keys_broker_max`):
    /// a publish adjusts it by what its topic's index gained or lost, and anything else that
    /// changes indexes counts them again.
    pub(super) dedupe_entries: usize,
    /// Replicated ack floors applied so far (only a mutation reads it).
    pub(super) floors_applied: u64,
    /// Set once the broker leads a cluster (`Command::Lead`): dead-letter moves and
    /// redrives are then decided here and applied by every replica from the Raft log.
    pub(super) replicated: bool,
    /// Dead-letter moves this leader decided that have not committed: (subscription uid,
    /// partition, offset), each in transit in its cursor, to the term it decided it in.
    pub(super) moves_in_flight: BTreeMap<(u64, u32, u64), u64>,
    /// The cluster term this broker last led in (0: it never led).
    pub(super) term: u64,
    /// Commands this leader decided for the cluster to commit (see [`Broker::take_decided`]).
    pub(super) decided: Vec<super::Command>,
}

/// Leases a run may issue per millisecond of wall time before a restart could reuse its
/// sequence numbers (see [`Broker::set_wall_ms`]).
const LEASES_PER_MS_MAX: u64 = 1_000_000;

impl Broker {
    /// Counts every topic's dedupe entries again, after a change the publish path does not
    /// account for (a restore, a cut, retention, expiry, a deletion).
    pub(super) fn recount_dedupe(&mut self) {
        self.dedupe_entries = self.topics.values().map(|t| t.dedupe.len()).sum();
    }

    /// A broker with no topics, storing partitions in `storage` (whatever it holds is
    /// ignored: [`Broker::open`] restores it).
    pub fn new(config: BrokerConfig, storage: Box<dyn Storage>) -> Result<Self, BrokerError> {
        config.validate()?;
        let after_sync = storage.fsync_policy().acks_after_sync();
        Ok(Self {
            config,
            storage,
            topics: BTreeMap::new(),
            subscriptions: BTreeMap::new(),
            subscription_uids: BTreeMap::new(),
            streams: BTreeMap::new(),
            detached: BTreeMap::new(),
            timers: TimerTable::default(),
            transits: Vec::new(),
            topics_to_dispatch: BTreeSet::new(),
            wall_ms: 0,
            outputs: VecDeque::new(),
            next_topic_uid: 1,
            next_subscription_uid: 1,
            next_stream_id: 1,
            next_lease_seq: 1,
            lease_seq_from_wall: false,
            next_ephemeral: 1,
            after_sync,
            saved_meta: Vec::new(),
            journal: super::journal::Journal::default(),
            read_faults: BTreeMap::new(),
            notices: None,
            dedupe_entries: 0,
            floors_applied: 0,
            replicated: false,
            moves_in_flight: BTreeMap::new(),
            term: 0,
            decided: Vec::new(),
        })
    }

    /// True when the broker holds nothing: no topic, no subscription (a new broker, or
    /// one opened on empty storage).
    pub fn is_pristine(&self) -> bool {
        self.topics.is_empty() && self.subscriptions.is_empty()
    }

    /// True for a broker that holds nothing and restored nothing: no saved metadata (which
    /// carries its counters and numbers its leases from the wall clock), no topic ever
    /// made. A recording of it replays on a new broker; any other needs a snapshot.
    pub fn is_new(&self) -> bool {
        self.is_pristine()
            && self.saved_meta.is_empty()
            && !self.lease_seq_from_wall
            && self.next_topic_uid == 1
            && self.next_subscription_uid == 1
    }

    /// The settings the broker was made with.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// The next output (a delivery, or a stream the broker ended), oldest first.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When the next timer comes due: the earliest lease deadline, end of a backoff, end
    /// of a member's session, or timer of the driver's. At it, apply [`Command::Tick`],
    /// then whatever [`Broker::driver_timer_due`] says.
    ///
    /// [`Command::Tick`]: super::Command::Tick
    pub fn poll_timeout(&self) -> Option<u64> {
        self.timers.next()
    }

    /// Sets the driver's `timer` to come due at `at_ms` (`None` stops it). The core keeps
    /// the driver's schedule only so that [`Broker::poll_timeout`] covers it: no reply or
    /// output depends on it, so it is not a command.
    pub fn set_driver_timer(&mut self, timer: DriverTimer, at_ms: Option<u64>) {
        self.timers.set_driver(timer, at_ms);
    }

    /// True when the driver's `timer` is due at `now_ms`.
    pub fn driver_timer_due(&self, timer: DriverTimer, now_ms: u64) -> bool {
        self.timers.driver_due(timer, now_ms)
    }

    /// Tells the core the wall-clock time (milliseconds since the Unix epoch), which it
    /// never reads itself: dead-letter copies are stamped with it. Call it before each
    /// turn's inputs; a time earlier than one already given is ignored.
    ///
    /// After a restart on saved state, the first call also starts the lease counter at
    /// `wall_ms × 1 000 000`. Lease sequence numbers are not saved, and an earlier run
    /// issued fewer than a million leases per millisecond of its life, so no ack id from
    /// before the restart can name a lease of this run. (A wall clock set back across the
    /// restart could break this.) A new broker starts at 1.
    pub(super) fn set_wall_ms(&mut self, wall_ms: u64) {
        self.wall_ms = self.wall_ms.max(wall_ms);
        if self.lease_seq_from_wall && wall_ms > 0 {
            self.next_lease_seq = self.next_lease_seq.max(wall_ms.saturating_mul(LEASES_PER_MS_MAX));
            self.lease_seq_from_wall = false;
        }
    }

    /// Dispatches the topics that received dead-letter copies during this input.
    pub(super) fn dispatch_dead_letters(&mut self, now_ms: u64) {
        for topic in std::mem::take(&mut self.topics_to_dispatch) {
            if self.topics.contains_key(&topic) {
                self.dispatch_topic(now_ms, &topic);
            }
        }
    }

    /// The subscription `uid`, which the caller knows exists (a bug otherwise).
    pub(super) fn subscription_mut(&mut self, uid: u64) -> &mut Subscription {
        self.subscriptions.get_mut(&uid).unwrap_or_else(|| panic!("subscription uid {uid} is not known"))
    }

    /// The cursor of `partition` of the subscription `uid`; both exist (a bug otherwise).
    pub(super) fn cursor_mut(&mut self, uid: u64, partition: u32) -> &mut Cursor {
        let sub = self.subscription_mut(uid);
        let name = &sub.name;
        let count = sub.cursors.len();
        assert!((partition as usize) < count, "{name} has {count} cursors, not one for partition {partition}");
        &mut sub.cursors[partition as usize]
    }

    pub(super) fn subscription_by_name(&self, name: &str) -> Result<&Subscription, BrokerError> {
        self.subscription_uids
            .get(name)
            .and_then(|uid| self.subscriptions.get(uid))
            .ok_or_else(|| BrokerError::SubscriptionNotFound { subscription: name.to_string() })
    }

    pub(super) fn subscription_uid(&self, name: &str) -> Result<u64, BrokerError> {
        self.subscription_by_name(name).map(|s| s.uid)
    }

    pub(super) fn topic(&self, name: &str) -> Result<&Topic, BrokerError> {
        self.topics.get(name).ok_or_else(|| BrokerError::TopicNotFound { topic: name.to_string() })
    }

    /// Panics if any invariant is broken: cursors, lease index, stream accounting, client ids.
    pub fn assert_invariants(&self) {
        let entries: usize = self.topics.values().map(|t| t.dedupe.len()).sum();
        assert_eq!(self.dedupe_entries, entries, "the broker's count of dedupe entries");
        let mut leases = 0;
        let mut backoffs = 0;
        let mut per_stream: BTreeMap<StreamId, (u32, u64)> = BTreeMap::new();
        for sub in self.subscriptions.values() {
            let topic = &self.topics[&sub.topic];
            assert_eq!(sub.cursors.len(), topic.logs.len(), "subscription {} cursor count", sub.name);
            self.assert_group_invariants(sub);
            for (partition, cursor) in sub.cursors.iter().enumerate() {
                cursor.assert_invariants();
                for (offset, ready) in &cursor.delayed {
                    backoffs += 1;
                    let key = MessageKey::new(sub.uid, partition as u32, *offset);
                    let timer = Timer::Backoff(key);
                    assert!(
                        self.timers.contains(timer, *ready),
                        "backoff of {key:?} at {ready} missing from the timers"
                    );
                }
                for (offset, lease) in &cursor.leased {
                    leases += 1;
                    let key = MessageKey::new(sub.uid, partition as u32, *offset);
                    let at = lease.deadline_ms;
                    assert!(
                        self.timers.contains(Timer::Lease(key), at),
                        "lease of {key:?} at {at} missing from the timers"
                    );
                    if let Some(stream) = lease.stream {
                        let entry = per_stream.entry(stream).or_default();
                        entry.0 += 1;
                        entry.1 += lease.bytes;
                    }
                }
            }
        }
        assert_eq!((leases, backoffs), self.timers.message_timers(), "stale lease or backoff timers");
        for topic in self.topics.values() {
            topic.dedupe.assert_invariants(&topic.logs);
        }
        for (id, stream) in self.streams.iter().chain(&self.detached) {
            let counted = per_stream.get(id).copied().unwrap_or_default();
            assert_eq!((stream.outstanding_messages, stream.outstanding_bytes), counted, "{id} outstanding");
        }
        for id in per_stream.keys() {
            let known = self.streams.contains_key(id) || self.detached.contains_key(id);
            assert!(known, "a lease is held by {id}, which is neither open nor detached");
        }
        self.assert_client_invariants();
    }
}
