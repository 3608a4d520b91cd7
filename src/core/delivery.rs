//! Streams, leases and deliveries: who gets which message, and what acks do.

use std::sync::Arc;

use super::admin::SubscriptionSpec;
use super::broker::Broker;
use super::error::BrokerError;
use super::lease::{AckId, AckOp, AckOutcome, AckReply, Lease, StreamId};
use super::name;
use super::retry::Unacked;
use super::subscription::StartPosition;
use super::topic::visible_end;
use super::{Mutation, Notice};
use crate::storage::{Record, StorageError};

/// Unreadable records remembered at once (so a damaged one is not read again at every
/// dispatch, and is reported once). Past it, new ones are still skipped but not remembered.
const READ_FAULTS_MAX: usize = 1024;

/// What a new stream joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamTarget {
    /// An existing subscription, as one more competing member.
    Subscription(String),
    /// A topic, through a new ephemeral subscription deleted when the stream ends.
    Topic { topic: String, ack_deadline_ms: Option<u64>, start: StartPosition },
}

/// A stream's flow control. 0 takes the broker default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flow {
    pub max_outstanding_messages: u32,
    pub max_outstanding_bytes: u64,
}

/// Where a Seek moves a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeekTarget {
    Earliest,
    Latest,
    /// The first message published at or after this wall-clock time, per partition.
    TimeMs(u64),
    /// Explicit offsets for the partitions named.
    Offsets(Vec<(u32, u64)>),
}

/// One leased message, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub ack_id: String,
    pub message_id: String,
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub record: Arc<Record>,
    pub delivery_attempt: u32,
    /// The generation of an exclusive subscription the lease was made in; 0 when shared.
    pub generation: u64,
}

impl Delivery {
    /// An upper bound of this delivery's size on the wire, envelope included: what
    /// `response_bytes_max` counts.
    pub fn encoded_len_max(&self) -> usize {
        encoded_len_max(&self.topic, &self.record)
    }
}

/// Bytes a delivery may take on the wire beyond its payload: the ack id and message id (at
/// most 83 and 62 characters), offsets, attempt, publish time and field framing.
const DELIVERY_ENVELOPE_BYTES_MAX: usize = 200;
/// Framing of one attribute map entry (tags and lengths), beyond its key and value.
const ATTRIBUTE_ENVELOPE_BYTES_MAX: usize = 12;

fn encoded_len_max(topic: &str, record: &Record) -> usize {
    let framing = DELIVERY_ENVELOPE_BYTES_MAX + topic.len() + ATTRIBUTE_ENVELOPE_BYTES_MAX * record.attributes.len();
    record.size_bytes() + framing
}

/// What the broker tells its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Messages for a stream, in delivery order.
    Deliver { stream: StreamId, deliveries: Vec<Delivery> },
    /// The broker ended a stream (its subscription was deleted, its session timed out, or
    /// a newer stream of its client took over); it gets no more outputs.
    EndStream { stream: StreamId, reason: BrokerError },
    /// A member of an exclusive subscription holds `partitions` from `generation` on.
    Assignment { stream: StreamId, generation: u64, partitions: Vec<u32> },
    /// A stored record could not be read (a disk error, or a CRC mismatch). It is not
    /// delivered, and its partition's deliveries wait at it; told once per record.
    ReadFailed { topic: String, partition: u32, offset: u64, error: StorageError },
}

/// A stream's membership and flow-control accounting.
#[derive(Debug, Clone)]
pub(super) struct StreamState {
    pub subscription_uid: u64,
    /// The client it named (see `client_id`); `None` without one, and on ephemeral
    /// subscriptions, which end with their stream.
    pub client_id: Option<String>,
    pub max_outstanding_messages: u32,
    pub max_outstanding_bytes: u64,
    pub outstanding_messages: u32,
    pub outstanding_bytes: u64,
}

impl StreamState {
    /// Room for one more message. A stream with nothing outstanding always has room, so a
    /// message larger than `max_outstanding_bytes` is still delivered, alone.
    pub(super) fn has_room(&self) -> bool {
        self.outstanding_messages == 0
            || (self.outstanding_messages < self.max_outstanding_messages
                && self.outstanding_bytes < self.max_outstanding_bytes)
    }
}

