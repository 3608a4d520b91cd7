//! What a run measures: the systems, durability classes and workloads, and the bounds of
//! every case (a time window and a message budget).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum System {
    Ours,
    Nats,
    Redis,
    /// mini-pubsub with its flight recorder on (`serve --record DIR`): what recording costs.
    OursRecorded,
    /// An earlier build of mini-pubsub (`--baseline-bin`), run interleaved with this one so
    /// that a change is measured before and after under the same conditions.
    OursBaseline,
    /// Three mini-pubsub nodes on 127.0.0.1 as a Raft cluster; clients are given all three
    /// and follow the leader.
    OursCluster,
    /// Three nats-server processes clustered on 127.0.0.1, the stream with 3 replicas.
    NatsCluster,
    /// mini-pubsub with TLS on its gRPC port (`--tls-cert`, `--tls-key`, developer
    /// certificates), its clients connecting over https: what TLS costs.
    OursTls,
}

impl System {
    pub const ALL: [System; 8] = [
        System::Ours,
        System::Nats,
        System::Redis,
        System::OursRecorded,
        System::OursBaseline,
        System::OursCluster,
        System::NatsCluster,
        System::OursTls,
    ];
    /// The systems a run compares when `--systems` names none.
    pub const DEFAULT: [System; 3] = [System::Ours, System::Nats, System::Redis];

    /// The short name used in options and file names.
    pub fn id(self) -> &'static str {
        match self {
            System::Ours => "mini-pubsub",
            System::Nats => "nats",
            System::Redis => "redis",
            System::OursRecorded => "mini-pubsub-recorded",
            System::OursBaseline => "mini-pubsub-baseline",
            System::OursCluster => "mini-pubsub-3",
            System::NatsCluster => "nats-3",
            System::OursTls => "mini-pubsub-tls",
        }
    }
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// A durability class: rows only ever compare systems of one class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Class {
    /// Nothing on disk.
    Memory,
    /// Written to a file before the ack, not fsynced: survives a process crash, not a power cut.
    NoFsync,
    /// Fsynced before the ack.
    Fsync,
}

impl Class {
    pub const ALL: [Class; 3] = [Class::Memory, Class::NoFsync, Class::Fsync];

    pub fn id(self) -> &'static str {
        match self {
            Class::Memory => "memory",
            Class::NoFsync => "no-fsync",
            Class::Fsync => "fsync",
        }
    }

    /// Why a system has no configuration in this class, if it has none.
    pub fn unsupported(self, system: System) -> Option<&'static str> {
        match (self, system) {
            (Class::Fsync, System::Nats | System::NatsCluster) => {
                Some("NATS 2.9 file storage has no fsync before the ack (only a periodic sync_interval)")
            }
            (Class::Memory, System::OursCluster) => Some("a mini-pubsub cluster keeps its Raft log in files"),
            _ => None,
        }
    }

    /// How each system is configured in this class, for the report.
    pub fn describe(self, system: System) -> &'static str {
        match (self, system) {
            (Class::Memory, System::Ours) => "`--storage memory`",
            (Class::Memory, System::Nats) => "stream with memory storage",
            (Class::Memory, System::Redis) => "`--save \"\" --appendonly no`",
            (Class::NoFsync, System::Ours) => "`--storage file --fsync never`",
            (Class::NoFsync, System::Nats) => "stream with file storage (periodic sync)",
            (Class::NoFsync, System::Redis) => "`--appendonly yes --appendfsync everysec`",
            (Class::Fsync, System::Ours) => "`--storage file --fsync always` (group commit)",
            (Class::Fsync, System::Nats) => "n/a",
            (Class::Fsync, System::Redis) => "`--appendonly yes --appendfsync always`",
            (Class::Memory, System::OursTls) => "`--storage memory`, TLS 1.3 on the gRPC port",
            (Class::NoFsync, System::OursTls) => "`--storage file --fsync never`, TLS 1.3 on the gRPC port",
            (Class::Fsync, System::OursTls) => "`--storage file --fsync always`, TLS 1.3 on the gRPC port",
            (Class::Memory, System::OursRecorded) => "`--storage memory --record DIR`",
            (Class::NoFsync, System::OursRecorded) => "`--storage file --fsync never --record DIR`",
            (Class::Fsync, System::OursRecorded) => "`--storage file --fsync always --record DIR`",
            (Class::Memory, System::OursBaseline) => "the `--baseline-bin` build, `--storage memory`",
            (Class::NoFsync, System::OursBaseline) => "the `--baseline-bin` build, `--storage file --fsync never`",
            (Class::Fsync, System::OursBaseline) => "the `--baseline-bin` build, `--storage file --fsync always`",
            (Class::Memory, System::OursCluster) => "n/a",
            (Class::NoFsync, System::OursCluster) => {
                "three nodes, `--fsync never`: acked once a majority wrote its Raft log (not fsynced)"
            }
            (Class::Fsync, System::OursCluster) => {
                "three nodes, `--fsync always`: acked once a majority fsynced its Raft log (group commit)"
            }
            (Class::Memory, System::NatsCluster) => "three clustered servers, stream with memory storage, 3 replicas",
            (Class::NoFsync, System::NatsCluster) => {
                "three clustered servers, stream with file storage, 3 replicas (acked once a majority stored it; periodic sync)"
            }
            (Class::Fsync, System::NatsCluster) => "n/a",
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// A workload: what the clients do during a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Workload {
    /// One publish in flight, each awaited.
    SyncPublish,
    /// Publishes with up to [`ASYNC_WINDOW`] unanswered.
    AsyncPublish,
    /// Requests of [`BATCH_MESSAGES`] messages, one in flight.
    BatchPublish,
    /// Consume and ack a pre-filled backlog.
    BacklogConsume,
    /// One publisher and one consumer at once.
    ProduceConsume,
    /// Publish at a fixed rate (msgs/s) and time each message from its intended send time
    /// to its delivery.
    EndToEnd(u32),
    /// One publisher; [`GROUP_MEMBERS`] consumers share one subscription on 4 partitions.
    Group4,
    /// One publisher; [`GROUP_MEMBERS`] subscriptions each receive every message.
    Fanout4,
    /// One publish in flight while [`CREATORS`] other clients make [`CREATES`] topics and
    /// subscriptions (half of each): whether metadata changes stall the data path. Run at
    /// the plan's first value size only.
    Creates,
}

