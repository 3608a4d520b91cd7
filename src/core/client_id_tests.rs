//! Client ids driven with explicit times and no runtime: a closed stream's leases wait for
//! its client, a reconnecting client adopts them, a second stream of a client replaces the
//! first.

use super::*;
use crate::storage::MemoryStorage;

const SEC: u64 = 1000;

fn broker() -> Broker {
    let config = BrokerConfig { ack_deadline_ms: 30 * SEC, ..Default::default() };
    let mut b = Broker::new(config, Box::new(MemoryStorage)).unwrap();
    b.create_topic("t", Some(1)).unwrap();
    b.create_subscription(SubscriptionSpec { name: "s".into(), topic: "t".into(), ..Default::default() }).unwrap();
    b
}

fn publish(b: &mut Broker, now: u64, values: &[&str]) {
    let batch = values.iter().map(|v| OutgoingMessage { value: v.to_string().into(), ..Default::default() }).collect();
    b.publish(now, 0, "t", batch).unwrap();
}

fn open_as(b: &mut Broker, now: u64, client: Option<&str>, max: u32) -> StreamId {
    let flow = Flow { max_outstanding_messages: max, max_outstanding_bytes: 0 };
    let target = StreamTarget::Subscription("s".into());
    b.open_member(now, target, flow, None, client.map(str::to_string)).unwrap().0
}

#[derive(Debug, Default)]
struct Seen {
    /// (stream, value, attempt, ack id).
    deliveries: Vec<(StreamId, String, u32, String)>,
    ended: Vec<(StreamId, BrokerError)>,
}

fn drain(b: &mut Broker) -> Seen {
    let mut seen = Seen::default();
    while let Some(output) = b.poll_output() {
        match output {
            Output::Deliver { stream, deliveries } => {
                seen.deliveries.extend(deliveries.into_iter().map(|d| {
                    (stream, String::from_utf8(d.record.value.to_vec()).unwrap(), d.delivery_attempt, d.ack_id)
                }))
            }
            Output::EndStream { stream, reason } => seen.ended.push((stream, reason)),
            Output::Assignment { .. } => {}
            Output::ReadFailed { .. } | Output::Damaged { .. } => panic!("memory log read failed"),
        }
    }
    b.assert_invariants();
    seen
}

fn ack_on(b: &mut Broker, now: u64, stream: StreamId, ids: &[String]) -> Vec<AckOutcome> {
    b.stream_acks(now, stream, vec![(AckOp::Ack, ids.to_vec())]).unwrap().into_iter().map(|r| r.outcome).collect()
}

fn ids(seen: &Seen) -> Vec<String> {
    seen.deliveries.iter().map(|d| d.3.clone()).collect()
}

fn outstanding(b: &Broker) -> u64 {
    b.subscription_stats("s").unwrap().outstanding
}

#[test]
fn a_closed_stream_with_a_client_id_keeps_its_leases_until_their_deadline_then_they_expire() {
    let mut b = broker();
    publish(&mut b, 0, &["a", "b"]);
    let worker = open_as(&mut b, 0, Some("w"), 0);
    let first = drain(&mut b);
    assert_eq!(first.deliveries.len(), 2);
    let other = open_as(&mut b, 0, None, 0);
    b.close_stream(SEC, worker);
    assert!(drain(&mut b).deliveries.is_empty(), "detached leases are not given to the other member");
    assert_eq!(outstanding(&b), 2);
    let (page, _) = b.list_pending(SEC, "s", None, 10).unwrap();
    assert_eq!(page[0].state, PendingState::Leased { stream: None, expires_in_ms: 29 * SEC });
    assert_eq!(page[0].client_id.as_deref(), Some("w"));

    b.handle_timeout(30 * SEC - 1);
    assert!(drain(&mut b).deliveries.is_empty(), "nothing expires before the deadline");
    b.handle_timeout(30 * SEC);
    let again = drain(&mut b);
    let got: Vec<(StreamId, &str, u32)> = again.deliveries.iter().map(|d| (d.0, d.1.as_str(), d.2)).collect();
    assert_eq!(got, [(other, "a", 2), (other, "b", 2)], "expired as any lease: the next attempt");
    assert_eq!(ack_on(&mut b, 30 * SEC, other, &ids(&first)), [AckOutcome::Expired; 2]);
    assert!(b.detached.is_empty(), "the last lease gone, the closed stream is forgotten");
}

