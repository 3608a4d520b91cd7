//! The dedupe index of a topic: which idempotency keys were stored recently, and where.
//!
//! A publish that carries an idempotency key already in the index is answered with the
//! original's partition and offset and stores nothing (Pub/Sub's and JetStream's
//! `Nats-Msg-Id` dedupe). An entry lives for the topic's dedupe window, counted from the
//! publish time stamped on its record (wall time, an input like every other time), and
//! leaves earlier when its record leaves the log: a cut of unsynced or refused records, or
//! retention. So the index only ever points at records that exist, which is also exactly
//! what [`Dedupe::rebuild_entry`] can find again when the broker opens.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::storage::{PartitionLog, StorageError};

/// Records read at a time while rebuilding the index at open.
const REBUILD_READ_RECORDS: usize = 1024;

/// Shortest dedupe window a topic (or the broker default) may have.
pub const DEDUPE_WINDOW_MS_MIN: u64 = 1000;
/// Longest dedupe window: a day. The index holds every key of the window in memory.
pub const DEDUPE_WINDOW_MS_MAX: u64 = 24 * 3600 * 1000;

/// Where the first message with a key was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Original {
    pub partition: u32,
    pub offset: u64,
    /// The publish time on the stored record; the entry expires `window_ms` after it.
    pub time_ms: u64,
}

/// One topic's index. Three views of the same entries, each ordered so that every removal
/// costs only what it removes: by key (lookups), by position (cuts and retention), by
/// time (expiry).
#[derive(Debug, Clone, Default)]
pub struct Dedupe {
    window_ms: u64,
    /// Whether the topic ever stored a key (saved in the metadata). Only such topics are
    /// scanned when the broker opens: the others pay nothing for the feature.
    keys_used: bool,
    by_key: KeyIndex,
    by_position: BTreeMap<(u32, u64), Arc<str>>,
    by_time: BTreeSet<(u64, u32, u64)>,
}

impl Dedupe {
    /// An empty index whose entries live `window_ms`.
    pub fn new(window_ms: u64) -> Self {
        Self { window_ms, ..Self::default() }
    }

