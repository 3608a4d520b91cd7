//! The production server on turmoil hosts: same code, simulated network and clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mini_pubsub::env::Net;
use mini_pubsub::server::{self, ServerConfig};
use mini_pubsub::storage::MemoryStorage;
use mini_pubsub::wire::pb;
use mini_pubsub_sim::history::{render, BrokerObserver, History};
use mini_pubsub_sim::world::{channel, listen_addr, SimClock, SimNet};
use tokio_stream::wrappers::ReceiverStream;

const PORT: u16 = 50051;

type Trace = Arc<Mutex<Vec<String>>>;

fn note(trace: &Trace, line: String) {
    let ms = turmoil::sim_elapsed().unwrap_or_default().as_millis();
    trace.lock().unwrap().push(format!("@{ms:>6}ms {line}"));
}

fn sim(seed: u64) -> turmoil::Sim<'static> {
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .enable_random_order()
        .simulation_duration(Duration::from_secs(120))
        .build();
    sim.host("broker", || async {
        let mut config = ServerConfig::default();
        config.broker.ack_deadline_ms = 5_000;
        let (_, incoming) = SimNet::default().bind(listen_addr(PORT)).await?;
        let shutdown = std::future::pending::<()>();
        server::run(incoming, shutdown, config, Box::new(MemoryStorage), Arc::new(SimClock)).await?;
        Ok(())
    });
    sim
}

/// Publish, subscribe, leave one message unacked until its lease expires.
fn lease_expiry_run(seed: u64) -> Vec<String> {
    let trace: Trace = Arc::default();
    let mut sim = sim(seed);
    let t = trace.clone();
    sim.client("app", async move {
        let channel = channel("broker", PORT).await?;
        let mut pubsub = pb::pub_sub_client::PubSubClient::new(channel.clone());
        let mut admin = pb::admin_client::AdminClient::new(channel);
        let messages = ["a", "b", "c"].map(|v| pb::OutgoingMessage { value: v.into(), ..Default::default() }).to_vec();
        let req = pb::PublishRequest { topic: "orders".into(), messages, ..Default::default() };
        let results = pubsub.publish(req).await?.into_inner().results;
        note(&t, format!("published {:?}", results.iter().map(|r| r.offset).collect::<Vec<_>>()));
        let sub = pb::CreateSubscriptionRequest { name: "audit".into(), topic: "orders".into(), ..Default::default() };
        admin.create_subscription(sub).await?;

        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(pb::SubscribeRequest { subscription: "audit".into(), ..Default::default() }).await?;
        let mut stream = pubsub.subscribe(ReceiverStream::new(rx)).await?.into_inner();
        let mut acked = 0;
        while let Some(response) = stream.message().await? {
            for m in response.received_messages {
                let value = String::from_utf8_lossy(&m.message.as_ref().unwrap().value).into_owned();
                note(
                    &t,
                    format!(
                        "received {value} attempt={} publish_time={:?}",
                        m.delivery_attempt,
                        m.message.unwrap().publish_time
                    ),
                );
                if value != "b" || m.delivery_attempt == 2 {
                    tx.send(pb::SubscribeRequest { ack_ids: vec![m.ack_id], ..Default::default() }).await?;
                    acked += 1;
                }
            }
            if acked == 3 {
                break;
            }
        }
        let stats = admin.get_subscription_stats(pb::GetSubscriptionStatsRequest { name: "audit".into() }).await?;
        let stats = stats.into_inner();
        note(&t, format!("backlog={} committed={}", stats.backlog, stats.partitions[0].committed_offset));
        Ok(())
    });
    sim.run().unwrap();
    let trace = trace.lock().unwrap().clone();
    trace
}

#[test]
fn the_production_server_runs_on_turmoil_and_expires_leases_in_simulated_time() {
    let trace = lease_expiry_run(7);
    let text = trace.join("\n");
    assert!(text.contains("received b attempt=2"), "{text}");
    assert!(text.ends_with("backlog=0 committed=3"), "{text}");
    let redelivered_at: u128 = trace
        .iter()
        .find(|l| l.contains("received b attempt=2"))
        .and_then(|l| l.trim_start_matches('@').trim_start().split("ms").next()?.parse().ok())
        .unwrap();
    assert!((5_000..6_000).contains(&redelivered_at), "the 5 s lease expired on simulated time: {text}");
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    let first = lease_expiry_run(42);
    assert!(first.len() >= 6, "{first:?}");
    assert_eq!(first, lease_expiry_run(42));
}

/// A memory log whose record at offset 1 fails its CRC, as a flipped byte on disk would.
struct DamagedLog(Box<dyn mini_pubsub::storage::PartitionLog>);

fn damage(offset: u64) -> mini_pubsub::storage::StorageError {
    let reason = "crc mismatch".to_string();
    mini_pubsub::storage::StorageError::Corrupt { file: "segment".into(), position: offset * 100, reason }
}

