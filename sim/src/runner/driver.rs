//! The driver: owns the turmoil simulation, starts the broker and app hosts, steps
//! simulated time, and applies each step when its time comes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mini_pubsub::config::{Config, Loaded};
use mini_pubsub::core::Mutation;
use mini_pubsub::env::{FaultyFs, Fs, Net, StdFs};
use mini_pubsub::record;
use mini_pubsub::server::{self, ServerConfig};
use mini_pubsub::storage::{FileStorage, FileStorageConfig, FsyncPolicy, MemoryStorage, Storage};
use rand::SeedableRng;
use tokio::sync::{mpsc, Mutex};

use super::{ADMIN_HOST, DRAIN};
use crate::agent::{self, Command, Counters, PORT};
use crate::disk::{corrupt_newest_segment, CorruptAsk, ObservedStorage, TurmoilFs};
use crate::history::{BrokerObserver, Event, History, Replicated};
use crate::scenario::{self, Action, Admin, Scenario, Step, Wait};
use crate::world::{listen_addr, Counted, SimClock, SimNet, Traffic};

/// Commands waiting for an app host.
const COMMAND_QUEUE_MAX: usize = 256;
/// Longest the driver waits for an admin step to finish before going on.
const ADMIN_WAIT_MAX: Duration = Duration::from_secs(15);
/// Times a broker host tries to start before its software gives up.
const START_ATTEMPTS_MAX: u32 = 600;
/// Where a broker keeps its file log on its simulated disk.
const DATA_DIR: &str = "/data";
/// A cluster's Raft heartbeat, and the silence after which a follower stands for election
/// (at random within the range).
const HEARTBEAT_MS: u64 = 100;
const ELECTION_TIMEOUT_MS: (u64, u64) = (500, 1_000);
/// The port a cluster's brokers take Raft traffic on.
pub const PEER_PORT: u16 = 7000;

pub(super) struct Driver<'a> {
    pub(super) sim: turmoil::Sim<'a>,
    pub(super) history: History,
    pub(super) apps: BTreeMap<String, mpsc::Sender<Command>>,
    /// The admin host's counters, and how many admin steps it was sent.
    pub(super) admin: Arc<Counters>,
    pub(super) admin_sent: u64,
    pub(super) brokers: Vec<String>,
    /// Every pair of hosts a fault touched, to heal at the end.
    pub(super) touched: Vec<(String, String)>,
    pub(super) crashed: Vec<String>,
    /// What each target (`@leader`...) last resolved to: a step that ends a fault resolves
    /// its targets to the hosts the fault began on.
    pub(super) resolved: BTreeMap<String, Vec<String>>,
    /// Faults in place, and what they acted on so far.
    pub(super) open_faults: Vec<super::faults::OpenFault>,
    /// When the last fault ended, while none is in place: liveness is measured from here.
    pub(super) calm_since_ms: Option<u64>,
    /// When faults were in place: (first began, last ended; `u64::MAX` while open).
    pub(super) fault_windows: Vec<(u64, u64)>,
    /// `disconnect` steps: (host, when).
    pub(super) disconnects: Vec<(String, u64)>,
    /// Faults applied, in order.
    pub(super) faults: Vec<String>,
    /// The scenario's default ack deadline, for subscriptions that set none.
    ack_deadline: Duration,
    /// Each broker's disk, whose faults `disk` steps set.
    pub(super) disks: BTreeMap<String, FaultyFs>,
    /// Asks a broker host to corrupt a byte of its newest segment (at a fraction of it):
    /// that needs the host's own filesystem, so a task on the host does it.
    pub(super) corrupters: BTreeMap<String, mpsc::Sender<CorruptAsk>>,
    /// Set while a broker host crashes, so its connections close without a FIN.
    pub(super) crash_flags: BTreeMap<String, Arc<AtomicBool>>,
    /// Bytes written between every two hosts.
    pub(super) traffic: Traffic,
    /// Every fault so far, with the hosts it cut (`to_ms` is `u64::MAX` while in place).
    pub(super) spans: Vec<super::FaultSpan>,
    /// Draws corruption positions, from the run's seed.
    pub(super) rng: rand::rngs::StdRng,
}

