//! Every kind of bad input gets the right gRPC code, a message naming the field and the
//! limit, and changes nothing that is stored.

mod common;

use common::*;
use mini_pubsub::server::ServerConfig;
use mini_pubsub::wire::pb;
use tonic::{Code, Status};

#[track_caller]
fn refused<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, words: &[&str]) {
    let status = result.expect_err("the request is refused");
    assert_eq!(status.code(), code, "{status:?}");
    for word in words {
        assert!(status.message().contains(word), "{:?} lacks {word:?}", status.message());
    }
}

fn publish_req(topic: &str, value: &[u8]) -> pb::PublishRequest {
    pb::PublishRequest { topic: topic.into(), value: value.to_vec().into(), ..Default::default() }
}

/// The retained range of every partition of every topic: what a refusal must not change.
async fn stored(server: &TestServer) -> Vec<(String, Vec<(u64, u64)>)> {
    let list = server.admin.clone().list_topics(pb::ListTopicsRequest::default()).await.unwrap().into_inner();
    list.topics
        .into_iter()
        .map(|t| (t.name, t.partition_info.iter().map(|p| (p.start_offset, p.end_offset)).collect()))
        .collect()
}

#[tokio::test]
async fn bad_publishes_are_refused_and_store_nothing() {
    let server = start().await;
    server.create_topic("t", 2).await;
    server.publish("t", &["kept"]).await;
    let before = stored(&server).await;
    let mut client = server.pubsub.clone();

    refused(client.publish(publish_req("", b"x")).await, Code::InvalidArgument, &["topic", "is empty", "1 to 249"]);
    refused(
        client.publish(publish_req("a b", b"x")).await,
        Code::InvalidArgument,
        &["topic", "a space", "[A-Za-z0-9._-]"],
    );
    let long = "x".repeat(250);
    refused(client.publish(publish_req(&long, b"x")).await, Code::InvalidArgument, &["topic", "250 characters"]);
    refused(client.publish(publish_req("__t", b"x")).await, Code::InvalidArgument, &["topic", "reserved"]);
    let big = vec![b'x'; 1024 * 1024 + 1];
    refused(
        client.publish(publish_req("t", &big)).await,
        Code::InvalidArgument,
        &["value", "1048577", "max_message_bytes = 1048576"],
    );

    // Over max_message_bytes but within what gRPC decodes: the broker's own answer.
    let bigger = vec![b'x'; 5 * 1024 * 1024];
    refused(client.publish(publish_req("t", &bigger)).await, Code::InvalidArgument, &["value", "max_message_bytes"]);
    let fresh = pb::PublishRequest { partition: Some(5), ..publish_req("fresh", b"x") };
    refused(client.publish(fresh).await, Code::InvalidArgument, &["partition 5"]);

    let wrong_partition = pb::PublishRequest { partition: Some(2), ..publish_req("t", b"x") };
    refused(client.publish(wrong_partition).await, Code::InvalidArgument, &["partition", "partition 2", "0 to 1"]);

    let ok = pb::OutgoingMessage { value: "fine".into(), ..Default::default() };
    let bad = pb::OutgoingMessage { partition: Some(9), ..ok.clone() };
    let batch = pb::PublishRequest { topic: "t".into(), messages: vec![ok.clone(), bad], ..Default::default() };
    refused(client.publish(batch).await, Code::InvalidArgument, &["messages[1].partition"]);

    let both = pb::PublishRequest { messages: vec![ok], ..publish_req("t", b"x") };
    refused(client.publish(both).await, Code::InvalidArgument, &["messages", "not both"]);

    let too_many = pb::PublishRequest {
        topic: "t".into(),
        messages: vec![pb::OutgoingMessage::default(); 1001],
        ..Default::default()
    };
    refused(
        client.publish(too_many).await,
        Code::InvalidArgument,
        &["1001 messages", "publish_batch_messages_max = 1000"],
    );

    assert_eq!(stored(&server).await, before, "refusals changed nothing stored, and made no topic");
}

#[tokio::test]
async fn publish_to_an_unknown_topic_without_auto_create_is_not_found() {
    let mut config = ServerConfig::default();
    config.broker.auto_create_topics = false;
    let server = start_with(config).await;
    refused(
        server.pubsub.clone().publish(publish_req("nope", b"x")).await,
        Code::NotFound,
        &["topic `nope` not found"],
    );
    assert!(stored(&server).await.is_empty());
}

