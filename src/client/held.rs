//! What a subscriber holds: received messages not yet handed to the application, the
//! leases it extends, and the decisions (acks, nacks) on their way to the broker, until the
//! broker confirms them. A pure bookkeeper driven with explicit times, tested without a
//! runtime.
//!
//! On a named subscription all of it outlives a stream: the broker keeps a broken stream's
//! leases for the next stream of the same client id, so after a reconnect ([`Held::resume`])
//! the decisions that were never confirmed are sent again on the new stream, and every held
//! lease is extended at once: a lease the broker no longer has (it restarted, say) comes
//! back as not applied, and a message of it not yet handed out is dropped.

use std::collections::{BTreeMap, VecDeque};

use super::acks::{NackKey, PendingOps};
use super::lease::{Due, Leases};
use super::received::{AckKey, AckResponse, LeaseId, ReceivedMessage, Responder};
use crate::wire::pb;

/// An ack or a nack, as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decision {
    Ack,
    Nack(NackKey),
}

/// The messages, leases and decisions of a subscriber.
#[derive(Debug)]
pub(crate) struct Held {
    /// Leases of messages received and not yet decided on, extended while held.
    pub leases: Leases,
    /// Received, not yet handed to the application (at most max_outstanding_messages).
    pub undelivered: VecDeque<ReceivedMessage>,
    /// Decisions and extensions not yet sent.
    pending: PendingOps,
    /// Acks and nacks sent whose confirmation has not come (at most one per message held).
    sent: BTreeMap<LeaseId, Decision>,
    /// Where to tell the broker's answers the application waits for, and whether the
    /// decision was sent again on a new stream.
    responders: BTreeMap<LeaseId, (Responder, bool)>,
}

impl Held {
    pub(crate) fn new(deadline_ms: u64, max_extension_ms: u64) -> Self {
        Self {
            leases: Leases::new(deadline_ms, max_extension_ms),
            undelivered: VecDeque::new(),
            pending: PendingOps::default(),
            sent: BTreeMap::new(),
            responders: BTreeMap::new(),
        }
    }

    /// The application waits for the broker's answer to its decision on `ack_id`.
    pub(crate) fn respond(&mut self, ack_id: &LeaseId, respond: Option<Responder>) {
        if let Some(respond) = respond {
            self.responders.insert(ack_id.clone(), (respond, false));
        }
    }

    /// A message arrived at `now_ms`: its lease is held and extended until it is decided on.
    pub(crate) fn receive(&mut self, message: ReceivedMessage, now_ms: u64) {
        self.leases.hold(message.lease().clone(), now_ms);
        self.undelivered.push_back(message);
    }

    pub(crate) fn ack(&mut self, ack_id: LeaseId) {
        self.leases.release(ack_id.key());
        self.pending.ack(ack_id);
    }

    pub(crate) fn nack(&mut self, ack_id: LeaseId, key: NackKey) {
        self.leases.release(ack_id.key());
        self.pending.nack(ack_id, key);
    }

    /// Queues extensions of the leases due at `now_ms`; returns the leases no longer
    /// extended (held past `max_extension`, or dropped undecided) with how many were extended.
    pub(crate) fn extend_due(&mut self, now_ms: u64) -> (Due, usize) {
        let due = self.leases.due(now_ms);
        self.queue_extensions(due)
    }

    fn queue_extensions(&mut self, mut due: Due) -> (Due, usize) {
        let extended = due.extend.len();
        for ack_id in due.extend.drain(..) {
            self.pending.extend(ack_id, due.seconds);
        }
        (due, extended)
    }

    /// Decisions and extensions waiting to be sent.
    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Everything pending as requests of at most `ids_max` ack ids; the acks and nacks among
    /// them count as sent until their confirmations come.
    pub(crate) fn take_requests(&mut self, ids_max: usize) -> Vec<pb::SubscribeRequest> {
        let sent = &mut self.sent;
        self.pending.take_requests(ids_max, |id, nack| {
            let decision = nack.map_or(Decision::Ack, |key| Decision::Nack(key.clone()));
            sent.insert(id, decision);
        })
    }

    /// The broker answered for one ack id. A deadline change that was not applied means
    /// the lease is gone: it is no longer extended, and its message, if not yet handed
    /// out, is dropped (it comes again).
    pub(crate) fn confirmed(&mut self, confirmation: &pb::AckConfirmation) {
        match pb::AckOperation::try_from(confirmation.operation) {
            Ok(pb::AckOperation::Ack | pb::AckOperation::Nack) => {
                let key = AckKey::of(&confirmation.ack_id);
                self.sent.remove(&key);
                if let Some((respond, resent)) = self.responders.remove(&key) {
                    let _ = respond.send(AckResponse::of(confirmation, resent));
                }
            }
            Ok(pb::AckOperation::ModifyDeadline) if confirmation.result != pb::AckResult::Applied as i32 => {
                self.leases.release(&AckKey::of(&confirmation.ack_id));
                let at = self.undelivered.iter().position(|m| m.ack_id() == confirmation.ack_id);
                if let Some(message) = at.and_then(|i| self.undelivered.remove(i)) {
                    message.forget();
                }
            }
            _ => {}
        }
    }

