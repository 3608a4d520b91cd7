//! A real server on 127.0.0.1:0 with generated tonic clients (mini-redis's `start_server`).
#![allow(dead_code, reason = "each test binary uses a different part of this module")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

use mini_pubsub::env::{Net, TokioClock, TokioNet};
use mini_pubsub::server::{self, ServerConfig, ServerError};
use mini_pubsub::storage::{MemoryStorage, Storage};
use mini_pubsub::wire::pb;
use pb::admin_client::AdminClient;
use pb::pub_sub_client::PubSubClient;

/// How long a test waits for something that should happen at once.
pub const PROMPT: Duration = Duration::from_secs(5);

pub struct TestServer {
    pub addr: SocketAddr,
    pub pubsub: PubSubClient<Channel>,
    pub admin: AdminClient<Channel>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
}

pub async fn start() -> TestServer {
    start_with(ServerConfig::default()).await
}

pub async fn start_with(config: ServerConfig) -> TestServer {
    start_on(config, Box::new(MemoryStorage)).await
}

/// A server on the given storage (a file log in a temporary directory, say).
pub async fn start_on(config: ServerConfig, storage: Box<dyn Storage>) -> TestServer {
    start_hooked(config, storage, server::Hooks::default()).await
}

/// A server on the given storage, with hooks (a flight recorder, say).
pub async fn start_hooked(config: ServerConfig, storage: Box<dyn Storage>, hooks: server::Hooks) -> TestServer {
    let (addr, incoming) = TokioNet.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let signal = async move {
        let _ = rx.await;
    };
    let clock = Arc::new(TokioClock::new());
    let task = tokio::spawn(server::run_with(incoming, signal, config, storage, clock, hooks));
    let channel = channel(addr).await;
    TestServer {
        addr,
        pubsub: PubSubClient::new(channel.clone()),
        admin: AdminClient::new(channel),
        shutdown: Some(tx),
        task: Some(task),
    }
}

/// The address in the binary's startup line (`mini-pubsub listening on ADDR (...)`).
pub fn listening_addr(startup: &str) -> SocketAddr {
    let addr = startup.split("listening on ").nth(1).and_then(|rest| rest.split_whitespace().next());
    addr.and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("no address in {startup:?}"))
}

pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
}

impl TestServer {
    /// Asks the server to stop and waits until it has.
    pub async fn stop(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        let task = self.task.take().unwrap();
        tokio::time::timeout(PROMPT, task).await.expect("server stops promptly").unwrap().unwrap();
    }

    /// Sends the stop signal without waiting for the server to finish.
    pub fn signal_stop(&mut self) {
        let _ = self.shutdown.take().unwrap().send(());
    }

    pub async fn publish(&self, topic: &str, values: &[&str]) -> Vec<pb::PublishResult> {
        let messages = values
            .iter()
            .map(|v| pb::OutgoingMessage { value: v.as_bytes().to_vec().into(), ..Default::default() })
            .collect();
        let req = pb::PublishRequest { topic: topic.into(), messages, ..Default::default() };
        self.pubsub.clone().publish(req).await.unwrap().into_inner().results
    }

    pub async fn create_topic(&self, name: &str, partitions: u32) -> pb::Topic {
        let req = pb::CreateTopicRequest { name: name.into(), partitions, ..Default::default() };
        self.admin.clone().create_topic(req).await.unwrap().into_inner()
    }

    pub async fn create_subscription(&self, name: &str, topic: &str, ack_deadline_seconds: u32) {
        let req = pb::CreateSubscriptionRequest {
            name: name.into(),
            topic: topic.into(),
            ack_deadline_seconds,
            ..Default::default()
        };
        self.admin.clone().create_subscription(req).await.unwrap();
    }

    pub async fn stats(&self, subscription: &str) -> pb::SubscriptionStats {
        let req = pb::GetSubscriptionStatsRequest { name: subscription.into() };
        self.admin.clone().get_subscription_stats(req).await.unwrap().into_inner()
    }

    /// Opens a Subscribe stream with `first` and reads its opening response.
    pub async fn subscribe(&self, first: pb::SubscribeRequest) -> Sub {
        subscribe(&self.pubsub, first).await
    }
}

