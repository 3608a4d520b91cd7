//! A snapshot: everything a broker holds between two commands, so that a recording can be
//! replayed from the middle. Restored on a fresh storage, the broker answers every later
//! command as the one it was taken from did: leases, backoffs, streams and their flow
//! accounting, sessions, idempotency keys, counters and the retained records included.
//!
//! It is JSON (the state) with the records' values in base64: readable by other tools,
//! and bound to this version's state (a recording is replayed by the version that made it).
//!
//! A checkpoint ([`Broker::checkpoint_replica`]) is the same state without the records: a
//! node of a cluster restarts from it on its own partition logs, synced when it was taken.
//!
//! One thing it does not carry: where a file log's segments begin. A restored file log
//! rolls its segments anew, so a later retention, which removes whole segments, can remove
//! a different number of records than the recorded broker's did; a replay then reports
//! the replies that differ. The memory log, which retains record by record, restores
//! exactly.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::broker::Broker;
use super::config::BrokerConfig;
use super::dead_letter::Transit;
use super::dedupe::Dedupe;
use super::error::BrokerError;
use super::stream::StreamState;
use super::subscription::Subscription;
use super::timers::TimerTable;
use super::topic::Topic;
use super::StreamId;
use crate::storage::{LaterSync, Record, Storage, StorageError};

/// Records read from a partition at a time while taking a snapshot.
const READ_BATCH_RECORDS: usize = 4096;
/// Records appended at a time while restoring one.
const RESTORE_BATCH_RECORDS: usize = 1000;

/// Why a snapshot was not taken, or cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The state, records included, passed the size the caller allows.
    #[error("the broker's state passed {limit} bytes (its retained records included)")]
    TooLarge {
        /// The bound it passed.
        limit: usize,
    },
    /// The bytes are not a snapshot of this version.
    #[error("not a snapshot this version can read: {0}")]
    Malformed(String),
    /// The storage refused a read (taking it) or a write (restoring it).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The broker refuses the configuration it is restored with.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// A map whose keys are not strings, written as a list of pairs (JSON keys are strings).
pub(super) mod pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        map: &BTreeMap<K, V>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(map.iter())
    }

    pub fn deserialize<'de, K, V, D>(deserializer: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(deserializer)?.into_iter().collect())
    }
}

/// One stored record.
#[derive(Serialize, Deserialize)]
struct SavedRecord {
    key: Option<String>,
    /// The value, base64.
    value: String,
    attributes: BTreeMap<String, String>,
    publish_time_ms: u64,
    idempotency_key: Option<String>,
}

/// One partition: where it starts, and every record from there on; or, in a checkpoint,
/// where it starts and ends (its records are in the partition log, synced).
#[derive(Serialize, Deserialize)]
struct SavedPartition {
    start: u64,
    records: Vec<SavedRecord>,
    /// The end offset, in a checkpoint only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    end: Option<u64>,
}

/// A topic without its logs, and its partitions' records, as it is written.
#[derive(Serialize)]
struct SavedTopicRef<'a> {
    name: &'a str,
    uid: u64,
    subscriptions: &'a BTreeSet<String>,
    dedupe: &'a Dedupe,
    round_robin: u32,
    partitions: Vec<SavedPartition>,
}

/// [`SavedTopicRef`], as it is read back.
#[derive(Deserialize)]
struct SavedTopic {
    name: String,
    uid: u64,
    subscriptions: BTreeSet<String>,
    dedupe: Dedupe,
    round_robin: u32,
    partitions: Vec<SavedPartition>,
}

/// The broker's fields, but its configuration and storage (given when it is restored) and
/// what is empty between commands (outputs, notices, topics to dispatch), as written.
#[derive(Serialize)]
struct SavedRef<'a> {
    topics: Vec<SavedTopicRef<'a>>,
    subscriptions: &'a BTreeMap<u64, Subscription>,
    subscription_uids: &'a BTreeMap<String, u64>,
    streams: &'a BTreeMap<StreamId, StreamState>,
    detached: &'a BTreeMap<StreamId, StreamState>,
    timers: &'a TimerTable,
    transits: &'a [Transit],
    wall_ms: u64,
    next_topic_uid: u64,
    next_subscription_uid: u64,
    next_stream_id: u64,
    next_lease_seq: u64,
    lease_seq_from_wall: bool,
    next_ephemeral: u64,
    saved_meta: &'a [u8],
    journal_seq: u64,
    #[serde(serialize_with = "pairs_of_ref")]
    read_faults: &'a BTreeMap<(u64, u32, u64), StorageError>,
    replicated: bool,
    #[serde(serialize_with = "moves_of_ref")]
    moves_in_flight: &'a BTreeMap<(u64, u32, u64), u64>,
    term: u64,
    checkpoint: bool,
}

