//! The parser: words are checked against each verb's spec (positionals and options, each
//! of a kind), then turned into typed steps. Every error names file, line and column.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use super::{
    AckMode, Action, Admin, CheckName, Config, CorruptTarget, DiskFault, Expectation, Expected, Fault, Fsync, Nack,
    Publish, Scenario, SeekTo, Step, Storage, SubSpec, Subscribe, Via, Wait, ADMIN_HOST, CODES,
};

/// The kind of value an option or positional takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Name,
    Host,
    /// A whole number from `.0` to `.1`.
    Int(u64, u64),
    Dur,
    Rate,
    Text,
    Bool,
    OneOf(&'static [&'static str]),
}

/// Any whole number a `u32` holds.
const U32: Kind = Kind::Int(0, u32::MAX as u64);
/// A count of at least one.
const POSITIVE: Kind = Kind::Int(1, u32::MAX as u64);

/// What a verb takes.
struct Spec {
    words: &'static [&'static str],
    verb: Verb,
    positionals: &'static [(&'static str, Kind)],
    options: &'static [(&'static str, Kind)],
}

/// The verbs, before their words are typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    TopicCreate,
    TopicDelete,
    SubCreate,
    SubDelete,
    Publish,
    Subscribe,
    Disconnect,
    Ack,
    Nack,
    Modack,
    Seek,
    Redrive,
    Partition,
    Heal,
    Hold,
    Release,
    Crash,
    Restart,
    Disk,
    Isolate,
    Latency,
    FailRate,
    Advance,
    Expect,
    Check,
    TransferLeader,
}

impl Verb {
    fn is_admin(self) -> bool {
        matches!(
            self,
            Verb::TopicCreate
                | Verb::TopicDelete
                | Verb::SubCreate
                | Verb::SubDelete
                | Verb::Seek
                | Verb::Redrive
                | Verb::TransferLeader
        )
    }
}

const START: Kind = Kind::OneOf(&["earliest", "latest"]);
const ACK_MODE: Kind = Kind::OneOf(&["all", "none", "nack", "nack-all", "reject", "manual"]);
const WHAT: Kind = Kind::OneOf(&["received", "acked", "expired", "error", "stalled", "duplicate"]);
const CHECKS: Kind = Kind::OneOf(&[
    "all",
    "lost",
    "unexpected",
    "order",
    "offsets",
    "redelivered-after-ack",
    "liveness",
    "conservation",
    "backoff",
    "key-order",
    "flow",
]);
const VIA: Kind = Kind::OneOf(&["grpc", "library"]);