impl Broker {
    /// Opens a stream on a subscription (or a topic, through an ephemeral subscription) and
    /// returns its id and the subscription's name. Deliveries follow as outputs.
    pub fn open_stream(
        &mut self,
        now_ms: u64,
        target: StreamTarget,
        flow: Flow,
    ) -> Result<(StreamId, String), BrokerError> {
        self.open_client_stream(now_ms, target, flow, None)
    }

    /// [`Broker::open_stream`] for a stream that names its client (already checked): it
    /// adopts the leases the client's last stream on the subscription left, or takes over
    /// that stream if it is still open (see `client_id`).
    pub(super) fn open_client_stream(
        &mut self,
        now_ms: u64,
        target: StreamTarget,
        flow: Flow,
        client_id: Option<String>,
    ) -> Result<(StreamId, String), BrokerError> {
        if self.streams.len() >= self.config.streams_max {
            return Err(BrokerError::LimitReached {
                what: "cannot open another Subscribe stream".to_string(),
                limit_name: "streams_max",
                limit: self.config.streams_max as u64,
            });
        }
        let max_messages = self.config.pull_messages_max;
        if flow.max_outstanding_messages > max_messages {
            return Err(BrokerError::InvalidArgument {
                field: "max_outstanding_messages",
                reason: format!("{}; allowed is 1 to {max_messages} (0 = default)", flow.max_outstanding_messages),
            });
        }
        let (uid, client_id) = match target {
            StreamTarget::Subscription(name) => {
                name::check("subscription", &name)?;
                (self.subscription_uid(&name)?, client_id)
            }
            StreamTarget::Topic { topic, ack_deadline_ms, start } => {
                name::check("topic", &topic)?;
                self.topic(&topic)?;
                let name = format!("{}ephemeral.{}", name::RESERVED_PREFIX, self.next_ephemeral);
                let spec = SubscriptionSpec { name: name.clone(), topic, ack_deadline_ms, start, ..Default::default() };
                self.insert_subscription(spec, true)?;
                self.next_ephemeral += 1;
                // The subscription ends with this stream: there is nothing to keep.
                (self.subscription_uid(&name)?, None)
            }
        };
        let id = StreamId(self.next_stream_id);
        self.next_stream_id += 1;
        let or_default = |asked: u64, default: u64| if asked == 0 { default } else { asked };
        self.streams.insert(
            id,
            StreamState {
                subscription_uid: uid,
                client_id,
                max_outstanding_messages: or_default(
                    flow.max_outstanding_messages.into(),
                    self.config.max_outstanding_messages.into(),
                ) as u32,
                max_outstanding_bytes: or_default(flow.max_outstanding_bytes, self.config.max_outstanding_bytes),
                outstanding_messages: 0,
                outstanding_bytes: 0,
            },
        );
        self.seat_member(uid, id);
        let name = self.subscriptions[&uid].name.clone();
        self.join_group(now_ms, uid, id);
        self.dispatch(now_ms, uid);
        self.dispatch_dead_letters(now_ms);
        Ok((id, name))
    }

    /// The client went away (or its stream failed, or the server ended it): its leases
    /// are released for redelivery to the other members, unless the stream named its
    /// client, whose leases wait for it (see `client_id`). An ephemeral subscription ends
    /// with its stream. Unknown streams are ignored.
    pub fn close_stream(&mut self, now_ms: u64, stream: StreamId) {
        self.remove_member(now_ms, stream, true);
    }

    /// The client said goodbye (a request with `leave`): its leases are released at once,
    /// as [`Broker::close_stream`] does for a stream without a client id, whether it named
    /// its client or not. Unknown streams are ignored.
    pub fn leave_stream(&mut self, now_ms: u64, stream: StreamId) {
        self.remove_member(now_ms, stream, false);
    }

    fn remove_member(&mut self, now_ms: u64, stream: StreamId, keep_leases: bool) {
        let Some(state) = self.streams.remove(&stream) else { return };
        let uid = state.subscription_uid;
        let sub = self.subscriptions.get_mut(&uid).expect("a stream's subscription exists");
        sub.members.retain(|m| *m != stream);
        if sub.ephemeral && sub.members.is_empty() {
            let subscription = sub.name.clone();
            self.remove_subscription(uid);
            self.notice(|_| Notice::SubscriptionDeleted { subscription });
            return;
        }
        if !self.detach(stream, state, keep_leases) {
            self.release_leases(now_ms, uid, stream);
        }
        self.leave_group(now_ms, uid, stream);
        self.dispatch(now_ms, uid);
        self.dispatch_dead_letters(now_ms);
    }

