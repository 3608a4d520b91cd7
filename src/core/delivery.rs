//! Deliveries: which message a stream or a pull gets next, and what the broker tells its
//! driver.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use super::broker::Broker;
use super::error::BrokerError;
use super::lease::{AckId, Lease, StreamId};
use super::name;
use super::timers::{MessageKey, Timer};
use super::topic::{visible_end, Topic};
use super::Mutation;
use crate::storage::{Record, StorageError, StoredRecord};

/// Unreadable records remembered at once (so a damaged one is not read again at every
/// dispatch, and is reported once). Past it, new ones are still skipped but not remembered.
const READ_FAULTS_MAX: usize = 1024;

/// One leased message, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The id to ack, nack or extend this lease with; it names this lease only.
    pub ack_id: String,
    /// The message's id: the same on every delivery of the message.
    pub message_id: String,
    /// The topic it was published to.
    pub topic: String,
    /// The partition it is stored in.
    pub partition: u32,
    /// Its offset in the partition.
    pub offset: u64,
    /// What was published: value, key, attributes and publish time.
    pub record: Arc<Record>,
    /// 1 on the first delivery, one more on each redelivery.
    pub delivery_attempt: u32,
    /// The generation of an exclusive subscription the lease was made in; 0 when shared.
    pub generation: u64,
}

impl Delivery {
    /// An upper bound of this delivery's size on the wire, envelope included: what
    /// `response_bytes_max` counts.
    pub fn encoded_len_max(&self) -> usize {
        encoded_len_max(&self.topic, &self.record)
    }
}

/// Bytes a delivery may take on the wire beyond its payload: the ack id and message id (at
/// most 83 and 62 characters), offsets, attempt, publish time and field framing.
const DELIVERY_ENVELOPE_BYTES_MAX: usize = 200;
/// Framing of one attribute map entry (tags and lengths), beyond its key and value.
const ATTRIBUTE_ENVELOPE_BYTES_MAX: usize = 12;

fn encoded_len_max(topic: &str, record: &Record) -> usize {
    let framing = DELIVERY_ENVELOPE_BYTES_MAX + topic.len() + ATTRIBUTE_ENVELOPE_BYTES_MAX * record.attributes.len();
    record.size_bytes() + framing
}

/// What the broker tells its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Messages for a stream, in delivery order.
    Deliver {
        /// The stream they are leased to.
        stream: StreamId,
        /// The messages, at most `response_bytes_max` of them together (one always fits).
        deliveries: Vec<Delivery>,
    },
    /// The broker ended a stream (its subscription was deleted, its session timed out, or
    /// a newer stream of its client took over); it gets no more outputs.
    EndStream {
        /// The stream that ends.
        stream: StreamId,
        /// The status its client is told.
        reason: BrokerError,
    },
    /// A member of an exclusive subscription holds `partitions` from `generation` on.
    Assignment {
        /// The member.
        stream: StreamId,
        /// The assignment's number; deliveries of an earlier one may still be in flight.
        generation: u64,
        /// The partitions it holds now, in order.
        partitions: Vec<u32>,
    },
    /// Stored records found damaged (a CRC or framing failure), by the scan that opened
    /// the partition or by a read. They cannot be delivered: a subscription that reaches
    /// them waits there (a Seek past them goes on); one past them, and every publish,
    /// never notice. Told once per run, at the read that found it or the next checkpoint.
    Damaged {
        /// The records' topic.
        topic: String,
        /// Their partition.
        partition: u32,
        /// Their offsets.
        offsets: std::ops::Range<u64>,
    },
    /// A stored record could not be read (a disk error, or a CRC mismatch). It is not
    /// delivered, and its partition's deliveries wait at it; told once per record.
    ReadFailed {
        /// The record's topic.
        topic: String,
        /// Its partition.
        partition: u32,
        /// Its offset.
        offset: u64,
        /// What the storage said.
        error: StorageError,
    },
}

impl Broker {
    /// Tells the damaged runs every partition's log found since it was last asked (at
    /// open, or by a read that no delivery made), once each.
    pub(super) fn tell_damage(&mut self) {
        for topic in self.topics.values() {
            for (partition, log) in topic.logs.iter().enumerate() {
                for offsets in log.take_damaged() {
                    let topic = topic.name.clone();
                    self.outputs.push_back(Output::Damaged { topic, partition: partition as u32, offsets });
                }
            }
        }
    }

