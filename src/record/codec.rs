//! Commands to and from their protobuf form (`proto/record.proto`).

use super::pb;
use super::pb::{ack_op, command::Kind, open_stream, seek};
use crate::core::{
    AckFloor, AckOp, Command, DeadLetterMove, DeadLetterSpec, DeliveryMode, Flow, OutgoingMessage, RetrySpec,
    SeekTarget, StartPosition, StreamId, StreamTarget, SubscriptionSpec,
};
use crate::storage::Record;

/// The protobuf form of a command, by reference (a copy; see [`into_pb`]).
pub fn encode(command: &Command) -> pb::Command {
    into_pb(command.clone())
}

/// The protobuf form of a command, moving its fields (no copy): [`decode`] moves them
/// back.
pub fn into_pb(command: Command) -> pb::Command {
    let kind = match command {
        Command::Publish { topic, messages } => {
            Kind::Publish(pb::Publish { topic, messages: messages.into_iter().map(message).collect() })
        }
        Command::CreateTopic { name, partitions, dedupe_window_ms } => {
            Kind::CreateTopic(pb::CreateTopic { name, partitions, dedupe_window_ms, uid: None })
        }
        Command::DeleteTopic { name, force } => Kind::DeleteTopic(pb::DeleteTopic { name, force }),
        Command::CreateSubscription(spec) => Kind::CreateSubscription(pb::CreateSubscription {
            start: start(spec.start).into(),
            exclusive: spec.delivery_mode == DeliveryMode::Exclusive,
            name: spec.name,
            topic: spec.topic,
            ack_deadline_ms: spec.ack_deadline_ms,
            retry: spec.retry.map(|r| pb::RetrySpec {
                minimum_backoff_ms: r.minimum_backoff_ms,
                maximum_backoff_ms: r.maximum_backoff_ms,
            }),
            dead_letter: spec
                .dead_letter
                .map(|d| pb::DeadLetterSpec { topic: d.topic, max_delivery_attempts: d.max_delivery_attempts }),
            ordered: spec.ordered,
            uid: None,
            start_offsets: Vec::new(),
        }),
        Command::DeleteSubscription { name } => Kind::DeleteSubscription(pb::DeleteSubscription { name }),
        Command::OpenStream { target, flow, session_timeout_ms, client_id, ops } => {
            let target = match target {
                StreamTarget::Subscription(name) => open_stream::Target::Subscription(name),
                StreamTarget::Topic { topic, ack_deadline_ms, start: from } => {
                    open_stream::Target::Topic(pb::TopicTarget { topic, ack_deadline_ms, start: start(from).into() })
                }
            };
            Kind::OpenStream(pb::OpenStream {
                target: Some(target),
                max_outstanding_messages: flow.max_outstanding_messages,
                max_outstanding_bytes: flow.max_outstanding_bytes,
                session_timeout_ms,
                client_id,
                ops: ack_ops(ops),
            })
        }
        Command::StreamRequest { stream, ops } => {
            Kind::StreamRequest(pb::StreamRequest { stream: stream.0, ops: ack_ops(ops) })
        }
        Command::CloseStream { stream } => Kind::CloseStream(stream.0),
        Command::LeaveStream { stream } => Kind::LeaveStream(stream.0),
        Command::Pull { subscription, max_messages } => Kind::Pull(pb::Pull { subscription, max_messages }),
        Command::Acks { subscription, op, ack_ids } => {
            Kind::Acks(pb::Acks { subscription, op: Some(ack_op(op)), ack_ids })
        }
        Command::Seek { subscription, target } => {
            let target = match target {
                SeekTarget::Earliest => seek::Target::Earliest(pb::Empty {}),
                SeekTarget::Latest => seek::Target::Latest(pb::Empty {}),
                SeekTarget::TimeMs(ms) => seek::Target::TimeMs(ms),
                SeekTarget::Offsets(offsets) => seek::Target::Offsets(pb::Offsets {
                    offsets: offsets
                        .into_iter()
                        .map(|(partition, offset)| pb::PartitionOffset { partition, offset })
                        .collect(),
                }),
            };
            Kind::Seek(pb::Seek { subscription, target: Some(target) })
        }
        Command::Redrive { subscription, max_messages } => Kind::Redrive(pb::Redrive { subscription, max_messages }),
        Command::Tick => Kind::Tick(pb::Empty {}),
        Command::Sync => Kind::Sync(pb::Empty {}),
        Command::Retention => Kind::Retention(pb::Empty {}),
        Command::Checkpoint => Kind::Checkpoint(pb::Empty {}),
        Command::AckFloors(floors) => Kind::AckFloors(floors_pb(floors)),
        Command::Lead { term } => Kind::Lead(term),
        Command::DeadLetters(moves) => Kind::DeadLetters(moves_pb(moves)),
        Command::RedriveCopies { subscription, uid, copies } => Kind::RedriveCopies(pb::RedriveCopies {
            subscription,
            uid,
            copies: copies.into_iter().map(|(partition, offset)| pb::PartitionOffset { partition, offset }).collect(),
        }),
    };
    pb::Command { kind: Some(kind) }
}

