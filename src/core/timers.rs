//! The timer table: every moment the broker or its driver waits for, each under a name.
//!
//! As in quinn-proto's `TimerTable`, a timer is named by what it is for, not by a tuple
//! whose fields a reader must remember. The broker's own timers are many (one per lease,
//! per backoff, per member session) and ordered by when they come due, then by name, so
//! timers due together fire in one order on every run. The driver's timers (interval
//! sync, retention, checkpoint) are one each; the table keeps them too, so that
//! [`Broker::poll_timeout`](super::Broker::poll_timeout) tells the whole truth.

use std::collections::BTreeSet;

use super::broker::Broker;
use super::retry::Unacked;
use super::StreamId;

/// One message of one subscription: what a lease or a backoff is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub(super) struct MessageKey {
    pub subscription: u64,
    pub partition: u32,
    pub offset: u64,
}

impl MessageKey {
    pub(super) fn new(subscription: u64, partition: u32, offset: u64) -> Self {
        Self { subscription, partition, offset }
    }
}

/// A timer of the broker's, named by what it is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    /// A lease's ack deadline: past it the message is redelivered or dead-lettered.
    Lease(MessageKey),
    /// The end of a message's backoff: then it is offered again.
    Backoff(MessageKey),
    /// A member session of an exclusive subscription: silent past it, the member leaves.
    Session(StreamId),
}

/// A timer of the driver's. The core only keeps it: what the driver does when it comes
/// due is a command of its own ([`Command::Sync`](super::Command::Sync),
/// [`Command::Retention`](super::Command::Retention),
/// [`Command::Checkpoint`](super::Command::Checkpoint)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverTimer {
    /// The next sync of every partition under `fsync=interval`.
    IntervalSync,
    /// The next application of time retention.
    Retention,
    /// The next save of committed offsets (and export of metrics).
    Checkpoint,
    /// A cluster leader's next proposal of its ack progress.
    AckFloors,
}

impl DriverTimer {
    const COUNT: usize = 4;

    fn index(self) -> usize {
        match self {
            DriverTimer::IntervalSync => 0,
            DriverTimer::Retention => 1,
            DriverTimer::Checkpoint => 2,
            DriverTimer::AckFloors => 3,
        }
    }
}

/// Every pending timer, by kind and then by when it comes due.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct TimerTable {
    leases: BTreeSet<(u64, MessageKey)>,
    backoffs: BTreeSet<(u64, MessageKey)>,
    sessions: BTreeSet<(u64, StreamId)>,
    driver: [Option<u64>; DriverTimer::COUNT],
}

impl TimerTable {
    /// A table with only this one's driver timers: a broker that takes another's state
    /// keeps its own driver's (they are on its own clock), and none of the other's leases.
    pub(super) fn driver_only(&self) -> TimerTable {
        TimerTable { driver: self.driver, ..TimerTable::default() }
    }

    /// Starts `timer`, due at `at_ms`. A timer is stopped with the time it was set for.
    pub(super) fn set(&mut self, timer: Timer, at_ms: u64) {
        match timer {
            Timer::Lease(key) => self.leases.insert((at_ms, key)),
            Timer::Backoff(key) => self.backoffs.insert((at_ms, key)),
            Timer::Session(stream) => self.sessions.insert((at_ms, stream)),
        };
    }

    /// Stops `timer`, set for `at_ms`; one that is not set is left alone.
    pub(super) fn stop(&mut self, timer: Timer, at_ms: u64) {
        match timer {
            Timer::Lease(key) => self.leases.remove(&(at_ms, key)),
            Timer::Backoff(key) => self.backoffs.remove(&(at_ms, key)),
            Timer::Session(stream) => self.sessions.remove(&(at_ms, stream)),
        };
    }

    /// Moves `timer` from `from_ms` to `to_ms`.
    pub(super) fn reset(&mut self, timer: Timer, from_ms: u64, to_ms: u64) {
        self.stop(timer, from_ms);
        self.set(timer, to_ms);
    }

    /// True when `timer` is set for `at_ms`.
    pub(super) fn contains(&self, timer: Timer, at_ms: u64) -> bool {
        match timer {
            Timer::Lease(key) => self.leases.contains(&(at_ms, key)),
            Timer::Backoff(key) => self.backoffs.contains(&(at_ms, key)),
            Timer::Session(stream) => self.sessions.contains(&(at_ms, stream)),
        }
    }

    /// How many leases and backoffs have a timer (for the invariant checks).
    pub(super) fn message_timers(&self) -> (usize, usize) {
        (self.leases.len(), self.backoffs.len())
    }

