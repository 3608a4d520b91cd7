//! Retry policies and dead letters, driven with explicit times and no runtime.

use std::sync::Arc;

use super::*;
use crate::env::{DiskFault, FaultyFs, StdFs};
use crate::storage::{FileStorage, FileStorageConfig, MemoryStorage};

const SEC: u64 = 1000;

fn broker() -> Broker {
    Broker::new(BrokerConfig::default(), Box::new(MemoryStorage)).unwrap()
}

fn msg(value: &str) -> OutgoingMessage {
    OutgoingMessage { value: value.to_string().into(), ..Default::default() }
}

fn spec(name: &str, topic: &str) -> SubscriptionSpec {
    SubscriptionSpec { name: name.into(), topic: topic.into(), ack_deadline_ms: Some(10 * SEC), ..Default::default() }
}

fn with_retry(min_s: u64, max_s: u64) -> Option<RetrySpec> {
    Some(RetrySpec { minimum_backoff_ms: Some(min_s * SEC), maximum_backoff_ms: Some(max_s * SEC) })
}

fn with_dead_letter(topic: &str, attempts: u32) -> Option<DeadLetterSpec> {
    Some(DeadLetterSpec { topic: topic.into(), max_delivery_attempts: Some(attempts) })
}

/// Pulls everything available now: (value, attempt, ack id).
fn pull(b: &mut Broker, now: u64, subscription: &str) -> Vec<(String, u32, String)> {
    let got = b.pull(now, subscription, 100).unwrap();
    b.assert_invariants();
    got.into_iter()
        .map(|d| (String::from_utf8(d.record.value.to_vec()).unwrap(), d.delivery_attempt, d.ack_id))
        .collect()
}

fn nack_with(b: &mut Broker, now: u64, subscription: &str, id: &str, op: AckOp) -> AckOutcome {
    let outcome = b.acks(now, subscription, op, vec![id.to_string()]).unwrap()[0].outcome;
    b.assert_invariants();
    outcome
}

fn terminal(reason: &str) -> AckOp {
    AckOp::Nack { delay_ms: None, terminal: true, reason: Some(reason.into()) }
}

#[test]
fn expired_lease_waits_a_backoff_that_doubles_with_each_attempt() {
    let mut b = broker();
    b.publish(0, 0, "t", vec![msg("m")]).unwrap();
    b.create_subscription(SubscriptionSpec { retry: with_retry(1, 3), ..spec("s", "t") }).unwrap();
    assert_eq!(pull(&mut b, 0, "s")[0].1, 1);
    // Expires at 10 s; the first backoff is the minimum, 1 s.
    b.handle_timeout(10 * SEC);
    assert_eq!(b.poll_timeout(), Some(11 * SEC));
    assert!(pull(&mut b, 10 * SEC + 999, "s").is_empty(), "offered before its backoff ended");
    b.handle_timeout(11 * SEC);
    assert_eq!(pull(&mut b, 11 * SEC, "s")[0].1, 2);
    // Expires at 21 s, then waits 2 s; then 3 s (the maximum) after the third.
    b.handle_timeout(21 * SEC);
    assert_eq!(b.poll_timeout(), Some(23 * SEC));
    b.handle_timeout(23 * SEC);
    assert_eq!(pull(&mut b, 23 * SEC, "s")[0].1, 3);
    b.handle_timeout(33 * SEC);
    assert_eq!(b.poll_timeout(), Some(36 * SEC), "capped at maximum_backoff");
}

#[test]
fn nack_waits_the_backoff_and_an_explicit_delay_replaces_it() {
    let mut b = broker();
    b.publish(0, 0, "t", vec![msg("m")]).unwrap();
    b.create_subscription(SubscriptionSpec { retry: with_retry(2, 60), ..spec("s", "t") }).unwrap();
    let id = pull(&mut b, 0, "s").remove(0).2;
    assert_eq!(nack_with(&mut b, 100, "s", &id, AckOp::nack()), AckOutcome::Applied);
    assert_eq!(b.poll_timeout(), Some(2100));
    b.handle_timeout(2100);
    let id = pull(&mut b, 2100, "s").remove(0).2;
    let delayed = AckOp::Nack { delay_ms: Some(500), terminal: false, reason: None };
    assert_eq!(nack_with(&mut b, 3000, "s", &id, delayed), AckOutcome::Applied);
    assert_eq!(b.poll_timeout(), Some(3500), "the nack's delay, not the 4 s backoff");
    b.handle_timeout(3500);
    assert_eq!(pull(&mut b, 3500, "s")[0].1, 3);
}

