//! Client ids: a subscriber that reconnects keeps its leases.
//!
//! A Subscribe stream may name its client (`client_id`, as Pub/Sub's
//! `StreamingPullRequest.client_id`). When such a stream closes without its client saying
//! goodbye (the client went away, the connection broke, its session timed out, the server
//! ended it), its leases are not released: they are *detached*. A detached lease belongs
//! to no open stream and counts against no flow control; acks, nacks and deadline changes
//! of it apply as for any lease (on any stream of the subscription, or unary), and at its
//! deadline it expires as any lease does (backoff, attempts, dead letters). It keeps its
//! ordering key's head blocked meanwhile, as any lease does.
//!
//! When a stream of the same client opens on the same subscription, it adopts the detached
//! leases: they count against its flow control again. A stream that opens while another
//! stream of its client is still open on the subscription (the client noticed a broken
//! connection before the broker did) replaces it: the old stream ends with ABORTED and the
//! new one takes over its leases, its place among the members and, on an exclusive
//! subscription, its partitions. A client that says goodbye ([`Broker::leave_stream`]: a
//! request with `leave`) releases its leases at once, as a stream without a client id does
//! when it closes. Streams without a client id never detach, adopt or replace anything.
//!
//! Exclusive subscriptions stay simple: a rebalance that moves a partition to another
//! member ends the leases on it (revoked, as for any lease of a partition that moves), so a
//! detached lease survives only on a partition no member holds (its client was the last
//! member). A stream of the client that joins adopts the leases before the partitions are
//! dealt, and keeps those of the partitions it is given.
//!
//! Bounds: a closed stream that left leases is kept, with its flow-control counts, in
//! `Broker::detached` until its last lease ends (ack, nack, expiry, seek, retention,
//! rebalance) or its client comes back, so there are never more detached streams than
//! leases; each subscription maps each client id to its one stream, open or detached.

use super::broker::Broker;
use super::delivery::Output;
use super::error::BrokerError;
use super::lease::StreamId;
use super::stream::StreamState;
use super::timers::Timer;

/// Longest client id, in bytes.
pub const CLIENT_ID_BYTES_MAX: usize = 128;

const RULE: &str = "client ids are 1 to 128 bytes of printable ASCII without spaces (empty for none)";

/// Checks a client id: 1 to [`CLIENT_ID_BYTES_MAX`] bytes from `!` to `~`.
pub fn check(client_id: &str) -> Result<(), BrokerError> {
    let bad = |reason: String| Err(BrokerError::InvalidArgument { field: "client_id", reason });
    if client_id.is_empty() {
        return bad(format!("is empty; {RULE}"));
    }
    if client_id.len() > CLIENT_ID_BYTES_MAX {
        return bad(format!("is {} bytes; {RULE}", client_id.len()));
    }
    if let Some((at, c)) = client_id.char_indices().find(|(_, c)| !c.is_ascii_graphic()) {
        let what = match c {
            ' ' => "a space".to_string(),
            c => format!("the character {c:?}"),
        };
        return bad(format!("has {what} at byte {at}; {RULE}"));
    }
    Ok(())
}

impl Broker {
    /// Makes the new `stream` (already in `streams`) a member of subscription `uid`. With a
    /// client id it takes over the client's open stream there, or adopts the leases the
    /// client's last stream left; otherwise it joins at the end of the members.
    pub(super) fn seat_member(&mut self, uid: u64, stream: StreamId) {
        let client_id = self.streams[&stream].client_id.clone();
        let sub = self.subscriptions.get_mut(&uid).expect("a new stream's subscription exists");
        let Some(client_id) = client_id else {
            sub.members.push(stream);
            return;
        };
        match sub.clients.insert(client_id.clone(), stream) {
            Some(old) if self.streams.contains_key(&old) => self.replace_member(uid, old, stream, client_id),
            Some(old) => {
                sub.members.push(stream);
                let left = self.detached.remove(&old).expect("a client's stream is open or detached");
                self.move_leases(uid, old, &left, stream);
            }
            None => sub.members.push(stream),
        }
    }

    /// `new` takes the place of `old`, an open stream of the same client: its slot among
    /// the members, its partitions, and its leases. `old` ends with ABORTED.
    fn replace_member(&mut self, uid: u64, old: StreamId, new: StreamId, client_id: String) {
        let state = self.streams.remove(&old).expect("replacing an open stream");
        let sub = self.subscriptions.get_mut(&uid).expect("a new stream's subscription exists");
        let slot = sub.members.iter().position(|m| *m == old).expect("an open stream is a member");
        sub.members[slot] = new;
        if let Some(group) = sub.group.as_mut() {
            for owner in group.owners.iter_mut().filter(|o| **o == Some(old)) {
                *owner = Some(new);
            }
            // The new stream gets a session of its own when it joins.
            if let Some(session) = group.sessions.remove(&old) {
                self.timers.stop(Timer::Session(old), session.deadline_ms);
            }
        }
        let reason = BrokerError::ClientReplaced {
            subscription: sub.name.clone(),
            stream: old.to_string(),
            client_id,
            by: new.to_string(),
        };
        self.move_leases(uid, old, &state, new);
        self.outputs.push_back(Output::EndStream { stream: old, reason });
    }