    /// The earliest lease due at or before `now_ms`, left set: ending the lease stops it.
    pub(super) fn lease_due(&self, now_ms: u64) -> Option<MessageKey> {
        self.leases.first().filter(|(at, _)| *at <= now_ms).map(|(_, key)| *key)
    }

    /// Takes out the earliest backoff that ended at or before `now_ms`.
    pub(super) fn pop_backoff_due(&mut self, now_ms: u64) -> Option<MessageKey> {
        let &(at, _) = self.backoffs.first()?;
        (at <= now_ms).then(|| self.backoffs.pop_first().expect("peeked above").1)
    }

    /// Takes out the earliest session due at or before `now_ms`, with the time it was set
    /// for (a session set again since is a new timer: the caller compares).
    pub(super) fn pop_session_due(&mut self, now_ms: u64) -> Option<(u64, StreamId)> {
        let &(at, _) = self.sessions.first()?;
        (at <= now_ms).then(|| self.sessions.pop_first().expect("peeked above"))
    }

    /// Sets the driver's `timer` to come due at `at_ms`, or stops it (`None`).
    pub(super) fn set_driver(&mut self, timer: DriverTimer, at_ms: Option<u64>) {
        self.driver[timer.index()] = at_ms;
    }

    /// True when the driver's `timer` is set for `now_ms` or earlier.
    pub(super) fn driver_due(&self, timer: DriverTimer, now_ms: u64) -> bool {
        self.driver[timer.index()].is_some_and(|at| at <= now_ms)
    }

    /// When the earliest timer of any kind comes due.
    pub(super) fn next(&self) -> Option<u64> {
        let lease = self.leases.first().map(|(at, _)| *at);
        let backoff = self.backoffs.first().map(|(at, _)| *at);
        let session = self.sessions.first().map(|(at, _)| *at);
        let driver = self.driver.iter().flatten().copied();
        lease.into_iter().chain(backoff).chain(session).chain(driver).min()
    }
}

impl Broker {
    /// Expires every lease whose deadline is at or before `now_ms` (the messages are
    /// redelivered with the next attempt number, after their backoff, or dead-lettered),
    /// and ends every backoff due by then. First, members of exclusive subscriptions that
    /// were silent past their session timeout leave (their streams end).
    pub(super) fn handle_timeout(&mut self, now_ms: u64) {
        self.expire_sessions(now_ms);
        let mut touched = Vec::new();
        while let Some(MessageKey { subscription: uid, partition, offset }) = self.timers.lease_due(now_ms) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(offset: u64) -> MessageKey {
        MessageKey::new(1, 0, offset)
    }

    #[test]
    fn timers_due_together_come_out_in_key_order_and_later_ones_wait() {
        let mut table = TimerTable::default();
        table.set(Timer::Backoff(key(7)), 100);
        table.set(Timer::Backoff(key(3)), 100);
        table.set(Timer::Backoff(key(1)), 200);
        assert_eq!(table.pop_backoff_due(99), None);
        assert_eq!(table.pop_backoff_due(150), Some(key(3)));
        assert_eq!(table.pop_backoff_due(150), Some(key(7)));
        assert_eq!(table.pop_backoff_due(150), None);
        assert_eq!(table.next(), Some(200));
    }

    #[test]
    fn a_reset_lease_is_due_only_at_its_new_time() {
        let mut table = TimerTable::default();
        table.set(Timer::Lease(key(5)), 100);
        table.reset(Timer::Lease(key(5)), 100, 300);
        assert_eq!(table.lease_due(200), None);
        assert!(table.contains(Timer::Lease(key(5)), 300));
        assert_eq!(table.lease_due(300), Some(key(5)));
        table.stop(Timer::Lease(key(5)), 300);
        assert_eq!(table.next(), None);
    }

    #[test]
    fn driver_timers_count_in_the_next_deadline() {
        let mut table = TimerTable::default();
        table.set(Timer::Session(StreamId(4)), 5_000);
        table.set_driver(DriverTimer::Checkpoint, Some(1_000));
        table.set_driver(DriverTimer::IntervalSync, Some(2_000));
        assert_eq!(table.next(), Some(1_000));
        assert!(table.driver_due(DriverTimer::Checkpoint, 1_000));
        assert!(!table.driver_due(DriverTimer::IntervalSync, 1_000));
        assert!(!table.driver_due(DriverTimer::Retention, u64::MAX));
        table.set_driver(DriverTimer::Checkpoint, None);
        assert_eq!(table.next(), Some(2_000));
        assert_eq!(table.pop_session_due(4_999), None);
        assert_eq!(table.pop_session_due(5_000), Some((5_000, StreamId(4))));
    }
}
