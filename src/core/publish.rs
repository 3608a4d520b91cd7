//! Publishing: validate the whole request, then append it.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

use bytes::Bytes;

use super::broker::Broker;
use super::dedupe::{BatchKeys, Dedupe, Original};
use super::error::BrokerError;
use super::name;
use super::topic::Topic;
use super::{Mutation, Notice};
use crate::storage::{message_size, PartitionLog, Record, Retention};

/// A message as a publisher sends it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// The payload; at most `message_bytes_max`.
    pub value: Bytes,
    /// The ordering key: messages with one key go to one partition, in order.
    pub key: Option<String>,
    /// Free-form metadata delivered with the message.
    pub attributes: BTreeMap<String, String>,
    /// An explicit partition; overrides the key.
    pub partition: Option<u32>,
    /// Names the message for dedupe: within the topic's window, the same key again is
    /// answered with this message's place and not stored.
    pub idempotency_key: Option<String>,
}

/// Where a published message was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The message's id (topic, partition and offset).
    pub message_id: String,
    /// The partition it is stored in.
    pub partition: u32,
    /// Its offset there.
    pub offset: u64,
    /// The message was not stored: its idempotency key named an earlier one, whose place
    /// this is.
    pub duplicate: bool,
}

impl Broker {
    /// Appends `messages` to `topic` and returns where each went, in request order.
    ///
    /// Everything is checked before anything is stored, so a refused request stores
    /// nothing. Messages of one partition keep their request order. A message whose
    /// idempotency key the topic holds (or that an earlier message of the same request
    /// carries) is not stored: it is answered with the original's place, `duplicate` set.
    /// The unit tests' shorthand for [`Command::Publish`](super::Command::Publish).
    #[cfg(test)]
    pub(super) fn publish(
        &mut self,
        now_ms: u64,
        wall_ms: u64,
        topic: &str,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<Published>, BrokerError> {
        self.set_wall_ms(wall_ms);
        let create = self.check_publish(topic, &messages)?;
        self.apply_publish(now_ms, wall_ms, topic, messages, create)
    }

    /// The deciding half of a publish: refuses a request that cannot be stored (its topic,
    /// its messages, their partitions), changing nothing. `Ok(true)`: the topic does not
    /// exist and the publish creates it.
    pub(super) fn check_publish(&self, topic: &str, messages: &[OutgoingMessage]) -> Result<bool, BrokerError> {
        name::check("topic", topic)?;
        self.check_messages(messages)?;
        let (partitions, create) = match self.topics.get(topic) {
            Some(t) => (t.partition_count(), false),
            None if self.config.auto_create_topics => {
                name::check_new("topic", topic)?;
                (self.check_new_topic(topic, None, None)?.0, true)
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
        Ok(create)
    }

    /// A cluster leader's check that a publish will find room in the dedupe index when it
    /// applies, with `reserved` entries more that publishes proposed before it (to any topic)
    /// may add: a refusal at apply, after the publishes behind it on its stream were
    /// proposed, would let those be stored before it is sent again. Counts every idempotency
    /// key as an entry of its own, so it may refuse a publish a little below the bound that
    /// would fit. The keys to reserve for it: its idempotency keys.
    pub fn check_publish_room(
        &self,
        topic: &str,
        messages: &[OutgoingMessage],
        reserved: usize,
    ) -> Result<usize, BrokerError> {
        let keyed = messages.iter().filter(|m| m.idempotency_key.is_some()).count();
        // A topic the publish creates holds none yet.
        let held = self.topics.get(topic).map_or(0, |t| t.dedupe.len());
        let bound = self.keys_bound(held);
        if keyed == 0 || held + reserved + keyed <= bound.max {
            return Ok(keyed);
        }
        Err(BrokerError::LimitReached {
            what: format!(
                "topic `{topic}` holds {held} dedupe entries, publishes waiting to commit may add {reserved}, and this publish up to {keyed}; retry when older keys pass the dedupe window"
            ),
            limit_name: bound.name,
            limit: bound.whole as u64,
        })
    }

    /// The bound on a topic's dedupe index that holds `held` entries: its own, or what the
    /// other topics leave of the broker's.
    fn keys_bound(&self, held: usize) -> KeysBound {
        let others = self.dedupe_entries.saturating_sub(held);
        let broker_left = self.config.dedupe_keys_broker_max.saturating_sub(others);
        if broker_left < self.config.dedupe_keys_max {
            KeysBound { name: "dedupe_keys_broker_max", max: broker_left, whole: self.config.dedupe_keys_broker_max }
        } else {
            KeysBound { name: "dedupe_keys_max", max: self.config.dedupe_keys_max, whole: self.config.dedupe_keys_max }
        }
    }

    /// The applying half of a publish that [`Broker::check_publish`] let through: creates
    /// the topic when `create`, looks the idempotency keys up, places and appends the new
    /// messages, applies retention, and dispatches. Deterministic given the state, the
    /// command and its time; only the disk can still refuse it.
    pub(super) fn apply_publish(
        &mut self,
        now_ms: u64,
        wall_ms: u64,
        topic: &str,
        messages: Vec<OutgoingMessage>,
        create: bool,
    ) -> Result<Vec<Published>, BrokerError> {
        if create {
            self.add_topic(topic, None, None, true)?;
        }
        if messages.iter().any(|m| m.idempotency_key.is_some()) {
            self.mark_keys_used(topic)?;
        }
        let uid = self.topics[topic].uid;
        self.sync_metadata_before_append(uid)?;
        // The index may grow to its own bound, and to what the other topics leave of the
        // broker's.
        let held = self.topics[topic].dedupe.len();
        let others = self.dedupe_entries.saturating_sub(held);
        let bound = self.keys_bound(held);
        let t = self.topics.get_mut(topic).expect("the topic exists or was just made");
        t.dedupe.expire(wall_ms);
        let digests: Vec<u32> = match self.notices.is_some() {
            true => messages.iter().map(digest).collect(),
            false => Vec::new(),
        };
        let slots = plan(&t.dedupe, messages);
        let stored = store(t, wall_ms, slots, bound);
        self.dedupe_entries = others + t.dedupe.len();
        let (mut results, appended) = stored?;
        for (result, digest) in results.iter().zip(digests).filter(|(r, _)| !r.duplicate) {
            let (partition, offset, message_id) = (result.partition, result.offset, result.message_id.clone());
            let topic = topic.to_string();
            self.notice(|_| Notice::Appended { topic, partition, offset, message_id, digest });
        }
        let t = self.topics.get_mut(topic).expect("the topic exists or was just made");
        if self.config.mutated(Mutation::OffsetGivenTwice) {
            for result in results.iter_mut().filter(|r| !r.duplicate && r.offset % 3 == 2) {
                result.offset -= 1;
                result.message_id = t.message_id(result.partition, result.offset);
            }
        }
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
                t.dedupe.retained_from(partition, log.start_offset());
            }
        }
        self.dedupe_entries = others + t.dedupe.len();
        for (partition, start) in trimmed {
            self.retention_moved(topic, partition, start);
        }
        self.dispatch_topic(now_ms, topic);
        Ok(results)
    }

    /// Makes durable, before a topic's first idempotency key is stored, that its log holds
    /// keys, so that the broker rebuilds its dedupe index when it opens: a journal entry,
    /// synced before the records are written (once per topic, so the extra fsync is rare).
    /// On failure the flag is unset again, so the next keyed publish tries again.
    fn mark_keys_used(&mut self, topic: &str) -> Result<(), BrokerError> {
        let dedupe = &mut self.topics.get_mut(topic).expect("the topic exists").dedupe;
        if dedupe.keys_used() {
            return Ok(());
        }
        dedupe.set_keys_used(true);
        let entry = crate::record::pb::KeysUsed { topic: topic.to_string() };
        let journaled = self.journal(crate::record::pb::command::Kind::KeysUsed(entry));
        journaled.and_then(|()| self.sync_metadata()).inspect_err(|_| {
            self.topics.get_mut(topic).expect("the topic exists").dedupe.set_keys_used(false);
        })
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
            if let Some(key) = &message.idempotency_key {
                self.check_idempotency_key(messages.len(), i, key)?;
            }
        }
        Ok(())
    }