fn pairs_of_ref<S: serde::Serializer>(
    map: &&BTreeMap<(u64, u32, u64), StorageError>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    pairs::serialize(*map, serializer)
}

/// [`SavedRef`], as it is read back.
#[derive(Deserialize)]
struct Saved {
    topics: Vec<SavedTopic>,
    subscriptions: BTreeMap<u64, Subscription>,
    subscription_uids: BTreeMap<String, u64>,
    streams: BTreeMap<StreamId, StreamState>,
    detached: BTreeMap<StreamId, StreamState>,
    timers: TimerTable,
    transits: Vec<Transit>,
    wall_ms: u64,
    next_topic_uid: u64,
    next_subscription_uid: u64,
    next_stream_id: u64,
    next_lease_seq: u64,
    lease_seq_from_wall: bool,
    next_ephemeral: u64,
    saved_meta: Vec<u8>,
    /// The metadata journal's last entry (0 in snapshots taken before the journal).
    #[serde(default)]
    journal_seq: u64,
    #[serde(with = "pairs")]
    read_faults: BTreeMap<(u64, u32, u64), StorageError>,
    /// Whether it led a cluster (false in snapshots taken before clusters moved dead letters).
    #[serde(default)]
    replicated: bool,
    #[serde(default, with = "pairs")]
    moves_in_flight: BTreeMap<(u64, u32, u64), u64>,
    #[serde(default)]
    term: u64,
    /// A checkpoint: the partitions' records are not in it but in their logs.
    #[serde(default)]
    checkpoint: bool,
}

fn moves_of_ref<S: serde::Serializer>(map: &&BTreeMap<(u64, u32, u64), u64>, serializer: S) -> Result<S::Ok, S::Error> {
    pairs::serialize(*map, serializer)
}

impl Broker {
    /// The broker's whole state, to restore with [`Broker::from_snapshot`]; at most
    /// `limit` bytes, or [`SnapshotError::TooLarge`]. Take it between commands (its
    /// outputs drained): what is in flight within a command is not in it.
    pub fn snapshot(&self, limit: usize) -> Result<Vec<u8>, SnapshotError> {
        // The logs know their size: a state too large is refused before any work.
        let retained: u64 = self.topics.values().flat_map(|t| &t.logs).map(|log| log.size_bytes()).sum();
        if retained > limit as u64 {
            return Err(SnapshotError::TooLarge { limit });
        }
        let mut budget = limit;
        let bytes = self.save(false, |log| save_partition(log, &mut budget, limit))?;
        if bytes.len() > limit {
            return Err(SnapshotError::TooLarge { limit });
        }
        Ok(bytes)
    }

    /// The broker's state without its records, which stay in the partition logs, and what
    /// makes the records up to each log's end durable: run it (on any thread, while the
    /// broker goes on) before the checkpoint counts. It is what a node of a cluster restarts
    /// from ([`Broker::from_checkpoint`], on the same storage). Its size is the metadata's
    /// (topics, subscriptions, dedupe indexes), not the records'.
    pub fn checkpoint_replica(&mut self) -> Result<(Vec<u8>, LaterSync), SnapshotError> {
        let mut sync = self.storage.take_retired();
        for log in self.topics.values_mut().flat_map(|t| &mut t.logs) {
            sync = sync.and(log.sync_later()?);
        }
        let state = self.save(true, |log| {
            Ok(SavedPartition { start: log.start_offset(), records: Vec::new(), end: Some(log.end_offset()) })
        })?;
        Ok((state, sync))
    }

    /// Serializes the state, each partition as `partition` saves it.
    fn save(
        &self,
        checkpoint: bool,
        mut partition: impl FnMut(&dyn crate::storage::PartitionLog) -> Result<SavedPartition, SnapshotError>,
    ) -> Result<Vec<u8>, SnapshotError> {
        let mut topics = Vec::with_capacity(self.topics.len());
        for topic in self.topics.values() {
            let mut partitions = Vec::with_capacity(topic.logs.len());
            for log in &topic.logs {
                partitions.push(partition(log.as_ref())?);
            }
            topics.push(SavedTopicRef {
                name: &topic.name,
                uid: topic.uid,
                subscriptions: &topic.subscriptions,
                dedupe: &topic.dedupe,
                round_robin: topic.round_robin,
                partitions,
            });
        }
        let saved = SavedRef {
            topics,
            subscriptions: &self.subscriptions,
            subscription_uids: &self.subscription_uids,
            streams: &self.streams,
            detached: &self.detached,
            timers: &self.timers,
            transits: &self.transits,
            wall_ms: self.wall_ms,
            next_topic_uid: self.next_topic_uid,
            next_subscription_uid: self.next_subscription_uid,
            next_stream_id: self.next_stream_id,
            next_lease_seq: self.next_lease_seq,
            lease_seq_from_wall: self.lease_seq_from_wall,
            next_ephemeral: self.next_ephemeral,
            saved_meta: &self.saved_meta,
            journal_seq: self.journal.seq,
            read_faults: &self.read_faults,
            replicated: self.replicated,
            moves_in_flight: &self.moves_in_flight,
            term: self.term,
            checkpoint,
        };
        serde_json::to_vec(&saved).map_err(|e| SnapshotError::Malformed(e.to_string()))
    }

