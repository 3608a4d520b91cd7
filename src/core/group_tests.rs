//! Exclusive subscriptions driven with explicit times and no runtime.

use super::*;
use crate::storage::MemoryStorage;

const SEC: u64 = 1000;

fn broker() -> Broker {
    let config = BrokerConfig { ack_deadline_ms: 30 * SEC, session_timeout_ms: 10 * SEC, ..Default::default() };
    let mut b = Broker::new(config, Box::new(MemoryStorage)).unwrap();
    b.create_topic("t", Some(4)).unwrap();
    let spec = SubscriptionSpec {
        name: "g".into(),
        topic: "t".into(),
        delivery_mode: DeliveryMode::Exclusive,
        ..Default::default()
    };
    b.create_subscription(spec).unwrap();
    b
}

/// One message on each partition, `rounds` times: values `p<partition>-<round>`.
fn publish_rounds(b: &mut Broker, now: u64, rounds: u32) {
    for round in 0..rounds {
        for p in 0..4 {
            let m = OutgoingMessage { value: format!("p{p}-{round}").into(), partition: Some(p), ..Default::default() };
            b.publish(now, 0, "t", vec![m]).unwrap();
        }
    }
}

fn join(b: &mut Broker, now: u64) -> StreamId {
    b.open_stream(now, StreamTarget::Subscription("g".into()), Flow::default()).unwrap().0
}

#[derive(Debug, Default)]
struct Seen {
    /// (stream, generation, partitions), in output order.
    assignments: Vec<(StreamId, u64, Vec<u32>)>,
    /// (stream, partition, offset, attempt, generation, ack id).
    deliveries: Vec<(StreamId, u32, u64, u32, u64, String)>,
    ended: Vec<(StreamId, BrokerError)>,
}

fn drain(b: &mut Broker) -> Seen {
    let mut seen = Seen::default();
    while let Some(output) = b.poll_output() {
        match output {
            Output::Assignment { stream, generation, partitions } => {
                seen.assignments.push((stream, generation, partitions))
            }
            Output::Deliver { stream, deliveries } => seen.deliveries.extend(
                deliveries
                    .into_iter()
                    .map(|d| (stream, d.partition, d.offset, d.delivery_attempt, d.generation, d.ack_id)),
            ),
            Output::EndStream { stream, reason } => seen.ended.push((stream, reason)),
            Output::ReadFailed { .. } | Output::Damaged { .. } => panic!("memory log read failed"),
        }
    }
    b.assert_invariants();
    seen
}

fn partitions_of(seen: &Seen, stream: StreamId) -> Vec<u32> {
    let mut ps: Vec<u32> = seen.deliveries.iter().filter(|d| d.0 == stream).map(|d| d.1).collect();
    ps.sort_unstable();
    ps.dedup();
    ps
}

fn ack(b: &mut Broker, now: u64, stream: StreamId, id: &str) -> AckOutcome {
    b.stream_acks(now, stream, vec![(AckOp::Ack, vec![id.to_string()])]).unwrap()[0].outcome
}

#[test]
fn two_members_split_the_partitions_under_one_generation() {
    let mut b = broker();
    publish_rounds(&mut b, 0, 1);
    let a = join(&mut b, 0);
    let first = drain(&mut b);
    assert_eq!(first.assignments, [(a, 1, vec![0, 1, 2, 3])]);
    assert_eq!(partitions_of(&first, a), [0, 1, 2, 3]);
    let c = join(&mut b, 10);
    let second = drain(&mut b);
    assert_eq!(second.assignments, [(a, 2, vec![0, 1]), (c, 2, vec![2, 3])]);
    // c's partitions moved away from a: a's leases there ended and c got them again, and
    // the move did not count as an attempt (a did nothing wrong).
    assert_eq!(partitions_of(&second, c), [2, 3]);
    assert!(second.deliveries.iter().all(|d| d.3 == 1 && d.4 == 2), "{:?}", second.deliveries);
    publish_rounds(&mut b, 20, 1);
    let third = drain(&mut b);
    assert_eq!((partitions_of(&third, a), partitions_of(&third, c)), (vec![0, 1], vec![2, 3]));
    let stats = b.subscription_stats("g").unwrap();
    assert_eq!(stats.generation, 2);
    let members: Vec<Option<StreamId>> = stats.partitions.iter().map(|p| p.member).collect();
    assert_eq!(members, [Some(a), Some(a), Some(c), Some(c)]);
}

#[test]
fn a_moved_partitions_old_owner_gets_its_acks_expired() {
    let mut b = broker();
    publish_rounds(&mut b, 0, 1);
    let a = join(&mut b, 0);
    let before = drain(&mut b);
    let c = join(&mut b, 10);
    drain(&mut b);
    for (_, partition, _, _, generation, ack_id) in &before.deliveries {
        let expected = if *partition < 2 { AckOutcome::Applied } else { AckOutcome::Expired };
        assert_eq!(generation, &1);
        assert_eq!(ack(&mut b, 20, a, ack_id), expected, "p{partition}");
    }
    b.close_stream(30, c);
    let after = drain(&mut b);
    assert_eq!(after.assignments, [(a, 3, vec![0, 1, 2, 3])]);
    assert_eq!(partitions_of(&after, a), [2, 3], "the leaver's unacked messages come back to a");
}

