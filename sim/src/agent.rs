//! A client app host: it takes commands from the scenario driver and runs them against the
//! broker with the generated tonic client, recording what it sees in the history.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mini_pubsub::client::{
    AckResponse, Client, ClientError, NackOptions, OutgoingMessage, PublisherSettings, ReceivedMessage,
    SubscribeTarget, SubscriberSettings,
};
use mini_pubsub::core::{ATTR_MESSAGE_ID, ATTR_REASON, ATTR_SOURCE_SUBSCRIPTION};
use mini_pubsub::wire::pb;
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::history::{DeadLetter, Event, History};
use crate::world;

mod admin;
mod command;

use command::nack_request;
pub use command::Command;

use crate::scenario::{AckMode, Admin, Nack, Publish, Via};

/// The broker's port inside the simulation.
pub const PORT: u16 = 50051;
/// Attempts of one publish before the publisher gives up on it.
const PUBLISH_ATTEMPTS_MAX: u32 = 20;
/// Admin steps waiting for the admin host's admin task.
const COMMAND_QUEUE_MAX: usize = 256;
/// Wait between publish attempts and between stream reconnects.
const RETRY_DELAY: Duration = Duration::from_millis(500);
/// How long one request may take before the client gives up on it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The broker's default session timeout, for members that ask for none.
const SESSION_DEFAULT: Duration = Duration::from_secs(10);

/// Sends an empty request (a heartbeat) three times per session timeout, so the member
/// keeps its partitions while the network lets it.
async fn heartbeat(tx: mpsc::Sender<pb::SubscribeRequest>, session: Duration) {
    loop {
        tokio::time::sleep(session / 3).await;
        if tx.is_closed() {
            return;
        }
        // A full queue already carries requests, which count as heartbeats too.
        let _ = tx.try_send(pb::SubscribeRequest::default());
    }
}

/// A task that ends when its owner is dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A message a manual subscriber holds: its ack id, the stream it came on, its
/// subscription and what the client knows of it.
type HeldMessage = (String, mpsc::Sender<pb::SubscribeRequest>, String, Leased);

/// Messages a manual subscriber holds, oldest first.
type Held = Arc<std::sync::Mutex<std::collections::VecDeque<HeldMessage>>>;

/// Records that the client sent an ack or a nack of `leased` (its answer may never come).
fn record_sent(history: &History, host: &str, sub: &str, leased: &Leased, op: &str) {
    let Leased { id, message_id, partition, offset, attempt } = leased.clone();
    let (sub, op) = (sub.to_string(), op.to_string());
    let event = Event::AckSent { id, message_id, sub, op, partition, offset, attempt };
    history.record(host, event);
}

/// State that outlives a crash of the host: message and stream numbering, and how many
/// admin steps it has finished (the driver waits for them).
#[derive(Debug, Default)]
pub struct Counters {
    pub messages: AtomicU64,
    pub streams: Arc<AtomicU64>,
    pub admin_done: AtomicU64,
}