    /// A broker with `config` on `storage` (empty) holding what `snapshot` saved.
    pub fn from_snapshot(
        config: BrokerConfig,
        storage: Box<dyn Storage>,
        snapshot: &[u8],
    ) -> Result<Broker, SnapshotError> {
        let saved: Saved = serde_json::from_slice(snapshot).map_err(|e| SnapshotError::Malformed(e.to_string()))?;
        if saved.checkpoint {
            return Err(SnapshotError::Malformed("a checkpoint, without records, not a whole snapshot".into()));
        }
        Self::restore_saved(config, storage, saved, |storage, uid, p, partition| {
            let mut log = storage.open_at(uid, p, partition.start)?;
            // In batches: each is one buffer of values, and a file log rolls its segments
            // between them as it would between publishes.
            let mut records = partition.records.into_iter().map(restore_record);
            loop {
                let batch = records.by_ref().take(RESTORE_BATCH_RECORDS).collect::<Result<Vec<_>, _>>()?;
                if batch.is_empty() {
                    break;
                }
                log.append(batch)?;
            }
            log.sync()?;
            Ok(log)
        })
    }

    /// A broker with `config` on `storage`, the storage [`Broker::checkpoint_replica`] took
    /// `checkpoint` on, holding what it saved. Each partition log is cut back to the end
    /// the checkpoint saw (what was appended after is the Raft log's to apply again), and
    /// the files of topics the checkpoint does not hold are removed (topics made after it,
    /// made again as the log is applied).
    ///
    /// A node's storage keeps what retention or a topic's deletion removed after the
    /// checkpoint until a later one is saved (`removals_after_sync`): a deleted topic gets
    /// its files back here, and segments below the checkpoint's start are removed again. A
    /// partition with no file at all (or starting past the checkpoint's end) starts empty at
    /// that end; one that holds records but fewer than the checkpoint synced is damaged, and
    /// refuses the restore.
    pub fn from_checkpoint(
        config: BrokerConfig,
        mut storage: Box<dyn Storage>,
        checkpoint: &[u8],
    ) -> Result<Broker, SnapshotError> {
        let saved: Saved = serde_json::from_slice(checkpoint).map_err(|e| SnapshotError::Malformed(e.to_string()))?;
        if !saved.checkpoint {
            return Err(SnapshotError::Malformed("a whole snapshot, not a checkpoint".into()));
        }
        let uids: Vec<u64> = saved.topics.iter().map(|t| t.uid).collect();
        // A topic deleted after the checkpoint has its files back (see `removals_after_sync`).
        storage.restore_retired(&uids)?;
        // Every other topic directory is one the Raft log makes again, or deleted: none is
        // unknown, so none is refused as the metadata's newer than the data.
        storage.retain_topics(&uids, u64::MAX)?;
        Self::restore_saved(config, storage, saved, |storage, uid, p, partition| {
            let end = partition.end.ok_or_else(|| SnapshotError::Malformed("a partition without its end".into()))?;
            let mut log = storage.open(uid, p)?;
            let (start_now, end_now) = (log.start_offset(), log.end_offset());
            let files_gone = (start_now, end_now) == (0, 0);
            if start_now > end || (end_now < end && files_gone) {
                tracing::info!(
                    topic_uid = uid,
                    partition = p,
                    checkpoint_end = end,
                    "the partition has none of the records the checkpoint counts; it starts empty at its end"
                );
                return Ok(storage.open_at(uid, p, end)?);
            }
            if end_now < end {
                let reason = format!(
                    "the node's checkpoint synced offsets up to {end} of topic uid {uid} partition {p}, \
                     and the log ends at {end_now}: the node's data is damaged; remove its data_dir \
                     to have it join again from the leader's snapshot"
                );
                return Err(SnapshotError::Storage(crate::storage::StorageError::Corrupt {
                    file: format!("topics/{uid}/{p}"),
                    position: 0,
                    reason,
                }));
            }
            log.truncate(end)?;
            if log.start_offset() < partition.start {
                // Segments retention removed before the checkpoint, kept until a checkpoint
                // after it was saved: removed again (see `removals_after_sync`).
                let everything = crate::storage::Retention { max_bytes: 0, min_publish_time_ms: None };
                log.apply_retention(&everything, partition.start)?;
            }
            Ok(log)
        })
    }

