//! The checker's model of a run, built from the history: every place an acknowledged
//! publish names, what each subscription is owed at the end, and what a declared loss may
//! forgive. Subscriptions are judged from the broker's own notices (when it created,
//! seeked, deleted or lost them), never from when a client heard of it.

use std::collections::{BTreeMap, BTreeSet};

use mini_pubsub::core::Notice;

use crate::history::{Entry, Event};

/// Where a message is stored, parsed from its broker id (`topic uid-partition-offset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Place {
    pub topic_uid: u64,
    pub partition: u32,
    pub offset: u64,
}

impl Place {
    pub fn of(message_id: &str) -> Option<Place> {
        let mut parts = message_id.split('-').map(str::parse::<u64>);
        let (Some(Ok(topic_uid)), Some(Ok(partition)), Some(Ok(offset)), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        Some(Place { topic_uid, partition: u32::try_from(partition).ok()?, offset })
    }
}

/// A stored message some acknowledged publish names (its own place, or a duplicate answer
/// naming an earlier one).
#[derive(Debug, Clone)]
pub struct Message<'e> {
    /// The broker's id.
    pub message_id: &'e str,
    pub place: Place,
    pub topic: &'e str,
    /// The scenario's id of the publish stored there; `None` when only duplicate answers
    /// named the place (the original's own answer was lost). A place a crash lost may be
    /// taken by another message: each holder is a message of its own.
    pub holder: Option<&'e str>,
    /// The scenario's ids of the publishes answered with this place.
    pub ids: Vec<&'e str>,
    /// When the first of them was first sent: a publish sent after a subscription's
    /// epoch began is stored after it.
    pub invoked_ms: u64,
    /// When the first answer arrived.
    pub answered_ms: u64,
}

/// Why a subscription's epoch began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    Created,
    Seek,
}

/// How a subscription's last epoch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// It still exists at the end of the run.
    Open,
    /// Deleted (by an admin step, or with its topic): it is owed nothing.
    Deleted(u64),
    /// A restart came back without it (it was not durable): what it was owed is lost.
    Vanished(u64),
}

/// What a subscription is owed, from the broker's notice that began its last epoch.
#[derive(Debug, Clone)]
pub struct Epoch {
    pub sub: String,
    pub topic: String,
    pub topic_uid: u64,
    /// Per partition: the first offset owed, and since when (a seek starts a partition
    /// over: what was delivered before it does not count).
    pub from: BTreeMap<u32, (u64, u64)>,
    pub cause: Cause,
    pub end: End,
}

impl Message<'_> {
    /// Whether a delivery of this message's place carrying scenario id `id` is this message.
    pub fn is(&self, id: &str) -> bool {
        self.holder.is_none_or(|holder| holder == id)
    }
}

impl Epoch {
    /// Whether `message` is owed: of this topic, at or after the first owed offset of its
    /// partition, or published after the epoch began (a broker that moved a cursor past a
    /// message stored later owes it anyway).
    pub fn owes(&self, message: &Message) -> bool {
        if message.place.topic_uid != self.topic_uid {
            return false;
        }
        match self.from.get(&message.place.partition) {
            Some(&(offset, since_ms)) => message.place.offset >= offset || message.invoked_ms > since_ms,
            // A partition the topic did not have when the subscription began.
            None => true,
        }
    }

    /// When a delivery of `place` counts for this epoch: from the start of its partition's.
    pub fn since_ms(&self, place: &Place) -> u64 {
        self.from.get(&place.partition).map_or(0, |(_, since)| *since)
    }
}

/// The run, as the checker reads it.
#[derive(Debug, Default)]
pub struct Model<'e> {
    /// Every message an acknowledged publish named, in the order of their first answers.
    pub messages: Vec<Message<'e>>,
    /// The last epoch of every subscription that ever existed, by name.
    pub epochs: BTreeMap<String, Epoch>,
    /// Epochs a restart lost (the subscription vanished), in order.
    pub vanished: Vec<Epoch>,
    /// When the broker crashed.
    pub crashes: Vec<u64>,
    /// Topics by uid: name.
    pub topics: BTreeMap<u64, String>,
}