#[test]
fn detached_leases_take_acks_nacks_and_deadline_changes_from_any_stream_or_unary() {
    let mut b = broker();
    publish(&mut b, 0, &["a", "b", "c"]);
    let worker = open_as(&mut b, 0, Some("w"), 0);
    let first = ids(&drain(&mut b));
    let other = open_as(&mut b, 0, None, 0);
    b.close_stream(SEC, worker);
    drain(&mut b);
    assert_eq!(ack_on(&mut b, 2 * SEC, other, &first[..1]), [AckOutcome::Applied], "acked on another stream");
    let extend = AckOp::ModifyDeadline { deadline_ms: 60 * SEC };
    assert_eq!(b.acks(2 * SEC, "s", extend, first[1..2].to_vec()).unwrap()[0].outcome, AckOutcome::Applied);
    let nacked = b.acks(3 * SEC, "s", AckOp::nack(), first[2..].to_vec()).unwrap();
    assert_eq!(nacked[0].outcome, AckOutcome::Applied, "nacked unary");
    let back = drain(&mut b);
    assert_eq!(back.deliveries.iter().map(|d| (d.0, d.1.as_str(), d.2)).collect::<Vec<_>>(), [(other, "c", 2)]);
    b.handle_timeout(30 * SEC);
    assert!(drain(&mut b).deliveries.is_empty(), "the extended lease outlives its first deadline");
    b.handle_timeout(62 * SEC);
    assert_eq!(drain(&mut b).deliveries[0].1, "b");
}

#[test]
fn a_reconnecting_client_adopts_its_leases_and_its_acks_apply() {
    let mut b = broker();
    publish(&mut b, 0, &["a", "b"]);
    let worker = open_as(&mut b, 0, Some("w"), 0);
    let first = ids(&drain(&mut b));
    b.close_stream(SEC, worker);
    drain(&mut b);
    let again = open_as(&mut b, 2 * SEC, Some("w"), 0);
    let reopened = drain(&mut b);
    assert!(reopened.deliveries.is_empty() && reopened.ended.is_empty(), "adopted, not sent again: {reopened:?}");
    assert!(b.detached.is_empty());
    assert_eq!(b.streams[&again].outstanding_messages, 2, "the adopted leases count against the new stream");
    assert_eq!(ack_on(&mut b, 3 * SEC, again, &first), [AckOutcome::Applied; 2]);
    b.handle_timeout(60 * SEC);
    assert!(drain(&mut b).deliveries.is_empty(), "never redelivered");
    let stats = b.subscription_stats("s").unwrap();
    assert_eq!((stats.backlog, stats.outstanding, stats.partitions[0].committed_offset), (0, 0, 2));
}

#[test]
fn a_second_open_stream_of_a_client_ends_the_first_with_aborted_and_takes_its_leases() {
    let mut b = broker();
    publish(&mut b, 0, &["a", "b"]);
    let old = open_as(&mut b, 0, Some("w"), 1);
    let other = open_as(&mut b, 0, None, 1);
    let seen = drain(&mut b);
    let held: Vec<String> = seen.deliveries.iter().filter(|d| d.0 == old).map(|d| d.3.clone()).collect();
    assert_eq!(held.len(), 1);
    let new = open_as(&mut b, SEC, Some("w"), 1);
    let seen = drain(&mut b);
    assert!(seen.deliveries.is_empty(), "the new stream is full with the lease it took over");
    let [(ended, reason)] = &seen.ended[..] else { panic!("one stream ends: {:?}", seen.ended) };
    assert_eq!(*ended, old);
    assert_eq!(
        reason.to_string(),
        "subscription `s`: stream-1 was replaced by a newer stream of client `w` (stream-3), which took over its leases"
    );
    assert_eq!(b.subscriptions[&1].members, [new, other], "the new stream takes the old one's place");
    assert_eq!(ack_on(&mut b, 2 * SEC, old, &held), [AckOutcome::Invalid], "the old stream is gone");
    assert_eq!(ack_on(&mut b, 2 * SEC, new, &held), [AckOutcome::Applied]);
    b.close_stream(3 * SEC, old);
    assert_eq!(b.subscription_stats("s").unwrap().streams, 2, "a late close of the replaced stream changes nothing");
}