#[test]
fn without_a_retry_policy_a_nack_with_delay_still_waits() {
    let mut b = broker();
    b.publish(0, 0, "t", vec![msg("m")]).unwrap();
    b.create_subscription(spec("s", "t")).unwrap();
    let id = pull(&mut b, 0, "s").remove(0).2;
    nack_with(&mut b, 0, "s", &id, AckOp::nack());
    let id = pull(&mut b, 0, "s").remove(0).2;
    nack_with(&mut b, 0, "s", &id, AckOp::Nack { delay_ms: Some(SEC), terminal: false, reason: None });
    assert!(pull(&mut b, 999, "s").is_empty());
    b.handle_timeout(SEC);
    assert_eq!(pull(&mut b, SEC, "s")[0].1, 3);
}

#[test]
fn a_nack_delay_or_reason_over_its_limit_is_refused_and_changes_nothing() {
    let mut b = broker();
    b.publish(0, 0, "t", vec![msg("m")]).unwrap();
    b.create_subscription(spec("s", "t")).unwrap();
    let id = pull(&mut b, 0, "s").remove(0).2;
    let too_long = AckOp::Nack { delay_ms: Some(601 * SEC), terminal: false, reason: None };
    let err = b.acks(0, "s", too_long, vec![id.clone()]).unwrap_err().to_string();
    assert!(err.contains("nack_delay") && err.contains("600000"), "{err}");
    let wordy = AckOp::Nack { delay_ms: None, terminal: false, reason: Some("x".repeat(1025)) };
    let err = b.acks(0, "s", wordy, vec![id.clone()]).unwrap_err().to_string();
    assert!(err.contains("nack_reason") && err.contains("1024"), "{err}");
    assert_eq!(b.acks(0, "s", AckOp::Ack, vec![id]).unwrap()[0].outcome, AckOutcome::Applied, "the lease is intact");
}

#[test]
fn terminal_nack_without_a_dead_letter_policy_is_refused_and_changes_nothing() {
    let mut b = broker();
    b.publish(0, 0, "t", vec![msg("m")]).unwrap();
    b.create_subscription(spec("s", "t")).unwrap();
    let id = pull(&mut b, 0, "s").remove(0).2;
    let err = b.acks(0, "s", terminal("bad"), vec![id.clone()]).unwrap_err();
    assert!(matches!(err, BrokerError::NoDeadLetterPolicy { .. }), "{err}");
    assert!(err.to_string().contains("dead_letter_policy"), "{err}");
    assert_eq!(b.acks(0, "s", AckOp::Ack, vec![id]).unwrap()[0].outcome, AckOutcome::Applied);
}

#[test]
fn message_is_dead_lettered_after_max_attempts_with_its_payload_and_why() {
    let mut b = broker();
    b.create_topic("dlq", None).unwrap();
    b.create_subscription(spec("dead", "dlq")).unwrap();
    let mut attributes = std::collections::BTreeMap::new();
    attributes.insert("color".to_string(), "red".to_string());
    let poison = OutgoingMessage { key: Some("k".into()), attributes, ..msg("poison") };
    b.publish(0, 0, "t", vec![msg("fine"), poison]).unwrap();
    let dead_letter = with_dead_letter("dlq", 2);
    b.create_subscription(SubscriptionSpec { dead_letter, ..spec("s", "t") }).unwrap();
    let got = pull(&mut b, 0, "s");
    b.acks(0, "s", AckOp::Ack, vec![got[0].2.clone()]).unwrap();
    let reason = AckOp::Nack { delay_ms: None, terminal: false, reason: Some("cannot parse".into()) };
    nack_with(&mut b, 0, "s", &got[1].2, reason.clone());
    let again = pull(&mut b, 0, "s");
    assert_eq!((again[0].0.as_str(), again[0].1), ("poison", 2));
    nack_with(&mut b, 0, "s", &again[0].2, reason);

    assert!(pull(&mut b, 0, "s").is_empty(), "a dead-lettered message is not offered again");
    let stats = b.subscription_stats("s").unwrap();
    assert_eq!((stats.backlog, stats.partitions[0].committed_offset, stats.dead_lettered), (0, 2, 1));
    let copy = b.pull(0, "dead", 10).unwrap().remove(0);
    assert_eq!((copy.record.value.as_ref(), copy.record.key.as_deref()), (&b"poison"[..], Some("k")));
    let attr = |k: &str| copy.record.attributes.get(k).map(String::as_str);
    assert_eq!(attr("color"), Some("red"));
    assert_eq!(attr("dead_letter_reason"), Some("max_delivery_attempts"));
    assert_eq!(attr("dead_letter_detail"), Some("nacked: cannot parse"));
    assert_eq!(attr("dead_letter_source_subscription"), Some("s"));
    assert_eq!(attr("dead_letter_source_topic"), Some("t"));
    assert_eq!(attr("dead_letter_delivery_attempts"), Some("2"));
    assert_eq!(attr("dead_letter_message_id"), Some("2-0-1"));
    assert_eq!((attr("dead_letter_partition"), attr("dead_letter_offset")), (Some("0"), Some("1")));
}