const SPECS: &[Spec] = &[
    Spec {
        words: &["topic", "create"],
        verb: Verb::TopicCreate,
        positionals: &[("topic", Kind::Name)],
        options: &[("partitions", Kind::Int(1, 1024))],
    },
    Spec {
        words: &["topic", "delete"],
        verb: Verb::TopicDelete,
        positionals: &[("topic", Kind::Name)],
        options: &[("force", Kind::Bool)],
    },
    Spec {
        words: &["sub", "create"],
        verb: Verb::SubCreate,
        positionals: &[("sub", Kind::Name)],
        options: &[
            ("topic", Kind::Name),
            ("ack_deadline", Kind::Dur),
            ("start", START),
            ("min_backoff", Kind::Dur),
            ("max_backoff", Kind::Dur),
            ("dead_letter", Kind::Name),
            ("max_attempts", U32),
            ("ordered", Kind::Bool),
            ("mode", Kind::OneOf(&["shared", "exclusive"])),
        ],
    },
    Spec { words: &["sub", "delete"], verb: Verb::SubDelete, positionals: &[("sub", Kind::Name)], options: &[] },
    Spec {
        words: &["publish"],
        verb: Verb::Publish,
        positionals: &[("host", Kind::Host), ("topic", Kind::Name)],
        options: &[
            ("key", Kind::Text),
            ("value", Kind::Text),
            ("size", Kind::Int(0, 16 * 1024 * 1024)),
            ("count", Kind::Int(1, 1_000_000)),
            ("every", Kind::Dur),
            ("partition", U32),
            ("idempotency_key", Kind::Text),
            ("refuse_every", Kind::Int(1, 1_000_000)),
            ("via", VIA),
        ],
    },
    Spec {
        words: &["subscribe"],
        verb: Verb::Subscribe,
        positionals: &[("host", Kind::Host), ("sub", Kind::Name)],
        options: &[
            ("ack", ACK_MODE),
            ("ack_delay", Kind::Dur),
            ("max", U32),
            ("nack_delay", Kind::Dur),
            ("reason", Kind::Text),
            ("session", Kind::Dur),
            ("via", VIA),
        ],
    },
    Spec { words: &["disconnect"], verb: Verb::Disconnect, positionals: &[("host", Kind::Host)], options: &[] },
    Spec {
        words: &["ack"],
        verb: Verb::Ack,
        positionals: &[("host", Kind::Host), ("which", Kind::OneOf(&["next", "all"]))],
        options: &[],
    },
    Spec {
        words: &["nack"],
        verb: Verb::Nack,
        positionals: &[("host", Kind::Host)],
        options: &[("delay", Kind::Dur), ("reason", Kind::Text), ("terminal", Kind::Bool)],
    },
    Spec {
        words: &["modack"],
        verb: Verb::Modack,
        positionals: &[("host", Kind::Host), ("deadline", Kind::Dur)],
        options: &[],
    },
    Spec { words: &["redrive"], verb: Verb::Redrive, positionals: &[("sub", Kind::Name)], options: &[("max", U32)] },
    Spec { words: &["seek"], verb: Verb::Seek, positionals: &[("sub", Kind::Name), ("to", START)], options: &[] },
    Spec {
        words: &["partition"],
        verb: Verb::Partition,
        positionals: &[("a", Kind::Host), ("b", Kind::Host)],
        options: &[("oneway", Kind::Bool)],
    },
    Spec {
        words: &["heal"],
        verb: Verb::Heal,
        positionals: &[("a", Kind::Host), ("b", Kind::Host)],
        options: &[("oneway", Kind::Bool)],
    },
    Spec { words: &["hold"], verb: Verb::Hold, positionals: &[("a", Kind::Host), ("b", Kind::Host)], options: &[] },
    Spec {
        words: &["release"],
        verb: Verb::Release,
        positionals: &[("a", Kind::Host), ("b", Kind::Host)],
        options: &[],
    },
    Spec { words: &["crash"], verb: Verb::Crash, positionals: &[("host", Kind::Host)], options: &[] },
    Spec { words: &["restart"], verb: Verb::Restart, positionals: &[("host", Kind::Host)], options: &[] },
    Spec {
        words: &["disk"],
        verb: Verb::Disk,
        positionals: &[("host", Kind::Host), ("fault", Kind::OneOf(&["eio", "full", "torn", "corrupt", "slow", "ok"]))],
        options: &[
            ("offset", Kind::Int(0, u64::MAX)),
            ("part", Kind::OneOf(&["length", "body"])),
            ("latency", Kind::Dur),
        ],
    },
    Spec { words: &["isolate"], verb: Verb::Isolate, positionals: &[("host", Kind::Host)], options: &[] },
    Spec {
        words: &["latency"],
        verb: Verb::Latency,
        positionals: &[("a", Kind::Host), ("b", Kind::Host), ("delay", Kind::Dur)],
        options: &[],
    },
    Spec { words: &["fail_rate"], verb: Verb::FailRate, positionals: &[("rate", Kind::Rate)], options: &[] },
    Spec { words: &["advance"], verb: Verb::Advance, positionals: &[("by", Kind::Dur)], options: &[] },
    Spec {
        words: &["expect"],
        verb: Verb::Expect,
        positionals: &[("host", Kind::Host), ("what", WHAT)],
        options: &[
            ("sub", Kind::Name),
            ("count", Kind::Int(1, 1_000_000_000)),
            ("attempt", POSITIVE),
            ("code", Kind::OneOf(CODES)),
        ],
    },
    Spec { words: &["check"], verb: Verb::Check, positionals: &[("what", CHECKS)], options: &[] },
    Spec {
        words: &["transfer_leader"],
        verb: Verb::TransferLeader,
        positionals: &[("host", Kind::Host)],
        options: &[],
    },
];

/// Targets a fault step may name instead of a broker in a cluster, resolved when the step
/// runs: the broker that serves as the leader, the first other broker by name, every other
/// broker, every broker.
pub const TARGETS: &[&str] = &["@leader", "@follower", "@followers", "@brokers"];

/// Settings `config` accepts.
const CONFIG_KEYS: &[(&str, Kind)] = &[
    ("seed", Kind::Int(0, u64::MAX)),
    ("brokers", Kind::Int(1, 9)),
    ("ack_deadline", Kind::Dur),
    ("partitions", Kind::Int(1, 1024)),
    ("loss", Kind::OneOf(&["allowed", "forbidden"])),
    ("storage", Kind::OneOf(&["file", "memory"])),
    ("fsync", Kind::OneOf(&["always", "interval", "never"])),
    ("fsync_interval", Kind::Dur),
    ("disk_latency", Kind::Dur),
    ("snapshot_entries", Kind::Int(1, 1_000_000)),
    ("permissions", Kind::Text),
];

/// A scenario that cannot run, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file, self.line, self.column, self.message)
    }
}

impl std::error::Error for ParseError {}

/// A word of a line and the column it starts at (1-based).
#[derive(Debug, Clone)]
struct Token {
    text: String,
    column: usize,
}

