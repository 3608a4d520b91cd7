//! The scenario language: one step per line, `#` comments, checked before anything runs.
//!
//! ```text
//! # A subscriber's lease expires while it is partitioned away; the message comes back.
//! config seed=7 ack_deadline=5s
//! topic create orders partitions=2
//! sub create audit topic=orders
//! @0s    publish producer orders key=a value=hello
//! @10ms  subscribe worker audit ack=none
//! +20ms  partition worker broker
//! @6s    heal worker broker
//! eventually 10s expect worker received sub=audit count=1 attempt=2
//! check all
//! ```
//!
//! A line is `[time] [async|eventually D] verb positional... key=value...`. Time is `@D`
//! (absolute) or `+D` (after the previous step); durations are `250ms`, `5s` or `2m`.
//! Values may be quoted (`value="two words"`). Every verb says which positionals and
//! options it takes, and of what kind; anything else is an error naming file, line and
//! column, with the nearest known word. The parser turns each line into a typed [`Step`]
//! once: the runner, the agents and the checker never read the text again.

mod parse;
#[cfg(test)]
mod tests;

use std::fmt;
use std::time::Duration;

pub use parse::{duration, parse, ParseError};

/// The host that runs admin steps (topic and subscription create, delete, seek, redrive).
pub const ADMIN_HOST: &str = "admin";

/// A parsed scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub config: Config,
    pub steps: Vec<Step>,
    /// The broker hosts (`broker`).
    pub brokers: Vec<String>,
    /// The app hosts, in order of first use.
    pub apps: Vec<String>,
}

/// The `config` line's settings, with their defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The scenario's own seed; `run --seed` overrides it.
    pub seed: Option<u64>,
    /// Ack deadline of subscriptions that do not set one [10 s].
    pub ack_deadline: Duration,
    /// Partitions of topics created without a count (auto-created ones too) [1].
    pub partitions: u32,
    /// The scenario declares that a broker crash may lose acknowledged messages (memory
    /// log, `fsync=never` or `interval`, a corrupted segment) [forbidden].
    pub loss_allowed: bool,
    /// The broker's storage [file, fsync always].
    pub storage: Storage,
    /// How long the simulated disk takes to sync [0].
    pub disk_latency: Duration,
    /// Raft entries between a cluster node's snapshots, at the fewest [the broker's
    /// default, 10000].
    pub snapshot_entries: Option<u64>,
    /// The brokers' grants, as the server's `permissions` setting takes them; the apps
    /// connect without a credential, as the principal `anonymous` [none: everyone may do
    /// everything].
    pub permissions: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            seed: None,
            ack_deadline: Duration::from_secs(10),
            partitions: 1,
            loss_allowed: false,
            storage: Storage::File(Fsync::Always),
            disk_latency: Duration::ZERO,
            snapshot_entries: None,
            permissions: String::new(),
        }
    }
}

/// Where a simulated broker keeps its partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    Memory,
    File(Fsync),
}

/// The file log's fsync policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    Always,
    Interval(Duration),
    Never,
}

/// One line.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// 1-based line number in the file.
    pub line: usize,
    /// When it is due, from the start of the run.
    pub at: Duration,
    /// Whether the line gave a time (`@T` or `+D`). A step without one runs after the
    /// step before it, whenever that finished; a timed step that runs after its time
    /// because an earlier step held the timeline says so in the trace.
    pub timed: bool,
    pub action: Action,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Admin {
        admin: Admin,
        wait: Wait,
    },
    Publish(Publish),
    Subscribe(Subscribe),
    Disconnect {
        host: String,
    },
    /// A manual subscriber acks the oldest message it holds, or all of them.
    Ack {
        host: String,
        all: bool,
    },
    Nack {
        host: String,
        nack: Nack,
    },
    Modack {
        host: String,
        deadline: Duration,
    },
    Fault(Fault),
    Advance {
        by: Duration,
    },
    Expect(Expectation),
    /// `expect cluster leader[=HOST]`: a broker (that one) serves as the cluster's leader,
    /// now or (`eventually`) within the bound.
    ExpectLeader {
        host: Option<String>,
        within: Option<Duration>,
    },
    Check(CheckName),
}