/// Runs an app host: takes commands until the simulation ends.
pub async fn run(
    name: String,
    brokers: Vec<String>,
    commands: Arc<Mutex<mpsc::Receiver<Command>>>,
    counters: Arc<Counters>,
    history: History,
    traffic: world::Traffic,
) -> turmoil::Result {
    // Every broker, each named as a leader hint names it; requests go to the first until a
    // refusal points elsewhere (see `Client::observe`).
    let channels = brokers
        .iter()
        .map(|broker| {
            let channel = world::lazy_channel(&name, broker, PORT, REQUEST_TIMEOUT, traffic.clone());
            (format!("{broker}:{PORT}"), channel)
        })
        .collect();
    let client = Client::from_channels(channels);
    let mut streams: Vec<JoinHandle<()>> = Vec::new();
    let held = Held::default();
    // Admin steps run one after another, in scenario order (a subscription is created only
    // once its topic exists), on a task of their own: one still retrying holds back the
    // admin steps after it, never the drain.
    let (admin_tx, mut admin_rx) = mpsc::channel::<(Admin, Duration)>(COMMAND_QUEUE_MAX);
    let admin_app = App { name: name.clone(), client: client.clone(), history: history.clone(), held: held.clone() };
    let admin_counters = counters.clone();
    tokio::spawn(async move {
        while let Some((admin, ack_deadline)) = admin_rx.recv().await {
            admin_app.admin(admin, ack_deadline).await;
            admin_counters.admin_done.fetch_add(1, Ordering::Relaxed);
        }
    });
    loop {
        let Some(command) = commands.lock().await.recv().await else { return Ok(()) };
        let app = App { name: name.clone(), client: client.clone(), history: history.clone(), held: held.clone() };
        match command {
            Command::Ack { .. } | Command::Nack(_) | Command::Modack { .. } => {
                answer_held(&held, &history, &name, &command);
            }
            Command::Publish(spec) => {
                let counters = counters.clone();
                tokio::spawn(async move { app.publish(spec, &counters).await });
            }
            Command::Subscribe(step) => {
                let numbers = counters.streams.clone();
                let sub = step.sub.clone();
                let mode = Mode {
                    ack: step.ack,
                    ack_delay: step.ack_delay,
                    max_outstanding: step.max,
                    nack: step.nack,
                    session: step.session,
                };
                if step.via == Via::Library {
                    streams.push(tokio::spawn(async move { app.subscribe_with_library(sub, mode, numbers).await }));
                } else {
                    streams.push(tokio::spawn(async move { app.subscribe(sub, mode, numbers).await }));
                }
            }
            Command::Drain => {
                tokio::spawn(async move { app.drain().await });
            }
            Command::Disconnect => {
                for stream in streams.drain(..) {
                    stream.abort();
                }
            }
            Command::Admin(admin, ack_deadline) => {
                if admin_tx.try_send((admin, ack_deadline)).is_err() {
                    history.record(&name, Event::Step { text: "admin step dropped: queue full".into() });
                }
            }
        }
    }
}

/// Answers the leases an app holds: acks one or all, nacks all, or extends all.
fn answer_held(held: &Held, history: &History, name: &str, command: &Command) {
    match command {
        Command::Ack { all } => {
            let taken: Vec<_> = {
                let mut held = held.lock().expect("held lock");
                if *all {
                    held.drain(..).collect()
                } else {
                    held.pop_front().into_iter().collect()
                }
            };
            for (ack_id, tx, sub, leased) in taken {
                record_sent(history, name, &sub, &leased, "ack");
                let _ = tx.try_send(pb::SubscribeRequest { ack_ids: vec![ack_id], ..Default::default() });
            }
        }
        Command::Nack(nack) => {
            let taken: Vec<_> = held.lock().expect("held lock").drain(..).collect();
            for (ack_id, tx, sub, leased) in taken {
                record_sent(history, name, &sub, &leased, "nack");
                let _ = tx.try_send(nack_request(nack, ack_id));
            }
        }
        Command::Modack { seconds } => {
            let kept: Vec<_> = held.lock().expect("held lock").iter().cloned().collect();
            for (ack_id, tx, sub, leased) in kept {
                record_sent(history, name, &sub, &leased, "modack");
                let request = pb::SubscribeRequest {
                    modify_deadline_ack_ids: vec![ack_id],
                    modify_deadline_seconds: vec![*seconds],
                    ..Default::default()
                };
                let _ = tx.try_send(request);
            }
        }
        _ => {}
    }
}

/// How a subscriber consumes.
#[derive(Debug, Clone)]
struct Mode {
    ack: AckMode,
    /// How long the subscriber works on a message before answering it.
    ack_delay: Duration,
    max_outstanding: u32,
    nack: Nack,
    session: Option<Duration>,
}

struct App {
    name: String,
    /// Every broker: requests follow the cluster's leader hints.
    client: Client,
    history: History,
    held: Held,
}

impl App {
    fn record(&self, event: Event) {
        self.history.record(&self.name, event);
    }

    async fn publish(self, spec: Publish, counters: &Counters) {
        if spec.via == Via::Library {
            return self.publish_with_library(spec, counters).await;
        }
        for i in 0..spec.count {
            if i > 0 {
                tokio::time::sleep(spec.every).await;
            }
            let n = counters.messages.fetch_add(1, Ordering::Relaxed) + 1;
            let id = format!("{}-{n}", self.name);
            let (value, idempotency_key) = spec.nth(i, &id);
            let message = pb::OutgoingMessage {
                value: value.into(),
                key: spec.key.clone(),
                attributes: [("id".to_string(), id.clone())].into(),
                partition: spec.partition,
                idempotency_key,
            };
            let req = pb::PublishRequest { topic: spec.topic.clone(), messages: vec![message], ..Default::default() };
            self.publish_one(id, req).await;
        }
    }

