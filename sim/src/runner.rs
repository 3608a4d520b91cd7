//! Runs a scenario: brokers and apps on turmoil hosts, the driver stepping simulated time
//! and applying each step when its time comes, then the verdict.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mini_pubsub::env::{DiskFault, FaultyFs, Fs, Net};
use mini_pubsub::server::{self, ServerConfig};
use mini_pubsub::storage::{FileStorage, FileStorageConfig, FsyncPolicy, MemoryStorage, Storage};
use rand::{RngExt, SeedableRng};
use tokio::sync::{mpsc, Mutex};

use crate::agent::{self, AckMode, Command, Counters, NackSpec, PublishSpec, PORT};
use crate::checker;
use crate::disk::{corrupt_newest_segment, ObservedStorage, TurmoilFs};
use crate::facts;
use crate::history::{render, Entry, Event, History};
use crate::scenario::{duration, Scenario, Step, Verb};
use crate::world::{listen_addr, SimClock, SimNet};

/// The host that runs admin steps (topic and subscription create, delete, seek).
pub const ADMIN_HOST: &str = "admin";
/// How long the run goes on after the last step, with every fault healed and the admin
/// host pulling what is left on every audited subscription, so that what was published
/// can be delivered before the checker reads the history.
const DRAIN: Duration = Duration::from_secs(30);
/// Commands waiting for an app host.
const COMMAND_QUEUE_MAX: usize = 256;
/// Longest the driver waits for an admin step to finish before going on.
const ADMIN_WAIT_MAX: Duration = Duration::from_secs(15);
/// A host with no delivery for this long counts as stalled.
const STALL: Duration = Duration::from_secs(1);
/// Times a broker host tries to start before its software gives up.
const START_ATTEMPTS_MAX: u32 = 600;
/// Where a broker keeps its file log on its simulated disk.
const DATA_DIR: &str = "/data";
/// Turmoil's torn-write block: a crash may keep any whole-block prefix of a pending write.
const DISK_BLOCK_BYTES: u64 = 512;

/// The outcome of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub seed: u64,
    /// One line per event, stamped with simulated time (condensed).
    pub trace: String,
    /// Every event of the run, for `--trace full`.
    pub entries: Vec<Entry>,
    /// Expectations, history counts, checker results, faults.
    pub verdict: String,
    pub passed: bool,
    /// What failed, as a stable signature (the failing expectations' lines and checks'
    /// names), or `None` when the run passed.
    pub failure: Option<String>,
    /// Simulated time the run covered, drain included.
    pub simulated: Duration,
}

/// Runs `scenario` with `seed` (or its `config seed`, or 0).
pub fn run(scenario: &Scenario, seed: Option<u64>) -> Report {
    let seed = seed.or_else(|| scenario.config.get("seed").and_then(|s| s.parse().ok())).unwrap_or(0);
    let mut driver = Driver::new(scenario, seed);
    let mut failures = Vec::new();
    let mut lines = Vec::new();
    for step in &scenario.steps {
        if let Err(message) = driver.advance_to(step.at) {
            failures.push(message);
            break;
        }
        match driver.apply(step) {
            Ok(Some(line)) => lines.push(line),
            Ok(None) => {}
            Err(line) => {
                // The signature leaves out line numbers and times, so shrinking can match it.
                let what = line.split_once("ms: ").map_or(line.as_str(), |(_, what)| what).to_string();
                failures.push(format!("expectation {what}"));
                lines.push(line);
            }
        }
    }
    failures.extend(driver.heal_all());
    let healed_at_ms = driver.calm_since_ms.unwrap_or(driver.now_ms());
    let drain_from_ms = driver.now_ms();
    driver.send(ADMIN_HOST, Command::Drain { subs: facts::audited(scenario).into_keys().collect() });
    let end = driver.elapsed() + DRAIN;
    if let Err(message) = driver.advance_to(end) {
        failures.push(message);
    }
    let entries = driver.history.entries();
    let loss_allowed = scenario.config.get("loss").is_some_and(|l| l == "allowed");
    let bound_ms = DRAIN.as_millis() as u64;
    let settled = checker::Unsettled { faults: driver.fault_windows.clone(), disconnects: driver.disconnects.clone() };
    let context = checker::Context {
        audited: facts::audited(scenario),
        loss_allowed,
        healed_at_ms,
        drain_from_ms,
        bound_ms,
        retry: facts::retry_bounds(scenario),
        ordered: facts::ordered_subscriptions(scenario),
        unsettled: settled,
        dedupe_window_ms: ServerConfig::default().broker.dedupe_window_ms,
    };
    let checks = checker::check(&entries, &context);
    failures.extend(checks.iter().filter(|c| !c.passed).map(|c| format!("check {}", c.name)));
    let verdict = verdict(seed, &lines, &entries, &checks, &driver.faults);
    let failure = (!failures.is_empty()).then(|| failures.join("; "));
    let simulated = driver.elapsed();
    let trace = render(&entries, false);
    Report { seed, trace, entries, verdict, passed: failure.is_none(), failure, simulated }
}