#[test]
fn adopted_leases_count_against_the_new_streams_flow_control() {
    let mut b = broker();
    publish(&mut b, 0, &["a", "b", "c"]);
    let worker = open_as(&mut b, 0, Some("w"), 2);
    let first = ids(&drain(&mut b));
    assert_eq!(first.len(), 2);
    b.close_stream(SEC, worker);
    drain(&mut b);
    let again = open_as(&mut b, SEC, Some("w"), 2);
    assert!(drain(&mut b).deliveries.is_empty(), "two adopted leases fill a stream of two");
    assert_eq!(ack_on(&mut b, 2 * SEC, again, &first[..1]), [AckOutcome::Applied]);
    let next = drain(&mut b);
    assert_eq!(next.deliveries.iter().map(|d| (d.0, d.1.as_str(), d.2)).collect::<Vec<_>>(), [(again, "c", 1)]);
}

#[test]
fn detached_leases_count_against_no_stream() {
    let mut b = broker();
    publish(&mut b, 0, &["a", "b", "c"]);
    let worker = open_as(&mut b, 0, Some("w"), 2);
    drain(&mut b);
    b.close_stream(SEC, worker);
    let other = open_as(&mut b, SEC, Some("x"), 1);
    let seen = drain(&mut b);
    assert_eq!(seen.deliveries.iter().map(|d| (d.0, d.1.as_str())).collect::<Vec<_>>(), [(other, "c")]);
}

#[test]
fn streams_without_a_client_id_and_clients_that_leave_release_at_once() {
    let mut b = broker();
    publish(&mut b, 0, &["a", "b"]);
    let plain = open_as(&mut b, 0, None, 1);
    let leaving = open_as(&mut b, 0, Some("w"), 1);
    drain(&mut b);
    let other = open_as(&mut b, 0, None, 0);
    b.close_stream(SEC, plain);
    b.leave_stream(SEC, leaving);
    let seen = drain(&mut b);
    let got: Vec<(StreamId, u32)> = seen.deliveries.iter().map(|d| (d.0, d.2)).collect();
    assert_eq!(got, [(other, 2), (other, 2)], "given to the other member at once, counting an attempt");
    assert!(b.detached.is_empty() && b.subscriptions[&1].clients.is_empty());
}

#[test]
fn a_client_that_closes_holding_nothing_is_forgotten() {
    let mut b = broker();
    let worker = open_as(&mut b, 0, Some("w"), 0);
    b.close_stream(SEC, worker);
    drain(&mut b);
    assert!(b.detached.is_empty() && b.subscriptions[&1].clients.is_empty());
}

#[test]
fn a_seek_ends_detached_leases_and_forgets_their_client() {
    let mut b = broker();
    publish(&mut b, 0, &["a"]);
    let worker = open_as(&mut b, 0, Some("w"), 0);
    let first = ids(&drain(&mut b));
    b.close_stream(SEC, worker);
    b.seek(2 * SEC, "s", SeekTarget::Latest).unwrap();
    drain(&mut b);
    assert!(b.detached.is_empty() && b.subscriptions[&1].clients.is_empty());
    let again = open_as(&mut b, 3 * SEC, Some("w"), 0);
    assert_eq!(ack_on(&mut b, 3 * SEC, again, &first), [AckOutcome::Expired]);
    assert_eq!(b.streams[&again].outstanding_messages, 0);
}