    /// Publishes through `mini_pubsub::client::Publisher`. Each message is recorded as
    /// invoked once, when it is handed to the publisher, and as published (with the key the
    /// publisher gave it) or failed when its handle resolves: the library's retries are
    /// its own business, and the checker sees what an application would.
    async fn publish_with_library(self, spec: Publish, counters: &Counters) {
        let first = counters.messages.load(Ordering::Relaxed) + 1;
        let publisher_id = format!("{}-p{first}", self.name);
        let settings = PublisherSettings {
            // Unique in the run and the same in every replay: the library's default id
            // reads the wall clock and the process id.
            publisher_id: Some(publisher_id.clone()),
            request_timeout: REQUEST_TIMEOUT,
            // The batching the scenarios' traces were recorded with (the library's defaults
            // until they were tuned for throughput): batches of 100 gathered for 10 ms.
            batch_messages_max: 100,
            linger: std::time::Duration::from_millis(10),
            ..PublisherSettings::default()
        };
        let client = self.client.clone();
        let publisher = match client.publisher(spec.topic.clone(), settings) {
            Ok(publisher) => publisher,
            Err(error) => unreachable!("the simulator's publisher settings are valid: {error}"),
        };
        let app = Arc::new(self);
        let mut answers = Vec::new();
        for i in 0..spec.count {
            if i > 0 {
                tokio::time::sleep(spec.every).await;
            }
            let n = counters.messages.fetch_add(1, Ordering::Relaxed) + 1;
            let id = format!("{}-{n}", app.name);
            // The scenario's own idempotency keys, as the gRPC path sends them; otherwise
            // the library's.
            let (value, idempotency_key) = spec.nth(i, &id);
            let message = OutgoingMessage {
                key: spec.key.clone(),
                partition: spec.partition,
                idempotency_key,
                ..OutgoingMessage::new(value).attribute("id", id.clone())
            };
            app.record(Event::PublishInvoked {
                id: id.clone(),
                topic: spec.topic.clone(),
                attempt: 1,
                after: None,
                publisher: (spec.key.is_some() || spec.partition.is_some()).then(|| publisher_id.clone()),
            });
            let handle = match publisher.publish(message).await {
                Ok(handle) => handle,
                Err(error) => {
                    app.record(library_failure(id, &error));
                    continue;
                }
            };
            let (app, topic) = (app.clone(), spec.topic.clone());
            answers.push(tokio::spawn(async move {
                match handle.await {
                    Ok(stored) => app.record(Event::Published {
                        id,
                        message_id: stored.message_id,
                        topic,
                        partition: stored.partition,
                        offset: stored.offset,
                        idempotency_key: stored.idempotency_key,
                        duplicate: stored.duplicate,
                    }),
                    Err(error) => app.record(library_failure(id, &error)),
                }
            }));
        }
        let _ = publisher.shutdown().await;
        for answer in answers {
            let _ = answer.await;
        }
    }

    /// Sends one publish until it is acknowledged, definitely refused, or out of attempts.
    async fn publish_one(&self, id: String, req: pb::PublishRequest) {
        let topic = req.topic.clone();
        let mut after = None;
        for attempt in 1..=PUBLISH_ATTEMPTS_MAX {
            let retried_after = after.take();
            let invoked = Event::PublishInvoked {
                id: id.clone(),
                topic: topic.clone(),
                attempt,
                after: retried_after,
                publisher: None,
            };
            self.record(invoked);
            let (used, channel) = self.client.target();
            match pb::pub_sub_client::PubSubClient::new(channel).publish(req.clone()).await {
                Ok(reply) => {
                    let result = reply.into_inner().results.swap_remove(0);
                    let (partition, offset, duplicate) = (result.partition, result.offset, result.duplicate);
                    let idempotency_key = req.messages[0].idempotency_key.clone();
                    let message_id = result.message_id;
                    self.record(Event::Published {
                        id,
                        message_id,
                        topic,
                        partition,
                        offset,
                        idempotency_key,
                        duplicate,
                    });
                    return;
                }
                Err(status) if !is_retryable(status.code()) || attempt == PUBLISH_ATTEMPTS_MAX => {
                    let definite = is_definite(status.code());
                    self.record(Event::PublishFailed { id, code: code_name(status.code()), definite });
                    return;
                }
                Err(status) => {
                    after = Some(code_name(status.code()));
                    self.client.observe(used, &status);
                    tokio::time::sleep(RETRY_DELAY).await;
                }
            }
        }
    }

