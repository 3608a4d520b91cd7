//! Dead letters: a message a subscription gives up on is copied to its dead-letter topic
//! (payload, key and attributes unchanged, plus attributes that say why and from where),
//! and counts as done for the subscription once the copy is durable.
//!
//! Under acknowledgement after fsync the copy is only durable after the next sync, so the
//! source offset waits "in transit" until then: a crash or a failed sync before it brings
//! the message back to the subscription instead of losing it. Under the other policies the
//! source offset is done at once, with the durability those policies promise.

use super::broker::Broker;
use super::mutation::Mutation;
use super::notice::Notice;
use super::publish::{append, digest_of};
use crate::storage::Record;

/// `terminal_nack` or `max_delivery_attempts`.
pub const ATTR_REASON: &str = "dead_letter_reason";
/// What happened at the last attempt: `ack deadline expired`, `nacked: <reason>`...
pub const ATTR_DETAIL: &str = "dead_letter_detail";
/// The subscription that gave up on the message.
pub const ATTR_SOURCE_SUBSCRIPTION: &str = "dead_letter_source_subscription";
/// The topic that subscription reads.
pub const ATTR_SOURCE_TOPIC: &str = "dead_letter_source_topic";
/// Deliveries of the message before it was dead-lettered.
pub const ATTR_DELIVERY_ATTEMPTS: &str = "dead_letter_delivery_attempts";
/// The original message id in the source topic.
pub const ATTR_MESSAGE_ID: &str = "dead_letter_message_id";
/// The original partition in the source topic.
pub const ATTR_PARTITION: &str = "dead_letter_partition";
/// The original offset in the source topic.
pub const ATTR_OFFSET: &str = "dead_letter_offset";

/// A dead-letter copy not yet synced, and the source offset waiting for it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct Transit {
    pub topic: String,
    pub topic_uid: u64,
    pub partition: u32,
    pub offset: u64,
    pub source_uid: u64,
    pub source_partition: u32,
    pub source_offset: u64,
}

/// A dead-letter move a cluster leader decided, which every replica applies from the Raft
/// log (see [`Command::DeadLetters`](super::Command::DeadLetters)): the copy goes to the
/// dead-letter topic on each node, at the same place, and the source offset is done. The
/// copy is made on the leader and carried whole, so that no replica reads its own log (where
/// retention may already have removed the original) or its own clock to make it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterMove {
    /// The subscription that gives the message up.
    pub subscription: String,
    /// Its uid: a move of a deleted subscription moves nothing of a namesake.
    pub uid: u64,
    /// The message's partition.
    pub partition: u32,
    /// Its offset.
    pub offset: u64,
    /// The copy: the original's key, value and attributes with those that say why and from
    /// where, and its publish time (the leader's wall clock, or the original's if later).
    pub copy: Record,
    /// The subscription's seeks and redrives applied when the move was decided: a seek
    /// committed before the move put the offset where the seek says, so the move does not
    /// count it done (it is delivered again, as the seek asked; its copy is still made).
    pub moves: u64,
}

impl Broker {
    /// Gives up on the message at `offset` of the subscription's `partition`: copies it to
    /// its dead-letter topic. Returns false, changing nothing, when the copy cannot be made
    /// (the source record cannot be read, the topic is gone, or its storage refuses).
    ///
    /// A cluster's leader copies nothing here: the move is decided, held in transit, and
    /// proposed; every replica makes the copy when it commits ([`Broker::apply_dead_letters`]).
    pub(super) fn dead_letter(
        &mut self,
        uid: u64,
        partition: u32,
        offset: u64,
        attempts: u32,
        reason: &str,
        detail: &str,
    ) -> bool {
        let Some(copy) = self.make_copy(uid, partition, offset, attempts, reason, detail) else { return false };
        if self.replicated {
            return self.decide_dead_letter(uid, partition, offset, copy);
        }
        let Some((target_name, target_uid, target_partition, target_offset)) = self.append_copy(uid, copy) else {
            return false;
        };
        let after_sync = self.after_sync;
        let cursor = &mut self.subscription_mut(uid).cursors[partition as usize];
        if after_sync {
            cursor.in_transit.insert(offset);
            self.transits.push(Transit {
                topic: target_name,
                topic_uid: target_uid,
                partition: target_partition,
                offset: target_offset,
                source_uid: uid,
                source_partition: partition,
                source_offset: offset,
            });
        } else {
            cursor.mark_acked(offset);
            self.topics_to_dispatch.insert(target_name);
        }
        true
    }