impl mini_pubsub::storage::PartitionLog for DamagedLog {
    fn append(
        &mut self,
        records: Vec<mini_pubsub::storage::Record>,
    ) -> Result<u64, mini_pubsub::storage::StorageError> {
        self.0.append(records)
    }
    fn read(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<mini_pubsub::storage::StoredRecord>, mini_pubsub::storage::StorageError> {
        if from == 1 {
            return Err(damage(from));
        }
        let mut records = self.0.read(from, max_records, max_bytes)?;
        records.retain(|r| r.offset < 1 || from > 1);
        Ok(records)
    }
    fn start_offset(&self) -> u64 {
        self.0.start_offset()
    }
    fn end_offset(&self) -> u64 {
        self.0.end_offset()
    }
    fn offset_for_time(&self, time_ms: u64) -> Result<u64, mini_pubsub::storage::StorageError> {
        self.0.offset_for_time(time_ms)
    }
    fn synced_end(&self) -> u64 {
        self.0.synced_end()
    }
    fn sync(&mut self) -> Result<(), mini_pubsub::storage::StorageError> {
        self.0.sync()
    }
    fn truncate(&mut self, from: u64) -> Result<(), mini_pubsub::storage::StorageError> {
        self.0.truncate(from)
    }
    fn apply_retention(
        &mut self,
        retention: &mini_pubsub::storage::Retention,
        keep_from: u64,
    ) -> Result<u64, mini_pubsub::storage::StorageError> {
        self.0.apply_retention(retention, keep_from)
    }
    fn size_bytes(&self) -> u64 {
        self.0.size_bytes()
    }
}

struct DamagedStorage(MemoryStorage);

impl mini_pubsub::storage::Storage for DamagedStorage {
    fn open(
        &mut self,
        topic_uid: u64,
        partition: u32,
    ) -> Result<Box<dyn mini_pubsub::storage::PartitionLog>, mini_pubsub::storage::StorageError> {
        Ok(Box::new(DamagedLog(self.0.open(topic_uid, partition)?)))
    }
    fn open_at(
        &mut self,
        topic_uid: u64,
        partition: u32,
        start: u64,
    ) -> Result<Box<dyn mini_pubsub::storage::PartitionLog>, mini_pubsub::storage::StorageError> {
        Ok(Box::new(DamagedLog(self.0.open_at(topic_uid, partition, start)?)))
    }
    fn remove(
        &mut self,
        topic_uid: u64,
        logs: Vec<Box<dyn mini_pubsub::storage::PartitionLog>>,
    ) -> Result<(), mini_pubsub::storage::StorageError> {
        self.0.remove(topic_uid, logs)
    }
    fn retain_topics(&mut self, uids: &[u64], next: u64) -> Result<Vec<u64>, mini_pubsub::storage::StorageError> {
        self.0.retain_topics(uids, next)
    }
    fn fsync_policy(&self) -> mini_pubsub::storage::FsyncPolicy {
        self.0.fsync_policy()
    }
    fn load_meta(&mut self) -> Result<Option<Vec<u8>>, mini_pubsub::storage::StorageError> {
        self.0.load_meta()
    }
    fn save_meta(&mut self, meta: &[u8]) -> Result<(), mini_pubsub::storage::StorageError> {
        self.0.save_meta(meta)
    }
    fn load_journal(&mut self) -> Result<Vec<u8>, mini_pubsub::storage::StorageError> {
        self.0.load_journal()
    }
    fn append_journal(&mut self, bytes: &[u8]) -> Result<(), mini_pubsub::storage::StorageError> {
        self.0.append_journal(bytes)
    }
    fn sync_journal(&mut self) -> Result<(), mini_pubsub::storage::StorageError> {
        self.0.sync_journal()
    }
    fn reset_journal(&mut self) -> Result<(), mini_pubsub::storage::StorageError> {
        self.0.reset_journal()
    }
}

#[test]
fn a_record_the_broker_cannot_read_reaches_the_trace() {
    let history = History::default();
    let mut sim = turmoil::Builder::new().rng_seed(1).simulation_duration(Duration::from_secs(20)).build();
    let observed = history.clone();
    sim.host("broker", move || {
        let history = observed.clone();
        async move {
            let (_, incoming) = SimNet::default().bind(listen_addr(PORT)).await?;
            let observer = Arc::new(BrokerObserver { host: "broker".into(), history, cluster: None });
            let storage = Box::new(DamagedStorage(MemoryStorage));
            let (config, clock) = (ServerConfig::default(), Arc::new(SimClock));
            server::run_with(
                incoming,
                std::future::pending(),
                config,
                storage,
                clock,
                server::Hooks { observer: Some(observer), ..server::Hooks::default() },
            )
            .await?;
            Ok(())
        }
    });
    sim.client("app", async move {
        let channel = channel("broker", PORT).await?;
        let mut pubsub = pb::pub_sub_client::PubSubClient::new(channel.clone());
        let messages = ["a", "b", "c"].map(|v| pb::OutgoingMessage { value: v.into(), ..Default::default() }).to_vec();
        pubsub.publish(pb::PublishRequest { topic: "orders".into(), messages, ..Default::default() }).await?;
        let sub = pb::CreateSubscriptionRequest { name: "audit".into(), topic: "orders".into(), ..Default::default() };
        pb::admin_client::AdminClient::new(channel).create_subscription(sub).await?;
        let pulled = pubsub.pull(pb::PullRequest { subscription: "audit".into(), max_messages: 10 }).await?;
        let offsets: Vec<u64> =
            pulled.into_inner().received_messages.iter().filter_map(|m| m.message.as_ref().map(|m| m.offset)).collect();
        assert_eq!(offsets, [0], "the partition waits at the damaged record");
        Ok(())
    });
    sim.run().unwrap();
    let trace = render(&history.entries(), false);
    assert!(trace.contains("broker     cannot read orders p0@1: "), "{trace}");
    assert!(trace.contains("crc mismatch; its readers wait there"), "{trace}");
}
