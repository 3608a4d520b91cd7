//! Idempotent publish through the broker: duplicates within the window, expiry, keys
//! repeated in one request, the bound, and what a cut (a refused append, a failed sync),
//! retention and a reopen of the file log do to the index.

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::env::{DiskFault, FaultyFs, Fs, StdFs};
use crate::storage::{FileStorage, FileStorageConfig, MemoryStorage, StorageError};

fn memory(config: BrokerConfig) -> Broker {
    Broker::new(config, Box::new(MemoryStorage)).unwrap()
}

fn file_broker(fs: Arc<dyn Fs>, dir: &Path) -> Broker {
    let storage = FileStorageConfig { segment_bytes: 4096, ..FileStorageConfig::new(dir) };
    Broker::open(BrokerConfig::default(), Box::new(FileStorage::open(fs, storage).unwrap())).unwrap()
}

fn msg(value: &str, idempotency_key: Option<&str>) -> OutgoingMessage {
    OutgoingMessage {
        value: value.to_string().into(),
        idempotency_key: idempotency_key.map(str::to_string),
        ..Default::default()
    }
}

fn keyed(value: &str, key: &str) -> OutgoingMessage {
    msg(value, Some(key))
}

fn to(partition: u32, value: &str, key: &str) -> OutgoingMessage {
    OutgoingMessage { partition: Some(partition), ..keyed(value, key) }
}

/// (partition, offset, duplicate) of every answer.
fn places(published: &[Published]) -> Vec<(u32, u64, bool)> {
    published.iter().map(|p| (p.partition, p.offset, p.duplicate)).collect()
}

fn ends(b: &Broker, topic: &str) -> Vec<u64> {
    b.topic_info(topic).unwrap().partitions.iter().map(|p| p.end_offset).collect()
}

#[test]
fn a_key_seen_again_within_the_window_gets_the_original_place_and_stores_nothing() {
    let mut b = memory(BrokerConfig::default());
    b.create_topic("t", Some(3)).unwrap();
    let first = b.publish(0, 1_000, "t", vec![keyed("a", "k1")]).unwrap();
    let again = b.publish(0, 1_000 + 119_999, "t", vec![keyed("a, resent", "k1")]).unwrap();
    assert_eq!(places(&again), vec![(first[0].partition, first[0].offset, true)]);
    assert_eq!(again[0].message_id, first[0].message_id);
    assert_eq!(ends(&b, "t").iter().sum::<u64>(), 1, "the duplicate stored nothing");
    b.assert_invariants();
}

#[test]
fn a_key_past_its_window_is_stored_again() {
    let mut b = memory(BrokerConfig::default());
    b.create_topic("t", None).unwrap();
    b.publish(0, 1_000, "t", vec![keyed("a", "k1")]).unwrap();
    let later = b.publish(0, 1_000 + 120_000, "t", vec![keyed("a", "k1")]).unwrap();
    assert_eq!(places(&later), vec![(0, 1, false)]);
    let again = b.publish(0, 1_000 + 120_001, "t", vec![keyed("a", "k1")]).unwrap();
    assert_eq!(places(&again), vec![(0, 1, true)], "the new record starts a new window");
    b.assert_invariants();
}

#[test]
fn a_topics_own_window_is_used_and_reported() {
    let mut b = memory(BrokerConfig::default());
    let info = b.create_topic_with("t", None, Some(5_000)).unwrap();
    assert_eq!(info.dedupe_window_ms, 5_000);
    assert_eq!(b.create_topic("u", None).unwrap().dedupe_window_ms, 120_000);
    b.publish(0, 0, "t", vec![keyed("a", "k")]).unwrap();
    assert!(b.publish(0, 4_999, "t", vec![keyed("a", "k")]).unwrap()[0].duplicate);
    assert!(!b.publish(0, 5_000, "t", vec![keyed("a", "k")]).unwrap()[0].duplicate);
    for bad in [999, 86_400_001] {
        let err = b.create_topic_with("v", None, Some(bad)).unwrap_err().to_string();
        assert!(err.starts_with("dedupe_window: ") && err.contains("1s to 86400s"), "{err}");
    }
}

#[test]
fn a_key_repeated_in_one_request_is_stored_once_and_the_repeat_names_the_first() {
    let mut b = memory(BrokerConfig::default());
    b.create_topic("t", Some(2)).unwrap();
    let batch = vec![to(0, "x", "k"), to(1, "new", "n"), to(1, "x again", "k"), msg("keyless", None)];
    let published = b.publish(0, 0, "t", batch).unwrap();
    assert_eq!(places(&published), vec![(0, 0, false), (1, 0, false), (0, 0, true), (0, 1, false)]);
    let mixed = b.publish(0, 1, "t", vec![to(1, "n again", "n"), to(1, "fresh", "f")]).unwrap();
    assert_eq!(places(&mixed), vec![(1, 0, true), (1, 1, false)], "the new one is stored beside the duplicate");
    b.assert_invariants();
}