#[test]
fn deleting_the_subscription_drops_its_detached_streams() {
    let mut b = broker();
    publish(&mut b, 0, &["a"]);
    let worker = open_as(&mut b, 0, Some("w"), 0);
    drain(&mut b);
    b.close_stream(SEC, worker);
    assert_eq!(b.detached.len(), 1);
    b.delete_subscription("s").unwrap();
    drain(&mut b);
    assert!(b.detached.is_empty());
}

#[test]
fn a_detached_lease_keeps_its_ordering_key_blocked_until_it_expires() {
    let mut b = broker();
    let spec = SubscriptionSpec { name: "o".into(), topic: "t".into(), ordered: true, ..Default::default() };
    b.create_subscription(spec).unwrap();
    let keyed = |v: &str| OutgoingMessage { value: v.to_string().into(), key: Some("k".into()), ..Default::default() };
    b.publish(0, 0, "t", vec![keyed("k1"), keyed("k2")]).unwrap();
    let flow = Flow::default();
    let target = || StreamTarget::Subscription("o".into());
    let worker = b.open_member(0, target(), flow, None, Some("w".into())).unwrap().0;
    assert_eq!(drain(&mut b).deliveries.iter().map(|d| d.1.as_str()).collect::<Vec<_>>(), ["k1"]);
    b.close_stream(SEC, worker);
    let other = b.open_stream(SEC, target(), flow).unwrap().0;
    assert!(drain(&mut b).deliveries.is_empty(), "k2 waits behind the detached k1");
    b.handle_timeout(30 * SEC);
    let seen = drain(&mut b);
    assert_eq!(seen.deliveries.iter().map(|d| (d.0, d.1.as_str(), d.2)).collect::<Vec<_>>(), [(other, "k1", 2)]);
}

#[test]
fn a_bad_client_id_is_refused_naming_the_field_and_opens_nothing() {
    let mut b = broker();
    let target = StreamTarget::Subscription("s".into());
    let error = b.open_member(0, target, Flow::default(), None, Some("a b".into())).unwrap_err();
    assert_eq!(
        error.to_string(),
        "client_id: has a space at byte 1; client ids are 1 to 128 bytes of printable ASCII without spaces (empty for none)"
    );
    assert_eq!(b.subscription_stats("s").unwrap().streams, 0);
    assert!(b.poll_output().is_none());
}

#[test]
fn a_client_id_on_a_topic_keeps_nothing_the_ephemeral_subscription_ends_with_its_stream() {
    let mut b = broker();
    publish(&mut b, 0, &["a"]);
    let target = StreamTarget::Topic { topic: "t".into(), ack_deadline_ms: None, start: StartPosition::Earliest };
    let tap = b.open_member(0, target, Flow::default(), None, Some("w".into())).unwrap().0;
    assert_eq!(drain(&mut b).deliveries.len(), 1);
    b.close_stream(SEC, tap);
    drain(&mut b);
    assert!(b.detached.is_empty());
    assert_eq!(b.list_subscriptions(None, None, 10).unwrap().0.len(), 1, "only `s` is left");
}

mod exclusive {
    use super::*;

    fn broker() -> Broker {
        let config = BrokerConfig { ack_deadline_ms: 30 * SEC, session_timeout_ms: 10 * SEC, ..Default::default() };
        let mut b = Broker::new(config, Box::new(MemoryStorage)).unwrap();
        b.create_topic("t", Some(4)).unwrap();
        let spec = SubscriptionSpec {
            name: "s".into(),
            topic: "t".into(),
            delivery_mode: DeliveryMode::Exclusive,
            ..Default::default()
        };
        b.create_subscription(spec).unwrap();
        for p in 0..4 {
            let m = OutgoingMessage { value: format!("p{p}").into(), partition: Some(p), ..Default::default() };
            b.publish(0, 0, "t", vec![m]).unwrap();
        }
        b
    }