    /// How many messages a request for `max_messages` takes: 0 means 100, and past
    /// `pull_messages_max` is refused.
    pub(super) fn batch_size(&self, max_messages: u32) -> Result<u32, BrokerError> {
        let limit = self.config.pull_messages_max;
        if max_messages > limit {
            return Err(BrokerError::InvalidArgument {
                field: "max_messages",
                reason: format!("{max_messages}; allowed is 1 to {limit} (0 = 100)"),
            });
        }
        Ok(if max_messages == 0 { 100.min(limit) } else { max_messages })
    }

    /// Leases up to `max_messages` (0 = 100) available messages of `subscription` now.
    pub(super) fn pull(
        &mut self,
        now_ms: u64,
        subscription: &str,
        max_messages: u32,
    ) -> Result<Vec<Delivery>, BrokerError> {
        name::check("subscription", subscription)?;
        let max = self.batch_size(max_messages)?;
        let uid = self.subscription_uid(subscription)?;
        let mut out: Vec<Delivery> = Vec::new();
        let mut room = self.config.response_bytes_max;
        while out.len() < max as usize {
            // The first message always fits; later ones only while the response has room.
            let budget = (!out.is_empty()).then_some(room);
            let Some(delivery) = self.lease_next(now_ms, uid, None, budget) else { break };
            room = room.saturating_sub(delivery.encoded_len_max());
            out.push(delivery);
        }
        if out.is_empty() {
            if let Some(error) = self.blocking_read_fault(uid) {
                return Err(BrokerError::Storage(error));
            }
        }
        Ok(out)
    }

    /// The storage error that holds back one of the subscription's partitions, if any.
    fn blocking_read_fault(&self, uid: u64) -> Option<StorageError> {
        let sub = &self.subscriptions[&uid];
        let topic = self.topics.get(&sub.topic)?;
        topic.logs.iter().zip(&sub.cursors).enumerate().find_map(|(p, (log, cursor))| {
            let offset = cursor.next_to_deliver(visible_end(log.as_ref(), self.after_sync))?;
            self.read_faults.get(&(topic.uid, p as u32, offset)).cloned()
        })
    }

    pub(super) fn dispatch_topic(&mut self, now_ms: u64, topic: &str) {
        let uids: Vec<u64> = self.topics[topic].subscriptions.iter().map(|name| self.subscription_uids[name]).collect();
        for uid in uids {
            self.dispatch(now_ms, uid);
        }
    }

    /// Hands available messages to the members with room, round-robin, one message at a
    /// time, until no member has room or no message is left. Bounded by the members' free
    /// flow-control room. A member's messages go out in batches of at most
    /// `response_bytes_max` (one message always fits).
    pub(super) fn dispatch(&mut self, now_ms: u64, uid: u64) {
        if self.subscriptions[&uid].group.is_some() {
            return self.dispatch_exclusive(now_ms, uid);
        }
        let mut batches: Vec<(StreamId, Vec<Delivery>, usize)> = Vec::new();
        loop {
            let sub = &self.subscriptions[&uid];
            let count = sub.members.len();
            let ignore_flow = self.config.mutated(Mutation::FlowControlIgnored);
            let Some(member) = (0..count)
                .map(|i| sub.members[(sub.next_member + i) % count])
                .find(|m| ignore_flow || self.streams[m].has_room())
            else {
                break;
            };
            let Some(delivery) = self.lease_next(now_ms, uid, Some(member), None) else { break };
            let sub = self.subscription_mut(uid);
            let index = sub.members.iter().position(|m| *m == member).expect("member found above");
            sub.next_member = (index + 1) % count;
            let size = delivery.encoded_len_max();
            let limit = self.config.response_bytes_max;
            match batches.iter_mut().rev().find(|(s, ..)| *s == member) {
                Some((_, batch, bytes)) if *bytes + size <= limit => {
                    *bytes += size;
                    batch.push(delivery);
                }
                _ => batches.push((member, vec![delivery], size)),
            }
        }
        for (stream, deliveries, _) in batches {
            self.outputs.push_back(Output::Deliver { stream, deliveries });
        }
    }