#[tokio::test]
async fn unknown_names_are_not_found() {
    let server = start().await;
    let mut admin = server.admin.clone();
    let mut pubsub = server.pubsub.clone();
    refused(admin.get_topic(pb::GetTopicRequest { name: "nope".into() }).await, Code::NotFound, &["topic `nope`"]);
    let sub = pb::CreateSubscriptionRequest { name: "s".into(), topic: "nope".into(), ..Default::default() };
    refused(admin.create_subscription(sub).await, Code::NotFound, &["topic `nope`"]);
    refused(
        admin.get_subscription_stats(pb::GetSubscriptionStatsRequest { name: "nope".into() }).await,
        Code::NotFound,
        &["subscription `nope`"],
    );
    refused(
        pubsub.pull(pb::PullRequest { subscription: "nope".into(), max_messages: 1 }).await,
        Code::NotFound,
        &["nope"],
    );
    let ack = pb::AckRequest { subscription: "nope".into(), ack_ids: vec!["1-0-0-1".into()] };
    refused(pubsub.ack(ack).await, Code::NotFound, &["subscription `nope`"]);
    let first = tokio_stream::iter([on_subscription("nope")]);
    refused(pubsub.subscribe(first).await, Code::NotFound, &["subscription `nope`"]);
    let first = tokio_stream::iter([pb::SubscribeRequest { topic: "nope".into(), ..Default::default() }]);
    refused(pubsub.subscribe(first).await, Code::NotFound, &["topic `nope`"]);
    refused(admin.delete_topic(pb::DeleteTopicRequest { name: "nope".into(), force: true }).await, Code::NotFound, &[]);
}

#[tokio::test]
async fn duplicates_and_reserved_names_are_refused() {
    let server = start().await;
    let mut admin = server.admin.clone();
    server.create_topic("t", 1).await;
    server.create_subscription("s", "t", 0).await;
    refused(
        admin.create_topic(pb::CreateTopicRequest { name: "t".into(), partitions: 1, ..Default::default() }).await,
        Code::AlreadyExists,
        &["topic `t`"],
    );
    let again = pb::CreateSubscriptionRequest { name: "s".into(), topic: "t".into(), ..Default::default() };
    refused(admin.create_subscription(again).await, Code::AlreadyExists, &["subscription `s`"]);
    let reserved = pb::CreateSubscriptionRequest { name: "__s".into(), topic: "t".into(), ..Default::default() };
    refused(admin.create_subscription(reserved).await, Code::InvalidArgument, &["name", "reserved"]);
    let partitions = pb::CreateTopicRequest { name: "u".into(), partitions: 5000, ..Default::default() };
    refused(admin.create_topic(partitions).await, Code::InvalidArgument, &["partitions", "partitions_max = 1024"]);
    let deadline = pb::CreateSubscriptionRequest {
        name: "d".into(),
        topic: "t".into(),
        ack_deadline_seconds: 601,
        ..Default::default()
    };
    refused(admin.create_subscription(deadline).await, Code::InvalidArgument, &["ack_deadline_seconds", "1 to 600 s"]);
    let position =
        pb::CreateSubscriptionRequest { name: "p".into(), topic: "t".into(), start_position: 9, ..Default::default() };
    refused(admin.create_subscription(position).await, Code::InvalidArgument, &["start_position", "9"]);
    let page = pb::ListTopicsRequest { page_size: 5000, ..Default::default() };
    refused(admin.list_topics(page).await, Code::InvalidArgument, &["page_size", "1 to 1000"]);
    assert_eq!(stored(&server).await, vec![("t".to_string(), vec![(0, 0)])]);
}

