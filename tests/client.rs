//! The client library against a real broker on 127.0.0.1: publisher batching, retries
//! across a broker that is down or restarts (with idempotency keys, so nothing is stored
//! twice or lost), a lost answer answered as a duplicate, subscriber acks committed, lease
//! extension for a slow handler, a subscriber that reopens its stream after a restart, one
//! whose connection is cut while a handler runs (its client id keeps the lease), and one
//! that fails while the application's acks wait for room in its queue of decisions.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::PROMPT;
use mini_pubsub::client::{
    Client, ClientError, Message, OutgoingMessage, PublishHandle, PublisherSettings, RetrySettings, SubscribeTarget,
    Subscriber, SubscriberSettings, SubscriptionSettings, TopicSettings,
};
use mini_pubsub::env::{Net, StdFs, TokioClock, TokioNet};
use mini_pubsub::server::{self, ServerConfig, ServerError};
use mini_pubsub::storage::{FileStorage, FileStorageConfig, MemoryStorage, Storage};
use mini_pubsub::wire::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;

/// How long a test waits for something that takes a retry or a reconnect.
const PATIENT: Duration = Duration::from_secs(20);

/// A broker on a fixed address, so it can be stopped and started again on the same one.
struct Broker {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl Broker {
    async fn start(addr: SocketAddr, storage: Box<dyn Storage>) -> Broker {
        let (addr, incoming) = TokioNet.bind(addr).await.expect("the address is free");
        let (stop, stopped) = oneshot::channel::<()>();
        let signal = async move {
            let _ = stopped.await;
        };
        let clock = Arc::new(TokioClock::new());
        let task = tokio::spawn(server::run(incoming, signal, ServerConfig::default(), storage, clock));
        Broker { addr, stop: Some(stop), task }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let task = &mut self.task;
        tokio::time::timeout(PROMPT, task).await.expect("the broker stops promptly").unwrap().unwrap();
    }

