//! The codec of every generated client and server (`build.rs` names it): prost's encoding,
//! and prost's decoding read from `Bytes` instead of from tonic's `DecodeBuf`.
//!
//! A `DecodeBuf` steps through a `BytesMut`, and prost takes a step for every tag, length
//! and number: dozens per message, each costing several times a step through `Bytes`. The
//! message is first split off the buffer as `Bytes` (no copy), so the values decoded from
//! it are still slices of the same buffer.

use std::any::TypeId;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Buf;
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::ProstEncoder;

use crate::core::{BrokerError, ACK_IDS_PER_CALL_MAX};
use crate::wire::pb;

/// Encodes `T` and decodes `U` (as `tonic_prost::ProstCodec` does, read from `Bytes`).
#[derive(Debug, Clone, Copy)]
pub struct WireCodec<T, U>(PhantomData<fn() -> (T, U)>);

impl<T, U> Default for WireCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for WireCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = BytesDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        BytesDecoder(PhantomData)
    }
}

/// Decodes `U` from the message split off as `Bytes`.
#[derive(Debug, Clone, Copy)]
pub struct BytesDecoder<U>(PhantomData<fn() -> U>);

impl<U: Message + Default + 'static> Decoder for BytesDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let mut message = buf.copy_to_bytes(buf.remaining());
        if let Some(refused) = too_many_entries::<U>(&message) {
            return Err(crate::wire::status_of(&refused));
        }
        // As tonic_prost answers a malformed message: INTERNAL.
        U::decode(&mut message).map(Some).map_err(|error| Status::internal(error.to_string()))
    }
}

/// The broker's limits on a publish's messages and their attributes, which the codec
/// applies before decoding (set from a server's settings at its start).
static PUBLISH_MESSAGES_MAX: AtomicUsize = AtomicUsize::new(1000);
static ATTRIBUTES_MAX: AtomicUsize = AtomicUsize::new(100);

/// Entries one field of any other request may repeat (responses are not counted).
pub const FIELD_ENTRIES_MAX: usize = 100_000;

/// A Subscribe stream's request takes any number of ack ids (and nack and deadline
/// entries), but at most one per this many bytes of the request, or 10 000.
pub const STREAM_ACK_ENTRY_BYTES_MIN: usize = 8;

/// Sets the limits a publish is held to before decoding (a server's, at its start).
pub fn set_entry_limits(publish_messages: usize, attributes: usize) {
    PUBLISH_MESSAGES_MAX.store(publish_messages, Ordering::Relaxed);
    ATTRIBUTES_MAX.store(attributes, Ordering::Relaxed);
}

/// Counts a request's repeated entries before it is decoded, and refuses one that holds
/// more than the broker takes, in the words the broker would use after decoding it.
/// Decoding allocates for every entry (an empty publish message takes 160 bytes decoded
/// from 2 on the wire), so a request of millions of empty entries would take gigabytes
/// before the broker's own checks saw it. Malformed bytes end the count: decoding reports
/// them.
fn too_many_entries<U: 'static>(message: &[u8]) -> Option<BrokerError> {
    let is = |t: TypeId| TypeId::of::<U>() == t;
    if is(TypeId::of::<pb::PublishRequest>()) {
        publish_entries(message)
    } else if is(TypeId::of::<pb::SubscribeRequest>()) {
        let ids = count(message, |field| (7..=10).contains(&field));
        let max = ACK_IDS_PER_CALL_MAX.max(message.len() / STREAM_ACK_ENTRY_BYTES_MIN);
        (ids > max).then(|| BrokerError::InvalidArgument {
            field: "ack_ids",
            reason: format!(
                "{ids} entries in ack_ids, nack_ids and modify_deadline_* of one request; a request of {} bytes \
                 takes at most {max} (one per {STREAM_ACK_ENTRY_BYTES_MIN} bytes, or {ACK_IDS_PER_CALL_MAX})",
                message.len()
            ),
        })
    } else if is(TypeId::of::<pb::AckRequest>())
        || is(TypeId::of::<pb::NackRequest>())
        || is(TypeId::of::<pb::ModifyAckDeadlineRequest>())
    {
        let ids = count(message, |field| field == 2);
        (ids > ACK_IDS_PER_CALL_MAX).then(|| BrokerError::InvalidArgument {
            field: "ack_ids",
            reason: format!(
                "{ids} ack ids; at most {ACK_IDS_PER_CALL_MAX} in one call (a Subscribe stream takes any number)"
            ),
        })
    } else if std::any::type_name::<U>().ends_with("Request") {
        // Any other request (a response, decoded by a client, is not held to this).
        let mut counts = std::collections::BTreeMap::new();
        let mut fields = Fields(message, false);
        while let Some((field, _)) = fields.next() {
            let seen = counts.entry(field).or_insert(0usize);
            *seen += 1;
            if *seen > FIELD_ENTRIES_MAX {
                return Some(BrokerError::InvalidArgument {
                    field: "request",
                    reason: format!("field number {field} repeats more than {FIELD_ENTRIES_MAX} times"),
                });
            }
        }
        None
    } else {
        None
    }
}