/// Whether the driver waits for an admin step to finish before the steps after it run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The default: the timeline stops until the admin host has its answer.
    Blocking,
    /// `async`: the step is sent and the timeline goes on.
    Async,
}

/// An admin step, run by the admin host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admin {
    TopicCreate {
        topic: String,
        partitions: Option<u32>,
    },
    /// Without `force=true` the broker refuses to delete a topic that has subscriptions.
    TopicDelete {
        topic: String,
        force: bool,
    },
    SubCreate(SubSpec),
    SubDelete {
        sub: String,
    },
    Seek {
        sub: String,
        to: SeekTo,
    },
    /// Moves up to `max` dead letters read by `sub` back to their subscriptions (0: all).
    Redrive {
        sub: String,
        max: u32,
    },
    /// Asks the cluster's leader to hand the leadership to broker `to`.
    TransferLeader {
        to: String,
    },
}

/// `sub create`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubSpec {
    pub sub: String,
    pub topic: String,
    /// `None`: the scenario's `ack_deadline`.
    pub ack_deadline: Option<Duration>,
    pub start: SeekTo,
    /// Minimum and maximum backoff, when the subscription has a retry policy.
    pub retry: Option<(Option<Duration>, Option<Duration>)>,
    /// Dead-letter topic and max delivery attempts (0: the broker default).
    pub dead_letter: Option<(String, u32)>,
    pub ordered: bool,
    pub exclusive: bool,
}

/// Where a subscription starts, or where a seek moves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeekTo {
    Earliest,
    Latest,
}

/// How an app talks to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The generated tonic client, one request per message.
    Grpc,
    /// The client library's `Publisher` or `Subscriber`.
    Library,
}

/// A `publish` step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub host: String,
    pub topic: String,
    pub key: Option<String>,
    pub value: Option<String>,
    /// Values are padded with dots to this many bytes.
    pub size: usize,
    pub count: u64,
    pub every: Duration,
    pub partition: Option<u32>,
    /// The idempotency key of a single message, or the stem of `stem-1`, `stem-2`... for
    /// several. A retry resends the same key.
    pub idempotency_key: Option<String>,
    /// Every this-many-th message carries an idempotency key longer than the broker allows
    /// (`idempotency_key_bytes_max`), so the broker refuses it: INVALID_ARGUMENT naming it,
    /// and through the library, the rest of its batch sent again without it.
    pub refuse_every: Option<u64>,
    pub via: Via,
}

/// The length of the idempotency keys `refuse_every` gives: past the broker's default
/// `idempotency_key_bytes_max` of 256.
const REFUSED_KEY_BYTES: usize = 300;

impl Publish {
    /// The value and idempotency key of message `i` (from 0), whose id is `id`: the value
    /// (the id unless given) padded with dots to `size`; a key stem becomes `stem-1`,
    /// `stem-2`... when several messages are sent; every `refuse_every`-th message gets a
    /// key the broker refuses.
    pub fn nth(&self, i: u64, id: &str) -> (String, Option<String>) {
        let mut value = self.value.clone().unwrap_or_else(|| id.to_string());
        if value.len() < self.size {
            value.extend(std::iter::repeat_n('.', self.size - value.len()));
        }
        let idempotency_key = match &self.idempotency_key {
            Some(stem) if self.count > 1 => Some(format!("{stem}-{}", i + 1)),
            other => other.clone(),
        };
        if self.refuse_every.is_some_and(|n| (i + 1).is_multiple_of(n)) {
            return (value, Some(format!("{id}-{}", "x".repeat(REFUSED_KEY_BYTES))));
        }
        (value, idempotency_key)
    }
}

/// A `subscribe` step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub host: String,
    pub sub: String,
    pub ack: AckMode,
    /// How long the subscriber works on a message before answering it.
    pub ack_delay: Duration,
    /// Flow control: messages outstanding at most (0: the broker's default).
    pub max: u32,
    /// How its nacks are sent (`ack=nack`, `nack-all`, `reject`).
    pub nack: Nack,
    /// Session timeout on an exclusive subscription (`None`: the broker default).
    pub session: Option<Duration>,
    pub via: Via,
}

