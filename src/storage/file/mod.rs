//! The file log: a segmented write-ahead log per partition, and the broker's metadata.
//!
//! ```text
//! <dir>/meta                                  topics, subscriptions, committed offsets
//! <dir>/meta.journal                          topic and subscription changes since `meta`
//! <dir>/topics/<topic uid>/<partition>/<base offset, 20 digits>.log
//! ```
//!
//! Records are framed with length and CRC32C ([`record`]); a segment rolls at
//! `segment_bytes` or when its first record is `segment_ms` old. Opening a partition checks
//! every record of every segment and rebuilds the in-memory indexes: the newest segment's
//! torn or bad tail is cut (and reported as a [`RecoveryNote`]); damage in an older segment
//! refuses the start with the file and byte position, unless `truncate_corrupt` cuts the
//! log there. When a write is durable is the [`FsyncPolicy`]'s business: the driver calls
//! `sync` and the core acknowledges a publish only once its policy is met.

mod log;
mod record;
mod segment;
#[cfg(test)]
mod tests;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use self::log::FileLog;
use super::{FsyncPolicy, PartitionLog, Storage, StorageError};
use crate::env::Fs;

/// How the file log is laid out and synced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStorageConfig {
    /// The data directory: the metadata file and a directory per topic.
    pub dir: PathBuf,
    /// When an append is made durable, and so when its publish is acknowledged.
    pub fsync: FsyncPolicy,
    /// A segment rolls when the next append would take it past this size.
    pub segment_bytes: u64,
    /// A segment rolls when its first record is this old.
    pub segment_ms: u64,
    /// The newest records of each partition kept in memory for readers.
    pub tail_cache_bytes: usize,
    /// Cut the log at damage in an older segment instead of refusing to start.
    pub truncate_corrupt: bool,
    /// Segment files retention removes stay on disk until the next
    /// [`PartitionLog::sync_later`](crate::storage::PartitionLog::sync_later) hands them over,
    /// to be removed once what it syncs is saved: a cluster node restarting from its last
    /// checkpoint then finds every record the checkpoint counts.
    pub removals_after_sync: bool,
}

impl FileStorageConfig {
    /// The defaults in `dir`: fsync always, 64 MiB or 7-day segments, a 4 MiB tail cache,
    /// and refusing to start on damage in an older segment.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            fsync: FsyncPolicy::Always,
            segment_bytes: 64 * 1024 * 1024,
            segment_ms: 7 * 24 * 3600 * 1000,
            tail_cache_bytes: 4 * 1024 * 1024,
            truncate_corrupt: false,
            removals_after_sync: false,
        }
    }

    /// These settings as a cluster node's broker state takes them, in `<dir>/state`: never
    /// fsynced as records are appended (the Raft log makes a write durable; the node's
    /// snapshots sync the partition logs), damage a crash left cut rather than refused, for
    /// the node cuts its logs back to its last snapshot and applies the Raft log on, and
    /// segments retention removes kept until a snapshot after it is saved.
    pub fn node_state(mut self) -> Self {
        self.dir = self.dir.join("state");
        self.fsync = FsyncPolicy::Never;
        self.truncate_corrupt = true;
        self.removals_after_sync = true;
        self
    }
}

/// What recovery cut from a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryNote {
    /// The segment file that was cut, or removed whole.
    pub file: PathBuf,
    /// Byte position of the cut.
    pub position: u64,
    /// Bytes removed: from `position` to the end of the file.
    pub cut_bytes: u64,
    /// Why: the damage found there, or that it follows a cut in an older segment.
    pub reason: String,
}

impl std::fmt::Display for RecoveryNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: cut {} bytes at byte {}: {}", self.file.display(), self.cut_bytes, self.position, self.reason)
    }
}

/// Partition logs and metadata in a directory.
pub struct FileStorage {
    fs: Arc<dyn Fs>,
    config: FileStorageConfig,
    notes: Vec<RecoveryNote>,
    journal: Journal,
    /// Directories of topics removed since the last `take_retired`.
    retired_dirs: Vec<PathBuf>,
}

