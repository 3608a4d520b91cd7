//! One segment file: a run of framed records from a base offset, with a sparse offset and
//! time index kept in memory (rebuilt by the scan that opens the segment).

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
        let path = dir.join(file_name(base));
        let file = fs.open(&path, true).map_err(|e| io_error(&path, "create", e))?;
        file.set_len(0).map_err(|e| io_error(&path, "truncate", e))?;
        fs.sync_dir(dir).map_err(|e| io_error(dir, "sync directory", e))?;
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
        }
    }

    /// Opens a segment and checks every record: CRC, framing, and that offsets run on from
    /// `base`. Stops at the first record that fails and reports it as damage; the segment
    /// then holds the intact records before it.
    pub fn scan(fs: &dyn Fs, path: &Path, base: u64) -> Result<(Self, Option<Damage>), StorageError> {
        let file = fs.open(path, false).map_err(|e| io_error(path, "open", e))?;
        let file_len = file.size().map_err(|e| io_error(path, "stat", e))?;
        let mut segment = Self::empty(base, path.to_path_buf(), file);
        let damage = segment.scan_records(file_len)?;
        Ok((segment, damage))
    }

    fn scan_records(&mut self, file_len: u64) -> Result<Option<Damage>, StorageError> {
        let damage = |position: u64, reason: String| Ok(Some(Damage { position, file_len, reason }));
        let mut chunk = Bytes::new();
        let mut chunk_at = 0u64;
        while self.size < file_len {
            let within = (self.size - chunk_at) as usize;
            match record::decode(&chunk.slice(within.min(chunk.len())..)) {
                Decoded::Record { offset, record, frame_len } => {
                    if offset != self.end {
                        return damage(self.size, format!("record with offset {offset} where {} belongs", self.end));
                    }
                    self.note_record(offset, record.publish_time_ms, self.size, frame_len as u64);
                }
                Decoded::Short { needed } => {
                    if self.size + needed as u64 > file_len {
                        let left = file_len - self.size;
                        return damage(self.size, format!("a frame needs {needed} bytes but the file has {left} left"));
                    }
                    let want = needed.max(READ_CHUNK_BYTES).min((file_len - self.size) as usize);
                    chunk = self.read_bytes(self.size, want)?;
                    chunk_at = self.size;
                }
                Decoded::Bad(reason) => return damage(self.size, reason),
            }
        }
        Ok(None)
    }

    fn note_record(&mut self, offset: u64, time_ms: u64, position: u64, frame_len: u64) {
        let due = self.index.last().is_none_or(|last| position - last.position >= INDEX_INTERVAL_BYTES);
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
            self.note_record(offset, time_ms, position, frame_len as u64);
            position += frame_len as u64;
        }
        Ok(())
    }

    /// Reads records from `from` (which is in this segment) on, until `max_records` or the
    /// segment's end, stopping before a record that would pass `max_bytes` of payload. A
    /// damaged record ends the read: it is an error when it is the first one asked for,
    /// else the records before it are returned.
    pub fn read(&self, from: u64, max_records: usize, max_bytes: usize) -> Result<Vec<StoredRecord>, StorageError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let (mut position, mut expected) = self.entry_before(from).map_or((0, self.base), |e| (e.position, e.offset));
        let mut chunk = Bytes::new();
        let mut chunk_at = position;
        while position < self.size && out.len() < max_records {
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
            if out.is_empty() {
                return Err(self.corrupt(position, damage));
            }
            break;
        }
        Ok(out)
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
            let batch = self.read(next, 256, usize::MAX)?;
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
        let last_time_ms = match from.checked_sub(1).filter(|last| *last >= self.base) {
            Some(last) => self.read(last, 1, usize::MAX)?.first().map(|r| r.record.publish_time_ms),
            None => None,
        };
        self.index.retain(|e| e.offset < from);
        self.size = position;
        self.end = from;
        self.last_time_ms = last_time_ms;
        self.cut_pending = true;
        Ok(())
    }

    /// The byte position where the record `offset` starts.
    fn position_of(&self, offset: u64) -> Result<u64, StorageError> {
        let entry = self.entry_before(offset).expect("a segment with records has an index entry");
        let mut position = entry.position;
        let mut next = entry.offset;
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
