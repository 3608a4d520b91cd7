//! A real server records every command it applies (`serve --record DIR`); the recording,
//! replayed on a fresh core, gives every reply, every command's outputs and the final state
//! byte for byte as the server did (by digest).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{ack_ids, on_subscription, start_hooked, Sub, TestServer, PROMPT};
use mini_pubsub::config::Loaded;
use mini_pubsub::env::StdFs;
use mini_pubsub::record::{self, Replayer};
use mini_pubsub::server::{Hooks, RecordTo};
use mini_pubsub::storage::FileStorage;
use mini_pubsub::wire::pb;

fn message(value: &str, key: &str, idempotency_key: &str) -> pb::OutgoingMessage {
    pb::OutgoingMessage {
        value: value.as_bytes().to_vec().into(),
        key: Some(key.into()),
        idempotency_key: Some(idempotency_key.into()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_server_replays_with_every_reply_and_the_final_state_as_it_was() {
    let data = tempfile::tempdir().unwrap();
    let recording = tempfile::tempdir().unwrap();
    let (server, loaded) = start_recording(data.path(), recording.path()).await;
    create_topics_and_subscriptions(&server).await;
    publish_with_duplicates(&server).await;
    let mut work = server.subscribe(on_subscription("work")).await;
    ack_some_and_dead_letter_the_rest(&mut work).await;
    ack_and_redrive_dead_letters(&server, &mut work).await;
    seek_and_let_one_expire(&server, &mut work).await;
    join_the_exclusive_group(&server).await;
    drop(work);
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.stop().await;
    replay_and_compare(recording.path(), &loaded);
}

/// A server on a file log in `data`, recording into `recording`; the settings it runs with
/// (a 1 s default ack deadline), which the replay must read back from the recording.
async fn start_recording(data: &Path, recording: &Path) -> (TestServer, Loaded) {
    let flags = vec![
        ("data_dir", "--data-dir".to_string(), data.display().to_string()),
        ("ack_deadline_ms", "--ack-deadline-ms".to_string(), "1000".to_string()),
    ];
    let loaded = Loaded::load(None, Vec::new(), flags).unwrap();
    let storage = Box::new(FileStorage::open(Arc::new(StdFs), loaded.config.file_storage()).unwrap());
    let record = RecordTo {
        fs: Arc::new(StdFs),
        dir: recording.to_path_buf(),
        max_bytes: record::RECORD_MAX_BYTES_DEFAULT,
        settings_toml: loaded.describe(),
    };
    let hooks = Hooks { record: Some(record), ..Hooks::default() };
    let server = start_hooked(loaded.config.server.clone(), storage, hooks).await;
    (server, loaded)
}

/// Topics, a subscription that dead-letters after two attempts, its dead-letter
/// subscription, and an exclusive group; and a refused creation, which is recorded too.
async fn create_topics_and_subscriptions(server: &TestServer) {
    let mut admin = server.admin.clone();
    server.create_topic("orders", 2).await;
    server.create_topic("dlq", 1).await;
    admin
        .create_subscription(pb::CreateSubscriptionRequest {
            name: "work".into(),
            topic: "orders".into(),
            ack_deadline_seconds: 30,
            dead_letter_policy: Some(pb::DeadLetterPolicy {
                dead_letter_topic: "dlq".into(),
                max_delivery_attempts: 2,
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    server.create_subscription("dead", "dlq", 10).await;
    admin
        .create_subscription(pb::CreateSubscriptionRequest {
            name: "group".into(),
            topic: "orders".into(),
            delivery_mode: pb::DeliveryMode::Exclusive as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(admin.create_topic(pb::CreateTopicRequest { name: "orders".into(), ..Default::default() }).await.is_err());
}

/// Ten keyed messages with idempotency keys, then two of them again (duplicates).
async fn publish_with_duplicates(server: &TestServer) {
    let mut pubsub = server.pubsub.clone();
    let messages: Vec<_> =
        (0..10).map(|i| message(&format!("m{i}"), &format!("k{}", i % 5), &format!("id{i}"))).collect();
    let req = pb::PublishRequest { topic: "orders".into(), messages: messages.clone(), ..Default::default() };
    pubsub.publish(req).await.unwrap();
    let again = pb::PublishRequest { topic: "orders".into(), messages: messages[..2].to_vec(), ..Default::default() };
    let results = pubsub.publish(again).await.unwrap().into_inner().results;
    assert!(results.iter().all(|r| r.duplicate));
}

/// The work stream acks six and nacks four twice: those four are dead-lettered.
async fn ack_some_and_dead_letter_the_rest(work: &mut Sub) {
    let got = work.messages(10).await;
    work.ack(ack_ids(&got[..6])).await;
    work.send(pb::SubscribeRequest { nack_ids: ack_ids(&got[6..]), ..Default::default() }).await;
    let again = work.messages(4).await;
    work.send(pb::SubscribeRequest { nack_ids: ack_ids(&again), ..Default::default() }).await;
}

/// The dead letters: two pulled and acked, two nacked back and redriven to the work
/// stream, which acks them.
async fn ack_and_redrive_dead_letters(server: &TestServer, work: &mut Sub) {
    let (mut admin, mut pubsub) = (server.admin.clone(), server.pubsub.clone());
    let mut dead = Vec::new();
    for _ in 0..50 {
        let pull = pb::PullRequest { subscription: "dead".into(), max_messages: 10 };
        dead.extend(pubsub.pull(pull).await.unwrap().into_inner().received_messages);
        if dead.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(dead.len(), 4);
    let ack = pb::AckRequest { subscription: "dead".into(), ack_ids: ack_ids(&dead[..2]) };
    pubsub.ack(ack).await.unwrap();
    let nack = pb::NackRequest { subscription: "dead".into(), ack_ids: ack_ids(&dead[2..]), ..Default::default() };
    pubsub.nack(nack).await.unwrap();
    let redrive = pb::RedriveDeadLettersRequest { subscription: "dead".into(), max_messages: 10 };
    let redriven = admin.redrive_dead_letters(redrive).await.unwrap().into_inner().results;
    assert_eq!(redriven.len(), 2);
    let back = work.messages(2).await;
    work.ack(ack_ids(&back)).await;
}

/// A seek replays everything; one message's lease is cut to 1 s (the others keep 30 s),
/// left to expire, and comes again.
async fn seek_and_let_one_expire(server: &TestServer, work: &mut Sub) {
    let mut pubsub = server.pubsub.clone();
    let seek = pb::SeekRequest { subscription: "work".into(), target: Some(pb::seek_request::Target::Earliest(true)) };
    pubsub.seek(seek).await.unwrap();
    let replayed = work.messages(10).await;
    let shorten = pb::ModifyAckDeadlineRequest {
        subscription: "work".into(),
        ack_ids: ack_ids(&replayed[..1]),
        ack_deadline_seconds: 1,
    };
    pubsub.modify_ack_deadline(shorten).await.unwrap();
    work.ack(ack_ids(&replayed[1..])).await;
    let expired = tokio::time::timeout(PROMPT, work.messages(1)).await.unwrap();
    let id = |m: &pb::ReceivedMessage| m.message.as_ref().map(|m| m.message_id.clone());
    assert_eq!(id(&expired[0]), id(&replayed[0]));
    assert_eq!(expired[0].delivery_attempt, replayed[0].delivery_attempt + 1);
    work.ack(ack_ids(&expired)).await;
}

/// The exclusive group: one member takes every partition and acks, a second one joins;
/// both leave.
async fn join_the_exclusive_group(server: &TestServer) {
    let mut first = server.subscribe(on_subscription("group")).await;
    let got = first.messages(10).await;
    first.ack(ack_ids(&got)).await;
    let second = server.subscribe(on_subscription("group")).await;
    drop(second);
    drop(first);
}

/// Reads the recording back (it holds every kind of command the test caused) and replays
/// it on a fresh core: every reply, every command's outputs and the final state as recorded.
fn replay_and_compare(dir: &Path, loaded: &Loaded) {
    let recording = record::read_dir(&StdFs, dir).unwrap();
    assert!(recording.from_empty && recording.cut.is_none());
    let end = recording.end.expect("the server stopped cleanly");
    let names: BTreeSet<&str> = recording.steps.iter().map(|s| s.command.name()).collect();
    for expected in [
        "create-topic",
        "create-subscription",
        "publish",
        "open-stream",
        "stream-request",
        "close-stream",
        "pull",
        "acks",
        "seek",
        "redrive",
        "tick",
        "sync",
        "checkpoint",
    ] {
        assert!(names.contains(expected), "no {expected} in the recording: {names:?}");
    }
    let scratch = tempfile::tempdir().unwrap();
    let config = Replayer::settings(&recording).unwrap();
    assert_eq!(config, loaded.config);
    let storage = Replayer::storage(&config, Arc::new(StdFs), scratch.path()).unwrap();
    let mut replayer = Replayer::new(&recording, storage, false).unwrap();
    for step in &recording.steps {
        let replayed = replayer.apply(step);
        assert!(replayed.reply_matches, "entry {} ({}): reply {:?}", step.seq, step.command.name(), replayed.reply);
        assert!(replayed.outputs_match, "entry {} ({}): outputs {:?}", step.seq, step.command.name(), replayed.outputs);
    }
    assert_eq!(replayer.state_digest(end.now_ms), end.state_digest, "the final state");
}

#[tokio::test]
async fn a_changed_reply_is_caught_by_its_digest() {
    // The same recording replayed on a broker with another setting answers differently.
    let recording_dir = tempfile::tempdir().unwrap();
    let loaded =
        Loaded::load(None, Vec::new(), vec![("storage", "--storage".to_string(), "memory".to_string())]).unwrap();
    let record = RecordTo {
        fs: Arc::new(StdFs),
        dir: recording_dir.path().to_path_buf(),
        max_bytes: record::RECORD_MAX_BYTES_DEFAULT,
        settings_toml: loaded.describe(),
    };
    let hooks = Hooks { record: Some(record), ..Hooks::default() };
    let server = start_hooked(loaded.config.server.clone(), Box::new(mini_pubsub::storage::MemoryStorage), hooks).await;
    server.create_topic("t", 3).await;
    server.publish("t", &["a", "b", "c"]).await;
    server.stop().await;

    let mut recording = record::read_dir(&StdFs, recording_dir.path()).unwrap();
    // Replayed with a default of one partition, the topic creation answers otherwise.
    let mut changed = Loaded::from_toml(&recording.settings_toml, std::path::Path::new("-")).unwrap();
    changed.config.server.broker.default_partitions = 1;
    recording.settings_toml = changed.describe();
    if let mini_pubsub::core::Command::CreateTopic { partitions, .. } = &mut recording.steps[0].command {
        *partitions = None;
    }
    let config = Replayer::settings(&recording).unwrap();
    let storage = Replayer::storage(&config, Arc::new(StdFs), recording_dir.path()).unwrap();
    let mut replayer = Replayer::new(&recording, storage, false).unwrap();
    let first = replayer.apply(&recording.steps[0]);
    assert!(!first.reply_matches, "a topic of 1 partition where 3 were recorded");
}
