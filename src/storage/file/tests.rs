//! The file log on a real directory (`StdFs` in a temp dir), and under injected faults
//! (`FaultyFs` around it). Records have a fixed size, so every frame is [`frame`] bytes and
//! a test can name the byte position of any record.

mod faults;
mod metadata;
mod tracking_fs;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use self::tracking_fs::TrackingFs;
use super::record;
use super::*;
use crate::env::{DiskFault, FaultyFs, Fs, StdFs};
use crate::storage::{Record, Retention, StoredRecord};

/// Small segments, so a hundred records span several.
const SEGMENT_BYTES: u64 = 4096;

fn small(dir: &Path) -> FileStorageConfig {
    FileStorageConfig { segment_bytes: SEGMENT_BYTES, ..FileStorageConfig::new(dir) }
}

/// A config whose reads go to the disk: the tail cache holds one record only.
fn uncached(dir: &Path) -> FileStorageConfig {
    FileStorageConfig { tail_cache_bytes: 1, ..small(dir) }
}

/// A 100-byte value that names the record: `tag` then the offset, zero-padded.
fn value(tag: &str, i: u64) -> Bytes {
    Bytes::from(format!("{tag}{i:0>width$}", width = 100 - tag.len()))
}

fn tagged(tag: &str, i: u64, time_ms: u64) -> Record {
    Record {
        key: None,
        value: value(tag, i),
        attributes: BTreeMap::new(),
        publish_time_ms: time_ms,
        idempotency_key: None,
    }
}

fn rec(i: u64) -> Record {
    tagged("", i, i * 10)
}

/// Bytes of one framed record (all test records frame to the same length).
fn frame() -> u64 {
    let mut buf = Vec::new();
    record::encode(0, &rec(0), &mut buf) as u64
}

/// Records that fit in one segment of `SEGMENT_BYTES`.
fn per_segment() -> u64 {
    SEGMENT_BYTES / frame()
}

fn open_on(fs: Arc<dyn Fs>, config: &FileStorageConfig) -> Result<(FileLog, Vec<RecoveryNote>), StorageError> {
    let mut notes = Vec::new();
    let log = FileLog::open(fs, config.dir.clone(), config.clone(), &mut notes)?;
    Ok((log, notes))
}

fn open(config: &FileStorageConfig) -> (FileLog, Vec<RecoveryNote>) {
    open_on(Arc::new(StdFs), config).unwrap()
}

/// Appends `rec(i)` for each `i`, one append per record.
fn append_each(log: &mut FileLog, range: std::ops::Range<u64>) {
    for i in range {
        assert_eq!(log.append(vec![rec(i)]).unwrap(), i);
    }
}

/// Every record from `from` to the end, read in small steps.
fn read_all(log: &FileLog, from: u64) -> Vec<StoredRecord> {
    let mut out = Vec::new();
    let mut next = from;
    loop {
        let batch = log.read(next, 7, usize::MAX).unwrap();
        let Some(last) = batch.last() else { return out };
        next = last.offset + 1;
        out.extend(batch);
    }
}

/// Asserts that the log holds exactly `rec(i)` at offset `i` for `range`.
fn assert_holds(log: &FileLog, range: std::ops::Range<u64>) {
    assert_eq!((log.start_offset(), log.end_offset()), (range.start, range.end), "start and end");
    let got = read_all(log, range.start);
    let offsets: Vec<u64> = got.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, range.clone().collect::<Vec<_>>());
    for r in got {
        assert_eq!(*r.record, rec(r.offset), "record at offset {}", r.offset);
    }
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".log"))
        .collect();
    names.sort();
    names
}

fn seg_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

fn flip_byte(path: &Path, position: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[position as usize] ^= 0x20;
    std::fs::write(path, bytes).unwrap();
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

fn assert_corrupt(result: Result<impl std::fmt::Debug, StorageError>, file: &Path, at: u64) {
    match result {
        Err(StorageError::Corrupt { file: f, position, .. }) => {
            assert_eq!((f.as_str(), position), (file.to_str().unwrap(), at), "corrupt file and position");
        }
        other => panic!("expected Corrupt in {} at {at}, got {other:?}", file.display()),
    }
}

// Appending and reading.

#[test]
fn records_round_trip_across_segments_and_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let config = small(dir.path());
    let (mut log, _) = open(&config);
    let mut next = 0;
    for batch in (1..=7).cycle().take(25) {
        let records: Vec<Record> = (next..next + batch).map(rec).collect();
        assert_eq!(log.append(records).unwrap(), next, "a batch starts at the end");
        next += batch;
    }
    assert!(segment_files(dir.path()).len() >= 4, "{:?}", segment_files(dir.path()));
    assert_holds(&log, 0..next);
    assert_eq!(log.size_bytes(), next * frame());
    log.sync().unwrap();
    drop(log);
    let (log, notes) = open(&config);
    assert!(notes.is_empty(), "{notes:?}");
    assert_holds(&log, 0..next);
    assert_eq!(log.size_bytes(), next * frame());
}

