//! What happened in a run: every client-visible event, stamped with simulated time. The
//! trace is rendered from it, and the checker reads it.

use std::sync::{Arc, Mutex};

use mini_pubsub::core::Notice;
use mini_pubsub::server::Observer;
use mini_pubsub::storage::StorageError;

/// One event seen by a client host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A publish of message `id` was sent (again, on retry); a retry says which code
    /// refused the attempt before it.
    ///
    /// `publisher` names the library publisher it was handed to (each `publish ... via=library`
    /// step has its own) when the message's partition is the client's to choose (it has a
    /// key or a partition): the publish-order check holds those messages to their order. A
    /// keyless message is placed by the broker, and a retry may place it elsewhere.
    PublishInvoked { id: String, topic: String, attempt: u32, after: Option<String>, publisher: Option<String> },
    /// The broker acknowledged the publish; `duplicate` when it answered with the place of
    /// an earlier message with the same idempotency key and stored nothing.
    Published {
        id: String,
        /// The broker's id of the stored message (`topic uid-partition-offset`): it tells
        /// a re-created topic's offsets from the old one's.
        message_id: String,
        topic: String,
        partition: u32,
        offset: u64,
        idempotency_key: Option<String>,
        duplicate: bool,
    },
    /// The publish failed; `definite` when the broker certainly did not store it.
    PublishFailed { id: String, code: String, definite: bool },
    /// A message arrived on a subscription, with the idempotency key it was stored with and
    /// its publish time (wall milliseconds); a dead-letter copy names the subscription that
    /// gave up on it and why.
    Delivered {
        id: String,
        /// The broker's id of the stored message (a dead-letter copy has its own).
        message_id: String,
        sub: String,
        stream: u64,
        partition: u32,
        offset: u64,
        attempt: u32,
        value: String,
        dead_letter: Option<DeadLetter>,
        /// The message's key (ordering keys are per partition and key).
        key: Option<String>,
        idempotency_key: Option<String>,
        publish_ms: u64,
        /// The generation of an exclusive subscription it was leased under; 0 when shared.
        generation: u64,
        /// The lease's sequence number (the last part of its ack id): what tells a
        /// delivery leased before a seek or redrive from one leased after it.
        lease: u64,
    },
    /// A member of an exclusive subscription was told its partitions from `generation` on.
    Assigned { sub: String, stream: u64, generation: u64, partitions: Vec<u32> },
    /// The broker answered an ack or a nack (`op`) of delivery `attempt` of the message
    /// stored at `partition`/`offset`.
    AckAnswered {
        id: String,
        /// The broker's id of the message the lease was of.
        message_id: String,
        sub: String,
        op: String,
        partition: u32,
        offset: u64,
        attempt: u32,
        result: String,
    },
    /// The client sent an ack or nack (`op`) of delivery `attempt`; its answer is an
    /// `AckAnswered`, or never comes (the request or the answer was lost).
    AckSent { id: String, message_id: String, sub: String, op: String, partition: u32, offset: u64, attempt: u32 },
    /// A redrive read dead letters from `dead`: the message at `partition`/`offset` went
    /// back to `sub` (its attempts start over), or stayed (`error` says why).
    Redriven { dead: String, sub: String, partition: u32, offset: u64, error: Option<String> },
    /// A stream opened (or reopened), asking for at most `max` outstanding messages (0:
    /// the broker's default).
    StreamOpened { sub: String, stream: u64, max: u32 },
    /// A stream ended with an error.
    StreamFailed { sub: String, stream: u64, code: String },
    /// The broker answered an admin step (`what`, as the scenario writes it): `refused`
    /// holds the code of a refusal; `detail` says what was done, or the refusal's message.
    AdminAnswered { what: String, refused: Option<String>, detail: String },
    /// A fault or workload step the driver applied.
    Step { text: String },
    /// A broker saved its metadata: acks it applied before now survive a crash.
    Checkpoint,
    /// A broker host crashed (its memory, connections and unsynced writes are gone).
    Crashed { host: String },
    /// A crashed broker host started again.
    Restarted { host: String },
    /// Something the broker did, as it reported it when it did it (recorded on the broker
    /// host): the checker's ground truth for when seeks, redrives, creations and deletions
    /// took effect.
    Broker(Notice),
    /// The broker could not read a stored record (its readers wait at it).
    ReadFailed { topic: String, partition: u32, offset: u64, error: String },
    /// The broker found stored records damaged (offsets `first..end`).
    Damaged { topic: String, partition: u32, first: u64, end: u64 },
    /// The broker core broke an invariant: the run stops here.
    InvariantBroken { what: String },
    /// A node of a cluster changed its role, term, leader (a broker host) or whether it
    /// serves (leads, has applied an entry of its term, and hears from a quorum).
    Cluster { role: String, term: u64, leader: Option<String>, serving: bool },
    /// A node of a cluster applied a seek another node had reported first (the history has
    /// the first report as the seek): where this node's replicated floors start over.
    ReplicaSeeked { subscription: String },
    /// In a cluster, a redrive applied on another node than the first to apply it (its
    /// committed offsets may move back there too).
    ReplicaRedriven { subscription: String },
    /// A node of a cluster replaced its state with a snapshot, the state after Raft entry
    /// `index` (sent by the leader, or its own at a restart): what it stores now follows as
    /// notices.
    SnapshotInstalled { index: u64 },
}