    fn check_idempotency_key(&self, count: usize, index: usize, key: &str) -> Result<(), BrokerError> {
        let limit = self.config.idempotency_key_bytes_max;
        let reason = if key.is_empty() {
            format!("is empty; an idempotency key is 1 to idempotency_key_bytes_max = {limit} bytes (or unset)")
        } else if key.len() > limit {
            format!("is {} bytes; the limit is idempotency_key_bytes_max = {limit}", key.len())
        } else {
            return Ok(());
        };
        Err(BrokerError::InvalidIdempotencyKey { field: field_name(count, index, "idempotency_key"), reason })
    }
}

/// What a publish does with one message of the request.
enum Slot {
    /// Stored; the index learns its idempotency key, if any, once the request succeeded.
    New(OutgoingMessage),
    /// A key the topic already holds: answered with the original's place.
    Held(Original),
    /// A key an earlier message of this request carries: answered like that message.
    SameAs(usize),
}

/// Sorts the messages of a request into new ones and duplicates.
/// CRC32C of a message's key bytes followed by its value (see [`Notice::Appended`]).
fn digest(message: &OutgoingMessage) -> u32 {
    digest_of(message.key.as_deref(), &message.value)
}

/// CRC32C of `key`'s bytes followed by `value`'s (see [`Notice::Appended`]).
pub(super) fn digest_of(key: Option<&str>, value: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(key.unwrap_or_default().as_bytes()), value)
}

