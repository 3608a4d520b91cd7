//! Ordering keys, driven with explicit times and no runtime.

use std::sync::Arc;

use super::*;
use crate::env::StdFs;
use crate::storage::{FileStorage, FileStorageConfig, MemoryStorage};

const SEC: u64 = 1000;

fn keyed(key: &str, value: &str) -> OutgoingMessage {
    OutgoingMessage { key: Some(key.into()), value: value.to_string().into(), ..Default::default() }
}

fn keyless(value: &str) -> OutgoingMessage {
    OutgoingMessage { value: value.to_string().into(), ..Default::default() }
}

fn ordered(name: &str) -> SubscriptionSpec {
    SubscriptionSpec {
        name: name.into(),
        topic: "t".into(),
        ack_deadline_ms: Some(10 * SEC),
        ordered: true,
        ..Default::default()
    }
}

/// Pulls everything available: (value, ack id).
fn pull(b: &mut Broker, now: u64, sub: &str) -> Vec<(String, String)> {
    let got = b.pull(now, sub, 100).unwrap();
    b.assert_invariants();
    got.into_iter().map(|d| (String::from_utf8(d.record.value.to_vec()).unwrap(), d.ack_id)).collect()
}

/// Everything delivered on streams since the last look: (value, ack id).
fn streamed(b: &mut Broker) -> Vec<(String, String)> {
    let mut got = Vec::new();
    while let Some(output) = b.poll_output() {
        if let Output::Deliver { deliveries, .. } = output {
            let values =
                deliveries.into_iter().map(|d| (String::from_utf8(d.record.value.to_vec()).unwrap(), d.ack_id));
            got.extend(values);
        }
    }
    got
}

fn values(got: &[(String, String)]) -> Vec<&str> {
    got.iter().map(|(v, _)| v.as_str()).collect()
}

fn answer(b: &mut Broker, now: u64, op: AckOp, id: &str) {
    assert_eq!(b.acks(now, "s", op, vec![id.to_string()]).unwrap()[0].outcome, AckOutcome::Applied);
    b.assert_invariants();
}

fn broker_with(messages: Vec<OutgoingMessage>) -> Broker {
    let mut b = Broker::new(BrokerConfig::default(), Box::new(MemoryStorage)).unwrap();
    b.publish(0, 0, "t", messages).unwrap();
    b
}

#[test]
fn one_message_per_key_at_a_time_in_publish_order() {
    let mut b = broker_with(vec![keyed("a", "a1"), keyed("a", "a2"), keyed("b", "b1"), keyless("x"), keyed("a", "a3")]);
    b.create_subscription(ordered("s")).unwrap();
    let first = pull(&mut b, 0, "s");
    assert_eq!(values(&first), ["a1", "b1", "x"], "a2 and a3 wait behind a1");
    answer(&mut b, 0, AckOp::Ack, &first[0].1);
    let second = pull(&mut b, 0, "s");
    assert_eq!(values(&second), ["a2"]);
    answer(&mut b, 0, AckOp::Ack, &second[0].1);
    assert_eq!(values(&pull(&mut b, 0, "s")), ["a3"]);
}

#[test]
fn a_nacked_or_expired_message_holds_back_only_its_own_key() {
    let retry = Some(RetrySpec { minimum_backoff_ms: Some(2 * SEC), maximum_backoff_ms: Some(2 * SEC) });
    let mut b = broker_with(vec![keyed("a", "a1"), keyed("a", "a2"), keyed("b", "b1"), keyed("b", "b2")]);
    b.create_subscription(SubscriptionSpec { retry, ..ordered("s") }).unwrap();
    let first = pull(&mut b, 0, "s");
    assert_eq!(values(&first), ["a1", "b1"]);
    answer(&mut b, 0, AckOp::nack(), &first[0].1);
    answer(&mut b, 0, AckOp::Ack, &first[1].1);
    assert_eq!(values(&pull(&mut b, 0, "s")), ["b2"], "a1 waits out its backoff and a2 waits for a1");
    let (page, _) = b.list_pending(0, "s", None, 10).unwrap();
    let states: Vec<(u64, PendingState)> = page.iter().map(|m| (m.offset, m.state)).collect();
    assert_eq!(states[0], (0, PendingState::Backoff { ready_in_ms: 2 * SEC }));
    assert_eq!(states[1], (1, PendingState::KeyBlocked));
    // An expiry holds the key the same way.
    b.handle_timeout(2 * SEC);
    let again = pull(&mut b, 2 * SEC, "s");
    assert_eq!(values(&again), ["a1"]);
    b.handle_timeout(12 * SEC);
    b.handle_timeout(14 * SEC);
    let third = pull(&mut b, 14 * SEC, "s");
    assert_eq!(values(&third), ["a1", "b2"], "a2 still waits (a1 was never acked); b2 expired on its own");
    answer(&mut b, 14 * SEC, AckOp::Ack, &third[0].1);
    assert_eq!(values(&pull(&mut b, 14 * SEC, "s")), ["a2"]);
}

