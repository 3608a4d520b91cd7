//! PublishStream against a real server on 127.0.0.1: several batches in flight on one
//! stream, answered in request order with their sequence numbers; a refused batch is
//! answered with its status and the stream goes on.

mod common;

use common::*;
use mini_pubsub::server::ServerConfig;
use mini_pubsub::wire::pb;
use tonic::Code;

fn batch(sequence: u64, topic: &str, values: &[&str]) -> pb::PublishStreamRequest {
    let messages = values
        .iter()
        .map(|v| pb::OutgoingMessage {
            value: v.as_bytes().to_vec().into(),
            key: Some("k".into()),
            ..Default::default()
        })
        .collect();
    pb::PublishStreamRequest {
        sequence,
        publish: Some(pb::PublishRequest { topic: topic.into(), messages, ..Default::default() }),
    }
}

#[tokio::test]
async fn batches_on_one_stream_are_stored_and_answered_in_order_and_a_refused_one_does_not_end_it() {
    let mut config = ServerConfig::default();
    config.broker.auto_create_topics = false;
    let server = start_with(config).await;
    server.create_topic("orders", 1).await;
    let mut requests = vec![
        batch(10, "orders", &["a", "b"]),
        batch(11, "nowhere", &["lost"]),
        pb::PublishStreamRequest { sequence: 12, publish: None },
    ];
    // More batches than the window, so the server reads on only as it answers.
    for i in 0..40u64 {
        requests.push(batch(13 + i, "orders", &[&format!("m{i}")]));
    }
    let sent = requests.len();
    let answers = server.pubsub.clone().publish_stream(tokio_stream::iter(requests)).await.unwrap();
    let mut answers = answers.into_inner();
    let mut got = Vec::new();
    while let Some(answer) = answers.message().await.unwrap() {
        got.push(answer);
    }
    assert_eq!(got.len(), sent, "one answer per batch, then the stream ends with the client's");
    let sequences: Vec<u64> = got.iter().map(|a| a.sequence).collect();
    assert_eq!(sequences, (10..10 + sent as u64).collect::<Vec<_>>(), "in request order");

    assert_eq!((got[0].code, got[0].results.len()), (0, 2));
    assert_eq!((got[0].results[0].offset, got[0].results[1].offset), (0, 1));
    assert_eq!(got[1].code, Code::NotFound as i32, "{:?}", got[1]);
    assert!(got[1].message.contains("nowhere") && got[1].results.is_empty(), "{:?}", got[1]);
    assert_eq!(got[2].code, Code::InvalidArgument as i32);
    assert!(got[2].message.contains("publish: not set"), "{}", got[2].message);
    let offsets: Vec<u64> = got[3..].iter().map(|a| a.results[0].offset).collect();
    assert_eq!(offsets, (2..42).collect::<Vec<_>>(), "stored in the stream's order, after the first batch");

    // Nothing of the refused batches was stored; the topic holds the 42 others.
    let topic = server.admin.clone().get_topic(pb::GetTopicRequest { name: "orders".into() }).await.unwrap();
    assert_eq!(topic.into_inner().partition_info[0].end_offset, 42);
    let nowhere = server.admin.clone().get_topic(pb::GetTopicRequest { name: "nowhere".into() }).await;
    assert_eq!(nowhere.unwrap_err().code(), Code::NotFound, "the refused publish created nothing");
}

#[tokio::test]
async fn after_a_batch_a_client_would_send_again_the_streams_later_batches_are_not_applied() {
    let server = start_with(ServerConfig::default()).await;
    server.create_topic("orders", 1).await;
    let mut refused = batch(2, "orders", &["b", "c"]);
    // A key past idempotency_key_bytes_max (256): the broker refuses the batch naming that
    // message, and a client takes it out and sends the rest again.
    refused.publish.as_mut().unwrap().messages[1].idempotency_key = Some("k".repeat(300));
    let requests =
        vec![batch(1, "orders", &["a"]), refused, batch(3, "orders", &["d"]), batch(4, "orders", &["e", "f"])];
    let answers = server.pubsub.clone().publish_stream(tokio_stream::iter(requests)).await.unwrap();
    let mut answers = answers.into_inner();
    let mut got = Vec::new();
    while let Some(answer) = answers.message().await.unwrap() {
        got.push(answer);
    }
    let codes: Vec<(u64, i32)> = got.iter().map(|a| (a.sequence, a.code)).collect();
    let aborted = Code::Aborted as i32;
    assert_eq!(codes, [(1, 0), (2, Code::InvalidArgument as i32), (3, aborted), (4, aborted)]);
    assert!(got[1].message.starts_with("messages[1].idempotency_key"), "{}", got[1].message);
    assert_eq!(
        got[2].message,
        "not applied: batch 2 of this stream was refused before it, and later batches wait for it to be sent again; \
         send batch 2 and those after it again, on a new stream"
    );
    let end = |server: &TestServer| {
        let mut admin = server.admin.clone();
        async move {
            let topic = admin.get_topic(pb::GetTopicRequest { name: "orders".into() }).await.unwrap();
            topic.into_inner().partition_info[0].end_offset
        }
    };
    assert_eq!(end(&server).await, 1, "only the batch before the refused one is stored");

    // On a new stream the client sends the rest of batch 2, then 3 and 4: stored in order.
    let resent = vec![batch(5, "orders", &["b"]), batch(6, "orders", &["d"]), batch(7, "orders", &["e", "f"])];
    let answers = server.pubsub.clone().publish_stream(tokio_stream::iter(resent)).await.unwrap();
    let mut answers = answers.into_inner();
    let mut offsets = Vec::new();
    while let Some(answer) = answers.message().await.unwrap() {
        assert_eq!(answer.code, 0, "{answer:?}");
        offsets.extend(answer.results.iter().map(|r| r.offset));
    }
    assert_eq!(offsets, [1, 2, 3, 4]);
    assert_eq!(end(&server).await, 5);
}