    /// Keeps a stream open on `sub`, reopening it after failures, and acks what arrives
    /// when `ack` is set.
    async fn subscribe(self, sub: String, mode: Mode, numbers: Arc<AtomicU64>) {
        loop {
            let stream = numbers.fetch_add(1, Ordering::Relaxed) + 1;
            let (used, channel) = self.client.target();
            let mut client = pb::pub_sub_client::PubSubClient::new(channel);
            let (tx, rx) = mpsc::channel(64);
            let first = pb::SubscribeRequest {
                subscription: sub.clone(),
                max_outstanding_messages: mode.max_outstanding,
                session_timeout_seconds: mode.session.map_or(0, |s| s.as_secs() as u32),
                ..Default::default()
            };
            let _ = tx.send(first).await;
            let status = match client.subscribe(ReceiverStream::new(rx)).await {
                Ok(response) => {
                    self.record(Event::StreamOpened { sub: sub.clone(), stream, max: mode.max_outstanding });
                    self.read_stream(&sub, stream, &mode, &tx, response.into_inner()).await
                }
                Err(status) => status,
            };
            self.client.observe(used, &status);
            let code = status.code();
            self.record(Event::StreamFailed { sub: sub.clone(), stream, code: code_name(code) });
            if code == Code::NotFound {
                return;
            }
            tokio::time::sleep(RETRY_DELAY).await;
        }
    }

    /// Consumes `sub` through `mini_pubsub::client::Subscriber`, with a client id of its
    /// own, so its reconnects keep the leases it holds. The history numbers a new stream
    /// when the library reports a reconnect (or gives up and is started again), records
    /// each message as it is handed out, each ack or nack as it is handed to the library,
    /// and the broker's answer as the library tells it (`ack_with_response`).
    async fn subscribe_with_library(self, sub: String, mode: Mode, numbers: Arc<AtomicU64>) {
        let client = self.client.clone();
        let settings = SubscriberSettings {
            client_id: Some(format!("{}-{sub}", self.name)),
            max_outstanding_messages: if mode.max_outstanding == 0 { 1000 } else { mode.max_outstanding },
            session_timeout: mode.session,
            ..SubscriberSettings::default()
        };
        let app = Arc::new(self);
        loop {
            let stream = numbers.fetch_add(1, Ordering::Relaxed) + 1;
            let target = SubscribeTarget::subscription(sub.clone());
            let mut subscriber = match client.subscribe(target, settings.clone()).await {
                Ok(subscriber) => subscriber,
                Err(error) => {
                    let code = error.code().unwrap_or(Code::Unknown);
                    app.record(Event::StreamFailed { sub: sub.clone(), stream, code: code_name(code) });
                    if code == Code::NotFound {
                        return;
                    }
                    tokio::time::sleep(RETRY_DELAY).await;
                    continue;
                }
            };
            let max = settings.max_outstanding_messages;
            app.record(Event::StreamOpened { sub: sub.clone(), stream, max });
            // Held messages of ack=none: bounded by flow control (max_outstanding_messages).
            let mut held = Vec::new();
            // A reconnect inside the library starts a new stream number in the history, as
            // the broker sees a new stream (after a broker restart it delivers from the
            // lowest unacked offset again, with attempts starting over).
            let (mut stream, mut reconnects) = (stream, 0);
            let code = loop {
                let received = match subscriber.next().await {
                    Some(Ok(received)) => received,
                    Some(Err(error)) => break error.code().unwrap_or(Code::Unknown),
                    None => break Code::Ok,
                };
                let now = subscriber.stats().reconnects;
                if now != reconnects {
                    reconnects = now;
                    stream = numbers.fetch_add(1, Ordering::Relaxed) + 1;
                    app.record(Event::StreamOpened { sub: sub.clone(), stream, max });
                }
                let (_, leased) = app.record_delivery(&sub, stream, as_wire(&received));
                let op = match mode.ack {
                    AckMode::None | AckMode::Manual => {
                        held.push(received);
                        continue;
                    }
                    AckMode::Nack if leased.attempt == 1 => "nack",
                    AckMode::NackAll | AckMode::Reject => "nack",
                    AckMode::All | AckMode::Nack => "ack",
                };
                spawn_answer(app.clone(), sub.clone(), received, leased, op, &mode);
            };
            drop(held);
            app.record(Event::StreamFailed { sub: sub.clone(), stream, code: code_name(code) });
            if code == Code::NotFound {
                return;
            }
            tokio::time::sleep(RETRY_DELAY).await;
        }
    }

