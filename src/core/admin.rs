//! Topic and subscription management, and the views the Admin service returns.

use std::collections::BTreeMap;

use super::broker::Broker;
use super::counts::{partition_waiting, PartitionWaiting, SubscriptionCounts};
use super::dedupe::{DEDUPE_WINDOW_MS_MAX, DEDUPE_WINDOW_MS_MIN};
use super::error::BrokerError;
use super::group::{DeliveryMode, Group};
use super::lease::StreamId;
use super::name;
use super::retry::{DeadLetterPolicy, DeadLetterSpec, RetryPolicy, RetrySpec};
use super::subscription::{Cursor, StartPosition, Subscription};
use super::topic::{visible_end, Topic};
use super::Notice;
use crate::record::pb;

/// A topic as Admin reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// The topic's name.
    pub name: String,
    /// Each partition's retained range, in partition order.
    pub partitions: Vec<PartitionInfo>,
    /// The names of its subscriptions, in name order.
    pub subscriptions: Vec<String>,
    /// How long the topic remembers an idempotency key.
    pub dedupe_window_ms: u64,
}

/// One partition's retained range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// The partition's number.
    pub partition: u32,
    /// The oldest retained offset.
    pub start_offset: u64,
    /// The offset the next message will get.
    pub end_offset: u64,
    /// Runs of stored records found damaged, oldest first (see [`Output::Damaged`](super::Output::Damaged)).
    pub damaged: Vec<std::ops::Range<u64>>,
}

/// What a subscription is created with. `None` takes the default.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubscriptionSpec {
    /// The new subscription's name.
    pub name: String,
    /// The topic it reads; it must exist.
    pub topic: String,
    /// How long a delivery may go unacked; `None` takes the broker default.
    pub ack_deadline_ms: Option<u64>,
    /// Where in each partition it starts.
    pub start: StartPosition,
    /// Backoff between redeliveries; `None` redelivers at once.
    pub retry: Option<RetrySpec>,
    /// Where messages go after too many attempts; `None` keeps redelivering them.
    pub dead_letter: Option<DeadLetterSpec>,
    /// Deliver the messages of one ordering key in order, one at a time.
    pub ordered: bool,
    /// Whether members share messages or partitions.
    pub delivery_mode: DeliveryMode,
}

/// A subscription that may be created, with its settings resolved.
pub(super) struct NewSubscription {
    ack_deadline_ms: u64,
    retry: Option<RetryPolicy>,
    dead_letter: Option<DeadLetterPolicy>,
}

/// A subscription as Admin reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionInfo {
    /// The subscription's name.
    pub name: String,
    /// Its topic's name.
    pub topic: String,
    /// How long a delivery may go unacked.
    pub ack_deadline_ms: u64,
    /// Where it started.
    pub start: StartPosition,
    /// Made by a Subscribe on a topic, and deleted with its stream.
    pub ephemeral: bool,
    /// Its backoff between redeliveries; `None` redelivers at once.
    pub retry: Option<RetryPolicy>,
    /// Where messages go after too many attempts.
    pub dead_letter: Option<DeadLetterPolicy>,
    /// Messages of one ordering key go out in order, one at a time.
    pub ordered: bool,
    /// Whether members share messages or partitions.
    pub delivery_mode: DeliveryMode,
}

/// Backlog and leases of a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionStats {
    /// The subscription's name.
    pub name: String,
    /// Its topic's name.
    pub topic: String,
    /// Messages between the ack floor and the log's end not yet acked, leased ones included.
    pub backlog: u64,
    /// Messages leased and not yet acked, nacked or expired.
    pub outstanding: u64,
    /// Open Subscribe streams on it.
    pub streams: u32,
    /// Each partition's share, in partition order.
    pub partitions: Vec<PartitionStats>,
    /// Messages moved to the dead-letter topic since the subscription was made.
    pub dead_lettered: u64,
    /// Messages waiting out a retry backoff (part of the backlog).
    pub delayed: u64,
    /// Age of the oldest message not yet acked, by publish time and the wall clock the
    /// driver last gave; `None` when nothing is waiting.
    pub oldest_unacked_age_ms: Option<u64>,
    /// The generation of an exclusive subscription's assignment; 0 when shared.
    pub generation: u64,
}