impl<'a> Driver<'a> {
    pub(super) fn new(scenario: &Scenario, seed: u64, options: super::Options) -> Self {
        let super::Options { mutation, record } = options;
        let mut sim = simulation(scenario, seed);
        let (history, traffic) = (History::default(), Traffic::default());
        let storage = storage_config(scenario);
        let (mut disks, mut corrupters, mut crash_flags) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
        let notices = Arc::default();
        for (i, broker) in scenario.brokers.iter().enumerate() {
            let config = broker_config(scenario, mutation);
            let node = (scenario.brokers.len() > 1).then(|| Node {
                id: i as u64 + 1,
                brokers: scenario.brokers.clone(),
                seed: seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                fsync: scenario.config.storage == scenario::Storage::File(scenario::Fsync::Always),
                snapshot_entries: scenario.config.snapshot_entries,
                notices: Arc::clone(&notices),
            });
            let disk = FaultyFs::new(Arc::new(TurmoilFs));
            let (corrupt_tx, corrupt_rx) = mpsc::channel::<CorruptAsk>(COMMAND_QUEUE_MAX);
            let recording = record.clone().map(|dir| Recording::new(dir, storage.as_ref(), &config));
            let crashing = Arc::new(AtomicBool::new(false));
            let host = BrokerHost {
                name: broker.clone(),
                config,
                storage: storage.clone(),
                disk: disk.clone(),
                corrupt_rx: Arc::new(Mutex::new(corrupt_rx)),
                history: history.clone(),
                recording,
                crashing: crashing.clone(),
                traffic: traffic.clone(),
                node,
            };
            sim.host(broker.as_str(), move || host.clone().life());
            disks.insert(broker.clone(), disk);
            crash_flags.insert(broker.clone(), crashing);
            corrupters.insert(broker.clone(), corrupt_tx);
        }
        let (apps, admin) = start_apps(&mut sim, scenario, &history, &traffic);
        Driver {
            sim,
            history,
            apps,
            admin,
            admin_sent: 0,
            open_faults: Vec::new(),
            calm_since_ms: Some(0),
            fault_windows: Vec::new(),
            disconnects: Vec::new(),
            brokers: scenario.brokers.clone(),
            touched: Vec::new(),
            crashed: Vec::new(),
            resolved: BTreeMap::new(),
            faults: Vec::new(),
            ack_deadline: scenario.config.ack_deadline,
            disks,
            corrupters,
            crash_flags,
            traffic,
            spans: Vec::new(),
            rng: rand::rngs::StdRng::seed_from_u64(seed ^ 0xd15c),
        }
    }

    pub(super) fn elapsed(&self) -> Duration {
        self.sim.elapsed()
    }

    /// Steps simulated time forward to `at`.
    /// Stops at once when a broker breaks an invariant.
    pub(super) fn advance_to(&mut self, at: Duration) -> Result<(), String> {
        while self.sim.elapsed() < at {
            self.sim
                .step()
                .map_err(|e| format!("the simulation failed at {} ms: {e}", self.sim.elapsed().as_millis()))?;
            if let Some(what) = self.history.broken() {
                return Err(format!("invariant broken at {} ms on {what}", self.now_ms()));
            }
        }
        Ok(())
    }

    pub(super) fn send(&mut self, host: &str, command: Command) {
        let tx = self.apps.get(host).expect("the parser checked every host");
        if tx.try_send(command).is_err() {
            self.history.record_at(self.now_ms(), host, Event::Step { text: "command dropped: queue full".into() });
        }
    }

    /// Sends an admin step and runs the simulation until the admin host has finished it
    /// (bounded): a scenario's admin steps complete before the steps after them, unless
    /// they are `async`. The admin host runs its steps in order, so this also waits for
    /// the `async` ones sent before.
    fn admin_step(&mut self, admin: Admin) -> Result<(), String> {
        self.send(ADMIN_HOST, Command::Admin(admin, self.ack_deadline));
        self.admin_sent += 1;
        let deadline = self.sim.elapsed() + ADMIN_WAIT_MAX;
        while self.admin.admin_done.load(Ordering::Relaxed) < self.admin_sent {
            if self.sim.elapsed() >= deadline {
                return Err(format!("an admin step did not finish within {} s", ADMIN_WAIT_MAX.as_secs()));
            }
            self.advance_to(self.sim.elapsed() + Duration::from_millis(1))?;
        }
        Ok(())
    }

