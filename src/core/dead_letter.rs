//! Dead letters: a message a subscription gives up on is copied to its dead-letter topic
//! (payload, key and attributes unchanged, plus attributes that say why and from where),
//! and counts as done for the subscription once the copy is durable.
//!
//! Under acknowledgement after fsync the copy is only durable after the next sync, so the
//! source offset waits "in transit" until then: a crash or a failed sync before it brings
//! the message back to the subscription instead of losing it. Under the other policies the
//! source offset is done at once, with the durability those policies promise.

use super::broker::Broker;
use super::publish::append;
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

impl Broker {
    /// Copies the message at `offset` of the subscription's `partition` to its dead-letter
    /// topic. Returns false, changing nothing, when the copy cannot be made (the source
    /// record cannot be read, the topic is gone, or its storage refuses).
    pub(super) fn dead_letter(
        &mut self,
        uid: u64,
        partition: u32,
        offset: u64,
        attempts: u32,
        reason: &str,
        detail: &str,
    ) -> bool {
        let sub = &self.subscriptions[&uid];
        let policy = sub.dead_letter.as_ref().expect("dead-lettering needs a policy");
        let source = &self.topics[&sub.topic];
        let Some(original) = source.logs[partition as usize]
            .read(offset, 1, usize::MAX)
            .ok()
            .and_then(|records| records.into_iter().next())
            .filter(|r| r.offset == offset)
        else {
            return false;
        };
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
        let copy = Record {
            key: original.key.clone(),
            value: original.value.clone(),
            attributes,
            publish_time_ms: self.wall_ms.max(original.publish_time_ms),
            // The copy is not the publisher's retry: it must never answer for the key.
            idempotency_key: None,
        };
        let target_name = policy.topic.clone();
        let Some(target_uid) = self.topics.get(&target_name).map(|t| t.uid) else { return false };
        // A dead-letter topic made since the journal's last sync is made durable first.
        if self.sync_metadata_before_append(target_uid).is_err() {
            return false;
        }
        let Some(target) = self.topics.get_mut(&target_name) else { return false };
        let target_partition = target.choose_partition(copy.key.as_deref(), None);
        let Ok((target_offset, _)) = append(target.logs[target_partition as usize].as_mut(), vec![copy]) else {
            return false;
        };
        let after_sync = self.after_sync;
        let sub = self.subscription_mut(uid);
        sub.dead_lettered += 1;
        sub.counts.dead_lettered += 1;
        let cursor = &mut sub.cursors[partition as usize];
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
