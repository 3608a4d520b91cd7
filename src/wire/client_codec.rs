//! The library's own codecs for its two hot calls, Subscribe and Publish.
//!
//! prost's generated decoding builds the generated structs first: each string is copied
//! through prost's generic byte-buffer path (a growing `Vec` and a `Buf` call per chunk),
//! and the struct is then moved into the client's type. That was the largest cost of a
//! received message in the consume profile (see `bench/results/perf-log.md`). Here each
//! string is validated and copied from the contiguous buffer in one step, a value is a
//! slice of the buffer (no copy), `Vec`s are sized once, and the client's types are built
//! where they end up. A publish request is encoded once per batch from the queued messages
//! (by reference) and the same bytes are sent on every attempt, where the generated client
//! needed a copy of every message per attempt. The wire format is the one
//! `proto/pubsub.proto` defines; the tests decode and encode the same bytes both ways, and
//! check every field number here (`fields`) against the compiled descriptor set. It lives
//! here, beside the server's codec, so the two edges of the wire are read together.

use std::fmt;

use crate::client::Connection;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::encoding::{self, check_wire_type, decode_key, decode_varint, skip_field, DecodeContext, WireType};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;
use tonic_prost::ProstEncoder;

use crate::client::message::{system_time, Message, PublishResult};
use crate::wire::pb;
use fields::{
    ack_confirmation, message, publish_request, publish_result, publish_stream_request, publish_stream_response,
    received_message, subscribe_response,
};

/// The field numbers this codec reads and writes, by message, as `proto/pubsub.proto` has
/// them; a test checks every one against the compiled descriptor set, so the proto and the
/// codec cannot drift apart.
pub(crate) mod fields {
    /// `pubsub.SubscribeResponse`.
    pub(crate) mod subscribe_response {
        pub(crate) const RECEIVED_MESSAGES: u32 = 1;
        pub(crate) const ACK_CONFIRMATIONS: u32 = 2;
        pub(crate) const SUBSCRIPTION: u32 = 3;
        pub(crate) const ASSIGNMENT: u32 = 4;
    }
    /// `pubsub.ReceivedMessage`.
    pub(crate) mod received_message {
        pub(crate) const ACK_ID: u32 = 1;
        pub(crate) const MESSAGE: u32 = 2;
        pub(crate) const DELIVERY_ATTEMPT: u32 = 3;
    }
    /// `pubsub.AckConfirmation`.
    pub(crate) mod ack_confirmation {
        pub(crate) const ACK_ID: u32 = 1;
        pub(crate) const OPERATION: u32 = 2;
        pub(crate) const RESULT: u32 = 3;
    }
    /// `pubsub.Message`.
    pub(crate) mod message {
        pub(crate) const MESSAGE_ID: u32 = 1;
        pub(crate) const TOPIC: u32 = 2;
        pub(crate) const PARTITION: u32 = 3;
        pub(crate) const OFFSET: u32 = 4;
        pub(crate) const KEY: u32 = 5;
        pub(crate) const VALUE: u32 = 6;
        pub(crate) const ATTRIBUTES: u32 = 7;
        pub(crate) const PUBLISH_TIME: u32 = 8;
        pub(crate) const IDEMPOTENCY_KEY: u32 = 9;
    }
    /// `pubsub.PublishRequest` (its messages are encoded by prost, from the generated type).
    pub(crate) mod publish_request {
        pub(crate) const TOPIC: u32 = 1;
        pub(crate) const MESSAGES: u32 = 6;
    }
    /// `pubsub.PublishStreamRequest`.
    pub(crate) mod publish_stream_request {
        pub(crate) const SEQUENCE: u32 = 1;
        pub(crate) const PUBLISH: u32 = 2;
    }
    /// `pubsub.PublishStreamResponse`.
    pub(crate) mod publish_stream_response {
        pub(crate) const SEQUENCE: u32 = 1;
        pub(crate) const RESULTS: u32 = 2;
        pub(crate) const CODE: u32 = 3;
        pub(crate) const MESSAGE: u32 = 4;
    }
    /// `pubsub.PublishResult`.
    pub(crate) mod publish_result {
        pub(crate) const MESSAGE_ID: u32 = 1;
        pub(crate) const PARTITION: u32 = 2;
        pub(crate) const OFFSET: u32 = 3;
        pub(crate) const DUPLICATE: u32 = 4;
    }

