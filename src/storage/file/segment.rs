//! One segment file: a run of framed records from a base offset, with a sparse offset and
//! time index kept in memory (rebuilt by the scan that opens the segment).

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::record::{self, Decoded, FRAME_HEADER_BYTES};
use super::{io_error, StorageError};
use crate::env::{read_exact_at, Fs, FsFile};
use crate::storage::StoredRecord;

/// One index entry per this many bytes of records (and one for the first record).
const INDEX_INTERVAL_BYTES: u64 = 4096;

/// Bytes read at a time when scanning or reading; a larger frame is read whole.
const READ_CHUNK_BYTES: usize = 256 * 1024;

/// After a damaged frame whose own length leads nowhere, the next intact frame is looked
/// for byte by byte this far on. A frame is at most [`record::BODY_BYTES_MAX`], but a
/// search that far could cost seconds of CRCs; past it, the records after the damage
/// cannot be reached by reads, and a start refuses (an older segment) or cuts (the newest)
/// there.
const RESYNC_WINDOW_BYTES: u64 = 1024 * 1024;

/// At most this many bytes are run through a CRC by one search for the next intact frame:
/// payloads full of plausible lengths cannot make it cost more than about 10 ms.
const RESYNC_CRC_BUDGET_BYTES: u64 = 64 * 1024 * 1024;

/// The smallest frame: its header and the smallest body.
const FRAME_BYTES_MIN: u64 = 36;

/// Damaged runs remembered per segment: reads pass the ones remembered without searching
/// again; past this many, a read that meets another searches each time, and it is not
/// reported.
pub const GAPS_MAX: usize = 256;

/// Where a record starts, and its publish time (times never decrease in a partition).
#[derive(Debug, Clone, Copy)]
struct IndexEntry {
    offset: u64,
    position: u64,
    time_ms: u64,
}

/// What a scan found past the last intact record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Byte position of the first bad or incomplete frame.
    pub position: u64,
    /// The file's length: `file_len - position` bytes are not records.
    pub file_len: u64,
    pub reason: String,
}

/// A run of damaged records (a CRC or framing failure) and where the intact records after
/// it go on. Found by the scan that opens a segment, or by a read that met it; readers
/// that need none of its records pass it, and appends never read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The first damaged record's offset.
    pub first: u64,
    /// Where its frame starts.
    pub position: u64,
    /// The first intact record after the run: its offset and where its frame starts (the
    /// segment's end, when nothing intact followed); `None` when it could not be found
    /// within [`RESYNC_WINDOW_BYTES`].
    pub resume: Option<(u64, u64)>,
}

impl Gap {
    /// The offsets the run covers (just its first when its end is unknown).
    pub fn offsets(&self) -> std::ops::Range<u64> {
        self.first..self.resume.map_or(self.first + 1, |(offset, _)| offset)
    }
}

/// A segment file and what is known of its records.
pub struct Segment {
    pub base: u64,
    /// The offset after the last record.
    pub end: u64,
    /// Bytes of intact records; the next record is written here.
    pub size: u64,
    pub last_time_ms: Option<u64>,
    /// Bytes written since the last sync.
    pub dirty: bool,
    /// The file may hold bytes past `size` that a cut or a failed write could not remove;
    /// they are cut before the next write or sync, so they never follow a new record.
    cut_pending: bool,
    pub path: PathBuf,
    file: Box<dyn FsFile>,
    index: Vec<IndexEntry>,
    /// Damaged runs found so far, by position (reads find them with `&self`).
    gaps: RefCell<Vec<Gap>>,
    /// Runs found since the log last took them, to be told once.
    fresh: RefCell<Vec<Gap>>,
}

/// A segment's file name: the base offset, zero-padded so names sort by offset.
pub fn file_name(base: u64) -> String {
    format!("{base:020}.log")
}

/// The base offset a segment file name encodes, if it is one.
pub fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
}

