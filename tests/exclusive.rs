//! Partition-exclusive subscriptions (consumer groups) over gRPC, against a real server on
//! 127.0.0.1.

mod common;

use std::time::Duration;

use common::*;
use mini_pubsub::wire::pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(5);

async fn setup(server: &TestServer) {
    server.create_topic("orders", 4).await;
    let req = pb::CreateSubscriptionRequest {
        name: "group".into(),
        topic: "orders".into(),
        delivery_mode: pb::DeliveryMode::Exclusive.into(),
        ..Default::default()
    };
    let created = server.admin.clone().create_subscription(req).await.unwrap().into_inner();
    assert_eq!(created.delivery_mode(), pb::DeliveryMode::Exclusive);
}

/// One message on each of the 4 partitions.
async fn publish_each_partition(server: &TestServer) {
    for partition in 0..4 {
        let req = pb::PublishRequest {
            topic: "orders".into(),
            value: format!("p{partition}").into(),
            partition: Some(partition),
            ..Default::default()
        };
        server.pubsub.clone().publish(req).await.unwrap();
    }
}

/// Reads until an assignment arrives, then until `messages` messages arrived with it.
async fn assignment_and(sub: &mut Sub, messages: usize) -> (pb::Assignment, Vec<pb::ReceivedMessage>) {
    let mut assignment = None;
    let mut got = Vec::new();
    while assignment.is_none() || got.len() < messages {
        let response = sub.next_within(WAIT).await.expect("an assignment and messages");
        got.extend(response.received_messages);
        assignment = response.assignment.or(assignment);
    }
    (assignment.unwrap(), got)
}

fn partitions(messages: &[pb::ReceivedMessage]) -> Vec<u32> {
    let mut ps: Vec<u32> = messages.iter().map(|m| m.message.as_ref().unwrap().partition).collect();
    ps.sort_unstable();
    ps
}

#[tokio::test]
async fn two_members_share_the_partitions_and_the_survivor_takes_them_all() {
    let server = start().await;
    setup(&server).await;
    publish_each_partition(&server).await;
    let mut first = server.subscribe(on_subscription("group")).await;
    let (assigned, gen1) = assignment_and(&mut first, 4).await;
    assert_eq!((assigned.generation, assigned.partitions), (1, vec![0, 1, 2, 3]));

    let mut second = server.subscribe(on_subscription("group")).await;
    let (to_second, moved) = assignment_and(&mut second, 2).await;
    let (to_first, _) = assignment_and(&mut first, 0).await;
    assert_eq!((to_first.generation, to_first.partitions), (2, vec![0, 1]));
    assert_eq!((to_second.generation, to_second.partitions), (2, vec![2, 3]));
    assert_eq!(partitions(&moved), [2, 3]);
    // The move is not the consumer's failure: the delivery attempt stays 1.
    assert!(moved.iter().all(|m| m.generation == 2 && m.delivery_attempt == 1), "{moved:?}");
    let stats = server.stats("group").await;
    assert_eq!(stats.generation, 2);
    let members: Vec<&str> = stats.partitions.iter().map(|p| p.member.as_str()).collect();
    assert_eq!(members[0], members[1]);
    assert_ne!(members[1], members[2]);

    // The first member's leases on p2 and p3 ended when they moved: its acks are expired.
    let results: Vec<(u32, pb::AckResult)> = {
        let confirmations = first.ack(ack_ids(&gen1)).await;
        gen1.iter().zip(&confirmations).map(|(m, c)| (m.message.as_ref().unwrap().partition, c.result())).collect()
    };
    let expired = results.iter().filter(|(_, r)| *r == pb::AckResult::Expired).map(|(p, _)| *p).collect::<Vec<_>>();
    assert_eq!(expired, [2, 3], "{results:?}");

    drop(second);
    let (after, back) = assignment_and(&mut first, 2).await;
    assert_eq!((after.generation, after.partitions), (3, vec![0, 1, 2, 3]));
    assert_eq!(partitions(&back), [2, 3]);
    assert!(back.iter().all(|m| m.generation == 3));
    let ack = pb::AckRequest { subscription: "group".into(), ack_ids: ack_ids(&moved) };
    let confirmations = server.pubsub.clone().ack(ack).await.unwrap().into_inner().confirmations;
    assert!(confirmations.iter().all(|c| c.result() == pb::AckResult::Expired), "the leaver's acks: {confirmations:?}");
}

#[tokio::test]
async fn a_silent_member_is_removed_after_its_session_timeout() {
    let server = start().await;
    setup(&server).await;
    let first = pb::SubscribeRequest { session_timeout_seconds: 1, ..on_subscription("group") };
    let mut silent = server.subscribe(first).await;
    let (assigned, _) = assignment_and(&mut silent, 0).await;
    assert_eq!(assigned.partitions, [0, 1, 2, 3]);
    let status = end_status(&mut silent.inbound, WAIT).await;
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(status.message().contains("session timeout"), "{}", status.message());
    assert_eq!(server.stats("group").await.streams, 0);
}

#[tokio::test]
async fn bad_mode_and_session_timeout_are_refused_naming_the_field() {
    let server = start().await;
    setup(&server).await;
    let req = pb::CreateSubscriptionRequest {
        name: "odd".into(),
        topic: "orders".into(),
        delivery_mode: 7,
        ..Default::default()
    };
    let status = server.admin.clone().create_subscription(req).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("delivery_mode: 7"), "{}", status.message());

    let (tx, rx) = mpsc::channel(1);
    tx.send(pb::SubscribeRequest { session_timeout_seconds: 301, ..on_subscription("group") }).await.unwrap();
    let status = server.pubsub.clone().subscribe(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("session_timeout_seconds: 301 s"), "{}", status.message());
}