    /// Every field above: (message, field, number), for the test against the descriptors.
    #[cfg(test)]
    pub(crate) const ALL: &[(&str, &str, u32)] = &[
        ("SubscribeResponse", "received_messages", subscribe_response::RECEIVED_MESSAGES),
        ("SubscribeResponse", "ack_confirmations", subscribe_response::ACK_CONFIRMATIONS),
        ("SubscribeResponse", "subscription", subscribe_response::SUBSCRIPTION),
        ("SubscribeResponse", "assignment", subscribe_response::ASSIGNMENT),
        ("ReceivedMessage", "ack_id", received_message::ACK_ID),
        ("ReceivedMessage", "message", received_message::MESSAGE),
        ("ReceivedMessage", "delivery_attempt", received_message::DELIVERY_ATTEMPT),
        ("AckConfirmation", "ack_id", ack_confirmation::ACK_ID),
        ("AckConfirmation", "operation", ack_confirmation::OPERATION),
        ("AckConfirmation", "result", ack_confirmation::RESULT),
        ("Message", "message_id", message::MESSAGE_ID),
        ("Message", "topic", message::TOPIC),
        ("Message", "partition", message::PARTITION),
        ("Message", "offset", message::OFFSET),
        ("Message", "key", message::KEY),
        ("Message", "value", message::VALUE),
        ("Message", "attributes", message::ATTRIBUTES),
        ("Message", "publish_time", message::PUBLISH_TIME),
        ("Message", "idempotency_key", message::IDEMPOTENCY_KEY),
        ("PublishRequest", "topic", publish_request::TOPIC),
        ("PublishRequest", "messages", publish_request::MESSAGES),
        ("PublishStreamRequest", "sequence", publish_stream_request::SEQUENCE),
        ("PublishStreamRequest", "publish", publish_stream_request::PUBLISH),
        ("PublishStreamResponse", "sequence", publish_stream_response::SEQUENCE),
        ("PublishStreamResponse", "results", publish_stream_response::RESULTS),
        ("PublishStreamResponse", "code", publish_stream_response::CODE),
        ("PublishStreamResponse", "message", publish_stream_response::MESSAGE),
        ("PublishResult", "message_id", publish_result::MESSAGE_ID),
        ("PublishResult", "partition", publish_result::PARTITION),
        ("PublishResult", "offset", publish_result::OFFSET),
        ("PublishResult", "duplicate", publish_result::DUPLICATE),
    ];
}

/// One response of the Subscribe stream (`pb::SubscribeResponse`).
#[derive(Debug, Default)]
pub(crate) struct StreamResponse {
    /// Each received message with its ack id.
    pub received: Vec<(String, Message)>,
    pub ack_confirmations: Vec<pb::AckConfirmation>,
    pub subscription: String,
    pub assignment: Option<pb::Assignment>,
}

/// Opens `pubsub.PubSub/Subscribe` on `channel`, as the generated client does, with
/// responses read by [`StreamDecoder`].
pub(crate) async fn subscribe(
    channel: Connection,
    requests: impl tonic::IntoStreamingRequest<Message = pb::SubscribeRequest>,
) -> Result<tonic::Response<tonic::Streaming<StreamResponse>>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| Status::unknown(format!("Service was not ready: {e}")))?;
    let mut request = requests.into_streaming_request();
    request.extensions_mut().insert(tonic::GrpcMethod::new("pubsub.PubSub", "Subscribe"));
    let path = http::uri::PathAndQuery::from_static("/pubsub.PubSub/Subscribe");
    grpc.streaming(request, path, SubscribeCodec).await
}

