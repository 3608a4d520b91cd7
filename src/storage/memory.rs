//! The in-memory partition log: the default for tests and `--storage memory`.

use std::collections::VecDeque;
use std::sync::Arc;

use super::{FsyncPolicy, PartitionLog, Record, Retention, Storage, StorageError, StoredRecord};

/// Makes [`MemoryLog`]s. Nothing survives the process.
#[derive(Debug, Default)]
pub struct MemoryStorage;

impl Storage for MemoryStorage {
    fn open(&mut self, _topic_uid: u64, _partition: u32) -> Result<Box<dyn PartitionLog>, StorageError> {
        Ok(Box::new(MemoryLog::default()))
    }

    fn open_at(&mut self, _topic_uid: u64, _partition: u32, start: u64) -> Result<Box<dyn PartitionLog>, StorageError> {
        Ok(Box::new(MemoryLog { start, ..MemoryLog::default() }))
    }

    fn remove(&mut self, _topic_uid: u64, logs: Vec<Box<dyn PartitionLog>>) -> Result<(), StorageError> {
        drop(logs);
        Ok(())
    }

    fn retain_topics(&mut self, _topic_uids: &[u64], _next_topic_uid: u64) -> Result<Vec<u64>, StorageError> {
        Ok(Vec::new())
    }

    fn fsync_policy(&self) -> FsyncPolicy {
        FsyncPolicy::Never
    }

    fn load_meta(&mut self) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(None)
    }

    fn save_meta(&mut self, _meta: &[u8]) -> Result<(), StorageError> {
        Ok(())
    }

    fn load_journal(&mut self) -> Result<Vec<u8>, StorageError> {
        Ok(Vec::new())
    }

    fn append_journal(&mut self, _bytes: &[u8]) -> Result<(), StorageError> {
        Ok(())
    }

    fn sync_journal(&mut self) -> Result<(), StorageError> {
        Ok(())
    }

    fn reset_journal(&mut self) -> Result<(), StorageError> {
        Ok(())
    }
}

/// Records in a deque: index `i` holds offset `start + i`.
#[derive(Debug, Default)]
pub struct MemoryLog {
    start: u64,
    records: VecDeque<Arc<Record>>,
    bytes: u64,
}

/// Bytes a record is charged for retention: its payload plus a fixed per-record overhead,
/// so a flood of empty messages still counts.
fn charged_bytes(record: &Record) -> u64 {
    const RECORD_OVERHEAD_BYTES: u64 = 64;
    record.size_bytes() as u64 + RECORD_OVERHEAD_BYTES
}

impl PartitionLog for MemoryLog {
    fn append(&mut self, mut records: Vec<Record>) -> Result<u64, StorageError> {
        let first = self.end_offset();
        super::compact_values(&mut records);
        for record in records {
            self.bytes += charged_bytes(&record);
            self.records.push_back(Arc::new(record));
        }
        Ok(first)
    }