    /// A new stream took over the leases (same client id, same subscription): decisions
    /// sent on the old stream and never confirmed are queued again (one applied already is
    /// confirmed expired, which is harmless), and every held lease is extended now.
    /// Returns how many extensions were queued.
    pub(crate) fn resume(&mut self, now_ms: u64) -> usize {
        for (ack_id, decision) in std::mem::take(&mut self.sent) {
            if let Some((_, resent)) = self.responders.get_mut(&ack_id) {
                *resent = true;
            }
            match decision {
                Decision::Ack => self.pending.ack(ack_id),
                Decision::Nack(key) => self.pending.nack(ack_id, key),
            }
        }
        let due = self.leases.renew_all(now_ms);
        self.queue_extensions(due).1
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;
    use crate::client::received::AckHandle;

    fn message(ack_id: &str, ops: &mpsc::Sender<crate::client::received::Op>) -> ReceivedMessage {
        let mut wire = pb::ReceivedMessage { ack_id: ack_id.into(), ..Default::default() };
        let data = crate::client::message::Message::from_wire(&mut wire);
        ReceivedMessage::new(data, AckHandle::new(LeaseId::from(ack_id), 1, ops.clone()))
    }

    fn confirmation(ack_id: &str, operation: pb::AckOperation, result: pb::AckResult) -> pb::AckConfirmation {
        pb::AckConfirmation { ack_id: ack_id.into(), operation: operation as i32, result: result as i32 }
    }

    #[test]
    fn unconfirmed_decisions_are_sent_again_after_a_reconnect_and_confirmed_ones_are_not() {
        let (ops, _rx) = mpsc::channel(8);
        let mut held = Held::new(3000, 60_000);
        for id in ["a", "b", "c"] {
            held.receive(message(id, &ops), 0);
        }
        held.ack("a".into());
        held.nack("b".into(), NackKey { delay_ms: Some(1500), reason: "busy".into(), terminal: false });
        let sent = held.take_requests(100);
        assert_eq!((sent[0].ack_ids.len(), sent[0].nack_ids.len()), (1, 1));
        held.confirmed(&confirmation("a", pb::AckOperation::Ack, pb::AckResult::Applied));

        assert_eq!(held.resume(1000), 1, "the one undecided lease, c, is extended at once");
        let again = held.take_requests(100);
        assert_eq!(again.len(), 1);
        assert!(again[0].ack_ids.is_empty(), "a was confirmed");
        assert_eq!(again[0].nack_ids, ["b"]);
        assert_eq!((again[0].nack_reason.as_str(), again[0].nack_delay.map(|d| d.nanos)), ("busy", Some(500_000_000)));
        assert_eq!(again[0].modify_deadline_ack_ids, ["c"]);
    }

    #[test]
    fn a_lease_the_broker_lost_is_no_longer_extended_and_its_message_is_dropped() {
        let (ops, mut rx) = mpsc::channel(8);
        let mut held = Held::new(3000, 60_000);
        held.receive(message("a", &ops), 0);
        held.receive(message("b", &ops), 0);
        held.resume(1000);
        held.take_requests(100);
        held.confirmed(&confirmation("a", pb::AckOperation::ModifyDeadline, pb::AckResult::Expired));
        held.confirmed(&confirmation("b", pb::AckOperation::ModifyDeadline, pb::AckResult::Applied));
        let left: Vec<&str> = held.undelivered.iter().map(|m| m.ack_id()).collect();
        assert_eq!(left, ["b"]);
        assert_eq!(held.extend_due(3000).1, 1, "only b is still extended");
        assert!(rx.try_recv().is_err(), "the dropped message sends no nack");
    }

    #[test]
    fn a_message_dropped_undecided_is_no_longer_extended_even_if_its_nack_found_no_room() {
        let (ops, mut rx) = mpsc::channel(1);
        let mut held = Held::new(3000, 60_000);
        held.receive(message("a", &ops), 0);
        held.receive(message("b", &ops), 0);
        let a = held.undelivered.pop_front().expect("a was received first");
        // The queue of decisions is full: a's nack is lost, so it alone must stop its lease.
        ops.try_send(crate::client::received::Op::Ack { ack_id: LeaseId::from("x"), epoch: 1, respond: None }).unwrap();
        drop(a);
        let (forgotten, extended) = held.extend_due(2000);
        assert_eq!(
            (forgotten.dropped, extended),
            (vec![LeaseId::from("a")], 1),
            "a, dropped, is no longer extended; b, still held, is"
        );
        assert!(matches!(rx.try_recv(), Ok(crate::client::received::Op::Ack { .. })));
        assert!(rx.try_recv().is_err(), "a's nack did not fit");
    }

    #[test]
    fn the_application_hears_the_brokers_answer_and_a_resent_expired_ack_is_unknown() {
        let (ops, _rx) = mpsc::channel(8);
        let mut held = Held::new(3000, 60_000);
        for id in ["a", "b", "c", "d"] {
            held.receive(message(id, &ops), 0);
        }
        let mut answers = Vec::new();
        for id in ["a", "b", "c", "d"] {
            let (respond, answer) = tokio::sync::oneshot::channel();
            held.respond(&LeaseId::from(id), Some(respond));
            held.ack(id.into());
            answers.push(answer);
        }
        held.take_requests(100);
        held.confirmed(&confirmation("a", pb::AckOperation::Ack, pb::AckResult::Applied));
        held.confirmed(&confirmation("b", pb::AckOperation::Ack, pb::AckResult::Expired));
        // The stream breaks: c and d are sent again on the next one.
        held.resume(1000);
        held.take_requests(100);
        held.confirmed(&confirmation("c", pb::AckOperation::Ack, pb::AckResult::Expired));
        let [a, b, c, d] = <[_; 4]>::try_from(answers).unwrap();
        assert_eq!(a.blocking_recv(), Ok(AckResponse::Applied));
        assert_eq!(b.blocking_recv(), Ok(AckResponse::Expired));
        assert_eq!(c.blocking_recv(), Ok(AckResponse::Unknown), "the first send may have been applied");
        drop(held);
        assert!(d.blocking_recv().is_err(), "no answer came before the subscriber stopped: the caller sees Unknown");
    }
}