#[test]
fn reads_from_disk_start_anywhere_and_honour_both_limits() {
    let dir = tempfile::tempdir().unwrap();
    let config = uncached(dir.path());
    let (mut log, _) = open(&config);
    append_each(&mut log, 0..100);
    // Fresh logs each time, so no read is served by what an earlier read cached.
    for from in 0..100 {
        let (log, _) = open(&config);
        let got = log.read(from, 3, usize::MAX).unwrap();
        assert!(!got.is_empty() && got.len() <= 3, "read at {from} gave {} records", got.len());
        for (i, r) in got.iter().enumerate() {
            assert_eq!((r.offset, &*r.record), (from + i as u64, &rec(from + i as u64)));
        }
    }
    let (log, _) = open(&config);
    assert_eq!(log.read(5, 3, usize::MAX).unwrap().len(), 3, "max_records");
    assert_eq!(log.read(5, 100, 250).unwrap().len(), 2, "max_bytes stops before the record that passes it");
    assert_eq!(log.read(5, 100, 1).unwrap().len(), 1, "one record even over max_bytes");
    assert!(log.read(5, 0, usize::MAX).unwrap().is_empty());
    assert_holds(&log, 0..100);
}

#[test]
fn reads_at_the_end_are_empty_and_outside_the_log_are_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(&small(dir.path()));
    assert!(log.read(0, 10, usize::MAX).unwrap().is_empty(), "an empty log reads empty at 0");
    append_each(&mut log, 0..100);
    assert!(log.read(100, 10, usize::MAX).unwrap().is_empty());
    assert_eq!(log.read(101, 10, usize::MAX), Err(StorageError::OutOfRange { offset: 101, start: 0, end: 100 }));
    let retention = Retention { max_bytes: 0, min_publish_time_ms: None };
    let start = log.apply_retention(&retention, 100).unwrap();
    assert!(start > 0);
    assert_eq!(
        log.read(start - 1, 1, usize::MAX),
        Err(StorageError::OutOfRange { offset: start - 1, start, end: 100 })
    );
    assert_eq!(log.read(start, 1, usize::MAX).unwrap()[0].offset, start);
}

#[test]
fn a_read_that_misses_the_caches_reads_a_bounded_batch_of_tiny_records() {
    let dir = tempfile::tempdir().unwrap();
    let config = FileStorageConfig { segment_bytes: 4 * 1024 * 1024, ..uncached(dir.path()) };
    let (mut log, _) = open(&config);
    let empty = |i| Record {
        key: None,
        value: Bytes::new(),
        attributes: BTreeMap::new(),
        publish_time_ms: i,
        idempotency_key: None,
    };
    log.append((0..100_000).map(empty).collect()).unwrap();
    drop(log);
    let disk = TrackingFs::default();
    let (log, _) = open_on(Arc::new(disk.clone()), &config).unwrap();
    let scanned = disk.bytes_read();
    assert_eq!(log.read(10, 1, usize::MAX).unwrap()[0].offset, 10);
    let read = disk.bytes_read() - scanned;
    assert!(read <= 512 * 1024, "one record cost {read} bytes of a {scanned}-byte segment");
    // The sparse index starts a read near its record, not at the segment's start.
    let before = disk.bytes_read();
    assert_eq!(log.read(99_990, 1, usize::MAX).unwrap()[0].offset, 99_990);
    let read = disk.bytes_read() - before;
    assert!(read <= 64 * 1024, "a record near the end cost {read} bytes");
}

#[test]
fn a_record_that_exactly_fills_max_bytes_is_returned() {
    let dir = tempfile::tempdir().unwrap();
    let config = FileStorageConfig { segment_bytes: 1024 * 1024, ..uncached(dir.path()) };
    let (mut log, _) = open(&config);
    let kib = |i| Record {
        key: None,
        value: vec![b'x'; 1024].into(),
        attributes: BTreeMap::new(),
        publish_time_ms: i,
        idempotency_key: None,
    };
    log.append((0..300).map(kib).collect()).unwrap();
    log.append((300..303).map(rec).collect()).unwrap();
    assert_eq!(log.read(300, 10, 200).unwrap().len(), 2, "from the tail cache");
    drop(log);
    let (log, _) = open(&config);
    assert_eq!(log.read(0, 1000, 256 * 1024).unwrap().len(), 256, "from the disk");
    assert_eq!(log.read(0, 1000, 3 * 1024).unwrap().len(), 3, "from what was read ahead");
}

// Rolling.

#[test]
fn segments_roll_by_size_and_are_named_by_their_base_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(&small(dir.path()));
    let n = per_segment();
    append_each(&mut log, 0..n);
    assert_eq!(segment_files(dir.path()), vec!["00000000000000000000.log"], "{n} records fit one segment");
    append_each(&mut log, n..n + 1);
    assert_eq!(segment_files(dir.path()), vec!["00000000000000000000.log".to_string(), format!("{n:020}.log")]);
    assert_eq!(file_len(&seg_path(dir.path(), 0)), n * frame());
    assert_eq!(file_len(&seg_path(dir.path(), n)), frame());
}

#[test]
fn a_batch_larger_than_a_segment_goes_whole_into_a_fresh_one() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(&small(dir.path()));
    append_each(&mut log, 0..1);
    let n = per_segment() + 5;
    assert_eq!(log.append((1..1 + n).map(rec).collect()).unwrap(), 1);
    assert_eq!(segment_files(dir.path()), vec![format!("{:020}.log", 0), format!("{:020}.log", 1)]);
    assert_eq!(file_len(&seg_path(dir.path(), 1)), n * frame());
    assert_holds(&log, 0..1 + n);
}

