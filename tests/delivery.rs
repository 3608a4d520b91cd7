//! Retry policies, dead letters, redrive and ListPending over gRPC, against a real server on
//! 127.0.0.1, in the shapes grpcurl sends.

mod common;

use common::*;
use mini_pubsub::env::{Clock, TokioClock};
use mini_pubsub::wire::pb;
use prost_types::Duration;
use tonic::Code;

fn secs(seconds: i64) -> Option<Duration> {
    Some(Duration { seconds, nanos: 0 })
}

async fn pull(server: &TestServer, subscription: &str) -> Vec<pb::ReceivedMessage> {
    let req = pb::PullRequest { subscription: subscription.into(), max_messages: 10 };
    server.pubsub.clone().pull(req).await.unwrap().into_inner().received_messages
}

/// `orders` dead-letters into `orders-dlq` after 2 attempts, with a 30 s minimum backoff;
/// `dead` reads the dead letters.
async fn setup(server: &TestServer) -> pb::Subscription {
    server.create_topic("orders", 1).await;
    server.create_topic("orders-dlq", 1).await;
    let req = pb::CreateSubscriptionRequest {
        name: "orders".into(),
        topic: "orders".into(),
        retry_policy: Some(pb::RetryPolicy { minimum_backoff: secs(30), maximum_backoff: None }),
        dead_letter_policy: Some(pb::DeadLetterPolicy {
            dead_letter_topic: "orders-dlq".into(),
            max_delivery_attempts: 2,
        }),
        ..Default::default()
    };
    let created = server.admin.clone().create_subscription(req).await.unwrap().into_inner();
    server.create_subscription("dead", "orders-dlq", 0).await;
    created
}

#[tokio::test]
async fn policies_are_reported_with_their_defaults_filled_in() {
    let server = start().await;
    let created = setup(&server).await;
    let retry = created.retry_policy.unwrap();
    assert_eq!((retry.minimum_backoff, retry.maximum_backoff), (secs(30), secs(60)));
    assert_eq!(created.dead_letter_policy.unwrap().max_delivery_attempts, 2);
    let get = pb::GetSubscriptionRequest { name: "dead".into() };
    let plain = server.admin.clone().get_subscription(get).await.unwrap().into_inner();
    assert_eq!((plain.retry_policy, plain.dead_letter_policy), (None, None));
}

#[tokio::test]
async fn a_nack_waits_its_backoff_and_list_pending_shows_why() {
    let server = start().await;
    setup(&server).await;
    server.publish("orders", &["o1"]).await;
    let got = pull(&server, "orders").await;
    let nack =
        pb::NackRequest { subscription: "orders".into(), ack_ids: vec![got[0].ack_id.clone()], ..Default::default() };
    let confirmed = server.pubsub.clone().nack(nack).await.unwrap().into_inner().confirmations;
    assert_eq!(confirmed[0].result(), pb::AckResult::Applied);
    assert!(pull(&server, "orders").await.is_empty(), "offered again before its 30 s backoff");

    let list = pb::ListPendingRequest { subscription: "orders".into(), ..Default::default() };
    let pending = server.admin.clone().list_pending(list).await.unwrap().into_inner();
    assert_eq!(pending.messages.len(), 1);
    let row = &pending.messages[0];
    assert_eq!((row.state(), row.delivery_attempt, row.offset), (pb::PendingState::Backoff, 1, 0));
    let retry_at = row.retry_time.unwrap().seconds;
    let now = (TokioClock::new().wall_ms() / 1000) as i64;
    assert!((now + 25..=now + 31).contains(&retry_at), "retry at {retry_at}, now {now}");
    let stats = server.stats("orders").await;
    assert_eq!((stats.delayed, stats.backlog, stats.partitions[0].lag), (1, 1, 1));
    assert!(stats.oldest_unacked_age.is_some());
}

#[tokio::test]
async fn terminal_nack_dead_letters_and_redrive_brings_it_back() {
    let server = start().await;
    setup(&server).await;
    server.create_subscription("bystander", "orders", 0).await;
    server.publish("orders", &["o1"]).await;
    let got = pull(&server, "orders").await;
    let original_id = got[0].message.as_ref().unwrap().message_id.clone();
    let nack = pb::NackRequest {
        subscription: "orders".into(),
        ack_ids: vec![got[0].ack_id.clone()],
        reason: "unknown customer".into(),
        terminal: true,
        ..Default::default()
    };
    server.pubsub.clone().nack(nack).await.unwrap();
    assert_eq!(server.stats("orders").await.dead_lettered, 1);

    let dead = pull(&server, "dead").await.remove(0);
    let copy = dead.message.as_ref().unwrap();
    assert_eq!(copy.value, b"o1".as_slice());
    assert_eq!(copy.attributes["dead_letter_reason"], "terminal_nack");
    assert_eq!(copy.attributes["dead_letter_detail"], "nacked: unknown customer");
    assert_eq!(copy.attributes["dead_letter_message_id"], original_id);
    // ListPending names the puller; a nack puts the copy back for the redrive.
    let list = pb::ListPendingRequest { subscription: "dead".into(), ..Default::default() };
    let pending = server.admin.clone().list_pending(list).await.unwrap().into_inner();
    assert_eq!((pending.messages[0].state(), pending.messages[0].member.as_str()), (pb::PendingState::Leased, "pull"));
    let nack =
        pb::NackRequest { subscription: "dead".into(), ack_ids: vec![dead.ack_id.clone()], ..Default::default() };
    server.pubsub.clone().nack(nack).await.unwrap();

    let redrive = pb::RedriveDeadLettersRequest { subscription: "dead".into(), max_messages: 0 };
    let results = server.admin.clone().redrive_dead_letters(redrive).await.unwrap().into_inner().results;
    assert_eq!(results.len(), 1);
    let r = &results[0];
    assert!(r.redriven, "{}", r.error);
    assert_eq!(
        (r.message_id.as_str(), r.source_subscription.as_str(), r.offset),
        (copy.message_id.as_str(), "orders", 0)
    );
    let back = pull(&server, "orders").await;
    assert_eq!((back.len(), back[0].delivery_attempt), (1, 1));
    assert_eq!(back[0].message.as_ref().unwrap().message_id, original_id);
    assert_eq!(server.stats("dead").await.backlog, 0, "the copy was acked");
    assert_eq!(server.stats("bystander").await.backlog, 1, "the other subscription got nothing twice");
}

