//! The server on the file log, over gRPC: what a restart keeps, and retention.

mod common;

use common::{start_on, value};
use mini_pubsub::env::StdFs;
use mini_pubsub::server::ServerConfig;
use mini_pubsub::storage::{FileStorage, FileStorageConfig};
use mini_pubsub::wire::pb;
use std::sync::Arc;

fn file_storage(dir: &std::path::Path, segment_bytes: u64) -> Box<FileStorage> {
    let config = FileStorageConfig { segment_bytes, ..FileStorageConfig::new(dir) };
    Box::new(FileStorage::open(Arc::new(StdFs), config).unwrap())
}

async fn pull(server: &common::TestServer, subscription: &str) -> Vec<pb::ReceivedMessage> {
    let req = pb::PullRequest { subscription: subscription.into(), max_messages: 1000 };
    server.pubsub.clone().pull(req).await.unwrap().into_inner().received_messages
}

async fn ack(server: &common::TestServer, subscription: &str, messages: &[pb::ReceivedMessage]) {
    let ack_ids = messages.iter().map(|m| m.ack_id.clone()).collect();
    server.pubsub.clone().ack(pb::AckRequest { subscription: subscription.into(), ack_ids }).await.unwrap();
}

#[tokio::test]
async fn topics_messages_and_acks_survive_a_restart_on_the_file_log() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_on(ServerConfig::default(), file_storage(dir.path(), 64 * 1024 * 1024)).await;
    server.create_topic("orders", 2).await;
    server.create_subscription("audit", "orders", 30).await;
    let published = server.publish("orders", &["a", "b", "c", "d"]).await;
    let first = pull(&server, "audit").await;
    assert_eq!(first.len(), 4);
    let (acked, unacked): (Vec<_>, Vec<_>) = first.into_iter().partition(|m| value(m) != "c");
    ack(&server, "audit", &acked).await;
    server.stop().await; // a clean stop saves the committed offsets

    let server = start_on(ServerConfig::default(), file_storage(dir.path(), 64 * 1024 * 1024)).await;
    let topic = server.admin.clone().get_topic(pb::GetTopicRequest { name: "orders".into() }).await.unwrap();
    let ends: u64 = topic.into_inner().partition_info.iter().map(|p| p.end_offset).sum();
    assert_eq!(ends, 4);
    let again = pull(&server, "audit").await;
    assert_eq!(again.iter().map(value).collect::<Vec<_>>(), vec![value(&unacked[0])], "only the unacked one");
    let more = server.publish("orders", &["e"]).await;
    assert!(more[0].message_id != published[0].message_id);
    server.stop().await;
}

#[tokio::test]
async fn retention_deletes_whole_segments_and_moves_the_start_and_the_subscriptions() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::default();
    config.broker.max_message_bytes = 4096;
    config.broker.partition_retention_bytes = 64 * 1024;
    let server = start_on(config, file_storage(dir.path(), 16 * 1024)).await;
    server.create_topic("logs", 1).await;
    server.create_subscription("reader", "logs", 30).await;
    let payload = "x".repeat(1000);
    for _ in 0..20 {
        let values: Vec<&str> = (0..10).map(|_| payload.as_str()).collect();
        server.publish("logs", &values).await;
    }
    let topic = server.admin.clone().get_topic(pb::GetTopicRequest { name: "logs".into() }).await.unwrap();
    let partition = topic.into_inner().partition_info[0].clone();
    assert_eq!(partition.end_offset, 200);
    assert!(partition.start_offset > 0, "retention moved the start: {partition:?}");
    let segments = std::fs::read_dir(dir.path().join("topics/1/0")).unwrap().count();
    assert!(segments <= 64 / 16 + 2, "{segments} segments for 64 KiB of retention in 16 KiB segments");
    let first = pull(&server, "reader").await;
    let offset = first[0].message.as_ref().unwrap().offset;
    assert_eq!(offset, partition.start_offset, "the subscription starts at the new log start");
    server.stop().await;
}

/// Where the frame of the record at `offset` starts in a segment file whose first record
/// is offset 0, and its length, found by walking the frames' length fields.
fn frame_of(bytes: &[u8], offset: u64) -> (usize, usize) {
    let mut position = 0usize;
    for next in 0.. {
        let len = 8 + u32::from_le_bytes(bytes[position..position + 4].try_into().unwrap()) as usize;
        if next == offset {
            return (position, len);
        }
        position += len;
    }
    unreachable!()
}

#[tokio::test]
async fn a_record_damaged_on_disk_is_passed_reported_and_waited_at_only_by_readers_that_need_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_on(ServerConfig::default(), file_storage(dir.path(), 64 * 1024 * 1024)).await;
    server.create_topic("orders", 1).await;
    server.create_subscription("audit", "orders", 30).await;
    let values: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    server.publish("orders", &values.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let all = pull(&server, "audit").await;
    assert_eq!(all.len(), 20);
    ack(&server, "audit", &all).await;
    server.stop().await;

    // A flipped bit in the body of record 15, below the subscription's committed offset.
    let path = dir.path().join("topics/1/0").join(format!("{:020}.log", 0));
    let mut bytes = std::fs::read(&path).unwrap();
    let (start, len) = frame_of(&bytes, 15);
    bytes[start + len - 2] ^= 0x20;
    std::fs::write(&path, bytes).unwrap();

    let server = start_on(ServerConfig::default(), file_storage(dir.path(), 64 * 1024 * 1024)).await;
    let topic = server.admin.clone().get_topic(pb::GetTopicRequest { name: "orders".into() }).await.unwrap();
    let partition = topic.into_inner().partition_info[0].clone();
    assert_eq!(partition.end_offset, 20, "nothing after the damage was cut");
    assert_eq!(partition.damaged, vec![pb::OffsetRange { first: 15, end: 16 }]);
    server.publish("orders", &["n0", "n1"]).await;
    let past = pull(&server, "audit").await;
    assert_eq!(past.iter().map(value).collect::<Vec<_>>(), vec!["n0", "n1"], "a subscription past it never notices");

    // A subscription that needs it gets what is before it, then waits at it.
    server.create_subscription("replay", "orders", 30).await;
    let before = pull(&server, "replay").await;
    assert_eq!(before.len(), 15);
    ack(&server, "replay", &before).await;
    let waiting = server.pubsub.clone().pull(pb::PullRequest { subscription: "replay".into(), max_messages: 10 }).await;
    assert_eq!(waiting.unwrap_err().code(), tonic::Code::DataLoss);
    let to = pb::PartitionOffsets { offsets: vec![pb::PartitionOffset { partition: 0, offset: 16 }] };
    let seek = pb::SeekRequest { subscription: "replay".into(), target: Some(pb::seek_request::Target::Offsets(to)) };
    server.pubsub.clone().seek(seek).await.unwrap();
    let after = pull(&server, "replay").await;
    assert_eq!(after.iter().map(value).collect::<Vec<_>>(), vec!["m16", "m17", "m18", "m19", "n0", "n1"]);
    server.stop().await;
}
