//! Redrive: dead letters go back to the subscription that gave up on them.
//!
//! A redrive reads a subscription on a dead-letter topic. Each copy names its source
//! subscription, partition and offset (the attributes dead-lettering added); the source
//! subscription reopens that offset, so the original message (same message id, same
//! payload) is delivered again with its attempts starting over, and the copy is acked.
//! Nothing is published again, so the topic's other subscriptions see nothing. A copy that
//! cannot go back stays in the dead-letter subscription, and the answer says why.

use super::broker::Broker;
use super::dead_letter::{ATTR_MESSAGE_ID, ATTR_OFFSET, ATTR_PARTITION, ATTR_SOURCE_SUBSCRIPTION, ATTR_SOURCE_TOPIC};
use super::delivery::Delivery;
use super::error::BrokerError;
use super::lease::AckOp;
use super::name;
use super::retry::Unacked;
use super::Notice;
use crate::storage::Record;

/// What a redrive did with one dead-letter copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redriven {
    /// The copy's message id in the dead-letter topic.
    pub message_id: String,
    /// Where it went back to (as far as its attributes say).
    pub source_subscription: String,
    /// The partition it went back to.
    pub partition: u32,
    /// Its offset there, whose lease starts over.
    pub offset: u64,
    /// `Err` says why the copy stayed where it is.
    pub outcome: Result<(), String>,
}

/// The source a dead-letter copy names.
struct Source {
    subscription: String,
    topic: String,
    message_id: String,
    partition: u32,
    offset: u64,
}

impl Broker {
    /// Moves up to `max_messages` (0 = 100) dead letters available in `subscription` back
    /// to their source subscriptions. Copies already leased to a consumer are left alone.
    pub(super) fn redrive_dead_letters(
        &mut self,
        now_ms: u64,
        subscription: &str,
        max_messages: u32,
    ) -> Result<Vec<Redriven>, BrokerError> {
        name::check("subscription", subscription)?;
        let max = self.batch_size(max_messages)?;
        let uid = self.subscription_uid(subscription)?;
        let mut results = Vec::new();
        let mut stay: Vec<Delivery> = Vec::new();
        let mut reopened: Vec<u64> = Vec::new();
        let dead_topic = self.subscriptions[&uid].topic.clone();
        while results.len() < max as usize {
            let Some(copy) = self.lease_next(now_ms, uid, None, None) else { break };
            let source = source_of(&copy.record);
            let outcome = match &source {
                Ok(source) => self.reopen(source, &dead_topic),
                Err(reason) => Err(reason.clone()),
            };
            match (&outcome, &source) {
                (Ok(source_uid), Ok(source)) => {
                    reopened.push(*source_uid);
                    let (back_to, partition, offset) = (source.subscription.clone(), source.partition, source.offset);
                    self.notice(|b| Notice::Redriven {
                        subscription: back_to,
                        partition,
                        offset,
                        lease_seq: b.next_lease_seq,
                    });
                    let acked = self.acks(now_ms, subscription, AckOp::Ack, vec![copy.ack_id.clone()])?;
                    debug_assert!(acked.iter().all(|a| a.outcome == super::AckOutcome::Applied));
                }
                _ => stay.push(copy.clone()),
            }
            let (source_subscription, partition, offset) =
                source.map_or((String::new(), 0, 0), |s| (s.subscription, s.partition, s.offset));
            results.push(Redriven {
                message_id: copy.message_id,
                source_subscription,
                partition,
                offset,
                outcome: outcome.map(drop),
            });
        }
        // Refused copies go back to the dead-letter subscription as they were, at once: a
        // redrive's own leases are not failed deliveries.
        for copy in stay {
            self.end_unacked(now_ms, uid, copy.partition, copy.offset, &Unacked::Revoked);
        }
        reopened.sort_unstable();
        reopened.dedup();
        for source_uid in reopened {
            self.dispatch(now_ms, source_uid);
        }
        self.dispatch(now_ms, uid);
        Ok(results)
    }

    /// Reopens the source offset a copy in `dead_topic` names; returns the source
    /// subscription's uid. Only a subscription that dead-letters into `dead_topic` takes
    /// messages back from it, so a message published there by hand cannot rewind others.
    fn reopen(&mut self, source: &Source, dead_topic: &str) -> Result<u64, String> {
        let uid = self
            .subscription_uids
            .get(&source.subscription)
            .copied()
            .ok_or_else(|| format!("subscription `{}` no longer exists", source.subscription))?;
        let sub = self.subscriptions.get_mut(&uid).expect("indexed subscription");
        if sub.dead_letter.as_ref().is_none_or(|policy| policy.topic != dead_topic) {
            return Err(format!("subscription `{}` does not dead-letter into `{dead_topic}`", source.subscription));
        }
        let topic = self.topics.get(&sub.topic).expect("a subscription's topic exists");
        if sub.topic != source.topic || topic.message_id(source.partition, source.offset) != source.message_id {
            return Err(format!(
                "subscription `{}` no longer reads the topic the message came from",
                source.subscription
            ));
        }
        let cursor = sub.cursors.get_mut(source.partition as usize).ok_or("the partition no longer exists")?;
        let log_start = topic.logs[source.partition as usize].start_offset();
        cursor.reopen(source.offset, log_start, self.config.redrive_rewind_offsets_max)?;
        Ok(uid)
    }
}

/// The source a dead-letter copy names in its attributes.
fn source_of(record: &Record) -> Result<Source, String> {
    let attr = |name: &str| {
        record
            .attributes
            .get(name)
            .cloned()
            .ok_or_else(|| format!("not a dead-letter copy: it has no {name} attribute"))
    };
    let number = |name: &str| attr(name)?.parse::<u64>().map_err(|_| format!("attribute {name} is not a number"));
    Ok(Source {
        subscription: attr(ATTR_SOURCE_SUBSCRIPTION)?,
        topic: attr(ATTR_SOURCE_TOPIC)?,
        message_id: attr(ATTR_MESSAGE_ID)?,
        partition: u32::try_from(number(ATTR_PARTITION)?).map_err(|_| "partition out of range".to_string())?,
        offset: number(ATTR_OFFSET)?,
    })
}
