//! Durability across a crash and a graceful stop. With `--fsync always`, every publish the
//! real binary answered before a SIGKILL is read back after a restart on the same data
//! directory, at the same partition and offset with the same payload; every partition is
//! contiguous from offset 0; and nothing appears that no publisher sent. On SIGTERM the
//! binary answers the publishes in flight, refuses later ones with UNAVAILABLE, ends open
//! streams with UNAVAILABLE, saves the acks it confirmed, and exits 0.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::{channel, PROMPT};
use mini_pubsub::wire::pb;
use pb::admin_client::AdminClient;
use pb::pub_sub_client::PubSubClient;
use tonic::transport::Channel;
use tonic::Code;

const TOPIC: &str = "crash";
const PARTITIONS: u32 = 3;
const PUBLISHERS: u32 = 4;
/// Acknowledged messages after which the server is killed, publishers still running.
const ACKED_BEFORE_KILL: usize = 300;
/// Requests a publisher sends at most; far more than the kill needs, so publishers are
/// still running at the kill, yet they stop by themselves if it never comes.
const REQUESTS_PER_PUBLISHER_MAX: u64 = 5_000;
/// Longest the load may take to reach `ACKED_BEFORE_KILL`; past it the test fails.
const LOAD_MAX: Duration = Duration::from_secs(10);
/// Longest a start (and the recovery scan of a restart) may take to print its address.
const STARTUP_MAX: Duration = Duration::from_secs(10);
/// Messages asked for by each Pull of the read-back.
const PULL_MESSAGES: u32 = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_publish_survives_sigkill_under_fsync_always() {
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start(data.path(), "always");
    let (pubsub, mut admin) = server.clients().await;
    let req = pb::CreateTopicRequest { name: TOPIC.into(), partitions: PARTITIONS, ..Default::default() };
    admin.create_topic(req).await.unwrap();

    let load = Load::start(&pubsub);
    load.until_stop_point().await;
    server.kill();

    let mut ledger = Ledger::default();
    for log in load.logs().await {
        ledger.absorb(log);
    }

    let mut server = Server::start(data.path(), "always");
    let (pubsub, admin) = server.clients().await;
    let found = read_back(pubsub, admin).await;
    ledger.check(&found);
    server.kill();
}

/// Topics and subscriptions made in a burst, each answered before the next is asked for.
const CREATED: usize = 200;

