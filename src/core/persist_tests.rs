//! The broker on the file log: what a reopen restores (topics, subscriptions, committed
//! offsets, the counters behind ids), and what `fsync=always` shows readers before and
//! after a sync, including one the disk refuses.

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::env::{DiskFault, FaultyFs, Fs, StdFs};
use crate::storage::{FileStorage, FileStorageConfig, FsyncPolicy, StorageError};

/// Small segments, so a few dozen messages span several.
fn storage_config(dir: &Path) -> FileStorageConfig {
    FileStorageConfig { segment_bytes: 4096, ..FileStorageConfig::new(dir) }
}

fn open_on(fs: Arc<dyn Fs>, storage: FileStorageConfig, config: BrokerConfig) -> Broker {
    Broker::open(config, Box::new(FileStorage::open(fs, storage).unwrap())).unwrap()
}

/// A broker on `dir` with `fsync=always` (the default) and the default core config.
fn open(dir: &Path) -> Broker {
    open_on(Arc::new(StdFs), storage_config(dir), BrokerConfig::default())
}

/// A 100-byte message whose value starts with `text`.
fn msg(text: &str) -> OutgoingMessage {
    OutgoingMessage { value: format!("{text:.<100}").into(), ..Default::default() }
}

fn to(partition: u32, text: &str) -> OutgoingMessage {
    OutgoingMessage { partition: Some(partition), ..msg(text) }
}

/// The text a message was made from.
fn text(record: &crate::storage::Record) -> String {
    String::from_utf8(record.value.to_vec()).unwrap().trim_end_matches('.').to_string()
}

fn texts(deliveries: &[Delivery]) -> Vec<String> {
    deliveries.iter().map(|d| text(&d.record)).collect()
}

/// Publishes and syncs, as the driver does in one turn under `fsync=always`.
fn publish(b: &mut Broker, topic: &str, messages: Vec<OutgoingMessage>) -> Vec<Published> {
    let published = b.publish(0, 0, topic, messages).unwrap();
    assert_eq!(b.sync(0), Vec::new(), "sync failures");
    published
}

fn subscribe(b: &mut Broker, name: &str, topic: &str, ack_deadline_ms: Option<u64>, start: StartPosition) {
    let spec =
        SubscriptionSpec { name: name.into(), topic: topic.into(), ack_deadline_ms, start, ..Default::default() };
    b.create_subscription(spec).unwrap();
}

fn ack(b: &mut Broker, subscription: &str, deliveries: &[Delivery]) {
    let ids: Vec<String> = deliveries.iter().map(|d| d.ack_id.clone()).collect();
    for reply in b.acks(0, subscription, AckOp::Ack, ids.clone()).unwrap() {
        assert_eq!(reply.outcome, AckOutcome::Applied, "{}", reply.ack_id);
    }
}

fn committed(b: &Broker, subscription: &str) -> Vec<u64> {
    b.subscription_stats(subscription).unwrap().partitions.iter().map(|p| p.committed_offset).collect()
}

fn ends(b: &Broker, topic: &str) -> Vec<u64> {
    b.topic_info(topic).unwrap().partitions.iter().map(|p| p.end_offset).collect()
}

#[test]
fn topics_subscriptions_and_committed_offsets_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = open(dir.path());
    b.create_topic("orders", Some(3)).unwrap();
    b.create_topic("audit", None).unwrap();
    subscribe(&mut b, "billing", "orders", Some(45_000), StartPosition::Earliest);
    publish(&mut b, "orders", vec![to(0, "a0"), to(0, "a1"), to(1, "b0"), to(2, "c0"), to(2, "c1")]);
    subscribe(&mut b, "late", "orders", None, StartPosition::Latest);
    let pulled = b.pull(0, "billing", 10).unwrap();
    let acked: Vec<Delivery> = pulled.into_iter().filter(|d| ["a0", "a1", "c0"].contains(&&*text(&d.record))).collect();
    ack(&mut b, "billing", &acked);
    assert_eq!(committed(&b, "billing"), vec![2, 0, 1]);
    assert!(b.checkpoint().unwrap());
    drop(b);

    let mut b = open(dir.path());
    let (topics, _) = b.list_topics(None, 10);
    let shape: Vec<(String, usize, Vec<String>)> =
        topics.into_iter().map(|t| (t.name, t.partitions.len(), t.subscriptions)).collect();
    assert_eq!(
        shape,
        vec![("audit".into(), 1, vec![]), ("orders".into(), 3, vec!["billing".to_string(), "late".to_string()])]
    );
    let billing = b.subscription_info("billing").unwrap();
    assert_eq!(
        (billing.topic.as_str(), billing.ack_deadline_ms, billing.start),
        ("orders", 45_000, StartPosition::Earliest)
    );
    let late = b.subscription_info("late").unwrap();
    assert_eq!((late.ack_deadline_ms, late.start, late.ephemeral), (30_000, StartPosition::Latest, false));
    assert_eq!(committed(&b, "billing"), vec![2, 0, 1]);
    assert_eq!(committed(&b, "late"), vec![2, 1, 2]);
    assert_eq!(ends(&b, "orders"), vec![2, 1, 2]);
    let mut rest = texts(&b.pull(0, "billing", 10).unwrap());
    rest.sort();
    assert_eq!(rest, vec!["b0", "c1"], "acked messages are not delivered again");
    assert!(b.pull(0, "late", 10).unwrap().is_empty());
    publish(&mut b, "orders", vec![to(1, "b1")]);
    assert_eq!(texts(&b.pull(0, "late", 10).unwrap()), vec!["b1"]);
    b.assert_invariants();
}