fn plan(dedupe: &Dedupe, messages: Vec<OutgoingMessage>) -> Vec<Slot> {
    // The keys are borrowed from the request: finding a repeat copies none.
    let mut first_keys = FirstKeys::default();
    let mut duplicates: Vec<Option<Slot>> = Vec::with_capacity(messages.len());
    for (i, message) in messages.iter().enumerate() {
        let duplicate = message.idempotency_key.as_deref().and_then(|key| {
            let seq = super::dedupe::sequenced(key);
            match dedupe.get_sequenced(key, seq) {
                Some(original) => Some(Slot::Held(original)),
                None => first_keys.first(key, seq, i).map(Slot::SameAs),
            }
        });
        duplicates.push(duplicate);
    }
    messages.into_iter().zip(duplicates).map(|(message, duplicate)| duplicate.unwrap_or(Slot::New(message))).collect()
}

/// The keys of a request's new messages so far, each with where it first came, to answer a
/// repeat like its first. A publisher's batch (keys `{prefix}-{n}`, one prefix, `n` rising)
/// cannot repeat a key, so while the keys keep to that they are only listed; the first key
/// that does not moves them all into a map, which answers from then on.
#[derive(Debug, Default)]
struct FirstKeys<'a> {
    rising: Vec<(&'a str, usize)>,
    /// The prefix and `n` of the last key, while the keys rise.
    last: Option<(&'a str, u64)>,
    map: Option<BTreeMap<&'a str, usize>>,
}

impl<'a> FirstKeys<'a> {
    /// `None` if `key` is new in this request (it is remembered as first at `i`), else the
    /// index of the message that first carried it. `seq` is `sequenced(key)`.
    fn first(&mut self, key: &'a str, seq: Option<(&'a str, u64)>, i: usize) -> Option<usize> {
        let map = match &mut self.map {
            Some(map) => map,
            None => {
                let last = self.last;
                let rises = seq.filter(|&(prefix, n)| {
                    last.is_none_or(|(last_prefix, last_n)| prefix == last_prefix && n > last_n)
                });
                if let Some(next) = rises {
                    self.last = Some(next);
                    self.rising.push((key, i));
                    return None;
                }
                self.map.insert(self.rising.drain(..).collect())
            }
        };
        match map.entry(key) {
            Entry::Occupied(first) => Some(*first.get()),
            Entry::Vacant(slot) => {
                slot.insert(i);
                None
            }
        }
    }
}

/// The new idempotency keys of each partition's share of a request, grouped into the
/// entries the index will hold.
fn batch_keys(by_partition: &BTreeMap<u32, Vec<(usize, Record)>>) -> Vec<BatchKeys> {
    let keys_of = |batch: &Vec<(usize, Record)>| {
        let mut keys = BatchKeys::default();
        for (at, (_, record)) in batch.iter().enumerate() {
            if let Some(key) = &record.idempotency_key {
                keys.push(at as u64, key);
            }
        }
        keys
    };
    by_partition.values().map(keys_of).collect()
}