    /// Ends the leases of a closed stream, for redelivery to the other members.
    fn release_leases(&mut self, now_ms: u64, uid: u64, stream: StreamId) {
        let sub = &self.subscriptions[&uid];
        let mut released = Vec::new();
        for (partition, cursor) in sub.cursors.iter().enumerate() {
            let leased = cursor.leased.iter().filter(|(_, l)| l.stream == Some(stream));
            released.extend(leased.map(|(offset, _)| (partition as u32, *offset)));
        }
        if !released.is_empty() {
            let leases = released.clone();
            self.notice(|b| Notice::LeasesReleased {
                subscription: b.subscriptions[&uid].name.clone(),
                stream,
                leases,
            });
        }
        for (partition, offset) in released {
            self.end_unacked(now_ms, uid, partition, offset, &Unacked::StreamClosed);
        }
    }

    /// Applies the acks, nacks and deadline changes that arrived on `stream`, in order.
    /// All of them are checked first: a refused request applies none.
    pub fn stream_acks(
        &mut self,
        now_ms: u64,
        stream: StreamId,
        ops: Vec<(AckOp, Vec<String>)>,
    ) -> Result<Vec<AckReply>, BrokerError> {
        for (op, _) in &ops {
            self.check_deadline(op)?;
        }
        let Some(uid) = self.streams.get(&stream).map(|s| s.subscription_uid) else {
            return Ok(ops.into_iter().flat_map(|(op, ids)| invalid_all(&op, ids)).collect());
        };
        for (op, _) in &ops {
            self.check_terminal(uid, op)?;
        }
        Ok(ops.into_iter().flat_map(|(op, ids)| self.apply_ack_op(now_ms, uid, &op, ids)).collect())
    }

    /// Applies acks, nacks or deadline changes for `subscription` (the unary calls).
    pub fn acks(
        &mut self,
        now_ms: u64,
        subscription: &str,
        op: AckOp,
        ack_ids: Vec<String>,
    ) -> Result<Vec<AckReply>, BrokerError> {
        let uid = self.check_acks(subscription, &op)?;
        Ok(self.apply_ack_op(now_ms, uid, &op, ack_ids))
    }

    /// The deciding half of unary acks: refuses an unknown subscription, a deadline or
    /// delay out of range, a terminal nack without a dead-letter policy; else the
    /// subscription's uid.
    pub(super) fn check_acks(&self, subscription: &str, op: &AckOp) -> Result<u64, BrokerError> {
        name::check("subscription", subscription)?;
        self.check_deadline(op)?;
        let uid = self.subscription_uid(subscription)?;
        self.check_terminal(uid, op)?;
        Ok(uid)
    }

    /// The deciding half of a stream's request: its deadlines and delays in range, and no
    /// terminal nack where the stream's subscription has no dead-letter policy. (A stream
    /// that is gone answers every id invalid; that is not a refusal.)
    pub(super) fn check_stream_request(
        &self,
        stream: StreamId,
        ops: &[(AckOp, Vec<String>)],
    ) -> Result<(), BrokerError> {
        for (op, _) in ops {
            self.check_deadline(op)?;
        }
        if let Some(uid) = self.streams.get(&stream).map(|s| s.subscription_uid) {
            for (op, _) in ops {
                self.check_terminal(uid, op)?;
            }
        }
        Ok(())
    }