/// Requests encoded by prost; responses decoded by [`StreamDecoder`].
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SubscribeCodec;

impl Codec for SubscribeCodec {
    type Encode = pb::SubscribeRequest;
    type Decode = StreamResponse;
    type Encoder = ProstEncoder<pb::SubscribeRequest>;
    type Decoder = StreamDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        StreamDecoder
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct StreamDecoder;

impl Decoder for StreamDecoder {
    type Item = StreamResponse;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<StreamResponse>, Status> {
        // Read from `Bytes` (a slice of the same buffer, no copy): stepping through it costs
        // a fraction of stepping through the `DecodeBuf`, and a message has dozens of fields.
        let mut message = buf.copy_to_bytes(buf.remaining());
        // As prost's own decoder answers a malformed message: INTERNAL.
        decode_response(&mut message).map(Some).map_err(|error| Status::internal(error.to_string()))
    }
}

/// Why a response could not be read.
#[derive(Debug)]
pub(crate) enum Malformed {
    Prost(prost::DecodeError),
    /// A length runs past the end of its message or of the buffer.
    Length,
    /// A string field is not UTF-8.
    Utf8,
}

impl From<prost::DecodeError> for Malformed {
    fn from(error: prost::DecodeError) -> Self {
        Malformed::Prost(error)
    }
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformed::Prost(error) => write!(f, "{error}"),
            Malformed::Length => f.write_str("failed to decode Protobuf message: a length runs past its message"),
            Malformed::Utf8 => {
                f.write_str("failed to decode Protobuf message: invalid string value: data is not UTF-8 encoded")
            }
        }
    }
}

/// Reads a whole `SubscribeResponse` from `buf`.
pub(crate) fn decode_response(buf: &mut impl Buf) -> Result<StreamResponse, Malformed> {
    let ctx = DecodeContext::default();
    let (messages, confirmations) =
        count_repeated(buf.chunk(), &ctx, subscribe_response::RECEIVED_MESSAGES, subscribe_response::ACK_CONFIRMATIONS);
    let mut response = StreamResponse {
        received: Vec::with_capacity(messages),
        ack_confirmations: Vec::with_capacity(confirmations),
        ..StreamResponse::default()
    };
    while buf.has_remaining() {
        let (tag, wire_type) = decode_key(buf)?;
        match tag {
            subscribe_response::RECEIVED_MESSAGES => {
                let end = field_end(wire_type, buf)?;
                response.received.push(received_message(buf, end, &ctx)?);
            }
            subscribe_response::ACK_CONFIRMATIONS => {
                let end = field_end(wire_type, buf)?;
                response.ack_confirmations.push(ack_confirmation(buf, end, &ctx)?);
            }
            subscribe_response::SUBSCRIPTION => response.subscription = text(wire_type, buf)?,
            subscribe_response::ASSIGNMENT => {
                let assignment = response.assignment.get_or_insert_with(Default::default);
                encoding::message::merge(wire_type, assignment, buf, ctx.clone())?;
            }
            _ => skip_field(wire_type, tag, buf, ctx.clone())?,
        }
    }
    Ok(response)
}

/// How many times fields `first` and `second` occur at the top of the message in `bytes`, to size their
/// `Vec`s once (growing them copied each element several times). Counts what it can read;
/// the decoding proper reports what is malformed.
fn count_repeated(mut bytes: &[u8], ctx: &DecodeContext, first: u32, second: u32) -> (usize, usize) {
    let (mut ones, mut twos) = (0, 0);
    while !bytes.is_empty() {
        let Ok((tag, wire_type)) = decode_key(&mut bytes) else { break };
        if tag == first {
            ones += 1;
        } else if tag == second {
            twos += 1;
        }
        if skip_field(wire_type, tag, &mut bytes, ctx.clone()).is_err() {
            break;
        }
    }
    (ones, twos)
}