impl Event {
    /// The subscription whose committed offsets this may move back on the node that
    /// reported it: a seek, or a redrive (to the message it puts back), applied there.
    pub fn moves_floors_back(&self) -> Option<&str> {
        match self {
            Event::Broker(Notice::Seeked { subscription, .. } | Notice::Redriven { subscription, .. })
            | Event::ReplicaSeeked { subscription }
            | Event::ReplicaRedriven { subscription } => Some(subscription),
            _ => None,
        }
    }
}

/// What a dead-letter copy says of the message it copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The subscription that gave up on it.
    pub from: String,
    pub reason: String,
    /// The original's broker id (its place in the source topic).
    pub original: String,
}

/// An event with when and where it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub at_ms: u64,
    pub host: String,
    pub event: Event,
}

/// The shared, append-only history of a run.
#[derive(Debug, Clone, Default)]
pub struct History(Arc<Mutex<Vec<Entry>>>, Arc<Mutex<Option<String>>>);

impl History {
    /// What broke, when a broker reported a broken invariant.
    pub fn broken(&self) -> Option<String> {
        self.1.lock().expect("history lock").clone()
    }

    pub fn record(&self, host: &str, event: Event) {
        let at_ms = turmoil::sim_elapsed().unwrap_or_default().as_millis() as u64;
        self.record_at(at_ms, host, event);
    }

    pub fn record_at(&self, at_ms: u64, host: &str, event: Event) {
        self.0.lock().expect("history lock").push(Entry { at_ms, host: host.to_string(), event });
    }

    pub fn entries(&self) -> Vec<Entry> {
        self.0.lock().expect("history lock").clone()
    }

    /// When the latest event that matches `f` happened.
    pub fn last_at(&self, f: impl Fn(&Event) -> bool) -> Option<u64> {
        self.0.lock().expect("history lock").iter().rev().find(|e| f(&e.event)).map(|e| e.at_ms)
    }

    /// What `f` makes of the entries so far, read in place (no copy of the history).
    pub fn scan<R>(&self, f: impl FnOnce(&[Entry]) -> R) -> R {
        f(&self.0.lock().expect("history lock"))
    }

    /// How many entries match `f`.
    pub fn count(&self, f: impl Fn(&Entry) -> bool) -> usize {
        self.0.lock().expect("history lock").iter().filter(|e| f(e)).count()
    }
}

