//! Idempotent publish over gRPC, with requests shaped as the README's grpcurl examples: a
//! key sent again is answered `duplicate: true` with the original's place, and bad keys and
//! windows are refused with INVALID_ARGUMENT naming the field.

mod common;

use common::*;
use mini_pubsub::wire::pb;
use tonic::Code;

/// `{"topic": .., "value": .., "idempotency_key": ..}`
fn single(topic: &str, value: &str, key: &str) -> pb::PublishRequest {
    pb::PublishRequest {
        topic: topic.into(),
        value: value.as_bytes().to_vec().into(),
        idempotency_key: Some(key.into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_resent_key_is_answered_duplicate_with_the_original_offset() {
    let server = start().await;
    server.create_topic("orders", 2).await;
    server.publish("orders", &["unkeyed"]).await;
    let mut pubsub = server.pubsub.clone();
    let first = pubsub.publish(single("orders", "order 17", "order-17")).await.unwrap().into_inner().results;
    assert!(!first[0].duplicate);
    let again = pubsub.publish(single("orders", "order 17", "order-17")).await.unwrap().into_inner().results;
    assert_eq!(again, vec![pb::PublishResult { duplicate: true, ..first[0].clone() }]);

    let batch = pb::PublishRequest {
        topic: "orders".into(),
        messages: vec![
            pb::OutgoingMessage {
                value: "order 17".into(),
                idempotency_key: Some("order-17".into()),
                ..Default::default()
            },
            pb::OutgoingMessage {
                value: "order 18".into(),
                idempotency_key: Some("order-18".into()),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let results = pubsub.publish(batch).await.unwrap().into_inner().results;
    assert_eq!(results[0], again[0]);
    assert!(!results[1].duplicate);
    let topic = server.admin.clone().get_topic(pb::GetTopicRequest { name: "orders".into() }).await.unwrap();
    let stored: u64 = topic.get_ref().partition_info.iter().map(|p| p.end_offset).sum();
    assert_eq!(stored, 3, "unkeyed, order-17 and order-18, each once");
    assert_eq!(topic.get_ref().dedupe_window, Some(prost_types::Duration { seconds: 120, nanos: 0 }));
    server.stop().await;
}

#[tokio::test]
async fn consumers_see_the_idempotency_key_as_a_field_not_an_attribute() {
    let server = start().await;
    server.pubsub.clone().publish(single("t", "v", "k-1")).await.unwrap();
    let req = pb::CreateSubscriptionRequest { name: "s".into(), topic: "t".into(), ..Default::default() };
    server.admin.clone().create_subscription(req).await.unwrap();
    let pulled = server.pubsub.clone().pull(pb::PullRequest { subscription: "s".into(), max_messages: 10 }).await;
    let message = pulled.unwrap().into_inner().received_messages.remove(0).message.unwrap();
    assert_eq!(message.idempotency_key.as_deref(), Some("k-1"));
    assert!(message.attributes.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn a_topic_takes_its_own_dedupe_window_and_refuses_one_out_of_range() {
    let server = start().await;
    let mut admin = server.admin.clone();
    let window = |seconds, nanos| Some(prost_types::Duration { seconds, nanos });
    let req = pb::CreateTopicRequest { name: "short".into(), dedupe_window: window(5, 0), ..Default::default() };
    let topic = admin.create_topic(req).await.unwrap().into_inner();
    assert_eq!(topic.dedupe_window, window(5, 0));
    for (seconds, nanos, words) in [
        (0, 500_000_000, "500 ms; allowed is 1s to 86400s"),
        (86_401, 0, "86401000 ms; allowed is 1s to 86400s"),
        (-1, 0, "not a valid positive Duration"),
        (1, 500, "1s 500ns is not a whole number of milliseconds"),
    ] {
        let req =
            pb::CreateTopicRequest { name: "bad".into(), dedupe_window: window(seconds, nanos), ..Default::default() };
        let status = admin.create_topic(req).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with("dedupe_window: ") && status.message().contains(words), "{status:?}");
    }
    let refused = admin.get_topic(pb::GetTopicRequest { name: "bad".into() }).await.unwrap_err();
    assert_eq!(refused.code(), Code::NotFound, "a refused window creates no topic: {refused:?}");
    server.stop().await;
}

#[tokio::test]
async fn empty_and_overlong_keys_are_refused_naming_the_field() {
    let server = start().await;
    let mut pubsub = server.pubsub.clone();
    let status = pubsub.publish(single("t", "v", "")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("idempotency_key: is empty"), "{status:?}");
    let status = pubsub.publish(single("t", "v", &"x".repeat(300))).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "idempotency_key: is 300 bytes; the limit is idempotency_key_bytes_max = 256");
    server.stop().await;
}