#[test]
fn segments_roll_when_their_first_record_is_segment_ms_old() {
    let dir = tempfile::tempdir().unwrap();
    let config = FileStorageConfig { segment_ms: 1000, ..small(dir.path()) };
    let (mut log, _) = open(&config);
    for (i, time) in [5000, 5500, 5999].into_iter().enumerate() {
        log.append(vec![tagged("", i as u64, time)]).unwrap();
    }
    assert_eq!(segment_files(dir.path()).len(), 1, "younger than segment_ms");
    log.append(vec![tagged("", 3, 6000)]).unwrap();
    assert_eq!(segment_files(dir.path()), vec![format!("{:020}.log", 0), format!("{:020}.log", 3)]);
    log.append(vec![tagged("", 4, 6999)]).unwrap();
    log.append(vec![tagged("", 5, 7000)]).unwrap();
    assert_eq!(segment_files(dir.path()).last().unwrap(), &format!("{:020}.log", 5));
    drop(log);
    let (mut log, _) = open(&config);
    log.append(vec![tagged("", 6, 7999)]).unwrap();
    assert_eq!(segment_files(dir.path()).len(), 3, "after a reopen the age counts from the same first record");
    log.append(vec![tagged("", 7, 8000)]).unwrap();
    assert_eq!(segment_files(dir.path()).len(), 4);
}

#[test]
fn a_crash_after_a_roll_loses_only_unsynced_records_of_the_newest_segment() {
    let dir = tempfile::tempdir().unwrap();
    let config = small(dir.path());
    let disk = TrackingFs::default();
    let (mut log, _) = open_on(Arc::new(disk.clone()), &config).unwrap();
    let n = per_segment();
    append_each(&mut log, 0..n - 5);
    log.sync().unwrap();
    append_each(&mut log, n - 5..n + 3); // the last five of the first segment, then a roll
    drop(log);
    disk.crash();
    // Had the roll not synced the first segment, it would now end early, the newer one
    // would not follow on, and the log would refuse to open.
    let (log, notes) = open(&config);
    assert!(notes.is_empty(), "{notes:?}");
    assert_holds(&log, 0..n);
}

#[test]
fn a_segment_file_whose_roll_failed_does_not_outlive_a_later_cut() {
    let dir = tempfile::tempdir().unwrap();
    let config = small(dir.path());
    let disk = TrackingFs::default();
    let (mut log, _) = open_on(Arc::new(disk.clone()), &config).unwrap();
    let n = per_segment();
    append_each(&mut log, 0..n);
    disk.fail_sync_dir(true);
    assert!(matches!(log.append(vec![rec(n)]), Err(StorageError::Io(_))), "the new segment was not made durable");
    disk.fail_sync_dir(false);
    log.truncate(n - 5).unwrap();
    log.append((n - 5..n + 5).map(rec).collect()).unwrap(); // rolls at n - 5
    drop(log);
    let (log, notes) = open(&config);
    assert!(notes.is_empty(), "{notes:?}");
    assert_holds(&log, 0..n + 5);
}

#[test]
fn a_cut_across_a_roll_removes_the_newer_file_before_it_shortens_the_older() {
    let dir = tempfile::tempdir().unwrap();
    let config = small(dir.path());
    let disk = TrackingFs::default();
    let (mut log, _) = open_on(Arc::new(disk.clone()), &config).unwrap();
    let n = per_segment();
    append_each(&mut log, 0..n - 5);
    log.sync().unwrap();
    append_each(&mut log, n - 5..n + 3); // rolls: the first segment is synced, the new one not
    disk.fail_remove(true);
    assert!(log.truncate(n - 5).is_err(), "the newer file could not be removed");
    drop(log);
    disk.crash();
    disk.fail_remove(false);
    // Had the older segment been cut on disk with the newer file still there, the newer one
    // would not follow on and the log would refuse to open.
    let (log, _) = open(&config);
    assert_eq!(log.start_offset(), 0);
    assert!(log.end_offset() >= n - 5);
}

#[test]
fn opening_a_log_syncs_what_a_killed_process_left_unsynced() {
    let dir = tempfile::tempdir().unwrap();
    let config = small(dir.path());
    let disk = TrackingFs::default();
    let (mut log, _) = open_on(Arc::new(disk.clone()), &config).unwrap();
    append_each(&mut log, 0..5);
    drop(log); // killed: written, never synced
    let (log, _) = open_on(Arc::new(disk.clone()), &config).unwrap();
    assert_eq!(log.synced_end(), 5, "readers may see them now");
    drop(log);
    disk.crash();
    let (log, _) = open(&config);
    assert_holds(&log, 0..5);
}

// Recovery.

#[test]
fn torn_tail_of_newest_segment_is_cut_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let config = small(dir.path());
    let (mut log, _) = open(&config);
    let n = per_segment();
    append_each(&mut log, 0..n + 10);
    drop(log);
    let newest = seg_path(dir.path(), n);
    let torn_len = 10 * frame() - 50;
    std::fs::OpenOptions::new().write(true).open(&newest).unwrap().set_len(torn_len).unwrap();
    let (mut log, notes) = open(&config);
    assert_eq!(notes.len(), 1, "{notes:?}");
    let note = &notes[0];
    assert_eq!((note.file.as_path(), note.position, note.cut_bytes), (newest.as_path(), 9 * frame(), frame() - 50));
    assert!(note.to_string().contains(&newest.display().to_string()), "{note}");
    assert_eq!(file_len(&newest), 9 * frame(), "the torn frame is gone from the file");
    assert_holds(&log, 0..n + 9);
    assert_eq!(log.append(vec![rec(n + 9)]).unwrap(), n + 9);
    drop(log);
    let (log, notes) = open(&config);
    assert!(notes.is_empty(), "{notes:?}");
    assert_holds(&log, 0..n + 10);
}

