//! Record, then replay: random command sequences applied to one broker, written as a
//! recording's frames, read back and applied to a fresh broker give the same replies and
//! outputs, equal as values (not only by digest), and the same final state. On the way,
//! decide-then-apply holds: what `Broker::check` refuses, `Broker::handle` refuses alike
//! without changing anything, and what it lets through is not refused.

use bytes::Bytes;
use proptest::prelude::*;
use prost::Message;

use super::{decode_command, digest_state, encode_command, frame, pb, FRAME_HEADER};
use crate::core::{
    AckFloor, AckOp, Answer, At, Broker, BrokerConfig, Command, DeadLetterSpec, DeliveryMode, Flow, OutgoingMessage,
    Output, RetrySpec, SeekTarget, StartPosition, StreamId, StreamTarget, SubscriptionSpec,
};
use crate::storage::MemoryStorage;

/// A step of the generated sequence; ack ids and streams are picked, at apply time, among
/// those the broker gave so far.
#[derive(Debug, Clone)]
enum Op {
    Publish {
        key: Option<u8>,
        count: u8,
        idempotency: Option<u8>,
    },
    Open {
        subscription: bool,
        max: u32,
        client: Option<u8>,
    },
    StreamAcks {
        stream: usize,
        delivery: usize,
        nack: bool,
    },
    Close {
        stream: usize,
        leave: bool,
    },
    Pull {
        max: u32,
    },
    Acks {
        delivery: usize,
        op: u8,
    },
    Advance {
        ms: u64,
    },
    Seek {
        target: u8,
    },
    Redrive,
    Sync,
    Checkpoint,
    DeleteTopic {
        force: bool,
    },
    AckFloors {
        uid: u64,
        partition: u32,
        offset: u64,
    },
    Lead {
        term: u64,
    },
    /// The first command the broker decided as a cluster leader (a dead-letter move, a
    /// redrive) commits; the others are lost, as proposals of a deposed leader are.
    Commit,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (proptest::option::of(0u8..4), 1u8..4, proptest::option::of(0u8..6))
            .prop_map(|(key, count, idempotency)| Op::Publish { key, count, idempotency }),
        2 => (any::<bool>(), 0u32..4, proptest::option::of(0u8..2))
            .prop_map(|(subscription, max, client)| Op::Open { subscription, max, client }),
        3 => (any::<usize>(), any::<usize>(), any::<bool>())
            .prop_map(|(stream, delivery, nack)| Op::StreamAcks { stream, delivery, nack }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(stream, leave)| Op::Close { stream, leave }),
        1 => (0u32..4).prop_map(|max| Op::Pull { max }),
        2 => (any::<usize>(), 0u8..4).prop_map(|(delivery, op)| Op::Acks { delivery, op }),
        2 => (0u64..5000).prop_map(|ms| Op::Advance { ms }),
        1 => (0u8..3).prop_map(|target| Op::Seek { target }),
        1 => Just(Op::Redrive),
        1 => Just(Op::Sync),
        1 => Just(Op::Checkpoint),
        1 => any::<bool>().prop_map(|force| Op::DeleteTopic { force }),
        1 => (0u64..6, 0u32..3, 0u64..12).prop_map(|(uid, partition, offset)| Op::AckFloors { uid, partition, offset }),
        1 => (0u64..4).prop_map(|term| Op::Lead { term }),
        2 => Just(Op::Commit),
    ]
}

/// What the generator picks from: the streams opened and the ack ids delivered.
#[derive(Default)]
struct Seen {
    streams: Vec<StreamId>,
    ack_ids: Vec<String>,
}

impl Seen {
    fn observe(&mut self, answer: &Result<Answer, crate::core::BrokerError>, outputs: &[Output]) {
        match answer {
            Ok(Answer::Opened { stream, .. }) => self.streams.push(*stream),
            Ok(Answer::Deliveries(deliveries)) => self.ack_ids.extend(deliveries.iter().map(|d| d.ack_id.clone())),
            _ => {}
        }
        for output in outputs {
            if let Output::Deliver { deliveries, .. } = output {
                self.ack_ids.extend(deliveries.iter().map(|d| d.ack_id.clone()));
            }
        }
    }

    fn ack_id(&self, i: usize) -> String {
        if self.ack_ids.is_empty() {
            return "1-0-0-1".to_string();
        }
        self.ack_ids[i % self.ack_ids.len()].clone()
    }

