//! What survives a restart: topics, subscriptions and committed offsets (the metadata),
//! and the partition logs' own durability (sync, and what a failed sync undoes).
//!
//! The metadata is a small protobuf message that the storage replaces atomically (the
//! base). Topic and subscription changes are appended to the metadata journal and answered
//! after the turn's sync made them durable (see `journal`); committed offsets are saved by
//! [`Broker::checkpoint`], which the driver calls on a timer and at shutdown, and which also
//! folds the journal into the base. Offsets acked after the last checkpoint are delivered
//! again after a crash: at least once, never lost.

use prost::Message;

use super::broker::Broker;
use super::config::BrokerConfig;
use super::counts::SubscriptionCounts;
use super::dedupe::Dedupe;
use super::error::BrokerError;
use super::group::Group;
use super::journal;
use super::retry::{DeadLetterPolicy, RetryPolicy};
use super::subscription::{Cursor, StartPosition, Subscription};
use super::topic::{visible_end, Topic};
use crate::storage::{Retention, Storage, StorageError};

#[derive(Clone, PartialEq, Message)]
pub(super) struct Meta {
    #[prost(uint64, tag = "1")]
    pub(super) next_topic_uid: u64,
    #[prost(uint64, tag = "2")]
    pub(super) next_subscription_uid: u64,
    #[prost(message, repeated, tag = "3")]
    pub(super) topics: Vec<TopicMeta>,
    #[prost(message, repeated, tag = "4")]
    pub(super) subscriptions: Vec<SubscriptionMeta>,
    /// The last metadata journal entry this covers (0 in metadata saved before the journal).
    #[prost(uint64, tag = "5")]
    pub(super) journal_seq: u64,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct TopicMeta {
    #[prost(string, tag = "1")]
    pub(super) name: String,
    #[prost(uint64, tag = "2")]
    pub(super) uid: u64,
    #[prost(uint32, tag = "3")]
    pub(super) partitions: u32,
    /// Unset in metadata saved before topics had their own window: the broker default.
    #[prost(uint64, optional, tag = "4")]
    pub(super) dedupe_window_ms: Option<u64>,
    /// Whether any record of the topic may carry an idempotency key.
    #[prost(bool, tag = "5")]
    pub(super) dedupe_keys_used: bool,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct SubscriptionMeta {
    #[prost(string, tag = "1")]
    pub(super) name: String,
    #[prost(uint64, tag = "2")]
    pub(super) uid: u64,
    #[prost(string, tag = "3")]
    pub(super) topic: String,
    #[prost(uint64, tag = "4")]
    pub(super) ack_deadline_ms: u64,
    #[prost(bool, tag = "5")]
    pub(super) start_latest: bool,
    /// The committed offset of each partition.
    #[prost(uint64, repeated, tag = "6")]
    pub(super) committed: Vec<u64>,
    /// The offsets acked above each partition's committed offset, so that an ack a
    /// checkpoint saved is never undone by a crash (a lease left hanging below it keeps
    /// the committed offset back).
    #[prost(message, repeated, tag = "7")]
    pub(super) acked: Vec<AckedRanges>,
    /// The retry policy, when the subscription has one.
    #[prost(message, optional, tag = "8")]
    pub(super) retry: Option<RetryMeta>,
    /// The dead-letter policy, when the subscription has one.
    #[prost(message, optional, tag = "9")]
    pub(super) dead_letter: Option<DeadLetterMeta>,
    /// Messages dead-lettered so far (reported by stats).
    #[prost(uint64, tag = "10")]
    pub(super) dead_lettered: u64,
    /// Message ordering by key.
    #[prost(bool, tag = "11")]
    pub(super) ordered: bool,
    /// Partition-exclusive (consumer group) delivery; false, as in metadata saved before
    /// the mode existed, is shared. Members do not survive a restart: the group starts
    /// empty, at generation 0.
    #[prost(bool, tag = "16")]
    pub(super) exclusive: bool,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct RetryMeta {
    #[prost(uint64, tag = "1")]
    pub(super) minimum_backoff_ms: u64,
    #[prost(uint64, tag = "2")]
    pub(super) maximum_backoff_ms: u64,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct DeadLetterMeta {
    #[prost(string, tag = "1")]
    pub(super) topic: String,
    #[prost(uint32, tag = "2")]
    pub(super) max_delivery_attempts: u32,
}

/// Offsets as `[start, end)` pairs, flattened: start0, end0, start1, end1...
#[derive(Clone, PartialEq, Message)]
pub(super) struct AckedRanges {
    #[prost(uint64, repeated, tag = "1")]
    ranges: Vec<u64>,
}

impl AckedRanges {
    fn of(offsets: &std::collections::BTreeSet<u64>) -> Self {
        let mut ranges: Vec<u64> = Vec::new();
        for &offset in offsets {
            match ranges.last_mut() {
                Some(end) if *end == offset => *end += 1,
                _ => ranges.extend([offset, offset + 1]),
            }
        }
        Self { ranges }
    }

    /// The offsets, at most `limit` of them (a damaged file cannot make a huge set).
    fn offsets(&self, limit: u64) -> std::collections::BTreeSet<u64> {
        let pairs = self.ranges.chunks_exact(2);
        pairs.flat_map(|p| p[0]..p[1].min(p[0].saturating_add(limit))).take(limit as usize).collect()
    }
}

/// A partition whose fsync failed. With acknowledgement after fsync, its unsynced records
/// were cut off again, so every publish waiting on it must be refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncFailure {
    /// The topic whose partition failed to sync.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// Why the sync failed.
    pub error: StorageError,
}

impl Broker {
    /// Opens a broker on `storage`, restoring the topics, subscriptions and committed
    /// offsets it last saved (a new storage starts empty). Each partition log recovers as
    /// it opens; a committed offset past what the log kept is brought back to its end.
    ///
    /// The metadata journal's entries are replayed onto the saved metadata, and the result
    /// saved at once, so the journal starts empty.
    pub fn open(config: BrokerConfig, mut storage: Box<dyn Storage>) -> Result<Self, BrokerError> {
        let saved = storage.load_meta()?;
        let journal = storage.load_journal()?;
        let mut broker = Self::new(config, storage)?;
        let mut meta = match &saved {
            Some(bytes) => Meta::decode(bytes.as_slice()).map_err(|e| {
                BrokerError::Storage(StorageError::Corrupt {
                    file: "meta".to_string(),
                    position: 0,
                    reason: format!("metadata does not decode: {e}"),
                })
            })?,
            None => Meta::default(),
        };
        let had_journal = !journal.is_empty();
        let replayed = journal::replay(&mut meta, journal)?;
        if let Some((position, reason)) = &replayed.cut {
            tracing::warn!(position, reason = %reason,
                "cut the metadata journal's torn tail: changes never synced, so never answered");
        }
        broker.journal.seq = replayed.last_seq;
        if saved.is_some() || replayed.applied > 0 {
            broker.restore(&meta)?;
            broker.saved_meta = saved.unwrap_or_default();
            broker.lease_seq_from_wall = true;
        }
        broker.journal.synced_topic_uid = broker.next_topic_uid;
        if had_journal {
            broker.save_meta()?;
        }
        let uids: Vec<u64> = broker.topics.values().map(|t| t.uid).collect();
        broker.storage.retain_topics(&uids, broker.next_topic_uid)?;
        Ok(broker)
    }

    /// Keeps the newest `dedupe_keys_broker_max` dedupe entries of all topics together,
    /// after each topic rebuilt its index: the entries that leave are the broker's oldest,
    /// so a topic restored late never loses live keys to an idle one's old ones.
    fn keep_newest_dedupe_entries(&mut self) {
        self.recount_dedupe();
        let Some(excess) = self.dedupe_entries.checked_sub(self.config.dedupe_keys_broker_max) else { return };
        if excess == 0 {
            return;
        }
        let mut times: Vec<u64> = self.topics.values().flat_map(|t| t.dedupe.entry_times()).collect();
        times.sort_unstable();
        // Entries older than the cutoff go, and as many at the cutoff as the bound needs.
        let cutoff = times[excess - 1];
        let mut at_cutoff = excess - times.partition_point(|t| *t < cutoff);
        for topic in self.topics.values_mut() {
            let older = topic.dedupe.entry_times().filter(|t| *t < cutoff).count();
            let same = topic.dedupe.entry_times().filter(|t| *t == cutoff).count().min(at_cutoff);
            at_cutoff -= same;
            topic.dedupe.keep_newest(topic.dedupe.len() - older - same);
        }
        self.recount_dedupe();
    }

    fn restore(&mut self, meta: &Meta) -> Result<(), BrokerError> {
        for t in &meta.topics {
            let logs = (0..t.partitions).map(|p| self.storage.open(t.uid, p)).collect::<Result<Vec<_>, _>>()?;
            let window_ms = t.dedupe_window_ms.unwrap_or(self.config.dedupe_window_ms);
            let mut topic = Topic::new(t.name.clone(), t.uid, logs, window_ms);
            if t.dedupe_keys_used {
                topic.dedupe = Dedupe::rebuild(window_ms, self.config.dedupe_keys_max, &topic.logs);
            }
            self.topics.insert(t.name.clone(), topic);
        }
        self.keep_newest_dedupe_entries();
        for s in &meta.subscriptions {
            let Some(topic) = self.topics.get_mut(&s.topic) else { continue };
            let cursors = topic
                .logs
                .iter()
                .enumerate()
                .map(|(p, log)| {
                    let (start, end) = (log.start_offset(), visible_end(log.as_ref(), self.after_sync));
                    let committed = s.committed.get(p).copied().unwrap_or(0).clamp(start, end);
                    let acked = s.acked.get(p).map(|a| a.offsets(end - committed)).unwrap_or_default();
                    let acked = acked.into_iter().filter(|o| (committed..end).contains(o)).collect();
                    Cursor::restored(committed, acked)
                })
                .collect();
            topic.subscriptions.insert(s.name.clone());
            let start = if s.start_latest { StartPosition::Latest } else { StartPosition::Earliest };
            self.subscription_uids.insert(s.name.clone(), s.uid);
            self.subscriptions.insert(
                s.uid,
                Subscription {
                    name: s.name.clone(),
                    uid: s.uid,
                    topic: s.topic.clone(),
                    ack_deadline_ms: s.ack_deadline_ms,
                    start,
                    ephemeral: false,
                    cursors,
                    members: Vec::new(),
                    clients: std::collections::BTreeMap::new(),
                    next_member: 0,
                    next_partition: 0,
                    retry: s.retry.as_ref().map(|r| RetryPolicy {
                        minimum_backoff_ms: r.minimum_backoff_ms,
                        maximum_backoff_ms: r.maximum_backoff_ms,
                    }),
                    dead_letter: s.dead_letter.as_ref().map(|d| DeadLetterPolicy {
                        topic: d.topic.clone(),
                        max_delivery_attempts: d.max_delivery_attempts,
                    }),
                    dead_lettered: s.dead_lettered,
                    counts: SubscriptionCounts::default(),
                    ordered: s.ordered,
                    group: s.exclusive.then(|| Group::new(topic.logs.len())),
                    cursor_moves: 0,
                },
            );
        }
        self.next_topic_uid = self.next_topic_uid.max(meta.next_topic_uid);
        self.next_subscription_uid = self.next_subscription_uid.max(meta.next_subscription_uid);
        Ok(())
    }

    /// The metadata as it is now. Ephemeral subscriptions are not kept: their streams do
    /// not survive a restart either.
    pub(super) fn meta_bytes(&self) -> Vec<u8> {
        let topics = self
            .topics
            .values()
            .map(|t| TopicMeta {
                name: t.name.clone(),
                uid: t.uid,
                partitions: t.partition_count(),
                dedupe_window_ms: Some(t.dedupe.window_ms()),
                dedupe_keys_used: t.dedupe.keys_used(),
            })
            .collect();
        let subscriptions = self
            .subscriptions
            .values()
            .filter(|s| !s.ephemeral)
            .map(|s| SubscriptionMeta {
                name: s.name.clone(),
                uid: s.uid,
                topic: s.topic.clone(),
                ack_deadline_ms: s.ack_deadline_ms,
                start_latest: s.start == StartPosition::Latest,
                committed: s.cursors.iter().map(|c| c.committed).collect(),
                acked: s.cursors.iter().map(|c| AckedRanges::of(&c.acked)).collect(),
                retry: s.retry.map(|r| RetryMeta {
                    minimum_backoff_ms: r.minimum_backoff_ms,
                    maximum_backoff_ms: r.maximum_backoff_ms,
                }),
                dead_letter: s
                    .dead_letter
                    .as_ref()
                    .map(|d| DeadLetterMeta { topic: d.topic.clone(), max_delivery_attempts: d.max_delivery_attempts }),
                dead_lettered: s.dead_lettered,
                ordered: s.ordered,
                exclusive: s.group.is_some(),
            })
            .collect();
        let meta = Meta {
            next_topic_uid: self.next_topic_uid,
            next_subscription_uid: self.next_subscription_uid,
            topics,
            subscriptions,
            journal_seq: self.journal.seq,
        };
        meta.encode_to_vec()
    }

    /// Saves the whole metadata now, the journal's changes included, and empties the journal.
    pub(super) fn save_meta(&mut self) -> Result<(), BrokerError> {
        let bytes = self.meta_bytes();
        self.save_meta_bytes(bytes)
    }

    pub(super) fn save_meta_bytes(&mut self, bytes: Vec<u8>) -> Result<(), BrokerError> {
        self.storage.save_meta(&bytes)?;
        self.saved_meta = bytes;
        // The base covers every entry: a journal that cannot be emptied now is emptied by
        // the next save (its entries are skipped by their numbers meanwhile).
        let _ = self.storage.reset_journal();
        self.metadata_durable();
        Ok(())
    }

    /// Saves the metadata if it changed since the last save (committed offsets move with
    /// every ack, and every journal entry changes it), which also empties the journal.
    /// Returns whether anything was written.
    pub(super) fn checkpoint(&mut self) -> Result<bool, BrokerError> {
        let bytes = self.meta_bytes();
        if bytes == self.saved_meta {
            return Ok(false);
        }
        self.save_meta_bytes(bytes)?;
        Ok(true)
    }

    /// Whether any partition has records that are not yet synced.
    pub fn needs_sync(&self) -> bool {
        self.topics.values().flat_map(|t| &t.logs).any(|log| log.synced_end() < log.end_offset())
    }

    /// The storage's fsync policy.
    pub fn fsync_policy(&self) -> crate::storage::FsyncPolicy {
        self.storage.fsync_policy()
    }

    /// Whether a publish is answered only after [`Broker::sync`] covered it.
    pub fn acks_after_sync(&self) -> bool {
        self.after_sync
    }

    /// Syncs every partition; one fsync covers every append before it (group commit). With
    /// acknowledgement after fsync, newly synced records become visible and are
    /// dispatched, and a partition whose sync failed has its unsynced records cut off
    /// again: they were never acknowledged nor delivered.
    ///
    /// Partitions with nothing unsynced are synced too (which costs no IO unless there is
    /// something to do): a cut that the disk refused is finished by a sync, so the cut
    /// records do not come back at the next start.
    ///
    /// The metadata journal is synced first; if neither it nor a save of the whole metadata
    /// succeeds, the error is returned with the partitions' failures.
    pub(super) fn sync_all(&mut self, now_ms: u64) -> (Vec<SyncFailure>, Option<StorageError>) {
        let metadata = match self.sync_metadata() {
            Ok(()) => None,
            Err(BrokerError::Storage(e)) => Some(e),
            Err(e) => Some(StorageError::Io(e.to_string())),
        };
        (self.sync_partitions(now_ms), metadata)
    }

    /// [`Broker::sync_all`] for the unit tests: the partitions' failures (a metadata
    /// failure panics).
    #[cfg(test)]
    pub(super) fn sync(&mut self, now_ms: u64) -> Vec<SyncFailure> {
        let (failures, metadata) = self.sync_all(now_ms);
        assert!(metadata.is_none(), "the metadata failed to sync: {metadata:?}");
        failures
    }

    fn sync_partitions(&mut self, now_ms: u64) -> Vec<SyncFailure> {
        let mut failures = Vec::new();
        let mut grown: Vec<String> = Vec::new();
        for (name, topic) in &mut self.topics {
            for (p, log) in topic.logs.iter_mut().enumerate() {
                let before = log.synced_end();
                match log.sync() {
                    Ok(()) => {
                        if log.synced_end() > before && grown.last() != Some(name) {
                            grown.push(name.clone());
                        }
                    }
                    Err(error) => {
                        if self.after_sync {
                            let synced = log.synced_end();
                            // The records leave the log even when the disk refuses the cut;
                            // the log finishes it before its next write or sync.
                            let _ = log.truncate(synced);
                            // A retry of a publish cut here must be stored, not answered
                            // as a duplicate of a record that is gone.
                            topic.dedupe.cut(p as u32, synced);
                        }
                        failures.push(SyncFailure { topic: name.clone(), partition: p as u32, error });
                    }
                }
            }
        }
        if !failures.is_empty() {
            self.recount_dedupe();
        }
        if self.after_sync {
            for topic in grown {
                self.dispatch_topic(now_ms, &topic);
            }
            for uid in self.settle_transits() {
                self.dispatch(now_ms, uid);
            }
        }
        failures
    }

    /// Applies time retention to every partition (size retention runs on every append);
    /// `wall_ms` is the wall clock that publish times are stamped with. A partition the
    /// storage fails on does not stop the others, and returns the first error after all
    /// have run.
    /// Whether a retention pass could change anything: time retention is configured, or
    /// some topic remembers idempotency keys that may expire.
    pub fn retention_has_work(&self) -> bool {
        self.config.partition_retention_ms.is_some() || self.dedupe_entries > 0
    }

    pub(super) fn enforce_retention(&mut self, now_ms: u64, wall_ms: u64) -> Result<(), BrokerError> {
        self.set_wall_ms(wall_ms);
        // Expired keys also leave on the next publish to their topic; this frees the memory
        // of topics nobody publishes to any more.
        for topic in self.topics.values_mut() {
            topic.dedupe.expire(wall_ms);
        }
        self.recount_dedupe();
        let Some(retention_ms) = self.config.partition_retention_ms else { return Ok(()) };
        let retention = Retention {
            max_bytes: self.config.partition_retention_bytes,
            min_publish_time_ms: Some(wall_ms.saturating_sub(retention_ms)),
        };
        let mut moved = Vec::new();
        let mut first_error = None;
        for (name, topic) in &mut self.topics {
            for (p, log) in topic.logs.iter_mut().enumerate() {
                let before = log.start_offset();
                let keep_from = log.synced_end().min(log.end_offset());
                if let Err(e) = log.apply_retention(&retention, keep_from) {
                    first_error.get_or_insert(e);
                }
                // Read back rather than taken from the result: retention may fail after it
                // removed segments, and the subscriptions must still skip what is gone.
                let start = log.start_offset();
                if start > before {
                    topic.dedupe.retained_from(p as u32, start);
                    moved.push((name.clone(), p as u32, start));
                }
            }
        }
        if !moved.is_empty() {
            self.recount_dedupe();
        }
        for (topic, partition, start) in &moved {
            self.retention_moved(topic, *partition, *start);
        }
        // A removed message that was its ordering key's head lets the key's next one go.
        let mut topics: Vec<&String> = moved.iter().map(|(topic, ..)| topic).collect();
        topics.dedup();
        for topic in topics {
            self.dispatch_topic(now_ms, topic);
        }
        first_error.map_or(Ok(()), |e| Err(e.into()))
    }
}