/// A `PublishRequest` of `topic` and `messages`, encoded as prost encodes it (fields in
/// tag order: the topic, then each message), without copying the messages. `capacity` is
/// what to reserve: the publisher passes its batch's byte count (each message's
/// `wire_len`, which covers its framing too), so no message is measured again here; the
/// buffer grows past it if it falls short.
pub(crate) fn encode_publish<'a>(
    topic: &str,
    messages: impl Iterator<Item = &'a pb::OutgoingMessage>,
    capacity: usize,
) -> Bytes {
    let mut buf = BytesMut::with_capacity(capacity);
    if !topic.is_empty() {
        encoding::encode_key(publish_request::TOPIC, WireType::LengthDelimited, &mut buf);
        encoding::encode_varint(topic.len() as u64, &mut buf);
        buf.put_slice(topic.as_bytes());
    }
    for message in messages {
        encoding::message::encode(publish_request::MESSAGES, message, &mut buf);
    }
    buf.freeze()
}

/// A `PublishResult` whose fields run until `buf.remaining()` is `end`.
fn publish_result(buf: &mut impl Buf, end: usize, ctx: &DecodeContext) -> Result<PublishResult, Malformed> {
    let mut result =
        PublishResult { message_id: String::new(), partition: 0, offset: 0, duplicate: false, idempotency_key: None };
    while buf.remaining() > end {
        let (tag, wire_type) = decode_key(buf)?;
        match tag {
            publish_result::MESSAGE_ID => result.message_id = text(wire_type, buf)?,
            publish_result::PARTITION => result.partition = varint(wire_type, buf)? as u32,
            publish_result::OFFSET => result.offset = varint(wire_type, buf)?,
            publish_result::DUPLICATE => result.duplicate = varint(wire_type, buf)? != 0,
            _ => skip_field(wire_type, tag, buf, ctx.clone())?,
        }
    }
    ended(buf, end)?;
    Ok(result)
}

/// One batch of a PublishStream: its sequence number and its `PublishRequest` as
/// [`encode_publish`] made it (the same bytes on every stream it is sent on).
#[derive(Debug, Clone)]
pub(crate) struct StreamBatch {
    pub sequence: u64,
    pub publish: Bytes,
}

/// The answer to one batch of a PublishStream: its results, or its refusal.
#[derive(Debug)]
pub(crate) struct StreamAnswer {
    pub sequence: u64,
    pub outcome: Result<Vec<PublishResult>, Status>,
}

/// Opens `pubsub.PubSub/PublishStream` on `channel`, sending `batches` as they come; the
/// answers arrive in the order the batches were sent.
pub(crate) async fn publish_stream(
    channel: Connection,
    batches: impl tokio_stream::Stream<Item = StreamBatch> + Send + 'static,
) -> Result<tonic::Streaming<StreamAnswer>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| Status::unknown(format!("Service was not ready: {e}")))?;
    let mut request = tonic::Request::new(batches);
    request.extensions_mut().insert(tonic::GrpcMethod::new("pubsub.PubSub", "PublishStream"));
    let path = http::uri::PathAndQuery::from_static("/pubsub.PubSub/PublishStream");
    Ok(grpc.streaming(request, path, PublishStreamCodec).await?.into_inner())
}

/// A `PublishStreamRequest`, encoded as prost encodes it: the sequence (left out when 0),
/// then the publish request's bytes as they are.
pub(crate) fn encode_stream_batch(batch: &StreamBatch, buf: &mut impl BufMut) {
    if batch.sequence != 0 {
        encoding::encode_key(publish_stream_request::SEQUENCE, WireType::Varint, buf);
        encoding::encode_varint(batch.sequence, buf);
    }
    encoding::encode_key(publish_stream_request::PUBLISH, WireType::LengthDelimited, buf);
    encoding::encode_varint(batch.publish.len() as u64, buf);
    buf.put_slice(&batch.publish);
}