#[tokio::test]
async fn malformed_and_foreign_ack_ids_are_confirmed_invalid() {
    let server = start().await;
    server.publish("t", &["a"]).await;
    server.create_subscription("mine", "t", 0).await;
    server.create_subscription("theirs", "t", 0).await;
    let mut theirs = server.subscribe(on_subscription("theirs")).await;
    let foreign = theirs.messages(1).await[0].ack_id.clone();
    let mut mine = server.subscribe(on_subscription("mine")).await;
    let own = mine.messages(1).await[0].ack_id.clone();

    let confirmations = mine.ack(vec!["not-an-ack-id".into(), foreign, "1-0-77-1".into(), own]).await;
    let results: Vec<pb::AckResult> = confirmations.iter().map(|c| c.result()).collect();
    assert_eq!(
        results,
        [pb::AckResult::Invalid, pb::AckResult::Invalid, pb::AckResult::Invalid, pb::AckResult::Applied]
    );

    let empty = pb::AckRequest { subscription: "mine".into(), ack_ids: vec![] };
    refused(server.pubsub.clone().ack(empty).await, Code::InvalidArgument, &["ack_ids"]);
    let far = pb::ModifyAckDeadlineRequest {
        subscription: "mine".into(),
        ack_ids: vec!["1-0-0-1".into()],
        ack_deadline_seconds: 601,
    };
    refused(
        server.pubsub.clone().modify_ack_deadline(far).await,
        Code::InvalidArgument,
        &["ack_deadline_seconds", "0 to 600 s"],
    );
}

#[tokio::test]
async fn a_bad_later_stream_request_ends_the_stream_with_invalid_argument() {
    let server = start().await;
    server.create_topic("t", 1).await;
    server.create_subscription("s", "t", 0).await;
    let mut sub = server.subscribe(on_subscription("s")).await;
    let unpaired = pb::SubscribeRequest { modify_deadline_ack_ids: vec!["1-0-0-1".into()], ..Default::default() };
    sub.send(unpaired).await;
    let status = sub.inbound.message().await.expect_err("the stream ends");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("modify_deadline_seconds"), "{status:?}");
}

#[tokio::test]
async fn a_first_subscribe_request_must_name_a_subscription_or_a_topic() {
    let server = start().await;
    server.create_topic("t", 1).await;
    server.create_subscription("s", "t", 0).await;
    let mut pubsub = server.pubsub.clone();
    let neither = tokio_stream::iter([pb::SubscribeRequest::default()]);
    refused(
        pubsub.subscribe(neither).await,
        Code::InvalidArgument,
        &["subscription", "must name a subscription, or a topic"],
    );
    let both = pb::SubscribeRequest { subscription: "s".into(), topic: "t".into(), ..Default::default() };
    refused(pubsub.subscribe(tokio_stream::iter([both])).await, Code::InvalidArgument, &["not both"]);
    let nothing = tokio_stream::iter(Vec::<pb::SubscribeRequest>::new());
    refused(pubsub.subscribe(nothing).await, Code::InvalidArgument, &["first request"]);
    let greedy =
        pb::SubscribeRequest { subscription: "s".into(), max_outstanding_messages: 5000, ..Default::default() };
    refused(
        pubsub.subscribe(tokio_stream::iter([greedy])).await,
        Code::InvalidArgument,
        &["max_outstanding_messages", "1 to 1000"],
    );
}

#[tokio::test]
async fn seek_outside_the_log_or_without_a_target_is_refused() {
    let server = start().await;
    server.publish("t", &["a", "b"]).await;
    server.create_subscription("s", "t", 0).await;
    let mut pubsub = server.pubsub.clone();
    refused(
        pubsub.seek(pb::SeekRequest { subscription: "s".into(), target: None }).await,
        Code::InvalidArgument,
        &["target"],
    );
    let offsets = |partition, offset| {
        let offsets = pb::PartitionOffsets { offsets: vec![pb::PartitionOffset { partition, offset }] };
        pb::SeekRequest { subscription: "s".into(), target: Some(pb::seek_request::Target::Offsets(offsets)) }
    };
    refused(pubsub.seek(offsets(0, 3)).await, Code::InvalidArgument, &["offset 3", "0 to 2"]);
    refused(pubsub.seek(offsets(1, 0)).await, Code::InvalidArgument, &["partition 1", "0 to 0"]);
    let far = prost_types::Timestamp { seconds: i64::MAX, nanos: 0 };
    let seek = pb::SeekRequest { subscription: "s".into(), target: Some(pb::seek_request::Target::Time(far)) };
    refused(pubsub.seek(seek).await, Code::InvalidArgument, &["time", "9999-12-31"]);
    assert_eq!(server.stats("s").await.partitions[0].committed_offset, 0, "a refused seek moved nothing");
}