    pub(super) fn now_ms(&self) -> u64 {
        self.sim.elapsed().as_millis() as u64
    }

    pub(super) fn note(&mut self, text: String) {
        self.history.record_at(self.now_ms(), "driver", Event::Step { text });
    }

    /// Notes that `steps` run after their time because `holder`, an earlier step that
    /// blocks the timeline, finished after it; returns the line for the verdict.
    pub(super) fn note_late(&mut self, steps: &[&Step], holder: Option<&Step>) -> String {
        let now = self.now_ms() as u128;
        let why = match holder {
            Some(h) => format!("line {} (`{}`) held the timeline", h.line, h.action),
            None => "an earlier step held the timeline".to_string(),
        };
        let each: Vec<String> =
            steps.iter().map(|s| format!("line {} (`{}`) due @{}ms", s.line, s.action, s.at.as_millis())).collect();
        self.note(format!("late: {}; {why} until now", each.join(", ")));
        let lines: Vec<String> =
            steps.iter().map(|s| format!("line {} by {} ms", s.line, now - s.at.as_millis())).collect();
        format!("{} ({why})", lines.join(", "))
    }

    /// Applies one step. Expectations answer with their verdict line (`Err` when failed);
    /// a heal that ends a fault which did nothing is an `Err` too (the heal still happens).
    pub(super) fn apply(&mut self, step: &Step) -> Result<Option<String>, String> {
        let Action::Fault(fault) = &step.action else { return self.apply_one(step) };
        // A step that names targets acts on each host (pair) they resolve to; it did
        // something when any of them did (a deposed leader's link to a follower that no
        // longer talks to it may carry nothing, while its links to the new leader do).
        let faults = self.resolve(fault)?;
        let answers: Vec<_> =
            faults.into_iter().map(|f| self.apply_one(&Step { action: Action::Fault(f), ..step.clone() })).collect();
        let first_ok = answers.iter().position(Result::is_ok);
        answers.into_iter().nth(first_ok.unwrap_or(0)).unwrap_or(Ok(None))
    }

    fn apply_one(&mut self, step: &Step) -> Result<Option<String>, String> {
        let tracked = match &step.action {
            Action::Fault(fault) => self.track_fault(fault),
            _ => Ok(()),
        };
        let applied = self.apply_step(step);
        let calm = self.open_faults.is_empty() && self.crashed.is_empty();
        self.calm_since_ms = match (calm, self.calm_since_ms) {
            (true, Some(since)) => Some(since),
            (true, None) => {
                let now = self.now_ms();
                if let Some(window) = self.fault_windows.last_mut() {
                    window.1 = now;
                }
                Some(self.now_ms())
            }
            (false, Some(_)) => {
                self.fault_windows.push((self.now_ms(), u64::MAX));
                None
            }
            (false, None) => None,
        };
        tracked?;
        applied
    }

    fn apply_step(&mut self, step: &Step) -> Result<Option<String>, String> {
        match &step.action {
            Action::Admin { admin, wait } => match wait {
                Wait::Blocking => self.admin_step(admin.clone())?,
                Wait::Async => {
                    self.send(ADMIN_HOST, Command::Admin(admin.clone(), self.ack_deadline));
                    self.admin_sent += 1;
                }
            },
            Action::Publish(publish) => self.send(&publish.host, Command::Publish(publish.clone())),
            Action::Subscribe(subscribe) => self.send(&subscribe.host, Command::Subscribe(subscribe.clone())),
            Action::Disconnect { host } => {
                self.disconnects.push((host.clone(), self.now_ms()));
                self.send(host, Command::Disconnect);
            }
            Action::Ack { host, all } => self.send(host, Command::Ack { all: *all }),
            Action::Nack { host, nack } => self.send(host, Command::Nack(nack.clone())),
            Action::Modack { host, deadline } => {
                self.send(host, Command::Modack { seconds: deadline.as_secs() as u32 });
            }
            Action::Fault(fault) => return self.apply_fault(fault),
            Action::Advance { .. } | Action::Check(_) => {}
            Action::Expect(expectation) => return self.expect(step.line, expectation).map(Some),
            Action::ExpectLeader { host, within } => {
                return self.expect_leader(step.line, host.as_deref(), *within).map(Some);
            }
        }
        Ok(None)
    }
}