#[tokio::test]
async fn bad_retry_and_dead_letter_input_is_refused_naming_the_field() {
    let server = start().await;
    setup(&server).await;
    server.create_subscription("plain", "orders", 0).await;
    server.publish("orders", &["o1"]).await;
    let mut admin = server.admin.clone();
    let create = |retry, dead_letter| pb::CreateSubscriptionRequest {
        name: "x".into(),
        topic: "orders".into(),
        retry_policy: retry,
        dead_letter_policy: dead_letter,
        ..Default::default()
    };
    let cases = [
        (
            create(Some(pb::RetryPolicy { minimum_backoff: secs(-1), maximum_backoff: None }), None),
            Code::InvalidArgument,
            "retry_policy.minimum_backoff",
        ),
        (
            create(Some(pb::RetryPolicy { minimum_backoff: secs(10), maximum_backoff: secs(5) }), None),
            Code::InvalidArgument,
            "retry_policy.maximum_backoff",
        ),
        (
            create(None, Some(pb::DeadLetterPolicy { dead_letter_topic: "orders".into(), max_delivery_attempts: 0 })),
            Code::InvalidArgument,
            "dead_letter_topic",
        ),
        (
            create(None, Some(pb::DeadLetterPolicy { dead_letter_topic: "nope".into(), max_delivery_attempts: 0 })),
            Code::NotFound,
            "nope",
        ),
        (
            create(
                None,
                Some(pb::DeadLetterPolicy { dead_letter_topic: "orders-dlq".into(), max_delivery_attempts: 101 }),
            ),
            Code::InvalidArgument,
            "max_delivery_attempts",
        ),
    ];
    for (req, code, named) in cases {
        let status = admin.create_subscription(req).await.unwrap_err();
        assert_eq!(status.code(), code, "{}", status.message());
        assert!(status.message().contains(named), "{} should name {named}", status.message());
    }
    let got = pull(&server, "plain").await;
    let mut pubsub = server.pubsub.clone();
    let nack = |delay, terminal| pb::NackRequest {
        subscription: "plain".into(),
        ack_ids: vec![got[0].ack_id.clone()],
        delay,
        terminal,
        ..Default::default()
    };
    let status = pubsub.nack(nack(None, true)).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("dead_letter_policy"), "{}", status.message());
    let status = pubsub.nack(nack(secs(601), false)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("nack_delay"), "{}", status.message());
    let status = pubsub.nack(nack(secs(-5), false)).await.unwrap_err();
    assert!(status.message().starts_with("delay"), "{}", status.message());
    let status =
        admin.delete_topic(pb::DeleteTopicRequest { name: "orders-dlq".into(), force: false }).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    let list = pb::ListPendingRequest { subscription: "plain".into(), page_token: "x".into(), ..Default::default() };
    assert_eq!(admin.list_pending(list).await.unwrap_err().code(), Code::InvalidArgument);
    let ack = pb::AckRequest { subscription: "plain".into(), ack_ids: vec![got[0].ack_id.clone()] };
    let confirmed = pubsub.ack(ack).await.unwrap().into_inner().confirmations;
    assert_eq!(confirmed[0].result(), pb::AckResult::Applied, "the refusals changed nothing");
}

#[tokio::test]
async fn ordering_keys_deliver_one_message_per_key_at_a_time() {
    let server = start().await;
    server.create_topic("payments", 1).await;
    let req = pb::CreateSubscriptionRequest {
        name: "ordered".into(),
        topic: "payments".into(),
        enable_message_ordering: true,
        ..Default::default()
    };
    let created = server.admin.clone().create_subscription(req).await.unwrap().into_inner();
    assert!(created.enable_message_ordering);
    let message = |key: &str, value: &str| pb::OutgoingMessage {
        key: Some(key.into()),
        value: value.as_bytes().to_vec().into(),
        ..Default::default()
    };
    let batch = vec![message("alice", "a1"), message("alice", "a2"), message("bob", "b1")];
    let publish = pb::PublishRequest { topic: "payments".into(), messages: batch, ..Default::default() };
    server.pubsub.clone().publish(publish).await.unwrap();

    let first = pull(&server, "ordered").await;
    assert_eq!(first.iter().map(value).collect::<Vec<_>>(), ["a1", "b1"]);
    let list = pb::ListPendingRequest { subscription: "ordered".into(), ..Default::default() };
    let pending = server.admin.clone().list_pending(list).await.unwrap().into_inner();
    let states: Vec<_> = pending.messages.iter().map(|m| (m.offset, m.state())).collect();
    assert_eq!(states[1], (1, pb::PendingState::KeyBlocked));
    let ack = pb::AckRequest { subscription: "ordered".into(), ack_ids: vec![first[0].ack_id.clone()] };
    server.pubsub.clone().ack(ack).await.unwrap();
    assert_eq!(pull(&server, "ordered").await.iter().map(value).collect::<Vec<_>>(), ["a2"]);
}