#[tokio::test]
async fn deleting_a_topic_in_use_is_refused_until_forced() {
    let server = start().await;
    server.create_topic("t", 1).await;
    server.create_subscription("s", "t", 0).await;
    let mut sub = server.subscribe(on_subscription("s")).await;
    let mut admin = server.admin.clone();
    refused(
        admin.delete_topic(pb::DeleteTopicRequest { name: "t".into(), force: false }).await,
        Code::FailedPrecondition,
        &["topic `t` has subscriptions [\"s\"]", "force"],
    );
    assert_eq!(stored(&server).await.len(), 1);
    let deleted = admin.delete_topic(pb::DeleteTopicRequest { name: "t".into(), force: true }).await.unwrap();
    assert_eq!(deleted.into_inner().deleted_subscriptions, ["s"]);
    let status = sub.inbound.message().await.expect_err("the subscription's stream ends");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(stored(&server).await.is_empty());
}

#[tokio::test]
async fn a_refused_first_subscribe_request_opens_nothing() {
    let server = start().await;
    server.create_topic("t", 1).await;
    let first = pb::SubscribeRequest {
        topic: "t".into(),
        modify_deadline_ack_ids: vec!["x".into()],
        modify_deadline_seconds: vec![601],
        ..Default::default()
    };
    refused(server.pubsub.clone().subscribe(tokio_stream::iter([first])).await, Code::InvalidArgument, &["0 to 600 s"]);
    let list = pb::ListSubscriptionsRequest::default();
    assert!(server.admin.clone().list_subscriptions(list).await.unwrap().into_inner().subscriptions.is_empty());
    let delete = pb::DeleteTopicRequest { name: "t".into(), force: false };
    server.admin.clone().delete_topic(delete).await.expect("no ephemeral subscription was left behind");
}

#[tokio::test]
async fn a_refused_later_request_applies_none_of_its_acks() {
    let server = start().await;
    server.publish("t", &["a"]).await;
    server.create_subscription("s", "t", 0).await;
    let mut sub = server.subscribe(on_subscription("s")).await;
    let id = sub.messages(1).await[0].ack_id.clone();
    let mixed = pb::SubscribeRequest {
        ack_ids: vec![id.clone()],
        modify_deadline_ack_ids: vec![id],
        modify_deadline_seconds: vec![601],
        ..Default::default()
    };
    sub.send(mixed).await;
    let status = sub.inbound.message().await.expect_err("the stream ends");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(
        server.stats("s").await.partitions[0].committed_offset,
        0,
        "the ack in the refused request was not applied"
    );
}

#[tokio::test]
async fn a_first_subscribe_request_with_a_terminal_nack_and_no_dead_letter_policy_opens_nothing() {
    let server = start().await;
    server.create_topic("t", 1).await;
    server.create_subscription("s", "t", 0).await;
    server.publish("t", &["a", "b"]).await;
    for first in [
        pb::SubscribeRequest {
            subscription: "s".into(),
            nack_ids: vec!["x".into()],
            nack_terminal: true,
            ..Default::default()
        },
        pb::SubscribeRequest {
            topic: "t".into(),
            nack_ids: vec!["x".into()],
            nack_terminal: true,
            ..Default::default()
        },
    ] {
        let refusal = server.pubsub.clone().subscribe(tokio_stream::iter([first])).await;
        refused(refusal, Code::FailedPrecondition, &["dead_letter_policy"]);
    }
    let stats = server.stats("s").await;
    assert_eq!((stats.streams, stats.outstanding), (0, 0), "no stream was left holding leases");
    let list = pb::ListSubscriptionsRequest::default();
    let subscriptions = server.admin.clone().list_subscriptions(list).await.unwrap().into_inner().subscriptions;
    assert_eq!(subscriptions.len(), 1, "no ephemeral subscription was left behind");
}

/// Sends each request as the raw bytes given, and reads responses as the server writes them.
struct RawCodec;

