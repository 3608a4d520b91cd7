//! Notices: what the broker did beyond its replies and deliveries, for an observer that
//! asks for them (the simulator writes them into a run's history, so its checker judges
//! seeks, redrives and deletions by when the broker applied them, not by when a client
//! heard). Off until [`Broker::observe`] turns them on; then the driver drains them with
//! [`Broker::poll_notice`] after every input, so they never pile up.

use super::{Broker, StreamId};

/// Something the broker did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// What the broker holds when an observer starts watching (after a start or restart):
    /// its topics `(name, uid)` and subscriptions `(name, topic)`.
    Restored {
        /// Every topic: its name and uid.
        topics: Vec<(String, u64)>,
        /// Every subscription: its name and its topic's.
        subscriptions: Vec<(String, String)>,
    },
    /// A topic was created; `auto` when a publish created it.
    TopicCreated {
        /// The topic's name.
        topic: String,
        /// Its uid: a topic made again under the name has a new one.
        uid: u64,
        /// How many partitions it has.
        partitions: u32,
        /// Made by a publish (topic auto-creation), not by Admin.
        auto: bool,
    },
    /// A topic was deleted (its subscriptions were deleted first, each with a notice).
    TopicDeleted {
        /// The topic's name.
        topic: String,
        /// The uid it had.
        uid: u64,
    },
    /// A subscription was created on the topic with uid `topic_uid`; `start` is the first
    /// offset it is owed in each partition (the log's start, or its end for `latest`).
    SubscriptionCreated {
        /// The subscription's name.
        subscription: String,
        /// Its topic's name.
        topic: String,
        /// Its topic's uid.
        topic_uid: u64,
        /// The first offset owed, per partition.
        start: Vec<u64>,
    },
    /// A subscription was deleted (by itself, with its topic, or as an ephemeral one whose
    /// stream ended).
    SubscriptionDeleted {
        /// The subscription's name.
        subscription: String,
    },
    /// A seek moved a subscription: each partition it moved, and the offset it is owed
    /// from. Every lease issued after it has a sequence number (the last part of its ack
    /// id) of at least `lease_seq`, so an observer can tell a delivery leased before the
    /// seek, and still on its way, from one leased after.
    Seeked {
        /// The subscription's name.
        subscription: String,
        /// Each partition it moved, with the offset it is owed from.
        to: Vec<(u32, u64)>,
        /// The next lease sequence number when it was applied.
        lease_seq: u64,
    },
    /// A redrive put the message at `partition`/`offset` back into `subscription`; it is
    /// leased again with a sequence number of at least `lease_seq`.
    Redriven {
        /// The subscription it went back to.
        subscription: String,
        /// The message's partition.
        partition: u32,
        /// Its offset.
        offset: u64,
        /// The next lease sequence number when it was applied.
        lease_seq: u64,
    },
    /// A publish stored a message (a duplicate stores none): where, under which id, and a
    /// CRC32C of its key and value, so an observer can tell whether replicas hold the same
    /// message at the same place.
    Appended {
        /// The topic's name.
        topic: String,
        /// The message's partition.
        partition: u32,
        /// Its offset.
        offset: u64,
        /// Its id (`topic uid-partition-offset`).
        message_id: String,
        /// CRC32C of its key's bytes followed by its value's.
        digest: u32,
    },
    /// A replicated ack floor (`AckFloors`) moved a subscription's committed offset in a
    /// partition: every offset below `offset` is acknowledged.
    FloorRaised {
        /// The subscription's name.
        subscription: String,
        /// The partition.
        partition: u32,
        /// Its committed offset now.
        offset: u64,
    },
    /// A stream closed and its leases went back to the subscription at once (no backoff).
    LeasesReleased {
        /// The subscription.
        subscription: String,
        /// The stream that closed.
        stream: StreamId,
        /// Each released lease's (partition, offset).
        leases: Vec<(u32, u64)>,
    },
}

impl Broker {
    /// Turns notices on, starting with a [`Notice::Restored`] of what the broker holds.
    pub fn observe(&mut self) {
        let topics = self.topics.values().map(|t| (t.name.clone(), t.uid)).collect();
        let subscriptions = self.subscriptions.values().map(|s| (s.name.clone(), s.topic.clone())).collect();
        self.notices = Some(vec![Notice::Restored { topics, subscriptions }].into());
    }

    /// The next notice, oldest first; `None` when there is none or notices are off.
    pub fn poll_notice(&mut self) -> Option<Notice> {
        self.notices.as_mut()?.pop_front()
    }

    /// Records a notice when they are on; `notice` is not called otherwise.
    pub(super) fn notice(&mut self, notice: impl FnOnce(&Self) -> Notice) {
        if self.notices.is_none() {
            return;
        }
        let made = notice(self);
        if let Some(notices) = &mut self.notices {
            notices.push_back(made);
        }
    }
}