#[test]
fn a_dead_lettered_message_lets_its_key_go_on() {
    let mut b = broker_with(vec![keyed("a", "a1"), keyed("a", "a2")]);
    b.create_topic("dlq", None).unwrap();
    let dead_letter = Some(DeadLetterSpec { topic: "dlq".into(), max_delivery_attempts: Some(5) });
    b.create_subscription(SubscriptionSpec { dead_letter, ..ordered("s") }).unwrap();
    let first = pull(&mut b, 0, "s");
    assert_eq!(values(&first), ["a1"]);
    answer(&mut b, 0, AckOp::Nack { delay_ms: None, terminal: true, reason: None }, &first[0].1);
    assert_eq!(values(&pull(&mut b, 0, "s")), ["a2"]);
}

#[test]
fn without_ordering_every_key_flows_at_once() {
    let mut b = broker_with(vec![keyed("a", "a1"), keyed("a", "a2")]);
    b.create_subscription(SubscriptionSpec { ordered: false, ..ordered("s") }).unwrap();
    assert_eq!(values(&pull(&mut b, 0, "s")), ["a1", "a2"]);
}

#[test]
fn past_the_parking_bound_the_partition_waits() {
    let config = BrokerConfig { ordered_parked_messages_max: 1, ..Default::default() };
    let mut b = Broker::new(config, Box::new(MemoryStorage)).unwrap();
    b.publish(0, 0, "t", vec![keyed("a", "a1"), keyed("a", "a2"), keyed("a", "a3"), keyed("b", "b1")]).unwrap();
    b.create_subscription(ordered("s")).unwrap();
    let first = pull(&mut b, 0, "s");
    assert_eq!(values(&first), ["a1"], "a2 parked; a3 cannot be: b1 waits behind it");
    answer(&mut b, 0, AckOp::Ack, &first[0].1);
    assert_eq!(values(&pull(&mut b, 0, "s")), ["a2", "b1"], "a3 parked now, b1 goes");
}

#[test]
fn after_a_restart_the_order_holds_without_saved_state() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        let storage = FileStorage::open(Arc::new(StdFs), FileStorageConfig::new(dir.path())).unwrap();
        Broker::open(BrokerConfig::default(), Box::new(storage)).unwrap()
    };
    let mut b = open();
    b.publish(0, 0, "t", vec![keyed("a", "a1"), keyed("a", "a2"), keyed("b", "b1"), keyed("a", "a3")]).unwrap();
    b.sync(0);
    b.create_subscription(ordered("s")).unwrap();
    let first = pull(&mut b, 0, "s");
    answer(&mut b, 0, AckOp::Ack, &first[1].1);
    b.checkpoint().unwrap();
    drop(b);
    let mut b = open();
    assert!(b.subscription_info("s").unwrap().ordered);
    let first = pull(&mut b, 0, "s");
    assert_eq!(values(&first), ["a1"], "a2 and a3 wait again behind a1; b1 stays acked");
    answer(&mut b, 0, AckOp::Ack, &first[0].1);
    assert_eq!(values(&pull(&mut b, 0, "s")), ["a2"]);
}