#[test]
fn message_ids_offsets_and_topic_uids_continue_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = open(dir.path());
    let first = publish(&mut b, "events", vec![msg("a"), msg("b"), msg("c")]);
    assert_eq!(first.iter().map(|p| p.message_id.as_str()).collect::<Vec<_>>(), vec!["1-0-0", "1-0-1", "1-0-2"]);
    b.create_topic("gone", None).unwrap();
    b.delete_topic("gone", false).unwrap();
    drop(b);

    let mut b = open(dir.path());
    let next = publish(&mut b, "events", vec![msg("d")]);
    assert_eq!((next[0].message_id.as_str(), next[0].offset), ("1-0-3", 3));
    let other = publish(&mut b, "other", vec![msg("x")]);
    assert_eq!(other[0].message_id, "3-0-0", "uid 2 went to the deleted topic and is not reused");
    subscribe(&mut b, "s", "events", None, StartPosition::Earliest);
    let all = b.pull(0, "s", 10).unwrap();
    assert_eq!(texts(&all), vec!["a", "b", "c", "d"]);
    assert_eq!(all.iter().map(|d| d.message_id.as_str()).collect::<Vec<_>>(), vec!["1-0-0", "1-0-1", "1-0-2", "1-0-3"]);
}

#[test]
fn acks_after_the_last_checkpoint_are_delivered_again_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = open(dir.path());
    b.create_topic("t", None).unwrap();
    subscribe(&mut b, "s", "t", None, StartPosition::Earliest);
    publish(&mut b, "t", vec![msg("a"), msg("b"), msg("c"), msg("d")]);
    let pulled = b.pull(0, "s", 10).unwrap();
    ack(&mut b, "s", &pulled[..2]);
    assert!(b.checkpoint().unwrap());
    ack(&mut b, "s", &pulled[2..]);
    assert_eq!(committed(&b, "s"), vec![4]);
    drop(b);

    let mut b = open(dir.path());
    assert_eq!(committed(&b, "s"), vec![2]);
    let again = b.pull(0, "s", 10).unwrap();
    assert_eq!(texts(&again), vec!["c", "d"], "at least once: acked after the checkpoint, so delivered again");
}

#[test]
fn checkpoint_writes_only_when_something_changed() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = open(dir.path());
    b.create_topic("t", None).unwrap();
    subscribe(&mut b, "s", "t", None, StartPosition::Earliest);
    assert!(b.checkpoint().unwrap(), "the journal's changes are folded into the metadata");
    assert!(!b.checkpoint().unwrap());
    let journal = dir.path().join("meta.journal");
    assert_eq!(std::fs::metadata(&journal).unwrap().len(), 0, "and the journal emptied");
    publish(&mut b, "t", vec![msg("a")]);
    assert!(!b.checkpoint().unwrap(), "a publish changes no metadata");
    let pulled = b.pull(0, "s", 10).unwrap();
    ack(&mut b, "s", &pulled);
    assert!(b.checkpoint().unwrap());
    assert!(!b.checkpoint().unwrap());
    drop(b);
    let mut b = open(dir.path());
    assert!(!b.checkpoint().unwrap(), "a reopen restores exactly what was saved");
}

#[test]
fn a_topic_deleted_and_made_again_under_its_name_starts_empty() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = open(dir.path());
    b.create_topic("t", None).unwrap();
    subscribe(&mut b, "s", "t", None, StartPosition::Earliest);
    publish(&mut b, "t", vec![msg("old 1"), msg("old 2")]);
    assert_eq!(b.delete_topic("t", true).unwrap(), vec!["s"]);
    assert!(dir.path().join("topics/1").exists(), "the logs stay until the deletion is durable");
    b.sync(0);
    assert!(!dir.path().join("topics/1").exists(), "the deleted topic's logs are gone");
    b.create_topic("t", None).unwrap();
    assert_eq!(ends(&b, "t"), vec![0]);
    let new = publish(&mut b, "t", vec![msg("new")]);
    assert_eq!((new[0].message_id.as_str(), new[0].offset), ("2-0-0", 0));
    drop(b);

    let mut b = open(dir.path());
    assert_eq!(ends(&b, "t"), vec![1]);
    assert!(b.subscription_info("s").is_err(), "the forced delete took the subscription");
    subscribe(&mut b, "s", "t", None, StartPosition::Earliest);
    let all = b.pull(0, "s", 10).unwrap();
    assert_eq!((texts(&all), all[0].message_id.as_str()), (vec!["new".to_string()], "2-0-0"));
}

