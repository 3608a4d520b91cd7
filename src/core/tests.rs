//! The core driven with explicit times and no runtime.

use super::*;
use crate::storage::MemoryStorage;

const SEC: u64 = 1000;

fn broker() -> Broker {
    broker_with(BrokerConfig::default())
}

fn broker_with(config: BrokerConfig) -> Broker {
    Broker::new(config, Box::new(MemoryStorage)).unwrap()
}

fn msg(value: &str) -> OutgoingMessage {
    OutgoingMessage { value: value.to_string().into(), ..Default::default() }
}

fn keyed(key: &str, value: &str) -> OutgoingMessage {
    OutgoingMessage { key: Some(key.to_string()), ..msg(value) }
}

fn sub(b: &mut Broker, name: &str, topic: &str) {
    let spec = SubscriptionSpec { name: name.into(), topic: topic.into(), ..Default::default() };
    b.create_subscription(spec).unwrap();
}

fn open(b: &mut Broker, now: u64, name: &str, max: u32) -> StreamId {
    let flow = Flow { max_outstanding_messages: max, max_outstanding_bytes: 0 };
    b.open_stream(now, StreamTarget::Subscription(name.into()), flow).unwrap().0
}

/// Every delivery in the outputs, as (stream, value, attempt, ack id).
fn drain(b: &mut Broker) -> Vec<(StreamId, String, u32, String)> {
    let mut out = Vec::new();
    while let Some(output) = b.poll_output() {
        if let Output::Deliver { stream, deliveries } = output {
            for d in deliveries {
                let value = String::from_utf8(d.record.value.to_vec()).unwrap();
                out.push((stream, value, d.delivery_attempt, d.ack_id));
            }
        }
    }
    b.assert_invariants();
    out
}

fn ack(b: &mut Broker, now: u64, stream: StreamId, id: &str) -> AckOutcome {
    b.stream_acks(now, stream, vec![(AckOp::Ack, vec![id.to_string()])]).unwrap()[0].outcome
}

#[test]
fn published_message_is_delivered_and_ack_moves_the_floor() {
    let mut b = broker();
    let published = b.publish(0, 1_700_000_000_000, "events", vec![msg("hello")]).unwrap();
    assert_eq!(published, vec![Published { message_id: "1-0-0".into(), partition: 0, offset: 0, duplicate: false }]);
    sub(&mut b, "s", "events");
    let s = open(&mut b, 0, "s", 0);
    let got = drain(&mut b);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].1.as_str(), got[0].2), ("hello", 1));
    assert_eq!(ack(&mut b, 10, s, &got[0].3), AckOutcome::Applied);
    let stats = b.subscription_stats("s").unwrap();
    assert_eq!((stats.backlog, stats.outstanding, stats.partitions[0].committed_offset), (0, 0, 1));
    assert_eq!(ack(&mut b, 20, s, &got[0].3), AckOutcome::Expired, "a second ack is not applied twice");
}

#[test]
fn expired_lease_is_redelivered_with_next_attempt() {
    let mut b = broker();
    b.publish(0, 0, "t", vec![msg("a")]).unwrap();
    sub(&mut b, "s", "t");
    let s = open(&mut b, 0, "s", 0);
    let first = drain(&mut b);
    assert_eq!(b.poll_timeout(), Some(30 * SEC));
    b.handle_timeout(30 * SEC - 1);
    assert!(drain(&mut b).is_empty(), "nothing expires before the deadline");
    b.handle_timeout(30 * SEC);
    let second = drain(&mut b);
    assert_eq!((second[0].1.as_str(), second[0].2), ("a", 2));
    assert_eq!(ack(&mut b, 30 * SEC, s, &first[0].3), AckOutcome::Expired);
    assert_eq!(ack(&mut b, 30 * SEC, s, &second[0].3), AckOutcome::Applied);
}

#[test]
fn ack_at_the_deadline_is_expired_even_before_the_timer_runs() {
    let mut b = broker();
    b.publish(0, 0, "t", vec![msg("a")]).unwrap();
    sub(&mut b, "s", "t");
    let s = open(&mut b, 0, "s", 0);
    let got = drain(&mut b);
    assert_eq!(ack(&mut b, 30 * SEC, s, &got[0].3), AckOutcome::Expired);
}