struct RawEncoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = pb::SubscribeResponse;
    type Encoder = RawEncoder;
    type Decoder = tonic_prost::ProstDecoder<pb::SubscribeResponse>;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

#[tokio::test]
async fn an_undecodable_later_stream_request_ends_the_stream_with_invalid_argument() {
    use prost::Message as _;
    let server = start().await;
    server.create_topic("t", 1).await;
    server.create_subscription("s", "t", 0).await;
    let mut grpc = tonic::client::Grpc::new(common::channel(server.addr).await);
    grpc.ready().await.unwrap();
    let (requests, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(2);
    requests.send(on_subscription("s").encode_to_vec()).await.unwrap();
    // Field 7 (ack_ids), a string of two bytes that are not UTF-8.
    requests.send(vec![0x3a, 0x02, 0xff, 0xfe]).await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/pubsub.PubSub/Subscribe");
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut inbound = grpc.streaming(tonic::Request::new(stream), path, RawCodec).await.unwrap().into_inner();
    let status = end_status(&mut inbound, PROMPT).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("SubscribeRequest: ") && status.message().contains("ack_ids"), "{status:?}");
    drop(requests);
    server.stop().await;
}

#[tokio::test]
async fn too_many_or_overlong_ack_ids_in_one_call_are_refused_and_apply_nothing() {
    use mini_pubsub::core::{ACK_IDS_PER_CALL_MAX, ACK_ID_CHARS_MAX};
    let server = start().await;
    server.publish("t", &["a"]).await;
    server.create_subscription("s", "t", 0).await;
    let pull = pb::PullRequest { subscription: "s".into(), max_messages: 1 };
    let leased = server.pubsub.clone().pull(pull).await.unwrap().into_inner().received_messages;
    let own = leased[0].ack_id.clone();
    let mut many: Vec<String> = (0..ACK_IDS_PER_CALL_MAX).map(|i| format!("1-0-{i}-1")).collect();
    many.push(own.clone());
    let ack = pb::AckRequest { subscription: "s".into(), ack_ids: many };
    refused(
        server.pubsub.clone().ack(ack).await,
        Code::InvalidArgument,
        &["ack_ids", "10001 ack ids", "at most 10000"],
    );
    let long = pb::NackRequest {
        subscription: "s".into(),
        ack_ids: vec![own.clone(), "7".repeat(ACK_ID_CHARS_MAX + 1)],
        ..Default::default()
    };
    refused(
        server.pubsub.clone().nack(long).await,
        Code::InvalidArgument,
        &["ack_ids", "entry 1 is 74 bytes", "at most 73"],
    );
    // Neither refusal touched the lease: the ack applies now.
    let ack = pb::AckRequest { subscription: "s".into(), ack_ids: vec![own] };
    let confirmed = server.pubsub.clone().ack(ack).await.unwrap().into_inner().confirmations;
    assert_eq!(confirmed[0].result(), pb::AckResult::Applied);
    server.stop().await;
}

#[tokio::test]
async fn a_stream_request_with_300k_ack_ids_is_confirmed_in_responses_under_the_bound() {
    use prost::Message as _;
    let server = start().await;
    server.publish("t", &["a"]).await;
    server.create_subscription("s", "t", 0).await;
    let mut sub = server.subscribe(on_subscription("s")).await;
    let own = sub.messages(1).await[0].ack_id.clone();
    // Well-formed ids the broker never issued (12 characters each): 300k of them make about
    // 4.5 MB of confirmations, more than one response may carry.
    let ids: Vec<String> = (0..300_000).map(|i| format!("9-0-{:06}-1", i)).collect();
    sub.send(pb::SubscribeRequest { ack_ids: ids, ..Default::default() }).await;
    let bound = ServerConfig::default().broker.response_bytes_max;
    let (mut confirmed, mut responses) = (0, 0);
    while confirmed < 300_000 {
        let response = sub.next_within(PROMPT).await.expect("every confirmation arrives");
        assert!(
            response.encoded_len() <= bound,
            "a response of {} bytes; the bound is {bound}",
            response.encoded_len()
        );
        assert!(response.ack_confirmations.iter().all(|c| c.result() == pb::AckResult::Invalid));
        confirmed += response.ack_confirmations.len();
        responses += 1;
    }
    assert_eq!(confirmed, 300_000);
    assert!(responses >= 2, "split into {responses} responses");
    // The stream goes on.
    let confirmations = sub.ack(vec![own]).await;
    assert_eq!(confirmations[0].result(), pb::AckResult::Applied);
    server.stop().await;
}

