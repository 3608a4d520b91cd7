use std::collections::BTreeMap;

use bytes::{Buf, Bytes};
use proptest::prelude::*;
use prost::Message as _;

use super::*;

/// What prost's generated decoding and `Message::from_wire` make of the same bytes.
fn by_prost(bytes: &[u8]) -> Result<StreamResponse, prost::DecodeError> {
    let response = pb::SubscribeResponse::decode(bytes)?;
    let received = response
        .received_messages
        .into_iter()
        .map(|mut r| {
            let message = Message::from_wire(&mut r);
            (r.ack_id, message)
        })
        .collect();
    Ok(StreamResponse {
        received,
        ack_confirmations: response.ack_confirmations,
        subscription: response.subscription,
        assignment: response.assignment,
    })
}

fn same(ours: &StreamResponse, theirs: &StreamResponse) {
    assert_eq!(ours.received, theirs.received);
    assert_eq!(ours.ack_confirmations, theirs.ack_confirmations);
    assert_eq!(ours.subscription, theirs.subscription);
    assert_eq!(ours.assignment, theirs.assignment);
}

fn wire_message(n: u64, text: &str) -> pb::ReceivedMessage {
    let attributes: BTreeMap<String, String> = (0..n % 3).map(|i| (format!("{text}{i}"), format!("v{i}"))).collect();
    pb::ReceivedMessage {
        ack_id: format!("3-{}-{n}-{}", n % 4, n + 7),
        message: Some(pb::Message {
            message_id: format!("9-{}-{n}", n % 4),
            topic: text.to_string(),
            partition: (n % 4) as u32,
            offset: n,
            key: n.is_multiple_of(2).then(|| format!("key-{text}")),
            value: Bytes::from(vec![n as u8; (n * 37 % 300) as usize]),
            attributes,
            publish_time: Some(prost_types::Timestamp { seconds: 1_700_000_000 + n as i64, nanos: (n * 1000) as i32 }),
            idempotency_key: n.is_multiple_of(3).then(|| format!("pub-{n}")),
        }),
        delivery_attempt: (n % 5) as u32 + 1,
        generation: n % 2,
    }
}

fn response(messages: u64, text: &str) -> pb::SubscribeResponse {
    pb::SubscribeResponse {
        received_messages: (0..messages).map(|n| wire_message(n, text)).collect(),
        ack_confirmations: vec![pb::AckConfirmation {
            ack_id: format!("{text}-1"),
            operation: pb::AckOperation::Nack as i32,
            result: pb::AckResult::Expired as i32,
        }],
        subscription: format!("sub-{text}"),
        assignment: Some(pb::Assignment { generation: 4, partitions: vec![0, 2] }),
    }
}

#[test]
fn reads_every_field_as_the_generated_decoding_does() {
    for text in ["orders", "", "é漢字🦀", "a-b-c"] {
        let bytes = response(12, text).encode_to_vec();
        let ours = decode_response(&mut &bytes[..]).unwrap();
        same(&ours, &by_prost(&bytes).unwrap());
        assert_eq!((ours.received.capacity(), ours.ack_confirmations.capacity()), (12, 1), "sized once");
        // From `Bytes`, as tonic hands it: the values are slices of it.
        let mut shared = Bytes::from(bytes.clone());
        same(&decode_response(&mut shared).unwrap(), &ours);
    }
    // Edge values: a message without its `message` field, a publish time before the epoch.
    let mut odd = response(2, "t");
    odd.received_messages[0].message = None;
    odd.received_messages[1].message.as_mut().unwrap().publish_time =
        Some(prost_types::Timestamp { seconds: -5, nanos: 0 });
    let bytes = odd.encode_to_vec();
    let ours = decode_response(&mut &bytes[..]).unwrap();
    same(&ours, &by_prost(&bytes).unwrap());
    assert_eq!(ours.received[1].1.publish_time, None);
}

#[test]
fn a_buffer_in_pieces_reads_the_same_as_a_whole_one() {
    let bytes = response(5, "pieces").encode_to_vec();
    let whole = decode_response(&mut &bytes[..]).unwrap();
    for cut in [1, 7, bytes.len() / 2, bytes.len() - 1] {
        let mut pieces = (&bytes[..cut]).chain(&bytes[cut..]);
        same(&decode_response(&mut pieces).unwrap(), &whole);
    }
}