#[test]
fn nack_redelivers_at_once_with_next_attempt() {
    let mut b = broker();
    b.publish(0, 0, "t", vec![msg("a")]).unwrap();
    sub(&mut b, "s", "t");
    let s = open(&mut b, 0, "s", 0);
    let got = drain(&mut b);
    let replies = b.stream_acks(5, s, vec![(AckOp::nack(), vec![got[0].3.clone()])]).unwrap();
    assert_eq!(replies[0].outcome, AckOutcome::Applied);
    let again = drain(&mut b);
    assert_eq!((again[0].1.as_str(), again[0].2), ("a", 2));
}

#[test]
fn modify_deadline_extends_and_zero_releases() {
    let mut b = broker();
    b.publish(0, 0, "t", vec![msg("a")]).unwrap();
    sub(&mut b, "s", "t");
    let s = open(&mut b, 0, "s", 0);
    let got = drain(&mut b);
    let extend = AckOp::ModifyDeadline { deadline_ms: 60 * SEC };
    assert_eq!(
        b.stream_acks(20 * SEC, s, vec![(extend, vec![got[0].3.clone()])]).unwrap()[0].outcome,
        AckOutcome::Applied
    );
    assert_eq!(b.poll_timeout(), Some(80 * SEC));
    b.handle_timeout(79 * SEC);
    assert!(drain(&mut b).is_empty());
    let release = AckOp::ModifyDeadline { deadline_ms: 0 };
    assert_eq!(
        b.stream_acks(79 * SEC, s, vec![(release, vec![got[0].3.clone()])]).unwrap()[0].outcome,
        AckOutcome::Applied
    );
    assert_eq!(drain(&mut b)[0].2, 2);
}

#[test]
fn members_of_one_subscription_share_without_overlap() {
    let mut b = broker();
    sub_on_new_topic(&mut b, 2);
    let s1 = open(&mut b, 0, "s", 0);
    let s2 = open(&mut b, 0, "s", 0);
    let values: Vec<OutgoingMessage> = (0..10).map(|i| msg(&i.to_string())).collect();
    b.publish(0, 0, "t", values).unwrap();
    let got = drain(&mut b);
    assert_eq!(got.len(), 10);
    let mut seen: Vec<&str> = got.iter().map(|g| g.1.as_str()).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 10, "no message went to both members");
    let to = |s| got.iter().filter(|g| g.0 == s).count();
    assert_eq!((to(s1), to(s2)), (5, 5));
}

fn sub_on_new_topic(b: &mut Broker, partitions: u32) {
    b.create_topic("t", Some(partitions)).unwrap();
    sub(b, "s", "t");
}

#[test]
fn closing_a_member_hands_its_leases_to_the_others() {
    let mut b = broker();
    sub_on_new_topic(&mut b, 1);
    let s1 = open(&mut b, 0, "s", 0);
    b.publish(0, 0, "t", vec![msg("a")]).unwrap();
    assert_eq!(drain(&mut b)[0].0, s1);
    let s2 = open(&mut b, 1, "s", 0);
    b.close_stream(2, s1);
    let got = drain(&mut b);
    assert_eq!((got[0].0, got[0].2), (s2, 2));
}

#[test]
fn flow_control_stops_at_the_limit_and_resumes_on_ack() {
    let mut b = broker();
    sub_on_new_topic(&mut b, 1);
    let s = open(&mut b, 0, "s", 2);
    b.publish(0, 0, "t", (0..5).map(|i| msg(&i.to_string())).collect()).unwrap();
    let got = drain(&mut b);
    assert_eq!(got.iter().map(|g| g.1.as_str()).collect::<Vec<_>>(), ["0", "1"]);
    ack(&mut b, 1, s, &got[0].3);
    let more = drain(&mut b);
    assert_eq!(more.iter().map(|g| g.1.as_str()).collect::<Vec<_>>(), ["2"]);
}

#[test]
fn flow_control_by_bytes_lets_one_message_through() {
    let mut b = broker();
    sub_on_new_topic(&mut b, 1);
    let flow = Flow { max_outstanding_messages: 0, max_outstanding_bytes: 3 };
    b.open_stream(0, StreamTarget::Subscription("s".into()), flow).unwrap();
    b.publish(0, 0, "t", vec![msg("aaaa"), msg("b")]).unwrap();
    assert_eq!(drain(&mut b).len(), 1, "one oversized message, then the stream is full");
}