impl Segment {
    /// Creates an empty segment file and makes its directory entry durable.
    pub fn create(fs: &dyn Fs, dir: &Path, base: u64) -> Result<Self, StorageError> {
        let segment = Self::create_unsynced(fs, dir, base)?;
        fs.sync_dir(dir).map_err(|e| io_error(dir, "sync directory", e))?;
        Ok(segment)
    }

    /// Creates an empty segment file; its directory entry is durable only once the
    /// directory is synced.
    pub fn create_unsynced(fs: &dyn Fs, dir: &Path, base: u64) -> Result<Self, StorageError> {
        let path = dir.join(file_name(base));
        let file = fs.open(&path, true).map_err(|e| io_error(&path, "create", e))?;
        file.set_len(0).map_err(|e| io_error(&path, "truncate", e))?;
        Ok(Self::empty(base, path, file))
    }

    /// A segment with no records known yet.
    fn empty(base: u64, path: PathBuf, file: Box<dyn FsFile>) -> Self {
        Self {
            base,
            end: base,
            size: 0,
            last_time_ms: None,
            dirty: false,
            cut_pending: false,
            path,
            file,
            index: Vec::new(),
            gaps: RefCell::new(Vec::new()),
            fresh: RefCell::new(Vec::new()),
        }
    }

    /// Opens a segment and checks every record: CRC, framing, and that offsets run on from
    /// `base`. Stops at the first record that fails and reports it as damage; the segment
    /// then holds the intact records before it.
    /// `next_base` is the next segment's base offset, for a segment that is not the newest.
    pub fn scan(
        fs: &dyn Fs,
        path: &Path,
        base: u64,
        next_base: Option<u64>,
    ) -> Result<(Self, Option<Damage>), StorageError> {
        let file = fs.open(path, false).map_err(|e| io_error(path, "open", e))?;
        let file_len = file.size().map_err(|e| io_error(path, "stat", e))?;
        let mut segment = Self::empty(base, path.to_path_buf(), file);
        let damage = segment.scan_records(file_len, next_base)?;
        Ok((segment, damage))
    }

    fn scan_records(&mut self, file_len: u64, next_base: Option<u64>) -> Result<Option<Damage>, StorageError> {
        let mut chunk = Bytes::new();
        let mut chunk_at = 0u64;
        // After a damaged run the next intact record starts an index entry, so reads
        // after it never walk through the damage.
        let mut resumed = false;
        while self.size < file_len {
            let within = (self.size - chunk_at) as usize;
            let reason = match record::decode(&chunk.slice(within.min(chunk.len())..)) {
                Decoded::Record { offset, .. } if offset != self.end => {
                    format!("record with offset {offset} where {} belongs", self.end)
                }
                Decoded::Record { offset, record, frame_len } => {
                    self.note_record(offset, record.publish_time_ms, self.size, frame_len as u64, resumed);
                    resumed = false;
                    continue;
                }
                Decoded::Short { needed } if self.size + needed as u64 <= file_len => {
                    let want = needed.max(READ_CHUNK_BYTES).min((file_len - self.size) as usize);
                    chunk = self.read_bytes(self.size, want)?;
                    chunk_at = self.size;
                    continue;
                }
                Decoded::Short { needed } => {
                    format!("a frame needs {needed} bytes but the file has {} left", file_len - self.size)
                }
                Decoded::Bad(reason) => reason,
            };
            let Some(resume) = self.kept_after(self.size, file_len, next_base)? else {
                return Ok(Some(Damage { position: self.size, file_len, reason }));
            };
            let (offset, position) = resume;
            let resume = Some(resume);
            self.remember(Gap { first: self.end, position: self.size, resume });
            self.end = offset;
            self.size = position;
            resumed = true;
        }
        Ok(None)
    }