    /// Stops, waits `down`, and starts again on the same address and data.
    async fn restart(self, down: Duration, data: &Path) -> Broker {
        let addr = self.addr;
        self.stop().await;
        tokio::time::sleep(down).await;
        Broker::start(addr, file_storage(data)).await
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn file_storage(dir: &Path) -> Box<dyn Storage> {
    Box::new(FileStorage::open(Arc::new(StdFs), FileStorageConfig::new(dir)).unwrap())
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A free port: bound and released (the broker binds it again later).
async fn free_addr() -> SocketAddr {
    TcpListener::bind(any_port()).await.unwrap().local_addr().unwrap()
}

fn quick_retries() -> RetrySettings {
    RetrySettings {
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(400),
        max_attempts: 200,
        total_timeout: Duration::from_secs(30),
    }
}

async fn answers(handles: Vec<PublishHandle>) -> Vec<mini_pubsub::client::PublishResult> {
    let mut results = Vec::new();
    for handle in handles {
        results.push(tokio::time::timeout(PATIENT, handle).await.expect("answered in time").expect("published"));
    }
    results
}

/// Every message of `topic`, read through a new subscription from the earliest.
async fn read_all(client: &Client, topic: &str, expected: usize) -> Vec<String> {
    let subscription = format!("{topic}-read-back");
    client.create_subscription(&subscription, topic, &SubscriptionSettings::default()).await.unwrap();
    let mut pubsub = client.pubsub_client();
    let mut values = Vec::new();
    // Bounded: each round reads up to 1000; far more rounds than `expected` needs.
    for _ in 0..expected + 2 {
        let request = pb::PullRequest { subscription: subscription.clone(), max_messages: 1000 };
        let pulled = pubsub.pull(request).await.unwrap().into_inner().received_messages;
        if pulled.is_empty() {
            break;
        }
        values.extend(pulled.into_iter().map(|m| String::from_utf8(m.message.unwrap().value.to_vec()).unwrap()));
    }
    values
}

#[tokio::test]
async fn a_publisher_sends_queued_messages_in_full_batches() {
    let broker = Broker::start(any_port(), Box::new(MemoryStorage)).await;
    let client = Client::connect(broker.url()).await.unwrap();
    // A long linger: only a full batch is sent, so 100 messages make exactly 10 requests.
    let settings = PublisherSettings { batch_messages_max: 10, linger: Duration::from_secs(30), ..Default::default() };
    let publisher = client.publisher("batched", settings).unwrap();
    let mut handles = Vec::new();
    for n in 0..100 {
        handles.push(publisher.publish(format!("m{n}")).await.unwrap());
    }
    let results = answers(handles).await;
    let offsets: Vec<u64> = results.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (0..100).collect::<Vec<_>>(), "one partition, stored in publish order");
    assert!(results.iter().all(|r| !r.duplicate));
    let stats = publisher.stats();
    assert_eq!((stats.batches, stats.requests, stats.published), (10, 10, 100), "{stats:?}");
    publisher.shutdown().await.unwrap();
    let topic = client.get_topic("batched").await.unwrap();
    assert_eq!(topic.partition_info[0].end_offset, 100);
}

#[tokio::test]
async fn a_batch_is_bounded_by_bytes_and_flush_sends_a_partial_one() {
    let broker = Broker::start(any_port(), Box::new(MemoryStorage)).await;
    let client = Client::connect(broker.url()).await.unwrap();
    let value = vec![b'x'; 100];
    let one = OutgoingMessage::new(value.clone()).idempotency_key("bytes-0").encoded_len();
    let settings = PublisherSettings {
        publisher_id: Some("bytes".into()),
        batch_bytes_max: 3 * one,
        linger: Duration::from_secs(30),
        ..Default::default()
    };
    let publisher = client.publisher("bytes", settings).unwrap();
    let mut handles = Vec::new();
    for _ in 0..7 {
        handles.push(publisher.publish(value.clone()).await.unwrap());
    }
    // Two full batches went by bytes; the seventh message waits for its linger until flushed.
    tokio::time::timeout(PROMPT, publisher.flush()).await.expect("flush returns once all is answered").unwrap();
    assert_eq!(publisher.stats().batches, 3, "batches of 3, 3 and 1 messages");
    let results = answers(handles).await;
    assert_eq!(results.iter().map(|r| r.offset).collect::<Vec<_>>(), (0..7).collect::<Vec<_>>());
    publisher.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_publisher_retries_while_the_broker_is_down_or_restarting_and_stores_each_message_once() {
    let data = tempfile::tempdir().unwrap();
    let addr = free_addr().await;
    let client = Client::connect_lazy(format!("http://{addr}")).unwrap();
    let settings = PublisherSettings { batch_messages_max: 5, retry: quick_retries(), ..Default::default() };
    let publisher = Arc::new(client.publisher("durable", settings).unwrap());

    // Nothing listens yet: the first batch is refused (UNAVAILABLE) and retried.
    let mut handles = Vec::new();
    for n in 0..50 {
        handles.push(publisher.publish(format!("m{n}")).await.unwrap());
    }
    let refused = async {
        while publisher.stats().retries == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(PATIENT, refused).await.expect("a retry while the broker is down");
    let broker = Broker::start(addr, file_storage(data.path())).await;
    let mut results = answers(handles).await;

    // Now a restart while publishing goes on.
    let background = publisher.clone();
    let more = tokio::spawn(async move {
        let mut handles = Vec::new();
        for n in 50..150 {
            handles.push(background.publish(format!("m{n}")).await.unwrap());
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        answers(handles).await
    });
    tokio::time::sleep(Duration::from_millis(60)).await;
    let broker = broker.restart(Duration::from_millis(200), data.path()).await;
    results.extend(tokio::time::timeout(PATIENT, more).await.expect("publishing finishes").unwrap());

    let places: BTreeSet<(u32, u64)> = results.iter().map(|r| (r.partition, r.offset)).collect();
    assert_eq!(places.len(), 150, "every message has its own place");
    let values = read_all(&client, "durable", 150).await;
    let distinct: BTreeSet<&String> = values.iter().collect();
    assert_eq!(values.len(), 150, "nothing stored twice: {} values, {} distinct", values.len(), distinct.len());
    assert_eq!(distinct, (0..150).map(|n| format!("m{n}")).collect::<BTreeSet<_>>().iter().collect());
    assert!(publisher.stats().retries > 0);
    drop(broker);
}

/// A TCP proxy that can swallow the broker's answers and cut its connections: a way to
/// lose the answer of a publish the broker stored.
struct Proxy {
    addr: SocketAddr,
    swallow: Arc<AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind(any_port()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let swallow = Arc::new(AtomicBool::new(false));
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        let swallowing = swallow.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect(upstream).await.unwrap();
                let mut cuts = cuts.clone();
                // Only cuts after this connection opened end it.
                cuts.borrow_and_update();
                let swallowing = swallowing.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = pipe(client, server, swallowing) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Proxy { addr, swallow, cut, task }
    }

    /// Drops every open connection (both ends see them close).
    fn cut_all(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies bytes both ways; while `swallow` is set, the server's bytes are dropped.
async fn pipe(client: TcpStream, server: TcpStream, swallow: Arc<AtomicBool>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = async {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n @ 1..) = client_read.read(&mut buf).await {
            if server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    let downstream = async {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n @ 1..) = server_read.read(&mut buf).await {
            if !swallow.load(Ordering::SeqCst) && client_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
    }
}

#[tokio::test]
async fn a_publish_whose_answer_was_lost_is_retried_and_answered_as_a_duplicate() {
    let broker = Broker::start(any_port(), Box::new(MemoryStorage)).await;
    let direct = Client::connect(broker.url()).await.unwrap();
    let proxy = Proxy::start(broker.addr).await;
    let client = Client::connect_lazy(format!("http://{}", proxy.addr)).unwrap();
    let settings = PublisherSettings {
        linger: Duration::ZERO,
        request_timeout: Duration::from_millis(500),
        retry: quick_retries(),
        ..Default::default()
    };
    let publisher = client.publisher("lossy", settings).unwrap();
    let first = publisher.publish("first").await.unwrap().await.unwrap();
    assert_eq!((first.offset, first.duplicate), (0, false));

    proxy.swallow.store(true, Ordering::SeqCst);
    let handle = publisher.publish("second").await.unwrap();
    let stored = async {
        while direct.get_topic("lossy").await.unwrap().partition_info[0].end_offset < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(PROMPT, stored).await.expect("the broker stores the second message");
    // The answer is lost with the connection; the publisher sends the batch again.
    proxy.cut_all();
    proxy.swallow.store(false, Ordering::SeqCst);
    let second = tokio::time::timeout(PATIENT, handle).await.expect("answered after a retry").unwrap();
    assert_eq!((second.offset, second.duplicate), (1, true), "{second:?}");
    assert!(publisher.stats().retries >= 1);
    assert_eq!(direct.get_topic("lossy").await.unwrap().partition_info[0].end_offset, 2, "stored once");
    publisher.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_publisher_replaying_the_same_id_is_answered_with_the_first_places() {
    let broker = Broker::start(any_port(), Box::new(MemoryStorage)).await;
    let client = Client::connect(broker.url()).await.unwrap();
    let settings = PublisherSettings { publisher_id: Some("job-42".into()), ..Default::default() };
    let mut runs = Vec::new();
    for _ in 0..2 {
        let publisher = client.publisher("replayed", settings.clone()).unwrap();
        let mut handles = Vec::new();
        for n in 0..5 {
            handles.push(publisher.publish(format!("line {n}")).await.unwrap());
        }
        runs.push(answers(handles).await);
        publisher.shutdown().await.unwrap();
    }
    let places = |run: &Vec<mini_pubsub::client::PublishResult>| run.iter().map(|r| r.offset).collect::<Vec<_>>();
    assert_eq!(places(&runs[0]), places(&runs[1]));
    assert!(runs[1].iter().all(|r| r.duplicate), "{:?}", runs[1]);
    assert_eq!(client.get_topic("replayed").await.unwrap().partition_info[0].end_offset, 5);
}

async fn next_message(subscriber: &mut Subscriber, wait: Duration) -> mini_pubsub::client::ReceivedMessage {
    tokio::time::timeout(wait, subscriber.next())
        .await
        .expect("a message in time")
        .expect("the stream goes on")
        .unwrap()
}

#[tokio::test]
async fn streamed_messages_carry_their_data_and_their_acks_are_committed() {
    let broker = Broker::start(any_port(), Box::new(MemoryStorage)).await;
    let client = Client::connect(broker.url()).await.unwrap();
    let topic = TopicSettings { partitions: Some(2), ..Default::default() };
    client.create_topic("orders", &topic).await.unwrap();
    client.create_subscription("audit", "orders", &SubscriptionSettings::default()).await.unwrap();
    let publisher = client.publisher("orders", PublisherSettings::default()).unwrap();
    let mut handles =
        vec![publisher.publish(OutgoingMessage::new("keyed").key("k").attribute("origin", "test")).await.unwrap()];
    for n in 0..19 {
        handles.push(publisher.publish(format!("m{n}")).await.unwrap());
    }
    let keyed = answers(handles).await[0].clone();

    let settings = SubscriberSettings { ack_batch_max: 7, ..Default::default() };
    let mut subscriber = client.subscribe(SubscribeTarget::subscription("audit"), settings).await.unwrap();
    assert_eq!(subscriber.subscription(), "audit");
    let mut seen = BTreeSet::new();
    for _ in 0..20 {
        let message = next_message(&mut subscriber, PROMPT).await;
        assert_eq!((message.topic.as_str(), message.delivery_attempt), ("orders", 1));
        assert!(message.publish_time.is_some() && !message.message_id.is_empty());
        if message.value == "keyed" {
            assert_eq!((message.partition, message.offset), (keyed.partition, keyed.offset));
            assert_eq!(message.key.as_deref(), Some("k"));
            assert_eq!(message.attributes.get("origin").map(String::as_str), Some("test"));
            assert!(message.idempotency_key.is_some(), "the publisher set one");
        }
        assert!(seen.insert((message.partition, message.offset)), "delivered twice: {message:?}");
        message.ack().await;
    }
    let acked = subscriber.stats();
    subscriber.shutdown().await.unwrap();
    assert_eq!(acked.received, 20);
    let stats = client.subscription_stats("audit").await.unwrap();
    assert_eq!(stats.backlog, 0, "{stats:?}");
    for partition in &stats.partitions {
        assert_eq!(partition.committed_offset, partition.end_offset, "{stats:?}");
    }
}

#[tokio::test]
async fn a_nacked_message_comes_back_with_the_next_attempt() {
    let broker = Broker::start(any_port(), Box::new(MemoryStorage)).await;
    let client = Client::connect(broker.url()).await.unwrap();
    client.publisher("retry", PublisherSettings::default()).unwrap().publish("again").await.unwrap().await.unwrap();
    let target = SubscribeTarget::topic("retry");
    let mut subscriber = client.subscribe(target, SubscriberSettings::default()).await.unwrap();
    assert!(subscriber.subscription().starts_with("__ephemeral."), "{}", subscriber.subscription());
    let first = next_message(&mut subscriber, PROMPT).await;
    assert_eq!(first.delivery_attempt, 1);
    first.nack().await;
    let second = next_message(&mut subscriber, PROMPT).await;
    assert_eq!((second.value_lossy().as_ref(), second.delivery_attempt), ("again", 2));
    second.ack().await;
    subscriber.shutdown().await.unwrap();
}

#[tokio::test]
async fn subscribing_to_a_missing_subscription_fails_with_not_found() {
    let broker = Broker::start(any_port(), Box::new(MemoryStorage)).await;
    let client = Client::connect(broker.url()).await.unwrap();
    let error = client
        .subscribe(SubscribeTarget::subscription("nope"), SubscriberSettings::default())
        .await
        .err()
        .expect("refused");
    assert_eq!(error.code(), Some(tonic::Code::NotFound), "{error}");
    assert_eq!(error.to_string(), "NOT_FOUND: subscription `nope` not found");
}

#[tokio::test]
async fn a_handler_slower_than_the_ack_deadline_keeps_its_lease() {
    let broker = Broker::start(any_port(), Box::new(MemoryStorage)).await;
    let client = Client::connect(broker.url()).await.unwrap();
    client.create_topic("slow", &TopicSettings::default()).await.unwrap();
    let settings = SubscriptionSettings { ack_deadline_seconds: Some(2), ..Default::default() };
    client.create_subscription("slow-sub", "slow", &settings).await.unwrap();

    let worker =
        client.subscribe(SubscribeTarget::subscription("slow-sub"), SubscriberSettings::default()).await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let (started_tx, started) = tokio::sync::mpsc::channel::<Message>(4);
    let (done_tx, done) = oneshot::channel::<()>();
    let done_tx = Arc::new(std::sync::Mutex::new(Some(done_tx)));
    let handler = {
        let calls = calls.clone();
        move |message: Message| {
            calls.fetch_add(1, Ordering::SeqCst);
            let started_tx = started_tx.clone();
            let done_tx = done_tx.clone();
            async move {
                let _ = started_tx.send(message).await;
                // Two and a half ack deadlines.
                tokio::time::sleep(Duration::from_secs(5)).await;
                if let Some(done) = done_tx.lock().unwrap().take() {
                    let _ = done.send(());
                }
                Ok::<(), String>(())
            }
        }
    };
    let run = tokio::spawn(worker.run(handler, async {
        let _ = done.await;
    }));
    client.publisher("slow", PublisherSettings::default()).unwrap().publish("slow work").await.unwrap().await.unwrap();
    let mut started = started;
    let message = tokio::time::timeout(PROMPT, started.recv()).await.expect("the handler starts").unwrap();
    assert_eq!(message.delivery_attempt, 1);

    // A second member joins while the handler works: it must get nothing.
    let mut other =
        client.subscribe(SubscribeTarget::subscription("slow-sub"), SubscriberSettings::default()).await.unwrap();
    let quiet = tokio::time::timeout(Duration::from_secs(6), other.next()).await;
    assert!(quiet.is_err(), "redelivered to the other member: {:?}", quiet.map(|m| m.map(|m| m.map(|m| m.offset))));
    tokio::time::timeout(PROMPT, run).await.expect("run returns after its shutdown signal").unwrap().unwrap();
    other.shutdown().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the handler ran once");
    let stats = client.subscription_stats("slow-sub").await.unwrap();
    assert_eq!((stats.backlog, stats.partitions[0].committed_offset), (0, 1), "{stats:?}");
}

#[tokio::test]
async fn a_subscriber_reopens_its_stream_after_a_broker_restart_and_gets_the_rest() {
    let data = tempfile::tempdir().unwrap();
    let broker = Broker::start(any_port(), file_storage(data.path())).await;
    let addr = broker.addr;
    let client = Client::connect_lazy(broker.url()).unwrap();
    client.create_topic("events", &TopicSettings::default()).await.unwrap();
    client.create_subscription("events-sub", "events", &SubscriptionSettings::default()).await.unwrap();
    let publisher = client.publisher("events", PublisherSettings { retry: quick_retries(), ..Default::default() });
    let publisher = publisher.unwrap();
    for n in 0..5 {
        publisher.publish(format!("m{n}")).await.unwrap().await.unwrap();
    }
    let settings = SubscriberSettings { reconnect: quick_retries(), ..Default::default() };
    let mut subscriber = client.subscribe(SubscribeTarget::subscription("events-sub"), settings).await.unwrap();
    let mut values = BTreeSet::new();
    for _ in 0..5 {
        let message = next_message(&mut subscriber, PROMPT).await;
        values.insert(message.value_lossy().into_owned());
        message.ack().await;
    }
    let committed = async {
        while client.subscription_stats("events-sub").await.unwrap().partitions[0].committed_offset < 5 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(PROMPT, committed).await.expect("the acks are applied");

    broker.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let broker = Broker::start(addr, file_storage(data.path())).await;
    for n in 5..10 {
        publisher.publish(format!("m{n}")).await.unwrap().await.unwrap();
    }
    while values.len() < 10 {
        let message = next_message(&mut subscriber, PATIENT).await;
        values.insert(message.value_lossy().into_owned());
        message.ack().await;
    }
    assert_eq!(values, (0..10).map(|n| format!("m{n}")).collect());
    let stats = subscriber.stats();
    assert!(stats.reconnects >= 1, "{stats:?}");
    subscriber.shutdown().await.unwrap();
    let stats = client.subscription_stats("events-sub").await.unwrap();
    assert_eq!((stats.backlog, stats.partitions[0].committed_offset), (0, 10), "{stats:?}");
    drop(broker);
}

/// The member ListPending names for the subscription's one pending message, if leased.
async fn leased_to(client: &Client, subscription: &str) -> Option<String> {
    let list = pb::ListPendingRequest { subscription: subscription.into(), ..Default::default() };
    let rows = client.admin_client().list_pending(list).await.unwrap().into_inner().messages;
    rows.into_iter().find(|r| r.state() == pb::PendingState::Leased).map(|r| r.member)
}

#[tokio::test]
async fn a_handler_running_across_a_cut_connection_acks_its_message_on_the_new_stream() {
    let broker = Broker::start(any_port(), Box::new(MemoryStorage)).await;
    let direct = Client::connect(broker.url()).await.unwrap();
    direct.create_topic("cut", &TopicSettings::default()).await.unwrap();
    let settings = SubscriptionSettings { ack_deadline_seconds: Some(10), ..Default::default() };
    direct.create_subscription("cut-sub", "cut", &settings).await.unwrap();
    let proxy = Proxy::start(broker.addr).await;
    let client = Client::connect_lazy(format!("http://{}", proxy.addr)).unwrap();
    let settings = SubscriberSettings { reconnect: quick_retries(), ..Default::default() };
    let subscriber = client.subscribe(SubscribeTarget::subscription("cut-sub"), settings).await.unwrap();

    // The handler reports each call's attempt, then works until told to finish.
    let attempts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (started_tx, mut started) = tokio::sync::mpsc::channel::<u32>(4);
    let (finish, finishing) = tokio::sync::watch::channel(false);
    let handler = {
        let attempts = attempts.clone();
        move |message: Message| {
            attempts.lock().unwrap().push(message.delivery_attempt);
            let started_tx = started_tx.clone();
            let mut finishing = finishing.clone();
            async move {
                let _ = started_tx.send(message.delivery_attempt).await;
                let _ = finishing.wait_for(|done| *done).await;
                Ok::<(), String>(())
            }
        }
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(subscriber.run(handler, async {
        let _ = stopped.await;
    }));
    direct.publisher("cut", PublisherSettings::default()).unwrap().publish("work").await.unwrap().await.unwrap();
    let attempt = tokio::time::timeout(PROMPT, started.recv()).await.expect("the handler starts").unwrap();
    assert_eq!(attempt, 1);
    assert_eq!(leased_to(&direct, "cut-sub").await.as_deref(), Some("stream-1"));

    // The connection breaks while the handler works; the broker keeps running.
    proxy.cut_all();
    let reconnected = async {
        while leased_to(&direct, "cut-sub").await.as_deref() != Some("stream-2") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(PATIENT, reconnected).await.expect("the new stream takes the lease over");
    let _ = finish.send(true);
    let committed = async {
        while direct.subscription_stats("cut-sub").await.unwrap().partitions[0].committed_offset < 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(PATIENT, committed).await.expect("the handler's ack, sent on the new stream, is applied");
    // Longer than the reconnect backoff and the ack flush: a redelivery would show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop.send(());
    tokio::time::timeout(PATIENT, run).await.expect("run returns after its shutdown signal").unwrap().unwrap();
    assert_eq!(*attempts.lock().unwrap(), [1], "delivered once, never again");
    let stats = direct.subscription_stats("cut-sub").await.unwrap();
    assert_eq!((stats.backlog, stats.outstanding, stats.partitions[0].committed_offset), (0, 0, 1), "{stats:?}");
}

#[tokio::test]
async fn admin_helpers_create_list_get_and_delete() {
    let broker = Broker::start(any_port(), Box::new(MemoryStorage)).await;
    let client = Client::connect(broker.url()).await.unwrap();
    let settings = TopicSettings { partitions: Some(3), dedupe_window: Some(Duration::from_secs(300)) };
    let topic = client.create_topic("admin-t", &settings).await.unwrap();
    assert_eq!((topic.partitions, topic.dedupe_window.map(|d| d.seconds)), (3, Some(300)));
    let error = client.create_topic("admin-t", &settings).await.unwrap_err();
    assert_eq!(error.code(), Some(tonic::Code::AlreadyExists));
    client.create_subscription("admin-s", "admin-t", &SubscriptionSettings::default()).await.unwrap();
    let names: Vec<String> = client.list_topics().await.unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["admin-t"]);
    let subscriptions = client.list_subscriptions(Some("admin-t")).await.unwrap();
    assert_eq!(subscriptions.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["admin-s"]);
    assert_eq!(client.get_subscription("admin-s").await.unwrap().ack_deadline_seconds, 30);
    assert_eq!(client.delete_topic("admin-t", true).await.unwrap(), ["admin-s"]);
    let missing = client.get_topic("admin-t").await.unwrap_err();
    assert!(matches!(missing, ClientError::Status(ref s) if s.code() == tonic::Code::NotFound), "{missing}");
}

#[tokio::test]
async fn an_exclusive_member_with_a_short_session_timeout_heartbeats_in_time() {
    let broker = Broker::start(any_port(), Box::new(MemoryStorage)).await;
    let client = Client::connect(broker.url()).await.unwrap();
    client.create_topic("jobs", &TopicSettings::default()).await.unwrap();
    let settings = SubscriptionSettings { delivery_mode: pb::DeliveryMode::Exclusive, ..Default::default() };
    client.create_subscription("group", "jobs", &settings).await.unwrap();
    // A 1 s session needs a heartbeat every third of it, far more often than the lease
    // checks of a 30 s ack deadline (once a second) would send one.
    let settings = SubscriberSettings { session_timeout: Some(Duration::from_secs(1)), ..Default::default() };
    let mut subscriber = client.subscribe(SubscribeTarget::subscription("group"), settings).await.unwrap();
    let publisher = client.publisher("jobs", PublisherSettings::default()).unwrap();
    publisher.publish("held").await.unwrap().await.unwrap();
    let message = next_message(&mut subscriber, PROMPT).await;
    // Held, idle, for three session timeouts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(subscriber.stats().reconnects, 0, "the broker ended the member's session");
    assert_eq!(message.delivery_attempt, 1);
    message.ack().await;
    subscriber.shutdown().await.unwrap();
    let stats = client.subscription_stats("group").await.unwrap();
    assert_eq!((stats.backlog, stats.partitions[0].committed_offset), (0, 1), "{stats:?}");
}

#[tokio::test]
async fn messages_queued_behind_a_failing_batch_share_its_retry_budget() {
    // Nothing listens there: every attempt fails with UNAVAILABLE.
    let client = Client::connect_lazy(format!("http://{}", free_addr().await)).unwrap();
    let retry = RetrySettings { total_timeout: Duration::from_secs(1), ..quick_retries() };
    let settings = PublisherSettings { batch_messages_max: 1, retry, ..Default::default() };
    let publisher = client.publisher("nowhere", settings).unwrap();
    let mut handles = Vec::new();
    for n in 0..6 {
        handles.push(publisher.publish(format!("m{n}")).await.unwrap());
    }
    // Each of the 6 one-message batches used to get a budget of its own (6 s in all); all
    // were queued at once, so all give up when the first does.
    let stopped = tokio::time::timeout(Duration::from_secs(4), publisher.shutdown()).await;
    stopped.expect("shutdown within the shared budget").unwrap();
    for handle in handles {
        let error = handle.await.unwrap_err();
        assert!(matches!(error, ClientError::GaveUp { .. }), "{error}");
    }
}

#[tokio::test]
async fn acks_made_while_the_stream_is_down_are_sent_at_shutdown() {
    let broker = Broker::start(any_port(), Box::new(MemoryStorage)).await;
    let direct = Client::connect(broker.url()).await.unwrap();
    direct.create_topic("gap", &TopicSettings::default()).await.unwrap();
    direct.create_subscription("gap-sub", "gap", &SubscriptionSettings::default()).await.unwrap();
    let proxy = Proxy::start(broker.addr).await;
    let client = Client::connect_lazy(format!("http://{}", proxy.addr)).unwrap();
    // A long reconnect backoff: after the cut the subscriber waits with no stream open.
    let long = Duration::from_secs(30);
    let reconnect = RetrySettings { initial_backoff: long, max_backoff: long, ..quick_retries() };
    let settings = SubscriberSettings { reconnect, ..Default::default() };
    let mut subscriber = client.subscribe(SubscribeTarget::subscription("gap-sub"), settings).await.unwrap();
    direct.publisher("gap", PublisherSettings::default()).unwrap().publish("work").await.unwrap().await.unwrap();
    let message = next_message(&mut subscriber, PROMPT).await;

    proxy.cut_all();
    let detached = async {
        while !leased_to(&direct, "gap-sub").await.is_some_and(|member| member.starts_with("detached:")) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(PATIENT, detached).await.expect("the broker sees the stream end");
    message.ack().await;
    tokio::time::timeout(PATIENT, subscriber.shutdown()).await.expect("a prompt shutdown").unwrap();
    let stats = direct.subscription_stats("gap-sub").await.unwrap();
    assert_eq!(stats.partitions[0].committed_offset, 1, "the ack went as a unary Ack: {stats:?}");
}

#[tokio::test]
async fn one_refused_message_fails_alone_and_the_rest_of_its_batch_is_stored() {
    let broker = Broker::start(any_port(), Box::new(MemoryStorage)).await;
    let client = Client::connect(broker.url()).await.unwrap();
    client.create_topic("mixed", &TopicSettings::default()).await.unwrap();
    // A long linger: the three messages go in one request.
    let settings = PublisherSettings { linger: Duration::from_secs(1), ..Default::default() };
    let publisher = client.publisher("mixed", settings).unwrap();
    let good = publisher.publish("good 1").await.unwrap();
    let bad = publisher.publish(OutgoingMessage::new("bad").idempotency_key("k".repeat(300))).await.unwrap();
    let also_good = publisher.publish("good 2").await.unwrap();
    publisher.flush().await.unwrap();
    let error = bad.await.unwrap_err().to_string();
    assert!(error.starts_with("INVALID_ARGUMENT: idempotency_key: is 300 bytes"), "{error}");
    let offsets = [good.await.unwrap().offset, also_good.await.unwrap().offset];
    assert_eq!(offsets, [0, 1]);
    assert_eq!(publisher.stats().requests, 2, "the batch, then the batch without the refused message");
}

#[tokio::test]
async fn acks_made_while_the_subscriber_fails_do_not_wait_for_ever() {
    let broker = Broker::start(any_port(), Box::new(MemoryStorage)).await;
    let direct = Client::connect(broker.url()).await.unwrap();
    direct.create_topic("held", &TopicSettings::default()).await.unwrap();
    direct.publisher("held", PublisherSettings::default()).unwrap().publish("again").await.unwrap().await.unwrap();
    let proxy = Proxy::start(broker.addr).await;
    let client = Client::connect_lazy(format!("http://{}", proxy.addr)).unwrap();
    // One message at a time: the queue of decisions holds 2 x 1 + 16 of them.
    let settings = SubscriberSettings { max_outstanding_messages: 1, reconnect: quick_retries(), ..Default::default() };
    let mut subscriber = client.subscribe(SubscribeTarget::topic("held"), settings).await.unwrap();
    // Each cut ends the ephemeral subscription; the next one delivers the message again,
    // so the application comes to hold more handles than the queue of decisions has room.
    let mut held = Vec::new();
    for _ in 0..19 {
        held.push(next_message(&mut subscriber, PATIENT).await);
        proxy.cut_all();
    }
    // The 20th stream fills the one-message queue to the application; then the topic goes,
    // so the session fails and waits to hand the application its error.
    let filled = async {
        while subscriber.stats().received < 20 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(PATIENT, filled).await.expect("the 20th stream delivers");
    tokio::time::sleep(Duration::from_millis(200)).await;
    direct.delete_topic("held", true).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let decided = async {
        for message in held {
            message.ack().await;
        }
    };
    tokio::time::timeout(PROMPT, decided).await.expect("acks return while the session fails");
    let mut ended = None;
    while let Some(next) = tokio::time::timeout(PROMPT, subscriber.next()).await.expect("the stream ends") {
        if let Err(error) = next {
            ended = Some(error);
        }
    }
    let error = ended.expect("the stream yields its error");
    assert_eq!(error.code(), Some(tonic::Code::NotFound), "{error}");
}

#[tokio::test]
async fn a_publisher_with_batches_in_flight_keeps_each_keys_order_across_a_broker_restart() {
    let data = tempfile::tempdir().unwrap();
    let addr = free_addr().await;
    let broker = Broker::start(addr, file_storage(data.path())).await;
    let client = Client::connect_lazy(format!("http://{addr}")).unwrap();
    let settings =
        PublisherSettings { batch_messages_max: 3, batches_in_flight: 8, retry: quick_retries(), ..Default::default() };
    let publisher = Arc::new(client.publisher("keyed", settings).unwrap());
    let background = publisher.clone();
    let publishing = tokio::spawn(async move {
        let mut handles = Vec::new();
        // At least 300 ms of publishing (a pause every 10 messages), so the restart comes
        // while batches are in flight.
        for n in 0..3000 {
            let message = OutgoingMessage::new(format!("m{n}")).key(format!("k{}", n % 3));
            handles.push(background.publish(message).await.unwrap());
            if n % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        answers(handles).await
    });
    tokio::time::sleep(Duration::from_millis(40)).await;
    let broker = broker.restart(Duration::from_millis(100), data.path()).await;
    let results = tokio::time::timeout(PATIENT, publishing).await.expect("publishing finishes").unwrap();

    // Each key's messages were handed over in the order of n: their places rise with it.
    for key in 0..3 {
        let places: Vec<(u32, u64)> = results.iter().skip(key).step_by(3).map(|r| (r.partition, r.offset)).collect();
        assert!(places.windows(2).all(|w| w[0].0 == w[1].0 && w[0].1 < w[1].1), "key k{key}: {places:?}");
    }
    let values = read_all(&client, "keyed", 3000).await;
    let distinct: BTreeSet<&String> = values.iter().collect();
    assert_eq!((values.len(), distinct.len()), (3000, 3000), "each message stored once");
    let stats = publisher.stats();
    assert!(stats.requests > stats.batches, "the restart made it send batches again: {stats:?}");
    drop(broker);
}

#[test]
fn batches_in_flight_must_be_within_the_brokers_window() {
    for bad in [0, 17] {
        let settings = PublisherSettings { batches_in_flight: bad, ..Default::default() };
        let error = settings.validate().unwrap_err().to_string();
        assert_eq!(error, format!("batches_in_flight: is {bad}; allowed is 1 to 16 (the broker's window per stream)"));
    }
}