#[test]
fn fields_it_does_not_know_are_skipped() {
    let mut bytes = Vec::new();
    // Field 15 (varint 300), then field 16 (a string), around a real response.
    bytes.extend([0x78, 0xac, 0x02]);
    bytes.extend(response(2, "skip").encode_to_vec());
    bytes.extend([0x82, 0x01, 0x03, b'a', b'b', b'c']);
    same(&decode_response(&mut &bytes[..]).unwrap(), &by_prost(&bytes).unwrap());
}

#[test]
fn malformed_input_fails_where_the_generated_decoding_fails_and_never_panics() {
    let bytes = response(3, "cut").encode_to_vec();
    for len in 0..bytes.len() {
        let cut = &bytes[..len];
        assert_eq!(decode_response(&mut &cut[..]).is_ok(), by_prost(cut).is_ok(), "cut at {len} of {}", bytes.len());
    }
    let mut bad = response(1, "x").encode_to_vec();
    let at = bad.windows(3).position(|w| w == b"9-0").expect("the message id is in the bytes");
    bad[at] = 0xff;
    assert!(matches!(decode_response(&mut &bad[..]), Err(Malformed::Utf8)));
    assert!(by_prost(&bad).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn any_response_reads_the_same_both_ways(
        texts in proptest::collection::vec(".{0,12}", 1..6),
        counts in proptest::collection::vec(0u64..6, 1..6),
        value in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut response = pb::SubscribeResponse::default();
        for (i, (text, count)) in texts.iter().zip(&counts).enumerate() {
            for n in 0..*count {
                let mut m = wire_message(n + i as u64 * 10, text);
                if let Some(message) = m.message.as_mut() {
                    message.value = Bytes::from(value.clone());
                }
                response.received_messages.push(m);
            }
            response.subscription.clone_from(text);
            response.ack_confirmations.push(pb::AckConfirmation {
                ack_id: text.clone(),
                operation: i as i32,
                result: *count as i32 - 2,
            });
        }
        let bytes = response.encode_to_vec();
        let ours = decode_response(&mut &bytes[..]).unwrap();
        let theirs = by_prost(&bytes).unwrap();
        prop_assert_eq!(&ours.received, &theirs.received);
        prop_assert_eq!(ours.subscription, theirs.subscription);
        prop_assert_eq!(ours.ack_confirmations, theirs.ack_confirmations);
    }
}

fn outgoing(n: u64, text: &str) -> pb::OutgoingMessage {
    pb::OutgoingMessage {
        value: Bytes::from(vec![n as u8; (n * 53 % 200) as usize]),
        key: n.is_multiple_of(2).then(|| format!("k{text}")),
        attributes: (0..n % 3).map(|i| (format!("{text}{i}"), format!("v{i}"))).collect(),
        partition: n.is_multiple_of(5).then_some((n % 3) as u32),
        idempotency_key: (!n.is_multiple_of(4)).then(|| format!("host-1a-7-0-{n}")),
    }
}

#[test]
fn a_publish_request_is_encoded_as_prost_encodes_it() {
    for (topic, count) in [("orders", 1), ("", 3), ("é漢字🦀", 20), ("t", 0)] {
        let messages: Vec<pb::OutgoingMessage> = (0..count).map(|n| outgoing(n, topic)).collect();
        let ours = encode_publish(topic, messages.iter(), 0);
        let sized = encode_publish(topic, messages.iter(), 1 << 16);
        assert_eq!(ours, sized, "the capacity only reserves");
        let bound = messages.iter().map(crate::client::message::wire_len).sum::<usize>() + topic.len() + 16;
        assert!(ours.len() <= bound, "the publisher's byte count covers the encoding: {} > {bound}", ours.len());
        let theirs = pb::PublishRequest { topic: topic.to_string(), messages: messages.clone(), ..Default::default() }
            .encode_to_vec();
        assert_eq!(&ours[..], &theirs[..], "{topic:?}, {count} messages");
        assert_eq!(ours.len(), theirs.len());
    }
}

fn stream_response(sequence: u64, count: u64, text: &str) -> pb::PublishStreamResponse {
    let results = (0..count)
        .map(|n| pb::PublishResult {
            message_id: format!("{text}-{n}"),
            partition: (n % 4) as u32,
            offset: n * 1000,
            duplicate: n.is_multiple_of(3),
        })
        .collect();
    pb::PublishStreamResponse { sequence, results, ..Default::default() }
}

#[test]
fn a_publish_stream_answer_reads_as_the_generated_decoding_reads_it() {
    for (sequence, count, text) in [(0, 0, "a"), (1, 1, ""), (u64::MAX, 50, "9-0"), (7, 7, "é漢字")] {
        let bytes = stream_response(sequence, count, text).encode_to_vec();
        let ours = decode_stream_answer(&mut &bytes[..]).unwrap();
        let theirs = pb::PublishStreamResponse::decode(&bytes[..]).unwrap();
        assert_eq!(ours.sequence, theirs.sequence);
        let results = ours.outcome.unwrap();
        assert_eq!(results, theirs.results.into_iter().map(PublishResult::from).collect::<Vec<_>>());
        assert_eq!(results.capacity(), count as usize, "sized once");
    }
    let refused = pb::PublishStreamResponse {
        sequence: 9,
        code: tonic::Code::ResourceExhausted as i32,
        message: "disk full: é".to_string(),
        ..Default::default()
    };
    let ours = decode_stream_answer(&mut &refused.encode_to_vec()[..]).unwrap();
    let status = ours.outcome.unwrap_err();
    assert_eq!((ours.sequence, status.code(), status.message()), (9, tonic::Code::ResourceExhausted, "disk full: é"));
    let bytes = stream_response(3, 4, "cut").encode_to_vec();
    for len in 0..bytes.len() {
        let cut = &bytes[..len];
        let theirs = pb::PublishStreamResponse::decode(cut).is_ok();
        assert_eq!(decode_stream_answer(&mut &cut[..]).is_ok(), theirs, "cut at {len}");
    }
}

#[test]
fn a_publish_stream_batch_is_encoded_as_prost_encodes_it() {
    for (sequence, count) in [(0, 1), (1, 3), (u64::MAX, 20)] {
        let messages: Vec<pb::OutgoingMessage> = (0..count).map(|n| outgoing(n, "orders")).collect();
        let publish = encode_publish("orders", messages.iter(), 0);
        let mut ours = Vec::new();
        encode_stream_batch(&StreamBatch { sequence, publish }, &mut ours);
        let request = pb::PublishRequest { topic: "orders".to_string(), messages, ..Default::default() };
        let theirs = pb::PublishStreamRequest { sequence, publish: Some(request) }.encode_to_vec();
        assert_eq!(ours, theirs, "sequence {sequence}, {count} messages");
    }
}

/// Fields of the messages above that the codec leaves to others on purpose.
const NOT_READ: &[(&str, &str)] = &[
    // The generation is the broker's business (and the stream's assignment's).
    ("ReceivedMessage", "generation"),
    // A publish of one message by its top-level fields: the library sends `messages`.
    ("PublishRequest", "value"),
    ("PublishRequest", "key"),
    ("PublishRequest", "attributes"),
    ("PublishRequest", "partition"),
    ("PublishRequest", "idempotency_key"),
];

#[test]
fn every_field_number_is_the_one_the_proto_gives_and_no_field_goes_unread() {
    let set = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
    let file = set.file.iter().find(|f| f.package() == "pubsub").expect("the pubsub package");
    let number = |message: &str, field: &str| {
        let m = file.message_type.iter().find(|m| m.name() == message).unwrap_or_else(|| panic!("{message}"));
        m.field.iter().find(|f| f.name() == field).map(|f| f.number())
    };
    for (message, field, ours) in fields::ALL {
        assert_eq!(number(message, field), Some(*ours as i32), "{message}.{field}");
    }
    let messages: std::collections::BTreeSet<&str> = fields::ALL.iter().map(|(m, ..)| *m).collect();
    for message in messages {
        let m = file.message_type.iter().find(|m| m.name() == message).unwrap();
        for field in &m.field {
            let known = fields::ALL.iter().any(|(mm, f, _)| *mm == message && *f == field.name())
                || NOT_READ.contains(&(message, field.name()));
            assert!(
                known,
                "{message}.{} (field {}) is in the proto but not in the codec",
                field.name(),
                field.number()
            );
        }
    }
}