#[test]
fn zeros_or_garbage_after_the_last_record_are_cut_and_reported() {
    for junk in [vec![0u8; 300], b"not a record at all, just some bytes that a crash left".to_vec()] {
        let dir = tempfile::tempdir().unwrap();
        let config = small(dir.path());
        let (mut log, _) = open(&config);
        append_each(&mut log, 0..5);
        drop(log);
        let path = seg_path(dir.path(), 0);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&junk);
        std::fs::write(&path, bytes).unwrap();
        let (mut log, notes) = open(&config);
        let expected = RecoveryNote {
            file: path.clone(),
            position: 5 * frame(),
            cut_bytes: junk.len() as u64,
            reason: notes[0].reason.clone(),
        };
        assert_eq!(notes, vec![expected]);
        assert_eq!(file_len(&path), 5 * frame());
        assert_eq!(log.append(vec![rec(5)]).unwrap(), 5);
        assert_holds(&log, 0..6);
    }
}

/// A record of 1.5 MiB: the search for the next intact frame (1 MiB) cannot pass it.
fn big(i: u64) -> Record {
    Record { value: Bytes::from(vec![b'a' + (i % 26) as u8; 1536 * 1024]), ..tagged("", i, i * 10) }
}

/// Two big records per segment.
fn big_segments(dir: &Path) -> FileStorageConfig {
    FileStorageConfig { segment_bytes: 4 << 20, ..FileStorageConfig::new(dir) }
}

#[test]
fn an_older_segment_whose_damage_cannot_be_passed_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let config = big_segments(dir.path());
    let (mut log, _) = open(&config);
    for i in 0..3 {
        log.append(vec![big(i)]).unwrap();
    }
    drop(log);
    assert_eq!(segment_files(dir.path()).len(), 2);
    // Record 0's length: its end is lost, and no intact frame lies within 1 MiB of it.
    let older = seg_path(dir.path(), 0);
    flip_byte(&older, 1);
    assert_corrupt(open_on(Arc::new(StdFs), &config).map(|_| ()), &older, 0);
    assert_eq!(segment_files(dir.path()).len(), 2, "a refused open changes nothing");
}

#[test]
fn truncate_corrupt_cuts_an_older_segment_at_the_damage_and_removes_later_ones() {
    let dir = tempfile::tempdir().unwrap();
    let config = FileStorageConfig { truncate_corrupt: true, ..big_segments(dir.path()) };
    let (mut log, _) = open(&config);
    for i in 0..3 {
        log.append(vec![big(i)]).unwrap();
    }
    drop(log);
    let older = seg_path(dir.path(), 0);
    let (older_len, newest) = (file_len(&older), seg_path(dir.path(), 2));
    let newest_len = file_len(&newest);
    flip_byte(&older, 1);
    let (mut log, notes) = open(&config);
    let cut: Vec<(PathBuf, u64, u64)> = notes.iter().map(|n| (n.file.clone(), n.position, n.cut_bytes)).collect();
    assert_eq!(cut, vec![(older.clone(), 0, older_len), (newest, 0, newest_len)]);
    assert_eq!(segment_files(dir.path()), vec![format!("{:020}.log", 0)]);
    assert_eq!((log.start_offset(), log.end_offset()), (0, 0));
    assert_eq!(log.append(vec![rec(0)]).unwrap(), 0);
    drop(log);
    let (log, notes) = open(&config);
    assert!(notes.is_empty(), "{notes:?}");
    assert_holds(&log, 0..1);
}

#[test]
fn damage_in_the_last_record_of_a_sealed_segment_is_passed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let config = uncached(dir.path());
    let (mut log, _) = open(&config);
    let n = per_segment();
    append_each(&mut log, 0..2 * n + 3);
    drop(log);
    // Nothing intact follows it in its segment; the next segment says where its run ends.
    flip_byte(&seg_path(dir.path(), n), (n - 1) * frame() + 40);
    let (log, notes) = open(&config);
    assert!(notes.is_empty(), "{notes:?}");
    assert_holds_but(&log, 0..2 * n + 3, &[2 * n - 1]);
    assert_eq!(log.damaged(), vec![2 * n - 1..2 * n]);
}

#[test]
fn a_restart_keeps_what_a_running_broker_passed_after_a_damaged_length() {
    let dir = tempfile::tempdir().unwrap();
    let config = uncached(dir.path());
    let (mut log, _) = open(&config);
    append_each(&mut log, 0..20);
    flip_byte(&seg_path(dir.path(), 0), 5 * frame());
    assert_holds_but(&log, 0..20, &[5]);
    drop(log);
    let (log, notes) = open(&config);
    assert!(notes.is_empty(), "nothing after the damaged length is cut: {notes:?}");
    assert_holds_but(&log, 0..20, &[5]);
}