/// The trace of a run: one line per event. The condensed trace leaves out first publish
/// attempts (their outcome has a line of its own); the full one keeps every event.
pub fn render(entries: &[Entry], full: bool) -> String {
    let lines = entries.iter().filter_map(|e| trace_line(e, full));
    lines.collect::<Vec<_>>().join("\n")
}

/// One line of the trace, or `None` for an event the condensed trace leaves out.
pub fn trace_line(entry: &Entry, full: bool) -> Option<String> {
    let what = match &entry.event {
        Event::PublishInvoked { id, topic, attempt: 1, .. } if full => format!("publish {id} to {topic}"),
        Event::PublishInvoked { attempt: 1, .. } => return None,
        Event::PublishInvoked { id, topic, attempt, after: Some(code), .. } => {
            format!("publish {id} to {topic}: retry {attempt} after {code}")
        }
        Event::PublishInvoked { id, topic, attempt, after: None, .. } => {
            format!("publish {id} to {topic}: retry {attempt}")
        }
        Event::Published { id, topic, partition, offset, idempotency_key, duplicate, .. } => {
            let key = idempotency_key.as_ref().map(|k| format!(" idempotency_key={k}")).unwrap_or_default();
            let duplicate = if *duplicate { " (duplicate: stored before)" } else { "" };
            format!("published {id} to {topic} p{partition}@{offset}{key}{duplicate}")
        }
        Event::PublishFailed { id, code, definite } => {
            let kind = if *definite { "definite" } else { "indeterminate" };
            format!("publish {id} failed: {code} ({kind})")
        }
        Event::Delivered { id, sub, stream, partition, offset, attempt, dead_letter, generation, .. } => {
            // Shared subscriptions (generation 0) keep the line they always had.
            let generation = if *generation > 0 { format!(" gen={generation}") } else { String::new() };
            let line = format!("received {id} on {sub}#{stream} p{partition}@{offset} attempt={attempt}{generation}");
            match dead_letter {
                Some(DeadLetter { from, reason, .. }) => format!("{line}, dead-lettered from {from} ({reason})"),
                None => line,
            }
        }
        Event::AckAnswered { id, sub, op, result, .. } => format!("{op} {id} on {sub}: {result}"),
        Event::AckSent { id, sub, op, attempt, .. } if full => format!("send {op} {id} on {sub} attempt={attempt}"),
        Event::AckSent { .. } => return None,
        Event::Redriven { dead, sub, partition, offset, error: None } => {
            format!("redrive {dead}: p{partition}@{offset} back to {sub}")
        }
        Event::Redriven { dead, sub, partition, offset, error: Some(error) } => {
            format!("redrive {dead}: p{partition}@{offset} of {sub} stays: {error}")
        }
        Event::StreamOpened { sub, stream, .. } => format!("subscribed to {sub}#{stream}"),
        Event::Assigned { sub, stream, generation, partitions } => {
            let partitions: Vec<String> = partitions.iter().map(|p| format!("p{p}")).collect();
            format!("assigned {sub}#{stream} gen={generation}: [{}]", partitions.join(" "))
        }
        Event::StreamFailed { sub, stream, code } => format!("stream {sub}#{stream} ended: {code}"),
        Event::AdminAnswered { what, refused: None, detail } => format!("{what}: {detail}"),
        Event::AdminAnswered { what, refused: Some(code), detail } => format!("{what}: refused {code}: {detail}"),
        Event::Step { text } => text.clone(),
        Event::Checkpoint if full => "checkpoint: committed offsets saved".to_string(),
        Event::Checkpoint => return None,
        Event::Crashed { host } => format!("crash {host}"),
        Event::Restarted { host } => format!("restart {host}"),
        Event::Broker(notice) => notice_line(notice, entry.at_ms, full)?,
        Event::Cluster { term, serving: true, .. } => format!("serves as the leader of term {term}"),
        Event::Cluster { role, term, leader, .. } if full => {
            let leader = leader.as_deref().map_or("none known".to_string(), |l| format!("leader {l}"));
            format!("{role} in term {term}, {leader}")
        }
        Event::Cluster { .. } => return None,
        Event::ReplicaSeeked { subscription } if full => format!("seek applied here too: {subscription}"),
        Event::ReplicaSeeked { .. } => return None,
        Event::ReplicaRedriven { subscription } if full => format!("redrive applied here too: {subscription}"),
        Event::ReplicaRedriven { .. } => return None,
        Event::SnapshotInstalled { index } => format!("installed a snapshot: the state after Raft entry {index}"),
        Event::ReadFailed { topic, partition, offset, error } => {
            format!("cannot read {topic} p{partition}@{offset}: {error}; its readers wait there")
        }
        Event::Damaged { topic, partition, first, end } => {
            format!("damaged records {topic} p{partition}@{first}..{end}: readers past them go on")
        }
        Event::InvariantBroken { what } => format!("INVARIANT BROKEN: {what}"),
    };
    Some(format!("@{:>7}ms {:<10} {what}", entry.at_ms, entry.host))
}

