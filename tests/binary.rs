//! The real `mini-pubsub serve` binary: its startup line, and a graceful stop on SIGTERM
//! that ends open streams with a status.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{channel, PROMPT};
use mini_pubsub::wire::pb;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

#[tokio::test]
async fn serve_names_its_address_and_stops_gracefully_on_sigterm() {
    let data = tempfile::tempdir().unwrap();
    let mut server = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_mini-pubsub"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data.path())
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts"),
    );
    let child = &mut server.0;
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let startup = lines.next().expect("a startup line").unwrap();
    let addr = startup
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {startup:?}"));
    assert!(addr.starts_with("127.0.0.1:"), "{startup}");
    let logs = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());

    let channel = channel(addr.parse().unwrap()).await;
    let mut pubsub = pb::pub_sub_client::PubSubClient::new(channel);
    let req = pb::PublishRequest { topic: "events".into(), value: "hello".into(), ..Default::default() };
    pubsub.publish(req).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(pb::SubscribeRequest { topic: "events".into(), ..Default::default() }).await.unwrap();
    let mut stream = pubsub.subscribe(ReceiverStream::new(rx)).await.unwrap().into_inner();
    stream.message().await.unwrap().expect("the opening response");
    let delivered = stream.message().await.unwrap().expect("the message");
    assert_eq!(delivered.received_messages.len(), 1);

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let ended = tokio::time::timeout(PROMPT, stream.message()).await.expect("the stream ends promptly");
    let status = ended.expect_err("the stream ends with a status, not a reset");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    let mut exit = None;
    for _ in 0..100 {
        exit = child.try_wait().unwrap();
        if exit.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let exit = exit.expect("the server stops within 5 s of SIGTERM");
    assert!(exit.success(), "{exit:?}");
    let logs = logs.join().unwrap().join("\n");
    assert!(logs.contains("SIGTERM received") && logs.contains("stopped"), "{logs}");
}

/// Stops the server we started if the test fails midway (a no-op once it has exited).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