/// The metadata journal's file, open for appends.
#[derive(Default)]
struct Journal {
    file: Option<Box<dyn crate::env::FsFile>>,
    /// Where the next append goes: the bytes appended since the last reset.
    len: u64,
    /// An append failed and its bytes could not be taken back: appends are refused until a
    /// reset, so nothing is ever written after a torn entry.
    broken: bool,
    /// The file was made since the last sync: the data directory is synced too.
    created: bool,
}

/// The metadata file: magic, length and CRC32C before the bytes, so a damaged file is
/// refused rather than misread.
const META_MAGIC: &[u8; 4] = b"MPSM";
const META_FILE: &str = "meta";
const META_TEMP_FILE: &str = "meta.tmp";
const JOURNAL_FILE: &str = "meta.journal";
/// Before a removed topic's uid, the name its files wait under (with `removals_after_sync`).
const RETIRED_PREFIX: &str = "retired-";

impl FileStorage {
    /// Opens the data directory, creating it (durably) if needed.
    pub fn open(fs: Arc<dyn Fs>, config: FileStorageConfig) -> Result<Self, StorageError> {
        OPEN_FILES_LIMIT.get_or_init(read_open_files_limit);
        let storage = Self { fs, config, notes: Vec::new(), journal: Journal::default(), retired_dirs: Vec::new() };
        storage.create_dirs(&storage.config.dir.join("topics"))?;
        Ok(storage)
    }

    /// What recovery cut while opening logs, oldest first.
    pub fn recovery_notes(&self) -> &[RecoveryNote] {
        &self.notes
    }

    /// The settings it was opened with.
    pub fn config(&self) -> &FileStorageConfig {
        &self.config
    }

    fn topic_dir(&self, topic_uid: u64) -> PathBuf {
        self.config.dir.join("topics").join(topic_uid.to_string())
    }

    /// Where a removed topic's files wait (with `removals_after_sync`).
    fn retired_dir(&self, topic_uid: u64) -> PathBuf {
        self.config.dir.join("topics").join(format!("{RETIRED_PREFIX}{topic_uid}"))
    }