/// Parses a whole scenario file. `file` is only used in error messages.
pub fn parse(file: &str, text: &str) -> Result<Scenario, ParseError> {
    let mut parser = Parser { file, config: BTreeMap::new(), config_line: 0, steps: Vec::new(), clock: Duration::ZERO };
    for (index, line) in text.lines().enumerate() {
        parser.line(index + 1, line)?;
    }
    parser.finish()
}

/// A step's words, checked against its spec but not yet typed.
struct Words<'t> {
    verb: Verb,
    /// Positionals by name, with their tokens.
    args: BTreeMap<&'static str, &'t Token>,
    /// Options by key: the value and the column where it starts.
    options: BTreeMap<String, (String, usize)>,
    /// The tokens that name hosts (checked once every host is known).
    hosts: Vec<Token>,
    /// Where the line ends (for errors about what is missing).
    end: usize,
}

impl Words<'_> {
    fn arg(&self, name: &str) -> String {
        self.args.get(name).map_or_else(String::new, |t| t.text.clone())
    }

    fn option(&self, key: &str) -> Option<&str> {
        self.options.get(key).map(|(v, _)| v.as_str())
    }

    fn duration(&self, key: &str) -> Option<Duration> {
        self.option(key).map(|v| duration(v).expect("checked by its kind"))
    }

    fn number<T: std::str::FromStr>(&self, key: &str) -> Option<T> {
        self.option(key).map(|v| v.parse().unwrap_or_else(|_| unreachable!("checked by its kind")))
    }

    fn flag(&self, key: &str) -> bool {
        self.option(key) == Some("true")
    }

    fn column(&self, key: &str) -> usize {
        self.options.get(key).map_or(self.end, |(_, c)| *c)
    }
}

struct Parser<'a> {
    file: &'a str,
    config: BTreeMap<String, String>,
    /// The line of the last `config` (for errors about settings that do not fit together).
    config_line: usize,
    /// Each step, with the host tokens it names (checked once every host is known).
    steps: Vec<(Step, Vec<Token>)>,
    clock: Duration,
}