#[test]
fn bad_keys_are_refused_naming_the_field_and_the_limit() {
    let mut b = memory(BrokerConfig::default());
    let err = b.publish(0, 0, "t", vec![keyed("a", "")]).unwrap_err();
    assert!(matches!(err, BrokerError::InvalidIdempotencyKey { .. }));
    assert!(err.to_string().starts_with("idempotency_key: is empty"), "{err}");
    let long = "k".repeat(257);
    let err = b.publish(0, 0, "t", vec![msg("ok", None), keyed("a", &long)]).unwrap_err().to_string();
    assert_eq!(err, "messages[1].idempotency_key: is 257 bytes; the limit is idempotency_key_bytes_max = 256");
    assert!(b.publish(0, 0, "t", vec![keyed("a", &"k".repeat(256))]).is_ok());
}

#[test]
fn a_full_index_refuses_new_keys_until_old_ones_expire() {
    let mut b = memory(BrokerConfig { dedupe_keys_max: 2, ..Default::default() });
    b.publish(0, 0, "t", vec![keyed("a", "a"), keyed("b", "b")]).unwrap();
    let err = b.publish(0, 10, "t", vec![keyed("c", "c")]).unwrap_err();
    assert!(matches!(err, BrokerError::LimitReached { limit_name: "dedupe_keys_max", limit: 2, .. }), "{err:?}");
    assert_eq!(ends(&b, "t"), vec![2], "the refused request stored nothing");
    assert!(b.publish(0, 10, "t", vec![keyed("a", "a"), msg("keyless", None)]).is_ok(), "no new key, no refusal");
    let later = b.publish(0, 120_000, "t", vec![keyed("c", "c")]).unwrap();
    assert_eq!(places(&later), vec![(0, 3, false)]);
    b.assert_invariants();
}