#[test]
fn ephemeral_subscriptions_are_not_restored() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = open(dir.path());
    b.create_topic("t", None).unwrap();
    let target = StreamTarget::Topic { topic: "t".into(), ack_deadline_ms: None, start: StartPosition::Earliest };
    let (_, name) = b.open_stream(0, target, Flow::default()).unwrap();
    assert!(b.subscription_info(&name).unwrap().ephemeral);
    b.checkpoint().unwrap();
    drop(b);
    let b = open(dir.path());
    assert_eq!(b.list_subscriptions(None, None, 10).unwrap().0, vec![]);
}

#[test]
fn a_committed_offset_past_what_recovery_kept_is_brought_back_to_the_log_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = open(dir.path());
    b.create_topic("t", None).unwrap();
    subscribe(&mut b, "s", "t", None, StartPosition::Earliest);
    publish(&mut b, "t", (0..5).map(|i| msg(&format!("m{i}"))).collect());
    let pulled = b.pull(0, "s", 10).unwrap();
    ack(&mut b, "s", &pulled);
    b.checkpoint().unwrap();
    drop(b);
    // The disk kept two records and part of the third.
    let segment = dir.path().join("topics/1/0").join(format!("{:020}.log", 0));
    let frame = std::fs::metadata(&segment).unwrap().len() / 5;
    std::fs::OpenOptions::new().write(true).open(&segment).unwrap().set_len(2 * frame + 10).unwrap();

    let mut b = open(dir.path());
    assert_eq!((ends(&b, "t"), committed(&b, "s")), (vec![2], vec![2]));
    assert_eq!(b.subscription_stats("s").unwrap().backlog, 0);
    let next = publish(&mut b, "t", vec![msg("after")]);
    assert_eq!(next[0].offset, 2);
    assert_eq!(texts(&b.pull(0, "s", 10).unwrap()), vec!["after"], "the new record at the cut offset is delivered");
}

#[test]
fn damaged_metadata_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = open(dir.path());
    b.create_topic("t", None).unwrap();
    b.checkpoint().unwrap();
    drop(b);
    let path = dir.path().join("meta");
    let mut bytes = std::fs::read(&path).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let storage = FileStorage::open(Arc::new(StdFs), storage_config(dir.path())).unwrap();
    match Broker::open(BrokerConfig::default(), Box::new(storage)) {
        Err(BrokerError::Storage(StorageError::Corrupt { file, .. })) => assert_eq!(file, path.display().to_string()),
        Err(other) => panic!("expected Corrupt, got {other:?}"),
        Ok(_) => panic!("a damaged metadata file was accepted"),
    }
}

#[test]
fn unsynced_records_are_invisible_until_sync_under_fsync_always() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = open(dir.path());
    assert!(b.acks_after_sync());
    b.create_topic("t", None).unwrap();
    subscribe(&mut b, "pulled", "t", None, StartPosition::Earliest);
    subscribe(&mut b, "streamed", "t", None, StartPosition::Earliest);
    let stream = b.open_stream(0, StreamTarget::Subscription("streamed".into()), Flow::default()).unwrap().0;
    let published = b.publish(0, 0, "t", vec![msg("a"), msg("b"), msg("c")]).unwrap();
    assert_eq!(published.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert!(b.needs_sync());
    assert_eq!(ends(&b, "t"), vec![0]);
    assert_eq!(b.subscription_stats("pulled").unwrap().backlog, 0);
    assert!(b.poll_output().is_none(), "nothing is delivered before the sync");
    assert!(b.pull(0, "pulled", 10).unwrap().is_empty());
    b.seek(0, "pulled", SeekTarget::Latest).unwrap();
    assert_eq!(committed(&b, "pulled"), vec![0], "Latest is the synced end");

    assert_eq!(b.sync(1), Vec::new());
    assert!(!b.needs_sync());
    assert_eq!(ends(&b, "t"), vec![3]);
    match b.poll_output() {
        Some(Output::Deliver { stream: s, deliveries }) => {
            assert_eq!((s, texts(&deliveries)), (stream, vec!["a".into(), "b".into(), "c".into()]))
        }
        other => panic!("expected the synced records delivered, got {other:?}"),
    }
    assert_eq!(texts(&b.pull(1, "pulled", 10).unwrap()), vec!["a", "b", "c"]);
    b.assert_invariants();
}