#[test]
fn expiries_count_towards_dead_lettering_and_skip_the_last_backoff() {
    let mut b = broker();
    b.create_topic("dlq", None).unwrap();
    b.publish(0, 0, "t", vec![msg("m")]).unwrap();
    let s = SubscriptionSpec { retry: with_retry(1, 1), dead_letter: with_dead_letter("dlq", 2), ..spec("s", "t") };
    b.create_subscription(s).unwrap();
    pull(&mut b, 0, "s");
    b.handle_timeout(10 * SEC);
    b.handle_timeout(11 * SEC);
    assert_eq!(pull(&mut b, 11 * SEC, "s")[0].1, 2);
    b.handle_timeout(21 * SEC);
    assert_eq!(b.poll_timeout(), None, "dead-lettered at once, no backoff left");
    assert_eq!(b.topic_info("dlq").unwrap().partitions[0].end_offset, 1);
}

#[test]
fn terminal_nack_dead_letters_at_once_with_its_reason() {
    let mut b = broker();
    b.create_topic("dlq", None).unwrap();
    b.publish(0, 0, "t", vec![msg("m")]).unwrap();
    b.create_subscription(SubscriptionSpec { dead_letter: with_dead_letter("dlq", 5), ..spec("s", "t") }).unwrap();
    let id = pull(&mut b, 0, "s").remove(0).2;
    assert_eq!(nack_with(&mut b, 0, "s", &id, terminal("schema v1 is gone")), AckOutcome::Applied);
    b.create_subscription(spec("dead", "dlq")).unwrap();
    let copy = b.pull(0, "dead", 10).unwrap().remove(0);
    let attr = |k: &str| copy.record.attributes.get(k).cloned();
    assert_eq!(attr("dead_letter_reason").as_deref(), Some("terminal_nack"));
    assert_eq!(attr("dead_letter_detail").as_deref(), Some("nacked: schema v1 is gone"));
    assert_eq!(attr("dead_letter_delivery_attempts").as_deref(), Some("1"));
}

#[test]
fn dead_letter_policies_are_checked_when_the_subscription_is_made() {
    let mut b = broker();
    b.create_topic("t", None).unwrap();
    let own = b.create_subscription(SubscriptionSpec { dead_letter: with_dead_letter("t", 5), ..spec("s", "t") });
    assert!(own.unwrap_err().to_string().contains("dead_letter_policy.dead_letter_topic"));
    let missing =
        b.create_subscription(SubscriptionSpec { dead_letter: with_dead_letter("nope", 5), ..spec("s", "t") });
    assert!(matches!(missing, Err(BrokerError::TopicNotFound { .. })));
    b.create_topic("dlq", None).unwrap();
    let many = b.create_subscription(SubscriptionSpec { dead_letter: with_dead_letter("dlq", 101), ..spec("s", "t") });
    assert!(many.unwrap_err().to_string().contains("max_delivery_attempts"));
    let backwards = b.create_subscription(SubscriptionSpec { retry: with_retry(10, 5), ..spec("s", "t") });
    assert!(backwards.unwrap_err().to_string().contains("retry_policy.maximum_backoff"));
    let defaults = SubscriptionSpec {
        retry: Some(RetrySpec::default()),
        dead_letter: Some(DeadLetterSpec { topic: "dlq".into(), max_delivery_attempts: None }),
        ..spec("s", "t")
    };
    let info = b.create_subscription(defaults).unwrap();
    assert_eq!(info.retry, Some(RetryPolicy { minimum_backoff_ms: SEC, maximum_backoff_ms: 60 * SEC }));
    assert_eq!(info.dead_letter.map(|d| d.max_delivery_attempts), Some(5));
}