/// The seeded simulation, long enough for the last step (and the time its expectation may
/// wait), the final drain and a minute more.
fn simulation<'a>(scenario: &Scenario, seed: u64) -> turmoil::Sim<'a> {
    let within = |s: &Step| match &s.action {
        Action::Expect(e) => e.within.unwrap_or_default(),
        _ => Duration::ZERO,
    };
    let last = scenario.steps.iter().map(|s| s.at + within(s)).max().unwrap_or_default();
    let mut builder = turmoil::Builder::new();
    builder.rng_seed(seed).enable_random_order().simulation_duration(last + DRAIN + Duration::from_secs(60));
    builder.fs().block_size(crate::disk::DISK_BLOCK_BYTES);
    builder.build()
}

/// A broker's settings: the scenario's ack deadline, partitions and disk latency, quick
/// keepalives, invariant checks on, and the run's mutation (debug builds only).
fn broker_config(scenario: &Scenario, mutation: Option<Mutation>) -> ServerConfig {
    let mut config = ServerConfig::default();
    config.broker.ack_deadline_ms = scenario.config.ack_deadline.as_millis() as u64;
    config.broker.default_partitions = scenario.config.partitions;
    config.keepalive_interval_ms = 1_000;
    config.keepalive_timeout_ms = 2_000;
    config.sync_delay_ms = scenario.config.disk_latency.as_millis() as u64;
    config.check_invariants = true;
    config.permissions = scenario.config.permissions.clone();
    #[cfg(debug_assertions)]
    {
        config.broker.mutation = mutation;
    }
    #[cfg(not(debug_assertions))]
    assert!(mutation.is_none(), "mutations exist in debug builds only");
    config
}

/// Starts an app host for each of the scenario's apps, then the admin host; returns each
/// host's command queue, and the admin host's counters.
fn start_apps(
    sim: &mut turmoil::Sim<'_>,
    scenario: &Scenario,
    history: &History,
    traffic: &Traffic,
) -> (BTreeMap<String, mpsc::Sender<Command>>, Arc<Counters>) {
    let mut apps = BTreeMap::new();
    let mut admin = Arc::default();
    let hosts = scenario.apps.iter().map(String::as_str).chain([ADMIN_HOST]);
    for app in hosts {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE_MAX);
        let rx = Arc::new(Mutex::new(rx));
        let counters = Arc::new(Counters::default());
        if app == ADMIN_HOST {
            admin = counters.clone();
        }
        let (name, brokers, h) = (app.to_string(), scenario.brokers.clone(), history.clone());
        let traffic = traffic.clone();
        sim.host(app, move || {
            agent::run(name.clone(), brokers.clone(), rx.clone(), counters.clone(), h.clone(), traffic.clone())
        });
        apps.insert(app.to_string(), tx);
    }
    (apps, admin)
}

/// A broker's flight recording (`Options::record`): each life of its host records into a
/// directory of its own, `<dir>/<host>-<life>`, lives counted from 1.
#[derive(Clone)]
struct Recording {
    dir: PathBuf,
    /// The broker's effective configuration, as `config print` writes it.
    settings_toml: String,
    /// The host's lives so far, shared by all of them.
    lives: Arc<AtomicU32>,
}

impl Recording {
    /// A recording of a broker with `config` on `storage` (the memory log when `None`).
    fn new(dir: PathBuf, storage: Option<&FileStorageConfig>, config: &ServerConfig) -> Self {
        let mut settings = Loaded::from_config(Config::default().with_storage(storage));
        settings.config.server = config.clone();
        Recording { dir, settings_toml: settings.describe(), lives: Arc::new(AtomicU32::new(0)) }
    }

    /// Where the host's next life records: counts the life.
    fn next_life(&self, host: &str) -> server::RecordTo {
        let life = self.lives.fetch_add(1, Ordering::Relaxed) + 1;
        server::RecordTo {
            fs: Arc::new(StdFs),
            dir: self.dir.join(format!("{host}-{life}")),
            max_bytes: record::RECORD_MAX_BYTES_DEFAULT,
            settings_toml: self.settings_toml.clone(),
        }
    }
}