/// One partition of [`SubscriptionStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionStats {
    /// The partition's number.
    pub partition: u32,
    /// Every offset below it is acked.
    pub committed_offset: u64,
    /// The offset the next message will get.
    pub end_offset: u64,
    /// Messages of this partition between its ack floor and its end not yet acked.
    pub backlog: u64,
    /// Messages of this partition leased now.
    pub outstanding: u64,
    /// `end_offset - committed_offset`: how far the ack floor trails the log, as Kafka's
    /// consumer lag (acks above the floor do not shrink it; `backlog` counts those).
    pub lag: u64,
    /// Messages waiting out a retry backoff.
    pub delayed: u64,
    /// The member an exclusive subscription leases this partition to; `None` when shared
    /// or when it has no members.
    pub member: Option<StreamId>,
}

/// The first uid of ephemeral subscriptions (the one of `__ephemeral.N` is this plus N).
pub(super) const EPHEMERAL_UID_BASE: u64 = 1 << 40;

impl Broker {
    /// Creates a topic with `partitions` (default `default_partitions`): the unit tests'
    /// shorthand for [`Command::CreateTopic`](super::Command::CreateTopic).
    #[cfg(test)]
    pub(super) fn create_topic(&mut self, topic: &str, partitions: Option<u32>) -> Result<TopicInfo, BrokerError> {
        self.create_topic_with(topic, partitions, None)
    }

    /// Creates a topic with `partitions` (default `default_partitions`) and a dedupe window
    /// (default `dedupe_window_ms`) of 1 s to 24 h.
    pub(super) fn create_topic_with(
        &mut self,
        topic: &str,
        partitions: Option<u32>,
        dedupe_window_ms: Option<u64>,
    ) -> Result<TopicInfo, BrokerError> {
        self.add_topic(topic, partitions, dedupe_window_ms, false)
    }

    /// Creates a topic; `auto` when a publish creates it.
    pub(super) fn add_topic(
        &mut self,
        topic: &str,
        partitions: Option<u32>,
        dedupe_window_ms: Option<u64>,
        auto: bool,
    ) -> Result<TopicInfo, BrokerError> {
        let (partitions, dedupe_window_ms) = self.check_new_topic(topic, partitions, dedupe_window_ms)?;
        let uid = self.next_topic_uid;
        let mut logs = Vec::with_capacity(partitions as usize);
        for partition in 0..partitions {
            match self.storage.open(uid, partition) {
                Ok(log) => logs.push(log),
                Err(e) => {
                    // What was opened goes again, so a refused create leaves nothing behind.
                    let _ = self.storage.remove(uid, logs);
                    return Err(e.into());
                }
            }
        }
        self.next_topic_uid += 1;
        self.topics.insert(topic.to_string(), Topic::new(topic.to_string(), uid, logs, dedupe_window_ms));
        if let Err(e) = self.journal(self.topic_created_entry(topic)) {
            let t = self.topics.remove(topic).expect("inserted above");
            self.dedupe_entries = self.dedupe_entries.saturating_sub(t.dedupe.len());
            let _ = self.storage.remove(uid, t.logs);
            return Err(e);
        }
        self.notice(|_| Notice::TopicCreated { topic: topic.to_string(), uid, partitions, auto });
        self.topic_info(topic)
    }