    async fn read_stream(
        &self,
        sub: &str,
        stream: u64,
        mode: &Mode,
        tx: &mpsc::Sender<pb::SubscribeRequest>,
        mut inbound: tonic::Streaming<pb::SubscribeResponse>,
    ) -> tonic::Status {
        let mut ids: std::collections::BTreeMap<String, Leased> = Default::default();
        // Only members of exclusive subscriptions (told an assignment) have sessions. The
        // heartbeats stop with this function (even when its task is aborted): a sender left
        // behind would keep the request half of the stream, and so the stream, open.
        let mut heartbeating: Option<AbortOnDrop> = None;
        loop {
            let response = match inbound.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return tonic::Status::ok(""),
                Err(status) => return status,
            };
            if let Some(assigned) = response.assignment {
                let (generation, partitions) = (assigned.generation, assigned.partitions);
                self.record(Event::Assigned { sub: sub.to_string(), stream, generation, partitions });
                if heartbeating.is_none() {
                    let every = mode.session.unwrap_or(SESSION_DEFAULT);
                    heartbeating = Some(AbortOnDrop(tokio::spawn(heartbeat(tx.clone(), every))));
                }
            }
            for m in response.received_messages {
                let (ack_id, leased) = self.record_delivery(sub, stream, m);
                let attempt = leased.attempt;
                let request = match mode.ack {
                    AckMode::None => continue,
                    AckMode::Manual => {
                        let entry = (ack_id.clone(), tx.clone(), sub.to_string(), leased.clone());
                        self.held.lock().expect("held lock").push_back(entry);
                        ids.insert(ack_id, leased);
                        continue;
                    }
                    AckMode::Nack if attempt == 1 => nack_request(&mode.nack, ack_id.clone()),
                    AckMode::NackAll => nack_request(&mode.nack, ack_id.clone()),
                    AckMode::Reject => nack_request(&Nack { terminal: true, ..mode.nack.clone() }, ack_id.clone()),
                    AckMode::All | AckMode::Nack => {
                        pb::SubscribeRequest { ack_ids: vec![ack_id.clone()], ..Default::default() }
                    }
                };
                let op = if request.ack_ids.is_empty() { "nack" } else { "ack" };
                if mode.ack_delay.is_zero() {
                    record_sent(&self.history, &self.name, sub, &leased, op);
                    let _ = tx.send(request).await;
                } else {
                    let (tx, delay) = (tx.clone(), mode.ack_delay);
                    let (history, host, sub, leased) =
                        (self.history.clone(), self.name.clone(), sub.to_string(), leased.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        record_sent(&history, &host, &sub, &leased, op);
                        let _ = tx.send(request).await;
                    });
                }
                ids.insert(ack_id, leased);
            }
            for c in response.ack_confirmations {
                // A deadline change leaves the message held: keep its entry for the answer
                // to the ack or nack that follows.
                let keep = c.operation() == pb::AckOperation::ModifyDeadline;
                let leased = if keep { ids.get(&c.ack_id).cloned() } else { ids.remove(&c.ack_id) };
                self.record_answer(sub, leased.unwrap_or_default(), &c);
            }
        }
    }
}

/// What a client remembers of a lease it holds: which stored message, which attempt.
#[derive(Debug, Clone, Default)]
struct Leased {
    id: String,
    message_id: String,
    partition: u32,
    offset: u64,
    attempt: u32,
}