/// A broker's notice as a trace line. The condensed trace keeps what no other line says:
/// what a restart restored, and topics a publish created.
fn notice_line(notice: &Notice, at_ms: u64, full: bool) -> Option<String> {
    let list = |names: Vec<&str>| if names.is_empty() { "none".to_string() } else { names.join(", ") };
    let partitions = |n: u32| if n == 1 { "1 partition".to_string() } else { format!("{n} partitions") };
    Some(match notice {
        Notice::Restored { topics, subscriptions } if full || at_ms > 0 => format!(
            "restored topics: {}; subscriptions: {}",
            list(topics.iter().map(|(t, _)| t.as_str()).collect()),
            list(subscriptions.iter().map(|(s, _)| s.as_str()).collect())
        ),
        Notice::TopicCreated { topic, uid, partitions: n, auto: true } => {
            format!("topic {topic} created by a publish, with {} (uid {uid})", partitions(*n))
        }
        _ if !full => return None,
        Notice::Restored { .. } => unreachable!("shown above when full"),
        Notice::TopicCreated { topic, uid, partitions: n, .. } => {
            format!("topic {topic} created, {} (uid {uid})", partitions(*n))
        }
        Notice::TopicDeleted { topic, uid } => format!("topic {topic} deleted (uid {uid})"),
        Notice::SubscriptionCreated { subscription, topic, topic_uid, start } => {
            let start: Vec<String> = start.iter().enumerate().map(|(p, o)| format!("p{p}@{o}")).collect();
            format!("subscription {subscription} created on {topic} (uid {topic_uid}), owed from {}", start.join(" "))
        }
        Notice::SubscriptionDeleted { subscription } => format!("subscription {subscription} deleted"),
        Notice::Seeked { subscription, to, .. } => {
            let to: Vec<String> = to.iter().map(|(p, o)| format!("p{p}@{o}")).collect();
            format!("seek applied: {subscription} owed from {}", to.join(" "))
        }
        Notice::Redriven { subscription, partition, offset, .. } => {
            format!("redrive applied: p{partition}@{offset} back in {subscription}")
        }
        Notice::Appended { topic, partition, offset, message_id, digest } => {
            format!("stored {message_id} at {topic} p{partition}@{offset} (crc {digest:08x})")
        }
        Notice::FloorRaised { subscription, partition, offset } => {
            format!("replicated ack floor: {subscription} p{partition} committed to {offset}")
        }
        Notice::LeasesReleased { subscription, stream, leases } => {
            let leases: Vec<String> = leases.iter().map(|(p, o)| format!("p{p}@{o}")).collect();
            format!("stream {stream} of {subscription} closed; its leases back at once: {}", leases.join(" "))
        }
    })
}