/// A publish's messages (field 6) and each one's attributes (its field 3), or the single
/// form's attributes (field 4), against the broker's limits.
fn publish_entries(message: &[u8]) -> Option<BrokerError> {
    let (messages_max, attributes_max) =
        (PUBLISH_MESSAGES_MAX.load(Ordering::Relaxed), ATTRIBUTES_MAX.load(Ordering::Relaxed));
    let messages = count(message, |field| field == 6);
    if messages > messages_max {
        return Some(BrokerError::InvalidArgument {
            field: "messages",
            reason: format!(
                "{messages} messages in one request; the limit is publish_batch_messages_max = {messages_max}"
            ),
        });
    }
    let too_many = |i: usize, attributes: usize| BrokerError::InvalidArgument {
        field: "attributes",
        reason: format!("{attributes} attributes on message {i}; the limit is attributes_max = {attributes_max}"),
    };
    let single = count(message, |field| field == 4);
    if single > attributes_max {
        return Some(too_many(0, single));
    }
    let mut fields = Fields(message, false);
    let mut i = 0;
    while let Some((field, body)) = fields.next() {
        if let (6, Some(body)) = (field, body) {
            let attributes = count(body, |field| field == 3);
            if attributes > attributes_max {
                return Some(too_many(i, attributes));
            }
            i += 1;
        }
    }
    None
}

/// How many of `message`'s fields `counted` takes.
fn count(message: &[u8], counted: impl Fn(u64) -> bool) -> usize {
    let mut fields = Fields(message, false);
    let mut n = 0;
    while let Some((field, _)) = fields.next() {
        n += usize::from(counted(field));
    }
    n
}

/// Steps through the fields of protobuf bytes: each field's number, and the body of a
/// length-delimited one. Stops at the end or at bytes that are not a field.
struct Fields<'a>(&'a [u8], bool);

impl<'a> Fields<'a> {
    fn next(&mut self) -> Option<(u64, Option<&'a [u8]>)> {
        if self.0.is_empty() || self.1 {
            return None;
        }
        let field = skip_field(&mut self.0, GROUP_DEPTH_MAX);
        if field.is_none() {
            self.1 = true;
        }
        field
    }
}

/// Groups nest at most this deep (prost's own recursion limit).
const GROUP_DEPTH_MAX: u32 = 100;

/// Reads one field off the front of `bytes`: its number, and its body if it is
/// length-delimited. A group (an unknown field of a proto2 sender, which prost skips
/// without keeping anything) is read to its end as one field, since decoding allocates
/// nothing for what is inside it. `None` for bytes that are not a field.
fn skip_field<'a>(bytes: &mut &'a [u8], depth: u32) -> Option<(u64, Option<&'a [u8]>)> {
    let tag = varint(bytes)?;
    let body = match tag & 7 {
        0 => {
            varint(bytes)?;
            None
        }
        1 | 5 => {
            let len = if tag & 7 == 1 { 8 } else { 4 };
            *bytes = bytes.get(len..)?;
            None
        }
        2 => {
            let len = varint(bytes).and_then(|l| usize::try_from(l).ok()).filter(|l| *l <= bytes.len())?;
            let (body, rest) = bytes.split_at(len);
            *bytes = rest;
            Some(body)
        }
        3 => {
            let depth = depth.checked_sub(1)?;
            loop {
                let mut peek = *bytes;
                let end = varint(&mut peek)?;
                if end & 7 == 4 {
                    if end >> 3 != tag >> 3 {
                        return None;
                    }
                    *bytes = peek;
                    break None;
                }
                skip_field(bytes, depth)?;
            }
        }
        _ => return None,
    };
    Some((tag >> 3, body))
}

