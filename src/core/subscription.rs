//! A subscription: a consumer group reading one topic, with a cursor per partition.

use std::collections::{BTreeMap, BTreeSet};

use super::lease::{Lease, StreamId};

/// Where a new subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartPosition {
    /// The oldest retained message.
    #[default]
    Earliest,
    /// The end of the log: only messages published from now on.
    Latest,
}

/// A consumer group. Its members (streams) compete for its messages.
pub struct Subscription {
    pub name: String,
    /// From a counter; part of every ack id, so ids of a deleted namesake are foreign.
    pub uid: u64,
    pub topic: String,
    pub ack_deadline_ms: u64,
    pub start: StartPosition,
    /// Made by a Subscribe on a topic; deleted when its stream ends.
    pub ephemeral: bool,
    /// One cursor per partition of the topic.
    pub cursors: Vec<Cursor>,
    /// Open streams, in join order; deliveries go round-robin among those with room.
    pub members: Vec<StreamId>,
    /// Index into `members` of the next stream to offer a message to.
    pub next_member: usize,
    /// The next partition to take a message from, so partitions share the members fairly.
    pub next_partition: u32,
}

/// A subscription's state on one partition.
///
/// Every offset below `committed` is acknowledged. Every offset in `[committed, next)` is
/// in exactly one of `acked`, `leased` and `pending`. Offsets from `next` on have never
/// been delivered.
#[derive(Debug, Default)]
pub struct Cursor {
    /// The ack floor (the committed offset).
    pub committed: u64,
    /// The first offset never delivered.
    pub next: u64,
    /// Acknowledged offsets above the floor.
    pub acked: BTreeSet<u64>,
    /// Offsets leased out now.
    pub leased: BTreeMap<u64, Lease>,
    /// Offsets whose lease ended without an ack, waiting for redelivery (lowest first).
    pub pending: BTreeSet<u64>,
    /// Deliveries so far of each unacknowledged offset below `next`.
    pub attempts: BTreeMap<u64, u32>,
    /// One past the highest offset ever leased. It survives seeks, so an ack id from
    /// before a seek back is still recognised (as expired, not invalid).
    pub high: u64,
}

impl Cursor {
    pub fn at(offset: u64) -> Self {
        Self { committed: offset, next: offset, ..Default::default() }
    }

    /// A cursor as a restart restores it: the floor, and the offsets acked above it (saved
    /// by a checkpoint). Every other offset between them waits for redelivery.
    pub fn restored(committed: u64, acked: BTreeSet<u64>) -> Self {
        let acked: BTreeSet<u64> = acked.into_iter().filter(|o| *o > committed).collect();
        let next = acked.last().map_or(committed, |last| last + 1);
        let pending = (committed..next).filter(|o| !acked.contains(o)).collect();
        Self { committed, next, acked, pending, high: next, ..Default::default() }
    }

    /// Forgets offsets that retention removed from the log: they can no longer be read, so
    /// they count as gone, and their leases end (later acks of them are expired). Returns
    /// the leases that ended.
    pub fn skip_to_log_start(&mut self, start: u64) -> Vec<(u64, Lease)> {
        if self.committed >= start {
            return Vec::new();
        }
        let kept = self.leased.split_off(&start);
        let dropped = std::mem::replace(&mut self.leased, kept).into_iter().collect();
        self.committed = start;
        self.next = self.next.max(start);
        self.pending = self.pending.split_off(&start);
        self.acked = self.acked.split_off(&start);
        self.attempts = self.attempts.split_off(&start);
        while self.acked.first() == Some(&self.committed) {
            self.acked.pop_first();
            self.committed += 1;
        }
        dropped
    }

    /// The next offset to deliver, redeliveries first; `None` when there is nothing.
    pub fn next_to_deliver(&self, end: u64) -> Option<u64> {
        self.pending.first().copied().or((self.next < end).then_some(self.next))
    }

    /// Records a new lease on `offset` (from `next_to_deliver`) and returns its attempt.
    pub fn lease(&mut self, offset: u64, lease: Lease) -> u32 {
        if offset == self.next {
            self.next += 1;
        } else {
            let was_pending = self.pending.remove(&offset);
            assert!(was_pending, "leased offset {offset} was neither pending nor next");
        }
        self.high = self.high.max(offset + 1);
        let previous = self.leased.insert(offset, lease);
        assert!(previous.is_none(), "offset {offset} leased twice");
        let attempt = self.attempts.entry(offset).or_insert(0);
        *attempt += 1;
        *attempt
    }

    /// Ends the lease on `offset` without an ack: it waits for redelivery.
    pub fn release(&mut self, offset: u64) -> Option<Lease> {
        let lease = self.leased.remove(&offset)?;
        self.pending.insert(offset);
        Some(lease)
    }

    /// Ends the lease on `offset` with an ack, and moves the floor over acked offsets.
    pub fn ack(&mut self, offset: u64) -> Option<Lease> {
        let lease = self.leased.remove(&offset)?;
        self.attempts.remove(&offset);
        self.acked.insert(offset);
        while self.acked.first() == Some(&self.committed) {
            self.acked.pop_first();
            self.committed += 1;
        }
        Some(lease)
    }

    /// Moves the cursor to `offset` (a seek): drops every lease, ack and pending offset,
    /// and returns the leases that ended.
    pub fn reset(&mut self, offset: u64) -> Vec<(u64, Lease)> {
        let leases = std::mem::take(&mut self.leased).into_iter().collect();
        *self = Cursor { high: self.high, ..Cursor::at(offset) };
        leases
    }

    /// Panics if the cursor's invariants do not hold (debug builds and tests).
    pub fn assert_invariants(&self) {
        assert!(self.committed <= self.next, "committed {} beyond next {}", self.committed, self.next);
        let below = |o: &u64| *o < self.next;
        assert!(self.acked.iter().all(|o| *o > self.committed && below(o)), "acked offset outside (committed, next)");
        assert!(self.pending.iter().all(below), "pending offset at or past next");
        assert!(self.leased.keys().all(below), "leased offset at or past next");
        let overlap = self.pending.iter().any(|o| self.leased.contains_key(o) || self.acked.contains(o));
        assert!(!overlap, "an offset is in two of pending, leased and acked");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(seq: u64) -> Lease {
        Lease { seq, stream: None, deadline_ms: 0, bytes: 1 }
    }

    #[test]
    fn floor_advances_only_over_contiguous_acks() {
        let mut c = Cursor::at(0);
        for offset in 0..3 {
            c.lease(offset, lease(offset));
        }
        c.ack(1).unwrap();
        assert_eq!(c.committed, 0);
        c.ack(0).unwrap();
        assert_eq!(c.committed, 2);
        c.assert_invariants();
    }

    #[test]
    fn released_offset_is_redelivered_first_with_next_attempt() {
        let mut c = Cursor::at(0);
        assert_eq!(c.lease(0, lease(1)), 1);
        c.lease(1, lease(2));
        c.release(0).unwrap();
        assert_eq!(c.next_to_deliver(5), Some(0));
        assert_eq!(c.lease(0, lease(3)), 2);
        assert_eq!(c.next_to_deliver(5), Some(2));
        c.assert_invariants();
    }

    #[test]
    fn retention_ends_leases_below_the_log_start() {
        let mut c = Cursor::at(0);
        for offset in 0..7 {
            c.lease(offset, lease(offset));
        }
        assert_eq!(c.skip_to_log_start(5).len(), 5);
        assert_eq!((c.committed, c.next), (5, 7));
        assert!(c.ack(0).is_none());
        c.assert_invariants();
    }
}