#[test]
fn a_dead_letter_topic_in_use_is_deleted_only_with_force_which_drops_the_policies() {
    let mut b = broker();
    b.create_topic("t", None).unwrap();
    b.create_topic("dlq", None).unwrap();
    b.create_subscription(SubscriptionSpec { dead_letter: with_dead_letter("dlq", 5), ..spec("s", "t") }).unwrap();
    let err = b.delete_topic("dlq", false).unwrap_err();
    assert!(matches!(err, BrokerError::DeadLetterTopicInUse { .. }), "{err}");
    b.delete_topic("dlq", true).unwrap();
    assert_eq!(b.subscription_info("s").unwrap().dead_letter, None);
}

#[test]
fn a_seek_ends_backoffs_and_the_messages_come_back_at_once() {
    let mut b = broker();
    b.publish(0, 0, "t", vec![msg("m")]).unwrap();
    b.create_subscription(SubscriptionSpec { retry: with_retry(60, 60), ..spec("s", "t") }).unwrap();
    let id = pull(&mut b, 0, "s").remove(0).2;
    nack_with(&mut b, 0, "s", &id, AckOp::nack());
    assert_eq!(b.poll_timeout(), Some(60 * SEC));
    b.seek(0, "s", SeekTarget::Earliest).unwrap();
    b.assert_invariants();
    assert_eq!(b.poll_timeout(), None, "the backoff ended with the seek");
    assert_eq!(pull(&mut b, 0, "s").len(), 1);
}

/// Under acknowledgement after fsync, a dead-lettered message counts as done only once its
/// copy is synced; a failed sync brings it back, so it is never in neither place.
#[test]
fn a_dead_letter_copy_lost_to_a_failed_sync_returns_the_message_to_the_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let faulty = FaultyFs::new(Arc::new(StdFs));
    let storage = FileStorage::open(Arc::new(faulty.clone()), FileStorageConfig::new(dir.path())).unwrap();
    let mut b = Broker::open(BrokerConfig::default(), Box::new(storage)).unwrap();
    b.create_topic("dlq", None).unwrap();
    b.publish(0, 0, "t", vec![msg("m")]).unwrap();
    assert!(b.sync(0).is_empty());
    b.create_subscription(SubscriptionSpec { dead_letter: with_dead_letter("dlq", 5), ..spec("s", "t") }).unwrap();
    let id = pull(&mut b, 0, "s").remove(0).2;
    nack_with(&mut b, 0, "s", &id, terminal("first"));
    let stats = b.subscription_stats("s").unwrap();
    assert_eq!((stats.partitions[0].committed_offset, stats.dead_lettered), (0, 1), "in transit, not yet done");
    assert!(pull(&mut b, 0, "s").is_empty(), "in transit, not offered");

    faulty.set_fault(Some(DiskFault::Eio));
    let (failures, metadata) = b.sync_all(0);
    assert_eq!(failures.len(), 1);
    assert!(metadata.is_some(), "the subscription's journal entry cannot be synced either");
    faulty.set_fault(None);
    b.assert_invariants();
    let back = pull(&mut b, 0, "s");
    assert_eq!((back.len(), back[0].1), (1, 2), "the message came back");
    assert_eq!(b.subscription_stats("s").unwrap().dead_lettered, 0);

    nack_with(&mut b, 0, "s", &back[0].2, terminal("second"));
    assert!(b.sync(0).is_empty());
    b.assert_invariants();
    let stats = b.subscription_stats("s").unwrap();
    assert_eq!((stats.partitions[0].committed_offset, stats.dead_lettered), (1, 1));
    b.create_subscription(spec("dead", "dlq")).unwrap();
    let copies = b.pull(0, "dead", 10).unwrap();
    assert_eq!(copies.len(), 1, "the lost copy is not visible");
    assert_eq!(copies[0].record.attributes["dead_letter_detail"], "nacked: second");
}

