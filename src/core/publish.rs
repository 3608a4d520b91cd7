//! Publishing: validate the whole request, then append it.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::broker::Broker;
use super::error::BrokerError;
use super::name;
use crate::storage::{message_size, PartitionLog, Record, Retention};

/// A message as a publisher sends it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutgoingMessage {
    pub value: Bytes,
    pub key: Option<String>,
    pub attributes: BTreeMap<String, String>,
    /// An explicit partition; overrides the key.
    pub partition: Option<u32>,
}

/// Where a published message was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub message_id: String,
    pub partition: u32,
    pub offset: u64,
}

impl Broker {
    /// Appends `messages` to `topic` and returns where each went, in request order.
    ///
    /// Everything is checked before anything is stored, so a refused request stores
    /// nothing. Messages of one partition keep their request order.
    pub fn publish(
        &mut self,
        now_ms: u64,
        wall_ms: u64,
        topic: &str,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<Published>, BrokerError> {
        self.set_wall_ms(wall_ms);
        name::check("topic", topic)?;
        self.check_messages(&messages)?;
        let partitions = match self.topics.get(topic) {
            Some(t) => t.partition_count(),
            None if self.config.auto_create_topics => {
                name::check_new("topic", topic)?;
                self.config.default_partitions
            }
            None => return Err(BrokerError::TopicNotFound { topic: topic.to_string() }),
        };
        for (i, message) in messages.iter().enumerate() {
            if let Some(partition) = message.partition.filter(|p| *p >= partitions) {
                return Err(BrokerError::PartitionOutOfRange {
                    field: field_name(messages.len(), i, "partition"),
                    topic: topic.to_string(),
                    partition,
                    partitions,
                });
            }
        }
        if !self.topics.contains_key(topic) {
            self.create_topic(topic, None)?;
        }
        let t = self.topics.get_mut(topic).expect("the topic exists or was just made");

        let mut by_partition: BTreeMap<u32, Vec<(usize, Record)>> = BTreeMap::new();
        for (i, message) in messages.into_iter().enumerate() {
            let partition = t.choose_partition(message.key.as_deref(), message.partition);
            let record = Record {
                key: message.key,
                value: message.value,
                attributes: message.attributes,
                publish_time_ms: wall_ms,
            };
            by_partition.entry(partition).or_default().push((i, record));
        }

        let mut results = vec![None; by_partition.values().map(Vec::len).sum()];
        // All or nothing: when one partition refuses, what the others took is cut off again
        // before anyone could read it (nothing is dispatched until the request is done).
        let mut appended: Vec<(u32, u64)> = Vec::new();
        for (partition, batch) in by_partition {
            let (indexes, records): (Vec<usize>, Vec<Record>) = batch.into_iter().unzip();
            let log = &mut t.logs[partition as usize];
            let first = match append(log.as_mut(), records) {
                Ok(first) => first,
                Err(error) => {
                    for (partition, end) in appended {
                        // A cut the disk refuses stays pending in the log and keeps the
                        // records unread until it is done.
                        let _ = t.logs[partition as usize].truncate(end);
                    }
                    return Err(error);
                }
            };
            appended.push((partition, first));
            for (n, i) in indexes.into_iter().enumerate() {
                let offset = first + n as u64;
                results[i] = Some(Published { message_id: t.message_id(partition, offset), partition, offset });
            }
        }
        let results = results.into_iter().map(|r| r.expect("every message was placed")).collect();
        // Retention runs after the append has succeeded everywhere. If the disk refuses it,
        // the publish still stands; the next append or checkpoint tries again.
        let retention = Retention {
            max_bytes: self.config.partition_retention_bytes,
            min_publish_time_ms: self.config.partition_retention_ms.map(|ms| wall_ms.saturating_sub(ms)),
        };
        let mut trimmed = Vec::new();
        for (partition, first) in appended {
            let log = &mut t.logs[partition as usize];
            let start = log.start_offset();
            let _ = log.apply_retention(&retention, first);
            if log.start_offset() > start {
                trimmed.push((partition, log.start_offset()));
            }
        }
        for (partition, start) in trimmed {
            self.retention_moved(topic, partition, start);
        }
        self.dispatch_topic(now_ms, topic);
        Ok(results)
    }

    fn check_messages(&self, messages: &[OutgoingMessage]) -> Result<(), BrokerError> {
        let limit = self.config.publish_batch_messages_max;
        if messages.is_empty() {
            return Err(BrokerError::InvalidArgument {
                field: "messages",
                reason: "no message to publish; send a value or a non-empty messages list".to_string(),
            });
        }
        if messages.len() > limit {
            return Err(BrokerError::InvalidArgument {
                field: "messages",
                reason: format!(
                    "{} messages in one request; the limit is publish_batch_messages_max = {limit}",
                    messages.len()
                ),
            });
        }
        for (i, message) in messages.iter().enumerate() {
            let size = message_size(&message.value, message.key.as_deref(), &message.attributes);
            if size > self.config.max_message_bytes {
                return Err(BrokerError::MessageTooLarge {
                    field: field_name(messages.len(), i, "value"),
                    size,
                    limit: self.config.max_message_bytes,
                });
            }
            if message.attributes.len() > self.config.attributes_max {
                return Err(BrokerError::InvalidArgument {
                    field: "attributes",
                    reason: format!(
                        "{} attributes on message {i}; the limit is attributes_max = {}",
                        message.attributes.len(),
                        self.config.attributes_max
                    ),
                });
            }
            if message.attributes.keys().any(String::is_empty) {
                return Err(BrokerError::InvalidArgument {
                    field: "attributes",
                    reason: format!("message {i} has an attribute with an empty key"),
                });
            }
        }
        Ok(())
    }
}

/// Appends one partition's share of a publish; returns the first offset.
pub(super) fn append(log: &mut dyn PartitionLog, mut records: Vec<Record>) -> Result<u64, BrokerError> {
    // Publish times never decrease within a partition, so Seek by time can search.
    let last_time = match log.end_offset().checked_sub(1) {
        Some(last) if last >= log.start_offset() => {
            log.read(last, 1, usize::MAX)?.first().map_or(0, |r| r.record.publish_time_ms)
        }
        _ => 0,
    };
    for record in &mut records {
        record.publish_time_ms = record.publish_time_ms.max(last_time);
    }
    Ok(log.append(records)?)
}

/// `value` for a single message, `messages[3].value` in a batch.
fn field_name(count: usize, index: usize, field: &str) -> String {
    if count == 1 {
        field.to_string()
    } else {
        format!("messages[{index}].{field}")
    }
}