/// What a broker host needs to start its broker, in every life: turmoil builds the host's
/// software again from a copy of it after each crash.
#[derive(Clone)]
struct BrokerHost {
    name: String,
    config: ServerConfig,
    /// The file log's settings, or `None` for the memory log.
    storage: Option<FileStorageConfig>,
    disk: FaultyFs,
    /// Asks to corrupt the newest segment (see [`corrupter`]).
    corrupt_rx: Arc<Mutex<mpsc::Receiver<CorruptAsk>>>,
    history: History,
    recording: Option<Recording>,
    /// Set while the host crashes, so its connections close without a FIN.
    crashing: Arc<AtomicBool>,
    traffic: Traffic,
    /// Its place in a cluster (`config brokers=N`, N > 1).
    node: Option<Node>,
}

/// A broker host's place in a cluster: node `id` of the brokers named, which are nodes 1,
/// 2... in order; each takes Raft traffic on [`PEER_PORT`] and clients on [`PORT`].
#[derive(Clone)]
struct Node {
    id: u64,
    brokers: Vec<String>,
    /// Seeds its election timeouts: from the run's seed, so a run replays.
    seed: u64,
    /// Whether its Raft log is synced before an entry counts as written (`fsync=always`).
    fsync: bool,
    /// `config snapshot_entries=N`, or the broker's default.
    snapshot_entries: Option<u64>,
    /// What every node reported (see [`Replicated`]).
    notices: Arc<std::sync::Mutex<BTreeMap<String, u64>>>,
}

impl Node {
    /// What the server runs this node with: its Raft log in `/data/raft` on `disk`, its
    /// peer connections over turmoil's network (closing without a FIN when it crashes).
    async fn run(&self, disk: &FaultyFs, net: SimNet) -> std::io::Result<server::ClusterRun> {
        let ids = self.brokers.iter().enumerate().map(|(i, b)| (i as u64 + 1, b));
        let peers = ids.clone().map(|(id, b)| (id, format!("{b}:{PEER_PORT}"))).collect();
        let mut settings = mini_pubsub::cluster::NodeSettings::new(self.id, peers, self.seed);
        settings.fsync = self.fsync;
        if let Some(entries) = self.snapshot_entries {
            settings.snapshot_entries = entries;
        }
        // turmoil delivers each message after up to 100 ms: the cluster's timing is that of
        // brokers a WAN apart, not of the loopback that production's defaults are tuned on.
        settings.heartbeat_ms = HEARTBEAT_MS;
        settings.election_timeout_ms = ELECTION_TIMEOUT_MS;
        let brokers = ids.map(|(id, b)| (id, format!("{b}:{PORT}"))).collect();
        let (_, incoming) = net.bind(listen_addr(PEER_PORT)).await?;
        type Boxed = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
        let serve_peers: Box<dyn FnOnce(server::PeerService, Boxed) -> Boxed + Send> =
            Box::new(move |service, stop| {
                Box::pin(async move {
                    let served = tonic::transport::Server::builder()
                        .add_service(service)
                        .serve_with_incoming_shutdown(incoming, stop);
                    let _ = served.await;
                })
            });
        let crashing = net.crashing.clone();
        let (traffic, own) = net.traffic.clone().expect("a broker host counts its traffic");
        let connect: mini_pubsub::cluster::Connector = Arc::new(move |addr: &str| {
            let (host, port) = addr.rsplit_once(':').expect("peers are HOST:PORT");
            let counted = Counted { traffic: traffic.clone(), from: own.clone(), to: host.to_string() };
            crate::world::peer_channel(host, port.parse().expect("a port"), crashing.clone(), counted)
        });
        let dir = std::path::Path::new(DATA_DIR).join("raft");
        let fs: Arc<dyn Fs> = Arc::new(disk.clone());
        Ok(server::ClusterRun { settings, brokers, fs, dir, connect, serve_peers })
    }
}