    fn read(&self, from: u64, max_records: usize, max_bytes: usize) -> Result<Vec<StoredRecord>, StorageError> {
        let end = self.end_offset();
        if from < self.start {
            return Err(StorageError::OutOfRange { offset: from, start: self.start, end });
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let skip = (from - self.start) as usize;
        for (i, record) in self.records.iter().enumerate().skip(skip).take(max_records) {
            bytes += record.size_bytes();
            if bytes > max_bytes && !out.is_empty() {
                break;
            }
            out.push(StoredRecord { offset: self.start + i as u64, record: Arc::clone(record) });
        }
        Ok(out)
    }

    fn read_one(&self, offset: u64) -> Result<Option<StoredRecord>, StorageError> {
        if offset < self.start {
            return Err(StorageError::OutOfRange { offset, start: self.start, end: self.end_offset() });
        }
        let record = self.records.get((offset - self.start) as usize);
        Ok(record.map(|record| StoredRecord { offset, record: Arc::clone(record) }))
    }

    fn start_offset(&self) -> u64 {
        self.start
    }

    fn end_offset(&self) -> u64 {
        self.start + self.records.len() as u64
    }

    fn offset_for_time(&self, time_ms: u64) -> Result<u64, StorageError> {
        // Publish times never decrease within a partition, so the records are sorted by time.
        let index = self.records.partition_point(|r| r.publish_time_ms < time_ms);
        Ok(self.start + index as u64)
    }

    fn synced_end(&self) -> u64 {
        self.end_offset()
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        Ok(())
    }

    fn truncate(&mut self, from: u64) -> Result<(), StorageError> {
        let keep = from.saturating_sub(self.start).min(self.records.len() as u64) as usize;
        for record in self.records.drain(keep..) {
            self.bytes -= charged_bytes(&record);
        }
        Ok(())
    }

    fn apply_retention(&mut self, retention: &Retention, keep_from: u64) -> Result<u64, StorageError> {
        let expired = |r: &Record| retention.min_publish_time_ms.is_some_and(|t| r.publish_time_ms < t);
        while self.start < keep_from
            && (self.bytes > retention.max_bytes || self.records.front().is_some_and(|r| expired(r)))
        {
            let Some(record) = self.records.pop_front() else { break };
            self.bytes -= charged_bytes(&record);
            self.start += 1;
        }
        Ok(self.start)
    }

    fn size_bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(value: &'static str, time: u64) -> Record {
        Record {
            key: None,
            value: value.into(),
            attributes: Default::default(),
            publish_time_ms: time,
            idempotency_key: None,
        }
    }

    #[test]
    fn offsets_are_contiguous_across_batches() {
        let mut log = MemoryLog::default();
        assert_eq!(log.append(vec![record("a", 1), record("b", 2)]).unwrap(), 0);
        assert_eq!(log.append(vec![record("c", 3)]).unwrap(), 2);
        let read = log.read(1, 10, usize::MAX).unwrap();
        assert_eq!(read.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(read[1].record.value, "c");
    }

    #[test]
    fn read_one_answers_as_a_read_of_one_record() {
        let mut log = MemoryLog::default();
        log.append(vec![record("a", 1), record("b", 2), record("c", 3)]).unwrap();
        log.apply_retention(&Retention { max_bytes: 2 * charged_bytes(&record("a", 0)), min_publish_time_ms: None }, 3)
            .unwrap();
        for offset in 0..5 {
            let one = log.read_one(offset).map(|r| r.map(|r| (r.offset, r.record.value.clone())));
            let read = log
                .read(offset, 1, usize::MAX)
                .map(|v| v.into_iter().next().map(|r| (r.offset, r.record.value.clone())));
            assert_eq!(format!("{one:?}"), format!("{read:?}"), "offset {offset}");
        }
        assert!(log.read_one(0).is_err(), "offset 0 was removed by retention");
        assert_eq!(log.read_one(2).unwrap().unwrap().offset, 2);
        assert!(log.read_one(3).unwrap().is_none(), "the end");
    }

    #[test]
    fn read_returns_one_record_even_over_the_byte_limit() {
        let mut log = MemoryLog::default();
        log.append(vec![record("hello", 1), record("world", 2)]).unwrap();
        assert_eq!(log.read(0, 10, 1).unwrap().len(), 1);
        assert_eq!(log.read(0, 10, 10).unwrap().len(), 2);
        assert!(log.read(2, 10, 10).unwrap().is_empty());
    }

    #[test]
    fn retention_moves_the_start_and_truncate_cuts_the_tail() {
        let mut log = MemoryLog::default();
        log.append(vec![record("a", 1), record("b", 2), record("c", 3)]).unwrap();
        let one = charged_bytes(&record("a", 0));
        let bytes = |max_bytes| Retention { max_bytes, min_publish_time_ms: None };
        assert_eq!(log.apply_retention(&bytes(2 * one), 3).unwrap(), 1);
        assert_eq!(log.apply_retention(&bytes(0), 1).unwrap(), 1, "records from keep_from on stay");
        assert!(matches!(log.read(0, 1, 1), Err(StorageError::OutOfRange { .. })));
        log.truncate(2).unwrap();
        assert_eq!((log.start_offset(), log.end_offset()), (1, 2));
        assert_eq!(log.size_bytes(), one);
    }

    #[test]
    fn offset_for_time_finds_the_first_record_at_or_after() {
        let mut log = MemoryLog::default();
        log.append(vec![record("a", 10), record("b", 20), record("c", 20), record("d", 30)]).unwrap();
        assert_eq!(log.offset_for_time(0).unwrap(), 0);
        assert_eq!(log.offset_for_time(20).unwrap(), 1);
        assert_eq!(log.offset_for_time(21).unwrap(), 3);
        assert_eq!(log.offset_for_time(99).unwrap(), 4);
    }
}
