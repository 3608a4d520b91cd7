//! Acks, nacks and deadline changes: what a client's answer to a delivery does.

use super::broker::Broker;
use super::error::BrokerError;
use super::lease::{AckId, AckOp, AckOutcome, AckReply, StreamId};
use super::name;
use super::retry::Unacked;
use super::stream::StreamTarget;
use super::timers::{MessageKey, Timer};
use super::Mutation;

/// Ack ids one unary Ack, Nack or ModifyAckDeadline may name. Its confirmations (each at
/// most about 80 bytes) then stay under 1 MiB, well inside a default client's 4 MiB; past
/// it the call is refused whole. (A stream's confirmations are split into responses
/// instead, so a stream request has no such bound beyond the request's own size.)
pub const ACK_IDS_PER_CALL_MAX: usize = 10_000;

/// The longest ack id the broker issues: four numbers of at most 20 digits and three dashes
/// (a partition has at most 10). A longer one is refused rather than echoed back.
pub const ACK_ID_CHARS_MAX: usize = 20 + 10 + 20 + 20 + 3;

/// The request field that carries the ids of `op` on a Subscribe stream.
fn stream_field(op: &AckOp) -> &'static str {
    match op {
        AckOp::Ack => "ack_ids",
        AckOp::Nack { .. } => "nack_ids",
        AckOp::ModifyDeadline { .. } => "modify_deadline_ack_ids",
    }
}

/// Refuses an ack id longer than any the broker issues, naming `field` and its index.
fn check_ack_ids(field: &'static str, ids: &[String]) -> Result<(), BrokerError> {
    match ids.iter().position(|id| id.len() > ACK_ID_CHARS_MAX) {
        None => Ok(()),
        Some(i) => Err(BrokerError::InvalidArgument {
            field,
            reason: format!(
                "entry {i} is {} bytes; ack ids are at most {ACK_ID_CHARS_MAX} characters, as deliveries carry them",
                ids[i].len()
            ),
        }),
    }
}

impl Broker {
    /// Applies the acks, nacks and deadline changes that arrived on `stream`, in order.
    /// All of them are checked first: a refused request applies none.
    pub(super) fn stream_acks(
        &mut self,
        now_ms: u64,
        stream: StreamId,
        ops: Vec<(AckOp, Vec<String>)>,
    ) -> Result<Vec<AckReply>, BrokerError> {
        for (op, ids) in &ops {
            self.check_deadline(op)?;
            check_ack_ids(stream_field(op), ids)?;
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
    pub(super) fn acks(
        &mut self,
        now_ms: u64,
        subscription: &str,
        op: AckOp,
        ack_ids: Vec<String>,
    ) -> Result<Vec<AckReply>, BrokerError> {
        let uid = self.check_acks(subscription, &op, &ack_ids)?;
        Ok(self.apply_ack_op(now_ms, uid, &op, ack_ids))
    }

    /// The deciding half of unary acks: refuses an unknown subscription, a deadline or
    /// delay out of range, more than [`ACK_IDS_PER_CALL_MAX`] ids or one longer than any
    /// ack id, a terminal nack without a dead-letter policy; else the subscription's uid.
    pub(super) fn check_acks(&self, subscription: &str, op: &AckOp, ids: &[String]) -> Result<u64, BrokerError> {
        name::check("subscription", subscription)?;
        self.check_deadline(op)?;
        if ids.len() > ACK_IDS_PER_CALL_MAX {
            return Err(BrokerError::InvalidArgument {
                field: "ack_ids",
                reason: format!(
                    "{} ack ids; at most {ACK_IDS_PER_CALL_MAX} in one call (a Subscribe stream takes any number)",
                    ids.len()
                ),
            });
        }
        check_ack_ids("ack_ids", ids)?;
        let uid = self.subscription_uid(subscription)?;
        self.check_terminal(uid, op)?;
        Ok(uid)
    }

    /// The deciding half of a stream's request: its deadlines and delays in range, no ack
    /// id longer than any the broker issues, and no terminal nack where the stream's
    /// subscription has no dead-letter policy. (A stream that is gone answers every id
    /// invalid; that is not a refusal.)
    pub(super) fn check_stream_request(
        &self,
        stream: StreamId,
        ops: &[(AckOp, Vec<String>)],
    ) -> Result<(), BrokerError> {
        for (op, ids) in ops {
            self.check_deadline(op)?;
            check_ack_ids(stream_field(op), ids)?;
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
        for (op, ids) in ops {
            self.check_deadline(op)?;
            check_ack_ids(stream_field(op), ids)?;
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
        let timer = Timer::Lease(MessageKey::new(uid, id.partition, id.offset));
        let due_ms = lease.deadline_ms;
        let config = &self.config;
        let unacked = match op {
            AckOp::Ack if config.mutated(Mutation::AckNotRecorded) => return AckOutcome::Applied,
            AckOp::Ack if config.mutated(Mutation::InvariantBroken) => {
                self.timers.stop(timer, due_ms);
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
                self.timers.reset(timer, due_ms, lease.deadline_ms);
                return AckOutcome::Applied;
            }
        };
        match unacked {
            None => {
                let lease = cursor.ack(id.offset).expect("lease found above");
                sub.counts.acked += 1;
                self.timers.stop(timer, due_ms);
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
}

fn invalid_all(op: &AckOp, ack_ids: Vec<String>) -> Vec<AckReply> {
    ack_ids.into_iter().map(|ack_id| AckReply { ack_id, op: op.clone(), outcome: AckOutcome::Invalid }).collect()
}