/// What a subscriber does with each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// Ack every message.
    All,
    /// Never ack: leases expire and messages come back.
    None,
    /// Nack the first delivery, ack the redeliveries.
    Nack,
    /// Nack every delivery: the message comes back until it is dead-lettered.
    NackAll,
    /// Nack every delivery as terminal: dead-lettered at once.
    Reject,
    /// Hold every message until an `ack`, `nack` or `modack` step says what to do.
    Manual,
}

/// What a nack carries beside its ack id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Nack {
    pub delay: Option<Duration>,
    pub reason: String,
    pub terminal: bool,
}

/// A fault, or the step that ends one.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    Partition { a: String, b: String, oneway: bool },
    Heal { a: String, b: String, oneway: bool },
    Hold { a: String, b: String },
    Release { a: String, b: String },
    Latency { a: String, b: String, delay: Duration },
    FailRate { rate: f64 },
    Isolate { host: String },
    Crash { host: String },
    Restart { host: String },
    Disk { host: String, fault: DiskFault },
}

/// What a `disk` step does to a broker's disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFault {
    Eio,
    Full,
    Torn,
    /// Flips one byte of the newest segment, once: anywhere (chosen by the seed), or in
    /// the frame of one record.
    Corrupt(Option<CorruptTarget>),
    /// Every fsync of a cluster node's Raft log takes this much longer, until `ok`.
    Slow(Duration),
    /// Ends the fault in place.
    Ok,
}

/// Where `disk HOST corrupt offset=N [part=length]` flips its byte: in the frame of the
/// record at offset `offset` of the newest segment, in its length field or its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorruptTarget {
    pub offset: u64,
    /// The frame's length field (the frame's end is lost with it), not its body.
    pub length: bool,
}

/// An `expect` step (`eventually D expect ...` gives it a bound).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectation {
    pub host: String,
    pub what: Expected,
    pub sub: Option<String>,
    /// At least this many matching events (`None`: 1).
    pub count: Option<u64>,
    pub attempt: Option<u32>,
    /// For `error`: the gRPC code, as the trace writes it (`NOT_FOUND`).
    pub code: Option<String>,
    /// `eventually D`: how long it may take; `None`: it must hold now.
    pub within: Option<Duration>,
}

/// What an expectation counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    Received,
    Acked,
    Expired,
    Error,
    Stalled,
    /// Publishes answered as duplicates (their idempotency key was stored before).
    Duplicate,
}

/// Which checks a `check` step asks for (every run is checked in full; the step documents
/// what the scenario is about).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckName {
    All,
    Lost,
    Unexpected,
    Order,
    Offsets,
    RedeliveredAfterAck,
    Liveness,
    Conservation,
    Backoff,
    KeyOrder,
    Flow,
}

/// The gRPC codes an `expect ... error code=` may name, as the trace writes them.
pub const CODES: &[&str] = &[
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

impl Action {
    /// Whether the driver's timeline stops until the step is done: a blocking admin step
    /// waits for its answer, `eventually` for its expectation to hold.
    pub fn blocks(&self) -> bool {
        match self {
            Action::Admin { wait, .. } => *wait == Wait::Blocking,
            Action::Expect(expectation) => expectation.within.is_some(),
            Action::ExpectLeader { within, .. } => within.is_some(),
            _ => false,
        }
    }

    /// The app host the step sends a command to, if any.
    pub fn app(&self) -> Option<&str> {
        match self {
            Action::Publish(p) => Some(&p.host),
            Action::Subscribe(s) => Some(&s.host),
            Action::Disconnect { host } | Action::Ack { host, .. } | Action::Nack { host, .. } => Some(host),
            Action::Modack { host, .. } => Some(host),
            _ => None,
        }
    }
}

/// A duration as a scenario writes it: `5s` when whole seconds, else `250ms`.
pub fn ms(d: Duration) -> String {
    let ms = d.as_millis();
    if ms > 0 && ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Writes ` key=value` when `value` is set.
fn option(f: &mut fmt::Formatter<'_>, key: &str, value: Option<impl fmt::Display>) -> fmt::Result {
    match value {
        Some(value) => write!(f, " {key}={value}"),
        None => Ok(()),
    }
}

/// Writes a text value, quoted when it has a space.
fn text(value: &str) -> String {
    if value.contains(char::is_whitespace) || value.is_empty() {
        format!("\"{value}\"")
    } else {
        value.to_string()
    }
}

impl fmt::Display for SeekTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SeekTo::Earliest => "earliest",
            SeekTo::Latest => "latest",
        })
    }
}