/// Opens a Subscribe stream with `first` through `pubsub` and reads its opening response.
pub async fn subscribe(pubsub: &PubSubClient<Channel>, first: pb::SubscribeRequest) -> Sub {
    let (tx, rx) = mpsc::channel(16);
    tx.send(first).await.unwrap();
    let mut inbound = pubsub.clone().subscribe(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let hello = inbound.message().await.unwrap().expect("an opening response");
    Sub { requests: Some(tx), inbound, subscription: hello.subscription, stash: Vec::new() }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The status a stream ends with, reading past whatever responses come first; panics if it
/// ends OK or goes on past `wait` without a response.
pub async fn end_status<T>(inbound: &mut Streaming<T>, wait: Duration) -> tonic::Status {
    loop {
        match tokio::time::timeout(wait, inbound.message()).await.expect("the stream ends in time") {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended OK, without a status"),
            Err(status) => return status,
        }
    }
}

pub fn on_subscription(name: &str) -> pb::SubscribeRequest {
    pb::SubscribeRequest { subscription: name.into(), ..Default::default() }
}

/// One open Subscribe stream.
pub struct Sub {
    pub requests: Option<mpsc::Sender<pb::SubscribeRequest>>,
    pub inbound: Streaming<pb::SubscribeResponse>,
    pub subscription: String,
    /// Messages that arrived while `ack` waited for confirmations.
    stash: Vec<pb::ReceivedMessage>,
}

impl Sub {
    /// The next response, or `None` when nothing comes within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<pb::SubscribeResponse> {
        match tokio::time::timeout(wait, self.inbound.message()).await {
            Ok(message) => message.unwrap(),
            Err(_) => None,
        }
    }

    /// Reads responses until `n` messages arrived; panics after `PROMPT`.
    pub async fn messages(&mut self, n: usize) -> Vec<pb::ReceivedMessage> {
        let mut out: Vec<_> = self.stash.drain(..n.min(self.stash.len())).collect();
        while out.len() < n {
            let response =
                self.next_within(PROMPT).await.unwrap_or_else(|| panic!("only {} of {n} messages", out.len()));
            out.extend(response.received_messages);
        }
        assert_eq!(out.len(), n, "more messages than expected");
        out
    }

    /// Asserts that no message arrives within `wait`.
    pub async fn expect_quiet(&mut self, wait: Duration) {
        assert!(self.stash.is_empty(), "unexpected delivery: {:?}", self.stash);
        if let Some(response) = self.next_within(wait).await {
            assert!(response.received_messages.is_empty(), "unexpected delivery: {response:?}");
        }
    }

    pub async fn send(&self, request: pb::SubscribeRequest) {
        self.requests.as_ref().expect("stream not half-closed").send(request).await.unwrap();
    }

    /// Acks `ids` and returns their confirmations.
    pub async fn ack(&mut self, ids: Vec<String>) -> Vec<pb::AckConfirmation> {
        let n = ids.len();
        self.send(pb::SubscribeRequest { ack_ids: ids, ..Default::default() }).await;
        let mut confirmations = Vec::new();
        while confirmations.len() < n {
            let response = self.next_within(PROMPT).await.expect("ack confirmations");
            confirmations.extend(response.ack_confirmations);
            self.stash.extend(response.received_messages);
        }
        confirmations
    }
}

pub fn value(m: &pb::ReceivedMessage) -> String {
    String::from_utf8(m.message.as_ref().unwrap().value.to_vec()).unwrap()
}

pub fn ack_ids(messages: &[pb::ReceivedMessage]) -> Vec<String> {
    messages.iter().map(|m| m.ack_id.clone()).collect()
}

/// The real binary we started, killed when dropped, so a failing test leaves no server
/// behind (a no-op once it has exited).
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `child` every 50 ms until it exits or `within` passes.
pub async fn exit_within(child: &mut std::process::Child, within: Duration) -> Option<std::process::ExitStatus> {
    for _ in 0..=within.as_millis() / 50 {
        if let Some(exit) = child.try_wait().unwrap() {
            return Some(exit);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// A plain HTTP/1.1 GET of `path` at `addr` (the metrics endpoint); returns the status line
/// and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        conn.read_to_string(&mut response).await.unwrap();
        response
    };
    let response = tokio::time::timeout(PROMPT, exchange).await.expect("an HTTP answer");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("not HTTP: {response:?}"));
    (head.lines().next().unwrap_or_default().to_string(), body.to_string())
}

/// The value of the sample line `series value` in Prometheus text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    let prefix = format!("{series} ");
    text.lines().find_map(|line| line.strip_prefix(&prefix)).and_then(|v| v.parse().ok())
}
