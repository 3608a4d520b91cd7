//! A broker with many topics and open streams stops cleanly on SIGTERM.
//!
//! The sweep fails on e8a656a, at its second stop: after `stopped`, the driver task still
//! waited on a timer while the runtime shut down, and tokio panicked ("A Tokio 1.x context
//! was found, but it is being shutdown"). Since 2df8fa8 the driver's task ends with its last
//! turn, and the sweep is clean.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{channel, exit_within, KillOnDrop};
use mini_pubsub::wire::pb;

/// Starts the real binary on `data`, creates topics `t0..t{create}` (none if 0), opens a
/// stream on each of the first `streams`, SIGTERMs it and returns everything it logged.
async fn run_and_stop(data: &Path, create: usize, streams: usize) -> String {
    let mut server = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_mini-pubsub"))
            .args(["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts"),
    );
    let mut lines = BufReader::new(server.0.stderr.take().unwrap()).lines();
    let startup = lines.next().expect("a startup line").unwrap();
    let logs = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    let channel = channel(common::listening_addr(&startup)).await;
    let admin = pb::admin_client::AdminClient::new(channel.clone());
    let mut creates = tokio::task::JoinSet::new();
    for chunk in 0..16 {
        let mut admin = admin.clone();
        creates.spawn(async move {
            for i in (chunk..create).step_by(16) {
                let req = pb::CreateTopicRequest { name: format!("t{i}"), partitions: 1, ..Default::default() };
                admin.create_topic(req).await.unwrap();
            }
        });
    }
    while let Some(done) = creates.join_next().await {
        done.unwrap();
    }
    let mut open = Vec::new();
    for i in 0..streams {
        let mut pubsub = pb::pub_sub_client::PubSubClient::new(channel.clone());
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(pb::SubscribeRequest { topic: format!("t{i}"), ..Default::default() }).await.unwrap();
        let stream = pubsub.subscribe(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap();
        open.push((tx, stream));
    }
    // Publishes go on to the streams' topics while the broker stops.
    let mut publishing = tokio::task::JoinSet::new();
    for p in 0..4 {
        let mut pubsub = pb::pub_sub_client::PubSubClient::new(channel.clone());
        publishing.spawn(async move {
            for i in 0..100_000usize {
                let req = pb::PublishRequest {
                    topic: format!("t{}", (i * 4 + p) % streams.max(1)),
                    value: vec![b'x'; 1000].into(),
                    ..Default::default()
                };
                if pubsub.publish(req).await.is_err() {
                    break;
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let child = &mut server.0;
    let sent = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(sent.success());
    let exit = exit_within(child, Duration::from_secs(60)).await.expect("the server stops within 60 s of SIGTERM");
    publishing.abort_all();
    let logs = logs.join().unwrap().join("\n");
    assert!(exit.success(), "{exit:?}\n{logs}");
    logs
}

#[tokio::test]
#[ignore = "a sweep of minutes: cargo test --release --test shutdown -- --ignored --nocapture"]
async fn fifty_stops_of_a_broker_with_ten_thousand_topics_never_panic() {
    let data = tempfile::tempdir().unwrap();
    let logs = run_and_stop(data.path(), 10_000, 200).await;
    assert!(!logs.contains("panicked") && logs.contains("stopped"), "{logs}");
    for run in 1..50 {
        let logs = run_and_stop(data.path(), 0, 200).await;
        assert!(!logs.contains("panicked") && logs.contains("stopped"), "run {run}:\n{logs}");
        eprintln!("run {run}: clean");
    }
}