    /// Refuses a deadline change past `ack_deadline_max_ms`, a nack delay past
    /// `nack_delay_max_ms` and a nack reason past `nack_reason_bytes_max`.
    fn check_deadline(&self, op: &AckOp) -> Result<(), BrokerError> {
        let max = self.config.ack_deadline_max_ms;
        let delay_max = self.config.nack_delay_max_ms;
        let reason_max = self.config.nack_reason_bytes_max;
        match op {
            AckOp::ModifyDeadline { deadline_ms } if *deadline_ms > max => Err(BrokerError::InvalidArgument {
                field: "ack_deadline_seconds",
                reason: format!("{} s; allowed is 0 to {} s", deadline_ms / 1000, max / 1000),
            }),
            AckOp::Nack { delay_ms: Some(delay), .. } if *delay > delay_max => Err(BrokerError::InvalidArgument {
                field: "delay",
                reason: format!(
                    "{delay} ms (nack_delay on a Subscribe stream); allowed is 0 to {delay_max} ms (nack_delay_max_ms)"
                ),
            }),
            AckOp::Nack { reason: Some(reason), .. } if reason.len() > reason_max => {
                Err(BrokerError::InvalidArgument {
                    field: "reason",
                    reason: format!(
                        "{} bytes (nack_reason on a Subscribe stream); the limit is nack_reason_bytes_max = {reason_max}",
                        reason.len()
                    ),
                })
            }
            _ => Ok(()),
        }
    }

    /// Checks what the first request of a stream carries before the stream opens, so a
    /// refused first request opens nothing: deadline changes and nack delays in range, and
    /// no terminal nack where the target has no dead-letter policy (an ephemeral
    /// subscription never has one). An unknown subscription is left for `open_stream`.
    pub fn check_stream_ops(&self, target: &StreamTarget, ops: &[(AckOp, Vec<String>)]) -> Result<(), BrokerError> {
        for (op, _) in ops {
            self.check_deadline(op)?;
            if !matches!(op, AckOp::Nack { terminal: true, .. }) {
                continue;
            }
            match target {
                StreamTarget::Subscription(name) => {
                    if let Ok(sub) = self.subscription_by_name(name) {
                        self.check_terminal(sub.uid, op)?;
                    }
                }
                StreamTarget::Topic { topic, .. } => {
                    let subscription = format!("(an ephemeral subscription on topic `{topic}`)");
                    return Err(BrokerError::NoDeadLetterPolicy { subscription });
                }
            }
        }
        Ok(())
    }

    /// Refuses a terminal nack on a subscription with nowhere to put the message.
    fn check_terminal(&self, uid: u64, op: &AckOp) -> Result<(), BrokerError> {
        let sub = &self.subscriptions[&uid];
        match op {
            AckOp::Nack { terminal: true, .. } if sub.dead_letter.is_none() => {
                Err(BrokerError::NoDeadLetterPolicy { subscription: sub.name.clone() })
            }
            _ => Ok(()),
        }
    }

    /// Applies `op` to each ack id; the ids move into the replies.
    fn apply_ack_op(&mut self, now_ms: u64, uid: u64, op: &AckOp, ack_ids: Vec<String>) -> Vec<AckReply> {
        let replies = ack_ids
            .into_iter()
            .map(|ack_id| {
                let outcome = self.apply_one(now_ms, uid, op, &ack_id);
                AckReply { ack_id, op: op.clone(), outcome }
            })
            .collect();
        self.dispatch(now_ms, uid);
        self.dispatch_dead_letters(now_ms);
        replies
    }