/// Writes what a broker reports into the history, as events of its host. One is made for
/// each life of a broker host.
pub struct BrokerObserver {
    pub host: String,
    pub history: History,
    /// In a cluster, what the nodes reported (shared by all of them), so that a change the
    /// nodes each apply is written once, by the first to apply it.
    pub cluster: Option<Replicated>,
}

/// How many times any node of a cluster reported each notice, and how many times this life
/// of one node did: a node writes a notice only when it is the first to report it that
/// many times. A restarted node replays its log from empty; its repeats are not written.
#[derive(Default)]
pub struct Replicated {
    pub nodes: Arc<Mutex<std::collections::BTreeMap<String, u64>>>,
    pub mine: Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Replicated {
    /// Whether this node is the first to report `notice` this many times.
    fn first(&self, notice: &Notice) -> bool {
        // The lease numbers in a notice are the node's own: leases live on the leader.
        let key = match notice.clone() {
            Notice::Seeked { subscription, to, .. } => {
                format!("{:?}", Notice::Seeked { subscription, to, lease_seq: 0 })
            }
            Notice::Redriven { subscription, partition, offset, .. } => {
                format!("{:?}", Notice::Redriven { subscription, partition, offset, lease_seq: 0 })
            }
            other => format!("{other:?}"),
        };
        let mut mine = self.mine.lock().expect("notice counts");
        let count = mine.entry(key.clone()).or_default();
        *count += 1;
        let mut nodes = self.nodes.lock().expect("notice counts");
        let seen = nodes.entry(key).or_default();
        if *count > *seen {
            *seen = *count;
            return true;
        }
        false
    }
}

impl Observer for BrokerObserver {
    fn notice(&self, notice: Notice) {
        let Some(cluster) = &self.cluster else {
            return self.history.record(&self.host, Event::Broker(notice));
        };
        match notice {
            // Each node's own log, for the checks that compare replicas.
            Notice::Appended { .. } | Notice::FloorRaised { .. } => {}
            // A node restarts from its checkpoint (told as an installed snapshot) and the
            // Raft log after it: nothing vanished.
            Notice::Restored { .. } => return,
            // Leases live on the leader alone.
            Notice::LeasesReleased { .. } => {}
            ref replicated => {
                if !cluster.first(replicated) {
                    match notice {
                        Notice::Seeked { subscription, .. } => {
                            self.history.record(&self.host, Event::ReplicaSeeked { subscription });
                        }
                        Notice::Redriven { subscription, .. } => {
                            self.history.record(&self.host, Event::ReplicaRedriven { subscription });
                        }
                        _ => {}
                    }
                    return;
                }
            }
        }
        self.history.record(&self.host, Event::Broker(notice));
    }

    fn cluster(&self, state: &mini_pubsub::cluster::ClusterState) {
        let event = Event::Cluster {
            role: state.role.to_string(),
            term: state.term,
            leader: state.leader.map(|id| format!("broker{id}")),
            serving: state.serving,
        };
        self.history.record(&self.host, event);
    }

    fn installed(&self, index: u64) {
        self.history.record(&self.host, Event::SnapshotInstalled { index });
    }

    fn read_failed(&self, topic: &str, partition: u32, offset: u64, error: &StorageError) {
        let error = error.to_string();
        self.history.record(&self.host, Event::ReadFailed { topic: topic.to_string(), partition, offset, error });
    }

    fn damaged(&self, topic: &str, partition: u32, offsets: std::ops::Range<u64>) {
        let (first, end) = (offsets.start, offsets.end);
        self.history.record(&self.host, Event::Damaged { topic: topic.to_string(), partition, first, end });
    }

    fn invariant_broken(&self, what: &str) {
        *self.history.1.lock().expect("history lock") = Some(format!("{}: {what}", self.host));
        self.history.record(&self.host, Event::InvariantBroken { what: what.to_string() });
    }
}