    fn stream(&self, i: usize) -> StreamId {
        if self.streams.is_empty() {
            return StreamId(1);
        }
        self.streams[i % self.streams.len()]
    }
}

fn command(op: &Op, seen: &Seen, n: usize) -> Command {
    match op.clone() {
        Op::Publish { key, count, idempotency } => Command::Publish {
            topic: "t".into(),
            messages: (0..count)
                .map(|i| OutgoingMessage {
                    value: Bytes::from(format!("v{n}.{i}")),
                    key: key.map(|k| format!("k{k}")),
                    idempotency_key: idempotency.map(|k| format!("id{k}.{i}")),
                    ..Default::default()
                })
                .collect(),
        },
        Op::Open { subscription, max, client } => Command::OpenStream {
            target: if subscription {
                StreamTarget::Subscription("s".into())
            } else {
                StreamTarget::Topic { topic: "t".into(), ack_deadline_ms: None, start: StartPosition::Earliest }
            },
            flow: Flow { max_outstanding_messages: max, max_outstanding_bytes: 0 },
            session_timeout_ms: None,
            client_id: client.map(|c| format!("client-{c}")),
            ops: Vec::new(),
        },
        Op::StreamAcks { stream, delivery, nack } => {
            let op = if nack { AckOp::nack() } else { AckOp::Ack };
            Command::StreamRequest { stream: seen.stream(stream), ops: vec![(op, vec![seen.ack_id(delivery)])] }
        }
        Op::Close { stream, leave: false } => Command::CloseStream { stream: seen.stream(stream) },
        Op::Close { stream, leave: true } => Command::LeaveStream { stream: seen.stream(stream) },
        Op::Pull { max } => Command::Pull { subscription: "s".into(), max_messages: max },
        Op::Acks { delivery, op } => Command::Acks {
            subscription: "s".into(),
            op: match op {
                0 | 1 => AckOp::Ack,
                2 => AckOp::Nack { delay_ms: Some(100), terminal: false, reason: Some("no".into()) },
                _ => AckOp::ModifyDeadline { deadline_ms: 2000 },
            },
            ack_ids: vec![seen.ack_id(delivery)],
        },
        Op::Advance { .. } => Command::Tick,
        Op::Seek { target } => Command::Seek {
            subscription: "s".into(),
            target: match target {
                0 => SeekTarget::Earliest,
                1 => SeekTarget::Latest,
                _ => SeekTarget::Offsets(vec![(0, 1)]),
            },
        },
        Op::Redrive => Command::Redrive { subscription: "dead".into(), max_messages: 0 },
        Op::Sync => Command::Sync,
        Op::Checkpoint => Command::Checkpoint,
        Op::DeleteTopic { force } => Command::DeleteTopic { name: "other".into(), force },
        Op::AckFloors { uid, partition, offset } => {
            Command::AckFloors(vec![AckFloor { subscription: "s".into(), uid, partition, offset, moves: 0 }])
        }
        Op::Lead { term } => Command::Lead { term },
        Op::Commit => unreachable!("taken from the broker's decisions"),
    }
}

/// The commands that set the scene: topics, a subscription with a retry and dead-letter
/// policy, the dead-letter subscription.
fn setup() -> Vec<Command> {
    let spec = |name: &str, topic: &str| SubscriptionSpec {
        name: name.into(),
        topic: topic.into(),
        ack_deadline_ms: Some(1000),
        start: StartPosition::Earliest,
        retry: None,
        dead_letter: None,
        ordered: false,
        delivery_mode: DeliveryMode::Shared,
    };
    vec![
        Command::CreateTopic { name: "t".into(), partitions: Some(2), dedupe_window_ms: None },
        Command::CreateTopic { name: "dead-t".into(), partitions: Some(1), dedupe_window_ms: None },
        Command::CreateTopic { name: "other".into(), partitions: None, dedupe_window_ms: None },
        Command::CreateSubscription(SubscriptionSpec {
            retry: Some(RetrySpec { minimum_backoff_ms: Some(100), maximum_backoff_ms: Some(400) }),
            dead_letter: Some(DeadLetterSpec { topic: "dead-t".into(), max_delivery_attempts: Some(2) }),
            ..spec("s", "t")
        }),
        Command::CreateSubscription(spec("dead", "dead-t")),
        Command::CreateSubscription(spec("o", "other")),
    ]
}