impl App {
    /// Records a received message and returns its ack id and what to remember of it.
    fn record_delivery(&self, sub: &str, stream: u64, m: pb::ReceivedMessage) -> (String, Leased) {
        let message = m.message.unwrap_or_default();
        let id = message.attributes.get("id").cloned().unwrap_or_default();
        let value = String::from_utf8_lossy(&message.value).into_owned();
        let attribute = |name: &str| message.attributes.get(name).cloned();
        let dead_letter = attribute(ATTR_SOURCE_SUBSCRIPTION).map(|from| DeadLetter {
            from,
            reason: attribute(ATTR_REASON).unwrap_or_default(),
            original: attribute(ATTR_MESSAGE_ID).unwrap_or_default(),
        });
        let (partition, offset, attempt) = (message.partition, message.offset, m.delivery_attempt);
        let leased = Leased { id, message_id: message.message_id.clone(), partition, offset, attempt };
        let key = message.key.clone();
        self.record(Event::Delivered {
            id: leased.id.clone(),
            message_id: message.message_id.clone(),
            sub: sub.to_string(),
            stream,
            partition: leased.partition,
            offset: leased.offset,
            attempt: leased.attempt,
            value,
            dead_letter,
            key,
            idempotency_key: message.idempotency_key.clone(),
            publish_ms: message.publish_time.map_or(0, |t| t.seconds as u64 * 1000 + t.nanos as u64 / 1_000_000),
            generation: m.generation,
            lease: m.ack_id.rsplit('-').next().and_then(|seq| seq.parse().ok()).unwrap_or(0),
        });
        (m.ack_id, leased)
    }

    /// Records the broker's answer to an ack, nack or deadline change of `leased`.
    fn record_answer(&self, sub: &str, leased: Leased, c: &pb::AckConfirmation) {
        let Leased { id, message_id, partition, offset, attempt } = leased;
        let (op, result) = (op_name(c.operation()), result_name(c.result()));
        let sub = sub.to_string();
        self.record(Event::AckAnswered { id, message_id, sub, op, partition, offset, attempt, result });
    }
}

fn op_name(op: pb::AckOperation) -> String {
    op.as_str_name().trim_start_matches("ACK_OPERATION_").to_lowercase()
}

fn result_name(result: pb::AckResult) -> String {
    result.as_str_name().trim_start_matches("ACK_RESULT_").to_lowercase()
}

impl App {
    /// Pulls and acks until the run ends, on every subscription the broker lists at each
    /// round (one created late, by an admin step still retrying, is drained too). It goes
    /// straight on while pulls bring messages (an ordered subscription gives one message
    /// per key per round), and waits between rounds that brought none. The loop ends with
    /// the simulation.
    async fn drain(self) {
        loop {
            let mut pulled_any = false;
            let subs = self.subscriptions().await;
            for sub in &subs {
                let (used, channel) = self.client.target();
                let mut client = pb::pub_sub_client::PubSubClient::new(channel);
                let pulled = client.pull(pb::PullRequest { subscription: sub.clone(), max_messages: 100 }).await;
                let pulled = match pulled {
                    Ok(pulled) => pulled,
                    Err(status) => {
                        self.client.observe(used, &status);
                        continue;
                    }
                };
                let mut stored = std::collections::BTreeMap::new();
                for m in pulled.into_inner().received_messages {
                    let (ack_id, leased) = self.record_delivery(sub, 0, m);
                    stored.insert(ack_id, leased);
                }
                if stored.is_empty() {
                    continue;
                }
                pulled_any = true;
                for leased in stored.values() {
                    record_sent(&self.history, &self.name, sub, leased, "ack");
                }
                let req = pb::AckRequest { subscription: sub.clone(), ack_ids: stored.keys().cloned().collect() };
                let Ok(reply) = client.ack(req).await else { continue };
                for c in reply.into_inner().confirmations {
                    let leased = stored.remove(&c.ack_id).unwrap_or_default();
                    self.record_answer(sub, leased, &c);
                }
            }
            if !pulled_any {
                tokio::time::sleep(RETRY_DELAY).await;
            }
        }
    }
}

