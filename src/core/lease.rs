//! Leases and the ack ids that name them.
//!
//! Every delivery is a lease: the message is the consumer's until its deadline, and the
//! ack id names exactly that lease (subscription, partition, offset, and the lease's
//! sequence number). When the lease ends (ack, nack, expiry, seek), the ack id stops being
//! current: a later ack with it is confirmed as expired, never applied to a newer lease.

use std::fmt;

/// A Subscribe stream (a member of a subscription), numbered from a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct StreamId(pub u64);

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stream-{}", self.0)
    }
}

/// One outstanding delivery.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lease {
    /// From the broker's lease counter; part of the ack id.
    pub seq: u64,
    /// The stream it was delivered on; `None` for Pull, which has no flow control.
    pub stream: Option<StreamId>,
    /// When the lease expires, in the core's monotonic milliseconds.
    pub deadline_ms: u64,
    /// Counted against the stream's `max_outstanding_bytes`.
    pub bytes: u64,
}

/// The parts of an ack id: `subscription-uid "-" partition "-" offset "-" lease-seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckId {
    /// The subscription that issued it (by uid, so a subscription made again does not match).
    pub subscription_uid: u64,
    /// The partition of the leased message.
    pub partition: u32,
    /// The offset of the leased message.
    pub offset: u64,
    /// Which lease of the message: an id of an ended lease does not act on a later one.
    pub seq: u64,
}

impl AckId {
    /// Parses an ack id; `None` when it is malformed.
    pub fn parse(text: &str) -> Option<AckId> {
        let [subscription_uid, partition, offset, seq] = super::decimal::undashed::<4>(text)?;
        let partition = u32::try_from(partition).ok()?;
        Some(AckId { subscription_uid, partition, offset, seq })
    }

    /// The ack id as text, as `Display` writes it (faster: one per delivery).
    pub fn text(&self) -> String {
        super::decimal::dashed(&[self.subscription_uid, u64::from(self.partition), self.offset, self.seq])
    }
}

impl AckOp {
    /// A plain nack: redeliver after the subscription's backoff.
    pub fn nack() -> AckOp {
        AckOp::Nack { delay_ms: None, terminal: false, reason: None }
    }
}

impl fmt::Display for AckId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}-{}", self.subscription_uid, self.partition, self.offset, self.seq)
    }
}

/// What happened to one ack id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// The lease was current and the operation took effect.
    Applied,
    /// Malformed, or not an ack id this subscription ever issued.
    Invalid,
    /// A lease this subscription issued, but no longer current.
    Expired,
}

/// The three things a consumer can do to a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckOp {
    /// Done with the message: it is not delivered again.
    Ack,
    /// Give the message back: it is redelivered after `delay_ms` when given, else after the
    /// subscription's backoff (at once without a retry policy). `terminal` dead-letters it
    /// now (the subscription needs a dead-letter policy); `reason` goes with the copy.
    Nack {
        /// Redeliver after this long instead of the subscription's backoff.
        delay_ms: Option<u64>,
        /// Dead-letter it now instead.
        terminal: bool,
        /// Why, carried by the dead-letter copy.
        reason: Option<String>,
    },
    /// Extend (or with 0, release) the lease to this many milliseconds from now.
    ModifyDeadline {
        /// The new deadline, from now; 0 gives the message back at once.
        deadline_ms: u64,
    },
}

/// The answer for one ack id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckReply {
    /// The ack id as the client sent it.
    pub ack_id: String,
    /// What the client asked for.
    pub op: AckOp,
    /// What it did.
    pub outcome: AckOutcome,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_ids_round_trip_and_garbage_is_rejected() {
        let id = AckId { subscription_uid: 3, partition: 1, offset: 42, seq: 7 };
        assert_eq!(AckId::parse(&id.to_string()), Some(id));
        assert_eq!(id.text(), id.to_string());
        for bad in ["", "1-2-3", "1-2-3-4-5", "a-b-c-d", "1--3-4", "-1-2-3", "1-2-3-+4", "1-99999999999-3-4"] {
            assert_eq!(AckId::parse(bad), None, "{bad:?}");
        }
    }
}