impl BrokerHost {
    /// One life of the host. A supervisor: a broker that cannot start (its disk is failing)
    /// is started again a second later, as systemd would, up to `START_ATTEMPTS_MAX` times.
    async fn life(self) -> turmoil::Result {
        tokio::spawn(corrupter(self.name.clone(), self.disk.clone(), self.corrupt_rx.clone(), self.history.clone()));
        for _ in 0..START_ATTEMPTS_MAX {
            match self.serve().await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let text = format!("broker failed to start: {e}; starting again in 1 s");
                    self.history.record(&self.name, Event::Step { text });
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        Err(format!("{} failed to start {START_ATTEMPTS_MAX} times", self.name).into())
    }

    /// Opens the broker's log, listens on its port and serves (recording, when asked) until
    /// the host crashes; an error when the log cannot be opened or the port bound.
    async fn serve(&self) -> Result<(), Box<dyn std::error::Error>> {
        let (name, history) = (&self.name, &self.history);
        let storage = match (&self.node, self.storage.clone()) {
            // A node's broker state is synced by its Raft snapshots, and restored from the
            // last at each start: the Raft log makes writes durable.
            (Some(_), Some(config)) => {
                Some(FileStorageConfig { dir: std::path::Path::new(DATA_DIR).into(), ..config }.node_state())
            }
            (_, storage) => storage,
        };
        let store: Box<dyn Storage> = match storage {
            Some(config) => Box::new(ObservedStorage {
                inner: FileStorage::open(Arc::new(self.disk.clone()), config)?,
                host: name.clone(),
                history: history.clone(),
                reported: 0,
            }),
            None => Box::new(MemoryStorage),
        };
        let traffic = Some((self.traffic.clone(), name.clone()));
        let net = SimNet { crashing: Some(self.crashing.clone()), traffic };
        let (_, incoming) = net.bind(listen_addr(PORT)).await?;
        let shutdown = std::future::pending::<()>();
        let cluster =
            self.node.as_ref().map(|node| Replicated { nodes: node.notices.clone(), ..Replicated::default() });
        let observer = Arc::new(BrokerObserver { host: name.clone(), history: history.clone(), cluster });
        let (config, clock) = (self.config.clone(), Arc::new(SimClock));
        let record = self.recording.as_ref().map(|recording| recording.next_life(name));
        let cluster = match &self.node {
            Some(node) => {
                let net = SimNet {
                    crashing: Some(self.crashing.clone()),
                    traffic: Some((self.traffic.clone(), name.clone())),
                };
                Some(node.run(&self.disk, net).await?)
            }
            None => None,
        };
        let hooks = server::Hooks { observer: Some(observer), record, cluster, reload: None };
        server::run_with(incoming, shutdown, config, store, clock, hooks).await?;
        Ok(())
    }
}

/// The file log a scenario's brokers run on (`config storage=file`, the default, with
/// `fsync=always|interval|never`), or `None` for the memory log.
fn storage_config(scenario: &Scenario) -> Option<FileStorageConfig> {
    let scenario::Storage::File(fsync) = scenario.config.storage else { return None };
    let mut config = FileStorageConfig::new(DATA_DIR);
    config.fsync = match fsync {
        scenario::Fsync::Interval(interval) => FsyncPolicy::IntervalMs(interval.as_millis() as u64),
        scenario::Fsync::Never => FsyncPolicy::Never,
        scenario::Fsync::Always => FsyncPolicy::Always,
    };
    // Small segments and cache, so scenarios roll segments and read from the disk.
    config.segment_bytes = 64 * 1024;
    config.tail_cache_bytes = 16 * 1024;
    Some(config)
}

/// Runs on a broker host: corrupts a byte of its newest segment when asked, and notes
/// where in the history.
async fn corrupter(host: String, disk: FaultyFs, asks: Arc<Mutex<mpsc::Receiver<CorruptAsk>>>, history: History) {
    while let Some(ask) = asks.lock().await.recv().await {
        let text = match corrupt_newest_segment(&disk as &dyn Fs, std::path::Path::new(DATA_DIR), ask) {
            Ok(Some((file, position))) => format!("disk corrupted: flipped byte {position} of {file}"),
            Ok(None) => "disk corrupt: no segment with data to corrupt".to_string(),
            Err(e) => format!("disk corrupt failed: {e}"),
        };
        history.record(&host, Event::Step { text });
    }
}
