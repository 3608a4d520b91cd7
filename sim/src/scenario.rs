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
//! eventually 10s expect worker received audit count=1 attempt=2
//! check all
//! ```
//!
//! A line is `[time] verb positional... key=value...`. Time is `@D` (absolute) or `+D`
//! (after the previous step); durations are `250ms`, `5s` or `2m`. Values may be quoted
//! (`value="two words"`). Every verb says which positionals and options it takes; anything
//! else is an error naming file, line and column, with the nearest known word.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

/// A parsed scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    /// `config` settings (seed, ack_deadline, partitions, brokers...).
    pub config: BTreeMap<String, String>,
    pub steps: Vec<Step>,
    /// Every host: brokers first (`broker`, or `broker1..N` with `config brokers=N`), then
    /// the apps in order of first use.
    pub brokers: Vec<String>,
    pub apps: Vec<String>,
}

/// One line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// 1-based line number in the file.
    pub line: usize,
    /// When it runs, from the start of the run.
    pub at: Duration,
    pub verb: Verb,
    /// Positionals, by the names the verb gives them.
    pub args: BTreeMap<&'static str, String>,
    pub options: BTreeMap<String, String>,
    /// For `eventually`: how long the expectation may take.
    pub within: Option<Duration>,
}

impl Step {
    pub fn arg(&self, name: &str) -> &str {
        self.args.get(name).map_or("", String::as_str)
    }

    pub fn option(&self, name: &str) -> Option<&str> {
        self.options.get(name).map(String::as_str)
    }
}

/// What a step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verb {
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
}

/// The kind of value an option or positional takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Name,
    Host,
    Count,
    Dur,
    Rate,
    Text,
    OneOf(&'static [&'static str]),
}

struct Spec {
    words: &'static [&'static str],
    verb: Verb,
    positionals: &'static [(&'static str, Kind)],
    options: &'static [(&'static str, Kind)],
}

const START: Kind = Kind::OneOf(&["earliest", "latest"]);
const ACK_MODE: Kind = Kind::OneOf(&["all", "none", "nack", "nack-all", "reject", "manual"]);
const WHAT: Kind = Kind::OneOf(&["received", "acked", "expired", "error", "stalled"]);
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
]);

const SPECS: &[Spec] = &[
    Spec {
        words: &["topic", "create"],
        verb: Verb::TopicCreate,
        positionals: &[("topic", Kind::Name)],
        options: &[("partitions", Kind::Count)],
    },
    Spec { words: &["topic", "delete"], verb: Verb::TopicDelete, positionals: &[("topic", Kind::Name)], options: &[] },
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
            ("max_attempts", Kind::Count),
            ("ordered", Kind::OneOf(&["true", "false"])),
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
            ("size", Kind::Count),
            ("count", Kind::Count),
            ("every", Kind::Dur),
            ("partition", Kind::Count),
            ("idempotency_key", Kind::Text),
            ("via", Kind::OneOf(&["grpc", "library"])),
        ],
    },
    Spec {
        words: &["subscribe"],
        verb: Verb::Subscribe,
        positionals: &[("host", Kind::Host), ("sub", Kind::Name)],
        options: &[
            ("ack", ACK_MODE),
            ("ack_delay", Kind::Dur),
            ("max", Kind::Count),
            ("nack_delay", Kind::Dur),
            ("reason", Kind::Text),
            ("session", Kind::Dur),
            ("via", Kind::OneOf(&["grpc", "library"])),
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
        options: &[("delay", Kind::Dur), ("reason", Kind::Text), ("terminal", Kind::OneOf(&["true", "false"]))],
    },
    Spec {
        words: &["modack"],
        verb: Verb::Modack,
        positionals: &[("host", Kind::Host), ("deadline", Kind::Dur)],
        options: &[],
    },
    Spec {
        words: &["redrive"],
        verb: Verb::Redrive,
        positionals: &[("sub", Kind::Name)],
        options: &[("max", Kind::Count)],
    },
    Spec { words: &["seek"], verb: Verb::Seek, positionals: &[("sub", Kind::Name), ("to", START)], options: &[] },
    Spec {
        words: &["partition"],
        verb: Verb::Partition,
        positionals: &[("a", Kind::Host), ("b", Kind::Host)],
        options: &[("oneway", Kind::OneOf(&["true", "false"]))],
    },
    Spec {
        words: &["heal"],
        verb: Verb::Heal,
        positionals: &[("a", Kind::Host), ("b", Kind::Host)],
        options: &[("oneway", Kind::OneOf(&["true", "false"]))],
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
        positionals: &[("host", Kind::Host), ("fault", Kind::OneOf(&["eio", "full", "torn", "corrupt", "ok"]))],
        options: &[],
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
        options: &[("sub", Kind::Name), ("count", Kind::Count), ("attempt", Kind::Count), ("code", Kind::Text)],
    },
    Spec { words: &["check"], verb: Verb::Check, positionals: &[("what", CHECKS)], options: &[] },
];

