//! Per-topic permissions against a real server on 127.0.0.1: each permission on each call,
//! allowed and denied, and a denial changes nothing (no topic auto-created, no subscription
//! made, no message stored, no ack applied).

mod common;

use common::*;
use mini_pubsub::server::ServerConfig;
use mini_pubsub::wire::pb;
use tonic::{Code, Request};

/// The principals' tokens; `tokens` holds their SHA-256 hashes.
const PUBLISHER: &str = "token-of-shop";
const SUBSCRIBER: &str = "token-of-audit";
const ADMIN: &str = "token-of-ops";

fn sha256_hex(token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn config() -> ServerConfig {
    ServerConfig {
        tokens: format!("shop={},audit={},ops={}", sha256_hex(PUBLISHER), sha256_hex(SUBSCRIBER), sha256_hex(ADMIN)),
        permissions:
            "publish:orders.*:shop, subscribe:orders-audit:audit, admin:*:ops, subscribe:public-feed:anonymous".into(),
        ..Default::default()
    }
}

fn with<T>(token: Option<&str>, message: T) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

/// Whether a call's outcome was a denial (PERMISSION_DENIED), asserting it was not
/// refused for another reason that would hide one.
fn denied<T>(outcome: Result<T, tonic::Status>) -> bool {
    match outcome {
        Ok(_) => false,
        Err(status) if status.code() == Code::PermissionDenied => {
            assert!(status.message().starts_with("principal `"), "{}", status.message());
            true
        }
        Err(status) => panic!("refused for another reason: {status:?}"),
    }
}

fn publish(topic: &str) -> pb::PublishRequest {
    pb::PublishRequest { topic: topic.into(), value: b"v".to_vec().into(), ..Default::default() }
}

type PubSub = pb::pub_sub_client::PubSubClient<tonic::transport::Channel>;
type Admin = pb::admin_client::AdminClient<tonic::transport::Channel>;

/// Each principal, and a client without a credential.
const EVERYONE: [Option<&str>; 4] = [Some(PUBLISHER), Some(SUBSCRIBER), Some(ADMIN), None];

#[tokio::test]
async fn each_permission_allows_its_calls_on_its_names_and_every_other_call_is_denied_changing_nothing() {
    let server = start_with(config()).await;
    let (pubsub, admin) = (server.pubsub.clone(), server.admin.clone());
    creations(&admin).await;
    publishes(&pubsub).await;
    subscriptions(&pubsub).await;
    administration(&pubsub, &admin).await;
    what_stands(&admin).await;
}

/// Admin: only ops creates topics and subscriptions.
async fn creations(admin: &Admin) {
    let everyone = EVERYONE;
    for token in everyone {
        let create = pb::CreateTopicRequest { name: "orders.eu".into(), partitions: 1, ..Default::default() };
        let outcome = admin.clone().create_topic(with(token, create)).await;
        assert_eq!(denied(outcome), token != Some(ADMIN), "create_topic as {token:?}");
    }
    for (name, topic) in [("orders-audit", "orders.eu"), ("public-feed", "orders.eu")] {
        for token in everyone {
            let create = pb::CreateSubscriptionRequest { name: name.into(), topic: topic.into(), ..Default::default() };
            let outcome = admin.clone().create_subscription(with(token, create)).await;
            assert_eq!(denied(outcome), token != Some(ADMIN), "create_subscription {name} as {token:?}");
        }
    }
}

/// Publish: shop on orders.*, nobody else; a denied publish to a new topic creates nothing.
async fn publishes(pubsub: &PubSub) {
    let everyone = EVERYONE;
    for token in everyone {
        assert_eq!(denied(pubsub.clone().publish(with(token, publish("orders.eu"))).await), token != Some(PUBLISHER));
        assert!(denied(pubsub.clone().publish(with(token, publish("payments"))).await), "payments as {token:?}");
    }
    let batch = |sequence, topic: &str| pb::PublishStreamRequest { sequence, publish: Some(publish(topic)) };
    for token in everyone {
        let stream = tokio_stream::iter([batch(1, "orders.eu"), batch(2, "payments")]);
        let mut answers = pubsub.clone().publish_stream(with(token, stream)).await.unwrap().into_inner();
        let (first, second) = (answers.message().await.unwrap().unwrap(), answers.message().await.unwrap().unwrap());
        let expected = if token == Some(PUBLISHER) { Code::Ok } else { Code::PermissionDenied };
        assert_eq!(first.code, expected as i32, "PublishStream as {token:?}: {first:?}");
        assert_eq!(second.code, Code::PermissionDenied as i32, "{second:?}");
    }
}

/// Subscribe permissions: audit on orders-audit, anonymous on public-feed.
async fn subscriptions(pubsub: &PubSub) {
    let everyone = EVERYONE;
    let pull = |name: &str| pb::PullRequest { subscription: name.into(), max_messages: 1 };
    for token in everyone {
        assert_eq!(denied(pubsub.clone().pull(with(token, pull("orders-audit"))).await), token != Some(SUBSCRIBER));
        assert_eq!(denied(pubsub.clone().pull(with(token, pull("public-feed"))).await), token.is_some());
        let ack = pb::AckRequest { subscription: "orders-audit".into(), ack_ids: vec!["1-0-0-1".into()] };
        assert_eq!(denied(pubsub.clone().ack(with(token, ack)).await), token != Some(SUBSCRIBER));
        let nack = pb::NackRequest {
            subscription: "orders-audit".into(),
            ack_ids: vec!["1-0-0-1".into()],
            ..Default::default()
        };
        assert_eq!(denied(pubsub.clone().nack(with(token, nack)).await), token != Some(SUBSCRIBER));
        let modack = pb::ModifyAckDeadlineRequest {
            subscription: "orders-audit".into(),
            ack_ids: vec!["1-0-0-1".into()],
            ack_deadline_seconds: 10,
        };
        assert_eq!(denied(pubsub.clone().modify_ack_deadline(with(token, modack)).await), token != Some(SUBSCRIBER));
        let open = pb::SubscribeRequest { subscription: "orders-audit".into(), ..Default::default() };
        let subscribed = pubsub.clone().subscribe(with(token, tokio_stream::iter([open]))).await;
        assert_eq!(denied(subscribed), token != Some(SUBSCRIBER), "subscribe as {token:?}");
    }
}

/// Admin on subscriptions (seek, get, stats, pending, delete) and topics (get, list, delete).
async fn administration(pubsub: &PubSub, admin: &Admin) {
    let everyone = EVERYONE;
    for token in everyone {
        let seek = pb::SeekRequest {
            subscription: "orders-audit".into(),
            target: Some(pb::seek_request::Target::Earliest(true)),
        };
        assert_eq!(denied(pubsub.clone().seek(with(token, seek)).await), token != Some(ADMIN), "seek as {token:?}");
        let get = pb::GetSubscriptionRequest { name: "orders-audit".into() };
        assert_eq!(denied(admin.clone().get_subscription(with(token, get)).await), token != Some(ADMIN));
        let stats = pb::GetSubscriptionStatsRequest { name: "orders-audit".into() };
        assert_eq!(denied(admin.clone().get_subscription_stats(with(token, stats)).await), token != Some(ADMIN));
        let pending = pb::ListPendingRequest { subscription: "orders-audit".into(), ..Default::default() };
        assert_eq!(denied(admin.clone().list_pending(with(token, pending)).await), token != Some(ADMIN));
        let topic = pb::GetTopicRequest { name: "orders.eu".into() };
        assert_eq!(denied(admin.clone().get_topic(with(token, topic)).await), token != Some(ADMIN));
        let listed = admin.clone().list_topics(with(token, pb::ListTopicsRequest::default())).await.unwrap();
        let names: Vec<String> = listed.into_inner().topics.into_iter().map(|t| t.name).collect();
        assert_eq!(names.is_empty(), token != Some(ADMIN), "list_topics shows only what {token:?} administers");
    }
    // A subscription whose dead-letter topic its creator may not publish to is refused.
    let dead_letters = pb::CreateSubscriptionRequest {
        name: "orders-retry".into(),
        topic: "orders.eu".into(),
        dead_letter_policy: Some(pb::DeadLetterPolicy {
            dead_letter_topic: "payments".into(),
            max_delivery_attempts: 5,
        }),
        ..Default::default()
    };
    let refused = admin.clone().create_subscription(with(Some(ADMIN), dead_letters)).await.unwrap_err();
    assert_eq!(
        refused.message(),
        "principal `ops` may not publish to dead-letter topic `payments`: no `publish` grant matches it"
    );

    // Deletions: denied ones delete nothing.
    for token in [Some(PUBLISHER), Some(SUBSCRIBER), None] {
        let delete = pb::DeleteSubscriptionRequest { name: "public-feed".into() };
        assert!(denied(admin.clone().delete_subscription(with(token, delete)).await));
        let delete = pb::DeleteTopicRequest { name: "orders.eu".into(), force: true };
        assert!(denied(admin.clone().delete_topic(with(token, delete)).await));
    }
}

/// What stands: one topic (no `payments`), its two subscriptions, and shop's messages only
/// (one Publish, one PublishStream batch).
async fn what_stands(admin: &Admin) {
    let topics = admin.clone().list_topics(with(Some(ADMIN), pb::ListTopicsRequest::default())).await.unwrap();
    let topics = topics.into_inner().topics;
    assert_eq!(topics.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["orders.eu"]);
    assert_eq!(topics[0].partition_info[0].end_offset, 2, "only the allowed publishes were stored");
    let subs = admin.clone().list_subscriptions(with(Some(ADMIN), pb::ListSubscriptionsRequest::default())).await;
    let mut names: Vec<String> = subs.unwrap().into_inner().subscriptions.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(names, ["orders-audit", "public-feed"]);
}

#[tokio::test]
async fn a_client_without_a_credential_is_unauthenticated_unless_anonymous_has_a_grant() {
    let mut strict = config();
    strict.permissions = "admin:*:ops".into();
    let server = start_with(strict).await;
    let refused = server.pubsub.clone().publish(with(None, publish("orders.eu"))).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let wrong = server.pubsub.clone().publish(with(Some("guess"), publish("orders.eu"))).await.unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
}