#[test]
fn records_are_visible_at_once_without_fsync_always() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FileStorageConfig { fsync: FsyncPolicy::IntervalMs(100), ..storage_config(dir.path()) };
    let mut b = open_on(Arc::new(StdFs), storage, BrokerConfig::default());
    assert!(!b.acks_after_sync());
    b.create_topic("t", None).unwrap();
    subscribe(&mut b, "s", "t", None, StartPosition::Earliest);
    b.publish(0, 0, "t", vec![msg("a")]).unwrap();
    assert!(b.needs_sync());
    assert_eq!(ends(&b, "t"), vec![1]);
    assert_eq!(texts(&b.pull(0, "s", 10).unwrap()), vec!["a"]);
}

#[test]
fn a_failed_sync_cuts_the_unsynced_records_and_they_never_become_visible() {
    let dir = tempfile::tempdir().unwrap();
    let faulty = FaultyFs::new(Arc::new(StdFs));
    let mut b = open_on(Arc::new(faulty.clone()), storage_config(dir.path()), BrokerConfig::default());
    b.create_topic("t", None).unwrap();
    subscribe(&mut b, "s", "t", None, StartPosition::Earliest);
    publish(&mut b, "t", vec![msg("a"), msg("b")]);
    // Refused records in the first segment, and a batch that rolls to a second one.
    for batch in [10, 30] {
        let refused: Vec<OutgoingMessage> = (0..batch).map(|i| msg(&format!("refused {i}"))).collect();
        b.publish(0, 0, "t", refused).unwrap();
    }
    assert_eq!(std::fs::read_dir(dir.path().join("topics/1/0")).unwrap().count(), 2);
    faulty.set_fault(Some(DiskFault::Eio));
    let failures = b.sync(0);
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!((failures[0].topic.as_str(), failures[0].partition), ("t", 0));
    assert!(matches!(failures[0].error, StorageError::Io(_)), "{:?}", failures[0].error);
    assert_eq!(ends(&b, "t"), vec![2]);
    faulty.set_fault(None);

    assert!(!b.needs_sync(), "the refused records are gone, not waiting for a sync");
    assert_eq!(b.sync(0), Vec::new(), "a sync (as at shutdown) finishes the cut the disk refused");
    drop(b);

    let mut b = open_on(Arc::new(faulty.clone()), storage_config(dir.path()), BrokerConfig::default());
    assert_eq!(ends(&b, "t"), vec![2]);
    assert_eq!(texts(&b.pull(0, "s", 100).unwrap()), vec!["a", "b"]);
    let next = publish(&mut b, "t", vec![msg("c")]);
    assert_eq!(next[0].offset, 2, "the next record takes the first refused offset");
    assert_eq!(texts(&b.pull(0, "s", 100).unwrap()), vec!["c"]);
    drop(b);

    let mut b = open(dir.path());
    assert_eq!(ends(&b, "t"), vec![3]);
    assert_eq!(texts(&b.pull(0, "s", 100).unwrap()), vec!["a", "b", "c"]);
}

#[test]
fn retention_that_fails_part_way_still_moves_subscriptions_to_the_new_start() {
    let dir = tempfile::tempdir().unwrap();
    let faulty = FaultyFs::new(Arc::new(StdFs));
    let config = BrokerConfig { partition_retention_ms: Some(1_000_000), ..BrokerConfig::default() };
    let mut b = open_on(Arc::new(faulty.clone()), storage_config(dir.path()), config);
    b.create_topic("t", Some(2)).unwrap();
    subscribe(&mut b, "s", "t", None, StartPosition::Earliest);
    for i in 0..40 {
        b.publish(0, 0, "t", vec![to(0, &format!("p0 {i}")), to(1, &format!("p1 {i}"))]).unwrap();
    }
    b.publish(0, 500_000, "t", vec![to(1, "p1 new")]).unwrap();
    assert_eq!(b.sync(0), Vec::new());
    // Partition 0's segments have all expired: the first goes, but the second needs a new
    // segment to roll to, which the full disk refuses. Partition 1 keeps its newer one.
    faulty.set_fault(Some(DiskFault::Full));
    assert!(matches!(b.enforce_retention(0, 1_000_001), Err(BrokerError::Storage(StorageError::Full(_)))));
    let starts: Vec<u64> = b.topic_info("t").unwrap().partitions.iter().map(|p| p.start_offset).collect();
    assert_eq!(starts, vec![30, 30]);
    assert_eq!(committed(&b, "s"), vec![30, 30]);
    let pulled = b.pull(0, "s", 100).unwrap();
    assert_eq!(pulled.len(), 10 + 11, "every record from the new starts is delivered");
    assert!(pulled.iter().all(|d| d.offset >= 30));
    b.assert_invariants();
    faulty.set_fault(None);
    b.enforce_retention(0, 1_000_001).unwrap();
    assert_eq!(ends(&b, "t"), vec![40, 41]);
    assert_eq!(b.topic_info("t").unwrap().partitions[0].start_offset, 40);
    b.assert_invariants();
}