/// Settings `config` accepts.
const CONFIG_KEYS: &[(&str, Kind)] = &[
    ("seed", Kind::Count),
    ("brokers", Kind::Count),
    ("ack_deadline", Kind::Dur),
    ("partitions", Kind::Count),
    ("duration", Kind::Dur),
    ("loss", Kind::OneOf(&["allowed", "forbidden"])),
    ("storage", Kind::OneOf(&["file", "memory"])),
    ("fsync", Kind::OneOf(&["always", "interval", "never"])),
    ("fsync_interval", Kind::Dur),
    ("disk_latency", Kind::Dur),
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
    let mut parser = Parser { file, config: BTreeMap::new(), steps: Vec::new(), clock: Duration::ZERO };
    for (index, line) in text.lines().enumerate() {
        parser.line(index + 1, line)?;
    }
    parser.finish()
}

struct Parser<'a> {
    file: &'a str,
    config: BTreeMap<String, String>,
    steps: Vec<(Step, Vec<(Kind, Token)>)>,
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
        }
        let step = self.step(number, at, within, &tokens)?;
        self.clock = at;
        self.steps.push(step);
        Ok(())
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
            check_value(*kind, value)
                .map_err(|m| self.error(number, token.column + key.len() + 1, format!("{key}: {m}")))?;
            self.config.insert(key.to_string(), value.to_string());
        }
        Ok(())
    }

    fn step(
        &self,
        number: usize,
        at: Duration,
        within: Option<Duration>,
        tokens: &[Token],
    ) -> Result<(Step, Vec<(Kind, Token)>), ParseError> {
        let spec = self.spec(number, tokens)?;
        let rest = &tokens[spec.words.len()..];
        let (positional, options): (Vec<&Token>, Vec<&Token>) = rest.iter().partition(|t| !t.text.contains('='));
        let mut hosts = Vec::new();
        let mut args = BTreeMap::new();
        for (i, (name, kind)) in spec.positionals.iter().enumerate() {
            let Some(token) = positional.get(i) else {
                let column = rest.last().map_or(tokens[0].column, |t| t.column + t.text.len());
                let wanted: Vec<&str> = spec.positionals.iter().map(|(n, _)| *n).collect();
                let usage = format!("{} {}", spec.words.join(" "), wanted.join(" "));
                return Err(self.error(number, column, format!("missing <{name}>: the step is `{usage}`")));
            };
            check_value(*kind, &token.text).map_err(|m| self.error(number, token.column, format!("{name}: {m}")))?;
            args.insert(*name, token.text.clone());
            if *kind == Kind::Host {
                hosts.push((*kind, (*token).clone()));
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
            check_value(*kind, value)
                .map_err(|m| self.error(number, token.column + key.len() + 1, format!("{key}: {m}")))?;
            parsed.insert(key.to_string(), value.to_string());
        }
        let step = Step { line: number, at, verb: spec.verb, args, options: parsed, within };
        Ok((step, hosts))
    }

    fn spec(&self, number: usize, tokens: &[Token]) -> Result<&'static Spec, ParseError> {
        let head = &tokens[0];
        let candidates: Vec<&Spec> = SPECS.iter().filter(|s| s.words[0] == head.text).collect();
        if candidates.is_empty() {
            let mut verbs: Vec<&str> = SPECS.iter().map(|s| s.words[0]).collect();
            verbs.extend(["config", "eventually"]);
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

    /// Names the hosts, and checks every fault and expectation names a known one.
    fn finish(self) -> Result<Scenario, ParseError> {
        let count: usize = self.config.get("brokers").map_or(1, |n| n.parse().unwrap_or(1));
        let brokers: Vec<String> =
            if count == 1 { vec!["broker".to_string()] } else { (1..=count).map(|i| format!("broker{i}")).collect() };
        let mut apps: Vec<String> = Vec::new();
        for (step, _) in &self.steps {
            if matches!(step.verb, Verb::Publish | Verb::Subscribe) {
                let host = step.arg("host").to_string();
                if brokers.contains(&host) {
                    let column = hosts_column(&self.steps, step.line);
                    return Err(self.error(
                        step.line,
                        column,
                        format!("`{host}` is a broker; clients are other hosts"),
                    ));
                }
                if !apps.contains(&host) {
                    apps.push(host);
                }
            }
        }
        let known: BTreeSet<&str> = brokers.iter().chain(&apps).map(String::as_str).collect();
        for (step, hosts) in &self.steps {
            for (_, token) in hosts {
                if !known.contains(token.text.as_str()) {
                    let list: Vec<&str> = known.iter().copied().collect();
                    return Err(self.error(step.line, token.column, unknown("host", &token.text, &list)));
                }
            }
        }
        let steps = self.steps.into_iter().map(|(s, _)| s).collect();
        Ok(Scenario { config: self.config, steps, brokers, apps })
    }
}

/// The column of the first host named on `line`.
fn hosts_column(steps: &[(Step, Vec<(Kind, Token)>)], line: usize) -> usize {
    steps.iter().find(|(s, _)| s.line == line).and_then(|(_, hosts)| hosts.first()).map_or(1, |(_, t)| t.column)
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
        Kind::Name | Kind::Host => {
            !value.is_empty() && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        }
        Kind::Count => value.parse::<u64>().is_ok(),
        Kind::Dur => duration(value).is_some(),
        Kind::Rate => value.parse::<f64>().is_ok_and(|r| (0.0..=1.0).contains(&r)),
        Kind::Text => true,
        Kind::OneOf(values) => values.contains(&value),
    };
    if ok {
        return Ok(());
    }
    Err(match kind {
        Kind::Name | Kind::Host => format!("`{value}` is not a name ([A-Za-z0-9._-])"),
        Kind::Count => format!("`{value}` is not a whole number"),
        Kind::Dur => bad_duration(value),
        Kind::Rate => format!("`{value}` is not a rate from 0 to 1"),
        Kind::Text => unreachable!("any text is valid"),
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

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "# A lease expires while partitioned away.
config seed=7 ack_deadline=5s
topic create orders partitions=2
sub create audit topic=orders
@0s    publish producer orders key=a value=\"hello there\"
@10ms  subscribe worker audit ack=none
+20ms  partition worker broker   # cut
@6s    heal worker broker
eventually 10s expect worker received sub=audit count=1 attempt=2
check all
";

    #[test]
    fn the_example_parses() {
        let s = parse("x.scn", EXAMPLE).unwrap();
        assert_eq!(s.config["seed"], "7");
        assert_eq!(s.brokers, ["broker"]);
        assert_eq!(s.apps, ["producer", "worker"]);
        let times: Vec<u128> = s.steps.iter().map(|s| s.at.as_millis()).collect();
        assert_eq!(times, [0, 0, 0, 10, 30, 6000, 6000, 6000]);
        assert_eq!(s.steps[2].option("value"), Some("hello there"));
        assert_eq!(s.steps[6].within, Some(Duration::from_secs(10)));
        assert_eq!(s.steps[6].arg("what"), "received");
    }

    fn error(text: &str) -> String {
        parse("bad.scn", text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_place_and_the_nearest_word() {
        assert_eq!(error("publsh p t"), "bad.scn:1:1: unknown step `publsh`; did you mean `publish`?");
        assert_eq!(error("\n  topic craete t"), "bad.scn:2:9: unknown `topic` action `craete`; did you mean `create`?");
        assert_eq!(
            error("subscribe w s\npartition w brokr"),
            "bad.scn:2:13: unknown host `brokr`; did you mean `broker`?"
        );
        assert_eq!(
            error("publish p t cont=3"),
            "bad.scn:1:13: unknown option of `publish` `cont`; did you mean `count`?"
        );
        assert_eq!(error("@5x publish p t"), "bad.scn:1:2: `5x` is not a duration; write 250ms, 5s or 2m");
        assert_eq!(
            error("@2s advance 1s\n@1s advance 1s"),
            "bad.scn:2:1: @1s is earlier than the step before it (2000 ms)"
        );
        assert_eq!(error("subscribe w s ack=some"), "bad.scn:1:19: ack: unknown value `some`; did you mean `none`?");
        assert_eq!(error("publish p"), "bad.scn:1:10: missing <topic>: the step is `publish host topic`");
        assert_eq!(error("publish broker t"), "bad.scn:1:9: `broker` is a broker; clients are other hosts");
        assert_eq!(error("config sed=1"), "bad.scn:1:8: unknown config setting `sed`; did you mean `seed`?");
        assert_eq!(error("publish p t value=\"open"), "bad.scn:1:19: this quote is never closed");
        assert_eq!(
            error("eventually 5s check all"),
            "bad.scn:1:15: eventually takes an expectation: `eventually 5s expect ...`"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(duration("2m"), Some(Duration::from_secs(120)));
        for bad in ["", "5", "s", "5h", "-1s", "1.5s"] {
            assert_eq!(duration(bad), None, "{bad:?}");
        }
    }
}