    /// Refuses a topic that cannot be created, changing nothing; else its partition count
    /// and dedupe window, defaults applied.
    pub(super) fn check_new_topic(
        &self,
        topic: &str,
        partitions: Option<u32>,
        dedupe_window_ms: Option<u64>,
    ) -> Result<(u32, u64), BrokerError> {
        name::check_new("name", topic)?;
        let dedupe_window_ms = dedupe_window_ms.unwrap_or(self.config.dedupe_window_ms);
        if !(DEDUPE_WINDOW_MS_MIN..=DEDUPE_WINDOW_MS_MAX).contains(&dedupe_window_ms) {
            return Err(BrokerError::InvalidArgument {
                field: "dedupe_window",
                reason: format!(
                    "{dedupe_window_ms} ms; allowed is 1s to 86400s (24 h), or unset or 0s for the default"
                ),
            });
        }
        let partitions = partitions.unwrap_or(self.config.default_partitions);
        if !(1..=self.config.partitions_max).contains(&partitions) {
            return Err(BrokerError::InvalidArgument {
                field: "partitions",
                reason: format!(
                    "{partitions} partitions; allowed is 1 to partitions_max = {}",
                    self.config.partitions_max
                ),
            });
        }
        if self.topics.contains_key(topic) {
            return Err(BrokerError::TopicExists { topic: topic.to_string() });
        }
        if self.topics.len() >= self.config.topics_max {
            return Err(BrokerError::LimitReached {
                what: format!("cannot create topic `{topic}`"),
                limit_name: "topics_max",
                limit: self.config.topics_max as u64,
            });
        }
        Ok((partitions, dedupe_window_ms))
    }

    /// One topic as Admin reports it.
    pub(super) fn topic_info(&self, topic: &str) -> Result<TopicInfo, BrokerError> {
        name::check("name", topic)?;
        let t = self.topic(topic)?;
        let partitions = t
            .logs
            .iter()
            .enumerate()
            .map(|(p, log)| PartitionInfo {
                partition: p as u32,
                start_offset: log.start_offset(),
                end_offset: visible_end(log.as_ref(), self.after_sync),
                damaged: log.damaged(),
            })
            .collect();
        Ok(TopicInfo {
            name: t.name.clone(),
            partitions,
            subscriptions: t.subscriptions.iter().cloned().collect(),
            dedupe_window_ms: t.dedupe.window_ms(),
        })
    }