/// The longest the creates of the creates workload may take (its measured window).
pub const CREATES_SECONDS_MAX: Duration = Duration::from_secs(300);
/// Unanswered publishes of the async workloads.
pub const ASYNC_WINDOW: usize = 256;
/// Messages per request of the batched workload (and of backlog pre-filling).
pub const BATCH_MESSAGES: usize = 100;
/// Consumers of the group and fan-out workloads, and partitions of the group's topic.
pub const GROUP_MEMBERS: usize = 4;
/// The fixed rates of the end-to-end latency workload, in msgs/s.
pub const E2E_RATES: [u32; 3] = [1_000, 5_000, 20_000];
/// Topics and subscriptions made in the creates workload, in all.
pub const CREATES: usize = 10_000;
/// Clients making them at once, each one create in flight.
pub const CREATORS: usize = 4;

impl Workload {
    pub fn all() -> Vec<Workload> {
        let mut all = vec![Workload::SyncPublish, Workload::AsyncPublish, Workload::BatchPublish];
        all.extend([Workload::BacklogConsume, Workload::ProduceConsume]);
        all.extend(E2E_RATES.map(Workload::EndToEnd));
        all.extend([Workload::Group4, Workload::Fanout4, Workload::Creates]);
        all
    }

    /// A stable name, matched by `--only`.
    pub fn id(self) -> String {
        match self {
            Workload::SyncPublish => "sync-publish".into(),
            Workload::AsyncPublish => "async-publish".into(),
            Workload::BatchPublish => "batch-publish".into(),
            Workload::BacklogConsume => "backlog-consume".into(),
            Workload::ProduceConsume => "produce-consume".into(),
            Workload::EndToEnd(rate) => format!("e2e-{}k", rate / 1000),
            Workload::Group4 => "group4".into(),
            Workload::Fanout4 => "fanout4".into(),
            Workload::Creates => "creates".into(),
        }
    }

    /// What the primary rate of a row counts.
    pub fn rate_meaning(self) -> &'static str {
        match self {
            Workload::SyncPublish | Workload::AsyncPublish | Workload::BatchPublish => "published and acked",
            Workload::BacklogConsume => "consumed and acked",
            Workload::ProduceConsume => "consumed (published in the second figure)",
            Workload::EndToEnd(_) => "delivered within the window",
            Workload::Group4 | Workload::Fanout4 => "deliveries to all consumers (published in the second figure)",
            Workload::Creates => "sync publishes answered while 10 000 topics and subscriptions are made (creates/s in the second figure)",
        }
    }
}