#[test]
fn a_flipped_bit_in_a_record_with_an_empty_value_is_passed_at_open() {
    // Its frame ends in zeros (an empty value's length), which alone does not make it a
    // lost write.
    let dir = tempfile::tempdir().unwrap();
    let config = uncached(dir.path());
    let (mut log, _) = open(&config);
    let empty = |i: u64| Record { value: Bytes::new(), ..tagged("", i, i * 10) };
    for i in 0..12 {
        log.append(vec![empty(i)]).unwrap();
    }
    drop(log);
    let mut frame = Vec::new();
    let frame = record::encode(0, &empty(0), &mut frame) as u64;
    flip_byte(&seg_path(dir.path(), 0), 3 * frame + 12);
    let (log, notes) = open(&config);
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(log.end_offset(), 12);
    assert_eq!(log.damaged(), vec![3..4]);
}

#[test]
fn a_block_of_zeros_in_the_newest_segment_is_a_lost_write_and_is_cut() {
    // A crash kept a later write but not a block of an earlier one: the records after it
    // were never synced, so nothing acknowledged follows, and they go as a torn tail.
    let dir = tempfile::tempdir().unwrap();
    let config = uncached(dir.path());
    let (mut log, _) = open(&config);
    let n = per_segment();
    append_each(&mut log, 0..n + 15);
    drop(log);
    let newest = seg_path(dir.path(), n);
    let mut bytes = std::fs::read(&newest).unwrap();
    bytes[512..1024].fill(0);
    std::fs::write(&newest, bytes).unwrap();
    let first_damaged = 512 / frame();
    let (log, notes) = open(&config);
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(notes[0].position, first_damaged * frame());
    assert_holds(&log, 0..n + first_damaged);
    assert!(log.damaged().is_empty());
}

#[test]
fn a_write_that_lost_its_first_block_but_not_a_later_one_is_cut() {
    // The write began inside a block, at a record; the crash lost that block's part of it
    // and kept the next block: zeros from the record to the block's end, then intact bytes
    // (the end of a record whose start was lost, then whole records). Never synced, so it
    // goes as a torn tail instead of damage that readers would wait at.
    let dir = tempfile::tempdir().unwrap();
    let config = uncached(dir.path());
    let (mut log, _) = open(&config);
    let n = per_segment();
    append_each(&mut log, 0..n + 15);
    drop(log);
    // A record whose frame starts at least 4 bytes before a block boundary.
    let k = (2..12).find(|k| (k * frame()).next_multiple_of(512) - k * frame() >= 4).unwrap();
    let (start, head) = (k * frame(), (k * frame()).next_multiple_of(512));
    let newest = seg_path(dir.path(), n);
    let mut bytes = std::fs::read(&newest).unwrap();
    bytes[start as usize..head as usize].fill(0);
    std::fs::write(&newest, bytes).unwrap();
    let (log, notes) = open(&config);
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(notes[0].position, start);
    assert_holds(&log, 0..n + k);
    assert!(log.damaged().is_empty(), "{:?}", log.damaged());
}

#[test]
fn a_read_never_loops_between_a_stale_frame_and_damage_right_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = uncached(dir.path());
    let (mut log, _) = open(&config);
    append_each(&mut log, 0..20);
    let path = seg_path(dir.path(), 0);
    let mut bytes = std::fs::read(&path).unwrap();
    let f = frame() as usize;
    bytes.copy_within(8 * f..9 * f, 7 * f);
    std::fs::write(&path, bytes).unwrap();
    assert_eq!(read_all(&log, 8).len(), 12, "remembers the stale frame's run");
    flip_byte(&path, 9 * frame() + 60);
    log.read(0, 1, usize::MAX).unwrap(); // another read-ahead, so the next reads go to the disk
    assert_corrupt(log.read(9, 1, usize::MAX), &path, 9 * frame());
    assert_eq!(*log.read(10, 1, usize::MAX).unwrap()[0].record, rec(10));
    assert_eq!(log.offset_for_time(95).unwrap(), 10);
}

/// Reads every offset of `range` one by one: the ones in `damaged` are `Corrupt`, the
/// others hold `rec(i)`.
fn assert_holds_but(log: &FileLog, range: std::ops::Range<u64>, damaged: &[u64]) {
    for i in range {
        match log.read(i, 1, usize::MAX) {
            Ok(got) if !damaged.contains(&i) => assert_eq!(*got[0].record, rec(i), "record {i}"),
            Err(StorageError::Corrupt { .. }) if damaged.contains(&i) => {}
            other => panic!("offset {i}: {other:?}"),
        }
    }
}

#[test]
fn damage_inside_an_older_segment_is_passed_at_open_and_nothing_after_it_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let config = uncached(dir.path());
    let (mut log, _) = open(&config);
    let n = per_segment();
    append_each(&mut log, 0..2 * n + 3);
    drop(log);
    flip_byte(&seg_path(dir.path(), n), 5 * frame() + 40);
    let (mut log, notes) = open(&config);
    assert!(notes.is_empty(), "nothing is cut: {notes:?}");
    assert_holds_but(&log, 0..2 * n + 3, &[n + 5]);
    assert_eq!(log.take_damaged(), vec![n + 5..n + 6], "found by the scan, told once");
    assert_eq!(log.take_damaged(), vec![]);
    assert_eq!(log.damaged(), vec![n + 5..n + 6]);
    assert_eq!(log.append(vec![rec(2 * n + 3)]).unwrap(), 2 * n + 3);
}