#[test]
fn a_publish_a_partition_refuses_leaves_nothing_in_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let faulty = FaultyFs::new(Arc::new(StdFs));
    let mut b = open_on(Arc::new(faulty.clone()), storage_config(dir.path()), BrokerConfig::default());
    b.create_topic("t", Some(2)).unwrap();
    subscribe(&mut b, "s", "t", None, StartPosition::Earliest);
    publish(&mut b, "t", vec![to(0, "a"), to(1, "b")]);
    // Partition 0 takes its share, then partition 1's write is torn and refused.
    faulty.set_fault(Some(DiskFault::TornWrite));
    let refused = b.publish(0, 0, "t", vec![to(0, "x0"), to(0, "x1"), to(1, "y")]).unwrap_err();
    assert!(matches!(refused, BrokerError::Storage(StorageError::Io(_))), "{refused:?}");
    assert_eq!(b.sync(0), Vec::new());
    assert_eq!(ends(&b, "t"), vec![1, 1], "partition 0's share was cut again");
    let later = publish(&mut b, "t", vec![to(0, "c")]);
    assert_eq!(later[0].offset, 1, "the refused offsets are taken by the next publish");
    drop(b);
    let mut b = open(dir.path());
    assert_eq!(ends(&b, "t"), vec![2, 1]);
    let mut seen = texts(&b.pull(0, "s", 100).unwrap());
    seen.sort();
    assert_eq!(seen, vec!["a", "b", "c"]);
}

#[test]
fn files_of_topics_the_metadata_does_not_list_are_removed_at_open_when_it_explains_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = open(dir.path());
    b.create_topic("gone", None).unwrap();
    b.create_topic("kept", None).unwrap();
    publish(&mut b, "kept", vec![msg("a")]);
    b.delete_topic("gone", false).unwrap();
    drop(b);
    let leftover = |uid: u64, contents: &[u8]| {
        let partition = dir.path().join(format!("topics/{uid}/0"));
        std::fs::create_dir_all(&partition).unwrap();
        std::fs::write(partition.join("00000000000000000000.log"), contents).unwrap();
    };
    // What a crash between a deletion's metadata save and its file removal leaves, and an
    // empty log of a creation whose metadata was never saved.
    leftover(1, b"records of the deleted topic");
    leftover(3, b"");
    let b = open(dir.path());
    assert!(!dir.path().join("topics/1").exists());
    assert!(!dir.path().join("topics/3").exists());
    assert_eq!(ends(&b, "kept"), vec![1]);
    drop(b);

    // Records under a uid the metadata never handed out: it is older than the data.
    leftover(77, b"records the metadata does not know");
    let refused = Broker::open(
        BrokerConfig::default(),
        Box::new(FileStorage::open(Arc::new(StdFs), storage_config(dir.path())).unwrap()),
    );
    assert!(matches!(refused, Err(BrokerError::Storage(StorageError::Corrupt { .. }))), "{:?}", refused.err());
    assert!(dir.path().join("topics/77").exists(), "nothing is removed");
}

#[test]
fn a_missing_metadata_file_with_topic_data_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = open(dir.path());
    b.create_topic("t", None).unwrap();
    publish(&mut b, "t", vec![msg("a")]);
    b.checkpoint().unwrap();
    drop(b);
    std::fs::remove_file(dir.path().join("meta")).unwrap();
    let refused = Broker::open(
        BrokerConfig::default(),
        Box::new(FileStorage::open(Arc::new(StdFs), storage_config(dir.path())).unwrap()),
    );
    assert!(matches!(refused, Err(BrokerError::Storage(StorageError::Corrupt { .. }))), "{:?}", refused.err());
    assert!(dir.path().join("topics/1/0/00000000000000000000.log").exists());
}

#[test]
fn a_deletion_whose_metadata_save_fails_keeps_the_files_until_it_is_saved() {
    let dir = tempfile::tempdir().unwrap();
    let faulty = FaultyFs::new(Arc::new(StdFs));
    let mut b = open_on(Arc::new(faulty.clone()), storage_config(dir.path()), BrokerConfig::default());
    b.create_topic("t", None).unwrap();
    publish(&mut b, "t", vec![msg("a")]);
    faulty.set_fault(Some(DiskFault::Eio));
    b.delete_topic("t", false).unwrap();
    faulty.set_fault(None);
    assert!(dir.path().join("topics/1").exists(), "the metadata still lists the topic, so its files stay");
    assert!(b.checkpoint().unwrap(), "the checkpoint saves the deletion");
    drop(b);
    let b = open(dir.path());
    assert!(!dir.path().join("topics/1").exists(), "the next start sweeps the files");
    assert!(b.topic_info("t").is_err());
}