/// Reads a whole `PublishStreamResponse` from `buf`.
pub(crate) fn decode_stream_answer(buf: &mut impl Buf) -> Result<StreamAnswer, Malformed> {
    let ctx = DecodeContext::default();
    let mut results = Vec::with_capacity(count_repeated(buf.chunk(), &ctx, publish_stream_response::RESULTS, 0).0);
    let (mut sequence, mut code, mut message) = (0, 0i32, String::new());
    while buf.has_remaining() {
        let (tag, wire_type) = decode_key(buf)?;
        match tag {
            publish_stream_response::SEQUENCE => sequence = varint(wire_type, buf)?,
            publish_stream_response::RESULTS => {
                let end = field_end(wire_type, buf)?;
                results.push(publish_result(buf, end, &ctx)?);
            }
            // An int32 as protobuf writes it: a negative one as a ten-byte varint.
            publish_stream_response::CODE => code = varint(wire_type, buf)? as i32,
            publish_stream_response::MESSAGE => message = text(wire_type, buf)?,
            _ => skip_field(wire_type, tag, buf, ctx.clone())?,
        }
    }
    let outcome = if code == 0 { Ok(results) } else { Err(Status::new(tonic::Code::from_i32(code), message)) };
    Ok(StreamAnswer { sequence, outcome })
}

/// Batches encoded by [`encode_stream_batch`]; answers decoded by [`decode_stream_answer`].
#[derive(Debug, Default, Clone, Copy)]
struct PublishStreamCodec;

impl Codec for PublishStreamCodec {
    type Encode = StreamBatch;
    type Decode = StreamAnswer;
    type Encoder = PublishStreamCodec;
    type Decoder = PublishStreamCodec;

    fn encoder(&mut self) -> Self::Encoder {
        PublishStreamCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        PublishStreamCodec
    }
}

impl Encoder for PublishStreamCodec {
    type Item = StreamBatch;
    type Error = Status;

    fn encode(&mut self, item: StreamBatch, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        encode_stream_batch(&item, buf);
        Ok(())
    }
}

impl Decoder for PublishStreamCodec {
    type Item = StreamAnswer;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<StreamAnswer>, Status> {
        let mut message = buf.copy_to_bytes(buf.remaining());
        decode_stream_answer(&mut message).map(Some).map_err(|error| Status::internal(error.to_string()))
    }
}

/// Checks that a field is length-delimited, reads its length, and returns what
/// `buf.remaining()` will be at its end.
fn field_end(wire_type: WireType, buf: &mut impl Buf) -> Result<usize, Malformed> {
    check_wire_type(WireType::LengthDelimited, wire_type)?;
    end_of_field(buf)
}

/// Reads a field's length and returns what `buf.remaining()` will be at its end.
fn end_of_field(buf: &mut impl Buf) -> Result<usize, Malformed> {
    let len = decode_varint(buf)?;
    let remaining = buf.remaining();
    usize::try_from(len).ok().and_then(|len| remaining.checked_sub(len)).ok_or(Malformed::Length)
}

/// Checks that a nested message ended exactly where its length said.
fn ended(buf: &impl Buf, end: usize) -> Result<(), Malformed> {
    if buf.remaining() == end {
        Ok(())
    } else {
        Err(Malformed::Length)
    }
}

/// A `ReceivedMessage` whose fields run until `buf.remaining()` is `end`.
fn received_message(buf: &mut impl Buf, end: usize, ctx: &DecodeContext) -> Result<(String, Message), Malformed> {
    let mut ack_id = String::new();
    let mut message = Message::empty();
    while buf.remaining() > end {
        let (tag, wire_type) = decode_key(buf)?;
        match tag {
            received_message::ACK_ID => ack_id = text(wire_type, buf)?,
            received_message::MESSAGE => {
                let message_end = field_end(wire_type, buf)?;
                if message_end < end {
                    return Err(Malformed::Length);
                }
                wire_message(buf, message_end, &mut message, ctx)?;
            }
            received_message::DELIVERY_ATTEMPT => message.delivery_attempt = varint(wire_type, buf)? as u32,
            // The generation is the broker's business (and the stream's assignment's).
            _ => skip_field(wire_type, tag, buf, ctx.clone())?,
        }
    }
    ended(buf, end)?;
    Ok((ack_id, message))
}