/// A recording's frame for one entry, and the command read back from it.
fn through_a_frame(at: At, command: &Command) -> Command {
    let entry = pb::Entry {
        seq: 1,
        now_ms: at.now_ms,
        wall_ms: at.wall_ms,
        command: Some(encode_command(command)),
        ..Default::default()
    };
    let mut bytes = Vec::new();
    frame(&pb::Frame { kind: Some(pb::frame::Kind::Entry(entry)) }.encode_to_vec(), &mut bytes);
    let body = &bytes[FRAME_HEADER..];
    assert_eq!(crc32c::crc32c(body).to_le_bytes(), bytes[4..8]);
    let Some(pb::frame::Kind::Entry(entry)) = pb::Frame::decode(body).unwrap().kind else { panic!("an entry") };
    assert_eq!((entry.now_ms, entry.wall_ms), (at.now_ms, at.wall_ms));
    decode_command(entry.command.unwrap()).unwrap()
}

fn broker() -> Broker {
    Broker::new(BrokerConfig::default(), Box::new(MemoryStorage)).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn a_recorded_sequence_replays_to_the_same_replies_outputs_and_state(
        ops in proptest::collection::vec(op(), 1..120),
        snapshot_at in 0usize..130,
    ) {
        let (mut recorded, mut replayed) = (broker(), broker());
        let mut seen = Seen::default();
        let mut at = At { now_ms: 1_000, wall_ms: 1_700_000_000_000 };
        let steps = setup().into_iter().map(Some).chain(ops.iter().map(|_| None)).enumerate();
        let mut ops = ops.iter();
        for (n, setup) in steps {
            let command = match setup {
                Some(command) => command,
                None => {
                    let op = ops.next().expect("one op per step");
                    if let Op::Advance { ms } = op {
                        at.now_ms += ms;
                        at.wall_ms += ms;
                    }
                    if let Op::Commit = op {
                        let _ = replayed.take_decided();
                        recorded.take_decided().into_iter().next().unwrap_or(Command::Tick)
                    } else {
                        command(op, &seen, n)
                    }
                }
            };
            // From here on the replay goes on from a snapshot of the recorded broker, as a
            // recording whose older segments were dropped does.
            if n == snapshot_at {
                let snapshot = recorded.snapshot(usize::MAX).expect("a snapshot without a bound is taken");
                replayed = Broker::from_snapshot(BrokerConfig::default(), Box::new(MemoryStorage), &snapshot)
                    .expect("a snapshot restores");
                prop_assert_eq!(digest_state(&replayed, at.now_ms), digest_state(&recorded, at.now_ms), "step {}", n);
                replayed.assert_invariants();
            }
            let read_back = through_a_frame(at, &command);
            prop_assert_eq!(&read_back, &command);
            // Decide, then apply: a command the check refuses is refused by `handle` with
            // the same error and changes nothing; one it lets through is not refused
            // (the memory log never fails), but for an opening's target.
            let decided = recorded.check(&command);
            let before = digest_state(&recorded, at.now_ms);
            let opening = matches!(command, Command::OpenStream { .. });
            let reply = recorded.handle(at, command);
            let outputs: Vec<Output> = std::iter::from_fn(|| recorded.poll_output()).collect();
            match (&decided, &reply) {
                (Err(refused), _) => {
                    prop_assert_eq!(&reply, &Err(refused.clone()), "step {}", n);
                    prop_assert!(outputs.is_empty(), "step {}: a refused command produced {:?}", n, outputs);
                    prop_assert_eq!(digest_state(&recorded, at.now_ms), before, "step {}: a refusal changed the state", n);
                }
                (Ok(()), Err(refused)) => prop_assert!(opening, "step {}: checked, then refused: {}", n, refused),
                (Ok(()), Ok(_)) => {}
            }
            let again = replayed.handle(at, read_back);
            let outputs_again: Vec<Output> = std::iter::from_fn(|| replayed.poll_output()).collect();
            prop_assert_eq!(&again, &reply, "step {}", n);
            prop_assert_eq!(&outputs_again, &outputs, "step {}", n);
            seen.observe(&reply, &outputs);
        }
        prop_assert_eq!(digest_state(&replayed, at.now_ms), digest_state(&recorded, at.now_ms));
    }
}