#[test]
fn keyed_messages_keep_their_partition_and_order() {
    let mut b = broker();
    b.create_topic("t", Some(4)).unwrap();
    let batch = (0..20).map(|i| keyed("user-7", &i.to_string())).collect();
    let published = b.publish(0, 0, "t", batch).unwrap();
    let partition = partition_for_key(b"user-7", 4);
    assert!(published.iter().all(|p| p.partition == partition));
    assert!(published.windows(2).all(|w| w[1].offset == w[0].offset + 1));
}

#[test]
fn keyless_messages_go_round_robin_and_explicit_partitions_are_honoured() {
    let mut b = broker();
    b.create_topic("t", Some(3)).unwrap();
    let published = b.publish(0, 0, "t", (0..6).map(|i| msg(&i.to_string())).collect()).unwrap();
    assert_eq!(published.iter().map(|p| p.partition).collect::<Vec<_>>(), [0, 1, 2, 0, 1, 2]);
    let explicit = OutgoingMessage { partition: Some(2), key: Some("k".into()), ..msg("x") };
    assert_eq!(
        b.publish(0, 0, "t", vec![explicit]).unwrap()[0],
        Published { message_id: "1-2-2".into(), partition: 2, offset: 2, duplicate: false }
    );
}

#[test]
fn refused_publish_stores_nothing() {
    let mut b = broker_with(BrokerConfig { max_message_bytes: 4, ..Default::default() });
    b.create_topic("t", Some(2)).unwrap();
    let err = b.publish(0, 0, "t", vec![msg("ok"), msg("too big")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "messages[1].value: message is 7 bytes (value, key and attributes); the limit is max_message_bytes = 4"
    );
    let bad_partition = OutgoingMessage { partition: Some(2), ..msg("x") };
    let err = b.publish(0, 0, "t", vec![msg("ok"), bad_partition]).unwrap_err();
    assert!(err.to_string().contains("partition 2 does not exist; topic `t` has partitions 0 to 1"), "{err}");
    assert!(b.topic_info("t").unwrap().partitions.iter().all(|p| p.end_offset == 0));
    assert!(b.publish(0, 0, "bad name", vec![msg("x")]).is_err());
    assert_eq!(b.list_topics(None, 10).0.len(), 1, "no topic was made by a refused publish");
}

#[test]
fn auto_create_can_be_turned_off() {
    let mut b = broker_with(BrokerConfig { auto_create_topics: false, ..Default::default() });
    let err = b.publish(0, 0, "t", vec![msg("x")]).unwrap_err();
    assert_eq!(err, BrokerError::TopicNotFound { topic: "t".into() });
}

#[test]
fn ack_ids_are_classified_invalid_or_expired() {
    let mut b = broker();
    sub_on_new_topic(&mut b, 1);
    sub(&mut b, "other", "t");
    let s = open(&mut b, 0, "s", 0);
    let o = open(&mut b, 0, "other", 0);
    b.publish(0, 0, "t", vec![msg("a")]).unwrap();
    let got = drain(&mut b);
    let mine = got.iter().find(|g| g.0 == s).unwrap().3.clone();
    let foreign = got.iter().find(|g| g.0 == o).unwrap().3.clone();
    assert_eq!(ack(&mut b, 1, s, "garbage"), AckOutcome::Invalid);
    assert_eq!(ack(&mut b, 1, s, &foreign), AckOutcome::Invalid, "another subscription's ack id");
    assert_eq!(ack(&mut b, 1, s, "1-0-99-1"), AckOutcome::Invalid, "an offset never delivered");
    assert_eq!(ack(&mut b, 1, s, "1-5-0-1"), AckOutcome::Invalid, "a partition that does not exist");
    assert_eq!(ack(&mut b, 1, s, &mine), AckOutcome::Applied);
}

#[test]
fn seek_replays_and_ends_outstanding_leases() {
    let mut b = broker();
    sub_on_new_topic(&mut b, 1);
    b.publish(0, 1000, "t", vec![msg("a"), msg("b")]).unwrap();
    b.publish(0, 2000, "t", vec![msg("c")]).unwrap();
    let s = open(&mut b, 0, "s", 0);
    let got = drain(&mut b);
    for g in &got {
        ack(&mut b, 1, s, &g.3);
    }
    assert_eq!(b.seek(2, "s", SeekTarget::TimeMs(1500)).unwrap(), vec![(0, 2)]);
    let replay = drain(&mut b);
    assert_eq!(replay.iter().map(|g| (g.1.as_str(), g.2)).collect::<Vec<_>>(), [("c", 1)]);
    b.seek(3, "s", SeekTarget::Earliest).unwrap();
    assert_eq!(ack(&mut b, 3, s, &replay[0].3), AckOutcome::Expired, "the seek ended that lease");
    assert_eq!(drain(&mut b).len(), 3);
    b.seek(4, "s", SeekTarget::Latest).unwrap();
    assert_eq!(b.subscription_stats("s").unwrap().backlog, 0);
    let err = b.seek(5, "s", SeekTarget::Offsets(vec![(0, 9)])).unwrap_err();
    assert!(err.to_string().contains("outside the retained range 0 to 3"), "{err}");
    b.seek(5, "s", SeekTarget::Offsets(vec![(0, 1)])).unwrap();
    assert_eq!(drain(&mut b).iter().map(|g| g.1.as_str()).collect::<Vec<_>>(), ["b", "c"]);
}

#[test]
fn ack_floors_only_raise_a_cursor_of_the_same_subscription_within_the_log() {
    let at = |now_ms| At { now_ms, wall_ms: 1000 };
    let mut b = broker();
    sub_on_new_topic(&mut b, 1);
    b.publish(0, 1000, "t", vec![msg("a"), msg("b"), msg("c"), msg("d")]).unwrap();
    let floors = b.ack_floors();
    assert_eq!(floors.len(), 1);
    let uid = floors[0].uid;
    let floor = |subscription: &str, uid, offset| AckFloor {
        subscription: subscription.into(),
        uid,
        partition: 0,
        offset,
        moves: 0,
    };
    // Another uid (a deleted namesake's floor), and an offset past the end: nothing moves.
    b.handle(at(1), Command::AckFloors(vec![floor("s", uid + 1, 3), floor("s", uid, 9)])).unwrap();
    assert_eq!(b.ack_floors()[0].offset, 0);
    b.handle(at(2), Command::AckFloors(vec![floor("s", uid, 2)])).unwrap();
    assert_eq!(b.ack_floors()[0].offset, 2);
    // A lower floor never moves it back.
    b.handle(at(3), Command::AckFloors(vec![floor("s", uid, 1)])).unwrap();
    assert_eq!(b.ack_floors()[0].offset, 2);
    let s = open(&mut b, 4, "s", 0);
    let leased = drain(&mut b);
    assert_eq!(leased.iter().map(|g| (g.0, g.1.as_str())).collect::<Vec<_>>(), [(s, "c"), (s, "d")]);
    // A replica's floor above what it leased (an earlier leader's stale leases) ends them.
    b.handle(at(5), Command::AckFloors(vec![floor("s", uid, 4)])).unwrap();
    assert_eq!(ack(&mut b, 6, s, &leased[0].3), AckOutcome::Expired);
    assert_eq!(b.ack_floors()[0].offset, 4);
    b.publish(7, 1000, "t", vec![msg("e")]).unwrap();
    assert_eq!(drain(&mut b).iter().map(|g| g.1.as_str()).collect::<Vec<_>>(), ["e"]);
}

#[test]
fn latest_subscription_sees_only_new_messages() {
    let mut b = broker();
    b.publish(0, 0, "t", vec![msg("old")]).unwrap();
    let spec =
        SubscriptionSpec { name: "s".into(), topic: "t".into(), start: StartPosition::Latest, ..Default::default() };
    b.create_subscription(spec).unwrap();
    open(&mut b, 0, "s", 0);
    b.publish(1, 0, "t", vec![msg("new")]).unwrap();
    assert_eq!(drain(&mut b).iter().map(|g| g.1.as_str()).collect::<Vec<_>>(), ["new"]);
}

#[test]
fn ephemeral_subscription_lives_as_long_as_its_stream() {
    let mut b = broker();
    b.create_topic("t", None).unwrap();
    let target = StreamTarget::Topic { topic: "t".into(), ack_deadline_ms: None, start: StartPosition::Earliest };
    let (stream, name) = b.open_stream(0, target, Flow::default()).unwrap();
    assert_eq!(name, "__ephemeral.1");
    assert!(b.subscription_info(&name).unwrap().ephemeral);
    b.close_stream(1, stream);
    assert!(b.subscription_info(&name).is_err());
    b.assert_invariants();
}

/// In a cluster only the leader has streams, so its ephemeral subscriptions must not take
/// uids from the counter every replica counts created subscriptions with.
#[test]
fn an_ephemeral_subscription_does_not_move_the_uids_of_created_ones() {
    let mut b = broker();
    b.create_topic("t", None).unwrap();
    let target = StreamTarget::Topic { topic: "t".into(), ack_deadline_ms: None, start: StartPosition::Earliest };
    b.open_stream(0, target, Flow::default()).unwrap();
    sub(&mut b, "s", "t");
    let uids: Vec<(String, u64)> = b.ack_floors().into_iter().map(|f| (f.subscription, f.uid)).collect();
    assert!(uids.contains(&("s".to_string(), 1)), "{uids:?}");
}

#[test]
fn deleting_a_topic_in_use_is_refused_unless_forced() {
    let mut b = broker();
    sub_on_new_topic(&mut b, 1);
    let s = open(&mut b, 0, "s", 0);
    let err = b.delete_topic("t", false).unwrap_err();
    assert!(matches!(err, BrokerError::TopicInUse { .. }), "{err}");
    assert_eq!(b.delete_topic("t", true).unwrap(), vec!["s".to_string()]);
    let ended = b.poll_output().unwrap();
    assert_eq!(
        ended,
        Output::EndStream { stream: s, reason: BrokerError::SubscriptionNotFound { subscription: "s".into() } }
    );
    assert!(b.topic_info("t").is_err());
    b.assert_invariants();
}

#[test]
fn retention_drops_the_oldest_messages_and_moves_the_floor() {
    let mut b = broker_with(BrokerConfig {
        partition_retention_bytes: 1024 * 1024,
        max_message_bytes: 1000,
        ..Default::default()
    });
    sub_on_new_topic(&mut b, 1);
    let big = "x".repeat(1000);
    for _ in 0..2000 {
        b.publish(0, 0, "t", vec![msg(&big)]).unwrap();
    }
    let start = b.topic_info("t").unwrap().partitions[0].start_offset;
    assert!(start > 0);
    let stats = b.subscription_stats("s").unwrap();
    assert_eq!(stats.partitions[0].committed_offset, start);
    assert_eq!(stats.backlog, 2000 - start);
}

#[test]
fn pull_leases_without_a_stream() {
    let mut b = broker();
    sub_on_new_topic(&mut b, 2);
    b.publish(0, 0, "t", (0..5).map(|i| msg(&i.to_string())).collect()).unwrap();
    let pulled = b.pull(0, "s", 3).unwrap();
    assert_eq!(pulled.len(), 3);
    let ids: Vec<String> = pulled.iter().map(|d| d.ack_id.clone()).collect();
    let replies = b.acks(1, "s", AckOp::Ack, ids.clone()).unwrap();
    assert!(replies.iter().all(|r| r.outcome == AckOutcome::Applied));
    assert_eq!(b.pull(1, "s", 0).unwrap().len(), 2);
    assert!(b.pull(1, "s", 100_000).is_err());
    b.assert_invariants();
}

#[test]
fn same_inputs_give_the_same_outputs() {
    let run = || {
        let mut b = broker();
        b.create_topic("t", Some(3)).unwrap();
        sub(&mut b, "s", "t");
        let a = open(&mut b, 0, "s", 4);
        open(&mut b, 0, "s", 4);
        let mut log = Vec::new();
        for round in 0..20u64 {
            let batch = (0..7).map(|i| keyed(&format!("k{}", (round + i) % 5), &format!("{round}.{i}"))).collect();
            b.publish(round * SEC, round, "t", batch).unwrap();
            let got = drain(&mut b);
            for g in got.iter().filter(|g| g.0 == a).take(2) {
                ack(&mut b, round * SEC, a, &g.3);
            }
            b.handle_timeout(round * 5 * SEC);
            log.push(format!("{got:?}"));
        }
        log.push(format!("{:?}", b.subscription_stats("s").unwrap()));
        log.join("\n")
    };
    assert_eq!(run(), run());
}

/// A readable trace of a short session; the snapshot shows any change in who gets what,
/// when, and with which attempt.
#[test]
fn trace_of_a_session_with_two_members_expiry_and_nack() {
    let mut b = broker_with(BrokerConfig { ack_deadline_ms: 5 * SEC, ..Default::default() });
    let mut trace = Vec::new();
    let step = |b: &mut Broker, now: u64, what: String, trace: &mut Vec<String>| {
        trace.push(format!("@{now:>6}ms {what}"));
        while let Some(output) = b.poll_output() {
            match output {
                Output::Deliver { stream, deliveries } => {
                    for d in deliveries {
                        let value = String::from_utf8_lossy(&d.record.value).into_owned();
                        trace.push(format!(
                            "          deliver {stream} p{}@{} {value:?} attempt={} ack_id={}",
                            d.partition, d.offset, d.delivery_attempt, d.ack_id
                        ));
                    }
                }
                Output::EndStream { stream, reason } => trace.push(format!("          end {stream}: {reason}")),
                Output::Assignment { .. } => unreachable!("no exclusive subscription here"),
                Output::ReadFailed { topic, partition, offset, error } => {
                    trace.push(format!("          unreadable {topic} p{partition}@{offset}: {error}"))
                }
                Output::Damaged { topic, partition, offsets } => {
                    trace.push(format!("          damaged {topic} p{partition}@{offsets:?}"))
                }
            }
        }
        b.assert_invariants();
    };
    b.create_topic("orders", Some(2)).unwrap();
    sub(&mut b, "audit", "orders");
    let w1 = open(&mut b, 0, "audit", 2);
    step(&mut b, 0, format!("open {w1} on audit max=2"), &mut trace);
    let w2 = open(&mut b, 0, "audit", 2);
    step(&mut b, 0, format!("open {w2} on audit max=2"), &mut trace);
    let batch = vec![keyed("a", "a1"), keyed("b", "b1"), keyed("a", "a2"), msg("x"), msg("y")];
    let published = b.publish(10, 1_000, "orders", batch).unwrap();
    let places: Vec<String> = published.iter().map(|p| format!("p{}@{}", p.partition, p.offset)).collect();
    step(&mut b, 10, format!("publish a1 b1 a2 x y -> {}", places.join(" ")), &mut trace);
    let outcome = b.stream_acks(20, w1, vec![(AckOp::Ack, vec!["1-0-0-1".to_string()])]).unwrap();
    step(&mut b, 20, format!("{w1} ack 1-0-0-1 -> {:?}", outcome[0].outcome), &mut trace);
    let outcome = b.stream_acks(30, w2, vec![(AckOp::nack(), vec!["1-1-0-2".to_string()])]).unwrap();
    step(&mut b, 30, format!("{w2} nack 1-1-0-2 -> {:?}", outcome[0].outcome), &mut trace);
    b.handle_timeout(5_010);
    step(&mut b, 5_010, "timeout".to_string(), &mut trace);
    b.close_stream(5_020, w1);
    step(&mut b, 5_020, format!("close {w1}"), &mut trace);
    let stats = b.subscription_stats("audit").unwrap();
    for p in stats.partitions {
        trace.push(format!(
            "partition {}: committed={} end={} backlog={} outstanding={}",
            p.partition, p.committed_offset, p.end_offset, p.backlog, p.outstanding
        ));
    }
    insta::assert_snapshot!(trace.join("\n"));
}

#[test]
fn an_ack_id_from_before_a_seek_back_is_expired_not_invalid() {
    let mut b = broker();
    sub_on_new_topic(&mut b, 1);
    b.publish(0, 0, "t", vec![msg("a"), msg("b")]).unwrap();
    let pulled = b.pull(0, "s", 2).unwrap();
    b.seek(1, "s", SeekTarget::Earliest).unwrap();
    let ids: Vec<String> = pulled.iter().map(|d| d.ack_id.clone()).collect();
    let replies = b.acks(2, "s", AckOp::Ack, ids.clone()).unwrap();
    assert!(replies.iter().all(|r| r.outcome == AckOutcome::Expired), "{replies:?}");
}

#[test]
fn a_refused_ack_request_applies_nothing() {
    let mut b = broker();
    sub_on_new_topic(&mut b, 1);
    let s = open(&mut b, 0, "s", 0);
    b.publish(0, 0, "t", vec![msg("a")]).unwrap();
    let id = drain(&mut b)[0].3.clone();
    let too_long = AckOp::ModifyDeadline { deadline_ms: 601 * SEC };
    let err = b.stream_acks(1, s, vec![(AckOp::Ack, vec![id.clone()]), (too_long, vec![id.clone()])]).unwrap_err();
    assert!(err.to_string().contains("0 to 600 s"), "{err}");
    assert_eq!(b.subscription_stats("s").unwrap().partitions[0].committed_offset, 0, "the ack was not applied");
    assert_eq!(ack(&mut b, 2, s, &id), AckOutcome::Applied);
}

#[test]
fn a_publish_refused_for_its_partition_does_not_create_the_topic() {
    let mut b = broker();
    let explicit = OutgoingMessage { partition: Some(5), ..msg("x") };
    assert!(b.publish(0, 0, "fresh", vec![explicit]).is_err());
    assert!(b.topic_info("fresh").is_err());
}

#[test]
fn retention_never_drops_the_batch_it_was_applied_for() {
    let config = BrokerConfig { max_message_bytes: 100, partition_retention_bytes: 100, ..Default::default() };
    let mut b = broker_with(config);
    sub_on_new_topic(&mut b, 1);
    let value = "v".repeat(100);
    let first = b.publish(0, 0, "t", vec![msg(&value)]).unwrap();
    assert_eq!(b.topic_info("t").unwrap().partitions[0].start_offset, first[0].offset);
    let pulled = b.pull(0, "s", 10).unwrap();
    assert_eq!(pulled.len(), 1, "the acknowledged publish is readable");
    b.publish(1, 0, "t", vec![msg(&value)]).unwrap();
    assert_eq!(b.topic_info("t").unwrap().partitions[0].start_offset, 1, "the older one is dropped now");
    assert_eq!(b.acks(2, "s", AckOp::Ack, vec![pulled[0].ack_id.clone()]).unwrap()[0].outcome, AckOutcome::Expired);
    b.assert_invariants();
}

#[test]
fn large_deliveries_are_split_into_responses_under_the_byte_limit() {
    let config = BrokerConfig { response_bytes_max: 2500, max_message_bytes: 1000, ..Default::default() };
    let mut b = broker_with(config);
    sub_on_new_topic(&mut b, 1);
    open(&mut b, 0, "s", 0);
    b.publish(0, 0, "t", (0..5).map(|_| msg(&"x".repeat(1000))).collect()).unwrap();
    let mut sizes = Vec::new();
    while let Some(Output::Deliver { deliveries, .. }) = b.poll_output() {
        sizes.push(deliveries.len());
    }
    assert_eq!(sizes, [2, 2, 1]);
    assert_eq!(b.pull(0, "s", 10).unwrap().len(), 0);
}

#[test]
fn pull_stops_before_the_response_byte_limit() {
    let config = BrokerConfig { response_bytes_max: 2500, max_message_bytes: 1000, ..Default::default() };
    let mut b = broker_with(config);
    sub_on_new_topic(&mut b, 1);
    b.publish(0, 0, "t", (0..5).map(|_| msg(&"x".repeat(1000))).collect()).unwrap();
    let pulled = b.pull(0, "s", 10).unwrap();
    assert_eq!(pulled.len(), 2);
    assert!(pulled.iter().map(Delivery::encoded_len_max).sum::<usize>() <= 2500);
    assert_eq!(b.subscription_stats("s").unwrap().outstanding, 2, "the message that did not fit stays unleased");
}

#[test]
fn the_byte_limit_counts_each_attribute_s_framing() {
    let config = BrokerConfig { response_bytes_max: 4000, max_message_bytes: 4000, ..Default::default() };
    let mut b = broker_with(config);
    sub_on_new_topic(&mut b, 1);
    open(&mut b, 0, "s", 0);
    let attributes: std::collections::BTreeMap<String, String> =
        (0..100).map(|i| (format!("{i:02}"), "v".into())).collect();
    let message = OutgoingMessage { attributes, ..Default::default() };
    b.publish(0, 0, "t", vec![message; 6]).unwrap();
    let mut sizes = Vec::new();
    while let Some(Output::Deliver { deliveries, .. }) = b.poll_output() {
        assert!(deliveries.iter().map(Delivery::encoded_len_max).sum::<usize>() <= 4000);
        sizes.push(deliveries.len());
    }
    // 300 payload bytes but 1701 with framing: two a response, not thirteen.
    assert_eq!(sizes, [2, 2, 2]);
}