#[tokio::test]
async fn a_bad_page_token_is_refused_without_echoing_it_whole() {
    let server = start().await;
    server.create_topic("t", 1).await;
    server.create_subscription("s", "t", 0).await;
    // A 16 KiB token: the error quotes its start only, so it stays small enough for any client.
    let token = "7".repeat(16 * 1024);
    let list = pb::ListPendingRequest { subscription: "s".into(), page_token: token, ..Default::default() };
    let status = server.admin.clone().list_pending(list).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let message = status.message();
    assert!(message.starts_with("page_token: `7777") && message.contains("`... (16384 bytes)"), "{message}");
    assert!(message.len() < 200, "{} bytes: {message}", message.len());
    server.stop().await;
}

#[tokio::test]
async fn a_later_stream_request_over_the_request_bound_ends_the_stream_with_out_of_range() {
    let mut config = ServerConfig::default();
    config.broker.max_message_bytes = 64 * 1024;
    config.request_bytes_max = 128 * 1024;
    let server = start_with(config).await;
    server.create_topic("t", 1).await;
    server.create_subscription("s", "t", 0).await;
    let mut sub = server.subscribe(on_subscription("s")).await;
    // About 200 KiB of ack ids: over the 128 KiB the server decodes.
    let ids: Vec<String> = (0..20_000).map(|i| format!("1-0-{i:04}-1")).collect();
    sub.send(pb::SubscribeRequest { ack_ids: ids, ..Default::default() }).await;
    let status = end_status(&mut sub.inbound, PROMPT).await;
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    server.stop().await;
}

/// `count` empty entries of field `field` (two bytes each on the wire).
fn empty_entries(field: u8, count: usize) -> Vec<u8> {
    [field << 3 | 2, 0].repeat(count)
}

#[tokio::test]
async fn a_request_of_millions_of_empty_entries_is_refused_before_it_is_decoded() {
    let server = start().await;
    server.create_topic("t", 1).await;
    server.create_subscription("s", "t", 0).await;
    let mut grpc = tonic::client::Grpc::new(common::channel(server.addr).await);
    // 8 MiB of empty publish messages (field 6): 4.2 million entries, each of which would
    // take 160 bytes decoded. The broker's limit is told before any is decoded.
    let mut publish = vec![0x0a, 0x01, b't'];
    publish.extend(empty_entries(6, 4 << 20));
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/pubsub.PubSub/Publish");
    let refused = grpc
        .unary(tonic::Request::new(publish), path, RawUnaryCodec::<pb::PublishResponse>::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused
            .message()
            .starts_with("messages: 4194304 messages in one request; the limit is publish_batch_messages_max"),
        "{refused:?}"
    );
    assert_eq!(server.stats("s").await.backlog, 0, "nothing was stored");

    // On a stream, a later request of empty ack ids (field 7) ends it with the same status.
    grpc.ready().await.unwrap();
    let (requests, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(2);
    requests.send(prost::Message::encode_to_vec(&on_subscription("s"))).await.unwrap();
    requests.send(empty_entries(7, 1 << 20)).await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/pubsub.PubSub/Subscribe");
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut inbound = grpc.streaming(tonic::Request::new(stream), path, RawCodec).await.unwrap().into_inner();
    let status = end_status(&mut inbound, PROMPT).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("ack_ids: 1048576 entries"), "{status:?}");
    drop(requests);
    // The broker goes on.
    server.publish("t", &["after"]).await;
    server.stop().await;
}

/// Sends a request as the raw bytes given and decodes the response as `T`.
struct RawUnaryCodec<T>(std::marker::PhantomData<T>);

impl<T> Default for RawUnaryCodec<T> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<T: prost::Message + Default + Send + 'static> tonic::codec::Codec for RawUnaryCodec<T> {
    type Encode = Vec<u8>;
    type Decode = T;
    type Encoder = RawEncoder;
    type Decoder = tonic_prost::ProstDecoder<T>;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}