struct Driver<'a> {
    sim: turmoil::Sim<'a>,
    history: History,
    apps: BTreeMap<String, mpsc::Sender<Command>>,
    /// Every app host's counters; the admin host's, and how many admin steps it was sent.
    counters: BTreeMap<String, Arc<Counters>>,
    admin: Arc<Counters>,
    admin_sent: u64,
    brokers: Vec<String>,
    /// Every pair of hosts a fault touched, to heal at the end.
    touched: Vec<(String, String)>,
    crashed: Vec<String>,
    /// Network faults in place: (key, description, app hosts on it, bytes they had written).
    open_faults: Vec<(String, String, Vec<String>, u64)>,
    /// When the last fault ended, while none is in place: liveness is measured from here.
    calm_since_ms: Option<u64>,
    /// When faults were in place: (first began, last ended; `u64::MAX` while open).
    fault_windows: Vec<(u64, u64)>,
    /// `disconnect` steps: (host, when).
    disconnects: Vec<(String, u64)>,
    /// Faults applied, in order.
    faults: Vec<String>,
    ack_deadline_s: u32,
    /// Each broker's disk, whose faults `disk` steps set.
    disks: BTreeMap<String, FaultyFs>,
    /// Asks a broker host to corrupt a byte of its newest segment (at a fraction of it):
    /// that needs the host's own filesystem, so a task on the host does it.
    corrupters: BTreeMap<String, mpsc::Sender<f64>>,
    /// Set while a broker host crashes, so its connections close without a FIN.
    crash_flags: BTreeMap<String, Arc<std::sync::atomic::AtomicBool>>,
    /// Draws corruption positions, from the run's seed.
    rng: rand::rngs::StdRng,
}