    /// How long an entry lives after its publish time.
    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }

    /// Whether the topic ever stored an idempotency key.
    pub fn keys_used(&self) -> bool {
        self.keys_used
    }

    /// Marks the topic as one that stores idempotency keys (or not, to undo a mark whose
    /// metadata save failed).
    pub fn set_keys_used(&mut self, used: bool) {
        self.keys_used = used;
    }

    /// Keys currently held.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// The original of `key`, if it is still in the window.
    pub fn get(&self, key: &str) -> Option<Original> {
        self.by_key.get(key).copied()
    }

    /// Drops every entry whose window has passed at wall time `wall_ms`.
    pub fn expire(&mut self, wall_ms: u64) {
        while let Some(&(time_ms, partition, offset)) = self.by_time.first() {
            if time_ms.saturating_add(self.window_ms) > wall_ms {
                break;
            }
            self.remove((partition, offset));
        }
    }

    /// Records that `key` was stored at `original`. The caller checked that the key is not
    /// held (a live key is answered as a duplicate, never stored again).
    pub fn insert(&mut self, key: Arc<str>, original: Original) {
        let position = (original.partition, original.offset);
        // The two views share the key's one copy.
        let previous = self.by_position.insert(position, Arc::clone(&key));
        assert!(previous.is_none(), "two dedupe entries for one record {position:?}");
        let previous = self.by_key.insert(key, original);
        assert!(previous.is_none(), "idempotency key {:?} stored twice within its window", self.by_position[&position]);
        self.by_time.insert((original.time_ms, original.partition, original.offset));
    }

    /// The index as the logs hold it (of a topic whose keys are used): every keyed record published within `window_ms` of
    /// the newest record of the topic (the open broker does not know the time yet; keys
    /// older than the window at the first publish expire then). Each partition is read
    /// from the first record of the window, found by the sparse time index, to its end.
    ///
    /// A partition that cannot be read stops at the unreadable record: keys past it do not
    /// dedupe. Refusing to start would be worse, and delivery reports the damage anyway.
    pub fn rebuild(window_ms: u64, keys_max: usize, logs: &[Box<dyn PartitionLog>]) -> Self {
        let mut dedupe = Self::new(window_ms);
        dedupe.keys_used = true;
        let newest = logs.iter().filter_map(|log| last_publish_time(log.as_ref())).max();
        let Some(newest) = newest else { return dedupe };
        let since = newest.saturating_sub(window_ms);
        for (partition, log) in logs.iter().enumerate() {
            let _ = dedupe.rebuild_partition(partition as u32, log.as_ref(), since);
        }
        dedupe.expire(newest);
        dedupe.keep_newest(keys_max);
        dedupe
    }

    fn rebuild_partition(&mut self, partition: u32, log: &dyn PartitionLog, since: u64) -> Result<(), StorageError> {
        let mut at = log.offset_for_time(since)?.max(log.start_offset());
        let end = log.end_offset();
        while at < end {
            let batch = log.read(at, REBUILD_READ_RECORDS, usize::MAX)?;
            let Some(last) = batch.last() else { break };
            at = last.offset + 1;
            for stored in batch {
                if let Some(key) = &stored.record.idempotency_key {
                    let original =
                        Original { partition, offset: stored.offset, time_ms: stored.record.publish_time_ms };
                    self.rebuild_entry(Arc::from(key.as_str()), original);
                }
            }
        }
        Ok(())
    }

    /// Adds an entry found on disk when the broker opens. A key found twice (stored again
    /// after its window had passed) keeps its newest record, which is the one a live
    /// broker would hold.
    pub fn rebuild_entry(&mut self, key: Arc<str>, original: Original) {
        if let Some(held) = self.by_key.get(&key) {
            if (held.time_ms, held.partition, held.offset) >= (original.time_ms, original.partition, original.offset) {
                return;
            }
            self.remove((held.partition, held.offset));
        }
        self.insert(key, original);
    }

    /// Keeps only the `keys_max` newest entries: what a rebuild found may be more than the
    /// bound if the bound was lowered since.
    pub fn keep_newest(&mut self, keys_max: usize) {
        while self.by_key.len() > keys_max {
            let &(_, partition, offset) = self.by_time.first().expect("more entries than zero");
            self.remove((partition, offset));
        }
    }

    /// Forgets the records of `partition` at or after `from`: they were cut from the log.
    pub fn cut(&mut self, partition: u32, from: u64) {
        let gone: Vec<(u32, u64)> =
            self.by_position.range((partition, from)..=(partition, u64::MAX)).map(|(p, _)| *p).collect();
        for position in gone {
            self.remove(position);
        }
    }

    /// Forgets the records of `partition` below `start`: retention removed them, and a
    /// duplicate answer must name a record that a reader can still find.
    pub fn retained_from(&mut self, partition: u32, start: u64) {
        let gone: Vec<(u32, u64)> =
            self.by_position.range((partition, 0)..(partition, start)).map(|(p, _)| *p).collect();
        for position in gone {
            self.remove(position);
        }
    }

    fn remove(&mut self, position: (u32, u64)) {
        let key = self.by_position.remove(&position).expect("a dedupe position has its key");
        let original = self.by_key.remove(&key).expect("a dedupe key has its entry");
        self.by_time.remove(&(original.time_ms, position.0, position.1));
    }

    /// Panics if the three views disagree, or an entry names a record that `logs` do not
    /// hold (a cut or retention that forgot to tell the index).
    pub fn assert_invariants(&self, logs: &[Box<dyn PartitionLog>]) {
        for &(partition, offset) in self.by_position.keys() {
            let log = &logs[partition as usize];
            let held = log.start_offset()..log.end_offset();
            assert!(held.contains(&offset), "dedupe entry p{partition}@{offset} outside the log's {held:?}");
        }
        assert_eq!(self.by_key.len(), self.by_position.len(), "dedupe key and position views differ in size");
        assert_eq!(self.by_key.len(), self.by_time.len(), "dedupe key and time views differ in size");
        for (key, o) in self.by_key.iter() {
            assert_eq!(self.by_position.get(&(o.partition, o.offset)), Some(key), "dedupe position of {key:?}");
            assert!(self.by_time.contains(&(o.time_ms, o.partition, o.offset)), "dedupe time of {key:?}");
        }
    }
}

/// Keys to their originals, ordered by a fixed 64-bit hash of the key's text (FNV-1a), so
/// a lookup compares integers: ordered by text, every comparison was a memcmp of most of
/// the key, since a publisher's keys (`{publisher_id}-{n}`) share a long prefix. The same
/// order on every machine; keys with one hash share a bucket.
#[derive(Debug, Clone, Default)]
struct KeyIndex {
    buckets: BTreeMap<u64, Bucket>,
    len: usize,
}

/// The keys of one hash: nearly always one.
#[derive(Debug, Clone)]
enum Bucket {
    One((Arc<str>, Original)),
    Many(Vec<(Arc<str>, Original)>),
}

impl Bucket {
    fn entries(&self) -> &[(Arc<str>, Original)] {
        match self {
            Bucket::One(entry) => std::slice::from_ref(entry),
            Bucket::Many(entries) => entries,
        }
    }
}

