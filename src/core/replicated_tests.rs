//! A cluster's dead letters and redrives: the leader decides them, and every replica
//! applies what it decided from the Raft log. Two brokers stand for a leader and a
//! follower, given the same committed commands in the same order.

use super::*;
use crate::storage::MemoryStorage;

const AT: At = At { now_ms: 0, wall_ms: 1_000 };

fn broker() -> Broker {
    Broker::new(BrokerConfig::default(), Box::new(MemoryStorage)).unwrap()
}

fn msg(value: &str) -> OutgoingMessage {
    OutgoingMessage { value: value.to_string().into(), ..Default::default() }
}

fn sub(name: &str, topic: &str, dead_letter: Option<&str>) -> Command {
    Command::CreateSubscription(SubscriptionSpec {
        name: name.into(),
        topic: topic.into(),
        ack_deadline_ms: Some(10_000),
        dead_letter: dead_letter.map(|t| DeadLetterSpec { topic: t.into(), max_delivery_attempts: Some(5) }),
        ..Default::default()
    })
}

fn topic(name: &str) -> Command {
    Command::CreateTopic { name: name.into(), partitions: Some(1), dedupe_window_ms: None }
}

/// A leader (it applied `Lead`) and a follower holding `t` with `count` messages, `s` on it
/// dead-lettering into `dlq`, and `dead` reading `dlq`.
fn cluster(count: usize) -> (Broker, Broker) {
    let (mut leader, mut follower) = (broker(), broker());
    let publish = Command::Publish { topic: "t".into(), messages: (0..count).map(|i| msg(&format!("m{i}"))).collect() };
    for command in [topic("t"), topic("dlq"), sub("s", "t", Some("dlq")), sub("dead", "dlq", None), publish] {
        both(&mut leader, &mut follower, command);
    }
    leader.handle(AT, Command::Lead { term: 1 }).unwrap();
    (leader, follower)
}

/// Applies a committed command to both, which answer alike.
fn both(leader: &mut Broker, follower: &mut Broker, command: Command) -> Answer {
    let answer = leader.handle(AT, command.clone()).unwrap();
    assert_eq!(follower.handle(AT, command).unwrap(), answer, "the replicas answer alike");
    leader.assert_invariants();
    follower.assert_invariants();
    answer
}

/// Pulls everything available from `subscription`: (value, attempt, ack id).
fn pull(b: &mut Broker, subscription: &str) -> Vec<(String, u32, String)> {
    let pulled = Command::Pull { subscription: subscription.into(), max_messages: 100 };
    let Answer::Deliveries(got) = b.handle(AT, pulled).unwrap() else { panic!("not deliveries") };
    got.into_iter()
        .map(|d| (String::from_utf8(d.record.value.to_vec()).unwrap(), d.delivery_attempt, d.ack_id))
        .collect()
}

fn ack(b: &mut Broker, subscription: &str, op: AckOp, id: &str) {
    let acks = Command::Acks { subscription: subscription.into(), op, ack_ids: vec![id.to_string()] };
    let Answer::Confirmations(replies) = b.handle(AT, acks).unwrap() else { panic!("not confirmations") };
    assert_eq!(replies[0].outcome, AckOutcome::Applied);
}

fn terminal() -> AckOp {
    AckOp::Nack { delay_ms: None, terminal: true, reason: Some("bad".into()) }
}

fn committed(b: &Broker, subscription: &str) -> u64 {
    b.subscription_stats(subscription).unwrap().partitions[0].committed_offset
}

/// The leader terminal-nacks every message of `s` whose value is in `dead` and acks the
/// rest; returns what it decided.
fn give_up(leader: &mut Broker, dead: &[&str]) -> Vec<Command> {
    for (value, _, id) in pull(leader, "s") {
        let op = if dead.contains(&value.as_str()) { terminal() } else { AckOp::Ack };
        ack(leader, "s", op, &id);
    }
    leader.assert_invariants();
    leader.take_decided()
}

