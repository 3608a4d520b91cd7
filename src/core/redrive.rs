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

/// How a redrive puts a source offset back.
#[derive(Clone, Copy)]
enum Reopen {
    /// A single broker, or a cluster's replica applying a committed redrive.
    Now { replicated: bool },
    /// A cluster leader deciding: only checks, changing nothing.
    Check,
}

impl Broker {
    /// Moves up to `max_messages` (0 = 100) dead letters available in `subscription` back
    /// to their source subscriptions. Copies already leased to a consumer are left alone.
    ///
    /// A cluster's leader moves nothing here: the copies that can go back are held (leased
    /// to the redrive) and proposed as one [`Command::RedriveCopies`](super::Command), which
    /// every replica applies when it commits ([`Broker::apply_redrive`]); the answer lists
    /// only the copies that stay.
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
        let mut decided: Vec<(u32, u64)> = Vec::new();
        let dead_topic = self.subscriptions[&uid].topic.clone();
        let how = if self.replicated { Reopen::Check } else { Reopen::Now { replicated: false } };
        while results.len() + decided.len() < max as usize {
            let Some(copy) = self.lease_next(now_ms, uid, None, None) else { break };
            let source = source_of(&copy.record);
            let outcome = match &source {
                Ok(source) => self.reopen(source, &dead_topic, how),
                Err(reason) => Err(reason.clone()),
            };
            match (&outcome, &source, how) {
                (Ok(_), Ok(_), Reopen::Check) => {
                    decided.push((copy.partition, copy.offset));
                    continue;
                }
                (Ok(source_uid), Ok(source), Reopen::Now { .. }) => {
                    reopened.push(*source_uid);
                    self.notice_redriven(source);
                    let acked = self.acks(now_ms, subscription, AckOp::Ack, vec![copy.ack_id.clone()])?;
                    debug_assert!(acked.iter().all(|a| a.outcome == super::AckOutcome::Applied));
                }
                _ => stay.push(copy.clone()),
            }
            results.push(redriven(copy.message_id, source.as_ref().ok(), outcome));
        }
        // Refused copies go back to the dead-letter subscription as they were, at once: a
        // redrive's own leases are not failed deliveries.
        for copy in stay {
            self.end_unacked(now_ms, uid, copy.partition, copy.offset, &Unacked::Revoked);
        }
        if !decided.is_empty() {
            let subscription = subscription.to_string();
            self.decided.push(super::Command::RedriveCopies { subscription, uid, copies: decided });
        }
        reopened.sort_unstable();
        reopened.dedup();
        for source_uid in reopened {
            self.dispatch(now_ms, source_uid);
        }
        self.dispatch(now_ms, uid);
        Ok(results)
    }

    /// Applies a redrive a cluster leader decided, on every replica alike: each copy's
    /// source offset waits for delivery again, and the copy is done in subscription `uid`
    /// (the caller checked it exists). On the leader the redrive's leases on the copies end;
    /// a copy that can no longer go back goes back to the subscription there.
    pub(super) fn apply_redrive(&mut self, now_ms: u64, uid: u64, copies: Vec<(u32, u64)>) -> Vec<Redriven> {
        let dead_topic = self.subscriptions[&uid].topic.clone();
        let mut results = Vec::with_capacity(copies.len());
        let mut reopened = Vec::new();
        for (partition, offset) in copies {
            let Ok(topic) = self.topic(&dead_topic) else { break };
            let Some(log) = topic.logs.get(partition as usize) else { continue };
            let message_id = topic.message_id(partition, offset);
            let record = log
                .read(offset, 1, usize::MAX)
                .ok()
                .and_then(|records| records.into_iter().next())
                .filter(|r| r.offset == offset)
                .ok_or_else(|| format!("the copy at p{partition}@{offset} cannot be read on this node"));
            let source = record.and_then(|r| source_of(&r.record));
            let outcome = match &source {
                Ok(source) => self.reopen(source, &dead_topic, Reopen::Now { replicated: true }),
                Err(reason) => Err(reason.clone()),
            };
            let leased_here = self.subscriptions[&uid].cursors[partition as usize].leased.contains_key(&offset);
            match (&outcome, &source) {
                (Ok(source_uid), Ok(source)) => {
                    reopened.push(*source_uid);
                    self.notice_redriven(source);
                    if leased_here {
                        self.end_lease_acked(uid, partition, offset);
                    } else {
                        self.cursor_mut(uid, partition).settle(offset);
                    }
                }
                _ if leased_here => self.end_unacked(now_ms, uid, partition, offset, &Unacked::Revoked),
                _ => {}
            }
            results.push(redriven(message_id, source.as_ref().ok(), outcome));
        }
        reopened.sort_unstable();
        reopened.dedup();
        for source_uid in reopened {
            self.dispatch(now_ms, source_uid);
        }
        self.dispatch(now_ms, uid);
        results
    }

    fn notice_redriven(&mut self, source: &Source) {
        let (subscription, partition, offset) = (source.subscription.clone(), source.partition, source.offset);
        self.notice(|b| Notice::Redriven { subscription, partition, offset, lease_seq: b.next_lease_seq });
    }

    /// Reopens the source offset a copy in `dead_topic` names (or, `how` = `Check`, says
    /// whether it could); returns the source subscription's uid. Only a subscription that
    /// dead-letters into `dead_topic` takes messages back from it, so a message published
    /// there by hand cannot rewind others.
    fn reopen(&mut self, source: &Source, dead_topic: &str, how: Reopen) -> Result<u64, String> {
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
        if let Reopen::Now { .. } = how {
            sub.cursor_moves += 1;
        }
        let cursor = sub.cursors.get_mut(source.partition as usize).ok_or("the partition no longer exists")?;
        let log_start = topic.logs[source.partition as usize].start_offset();
        let rewind_max = self.config.redrive_rewind_offsets_max;
        match how {
            Reopen::Check => cursor.check_reopen(source.offset, log_start, rewind_max)?,
            Reopen::Now { replicated: false } => cursor.reopen(source.offset, log_start, rewind_max)?,
            Reopen::Now { replicated: true } => cursor.reopen_replicated(source.offset, log_start, rewind_max)?,
        }
        Ok(uid)
    }
}

/// What a redrive did with the copy `message_id`, which names `source` (when it does).
fn redriven(message_id: String, source: Option<&Source>, outcome: Result<u64, String>) -> Redriven {
    let (source_subscription, partition, offset) =
        source.map_or((String::new(), 0, 0), |s| (s.subscription.clone(), s.partition, s.offset));
    Redriven { message_id, source_subscription, partition, offset, outcome: outcome.map(drop) }
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