#[test]
fn damage_inside_the_newest_segment_keeps_the_records_after_it_across_a_restart() {
    // F2's restart: the damaged record is passed, not cut with everything after it.
    let dir = tempfile::tempdir().unwrap();
    let config = uncached(dir.path());
    let (mut log, _) = open(&config);
    let n = per_segment();
    append_each(&mut log, 0..n + 10);
    drop(log);
    flip_byte(&seg_path(dir.path(), n), 3 * frame() + 60);
    let (mut log, notes) = open(&config);
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!((log.start_offset(), log.end_offset()), (0, n + 10));
    assert_holds_but(&log, 0..n + 10, &[n + 3]);
    assert_eq!(log.append(vec![rec(n + 10)]).unwrap(), n + 10);
    assert_eq!(log.damaged(), vec![n + 3..n + 4]);
}

#[test]
fn a_damaged_record_below_the_read_position_in_the_same_index_interval_is_passed() {
    // F1: a reader past the damage (its committed offset is after it) never notices it.
    for (what, at) in [("body", 60), ("length", 0), ("crc", 5)] {
        let dir = tempfile::tempdir().unwrap();
        let config = uncached(dir.path());
        let (mut log, _) = open(&config);
        append_each(&mut log, 0..20);
        assert!(20 * frame() < 4096, "one index interval");
        flip_byte(&seg_path(dir.path(), 0), 3 * frame() + at);
        let offsets: Vec<u64> = read_all(&log, 5).iter().map(|r| r.offset).collect();
        assert_eq!(offsets, (5..20).collect::<Vec<_>>(), "{what}");
        assert_holds_but(&log, 0..20, &[3]);
        assert_eq!(log.take_damaged(), vec![3..4], "{what}");
        assert_eq!(log.take_damaged(), vec![], "{what}: told once");
    }
}

#[test]
fn appends_after_a_damaged_last_record_never_read_it() {
    // F2: the damaged record lies after the segment's last index entry.
    let dir = tempfile::tempdir().unwrap();
    let config = uncached(dir.path());
    let (mut log, _) = open(&config);
    append_each(&mut log, 0..10);
    flip_byte(&seg_path(dir.path(), 0), 9 * frame() + 60);
    assert_eq!(log.last_publish_time_ms(), Some(90), "kept in memory, not read");
    assert_eq!(log.append(vec![rec(10)]).unwrap(), 10);
    assert_eq!(*log.read(10, 1, usize::MAX).unwrap()[0].record, rec(10));
    assert_holds_but(&log, 0..11, &[9]);
    assert_eq!(log.damaged(), vec![9..10]);
}

#[test]
fn a_stale_frame_in_the_way_loses_only_the_record_it_covers() {
    let dir = tempfile::tempdir().unwrap();
    let config = uncached(dir.path());
    let (mut log, _) = open(&config);
    append_each(&mut log, 0..20);
    let path = seg_path(dir.path(), 0);
    let mut bytes = std::fs::read(&path).unwrap();
    let f = frame() as usize;
    bytes.copy_within(8 * f..9 * f, 7 * f);
    std::fs::write(&path, bytes).unwrap();
    assert_eq!(read_all(&log, 8).iter().map(|r| r.offset).collect::<Vec<_>>(), (8..20).collect::<Vec<_>>());
    assert_holds_but(&log, 0..20, &[7]);
    assert_eq!(log.damaged(), vec![7..8]);
    drop(log);
    let (log, notes) = open(&config);
    assert!(notes.is_empty(), "{notes:?}");
    assert_holds_but(&log, 0..20, &[7]);
    assert_eq!(log.take_damaged(), vec![7..8]);
}

#[test]
fn a_missing_middle_segment_refuses_to_open_or_is_cut_at_with_truncate_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let config = small(dir.path());
    let (mut log, _) = open(&config);
    let n = per_segment();
    append_each(&mut log, 0..3 * n + 1);
    drop(log);
    std::fs::remove_file(seg_path(dir.path(), n)).unwrap();
    let after_gap = seg_path(dir.path(), 2 * n);
    assert_corrupt(open_on(Arc::new(StdFs), &config).map(|_| ()), &after_gap, 0);
    let config = FileStorageConfig { truncate_corrupt: true, ..config };
    let (log, notes) = open(&config);
    let cut: Vec<(PathBuf, u64)> = notes.iter().map(|n| (n.file.clone(), n.position)).collect();
    assert_eq!(cut, vec![(after_gap, 0), (seg_path(dir.path(), 3 * n), 0)]);
    assert_eq!(segment_files(dir.path()), vec![format!("{:020}.log", 0)]);
    assert_holds(&log, 0..n);
}

#[test]
fn corrupt_record_read_after_open_is_an_error_never_data() {
    let dir = tempfile::tempdir().unwrap();
    let config = uncached(dir.path());
    let (mut log, _) = open(&config);
    append_each(&mut log, 0..20);
    let path = seg_path(dir.path(), 0);
    flip_byte(&path, 7 * frame() + 60);
    assert_corrupt(log.read(7, 1, usize::MAX), &path, 7 * frame());
    assert_corrupt(log.read(7, 1, usize::MAX), &path, 7 * frame());
    // The records before the damage are still served, and no read that needs it passes it.
    assert_eq!(*log.read(0, 1, usize::MAX).unwrap()[0].record, rec(0));
    let before: Vec<u64> = log.read(2, 100, usize::MAX).unwrap().iter().map(|r| r.offset).collect();
    assert_eq!(before, (2..7).collect::<Vec<_>>());
    assert_eq!(log.offset_for_time(75).unwrap(), 8, "a search by time passes the damage");
    assert_eq!(*log.read(19, 1, usize::MAX).unwrap()[0].record, rec(19), "the tail cache still serves");
    assert_eq!(*log.read(8, 1, usize::MAX).unwrap()[0].record, rec(8), "a read after the damage passes it");
}