#[test]
fn a_leader_copies_nothing_until_its_move_commits_then_every_replica_copies_alike() {
    let (mut leader, mut follower) = cluster(3);
    let decided = give_up(&mut leader, &["m1"]);
    assert_eq!(decided.len(), 1, "{decided:?}");
    assert!(matches!(&decided[0], Command::DeadLetters(moves) if moves.len() == 1 && moves[0].offset == 1));
    assert!(pull(&mut leader, "dead").is_empty(), "no copy before the move commits");
    assert_eq!(committed(&leader, "s"), 1, "offset 1 is held in transit");
    assert!(pull(&mut leader, "s").is_empty(), "a held message is not delivered again");

    both(&mut leader, &mut follower, decided[0].clone());
    assert_eq!(committed(&leader, "s"), 3);
    for b in [&mut leader, &mut follower] {
        let copies = pull(b, "dead");
        assert_eq!(copies.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(), ["m1"]);
        assert_eq!(b.subscription_stats("s").unwrap().dead_lettered, 1);
    }
    let (l, f) = (leader.topic_info("dlq").unwrap(), follower.topic_info("dlq").unwrap());
    assert_eq!(l, f, "the copy is at the same place on both");
    // The follower never delivered m1, yet counts it done: a new leader does not deliver it.
    follower.handle(AT, Command::Lead { term: 2 }).unwrap();
    let again: Vec<String> = pull(&mut follower, "s").into_iter().map(|d| d.0).collect();
    assert_eq!(again, ["m0", "m2"], "only what the old leader's floor did not cover yet");
}

#[test]
fn a_move_that_never_committed_gives_its_message_back_when_the_node_leads_again() {
    let (mut leader, _) = cluster(1);
    assert_eq!(give_up(&mut leader, &["m0"]).len(), 1);
    assert!(pull(&mut leader, "s").is_empty());
    leader.handle(AT, Command::Lead { term: 2 }).unwrap();
    leader.assert_invariants();
    let again = pull(&mut leader, "s");
    assert_eq!((again[0].0.as_str(), again[0].1), ("m0", 2), "delivered again; this node counted the first attempt");
    assert_eq!(leader.subscription_stats("s").unwrap().dead_lettered, 0);
}

#[test]
fn a_redrive_is_decided_by_the_leader_and_applied_by_every_replica() {
    let (mut leader, mut follower) = cluster(3);
    for decided in give_up(&mut leader, &["m0", "m2"]) {
        both(&mut leader, &mut follower, decided);
    }
    let floor = leader.ack_floors().into_iter().find(|f| f.subscription == "s").unwrap();
    both(&mut leader, &mut follower, Command::AckFloors(vec![floor]));
    assert_eq!((committed(&leader, "s"), committed(&follower, "s")), (3, 3));

    let redrive = Command::Redrive { subscription: "dead".into(), max_messages: 10 };
    assert_eq!(leader.handle(AT, redrive).unwrap(), Answer::Redriven(vec![]), "nothing moved yet");
    let decided = leader.take_decided();
    assert!(matches!(&decided[..], [Command::RedriveCopies { copies, .. }] if copies == &[(0, 0), (0, 1)]));
    assert!(pull(&mut leader, "dead").is_empty(), "the copies are held for the redrive");
    assert_eq!(committed(&leader, "s"), 3, "nothing moved back before it commits");

    let Answer::Redriven(moved) = both(&mut leader, &mut follower, decided[0].clone()) else { panic!() };
    assert_eq!(moved.iter().map(|r| (r.offset, r.outcome.clone())).collect::<Vec<_>>(), [(0, Ok(())), (2, Ok(()))]);
    for b in [&mut leader, &mut follower] {
        assert_eq!(committed(b, "s"), 0, "the floor moved back to the first message put back");
        assert_eq!(b.subscription_stats("dead").unwrap().backlog, 0, "both copies are done");
        let back: Vec<(String, u32)> = pull(b, "s").into_iter().map(|d| (d.0, d.1)).collect();
        assert_eq!(back, [("m0".to_string(), 1), ("m2".to_string(), 1)]);
        b.assert_invariants();
    }
}