impl fmt::Display for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Admin::TopicCreate { topic, partitions } => {
                write!(f, "topic create {topic}")?;
                option(f, "partitions", partitions.as_ref())
            }
            Admin::TopicDelete { topic, force } => {
                write!(f, "topic delete {topic}")?;
                option(f, "force", force.then_some("true"))
            }
            Admin::SubCreate(spec) => {
                write!(f, "sub create {} topic={}", spec.sub, spec.topic)?;
                option(f, "ack_deadline", spec.ack_deadline.map(ms))?;
                option(f, "start", (spec.start == SeekTo::Latest).then_some("latest"))?;
                if let Some((min, max)) = spec.retry {
                    option(f, "min_backoff", min.map(ms))?;
                    option(f, "max_backoff", max.map(ms))?;
                }
                if let Some((topic, attempts)) = &spec.dead_letter {
                    write!(f, " dead_letter={topic}")?;
                    option(f, "max_attempts", (*attempts > 0).then_some(attempts))?;
                }
                option(f, "ordered", spec.ordered.then_some("true"))?;
                option(f, "mode", spec.exclusive.then_some("exclusive"))
            }
            Admin::SubDelete { sub } => write!(f, "sub delete {sub}"),
            Admin::Seek { sub, to } => write!(f, "seek {sub} {to}"),
            Admin::Redrive { sub, max } => {
                write!(f, "redrive {sub}")?;
                option(f, "max", (*max > 0).then_some(max))
            }
            Admin::TransferLeader { to } => write!(f, "transfer_leader {to}"),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let oneway = |oneway: &bool| oneway.then_some("true");
        match self {
            Fault::Partition { a, b, oneway: o } => {
                write!(f, "partition {a} {b}")?;
                option(f, "oneway", oneway(o))
            }
            Fault::Heal { a, b, oneway: o } => {
                write!(f, "heal {a} {b}")?;
                option(f, "oneway", oneway(o))
            }
            Fault::Hold { a, b } => write!(f, "hold {a} {b}"),
            Fault::Release { a, b } => write!(f, "release {a} {b}"),
            Fault::Latency { a, b, delay } => write!(f, "latency {a} {b} {}", ms(*delay)),
            Fault::FailRate { rate } => write!(f, "fail_rate {rate}"),
            Fault::Isolate { host } => write!(f, "isolate {host}"),
            Fault::Crash { host } => write!(f, "crash {host}"),
            Fault::Restart { host } => write!(f, "restart {host}"),
            Fault::Disk { host, fault } => {
                let fault = match fault {
                    DiskFault::Eio => "eio".to_string(),
                    DiskFault::Full => "full".to_string(),
                    DiskFault::Torn => "torn".to_string(),
                    DiskFault::Corrupt(None) => "corrupt".to_string(),
                    DiskFault::Corrupt(Some(CorruptTarget { offset, length: false })) => {
                        format!("corrupt offset={offset}")
                    }
                    DiskFault::Corrupt(Some(CorruptTarget { offset, length: true })) => {
                        format!("corrupt offset={offset} part=length")
                    }
                    DiskFault::Slow(latency) => format!("slow latency={}", ms(*latency)),
                    DiskFault::Ok => "ok".to_string(),
                };
                write!(f, "disk {host} {fault}")
            }
        }
    }
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Expected::Received => "received",
            Expected::Acked => "acked",
            Expected::Expired => "expired",
            Expected::Error => "error",
            Expected::Stalled => "stalled",
            Expected::Duplicate => "duplicate",
        })
    }
}

impl fmt::Display for Expectation {
    /// `HOST WHAT [attempt=] [code=] [count=] [sub=]`, the options in the order the trace
    /// has always written them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.host, self.what)?;
        option(f, "attempt", self.attempt.as_ref())?;
        option(f, "code", self.code.as_ref())?;
        option(f, "count", self.count.as_ref())?;
        option(f, "sub", self.sub.as_ref())
    }
}

