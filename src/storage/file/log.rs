//! One partition as a directory of segments, the newest of which takes appends.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::record;
use super::segment::{self, Damage, Segment};
use super::{io_error, FileStorageConfig, RecoveryNote};
use crate::env::Fs;
use crate::storage::{PartitionLog, Record, Retention, StorageError, StoredRecord};

/// Records read from disk per read, kept for the reads that follow (consumers read on).
const READ_AHEAD_BYTES: usize = 256 * 1024;
/// At most this many records are read ahead, however small they are: a read that misses
/// the caches costs one bounded batch, not the rest of a segment of tiny records.
const READ_AHEAD_RECORDS_MAX: usize = 4096;

/// A partition's segmented log.
pub struct FileLog {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    config: FileStorageConfig,
    /// By base offset; the last one takes appends. Never empty.
    segments: BTreeMap<u64, Segment>,
    synced_end: u64,
    /// Bytes of records in all segments.
    size: u64,
    /// The newest records, served without touching the disk.
    tail: Records,
    /// Records read from disk ahead of the reader.
    ahead: RefCell<Records>,
    /// Files of segments already cut from the log whose removal the disk refused, newest
    /// first: removed before the next write or sync, so a new segment never meets an old
    /// file and a restart does not find the cut records.
    doomed: Vec<PathBuf>,
    /// Files were removed from the directory since its last successful sync.
    dir_dirty: bool,
    /// Directories its records depend on, not yet synced in this process: synced by the
    /// first sync after an append.
    new_dirs: Vec<PathBuf>,
    /// Records were appended since the log was opened.
    appended: bool,
    /// Files of segments retention removed from the log, kept on disk until the next
    /// `sync_later` hands them over (with `removals_after_sync`).
    retired: Vec<PathBuf>,
    /// Damaged runs found (by the opening scan or by reads) and not yet taken by
    /// [`PartitionLog::take_damaged`], at most [`segment::GAPS_MAX`].
    damage_found: RefCell<Vec<std::ops::Range<u64>>>,
}

/// A contiguous run of records with a byte budget, dropping the oldest when over it.
#[derive(Default)]
struct Records {
    records: VecDeque<StoredRecord>,
    bytes: usize,
}

impl Records {
    fn push(&mut self, record: StoredRecord, budget: usize) {
        if self.records.back().is_some_and(|last| last.offset + 1 != record.offset) {
            self.clear();
        }
        self.bytes += record.record.size_bytes();
        self.records.push_back(record);
        while self.bytes > budget && self.records.len() > 1 {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(r) = self.records.pop_front() {
            self.bytes -= r.record.size_bytes();
        }
    }

    fn clear(&mut self) {
        self.records.clear();
        self.bytes = 0;
    }

    fn drop_from(&mut self, from: u64) {
        while self.records.back().is_some_and(|r| r.offset >= from) {
            let r = self.records.pop_back().expect("checked");
            self.bytes -= r.record.size_bytes();
        }
    }

    fn drop_before(&mut self, start: u64) {
        while self.records.front().is_some_and(|r| r.offset < start) {
            self.pop_front();
        }
    }

    /// Serves a read from these records if `from` is among them.
    fn read(&self, from: u64, max_records: usize, max_bytes: usize) -> Option<Vec<StoredRecord>> {
        let first = self.records.front()?.offset;
        if from < first || from >= first + self.records.len() as u64 {
            return None;
        }
        Some(take(self.records.range((from - first) as usize..).cloned(), max_records, max_bytes))
    }
}

/// At most `max_records`, stopping before the record that passes `max_bytes` (but at least one).
fn take(records: impl Iterator<Item = StoredRecord>, max_records: usize, max_bytes: usize) -> Vec<StoredRecord> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for r in records.take(max_records) {
        bytes += r.record.size_bytes();
        if bytes > max_bytes && !out.is_empty() {
            break;
        }
        out.push(r);
    }
    out
}