    /// Moves every lease `from` holds on subscription `uid` (`counts` is its accounting) to
    /// the open stream `to`, which counts them against its flow control from now on.
    fn move_leases(&mut self, uid: u64, from: StreamId, counts: &StreamState, to: StreamId) {
        let sub = self.subscription_mut(uid);
        let mut moved = 0u32;
        for cursor in &mut sub.cursors {
            for lease in cursor.leased.values_mut().filter(|l| l.stream == Some(from)) {
                lease.stream = Some(to);
                moved += 1;
            }
        }
        assert_eq!(moved, counts.outstanding_messages, "{from}: leases moved to {to} against its count");
        self.streams.get_mut(&to).expect("leases move to an open stream").adopt(counts);
    }

    /// A stream closed: with a client id and leases, and `keep_leases`, the leases wait for
    /// the client (true). Otherwise the client (if any) is forgotten and the caller
    /// releases the leases (false).
    pub(super) fn detach(&mut self, stream: StreamId, state: StreamState, keep_leases: bool) -> bool {
        let Some(client_id) = &state.client_id else { return false };
        if keep_leases && state.outstanding_messages > 0 {
            self.detached.insert(stream, state);
            return true;
        }
        let sub = self.subscription_mut(state.subscription_uid);
        let forgotten = sub.clients.remove(client_id);
        assert_eq!(forgotten, Some(stream), "client `{client_id}` maps to the stream that closed");
        false
    }

    /// A detached lease of closed `stream` ended; the last one forgets the stream and its
    /// client. Streams neither open nor detached (Pull has none) are ignored.
    pub(super) fn uncount_detached(&mut self, stream: StreamId, bytes: u64) {
        let Some(state) = self.detached.get_mut(&stream) else { return };
        if !state.refund(bytes) {
            return;
        }
        let state = self.detached.remove(&stream).expect("found above");
        let client_id = state.client_id.expect("only streams with a client id detach");
        let sub = self.subscription_mut(state.subscription_uid);
        let forgotten = sub.clients.remove(&client_id);
        assert_eq!(forgotten, Some(stream), "client `{client_id}` maps to its detached stream");
    }

    /// Panics if the client bookkeeping is off: each client id of a subscription maps to
    /// one of its open members with that id, or to a detached stream of that subscription
    /// and id holding leases; every such stream is mapped; detached streams are no members.
    pub(super) fn assert_client_invariants(&self) {
        for (id, state) in self.streams.iter().chain(&self.detached) {
            let Some(client_id) = &state.client_id else { continue };
            let sub = &self.subscriptions[&state.subscription_uid];
            assert_eq!(sub.clients.get(client_id), Some(id), "{}: client `{client_id}` does not map to {id}", sub.name);
        }
        for (id, state) in &self.detached {
            assert!(state.outstanding_messages > 0, "detached {id} holds no lease");
            let sub = &self.subscriptions[&state.subscription_uid];
            assert!(!sub.members.contains(id), "{}: detached {id} is still a member", sub.name);
        }
        for sub in self.subscriptions.values() {
            for (client_id, id) in &sub.clients {
                let state = self.streams.get(id).or_else(|| self.detached.get(id));
                let state = state.unwrap_or_else(|| panic!("{}: client `{client_id}` maps to a gone {id}", sub.name));
                assert_eq!(
                    state.subscription_uid, sub.uid,
                    "{}: client `{client_id}` maps to a foreign {id}",
                    sub.name
                );
                assert_eq!(state.client_id.as_deref(), Some(client_id.as_str()), "{id}: client id");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_printable_ascii_up_to_128_bytes() {
        for good in ["worker-1", "a", "host:4711/pid=9", &"x".repeat(128)] {
            check(good).unwrap();
        }
        let cases = [
            ("", "is empty"),
            ("a b", "a space at byte 1"),
            ("tab\there", "the character '\\t' at byte 3"),
            ("café", "the character 'é' at byte 3"),
            (&"x".repeat(129), "is 129 bytes"),
        ];
        for (bad, expected) in cases {
            let error = check(bad).unwrap_err().to_string();
            assert!(error.starts_with("client_id: "), "{error}");
            assert!(error.contains(expected), "{bad:?}: {error}");
            assert!(error.contains("1 to 128 bytes"), "{error}");
        }
    }
}