/// The command a protobuf form names; an error says which field is missing or wrong.
pub fn decode(command: pb::Command) -> Result<Command, String> {
    let kind = command.kind.ok_or("command: no kind set")?;
    Ok(match kind {
        Kind::Publish(p) => Command::Publish {
            topic: p.topic,
            messages: p
                .messages
                .into_iter()
                .map(|m| OutgoingMessage {
                    value: m.value,
                    key: m.key,
                    attributes: m.attributes,
                    partition: m.partition,
                    idempotency_key: m.idempotency_key,
                })
                .collect(),
        },
        Kind::CreateTopic(c) => {
            Command::CreateTopic { name: c.name, partitions: c.partitions, dedupe_window_ms: c.dedupe_window_ms }
        }
        Kind::DeleteTopic(d) => Command::DeleteTopic { name: d.name, force: d.force },
        Kind::CreateSubscription(c) => Command::CreateSubscription(SubscriptionSpec {
            start: start_of(c.start()),
            name: c.name,
            topic: c.topic,
            ack_deadline_ms: c.ack_deadline_ms,
            retry: c.retry.map(|r| RetrySpec {
                minimum_backoff_ms: r.minimum_backoff_ms,
                maximum_backoff_ms: r.maximum_backoff_ms,
            }),
            dead_letter: c
                .dead_letter
                .map(|d| DeadLetterSpec { topic: d.topic, max_delivery_attempts: d.max_delivery_attempts }),
            ordered: c.ordered,
            delivery_mode: if c.exclusive { DeliveryMode::Exclusive } else { DeliveryMode::Shared },
        }),
        Kind::DeleteSubscription(d) => Command::DeleteSubscription { name: d.name },
        Kind::OpenStream(o) => Command::OpenStream {
            target: match o.target.ok_or("open_stream.target: not set")? {
                open_stream::Target::Subscription(name) => StreamTarget::Subscription(name),
                open_stream::Target::Topic(t) => StreamTarget::Topic {
                    start: start_of(t.start()),
                    topic: t.topic,
                    ack_deadline_ms: t.ack_deadline_ms,
                },
            },
            flow: Flow {
                max_outstanding_messages: o.max_outstanding_messages,
                max_outstanding_bytes: o.max_outstanding_bytes,
            },
            session_timeout_ms: o.session_timeout_ms,
            client_id: o.client_id,
            ops: ack_ops_of(o.ops)?,
        },
        Kind::StreamRequest(s) => Command::StreamRequest { stream: StreamId(s.stream), ops: ack_ops_of(s.ops)? },
        Kind::CloseStream(stream) => Command::CloseStream { stream: StreamId(stream) },
        Kind::LeaveStream(stream) => Command::LeaveStream { stream: StreamId(stream) },
        Kind::Pull(p) => Command::Pull { subscription: p.subscription, max_messages: p.max_messages },
        Kind::Acks(a) => Command::Acks {
            subscription: a.subscription,
            op: ack_op_of(a.op.ok_or("acks.op: not set")?)?,
            ack_ids: a.ack_ids,
        },
        Kind::Seek(s) => Command::Seek { subscription: s.subscription, target: seek_target_of(s.target)? },
        Kind::Redrive(r) => Command::Redrive { subscription: r.subscription, max_messages: r.max_messages },
        Kind::Tick(_) => Command::Tick,
        Kind::Sync(_) => Command::Sync,
        Kind::Retention(_) => Command::Retention,
        Kind::Checkpoint(_) => Command::Checkpoint,
        Kind::AckFloors(a) => Command::AckFloors(floors_of(a)),
        Kind::Lead(term) => Command::Lead { term },
        Kind::DeadLetters(d) => Command::DeadLetters(moves_of(d)?),
        Kind::RedriveCopies(r) => Command::RedriveCopies {
            subscription: r.subscription,
            uid: r.uid,
            copies: r.copies.into_iter().map(|c| (c.partition, c.offset)).collect(),
        },
        Kind::KeysUsed(_) => return Err("keys_used: a metadata journal entry, not a broker input".to_string()),
    })
}

