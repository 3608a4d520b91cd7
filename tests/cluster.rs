//! Three real `mini-pubsub serve` processes on 127.0.0.1 as a cluster: clients publish
//! under load, the leader is SIGKILLed three times (a different node each time) and
//! restarted on its data, and at the end every acknowledged message is on every node, at
//! the partition and offset it was acknowledged at, with its bytes; and the nodes hold the
//! same records at every offset.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use tonic::transport::Channel;

use mini_pubsub::core::{Broker, BrokerConfig};
use mini_pubsub::env::StdFs;
use mini_pubsub::storage::{FileStorage, FileStorageConfig};
use mini_pubsub::wire::pb;
use pb::admin_client::AdminClient;
use pb::pub_sub_client::PubSubClient;

/// Longest any wait here takes before the test fails.
const WAIT_MAX: Duration = Duration::from_secs(30);

/// Publishing clients, each with its own idempotency keys.
const PUBLISHERS: usize = 4;

/// Attempts at one message, 50 ms apart at least, before the test fails.
const ATTEMPTS_MAX: u32 = 400;

/// Most messages a publisher sends: its loop ends by itself.
const MESSAGES_MAX: usize = 5_000;

/// A node: its ports, its data directory, and its process while it runs (killed on drop).
struct Node {
    id: u64,
    client: String,
    data: PathBuf,
    child: Option<Child>,
    /// Where it serves Prometheus metrics, if it does.
    metrics: Option<String>,
    /// More settings, as flags.
    flags: Vec<String>,
}