impl Parser<'_> {
    fn error(&self, line: usize, column: usize, message: impl Into<String>) -> ParseError {
        ParseError { file: self.file.to_string(), line, column, message: message.into() }
    }

    fn line(&mut self, number: usize, line: &str) -> Result<(), ParseError> {
        let mut tokens = tokenize(line).map_err(|(column, message)| self.error(number, column, message))?;
        if tokens.is_empty() {
            return Ok(());
        }
        let mut at = self.clock;
        let first = &tokens[0];
        let timed = first.text.starts_with(['@', '+']);
        if let Some(rest) = first.text.strip_prefix('@') {
            at = duration(rest).ok_or_else(|| self.error(number, first.column + 1, bad_duration(rest)))?;
            if at < self.clock {
                let message = format!("@{rest} is earlier than the step before it ({} ms)", self.clock.as_millis());
                return Err(self.error(number, first.column, message));
            }
            tokens.remove(0);
        } else if let Some(rest) = first.text.strip_prefix('+') {
            at += duration(rest).ok_or_else(|| self.error(number, first.column + 1, bad_duration(rest)))?;
            tokens.remove(0);
        }
        let Some(verb) = tokens.first() else {
            return Err(self.error(number, line.len() + 1, "a time needs a step after it"));
        };
        if verb.text == "config" {
            return self.config_line(number, &tokens[1..]);
        }
        let mut within = None;
        let mut wait = Wait::Blocking;
        if verb.text == "eventually" {
            let Some(d) = tokens.get(1) else {
                return Err(self.error(number, verb.column, "eventually needs a duration and an expectation"));
            };
            within = Some(duration(&d.text).ok_or_else(|| self.error(number, d.column, bad_duration(&d.text)))?);
            tokens.drain(..2);
            match tokens.first() {
                Some(t) if t.text == "expect" => {}
                Some(t) => {
                    return Err(self.error(
                        number,
                        t.column,
                        "eventually takes an expectation: `eventually 5s expect ...`",
                    ))
                }
                None => {
                    return Err(self.error(
                        number,
                        line.len() + 1,
                        "eventually needs an expectation after its duration",
                    ))
                }
            }
        } else if verb.text == "async" {
            let column = verb.column;
            tokens.remove(0);
            wait = Wait::Async;
            if tokens.is_empty() {
                return Err(self.error(number, line.len() + 1, "async needs an admin step after it"));
            }
            let spec = self.spec(number, &tokens)?;
            if !spec.verb.is_admin() {
                let message = "async goes before an admin step (topic, sub, seek, redrive): other steps never wait";
                return Err(self.error(number, column, message));
            }
        }
        let (action, hosts) = match tokens.get(1) {
            Some(host) if tokens[0].text == "expect" && host.text == "cluster" => {
                self.expect_leader(number, &tokens, within)?
            }
            _ => {
                let words = self.words(number, &tokens, line.len() + 1)?;
                (self.action(number, &words, within, wait)?, words.hosts)
            }
        };
        self.clock = at;
        self.steps.push((Step { line: number, at, timed, action }, hosts));
        Ok(())
    }

    /// `expect cluster leader` (some broker serves as the leader) or `expect cluster
    /// leader=HOST` (that one does); returns the step and the host it names.
    fn expect_leader(
        &self,
        number: usize,
        tokens: &[Token],
        within: Option<Duration>,
    ) -> Result<(Action, Vec<Token>), ParseError> {
        let usage = "the step is `expect cluster leader` or `expect cluster leader=HOST`";
        let Some(what) = tokens.get(2) else {
            return Err(self.error(
                number,
                tokens[1].column + tokens[1].text.len(),
                format!("missing leader: {usage}"),
            ));
        };
        if let Some(extra) = tokens.get(3) {
            return Err(self.error(number, extra.column, format!("unexpected `{}`: {usage}", extra.text)));
        }
        let (host, hosts) = match what.text.split_once('=') {
            None if what.text == "leader" => (None, Vec::new()),
            Some(("leader", host)) => {
                let column = what.column + "leader=".len();
                check_value(Kind::Host, host).map_err(|m| self.error(number, column, format!("leader: {m}")))?;
                let token = Token { text: host.to_string(), column };
                (Some(host.to_string()), vec![token])
            }
            _ => return Err(self.error(number, what.column, format!("unexpected `{}`: {usage}", what.text))),
        };
        Ok((Action::ExpectLeader { host, within }, hosts))
    }

    fn config_line(&mut self, number: usize, tokens: &[Token]) -> Result<(), ParseError> {
        for token in tokens {
            let Some((key, value)) = token.text.split_once('=') else {
                return Err(self.error(number, token.column, format!("`{}` is not key=value", token.text)));
            };
            let Some((_, kind)) = CONFIG_KEYS.iter().find(|(k, _)| *k == key) else {
                let keys: Vec<&str> = CONFIG_KEYS.iter().map(|(k, _)| *k).collect();
                return Err(self.error(number, token.column, unknown("config setting", key, &keys)));
            };
            let column = token.column + key.len() + 1;
            check_value(*kind, value).map_err(|m| self.error(number, column, format!("{key}: {m}")))?;
            self.config.insert(key.to_string(), value.to_string());
            self.config_line = number;
        }
        Ok(())
    }

    /// Checks a step's words against its verb's spec.
    fn words<'t>(&self, number: usize, tokens: &'t [Token], end: usize) -> Result<Words<'t>, ParseError> {
        let spec = self.spec(number, tokens)?;
        let rest = &tokens[spec.words.len()..];
        let (positional, options): (Vec<&Token>, Vec<&Token>) = rest.iter().partition(|t| !t.text.contains('='));
        let mut args = BTreeMap::new();
        let mut hosts = Vec::new();
        for (i, (name, kind)) in spec.positionals.iter().enumerate() {
            let Some(token) = positional.get(i) else {
                let column = rest.last().map_or(tokens[0].column, |t| t.column + t.text.len());
                let wanted: Vec<&str> = spec.positionals.iter().map(|(n, _)| *n).collect();
                let usage = format!("{} {}", spec.words.join(" "), wanted.join(" "));
                return Err(self.error(number, column, format!("missing <{name}>: the step is `{usage}`")));
            };
            check_value(*kind, &token.text).map_err(|m| self.error(number, token.column, format!("{name}: {m}")))?;
            args.insert(*name, *token);
            if *kind == Kind::Host {
                hosts.push((*token).clone());
            }
        }
        if let Some(extra) = positional.get(spec.positionals.len()) {
            return Err(self.error(number, extra.column, format!("unexpected `{}`", extra.text)));
        }
        let mut parsed = BTreeMap::new();
        for token in options {
            let (key, value) = token.text.split_once('=').expect("options contain =");
            let Some((_, kind)) = spec.options.iter().find(|(k, _)| *k == key) else {
                let keys: Vec<&str> = spec.options.iter().map(|(k, _)| *k).collect();
                let what = format!("option of `{}`", spec.words.join(" "));
                return Err(self.error(number, token.column, unknown(&what, key, &keys)));
            };
            let column = token.column + key.len() + 1;
            if parsed.contains_key(key) {
                return Err(self.error(number, token.column, format!("{key} is given twice")));
            }
            check_value(*kind, value).map_err(|m| self.error(number, column, format!("{key}: {m}")))?;
            parsed.insert(key.to_string(), (value.to_string(), column));
        }
        Ok(Words { verb: spec.verb, args, options: parsed, hosts, end })
    }

    fn spec(&self, number: usize, tokens: &[Token]) -> Result<&'static Spec, ParseError> {
        let head = &tokens[0];
        let candidates: Vec<&Spec> = SPECS.iter().filter(|s| s.words[0] == head.text).collect();
        if candidates.is_empty() {
            let mut verbs: Vec<&str> = SPECS.iter().map(|s| s.words[0]).collect();
            verbs.extend(["config", "eventually", "async"]);
            verbs.dedup();
            return Err(self.error(number, head.column, unknown("step", &head.text, &verbs)));
        }
        if candidates[0].words.len() == 1 {
            return Ok(candidates[0]);
        }
        let second = tokens.get(1);
        let found = candidates.iter().find(|s| second.is_some_and(|t| t.text == s.words[1]));
        found.copied().ok_or_else(|| {
            let subs: Vec<&str> = candidates.iter().map(|s| s.words[1]).collect();
            let column = second.map_or(head.column + head.text.len() + 1, |t| t.column);
            let got = second.map_or("", |t| t.text.as_str());
            self.error(number, column, unknown(&format!("`{}` action", head.text), got, &subs))
        })
    }

    /// Types a step's checked words.
    fn action(&self, number: usize, w: &Words, within: Option<Duration>, wait: Wait) -> Result<Action, ParseError> {
        let admin = |admin| Action::Admin { admin, wait };
        let (a, b) = (w.arg("a"), w.arg("b"));
        let oneway = w.flag("oneway");
        Ok(match w.verb {
            Verb::TopicCreate => {
                admin(Admin::TopicCreate { topic: w.arg("topic"), partitions: w.number("partitions") })
            }
            Verb::TopicDelete => admin(Admin::TopicDelete { topic: w.arg("topic"), force: w.flag("force") }),
            Verb::SubCreate => admin(Admin::SubCreate(self.sub_spec(number, w)?)),
            Verb::SubDelete => admin(Admin::SubDelete { sub: w.arg("sub") }),
            Verb::Seek => admin(Admin::Seek { sub: w.arg("sub"), to: seek_to(&w.arg("to")) }),
            Verb::Redrive => admin(Admin::Redrive { sub: w.arg("sub"), max: w.number("max").unwrap_or(0) }),
            Verb::Publish => Action::Publish(Publish {
                host: w.arg("host"),
                topic: w.arg("topic"),
                key: w.option("key").map(str::to_string),
                value: w.option("value").map(str::to_string),
                size: w.number("size").unwrap_or(0),
                count: w.number("count").unwrap_or(1),
                every: w.duration("every").unwrap_or_default(),
                partition: w.number("partition"),
                idempotency_key: w.option("idempotency_key").map(str::to_string),
                refuse_every: w.number("refuse_every"),
                via: via(w.option("via")),
            }),
            Verb::Subscribe => Action::Subscribe(self.subscribe(number, w)?),
            Verb::Disconnect => Action::Disconnect { host: w.arg("host") },
            Verb::Ack => Action::Ack { host: w.arg("host"), all: w.arg("which") == "all" },
            Verb::Nack => Action::Nack {
                host: w.arg("host"),
                nack: Nack {
                    delay: w.duration("delay"),
                    reason: w.option("reason").unwrap_or_default().to_string(),
                    terminal: w.flag("terminal"),
                },
            },
            Verb::Modack => Action::Modack { host: w.arg("host"), deadline: duration(&w.arg("deadline")).unwrap() },
            Verb::Partition => Action::Fault(Fault::Partition { a, b, oneway }),
            Verb::Heal => Action::Fault(Fault::Heal { a, b, oneway }),
            Verb::Hold => Action::Fault(Fault::Hold { a, b }),
            Verb::Release => Action::Fault(Fault::Release { a, b }),
            Verb::Latency => Action::Fault(Fault::Latency { a, b, delay: duration(&w.arg("delay")).unwrap() }),
            Verb::FailRate => Action::Fault(Fault::FailRate { rate: w.arg("rate").parse().unwrap() }),
            Verb::Isolate => Action::Fault(Fault::Isolate { host: w.arg("host") }),
            Verb::Crash => Action::Fault(Fault::Crash { host: w.arg("host") }),
            Verb::Restart => Action::Fault(Fault::Restart { host: w.arg("host") }),
            Verb::Disk => self.disk(number, w)?,
            Verb::Advance => Action::Advance { by: duration(&w.arg("by")).unwrap() },
            Verb::Expect => Action::Expect(self.expectation(number, w, within)?),
            Verb::TransferLeader => admin(Admin::TransferLeader { to: w.arg("host") }),
            Verb::Check => Action::Check(
                CheckName::ALL.iter().find(|(n, _)| *n == w.arg("what")).map(|(_, c)| *c).expect("checked"),
            ),
        })
    }

    /// `disk HOST eio|full|torn|corrupt [offset=N [part=length|body]]|slow latency=D|ok`.
    fn disk(&self, number: usize, w: &Words) -> Result<Action, ParseError> {
        let target =
            w.number("offset").map(|offset| CorruptTarget { offset, length: w.option("part") == Some("length") });
        let latency = w.duration("latency");
        let fault = match disk_fault(&w.arg("fault")) {
            DiskFault::Slow(_) => match latency {
                Some(latency) if !latency.is_zero() => DiskFault::Slow(latency),
                _ => {
                    let message = "slow needs latency=D (more than 0): how much longer each fsync takes";
                    return Err(self.error(number, w.column("latency"), message));
                }
            },
            _ if latency.is_some() => {
                return Err(self.error(number, w.column("latency"), "latency= goes with `slow` only"));
            }
            DiskFault::Corrupt(None) => DiskFault::Corrupt(target),
            _ if target.is_some() || w.option("part").is_some() => {
                return Err(self.error(
                    number,
                    w.column("offset").max(w.column("part")),
                    "offset= and part= go with `corrupt` only",
                ));
            }
            fault => fault,
        };
        if target.is_none() && w.option("part").is_some() {
            return Err(self.error(number, w.column("part"), "part= needs offset=: the record whose frame to damage"));
        }
        Ok(Action::Fault(Fault::Disk { host: w.arg("host"), fault }))
    }

    fn sub_spec(&self, number: usize, w: &Words) -> Result<SubSpec, ParseError> {
        let (min, max) = (w.duration("min_backoff"), w.duration("max_backoff"));
        if let (Some(min), Some(max)) = (min, max) {
            if min > max {
                let message =
                    format!("max_backoff: {} ms is below min_backoff ({} ms)", max.as_millis(), min.as_millis());
                return Err(self.error(number, w.column("max_backoff"), message));
            }
        }
        if w.option("max_attempts").is_some() && w.option("dead_letter").is_none() {
            let message = "max_attempts: counts deliveries before a dead letter; give dead_letter=TOPIC too";
            return Err(self.error(number, w.column("max_attempts"), message));
        }
        let sub = w.arg("sub");
        Ok(SubSpec {
            topic: w.option("topic").map_or_else(|| sub.clone(), str::to_string),
            sub,
            ack_deadline: w.duration("ack_deadline"),
            start: w.option("start").map_or(SeekTo::Earliest, seek_to),
            retry: (min.is_some() || max.is_some()).then_some((min, max)),
            dead_letter: w
                .option("dead_letter")
                .map(|topic| (topic.to_string(), w.number("max_attempts").unwrap_or(0))),
            ordered: w.flag("ordered"),
            exclusive: w.option("mode") == Some("exclusive"),
        })
    }

    fn subscribe(&self, number: usize, w: &Words) -> Result<Subscribe, ParseError> {
        let ack = match w.option("ack") {
            Some("none") => AckMode::None,
            Some("nack") => AckMode::Nack,
            Some("nack-all") => AckMode::NackAll,
            Some("reject") => AckMode::Reject,
            Some("manual") => AckMode::Manual,
            _ => AckMode::All,
        };
        let via = via(w.option("via"));
        if via == Via::Library && ack == AckMode::Manual {
            let message = "ack: via=library takes all, none, nack, nack-all or reject, not manual";
            return Err(self.error(number, w.column("ack"), message));
        }
        Ok(Subscribe {
            host: w.arg("host"),
            sub: w.arg("sub"),
            ack,
            ack_delay: w.duration("ack_delay").unwrap_or_default(),
            max: w.number("max").unwrap_or(0),
            nack: Nack {
                delay: w.duration("nack_delay"),
                reason: w.option("reason").unwrap_or_default().to_string(),
                terminal: false,
            },
            session: w.duration("session"),
            via,
        })
    }

    fn expectation(&self, number: usize, w: &Words, within: Option<Duration>) -> Result<Expectation, ParseError> {
        let what = match w.arg("what").as_str() {
            "received" => Expected::Received,
            "acked" => Expected::Acked,
            "expired" => Expected::Expired,
            "error" => Expected::Error,
            "duplicate" => Expected::Duplicate,
            _ => Expected::Stalled,
        };
        let allowed: &[&str] = match what {
            Expected::Received => &["sub", "count", "attempt"],
            Expected::Acked | Expected::Expired => &["sub", "count"],
            Expected::Error => &["count", "code"],
            Expected::Duplicate => &["count"],
            Expected::Stalled => &[],
        };
        if let Some(key) = w.options.keys().find(|k| !allowed.contains(&k.as_str())) {
            let message = format!("{key}: `expect {what}` does not count by {key}");
            return Err(self.error(number, w.column(key), message));
        }
        Ok(Expectation {
            host: w.arg("host"),
            what,
            sub: w.option("sub").map(str::to_string),
            count: w.number("count"),
            attempt: w.number("attempt"),
            code: w.option("code").map(str::to_string),
            within,
        })
    }

    /// Names the hosts, checks every step names a known one, and types the config.
    fn finish(self) -> Result<Scenario, ParseError> {
        let brokers = match self.config.get("brokers").map_or(1, |n| n.parse().expect("checked")) {
            1 => vec!["broker".to_string()],
            n => (1..=n).map(|i| format!("broker{i}")).collect::<Vec<String>>(),
        };
        let cluster = brokers.len() > 1;
        let mut apps: Vec<String> = Vec::new();
        for (step, hosts) in &self.steps {
            let (Action::Publish(Publish { host, .. }) | Action::Subscribe(Subscribe { host, .. })) = &step.action
            else {
                continue;
            };
            if brokers.contains(host) {
                let column = hosts.first().map_or(1, |t| t.column);
                return Err(self.error(step.line, column, format!("`{host}` is a broker; clients are other hosts")));
            }
            if host == ADMIN_HOST {
                let column = hosts.first().map_or(1, |t| t.column);
                let message = format!("`{ADMIN_HOST}` is the host that runs admin steps; name this client otherwise");
                return Err(self.error(step.line, column, message));
            }
            if !apps.contains(host) {
                apps.push(host.clone());
            }
        }
        // The admin host may be named by expectations (`expect admin error code=...`).
        let known: BTreeSet<&str> = brokers.iter().chain(&apps).map(String::as_str).chain([ADMIN_HOST]).collect();
        for (step, hosts) in &self.steps {
            for token in hosts {
                if TARGETS.contains(&token.text.as_str()) {
                    if !cluster {
                        let message = format!("{} names a cluster's brokers: set `config brokers=3`", token.text);
                        return Err(self.error(step.line, token.column, message));
                    }
                    if matches!(step.action, Action::Admin { .. }) || step.action.app().is_some() {
                        let message = format!("{}: only fault steps resolve targets", token.text);
                        return Err(self.error(step.line, token.column, message));
                    }
                    continue;
                }
                if !known.contains(token.text.as_str()) {
                    let list: Vec<&str> = known.iter().copied().collect();
                    return Err(self.error(step.line, token.column, unknown("host", &token.text, &list)));
                }
            }
            let broker_only = match &step.action {
                Action::Fault(Fault::Crash { host } | Fault::Restart { host } | Fault::Disk { host, .. }) => Some(host),
                Action::Admin { admin: Admin::TransferLeader { to }, .. } => Some(to),
                Action::ExpectLeader { host: Some(host), .. } => Some(host),
                _ => None,
            };
            if let Some(host) = broker_only.filter(|h| !brokers.contains(h) && !TARGETS.contains(&h.as_str())) {
                let column = hosts.first().map_or(1, |t| t.column);
                let message = format!("`{host}` is an app; crash, restart and disk act on a broker");
                return Err(self.error(step.line, column, message));
            }
            if let Some(host) = step.action.app().filter(|h| brokers.iter().any(|b| b == h)) {
                let column = hosts.first().map_or(1, |t| t.column);
                return Err(self.error(step.line, column, format!("`{host}` is a broker; clients are other hosts")));
            }
        }
        let config = self.config()?;
        if cluster && config.storage == Storage::Memory {
            return Err(self.error(self.config_line, 1, "storage: a cluster's brokers keep their Raft log on disk"));
        }
        let needs_cluster = self.steps.iter().find(|(s, _)| {
            matches!(s.action, Action::ExpectLeader { .. } | Action::Admin { admin: Admin::TransferLeader { .. }, .. })
        });
        let slow = self
            .steps
            .iter()
            .find(|(s, _)| matches!(s.action, Action::Fault(Fault::Disk { fault: DiskFault::Slow(_), .. })));
        if let (false, Some((step, _))) = (cluster, slow) {
            let message =
                "disk slow: slows a cluster node's Raft log; a single broker's fsyncs take `config disk_latency=D`";
            return Err(self.error(step.line, 1, message));
        }
        if let (false, Some((step, _))) = (cluster, needs_cluster) {
            return Err(self.error(step.line, 1, "a step about a cluster's leader needs `config brokers=3`"));
        }
        let steps = self.steps.into_iter().map(|(s, _)| s).collect();
        Ok(Scenario { config, steps, brokers, apps })
    }

    fn config(&self) -> Result<Config, ParseError> {
        let get = |key: &str| self.config.get(key).map(String::as_str);
        let dur = |key: &str| get(key).and_then(duration);
        let mut config = Config::default();
        config.seed = get("seed").map(|s| s.parse().expect("checked"));
        config.ack_deadline = dur("ack_deadline").unwrap_or(config.ack_deadline);
        config.partitions = get("partitions").map_or(1, |p| p.parse().expect("checked"));
        config.loss_allowed = get("loss") == Some("allowed");
        config.disk_latency = dur("disk_latency").unwrap_or_default();
        config.snapshot_entries = get("snapshot_entries").map(|n| n.parse().expect("checked"));
        let fsync = match get("fsync") {
            Some("interval") => Fsync::Interval(dur("fsync_interval").unwrap_or(Duration::from_millis(100))),
            Some("never") => Fsync::Never,
            _ => Fsync::Always,
        };
        let misfit = |message: &str| Err(self.error(self.config_line, 1, message));
        if config.snapshot_entries.is_some() && get("brokers").is_none_or(|n| n == "1") {
            return misfit("snapshot_entries: a cluster's setting; set `brokers=3`");
        }
        if let Some(permissions) = get("permissions") {
            if let Err(reason) = mini_pubsub::server::access::parse_permissions(permissions) {
                return misfit(&format!("permissions: {reason}"));
            }
            config.permissions = permissions.to_string();
        }
        if get("fsync_interval").is_some() && !matches!(fsync, Fsync::Interval(_)) {
            return misfit("fsync_interval: applies only with fsync=interval");
        }
        config.storage = match get("storage") {
            Some("memory") if get("fsync").is_some() => return misfit("fsync: the memory log has no fsync"),
            Some("memory") => Storage::Memory,
            _ => Storage::File(fsync),
        };
        Ok(config)
    }
}

