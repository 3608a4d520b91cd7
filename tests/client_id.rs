//! Subscribe `client_id` over gRPC, against a real server on 127.0.0.1: a client whose
//! stream is dropped keeps its leases and acks them on its next stream; a second stream of
//! a client replaces the first; `leave` and streams without a client id release at once.

mod common;

use std::time::Duration;

use common::*;
use mini_pubsub::wire::pb;
use tonic::Code;

fn as_client(subscription: &str, client_id: &str) -> pb::SubscribeRequest {
    pb::SubscribeRequest { client_id: client_id.into(), ..on_subscription(subscription) }
}

async fn pending(server: &TestServer, subscription: &str) -> Vec<pb::PendingMessage> {
    let list = pb::ListPendingRequest { subscription: subscription.into(), ..Default::default() };
    server.admin.clone().list_pending(list).await.unwrap().into_inner().messages
}

/// Waits until the broker shows the one pending message leased to `member`.
async fn until_leased_to(server: &TestServer, subscription: &str, member: &str) {
    let leased = async {
        loop {
            let rows = pending(server, subscription).await;
            if rows.iter().any(|r| r.state() == pb::PendingState::Leased && r.member == member) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(PROMPT, leased).await.unwrap_or_else(|_| panic!("never leased to {member}"));
}

async fn setup(server: &TestServer) {
    server.create_topic("jobs", 1).await;
    server.create_subscription("jobs-sub", "jobs", 30).await;
    server.publish("jobs", &["one"]).await;
}

#[tokio::test]
async fn a_dropped_stream_keeps_its_leases_for_its_client_whose_next_stream_acks_them() {
    let server = start().await;
    setup(&server).await;
    let mut first = server.subscribe(as_client("jobs-sub", "worker-1")).await;
    let got = first.messages(1).await;
    assert_eq!(got[0].delivery_attempt, 1);
    drop(first);
    // The client is gone: the lease waits for it, held by no stream.
    until_leased_to(&server, "jobs-sub", "detached:worker-1").await;
    let stats = server.stats("jobs-sub").await;
    assert_eq!((stats.streams, stats.outstanding), (0, 1), "{stats:?}");

    let mut second = server.subscribe(as_client("jobs-sub", "worker-1")).await;
    until_leased_to(&server, "jobs-sub", "stream-2").await;
    let confirmed = second.ack(ack_ids(&got)).await;
    assert_eq!(confirmed[0].result(), pb::AckResult::Applied, "{confirmed:?}");
    second.expect_quiet(Duration::from_millis(300)).await;
    let stats = server.stats("jobs-sub").await;
    assert_eq!((stats.backlog, stats.outstanding, stats.partitions[0].committed_offset), (0, 0, 1), "{stats:?}");
}

#[tokio::test]
async fn without_a_client_id_a_dropped_stream_releases_its_leases_at_once() {
    let server = start().await;
    setup(&server).await;
    let mut first = server.subscribe(on_subscription("jobs-sub")).await;
    let got = first.messages(1).await;
    let mut other = server.subscribe(on_subscription("jobs-sub")).await;
    drop(first);
    let again = other.messages(1).await;
    assert_eq!((value(&again[0]), again[0].delivery_attempt), ("one".to_string(), 2));
    let confirmed = other.ack(ack_ids(&got)).await;
    assert_eq!(confirmed[0].result(), pb::AckResult::Expired);
}

#[tokio::test]
async fn a_second_stream_of_a_client_ends_the_first_with_aborted_and_takes_its_leases() {
    let server = start().await;
    setup(&server).await;
    let mut first = server.subscribe(as_client("jobs-sub", "worker-1")).await;
    let got = first.messages(1).await;
    let mut second = server.subscribe(as_client("jobs-sub", "worker-1")).await;
    let status = end_status(&mut first.inbound, PROMPT).await;
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert_eq!(
        status.message(),
        "subscription `jobs-sub`: stream-1 was replaced by a newer stream of client `worker-1` (stream-2), which took over its leases"
    );
    let confirmed = second.ack(ack_ids(&got)).await;
    assert_eq!(confirmed[0].result(), pb::AckResult::Applied);
    assert_eq!(server.stats("jobs-sub").await.streams, 1);
}

#[tokio::test]
async fn a_client_that_leaves_releases_its_leases_at_once_and_its_stream_ends_ok() {
    let server = start().await;
    setup(&server).await;
    server.publish("jobs", &["two"]).await;
    let mut leaving = server.subscribe(as_client("jobs-sub", "worker-1")).await;
    let got = leaving.messages(2).await;
    let mut other = server.subscribe(on_subscription("jobs-sub")).await;
    let last = pb::SubscribeRequest { ack_ids: vec![got[0].ack_id.clone()], leave: true, ..Default::default() };
    leaving.send(last).await;
    let mut confirmations = Vec::new();
    loop {
        match tokio::time::timeout(PROMPT, leaving.inbound.message()).await.expect("the stream ends") {
            Ok(Some(response)) => confirmations.extend(response.ack_confirmations),
            Ok(None) => break,
            Err(status) => panic!("ended with {status:?}"),
        }
    }
    assert_eq!(confirmations.len(), 1, "the last request's ack is confirmed before the end");
    assert_eq!(confirmations[0].result(), pb::AckResult::Applied);
    let again = other.messages(1).await;
    assert_eq!((value(&again[0]), again[0].delivery_attempt), ("two".to_string(), 2));
}

#[tokio::test]
async fn a_bad_client_id_is_refused_naming_the_field_and_the_limit() {
    let server = start().await;
    setup(&server).await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(as_client("jobs-sub", &"x".repeat(129))).await.unwrap();
    let refused = server.pubsub.clone().subscribe(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(
        refused.message(),
        "client_id: is 129 bytes; client ids are 1 to 128 bytes of printable ASCII without spaces (empty for none)"
    );
    assert_eq!(server.stats("jobs-sub").await.streams, 0);
}
