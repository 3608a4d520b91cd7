//! The real `mini-pubsub serve` binary: its startup line, and a graceful stop on SIGTERM
//! that ends open streams with a status.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{channel, exit_within, KillOnDrop, PROMPT};
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
    let addr = common::listening_addr(&startup);
    assert_eq!(addr.ip().to_string(), "127.0.0.1", "{startup}");
    let logs = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());

    let channel = channel(addr).await;
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

    let exit = exit_within(child, Duration::from_secs(5)).await.expect("the server stops within 5 s of SIGTERM");
    assert!(exit.success(), "{exit:?}");
    let logs = logs.join().unwrap().join("\n");
    assert!(logs.contains("SIGTERM received") && logs.contains("stopped"), "{logs}");
}

#[test]
fn config_print_shows_each_setting_and_where_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broker.toml");
    std::fs::write(&file, "[broker]\ndefault_partitions = 2\nack_deadline_ms = 20000\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mini-pubsub"))
        .args(["config", "print", "--config"])
        .arg(&file)
        .args(["--ack-deadline-seconds", "15", "--storage", "memory"])
        .env("MINI_PUBSUB_TOPICS_MAX", "50")
        .env_remove("MINI_PUBSUB_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8(out.stdout).unwrap();
    let line = |key: &str| printed.lines().find(|l| l.starts_with(&format!("{key} = "))).unwrap_or("").to_string();
    assert!(line("default_partitions").ends_with(&format!("# file {}", file.display())), "{printed}");
    assert!(line("ack_deadline_ms").starts_with("ack_deadline_ms = 15000 "), "{printed}");
    assert!(line("ack_deadline_ms").ends_with("# flag --ack-deadline-seconds"), "{printed}");
    assert!(line("topics_max").ends_with("# env MINI_PUBSUB_TOPICS_MAX"), "{printed}");
    assert!(line("storage").starts_with("storage = \"memory\""), "{printed}");
    assert!(line("streams_max").ends_with("# default"), "{printed}");
}

#[test]
fn nonsense_configuration_is_refused_in_one_line_naming_the_key() {
    let out = Command::new(env!("CARGO_BIN_EXE_mini-pubsub"))
        .args(["serve", "--storage", "memory", "--listen", "127.0.0.1:0"])
        .env("MINI_PUBSUB_MAX_MESSAGE_BYTES", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stderr,
        "error: invalid configuration: max_message_bytes must be 1 B to 3 MiB; \
         it is 0 (from env MINI_PUBSUB_MAX_MESSAGE_BYTES)\n"
    );
}

#[tokio::test]
async fn a_configuration_file_with_json_logs_runs_the_broker_and_logs_requests_in_spans() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broker.toml");
    let text = "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace_ms = 1000\n[log]\nlog_format = \"json\"\nlog_filter = \"mini_pubsub=debug\"\n\
                [storage]\nstorage = \"memory\"\n[broker]\nauto_create_topics = false\n";
    std::fs::write(&file, text).unwrap();
    let mut server = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_mini-pubsub"))
            .args(["serve", "--config"])
            .arg(&file)
            .env_remove("RUST_LOG")
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts"),
    );
    let child = &mut server.0;
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let startup = lines.next().expect("a startup line").unwrap();
    assert!(startup.starts_with('{') && startup.contains("\"level\":\"INFO\""), "{startup}");
    let addr = common::listening_addr(&startup);
    let logs = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());

    let mut pubsub = pb::pub_sub_client::PubSubClient::new(channel(addr).await);
    let req = pb::PublishRequest { topic: "nowhere".into(), value: "x".into(), ..Default::default() };
    let refused = pubsub.publish(req).await.expect_err("auto_create_topics = false from the file");
    assert_eq!(refused.code(), Code::NotFound);

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    // This thread blocks in the join, so the client cannot answer the server's GOAWAY: the
    // stop ends when its grace period (1 s, from the file) runs out.
    let logs = logs.join().unwrap();
    assert!(logs.iter().any(|l| l.contains("shutdown grace period ended")), "{logs:#?}");
    let refusal = logs.iter().find(|l| l.contains("\"refused\"")).unwrap_or_else(|| panic!("{logs:#?}"));
    assert!(refusal.contains("\"method\":\"/pubsub.PubSub/Publish\""), "{refusal}");
    assert!(refusal.contains("\"code\":\"NotFound\""), "{refusal}");
    assert!(logs.iter().all(|l| l.starts_with('{')), "every line is JSON: {logs:#?}");
}

#[tokio::test]
async fn at_its_open_file_limit_a_create_is_refused_with_resource_exhausted_naming_the_limit() {
    let data = tempfile::tempdir().unwrap();
    // The real binary under a soft limit of 64 open files (set by the shell it starts in).
    let mut server = KillOnDrop(
        Command::new("sh")
            .arg("-c")
            .arg("ulimit -n 64 && exec \"$0\" serve --listen 127.0.0.1:0 --data-dir \"$1\"")
            .arg(env!("CARGO_BIN_EXE_mini-pubsub"))
            .arg(data.path())
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts"),
    );
    let mut lines = BufReader::new(server.0.stderr.take().unwrap()).lines();
    let startup = lines.next().expect("a startup line").unwrap();
    std::thread::spawn(move || lines.map_while(Result::ok).count());
    let channel = channel(common::listening_addr(&startup)).await;
    let mut admin = pb::admin_client::AdminClient::new(channel.clone());
    let mut pubsub = pb::pub_sub_client::PubSubClient::new(channel);

    let wide = pb::CreateTopicRequest { name: "wide".into(), partitions: 200, ..Default::default() };
    let refused = admin.create_topic(wide).await.expect_err("200 partitions need more than 64 files");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("RLIMIT_NOFILE, 64"), "{}", refused.message());
    let listed = admin.list_topics(pb::ListTopicsRequest::default()).await.unwrap().into_inner();
    assert!(listed.topics.is_empty(), "a refused create leaves nothing: {listed:?}");
    assert_eq!(std::fs::read_dir(data.path().join("topics")).unwrap().count(), 0, "nor files");

    // The files the refused create opened are closed again: the broker goes on.
    let narrow = pb::CreateTopicRequest { name: "narrow".into(), partitions: 4, ..Default::default() };
    admin.create_topic(narrow).await.unwrap();
    let req = pb::PublishRequest { topic: "narrow".into(), value: "still here".into(), ..Default::default() };
    pubsub.publish(req).await.unwrap();
}