#[test]
fn policies_and_the_dead_letter_count_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        let storage = FileStorage::open(Arc::new(StdFs), FileStorageConfig::new(dir.path())).unwrap();
        Broker::open(BrokerConfig::default(), Box::new(storage)).unwrap()
    };
    let mut b = open();
    b.create_topic("dlq", None).unwrap();
    b.publish(0, 0, "t", vec![msg("m")]).unwrap();
    b.sync(0);
    let s = SubscriptionSpec { retry: with_retry(2, 8), dead_letter: with_dead_letter("dlq", 3), ..spec("s", "t") };
    let before = b.create_subscription(s).unwrap();
    let id = pull(&mut b, 0, "s").remove(0).2;
    nack_with(&mut b, 0, "s", &id, terminal("x"));
    b.sync(0);
    b.checkpoint().unwrap();
    drop(b);
    let b = open();
    assert_eq!(b.subscription_info("s").unwrap(), before);
    let stats = b.subscription_stats("s").unwrap();
    assert_eq!((stats.partitions[0].committed_offset, stats.dead_lettered), (1, 1));
}

/// `s` on `t` dead-letters into `dlq`, read by `dead`; `t` holds `count` messages.
fn dead_letter_setup(b: &mut Broker, count: usize) {
    b.create_topic("dlq", None).unwrap();
    let messages = (0..count).map(|i| msg(&format!("m{i}"))).collect();
    b.publish(0, 0, "t", messages).unwrap();
    b.create_subscription(SubscriptionSpec { dead_letter: with_dead_letter("dlq", 5), ..spec("s", "t") }).unwrap();
    b.create_subscription(spec("dead", "dlq")).unwrap();
}

/// Pulls everything from `s`, dead-letters the values in `dead`, acks the rest.
fn settle(b: &mut Broker, dead: &[&str]) {
    for (value, _, id) in pull(b, 0, "s") {
        let op = if dead.contains(&value.as_str()) { terminal("bad") } else { AckOp::Ack };
        assert_eq!(nack_with(b, 0, "s", &id, op), AckOutcome::Applied);
    }
}

#[test]
fn redrive_moves_dead_letters_back_with_attempts_starting_over() {
    let mut b = broker();
    dead_letter_setup(&mut b, 3);
    b.create_subscription(spec("other", "t")).unwrap();
    settle(&mut b, &["m1"]);
    assert_eq!(b.subscription_stats("s").unwrap().partitions[0].committed_offset, 3);

    let moved = b.redrive_dead_letters(0, "dead", 10).unwrap();
    assert_eq!(moved.len(), 1);
    assert_eq!((moved[0].source_subscription.as_str(), moved[0].offset, &moved[0].outcome), ("s", 1, &Ok(())));
    b.assert_invariants();
    let stats = b.subscription_stats("s").unwrap();
    assert_eq!((stats.partitions[0].committed_offset, stats.backlog), (1, 1), "the floor moved back to it");
    assert_eq!(b.subscription_stats("dead").unwrap().backlog, 0, "the copy was acked");
    let again = pull(&mut b, 0, "s");
    assert_eq!((again[0].0.as_str(), again[0].1), ("m1", 1));
    b.acks(0, "s", AckOp::Ack, vec![again[0].2.clone()]).unwrap();
    assert_eq!(b.subscription_stats("s").unwrap().partitions[0].committed_offset, 3);
    assert_eq!(b.subscription_stats("other").unwrap().backlog, 3, "other subscriptions see nothing new");
    assert!(b.redrive_dead_letters(0, "dead", 10).unwrap().is_empty());
}