    /// Leases the next available message of the subscription (partitions in turn,
    /// redeliveries first within a partition) to `stream`, or to a puller when `None`.
    /// With a `budget`, a message whose encoded size would pass it is left where it is.
    pub(super) fn lease_next(
        &mut self,
        now_ms: u64,
        uid: u64,
        stream: Option<StreamId>,
        budget: Option<usize>,
    ) -> Option<Delivery> {
        let seq = self.next_lease_seq;
        let after_sync = self.after_sync;
        let parked_max = self.config.ordered_parked_messages_max;
        let sub = self.subscriptions.get_mut(&uid).expect("leasing subscription");
        let topic = self.topics.get(&sub.topic).expect("a subscription's topic exists");
        let partitions = topic.partition_count();
        for i in 0..partitions {
            let partition = (sub.next_partition + i) % partitions;
            if !sub.may_lease(partition, stream) {
                continue;
            }
            let log = &topic.logs[partition as usize];
            let cursor = &mut sub.cursors[partition as usize];
            let end = visible_end(log.as_ref(), after_sync);
            // Parking an offset behind its key moves the cursor on, so look again; each
            // pass parks one more, up to the bound.
            let found = loop {
                let Some(offset) = cursor.next_to_deliver(end) else { break None };
                let read = read_for_delivery(&mut self.outputs, &mut self.read_faults, topic, partition, offset);
                let Some(record) = read else { break None };
                let unordered = self.config.mutated(Mutation::KeyOrderIgnored);
                let held = record
                    .record
                    .key
                    .as_deref()
                    .filter(|k| sub.ordered && !unordered && cursor.keys.blocked(offset, k));
                match held {
                    Some(key) if cursor.take_over_head(offset, key) => break Some((offset, record)),
                    // Past the bound the partition reads no further for its keys to move. An
                    // offset already pending only moves between sets, so it is parked anyway:
                    // a redriven message must not stop the head it waits for.
                    Some(_) if offset == cursor.next && cursor.keys.parked_len() >= parked_max => break None,
                    Some(key) => cursor.park(offset, key),
                    None => break Some((offset, record)),
                }
            };
            let Some((offset, record)) = found else { continue };
            if budget.is_some_and(|b| encoded_len_max(&topic.name, &record.record) > b) {
                return None;
            }
            if let Some(key) = record.record.key.as_deref().filter(|_| sub.ordered) {
                // The mutation leases a key's later message beside its head, not as one.
                if !(self.config.mutated(Mutation::KeyOrderIgnored) && cursor.keys.head(key).is_some()) {
                    cursor.keys.deliver(offset, key);
                }
            }
            let deadline_ms = now_ms.saturating_add(sub.ack_deadline_ms);
            let bytes = record.record.size_bytes() as u64;
            let attempt = cursor.lease(offset, Lease { seq, stream, deadline_ms, bytes });
            sub.counts.delivered += 1;
            sub.counts.redelivered += u64::from(attempt > 1);
            sub.next_partition = (partition + 1) % partitions;
            self.next_lease_seq += 1;
            self.timers.set(Timer::Lease(MessageKey::new(uid, partition, offset)), deadline_ms);
            if let Some(state) = stream.and_then(|s| self.streams.get_mut(&s)) {
                state.charge(bytes);
            }
            let ack_id = AckId { subscription_uid: uid, partition, offset, seq };
            return Some(Delivery {
                ack_id: ack_id.text(),
                message_id: topic.message_id(partition, offset),
                topic: topic.name.clone(),
                partition,
                offset,
                record: record.record,
                delivery_attempt: attempt,
                generation: sub.generation(),
            });
        }
        None
    }
}

/// Reads the record at `offset` to deliver it, reporting what the read found: damaged
/// runs once each, and a record that cannot be read once (its partition waits at it).
/// `None` when there is nothing to deliver there now (the end, or a fault); a record that failed its CRC stays
/// damaged and is not read again, and a disk error is retried at the next dispatch.
fn read_for_delivery(
    outputs: &mut VecDeque<Output>,
    read_faults: &mut BTreeMap<(u64, u32, u64), StorageError>,
    topic: &Topic,
    partition: u32,
    offset: u64,
) -> Option<StoredRecord> {
    let fault_key = (topic.uid, partition, offset);
    if matches!(read_faults.get(&fault_key), Some(StorageError::Corrupt { .. })) {
        return None;
    }
    let log = &topic.logs[partition as usize];
    let record = log.read_one(offset);
    for offsets in log.take_damaged() {
        outputs.push_back(Output::Damaged { topic: topic.name.clone(), partition, offsets });
    }
    match record {
        Ok(record) => {
            read_faults.remove(&fault_key);
            record
        }
        Err(error) => {
            if read_faults.len() < READ_FAULTS_MAX && !read_faults.contains_key(&fault_key) {
                read_faults.insert(fault_key, error.clone());
                let topic = topic.name.clone();
                outputs.push_back(Output::ReadFailed { topic, partition, offset, error });
            }
            None
        }
    }
}