fn seek_target_of(target: Option<seek::Target>) -> Result<SeekTarget, String> {
    Ok(match target.ok_or("seek.target: not set")? {
        seek::Target::Earliest(_) => SeekTarget::Earliest,
        seek::Target::Latest(_) => SeekTarget::Latest,
        seek::Target::TimeMs(ms) => SeekTarget::TimeMs(ms),
        seek::Target::Offsets(o) => {
            SeekTarget::Offsets(o.offsets.into_iter().map(|p| (p.partition, p.offset)).collect())
        }
    })
}

fn floors_pb(floors: Vec<AckFloor>) -> pb::AckFloors {
    let floors = floors
        .into_iter()
        .map(|f| pb::AckFloor {
            subscription: f.subscription,
            uid: f.uid,
            partition: f.partition,
            offset: f.offset,
            moves: f.moves,
        })
        .collect();
    pb::AckFloors { floors }
}

fn moves_pb(moves: Vec<DeadLetterMove>) -> pb::DeadLetters {
    let moves = moves
        .into_iter()
        .map(|m| pb::DeadLetterMove {
            subscription: m.subscription,
            uid: m.uid,
            partition: m.partition,
            offset: m.offset,
            copy: Some(pb::Message {
                value: m.copy.value,
                key: m.copy.key,
                attributes: m.copy.attributes,
                ..Default::default()
            }),
            publish_time_ms: m.copy.publish_time_ms,
            moves: m.moves,
        })
        .collect();
    pb::DeadLetters { moves }
}

fn moves_of(moves: pb::DeadLetters) -> Result<Vec<DeadLetterMove>, String> {
    moves
        .moves
        .into_iter()
        .map(|m| {
            let copy = m.copy.ok_or("dead_letters.moves.copy: not set")?;
            Ok(DeadLetterMove {
                subscription: m.subscription,
                uid: m.uid,
                partition: m.partition,
                offset: m.offset,
                copy: Record {
                    key: copy.key,
                    value: copy.value,
                    attributes: copy.attributes,
                    publish_time_ms: m.publish_time_ms,
                    idempotency_key: None,
                },
                moves: m.moves,
            })
        })
        .collect()
}

fn floors_of(floors: pb::AckFloors) -> Vec<AckFloor> {
    let floors = floors.floors.into_iter();
    floors
        .map(|f| AckFloor {
            subscription: f.subscription,
            uid: f.uid,
            partition: f.partition,
            offset: f.offset,
            moves: f.moves,
        })
        .collect()
}

fn message(m: OutgoingMessage) -> pb::Message {
    pb::Message {
        value: m.value,
        key: m.key,
        attributes: m.attributes,
        partition: m.partition,
        idempotency_key: m.idempotency_key,
    }
}

fn start(position: StartPosition) -> pb::StartPosition {
    match position {
        StartPosition::Earliest => pb::StartPosition::StartEarliest,
        StartPosition::Latest => pb::StartPosition::StartLatest,
    }
}

fn start_of(position: pb::StartPosition) -> StartPosition {
    match position {
        pb::StartPosition::StartEarliest => StartPosition::Earliest,
        pb::StartPosition::StartLatest => StartPosition::Latest,
    }
}

fn ack_op(op: AckOp) -> pb::AckOp {
    let kind = match op {
        AckOp::Ack => ack_op::Kind::Ack(pb::Empty {}),
        AckOp::Nack { delay_ms, terminal, reason } => ack_op::Kind::Nack(pb::Nack { delay_ms, terminal, reason }),
        AckOp::ModifyDeadline { deadline_ms } => ack_op::Kind::ModifyDeadlineMs(deadline_ms),
    };
    pb::AckOp { kind: Some(kind) }
}

fn ack_op_of(op: pb::AckOp) -> Result<AckOp, String> {
    Ok(match op.kind.ok_or("ack op: no kind set")? {
        ack_op::Kind::Ack(_) => AckOp::Ack,
        ack_op::Kind::Nack(n) => AckOp::Nack { delay_ms: n.delay_ms, terminal: n.terminal, reason: n.reason },
        ack_op::Kind::ModifyDeadlineMs(deadline_ms) => AckOp::ModifyDeadline { deadline_ms },
    })
}

fn ack_ops(ops: Vec<(AckOp, Vec<String>)>) -> Vec<pb::AckOps> {
    ops.into_iter().map(|(op, ack_ids)| pb::AckOps { op: Some(ack_op(op)), ack_ids }).collect()
}

fn ack_ops_of(ops: Vec<pb::AckOps>) -> Result<Vec<(AckOp, Vec<String>)>, String> {
    ops.into_iter().map(|o| Ok((ack_op_of(o.op.ok_or("ack ops: no op set")?)?, o.ack_ids))).collect()
}