#[test]
fn a_record_at_the_wrong_place_is_corrupt_not_served_as_another_offset() {
    let dir = tempfile::tempdir().unwrap();
    let config = uncached(dir.path());
    let (mut log, _) = open(&config);
    append_each(&mut log, 0..20);
    // A stale or misdirected block: record 8's intact frame where record 7's belongs.
    let path = seg_path(dir.path(), 0);
    let mut bytes = std::fs::read(&path).unwrap();
    let f = frame() as usize;
    bytes.copy_within(8 * f..9 * f, 7 * f);
    std::fs::write(&path, bytes).unwrap();
    assert_corrupt(log.read(7, 1, usize::MAX), &path, 7 * frame());
    let before: Vec<u64> = log.read(5, 10, usize::MAX).unwrap().iter().map(|r| r.offset).collect();
    assert_eq!(before, vec![5, 6]);
}

// Truncate and sync.

#[test]
fn truncate_cuts_across_segment_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let config = small(dir.path());
    let (mut log, _) = open(&config);
    let n = per_segment();
    append_each(&mut log, 0..3 * n + 4);
    log.truncate(n + 5).unwrap();
    assert_eq!(segment_files(dir.path()), vec![format!("{:020}.log", 0), format!("{n:020}.log")]);
    assert_eq!(file_len(&seg_path(dir.path(), n)), 5 * frame());
    assert_eq!(log.size_bytes(), (n + 5) * frame());
    assert_holds(&log, 0..n + 5);
    append_each(&mut log, n + 5..n + 7);
    log.truncate(n).unwrap();
    assert_eq!(segment_files(dir.path()), vec![format!("{:020}.log", 0)], "a segment cut at its base goes");
    assert_holds(&log, 0..n);
    append_each(&mut log, n..n + 2);
    assert_eq!(segment_files(dir.path()).len(), 2, "the next append rolls again");
    log.truncate(3 * n).unwrap();
    assert_holds(&log, 0..n + 2);
    drop(log);
    let (mut log, notes) = open(&config);
    assert!(notes.is_empty(), "{notes:?}");
    assert_holds(&log, 0..n + 2);
    log.truncate(0).unwrap();
    assert_holds(&log, 0..0);
    assert_eq!(log.size_bytes(), 0);
    append_each(&mut log, 0..1);
}

#[test]
fn sync_raises_synced_end_to_the_end_and_truncate_lowers_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = small(dir.path());
    let (mut log, _) = open(&config);
    append_each(&mut log, 0..10);
    assert_eq!(log.synced_end(), 0);
    log.sync().unwrap();
    assert_eq!(log.synced_end(), 10);
    append_each(&mut log, 10..15);
    assert_eq!((log.synced_end(), log.end_offset()), (10, 15));
    log.truncate(12).unwrap();
    assert_eq!((log.synced_end(), log.end_offset()), (10, 12));
    log.truncate(8).unwrap();
    assert_eq!((log.synced_end(), log.end_offset()), (8, 8));
    log.truncate(20).unwrap();
    assert_eq!((log.synced_end(), log.end_offset()), (8, 8), "truncating past the end changes nothing");
    drop(log);
    let (log, _) = open(&config);
    assert_eq!(log.synced_end(), 8, "what a reopen finds counts as synced");
}

// Retention.

#[test]
fn size_retention_deletes_whole_oldest_segments_only() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(&small(dir.path()));
    let n = per_segment();
    append_each(&mut log, 0..3 * n + 4);
    let by_size = |max_bytes| Retention { max_bytes, min_publish_time_ms: None };
    assert_eq!(log.apply_retention(&by_size((2 * n + 10) * frame()), 3 * n + 4).unwrap(), n);
    assert_eq!(segment_files(dir.path()).len(), 3);
    assert_eq!(log.size_bytes(), (2 * n + 4) * frame());
    assert_eq!(log.apply_retention(&by_size(0), n + 1).unwrap(), n, "keep_from inside a segment keeps all of it");
    assert_eq!(log.apply_retention(&by_size(0), 2 * n).unwrap(), 2 * n);
    assert_eq!(log.apply_retention(&by_size(0), 3 * n + 4).unwrap(), 3 * n, "never the active segment");
    assert_eq!(segment_files(dir.path()), vec![format!("{:020}.log", 3 * n)]);
    assert_holds(&log, 3 * n..3 * n + 4);
    assert_eq!(log.size_bytes(), 4 * frame());
}

