//! A subscription: a consumer group reading one topic, with a cursor per partition.

use std::collections::{BTreeMap, BTreeSet};

use super::broker::Broker;
use super::counts::SubscriptionCounts;
use super::group::Group;
use super::lease::{Lease, StreamId};
use super::ordering::KeyOrder;
use super::retry::{DeadLetterPolicy, RetryPolicy};
use super::timers::{MessageKey, Timer};

/// Where a new subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum StartPosition {
    /// The oldest retained message.
    #[default]
    Earliest,
    /// The end of the log: only messages published from now on.
    Latest,
}

/// How far past a replica's first undelivered offset a replicated dead-letter move or
/// redrive still counts an offset as done there ([`Cursor::settle`]); farther, it is left
/// to the next replicated ack floor (a failover before it delivers the message again).
const SETTLE_AHEAD_MAX: u64 = 100_000;

/// A consumer group. Its members (streams) compete for its messages.
#[derive(serde::Serialize, serde::Deserialize)]
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
    /// The stream of each client id on this subscription: open (a member) or detached
    /// (closed, its leases waiting for the client). At most one per client.
    pub clients: BTreeMap<String, StreamId>,
    /// Index into `members` of the next stream to offer a message to.
    pub next_member: usize,
    /// The next partition to take a message from, so partitions share the members fairly.
    pub next_partition: u32,
    /// Backoff before a message whose lease ended unacked is offered again; `None`
    /// redelivers at once.
    pub retry: Option<RetryPolicy>,
    /// Where messages go after too many attempts (or a terminal nack); `None` keeps
    /// redelivering them.
    pub dead_letter: Option<DeadLetterPolicy>,
    /// Messages moved to the dead-letter topic since the subscription was created.
    pub dead_lettered: u64,
    /// What the subscription did since the broker opened (for metrics).
    pub counts: SubscriptionCounts,
    /// Messages of one ordering key are delivered in order, one at a time.
    pub ordered: bool,
    /// The partition assignment of an exclusive subscription; `None` when shared.
    pub group: Option<Group>,
    /// Seeks and redrives applied to it: each may move its committed offsets back. A cluster
    /// leader's ack floor carries the count it was read at, and a replica applies only one
    /// read since the last move (one read before could undo the move).
    #[serde(default)]
    pub cursor_moves: u64,
}

/// A subscription's state on one partition.
///
/// Every offset below `committed` is acknowledged (or dead-lettered). Every offset in
/// `[committed, next)` is in exactly one of `acked`, `leased`, `pending`, `delayed`,
/// `in_transit` and (ordered subscriptions) parked in `keys`. Offsets from `next` on have
/// never been delivered.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    /// The ack floor (the committed offset).
    pub committed: u64,
    /// The first offset never delivered.
    pub next: u64,
    /// Acknowledged offsets above the floor.
    pub acked: BTreeSet<u64>,
    /// Offsets leased out now.
    pub leased: BTreeMap<u64, Lease>,
    /// Offsets whose lease ended without an ack, ready for redelivery (lowest first).
    pub pending: BTreeSet<u64>,
    /// Offsets whose lease ended without an ack, waiting out a backoff: offset to the
    /// time (monotonic ms) it becomes pending.
    pub delayed: BTreeMap<u64, u64>,
    /// Offsets copied to the dead-letter topic whose copy is not yet synced (acknowledgement
    /// after fsync): they count as acked once it is, and come back as pending if the sync
    /// fails, so a crash never loses a message that was neither acked nor dead-lettered.
    pub in_transit: BTreeSet<u64>,
    /// Deliveries so far of each unacknowledged offset below `next`.
    pub attempts: BTreeMap<u64, u32>,
    /// One past the highest offset ever leased. It survives seeks, so an ack id from
    /// before a seek back is still recognised (as expired, not invalid).
    pub high: u64,
    /// Ordering-key heads and parked offsets (ordered subscriptions only).
    pub keys: KeyOrder,
}