    /// A broker with `config` on `storage` holding `saved`, each partition's log made by
    /// `open_log`.
    fn restore_saved(
        config: BrokerConfig,
        storage: Box<dyn Storage>,
        saved: Saved,
        mut open_log: impl FnMut(
            &mut dyn Storage,
            u64,
            u32,
            SavedPartition,
        ) -> Result<Box<dyn crate::storage::PartitionLog>, SnapshotError>,
    ) -> Result<Broker, SnapshotError> {
        let mut broker = Broker::new(config, storage)?;
        for t in saved.topics {
            let mut logs = Vec::with_capacity(t.partitions.len());
            for (p, partition) in t.partitions.into_iter().enumerate() {
                logs.push(open_log(broker.storage.as_mut(), t.uid, p as u32, partition)?);
            }
            let mut topic = Topic::new(t.name.clone(), t.uid, logs, 0);
            topic.subscriptions = t.subscriptions;
            topic.dedupe = t.dedupe;
            // A checkpoint's partition may start later than it saw (its records removed
            // after it): the index names none of the records gone.
            for (p, log) in topic.logs.iter().enumerate() {
                topic.dedupe.retained_from(p as u32, log.start_offset());
            }
            topic.round_robin = t.round_robin;
            broker.topics.insert(t.name, topic);
        }
        broker.recount_dedupe();
        broker.subscriptions = saved.subscriptions;
        broker.subscription_uids = saved.subscription_uids;
        broker.streams = saved.streams;
        broker.detached = saved.detached;
        broker.timers = saved.timers;
        broker.transits = saved.transits;
        broker.wall_ms = saved.wall_ms;
        broker.next_topic_uid = saved.next_topic_uid;
        broker.next_subscription_uid = saved.next_subscription_uid;
        broker.next_stream_id = saved.next_stream_id;
        broker.next_lease_seq = saved.next_lease_seq;
        broker.lease_seq_from_wall = saved.lease_seq_from_wall;
        broker.next_ephemeral = saved.next_ephemeral;
        broker.saved_meta = saved.saved_meta;
        broker.journal.seq = saved.journal_seq;
        broker.read_faults = saved.read_faults;
        broker.replicated = saved.replicated;
        broker.moves_in_flight = saved.moves_in_flight;
        broker.term = saved.term;
        Ok(broker)
    }
}

/// Whether `bytes` are a checkpoint ([`Broker::checkpoint_replica`]) rather than a whole
/// state ([`Broker::snapshot`]).
pub(super) fn is_checkpoint(bytes: &[u8]) -> Result<bool, SnapshotError> {
    #[derive(Deserialize)]
    struct Kind {
        #[serde(default)]
        checkpoint: bool,
    }
    let kind: Kind = serde_json::from_slice(bytes).map_err(|e| SnapshotError::Malformed(e.to_string()))?;
    Ok(kind.checkpoint)
}

/// Every record of `log` from its start, charged against `budget` (their values' bytes).
fn save_partition(
    log: &dyn crate::storage::PartitionLog,
    budget: &mut usize,
    limit: usize,
) -> Result<SavedPartition, SnapshotError> {
    let start = log.start_offset();
    let end = log.end_offset();
    let mut records = Vec::new();
    let mut next = start;
    while next < end {
        let batch = log.read(next, READ_BATCH_RECORDS, usize::MAX)?;
        let Some(last) = batch.last() else { break };
        next = last.offset + 1;
        for stored in batch {
            let record = &stored.record;
            *budget = budget.checked_sub(record.size_bytes()).ok_or(SnapshotError::TooLarge { limit })?;
            records.push(SavedRecord {
                key: record.key.clone(),
                value: base64::engine::general_purpose::STANDARD.encode(&record.value),
                attributes: record.attributes.clone(),
                publish_time_ms: record.publish_time_ms,
                idempotency_key: record.idempotency_key.clone(),
            });
        }
    }
    Ok(SavedPartition { start, records, end: None })
}

fn restore_record(saved: SavedRecord) -> Result<Record, SnapshotError> {
    let value = base64::engine::general_purpose::STANDARD
        .decode(&saved.value)
        .map_err(|e| SnapshotError::Malformed(format!("a record's value: {e}")))?;
    Ok(Record {
        key: saved.key,
        value: Bytes::from(value),
        attributes: saved.attributes,
        publish_time_ms: saved.publish_time_ms,
        idempotency_key: saved.idempotency_key,
    })
}