impl<'e> Model<'e> {
    pub fn build(entries: &'e [Entry]) -> Self {
        let mut model = Model::default();
        let mut invoked: BTreeMap<&str, u64> = BTreeMap::new();
        let mut holders: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for e in entries {
            match &e.event {
                Event::PublishInvoked { id, .. } => {
                    invoked.entry(id.as_str()).or_insert(e.at_ms);
                }
                Event::Published { id, message_id, topic, duplicate, .. } => {
                    let Some(place) = Place::of(message_id) else { continue };
                    let invoked_ms = invoked.get(id.as_str()).copied().unwrap_or(e.at_ms);
                    let latest = holders.get(message_id.as_str()).and_then(|h: &Vec<usize>| h.last().copied());
                    let index = match latest {
                        // A duplicate answer names the message stored there last.
                        Some(index) if *duplicate => index,
                        _ => {
                            model.messages.push(Message {
                                message_id,
                                place,
                                topic,
                                holder: (!*duplicate).then_some(id.as_str()),
                                ids: Vec::new(),
                                invoked_ms,
                                answered_ms: e.at_ms,
                            });
                            holders.entry(message_id.as_str()).or_default().push(model.messages.len() - 1);
                            model.messages.len() - 1
                        }
                    };
                    let message = &mut model.messages[index];
                    message.ids.push(id);
                    message.invoked_ms = message.invoked_ms.min(invoked_ms);
                }
                Event::Crashed { .. } => model.crashes.push(e.at_ms),
                Event::Broker(notice) => model.notice(e.at_ms, notice),
                _ => {}
            }
        }
        model
    }

    fn notice(&mut self, at_ms: u64, notice: &Notice) {
        match notice {
            Notice::TopicCreated { topic, uid, .. } => {
                self.topics.insert(*uid, topic.clone());
            }
            Notice::SubscriptionCreated { subscription, topic, topic_uid, start } => {
                let from = start.iter().enumerate().map(|(p, o)| (p as u32, (*o, at_ms))).collect();
                let epoch = Epoch {
                    sub: subscription.clone(),
                    topic: topic.clone(),
                    topic_uid: *topic_uid,
                    from,
                    cause: Cause::Created,
                    end: End::Open,
                };
                self.epochs.insert(subscription.clone(), epoch);
            }
            Notice::Seeked { subscription, to, .. } => {
                if let Some(epoch) = self.epochs.get_mut(subscription).filter(|e| e.end == End::Open) {
                    for (partition, offset) in to {
                        epoch.from.insert(*partition, (*offset, at_ms));
                    }
                    epoch.cause = Cause::Seek;
                }
            }
            Notice::SubscriptionDeleted { subscription } => {
                if let Some(epoch) = self.epochs.get_mut(subscription).filter(|e| e.end == End::Open) {
                    epoch.end = End::Deleted(at_ms);
                }
            }
            Notice::Restored { subscriptions, .. } => {
                let kept: BTreeSet<&str> = subscriptions.iter().map(|(s, _)| s.as_str()).collect();
                for epoch in self.epochs.values_mut().filter(|e| e.end == End::Open) {
                    if !kept.contains(epoch.sub.as_str()) {
                        epoch.end = End::Vanished(at_ms);
                        self.vanished.push(epoch.clone());
                    }
                }
            }
            Notice::TopicDeleted { .. }
            | Notice::Redriven { .. }
            | Notice::LeasesReleased { .. }
            | Notice::Appended { .. }
            | Notice::FloorRaised { .. } => {}
        }
    }

    /// Every (message, epoch) pair owed at the end: by subscriptions that still exist, and
    /// by those a restart lost (their messages are lost with them).
    pub fn owed(&self) -> Vec<(&Message<'e>, &Epoch)> {
        let epochs = self.epochs.values().filter(|e| matches!(e.end, End::Open | End::Vanished(_)));
        let mut owed = Vec::new();
        for epoch in epochs {
            // A subscription that vanished is owed only what was published before.
            let before = |m: &&Message| match epoch.end {
                End::Vanished(at) => m.invoked_ms < at,
                _ => true,
            };
            owed.extend(self.messages.iter().filter(|m| epoch.owes(m)).filter(before).map(|m| (m, epoch)));
        }
        owed
    }

    /// Whether a declared loss may forgive losing `message`: a crash came after its publish
    /// began, so the broker may have stored it before the crash, where the declared
    /// storage (memory, `fsync=never`, a corrupted segment) could lose it. A message whose
    /// publish began after the last crash was stored by a broker that never crashed again.
    pub fn forgivable(&self, message: &Message) -> bool {
        self.crashes.iter().any(|crash| message.invoked_ms < *crash)
    }

    /// Acknowledged publishes of topics that a subscription existing at the end reads.
    pub fn subscribed_publishes(&self) -> usize {
        let open = self.epochs.values().filter(|e| e.end == End::Open);
        let uids: BTreeSet<u64> = open.map(|e| e.topic_uid).collect();
        self.messages.iter().filter(|m| uids.contains(&m.place.topic_uid)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_parse_from_broker_ids() {
        assert_eq!(Place::of("3-1-42"), Some(Place { topic_uid: 3, partition: 1, offset: 42 }));
        for bad in ["", "1-0", "1-0-0-1", "a-0-0", "1-5000000000-0"] {
            assert_eq!(Place::of(bad), None, "{bad}");
        }
    }
}