impl Node {
    fn start(&mut self, peers: &str, brokers: &str) {
        let log = std::fs::File::create(self.data.with_extension(format!("log.{}", now_ms()))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_mini-pubsub"))
            .args(["serve", "--listen", &self.client, "--node-id", &self.id.to_string(), "--peers", peers])
            .args(["--brokers", brokers])
            .args(self.metrics.iter().flat_map(|m| ["--metrics-listen", m.as_str()]))
            .args(&self.flags)
            .arg("--data-dir")
            .arg(&self.data)
            .env("RUST_LOG", "info,openraft=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the binary starts");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn terminate(&mut self) {
        let mut child = self.child.take().expect("running");
        let sent = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(sent.success());
        let exit = common::exit_within(&mut child, Duration::from_secs(15)).await;
        assert!(exit.is_some_and(|e| e.success()), "node {} stops cleanly on SIGTERM: {exit:?}", self.id);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

#[allow(clippy::disallowed_methods, reason = "names log files apart; not a measurement")]
fn now_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
}

/// A free port on 127.0.0.1 (bound and released: the node binds it again at once), below
/// the range the OS takes ports for outgoing connections from: a node restarted on its
/// port must find it free, and an outgoing connection made meanwhile (a peer's, a client's)
/// could hold a port of that range. Ports are handed out once per test process.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let ephemeral_low = range.split_whitespace().next().and_then(|p| p.parse::<u16>().ok()).unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.saturating_sub(1).max(10_001));
    // Each test process starts at its own place in the range, so two runs at once rarely meet.
    let span = high - low;
    let _ = NEXT.compare_exchange(
        0,
        low + (std::process::id() % u32::from(span)) as u16,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let mut port = NEXT.fetch_add(1, Ordering::SeqCst);
        if port >= high {
            port = low + (port - low) % span;
            NEXT.store(port + 1, Ordering::SeqCst);
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn lazy(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}")).unwrap().timeout(Duration::from_secs(2)).connect_lazy()
}

/// The cluster as node `addr` sees it, if it answers.
async fn cluster_at(addr: &str) -> Option<pb::Cluster> {
    let mut admin = AdminClient::new(lazy(addr));
    admin.get_cluster(pb::GetClusterRequest {}).await.ok().map(tonic::Response::into_inner)
}

/// Waits until a node serves as leader; its id.
async fn leader(nodes: &[Node]) -> u64 {
    tokio::time::timeout(WAIT_MAX, async {
        loop {
            for node in nodes.iter().filter(|n| n.child.is_some()) {
                if cluster_at(&node.client).await.is_some_and(|c| c.serving) {
                    return node.id;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a leader within the bound")
}

/// Waits until every running node applied what the cluster committed, and all agree.
async fn settled(nodes: &[Node]) {
    tokio::time::timeout(WAIT_MAX, async {
        loop {
            let mut seen = Vec::new();
            for node in nodes {
                seen.push(cluster_at(&node.client).await.map(|c| (c.committed_index, c.applied_index)));
            }
            let first = seen[0];
            if first.is_some_and(|(c, a)| c == a && c > 0) && seen.iter().all(|s| *s == first) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("every node applies everything committed within the bound");
}

/// Where an acknowledged message was stored, and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Acked {
    partition: u32,
    offset: u64,
    value: Vec<u8>,
}

/// Publishes one message at a time with its own idempotency key, to whichever node leads:
/// a refusal naming the leader is followed there, any other failure retries the same key
/// on the next node. Stops at `stop` or after `MESSAGES_MAX`.
async fn publisher(
    index: usize,
    addrs: Vec<String>,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeMap<String, Acked>>>,
) {
    let mut target = 0;
    let mut client = PubSubClient::new(lazy(&addrs[target]));
    for n in 0..MESSAGES_MAX {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let key = format!("p{index}-{n}");
        let value = format!("value of {key}").into_bytes();
        let request = pb::PublishRequest {
            topic: "orders".into(),
            value: value.clone().into(),
            key: Some(format!("k{}", n % 7)),
            idempotency_key: Some(key.clone()),
            ..Default::default()
        };
        // Bounded: a message that no node takes within the attempts fails the test.
        for attempt in 0.. {
            assert!(attempt < ATTEMPTS_MAX, "{key} was not acknowledged in {ATTEMPTS_MAX} attempts");
            match client.publish(request.clone()).await {
                Ok(response) => {
                    let result = &response.into_inner().results[0];
                    let place = Acked { partition: result.partition, offset: result.offset, value: value.clone() };
                    let before = acked.lock().unwrap().insert(key.clone(), place);
                    assert!(before.is_none());
                    break;
                }
                Err(status) => {
                    let hinted = status.metadata().get("leader-addr").and_then(|v| v.to_str().ok());
                    target = match hinted.and_then(|a| addrs.iter().position(|x| x == a)) {
                        Some(leader) => leader,
                        None => (target + 1) % addrs.len(),
                    };
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    client = PubSubClient::new(lazy(&addrs[target]));
                }
            }
        }
    }
}

/// A record as a node stored it: its offset, value and idempotency key.
type StoredRecord = (u64, Vec<u8>, Option<String>);

/// Each topic's records on a stopped node, read from its broker state: topic name →
/// partitions → (offset, value, idempotency key).
fn records_on(data: &Path) -> BTreeMap<String, Vec<Vec<StoredRecord>>> {
    let storage = FileStorage::open(Arc::new(StdFs), FileStorageConfig::new(data.join("state"))).unwrap();
    let broker = Broker::open(BrokerConfig::default(), Box::new(storage)).unwrap();
    let state: serde_json::Value = serde_json::from_slice(&broker.snapshot(usize::MAX).unwrap()).unwrap();
    let mut topics = BTreeMap::new();
    for topic in state["topics"].as_array().unwrap() {
        let mut partitions = Vec::new();
        for partition in topic["partitions"].as_array().unwrap() {
            let start = partition["start"].as_u64().unwrap();
            let records = partition["records"].as_array().unwrap();
            let records = records.iter().enumerate().map(|(i, r)| {
                let value = base64::engine::general_purpose::STANDARD.decode(r["value"].as_str().unwrap()).unwrap();
                (start + i as u64, value, r["idempotency_key"].as_str().map(str::to_string))
            });
            partitions.push(records.collect());
        }
        topics.insert(topic["name"].as_str().unwrap().to_string(), partitions);
    }
    topics
}

/// Three nodes on fresh ports and directories under `dir`, started; the peers and brokers
/// settings they run with.
fn cluster(dir: &Path) -> (Vec<Node>, String, String) {
    cluster_with(dir, &[])
}

/// [`cluster`], each node with `flags` too.
fn cluster_with(dir: &Path, flags: &[&str]) -> (Vec<Node>, String, String) {
    let mut nodes: Vec<Node> = (1..=3)
        .map(|id| Node {
            id,
            client: format!("127.0.0.1:{}", free_port()),
            data: dir.join(format!("node-{id}")),
            child: None,
            metrics: Some(format!("127.0.0.1:{}", free_port())),
            flags: flags.iter().map(|f| f.to_string()).collect(),
        })
        .collect();
    let peer_ports: Vec<u16> = nodes.iter().map(|_| free_port()).collect();
    let peers: Vec<String> = nodes.iter().zip(&peer_ports).map(|(n, p)| format!("{}=127.0.0.1:{p}", n.id)).collect();
    let peers = peers.join(",");
    let brokers: Vec<String> = nodes.iter().map(|n| format!("{}={}", n.id, n.client)).collect();
    let brokers = brokers.join(",");
    for node in &mut nodes {
        node.start(&peers, &brokers);
    }
    (nodes, peers, brokers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_delivers_from_where_the_old_one_was_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, _peers, _brokers) = cluster(dir.path());
    let first = leader(&nodes).await;
    let addr = nodes[first as usize - 1].client.clone();
    let mut admin = AdminClient::new(lazy(&addr));
    let mut pubsub = PubSubClient::new(lazy(&addr));
    admin
        .create_topic(pb::CreateTopicRequest { name: "jobs".into(), partitions: 1, ..Default::default() })
        .await
        .unwrap();
    let subscription =
        pb::CreateSubscriptionRequest { name: "workers".into(), topic: "jobs".into(), ..Default::default() };
    admin.create_subscription(subscription).await.unwrap();
    let messages: Vec<pb::OutgoingMessage> = (0..200)
        .map(|i| pb::OutgoingMessage { value: format!("job-{i}").into_bytes().into(), ..Default::default() })
        .collect();
    pubsub.publish(pb::PublishRequest { topic: "jobs".into(), messages, ..Default::default() }).await.unwrap();
    let audit = pb::CreateSubscriptionRequest { name: "audit".into(), topic: "jobs".into(), ..Default::default() };
    admin.create_subscription(audit).await.unwrap();
    // The old leader's first leases: a new leader's first ones, on the same messages, must
    // not take the same ack ids.
    let audited = pubsub.pull(pb::PullRequest { subscription: "audit".into(), max_messages: 10 }).await.unwrap();
    let audited = audited.into_inner().received_messages;
    let pulled = pubsub.pull(pb::PullRequest { subscription: "workers".into(), max_messages: 200 }).await.unwrap();
    let pulled = pulled.into_inner().received_messages;
    assert_eq!(pulled.len(), 200);
    let ack_ids = pulled[..150].iter().map(|m| m.ack_id.clone()).collect();
    pubsub.ack(pb::AckRequest { subscription: "workers".into(), ack_ids }).await.unwrap();
    // The leader proposes its ack progress every 100 ms: wait until every node applied an
    // entry past those the acks were made after.
    applied_everywhere(&nodes, &addr).await;

    nodes[first as usize - 1].kill();
    let second = leader(&nodes).await;
    let mut pubsub = PubSubClient::new(lazy(&nodes[second as usize - 1].client));
    let mut admin = AdminClient::new(lazy(&nodes[second as usize - 1].client));
    let audited_again = pubsub.pull(pb::PullRequest { subscription: "audit".into(), max_messages: 10 }).await.unwrap();
    let audited_again = audited_again.into_inner().received_messages;
    assert_eq!(
        audited_again.iter().map(common::value).collect::<Vec<_>>(),
        audited.iter().map(common::value).collect::<Vec<_>>()
    );
    let old_ids: Vec<String> = audited.iter().map(|m| m.ack_id.clone()).collect();
    let answered = pubsub.ack(pb::AckRequest { subscription: "audit".into(), ack_ids: old_ids }).await.unwrap();
    let results: Vec<i32> = answered.into_inner().confirmations.iter().map(|c| c.result).collect();
    assert!(results.iter().all(|r| *r == pb::AckResult::Expired as i32), "old ack ids apply to nothing: {results:?}");
    let stats = admin.get_subscription_stats(pb::GetSubscriptionStatsRequest { name: "audit".into() });
    assert_eq!(stats.await.unwrap().into_inner().outstanding, 10, "the new leases stand");
    let again = pubsub.pull(pb::PullRequest { subscription: "workers".into(), max_messages: 200 }).await.unwrap();
    let again = again.into_inner().received_messages;
    let values: Vec<String> = again.iter().map(common::value).collect();
    let unacked: Vec<String> = (150..200).map(|i| format!("job-{i}")).collect();
    assert_eq!(values, unacked, "node {second} delivers what node {first} had not seen acknowledged, and only that");

    // The old leader's ack ids name none of the new leader's leases: nothing is acked by them.
    let old_ids: Vec<String> = pulled[150..].iter().map(|m| m.ack_id.clone()).collect();
    let answered = pubsub.ack(pb::AckRequest { subscription: "workers".into(), ack_ids: old_ids }).await.unwrap();
    let results: Vec<i32> = answered.into_inner().confirmations.iter().map(|c| c.result).collect();
    assert!(results.iter().all(|r| *r == pb::AckResult::Expired as i32), "{results:?}");
    let stats = admin.get_subscription_stats(pb::GetSubscriptionStatsRequest { name: "workers".into() });
    assert_eq!(stats.await.unwrap().into_inner().outstanding, 50, "the new leases stand");
    let new_ids: Vec<String> = again.iter().map(|m| m.ack_id.clone()).collect();
    pubsub.ack(pb::AckRequest { subscription: "workers".into(), ack_ids: new_ids }).await.unwrap();
}

/// Waits until every running node applied an entry past the last one the node at `addr`
/// has in its log now (ack progress is proposed every 100 ms, so what was done before is
/// then applied everywhere).
async fn applied_everywhere(nodes: &[Node], addr: &str) {
    let now_at = cluster_at(addr).await.unwrap().last_log_index;
    let mut seen = Vec::new();
    let waited = tokio::time::timeout(WAIT_MAX, async {
        loop {
            seen.clear();
            for node in nodes.iter().filter(|n| n.child.is_some()) {
                seen.push((node.id, cluster_at(&node.client).await));
            }
            if seen.iter().all(|(_, c)| c.as_ref().is_some_and(|c| c.applied_index > now_at)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if waited.is_err() {
        // What each node said last, and what each logged: a failure here says why.
        let logs = nodes.first().and_then(|n| n.data.parent()).map(node_logs).unwrap_or_default();
        let tails: Vec<String> = logs
            .iter()
            .map(|(id, log)| {
                let lines: Vec<&str> = log.lines().collect();
                format!("node {id}:\n{}", lines[lines.len().saturating_sub(40)..].join("\n"))
            })
            .collect();
        panic!(
            "not every running node applied past entry {now_at} (the last in {addr}'s log) within {WAIT_MAX:?}: \
             {seen:#?}\n{}",
            tails.join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_and_a_redrive_are_on_every_node_when_the_leader_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, _peers, _brokers) = cluster(dir.path());
    let first = leader(&nodes).await;
    let addr = nodes[first as usize - 1].client.clone();
    let mut admin = AdminClient::new(lazy(&addr));
    let mut pubsub = PubSubClient::new(lazy(&addr));
    for topic in ["orders", "orders-dlq"] {
        let create = pb::CreateTopicRequest { name: topic.into(), partitions: 1, ..Default::default() };
        admin.create_topic(create).await.unwrap();
    }
    let policy = pb::DeadLetterPolicy { dead_letter_topic: "orders-dlq".into(), max_delivery_attempts: 5 };
    let work = pb::CreateSubscriptionRequest {
        name: "work".into(),
        topic: "orders".into(),
        dead_letter_policy: Some(policy),
        ..Default::default()
    };
    admin.create_subscription(work).await.unwrap();
    for name in ["dead", "audit"] {
        let sub = pb::CreateSubscriptionRequest { name: name.into(), topic: "orders-dlq".into(), ..Default::default() };
        admin.create_subscription(sub).await.unwrap();
    }
    let messages: Vec<pb::OutgoingMessage> = (0..10)
        .map(|i| pb::OutgoingMessage { value: format!("order-{i}").into_bytes().into(), ..Default::default() })
        .collect();
    pubsub.publish(pb::PublishRequest { topic: "orders".into(), messages, ..Default::default() }).await.unwrap();
    let pulled = pubsub.pull(pb::PullRequest { subscription: "work".into(), max_messages: 10 }).await.unwrap();
    let pulled = pulled.into_inner().received_messages;
    let (bad, good): (Vec<_>, Vec<_>) = pulled.iter().partition(|m| common::value(m).ends_with(['3', '7']));
    let nack = pb::NackRequest {
        subscription: "work".into(),
        ack_ids: bad.iter().map(|m| m.ack_id.clone()).collect(),
        reason: "unknown customer".into(),
        terminal: true,
        ..Default::default()
    };
    pubsub.nack(nack).await.unwrap();
    let ack_ids = good.iter().map(|m| m.ack_id.clone()).collect();
    pubsub.ack(pb::AckRequest { subscription: "work".into(), ack_ids }).await.unwrap();
    // The moves and the ack progress commit, then are applied everywhere.
    tokio::time::sleep(Duration::from_millis(300)).await;
    applied_everywhere(&nodes, &addr).await;

    nodes[first as usize - 1].kill();
    let second = leader(&nodes).await;
    let addr = nodes[second as usize - 1].client.clone();
    let mut pubsub = PubSubClient::new(lazy(&addr));
    let mut admin = AdminClient::new(lazy(&addr));
    let copies = pubsub.pull(pb::PullRequest { subscription: "audit".into(), max_messages: 10 }).await.unwrap();
    let copies = copies.into_inner().received_messages;
    let values: Vec<String> = copies.iter().map(common::value).collect();
    assert_eq!(values, ["order-3", "order-7"], "node {second} holds the copies node {first} made");
    let copy = copies[0].message.as_ref().unwrap();
    assert_eq!(copy.attributes["dead_letter_detail"], "nacked: unknown customer");
    let stats = admin.get_subscription_stats(pb::GetSubscriptionStatsRequest { name: "work".into() });
    let stats = stats.await.unwrap().into_inner();
    assert_eq!((stats.backlog, stats.dead_lettered), (0, 2), "nothing of `work` is delivered again");

    let redrive = pb::RedriveDeadLettersRequest { subscription: "dead".into(), max_messages: 0 };
    let results = admin.redrive_dead_letters(redrive).await.unwrap().into_inner().results;
    assert!(results.iter().all(|r| r.redriven), "{results:?}");
    assert_eq!(results.iter().map(|r| r.offset).collect::<Vec<_>>(), [3, 7]);
    // The node that was killed first comes back; the second leader is killed: the third has
    // the messages back too.
    let (peers, brokers) = (_peers, _brokers);
    nodes[first as usize - 1].start(&peers, &brokers);
    applied_everywhere(&nodes, &addr).await;
    nodes[second as usize - 1].kill();
    let third = leader(&nodes).await;
    let mut pubsub = PubSubClient::new(lazy(&nodes[third as usize - 1].client));
    let back = pubsub.pull(pb::PullRequest { subscription: "work".into(), max_messages: 10 }).await.unwrap();
    let back = back.into_inner().received_messages;
    let values: Vec<String> = back.iter().map(common::value).collect();
    assert_eq!(values, ["order-3", "order-7"], "node {third} delivers the redriven messages, and only those");
    let dead = pubsub.pull(pb::PullRequest { subscription: "dead".into(), max_messages: 10 }).await.unwrap();
    assert!(dead.into_inner().received_messages.is_empty(), "the redriven copies are done on node {third}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_lose_nothing_acknowledged_when_the_leader_is_killed_three_times() {
    let dir = tempfile::tempdir().unwrap();
    // Snapshots every 100 entries or more, so each killed leader restarts on its snapshot
    // and the log after it, and a node that was down may be sent the leader's.
    let (mut nodes, peers, brokers) = cluster_with(dir.path(), &["--snapshot-entries", "100"]);
    let first = leader(&nodes).await;
    let mut admin = AdminClient::new(lazy(&nodes[first as usize - 1].client));
    let topic = pb::CreateTopicRequest { name: "orders".into(), partitions: 3, ..Default::default() };
    admin.create_topic(topic).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let addrs: Vec<String> = nodes.iter().map(|n| n.client.clone()).collect();
    let publishers: Vec<_> =
        (0..PUBLISHERS).map(|i| tokio::spawn(publisher(i, addrs.clone(), stop.clone(), acked.clone()))).collect();

    let mut killed = Vec::new();
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut victim = leader(&nodes).await;
        if killed.contains(&victim) {
            // Each kill takes a node not killed yet: hand it the leadership first.
            let next = nodes.iter().map(|n| n.id).find(|id| !killed.contains(id)).unwrap();
            let channel = Channel::from_shared(format!("http://{}", nodes[victim as usize - 1].client)).unwrap();
            // TransferLeadership answers within 5 s.
            let mut admin = AdminClient::new(channel.timeout(Duration::from_secs(10)).connect_lazy());
            admin.transfer_leadership(pb::TransferLeadershipRequest { node_id: next }).await.unwrap();
            victim = leader(&nodes).await;
            assert_eq!(victim, next, "round {round}: the leadership went where it was handed");
        }
        let before = acked.lock().unwrap().len();
        nodes[victim as usize - 1].kill();
        killed.push(victim);
        let after = leader(&nodes).await;
        assert_ne!(after, victim);
        tokio::time::sleep(Duration::from_millis(500)).await;
        nodes[victim as usize - 1].start(&peers, &brokers);
        let now = acked.lock().unwrap().len();
        eprintln!("round {round}: killed leader {victim}, {after} leads; {before} acknowledged before, {now} now");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for publisher in publishers {
        publisher.await.unwrap();
    }
    killed.sort_unstable();
    assert_eq!(killed, vec![1, 2, 3], "each node was killed once while it led");

    settled(&nodes).await;
    for node in &mut nodes {
        node.terminate().await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 100, "the load got through: {} acknowledged", acked.len());
    let stored: Vec<_> = nodes.iter().map(|n| records_on(&n.data)).collect();
    for (node, records) in nodes.iter().zip(&stored) {
        let orders = &records["orders"];
        for (key, place) in &acked {
            let partition = &orders[place.partition as usize];
            let found = partition.iter().find(|(offset, _, _)| *offset == place.offset);
            let expected = (place.offset, place.value.clone(), Some(key.clone()));
            assert_eq!(found, Some(&expected), "node {}: {key} where it was acknowledged", node.id);
        }
        let total: usize = orders.iter().map(Vec::len).sum();
        assert_eq!(total, acked.len(), "node {}: each acknowledged message once, nothing else", node.id);
    }
    assert_eq!(stored[0], stored[1], "nodes 1 and 2 hold the same records at every offset");
    assert_eq!(stored[0], stored[2], "nodes 1 and 3 hold the same records at every offset");
    // The runs above went through snapshots: each node took some, and a restart began on one.
    let logs = node_logs(dir.path());
    for node in &nodes {
        let saved = logs.iter().filter(|(id, text)| *id == node.id && text.contains("snapshot saved")).count();
        assert!(saved > 0, "node {} took no snapshot", node.id);
    }
    let restored = "the broker's state was restored from this node's checkpoint";
    assert!(logs.iter().any(|(_, text)| text.contains(restored)), "no node restarted on its snapshot");
}

/// A follower down while the leader snapshots and purges its log is sent the leader's whole
/// state when it comes back (its log behind the purge point is gone), installs it, and then
/// holds every record at the leader's offsets. Restarted once more, it starts on its own
/// checkpoint. Snapshots are taken every 50 entries or more, 50 kept behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_purged_log_gets_the_whole_state_and_restarts_on_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, peers, brokers) = cluster_with(dir.path(), &["--snapshot-entries", "50"]);
    let first = leader(&nodes).await;
    let addr = nodes[first as usize - 1].client.clone();
    let topic = pb::CreateTopicRequest { name: "orders".into(), partitions: 2, ..Default::default() };
    AdminClient::new(lazy(&addr)).create_topic(topic).await.unwrap();
    let behind = nodes.iter().map(|n| n.id).find(|id| *id != first).unwrap();
    nodes[behind as usize - 1].kill();

    // 400 entries of 10 messages each, 1 KiB apiece: several snapshots, the log purged.
    let mut pubsub = PubSubClient::new(lazy(&addr));
    for batch in 0..400 {
        let messages = (0..10)
            .map(|i| pb::OutgoingMessage {
                value: format!("{batch}-{i}:{}", "x".repeat(1000)).into_bytes().into(),
                idempotency_key: Some(format!("b{batch}-{i}")),
                ..Default::default()
            })
            .collect();
        pubsub.publish(pb::PublishRequest { topic: "orders".into(), messages, ..Default::default() }).await.unwrap();
    }
    nodes[behind as usize - 1].start(&peers, &brokers);
    applied_everywhere(&nodes, &addr).await;
    let logs = node_logs(dir.path());
    let said = |id: u64, text: &str| logs.iter().any(|(n, log)| *n == id && log.contains(text));
    assert!(said(first, "whole state taken for a follower"), "the leader sent its state");
    assert!(said(behind, "snapshot installed"), "node {behind} installed the leader's state");

    // Once more: the node that caught up restarts on its own checkpoint.
    nodes[behind as usize - 1].terminate().await;
    nodes[behind as usize - 1].start(&peers, &brokers);
    applied_everywhere(&nodes, &addr).await;
    let logs = node_logs(dir.path());
    let restored = "the broker's state was restored from this node's checkpoint";
    assert!(logs.iter().any(|(n, log)| *n == behind && log.contains(restored)), "node {behind} restarted on it");

    for node in &mut nodes {
        node.terminate().await;
    }
    let stored: Vec<_> = nodes.iter().map(|n| records_on(&n.data)).collect();
    let total: usize = stored[0]["orders"].iter().map(Vec::len).sum();
    assert_eq!(total, 4000, "every message once");
    assert_eq!(stored[0], stored[1], "nodes 1 and 2 hold the same records at every offset");
    assert_eq!(stored[0], stored[2], "nodes 1 and 3 hold the same records at every offset");
}

/// A node asks for a snapshot once 64 MiB of proposals were applied since its last, though
/// far fewer entries than `snapshot_entries` were: its Raft log, kept in memory until a
/// snapshot lets it purge, is bounded by bytes too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_snapshots_after_64_mib_of_proposals_whatever_the_entry_count() {
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, _, _) = cluster_with(dir.path(), &["--snapshot-entries", "1000000"]);
    let first = leader(&nodes).await;
    let addr = nodes[first as usize - 1].client.clone();
    let topic = pb::CreateTopicRequest { name: "large".into(), partitions: 1, ..Default::default() };
    AdminClient::new(lazy(&addr)).create_topic(topic).await.unwrap();
    // 72 entries of 1 MiB each (4 messages of 256 KiB).
    let mut pubsub = PubSubClient::new(lazy(&addr));
    for batch in 0..72 {
        let messages = (0..4)
            .map(|i| pb::OutgoingMessage {
                value: format!("{batch}-{i}:{}", "x".repeat(256 << 10)).into_bytes().into(),
                ..Default::default()
            })
            .collect();
        pubsub.publish(pb::PublishRequest { topic: "large".into(), messages, ..Default::default() }).await.unwrap();
    }
    let saved = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let logs = node_logs(dir.path());
            if nodes.iter().all(|n| logs.iter().any(|(id, log)| *id == n.id && log.contains("snapshot saved"))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    for node in &mut nodes {
        node.terminate().await;
    }
    assert!(saved.is_ok(), "every node took a snapshot after 72 MiB in 72 entries");
}

/// Every node log under `dir`, with the node's id: `node-ID.log.MS`.
fn node_logs(dir: &Path) -> Vec<(u64, String)> {
    let mut logs = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(id) = name.strip_prefix("node-").and_then(|rest| rest.split('.').next()) else { continue };
        if name.contains(".log.") {
            logs.push((id.parse().unwrap(), std::fs::read_to_string(entry.path()).unwrap()));
        }
    }
    logs
}

/// Whether process `pid` still runs (`kill -0`).
fn running(pid: &str) -> bool {
    Command::new("kill").args(["-0", pid]).stderr(Stdio::null()).status().unwrap().success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_cluster_starts_three_nodes_in_one_command_and_stops_each_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    // Ports far from the defaults, and below Linux's ephemeral range (32768 and up), from
    // which the system picks other tests' ports: one of those taking a node's port here
    // made the node exit, and no leader was named.
    let base = 20000 + (std::process::id() % 800) as u16 * 10;
    let mut child = Command::new(env!("CARGO_BIN_EXE_mini-pubsub"))
        .args(["dev-cluster", "--nodes", "3", "--base-port", &base.to_string(), "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.starts_with("Ctrl-C stops")) {
        lines.push(rx.recv_timeout(WAIT_MAX).expect("dev-cluster prints its nodes and leader in time"));
    }
    let pids: Vec<String> = lines
        .iter()
        .filter(|l| l.starts_with("node ") && l.contains(" pid "))
        .map(|l| l.split_whitespace().nth(3).unwrap().to_string())
        .collect();
    assert_eq!(pids.len(), 3, "{lines:?}");
    let leads = lines.iter().find(|l| l.contains(" leads; send calls to "));
    let leads = leads.unwrap_or_else(|| panic!("a leader is named: {lines:?}"));
    let addr = leads.split_whitespace().nth(6).unwrap();
    let cluster = cluster_at(addr).await.expect("the leader answers");
    assert!(cluster.serving, "{cluster:?}");
    assert_eq!(cluster.nodes.len(), 3);
    assert!(pids.iter().all(|p| running(p)));

    let sent = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(sent.success());
    let exit = common::exit_within(&mut child, Duration::from_secs(20)).await;
    assert!(exit.is_some_and(|e| e.success()), "dev-cluster ends cleanly: {exit:?}");
    let last = rx.recv_timeout(Duration::from_secs(1)).unwrap_or_default();
    assert_eq!(last, "stopped 3 nodes");
    assert!(pids.iter().all(|p| !running(p)), "every node it started has stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_library_given_every_broker_follows_the_leader_through_a_kill() {
    use mini_pubsub::client::{Client, OutgoingMessage, PublisherSettings, SubscribeTarget, SubscriberSettings};
    use tokio_stream::StreamExt;

    const MESSAGES: usize = 600;
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, _peers, _brokers) = cluster(dir.path());
    let first = leader(&nodes).await;
    // The list starts with a follower: the client finds the leader by itself.
    let mut urls: Vec<String> = nodes.iter().map(|n| format!("http://{}", n.client)).collect();
    urls.rotate_left(first as usize % 3);
    let client = Client::connect(urls.join(",")).await.unwrap();
    client
        .create_topic("events", &mini_pubsub::client::TopicSettings { partitions: Some(2), ..Default::default() })
        .await
        .unwrap();
    let settings = mini_pubsub::client::SubscriptionSettings::default();
    client.create_subscription("readers", "events", &settings).await.unwrap();
    let mut subscriber =
        client.subscribe(SubscribeTarget::subscription("readers"), SubscriberSettings::default()).await.unwrap();
    let received = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
    let reader = {
        let received = received.clone();
        tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                let message = message.unwrap();
                received.lock().unwrap().insert(message.value_lossy().into_owned());
                message.ack().await;
                if received.lock().unwrap().len() == MESSAGES {
                    break;
                }
            }
            subscriber.shutdown().await.unwrap();
        })
    };

    let publisher = client.publisher("events", PublisherSettings::default()).unwrap();
    let mut results = Vec::new();
    for i in 0..MESSAGES {
        if i == MESSAGES / 3 {
            nodes[first as usize - 1].kill();
        }
        let handle = publisher.publish(OutgoingMessage::new(format!("m{i}"))).await.unwrap();
        results.push(handle);
        if i % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for (i, handle) in results.into_iter().enumerate() {
        handle.await.unwrap_or_else(|e| panic!("m{i} was not acknowledged: {e}"));
    }
    publisher.shutdown().await.unwrap();
    tokio::time::timeout(WAIT_MAX, reader).await.expect("every message is received within the bound").unwrap();
    let expected: std::collections::BTreeSet<String> = (0..MESSAGES).map(|i| format!("m{i}")).collect();
    assert_eq!(*received.lock().unwrap(), expected);
}

/// The value of the unlabelled series `name` in node `addr`'s /metrics.
async fn scrape(addr: &str, name: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    conn.read_to_string(&mut response).await.ok()?;
    response.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_exports_its_raft_state_in_prometheus() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, _peers, _brokers) = cluster(dir.path());
    let first = leader(&nodes).await;
    let mut pubsub = PubSubClient::new(lazy(&nodes[first as usize - 1].client));
    for i in 0..10 {
        let request =
            pb::PublishRequest { topic: "t".into(), value: format!("{i}").into_bytes().into(), ..Default::default() };
        pubsub.publish(request).await.unwrap();
    }
    let leader_metrics = nodes[first as usize - 1].metrics.clone().unwrap();
    let follower = nodes.iter().find(|n| n.id != first).unwrap();
    let follower_metrics = follower.metrics.clone().unwrap();
    // Gauges are refreshed within 200 ms of a change.
    let expected = [
        (&leader_metrics, "mini_pubsub_raft_serving", 1.0),
        (&leader_metrics, "mini_pubsub_raft_leader", first as f64),
        (&follower_metrics, "mini_pubsub_raft_serving", 0.0),
        (&follower_metrics, "mini_pubsub_raft_leader", first as f64),
        (&follower_metrics, "mini_pubsub_raft_apply_lag_entries", 0.0),
    ];
    for (addr, name, value) in expected {
        let mut seen = None;
        for _ in 0..100 {
            seen = scrape(addr, name).await;
            if seen == Some(value) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(seen, Some(value), "{name} at {addr}");
    }
    let at_least = [
        (&leader_metrics, "mini_pubsub_raft_term", 1.0),
        // A blank entry, the membership, the topic's creation and ten publishes.
        (&follower_metrics, "mini_pubsub_raft_applied_index", 11.0),
        (&leader_metrics, "mini_pubsub_raft_propose_seconds_count", 10.0),
        (&leader_metrics, "mini_pubsub_raft_log_fsync_seconds_count", 10.0),
        (&follower_metrics, "mini_pubsub_raft_log_fsync_seconds_count", 10.0),
    ];
    for (addr, name, least) in at_least {
        let mut seen = None;
        for _ in 0..100 {
            seen = scrape(addr, name).await;
            if seen.is_some_and(|v| v >= least) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(seen.is_some_and(|v| v >= least), "{name} at {addr}: {seen:?}, expected at least {least}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_loses_its_quorum_stops_taking_writes_and_says_so_in_health() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, peers, brokers) = cluster(dir.path());
    let first = leader(&nodes).await;
    let addr = nodes[first as usize - 1].client.clone();
    let mut pubsub = PubSubClient::new(lazy(&addr));
    let publish = || pb::PublishRequest { topic: "t".into(), value: b"v".to_vec().into(), ..Default::default() };
    pubsub.publish(publish()).await.unwrap();
    let health = |addr: String| async move {
        let request = HealthCheckRequest { service: "pubsub.PubSub".into() };
        HealthClient::new(lazy(&addr)).check(request).await.map(|r| r.into_inner().status)
    };
    assert_eq!(health(addr.clone()).await.unwrap(), ServingStatus::Serving as i32);

    for node in nodes.iter_mut().filter(|n| n.id != first) {
        node.kill();
    }
    // Within the election timeout (300 ms at most) it knows it heard from no quorum. A
    // publish it accepted before that waits for a quorum (the client's 2 s timeout ends it):
    // its fate is unknown, and it may be stored once the quorum is back.
    let mut refused = None;
    let mut unknown = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        match pubsub.publish(publish()).await {
            Err(status) if status.code() == tonic::Code::Unavailable => {
                refused = Some(status);
                break;
            }
            Err(_) => unknown += 1,
            Ok(_) => panic!("a write was acknowledged without a quorum"),
        }
    }
    let refused = refused.expect("writes are refused once the quorum is gone");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("not the cluster's leader"), "{}", refused.message());
    let cluster = cluster_at(&addr).await.unwrap();
    assert!(!cluster.serving, "{cluster:?}");
    let mut status = None;
    for _ in 0..20 {
        status = health(addr.clone()).await.ok();
        if status == Some(ServingStatus::NotServing as i32) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, Some(ServingStatus::NotServing as i32), "health says it takes no calls");

    // A quorum back: writes go on, and nothing acknowledged before was lost.
    for node in nodes.iter_mut().filter(|n| n.id != first) {
        node.start(&peers, &brokers);
    }
    let back = leader(&nodes).await;
    let mut pubsub = PubSubClient::new(lazy(&nodes[back as usize - 1].client));
    let stored = pubsub.publish(publish()).await.unwrap().into_inner();
    let offset = stored.results[0].offset;
    assert!(
        (1..=1 + unknown).contains(&offset),
        "the first write is there, the refused ones are not: offset {offset}, {unknown} of unknown fate"
    );
}

/// Whether a Raft Vote call on `endpoint` reached the service (which refuses the empty
/// request) rather than failing in the transport.
async fn vote_reaches_the_service(endpoint: tonic::transport::Endpoint) -> Result<(), String> {
    use mini_pubsub::cluster::pb::raft_client::RaftClient;
    let channel = endpoint.timeout(Duration::from_secs(5)).connect_lazy();
    let answer = RaftClient::new(channel).vote(mini_pubsub::cluster::pb::VoteRequest::default()).await;
    match answer {
        // The service's own refusal of a request without a vote.
        Err(status) if status.code() == tonic::Code::InvalidArgument && status.message() == "vote: not set" => Ok(()),
        Ok(_) => Err("an empty vote request was answered".to_string()),
        Err(status) => Err(format!("{:?}: {}", status.code(), status.message())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_peer_tls_the_nodes_replicate_over_mutual_tls_and_the_peer_port_refuses_anyone_else() {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    mini_pubsub::certs::write_dev(&certs).unwrap();
    let file = |name: &str| certs.join(name).to_str().unwrap().to_string();
    let (cert, key, ca) = (
        file(mini_pubsub::certs::PEER_CERT),
        file(mini_pubsub::certs::PEER_KEY),
        file(mini_pubsub::certs::CLUSTER_CA_CERT),
    );
    let flags = ["--peer-tls-cert", &cert, "--peer-tls-key", &key, "--peer-tls-ca", &ca];
    let (mut nodes, peers, _brokers) = cluster_with(dir.path(), &flags);
    let first = leader(&nodes).await;
    let addr = nodes[first as usize - 1].client.clone();
    let messages: Vec<pb::OutgoingMessage> = (0..50)
        .map(|i| pb::OutgoingMessage { value: format!("m-{i}").into_bytes().into(), ..Default::default() })
        .collect();
    let request = pb::PublishRequest { topic: "secure".into(), messages, ..Default::default() };
    PubSubClient::new(lazy(&addr)).publish(request).await.unwrap();
    settled(&nodes).await;
    // The two others elect a new leader over TLS, which takes writes.
    nodes[first as usize - 1].kill();
    let second = leader(&nodes).await;
    let request = pb::PublishRequest { topic: "secure".into(), value: b"after".to_vec().into(), ..Default::default() };
    PubSubClient::new(lazy(&nodes[second as usize - 1].client)).publish(request).await.unwrap();

    let peer = peers.split(',').find_map(|p| p.strip_prefix(&format!("{second}="))).unwrap().to_string();
    let pem = |path: &str| std::fs::read(path).unwrap();
    let trusting = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem(&ca)));
    let https = || Endpoint::from_shared(format!("https://{peer}")).unwrap();
    // A node's own certificate gets through (the control)...
    let node = https().tls_config(trusting.clone().identity(Identity::from_pem(pem(&cert), pem(&key)))).unwrap();
    vote_reaches_the_service(node).await.unwrap();
    // ...plaintext, TLS without a client certificate, and a certificate of another CA do not.
    let plaintext = Endpoint::from_shared(format!("http://{peer}")).unwrap();
    assert!(vote_reaches_the_service(plaintext).await.is_err(), "plaintext reached the Raft service");
    let anonymous = https().tls_config(trusting.clone()).unwrap();
    assert!(vote_reaches_the_service(anonymous).await.is_err(), "a client without a certificate got in");
    // The gRPC port's client certificate (another CA: the cluster's is its own) does not either.
    let client =
        Identity::from_pem(pem(&file(mini_pubsub::certs::CLIENT_CERT)), pem(&file(mini_pubsub::certs::CLIENT_KEY)));
    let client = https().tls_config(trusting.clone().identity(client)).unwrap();
    assert!(vote_reaches_the_service(client).await.is_err(), "a gRPC client certificate got in");
    let other = dir.path().join("other-certs");
    mini_pubsub::certs::write_dev(&other).unwrap();
    let stranger = Identity::from_pem(
        std::fs::read(other.join(mini_pubsub::certs::PEER_CERT)).unwrap(),
        std::fs::read(other.join(mini_pubsub::certs::PEER_KEY)).unwrap(),
    );
    let stranger = https().tls_config(trusting.identity(stranger)).unwrap();
    assert!(vote_reaches_the_service(stranger).await.is_err(), "another CA's certificate got in");
}

#[tokio::test]
async fn a_node_whose_cluster_ca_also_signs_client_certificates_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    mini_pubsub::certs::write_dev(dir.path()).unwrap();
    let file = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let ca = file(mini_pubsub::certs::CA_CERT);
    let peers = format!("1=127.0.0.1:{}", free_port());
    let output = Command::new(env!("CARGO_BIN_EXE_mini-pubsub"))
        .args(["serve", "--listen", "127.0.0.1:0", "--node-id", "1", "--peers", &peers])
        .args([
            "--tls-cert",
            &file(mini_pubsub::certs::SERVER_CERT),
            "--tls-key",
            &file(mini_pubsub::certs::SERVER_KEY),
        ])
        .args(["--tls-client-ca", &ca, "--peer-tls-ca", &ca])
        .args([
            "--peer-tls-cert",
            &file(mini_pubsub::certs::PEER_CERT),
            "--peer-tls-key",
            &file(mini_pubsub::certs::PEER_KEY),
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("node.log")).unwrap())
        .spawn()
        .unwrap();
    let mut child = common::KillOnDrop(output);
    let exit = common::exit_within(&mut child.0, Duration::from_secs(15)).await;
    let stderr = std::fs::read_to_string(dir.path().join("node.log")).unwrap();
    assert!(exit.is_some_and(|e| !e.success()), "the node must refuse to start: {exit:?}\n{stderr}");
    assert!(stderr.contains("peer_tls_ca:") && stderr.contains("the cluster needs a CA of its own"), "{stderr}");
}

/// One batch of a PublishStream: `keys` messages, each with an idempotency key of its own
/// (not numbered in order, so each is an entry of the dedupe index).
fn keyed_batch(sequence: u64, keys: u64) -> pb::PublishStreamRequest {
    let messages = (0..keys)
        .map(|i| pb::OutgoingMessage {
            value: format!("b{sequence}m{i}").into_bytes().into(),
            idempotency_key: Some(format!("key{sequence}x{i}y")),
            ..Default::default()
        })
        .collect();
    let publish = pb::PublishRequest { topic: "orders".into(), messages, ..Default::default() };
    pb::PublishStreamRequest { sequence, publish: Some(publish) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stores_a_streams_batches_in_flight_in_order_and_refuses_one_without_dedupe_room_before_proposing() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, _peers, _brokers) = cluster_with(dir.path(), &["--dedupe-keys-max", "100"]);
    let first = leader(&nodes).await;
    let addr = nodes[first as usize - 1].client.clone();
    let topic = pb::CreateTopicRequest { name: "orders".into(), partitions: 1, ..Default::default() };
    AdminClient::new(lazy(&addr)).create_topic(topic).await.unwrap();

    // 40 batches of 5 keys sent at once: the leader holds up to its window of them in
    // flight. The index has room for 100 keys, so 20 batches.
    let requests: Vec<_> = (1..=40).map(|s| keyed_batch(s, 5)).collect();
    let answers = PubSubClient::new(lazy(&addr)).publish_stream(tokio_stream::iter(requests)).await.unwrap();
    let mut answers = answers.into_inner();
    let mut got = Vec::new();
    while let Some(answer) = answers.message().await.unwrap() {
        got.push(answer);
    }
    assert_eq!(got.iter().map(|a| a.sequence).collect::<Vec<_>>(), (1..=40).collect::<Vec<_>>());
    let offsets: Vec<u64> = got[..20].iter().flat_map(|a| a.results.iter().map(|r| r.offset)).collect();
    assert_eq!(offsets, (0..100).collect::<Vec<_>>(), "stored in the stream's order: {:?}", &got[..20]);
    // The 21st would fill the index past its bound: refused by the leader before it was
    // proposed, so the batches behind it, in flight, are not applied (and could not be
    // stored before it is sent again).
    assert_eq!(got[20].code, tonic::Code::ResourceExhausted as i32, "{:?}", got[20]);
    assert!(got[20].message.contains("dedupe_keys_max = 100"), "{}", got[20].message);
    for later in &got[21..] {
        assert_eq!(later.code, tonic::Code::Aborted as i32, "{later:?}");
        assert!(later.message.contains("batch 21 of this stream was refused"), "{}", later.message);
    }
    let topic = AdminClient::new(lazy(&addr)).get_topic(pb::GetTopicRequest { name: "orders".into() }).await;
    assert_eq!(topic.unwrap().into_inner().partition_info[0].end_offset, 100, "the topic holds the 20 batches");
}