/// Reads a varint off the front of `bytes`.
fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *bytes = &bytes[i + 1..];
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    fn refusal<U: 'static>(bytes: &[u8]) -> Option<String> {
        too_many_entries::<U>(bytes).map(|e| e.to_string())
    }

    #[test]
    fn a_publish_is_held_to_the_brokers_limits_before_it_is_decoded() {
        let message = |attributes: usize| pb::OutgoingMessage {
            value: b"v".to_vec().into(),
            attributes: (0..attributes).map(|i| (format!("k{i}"), "v".to_string())).collect(),
            ..Default::default()
        };
        let batch = |n, attributes| pb::PublishRequest {
            topic: "t".into(),
            messages: vec![message(attributes); n],
            ..Default::default()
        };
        assert_eq!(refusal::<pb::PublishRequest>(&batch(1000, 100).encode_to_vec()), None, "a full batch");
        let over = refusal::<pb::PublishRequest>(&batch(1001, 0).encode_to_vec()).unwrap();
        assert_eq!(over, "messages: 1001 messages in one request; the limit is publish_batch_messages_max = 1000");
        let mut wide = batch(3, 0);
        wide.messages[2] = message(101);
        let over = refusal::<pb::PublishRequest>(&wide.encode_to_vec()).unwrap();
        assert_eq!(over, "attributes: 101 attributes on message 2; the limit is attributes_max = 100");
        // Text values read as fields too: they are not counted, only messages and attributes.
        let text = pb::PublishRequest { topic: "t".into(), value: vec![b'x'; 1 << 20].into(), ..Default::default() };
        assert_eq!(refusal::<pb::PublishRequest>(&text.encode_to_vec()), None);
        let empty = [0x32u8, 0].repeat(2_000_000);
        assert!(refusal::<pb::PublishRequest>(&empty).unwrap().starts_with("messages: 2000000 messages"));
        // An unknown group (field 15) ahead of them does not hide them: it is read as one field.
        let grouped = [vec![0x7b, 0x08, 0x01, 0x7c], empty.clone()].concat();
        assert!(refusal::<pb::PublishRequest>(&grouped).unwrap().starts_with("messages: 2000000 messages"));
        assert!(pb::PublishRequest::decode(&grouped[..]).is_ok(), "prost skips the group");
    }

    #[test]
    fn ack_ids_are_bounded_per_call_and_by_a_streams_request_size() {
        let ids = |n: usize, len: usize| (0..n).map(|i| format!("{i:0len$}")).collect::<Vec<_>>();
        let ack = pb::AckRequest { subscription: "s".into(), ack_ids: ids(10_001, 12) };
        assert!(refusal::<pb::AckRequest>(&ack.encode_to_vec()).unwrap().starts_with("ack_ids: 10001 ack ids"));
        let stream = pb::SubscribeRequest { ack_ids: ids(300_000, 12), ..Default::default() };
        assert_eq!(refusal::<pb::SubscribeRequest>(&stream.encode_to_vec()), None, "14 bytes an entry");
        let empty = pb::SubscribeRequest { nack_ids: vec![String::new(); 300_000], ..Default::default() };
        assert!(refusal::<pb::SubscribeRequest>(&empty.encode_to_vec())
            .unwrap()
            .starts_with("ack_ids: 300000 entries"));
        assert_eq!(refusal::<pb::ListTopicsRequest>(&[0xff, 0xff]), None, "malformed bytes are left to the decoder");
        let offsets = [0x0a, 0x00].repeat(FIELD_ENTRIES_MAX + 1);
        assert!(refusal::<pb::PartitionOffsets>(&offsets).is_none(), "not a request");
        let seek = pb::SeekRequest { subscription: "s".into(), ..Default::default() }.encode_to_vec();
        let seek = [seek, [0x0a, 0x00].repeat(FIELD_ENTRIES_MAX + 1)].concat();
        assert!(refusal::<pb::SeekRequest>(&seek).unwrap().contains("field number 1 repeats"));
        let confirmations = [0x12, 0x00].repeat(FIELD_ENTRIES_MAX + 1);
        assert!(refusal::<pb::SubscribeResponse>(&confirmations).is_none(), "a response is read whole");
    }

    #[test]
    fn an_entry_decodes_to_at_most_the_documented_size() {
        // The README's bound on decoding a publish: 160 bytes a message at most.
        assert!(std::mem::size_of::<pb::OutgoingMessage>() <= 160, "{}", std::mem::size_of::<pb::OutgoingMessage>());
    }
}
