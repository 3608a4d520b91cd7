//! Leases the application holds, and when to extend them: a pure bookkeeper driven with
//! explicit times (milliseconds of a monotonic clock), so it is tested without a runtime.
//!
//! A message is held from the moment it arrives until it is acked, nacked or dropped. Its
//! lease is extended when less than a third of the ack deadline is left, by one ack
//! deadline each time, until `max_extension` after its arrival; after that it is left to
//! expire (as Google's client libraries do with `max_extension`).

use std::collections::BTreeMap;

use super::received::{AckKey, LeaseId};

/// When a held message's lease ends, as far as the client knows.
#[derive(Debug)]
struct Lease {
    received_ms: u64,
    expires_ms: u64,
}

/// The leases of messages the application holds.
#[derive(Debug)]
pub(crate) struct Leases {
    /// By lease; one whose handle was dropped undecided is no longer extended.
    held: BTreeMap<LeaseId, Lease>,
    /// The subscription's ack deadline: the length of a lease and of each extension.
    deadline_ms: u64,
    /// How long after its arrival a message's lease is still extended.
    max_extension_ms: u64,
}

/// Leases to extend now, and how far.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Due {
    /// Leases to extend by `seconds`.
    pub extend: Vec<LeaseId>,
    /// The new deadline from now, in seconds.
    pub seconds: u32,
    /// Leases past `max_extension`: no longer extended (nor tracked).
    pub abandoned: Vec<LeaseId>,
    /// Leases whose handles were dropped undecided: no longer extended (nor tracked).
    pub dropped: Vec<LeaseId>,
}

impl Leases {
    pub(crate) fn new(deadline_ms: u64, max_extension_ms: u64) -> Self {
        assert!(deadline_ms >= 1000, "ack deadlines are whole seconds, at least 1: got {deadline_ms} ms");
        Self { held: BTreeMap::new(), deadline_ms, max_extension_ms }
    }

    /// How often [`Leases::due`] should be asked: a tenth of the deadline, 50 ms to 1 s, so
    /// that a third of a deadline always spans a few checks.
    pub(crate) fn check_interval_ms(&self) -> u64 {
        (self.deadline_ms / 10).clamp(50, 1000)
    }

    /// A message arrived at `now_ms`; its lease runs one deadline from then (an estimate a
    /// little late by the network's delay, which the one-third margin absorbs). It is
    /// extended until released, past `max_extension`, or its handle is dropped undecided.
    pub(crate) fn hold(&mut self, id: LeaseId, now_ms: u64) {
        let lease = Lease { received_ms: now_ms, expires_ms: now_ms + self.deadline_ms };
        self.held.insert(id, lease);
    }

    /// The message was acked, nacked or released: its lease is no longer ours to extend.
    pub(crate) fn release(&mut self, ack_id: &AckKey) {
        self.held.remove(ack_id);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.held.len()
    }

    /// The leases to extend at `now_ms` (their deadlines are then counted from `now_ms`),
    /// and those that reached `max_extension` or whose handles were dropped (forgotten).
    pub(crate) fn due(&mut self, now_ms: u64) -> Due {
        self.due_within(now_ms, self.deadline_ms / 3)
    }

    /// Every lease is due now (those past `max_extension` are forgotten): after a
    /// reconnect, to learn at once which leases the broker still holds.
    pub(crate) fn renew_all(&mut self, now_ms: u64) -> Due {
        self.due_within(now_ms, u64::MAX - now_ms)
    }

    /// The leases with at most `margin_ms` left at `now_ms`.
    fn due_within(&mut self, now_ms: u64, margin_ms: u64) -> Due {
        let seconds = u32::try_from(self.deadline_ms / 1000).unwrap_or(u32::MAX);
        let mut due = Due { seconds, ..Due::default() };
        for (id, lease) in &mut self.held {
            if lease.expires_ms > now_ms + margin_ms {
                continue;
            }
            if id.is_dropped() {
                due.dropped.push(id.clone());
            } else if now_ms >= lease.received_ms + self.max_extension_ms {
                due.abandoned.push(id.clone());
            } else {
                lease.expires_ms = now_ms + self.deadline_ms;
                due.extend.push(id.clone());
            }
        }
        for id in due.abandoned.iter().chain(&due.dropped) {
            self.held.remove(id);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lease_is_extended_when_a_third_of_the_deadline_is_left() {
        let mut leases = Leases::new(3000, 60_000);
        leases.hold("a".into(), 0);
        assert!(leases.due(1000).extend.is_empty());
        let due = leases.due(2000);
        assert_eq!((due.extend, due.seconds), (vec![LeaseId::from("a")], 3));
        // Extended to 2000 + 3000; the next extension is due at 4000.
        assert!(leases.due(3999).extend.is_empty());
        assert_eq!(leases.due(4000).extend, ["a"]);
    }

    #[test]
    fn a_released_lease_is_not_extended() {
        let mut leases = Leases::new(3000, 60_000);
        leases.hold("a".into(), 0);
        leases.release(&AckKey::of("a"));
        assert_eq!(leases.due(2500), Due { seconds: 3, ..Due::default() });
        assert_eq!(leases.len(), 0);
    }

    #[test]
    fn a_lease_past_max_extension_is_abandoned_not_extended() {
        let mut leases = Leases::new(1000, 2500);
        leases.hold("a".into(), 0);
        assert_eq!(leases.due(700).extend, ["a"]);
        assert_eq!(leases.due(1400).extend, ["a"]);
        assert_eq!(leases.due(2100).extend, ["a"]);
        let due = leases.due(2800);
        assert!(due.extend.is_empty());
        assert_eq!(due.abandoned, ["a"]);
        assert_eq!(leases.len(), 0);
    }

    #[test]
    fn renew_all_extends_every_lease_but_those_past_max_extension() {
        let mut leases = Leases::new(3000, 10_000);
        leases.hold("old".into(), 0);
        leases.hold("new".into(), 9000);
        let due = leases.renew_all(10_500);
        assert_eq!((due.extend, due.abandoned), (vec![LeaseId::from("new")], vec![LeaseId::from("old")]));
        assert!(leases.due(11_000).extend.is_empty(), "renewed from 10_500");
    }

    #[test]
    fn a_lease_whose_handle_was_dropped_is_forgotten_when_next_due() {
        let mut leases = Leases::new(3000, 60_000);
        let a = LeaseId::from("a");
        leases.hold(a.clone(), 0);
        leases.hold("b".into(), 0);
        a.set_dropped();
        let due = leases.due(2000);
        assert_eq!((due.extend, due.dropped), (vec![LeaseId::from("b")], vec![LeaseId::from("a")]));
        assert_eq!(leases.len(), 1);
    }

    #[test]
    fn checks_come_often_enough_for_the_shortest_deadline() {
        assert_eq!(Leases::new(1000, 0).check_interval_ms(), 100);
        assert_eq!(Leases::new(600_000, 0).check_interval_ms(), 1000);
    }
}