    /// A cluster leader's decision to dead-letter with `copy` (made here, now): the offset
    /// waits in transit (no consumer gets it) until the move commits. False when the
    /// dead-letter topic is gone.
    fn decide_dead_letter(&mut self, uid: u64, partition: u32, offset: u64, copy: Record) -> bool {
        let policy = self.subscriptions[&uid].dead_letter.as_ref().expect("dead-lettering needs a policy");
        if !self.topics.contains_key(&policy.topic) {
            return false;
        }
        let (subscription, moves) = (self.subscriptions[&uid].name.clone(), self.subscriptions[&uid].cursor_moves);
        self.cursor_mut(uid, partition).in_transit.insert(offset);
        self.moves_in_flight.insert((uid, partition, offset), self.term);
        let decided = DeadLetterMove { subscription, uid, partition, offset, copy, moves };
        self.decided.push(super::Command::DeadLetters(vec![decided]));
        true
    }

    /// Applies dead-letter moves a cluster leader decided, on every replica alike: each
    /// copy is made, and its source offset is done (on the leader it leaves transit; on
    /// another node it counts as acknowledged). A move whose subscription is gone does
    /// nothing; one whose copy cannot be made gives the message back on the leader.
    pub(super) fn apply_dead_letters(&mut self, now_ms: u64, moves: Vec<DeadLetterMove>) {
        let mut returned = Vec::new();
        for m in moves {
            let decided_here = self.moves_in_flight.remove(&(m.uid, m.partition, m.offset)).is_some();
            let known = self.subscription_uids.get(&m.subscription) == Some(&m.uid)
                && (m.partition as usize) < self.subscriptions[&m.uid].cursors.len();
            if !known || (!decided_here && self.config.mutated(Mutation::DeadLetterOnLeaderOnly)) {
                continue;
            }
            let appended = self.append_copy(m.uid, m.copy);
            let copied = appended.is_some();
            if let Some((target, ..)) = appended {
                self.topics_to_dispatch.insert(target);
            }
            let unmoved = self.subscriptions[&m.uid].cursor_moves == m.moves;
            let cursor = self.cursor_mut(m.uid, m.partition);
            match (copied, decided_here) {
                (true, true) => {
                    // Not in transit any more if a replicated floor reset the cursor
                    // while this node did not lead (or a seek moved it: then it is owed).
                    if !cursor.finish_transit(m.offset) && unmoved {
                        cursor.settle(m.offset);
                    }
                }
                (true, false) if unmoved => cursor.settle(m.offset),
                (true, false) => {}
                (false, true) => {
                    if cursor.abort_transit(m.offset) {
                        returned.push(m.uid);
                    }
                }
                (false, false) => {}
            }
            if decided_here {
                returned.push(m.uid);
            }
        }
        returned.sort_unstable();
        returned.dedup();
        for uid in returned {
            self.dispatch(now_ms, uid);
        }
        self.dispatch_dead_letters(now_ms);
    }

    /// This node leads from `term` on: moves it decided in an earlier term that never
    /// committed never will (every entry of earlier terms is applied before it leads), so
    /// their messages are delivered again. Moves of this very term (it stopped serving for
    /// a while, and serves again) are still in its log, and may commit.
    pub(super) fn drop_moves_in_flight(&mut self, now_ms: u64, term: u64) {
        let mut returned = Vec::new();
        let earlier: Vec<(u64, u32, u64)> =
            self.moves_in_flight.iter().filter(|(_, decided)| **decided < term).map(|(key, _)| *key).collect();
        for key @ (uid, partition, offset) in earlier {
            self.moves_in_flight.remove(&key);
            let Some(cursor) = self.subscriptions.get_mut(&uid).and_then(|s| s.cursors.get_mut(partition as usize))
            else {
                continue;
            };
            if cursor.abort_transit(offset) {
                returned.push(uid);
            }
        }
        returned.dedup();
        for uid in returned {
            self.dispatch(now_ms, uid);
        }
    }

    /// What this leader decided for the cluster to commit since it was last asked: dead-letter
    /// moves and redrives ([`Command::DeadLetters`](super::Command::DeadLetters),
    /// [`Command::RedriveCopies`](super::Command::RedriveCopies)). The driver proposes them;
    /// until they commit their messages are held (in transit, or leased to the redrive).
    pub fn take_decided(&mut self) -> Vec<super::Command> {
        std::mem::take(&mut self.decided)
    }

