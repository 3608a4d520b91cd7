//! What happens to a message whose lease ended without an ack: a backoff before it is
//! offered again (the retry policy), or, after too many attempts or a terminal nack, a move
//! to the dead-letter topic (see `dead_letter`).
//!
//! Without a retry policy a message is offered again at once, as Pub/Sub does for a
//! subscription without one. With one, the wait doubles with every attempt: `minimum`
//! after the first delivery, `2 * minimum` after the second, up to `maximum`. A nack may
//! name its own delay, which replaces the backoff for that one redelivery.

use super::broker::Broker;
use super::subscription::Dropped;
use super::timers::{MessageKey, Timer};

/// Exponential backoff between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RetryPolicy {
    /// The wait after the first unacked delivery.
    pub minimum_backoff_ms: u64,
    /// The longest wait, however many attempts.
    pub maximum_backoff_ms: u64,
}

impl RetryPolicy {
    /// The wait before the next attempt of a message delivered `attempts` times:
    /// `minimum * 2^(attempts - 1)`, at most `maximum`.
    pub fn backoff_ms(&self, attempts: u32) -> u64 {
        let doublings = attempts.saturating_sub(1);
        let factor = 1u64.checked_shl(doublings).unwrap_or(u64::MAX);
        self.minimum_backoff_ms.saturating_mul(factor).min(self.maximum_backoff_ms)
    }
}

/// Where messages go when a subscription gives up on them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeadLetterPolicy {
    /// The topic that receives them; it must exist, and differ from the subscription's.
    pub topic: String,
    /// Deliveries after which a message that is still not acked is dead-lettered.
    pub max_delivery_attempts: u32,
}

/// A retry policy as a request asks for it: `None` fields take the broker defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetrySpec {
    /// `None` takes the broker default.
    pub minimum_backoff_ms: Option<u64>,
    /// `None` takes the broker default.
    pub maximum_backoff_ms: Option<u64>,
}

/// A dead-letter policy as a request asks for it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeadLetterSpec {
    /// The topic that receives the dead letters.
    pub topic: String,
    /// `None` takes the broker default.
    pub max_delivery_attempts: Option<u32>,
}

/// Why a lease ended without an ack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unacked {
    /// The ack deadline passed.
    Expired,
    /// A nack (or a deadline change to 0). `delay_ms` replaces the backoff; `terminal`
    /// dead-letters at once.
    Nacked {
        /// Redeliver after this long instead of the backoff.
        delay_ms: Option<u64>,
        /// Dead-letter at once.
        terminal: bool,
        /// Why, carried by the dead-letter copy.
        reason: Option<String>,
    },
    /// The stream it was leased on closed: offered again at once to the other members
    /// (no backoff: the consumer, not the message, failed), but it still counts as an
    /// attempt towards dead-lettering, so a message that crashes every consumer ends.
    StreamClosed,
    /// The broker took the lease back (its partition moved to another member of an
    /// exclusive subscription, or a redrive left a dead-letter copy where it was): the
    /// consumer did nothing wrong, so the delivery does not count as an attempt, and the
    /// message is offered again at once (never dead-lettered for it).
    Revoked,
}

impl Unacked {
    /// What the dead-letter copy says about the last attempt.
    pub fn detail(&self) -> String {
        match self {
            Unacked::Expired => "ack deadline expired".to_string(),
            Unacked::Nacked { reason: Some(reason), .. } => format!("nacked: {reason}"),
            Unacked::Nacked { reason: None, .. } => "nacked".to_string(),
            Unacked::StreamClosed => "stream closed".to_string(),
            Unacked::Revoked => "taken back by the broker".to_string(),
        }
    }
}

impl Broker {
    /// Ends the current lease on `offset` without an ack: out of the cursor, the deadline
    /// index and flow control, then on to what comes next (see `lease_ended`).
    pub(super) fn end_unacked(&mut self, now_ms: u64, uid: u64, partition: u32, offset: u64, why: &Unacked) {
        let cursor = self.cursor_mut(uid, partition);
        let lease = cursor.end_lease(offset).expect("ending a lease that exists");
        self.timers.stop(Timer::Lease(MessageKey::new(uid, partition, offset)), lease.deadline_ms);
        self.uncount(&lease);
        self.lease_ended(now_ms, uid, partition, offset, why);
    }

