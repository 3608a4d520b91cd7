//! Subscribe streams: opening one, its flow-control accounting, and its end.

use super::admin::SubscriptionSpec;
use super::broker::Broker;
use super::error::BrokerError;
use super::lease::{Lease, StreamId};
use super::name;
use super::retry::Unacked;
use super::subscription::StartPosition;
use super::{Notice, Output};

/// What a new stream joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamTarget {
    /// An existing subscription, as one more competing member.
    Subscription(String),
    /// A topic, through a new ephemeral subscription deleted when the stream ends.
    Topic {
        /// The topic's name.
        topic: String,
        /// The ephemeral subscription's ack deadline; `None` takes the broker default.
        ack_deadline_ms: Option<u64>,
        /// Where it starts reading.
        start: StartPosition,
    },
}

/// A stream's flow control. 0 takes the broker default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flow {
    /// Unacked messages the stream may hold at once (at most `pull_messages_max`).
    pub max_outstanding_messages: u32,
    /// Unacked bytes the stream may hold at once (one message always fits).
    pub max_outstanding_bytes: u64,
}

/// A stream's membership and flow-control accounting.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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

    /// A message of `bytes` was leased to this stream.
    pub(super) fn charge(&mut self, bytes: u64) {
        self.outstanding_messages += 1;
        self.outstanding_bytes += bytes;
    }

    /// A lease of `bytes` this stream held ended; true when it held none more.
    pub(super) fn refund(&mut self, bytes: u64) -> bool {
        assert!(self.outstanding_messages > 0, "a stream refunded a lease it was not charged for");
        self.outstanding_messages -= 1;
        self.outstanding_bytes -= bytes;
        self.outstanding_messages == 0
    }

    /// The leases of `other` (a stream of the same client) are this stream's from now on.
    pub(super) fn adopt(&mut self, other: &StreamState) {
        self.outstanding_messages += other.outstanding_messages;
        self.outstanding_bytes += other.outstanding_bytes;
    }
}

impl Broker {
    /// Opens a stream on a subscription (or a topic, through an ephemeral subscription) and
    /// returns its id and the subscription's name. Deliveries follow as outputs.
    #[cfg(test)]
    pub(super) fn open_stream(
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
    pub(super) fn close_stream(&mut self, now_ms: u64, stream: StreamId) {
        self.remove_member(now_ms, stream, true);
    }

    /// The client said goodbye (a request with `leave`): its leases are released at once,
    /// as [`Broker::close_stream`] does for a stream without a client id, whether it named
    /// its client or not. Unknown streams are ignored.
    pub(super) fn leave_stream(&mut self, now_ms: u64, stream: StreamId) {
        self.remove_member(now_ms, stream, false);
    }

    fn remove_member(&mut self, now_ms: u64, stream: StreamId, keep_leases: bool) {
        let Some(state) = self.streams.remove(&stream) else { return };
        let uid = state.subscription_uid;
        let sub = self.subscription_mut(uid);
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

    /// Takes an ended lease off its stream's flow-control accounting (or off the detached
    /// leases its client left).
    pub(super) fn uncount(&mut self, lease: &Lease) {
        let Some(stream) = lease.stream else { return };
        match self.streams.get_mut(&stream) {
            Some(state) => {
                state.refund(lease.bytes);
            }
            None => self.uncount_detached(stream, lease.bytes),
        }
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
}