    /// The dead-letter copy of the message at `offset` of the subscription's `partition`:
    /// its payload, key and attributes, with attributes that say why and from where, stamped
    /// with the broker's wall time (or the original's publish time, if later). `None` when
    /// the original cannot be read (or the subscription has no policy).
    fn make_copy(
        &self,
        uid: u64,
        partition: u32,
        offset: u64,
        attempts: u32,
        reason: &str,
        detail: &str,
    ) -> Option<Record> {
        let sub = &self.subscriptions[&uid];
        sub.dead_letter.as_ref()?;
        let source = self.topics.get(&sub.topic)?;
        let original = source.logs[partition as usize]
            .read(offset, 1, usize::MAX)
            .ok()
            .and_then(|records| records.into_iter().next())
            .filter(|r| r.offset == offset)?;
        let original = original.record;
        let mut attributes = original.attributes.clone();
        let facts = [
            (ATTR_REASON, reason.to_string()),
            (ATTR_DETAIL, detail.to_string()),
            (ATTR_SOURCE_SUBSCRIPTION, sub.name.clone()),
            (ATTR_SOURCE_TOPIC, sub.topic.clone()),
            (ATTR_DELIVERY_ATTEMPTS, attempts.to_string()),
            (ATTR_MESSAGE_ID, source.message_id(partition, offset)),
            (ATTR_PARTITION, partition.to_string()),
            (ATTR_OFFSET, offset.to_string()),
        ];
        attributes.extend(facts.map(|(k, v)| (k.to_string(), v)));
        Some(Record {
            key: original.key.clone(),
            value: original.value.clone(),
            attributes,
            publish_time_ms: self.wall_ms.max(original.publish_time_ms),
            // The copy is not the publisher's retry: it must never answer for the key.
            idempotency_key: None,
        })
    }

    /// Appends `copy` to the dead-letter topic of subscription `uid` and counts it; returns
    /// where it went (topic, uid, partition, offset), or `None`, changing nothing, when the
    /// topic is gone or its storage refuses.
    fn append_copy(&mut self, uid: u64, copy: Record) -> Option<(String, u64, u32, u64)> {
        let target_name = self.subscriptions[&uid].dead_letter.as_ref()?.topic.clone();
        let target_uid = self.topics.get(&target_name)?.uid;
        // A dead-letter topic made since the journal's last sync is made durable first.
        self.sync_metadata_before_append(target_uid).ok()?;
        let digest = digest_of(copy.key.as_deref(), &copy.value);
        let target = self.topics.get_mut(&target_name)?;
        let round_robin = target.round_robin;
        let target_partition = target.choose_partition(copy.key.as_deref(), None);
        let Ok((target_offset, _)) = append(target.logs[target_partition as usize].as_mut(), vec![copy]) else {
            // Nothing stored: the next keyless message goes where this one would have.
            target.round_robin = round_robin;
            return None;
        };
        let message_id = target.message_id(target_partition, target_offset);
        let topic = target_name.clone();
        self.notice(|_| Notice::Appended {
            topic,
            partition: target_partition,
            offset: target_offset,
            message_id,
            digest,
        });
        let sub = self.subscription_mut(uid);
        sub.dead_lettered += 1;
        sub.counts.dead_lettered += 1;
        Some((target_name, target_uid, target_partition, target_offset))
    }

    /// After a sync: source offsets whose dead-letter copy is now synced are done; those
    /// whose copy was cut (the sync failed) or whose topic is gone are offered again.
    /// Returns the subscriptions that may have messages to deliver now: those that got one
    /// back, and those where a finished message let the next of its ordering key go.
    pub(super) fn settle_transits(&mut self) -> Vec<u64> {
        let mut returned = Vec::new();
        let transits = std::mem::take(&mut self.transits);
        for t in transits {
            let log = self.topics.get(&t.topic).filter(|topic| topic.uid == t.topic_uid).map(|topic| {
                let log = &topic.logs[t.partition as usize];
                (log.synced_end(), log.end_offset())
            });
            let Some(sub) = self.subscriptions.get_mut(&t.source_uid) else { continue };
            let cursor = &mut sub.cursors[t.source_partition as usize];
            match log {
                Some((synced, _)) if synced > t.offset => {
                    if cursor.finish_transit(t.source_offset) {
                        returned.push(t.source_uid);
                    }
                }
                Some((_, end)) if end > t.offset => self.transits.push(t),
                _ => {
                    if cursor.abort_transit(t.source_offset) {
                        sub.dead_lettered -= 1;
                        returned.push(t.source_uid);
                    }
                }
            }
        }
        returned.sort_unstable();
        returned.dedup();
        returned
    }
}