fn seek_to(text: &str) -> SeekTo {
    if text == "latest" {
        SeekTo::Latest
    } else {
        SeekTo::Earliest
    }
}

fn via(text: Option<&str>) -> Via {
    if text == Some("library") {
        Via::Library
    } else {
        Via::Grpc
    }
}

fn disk_fault(text: &str) -> DiskFault {
    match text {
        "eio" => DiskFault::Eio,
        "full" => DiskFault::Full,
        "torn" => DiskFault::Torn,
        "corrupt" => DiskFault::Corrupt(None),
        "slow" => DiskFault::Slow(Duration::ZERO),
        _ => DiskFault::Ok,
    }
}

fn bad_duration(text: &str) -> String {
    format!("`{text}` is not a duration; write 250ms, 5s or 2m")
}

/// `what `word` is unknown`, with the nearest known word when one is close.
fn unknown(what: &str, word: &str, known: &[&str]) -> String {
    let nearest = known.iter().map(|k| (edit_distance(word, k), *k)).min();
    match nearest {
        Some((d, k)) if d <= 2.max(word.len() / 3) => format!("unknown {what} `{word}`; did you mean `{k}`?"),
        _ => format!("unknown {what} `{word}`; known: {}", known.join(", ")),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

fn check_value(kind: Kind, value: &str) -> Result<(), String> {
    let ok = match kind {
        Kind::Host if TARGETS.contains(&value) => true,
        Kind::Name | Kind::Host => {
            !value.is_empty() && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        }
        Kind::Int(min, max) => value.parse::<u64>().is_ok_and(|n| (min..=max).contains(&n)),
        Kind::Dur => duration(value).is_some(),
        Kind::Rate => value.parse::<f64>().is_ok_and(|r| (0.0..=1.0).contains(&r)),
        Kind::Text => true,
        Kind::Bool => matches!(value, "true" | "false"),
        Kind::OneOf(values) => values.contains(&value),
    };
    if ok {
        return Ok(());
    }
    Err(match kind {
        Kind::Name | Kind::Host => format!("`{value}` is not a name ([A-Za-z0-9._-])"),
        Kind::Int(min, max) if value.parse::<u64>().is_ok() => format!("{value} is outside {min} to {max}"),
        Kind::Int(..) => format!("`{value}` is not a whole number"),
        Kind::Dur => bad_duration(value),
        Kind::Rate => format!("`{value}` is not a rate from 0 to 1"),
        Kind::Text => unreachable!("any text is valid"),
        Kind::Bool => unknown("value", value, &["true", "false"]),
        Kind::OneOf(values) => unknown("value", value, values),
    })
}

/// `250ms`, `5s`, `2m`.
pub fn duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => n.checked_mul(1000).map(Duration::from_millis),
        "m" => n.checked_mul(60_000).map(Duration::from_millis),
        _ => None,
    }
}

/// Splits a line into words, keeping `"quoted strings"` whole (quotes removed) and
/// dropping a `#` comment. Errors carry the column.
fn tokenize(line: &str) -> Result<Vec<Token>, (usize, String)> {
    let mut tokens = Vec::new();
    let mut chars = line.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        if c == '#' {
            break;
        }
        let mut text = String::new();
        while let Some(&(i, c)) = chars.peek() {
            if c.is_whitespace() {
                break;
            }
            chars.next();
            if c == '"' {
                loop {
                    match chars.next() {
                        Some((_, '"')) => break,
                        Some((_, c)) => text.push(c),
                        None => return Err((i + 1, "this quote is never closed".to_string())),
                    }
                }
            } else {
                text.push(c);
            }
        }
        tokens.push(Token { text, column: start + 1 });
    }
    Ok(tokens)
}