fn ordered_with_dlq(config: BrokerConfig) -> Broker {
    let mut b = Broker::new(config, Box::new(MemoryStorage)).unwrap();
    b.create_topic("t", None).unwrap();
    b.create_topic("dlq", None).unwrap();
    let dead_letter = Some(DeadLetterSpec { topic: "dlq".into(), max_delivery_attempts: Some(5) });
    b.create_subscription(SubscriptionSpec { dead_letter, ..ordered("s") }).unwrap();
    b.create_subscription(SubscriptionSpec { name: "dead".into(), topic: "dlq".into(), ..Default::default() }).unwrap();
    b
}

/// A review found this: with the parking bound reached, a redriven message pending below
/// its key's delivered head stopped the partition for good.
#[test]
fn a_redriven_message_at_the_parking_bound_does_not_stall_its_partition() {
    let mut b = ordered_with_dlq(BrokerConfig { ordered_parked_messages_max: 1, ..Default::default() });
    b.publish(0, 0, "t", vec![keyed("a", "a0"), keyed("a", "a1"), keyed("a", "a2")]).unwrap();
    let first = pull(&mut b, 0, "s");
    assert_eq!(values(&first), ["a0"]);
    answer(&mut b, 0, AckOp::Nack { delay_ms: None, terminal: true, reason: None }, &first[0].1);
    let second = pull(&mut b, 0, "s");
    assert_eq!(values(&second), ["a1"]);
    assert!(b.redrive_dead_letters(0, "dead", 10).unwrap()[0].outcome.is_ok());
    answer(&mut b, 0, AckOp::nack(), &second[0].1);
    assert_eq!(values(&pull(&mut b, 0, "s")), ["a1"], "the head goes on; the redriven a0 waits behind it");
}

/// A review found this: under fsync=always a dead-lettered head finished at the sync, and
/// the next message of its key was not dispatched.
#[test]
fn the_sync_that_finishes_a_dead_letter_delivers_the_next_message_of_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FileStorage::open(Arc::new(StdFs), FileStorageConfig::new(dir.path())).unwrap();
    let mut b = Broker::open(BrokerConfig::default(), Box::new(storage)).unwrap();
    b.create_topic("dlq", None).unwrap();
    b.publish(0, 0, "t", vec![keyed("a", "a1"), keyed("a", "a2")]).unwrap();
    assert!(b.sync(0).is_empty());
    let dead_letter = Some(DeadLetterSpec { topic: "dlq".into(), max_delivery_attempts: Some(5) });
    b.create_subscription(SubscriptionSpec { dead_letter, ..ordered("s") }).unwrap();
    let flow = Flow { max_outstanding_messages: 10, max_outstanding_bytes: 0 };
    let (stream, _) = b.open_stream(0, StreamTarget::Subscription("s".into()), flow).unwrap();
    let first = streamed(&mut b);
    assert_eq!(values(&first), ["a1"]);
    let terminal = AckOp::Nack { delay_ms: None, terminal: true, reason: None };
    b.stream_acks(0, stream, vec![(terminal, vec![first[0].1.clone()])]).unwrap();
    assert!(streamed(&mut b).is_empty(), "a1's copy is not synced yet: a2 waits");
    assert!(b.sync(0).is_empty());
    assert_eq!(values(&streamed(&mut b)), ["a2"]);
    b.assert_invariants();
}

/// A review found this: time retention that removed a key's head did not dispatch the
/// key's next message.
#[test]
fn time_retention_that_removes_a_head_delivers_the_next_message_of_its_key() {
    let config = BrokerConfig { partition_retention_ms: Some(10 * SEC), ..Default::default() };
    let mut b = Broker::new(config, Box::new(MemoryStorage)).unwrap();
    b.publish(0, 0, "t", vec![keyed("a", "a0")]).unwrap();
    b.publish(0, 5 * SEC, "t", vec![keyed("a", "a1")]).unwrap();
    b.create_subscription(ordered("s")).unwrap();
    let flow = Flow { max_outstanding_messages: 10, max_outstanding_bytes: 0 };
    b.open_stream(0, StreamTarget::Subscription("s".into()), flow).unwrap();
    assert_eq!(values(&streamed(&mut b)), ["a0"]);
    b.enforce_retention(SEC, 12 * SEC).unwrap();
    assert_eq!(values(&streamed(&mut b)), ["a1"], "a0 is gone, so a1 goes");
    b.assert_invariants();
}