    /// Ends the current lease on `offset` with an ack (a cluster's redrive of a copy it
    /// held): out of the cursor, the deadline index and flow control.
    pub(super) fn end_lease_acked(&mut self, uid: u64, partition: u32, offset: u64) {
        let sub = self.subscription_mut(uid);
        sub.counts.acked += 1;
        let lease = sub.cursors[partition as usize].ack(offset).expect("acking a lease that exists");
        self.timers.stop(Timer::Lease(MessageKey::new(uid, partition, offset)), lease.deadline_ms);
        self.uncount(&lease);
    }

    /// Decides what comes after a lease that ended without an ack: dead-letter it, wait
    /// out a backoff, or offer it again now.
    fn lease_ended(&mut self, now_ms: u64, uid: u64, partition: u32, offset: u64, why: &Unacked) {
        if *why == Unacked::Revoked {
            let cursor = self.cursor_mut(uid, partition);
            cursor.undo_attempt(offset);
            cursor.pending.insert(offset);
            return;
        }
        let sub = &self.subscriptions[&uid];
        let attempts = sub.cursors[partition as usize].attempts.get(&offset).copied().unwrap_or(0);
        if let Some(policy) = &sub.dead_letter {
            let terminal = matches!(why, Unacked::Nacked { terminal: true, .. });
            let reason = if terminal {
                Some("terminal_nack")
            } else if attempts >= policy.max_delivery_attempts {
                Some("max_delivery_attempts")
            } else {
                None
            };
            // A copy the dead-letter topic refuses leaves the message with the subscription:
            // it is retried like any other, and dead-lettering is tried again next time.
            if let Some(reason) = reason {
                if self.dead_letter(uid, partition, offset, attempts, reason, &why.detail()) {
                    return;
                }
            }
        }
        let sub = &self.subscriptions[&uid];
        let delay_ms = match why {
            Unacked::Nacked { delay_ms: Some(delay), .. } => *delay,
            Unacked::StreamClosed => 0,
            _ => sub.retry.map_or(0, |r| r.backoff_ms(attempts)),
        };
        let cursor = self.cursor_mut(uid, partition);
        if delay_ms == 0 {
            cursor.pending.insert(offset);
        } else {
            let ready_ms = now_ms.saturating_add(delay_ms);
            cursor.delay(offset, ready_ms);
            self.timers.set(Timer::Backoff(MessageKey::new(uid, partition, offset)), ready_ms);
        }
    }

    /// Moves every backoff that ended at or before `now_ms` to pending; returns the
    /// subscriptions that have messages ready again (in uid order, each once).
    pub(super) fn wake_backoffs(&mut self, now_ms: u64) -> Vec<u64> {
        let mut woken = Vec::new();
        while let Some(MessageKey { subscription: uid, partition, offset }) = self.timers.pop_backoff_due(now_ms) {
            let cursor = self.cursor_mut(uid, partition);
            let waiting = cursor.wake(offset);
            assert!(waiting, "backoff index names {uid}/{partition}/{offset}, which is not delayed");
            woken.push(uid);
        }
        woken.sort_unstable();
        woken.dedup();
        woken
    }

    /// Takes the leases and backoffs that a seek or retention ended out of the timers and
    /// their streams' flow accounting.
    pub(super) fn forget_dropped(&mut self, uid: u64, partition: u32, dropped: Dropped) {
        for (offset, lease) in dropped.leases {
            self.timers.stop(Timer::Lease(MessageKey::new(uid, partition, offset)), lease.deadline_ms);
            self.uncount(&lease);
        }
        for (offset, ready) in dropped.delayed {
            self.timers.stop(Timer::Backoff(MessageKey::new(uid, partition, offset)), ready);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_minimum_and_stops_at_maximum() {
        let policy = RetryPolicy { minimum_backoff_ms: 1000, maximum_backoff_ms: 10_000 };
        let waits: Vec<u64> = (1..=6).map(|a| policy.backoff_ms(a)).collect();
        assert_eq!(waits, [1000, 2000, 4000, 8000, 10_000, 10_000]);
        assert_eq!(policy.backoff_ms(0), 1000, "a message never delivered waits the minimum");
        assert_eq!(policy.backoff_ms(200), 10_000, "huge attempt counts do not overflow");
    }
}
