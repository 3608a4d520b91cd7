//! The partition log: what the broker core stores messages in.
//!
//! A [`PartitionLog`] is one partition's append-only sequence of records, addressed by
//! contiguous offsets from its start offset to its end offset (the offset the next append
//! gets). The core holds logs as trait objects made by a [`Storage`], so the segmented
//! file log can replace [`memory::MemoryStorage`] without touching the core.

pub mod file;
pub mod memory;

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

pub use file::{FileStorage, FileStorageConfig};
pub use memory::MemoryStorage;

/// One message as stored: everything the publisher sent plus the broker's publish time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The publisher's key: it picks the partition (unless one was named) and is the
    /// ordering key on ordered subscriptions; `None` for an unkeyed message.
    pub key: Option<String>,
    /// The payload, as published.
    pub value: Bytes,
    /// The publisher's attributes, by name.
    pub attributes: BTreeMap<String, String>,
    /// Wall-clock milliseconds since the Unix epoch, never decreasing within a partition.
    pub publish_time_ms: u64,
    /// The publisher's idempotency key, kept with the record so that the broker's dedupe
    /// index can be rebuilt from the log when it opens. Not counted in `size_bytes`: it has
    /// its own bound (`idempotency_key_bytes_max`).
    pub idempotency_key: Option<String>,
}

impl Record {
    /// The size counted against `max_message_bytes` and flow control: value, key, and
    /// attribute keys and values.
    pub fn size_bytes(&self) -> usize {
        message_size(&self.value, self.key.as_deref(), &self.attributes)
    }
}

/// Copies the values of a batch into one buffer of exactly their size. A value decoded from
/// a request shares that request's receive buffer, which a retained record would keep alive
/// whole: some 4.5 KiB for a message of 128 B published alone, and 240 B per 128 B message
/// at 100 to a request. One allocation and one copy per batch. Both logs do it before
/// they keep a record (the file log in its tail cache), so a log retains only what it counts.
pub(crate) fn compact_values(records: &mut [Record]) {
    let total: usize = records.iter().map(|r| r.value.len()).sum();
    let mut buffer = BytesMut::with_capacity(total);
    for record in records.iter() {
        buffer.extend_from_slice(&record.value);
    }
    let mut values = buffer.freeze();
    for record in records {
        record.value = values.split_to(record.value.len());
    }
}

/// The size of a message's payload, key and attributes.
pub fn message_size(value: &[u8], key: Option<&str>, attributes: &BTreeMap<String, String>) -> usize {
    let attrs: usize = attributes.iter().map(|(k, v)| k.len() + v.len()).sum();
    value.len() + key.map_or(0, str::len) + attrs
}

/// A record with its offset, as read back. Cloning is cheap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Its place in the partition's log.
    pub offset: u64,
    /// The record, shared with the log's cache and other readers.
    pub record: Arc<Record>,
}

/// What the world (a disk, a full memory budget) can do to a storage operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum StorageError {
    /// The disk is full (ENOSPC); the message names the operation and the file.
    #[error("storage is full: {0}")]
    Full(String),
    /// The process may open no more files (EMFILE, ENFILE); the message names the
    /// operation, the file and the limit.
    #[error("too many open files: {0}")]
    TooManyOpenFiles(String),
    /// Any other I/O failure; the message names the operation and the file.
    #[error("storage I/O error: {0}")]
    Io(String),
    /// A read from an offset the log does not hold: before its start (or, in the file log,
    /// past its end).
    #[error("offset {offset} is outside the log [{start}, {end})")]
    OutOfRange {
        /// The offset asked for.
        offset: u64,
        /// The oldest retained offset.
        start: u64,
        /// The offset the next append gets.
        end: u64,
    },
    /// Stored bytes that are not what was written: never served as data.
    #[error("corrupt data in {file} at byte {position}: {reason}")]
    Corrupt {
        /// The damaged file's path (a topic's directory when the metadata does not list it).
        file: String,
        /// Byte position of the damage in the file (0 for a whole file or directory).
        position: u64,
        /// What does not check out (a CRC, a length, a metadata file that misses a topic).
        reason: String,
    },
}

