//! Messages as the client sees them: one to publish, where it was stored, and one received.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::wire::pb;

/// A message to publish: a value, and optionally a key (same key, same partition), an
/// explicit partition, attributes, and an idempotency key.
///
/// ```
/// use mini_pubsub::client::OutgoingMessage;
///
/// let message = OutgoingMessage::new("order 17 paid").key("customer-4").attribute("origin", "billing");
/// assert_eq!(message.value, "order 17 paid");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// The payload.
    pub value: Bytes,
    /// Messages with the same key land on the same partition.
    pub key: Option<String>,
    /// An explicit partition; overrides the key.
    pub partition: Option<u32>,
    /// String pairs carried with the message.
    pub attributes: BTreeMap<String, String>,
    /// Names the message for the topic's dedupe window. A [`Publisher`](super::Publisher)
    /// sets one (`{publisher_id}-{sequence}`) on every message that has none.
    pub idempotency_key: Option<String>,
}

impl OutgoingMessage {
    /// A message with this value and nothing else.
    pub fn new(value: impl Into<Bytes>) -> Self {
        Self { value: value.into(), ..Default::default() }
    }

    /// Sets the key.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets an explicit partition.
    pub fn partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Adds an attribute.
    pub fn attribute(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.insert(name.into(), value.into());
        self
    }

    /// Sets the idempotency key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Bytes the message adds to a publish request: its fields plus a little protobuf
    /// framing. Used for the batch and queue byte bounds.
    pub fn encoded_len(&self) -> usize {
        wire_len(&self.clone().into_wire())
    }

    pub(crate) fn into_wire(self) -> pb::OutgoingMessage {
        pb::OutgoingMessage {
            value: self.value,
            key: self.key,
            attributes: self.attributes,
            partition: self.partition,
            idempotency_key: self.idempotency_key,
        }
    }
}

/// [`OutgoingMessage::encoded_len`] of a message already in its wire form.
pub(crate) fn wire_len(message: &pb::OutgoingMessage) -> usize {
    prost::Message::encoded_len(message) + 8
}

impl From<&'static str> for OutgoingMessage {
    fn from(value: &'static str) -> Self {
        Self::new(value)
    }
}

impl From<String> for OutgoingMessage {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

impl From<Vec<u8>> for OutgoingMessage {
    fn from(value: Vec<u8>) -> Self {
        Self::new(value)
    }
}

impl From<Bytes> for OutgoingMessage {
    fn from(value: Bytes) -> Self {
        Self::new(value)
    }
}

/// Where a published message was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishResult {
    /// The broker's id of the stored message.
    pub message_id: String,
    /// Its partition.
    pub partition: u32,
    /// Its offset in the partition.
    pub offset: u64,
    /// The message was not stored again: its idempotency key was already in the topic's
    /// dedupe window, and this is where the earlier copy is. After a retry this is the
    /// normal outcome for messages whose first answer was lost.
    pub duplicate: bool,
    /// The idempotency key the message was sent with (the publisher's own, unless the
    /// message brought one).
    pub idempotency_key: Option<String>,
}

impl From<pb::PublishResult> for PublishResult {
    fn from(r: pb::PublishResult) -> Self {
        let (message_id, partition, offset, duplicate) = (r.message_id, r.partition, r.offset, r.duplicate);
        Self { message_id, partition, offset, duplicate, idempotency_key: None }
    }
}

/// A received message's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The broker's id of the message (the same on every delivery).
    pub message_id: String,
    /// The topic it was published to.
    pub topic: String,
    /// Its partition.
    pub partition: u32,
    /// Its offset in the partition.
    pub offset: u64,
    /// The key it was published with.
    pub key: Option<String>,
    /// The payload.
    pub value: Bytes,
    /// Its attributes.
    pub attributes: BTreeMap<String, String>,
    /// When the broker stored it (the broker's wall clock).
    pub publish_time: Option<SystemTime>,
    /// The idempotency key it was published with.
    pub idempotency_key: Option<String>,
    /// 1 on the first delivery, +1 on each redelivery.
    pub delivery_attempt: u32,
}

impl Message {
    /// A message of a unary Pull response (through [`Client::pubsub_client`]), with its
    /// ack id; acks, nacks and deadline changes of it go through the unary calls.
    ///
    /// [`Client::pubsub_client`]: super::Client::pubsub_client
    pub fn from_pulled(mut received: pb::ReceivedMessage) -> (Message, String) {
        let message = Self::from_wire(&mut received);
        (message, received.ack_id)
    }

    /// A message with every field empty, to be filled from the wire.
    pub(crate) fn empty() -> Self {
        Message {
            message_id: String::new(),
            topic: String::new(),
            partition: 0,
            offset: 0,
            key: None,
            value: Bytes::new(),
            attributes: BTreeMap::new(),
            publish_time: None,
            idempotency_key: None,
            delivery_attempt: 0,
        }
    }

    pub(crate) fn from_wire(received: &mut pb::ReceivedMessage) -> Self {
        let m = received.message.take().unwrap_or_default();
        Self {
            message_id: m.message_id,
            topic: m.topic,
            partition: m.partition,
            offset: m.offset,
            key: m.key,
            value: m.value,
            attributes: m.attributes,
            publish_time: m.publish_time.and_then(system_time),
            idempotency_key: m.idempotency_key,
            delivery_attempt: received.delivery_attempt,
        }
    }

    /// The value as text, with invalid UTF-8 replaced by U+FFFD.
    pub fn value_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.value)
    }
}

/// A `publish_time` as the client reads it: `None` before the epoch or out of range.
pub(crate) fn system_time(t: prost_types::Timestamp) -> Option<SystemTime> {
    let seconds = u64::try_from(t.seconds).ok()?;
    let nanos = u32::try_from(t.nanos).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(seconds, nanos))
}