impl FileLog {
    /// Opens (or creates) the log in `dir`, checking every record. The newest segment's
    /// torn or bad tail is cut and reported; damage in an older segment refuses to open
    /// unless `config.truncate_corrupt`, which cuts the log there.
    pub fn open(
        fs: Arc<dyn Fs>,
        dir: PathBuf,
        config: FileStorageConfig,
        notes: &mut Vec<RecoveryNote>,
    ) -> Result<Self, StorageError> {
        let names = fs.list_dir(&dir).map_err(|e| io_error(&dir, "list", e))?;
        let bases: Vec<u64> = names.iter().filter_map(|n| segment::parse_file_name(n)).collect();
        let mut segments = BTreeMap::new();
        let mut expected: Option<u64> = None;
        // The first segment removed by a cut in an older one, and why.
        let mut cut_at: Option<(usize, String)> = None;
        for (i, base) in bases.iter().copied().enumerate() {
            let path = dir.join(segment::file_name(base));
            if let Some(end) = expected.filter(|end| *end != base) {
                let reason = format!("segment starts at offset {base} but the one before ends at {end}");
                if !config.truncate_corrupt {
                    return Err(StorageError::Corrupt { file: path.display().to_string(), position: 0, reason });
                }
                cut_at = Some((i, reason));
                break;
            }
            let (mut seg, damage) = Segment::scan(fs.as_ref(), &path, base, bases.get(i + 1).copied())?;
            expected = Some(seg.end);
            if let Some(Damage { position, file_len, reason }) = damage {
                let newest = i + 1 == bases.len();
                if !newest && !config.truncate_corrupt {
                    return Err(StorageError::Corrupt { file: path.display().to_string(), position, reason });
                }
                seg.cut_tail()?;
                seg.sync()?;
                notes.push(RecoveryNote { file: path.clone(), position, cut_bytes: file_len - position, reason });
                if !newest {
                    cut_at = Some((i + 1, "follows a cut in an older segment".to_string()));
                }
            }
            segments.insert(base, seg);
            if cut_at.is_some() {
                break;
            }
        }
        if let Some((first_removed, reason)) = cut_at {
            remove_after_cut(fs.as_ref(), &dir, &bases[first_removed..], reason, notes)?;
        }
        if segments.is_empty() {
            segments.insert(0, Segment::create(fs.as_ref(), &dir, 0)?);
        }
        // What a killed process wrote but never synced is in the page cache only: it counts
        // as synced from now on, so it must be on the disk before anyone reads it.
        let newest = segments.values_mut().next_back().expect("never empty");
        newest.dirty = true;
        newest.sync()?;
        Ok(Self::of_segments(fs, dir, config, segments).with_damage_found())
    }

    /// Creates the log of a new partition in `dir`, which exists and is empty, without a
    /// sync: `new_dirs` (its directory and the parents made for it, parents first) are
    /// synced by its first sync with records to make durable.
    pub fn create(
        fs: Arc<dyn Fs>,
        dir: PathBuf,
        config: FileStorageConfig,
        new_dirs: Vec<PathBuf>,
    ) -> Result<Self, StorageError> {
        let segment = Segment::create_unsynced(fs.as_ref(), &dir, 0)?;
        let mut log = Self::of_segments(fs, dir, config, BTreeMap::from([(0, segment)]));
        log.new_dirs = new_dirs;
        Ok(log)
    }

    /// This log with `dirs` (parents first) to sync with its next records.
    pub fn with_unsynced_dirs(mut self, dirs: Vec<PathBuf>) -> Self {
        self.new_dirs = dirs;
        self
    }