impl<'a> Driver<'a> {
    fn new(scenario: &Scenario, seed: u64) -> Self {
        let last = scenario.steps.iter().map(|s| s.at + s.within.unwrap_or_default()).max().unwrap_or_default();
        let mut builder = turmoil::Builder::new();
        builder.rng_seed(seed).enable_random_order().simulation_duration(last + DRAIN + Duration::from_secs(60));
        builder.fs().block_size(DISK_BLOCK_BYTES);
        let mut sim = builder.build();
        let history = History::default();
        let ack_deadline =
            scenario.config.get("ack_deadline").and_then(|d| duration(d)).unwrap_or(Duration::from_secs(10));
        let partitions: u32 = scenario.config.get("partitions").and_then(|p| p.parse().ok()).unwrap_or(1);
        let storage = storage_config(scenario);
        let disk_latency = scenario.config.get("disk_latency").and_then(|d| duration(d)).unwrap_or_default();
        let mut disks = BTreeMap::new();
        let mut corrupters = BTreeMap::new();
        let mut crash_flags = BTreeMap::new();
        for broker in &scenario.brokers {
            let mut config = ServerConfig::default();
            config.broker.ack_deadline_ms = ack_deadline.as_millis() as u64;
            config.broker.default_partitions = partitions;
            config.keepalive_interval_ms = 1_000;
            config.keepalive_timeout_ms = 2_000;
            config.sync_delay_ms = disk_latency.as_millis() as u64;
            let disk = FaultyFs::new(Arc::new(TurmoilFs));
            let (corrupt_tx, corrupt_rx) = mpsc::channel::<f64>(COMMAND_QUEUE_MAX);
            let corrupt_rx = Arc::new(Mutex::new(corrupt_rx));
            let (name, h) = (broker.clone(), history.clone());
            let (storage, host_disk) = (storage.clone(), disk.clone());
            let crashing = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let host_crashing = crashing.clone();
            sim.host(broker.as_str(), move || {
                let (config, storage, disk) = (config.clone(), storage.clone(), host_disk.clone());
                let corrupter = corrupter(name.clone(), disk.clone(), corrupt_rx.clone(), h.clone());
                let (name, h) = (name.clone(), h.clone());
                let crashing = host_crashing.clone();
                async move {
                    tokio::spawn(corrupter);
                    // A supervisor: a broker that cannot start (its disk is failing) is
                    // started again a second later, as systemd would.
                    for _ in 0..START_ATTEMPTS_MAX {
                        let started = async {
                            let store: Box<dyn Storage> = match storage.clone() {
                                Some(config) => Box::new(ObservedStorage {
                                    inner: FileStorage::open(Arc::new(disk.clone()), config)?,
                                    host: name.clone(),
                                    history: h.clone(),
                                    reported: 0,
                                }),
                                None => Box::new(MemoryStorage),
                            };
                            let net = SimNet { crashing: Some(crashing.clone()) };
                            let (_, incoming) = net.bind(listen_addr(PORT)).await?;
                            let shutdown = std::future::pending::<()>();
                            server::run(incoming, shutdown, config.clone(), store, Arc::new(SimClock)).await?;
                            Ok::<(), Box<dyn std::error::Error>>(())
                        };
                        match started.await {
                            Ok(()) => return Ok(()),
                            Err(e) => {
                                let text = format!("broker failed to start: {e}; starting again in 1 s");
                                h.record(&name, Event::Step { text });
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                        }
                    }
                    Err(format!("{name} failed to start {START_ATTEMPTS_MAX} times").into())
                }
            });
            disks.insert(broker.clone(), disk);
            crash_flags.insert(broker.clone(), crashing);
            corrupters.insert(broker.clone(), corrupt_tx);
        }
        let mut apps = BTreeMap::new();
        let mut admin = Arc::default();
        let mut all_counters = BTreeMap::new();
        let hosts = scenario.apps.iter().map(String::as_str).chain([ADMIN_HOST]);
        for app in hosts {
            let (tx, rx) = mpsc::channel(COMMAND_QUEUE_MAX);
            let rx = Arc::new(Mutex::new(rx));
            let counters = Arc::new(Counters::default());
            if app == ADMIN_HOST {
                admin = counters.clone();
            }
            all_counters.insert(app.to_string(), counters.clone());
            let (name, broker, h) = (app.to_string(), scenario.brokers[0].clone(), history.clone());
            sim.host(app, move || agent::run(name.clone(), broker.clone(), rx.clone(), counters.clone(), h.clone()));
            apps.insert(app.to_string(), tx);
        }
        Driver {
            sim,
            history,
            apps,
            counters: all_counters,
            admin,
            admin_sent: 0,
            open_faults: Vec::new(),
            calm_since_ms: Some(0),
            fault_windows: Vec::new(),
            disconnects: Vec::new(),
            brokers: scenario.brokers.clone(),
            touched: Vec::new(),
            crashed: Vec::new(),
            faults: Vec::new(),
            ack_deadline_s: ack_deadline.as_secs().max(1) as u32,
            disks,
            corrupters,
            crash_flags,
            rng: rand::rngs::StdRng::seed_from_u64(seed ^ 0xd15c),
        }
    }

    fn elapsed(&self) -> Duration {
        self.sim.elapsed()
    }

    /// Steps simulated time forward to `at`.
    fn advance_to(&mut self, at: Duration) -> Result<(), String> {
        while self.sim.elapsed() < at {
            self.sim
                .step()
                .map_err(|e| format!("the simulation failed at {} ms: {e}", self.sim.elapsed().as_millis()))?;
        }
        Ok(())
    }

    fn send(&mut self, host: &str, command: Command) {
        let tx = self.apps.get(host).expect("the parser checked every host");
        if tx.try_send(command).is_err() {
            self.history.record_at(self.now_ms(), host, Event::Step { text: "command dropped: queue full".into() });
        }
    }

    /// Sends an admin step and runs the simulation until the admin host has finished it
    /// (bounded): a scenario's admin steps complete before the steps after them.
    fn admin_step(&mut self, command: Command) -> Result<(), String> {
        self.send(ADMIN_HOST, command);
        self.admin_sent += 1;
        let deadline = self.sim.elapsed() + ADMIN_WAIT_MAX;
        while self.admin.admin_done.load(std::sync::atomic::Ordering::Relaxed) < self.admin_sent {
            if self.sim.elapsed() >= deadline {
                return Err(format!("an admin step did not finish within {} s", ADMIN_WAIT_MAX.as_secs()));
            }
            self.advance_to(self.sim.elapsed() + Duration::from_millis(1))?;
        }
        Ok(())
    }

    fn now_ms(&self) -> u64 {
        self.sim.elapsed().as_millis() as u64
    }

    fn note(&mut self, text: String) {
        self.history.record_at(self.now_ms(), "driver", Event::Step { text });
    }

    /// Bytes the app hosts among `hosts` (all apps when empty) have written so far.
    fn written(&self, hosts: &[String]) -> u64 {
        let apps = self.counters.iter().filter(|(h, _)| hosts.is_empty() || hosts.contains(h));
        apps.map(|(_, c)| c.bytes_written.load(std::sync::atomic::Ordering::Relaxed)).sum()
    }

    /// Opens the traffic window of a network fault, or closes one: a fault across which
    /// the apps on it wrote nothing while it was in place did nothing, and fails the run.
    fn track_fault(&mut self, step: &Step) -> Result<(), String> {
        let (a, b) = (step.arg("a"), step.arg("b"));
        let pair = |kind: &str| {
            let (x, y) = if a <= b { (a, b) } else { (b, a) };
            format!("{kind} {x} {y}")
        };
        let oneway = step.option("oneway") == Some("true");
        let on_link = vec![a.to_string(), b.to_string()];
        let (key, opens, hosts) = match step.verb {
            Verb::Partition | Verb::Heal if oneway => {
                (format!("oneway {a} {b}"), step.verb == Verb::Partition, on_link)
            }
            Verb::Partition | Verb::Heal => (pair("link"), step.verb == Verb::Partition, on_link),
            Verb::Hold | Verb::Release => (pair("hold"), step.verb == Verb::Hold, on_link),
            Verb::Latency => (pair("latency"), duration(step.arg("delay")).is_some_and(|d| !d.is_zero()), on_link),
            Verb::FailRate => {
                ("fail_rate".to_string(), step.arg("rate").parse::<f64>().is_ok_and(|r| r > 0.0), Vec::new())
            }
            Verb::Isolate => (format!("isolate {}", step.arg("host")), true, vec![step.arg("host").to_string()]),
            Verb::Disk if step.arg("fault") != "corrupt" => {
                (format!("disk {}", step.arg("host")), step.arg("fault") != "ok", Vec::new())
            }
            _ => return Ok(()),
        };
        let closed = self.close_fault(&key);
        if opens {
            let apps: Vec<String> = hosts.into_iter().filter(|h| self.counters.contains_key(h)).collect();
            if apps.is_empty() && !hosts_empty(&key) {
                return closed;
            }
            let activity = self.activity(&key, &apps);
            self.open_faults.push((key, step_text(step), apps, activity));
        }
        closed
    }

    fn close_fault(&mut self, key: &str) -> Result<(), String> {
        let Some(index) = self.open_faults.iter().position(|(k, ..)| k == key) else { return Ok(()) };
        let (key, text, hosts, before) = self.open_faults.remove(index);
        if self.activity(&key, &hosts) == before {
            let what = if key.starts_with("disk ") {
                "the disk refused nothing while it was in place"
            } else {
                "no app on it sent anything while it was in place"
            };
            return Err(format!("fault `{text}` did nothing: {what}"));
        }
        Ok(())
    }

    /// What a fault acts on, counted: for a disk fault the operations the disk refused,
    /// for a network fault the bytes the apps on it wrote.
    fn activity(&self, key: &str, apps: &[String]) -> u64 {
        match key.strip_prefix("disk ").and_then(|host| self.disks.get(host)) {
            Some(disk) => disk.refused(),
            None => self.written(apps),
        }
    }

    /// Applies one step. Expectations answer with their verdict line (`Err` when failed);
    /// a heal that ends a fault which did nothing is an `Err` too (the heal still happens).
    fn apply(&mut self, step: &Step) -> Result<Option<String>, String> {
        let tracked = self.track_fault(step);
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
        let (a, b) = (step.arg("a").to_string(), step.arg("b").to_string());
        let oneway = step.option("oneway") == Some("true");
        match step.verb {
            Verb::TopicCreate => {
                let partitions = step.option("partitions").and_then(|p| p.parse().ok()).unwrap_or(0);
                self.admin_step(Command::CreateTopic { topic: step.arg("topic").into(), partitions })?;
            }
            Verb::TopicDelete => self.admin_step(Command::DeleteTopic { topic: step.arg("topic").into() })?,
            Verb::SubCreate => {
                let ack_deadline_s =
                    step.option("ack_deadline").and_then(duration).map_or(self.ack_deadline_s, |d| d.as_secs() as u32);
                let (min, max) = (step.option("min_backoff"), step.option("max_backoff"));
                let retry = (min.is_some() || max.is_some()).then(|| (min.and_then(duration), max.and_then(duration)));
                let attempts = step.option("max_attempts").and_then(|a| a.parse().ok()).unwrap_or(0);
                let command = Command::CreateSub {
                    sub: step.arg("sub").into(),
                    topic: step.option("topic").unwrap_or(step.arg("sub")).into(),
                    ack_deadline_s,
                    latest: step.option("start") == Some("latest"),
                    retry,
                    dead_letter: step.option("dead_letter").map(|topic| (topic.to_string(), attempts)),
                    ordered: step.option("ordered") == Some("true"),
                    exclusive: step.option("mode") == Some("exclusive"),
                };
                self.admin_step(command)?;
            }
            Verb::SubDelete => self.admin_step(Command::DeleteSub { sub: step.arg("sub").into() })?,
            Verb::Redrive => {
                let max = step.option("max").and_then(|m| m.parse().ok()).unwrap_or(0);
                self.admin_step(Command::Redrive { sub: step.arg("sub").into(), max })?;
            }
            Verb::Seek => {
                self.admin_step(Command::Seek { sub: step.arg("sub").into(), latest: step.arg("to") == "latest" })?;
            }
            Verb::Publish => {
                let number = |k: &str, default: u64| step.option(k).and_then(|v| v.parse().ok()).unwrap_or(default);
                let spec = PublishSpec {
                    topic: step.arg("topic").into(),
                    key: step.option("key").map(str::to_string),
                    value: step.option("value").map(str::to_string),
                    size: number("size", 0) as usize,
                    count: number("count", 1),
                    every: step.option("every").and_then(duration).unwrap_or_default(),
                    partition: step.option("partition").and_then(|p| p.parse().ok()),
                    idempotency_key: step.option("idempotency_key").map(str::to_string),
                    library: step.option("via") == Some("library"),
                };
                self.send(step.arg("host"), Command::Publish(spec));
            }
            Verb::Subscribe => {
                let ack = match step.option("ack") {
                    Some("none") => AckMode::None,
                    Some("nack") => AckMode::Nack,
                    Some("nack-all") => AckMode::NackAll,
                    Some("reject") => AckMode::Reject,
                    Some("manual") => AckMode::Manual,
                    _ => AckMode::All,
                };
                let nack = NackSpec {
                    delay: step.option("nack_delay").and_then(duration),
                    reason: step.option("reason").unwrap_or_default().to_string(),
                    terminal: false,
                };
                let library = step.option("via") == Some("library");
                if library && matches!(ack, AckMode::Manual) {
                    return Err("subscribe via=library takes ack=all|none|nack|nack-all|reject, not manual".into());
                }
                let command = Command::Subscribe {
                    sub: step.arg("sub").into(),
                    ack,
                    ack_delay: step.option("ack_delay").and_then(duration).unwrap_or_default(),
                    max_outstanding: step.option("max").and_then(|m| m.parse().ok()).unwrap_or(0),
                    nack,
                    session: step.option("session").and_then(duration),
                    library,
                };
                self.send(step.arg("host"), command);
            }
            Verb::Disconnect => {
                self.disconnects.push((step.arg("host").to_string(), self.now_ms()));
                self.send(step.arg("host"), Command::Disconnect);
            }
            Verb::Ack => self.send(step.arg("host"), Command::Ack { all: step.arg("which") == "all" }),
            Verb::Nack => {
                let nack = NackSpec {
                    delay: step.option("delay").and_then(duration),
                    reason: step.option("reason").unwrap_or_default().to_string(),
                    terminal: step.option("terminal") == Some("true"),
                };
                self.send(step.arg("host"), Command::Nack(nack));
            }
            Verb::Modack => {
                let seconds = duration(step.arg("deadline")).unwrap_or_default().as_secs() as u32;
                self.send(step.arg("host"), Command::Modack { seconds });
            }
            Verb::Partition if oneway => {
                self.fault(format!("partition {a} -> {b}"), |s| s.partition_oneway(a.as_str(), b.as_str()), step)
            }
            Verb::Partition => {
                self.fault(format!("partition {a} <-> {b}"), |s| s.partition(a.as_str(), b.as_str()), step)
            }
            Verb::Heal if oneway => {
                self.fault(format!("heal {a} -> {b}"), |s| s.repair_oneway(a.as_str(), b.as_str()), step)
            }
            Verb::Heal => self.fault(format!("heal {a} <-> {b}"), |s| s.repair(a.as_str(), b.as_str()), step),
            Verb::Hold => self.fault(format!("hold {a} <-> {b}"), |s| s.hold(a.as_str(), b.as_str()), step),
            Verb::Release => self.fault(format!("release {a} <-> {b}"), |s| s.release(a.as_str(), b.as_str()), step),
            Verb::Latency => {
                let delay = step.arg("delay").to_string();
                let d = duration(&delay).unwrap_or_default();
                self.fault(
                    format!("latency {a} <-> {b} {delay}"),
                    |s| s.set_link_latency(a.as_str(), b.as_str(), d),
                    step,
                );
            }
            Verb::FailRate => {
                let rate: f64 = step.arg("rate").parse().unwrap_or(0.0);
                self.fault(format!("fail_rate {rate}"), |s| s.set_fail_rate(rate), step);
            }
            Verb::Crash => return self.crash(step.arg("host")),
            Verb::Disk => return self.disk(step.arg("host"), step.arg("fault")),
            Verb::Restart => return self.restart(step.arg("host")),
            Verb::Isolate => {
                let host = step.arg("host").to_string();
                let others: Vec<String> = self.all_hosts().into_iter().filter(|h| *h != host).collect();
                for other in &others {
                    self.sim.partition(host.as_str(), other.as_str());
                    self.touched.push((host.clone(), other.clone()));
                }
                self.faults.push(format!("isolate {host}"));
                self.note(format!("isolate {host}"));
            }
            Verb::Advance => {}
            Verb::Expect => return self.expect(step).map(Some),
            Verb::Check => {}
        }
        Ok(None)
    }

    fn fault(&mut self, text: String, apply: impl FnOnce(&mut turmoil::Sim<'a>), step: &Step) {
        apply(&mut self.sim);
        if !step.arg("a").is_empty() {
            self.touched.push((step.arg("a").to_string(), step.arg("b").to_string()));
        }
        self.faults.push(text.clone());
        self.note(text);
    }

    fn crash(&mut self, host: &str) -> Result<Option<String>, String> {
        if !self.sim.is_host_running(host) {
            return Err(format!("crash {host}: the host was not running, so the fault did nothing"));
        }
        let flag = self.crash_flags.get(host);
        flag.inspect(|f| f.store(true, std::sync::atomic::Ordering::Relaxed));
        self.sim.crash(host);
        flag.inspect(|f| f.store(false, std::sync::atomic::Ordering::Relaxed));
        self.crashed.push(host.to_string());
        self.faults.push(format!("crash {host}"));
        self.history.record_at(self.now_ms(), "driver", Event::Crashed { host: host.to_string() });
        Ok(None)
    }

    /// Sets a broker's disk fault, or corrupts a byte of its newest segment.
    fn disk(&mut self, host: &str, fault: &str) -> Result<Option<String>, String> {
        let Some(disk) = self.disks.get(host) else {
            return Err(format!("disk {host}: not a broker, so it has no disk"));
        };
        match fault {
            "eio" => disk.set_fault(Some(DiskFault::Eio)),
            "full" => disk.set_fault(Some(DiskFault::Full)),
            "torn" => disk.set_fault(Some(DiskFault::TornWrite)),
            "ok" => disk.set_fault(None),
            _ => {
                let fraction = self.rng.random_range(0.0..1.0);
                let sent = self.corrupters[host].try_send(fraction);
                if sent.is_err() || !self.sim.is_host_running(host) {
                    return Err(format!("disk {host} corrupt: the host is not running, so the fault did nothing"));
                }
            }
        }
        self.faults.push(format!("disk {host} {fault}"));
        self.note(format!("disk {host} {fault}"));
        Ok(None)
    }

    fn restart(&mut self, host: &str) -> Result<Option<String>, String> {
        if self.sim.is_host_running(host) {
            return Err(format!("restart {host}: the host was running, so the step did nothing"));
        }
        self.sim.bounce(host);
        self.crashed.retain(|h| h != host);
        self.faults.push(format!("restart {host}"));
        self.history.record_at(self.now_ms(), "driver", Event::Restarted { host: host.to_string() });
        Ok(None)
    }

    fn all_hosts(&self) -> Vec<String> {
        self.brokers.iter().chain(self.apps.keys()).cloned().collect()
    }

    /// Evaluates an expectation now, or (eventually) as soon as it holds within its bound.
    fn expect(&mut self, step: &Step) -> Result<String, String> {
        let deadline = self.sim.elapsed() + step.within.unwrap_or_default();
        loop {
            if let Some(seen) = self.holds(step) {
                let line = format!("line {}: pass at {} ms: {}", step.line, self.now_ms(), describe(step, &seen));
                self.note(format!("expect {} ok", describe(step, &seen)));
                return Ok(line);
            }
            if self.sim.elapsed() >= deadline {
                let line = format!("line {}: FAIL at {} ms: {}", step.line, self.now_ms(), describe(step, "not seen"));
                self.note(format!("expect {} FAILED", describe(step, "not seen")));
                return Err(line);
            }
            if let Err(message) = self.advance_to(self.sim.elapsed() + Duration::from_millis(1)) {
                return Err(format!("line {}: FAIL: {message}", step.line));
            }
        }
    }

    /// `Some(what was seen)` when the expectation holds now.
    fn holds(&self, step: &Step) -> Option<String> {
        let host = step.arg("host");
        let sub = step.option("sub");
        let count: usize = step.option("count").and_then(|c| c.parse().ok()).unwrap_or(1);
        let attempt: Option<u32> = step.option("attempt").and_then(|a| a.parse().ok());
        let at_host = |e: &Entry| e.host == host;
        let seen = match step.arg("what") {
            "received" => self.history.count(|e| {
                at_host(e)
                    && matches!(&e.event, Event::Delivered { sub: s, attempt: a, .. }
                        if sub.is_none_or(|x| x == s) && attempt.is_none_or(|x| x == *a))
            }),
            "acked" | "expired" => {
                let wanted = if step.arg("what") == "acked" { "applied" } else { "expired" };
                self.history.count(|e| {
                    at_host(e)
                        && matches!(&e.event, Event::AckAnswered { sub: s, op, result, .. }
                            if op == "ack" && result == wanted && sub.is_none_or(|x| x == s))
                })
            }
            "error" => {
                let code = step.option("code");
                self.history.count(|e| {
                    at_host(e)
                        && match &e.event {
                            Event::PublishFailed { code: c, .. }
                            | Event::PublishInvoked { after: Some(c), .. }
                            | Event::StreamFailed { code: c, .. }
                            | Event::AdminFailed { code: c, .. } => code.is_none_or(|x| x == c),
                            _ => false,
                        }
                })
            }
            "stalled" => {
                let since = self.now_ms().saturating_sub(STALL.as_millis() as u64);
                let recent =
                    self.history.count(|e| at_host(e) && e.at_ms > since && matches!(e.event, Event::Delivered { .. }));
                return (recent == 0).then(|| "nothing for 1 s".to_string());
            }
            other => unreachable!("the parser allows no `{other}`"),
        };
        (seen >= count).then(|| format!("{seen} seen"))
    }

    /// Heals everything; returns the faults that were still in place and did nothing.
    fn heal_all(&mut self) -> Vec<String> {
        let keys: Vec<String> = self.open_faults.iter().map(|(k, ..)| k.clone()).collect();
        let idle: Vec<String> = keys.iter().filter_map(|k| self.close_fault(k).err()).collect();
        for (a, b) in std::mem::take(&mut self.touched) {
            self.sim.repair(a.as_str(), b.as_str());
            self.sim.release(a.as_str(), b.as_str());
            self.sim.set_link_latency(a.as_str(), b.as_str(), Duration::ZERO);
        }
        self.sim.set_fail_rate(0.0);
        for disk in self.disks.values() {
            disk.set_fault(None);
        }
        for host in std::mem::take(&mut self.crashed) {
            self.sim.bounce(host.as_str());
            self.history.record_at(self.now_ms(), "driver", Event::Restarted { host });
        }
        let now = self.now_ms();
        if let Some(window) = self.fault_windows.last_mut().filter(|w| w.1 == u64::MAX) {
            window.1 = now;
        }
        self.note("heal everything and drain".to_string());
        idle
    }
}

/// Whether a fault key stands for every app (fail_rate, isolate), not a link's two ends.
fn hosts_empty(key: &str) -> bool {
    key == "fail_rate" || key.starts_with("isolate ") || key.starts_with("disk ")
}

/// The file log a scenario's brokers run on (`config storage=file`, the default, with
/// `fsync=always|interval|never`), or `None` for the memory log.
fn storage_config(scenario: &Scenario) -> Option<FileStorageConfig> {
    if scenario.config.get("storage").is_some_and(|s| s == "memory") {
        return None;
    }
    let mut config = FileStorageConfig::new(DATA_DIR);
    let interval =
        scenario.config.get("fsync_interval").and_then(|d| duration(d)).unwrap_or(Duration::from_millis(100));
    config.fsync = match scenario.config.get("fsync").map(String::as_str) {
        Some("interval") => FsyncPolicy::IntervalMs(interval.as_millis() as u64),
        Some("never") => FsyncPolicy::Never,
        _ => FsyncPolicy::Always,
    };
    // Small segments and cache, so scenarios roll segments and read from the disk.
    config.segment_bytes = 64 * 1024;
    config.tail_cache_bytes = 16 * 1024;
    Some(config)
}

/// Runs on a broker host: corrupts a byte of its newest segment when asked, and notes
/// where in the history.
async fn corrupter(host: String, disk: FaultyFs, asks: Arc<Mutex<mpsc::Receiver<f64>>>, history: History) {
    while let Some(fraction) = asks.lock().await.recv().await {
        let text = match corrupt_newest_segment(&disk as &dyn Fs, std::path::Path::new(DATA_DIR), fraction) {
            Ok(Some((file, position))) => format!("disk corrupted: flipped byte {position} of {file}"),
            Ok(None) => "disk corrupt: no segment with data to corrupt".to_string(),
            Err(e) => format!("disk corrupt failed: {e}"),
        };
        history.record(&host, Event::Step { text });
    }
}

/// A step as its scenario line would say it (without time).
fn step_text(step: &Step) -> String {
    let mut words: Vec<String> = step.args.values().cloned().collect();
    words.extend(step.options.iter().map(|(k, v)| format!("{k}={v}")));
    format!("{:?} {}", step.verb, words.join(" ")).to_lowercase()
}

fn describe(step: &Step, seen: &str) -> String {
    let mut words = vec![step.arg("host").to_string(), step.arg("what").to_string()];
    words.extend(step.options.iter().map(|(k, v)| format!("{k}={v}")));
    let within = step.within.map(|w| format!(" within {} ms", w.as_millis())).unwrap_or_default();
    format!("{}{within} ({seen})", words.join(" "))
}

fn verdict(
    seed: u64,
    expectations: &[String],
    entries: &[Entry],
    checks: &[checker::Check],
    faults: &[String],
) -> String {
    let count = |f: fn(&Event) -> bool| entries.iter().filter(|e| f(&e.event)).count();
    let mut out = vec![format!("seed: {seed}"), "expectations:".to_string()];
    out.extend(expectations.iter().map(|e| format!("  {e}")));
    out.push(format!(
        "history: {} published, {} publish failures, {} deliveries, {} acks applied, {} stream failures",
        count(|e| matches!(e, Event::Published { .. })),
        count(|e| matches!(e, Event::PublishFailed { .. })),
        count(|e| matches!(e, Event::Delivered { .. })),
        count(|e| matches!(e, Event::AckAnswered { op, result, .. } if op == "ack" && result == "applied")),
        count(|e| matches!(e, Event::StreamFailed { .. })),
    ));
    out.push("checks:".to_string());
    out.extend(
        checks.iter().map(|c| format!("  {:<24} {} {}", c.name, if c.passed { "ok  " } else { "FAIL" }, c.detail)),
    );
    out.push(format!("faults fired: {}", if faults.is_empty() { "none".to_string() } else { faults.join(", ") }));
    out.join("\n")
}