    /// Up to `limit` topics in name order, after `after`; the second value is the last name
    /// returned when more may follow.
    pub(super) fn list_topics(&self, after: Option<&str>, limit: usize) -> (Vec<TopicInfo>, Option<String>) {
        let names: Vec<&String> = match after {
            Some(after) => self.topics.range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)),
            None => self.topics.range::<str, _>(..),
        }
        .map(|(name, _)| name)
        .take(limit + 1)
        .collect();
        let more = names.len() > limit;
        let page: Vec<TopicInfo> =
            names.into_iter().take(limit).map(|n| self.topic_info(n).expect("listed topic exists")).collect();
        let next = if more { page.last().map(|t| t.name.clone()) } else { None };
        (page, next)
    }

    /// Deletes a topic. With subscriptions attached it is refused unless `force`, which
    /// deletes them too (their streams end with NOT_FOUND). Returns the subscriptions deleted.
    pub(super) fn delete_topic(&mut self, topic: &str, force: bool) -> Result<Vec<String>, BrokerError> {
        let (subscriptions, dead_lettering) = self.check_delete_topic(topic, force)?;
        for uid in dead_lettering {
            self.subscription_mut(uid).dead_letter = None;
        }
        for sub in &subscriptions {
            self.delete_subscription(sub)?;
        }
        let t = self.topics.remove(topic).expect("topic checked above");
        self.dedupe_entries = self.dedupe_entries.saturating_sub(t.dedupe.len());
        self.notice(|_| Notice::TopicDeleted { topic: topic.to_string(), uid: t.uid });
        // The metadata goes first: the files go once the deletion is durable (the turn's
        // sync), so a crash between the two leaves files that the next start sweeps, never
        // a listed topic whose files are gone. If the journal cannot take it, the files stay
        // until a checkpoint saves the deletion and a start sweeps them.
        let _ = self.journal(pb::command::Kind::DeleteTopic(pb::DeleteTopic { name: topic.to_string(), force }));
        self.journal.doomed.push((t.uid, t.logs));
        Ok(subscriptions)
    }

    /// Creates a subscription (see [`Command::CreateSubscription`](super::Command::CreateSubscription)).
    pub(super) fn create_subscription(&mut self, spec: SubscriptionSpec) -> Result<SubscriptionInfo, BrokerError> {
        name::check_new("name", &spec.name)?;
        name::check("topic", &spec.topic)?;
        self.insert_subscription(spec, false)
    }

    /// Creates a subscription (the name is already checked).
    pub(super) fn insert_subscription(
        &mut self,
        spec: SubscriptionSpec,
        ephemeral: bool,
    ) -> Result<SubscriptionInfo, BrokerError> {
        let NewSubscription { ack_deadline_ms, retry, dead_letter } = self.check_new_subscription(&spec)?;
        let t = self.topic(&spec.topic)?;
        let partition_count = t.logs.len();
        let cursors = t
            .logs
            .iter()
            .map(|log| match spec.start {
                StartPosition::Earliest => Cursor::at(log.start_offset()),
                StartPosition::Latest => Cursor::at(visible_end(log.as_ref(), self.after_sync)),
            })
            .collect();
        // An ephemeral subscription is a cluster leader's alone: its uid comes from a range
        // of its own, so the uids every replica gives created subscriptions stay the same.
        let uid = if ephemeral {
            EPHEMERAL_UID_BASE + self.next_ephemeral
        } else {
            self.next_subscription_uid += 1;
            self.next_subscription_uid - 1
        };
        let sub = Subscription {
            name: spec.name.clone(),
            uid,
            topic: spec.topic.clone(),
            ack_deadline_ms,
            start: spec.start,
            ephemeral,
            cursors,
            members: Vec::new(),
            clients: BTreeMap::new(),
            next_member: 0,
            next_partition: 0,
            retry,
            dead_letter,
            dead_lettered: 0,
            counts: SubscriptionCounts::default(),
            ordered: spec.ordered,
            group: (spec.delivery_mode == DeliveryMode::Exclusive).then(|| Group::new(partition_count)),
            cursor_moves: 0,
        };
        let info = subscription_info(&sub);
        self.topics.get_mut(&spec.topic).expect("topic checked above").subscriptions.insert(spec.name.clone());
        self.subscription_uids.insert(spec.name.clone(), uid);
        self.subscriptions.insert(uid, sub);
        if !ephemeral {
            if let Err(e) = self.journal(self.subscription_created_entry(uid)) {
                self.remove_subscription(uid);
                return Err(e);
            }
        }
        self.notice(|b| Notice::SubscriptionCreated {
            subscription: spec.name.clone(),
            topic: spec.topic.clone(),
            topic_uid: b.topics[&spec.topic].uid,
            start: b.subscriptions[&uid].cursors.iter().map(|c| c.committed).collect(),
        });
        Ok(info)
    }

    /// Refuses a subscription that cannot be created (its name is already checked),
    /// changing nothing; else its settings, defaults applied.
    pub(super) fn check_new_subscription(&self, spec: &SubscriptionSpec) -> Result<NewSubscription, BrokerError> {
        let ack_deadline_ms = spec.ack_deadline_ms.unwrap_or(self.config.ack_deadline_ms);
        let max = self.config.ack_deadline_max_ms;
        if !(1000..=max).contains(&ack_deadline_ms) {
            return Err(BrokerError::InvalidArgument {
                field: "ack_deadline_seconds",
                reason: format!("{} s; allowed is 1 to {} s", ack_deadline_ms / 1000, max / 1000),
            });
        }
        if self.subscription_uids.contains_key(&spec.name) {
            return Err(BrokerError::SubscriptionExists { subscription: spec.name.clone() });
        }
        let retry = spec.retry.map(|r| self.retry_policy(r)).transpose()?;
        let dead_letter = spec.dead_letter.clone().map(|d| self.dead_letter_policy(d, &spec.topic)).transpose()?;
        self.topic(&spec.topic)?;
        if self.subscriptions.len() >= self.config.subscriptions_max {
            return Err(BrokerError::LimitReached {
                what: format!("cannot create subscription `{}`", spec.name),
                limit_name: "subscriptions_max",
                limit: self.config.subscriptions_max as u64,
            });
        }
        Ok(NewSubscription { ack_deadline_ms, retry, dead_letter })
    }

    /// A retry policy with its defaults filled in, refused when out of range.
    fn retry_policy(&self, spec: RetrySpec) -> Result<RetryPolicy, BrokerError> {
        let max = self.config.nack_delay_max_ms;
        let minimum_backoff_ms = spec.minimum_backoff_ms.unwrap_or(self.config.retry_minimum_backoff_ms);
        let maximum_backoff_ms =
            spec.maximum_backoff_ms.unwrap_or(self.config.retry_maximum_backoff_ms.max(minimum_backoff_ms));
        if minimum_backoff_ms > max {
            return Err(BrokerError::InvalidArgument {
                field: "retry_policy.minimum_backoff",
                reason: format!("{minimum_backoff_ms} ms; allowed is 0 to {max} ms (nack_delay_max_ms)"),
            });
        }
        if !(minimum_backoff_ms..=max).contains(&maximum_backoff_ms) {
            return Err(BrokerError::InvalidArgument {
                field: "retry_policy.maximum_backoff",
                reason: format!(
                    "{maximum_backoff_ms} ms; allowed is minimum_backoff ({minimum_backoff_ms} ms) to {max} ms (nack_delay_max_ms)"
                ),
            });
        }
        Ok(RetryPolicy { minimum_backoff_ms, maximum_backoff_ms })
    }

    /// A dead-letter policy with its default filled in; the topic must exist and differ
    /// from the subscription's own (a message would loop back to it).
    fn dead_letter_policy(&self, spec: DeadLetterSpec, topic: &str) -> Result<DeadLetterPolicy, BrokerError> {
        name::check("dead_letter_policy.dead_letter_topic", &spec.topic)?;
        if spec.topic == topic {
            return Err(BrokerError::InvalidArgument {
                field: "dead_letter_policy.dead_letter_topic",
                reason: format!("`{topic}` is the subscription's own topic; dead letters need a topic of their own"),
            });
        }
        self.topic(&spec.topic)?;
        let max = self.config.max_delivery_attempts_max;
        let attempts = spec.max_delivery_attempts.unwrap_or(self.config.max_delivery_attempts);
        if !(1..=max).contains(&attempts) {
            return Err(BrokerError::InvalidArgument {
                field: "dead_letter_policy.max_delivery_attempts",
                reason: format!("{attempts}; allowed is 1 to {max} (0 = {})", self.config.max_delivery_attempts),
            });
        }
        Ok(DeadLetterPolicy { topic: spec.topic, max_delivery_attempts: attempts })
    }

    /// One subscription as Admin reports it.
    pub(super) fn subscription_info(&self, subscription: &str) -> Result<SubscriptionInfo, BrokerError> {
        name::check("name", subscription)?;
        self.subscription_by_name(subscription).map(subscription_info)
    }

    /// Up to `limit` subscriptions in name order after `after`, of `topic` when given.
    pub(super) fn list_subscriptions(
        &self,
        topic: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<SubscriptionInfo>, Option<String>), BrokerError> {
        if let Some(topic) = topic {
            name::check("topic", topic)?;
            self.topic(topic)?;
        }
        let mut page: Vec<SubscriptionInfo> = self
            .subscription_uids
            .iter()
            .filter(|(name, _)| after.is_none_or(|after| name.as_str() > after))
            .map(|(_, uid)| &self.subscriptions[uid])
            .filter(|s| topic.is_none_or(|t| s.topic == t))
            .take(limit + 1)
            .map(subscription_info)
            .collect();
        let more = page.len() > limit;
        page.truncate(limit);
        let next = if more { page.last().map(|s| s.name.clone()) } else { None };
        Ok((page, next))
    }

    /// Deletes a subscription: its leases end and its streams end with NOT_FOUND.
    /// The deciding half of a topic deletion: refuses one that cannot be applied (an
    /// unknown topic; without `force`, one with subscriptions or one that subscriptions of
    /// other topics dead-letter into), changing nothing; else the topic's subscriptions
    /// and the uids of those that dead-letter into it.
    pub(super) fn check_delete_topic(&self, topic: &str, force: bool) -> Result<(Vec<String>, Vec<u64>), BrokerError> {
        name::check("name", topic)?;
        let subscriptions: Vec<String> = self.topic(topic)?.subscriptions.iter().cloned().collect();
        if !subscriptions.is_empty() && !force {
            return Err(BrokerError::TopicInUse { topic: topic.to_string(), subscriptions });
        }
        let dead_lettering: Vec<u64> = self
            .subscriptions
            .values()
            .filter(|s| s.dead_letter.as_ref().is_some_and(|p| p.topic == topic) && s.topic != topic)
            .map(|s| s.uid)
            .collect();
        if !dead_lettering.is_empty() && !force {
            let names = dead_lettering.iter().map(|uid| self.subscriptions[uid].name.clone()).collect();
            return Err(BrokerError::DeadLetterTopicInUse { topic: topic.to_string(), subscriptions: names });
        }
        Ok((subscriptions, dead_lettering))
    }

    /// Deletes a subscription: its streams end with NOT_FOUND, its leases with it.
    pub(super) fn delete_subscription(&mut self, subscription: &str) -> Result<(), BrokerError> {
        name::check("name", subscription)?;
        let uid = self.subscription_uid(subscription)?;
        let members = self.subscriptions[&uid].members.clone();
        for stream in members {
            self.end_stream(stream, BrokerError::SubscriptionNotFound { subscription: subscription.to_string() });
        }
        let ephemeral = self.subscriptions[&uid].ephemeral;
        self.remove_subscription(uid);
        self.notice(|_| Notice::SubscriptionDeleted { subscription: subscription.to_string() });
        if !ephemeral {
            // A failure is left for the next checkpoint, which saves the whole metadata.
            let entry = pb::DeleteSubscription { name: subscription.to_string() };
            let _ = self.journal(pb::command::Kind::DeleteSubscription(entry));
        }
        Ok(())
    }

    /// A subscription's backlog and leases, per partition and in all.
    pub(super) fn subscription_stats(&self, subscription: &str) -> Result<SubscriptionStats, BrokerError> {
        name::check("name", subscription)?;
        let sub = self.subscription_by_name(subscription)?;
        let topic = self.topic(&sub.topic)?;
        let mut oldest_publish_ms: Option<u64> = None;
        let mut partitions: Vec<PartitionStats> = Vec::with_capacity(sub.cursors.len());
        for (p, (cursor, log)) in sub.cursors.iter().zip(&topic.logs).enumerate() {
            let PartitionWaiting { committed, end, backlog, outstanding, delayed } =
                partition_waiting(cursor, log.as_ref(), self.after_sync);
            if committed < end {
                // The floor is never acked: it is the oldest message still waiting.
                if let Some(first) = log.read(committed, 1, 0).ok().and_then(|r| r.into_iter().next()) {
                    let time = first.record.publish_time_ms;
                    oldest_publish_ms = Some(oldest_publish_ms.map_or(time, |t| t.min(time)));
                }
            }
            partitions.push(PartitionStats {
                partition: p as u32,
                committed_offset: committed,
                end_offset: end,
                backlog,
                outstanding,
                lag: end.saturating_sub(committed),
                delayed,
                member: sub.group.as_ref().and_then(|g| g.owners[p]),
            });
        }
        Ok(SubscriptionStats {
            name: sub.name.clone(),
            topic: sub.topic.clone(),
            backlog: partitions.iter().map(|p| p.backlog).sum(),
            outstanding: partitions.iter().map(|p| p.outstanding).sum(),
            streams: sub.members.len() as u32,
            dead_lettered: sub.dead_lettered,
            delayed: partitions.iter().map(|p| p.delayed).sum(),
            oldest_unacked_age_ms: oldest_publish_ms.map(|t| self.wall_ms.saturating_sub(t)),
            generation: sub.generation(),
            partitions,
        })
    }
}

fn subscription_info(sub: &Subscription) -> SubscriptionInfo {
    SubscriptionInfo {
        name: sub.name.clone(),
        topic: sub.topic.clone(),
        ack_deadline_ms: sub.ack_deadline_ms,
        start: sub.start,
        ephemeral: sub.ephemeral,
        retry: sub.retry,
        dead_letter: sub.dead_letter.clone(),
        ordered: sub.ordered,
        delivery_mode: sub.delivery_mode(),
    }
}