/// Leases and backoffs that a seek or retention ended, so the broker can take them out of
/// its deadline and backoff indexes.
#[derive(Debug, Default)]
pub struct Dropped {
    /// (offset, lease).
    pub leases: Vec<(u64, Lease)>,
    /// (offset, ready_ms).
    pub delayed: Vec<(u64, u64)>,
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
    /// they count as gone, and their leases and backoffs end (later acks of them are
    /// expired). Returns what ended.
    pub fn skip_to_log_start(&mut self, start: u64) -> Dropped {
        if self.committed >= start {
            return Dropped::default();
        }
        let kept = self.leased.split_off(&start);
        let leases = std::mem::replace(&mut self.leased, kept).into_iter().collect();
        let kept = self.delayed.split_off(&start);
        let delayed = std::mem::replace(&mut self.delayed, kept).into_iter().collect();
        self.committed = start;
        self.next = self.next.max(start);
        self.pending = self.pending.split_off(&start);
        // Heads below the start finish (their messages are gone); their keys' next go on.
        self.pending.extend(self.keys.drop_below(start));
        self.in_transit = self.in_transit.split_off(&start);
        self.acked = self.acked.split_off(&start);
        self.attempts = self.attempts.split_off(&start);
        while self.acked.first() == Some(&self.committed) {
            self.acked.pop_first();
            self.committed += 1;
        }
        Dropped { leases, delayed }
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

    /// Ends the lease on `offset` without deciding what comes next: the caller must put
    /// the offset in `pending`, `delayed` or `in_transit` (see `Broker::lease_ended`).
    pub fn end_lease(&mut self, offset: u64) -> Option<Lease> {
        self.leased.remove(&offset)
    }

    /// Takes back the attempt the last lease of `offset` counted: the broker, not the
    /// consumer, ended it.
    pub fn undo_attempt(&mut self, offset: u64) {
        match self.attempts.get_mut(&offset) {
            Some(n) if *n > 1 => *n -= 1,
            _ => {
                self.attempts.remove(&offset);
            }
        }
    }

    /// `offset`, whose lease just ended, waits until `ready_ms` before it is offered again.
    pub fn delay(&mut self, offset: u64, ready_ms: u64) {
        assert!(!self.leased.contains_key(&offset), "delaying leased offset {offset}");
        let previous = self.delayed.insert(offset, ready_ms);
        assert!(previous.is_none(), "offset {offset} delayed twice");
    }

    /// A backoff ended: `offset` is ready for redelivery. False if it no longer waits
    /// (a seek or retention took it away).
    pub fn wake(&mut self, offset: u64) -> bool {
        if self.delayed.remove(&offset).is_none() {
            return false;
        }
        self.pending.insert(offset);
        true
    }

    /// Ends the lease on `offset` with an ack, and moves the floor over acked offsets.
    pub fn ack(&mut self, offset: u64) -> Option<Lease> {
        let lease = self.leased.remove(&offset)?;
        self.mark_acked(offset);
        Some(lease)
    }

    /// Parks `offset` (the next offset, or a pending one) behind its ordering key's head.
    pub fn park(&mut self, offset: u64, key: &str) {
        if offset == self.next {
            self.next += 1;
        } else {
            let was_pending = self.pending.remove(&offset);
            assert!(was_pending, "parked offset {offset} was neither pending nor next");
        }
        self.keys.park(offset, key);
    }

    /// Lets `offset` (a message that came back, earlier than its key's head) go before a
    /// head that was never delivered, which is parked again. False if the head was
    /// delivered: then `offset` waits behind it.
    pub fn take_over_head(&mut self, offset: u64, key: &str) -> bool {
        let Some(head) = self.keys.head(key) else { return false };
        let undelivered = self.pending.contains(&head) && !self.attempts.contains_key(&head);
        if head < offset || !undelivered {
            return false;
        }
        self.pending.remove(&head);
        self.keys.take_over(offset, key);
        true
    }

    /// Counts `offset` as done (acked, or dead-lettered and synced) and moves the floor.
    /// The next message of its ordering key, if one is parked, is ready now.
    pub fn mark_acked(&mut self, offset: u64) {
        if let Some(next) = self.keys.finish(offset) {
            self.pending.insert(next);
        }
        self.attempts.remove(&offset);
        self.acked.insert(offset);
        while self.acked.first() == Some(&self.committed) {
            self.acked.pop_first();
            self.committed += 1;
        }
    }

    /// A replica learns from its leader that `offset` is done (dead-lettered or redriven
    /// there), though this node never delivered it: it counts as acknowledged. Offsets it
    /// skips past wait for delivery, as after a restart. Farther than `SETTLE_AHEAD_MAX`
    /// past the first undelivered offset it is left to the next replicated floor.
    pub fn settle(&mut self, offset: u64) {
        if offset < self.committed || self.acked.contains(&offset) {
            return;
        }
        if offset >= self.next {
            if offset - self.next > SETTLE_AHEAD_MAX {
                return;
            }
            self.pending.extend(self.next..offset);
            self.next = offset + 1;
            self.high = self.high.max(self.next);
            self.mark_acked(offset);
        } else if self.pending.remove(&offset) {
            self.mark_acked(offset);
        }
    }

    /// The dead-letter copy of `offset` is synced: it is done. False if a seek or
    /// retention already took it away.
    pub fn finish_transit(&mut self, offset: u64) -> bool {
        if !self.in_transit.remove(&offset) {
            return false;
        }
        self.mark_acked(offset);
        true
    }

    /// The dead-letter copy of `offset` was lost (its sync failed): deliver it again.
    pub fn abort_transit(&mut self, offset: u64) -> bool {
        if !self.in_transit.remove(&offset) {
            return false;
        }
        self.pending.insert(offset);
        true
    }

    /// Puts a dead-lettered `offset` back for delivery (a redrive), with its attempts
    /// starting over. Below the committed offset the floor moves back to it, and every
    /// offset between is remembered as acked, at most `rewind_max` of them. Says why not
    /// when it cannot.
    pub fn reopen(&mut self, offset: u64, log_start: u64, rewind_max: u64) -> Result<(), String> {
        self.check_reopen(offset, log_start, rewind_max)?;
        if offset < self.committed {
            self.acked.extend(offset + 1..self.committed);
            self.committed = offset;
        } else {
            let was_acked = self.acked.remove(&offset);
            assert!(was_acked, "offset {offset} in [committed, next) was in no state");
        }
        self.attempts.remove(&offset);
        self.pending.insert(offset);
        Ok(())
    }

    /// Why `reopen` would refuse `offset`, changing nothing.
    pub fn check_reopen(&self, offset: u64, log_start: u64, rewind_max: u64) -> Result<(), String> {
        if offset < log_start {
            return Err(format!("offset {offset} was removed by retention (the log starts at {log_start})"));
        }
        let waiting = offset >= self.next
            || self.pending.contains(&offset)
            || self.delayed.contains_key(&offset)
            || self.leased.contains_key(&offset)
            || self.in_transit.contains(&offset)
            || self.keys.is_parked(offset);
        if waiting {
            return Err(format!("offset {offset} is already waiting for delivery"));
        }
        if offset < self.committed {
            let behind = self.committed - offset;
            if behind > rewind_max {
                return Err(format!(
                    "offset {offset} is {behind} behind the committed offset {}; the limit is redrive_rewind_offsets_max = {rewind_max}",
                    self.committed
                ));
            }
        }
        Ok(())
    }

    /// A redrive a cluster leader decided (it checked `offset` with `check_reopen`), applied
    /// on a replica: `offset` waits for delivery again, whatever this node knew of it. One
    /// already waiting here stays as it is; below the floor, at most `rewind_max` behind.
    pub fn reopen_replicated(&mut self, offset: u64, log_start: u64, rewind_max: u64) -> Result<(), String> {
        match self.check_reopen(offset, log_start, rewind_max) {
            Ok(()) => self.reopen(offset, log_start, rewind_max),
            Err(_) if offset >= log_start && self.committed.saturating_sub(offset) <= rewind_max => Ok(()),
            Err(why) => Err(why),
        }
    }

    /// Moves the cursor to `offset` (a seek): drops every lease, ack, backoff and pending
    /// offset, and returns the leases and backoffs that ended.
    pub fn reset(&mut self, offset: u64) -> Dropped {
        let leases = std::mem::take(&mut self.leased).into_iter().collect();
        let delayed = std::mem::take(&mut self.delayed).into_iter().collect();
        *self = Cursor { high: self.high, ..Cursor::at(offset) };
        Dropped { leases, delayed }
    }

    /// Panics if the cursor's invariants do not hold (debug builds and tests).
    pub fn assert_invariants(&self) {
        assert!(self.committed <= self.next, "committed {} beyond next {}", self.committed, self.next);
        let below = |o: &u64| *o < self.next;
        assert!(self.acked.iter().all(|o| *o > self.committed && below(o)), "acked offset outside (committed, next)");
        assert!(self.pending.iter().all(below), "pending offset at or past next");
        assert!(self.leased.keys().all(below), "leased offset at or past next");
        assert!(self.delayed.keys().all(below), "delayed offset at or past next");
        assert!(self.in_transit.iter().all(below), "in-transit offset at or past next");
        let states = |o: &u64| {
            [self.pending.contains(o), self.leased.contains_key(o), self.acked.contains(o)]
                .into_iter()
                .chain([self.delayed.contains_key(o), self.in_transit.contains(o), self.keys.is_parked(*o)])
                .filter(|in_state| *in_state)
                .count()
        };
        let parked: Vec<u64> = self.keys.parked_from(0).collect();
        assert!(
            parked.iter().all(|o| *o >= self.committed && *o < self.next),
            "parked offset outside [committed, next)"
        );
        let overlap = self
            .pending
            .iter()
            .chain(self.delayed.keys())
            .chain(&self.in_transit)
            .chain(&parked)
            .any(|o| states(o) > 1);
        assert!(!overlap, "an offset is in two of pending, delayed, in transit, parked, leased and acked");
        for head in self.keys.heads() {
            let unfinished = self.leased.contains_key(&head)
                || self.pending.contains(&head)
                || self.delayed.contains_key(&head)
                || self.in_transit.contains(&head);
            assert!(unfinished, "ordering head {head} is not an unfinished delivery");
        }
        self.keys.assert_invariants();
    }
}

impl Broker {
    /// Removes a subscription with no members left, and every lease it held.
    pub(super) fn remove_subscription(&mut self, uid: u64) {
        let sub = self.subscriptions.remove(&uid).expect("removing a known subscription");
        assert!(sub.members.is_empty(), "subscription {} removed with open streams", sub.name);
        for stream in sub.clients.values() {
            self.detached.remove(stream);
        }
        for (partition, cursor) in sub.cursors.iter().enumerate() {
            for (offset, lease) in &cursor.leased {
                let key = MessageKey::new(uid, partition as u32, *offset);
                self.timers.stop(Timer::Lease(key), lease.deadline_ms);
            }
            for (offset, ready) in &cursor.delayed {
                self.timers.stop(Timer::Backoff(MessageKey::new(uid, partition as u32, *offset)), *ready);
            }
        }
        self.subscription_uids.remove(&sub.name);
        if let Some(topic) = self.topics.get_mut(&sub.topic) {
            topic.subscriptions.remove(&sub.name);
        }
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
        c.end_lease(0).unwrap();
        c.pending.insert(0);
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
        assert_eq!(c.skip_to_log_start(5).leases.len(), 5);
        assert_eq!((c.committed, c.next), (5, 7));
        assert!(c.ack(0).is_none());
        c.assert_invariants();
    }
}