/// Refuses a request whose new keys would take the topic's index past `dedupe_keys_max`
/// entries (a run of keys `{prefix}-{n}` in one partition's share is one entry).
/// How many dedupe entries a topic's index may hold after a publish, and which setting
/// says so: `max` of the topic's own bound, or what the other topics leave of the
/// broker's (`whole`).
#[derive(Debug, Clone, Copy)]
struct KeysBound {
    name: &'static str,
    max: usize,
    whole: usize,
}

fn check_bound(
    t: &Topic,
    wall_ms: u64,
    by_partition: &BTreeMap<u32, Vec<(usize, Record)>>,
    keys: &[BatchKeys],
    bound: KeysBound,
) -> Result<(), BrokerError> {
    let added: usize = by_partition
        .keys()
        .zip(keys)
        .map(|(&partition, keys)| {
            let end = t.logs[partition as usize].end_offset();
            t.dedupe.entries_added(partition, end, wall_ms, keys)
        })
        .sum();
    if t.dedupe.len() + added <= bound.max {
        return Ok(());
    }
    let held = if bound.name == "dedupe_keys_max" {
        format!("topic `{}` holds {} dedupe entries", t.name, t.dedupe.len())
    } else {
        let others = bound.whole - bound.max;
        format!("topic `{}` holds {} dedupe entries (the other topics {others})", t.name, t.dedupe.len())
    };
    Err(BrokerError::LimitReached {
        what: format!(
            "{held} and this publish adds {added} (an entry is one idempotency key, or a run of keys `{{prefix}}-{{n}}` numbered in order in one partition's share of a publish); retry when older keys pass the dedupe window"
        ),
        limit_name: bound.name,
        limit: bound.whole as u64,
    })
}

/// (partition, first offset appended) for every partition a publish appended to.
type Appended = Vec<(u32, u64)>;

/// A request sorted by where its messages go.
struct Placement {
    /// New records by partition, each with its index in the request.
    by_partition: BTreeMap<u32, Vec<(usize, Record)>>,
    /// Answers by request index; the new messages' are filled in once appended.
    answers: Vec<Option<Published>>,
    /// (index, index of the earlier message of the request with the same key).
    same_as: Vec<(usize, usize)>,
}

/// Chooses the partition of every new message and answers the duplicates of held keys.
fn place(t: &mut Topic, wall_ms: u64, slots: Vec<Slot>) -> Placement {
    let mut placement = Placement { by_partition: BTreeMap::new(), answers: Vec::new(), same_as: Vec::new() };
    for (i, slot) in slots.into_iter().enumerate() {
        let answer = match slot {
            Slot::New(message) => {
                let partition = t.choose_partition(message.key.as_deref(), message.partition);
                let record = Record {
                    key: message.key,
                    value: message.value,
                    attributes: message.attributes,
                    publish_time_ms: wall_ms,
                    idempotency_key: message.idempotency_key,
                };
                placement.by_partition.entry(partition).or_default().push((i, record));
                None
            }
            Slot::Held(Original { partition, offset, .. }) => {
                Some(Published { message_id: t.message_id(partition, offset), partition, offset, duplicate: true })
            }
            Slot::SameAs(first) => {
                placement.same_as.push((i, first));
                None
            }
        };
        placement.answers.push(answer);
    }
    placement
}

