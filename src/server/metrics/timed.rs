//! A storage wrapper that times appends and fsyncs into histograms, by the server's clock.
//! The core appends and syncs through the logs it is given, so wrapping them measures the
//! storage without the core knowing.

use std::sync::Arc;

use metrics::Histogram;

use super::{seconds_from_us, STORAGE_APPEND, STORAGE_FSYNC};
use crate::env::Clock;
use crate::storage::{FsyncPolicy, PartitionLog, Record, Retention, Storage, StorageError, StoredRecord};

/// A [`Storage`] whose logs record how long each append and each fsync took.
pub struct TimedStorage {
    inner: Box<dyn Storage>,
    timers: Timers,
}

#[derive(Clone)]
struct Timers {
    clock: Arc<dyn Clock>,
    append: Histogram,
    fsync: Histogram,
}

impl Timers {
    fn time<R>(&self, histogram: &Histogram, f: impl FnOnce() -> R) -> R {
        let start = self.clock.now_us();
        let result = f();
        histogram.record(seconds_from_us(self.clock.now_us().saturating_sub(start)));
        result
    }
}

impl TimedStorage {
    /// Wraps `inner`; the histograms are looked up once, here.
    pub fn new(inner: Box<dyn Storage>, clock: Arc<dyn Clock>) -> Self {
        let append = metrics::histogram!(STORAGE_APPEND);
        let fsync = metrics::histogram!(STORAGE_FSYNC);
        Self { inner, timers: Timers { clock, append, fsync } }
    }
}

impl Storage for TimedStorage {
    fn open(&mut self, topic_uid: u64, partition: u32) -> Result<Box<dyn PartitionLog>, StorageError> {
        let inner = self.inner.open(topic_uid, partition)?;
        Ok(Box::new(TimedLog { inner, timers: self.timers.clone() }))
    }

    fn open_at(&mut self, topic_uid: u64, partition: u32, start: u64) -> Result<Box<dyn PartitionLog>, StorageError> {
        let inner = self.inner.open_at(topic_uid, partition, start)?;
        Ok(Box::new(TimedLog { inner, timers: self.timers.clone() }))
    }

    fn remove(&mut self, topic_uid: u64, logs: Vec<Box<dyn PartitionLog>>) -> Result<(), StorageError> {
        self.inner.remove(topic_uid, logs)
    }

    fn retain_topics(&mut self, topic_uids: &[u64], next_topic_uid: u64) -> Result<Vec<u64>, StorageError> {
        self.inner.retain_topics(topic_uids, next_topic_uid)
    }

    fn take_retired(&mut self) -> crate::storage::LaterSync {
        self.inner.take_retired()
    }

    fn restore_retired(&mut self, topic_uids: &[u64]) -> Result<(), StorageError> {
        self.inner.restore_retired(topic_uids)
    }

    fn fsync_policy(&self) -> FsyncPolicy {
        self.inner.fsync_policy()
    }

    fn load_meta(&mut self) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.load_meta()
    }

    fn save_meta(&mut self, meta: &[u8]) -> Result<(), StorageError> {
        self.inner.save_meta(meta)
    }

    fn load_journal(&mut self) -> Result<Vec<u8>, StorageError> {
        self.inner.load_journal()
    }

    fn append_journal(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        self.inner.append_journal(bytes)
    }

    fn sync_journal(&mut self) -> Result<(), StorageError> {
        self.inner.sync_journal()
    }

    fn reset_journal(&mut self) -> Result<(), StorageError> {
        self.inner.reset_journal()
    }
}

/// One partition's log, timed.
struct TimedLog {
    inner: Box<dyn PartitionLog>,
    timers: Timers,
}

impl PartitionLog for TimedLog {
    fn append(&mut self, records: Vec<Record>) -> Result<u64, StorageError> {
        let inner = &mut self.inner;
        self.timers.time(&self.timers.append, || inner.append(records))
    }

    fn read(&self, from: u64, max_records: usize, max_bytes: usize) -> Result<Vec<StoredRecord>, StorageError> {
        self.inner.read(from, max_records, max_bytes)
    }

    fn read_one(&self, offset: u64) -> Result<Option<StoredRecord>, StorageError> {
        self.inner.read_one(offset)
    }

    fn start_offset(&self) -> u64 {
        self.inner.start_offset()
    }

    fn end_offset(&self) -> u64 {
        self.inner.end_offset()
    }

    fn offset_for_time(&self, time_ms: u64) -> Result<u64, StorageError> {
        self.inner.offset_for_time(time_ms)
    }

    fn synced_end(&self) -> u64 {
        self.inner.synced_end()
    }

    fn sync_later(&mut self) -> Result<crate::storage::LaterSync, StorageError> {
        self.inner.sync_later()
    }

    /// Only a sync with records to make durable is timed: the broker syncs every partition
    /// at each group commit, and the idle ones cost nothing.
    fn sync(&mut self) -> Result<(), StorageError> {
        if self.inner.synced_end() >= self.inner.end_offset() {
            return self.inner.sync();
        }
        let inner = &mut self.inner;
        self.timers.time(&self.timers.fsync, || inner.sync())
    }

    fn truncate(&mut self, from: u64) -> Result<(), StorageError> {
        self.inner.truncate(from)
    }

    fn apply_retention(&mut self, retention: &Retention, keep_from: u64) -> Result<u64, StorageError> {
        self.inner.apply_retention(retention, keep_from)
    }

    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }

    fn last_publish_time_ms(&self) -> Option<u64> {
        self.inner.last_publish_time_ms()
    }

    fn take_damaged(&self) -> Vec<std::ops::Range<u64>> {
        self.inner.take_damaged()
    }

    fn damaged(&self) -> Vec<std::ops::Range<u64>> {
        self.inner.damaged()
    }
}