impl App {
    /// The subscriptions the broker lists (none when it cannot be reached), bounded by
    /// [`DRAIN_SUBSCRIPTIONS_MAX`].
    async fn subscriptions(&self) -> Vec<String> {
        let (used, channel) = self.client.target();
        let mut admin = pb::admin_client::AdminClient::new(channel);
        let (mut names, mut page_token) = (Vec::new(), String::new());
        while names.len() < DRAIN_SUBSCRIPTIONS_MAX {
            let req = pb::ListSubscriptionsRequest { page_size: 1000, page_token, ..Default::default() };
            let page = match admin.list_subscriptions(req).await {
                Ok(page) => page,
                Err(status) => {
                    self.client.observe(used, &status);
                    break;
                }
            };
            let page = page.into_inner();
            names.extend(page.subscriptions.into_iter().map(|s| s.name).filter(|n| !n.starts_with("__")));
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        names
    }
}

/// Subscriptions the final drain reads at most.
const DRAIN_SUBSCRIPTIONS_MAX: usize = 10_000;

/// Codes a publisher retries, as Pub/Sub's client libraries do: the broker may accept the
/// same request later (it was unreachable, overloaded, or its disk was full).
fn is_retryable(code: Code) -> bool {
    !matches!(
        code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::FailedPrecondition
            | Code::PermissionDenied
            | Code::Unauthenticated
    )
}

/// A message the library handed out, in the wire form the history is recorded from.
fn as_wire(received: &ReceivedMessage) -> pb::ReceivedMessage {
    let m = received.message();
    pb::ReceivedMessage {
        ack_id: received.ack_id().to_string(),
        message: Some(pb::Message {
            message_id: m.message_id.clone(),
            topic: m.topic.clone(),
            partition: m.partition,
            offset: m.offset,
            key: m.key.clone(),
            value: m.value.clone(),
            attributes: m.attributes.clone().into_iter().collect(),
            publish_time: m.publish_time.map(prost_types::Timestamp::from),
            idempotency_key: m.idempotency_key.clone(),
        }),
        delivery_attempt: m.delivery_attempt,
        generation: 0,
    }
}

/// A publish the client library gave up on.
fn library_failure(id: String, error: &ClientError) -> Event {
    let code = error.code().unwrap_or(Code::Unknown);
    Event::PublishFailed { id, code: code_name(code), definite: is_definite(code) }
}

/// Codes after which the broker certainly stored nothing.
fn is_definite(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::FailedPrecondition
            | Code::ResourceExhausted
            | Code::PermissionDenied
            | Code::Unauthenticated
    )
}

pub fn code_name(code: Code) -> String {
    format!("{code:?}")
        .chars()
        .flat_map(|c| if c.is_uppercase() { vec!['_', c] } else { vec![c.to_ascii_uppercase()] })
        .collect::<String>()
        .trim_start_matches('_')
        .to_string()
}

/// Acks or nacks (`op`) a message received through the library after the mode's delay,
/// and records the broker's answer as the library tells it.
fn spawn_answer(app: Arc<App>, sub: String, received: ReceivedMessage, leased: Leased, op: &'static str, mode: &Mode) {
    let ack_delay = mode.ack_delay;
    let nack = NackOptions {
        delay: mode.nack.delay,
        reason: Some(mode.nack.reason.clone()).filter(|r| !r.is_empty()),
        terminal: mode.ack == AckMode::Reject,
    };
    tokio::spawn(async move {
        tokio::time::sleep(ack_delay).await;
        record_sent(&app.history, &app.name, &sub, &leased, op);
        let answer = match op {
            "ack" => received.ack_with_response().await,
            _ => received.nack_with_response(nack).await,
        };
        // The library tells the broker's answer, as the confirmations of a stream tell
        // it; an unknown one is an answer that never came.
        let result = match answer {
            AckResponse::Applied => "applied",
            AckResponse::Invalid => "invalid",
            AckResponse::Expired => "expired",
            AckResponse::Unknown => return,
        };
        let Leased { id, message_id, partition, offset, attempt } = leased;
        let (op, result) = (op.to_string(), result.to_string());
        app.record(Event::AckAnswered { id, message_id, sub, op, partition, offset, attempt, result });
    });
}