#[test]
fn all_topics_together_hold_at_most_the_brokers_bound() {
    let config = BrokerConfig { dedupe_keys_max: 3, dedupe_keys_broker_max: 4, ..Default::default() };
    let mut b = memory(config);
    b.publish(0, 0, "a", vec![keyed("1", "x"), keyed("2", "y"), keyed("3", "z")]).unwrap();
    let err = b.publish(0, 10, "b", vec![keyed("1", "p"), keyed("2", "q")]).unwrap_err();
    assert!(matches!(err, BrokerError::LimitReached { limit_name: "dedupe_keys_broker_max", limit: 4, .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("(the other topics 3)") && text.contains("dedupe_keys_broker_max"), "{text}");
    assert_eq!(ends(&b, "b"), vec![0], "the refused request stored nothing");
    b.publish(0, 10, "b", vec![keyed("1", "p")]).unwrap();
    b.assert_invariants();
    // Deleting a topic gives its share back.
    b.delete_topic("a", true).unwrap();
    b.publish(0, 20, "b", vec![keyed("2", "q"), keyed("3", "r")]).unwrap();
    b.assert_invariants();
    // Expiry, on any topic's publish or the retention timer, gives room back too.
    b.enforce_retention(0, 10_000_000).unwrap();
    b.publish(0, 10_000_000, "c", vec![keyed("1", "s"), keyed("2", "t"), keyed("3", "u")]).unwrap();
    b.assert_invariants();
}

#[test]
fn a_leader_refuses_a_publish_whose_keys_and_those_in_flight_would_pass_the_bound() {
    let config = BrokerConfig { dedupe_keys_max: 4, dedupe_keys_broker_max: 6, ..Default::default() };
    let mut b = memory(config);
    b.publish(0, 0, "t", vec![keyed("a", "a"), keyed("b", "b")]).unwrap();
    let two = [keyed("c", "c"), keyed("d", "d")];
    assert_eq!(b.check_publish_room("t", &two, 0).unwrap(), 2, "2 held and 2 new fit in 4, 2 to reserve");
    let err = b.check_publish_room("t", &two, 1).unwrap_err();
    assert!(matches!(err, BrokerError::LimitReached { limit_name: "dedupe_keys_max", limit: 4, .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("holds 2 dedupe entries, publishes waiting to commit may add 1, and this publish up to 2"),
        "{text}"
    );
    assert_eq!(b.check_publish_room("t", &[msg("keyless", None)], 10).unwrap(), 0, "no key, no entry");
    assert!(b.check_publish_room("new", &two, 2).is_ok(), "a topic made by the publish starts empty");
    assert!(b.check_publish_room("new", &two, 3).is_err(), "and publishes in flight may fill it");
    // The broker's bound, when the other topics leave less than the topic's own.
    b.publish(0, 0, "u", vec![keyed("1", "x"), keyed("2", "y"), keyed("3", "z")]).unwrap();
    let err = b.check_publish_room("t", &two, 0).unwrap_err();
    assert!(matches!(err, BrokerError::LimitReached { limit_name: "dedupe_keys_broker_max", limit: 6, .. }), "{err:?}");
    assert_eq!(ends(&b, "t"), vec![2], "a check stores nothing");
}

#[test]
fn a_reopened_broker_keeps_the_newest_entries_of_all_topics_within_the_brokers_bound() {
    let dir = tempfile::tempdir().unwrap();
    let open = |keys_broker_max| {
        let storage = FileStorageConfig { segment_bytes: 4096, ..FileStorageConfig::new(dir.path()) };
        let config = BrokerConfig { dedupe_keys_broker_max: keys_broker_max, ..Default::default() };
        Broker::open(config, Box::new(FileStorage::open(Arc::new(StdFs), storage).unwrap())).unwrap()
    };
    let mut b = open(10);
    // Topic `a` sorts first and its keys are older: they are the ones that go, not `b`'s.
    b.publish(0, 0, "a", vec![keyed("1", "x"), keyed("2", "y"), keyed("3", "z")]).unwrap();
    b.publish(0, 1_000, "b", vec![keyed("1", "p"), keyed("2", "q")]).unwrap();
    b.publish(0, 2_000, "b", vec![keyed("3", "r")]).unwrap();
    b.checkpoint().unwrap();
    drop(b);
    let b = open(4);
    let held: Vec<usize> = ["a", "b"].iter().map(|t| b.topics[*t].dedupe.len()).collect();
    assert_eq!(held, vec![1, 3], "the newest four of all topics");
    assert!(b.topics["b"].dedupe.get("p").is_some() && b.topics["a"].dedupe.get("z").is_some());
    b.assert_invariants();
}

#[test]
fn retention_forgets_the_keys_of_the_records_it_removes() {
    let config = BrokerConfig { partition_retention_ms: Some(60_000), ..Default::default() };
    let mut b = memory(config);
    b.create_topic_with("t", None, Some(600_000)).unwrap();
    b.publish(0, 0, "t", vec![keyed("a", "k")]).unwrap();
    b.enforce_retention(0, 60_001).unwrap();
    let again = b.publish(0, 60_002, "t", vec![keyed("a", "k")]).unwrap();
    assert_eq!(places(&again), vec![(0, 1, false)], "its original is gone, so it is stored");
    b.assert_invariants();
}

#[test]
fn a_refused_append_teaches_the_index_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let faulty = FaultyFs::new(Arc::new(StdFs));
    let mut b = file_broker(Arc::new(faulty.clone()), dir.path());
    b.create_topic("t", Some(2)).unwrap();
    b.publish(0, 0, "t", vec![to(1, "first", "first")]).unwrap();
    assert_eq!(b.sync(0), Vec::new());
    faulty.set_fault(Some(DiskFault::TornWrite));
    let refused = b.publish(0, 0, "t", vec![to(0, "x", "x"), to(1, "y", "y")]).unwrap_err();
    assert!(matches!(refused, BrokerError::Storage(StorageError::Io(_))), "{refused:?}");
    faulty.set_fault(None);
    assert_eq!(b.sync(0), Vec::new());
    b.assert_invariants();
    let retried = b.publish(0, 0, "t", vec![to(0, "x", "x"), to(1, "y", "y")]).unwrap();
    assert_eq!(places(&retried), vec![(0, 0, false), (1, 1, false)], "the retry is stored, not a duplicate");
}

#[test]
fn a_failed_sync_forgets_the_keys_of_the_records_it_cut() {
    let dir = tempfile::tempdir().unwrap();
    let faulty = FaultyFs::new(Arc::new(StdFs));
    let mut b = file_broker(Arc::new(faulty.clone()), dir.path());
    b.publish(0, 0, "t", vec![keyed("kept", "kept")]).unwrap();
    assert_eq!(b.sync(0), Vec::new());
    b.publish(0, 0, "t", vec![keyed("cut", "cut")]).unwrap();
    faulty.set_fault(Some(DiskFault::Eio));
    assert_eq!(b.sync(0).len(), 1);
    faulty.set_fault(None);
    b.assert_invariants();
    let retried = b.publish(0, 0, "t", vec![keyed("cut", "cut"), keyed("kept", "kept")]).unwrap();
    assert_eq!(places(&retried), vec![(0, 1, false), (0, 0, true)]);
}

#[test]
fn the_index_is_rebuilt_from_the_file_log_when_the_broker_opens() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = file_broker(Arc::new(StdFs), dir.path());
    b.create_topic("t", Some(2)).unwrap();
    b.create_topic("plain", None).unwrap();
    b.publish(0, 1_000, "t", vec![to(0, "old", "old")]).unwrap();
    // Enough records after it to span several small segments.
    let filler: Vec<OutgoingMessage> = (0..60).map(|i| to(1, &format!("{i:.<60}"), &format!("f{i}"))).collect();
    b.publish(0, 100_000, "t", filler).unwrap();
    b.publish(0, 130_000, "t", vec![to(0, "new", "new"), msg("keyless", None)]).unwrap();
    b.publish(0, 130_000, "plain", vec![msg("no keys", None)]).unwrap();
    assert_eq!(b.sync(0), Vec::new());
    drop(b);

    let mut b = file_broker(Arc::new(StdFs), dir.path());
    b.assert_invariants();
    let t = &b.topics["t"];
    assert_eq!((t.dedupe.get("old"), t.dedupe.len()), (None, 61), "`old` was out of the window of the newest record");
    assert!(!b.topics["plain"].dedupe.keys_used(), "a topic without keys is not scanned");
    let again = b.publish(0, 131_000, "t", vec![to(0, "new", "new"), to(1, "f7", "f7"), to(0, "old", "old")]).unwrap();
    assert_eq!(places(&again), vec![(0, 1, true), (1, 7, true), (0, 3, false)]);
}

/// `count` messages keyed `{prefix}-{first}` onwards, as the client's `Publisher` numbers them.
fn numbered(prefix: &str, first: u64, count: u64) -> Vec<OutgoingMessage> {
    (first..first + count).map(|n| keyed("v", &format!("{prefix}-{n}"))).collect()
}

#[test]
fn a_publisher_at_full_speed_is_not_refused_and_its_retries_are_still_duplicates() {
    let mut b = memory(BrokerConfig { dedupe_keys_max: 100_000, ..Default::default() });
    b.create_topic("t", None).unwrap();
    // 300 000 messages in 30 s, well within one 120 s window: 3000 batches of 100.
    for batch in 0..3_000u64 {
        let published = b.publish(0, 1_000 + batch * 10, "t", numbered("pub", batch * 100, 100)).unwrap();
        assert!(published.iter().all(|p| !p.duplicate));
    }
    assert_eq!(ends(&b, "t"), vec![300_000]);
    assert_eq!(b.topics["t"].dedupe.len(), 3_000, "one entry per batch");
    let retry = b.publish(0, 31_000, "t", numbered("pub", 700, 100)).unwrap();
    let originals: Vec<(u32, u64, bool)> = (700..800).map(|offset| (0, offset, true)).collect();
    assert_eq!(places(&retry), originals);
    assert_eq!(retry[5].message_id, b.topics["t"].message_id(0, 705));
    assert_eq!(ends(&b, "t"), vec![300_000], "the retry stored nothing");
    b.assert_invariants();
}

#[test]
fn the_bound_counts_entries_and_a_batch_continuing_a_run_adds_none() {
    let mut b = memory(BrokerConfig { dedupe_keys_max: 2, ..Default::default() });
    b.publish(0, 0, "t", numbered("p", 0, 100)).unwrap();
    b.publish(0, 5, "t", numbered("p", 100, 100)).unwrap();
    let err = b.publish(0, 6, "t", numbered("p", 200, 1)).unwrap_err();
    assert!(matches!(err, BrokerError::LimitReached { limit_name: "dedupe_keys_max", limit: 2, .. }), "{err:?}");
    assert!(err.to_string().contains("holds 2 dedupe entries and this publish adds 1"), "{err}");
    // Stamped at the time of the last run (the clock stepped back), it only extends it.
    let extended = b.publish(0, 4, "t", numbered("p", 200, 100)).unwrap();
    assert_eq!(places(&extended)[99], (0, 299, false));
    assert_eq!(b.topics["t"].dedupe.len(), 2);
    b.assert_invariants();
}

#[test]
fn a_refused_publish_does_not_move_the_round_robin() {
    let mut b = memory(BrokerConfig { dedupe_keys_max: 1, ..Default::default() });
    b.create_topic("t", Some(2)).unwrap();
    assert_eq!(places(&b.publish(0, 0, "t", vec![keyed("a", "a")]).unwrap()), vec![(0, 0, false)]);
    assert!(b.publish(0, 0, "t", vec![keyed("b", "b")]).is_err());
    assert_eq!(places(&b.publish(0, 0, "t", vec![msg("keyless", None)]).unwrap()), vec![(1, 0, false)]);
}