/// What tells one save of the metadata file from the next: a save writes a new file and
/// renames it over the old one.
fn meta_version(data_dir: &Path) -> Option<(u64, u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(data_dir.join("meta")).ok().map(|m| (m.ino(), m.len(), m.mtime(), m.mtime_nsec()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_are_journaled_not_saved_whole_and_every_answered_one_survives_sigkill() {
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start(data.path(), "always");
    let (_, mut admin) = server.clients().await;
    let (mut saves, mut last) = (0usize, meta_version(data.path()));
    for i in 0..CREATED {
        let topic = pb::CreateTopicRequest { name: format!("t{i}"), ..Default::default() };
        admin.create_topic(topic).await.unwrap();
        let sub = pb::CreateSubscriptionRequest { name: format!("s{i}"), topic: format!("t{i}"), ..Default::default() };
        admin.create_subscription(sub).await.unwrap();
        let now = meta_version(data.path());
        saves += usize::from(now != last);
        last = now;
    }
    // The checkpoint folds the journal into the metadata file once a second at most, and
    // the burst takes about a second here: a whole save per create (the old way) shows a
    // new file after every pair. Ten times fewer saves than pairs allows a 20 s burst.
    assert!(saves < CREATED / 10, "{saves} metadata saves seen during {} creates", 2 * CREATED);
    server.kill();

    let mut server = Server::start(data.path(), "always");
    let (_, mut admin) = server.clients().await;
    for i in 0..CREATED {
        let topic = admin.get_topic(pb::GetTopicRequest { name: format!("t{i}") }).await;
        assert!(topic.is_ok(), "t{i} was answered, so it survives: {:?}", topic.err());
        let sub = pb::GetSubscriptionRequest { name: format!("s{i}") };
        assert!(admin.get_subscription(sub).await.is_ok(), "s{i} was answered, so it survives");
    }
    server.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_publishes_in_flight_ends_streams_and_keeps_confirmed_acks() {
    let data = tempfile::tempdir().unwrap();
    // fsync never: what a graceful stop keeps must not depend on an fsync per publish.
    let mut server = Server::start(data.path(), "never");
    let (pubsub, mut admin) = server.clients().await;
    let req = pb::CreateTopicRequest { name: TOPIC.into(), partitions: PARTITIONS, ..Default::default() };
    admin.create_topic(req).await.unwrap();
    let req = pb::CreateSubscriptionRequest {
        name: "acker".into(),
        topic: TOPIC.into(),
        start_position: pb::StartPosition::Earliest.into(),
        ..Default::default()
    };
    admin.create_subscription(req).await.unwrap();
    let acker = tokio::spawn(ack_until_the_stream_ends(pubsub.clone()));

    let load = Load::start(&pubsub);
    load.until_stop_point().await;
    let exit = server.terminate().await;
    assert!(exit.success(), "a graceful stop exits 0: {exit:?}");

    let mut ledger = Ledger::default();
    for log in load.logs().await {
        // Refused with UNAVAILABLE, or cut by the connection closing (sent after the server's
        // HTTP/2 GOAWAY, so never read): the client reports that as CANCELLED, INTERNAL or
        // UNKNOWN with the transport error as its source.
        let status = log.status.as_ref().expect("every publisher ends on a refusal");
        let cut = std::error::Error::source(status).is_some_and(|e| e.is::<tonic::transport::Error>());
        assert!(status.code() == Code::Unavailable || cut, "a publish after SIGTERM: {status:?}");
        ledger.absorb(log);
    }
    let (confirmed, ended) = tokio::time::timeout(PROMPT, acker).await.expect("the stream ends").unwrap();
    assert_eq!(ended, Code::Unavailable, "SIGTERM ends an open stream with UNAVAILABLE");
    assert!(!confirmed.is_empty(), "the subscriber acked messages before the stop");

    let mut server = Server::start(data.path(), "never");
    let (mut pubsub, admin) = server.clients().await;
    let found = read_back(pubsub.clone(), admin).await;
    ledger.check(&found);
    // A graceful stop answers every publish it took in: what got no answer was not stored.
    let stored: BTreeSet<&String> = found.values().collect();
    assert!(ledger.in_flight.iter().all(|p| !stored.contains(p)), "a publish without an answer was stored");
    // An ack the server confirmed before the stop was saved: that message is not delivered again.
    let mut redelivered = 0;
    for _ in 0..found.len() + 2 {
        let req = pb::PullRequest { subscription: "acker".into(), max_messages: PULL_MESSAGES };
        let received = pubsub.pull(req).await.unwrap().into_inner().received_messages;
        if received.is_empty() {
            break;
        }
        for m in &received {
            let message = m.message.as_ref().unwrap();
            assert!(
                !confirmed.contains(&(message.partition, message.offset)),
                "({}, {}) was acked and confirmed before SIGTERM, yet is delivered again",
                message.partition,
                message.offset
            );
        }
        redelivered += received.len();
        let ack_ids = received.into_iter().map(|m| m.ack_id).collect();
        pubsub.ack(pb::AckRequest { subscription: "acker".into(), ack_ids }).await.unwrap();
    }
    eprintln!(
        "sigterm: {} confirmed acks kept, {redelivered} unacked messages delivered after restart",
        confirmed.len()
    );
    assert_eq!(confirmed.len() + redelivered, found.len(), "every stored message is either acked or delivered");
    server.kill();
}

/// Subscribes to `acker` and acks whatever arrives, until the stream ends. Returns the
/// places whose ack the server confirmed as applied, and the status that ended the stream.
async fn ack_until_the_stream_ends(mut pubsub: PubSubClient<Channel>) -> (BTreeSet<(u32, u64)>, Code) {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let first = pb::SubscribeRequest { subscription: "acker".into(), ..Default::default() };
    tx.send(first).await.unwrap();
    let mut stream = pubsub.subscribe(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    let mut places = BTreeMap::new();
    let mut confirmed = BTreeSet::new();
    // Bounded: the load publishes at most this many messages.
    let responses_max = (PUBLISHERS as u64 * REQUESTS_PER_PUBLISHER_MAX * 6) as usize;
    for _ in 0..responses_max {
        let response = match stream.message().await {
            Ok(Some(response)) => response,
            Ok(None) => return (confirmed, Code::Ok),
            Err(status) => return (confirmed, status.code()),
        };
        for c in response.ack_confirmations {
            if c.result == pb::AckResult::Applied as i32 {
                confirmed.insert(places.remove(&c.ack_id).expect("a confirmation of an ack we sent"));
            }
        }
        let mut ack_ids = Vec::new();
        for m in response.received_messages {
            let message = m.message.expect("a received message carries its message");
            places.insert(m.ack_id.clone(), (message.partition, message.offset));
            ack_ids.push(m.ack_id);
        }
        // A stream the server is ending may stop reading requests; its status still follows.
        if !ack_ids.is_empty() {
            let _ = tx.send(pb::SubscribeRequest { ack_ids, ..Default::default() }).await;
        }
    }
    panic!(
        "the stream outlived every message the load could publish: {} confirmed, {} places",
        confirmed.len(),
        places.len()
    );
}

/// `PUBLISHERS` publishers running `publish_until_refused` against one server.
struct Load {
    publishers: Vec<tokio::task::JoinHandle<PublisherLog>>,
    acked_total: Arc<AtomicUsize>,
    stopping: Arc<AtomicBool>,
}

impl Load {
    fn start(pubsub: &PubSubClient<Channel>) -> Load {
        let acked_total = Arc::new(AtomicUsize::new(0));
        let stopping = Arc::new(AtomicBool::new(false));
        let publishers = (0..PUBLISHERS)
            .map(|id| tokio::spawn(publish_until_refused(id, pubsub.clone(), acked_total.clone(), stopping.clone())))
            .collect();
        Load { publishers, acked_total, stopping }
    }

    /// Waits until `ACKED_BEFORE_KILL` messages are acknowledged with every publisher still
    /// running, then allows refusals: the caller stops the server next.
    async fn until_stop_point(&self) {
        let running = || !self.publishers.iter().any(|p| p.is_finished());
        let enough = async {
            while self.acked_total.load(Ordering::SeqCst) < ACKED_BEFORE_KILL {
                assert!(running(), "a publisher stopped before the stop point");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        tokio::time::timeout(LOAD_MAX, enough).await.expect("the load reaches the stop point in time");
        assert!(running(), "the stop must land while publishers run");
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Every publisher's log, once the stop has ended them.
    async fn logs(self) -> Vec<PublisherLog> {
        let mut logs = Vec::new();
        for publisher in self.publishers {
            logs.push(tokio::time::timeout(PROMPT, publisher).await.expect("publishers notice the stop").unwrap());
        }
        logs
    }
}

/// What one publisher sent and what the broker answered.
struct PublisherLog {
    /// Payloads of every request sent, answered or not.
    sent: Vec<String>,
    /// Answered messages: (partition, offset, payload).
    acked: Vec<(u32, u64, String)>,
    /// Payloads of the request the kill cut off.
    in_flight: Vec<String>,
    /// The status of the refused request.
    status: Option<tonic::Status>,
}

/// Publishes `p{id}-{seq}` payloads (singles, keyed batches, batches with explicit
/// partitions) one request at a time until a request fails, which must come after the kill.
async fn publish_until_refused(
    id: u32,
    mut pubsub: PubSubClient<Channel>,
    acked_total: Arc<AtomicUsize>,
    killed: Arc<AtomicBool>,
) -> PublisherLog {
    let mut log = PublisherLog { sent: Vec::new(), acked: Vec::new(), in_flight: Vec::new(), status: None };
    let mut seq = 0u64;
    for request in 0..REQUESTS_PER_PUBLISHER_MAX {
        let batch = if request.is_multiple_of(3) { 1 } else { 2 + request % 4 };
        // Varying lengths so records straddle the log's frame and index boundaries differently.
        let payloads: Vec<String> =
            (seq..seq + batch).map(|s| format!("p{id}-{s}-{}", "x".repeat((s % 97) as usize))).collect();
        seq += batch;
        log.sent.extend(payloads.iter().cloned());
        let req = publish_request(request, &payloads);
        let answer = tokio::time::timeout(PROMPT, pubsub.publish(req)).await.expect("a publish answered or refused");
        match answer {
            Ok(response) => {
                let results = response.into_inner().results;
                assert_eq!(results.len(), payloads.len(), "one result per message");
                for (result, payload) in results.into_iter().zip(payloads) {
                    log.acked.push((result.partition, result.offset, payload));
                }
                acked_total.fetch_add(batch as usize, Ordering::SeqCst);
            }
            Err(status) => {
                assert!(killed.load(Ordering::SeqCst), "publisher {id} refused before the kill: {status:?}");
                log.status = Some(status);
                log.in_flight = payloads;
                break;
            }
        }
    }
    log
}

/// Every third request is the single form; the others are batches, keyed or with explicit
/// partitions, so all three ways of choosing a partition are in the load.
fn publish_request(request: u64, payloads: &[String]) -> pb::PublishRequest {
    let topic = TOPIC.to_string();
    if let [only] = payloads {
        return pb::PublishRequest { topic, value: only.clone().into_bytes().into(), ..Default::default() };
    }
    let messages = payloads
        .iter()
        .enumerate()
        .map(|(i, payload)| {
            let mut message = pb::OutgoingMessage { value: payload.clone().into_bytes().into(), ..Default::default() };
            if request.is_multiple_of(2) {
                message.key = Some(payload.clone());
            } else {
                message.partition = Some((request as u32 + i as u32) % PARTITIONS);
            }
            message
        })
        .collect();
    pb::PublishRequest { topic, messages, ..Default::default() }
}

/// Reads every partition from offset 0 with Pull on a new EARLIEST subscription, acking
/// as it goes. Returns payloads by (partition, offset) and asserts each partition is read
/// exactly over `0..end_offset`.
async fn read_back(mut pubsub: PubSubClient<Channel>, mut admin: AdminClient<Channel>) -> BTreeMap<(u32, u64), String> {
    let topic = admin.get_topic(pb::GetTopicRequest { name: TOPIC.into() }).await.unwrap().into_inner();
    assert_eq!(topic.partitions, PARTITIONS, "the topic keeps its partitions across the restart");
    let ends: BTreeMap<u32, u64> = topic
        .partition_info
        .iter()
        .map(|p| {
            assert_eq!(p.start_offset, 0, "partition {} starts at 0: nothing was retained away", p.partition);
            (p.partition, p.end_offset)
        })
        .collect();
    let total: u64 = ends.values().sum();
    let req = pb::CreateSubscriptionRequest {
        name: "crash-check".into(),
        topic: TOPIC.into(),
        start_position: pb::StartPosition::Earliest.into(),
        ..Default::default()
    };
    admin.create_subscription(req).await.unwrap();

    let mut found = BTreeMap::new();
    // Each Pull but the last returns at least one message, so this many always suffices.
    let pulls_max = total + 2;
    for _ in 0..pulls_max {
        let req = pb::PullRequest { subscription: "crash-check".into(), max_messages: PULL_MESSAGES };
        let pulled = tokio::time::timeout(PROMPT, pubsub.pull(req)).await.expect("a prompt Pull").unwrap();
        let received = pulled.into_inner().received_messages;
        if received.is_empty() {
            break;
        }
        let ack_ids = received.iter().map(|m| m.ack_id.clone()).collect();
        for m in received {
            let message = m.message.expect("a received message carries its message");
            let payload = String::from_utf8(message.value.to_vec()).expect("payloads are UTF-8");
            let before = found.insert((message.partition, message.offset), payload);
            assert!(before.is_none(), "({}, {}) delivered twice", message.partition, message.offset);
        }
        let req = pb::AckRequest { subscription: "crash-check".into(), ack_ids };
        tokio::time::timeout(PROMPT, pubsub.ack(req)).await.expect("a prompt Ack").unwrap();
    }
    for (&partition, &end) in &ends {
        let offsets: Vec<u64> = found.range((partition, 0)..(partition + 1, 0)).map(|((_, o), _)| *o).collect();
        assert!(
            offsets.iter().copied().eq(0..end),
            "partition {partition} must read as offsets 0..{end} with no gap; read {} offsets, first gap after {:?}",
            offsets.len(),
            offsets.iter().zip(0..).find(|(o, i)| **o != *i).map(|(_, i)| i)
        );
    }
    assert_eq!(found.len() as u64, total, "the read-back holds exactly the topic's messages");
    found
}

/// Every publisher's log, merged.
#[derive(Default)]
struct Ledger {
    sent: BTreeSet<String>,
    acked: Vec<(u32, u64, String)>,
    in_flight: BTreeSet<String>,
}

impl Ledger {
    fn absorb(&mut self, log: PublisherLog) {
        // One request at a time: all a publisher sent was answered, but for the one the kill cut.
        assert_eq!(log.sent.len(), log.acked.len() + log.in_flight.len(), "a publisher's sends are accounted for");
        self.sent.extend(log.sent);
        self.acked.extend(log.acked);
        self.in_flight.extend(log.in_flight);
    }

    /// Asserts the read-back keeps every acknowledged message in place and holds only sent ones.
    fn check(&self, found: &BTreeMap<(u32, u64), String>) {
        for (partition, offset, payload) in &self.acked {
            match found.get(&(*partition, *offset)) {
                Some(stored) if stored == payload => {}
                Some(stored) => panic!("acknowledged ({partition}, {offset}) = {payload:?} reads back as {stored:?}"),
                None => panic!("acknowledged ({partition}, {offset}) = {payload:?} is lost"),
            }
        }
        let mut seen = BTreeSet::new();
        for ((partition, offset), payload) in found {
            assert!(self.sent.contains(payload), "({partition}, {offset}) = {payload:?} was never published");
            assert!(seen.insert(payload), "{payload:?} is stored twice");
        }
        let survived = self.in_flight.iter().filter(|p| seen.contains(p)).count();
        eprintln!(
            "crash: {} acknowledged, {} found after restart, {} of {} in flight at the kill survived",
            self.acked.len(),
            found.len(),
            survived,
            self.in_flight.len()
        );
        assert_eq!(found.len(), self.acked.len() + survived, "only acknowledged and in-flight messages are stored");
    }
}

/// The real `mini-pubsub serve` on 127.0.0.1:0 with `--fsync always`; killed on drop, so a
/// failing test leaves no server behind.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(data_dir: &Path, fsync: &str) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mini-pubsub"))
            .args(["serve", "--listen", "127.0.0.1:0", "--fsync", fsync, "--data-dir"])
            .arg(data_dir)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let stderr = child.stderr.take().unwrap();
        // A thread drains stderr (so the server never blocks on a full pipe) and hands over
        // the first line, which a hung start must not make the test wait for forever.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        // The guard exists before the startup line is parsed, so a bad line still kills the child.
        let mut server = Server { child, addr: "0.0.0.0:0".parse().unwrap() };
        let startup = rx.recv_timeout(STARTUP_MAX).expect("a startup line in time");
        assert!(startup.contains(&format!("fsync {fsync}")), "{startup}");
        server.addr = common::listening_addr(&startup);
        server
    }

    async fn clients(&self) -> (PubSubClient<Channel>, AdminClient<Channel>) {
        let channel = tokio::time::timeout(PROMPT, channel(self.addr)).await.expect("the server accepts in time");
        (PubSubClient::new(channel.clone()), AdminClient::new(channel))
    }

    /// SIGTERM, then waits (bounded) for the process to exit.
    async fn terminate(&mut self) -> std::process::ExitStatus {
        let sent = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(sent.success());
        for _ in 0..200 {
            if let Some(exit) = self.child.try_wait().unwrap() {
                return exit;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the server did not stop within 10 s of SIGTERM");
    }

    /// SIGKILL (what `Child::kill` sends on unix), then reaps the process.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