impl KeyIndex {
    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, key: &str) -> Option<&Original> {
        let bucket = self.buckets.get(&key_hash(key))?;
        bucket.entries().iter().find(|(k, _)| **k == *key).map(|(_, o)| o)
    }

    /// Adds `key`, or replaces its original and returns the one it had.
    fn insert(&mut self, key: Arc<str>, original: Original) -> Option<Original> {
        use std::collections::btree_map::Entry;
        let bucket = match self.buckets.entry(key_hash(&key)) {
            Entry::Vacant(slot) => {
                slot.insert(Bucket::One((key, original)));
                self.len += 1;
                return None;
            }
            Entry::Occupied(slot) => slot.into_mut(),
        };
        if let Bucket::One(entry) = bucket {
            *bucket = Bucket::Many(vec![entry.clone()]);
        }
        let Bucket::Many(entries) = bucket else { unreachable!("made a Many above") };
        if let Some((_, o)) = entries.iter_mut().find(|(k, _)| *k == key) {
            return Some(std::mem::replace(o, original));
        }
        entries.push((key, original));
        self.len += 1;
        None
    }

    fn remove(&mut self, key: &str) -> Option<Original> {
        let hash = key_hash(key);
        let bucket = self.buckets.get_mut(&hash)?;
        let i = bucket.entries().iter().position(|(k, _)| **k == *key)?;
        let original = match bucket {
            Bucket::One((_, o)) => *o,
            Bucket::Many(entries) => entries.remove(i).1,
        };
        if matches!(bucket, Bucket::One(_)) || bucket.entries().is_empty() {
            self.buckets.remove(&hash);
        }
        self.len -= 1;
        Some(original)
    }

    fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Original)> {
        self.buckets.values().flat_map(Bucket::entries).map(|(k, o)| (k, o))
    }
}

/// FNV-1a, 64 bits: fixed, so the index's order is the same on every machine and run.
pub fn key_hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, b| (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The publish time of the last record of `log`, if it has one that reads.
fn last_publish_time(log: &dyn PartitionLog) -> Option<u64> {
    let last = log.end_offset().checked_sub(1).filter(|last| *last >= log.start_offset())?;
    log.read(last, 1, usize::MAX).ok()?.first().map(|r| r.record.publish_time_ms)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::storage::memory::MemoryLog;
    use crate::storage::Record;

    /// `partitions` memory logs of `records` records each.
    fn logs(partitions: u32, records: u64) -> Vec<Box<dyn PartitionLog>> {
        let record = Record {
            key: None,
            value: Bytes::new(),
            attributes: Default::default(),
            publish_time_ms: 0,
            idempotency_key: None,
        };
        (0..partitions)
            .map(|_| {
                let mut log: Box<dyn PartitionLog> = Box::new(MemoryLog::default());
                log.append(vec![record.clone(); records as usize]).unwrap();
                log
            })
            .collect()
    }

    fn at(partition: u32, offset: u64, time_ms: u64) -> Original {
        Original { partition, offset, time_ms }
    }

    #[test]
    fn entries_expire_when_their_window_passes() {
        let mut d = Dedupe::new(1000);
        d.insert("a".into(), at(0, 0, 100));
        d.insert("b".into(), at(1, 0, 600));
        d.expire(1099);
        assert_eq!(d.get("a"), Some(at(0, 0, 100)));
        d.expire(1100);
        assert_eq!((d.get("a"), d.len()), (None, 1));
        d.expire(1600);
        assert_eq!(d.len(), 0);
        d.assert_invariants(&logs(2, 4));
    }

    #[test]
    fn a_cut_and_retention_forget_only_their_partition_range() {
        let mut d = Dedupe::new(1000);
        for offset in 0..4 {
            d.insert(format!("p0-{offset}").into(), at(0, offset, 10));
            d.insert(format!("p1-{offset}").into(), at(1, offset, 10));
        }
        d.cut(0, 2);
        d.retained_from(1, 1);
        let held: Vec<&str> = d.by_position.values().map(|k| &**k).collect();
        assert_eq!(held, ["p0-0", "p0-1", "p1-1", "p1-2", "p1-3"]);
        d.assert_invariants(&logs(2, 4));
    }

    #[test]
    fn a_rebuild_keeps_the_newest_record_of_a_key_and_the_newest_keys() {
        let mut d = Dedupe::new(1000);
        d.rebuild_entry("k".into(), at(0, 5, 200));
        d.rebuild_entry("k".into(), at(1, 0, 100));
        assert_eq!(d.get("k"), Some(at(0, 5, 200)));
        d.rebuild_entry("j".into(), at(1, 1, 300));
        d.keep_newest(1);
        assert_eq!((d.get("k"), d.get("j")), (None, Some(at(1, 1, 300))));
        d.assert_invariants(&logs(2, 4));
    }
}