    fn of_segments(fs: Arc<dyn Fs>, dir: PathBuf, config: FileStorageConfig, segments: BTreeMap<u64, Segment>) -> Self {
        let size = segments.values().map(|s| s.size).sum();
        let end = segments.values().next_back().expect("never empty").end;
        Self {
            fs,
            dir,
            config,
            segments,
            synced_end: end,
            size,
            tail: Records::default(),
            ahead: RefCell::new(Records::default()),
            doomed: Vec::new(),
            dir_dirty: false,
            new_dirs: Vec::new(),
            appended: false,
            damage_found: RefCell::new(Vec::new()),
            retired: Vec::new(),
        }
    }

    /// Notes the damaged runs the opening scan found, to be told once.
    fn with_damage_found(self) -> Self {
        for seg in self.segments.values() {
            self.found(seg.take_fresh_gaps());
        }
        self
    }

    /// Queues damaged runs to be told (up to the bound).
    fn found(&self, gaps: Vec<segment::Gap>) {
        if gaps.is_empty() {
            return;
        }
        let mut queue = self.damage_found.borrow_mut();
        let room = segment::GAPS_MAX.saturating_sub(queue.len());
        queue.extend(gaps.iter().map(segment::Gap::offsets).filter(|run| !run.is_empty()).take(room));
    }

    fn active(&mut self) -> &mut Segment {
        self.segments.values_mut().next_back().expect("a log always has a segment")
    }

    fn active_ref(&self) -> &Segment {
        self.segments.values().next_back().expect("a log always has a segment")
    }

    /// Starts a new segment at the end when the active one is full or old.
    fn roll_if_due(&mut self, incoming_bytes: u64, first_time_ms: u64) -> Result<(), StorageError> {
        let active = self.active_ref();
        if active.size == 0 {
            return Ok(());
        }
        let full = active.size + incoming_bytes > self.config.segment_bytes;
        let first_time = active.first_time_ms();
        let old = first_time.is_some_and(|t| first_time_ms.saturating_sub(t) >= self.config.segment_ms);
        if full || old {
            self.roll()?;
        }
        Ok(())
    }

    fn roll(&mut self) -> Result<(), StorageError> {
        let end = self.end_offset();
        // The sealed segment is durable before the next one exists, so after a crash only
        // the newest segment can miss records, and recovery cuts only there.
        let sealed = self.active();
        sealed.cut_tail()?;
        sealed.sync()?;
        match Segment::create(self.fs.as_ref(), &self.dir, end) {
            Ok(segment) => {
                self.segments.insert(end, segment);
                Ok(())
            }
            Err(e) => {
                // A file half made must go before the next write: after a cut below its
                // base it would no longer follow on, and the log would refuse to open.
                self.doomed.push(self.dir.join(segment::file_name(end)));
                Err(e)
            }
        }
    }

    /// Removes the oldest segment (never the only one); if the disk refuses, the log keeps it.
    fn remove_oldest(&mut self) -> Result<(), StorageError> {
        let path = &self.segments.values().next().expect("checked by the caller").path;
        if self.config.removals_after_sync {
            self.retired.push(path.clone());
        } else {
            self.fs.remove_file(path).map_err(|e| io_error(path, "remove", e))?;
            self.dir_dirty = true;
        }
        let (_, seg) = self.segments.pop_first().expect("checked above");
        self.size -= seg.size;
        let start = self.start_offset();
        self.tail.drop_before(start);
        self.ahead.get_mut().drop_before(start);
        Ok(())
    }

    /// Removes the files of segments that a truncate cut but the disk kept, newest first,
    /// so the files left always hold a contiguous run of offsets.
    fn finish_cuts(&mut self) -> Result<(), StorageError> {
        while let Some(path) = self.doomed.first() {
            match self.fs.remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_error(path, "remove", e)),
                _ => self.doomed.remove(0),
            };
            self.dir_dirty = true;
        }
        if self.dir_dirty {
            self.fs.sync_dir(&self.dir).map_err(|e| io_error(&self.dir, "sync directory", e))?;
            self.dir_dirty = false;
        }
        Ok(())
    }
}