    /// Whether any segment file of the topic directory `dir` has bytes in it.
    fn holds_records(&self, dir: &Path) -> Result<bool, StorageError> {
        for partition in self.fs.list_dir(dir).map_err(|e| io_error(dir, "list", e))? {
            let partition_dir = dir.join(partition);
            let Ok(files) = self.fs.list_dir(&partition_dir) else { continue };
            for file in files.iter().filter(|f| f.ends_with(".log")) {
                let path = partition_dir.join(file);
                let size = self.fs.open(&path, false).and_then(|f| f.size()).map_err(|e| io_error(&path, "stat", e))?;
                if size > 0 {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Creates `dir` and its missing parents, and syncs each parent so that the new
    /// entries survive a crash.
    fn create_dirs(&self, dir: &Path) -> Result<(), StorageError> {
        let mut missing = Vec::new();
        let mut at = Some(dir);
        while let Some(path) = at.filter(|p| !p.as_os_str().is_empty() && !self.fs.exists(p)) {
            missing.push(path);
            at = path.parent();
        }
        for path in missing.into_iter().rev() {
            self.fs.create_dir_all(path).map_err(|e| io_error(path, "create directory", e))?;
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            self.fs.sync_dir(parent).map_err(|e| io_error(parent, "sync directory", e))?;
        }
        Ok(())
    }
}

impl FileStorage {
    /// The directories whose entries a partition's records depend on, parents first: the
    /// topics directory (the topic's entry), the topic's (the partition's) and the
    /// partition's own (its segment files). A log syncs them with its first records in a
    /// process: a new one is made without syncs (an empty log a crash forgets is made again
    /// empty, and the topic's creation is in the metadata journal, synced before any record
    /// is appended to it), and one opened after a crash may have been made so.
    fn dir_chain(&self, topic_uid: u64, partition: u32) -> Vec<PathBuf> {
        let topic = self.topic_dir(topic_uid);
        vec![self.config.dir.join("topics"), topic.clone(), topic.join(partition.to_string())]
    }

    fn journal_path(&self) -> PathBuf {
        self.config.dir.join(JOURNAL_FILE)
    }
}

impl Storage for FileStorage {
    fn open(&mut self, topic_uid: u64, partition: u32) -> Result<Box<dyn PartitionLog>, StorageError> {
        let dir = self.topic_dir(topic_uid).join(partition.to_string());
        let chain = self.dir_chain(topic_uid, partition);
        if !self.fs.exists(&dir) {
            self.fs.create_dir_all(&dir).map_err(|e| io_error(&dir, "create directory", e))?;
            return Ok(Box::new(FileLog::create(Arc::clone(&self.fs), dir, self.config.clone(), chain)?));
        }
        let mut notes = Vec::new();
        let log = FileLog::open(Arc::clone(&self.fs), dir, self.config.clone(), &mut notes)?.with_unsynced_dirs(chain);
        for note in notes {
            tracing::warn!(file = %note.file.display(), position = note.position, cut_bytes = note.cut_bytes,
                reason = %note.reason, "recovery cut a damaged log tail");
            self.notes.push(note);
        }
        Ok(Box::new(log))
    }

    fn open_at(&mut self, topic_uid: u64, partition: u32, start: u64) -> Result<Box<dyn PartitionLog>, StorageError> {
        let dir = self.topic_dir(topic_uid).join(partition.to_string());
        if self.fs.exists(&dir) {
            self.fs.remove_dir_all(&dir).map_err(|e| io_error(&dir, "remove", e))?;
        }
        self.create_dirs(&dir)?;
        // An empty first segment based at `start`: the log opens on it, starting there.
        drop(segment::Segment::create(self.fs.as_ref(), &dir, start)?);
        self.fs.sync_dir(&dir).map_err(|e| io_error(&dir, "sync directory", e))?;
        self.open(topic_uid, partition)
    }

    fn remove(&mut self, topic_uid: u64, logs: Vec<Box<dyn PartitionLog>>) -> Result<(), StorageError> {
        drop(logs);
        let dir = self.topic_dir(topic_uid);
        if self.config.removals_after_sync && self.fs.exists(&dir) {
            // Kept aside, under a name no topic has, until a checkpoint after it is saved.
            let kept = self.retired_dir(topic_uid);
            if self.fs.exists(&kept) {
                self.fs.remove_dir_all(&kept).map_err(|e| io_error(&kept, "remove", e))?;
            }
            self.fs.rename(&dir, &kept).map_err(|e| io_error(&dir, "rename", e))?;
            let parent = self.config.dir.join("topics");
            self.fs.sync_dir(&parent).map_err(|e| io_error(&parent, "sync directory", e))?;
            self.retired_dirs.push(kept);
            return Ok(());
        }
        if self.fs.exists(&dir) {
            self.fs.remove_dir_all(&dir).map_err(|e| io_error(&dir, "remove", e))?;
            let parent = self.config.dir.join("topics");
            self.fs.sync_dir(&parent).map_err(|e| io_error(&parent, "sync directory", e))?;
        }
        Ok(())
    }

    fn retain_topics(&mut self, topic_uids: &[u64], next_topic_uid: u64) -> Result<Vec<u64>, StorageError> {
        let topics = self.config.dir.join("topics");
        let names = self.fs.list_dir(&topics).map_err(|e| io_error(&topics, "list", e))?;
        // Only directories named by a uid are ours to remove.
        let orphans: Vec<u64> =
            names.iter().filter_map(|n| n.parse::<u64>().ok()).filter(|uid| !topic_uids.contains(uid)).collect();
        for uid in orphans.iter().filter(|uid| **uid >= next_topic_uid) {
            let dir = self.topic_dir(*uid);
            if self.holds_records(&dir)? {
                let reason = format!(
                    "topic uid {uid} holds records but the metadata does not list it (it numbers topics up to {}): \
                     the metadata file is missing or older than the data; restore it, or move the directory away",
                    next_topic_uid.saturating_sub(1)
                );
                return Err(StorageError::Corrupt { file: dir.display().to_string(), position: 0, reason });
            }
        }
        for uid in &orphans {
            let dir = self.topic_dir(*uid);
            self.fs.remove_dir_all(&dir).map_err(|e| io_error(&dir, "remove", e))?;
            tracing::warn!(dir = %dir.display(), "removed the files of a topic the metadata does not list");
        }
        if !orphans.is_empty() {
            self.fs.sync_dir(&topics).map_err(|e| io_error(&topics, "sync directory", e))?;
        }
        Ok(orphans)
    }

    fn take_retired(&mut self) -> crate::storage::LaterSync {
        crate::storage::LaterSync::retiring_dirs(Arc::clone(&self.fs), std::mem::take(&mut self.retired_dirs))
    }

    fn restore_retired(&mut self, topic_uids: &[u64]) -> Result<(), StorageError> {
        let topics = self.config.dir.join("topics");
        let names = self.fs.list_dir(&topics).map_err(|e| io_error(&topics, "list", e))?;
        let mut changed = false;
        for uid in names.iter().filter_map(|n| n.strip_prefix(RETIRED_PREFIX)?.parse::<u64>().ok()) {
            let (kept, dir) = (self.retired_dir(uid), self.topic_dir(uid));
            if topic_uids.contains(&uid) && !self.fs.exists(&dir) {
                self.fs.rename(&kept, &dir).map_err(|e| io_error(&kept, "rename", e))?;
            } else {
                self.fs.remove_dir_all(&kept).map_err(|e| io_error(&kept, "remove", e))?;
            }
            changed = true;
        }
        self.retired_dirs.clear();
        if changed {
            self.fs.sync_dir(&topics).map_err(|e| io_error(&topics, "sync directory", e))?;
        }
        Ok(())
    }

    fn fsync_policy(&self) -> FsyncPolicy {
        self.config.fsync
    }

    fn load_meta(&mut self) -> Result<Option<Vec<u8>>, StorageError> {
        let path = self.config.dir.join(META_FILE);
        if !self.fs.exists(&path) {
            return Ok(None);
        }
        let bytes = self.fs.read(&path).map_err(|e| io_error(&path, "read", e))?;
        let bad = |reason: String| StorageError::Corrupt { file: path.display().to_string(), position: 0, reason };
        if bytes.len() < 12 || &bytes[0..4] != META_MAGIC {
            return Err(bad("not a metadata file (bad magic or too short)".to_string()));
        }
        let len = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        let body = &bytes[12..];
        if body.len() != len || crc32c::crc32c(body) != crc {
            return Err(bad(format!("length or CRC32C mismatch ({} bytes, {len} expected)", body.len())));
        }
        Ok(Some(body.to_vec()))
    }

    fn save_meta(&mut self, meta: &[u8]) -> Result<(), StorageError> {
        let temp = self.config.dir.join(META_TEMP_FILE);
        let path = self.config.dir.join(META_FILE);
        let mut bytes = Vec::with_capacity(12 + meta.len());
        bytes.extend_from_slice(META_MAGIC);
        bytes.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32c::crc32c(meta).to_le_bytes());
        bytes.extend_from_slice(meta);
        let file = self.fs.open(&temp, true).map_err(|e| io_error(&temp, "create", e))?;
        file.set_len(0).map_err(|e| io_error(&temp, "truncate", e))?;
        file.write_all_at(&bytes, 0).map_err(|e| io_error(&temp, "write", e))?;
        file.sync_data().map_err(|e| io_error(&temp, "fsync", e))?;
        drop(file);
        self.fs.rename(&temp, &path).map_err(|e| io_error(&path, "rename", e))?;
        self.fs.sync_dir(&self.config.dir).map_err(|e| io_error(&self.config.dir, "sync directory", e))
    }

    fn load_journal(&mut self) -> Result<Vec<u8>, StorageError> {
        let path = self.journal_path();
        if !self.fs.exists(&path) {
            return Ok(Vec::new());
        }
        self.fs.read(&path).map_err(|e| io_error(&path, "read", e))
    }

    fn append_journal(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        let path = self.journal_path();
        if self.journal.broken {
            return Err(StorageError::Io(format!(
                "append to {}: an earlier append failed and could not be taken back; the next metadata save resets it",
                path.display()
            )));
        }
        if self.journal.file.is_none() {
            let created = !self.fs.exists(&path);
            let file = self.fs.open(&path, true).map_err(|e| io_error(&path, "open", e))?;
            // Whatever a crash left after the entries read at start is not ours to follow.
            file.set_len(self.journal.len).map_err(|e| io_error(&path, "truncate", e))?;
            self.journal.created |= created;
            self.journal.file = Some(file);
        }
        let file = self.journal.file.as_ref().expect("opened above");
        if let Err(e) = file.write_all_at(bytes, self.journal.len) {
            self.journal.broken = file.set_len(self.journal.len).is_err();
            return Err(io_error(&path, "append", e));
        }
        self.journal.len += bytes.len() as u64;
        Ok(())
    }

    fn sync_journal(&mut self) -> Result<(), StorageError> {
        let Some(file) = &self.journal.file else { return Ok(()) };
        let path = self.journal_path();
        file.sync_data().map_err(|e| io_error(&path, "fsync", e))?;
        if self.journal.created {
            self.fs.sync_dir(&self.config.dir).map_err(|e| io_error(&self.config.dir, "sync directory", e))?;
            self.journal.created = false;
        }
        Ok(())
    }

    fn reset_journal(&mut self) -> Result<(), StorageError> {
        self.journal.len = 0;
        let path = self.journal_path();
        if self.journal.file.is_none() && self.fs.exists(&path) {
            let file = self.fs.open(&path, false).map_err(|e| io_error(&path, "open", e))?;
            self.journal.file = Some(file);
        }
        // Not synced: entries a crash brings back are covered by the saved metadata.
        let truncated = self.journal.file.as_ref().map_or(Ok(()), |file| file.set_len(0));
        self.journal.broken = truncated.is_err();
        truncated.map_err(|e| io_error(&path, "truncate", e))
    }
}

/// An I/O error as the storage reports it: a full disk is `Full`, anything else `Io`, and
/// the message names the file and what was being done.
pub(crate) fn io_error(path: &Path, doing: &str, error: io::Error) -> StorageError {
    let message = format!("{doing} {}: {error}", path.display());
    match error.raw_os_error() {
        _ if error.kind() == io::ErrorKind::StorageFull => StorageError::Full(message),
        Some(ENOSPC) => StorageError::Full(message),
        Some(EMFILE) => {
            let limit = OPEN_FILES_LIMIT.get().copied().flatten().map_or("unknown".to_string(), |n| n.to_string());
            StorageError::TooManyOpenFiles(format!(
                "{message}; the open-file limit (RLIMIT_NOFILE, {limit}) is reached: every partition \
                 holds one file per segment open, so raise it (`ulimit -n`) or use fewer partitions"
            ))
        }
        Some(ENFILE) => StorageError::TooManyOpenFiles(format!(
            "{message}; the system's table of open files is full (fs.file-max): other processes hold them too"
        )),
        _ => StorageError::Io(message),
    }
}

/// Linux's errno values: no space left, too many open files (process, system).
const ENOSPC: i32 = 28;
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

/// The process's soft open-file limit, read when storage opens: at the limit, reading it
/// would need a file.
static OPEN_FILES_LIMIT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();

/// The soft "Max open files" of `/proc/self/limits`, where there is one.
fn read_open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}