/// When an appended record is made durable, and so when its publish is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Acknowledge only after an fsync that covers the record. One fsync covers every
    /// append waiting for it (group commit).
    Always,
    /// Acknowledge once written (to the page cache); fsync every this many milliseconds.
    IntervalMs(u64),
    /// Acknowledge once written; fsync only when a segment rolls or the broker stops.
    Never,
}

impl FsyncPolicy {
    /// Whether a publish waits for the fsync.
    pub fn acks_after_sync(self) -> bool {
        self == FsyncPolicy::Always
    }
}

impl std::fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsyncPolicy::Always => write!(f, "always"),
            FsyncPolicy::IntervalMs(ms) => write!(f, "interval ({ms} ms)"),
            FsyncPolicy::Never => write!(f, "never"),
        }
    }
}

/// What a partition keeps: at most `max_bytes`, and nothing published before
/// `min_publish_time_ms` when that is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Bytes of records the partition may hold; past it the oldest go first.
    pub max_bytes: u64,
    /// Wall-clock ms since the Unix epoch: records published before it go; `None` keeps
    /// records whatever their age.
    pub min_publish_time_ms: Option<u64>,
}

/// Files and directories to fsync, so that what a log held when it made this
/// ([`PartitionLog::sync_later`]) is durable: run on any thread, beside new appends. A file
/// removed meanwhile is skipped (its records went with it).
#[derive(Default)]
pub struct LaterSync {
    fs: Option<Arc<dyn crate::env::Fs>>,
    files: Vec<std::path::PathBuf>,
    dirs: Vec<std::path::PathBuf>,
    /// Files of records the log no longer holds, kept until what this syncs is saved
    /// ([`crate::storage::FileStorageConfig::removals_after_sync`]).
    retired: Vec<std::path::PathBuf>,
    /// Directories of removed topics, kept likewise.
    retired_dirs: Vec<std::path::PathBuf>,
}

impl LaterSync {
    /// Syncs the data of `files`, then `dirs`, on `fs`.
    pub fn new(fs: Arc<dyn crate::env::Fs>, files: Vec<std::path::PathBuf>, dirs: Vec<std::path::PathBuf>) -> Self {
        Self { fs: Some(fs), files, dirs, retired: Vec::new(), retired_dirs: Vec::new() }
    }

    /// This, handing over `retired`: files to remove by [`LaterSync::remove_retired`].
    pub fn retiring(mut self, retired: Vec<std::path::PathBuf>) -> Self {
        self.retired.extend(retired);
        self
    }

    /// Directories to remove by [`LaterSync::remove_retired`], on `fs`.
    pub fn retiring_dirs(fs: Arc<dyn crate::env::Fs>, dirs: Vec<std::path::PathBuf>) -> Self {
        Self { fs: Some(fs), retired_dirs: dirs, ..Self::default() }
    }

    /// Splits off the removal of the retired files, to run once what this syncs is saved.
    pub fn take_retired(&mut self) -> LaterSync {
        LaterSync {
            fs: self.fs.clone(),
            retired: std::mem::take(&mut self.retired),
            retired_dirs: std::mem::take(&mut self.retired_dirs),
            ..LaterSync::default()
        }
    }