#[test]
fn time_retention_deletes_segments_whose_newest_record_expired() {
    let dir = tempfile::tempdir().unwrap();
    let config = small(dir.path());
    let (mut log, _) = open(&config);
    let n = per_segment();
    append_each(&mut log, 0..3 * n + 4); // record i was published at i * 10
    let before = |t| Retention { max_bytes: u64::MAX, min_publish_time_ms: Some(t) };
    assert_eq!(log.apply_retention(&before((n - 1) * 10), u64::MAX).unwrap(), 0, "its newest record is not expired");
    assert_eq!(log.apply_retention(&before((n - 1) * 10 + 1), u64::MAX).unwrap(), n);
    assert_eq!(log.apply_retention(&before(u64::MAX), n).unwrap(), n, "keep_from keeps the rest");
    assert_eq!(log.apply_retention(&before(2 * n * 10 + 5), u64::MAX).unwrap(), 2 * n);
    drop(log);
    let (log, _) = open(&config);
    assert_holds(&log, 2 * n..3 * n + 4);
}

#[test]
fn time_retention_rolls_an_expired_only_segment_then_deletes_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = small(dir.path());
    let (mut log, _) = open(&config);
    append_each(&mut log, 0..10);
    let expire_all = Retention { max_bytes: u64::MAX, min_publish_time_ms: Some(1000) };
    assert_eq!(log.apply_retention(&expire_all, 9).unwrap(), 0, "keep_from below the end keeps the segment");
    assert_eq!(log.apply_retention(&expire_all, 10).unwrap(), 10);
    assert_eq!(segment_files(dir.path()), vec![format!("{:020}.log", 10)]);
    assert_eq!((log.start_offset(), log.end_offset(), log.size_bytes()), (10, 10, 0));
    assert!(log.read(10, 1, usize::MAX).unwrap().is_empty());
    assert_eq!(log.apply_retention(&expire_all, 10).unwrap(), 10, "an empty log has nothing to expire");
    append_each(&mut log, 10..11);
    drop(log);
    let (log, _) = open(&config);
    assert_holds(&log, 10..11);
}

#[test]
fn retention_the_disk_refuses_leaves_the_log_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let faulty = FaultyFs::new(Arc::new(StdFs));
    let (mut log, _) = open_on(Arc::new(faulty.clone()), &small(dir.path())).unwrap();
    let n = per_segment();
    append_each(&mut log, 0..2 * n + 3);
    let by_size = Retention { max_bytes: 0, min_publish_time_ms: None };
    faulty.set_fault(Some(DiskFault::Eio));
    assert!(matches!(log.apply_retention(&by_size, 2 * n + 3), Err(StorageError::Io(_))));
    assert_holds(&log, 0..2 * n + 3);
    assert_eq!(log.size_bytes(), (2 * n + 3) * frame());
    faulty.set_fault(None);
    assert_eq!(log.apply_retention(&by_size, 2 * n + 3).unwrap(), 2 * n);
    assert_eq!(log.size_bytes(), 3 * frame());
}

#[test]
fn offset_for_time_finds_the_first_record_at_or_after_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let config = FileStorageConfig { segment_bytes: 64 * 1024, ..uncached(dir.path()) };
    let (mut log, _) = open(&config);
    // Times 0, 0, 0, 30, 30, 30, ...: groups of equal times, several index entries per segment.
    let time = |i: u64| i / 3 * 30;
    for i in 0..1500 {
        log.append(vec![tagged("", i, time(i))]).unwrap();
    }
    assert!(segment_files(dir.path()).len() >= 3);
    let expected = |t: u64| (0..1500).find(|i| time(*i) >= t).unwrap_or(1500);
    for t in (0..=15_100).step_by(7).chain([0, 30, 31, 14_970, 14_971]) {
        assert_eq!(log.offset_for_time(t).unwrap(), expected(t), "time {t}");
    }
    let retention = Retention { max_bytes: u64::MAX, min_publish_time_ms: Some(5000) };
    let start = log.apply_retention(&retention, 1500).unwrap();
    assert!(start > 0);
    assert_eq!(log.offset_for_time(0).unwrap(), start, "before the start is the start");
}

#[test]
fn the_tail_cache_keeps_no_request_buffer_alive() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(&small(dir.path()));
    // A 1-byte value that came in a 1 MiB request buffer (padded with an unknown field, say).
    let request = Bytes::from(vec![7u8; 1 << 20]);
    let record = Record { value: request.slice(0..1), ..rec(0) };
    log.append(vec![record]).unwrap();
    assert!(request.is_unique(), "the log still holds the request's buffer");
    assert_eq!(&log.read_one(0).unwrap().unwrap().record.value[..], &[7u8]);
}

#[test]
fn a_log_opened_at_an_offset_starts_there_and_reopens_so() {
    use crate::storage::Storage;
    let dir = tempfile::tempdir().unwrap();
    let config = small(dir.path());
    let mut storage = FileStorage::open(Arc::new(StdFs), config.clone()).unwrap();
    let mut log = storage.open(7, 0).unwrap();
    log.append(vec![rec(0)]).unwrap();
    drop(log);
    // Whatever the partition held is replaced by an empty log from offset 500.
    let mut log = storage.open_at(7, 0, 500).unwrap();
    assert_eq!((log.start_offset(), log.end_offset()), (500, 500));
    assert_eq!(log.append(vec![rec(500), rec(501)]).unwrap(), 500);
    log.sync().unwrap();
    drop(log);
    let log = FileStorage::open(Arc::new(StdFs), config).unwrap().open(7, 0).unwrap();
    assert_eq!((log.start_offset(), log.end_offset()), (500, 502));
    assert_eq!(log.read_one(501).unwrap().unwrap().record.value, rec(501).value);
}