#[test]
fn seek_by_time_stops_at_what_readers_may_see() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = open(dir.path());
    b.create_topic("t", None).unwrap();
    subscribe(&mut b, "s", "t", None, StartPosition::Earliest);
    b.publish(0, 5_000, "t", vec![msg("unsynced")]).unwrap();
    // Past every record: the log's end would be offset 1, but offset 0 is not yet visible.
    let moved = b.seek(0, "s", SeekTarget::TimeMs(9_000)).unwrap();
    assert_eq!(moved, vec![(0, 0)]);
}

#[test]
fn acks_above_a_hanging_lease_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = open(dir.path());
    b.create_topic("t", None).unwrap();
    subscribe(&mut b, "s", "t", None, StartPosition::Earliest);
    let values = ["a", "b", "c", "d", "e", "f"];
    publish(&mut b, "t", values.iter().map(|v| msg(v)).collect());
    let pulled = b.pull(0, "s", 10).unwrap();
    // "a" stays leased (its consumer went quiet); b, c and e are acked above it.
    ack(&mut b, "s", &[pulled[1].clone(), pulled[2].clone(), pulled[4].clone()]);
    assert_eq!(committed(&b, "s"), vec![0]);
    assert!(b.checkpoint().unwrap());
    drop(b);

    let mut b = open(dir.path());
    assert_eq!(committed(&b, "s"), vec![0]);
    let again = b.pull(0, "s", 10).unwrap();
    assert_eq!(texts(&again), vec!["a", "d", "f"], "only what no checkpointed ack covers comes again");
    assert!(again.iter().all(|d| d.delivery_attempt == 1));
    ack(&mut b, "s", &again);
    assert_eq!(committed(&b, "s"), vec![6]);
    b.assert_invariants();
}

#[test]
fn a_record_that_fails_its_crc_while_serving_is_reported_and_never_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = open(dir.path());
    b.create_topic("t", Some(2)).unwrap();
    subscribe(&mut b, "s", "t", None, StartPosition::Earliest);
    publish(&mut b, "t", vec![to(0, "a0"), to(0, "a1"), to(1, "b0")]);
    drop(b);
    let mut b = open(dir.path()); // nothing cached: reads go to the disk
                                  // Damage the second record of partition 0 (each frame is the same size).
    let path = dir.path().join("topics/1/0/00000000000000000000.log");
    let mut bytes = std::fs::read(&path).unwrap();
    let frame = bytes.len() / 2;
    bytes[frame + 40] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();

    let first = b.pull(0, "s", 10).unwrap();
    let mut seen = texts(&first);
    seen.sort();
    assert_eq!(seen, vec!["a0", "b0"], "the damaged record is not delivered; the other partition goes on");
    let reported: Vec<Output> = std::iter::from_fn(|| b.poll_output()).collect();
    assert!(
        matches!(
            &reported[..],
            [
                Output::Damaged { partition: 0, offsets: std::ops::Range { start: 1, end: 2 }, .. },
                Output::ReadFailed { partition: 0, offset: 1, error: StorageError::Corrupt { .. }, .. }
            ]
        ),
        "{reported:?}"
    );
    let refused = b.pull(0, "s", 10).unwrap_err();
    assert!(matches!(refused, BrokerError::Storage(StorageError::Corrupt { .. })), "{refused:?}");
    assert!(b.poll_output().is_none(), "reported once");
    // An operator seeks past it.
    b.seek(0, "s", SeekTarget::Offsets(vec![(0, 2)])).unwrap();
    assert!(b.pull(0, "s", 10).unwrap().is_empty());
}

#[test]
fn an_ack_id_from_before_a_reopen_never_names_a_lease_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = open(dir.path());
    b.set_wall_ms(1_000);
    b.create_topic("t", None).unwrap();
    subscribe(&mut b, "s", "t", None, StartPosition::Earliest);
    publish(&mut b, "t", vec![msg("a")]);
    let before = b.pull(0, "s", 10).unwrap();
    assert!(before[0].ack_id.ends_with("-0-0-1"), "a new broker counts leases from 1: {}", before[0].ack_id);
    drop(b);

    // The same message leased again after the reopen, as the first lease of the new run.
    let mut b = open(dir.path());
    b.set_wall_ms(2_000);
    let after = b.pull(0, "s", 10).unwrap();
    assert_eq!(texts(&after), vec!["a"]);
    assert_ne!(after[0].ack_id, before[0].ack_id);
    assert!(after[0].ack_id.ends_with(&format!("-0-0-{}", 2_000 * 1_000_000)), "{}", after[0].ack_id);
    let stale = b.acks(0, "s", AckOp::Ack, vec![before[0].ack_id.clone()]).unwrap();
    assert_ne!(stale[0].outcome, AckOutcome::Applied, "an ack from the old run took the new lease");
    ack(&mut b, "s", &after);
}

