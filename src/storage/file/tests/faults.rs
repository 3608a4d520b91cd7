//! The file log under injected disk faults (`FaultyFs`): a full disk, EIO, torn writes,
//! and cuts the disk refuses.

use super::*;

#[test]
fn full_disk_on_append_is_full_and_leaves_the_log_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let config = small(dir.path());
    let faulty = FaultyFs::new(Arc::new(StdFs));
    let (mut log, _) = open_on(Arc::new(faulty.clone()), &config).unwrap();
    let n = per_segment();
    append_each(&mut log, 0..n - 1);
    faulty.set_fault(Some(DiskFault::Full));
    assert!(matches!(log.append(vec![rec(n - 1)]), Err(StorageError::Full(_))));
    assert_holds(&log, 0..n - 1);
    assert_eq!(file_len(&seg_path(dir.path(), 0)), (n - 1) * frame());
    faulty.set_fault(None);
    append_each(&mut log, n - 1..n);
    faulty.set_fault(Some(DiskFault::Full));
    assert!(matches!(log.append(vec![rec(n)]), Err(StorageError::Full(_))), "a roll needs a new file");
    assert_holds(&log, 0..n);
    assert_eq!(file_len(&seg_path(dir.path(), 0)), n * frame());
    faulty.set_fault(None);
    append_each(&mut log, n..n + 2);
    drop(log);
    let (log, notes) = open(&config);
    assert!(notes.is_empty(), "{notes:?}");
    assert_holds(&log, 0..n + 2);
}

#[test]
fn eio_on_sync_is_an_io_error_and_synced_end_stays() {
    let dir = tempfile::tempdir().unwrap();
    let faulty = FaultyFs::new(Arc::new(StdFs));
    let (mut log, _) = open_on(Arc::new(faulty.clone()), &small(dir.path())).unwrap();
    append_each(&mut log, 0..3);
    log.sync().unwrap();
    append_each(&mut log, 3..5);
    faulty.set_fault(Some(DiskFault::Eio));
    assert!(matches!(log.sync(), Err(StorageError::Io(_))));
    assert_eq!((log.synced_end(), log.end_offset()), (3, 5));
    assert!(matches!(log.append(vec![rec(5)]), Err(StorageError::Io(_))));
    assert_holds(&log, 0..5);
    faulty.set_fault(None);
    log.sync().unwrap();
    assert_eq!(log.synced_end(), 5);
}

#[test]
fn torn_write_leaves_the_log_readable_and_no_partial_record_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let config = small(dir.path());
    let faulty = FaultyFs::new(Arc::new(StdFs));
    let (mut log, _) = open_on(Arc::new(faulty.clone()), &config).unwrap();
    append_each(&mut log, 0..10);
    faulty.set_fault(Some(DiskFault::TornWrite));
    assert!(matches!(log.append((10..13).map(rec).collect()), Err(StorageError::Io(_))));
    assert_eq!(faulty.fault(), None, "a torn write clears itself");
    assert_holds(&log, 0..10);
    assert_eq!(file_len(&seg_path(dir.path(), 0)), 10 * frame(), "the half-written batch is cut off");
    drop(log);
    let (mut log, notes) = open(&config);
    assert!(notes.is_empty(), "{notes:?}");
    assert_holds(&log, 0..10);
    append_each(&mut log, 10..12);
    assert_holds(&log, 0..12);
}

#[test]
fn a_cut_the_disk_refuses_still_hides_the_records_and_is_finished_before_the_next_write() {
    let dir = tempfile::tempdir().unwrap();
    let config = small(dir.path());
    let faulty = FaultyFs::new(Arc::new(StdFs));
    let (mut log, _) = open_on(Arc::new(faulty.clone()), &config).unwrap();
    let n = per_segment();
    append_each(&mut log, 0..n - 10);
    log.sync().unwrap();
    append_each(&mut log, n - 10..n + 5); // unsynced, across a roll
    faulty.set_fault(Some(DiskFault::Eio));
    assert!(log.sync().is_err());
    assert!(matches!(log.truncate(n - 10), Err(StorageError::Io(_))));
    assert_eq!((log.synced_end(), log.end_offset()), (n - 10, n - 10), "cut in memory though the disk refused");
    assert!(log.read(n - 10, 1, usize::MAX).unwrap().is_empty());
    faulty.set_fault(None);
    // One new record where ten were cut: the stale ones after it must not come back.
    assert_eq!(log.append(vec![tagged("new", n - 10, 0)]).unwrap(), n - 10);
    drop(log);
    let (mut log, notes) = open(&config);
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(log.end_offset(), n - 9);
    for i in n - 9..n + 2 {
        assert_eq!(log.append(vec![tagged("new", i, 0)]).unwrap(), i);
    }
    drop(log);
    let (log, _) = open(&config);
    let values: Vec<Bytes> = read_all(&log, n - 10).iter().map(|r| r.record.value.clone()).collect();
    assert_eq!(values, (n - 10..n + 2).map(|i| value("new", i)).collect::<Vec<_>>());
}

#[test]
fn a_cut_the_disk_refuses_is_finished_by_the_next_sync() {
    let dir = tempfile::tempdir().unwrap();
    let config = small(dir.path());
    let faulty = FaultyFs::new(Arc::new(StdFs));
    let (mut log, _) = open_on(Arc::new(faulty.clone()), &config).unwrap();
    append_each(&mut log, 0..8);
    log.sync().unwrap();
    faulty.set_fault(Some(DiskFault::Eio));
    assert!(log.truncate(5).is_err());
    assert!(log.sync().is_err(), "the cut is still refused");
    faulty.set_fault(None);
    log.sync().unwrap();
    assert_eq!(log.synced_end(), 5, "a sync does not bring the cut records back");
    assert_eq!(file_len(&seg_path(dir.path(), 0)), 5 * frame());
    drop(log);
    let (log, _) = open(&config);
    assert_holds(&log, 0..5);
}