/// Sizes, bounds and repeats of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub quick: bool,
    pub repeats: u32,
    pub sizes: Vec<usize>,
    pub classes: Vec<Class>,
    pub systems: Vec<System>,
    pub workloads: Vec<Workload>,
    /// Load before the measured window, not recorded.
    pub warmup_ms: u64,
    /// The measured window of a timed case.
    pub window_ms: u64,
    /// A timed case also stops after this many messages.
    pub case_messages_max: u64,
    /// The backlog: this many messages...
    pub backlog_messages_max: u64,
    /// ...or this many value bytes, whichever is fewer.
    pub backlog_bytes_max: u64,
    /// Longest pre-fill, and longest drain, of a backlog.
    pub backlog_seconds_max: u64,
    /// Messages retained for the memory-footprint case.
    pub retained_messages: u64,
    /// mini-pubsub's sync publish goes through the generated client instead of the
    /// library's `Publisher`.
    #[serde(default)]
    pub sync_via_generated: bool,
    /// Batches mini-pubsub's `Publisher` keeps in flight, when not the library's default.
    #[serde(default)]
    pub publisher_in_flight: Option<usize>,
}

impl Plan {
    pub fn warmup(&self) -> Duration {
        Duration::from_millis(self.warmup_ms)
    }

    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms)
    }

    /// Messages in the backlog of a case with `size`-byte values.
    pub fn backlog_messages(&self, size: usize) -> u64 {
        self.backlog_messages_max.min(self.backlog_bytes_max / size.max(1) as u64).max(1)
    }

    /// The longest a whole case may take before it is failed as hung.
    pub fn case_timeout(&self, workload: Workload) -> Duration {
        let timed = Duration::from_millis(self.warmup_ms + self.window_ms);
        let backlog = match workload {
            Workload::BacklogConsume => Duration::from_secs(2 * self.backlog_seconds_max),
            Workload::Creates => CREATES_SECONDS_MAX,
            _ => Duration::ZERO,
        };
        timed + backlog + Duration::from_secs(60)
    }
}

/// One case: a workload at a value size in a durability class, for every system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Case {
    pub class: Class,
    pub workload: Workload,
    pub size: usize,
}

impl Case {
    pub fn label(&self) -> String {
        format!("{} {} {}", self.class, self.workload.id(), size_label(self.size))
    }
}

/// Every case of the plan, class by class, workload by workload, size by size.
pub fn cases(plan: &Plan) -> Vec<Case> {
    let mut cases = Vec::new();
    for &class in &plan.classes {
        for &workload in &plan.workloads {
            let sizes =
                if workload == Workload::Creates { &plan.sizes[..plan.sizes.len().min(1)] } else { &plan.sizes };
            for &size in sizes {
                cases.push(Case { class, workload, size });
            }
        }
    }
    cases
}

/// "16 B", "1 KiB", "16 KiB".
pub fn size_label(size: usize) -> String {
    if size >= 1024 && size.is_multiple_of(1024) {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backlog_is_capped_by_bytes_for_large_values() {
        let plan = Plan {
            quick: false,
            repeats: 1,
            sizes: vec![],
            classes: vec![],
            systems: vec![],
            workloads: vec![],
            warmup_ms: 0,
            window_ms: 0,
            case_messages_max: 0,
            backlog_messages_max: 1_000_000,
            backlog_bytes_max: 512 << 20,
            backlog_seconds_max: 1,
            retained_messages: 0,
            sync_via_generated: false,
            publisher_in_flight: None,
        };
        assert_eq!(plan.backlog_messages(128), 1_000_000);
        assert_eq!(plan.backlog_messages(1024), 524_288);
        assert_eq!(plan.backlog_messages(16 * 1024), 32_768);
    }

    #[test]
    fn workload_names_and_sizes_read_well() {
        let names: Vec<String> = Workload::all().iter().map(|w| w.id()).collect();
        assert_eq!(names[5..8], ["e2e-1k", "e2e-5k", "e2e-20k"]);
        assert_eq!(size_label(16), "16 B");
        assert_eq!(size_label(16384), "16 KiB");
    }
}