/// The topics and subscriptions as Admin shows them, for comparing two brokers.
fn listing(b: &Broker) -> (Vec<TopicInfo>, Vec<SubscriptionInfo>, Vec<Vec<u64>>) {
    let (topics, _) = b.list_topics(None, 1000);
    let (subscriptions, _) = b.list_subscriptions(None, None, 1000).unwrap();
    let committed = subscriptions.iter().map(|s| committed(b, &s.name)).collect();
    (topics, subscriptions, committed)
}

#[test]
fn changes_journaled_since_the_last_checkpoint_are_replayed_whatever_the_defaults_are_now() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = open(dir.path());
    b.create_topic("before", Some(2)).unwrap();
    b.checkpoint().unwrap();
    // Everything below is in the journal only.
    b.create_topic("t", None).unwrap();
    b.create_topic("dead", Some(1)).unwrap();
    publish(&mut b, "t", vec![msg("a"), msg("b")]);
    subscribe(&mut b, "latest", "t", Some(30_000), StartPosition::Latest);
    let spec = SubscriptionSpec {
        name: "policies".into(),
        topic: "t".into(),
        retry: Some(RetrySpec { minimum_backoff_ms: Some(100), maximum_backoff_ms: None }),
        dead_letter: Some(DeadLetterSpec { topic: "dead".into(), max_delivery_attempts: None }),
        ordered: true,
        ..Default::default()
    };
    b.create_subscription(spec).unwrap();
    subscribe(&mut b, "gone", "t", None, StartPosition::Earliest);
    b.delete_subscription("gone").unwrap();
    b.create_topic("dropped", None).unwrap();
    b.delete_topic("dropped", false).unwrap();
    let keyed = OutgoingMessage { idempotency_key: Some("k".into()), ..msg("keyed") };
    publish(&mut b, "t", vec![keyed.clone()]);
    b.sync(0);
    let before = listing(&b);
    assert!(dir.path().join("meta.journal").exists());
    drop(b);

    // Other defaults now: the journal holds what the broker resolved, not what was asked.
    let config = BrokerConfig {
        default_partitions: 3,
        ack_deadline_ms: 20_000,
        max_delivery_attempts: 9,
        retry_maximum_backoff_ms: 5_000,
        ..BrokerConfig::default()
    };
    let mut b = open_on(Arc::new(StdFs), storage_config(dir.path()), config);
    assert_eq!(listing(&b), before);
    assert_eq!(committed(&b, "latest"), vec![2], "a subscription at the latest offset stays there");
    assert_eq!(std::fs::metadata(dir.path().join("meta.journal")).unwrap().len(), 0, "folded in at open");
    let again = b.publish(0, 0, "t", vec![keyed]).unwrap();
    assert!(again[0].duplicate, "the dedupe index was rebuilt: the journal said the topic holds keys");
    let next = b.create_topic("next", None).unwrap();
    assert_eq!(next.partitions.len(), 3);
    b.sync(0);
    assert!(dir.path().join(format!("topics/{}", 5)).exists(), "uids go on after the journal's");
}

/// The journal's bytes after `changes`, and the broker's listing then.
fn journal_after(dir: &Path, changes: impl FnOnce(&mut Broker)) -> Vec<u8> {
    let mut b = open(dir);
    b.checkpoint().unwrap();
    changes(&mut b);
    b.sync(0);
    drop(b);
    std::fs::read(dir.join("meta.journal")).unwrap()
}

#[test]
fn a_torn_journal_tail_is_cut_and_the_entries_before_it_kept() {
    let dir = tempfile::tempdir().unwrap();
    let journal = journal_after(dir.path(), |b| {
        b.create_topic("kept", None).unwrap();
        b.create_topic("torn", None).unwrap();
    });
    // The second entry loses its last byte, as a crash during its write would leave it.
    std::fs::write(dir.path().join("meta.journal"), &journal[..journal.len() - 1]).unwrap();
    let b = open(dir.path());
    let names: Vec<String> = b.list_topics(None, 10).0.into_iter().map(|t| t.name).collect();
    assert_eq!(names, vec!["kept"]);
}

#[test]
fn damage_in_the_journal_with_valid_entries_after_it_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut journal = journal_after(dir.path(), |b| {
        b.create_topic("first", None).unwrap();
        b.create_topic("second", None).unwrap();
    });
    journal[12] ^= 0x40;
    let path = dir.path().join("meta.journal");
    std::fs::write(&path, &journal).unwrap();
    let refused = Broker::open(
        BrokerConfig::default(),
        Box::new(FileStorage::open(Arc::new(StdFs), storage_config(dir.path())).unwrap()),
    );
    match refused {
        Err(BrokerError::Storage(StorageError::Corrupt { file, position, reason })) => {
            assert_eq!((file.as_str(), position), ("meta.journal", 0));
            assert!(reason.contains("a valid entry follows"), "{reason}");
        }
        other => panic!("expected Corrupt, got {:?}", other.err()),
    }
    assert_eq!(std::fs::read(&path).unwrap(), journal, "nothing is cut");
}

