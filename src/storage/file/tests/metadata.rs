//! `FileStorage` as a whole: logs by topic uid and partition, what recovery reports, and
//! the metadata file.

use super::*;

#[test]
fn storage_keeps_logs_by_topic_uid_and_partition_and_removes_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut storage = FileStorage::open(Arc::new(StdFs), small(&dir.path().join("data"))).unwrap();
    let mut log = storage.open(7, 2).unwrap();
    log.append(vec![rec(0)]).unwrap();
    let partition_dir = dir.path().join("data/topics/7/2");
    assert_eq!(segment_files(&partition_dir), vec![format!("{:020}.log", 0)]);
    storage.remove(7, vec![log]).unwrap();
    assert!(!dir.path().join("data/topics/7").exists());
    assert!(storage.open(7, 2).unwrap().read(0, 1, 1).unwrap().is_empty(), "a removed topic's log starts afresh");
}

#[test]
fn storage_reports_what_recovery_cut() {
    let dir = tempfile::tempdir().unwrap();
    let config = small(dir.path());
    let mut storage = FileStorage::open(Arc::new(StdFs), config.clone()).unwrap();
    storage.open(1, 0).unwrap().append(vec![rec(0), rec(1)]).unwrap();
    let path = dir.path().join("topics/1/0").join(format!("{:020}.log", 0));
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(frame() + 3).unwrap();
    let mut storage = FileStorage::open(Arc::new(StdFs), config).unwrap();
    assert!(storage.recovery_notes().is_empty());
    assert_eq!(storage.open(1, 0).unwrap().end_offset(), 1);
    let notes = storage.recovery_notes();
    assert_eq!(
        notes.iter().map(|n| (n.file.clone(), n.position, n.cut_bytes)).collect::<Vec<_>>(),
        vec![(path, frame(), 3)]
    );
}

#[test]
fn metadata_round_trips_and_a_new_directory_has_none() {
    let dir = tempfile::tempdir().unwrap();
    let mut storage = FileStorage::open(Arc::new(StdFs), small(dir.path())).unwrap();
    assert_eq!(storage.load_meta().unwrap(), None);
    storage.save_meta(b"first").unwrap();
    storage.save_meta(b"second, longer than the first").unwrap();
    assert_eq!(storage.load_meta().unwrap().as_deref(), Some(&b"second, longer than the first"[..]));
    storage.save_meta(b"").unwrap();
    let mut again = FileStorage::open(Arc::new(StdFs), small(dir.path())).unwrap();
    assert_eq!(again.load_meta().unwrap(), Some(Vec::new()));
}

#[test]
fn damaged_metadata_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let mut storage = FileStorage::open(Arc::new(StdFs), small(dir.path())).unwrap();
    storage.save_meta(b"topics and subscriptions").unwrap();
    let path = dir.path().join("meta");
    let good = std::fs::read(&path).unwrap();
    for position in [0, 5, 9, 12, good.len() - 1] {
        flip_byte(&path, position as u64);
        assert_corrupt(storage.load_meta(), &path, 0);
        std::fs::write(&path, &good).unwrap();
    }
    for len in [0, 11, good.len() - 1] {
        std::fs::write(&path, &good[..len]).unwrap();
        assert_corrupt(storage.load_meta(), &path, 0);
    }
    std::fs::write(&path, [&good[..], b"x"].concat()).unwrap();
    assert_corrupt(storage.load_meta(), &path, 0);
}

#[test]
fn a_temp_metadata_file_left_behind_does_not_matter() {
    let dir = tempfile::tempdir().unwrap();
    let mut storage = FileStorage::open(Arc::new(StdFs), small(dir.path())).unwrap();
    std::fs::write(dir.path().join("meta.tmp"), b"half a save, never renamed").unwrap();
    assert_eq!(storage.load_meta().unwrap(), None);
    storage.save_meta(b"saved").unwrap();
    std::fs::write(dir.path().join("meta.tmp"), b"a longer half of a save that was never renamed").unwrap();
    assert_eq!(storage.load_meta().unwrap().as_deref(), Some(&b"saved"[..]));
    storage.save_meta(b"next").unwrap();
    assert_eq!(storage.load_meta().unwrap().as_deref(), Some(&b"next"[..]));
}

#[test]
fn a_failed_metadata_save_keeps_the_old_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let faulty = FaultyFs::new(Arc::new(StdFs));
    let mut storage = FileStorage::open(Arc::new(faulty.clone()), small(dir.path())).unwrap();
    storage.save_meta(b"old").unwrap();
    for fault in [DiskFault::Full, DiskFault::Eio, DiskFault::TornWrite] {
        faulty.set_fault(Some(fault));
        assert!(storage.save_meta(b"new metadata").is_err(), "{fault:?}");
        faulty.set_fault(None);
        assert_eq!(storage.load_meta().unwrap().as_deref(), Some(&b"old"[..]), "{fault:?}");
    }
}