    fn apply_one(&mut self, now_ms: u64, uid: u64, op: &AckOp, text: &str) -> AckOutcome {
        let Some(id) = AckId::parse(text) else { return AckOutcome::Invalid };
        let issued = self.next_lease_seq;
        let sub = self.subscriptions.get_mut(&uid).expect("caller resolved the subscription");
        let Some(cursor) = sub.cursors.get_mut(id.partition as usize) else { return AckOutcome::Invalid };
        if id.subscription_uid != uid || id.offset >= cursor.high || id.seq >= issued {
            return AckOutcome::Invalid;
        }
        let Some(lease) = cursor.leased.get(&id.offset) else { return AckOutcome::Expired };
        if lease.seq != id.seq || lease.deadline_ms <= now_ms {
            return AckOutcome::Expired;
        }
        let old_key = (lease.deadline_ms, uid, id.partition, id.offset);
        let config = &self.config;
        let unacked = match op {
            AckOp::Ack if config.mutated(Mutation::AckNotRecorded) => return AckOutcome::Applied,
            AckOp::Ack if config.mutated(Mutation::InvariantBroken) => {
                self.deadlines.remove(&old_key);
                return AckOutcome::Applied;
            }
            AckOp::Ack if config.mutated(Mutation::RedeliveryAfterAck) => {
                Some(Unacked::Nacked { delay_ms: None, terminal: false, reason: None })
            }
            AckOp::Ack => None,
            AckOp::Nack { delay_ms, terminal, reason } => {
                Some(Unacked::Nacked { delay_ms: *delay_ms, terminal: *terminal, reason: reason.clone() })
            }
            AckOp::ModifyDeadline { deadline_ms: 0 } => {
                Some(Unacked::Nacked { delay_ms: None, terminal: false, reason: None })
            }
            AckOp::ModifyDeadline { deadline_ms } => {
                let lease = cursor.leased.get_mut(&id.offset).expect("lease found above");
                lease.deadline_ms = now_ms.saturating_add(*deadline_ms);
                let new_key = (lease.deadline_ms, uid, id.partition, id.offset);
                self.deadlines.remove(&old_key);
                self.deadlines.insert(new_key);
                return AckOutcome::Applied;
            }
        };
        match unacked {
            None => {
                let lease = cursor.ack(id.offset).expect("lease found above");
                sub.counts.acked += 1;
                self.deadlines.remove(&old_key);
                self.uncount(&lease);
            }
            Some(why) => {
                if !matches!(op, AckOp::Ack) {
                    sub.counts.nacked += 1;
                }
                self.end_unacked(now_ms, uid, id.partition, id.offset, &why);
            }
        }
        AckOutcome::Applied
    }

    /// Takes an ended lease off its stream's flow-control accounting (or off the detached
    /// leases its client left).
    pub(super) fn uncount(&mut self, lease: &Lease) {
        let Some(stream) = lease.stream else { return };
        match self.streams.get_mut(&stream) {
            Some(state) => {
                state.outstanding_messages -= 1;
                state.outstanding_bytes -= lease.bytes;
            }
            None => self.uncount_detached(stream, lease.bytes),
        }
    }

    /// How many messages a request for `max_messages` takes: 0 means 100, and past
    /// `pull_messages_max` is refused.
    pub(super) fn batch_size(&self, max_messages: u32) -> Result<u32, BrokerError> {
        let limit = self.config.pull_messages_max;
        if max_messages > limit {
            return Err(BrokerError::InvalidArgument {
                field: "max_messages",
                reason: format!("{max_messages}; allowed is 1 to {limit} (0 = 100)"),
            });
        }
        Ok(if max_messages == 0 { 100.min(limit) } else { max_messages })
    }

    /// Leases up to `max_messages` (0 = 100) available messages of `subscription` now.
    pub fn pull(&mut self, now_ms: u64, subscription: &str, max_messages: u32) -> Result<Vec<Delivery>, BrokerError> {
        name::check("subscription", subscription)?;
        let max = self.batch_size(max_messages)?;
        let uid = self.subscription_uid(subscription)?;
        let mut out: Vec<Delivery> = Vec::new();
        let mut room = self.config.response_bytes_max;
        while out.len() < max as usize {
            // The first message always fits; later ones only while the response has room.
            let budget = (!out.is_empty()).then_some(room);
            let Some(delivery) = self.lease_next(now_ms, uid, None, budget) else { break };
            room = room.saturating_sub(delivery.encoded_len_max());
            out.push(delivery);
        }
        if out.is_empty() {
            if let Some(error) = self.blocking_read_fault(uid) {
                return Err(BrokerError::Storage(error));
            }
        }
        Ok(out)
    }

    /// The storage error that holds back one of the subscription's partitions, if any.
    fn blocking_read_fault(&self, uid: u64) -> Option<StorageError> {
        let sub = &self.subscriptions[&uid];
        let topic = self.topics.get(&sub.topic)?;
        topic.logs.iter().zip(&sub.cursors).enumerate().find_map(|(p, (log, cursor))| {
            let offset = cursor.next_to_deliver(visible_end(log.as_ref(), self.after_sync))?;
            self.read_faults.get(&(topic.uid, p as u32, offset)).cloned()
        })
    }