#[test]
fn a_redrive_that_can_no_longer_move_a_copy_gives_it_back_on_the_leader() {
    let (mut leader, mut follower) = cluster(1);
    let decided = give_up(&mut leader, &["m0"]);
    both(&mut leader, &mut follower, decided[0].clone());
    leader.handle(AT, Command::Redrive { subscription: "dead".into(), max_messages: 10 }).unwrap();
    let redrive = leader.take_decided().remove(0);
    // Committed before the redrive: the source subscription goes.
    both(&mut leader, &mut follower, Command::DeleteSubscription { name: "s".into() });
    let Answer::Redriven(moved) = both(&mut leader, &mut follower, redrive) else { panic!() };
    assert!(moved[0].outcome.as_ref().unwrap_err().contains("no longer exists"), "{moved:?}");
    let copies = pull(&mut leader, "dead");
    assert_eq!((copies.len(), copies[0].1), (1, 1), "the copy is offered again, no attempt counted");
}

/// Every record of `topic` partition 0, as stored.
fn stored(b: &Broker, topic: &str) -> Vec<crate::storage::Record> {
    let log = &b.topics[topic].logs[0];
    log.read(log.start_offset(), 100, usize::MAX).unwrap().into_iter().map(|r| r.record.as_ref().clone()).collect()
}

#[test]
fn a_copy_is_the_same_on_every_replica_whatever_their_clocks_and_logs() {
    let (mut leader, mut follower) = cluster(2);
    // The follower's clock runs a minute ahead, and its own input carries it.
    follower.handle(At { now_ms: 0, wall_ms: 61_000 }, Command::Tick).unwrap();
    let decided = give_up(&mut leader, &["m1"]);
    both(&mut leader, &mut follower, decided[0].clone());
    let (l, f) = (stored(&leader, "dlq"), stored(&follower, "dlq"));
    assert_eq!(l.len(), 1);
    assert_eq!(l, f, "same key, value, attributes and publish time");
    assert_eq!(l[0].publish_time_ms, 1_000, "the leader's time");
}

#[test]
fn a_floor_read_before_a_redrive_and_committed_after_it_moves_nothing() {
    let (mut leader, mut follower) = cluster(3);
    for decided in give_up(&mut leader, &["m1"]) {
        both(&mut leader, &mut follower, decided);
    }
    let floors = Command::AckFloors(leader.ack_floors());
    both(&mut leader, &mut follower, floors);
    assert_eq!((committed(&leader, "s"), committed(&follower, "s")), (3, 3));
    leader.handle(AT, Command::Redrive { subscription: "dead".into(), max_messages: 10 }).unwrap();
    let redrive = leader.take_decided().remove(0);
    // Read while the redrive was in flight, proposed, and committed after it.
    let stale = leader.ack_floors().into_iter().find(|f| f.subscription == "s").unwrap();
    assert_eq!(stale.offset, 3);
    both(&mut leader, &mut follower, redrive);
    both(&mut leader, &mut follower, Command::AckFloors(vec![stale]));
    for b in [&mut leader, &mut follower] {
        assert_eq!(committed(b, "s"), 1, "the redrive stands");
        assert_eq!(pull(b, "s").into_iter().map(|d| d.0).collect::<Vec<_>>(), ["m1"]);
    }
}

#[test]
fn a_node_that_serves_again_in_its_own_term_keeps_the_moves_still_in_its_log() {
    let (mut leader, mut follower) = cluster(1);
    let decided = give_up(&mut leader, &["m0"]);
    // It stopped serving (no quorum heard) and serves again, in the same term.
    leader.handle(AT, Command::Lead { term: 1 }).unwrap();
    assert!(pull(&mut leader, "s").is_empty(), "still held for its move");
    both(&mut leader, &mut follower, decided[0].clone());
    assert_eq!(committed(&leader, "s"), 1);
    assert_eq!(stored(&leader, "dlq").len(), 1, "one copy");
}

#[test]
fn a_seek_committed_before_a_move_leaves_its_message_owed_though_the_copy_is_made() {
    let (mut leader, mut follower) = cluster(2);
    let decided = give_up(&mut leader, &["m0"]);
    let seek = Command::Seek { subscription: "s".into(), target: SeekTarget::Earliest };
    both(&mut leader, &mut follower, seek);
    both(&mut leader, &mut follower, decided[0].clone());
    for b in [&mut leader, &mut follower] {
        assert_eq!(stored(b, "dlq").len(), 1, "the copy is made");
        let owed: Vec<String> = pull(b, "s").into_iter().map(|d| d.0).collect();
        assert_eq!(owed, ["m0", "m1"], "the seek asked for both again, and the move does not take m0 away");
    }
}