#[test]
fn journal_entries_the_metadata_already_covers_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let journal = journal_after(dir.path(), |b| {
        b.create_topic("t", None).unwrap();
        subscribe(b, "s", "t", None, StartPosition::Earliest);
    });
    let mut b = open(dir.path());
    b.delete_subscription("s").unwrap();
    b.checkpoint().unwrap();
    drop(b);
    // A crash after the metadata save, before the journal was emptied on disk.
    std::fs::write(dir.path().join("meta.journal"), &journal).unwrap();
    let b = open(dir.path());
    assert_eq!(b.list_topics(None, 10).0.len(), 1);
    assert!(b.subscription_info("s").is_err(), "the deleted subscription is not brought back");
}

#[test]
fn a_journal_append_the_disk_tears_falls_back_to_saving_the_whole_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let faulty = FaultyFs::new(Arc::new(StdFs));
    let mut b = open_on(Arc::new(faulty.clone()), storage_config(dir.path()), BrokerConfig::default());
    b.create_topic("t", None).unwrap();
    b.sync(0);
    // The next write is the journal's append (a new topic's files are made without one).
    faulty.set_fault(Some(DiskFault::TornWrite));
    b.create_topic("torn", None).unwrap();
    faulty.set_fault(None);
    assert_eq!(std::fs::metadata(dir.path().join("meta.journal")).unwrap().len(), 0, "saved whole instead");
    b.create_topic("after", None).unwrap();
    b.sync(0);
    drop(b);
    let b = open(dir.path());
    let names: Vec<String> = b.list_topics(None, 10).0.into_iter().map(|t| t.name).collect();
    assert_eq!(names, vec!["after", "t", "torn"]);
}

/// Where `op` stands in `ops`, failing with the list when it is missing.
fn position(ops: &[crate::env::ops::Op], op: &crate::env::ops::Op) -> usize {
    ops.iter().position(|o| o == op).unwrap_or_else(|| panic!("{op:?} missing from {ops:#?}"))
}

#[test]
fn a_partition_syncs_the_directories_its_records_need_before_they_are_acknowledged() {
    use crate::env::ops::{Op, OpLog};
    let dir = tempfile::tempdir().unwrap();
    let fs = OpLog::new(Arc::new(StdFs));
    let mut b = open_on(Arc::new(fs.clone()), storage_config(dir.path()), BrokerConfig::default());
    b.create_topic("t", Some(2)).unwrap();
    b.sync(0);
    fs.take();
    // Only partition 1 gets records: its chain includes `topics`, which holds the topic's
    // entry, though partition 0 made that directory.
    b.publish(0, 0, "t", vec![to(1, "a")]).unwrap();
    b.sync(0);
    let ops = fs.take();
    let segment = dir.path().join("topics/1/1/00000000000000000000.log");
    let synced = position(&ops, &Op::SyncData(segment));
    for d in ["topics", "topics/1", "topics/1/1"] {
        assert!(position(&ops, &Op::SyncDir(dir.path().join(d))) < synced, "{d} before the data: {ops:#?}");
    }
    drop(b);

    // Reopened after what may have been a crash of the process that made the directories.
    let mut b = open_on(Arc::new(fs.clone()), storage_config(dir.path()), BrokerConfig::default());
    fs.take();
    b.publish(0, 0, "t", vec![to(0, "b")]).unwrap();
    b.sync(0);
    let ops = fs.take();
    let synced = position(&ops, &Op::SyncData(dir.path().join("topics/1/0/00000000000000000000.log")));
    for d in ["topics", "topics/1", "topics/1/0"] {
        assert!(position(&ops, &Op::SyncDir(dir.path().join(d))) < synced, "{d} before the data: {ops:#?}");
    }
}

#[test]
fn a_topic_s_first_keyed_publish_syncs_the_journal_before_writing_its_records() {
    use crate::env::ops::{Op, OpLog};
    let dir = tempfile::tempdir().unwrap();
    let fs = OpLog::new(Arc::new(StdFs));
    let mut b = open_on(Arc::new(fs.clone()), storage_config(dir.path()), BrokerConfig::default());
    b.create_topic("t", None).unwrap();
    publish(&mut b, "t", vec![msg("plain")]);
    fs.take();
    let keyed = OutgoingMessage { idempotency_key: Some("k".into()), ..msg("keyed") };
    b.publish(0, 0, "t", vec![keyed]).unwrap();
    let ops = fs.take();
    let journal_synced = position(&ops, &Op::SyncData(dir.path().join("meta.journal")));
    let written = position(&ops, &Op::Write(dir.path().join("topics/1/0/00000000000000000000.log")));
    assert!(journal_synced < written, "{ops:#?}");
}