    /// Where the records after damage found at open at `position` go on, when they were
    /// written after it and so stay; `None` when the damage is what a crash leaves of
    /// writes never synced, to be cut as a torn tail. A segment before the newest was synced
    /// whole before the next one began, so damage in it is never a lost write (its records
    /// run on to `next_base`). In the newest, damage with intact records after it is kept
    /// unless its bytes look like a lost write: a whole disk block of zeros, zeros from the
    /// damage itself to the end of its block, or zeros from a block boundary (or from the
    /// damage itself) to the intact record, where the lost blocks of a write were.
    fn kept_after(
        &self,
        position: u64,
        file_len: u64,
        next_base: Option<u64>,
    ) -> Result<Option<(u64, u64)>, StorageError> {
        let resume = self.find_resume(position, self.end, file_len)?;
        Ok(match (resume, next_base) {
            (Some((_, at)), Some(next)) if at == file_len => (next > self.end).then_some((next, file_len)),
            (Some(resume), Some(_)) => Some(resume),
            (Some((offset, at)), None) if at < file_len && !self.looks_lost(position, at)? => Some((offset, at)),
            _ => None,
        })
    }

    /// Whether the bytes from `from` to `to` look like a write a crash lost (see
    /// [`Segment::kept_after`]).
    fn looks_lost(&self, from: u64, to: u64) -> Result<bool, StorageError> {
        let bytes = self.read_bytes(from, (to - from) as usize)?;
        Ok(crate::record::looks_lost(&bytes, from))
    }