    /// Moves `subscription` to `target` on every partition it names. Outstanding leases
    /// there end (their ack ids become expired). Returns each partition's committed offset.
    pub fn seek(
        &mut self,
        now_ms: u64,
        subscription: &str,
        target: SeekTarget,
    ) -> Result<Vec<(u32, u64)>, BrokerError> {
        let (uid, moves) = self.check_seek(subscription, &target)?;
        for &(partition, offset) in &moves {
            let cursor = &mut self.subscriptions.get_mut(&uid).expect("resolved above").cursors[partition as usize];
            let dropped = cursor.reset(offset);
            for (leased, lease) in dropped.leases {
                self.deadlines.remove(&(lease.deadline_ms, uid, partition, leased));
                self.uncount(&lease);
            }
            self.forget_backoffs(uid, partition, &dropped.delayed);
        }
        self.notice(|b| Notice::Seeked {
            subscription: subscription.to_string(),
            to: moves,
            lease_seq: b.next_lease_seq,
        });
        self.dispatch(now_ms, uid);
        let sub = &self.subscriptions[&uid];
        Ok(sub.cursors.iter().enumerate().map(|(p, c)| (p as u32, c.committed)).collect())
    }

    /// The deciding half of a seek: refuses one that cannot be applied (an unknown
    /// subscription, a partition or offset out of range), changing nothing; else the
    /// subscription's uid and the offset each partition it moves is owed from.
    pub(super) fn check_seek(
        &self,
        subscription: &str,
        target: &SeekTarget,
    ) -> Result<(u64, Vec<(u32, u64)>), BrokerError> {
        name::check("subscription", subscription)?;
        let uid = self.subscription_uid(subscription)?;
        let sub = &self.subscriptions[&uid];
        let topic = self.topic(&sub.topic)?;
        let mut moves: Vec<(u32, u64)> = Vec::new();
        for (p, log) in topic.logs.iter().enumerate() {
            let offset = match target {
                SeekTarget::Earliest => log.start_offset(),
                SeekTarget::Latest => visible_end(log.as_ref(), self.after_sync),
                SeekTarget::TimeMs(time) => log.offset_for_time(*time)?.min(visible_end(log.as_ref(), self.after_sync)),
                SeekTarget::Offsets(_) => continue,
            };
            moves.push((p as u32, offset));
        }
        if let SeekTarget::Offsets(offsets) = target {
            for (i, &(partition, offset)) in offsets.iter().enumerate() {
                let Some(log) = topic.logs.get(partition as usize) else {
                    return Err(BrokerError::PartitionOutOfRange {
                        field: format!("offsets[{i}].partition"),
                        topic: topic.name.clone(),
                        partition,
                        partitions: topic.partition_count(),
                    });
                };
                let (start, end) = (log.start_offset(), visible_end(log.as_ref(), self.after_sync));
                if !(start..=end).contains(&offset) {
                    return Err(BrokerError::InvalidArgument {
                        field: "offsets.offset",
                        reason: format!(
                            "offset {offset} of partition {partition} is outside the retained range {start} to {end}"
                        ),
                    });
                }
                moves.push((partition, offset));
            }
        }
        Ok((uid, moves))
    }