#[test]
fn a_silent_member_times_out_and_a_heartbeat_keeps_it() {
    let mut b = broker();
    let a = join(&mut b, 0);
    let c = join(&mut b, 0);
    drain(&mut b);
    assert_eq!(b.poll_timeout(), Some(10 * SEC));
    b.heartbeat(6 * SEC, a);
    b.handle_timeout(10 * SEC);
    let seen = drain(&mut b);
    assert!(matches!(&seen.ended[..], [(s, BrokerError::SessionTimedOut { timeout_ms: 10_000, .. })] if *s == c));
    assert_eq!(seen.assignments, [(a, 3, vec![0, 1, 2, 3])]);
    assert_eq!(b.poll_timeout(), Some(16 * SEC));
    assert_eq!(b.subscription_stats("g").unwrap().streams, 1);
}

#[test]
fn a_new_owner_resumes_each_partition_in_offset_order() {
    let mut b = broker();
    publish_rounds(&mut b, 0, 3);
    let a = join(&mut b, 0);
    let first = drain(&mut b);
    // a acks only the first message of each partition, then leaves.
    for d in first.deliveries.iter().filter(|d| d.2 == 0) {
        assert_eq!(ack(&mut b, 10, a, &d.5), AckOutcome::Applied);
    }
    b.close_stream(20, a);
    let c = join(&mut b, 30);
    let second = drain(&mut b);
    for p in 0..4 {
        let offsets: Vec<(u64, u32)> = second.deliveries.iter().filter(|d| d.1 == p).map(|d| (d.2, d.3)).collect();
        assert_eq!(offsets, [(1, 2), (2, 2)], "p{p} resumes at its lowest unacked offset");
    }
    assert!(second.deliveries.iter().all(|d| d.0 == c && d.4 == 3));
}

#[test]
fn pull_reads_only_partitions_no_member_holds() {
    let mut b = broker();
    publish_rounds(&mut b, 0, 1);
    let pulled = b.pull(0, "g", 10).unwrap();
    assert_eq!(pulled.len(), 4, "with no member every partition is Pull's");
    let a = join(&mut b, 10);
    let seen = drain(&mut b);
    assert_eq!(seen.deliveries.len(), 4, "the join took the pulled messages over");
    assert_eq!(b.acks(20, "g", AckOp::Ack, vec![pulled[0].ack_id.clone()]).unwrap()[0].outcome, AckOutcome::Expired);
    publish_rounds(&mut b, 30, 1);
    assert!(b.pull(30, "g", 10).unwrap().is_empty());
    assert_eq!(drain(&mut b).deliveries.len(), 4);
    b.close_stream(40, a);
    assert_eq!(b.pull(50, "g", 100).unwrap().len(), 8);
}

#[test]
fn session_timeout_over_its_bound_is_refused_naming_the_field() {
    let mut b = broker();
    let target = StreamTarget::Subscription("g".into());
    let err = b.open_member(0, target, Flow::default(), Some(301 * SEC), None).unwrap_err();
    assert!(err.to_string().starts_with("session_timeout_seconds: 301 s"), "{err}");
    assert_eq!(b.subscription_stats("g").unwrap().streams, 0);
}

#[test]
fn members_past_the_partition_count_wait_idle_until_one_leaves() {
    let mut b = broker();
    let streams: Vec<StreamId> = (0..5).map(|i| join(&mut b, i)).collect();
    let seen = drain(&mut b);
    let last = seen.assignments.iter().rev().take(5).map(|a| a.2.len()).collect::<Vec<_>>();
    assert_eq!(last, [0, 1, 1, 1, 1]);
    b.close_stream(10, streams[1]);
    let seen = drain(&mut b);
    // The leaver held p2 (stickiness dealt the partitions 0, 2, 3, 1 in join order).
    assert_eq!(seen.assignments.last(), Some(&(streams[4], 6, vec![2])));
}

/// A review found this: a rebalance counted as a delivery attempt, so a subscription
/// allowing one attempt dead-lettered every message on the partitions that moved.
#[test]
fn a_rebalance_never_dead_letters_a_message() {
    let mut b = broker();
    b.create_topic("dlq", None).unwrap();
    b.delete_subscription("g").unwrap();
    let dead_letter = Some(DeadLetterSpec { topic: "dlq".into(), max_delivery_attempts: Some(1) });
    let spec = SubscriptionSpec {
        name: "g".into(),
        topic: "t".into(),
        delivery_mode: DeliveryMode::Exclusive,
        dead_letter,
        ..Default::default()
    };
    b.create_subscription(spec).unwrap();
    publish_rounds(&mut b, 0, 1);
    let a = join(&mut b, 0);
    assert_eq!(partitions_of(&drain(&mut b), a), [0, 1, 2, 3]);
    let c = join(&mut b, 10);
    let moved = drain(&mut b);
    assert_eq!(partitions_of(&moved, c), [2, 3], "the moved messages reach the new owner");
    assert_eq!(b.topic_info("dlq").unwrap().partitions[0].end_offset, 0, "nothing was dead-lettered");
    assert_eq!(b.subscription_stats("g").unwrap().dead_lettered, 0);
}