    /// Looks for the first intact record after the damaged frame at `position` (where the
    /// record `expected` belongs), up to `limit`: an intact record of a later offset in
    /// that very place (the ones before it are missing), else where the damaged frame's
    /// own length says the next one starts, else byte by byte within
    /// [`RESYNC_WINDOW_BYTES`]. Returns the record's offset and place: the offset may be
    /// `expected` itself when the frame in its place was a stale copy of an earlier one.
    /// `(end offset, limit)` when the search reached `limit` and found nothing.
    fn find_resume(&self, position: u64, expected: u64, limit: u64) -> Result<Option<(u64, u64)>, StorageError> {
        // No record after the damage can have an offset past what its bytes could hold.
        let max = if self.end > expected { self.end } else { expected + (limit - position) / FRAME_BYTES_MIN + 1 };
        let within = |offset: u64| offset <= max;
        if let Some(offset) = self.intact_at(position, expected + 1, limit)?.filter(|o| within(*o)) {
            return Ok(Some((offset, position)));
        }
        let header = self.read_bytes(position, FRAME_HEADER_BYTES.min((limit - position) as usize))?;
        if header.len() == FRAME_HEADER_BYTES {
            let len = u64::from(u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")));
            let next = position + FRAME_HEADER_BYTES as u64 + len;
            if let Some(offset) = self.intact_at(next, expected, limit)?.filter(|o| within(*o)) {
                return Ok(Some((offset, next)));
            }
        }
        let window = (limit - position).min(RESYNC_WINDOW_BYTES);
        let bytes = self.read_bytes(position, window as usize)?;
        let mut budget = RESYNC_CRC_BUDGET_BYTES;
        for at in 1..bytes.len().saturating_sub(FRAME_HEADER_BYTES) {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
            if !(1..=record::BODY_BYTES_MAX).contains(&len) || at + FRAME_HEADER_BYTES + len > bytes.len() {
                continue;
            }
            let Some(left) = budget.checked_sub(len as u64) else { return Ok(None) };
            budget = left;
            if let Decoded::Record { offset, .. } = record::decode(&bytes.slice(at..)) {
                if offset >= expected && within(offset) {
                    return Ok(Some((offset, position + at as u64)));
                }
            }
        }
        // Nothing intact to the limit: the run is the rest of the segment.
        Ok((position + window == limit).then_some((self.end.max(expected + 1), limit)))
    }

    /// The offset of the intact record at `position`, if there is one at `min` or later.
    fn intact_at(&self, position: u64, min: u64, limit: u64) -> Result<Option<u64>, StorageError> {
        if position + FRAME_HEADER_BYTES as u64 > limit {
            return Ok(None);
        }
        let header = self.read_bytes(position, FRAME_HEADER_BYTES)?;
        let len = u64::from(u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")));
        let frame_len = FRAME_HEADER_BYTES as u64 + len;
        if len > record::BODY_BYTES_MAX as u64 || position + frame_len > limit {
            return Ok(None);
        }
        Ok(match record::decode(&self.read_bytes(position, frame_len as usize)?) {
            Decoded::Record { offset, .. } if offset >= min => Some(offset),
            _ => None,
        })
    }

    /// Keeps a damaged run found, in order, up to [`GAPS_MAX`].
    fn remember(&self, gap: Gap) {
        let mut gaps = self.gaps.borrow_mut();
        let at = gaps.partition_point(|g| g.position < gap.position);
        if gaps.get(at).is_none_or(|g| g.position != gap.position) && gaps.len() < GAPS_MAX {
            gaps.insert(at, gap);
            self.fresh.borrow_mut().push(gap);
        }
    }

    /// The damaged run whose frame starts at `position` (where the record `first` belongs),
    /// found now if it was not known.
    fn gap_at(&self, first: u64, position: u64) -> Result<Gap, StorageError> {
        let known = self.gaps.borrow().iter().find(|g| g.position == position).copied();
        if let Some(gap) = known {
            return Ok(gap);
        }
        let resume = self.find_resume(position, first, self.size)?;
        let gap = Gap { first, position, resume };
        self.remember(gap);
        Ok(gap)
    }

    /// The damaged runs found in this segment, by first offset.
    pub fn gaps(&self) -> Vec<Gap> {
        self.gaps.borrow().clone()
    }

    /// The runs found since the last call.
    pub fn take_fresh_gaps(&self) -> Vec<Gap> {
        let mut fresh = self.fresh.borrow_mut();
        if fresh.is_empty() {
            return Vec::new();
        }
        std::mem::take(&mut *fresh)
    }

    fn note_record(&mut self, offset: u64, time_ms: u64, position: u64, frame_len: u64, resumed: bool) {
        let due = resumed || self.index.last().is_none_or(|last| position - last.position >= INDEX_INTERVAL_BYTES);
        if due {
            self.index.push(IndexEntry { offset, position, time_ms });
        }
        self.end = offset + 1;
        self.size = position + frame_len;
        self.last_time_ms = Some(time_ms);
    }

    fn read_bytes(&self, position: u64, len: usize) -> Result<Bytes, StorageError> {
        let mut buf = vec![0u8; len];
        read_exact_at(self.file.as_ref(), &mut buf, position).map_err(|e| io_error(&self.path, "read", e))?;
        Ok(Bytes::from(buf))
    }

    /// Writes framed records (`frames`, whose offsets and times are `entries`) at the end.
    /// On failure the segment is as before (a partial write is cut off now, or before the
    /// next write if the disk refuses that too).
    pub fn append(&mut self, frames: &[u8], entries: &[(u64, u64, usize)]) -> Result<(), StorageError> {
        self.finish_cut()?;
        if let Err(e) = self.file.write_all_at(frames, self.size) {
            self.cut_pending = self.file.set_len(self.size).is_err();
            return Err(io_error(&self.path, "write", e));
        }
        self.dirty = true;
        let mut position = self.size;
        for &(offset, time_ms, frame_len) in entries {
            assert_eq!(offset, self.end, "{}: appended offsets must follow on", self.path.display());
            self.note_record(offset, time_ms, position, frame_len as u64, false);
            position += frame_len as u64;
        }
        Ok(())
    }

    /// Reads records from `from` (which is in this segment) on, until `max_records` or the
    /// segment's end, stopping before a record that would pass `max_bytes` of payload. A
    /// damaged record ends the read: it is an error when it is the first one asked for,
    /// else the records before it are returned. A damaged run before `from` is passed.
    pub fn read(&self, from: u64, max_records: usize, max_bytes: usize) -> Result<Vec<StoredRecord>, StorageError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let (mut position, mut expected) = self.start_for(from);
        let mut chunk = Bytes::new();
        let mut chunk_at = position;
        while position < self.size && out.len() < max_records {
            // A jump past a damaged run only moves forward, past the chunk or within it.
            let within = (position - chunk_at) as usize;
            let damage = match record::decode(&chunk.slice(within.min(chunk.len())..)) {
                // The offset is checked too: an intact frame at the wrong place (a stale or
                // misdirected block) must not be served as the record that belongs there.
                Decoded::Record { offset, .. } if offset != expected => {
                    format!("record with offset {offset} where {expected} belongs")
                }
                Decoded::Record { offset, record, frame_len } => {
                    if offset >= from {
                        bytes += record.size_bytes();
                        if bytes > max_bytes && !out.is_empty() {
                            break;
                        }
                        out.push(StoredRecord { offset, record: Arc::new(record) });
                    }
                    position += frame_len as u64;
                    expected += 1;
                    continue;
                }
                Decoded::Short { needed } => {
                    let left = (self.size - position) as usize;
                    if needed <= left {
                        chunk = self.read_bytes(position, needed.max(READ_CHUNK_BYTES).min(left))?;
                        chunk_at = position;
                        continue;
                    }
                    format!("a frame needs {needed} bytes, {left} are left")
                }
                Decoded::Bad(reason) => reason,
            };
            // A read that has records stops before damage it does not need to pass.
            if !out.is_empty() {
                break;
            }
            // A run that ends at or before `from` holds nothing this read needs, nor does
            // one that is only a stale frame (it ends where it starts). A jump always moves
            // on, in offsets or in bytes.
            let gap = self.gap_at(expected, position)?;
            match gap.resume {
                Some((offset, at))
                    if (offset <= from || offset == expected) && (at > position || offset > expected) =>
                {
                    (expected, position) = (offset, at);
                    continue;
                }
                _ => {}
            }
            return Err(self.corrupt(position, damage));
        }
        Ok(out)
    }

    /// Where a read of `from` starts: the last index entry at or before it, or the end of
    /// a damaged run between that entry and `from`, whichever is later.
    fn start_for(&self, from: u64) -> (u64, u64) {
        let indexed = self.entry_before(from).map_or((0, self.base), |e| (e.position, e.offset));
        let gaps = self.gaps.borrow();
        let resumed = gaps.iter().filter_map(|g| g.resume).filter(|&(offset, at)| offset <= from && at > indexed.0);
        resumed.max_by_key(|&(_, at)| at).map_or(indexed, |(offset, at)| (at, offset))
    }

    fn corrupt(&self, position: u64, reason: String) -> StorageError {
        StorageError::Corrupt { file: self.path.display().to_string(), position, reason }
    }

    /// The last index entry at or before `offset`.
    fn entry_before(&self, offset: u64) -> Option<IndexEntry> {
        let i = self.index.partition_point(|e| e.offset <= offset);
        i.checked_sub(1).map(|i| self.index[i])
    }

    /// The first offset in this segment whose publish time is at or after `time_ms`.
    pub fn offset_for_time(&self, time_ms: u64) -> Result<Option<u64>, StorageError> {
        if self.last_time_ms.is_none_or(|last| last < time_ms) {
            return Ok(None);
        }
        let i = self.index.partition_point(|e| e.time_ms < time_ms);
        let from = i.checked_sub(1).map_or(self.base, |i| self.index[i].offset);
        let mut next = from;
        while next < self.end {
            let batch = match self.read(next, 256, usize::MAX) {
                Err(e) => match self.resume_after(next) {
                    Some(resume) => {
                        next = resume;
                        continue;
                    }
                    None => return Err(e),
                },
                Ok(batch) => batch,
            };
            if let Some(hit) = batch.iter().find(|r| r.record.publish_time_ms >= time_ms) {
                return Ok(Some(hit.offset));
            }
            next = batch.last().map_or(self.end, |r| r.offset + 1);
        }
        Ok(None)
    }

    /// Cuts the segment so that `from` is its end. Once the records are found, they are
    /// gone from the segment even if the disk refuses the cut: it is retried before the
    /// next write or sync.
    pub fn truncate(&mut self, from: u64) -> Result<(), StorageError> {
        self.truncate_later(from)?;
        self.cut_tail()
    }

    /// Cuts the segment in memory only; the file is cut by the next write or sync (when
    /// newer files must go first).
    pub fn truncate_later(&mut self, from: u64) -> Result<(), StorageError> {
        assert!((self.base..=self.end).contains(&from), "{}: truncate to {from}", self.path.display());
        if from == self.end {
            return Ok(());
        }
        let position = self.position_of(from)?;
        // A damaged last record's time is not known: the index's last time before it is
        // the latest known, and times never decrease.
        let last_time_ms = match from.checked_sub(1).filter(|last| *last >= self.base) {
            Some(last) => match self.read(last, 1, usize::MAX) {
                Ok(records) => records.first().map(|r| r.record.publish_time_ms),
                Err(_) => self.entry_before(last).map(|e| e.time_ms),
            },
            None => None,
        };
        self.index.retain(|e| e.offset < from);
        let mut gaps = self.gaps.borrow_mut();
        gaps.retain(|g| g.first < from && g.position < position);
        for gap in gaps.iter_mut() {
            if gap.resume.is_some_and(|(offset, _)| offset > from) {
                gap.resume = Some((from, position));
            }
        }
        drop(gaps);
        self.fresh.borrow_mut().retain(|g| g.first < from);
        self.size = position;
        self.end = from;
        self.last_time_ms = last_time_ms;
        self.cut_pending = true;
        Ok(())
    }

    /// The offset after the damaged run that holds `offset`, if one is known and ends.
    pub fn resume_after(&self, offset: u64) -> Option<u64> {
        let gaps = self.gaps.borrow();
        gaps.iter().filter(|g| g.offsets().contains(&offset)).find_map(|g| g.resume).map(|(resume, _)| resume)
    }

    /// The byte position where the record `offset` starts. A record inside a damaged run
    /// (not its first) has no known place.
    fn position_of(&self, offset: u64) -> Result<u64, StorageError> {
        let gap = self.gaps.borrow().iter().find(|g| g.offsets().contains(&offset)).copied();
        if let Some(gap) = gap {
            if gap.first == offset {
                return Ok(gap.position);
            }
            return Err(self.corrupt(gap.position, format!("offset {offset} lies inside a damaged run of records")));
        }
        let (mut position, mut next) = self.start_for(offset);
        while next < offset {
            let header = self.read_bytes(position, FRAME_HEADER_BYTES)?;
            let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as u64;
            position += FRAME_HEADER_BYTES as u64 + len;
            next += 1;
        }
        Ok(position)
    }

    /// Cuts whatever follows the intact records (a torn tail found by a scan, or a failed
    /// write), so a sealed segment ends exactly at its last record.
    pub fn cut_tail(&mut self) -> Result<(), StorageError> {
        let len = self.file.size().map_err(|e| io_error(&self.path, "stat", e))?;
        if len != self.size {
            self.file.set_len(self.size).map_err(|e| io_error(&self.path, "truncate", e))?;
            self.dirty = true;
        }
        self.cut_pending = false;
        Ok(())
    }

    /// Retries a cut that the disk refused.
    fn finish_cut(&mut self) -> Result<(), StorageError> {
        if self.cut_pending {
            self.cut_tail()?;
        }
        Ok(())
    }

    /// The publish time of the first record, from the index (no IO).
    pub fn first_time_ms(&self) -> Option<u64> {
        self.index.first().map(|e| e.time_ms)
    }

    /// Finishes a pending cut, and the file's path if it holds writes not yet synced: what
    /// a later sync must sync.
    pub fn unsynced(&mut self) -> Result<Option<&Path>, StorageError> {
        self.finish_cut()?;
        Ok(self.dirty.then_some(self.path.as_path()))
    }

    /// Makes the written records durable (and a pending cut, first).
    pub fn sync(&mut self) -> Result<(), StorageError> {
        self.finish_cut()?;
        if self.dirty {
            self.file.sync_data().map_err(|e| io_error(&self.path, "fsync", e))?;
            self.dirty = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_sort_by_base_offset() {
        assert_eq!(file_name(42), "00000000000000000042.log");
        assert_eq!(parse_file_name(&file_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_file_name("42.log"), None);
        assert_eq!(parse_file_name("00000000000000000042.log.tmp"), None);
    }
}