/// Removes the segment files `bases` that follow a cut made while opening, noting each.
fn remove_after_cut(
    fs: &dyn Fs,
    dir: &Path,
    bases: &[u64],
    first_reason: String,
    notes: &mut Vec<RecoveryNote>,
) -> Result<(), StorageError> {
    // Newest first, so the files left always hold a contiguous run of offsets.
    let mut removed = Vec::new();
    for (i, base) in bases.iter().enumerate().rev() {
        let path = dir.join(segment::file_name(*base));
        let len = fs.open(&path, false).and_then(|f| f.size()).unwrap_or(0);
        fs.remove_file(&path).map_err(|e| io_error(&path, "remove", e))?;
        let reason = if i == 0 { first_reason.clone() } else { "follows a cut in an older segment".to_string() };
        removed.push(RecoveryNote { file: path, position: 0, cut_bytes: len, reason });
    }
    notes.extend(removed.into_iter().rev());
    fs.sync_dir(dir).map_err(|e| io_error(dir, "sync directory", e))
}

impl PartitionLog for FileLog {
    fn append(&mut self, mut records: Vec<Record>) -> Result<u64, StorageError> {
        let first = self.end_offset();
        let Some(first_time) = records.first().map(|r| r.publish_time_ms) else { return Ok(first) };
        self.appended = true;
        // The tail cache keeps the records: not the request buffers their values came in.
        crate::storage::compact_values(&mut records);
        self.finish_cuts()?;
        let mut frames = Vec::new();
        let mut entries = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            let offset = first + i as u64;
            let len = record::encode(offset, r, &mut frames);
            entries.push((offset, r.publish_time_ms, len));
        }
        self.roll_if_due(frames.len() as u64, first_time)?;
        self.active().append(&frames, &entries)?;
        self.size += frames.len() as u64;
        for (i, r) in records.into_iter().enumerate() {
            let stored = StoredRecord { offset: first + i as u64, record: Arc::new(r) };
            self.tail.push(stored, self.config.tail_cache_bytes);
        }
        Ok(first)
    }

    fn read(&self, from: u64, max_records: usize, max_bytes: usize) -> Result<Vec<StoredRecord>, StorageError> {
        let (start, end) = (self.start_offset(), self.end_offset());
        if from < start || from > end {
            return Err(StorageError::OutOfRange { offset: from, start, end });
        }
        if from == end || max_records == 0 {
            return Ok(Vec::new());
        }
        if let Some(hit) = self.tail.read(from, max_records, max_bytes) {
            return Ok(hit);
        }
        if let Some(hit) = self.ahead.borrow().read(from, max_records, max_bytes) {
            return Ok(hit);
        }
        let (_, seg) = self.segments.range(..=from).next_back().expect("from is within the log");
        let batch = seg.read(from, READ_AHEAD_RECORDS_MAX.max(max_records), READ_AHEAD_BYTES.max(max_bytes));
        self.found(seg.take_fresh_gaps());
        let batch = batch?;
        let mut ahead = self.ahead.borrow_mut();
        ahead.clear();
        for r in batch {
            ahead.push(r, usize::MAX);
        }
        Ok(ahead.read(from, max_records, max_bytes).unwrap_or_default())
    }

    fn start_offset(&self) -> u64 {
        *self.segments.keys().next().expect("a log always has a segment")
    }

    fn end_offset(&self) -> u64 {
        self.active_ref().end
    }

    fn synced_end(&self) -> u64 {
        self.synced_end
    }

    fn offset_for_time(&self, time_ms: u64) -> Result<u64, StorageError> {
        for seg in self.segments.values() {
            let found = seg.offset_for_time(time_ms);
            self.found(seg.take_fresh_gaps());
            if let Some(offset) = found? {
                return Ok(offset);
            }
        }
        Ok(self.end_offset())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        self.finish_cuts()?;
        // Once anything was appended in this process, whether or not a segment is dirty: a
        // truncate or a roll may have synced the records' data already.
        if !self.new_dirs.is_empty() && self.appended {
            for dir in &self.new_dirs {
                self.fs.sync_dir(dir).map_err(|e| io_error(dir, "sync directory", e))?;
            }
            self.new_dirs.clear();
        }
        for seg in self.segments.values_mut() {
            seg.sync()?;
        }
        self.synced_end = self.end_offset();
        Ok(())
    }

    fn sync_later(&mut self) -> Result<crate::storage::LaterSync, StorageError> {
        self.finish_cuts()?;
        let mut files = Vec::new();
        for seg in self.segments.values_mut() {
            files.extend(seg.unsynced()?.map(Path::to_path_buf));
        }
        // The segments' directory entries, and those it depends on.
        let mut dirs = self.new_dirs.clone();
        dirs.push(self.dir.clone());
        let retired = std::mem::take(&mut self.retired);
        Ok(crate::storage::LaterSync::new(Arc::clone(&self.fs), files, dirs).retiring(retired))
    }

    /// The records leave the log at once, even when the disk refuses to cut or remove
    /// their files (the error is still returned): those files are finished before the
    /// next write or sync, and a later sync never brings the records back.
    fn truncate(&mut self, from: u64) -> Result<(), StorageError> {
        let from = from.max(self.start_offset());
        if from >= self.end_offset() {
            return Ok(());
        }
        self.tail.drop_from(from);
        self.ahead.get_mut().clear();
        let found = self.damage_found.get_mut();
        found.retain(|run| run.start < from);
        for run in found.iter_mut() {
            run.end = run.end.min(from);
        }
        self.synced_end = self.synced_end.min(from);
        while self.segments.len() > 1 && self.active_ref().base >= from {
            let (_, seg) = self.segments.pop_last().expect("more than one");
            self.size -= seg.size;
            self.doomed.push(seg.path.clone());
        }
        // Newer files go first: a crash between the two must not leave an older segment cut
        // short with a newer one still after it (the log would not open).
        let removed = self.finish_cuts();
        let before = self.active_ref().size;
        let cut = match removed {
            Ok(()) => self.active().truncate(from),
            Err(_) => self.active().truncate_later(from),
        };
        self.size -= before - self.active_ref().size;
        removed?;
        cut?;
        self.active().sync()
    }

    fn apply_retention(&mut self, retention: &Retention, keep_from: u64) -> Result<u64, StorageError> {
        self.finish_cuts()?;
        loop {
            let oldest = self.segments.values().next().expect("never empty");
            let expired = retention.min_publish_time_ms.is_some_and(|t| oldest.last_time_ms.is_some_and(|l| l < t));
            // Size retention deletes sealed segments only, so the log holds at most
            // `max_bytes` plus the active segment; expiry may seal the active one first.
            let over = self.size > retention.max_bytes && self.segments.len() > 1;
            let removable = oldest.end <= keep_from && oldest.end > oldest.base;
            if !(removable && (expired || over)) {
                break;
            }
            if self.segments.len() == 1 {
                self.roll()?;
            }
            self.remove_oldest()?;
        }
        Ok(self.start_offset())
    }

    fn size_bytes(&self) -> u64 {
        self.size
    }

    fn last_publish_time_ms(&self) -> Option<u64> {
        self.segments.values().rev().find_map(|s| s.last_time_ms)
    }

    fn take_damaged(&self) -> Vec<std::ops::Range<u64>> {
        // Nothing found, the common case: no allocation.
        std::mem::take(&mut *self.damage_found.borrow_mut())
    }

    fn damaged(&self) -> Vec<std::ops::Range<u64>> {
        let runs = self.segments.values().flat_map(|s| s.gaps()).map(|g| g.offsets()).filter(|run| !run.is_empty());
        runs.take(crate::storage::DAMAGED_RUNS_MAX).collect()
    }
}