    /// Expires every lease whose deadline is at or before `now_ms` (the messages are
    /// redelivered with the next attempt number, after their backoff, or dead-lettered),
    /// and ends every backoff due by then. First, members of exclusive subscriptions that
    /// were silent past their session timeout leave (their streams end).
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.expire_sessions(now_ms);
        let mut touched = Vec::new();
        while let Some(&(deadline, uid, partition, offset)) = self.deadlines.first() {
            if deadline > now_ms {
                break;
            }
            self.end_unacked(now_ms, uid, partition, offset, &Unacked::Expired);
            touched.push(uid);
        }
        touched.extend(self.wake_backoffs(now_ms));
        touched.sort_unstable();
        touched.dedup();
        for uid in touched {
            self.dispatch(now_ms, uid);
        }
        self.dispatch_dead_letters(now_ms);
    }

    /// Retention moved the start of `partition` to `start`: every subscription forgets the
    /// offsets below it, and leases on them end (later acks of them are expired).
    pub(super) fn retention_moved(&mut self, topic: &str, partition: u32, start: u64) {
        let uids: Vec<u64> = self.topics[topic].subscriptions.iter().map(|name| self.subscription_uids[name]).collect();
        for uid in uids {
            let cursor =
                &mut self.subscriptions.get_mut(&uid).expect("attached subscription").cursors[partition as usize];
            let dropped = cursor.skip_to_log_start(start);
            for (offset, lease) in dropped.leases {
                self.deadlines.remove(&(lease.deadline_ms, uid, partition, offset));
                self.uncount(&lease);
            }
            self.forget_backoffs(uid, partition, &dropped.delayed);
        }
    }

    pub(super) fn dispatch_topic(&mut self, now_ms: u64, topic: &str) {
        let uids: Vec<u64> = self.topics[topic].subscriptions.iter().map(|name| self.subscription_uids[name]).collect();
        for uid in uids {
            self.dispatch(now_ms, uid);
        }
    }

    /// Hands available messages to the members with room, round-robin, one message at a
    /// time, until no member has room or no message is left. Bounded by the members' free
    /// flow-control room. A member's messages go out in batches of at most
    /// `response_bytes_max` (one message always fits).
    pub(super) fn dispatch(&mut self, now_ms: u64, uid: u64) {
        if self.subscriptions[&uid].group.is_some() {
            return self.dispatch_exclusive(now_ms, uid);
        }
        let mut batches: Vec<(StreamId, Vec<Delivery>, usize)> = Vec::new();
        loop {
            let sub = &self.subscriptions[&uid];
            let count = sub.members.len();
            let ignore_flow = self.config.mutated(Mutation::FlowControlIgnored);
            let Some(member) = (0..count)
                .map(|i| sub.members[(sub.next_member + i) % count])
                .find(|m| ignore_flow || self.streams[m].has_room())
            else {
                break;
            };
            let Some(delivery) = self.lease_next(now_ms, uid, Some(member), None) else { break };
            let sub = self.subscriptions.get_mut(&uid).expect("dispatching subscription");
            let index = sub.members.iter().position(|m| *m == member).expect("member found above");
            sub.next_member = (index + 1) % count;
            let size = delivery.encoded_len_max();
            let limit = self.config.response_bytes_max;
            match batches.iter_mut().rev().find(|(s, ..)| *s == member) {
                Some((_, batch, bytes)) if *bytes + size <= limit => {
                    *bytes += size;
                    batch.push(delivery);
                }
                _ => batches.push((member, vec![delivery], size)),
            }
        }
        for (stream, deliveries, _) in batches {
            self.outputs.push_back(Output::Deliver { stream, deliveries });
        }
    }

    /// Leases the next available message of the subscription (partitions in turn,
    /// redeliveries first within a partition) to `stream`, or to a puller when `None`.
    /// With a `budget`, a message whose encoded size would pass it is left where it is.
    pub(super) fn lease_next(
        &mut self,
        now_ms: u64,
        uid: u64,
        stream: Option<StreamId>,
        budget: Option<usize>,
    ) -> Option<Delivery> {
        let seq = self.next_lease_seq;
        let after_sync = self.after_sync;
        let parked_max = self.config.ordered_parked_messages_max;
        let sub = self.subscriptions.get_mut(&uid).expect("leasing subscription");
        let topic = self.topics.get(&sub.topic).expect("a subscription's topic exists");
        let partitions = topic.partition_count();
        for i in 0..partitions {
            let partition = (sub.next_partition + i) % partitions;
            if !sub.may_lease(partition, stream) {
                continue;
            }
            let log = &topic.logs[partition as usize];
            let cursor = &mut sub.cursors[partition as usize];
            let end = visible_end(log.as_ref(), after_sync);
            // Parking an offset behind its key moves the cursor on, so look again; each
            // pass parks one more, up to the bound.
            let found = loop {
                let Some(offset) = cursor.next_to_deliver(end) else { break None };
                // A record that failed its CRC stays damaged: it is not read again.
                let fault_key = (topic.uid, partition, offset);
                if matches!(self.read_faults.get(&fault_key), Some(StorageError::Corrupt { .. })) {
                    break None;
                }
                // A storage error leaves the message where it is, undelivered; the other
                // partitions go on. A disk error is retried at the next dispatch.
                let record = match log.read_one(offset) {
                    Ok(record) => record,
                    Err(error) => {
                        if self.read_faults.len() < READ_FAULTS_MAX && !self.read_faults.contains_key(&fault_key) {
                            self.read_faults.insert(fault_key, error.clone());
                            let topic = topic.name.clone();
                            self.outputs.push_back(Output::ReadFailed { topic, partition, offset, error });
                        }
                        break None;
                    }
                };
                self.read_faults.remove(&fault_key);
                let Some(record) = record else { break None };
                let unordered = self.config.mutated(Mutation::KeyOrderIgnored);
                let held = record
                    .record
                    .key
                    .as_deref()
                    .filter(|k| sub.ordered && !unordered && cursor.keys.blocked(offset, k));
                match held {
                    Some(key) if cursor.take_over_head(offset, key) => break Some((offset, record)),
                    // Past the bound the partition reads no further for its keys to move. An
                    // offset already pending only moves between sets, so it is parked anyway:
                    // a redriven message must not stop the head it waits for.
                    Some(_) if offset == cursor.next && cursor.keys.parked_len() >= parked_max => break None,
                    Some(key) => cursor.park(offset, key),
                    None => break Some((offset, record)),
                }
            };
            let Some((offset, record)) = found else { continue };
            if budget.is_some_and(|b| encoded_len_max(&topic.name, &record.record) > b) {
                return None;
            }
            if let Some(key) = record.record.key.as_deref().filter(|_| sub.ordered) {
                // The mutation leases a key's later message beside its head, not as one.
                if !(self.config.mutated(Mutation::KeyOrderIgnored) && cursor.keys.head(key).is_some()) {
                    cursor.keys.deliver(offset, key);
                }
            }
            let deadline_ms = now_ms.saturating_add(sub.ack_deadline_ms);
            let bytes = record.record.size_bytes() as u64;
            let attempt = cursor.lease(offset, Lease { seq, stream, deadline_ms, bytes });
            sub.counts.delivered += 1;
            sub.counts.redelivered += u64::from(attempt > 1);
            sub.next_partition = (partition + 1) % partitions;
            self.next_lease_seq += 1;
            self.deadlines.insert((deadline_ms, uid, partition, offset));
            if let Some(state) = stream.and_then(|s| self.streams.get_mut(&s)) {
                state.outstanding_messages += 1;
                state.outstanding_bytes += bytes;
            }
            let ack_id = AckId { subscription_uid: uid, partition, offset, seq };
            return Some(Delivery {
                ack_id: ack_id.text(),
                message_id: topic.message_id(partition, offset),
                topic: topic.name.clone(),
                partition,
                offset,
                record: record.record,
                delivery_attempt: attempt,
                generation: sub.generation(),
            });
        }
        None
    }

    /// Ends a stream from the broker's side, telling the driver why.
    pub(super) fn end_stream(&mut self, stream: StreamId, reason: BrokerError) {
        if let Some(state) = self.streams.remove(&stream) {
            if let Some(sub) = self.subscriptions.get_mut(&state.subscription_uid) {
                sub.members.retain(|m| *m != stream);
                if let Some(client_id) = &state.client_id {
                    sub.clients.remove(client_id);
                }
            }
            self.outputs.push_back(Output::EndStream { stream, reason });
        }
    }

    /// Removes a subscription with no members left, and every lease it held.
    pub(super) fn remove_subscription(&mut self, uid: u64) {
        let sub = self.subscriptions.remove(&uid).expect("removing a known subscription");
        assert!(sub.members.is_empty(), "subscription {} removed with open streams", sub.name);
        for stream in sub.clients.values() {
            self.detached.remove(stream);
        }
        for (partition, cursor) in sub.cursors.iter().enumerate() {
            for (offset, lease) in &cursor.leased {
                self.deadlines.remove(&(lease.deadline_ms, uid, partition as u32, *offset));
            }
            for (offset, ready) in &cursor.delayed {
                self.backoffs.remove(&(*ready, uid, partition as u32, *offset));
            }
        }
        self.subscription_uids.remove(&sub.name);
        if let Some(topic) = self.topics.get_mut(&sub.topic) {
            topic.subscriptions.remove(&sub.name);
        }
    }
}

fn invalid_all(op: &AckOp, ack_ids: Vec<String>) -> Vec<AckReply> {
    ack_ids.into_iter().map(|ack_id| AckReply { ack_id, op: op.clone(), outcome: AckOutcome::Invalid }).collect()
}