#[test]
fn redrive_leaves_copies_it_cannot_move_and_says_why() {
    let mut b = broker();
    dead_letter_setup(&mut b, 1);
    settle(&mut b, &["m0"]);
    b.publish(0, 0, "dlq", vec![msg("not a copy")]).unwrap();
    b.delete_subscription("s").unwrap();
    let results = b.redrive_dead_letters(0, "dead", 10).unwrap();
    b.assert_invariants();
    let reasons: Vec<String> = results.iter().map(|r| r.outcome.clone().unwrap_err()).collect();
    assert!(reasons[0].contains("subscription `s` no longer exists"), "{reasons:?}");
    assert!(reasons[1].contains("not a dead-letter copy"), "{reasons:?}");
    assert_eq!(b.subscription_stats("dead").unwrap().backlog, 2, "both copies stay");
    b.redrive_dead_letters(0, "dead", 10).unwrap();
    let copies = pull(&mut b, 0, "dead");
    assert_eq!(copies.iter().map(|c| c.1).collect::<Vec<_>>(), [1, 1], "offered at once, no attempt counted");
}

#[test]
fn redrive_refuses_a_copy_naming_a_subscription_that_does_not_dead_letter_there() {
    let mut b = broker();
    dead_letter_setup(&mut b, 1);
    b.create_subscription(spec("bystander", "t")).unwrap();
    settle(&mut b, &[]);
    let bystander = pull(&mut b, 0, "bystander");
    b.acks(0, "bystander", AckOp::Ack, vec![bystander[0].2.clone()]).unwrap();
    // A hand-made "copy" that would rewind `bystander` to offset 0.
    let forged = [
        ("dead_letter_source_subscription", "bystander"),
        ("dead_letter_source_topic", "t"),
        ("dead_letter_message_id", "2-0-0"),
        ("dead_letter_partition", "0"),
        ("dead_letter_offset", "0"),
    ];
    let attributes = forged.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    b.publish(0, 0, "dlq", vec![OutgoingMessage { attributes, ..msg("forged") }]).unwrap();
    let results = b.redrive_dead_letters(0, "dead", 10).unwrap();
    let error = results[0].outcome.as_ref().unwrap_err();
    assert!(error.contains("`bystander` does not dead-letter into `dlq`"), "{error}");
    assert_eq!(b.subscription_stats("bystander").unwrap().partitions[0].committed_offset, 1, "not rewound");
}

#[test]
fn redrive_refuses_to_rewind_past_its_bound() {
    let config = BrokerConfig { redrive_rewind_offsets_max: 2, ..Default::default() };
    let mut b = Broker::new(config, Box::new(MemoryStorage)).unwrap();
    dead_letter_setup(&mut b, 5);
    settle(&mut b, &["m0", "m3"]);
    let results = b.redrive_dead_letters(0, "dead", 10).unwrap();
    assert!(results[0].outcome.as_ref().unwrap_err().contains("redrive_rewind_offsets_max = 2"), "{results:?}");
    assert_eq!((results[1].offset, &results[1].outcome), (3, &Ok(())));
    b.assert_invariants();
    assert_eq!(b.subscription_stats("s").unwrap().partitions[0].committed_offset, 3);
}

#[test]
fn list_pending_says_where_each_unfinished_message_is_and_pages() {
    let mut b = broker();
    b.publish(0, 0, "t", (0..4).map(|i| msg(&format!("m{i}"))).collect()).unwrap();
    b.create_subscription(SubscriptionSpec { retry: with_retry(5, 5), ..spec("s", "t") }).unwrap();
    let got = pull(&mut b, 0, "s");
    nack_with(&mut b, 1000, "s", &got[1].2, AckOp::nack());
    nack_with(&mut b, 1000, "s", &got[2].2, AckOp::Nack { delay_ms: Some(0), terminal: false, reason: None });
    b.acks(1000, "s", AckOp::Ack, vec![got[3].2.clone()]).unwrap();

    let (page, next) = b.list_pending(2000, "s", None, 2).unwrap();
    let states: Vec<(u64, PendingState)> = page.iter().map(|m| (m.offset, m.state)).collect();
    assert_eq!(
        states,
        [
            (0, PendingState::Leased { stream: None, expires_in_ms: 8000 }),
            (1, PendingState::Backoff { ready_in_ms: 4000 }),
        ]
    );
    assert_eq!((page[0].message_id.as_str(), page[0].delivery_attempts), ("1-0-0", 1));
    assert_eq!(next, Some((0, 1)));
    let (rest, next) = b.list_pending(2000, "s", next, 2).unwrap();
    assert_eq!(rest.iter().map(|m| (m.offset, m.state)).collect::<Vec<_>>(), [(2, PendingState::Ready)]);
    assert_eq!(next, None, "acked offset 3 is not pending");
}
