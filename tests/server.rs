//! The real server on 127.0.0.1:0, driven with the generated tonic clients.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use mini_pubsub::server::ServerConfig;
use mini_pubsub::wire::pb;
use tonic::Code;

#[tokio::test]
async fn seed_walkthrough_publish_then_subscribe_then_ack() {
    let server = start().await;
    // The seed README's exact request: topic + base64 value, nothing else.
    let req = pb::PublishRequest { topic: "events".into(), value: "hello".into(), ..Default::default() };
    let results = server.pubsub.clone().publish(req).await.unwrap().into_inner().results;
    assert_eq!(
        results,
        vec![pb::PublishResult { message_id: "1-0-0".into(), partition: 0, offset: 0, duplicate: false }]
    );

    server.create_subscription("events-sub", "events", 0).await;
    let mut sub = server.subscribe(on_subscription("events-sub")).await;
    assert_eq!(sub.subscription, "events-sub");
    let got = sub.messages(1).await;
    assert_eq!((value(&got[0]), got[0].delivery_attempt), ("hello".to_string(), 1));
    let message = got[0].message.as_ref().unwrap();
    assert_eq!((message.topic.as_str(), message.partition, message.offset), ("events", 0, 0));
    assert!(message.publish_time.is_some());

    let confirmations = sub.ack(ack_ids(&got)).await;
    assert_eq!(confirmations[0].result(), pb::AckResult::Applied);
    assert_eq!(confirmations[0].operation(), pb::AckOperation::Ack);
    let stats = server.stats("events-sub").await;
    assert_eq!((stats.backlog, stats.outstanding, stats.partitions[0].committed_offset), (0, 0, 1));
    server.stop().await;
}