    fn assignments(b: &mut Broker) -> (Vec<(StreamId, u64, Vec<u32>)>, Seen) {
        let mut assigned = Vec::new();
        let mut seen = Seen::default();
        while let Some(output) = b.poll_output() {
            match output {
                Output::Assignment { stream, generation, partitions } => {
                    assigned.push((stream, generation, partitions))
                }
                Output::Deliver { stream, deliveries } => seen.deliveries.extend(deliveries.into_iter().map(|d| {
                    (stream, String::from_utf8(d.record.value.to_vec()).unwrap(), d.delivery_attempt, d.ack_id)
                })),
                Output::EndStream { stream, reason } => seen.ended.push((stream, reason)),
                Output::ReadFailed { .. } | Output::Damaged { .. } => panic!("memory log read failed"),
            }
        }
        b.assert_invariants();
        (assigned, seen)
    }

    #[test]
    fn the_last_member_that_reconnects_keeps_the_leases_of_its_partitions() {
        let mut b = broker();
        let worker = open_as(&mut b, 0, Some("w"), 0);
        let first = ids(&drain(&mut b));
        assert_eq!(first.len(), 4);
        b.close_stream(SEC, worker);
        drain(&mut b);
        assert_eq!(outstanding(&b), 4, "no member holds the partitions: the leases wait");
        assert!(b.pull(SEC, "s", 10).unwrap().is_empty(), "Pull finds them leased");
        let again = open_as(&mut b, 2 * SEC, Some("w"), 0);
        let (assigned, seen) = assignments(&mut b);
        assert_eq!(assigned, [(again, 3, vec![0, 1, 2, 3])]);
        assert!(seen.deliveries.is_empty(), "adopted, not sent again");
        assert_eq!(ack_on(&mut b, 3 * SEC, again, &first), [AckOutcome::Applied; 4]);
    }

    #[test]
    fn another_member_that_takes_the_partitions_ends_the_detached_leases() {
        let mut b = broker();
        let worker = open_as(&mut b, 0, Some("w"), 0);
        let first = ids(&drain(&mut b));
        b.close_stream(SEC, worker);
        drain(&mut b);
        let other = open_as(&mut b, 2 * SEC, None, 0);
        let seen = drain(&mut b);
        let got: Vec<(StreamId, u32)> = seen.deliveries.iter().map(|d| (d.0, d.2)).collect();
        assert_eq!(got, [(other, 1); 4], "revoked as for a partition that moves: no attempt counted");
        assert!(b.detached.is_empty());
        assert_eq!(ack_on(&mut b, 3 * SEC, other, &first), [AckOutcome::Expired; 4]);
    }

    #[test]
    fn a_replacing_stream_takes_over_the_partitions_and_leases_of_the_old_one() {
        let mut b = broker();
        let old = open_as(&mut b, 0, Some("w"), 0);
        let other = open_as(&mut b, 0, None, 0);
        let (_, seen) = assignments(&mut b);
        // It keeps partitions 0 and 1; its leases on 2 and 3 went to the other member.
        let kept = |d: &&(StreamId, String, u32, String)| d.0 == old && (d.1 == "p0" || d.1 == "p1");
        let held: Vec<String> = seen.deliveries.iter().filter(kept).map(|d| d.3.clone()).collect();
        assert_eq!(held.len(), 2);
        let new = open_as(&mut b, SEC, Some("w"), 0);
        let (assigned, seen) = assignments(&mut b);
        assert_eq!(seen.ended.iter().map(|e| e.0).collect::<Vec<_>>(), [old]);
        assert_eq!(assigned, [(new, 3, vec![0, 1]), (other, 3, vec![2, 3])], "same partitions, next generation");
        assert!(seen.deliveries.is_empty());
        assert_eq!(ack_on(&mut b, 2 * SEC, new, &held), [AckOutcome::Applied; 2]);
    }
}