    /// Removes the retired files (one already gone is skipped) and syncs their directories.
    pub fn remove_retired(self) -> Result<(), StorageError> {
        let Some(fs) = self.fs else { return Ok(()) };
        let mut dirs: Vec<&std::path::Path> = Vec::new();
        for dir in &self.retired_dirs {
            if fs.exists(dir) {
                fs.remove_dir_all(dir).map_err(|e| file::io_error(dir, "remove", e))?;
            }
            dirs.extend(dir.parent().filter(|d| !dirs.contains(d)));
        }
        for path in &self.retired {
            match fs.remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(file::io_error(path, "remove", e)),
                _ => {}
            }
            if let Some(dir) = path.parent().filter(|d| !dirs.contains(d)) {
                dirs.push(dir);
            }
        }
        for dir in dirs {
            match fs.sync_dir(dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(file::io_error(dir, "sync directory", e))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// This and `other`, which must be on the same filesystem.
    pub fn and(mut self, other: LaterSync) -> LaterSync {
        self.fs = self.fs.or(other.fs);
        self.files.extend(other.files);
        self.dirs.extend(other.dirs);
        self.retired.extend(other.retired);
        self.retired_dirs.extend(other.retired_dirs);
        self
    }

    /// Syncs; the first failure is returned (what was synced before it stays so).
    pub fn run(self) -> Result<(), StorageError> {
        let Some(fs) = self.fs else { return Ok(()) };
        let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
        for path in &self.files {
            match fs.open(path, false).and_then(|file| file.sync_data()) {
                Err(e) if !gone(&e) => return Err(file::io_error(path, "fsync", e)),
                _ => {}
            }
        }
        for dir in &self.dirs {
            match fs.sync_dir(dir) {
                Err(e) if !gone(&e) => return Err(file::io_error(dir, "sync directory", e)),
                _ => {}
            }
        }
        Ok(())
    }
}

/// One partition's log.
pub trait PartitionLog: Send {
    /// Appends `records` in order and returns the offset of the first one. All or nothing.
    fn append(&mut self, records: Vec<Record>) -> Result<u64, StorageError>;

    /// Reads contiguous records from `from` on: at most `max_records`, and stops before the
    /// record that would pass `max_bytes` (but always returns at least one record when
    /// `from` is below the end). Empty when `from` is at or past the end.
    fn read(&self, from: u64, max_records: usize, max_bytes: usize) -> Result<Vec<StoredRecord>, StorageError>;

    /// The record at `offset`, as [`PartitionLog::read`] of one record would return it:
    /// `None` at or past the end. Every delivery reads one record, so a log that can
    /// should answer without the `Vec`.
    fn read_one(&self, offset: u64) -> Result<Option<StoredRecord>, StorageError> {
        Ok(self.read(offset, 1, usize::MAX)?.into_iter().next())
    }

    /// The oldest retained offset.
    fn start_offset(&self) -> u64;

    /// The offset the next appended record will get.
    fn end_offset(&self) -> u64;

    /// The first offset whose publish time is at or after `time_ms`, or the end offset.
    fn offset_for_time(&self, time_ms: u64) -> Result<u64, StorageError>;

    /// The end of the prefix made durable by the last `sync` (the end offset for memory).
    fn synced_end(&self) -> u64;

    /// Makes every appended record durable. A no-op for memory.
    fn sync(&mut self) -> Result<(), StorageError>;

    /// What makes every record appended so far durable, to run later on another thread
    /// ([`LaterSync::run`]) while the log takes more appends. The default syncs now.
    fn sync_later(&mut self) -> Result<LaterSync, StorageError> {
        self.sync()?;
        Ok(LaterSync::default())
    }

    /// Removes every record at or after `from` (a torn tail, an unreplicated suffix).
    fn truncate(&mut self, from: u64) -> Result<(), StorageError>;

    /// Drops the oldest records that `retention` no longer keeps, moving the start offset
    /// forward, but never a record at or after `keep_from` (the batch just appended stays
    /// readable even when it alone is over the budget). The file log drops whole segments.
    /// Returns the new start offset.
    fn apply_retention(&mut self, retention: &Retention, keep_from: u64) -> Result<u64, StorageError>;

    /// Bytes of records currently retained.
    fn size_bytes(&self) -> u64;

    /// The publish time of the last record, kept in memory where the log can: an append
    /// needs it (times never decrease in a partition), and must not fail because an old
    /// record cannot be read.
    fn last_publish_time_ms(&self) -> Option<u64> {
        let last = self.end_offset().checked_sub(1).filter(|last| *last >= self.start_offset())?;
        self.read_one(last).ok().flatten().map(|r| r.record.publish_time_ms)
    }

    /// Runs of stored records found damaged (a CRC or framing failure) since the last
    /// call, by the scan that opened the log or by a read: each is taken once, to be
    /// reported. Reads that need none of a run's records pass it. Empty for memory.
    fn take_damaged(&self) -> Vec<Range<u64>> {
        Vec::new()
    }

    /// Every damaged run known in the retained records, oldest first, at most
    /// [`DAMAGED_RUNS_MAX`].
    fn damaged(&self) -> Vec<Range<u64>> {
        Vec::new()
    }
}

/// Damaged runs a partition reports at most (in `GetTopic` and the metrics).
pub const DAMAGED_RUNS_MAX: usize = 1024;

/// Makes and removes partition logs, and keeps the broker's metadata.
pub trait Storage: Send {
    /// Opens (creating if needed, recovering if it exists) the log of one partition of a
    /// topic, named by the topic's uid so a topic made again under the same name starts
    /// afresh.
    fn open(&mut self, topic_uid: u64, partition: u32) -> Result<Box<dyn PartitionLog>, StorageError>;

    /// Creates the empty log of one partition whose first offset is `start` (a snapshot's
    /// partition that retention had moved on); whatever was stored for it is removed.
    fn open_at(&mut self, topic_uid: u64, partition: u32, start: u64) -> Result<Box<dyn PartitionLog>, StorageError>;

    /// Removes a deleted topic's logs for good.
    fn remove(&mut self, topic_uid: u64, logs: Vec<Box<dyn PartitionLog>>) -> Result<(), StorageError>;

    /// Removes the logs of topics not in `topic_uids` that the metadata explains: a topic
    /// deleted (its uid is below `next_topic_uid`) whose files a crash left behind, or a
    /// creation whose metadata was never saved (its uid is not below it) if its logs are
    /// empty. Logs with records that the metadata does not know refuse the start: the
    /// metadata is missing or older than the data. Returns the uids removed.
    fn retain_topics(&mut self, topic_uids: &[u64], next_topic_uid: u64) -> Result<Vec<u64>, StorageError>;

    /// The files of topics removed since the last call, when this storage keeps them until
    /// a checkpoint after the removal is saved
    /// ([`crate::storage::FileStorageConfig::removals_after_sync`]): to remove then.
    fn take_retired(&mut self) -> LaterSync {
        LaterSync::default()
    }

    /// As a node restarts from a checkpoint that holds `topic_uids`: the kept files of a
    /// removed topic among them are its files again, and those of every other are removed.
    fn restore_retired(&mut self, topic_uids: &[u64]) -> Result<(), StorageError> {
        let _ = topic_uids;
        Ok(())
    }

    /// When appends become durable.
    fn fsync_policy(&self) -> FsyncPolicy;

    /// The metadata last saved, if any.
    fn load_meta(&mut self) -> Result<Option<Vec<u8>>, StorageError>;

    /// Replaces the metadata atomically and durably: after a crash, the old or the new.
    /// The journal's entries are not touched (see [`Storage::reset_journal`]).
    fn save_meta(&mut self, meta: &[u8]) -> Result<(), StorageError>;

    /// The metadata journal's bytes: the changes appended since it was last reset (empty
    /// when there are none). What a crash tore is there too; the reader cuts it.
    fn load_journal(&mut self) -> Result<Vec<u8>, StorageError>;

    /// Appends `bytes` to the metadata journal, not yet durably (see
    /// [`Storage::sync_journal`]). A failed append leaves the journal as it was, or
    /// refuses every append until the next reset.
    fn append_journal(&mut self, bytes: &[u8]) -> Result<(), StorageError>;

    /// Makes every journal append so far durable.
    fn sync_journal(&mut self) -> Result<(), StorageError>;

    /// Empties the journal, once a saved metadata covers its entries (an entry it still
    /// shows after a crash is skipped by its sequence number).
    fn reset_journal(&mut self) -> Result<(), StorageError>;
}