/// Appends the new messages of a request, all or nothing, then teaches the index their
/// keys and answers every slot. Returns the answers and, per partition appended to, the
/// first offset. Refuses the request, storing nothing, if its new keys would take the
/// index past its bound.
fn store(
    t: &mut Topic,
    wall_ms: u64,
    slots: Vec<Slot>,
    keys_max: KeysBound,
) -> Result<(Vec<Published>, Appended), BrokerError> {
    let round_robin = t.round_robin;
    let Placement { by_partition, mut answers, same_as } = place(t, wall_ms, slots);
    let keys = batch_keys(&by_partition);
    if let Err(refused) = check_bound(t, wall_ms, &by_partition, &keys, keys_max) {
        // A refused request changes nothing, not even where the next keyless message goes.
        t.round_robin = round_robin;
        return Err(refused);
    }
    let mut learnt = Vec::new();
    // All or nothing: when one partition refuses, what the others took is cut off again
    // before anyone could read it (nothing is dispatched until the request is done), and
    // the index has learnt none of the keys yet.
    let mut appended: Vec<(u32, u64)> = Vec::new();
    for ((partition, batch), keys) in by_partition.into_iter().zip(keys) {
        let (indexes, records): (Vec<usize>, Vec<Record>) = batch.into_iter().unzip();
        let (first, time_ms) = match append(t.logs[partition as usize].as_mut(), records) {
            Ok(placed) => placed,
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
            answers[i] =
                Some(Published { message_id: t.message_id(partition, offset), partition, offset, duplicate: false });
        }
        learnt.push((partition, first, time_ms, keys));
    }
    for (partition, first, time_ms, keys) in learnt {
        t.dedupe.insert_batch(partition, first, time_ms, keys);
    }
    for (i, first) in same_as {
        let original = answers[first].clone().expect("an earlier message of the request was placed");
        answers[i] = Some(Published { duplicate: true, ..original });
    }
    let answers = answers.into_iter().map(|a| a.expect("every message was answered")).collect();
    Ok((answers, appended))
}

/// Appends one partition's share of a publish; returns the first offset and the publish
/// time the records were stored with.
pub(super) fn append(log: &mut dyn PartitionLog, mut records: Vec<Record>) -> Result<(u64, u64), BrokerError> {
    // Publish times never decrease within a partition, so Seek by time can search.
    // It is kept in memory: an append never reads an old record, so a damaged one cannot
    // stop the partition taking new ones.
    let last_time = log.last_publish_time_ms().unwrap_or(0);
    let mut time_ms = last_time;
    for record in &mut records {
        record.publish_time_ms = record.publish_time_ms.max(last_time);
        time_ms = record.publish_time_ms;
    }
    Ok((log.append(records)?, time_ms))
}

/// `value` for a single message, `messages[3].value` in a batch.
fn field_name(count: usize, index: usize, field: &str) -> String {
    if count == 1 {
        field.to_string()
    } else {
        format!("messages[{index}].{field}")
    }
}

#[cfg(test)]
mod tests {
    use super::super::dedupe::sequenced;
    use super::*;

    /// Every sequence of up to five keys drawn from rising runs, other prefixes, a repeat
    /// and keys that are not `{prefix}-{n}` is answered as a plain map answers it.
    #[test]
    fn first_keys_answers_as_a_map_of_every_key_does() {
        let alphabet = ["a-1", "a-2", "a-3", "b-1", "a-01", "x", "a-0", "-1"];
        let mut sequences: Vec<Vec<&str>> = vec![Vec::new()];
        for _ in 0..5 {
            let longer: Vec<Vec<&str>> = sequences
                .iter()
                .filter(|s| s.len() == sequences.last().map_or(0, Vec::len))
                .flat_map(|s| alphabet.iter().map(move |k| [s.clone(), vec![*k]].concat()))
                .collect();
            sequences.extend(longer);
        }
        for keys in &sequences {
            let mut first_keys = FirstKeys::default();
            let mut map: BTreeMap<&str, usize> = BTreeMap::new();
            for (i, key) in keys.iter().enumerate() {
                let expected = match map.entry(key) {
                    Entry::Occupied(first) => Some(*first.get()),
                    Entry::Vacant(slot) => {
                        slot.insert(i);
                        None
                    }
                };
                assert_eq!(first_keys.first(key, sequenced(key), i), expected, "{keys:?} at {i}");
            }
        }
        assert!(sequences.len() > 30_000, "{} sequences", sequences.len());
    }

    #[test]
    fn a_publishers_batch_needs_no_map() {
        let keys: Vec<String> = (7..107).map(|n| format!("host-1a-9-0-{n}")).collect();
        let mut first_keys = FirstKeys::default();
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(first_keys.first(key, sequenced(key), i), None);
        }
        assert!(first_keys.map.is_none());
    }
}