impl Expectation {
    /// How many matching events it needs.
    pub fn least(&self) -> u64 {
        self.count.unwrap_or(1)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Admin { admin, wait: Wait::Async } => write!(f, "async {admin}"),
            Action::Admin { admin, wait: Wait::Blocking } => write!(f, "{admin}"),
            Action::Publish(p) => {
                write!(f, "publish {} {}", p.host, p.topic)?;
                option(f, "key", p.key.as_deref().map(text))?;
                option(f, "value", p.value.as_deref().map(text))?;
                option(f, "size", (p.size > 0).then_some(p.size))?;
                option(f, "count", (p.count != 1).then_some(p.count))?;
                option(f, "every", (!p.every.is_zero()).then(|| ms(p.every)))?;
                option(f, "partition", p.partition.as_ref())?;
                option(f, "idempotency_key", p.idempotency_key.as_deref().map(text))?;
                option(f, "via", (p.via == Via::Library).then_some("library"))
            }
            Action::Subscribe(s) => {
                write!(f, "subscribe {} {}", s.host, s.sub)?;
                let ack = match s.ack {
                    AckMode::All => None,
                    AckMode::None => Some("none"),
                    AckMode::Nack => Some("nack"),
                    AckMode::NackAll => Some("nack-all"),
                    AckMode::Reject => Some("reject"),
                    AckMode::Manual => Some("manual"),
                };
                option(f, "ack", ack)?;
                option(f, "ack_delay", (!s.ack_delay.is_zero()).then(|| ms(s.ack_delay)))?;
                option(f, "max", (s.max > 0).then_some(s.max))?;
                option(f, "nack_delay", s.nack.delay.map(ms))?;
                option(f, "reason", (!s.nack.reason.is_empty()).then(|| text(&s.nack.reason)))?;
                option(f, "session", s.session.map(ms))?;
                option(f, "via", (s.via == Via::Library).then_some("library"))
            }
            Action::Disconnect { host } => write!(f, "disconnect {host}"),
            Action::Ack { host, all } => write!(f, "ack {host} {}", if *all { "all" } else { "next" }),
            Action::Nack { host, nack } => {
                write!(f, "nack {host}")?;
                option(f, "delay", nack.delay.map(ms))?;
                option(f, "reason", (!nack.reason.is_empty()).then(|| text(&nack.reason)))?;
                option(f, "terminal", nack.terminal.then_some("true"))
            }
            Action::Modack { host, deadline } => write!(f, "modack {host} {}", ms(*deadline)),
            Action::Fault(fault) => write!(f, "{fault}"),
            Action::Advance { by } => write!(f, "advance {}", ms(*by)),
            Action::Expect(e) => match e.within {
                Some(within) => write!(f, "eventually {} expect {e}", ms(within)),
                None => write!(f, "expect {e}"),
            },
            Action::ExpectLeader { host, within } => {
                if let Some(within) = within {
                    write!(f, "eventually {} ", ms(*within))?;
                }
                write!(f, "expect cluster leader")?;
                match host {
                    Some(host) => write!(f, "={host}"),
                    None => Ok(()),
                }
            }
            Action::Check(name) => write!(f, "check {}", name.as_str()),
        }
    }
}

impl CheckName {
    pub const ALL: &'static [(&'static str, CheckName)] = &[
        ("all", CheckName::All),
        ("lost", CheckName::Lost),
        ("unexpected", CheckName::Unexpected),
        ("order", CheckName::Order),
        ("offsets", CheckName::Offsets),
        ("redelivered-after-ack", CheckName::RedeliveredAfterAck),
        ("liveness", CheckName::Liveness),
        ("conservation", CheckName::Conservation),
        ("backoff", CheckName::Backoff),
        ("key-order", CheckName::KeyOrder),
        ("flow", CheckName::Flow),
    ];

    pub fn as_str(self) -> &'static str {
        CheckName::ALL.iter().find(|(_, c)| *c == self).map_or("all", |(name, _)| name)
    }
}