#[tokio::test]
async fn topic_stream_keeps_delivering_after_the_client_half_closes() {
    let server = start().await;
    let first = pb::SubscribeRequest { topic: "events".into(), ..Default::default() };
    server.create_topic("events", 0).await;
    let mut sub = server.subscribe(first).await;
    assert!(sub.subscription.starts_with("__ephemeral."), "{}", sub.subscription);
    sub.requests = None; // half-close, as grpcurl does after its -d request
    server.publish("events", &["after"]).await;
    assert_eq!(value(&sub.messages(1).await[0]), "after");
    drop(sub);
    // The ephemeral subscription ends with its stream.
    let list = pb::ListSubscriptionsRequest { topic: "events".into(), ..Default::default() };
    for _ in 0..50 {
        if server.admin.clone().list_subscriptions(list.clone()).await.unwrap().into_inner().subscriptions.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the ephemeral subscription outlived its stream");
}

#[tokio::test]
async fn expired_lease_is_redelivered_with_attempt_2() {
    let server = start().await;
    server.publish("t", &["a"]).await;
    server.create_subscription("s", "t", 1).await;
    let mut sub = server.subscribe(on_subscription("s")).await;
    let first = sub.messages(1).await;
    assert_eq!(first[0].delivery_attempt, 1);
    let second = sub.messages(1).await; // after the 1 s deadline
    assert_eq!((value(&second[0]), second[0].delivery_attempt), ("a".to_string(), 2));
    let confirmations = sub.ack(vec![first[0].ack_id.clone(), second[0].ack_id.clone()]).await;
    let results: Vec<_> = confirmations.iter().map(|c| c.result()).collect();
    assert_eq!(results, [pb::AckResult::Expired, pb::AckResult::Applied]);
}

#[tokio::test]
async fn members_of_one_subscription_share_messages_without_overlap() {
    let server = start().await;
    server.create_topic("t", 2).await;
    server.create_subscription("s", "t", 0).await;
    let mut one = server.subscribe(on_subscription("s")).await;
    let mut two = server.subscribe(on_subscription("s")).await;
    let values: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    server.publish("t", &values.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let a = one.messages(10).await;
    let b = two.messages(10).await;
    let all: BTreeSet<String> = a.iter().chain(&b).map(value).collect();
    assert_eq!(all.len(), 20, "every message once, none to both");
    one.expect_quiet(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn keyed_messages_arrive_in_order_per_partition() {
    let server = start().await;
    server.create_topic("t", 4).await;
    server.create_subscription("s", "t", 0).await;
    let mut messages = Vec::new();
    for i in 0..40 {
        let key = format!("key-{}", i % 7);
        messages.push(pb::OutgoingMessage { key: Some(key), value: format!("{i}").into(), ..Default::default() });
    }
    let req = pb::PublishRequest { topic: "t".into(), messages, ..Default::default() };
    let results = server.pubsub.clone().publish(req).await.unwrap().into_inner().results;
    for (i, r) in results.iter().enumerate() {
        let expected = mini_pubsub::core::partition_for_key(format!("key-{}", i % 7).as_bytes(), 4);
        assert_eq!(r.partition, expected);
    }
    let mut sub = server.subscribe(on_subscription("s")).await;
    let got = sub.messages(40).await;
    let mut last = [None::<u64>; 4];
    let mut per_key: std::collections::BTreeMap<String, Vec<u32>> = Default::default();
    for m in &got {
        let message = m.message.as_ref().unwrap();
        let p = message.partition as usize;
        assert!(last[p].is_none_or(|l| message.offset == l + 1), "partition {p} out of order");
        last[p] = Some(message.offset);
        per_key.entry(message.key.clone().unwrap()).or_default().push(value(m).parse().unwrap());
    }
    for (key, values) in per_key {
        assert!(values.windows(2).all(|w| w[0] < w[1]), "{key}: {values:?}");
    }
}

#[tokio::test]
async fn seek_replays_acknowledged_messages() {
    let server = start().await;
    server.publish("t", &["a", "b", "c"]).await;
    server.create_subscription("s", "t", 0).await;
    let mut sub = server.subscribe(on_subscription("s")).await;
    let got = sub.messages(3).await;
    sub.ack(ack_ids(&got)).await;
    let seek = |target| pb::SeekRequest { subscription: "s".into(), target: Some(target) };
    let offsets = pb::PartitionOffsets { offsets: vec![pb::PartitionOffset { partition: 0, offset: 1 }] };
    let reply = server.pubsub.clone().seek(seek(pb::seek_request::Target::Offsets(offsets))).await.unwrap();
    assert_eq!(reply.into_inner().offsets, vec![pb::PartitionOffset { partition: 0, offset: 1 }]);
    let replay: Vec<String> = sub.messages(2).await.iter().map(value).collect();
    assert_eq!(replay, ["b", "c"]);
    server.pubsub.clone().seek(seek(pb::seek_request::Target::Earliest(true))).await.unwrap();
    assert_eq!(sub.messages(3).await.len(), 3);
    server.pubsub.clone().seek(seek(pb::seek_request::Target::Latest(true))).await.unwrap();
    assert_eq!(server.stats("s").await.backlog, 0);
    let future = prost_types::Timestamp { seconds: 4_000_000_000, nanos: 0 };
    server.pubsub.clone().seek(seek(pb::seek_request::Target::Time(future))).await.unwrap();
    let past = prost_types::Timestamp { seconds: 0, nanos: 0 };
    server.pubsub.clone().seek(seek(pb::seek_request::Target::Time(past))).await.unwrap();
    assert_eq!(sub.messages(3).await.len(), 3);
}

#[tokio::test]
async fn flow_control_stops_at_the_limit_and_resumes_on_ack() {
    let server = start().await;
    server.create_topic("t", 1).await;
    server.create_subscription("s", "t", 0).await;
    let first = pb::SubscribeRequest { subscription: "s".into(), max_outstanding_messages: 3, ..Default::default() };
    let mut sub = server.subscribe(first).await;
    server.publish("t", &["0", "1", "2", "3", "4", "5"]).await;
    let got = sub.messages(3).await;
    sub.expect_quiet(Duration::from_millis(200)).await;
    sub.ack(ack_ids(&got[..2])).await;
    let more: Vec<String> = sub.messages(2).await.iter().map(value).collect();
    assert_eq!(more, ["3", "4"]);
    sub.expect_quiet(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn pull_then_unary_ack_nack_and_modify_deadline() {
    let server = start().await;
    server.publish("t", &["a", "b", "c"]).await;
    server.create_subscription("s", "t", 0).await;
    let mut client = server.pubsub.clone();
    let pulled = client.pull(pb::PullRequest { subscription: "s".into(), max_messages: 2 }).await.unwrap();
    let pulled = pulled.into_inner().received_messages;
    assert_eq!(pulled.iter().map(value).collect::<Vec<_>>(), ["a", "b"]);
    let ack = pb::AckRequest { subscription: "s".into(), ack_ids: vec![pulled[0].ack_id.clone()] };
    let confirmations = client.ack(ack).await.unwrap().into_inner().confirmations;
    assert_eq!(confirmations[0].result(), pb::AckResult::Applied);
    let extend = pb::ModifyAckDeadlineRequest {
        subscription: "s".into(),
        ack_ids: vec![pulled[1].ack_id.clone()],
        ack_deadline_seconds: 120,
    };
    assert_eq!(
        client.modify_ack_deadline(extend).await.unwrap().into_inner().confirmations[0].result(),
        pb::AckResult::Applied
    );
    let nack =
        pb::NackRequest { subscription: "s".into(), ack_ids: vec![pulled[1].ack_id.clone()], ..Default::default() };
    assert_eq!(client.nack(nack).await.unwrap().into_inner().confirmations[0].result(), pb::AckResult::Applied);
    let again = client.pull(pb::PullRequest { subscription: "s".into(), max_messages: 10 }).await.unwrap();
    let again: Vec<(String, u32)> =
        again.into_inner().received_messages.iter().map(|m| (value(m), m.delivery_attempt)).collect();
    assert_eq!(again, [("b".to_string(), 2), ("c".to_string(), 1)]);
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_every_service() {
    use tonic_reflection::pb::{v1, v1alpha};
    let server = start().await;
    let channel = channel(server.addr).await;
    let expected = ["grpc.health.v1.Health", "pubsub.Admin", "pubsub.PubSub"];

    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut responses = client.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("v1 reflection did not list services")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for name in expected {
        assert!(names.iter().any(|n| n == name), "v1 lacks {name}: {names:?}");
    }

    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut responses = client.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("v1alpha reflection did not list services")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for name in expected {
        assert!(names.iter().any(|n| n == name), "v1alpha lacks {name}: {names:?}");
    }
}

#[tokio::test]
async fn health_reports_serving() {
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};
    let server = start().await;
    let mut health = HealthClient::new(channel(server.addr).await);
    for service in ["", "pubsub.PubSub", "pubsub.Admin"] {
        let reply = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(reply.status(), ServingStatus::Serving, "{service:?}");
    }
}

#[tokio::test]
async fn shutdown_ends_open_streams_with_unavailable() {
    let mut server = start().await;
    server.create_topic("t", 1).await;
    server.create_subscription("s", "t", 0).await;
    let mut sub = server.subscribe(on_subscription("s")).await;
    server.signal_stop();
    let ended = tokio::time::timeout(PROMPT, sub.inbound.message()).await.expect("the stream ends promptly");
    let status = ended.expect_err("the stream ends with a status");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"), "{status:?}");
}

#[tokio::test]
async fn a_stream_that_is_not_read_is_ended_and_its_leases_go_to_others() {
    let mut config = ServerConfig { stream_queue_max: 26, ..Default::default() };
    config.broker.pull_messages_max = 10;
    config.broker.max_outstanding_messages = 10;
    let server = start_with(config).await;
    server.create_topic("t", 1).await;
    server.create_subscription("s", "t", 0).await;
    let values: Vec<String> = (0..20).map(|i| format!("{i:02}")).collect();
    server.publish("t", &values.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let mut slow = server.subscribe(on_subscription("s")).await;
    assert_eq!(slow.messages(10).await.len(), 10, "flow control holds the slow member to 10");
    let mut other = server.subscribe(on_subscription("s")).await;
    let first = other.messages(10).await;
    let first_ten: Vec<String> = first.iter().map(value).collect();
    // Deliveries alone cannot fill a queue (flow control bounds them); a client that keeps
    // sending acks and never reads the confirmations can. Enough of them to fill HTTP/2's
    // windows and send buffer too.
    let garbage: Vec<String> = (0..1000).map(|i| format!("not-an-ack-id-{i:06}")).collect();
    let requests = slow.requests.take().unwrap();
    // The sender blocks once the server stops reading, so it runs beside the reader.
    let spam = tokio::spawn(async move {
        for _ in 0..200 {
            let request = pb::SubscribeRequest { ack_ids: garbage.clone(), ..Default::default() };
            if requests.send(request).await.is_err() {
                break;
            }
        }
    });
    // Without reading anything, wait for the broker to drop the slow member.
    for _ in 0..250 {
        if server.stats("s").await.streams == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.stats("s").await.streams, 1, "the stream that is not read was ended");
    let status = end_status(&mut slow.inbound, PROMPT).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("stream_queue_max = 26"), "{status:?}");
    spam.abort();
    other.ack(ack_ids(&first)).await;
    let moved = other.messages(10).await;
    assert!(moved.iter().all(|m| m.delivery_attempt == 2), "the slow member's leases were released");
    let all: BTreeSet<String> = first_ten.into_iter().chain(moved.iter().map(value)).collect();
    assert_eq!(all.len(), 20);
}

#[tokio::test]
async fn messages_near_the_size_limit_reach_a_default_client() {
    let server = start().await;
    server.create_topic("t", 1).await;
    server.create_subscription("s", "t", 0).await;
    let big = "x".repeat(1024 * 1024); // exactly max_message_bytes
    for _ in 0..5 {
        server.publish("t", &[&big]).await;
    }
    let mut sub = server.subscribe(on_subscription("s")).await;
    assert_eq!(sub.messages(5).await.len(), 5, "split into responses a default tonic client accepts");
    drop(sub);
    let pull = pb::PullRequest { subscription: "s".into(), max_messages: 0 };
    let pulled = server.pubsub.clone().pull(pull).await.expect("a Pull response under 4 MiB");
    let n = pulled.into_inner().received_messages.len();
    assert!((1..5).contains(&n), "{n} messages in one Pull");
}

#[tokio::test]
async fn many_attributes_do_not_push_a_response_past_a_default_client_limit() {
    let server = start().await;
    server.create_topic("t", 1).await;
    server.create_subscription("s", "t", 0).await;
    // 3600 counted bytes a message, but 100 map entries of framing each on the wire.
    let attributes: std::collections::BTreeMap<String, String> =
        (0..100).map(|i| (format!("a{i:02}"), "v".repeat(33))).collect();
    let message = pb::OutgoingMessage { attributes, ..Default::default() };
    let req = pb::PublishRequest { topic: "t".into(), messages: vec![message; 1000], ..Default::default() };
    server.pubsub.clone().publish(req).await.unwrap();
    let mut sub = server.subscribe(on_subscription("s")).await;
    assert_eq!(sub.messages(1000).await.len(), 1000);
}

/// Reads from `conn` until the server closes it, within `PROMPT`; true if it did.
async fn closed_by_server(conn: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let read_to_end = async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue, // the server's own HTTP/2 settings
            }
        }
    };
    tokio::time::timeout(PROMPT, read_to_end).await.is_ok()
}

#[tokio::test]
async fn a_connection_that_never_sends_its_preface_is_closed_after_the_handshake_timeout() {
    let config = ServerConfig { handshake_timeout_ms: 300, ..ServerConfig::default() };
    let server = start_with(config).await;
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    assert!(closed_by_server(&mut silent).await, "a silent connection is still open after {PROMPT:?}");
    // The clients that spoke HTTP/2 in time are served.
    server.create_topic("t", 1).await;
    server.stop().await;
}

#[tokio::test]
async fn past_connections_max_a_new_connection_is_closed_and_the_open_ones_go_on() {
    let config = ServerConfig { connections_max: 2, ..ServerConfig::default() };
    let server = start_with(config).await; // its clients' connection is the first
    let second = pb::admin_client::AdminClient::new(channel(server.addr).await);
    second.clone().list_topics(pb::ListTopicsRequest::default()).await.unwrap();
    let mut third = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    assert!(closed_by_server(&mut third).await, "a connection past the bound is still open after {PROMPT:?}");
    server.create_topic("t", 1).await;
    second.clone().list_topics(pb::ListTopicsRequest::default()).await.unwrap();
    // A connection that closes frees its place (once the server has seen it go).
    drop(second);
    let mut attempts = 0;
    loop {
        let admin = pb::admin_client::AdminClient::new(channel(server.addr).await);
        if admin.clone().list_topics(pb::ListTopicsRequest::default()).await.is_ok() {
            break;
        }
        attempts += 1;
        assert!(attempts < 100, "no place freed after {attempts} attempts 50 ms apart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn a_subscriber_that_reads_nothing_loses_its_leases_to_the_others_after_the_stall_timeout() {
    let config = ServerConfig { stream_stall_timeout_ms: 1000, ..ServerConfig::default() };
    let server = start_with(config).await;
    server.create_topic("t", 1).await;
    server.create_subscription("s", "t", 600).await; // leases that would last ten minutes
    let stalled = server.subscribe(on_subscription("s")).await;
    // 6.4 MB for the only member: more than HTTP/2 lets through to a client that reads nothing.
    let value = "v".repeat(16 * 1024);
    for _ in 0..4 {
        server.publish("t", &vec![value.as_str(); 100]).await;
    }
    let mut healthy = server.subscribe(on_subscription("s")).await;
    let mut received = 0;
    // Bounded: 10 s, against the 600 s the leases would otherwise last.
    for _ in 0..100 {
        if let Some(response) = healthy.next_within(Duration::from_millis(100)).await {
            received += response.received_messages.len();
        }
        if received >= 400 {
            break;
        }
    }
    assert_eq!(received, 400, "the stalled member's leases reach the healthy one");
    assert_eq!(server.stats("s").await.streams, 1, "the stream that read nothing was ended");
    drop(stalled);
    server.stop().await;
}