/// An `AckConfirmation` whose fields run until `buf.remaining()` is `end`.
fn ack_confirmation(buf: &mut impl Buf, end: usize, ctx: &DecodeContext) -> Result<pb::AckConfirmation, Malformed> {
    let mut confirmation = pb::AckConfirmation::default();
    while buf.remaining() > end {
        let (tag, wire_type) = decode_key(buf)?;
        match tag {
            ack_confirmation::ACK_ID => confirmation.ack_id = text(wire_type, buf)?,
            // Enums as prost reads them: the number, whether or not it is known.
            ack_confirmation::OPERATION => confirmation.operation = varint(wire_type, buf)? as i32,
            ack_confirmation::RESULT => confirmation.result = varint(wire_type, buf)? as i32,
            _ => skip_field(wire_type, tag, buf, ctx.clone())?,
        }
    }
    ended(buf, end)?;
    Ok(confirmation)
}

/// The fields of a `Message` (merged into `message`, as protobuf merges a repeated field).
fn wire_message(buf: &mut impl Buf, end: usize, message: &mut Message, ctx: &DecodeContext) -> Result<(), Malformed> {
    while buf.remaining() > end {
        let (tag, wire_type) = decode_key(buf)?;
        match tag {
            message::MESSAGE_ID => message.message_id = text(wire_type, buf)?,
            message::TOPIC => message.topic = text(wire_type, buf)?,
            message::PARTITION => message.partition = varint(wire_type, buf)? as u32,
            message::OFFSET => message.offset = varint(wire_type, buf)?,
            message::KEY => message.key = Some(text(wire_type, buf)?),
            message::VALUE => message.value = bytes(wire_type, buf)?,
            message::ATTRIBUTES => encoding::btree_map::merge(
                encoding::string::merge,
                encoding::string::merge,
                &mut message.attributes,
                buf,
                ctx.clone(),
            )?,
            message::PUBLISH_TIME => {
                let mut time = prost_types::Timestamp::default();
                encoding::message::merge(wire_type, &mut time, buf, ctx.clone())?;
                message.publish_time = system_time(time);
            }
            message::IDEMPOTENCY_KEY => message.idempotency_key = Some(text(wire_type, buf)?),
            _ => skip_field(wire_type, tag, buf, ctx.clone())?,
        }
    }
    ended(buf, end)
}

fn varint(wire_type: WireType, buf: &mut impl Buf) -> Result<u64, Malformed> {
    check_wire_type(WireType::Varint, wire_type)?;
    Ok(decode_varint(buf)?)
}

/// A string field: checked and copied from the buffer in one step when it is contiguous
/// there (it always is in a gRPC message, which arrives whole).
fn text(wire_type: WireType, buf: &mut impl Buf) -> Result<String, Malformed> {
    let end = field_end(wire_type, buf)?;
    let len = buf.remaining() - end;
    let chunk = buf.chunk();
    let text = if chunk.len() >= len {
        let text = std::str::from_utf8(&chunk[..len]).map_err(|_| Malformed::Utf8)?.to_owned();
        buf.advance(len);
        text
    } else {
        String::from_utf8(buf.copy_to_bytes(len).to_vec()).map_err(|_| Malformed::Utf8)?
    };
    Ok(text)
}

/// A bytes field, as a slice of the buffer where the buffer allows it (tonic's does).
fn bytes(wire_type: WireType, buf: &mut impl Buf) -> Result<Bytes, Malformed> {
    let end = field_end(wire_type, buf)?;
    let len = buf.remaining() - end;
    Ok(buf.copy_to_bytes(len))
}

#[cfg(test)]
mod tests;
